//! The web_server `/update` endpoint of a simulated ESPHome device (axum), behaving like
//! ESPHome's `ota_web_server.cpp` on top of the platform's OTA backend.
//!
//! What it does: `POST /update` with a `multipart/form-data` body (the field name is not
//! checked, as on the device); HTTP Basic auth when a username and password are configured (401
//! otherwise); `begin(0)` (size unknown, no MD5: ESPHome's "lenient mode"); the backend's
//! checks: an ESP32 refuses an image whose first byte is not 0xE9 and, at the end, one that does
//! not verify; an ESP8266 takes gzip (`1F 8B`) as well as 0xE9; images larger than the OTA slot
//! fail. The answer is always HTTP 200 `text/plain` with `Connection: close`, body
//! `Update Successful!` or `Update Failed!`; after a success the device reboots 100 ms later
//! through the shared [`DeviceModel`] (every port goes away, the API then reports the new
//! version). Uploads are recorded on the model with `via: "web_server"`.
//! What it does not do: the rest of the web server (entities, events), digest auth, the captive
//! portal, or the model's injected native-OTA faults.

use std::io;
use std::io::Read;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use ota_devproto::esphome::{Compression, ErrorCode};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::esphome::Platform;
use crate::esphome::listener;
use crate::esphome::model::{DeviceModel, ReceivedUpload, UploadOutcome};
use crate::esphome_node::serve_many_while_up;

/// The body of a successful upload.
pub const UPDATE_SUCCESSFUL: &str = "Update Successful!";

/// The body of a failed upload.
pub const UPDATE_FAILED: &str = "Update Failed!";

/// How the web_server behaves.
#[derive(Debug, Clone)]
pub struct WebConfig {
    /// Where it listens (`127.0.0.1:0` in tests; a real device uses 80).
    pub bind: SocketAddr,
    /// `web_server: auth: username:`; auth is on when both this and the password are set.
    pub username: Option<String>,
    /// `web_server: auth: password:`.
    pub password: Option<String>,
    /// Largest image the OTA slot takes.
    pub max_image_size: usize,
    /// Check images as the platform's backend does.
    pub validate_images: bool,
}

impl WebConfig {
    /// A web_server without auth on `127.0.0.1:0`, with the native OTA's default slot size.
    pub fn new(platform: Platform) -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            username: None,
            password: None,
            max_image_size: match platform {
                Platform::Esp8266 => 1 << 20,
                _ => 0x1C_0000,
            },
            validate_images: true,
        }
    }

    /// With HTTP Basic auth.
    pub fn with_auth(mut self, username: &str, password: &str) -> Self {
        self.username = Some(username.into());
        self.password = Some(password.into());
        self
    }
}

#[derive(Debug)]
struct WebState {
    model: DeviceModel,
    config: WebConfig,
    /// `Basic <base64(user:password)>` when auth is on.
    expected_auth: Option<String>,
    requests: AtomicU32,
    unauthorized: AtomicU32,
}

/// A running web_server. Dropping it closes the port.
#[derive(Debug)]
pub struct EsphomeWebSim {
    addr: SocketAddr,
    state: Arc<WebState>,
    _enabled: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl EsphomeWebSim {
    /// Binds the web_server port and serves `/update` for `model`. Must be called inside a tokio
    /// runtime.
    pub fn start(model: DeviceModel, config: WebConfig) -> io::Result<Self> {
        let listener = listener::bind(config.bind)?;
        let addr = listener.local_addr()?;
        let expected_auth = match (&config.username, &config.password) {
            (Some(u), Some(p)) => Some(format!("Basic {}", base64(format!("{u}:{p}").as_bytes()))),
            _ => None,
        };
        let state = Arc::new(WebState {
            model: model.clone(),
            config,
            expected_auth,
            requests: AtomicU32::new(0),
            unauthorized: AtomicU32::new(0),
        });
        let app = Router::new()
            .route("/update", post(update))
            .with_state(state.clone());
        let (enabled, enabled_rx) = watch::channel(true);
        let task = serve_many_while_up(model, listener, enabled_rx, "web_server", move |s, _| {
            serve_connection(s, app.clone())
        });
        Ok(Self {
            addr,
            state,
            _enabled: enabled,
            task,
        })
    }

    /// The web_server address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `POST /update` requests that passed auth.
    pub fn requests(&self) -> u32 {
        self.state.requests.load(Ordering::Relaxed)
    }

    /// Requests refused with 401.
    pub fn unauthorized(&self) -> u32 {
        self.state.unauthorized.load(Ordering::Relaxed)
    }
}

impl Drop for EsphomeWebSim {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve_connection(stream: TcpStream, app: Router) {
    let _ = stream.set_nodelay(true);
    let service = TowerToHyperService::new(app);
    if let Err(e) = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await
    {
        tracing::debug!(error = %e, "esphome sim: web_server connection ended");
    }
}

fn text(status: StatusCode, body: &'static str) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/plain"),
            (header::CONNECTION, "close"),
        ],
        body,
    )
        .into_response()
}

async fn update(State(st): State<Arc<WebState>>, headers: HeaderMap, body: Body) -> Response {
    if let Some(expected) = &st.expected_auth {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        if given != Some(expected.as_str()) {
            st.unauthorized.fetch_add(1, Ordering::Relaxed);
            // The device's web server receives the whole upload (and drops it) before it
            // answers, so the client always gets to read the 401.
            let _ = axum::body::to_bytes(body, usize::MAX).await;
            return (
                StatusCode::UNAUTHORIZED,
                [
                    (header::WWW_AUTHENTICATE, "Basic realm=\"Login Required\""),
                    (header::CONNECTION, "close"),
                ],
                "",
            )
                .into_response();
        }
    }
    st.requests.fetch_add(1, Ordering::Relaxed);
    let Ok(body) = axum::body::to_bytes(body, usize::MAX).await else {
        return text(StatusCode::OK, UPDATE_FAILED);
    };
    let boundary = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(boundary_of);
    let Some(file) = boundary.and_then(|b| first_part(&body, &b)) else {
        tracing::debug!("esphome sim: /update without a multipart file part");
        return text(StatusCode::OK, UPDATE_FAILED);
    };
    match flash(&st, file) {
        Ok(image) => {
            let model = st.model.clone();
            // ota_web_server.cpp: set_timeout(100, safe_reboot).
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                model.install(&image);
            });
            text(StatusCode::OK, UPDATE_SUCCESSFUL)
        }
        Err(code) => {
            tracing::debug!(?code, "esphome sim: web_server OTA failed");
            text(StatusCode::OK, UPDATE_FAILED)
        }
    }
}

/// What the OTA backend does with the uploaded file: `begin(0)`, `write()`, `end()`. Returns
/// the image as it boots, or the error the backend reported (only logged on the device).
fn flash(st: &WebState, file: Bytes) -> Result<Bytes, ErrorCode> {
    let model = &st.model;
    let platform = model.platform();
    if file.is_empty() {
        // No data: handleUpload never called begin(); nothing happens.
        return Err(ErrorCode::UpdateEnd);
    }
    model.record_attempt();
    let fail = |code: ErrorCode, image: Bytes, compression: Compression| {
        model.record_upload(ReceivedUpload {
            via: "web_server",
            image,
            compression,
            md5_ok: true,
            outcome: UploadOutcome::Failed(code),
        });
        Err(code)
    };
    let gzip = file.starts_with(&[0x1F, 0x8B]) && platform.stores_gzip();
    let compression = if gzip {
        Compression::Gzip
    } else {
        Compression::None
    };
    if st.config.validate_images && platform == Platform::Esp32 && file[0] != 0xE9 {
        // esp_ota_write refuses the first chunk.
        model.record_error(ErrorCode::Magic);
        return Err(ErrorCode::Magic);
    }
    if file.len() > st.config.max_image_size {
        return fail(platform.not_enough_space(), file, compression);
    }
    let image = if gzip {
        let mut out = Vec::new();
        match flate2::read::GzDecoder::new(&file[..]).read_to_end(&mut out) {
            Ok(_) => Bytes::from(out),
            Err(_) => return fail(ErrorCode::UpdateEnd, file, compression),
        }
    } else {
        file
    };
    if st.config.validate_images {
        let ok = match platform {
            Platform::Esp32 => ota_firmware::esp::parse_image(&image, None).is_ok(),
            Platform::Esp8266 => image.first() == Some(&0xE9),
            Platform::Rp2040 | Platform::Bk72xx => true,
        };
        if !ok {
            return fail(ErrorCode::UpdateEnd, image, compression);
        }
    }
    model.record_upload(ReceivedUpload {
        via: "web_server",
        image: image.clone(),
        compression,
        md5_ok: true,
        outcome: UploadOutcome::Committed,
    });
    Ok(image)
}

/// The `boundary` parameter of a `multipart/form-data` content type.
fn boundary_of(content_type: &str) -> Option<String> {
    let (kind, params) = content_type.split_once(';')?;
    if !kind.trim().eq_ignore_ascii_case("multipart/form-data") {
        return None;
    }
    params.split(';').find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("boundary")
            .then(|| v.trim().trim_matches('"').to_owned())
    })
}

/// The content of the first part of a multipart body.
fn first_part(body: &Bytes, boundary: &str) -> Option<Bytes> {
    let open = format!("--{boundary}");
    let start = find(body, open.as_bytes(), 0)? + open.len();
    let headers_end = find(body, b"\r\n\r\n", start)? + 4;
    let close = format!("\r\n--{boundary}");
    let end = find(body, close.as_bytes(), headers_end)?;
    Some(body.slice(headers_end..end))
}

fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    haystack
        .get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|i| i + from)
}

/// Standard base64 with padding (for the expected `Authorization` header).
fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(plain.as_bytes()), encoded);
        }
    }

    #[test]
    fn multipart_parts_and_boundaries() {
        assert_eq!(
            boundary_of("multipart/form-data; boundary=esphomeOTAabc"),
            Some("esphomeOTAabc".into())
        );
        assert_eq!(
            boundary_of("multipart/form-data; charset=x; boundary=\"q r\""),
            Some("q r".into())
        );
        assert_eq!(boundary_of("application/octet-stream"), None);
        let body = Bytes::from_static(
            b"--b1\r\nContent-Disposition: form-data; name=\"update\"; filename=\"f.bin\"\r\n\
              Content-Type: application/octet-stream\r\n\r\n\xE9\x01\r\n\x02\r\n--b1--\r\n",
        );
        assert_eq!(&first_part(&body, "b1").unwrap()[..], b"\xE9\x01\r\n\x02");
        assert_eq!(first_part(&body, "zz"), None);
    }
}
