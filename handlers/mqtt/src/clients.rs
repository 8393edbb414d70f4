//! The clients of this gateway, by client id.
//!
//! A new connection with a client id in use takes the session over from
//! the old one, which is told (MQTT 5: DISCONNECT 0x8E) and closed first,
//! so the two never hold the session's subscriptions at once.
//!
//! While the client of a persistent session is away, the registry keeps
//! what the session's next connection needs and the backend does not
//! hold ([`Parked`]): the QoS 2 exchanges under way, and which deliveries
//! were unacknowledged (they come again marked DUP). This lives in this
//! gateway's memory: a client that comes back through another gateway
//! resumes its subscriptions (the backend's), not these.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gateway_api::topic::Namespace;
use gateway_api::{MessageId, TopicName};
use tokio_util::sync::CancellationToken;

use crate::gateways::Gateways;

/// How long a new connection waits for the one it takes over to close.
const TAKEOVER_WAIT: Duration = Duration::from_secs(10);

/// One connection holding a client id.
struct Holder {
    /// Its connection's number ([`Registration::connection`]).
    connection: u64,
    /// Cancelled to take the client id over from it.
    takeover: CancellationToken,
    /// Its connection is ending on its own: a takeover through another
    /// gateway finds it ending, not moved ([`Registration::settle`]).
    settled: bool,
}

/// What a persistent session keeps of its last connection while its
/// client is away.
#[derive(Debug, Default)]
pub(crate) struct Parked {
    /// QoS 2 packet ids the client sent, stored, not yet released: a
    /// resend is answered, not stored again.
    pub qos2_received: BTreeSet<u16>,
    /// QoS 2 deliveries the client received (PUBREC) whose PUBCOMP did not
    /// come: PUBREL goes again.
    pub released: BTreeSet<u16>,
    /// Deliveries the client had not acknowledged, with their packet ids:
    /// the backend delivers them again, and they go out marked DUP with
    /// the same packet id (MQTT 4.4).
    pub unacked: BTreeMap<(TopicName, MessageId), u16>,
    /// Cancelled when the client connects again: its delayed will and
    /// the session's expiry are called off.
    pub back: CancellationToken,
}

#[derive(Default)]
struct State {
    /// Keyed by the scoped client id, one allocation the connection's
    /// [`Registration`] shares.
    held: HashMap<Arc<str>, Holder>,
    /// What the sessions of clients away keep (see [`Parked`]).
    parked: HashMap<Arc<str>, Parked>,
    /// Connections taken over that have not ended yet, each with what
    /// tells the one taking over when it has. Only a takeover under way
    /// costs memory here, not each connection.
    ending: HashMap<u64, CancellationToken>,
    /// Connections taken over for a connection through another gateway
    /// (`handover.rs`), each with whether that one starts clean (the
    /// session ends).
    moved: HashMap<u64, bool>,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    /// This gateway among the others on the backend.
    gateways: Arc<Gateways>,
}

/// The registry of this gateway's clients.
#[derive(Default, Clone)]
pub(crate) struct Clients {
    shared: Arc<Shared>,
}

/// A connection's hold on its client id, released on drop.
pub(crate) struct Registration {
    clients: Clients,
    /// The scoped client id it is registered under ([`scoped`]).
    key: Arc<str>,
    /// Numbers connections apart: a registration drops only its own hold.
    connection: u64,
    /// Cancelled when a newer connection takes the client id, or the
    /// gateway shuts down.
    pub takeover: CancellationToken,
}

impl Clients {
    /// Registers a connection of `client_id`, taking over from the one that
    /// held it: returns once that one ended (or after a bounded wait), with
    /// what the session parked, if anything (its delayed will and expiry
    /// called off). Its `takeover` token is a child of `shutdown`: one
    /// wait covers both.
    pub(crate) async fn register(
        &self,
        client_id: &str,
        shutdown: &CancellationToken,
    ) -> (Registration, Option<Parked>) {
        static CONNECTIONS: AtomicU64 = AtomicU64::new(0);
        let connection = CONNECTIONS.fetch_add(1, Ordering::Relaxed);
        let takeover = shutdown.child_token();
        let key: Arc<str> = client_id.into();
        let holder = Holder {
            connection,
            takeover: takeover.clone(),
            settled: false,
        };
        // Registered first: dropped while it waits, it releases the id.
        let registration = Registration {
            clients: self.clone(),
            key: key.clone(),
            connection,
            takeover,
        };
        let previous = {
            let mut state = self.lock();
            let previous = state.held.insert(key, holder);
            if let Some(p) = &previous {
                // Its registration is still alive: its drop (which takes
                // this lock) takes it out of `ending` again.
                state.ending.entry(p.connection).or_default();
            }
            previous
        };
        if let Some(previous) = previous {
            previous.takeover.cancel();
            self.wait_ended(previous.connection, client_id).await;
        }
        let parked = {
            let mut state = self.lock();
            let parked = state.parked.remove(client_id);
            if let Some(p) = &parked {
                p.back.cancel();
            }
            parked
        };
        (registration, parked)
    }

    /// Takes the client id registered under `key` ([`scoped`]) over from
    /// its connection, for a connection through another gateway
    /// (`handover.rs`) that starts clean or not (`clean`): what is
    /// cancelled once that connection ended, if one held the id. One
    /// already ending on its own ends as it would have.
    pub(crate) fn take_over(&self, key: &str, clean: bool) -> Option<CancellationToken> {
        let mut state = self.lock();
        let holder = state.held.get(key)?;
        let connection = holder.connection;
        if !holder.settled {
            holder.takeover.cancel();
            state.moved.insert(connection, clean);
        }
        Some(state.ending.entry(connection).or_default().clone())
    }

    /// Waits (at most [`TAKEOVER_WAIT`]) until `connection`, taken over,
    /// has ended.
    async fn wait_ended(&self, connection: u64, client_id: &str) {
        let Some(ended) = self.lock().ending.get(&connection).cloned() else {
            return;
        };
        if tokio::time::timeout(TAKEOVER_WAIT, ended.cancelled())
            .await
            .is_err()
        {
            self.lock().ending.remove(&connection);
            tracing::warn!(
                client = client_id,
                "the connection taken over did not end in time"
            );
        }
    }

    /// Forgets what `client_id`'s session parked unless the client came
    /// back (`back` cancelled): whether the session is to expire now.
    pub(crate) fn unpark(&self, client_id: &str, back: &CancellationToken) -> bool {
        let mut state = self.lock();
        if back.is_cancelled() {
            return false;
        }
        state.parked.remove(client_id);
        true
    }

    /// This gateway among the others on the backend.
    pub(crate) fn gateways(&self) -> &Arc<Gateways> {
        &self.shared.gateways
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves the maps as they were.
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What a client id is registered under: the client's namespace and the
/// id (a tenant's clients never take over another's).
pub(crate) fn scoped(namespace: &Namespace, client_id: &str) -> String {
    // Tenants and namespaces hold no `/`: the id is all after the second.
    format!("{}/{}/{client_id}", namespace.tenant, namespace.namespace)
}

impl Registration {
    /// What the client id is registered under.
    pub(crate) fn key(&self) -> &str {
        &self.key
    }

    /// The client id: the key without its namespace ([`scoped`]).
    pub(crate) fn client_id(&self) -> &str {
        self.key.splitn(3, '/').nth(2).unwrap_or(&self.key)
    }

    /// The connection ends: whether its session moved to another
    /// gateway ([`Clients::take_over`]), and if so whether it ends there
    /// (a clean start). Decided once, under the registry's lock: a
    /// takeover through another gateway after this finds the connection
    /// ending on its own.
    pub(crate) fn settle(&self) -> Option<bool> {
        let mut state = self.clients.lock();
        if let Some(holder) = state.held.get_mut(&self.key) {
            if holder.connection == self.connection {
                holder.settled = true;
            }
        }
        state.moved.remove(&self.connection)
    }

    /// Keeps `parked` for the session's next connection.
    pub(crate) fn park(&self, parked: Parked) {
        self.clients.lock().parked.insert(self.key.clone(), parked);
    }

    /// The registry, for timers that outlive the connection.
    pub(crate) fn clients(&self) -> &Clients {
        &self.clients
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut state = self.clients.lock();
        if state
            .held
            .get(&self.key)
            .is_some_and(|h| h.connection == self.connection)
        {
            state.held.remove(&self.key);
        }
        if let Some(ended) = state.ending.remove(&self.connection) {
            ended.cancel();
        }
        state.moved.remove(&self.connection);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn namespace() -> Namespace {
        Namespace {
            tenant: "public".into(),
            namespace: "default".into(),
        }
    }

    #[tokio::test]
    async fn the_client_id_is_the_key_without_its_namespace() {
        let clients = Clients::default();
        let shutdown = CancellationToken::new();
        let key = scoped(&namespace(), "sensors/a/b");
        let (registration, _) = clients.register(&key, &shutdown).await;
        assert_eq!(registration.key(), "public/default/sensors/a/b");
        assert_eq!(registration.client_id(), "sensors/a/b");
    }

    #[tokio::test]
    async fn a_takeover_returns_once_the_connection_taken_over_ended() {
        let clients = Clients::default();
        let shutdown = CancellationToken::new();
        let (first, _) = clients.register("public/default/c", &shutdown).await;
        let taking = tokio::spawn({
            let (clients, shutdown) = (clients.clone(), shutdown.clone());
            async move { clients.register("public/default/c", &shutdown).await }
        });
        first.takeover.cancelled().await;
        // Told, still alive: the new connection waits.
        tokio::task::yield_now().await;
        assert!(!taking.is_finished());
        drop(first);
        let (second, _) = taking.await.unwrap();
        assert!(!second.takeover.is_cancelled());
        assert!(clients.lock().ending.is_empty());
        // The first one's end did not release the id the second holds.
        assert!(clients.lock().held.contains_key("public/default/c"));
        drop(second);
        assert!(clients.lock().held.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_takeover_stops_waiting_after_its_bound() {
        let clients = Clients::default();
        let shutdown = CancellationToken::new();
        let (stuck, _) = clients.register("public/default/c", &shutdown).await;
        let started = tokio::time::Instant::now();
        let (second, _) = clients.register("public/default/c", &shutdown).await;
        assert_eq!(started.elapsed(), TAKEOVER_WAIT);
        assert!(stuck.takeover.is_cancelled());
        assert!(clients.lock().ending.is_empty());
        drop(stuck);
        // The stuck one ending later leaves the new holder in place.
        assert!(clients.lock().held.contains_key("public/default/c"));
        drop(second);
    }

    #[tokio::test]
    async fn a_takeover_through_another_gateway_moves_a_serving_connection_only() {
        let clients = Clients::default();
        let shutdown = CancellationToken::new();
        let key = "public/default/c";
        let (moved, _) = clients.register(key, &shutdown).await;
        let ended = clients
            .take_over(key, true)
            .expect("a connection of the client");
        assert!(moved.takeover.is_cancelled());
        assert_eq!(moved.settle(), Some(true), "moved, to a clean start");
        drop(moved);
        ended.cancelled().await;
        // A local takeover and one through another gateway both see the
        // end of one connection.
        let (ending, _) = clients.register(key, &shutdown).await;
        assert_eq!(ending.settle(), None, "ending on its own");
        let remote = clients.take_over(key, false).expect("still registered");
        assert!(!ending.takeover.is_cancelled(), "one ending is not moved");
        let local = tokio::spawn({
            let clients = clients.clone();
            let shutdown = shutdown.clone();
            async move { clients.register(key, &shutdown).await }
        });
        tokio::task::yield_now().await;
        drop(ending);
        remote.cancelled().await;
        let (last, _) = local.await.unwrap();
        drop(last);
        assert!(clients.lock().moved.is_empty());
        assert!(clients.lock().ending.is_empty());
        assert!(clients.take_over("public/default/nobody", false).is_none());
    }
}
