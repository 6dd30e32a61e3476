//! Who is calling, and what they may do.
//!
//! Every handler asks [`caller`] for the identity the authentication layer attached to the
//! request, and checks it with [`Caller::require`]. Without an authentication layer (local
//! development), callers are the local administrator.

use ota_domain::model::Actor;
use tonic::Request;

use super::error::ApiError;

/// Roles, from least to most privileged. Agents are separate: they may only use the agent API
/// for their own site.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Read and watch.
    Viewer,
    /// Checks, updates, rollouts.
    Operator,
    /// Firmware, tokens, sites.
    Admin,
}

impl Role {
    /// Lowercase name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Viewer => "viewer",
            Self::Operator => "operator",
            Self::Admin => "admin",
        }
    }
}

/// The authenticated caller of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// An operator with a role.
    Operator {
        /// Who.
        name: String,
        /// What they may do.
        role: Role,
    },
    /// A site's agent.
    Agent {
        /// The site its credentials are bound to.
        site_id: String,
    },
}

impl Caller {
    /// The local administrator (no authentication configured).
    pub fn local_admin() -> Self {
        Self::Operator {
            name: "local".into(),
            role: Role::Admin,
        }
    }

    /// The actor recorded in events.
    pub fn actor(&self) -> Actor {
        match self {
            Self::Operator { name, role } => Actor {
                name: name.clone(),
                role: role.name().into(),
            },
            Self::Agent { site_id } => Actor::agent(site_id),
        }
    }

    /// Refuses callers below `role`. Agents have no operator role.
    pub fn require(&self, role: Role) -> Result<(), ApiError> {
        match self {
            Self::Operator { role: have, .. } if *have >= role => Ok(()),
            _ => Err(ApiError::PermissionDenied(format!(
                "this needs the {} role",
                role.name()
            ))),
        }
    }
}

/// The caller attached to a request by the authentication layer, or the local administrator.
pub fn caller<T>(request: &Request<T>) -> Caller {
    request
        .extensions()
        .get::<Caller>()
        .cloned()
        .unwrap_or_else(Caller::local_admin)
}
