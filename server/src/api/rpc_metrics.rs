//! The metrics layer: `ota_rpc_requests_total{rpc, code}` and `ota_rpc_duration_seconds{rpc}`
//! for every gRPC call, in front of the authentication layer (refused calls count too).
//!
//! The duration runs until the response starts: for a unary call that is the handler's whole
//! work, for a streaming call (agent sessions, downloads, tails) the time to open the stream.
//! The code is counted when it is known: from the headers of a trailers-only answer (every
//! error), else from the trailers at the end of the body; a body dropped before its trailers
//! (the client went away) counts as `Cancelled`.
//!
//! The `rpc` label is the method path without the leading `/` (`ota.v1.DeviceService/List`)
//! for methods declared in `proto/ota/v1/*.proto`, and `other` for anything else, so callers
//! cannot create series at will.

use std::collections::HashSet;
use std::sync::{Arc, LazyLock};

use tonic::body::Body;
use tracing::Span;

use super::call_layer::{BodyWatch, CallHook, CallLayer, WatchedBody, grpc_status};
use crate::metrics::ServerMetrics;

/// The API's `.proto` files, for the set of known methods.
const PROTOS: [&str; 6] = [
    include_str!("../../../proto/ota/v1/agent.proto"),
    include_str!("../../../proto/ota/v1/device.proto"),
    include_str!("../../../proto/ota/v1/events.proto"),
    include_str!("../../../proto/ota/v1/firmware.proto"),
    include_str!("../../../proto/ota/v1/rollout.proto"),
    include_str!("../../../proto/ota/v1/system.proto"),
];

/// `ota.v1.<Service>/<Method>` of every rpc the API declares.
static METHODS: LazyLock<HashSet<String>> = LazyLock::new(|| {
    let mut methods = HashSet::new();
    for proto in PROTOS {
        let mut service = None;
        for line in proto.lines().map(str::trim) {
            if let Some(rest) = line.strip_prefix("service ") {
                service = rest.split_whitespace().next().map(str::to_string);
            } else if let (Some(rest), Some(s)) = (line.strip_prefix("rpc "), &service)
                && let Some(name) = rest.split('(').next()
            {
                methods.insert(format!("ota.v1.{s}/{}", name.trim()));
            }
        }
    }
    methods
});

/// The `rpc` label of a request path.
pub fn rpc_label(path: &str) -> &str {
    let full = path.strip_prefix('/').unwrap_or(path);
    if METHODS.contains(full) {
        full
    } else {
        "other"
    }
}

/// The gRPC code name of a `grpc-status` header value (`0` → `Ok`).
fn code_name(headers: &http::HeaderMap) -> Option<String> {
    grpc_status(headers).map(name_of)
}

/// The name of a gRPC status code, as tonic spells it.
fn name_of(code: i32) -> String {
    format!("{:?}", tonic::Code::from_i32(code))
}

/// The metrics hook, for a [`CallLayer`].
#[derive(Debug)]
pub struct RpcMetrics(Arc<ServerMetrics>);

impl RpcMetrics {
    /// The layer that records into `metrics`.
    pub fn layer(metrics: Arc<ServerMetrics>) -> CallLayer<Self> {
        CallLayer::new(Self(metrics))
    }
}

impl CallHook for RpcMetrics {
    /// The `rpc` label and when the call started.
    type State = (String, tokio::time::Instant);

    async fn before(
        self: Arc<Self>,
        req: http::Request<Body>,
    ) -> Result<(http::Request<Body>, Self::State), http::Response<Body>> {
        let rpc = rpc_label(req.uri().path()).to_string();
        Ok((req, (rpc, tokio::time::Instant::now())))
    }

    fn after<E>(
        &self,
        (rpc, started): Self::State,
        result: Result<http::Response<Body>, E>,
    ) -> Result<http::Response<Body>, E> {
        let metrics = &self.0;
        metrics.rpc_latency(&rpc, started.elapsed());
        let resp = match result {
            Ok(resp) => resp,
            Err(e) => {
                metrics.rpc_finished(&rpc, "Unknown");
                return Err(e);
            }
        };
        if let Some(code) = code_name(resp.headers()) {
            metrics.rpc_finished(&rpc, &code);
            return Ok(resp);
        }
        let pending = Some((metrics.clone(), rpc));
        Ok(resp.map(|body| WatchedBody::wrap(body, Span::none(), Count { pending }, false)))
    }
}

/// Counts its call when the trailers pass (or as `Cancelled` when the body is dropped early).
#[derive(Debug)]
struct Count {
    /// Taken when the call is counted.
    pending: Option<(Arc<ServerMetrics>, String)>,
}

impl Count {
    fn finish(&mut self, code: &str) {
        if let Some((metrics, rpc)) = self.pending.take() {
            metrics.rpc_finished(&rpc, code);
        }
    }
}

impl Drop for Count {
    fn drop(&mut self) {
        self.finish("Cancelled");
    }
}

impl BodyWatch for Count {
    fn status(&mut self, code: i32) {
        self.finish(&name_of(code));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_methods_keep_their_name_and_others_are_pooled() {
        assert_eq!(
            rpc_label("/ota.v1.DeviceService/List"),
            "ota.v1.DeviceService/List"
        );
        assert_eq!(
            rpc_label("/ota.v1.AgentService/Connect"),
            "ota.v1.AgentService/Connect"
        );
        assert_eq!(
            rpc_label("/ota.v1.AccessService/RevokeToken"),
            "ota.v1.AccessService/RevokeToken"
        );
        assert_eq!(rpc_label("/ota.v1.DeviceService/Nope"), "other");
        assert_eq!(rpc_label("/grpc.health.v1.Health/Check"), "other");
        assert_eq!(rpc_label(""), "other");
        assert!(METHODS.len() >= 33, "{}", METHODS.len());
    }

    #[test]
    fn code_names_follow_tonic() {
        let mut h = http::HeaderMap::new();
        assert_eq!(code_name(&h), None);
        h.insert("grpc-status", http::HeaderValue::from_static("0"));
        assert_eq!(code_name(&h).as_deref(), Some("Ok"));
        h.insert("grpc-status", http::HeaderValue::from_static("3"));
        assert_eq!(code_name(&h).as_deref(), Some("InvalidArgument"));
    }
}
