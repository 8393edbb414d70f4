//! The MQTT protocol handler: devices publish and subscribe over MQTT
//! 3.1.1 and 5 through the handler contract.
//!
//! Built so far: CONNECT (3.1, 3.1.1 and 5; credentials through the
//! gateway's authenticator, the password may be a token; a client id
//! assigned when none is sent; a second connection with a client id in use
//! takes the session over), PUBLISH at QoS 0, 1 and 2 (PUBACK and PUBREC
//! only once the backend persisted the message, in order; a QoS 2 resend
//! is not stored twice, also across a reconnect), SUBSCRIBE and UNSUBSCRIBE
//! (filters with `+` and `#` are patterns over the namespace, so they see
//! topics created later; `$share/{group}/{filter}` is a Shared
//! subscription), delivery at the lower of the published and granted QoS
//! with the client's Receive Maximum as the window (unacknowledged ones
//! sent again marked DUP, with their packet ids, on the session's next
//! connection), keep-alive (1.5 times the client's), the last will on any
//! end but DISCONNECT (MQTT 5: after its delay, unless the client is back),
//! persistent sessions (3.1.1 clean session off, MQTT 5 Session Expiry
//! above 0: durable subscriptions restored on the next connection, ended at expiry,
//! `session.rs`), retained messages (`retained.rs`), MQTT 5 properties
//! (user properties as message properties, the others as `mqtt-*` ones,
//! `properties.rs`), topic aliases both ways, subscription identifiers,
//! No Local, Retain As Published, Retain Handling, reason codes and a
//! server DISCONNECT with its reason. A persistent session held through
//! another gateway is taken over from it (`handover.rs`). MQTT over
//! WebSocket is the runtime's (`src/websocket.rs`), served by this same
//! handler.
//!
//! Not yet: AUTH (enhanced authentication); parked QoS 2 state across
//! gateways (a client that comes back through another gateway resumes its
//! subscriptions, which the backend holds, not the exchanges under way).
//!
//! Topic `a/b/c` is the backend topic `a.b.c` (DESIGN.md).

mod clients;
mod connect;
mod connection;
mod deliver;
mod due;
mod filter;
mod gateways;
mod handover;
mod properties;
mod reason;
mod retained;
mod session;
mod will;
mod wire;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use gateway_api::{ClientStream, Context, HandlerError, Protocol, ProtocolHandler};

/// How the MQTT handler behaves.
#[derive(Debug, Clone)]
pub struct MqttConfig {
    /// The largest packet accepted, in bytes; a larger one closes the
    /// connection (MQTT 5: DISCONNECT 0x95) before its body is read.
    pub max_packet_size: u32,
    /// How long a new connection may take to send its CONNECT.
    pub connect_timeout: Duration,
    /// Publishes of one connection being persisted at once (MQTT 5's
    /// Receive Maximum the gateway announces), and the most deliveries
    /// awaiting one client's acknowledgement.
    pub max_inflight: u16,
    /// The longest topic name or filter accepted, in bytes.
    pub max_topic_len: usize,
    /// Messages each subscription buffers toward its connection.
    pub receive_queue: usize,
    /// Messages a connection's subscriptions queue for it.
    pub delivery_queue: usize,
    /// MQTT 5 topic aliases a client may set (its Topic Alias Maximum),
    /// and the most the gateway sets in what it sends a client (fewer when
    /// the client accepts fewer).
    pub topic_alias_max: u16,
    /// Filters one connection may subscribe (each is a backend
    /// subscription); past it SUBACK refuses with 0x97 (quota exceeded).
    pub max_subscriptions: usize,
    /// The longest a session outlives its connection, in seconds: MQTT
    /// 3.1.1's persistent sessions (which have no expiry) and longer MQTT
    /// 5 ones end then, so abandoned client ids do not keep backlogs for
    /// ever.
    pub max_session_expiry_secs: u32,
}

impl Default for MqttConfig {
    fn default() -> MqttConfig {
        MqttConfig {
            max_packet_size: 1 << 20,
            connect_timeout: Duration::from_secs(10),
            max_inflight: 1000,
            max_topic_len: 1024,
            receive_queue: 1000,
            delivery_queue: 64,
            topic_alias_max: 64,
            max_subscriptions: 100,
            max_session_expiry_secs: 7 * 24 * 3600,
        }
    }
}

/// Serves MQTT connections.
pub struct MqttHandler {
    config: Arc<MqttConfig>,
    clients: clients::Clients,
}

impl MqttHandler {
    pub fn new(config: MqttConfig) -> MqttHandler {
        MqttHandler {
            config: Arc::new(config),
            clients: clients::Clients::default(),
        }
    }
}

#[async_trait]
impl ProtocolHandler for MqttHandler {
    fn protocol(&self) -> Protocol {
        Protocol::Mqtt
    }

    /// Registers this gateway among the MQTT gateways of the backend, and
    /// from then on ends persistent sessions and publishes delayed wills
    /// on time, whichever gateway their clients left (or held them and
    /// died).
    fn start(&self, _listening: SocketAddr, ctx: Context) {
        let gateways = self.clients.gateways().clone();
        tokio::spawn(gateways.register(ctx.clone()));
        tokio::spawn(handover::serve(ctx.clone(), self.clients.clone()));
        tokio::spawn(session::expire_stored(ctx.clone()));
        tokio::spawn(will::publish_stored(ctx));
    }

    /// Written out rather than `async fn`: an async fn's future keeps all
    /// its arguments, and the two addresses it does not use would cost
    /// every idle connection 64 bytes.
    fn serve<'async_trait>(
        self: Arc<Self>,
        stream: Box<dyn ClientStream>,
        _peer: SocketAddr,
        _local: SocketAddr,
        ctx: Context,
    ) -> Pin<Box<dyn Future<Output = Result<(), HandlerError>> + Send + 'async_trait>>
    where
        Self: 'async_trait,
    {
        // An idle connection's task holds this future as long as it lives:
        // each step is boxed, so that it keeps only the step it is in, not
        // the largest of them.
        Box::pin(async move {
            let Some(connection) = Box::pin(self.connect(stream, ctx)).await? else {
                return Ok(());
            };
            Box::pin(connection.run()).await
        })
    }
}

impl MqttHandler {
    /// Reads the CONNECT, registers the client id and sets its session up;
    /// `None` when the connection was refused (and answered).
    async fn connect(
        &self,
        mut stream: Box<dyn ClientStream>,
        ctx: Context,
    ) -> Result<Option<Box<connection::Connection>>, HandlerError> {
        // Boxed steps again: before its CONNECT, a connection holds only the
        // reading of it.
        let accepting = connect::accept(&mut stream, &self.config, &ctx);
        let Some(connected) = Box::pin(accepting).await? else {
            return Ok(None);
        };
        let namespace = ctx.router.namespace(Protocol::Mqtt, &connected.principal);
        let registered = clients::scoped(&namespace, &connected.client_id);
        let registering = self.clients.register(&registered, &ctx.shutdown);
        let (registration, parked) = Box::pin(registering).await;
        let starting = connection::Connection::start(
            stream,
            connected,
            ctx,
            self.config.clone(),
            registration,
            parked,
        );
        let connection = Box::pin(starting).await?;
        Ok(Some(connection))
    }
}
