//! Who is calling, and what they may do.
//!
//! Every handler asks [`caller`] for the identity the guard in front of every service
//! (`guard`) attached to the request, and checks it with [`Caller::require`]. The guard
//! attaches the local administrator only in development mode (plaintext listener, no access
//! tokens), which otad announces loudly; a request that reached a handler without the guard has
//! no rights at all.

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
    /// Nobody the authentication layer vouched for.
    Anonymous,
}

/// What a caller without credentials hears (the same for missing, wrong, expired and revoked).
pub const UNAUTHENTICATED: &str = "missing or invalid credentials";

impl Caller {
    /// The local administrator (no authentication configured).
    pub fn local_admin() -> Self {
        Self::Operator {
            name: "local".into(),
            role: Role::Admin,
        }
    }

    /// Whether this is the development-mode local administrator.
    pub fn is_local_admin(&self) -> bool {
        *self == Self::local_admin()
    }

    /// The actor recorded in events.
    pub fn actor(&self) -> Actor {
        match self {
            Self::Operator { name, role } => Actor {
                name: name.clone(),
                role: role.name().into(),
            },
            Self::Agent { site_id } => Actor::agent(site_id),
            Self::Anonymous => Actor {
                name: "anonymous".into(),
                role: String::new(),
            },
        }
    }

    /// Refuses callers below `role`. Agents have no operator role.
    pub fn require(&self, role: Role) -> Result<(), ApiError> {
        match self {
            Self::Operator { role: have, .. } if *have >= role => Ok(()),
            Self::Anonymous => Err(ApiError::Unauthenticated(UNAUTHENTICATED.into())),
            _ => Err(ApiError::PermissionDenied(format!(
                "this needs the {} role",
                role.name()
            ))),
        }
    }
}

/// The caller the authentication layer attached to a request; [`Caller::Anonymous`] without one.
pub fn caller<T>(request: &Request<T>) -> Caller {
    request
        .extensions()
        .get::<Caller>()
        .cloned()
        .unwrap_or(Caller::Anonymous)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_ordered_and_agents_have_none() {
        let viewer = Caller::Operator {
            name: "v".into(),
            role: Role::Viewer,
        };
        assert!(viewer.require(Role::Viewer).is_ok());
        let denied = viewer.require(Role::Operator).unwrap_err();
        assert_eq!(
            denied,
            ApiError::PermissionDenied("this needs the operator role".into())
        );
        assert!(Caller::local_admin().require(Role::Admin).is_ok());
        let agent = Caller::Agent {
            site_id: "home".into(),
        };
        assert!(matches!(
            agent.require(Role::Viewer),
            Err(ApiError::PermissionDenied(_))
        ));
        assert_eq!(agent.actor().label(), "agent:home (agent)");
    }

    #[test]
    fn a_request_without_a_vouched_caller_has_no_rights() {
        let request = Request::new(());
        assert_eq!(caller(&request), Caller::Anonymous);
        assert_eq!(
            caller(&request).require(Role::Viewer),
            Err(ApiError::Unauthenticated(UNAUTHENTICATED.into()))
        );
        let mut request = Request::new(());
        request.extensions_mut().insert(Caller::local_admin());
        assert!(caller(&request).is_local_admin());
    }
}
