//! Who is acting, and what their role lets them do: an operator with a
//! session (browsers) or an API token (scripts, the CLI), or the holder of the
//! host's admin token. Callers are authenticated in `super::sign_in`; every
//! operation that needs more than reading checks a [`Permission`] here, once.

use crate::roles::Role;
use crate::store::Operator;

use super::error::{ErrorKind, OpError};

/// Name under which the admin token file's holder appears in the audit log.
pub const ADMIN_TOKEN_ACTOR: &str = "admin-token";
/// How the audit log names whoever runs `cloud operators …` on the host.
pub const HOST_ACTOR: &str = "host";

/// How a caller proved who they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    Session {
        csrf_token: String,
    },
    ApiToken {
        token_id: i64,
    },
    AdminToken,
    /// The CLI on the cloud's host, which opens the database itself.
    Host,
}

/// The authenticated caller of an operation.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Audit log name: the operator, or [`ADMIN_TOKEN_ACTOR`].
    pub name: String,
    /// None for the admin token, which belongs to no operator account.
    pub operator: Option<Operator>,
    pub credential: Credential,
    /// What this caller may do: the operator's role, or the lower of an API
    /// token's and its operator's; the admin token is an admin.
    pub role: Role,
}

/// What an operation needs beyond reading, which every role may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    /// Calling a device method the method-roles setting gives to this role.
    Call(Role),
    /// Accepting, rejecting, deleting, preauthorizing and rotating device keys.
    DecideKeys,
    /// Managing operator accounts and other people's API tokens.
    ManageTeam,
    /// Putting tags on devices and taking them off.
    TagDevices,
}

impl Permission {
    /// The least role that has this permission.
    pub fn needs(self) -> Role {
        match self {
            Permission::Call(role) => role,
            Permission::TagDevices => Role::Operator,
            Permission::DecideKeys | Permission::ManageTeam => Role::Admin,
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Permission::Call(_) => "calling this method",
            Permission::DecideKeys => "deciding on device keys",
            Permission::ManageTeam => "managing operators and their tokens",
            Permission::TagDevices => "tagging devices",
        }
    }
}

impl Caller {
    /// Whoever runs `cloud operators …` on the cloud's host: they hold the
    /// database, so they are an admin; the audit log names them `host`.
    pub fn host() -> Self {
        Caller {
            name: HOST_ACTOR.into(),
            operator: None,
            credential: Credential::Host,
            role: Role::Admin,
        }
    }

    pub fn csrf_token(&self) -> Option<&str> {
        match &self.credential {
            Credential::Session { csrf_token } => Some(csrf_token),
            _ => None,
        }
    }

    pub fn may(&self, permission: Permission) -> bool {
        self.role >= permission.needs()
    }

    /// Refuses with `forbidden` unless the caller's role has `permission`.
    /// Operations call it through `Auditor::authorize`, which audits refusals.
    pub fn require(&self, permission: Permission) -> Result<(), OpError> {
        if self.may(permission) {
            return Ok(());
        }
        Err(OpError::new(
            ErrorKind::Forbidden,
            format!(
                "{} needs the {} role; {} acts as {}",
                permission.describe(),
                permission.needs(),
                self.name,
                self.role
            ),
        ))
    }
}
