//! `otactl events tail`: the event log as columns or JSON lines, optionally following it.

use clap::{Args, Subcommand};
use ota_proto::v1 as pb;
use serde::Serialize;

use super::Ctx;

// === arguments ===

/// `otactl events ...`
#[derive(Debug, Subcommand)]
pub enum EventsCmd {
    /// Print events from the log, and with --follow keep printing new ones
    ///
    /// Columns: sequence number, time (UTC), stream, type, actor, payload (JSON). With -o json,
    /// one JSON object per line.
    ///
    /// Example:
    ///   otactl events tail --from 1 --limit 20
    ///   otactl events tail --follow --stream rollout/ --stream task/
    ///   otactl events tail --type FirmwareRegistered -o json
    #[command(verbatim_doc_comment)]
    Tail(TailArgs),
}

/// `events tail`.
#[derive(Debug, Args)]
pub struct TailArgs {
    /// First sequence number to print (1: the beginning).
    #[arg(long, default_value_t = 1, value_name = "SEQ")]
    pub from: u64,
    /// Keep the stream open and print new events as they are recorded.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Only streams starting with this prefix ("rollout/", "device/home/"; repeatable).
    #[arg(long = "stream", value_name = "PREFIX")]
    pub streams: Vec<String>,
    /// Only events of this type ("TaskProgressed"; repeatable).
    #[arg(long = "type", value_name = "TYPE")]
    pub types: Vec<String>,
    /// Stop after this many events.
    #[arg(short = 'n', long, value_name = "N")]
    pub limit: Option<u32>,
}

// === command ===

/// Resolves `events tail`.
pub fn resolve_tail(a: &TailArgs) -> anyhow::Result<pb::TailEventsRequest> {
    for s in &a.streams {
        if s.trim().is_empty() {
            anyhow::bail!("--stream is empty (give a prefix such as \"rollout/\")");
        }
    }
    for t in &a.types {
        if t.trim().is_empty() {
            anyhow::bail!("--type is empty (give an event type such as \"TaskProgressed\")");
        }
    }
    if a.limit == Some(0) {
        anyhow::bail!("--limit must be at least 1 (leave it out for no limit)");
    }
    Ok(pb::TailEventsRequest {
        from_seq: a.from,
        follow: a.follow,
        stream_prefixes: a.streams.iter().map(|s| s.trim().to_string()).collect(),
        types: a.types.iter().map(|t| t.trim().to_string()).collect(),
        limit: a.limit.unwrap_or(0),
    })
}

/// Runs an `events` command.
pub async fn run(ctx: &Ctx, cmd: EventsCmd) -> anyhow::Result<()> {
    let EventsCmd::Tail(a) = cmd;
    let req = resolve_tail(&a)?;
    let api = ctx.api().await?;
    let mut stream = api.call(api.events().tail(api.streaming(req))).await?;
    if !ctx.out.is_json() {
        ctx.out.text(&event_header())?;
    }
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    loop {
        let msg = tokio::select! {
            m = stream.message() => m,
            // Ctrl-C is how a follow ends: not an error.
            _ = &mut interrupted => return Ok(()),
        };
        match msg {
            Ok(Some(e)) => {
                let view = EventJson::new(&e);
                if ctx.out.is_json() {
                    ctx.out.json_line(&view)?;
                } else {
                    ctx.out.text(&event_line(&view))?;
                }
            }
            Ok(None) => return Ok(()),
            Err(status) => return Err(api.error(&status).into()),
        }
    }
}

// === JSON ===

/// One line of `events tail -o json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EventJson {
    /// Global sequence number.
    pub seq: u64,
    /// Stream ("firmware/<id>", ...).
    pub stream: String,
    /// Version of the stream after this event.
    pub stream_version: u64,
    /// Event type.
    #[serde(rename = "type")]
    pub kind: String,
    /// Payload schema version as stored.
    pub schema_version: u32,
    /// When recorded.
    pub recorded_at_ms: i64,
    /// Who caused it.
    pub actor: String,
    /// The payload as JSON (a string if the server sent something that is not JSON).
    pub payload: serde_json::Value,
}

impl EventJson {
    /// From the API.
    pub fn new(e: &pb::Event) -> Self {
        let payload = if e.payload_json.trim().is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_str(&e.payload_json)
                .unwrap_or_else(|_| serde_json::Value::String(e.payload_json.clone()))
        };
        Self {
            seq: e.seq,
            stream: e.stream.clone(),
            stream_version: e.stream_version,
            kind: e.r#type.clone(),
            schema_version: e.schema_version,
            recorded_at_ms: e.recorded_at_ms,
            actor: e.actor.clone(),
            payload,
        }
    }
}

// === columns ===

/// The header of `events tail`.
pub fn event_header() -> String {
    format!(
        "{:>6}  {:<24}  {:<32}  {:<24}  {:<12}  PAYLOAD",
        "SEQ", "TIME", "STREAM", "TYPE", "ACTOR"
    )
}

/// One event line.
pub fn event_line(e: &EventJson) -> String {
    let payload = if e.payload.is_null() {
        String::new()
    } else {
        e.payload.to_string()
    };
    format!(
        "{:>6}  {:<24}  {:<32}  {:<24}  {:<18}  {payload}",
        e.seq,
        crate::output::fmt_time_ms(e.recorded_at_ms),
        e.stream,
        e.kind,
        e.actor
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Command, parse};

    fn json<T: Serialize>(v: &T) -> String {
        serde_json::to_string(v).unwrap()
    }

    fn args() -> TailArgs {
        TailArgs {
            from: 1,
            follow: false,
            streams: Vec::new(),
            types: Vec::new(),
            limit: None,
        }
    }

    #[test]
    fn tail_requests() {
        let r = resolve_tail(&TailArgs {
            from: 42,
            follow: true,
            streams: vec![" rollout/".into()],
            types: vec!["TaskProgressed".into()],
            limit: Some(10),
        })
        .unwrap();
        assert_eq!(
            r,
            pb::TailEventsRequest {
                from_seq: 42,
                follow: true,
                stream_prefixes: vec!["rollout/".into()],
                types: vec!["TaskProgressed".into()],
                limit: 10
            }
        );
        assert_eq!(resolve_tail(&args()).unwrap().limit, 0);
        assert!(
            resolve_tail(&TailArgs {
                limit: Some(0),
                ..args()
            })
            .is_err()
        );
        assert!(
            resolve_tail(&TailArgs {
                streams: vec![" ".into()],
                ..args()
            })
            .is_err()
        );
    }

    #[test]
    fn events_tail_defaults_to_the_beginning() {
        let cli = parse(&["events", "tail"]).unwrap();
        let Command::Events(EventsCmd::Tail(a)) = cli.command else {
            panic!("not a tail");
        };
        assert_eq!(a.from, 1);
        assert!(!a.follow);
        assert_eq!(a.limit, None);
    }

    #[test]
    fn event_payload_is_embedded_json() {
        let e = pb::Event {
            seq: 1,
            stream: "firmware/fw-1".into(),
            stream_version: 1,
            r#type: "FirmwareRegistered".into(),
            schema_version: 1,
            recorded_at_ms: 1_700_000_000_000,
            actor: "alice".into(),
            payload_json: r#"{"id":"fw-1","size":3}"#.into(),
        };
        assert_eq!(
            json(&EventJson::new(&e)),
            r#"{"seq":1,"stream":"firmware/fw-1","stream_version":1,"type":"FirmwareRegistered","schema_version":1,"recorded_at_ms":1700000000000,"actor":"alice","payload":{"id":"fw-1","size":3}}"#
        );
        let odd = pb::Event {
            payload_json: "not json".into(),
            ..e
        };
        assert_eq!(
            EventJson::new(&odd).payload,
            serde_json::Value::String("not json".into())
        );
    }

    #[test]
    fn event_lines_are_columns() {
        let e = EventJson {
            seq: 7,
            stream: "firmware/fw-1".into(),
            stream_version: 1,
            kind: "FirmwareRegistered".into(),
            schema_version: 1,
            recorded_at_ms: 1_700_000_000_000,
            actor: "alice".into(),
            payload: serde_json::json!({"id": "fw-1"}),
        };
        let line = event_line(&e);
        assert!(
            line.starts_with("     7  2023-11-14T22:13:20.000Z"),
            "{line}"
        );
        assert!(line.ends_with(r#"{"id":"fw-1"}"#));
        assert!(event_header().contains("PAYLOAD"));
    }
}
