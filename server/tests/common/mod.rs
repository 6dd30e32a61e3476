//! A real otad in-process: sled store in a temp dir, gRPC on 127.0.0.1:0, and clients for it.

#![allow(dead_code)]

use std::sync::Arc;

use ota_proto::v1 as pb;
use ota_server::config::Config;
use ota_server::core::Clock;
use ota_server::wiring::{Otad, open_store};
use tonic::transport::Channel;

pub struct TestServer {
    pub dir: tempfile::TempDir,
    pub server: Option<Otad>,
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
        let server = Otad::start(cfg, store, Clock::new(), listener)
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

/// An agent session driven byte by byte: messages go out as given (or as raw bytes), every
/// server message comes back as it is.
pub struct RawAgent {
    pub tx: tokio::sync::mpsc::Sender<Vec<u8>>,
    pub rx: tonic::Streaming<pb::ServerMessage>,
}

pub fn hello_message(site: &str, agent_id: &str, last_seq: u64) -> pb::AgentMessage {
    pb::AgentMessage {
        seq: 0,
        body: Some(pb::agent_message::Body::Hello(pb::AgentHello {
            site_id: site.into(),
            agent_version: "test".into(),
            agent_id: agent_id.into(),
            last_seq,
            timezone: "Europe/Berlin".into(),
            ..Default::default()
        })),
    }
}

impl RawAgent {
    /// Opens a session whose first message is `first` (encoded as is); the welcome, or the
    /// status the server refused the session with.
    pub async fn open(
        channel: &Channel,
        first: Vec<u8>,
    ) -> Result<(RawAgent, pb::Welcome), tonic::Status> {
        let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(1024);
        tx.send(first).await.unwrap();
        let mut grpc = tonic::client::Grpc::new(channel.clone());
        grpc.ready().await.unwrap();
        let mut inbound = grpc
            .streaming(
                tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx)),
                http::uri::PathAndQuery::from_static("/ota.v1.AgentService/Connect"),
                RawCodec::<pb::ServerMessage>::default(),
            )
            .await?
            .into_inner();
        let first = tokio::time::timeout(std::time::Duration::from_secs(10), inbound.message())
            .await
            .expect("the server answers the hello within 10 s")?
            .expect("a welcome");
        let Some(pb::server_message::Body::Welcome(w)) = first.body else {
            panic!("expected a welcome, got {first:?}");
        };
        Ok((RawAgent { tx, rx: inbound }, w))
    }

    /// A session with a plain hello.
    pub async fn connect(
        channel: &Channel,
        site: &str,
        agent_id: &str,
        last_seq: u64,
    ) -> Result<(RawAgent, pb::Welcome), tonic::Status> {
        use prost::Message;
        Self::open(
            channel,
            hello_message(site, agent_id, last_seq).encode_to_vec(),
        )
        .await
    }

    pub async fn send(&self, seq: u64, body: pb::agent_message::Body) {
        use prost::Message;
        let m = pb::AgentMessage {
            seq,
            body: Some(body),
        };
        self.send_raw(m.encode_to_vec()).await;
    }

    pub async fn send_raw(&self, bytes: Vec<u8>) {
        // The server may already have ended the session; the answer says so.
        let _ = self.tx.send(bytes).await;
    }

    /// The next server message that is an ack or a refusal (commands and pings skipped), `None`
    /// when the stream ended well, `Err` with the status it ended with.
    pub async fn next_answer(&mut self) -> Result<Option<pb::ServerMessage>, tonic::Status> {
        loop {
            let m = tokio::time::timeout(std::time::Duration::from_secs(20), self.rx.message())
                .await
                .expect("the server answers within 20 s")?;
            match m {
                None => return Ok(None),
                Some(m)
                    if matches!(
                        m.body,
                        Some(
                            pb::server_message::Body::Ack(_) | pb::server_message::Body::Refused(_)
                        )
                    ) =>
                {
                    return Ok(Some(m));
                }
                Some(_) => {}
            }
        }
    }

    /// The next answer, which must be an ack; its seq.
    pub async fn acked(&mut self) -> u64 {
        match self.next_answer().await {
            Ok(Some(pb::ServerMessage {
                body: Some(pb::server_message::Body::Ack(a)),
                ..
            })) => a.acked_seq,
            other => panic!("expected an ack, got {other:?}"),
        }
    }

    /// The next answer, which must be a refusal; its seq and reason.
    pub async fn refused(&mut self) -> (u64, String) {
        match self.next_answer().await {
            Ok(Some(pb::ServerMessage {
                body: Some(pb::server_message::Body::Refused(r)),
                ..
            })) => (r.seq, r.reason),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    /// Reads until the session ends, which must be with a status: that status (answers before
    /// it are returned too).
    pub async fn ended_with(&mut self) -> (Vec<pb::ServerMessage>, tonic::Status) {
        let mut answers = Vec::new();
        loop {
            match self.next_answer().await {
                Ok(Some(m)) => answers.push(m),
                Ok(None) => panic!("the session ended without an error status after {answers:?}"),
                Err(s) => return (answers, s),
            }
        }
    }
}

/// The seqs of `agent_id`'s reports that events in the log came from (the events' `source`), as
/// `EventService.Tail` shows them, in log order (one seq may have several events).
pub async fn report_seqs_in_log(ts: &TestServer, agent_id: &str) -> Vec<u64> {
    use futures::StreamExt;
    let events: Vec<pb::Event> = ts
        .events()
        .tail(pb::TailEventsRequest {
            from_seq: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .map(|e| e.unwrap())
        .collect()
        .await;
    events
        .iter()
        .filter_map(|e| {
            let v: serde_json::Value = serde_json::from_str(&e.payload_json).ok()?;
            let source = v.get("source")?;
            (source.get("agent_id")?.as_str()? == agent_id).then(|| source.get("seq")?.as_u64())?
        })
        .collect()
}
