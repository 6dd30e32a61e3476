//! An agent session (`AgentService.Connect`) driven by the test message by message: messages go
//! out as given (or as raw bytes, valid or garbage), every server message comes back as it is.
//! [`crate::site::FakeSite`] is the agent that answers by itself.

use std::time::Duration;

use ota_proto::v1 as pb;
use prost::Message as _;
use tonic::transport::Channel;

/// How long a helper waits for the server's next message before it panics.
const ANSWER_WITHIN: Duration = Duration::from_secs(20);

/// Sends raw bytes as gRPC messages (a valid message encoded, or garbage) and decodes what the
/// server answers as `D` (by default `ServerMessage`s).
#[derive(Debug)]
pub struct RawCodec<D = pb::ServerMessage>(std::marker::PhantomData<D>);

impl<D> Default for RawCodec<D> {
    fn default() -> Self {
        Self(std::marker::PhantomData)
    }
}

/// The encoder of [`RawCodec`]: the bytes as they are.
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

/// A hello of `agent_id` at `site` (zone Europe/Berlin) that has `last_seq` journaled.
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

/// An incremental inventory of `devices`.
pub fn inventory(devices: Vec<pb::DeviceReport>) -> pb::agent_message::Body {
    pb::agent_message::Body::Inventory(pb::Inventory {
        full: false,
        devices,
        removed_local_ids: vec![],
    })
}

/// An open agent session.
#[derive(Debug)]
pub struct AgentSession {
    pub tx: tokio::sync::mpsc::Sender<Vec<u8>>,
    pub rx: tonic::Streaming<pb::ServerMessage>,
}

impl AgentSession {
    /// Opens a session whose first message is `first` (encoded as is), with a bearer `token`
    /// when given; the welcome, or the status the server refused the session with.
    pub async fn open(
        channel: &Channel,
        token: Option<&str>,
        first: Vec<u8>,
    ) -> Result<(AgentSession, pb::Welcome), tonic::Status> {
        let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(1024);
        tx.send(first).await.unwrap();
        let mut grpc = tonic::client::Grpc::new(channel.clone());
        grpc.ready().await.unwrap();
        let outbound = tokio_stream::wrappers::ReceiverStream::new(rx);
        let request = match token {
            Some(t) => crate::authed(outbound, t),
            None => tonic::Request::new(outbound),
        };
        let mut inbound = grpc
            .streaming(
                request,
                http::uri::PathAndQuery::from_static("/ota.v1.AgentService/Connect"),
                RawCodec::<pb::ServerMessage>::default(),
            )
            .await?
            .into_inner();
        let first = tokio::time::timeout(Duration::from_secs(10), inbound.message())
            .await
            .expect("the server answers the hello within 10 s")?
            .expect("a welcome");
        let Some(pb::server_message::Body::Welcome(w)) = first.body else {
            panic!("expected a welcome, got {first:?}");
        };
        Ok((AgentSession { tx, rx: inbound }, w))
    }

    /// A session with a plain hello ([`hello_message`]).
    pub async fn connect(
        channel: &Channel,
        site: &str,
        agent_id: &str,
        last_seq: u64,
    ) -> Result<(AgentSession, pb::Welcome), tonic::Status> {
        Self::open(
            channel,
            None,
            hello_message(site, agent_id, last_seq).encode_to_vec(),
        )
        .await
    }

    /// Sends a report (or, with seq 0, an unjournaled message).
    pub async fn send(&self, seq: u64, body: pb::agent_message::Body) {
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

    /// The next server message other than a ping, `None` when the stream ended well, `Err`
    /// with the status it ended with.
    pub async fn next_message(&mut self) -> Result<Option<pb::ServerMessage>, tonic::Status> {
        loop {
            let m = tokio::time::timeout(ANSWER_WITHIN, self.rx.message())
                .await
                .expect("the server answers within 20 s")?;
            match m {
                Some(pb::ServerMessage {
                    body: Some(pb::server_message::Body::Ping(_)),
                    ..
                }) => {}
                other => return Ok(other),
            }
        }
    }

    /// The next command (a message that is neither an ack, a refusal nor a ping); panics when
    /// the session ends first.
    pub async fn command(&mut self) -> pb::ServerMessage {
        loop {
            match self.next_message().await {
                Ok(Some(m)) if !is_answer(&m) => return m,
                Ok(Some(_)) => {}
                other => panic!("expected a command, the session ended: {other:?}"),
            }
        }
    }

    /// The next server message that is an ack or a refusal (commands and pings skipped), `None`
    /// when the stream ended well, `Err` with the status it ended with.
    pub async fn next_answer(&mut self) -> Result<Option<pb::ServerMessage>, tonic::Status> {
        loop {
            match self.next_message().await? {
                None => return Ok(None),
                Some(m) if is_answer(&m) => return Ok(Some(m)),
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

    /// Reads answers until one acknowledges `seq` (or later); a refusal on the way panics.
    pub async fn acked_through(&mut self, seq: u64) {
        while self.acked().await < seq {}
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

fn is_answer(m: &pb::ServerMessage) -> bool {
    matches!(
        m.body,
        Some(pb::server_message::Body::Ack(_) | pb::server_message::Body::Refused(_))
    )
}
