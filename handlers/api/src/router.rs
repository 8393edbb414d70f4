//! From a protocol's name to a topic, with authorization, in one place.

use std::fmt;

use crate::auth::{Action, Principal};
use crate::topic::{NameError, Namespace, TopicName};

/// The protocols a name can come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    /// A Kafka topic name.
    Kafka,
    /// An MQTT topic name.
    Mqtt,
    /// An AMQP routing key.
    Amqp,
    /// The topic part of a Pulsar WebSocket API path.
    WebSocket,
    /// A Pulsar topic name, in any form Pulsar accepts.
    Pulsar,
}

impl Protocol {
    /// Lower-case name, as used in metric labels and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Kafka => "kafka",
            Protocol::Mqtt => "mqtt",
            Protocol::Amqp => "amqp",
            Protocol::WebSocket => "websocket",
            Protocol::Pulsar => "pulsar",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a name did not resolve.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// The name does not make a valid topic in the protocol's grammar.
    #[error(transparent)]
    InvalidName(#[from] NameError),
    /// The name resolved, but the principal may not perform the action on
    /// the topic.
    #[error("{role} is not authorized to {action} on {topic}")]
    NotAuthorized {
        /// The principal's role, the one grants are written for.
        role: String,
        /// The action that was refused.
        action: Action,
        /// The topic the name resolved to.
        topic: TopicName,
    },
}

/// Applies naming rules and authorization together, so no handler can do
/// one without the other.
pub trait Router: Send + Sync + 'static {
    /// The topic a protocol's `name` stands for, if `principal` may perform
    /// `action` on it. The same arguments get the same answer for as long
    /// as the gateway runs: a handler may keep one for a connection's life
    /// (MQTT keeps the topic a connection published to last).
    fn resolve(
        &self,
        protocol: Protocol,
        name: &str,
        principal: &Principal,
        action: Action,
    ) -> Result<TopicName, RouteError>;

    /// The namespace short names resolve into for this principal (where
    /// pattern subscriptions look).
    fn namespace(&self, protocol: Protocol, principal: &Principal) -> Namespace;
}

/// Whether a topic is internal (its local name starts with `__`, as
/// Kafka's and Pulsar's own system topics do, and the gateway's metadata
/// log): no client of any protocol may produce to, consume from or
/// administer it, since its messages are the state of the gateway or of
/// the cluster.
pub fn is_internal(topic: &TopicName) -> bool {
    topic.local_name().starts_with("__")
}

/// Every name maps into one namespace and every action is allowed on every
/// topic but the internal ones: the router when no rules or grants are
/// configured.
#[derive(Debug, Clone, Default)]
pub struct DefaultRouter {
    /// Where short names live (`public/default` unless configured).
    pub namespace: Namespace,
}

impl Router for DefaultRouter {
    fn resolve(
        &self,
        protocol: Protocol,
        name: &str,
        principal: &Principal,
        action: Action,
    ) -> Result<TopicName, RouteError> {
        // Fully-qualified Pulsar names are accepted wherever the protocol's
        // grammar allows them; Kafka's alphabet has neither `:` nor `/`.
        let topic = if name.contains("://") && protocol != Protocol::Kafka {
            TopicName::parse(name, &self.namespace)?
        } else {
            match protocol {
                Protocol::Kafka => TopicName::from_kafka(name, &self.namespace)?,
                Protocol::Mqtt => TopicName::from_mqtt(name, &self.namespace)?,
                Protocol::Amqp => TopicName::from_amqp_key(name, &self.namespace)?,
                Protocol::WebSocket => TopicName::from_websocket_path(name)?,
                Protocol::Pulsar => TopicName::parse(name, &self.namespace)?,
            }
        };
        if is_internal(&topic) {
            return Err(RouteError::NotAuthorized {
                role: principal.role.clone(),
                action,
                topic,
            });
        }
        Ok(topic)
    }

    fn namespace(&self, _: Protocol, _: &Principal) -> Namespace {
        self.namespace.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_topics_are_refused_to_every_protocol_and_action() {
        let r = DefaultRouter::default();
        let p = Principal::anonymous();
        for (proto, name) in [
            (Protocol::Kafka, "__pulsar-gateway-metadata"),
            (Protocol::Kafka, "__consumer_offsets"),
            (Protocol::Mqtt, "__pulsar-gateway-metadata"),
            (
                Protocol::Pulsar,
                "persistent://public/default/__pulsar-gateway-metadata",
            ),
            (
                Protocol::Mqtt,
                "persistent://public/default/__change_events",
            ),
        ] {
            for action in [Action::Produce, Action::Consume, Action::Admin] {
                assert!(
                    matches!(
                        r.resolve(proto, name, &p, action),
                        Err(RouteError::NotAuthorized { .. })
                    ),
                    "{proto} {name} {action}"
                );
            }
        }
        assert!(r
            .resolve(Protocol::Kafka, "_one_underscore", &p, Action::Produce)
            .is_ok());
    }

    #[test]
    fn kafka_names_never_leave_the_namespace() {
        let r = DefaultRouter::default();
        let p = Principal::anonymous();
        let name = "persistent://other/ns/t";
        assert!(matches!(
            r.resolve(Protocol::Kafka, name, &p, Action::Admin),
            Err(RouteError::InvalidName(_))
        ));
        let other: TopicName = name.parse().unwrap();
        assert_eq!(
            r.resolve(Protocol::Mqtt, name, &p, Action::Produce)
                .unwrap(),
            other
        );
    }

    #[test]
    fn each_protocol_reaches_the_same_topic() {
        let r = DefaultRouter::default();
        let p = Principal::anonymous();
        let want: TopicName = "persistent://public/default/plant.line1.temp"
            .parse()
            .unwrap();
        for (proto, name) in [
            (Protocol::Kafka, "plant.line1.temp"),
            (Protocol::Mqtt, "plant/line1/temp"),
            (Protocol::Amqp, "plant.line1.temp"),
            (
                Protocol::WebSocket,
                "persistent/public/default/plant.line1.temp",
            ),
            (
                Protocol::Pulsar,
                "persistent://public/default/plant.line1.temp",
            ),
        ] {
            assert_eq!(
                r.resolve(proto, name, &p, Action::Produce).unwrap(),
                want,
                "{proto}"
            );
        }
    }
}
