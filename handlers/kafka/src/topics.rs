//! Topic administration: CreateTopics, DeleteTopics, CreatePartitions, and
//! DescribeConfigs' fixed answers.
//!
//! A Kafka topic of one partition is a topic without partitions, as the
//! gateway creates them on first use; more partitions make a partitioned
//! topic. Replication is the backend's business (Pulsar's ensemble, the
//! embedded store's single disk), so any replication factor is accepted
//! and answered as 1. Topic configs given at creation are not kept: each
//! backend has its own retention settings (namespace policies on Pulsar,
//! the `[embedded]` section here).

use gateway_api::{Action, BackendError, TopicName};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::create_topics_response::CreatableTopicResult;
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult,
};
use kafka_protocol::messages::{
    CreatePartitionsRequest, CreatePartitionsResponse, CreateTopicsRequest, CreateTopicsResponse,
    DeleteTopicsRequest, DeleteTopicsResponse, DescribeConfigsRequest, DescribeConfigsResponse,
    TopicName as KafkaTopicName,
};
use kafka_protocol::protocol::StrBytes;

use crate::api::{error_code, Connection};
use crate::metadata;

/// DescribeConfigs' resource type of a topic.
const RESOURCE_TOPIC: i8 = 2;
/// DescribeConfigs' config source of a built-in default.
const SOURCE_DEFAULT: i8 = 5;
/// DescribeConfigs' config types (v3+).
const TYPE_STRING: i8 = 2;
const TYPE_INT: i8 = 3;
const TYPE_LIST: i8 = 7;

/// A Kafka partition count as the backend's: 1 is a topic without
/// partitions.
fn backend_partitions(count: u32) -> u32 {
    if count <= 1 {
        0
    } else {
        count
    }
}

/// A failure with Kafka's code and a message for the client.
type Refusal = (ResponseError, String);

fn refusal(e: &BackendError) -> Refusal {
    (error_code(e), e.to_string())
}

/// The topic a Kafka name stands for, if the client may act on it.
fn resolve(conn: &Connection, name: &str, action: Action) -> Result<TopicName, Refusal> {
    metadata::resolve_for(conn, name, action)
        .map_err(|code| (code, format!("{name} is not a valid topic name here")))
}

/// The backend's partition count of an existing topic (0: without
/// partitions); `UNKNOWN_TOPIC_OR_PARTITION` when there is no such topic.
async fn existing_partitions(
    conn: &Connection,
    topic: &TopicName,
    name: &str,
) -> Result<u32, Refusal> {
    match conn.ctx.backend.partitions(topic).await {
        Ok(Some(n)) => Ok(n),
        Ok(None) => Err((
            ResponseError::UnknownTopicOrPartition,
            format!("topic {name} does not exist"),
        )),
        Err(e) => Err(refusal(&e)),
    }
}

/// The partitions a CreateTopics entry asks for: its count, the broker's
/// default (-1), or one per replica assignment (where the replicas go is
/// the backend's; the count is kept). Kafka refuses a count or replication
/// factor alongside assignments, and so does this.
fn partition_count(conn: &Connection, wanted: &CreatableTopic) -> Result<u32, Refusal> {
    let assigned = wanted.assignments.len();
    let count = match (wanted.num_partitions, assigned) {
        (-1, 0) => conn.config.default_partitions.max(1),
        (-1, n) if wanted.replication_factor == -1 => u32::try_from(n).unwrap_or(u32::MAX),
        (_, n) if n > 0 => {
            return Err((
                ResponseError::InvalidRequest,
                "give either replica assignments or a partition count and replication factor"
                    .to_owned(),
            ))
        }
        (n, _) => match u32::try_from(n) {
            Ok(n) if n >= 1 => n,
            _ => {
                return Err((
                    ResponseError::InvalidPartitions,
                    format!("{n} partitions: at least 1"),
                ))
            }
        },
    };
    within_limit(conn, count)?;
    Ok(count)
}

/// Refuses a count over the configured maximum.
fn within_limit(conn: &Connection, count: u32) -> Result<(), Refusal> {
    let max = conn.config.max_partitions;
    if count > max {
        return Err((
            ResponseError::InvalidPartitions,
            format!("{count} partitions: at most {max} here (kafka.max_partitions)"),
        ));
    }
    Ok(())
}

/// CreateTopics: each topic on its own; `validate_only` checks without
/// creating.
pub async fn create_topics(
    conn: &Connection,
    request: CreateTopicsRequest,
    version: i16,
) -> CreateTopicsResponse {
    let mut response = CreateTopicsResponse::default();
    for wanted in request.topics {
        let count = partition_count(conn, &wanted);
        let valid_replication = wanted.replication_factor == -1 || wanted.replication_factor >= 1;
        let outcome = match count {
            Ok(_) if !valid_replication => Err((
                ResponseError::InvalidReplicationFactor,
                format!("replication factor {}", wanted.replication_factor),
            )),
            Ok(count) => create(conn, wanted.name.as_str(), count, request.validate_only)
                .await
                .map(|()| count),
            Err(refused) => Err(refused),
        };
        let mut result = CreatableTopicResult::default();
        result.name = wanted.name;
        match outcome {
            Ok(count) => {
                if version >= 5 {
                    result.num_partitions = count as i32;
                    result.replication_factor = 1;
                    result.configs = Some(Vec::new());
                }
            }
            Err((code, message)) => {
                result.error_code = code.code();
                result.error_message = Some(StrBytes::from_string(message));
            }
        }
        response.topics.push(result);
    }
    response
}

async fn create(
    conn: &Connection,
    name: &str,
    count: u32,
    validate_only: bool,
) -> Result<(), Refusal> {
    let topic = resolve(conn, name, Action::Admin)?;
    let backend = &conn.ctx.backend;
    match backend.partitions(&topic).await {
        Ok(Some(_)) => {
            return Err((
                ResponseError::TopicAlreadyExists,
                format!("topic {name} already exists"),
            ))
        }
        Ok(None) => {}
        Err(e) => return Err(refusal(&e)),
    }
    if validate_only {
        return Ok(());
    }
    backend
        .create_topic(&topic, backend_partitions(count))
        .await
        .map_err(|e| refusal(&e))?;
    conn.partition_counts.forget(&topic);
    Ok(())
}

/// DeleteTopics: by name (v0-5, or v6's names; topic ids are not kept).
pub async fn delete_topics(
    conn: &Connection,
    request: DeleteTopicsRequest,
    version: i16,
) -> DeleteTopicsResponse {
    let names: Vec<Option<KafkaTopicName>> = if version >= 6 {
        request.topics.into_iter().map(|t| t.name).collect()
    } else {
        request.topic_names.into_iter().map(Some).collect()
    };
    let mut response = DeleteTopicsResponse::default();
    for name in names {
        let mut result = DeletableTopicResult::default();
        let outcome = match &name {
            Some(name) => delete(conn, name.as_str()).await,
            None => Err((
                ResponseError::UnknownTopicId,
                "topics are deleted by name here".to_owned(),
            )),
        };
        if let Err((code, message)) = outcome {
            result.error_code = code.code();
            if version >= 5 {
                result.error_message = Some(StrBytes::from_string(message));
            }
        }
        result.name = name;
        response.responses.push(result);
    }
    response
}

async fn delete(conn: &Connection, name: &str) -> Result<(), Refusal> {
    let topic = resolve(conn, name, Action::Admin)?;
    // This connection's own readers would hold the topic open (Pulsar
    // refuses to delete a topic with consumers).
    conn.readers.lock().await.forget_topic(&topic);
    let outcome = conn.ctx.backend.delete_topic(&topic).await;
    conn.partition_counts.forget(&topic);
    outcome.map_err(|e| refusal(&e))
}

/// CreatePartitions: raises a partitioned topic's count. A topic without
/// partitions cannot become partitioned (Pulsar cannot convert one), and
/// counts never go down.
pub async fn create_partitions(
    conn: &Connection,
    request: CreatePartitionsRequest,
) -> CreatePartitionsResponse {
    let mut response = CreatePartitionsResponse::default();
    for wanted in request.topics {
        let outcome = raise(
            conn,
            wanted.name.as_str(),
            wanted.count,
            request.validate_only,
        )
        .await;
        let mut result = CreatePartitionsTopicResult::default();
        result.name = wanted.name;
        if let Err((code, message)) = outcome {
            result.error_code = code.code();
            result.error_message = Some(StrBytes::from_string(message));
        }
        response.results.push(result);
    }
    response
}

async fn raise(
    conn: &Connection,
    name: &str,
    count: i32,
    validate_only: bool,
) -> Result<(), Refusal> {
    let topic = resolve(conn, name, Action::Admin)?;
    let backend = &conn.ctx.backend;
    let current = existing_partitions(conn, &topic, name).await?;
    let kafka_count = current.max(1);
    let invalid = |message: String| Err((ResponseError::InvalidPartitions, message));
    let wanted = match u32::try_from(count) {
        Ok(n) if n > kafka_count => n,
        _ => {
            return invalid(format!(
                "topic {name} has {kafka_count} partitions; {count} is not more"
            ))
        }
    };
    within_limit(conn, wanted)?;
    if current == 0 {
        return invalid(format!(
            "topic {name} was created without partitions and cannot be given more; \
             create a topic with the partitions needed"
        ));
    }
    if validate_only {
        return Ok(());
    }
    let outcome = backend.update_partitions(&topic, wanted).await;
    conn.partition_counts.forget(&topic);
    outcome.map_err(|e| refusal(&e))
}

/// DescribeConfigs: a topic's few fixed settings (defaults, read-only);
/// a broker has none to show. Unknown topics are refused.
pub async fn describe_configs(
    conn: &Connection,
    request: DescribeConfigsRequest,
) -> DescribeConfigsResponse {
    let mut response = DescribeConfigsResponse::default();
    for resource in request.resources {
        let mut result = DescribeConfigsResult::default();
        result.resource_type = resource.resource_type;
        result.resource_name = resource.resource_name.clone();
        if resource.resource_type == RESOURCE_TOPIC {
            match topic_configs(conn, resource.resource_name.as_str()).await {
                Ok(configs) => {
                    let asked = resource.configuration_keys.as_ref();
                    result.configs = configs
                        .into_iter()
                        .filter(|c| asked.is_none_or(|keys| keys.contains(&c.name)))
                        .collect();
                }
                Err((code, message)) => {
                    result.error_code = code.code();
                    result.error_message = Some(StrBytes::from_string(message));
                }
            }
        }
        response.results.push(result);
    }
    response
}

async fn topic_configs(
    conn: &Connection,
    name: &str,
) -> Result<Vec<DescribeConfigsResourceResult>, Refusal> {
    let topic = resolve(conn, name, Action::Consume)?;
    existing_partitions(conn, &topic, name).await?;
    // What the gateway does whatever a client sets: records are deleted
    // by retention, never compacted; records are fetched uncompressed;
    // timestamps are the producer's; a record may fill a request.
    let fixed: [(&'static str, String, i8); 4] = [
        ("cleanup.policy", "delete".into(), TYPE_LIST),
        ("compression.type", "uncompressed".into(), TYPE_STRING),
        ("message.timestamp.type", "CreateTime".into(), TYPE_STRING),
        (
            "max.message.bytes",
            conn.config.max_frame_bytes.to_string(),
            TYPE_INT,
        ),
    ];
    Ok(fixed
        .into_iter()
        .map(|(key, value, config_type)| {
            let mut config = DescribeConfigsResourceResult::default();
            config.name = StrBytes::from_static_str(key);
            config.value = Some(StrBytes::from_string(value));
            config.read_only = true;
            config.config_source = SOURCE_DEFAULT;
            config.config_type = config_type;
            config
        })
        .collect())
}
