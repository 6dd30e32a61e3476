//! `EventService`: the event log as a stream, catch-up then live.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use ota_proto::v1 as pb;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::{Instrument, info_span};

use super::caller::{Role, caller};
use super::error::ApiError;
use crate::app::App;
use crate::core::decode;
use crate::store::RecordedEvent;

/// The service.
#[derive(Debug, Clone)]
pub struct EventApi {
    app: Arc<App>,
}

impl EventApi {
    /// A service over the app.
    pub fn new(app: Arc<App>) -> Self {
        Self { app }
    }
}

struct Filter {
    prefixes: Vec<String>,
    types: Vec<String>,
}

impl Filter {
    fn matches(&self, r: &RecordedEvent) -> bool {
        (self.prefixes.is_empty() || self.prefixes.iter().any(|p| r.stream.starts_with(p)))
            && (self.types.is_empty() || self.types.contains(&r.event_type))
    }
}

/// The sending end of one tail: the matching records, up to the limit.
struct Tail {
    tx: tokio::sync::mpsc::Sender<Result<pb::Event, Status>>,
    filter: Filter,
    /// How many more records may be sent.
    left: u64,
}

impl Tail {
    /// Sends `r` if it matches; false when the tail is over (the limit reached, the client gone).
    async fn offer(&mut self, r: &RecordedEvent) -> bool {
        if !self.filter.matches(r) {
            return true;
        }
        if self.tx.send(Ok(to_pb(r))).await.is_err() {
            return false;
        }
        self.left -= 1;
        self.left > 0
    }

    /// Ends the tail with the event log's error.
    async fn fail(&self, e: impl std::fmt::Display) {
        let _ = self
            .tx
            .send(Err(Status::internal(format!("event log: {e}"))))
            .await;
    }
}

/// The wire form of a stored event.
pub fn to_pb(r: &RecordedEvent) -> pb::Event {
    let payload_json = match decode(r) {
        Ok(e) => e.to_json(),
        Err(e) => serde_json::json!({ "undecodable": e.to_string() }).to_string(),
    };
    pb::Event {
        seq: r.seq,
        stream: r.stream.clone(),
        stream_version: r.stream_version,
        r#type: r.event_type.clone(),
        schema_version: u32::from(r.schema_version),
        recorded_at_ms: r.recorded_at_ms,
        actor: r.actor.clone(),
        payload_json,
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::Event, Status>> + Send>>;

#[tonic::async_trait]
impl pb::event_service_server::EventService for EventApi {
    type TailStream = EventStream;

    async fn tail(
        &self,
        request: Request<pb::TailEventsRequest>,
    ) -> Result<Response<Self::TailStream>, Status> {
        caller(&request).require(Role::Viewer)?;
        let req = request.into_inner();
        if req.stream_prefixes.len() > 64 || req.types.len() > 64 {
            return Err(ApiError::invalid("at most 64 stream prefixes and 64 types").into());
        }
        let from = req.from_seq.max(1);
        let store = self.app.core.store().clone();
        let shutdown = self.app.shutdown.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        let mut out = Tail {
            tx,
            filter: Filter {
                prefixes: req.stream_prefixes,
                types: req.types,
            },
            left: if req.limit == 0 {
                u64::MAX
            } else {
                u64::from(req.limit)
            },
        };
        let span = info_span!("events.tail", from_seq = from, follow = req.follow);
        tokio::spawn(
            async move {
                if req.follow {
                    let mut sub = store.subscribe(from);
                    loop {
                        let item = tokio::select! {
                            () = shutdown.cancelled() => return,
                            item = sub.next() => match item {
                                Some(item) => item,
                                None => return,
                            },
                        };
                        match item {
                            Ok(r) if out.offer(&r).await => {}
                            Ok(_) => return,
                            Err(e) => return out.fail(e).await,
                        }
                    }
                } else {
                    let end = store.last_seq();
                    let mut next = from;
                    while next <= end {
                        let batch = match store.read_from(next, 1024) {
                            Ok(b) => b,
                            Err(e) => return out.fail(e).await,
                        };
                        if batch.is_empty() {
                            return;
                        }
                        for r in batch {
                            if r.seq > end {
                                return;
                            }
                            next = r.seq + 1;
                            if !out.offer(&r).await {
                                return;
                            }
                        }
                    }
                }
            }
            .instrument(span),
        );
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
