//! The clients connected to this gateway, by client id: a new connection
//! with a client id in use takes the session over from the old one, which
//! is told (MQTT 5: DISCONNECT 0x8E) and closed first, so the two never
//! hold the session's subscriptions at once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How long a new connection waits for the one it takes over to close.
const TAKEOVER_WAIT: Duration = Duration::from_secs(10);

/// One connection holding a client id.
struct Holder {
    connection: u64,
    takeover: CancellationToken,
    /// Closes (its sender dropped) once the connection ended.
    ended: watch::Receiver<()>,
}

/// The registry of this gateway's connected clients.
#[derive(Default, Clone)]
pub(crate) struct Clients {
    held: Arc<Mutex<HashMap<String, Holder>>>,
}

/// A connection's hold on its client id, released on drop.
pub(crate) struct Registration {
    clients: Clients,
    client_id: String,
    connection: u64,
    /// Cancelled when a newer connection takes the client id.
    pub takeover: CancellationToken,
    _ended: watch::Sender<()>,
}

impl Clients {
    /// Registers a connection of `client_id`, taking over from the one that
    /// held it: returns once that one ended (or after a bounded wait).
    pub(crate) async fn register(&self, client_id: &str) -> Registration {
        static CONNECTIONS: AtomicU64 = AtomicU64::new(0);
        let connection = CONNECTIONS.fetch_add(1, Ordering::Relaxed);
        let takeover = CancellationToken::new();
        let (ended_tx, ended_rx) = watch::channel(());
        let previous = {
            let mut held = self.lock();
            held.insert(
                client_id.to_owned(),
                Holder {
                    connection,
                    takeover: takeover.clone(),
                    ended: ended_rx,
                },
            )
        };
        if let Some(mut previous) = previous {
            previous.takeover.cancel();
            let ended = previous.ended.changed();
            if tokio::time::timeout(TAKEOVER_WAIT, ended).await.is_err() {
                tracing::warn!(
                    client = client_id,
                    "the connection taken over did not end in time"
                );
            }
        }
        Registration {
            clients: self.clone(),
            client_id: client_id.to_owned(),
            connection,
            takeover,
            _ended: ended_tx,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Holder>> {
        // A panic while holding the lock leaves the map as it was.
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut held = self.clients.lock();
        if held
            .get(&self.client_id)
            .is_some_and(|h| h.connection == self.connection)
        {
            held.remove(&self.client_id);
        }
    }
}
