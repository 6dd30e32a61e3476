//! The tower plumbing every per-call layer of the API shares, written once: [`CallLayer`] wraps
//! the services in a [`CallHook`] (tracing, metrics, the guard are each only their hook), and
//! [`WatchedBody`] passes a response body through while it tells a [`BodyWatch`] the call's final
//! gRPC status.
//!
//! It decides nothing itself: what happens before and after the inner service, and what a status
//! means, is the hook's. It does not read or change request or response bodies.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http_body::Frame;
use tonic::body::Body;
use tonic::codegen::Body as HttpBody;
use tracing::{Instrument, Span};

/// What one layer does around each call.
pub trait CallHook: Send + Sync + 'static {
    /// What [`before`](Self::before) hands to [`after`](Self::after) (a start time, a span).
    type State: Send + 'static;

    /// Runs before the inner service: the request to pass on with the call's state, or the
    /// answer that takes the inner service's place (the inner service is then not called).
    fn before(
        self: Arc<Self>,
        req: http::Request<Body>,
    ) -> impl Future<Output = Result<(http::Request<Body>, Self::State), http::Response<Body>>> + Send;

    /// The span the inner service runs in (none by default).
    fn span(&self, _state: &Self::State) -> Option<Span> {
        None
    }

    /// Runs with the inner service's result; what it returns is the call's result.
    fn after<E>(
        &self,
        state: Self::State,
        result: Result<http::Response<Body>, E>,
    ) -> Result<http::Response<Body>, E>;
}

/// The layer of a hook, for `tonic::transport::Server::layer`.
#[derive(Debug)]
pub struct CallLayer<H>(Arc<H>);

impl<H> CallLayer<H> {
    /// The layer of `hook`.
    pub fn new(hook: H) -> Self {
        Self(Arc::new(hook))
    }
}

impl<H> Clone for CallLayer<H> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<S, H> tower::Layer<S> for CallLayer<H> {
    type Service = CallService<S, H>;

    fn layer(&self, inner: S) -> CallService<S, H> {
        CallService {
            inner,
            hook: self.0.clone(),
        }
    }
}

/// The layer's service.
#[derive(Debug)]
pub struct CallService<S, H> {
    inner: S,
    hook: Arc<H>,
}

impl<S: Clone, H> Clone for CallService<S, H> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            hook: self.hook.clone(),
        }
    }
}

impl<S, H> tower::Service<http::Request<Body>> for CallService<S, H>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    H: CallHook,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        // The clone that was polled ready goes into the future; a fresh clone stays.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let hook = self.hook.clone();
        Box::pin(async move {
            let (req, state) = match hook.clone().before(req).await {
                Ok(passed) => passed,
                Err(answer) => return Ok(answer),
            };
            let result = match hook.span(&state) {
                Some(span) => inner.call(req).instrument(span).await,
                None => inner.call(req).await,
            };
            hook.after(state, result)
        })
    }
}

/// The gRPC status code in `grpc-status` of headers or trailers, if there is one.
pub fn grpc_status(headers: &http::HeaderMap) -> Option<i32> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
}

/// What a [`WatchedBody`] tells.
pub trait BodyWatch: Send + Unpin + 'static {
    /// The call's gRPC status code, at most once: from the trailers, or from the error that
    /// ended the body. A body dropped before either tells nothing (the watch is dropped with it).
    fn status(&mut self, code: i32);
}

/// A response body passed through unchanged, in a span, telling its watch the final status.
#[derive(Debug)]
pub struct WatchedBody<W> {
    inner: Body,
    /// Entered while the body is polled.
    span: Span,
    watch: W,
    /// Whether the status was told (or came with the headers).
    told: bool,
}

impl<W: BodyWatch> WatchedBody<W> {
    /// `body` watched by `watch`; `told` when the status came with the headers already.
    pub fn wrap(body: Body, span: Span, watch: W, told: bool) -> Body {
        Body::new(Self {
            inner: body,
            span,
            watch,
            told,
        })
    }
}

impl<W: BodyWatch> HttpBody for WatchedBody<W> {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let _enter = this.span.enter();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if this.told {
            return polled;
        }
        let code = match &polled {
            Poll::Ready(Some(Ok(frame))) => frame.trailers_ref().and_then(grpc_status),
            Poll::Ready(Some(Err(status))) => Some(status.code() as i32),
            _ => None,
        };
        if let Some(code) = code {
            this.watch.status(code);
            this.told = true;
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
        let mut h = http::HeaderMap::new();
        assert_eq!(grpc_status(&h), None);
        h.insert("grpc-status", http::HeaderValue::from_static("5"));
        assert_eq!(grpc_status(&h), Some(5));
        h.insert("grpc-status", http::HeaderValue::from_static("five"));
        assert_eq!(grpc_status(&h), None);
    }
}
