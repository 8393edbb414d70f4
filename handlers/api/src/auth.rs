//! Who is connecting, and what they may do.

use std::fmt;

use async_trait::async_trait;

/// What a client presented when it connected.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    /// Nothing (MQTT without username, Kafka without SASL, ...). A
    /// handler also presents it when a connection opens, before the client
    /// sent anything: an authenticator that admits anonymous clients
    /// answers their principal, one that requires credentials answers
    /// [`AuthError::Missing`], and the handler then serves nothing but its
    /// protocol's authentication until the client presents some.
    Anonymous,
    /// A user name and password; the password may be a token
    /// (`token:<jwt>` or the bare JWT).
    UsernamePassword {
        /// The user name as the client sent it.
        username: String,
        /// The password or token; never logged (see the `Debug` impl).
        password: String,
    },
    /// A bearer token (WebSocket `?token=` or `Authorization: Bearer`).
    Token(String),
}

impl fmt::Debug for Credentials {
    /// Never prints a secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::Anonymous => f.write_str("Anonymous"),
            Credentials::UsernamePassword { username, .. } => {
                write!(f, "UsernamePassword({username}, <redacted>)")
            }
            Credentials::Token(_) => f.write_str("Token(<redacted>)"),
        }
    }
}

/// An authenticated identity; `role` is Pulsar's role (a JWT's `sub`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Principal {
    /// The role grants are written for.
    pub role: String,
    /// The token to forward to Pulsar so the cluster's own ACLs apply,
    /// when forwarding is on.
    pub forward_token: Option<String>,
    /// When the credentials stop being valid (ms since the epoch: a JWT's
    /// `exp`); `None`: never. A connection must not act on them after
    /// that: it authenticates again or is closed, as Pulsar does.
    pub expires_at: Option<u64>,
}

impl Principal {
    /// The identity of a client when authentication is off.
    pub fn anonymous() -> Principal {
        Principal {
            role: "anonymous".into(),
            forward_token: None,
            expires_at: None,
        }
    }

    /// Whether the credentials have expired at `now_ms` (ms since the
    /// epoch).
    pub fn expired_at(&self, now_ms: u64) -> bool {
        self.expires_at.is_some_and(|at| now_ms >= at)
    }
}

/// An action on a topic, checked by the router.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Publish to a topic.
    Produce,
    /// Subscribe to or read a topic.
    Consume,
    /// Create, delete or reconfigure a topic.
    Admin,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Produce => "produce",
            Action::Consume => "consume",
            Action::Admin => "administer",
        })
    }
}

/// Why authentication failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The client presented no credentials where some are required.
    #[error("credentials required")]
    Missing,
    /// The credentials were checked and refused (wrong password, bad
    /// signature, expired token); holds the reason, never the secret.
    #[error("bad credentials: {0}")]
    Invalid(String),
    /// The credentials could not be checked (for example, a key or
    /// identity service did not answer); holds the cause. The client may
    /// retry later.
    #[error("authentication service unavailable: {0}")]
    Unavailable(String),
}

/// Turns credentials into a principal. One implementation serves every
/// protocol, so the same token works everywhere.
///
/// Whether authentication is required is the authenticator's answer to
/// [`Credentials::Anonymous`] (as Pulsar's `anonymousUserRole` decides it),
/// not a separate switch: a handler cannot disagree with it.
#[async_trait]
pub trait Authenticator: Send + Sync + 'static {
    /// Checks the credentials. Refusals never hold the secret presented.
    async fn authenticate(&self, credentials: &Credentials) -> Result<Principal, AuthError>;
}

/// Authentication off: everyone is [`Principal::anonymous`], whatever
/// credentials they present (so clients configured with a password or
/// token still connect).
#[derive(Debug, Clone, Copy, Default)]
pub struct AllowAll;

#[async_trait]
impl Authenticator for AllowAll {
    async fn authenticate(&self, _: &Credentials) -> Result<Principal, AuthError> {
        Ok(Principal::anonymous())
    }
}
