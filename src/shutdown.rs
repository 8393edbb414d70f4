//! Graceful shutdown: a token broadcast to every listener and connection,
//! and a channel whose last sender going away says that all of them have
//! finished. No sleeping: each wait is on an event, bounded by a timeout.

use std::time::Duration;

use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The shutdown coordinator, owned by the runtime's top level.
#[derive(Debug)]
pub struct Shutdown {
    /// Cancelled once, when shutdown begins: listeners stop accepting and
    /// handlers (through `Context::shutdown`) wind their connections down.
    token: CancellationToken,
    /// The first "still running" sender. Every listener and connection
    /// holds a clone; [`Shutdown::drain`] drops this one so that only theirs
    /// keep the channel open.
    running: mpsc::Sender<()>,
    /// Receives nothing, ever: it yields `None` once every sender is gone,
    /// which is the signal that all listeners and connections finished.
    finished: mpsc::Receiver<()>,
}

/// Held by a listener or a connection for as long as it runs. Nothing is
/// ever sent through it; dropping it is the message.
#[derive(Debug, Clone)]
pub struct Running(
    /// A clone of the coordinator's sender; its drop is what is counted.
    #[allow(dead_code)]
    mpsc::Sender<()>,
);

impl Default for Shutdown {
    fn default() -> Shutdown {
        Shutdown::new()
    }
}

impl Shutdown {
    /// A coordinator with nothing running yet.
    pub fn new() -> Shutdown {
        let (running, finished) = mpsc::channel(1);
        Shutdown {
            token: CancellationToken::new(),
            running,
            finished,
        }
    }

    /// The token that is cancelled when shutdown begins (the
    /// `Context::shutdown` of every handler).
    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }

    /// A guard to hold while some listener or connection runs.
    pub fn running(&self) -> Running {
        Running(self.running.clone())
    }

    /// Starts shutdown (cancels the token) and waits until every
    /// [`Running`] guard is dropped, at most `timeout`. On timeout, returns
    /// how many guards are still held.
    pub async fn drain(self, timeout: Duration) -> Result<(), usize> {
        let Shutdown {
            token,
            running,
            mut finished,
        } = self;
        token.cancel();
        drop(running);
        match tokio::time::timeout(timeout, finished.recv()).await {
            Ok(_) => Ok(()),
            Err(_) => Err(finished.sender_strong_count()),
        }
    }
}

/// The signals that ask the gateway to stop: SIGTERM (service managers,
/// Kubernetes, `docker stop`) and SIGINT (Ctrl-C).
#[derive(Debug)]
pub struct StopSignals {
    /// SIGTERM's stream.
    term: Signal,
    /// SIGINT's stream.
    int: Signal,
}

impl StopSignals {
    /// Installs the handlers. Do it early: until then a SIGTERM kills the
    /// process without a graceful shutdown.
    pub fn install() -> std::io::Result<StopSignals> {
        Ok(StopSignals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// Waits for the next stop signal and returns its name.
    pub async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn drain_returns_once_the_last_guard_drops() {
        let shutdown = Shutdown::new();
        let token = shutdown.token();
        let guard = shutdown.running();
        let task = tokio::spawn(async move {
            token.cancelled().await;
            drop(guard);
        });
        assert_eq!(shutdown.drain(Duration::from_secs(5)).await, Ok(()));
        task.await.unwrap();
    }

    #[tokio::test]
    async fn drain_gives_up_after_the_timeout_and_counts_stragglers() {
        let shutdown = Shutdown::new();
        let _stuck = shutdown.running();
        let _stuck_too = shutdown.running();
        assert_eq!(shutdown.drain(Duration::from_millis(100)).await, Err(2));
    }
}
