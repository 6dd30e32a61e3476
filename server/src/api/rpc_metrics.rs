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
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll};

use http_body::Frame;
use tonic::body::Body;
use tonic::codegen::Body as HttpBody;

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
    let code = headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())?;
    Some(format!("{:?}", tonic::Code::from_i32(code)))
}

/// The layer, for `tonic::transport::Server::layer`.
#[derive(Debug, Clone)]
pub struct RpcMetricsLayer(Arc<ServerMetrics>);

impl RpcMetricsLayer {
    /// Records into `metrics`.
    pub fn new(metrics: Arc<ServerMetrics>) -> Self {
        Self(metrics)
    }
}

impl<S> tower::Layer<S> for RpcMetricsLayer {
    type Service = RpcMetrics<S>;

    fn layer(&self, inner: S) -> RpcMetrics<S> {
        RpcMetrics {
            inner,
            metrics: self.0.clone(),
        }
    }
}

/// The layer's service.
#[derive(Debug, Clone)]
pub struct RpcMetrics<S> {
    inner: S,
    metrics: Arc<ServerMetrics>,
}

impl<S> tower::Service<http::Request<Body>> for RpcMetrics<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let rpc = rpc_label(req.uri().path()).to_string();
        let metrics = self.metrics.clone();
        let started = tokio::time::Instant::now();
        Box::pin(async move {
            let result = inner.call(req).await;
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
            Ok(resp.map(|body| {
                Body::new(CountedBody {
                    inner: body,
                    pending: Some((metrics, rpc)),
                })
            }))
        })
    }
}

/// A response body that counts its call when the trailers pass (or when it is dropped early).
struct CountedBody {
    inner: Body,
    /// Taken when the call is counted.
    pending: Option<(Arc<ServerMetrics>, String)>,
}

impl CountedBody {
    fn finish(&mut self, code: &str) {
        if let Some((metrics, rpc)) = self.pending.take() {
            metrics.rpc_finished(&rpc, code);
        }
    }
}

impl Drop for CountedBody {
    fn drop(&mut self) {
        self.finish("Cancelled");
    }
}

impl HttpBody for CountedBody {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(code_name) {
                    this.finish(&code);
                }
            }
            Poll::Ready(Some(Err(status))) => {
                let code = format!("{:?}", status.code());
                this.finish(&code);
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
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
