//! The tracing layer: one span per gRPC call, outermost, in front of the authentication layer.
//!
//! The span is named after the RPC (`otel.name = "ota.v1.FirmwareService/Download"`) and carries
//! `rpc.system`, `rpc.service`, `rpc.method` and, when the call ends, `rpc.grpc.status_code`
//! (and an error status for anything but OK). It continues the caller's trace when the request
//! carries a W3C `traceparent` (otactl, an agent's firmware download), so a caller's trace shows
//! otad's side of the call; otherwise it starts a new one.
//!
//! The span lives until the response body ends, so a streaming call (a firmware download, an
//! agent session, a tail) is measured to its last message, and the status that arrives in the
//! trailers is the one recorded. Handlers add their own child spans with OTA attributes
//! (`device.id`, `firmware.id`, ...). Nothing from the request body or the credentials goes into
//! the span.

use std::sync::Arc;

use tonic::body::Body;
use tracing::{Span, field};

use super::call_layer::{BodyWatch, CallHook, CallLayer, WatchedBody, grpc_status};

/// The tracing hook, for a [`CallLayer`].
#[derive(Debug, Clone, Copy, Default)]
pub struct RpcTrace;

impl RpcTrace {
    /// The layer.
    pub fn layer() -> CallLayer<Self> {
        CallLayer::new(Self)
    }
}

/// The span of one call to `path` (`/ota.v1.DeviceService/Update`).
pub fn rpc_span(path: &str) -> Span {
    let full = path.trim_start_matches('/');
    let (service, method) = full.split_once('/').unwrap_or((full, ""));
    tracing::info_span!(
        parent: None,
        "grpc",
        otel.name = %full,
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.service = %service,
        rpc.method = %method,
        rpc.grpc.status_code = field::Empty,
        otel.status_code = field::Empty,
    )
}

fn record_status(span: &Span, code: i32) {
    span.record("rpc.grpc.status_code", code);
    span.record("otel.status_code", if code == 0 { "ok" } else { "error" });
}

impl CallHook for RpcTrace {
    /// The call's span.
    type State = Span;

    async fn before(
        self: Arc<Self>,
        req: http::Request<Body>,
    ) -> Result<(http::Request<Body>, Span), http::Response<Body>> {
        let span = rpc_span(req.uri().path());
        ota_telemetry::traces::set_parent(
            &span,
            ota_telemetry::traces::extract_headers(req.headers()),
        );
        Ok((req, span))
    }

    fn span(&self, span: &Span) -> Option<Span> {
        Some(span.clone())
    }

    fn after<E>(
        &self,
        span: Span,
        result: Result<http::Response<Body>, E>,
    ) -> Result<http::Response<Body>, E> {
        let resp = result?;
        // A trailers-only answer (every error tonic or a layer returns) has its status in the
        // headers; otherwise it comes with the trailers at the end of the body. The span lives
        // until the body ends.
        let code = grpc_status(resp.headers());
        if let Some(code) = code {
            record_status(&span, code);
        }
        let watch = Record(span.clone());
        Ok(resp.map(|body| WatchedBody::wrap(body, span, watch, code.is_some())))
    }
}

/// Records the final status on the call's span.
#[derive(Debug)]
struct Record(Span);

impl BodyWatch for Record {
    fn status(&mut self, code: i32) {
        record_status(&self.0, code);
    }
}
