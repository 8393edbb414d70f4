//! ListOffsets: a partition's earliest offset (timestamp -2), its next
//! offset (-1, the high watermark; without transactions also the last
//! stable offset, whatever the isolation level), or the offset of the first
//! message at or after a time.
//!
//! A time is looked up as the backend indexes it, by publish time; the
//! answer's timestamp is the found record's, as Fetch returns it (its
//! event time, else its publish time). No message at or after the time:
//! offset and timestamp -1, as Kafka answers.

use gateway_api::{Action, TopicName};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::list_offsets_request::ListOffsetsPartition;
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse};

use crate::api::{error_code, Connection};

/// Kafka's timestamp asking for the earliest offset.
const EARLIEST: i64 = -2;
/// Kafka's timestamp asking for the latest (next) offset.
const LATEST: i64 = -1;

/// Serves a ListOffsets request.
pub async fn handle(conn: &Connection, request: ListOffsetsRequest) -> ListOffsetsResponse {
    let mut response = ListOffsetsResponse::default();
    for topic in request.topics {
        let mut out = ListOffsetsTopicResponse::default();
        for asked in &topic.partitions {
            let mut partition = ListOffsetsPartitionResponse::default();
            partition.partition_index = asked.partition_index;
            match list(conn, &topic.name.0, asked).await {
                Ok((offset, timestamp)) => {
                    partition.offset = offset;
                    partition.timestamp = timestamp;
                }
                Err(code) => partition.error_code = code.code(),
            }
            out.partitions.push(partition);
        }
        out.name = topic.name;
        response.topics.push(out);
    }
    response
}

/// The offset and timestamp answered for one partition.
async fn list(
    conn: &Connection,
    topic: &str,
    asked: &ListOffsetsPartition,
) -> Result<(i64, i64), ResponseError> {
    let partition = conn
        .partition(topic, asked.partition_index, Action::Consume)
        .await?;
    let backend = &conn.ctx.backend;
    let offset = |o: u64| i64::try_from(o).unwrap_or(i64::MAX);
    match asked.timestamp {
        EARLIEST | LATEST => {
            let range = backend
                .offsets(&partition)
                .await
                .map_err(|e| error_code(&e))?;
            let at = if asked.timestamp == EARLIEST {
                range.earliest
            } else {
                range.next
            };
            Ok((offset(at), -1))
        }
        time => {
            // Other negative values are Kafka's later versions' (-3 and
            // below), which the versions served cannot carry.
            let time = u64::try_from(time).map_err(|_| ResponseError::InvalidRequest)?;
            match backend
                .offset_for_timestamp(&partition, time)
                .await
                .map_err(|e| error_code(&e))?
            {
                Some(found) => Ok((offset(found), timestamp_at(conn, &partition, found).await)),
                None => Ok((-1, -1)),
            }
        }
    }
}

/// The Kafka timestamp of the record at `offset`, -1 when it cannot be
/// read now. Read through the connection's readers, so a Fetch from the
/// offset (what a consumer does next) continues the same reader.
async fn timestamp_at(conn: &Connection, partition: &TopicName, offset: u64) -> i64 {
    let mut readers = conn.readers.lock().await;
    match readers
        .message_at(conn.ctx.backend.as_ref(), partition, offset)
        .await
    {
        Ok(Some(message)) => {
            i64::try_from(message.event_time.unwrap_or(message.publish_time)).unwrap_or(-1)
        }
        Ok(None) => -1,
        Err(e) => {
            tracing::debug!(%partition, error = %e, "reading a record's timestamp");
            -1
        }
    }
}
