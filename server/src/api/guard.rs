//! The guard (authentication layer): every gRPC request passes here before it reaches a service.
//!
//! In order, for each request:
//! 1. **Who**: a client certificate verified by the TLS handshake is an agent of the site its
//!    `URI:ota-site:<site>` SAN names (see `crate::tls`); otherwise an `authorization: Bearer
//!    <id>.<secret>` header is an operator token (see `crate::tokens`); otherwise, only in
//!    development mode (plaintext listener and no token ever created), the local administrator,
//!    or the name an `x-ota-dev-actor` header gives (`otactl --as bob`: an administrator named
//!    "bob", so four eyes can be tried without tokens; the header is refused outside development
//!    mode, where only credentials say who calls).
//!    Anything else is `Unauthenticated` with the same message for missing, wrong, expired and
//!    revoked credentials; the reason is logged here, never sent.
//! 2. **Where**: an agent certificate opens `AgentService.Connect` and
//!    `FirmwareService.Download` and nothing else; an agent session needs an agent certificate
//!    (or development mode). An operator needs the role [`required_role`] names for the RPC —
//!    the whole policy in one table, which every handler checks again (`Caller::require`); an
//!    RPC missing from the table needs admin.
//! 3. **How often**: expensive RPCs take a token from the caller's bucket (`crate::rate_limit`);
//!    an empty bucket is `ResourceExhausted` with the wait.
//! 4. **What**: a single-message request is read whole (at most `max_message_bytes`, within
//!    30 s), decoded as its type and checked field by field (`bounds`), so malformed protobuf is
//!    `InvalidArgument` and no handler sees an unbounded string or an unknown enum value.
//!
//! Responses: tonic answers a message it cannot decode with `Internal`; that is rewritten to
//! `InvalidArgument` (it is the client's fault), for the streaming requests decoded in handlers.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, LengthLimitError, Limited};
use tonic::Status;
use tonic::body::Body;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tracing::warn;

use super::bounds;
use super::call_layer::CallHook;
use super::caller::{Caller, Role, UNAUTHENTICATED};
use crate::app::App;
use crate::rate_limit::{Expensive, RateLimiter};
use crate::tokens;

/// How long a single-message request may take to arrive.
pub const REQUEST_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// The development-mode header naming the caller (`otactl --as NAME`).
pub const DEV_ACTOR_HEADER: &str = "x-ota-dev-actor";

const CONNECT: &str = "/ota.v1.AgentService/Connect";
const DOWNLOAD: &str = "/ota.v1.FirmwareService/Download";

/// The least role an operator needs for an RPC. Reading and watching: viewer. Checks, updates
/// and rollouts: operator. Firmware changes, tokens, and anything not listed: admin.
pub fn required_role(path: &str) -> Role {
    match path.strip_prefix("/ota.v1.").unwrap_or_default() {
        "SystemService/Status"
        | "SiteService/List"
        | "SiteService/Get"
        | "DeviceService/List"
        | "DeviceService/Get"
        | "DeviceService/WatchTask"
        | "DeviceService/GetAutoUpgrade"
        | "EventService/Tail"
        | "FirmwareService/List"
        | "FirmwareService/Get"
        | "FirmwareService/Download"
        | "RolloutService/Plan"
        | "RolloutService/Get"
        | "RolloutService/List"
        | "RolloutService/Watch" => Role::Viewer,
        "DeviceService/Check"
        | "DeviceService/BatchCheck"
        | "DeviceService/Update"
        | "DeviceService/Cancel"
        | "DeviceService/ConfirmWarning"
        | "DeviceService/SetAutoUpgrade"
        | "RolloutService/Create"
        | "RolloutService/Start"
        | "RolloutService/Pause"
        | "RolloutService/Resume"
        | "RolloutService/Abort"
        | "RolloutService/Approve"
        | "RolloutService/Deny"
        | "RolloutService/Rollback" => Role::Operator,
        _ => Role::Admin,
    }
}

/// The development-mode caller an `x-ota-dev-actor` header names: an administrator of that
/// name (names follow the token rules; "local" and "otad" are reserved).
fn dev_actor_caller(value: &http::HeaderValue) -> Result<(Caller, String), Status> {
    let name = value.to_str().unwrap_or_default().trim();
    if tokens::validate_name(name).is_err() {
        return Err(Status::invalid_argument(
            "--as (x-ota-dev-actor) needs a name of 1-64 letters, digits, '.', '_', '-' or '@', \
             other than \"local\" and \"otad\"",
        ));
    }
    let key = format!("local:{name}");
    let caller = Caller::Operator {
        name: name.to_string(),
        role: Role::Admin,
    };
    Ok((caller, key))
}

/// What the layer knows.
#[derive(Debug)]
pub struct Guard {
    app: Arc<App>,
    tls: bool,
    limiter: RateLimiter,
}

impl Guard {
    /// The guard of a listener; `tls` says whether it verifies client certificates.
    pub fn new(app: Arc<App>, tls: bool) -> Self {
        let limiter = RateLimiter::new(app.config.rate_limits);
        Self { app, tls, limiter }
    }

    /// Whether requests without credentials are the local administrator right now.
    pub fn development_mode(&self) -> bool {
        !self.tls && !tokens::any_created(&self.app.core.read())
    }

    /// The caller of a request, and the key of its rate-limit buckets.
    fn identify(&self, req: &http::Request<Body>, peer: &str) -> Result<(Caller, String), Status> {
        let dev_actor = req.headers().get(DEV_ACTOR_HEADER);
        if dev_actor.is_some() && !self.development_mode() {
            return Err(Status::invalid_argument(
                "--as (x-ota-dev-actor) names the caller only in development mode; here your \
                 token or certificate says who you are",
            ));
        }
        let certs = req
            .extensions()
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .and_then(|i| i.peer_certs());
        if let Some(leaf) = certs.as_ref().and_then(|c| c.first()) {
            return match crate::tls::site_of_certificate(leaf) {
                Ok(site_id) => Ok((
                    Caller::Agent {
                        site_id: site_id.clone(),
                    },
                    format!("agent:{site_id}"),
                )),
                Err(e) => {
                    warn!(%peer, error = %e, "client certificate refused");
                    Err(Status::unauthenticated(UNAUTHENTICATED))
                }
            };
        }
        if let Some(value) = req.headers().get(http::header::AUTHORIZATION) {
            let bearer = value
                .to_str()
                .ok()
                .and_then(|v| {
                    v.strip_prefix("Bearer ")
                        .or_else(|| v.strip_prefix("bearer "))
                })
                .map(str::trim)
                .unwrap_or_default();
            let found = tokens::verify(&self.app.core.read(), bearer, self.app.now());
            return match found {
                Some((id, name, role)) => Ok((Caller::Operator { name, role }, id)),
                None => {
                    // Only the public id, and only when the value has the shape of a token.
                    let id = bearer
                        .split_once('.')
                        .map(|(id, _)| id)
                        .filter(|id| {
                            id.len() == 20
                                && id.starts_with(tokens::ID_PREFIX)
                                && id[4..].bytes().all(|b| b.is_ascii_hexdigit())
                        })
                        .unwrap_or("(not a token)");
                    warn!(%peer, token.id = id, "unknown, wrong, expired or revoked token refused");
                    Err(Status::unauthenticated(UNAUTHENTICATED))
                }
            };
        }
        if self.development_mode() {
            return match dev_actor {
                None => Ok((Caller::local_admin(), "local".into())),
                Some(value) => dev_actor_caller(value),
            };
        }
        Err(Status::unauthenticated(UNAUTHENTICATED))
    }

    /// Everything before the handler; the request to pass on, or the answer.
    async fn admit(&self, mut req: http::Request<Body>) -> Result<http::Request<Body>, Status> {
        let path = req.uri().path().to_string();
        let peer = peer_of(&req);
        let (caller, key) = self.identify(&req, &peer)?;
        match (&caller, path.as_str()) {
            (Caller::Agent { .. }, CONNECT | DOWNLOAD) => {}
            (Caller::Agent { site_id }, _) => {
                // Any path a client sends, so quoted.
                warn!(%peer, site.id = %site_id, rpc = %crate::quote::quote(&path), "an agent certificate was used for an operator call");
                return Err(Status::permission_denied(
                    "agent credentials cannot call this",
                ));
            }
            (_, CONNECT) if !caller.is_local_admin() => {
                return Err(Status::permission_denied(
                    "agent sessions need an agent certificate",
                ));
            }
            (_, CONNECT) => {}
            _ => caller.require(required_role(&path))?,
        }
        if let Some(rpc) = Expensive::of_path(&path)
            && let Err(wait) = self.limiter.take(&key, rpc, tokio::time::Instant::now())
        {
            let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
            warn!(%peer, actor = %caller.actor().label(), rpc = %path, "rate limit hit");
            return Err(Status::resource_exhausted(format!(
                "too many requests of this kind; try again in {secs}s"
            )));
        }
        req.extensions_mut().insert(caller);
        if bounds::check(&path, &[]).is_none() {
            // Streaming requests and unknown paths: checked by their handler (or unimplemented).
            return Ok(req);
        }
        let (parts, body) = req.into_parts();
        let max = self.app.config.max_message_bytes;
        let collected =
            tokio::time::timeout(REQUEST_READ_TIMEOUT, Limited::new(body, max + 5).collect())
                .await
                .map_err(|_| Status::deadline_exceeded("the request did not arrive within 30 s"))?
                .map_err(|e| {
                    if e.is::<LengthLimitError>() {
                        Status::resource_exhausted(format!(
                            "the request is larger than {max} bytes (otad max_message_bytes)"
                        ))
                    } else {
                        Status::invalid_argument("the request broke off")
                    }
                })?;
        let bytes = collected.to_bytes();
        let message = grpc_message(&bytes)?;
        if let Some(Err(e)) = bounds::check(&path, message) {
            return Err(e.into());
        }
        Ok(http::Request::from_parts(
            parts,
            Body::new(Full::new(bytes)),
        ))
    }
}

/// The one uncompressed message of a gRPC request body.
fn grpc_message(body: &Bytes) -> Result<&[u8], Status> {
    if body.len() < 5 {
        return Err(Status::invalid_argument(
            "malformed request: no gRPC message",
        ));
    }
    if body[0] != 0 {
        return Err(Status::invalid_argument(
            "compressed requests are not accepted",
        ));
    }
    let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
    if body.len() - 5 != len {
        return Err(Status::invalid_argument(
            "malformed request: expected exactly one gRPC message",
        ));
    }
    Ok(&body[5..])
}

fn peer_of(req: &http::Request<Body>) -> String {
    let ext = req.extensions();
    ext.get::<TlsConnectInfo<TcpConnectInfo>>()
        .and_then(|i| i.get_ref().remote_addr())
        .or_else(|| ext.get::<TcpConnectInfo>().and_then(|i| i.remote_addr()))
        .map(|a| a.to_string())
        .unwrap_or_default()
}

/// tonic's `Internal` for an undecodable message, as `InvalidArgument`.
fn map_decode_error(mut resp: http::Response<Body>) -> http::Response<Body> {
    let Some(status) = Status::from_header_map(resp.headers()) else {
        return resp;
    };
    if status.code() != tonic::Code::Internal
        || !status
            .message()
            .starts_with("failed to decode Protobuf message")
    {
        return resp;
    }
    let replaced = Status::invalid_argument(format!("malformed request: {}", status.message()));
    let headers = resp.headers_mut();
    headers.remove("grpc-status");
    headers.remove("grpc-message");
    headers.remove("grpc-status-details-bin");
    if replaced.add_header(headers).is_err() {
        return Status::invalid_argument("malformed request").into_http();
    }
    resp
}

impl CallHook for Guard {
    type State = ();

    async fn before(
        self: Arc<Self>,
        req: http::Request<Body>,
    ) -> Result<(http::Request<Body>, ()), http::Response<Body>> {
        match self.admit(req).await {
            Ok(req) => Ok((req, ())),
            Err(status) => Err(status.into_http()),
        }
    }

    fn after<E>(
        &self,
        (): (),
        result: Result<http::Response<Body>, E>,
    ) -> Result<http::Response<Body>, E> {
        result.map(map_decode_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_role_table_is_closed_by_default() {
        assert_eq!(required_role("/ota.v1.EventService/Tail"), Role::Viewer);
        assert_eq!(
            required_role("/ota.v1.RolloutService/Start"),
            Role::Operator
        );
        assert_eq!(required_role("/ota.v1.FirmwareService/Upload"), Role::Admin);
        assert_eq!(
            required_role("/ota.v1.AccessService/ListTokens"),
            Role::Admin
        );
        assert_eq!(required_role("/ota.v1.NewService/Anything"), Role::Admin);
        assert_eq!(required_role("/elsewhere"), Role::Admin);
    }

    #[test]
    fn frames_are_checked() {
        assert!(grpc_message(&Bytes::from_static(&[0, 0, 0, 0, 0])).is_ok());
        assert_eq!(
            grpc_message(&Bytes::from_static(&[0, 0, 0, 0, 2, 8, 1])).unwrap(),
            &[8, 1]
        );
        for bad in [&[][..], &[0, 0, 0], &[1, 0, 0, 0, 0], &[0, 0, 0, 0, 3, 1]] {
            let s = grpc_message(&Bytes::copy_from_slice(bad)).unwrap_err();
            assert_eq!(s.code(), tonic::Code::InvalidArgument, "{bad:?}");
        }
    }

    #[test]
    fn decode_errors_become_invalid_argument() {
        let resp: http::Response<Body> =
            Status::internal("failed to decode Protobuf message: invalid wire type").into_http();
        let mapped = map_decode_error(resp);
        let s = Status::from_header_map(mapped.headers()).unwrap();
        assert_eq!(s.code(), tonic::Code::InvalidArgument);
        assert!(s.message().contains("invalid wire type"));
        let other: http::Response<Body> = Status::internal("disk on fire").into_http();
        let s = Status::from_header_map(map_decode_error(other).headers()).unwrap();
        assert_eq!(s.code(), tonic::Code::Internal);
    }
}
