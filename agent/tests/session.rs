//! The agent's core against a real otad over gRPC: inventory, an update with progress, results
//! journaled while the server is down and delivered exactly once after it is back, commands
//! resent after a reconnect not run twice, an update interrupted by killing the agent recovered
//! (not repeated) by the restarted agent, probes and checks of sleepy devices.
//!
//! (`crash_points.rs` kills the agent after every journal write of an update, with the real
//! transports and their simulators.)
//!
//! The transport here is scripted by the test (the core's boundary is the `Transport` trait);
//! the real transports have their own tests against their simulators.

use std::sync::Arc;
use std::time::Duration;

use ota_agent::agent::{Agent, AgentOptions};
use ota_agent::transport::{CommitStage, DeviceReport, PowerSource, Transport};
use ota_proto::v1 as pb;
use ota_server::config::Config;
use ota_server::core::Clock;
use ota_server::wiring::{Otad, open_store};
use ota_testkit::agent::ScriptedTransport;
use ota_testkit::otad::wait_until;
use ota_testkit::upload::upload_lamp_app;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};

/// The ESPHome lamp on 'version', its updates blocked until the test releases them.
fn scripted(version: &str) -> Arc<ScriptedTransport> {
    Arc::new(ScriptedTransport::esphome(version).gated())
}

async fn start_server(dir: &std::path::Path, addr: &str) -> Otad {
    let cfg = Config {
        data_dir: dir.to_path_buf(),
        ..Config::default()
    };
    // A previous server on this directory may still be letting go of the store's lock.
    let mut tries = 0;
    let store = loop {
        match open_store(&cfg) {
            Ok(s) => break s,
            Err(e) if tries < 200 => {
                tries += 1;
                let _ = e;
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            Err(e) => panic!("{e:#}"),
        }
    };
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    Otad::start(cfg, store, Clock::new(), listener)
        .await
        .unwrap()
}

/// The zone is the site's own (the first test checks the hello carries it).
fn options(dir: &std::path::Path) -> AgentOptions {
    AgentOptions {
        timezone: "Europe/Berlin".into(),
        ..ota_testkit::agent::options("home", dir)
    }
}

fn lazy_channel(addr: std::net::SocketAddr) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .connect_lazy()
}

fn count_events(server: &Otad, ty: &str) -> usize {
    server
        .app
        .core
        .store()
        .read_from(1, 100_000)
        .unwrap()
        .iter()
        .filter(|e| e.event_type == ty)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_produced_while_the_server_is_down_arrive_exactly_once() {
    let server_dir = tempfile::tempdir().unwrap();
    let agent_dir = tempfile::tempdir().unwrap();
    let server = start_server(server_dir.path(), "127.0.0.1:0").await;
    let addr = server.addr;
    let channel = lazy_channel(addr);
    let transport = scripted("1.0.0");
    let agent = Agent::new(
        options(agent_dir.path()),
        vec![transport.clone() as Arc<dyn Transport>],
    )
    .unwrap();
    let stop = CancellationToken::new();
    let running = tokio::spawn(agent.clone().run(channel.clone(), stop.clone()));

    // The inventory arrives; the hello named the site's zone (maintenance windows use it).
    let app = server.app.clone();
    wait_until("the device to be reported", || {
        app.core.read().devices.contains_key("home/lamp")
    })
    .await;
    assert_eq!(app.core.read().sites["home"].timezone, "Europe/Berlin");

    // An update: downloaded, verified, handed to the transport, progress reported.
    let fw = upload_lamp_app(&channel, "2.0.0").await;
    let resp = pb::device_service_client::DeviceServiceClient::new(channel.clone())
        .update(pb::UpdateDeviceRequest {
            device_id: "home/lamp".into(),
            firmware_id: fw.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let task_id = resp.task.unwrap().id;
    wait_until("the transport to get the image", || transport.calls() == 1).await;
    wait_until("progress at the server", || {
        app.core
            .read()
            .tasks
            .get(&task_id)
            .is_some_and(|t| t.progress == 50.0)
    })
    .await;
    {
        let calls = transport.updates();
        assert_eq!(calls[0].1, 1, "first attempt");
        assert_eq!(
            calls[0].2.len() as u64,
            fw.size,
            "the verified image is the uploaded one"
        );
    }

    // The server goes away; the device finishes meanwhile; the result waits in the journal.
    drop(app);
    server.shutdown().await.unwrap();
    transport.release(1);
    wait_until("the result to be journaled", || agent.unacked_count() > 0).await;

    // The server comes back on the same address: the agent reconnects and delivers.
    let server = start_server(server_dir.path(), &addr.to_string()).await;
    let app = server.app.clone();
    wait_until("the task to succeed", || {
        app.core
            .read()
            .tasks
            .get(&task_id)
            .is_some_and(|t| t.phase == ota_domain::projection::TaskPhase::Succeeded)
    })
    .await;
    wait_until("the journal to drain", || agent.unacked_count() == 0).await;
    {
        let state = app.core.read();
        let t = &state.tasks[&task_id];
        assert_eq!(t.to.as_ref().unwrap().version, "2.0.0");
        assert_eq!(state.devices["home/lamp"].facts.current.version, "2.0.0");
    }
    assert_eq!(count_events(&server, "TaskSucceeded"), 1);

    // The welcome resent the update command for the task that was in flight: not run again.
    assert_eq!(
        transport.calls(),
        1,
        "a resent command must not update the device twice"
    );

    // Another reconnect resends nothing new.
    stop.cancel();
    running.await.unwrap();
    let stop = CancellationToken::new();
    let running = tokio::spawn(agent.clone().run(channel.clone(), stop.clone()));
    wait_until("a new session", || app.sessions.is_connected("home")).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(count_events(&server, "TaskSucceeded"), 1);
    assert!(count_events(&server, "TaskProgressed") >= 2);
    stop.cancel();
    running.await.unwrap();
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_interrupted_by_an_agent_restart_is_reported_not_repeated() {
    let server_dir = tempfile::tempdir().unwrap();
    let agent_dir = tempfile::tempdir().unwrap();
    let server = start_server(server_dir.path(), "127.0.0.1:0").await;
    let channel = lazy_channel(server.addr);

    // The first agent "process", on its own runtime. Its transport passes the point of no return
    // (the journal gets the committing mark) and then blocks, as if the last block were in flight.
    let transport = Arc::new(ScriptedTransport::esphome("1.0.0").gated().committing());
    let process = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    {
        let (t, dir, addr) = (
            transport.clone(),
            agent_dir.path().to_path_buf(),
            server.addr,
        );
        process
            .spawn(async move {
                let agent = Agent::new(options(&dir), vec![t as Arc<dyn Transport>]).unwrap();
                tokio::spawn(agent.run(lazy_channel(addr), CancellationToken::new()));
            })
            .await
            .unwrap();
    }
    let app = server.app.clone();
    wait_until("the device", || {
        app.core.read().devices.contains_key("home/lamp")
    })
    .await;
    let fw = upload_lamp_app(&channel, "2.0.0").await;
    let task_id = pb::device_service_client::DeviceServiceClient::new(channel.clone())
        .update(pb::UpdateDeviceRequest {
            device_id: "home/lamp".into(),
            firmware_id: fw.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap()
        .id;
    wait_until("the point of no return", || transport.committing_done()).await;

    // The agent is killed: its runtime and every task on it are dropped where they stand; the
    // journal keeps what it made durable.
    tokio::task::spawn_blocking(move || process.shutdown_timeout(Duration::from_millis(200)))
        .await
        .unwrap();

    // A new agent process on the same data dir: the attempt is handed to the transport's
    // recovery, which looks at the device; nothing is sent again.
    let transport2 = scripted("1.0.0");
    let agent = Agent::new(
        options(agent_dir.path()),
        vec![transport2.clone() as Arc<dyn Transport>],
    )
    .unwrap();
    let stop = CancellationToken::new();
    let running = tokio::spawn(agent.clone().run(channel.clone(), stop.clone()));
    wait_until("the task to succeed", || {
        app.core
            .read()
            .tasks
            .get(&task_id)
            .is_some_and(|t| t.phase == ota_domain::projection::TaskPhase::Succeeded)
    })
    .await;
    let recovered = transport2.recovered();
    assert_eq!(
        recovered,
        vec![(
            task_id.clone(),
            1,
            CommitStage::Committing,
            Some(serde_json::json!({"last_block": fw.size}))
        )],
        "the interrupted attempt, at its committing mark, with the transport's note"
    );
    assert_eq!(transport2.calls(), 0, "the image was not sent again");
    {
        let state = app.core.read();
        let t = &state.tasks[&task_id];
        assert_eq!(t.attempt, 1, "no second attempt");
        assert_eq!(t.to.as_ref().unwrap().version, "2.0.0");
    }
    assert_eq!(count_events(&server, "TaskSucceeded"), 1);
    assert_eq!(count_events(&server, "TaskFailed"), 0);
    assert_eq!(count_events(&server, "TaskDispatched"), 1);

    // A restart after that recovers nothing.
    stop.cancel();
    running.await.unwrap();
    let transport3 = scripted("2.0.0");
    let agent = Agent::new(
        options(agent_dir.path()),
        vec![transport3.clone() as Arc<dyn Transport>],
    )
    .unwrap();
    let stop = CancellationToken::new();
    let running = tokio::spawn(agent.clone().run(channel.clone(), stop.clone()));
    wait_until("a new session", || app.sessions.is_connected("home")).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(transport3.recovered().is_empty());
    assert_eq!(count_events(&server, "TaskSucceeded"), 1);
    stop.cancel();
    running.await.unwrap();
    server.shutdown().await.unwrap();
}

fn zigbee_device(local_id: &str) -> DeviceReport {
    DeviceReport {
        local_id: local_id.into(),
        network: "zigbee".into(),
        name: local_id.into(),
        model: "LED1623G12".into(),
        current_version: Some("16777216".into()),
        power_source: PowerSource::Mains,
        reachable: true,
        supports_ota: true,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_of_a_bridge_that_has_not_listed_them_yet_are_not_reported_gone() {
    let server_dir = tempfile::tempdir().unwrap();
    let agent_dir = tempfile::tempdir().unwrap();
    let server = start_server(server_dir.path(), "127.0.0.1:0").await;
    let channel = lazy_channel(server.addr);
    let removed = |id: &str| {
        server
            .app
            .core
            .read()
            .devices
            .get(id)
            .is_none_or(|d| d.removed)
    };

    // First run: both transports know their devices.
    let esphome = scripted("1.0.0");
    let bridge = Arc::new(ScriptedTransport::zigbee(vec![
        zigbee_device("bulb"),
        zigbee_device("plug"),
    ]));
    let agent = Agent::new(
        options(agent_dir.path()),
        vec![
            esphome.clone() as Arc<dyn Transport>,
            bridge.clone() as Arc<dyn Transport>,
        ],
    )
    .unwrap();
    let stop = CancellationToken::new();
    let running = tokio::spawn(agent.run(channel.clone(), stop.clone()));
    wait_until("both Zigbee devices at otad", || {
        !removed("home/bulb") && !removed("home/plug") && !removed("home/lamp")
    })
    .await;
    stop.cancel();
    running.await.unwrap();

    // The agent restarts; the bridge has not published its list yet, and the lamp was updated
    // meanwhile. The session's first inventory must not call the Zigbee devices gone.
    let esphome = scripted("1.0.1");
    let bridge = Arc::new(ScriptedTransport::zigbee(Vec::new()).incomplete());
    let agent = Agent::new(
        options(agent_dir.path()),
        vec![
            esphome.clone() as Arc<dyn Transport>,
            bridge.clone() as Arc<dyn Transport>,
        ],
    )
    .unwrap();
    let stop = CancellationToken::new();
    let running = tokio::spawn(agent.run(channel.clone(), stop.clone()));
    let lamp_version = || {
        server
            .app
            .core
            .read()
            .devices
            .get("home/lamp")
            .map(|d| d.facts.current.version.clone())
    };
    wait_until("the restarted agent's first inventory", || {
        lamp_version().as_deref() == Some("1.0.1")
    })
    .await;
    assert!(!removed("home/bulb") && !removed("home/plug"));
    assert_eq!(count_events(&server, "DeviceRemoved"), 0);

    // The bridge lists its devices: the plug left the network while the agent was down.
    bridge.publish(vec![zigbee_device("bulb")]);
    wait_until("the plug reported gone by the full inventory", || {
        removed("home/plug")
    })
    .await;
    assert!(!removed("home/bulb") && !removed("home/lamp"));
    assert_eq!(count_events(&server, "DeviceRemoved"), 1);
    stop.cancel();
    running.await.unwrap();
    server.shutdown().await.unwrap();
}

/// The prometheus value of a counter series whose line contains every one of `labels`.
fn counter(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(&format!("{name}{{")) && labels.iter().all(|x| l.contains(x)))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_otad_refuses_is_counted_dropped_from_the_journal_and_never_sent_again() {
    let server_dir = tempfile::tempdir().unwrap();
    let agent_dir = tempfile::tempdir().unwrap();
    let server = start_server(server_dir.path(), "127.0.0.1:0").await;
    let channel = lazy_channel(server.addr);
    // A report otad will refuse waits in the journal: progress of a task it does not know.
    {
        let mut j = ota_agent::journal::Journal::open(agent_dir.path()).unwrap();
        let m = j
            .append_report(pb::agent_message::Body::Progress(pb::TaskProgress {
                task_id: "task-unknown".into(),
                attempt: 1,
                status: pb::UpgradeStatus::Updating as i32,
                ..Default::default()
            }))
            .unwrap();
        assert_eq!(m.seq, 1);
    }
    let metrics = ota_telemetry::metrics::Metrics::prometheus_only("ota-agent");
    let start_agent = |with_metrics: bool| {
        let agent = Agent::new(
            options(agent_dir.path()),
            vec![scripted("1.0.0") as Arc<dyn Transport>],
        )
        .unwrap();
        if with_metrics {
            agent.enable_metrics(&metrics);
        }
        agent
    };
    let agent = start_agent(true);
    let stop = CancellationToken::new();
    let running = tokio::spawn(agent.clone().run(channel.clone(), stop.clone()));
    let app = server.app.clone();
    wait_until("the device to be reported", || {
        app.core.read().devices.contains_key("home/lamp")
    })
    .await;
    wait_until("nothing pending in the journal", || {
        agent.unacked_count() == 0
    })
    .await;
    let refused_at_otad = || {
        let text = app.metrics.provider().render_prometheus().unwrap();
        counter(
            &text,
            "ota_reports_refused_total",
            &["kind=\"progress\"", "site=\"home\""],
        )
    };
    assert_eq!(refused_at_otad(), Some(1.0));
    let text = metrics.render_prometheus().unwrap();
    assert_eq!(
        counter(
            &text,
            "ota_agent_reports_refused_total",
            &["kind=\"progress\"", "site=\"home\""]
        ),
        Some(1.0),
        "{text}"
    );
    // Refused, not acknowledged: nothing of seq 1 is in the log.
    assert_eq!(count_events(&server, "TaskProgressed"), 0);

    // A restarted agent (new session, journal read from disk) does not send it again.
    stop.cancel();
    running.await.unwrap();
    let acked_before = agent.acked_seq();
    drop(agent);
    let agent = start_agent(false);
    assert_eq!(agent.unacked_count(), 0, "the refusal is in the journal");
    let stop = CancellationToken::new();
    let running = tokio::spawn(agent.clone().run(channel.clone(), stop.clone()));
    wait_until("the new session's inventory to be acknowledged", || {
        agent.acked_seq() > acked_before
    })
    .await;
    assert_eq!(
        refused_at_otad(),
        Some(1.0),
        "the refused report came again"
    );
    stop.cancel();
    running.await.unwrap();
    server.shutdown().await.unwrap();
}
