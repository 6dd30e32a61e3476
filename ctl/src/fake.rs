//! Test support: an in-process gRPC server with scripted RolloutService and AccessService
//! answers, for unit tests of the rollout and token commands that need answers a real otad
//! cannot be brought to give quickly and exactly: a watch stream that aborts halfway, a plan
//! with chosen exclusions, a refused action, a token that is not there. (`tests/e2e.rs` and
//! `tests/security.rs` run the same commands against a real otad.)
//!
//! The fakes record every request they get and answer from a script; the little logic they
//! hold is echoing (a created rollout's spec and state) and refusing ids they do not know
//! (`Get`, `RevokeToken`), so tests check what otactl sends and how it presents what comes back.

use std::pin::Pin;
use std::sync::{Arc, Mutex};

use ota_proto::v1 as pb;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::cli::{GlobalArgs, OutputFormat};
use crate::client::Settings;
use crate::cmd::Ctx;
use crate::output::Printer;

/// What the fakes were asked, in order (`"Method: <debug of the request>"`).
pub type Log = Arc<Mutex<Vec<String>>>;

/// Scripted rollout answers.
#[derive(Debug, Clone, Default)]
pub struct Rollouts {
    /// Messages `Watch` streams, then it ends.
    pub watch: Vec<pb::RolloutProgress>,
    /// What `Plan` answers.
    pub plan: pb::RolloutPlan,
    /// What `Get`, `List` and the actions answer with.
    pub rollout: pb::Rollout,
    /// Requests seen.
    pub log: Log,
}

fn record<T: std::fmt::Debug>(log: &Log, method: &str, req: &T) {
    if let Ok(mut l) = log.lock() {
        l.push(format!("{method}: {req:?}"));
    }
}

type ProgressStream = Pin<Box<dyn Stream<Item = Result<pb::RolloutProgress, Status>> + Send>>;

#[tonic::async_trait]
impl pb::rollout_service_server::RolloutService for Rollouts {
    async fn create(
        &self,
        r: Request<pb::CreateRolloutRequest>,
    ) -> Result<Response<pb::Rollout>, Status> {
        let req = r.into_inner();
        record(&self.log, "Create", &req);
        Ok(Response::new(pb::Rollout {
            spec: req.spec,
            state: if req.start {
                pb::RolloutState::Running as i32
            } else {
                pb::RolloutState::Draft as i32
            },
            ..self.rollout.clone()
        }))
    }

    async fn plan(
        &self,
        r: Request<pb::PlanRolloutRequest>,
    ) -> Result<Response<pb::RolloutPlan>, Status> {
        record(&self.log, "Plan", r.get_ref());
        Ok(Response::new(self.plan.clone()))
    }

    async fn start(
        &self,
        r: Request<pb::RolloutActionRequest>,
    ) -> Result<Response<pb::Rollout>, Status> {
        record(&self.log, "Start", r.get_ref());
        Ok(Response::new(self.rollout.clone()))
    }

    async fn pause(
        &self,
        r: Request<pb::RolloutActionRequest>,
    ) -> Result<Response<pb::Rollout>, Status> {
        record(&self.log, "Pause", r.get_ref());
        Ok(Response::new(pb::Rollout {
            state: pb::RolloutState::Paused as i32,
            state_reason: r.get_ref().reason.clone(),
            ..self.rollout.clone()
        }))
    }

    async fn resume(
        &self,
        r: Request<pb::RolloutActionRequest>,
    ) -> Result<Response<pb::Rollout>, Status> {
        record(&self.log, "Resume", r.get_ref());
        Ok(Response::new(self.rollout.clone()))
    }

    async fn abort(
        &self,
        r: Request<pb::RolloutActionRequest>,
    ) -> Result<Response<pb::Rollout>, Status> {
        record(&self.log, "Abort", r.get_ref());
        Err(Status::failed_precondition(format!(
            "rollout {} is completed; only running, paused or draft rollouts can be aborted",
            r.get_ref().id
        )))
    }

    async fn approve(
        &self,
        r: Request<pb::RolloutActionRequest>,
    ) -> Result<Response<pb::Rollout>, Status> {
        record(&self.log, "Approve", r.get_ref());
        Err(Status::permission_denied(format!(
            "you created rollout {}: another operator or admin must approve or deny it (four eyes)",
            r.get_ref().id
        )))
    }

    async fn deny(
        &self,
        r: Request<pb::RolloutActionRequest>,
    ) -> Result<Response<pb::Rollout>, Status> {
        record(&self.log, "Deny", r.get_ref());
        Err(Status::failed_precondition(format!(
            "rollout {} does not need approval: start it with `otactl rollout start {}`",
            r.get_ref().id,
            r.get_ref().id
        )))
    }

    async fn rollback(
        &self,
        r: Request<pb::RollbackRolloutRequest>,
    ) -> Result<Response<pb::Rollout>, Status> {
        record(&self.log, "Rollback", r.get_ref());
        Err(Status::failed_precondition(format!(
            "rollout {0} is running: pause or abort it first (`otactl rollout abort {0}`), then roll it back",
            r.get_ref().id
        )))
    }

    async fn get(
        &self,
        r: Request<pb::GetRolloutRequest>,
    ) -> Result<Response<pb::Rollout>, Status> {
        record(&self.log, "Get", r.get_ref());
        if r.get_ref().id == self.rollout.id {
            Ok(Response::new(self.rollout.clone()))
        } else {
            Err(Status::not_found(format!(
                "no rollout {:?}",
                r.get_ref().id
            )))
        }
    }

    async fn list(
        &self,
        r: Request<pb::ListRolloutsRequest>,
    ) -> Result<Response<pb::ListRolloutsResponse>, Status> {
        record(&self.log, "List", r.get_ref());
        Ok(Response::new(pb::ListRolloutsResponse {
            rollouts: vec![self.rollout.clone()],
            next_page_token: String::new(),
        }))
    }

    type WatchStream = ProgressStream;

    async fn watch(
        &self,
        r: Request<pb::WatchRolloutRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        record(&self.log, "Watch", r.get_ref());
        let items: Vec<Result<pb::RolloutProgress, Status>> =
            self.watch.iter().cloned().map(Ok).collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(items))))
    }
}

/// Scripted token answers.
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// Requests seen.
    pub log: Log,
}

#[tonic::async_trait]
impl pb::access_service_server::AccessService for Access {
    async fn create_token(
        &self,
        r: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenResponse>, Status> {
        let req = r.into_inner();
        record(&self.log, "CreateToken", &req);
        Ok(Response::new(pb::CreateTokenResponse {
            info: Some(pb::TokenInfo {
                id: "tok-1".into(),
                name: req.name,
                role: req.role,
                created_at_ms: 1_700_000_000_000,
                expires_at_ms: 0,
                revoked: false,
                created_by: None,
            }),
            token: "tok-1.s3cr3t".into(),
        }))
    }

    async fn list_tokens(
        &self,
        r: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        record(&self.log, "ListTokens", r.get_ref());
        Ok(Response::new(pb::ListTokensResponse {
            tokens: vec![pb::TokenInfo {
                id: "tok-1".into(),
                name: "ci".into(),
                role: pb::Role::Viewer as i32,
                ..Default::default()
            }],
        }))
    }

    async fn revoke_token(
        &self,
        r: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::TokenInfo>, Status> {
        record(&self.log, "RevokeToken", r.get_ref());
        if r.get_ref().id != "tok-1" {
            return Err(Status::not_found(format!("no token {:?}", r.get_ref().id)));
        }
        Ok(Response::new(pb::TokenInfo {
            id: "tok-1".into(),
            name: "ci".into(),
            role: pb::Role::Viewer as i32,
            revoked: true,
            ..Default::default()
        }))
    }
}

/// A running fake; stops when dropped.
#[derive(Debug)]
pub struct Server {
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves the fakes on a loopback port.
pub async fn serve(rollouts: Rollouts, access: Access) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let url = format!("http://{}", listener.local_addr().expect("local addr"));
    let router = tonic::transport::Server::builder()
        .add_service(pb::rollout_service_server::RolloutServiceServer::new(
            rollouts,
        ))
        .add_service(pb::access_service_server::AccessServiceServer::new(access));
    let task = tokio::spawn(async move {
        router
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
            .ok();
    });
    Server { url, task }
}

/// A context talking to `url`, printing into the returned buffer.
pub fn ctx(url: &str, format: OutputFormat) -> (Ctx, Arc<Mutex<Vec<u8>>>) {
    let settings = Settings::resolve(&GlobalArgs {
        server: url.to_string(),
        token: None,
        dev_actor: None,
        ca_cert: None,
        output: format,
        timeout: None,
    })
    .expect("settings");
    let (printer, buf) = Printer::capturing(format);
    (Ctx::new(settings, printer), buf)
}

/// What was printed so far.
pub fn printed(buf: &Arc<Mutex<Vec<u8>>>) -> String {
    String::from_utf8_lossy(&buf.lock().expect("buffer")).into_owned()
}
