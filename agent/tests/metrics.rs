//! The Prometheus endpoints of otad and of the agent, scraped over HTTP while a real agent runs
//! one update against a real otad: the catalog's series carry the expected labels and values
//! while the update runs, after it succeeded, and after the server went away.
//!
//! The transport is scripted (the core's boundary is the `Transport` trait), so the byte counts
//! are exact.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ota_domain::projection::TaskPhase;
use ota_proto::v1 as pb;
use ota_server::config::Config;
use ota_server::core::Clock;
use ota_testkit::agent::{ScriptedTransport, agent};
use ota_testkit::otad::{config, lazy_channel, start_server, wait_until};
use ota_testkit::upload::upload_lamp_app;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// `GET /metrics` over plain HTTP/1.1: the content type and the body.
async fn scrape(addr: SocketAddr) -> (String, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let content_type = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-type: ")
                .map(str::to_string)
        })
        .unwrap_or_default();
    (content_type, body.to_string())
}

/// The value of the series written exactly as `series` (name and sorted labels).
fn value(body: &str, series: &str) -> Option<f64> {
    body.lines().find_map(|l| {
        l.strip_prefix(series)
            .and_then(|rest| rest.strip_prefix(' '))
            .map(|v| v.parse().unwrap())
    })
}

#[track_caller]
fn assert_series(body: &str, series: &str, expected: f64) {
    assert_eq!(value(body, series), Some(expected), "{series} in:\n{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otad_and_agent_endpoints_show_one_update() {
    let server_dir = tempfile::tempdir().unwrap();
    let agent_dir = tempfile::tempdir().unwrap();
    let cfg = Config {
        metrics_listen: Some("127.0.0.1:0".parse().unwrap()),
        ..config(server_dir.path())
    };
    let server = start_server(cfg, Clock::new()).await;
    let otad = server.metrics_addr.expect("otad serves /metrics");
    let channel = lazy_channel(server.addr);

    // An ESPHome-like transport: reports half the image, waits for the test, reports all of it.
    let transport = Arc::new(ScriptedTransport::esphome("1.0.0").gated());
    let agent = agent("home", agent_dir.path(), vec![transport.clone()]);
    let stop = CancellationToken::new();
    let agent_metrics = ota_agent::metrics::start(
        &agent,
        Some("127.0.0.1:0".parse().unwrap()),
        None,
        stop.clone(),
    )
    .await
    .unwrap();
    let site = agent_metrics.addr.expect("the agent serves /metrics");
    let running = tokio::spawn(agent.clone().run(channel.clone(), stop.clone()));

    let app = server.app.clone();
    wait_until("the device to be reported", || {
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

    // While the transfer runs: the task is updating, one transfer is active, half the image sent.
    wait_until("progress at the server", || {
        app.core
            .read()
            .tasks
            .get(&task_id)
            .is_some_and(|t| t.progress == 50.0)
    })
    .await;
    let (content_type, body) = scrape(otad).await;
    assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
    assert_series(
        &body,
        r#"ota_tasks{site="home",status="updating",transport="esphome"}"#,
        1.0,
    );
    assert_series(&body, r#"ota_dispatch_queue_depth{site="home"}"#, 0.0);
    let (_, body) = scrape(site).await;
    assert_series(
        &body,
        r#"ota_agent_active_transfers{site="home",transport="esphome"}"#,
        1.0,
    );
    // Series that only count later exist from the start, at 0.
    assert_series(&body, r#"ota_agent_reconnects_total{site="home"}"#, 0.0);
    assert_series(
        &body,
        r#"ota_agent_transfer_bytes_total{site="home",transport="esphome"}"#,
        (fw.size / 2) as f64,
    );

    // The device finishes; the new version is reported.
    transport.release(1);
    wait_until("the task to succeed and the new version to arrive", || {
        let state = app.core.read();
        state.tasks[&task_id].phase == TaskPhase::Succeeded
            && state.devices["home/lamp"].facts.current.version == "2.0.0"
    })
    .await;
    wait_until("the journal to drain", || agent.unacked_count() == 0).await;

    let (_, body) = scrape(otad).await;
    for (series, expected) in [
        (
            r#"ota_tasks_finished_total{code="0",result="success",site="home",transport="esphome"}"#,
            1.0,
        ),
        (
            r#"ota_update_duration_seconds_count{result="success",transport="esphome"}"#,
            1.0,
        ),
        ("ota_agents_connected", 1.0),
        (r#"ota_agent_up{site="home"}"#, 1.0),
        (
            r#"ota_devices{reachable="true",site="home",transport="esphome"}"#,
            1.0,
        ),
        (
            r#"ota_devices_by_version{model="esp32dev",transport="esphome",version="2.0.0"}"#,
            1.0,
        ),
        (
            r#"ota_firmware_download_bytes_total{site="home"}"#,
            fw.size as f64,
        ),
        (
            r#"ota_rpc_requests_total{code="Ok",rpc="ota.v1.FirmwareService/Upload"}"#,
            1.0,
        ),
        (
            r#"ota_rpc_requests_total{code="Ok",rpc="ota.v1.DeviceService/Update"}"#,
            1.0,
        ),
        (
            r#"ota_rpc_requests_total{code="Ok",rpc="ota.v1.FirmwareService/Download"}"#,
            1.0,
        ),
        (
            r#"ota_rpc_duration_seconds_count{rpc="ota.v1.DeviceService/Update"}"#,
            1.0,
        ),
        (r#"ota_rollouts{state="running"}"#, 0.0),
        ("ota_store_log_events", app.core.store().last_seq() as f64),
    ] {
        assert_series(&body, series, expected);
    }
    assert!(!body.contains("ota_tasks{"), "no unfinished task:\n{body}");
    assert!(
        value(&body, "ota_store_appended_events_total").unwrap() >= 5.0,
        "{body}"
    );
    assert!(value(&body, "ota_store_append_duration_seconds_count").unwrap() >= 1.0);
    assert!(value(&body, "ota_store_log_bytes").unwrap() > 0.0);
    assert!(value(&body, "ota_projection_lag_events").is_some());
    assert!(body.contains(
        r#"ota_update_duration_seconds_bucket{result="success",transport="esphome",le="+Inf"} 1"#
    ));
    assert!(body.contains("# TYPE ota_rpc_duration_seconds histogram\n"));

    let (_, body) = scrape(site).await;
    for (series, expected) in [
        (r#"ota_agent_server_connected{site="home"}"#, 1.0),
        (
            r#"ota_agent_updates_total{code="0",result="success",site="home",transport="esphome"}"#,
            1.0,
        ),
        (
            r#"ota_agent_transfer_bytes_total{site="home",transport="esphome"}"#,
            fw.size as f64,
        ),
        (
            r#"ota_agent_transfer_duration_seconds_count{result="success",site="home",transport="esphome"}"#,
            1.0,
        ),
        (
            r#"ota_agent_active_transfers{site="home",transport="esphome"}"#,
            0.0,
        ),
        (
            r#"ota_agent_download_bytes_total{site="home"}"#,
            fw.size as f64,
        ),
        (
            r#"ota_agent_devices{reachable="true",site="home",transport="esphome"}"#,
            1.0,
        ),
        (r#"ota_agent_journal_pending{site="home"}"#, 0.0),
    ] {
        assert_series(&body, series, expected);
    }

    // otad goes away: the agent shows it and counts its attempts to come back.
    drop(app);
    server.shutdown().await.unwrap();
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let (_, body) = scrape(site).await;
            if value(&body, r#"ota_agent_server_connected{site="home"}"#) == Some(0.0)
                && value(&body, r#"ota_agent_reconnects_total{site="home"}"#)
                    .is_some_and(|n| n >= 1.0)
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the agent reports the lost session and its reconnects");
    assert!(
        tokio::net::TcpStream::connect(otad).await.is_err(),
        "otad's metrics endpoint stops with the server"
    );

    stop.cancel();
    running.await.unwrap();
    agent_metrics.join().await;
    assert!(tokio::net::TcpStream::connect(site).await.is_err());
}
