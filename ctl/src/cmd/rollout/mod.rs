//! `otactl rollout create|plan|approve|deny|rollback|start|pause|resume|abort|list|show|watch`.
//!
//! `args` are the flags, `view` the JSON documents, `render` the tables; `spec` reads a spec
//! from a TOML file or from flags, `watch` follows a rollout live.

pub mod args;
pub mod render;
pub mod spec;
pub mod view;
mod watch;

use std::path::Path;

use anyhow::Context as _;
use ota_proto::v1 as pb;

pub use self::args::RolloutCmd;
use self::args::{
    ApprovalArgs, CreateArgs, RollbackArgs, RolloutActionArgs, RolloutListArgs, RolloutStateArg,
    SpecSourceArgs,
};
use self::view::{PlanJson, RolloutJson, RolloutListJson};
use super::{Ctx, all_pages, id};

/// Reads and checks the spec a command was given.
pub fn resolve_spec(a: &SpecSourceArgs) -> anyhow::Result<pb::RolloutSpec> {
    let flags = spec::flags_given(&a.flags);
    match (&a.file, flags) {
        (Some(_), true) => anyhow::bail!(
            "use either --file or the spec flags (--name, --firmware, --canary, ...), not both"
        ),
        (Some(path), false) => read_spec_file(path),
        (None, true) => Ok(spec::validate(&spec::from_flags(&a.flags), "flags")?),
        (None, false) => anyhow::bail!(
            "give a spec: -f SPEC.toml, or flags such as --name N --firmware FW --canary 5 \
             --waves 25,100 (see `otactl rollout create --help`)"
        ),
    }
}

fn read_spec_file(path: &Path) -> anyhow::Result<pb::RolloutSpec> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the spec {}", path.display()))?;
    Ok(spec::parse_toml(&text, &path.display().to_string())?)
}

/// A resolved `rollout plan`.
pub fn resolve_plan(
    id_arg: Option<&str>,
    src: &SpecSourceArgs,
) -> anyhow::Result<pb::PlanRolloutRequest> {
    let subject = match id_arg {
        Some(raw) => {
            if src.file.is_some() || spec::flags_given(&src.flags) {
                anyhow::bail!(
                    "plan either an existing rollout (ID) or a spec (--file / flags), not both"
                );
            }
            pb::plan_rollout_request::Subject::RolloutId(id("rollout", raw)?)
        }
        None => pb::plan_rollout_request::Subject::Spec(resolve_spec(src)?),
    };
    Ok(pb::PlanRolloutRequest {
        subject: Some(subject),
    })
}

fn state(s: RolloutStateArg) -> pb::RolloutState {
    match s {
        RolloutStateArg::Draft => pb::RolloutState::Draft,
        RolloutStateArg::Running => pb::RolloutState::Running,
        RolloutStateArg::Paused => pb::RolloutState::Paused,
        RolloutStateArg::Completed => pb::RolloutState::Completed,
        RolloutStateArg::Aborted => pb::RolloutState::Aborted,
    }
}

/// Which action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Start,
    Pause,
    Resume,
    Abort,
}

/// Runs a `rollout` command.
pub async fn run(ctx: &Ctx, cmd: RolloutCmd) -> anyhow::Result<()> {
    match cmd {
        RolloutCmd::Create(a) => create(ctx, &a).await,
        RolloutCmd::Plan(a) => {
            let req = resolve_plan(a.id.as_deref(), &a.spec)?;
            let api = ctx.api().await?;
            let p = api.call(api.rollout().plan(api.unary(req))).await?;
            ctx.out.show(&PlanJson::new(&p), render::plan)?;
            Ok(())
        }
        RolloutCmd::Start(a) => action(ctx, Action::Start, &a).await,
        RolloutCmd::Pause(a) => action(ctx, Action::Pause, &a).await,
        RolloutCmd::Resume(a) => action(ctx, Action::Resume, &a).await,
        RolloutCmd::Abort(a) => action(ctx, Action::Abort, &a).await,
        RolloutCmd::Approve(a) => decide_approval(ctx, true, &a).await,
        RolloutCmd::Deny(a) => decide_approval(ctx, false, &a).await,
        RolloutCmd::Rollback(a) => rollback(ctx, &a).await,
        RolloutCmd::List(a) => list(ctx, &a).await,
        RolloutCmd::Show(a) => {
            let rollout_id = id("rollout", &a.id)?;
            let api = ctx.api().await?;
            let r = api
                .call(
                    api.rollout()
                        .get(api.unary(pb::GetRolloutRequest { id: rollout_id })),
                )
                .await?;
            ctx.out.show(&RolloutJson::new(&r), render::rollout)?;
            Ok(())
        }
        RolloutCmd::Watch(a) => watch::watch(ctx, &a).await,
    }
}

async fn create(ctx: &Ctx, a: &CreateArgs) -> anyhow::Result<()> {
    let spec = resolve_spec(&a.spec)?;
    let api = ctx.api().await?;
    let r = api
        .call(api.rollout().create(api.unary(pb::CreateRolloutRequest {
            spec: Some(spec),
            start: a.start,
        })))
        .await?;
    ctx.out
        .show(&RolloutJson::new(&r), |v| render::created(v, a.start))?;
    Ok(())
}

async fn list(ctx: &Ctx, a: &RolloutListArgs) -> anyhow::Result<()> {
    let api = ctx.api().await?;
    let req = pb::ListRolloutsRequest {
        page: None,
        state: a.state.map_or(0, |s| state(s) as i32),
    };
    let pages = all_pages(
        req,
        |r, p| r.page = p,
        async |req| Ok(api.call(api.rollout().list(api.unary(req))).await?),
        |r| &r.next_page_token,
    )
    .await?;
    let rollouts = pages
        .iter()
        .flat_map(|r| &r.rollouts)
        .map(RolloutJson::new)
        .collect();
    ctx.out
        .show(&RolloutListJson { rollouts }, render::rollout_list)?;
    Ok(())
}

async fn decide_approval(ctx: &Ctx, approve: bool, a: &ApprovalArgs) -> anyhow::Result<()> {
    let req = pb::RolloutActionRequest {
        id: id("rollout", &a.id)?,
        reason: a.reason.clone(),
    };
    let api = ctx.api().await?;
    let mut client = api.rollout();
    let answer = if approve {
        client.approve(api.unary(req)).await
    } else {
        client.deny(api.unary(req)).await
    };
    let r = answer
        .map(tonic::Response::into_inner)
        .map_err(|s| api.error(&s))?;
    ctx.out.show(&RolloutJson::new(&r), render::acted)?;
    Ok(())
}

async fn rollback(ctx: &Ctx, a: &RollbackArgs) -> anyhow::Result<()> {
    let req = pb::RollbackRolloutRequest {
        id: id("rollout", &a.id)?,
        scope: a.devices.map_or(0, |d| spec::rollback_scope(d) as i32),
        start: a.start,
        reason: a.reason.clone().unwrap_or_default(),
    };
    let api = ctx.api().await?;
    let r = api.call(api.rollout().rollback(api.unary(req))).await?;
    ctx.out
        .show(&RolloutJson::new(&r), |v| render::created(v, a.start))?;
    Ok(())
}

async fn action(ctx: &Ctx, what: Action, a: &RolloutActionArgs) -> anyhow::Result<()> {
    let req = pb::RolloutActionRequest {
        id: id("rollout", &a.id)?,
        reason: a.reason.clone().unwrap_or_default(),
    };
    let api = ctx.api().await?;
    let mut client = api.rollout();
    let fut = match what {
        Action::Start => client.start(api.unary(req)).await,
        Action::Pause => client.pause(api.unary(req)).await,
        Action::Resume => client.resume(api.unary(req)).await,
        Action::Abort => client.abort(api.unary(req)).await,
    };
    let r = fut
        .map(tonic::Response::into_inner)
        .map_err(|s| api.error(&s))?;
    ctx.out.show(&RolloutJson::new(&r), render::acted)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::Failed;
    use clap::Parser as _;

    fn parse(args: &[&str]) -> RolloutCmd {
        let mut full = vec!["otactl", "rollout"];
        full.extend_from_slice(args);
        match crate::cli::Cli::try_parse_from(full).unwrap().command {
            crate::cli::Command::Rollout(c) => c,
            _ => unreachable!("parsed a rollout command"),
        }
    }

    #[test]
    fn create_from_flags() {
        let RolloutCmd::Create(a) = parse(&[
            "create",
            "--name",
            "hue",
            "--firmware",
            "fw-1",
            "--model",
            "324131092621",
            "--waves",
            "10,100",
        ]) else {
            panic!("not a create");
        };
        let s = resolve_spec(&a.spec).unwrap();
        assert_eq!(s.name, "hue");
        assert_eq!(s.selector.unwrap().models, ["324131092621"]);
        assert_eq!(s.stages.len(), 2);
    }

    #[test]
    fn file_and_flags_do_not_mix() {
        let RolloutCmd::Create(a) = parse(&["create", "-f", "x.toml", "--name", "n"]) else {
            panic!("not a create");
        };
        assert!(
            resolve_spec(&a.spec)
                .unwrap_err()
                .to_string()
                .contains("not both")
        );
        let RolloutCmd::Create(a) = parse(&["create"]) else {
            panic!("not a create");
        };
        assert!(
            resolve_spec(&a.spec)
                .unwrap_err()
                .to_string()
                .starts_with("give a spec")
        );
    }

    #[test]
    fn spec_files_are_read_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.toml");
        std::fs::write(
            &good,
            "name = \"n\"\nfirmware = \"fw-1\"\n[[stages]]\ncount = 2\n[[stages]]\npercent = 100\n",
        )
        .unwrap();
        let path = good.display().to_string();
        let RolloutCmd::Create(a) = parse(&["create", "-f", &path, "--start"]) else {
            panic!("not a create");
        };
        assert_eq!(resolve_spec(&a.spec).unwrap().stages.len(), 2);
        let bad = dir.path().join("bad.toml");
        std::fs::write(&bad, "name = \"n\"\n").unwrap();
        let path = bad.display().to_string();
        let RolloutCmd::Create(a) = parse(&["create", "-f", &path]) else {
            panic!("not a create");
        };
        let e = resolve_spec(&a.spec).unwrap_err().to_string();
        assert!(e.contains("bad.toml: firmware: is required"), "{e}");
        let RolloutCmd::Create(a) = parse(&["create", "-f", "/nonexistent/x.toml"]) else {
            panic!("not a create");
        };
        assert!(
            resolve_spec(&a.spec)
                .unwrap_err()
                .to_string()
                .starts_with("cannot read the spec")
        );
    }

    #[test]
    fn plan_takes_an_id_or_a_spec() {
        let RolloutCmd::Plan(a) = parse(&["plan", "ro-1"]) else {
            panic!("not a plan");
        };
        let r = resolve_plan(a.id.as_deref(), &a.spec).unwrap();
        assert_eq!(
            r.subject,
            Some(pb::plan_rollout_request::Subject::RolloutId("ro-1".into()))
        );
        let RolloutCmd::Plan(a) = parse(&["plan", "ro-1", "--canary", "3"]) else {
            panic!("not a plan");
        };
        assert!(resolve_plan(a.id.as_deref(), &a.spec).is_err());
        let RolloutCmd::Plan(a) =
            parse(&["plan", "--name", "n", "--firmware", "f", "--canary", "3"])
        else {
            panic!("not a plan");
        };
        assert!(matches!(
            resolve_plan(a.id.as_deref(), &a.spec).unwrap().subject,
            Some(pb::plan_rollout_request::Subject::Spec(_))
        ));
    }

    // === against the in-process fake ===

    use self::args::WatchArgs;
    use crate::cli::OutputFormat;
    use crate::fake;

    fn stage(
        index: u32,
        name: &str,
        state: pb::StageState,
        counts: pb::TaskCounts,
    ) -> pb::StageStatus {
        pb::StageStatus {
            index,
            name: name.into(),
            state: state as i32,
            counts: Some(counts),
            ..Default::default()
        }
    }

    fn rollout(state: pb::RolloutState, reason: &str, succeeded: u32, failed: u32) -> pb::Rollout {
        pb::Rollout {
            id: "ro-1".into(),
            state: state as i32,
            state_reason: reason.into(),
            spec: Some(pb::RolloutSpec {
                name: "hue".into(),
                firmware_id: "fw-1".into(),
                ..Default::default()
            }),
            stages: vec![stage(
                0,
                "canary",
                pb::StageState::Running,
                pb::TaskCounts {
                    total: 5,
                    succeeded,
                    failed,
                    updating: 5 - succeeded - failed,
                    ..Default::default()
                },
            )],
            totals: Some(pb::TaskCounts {
                total: 5,
                succeeded,
                failed,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn progress(seq: u64, r: pb::Rollout, tasks: Vec<pb::Task>) -> pb::RolloutProgress {
        pb::RolloutProgress {
            rollout: Some(r),
            tasks,
            seq,
            remaining_s: None,
        }
    }

    fn updating(device: &str, pct: f32) -> pb::Task {
        pb::Task {
            device_id: device.into(),
            status: pb::UpgradeStatus::Updating as i32,
            progress: pct,
            remaining_s: Some(20),
            ..Default::default()
        }
    }

    async fn watch_with(
        script: Vec<pb::RolloutProgress>,
        format: OutputFormat,
    ) -> (anyhow::Result<()>, String, fake::Log) {
        let fakes = fake::Rollouts {
            watch: script,
            ..Default::default()
        };
        let log = fakes.log.clone();
        let server = fake::serve(fakes, fake::Access::default()).await;
        let (ctx, buf) = fake::ctx(&server.url, format);
        let result = run(
            &ctx,
            RolloutCmd::Watch(WatchArgs {
                id: "ro-1".into(),
                no_devices: false,
            }),
        )
        .await;
        (result, fake::printed(&buf), log)
    }

    #[tokio::test]
    async fn watch_ends_with_success_when_the_rollout_completes() {
        let (result, out, log) = watch_with(
            vec![
                progress(
                    10,
                    rollout(pb::RolloutState::Running, "", 0, 0),
                    vec![updating("home/a", 10.0)],
                ),
                progress(
                    11,
                    rollout(pb::RolloutState::Running, "", 4, 0),
                    vec![updating("home/a", 90.0)],
                ),
                progress(
                    12,
                    rollout(pb::RolloutState::Completed, "all stages succeeded", 5, 0),
                    vec![],
                ),
            ],
            OutputFormat::Json,
        )
        .await;
        result.unwrap();
        let lines: Vec<serde_json::Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0]["seq"], 10);
        assert_eq!(lines[0]["tasks"][0]["progress"], 10.0);
        assert_eq!(lines[2]["rollout"]["state"]["name"], "completed");
        let log = log.lock().unwrap();
        assert!(log[0].contains("include_tasks: true"), "{log:?}");
    }

    #[tokio::test]
    async fn watch_fails_with_the_reason_when_the_rollout_aborts() {
        let (result, out, _) = watch_with(
            vec![
                progress(1, rollout(pb::RolloutState::Running, "", 1, 0), vec![]),
                progress(
                    2,
                    rollout(
                        pb::RolloutState::Aborted,
                        "stage canary: 2 failures >= threshold 1",
                        1,
                        2,
                    ),
                    vec![],
                ),
            ],
            OutputFormat::Table,
        )
        .await;
        let err = result.unwrap_err();
        assert_eq!(
            err.downcast_ref::<Failed>(),
            Some(&Failed(
                "rollout ro-1 aborted: stage canary: 2 failures >= threshold 1".into()
            ))
        );
        // Without a terminal: one line per change, then the final state.
        assert!(
            out.starts_with("ro-1 running: stage 1/1 canary (running): 1/5 done;"),
            "{out}"
        );
        assert!(
            out.lines()
                .any(|l| l.starts_with("State ") && l.trim_end().ends_with(" aborted")),
            "{out}"
        );
    }

    #[tokio::test]
    async fn a_watch_that_ends_early_is_an_error_not_a_failure() {
        let (result, _, _) = watch_with(
            vec![progress(
                1,
                rollout(pb::RolloutState::Paused, "operator", 1, 0),
                vec![],
            )],
            OutputFormat::Table,
        )
        .await;
        let err = result.unwrap_err();
        assert!(err.downcast_ref::<Failed>().is_none());
        assert!(
            err.to_string()
                .contains("run `otactl rollout watch ro-1` again"),
            "{err}"
        );
        let (result, _, _) = watch_with(vec![], OutputFormat::Json).await;
        assert!(
            result
                .unwrap_err()
                .to_string()
                .contains("without sending its state")
        );
    }

    #[tokio::test]
    async fn create_plan_and_actions_send_what_was_asked() {
        let fakes = fake::Rollouts {
            rollout: rollout(pb::RolloutState::Running, "", 0, 0),
            plan: pb::RolloutPlan {
                stages: vec![pb::PlannedStage {
                    index: 0,
                    name: "canary".into(),
                    device_ids: vec!["home/a".into(), "home/b".into()],
                    device_count: 2,
                    estimated_s: 600,
                    canaries: vec![],
                }],
                exclusions: vec![pb::Exclusion {
                    device_id: "home/c".into(),
                    code: 5000,
                    reason: "already on 2.3".into(),
                }],
                estimated_duration_s: 1200,
                warnings: vec!["stage wave-1 has no devices".into()],
                policies: vec![],
                target_count: 2,
                ..Default::default()
            },
            ..Default::default()
        };
        let log = fakes.log.clone();
        let server = fake::serve(fakes, fake::Access::default()).await;

        let (ctx, buf) = fake::ctx(&server.url, OutputFormat::Table);
        run(
            &ctx,
            parse(&[
                "create",
                "--name",
                "hue",
                "--firmware",
                "fw-1",
                "--canary",
                "2",
                "--waves",
                "100",
                "--start",
            ]),
        )
        .await
        .unwrap();
        let out = fake::printed(&buf);
        assert!(
            out.starts_with("Created rollout ro-1. Follow it with `otactl rollout watch ro-1`."),
            "{out}"
        );

        let (ctx, buf) = fake::ctx(&server.url, OutputFormat::Json);
        run(&ctx, parse(&["plan", "ro-1"])).await.unwrap();
        let plan: serde_json::Value = serde_json::from_str(&fake::printed(&buf)).unwrap();
        assert_eq!(
            plan["stages"][0]["device_ids"],
            serde_json::json!(["home/a", "home/b"])
        );
        assert_eq!(plan["exclusions"][0]["code"]["name"], "already-on-target");

        let (ctx, buf) = fake::ctx(&server.url, OutputFormat::Table);
        run(&ctx, parse(&["plan", "ro-1"])).await.unwrap();
        let text = fake::printed(&buf);
        assert!(text.contains("Estimated duration  20m"), "{text}");
        assert!(
            text.contains("home/c  5000 already-on-target  already on 2.3"),
            "{text}"
        );
        assert!(text.contains("! stage wave-1 has no devices"), "{text}");

        let (ctx, buf) = fake::ctx(&server.url, OutputFormat::Table);
        run(&ctx, parse(&["pause", "ro-1", "--reason", "vendor asked"]))
            .await
            .unwrap();
        assert_eq!(
            fake::printed(&buf),
            "Rollout ro-1 is paused. (vendor asked)\n"
        );

        let (ctx, _) = fake::ctx(&server.url, OutputFormat::Table);
        let err = run(&ctx, parse(&["abort", "ro-1"])).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "rollout ro-1 is completed; only running, paused or draft rollouts can be aborted"
        );

        // Four eyes: the server's refusal reaches the operator as it is; a reason is required.
        let (ctx, _) = fake::ctx(&server.url, OutputFormat::Table);
        let err = run(&ctx, parse(&["approve", "ro-1", "--reason", "read it"]))
            .await
            .unwrap_err();
        assert!(
            err.to_string().starts_with("you created rollout ro-1"),
            "{err}"
        );
        assert!(crate::cli::Cli::try_parse_from(["otactl", "rollout", "deny", "ro-1"]).is_err());

        // Rollback: the request carries the devices, --start and the reason; a refusal reads
        // as the server wrote it.
        let (ctx, _) = fake::ctx(&server.url, OutputFormat::Table);
        let err = run(
            &ctx,
            parse(&[
                "rollback",
                "ro-1",
                "--devices",
                "all",
                "--start",
                "--reason",
                "recall",
            ]),
        )
        .await
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "rollout ro-1 is running: pause or abort it first (`otactl rollout abort ro-1`), then roll it back"
        );

        let (ctx, buf) = fake::ctx(&server.url, OutputFormat::Table);
        run(&ctx, parse(&["list"])).await.unwrap();
        assert!(
            fake::printed(&buf).contains("ro-1  hue   fw-1      running"),
            "{}",
            fake::printed(&buf)
        );

        let (ctx, _) = fake::ctx(&server.url, OutputFormat::Table);
        let err = run(&ctx, parse(&["show", "ro-9"])).await.unwrap_err();
        assert_eq!(err.to_string(), "no rollout \"ro-9\"");

        let log = log.lock().unwrap();
        assert!(
            log[0].starts_with("Create: ") && log[0].contains("start: true"),
            "{log:?}"
        );
        assert!(log[0].contains("CumulativePercent(100.0)"), "{log:?}");
        assert!(log[1].contains("RolloutId(\"ro-1\")"), "{log:?}");
        assert!(
            log.iter()
                .any(|l| l.starts_with("Pause: ") && l.contains("vendor asked")),
            "{log:?}"
        );
        assert!(
            log.iter().any(|l| l.starts_with("Rollback: ")
                && l.contains("scope: All")
                && l.contains("start: true")
                && l.contains("recall")),
            "{log:?}"
        );
    }
}
