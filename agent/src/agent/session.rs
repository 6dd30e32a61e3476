//! The session with otad: dial out, hello and welcome, resend what the journal holds above the
//! welcome's `acked_seq`, heartbeats, and the server's messages turned into work. This is the only
//! code that holds the gRPC stream; the rest of the agent only journals reports (wire messages,
//! because the journal keeps them exactly as they are sent).

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use ota_proto::v1 as pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::sync::LockExt;

use super::{AGENT_VERSION, Agent, now_ms, write_journal};

impl Agent {
    /// Runs until `shutdown`: the session loop with reconnects, and the inventory watcher.
    pub async fn run(self: Arc<Self>, channel: Channel, shutdown: CancellationToken) {
        let watcher = tokio::spawn(self.clone().watch_inventory(shutdown.clone()));
        tokio::spawn(self.clone().recover_interrupted());
        let mut delay = self.opts.reconnect_min;
        loop {
            let started = tokio::time::Instant::now();
            let span = info_span!("agent.session", site.id = %self.opts.site_id);
            let outcome = self
                .clone()
                .session(channel.clone(), shutdown.clone())
                .instrument(span)
                .await;
            *self.session_tx.locked() = None;
            if shutdown.is_cancelled() {
                break;
            }
            match outcome {
                Ok(()) => info!("session ended; reconnecting"),
                Err(e) => warn!(error = %e, "session failed; reconnecting"),
            }
            if started.elapsed() > Duration::from_secs(60) {
                delay = self.opts.reconnect_min;
            }
            // Full jitter: a fleet of agents does not come back in lockstep after a server restart.
            let wait = delay.mul_f64(rand::random::<f64>().max(0.1));
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(wait) => {}
            }
            delay = (delay * 2).min(self.opts.reconnect_max);
            if let Some(m) = self.instruments() {
                m.reconnecting();
            }
        }
        let jobs: Vec<CancellationToken> = self.jobs.locked().values().cloned().collect();
        for j in jobs {
            j.cancel();
        }
        watcher.abort();
    }

    pub(super) async fn session(
        self: Arc<Self>,
        channel: Channel,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let (tx, rx) = mpsc::channel::<pb::AgentMessage>(1024);
        let last_seq = self.journal.locked().last_seq();
        tx.send(pb::AgentMessage {
            seq: 0,
            body: Some(pb::agent_message::Body::Hello(pb::AgentHello {
                site_id: self.opts.site_id.clone(),
                agent_version: AGENT_VERSION.into(),
                agent_id: self.agent_id.clone(),
                last_seq,
                timezone: self.opts.timezone.clone(),
                transports: self.transport_instances(),
                utc_offset_minutes: self.opts.utc_offset_minutes,
            })),
        })
        .await?;
        let mut client = pb::agent_service_client::AgentServiceClient::new(channel.clone());
        let mut inbound = client.connect(ReceiverStream::new(rx)).await?.into_inner();
        let welcome = match tokio::time::timeout(Duration::from_secs(30), inbound.next()).await {
            Ok(Some(Ok(pb::ServerMessage {
                body: Some(pb::server_message::Body::Welcome(w)),
                ..
            }))) => w,
            Ok(Some(Err(status))) => {
                anyhow::bail!("server refused the session: {}", status.message())
            }
            _ => anyhow::bail!("no welcome from the server"),
        };
        info!(acked = welcome.acked_seq, server = %welcome.server_version, "connected to otad");
        {
            let mut j = self.journal.locked();
            j.ack(welcome.acked_seq)?;
        }
        *self.session_tx.locked() = Some(tx.clone());
        self.report_inventory(true).await?;

        let heartbeat = Duration::from_secs(u64::from(welcome.heartbeat_interval_s.max(1)));
        let mut ticker = tokio::time::interval(heartbeat);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut sent_upto = welcome.acked_seq;
        loop {
            // Send everything journaled and not yet sent on this session.
            let unsent: Vec<pb::AgentMessage> = self
                .journal
                .locked()
                .unacked()
                .into_iter()
                .filter(|m| m.seq > sent_upto)
                .collect();
            for m in unsent {
                sent_upto = m.seq;
                tx.send(m).await?;
            }
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                () = self.journaled.notified() => {}
                _ = ticker.tick() => {
                    let running = self.jobs.locked().len() as u32;
                    tx.send(pb::AgentMessage {
                        seq: 0,
                        body: Some(pb::agent_message::Body::Heartbeat(pb::Heartbeat {
                            at_ms: now_ms(),
                            running_tasks: running,
                            transports: self.transport_instances(),
                        })),
                    })
                    .await?;
                }
                msg = inbound.next() => match msg {
                    None => return Ok(()),
                    Some(Err(status)) => anyhow::bail!("stream from the server broke: {:?}: {}", status.code(), status.message()),
                    Some(Ok(m)) => self.clone().on_command(m, channel.clone()).await?,
                },
            }
        }
    }

    pub(super) async fn on_command(
        self: Arc<Self>,
        msg: pb::ServerMessage,
        channel: Channel,
    ) -> anyhow::Result<()> {
        let command_id = msg.command_id;
        let trace = msg.trace_context;
        match msg.body {
            Some(pb::server_message::Body::Ack(a)) => {
                write_journal(&self.journal, move |j| j.ack(a.acked_seq)).await?;
            }
            Some(pb::server_message::Body::Refused(r)) => {
                let seq = r.seq;
                let kind = write_journal(&self.journal, move |j| j.refuse(seq)).await?;
                let reason: String = r.reason.chars().take(200).collect();
                warn!(
                    seq,
                    kind = kind.unwrap_or("unknown"),
                    %reason,
                    "otad refused a report; it is dropped from the journal and not sent again"
                );
                if let Some(m) = self.instruments() {
                    m.report_refused(kind.unwrap_or("unknown"));
                }
            }
            Some(pb::server_message::Body::Check(c)) => {
                let span = info_span!(parent: None, "agent.check", check.id = %c.check_id, site.id = %self.opts.site_id, devices = c.device_local_ids.len());
                ota_telemetry::traces::set_parent_from(&span, &trace);
                tokio::spawn(self.clone().run_check(c).instrument(span));
            }
            Some(pb::server_message::Body::Update(u)) => {
                self.start_update(command_id, u, channel, &trace).await?
            }
            Some(pb::server_message::Body::Cancel(c)) => {
                let token = self.jobs.locked().get(&c.task_id).cloned();
                match token {
                    Some(t) => {
                        info!(task.id = %c.task_id, reason = %c.reason, "cancel requested");
                        t.cancel();
                    }
                    None => debug!(task.id = %c.task_id, "cancel for a task not running here"),
                }
            }
            Some(pb::server_message::Body::Probe(p)) => {
                debug!(devices = p.device_local_ids.len(), "probe requested");
                tokio::spawn(self.clone().probe(p.device_local_ids));
            }
            Some(pb::server_message::Body::Welcome(_))
            | Some(pb::server_message::Body::Ping(_))
            | None => {}
        }
        Ok(())
    }
}
