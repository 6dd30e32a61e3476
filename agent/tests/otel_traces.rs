//! Traces end to end: one device update is one trace, from otad's API call and dispatch to the
//! agent's task, download and ESPHome transfer, and otad's side of the download.
//!
//! The test runs a real OTLP/gRPC receiver (opentelemetry-proto's `TraceService`) on loopback,
//! the real `otad` binary (`--insecure-plaintext`, development mode) and the real `ota-agent`
//! binary with a simulated ESPHome node, both exporting to the receiver through the standard
//! `OTEL_EXPORTER_OTLP_ENDPOINT` variable with a 100 ms batch delay. It uploads an ESP32
//! application, updates the device with `DeviceService.Update`, and then waits (bounded) until
//! the receiver holds, under a single trace id, the spans of both services with the device,
//! site, transport and firmware attributes.
//!
//! `otad` is built by cargo first, once per run (`ota_testkit::bins::otad`), so it is never stale;
//! `ota-agent` is this package's binary.

use std::collections::HashMap;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};

use ota_testkit::upload::{app_meta, upload_firmware};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value};
use ota_firmware::Chip;
use ota_firmware::builders::EspAppBuilder;
use ota_proto::v1 as pb;
use ota_sim::esphome::Platform;
use ota_sim::esphome_node::{EsphomeNode, NodeConfig};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Endpoint;

const SITE: &str = "lab";
const DEVICE: &str = "lab/plug";

// === the OTLP receiver ===

/// One received span, flattened.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    trace_id: String,
    name: String,
    attributes: HashMap<String, String>,
}

#[derive(Debug, Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<Received>>>,
}

fn value_string(v: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn attributes(kvs: &[KeyValue]) -> HashMap<String, String> {
    kvs.iter()
        .map(|kv| (kv.key.clone(), value_string(&kv.value)))
        .collect()
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for rs in request.into_inner().resource_spans {
            let resource = attributes(
                rs.resource
                    .as_ref()
                    .map(|r| r.attributes.as_slice())
                    .unwrap_or_default(),
            );
            let service = resource.get("service.name").cloned().unwrap_or_default();
            for ss in rs.scope_spans {
                for s in ss.spans {
                    let mut attrs = attributes(&s.attributes);
                    // Resource attributes are visible too, under their own names.
                    for (k, v) in &resource {
                        attrs.entry(format!("resource:{k}")).or_insert(v.clone());
                    }
                    spans.push(Received {
                        service: service.clone(),
                        trace_id: hex::encode(&s.trace_id),
                        name: s.name,
                        attributes: attrs,
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

impl Receiver {
    async fn start(self) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(self))
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        addr
    }

    fn snapshot(&self) -> Vec<Received> {
        self.spans.lock().unwrap().clone()
    }
}

// === the processes ===

/// The telemetry environment of both services: the receiver, fast batches, nothing inherited.
fn otel_env(c: &mut Command, receiver: std::net::SocketAddr) {
    for k in [
        "OTEL_SDK_DISABLED",
        "OTEL_TRACES_EXPORTER",
        "OTEL_TRACES_SAMPLER",
        "OTEL_TRACES_SAMPLER_ARG",
        "OTEL_SERVICE_NAME",
        "OTEL_RESOURCE_ATTRIBUTES",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTAD_SERVICE_NAME",
        "OTAD_OTLP_ENDPOINT",
        "OTAD_CONFIG",
    ] {
        c.env_remove(k);
    }
    c.env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{receiver}"))
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .env("RUST_LOG", "info");
}

/// A child process, killed on drop; its stderr goes to a file shown when the test fails.
struct Proc {
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_otad(dir: &Path, receiver: std::net::SocketAddr) -> (Proc, String) {
    let log = dir.join("otad.log");
    let mut c = Command::new(ota_testkit::bins::otad());
    c.arg("--insecure-plaintext")
        .arg("--listen")
        .arg("127.0.0.1:0")
        .arg("--data-dir")
        .arg(dir.join("otad-data"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap());
    otel_env(&mut c, receiver);
    let mut child = c.spawn().expect("spawn otad");
    let mut reader = BufReader::new(child.stdout.take().expect("otad stdout"));
    let proc = Proc { child, log };
    let mut line = String::new();
    let addr = loop {
        line.clear();
        let n = reader.read_line(&mut line).expect("read otad stdout");
        assert!(n > 0, "otad exited before listening:\n{}", proc.log());
        if let Some(addr) = line.trim().strip_prefix("otad listening on ") {
            break addr.to_string();
        }
    };
    std::thread::spawn(move || for _ in reader.lines() {});
    (proc, format!("http://{addr}"))
}

fn start_agent(
    dir: &Path,
    server: &str,
    node: &EsphomeNode,
    receiver: std::net::SocketAddr,
) -> Proc {
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "site_id = {SITE:?}\nserver = {server:?}\ndata_dir = {:?}\ntimezone = \"UTC\"\n\
             utc_offset_minutes = 0\n\n[reconnect]\nmin = \"100ms\"\nmax = \"1s\"\n\n\
             [telemetry]\nservice_name = \"ota-agent\"\n\n\
             [esphome]\nreboot_poll = \"100ms\"\nreboot_settle = \"1s\"\n\n\
             [[esphome.device]]\nname = \"plug\"\nhost = \"127.0.0.1\"\nplatform = \"esp32\"\n\
             port = {}\napi_port = {}\n",
            dir.join("agent-data").display().to_string(),
            node.ota_addr().port(),
            node.api_addr().port(),
        ),
    )
    .unwrap();
    let log = dir.join("agent.log");
    let mut c = Command::new(env!("CARGO_BIN_EXE_ota-agent"));
    c.arg("--config")
        .arg(&config)
        .env_remove("OTA_AGENT_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    otel_env(&mut c, receiver);
    Proc {
        child: c.spawn().expect("spawn ota-agent"),
        log,
    }
}

/// Spans of one service in one trace, by name.
fn names<'a>(spans: &'a [&'a Received], service: &str) -> Vec<&'a str> {
    spans
        .iter()
        .filter(|s| s.service == service)
        .map(|s| s.name.as_str())
        .collect()
}

/// The first span called `name` of `service` in `spans`.
fn find<'a>(spans: &'a [&'a Received], service: &str, name: &str) -> Option<&'a Received> {
    spans
        .iter()
        .copied()
        .find(|s| s.service == service && s.name == name)
}

/// What one update's trace must hold; `None` while it is incomplete.
fn complete_trace(all: &[Received]) -> Option<Vec<&Received>> {
    // The trace of the agent's task for the device.
    let task = all.iter().find(|s| {
        s.service == "ota-agent"
            && s.name == "agent.task"
            && s.attributes.get("device.id").map(String::as_str) == Some(DEVICE)
    })?;
    let trace: Vec<&Received> = all.iter().filter(|s| s.trace_id == task.trace_id).collect();
    let wanted = [
        ("otad", "ota.v1.DeviceService/Update"),
        ("otad", "task.dispatch"),
        ("otad", "ota.v1.FirmwareService/Download"),
        ("otad", "firmware.download"),
        ("ota-agent", "agent.task"),
        ("ota-agent", "firmware.download"),
        ("ota-agent", "esphome.transfer"),
    ];
    wanted
        .iter()
        .all(|(service, name)| find(&trace, service, name).is_some())
        .then_some(trace)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_update_is_one_trace_across_otad_and_the_agent() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::default();
    let receiver_addr = receiver.clone().start().await;

    let mut node_config = NodeConfig::new("plug", Platform::Esp32);
    node_config.ota.version = "1.0.0".into();
    node_config.ota.project_name = "acme.plug".into();
    node_config.ota.reboot_time = Duration::from_millis(300);
    let node = EsphomeNode::start(node_config).expect("bind loopback ports");

    let (otad, url) = start_otad(dir.path(), receiver_addr);
    let agent = start_agent(dir.path(), &url, &node, receiver_addr);
    let channel = Endpoint::from_shared(url.clone()).unwrap().connect_lazy();

    // The agent reports the simulated device.
    let mut devices = pb::device_service_client::DeviceServiceClient::new(channel.clone());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let found = devices
            .get(pb::GetDeviceRequest { id: DEVICE.into() })
            .await
            .is_ok_and(|d| d.into_inner().reachable);
        if found {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the agent did not report {DEVICE} within 30 s\n--- otad\n{}\n--- agent\n{}",
            otad.log(),
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let image = EspAppBuilder::new(Chip::Esp32)
        .version("2.0.0")
        .project_name("acme.plug")
        .payload_size(64 * 1024)
        .build();
    let fw = upload_firmware(&channel, app_meta("acme-plug", "2.0.0", None), &image).await;
    let resp = tokio::time::timeout(
        Duration::from_secs(90),
        devices.update(pb::UpdateDeviceRequest {
            device_id: DEVICE.into(),
            firmware_id: fw.id.clone(),
            wait: true,
            ..Default::default()
        }),
    )
    .await
    .expect("the update ended within 90 s")
    .expect("DeviceService.Update")
    .into_inner();
    let task = resp.task.expect("task");
    assert_eq!(
        task.status,
        pb::UpgradeStatus::Success as i32,
        "{task:?}\n--- agent\n{}",
        agent.log()
    );

    // Both services export within their 100 ms batch delay; wait (bounded) for the whole trace.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let all = loop {
        let all = receiver.snapshot();
        if complete_trace(&all).is_some() {
            break all;
        }
        if tokio::time::Instant::now() >= deadline {
            let seen: Vec<String> = all
                .iter()
                .map(|s| format!("{} {} {}", s.service, s.trace_id, s.name))
                .collect();
            panic!(
                "no complete trace of the update within 30 s; received:\n{}\n--- otad\n{}\n--- agent\n{}",
                seen.join("\n"),
                otad.log(),
                agent.log()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let trace = complete_trace(&all).unwrap();
    let attr = |s: &Received, k: &str| s.attributes.get(k).cloned().unwrap_or_default();

    // otad: the API call, the dispatch, and its side of the agent's download.
    let update = find(&trace, "otad", "ota.v1.DeviceService/Update").unwrap();
    assert_eq!(attr(update, "rpc.service"), "ota.v1.DeviceService");
    assert_eq!(attr(update, "rpc.method"), "Update");
    assert_eq!(attr(update, "rpc.grpc.status_code"), "0");
    let dispatch = find(&trace, "otad", "task.dispatch").unwrap();
    assert_eq!(attr(dispatch, "device.id"), DEVICE);
    assert_eq!(attr(dispatch, "site.id"), SITE);
    assert_eq!(attr(dispatch, "firmware.id"), fw.id);
    assert_eq!(attr(dispatch, "task.id"), task.id);
    assert_eq!(attr(dispatch, "transport"), "esphome");
    let served = find(&trace, "otad", "firmware.download").unwrap();
    assert_eq!(attr(served, "firmware.id"), fw.id);
    assert_eq!(attr(served, "site.id"), SITE);
    assert_eq!(attr(served, "bytes"), fw.size.to_string());
    let download_rpc = find(&trace, "otad", "ota.v1.FirmwareService/Download").unwrap();
    assert_eq!(attr(download_rpc, "rpc.grpc.status_code"), "0");

    // The agent: the task, its download and the ESPHome transfer, with the site's resource.
    let agent_task = find(&trace, "ota-agent", "agent.task").unwrap();
    assert_eq!(attr(agent_task, "site.id"), SITE);
    assert_eq!(attr(agent_task, "firmware.id"), fw.id);
    assert_eq!(attr(agent_task, "task.id"), task.id);
    assert_eq!(attr(agent_task, "transport"), "esphome");
    assert_eq!(attr(agent_task, "outcome"), "success");
    assert_eq!(attr(agent_task, "resource:ota.site.id"), SITE);
    let fetched = find(&trace, "ota-agent", "firmware.download").unwrap();
    assert_eq!(attr(fetched, "firmware.id"), fw.id);
    assert_eq!(attr(fetched, "outcome"), "ok");
    let transfer = find(&trace, "ota-agent", "esphome.transfer").unwrap();
    assert_eq!(attr(transfer, "device.id"), DEVICE);
    assert_eq!(attr(transfer, "transport"), "esphome");
    assert_eq!(attr(transfer, "outcome"), "success");
    let sent: u64 = attr(transfer, "bytes.sent").parse().unwrap_or(0);
    assert!(sent > 0, "bytes.sent recorded: {transfer:?}");

    // Nothing of the update escaped into another trace.
    let otad_names = names(&trace, "otad");
    let agent_names = names(&trace, "ota-agent");
    for s in all.iter().filter(|s| s.trace_id != task_trace(&trace)) {
        assert!(
            !(s.name == "agent.task" && attr(s, "task.id") == task.id),
            "a second agent.task trace for the task: {s:?}"
        );
    }
    assert!(otad_names.len() >= 4, "{otad_names:?}");
    assert!(agent_names.len() >= 3, "{agent_names:?}");
    drop(agent);
    drop(otad);
}

fn task_trace(trace: &[&Received]) -> String {
    trace
        .first()
        .map(|s| s.trace_id.clone())
        .unwrap_or_default()
}
