//! SASL authentication, as a Kafka SASL listener does it: SaslHandshake
//! (v0-1) picks the mechanism, then SaslAuthenticate (v0-2, KIP-152)
//! carries its tokens; after a v0 handshake the tokens come as raw frames
//! instead (a size and the bytes, no request header), as clients older
//! than KIP-152 send them. The one mechanism is PLAIN (RFC 4616); its
//! password goes to the gateway's [`Authenticator`] (a Pulsar token, as
//! `token:<jwt>` or bare).
//!
//! Whether a connection must authenticate is the authenticator's call: the
//! connection starts as the principal it gives [`Credentials::Anonymous`],
//! and with none (authentication on) only ApiVersions, SaslHandshake and
//! SaslAuthenticate are served; any other request closes the connection,
//! as a Kafka broker's SASL listener does. A failed authentication is
//! answered (SASL_AUTHENTICATION_FAILED with the reason, or nothing after a
//! v0 handshake), then the connection closes. Authenticating again on an
//! authenticated connection (KIP-368 re-authentication) replaces its
//! principal. Credentials that expire (a token's `exp`) give the session
//! that lifetime (`session_lifetime_ms`, so clients that re-authenticate
//! do it in time); a request after it closes the connection, as a Kafka
//! broker does with KIP-368 and Pulsar with expired tokens.

use std::sync::{Mutex, MutexGuard, PoisonError};

use bytes::{Bytes, BytesMut};
use gateway_api::{now_ms, AuthError, Authenticator, Credentials, HandlerError, Principal};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{
    ApiKey, SaslAuthenticateRequest, SaslAuthenticateResponse, SaslHandshakeRequest,
    SaslHandshakeResponse,
};
use kafka_protocol::protocol::StrBytes;

/// The mechanisms offered, in the handshake's answer.
const MECHANISMS: &[&str] = &["PLAIN"];

/// The longest request served before authentication (Kafka's
/// `sasl.server.max.receive.size`): an unauthenticated peer cannot make the
/// gateway hold the 100 MiB a producer may send.
pub const UNAUTHENTICATED_MAX_FRAME_BYTES: usize = 512 * 1024;

/// Where a connection is in the SASL exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// No handshake pending (before the first, or after an exchange).
    Idle,
    /// A v1 handshake chose PLAIN: a SaslAuthenticate comes next.
    Handshaken,
    /// A v0 handshake chose PLAIN: the next frame is the raw token.
    RawToken,
}

/// A connection's authentication state.
#[derive(Debug)]
pub struct Session {
    /// The exchange in progress.
    stage: Stage,
    /// Who the connection acts as, for every topic it names; `None` until
    /// it authenticates, when authentication is required.
    principal: Option<Principal>,
    /// Set when the response being sent must be the connection's last:
    /// why the connection ends once it is written.
    closing: Option<HandlerError>,
}

impl Session {
    /// A connection that starts as `principal` (`None`: it must
    /// authenticate before anything else).
    pub fn new(principal: Option<Principal>) -> Session {
        Session {
            stage: Stage::Idle,
            principal,
            closing: None,
        }
    }

    /// The session of a new connection: anonymous if the authenticator
    /// admits anonymous clients, otherwise unauthenticated.
    pub async fn start(auth: &dyn Authenticator) -> Session {
        Session::new(auth.authenticate(&Credentials::Anonymous).await.ok())
    }
}

/// The locked session; it is never held across an await. A panic while it
/// was held cannot leave it half-updated (each update is one assignment),
/// so a poisoned lock is used as is.
pub fn lock(session: &Mutex<Session>) -> MutexGuard<'_, Session> {
    session.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Session {
    /// Who the connection acts as, once authenticated.
    pub fn principal(&self) -> Option<&Principal> {
        self.principal.as_ref()
    }

    /// The longest request frame to read next.
    pub fn max_frame_bytes(&self, authenticated_max: usize) -> usize {
        if self.principal.is_some() {
            authenticated_max
        } else {
            authenticated_max.min(UNAUTHENTICATED_MAX_FRAME_BYTES)
        }
    }

    /// True when the next frame is a raw SASL token (after a v0 handshake).
    pub fn expects_raw_token(&self) -> bool {
        self.stage == Stage::RawToken
    }

    /// Why the connection must close now that its last response is out.
    pub fn take_closing(&mut self) -> Option<HandlerError> {
        self.closing.take()
    }

    /// Whether a request of `api_key` may be served: every request once
    /// authenticated; before, only the ones that authenticate.
    pub fn admit(&self, api_key: i16) -> Result<(), HandlerError> {
        let before_auth = [
            ApiKey::ApiVersions as i16,
            ApiKey::SaslHandshake as i16,
            ApiKey::SaslAuthenticate as i16,
        ];
        if before_auth.contains(&api_key) {
            return Ok(());
        }
        if let Some(principal) = &self.principal {
            if principal.expired_at(now_ms()) {
                return Err(HandlerError::Auth(AuthError::Invalid(
                    "the session's credentials expired; authenticate again".into(),
                )));
            }
            return Ok(());
        }
        let api =
            ApiKey::try_from(api_key).map_or_else(|_| api_key.to_string(), |a| format!("{a:?}"));
        Err(HandlerError::Protocol(format!(
            "{api} request before SASL authentication"
        )))
    }

    /// Answers a SaslHandshake.
    pub fn handshake(
        &mut self,
        request: &SaslHandshakeRequest,
        version: i16,
    ) -> SaslHandshakeResponse {
        let mut response = SaslHandshakeResponse::default();
        response.mechanisms = MECHANISMS
            .iter()
            .map(|&m| StrBytes::from_static_str(m))
            .collect();
        let error = if self.stage != Stage::Idle {
            Some((
                ResponseError::IllegalSaslState,
                "a second SaslHandshake before the exchange finished".to_owned(),
            ))
        } else if !MECHANISMS.contains(&request.mechanism.as_str()) {
            Some((
                ResponseError::UnsupportedSaslMechanism,
                format!(
                    "SASL mechanism {:?} is not enabled (enabled: {})",
                    request.mechanism.as_str(),
                    MECHANISMS.join(", ")
                ),
            ))
        } else {
            None
        };
        match error {
            Some((code, why)) => {
                response.error_code = code.code();
                self.closing = Some(HandlerError::Protocol(why));
            }
            None => {
                self.stage = if version == 0 {
                    Stage::RawToken
                } else {
                    Stage::Handshaken
                };
            }
        }
        response
    }
}

/// Answers a SaslAuthenticate: checks the PLAIN token with `auth`.
pub async fn authenticate(
    session: &Mutex<Session>,
    auth: &dyn Authenticator,
    request: &SaslAuthenticateRequest,
) -> SaslAuthenticateResponse {
    let mut response = SaslAuthenticateResponse::default();
    let handshaken = {
        let mut session = lock(session);
        std::mem::replace(&mut session.stage, Stage::Idle) == Stage::Handshaken
    };
    let outcome = if handshaken {
        check_plain(auth, &request.auth_bytes).await
    } else {
        let why = "SaslAuthenticate without a SaslHandshake choosing PLAIN first";
        response.error_code = ResponseError::IllegalSaslState.code();
        response.error_message = Some(StrBytes::from_static_str(why));
        lock(session).closing = Some(HandlerError::Protocol(why.to_owned()));
        return response;
    };
    match outcome {
        Ok(principal) => {
            tracing::debug!(role = %principal.role, "Kafka client authenticated");
            if let Some(at) = principal.expires_at {
                let left = at.saturating_sub(now_ms());
                response.session_lifetime_ms = i64::try_from(left).unwrap_or(i64::MAX).max(1);
            }
            lock(session).principal = Some(principal);
        }
        Err(e) => {
            response.error_code = ResponseError::SaslAuthenticationFailed.code();
            response.error_message =
                Some(StrBytes::from_string(format!("Authentication failed: {e}")));
            lock(session).closing = Some(HandlerError::Auth(e));
        }
    }
    response
}

/// Serves the raw token that follows a v0 handshake: the response frame's
/// body (PLAIN's empty challenge) once authenticated; an error, which ends
/// the connection unanswered, as Kafka does, otherwise.
pub async fn raw_token(
    session: &Mutex<Session>,
    auth: &dyn Authenticator,
    token: &Bytes,
) -> Result<BytesMut, HandlerError> {
    lock(session).stage = Stage::Idle;
    let principal = check_plain(auth, token).await?;
    tracing::debug!(role = %principal.role, "Kafka client authenticated (SaslHandshake v0)");
    lock(session).principal = Some(principal);
    Ok(BytesMut::new())
}

/// Checks a PLAIN message, `authzid NUL authcid NUL passwd` (RFC 4616).
/// The user names are ignored (Pulsar and KoP take the role from the
/// token); the password is the credential.
async fn check_plain(auth: &dyn Authenticator, message: &[u8]) -> Result<Principal, AuthError> {
    let credentials = parse_plain(message)?;
    auth.authenticate(&credentials).await
}

/// The credentials of a PLAIN message.
fn parse_plain(message: &[u8]) -> Result<Credentials, AuthError> {
    let text = std::str::from_utf8(message)
        .map_err(|_| AuthError::Invalid("the SASL/PLAIN message is not UTF-8".into()))?;
    let mut parts = text.split('\0');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(_authzid), Some(username), Some(password), None) => {
            if password.is_empty() {
                return Err(AuthError::Missing);
            }
            Ok(Credentials::UsernamePassword {
                username: username.to_owned(),
                password: password.to_owned(),
            })
        }
        _ => Err(AuthError::Invalid(
            "the SASL/PLAIN message is not authzid NUL username NUL password".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use async_trait::async_trait;
    use gateway_api::AllowAll;

    /// Accepts the password `good` as role `alice`, refuses everything
    /// else, anonymous included.
    struct OnePassword;

    #[async_trait]
    impl Authenticator for OnePassword {
        async fn authenticate(&self, credentials: &Credentials) -> Result<Principal, AuthError> {
            match credentials {
                Credentials::UsernamePassword { password, .. } if password == "good" => {
                    Ok(Principal {
                        role: "alice".into(),
                        forward_token: None,
                        expires_at: None,
                    })
                }
                Credentials::Anonymous => Err(AuthError::Missing),
                _ => Err(AuthError::Invalid("wrong password".into())),
            }
        }
    }

    fn handshake(mechanism: &'static str) -> SaslHandshakeRequest {
        let mut request = SaslHandshakeRequest::default();
        request.mechanism = StrBytes::from_static_str(mechanism);
        request
    }

    fn plain(password: &str) -> SaslAuthenticateRequest {
        let mut request = SaslAuthenticateRequest::default();
        request.auth_bytes = Bytes::from(format!("\0any\0{password}"));
        request
    }

    #[tokio::test]
    async fn with_authentication_on_only_sasl_requests_pass_until_plain_succeeds() {
        let session = Mutex::new(Session::start(&OnePassword).await);
        assert!(lock(&session).principal().is_none());
        assert_eq!(lock(&session).max_frame_bytes(100 << 20), 512 * 1024);
        for key in [
            ApiKey::ApiVersions,
            ApiKey::SaslHandshake,
            ApiKey::SaslAuthenticate,
        ] {
            lock(&session).admit(key as i16).unwrap();
        }
        let refused = lock(&session).admit(ApiKey::Produce as i16).unwrap_err();
        assert!(
            refused.to_string().contains("Produce request before SASL"),
            "{refused}"
        );
        assert!(lock(&session).admit(-7).is_err());

        let response = lock(&session).handshake(&handshake("PLAIN"), 1);
        assert_eq!(response.error_code, 0);
        assert_eq!(
            response.mechanisms,
            vec![StrBytes::from_static_str("PLAIN")]
        );
        let response = authenticate(&session, &OnePassword, &plain("good")).await;
        assert_eq!(response.error_code, 0);
        assert_eq!(response.session_lifetime_ms, 0);
        let mut s = lock(&session);
        assert_eq!(s.principal().map(|p| p.role.as_str()), Some("alice"));
        assert!(s.take_closing().is_none());
        s.admit(ApiKey::Produce as i16).unwrap();
        assert_eq!(s.max_frame_bytes(100 << 20), 100 << 20);
    }

    #[tokio::test]
    async fn a_bad_password_is_answered_with_the_reason_then_closes() {
        let session = Mutex::new(Session::start(&OnePassword).await);
        lock(&session).handshake(&handshake("PLAIN"), 1);
        let response = authenticate(&session, &OnePassword, &plain("bad")).await;
        assert_eq!(response.error_code, 58, "SASL_AUTHENTICATION_FAILED");
        let message = response.error_message.unwrap();
        assert!(message.contains("wrong password"), "{message}");
        let mut s = lock(&session);
        assert!(s.principal().is_none());
        assert!(matches!(s.take_closing(), Some(HandlerError::Auth(_))));
    }

    #[tokio::test]
    async fn an_unsupported_mechanism_lists_the_enabled_ones_then_closes() {
        let mut session = Session::start(&OnePassword).await;
        let response = session.handshake(&handshake("SCRAM-SHA-256"), 1);
        assert_eq!(response.error_code, 33, "UNSUPPORTED_SASL_MECHANISM");
        assert_eq!(
            response.mechanisms,
            vec![StrBytes::from_static_str("PLAIN")]
        );
        assert!(session.take_closing().is_some());
    }

    #[tokio::test]
    async fn authenticate_without_a_handshake_is_an_illegal_state() {
        let session = Mutex::new(Session::start(&OnePassword).await);
        let response = authenticate(&session, &OnePassword, &plain("good")).await;
        assert_eq!(response.error_code, 34, "ILLEGAL_SASL_STATE");
        assert!(lock(&session).principal().is_none());
        assert!(lock(&session).take_closing().is_some());
    }

    #[tokio::test]
    async fn a_v0_handshake_takes_the_next_frame_as_the_raw_token() {
        let session = Mutex::new(Session::start(&OnePassword).await);
        lock(&session).handshake(&handshake("PLAIN"), 0);
        assert!(lock(&session).expects_raw_token());
        let answer = raw_token(&session, &OnePassword, &Bytes::from_static(b"\0u\0good"))
            .await
            .unwrap();
        assert!(answer.is_empty(), "PLAIN's server answer is empty");
        assert!(!lock(&session).expects_raw_token());
        assert_eq!(lock(&session).principal().unwrap().role, "alice");

        let session = Mutex::new(Session::start(&OnePassword).await);
        lock(&session).handshake(&handshake("PLAIN"), 0);
        let err = raw_token(&session, &OnePassword, &Bytes::from_static(b"\0u\0bad"))
            .await
            .unwrap_err();
        assert!(matches!(err, HandlerError::Auth(_)), "{err}");
        assert!(lock(&session).principal().is_none());
    }

    #[tokio::test]
    async fn with_authentication_off_clients_are_anonymous_and_any_plain_password_works() {
        let session = Mutex::new(Session::start(&AllowAll).await);
        assert_eq!(lock(&session).principal(), Some(&Principal::anonymous()));
        lock(&session).admit(ApiKey::Produce as i16).unwrap();
        lock(&session).handshake(&handshake("PLAIN"), 1);
        let response = authenticate(&session, &AllowAll, &plain("whatever")).await;
        assert_eq!(response.error_code, 0);
    }

    #[test]
    fn plain_messages_are_three_nul_separated_fields() {
        assert_eq!(
            parse_plain(b"authz\0user\0token:abc"),
            Ok(Credentials::UsernamePassword {
                username: "user".into(),
                password: "token:abc".into()
            })
        );
        assert_eq!(parse_plain(b"\0user\0"), Err(AuthError::Missing));
        for bad in [&b"user\0pass"[..], b"a\0b\0c\0d", b"", b"\0u\0\xff"] {
            assert!(
                matches!(parse_plain(bad), Err(AuthError::Invalid(_))),
                "{bad:?}"
            );
        }
    }

    /// Accepts "good" as a principal whose credentials expire at
    /// `expires_at`.
    struct Expiring {
        expires_at: u64,
    }

    #[async_trait]
    impl Authenticator for Expiring {
        async fn authenticate(&self, credentials: &Credentials) -> Result<Principal, AuthError> {
            match credentials {
                Credentials::Anonymous => Err(AuthError::Missing),
                _ => Ok(Principal {
                    role: "bob".into(),
                    forward_token: None,
                    expires_at: Some(self.expires_at),
                }),
            }
        }
    }

    #[tokio::test]
    async fn expiring_credentials_bound_the_session_and_close_it_once_past() {
        let auth = Expiring {
            expires_at: now_ms() + 60_000,
        };
        let session = Mutex::new(Session::start(&auth).await);
        lock(&session).handshake(&handshake("PLAIN"), 1);
        let response = authenticate(&session, &auth, &plain("good")).await;
        assert_eq!(response.error_code, 0);
        assert!(
            (1..=60_000).contains(&response.session_lifetime_ms),
            "{}",
            response.session_lifetime_ms
        );
        lock(&session).admit(ApiKey::Produce as i16).unwrap();

        let auth = Expiring {
            expires_at: now_ms().saturating_sub(1),
        };
        let session = Mutex::new(Session::start(&auth).await);
        lock(&session).handshake(&handshake("PLAIN"), 1);
        authenticate(&session, &auth, &plain("good")).await;
        let refused = lock(&session).admit(ApiKey::Fetch as i16).unwrap_err();
        assert!(refused.to_string().contains("expired"), "{refused}");
        // Re-authentication stays open.
        lock(&session).admit(ApiKey::SaslHandshake as i16).unwrap();
    }
}
