//! The banner the binary prints once the quickstart runs: where otad listens, what the site
//! has, which firmware is in the catalog, and the otactl commands to try next.

use std::fmt::Write as _;

use crate::Quickstart;

/// otactl's default server (`ctl::cli::DEFAULT_SERVER`): without flags it reaches this.
const OTACTL_DEFAULT: &str = "127.0.0.1:7600";

/// The banner text.
pub(crate) fn render(q: &Quickstart) -> String {
    let mut b = String::new();
    let _ = writeln!(b, "ota-quickstart is running. Ctrl-C stops everything.\n");
    let _ = writeln!(
        b,
        "  otad       http://{}  (development mode: plaintext, no tokens)",
        q.grpc_addr
    );
    let _ = writeln!(
        b,
        "  data       {}  (kept across runs; --reset starts over)",
        q.data_dir.display()
    );
    let metrics = |a: Option<std::net::SocketAddr>| {
        a.map_or_else(|| "off".to_string(), |a| format!("http://{a}/metrics"))
    };
    let _ = writeln!(
        b,
        "  metrics    otad {} · agent {}",
        metrics(q.metrics_addr),
        metrics(q.agent_metrics_addr)
    );
    let esp = q
        .devices
        .iter()
        .filter(|d| d.transport == "esphome")
        .count();
    let mains = q
        .devices
        .iter()
        .filter(|d| d.transport == "zigbee2mqtt" && !d.sleepy)
        .count();
    let sleepy = q.devices.iter().filter(|d| d.sleepy).count();
    let _ = writeln!(
        b,
        "  site       {}: one ota-agent ({}), {} devices: {esp} ESPHome, {mains} Zigbee mains, {sleepy} Zigbee sleepy",
        q.site,
        q.agent_config.display(),
        q.devices.len()
    );
    let _ = writeln!(
        b,
        "  mqtt       {}  (zigbee2mqtt simulator, base topic zigbee2mqtt)\n",
        q.mqtt_addr
    );
    let _ = writeln!(b, "  devices");
    for d in &q.devices {
        let _ = writeln!(
            b,
            "    {:<34} {:<12} {:<10}{}",
            d.id,
            d.transport,
            d.model,
            if d.sleepy { " (sleepy)" } else { "" }
        );
    }
    let _ = writeln!(b, "\n  firmware");
    for f in &q.firmware {
        let _ = writeln!(
            b,
            "    {:<20} {:<20} {:<10} {} {}",
            f.id, f.name, f.version, f.transport, f.model
        );
    }

    let alias = "alias otactl='cargo run -q -p ota-ctl --bin otactl --'";
    let _ = writeln!(b, "\nNext, in a second terminal:\n  {alias}");
    if q.grpc_addr.to_string() != OTACTL_DEFAULT {
        let _ = writeln!(b, "  export OTACTL_SERVER=http://{}", q.grpc_addr);
    }
    let esp = q
        .firmware
        .iter()
        .find(|f| f.model == "esp32dev" && f.version != crate::fleet::ESP_INSTALLED_VERSION);
    let zigbee = q
        .devices
        .iter()
        .find(|d| d.transport == "zigbee2mqtt" && !d.sleepy);
    let first_esp = q.devices.iter().find(|d| d.model == "esp32dev");
    let _ = writeln!(b, "  otactl device list");
    if let Some(d) = first_esp {
        let _ = writeln!(b, "  otactl device check {}", d.id);
    }
    let _ = writeln!(b, "  otactl device check --all");
    let _ = writeln!(b, "  otactl firmware list");
    if let Some(f) = esp {
        let _ = writeln!(
            b,
            "  otactl rollout create --name multisensor-{} --firmware {} --model esp32dev \\\n      --canary 1 --waves 100 --soak 10s --max-per-minute 30 --health-window 20s --require-approval",
            f.version, f.id
        );
        let _ = writeln!(
            b,
            "  otactl rollout approve <ROLLOUT-ID> --reason \"release notes read\" --as bob"
        );
        let _ = writeln!(b, "  otactl rollout start <ROLLOUT-ID>");
        let _ = writeln!(b, "  otactl rollout watch <ROLLOUT-ID>");
        let _ = writeln!(
            b,
            "  otactl rollout rollback <ROLLOUT-ID> --devices all --start --reason \"back to 1.0.0\""
        );
    }
    if let Some(d) = zigbee {
        let _ = writeln!(
            b,
            "  otactl device update {} --firmware {}",
            d.id, d.firmware_id
        );
    }
    let _ = writeln!(b, "  otactl events tail --follow");
    b
}
