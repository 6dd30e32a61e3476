//! The agent's answers to probes and to checks of sleepy devices, against a scripted otad that
//! speaks the agent protocol over real gRPC: the test sends the commands and reads every message
//! the agent sends. (The real otad's side of these is tested in the server crate; `session.rs`
//! runs the agent against the real otad.)

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ota_agent::transport::{DeviceReport, PowerSource};
use ota_proto::v1 as pb;
use ota_testkit::agent::{ScriptedTransport, agent};
use tokio::sync::mpsc;
use tokio_stream::wrappers::{TcpListenerStream, UnboundedReceiverStream};
use tokio_util::sync::CancellationToken;
use tonic::transport::Endpoint;
use tonic::{Request, Response, Status, Streaming};

type ToAgent = mpsc::UnboundedSender<Result<pb::ServerMessage, Status>>;

/// otad as far as the agent session goes: welcomes, forwards what the agent sends, and lets the
/// test send commands on the latest session.
#[derive(Clone)]
struct ScriptedOtad {
    from_agent: mpsc::UnboundedSender<pb::AgentMessage>,
    session: Arc<Mutex<Option<ToAgent>>>,
}

#[tonic::async_trait]
impl pb::agent_service_server::AgentService for ScriptedOtad {
    type ConnectStream = UnboundedReceiverStream<Result<pb::ServerMessage, Status>>;

    async fn connect(
        &self,
        request: Request<Streaming<pb::AgentMessage>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = tx.send(Ok(pb::ServerMessage {
            body: Some(pb::server_message::Body::Welcome(pb::Welcome {
                server_version: "scripted".into(),
                heartbeat_interval_s: 3600,
                acked_seq: 0,
                active_tasks: Vec::new(),
            })),
            ..Default::default()
        }));
        *self.session.lock().unwrap() = Some(tx);
        let from = self.from_agent.clone();
        tokio::spawn(async move {
            while let Ok(Some(m)) = inbound.message().await {
                let _ = from.send(m);
            }
        });
        Ok(Response::new(UnboundedReceiverStream::new(rx)))
    }
}

impl ScriptedOtad {
    fn send(&self, body: pb::server_message::Body) {
        let tx = self.session.lock().unwrap().clone().expect("a session");
        tx.send(Ok(pb::ServerMessage {
            command_id: 1,
            body: Some(body),
            ..Default::default()
        }))
        .expect("agent listening");
    }
}

fn device(local_id: &str, power: PowerSource, reachable: bool) -> DeviceReport {
    DeviceReport {
        local_id: local_id.into(),
        network: "zigbee".into(),
        name: local_id.into(),
        model: "E1810".into(),
        file_version: Some(7),
        current_version: Some("7".into()),
        power_source: power,
        reachable,
        supports_ota: true,
        ..Default::default()
    }
}

struct Harness {
    otad: ScriptedOtad,
    from_agent: mpsc::UnboundedReceiver<pb::AgentMessage>,
    site: Arc<ScriptedTransport>,
    stop: CancellationToken,
    _dir: tempfile::TempDir,
}

async fn start() -> Harness {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (from_tx, from_agent) = mpsc::unbounded_channel();
    let otad = ScriptedOtad {
        from_agent: from_tx,
        session: Arc::default(),
    };
    let svc = pb::agent_service_server::AgentServiceServer::new(otad.clone());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    // A battery remote that answers only when awake, and a plug that was unplugged.
    let site = Arc::new(
        ScriptedTransport::zigbee(vec![
            device("remote", PowerSource::Battery, true),
            device("plug", PowerSource::Mains, false),
        ])
        .update_available(true)
        .sleepy("remote"),
    );
    let dir = tempfile::tempdir().unwrap();
    let agent = agent("home", dir.path(), vec![site.clone()]);
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_lazy();
    let stop = CancellationToken::new();
    tokio::spawn(agent.run(channel, stop.clone()));
    let mut h = Harness {
        otad,
        from_agent,
        site,
        stop,
        _dir: dir,
    };
    // Hello, then the full inventory.
    h.next(|b| matches!(b, pb::agent_message::Body::Inventory(i) if i.full))
        .await;
    h
}

impl Harness {
    /// The next message from the agent whose body matches, within 10 s.
    async fn next(&mut self, want: impl Fn(&pb::agent_message::Body) -> bool) -> pb::AgentMessage {
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let m = self.from_agent.recv().await.expect("agent connected");
                if m.body.as_ref().is_some_and(&want) {
                    return m;
                }
            }
        })
        .await
        .expect("the agent answered")
    }

    /// Nothing matching arrives within `within`.
    async fn none(&mut self, within: Duration, want: impl Fn(&pb::agent_message::Body) -> bool) {
        let got = tokio::time::timeout(within, async {
            loop {
                let m = self.from_agent.recv().await.expect("agent connected");
                if m.body.as_ref().is_some_and(&want) {
                    return m;
                }
            }
        })
        .await;
        assert!(got.is_err(), "unexpected {got:?}");
    }
}

#[tokio::test]
async fn a_probe_is_answered_with_a_journaled_inventory_change_even_without_a_change() {
    let mut h = start().await;
    h.otad
        .send(pb::server_message::Body::Probe(pb::ProbeCommand {
            device_local_ids: vec!["plug".into(), "nowhere".into()],
        }));
    let m = h
        .next(|b| matches!(b, pb::agent_message::Body::Inventory(_)))
        .await;
    assert_ne!(m.seq, 0, "journaled");
    let Some(pb::agent_message::Body::Inventory(inv)) = m.body else {
        unreachable!()
    };
    assert!(!inv.full && inv.removed_local_ids.is_empty());
    let ids: Vec<_> = inv.devices.iter().map(|d| d.local_id.as_str()).collect();
    assert_eq!(ids, ["plug"], "only what the site knows");
    assert!(inv.devices[0].reachable, "what the probe found");
    assert_eq!(
        h.site.probes(),
        vec![vec!["plug".to_string()]],
        "the transport looked at its device"
    );
    // The watcher does not report the same change again.
    h.none(Duration::from_millis(600), |b| {
        matches!(b, pb::agent_message::Body::Inventory(_))
    })
    .await;

    // Nothing changed: the server still gets its answer.
    h.otad
        .send(pb::server_message::Body::Probe(pb::ProbeCommand {
            device_local_ids: vec!["plug".into()],
        }));
    let m = h
        .next(|b| matches!(b, pb::agent_message::Body::Inventory(_)))
        .await;
    let Some(pb::agent_message::Body::Inventory(inv)) = m.body else {
        unreachable!()
    };
    assert_eq!(inv.devices.len(), 1);
    h.stop.cancel();
}

#[tokio::test]
async fn a_sleepy_device_is_checked_when_it_next_talks() {
    let mut h = start().await;
    let check = |id: &str| {
        pb::server_message::Body::Check(pb::CheckCommand {
            check_id: id.into(),
            device_local_ids: vec!["remote".into(), "plug".into()],
            timeout_ms: 5000,
        })
    };
    h.otad.send(check("c1"));
    // At once: the remote awaits its wake-up (not a failure), the plug is asked.
    let is_result = |id: &'static str| move |b: &pb::agent_message::Body| matches!(b, pb::agent_message::Body::CheckResult(r) if r.device_local_id == id);
    let remote = h.next(is_result("remote")).await;
    assert_eq!(remote.seq, 0);
    let Some(pb::agent_message::Body::CheckResult(r)) = remote.body else {
        unreachable!()
    };
    assert!(r.awaiting_wakeup && r.error.is_none() && r.check_id == "c1");
    assert!(r.reachable, "the inventory's word, as in the device list");
    let plug = h.next(is_result("plug")).await;
    let Some(pb::agent_message::Body::CheckResult(p)) = plug.body else {
        unreachable!()
    };
    assert!(!p.awaiting_wakeup && p.update_available == Some(true));
    assert_eq!(h.site.checks(), ["plug"], "the remote was not asked");

    // A second check while it sleeps waits too.
    h.otad.send(check("c2"));
    let again = h.next(is_result("remote")).await;
    assert!(
        matches!(again.body, Some(pb::agent_message::Body::CheckResult(ref r)) if r.awaiting_wakeup && r.check_id == "c2")
    );
    h.none(Duration::from_millis(300), is_result("remote"))
        .await;

    // The remote talks: it is asked once, and both checks get the real answer, journaled.
    h.site.wake();
    let mut answered = Vec::new();
    for _ in 0..2 {
        let m = h.next(is_result("remote")).await;
        assert_ne!(m.seq, 0, "journaled: the check's own timeout is long over");
        let Some(pb::agent_message::Body::CheckResult(r)) = m.body else {
            unreachable!()
        };
        assert!(!r.awaiting_wakeup && r.error.is_none() && r.reachable);
        assert_eq!(r.device.unwrap().current.unwrap().version, "7");
        answered.push(r.check_id);
    }
    answered.sort();
    assert_eq!(answered, ["c1", "c2"]);
    assert_eq!(h.site.checks().iter().filter(|d| *d == "remote").count(), 1);
    h.stop.cancel();
}
