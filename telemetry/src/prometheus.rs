//! The Prometheus text exposition format (version 0.0.4), rendered from OpenTelemetry metrics,
//! and the `/metrics` HTTP endpoint that serves it.
//!
//! Two steps, both pure: [`families`] turns the `ResourceMetrics` a `ManualReader` collected
//! into [`Family`] values (Prometheus names and types), and [`render`] writes families as text.
//! The rules:
//!
//! - Names are sanitised to `[a-zA-Z_:][a-zA-Z0-9_:]*` (other characters become `_`, a leading
//!   digit gets a `_` prefix); label names to `[a-zA-Z_][a-zA-Z0-9_]*`.
//! - Monotonic sums are counters and get a `_total` suffix (unless they already end in it);
//!   non-monotonic sums (up-down counters) and gauges are gauges; histograms render as
//!   cumulative `_bucket{le=..}` lines ending with `le="+Inf"`, then `_sum` and `_count`.
//!   Exponential histograms are not rendered (the services define none).
//! - Units are not appended: the services put them in the instrument names
//!   (`_seconds`, `_bytes`), as the metric catalog says.
//! - Label values escape `\`, `"` and newlines; `# HELP` text escapes `\` and newlines.
//! - Output is stable: families sorted by name, series by their sorted label pairs, so two
//!   scrapes of unchanged state are byte for byte the same.
//! - Resource attributes (service name, ...) are not rendered; Prometheus adds its own
//!   `job`/`instance` labels.
//!
//! The endpoint ([`serve`]) answers `GET /metrics` with content type
//! `text/plain; version=0.0.4; charset=utf-8`, and nothing else.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use opentelemetry::KeyValue;
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData, ResourceMetrics};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// The content type of the exposition format this module writes.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The Prometheus type of a family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Monotonic; the name ends in `_total`.
    Counter,
    /// Any value.
    Gauge,
    /// Buckets, sum and count.
    Histogram,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// A sample value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// An unsigned integer.
    U64(u64),
    /// A signed integer.
    I64(i64),
    /// A float.
    F64(f64),
    /// A histogram: `counts[i]` samples fell at or below `bounds[i]` and above `bounds[i-1]`;
    /// `counts` has one more entry than `bounds` (the `+Inf` bucket). Not cumulative.
    Histogram {
        /// Upper bounds, ascending.
        bounds: Vec<f64>,
        /// Per-bucket counts.
        counts: Vec<u64>,
        /// Sum of the samples.
        sum: f64,
        /// Number of samples.
        count: u64,
    },
}

/// One series: its labels and value.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Label pairs (any order; rendering sorts them).
    pub labels: Vec<(String, String)>,
    /// Value.
    pub value: Value,
}

/// A metric family: one `# HELP`/`# TYPE` block.
#[derive(Debug, Clone, PartialEq)]
pub struct Family {
    /// The name as given; [`render`] sanitises it and appends `_total` to counters.
    pub name: String,
    /// The description.
    pub help: String,
    /// Type.
    pub kind: Kind,
    /// Series.
    pub series: Vec<Series>,
}

/// Converts what a reader collected into families. Metrics with the same name from several
/// meters are merged into one family (the first one's type and help win).
pub fn families(rm: &ResourceMetrics) -> Vec<Family> {
    let mut out: Vec<Family> = Vec::new();
    for scope in rm.scope_metrics() {
        for metric in scope.metrics() {
            let converted = match metric.data() {
                AggregatedMetrics::U64(d) => convert(d, Value::U64, |v| v as f64),
                AggregatedMetrics::I64(d) => convert(d, Value::I64, |v| v as f64),
                AggregatedMetrics::F64(d) => convert(d, Value::F64, |v| v),
            };
            let Some((kind, series)) = converted else {
                continue;
            };
            match out.iter_mut().find(|f| f.name == metric.name()) {
                Some(f) => f.series.extend(series),
                None => out.push(Family {
                    name: metric.name().to_string(),
                    help: metric.description().to_string(),
                    kind,
                    series,
                }),
            }
        }
    }
    out
}

fn labels_of<'a>(attrs: impl Iterator<Item = &'a KeyValue>) -> Vec<(String, String)> {
    attrs
        .map(|kv| (kv.key.as_str().to_string(), kv.value.as_str().into_owned()))
        .collect()
}

fn convert<T: Copy>(
    data: &MetricData<T>,
    value: impl Fn(T) -> Value,
    float: impl Fn(T) -> f64,
) -> Option<(Kind, Vec<Series>)> {
    match data {
        MetricData::Gauge(g) => Some((
            Kind::Gauge,
            g.data_points()
                .map(|p| Series {
                    labels: labels_of(p.attributes()),
                    value: value(p.value()),
                })
                .collect(),
        )),
        MetricData::Sum(s) => Some((
            if s.is_monotonic() {
                Kind::Counter
            } else {
                Kind::Gauge
            },
            s.data_points()
                .map(|p| Series {
                    labels: labels_of(p.attributes()),
                    value: value(p.value()),
                })
                .collect(),
        )),
        MetricData::Histogram(h) => Some((
            Kind::Histogram,
            h.data_points()
                .map(|p| Series {
                    labels: labels_of(p.attributes()),
                    value: Value::Histogram {
                        bounds: p.bounds().collect(),
                        counts: p.bucket_counts().collect(),
                        sum: float(p.sum()),
                        count: p.count(),
                    },
                })
                .collect(),
        )),
        MetricData::ExponentialHistogram(_) => None,
    }
}

/// A metric name with every character outside `[a-zA-Z0-9_:]` replaced by `_`, and a `_` in
/// front of a leading digit.
pub fn sanitize_name(name: &str) -> String {
    sanitize(name, |c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// A label name with every character outside `[a-zA-Z0-9_]` replaced by `_`, and a `_` in front
/// of a leading digit.
pub fn sanitize_label(name: &str) -> String {
    sanitize(name, |c| c.is_ascii_alphanumeric() || c == '_')
}

fn sanitize(name: &str, ok: impl Fn(char) -> bool) -> String {
    let mut s: String = name.chars().map(|c| if ok(c) { c } else { '_' }).collect();
    if s.is_empty() || s.starts_with(|c: char| c.is_ascii_digit()) {
        s.insert(0, '_');
    }
    s
}

fn escape_label_value(v: &str, out: &mut String) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

/// A float as Prometheus writes it: `NaN`, `+Inf`, `-Inf`, or the shortest decimal that reads
/// back as the same number.
pub fn format_float(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{v}")
    }
}

/// `{a="1",b="2"}` with `extra` (e.g. `le`) last, or nothing without labels.
fn write_labels(out: &mut String, labels: &[(String, String)], extra: Option<(&str, &str)>) {
    if labels.is_empty() && extra.is_none() {
        return;
    }
    out.push('{');
    let mut first = true;
    for (k, v) in labels
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .chain(extra)
    {
        if !first {
            out.push(',');
        }
        first = false;
        out.push_str(k);
        out.push_str("=\"");
        escape_label_value(v, out);
        out.push('"');
    }
    out.push('}');
}

/// A series' sorted, sanitised labels and its value.
type Labelled<'a> = (Vec<(String, String)>, &'a Value);

/// Renders families in the text exposition format 0.0.4. Families are sorted by their final
/// name, series by their sorted, sanitised labels; families without series are left out.
pub fn render(families: &[Family]) -> String {
    // Final name → (kind, help, series with normalised labels). Same-named families merge.
    let mut by_name: BTreeMap<String, (Kind, &str, Vec<Labelled<'_>>)> = BTreeMap::new();
    for f in families {
        let mut name = sanitize_name(&f.name);
        if f.kind == Kind::Counter && !name.ends_with("_total") {
            name.push_str("_total");
        }
        let entry = by_name
            .entry(name)
            .or_insert_with(|| (f.kind, f.help.as_str(), Vec::new()));
        for s in &f.series {
            let mut labels: Vec<(String, String)> = s
                .labels
                .iter()
                .map(|(k, v)| (sanitize_label(k), v.clone()))
                .collect();
            labels.sort();
            entry.2.push((labels, &s.value));
        }
    }
    let mut out = String::new();
    for (name, (kind, help, mut series)) in by_name {
        if series.is_empty() {
            continue;
        }
        series.sort_by(|a, b| a.0.cmp(&b.0));
        if !help.is_empty() {
            let _ = writeln!(out, "# HELP {name} {}", escape_help(help));
        }
        let _ = writeln!(out, "# TYPE {name} {}", kind.name());
        for (labels, value) in series {
            match value {
                Value::U64(v) => write_sample(&mut out, &name, &labels, None, &v.to_string()),
                Value::I64(v) => write_sample(&mut out, &name, &labels, None, &v.to_string()),
                Value::F64(v) => write_sample(&mut out, &name, &labels, None, &format_float(*v)),
                Value::Histogram {
                    bounds,
                    counts,
                    sum,
                    count,
                } => {
                    let bucket = format!("{name}_bucket");
                    let mut cumulative = 0u64;
                    for (i, bound) in bounds.iter().enumerate() {
                        cumulative += counts.get(i).copied().unwrap_or(0);
                        let le = format_float(*bound);
                        write_sample(
                            &mut out,
                            &bucket,
                            &labels,
                            Some(("le", &le)),
                            &cumulative.to_string(),
                        );
                    }
                    write_sample(
                        &mut out,
                        &bucket,
                        &labels,
                        Some(("le", "+Inf")),
                        &count.to_string(),
                    );
                    write_sample(
                        &mut out,
                        &format!("{name}_sum"),
                        &labels,
                        None,
                        &format_float(*sum),
                    );
                    write_sample(
                        &mut out,
                        &format!("{name}_count"),
                        &labels,
                        None,
                        &count.to_string(),
                    );
                }
            }
        }
    }
    out
}

fn write_sample(
    out: &mut String,
    name: &str,
    labels: &[(String, String)],
    extra: Option<(&str, &str)>,
    value: &str,
) {
    out.push_str(name);
    write_labels(out, labels, extra);
    out.push(' ');
    out.push_str(value);
    out.push('\n');
}

/// Serves `GET /metrics` on `listener` until `shutdown` is cancelled. Each scrape collects
/// from `metrics` (running the observable callbacks) and renders the result.
pub fn serve(
    listener: TcpListener,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    use axum::routing::get;
    let app = axum::Router::new().route(
        "/metrics",
        get(move || {
            let metrics = metrics.clone();
            async move {
                // Callbacks read the services' state under short locks; keep them off the
                // reactor threads anyway.
                let body = tokio::task::spawn_blocking(move || metrics.render_prometheus())
                    .await
                    .unwrap_or_else(|e| Err(format!("collection panicked: {e}")));
                match body {
                    Ok(text) => (
                        axum::http::StatusCode::OK,
                        [(axum::http::header::CONTENT_TYPE, CONTENT_TYPE)],
                        text,
                    ),
                    Err(e) => (
                        axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "text/plain; charset=utf-8",
                        )],
                        format!("cannot collect metrics: {e}\n"),
                    ),
                }
            }
        }),
    );
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::warn!(error = %e, "the metrics endpoint stopped with an error");
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(labels: &[(&str, &str)], value: Value) -> Series {
        Series {
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            value,
        }
    }

    #[test]
    fn counters_gauges_and_histograms_byte_for_byte() {
        let families = vec![
            Family {
                name: "ota_tasks_finished".into(),
                help: "Tasks that ended.".into(),
                kind: Kind::Counter,
                series: vec![
                    s(
                        &[("site", "b"), ("result", "failure"), ("code", "5012")],
                        Value::U64(2),
                    ),
                    s(
                        &[("site", "a"), ("result", "success"), ("code", "0")],
                        Value::U64(1),
                    ),
                ],
            },
            Family {
                name: "ota_agents_connected".into(),
                help: "Agents with an open session.".into(),
                kind: Kind::Gauge,
                series: vec![s(&[], Value::I64(-3))],
            },
            Family {
                name: "ota_rpc_duration_seconds".into(),
                help: "RPC latency.".into(),
                kind: Kind::Histogram,
                series: vec![s(
                    &[("rpc", "ota.v1.DeviceService/List")],
                    Value::Histogram {
                        bounds: vec![0.005, 0.1, 1.0],
                        counts: vec![1, 0, 2, 1],
                        sum: 4.25,
                        count: 4,
                    },
                )],
            },
            Family {
                name: "ota_rollout_progress_ratio".into(),
                help: String::new(),
                kind: Kind::Gauge,
                series: vec![s(&[("rollout", "r1")], Value::F64(0.5))],
            },
        ];
        let expected = "\
# HELP ota_agents_connected Agents with an open session.
# TYPE ota_agents_connected gauge
ota_agents_connected -3
# TYPE ota_rollout_progress_ratio gauge
ota_rollout_progress_ratio{rollout=\"r1\"} 0.5
# HELP ota_rpc_duration_seconds RPC latency.
# TYPE ota_rpc_duration_seconds histogram
ota_rpc_duration_seconds_bucket{rpc=\"ota.v1.DeviceService/List\",le=\"0.005\"} 1
ota_rpc_duration_seconds_bucket{rpc=\"ota.v1.DeviceService/List\",le=\"0.1\"} 1
ota_rpc_duration_seconds_bucket{rpc=\"ota.v1.DeviceService/List\",le=\"1\"} 3
ota_rpc_duration_seconds_bucket{rpc=\"ota.v1.DeviceService/List\",le=\"+Inf\"} 4
ota_rpc_duration_seconds_sum{rpc=\"ota.v1.DeviceService/List\"} 4.25
ota_rpc_duration_seconds_count{rpc=\"ota.v1.DeviceService/List\"} 4
# HELP ota_tasks_finished_total Tasks that ended.
# TYPE ota_tasks_finished_total counter
ota_tasks_finished_total{code=\"0\",result=\"success\",site=\"a\"} 1
ota_tasks_finished_total{code=\"5012\",result=\"failure\",site=\"b\"} 2
";
        assert_eq!(render(&families), expected);
    }

    #[test]
    fn names_labels_and_values_are_escaped() {
        let families = vec![
            Family {
                name: "9 bad.name-x".into(),
                help: "line one\nback\\slash".into(),
                kind: Kind::Gauge,
                series: vec![s(
                    &[("odd.key", "a\"b\\c\nd"), ("0x", "")],
                    Value::F64(f64::NAN),
                )],
            },
            Family {
                name: "already_total".into(),
                help: String::new(),
                kind: Kind::Counter,
                series: vec![s(&[], Value::F64(f64::INFINITY))],
            },
            Family {
                name: "empty".into(),
                help: "no series, no block".into(),
                kind: Kind::Gauge,
                series: vec![],
            },
        ];
        let expected = "\
# HELP _9_bad_name_x line one\\nback\\\\slash
# TYPE _9_bad_name_x gauge
_9_bad_name_x{_0x=\"\",odd_key=\"a\\\"b\\\\c\\nd\"} NaN
# TYPE already_total counter
already_total +Inf
";
        assert_eq!(render(&families), expected);
    }

    #[test]
    fn floats_print_like_prometheus() {
        assert_eq!(format_float(1.0), "1");
        assert_eq!(format_float(0.0001), "0.0001");
        assert_eq!(format_float(86400.0), "86400");
        assert_eq!(format_float(-2.5), "-2.5");
        assert_eq!(format_float(f64::NEG_INFINITY), "-Inf");
    }

    #[test]
    fn same_named_families_merge_and_rendering_is_stable() {
        let a = Family {
            name: "x".into(),
            help: "first".into(),
            kind: Kind::Gauge,
            series: vec![s(&[("k", "2")], Value::U64(2))],
        };
        let b = Family {
            name: "x".into(),
            help: "second".into(),
            kind: Kind::Gauge,
            series: vec![s(&[("k", "1")], Value::U64(1))],
        };
        let text = render(&[a.clone(), b.clone()]);
        assert_eq!(
            text,
            "# HELP x first\n# TYPE x gauge\nx{k=\"1\"} 1\nx{k=\"2\"} 2\n"
        );
        assert_eq!(render(&[a, b]), text);
    }
}
