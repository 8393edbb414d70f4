//! Consumer groups: FindCoordinator, the membership requests (JoinGroup,
//! SyncGroup, Heartbeat, LeaveGroup), committed offsets (OffsetCommit,
//! OffsetFetch) and the admin requests (ListGroups, DescribeGroups,
//! DeleteGroups). One live gateway coordinates each group
//! ([`crate::cluster`]); the others answer its requests NOT_COORDINATOR,
//! which sends clients back to FindCoordinator. Membership is
//! [`coordinator`]'s, in the coordinating gateway's memory, each stable
//! generation also recorded in the metadata store by [`state`] for the
//! gateway coordinating the group next; offsets are [`offsets`]' in the
//! metadata store.
//!
//! Each function here translates one request to the coordinator's plain
//! types and its answer back, with Kafka's error codes. A response sets
//! only the fields its version has: kafka-protocol refuses to encode one
//! that sets another.

pub mod coordinator;
pub mod offsets;
pub mod state;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::find_coordinator_response::Coordinator as CoordinatorEntry;
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponsePartition, OffsetFetchResponseTopic,
};
use kafka_protocol::messages::{
    BrokerId, DeleteGroupsRequest, DeleteGroupsResponse, DescribeGroupsRequest,
    DescribeGroupsResponse, FindCoordinatorRequest, FindCoordinatorResponse, GroupId,
    HeartbeatRequest, HeartbeatResponse, JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest,
    LeaveGroupResponse, ListGroupsRequest, ListGroupsResponse, OffsetCommitRequest,
    OffsetCommitResponse, OffsetFetchRequest, OffsetFetchResponse, SyncGroupRequest,
    SyncGroupResponse, TopicName as KafkaTopicName,
};
use kafka_protocol::protocol::StrBytes;

use crate::api::{error_code, Connection};
use crate::metadata;
use coordinator::{GroupError, Join, JoinReply, SyncReply};
use offsets::Committed;

/// FindCoordinator's key type for a transactional id.
const KEY_TYPE_TRANSACTION: i8 = 1;

impl GroupError {
    /// Kafka's code for it.
    pub fn code(self) -> ResponseError {
        match self {
            GroupError::UnknownMemberId => ResponseError::UnknownMemberId,
            GroupError::IllegalGeneration => ResponseError::IllegalGeneration,
            GroupError::RebalanceInProgress => ResponseError::RebalanceInProgress,
            GroupError::InconsistentGroupProtocol => ResponseError::InconsistentGroupProtocol,
            GroupError::InvalidSessionTimeout => ResponseError::InvalidSessionTimeout,
            GroupError::MemberIdRequired => ResponseError::MemberIdRequired,
            GroupError::CoordinatorNotAvailable => ResponseError::CoordinatorNotAvailable,
            GroupError::FencedInstanceId => ResponseError::FencedInstanceId,
            GroupError::NonEmptyGroup => ResponseError::NonEmptyGroup,
            GroupError::GroupIdNotFound => ResponseError::GroupIdNotFound,
            GroupError::InvalidGroupId => ResponseError::InvalidGroupId,
            GroupError::GroupMaxSizeReached => ResponseError::GroupMaxSizeReached,
        }
    }
}

fn text(s: &StrBytes) -> String {
    s.as_str().to_owned()
}

fn str_bytes(s: impl Into<String>) -> StrBytes {
    StrBytes::from_string(s.into())
}

fn millis(ms: i32) -> std::time::Duration {
    std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

/// Whether this gateway coordinates `group`, which it then holds (taken
/// over from its record if need be); `NOT_COORDINATOR` if another live
/// gateway does, and this one lets go of what it held of it.
async fn coordinated_here(conn: &Connection, group: &str) -> Result<(), ResponseError> {
    let store = conn.ctx.backend.metadata();
    if !conn.cluster.coordinates(store.as_ref(), group).await {
        conn.coordinator.forget(group);
        return Err(ResponseError::NotCoordinator);
    }
    state::load(
        &conn.coordinator,
        store.as_ref(),
        &conn.config.cluster_id,
        group,
    )
    .await
    .map_err(|e| {
        tracing::warn!(group, error = %e, "could not read the group's record");
        ResponseError::CoordinatorLoadInProgress
    })
}

/// FindCoordinator: the live gateway chosen for the group (the same on
/// every gateway). Transactions are not served, so a transactional id has
/// no coordinator.
pub async fn find_coordinator(
    conn: &Connection,
    request: FindCoordinatorRequest,
    version: i16,
) -> FindCoordinatorResponse {
    let store = conn.ctx.backend.metadata();
    let entry = |key: StrBytes| {
        let store = store.clone();
        async move {
            let mut entry = CoordinatorEntry::default();
            if request.key_type == KEY_TYPE_TRANSACTION {
                entry.error_code = ResponseError::CoordinatorNotAvailable.code();
                entry.node_id = BrokerId(-1);
                entry.port = -1;
            } else {
                let chosen = conn.cluster.coordinator(store.as_ref(), key.as_str()).await;
                // This gateway is where the client reached it (or the
                // advertised address); another is where it registered.
                let (host, port) = if chosen.node_id == conn.cluster.node_id() {
                    metadata::broker_address(conn)
                } else {
                    (chosen.host, chosen.port)
                };
                entry.node_id = BrokerId(chosen.node_id);
                entry.host = str_bytes(host);
                entry.port = i32::from(port);
            }
            entry.key = key;
            entry
        }
    };
    let mut response = FindCoordinatorResponse::default();
    // v4+ asks for a batch of keys; earlier versions for one.
    if version >= 4 {
        let keys = request.coordinator_keys.iter().cloned().map(entry);
        response.coordinators = futures::future::join_all(keys).await;
    } else {
        let single = entry(request.key.clone()).await;
        response.error_code = single.error_code;
        response.node_id = single.node_id;
        response.host = single.host;
        response.port = single.port;
    }
    response
}

/// JoinGroup; waits for the rebalance when the member must.
pub async fn join_group(
    conn: &Connection,
    request: JoinGroupRequest,
    version: i16,
    client_id: &str,
) -> JoinGroupResponse {
    let rebalance_timeout = if version == 0 {
        // v0 has no rebalance timeout: the session timeout serves.
        request.session_timeout_ms
    } else {
        request.rebalance_timeout_ms
    };
    let join = Join {
        group: text(&request.group_id),
        member_id: text(&request.member_id),
        instance_id: request.group_instance_id.as_ref().map(text),
        client_id: client_id.to_owned(),
        client_host: conn.peer.ip().to_string(),
        session_timeout: millis(request.session_timeout_ms),
        rebalance_timeout: millis(rebalance_timeout),
        protocol_type: text(&request.protocol_type),
        protocols: request
            .protocols
            .iter()
            .map(|p| (text(&p.name), p.metadata.clone()))
            .collect(),
        member_id_required: version >= 4,
    };
    let mut response = JoinGroupResponse::default();
    response.generation_id = -1;
    if let Err(code) = coordinated_here(conn, &join.group).await {
        response.error_code = code.code();
        response.member_id = request.member_id;
        return response;
    }
    let outcome = match conn.coordinator.join(join) {
        JoinReply::Now(outcome) => outcome,
        JoinReply::Later(waiting) => {
            let member_id = text(&request.member_id);
            tokio::select! {
                answer = waiting => match answer {
                    Ok(answer) => answer.map_err(|e| (e, member_id)),
                    Err(_) => Err((GroupError::RebalanceInProgress, member_id)),
                },
                _ = conn.ctx.shutdown.cancelled() => {
                    Err((GroupError::CoordinatorNotAvailable, member_id))
                }
            }
        }
    };
    match outcome {
        Ok(joined) => {
            response.generation_id = joined.generation;
            if version >= 7 {
                response.protocol_type = Some(str_bytes(joined.protocol_type));
            }
            response.protocol_name = Some(str_bytes(joined.protocol));
            response.leader = str_bytes(joined.leader);
            response.member_id = str_bytes(joined.member_id);
            response.members = joined
                .members
                .into_iter()
                .map(|m| {
                    let mut member = JoinGroupResponseMember::default();
                    member.member_id = str_bytes(m.member_id);
                    if version >= 5 {
                        member.group_instance_id = m.instance_id.map(str_bytes);
                    }
                    member.metadata = m.metadata;
                    member
                })
                .collect();
        }
        Err((e, member_id)) => {
            response.error_code = e.code().code();
            response.member_id = str_bytes(member_id);
        }
    }
    response
}

/// SyncGroup; a follower waits for the leader's assignment.
pub async fn sync_group(
    conn: &Connection,
    request: SyncGroupRequest,
    version: i16,
) -> SyncGroupResponse {
    if let Err(code) = coordinated_here(conn, request.group_id.as_str()).await {
        let mut response = SyncGroupResponse::default();
        response.error_code = code.code();
        return response;
    }
    let assignments = request
        .assignments
        .iter()
        .map(|a| (text(&a.member_id), a.assignment.clone()))
        .collect();
    let reply = conn.coordinator.sync(
        request.group_id.as_str(),
        request.member_id.as_str(),
        request.group_instance_id.as_ref().map(|i| i.as_str()),
        request.generation_id,
        assignments,
    );
    let outcome = match reply {
        SyncReply::Now(outcome) => outcome,
        SyncReply::Later(waiting) => tokio::select! {
            answer = waiting => answer.unwrap_or(Err(GroupError::RebalanceInProgress)),
            _ = conn.ctx.shutdown.cancelled() => Err(GroupError::CoordinatorNotAvailable),
        },
    };
    let mut response = SyncGroupResponse::default();
    match outcome {
        Ok(synced) => {
            // v5 checks the type and protocol the member believes in.
            let mismatch = request
                .protocol_type
                .as_ref()
                .is_some_and(|t| t.as_str() != synced.protocol_type)
                || request
                    .protocol_name
                    .as_ref()
                    .is_some_and(|p| p.as_str() != synced.protocol);
            if mismatch {
                response.error_code = ResponseError::InconsistentGroupProtocol.code();
            } else {
                if version >= 5 {
                    response.protocol_type = Some(str_bytes(synced.protocol_type));
                    response.protocol_name = Some(str_bytes(synced.protocol));
                }
                response.assignment = synced.assignment;
            }
        }
        Err(e) => response.error_code = e.code().code(),
    }
    response
}

/// Heartbeat.
pub async fn heartbeat(conn: &Connection, request: HeartbeatRequest) -> HeartbeatResponse {
    let mut response = HeartbeatResponse::default();
    if let Err(code) = coordinated_here(conn, request.group_id.as_str()).await {
        response.error_code = code.code();
        return response;
    }
    if let Err(e) = conn.coordinator.heartbeat(
        request.group_id.as_str(),
        request.member_id.as_str(),
        request.group_instance_id.as_ref().map(|i| i.as_str()),
        request.generation_id,
    ) {
        response.error_code = e.code().code();
    }
    response
}

/// LeaveGroup: one member (v0-2) or a batch (v3+).
pub async fn leave_group(
    conn: &Connection,
    request: LeaveGroupRequest,
    version: i16,
) -> LeaveGroupResponse {
    let mut response = LeaveGroupResponse::default();
    if let Err(code) = coordinated_here(conn, request.group_id.as_str()).await {
        response.error_code = code.code();
        return response;
    }
    if version < 3 {
        let results = conn.coordinator.leave(
            request.group_id.as_str(),
            &[(text(&request.member_id), None)],
        );
        if let Some(Err(e)) = results.first() {
            response.error_code = e.code().code();
        }
        return response;
    }
    let members: Vec<(String, Option<String>)> = request
        .members
        .iter()
        .map(|m| (text(&m.member_id), m.group_instance_id.as_ref().map(text)))
        .collect();
    let results = conn.coordinator.leave(request.group_id.as_str(), &members);
    response.members = request
        .members
        .into_iter()
        .zip(results)
        .map(|(m, result)| {
            let mut member = MemberResponse::default();
            member.member_id = m.member_id;
            member.group_instance_id = m.group_instance_id;
            member.error_code = result.err().map_or(0, |e| e.code().code());
            member
        })
        .collect();
    response
}

/// OffsetCommit: every partition is written (concurrently), each answered
/// with its own result.
pub async fn offset_commit(
    conn: &Connection,
    request: OffsetCommitRequest,
) -> OffsetCommitResponse {
    let group = text(&request.group_id);
    // Each partition is answered NOT_COORDINATOR, as Kafka does.
    let allowed = match coordinated_here(conn, &group).await {
        Ok(()) => conn
            .coordinator
            .check_commit(
                &group,
                request.member_id.as_str(),
                request.group_instance_id.as_ref().map(|i| i.as_str()),
                request.generation_id_or_member_epoch,
            )
            .map_err(GroupError::code),
        Err(code) => Err(code),
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let store = conn.ctx.backend.metadata();
    let mut response = OffsetCommitResponse::default();
    for topic in request.topics {
        let valid_name = metadata::resolve(conn, topic.name.as_str()).map(drop);
        let writes = topic.partitions.iter().map(|p| {
            let committed = Committed {
                offset: p.committed_offset,
                leader_epoch: p.committed_leader_epoch,
                committed_at: now,
                metadata: p.committed_metadata.as_ref().map(text).unwrap_or_default(),
            };
            let (group, store, name) = (&group, &store, topic.name.as_str());
            let (allowed, valid_name) = (allowed, valid_name);
            async move {
                allowed?;
                valid_name?;
                offsets::commit(store.as_ref(), group, name, p.partition_index, &committed)
                    .await
                    .map_err(|e| error_code(&e))
            }
        });
        let results = futures::future::join_all(writes).await;
        let mut out = OffsetCommitResponseTopic::default();
        out.name = topic.name.clone();
        out.partitions = topic
            .partitions
            .iter()
            .zip(results)
            .map(|(p, result)| {
                let mut partition = OffsetCommitResponsePartition::default();
                partition.partition_index = p.partition_index;
                partition.error_code = result.err().map_or(0, |e| e.code());
                partition
            })
            .collect();
        response.topics.push(out);
    }
    response
}

/// OffsetFetch (one group, v1-7): the partitions asked for, or every
/// partition with a committed offset; -1 where none is.
pub async fn offset_fetch(
    conn: &Connection,
    request: OffsetFetchRequest,
    version: i16,
) -> OffsetFetchResponse {
    let group = text(&request.group_id);
    let store = conn.ctx.backend.metadata();
    let mut response = OffsetFetchResponse::default();
    let partition = |index: i32, committed: Option<Committed>| {
        let mut p = OffsetFetchResponsePartition::default();
        p.partition_index = index;
        match committed {
            Some(c) => {
                p.committed_offset = c.offset;
                if version >= 5 {
                    p.committed_leader_epoch = c.leader_epoch;
                }
                p.metadata = Some(str_bytes(c.metadata));
            }
            None => {
                p.committed_offset = -1;
                p.committed_leader_epoch = -1;
                p.metadata = Some(StrBytes::default());
            }
        }
        p
    };
    if let Err(code) = coordinated_here(conn, &group).await {
        // v1 has no group-level error: each partition asked for says it.
        if version >= 2 {
            response.error_code = code.code();
        } else {
            for topic in request.topics.into_iter().flatten() {
                let mut out = OffsetFetchResponseTopic::default();
                out.name = topic.name;
                for index in topic.partition_indexes {
                    let mut p = partition(index, None);
                    p.error_code = code.code();
                    out.partitions.push(p);
                }
                response.topics.push(out);
            }
        }
        return response;
    }
    match request.topics {
        Some(topics) => {
            for topic in topics {
                let reads = topic.partition_indexes.iter().map(|&index| {
                    let (store, group, name) = (&store, &group, topic.name.as_str());
                    async move { offsets::fetch(store.as_ref(), group, name, index).await }
                });
                let results = futures::future::join_all(reads).await;
                let mut out = OffsetFetchResponseTopic::default();
                out.name = topic.name.clone();
                for (&index, result) in topic.partition_indexes.iter().zip(results) {
                    match result {
                        Ok(committed) => out.partitions.push(partition(index, committed)),
                        Err(e) => {
                            let mut p = partition(index, None);
                            p.error_code = error_code(&e).code();
                            out.partitions.push(p);
                        }
                    }
                }
                response.topics.push(out);
            }
        }
        None => match offsets::fetch_all(store.as_ref(), &group).await {
            Ok(all) => {
                for (name, index, committed) in all {
                    let name = KafkaTopicName(str_bytes(name));
                    let p = partition(index, Some(committed));
                    match response.topics.last_mut() {
                        Some(last) if last.name == name => last.partitions.push(p),
                        _ => {
                            let mut out = OffsetFetchResponseTopic::default();
                            out.name = name;
                            out.partitions.push(p);
                            response.topics.push(out);
                        }
                    }
                }
            }
            // v1 has no group-level error: the group reads as without offsets.
            Err(e) if version >= 2 => response.error_code = error_code(&e).code(),
            Err(_) => {}
        },
    }
    response
}

/// ListGroups: groups with members here, and groups with committed
/// offsets (Empty), filtered by state (v4+).
pub async fn list_groups(
    conn: &Connection,
    request: ListGroupsRequest,
    version: i16,
) -> ListGroupsResponse {
    let mut response = ListGroupsResponse::default();
    let mut listed: Vec<(String, &'static str, String)> = conn
        .coordinator
        .list()
        .into_iter()
        .map(|(id, phase, protocol_type)| (id, phase.name(), protocol_type))
        .collect();
    match offsets::groups(conn.ctx.backend.metadata().as_ref()).await {
        Ok(stored) => {
            for group in stored {
                if !listed.iter().any(|(id, _, _)| *id == group) {
                    listed.push((group, "Empty", "consumer".to_owned()));
                }
            }
        }
        Err(e) => response.error_code = error_code(&e).code(),
    }
    let wanted = |state: &str| {
        request.states_filter.is_empty()
            || request
                .states_filter
                .iter()
                .any(|s| s.as_str().eq_ignore_ascii_case(state))
    };
    response.groups = listed
        .into_iter()
        .filter(|(_, state, _)| wanted(state))
        .map(|(id, state, protocol_type)| {
            let mut group = ListedGroup::default();
            group.group_id = GroupId(str_bytes(id));
            group.protocol_type = str_bytes(protocol_type);
            if version >= 4 {
                group.group_state = StrBytes::from_static_str(state);
            }
            group
        })
        .collect();
    response
}

/// DescribeGroups: a group without members here is `Empty` if it has
/// committed offsets, else `Dead`, as Kafka answers. An `Empty` one is of
/// protocol type `consumer`, as ListGroups lists it: only consumers commit
/// offsets here, and Kafka keeps an emptied group's type.
pub async fn describe_groups(
    conn: &Connection,
    request: DescribeGroupsRequest,
    version: i16,
) -> DescribeGroupsResponse {
    let store = conn.ctx.backend.metadata();
    let mut response = DescribeGroupsResponse::default();
    for group_id in request.groups {
        let mut described = DescribedGroup::default();
        described.authorized_operations = i32::MIN;
        if let Err(code) = coordinated_here(conn, group_id.as_str()).await {
            described.error_code = code.code();
            described.group_id = group_id;
            response.groups.push(described);
            continue;
        }
        match conn.coordinator.describe(group_id.as_str()) {
            Some(description) => {
                described.group_state = StrBytes::from_static_str(description.phase.name());
                described.protocol_type = str_bytes(description.protocol_type);
                described.protocol_data = str_bytes(description.protocol);
                described.members = description
                    .members
                    .into_iter()
                    .map(|m| {
                        let mut member = DescribedGroupMember::default();
                        member.member_id = str_bytes(m.member_id);
                        if version >= 4 {
                            member.group_instance_id = m.instance_id.map(str_bytes);
                        }
                        member.client_id = str_bytes(m.client_id);
                        member.client_host = str_bytes(m.client_host);
                        member.member_metadata = m.metadata;
                        member.member_assignment = m.assignment;
                        member
                    })
                    .collect();
            }
            None => match offsets::fetch_all(store.as_ref(), group_id.as_str()).await {
                Ok(stored) if stored.is_empty() => {
                    described.group_state = StrBytes::from_static_str("Dead");
                }
                Ok(_) => {
                    described.group_state = StrBytes::from_static_str("Empty");
                    described.protocol_type = StrBytes::from_static_str("consumer");
                }
                Err(e) => described.error_code = error_code(&e).code(),
            },
        }
        described.group_id = group_id;
        response.groups.push(described);
    }
    response
}

/// DeleteGroups: groups without members lose their committed offsets.
/// Deletes a group's record in this cluster and its committed offsets;
/// whether it had offsets.
async fn delete_stored(
    conn: &Connection,
    store: &dyn gateway_api::MetadataStore,
    group: &str,
) -> Result<bool, gateway_api::BackendError> {
    state::delete(store, &conn.config.cluster_id, group).await?;
    offsets::delete_all(store, group).await
}

pub async fn delete_groups(
    conn: &Connection,
    request: DeleteGroupsRequest,
) -> DeleteGroupsResponse {
    let store = conn.ctx.backend.metadata();
    let mut response = DeleteGroupsResponse::default();
    for group_id in request.groups_names {
        let mut result = DeletableGroupResult::default();
        if let Err(code) = coordinated_here(conn, group_id.as_str()).await {
            result.error_code = code.code();
            result.group_id = group_id;
            response.results.push(result);
            continue;
        }
        let known_here = conn.coordinator.describe(group_id.as_str()).is_some();
        result.error_code = match conn.coordinator.delete(group_id.as_str()) {
            Err(e) => e.code().code(),
            Ok(()) => match delete_stored(conn, store.as_ref(), group_id.as_str()).await {
                Ok(had_offsets) if had_offsets || known_here => 0,
                Ok(_) => GroupError::GroupIdNotFound.code().code(),
                Err(e) => error_code(&e).code(),
            },
        };
        result.group_id = group_id;
        response.results.push(result);
    }
    response
}
