//! A property test of the agent session: random message sequences (valid and broken seqs,
//! second hellos, garbage bytes, reports for known and unknown tasks, statuses out of range,
//! invalid devices, empty bodies) against the real service in-process — one otad with its sled
//! store in a temp dir, real gRPC on loopback, a fresh site and agent id per case.
//!
//! Checked for every case: nothing panics; the session never ends with INTERNAL or UNKNOWN; it
//! ends with exactly the status the session rules predict (or cleanly); every journaled report
//! before that end gets exactly one answer, in order; an `Ack` only ever names a report whose
//! events are in the log (or one that changed nothing by construction); a `Refused` report left
//! nothing in the log; and after a reconnect the welcome's `acked_seq` is the highest seq the log
//! holds for the agent.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use ota_firmware::Chip;
use ota_firmware::builders::EspAppBuilder;
use ota_proto::v1 as pb;
use ota_testkit::otad::*;
use ota_testkit::session::*;
use ota_testkit::upload::*;
use proptest::prelude::*;
use prost::Message;
use tonic::Code;

const MAX_SEQ: u64 = i64::MAX as u64;
const MAX_SEQ_GAP: u64 = 1_000_000;

static PANICS: AtomicUsize = AtomicUsize::new(0);

struct World {
    rt: tokio::runtime::Runtime,
    ts: TestOtad,
    firmware_id: String,
    cases: AtomicU64,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            previous(info);
        }));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (ts, firmware_id) = rt.block_on(async {
            // One server for every case: its per-caller limit on EventService.Tail (the
            // check reads the log once per case) would throttle a fast run.
            let ts = TestOtad::start_in(tempfile::tempdir().unwrap(), |c| {
                c.rate_limits.tail = 0;
            })
            .await;
            let image = EspAppBuilder::new(Chip::Esp32)
                .version("2.0.0")
                .payload_size(2000)
                .build();
            let fw = ts
                .try_upload(meta("fuzz", "2.0.0"), &image)
                .await
                .unwrap()
                .firmware
                .unwrap();
            (ts, fw.id)
        });
        World {
            rt,
            ts,
            firmware_id,
            cases: AtomicU64::new(0),
        }
    })
}

/// How a message's seq is chosen, relative to the highest seq sent so far.
#[derive(Debug, Clone)]
enum SeqOp {
    Zero,
    Next,
    Gap(u64),
    Same,
    Back(u64),
    Max,
    AboveLimit,
    Jump,
    Any(u64),
}

#[derive(Debug, Clone)]
enum BodyOp {
    Heartbeat,
    CommandAck,
    Hello,
    Empty,
    Garbage(Vec<u8>),
    /// Devices with versions never reported before: always an event when accepted.
    FreshInventory(u8),
    /// Only devices the server ignores (bad local ids, unknown transport): changes nothing.
    BadInventory,
    /// More than 10,000 devices.
    HugeInventory,
    Progress {
        known: bool,
        status: i32,
        nan: bool,
    },
    Result {
        known: bool,
        status: i32,
    },
    CheckAnswer,
}

fn seq_op() -> impl Strategy<Value = SeqOp> {
    prop_oneof![
        3 => Just(SeqOp::Zero),
        8 => Just(SeqOp::Next),
        2 => (2u64..1000).prop_map(SeqOp::Gap),
        1 => Just(SeqOp::Same),
        1 => (1u64..5).prop_map(SeqOp::Back),
        1 => Just(SeqOp::Max),
        1 => Just(SeqOp::AboveLimit),
        1 => Just(SeqOp::Jump),
        1 => any::<u64>().prop_map(SeqOp::Any),
    ]
}

fn body_op() -> impl Strategy<Value = BodyOp> {
    prop_oneof![
        2 => Just(BodyOp::Heartbeat),
        1 => Just(BodyOp::CommandAck),
        1 => Just(BodyOp::Hello),
        1 => Just(BodyOp::Empty),
        1 => proptest::collection::vec(any::<u8>(), 1..24).prop_map(BodyOp::Garbage),
        4 => (1u8..4).prop_map(BodyOp::FreshInventory),
        1 => Just(BodyOp::BadInventory),
        1 => Just(BodyOp::HugeInventory),
        4 => (any::<bool>(), prop_oneof![Just(2), Just(100), Just(999), Just(-1)], any::<bool>())
            .prop_map(|(known, status, nan)| BodyOp::Progress { known, status, nan }),
        3 => (any::<bool>(), prop_oneof![Just(3), Just(4), Just(7), Just(999), Just(0)])
            .prop_map(|(known, status)| BodyOp::Result { known, status }),
        1 => Just(BodyOp::CheckAnswer),
    ]
}

fn device(local: &str, version: &str) -> pb::DeviceReport {
    pb::DeviceReport {
        local_id: local.into(),
        transport: pb::Transport::Esphome as i32,
        network: "esphome".into(),
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

/// What the session rules say of a message (mirrors `api::agents::check_seq`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rule {
    Fine,
    Broken(Code),
}

fn rule(seq: u64, body: &BodyOp, last: u64, hello_last: u64) -> Rule {
    match body {
        BodyOp::Garbage(_) => return Rule::Broken(Code::InvalidArgument),
        BodyOp::Hello => return Rule::Broken(Code::FailedPrecondition),
        _ => {}
    }
    if seq == 0 {
        return Rule::Fine;
    }
    if seq > MAX_SEQ {
        return Rule::Broken(Code::InvalidArgument);
    }
    if seq <= last {
        return Rule::Broken(Code::FailedPrecondition);
    }
    if seq.saturating_sub(last.max(hello_last)) > MAX_SEQ_GAP {
        return Rule::Broken(Code::InvalidArgument);
    }
    Rule::Fine
}

/// Garbage that is surely no `AgentMessage`: an invalid wire type first.
fn garbage(bytes: &[u8]) -> Vec<u8> {
    let mut out = vec![0x0f];
    out.extend_from_slice(bytes);
    out
}

async fn run_case(hello_last: u64, ops: Vec<(SeqOp, BodyOp)>) -> Result<(), TestCaseError> {
    let w = world();
    let ts = &w.ts;
    let n = w.cases.fetch_add(1, Ordering::SeqCst);
    let panics_before = PANICS.load(Ordering::SeqCst);
    let site = format!("fuzz-{n}");
    let agent_id = format!("agent-{n}");

    // A session with one device and a task running for it.
    let (mut agent, welcome) = AgentSession::connect(&ts.channel, &site, &agent_id, hello_last)
        .await
        .unwrap();
    prop_assert_eq!(welcome.acked_seq, 0);
    agent.send(1, inventory(vec![device("dev", "1.0.0")])).await;
    prop_assert_eq!(agent.acked().await, 1);
    let task_id = ts
        .devices()
        .update(pb::UpdateDeviceRequest {
            device_id: format!("{site}/dev"),
            firmware_id: w.firmware_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap()
        .id;

    // The random part: sent all at once, then the agent closes its side.
    let mut highest = 1u64;
    let mut last = 1u64;
    let mut broken: Option<Code> = None;
    // Seqs the server must answer, in order, with what changes nothing by construction.
    let mut expected: Vec<(u64, bool)> = Vec::new();
    let mut version = 0u32;
    for (seq_op, body_op) in &ops {
        let seq = match seq_op {
            SeqOp::Zero => 0,
            SeqOp::Next => highest.saturating_add(1),
            SeqOp::Gap(g) => highest.saturating_add(*g),
            SeqOp::Same => highest,
            SeqOp::Back(b) => highest.saturating_sub(*b),
            SeqOp::Max => u64::MAX,
            SeqOp::AboveLimit => MAX_SEQ + 1,
            SeqOp::Jump => highest.saturating_add(MAX_SEQ_GAP + 1),
            SeqOp::Any(v) => *v,
        };
        if seq != 0 && seq <= MAX_SEQ {
            highest = highest.max(seq);
        }
        let body = match body_op {
            BodyOp::Garbage(g) => {
                agent.send_raw(garbage(g)).await;
                None
            }
            BodyOp::Heartbeat => Some(pb::agent_message::Body::Heartbeat(pb::Heartbeat {
                at_ms: 1,
                ..Default::default()
            })),
            BodyOp::CommandAck => Some(pb::agent_message::Body::CommandAck(pb::CommandAck {
                command_id: 12345,
                accepted: true,
                error: None,
            })),
            BodyOp::Hello => match hello_message(&site, &agent_id, 0).body {
                Some(b) => Some(b),
                None => unreachable!(),
            },
            BodyOp::Empty => {
                agent
                    .send_raw(pb::AgentMessage { seq, body: None }.encode_to_vec())
                    .await;
                None
            }
            BodyOp::FreshInventory(k) => {
                let devices = (0..*k)
                    .map(|i| {
                        version += 1;
                        device(&format!("d{i}"), &format!("{version}.0"))
                    })
                    .collect();
                Some(inventory(devices))
            }
            BodyOp::BadInventory => {
                let mut odd = device("x", "1");
                odd.transport = 999;
                Some(inventory(vec![
                    device("a/b", "1"),
                    device(&"y".repeat(300), "1"),
                    odd,
                ]))
            }
            BodyOp::HugeInventory => Some(inventory(
                (0..10_001)
                    .map(|i| pb::DeviceReport {
                        local_id: format!("h{i}"),
                        ..Default::default()
                    })
                    .collect(),
            )),
            BodyOp::Progress { known, status, nan } => {
                Some(pb::agent_message::Body::Progress(pb::TaskProgress {
                    task_id: if *known {
                        task_id.clone()
                    } else {
                        "task-nope".into()
                    },
                    attempt: 1,
                    status: *status,
                    progress: if *nan { f32::NAN } else { 40.0 },
                    ..Default::default()
                }))
            }
            BodyOp::Result { known, status } => {
                Some(pb::agent_message::Body::Result(pb::TaskResult {
                    task_id: if *known {
                        task_id.clone()
                    } else {
                        "task-nope".into()
                    },
                    attempt: 1,
                    status: *status,
                    to: Some(pb::VersionInfo {
                        version: "2.0.0".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }))
            }
            BodyOp::CheckAnswer => Some(pb::agent_message::Body::CheckResult(pb::CheckResult {
                check_id: "chk-none".into(),
                device_local_id: "dev".into(),
                reachable: true,
                ..Default::default()
            })),
        };
        if let Some(body) = body {
            agent.send(seq, body).await;
        }
        // The model: what the server must do with this message.
        if broken.is_none() {
            let seq_seen = if matches!(body_op, BodyOp::Garbage(_)) {
                0
            } else {
                seq
            };
            match rule(seq_seen, body_op, last, hello_last) {
                Rule::Broken(code) => broken = Some(code),
                Rule::Fine if seq_seen != 0 => {
                    last = seq_seen;
                    let changes_nothing = matches!(
                        body_op,
                        BodyOp::BadInventory | BodyOp::Heartbeat | BodyOp::CommandAck
                    );
                    expected.push((seq_seen, changes_nothing));
                }
                Rule::Fine => {}
            }
        }
    }
    drop(agent.tx);
    let mut answers = Vec::new();
    let end = loop {
        match tokio::time::timeout(std::time::Duration::from_secs(30), agent.rx.message())
            .await
            .expect("the server answers within 30 s")
        {
            Ok(Some(m)) => match m.body {
                Some(pb::server_message::Body::Ack(a)) => answers.push((a.acked_seq, true)),
                Some(pb::server_message::Body::Refused(r)) => {
                    prop_assert!(r.reason.len() <= 300, "a long refusal: {}", r.reason.len());
                    answers.push((r.seq, false));
                }
                _ => {}
            },
            Ok(None) => break None,
            Err(s) => break Some(s),
        }
    };

    prop_assert_eq!(
        PANICS.load(Ordering::SeqCst),
        panics_before,
        "otad panicked"
    );
    if let Some(s) = &end {
        prop_assert!(
            !matches!(s.code(), Code::Internal | Code::Unknown),
            "the session ended with {:?}",
            s
        );
    }
    prop_assert_eq!(end.as_ref().map(|s| s.code()), broken, "end: {:?}", end);
    let answered: Vec<u64> = answers.iter().map(|(s, _)| *s).collect();
    let wanted: Vec<u64> = expected.iter().map(|(s, _)| *s).collect();
    prop_assert_eq!(&answered, &wanted, "every report answered once, in order");

    let in_log = ts.report_seqs_in_log(&agent_id).await;
    for ((seq, acked), (_, no_op)) in answers.iter().zip(&expected) {
        if *acked {
            prop_assert!(
                in_log.contains(seq) || *no_op,
                "seq {} acknowledged, nothing of it in the log {:?}",
                seq,
                in_log
            );
        } else {
            prop_assert!(!in_log.contains(seq), "seq {} refused, yet in the log", seq);
        }
    }
    for seq in &in_log {
        prop_assert!(
            *seq == 1 || answers.contains(&(*seq, true)),
            "seq {} is in the log without an ack",
            seq
        );
    }

    // The welcome after a reconnect is what the log holds.
    let (_again, welcome) = AgentSession::connect(&ts.channel, &site, &agent_id, highest)
        .await
        .unwrap();
    prop_assert_eq!(welcome.acked_seq, in_log.iter().copied().max().unwrap_or(0));
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 64,
        max_shrink_iters: 64,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_sessions_never_ack_what_was_not_stored(
        // The hello's last_seq: a fresh journal, one a little ahead (reports to resend), one far
        // ahead (reports that changed nothing left no seq in the log).
        hello_last in prop_oneof![Just(0u64), 1u64..40, Just(3_000_000u64)],
        ops in proptest::collection::vec((seq_op(), body_op()), 1..14)
    ) {
        world().rt.block_on(run_case(hello_last, ops))?;
    }
}
