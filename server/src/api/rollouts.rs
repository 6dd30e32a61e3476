//! `RolloutService`: create, plan, approve or deny (four eyes, `ota_domain::rollout::approval`),
//! start, pause, resume, abort, roll back (`ota_domain::rollout::rollback`), read and watch
//! staged rollouts.
//!
//! Handlers check the lifecycle (`ota_domain::rollout::lifecycle`) inside the decision they run
//! through `Core::execute`, so two operators racing on the same rollout cannot both win: the
//! rollout stream is appended with the version the decision saw. Illegal moves are
//! `FailedPrecondition` with the reason ("rollout ro-x is completed: it cannot be resumed (it is
//! final)"). What happens after a start is the rollout loop's business (`crate::rollouts`).

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use ota_domain::events::{DomainEvent, RolloutCreated, RolloutPaused, RolloutResumed, streams};
use ota_domain::projection::{FleetState, RolloutView, TaskView};
use ota_domain::rollout::approval::{self, ApprovalError};
use ota_domain::rollout::eta;
use ota_domain::rollout::lifecycle::{Action, transition};
use ota_domain::rollout::plan::{self, Plan};
use ota_domain::rollout::rollback::{self, Ask, RollbackError, RollbackScope};
use ota_domain::rollout::scheduler;
use ota_domain::rollout::spec::RolloutSpec;
use ota_proto::v1 as pb;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::{Instrument, info, info_span};

use super::caller::{Role, caller};
use super::convert;
use super::devices::new_id;
use super::error::{ApiError, ApiResult};
use super::paging::Page;
use crate::app::App;
use crate::core::Change;
use crate::quote::quote;

/// The service.
#[derive(Debug, Clone)]
pub struct RolloutApi {
    app: Arc<App>,
}

impl RolloutApi {
    /// A service over the app.
    pub fn new(app: Arc<App>) -> Self {
        Self { app }
    }
}

fn find<'a>(state: &'a FleetState, id: &str) -> ApiResult<&'a RolloutView> {
    if id.trim().is_empty() {
        return Err(ApiError::invalid("rollout id is required"));
    }
    state.rollouts.get(id.trim()).ok_or_else(|| {
        ApiError::not_found(format!(
            "no rollout {}: `otactl rollout list` shows the rollouts",
            quote(id)
        ))
    })
}

fn spec_from(spec: Option<&pb::RolloutSpec>) -> ApiResult<RolloutSpec> {
    let spec = spec.ok_or_else(|| ApiError::invalid("spec is required"))?;
    convert::spec_from_pb(spec).map_err(|e| ApiError::invalid(e.to_string()))
}

fn require_firmware(state: &FleetState, spec: &RolloutSpec) -> ApiResult<()> {
    if state.firmware.contains_key(&spec.firmware_id) {
        Ok(())
    } else {
        Err(ApiError::precondition(format!(
            "firmware {} is not in the catalog: upload it first (`otactl firmware upload`)",
            spec.firmware_id
        )))
    }
}

fn lifecycle(r: &RolloutView, action: Action) -> ApiResult<()> {
    transition(&r.id, r.state, action)
        .map(|_| ())
        .map_err(|e| ApiError::precondition(e.to_string()))
}

/// A reason with who gave it: "vendor asked (alice)", or "paused by alice".
fn reason(given: &str, verb: &str, who: &str) -> String {
    let given = given.trim();
    if given.is_empty() {
        format!("{verb} by {who}")
    } else {
        format!(
            "{} ({verb} by {who})",
            given.chars().take(500).collect::<String>()
        )
    }
}

/// A plan on the wire.
pub fn plan_pb(p: &Plan) -> pb::RolloutPlan {
    let (exclusions, exclusion_count) = convert::first_listed(&p.exclusions, convert::exclusion);
    pb::RolloutPlan {
        stages: p
            .stages
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let (device_ids, device_count) =
                    convert::first_listed(&s.device_ids, String::clone);
                pb::PlannedStage {
                    index: i as u32,
                    name: s.name.clone(),
                    device_ids,
                    device_count,
                    estimated_s: s.estimated_s.min(u64::from(u32::MAX)) as u32,
                    canaries: s.canaries.iter().map(convert::canary_group).collect(),
                }
            })
            .collect(),
        exclusions,
        exclusion_count,
        estimated_duration_s: p.estimated_s.min(u64::from(u32::MAX)) as u32,
        warnings: p.warnings.clone(),
        policies: p.policies.clone(),
        target_count: p.target_count,
        makespan_s: p.makespan_s.map(|s| s.min(u64::from(u32::MAX)) as u32),
        notes: p.notes.clone(),
        zigbee_airtime: p
            .airtime
            .iter()
            .map(|a| pb::ZigbeeAirtime {
                site_id: a.site_id.clone(),
                network: a.network.clone(),
                airtime_s: a.airtime_s.min(u64::from(u32::MAX)) as u32,
                share_percent: (a.share_percent(p.makespan_s.unwrap_or(0)) * 10.0).round() / 10.0,
            })
            .collect(),
    }
}

/// The rollout's own tasks (not auto-upgrade tasks naming it as their source), by device id.
fn rollout_tasks<'a>(r: &RolloutView, state: &'a FleetState) -> Vec<&'a TaskView> {
    let mut tasks: Vec<&TaskView> = r
        .tasks_by_device
        .values()
        .filter_map(|id| state.tasks.get(id).map(Box::as_ref))
        .collect();
    tasks.sort_by(|a, b| a.created.device_id.cmp(&b.created.device_id));
    tasks
}

type ProgressStream = Pin<Box<dyn Stream<Item = Result<pb::RolloutProgress, Status>> + Send>>;

fn approval_error(e: ApprovalError) -> ApiError {
    match e {
        ApprovalError::OwnRollout(_) => ApiError::PermissionDenied(e.to_string()),
        ApprovalError::NoReason => ApiError::invalid(e.to_string()),
        _ => ApiError::precondition(e.to_string()),
    }
}

fn rollback_error(e: RollbackError) -> ApiError {
    match e {
        RollbackError::NoScope => ApiError::invalid(e.to_string()),
        _ => ApiError::precondition(e.to_string()),
    }
}

impl RolloutApi {
    fn answer(&self, id: &str) -> Result<Response<pb::Rollout>, Status> {
        let state = self.app.core.read();
        let r = find(&state, id)?;
        Ok(Response::new(convert::rollout(r, &state)))
    }

    /// Records an approval or a denial (four eyes) decided by `approval::decide`.
    async fn decide_approval(
        &self,
        request: Request<pb::RolloutActionRequest>,
        approve: bool,
    ) -> Result<Response<pb::Rollout>, Status> {
        let who = caller(&request);
        who.require(Role::Operator)?;
        let req = request.into_inner();
        let actor = who.actor();
        self.app
            .core
            .execute::<ApiError, _>(&actor, |state| {
                let r = find(state, &req.id)?;
                let event =
                    approval::decide(r, &actor, approve, &req.reason).map_err(approval_error)?;
                Ok(vec![Change::unchanged(
                    streams::rollout(&r.id),
                    vec![event],
                )])
            })
            .await?;
        info!(approved = approve, "rollout approval decided");
        self.answer(&req.id)
    }

    /// Runs an operator's lifecycle move that records one event, made from the reason given
    /// (see [`reason`], with `verb`), on the rollout stream; answers with the rollout.
    async fn simple_move(
        &self,
        request: Request<pb::RolloutActionRequest>,
        action: Action,
        verb: &str,
        event: impl FnOnce(String) -> DomainEvent,
    ) -> Result<Response<pb::Rollout>, Status> {
        let who = caller(&request);
        who.require(Role::Operator)?;
        let req = request.into_inner();
        let actor = who.actor();
        let event = event(reason(&req.reason, verb, &actor.name));
        self.app
            .core
            .execute::<ApiError, _>(&actor, |state| {
                let r = find(state, &req.id)?;
                lifecycle(r, action)?;
                Ok(vec![Change::unchanged(
                    streams::rollout(&r.id),
                    vec![event.clone()],
                )])
            })
            .await?;
        self.app.dispatch_wake.notify_one();
        self.answer(&req.id)
    }
}

#[tonic::async_trait]
impl pb::rollout_service_server::RolloutService for RolloutApi {
    #[tracing::instrument(skip_all)]
    async fn create(
        &self,
        request: Request<pb::CreateRolloutRequest>,
    ) -> Result<Response<pb::Rollout>, Status> {
        let who = caller(&request);
        who.require(Role::Operator)?;
        let req = request.into_inner();
        let spec = spec_from(req.spec.as_ref())?;
        let id = new_id("ro");
        let needs_approval = approval::required(
            self.app.config.require_approval,
            req.spec.as_ref().is_some_and(|s| s.require_approval),
        );
        // A rollout that needs approval stays a draft even when asked to start.
        let start = req.start && needs_approval.is_none();
        self.app
            .core
            .execute::<ApiError, _>(&who.actor(), |state| {
                require_firmware(state, &spec)?;
                let mut events: Vec<DomainEvent> = vec![
                    RolloutCreated {
                        id: id.clone(),
                        spec: spec.clone(),
                    }
                    .into(),
                ];
                events.extend(needs_approval.clone());
                if start {
                    events.extend(plan::plan(&spec, state).started_events());
                }
                Ok(vec![Change::new_stream(streams::rollout(&id), events)])
            })
            .await?;
        info!(rollout.id = %id, start, approval = needs_approval.is_some(), "rollout created");
        self.answer(&id)
    }

    #[tracing::instrument(skip_all)]
    async fn plan(
        &self,
        request: Request<pb::PlanRolloutRequest>,
    ) -> Result<Response<pb::RolloutPlan>, Status> {
        caller(&request).require(Role::Viewer)?;
        let req = request.into_inner();
        let now = Some(self.app.core.clock().now());
        let state = self.app.core.read();
        let plan = match req.subject {
            Some(pb::plan_rollout_request::Subject::Spec(s)) => {
                let spec = spec_from(Some(&s))?;
                require_firmware(&state, &spec)?;
                plan::plan_at(&spec, &state, now)
            }
            Some(pb::plan_rollout_request::Subject::RolloutId(id)) => {
                let r = find(&state, &id)?;
                if !matches!(
                    r.state,
                    ota_domain::projection::RolloutState::Draft
                        | ota_domain::projection::RolloutState::Paused
                ) {
                    return Err(ApiError::precondition(format!(
                        "rollout {} is {}: only draft and paused rollouts can be re-planned (`otactl rollout show {}` lists its stages)",
                        r.id,
                        r.state.name(),
                        r.id
                    ))
                    .into());
                }
                plan::plan_at(&r.spec, &state, now)
            }
            None => return Err(ApiError::invalid("give a spec or a rollout_id to plan").into()),
        };
        Ok(Response::new(plan_pb(&plan)))
    }

    #[tracing::instrument(skip_all, fields(rollout.id = %request.get_ref().id))]
    async fn start(
        &self,
        request: Request<pb::RolloutActionRequest>,
    ) -> Result<Response<pb::Rollout>, Status> {
        let who = caller(&request);
        who.require(Role::Operator)?;
        let id = request.get_ref().id.clone();
        self.app
            .core
            .execute::<ApiError, _>(&who.actor(), |state| {
                let r = find(state, &id)?;
                lifecycle(r, Action::Start)?;
                approval::may_start(r).map_err(|e| ApiError::precondition(e.to_string()))?;
                require_firmware(state, &r.spec)?;
                let started = plan::plan(&r.spec, state).started_events();
                Ok(vec![Change::unchanged(streams::rollout(&r.id), started)])
            })
            .await?;
        info!("rollout started");
        self.answer(&id)
    }

    #[tracing::instrument(skip_all, fields(rollout.id = %request.get_ref().id))]
    async fn pause(
        &self,
        request: Request<pb::RolloutActionRequest>,
    ) -> Result<Response<pb::Rollout>, Status> {
        self.simple_move(request, Action::Pause, "paused", |reason| {
            RolloutPaused {
                reason,
                automatic: false,
            }
            .into()
        })
        .await
    }

    #[tracing::instrument(skip_all, fields(rollout.id = %request.get_ref().id))]
    async fn resume(
        &self,
        request: Request<pb::RolloutActionRequest>,
    ) -> Result<Response<pb::Rollout>, Status> {
        self.simple_move(request, Action::Resume, "resumed", |reason| {
            RolloutResumed { reason }.into()
        })
        .await
    }

    #[tracing::instrument(skip_all, fields(rollout.id = %request.get_ref().id))]
    async fn abort(
        &self,
        request: Request<pb::RolloutActionRequest>,
    ) -> Result<Response<pb::Rollout>, Status> {
        let who = caller(&request);
        who.require(Role::Operator)?;
        let req = request.into_inner();
        let why = reason(&req.reason, "aborted", &who.actor().name);
        let mut cancels = Vec::new();
        self.app
            .core
            .execute::<ApiError, _>(&who.actor(), |state| {
                let r = find(state, &req.id)?;
                lifecycle(r, Action::Abort)?;
                let d = scheduler::abort(r, state, &why, false);
                cancels = d.cancels.clone();
                let mut changes = vec![Change::unchanged(
                    streams::rollout(&r.id),
                    d.rollout_events.clone(),
                )];
                for (task_id, e) in &d.task_events {
                    changes.push(Change::unchanged(streams::task(task_id), vec![e.clone()]));
                }
                Ok(changes)
            })
            .await?;
        crate::rollouts::send_cancels(&self.app, &cancels);
        self.app.dispatch_wake.notify_one();
        info!(cancelled_at_sites = cancels.len(), "rollout aborted");
        self.answer(&req.id)
    }

    #[tracing::instrument(skip_all, fields(rollout.id = %request.get_ref().id))]
    async fn rollback(
        &self,
        request: Request<pb::RollbackRolloutRequest>,
    ) -> Result<Response<pb::Rollout>, Status> {
        let who = caller(&request);
        who.require(Role::Operator)?;
        let req = request.into_inner();
        let actor = who.actor();
        let asked = convert::rollback_scope_from(req.scope, "scope")
            .map_err(|e| ApiError::invalid(e.to_string()))?;
        let why = reason(&req.reason, "rolled back", &actor.name);
        let mut linked = String::new();
        self.app
            .core
            .execute::<ApiError, _>(&actor, |state| {
                let r = find(state, &req.id)?;
                rollback::may_roll_back(r).map_err(rollback_error)?;
                let scope = match (asked, r.spec.rollback) {
                    (RollbackScope::None, RollbackScope::None) => RollbackScope::Failed,
                    (RollbackScope::None, spec) => spec,
                    (asked, _) => asked,
                };
                let ask = Ask {
                    scope,
                    automatic: false,
                    reason: why.clone(),
                    approval: approval::required(
                        self.app.config.require_approval,
                        r.approval != ota_domain::projection::Approval::NotRequired,
                    ),
                    start: req.start,
                };
                let rb = rollback::rollback(r, state, ask).map_err(rollback_error)?;
                linked = rb.id.clone();
                Ok(rb.changes(&r.id))
            })
            .await?;
        info!(rollback.id = %linked, "rollout rolled back");
        self.app.dispatch_wake.notify_one();
        self.answer(&linked)
    }

    #[tracing::instrument(skip_all, fields(rollout.id = %request.get_ref().id))]
    async fn approve(
        &self,
        request: Request<pb::RolloutActionRequest>,
    ) -> Result<Response<pb::Rollout>, Status> {
        self.decide_approval(request, true).await
    }

    #[tracing::instrument(skip_all, fields(rollout.id = %request.get_ref().id))]
    async fn deny(
        &self,
        request: Request<pb::RolloutActionRequest>,
    ) -> Result<Response<pb::Rollout>, Status> {
        self.decide_approval(request, false).await
    }

    async fn get(
        &self,
        request: Request<pb::GetRolloutRequest>,
    ) -> Result<Response<pb::Rollout>, Status> {
        caller(&request).require(Role::Viewer)?;
        self.answer(&request.get_ref().id)
    }

    async fn list(
        &self,
        request: Request<pb::ListRolloutsRequest>,
    ) -> Result<Response<pb::ListRolloutsResponse>, Status> {
        caller(&request).require(Role::Viewer)?;
        let req = request.into_inner();
        let page = Page::from_pb(req.page.as_ref())?;
        let only = convert::rollout_state_from(req.state).map_err(ApiError::invalid)?;
        let state = self.app.core.read();
        let mut rollouts: Vec<&RolloutView> = state
            .rollouts
            .values()
            .filter(|r| only.is_none_or(|s| r.state == s))
            .collect();
        // Newest first.
        rollouts.sort_by(|a, b| (b.created_at_ms, &b.id).cmp(&(a.created_at_ms, &a.id)));
        let (rollouts, next_page_token) = page.apply(rollouts);
        Ok(Response::new(pb::ListRolloutsResponse {
            rollouts: rollouts
                .into_iter()
                .map(|r| convert::rollout(r, &state))
                .collect(),
            next_page_token,
        }))
    }

    type WatchStream = ProgressStream;

    async fn watch(
        &self,
        request: Request<pb::WatchRolloutRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        caller(&request).require(Role::Viewer)?;
        let req = request.into_inner();
        // Subscribe before the first snapshot so no change falls between them.
        let mut applied = self.app.core.subscribe_applied();
        let id = {
            let state = self.app.core.read();
            find(&state, &req.id)?.id.clone()
        };
        let app = self.app.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let rollout_stream = streams::rollout(&id);
        let span = info_span!("rollouts.watch", rollout.id = %id);
        tokio::spawn(
            async move {
                // None: send every task of the rollout (first message, or after lagging).
                let mut changed: Option<HashSet<String>> = None;
                loop {
                    let (message, done) = {
                        let state = app.core.read();
                        let Some(r) = state.rollouts.get(&id) else {
                            return;
                        };
                        let tasks = if !req.include_tasks {
                            Vec::new()
                        } else {
                            rollout_tasks(r, &state)
                                .into_iter()
                                .filter(|t| {
                                    changed
                                        .as_ref()
                                        .is_none_or(|c| c.contains(&t.created.task_id))
                                })
                                .map(convert::task)
                                .collect()
                        };
                        (
                            pb::RolloutProgress {
                                rollout: Some(convert::rollout(r, &state)),
                                tasks,
                                seq: state.last_seq,
                                remaining_s: eta::remaining_s(r, &state, app.core.clock().now())
                                    .map(|s| s.min(u64::from(u32::MAX)) as u32),
                            },
                            r.state.is_terminal(),
                        )
                    };
                    if tx.send(Ok(message)).await.is_err() || done {
                        return;
                    }
                    // Wait for a change of the rollout or one of its tasks, then take whatever
                    // else is already there.
                    let mut set = HashSet::new();
                    let mut lagged = false;
                    let relevant = |a: &crate::core::Applied, set: &mut HashSet<String>| {
                        if a.stream == rollout_stream {
                            return true;
                        }
                        match a.stream.strip_prefix(streams::TASK_PREFIX) {
                            Some(task_id) if belongs(&app, &id, task_id) => {
                                set.insert(task_id.to_string());
                                true
                            }
                            _ => false,
                        }
                    };
                    loop {
                        match applied.recv().await {
                            Ok(a) if relevant(&a, &mut set) => break,
                            Ok(_) => continue,
                            Err(RecvError::Lagged(_)) => {
                                lagged = true;
                                break;
                            }
                            Err(RecvError::Closed) => return,
                        }
                    }
                    loop {
                        match applied.try_recv() {
                            Ok(a) => {
                                relevant(&a, &mut set);
                            }
                            Err(TryRecvError::Lagged(_)) => lagged = true,
                            Err(TryRecvError::Empty | TryRecvError::Closed) => break,
                        }
                    }
                    changed = if lagged { None } else { Some(set) };
                }
            }
            .instrument(span),
        );
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Whether a task is one of the rollout's own.
fn belongs(app: &App, rollout_id: &str, task_id: &str) -> bool {
    let state = app.core.read();
    state
        .tasks
        .get(task_id)
        .is_some_and(|t| !t.created.auto && t.created.rollout_id.as_deref() == Some(rollout_id))
}
