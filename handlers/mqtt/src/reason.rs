//! MQTT 5 reason codes, the one vocabulary of outcomes in this handler,
//! and their forms in each packet of each version (3.1.1 has a few CONNACK
//! return codes and a SUBACK failure, nothing else).

use gateway_api::{AuthError, BackendError, RouteError};
use rmqtt_codec::types::QoS;
use rmqtt_codec::{v3, v5};

use crate::wire::Granted;

/// An MQTT 5 reason code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Reason(pub u8);

pub(crate) const SUCCESS: Reason = Reason(0x00);
pub(crate) const NO_SUBSCRIPTION_EXISTED: Reason = Reason(0x11);
pub(crate) const UNSPECIFIED_ERROR: Reason = Reason(0x80);
pub(crate) const MALFORMED_PACKET: Reason = Reason(0x81);
pub(crate) const PROTOCOL_ERROR: Reason = Reason(0x82);
pub(crate) const IMPLEMENTATION_SPECIFIC_ERROR: Reason = Reason(0x83);
pub(crate) const CLIENT_IDENTIFIER_NOT_VALID: Reason = Reason(0x85);
pub(crate) const BAD_USER_NAME_OR_PASSWORD: Reason = Reason(0x86);
pub(crate) const NOT_AUTHORIZED: Reason = Reason(0x87);
pub(crate) const SERVER_UNAVAILABLE: Reason = Reason(0x88);
pub(crate) const SERVER_SHUTTING_DOWN: Reason = Reason(0x8B);
pub(crate) const KEEP_ALIVE_TIMEOUT: Reason = Reason(0x8D);
pub(crate) const SESSION_TAKEN_OVER: Reason = Reason(0x8E);
pub(crate) const TOPIC_FILTER_INVALID: Reason = Reason(0x8F);
pub(crate) const TOPIC_NAME_INVALID: Reason = Reason(0x90);
pub(crate) const PACKET_IDENTIFIER_NOT_FOUND: Reason = Reason(0x92);
pub(crate) const TOPIC_ALIAS_INVALID: Reason = Reason(0x94);
pub(crate) const PACKET_TOO_LARGE: Reason = Reason(0x95);
pub(crate) const QUOTA_EXCEEDED: Reason = Reason(0x97);

/// The reason a backend failure is reported with.
pub(crate) fn backend(e: &BackendError) -> Reason {
    match e {
        BackendError::NotAuthorized { .. } => NOT_AUTHORIZED,
        BackendError::InvalidName(_) => TOPIC_NAME_INVALID,
        BackendError::MessageTooLarge { .. } => PACKET_TOO_LARGE,
        e if e.is_retriable() => SERVER_UNAVAILABLE,
        _ => UNSPECIFIED_ERROR,
    }
}

/// The reason a routing failure (a name, a grant) is reported with.
pub(crate) fn route(e: &RouteError, topic_reason: Reason) -> Reason {
    match e {
        RouteError::NotAuthorized { .. } => NOT_AUTHORIZED,
        _ => topic_reason,
    }
}

/// The reason a refused CONNECT gets.
pub(crate) fn auth(e: &AuthError) -> Reason {
    match e {
        AuthError::Missing | AuthError::Invalid(_) => BAD_USER_NAME_OR_PASSWORD,
        AuthError::Unavailable(_) => SERVER_UNAVAILABLE,
    }
}

pub(crate) fn connack_v3(r: Reason) -> v3::ConnectAckReason {
    use v3::ConnectAckReason as C;
    match r {
        SUCCESS => C::ConnectionAccepted,
        CLIENT_IDENTIFIER_NOT_VALID => C::IdentifierRejected,
        BAD_USER_NAME_OR_PASSWORD => C::BadUserNameOrPassword,
        NOT_AUTHORIZED => C::NotAuthorized,
        Reason(0x84) => C::UnacceptableProtocolVersion,
        _ => C::ServiceUnavailable,
    }
}

pub(crate) fn connack_v5(r: Reason) -> v5::ConnectAckReason {
    v5::ConnectAckReason::try_from(r.0).unwrap_or(v5::ConnectAckReason::UnspecifiedError)
}

pub(crate) fn puback_v5(r: Reason) -> v5::PublishAckReason {
    v5::PublishAckReason::try_from(r.0).unwrap_or(v5::PublishAckReason::UnspecifiedError)
}

pub(crate) fn suback_v5(g: Granted) -> v5::SubscribeAckReason {
    use v5::SubscribeAckReason as S;
    match g {
        Granted::Qos(QoS::AtMostOnce) => S::GrantedQos0,
        Granted::Qos(QoS::AtLeastOnce) => S::GrantedQos1,
        Granted::Qos(QoS::ExactlyOnce) => S::GrantedQos2,
        Granted::Refused(r) => S::try_from(r.0).unwrap_or(S::UnspecifiedError),
    }
}

pub(crate) fn unsuback_v5(r: Reason) -> v5::UnsubscribeAckReason {
    v5::UnsubscribeAckReason::try_from(r.0).unwrap_or(v5::UnsubscribeAckReason::UnspecifiedError)
}

pub(crate) fn disconnect_v5(r: Reason) -> v5::DisconnectReasonCode {
    v5::DisconnectReasonCode::try_from(r.0).unwrap_or(v5::DisconnectReasonCode::UnspecifiedError)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_has_its_form_in_each_packet() {
        assert_eq!(
            connack_v5(BAD_USER_NAME_OR_PASSWORD),
            v5::ConnectAckReason::BadUserNameOrPassword
        );
        assert_eq!(
            connack_v3(BAD_USER_NAME_OR_PASSWORD),
            v3::ConnectAckReason::BadUserNameOrPassword
        );
        assert_eq!(
            connack_v3(SERVER_UNAVAILABLE),
            v3::ConnectAckReason::ServiceUnavailable
        );
        assert_eq!(
            disconnect_v5(SESSION_TAKEN_OVER),
            v5::DisconnectReasonCode::SessionTakenOver
        );
        assert_eq!(
            puback_v5(NOT_AUTHORIZED),
            v5::PublishAckReason::NotAuthorized
        );
        // A reason a packet has no code for becomes its unspecified error.
        assert_eq!(
            puback_v5(SESSION_TAKEN_OVER),
            v5::PublishAckReason::UnspecifiedError
        );
    }
}
