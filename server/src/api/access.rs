//! `AccessService`: operator tokens (admin only).
//!
//! A token's secret is shown once, in the `CreateToken` answer; the log keeps its SHA-256
//! (`TokenCreated`), so neither `ListTokens`, `EventService.Tail` nor a copy of the data
//! directory reveals it. Revoking is recorded as `TokenRevoked` and takes effect on the next
//! request. The last usable admin token cannot be revoked (create another first), so an
//! installation cannot lock itself out by accident.

use std::sync::Arc;

use ota_domain::events::{TokenRevoked, streams};
use ota_domain::projection::TokenView;
use ota_proto::v1 as pb;
use tonic::{Request, Response, Status};
use tracing::info;

use super::bounds::MAX_TOKEN_TTL_S;
use super::caller::{Role, caller};
use super::convert;
use super::error::{ApiError, ApiResult};
use crate::app::App;
use crate::core::Change;
use crate::quote::quote;
use crate::tokens::{self, NewToken};

/// The service.
#[derive(Debug, Clone)]
pub struct AccessApi {
    app: Arc<App>,
}

impl AccessApi {
    /// A service over the app.
    pub fn new(app: Arc<App>) -> Self {
        Self { app }
    }
}

fn role_pb(t: &TokenView) -> i32 {
    (match tokens::role_of(t) {
        Some(Role::Viewer) => pb::Role::Viewer,
        Some(Role::Operator) => pb::Role::Operator,
        Some(Role::Admin) => pb::Role::Admin,
        None => pb::Role::Unspecified,
    }) as i32
}

fn info(t: &TokenView) -> pb::TokenInfo {
    pb::TokenInfo {
        id: t.id.clone(),
        name: t.name.clone(),
        role: role_pb(t),
        created_at_ms: t.created_at_ms.as_i64(),
        expires_at_ms: t.expires_at_ms.as_i64(),
        revoked: t.revoked,
        created_by: Some(convert::actor_from_label(&t.created_by)),
    }
}

fn role_from(v: i32) -> ApiResult<Role> {
    match pb::Role::try_from(v) {
        Ok(pb::Role::Viewer) => Ok(Role::Viewer),
        Ok(pb::Role::Operator) => Ok(Role::Operator),
        Ok(pb::Role::Admin) => Ok(Role::Admin),
        _ => Err(ApiError::invalid(format!(
            "role {v} is not valid: 1 viewer, 2 operator, 3 admin"
        ))),
    }
}

#[tonic::async_trait]
impl pb::access_service_server::AccessService for AccessApi {
    #[tracing::instrument(skip_all)]
    async fn create_token(
        &self,
        request: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenResponse>, Status> {
        let who = caller(&request);
        who.require(Role::Admin)?;
        let req = request.into_inner();
        let name = req.name.trim();
        tokens::validate_name(name).map_err(ApiError::invalid)?;
        let role = role_from(req.role)?;
        if req.ttl_s > MAX_TOKEN_TTL_S {
            return Err(ApiError::invalid(format!(
                "ttl_s is {}: at most {MAX_TOKEN_TTL_S} (ten years)",
                req.ttl_s
            ))
            .into());
        }
        let expires = (req.ttl_s != 0).then(|| self.app.now().plus_secs(req.ttl_s));
        let token = NewToken::generate().map_err(|e| {
            tracing::error!(error = %e, "cannot make a token");
            ApiError::Internal("the server could not make a token; see the otad log".into())
        })?;
        let created = token.created(name, role, expires);
        self.app
            .core
            .execute::<ApiError, _>(&who.actor(), |_| {
                Ok(vec![Change::any(
                    streams::ACCESS,
                    vec![created.clone().into()],
                )])
            })
            .await?;
        info!(token.id = %token.id, token.name = %name, role = role.name(), "token created");
        let state = self.app.core.read();
        let view = state
            .tokens
            .get(&token.id)
            .ok_or_else(|| ApiError::Internal("token vanished".into()))?;
        Ok(Response::new(pb::CreateTokenResponse {
            info: Some(info(view)),
            token: token.bearer(),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn list_tokens(
        &self,
        request: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        caller(&request).require(Role::Admin)?;
        let state = self.app.core.read();
        let mut all: Vec<&TokenView> = state.tokens.values().collect();
        all.sort_by(|a, b| (b.created_at_ms, &b.id).cmp(&(a.created_at_ms, &a.id)));
        Ok(Response::new(pb::ListTokensResponse {
            tokens: all.into_iter().map(info).collect(),
        }))
    }

    #[tracing::instrument(skip_all, fields(token.id = %request.get_ref().id))]
    async fn revoke_token(
        &self,
        request: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::TokenInfo>, Status> {
        let who = caller(&request);
        who.require(Role::Admin)?;
        let id = request.into_inner().id.trim().to_string();
        let now = self.app.now();
        self.app
            .core
            .execute::<ApiError, _>(&who.actor(), |state| {
                let t = state.tokens.get(&id).ok_or_else(|| {
                    ApiError::not_found(format!(
                        "no token {}: `otactl token list` shows the tokens",
                        quote(&id)
                    ))
                })?;
                if t.revoked {
                    return Ok(vec![]);
                }
                if tokens::is_active(t, now)
                    && tokens::role_of(t) == Some(Role::Admin)
                    && tokens::active_admins(state, now) == 1
                {
                    return Err(ApiError::precondition(format!(
                        "{id} is the last admin token: create another admin token first (`otactl token create NAME --role admin`)"
                    )));
                }
                Ok(vec![Change::any(
                    streams::ACCESS,
                    vec![TokenRevoked { id: id.clone() }.into()],
                )])
            })
            .await?;
        info!(token.id = %id, "token revoked");
        let state = self.app.core.read();
        let view = state
            .tokens
            .get(&id)
            .ok_or_else(|| ApiError::Internal("token vanished".into()))?;
        Ok(Response::new(info(view)))
    }
}
