//! Validation and recovery of the sled event log at open.
//!
//! What it checks and why is described in the `sled` module documentation ("Open and
//! recovery"). In short: a cheap key scan over the whole log, full checks of the tail,
//! and the acknowledged high-water mark. It repairs exactly one thing on its own: the
//! index entries and heads of the *last* record, which a crash between the record insert
//! and its index inserts can leave missing or stale. Everything else that is wrong is
//! reported as [`StoreError::Corrupt`]; deleting data happens only when the operator set
//! `truncate_corrupt_tail_after`.

use std::collections::HashMap;

use ::sled::IVec;
use tracing::{error, warn};

use super::codec::{
    FORMAT_VERSION, FORMAT_VERSION_WITHOUT_WAL, head_value, index_key, index_prefix, index_value,
    log_key, open_record, parse_head_value, parse_index_key, parse_index_value, peek_count,
    seq_of_log_key,
};
use super::disk_sync::DiskSync;
use super::sled::{
    ACKED_KEY, FORMAT_KEY, OpenValidation, SledOptions, Trees, corrupt, durable_flush, sled_error,
};
use super::{Corruption, StoreError};

/// What open found.
#[derive(Debug)]
pub(crate) struct Recovered {
    /// Last seq in the log (0 if empty).
    pub(crate) last_seq: u64,
    /// Number of log records read by the scan.
    pub(crate) scanned_records: u64,
    /// Events whose checksum, encoding and index entry were verified.
    pub(crate) fully_checked_events: u64,
}

/// The first damage found.
#[derive(Debug)]
struct Problem {
    seq: u64,
    reason: Corruption,
}

/// Why a scan stopped early.
enum Stop {
    Store(StoreError),
    Damaged(Problem),
}

impl From<StoreError> for Stop {
    fn from(err: StoreError) -> Self {
        Stop::Store(err)
    }
}

impl From<::sled::Error> for Stop {
    fn from(err: ::sled::Error) -> Self {
        Stop::Store(sled_error(err))
    }
}

fn damaged(seq: u64, reason: Corruption) -> Stop {
    Stop::Damaged(Problem { seq, reason })
}

/// A derived entry of the last record to write back after a crash.
enum Fix {
    Index { key: Vec<u8>, value: [u8; 12] },
    Head { stream: String, value: [u8; 16] },
}

/// One event of a fully checked record, as the index and heads should know it.
struct Indexed {
    stream: String,
    version: u64,
    seq: u64,
    pos: u32,
}

#[derive(Default)]
struct Scan {
    last_seq: u64,
    scanned_records: u64,
    fully_checked_events: u64,
    fixes: Vec<Fix>,
}

/// Validates the store and, if needed and allowed, repairs it. See the module docs.
///
/// Every write it makes (the format marker of a new store, completed index entries,
/// the acknowledged mark, a truncation) is made durable with [`durable_flush`] before it
/// returns, like an append.
pub(crate) fn recover(
    trees: &Trees,
    sync: &mut DiskSync,
    options: &SledOptions,
) -> Result<Recovered, StoreError> {
    check_format(trees, sync)?;
    let full_from = full_check_from(trees, options)?;
    let full = options.validation == OpenValidation::Full;
    let key_scan = matches!(
        options.validation,
        OpenValidation::TailAndKeys { .. } | OpenValidation::Full
    );
    let acked = read_acked(trees)?;
    let scanned = match scan(trees, full_from, key_scan, full, acked) {
        Ok(scan) => Ok(scan),
        Err(Stop::Damaged(problem)) => Err(problem),
        Err(Stop::Store(err)) => return Err(err),
    };
    let scan = match scanned {
        Ok(scan) => scan,
        Err(problem) => match options.truncate_corrupt_tail_after {
            Some(keep) if keep < problem.seq => {
                warn!(
                    seq = problem.seq,
                    reason = %problem.reason,
                    keep_up_to = keep,
                    "event log damaged; truncating it as the operator requested"
                );
                truncate_after(trees, sync, keep)?;
                let again = SledOptions {
                    truncate_corrupt_tail_after: None,
                    ..options.clone()
                };
                return recover(trees, sync, &again);
            }
            _ => {
                error!(seq = problem.seq, reason = %problem.reason, "event log corrupt; refusing to open");
                return Err(corrupt(problem.seq, problem.reason));
            }
        },
    };
    if let Some(keep) = options.truncate_corrupt_tail_after {
        warn!(
            keep_up_to = keep,
            "truncate_corrupt_tail_after is set but the log after it is intact; nothing truncated"
        );
    }
    let mut wrote = false;
    if !scan.fixes.is_empty() {
        warn!(
            last_seq = scan.last_seq,
            entries = scan.fixes.len(),
            "completing the stream index of the last append, interrupted by a crash"
        );
        for fix in &scan.fixes {
            match fix {
                Fix::Index { key, value } => trees.index.insert(key.as_slice(), &value[..]),
                Fix::Head { stream, value } => trees.heads.insert(stream.as_bytes(), &value[..]),
            }
            .map_err(sled_error)?;
        }
        wrote = true;
    }
    if acked != scan.last_seq {
        trees
            .meta
            .insert(ACKED_KEY, &scan.last_seq.to_be_bytes()[..])
            .map_err(sled_error)?;
        wrote = true;
    }
    if wrote {
        durable_flush(trees, sync)?;
    }
    Ok(Recovered {
        last_seq: scan.last_seq,
        scanned_records: scan.scanned_records,
        fully_checked_events: scan.fully_checked_events,
    })
}

/// Checks the format marker, writing it into a new store.
pub(crate) fn check_format(trees: &Trees, sync: &mut DiskSync) -> Result<(), StoreError> {
    match trees.meta.get(FORMAT_KEY).map_err(sled_error)? {
        Some(value) => {
            let found = <[u8; 4]>::try_from(value.as_ref()).map_or(0, u32::from_be_bytes);
            if found == FORMAT_VERSION {
                Ok(())
            } else if found == FORMAT_VERSION_WITHOUT_WAL {
                // Same trees; from now on records may be in the log first.
                warn!(
                    from = found,
                    to = FORMAT_VERSION,
                    "upgrading the event store's format"
                );
                write_format(trees, sync)
            } else {
                Err(StoreError::UnsupportedFormat {
                    found,
                    supported: FORMAT_VERSION,
                })
            }
        }
        None if trees.log.is_empty() && trees.index.is_empty() && trees.heads.is_empty() => {
            write_format(trees, sync)
        }
        // Data without a format marker: not written by this store.
        None => Err(StoreError::UnsupportedFormat {
            found: 0,
            supported: FORMAT_VERSION,
        }),
    }
}

/// Records the current format version, durably.
fn write_format(trees: &Trees, sync: &mut DiskSync) -> Result<(), StoreError> {
    trees
        .meta
        .insert(FORMAT_KEY, &FORMAT_VERSION.to_be_bytes()[..])
        .map_err(sled_error)?;
    durable_flush(trees, sync)?;
    Ok(())
}

fn read_acked(trees: &Trees) -> Result<u64, StoreError> {
    let value = trees.meta.get(ACKED_KEY).map_err(sled_error)?;
    match value {
        None => Ok(0),
        Some(v) => <[u8; 8]>::try_from(v.as_ref())
            .map(u64::from_be_bytes)
            .map_err(|_| {
                corrupt(
                    0,
                    Corruption::Undecodable(format!("acked_seq marker of {} bytes", v.len())),
                )
            }),
    }
}

/// The first seq whose record gets the full check: the tail window, always including
/// the last record (crash completion needs it) and everything after the operator's
/// truncation point.
fn full_check_from(trees: &Trees, options: &SledOptions) -> Result<u64, StoreError> {
    let (last_first, last_seq) = match trees.log.last().map_err(sled_error)? {
        None => (1, 0),
        Some((key, value)) => {
            let first = seq_of_log_key(&key).unwrap_or(1);
            let count = peek_count(&value).map_or(1, u64::from).max(1);
            (first, first.saturating_add(count - 1))
        }
    };
    let from = match options.validation {
        OpenValidation::Full => 1,
        OpenValidation::Tail { events } | OpenValidation::TailAndKeys { events } => {
            (last_seq.saturating_sub(events) + 1).min(last_first)
        }
    };
    Ok(match options.truncate_corrupt_tail_after {
        Some(keep) => from.min(keep.saturating_add(1)),
        None => from,
    })
}

/// Scans the log; see the module docs. Records from the one holding `full_from` on are
/// checked fully; `key_scan` starts the scan at seq 1 instead of there, to find gaps
/// anywhere. `full` adds the checks of `OpenValidation::Full` that are not per record
/// (orphan heads and index entries). `acked` is the acknowledged high-water mark.
fn scan(
    trees: &Trees,
    full_from: u64,
    key_scan: bool,
    full: bool,
    acked: u64,
) -> Result<Scan, Stop> {
    check_starts_at_one(trees)?;
    let start = if key_scan {
        1
    } else {
        match trees.log.range(..=log_key(full_from)).next_back() {
            Some(item) => seq_of_log_key(&item?.0).unwrap_or(1),
            None => 1,
        }
    };
    let mut scan = Scan::default();
    let walked = walk_records(trees, start, full_from, &mut scan)?;
    // A missing tail is the root cause of the dangling index entries and heads it
    // leaves behind, so it is reported before them.
    if acked > scan.last_seq {
        return Err(damaged(
            scan.last_seq + 1,
            Corruption::TruncatedTail {
                last_present: scan.last_seq,
                acknowledged: acked,
            },
        ));
    }
    if scan.scanned_records == 0 {
        if !trees.index.is_empty() || !trees.heads.is_empty() {
            return Err(damaged(
                1,
                Corruption::IndexMismatch(
                    "the log is empty but the stream index or heads are not".into(),
                ),
            ));
        }
        return Ok(scan);
    }
    check_heads(trees, &walked, &mut scan)?;
    if full {
        check_orphans(trees, &walked.heads_seen, &scan)?;
    }
    Ok(scan)
}

/// The log must start at seq 1, whatever the scan covers.
fn check_starts_at_one(trees: &Trees) -> Result<(), Stop> {
    if let Some((key, _)) = trees.log.first()? {
        let first = seq_of_log_key(&key).unwrap_or(0);
        if first != 1 {
            return Err(damaged(
                1,
                Corruption::Missing {
                    next_present: first,
                },
            ));
        }
    }
    Ok(())
}

/// What the walk over the records learnt for the checks after it.
struct Walked {
    /// Events of the last fully checked record. Its index check waits until the walk knows
    /// whether it is the last record of the log (then missing entries are completed).
    pending: Option<Vec<Indexed>>,
    /// Per stream, its last (version, seq) among the fully checked records.
    heads_seen: HashMap<String, (u64, u64)>,
}

/// Walks the records from `start`: no gaps or overlaps, a readable event count in each,
/// and the full check (checksum, events, index entries) from the record holding
/// `full_from` on. Counts into `scan` and sets its `last_seq`.
fn walk_records(
    trees: &Trees,
    start: u64,
    full_from: u64,
    scan: &mut Scan,
) -> Result<Walked, Stop> {
    let mut expected = start;
    let mut previous: Option<(u64, IVec)> = None;
    let mut walked = Walked {
        pending: None,
        heads_seen: HashMap::new(),
    };
    for item in trees.log.range(log_key(start)..) {
        let (key, value) = item?;
        let Some(first) = seq_of_log_key(&key) else {
            return Err(damaged(
                expected,
                Corruption::Undecodable(format!("log key of {} bytes", key.len())),
            ));
        };
        if first != expected {
            return Err(out_of_sequence(expected, first, previous.as_ref()));
        }
        let count = match peek_count(&value) {
            Some(count) if count > 0 => u64::from(count),
            _ => {
                let reason = open_record(first, &value)
                    .err()
                    .unwrap_or_else(|| Corruption::Undecodable("record holds no event".into()));
                return Err(damaged(first, reason));
            }
        };
        let end = first.saturating_add(count - 1);
        if end >= full_from {
            if let Some(events) = walked.pending.take() {
                check_index(trees, &events, None)?;
            }
            let events = decode(first, &value)?;
            scan.fully_checked_events += events.len() as u64;
            for e in &events {
                walked
                    .heads_seen
                    .insert(e.stream.clone(), (e.version, e.seq));
            }
            walked.pending = Some(events);
        }
        expected = end + 1;
        scan.scanned_records += 1;
        previous = Some((first, value));
    }
    scan.last_seq = expected - 1;
    Ok(walked)
}

/// The damage when a record starts at `first` instead of `expected`: a gap, an overlap, or
/// — found by verifying it — a damaged event count in the `previous`, unverified record
/// (which also looks like a gap).
fn out_of_sequence(expected: u64, first: u64, previous: Option<&(u64, IVec)>) -> Stop {
    if let Some((prev_first, prev_value)) = previous
        && let Err(reason) = open_record(*prev_first, prev_value)
    {
        return damaged(*prev_first, reason);
    }
    if first > expected {
        damaged(
            expected,
            Corruption::Missing {
                next_present: first,
            },
        )
    } else {
        damaged(
            first,
            Corruption::Undecodable(format!(
                "record overlaps the previous one, which ends at seq {}",
                expected - 1
            )),
        )
    }
}

/// Checks the last record's index entries and every fully checked stream's head. Missing
/// index entries of the last record and heads still at their previous version are the mark
/// of a crash mid-append, and are collected in `scan.fixes`.
fn check_heads(trees: &Trees, walked: &Walked, scan: &mut Scan) -> Result<(), Stop> {
    let mut last_record_first_version: HashMap<&str, u64> = HashMap::new();
    if let Some(events) = &walked.pending {
        check_index(trees, events, Some(&mut scan.fixes))?;
        for e in events {
            last_record_first_version
                .entry(e.stream.as_str())
                .or_insert(e.version);
        }
    }
    let mut expected_heads: Vec<(&String, &(u64, u64))> = walked.heads_seen.iter().collect();
    expected_heads.sort_by_key(|(_, (_, seq))| *seq);
    for (stream, &(version, seq)) in expected_heads {
        let first_version = last_record_first_version.get(stream.as_str()).copied();
        if let Some(fix) = check_head(trees, stream, version, seq, first_version, scan.last_seq)? {
            scan.fixes.push(fix);
        }
    }
    Ok(())
}

/// Checks one stream's head against its last event (`version` at `seq`). When the stream
/// has events in the last record (the first of them `first_version`) and the head is just
/// before them, the append was interrupted: the fix is returned.
fn check_head(
    trees: &Trees,
    stream: &str,
    version: u64,
    seq: u64,
    first_version: Option<u64>,
    last_seq: u64,
) -> Result<Option<Fix>, Stop> {
    let head = match trees.heads.get(stream.as_bytes())? {
        None => None,
        Some(value) => Some(parse_head_value(&value).ok_or_else(|| {
            damaged(
                seq,
                Corruption::HeadMismatch(format!(
                    "head of stream `{stream}` is {} bytes",
                    value.len()
                )),
            )
        })?),
    };
    if head == Some((version, seq)) {
        return Ok(None);
    }
    if let Some((_, head_seq)) = head
        && head_seq > last_seq
    {
        return Err(damaged(
            last_seq + 1,
            Corruption::HeadMismatch(format!(
                "stream `{stream}` has its head at seq {head_seq}, beyond the end of the \
                 log at seq {last_seq}: the log's tail is missing"
            )),
        ));
    }
    if let Some(first_version) = first_version {
        let interrupted = match head {
            None => first_version == 1,
            Some((v, _)) => v + 1 == first_version,
        };
        if interrupted {
            return Ok(Some(Fix::Head {
                stream: stream.to_owned(),
                value: head_value(version, seq),
            }));
        }
    }
    let found = match head {
        None => "no head".to_owned(),
        Some((v, s)) => format!("head version {v} at seq {s}"),
    };
    Err(damaged(
        seq,
        Corruption::HeadMismatch(format!(
            "stream `{stream}` has {found}, but its last event is version {version} at seq {seq}"
        )),
    ))
}

/// Full validation only: heads of streams without events, index entries beyond the log
/// or more index entries than events.
fn check_orphans(
    trees: &Trees,
    heads_seen: &HashMap<String, (u64, u64)>,
    scan: &Scan,
) -> Result<(), Stop> {
    for item in trees.heads.iter() {
        let (key, value) = item?;
        let stream = String::from_utf8_lossy(&key);
        if !heads_seen.contains_key(stream.as_ref()) {
            let seq = parse_head_value(&value).map_or(0, |(_, seq)| seq);
            return Err(damaged(
                seq,
                Corruption::HeadMismatch(format!(
                    "stream `{stream}` has a head but no event in the log"
                )),
            ));
        }
    }
    let mut entries = scan
        .fixes
        .iter()
        .filter(|f| matches!(f, Fix::Index { .. }))
        .count() as u64;
    for item in trees.index.iter() {
        let (key, value) = item?;
        let described = || match parse_index_key(&key) {
            Some((stream, version)) => format!("stream `{stream}` version {version}"),
            None => format!("unparsable key of {} bytes", key.len()),
        };
        match parse_index_value(&value) {
            Some((seq, _)) if seq <= scan.last_seq => entries += 1,
            Some((seq, _)) => {
                return Err(damaged(
                    seq,
                    Corruption::IndexMismatch(format!("{} points beyond the log", described())),
                ));
            }
            None => {
                return Err(damaged(
                    scan.last_seq,
                    Corruption::IndexMismatch(format!("{} has an unparsable value", described())),
                ));
            }
        }
    }
    if entries != scan.last_seq {
        return Err(damaged(
            scan.last_seq,
            Corruption::IndexMismatch(format!(
                "{entries} index entries for {} events",
                scan.last_seq
            )),
        ));
    }
    Ok(())
}

/// Verifies and decodes a record into what the index should hold for it.
fn decode(first: u64, value: &[u8]) -> Result<Vec<Indexed>, Stop> {
    let reader = open_record(first, value).map_err(|reason| damaged(first, reason))?;
    let mut events = Vec::with_capacity(reader.event_count() as usize);
    for (i, ev) in reader.enumerate() {
        let ev = ev.map_err(|reason| damaged(first, reason))?;
        events.push(Indexed {
            stream: ev.stream.to_owned(),
            version: ev.stream_version,
            seq: first + i as u64,
            pos: i as u32,
        });
    }
    Ok(events)
}

/// Checks the index entries of one record. With `fixes`, missing entries are collected
/// for completion instead of being reported.
fn check_index(
    trees: &Trees,
    events: &[Indexed],
    mut fixes: Option<&mut Vec<Fix>>,
) -> Result<(), Stop> {
    for e in events {
        let key = index_key(&e.stream, e.version);
        let want = index_value(e.seq, e.pos);
        match trees.index.get(&key)? {
            Some(found) if found.as_ref() == want => {}
            Some(found) => {
                let at = parse_index_value(&found).map_or_else(
                    || "an unparsable entry".to_owned(),
                    |(seq, _)| format!("seq {seq}"),
                );
                return Err(damaged(
                    e.seq,
                    Corruption::IndexMismatch(format!(
                        "stream `{}` version {} is indexed at {at}, but the log holds it at seq {}",
                        e.stream, e.version, e.seq
                    )),
                ));
            }
            None => match fixes.as_deref_mut() {
                Some(fixes) => fixes.push(Fix::Index { key, value: want }),
                None => {
                    return Err(damaged(
                        e.seq,
                        Corruption::IndexMismatch(format!(
                            "stream `{}` version {} (seq {}) is missing from the index",
                            e.stream, e.version, e.seq
                        )),
                    ));
                }
            },
        }
    }
    Ok(())
}

/// Deletes every record after `keep` and the derived entries of their events, then
/// records `keep` as the acknowledged mark. Operator-requested only.
fn truncate_after(trees: &Trees, sync: &mut DiskSync, keep: u64) -> Result<(), StoreError> {
    if keep > 0 {
        let (key, value) = trees
            .log
            .range(..=log_key(keep))
            .next_back()
            .transpose()
            .map_err(sled_error)?
            .ok_or_else(|| {
                StoreError::Invalid(format!(
                    "truncate_corrupt_tail_after = {keep}: the log has no record at or before seq {keep}"
                ))
            })?;
        let first = seq_of_log_key(&key).unwrap_or(0);
        let end = first
            .saturating_add(peek_count(&value).map_or(0, u64::from))
            .saturating_sub(1);
        if end != keep {
            return Err(StoreError::Invalid(format!(
                "truncate_corrupt_tail_after = {keep} falls inside the record (one commit \
                 group) holding seqs {first}..={end}; use {} or {end}",
                first.saturating_sub(1)
            )));
        }
    }
    let doomed: Vec<IVec> = trees
        .log
        .range(log_key(keep + 1)..)
        .keys()
        .collect::<Result<_, _>>()
        .map_err(sled_error)?;
    for key in &doomed {
        trees.log.remove(key).map_err(sled_error)?;
    }

    let mut doomed_index = Vec::new();
    for item in trees.index.iter() {
        let (key, value) = item.map_err(sled_error)?;
        match parse_index_value(&value) {
            Some((seq, _)) if seq > keep => doomed_index.push(key),
            Some(_) => {}
            None => warn!(key = ?key, "unparsable stream index entry left in place"),
        }
    }
    for key in &doomed_index {
        trees.index.remove(key).map_err(sled_error)?;
    }

    let mut stale_heads = Vec::new();
    for item in trees.heads.iter() {
        let (key, value) = item.map_err(sled_error)?;
        match parse_head_value(&value) {
            Some((_, seq)) if seq > keep => stale_heads.push(key),
            Some(_) => {}
            None => warn!(key = ?key, "unparsable stream head left in place"),
        }
    }
    for key in &stale_heads {
        let stream = String::from_utf8_lossy(key);
        let last = trees
            .index
            .scan_prefix(index_prefix(&stream))
            .next_back()
            .transpose()
            .map_err(sled_error)?;
        let new_head = last.and_then(|(k, v)| {
            let (_, version) = parse_index_key(&k)?;
            let (seq, _) = parse_index_value(&v)?;
            Some(head_value(version, seq))
        });
        match new_head {
            Some(head) => trees.heads.insert(key, &head[..]).map_err(sled_error)?,
            None => trees.heads.remove(key).map_err(sled_error)?,
        };
    }
    trees
        .meta
        .insert(ACKED_KEY, &keep.to_be_bytes()[..])
        .map_err(sled_error)?;
    durable_flush(trees, sync)?;
    warn!(
        kept_up_to = keep,
        removed_records = doomed.len(),
        removed_index_entries = doomed_index.len(),
        reset_heads = stale_heads.len(),
        "event log truncated by operator request"
    );
    Ok(())
}
