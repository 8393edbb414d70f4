//! Persistent sessions: what outlives a connection whose client asked for
//! a session (3.1.1 clean session off, 5 Session Expiry above 0).
//!
//! The messages wait in the backend: each filter of such a session is a
//! durable subscription named after the client id and the filter, so QoS
//! 1 and 2 messages published while the client is away stay in its
//! backlog. The list of filters (with the QoS granted) is kept in the
//! backend's metadata store under `mqtt/sessions/{tenant}/{namespace}/{client
//! id}` (a client id is its namespace's), so the
//! client's next connection, to this gateway or another on the same
//! backend, subscribes them again before the client asks.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use gateway_api::backend::{StartPosition, SubscribeRequest, SubscriptionKind};
use gateway_api::metadata::ExpectedVersion;
use gateway_api::topic::{escape_word, Namespace};
use gateway_api::{now_ms, BackendError, Context, MetadataStore, TopicName};
use rmqtt_codec::types::QoS;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::clients::Clients;
use crate::due;
use crate::filter::Filter;
use crate::gateways;
use crate::handover;

/// Where the session records live in the metadata store.
const PREFIX: &str = "mqtt/sessions/";

/// One filter of a session and the QoS granted for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Subscribed {
    pub filter: String,
    pub qos: QoS,
}

/// A stored session.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Record {
    /// What the session's next connection subscribes again.
    pub filters: Vec<Subscribed>,
    /// While its client is away: when the session ends (ms since the
    /// epoch). Stored, so that a gateway started later, or another one on
    /// the same backend, ends it on time; `None` while a client holds it,
    /// unless its gateway was found gone ([`Record::held`] then says
    /// which).
    pub expires_at: Option<u64>,
    /// A delayed will of the session's last connection waits (`will.rs`).
    pub will_waits: bool,
    /// While a client holds a session that ends: which gateway, and how
    /// long the session lasts once the client is gone. A session held by
    /// a gateway that died ends that long after it was found gone
    /// (`gateways.rs`). Boxed: every connection holds a record.
    pub held: Option<Box<Held>>,
}

/// Who holds a session, in its record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Held {
    /// The gateway's id.
    pub by: Arc<str>,
    /// The session's expiry interval.
    pub expiry_secs: u32,
    /// Since when (ms since the epoch).
    pub since: u64,
}

/// The record line that holds [`Record::expires_at`].
const EXPIRES: &str = "expires ";

/// How often a CONNECT reads and writes its session's record again when
/// another write came in between.
const TAKE_ATTEMPTS: usize = 3;

/// The record line that says [`Record::will_waits`].
const WILL_WAITS: &str = "will";

/// The record line that holds [`Record::held`]:
/// `held {expiry secs} {since ms} {gateway}`.
const HELD: &str = "held ";

impl Record {
    /// The record as stored: one line per filter, `{qos} {filter}`, the
    /// filter percent-escaped as a topic word (so it holds no newline),
    /// and `expires {ms}` while the client is away.
    fn encode(&self) -> Vec<u8> {
        let mut out = String::new();
        if let Some(at) = self.expires_at {
            out.push_str(&format!("{EXPIRES}{at}\n"));
        }
        if self.will_waits {
            out.push_str(WILL_WAITS);
            out.push('\n');
        }
        if let Some(held) = &self.held {
            let (secs, since, by) = (held.expiry_secs, held.since, &held.by);
            out.push_str(&format!("{HELD}{secs} {since} {by}\n"));
        }
        for s in &self.filters {
            out.push_str(&format!("{} {}\n", u8::from(s.qos), escape_word(&s.filter)));
        }
        out.into_bytes()
    }

    /// A stored record; lines that do not read are passed over (a record
    /// written by a later version).
    fn decode(bytes: &[u8]) -> Record {
        let text = String::from_utf8_lossy(bytes);
        let mut record = Record::default();
        for line in text.lines() {
            if let Some(at) = line.strip_prefix(EXPIRES) {
                record.expires_at = at.parse().ok();
                continue;
            }
            if line == WILL_WAITS {
                record.will_waits = true;
                continue;
            }
            if let Some(held) = line.strip_prefix(HELD) {
                let mut words = held.splitn(3, ' ');
                record.held = (|| {
                    let (secs, since, by) = (words.next()?, words.next()?, words.next()?);
                    Some(Box::new(Held {
                        by: by.into(),
                        expiry_secs: secs.parse().ok()?,
                        since: since.parse().ok()?,
                    }))
                })();
                continue;
            }
            let filter = line.split_once(' ').and_then(|(qos, filter)| {
                let qos = QoS::try_from(qos.parse::<u8>().ok()?).ok()?;
                let filter = gateway_api::topic::unescape_word(filter)?;
                Some(Subscribed { filter, qos })
            });
            record.filters.extend(filter);
        }
        record
    }

    /// Whether the session ended by `now` (ms since the epoch).
    pub(crate) fn expired(&self, now: u64) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }

    /// Adds or replaces `filter`.
    pub(crate) fn set(&mut self, filter: &str, qos: QoS) {
        match self.filters.iter_mut().find(|s| s.filter == filter) {
            Some(s) => s.qos = qos,
            None => self.filters.push(Subscribed {
                filter: filter.to_owned(),
                qos,
            }),
        }
    }

    /// Removes `filter`; whether it was there.
    pub(crate) fn remove(&mut self, filter: &str) -> bool {
        let before = self.filters.len();
        self.filters.retain(|s| s.filter != filter);
        before != self.filters.len()
    }
}

/// The session records of one namespace in the metadata store: client
/// ids are the namespace's (a tenant's clients do not meet another's).
#[derive(Clone)]
pub(crate) struct Sessions {
    store: Arc<dyn MetadataStore>,
    /// The namespace the client ids are of.
    namespace: Namespace,
}

impl Sessions {
    pub(crate) fn new(store: Arc<dyn MetadataStore>, namespace: &Namespace) -> Sessions {
        Sessions {
            store,
            namespace: namespace.clone(),
        }
    }

    fn key(&self, client_id: &str) -> String {
        due::client_key(PREFIX, &self.namespace, client_id)
    }

    /// The stored session of `client_id` and the version of its record.
    async fn load_versioned(&self, client_id: &str) -> Result<Option<(Record, u64)>, BackendError> {
        Ok(self
            .store
            .get(&self.key(client_id))
            .await?
            .map(|v| (Record::decode(&v.value), v.version)))
    }

    /// Asks `holder`, when it is a live gateway, to let go of the session
    /// of `client_id` for a connection that starts `clean` or not, and
    /// waits until it did (`handover.rs`): whether it was asked.
    async fn handed_over(
        &self,
        client_id: &str,
        holder: &Held,
        own: &str,
        clean: bool,
    ) -> Result<bool, BackendError> {
        let registered = gateways::read(&*self.store).await?;
        if registered.is_gone(&holder.by, holder.since) {
            // Gone: its sessions are taken as they are.
            return Ok(false);
        }
        let namespace = &self.namespace;
        handover::hand_over(&*self.store, &holder.by, namespace, client_id, own, clean).await?;
        Ok(true)
    }

    /// Stores `record` as the session of `client_id`.
    pub(crate) async fn save(&self, client_id: &str, record: &Record) -> Result<(), BackendError> {
        self.store
            .put(
                &self.key(client_id),
                record.encode().into(),
                ExpectedVersion::Any,
            )
            .await
            .map(drop)
    }

    /// The stored session of `client_id` for a CONNECT through gateway
    /// `own`, and whether it is resumed. A session another live gateway
    /// holds is asked of it first (`handover.rs`). When `resume` is asked
    /// and the session has not ended, it is taken, its record written again
    /// at the version read with no end time, no waiting will and `held`. A
    /// gateway ending the session (or taking it from a gateway gone) at the
    /// same moment makes that write fail, and the record is read again: a
    /// resumed session is never one being ended. The record is returned as
    /// it was read.
    pub(crate) async fn connect(
        &self,
        client_id: &str,
        resume: bool,
        held: Option<&Held>,
        own: &str,
    ) -> Result<(Option<Record>, bool), BackendError> {
        let mut asked = false;
        for _ in 0..TAKE_ATTEMPTS {
            let Some((record, version)) = self.load_versioned(client_id).await? else {
                return Ok((None, false));
            };
            let elsewhere = record.held.as_deref().filter(|h| *h.by != *own);
            if let (Some(holder), false) = (elsewhere, asked) {
                asked = true;
                if self.handed_over(client_id, holder, own, !resume).await? {
                    continue;
                }
            }
            if !resume || record.expired(now_ms()) {
                return Ok((Some(record), false));
            }
            let taken = Record {
                expires_at: None,
                will_waits: false,
                held: held.cloned().map(Box::new),
                ..record.clone()
            };
            match self.put_at(client_id, &taken, version).await {
                Ok(Some(_)) => return Ok((Some(record), true)),
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(client = client_id, error = %e, "session's expiry not cleared");
                    return Ok((Some(record), true));
                }
            }
        }
        Err(BackendError::Unavailable(format!(
            "the session of {client_id} kept changing"
        )))
    }

    /// Stores `record` as the session of `client_id` if its record is at
    /// `version` still: the version written, or `None` if another was
    /// written since.
    async fn put_at(
        &self,
        client_id: &str,
        record: &Record,
        version: u64,
    ) -> Result<Option<u64>, BackendError> {
        let key = self.key(client_id);
        let expected = ExpectedVersion::Exactly(version);
        match self.store.put(&key, record.encode().into(), expected).await {
            Ok(written) => Ok(Some(written)),
            Err(BackendError::VersionConflict(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// [`Sessions::put_at`], a failure of the store logged as `None`.
    async fn put_at_or_log(&self, client_id: &str, record: &Record, version: u64) -> Option<u64> {
        self.put_at(client_id, record, version)
            .await
            .unwrap_or_else(|e| {
                tracing::warn!(client = client_id, error = %e, "session record not written");
                None
            })
    }

    /// Forgets the session of `client_id`.
    pub(crate) async fn delete(&self, client_id: &str) -> Result<(), BackendError> {
        self.store
            .delete(&self.key(client_id), ExpectedVersion::Any)
            .await
    }
}

/// The backend subscription a session's filter is kept in.
pub(crate) fn subscription_name(client_id: &str, filter: &str) -> String {
    format!("mqtt.{}.{}", escape_word(client_id), escape_word(filter))
}

/// The backend subscription a sharing group's filter is kept in.
pub(crate) fn shared_subscription_name(group: &str, filter: &str) -> String {
    format!("mqtt-share.{}.{}", escape_word(group), escape_word(filter))
}

/// Deletes a session's durable subscriptions and its record.
pub(crate) async fn forget(
    ctx: &Context,
    sessions: &Sessions,
    namespace: &Namespace,
    client_id: &str,
    record: &Record,
) {
    forget_subscriptions(ctx, namespace, client_id, record).await;
    if let Err(e) = sessions.delete(client_id).await {
        tracing::warn!(client = client_id, error = %e, "old session record kept");
    }
}

/// Deletes a session's durable subscriptions.
async fn forget_subscriptions(
    ctx: &Context,
    namespace: &Namespace,
    client_id: &str,
    record: &Record,
) {
    for stored in &record.filters {
        let Ok(filter) = Filter::parse(&stored.filter) else {
            continue;
        };
        if filter.share.is_some() {
            continue;
        }
        let Ok(topics) = filter.selector(namespace, |name| TopicName::from_mqtt(name, namespace))
        else {
            continue;
        };
        let request = SubscribeRequest {
            topics,
            subscription: subscription_name(client_id, &stored.filter),
            kind: SubscriptionKind::Exclusive,
            initial_position: StartPosition::Latest,
            durable: true,
            consumer_name: client_id.to_owned(),
            receive_queue: 1,
        };
        match ctx.backend.subscribe(request).await {
            Ok(sub) => {
                if let Err(e) = sub.unsubscribe().await {
                    tracing::warn!(client = client_id, error = %e, "old session subscription kept");
                }
            }
            Err(e) => {
                tracing::warn!(client = client_id, error = %e, "old session subscription kept")
            }
        }
    }
}

/// Ends the session of `client_id` if its stored record says it ended.
/// The record is first written again at the version read: of gateways
/// ending it at once, one does (the others find another version). Then
/// the durable subscriptions go, then the record, at the version written.
/// No client resumes a session past its end (a CONNECT then finds it
/// ended), and a gateway stopped in between leaves the record for the
/// next one to end again. A session taken from a gateway found gone
/// ([`adopt`]) whose gateway has registered since is that gateway's again:
/// it was cut off, not dead, and its client may be connected. `left_here`
/// is this gateway's id when its own timer asks, the client having left
/// it and not come back: a record this gateway still holds (its end time
/// was not written) ends too.
async fn expire_if_due(
    ctx: &Context,
    namespace: &Namespace,
    client_id: &str,
    left_here: Option<&str>,
) {
    let sessions = Sessions::new(ctx.backend.metadata(), namespace);
    let (mut record, version) = match sessions.load_versioned(client_id).await {
        Ok(Some(found)) => found,
        Ok(None) => return,
        Err(e) => {
            tracing::warn!(client = client_id, error = %e, "session expiry not checked");
            return;
        }
    };
    let mine = record
        .held
        .as_ref()
        .is_some_and(|h| Some(&*h.by) == left_here);
    // Its client left this gateway an expiry interval ago: due, whatever
    // another gateway wrote.
    let ends = if mine { Some(0) } else { record.expires_at };
    let Some(ends) = ends.filter(|&at| at <= now_ms()) else {
        return;
    };
    if let Some(held) = record.held.as_ref().filter(|_| !mine) {
        let adopted_at = ends.saturating_sub(u64::from(held.expiry_secs) * 1000);
        match gateways::read(&*sessions.store).await {
            Ok(registered) if registered.beat_after(&held.by, adopted_at) => {
                record.expires_at = None;
                let _ = sessions.put_at_or_log(client_id, &record, version).await;
                tracing::info!(client = client_id, gateway = %held.by, "session's gateway back: it holds the session again");
                return;
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(client = client_id, error = %e, "session expiry not checked");
                return;
            }
        }
    }
    let Some(claimed) = sessions.put_at_or_log(client_id, &record, version).await else {
        return;
    };
    forget_subscriptions(ctx, namespace, client_id, &record).await;
    let key = sessions.key(client_id);
    match sessions
        .store
        .delete(&key, ExpectedVersion::Exactly(claimed))
        .await
    {
        // Rewritten since: a new session of that client id.
        Ok(()) | Err(BackendError::VersionConflict(_)) => {}
        Err(e) => {
            tracing::warn!(client = client_id, error = %e, "expired session record kept");
            return;
        }
    }
    tracing::info!(client = client_id, "session expired");
}

/// Ends each persistent session on time, until the gateway stops. The
/// records are read at start and every [`due::SWEEP`]: sessions of
/// gateways gone get their end time ([`adopt`]), and those that end before
/// the next reading are ended then. In between, the registrations (a few
/// keys) are read every [`gateways::HEARTBEAT`], and the records again as
/// soon as a gateway that held sessions is gone. Every gateway on the
/// backend does this; a session ends once (see [`expire_if_due`]).
pub(crate) async fn expire_stored(ctx: Context) {
    let store = ctx.backend.metadata();
    let running = Arc::new(Semaphore::new(due::AT_ONCE));
    let mut scheduled: Option<JoinHandle<()>> = None;
    let mut first = true;
    loop {
        let Some(found) = due::records(&ctx, PREFIX).await else {
            return;
        };
        // Unread, no session is taken from its holder; those with an end
        // time still come due (one taken from a gateway ends once the
        // registrations read again).
        let registered = match gateways::read(&*store).await {
            Ok(registered) => Some(registered),
            Err(e) => {
                tracing::debug!(error = %e, "MQTT gateways not read");
                None
            }
        };
        let now = now_ms();
        let horizon = now + due::SWEEP.as_millis() as u64;
        // Each holder of a session, with the earliest it holds one since.
        let mut holders: HashMap<Arc<str>, u64> = HashMap::new();
        let mut named = HashSet::new();
        let mut items = Vec::new();
        for (key, versioned) in found {
            let Some((namespace, client_id)) = due::parse_client_key(PREFIX, &key) else {
                continue;
            };
            let mut record = Record::decode(&versioned.value);
            if let (Some(held), None) = (&record.held, record.expires_at) {
                let gone = registered
                    .as_ref()
                    .is_some_and(|r| r.is_gone(&held.by, held.since));
                if !gone {
                    let since = holders.entry(held.by.clone()).or_insert(held.since);
                    *since = (*since).min(held.since);
                    named.insert(held.by.clone());
                    continue;
                }
                let adopted = adopt(&ctx, &namespace, &client_id, record, versioned.version);
                match adopted.await {
                    Some(r) => record = r,
                    None => continue,
                }
            }
            if let Some(held) = &record.held {
                named.insert(held.by.clone());
            }
            if let Some(at) = record.expires_at.filter(|&at| at <= horizon) {
                items.push((at, (namespace, client_id)));
            }
        }
        if let Some(registered) = &registered {
            gateways::forget_gone(&*store, registered, &named).await;
        }
        if first {
            tracing::info!(count = items.len(), "persistent sessions away");
            first = false;
        }
        // The previous reading's schedule is replaced by this one's, which
        // covers it.
        if let Some(previous) = scheduled.take() {
            previous.abort();
        }
        let expire = {
            let ctx = ctx.clone();
            move |(namespace, client_id): (Namespace, String)| {
                let ctx = ctx.clone();
                async move { expire_if_due(&ctx, &namespace, &client_id, None).await }
            }
        };
        let run = due::run_on_time(ctx.clone(), running.clone(), items, expire);
        scheduled = Some(tokio::spawn(run));
        if !until_next_reading(&ctx, &*store, &holders, horizon).await {
            return;
        }
    }
}

/// Waits until `horizon`, or until one of `holders` (each with the
/// earliest it holds a session since) is gone, reading the registrations
/// every heartbeat; false if the gateway stops first.
async fn until_next_reading(
    ctx: &Context,
    store: &dyn MetadataStore,
    holders: &HashMap<Arc<str>, u64>,
    horizon: u64,
) -> bool {
    loop {
        let beat = now_ms() + gateways::HEARTBEAT.as_millis() as u64;
        if !due::wait_until(ctx, beat.min(horizon)).await {
            return false;
        }
        if now_ms() >= horizon {
            return true;
        }
        if holders.is_empty() {
            continue;
        }
        if let Ok(registered) = gateways::read(store).await {
            if holders
                .iter()
                .any(|(by, &since)| registered.is_gone(by, since))
            {
                return true;
            }
        }
    }
}

/// Gives the session of `client_id`, held by a gateway that is gone, its
/// end time: its expiry interval from now, as if its client had left now.
/// The record keeps naming that gateway (see [`expire_if_due`]). Written
/// at `version`, so a client that came back in between keeps it. The
/// record as written, or `None` if it was not.
async fn adopt(
    ctx: &Context,
    namespace: &Namespace,
    client_id: &str,
    mut record: Record,
    version: u64,
) -> Option<Record> {
    let held = record.held.as_deref()?;
    let (by, expiry_secs) = (held.by.clone(), held.expiry_secs);
    record.expires_at = Some(now_ms().saturating_add(u64::from(expiry_secs) * 1000));
    let sessions = Sessions::new(ctx.backend.metadata(), namespace);
    sessions.put_at_or_log(client_id, &record, version).await?;
    tracing::info!(
        client = client_id,
        gateway = %by,
        expiry_secs,
        "session of a gateway gone: it ends after its expiry interval"
    );
    Some(record)
}

/// Runs `work` `after` a client left, unless it comes back first (`back`
/// cancelled) or the gateway stops (`stopping` cancelled).
pub(crate) fn unless_back(
    stopping: CancellationToken,
    back: CancellationToken,
    after: Duration,
    work: impl std::future::Future<Output = ()> + Send + 'static,
) {
    tokio::spawn(async move {
        tokio::select! {
            () = back.cancelled() => {}
            () = stopping.cancelled() => {}
            () = tokio::time::sleep(after) => work.await,
        }
    });
}

/// Ends a persistent session `after` its client left, unless the client
/// comes back first or the gateway stops: its durable subscriptions and
/// record are deleted (MQTT 5 Session Expiry) if the stored record, which
/// says when, still does.
pub(crate) fn expire_later(
    ctx: Context,
    namespace: Namespace,
    client_id: String,
    (clients, registered): (Clients, String),
    back: CancellationToken,
    after: Duration,
) {
    let token = back.clone();
    unless_back(ctx.shutdown.clone(), back, after, async move {
        if clients.unpark(&registered, &token) {
            let here = clients.gateways().id().clone();
            expire_if_due(&ctx, &namespace, &client_id, Some(&here)).await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_reads_back_as_written() {
        let mut record = Record::default();
        record.set("a/+/c", QoS::AtLeastOnce);
        record.set("odd\nfilter #", QoS::ExactlyOnce);
        record.set("a/+/c", QoS::AtMostOnce);
        assert_eq!(Record::decode(&record.encode()), record);
        assert_eq!(record.filters.len(), 2);
        record.expires_at = Some(1_700_000_000_123);
        record.will_waits = true;
        assert_eq!(Record::decode(&record.encode()), record);
        record.expires_at = None;
        record.held = Some(Box::new(Held {
            by: "0123abcd".into(),
            expiry_secs: 3600,
            since: 1_700_000_000_000,
        }));
        assert_eq!(Record::decode(&record.encode()), record);
        assert!(record.remove("a/+/c"));
        assert!(!record.remove("a/+/c"));
    }

    #[test]
    fn a_record_ends_at_its_expiry_and_not_while_held() {
        let mut record = Record::default();
        assert!(!record.expired(u64::MAX), "held: it does not end");
        record.expires_at = Some(1000);
        assert!(!record.expired(999));
        assert!(record.expired(1000));
        let unknown = b"expires soon\n1 a/b\nx y z\n";
        let read = Record::decode(unknown);
        assert_eq!(read.expires_at, None, "an unreadable expiry is no expiry");
        assert_eq!(read.filters.len(), 1);
    }

    #[test]
    fn names_keep_client_and_filter_apart() {
        assert_ne!(subscription_name("a.b", "c"), subscription_name("a", "b.c"));
    }
}
