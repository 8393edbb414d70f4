//! One MQTT connection once its CONNECT is accepted: the packets it sends
//! and the messages its subscriptions deliver, until it leaves.
//!
//! One task serves the connection. It reads packets while fewer than
//! `max_inflight` of its publishes wait for the backend (past that it
//! stops reading: the client is slowed, nothing is dropped), sends the
//! acknowledgements in the order the publishes came, and passes on what
//! its subscriptions deliver while fewer than the client's Receive Maximum
//! of them wait for the client's acknowledgement.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::num::{NonZeroU16, NonZeroU32};
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use bytestring::ByteString;
use futures::future::BoxFuture;
use futures::stream::{FuturesOrdered, StreamExt};
use gateway_api::backend::{StartPosition, SubscribeRequest, SubscriptionKind};
use gateway_api::metrics::PublishMeter;
use gateway_api::topic::Namespace;
use gateway_api::{
    now_ms, Action, BackendError, ClientStream, Context, HandlerError, MessageId, NewMessage,
    Principal, Protocol, TopicName,
};
use rmqtt_codec::types::{Publish, QoS};
use tokio::io::{AsyncRead, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::Sleep;
use tokio_util::io::poll_read_buf;
use tokio_util::sync::CancellationToken;

use crate::clients::{Parked, Registration};
use crate::connect::Connected;
use crate::deliver::{self, Delivery, SubOptions, Subscribed};
use crate::filter::Filter;
use crate::properties;
use crate::reason::{self, Reason};
use crate::retained::Retained;
use crate::session::{self, Held, Record, Sessions};
use crate::will;
use crate::wire::{Codec, ConnAck, FilterRequest, Granted, Inbound, Outbound, Version, Will};
use crate::MqttConfig;

/// The least a connection reads at once (`1 <<` this: 64 bytes): its read
/// buffer grows while the client sends more than it holds, up to
/// [`MAX_READ_SHIFT`], and shrinks back as it quiets down. An idle one
/// holds none.
const MIN_READ_SHIFT: u8 = 6;
/// The most a connection reads at once (`1 <<` this: 64 KiB).
const MAX_READ_SHIFT: u8 = 16;

/// Bytes of encoded packets past which the connection writes them out
/// before handling anything more.
const FLUSH_AT: usize = 64 * 1024;
/// Events handled past which the connection writes what they encoded
/// before handling more (a client that keeps sending keeps reads ready).
const FLUSH_EVENTS: u8 = 32;

/// The most bytes of what a client had sent that its connection reads
/// once taken over.
const TAKEOVER_BYTES: usize = 1 << 20;

/// How long a connection whose client closed its side still tries to
/// write what was due.
const LAST_WRITE: Duration = Duration::from_secs(1);

/// How long a client may take to read what the gateway writes before its
/// connection is given up (one that stops reading would otherwise keep
/// its task from keep-alive, takeover and shutdown).
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// A publish whose message the backend is persisting.
struct Publishing {
    /// Its packet id (QoS 1 and 2).
    packet_id: Option<NonZeroU16>,
    qos: QoS,
    topic: TopicName,
    bytes: usize,
    started: Instant,
    /// The message, when it is to be retained (the retain flag).
    retain: Option<NewMessage>,
    result: Result<(), BackendError>,
}

/// How a publish of the client's ended, in the order they came.
enum Settled {
    /// Given to the backend (stored, or failed there).
    Stored(Publishing),
    /// Refused before it reached the backend (MQTT 5: acknowledged with
    /// the reason, in its turn).
    Refused {
        packet_id: NonZeroU16,
        qos: QoS,
        reason: Reason,
    },
}

/// What the connection's loop waited for.
enum Event {
    /// The client id was taken over, or the gateway is stopping.
    Stopped,
    /// A publish was stored (or refused), in its turn.
    Settled(Settled),
    /// Bytes read, and the room there was for them.
    Read(usize, usize),
    /// A message for the client.
    Delivery(Delivery),
    /// The client was silent for 1.5 times its keep-alive.
    KeepAliveExpired,
}

/// Where a QoS 2 publish the client sent stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Qos2 {
    /// Being persisted: its PUBREC goes out when that is done.
    Persisting,
    /// Persisted, PUBREC sent, PUBREL awaited.
    Received,
}

/// The topic a connection published to last, resolved and with its
/// series: a device mostly publishes to one topic, which is then resolved
/// and looked up once, not at every message.
struct LastTopic {
    /// As the client wrote it: what a PUBLISH is compared with.
    name: Box<str>,
    /// What the router resolved it to for this client.
    topic: TopicName,
    /// The series its publishes count in, made at the first one stored:
    /// a publish the backend refused leaves no series behind (names are
    /// the client's to choose).
    meter: Option<PublishMeter>,
}

/// MQTT 5 topic aliases of one connection.
#[derive(Default)]
struct TopicAliases {
    /// Set by the client in its PUBLISHes: the topic of each.
    received: BTreeMap<u16, ByteString>,
    /// Set by the gateway in what it sends: the alias of each topic.
    sent: HashMap<ByteString, u16>,
}

/// A delivered QoS 1 or 2 message the client has not acknowledged.
struct Unacked {
    /// The filter it was delivered for, to find its subscription.
    filter: Arc<str>,
    /// The message to acknowledge to the backend (none for a retained
    /// message sent at SUBSCRIBE).
    message: Option<(TopicName, MessageId)>,
    /// Sent at QoS 2: PUBREC, not PUBACK, acknowledges it.
    exactly_once: bool,
}

/// Why the connection ends.
#[derive(Debug)]
enum Ending {
    /// DISCONNECT: the will goes only if the client asked (MQTT 5).
    Disconnected { with_will: bool },
    /// The client went away without DISCONNECT.
    Lost,
    /// Silent for 1.5 times its keep-alive.
    KeepAlive,
    /// Another connection took the client id.
    TakenOver,
    /// The gateway is stopping.
    Shutdown,
    /// The client broke the protocol; the reason was sent (MQTT 5).
    Violation(Reason, String),
}

/// The state of one connection.
pub(crate) struct Connection {
    stream: Box<dyn ClientStream>,
    codec: Codec,
    /// Bytes read and not yet decoded.
    read: BytesMut,
    /// The next read asks for `1 << read_shift` bytes (see [`MIN_READ_SHIFT`]).
    read_shift: u8,
    /// Packets encoded and not yet written.
    write: BytesMut,
    ctx: Context,
    config: Arc<MqttConfig>,
    principal: Principal,
    /// Where the client's topic names resolve.
    namespace: Namespace,
    /// The client's keep-alive in seconds (0: off).
    keep_alive_secs: u16,
    /// Fires 1.5 times the keep-alive after the client was last heard
    /// ([`Connection::idle_limit`]); reset on each read rather than made
    /// anew, and boxed: a connection without keep-alive holds none.
    keep_alive: Option<Pin<Box<Sleep>>>,
    /// Published when the connection ends other than by DISCONNECT.
    will: Option<Box<Will>>,
    /// How long it does, in seconds (0: it ends with the connection;
    /// at most `max_session_expiry_secs`).
    session_expiry_secs: u32,
    /// Deliveries the session's previous connection left unacknowledged:
    /// they go out again marked DUP (`None`: there are none).
    // Boxed on purpose: 8 bytes here instead of a map's 24.
    #[allow(clippy::box_collection)]
    redelivered: Option<Box<BTreeMap<(TopicName, MessageId), u16>>>,
    /// The session's filters, as stored (persistent sessions).
    record: Record,
    /// Whether the store holds a record of this session.
    stored: bool,
    /// Publishes being persisted, in the order they came: their
    /// acknowledgements go out in that order.
    /// Made at a publish and let go once all are settled: its queue is an
    /// allocation an idle connection does without.
    publishing: Option<Box<FuturesOrdered<BoxFuture<'static, Settled>>>>,
    /// MQTT 5 topic aliases, both ways (made at the first: most
    /// connections hold none).
    aliases: Option<Box<TopicAliases>>,
    /// The topic published to last (none before the first publish).
    last_topic: Option<Box<LastTopic>>,
    /// How many the client accepts (its Topic Alias Maximum, bounded by
    /// `topic_alias_max`; 0: none).
    sent_alias_max: u16,
    /// QoS 2 packet ids received and not yet released (PUBREL): a PUBLISH
    /// with one of them again is a resend, not stored twice.
    qos2_received: BTreeMap<u16, Qos2>,
    /// The subscriptions by filter (as the client wrote it).
    subscriptions: BTreeMap<Arc<str>, Subscribed>,
    /// Messages the subscriptions deliver, bounded: a full queue stops
    /// them. Made at the first subscription: a connection that only
    /// publishes holds none.
    deliveries: Option<mpsc::Receiver<Delivery>>,
    delivery_sender: Option<mpsc::Sender<Delivery>>,
    /// Delivered, unacknowledged QoS 1 and 2 messages by packet id.
    unacked: BTreeMap<u16, Unacked>,
    /// QoS 2 deliveries the client received (PUBREC) and whose release
    /// (PUBCOMP) is awaited.
    released: BTreeSet<u16>,
    /// The most unacknowledged deliveries the client accepts.
    window: u16,
    /// The packet id given to the last delivery.
    last_packet_id: u16,
    /// The connection's hold on its client id; its `takeover` token is
    /// cancelled when another connection takes the client id over, or the
    /// gateway shuts down (a child of `ctx.shutdown`: one wait for both).
    registration: Registration,
}

impl Connection {
    /// Sets up the session of a connected client: its subscriptions
    /// restored or cleared, the CONNACK sent.
    pub(crate) async fn start(
        stream: Box<dyn ClientStream>,
        connected: Connected,
        ctx: Context,
        config: Arc<MqttConfig>,
        registration: Registration,
        parked: Option<Parked>,
    ) -> Result<Box<Connection>, HandlerError> {
        let Connected {
            mut codec,
            read,
            connect,
            client_id,
            assigned,
            principal,
        } = connected;
        let namespace = ctx.router.namespace(Protocol::Mqtt, &principal);
        let sessions = Sessions::new(ctx.backend.metadata(), &namespace);
        // 3.1.1's session without end, or a longer one than allowed, ends
        // after `max_session_expiry` (MQTT 5 clients are told).
        let session_expiry_secs = connect
            .session_expiry_secs
            .min(config.max_session_expiry_secs);
        let persistent = session_expiry_secs > 0;
        // A session that ends says which gateway holds it (`gateways.rs`).
        let held = (persistent && session_expiry_secs != u32::MAX).then(|| {
            Box::new(Held {
                by: registration.clients().gateways().id().clone(),
                expiry_secs: session_expiry_secs,
                since: now_ms(),
            })
        });
        // Not resumed: none stored, a clean start, or one that ended while
        // no gateway was there to end it.
        let (stored, resume) = sessions
            .connect(
                &client_id,
                !connect.clean_start,
                held.as_deref(),
                registration.clients().gateways().id(),
            )
            .await?;
        if stored.as_ref().is_some_and(|r| r.will_waits) {
            will::client_back(&ctx, &namespace, &client_id, resume).await;
        }
        if let (false, Some(old)) = (resume, &stored) {
            session::forget(&ctx, &sessions, &namespace, &client_id, old).await;
        }
        if let Some(max) = connect.max_packet_size {
            codec.limit_outbound(max.get());
        }
        let window = connect.receive_max.min(config.max_inflight);
        let keep_alive = (connect.keep_alive > 0)
            .then(|| Box::pin(tokio::time::sleep(idle_limit(connect.keep_alive))));
        let mut conn = Box::new(Connection {
            stream,
            codec,
            read,
            read_shift: MIN_READ_SHIFT,
            write: BytesMut::new(),
            namespace,
            keep_alive_secs: connect.keep_alive,
            keep_alive,
            will: connect.will.map(Box::new),
            session_expiry_secs,
            redelivered: None,
            record: Record::default(),
            stored: resume,
            publishing: None,
            qos2_received: BTreeMap::new(),
            aliases: None,
            last_topic: None,
            sent_alias_max: connect.topic_alias_max.min(config.topic_alias_max),
            subscriptions: BTreeMap::new(),
            deliveries: None,
            delivery_sender: None,
            unacked: BTreeMap::new(),
            released: BTreeSet::new(),
            window: window.max(1),
            last_packet_id: 0,
            registration,
            principal,
            ctx,
            config,
        });
        conn.record.held = held;
        if resume {
            if let Some(p) = parked {
                conn.unpark(p);
            }
            if let Some(old) = stored {
                conn.restore(old).await;
            }
        } else if persistent {
            // The session exists from now on, subscriptions or not.
            conn.save_session().await;
        }
        let ack = ConnAck {
            session_present: resume,
            reason: reason::SUCCESS,
            assigned_client_id: assigned.then(|| conn.client_id().into()),
            receive_max: NonZeroU16::new(conn.config.max_inflight),
            max_packet_size: Some(conn.config.max_packet_size),
            session_expiry_secs: (session_expiry_secs != connect.session_expiry_secs)
                .then_some(session_expiry_secs),
            topic_alias_max: conn.config.topic_alias_max,
        };
        conn.send(Outbound::ConnAck(ack))
            .map_err(|e| HandlerError::Protocol(e.to_string()))?;
        // QoS 2 deliveries received and not completed: released again.
        let released: Vec<u16> = conn.released.iter().copied().collect();
        for id in released.into_iter().filter_map(NonZeroU16::new) {
            let _ = conn.send(Outbound::PubRel(id, reason::SUCCESS));
        }
        conn.flush().await?;
        Ok(conn)
    }

    /// The client id (its registration holds it).
    fn client_id(&self) -> &str {
        self.registration.client_id()
    }

    /// The stored sessions of the client's namespace (made when needed:
    /// a connection does not hold them while idle).
    fn sessions(&self) -> Sessions {
        Sessions::new(self.ctx.backend.metadata(), &self.namespace)
    }

    /// The retained messages of the backend.
    fn retained(&self) -> Retained {
        Retained::new(self.ctx.backend.metadata())
    }

    /// Whether the session outlives the connection.
    fn persistent(&self) -> bool {
        self.session_expiry_secs > 0
    }

    /// Takes up what the session's previous connection left.
    fn unpark(&mut self, parked: Parked) {
        self.qos2_received = parked
            .qos2_received
            .into_iter()
            .map(|id| (id, Qos2::Received))
            .collect();
        self.released = parked.released;
        self.redelivered = (!parked.unacked.is_empty()).then(|| Box::new(parked.unacked));
    }

    /// What the session keeps of this connection while its client is away.
    fn park(&mut self) -> Parked {
        Parked {
            qos2_received: self
                .qos2_received
                .iter()
                .filter(|(_, state)| **state == Qos2::Received)
                .map(|(id, _)| *id)
                .collect(),
            released: std::mem::take(&mut self.released),
            unacked: std::mem::take(&mut self.unacked)
                .into_iter()
                .filter_map(|(id, u)| u.message.map(|message| (message, id)))
                .collect(),
            back: CancellationToken::new(),
        }
    }

    /// Serves the connection until it ends, then ends the session's
    /// connection-bound part (its will, its non-durable subscriptions) and
    /// parks the rest of a persistent one.
    pub(crate) async fn run(mut self: Box<Self>) -> Result<(), HandlerError> {
        // Boxed steps: while the connection is served, this future holds
        // only the serving one.
        let ending = Box::pin(self.serve()).await;
        Box::pin(self.finish(ending)).await
    }

    /// Ends the session's connection-bound part after `ending`.
    async fn finish(
        mut self: Box<Self>,
        ending: std::io::Result<Ending>,
    ) -> Result<(), HandlerError> {
        // Moved to another gateway, or ending here: decided now, once.
        let moved = self.registration.settle();
        let result = match &ending {
            Err(e) => Err(HandlerError::Io(std::io::Error::new(
                e.kind(),
                e.to_string(),
            ))),
            Ok(Ending::Violation(_, why)) => Err(HandlerError::Protocol(why.clone())),
            Ok(Ending::KeepAlive) => Err(HandlerError::Timeout("keep-alive".into())),
            Ok(_) => Ok(()),
        };
        let publish_will = match &ending {
            Ok(Ending::Disconnected { with_will }) => *with_will,
            Ok(Ending::Shutdown) => false,
            _ => true,
        };
        self.close_subscriptions().await;
        let will = if publish_will { self.will.take() } else { None };
        tracing::debug!(
            client = %self.client_id(),
            ending = ?ending,
            persistent = self.persistent(),
            will_delay = will.as_ref().map(|w| w.delay_secs),
            "MQTT connection ended"
        );
        // Published when the will delay or the session ends, whichever
        // comes first, unless the client is back by then.
        let will_delay = will
            .as_ref()
            .map_or(0, |w| w.delay_secs)
            .min(self.session_expiry_secs);
        // A will's time (its event time, where its Message Expiry counts
        // from) is when it is published.
        let published_at = now_ms().saturating_add(u64::from(will_delay) * 1000);
        let will = will.and_then(|w| self.will_message(&w, published_at));
        if !self.persistent() {
            if let Some(will) = will {
                will::publish(&self.ctx, self.client_id(), will).await;
            }
            return result;
        }
        if let Some(clean) = moved {
            // The session goes on through another gateway (`handover.rs`):
            // nothing of it is kept or written here. Its will goes now
            // when it has no delay or the new connection ends the session
            // (a clean start); otherwise not, its client being back.
            if let (Some(will), true) = (will, will_delay == 0 || clean) {
                will::publish(&self.ctx, self.client_id(), will).await;
            }
            return result;
        }
        let delayed_will = match will {
            Some(will) => self.leave_will(will, will_delay, published_at).await,
            None => false,
        };
        // Stored before the session is parked: a connection taking it
        // over clears these after.
        let ends = self.session_expiry_secs != u32::MAX;
        if ends || delayed_will {
            let expiry_ms = u64::from(self.session_expiry_secs) * 1000;
            self.record.expires_at = ends.then(|| now_ms().saturating_add(expiry_ms));
            self.record.will_waits = delayed_will;
            self.record.held = None;
            self.save_session().await;
        }
        let parked = self.park();
        let back = parked.back.clone();
        self.registration.park(parked);
        if ends {
            session::expire_later(
                self.ctx.clone(),
                self.namespace.clone(),
                self.client_id().to_owned(),
                (
                    self.registration.clients().clone(),
                    self.registration.key().to_owned(),
                ),
                back.clone(),
                Duration::from_secs(self.session_expiry_secs.into()),
            );
        }
        if delayed_will {
            will::publish_later(
                self.ctx.clone(),
                self.namespace.clone(),
                self.client_id().to_owned(),
                back,
                Duration::from_secs(will_delay.into()),
            );
        }
        result
    }

    /// The connection's loop; how it ended.
    ///
    /// An idle connection's memory is this future's state while it waits,
    /// so the wait polls the connection's own sources (the read, the
    /// publishes being stored, the deliveries, the keep-alive timer) in
    /// place rather than through futures of their own: only the wait for
    /// takeover or shutdown is one. What follows a wait is a boxed step
    /// (the largest step would otherwise set the size).
    async fn serve(&mut self) -> std::io::Result<Ending> {
        // Packets that came with the CONNECT.
        if let Some(ending) = Box::pin(self.handle_packets()).await {
            return Box::pin(self.end_with(ending)).await;
        }
        let stopped = self.registration.takeover.clone().cancelled_owned();
        let mut stopped = std::pin::pin!(stopped);
        // Events handled since the last write.
        let mut handled = 0u8;
        loop {
            if self.read.is_empty() {
                // An idle connection holds no read buffer (see
                // `poll_read_some`).
                self.read = BytesMut::new();
            }
            // What is due goes out in one write once nothing else is ready
            // (or `FLUSH_AT` bytes or `FLUSH_EVENTS` events' worth are
            // waiting): a burst of acknowledgements or deliveries costs one
            // system call, not one each.
            let event = std::future::poll_fn(|cx| {
                if stopped.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Ok(Some(Event::Stopped)));
                }
                let room = self.write.len() < FLUSH_AT && handled < FLUSH_EVENTS;
                if self.write.is_empty() || room {
                    if let Poll::Ready(event) = self.poll_event(cx) {
                        return Poll::Ready(event.map(Some));
                    }
                }
                if !self.write.is_empty() {
                    return Poll::Ready(Ok(None));
                }
                // About to wait: an idle connection holds no write buffer.
                self.write = BytesMut::new();
                Poll::Pending
            })
            .await?;
            handled = match event {
                Some(_) => handled.saturating_add(1),
                None => 0,
            };
            // The event moves into the boxed step: this future, which an
            // idle connection holds, has no room for one.
            if let Some(ending) = Box::pin(self.step(event)).await {
                return ending;
            }
        }
    }

    /// Handles `event`, or writes what is due when there is none.
    async fn step(&mut self, event: Option<Event>) -> Option<std::io::Result<Ending>> {
        match event {
            Some(event) => self.on(event).await,
            None => self.flush().await.err().map(Err),
        }
    }

    /// The first of the connection's sources that is ready, in this order:
    /// a publish stored (its acknowledgement is due), bytes from the
    /// client (while fewer than `max_inflight` publishes are being
    /// stored: backpressure), a delivery (while fewer than the client's
    /// Receive Maximum are unacknowledged), the keep-alive's expiry.
    fn poll_event(&mut self, cx: &mut std::task::Context<'_>) -> Poll<std::io::Result<Event>> {
        if let Some(queue) = &mut self.publishing {
            if let Poll::Ready(Some(done)) = queue.poll_next_unpin(cx) {
                if queue.is_empty() {
                    self.publishing = None;
                }
                return Poll::Ready(Ok(Event::Settled(done)));
            }
        }
        if self.publishes_in_flight() < usize::from(self.config.max_inflight) {
            if let Poll::Ready(read) = self.poll_read_some(cx) {
                return Poll::Ready(read.map(|(read, room)| Event::Read(read, room)));
            }
        }
        if self.unacked.len() < usize::from(self.window) {
            if let Some(deliveries) = &mut self.deliveries {
                if let Poll::Ready(Some(delivery)) = deliveries.poll_recv(cx) {
                    return Poll::Ready(Ok(Event::Delivery(delivery)));
                }
            }
        }
        if let Some(timer) = &mut self.keep_alive {
            if timer.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Ok(Event::KeepAliveExpired));
            }
        }
        Poll::Pending
    }

    /// Reads what the client sent into `read`, asking for `1 << read_shift`
    /// bytes more; the bytes read and the room there was. With nothing
    /// buffered it first waits for the stream to be readable without a
    /// buffer (a read of no bytes, which returns once bytes or the end are
    /// there), so a silent client costs no buffer while it is silent.
    fn poll_read_some(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<std::io::Result<(usize, usize)>> {
        if self.read.capacity() == 0 {
            let mut nothing = tokio::io::ReadBuf::new(&mut []);
            std::task::ready!(Pin::new(&mut self.stream).poll_read(cx, &mut nothing))?;
        }
        self.read.reserve(1 << self.read_shift);
        let room = self.read.capacity() - self.read.len();
        let read = std::task::ready!(poll_read_buf(
            Pin::new(&mut self.stream),
            cx,
            &mut self.read
        ))?;
        Poll::Ready(Ok((read, room)))
    }

    /// Handles what the loop waited for; `Some` when the connection ends.
    async fn on(&mut self, event: Event) -> Option<std::io::Result<Ending>> {
        match event {
            Event::Stopped if self.ctx.shutdown.is_cancelled() => {
                self.drain_publishing().await;
                Some(
                    self.end(Ending::Shutdown, reason::SERVER_SHUTTING_DOWN)
                        .await,
                )
            }
            Event::Stopped => {
                let came = Box::pin(self.handle_what_came()).await;
                // Publishes being stored are waited for: the session parks
                // the QoS 2 ones as received, so a resend is not stored
                // twice.
                self.drain_publishing().await;
                match came {
                    // A DISCONNECT (with the session expiry it set) or a
                    // violation sent before the client connected again.
                    Some(ending) => Some(self.end_with(ending).await),
                    None => Some(
                        self.end(Ending::TakenOver, reason::SESSION_TAKEN_OVER)
                            .await,
                    ),
                }
            }
            Event::Settled(done) => match self.published(done).await {
                Some(ending) => Some(self.end_with(ending).await),
                None => None,
            },
            Event::Read(0, _) => {
                // The client closed its side: what was due goes out if it
                // can still.
                let _ = tokio::time::timeout(LAST_WRITE, self.flush()).await;
                Some(Ok(Ending::Lost))
            }
            Event::Read(read, room) => {
                let asked = 1usize << self.read_shift;
                if read >= room {
                    self.read_shift = (self.read_shift + 1).min(MAX_READ_SHIFT);
                } else if read < asked / 4 {
                    self.read_shift = self.read_shift.saturating_sub(1).max(MIN_READ_SHIFT);
                }
                if let Some(timer) = &mut self.keep_alive {
                    let limit = idle_limit(self.keep_alive_secs);
                    timer.as_mut().reset(tokio::time::Instant::now() + limit);
                }
                match self.handle_packets().await {
                    Some(ending) => Some(self.end_with(ending).await),
                    None => None,
                }
            }
            Event::Delivery(delivery) => {
                self.deliver(delivery).await;
                None
            }
            Event::KeepAliveExpired => Some(
                self.end(Ending::KeepAlive, reason::KEEP_ALIVE_TIMEOUT)
                    .await,
            ),
        }
    }

    /// Ends with `ending`, telling an MQTT 5 client `reason`.
    async fn end(&mut self, ending: Ending, reason: Reason) -> std::io::Result<Ending> {
        if self.codec.version() == Version::V5 {
            let _ = self.send(Outbound::Disconnect(reason));
        }
        self.flush().await?;
        Ok(ending)
    }

    async fn end_with(&mut self, ending: Ending) -> std::io::Result<Ending> {
        match ending {
            Ending::Violation(reason, why) => {
                self.end(Ending::Violation(reason, why), reason).await
            }
            ending => {
                self.flush().await?;
                Ok(ending)
            }
        }
    }

    /// Taken over: reads and handles what the client had sent, without
    /// waiting for more, so that a DISCONNECT it sent before connecting
    /// again (with the session expiry it set, and its will discarded)
    /// counts as it came first. At most [`TAKEOVER_BYTES`], and no more
    /// publishes at once than `max_inflight` allows. `Some` when a packet
    /// ends the connection.
    async fn handle_what_came(&mut self) -> Option<Ending> {
        // The largest reads: the connection ends anyway.
        self.read_shift = MAX_READ_SHIFT;
        let mut taken = 0;
        while taken < TAKEOVER_BYTES
            && self.publishes_in_flight() < usize::from(self.config.max_inflight)
        {
            let read = self.read_ready();
            if read == 0 {
                return None;
            }
            taken += read;
            if let Some(ending) = self.handle_packets().await {
                return Some(ending);
            }
        }
        None
    }

    /// Reads what the client sent if bytes are there, without waiting;
    /// how many were (0 also when the stream ended or failed).
    fn read_ready(&mut self) -> usize {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match self.poll_read_some(&mut cx) {
            Poll::Ready(Ok((read, _))) => read,
            Poll::Ready(Err(_)) | Poll::Pending => 0,
        }
    }

    /// Decodes and handles every whole packet read; `Some` when one ends
    /// the connection.
    async fn handle_packets(&mut self) -> Option<Ending> {
        loop {
            let packet = match self.codec.decode(&mut self.read) {
                Ok(Some(p)) => p,
                Ok(None) => return None,
                Err(e) => return Some(Ending::Violation(e.reason(), e.to_string())),
            };
            if let Some(ending) = self.handle(packet).await {
                return Some(ending);
            }
        }
    }

    async fn handle(&mut self, packet: Inbound) -> Option<Ending> {
        match packet {
            Inbound::Publish(p) => return self.publish(*p).await,
            Inbound::PubAck(id) => {
                if self.unacked.get(&id.get()).is_some_and(|u| !u.exactly_once) {
                    self.acknowledged(id).await;
                }
            }
            Inbound::PubRec(id) => {
                // Only for a QoS 2 delivery of ours (or again for one
                // released): a client cannot fill the packet ids.
                let reason = if self.unacked.get(&id.get()).is_some_and(|u| u.exactly_once) {
                    self.acknowledged(id).await;
                    self.released.insert(id.get());
                    reason::SUCCESS
                } else if self.released.contains(&id.get()) {
                    reason::SUCCESS
                } else {
                    reason::PACKET_IDENTIFIER_NOT_FOUND
                };
                let _ = self.send(Outbound::PubRel(id, reason));
            }
            Inbound::PubComp(id) => {
                self.released.remove(&id.get());
            }
            Inbound::PubRel(id) => {
                let reason = match self.qos2_received.remove(&id.get()) {
                    Some(_) => reason::SUCCESS,
                    None => reason::PACKET_IDENTIFIER_NOT_FOUND,
                };
                let _ = self.send(Outbound::PubComp(id, reason));
            }
            Inbound::Subscribe {
                packet_id,
                id,
                filters,
            } => self.subscribe(packet_id, id, filters).await,
            Inbound::Unsubscribe { packet_id, filters } => {
                self.unsubscribe(packet_id, filters).await
            }
            Inbound::PingReq => {
                let _ = self.send(Outbound::PingResp);
            }
            Inbound::Disconnect {
                with_will,
                session_expiry_secs,
            } => {
                if let Some(secs) = session_expiry_secs {
                    // MQTT 5 §3.14.2.2.2: from 0 to more is a protocol error.
                    if self.session_expiry_secs == 0 && secs > 0 {
                        return Some(violation(
                            reason::PROTOCOL_ERROR,
                            "session expiry set at DISCONNECT",
                        ));
                    }
                    self.session_expiry_secs = secs.min(self.config.max_session_expiry_secs);
                }
                return Some(Ending::Disconnected { with_will });
            }
            Inbound::Connect => {
                return Some(violation(reason::PROTOCOL_ERROR, "a second CONNECT"));
            }
            Inbound::Auth => {
                return Some(violation(
                    reason::PROTOCOL_ERROR,
                    "AUTH without an authentication method",
                ));
            }
            Inbound::ServerOnly => {
                return Some(violation(reason::PROTOCOL_ERROR, "a server's packet"));
            }
        }
        None
    }

    /// A PUBLISH: its message queued on the backend, its acknowledgement
    /// sent once the backend persisted it.
    async fn publish(&mut self, p: Publish) -> Option<Ending> {
        let packet_id = p.packet_id;
        if p.qos != QoS::AtMostOnce && packet_id.is_none() {
            return Some(violation(
                reason::PROTOCOL_ERROR,
                "QoS > 0 without packet id",
            ));
        }
        if let (QoS::ExactlyOnce, Some(id)) = (p.qos, packet_id) {
            match self.qos2_received.get(&id.get()) {
                // A resend of one stored: PUBREC again, nothing stored twice.
                Some(Qos2::Received) => {
                    let _ = self.send(Outbound::PubRec(id, reason::SUCCESS));
                    return None;
                }
                // Being stored: its PUBREC is on the way.
                Some(Qos2::Persisting) => return None,
                None => {
                    self.qos2_received.insert(id.get(), Qos2::Persisting);
                }
            }
        }
        let mut p = p;
        if let Some(ending) = self.resolve_alias(&mut p) {
            return Some(ending);
        }
        let topic = match self.cached_topic(&p.topic) {
            Ok(t) => t,
            Err(r) => return self.refuse_publish(&p, r),
        };
        let message = properties::to_backend(&p, self.client_id(), now_ms());
        let retain = p.retain.then(|| message.clone());
        let bytes = message.payload.len();
        let reservation = self.ctx.inbound.reserve(message.size()).await;
        let started = Instant::now();
        let queued = self.ctx.backend.queue_batch(&topic, vec![message]).await;
        let persisting = match queued {
            Ok(p) => p,
            Err(e) => {
                self.ctx.metrics.backend_error("publish", &e);
                return self.refuse_publish(&p, reason::backend(&e));
            }
        };
        let qos = p.qos;
        self.settle_in_turn(Box::pin(async move {
            let result = persisting.await.map(drop);
            drop(reservation);
            Settled::Stored(Publishing {
                packet_id,
                qos,
                topic,
                bytes,
                started,
                retain,
                result,
            })
        }));
        None
    }

    /// MQTT 5 topic aliases: a PUBLISH with a topic and an alias sets the
    /// alias; one with an alias alone uses it. `Some` when the alias is
    /// out of range or unknown.
    fn resolve_alias(&mut self, p: &mut Publish) -> Option<Ending> {
        let alias = p.properties.as_ref().and_then(|pp| pp.topic_alias)?;
        if alias.get() > self.config.topic_alias_max {
            return Some(violation(
                reason::TOPIC_ALIAS_INVALID,
                "topic alias out of range",
            ));
        }
        if p.topic.is_empty() {
            match self
                .aliases
                .as_ref()
                .and_then(|a| a.received.get(&alias.get()))
            {
                Some(topic) => p.topic = topic.clone(),
                None => return Some(violation(reason::PROTOCOL_ERROR, "unknown topic alias")),
            }
        } else if p.topic.len() <= self.config.max_topic_len {
            // A copy: the decoded name shares the whole packet's buffer.
            let topic = ByteString::from(p.topic.to_string());
            self.aliases
                .get_or_insert_with(Default::default)
                .received
                .insert(alias.get(), topic);
        }
        None
    }

    /// The topic a PUBLISH goes to, or the reason it may not; the last one
    /// is kept (see [`LastTopic`]).
    fn cached_topic(&mut self, name: &str) -> Result<TopicName, Reason> {
        if let Some(last) = self.last_topic.as_deref().filter(|l| &*l.name == name) {
            return Ok(last.topic.clone());
        }
        let topic = self.publish_topic(name)?;
        self.last_topic = Some(Box::new(LastTopic {
            name: name.into(),
            topic: topic.clone(),
            meter: None,
        }));
        Ok(topic)
    }

    /// The series a publish to `topic`, stored, counts in: the last
    /// topic's, made once.
    fn publish_meter(&mut self, topic: &TopicName) -> PublishMeter {
        let metrics = &self.ctx.metrics;
        match self.last_topic.as_deref_mut().filter(|l| l.topic == *topic) {
            Some(last) => last
                .meter
                .get_or_insert_with(|| metrics.publish_meter(Protocol::Mqtt, topic))
                .clone(),
            None => metrics.publish_meter(Protocol::Mqtt, topic),
        }
    }

    /// The topic a PUBLISH goes to, or the reason it may not.
    fn publish_topic(&self, name: &str) -> Result<TopicName, Reason> {
        if name.is_empty() || name.len() > self.config.max_topic_len {
            return Err(reason::TOPIC_NAME_INVALID);
        }
        if name.starts_with('$') {
            // `$SYS/...` and other `$` topics are the server's.
            return Err(reason::NOT_AUTHORIZED);
        }
        self.ctx
            .router
            .resolve(Protocol::Mqtt, name, &self.principal, Action::Produce)
            .map_err(|e| reason::route(&e, reason::TOPIC_NAME_INVALID))
    }

    /// Refuses a PUBLISH: MQTT 5 says why in its acknowledgement; 3.1.1
    /// has no negative acknowledgement, so the connection closes and the
    /// client sends it again on its next one.
    fn refuse_publish(&mut self, p: &Publish, r: Reason) -> Option<Ending> {
        if let (QoS::ExactlyOnce, Some(id)) = (p.qos, p.packet_id) {
            self.qos2_received.remove(&id.get());
        }
        match (self.codec.version(), p.qos, p.packet_id) {
            (_, QoS::AtMostOnce, _) => {
                tracing::debug!(client = %self.client_id(), topic = %p.topic, reason = r.0, "QoS 0 publish dropped");
                None
            }
            (Version::V5, qos, Some(id)) => {
                // After the acknowledgements of the publishes before it.
                let refused = Settled::Refused {
                    packet_id: id,
                    qos,
                    reason: r,
                };
                self.settle_in_turn(Box::pin(std::future::ready(refused)));
                None
            }
            _ => Some(Ending::Violation(
                r,
                format!("publish to {} refused", p.topic),
            )),
        }
    }

    /// A publish persisted (or failed): the topic's retained message set
    /// (the retain flag), then its acknowledgement.
    async fn published(&mut self, settled: Settled) -> Option<Ending> {
        let mut done = match settled {
            Settled::Stored(done) => done,
            Settled::Refused {
                packet_id,
                qos,
                reason,
            } => {
                let _ = match qos {
                    QoS::ExactlyOnce => self.send(Outbound::PubRec(packet_id, reason)),
                    _ => self.send(Outbound::PubAck(packet_id, reason)),
                };
                return None;
            }
        };
        if let (Ok(()), Some(message)) = (&done.result, &done.retain) {
            if let Err(e) = self.retained().set(&done.topic, message).await {
                done.result = Err(e);
            }
        }
        match &done.result {
            Ok(()) => {
                let meter = self.publish_meter(&done.topic);
                meter.published(1, done.bytes, done.started.elapsed());
            }
            Err(e) => self.ctx.metrics.backend_error("publish", e),
        }
        let Some(id) = done.packet_id else {
            if let Err(e) = &done.result {
                tracing::debug!(client = %self.client_id(), error = %e, "QoS 0 publish failed");
            }
            return None;
        };
        let failure = done.result.as_ref().err().map(reason::backend);
        match (done.qos, failure, self.codec.version()) {
            (QoS::AtLeastOnce, None, _) => {
                let _ = self.send(Outbound::PubAck(id, reason::SUCCESS));
            }
            (QoS::ExactlyOnce, None, _) => {
                self.qos2_received.insert(id.get(), Qos2::Received);
                let _ = self.send(Outbound::PubRec(id, reason::SUCCESS));
            }
            (QoS::AtLeastOnce, Some(r), Version::V5) => {
                let _ = self.send(Outbound::PubAck(id, r));
            }
            (QoS::ExactlyOnce, Some(r), Version::V5) => {
                self.qos2_received.remove(&id.get());
                let _ = self.send(Outbound::PubRec(id, r));
            }
            (_, Some(r), _) => {
                return Some(Ending::Violation(
                    r,
                    format!("the backend did not store a publish to {}", done.topic),
                ))
            }
            (QoS::AtMostOnce, None, _) => {}
        }
        None
    }

    /// Publishes being persisted.
    fn publishes_in_flight(&self) -> usize {
        self.publishing.as_ref().map_or(0, |queue| queue.len())
    }

    /// Queues `settled`, to be acknowledged after the publishes before it.
    fn settle_in_turn(&mut self, settled: BoxFuture<'static, Settled>) {
        self.publishing
            .get_or_insert_with(|| Box::new(FuturesOrdered::new()))
            .push_back(settled);
    }

    /// Waits for the publishes being persisted and sends their
    /// acknowledgements (shutdown).
    async fn drain_publishing(&mut self) {
        while let Some(mut queue) = self.publishing.take() {
            let Some(done) = queue.next().await else {
                break;
            };
            if !queue.is_empty() {
                self.publishing = Some(queue);
            }
            if self.published(done).await.is_some() {
                break;
            }
        }
    }

    /// SUBSCRIBE: each filter subscribed (or refused), then SUBACK.
    async fn subscribe(
        &mut self,
        packet_id: NonZeroU16,
        id: Option<NonZeroU32>,
        filters: Vec<FilterRequest>,
    ) {
        let mut granted = Vec::with_capacity(filters.len());
        let mut retained = Vec::new();
        for request in filters {
            let options = SubOptions {
                qos: request.qos,
                no_local: request.no_local,
                retain_as_published: request.retain_as_published,
                id,
            };
            let (answer, sends_retained) = self.subscribe_one(&request, options).await;
            if let (Granted::Qos(_), true) = (answer, sends_retained) {
                retained.push((request.filter, options));
            }
            granted.push(answer);
        }
        if self.stored {
            self.save_session().await;
        }
        let _ = self.send(Outbound::SubAck { packet_id, granted });
        for (filter, options) in retained {
            self.send_retained(&filter, options).await;
        }
    }

    /// Sends the retained messages `filter` matches, as MQTT says: the
    /// retain flag set, at the lower of their QoS and the one granted.
    async fn send_retained(&mut self, filter: &str, options: SubOptions) {
        let Ok(parsed) = Filter::parse(filter) else {
            return;
        };
        let found = match self.retained().matching(&parsed, &self.namespace).await {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(client = %self.client_id(), filter, error = %e, "retained messages not read");
                return;
            }
        };
        // No more than the delivery window has room for: retained
        // messages are not queued in the backend, so past it they are not
        // sent (the client sees the next ones published).
        let room = usize::from(self.window).saturating_sub(self.unacked.len());
        if found.len() > room {
            tracing::debug!(
                client = %self.client_id(),
                filter,
                matched = found.len(),
                sent = room,
                "retained messages beyond the window passed over"
            );
        }
        for stored in found.into_iter().take(room) {
            let Some(outgoing) = properties::outgoing(&stored.properties, now_ms()) else {
                continue;
            };
            let qos = properties::delivery_qos(outgoing.published_qos, options.qos);
            let packet_id = match qos {
                QoS::AtMostOnce => None,
                _ => match self.next_packet_id() {
                    Some(id) => Some(id),
                    None => continue,
                },
            };
            let mut outgoing = outgoing;
            outgoing.properties.subscription_ids = options.id.into_iter().collect();
            if let Some(id) = packet_id {
                self.unacked.insert(
                    id.get(),
                    Unacked {
                        filter: filter.into(),
                        message: None,
                        exactly_once: qos == QoS::ExactlyOnce,
                    },
                );
            }
            let publish = Publish {
                dup: false,
                retain: true,
                qos,
                topic: stored.topic.into(),
                packet_id,
                payload: stored.payload,
                properties: (self.codec.version() == Version::V5).then_some(outgoing.properties),
            };
            if let Err(e) = self.send_publish(publish) {
                tracing::debug!(client = %self.client_id(), error = %e, "retained message passed over");
            }
        }
    }

    /// Subscribes one filter: the answer, and whether the retained
    /// messages it matches are to be sent (MQTT 5 Retain Handling; never
    /// for a shared subscription).
    async fn subscribe_one(
        &mut self,
        request: &FilterRequest,
        options: SubOptions,
    ) -> (Granted, bool) {
        let text: &str = &request.filter;
        if text.len() > self.config.max_topic_len {
            return (Granted::Refused(reason::TOPIC_FILTER_INVALID), false);
        }
        let filter = match Filter::parse(text) {
            Ok(f) => f,
            Err(e) => {
                tracing::debug!(client = %self.client_id(), error = %e, "filter refused");
                return (Granted::Refused(reason::TOPIC_FILTER_INVALID), false);
            }
        };
        let unshared = filter.share.is_none();
        if !self.subscriptions.contains_key(text)
            && self.subscriptions.len() >= self.config.max_subscriptions
        {
            return (Granted::Refused(reason::QUOTA_EXCEEDED), false);
        }
        if let Some(existing) = self.subscriptions.get_mut(text) {
            // The same filter again replaces its options.
            existing.options = options;
            if self.stored {
                self.record.set(text, request.qos);
            }
            return (
                Granted::Qos(request.qos),
                unshared && request.retain_handling == 0,
            );
        }
        match self.open(&filter, text, options).await {
            Ok(()) => {
                if self.stored {
                    self.record.set(text, request.qos);
                }
                (
                    Granted::Qos(request.qos),
                    unshared && request.retain_handling < 2,
                )
            }
            Err(r) => (Granted::Refused(r), false),
        }
    }

    /// Where subscriptions queue their deliveries, made at the first.
    fn delivery_queue(&mut self) -> mpsc::Sender<Delivery> {
        if let Some(sender) = &self.delivery_sender {
            return sender.clone();
        }
        let (sender, receiver) = mpsc::channel(self.config.delivery_queue);
        self.deliveries = Some(receiver);
        self.delivery_sender = Some(sender.clone());
        sender
    }

    /// Opens the backend subscription of `filter` and starts delivering.
    async fn open(
        &mut self,
        filter: &Filter,
        text: &str,
        options: SubOptions,
    ) -> Result<(), Reason> {
        let (router, principal) = (&self.ctx.router, &self.principal);
        let topics = filter.selector(&self.namespace, |name| {
            router
                .resolve(Protocol::Mqtt, name, principal, Action::Consume)
                .map_err(|e| reason::route(&e, reason::TOPIC_FILTER_INVALID))
        })?;
        let (name, kind, durable) = match &filter.share {
            Some(group) => (
                session::shared_subscription_name(group, &filter.levels),
                SubscriptionKind::Shared,
                true,
            ),
            // A session in the store (new and persistent, or resumed)
            // keeps its subscriptions, and its backlog, in durable ones.
            None if self.stored => (
                session::subscription_name(self.client_id(), text),
                SubscriptionKind::Exclusive,
                true,
            ),
            None => (
                format!(
                    "mqtt-{}",
                    session::subscription_name(self.client_id(), text)
                ),
                SubscriptionKind::Exclusive,
                false,
            ),
        };
        let request = SubscribeRequest {
            topics,
            subscription: name,
            kind,
            initial_position: StartPosition::Latest,
            durable,
            consumer_name: self.client_id().to_owned(),
            receive_queue: self.config.receive_queue,
        };
        let subscription = self.ctx.backend.subscribe(request).await.map_err(|e| {
            tracing::debug!(client = %self.client_id(), filter = text, error = %e, "subscribe failed");
            reason::backend(&e)
        })?;
        let filter_key: Arc<str> = text.into();
        let subscribed = deliver::start(
            filter_key.clone(),
            filter.clone(),
            Arc::from(subscription),
            options,
            self.delivery_queue(),
            &self.ctx.metrics,
        );
        self.subscriptions.insert(filter_key, subscribed);
        Ok(())
    }

    /// UNSUBSCRIBE: each filter's subscription closed (deleted, for a
    /// persistent session), then UNSUBACK.
    async fn unsubscribe(&mut self, packet_id: NonZeroU16, filters: Vec<ByteString>) {
        let mut reasons = Vec::with_capacity(filters.len());
        for filter in filters {
            let text: &str = &filter;
            match self.subscriptions.remove(text) {
                Some(subscribed) => {
                    if self.stored && !subscribed.shared {
                        subscribed.unsubscribe().await;
                    } else {
                        subscribed.close().await;
                    }
                    self.record.remove(text);
                    reasons.push(reason::SUCCESS);
                }
                None => reasons.push(reason::NO_SUBSCRIPTION_EXISTED),
            }
        }
        if self.stored {
            self.save_session().await;
        }
        let _ = self.send(Outbound::UnsubAck { packet_id, reasons });
    }

    /// Subscribes again the filters of a resumed session.
    async fn restore(&mut self, record: Record) {
        for stored in record.filters {
            let Ok(filter) = Filter::parse(&stored.filter) else {
                continue;
            };
            let options = SubOptions::qos(stored.qos);
            match self.open(&filter, &stored.filter, options).await {
                Ok(()) => self.record.set(&stored.filter, stored.qos),
                Err(r) => tracing::warn!(
                    client = %self.client_id(),
                    filter = %stored.filter,
                    reason = r.0,
                    "a session's subscription could not be restored"
                ),
            }
        }
    }

    async fn save_session(&mut self) {
        match self.sessions().save(self.client_id(), &self.record).await {
            Ok(()) => self.stored = true,
            Err(e) => tracing::warn!(client = %self.client_id(), error = %e, "session not saved"),
        }
    }

    /// Sends one delivered message to the client.
    async fn deliver(&mut self, delivery: Delivery) {
        let Some(subscribed) = self.subscriptions.get(&delivery.filter) else {
            // Unsubscribed since: the subscription is closed, and the
            // message comes again to whoever subscribes next.
            return;
        };
        if delivery.generation != subscribed.generation {
            return;
        }
        let (subscription, options) = (subscribed.subscription.clone(), subscribed.options);
        let (message, named) = (*delivery.message, delivery.named);
        let Some(outgoing) = properties::outgoing(&message.properties, now_ms()) else {
            // Its Message Expiry passed: not delivered.
            let _ = subscription.ack(&message.topic, message.id).await;
            return;
        };
        if options.no_local && outgoing.publisher.as_deref() == Some(self.client_id()) {
            // MQTT 5 No Local: the client's own message.
            let _ = subscription.ack(&message.topic, message.id).await;
            return;
        }
        let qos = properties::delivery_qos(outgoing.published_qos, options.qos);
        let retain = options.retain_as_published && outgoing.retained;
        let mut outgoing = outgoing;
        outgoing.properties.subscription_ids = options.id.into_iter().collect();
        // Sent before and not acknowledged: again, with DUP and the packet
        // id it had (MQTT 4.4), unless that id is in use again.
        let original = self
            .redelivered
            .as_mut()
            .and_then(|r| r.remove(&(message.topic.clone(), message.id)));
        if self.redelivered.as_ref().is_some_and(|r| r.is_empty()) {
            // All sent again: deliveries look in no map any more.
            self.redelivered = None;
        }
        let packet_id = match qos {
            QoS::AtMostOnce => None,
            _ => match original
                .filter(|&id| self.packet_id_free(id))
                .and_then(NonZeroU16::new)
                .or_else(|| self.next_packet_id())
            {
                Some(id) => Some(id),
                None => {
                    // Unreachable with the delivery window; the message
                    // stays unacknowledged in the backend.
                    tracing::warn!(client = %self.client_id(), "no packet id free");
                    return;
                }
            },
        };
        // DUP is never set at QoS 0.
        let dup = original.is_some() && packet_id.is_some();
        let publish = Publish {
            dup,
            retain,
            qos,
            topic: named.name.clone(),
            packet_id,
            payload: message.payload.clone(),
            properties: (self.codec.version() == Version::V5).then_some(outgoing.properties),
        };
        let bytes = message.payload.len();
        if let Err(e) = self.send_publish(publish) {
            // Larger than the client accepts (MQTT 5 Maximum Packet Size):
            // as if delivered and acknowledged, as MQTT says.
            tracing::debug!(client = %self.client_id(), error = %e, "delivery passed over");
            let _ = subscription.ack(&message.topic, message.id).await;
            return;
        }
        named.meter.delivered(1, bytes);
        match packet_id {
            Some(id) => {
                self.unacked.insert(
                    id.get(),
                    Unacked {
                        filter: delivery.filter,
                        message: Some((message.topic, message.id)),
                        exactly_once: qos == QoS::ExactlyOnce,
                    },
                );
            }
            None => {
                let _ = subscription.ack(&message.topic, message.id).await;
            }
        }
    }

    /// The next free packet id for a delivery, not one kept for a message
    /// the previous connection left unacknowledged; `None` when all are in
    /// use (the delivery window keeps far fewer in flight).
    fn next_packet_id(&mut self) -> Option<NonZeroU16> {
        for _ in 0..=u16::MAX {
            self.last_packet_id = self.last_packet_id.wrapping_add(1);
            if let Some(id) = NonZeroU16::new(self.last_packet_id) {
                let reserved = self
                    .redelivered
                    .as_ref()
                    .is_some_and(|r| r.values().any(|&r| r == id.get()));
                if self.packet_id_free(id.get()) && !reserved {
                    return Some(id);
                }
            }
        }
        None
    }

    /// Whether no delivery in flight holds packet id `id`.
    fn packet_id_free(&self, id: u16) -> bool {
        !self.unacked.contains_key(&id) && !self.released.contains(&id)
    }

    /// PUBACK or PUBREC of a delivery: its message acknowledged to the
    /// backend.
    async fn acknowledged(&mut self, id: NonZeroU16) {
        let Some(unacked) = self.unacked.remove(&id.get()) else {
            return;
        };
        let Some((topic, message_id)) = unacked.message else {
            return;
        };
        if let Some(subscribed) = self.subscriptions.get(&unacked.filter) {
            if let Err(e) = subscribed.subscription.ack(&topic, message_id).await {
                tracing::debug!(client = %self.client_id(), error = %e, "ack failed");
            }
        }
    }

    /// A persistent session's will: published now when it has no delay,
    /// else stored until the delay runs out. Whether one waits.
    async fn leave_will(&mut self, will: will::Will, delay_secs: u32, at: u64) -> bool {
        if delay_secs == 0 {
            will::publish(&self.ctx, self.client_id(), will).await;
            return false;
        }
        match will::keep(&self.ctx, &self.namespace, self.client_id(), will, at).await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(client = %self.client_id(), error = %e, "delayed will lost");
                false
            }
        }
    }

    /// The topic and message of a will published at `at` (ms since the
    /// epoch), unless its topic is refused.
    fn will_message(&self, will: &Will, at: u64) -> Option<will::Will> {
        match self.publish_topic(&will.publish.topic) {
            Ok(topic) => Some(will::Will {
                topic,
                message: properties::to_backend(&will.publish, self.client_id(), at),
                retain: will.publish.retain,
            }),
            Err(r) => {
                tracing::debug!(client = %self.client_id(), reason = r.0, "will refused");
                None
            }
        }
    }

    /// Closes the subscriptions; a session that ends with the connection
    /// loses its record and durable subscriptions.
    async fn close_subscriptions(&mut self) {
        for (_, subscribed) in std::mem::take(&mut self.subscriptions) {
            subscribed.close().await;
        }
        if !self.persistent() && self.stored {
            let record = std::mem::take(&mut self.record);
            session::forget(
                &self.ctx,
                &self.sessions(),
                &self.namespace,
                self.client_id(),
                &record,
            )
            .await;
        }
    }

    /// Encodes `packet` for sending.
    fn send(&mut self, packet: Outbound) -> Result<(), crate::wire::WireError> {
        self.codec.encode(packet, &mut self.write)
    }

    /// Sends a PUBLISH. While the client accepts more topic aliases (MQTT
    /// 5), each new topic gets one: sent with its name the first time,
    /// with the alias alone after. An alias counts once its PUBLISH was
    /// encoded (one too large to send taught the client nothing).
    fn send_publish(&mut self, mut publish: Publish) -> Result<(), crate::wire::WireError> {
        let mut fresh = None;
        if let (Some(properties), true) = (publish.properties.as_mut(), self.sent_alias_max > 0) {
            let aliases = &mut self.aliases.get_or_insert_with(Default::default).sent;
            match aliases.get(&publish.topic) {
                Some(&alias) => {
                    properties.topic_alias = NonZeroU16::new(alias);
                    publish.topic = ByteString::new();
                }
                None if aliases.len() < usize::from(self.sent_alias_max) => {
                    // At most `sent_alias_max`, a u16: the length fits.
                    let alias = aliases.len() as u16 + 1;
                    properties.topic_alias = NonZeroU16::new(alias);
                    fresh = Some((publish.topic.clone(), alias));
                }
                None => {}
            }
        }
        self.send(Outbound::Publish(Box::new(publish)))?;
        if let (Some((topic, alias)), Some(aliases)) = (fresh, self.aliases.as_mut()) {
            aliases.sent.insert(topic, alias);
        }
        Ok(())
    }

    /// Writes what was encoded.
    async fn flush(&mut self) -> std::io::Result<()> {
        if !self.write.is_empty() {
            let written = async {
                self.stream.write_all(&self.write).await?;
                self.stream.flush().await
            };
            tokio::time::timeout(WRITE_TIMEOUT, written)
                .await
                .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
            // Kept while the connection is busy; `serve` lets it go
            // before waiting.
            self.write.clear();
        }
        Ok(())
    }
}

/// How long a client with a keep-alive of `secs` may be silent: 1.5
/// times that (MQTT 3.1.2.10).
fn idle_limit(secs: u16) -> Duration {
    Duration::from_millis(u64::from(secs) * 1500)
}

fn violation(reason: Reason, why: &str) -> Ending {
    Ending::Violation(reason, why.to_owned())
}

#[cfg(test)]
mod tests {
    /// Every idle connection holds one `Connection`: it stays within
    /// jemalloc's 512-byte size class (the next one is 640).
    #[test]
    fn a_connection_fits_in_512_bytes() {
        let size = std::mem::size_of::<super::Connection>();
        assert!(size <= 512, "{size} bytes");
    }
}
