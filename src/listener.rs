//! The accept loop every protocol shares.
//!
//! An [`Acceptor`] turns a bound socket into admitted connections: it takes
//! a connection-limit permit *before* accepting, retries accept errors with
//! a growing pause instead of spinning or giving up, sets TCP_NODELAY, and
//! counts the connection in the protocol's gauge. Each admitted stream
//! carries its [`Slot`] (permit, gauge, shutdown guard), released when the
//! stream is dropped, however the connection ends.
//!
//! A [`Listener`] runs an acceptor for a [`ProtocolHandler`]: one task per
//! connection, calling `serve`, until the gateway shuts down. The admin
//! HTTP server uses the same [`Acceptor`] through axum's
//! [`axum::serve::Listener`] trait.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use gateway_api::{Context, ProtocolHandler};
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::{debug, debug_span, info, warn, Instrument};

use crate::shutdown::Running;

/// The first pause after a failed accept; it doubles on each further
/// failure in a row.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);

/// The longest pause between accept attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(16);

/// What one open connection holds of its listener. Dropping it gives all
/// of it back.
#[derive(Debug)]
pub struct Slot {
    /// The connection-limit permit; its drop lets the listener accept
    /// another client.
    _permit: OwnedSemaphorePermit,
    /// The protocol's open-connection gauge, decremented on drop (`None`
    /// where connections are not counted, as on the admin HTTP server).
    gauge: Option<Gauge>,
    /// Keeps graceful shutdown waiting until this connection is gone.
    _running: Running,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(gauge) = &self.gauge {
            gauge.dec();
        }
    }
}

/// An accepted stream together with its [`Slot`]: the connection counts
/// against its listener for exactly as long as the stream exists.
#[derive(Debug)]
pub struct Admitted<S> {
    /// The client's byte stream.
    stream: S,
    /// Released when the stream is dropped.
    _slot: Slot,
}

impl<S> Admitted<S> {
    /// The underlying stream.
    pub fn get_ref(&self) -> &S {
        &self.stream
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Admitted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Admitted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Accepts connections from one bound socket, within a connection limit.
#[derive(Debug)]
pub struct Acceptor {
    /// The bound socket.
    socket: TcpListener,
    /// What the logs call this listener (`kafka`, `http`, ...).
    name: &'static str,
    /// One permit per connection that may be open at once; taken before
    /// accepting, so over the limit clients wait in the kernel's backlog
    /// instead of being accepted and starved.
    limit: Arc<Semaphore>,
    /// Open connections of this protocol, if they are counted.
    gauge: Option<Gauge>,
    /// Keeps graceful shutdown waiting while the acceptor exists; cloned
    /// into every connection's slot.
    running: Running,
}

impl Acceptor {
    /// Wraps a bound socket. `max_connections` must be at least 1.
    pub fn new(
        socket: TcpListener,
        name: &'static str,
        max_connections: usize,
        gauge: Option<Gauge>,
        running: Running,
    ) -> Acceptor {
        Acceptor {
            socket,
            name,
            limit: Arc::new(Semaphore::new(
                max_connections.clamp(1, Semaphore::MAX_PERMITS),
            )),
            gauge,
            running,
        }
    }

    /// The address the socket is bound to.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// The next client connection. Waits for a free slot first, then for a
    /// client. Never fails: accept errors are logged and retried after a
    /// pause (1 s, 2 s, 4 s ... up to 16 s). Cancel-safe.
    pub async fn accept(&mut self) -> (Admitted<TcpStream>, SocketAddr) {
        let permit = match self.limit.clone().acquire_owned().await {
            Ok(permit) => permit,
            // The semaphore is never closed; should it be, wait forever
            // rather than accept without a limit (shutdown still ends us).
            Err(_) => std::future::pending().await,
        };
        let mut backoff = FIRST_BACKOFF;
        let (stream, peer) = loop {
            match self.socket.accept().await {
                Ok(accepted) => break accepted,
                // The client gave up between SYN and accept: its problem,
                // not the listener's.
                Err(e) if is_per_connection(&e) => {
                    debug!(listener = self.name, error = %e, "accept: client left early");
                }
                Err(e) => {
                    warn!(
                        listener = self.name,
                        error = %e,
                        "accept failed; retrying in {}s",
                        backoff.as_secs()
                    );
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        };
        if let Err(e) = stream.set_nodelay(true) {
            debug!(listener = self.name, %peer, error = %e, "cannot set TCP_NODELAY");
        }
        if let Some(gauge) = &self.gauge {
            gauge.inc();
        }
        let slot = Slot {
            _permit: permit,
            gauge: self.gauge.clone(),
            _running: self.running.clone(),
        };
        (
            Admitted {
                stream,
                _slot: slot,
            },
            peer,
        )
    }
}

/// Accept errors that concern one client only.
fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// The client's address, for HTTP handlers (axum's `ConnectInfo`).
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, Acceptor>>
    for PeerAddr
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, Acceptor>) -> PeerAddr {
        PeerAddr(*stream.remote_addr())
    }
}

impl axum::serve::Listener for Acceptor {
    type Io = Admitted<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        Acceptor::accept(self).await
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Acceptor::local_addr(self)
    }
}

/// Serves one protocol on one socket: accepts until shutdown, one task per
/// connection.
pub struct Listener {
    /// Admits the connections.
    acceptor: Acceptor,
    /// Speaks the protocol on each of them.
    handler: Arc<dyn ProtocolHandler>,
    /// Handed to every connection; its `shutdown` token also ends the
    /// accept loop.
    ctx: Context,
}

impl Listener {
    /// A listener for `handler` on a bound socket, counting its connections
    /// in `ctx.metrics` under the handler's protocol.
    pub fn new(
        socket: TcpListener,
        handler: Arc<dyn ProtocolHandler>,
        ctx: Context,
        max_connections: usize,
        running: Running,
    ) -> Listener {
        let protocol = handler.protocol();
        let gauge = ctx.metrics.connection_gauge(protocol);
        Listener {
            acceptor: Acceptor::new(
                socket,
                protocol.as_str(),
                max_connections,
                Some(gauge),
                running,
            ),
            handler,
            ctx,
        }
    }

    /// The address the socket is bound to.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.acceptor.local_addr()
    }

    /// Accepts connections until `ctx.shutdown` is cancelled, then closes
    /// the socket and returns. Connections already open keep running until
    /// their handler returns; each holds a shutdown guard.
    pub async fn run(mut self) {
        let protocol = self.handler.protocol();
        // The handler's own work (a Kafka gateway announcing itself) starts
        // with its listener, knowing the address it is bound to.
        if let Ok(addr) = self.local_addr() {
            self.handler.start(addr, self.ctx.clone());
        }
        loop {
            let (stream, peer) = tokio::select! {
                biased;
                _ = self.ctx.shutdown.cancelled() => break,
                accepted = self.acceptor.accept() => accepted,
            };
            // At debug level only: at info, a span per connection costs
            // each idle connection ~400 bytes (the subscriber's slot and
            // its formatted fields). The events that end a connection
            // carry the protocol and peer themselves.
            let span = debug_span!("conn", %protocol, %peer);
            // The listener's own address when the socket cannot tell (it
            // can: an accepted TCP stream has one).
            let local = match stream.get_ref().local_addr() {
                Ok(local) => local,
                Err(_) => self.local_addr().unwrap_or(peer),
            };
            // Every idle connection pays for each byte its task holds: the
            // handler's boxed future, made here, and what the log line at
            // its end needs.
            let serving = {
                let _entered = span.enter();
                debug!("connection opened");
                let ctx = self.ctx.clone();
                self.handler
                    .clone()
                    .serve(Box::new(stream), peer, local, ctx)
            };
            tokio::spawn(
                async move {
                    match serving.await {
                        Ok(()) => debug!("connection closed"),
                        Err(e) if e.is_disconnect() => debug!(error = %e, "connection lost"),
                        Err(e @ gateway_api::HandlerError::Backend(_)) => {
                            warn!(%protocol, %peer, error = %e, "connection ended")
                        }
                        Err(e) => info!(%protocol, %peer, error = %e, "connection ended"),
                    }
                }
                .instrument(span),
            );
        }
        debug!(listener = protocol.as_str(), "stopped accepting");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shutdown::Shutdown;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn bound() -> TcpListener {
        TcpListener::bind("127.0.0.1:0").await.unwrap()
    }

    #[tokio::test]
    async fn the_limit_holds_until_a_connection_drops() {
        let shutdown = Shutdown::new();
        let gauge = Gauge::default();
        let mut acceptor = Acceptor::new(
            bound().await,
            "test",
            1,
            Some(gauge.clone()),
            shutdown.running(),
        );
        let addr = acceptor.local_addr().unwrap();
        let _c1 = TcpStream::connect(addr).await.unwrap();
        let _c2 = TcpStream::connect(addr).await.unwrap();

        let (first, _) = acceptor.accept().await;
        assert!(first.get_ref().nodelay().unwrap());
        assert_eq!(gauge.get(), 1);
        // The second client is in the backlog, but there is no permit.
        let second = tokio::time::timeout(Duration::from_millis(200), acceptor.accept()).await;
        assert!(second.is_err(), "accepted over the limit");

        drop(first);
        assert_eq!(gauge.get(), 0);
        let (_second, _) = tokio::time::timeout(Duration::from_secs(5), acceptor.accept())
            .await
            .expect("a freed slot admits the next client");
        assert_eq!(gauge.get(), 1);
    }

    #[tokio::test]
    async fn drain_waits_for_admitted_streams_and_the_acceptor() {
        let shutdown = Shutdown::new();
        let mut acceptor = Acceptor::new(bound().await, "test", 8, None, shutdown.running());
        let addr = acceptor.local_addr().unwrap();
        let mut client = TcpStream::connect(addr).await.unwrap();
        let (mut server_side, _) = acceptor.accept().await;
        let token = shutdown.token();
        let conn = tokio::spawn(async move {
            // Echo one message, then close when shutdown begins.
            let mut buf = [0u8; 5];
            server_side.read_exact(&mut buf).await.unwrap();
            server_side.write_all(&buf).await.unwrap();
            token.cancelled().await;
            drop(server_side);
        });
        let token = shutdown.token();
        let accept_loop = tokio::spawn(async move {
            token.cancelled().await;
            drop(acceptor);
        });
        client.write_all(b"hello").await.unwrap();
        let mut echoed = [0u8; 5];
        client.read_exact(&mut echoed).await.unwrap();
        assert_eq!(&echoed, b"hello");

        assert_eq!(shutdown.drain(Duration::from_secs(5)).await, Ok(()));
        conn.await.unwrap();
        accept_loop.await.unwrap();
        // The server side closed: the client reads EOF.
        assert_eq!(client.read(&mut echoed).await.unwrap(), 0);
    }
}
