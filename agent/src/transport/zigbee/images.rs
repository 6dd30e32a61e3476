//! The HTTP endpoint zigbee2mqtt downloads OTA images from.
//!
//! What it does: serve each task's verified image bytes at `/ota/<token>`, where the token is
//! 256 bits from the OS random generator, unguessable and one-time: the first GET consumes it,
//! any later GET (or an unknown token) gets 404. Before registering and again before serving,
//! the bytes' sha256 is compared with the one the job carries. A token is removed when its
//! [`ImageLease`] is dropped, i.e. when the task ends, fetched or not.
//! What it does not do: TLS or authentication beyond the token (bind it to the interface
//! zigbee2mqtt reaches), range requests, listings.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use ota_domain::status::{ErrorCode, TaskError};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::sync::LockExt;

#[derive(Debug)]
struct Served {
    bytes: Bytes,
    sha256: String,
    task_id: String,
    fetched: bool,
}

type Tokens = Arc<Mutex<HashMap<String, Served>>>;

/// A running image endpoint.
#[derive(Debug)]
pub(crate) struct ImageServer {
    local_addr: SocketAddr,
    base_url: String,
    tokens: Tokens,
    shutdown: CancellationToken,
}

/// One task's image on the endpoint; dropping it removes the token.
#[derive(Debug)]
pub(crate) struct ImageLease {
    tokens: Tokens,
    token: String,
    /// The URL to give zigbee2mqtt.
    pub url: String,
}

impl Drop for ImageLease {
    fn drop(&mut self) {
        lock(&self.tokens).remove(&self.token);
    }
}

fn lock(tokens: &Tokens) -> std::sync::MutexGuard<'_, HashMap<String, Served>> {
    tokens.locked()
}

pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

impl ImageServer {
    /// Binds `bind` and serves until dropped.
    pub(crate) async fn start(
        bind: SocketAddr,
        advertised_base_url: Option<String>,
    ) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(bind).await?;
        let local_addr = listener.local_addr()?;
        let base_url = advertised_base_url
            .map(|u| u.trim_end_matches('/').to_string())
            .unwrap_or_else(|| format!("http://{local_addr}"));
        let tokens: Tokens = Arc::default();
        let app = Router::new()
            .route("/ota/{token}", get(serve_image))
            .with_state(Arc::clone(&tokens));
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let r = axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await;
            if let Err(e) = r {
                tracing::warn!(error = %e, "zigbee image endpoint stopped");
            }
        });
        Ok(Self {
            local_addr,
            base_url,
            tokens,
            shutdown,
        })
    }

    /// The bound address.
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Registers `bytes` for one download. Refused with 5009 when their sha256 is not
    /// `expected_sha256`.
    pub(crate) fn register(
        &self,
        task_id: &str,
        bytes: Bytes,
        expected_sha256: &str,
    ) -> Result<ImageLease, TaskError> {
        let actual = sha256_hex(&bytes);
        if !actual.eq_ignore_ascii_case(expected_sha256) {
            return Err(TaskError::new(
                ErrorCode::ChecksumMismatch,
                format!(
                    "the image to serve has sha256 {actual}, the task expects {expected_sha256}"
                ),
            ));
        }
        let token = format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        lock(&self.tokens).insert(
            token.clone(),
            Served {
                bytes,
                sha256: actual,
                task_id: task_id.to_string(),
                fetched: false,
            },
        );
        Ok(ImageLease {
            tokens: Arc::clone(&self.tokens),
            url: format!("{}/ota/{token}", self.base_url),
            token,
        })
    }
}

impl Drop for ImageServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn serve_image(State(tokens): State<Tokens>, Path(token): Path<String>) -> Response {
    let served = {
        let mut map = lock(&tokens);
        match map.get_mut(&token) {
            Some(s) if !s.fetched => {
                s.fetched = true;
                Some((s.bytes.clone(), s.sha256.clone(), s.task_id.clone()))
            }
            _ => None,
        }
    };
    let Some((bytes, sha256, task_id)) = served else {
        return StatusCode::NOT_FOUND.into_response();
    };
    if sha256_hex(&bytes) != sha256 {
        tracing::error!(task.id = %task_id, "zigbee image changed in memory; refusing to serve it");
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    tracing::info!(task.id = %task_id, bytes = bytes.len(), "zigbee2mqtt fetched the image");
    ([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response()
}
