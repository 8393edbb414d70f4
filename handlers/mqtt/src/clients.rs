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
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

/// How long a new connection waits for the one it takes over to close.
const TAKEOVER_WAIT: Duration = Duration::from_secs(10);

/// One connection holding a client id.
struct Holder {
    connection: u64,
    takeover: CancellationToken,
    /// Resolves (its sender dropped, nothing sent) once the connection
    /// ended. A oneshot: a watch channel costs each connection 300 bytes.
    ended: oneshot::Receiver<()>,
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
    held: HashMap<String, Holder>,
    parked: HashMap<String, Parked>,
}

/// The registry of this gateway's clients.
#[derive(Default, Clone)]
pub(crate) struct Clients {
    state: Arc<Mutex<State>>,
}

/// A connection's hold on its client id, released on drop.
pub(crate) struct Registration {
    clients: Clients,
    /// The scoped client id it is registered under ([`scoped`]).
    key: String,
    connection: u64,
    /// Cancelled when a newer connection takes the client id, or the
    /// gateway shuts down.
    pub takeover: CancellationToken,
    _ended: oneshot::Sender<()>,
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
        let (ended_tx, ended_rx) = oneshot::channel();
        let holder = Holder {
            connection,
            takeover: takeover.clone(),
            ended: ended_rx,
        };
        let previous = self.lock().held.insert(client_id.to_owned(), holder);
        if let Some(previous) = previous {
            previous.takeover.cancel();
            if tokio::time::timeout(TAKEOVER_WAIT, previous.ended)
                .await
                .is_err()
            {
                tracing::warn!(
                    client = client_id,
                    "the connection taken over did not end in time"
                );
            }
        }
        let parked = {
            let mut state = self.lock();
            let parked = state.parked.remove(client_id);
            if let Some(p) = &parked {
                p.back.cancel();
            }
            parked
        };
        let registration = Registration {
            clients: self.clone(),
            key: client_id.to_owned(),
            connection,
            takeover,
            _ended: ended_tx,
        };
        (registration, parked)
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

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves the maps as they were.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
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
    }
}
