//! A real otad in-process: sled store in a temp dir, gRPC on 127.0.0.1:0, and clients for it.

#![allow(dead_code)]

use std::sync::Arc;

use ota_proto::v1 as pb;
use ota_server::config::Config;
use ota_server::core::Clock;
use ota_server::server::{Server, open_store};
use tonic::transport::Channel;

pub struct TestServer {
    pub dir: tempfile::TempDir,
    pub server: Option<Server>,
    pub channel: Channel,
}

pub fn config(dir: &std::path::Path) -> Config {
    Config {
        data_dir: dir.to_path_buf(),
        listen: "127.0.0.1:0".parse().unwrap(),
        max_firmware_bytes: 4 * 1024 * 1024,
        ..Config::default()
    }
}

impl TestServer {
    pub async fn start() -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(dir, |_| {}).await
    }

    pub async fn start_in(dir: tempfile::TempDir, tweak: impl FnOnce(&mut Config)) -> TestServer {
        let mut cfg = config(dir.path());
        tweak(&mut cfg);
        let store = open_store(&cfg).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = Server::start(cfg, store, Clock::new(), listener)
            .await
            .unwrap();
        let channel = Channel::from_shared(format!("http://{}", server.addr))
            .unwrap()
            .connect()
            .await
            .unwrap();
        TestServer {
            dir,
            server: Some(server),
            channel,
        }
    }

    /// Stops the server (flushing the store) and starts a new one on the same data directory.
    pub async fn restart(mut self) -> TestServer {
        self.server.take().unwrap().shutdown().await.unwrap();
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        TestServer::start_in(dir, |_| {}).await
    }

    pub fn app(&self) -> Arc<ota_server::app::App> {
        self.server.as_ref().unwrap().app.clone()
    }

    pub fn firmware(&self) -> pb::firmware_service_client::FirmwareServiceClient<Channel> {
        pb::firmware_service_client::FirmwareServiceClient::new(self.channel.clone())
            .max_decoding_message_size(16 * 1024 * 1024)
    }
    pub fn devices(&self) -> pb::device_service_client::DeviceServiceClient<Channel> {
        pb::device_service_client::DeviceServiceClient::new(self.channel.clone())
    }
    pub fn events(&self) -> pb::event_service_client::EventServiceClient<Channel> {
        pb::event_service_client::EventServiceClient::new(self.channel.clone())
    }
    pub fn system(&self) -> pb::system_service_client::SystemServiceClient<Channel> {
        pb::system_service_client::SystemServiceClient::new(self.channel.clone())
    }
    pub fn sites(&self) -> pb::site_service_client::SiteServiceClient<Channel> {
        pb::site_service_client::SiteServiceClient::new(self.channel.clone())
    }
    pub fn rollouts(&self) -> pb::rollout_service_client::RolloutServiceClient<Channel> {
        pb::rollout_service_client::RolloutServiceClient::new(self.channel.clone())
    }
    pub fn agent(&self) -> pb::agent_service_client::AgentServiceClient<Channel> {
        pb::agent_service_client::AgentServiceClient::new(self.channel.clone())
    }
}

/// Upload messages: metadata, then the bytes in chunks of `chunk`.
pub fn upload_messages(
    meta: pb::UploadMetadata,
    bytes: &[u8],
    chunk: usize,
) -> Vec<pb::UploadFirmwareRequest> {
    let mut msgs = vec![pb::UploadFirmwareRequest {
        part: Some(pb::upload_firmware_request::Part::Metadata(meta)),
    }];
    for c in bytes.chunks(chunk) {
        msgs.push(pb::UploadFirmwareRequest {
            part: Some(pb::upload_firmware_request::Part::Chunk(c.to_vec())),
        });
    }
    msgs
}

pub fn meta(name: &str, version: &str) -> pb::UploadMetadata {
    pb::UploadMetadata {
        name: name.into(),
        version: version.into(),
        ..Default::default()
    }
}

pub async fn upload(
    ts: &TestServer,
    meta: pb::UploadMetadata,
    bytes: &[u8],
) -> Result<pb::UploadFirmwareResponse, tonic::Status> {
    ts.firmware()
        .upload(futures::stream::iter(upload_messages(
            meta,
            bytes,
            64 * 1024,
        )))
        .await
        .map(|r| r.into_inner())
}

/// Files in a directory, recursively.
pub fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files_under(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// Sends raw bytes as gRPC messages (a valid message encoded, or garbage) and decodes what the
/// server answers as `D` (by default `ServerMessage`s).
#[derive(Debug)]
pub struct RawCodec<D = pb::ServerMessage>(std::marker::PhantomData<D>);

impl<D> Default for RawCodec<D> {
    fn default() -> Self {
        Self(std::marker::PhantomData)
    }
}

#[derive(Debug)]
pub struct RawEncoder;

impl tonic::codec::Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        use bytes::BufMut;
        dst.put_slice(&item);
        Ok(())
    }
}

impl<D: prost::Message + Default + Send + 'static> tonic::codec::Codec for RawCodec<D> {
    type Encode = Vec<u8>;
    type Decode = D;
    type Encoder = RawEncoder;
    type Decoder = tonic_prost::ProstDecoder<D>;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        tonic_prost::ProstDecoder::default()
    }
}
