//! The Kafka protocol handler: Kafka clients connect to the gateway as to
//! a broker and publish and consume through the handler contract.
//!
//! Several gateways on one backend are one Kafka cluster (`cluster.rs`):
//! each registers as a broker in the metadata store, Metadata lists the
//! live ones and names the gateway asked as every partition's leader, and
//! one live gateway, chosen per group alike on all of them, coordinates each
//! consumer group; the others answer its requests NOT_COORDINATOR.
//!
//! Built so far: ApiVersions, Metadata (every live gateway a broker, the
//! one asked the leader of every partition, auto-creating topics), Produce
//! (record batch v2, uncompressed or compressed with gzip, snappy, lz4 or
//! zstd, each batch decompressed under a cap of `max_frame_bytes`; acks 0,
//! 1 and all, answered once the backend persisted), InitProducerId with the
//! idempotent producer's sequence checks, ListOffsets (earliest, latest, by
//! time) and Fetch (record batch v2, uncompressed whatever the producer
//! sent; Kafka's byte limits, long polls; no fetch sessions), and consumer
//! groups: FindCoordinator, JoinGroup, SyncGroup, Heartbeat, LeaveGroup,
//! OffsetCommit, OffsetFetch, ListGroups, DescribeGroups, DeleteGroups
//! (committed offsets live in the metadata store), topic administration: CreateTopics, DeleteTopics,
//! CreatePartitions, DescribeConfigs (a topic's fixed settings), and
//! SASL/PLAIN authentication (SaslHandshake v0-1, SaslAuthenticate v0-2)
//! with the gateway's authenticator: with authentication on, a connection
//! must authenticate (a Pulsar token as the password, `token:<jwt>` or
//! bare) before any request but ApiVersions, and its principal is the one
//! every topic it names is resolved and authorized for; with it off, SASL
//! still succeeds with any password. Requests of a connection are served
//! in order, as a Kafka broker serves them, with one difference: while a
//! Produce request's batches are being persisted, the connection reads on,
//! and queues the batches of the Produce requests that follow (up to
//! eight unanswered); any other request waits until those are answered.
//! Responses go out in request order.
//!
//! A request at a version this handler does not serve, of an API it
//! serves at lower versions, is answered UNSUPPORTED_VERSION in its own
//! version (`unsupported.rs`); an API key unknown or not served, or a
//! version the codec cannot read, gets the header and UNSUPPORTED_VERSION
//! alone, as no response schema is known for it.
//!
//! Kafka partition `p` of topic `t` is the backend topic `t-partition-p`;
//! a topic without partitions is a Kafka topic of one partition. A record's
//! key is the message key, its headers the properties, its timestamp the
//! event time.

mod api;
mod cluster;
mod decompress;
mod fetch;
mod frame;
mod group;
mod list_offsets;
mod metadata;
mod produce;
mod sasl;
mod topics;
mod unsupported;

use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use futures::future::BoxFuture;
use futures::stream::{FuturesOrdered, StreamExt};
use gateway_api::{ByteBudget, ClientStream, Context, HandlerError, Protocol, ProtocolHandler};
use kafka_protocol::messages::ApiKey;

pub use group::coordinator::GroupSettings;
pub use produce::Producers;

/// Produce requests a connection may have queued and not yet answered;
/// further requests wait unread. Kafka producers keep five in flight by
/// default (librdkafka far more).
const MAX_PRODUCING: usize = 8;

/// How long a connection refused after its response (a failed SASL
/// authentication) waits for the client to close it first.
const CLOSE_LINGER: std::time::Duration = std::time::Duration::from_secs(1);

/// How the Kafka handler behaves.
#[derive(Debug, Clone)]
pub struct KafkaConfig {
    /// The longest request accepted, in bytes (Kafka's
    /// `socket.request.max.bytes`, 100 MiB); a longer one closes the
    /// connection. Also the most a produced record batch may decompress
    /// to: a compressed batch holding more is refused (MESSAGE_TOO_LARGE)
    /// once its decompressor has yielded one byte too many. (The decoded
    /// records of a batch that fits take more memory than its bytes, and
    /// decompressed bytes are not yet counted in `max_inbound_bytes`.)
    pub max_frame_bytes: usize,
    /// The address Metadata gives clients for the broker (`host`, `port`);
    /// `None`: the address each client connected to.
    pub advertised: Option<(String, u16)>,
    /// The Kafka cluster this gateway is a broker of: Metadata's cluster
    /// id, and the gateways on the backend it lists as brokers and shares
    /// group coordination with (those with the same id).
    pub cluster_id: String,
    /// Partitions of a topic created because a client asked for it
    /// (Kafka's `num.partitions`); 1 creates a topic without partitions.
    pub default_partitions: u32,
    /// The most partitions a client may give a topic (CreateTopics,
    /// CreatePartitions).
    pub max_partitions: u32,
    /// The group coordinator's settings.
    pub groups: GroupSettings,
    /// The most record bytes one Fetch response holds, whatever the client
    /// asks (Kafka's broker `fetch.max.bytes`, 55 MiB); a single record
    /// larger than this still goes, alone.
    pub fetch_max_bytes: usize,
    /// Partitions a connection keeps a reader open on between Fetch
    /// requests; past it the least recently fetched one is closed (and
    /// opened again, at a cost, when fetched again).
    pub fetch_readers: usize,
}

impl Default for KafkaConfig {
    fn default() -> KafkaConfig {
        KafkaConfig {
            max_frame_bytes: 100 << 20,
            advertised: None,
            cluster_id: "pulsar-gateway".to_owned(),
            default_partitions: 1,
            max_partitions: 1024,
            groups: GroupSettings::default(),
            fetch_max_bytes: 55 << 20,
            fetch_readers: 100,
        }
    }
}

/// The reading half of a client's connection.
type ClientReader = tokio::io::BufReader<tokio::io::ReadHalf<Box<dyn ClientStream>>>;

/// Bytes read from a client at a time: a small request and the length of
/// the next come in one read; a large body is read past the buffer.
const READ_BUFFER: usize = 4096;

/// The read of a connection's next frame, owning the reader until it is
/// done (so that the read is never cut off half-way by the wait for a
/// Produce response).
type ReadNext = BoxFuture<'static, (ClientReader, Result<Option<frame::Frame>, HandlerError>)>;

/// Reads the next frame of at most `max` bytes.
fn read_next(mut reader: ClientReader, max: usize, inbound: ByteBudget) -> ReadNext {
    Box::pin(async move {
        let frame = frame::read(&mut reader, max, &inbound).await;
        (reader, frame)
    })
}

/// The read under way; never resolves when there is none.
async fn next_frame(
    reading: &mut Option<ReadNext>,
) -> (ClientReader, Result<Option<frame::Frame>, HandlerError>) {
    match reading.as_mut() {
        Some(read) => read.await,
        None => std::future::pending().await,
    }
}

/// A queued Produce request's response, once its task is done (`None`
/// for acks = 0).
type Producing = BoxFuture<'static, Result<Option<bytes::BytesMut>, HandlerError>>;

/// Writes the responses of every queued Produce request, in order.
async fn answer_all<W: tokio::io::AsyncWrite + Unpin>(
    producing: &mut FuturesOrdered<Producing>,
    writer: &mut W,
) -> Result<(), HandlerError> {
    while let Some(done) = producing.next().await {
        answer(writer, done).await?;
    }
    Ok(())
}

/// Writes a queued Produce request's response, if it has one.
async fn answer<W: tokio::io::AsyncWrite + Unpin>(
    writer: &mut W,
    done: Result<Option<bytes::BytesMut>, HandlerError>,
) -> Result<(), HandlerError> {
    match done? {
        Some(response) => frame::write(writer, &response).await,
        None => Ok(()),
    }
}

/// Serves Kafka clients.
pub struct KafkaHandler {
    config: Arc<KafkaConfig>,
    /// Idempotent producers' sequence state, shared by all connections.
    producers: Arc<Producers>,
    /// Partition counts for Produce, shared by all connections.
    partition_counts: Arc<metadata::PartitionCounts>,
    /// Every consumer group's membership, for the groups this gateway
    /// coordinates.
    coordinator: Arc<group::coordinator::Coordinator>,
    /// This gateway's node id and the other Kafka gateways on the backend.
    cluster: Arc<cluster::Cluster>,
}

impl KafkaHandler {
    /// A handler with `config`.
    pub fn new(config: KafkaConfig) -> KafkaHandler {
        KafkaHandler {
            coordinator: group::coordinator::Coordinator::new(config.groups.clone()),
            cluster: Arc::new(cluster::Cluster::new(
                &config.cluster_id,
                config.advertised.clone(),
            )),
            config: Arc::new(config),
            producers: Arc::new(Producers::default()),
            partition_counts: Arc::default(),
        }
    }
}

#[async_trait]
impl ProtocolHandler for KafkaHandler {
    fn protocol(&self) -> Protocol {
        Protocol::Kafka
    }

    /// Registers this gateway as a broker in the metadata store, refreshed
    /// until shutdown, and starts writing the groups' records there.
    fn start(&self, listening: SocketAddr, ctx: Context) {
        let shutdown = ctx.shutdown.clone();
        tokio::spawn(group::state::persist(
            Arc::downgrade(&self.coordinator),
            ctx.backend.metadata(),
            self.config.cluster_id.clone(),
            async move { shutdown.cancelled().await },
        ));
        self.cluster.start(listening, ctx);
    }

    async fn serve(
        self: Arc<Self>,
        stream: Box<dyn ClientStream>,
        peer: SocketAddr,
        local: SocketAddr,
        ctx: Context,
    ) -> Result<(), HandlerError> {
        // Bound to a wildcard address, the gateway registers the first
        // address a client reached it at.
        self.cluster.learn_address(local);
        let (reader, mut writer) = tokio::io::split(stream);
        let reader = tokio::io::BufReader::with_capacity(READ_BUFFER, reader);
        let session = sasl::Session::start(&*ctx.auth).await;
        let connection = api::Connection {
            config: self.config.clone(),
            producers: self.producers.clone(),
            partition_counts: self.partition_counts.clone(),
            coordinator: self.coordinator.clone(),
            cluster: self.cluster.clone(),
            peer,
            local,
            ctx: ctx.clone(),
            readers: tokio::sync::Mutex::new(fetch::Readers::new(self.config.fetch_readers)),
            session: std::sync::Mutex::new(session),
        };
        // Produce requests queued and not yet answered, in request order:
        // the next request is read while they are persisted. Each is a
        // task of its own, so that what it stored is settled (an
        // idempotent producer's sequences) even if the connection ends
        // first.
        let mut producing: FuturesOrdered<Producing> = FuturesOrdered::new();
        let mut idle = Some(reader);
        let mut reading: Option<ReadNext> = None;
        loop {
            if producing.len() < MAX_PRODUCING {
                if let Some(reader) = idle.take() {
                    let max = sasl::lock(&connection.session)
                        .max_frame_bytes(self.config.max_frame_bytes);
                    reading = Some(read_next(reader, max, ctx.inbound.clone()));
                }
            }
            let frame = tokio::select! {
                biased;
                _ = ctx.shutdown.cancelled() => return Ok(()),
                Some(done) = producing.next(), if !producing.is_empty() => {
                    answer(&mut writer, done).await?;
                    continue;
                }
                (reader, frame) = next_frame(&mut reading) => {
                    reading = None;
                    idle = Some(reader);
                    frame
                }
            };
            let Some(frame) = frame? else {
                // The client is gone; its Produce requests finish in their
                // tasks.
                return Ok(());
            };
            let api_key = frame
                .body
                .get(..2)
                .map_or(-1, |k| i16::from_be_bytes([k[0], k[1]]));
            if api_key != ApiKey::Produce as i16 {
                // Served in order: after the Produce requests before it.
                tokio::select! {
                    _ = ctx.shutdown.cancelled() => return Ok(()),
                    answered = answer_all(&mut producing, &mut writer) => answered?,
                }
            }
            if sasl::lock(&connection.session).expects_raw_token() {
                let answer = sasl::raw_token(&connection.session, &*ctx.auth, &frame.body).await?;
                frame::write(&mut writer, &answer).await?;
                continue;
            }
            sasl::lock(&connection.session).admit(api_key)?;
            let frame::Frame { body, held } = frame;
            let reply = tokio::select! {
                _ = ctx.shutdown.cancelled() => return Ok(()),
                reply = connection.handle(body) => reply?,
            };
            match reply {
                api::Reply::Now(response) => frame::write(&mut writer, &response).await?,
                api::Reply::Later(response) => {
                    // The request's bytes stay counted until it is answered.
                    let task = tokio::spawn(async move {
                        let _held = held;
                        response.await
                    });
                    producing.push_back(Box::pin(async move {
                        task.await.unwrap_or_else(|e| {
                            Err(HandlerError::Protocol(format!(
                                "a Produce request failed: {e}"
                            )))
                        })
                    }));
                }
            }
            let closing = sasl::lock(&connection.session).take_closing();
            if let Some(why) = closing {
                if let Some(reader) = idle.as_mut() {
                    frame::linger(reader, CLOSE_LINGER).await;
                }
                return Err(why);
            }
        }
    }
}
