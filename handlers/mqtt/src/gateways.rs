//! The MQTT gateways on one backend, so that a session held by one that
//! died is not held for ever.
//!
//! While a client is connected, its persistent session's record names the
//! gateway holding it and has no end time: the end time is written when
//! the client leaves. A gateway that dies (killed, its machine lost)
//! writes none. So each gateway registers itself under
//! `mqtt/gateways/{id}` (an id drawn at start) with the time, every
//! [`HEARTBEAT`]; one whose registration is older than [`LIVENESS`] is
//! gone, and the sessions it held are orphaned: the sweep (`session.rs`)
//! gives each an end time counted from then, as if its client had left at
//! that moment. A holder with no registration is gone once it has held
//! the session for [`LIVENESS`] (the record says since when): a gateway
//! registers at start, and one that died before it could, or whose
//! registration was deleted as it stopped but failed to write a session's
//! end time, does not hold the session any more.
//! Liveness compares wall clocks across gateways: they must agree within
//! a few seconds.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use gateway_api::{BackendError, Context, ExpectedVersion, MetadataStore};

use gateway_api::now_ms;

/// How often a gateway refreshes its registration.
pub(crate) const HEARTBEAT: Duration = Duration::from_secs(3);

/// How long a registration counts as live after its last refresh: three
/// missed heartbeats and a margin.
const LIVENESS: Duration = Duration::from_secs(10);

/// How long a gone gateway's registration is kept once no session names
/// it: a gateway stopped that long ago is not coming back as it was.
const FORGET_AFTER: Duration = Duration::from_secs(24 * 3600);

/// Where registrations live in the metadata store.
const PREFIX: &str = "mqtt/gateways/";

/// This gateway among the MQTT gateways of its backend.
pub(crate) struct Gateways {
    /// This gateway's id, drawn at start.
    id: Arc<str>,
}

impl Default for Gateways {
    fn default() -> Self {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u32(std::process::id());
        hasher.write_u64(now_ms());
        Gateways {
            id: format!("{:016x}", hasher.finish()).into(),
        }
    }
}

/// The registrations read at one moment.
pub(crate) struct Registered {
    /// Each registered gateway's last heartbeat (ms since the epoch).
    heartbeats: HashMap<String, u64>,
    /// When the reading was made.
    now: u64,
}

impl Gateways {
    /// This gateway's id, which the sessions it holds name.
    pub(crate) fn id(&self) -> &Arc<str> {
        &self.id
    }

    /// Registers this gateway every [`HEARTBEAT`] until the gateway stops,
    /// then deletes the registration.
    pub(crate) async fn register(self: Arc<Self>, ctx: Context) {
        let store = ctx.backend.metadata();
        let key = format!("{PREFIX}{}", self.id);
        let mut ticks = tokio::time::interval(HEARTBEAT);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Failures are logged when they start, not at every heartbeat (the
        // Pulsar backend is unavailable until it connects).
        let mut failing = false;
        loop {
            tokio::select! {
                () = ctx.shutdown.cancelled() => break,
                _ = ticks.tick() => {}
            }
            let beat = Bytes::from(now_ms().to_string());
            // Bounded, so the next one is not held up: one later than this
            // would land after the gateway stopped counting as live.
            let put = store.put(&key, beat, ExpectedVersion::Any);
            match tokio::time::timeout(LIVENESS - HEARTBEAT, put).await {
                Ok(Ok(_)) => failing = false,
                Ok(Err(e)) if !failing => {
                    failing = true;
                    tracing::warn!(error = %e, "registering the MQTT gateway in the metadata store");
                }
                Err(_) if !failing => {
                    failing = true;
                    tracing::warn!("registering the MQTT gateway in the metadata store: no answer");
                }
                Ok(Err(_)) | Err(_) => {}
            }
        }
        // Best effort: a registration left behind only looks like a
        // gateway that died; the sessions it held have their end times
        // by now, unless a connection is still closing (then another
        // gateway may give it one first, to the same effect).
        if let Err(e) = store.delete(&key, ExpectedVersion::Any).await {
            tracing::debug!(error = %e, "deleting the MQTT gateway registration");
        }
    }
}

/// The registrations, read now.
pub(crate) async fn read(store: &dyn MetadataStore) -> Result<Registered, BackendError> {
    let heartbeats = store
        .scan(PREFIX)
        .await?
        .into_iter()
        .filter_map(|(key, versioned)| {
            let id = key.strip_prefix(PREFIX)?.to_owned();
            let beat = std::str::from_utf8(&versioned.value).ok()?.parse().ok()?;
            Some((id, beat))
        })
        .collect();
    Ok(Registered {
        heartbeats,
        now: now_ms(),
    })
}

/// Deletes the registrations of gateways gone for [`FORGET_AFTER`] that
/// no session in `named` names any more.
pub(crate) async fn forget_gone(
    store: &dyn MetadataStore,
    registered: &Registered,
    named: &HashSet<Arc<str>>,
) {
    let forget_ms = FORGET_AFTER.as_millis() as u64;
    for (id, &beat) in &registered.heartbeats {
        if registered.now.saturating_sub(beat) > forget_ms && !named.contains(id.as_str()) {
            let key = format!("{PREFIX}{id}");
            if let Err(e) = store.delete(&key, ExpectedVersion::Any).await {
                tracing::debug!(error = %e, gateway = %id, "old MQTT gateway registration kept");
            }
        }
    }
}

impl Registered {
    /// Whether gateway `id`, holding a session since `since`, was gone
    /// when the registrations were read ([`Registered::gone_at`]).
    pub(crate) fn is_gone(&self, id: &str, since: u64) -> bool {
        self.gone_at(id, since) <= self.now
    }

    /// Whether gateway `id` registered after `at` (ms since the epoch).
    pub(crate) fn beat_after(&self, id: &str, at: u64) -> bool {
        self.heartbeats.get(id).is_some_and(|&beat| beat > at)
    }

    /// When gateway `id`, holding a session since `since` (ms since the
    /// epoch), is gone unless it registers again: [`LIVENESS`] after its
    /// last heartbeat, or without one after `since`.
    pub(crate) fn gone_at(&self, id: &str, since: u64) -> u64 {
        let last = self.heartbeats.get(id).copied().unwrap_or(since);
        last.saturating_add(LIVENESS.as_millis() as u64 + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registered(now: u64, beats: &[(&str, u64)]) -> Registered {
        Registered {
            heartbeats: beats.iter().map(|(id, b)| (id.to_string(), *b)).collect(),
            now,
        }
    }

    #[test]
    fn a_gateway_is_gone_once_its_registration_is_stale() {
        let now = 1_000_000;
        let r = registered(now, &[("live", now - 2_000), ("dead", now - 11_000)]);
        assert_eq!(r.gone_at("live", 0), now + 8_001);
        assert!(r.gone_at("dead", now) <= now);
        // Not registered (yet): gone once it held the session too long.
        assert_eq!(r.gone_at("new", now - 2_000), now + 8_001);
        assert!(r.gone_at("new", now - 11_000) <= now);
    }

    #[test]
    fn ids_differ() {
        assert_ne!(Gateways::default().id(), Gateways::default().id());
    }
}
