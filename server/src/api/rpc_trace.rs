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

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http_body::Frame;
use tonic::body::Body;
use tonic::codegen::Body as HttpBody;
use tracing::{Instrument, Span, field};

/// The layer, for `tonic::transport::Server::layer`.
#[derive(Debug, Clone, Copy, Default)]
pub struct RpcTraceLayer;

impl<S> tower::Layer<S> for RpcTraceLayer {
    type Service = RpcTrace<S>;

    fn layer(&self, inner: S) -> RpcTrace<S> {
        RpcTrace { inner }
    }
}

/// The layer's service.
#[derive(Debug, Clone)]
pub struct RpcTrace<S> {
    inner: S,
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

fn record_status(span: &Span, headers: &http::HeaderMap) -> bool {
    let Some(code) = headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
    else {
        return false;
    };
    span.record("rpc.grpc.status_code", code);
    span.record("otel.status_code", if code == 0 { "ok" } else { "error" });
    true
}

impl<S> tower::Service<http::Request<Body>> for RpcTrace<S>
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
        let span = rpc_span(req.uri().path());
        ota_telemetry::traces::set_parent(
            &span,
            ota_telemetry::traces::extract_headers(req.headers()),
        );
        let call_span = span.clone();
        Box::pin(
            async move {
                let resp = inner.call(req).await?;
                // A trailers-only answer (every error tonic or a layer returns) has its status
                // in the headers; otherwise it comes with the trailers at the end of the body.
                let done = record_status(&span, resp.headers());
                Ok(resp.map(|body| {
                    Body::new(TracedBody {
                        inner: body,
                        span,
                        done,
                    })
                }))
            }
            .instrument(call_span),
        )
    }
}

/// A response body that keeps the call's span open until it ends and records the final status.
struct TracedBody {
    inner: Body,
    span: Span,
    done: bool,
}

impl HttpBody for TracedBody {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let _enter = this.span.enter();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref()
                    && !this.done
                {
                    this.done = record_status(&this.span, trailers);
                }
            }
            Poll::Ready(Some(Err(status))) if !this.done => {
                this.span
                    .record("rpc.grpc.status_code", status.code() as i32);
                this.span.record("otel.status_code", "error");
                this.done = true;
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
    fn status_comes_from_headers_or_not_at_all() {
        let span = Span::none();
        let mut h = http::HeaderMap::new();
        assert!(!record_status(&span, &h));
        h.insert("grpc-status", http::HeaderValue::from_static("5"));
        assert!(record_status(&span, &h));
        h.insert("grpc-status", http::HeaderValue::from_static("five"));
        assert!(!record_status(&span, &h));
    }
}
