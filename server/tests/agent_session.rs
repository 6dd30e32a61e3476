//! The agent session's rules over real gRPC: seqs strictly increase with bounded gaps, one hello,
//! garbage and oversized messages end the session with a clear status, refused reports are
//! answered with a refusal (never an ack) and counted, the welcome's `acked_seq` stays right, and
//! what an agent sends is quoted (at most 100 characters) in errors and logs.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use ota_proto::v1 as pb;
use ota_testkit::otad::*;
use ota_testkit::session::*;
use prost::Message;
use tonic::Code;

const MAX_SEQ: u64 = i64::MAX as u64;

/// Every log line otad writes in this test binary (one global subscriber, installed once).
fn log_lines() -> Arc<Mutex<Vec<u8>>> {
    static LOG: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOG.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let writer = Capture(buf.clone());
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::set_global_default(subscriber).unwrap();
        buf
    })
    .clone()
}

#[derive(Clone)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn device(local: &str, version: &str) -> pb::DeviceReport {
    pb::DeviceReport {
        local_id: local.into(),
        transport: pb::Transport::Esphome as i32,
        network: "esphome".into(),
        name: local.into(),
        chip: "esp32".into(),
        current: Some(pb::VersionInfo {
            version: version.into(),
            ..Default::default()
        }),
        reachable: true,
        supports_ota: true,
        ..Default::default()
    }
}

fn heartbeat() -> pb::agent_message::Body {
    pb::agent_message::Body::Heartbeat(pb::Heartbeat::default())
}

async fn version_of(ts: &TestOtad, id: &str) -> String {
    ts.devices()
        .get(pb::GetDeviceRequest { id: id.into() })
        .await
        .unwrap()
        .into_inner()
        .current
        .unwrap_or_default()
        .version
}

#[tokio::test]
async fn seq_max_ends_the_session_acknowledges_nothing_and_the_welcome_stays_right() {
    let ts = TestOtad::start().await;
    let ch = ts.channel.clone();
    let (mut agent, welcome) = AgentSession::connect(&ch, "home", "agent-1", 0)
        .await
        .unwrap();
    assert_eq!(welcome.acked_seq, 0);
    agent
        .send(1, inventory(vec![device("lamp", "1.0.0")]))
        .await;
    assert_eq!(agent.acked().await, 1);

    // u64::MAX: the session ends with INVALID_ARGUMENT and a short message; no ack, nothing
    // recorded (the bug: it was acknowledged, and every later report was then "a duplicate").
    agent
        .send(u64::MAX, inventory(vec![device("lamp", "2.0.0")]))
        .await;
    let (answers, status) = agent.ended_with().await;
    assert!(answers.is_empty(), "{answers:?}");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("out of range"), "{status:?}");
    assert!(status.message().len() < 200);
    assert_eq!(version_of(&ts, "home/lamp").await, "1.0.0");
    assert_eq!(ts.report_seqs_in_log("agent-1").await, vec![1]);

    // The welcome says what was applied, and a later report is applied.
    let (mut agent, welcome) = AgentSession::connect(&ch, "home", "agent-1", 1)
        .await
        .unwrap();
    assert_eq!(welcome.acked_seq, 1);
    agent
        .send(2, inventory(vec![device("lamp", "2.0.0")]))
        .await;
    assert_eq!(agent.acked().await, 2);
    assert_eq!(version_of(&ts, "home/lamp").await, "2.0.0");
    assert_eq!(ts.report_seqs_in_log("agent-1").await, vec![1, 2]);
}

#[tokio::test]
async fn seqs_strictly_increase_with_bounded_gaps() {
    let ts = TestOtad::start().await;
    let ch = ts.channel.clone();

    // The same seq twice in one session: FAILED_PRECONDITION, the second not acknowledged.
    let (mut agent, _) = AgentSession::connect(&ch, "home", "a-dup", 0)
        .await
        .unwrap();
    agent.send(1, inventory(vec![device("d1", "1")])).await;
    assert_eq!(agent.acked().await, 1);
    agent.send(1, inventory(vec![device("d1", "2")])).await;
    let (answers, status) = agent.ended_with().await;
    assert!(answers.is_empty());
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("strictly increase"), "{status:?}");

    // Going back: the same.
    let (mut agent, w) = AgentSession::connect(&ch, "home", "a-dup", 1)
        .await
        .unwrap();
    assert_eq!(w.acked_seq, 1);
    agent.send(3, inventory(vec![device("d1", "3")])).await;
    assert_eq!(agent.acked().await, 3);
    agent.send(2, inventory(vec![device("d1", "4")])).await;
    assert_eq!(agent.ended_with().await.1.code(), Code::FailedPrecondition);
    assert_eq!(version_of(&ts, "home/d1").await, "3");

    // A seq below the welcome's acked_seq (already applied): the same.
    let (mut agent, w) = AgentSession::connect(&ch, "home", "a-dup", 3)
        .await
        .unwrap();
    assert_eq!(w.acked_seq, 3);
    agent.send(3, inventory(vec![device("d1", "5")])).await;
    assert_eq!(agent.ended_with().await.1.code(), Code::FailedPrecondition);

    // More than 1,000,000 past the last seq and the hello's last_seq: INVALID_ARGUMENT...
    let (mut agent, _) = AgentSession::connect(&ch, "gap", "a-gap", 0).await.unwrap();
    agent
        .send(1_000_001, inventory(vec![device("d1", "1")]))
        .await;
    let (_, status) = agent.ended_with().await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("jumps"), "{status:?}");
    // ...exactly 1,000,000 is fine...
    let (mut agent, _) = AgentSession::connect(&ch, "gap", "a-gap", 0).await.unwrap();
    agent
        .send(1_000_000, inventory(vec![device("d1", "2")]))
        .await;
    assert_eq!(agent.acked().await, 1_000_000);
    drop(agent);
    // ...and the hello's last_seq counts: reports that recorded nothing leave no seq in the log,
    // so the agent's journal may be far ahead of the welcome.
    let (mut agent, w) = AgentSession::connect(&ch, "gap", "a-gap", 5_000_000)
        .await
        .unwrap();
    assert_eq!(w.acked_seq, 1_000_000);
    agent
        .send(5_000_001, inventory(vec![device("d1", "3")]))
        .await;
    assert_eq!(agent.acked().await, 5_000_001);
    agent
        .send(5_000_002, inventory(vec![device("d1", "4")]))
        .await;
    assert_eq!(agent.acked().await, 5_000_002);

    // The hello's last_seq itself is bounded.
    let err = AgentSession::connect(&ch, "gap", "a-gap", MAX_SEQ + 1)
        .await
        .err()
        .unwrap();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");

    // A heartbeat carries seq 0 and gets no answer; one with a seq is a report like any other
    // for the rules (acknowledged, nothing recorded), and u64::MAX is still out of range.
    let (mut agent, _) = AgentSession::connect(&ch, "hb", "a-hb", 0).await.unwrap();
    agent.send(0, heartbeat()).await;
    agent.send(7, heartbeat()).await;
    assert_eq!(agent.acked().await, 7);
    agent.send(u64::MAX, heartbeat()).await;
    let (answers, status) = agent.ended_with().await;
    assert!(answers.is_empty());
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(ts.report_seqs_in_log("a-hb").await.is_empty());
}

#[tokio::test]
async fn a_second_hello_garbage_and_oversized_messages_end_the_session_with_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let ts = TestOtad::start_in(dir, |c| c.max_message_bytes = 64 * 1024).await;
    let ch = ts.channel.clone();

    // A second hello.
    let (mut agent, _) = AgentSession::connect(&ch, "home", "a-1", 0).await.unwrap();
    agent.send(1, inventory(vec![device("d1", "1")])).await;
    assert_eq!(agent.acked().await, 1);
    agent
        .send_raw(hello_message("home", "a-1", 1).encode_to_vec())
        .await;
    let (_, status) = agent.ended_with().await;
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("one hello"), "{status:?}");

    // Bytes that are no AgentMessage after a valid hello (the bug: grpc-status OK).
    let (mut agent, _) = AgentSession::connect(&ch, "home", "a-1", 1).await.unwrap();
    agent.send_raw(vec![0x0a, 0xff, 0xff, 0xff]).await;
    let (_, status) = agent.ended_with().await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().starts_with("malformed message"),
        "{status:?}"
    );

    // A message over max_message_bytes, after the hello and as the hello: RESOURCE_EXHAUSTED,
    // the code of every size limit.
    let big: Vec<pb::DeviceReport> = (0..2000)
        .map(|i| device(&format!("device-{i:05}"), "1.0.0"))
        .collect();
    let big = pb::AgentMessage {
        seq: 2,
        body: Some(inventory(big)),
    }
    .encode_to_vec();
    assert!(big.len() > 64 * 1024);
    let (mut agent, _) = AgentSession::connect(&ch, "home", "a-1", 1).await.unwrap();
    agent.send_raw(big).await;
    let (answers, status) = agent.ended_with().await;
    assert!(answers.is_empty());
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let mut huge_hello = hello_message("home", "a-1", 1);
    if let Some(pb::agent_message::Body::Hello(h)) = &mut huge_hello.body {
        h.agent_version = "v".repeat(100_000);
    }
    let err = AgentSession::open(&ch, None, huge_hello.encode_to_vec())
        .await
        .err()
        .unwrap();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert_eq!(ts.report_seqs_in_log("a-1").await, vec![1]);
}

#[tokio::test]
async fn refused_reports_are_answered_counted_and_never_acknowledged() {
    let ts = TestOtad::start().await;
    let ch = ts.channel.clone();
    let (mut agent, _) = AgentSession::connect(&ch, "home", "agent-r", 0)
        .await
        .unwrap();
    agent
        .send(1, inventory(vec![device("lamp", "1.0.0")]))
        .await;
    assert_eq!(agent.acked().await, 1);

    // Progress for a task that does not exist (with a 1 MB task id: the reason quotes 100
    // characters of it).
    let huge = "t".repeat(1024 * 1024);
    agent
        .send(
            2,
            pb::agent_message::Body::Progress(pb::TaskProgress {
                task_id: huge.clone(),
                attempt: 1,
                status: pb::UpgradeStatus::Updating as i32,
                progress: f32::NAN,
                ..Default::default()
            }),
        )
        .await;
    let (seq, why) = agent.refused().await;
    assert_eq!(seq, 2);
    assert!(why.starts_with("unknown task \"tttt"), "{why}");
    assert!(why.len() < 200, "{} bytes", why.len());

    // A result with status 999.
    agent
        .send(
            3,
            pb::agent_message::Body::Result(pb::TaskResult {
                task_id: "task-x".into(),
                attempt: 1,
                status: 999,
                ..Default::default()
            }),
        )
        .await;
    let (seq, why) = agent.refused().await;
    assert_eq!(seq, 3);
    assert!(why.contains("999"), "{why}");

    // An inventory of 10,001 devices.
    let many: Vec<pb::DeviceReport> = (0..10_001)
        .map(|i| pb::DeviceReport {
            local_id: format!("d{i}"),
            ..Default::default()
        })
        .collect();
    agent.send(4, inventory(many)).await;
    let (seq, why) = agent.refused().await;
    assert_eq!(seq, 4);
    assert!(why.contains("10000"), "{why}");

    // A journaled answer to a check nobody asked.
    agent
        .send(
            5,
            pb::agent_message::Body::CheckResult(pb::CheckResult {
                check_id: "chk-none".into(),
                device_local_id: "lamp".into(),
                reachable: true,
                ..Default::default()
            }),
        )
        .await;
    assert_eq!(agent.refused().await.0, 5);

    // The session goes on: the next report is acknowledged and recorded.
    agent
        .send(6, inventory(vec![device("lamp", "1.1.0")]))
        .await;
    assert_eq!(agent.acked().await, 6);
    assert_eq!(ts.report_seqs_in_log("agent-r").await, vec![1, 6]);

    // Counted by kind.
    let text = ts.app().metrics.provider().render_prometheus().unwrap();
    let count = |kind: &str| -> Option<f64> {
        text.lines()
            .find(|l| {
                l.starts_with("ota_reports_refused_total{")
                    && l.contains(&format!("kind=\"{kind}\""))
                    && l.contains("site=\"home\"")
            })
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    };
    assert_eq!(count("progress"), Some(1.0), "{text}");
    assert_eq!(count("result"), Some(1.0));
    assert_eq!(count("inventory"), Some(1.0));
    assert_eq!(count("check_result"), Some(1.0));

    // A refused report is not "applied": the welcome says 6, and a fresh report above it works.
    drop(agent);
    let (mut agent, welcome) = AgentSession::connect(&ch, "home", "agent-r", 6)
        .await
        .unwrap();
    assert_eq!(welcome.acked_seq, 6);
    agent
        .send(7, inventory(vec![device("lamp", "1.2.0")]))
        .await;
    assert_eq!(agent.acked().await, 7);
}

/// The health fields of reports (issue 15 item 4): a result's health must be one the proto
/// defines, and a health window must run forward and last at most a day; refused reports store
/// nothing.
#[tokio::test]
async fn health_values_outside_their_bounds_are_refused() {
    let ts = TestOtad::start().await;
    let (mut agent, _) = AgentSession::connect(&ts.channel, "home", "agent-h", 0)
        .await
        .unwrap();
    agent
        .send(
            1,
            pb::agent_message::Body::Result(pb::TaskResult {
                task_id: "task-x".into(),
                attempt: 1,
                status: pb::UpgradeStatus::Success as i32,
                health: 9,
                ..Default::default()
            }),
        )
        .await;
    let (seq, why) = agent.refused().await;
    assert_eq!(seq, 1);
    assert!(why.starts_with("result with health 9 is not 0"), "{why}");
    for (seq, until) in [(2, 999), (3, 1000 + 86_400_001)] {
        agent
            .send(
                seq,
                pb::agent_message::Body::Progress(pb::TaskProgress {
                    task_id: "task-x".into(),
                    attempt: 1,
                    status: pb::UpgradeStatus::Downloaded as i32,
                    at_ms: 1000,
                    verify_until_ms: until,
                    ..Default::default()
                }),
            )
            .await;
        let (refused, why) = agent.refused().await;
        assert_eq!(refused, seq);
        assert!(why.starts_with("a health window of"), "{why}");
    }
    assert!(ts.report_seqs_in_log("agent-h").await.is_empty());
}

#[tokio::test]
async fn hello_values_outside_their_bounds_are_not_stored() {
    let ts = TestOtad::start().await;
    let ch = ts.channel.clone();
    let mut hello = hello_message("odd", "agent-o", 0);
    if let Some(pb::agent_message::Body::Hello(h)) = &mut hello.body {
        h.timezone = "../../etc/passwd".into();
        h.agent_version = "1.0\u{1b}[31m\nforged".into();
        h.utc_offset_minutes = i32::MAX;
        h.transports = vec![
            pb::TransportInstance {
                kind: 999,
                name: "weird".into(),
                ..Default::default()
            },
            pb::TransportInstance {
                kind: pb::Transport::Esphome as i32,
                name: "esphome".into(),
                device_count: 3,
                ..Default::default()
            },
        ];
    }
    let (_agent, _) = AgentSession::open(&ch, None, hello.encode_to_vec())
        .await
        .unwrap();
    let site = ts
        .sites()
        .get(pb::GetSiteRequest { id: "odd".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(site.timezone, "", "not an IANA zone: not stored");
    assert!(
        !site.agent_version.chars().any(char::is_control),
        "{:?}",
        site.agent_version
    );
    assert_eq!(site.transports.len(), 1, "{:?}", site.transports);
    assert_eq!(site.transports[0].kind, pb::Transport::Esphome as i32);

    // A device of an unknown transport kind is not stored either.
    let (mut agent, _) = AgentSession::connect(&ch, "odd", "agent-o", 0)
        .await
        .unwrap();
    let mut d = device("x", "1");
    d.transport = 999;
    agent.send(1, inventory(vec![d, device("y", "1")])).await;
    assert_eq!(agent.acked().await, 1);
    let err = ts
        .devices()
        .get(pb::GetDeviceRequest { id: "odd/x".into() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(version_of(&ts, "odd/y").await, "1");
}

#[tokio::test]
async fn a_megabyte_of_input_is_quoted_in_errors_and_never_reaches_a_log_line_whole() {
    let log = log_lines();
    let ts = TestOtad::start().await;
    let ch = ts.channel.clone();
    let huge = "x".repeat(1024 * 1024);

    // A 1 MB site id: INVALID_ARGUMENT with a short message (the bug: a 786 KB trailer, which
    // the client saw as a transport error).
    let err = AgentSession::connect(&ch, &huge, "agent-m", 0)
        .await
        .err()
        .unwrap();
    assert_eq!(err.code(), Code::InvalidArgument, "{:?}", err.code());
    assert!(err.message().len() < 300, "{} bytes", err.message().len());
    assert!(err.message().contains("xxx…\""), "{}", err.message());

    // A 1 MB device local id: the device is ignored, the rest of the report recorded, and the
    // log line saying so quotes 100 characters of it.
    let (mut agent, _) = AgentSession::connect(&ch, "home", "agent-m", 0)
        .await
        .unwrap();
    agent
        .send(1, inventory(vec![device(&huge, "1"), device("ok", "1")]))
        .await;
    assert_eq!(agent.acked().await, 1);
    assert_eq!(version_of(&ts, "home/ok").await, "1");

    let text = String::from_utf8_lossy(&log.lock().unwrap()).into_owned();
    assert!(
        text.contains("device report ignored"),
        "the ignored device is logged"
    );
    let longest = text.lines().map(str::len).max().unwrap_or(0);
    assert!(longest < 2000, "a log line of {longest} bytes");
    assert!(!text.contains(&"x".repeat(101)));
}
