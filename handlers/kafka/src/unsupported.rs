//! Requests at versions this handler does not serve.
//!
//! Clients pick versions from ApiVersions, so a request outside the ranges
//! it lists comes from a client that skipped the negotiation or got it
//! wrong. For the APIs served here, at a version above the one served
//! (the features of the later versions are not built: topic ids in Fetch,
//! KIP-848 member epochs, share groups...), the request is answered in its
//! own version with UNSUPPORTED_VERSION in every error field of the
//! response, so the client gets a clear refusal rather than a closed
//! connection. Anything else (an API key unknown or not served, a version
//! the codec cannot read) has no response schema this handler could fill
//! in: it gets the [`bare`] refusal, the response header followed by the
//! UNSUPPORTED_VERSION code alone, which is how an ApiVersions response,
//! the one every client reads before choosing versions, begins. The
//! connection stays open, as the frame was read whole. (A Kafka broker
//! closes the connection instead; the refusal tells the client why.)
//!
//! ApiVersions itself is answered in `api.rs` (v0 with the served ranges).

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::describe_groups_response::DescribedGroup;
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::OffsetFetchResponseGroup;
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{
    ApiKey, DescribeGroupsRequest, DescribeGroupsResponse, FetchRequest, FetchResponse,
    FindCoordinatorRequest, FindCoordinatorResponse, InitProducerIdRequest, InitProducerIdResponse,
    ListGroupsRequest, ListGroupsResponse, OffsetCommitRequest, OffsetCommitResponse,
    OffsetFetchRequest, OffsetFetchResponse, ProduceRequest, ProduceResponse, RequestHeader,
    RequestKind, ResponseKind,
};
use kafka_protocol::protocol::{Decodable, Message};

/// The highest version the codec reads of the APIs this module answers;
/// `None` for the others.
fn readable(api: ApiKey) -> Option<i16> {
    Some(match api {
        ApiKey::Produce => ProduceRequest::VERSIONS.max,
        ApiKey::Fetch => FetchRequest::VERSIONS.max,
        ApiKey::FindCoordinator => FindCoordinatorRequest::VERSIONS.max,
        ApiKey::OffsetCommit => OffsetCommitRequest::VERSIONS.max,
        ApiKey::OffsetFetch => OffsetFetchRequest::VERSIONS.max,
        ApiKey::ListGroups => ListGroupsRequest::VERSIONS.max,
        ApiKey::DescribeGroups => DescribeGroupsRequest::VERSIONS.max,
        ApiKey::InitProducerId => InitProducerIdRequest::VERSIONS.max,
        _ => return None,
    })
}

/// The UNSUPPORTED_VERSION answer to `frame`, a request of `api` at
/// `version`, which the handler does not serve; `None` when there is none
/// to give (the connection is then closed).
pub fn answer(api: ApiKey, version: i16, frame: Bytes) -> Option<(RequestHeader, ResponseKind)> {
    if version < 0 || version > readable(api)? {
        return None;
    }
    let mut body = frame;
    let header = RequestHeader::decode(&mut body, api.request_header_version(version)).ok()?;
    let request = RequestKind::decode(api, &mut body, version).ok()?;
    Some((header, refusal(request, version)?))
}

/// The refusal of a request no response schema is known for: the response
/// header (of `header_version`, 0 or 1) with `correlation_id`, then the
/// UNSUPPORTED_VERSION error code.
pub fn bare(correlation_id: i32, header_version: i16) -> BytesMut {
    let mut out = BytesMut::with_capacity(7);
    out.put_i32(correlation_id);
    if header_version >= 1 {
        // The header's tagged fields: none.
        out.put_u8(0);
    }
    out.put_i16(ResponseError::UnsupportedVersion.code());
    out
}

/// A response to `request` at `version` with UNSUPPORTED_VERSION wherever
/// it holds an error code (per partition, per group, or once); fields the
/// version does not have stay unset, or it would not encode.
fn refusal(request: RequestKind, version: i16) -> Option<ResponseKind> {
    let code = ResponseError::UnsupportedVersion.code();
    Some(match request {
        RequestKind::Produce(request) => {
            let mut response = ProduceResponse::default();
            for topic in request.topic_data {
                let mut out = TopicProduceResponse::default();
                out.name = topic.name;
                for data in topic.partition_data {
                    let mut partition = PartitionProduceResponse::default();
                    partition.index = data.index;
                    partition.error_code = code;
                    partition.base_offset = -1;
                    partition.log_append_time_ms = -1;
                    out.partition_responses.push(partition);
                }
                response.responses.push(out);
            }
            ResponseKind::Produce(response)
        }
        RequestKind::Fetch(_) => {
            let mut response = FetchResponse::default();
            response.error_code = code;
            ResponseKind::Fetch(response)
        }
        RequestKind::FindCoordinator(request) => {
            let mut response = FindCoordinatorResponse::default();
            // One key up to v3, a list of them from v4.
            if version < 4 {
                response.error_code = code;
                response.node_id = (-1).into();
                response.port = -1;
            }
            for key in request.coordinator_keys {
                let mut coordinator = Coordinator::default();
                coordinator.key = key;
                coordinator.node_id = (-1).into();
                coordinator.port = -1;
                coordinator.error_code = code;
                response.coordinators.push(coordinator);
            }
            ResponseKind::FindCoordinator(response)
        }
        RequestKind::OffsetCommit(request) => {
            let mut response = OffsetCommitResponse::default();
            for topic in request.topics {
                let mut out = OffsetCommitResponseTopic::default();
                out.name = topic.name;
                out.topic_id = topic.topic_id;
                for partition in topic.partitions {
                    let mut answered = OffsetCommitResponsePartition::default();
                    answered.partition_index = partition.partition_index;
                    answered.error_code = code;
                    out.partitions.push(answered);
                }
                response.topics.push(out);
            }
            ResponseKind::OffsetCommit(response)
        }
        RequestKind::OffsetFetch(request) => {
            let mut response = OffsetFetchResponse::default();
            // One group up to v7, a list of them from v8.
            if version < 8 {
                response.error_code = code;
            }
            for group in request.groups {
                let mut out = OffsetFetchResponseGroup::default();
                out.group_id = group.group_id;
                out.error_code = code;
                response.groups.push(out);
            }
            ResponseKind::OffsetFetch(response)
        }
        RequestKind::ListGroups(_) => {
            let mut response = ListGroupsResponse::default();
            response.error_code = code;
            ResponseKind::ListGroups(response)
        }
        RequestKind::DescribeGroups(request) => {
            let mut response = DescribeGroupsResponse::default();
            for group_id in request.groups {
                let mut out = DescribedGroup::default();
                out.group_id = group_id;
                out.error_code = code;
                response.groups.push(out);
            }
            ResponseKind::DescribeGroups(response)
        }
        RequestKind::InitProducerId(_) => {
            let mut response = InitProducerIdResponse::default();
            response.error_code = code;
            response.producer_id = (-1).into();
            response.producer_epoch = -1;
            ResponseKind::InitProducerId(response)
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use kafka_protocol::messages::describe_groups_request::DescribeGroupsRequest;
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use kafka_protocol::messages::{GroupId, TopicName};
    use kafka_protocol::protocol::{Encodable, StrBytes};

    use super::*;

    /// What `answer` gives, checked to encode at the request's version.
    fn answered(api: ApiKey, version: i16, frame: Bytes) -> (RequestHeader, ResponseKind) {
        let (header, response) = answer(api, version, frame).expect("an answer");
        response
            .encode(&mut BytesMut::new(), version)
            .expect("the answer encodes at the request's version");
        (header, response)
    }

    /// The frame of `request` (of `api`) at `version`, correlation id 7.
    fn frame<R: Encodable>(api: ApiKey, version: i16, request: &R) -> Bytes {
        let mut header = RequestHeader::default();
        header.request_api_key = api as i16;
        header.request_api_version = version;
        header.correlation_id = 7;
        let mut out = BytesMut::new();
        header
            .encode(&mut out, api.request_header_version(version))
            .unwrap();
        request.encode(&mut out, version).unwrap();
        out.freeze()
    }

    #[test]
    fn a_produce_above_the_served_version_is_refused_per_partition() {
        let mut data = PartitionProduceData::default();
        data.index = 3;
        let mut topic = TopicProduceData::default();
        topic.name = TopicName(StrBytes::from_static_str("t"));
        topic.partition_data.push(data);
        let mut request = ProduceRequest::default();
        request.acks = -1;
        request.topic_data.push(topic);
        let (header, response) =
            answer(ApiKey::Produce, 11, frame(ApiKey::Produce, 11, &request)).expect("an answer");
        assert_eq!(header.correlation_id, 7);
        let ResponseKind::Produce(response) = response else {
            panic!("not a Produce response");
        };
        let partition = &response.responses[0].partition_responses[0];
        assert_eq!(partition.index, 3);
        assert_eq!(
            partition.error_code,
            ResponseError::UnsupportedVersion.code()
        );
    }

    #[test]
    fn groups_and_producer_ids_above_the_served_versions_are_refused() {
        let mut request = DescribeGroupsRequest::default();
        request.groups = vec![
            GroupId(StrBytes::from_static_str("g1")),
            GroupId(StrBytes::from_static_str("g2")),
        ];
        let (_, response) = answered(
            ApiKey::DescribeGroups,
            6,
            frame(ApiKey::DescribeGroups, 6, &request),
        );
        let ResponseKind::DescribeGroups(response) = response else {
            panic!("not a DescribeGroups response");
        };
        assert_eq!(response.groups.len(), 2);
        assert!(response
            .groups
            .iter()
            .all(|g| g.error_code == ResponseError::UnsupportedVersion.code()));

        let request = InitProducerIdRequest::default();
        let (_, response) = answered(
            ApiKey::InitProducerId,
            5,
            frame(ApiKey::InitProducerId, 5, &request),
        );
        let ResponseKind::InitProducerId(response) = response else {
            panic!("not an InitProducerId response");
        };
        assert_eq!(
            response.error_code,
            ResponseError::UnsupportedVersion.code()
        );
    }

    #[test]
    fn versions_the_codec_cannot_read_and_other_apis_get_no_answer() {
        let request = ListGroupsRequest::default();
        let beyond = ListGroupsRequest::VERSIONS.max + 1;
        let bytes = frame(ApiKey::ListGroups, 5, &request);
        assert!(answer(ApiKey::ListGroups, beyond, bytes.clone()).is_none());
        answered(ApiKey::ListGroups, 5, bytes);
        for (api, version) in [
            (ApiKey::Fetch, 13),
            (ApiKey::FindCoordinator, 6),
            (ApiKey::OffsetCommit, 9),
            (ApiKey::OffsetFetch, 8),
        ] {
            let bytes = match api {
                ApiKey::Fetch => frame(api, version, &FetchRequest::default()),
                ApiKey::FindCoordinator => frame(api, version, &FindCoordinatorRequest::default()),
                ApiKey::OffsetCommit => frame(api, version, &OffsetCommitRequest::default()),
                _ => frame(api, version, &OffsetFetchRequest::default()),
            };
            answered(api, version, bytes);
        }
        assert!(answer(ApiKey::AlterConfigs, 0, Bytes::from_static(&[0; 16])).is_none());
        assert_eq!(&bare(7, 0)[..], &[0, 0, 0, 7, 0, 35]);
        assert_eq!(&bare(-2, 1)[..], &[0xff, 0xff, 0xff, 0xfe, 0, 0, 35]);
        // Garbage at a readable version: no answer, no panic.
        assert!(answer(ApiKey::Fetch, 13, Bytes::from_static(&[0xff; 9])).is_none());
    }
}
