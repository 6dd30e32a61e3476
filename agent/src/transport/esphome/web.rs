//! The web_server `/update` fallback: what `esphome.web_server_ota` does, with hyper.
//!
//! What it does: one `POST /update` with a `multipart/form-data` body (one file part, field
//! `update`, filename `firmware.bin`) of known length, HTTP Basic auth when a username and a
//! password are configured, `Connection: close`; a connect timeout (ESPHome: 20 s) and a read
//! timeout (ESPHome: 120 s) that bounds every stall while the body goes out and the wait for the
//! answer; progress by body bytes handed to the socket. Success means HTTP 200 with a body
//! containing "Successful" (the device answers 200 `Update Failed!` when it refused the image);
//! 401 is an authentication failure.
//! What it does not do: digest auth, redirects, TLS, retries or status codes (that is `super`).

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::header;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::{Instant, sleep_until, timeout};
use tokio_util::sync::CancellationToken;

use crate::secret::Secret;
use crate::sync::LockExt;

/// The form field ESPHome's client uses (the device does not check it).
pub const FORM_FIELD: &str = "update";

/// Body piece size: what one progress step covers.
const PIECE: usize = 8192;

/// Where and how to upload.
#[derive(Debug, Clone)]
pub struct WebTarget<'a> {
    /// Host name or address.
    pub host: &'a str,
    /// web_server port.
    pub port: u16,
    /// Basic auth user.
    pub username: Option<&'a str>,
    /// Basic auth password.
    pub password: Option<&'a Secret>,
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// Longest stall while sending, and longest wait for the answer.
    pub read_timeout: Duration,
}

/// Why an upload did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum WebError {
    /// The TCP connection could not be made.
    #[error("could not connect: {0}")]
    Connect(#[source] io::Error),
    /// Connecting took longer than the connect timeout.
    #[error("no TCP answer within {0:?}")]
    ConnectTimeout(Duration),
    /// Cancelled before anything was sent.
    #[error("cancelled before anything was sent")]
    Cancelled,
    /// HTTP 401.
    #[error("HTTP 401: the web_server refused the credentials")]
    Unauthorized,
    /// Another HTTP status.
    #[error("HTTP {status} from the web_server: {body}")]
    Status {
        /// The status.
        status: u16,
        /// The body, trimmed and shortened.
        body: String,
    },
    /// HTTP 200 without "Successful": the device refused the image.
    #[error("the device answered {0:?}")]
    Refused(String),
    /// The HTTP exchange failed (connection reset, malformed answer).
    #[error("HTTP exchange failed: {0}")]
    Http(String),
    /// Nothing moved for the read timeout.
    #[error("no progress for {0:?}")]
    ReadTimeout(Duration),
    /// The hook before the last image piece refused; the piece was not sent.
    #[error("stopped before the last image piece: {0}")]
    NotCommitted(String),
}

/// What the upload got to before it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Sent {
    /// Image bytes handed to the socket.
    pub image_bytes: u64,
    /// The whole body was handed to the socket (the device may have the image).
    pub complete: bool,
}

/// Uploads `image`. `on_progress(image_bytes_sent, image_len)` follows the body; the returned
/// [`Sent`] says how far it got, also on failure.
pub async fn upload(
    target: &WebTarget<'_>,
    image: Bytes,
    cancel: &CancellationToken,
    on_progress: impl Fn(u64, u64) + Send + Sync + 'static,
) -> (Sent, Result<(), WebError>) {
    let hook: super::native::BeforeLastBlock<'static> = Box::new(|| Box::pin(async { Ok(()) }));
    upload_with(target, image, cancel, on_progress, hook).await
}

/// [`upload`] with a hook awaited right before the last piece of the image goes to the socket
/// (the device commits when the body ends); an error stops the upload there.
pub async fn upload_with(
    target: &WebTarget<'_>,
    image: Bytes,
    cancel: &CancellationToken,
    on_progress: impl Fn(u64, u64) + Send + Sync + 'static,
    before_last: super::native::BeforeLastBlock<'static>,
) -> (Sent, Result<(), WebError>) {
    let stream = match connect(target, cancel).await {
        Ok(stream) => stream,
        Err(e) => return (Sent::default(), Err(e)),
    };
    let tracker = Arc::new(Tracker::new());
    let boundary = format!("otaagent{}", hex::encode(rand::random::<[u8; 16]>()));
    let body = MultipartBody::new(&boundary, image, tracker.clone(), on_progress, before_last);
    let refused = body.refused.clone();
    let request = match request(target, &boundary, body) {
        Ok(r) => r,
        Err(e) => return (Sent::default(), Err(e)),
    };
    let (mut sender, conn) = match hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
    {
        Ok(pair) => pair,
        Err(e) => return (Sent::default(), Err(WebError::Http(e.to_string()))),
    };
    let driver = tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "web_server connection ended");
        }
    });
    let result = exchange(&mut sender, request, &tracker, target.read_timeout).await;
    driver.abort();
    let refused = refused.locked().take();
    match refused {
        Some(why) => (tracker.sent(), Err(WebError::NotCommitted(why))),
        None => (tracker.sent(), result),
    }
}

/// The TCP connection to the web_server, within the connect timeout.
async fn connect(
    target: &WebTarget<'_>,
    cancel: &CancellationToken,
) -> Result<TcpStream, WebError> {
    let stream = tokio::select! {
        r = timeout(target.connect_timeout, TcpStream::connect((target.host, target.port))) => match r {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(WebError::Connect(e)),
            Err(_) => return Err(WebError::ConnectTimeout(target.connect_timeout)),
        },
        () = cancel.cancelled() => return Err(WebError::Cancelled),
    };
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// What the body has done, shared between the body stream and the stall watch.
struct Tracker {
    start: Instant,
    /// Milliseconds since `start` of the last sign of life.
    activity: AtomicU64,
    /// Image bytes handed to the socket.
    image_bytes: AtomicU64,
    /// The whole body was handed to the socket.
    complete: AtomicBool,
}

impl Tracker {
    fn new() -> Tracker {
        Tracker {
            start: Instant::now(),
            activity: AtomicU64::new(0),
            image_bytes: AtomicU64::new(0),
            complete: AtomicBool::new(false),
        }
    }

    fn touch(&self) {
        self.activity
            .store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn last_activity(&self) -> Duration {
        Duration::from_millis(self.activity.load(Ordering::Relaxed))
    }

    fn sent(&self) -> Sent {
        Sent {
            image_bytes: self.image_bytes.load(Ordering::Relaxed),
            complete: self.complete.load(Ordering::Relaxed),
        }
    }
}

type BodyStream = futures::stream::BoxStream<'static, io::Result<Frame<Bytes>>>;

/// The `multipart/form-data` body: the part head, the image in [`PIECE`]s, the closing
/// boundary. A piece is polled once the previous one is in the socket: it is counted then.
struct MultipartBody {
    stream: BodyStream,
    content_length: usize,
    /// Why the hook before the last image piece refused, when it did.
    refused: Arc<std::sync::Mutex<Option<String>>>,
}

impl MultipartBody {
    fn new(
        boundary: &str,
        image: Bytes,
        tracker: Arc<Tracker>,
        on_progress: impl Fn(u64, u64) + Send + Sync + 'static,
        before_last: super::native::BeforeLastBlock<'static>,
    ) -> MultipartBody {
        let head = Bytes::from(format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"{FORM_FIELD}\"; \
             filename=\"firmware.bin\"\r\nContent-Type: application/octet-stream\r\n\r\n"
        ));
        let tail = Bytes::from(format!("\r\n--{boundary}--\r\n"));
        let content_length = head.len() + image.len() + tail.len();
        let total = image.len() as u64;
        let mut pieces: Vec<(Bytes, u64)> = vec![(head, 0)];
        let mut offset = 0;
        while offset < image.len() {
            let end = (offset + PIECE).min(image.len());
            pieces.push((image.slice(offset..end), (end - offset) as u64));
            offset = end;
        }
        let n_pieces = pieces.len();
        pieces.push((tail, 0));
        let hook = Arc::new(std::sync::Mutex::new(Some(before_last)));
        let refused: Arc<std::sync::Mutex<Option<String>>> = Arc::default();
        let refused_in_body = refused.clone();
        let on_progress = Arc::new(on_progress);
        let stream = futures::stream::iter(pieces.into_iter().enumerate()).then(
            move |(i, (piece, image_bytes)): (usize, (Bytes, u64))| {
                let tracker = tracker.clone();
                let on_progress = on_progress.clone();
                let refused = refused_in_body.clone();
                // The last image piece: the device commits once the body ends.
                let hook = (i + 1 == n_pieces).then(|| hook.locked().take()).flatten();
                let piece: futures::future::BoxFuture<'static, io::Result<Frame<Bytes>>> =
                    Box::pin(async move {
                        if let Some(hook) = hook
                            && let Err(why) = hook().await
                        {
                            *refused.locked() = Some(why.clone());
                            return Err(io::Error::other(why));
                        }
                        tracker.touch();
                        if i > 0 && i <= n_pieces {
                            let done = tracker
                                .image_bytes
                                .fetch_add(image_bytes, Ordering::Relaxed)
                                + image_bytes;
                            on_progress(done, total);
                        }
                        if i == n_pieces {
                            tracker.complete.store(true, Ordering::Relaxed);
                        }
                        Ok(Frame::data(piece))
                    });
                piece
            },
        );
        MultipartBody {
            stream: Box::pin(stream),
            content_length,
            refused,
        }
    }
}

/// `POST /update` with ESPHome's headers (and Basic auth when configured).
fn request(
    target: &WebTarget<'_>,
    boundary: &str,
    body: MultipartBody,
) -> Result<hyper::Request<StreamBody<BodyStream>>, WebError> {
    let mut request = hyper::Request::post("/update")
        .header(header::HOST, format!("{}:{}", target.host, target.port))
        .header(
            header::CONTENT_TYPE,
            format!("multipart/form-data; boundary={boundary}"),
        )
        .header(header::CONTENT_LENGTH, body.content_length)
        .header(header::CONNECTION, "close")
        .header(
            header::USER_AGENT,
            concat!("ota-agent/", env!("CARGO_PKG_VERSION")),
        );
    if let (Some(user), Some(password)) = (target.username, target.password) {
        let token = base64::engine::general_purpose::STANDARD
            .encode(format!("{user}:{}", password.expose()));
        request = request.header(header::AUTHORIZATION, format!("Basic {token}"));
    }
    request
        .body(StreamBody::new(body.stream))
        .map_err(|e| WebError::Http(e.to_string()))
}

/// Sends the request and reads the answer; a stall of `read_timeout` while the body goes out
/// or while waiting for the answer ends it.
async fn exchange(
    sender: &mut hyper::client::conn::http1::SendRequest<StreamBody<BodyStream>>,
    request: hyper::Request<StreamBody<BodyStream>>,
    tracker: &Tracker,
    read_timeout: Duration,
) -> Result<(), WebError> {
    let mut response = std::pin::pin!(sender.send_request(request));
    let response = loop {
        let last = tracker.last_activity();
        let stall_deadline = tracker.start + last + read_timeout;
        tokio::select! {
            r = &mut response => break r.map_err(|e| WebError::Http(e.to_string()))?,
            () = sleep_until(stall_deadline) => {
                if tracker.last_activity() == last {
                    return Err(WebError::ReadTimeout(read_timeout));
                }
            }
        }
    };
    let status = response.status().as_u16();
    let body = timeout(read_timeout, response.into_body().collect())
        .await
        .map_err(|_| WebError::ReadTimeout(read_timeout))?
        .map_err(|e| WebError::Http(e.to_string()))?
        .to_bytes();
    let text: String = String::from_utf8_lossy(&body)
        .trim()
        .chars()
        .take(200)
        .collect();
    match status {
        200 if text.contains("Successful") => Ok(()),
        200 => Err(WebError::Refused(text)),
        401 => Err(WebError::Unauthorized),
        _ => Err(WebError::Status { status, body: text }),
    }
}
