//! How the results of `otactl rollout ...` read in a terminal.

use super::view::{
    AirtimeJson, ApprovalJson, CanaryGroupJson, CountsJson, ExclusionJson, PlanJson,
    RollbackLinkJson, RolloutJson, RolloutListJson, StageSpecJson, ThresholdJson,
};
use crate::output::{fields, fmt_secs, fmt_time, render, section, table};
use crate::views::{en, when_by};

fn threshold(t: Option<&ThresholdJson>) -> String {
    match t {
        None => "default".to_string(),
        Some(ThresholdJson::Count(c)) => c.to_string(),
        Some(ThresholdJson::Percent(p)) => format!("{p}%"),
    }
}

/// A stage's size; the first stage under `canary_per_site` (N > 0) takes N per site.
fn stage_size(s: &StageSpecJson, index: usize, canary_per_site: u32) -> String {
    if index == 0 && canary_per_site > 0 {
        return format!("{canary_per_site} per site");
    }
    match (s.count, s.cumulative_percent) {
        (Some(1), _) => "1 device".to_string(),
        (Some(c), _) => format!("{c} devices"),
        (_, Some(p)) => format!("up to {p}%"),
        _ => "-".to_string(),
    }
}

fn counts_line(c: &CountsJson) -> String {
    let parts: Vec<String> = c
        .nonzero()
        .into_iter()
        .map(|(n, v)| format!("{n} {v}"))
        .collect();
    if parts.is_empty() {
        "-".to_string()
    } else {
        parts.join(", ")
    }
}

/// `rollout list`.
pub fn rollout_list(l: &RolloutListJson) -> String {
    let mut t = table(&[
        "id", "name", "firmware", "state", "stage", "done", "failed", "created",
    ]);
    for r in &l.rollouts {
        let stage = r
            .stages
            .iter()
            .find(|s| s.index == r.current_stage)
            .map_or_else(String::new, |s| {
                format!("{}/{} {}", s.index + 1, r.stages.len(), s.name)
            });
        t.add_row(vec![
            r.id.clone(),
            r.spec.as_ref().map_or_else(String::new, |s| s.name.clone()),
            r.spec
                .as_ref()
                .map_or_else(String::new, |s| s.firmware_id.clone()),
            r.state.name.clone(),
            stage,
            format!("{}/{}", r.totals.succeeded, r.totals.total),
            (r.totals.failed + r.totals.timed_out).to_string(),
            fmt_time(r.created_at_ms),
        ]);
    }
    render(&t, "no rollouts")
}

/// `rollout show`, create, start, pause, resume, abort.
pub fn rollout(r: &RolloutJson) -> String {
    let spec = r.spec.as_ref();
    let mut rows = vec![
        ("ID", r.id.clone()),
        ("Name", spec.map_or_else(String::new, |s| s.name.clone())),
        (
            "Firmware",
            spec.map_or_else(String::new, |s| s.firmware_id.clone()),
        ),
        ("State", r.state.name.clone()),
        ("Reason", r.state_reason.clone()),
        (
            "Totals",
            format!("{} devices: {}", r.totals.total, counts_line(&r.totals)),
        ),
        (
            "Failure budget",
            if r.failure_budget == 0 {
                "off (only the stages' thresholds)".to_string()
            } else {
                format!(
                    "{} of {} used (failed or timed out across the rollout; it pauses at {})",
                    r.failures, r.failure_budget, r.failure_budget
                )
            },
        ),
        ("Created", when_by(r.created_at_ms, r.created_by.as_ref())),
        ("Started", fmt_time(r.started_at_ms)),
        ("Finished", fmt_time(r.finished_at_ms)),
    ];
    if let Some(a) = &r.approval {
        rows.insert(5, ("Approval", approval_line(a)));
    }
    policy_rows(r, &mut rows);
    let per_site = spec.map_or(0, |s| s.canary_per_site);
    let mut out = fields(&rows);
    let mut t = table(&[
        "#", "stage", "size", "state", "devices", "counts", "deadline", "soak",
    ]);
    let specs = spec.map(|s| s.stages.as_slice()).unwrap_or_default();
    if r.stages.is_empty() {
        for (i, s) in specs.iter().enumerate() {
            t.add_row(vec![
                (i + 1).to_string(),
                s.name.clone(),
                stage_size(s, i, per_site),
                "pending".to_string(),
                "-".to_string(),
                format!(
                    "fail at {} ({})",
                    threshold(s.failure_threshold.as_ref()),
                    s.on_failure.name
                ),
                fmt_secs(u64::from(s.deadline_s)),
                fmt_secs(u64::from(s.soak_s)),
            ]);
        }
    }
    for st in &r.stages {
        let sp = specs.get(st.index as usize);
        let marker = if st.index == r.current_stage && r.state.name == "running" {
            "▶ "
        } else {
            ""
        };
        t.add_row(vec![
            format!("{marker}{}", st.index + 1),
            st.name.clone(),
            sp.map_or_else(String::new, |s| stage_size(s, st.index as usize, per_site)),
            st.state.name.clone(),
            st.counts.total.max(st.device_count).to_string(),
            counts_line(&st.counts),
            sp.map_or_else(String::new, |s| fmt_secs(u64::from(s.deadline_s))),
            sp.map_or_else(String::new, |s| fmt_secs(u64::from(s.soak_s))),
        ]);
    }
    section(&mut out, "Stages", &render(&t, "none"));
    if !r.batch_check_timed_out.is_empty() {
        let mut lines = r.batch_check_timed_out.clone();
        lines.extend(more(lines.len(), r.batch_check_timed_out_count));
        section(
            &mut out,
            "No answer to the batch check (5019)",
            &lines.join("\n"),
        );
    }
    if !r.exclusions.is_empty() {
        section(
            &mut out,
            "Excluded",
            &exclusions(&r.exclusions, r.exclusion_count),
        );
    }
    out
}

/// The rows of the rollout's policies: rate, abort criteria, health window, per-site canaries
/// and rollback, each next to the row it qualifies.
fn policy_rows(r: &RolloutJson, rows: &mut Vec<(&'static str, String)>) {
    let spec = r.spec.as_ref();
    if let Some(rate) = spec.and_then(|s| s.rate.as_ref()) {
        let at = rows
            .iter()
            .position(|(k, _)| *k == "Failure budget")
            .unwrap_or(rows.len());
        rows.insert(at, ("Rate", format!("{rate} (devices started)")));
    }
    let criteria = spec
        .map(|s| s.abort_criteria.as_slice())
        .unwrap_or_default();
    if !criteria.is_empty() {
        let at = rows
            .iter()
            .position(|(k, _)| *k == "Failure budget")
            .map_or(rows.len(), |i| i + 1);
        let lines: Vec<String> = criteria.iter().map(ToString::to_string).collect();
        rows.insert(at, ("Abort when", lines.join("\n")));
    }
    let per_site = spec.map_or(0, |s| s.canary_per_site);
    if per_site > 0 {
        let at = rows
            .iter()
            .position(|(k, _)| *k == "Totals")
            .map_or(rows.len(), |i| i + 1);
        rows.insert(
            at,
            (
                "Canaries",
                format!(
                    "{per_site} per site and zigbee2mqtt network (each transport instance), in the first stage"
                ),
            ),
        );
    }
    rollback_rows(r, rows);
    if let Some(h) = spec.and_then(|s| s.health) {
        let at = rows
            .iter()
            .position(|(k, _)| *k == "Failure budget")
            .map_or(rows.len(), |i| i + 1);
        rows.insert(at, ("Health window", h.to_string()));
    }
}

/// The exclusions the server listed, and a last row saying how many it did not list.
fn exclusions(list: &[ExclusionJson], count: u32) -> String {
    let mut t = table(&["device", "code", "reason"]);
    for e in list {
        t.add_row(vec![e.device_id.clone(), en(&e.code), e.reason.clone()]);
    }
    if let Some(line) = more(list.len(), count) {
        t.add_row(vec![line, String::new(), String::new()]);
    }
    render(&t, "none")
}

/// "… and N more": the server lists at most 10,000 devices per list.
fn more(listed: usize, count: u32) -> Option<String> {
    let unlisted = (count as usize).saturating_sub(listed);
    (unlisted > 0).then(|| format!("… and {unlisted} more (the server lists the first 10,000)"))
}

/// The per-site canaries: one row per site and transport instance.
fn canaries(groups: &[CanaryGroupJson]) -> String {
    let mut t = table(&["site", "transport", "network", "canaries", "device ids"]);
    for g in groups {
        t.add_row(vec![
            g.site_id.clone(),
            g.transport.name.clone(),
            g.network.clone(),
            format!("{} of {}", g.device_ids.len(), g.available),
            g.device_ids.join("\n"),
        ]);
    }
    render(&t, "none")
}

/// How many device ids to show per stage before "and N more".
const PLAN_DEVICES_SHOWN: usize = 8;

/// `rollout plan`.
pub fn plan(p: &PlanJson) -> String {
    let mut out = fields(&[
        ("Target devices", p.target_count.to_string()),
        (
            "Estimated duration",
            format!("{} of work", fmt_secs(u64::from(p.estimated_duration_s))),
        ),
        (
            "Expected makespan",
            p.makespan_s.map_or_else(
                || "never: the maintenance window never opens".to_string(),
                |s| fmt_secs(u64::from(s)),
            ),
        ),
    ]);
    let mut t = table(&["#", "stage", "devices", "estimate", "device ids"]);
    for s in &p.stages {
        let mut ids: Vec<String> = s
            .device_ids
            .iter()
            .take(PLAN_DEVICES_SHOWN)
            .cloned()
            .collect();
        let count = s.device_count as usize;
        if count > PLAN_DEVICES_SHOWN {
            ids.push(format!(
                "… and {} more (-o json lists up to 10,000)",
                count - PLAN_DEVICES_SHOWN
            ));
        }
        t.add_row(vec![
            (s.index + 1).to_string(),
            s.name.clone(),
            s.device_count.to_string(),
            fmt_secs(u64::from(s.estimated_s)),
            ids.join("\n"),
        ]);
    }
    section(&mut out, "Stages", &render(&t, "none"));
    for s in p.stages.iter().filter(|s| !s.canaries.is_empty()) {
        section(
            &mut out,
            &format!("Canaries of stage {} per site", s.name),
            &canaries(&s.canaries),
        );
    }
    if !p.policies.is_empty() {
        section(&mut out, "Policies", &p.policies.join("\n"));
    }
    if !p.notes.is_empty() {
        section(&mut out, "Transfer times", &p.notes.join("\n"));
    }
    if !p.zigbee_airtime.is_empty() {
        section(&mut out, "Zigbee airtime", &airtime(&p.zigbee_airtime));
    }
    section(
        &mut out,
        "Excluded",
        &exclusions(&p.exclusions, p.exclusion_count),
    );
    if !p.warnings.is_empty() {
        section(
            &mut out,
            "Warnings",
            &p.warnings
                .iter()
                .map(|w| format!("! {w}"))
                .collect::<Vec<_>>()
                .join("\n"),
        );
    }
    out
}

/// The Zigbee airtime per network of a plan.
fn airtime(rows: &[AirtimeJson]) -> String {
    let mut t = table(&["site", "network", "airtime", "share of makespan"]);
    for a in rows {
        t.add_row(vec![
            a.site_id.clone(),
            a.network.clone(),
            fmt_secs(u64::from(a.airtime_s)),
            format!("{:.0} %", a.share_percent),
        ]);
    }
    render(&t, "none")
}

/// The remaining time of a watched rollout, `about 12m left`, or nothing when unknown or about
/// to end.
pub fn remaining(remaining_s: Option<u32>) -> String {
    remaining_s
        .filter(|s| *s > 0)
        .map_or_else(String::new, |s| {
            format!(" · about {} left", fmt_secs(u64::from(s)))
        })
}

/// One line summarising a rollout's progress (for logs when bars are off).
pub fn progress_line(r: &RolloutJson) -> String {
    let stage = r
        .stages
        .iter()
        .find(|s| s.index == r.current_stage)
        .map_or_else(String::new, |s| {
            format!(
                " stage {}/{} {} ({}): {}/{} done;",
                s.index + 1,
                r.stages.len(),
                s.name,
                s.state.name,
                s.counts.done(),
                s.counts.total
            )
        });
    format!(
        "{} {}:{stage} totals {}",
        r.id,
        r.state.name,
        counts_line(&r.totals)
    )
}

/// `rollout create`: the rollout and what to do next.
pub fn created(v: &RolloutJson, started: bool) -> String {
    let pending = v.approval.as_ref().is_some_and(|a| a.state == "pending");
    let next = if pending {
        format!(
            "It needs the approval of another operator before it can start: they run `otactl \
             rollout approve {} --reason …` (check it with `otactl rollout plan {}`).",
            v.id, v.id
        )
    } else if started {
        format!("Follow it with `otactl rollout watch {}`.", v.id)
    } else {
        format!(
            "It is a draft: check it with `otactl rollout plan {}`, then `otactl \
             rollout start {}`.",
            v.id, v.id
        )
    };
    format!("Created rollout {}. {next}\n\n{}", v.id, rollout(v))
}

/// The rollback rows of `rollout show`: the spec's setting, and the link either way.
fn rollback_rows(r: &RolloutJson, rows: &mut Vec<(&'static str, String)>) {
    let at = rows
        .iter()
        .position(|(k, _)| *k == "Created")
        .unwrap_or(rows.len());
    let mut add = Vec::new();
    if let Some(s) = r.spec.as_ref().filter(|s| s.rollback != "none") {
        add.push((
            "Rollback",
            format!(
                "{}: when a threshold or criterion stops it, otad reverts those devices to the image each ran before",
                s.rollback
            ),
        ));
    }
    if let Some(l) = &r.rollback_of {
        add.push(("Rollback of", link_line(l)));
        let images: Vec<String> = r
            .revert_targets
            .iter()
            .map(|t| format!("{} ← {}", t.device_id, t.firmware_id))
            .collect();
        add.push(("Reverts", images.join("\n")));
    }
    if let Some(l) = &r.rolled_back_by {
        add.push(("Rolled back by", link_line(l)));
    }
    for (i, row) in add.into_iter().enumerate() {
        rows.insert(at + i, row);
    }
}

/// "ro-x (failed devices, automatic, by system at …): why".
fn link_line(l: &RollbackLinkJson) -> String {
    let how = if l.automatic { "automatic" } else { "by hand" };
    if l.at_ms == 0 {
        return format!("{} ({} devices)", l.rollout_id, l.scope);
    }
    format!(
        "{} ({} devices, {how}, {}): {}",
        l.rollout_id,
        l.scope,
        when_by(l.at_ms, l.by.as_ref()),
        l.reason
    )
}

/// "pending (otad setting require_approval)", "approved by bob at …: reason".
fn approval_line(a: &ApprovalJson) -> String {
    if a.state == "pending" {
        return format!(
            "pending ({}): another operator runs `otactl rollout approve`",
            a.required_by
        );
    }
    format!(
        "{} {}: {}",
        a.state,
        when_by(a.decided_at_ms, a.decided_by.as_ref()),
        a.reason
    )
}

/// `rollout start|pause|resume|abort`: the state it is in now.
pub fn acted(v: &RolloutJson) -> String {
    let mut s = format!("Rollout {} is {}.", v.id, v.state.name);
    if !v.state_reason.is_empty() {
        s.push_str(&format!(" ({})", v.state_reason));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::more;

    #[test]
    fn a_cut_list_says_how_many_it_does_not_show() {
        assert_eq!(more(3, 3), None);
        assert_eq!(more(3, 0), None, "an older server sends no count");
        assert_eq!(
            more(10_000, 12_500).as_deref(),
            Some("… and 2500 more (the server lists the first 10,000)")
        );
    }
}
