//! Takeover across gateways.
//!
//! A takeover within one gateway goes through its registry of clients
//! (`clients.rs`). A client whose persistent session another gateway
//! holds (the session's record names it: `gateways.rs`) may connect here
//! instead, its old connection still open there (a half-open one the
//! client gave up on). This gateway then asks the holder, by writing
//! `mqtt/takeovers/{holder}/{tenant}/{namespace}/{client}`, and waits, at
//! most [`WAIT`], until the record names that gateway no more. Each
//! gateway looks for the requests to it every [`POLL`] and takes the
//! connection asked for over as a takeover within it does (MQTT 5:
//! DISCONNECT 0x8E): that connection handles what its client had sent, and
//! its end writes the session's record, which the waiting gateway reads
//! and takes. Clean sessions are stored nowhere, so a client id connected
//! with one through two gateways is not found out.

use std::time::Duration;

use bytes::Bytes;
use gateway_api::topic::Namespace;
use gateway_api::{BackendError, Context, ExpectedVersion, MetadataStore};

use crate::clients::{scoped, Clients};
use crate::due;

/// Where requests live in the metadata store, under the holder's id.
const PREFIX: &str = "mqtt/takeovers/";

/// How often a gateway looks for requests to it.
const POLL: Duration = Duration::from_secs(1);

/// How long a connection waits for the holder to let go of its session.
pub(crate) const WAIT: Duration = Duration::from_secs(10);

/// How often the waiting connection reads the session's record.
pub(crate) const RECHECK: Duration = Duration::from_millis(100);

/// Where the requests to gateway `holder` live.
fn requests_to(holder: &str) -> String {
    format!("{PREFIX}{holder}/")
}

/// Asks gateway `holder` to take its connection of `client_id` (of
/// `namespace`) over; `from` is this gateway's id.
pub(crate) async fn ask(
    store: &dyn MetadataStore,
    holder: &str,
    namespace: &Namespace,
    client_id: &str,
    from: &str,
) -> Result<(), BackendError> {
    let key = due::client_key(&requests_to(holder), namespace, client_id);
    store
        .put(
            &key,
            Bytes::copy_from_slice(from.as_bytes()),
            ExpectedVersion::Any,
        )
        .await
        .map(drop)
}

/// Takes over, every [`POLL`] until the gateway stops, the connections of
/// this gateway that others asked for, and deletes the requests.
pub(crate) async fn serve(ctx: Context, clients: Clients) {
    let store = ctx.backend.metadata();
    let prefix = requests_to(clients.gateways().id());
    let mut ticks = tokio::time::interval(POLL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = ctx.shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let requests = match store.scan(&prefix).await {
            Ok(requests) => requests,
            Err(e) => {
                tracing::debug!(error = %e, "MQTT takeover requests not read");
                continue;
            }
        };
        for (key, versioned) in requests {
            if let Some((namespace, client_id)) = due::parse_client_key(&prefix, &key) {
                let asked_by = String::from_utf8_lossy(&versioned.value);
                let found = clients.take_over(&scoped(&namespace, &client_id));
                tracing::debug!(client = %client_id, gateway = %asked_by, found, "taken over through another gateway");
            }
            let expected = ExpectedVersion::Exactly(versioned.version);
            if let Err(e) = store.delete(&key, expected).await {
                tracing::debug!(error = %e, key, "MQTT takeover request kept");
            }
        }
    }
}
