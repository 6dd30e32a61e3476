//! otad's configuration: defaults, then a TOML file, then `OTAD_*` environment variables, then
//! command-line flags (each later source wins).
//!
//! Loading only parses and validates; it binds no sockets and opens no files except the config
//! file itself, so `main` can report every problem before anything starts. Every bad value is
//! reported with its source and name, all at once.
//!
//! # Transport security
//! otad serves gRPC over TLS (`tls_cert`, `tls_key`; `tls_client_ca` for the agents' client
//! certificates). Plaintext only when asked for with `insecure_plaintext = true` or
//! `--insecure-plaintext`; [`Config::load`] refuses a configuration that says neither.
//! [`Config::default`] is the in-process development configuration (tests, embedding):
//! plaintext, so that `Otad::start` with defaults behaves like a local development server —
//! with the same loud warnings.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use serde::Deserialize;

/// Default gRPC listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7600";

/// The resolved configuration of a server.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// gRPC listen address.
    pub listen: SocketAddr,
    /// Directory of the event store (when it is sled) and the firmware blobs.
    pub data_dir: PathBuf,
    /// Where the event log lives: `None` for sled under `<data_dir>/events` (the default), or
    /// a PostgreSQL connection string (`postgres://user@host/db`, or libpq `key=value` pairs)
    /// for [`crate::store::PostgresEventStore`]. It may hold a password: never logged.
    pub store: Option<String>,
    /// Largest firmware image accepted, in bytes.
    pub max_firmware_bytes: u64,
    /// Largest gRPC message accepted, in bytes.
    pub max_message_bytes: usize,
    /// Agents send a heartbeat at least this often.
    pub heartbeat_interval: Duration,
    /// An agent silent this long is marked disconnected.
    pub agent_timeout: Duration,
    /// A firmware upload that sends nothing for this long is dropped (its temporary file too).
    pub upload_idle_timeout: Duration,
    /// OTLP/gRPC endpoint for traces and metrics (`OTEL_EXPORTER_OTLP_ENDPOINT` also works).
    pub otlp_endpoint: Option<String>,
    /// Service name in traces (`OTEL_SERVICE_NAME` also works).
    pub service_name: String,
    /// Share of new traces to sample (0.0–1.0); calls that arrive with a trace context follow
    /// the caller's decision. Unset: `OTEL_TRACES_SAMPLER`/`_ARG`, else every trace.
    pub trace_sample_ratio: Option<f64>,
    /// Extra resource attributes of otad's traces (each wins over `OTEL_RESOURCE_ATTRIBUTES`).
    pub resource_attributes: BTreeMap<String, String>,
    /// Log output: human text or JSON lines.
    pub log_format: LogFormat,
    /// Prometheus scrape endpoint (`/metrics`), if any.
    pub metrics_listen: Option<SocketAddr>,
    /// Skip the event log's corrupt tail after this sequence number (operator recovery).
    pub truncate_corrupt_tail_after: Option<u64>,
    /// TLS certificate, key and client CA of the gRPC listener.
    pub tls: Option<TlsFiles>,
    /// Serve plaintext gRPC (local development only). Without TLS and without access tokens,
    /// every caller is the local administrator.
    pub insecure_plaintext: bool,
    /// Per-caller rate limits of expensive RPCs.
    pub rate_limits: RateLimits,
    /// Write a projection snapshot (`<data_dir>/snapshots/`) after this many new events, so a
    /// restart replays only the events after it; 0: never.
    pub snapshot_every_events: u64,
    /// Four eyes: every new rollout needs the approval of a second operator before it starts.
    pub require_approval: bool,
}

/// The PEM files of the TLS listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// Server certificate chain (leaf first).
    pub cert: PathBuf,
    /// The certificate's private key (PKCS#8, SEC1 or PKCS#1).
    pub key: PathBuf,
    /// CA certificate(s) that sign agent client certificates. Unset: no agent can connect.
    pub client_ca: Option<PathBuf>,
}

/// Requests per minute per caller of the expensive RPCs; 0 turns a limit off. A caller may use
/// a minute's worth at once, then one request per (60 / n) seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimits {
    /// `FirmwareService.Upload`.
    pub upload: u32,
    /// `DeviceService.Check`.
    pub check: u32,
    /// `DeviceService.BatchCheck`.
    pub batch_check: u32,
    /// `RolloutService.Plan`.
    pub plan: u32,
    /// `RolloutService.Create`.
    pub create_rollout: u32,
    /// `EventService.Tail`.
    pub tail: u32,
}

impl Default for RateLimits {
    fn default() -> Self {
        Self {
            upload: 20,
            check: 120,
            batch_check: 10,
            plan: 60,
            create_rollout: 20,
            tail: 60,
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// JSON lines.
    Json,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN
                .parse()
                .unwrap_or_else(|_| unreachable!("valid constant")),
            data_dir: PathBuf::from("otad-data"),
            store: None,
            max_firmware_bytes: 64 * 1024 * 1024,
            max_message_bytes: 4 * 1024 * 1024,
            heartbeat_interval: Duration::from_secs(15),
            agent_timeout: Duration::from_secs(45),
            upload_idle_timeout: Duration::from_secs(60),
            otlp_endpoint: None,
            service_name: "otad".into(),
            trace_sample_ratio: None,
            resource_attributes: BTreeMap::new(),
            log_format: LogFormat::Text,
            metrics_listen: None,
            truncate_corrupt_tail_after: None,
            tls: None,
            // The development default of in-process servers; `load` never starts from it.
            insecure_plaintext: true,
            rate_limits: RateLimits::default(),
            snapshot_every_events: 100_000,
            require_approval: false,
        }
    }
}

/// otad — the OTA fleet rollout server.
///
/// Keeps every OTA fact as an event in an embedded sled log under --data-dir (or in PostgreSQL
/// with --store), serves the ota.v1 gRPC API to otactl and to site agents, and schedules staged
/// rollouts.
///
/// Settings come from (later wins): built-in defaults, the TOML file given by --config, OTAD_*
/// environment variables, and these flags.
#[derive(Debug, Parser, Default)]
#[command(name = "otad", version, about, long_about)]
pub struct Flags {
    /// TOML config file (keys as in `otad.example.toml`: listen, data_dir, max_firmware_bytes, ...).
    #[arg(long, env = "OTAD_CONFIG")]
    pub config: Option<PathBuf>,
    /// gRPC listen address [default: 127.0.0.1:7600]; port 0 picks a free port.
    #[arg(long, env = "OTAD_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// The event store: a PostgreSQL connection string (postgres://user@host/db) [default: sled
    /// in the data directory]. Firmware images stay in the data directory either way.
    #[arg(long, env = "OTAD_STORE", value_name = "URL")]
    pub store: Option<String>,
    /// Data directory (event store and firmware blobs) [default: ./otad-data].
    #[arg(long, env = "OTAD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Largest firmware image accepted, in bytes [default: 64 MiB].
    #[arg(long, env = "OTAD_MAX_FIRMWARE_BYTES")]
    pub max_firmware_bytes: Option<u64>,
    /// Largest gRPC message accepted, in bytes [default: 4 MiB].
    #[arg(long, env = "OTAD_MAX_MESSAGE_BYTES")]
    pub max_message_bytes: Option<usize>,
    /// Write a projection snapshot after this many new events, so a restart replays only the
    /// events after it; 0: never [default: 100000].
    #[arg(long, env = "OTAD_SNAPSHOT_EVERY_EVENTS")]
    pub snapshot_every_events: Option<u64>,
    /// Four eyes: every new rollout needs the approval of a second operator (`otactl rollout
    /// approve`) before it can start.
    #[arg(long, env = "OTAD_REQUIRE_APPROVAL")]
    pub require_approval: bool,
    /// Agent heartbeat interval, e.g. "15s" [default: 15s].
    #[arg(long, env = "OTAD_HEARTBEAT_INTERVAL", value_parser = parse_duration)]
    pub heartbeat_interval: Option<Duration>,
    /// Mark an agent disconnected after this much silence, e.g. "45s" [default: 45s].
    #[arg(long, env = "OTAD_AGENT_TIMEOUT", value_parser = parse_duration)]
    pub agent_timeout: Option<Duration>,
    /// Drop a firmware upload that sends nothing for this long, e.g. "60s" [default: 60s].
    #[arg(long, env = "OTAD_UPLOAD_IDLE_TIMEOUT", value_parser = parse_duration)]
    pub upload_idle_timeout: Option<Duration>,
    /// OTLP/gRPC endpoint for traces and metrics, e.g. http://127.0.0.1:4317. Falls back to
    /// OTEL_EXPORTER_OTLP_ENDPOINT. Unset: no export.
    #[arg(long, env = "OTAD_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// Service name in traces [default: OTEL_SERVICE_NAME, else otad].
    #[arg(long, env = "OTAD_SERVICE_NAME")]
    pub service_name: Option<String>,
    /// Share of new traces to sample, 0.0 to 1.0 [default: OTEL_TRACES_SAMPLER, else all].
    #[arg(long, env = "OTAD_TRACE_SAMPLE_RATIO")]
    pub trace_sample_ratio: Option<f64>,
    /// Log format [default: text].
    #[arg(long, env = "OTAD_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Serve Prometheus metrics on this address (path /metrics).
    #[arg(long, env = "OTAD_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Recovery: if the event log has a corrupt tail, keep events up to this sequence number and
    /// discard the rest. Only after reading the startup error that names the first bad event.
    #[arg(long)]
    pub truncate_corrupt_tail_after: Option<u64>,
    /// PEM certificate chain of the gRPC listener (with --tls-key).
    #[arg(long, env = "OTAD_TLS_CERT", value_name = "PEM")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "OTAD_TLS_KEY", value_name = "PEM")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificate that signs the agents' client certificates (`otactl pki init-ca`).
    #[arg(long, env = "OTAD_TLS_CLIENT_CA", value_name = "PEM")]
    pub tls_client_ca: Option<PathBuf>,
    /// Serve plaintext gRPC without TLS, for local development only. Without access tokens,
    /// anyone who can reach the port is an administrator.
    #[arg(long, env = "OTAD_INSECURE_PLAINTEXT")]
    pub insecure_plaintext: bool,
    /// Recovery: record a new admin token, write it to FILE (mode 0600) and exit. Run it while
    /// otad is stopped, with the same configuration.
    #[arg(long, value_name = "FILE")]
    pub create_admin_token: Option<PathBuf>,
}

/// The config file's keys.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    data_dir: Option<PathBuf>,
    store: Option<String>,
    max_firmware_bytes: Option<u64>,
    max_message_bytes: Option<usize>,
    heartbeat_interval: Option<String>,
    agent_timeout: Option<String>,
    upload_idle_timeout: Option<String>,
    otlp_endpoint: Option<String>,
    service_name: Option<String>,
    trace_sample_ratio: Option<f64>,
    resource_attributes: Option<BTreeMap<String, String>>,
    log_format: Option<LogFormat>,
    metrics_listen: Option<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls_client_ca: Option<PathBuf>,
    insecure_plaintext: Option<bool>,
    rate_limits: Option<RateLimits>,
    snapshot_every_events: Option<u64>,
    require_approval: Option<bool>,
}

/// Every problem found while loading, one per line.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid configuration:\n{}", .0.join("\n"))]
pub struct ConfigError(pub Vec<String>);

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{s:?} is not a duration like \"15s\": {e}"))
}

impl Config {
    /// Resolves flags (which clap already merged with `OTAD_*` variables) over the config file
    /// over defaults. `otel_endpoint_env` is `OTEL_EXPORTER_OTLP_ENDPOINT`, passed in so tests
    /// need not touch the process environment.
    pub fn load(flags: &Flags, otel_endpoint_env: Option<String>) -> Result<Config, ConfigError> {
        Self::load_with_env(flags, |k| {
            (k == ota_telemetry::traces::ENV_OTLP_ENDPOINT)
                .then(|| otel_endpoint_env.clone())
                .flatten()
        })
    }

    /// Like [`Config::load`], with the standard OpenTelemetry variables read through `env`:
    /// the OTLP endpoint (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, `OTEL_EXPORTER_OTLP_ENDPOINT`)
    /// and `OTEL_SERVICE_NAME` fill what the flags and the file leave unset. (Sampling,
    /// resource and the off switches are read when telemetry starts; see `crate::telemetry`.)
    pub fn load_with_env(
        flags: &Flags,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let mut errors = Vec::new();
        let file = match &flags.config {
            Some(path) => match read_file(path) {
                Ok(f) => f,
                Err(e) => {
                    errors.push(e);
                    FileConfig::default()
                }
            },
            None => FileConfig::default(),
        };
        let mut c = Config {
            insecure_plaintext: false,
            ..Config::default()
        };
        let service_name_in_file = c.apply_file(&file, &mut errors);
        c.apply_flags(flags, &env, service_name_in_file, &mut errors);
        c.apply_transport_security(flags, &file, &mut errors);
        c.check_bounds(&mut errors);
        c.check_store(&mut errors);
        if errors.is_empty() {
            Ok(c)
        } else {
            Err(ConfigError(errors))
        }
    }

    /// The config file's values over the defaults; `true` when it names the service.
    fn apply_file(&mut self, file: &FileConfig, errors: &mut Vec<String>) -> bool {
        let c = self;
        if let Some(s) = &file.listen {
            match s.parse() {
                Ok(a) => c.listen = a,
                Err(e) => errors.push(format!("config file: listen = {s:?}: {e}")),
            }
        }
        if let Some(v) = &file.data_dir {
            c.data_dir = v.clone();
        }
        if let Some(v) = &file.store {
            c.store = Some(v.clone());
        }
        if let Some(v) = file.max_firmware_bytes {
            c.max_firmware_bytes = v;
        }
        if let Some(v) = file.max_message_bytes {
            c.max_message_bytes = v;
        }
        if let Some(v) = file.snapshot_every_events {
            c.snapshot_every_events = v;
        }
        if let Some(v) = file.require_approval {
            c.require_approval = v;
        }
        for (key, value, slot) in [
            (
                "heartbeat_interval",
                &file.heartbeat_interval,
                &mut c.heartbeat_interval,
            ),
            ("agent_timeout", &file.agent_timeout, &mut c.agent_timeout),
            (
                "upload_idle_timeout",
                &file.upload_idle_timeout,
                &mut c.upload_idle_timeout,
            ),
        ] {
            if let Some(s) = value {
                match parse_duration(s) {
                    Ok(d) => *slot = d,
                    Err(e) => errors.push(format!("config file: {key}: {e}")),
                }
            }
        }
        if file.otlp_endpoint.is_some() {
            c.otlp_endpoint = file.otlp_endpoint.clone();
        }
        if let Some(v) = &file.service_name {
            c.service_name = v.clone();
        }
        if file.trace_sample_ratio.is_some() {
            c.trace_sample_ratio = file.trace_sample_ratio;
        }
        if let Some(v) = &file.resource_attributes {
            c.resource_attributes = v.clone();
        }
        if let Some(v) = file.log_format {
            c.log_format = v;
        }
        if let Some(s) = &file.metrics_listen {
            match s.parse() {
                Ok(a) => c.metrics_listen = Some(a),
                Err(e) => errors.push(format!("config file: metrics_listen = {s:?}: {e}")),
            }
        }
        if let Some(v) = file.rate_limits {
            c.rate_limits = v;
        }
        file.service_name.is_some()
    }

    /// The flags (and `OTAD_*` variables) over the file; the OpenTelemetry variables read
    /// through `env` fill the endpoint and the service name when nothing else set them.
    fn apply_flags(
        &mut self,
        flags: &Flags,
        env: &impl Fn(&str) -> Option<String>,
        service_name_in_file: bool,
        errors: &mut Vec<String>,
    ) {
        let c = self;
        if let Some(v) = flags.listen {
            c.listen = v;
        }
        if let Some(v) = &flags.data_dir {
            c.data_dir = v.clone();
        }
        if let Some(v) = &flags.store {
            c.store = Some(v.clone());
        }
        if let Some(v) = flags.max_firmware_bytes {
            c.max_firmware_bytes = v;
        }
        if let Some(v) = flags.max_message_bytes {
            c.max_message_bytes = v;
        }
        if let Some(v) = flags.snapshot_every_events {
            c.snapshot_every_events = v;
        }
        if flags.require_approval {
            c.require_approval = true;
        }
        if let Some(v) = flags.heartbeat_interval {
            c.heartbeat_interval = v;
        }
        if let Some(v) = flags.agent_timeout {
            c.agent_timeout = v;
        }
        if let Some(v) = flags.upload_idle_timeout {
            c.upload_idle_timeout = v;
        }
        if let Some(v) = &flags.otlp_endpoint {
            c.otlp_endpoint = Some(v.clone());
        }
        if c.otlp_endpoint.is_none() {
            c.otlp_endpoint = ota_telemetry::traces::env_otlp_endpoint(env);
        }
        if let Some(v) = &flags.service_name {
            c.service_name = v.clone();
        } else if !service_name_in_file
            && let Some(v) =
                env(ota_telemetry::traces::ENV_SERVICE_NAME).filter(|s| !s.trim().is_empty())
        {
            c.service_name = v.trim().to_string();
        }
        if flags.trace_sample_ratio.is_some() {
            c.trace_sample_ratio = flags.trace_sample_ratio;
        }
        if let Some(r) = c.trace_sample_ratio
            && !(0.0..=1.0).contains(&r)
        {
            errors.push(format!(
                "trace_sample_ratio = {r} is not between 0.0 and 1.0"
            ));
        }
        if let Some(v) = flags.log_format {
            c.log_format = v;
        }
        if let Some(v) = flags.metrics_listen {
            c.metrics_listen = Some(v);
        }
        c.truncate_corrupt_tail_after = flags.truncate_corrupt_tail_after;
    }

    /// TLS files (flags over file) or plaintext, asked for explicitly: exactly one of them.
    fn apply_transport_security(
        &mut self,
        flags: &Flags,
        file: &FileConfig,
        errors: &mut Vec<String>,
    ) {
        let c = self;
        c.insecure_plaintext = flags.insecure_plaintext || file.insecure_plaintext == Some(true);
        let cert = flags.tls_cert.clone().or(file.tls_cert.clone());
        let key = flags.tls_key.clone().or(file.tls_key.clone());
        let client_ca = flags.tls_client_ca.clone().or(file.tls_client_ca.clone());
        match (cert, key) {
            (Some(cert), Some(key)) => {
                c.tls = Some(TlsFiles {
                    cert,
                    key,
                    client_ca,
                })
            }
            (None, None) if client_ca.is_some() => errors.push(
                "tls_client_ca is set but tls_cert and tls_key are not: agents' certificates need a TLS listener".into(),
            ),
            (None, None) => {}
            (Some(_), None) => errors.push("tls_cert is set but tls_key is not".into()),
            (None, Some(_)) => errors.push("tls_key is set but tls_cert is not".into()),
        }
        if c.tls.is_some() && c.insecure_plaintext {
            errors.push(
                "insecure_plaintext and tls_cert/tls_key are both set: choose one (TLS, unless this is a development machine)".into(),
            );
        }
        if c.tls.is_none() && !c.insecure_plaintext && errors.is_empty() {
            errors.push(
                "otad serves gRPC over TLS: set tls_cert and tls_key (and tls_client_ca for agents; `otactl pki` makes them, see deploy/README.md), or pass --insecure-plaintext on a development machine".into(),
            );
        }
    }

    /// Sizes and durations that cannot work.
    fn check_bounds(&self, errors: &mut Vec<String>) {
        let c = self;
        if c.max_firmware_bytes == 0 {
            errors.push("max_firmware_bytes must be greater than 0".into());
        }
        if c.max_message_bytes < 64 * 1024 {
            errors.push(format!(
                "max_message_bytes = {} is too small: at least 65536 (firmware chunks are up to 1 MiB; 4 MiB recommended)",
                c.max_message_bytes
            ));
        }
        if c.upload_idle_timeout.is_zero() {
            errors.push("upload_idle_timeout must be greater than 0".into());
        }
        if c.heartbeat_interval.is_zero() {
            errors.push("heartbeat_interval must be greater than 0".into());
        }
        if c.agent_timeout <= c.heartbeat_interval {
            errors.push(format!(
                "agent_timeout ({}) must be longer than heartbeat_interval ({})",
                humantime::format_duration(c.agent_timeout),
                humantime::format_duration(c.heartbeat_interval)
            ));
        }
    }
}

impl Config {
    /// The store setting parses as a PostgreSQL connection string (its value is not repeated:
    /// it may hold a password), and sled-only recovery is not asked of PostgreSQL.
    fn check_store(&self, errors: &mut Vec<String>) {
        let Some(url) = &self.store else { return };
        let url_like = url.starts_with("postgres://") || url.starts_with("postgresql://");
        let pairs_like = !url.contains("://") && url.contains('=');
        if !url_like && !pairs_like {
            errors.push(
                "store: expected a PostgreSQL connection string (postgres://user@host/db or \
                 libpq key=value pairs); leave it out for sled in the data directory"
                    .into(),
            );
        } else if let Err(e) = crate::store::postgres::check_url(url) {
            errors.push(format!("store: {e}"));
        }
        if self.truncate_corrupt_tail_after.is_some() {
            errors.push(
                "truncate_corrupt_tail_after applies to the sled store only, not to store = \
                 PostgreSQL"
                    .into(),
            );
        }
    }
}

fn read_file(path: &Path) -> Result<FileConfig, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
    toml::from_str(&text).map_err(|e| format!("config file {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plaintext() -> Flags {
        Flags {
            insecure_plaintext: true,
            ..Flags::default()
        }
    }

    #[test]
    fn defaults_are_valid_with_explicit_plaintext() {
        let c = Config::load(&plaintext(), None).unwrap();
        assert_eq!(c, Config::default());
    }

    #[test]
    fn plaintext_must_be_asked_for() {
        let err = Config::load(&Flags::default(), None).unwrap_err();
        assert_eq!(err.0.len(), 1, "{err}");
        assert!(err.0[0].contains("--insecure-plaintext"), "{err}");
        assert!(err.0[0].contains("tls_cert"), "{err}");
    }

    #[test]
    fn tls_files_from_file_and_flags() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("otad.toml");
        std::fs::write(
            &path,
            "tls_cert = \"/etc/otad/server.pem\"\ntls_key = \"/etc/otad/server.key\"\ntls_client_ca = \"/etc/otad/ca.pem\"\n[rate_limits]\nupload = 3\n",
        )
        .unwrap();
        let flags = Flags {
            config: Some(path.clone()),
            tls_key: Some("/run/otad.key".into()),
            ..Flags::default()
        };
        let c = Config::load(&flags, None).unwrap();
        assert!(!c.insecure_plaintext);
        assert_eq!(
            c.tls,
            Some(TlsFiles {
                cert: "/etc/otad/server.pem".into(),
                key: "/run/otad.key".into(),
                client_ca: Some("/etc/otad/ca.pem".into()),
            })
        );
        assert_eq!(c.rate_limits.upload, 3);
        assert_eq!(c.rate_limits.tail, RateLimits::default().tail);

        let both = Flags {
            config: Some(path),
            insecure_plaintext: true,
            ..Flags::default()
        };
        let err = Config::load(&both, None).unwrap_err();
        assert!(err.to_string().contains("choose one"), "{err}");

        let half = Flags {
            tls_cert: Some("/c.pem".into()),
            ..plaintext()
        };
        let err = Config::load(&half, None).unwrap_err();
        assert!(err.to_string().contains("tls_key is not"), "{err}");
    }

    #[test]
    fn flags_override_file_and_file_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("otad.toml");
        std::fs::write(
            &path,
            "listen = \"0.0.0.0:9000\"\ndata_dir = \"/var/lib/otad\"\nheartbeat_interval = \"5s\"\n",
        )
        .unwrap();
        let flags = Flags {
            config: Some(path),
            listen: Some("127.0.0.1:7777".parse().unwrap()),
            ..plaintext()
        };
        let c = Config::load(&flags, Some("http://collector:4317".into())).unwrap();
        assert_eq!(c.listen, "127.0.0.1:7777".parse().unwrap());
        assert_eq!(c.data_dir, PathBuf::from("/var/lib/otad"));
        assert_eq!(c.heartbeat_interval, Duration::from_secs(5));
        assert_eq!(c.otlp_endpoint.as_deref(), Some("http://collector:4317"));
    }

    #[test]
    fn the_store_is_sled_unless_a_postgres_url_is_given() {
        assert_eq!(Config::load(&plaintext(), None).unwrap().store, None);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("otad.toml");
        std::fs::write(&path, "store = \"postgres://otad@db.example/ota\"\n").unwrap();
        let from_file = Flags {
            config: Some(path.clone()),
            ..plaintext()
        };
        let c = Config::load(&from_file, None).unwrap();
        assert_eq!(c.store.as_deref(), Some("postgres://otad@db.example/ota"));
        let flag_wins = Flags {
            config: Some(path),
            store: Some("host=/run/postgresql dbname=ota".into()),
            ..plaintext()
        };
        let c = Config::load(&flag_wins, None).unwrap();
        assert_eq!(c.store.as_deref(), Some("host=/run/postgresql dbname=ota"));

        let secret = "mysql://root:hunter2@db/ota";
        let bad = Flags {
            store: Some(secret.into()),
            truncate_corrupt_tail_after: Some(3),
            ..plaintext()
        };
        let err = Config::load(&bad, None).unwrap_err();
        assert_eq!(err.0.len(), 2, "{err}");
        assert!(
            err.0[0].contains("expected a PostgreSQL connection string"),
            "{err}"
        );
        assert!(err.0[1].contains("sled store only"), "{err}");
        assert!(
            !err.to_string().contains("hunter2"),
            "the value may hold a password"
        );
    }

    #[test]
    fn every_problem_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("otad.toml");
        std::fs::write(&path, "listen = \"nope\"\nagent_timeout = \"soon\"\n").unwrap();
        let flags = Flags {
            config: Some(path),
            max_firmware_bytes: Some(0),
            ..plaintext()
        };
        let err = Config::load(&flags, None).unwrap_err();
        assert_eq!(err.0.len(), 3, "{err}");
        assert!(err.to_string().contains("listen"));
        assert!(err.to_string().contains("agent_timeout"));
        assert!(err.to_string().contains("max_firmware_bytes"));
    }

    #[test]
    fn telemetry_keys_and_otel_variables() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("otad.toml");
        std::fs::write(
            &path,
            "otlp_endpoint = \"http://file:4317\"\ntrace_sample_ratio = 0.1\n[resource_attributes]\n\"deployment.environment\" = \"prod\"\n",
        )
        .unwrap();
        let env = |k: &str| match k {
            "OTEL_EXPORTER_OTLP_ENDPOINT" => Some("http://env:4317".to_string()),
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT" => Some("http://env-traces:4317".to_string()),
            "OTEL_SERVICE_NAME" => Some("otad-eu".to_string()),
            _ => None,
        };
        // The file's endpoint wins over the variables; the variables' service name fills in.
        let flags = Flags {
            config: Some(path.clone()),
            ..plaintext()
        };
        let c = Config::load_with_env(&flags, env).unwrap();
        assert_eq!(c.otlp_endpoint.as_deref(), Some("http://file:4317"));
        assert_eq!(c.service_name, "otad-eu");
        assert_eq!(c.trace_sample_ratio, Some(0.1));
        assert_eq!(c.resource_attributes["deployment.environment"], "prod");

        // Without the file: the traces endpoint variable wins over the general one; a flag
        // wins over OTEL_SERVICE_NAME.
        let flags = Flags {
            service_name: Some("otad-flag".into()),
            trace_sample_ratio: Some(0.5),
            ..plaintext()
        };
        let c = Config::load_with_env(&flags, env).unwrap();
        assert_eq!(c.otlp_endpoint.as_deref(), Some("http://env-traces:4317"));
        assert_eq!(c.service_name, "otad-flag");
        assert_eq!(c.trace_sample_ratio, Some(0.5));
        let t = crate::telemetry::tracing_config(&c)
            .resolve_with("otad", env)
            .unwrap();
        assert_eq!(t.service_name, "otad-flag");
        assert!(t.sampler.parent_based);

        let bad = Flags {
            trace_sample_ratio: Some(2.0),
            ..plaintext()
        };
        let err = Config::load(&bad, None).unwrap_err();
        assert!(err.to_string().contains("trace_sample_ratio"), "{err}");
    }

    #[test]
    fn unknown_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("otad.toml");
        std::fs::write(&path, "lisen = \"127.0.0.1:1\"\n").unwrap();
        let flags = Flags {
            config: Some(path),
            ..Flags::default()
        };
        let err = Config::load(&flags, None).unwrap_err();
        assert!(err.to_string().contains("lisen"), "{err}");
    }
}
