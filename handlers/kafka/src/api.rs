//! One request in, at most one response out (at once, or once its produce
//! is persisted): the header, the APIs served and their versions, and the
//! mapping of contract errors to Kafka's codes.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures::future::BoxFuture;
use gateway_api::{Action, BackendError, Context, HandlerError, Principal, Protocol, TopicName};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, CreatePartitionsRequest, CreateTopicsRequest,
    DeleteGroupsRequest, DeleteTopicsRequest, DescribeConfigsRequest, DescribeGroupsRequest,
    FetchRequest, FindCoordinatorRequest, HeartbeatRequest, InitProducerIdRequest,
    JoinGroupRequest, LeaveGroupRequest, ListGroupsRequest, ListOffsetsRequest, MetadataRequest,
    OffsetCommitRequest, OffsetFetchRequest, ProduceRequest, RequestHeader, RequestKind,
    ResponseHeader, ResponseKind, SyncGroupRequest,
};
use kafka_protocol::messages::{SaslAuthenticateRequest, SaslHandshakeRequest};
use kafka_protocol::protocol::{Decodable, Encodable, Message};

use crate::cluster::Cluster;
use crate::fetch::Readers;
use crate::group::coordinator::Coordinator;
use crate::produce::Producers;
use crate::{
    fetch, group, list_offsets, metadata, produce, sasl, topics, unsupported, KafkaConfig,
};

/// What a request is served with: the handler's settings and shared state,
/// the connection's local address, the gateway's services, and the
/// connection's own readers.
pub struct Connection {
    pub config: Arc<KafkaConfig>,
    pub producers: Arc<Producers>,
    pub partition_counts: Arc<metadata::PartitionCounts>,
    pub coordinator: Arc<Coordinator>,
    pub cluster: Arc<Cluster>,
    /// The client's address (DescribeGroups shows it per member).
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub ctx: Context,
    /// The partitions this connection fetches, each with a reader standing
    /// where the client's next Fetch is expected to ask. Behind an async
    /// lock only because requests borrow the connection shared; they are
    /// served one at a time, so it is never contended.
    pub readers: tokio::sync::Mutex<Readers>,
    /// Who the connection is and where it is in SASL authentication (a
    /// plain lock: never held across an await).
    pub session: std::sync::Mutex<sasl::Session>,
}

/// The APIs served, each with the versions served: the message's own
/// range (not `ApiKey::valid_versions`, which claims more than some
/// messages decode), capped where this handler stops.
fn supported() -> [(ApiKey, i16, i16); 22] {
    [
        (
            ApiKey::ApiVersions,
            ApiVersionsRequest::VERSIONS.min,
            ApiVersionsRequest::VERSIONS.max,
        ),
        // SASL/PLAIN (sasl.rs); v0 handshakes take raw tokens.
        (
            ApiKey::SaslHandshake,
            SaslHandshakeRequest::VERSIONS.min,
            SaslHandshakeRequest::VERSIONS.max,
        ),
        (
            ApiKey::SaslAuthenticate,
            SaslAuthenticateRequest::VERSIONS.min,
            SaslAuthenticateRequest::VERSIONS.max,
        ),
        // v13 drops topic names from errors in favour of ids.
        (
            ApiKey::Metadata,
            MetadataRequest::VERSIONS.min,
            MetadataRequest::VERSIONS.max.min(12),
        ),
        // v10+ answers a moved leader with node endpoints; there is no
        // other leader here, but stop where it was tested.
        (
            ApiKey::Produce,
            ProduceRequest::VERSIONS.min,
            ProduceRequest::VERSIONS.max.min(9),
        ),
        // v5+ adds two-phase-commit transactions.
        (
            ApiKey::InitProducerId,
            InitProducerIdRequest::VERSIONS.min,
            InitProducerIdRequest::VERSIONS.max.min(4),
        ),
        // v7 adds timestamp -3, the offset of the largest timestamp, which
        // would take a scan of the partition; v8+ add tiered-storage
        // positions.
        (
            ApiKey::ListOffsets,
            ListOffsetsRequest::VERSIONS.min,
            ListOffsetsRequest::VERSIONS.max.min(6),
        ),
        // v13+ name topics by id, which the gateway does not keep.
        (
            ApiKey::Fetch,
            FetchRequest::VERSIONS.min,
            FetchRequest::VERSIONS.max.min(12),
        ),
        (
            ApiKey::CreateTopics,
            CreateTopicsRequest::VERSIONS.min,
            CreateTopicsRequest::VERSIONS.max,
        ),
        (
            ApiKey::DeleteTopics,
            DeleteTopicsRequest::VERSIONS.min,
            DeleteTopicsRequest::VERSIONS.max,
        ),
        (
            ApiKey::CreatePartitions,
            CreatePartitionsRequest::VERSIONS.min,
            CreatePartitionsRequest::VERSIONS.max,
        ),
        (
            ApiKey::DescribeConfigs,
            DescribeConfigsRequest::VERSIONS.min,
            DescribeConfigsRequest::VERSIONS.max,
        ),
        // v6 is for share groups.
        (
            ApiKey::FindCoordinator,
            FindCoordinatorRequest::VERSIONS.min,
            FindCoordinatorRequest::VERSIONS.max.min(5),
        ),
        (
            ApiKey::JoinGroup,
            JoinGroupRequest::VERSIONS.min,
            JoinGroupRequest::VERSIONS.max,
        ),
        (
            ApiKey::SyncGroup,
            SyncGroupRequest::VERSIONS.min,
            SyncGroupRequest::VERSIONS.max,
        ),
        (
            ApiKey::Heartbeat,
            HeartbeatRequest::VERSIONS.min,
            HeartbeatRequest::VERSIONS.max,
        ),
        (
            ApiKey::LeaveGroup,
            LeaveGroupRequest::VERSIONS.min,
            LeaveGroupRequest::VERSIONS.max,
        ),
        // v9 is the next-generation (KIP-848) protocol's member epochs.
        (
            ApiKey::OffsetCommit,
            OffsetCommitRequest::VERSIONS.min,
            OffsetCommitRequest::VERSIONS.max.min(8),
        ),
        // v8 batches groups; clients fall back to one group a request.
        (
            ApiKey::OffsetFetch,
            OffsetFetchRequest::VERSIONS.min,
            OffsetFetchRequest::VERSIONS.max.min(7),
        ),
        // v5 filters by group type; every group here is classic.
        (
            ApiKey::ListGroups,
            ListGroupsRequest::VERSIONS.min,
            ListGroupsRequest::VERSIONS.max.min(4),
        ),
        (
            ApiKey::DescribeGroups,
            DescribeGroupsRequest::VERSIONS.min,
            DescribeGroupsRequest::VERSIONS.max.min(5),
        ),
        (
            ApiKey::DeleteGroups,
            DeleteGroupsRequest::VERSIONS.min,
            DeleteGroupsRequest::VERSIONS.max,
        ),
    ]
}

fn is_supported(key: ApiKey, version: i16) -> bool {
    supported()
        .iter()
        .any(|&(k, min, max)| k == key && (min..=max).contains(&version))
}

/// The ApiVersions response listing [`supported`].
fn api_versions(error: Option<ResponseError>) -> ApiVersionsResponse {
    let mut response = ApiVersionsResponse::default();
    response.error_code = error.map_or(0, |e| e.code());
    response.api_keys = supported()
        .iter()
        .map(|&(key, min, max)| {
            let mut v = ApiVersion::default();
            v.api_key = key as i16;
            v.min_version = min;
            v.max_version = max;
            v
        })
        .collect();
    response
}

/// What a request is answered with.
pub enum Reply {
    /// This response, now.
    Now(BytesMut),
    /// A Produce request's response (none for acks = 0), once its batches
    /// are persisted; the connection may read further requests meanwhile.
    Later(BoxFuture<'static, Result<Option<BytesMut>, HandlerError>>),
}

fn malformed(what: &str, e: impl std::fmt::Display) -> HandlerError {
    HandlerError::Protocol(format!("{what}: {e}"))
}

impl Connection {
    /// Serves one request frame.
    pub async fn handle(&self, frame: Bytes) -> Result<Reply, HandlerError> {
        let [k0, k1, v0, v1, c0, c1, c2, c3, ..] = frame[..] else {
            return Err(HandlerError::Protocol(format!(
                "a request of {} bytes is shorter than its header",
                frame.len()
            )));
        };
        let key = i16::from_be_bytes([k0, k1]);
        let version = i16::from_be_bytes([v0, v1]);
        let correlation_id = i32::from_be_bytes([c0, c1, c2, c3]);
        let api = ApiKey::try_from(key)
            .ok()
            .filter(|&api| is_supported(api, version));
        let Some(api) = api else {
            if key == ApiKey::ApiVersions as i16 {
                // A client newer than this handler: a v0 answer with the
                // ranges lets it retry at a version both speak.
                let response = api_versions(Some(ResponseError::UnsupportedVersion));
                return encode(
                    ApiKey::ApiVersions,
                    0,
                    correlation_id,
                    &ResponseKind::ApiVersions(response),
                )
                .map(Reply::Now);
            }
            // An API served at other versions: refused in the request's
            // own version; anything else gets the bare refusal.
            tracing::debug!(key, version, "request of an API or version not served");
            let Ok(known) = ApiKey::try_from(key) else {
                return Ok(Reply::Now(unsupported::bare(correlation_id, 0)));
            };
            return match unsupported::answer(known, version, frame) {
                Some((header, response)) => {
                    encode(known, version, header.correlation_id, &response).map(Reply::Now)
                }
                None => Ok(Reply::Now(unsupported::bare(
                    correlation_id,
                    known.response_header_version(version),
                ))),
            };
        };
        let mut body = frame;
        let header = RequestHeader::decode(&mut body, api.request_header_version(version))
            .map_err(|e| malformed("request header", e))?;
        let request =
            RequestKind::decode(api, &mut body, version).map_err(|e| malformed("request", e))?;
        let response = match request {
            RequestKind::ApiVersions(_) => ResponseKind::ApiVersions(api_versions(None)),
            RequestKind::SaslHandshake(request) => {
                ResponseKind::SaslHandshake(sasl::lock(&self.session).handshake(&request, version))
            }
            RequestKind::SaslAuthenticate(request) => ResponseKind::SaslAuthenticate(
                sasl::authenticate(&self.session, &*self.ctx.auth, &request).await,
            ),
            RequestKind::Metadata(request) => {
                ResponseKind::Metadata(metadata::handle(self, request, version).await)
            }
            RequestKind::Produce(request) => {
                let producing = produce::start(self, request).await;
                let correlation_id = header.correlation_id;
                return Ok(Reply::Later(Box::pin(async move {
                    match producing.await {
                        Some(response) => encode(
                            api,
                            version,
                            correlation_id,
                            &ResponseKind::Produce(response),
                        )
                        .map(Some),
                        None => Ok(None),
                    }
                })));
            }
            RequestKind::InitProducerId(request) => {
                ResponseKind::InitProducerId(self.producers.init(&request))
            }
            RequestKind::ListOffsets(request) => {
                ResponseKind::ListOffsets(list_offsets::handle(self, request).await)
            }
            RequestKind::Fetch(request) => {
                ResponseKind::Fetch(fetch::handle(self, request, version).await)
            }
            RequestKind::CreateTopics(request) => {
                ResponseKind::CreateTopics(topics::create_topics(self, request, version).await)
            }
            RequestKind::DeleteTopics(request) => {
                ResponseKind::DeleteTopics(topics::delete_topics(self, request, version).await)
            }
            RequestKind::CreatePartitions(request) => {
                ResponseKind::CreatePartitions(topics::create_partitions(self, request).await)
            }
            RequestKind::DescribeConfigs(request) => {
                ResponseKind::DescribeConfigs(topics::describe_configs(self, request).await)
            }
            RequestKind::FindCoordinator(request) => {
                ResponseKind::FindCoordinator(group::find_coordinator(self, request, version).await)
            }
            RequestKind::JoinGroup(request) => {
                let client_id = header.client_id.as_ref().map_or("", |c| c.as_str());
                ResponseKind::JoinGroup(group::join_group(self, request, version, client_id).await)
            }
            RequestKind::SyncGroup(request) => {
                ResponseKind::SyncGroup(group::sync_group(self, request, version).await)
            }
            RequestKind::Heartbeat(request) => {
                ResponseKind::Heartbeat(group::heartbeat(self, request).await)
            }
            RequestKind::LeaveGroup(request) => {
                ResponseKind::LeaveGroup(group::leave_group(self, request, version).await)
            }
            RequestKind::OffsetCommit(request) => {
                ResponseKind::OffsetCommit(group::offset_commit(self, request).await)
            }
            RequestKind::OffsetFetch(request) => {
                ResponseKind::OffsetFetch(group::offset_fetch(self, request, version).await)
            }
            RequestKind::ListGroups(request) => {
                ResponseKind::ListGroups(group::list_groups(self, request, version).await)
            }
            RequestKind::DescribeGroups(request) => {
                ResponseKind::DescribeGroups(group::describe_groups(self, request, version).await)
            }
            RequestKind::DeleteGroups(request) => {
                ResponseKind::DeleteGroups(group::delete_groups(self, request).await)
            }
            // Only served keys get this far.
            _ => {
                return Err(HandlerError::Protocol(format!(
                    "{api:?} v{version} decoded but is not served"
                )))
            }
        };
        encode(api, version, header.correlation_id, &response).map(Reply::Now)
    }
}

impl Connection {
    /// Who the connection acts as. Only an authenticated connection gets
    /// requests served ([`sasl::Session::admit`]); were one served before,
    /// it would act as a principal with an empty role, which no grant
    /// names.
    pub fn principal(&self) -> Principal {
        sasl::lock(&self.session)
            .principal()
            .cloned()
            .unwrap_or_else(|| Principal {
                role: String::new(),
                forward_token: None,
                expires_at: None,
            })
    }

    /// The backend topic of partition `index` of the Kafka topic `name`,
    /// if the client may perform `action` on it: `t-partition-p`, or the
    /// topic itself as partition 0 when it has no partitions.
    pub async fn partition(
        &self,
        name: &str,
        index: i32,
        action: Action,
    ) -> Result<TopicName, ResponseError> {
        let topic = self
            .ctx
            .router
            .resolve(Protocol::Kafka, name, &self.principal(), action)
            .map_err(|e| match e {
                gateway_api::RouteError::NotAuthorized { .. } => {
                    ResponseError::TopicAuthorizationFailed
                }
                _ => ResponseError::InvalidTopicException,
            })?;
        let count = self.partition_counts.get(self, &topic).await?;
        match (count, u32::try_from(index)) {
            (0, Ok(0)) => Ok(topic),
            (n, Ok(p)) if p < n => Ok(topic.partition(p)),
            _ => Err(ResponseError::UnknownTopicOrPartition),
        }
    }
}

/// The response frame's body: header, then the response.
/// The largest response header: correlation id and empty tagged fields.
const RESPONSE_HEADER_BYTES: usize = 5;

fn encode(
    api: ApiKey,
    version: i16,
    correlation_id: i32,
    response: &ResponseKind,
) -> Result<BytesMut, HandlerError> {
    // Fetch responses run to megabytes: sized up front, they are written
    // once rather than copied at each doubling of the buffer.
    let capacity = match response {
        ResponseKind::Fetch(fetch) => fetch.compute_size(version).unwrap_or(0),
        _ => 0,
    };
    let mut out = BytesMut::with_capacity(capacity + RESPONSE_HEADER_BYTES);
    let mut header = ResponseHeader::default();
    header.correlation_id = correlation_id;
    header
        .encode(&mut out, api.response_header_version(version))
        .map_err(|e| malformed("encoding a response header", e))?;
    response
        .encode(&mut out, version)
        .map_err(|e| malformed("encoding a response", e))?;
    Ok(out)
}

/// Kafka's error code for a contract error: what a broker would answer in
/// the same situation, retriable where the contract's error is.
pub fn error_code(e: &BackendError) -> ResponseError {
    match e {
        BackendError::TopicNotFound(_) => ResponseError::UnknownTopicOrPartition,
        BackendError::TopicExists(_) => ResponseError::TopicAlreadyExists,
        BackendError::NotAuthorized { .. } => ResponseError::TopicAuthorizationFailed,
        BackendError::InvalidName(_) => ResponseError::InvalidTopicException,
        BackendError::MessageTooLarge { .. } => ResponseError::MessageTooLarge,
        BackendError::InvalidRequest(_) => ResponseError::InvalidRequest,
        // Possibly written: an idempotent producer's retry is deduplicated.
        BackendError::Unavailable(_) | BackendError::Closed | BackendError::Storage(_) => {
            ResponseError::RequestTimedOut
        }
        _ => ResponseError::UnknownServerError,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advertised_versions_are_ones_the_messages_decode() {
        for (key, min, max) in supported() {
            assert!(min <= max, "{key:?}");
            assert!(key.valid_versions().max >= max, "{key:?}");
        }
        assert!(is_supported(ApiKey::Produce, 9));
        assert!(!is_supported(ApiKey::Produce, 2), "message sets v0/v1");
        assert!(is_supported(ApiKey::Fetch, 4));
        assert!(!is_supported(ApiKey::Fetch, 13), "topic ids");
        assert!(is_supported(ApiKey::ListOffsets, 1));
        assert!(!is_supported(ApiKey::ListOffsets, 7), "max timestamp");
    }
}
