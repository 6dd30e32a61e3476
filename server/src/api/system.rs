//! `SystemService` and `SiteService`: the server's own health, and the sites with their agents.

use std::sync::Arc;

use ota_proto::v1 as pb;
use tonic::{Request, Response, Status};

use super::caller::{Role, caller};
use super::convert;
use super::error::ApiError;
use crate::app::App;
use crate::quote::quote;

/// Both services.
#[derive(Debug, Clone)]
pub struct SystemApi {
    app: Arc<App>,
    tls: bool,
    auth_required: bool,
}

impl SystemApi {
    /// Services over the app; `tls` and `auth_required` describe the listener.
    pub fn new(app: Arc<App>, tls: bool, auth_required: bool) -> Self {
        Self {
            app,
            tls,
            auth_required,
        }
    }
}

#[tonic::async_trait]
impl pb::system_service_server::SystemService for SystemApi {
    #[tracing::instrument(skip_all)]
    async fn status(
        &self,
        request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::ServerStatus>, Status> {
        let who = caller(&request);
        who.require(Role::Viewer)?;
        let app = &self.app;
        let now = app.now();
        let stats = app.core.store().stats();
        let state = app.core.read();
        Ok(Response::new(pb::ServerStatus {
            version: env!("CARGO_PKG_VERSION").into(),
            started_at_ms: app.started_at.as_i64(),
            uptime_s: now.since(app.started_at).as_secs(),
            event_log: Some(pb::EventLogStatus {
                last_seq: app.core.applied_seq(),
                size_bytes: stats.disk_bytes + app.blobs.size_bytes(),
                replay_ms: app.core.replay_duration().as_millis() as u64,
            }),
            connected_agents: app.sessions.connected_count() as u32,
            sites: state.sites.len() as u32,
            devices: state
                .devices
                .values()
                .map(Box::as_ref)
                .filter(|d| !d.removed)
                .count() as u32,
            firmware: state.firmware.len() as u32,
            rollouts_running: state
                .rollouts
                .values()
                .filter(|r| r.state == ota_domain::projection::RolloutState::Running)
                .count() as u32,
            tasks_active: state
                .tasks
                .values()
                .filter(|t| !t.phase.is_terminal())
                .count() as u32,
            tls: self.tls,
            auth_required: self.auth_required || crate::tokens::any_created(&state),
            caller: Some(convert::actor(&who.actor())),
        }))
    }
}

#[tonic::async_trait]
impl pb::site_service_server::SiteService for SystemApi {
    #[tracing::instrument(skip_all)]
    async fn list(
        &self,
        request: Request<pb::ListSitesRequest>,
    ) -> Result<Response<pb::ListSitesResponse>, Status> {
        caller(&request).require(Role::Viewer)?;
        let state = self.app.core.read();
        let sites = state
            .sites
            .values()
            .map(|s| {
                let hb = self.app.sessions.last_heartbeat(&s.id);
                convert::site(s, &state, hb)
            })
            .collect();
        Ok(Response::new(pb::ListSitesResponse { sites }))
    }

    #[tracing::instrument(skip_all, fields(site.id = %request.get_ref().id))]
    async fn get(
        &self,
        request: Request<pb::GetSiteRequest>,
    ) -> Result<Response<pb::Site>, Status> {
        caller(&request).require(Role::Viewer)?;
        let id = &request.get_ref().id;
        let state = self.app.core.read();
        let site = state.sites.get(id).ok_or_else(|| {
            ApiError::not_found(format!(
                "no site {}: `otactl site list` shows the known sites",
                quote(id)
            ))
        })?;
        let hb = self.app.sessions.last_heartbeat(id);
        Ok(Response::new(convert::site(site, &state, hb)))
    }
}
