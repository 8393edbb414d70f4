//! The classic consumer-group protocol's state machine, in plain types:
//! members join, the group rebalances, the leader's assignment is handed
//! out, heartbeats keep members in, and members that stop are removed.
//!
//! A group moves through Kafka's states: `Empty` → `PreparingRebalance`
//! (waiting for every known member to join again, at most the longest
//! rebalance timeout) → `CompletingRebalance` (a new generation is chosen;
//! waiting for the leader's assignment) → `Stable`. A join from a new
//! member, a changed member, the leader, a leave or an expired session
//! starts the next rebalance. Join and sync calls that must wait get a
//! receiver that the state machine answers; a sweeper task completes
//! rebalances whose time is up and expires silent members.
//!
//! Membership lives in the coordinating gateway's memory, and each stable
//! generation (its members, protocol, leader and assignments) also in the
//! metadata store (`state`), as a Kafka broker writes its groups to
//! `__consumer_offsets`: a gateway that takes a group over (after a
//! restart, or from another gateway) [`Coordinator::restore`]s it, and its
//! members go on heartbeating in their generation instead of joining
//! again. The coordinator records each change to that record
//! ([`Coordinator::take_changes`]); `state` writes them. Committed offsets
//! are durable, in `offsets`.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;

/// How often the sweeper looks for finished rebalances and silent members.
const SWEEP_EVERY: Duration = Duration::from_millis(100);

/// The group coordinator's settings (a Kafka broker's `group.*` settings).
#[derive(Debug, Clone)]
pub struct GroupSettings {
    /// How long a new group waits for more members before its first
    /// generation (`group.initial.rebalance.delay.ms`, 3 s in Kafka); each
    /// new member restarts the wait, up to the rebalance timeout.
    pub initial_rebalance_delay: Duration,
    /// The shortest session timeout a member may ask for
    /// (`group.min.session.timeout.ms`, 6 s).
    pub min_session_timeout: Duration,
    /// The longest (`group.max.session.timeout.ms`, 30 min).
    pub max_session_timeout: Duration,
    /// The most members of one group (`group.max.size`; unbounded in Kafka,
    /// bounded here so one group cannot grow the gateway's memory without
    /// end).
    pub max_group_size: usize,
}

impl Default for GroupSettings {
    fn default() -> GroupSettings {
        GroupSettings {
            initial_rebalance_delay: Duration::from_secs(3),
            min_session_timeout: Duration::from_secs(6),
            max_session_timeout: Duration::from_secs(30 * 60),
            max_group_size: 1000,
        }
    }
}

/// Why a group call failed; each is one of Kafka's error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum GroupError {
    #[error("the member id is not known to the group")]
    UnknownMemberId,
    #[error("the generation is not the group's current one")]
    IllegalGeneration,
    #[error("the group is rebalancing")]
    RebalanceInProgress,
    #[error("no protocol is common to the members, or the type differs")]
    InconsistentGroupProtocol,
    #[error("the session timeout is outside the coordinator's bounds")]
    InvalidSessionTimeout,
    #[error("join again with the member id given")]
    MemberIdRequired,
    #[error("the group is being deleted")]
    CoordinatorNotAvailable,
    #[error("another member has the same group instance id")]
    FencedInstanceId,
    #[error("the group has members")]
    NonEmptyGroup,
    #[error("the group does not exist")]
    GroupIdNotFound,
    #[error("the group id is empty")]
    InvalidGroupId,
    #[error("the group has as many members as it may")]
    GroupMaxSizeReached,
}

/// A JoinGroup, in plain types.
#[derive(Debug, Clone)]
pub struct Join {
    pub group: String,
    /// Empty for a member joining for the first time.
    pub member_id: String,
    /// Static membership (`group.instance.id`).
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout: Duration,
    pub rebalance_timeout: Duration,
    pub protocol_type: String,
    /// The assignors the member speaks, preferred first, with its metadata
    /// for each.
    pub protocols: Vec<(String, Bytes)>,
    /// JoinGroup v4+: a new member first gets its id with
    /// `MemberIdRequired` and joins again with it (KIP-394), so a client
    /// that times out before the answer does not leave a stray member.
    pub member_id_required: bool,
}

/// What a join is answered with.
#[derive(Debug, Clone, PartialEq)]
pub struct Joined {
    pub generation: i32,
    pub protocol_type: String,
    pub protocol: String,
    pub leader: String,
    pub member_id: String,
    /// Every member with its metadata for the chosen protocol, for the
    /// leader; empty for the others.
    pub members: Vec<JoinedMember>,
}

/// One member as the leader sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct JoinedMember {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub metadata: Bytes,
}

/// A join's answer: at once, or once the rebalance completes.
pub enum JoinReply {
    Now(Result<Joined, (GroupError, String)>),
    Later(oneshot::Receiver<Result<Joined, GroupError>>),
}

/// A sync's answer: the member's assignment, at once or once the leader
/// sent the assignments.
pub enum SyncReply {
    Now(Result<Synced, GroupError>),
    Later(oneshot::Receiver<Result<Synced, GroupError>>),
}

/// A member's assignment for the generation.
#[derive(Debug, Clone, PartialEq)]
pub struct Synced {
    pub protocol_type: String,
    pub protocol: String,
    pub assignment: Bytes,
}

/// Where a group is in its cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
}

impl Phase {
    /// Kafka's name for the state (DescribeGroups, ListGroups).
    pub fn name(self) -> &'static str {
        match self {
            Phase::Empty => "Empty",
            Phase::PreparingRebalance => "PreparingRebalance",
            Phase::CompletingRebalance => "CompletingRebalance",
            Phase::Stable => "Stable",
        }
    }
}

/// A group as DescribeGroups shows it.
#[derive(Debug, Clone)]
pub struct Description {
    pub phase: Phase,
    pub protocol_type: String,
    /// The chosen protocol, once the group is Stable.
    pub protocol: String,
    pub members: Vec<MemberDescription>,
}

/// A member as DescribeGroups shows it.
#[derive(Debug, Clone)]
pub struct MemberDescription {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub metadata: Bytes,
    pub assignment: Bytes,
}

/// A stable generation as the metadata store keeps it (see `state`).
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub generation: i32,
    pub protocol_type: String,
    pub protocol: String,
    pub leader: String,
    pub members: Vec<SnapshotMember>,
}

/// A member of a [`Snapshot`].
#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotMember {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout: Duration,
    pub rebalance_timeout: Duration,
    /// Its metadata for the group's protocol.
    pub metadata: Bytes,
    pub assignment: Bytes,
}

struct Member {
    instance_id: Option<String>,
    client_id: String,
    client_host: String,
    session_timeout: Duration,
    rebalance_timeout: Duration,
    protocol_type: String,
    protocols: Vec<(String, Bytes)>,
    assignment: Bytes,
    /// Heartbeats (and joins, syncs) push this out by the session timeout.
    expires: Instant,
    /// Set while the member waits for the rebalance to complete.
    awaiting_join: Option<oneshot::Sender<Result<Joined, GroupError>>>,
    /// Set while the member waits for the leader's assignment.
    awaiting_sync: Option<oneshot::Sender<Result<Synced, GroupError>>>,
}

impl Member {
    fn metadata_for(&self, protocol: &str) -> Bytes {
        self.protocols
            .iter()
            .find(|(name, _)| name == protocol)
            .map(|(_, metadata)| metadata.clone())
            .unwrap_or_default()
    }
}

struct Group {
    phase: Phase,
    generation: i32,
    protocol_type: String,
    protocol: String,
    leader: Option<String>,
    members: BTreeMap<String, Member>,
    /// Ids handed out with `MemberIdRequired`, not yet joined with, each
    /// forgotten after the session timeout its join asked for.
    pending: HashMap<String, Instant>,
    /// While preparing: when the rebalance completes even if members are
    /// missing.
    rebalance_deadline: Option<Instant>,
    /// While preparing a group's first generation: not before this time,
    /// so members starting together land in one generation.
    not_before: Option<Instant>,
    /// Whether a stable generation of it was recorded for the store (and
    /// not yet its end).
    recorded: bool,
}

impl Group {
    fn new() -> Group {
        Group {
            phase: Phase::Empty,
            generation: 0,
            protocol_type: String::new(),
            protocol: String::new(),
            leader: None,
            members: BTreeMap::new(),
            pending: HashMap::new(),
            rebalance_deadline: None,
            not_before: None,
            recorded: false,
        }
    }

    /// The stable generation as the store keeps it.
    fn snapshot(&self) -> Snapshot {
        Snapshot {
            generation: self.generation,
            protocol_type: self.protocol_type.clone(),
            protocol: self.protocol.clone(),
            leader: self.leader.clone().unwrap_or_default(),
            members: self
                .members
                .iter()
                .map(|(id, m)| SnapshotMember {
                    member_id: id.clone(),
                    instance_id: m.instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    session_timeout: m.session_timeout,
                    rebalance_timeout: m.rebalance_timeout,
                    metadata: m.metadata_for(&self.protocol),
                    assignment: m.assignment.clone(),
                })
                .collect(),
        }
    }

    /// The group a snapshot records, Stable, its members' sessions starting
    /// at `now`.
    fn restored(snapshot: Snapshot, now: Instant) -> Group {
        let mut group = Group::new();
        group.phase = Phase::Stable;
        group.generation = snapshot.generation;
        group.protocol_type = snapshot.protocol_type;
        group.leader = Some(snapshot.leader);
        group.recorded = true;
        for m in snapshot.members {
            let member = Member {
                instance_id: m.instance_id,
                client_id: m.client_id,
                client_host: m.client_host,
                session_timeout: m.session_timeout,
                rebalance_timeout: m.rebalance_timeout,
                protocol_type: group.protocol_type.clone(),
                protocols: vec![(snapshot.protocol.clone(), m.metadata)],
                assignment: m.assignment,
                expires: now + m.session_timeout,
                awaiting_join: None,
                awaiting_sync: None,
            };
            group.members.insert(m.member_id, member);
        }
        group.protocol = snapshot.protocol;
        group
    }

    /// The protocol every member speaks that the members rank best
    /// (each member votes for its first choice among the common ones).
    fn choose_protocol(&self) -> Option<String> {
        let mut members = self.members.values();
        let first = members.next()?;
        let common: Vec<&str> = first
            .protocols
            .iter()
            .map(|(name, _)| name.as_str())
            .filter(|name| {
                self.members
                    .values()
                    .all(|m| m.protocols.iter().any(|(n, _)| n == name))
            })
            .collect();
        let mut votes: HashMap<&str, usize> = HashMap::new();
        for member in self.members.values() {
            if let Some((name, _)) = member
                .protocols
                .iter()
                .find(|(n, _)| common.contains(&n.as_str()))
            {
                *votes.entry(name.as_str()).or_default() += 1;
            }
        }
        // Ties go to the first member's preference.
        common
            .iter()
            .max_by_key(|name| {
                let rank = common.len() - common.iter().position(|n| n == *name).unwrap_or(0);
                (votes.get(*name).copied().unwrap_or(0), rank)
            })
            .map(|name| (*name).to_owned())
    }

    /// Whether a joining member can be in this group: same protocol type,
    /// and a protocol in common with every member.
    fn accepts(&self, join: &Join) -> bool {
        if self.members.is_empty() || self.members.keys().eq([&join.member_id]) {
            return true;
        }
        join.protocol_type == self.protocol_type
            && join.protocols.iter().any(|(name, _)| {
                self.members
                    .iter()
                    .filter(|(id, _)| **id != join.member_id)
                    .all(|(_, m)| m.protocols.iter().any(|(n, _)| n == name))
            })
    }

    /// Starts a rebalance (if one is not under way): every member must
    /// join again; those waiting for an assignment are told to.
    fn prepare_rebalance(&mut self, now: Instant, settings: &GroupSettings) {
        if self.phase == Phase::PreparingRebalance {
            return;
        }
        for member in self.members.values_mut() {
            if let Some(waiting) = member.awaiting_sync.take() {
                let _ = waiting.send(Err(GroupError::RebalanceInProgress));
            }
        }
        let longest = self
            .members
            .values()
            .map(|m| m.rebalance_timeout)
            .max()
            .unwrap_or_default();
        if self.phase == Phase::Empty {
            self.not_before = Some(now + settings.initial_rebalance_delay.min(longest));
        }
        self.rebalance_deadline = Some(now + longest);
        self.phase = Phase::PreparingRebalance;
    }

    /// Completes the rebalance if it may: every member joined (and a new
    /// group's delay is over), or the deadline passed (members that did not
    /// join are dropped).
    fn maybe_complete_join(&mut self, now: Instant) {
        if self.phase != Phase::PreparingRebalance {
            return;
        }
        let all_joined = self.members.values().all(|m| m.awaiting_join.is_some());
        let delayed = self.not_before.is_some_and(|t| now < t);
        let overdue = self.rebalance_deadline.is_some_and(|t| now >= t);
        if !(overdue || all_joined && !delayed) {
            return;
        }
        self.members.retain(|_, m| m.awaiting_join.is_some());
        self.pending.clear();
        self.rebalance_deadline = None;
        self.not_before = None;
        self.generation = self.generation.wrapping_add(1).max(1);
        let Some(protocol) = self.choose_protocol() else {
            // Its protocol type stays, as Kafka keeps an emptied group's
            // (ListGroups and DescribeGroups show it).
            self.phase = Phase::Empty;
            self.leader = None;
            self.protocol.clear();
            return;
        };
        self.protocol = protocol;
        if !self
            .leader
            .as_ref()
            .is_some_and(|l| self.members.contains_key(l))
        {
            self.leader = self.members.keys().next().cloned();
        }
        let leader = self.leader.clone().unwrap_or_default();
        let everyone: Vec<JoinedMember> = self
            .members
            .iter()
            .map(|(id, m)| JoinedMember {
                member_id: id.clone(),
                instance_id: m.instance_id.clone(),
                metadata: m.metadata_for(&self.protocol),
            })
            .collect();
        self.phase = Phase::CompletingRebalance;
        for (id, member) in self.members.iter_mut() {
            member.expires = now + member.session_timeout;
            member.assignment = Bytes::new();
            if let Some(waiting) = member.awaiting_join.take() {
                let _ = waiting.send(Ok(Joined {
                    generation: self.generation,
                    protocol_type: self.protocol_type.clone(),
                    protocol: self.protocol.clone(),
                    leader: leader.clone(),
                    member_id: id.clone(),
                    members: if *id == leader {
                        everyone.clone()
                    } else {
                        Vec::new()
                    },
                }));
            }
        }
    }

    /// Drops members whose session ran out (not while they wait for a
    /// rebalance), and rebalances without them.
    fn expire(&mut self, now: Instant, settings: &GroupSettings) {
        self.pending.retain(|_, expires| *expires > now);
        if self.phase == Phase::PreparingRebalance || self.phase == Phase::Empty {
            return;
        }
        let before = self.members.len();
        self.members.retain(|_, m| m.expires > now);
        if self.members.len() < before {
            self.prepare_rebalance(now, settings);
            self.maybe_complete_join(now);
        }
    }

    /// The current generation's answer to a member's join, without a
    /// rebalance (a follower joining again with nothing changed).
    fn current(&self, member_id: &str) -> Joined {
        Joined {
            generation: self.generation,
            protocol_type: self.protocol_type.clone(),
            protocol: self.protocol.clone(),
            leader: self.leader.clone().unwrap_or_default(),
            member_id: member_id.to_owned(),
            members: Vec::new(),
        }
    }

    /// Removes a member, rebalancing without it.
    fn remove(&mut self, member_id: &str, now: Instant, settings: &GroupSettings) {
        if let Some(member) = self.members.remove(member_id) {
            if let Some(waiting) = member.awaiting_join {
                let _ = waiting.send(Err(GroupError::UnknownMemberId));
            }
            if let Some(waiting) = member.awaiting_sync {
                let _ = waiting.send(Err(GroupError::UnknownMemberId));
            }
            self.prepare_rebalance(now, settings);
            self.maybe_complete_join(now);
        }
    }

    /// Checks a member and generation for sync, heartbeat and commit.
    fn check_member(
        &self,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
    ) -> Result<(), GroupError> {
        let Some(member) = self.members.get(member_id) else {
            return Err(match instance_id {
                Some(i) if self.instance_owner(i).is_some() => GroupError::FencedInstanceId,
                _ => GroupError::UnknownMemberId,
            });
        };
        if instance_id.is_some() && member.instance_id.as_deref() != instance_id {
            return Err(GroupError::FencedInstanceId);
        }
        if generation != self.generation {
            return Err(GroupError::IllegalGeneration);
        }
        Ok(())
    }

    fn instance_owner(&self, instance_id: &str) -> Option<String> {
        self.members
            .iter()
            .find(|(_, m)| m.instance_id.as_deref() == Some(instance_id))
            .map(|(id, _)| id.clone())
    }
}

/// Every group this gateway coordinates.
pub struct Coordinator {
    settings: GroupSettings,
    groups: Mutex<HashMap<String, Group>>,
    /// Changes to the groups' records not yet taken for the store: a new
    /// stable generation, or `None` once the group has no members (the
    /// latest change of each group only).
    changes: Mutex<BTreeMap<String, Option<Snapshot>>>,
    /// Notified at each change recorded.
    changed: Arc<Notify>,
    /// The sweeper task, started with the first join.
    sweeper: OnceLock<()>,
    /// Handed to the sweeper, which stops once the coordinator is gone.
    this: Weak<Coordinator>,
}

impl Coordinator {
    pub fn new(settings: GroupSettings) -> Arc<Coordinator> {
        Arc::new_cyclic(|this| Coordinator {
            settings,
            groups: Mutex::new(HashMap::new()),
            changes: Mutex::new(BTreeMap::new()),
            changed: Arc::new(Notify::new()),
            sweeper: OnceLock::new(),
            this: this.clone(),
        })
    }

    fn groups(&self) -> MutexGuard<'_, HashMap<String, Group>> {
        // Each call leaves the groups consistent before it could panic.
        self.groups
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn start_sweeper(&self) {
        self.sweeper.get_or_init(|| {
            let this = self.this.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(SWEEP_EVERY);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let Some(coordinator) = this.upgrade() else {
                        return;
                    };
                    coordinator.sweep(Instant::now());
                }
            });
        });
    }

    /// Records a change of `group_id`'s record for the store.
    fn record(&self, group_id: &str, snapshot: Option<Snapshot>) {
        self.changes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(group_id.to_owned(), snapshot);
        self.changed.notify_one();
    }

    /// Notified when a change is recorded (a permit is kept if nobody
    /// waits: a change made meanwhile is not missed).
    pub fn changed(&self) -> Arc<Notify> {
        self.changed.clone()
    }

    /// The changes recorded since the last call, each group's latest.
    pub fn take_changes(&self) -> BTreeMap<String, Option<Snapshot>> {
        std::mem::take(
            &mut *self
                .changes
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        )
    }

    /// Whether this coordinator holds `group_id` in memory.
    pub fn holds(&self, group_id: &str) -> bool {
        self.groups().contains_key(group_id)
    }

    /// Takes a group over from its record in the store, unless it is held
    /// already (a join came first).
    pub fn restore(&self, group_id: &str, snapshot: Snapshot) {
        self.start_sweeper();
        let now = Instant::now();
        self.groups()
            .entry(group_id.to_owned())
            .or_insert_with(|| Group::restored(snapshot, now));
    }

    /// Drops a group another gateway coordinates now; its members are
    /// answered as if it had never been here (their pending calls fail).
    pub fn forget(&self, group_id: &str) {
        self.groups().remove(group_id);
    }

    /// Completes rebalances whose time is up and expires silent members.
    pub fn sweep(&self, now: Instant) {
        let mut groups = self.groups();
        for (id, group) in groups.iter_mut() {
            group.maybe_complete_join(now);
            group.expire(now, &self.settings);
            if group.phase == Phase::Empty && group.recorded {
                group.recorded = false;
                self.record(id, None);
            }
        }
        // Forget groups with nothing left; committed offsets stay in the
        // store.
        groups.retain(|_, g| g.phase != Phase::Empty || !g.pending.is_empty());
    }

    /// JoinGroup.
    pub fn join(&self, join: Join) -> JoinReply {
        self.start_sweeper();
        let now = Instant::now();
        let refuse = |e: GroupError, id: &str| JoinReply::Now(Err((e, id.to_owned())));
        if join.group.is_empty() {
            return refuse(GroupError::InvalidGroupId, &join.member_id);
        }
        if join.session_timeout < self.settings.min_session_timeout
            || join.session_timeout > self.settings.max_session_timeout
        {
            return refuse(GroupError::InvalidSessionTimeout, &join.member_id);
        }
        if join.protocol_type.is_empty() || join.protocols.is_empty() {
            return refuse(GroupError::InconsistentGroupProtocol, &join.member_id);
        }
        let mut groups = self.groups();
        let group = groups.entry(join.group.clone()).or_insert_with(Group::new);
        let mut join = join;
        if join.member_id.is_empty() {
            let member_id = format!("{}-{}", join.client_id, uuid_like());
            if let Some(instance) = &join.instance_id {
                // A static member coming back under a new id: the old one
                // is fenced.
                if let Some(old) = group.instance_owner(instance) {
                    group.remove(&old, now, &self.settings);
                }
            } else if join.member_id_required {
                if group.members.len() + group.pending.len() >= self.settings.max_group_size {
                    return refuse(GroupError::GroupMaxSizeReached, "");
                }
                group
                    .pending
                    .insert(member_id.clone(), now + join.session_timeout);
                return refuse(GroupError::MemberIdRequired, &member_id);
            }
            join.member_id = member_id;
        } else if !group.members.contains_key(&join.member_id)
            && group.pending.remove(&join.member_id).is_none()
        {
            return refuse(GroupError::UnknownMemberId, &join.member_id);
        }
        if !group.accepts(&join) {
            return refuse(GroupError::InconsistentGroupProtocol, &join.member_id);
        }
        if !group.members.contains_key(&join.member_id)
            && group.members.len() >= self.settings.max_group_size
        {
            return refuse(GroupError::GroupMaxSizeReached, &join.member_id);
        }
        if group.members.is_empty() {
            group.protocol_type = join.protocol_type.clone();
        }

        let known = group.members.get(&join.member_id);
        let new_member = known.is_none();
        let unchanged = known.is_some_and(|m| m.protocols == join.protocols);
        let is_leader = group.leader.as_deref() == Some(join.member_id.as_str());
        if unchanged && !is_leader && group.phase == Phase::Stable
            || unchanged && group.phase == Phase::CompletingRebalance
        {
            // Nothing changed: the member gets the current generation
            // again (its earlier answer may have been lost).
            let member_id = join.member_id.clone();
            if let Some(member) = group.members.get_mut(&member_id) {
                member.expires = now + member.session_timeout;
            }
            let mut joined = group.current(&member_id);
            if is_leader {
                joined.members = group
                    .members
                    .iter()
                    .map(|(id, m)| JoinedMember {
                        member_id: id.clone(),
                        instance_id: m.instance_id.clone(),
                        metadata: m.metadata_for(&group.protocol),
                    })
                    .collect();
            }
            return JoinReply::Now(Ok(joined));
        }

        let (reply, waiting) = oneshot::channel();
        let member = Member {
            instance_id: join.instance_id,
            client_id: join.client_id,
            client_host: join.client_host,
            session_timeout: join.session_timeout,
            rebalance_timeout: join.rebalance_timeout,
            protocol_type: join.protocol_type,
            protocols: join.protocols,
            assignment: Bytes::new(),
            expires: now + join.session_timeout,
            awaiting_join: Some(reply),
            awaiting_sync: None,
        };
        if let Some(old) = group.members.insert(join.member_id.clone(), member) {
            if let Some(waiting) = old.awaiting_join {
                // The member joined again before its first join was answered:
                // only the latest call gets the answer.
                let _ = waiting.send(Err(GroupError::RebalanceInProgress));
            }
        }
        group.prepare_rebalance(now, &self.settings);
        if new_member {
            if let Some(not_before) = group.not_before.as_mut() {
                // A new group waits a little longer for each newcomer, up to
                // its rebalance deadline.
                let later = now + self.settings.initial_rebalance_delay;
                *not_before = later.min(group.rebalance_deadline.unwrap_or(later));
            }
            let longest = now + join.rebalance_timeout;
            if group.rebalance_deadline.is_some_and(|d| d < longest) {
                group.rebalance_deadline = Some(longest);
            }
        }
        group.maybe_complete_join(now);
        JoinReply::Later(waiting)
    }

    /// SyncGroup: the leader's call carries every member's assignment.
    pub fn sync(
        &self,
        group_id: &str,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        assignments: Vec<(String, Bytes)>,
    ) -> SyncReply {
        let now = Instant::now();
        let mut groups = self.groups();
        let Some(group) = groups.get_mut(group_id) else {
            return SyncReply::Now(Err(GroupError::UnknownMemberId));
        };
        if let Err(e) = group.check_member(member_id, instance_id, generation) {
            return SyncReply::Now(Err(e));
        }
        let synced = |group: &Group, assignment: Bytes| Synced {
            protocol_type: group.protocol_type.clone(),
            protocol: group.protocol.clone(),
            assignment,
        };
        match group.phase {
            Phase::Empty | Phase::PreparingRebalance => {
                SyncReply::Now(Err(GroupError::RebalanceInProgress))
            }
            Phase::Stable => {
                let assignment = group
                    .members
                    .get(member_id)
                    .map(|m| m.assignment.clone())
                    .unwrap_or_default();
                SyncReply::Now(Ok(synced(group, assignment)))
            }
            Phase::CompletingRebalance => {
                let (reply, waiting) = oneshot::channel();
                if let Some(member) = group.members.get_mut(member_id) {
                    member.expires = now + member.session_timeout;
                    member.awaiting_sync = Some(reply);
                }
                if group.leader.as_deref() == Some(member_id) {
                    let mut assignments: HashMap<String, Bytes> = assignments.into_iter().collect();
                    group.phase = Phase::Stable;
                    group.recorded = true;
                    let (protocol_type, protocol) =
                        (group.protocol_type.clone(), group.protocol.clone());
                    for (id, member) in group.members.iter_mut() {
                        member.assignment = assignments.remove(id).unwrap_or_default();
                        if let Some(waiting) = member.awaiting_sync.take() {
                            let _ = waiting.send(Ok(Synced {
                                protocol_type: protocol_type.clone(),
                                protocol: protocol.clone(),
                                assignment: member.assignment.clone(),
                            }));
                        }
                    }
                    let snapshot = group.snapshot();
                    self.record(group_id, Some(snapshot));
                }
                SyncReply::Later(waiting)
            }
        }
    }

    /// Heartbeat: keeps the member in; tells it when to join again.
    pub fn heartbeat(
        &self,
        group_id: &str,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
    ) -> Result<(), GroupError> {
        let now = Instant::now();
        let mut groups = self.groups();
        let Some(group) = groups.get_mut(group_id) else {
            return Err(GroupError::UnknownMemberId);
        };
        group.check_member(member_id, instance_id, generation)?;
        if let Some(member) = group.members.get_mut(member_id) {
            member.expires = now + member.session_timeout;
        }
        match group.phase {
            Phase::PreparingRebalance => Err(GroupError::RebalanceInProgress),
            _ => Ok(()),
        }
    }

    /// LeaveGroup: one member (by id), or several (by id or instance id);
    /// each gets its own answer.
    pub fn leave(
        &self,
        group_id: &str,
        members: &[(String, Option<String>)],
    ) -> Vec<Result<(), GroupError>> {
        let now = Instant::now();
        let mut groups = self.groups();
        let Some(group) = groups.get_mut(group_id) else {
            return vec![Err(GroupError::UnknownMemberId); members.len()];
        };
        members
            .iter()
            .map(|(member_id, instance_id)| {
                let id = match instance_id {
                    Some(instance) => match group.instance_owner(instance) {
                        Some(owner) if member_id.is_empty() || *member_id == owner => owner,
                        Some(_) => return Err(GroupError::FencedInstanceId),
                        None => return Err(GroupError::UnknownMemberId),
                    },
                    None => member_id.clone(),
                };
                if !group.members.contains_key(&id) {
                    return Err(GroupError::UnknownMemberId);
                }
                group.remove(&id, now, &self.settings);
                Ok(())
            })
            .collect()
    }

    /// Whether an OffsetCommit may write: a member of the current
    /// generation, or anyone (generation -1, no member) while the group has
    /// no members.
    pub fn check_commit(
        &self,
        group_id: &str,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
    ) -> Result<(), GroupError> {
        let groups = self.groups();
        let Some(group) = groups.get(group_id) else {
            return if generation < 0 {
                Ok(())
            } else {
                Err(GroupError::IllegalGeneration)
            };
        };
        if generation < 0 && group.members.is_empty() {
            return Ok(());
        }
        if group.phase == Phase::CompletingRebalance {
            return Err(GroupError::RebalanceInProgress);
        }
        group.check_member(member_id, instance_id, generation)
    }

    /// The groups with members or a rebalance under way, with their phase
    /// and protocol type.
    pub fn list(&self) -> Vec<(String, Phase, String)> {
        self.groups()
            .iter()
            .map(|(id, g)| (id.clone(), g.phase, g.protocol_type.clone()))
            .collect()
    }

    /// DescribeGroups for one group; `None` when this coordinator has no
    /// members for it.
    pub fn describe(&self, group_id: &str) -> Option<Description> {
        let groups = self.groups();
        let group = groups.get(group_id)?;
        let show_assignment = group.phase == Phase::Stable;
        Some(Description {
            phase: group.phase,
            protocol_type: group.protocol_type.clone(),
            protocol: if show_assignment {
                group.protocol.clone()
            } else {
                String::new()
            },
            members: group
                .members
                .iter()
                .map(|(id, m)| MemberDescription {
                    member_id: id.clone(),
                    instance_id: m.instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    metadata: if show_assignment {
                        m.metadata_for(&group.protocol)
                    } else {
                        Bytes::new()
                    },
                    assignment: if show_assignment {
                        m.assignment.clone()
                    } else {
                        Bytes::new()
                    },
                })
                .collect(),
        })
    }

    /// DeleteGroups' check and removal of the membership state: a group
    /// with members is refused.
    pub fn delete(&self, group_id: &str) -> Result<(), GroupError> {
        let mut groups = self.groups();
        match groups.get(group_id) {
            Some(group) if !group.members.is_empty() => Err(GroupError::NonEmptyGroup),
            _ => {
                groups.remove(group_id);
                self.record(group_id, None);
                Ok(())
            }
        }
    }
}

impl std::fmt::Debug for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Member")
            .field("client_id", &self.client_id)
            .field("protocol_type", &self.protocol_type)
            .finish_non_exhaustive()
    }
}

/// A random-looking suffix for member ids, unique within the process:
/// time and a counter, hashed.
fn uuid_like() -> String {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(n);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    hasher.write_u64(nanos);
    format!("{:016x}-{n:x}", hasher.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> GroupSettings {
        GroupSettings {
            initial_rebalance_delay: Duration::from_secs(3),
            ..GroupSettings::default()
        }
    }

    fn join(group: &str, member_id: &str, client: &str) -> Join {
        Join {
            group: group.into(),
            member_id: member_id.into(),
            instance_id: None,
            client_id: client.into(),
            client_host: "127.0.0.1".into(),
            session_timeout: Duration::from_secs(10),
            rebalance_timeout: Duration::from_secs(30),
            protocol_type: "consumer".into(),
            protocols: vec![
                ("cooperative-sticky".into(), Bytes::from_static(b"c")),
                ("range".into(), Bytes::from(client.to_owned())),
            ],
            member_id_required: false,
        }
    }

    async fn joined(reply: JoinReply) -> Result<Joined, GroupError> {
        match reply {
            JoinReply::Now(outcome) => outcome.map_err(|(e, _)| e),
            JoinReply::Later(waiting) => waiting.await.expect("answered"),
        }
    }

    async fn synced(reply: SyncReply) -> Result<Synced, GroupError> {
        match reply {
            SyncReply::Now(outcome) => outcome,
            SyncReply::Later(waiting) => waiting.await.expect("answered"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn members_starting_together_share_the_first_generation_and_the_leaders_assignment() {
        let coordinator = Coordinator::new(settings());
        let a = coordinator.join(join("g", "", "a"));
        tokio::time::sleep(Duration::from_secs(1)).await;
        let b = coordinator.join(join("g", "", "b"));
        let (a, b) = tokio::join!(joined(a), joined(b));
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_eq!((a.generation, b.generation), (1, 1));
        assert_eq!(
            a.protocol, "cooperative-sticky",
            "every member's first choice"
        );
        let (leader, follower) = if a.leader == a.member_id {
            (a, b)
        } else {
            (b, a)
        };
        assert_eq!(leader.members.len(), 2, "the leader sees every member");
        assert!(follower.members.is_empty());

        let waiting = coordinator.sync("g", &follower.member_id, None, 1, vec![]);
        let assignments = vec![
            (leader.member_id.clone(), Bytes::from_static(b"p0")),
            (follower.member_id.clone(), Bytes::from_static(b"p1")),
        ];
        let mine = synced(coordinator.sync("g", &leader.member_id, None, 1, assignments));
        let (mine, theirs) = tokio::join!(mine, synced(waiting));
        assert_eq!(&mine.unwrap().assignment[..], b"p0");
        assert_eq!(&theirs.unwrap().assignment[..], b"p1");
        assert_eq!(coordinator.describe("g").unwrap().phase, Phase::Stable);
        assert_eq!(
            coordinator.heartbeat("g", &follower.member_id, None, 1),
            Ok(())
        );
        assert_eq!(
            coordinator.heartbeat("g", &follower.member_id, None, 0),
            Err(GroupError::IllegalGeneration)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_stable_generation_is_recorded_and_another_coordinator_carries_on_with_it() {
        let first = Coordinator::new(settings());
        let member = joined(first.join(join("g", "", "a"))).await.unwrap();
        assert!(first.take_changes().is_empty(), "nothing stable yet");
        let only = vec![(member.member_id.clone(), Bytes::from_static(b"p0"))];
        synced(first.sync("g", &member.member_id, None, 1, only))
            .await
            .unwrap();
        let mut changes = first.take_changes();
        let snapshot = changes.remove("g").flatten().expect("the generation");
        assert_eq!((snapshot.generation, snapshot.members.len()), (1, 1));
        assert_eq!(snapshot.protocol, "cooperative-sticky");

        // Another gateway takes the group over: the member heartbeats on
        // in its generation and keeps its assignment.
        let next = Coordinator::new(settings());
        next.restore("g", snapshot);
        assert_eq!(next.heartbeat("g", &member.member_id, None, 1), Ok(()));
        let again = synced(next.sync("g", &member.member_id, None, 1, vec![])).await;
        assert_eq!(&again.unwrap().assignment[..], b"p0");
        let described = next.describe("g").unwrap();
        assert_eq!(described.phase, Phase::Stable);
        assert_eq!(&described.members[0].metadata[..], b"c");

        // Once it has no members, its record goes.
        next.leave("g", &[(member.member_id.clone(), None)]);
        next.sweep(Instant::now());
        assert_eq!(next.take_changes().remove("g"), Some(None));
        assert!(!next.holds("g"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_newcomer_rebalances_the_group_and_a_member_that_does_not_rejoin_is_dropped() {
        let coordinator = Coordinator::new(settings());
        let first = joined(coordinator.join(join("g", "", "a"))).await.unwrap();
        let only = vec![(first.member_id.clone(), Bytes::new())];
        synced(coordinator.sync("g", &first.member_id, None, 1, only))
            .await
            .unwrap();

        let newcomer = coordinator.join(join("g", "", "b"));
        assert_eq!(
            coordinator.heartbeat("g", &first.member_id, None, 1),
            Err(GroupError::RebalanceInProgress),
            "the old member is told to join again"
        );
        let again = coordinator.join(join("g", &first.member_id, "a"));
        let (again, newcomer) = tokio::join!(joined(again), joined(newcomer));
        assert_eq!(again.unwrap().generation, 2);
        let newcomer = newcomer.unwrap();
        assert_eq!(newcomer.generation, 2);

        // A third member arrives; the first two never rejoin: after the
        // rebalance timeout, the generation is the third's alone.
        let third = joined(coordinator.join(join("g", "", "c"))).await.unwrap();
        assert_eq!(third.generation, 3);
        assert_eq!(third.leader, third.member_id);
        assert_eq!(third.members.len(), 1);
        assert_eq!(
            coordinator.heartbeat("g", &newcomer.member_id, None, 2),
            Err(GroupError::UnknownMemberId)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_member_expires_and_the_rest_rebalance_without_it() {
        let coordinator = Coordinator::new(settings());
        let a = coordinator.join(join("g", "", "a"));
        let b = coordinator.join(join("g", "", "b"));
        let (a, b) = tokio::join!(joined(a), joined(b));
        let (a, b) = (a.unwrap(), b.unwrap());
        let (leader, follower) = if a.leader == a.member_id {
            (a, b)
        } else {
            (b, a)
        };
        let follower_sync = coordinator.sync("g", &follower.member_id, None, 1, vec![]);
        synced(coordinator.sync("g", &leader.member_id, None, 1, vec![]))
            .await
            .unwrap();
        synced(follower_sync).await.unwrap();
        // The follower heartbeats every 3 s; the leader falls silent.
        let mut told = None;
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_secs(3)).await;
            if let Err(e) = coordinator.heartbeat("g", &follower.member_id, None, 1) {
                told = Some(e);
                break;
            }
        }
        assert_eq!(told, Some(GroupError::RebalanceInProgress));
        let rejoined = joined(coordinator.join(join("g", &follower.member_id, "b")))
            .await
            .unwrap();
        assert_eq!(rejoined.generation, 2);
        assert_eq!(rejoined.leader, follower.member_id, "the leader is gone");
    }

    #[tokio::test(start_paused = true)]
    async fn new_members_of_v4_get_their_id_first_and_unknown_ids_are_refused() {
        let coordinator = Coordinator::new(settings());
        let mut first = join("g", "", "a");
        first.member_id_required = true;
        let JoinReply::Now(Err((GroupError::MemberIdRequired, id))) =
            coordinator.join(first.clone())
        else {
            panic!("a new member first gets its id");
        };
        first.member_id = id.clone();
        assert_eq!(joined(coordinator.join(first)).await.unwrap().member_id, id);
        assert_eq!(
            joined(coordinator.join(join("g", "made-up", "x"))).await,
            Err(GroupError::UnknownMemberId)
        );
        let mut other_type = join("g", "", "y");
        other_type.protocol_type = "connect".into();
        assert_eq!(
            joined(coordinator.join(other_type)).await,
            Err(GroupError::InconsistentGroupProtocol)
        );
        let mut hasty = join("g", "", "z");
        hasty.session_timeout = Duration::from_millis(100);
        assert_eq!(
            joined(coordinator.join(hasty)).await,
            Err(GroupError::InvalidSessionTimeout)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn commits_need_the_current_generation_unless_the_group_has_no_members() {
        let coordinator = Coordinator::new(settings());
        assert_eq!(coordinator.check_commit("nobody", "", None, -1), Ok(()));
        let a = joined(coordinator.join(join("g", "", "a"))).await.unwrap();
        assert_eq!(
            coordinator.check_commit("g", &a.member_id, None, 1),
            Err(GroupError::RebalanceInProgress),
            "not before the assignment is out"
        );
        synced(coordinator.sync("g", &a.member_id, None, 1, vec![]))
            .await
            .unwrap();
        assert_eq!(coordinator.check_commit("g", &a.member_id, None, 1), Ok(()));
        assert_eq!(
            coordinator.check_commit("g", "", None, -1),
            Err(GroupError::UnknownMemberId),
            "a group with members takes commits from its members only"
        );
        assert_eq!(
            coordinator.check_commit("g", &a.member_id, None, 7),
            Err(GroupError::IllegalGeneration)
        );
        assert_eq!(coordinator.delete("g"), Err(GroupError::NonEmptyGroup));
        assert_eq!(
            coordinator.leave("g", &[(a.member_id.clone(), None)]),
            vec![Ok(())]
        );
        assert_eq!(coordinator.delete("g"), Ok(()));
    }
}
