//! Takeover across gateways.
//!
//! A takeover within one gateway goes through its registry of clients
//! (`clients.rs`). A client whose persistent session another gateway
//! holds (the session's record names it: `gateways.rs`) may connect here
//! instead, its old connection still open there (a half-open one the
//! client gave up on). This gateway then asks the holder, by writing
//! `mqtt/takeovers/{holder}/{tenant}/{namespace}/{client}`, and waits, at
//! most [`WAIT`], until the request is gone. Each gateway looks for the
//! requests to it every [`POLL`], takes the connection asked for over as
//! a takeover within it does (MQTT 5: DISCONNECT 0x8E; the connection
//! handles what its client had sent and closes the session's
//! subscriptions), and deletes the request once that connection ended.
//! The connection moved writes nothing to the session's record and parks
//! nothing (the session goes on elsewhere), so even one that ends late
//! cannot undo what the new holder wrote. Clean sessions are stored
//! nowhere, so a client id connected with one through two gateways is
//! not found out.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use gateway_api::topic::Namespace;
use gateway_api::{BackendError, Context, ExpectedVersion, MetadataStore};
use tokio::task::JoinHandle;

use crate::clients::{scoped, Clients};
use crate::due;

/// Where requests live in the metadata store, under the holder's id.
const PREFIX: &str = "mqtt/takeovers/";

/// How often a gateway looks for requests to it.
const POLL: Duration = Duration::from_secs(1);

/// How long a connection waits for the holder to let go of its session.
const WAIT: Duration = Duration::from_secs(10);

/// How often the waiting connection looks whether its request is gone.
const RECHECK: Duration = Duration::from_millis(100);

/// How a request starts: the asking connection starts clean (the session
/// ends, and a will waiting its delay goes now) or resumes it.
const CLEAN: &str = "clean ";
const RESUME: &str = "resume ";

/// Where the requests to gateway `holder` live.
fn requests_to(holder: &str) -> String {
    format!("{PREFIX}{holder}/")
}

/// Asks gateway `holder` to take its connection of `client_id` (of
/// `namespace`) over for a connection `from` this gateway that starts
/// `clean` or not, and waits until it did (it deletes the request once
/// that connection ended). Past [`WAIT`] the request is deleted and the
/// CONNECT fails: two gateways never serve one session.
pub(crate) async fn hand_over(
    store: &dyn MetadataStore,
    holder: &str,
    namespace: &Namespace,
    client_id: &str,
    from: &str,
    clean: bool,
) -> Result<(), BackendError> {
    let key = due::client_key(&requests_to(holder), namespace, client_id);
    let start = if clean { CLEAN } else { RESUME };
    let request = Bytes::from(format!("{start}{from}"));
    store.put(&key, request, ExpectedVersion::Any).await?;
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(RECHECK).await;
        if store.get(&key).await?.is_none() {
            return Ok(());
        }
    }
    store.delete(&key, ExpectedVersion::Any).await?;
    Err(BackendError::Unavailable(format!(
        "gateway {holder} did not let go of the session of {client_id} in time"
    )))
}

/// Takes over, every [`POLL`] until the gateway stops, the connections of
/// this gateway that others asked for, and deletes the requests.
pub(crate) async fn serve(ctx: Context, clients: Clients) {
    let store = ctx.backend.metadata();
    let prefix = requests_to(clients.gateways().id());
    let mut ticks = tokio::time::interval(POLL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut handling = HashMap::new();
    loop {
        tokio::select! {
            () = ctx.shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        // A request is handled once: it stays listed until its
        // connection ended (pruned before the scan, so one deleted after
        // it is not taken for a new one).
        handling.retain(|_, task: &mut JoinHandle<()>| !task.is_finished());
        let Some(requests) = due::records(&ctx, &prefix).await else {
            return;
        };
        for (key, versioned) in requests {
            if handling.contains_key(&key) {
                continue;
            }
            let Some((namespace, client_id)) = due::parse_client_key(&prefix, &key) else {
                forget(&*store, &key, versioned.version).await;
                continue;
            };
            let request = String::from_utf8_lossy(&versioned.value);
            let clean = request.starts_with(CLEAN);
            let ended = clients.take_over(&scoped(&namespace, &client_id), clean);
            tracing::debug!(client = %client_id, %request, found = ended.is_some(), "taken over through another gateway");
            let store = store.clone();
            let shutdown = ctx.shutdown.clone();
            let task = tokio::spawn({
                let key = key.clone();
                async move {
                    if let Some(ended) = ended {
                        tokio::select! {
                            () = ended.cancelled() => {}
                            () = shutdown.cancelled() => return,
                        }
                    }
                    forget(&*store, &key, versioned.version).await;
                }
            });
            handling.insert(key, task);
        }
    }
}

/// Deletes the request under `key`, at `version` (a newer one stays).
async fn forget(store: &dyn MetadataStore, key: &str, version: u64) {
    if let Err(e) = store.delete(key, ExpectedVersion::Exactly(version)).await {
        tracing::debug!(error = %e, key, "MQTT takeover request kept");
    }
}
