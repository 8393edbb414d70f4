//! Metadata: every live Kafka gateway on the backend is a broker
//! ([`crate::cluster`]); the one asked leads every partition, since any
//! gateway serves any partition.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use gateway_api::{Action, BackendError, Protocol, TopicName};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{self, BrokerId, MetadataRequest, MetadataResponse};
use kafka_protocol::protocol::StrBytes;

use crate::api::{error_code, Connection};

/// The most partitions Metadata lists for one topic: a topic made outside
/// the gateway with more (Pulsar sets no limit by default) is answered
/// with an error rather than with a list that size.
const MAX_LISTED_PARTITIONS: u32 = 65_536;

/// How long a partition count read from the backend serves Produce
/// requests before it is read again.
const PARTITION_COUNT_TTL: Duration = Duration::from_secs(10);

/// Partition counts of existing topics, shared by the handler's
/// connections, so a Produce does not ask the backend each time (on Pulsar
/// that is a lookup, and a namespace listing for a topic without
/// partitions).
#[derive(Default)]
pub struct PartitionCounts(Mutex<HashMap<TopicName, (u32, Instant)>>);

impl PartitionCounts {
    /// The partition count of an existing topic (0: without partitions),
    /// from the cache while fresh.
    pub async fn get(&self, conn: &Connection, topic: &TopicName) -> Result<u32, ResponseError> {
        if let Some(count) = self.fresh(topic) {
            return Ok(count);
        }
        match conn.ctx.backend.partitions(topic).await {
            Ok(Some(count)) => {
                self.remember(topic, count);
                Ok(count)
            }
            Ok(None) => Err(ResponseError::UnknownTopicOrPartition),
            Err(e) => Err(error_code(&e)),
        }
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, HashMap<TopicName, (u32, Instant)>> {
        // One insert or lookup at a time: consistent even if poisoned.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn fresh(&self, topic: &TopicName) -> Option<u32> {
        let counts = self.counts();
        let &(count, read) = counts.get(topic)?;
        (read.elapsed() < PARTITION_COUNT_TTL).then_some(count)
    }

    /// Drops what is known of a topic whose partitions just changed.
    pub fn forget(&self, topic: &TopicName) {
        self.counts().remove(topic);
    }

    fn remember(&self, topic: &TopicName, count: u32) {
        let mut counts = self.counts();
        counts.retain(|_, (_, read)| read.elapsed() < PARTITION_COUNT_TTL);
        counts.insert(topic.clone(), (count, Instant::now()));
    }
}

/// The address clients reach the gateway's broker at: the advertised
/// one, else the one this client connected to.
pub fn broker_address(conn: &Connection) -> (String, u16) {
    match &conn.config.advertised {
        Some((host, port)) => (host.clone(), *port),
        None => (conn.local.ip().to_string(), conn.local.port()),
    }
}

pub async fn handle(conn: &Connection, request: MetadataRequest, version: i16) -> MetadataResponse {
    let own = conn.cluster.node_id();
    let live = conn
        .cluster
        .live(conn.ctx.backend.metadata().as_ref())
        .await;
    let brokers = live
        .iter()
        .map(|b| {
            // This gateway is where the client reached it (or the advertised
            // address); another is where it registered.
            let (host, port) = if b.node_id == own {
                broker_address(conn)
            } else {
                (b.host.clone(), b.port)
            };
            let mut broker = MetadataResponseBroker::default();
            broker.node_id = BrokerId(b.node_id);
            broker.host = StrBytes::from_string(host);
            broker.port = i32::from(port);
            broker
        })
        .collect();

    let mut response = MetadataResponse::default();
    response.brokers = brokers;
    response.cluster_id = Some(StrBytes::from_string(conn.config.cluster_id.clone()));
    response.controller_id = BrokerId(own);
    // Before v4 a request could not say; brokers created topics then.
    let auto_create = version < 4 || request.allow_auto_topic_creation;
    let names = match request.topics {
        // v0: an empty list asks for every topic; v1+: a null one does.
        Some(topics) if !(version == 0 && topics.is_empty()) => topics
            .into_iter()
            .filter_map(|t| t.name.map(|n| n.0.to_string()))
            .collect(),
        _ => match all_topics(conn).await {
            Ok(names) => names,
            Err(e) => {
                tracing::warn!(error = %e, "listing topics for Metadata");
                Vec::new()
            }
        },
    };
    for name in names {
        response.topics.push(topic(conn, name, auto_create).await);
    }
    response
}

/// Every topic of the client's namespace that has a Kafka name.
async fn all_topics(conn: &Connection) -> Result<Vec<String>, BackendError> {
    let namespace = conn
        .ctx
        .router
        .namespace(Protocol::Kafka, &conn.principal());
    let topics = conn.ctx.backend.list_topics(&namespace).await?;
    Ok(topics
        .iter()
        .filter_map(|t| t.kafka_name().map(str::to_owned))
        .collect())
}

/// A topic's partitions, creating the topic first when asked to.
async fn topic(conn: &Connection, name: String, auto_create: bool) -> MetadataResponseTopic {
    let mut out = MetadataResponseTopic::default();
    out.name = Some(messages::TopicName(StrBytes::from_string(name.clone())));
    match partitions(conn, &name, auto_create).await {
        Ok(count) if count > MAX_LISTED_PARTITIONS => {
            tracing::warn!(topic = %name, count, "a topic with more partitions than Metadata lists");
            out.error_code = ResponseError::InvalidPartitions.code();
        }
        Ok(count) => {
            out.partitions = (0..count.max(1))
                .map(|p| {
                    let mut partition = MetadataResponsePartition::default();
                    partition.partition_index = i32::try_from(p).unwrap_or(i32::MAX);
                    let own = BrokerId(conn.cluster.node_id());
                    partition.leader_id = own;
                    partition.replica_nodes = vec![own];
                    partition.isr_nodes = vec![own];
                    partition
                })
                .collect();
        }
        Err(code) => out.error_code = code.code(),
    }
    out
}

/// The backend's partition count of a Kafka topic (0: without partitions).
async fn partitions(
    conn: &Connection,
    name: &str,
    auto_create: bool,
) -> Result<u32, ResponseError> {
    let topic = resolve(conn, name)?;
    let backend = &conn.ctx.backend;
    match backend.partitions(&topic).await {
        Ok(Some(n)) => return Ok(n),
        Ok(None) if auto_create => {}
        Ok(None) => return Err(ResponseError::UnknownTopicOrPartition),
        Err(e) => return Err(error_code(&e)),
    }
    // One partition is a topic without partitions, as Pulsar creates them.
    let wanted = match conn.config.default_partitions {
        0 | 1 => 0,
        n => n,
    };
    match backend.create_topic(&topic, wanted).await {
        Ok(()) => Ok(wanted),
        // Someone else created it meanwhile.
        Err(BackendError::TopicExists(_)) => match backend.partitions(&topic).await {
            Ok(Some(n)) => Ok(n),
            Ok(None) => Err(ResponseError::UnknownTopicOrPartition),
            Err(e) => Err(error_code(&e)),
        },
        Err(e) => Err(error_code(&e)),
    }
}

/// The backend topic of a Kafka topic name, to produce to.
pub fn resolve(conn: &Connection, name: &str) -> Result<TopicName, ResponseError> {
    resolve_for(conn, name, Action::Produce)
}

/// The backend topic of a Kafka topic name, if the client may perform
/// `action` on it.
pub fn resolve_for(
    conn: &Connection,
    name: &str,
    action: Action,
) -> Result<TopicName, ResponseError> {
    conn.ctx
        .router
        .resolve(Protocol::Kafka, name, &conn.principal(), action)
        .map_err(|e| match e {
            gateway_api::RouteError::NotAuthorized { .. } => {
                ResponseError::TopicAuthorizationFailed
            }
            _ => ResponseError::InvalidTopicException,
        })
}
