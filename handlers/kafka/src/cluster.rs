//! The Kafka gateways on one backend, found through its metadata store,
//! and which of them coordinates each consumer group.
//!
//! Each handler has a node id of its own (random at start) and registers
//! itself under `kafka/brokers/<cluster id>/<node id>` with the address clients reach it
//! at and the time, every [`HEARTBEAT_INTERVAL`]; it deletes the key when
//! the gateway shuts down. A registration refreshed within [`LIVENESS`] is
//! a live broker. On Pulsar every gateway of the cluster reads the same
//! keys; on the embedded store there is only this one.
//!
//! Every gateway serves every partition, so Metadata names the one asked as
//! each partition's leader. A group is coordinated by one live broker,
//! chosen by rendezvous hashing of the group id over the live node ids: the
//! same on every gateway that sees the same live set, and only the groups of
//! a broker that comes or goes move. Gateways configured with another
//! cluster id on the same backend are another cluster: they neither list
//! nor coordinate for these (committed offsets are still shared, keyed by
//! group alone). Liveness compares wall clocks across
//! gateways: they must agree within a few seconds.

use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use gateway_api::{BackendError, Context, ExpectedVersion, MetadataStore};
use tokio::sync::Notify;

/// How often a gateway refreshes its registration.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(3);

/// How long a registration counts as live after its last refresh: three
/// missed heartbeats and a margin.
pub const LIVENESS: Duration = Duration::from_secs(10);

/// How long a read of the live brokers serves requests before it is read
/// again, so a group request does not cost a store scan.
const LIVE_CACHE: Duration = Duration::from_secs(1);

/// Where registrations live in the metadata store, under the cluster id.
const PREFIX: &str = "kafka/brokers/";

/// The first byte of every registration this version writes.
const FORMAT: u8 = 1;

/// A live Kafka gateway as clients see it: a broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broker {
    /// Its node id, unique per gateway process.
    pub node_id: i32,
    /// The host clients connect to.
    pub host: String,
    /// The port clients connect to.
    pub port: u16,
}

/// This gateway's place among the Kafka gateways on its backend.
pub struct Cluster {
    /// This gateway's broker id, in Metadata and FindCoordinator.
    node_id: i32,
    /// Where this cluster's registrations live: `kafka/brokers/<id>/`.
    prefix: String,
    /// The address registered for other gateways to hand out: the
    /// advertised one, else the bound one, else (bound to a wildcard
    /// address) the first address a client reached. `None` until known;
    /// nothing is registered before.
    address: Mutex<Option<(String, u16)>>,
    /// Wakes the registration task when the address becomes known, so a
    /// gateway bound to a wildcard registers at its first connection.
    address_known: Notify,
    /// The last read of the live brokers and when it was read.
    live: Mutex<Option<(Instant, Arc<Vec<Broker>>)>>,
}

impl Cluster {
    /// This gateway, with a random node id and the advertised address if
    /// configured.
    pub fn new(cluster_id: &str, advertised: Option<(String, u16)>) -> Cluster {
        Cluster {
            node_id: random_node_id(),
            prefix: format!("{PREFIX}{cluster_id}/"),
            address: Mutex::new(advertised),
            address_known: Notify::new(),
            live: Mutex::new(None),
        }
    }

    /// This gateway's node id.
    pub fn node_id(&self) -> i32 {
        self.node_id
    }

    /// Starts registering this gateway, bound at `listening`, until
    /// `ctx.shutdown`; then deletes the registration.
    pub fn start(self: &Arc<Self>, listening: SocketAddr, ctx: Context) {
        self.learn_address(listening);
        let cluster = self.clone();
        tokio::spawn(async move { cluster.register(ctx).await });
    }

    /// Takes `local`, an address this gateway is reached at, as the one to
    /// register unless one is known already. A wildcard address
    /// (`0.0.0.0`) is nobody's to connect to and is not taken.
    pub fn learn_address(&self, local: SocketAddr) {
        if local.ip().is_unspecified() {
            return;
        }
        let mut address = lock(&self.address);
        if address.is_none() {
            *address = Some((local.ip().to_string(), local.port()));
            self.address_known.notify_one();
        }
    }

    /// The registration task: writes this gateway's key every heartbeat
    /// while its address is known, deletes it at shutdown.
    async fn register(&self, ctx: Context) {
        let store = ctx.backend.metadata();
        let key = format!("{}{}", self.prefix, self.node_id);
        let mut ticks = tokio::time::interval(HEARTBEAT_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Failures are logged when they start, not at every heartbeat (the
        // Pulsar backend is unavailable until it connects).
        let mut failing = false;
        loop {
            tokio::select! {
                _ = ctx.shutdown.cancelled() => break,
                _ = ticks.tick() => {}
                _ = self.address_known.notified() => {}
            }
            let Some((host, port)) = lock(&self.address).clone() else {
                continue;
            };
            let value = encode(&host, port, now_millis());
            match store.put(&key, value, ExpectedVersion::Any).await {
                Ok(_) => {
                    if failing {
                        tracing::info!(node_id = self.node_id, "Kafka broker registered again");
                    }
                    failing = false;
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(node_id = self.node_id, error = %e,
                            "registering the Kafka broker in the metadata store");
                    }
                    failing = true;
                }
            }
        }
        // Best effort: a registration left behind stops counting after
        // LIVENESS anyway.
        if let Err(e) = store.delete(&key, ExpectedVersion::Any).await {
            tracing::debug!(error = %e, "deleting the Kafka broker registration");
        }
    }

    /// The live brokers, in node id order, this gateway always among them
    /// (with its registered address, or none yet: callers answer their own
    /// entry with the address the client reached). Read from the store at
    /// most every [`LIVE_CACHE`]; when the store fails, the last read
    /// serves.
    pub async fn live(&self, store: &dyn MetadataStore) -> Arc<Vec<Broker>> {
        if let Some((read, brokers)) = lock(&self.live).as_ref() {
            if read.elapsed() < LIVE_CACHE {
                return brokers.clone();
            }
        }
        let brokers = match self.read_live(store).await {
            Ok(brokers) => Arc::new(brokers),
            Err(e) => {
                tracing::warn!(error = %e, "reading the live Kafka brokers");
                match lock(&self.live).as_ref() {
                    Some((_, last)) => last.clone(),
                    None => Arc::new(vec![self.own()]),
                }
            }
        };
        *lock(&self.live) = Some((Instant::now(), brokers.clone()));
        brokers
    }

    async fn read_live(&self, store: &dyn MetadataStore) -> Result<Vec<Broker>, BackendError> {
        let now = now_millis();
        let liveness = i64::try_from(LIVENESS.as_millis()).unwrap_or(i64::MAX);
        let mut brokers: Vec<Broker> = store
            .scan(&self.prefix)
            .await?
            .into_iter()
            .filter_map(|(key, versioned)| {
                let node_id: i32 = key.strip_prefix(&self.prefix)?.parse().ok()?;
                let (host, port, heartbeat) = decode(versioned.value)?;
                let fresh = now.saturating_sub(heartbeat) <= liveness;
                (fresh && node_id != self.node_id).then_some(Broker {
                    node_id,
                    host,
                    port,
                })
            })
            .collect();
        brokers.push(self.own());
        brokers.sort_by_key(|b| b.node_id);
        Ok(brokers)
    }

    /// This gateway as a broker, with its registered address if known.
    fn own(&self) -> Broker {
        let (host, port) = lock(&self.address).clone().unwrap_or_default();
        Broker {
            node_id: self.node_id,
            host,
            port,
        }
    }

    /// The live broker that coordinates `group`.
    pub async fn coordinator(&self, store: &dyn MetadataStore, group: &str) -> Broker {
        let live = self.live(store).await;
        let ids: Vec<i32> = live.iter().map(|b| b.node_id).collect();
        let chosen = choose(group, &ids).unwrap_or(self.node_id);
        live.iter()
            .find(|b| b.node_id == chosen)
            .cloned()
            .unwrap_or_else(|| self.own())
    }

    /// Whether this gateway coordinates `group`.
    pub async fn coordinates(&self, store: &dyn MetadataStore, group: &str) -> bool {
        self.coordinator(store, group).await.node_id == self.node_id
    }
}

/// The node that coordinates `group` among `nodes`: the one whose score
/// for the group is highest (rendezvous hashing), ties to the lower id.
/// `None` when there are no nodes.
pub fn choose(group: &str, nodes: &[i32]) -> Option<i32> {
    nodes
        .iter()
        .copied()
        .max_by_key(|&node| (score(group, node), std::cmp::Reverse(node)))
}

/// A stable hash of (group, node): FNV-1a over both, then a 64-bit
/// finalizer so that nearby node ids score unrelated. Written out rather
/// than std's hasher, whose output may differ between Rust releases, and
/// gateways of different builds must agree.
fn score(group: &str, node: i32) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in group.bytes().chain(node.to_be_bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // splitmix64's finalizer.
    hash ^= hash >> 30;
    hash = hash.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    hash ^= hash >> 27;
    hash = hash.wrapping_mul(0x94d0_49bb_1331_11eb);
    hash ^ (hash >> 31)
}

/// A non-negative node id, different for each process: seeded by the
/// standard library's per-process random hash keys, the process id and
/// the clock. Two gateways drawing the same id out of 2^31 is as likely as
/// any random collision; they would then share one registration.
fn random_node_id() -> i32 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    hasher.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    let id = hasher.finish() & 0x7fff_ffff;
    i32::try_from(id).unwrap_or(0)
}

fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Each critical section is one read or assignment: consistent even if
    // a holder panicked.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A registration: the format byte, the heartbeat time (milliseconds since
/// the epoch), the port, then the host.
fn encode(host: &str, port: u16, heartbeat: i64) -> Bytes {
    let mut out = BytesMut::with_capacity(11 + host.len());
    out.put_u8(FORMAT);
    out.put_i64(heartbeat);
    out.put_u16(port);
    out.put_slice(host.as_bytes());
    out.freeze()
}

/// A registration's host, port and heartbeat time; `None` if it is not one
/// this version reads (written by a newer gateway, or damaged).
fn decode(mut value: Bytes) -> Option<(String, u16, i64)> {
    if value.len() < 11 || value.get_u8() != FORMAT {
        return None;
    }
    let heartbeat = value.get_i64();
    let port = value.get_u16();
    let host = String::from_utf8(value.to_vec()).ok()?;
    Some((host, port, heartbeat))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn groups() -> impl Iterator<Item = String> {
        (0..1000).map(|i| format!("group-{i}"))
    }

    #[test]
    fn the_choice_depends_only_on_the_group_and_the_set_of_nodes() {
        let nodes = [17, 4, 123_456, 9];
        let mut shuffled = nodes;
        shuffled.reverse();
        for group in groups() {
            let chosen = choose(&group, &nodes);
            assert_eq!(chosen, choose(&group, &nodes));
            assert_eq!(chosen, choose(&group, &shuffled), "order must not matter");
        }
    }

    #[test]
    fn known_choices_stay_the_same_across_builds() {
        // Gateways of different builds must agree: the hash is fixed.
        assert_eq!(score("", 0), 12_440_867_094_808_227_077);
        assert_eq!(score("pair", 1), 2_982_403_640_441_904_467);
    }

    #[test]
    fn groups_spread_over_the_nodes() {
        let nodes = [3, 1_000_000, 42, 7];
        let mut counts: HashMap<i32, usize> = HashMap::new();
        for group in groups() {
            let chosen = choose(&group, &nodes).expect("a node");
            *counts.entry(chosen).or_default() += 1;
        }
        for node in nodes {
            let n = counts.get(&node).copied().unwrap_or(0);
            // 250 each on average; a fair hash stays well within this.
            assert!((150..=350).contains(&n), "node {node} got {n}: {counts:?}");
        }
    }

    #[test]
    fn only_the_groups_of_a_node_that_leaves_move() {
        let all = [5, 6, 7];
        let without_7 = [5, 6];
        for group in groups() {
            let before = choose(&group, &all).expect("a node");
            let after = choose(&group, &without_7).expect("a node");
            if before != 7 {
                assert_eq!(before, after, "{group} moved though its node stayed");
            }
            assert_ne!(after, 7, "a node that left is never chosen");
        }
        assert_eq!(choose("g", &[]), None);
        assert_eq!(choose("g", &[11]), Some(11));
    }

    #[test]
    fn a_registration_reads_back_and_garbage_is_ignored() {
        let value = encode("gw-1.example.com", 9092, 1_700_000_000_000);
        assert_eq!(
            decode(value),
            Some(("gw-1.example.com".to_owned(), 9092, 1_700_000_000_000))
        );
        assert_eq!(decode(Bytes::from_static(b"")), None);
        assert_eq!(decode(Bytes::from_static(&[2; 20])), None);
        assert_eq!(decode(Bytes::from_static(&[1, 0, 0])), None);
    }

    /// A metadata store in memory.
    #[derive(Default)]
    struct Memory(Mutex<std::collections::BTreeMap<String, gateway_api::Versioned>>);

    #[async_trait::async_trait]
    impl MetadataStore for Memory {
        async fn get(&self, key: &str) -> Result<Option<gateway_api::Versioned>, BackendError> {
            Ok(lock(&self.0).get(key).cloned())
        }

        async fn put(
            &self,
            key: &str,
            value: Bytes,
            _expected: ExpectedVersion,
        ) -> Result<u64, BackendError> {
            let mut map = lock(&self.0);
            let version = map.get(key).map_or(1, |v| v.version + 1);
            map.insert(key.to_owned(), gateway_api::Versioned { value, version });
            Ok(version)
        }

        async fn delete(&self, key: &str, _expected: ExpectedVersion) -> Result<(), BackendError> {
            lock(&self.0).remove(key);
            Ok(())
        }

        async fn scan(
            &self,
            prefix: &str,
        ) -> Result<Vec<(String, gateway_api::Versioned)>, BackendError> {
            Ok(lock(&self.0)
                .iter()
                .filter(|(k, _)| k.starts_with(prefix))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect())
        }
    }

    #[tokio::test]
    async fn only_recently_refreshed_brokers_are_live_and_coordinate() {
        let store = Memory::default();
        let now = now_millis();
        let stale = now - 60_000;
        let put = |key: String, value: Bytes| {
            let store = &store;
            async move { store.put(&key, value, ExpectedVersion::Any).await }
        };
        put(format!("{PREFIX}c/1"), encode("gw-a", 9092, now))
            .await
            .unwrap();
        put(format!("{PREFIX}c/2"), encode("gw-b", 9093, stale))
            .await
            .unwrap();
        put(format!("{PREFIX}c/oops"), encode("gw-c", 9094, now))
            .await
            .unwrap();
        put(format!("{PREFIX}c/3"), Bytes::from_static(b"garbage"))
            .await
            .unwrap();

        // Another cluster's live broker is not this one's.
        put(format!("{PREFIX}other/4"), encode("gw-d", 9096, now))
            .await
            .unwrap();
        let cluster = Cluster::new("c", Some(("gw-self".into(), 9095)));
        let own = cluster.node_id();
        let live = cluster.live(&store).await;
        let mut expected = vec![
            Broker {
                node_id: 1,
                host: "gw-a".into(),
                port: 9092,
            },
            Broker {
                node_id: own,
                host: "gw-self".into(),
                port: 9095,
            },
        ];
        expected.sort_by_key(|b| b.node_id);
        assert_eq!(
            *live, expected,
            "the stale and unreadable ones are left out"
        );

        let (mut here, mut there) = (0, 0);
        for group in groups() {
            let coordinator = cluster.coordinator(&store, &group).await;
            assert_eq!(Some(coordinator.node_id), choose(&group, &[1, own]));
            if cluster.coordinates(&store, &group).await {
                here += 1;
            } else {
                assert_eq!(coordinator.host, "gw-a");
                there += 1;
            }
        }
        assert!(here > 0 && there > 0, "{here} here, {there} at the other");
    }

    #[tokio::test]
    async fn alone_a_gateway_coordinates_every_group() {
        let store = Memory::default();
        let cluster = Cluster::new("c", None);
        for group in groups().take(50) {
            assert!(cluster.coordinates(&store, &group).await);
        }
        // A wildcard address is not one to register; a real one is.
        cluster.learn_address("0.0.0.0:9092".parse().unwrap());
        assert_eq!(cluster.own().port, 0);
        cluster.learn_address("10.0.0.5:9092".parse().unwrap());
        assert_eq!(
            (cluster.own().host.as_str(), cluster.own().port),
            ("10.0.0.5", 9092)
        );
    }

    #[test]
    fn node_ids_are_not_negative() {
        for _ in 0..100 {
            assert!(random_node_id() >= 0);
        }
    }
}
