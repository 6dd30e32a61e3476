//! The connection to otad: channel (with TLS for https), the bearer-token interceptor, request
//! deadlines, and the mapping from gRPC errors to one line a person can act on.
//!
//! Connection settings are resolved (and checked) before anything is dialled; the channel is
//! built eagerly with a short connect timeout so an absent server fails fast with a hint.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use ota_proto::v1 as pb;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Request, Response, Status};

use crate::cli::GlobalArgs;

/// Deadline of unary requests when `--timeout` is not given.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long to try to open the connection at most.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest message otactl accepts from otad (firmware chunks are at most 1 MiB).
const MAX_DECODING_BYTES: usize = 16 * 1024 * 1024;

/// Resolved connection settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The server URL as the user gave it (for messages).
    pub server: String,
    /// `authorization` header value, if a token was given.
    auth: Option<MetadataValue<Ascii>>,
    /// `x-ota-dev-actor` header value, if `--as` was given.
    dev_actor: Option<MetadataValue<Ascii>>,
    /// CA certificate file for https.
    ca_cert: Option<PathBuf>,
    /// `--timeout`, if given.
    pub timeout: Option<Duration>,
    /// The command being run ("rollout list"), for messages.
    pub command: String,
}

impl Settings {
    /// Checks the global flags: a http(s) URL, a token that fits in a header.
    pub fn resolve(g: &GlobalArgs) -> anyhow::Result<Self> {
        let server = g.server.trim().trim_end_matches('/').to_string();
        let scheme_ok = server.starts_with("http://") || server.starts_with("https://");
        if !scheme_ok {
            anyhow::bail!(
                "--server {server:?} is not a URL: expected http://HOST:PORT or https://HOST:PORT"
            );
        }
        Endpoint::from_shared(server.clone())
            .map_err(|_| anyhow::anyhow!("--server {server:?} is not a valid URL"))?;
        let auth = match g.token.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(t) => Some(
                format!("Bearer {t}")
                    .parse::<MetadataValue<Ascii>>()
                    .map_err(|_| {
                        anyhow::anyhow!("--token contains characters that cannot be sent")
                    })?,
            ),
        };
        let dev_actor = match g.dev_actor.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(name) => Some(name.parse::<MetadataValue<Ascii>>().map_err(|_| {
                anyhow::anyhow!("--as needs a name of letters, digits, '.', '_', '-' or '@'")
            })?),
        };
        if g.ca_cert.is_some() && !server.starts_with("https://") {
            anyhow::bail!("--ca-cert is only used with an https:// server (got {server})");
        }
        Ok(Self {
            server,
            auth,
            dev_actor,
            ca_cert: g.ca_cert.clone(),
            timeout: g.timeout,
            command: String::new(),
        })
    }

    /// Whether a token will be sent.
    pub fn has_token(&self) -> bool {
        self.auth.is_some()
    }

    /// Deadline of a unary request.
    pub fn request_timeout(&self) -> Duration {
        self.timeout.unwrap_or(DEFAULT_REQUEST_TIMEOUT)
    }
}

/// Adds `authorization: Bearer <token>` (and, with `--as`, `x-ota-dev-actor`) to every request.
#[derive(Debug, Clone)]
pub struct Auth {
    bearer: Option<MetadataValue<Ascii>>,
    dev_actor: Option<MetadataValue<Ascii>>,
}

impl Auth {
    /// The headers `settings` asks for.
    pub fn of(settings: &Settings) -> Self {
        Self {
            bearer: settings.auth.clone(),
            dev_actor: settings.dev_actor.clone(),
        }
    }
}

impl Interceptor for Auth {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.bearer {
            req.metadata_mut().insert("authorization", v.clone());
        }
        if let Some(v) = &self.dev_actor {
            req.metadata_mut().insert("x-ota-dev-actor", v.clone());
        }
        Ok(req)
    }
}

/// The channel type every client uses.
pub type Svc = InterceptedService<Channel, Auth>;

/// A connected otad.
#[derive(Debug, Clone)]
pub struct Api {
    channel: Channel,
    settings: Settings,
}

macro_rules! client {
    ($(#[$doc:meta])* $fn:ident, $module:ident :: $ty:ident) => {
        $(#[$doc])*
        pub fn $fn(&self) -> pb::$module::$ty<Svc> {
            pb::$module::$ty::with_interceptor(self.channel.clone(), Auth::of(&self.settings))
                .max_decoding_message_size(MAX_DECODING_BYTES)
        }
    };
}

impl Api {
    /// Opens the connection.
    pub async fn connect(settings: &Settings) -> anyhow::Result<Self> {
        let connect_timeout = settings
            .timeout
            .map_or(CONNECT_TIMEOUT, |t| t.min(CONNECT_TIMEOUT));
        let mut endpoint = Endpoint::from_shared(settings.server.clone())
            .with_context(|| format!("--server {:?} is not a valid URL", settings.server))?
            .connect_timeout(connect_timeout)
            .tcp_nodelay(true)
            // Long watches and follows notice a dead connection instead of hanging.
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true);
        if settings.server.starts_with("https://") {
            let mut tls = ClientTlsConfig::new();
            tls = match &settings.ca_cert {
                Some(path) => {
                    let pem = std::fs::read(path).with_context(|| {
                        format!("cannot read the CA certificate {}", path.display())
                    })?;
                    tls.ca_certificate(Certificate::from_pem(pem))
                }
                None => tls.with_enabled_roots(),
            };
            endpoint = endpoint
                .tls_config(tls)
                .map_err(|e| anyhow::anyhow!("cannot set up TLS: {}", error_chain(&e)))?;
        }
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| ApiError::unreachable(&settings.server, &error_chain(&e)))?;
        Ok(Self {
            channel,
            settings: settings.clone(),
        })
    }

    /// The settings this connection was made with.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    client!(
        /// FirmwareService.
        firmware,
        firmware_service_client::FirmwareServiceClient
    );
    client!(
        /// DeviceService.
        device,
        device_service_client::DeviceServiceClient
    );
    client!(
        /// RolloutService.
        rollout,
        rollout_service_client::RolloutServiceClient
    );
    client!(
        /// EventService.
        events,
        event_service_client::EventServiceClient
    );
    client!(
        /// SystemService.
        system,
        system_service_client::SystemServiceClient
    );
    client!(
        /// SiteService.
        site,
        site_service_client::SiteServiceClient
    );
    client!(
        /// AccessService.
        access,
        access_service_client::AccessServiceClient
    );

    /// A unary request with the default deadline.
    pub fn unary<T>(&self, msg: T) -> Request<T> {
        self.with_deadline(msg, self.settings.request_timeout())
    }

    /// A request with this deadline.
    pub fn with_deadline<T>(&self, msg: T, deadline: Duration) -> Request<T> {
        let mut req = Request::new(msg);
        req.set_timeout(deadline);
        req
    }

    /// A streaming request: no deadline (progress is visible; Ctrl-C stops).
    pub fn streaming<T>(&self, msg: T) -> Request<T> {
        Request::new(msg)
    }

    /// Awaits a call and maps its error.
    pub async fn call<R>(
        &self,
        fut: impl Future<Output = Result<Response<R>, Status>>,
    ) -> Result<R, ApiError> {
        fut.await
            .map(Response::into_inner)
            .map_err(|s| self.error(&s))
    }

    /// Maps a status from a call or a stream.
    pub fn error(&self, status: &Status) -> ApiError {
        ApiError::from_status(status, &self.settings)
    }
}

/// An error from otad or from the connection, worded for a person. Always exit code 2.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    /// The gRPC code (`Unavailable` for connection problems).
    pub code: Code,
    /// The line to show.
    pub message: String,
}

impl ApiError {
    /// The server could not be reached.
    pub fn unreachable(server: &str, cause: &str) -> Self {
        let mut message = format!(
            "cannot reach otad at {server}: is it running? (set --server or OTACTL_SERVER)"
        );
        if !cause.is_empty() {
            message.push_str(" [");
            message.push_str(cause);
            message.push(']');
        }
        Self {
            code: Code::Unavailable,
            message,
        }
    }

    /// Maps a gRPC status.
    pub fn from_status(status: &Status, settings: &Settings) -> Self {
        // A status tonic made up on the client side (connection refused, reset, TLS) carries
        // the transport error as its source; one from the server does not.
        let local = std::error::Error::source(status).is_some();
        describe(status.code(), status.message(), local, settings)
    }
}

/// The wording of each gRPC code; pure so it can be tested.
pub fn describe(code: Code, message: &str, local: bool, settings: &Settings) -> ApiError {
    let server = settings.server.as_str();
    let has_token = settings.has_token();
    let timeout = settings.request_timeout();
    let what = if settings.command.is_empty() {
        "this request".to_string()
    } else {
        format!("`otactl {}`", settings.command)
    };
    let msg = one_line(message);
    let text = match code {
        Code::Unavailable if local || msg.is_empty() => {
            return ApiError::unreachable(server, &msg);
        }
        Code::Unavailable => format!("otad is unavailable: {msg}"),
        Code::DeadlineExceeded => format!(
            "otad did not answer within {} (raise --timeout){}",
            humantime::format_duration(timeout),
            suffix(&msg)
        ),
        Code::Unauthenticated if !has_token => format!(
            "otad requires a token: set --token or OTACTL_TOKEN (an admin creates one with \
             `otactl token create`){}",
            suffix(&msg)
        ),
        Code::Unauthenticated => format!(
            "otad did not accept the token{}: check --token / OTACTL_TOKEN (expired or revoked?)",
            suffix(&msg)
        ),
        // Four eyes: the role is fine, the person is not; the server's message says so.
        Code::PermissionDenied if msg.contains("(four eyes)") => msg.to_string(),
        Code::PermissionDenied => format!(
            "permission denied{}: this needs a token with a higher role (viewer < operator < admin)",
            suffix(&msg)
        ),
        Code::NotFound
        | Code::InvalidArgument
        | Code::FailedPrecondition
        | Code::AlreadyExists
        | Code::OutOfRange
        | Code::ResourceExhausted
        | Code::Aborted
            if !msg.is_empty() =>
        {
            msg
        }
        Code::NotFound => "not found".to_string(),
        Code::Unimplemented => format!(
            "otad at {server} does not support {what} yet (is otactl newer than the server?){}",
            suffix(&msg)
        ),
        Code::Cancelled => format!("the request was cancelled{}", suffix(&msg)),
        _ => format!("otad failed ({}){}", code_name(code), suffix(&msg)),
    };
    ApiError {
        code,
        message: text,
    }
}

fn suffix(msg: &str) -> String {
    if msg.is_empty() {
        String::new()
    } else {
        format!(": {msg}")
    }
}

fn code_name(code: Code) -> String {
    format!("{code:?}")
        .chars()
        .flat_map(|c| {
            if c.is_ascii_uppercase() {
                vec![' ', c.to_ascii_lowercase()]
            } else {
                vec![c]
            }
        })
        .collect::<String>()
        .trim()
        .to_string()
}

/// Collapses whitespace runs (including newlines) so a message stays on one line.
pub fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// An error and its sources, joined with ": ", skipping repeats.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        let s = one_line(&err.to_string());
        if !s.is_empty() && !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
        cur = err.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::OutputFormat;

    const URL: &str = "http://127.0.0.1:7600";

    fn settings(token: bool) -> Settings {
        Settings {
            server: URL.into(),
            auth: token.then(|| "Bearer t".parse().unwrap()),
            dev_actor: None,
            ca_cert: None,
            timeout: None,
            command: String::new(),
        }
    }

    fn d(code: Code, msg: &str) -> String {
        describe(code, msg, false, &settings(true)).message
    }

    #[test]
    fn unreachable_server_says_what_to_do() {
        let e = describe(
            Code::Unavailable,
            "tcp connect error",
            true,
            &settings(false),
        );
        assert_eq!(
            e.message,
            "cannot reach otad at http://127.0.0.1:7600: is it running? (set --server or \
             OTACTL_SERVER) [tcp connect error]"
        );
        assert_eq!(
            ApiError::unreachable(URL, "").message,
            "cannot reach otad at http://127.0.0.1:7600: is it running? (set --server or \
             OTACTL_SERVER)"
        );
        assert_eq!(
            d(Code::Unavailable, "site home is disconnected"),
            "otad is unavailable: site home is disconnected"
        );
    }

    #[test]
    fn server_messages_are_verbatim() {
        for code in [
            Code::NotFound,
            Code::InvalidArgument,
            Code::FailedPrecondition,
            Code::AlreadyExists,
        ] {
            assert_eq!(
                d(code, "firmware fw-12 is used by rollout ro-1"),
                "firmware fw-12 is used by rollout ro-1"
            );
        }
        assert_eq!(
            d(Code::InvalidArgument, "line one\nline two"),
            "line one line two"
        );
        assert_eq!(d(Code::NotFound, ""), "not found");
    }

    #[test]
    fn auth_errors_point_at_the_token() {
        let no_token = describe(
            Code::Unauthenticated,
            "missing bearer token",
            false,
            &settings(false),
        );
        assert!(
            no_token
                .message
                .starts_with("otad requires a token: set --token or OTACTL_TOKEN")
        );
        assert_eq!(
            d(Code::Unauthenticated, "token revoked"),
            "otad did not accept the token: token revoked: check --token / OTACTL_TOKEN \
             (expired or revoked?)"
        );
        assert_eq!(
            d(Code::PermissionDenied, "role viewer cannot upload firmware"),
            "permission denied: role viewer cannot upload firmware: this needs a token with a \
             higher role (viewer < operator < admin)"
        );
    }

    #[test]
    fn other_codes() {
        assert_eq!(
            d(Code::DeadlineExceeded, ""),
            "otad did not answer within 30s (raise --timeout)"
        );
        assert!(d(Code::Unimplemented, "").contains("does not support this request yet"));
        let mut s = settings(true);
        s.command = "rollout list".into();
        assert_eq!(
            describe(Code::Unimplemented, "", false, &s).message,
            "otad at http://127.0.0.1:7600 does not support `otactl rollout list` yet (is \
             otactl newer than the server?)"
        );
        assert_eq!(
            d(Code::Internal, "disk full"),
            "otad failed (internal): disk full"
        );
        assert_eq!(d(Code::DataLoss, ""), "otad failed (data loss)");
    }

    fn globals(server: &str, token: Option<&str>) -> GlobalArgs {
        GlobalArgs {
            server: server.into(),
            token: token.map(Into::into),
            dev_actor: None,
            ca_cert: None,
            output: OutputFormat::Table,
            timeout: None,
        }
    }

    #[test]
    fn settings_check_the_url_and_token() {
        let s = Settings::resolve(&globals("http://h:7600/", Some("abc"))).unwrap();
        assert_eq!(s.server, "http://h:7600");
        assert!(s.has_token());
        assert_eq!(s.request_timeout(), DEFAULT_REQUEST_TIMEOUT);
        let e = Settings::resolve(&globals("h:7600", None)).unwrap_err();
        assert!(e.to_string().contains("expected http://HOST:PORT"), "{e}");
        assert!(Settings::resolve(&globals("http://h", Some("bad\ntoken"))).is_err());
        let mut g = globals("http://h", None);
        g.ca_cert = Some("ca.pem".into());
        assert!(Settings::resolve(&g).is_err());
        assert!(
            !Settings::resolve(&globals("http://h", Some(" ")))
                .unwrap()
                .has_token()
        );
    }

    #[test]
    fn the_interceptor_sends_a_bearer_token() {
        let s = Settings::resolve(&globals("http://h", Some("tok-1.secret"))).unwrap();
        let mut auth = Auth::of(&s);
        let req = auth.call(Request::new(())).unwrap();
        assert_eq!(
            req.metadata().get("authorization").unwrap(),
            "Bearer tok-1.secret"
        );
        assert!(req.metadata().get("x-ota-dev-actor").is_none());
        let mut g = globals("http://h", None);
        g.dev_actor = Some(" bob ".into());
        let mut as_bob = Auth::of(&Settings::resolve(&g).unwrap());
        let req = as_bob.call(Request::new(())).unwrap();
        assert!(req.metadata().get("authorization").is_none());
        assert_eq!(req.metadata().get("x-ota-dev-actor").unwrap(), "bob");
        g.dev_actor = Some("b\nob".into());
        assert!(Settings::resolve(&g).is_err());
    }

    #[tokio::test]
    async fn https_reads_the_ca_certificate_first() {
        let mut g = globals("https://ota.example.invalid:7600", None);
        g.ca_cert = Some("/nonexistent/ca.pem".into());
        let s = Settings::resolve(&g).unwrap();
        let err = Api::connect(&s).await.unwrap_err();
        assert!(
            format!("{err:#}").starts_with("cannot read the CA certificate /nonexistent/ca.pem"),
            "{err:#}"
        );
    }

    #[tokio::test]
    async fn an_absent_server_fails_fast_with_the_hint() {
        // Bind and drop a listener to find a port nobody listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let s = Settings::resolve(&globals(&format!("http://127.0.0.1:{port}"), None)).unwrap();
        let err = Api::connect(&s).await.unwrap_err();
        let api = err.downcast_ref::<ApiError>().expect("an ApiError");
        assert_eq!(api.code, Code::Unavailable);
        assert!(
            api.message.starts_with(&format!(
                "cannot reach otad at http://127.0.0.1:{port}: is it running?"
            )),
            "{}",
            api.message
        );
    }
}
