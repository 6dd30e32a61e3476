#![cfg(feature = "conformance")]
//! Tier 2: a real Prometheus (Debian's package) scrapes otad and the agent of the quickstart
//! during a staged rollout and a failing update, and **every PromQL expression of the Grafana
//! dashboards in `deploy/grafana/dashboards/` returns data**.
//!
//! The test reads the dashboards' JSON, so a renamed metric or label breaks it. Each panel
//! target's `expr` gets its template variables replaced (`$rollout` by the rollout the test
//! ran, `$site` by the quickstart's site, `$__rate_interval` by `1m`, `$__interval` by `15s`,
//! `$__range` by the time the test has run) and is asked as an instant query at now over a
//! subquery that covers the whole run: `max_over_time((EXPR)[<run>:1s])`. The answer must hold
//! at least one sample that is not NaN. The dashboards' template variables
//! (`label_values(metric, label)`) must offer the rollout and the site.
//!
//! Also checks `deploy/prometheus/prometheus.yml` with `promtool check config`.
//!
//! Prometheus runs on a free loopback port with a generated configuration (1 s scrapes) and a
//! temporary TSDB, and is killed by its own pid at the end. The test fails (never skips) when
//! prometheus is not installed: run scripts/conformance.sh.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use futures::StreamExt as _;
use ota_proto::v1 as pb;
use ota_quickstart::{Quickstart, QuickstartOptions, Tuning};
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tonic::transport::Channel;

const T: Duration = Duration::from_secs(45);
const DASHBOARDS: [&str; 3] = [
    "fleet-overview.json",
    "rollout-detail.json",
    "site-health.json",
];

fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

fn binary(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/local/bin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "{name} is not installed: run scripts/conformance.sh (it installs Debian's prometheus package)"
            )
        })
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

// ----- a minimal HTTP/1.0 client (Prometheus answers HTTP/1.0 without chunking) -----

async fn http_get(addr: SocketAddr, path_and_query: &str) -> anyhow::Result<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path_and_query} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut raw)).await??;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("no HTTP header end in {text:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("bad status line in {head:?}"))?;
    Ok((status, body.to_string()))
}

fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

// ----- Prometheus -----

/// A Prometheus of our own, killed when dropped (tokio's kill_on_drop, by its pid).
struct Prometheus {
    addr: SocketAddr,
    _dir: tempfile::TempDir,
    _child: tokio::process::Child,
}

impl Prometheus {
    async fn start(targets: &[(&str, SocketAddr)]) -> Prometheus {
        let bin = binary("prometheus");
        let dir = tempfile::tempdir().unwrap();
        let mut config = String::from(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\n  evaluation_interval: 1s\nscrape_configs:\n",
        );
        for (job, addr) in targets {
            config.push_str(&format!(
                "  - job_name: {job}\n    static_configs:\n      - targets: [\"{addr}\"]\n"
            ));
        }
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = tokio::process::Command::new(&bin)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let p = Prometheus {
            addr,
            _dir: dir,
            _child: child,
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok((200, _)) = http_get(addr, "/-/ready").await {
                return p;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "prometheus did not get ready on {addr}: {}",
                p.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// `GET /api/v1/query` at now; the `data.result` array.
    async fn query(&self, promql: &str) -> anyhow::Result<Vec<Value>> {
        let (status, body) = http_get(
            self.addr,
            &format!("/api/v1/query?query={}", url_encode(promql)),
        )
        .await?;
        let v: Value = serde_json::from_str(&body)
            .map_err(|e| anyhow::anyhow!("HTTP {status}, not JSON ({e}): {body}"))?;
        if v["status"] != "success" {
            anyhow::bail!("HTTP {status}: {} {}", v["errorType"], v["error"]);
        }
        Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
    }

    /// `GET /api/v1/label/<label>/values?match[]=<metric>`.
    async fn label_values(&self, label: &str, metric: &str) -> anyhow::Result<Vec<String>> {
        let (status, body) = http_get(
            self.addr,
            &format!(
                "/api/v1/label/{label}/values?match%5B%5D={}",
                url_encode(metric)
            ),
        )
        .await?;
        let v: Value = serde_json::from_str(&body)
            .map_err(|e| anyhow::anyhow!("HTTP {status}, not JSON ({e}): {body}"))?;
        Ok(v["data"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default())
    }
}

// ----- the dashboards -----

/// One PromQL target of a dashboard panel.
#[derive(Debug, Clone)]
struct Target {
    dashboard: String,
    panel: String,
    expr: String,
}

/// One `label_values(metric, label)` template variable.
#[derive(Debug, Clone)]
struct Variable {
    dashboard: String,
    name: String,
    metric: String,
    label: String,
}

fn collect_targets(dashboard: &str, panels: &[Value], out: &mut Vec<Target>) {
    for p in panels {
        let title = p["title"].as_str().unwrap_or("(untitled)").to_string();
        for t in p["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = t["expr"].as_str() {
                out.push(Target {
                    dashboard: dashboard.into(),
                    panel: title.clone(),
                    expr: expr.into(),
                });
            }
        }
        // Collapsed rows keep their panels inside.
        if let Some(inner) = p["panels"].as_array() {
            collect_targets(dashboard, inner, out);
        }
    }
}

fn read_dashboards() -> (Vec<Target>, Vec<Variable>) {
    let mut targets = Vec::new();
    let mut variables = Vec::new();
    for file in DASHBOARDS {
        let path = repo_file(&format!("deploy/grafana/dashboards/{file}"));
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        let d: Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{file} is not JSON: {e}"));
        let name = format!("{} ({file})", d["title"].as_str().unwrap_or(file));
        collect_targets(&name, d["panels"].as_array().expect("panels"), &mut targets);
        for v in d["templating"]["list"].as_array().into_iter().flatten() {
            let q = v["query"]["query"]
                .as_str()
                .or(v["query"].as_str())
                .or(v["definition"].as_str())
                .unwrap_or_default();
            let inner = q
                .strip_prefix("label_values(")
                .and_then(|r| r.strip_suffix(')'))
                .unwrap_or_else(|| {
                    panic!("{name}: variable query {q:?} is not label_values(metric, label)")
                });
            let (metric, label) = inner
                .rsplit_once(',')
                .unwrap_or_else(|| panic!("{name}: variable query {q:?} has no label"));
            variables.push(Variable {
                dashboard: name.clone(),
                name: v["name"].as_str().unwrap_or_default().into(),
                metric: metric.trim().into(),
                label: label.trim().into(),
            });
        }
    }
    (targets, variables)
}

/// Replaces Grafana's variables; panics on any variable it does not know.
fn substitute(t: &Target, rollout: &str, site: &str, range: &str) -> String {
    let e = t
        .expr
        .replace("${rollout}", rollout)
        .replace("$rollout", rollout)
        .replace("${site}", site)
        .replace("$site", site)
        .replace("$__rate_interval", "1m")
        .replace("$__interval", "15s")
        .replace("$__range", range);
    assert!(
        !e.contains('$'),
        "{} / panel {:?}: unknown template variable in {:?}",
        t.dashboard,
        t.panel,
        t.expr
    );
    e
}

/// What a query answered, for the failure message; `None` when it has a real (non-NaN) sample.
fn emptiness(result: &anyhow::Result<Vec<Value>>) -> Option<String> {
    match result {
        Err(e) => Some(format!("error: {e:#}")),
        Ok(r) if r.is_empty() => Some("no data".into()),
        Ok(r) => {
            let real = r
                .iter()
                .any(|s| s["value"][1].as_str().is_some_and(|v| v != "NaN"));
            (!real).then(|| format!("only NaN: {}", Value::Array(r.clone())))
        }
    }
}

// ----- the fleet's work, through the public gRPC API -----

async fn channel(qs: &Quickstart) -> Channel {
    Channel::from_shared(format!("http://{}", qs.grpc_addr))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// A canary of one, then everyone (what `otactl rollout create --canary 1 --waves 100 --soak
/// 0s --start` sends), watched until it ends.
async fn staged_rollout(ch: &Channel, firmware_id: &str, model: &str) -> pb::Rollout {
    let mut rollouts = pb::rollout_service_client::RolloutServiceClient::new(ch.clone());
    let spec = pb::RolloutSpec {
        name: format!("{model} prometheus conformance"),
        firmware_id: firmware_id.into(),
        selector: Some(pb::DeviceSelector {
            models: vec![model.into()],
            ..Default::default()
        }),
        stages: vec![
            pb::Stage {
                name: "canary".into(),
                size: Some(pb::stage::Size::Count(1)),
                soak_s: 1,
                ..Default::default()
            },
            pb::Stage {
                name: "wave-1".into(),
                size: Some(pb::stage::Size::CumulativePercent(100.0)),
                soak_s: 0,
                ..Default::default()
            },
        ],
        // No health window: the dashboards' expressions are the subject, not the wait.
        health: Some(pb::HealthPolicy::default()),
        ..Default::default()
    };
    let created = rollouts
        .create(pb::CreateRolloutRequest {
            spec: Some(spec),
            start: true,
        })
        .await
        .unwrap()
        .into_inner();
    let mut watch = rollouts
        .watch(pb::WatchRolloutRequest {
            id: created.id.clone(),
            include_tasks: false,
        })
        .await
        .unwrap()
        .into_inner();
    tokio::time::timeout(T, async {
        let mut last = None;
        while let Some(p) = watch.next().await {
            let r = p.unwrap().rollout.unwrap();
            let done = [
                pb::RolloutState::Completed,
                pb::RolloutState::Aborted,
                pb::RolloutState::Paused,
            ]
            .iter()
            .any(|s| r.state == *s as i32);
            last = Some(r);
            if done {
                break;
            }
        }
        last.expect("the watch streams the rollout")
    })
    .await
    .expect("the rollout ends in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_expression_returns_data_from_a_real_prometheus() {
    let started = tokio::time::Instant::now();
    // The deploy stack's own Prometheus configuration is valid.
    let check = std::process::Command::new(binary("promtool"))
        .args(["check", "config", "--syntax-only"])
        .arg(repo_file("deploy/prometheus/prometheus.yml"))
        .output()
        .expect("promtool runs");
    assert!(
        check.status.success(),
        "promtool check config deploy/prometheus/prometheus.yml: {}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );

    let (targets, variables) = read_dashboards();
    assert!(
        targets.len() >= 40,
        "only {} targets in the dashboards",
        targets.len()
    );

    let dir = tempfile::tempdir().unwrap();
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let qs = Quickstart::start_with(
        QuickstartOptions {
            data_dir: dir.path().to_path_buf(),
            listen: any,
            metrics_listen: Some(any),
            agent_metrics_listen: Some(any),
            site: "home".into(),
            esphome_devices: 4,
            zigbee_mains: 2,
            zigbee_sleepy: 1,
        },
        Tuning::fast(),
    )
    .await
    .unwrap();
    let otad_metrics = qs
        .metrics_addr
        .expect("the quickstart's otad serves no /metrics (Quickstart::metrics_addr is None)");
    let agent_metrics = qs.agent_metrics_addr.expect(
        "the quickstart's agent serves no /metrics (Quickstart::agent_metrics_addr is None)",
    );
    let prom = Prometheus::start(&[("otad", otad_metrics), ("ota-agent", agent_metrics)]).await;

    // Both targets are scraped before anything happens, so counters start from their first value.
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let up = prom.query("sum(up)").await.unwrap_or_default();
        if up.first().and_then(|s| s["value"][1].as_str()) == Some("2") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "prometheus does not scrape otad ({otad_metrics}) and the agent ({agent_metrics}): {up:?}\n{}",
            prom.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    let ch = channel(&qs).await;
    // An RPC error (NotFound), for the RPC error panels.
    let missing = pb::rollout_service_client::RolloutServiceClient::new(ch.clone())
        .get(pb::GetRolloutRequest {
            id: "no-such-rollout".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound, "{missing:?}");

    // A staged rollout: the ESP32 sample firmware, canary then wave.
    let esp32 = qs
        .firmware
        .iter()
        .find(|f| f.model == "esp32dev")
        .expect("an ESP32 sample firmware")
        .clone();
    let rollout = staged_rollout(&ch, &esp32.id, "esp32dev").await;
    assert_eq!(
        rollout.state,
        pb::RolloutState::Completed as i32,
        "{rollout:#?}"
    );
    assert_eq!(rollout.stages.len(), 2, "{rollout:#?}");

    // A failing update: the sleepy Zigbee device is asleep for longer than a 1 s per-device
    // timeout, so the task times out (5016).
    let sleepy = qs
        .devices
        .iter()
        .find(|d| d.sleepy)
        .expect("a sleepy Zigbee device")
        .clone();
    let failed = tokio::time::timeout(
        T,
        pb::device_service_client::DeviceServiceClient::new(ch.clone()).update(
            pb::UpdateDeviceRequest {
                device_id: sleepy.id.clone(),
                firmware_id: sleepy.firmware_id.clone(),
                upgrade_type: pb::UpgradeType::Forced as i32,
                wait: true,
                timeout_s: 1,
                ..Default::default()
            },
        ),
    )
    .await
    .expect("the timed-out update ends in time")
    .unwrap()
    .into_inner();
    let task = failed.task.unwrap();
    assert_ne!(task.status, pb::UpgradeStatus::Success as i32, "{task:#?}");

    // Every expression must have data somewhere in the run; scrapes after the end count too,
    // so poll (bounded) until they all do or the deadline passes.
    let range = format!("{}s", started.elapsed().as_secs() + 120);
    let lookback = range.clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let failures = loop {
        let mut failures = Vec::new();
        for v in &variables {
            let want = match v.name.as_str() {
                "rollout" => rollout.id.clone(),
                "site" => qs.site.clone(),
                other => panic!("{}: unknown template variable {other:?}", v.dashboard),
            };
            let got = prom.label_values(&v.label, &v.metric).await;
            if !got.as_ref().is_ok_and(|g| g.contains(&want)) {
                failures.push(format!(
                    "{}: variable ${} = label_values({}, {}) does not offer {want:?}: {got:?}",
                    v.dashboard, v.name, v.metric, v.label
                ));
            }
        }
        for t in &targets {
            let expr = substitute(t, &rollout.id, &qs.site, &range);
            let q = format!("max_over_time(({expr})[{lookback}:1s])");
            if let Some(why) = emptiness(&prom.query(&q).await) {
                failures.push(format!(
                    "{} / panel {:?}: {}\n    expr: {}\n    asked: {q}",
                    t.dashboard, t.panel, why, t.expr
                ));
            }
        }
        if failures.is_empty() || tokio::time::Instant::now() >= deadline {
            break failures;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let otad_text = http_get(otad_metrics, "/metrics")
        .await
        .map(|r| r.1)
        .unwrap_or_default();
    let agent_text = http_get(agent_metrics, "/metrics")
        .await
        .map(|r| r.1)
        .unwrap_or_default();
    let names = |text: &str| {
        let mut n: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("# TYPE "))
            .filter_map(|l| l.split_whitespace().nth(2))
            .collect();
        n.dedup();
        n.join(" ")
    };
    assert!(
        failures.is_empty(),
        "{} of {} dashboard expressions (and variables) return no data:\n{}\n\notad exposes: {}\nthe agent exposes: {}",
        failures.len(),
        targets.len() + variables.len(),
        failures.join("\n"),
        names(&otad_text),
        names(&agent_text)
    );
    drop(prom);
    qs.shutdown().await;
}
