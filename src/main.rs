//! The `pulsar-gateway` binary: reads the configuration, checks the data
//! directory, binds every listener, opens the backend, serves until SIGTERM
//! or SIGINT, then shuts down gracefully.
//!
//! Start-up errors end the process with one line, `error: <what>`, and exit
//! status 1. A Pulsar cluster that cannot be reached is not one: the gateway
//! serves at once (`/readyz` answering 503) and keeps connecting with
//! backoff, logging each failure, until it connects or is stopped. A
//! cluster that answers but refuses the gateway (missing broker settings)
//! stops it.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use gateway_api::{
    AllowAll, Authenticator, Backend, BackendError, ByteBudget, Context, DefaultRouter, Metrics,
    Protocol, ProtocolHandler, Services,
};
use gateway_kafka::KafkaHandler;
use gateway_mqtt::MqttHandler;
use prometheus_client::registry::Registry;
use pulsar_gateway::admin::{self, AdminState};
use pulsar_gateway::auth::{JwtAuthenticator, KeyFileError};
use pulsar_gateway::backend::deferred::{Backoff, Deferred};
use pulsar_gateway::backend::embedded::log::RetentionPolicy;
use pulsar_gateway::backend::embedded::{EmbeddedBackend, EmbeddedConfig};
use pulsar_gateway::backend::metered::Metered;
use pulsar_gateway::backend::pulsar::{PulsarBackend, PulsarConfig};
use pulsar_gateway::config::{BackendKind, Config, ConfigError, ListenAddr};
use pulsar_gateway::listener::{Acceptor, Listener};
use pulsar_gateway::shutdown::{Shutdown, StopSignals};
use pulsar_gateway::websocket;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};
use tracing_subscriber::filter::{EnvFilter, LevelFilter};

/// jemalloc rather than the system's allocator: its size classes carry no
/// per-allocation header, which an idle connection's dozen small
/// allocations feel (measured with 5000 idle MQTT connections: 2.00 KiB
/// resident each, against 2.13 with glibc's malloc; mimalloc was
/// tried before and held 8.9).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// How long shutdown waits for the backend to flush and close.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// How long the async runtime may take to drop what is left at exit.
const RUNTIME_EXIT_TIMEOUT: Duration = Duration::from_millis(500);

/// Why the gateway could not start, or could not stop cleanly. Each message
/// is one line that names what to fix.
#[derive(Debug, thiserror::Error)]
enum StartupError {
    /// The command line, environment or config file is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A listener's address is taken or not ours to bind.
    #[error("cannot listen on {addr} ({listener}): {source}")]
    Bind {
        /// Which listener, so the operator knows which key to change.
        listener: &'static str,
        /// The address from the configuration.
        addr: SocketAddr,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The data directory cannot be created or written.
    #[error("data directory {path} is not usable: {source}")]
    DataDir {
        /// The configured directory.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A configured token key file is missing, empty or not a key:
    /// refuse rather than run open while the operator believes it is
    /// protected.
    #[error(transparent)]
    AuthKey(#[from] KeyFileError),
    /// The embedded store refused to open.
    #[error("cannot open the embedded store in {path}: {source}")]
    Backend {
        /// The data directory.
        path: PathBuf,
        /// The store's reason.
        source: BackendError,
    },
    /// The Pulsar cluster answered but cannot serve the gateway (a broker
    /// setting it needs is off); waiting would not change that.
    #[error("cannot use the Pulsar cluster at {url}: {source}")]
    Pulsar {
        /// The service URL.
        url: String,
        /// The backend's reason.
        source: BackendError,
    },
    /// The task connecting to Pulsar ended abnormally (a bug).
    #[error("the task connecting to Pulsar failed: {0}")]
    PulsarTask(String),
    /// SIGTERM/SIGINT handlers could not be installed.
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    /// The async runtime could not start (threads, epoll).
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    /// The HTTP server ended without being asked to.
    #[error("the HTTP server stopped unexpectedly: {0}")]
    HttpServer(String),
    /// A second stop signal arrived while connections were draining.
    #[error("{0} received during shutdown; exiting without waiting for connections")]
    Forced(&'static str),
    /// The backend failed to flush or close.
    #[error("closing the backend failed: {0}")]
    Close(BackendError),
    /// The backend did not finish closing in time.
    #[error("the backend did not close within {} s", CLOSE_TIMEOUT.as_secs())]
    CloseTimeout,
}

fn main() -> ExitCode {
    let config = match Config::load() {
        Ok(config) => config,
        Err(e) => return fail(&e.into()),
    };
    if let Err(e) = init_logging(&config.log_level) {
        return fail(&e);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return fail(&StartupError::Runtime(e)),
    };
    let result = runtime.block_on(run(config));
    // Connections that ignored shutdown, and blocking tasks, must not hold
    // the exit up.
    runtime.shutdown_timeout(RUNTIME_EXIT_TIMEOUT);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

/// Prints the one-line error and picks the exit status.
fn fail(e: &StartupError) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::FAILURE
}

/// One human-readable line per event on stderr. `RUST_LOG`, when set,
/// wins over `log_level`.
fn init_logging(log_level: &str) -> Result<(), StartupError> {
    let (key, filter) = match std::env::var("RUST_LOG") {
        Ok(v) if !v.trim().is_empty() => ("RUST_LOG", v),
        _ => ("log_level", log_level.to_owned()),
    };
    let invalid = |message: String| {
        StartupError::Config(ConfigError::Invalid {
            key: if key == "RUST_LOG" {
                "RUST_LOG"
            } else {
                "log_level"
            },
            message,
        })
    };
    // A bare word is a level; EnvFilter would take a typo for a target name
    // and silently log nothing.
    for directive in filter.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        if !directive.contains(['=', '[']) && LevelFilter::from_str(directive).is_err() {
            return Err(invalid(format!(
                "'{directive}' is not a level (error, warn, info, debug, trace, off)"
            )));
        }
    }
    let filter = EnvFilter::try_new(&filter).map_err(|e| invalid(e.to_string()))?;
    // Fails only if a subscriber is already installed, which is harmless.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
    Ok(())
}

/// One row of the wiring table: a protocol, the address its listener binds
/// (from the config), and its handler (`None`: not built yet).
type Wiring = (Protocol, ListenAddr, Option<Arc<dyn ProtocolHandler>>);

/// The protocol handlers of this build, with the address each listens on.
/// Adding a protocol is one line here: its address key and its handler
/// (`None` keeps the address in `Config` for the handler to come).
fn protocol_handlers(config: &Config) -> Result<Vec<Wiring>, StartupError> {
    let kafka = config.kafka.handler_config()?;
    let mqtt = config.mqtt.handler_config()?;
    Ok(vec![
        (
            Protocol::Kafka,
            config.kafka_addr,
            Some(Arc::new(KafkaHandler::new(kafka))),
        ),
        (
            Protocol::Mqtt,
            config.mqtt_addr,
            Some(Arc::new(MqttHandler::new(mqtt))),
        ),
        (Protocol::Amqp, config.amqp_addr, None),
    ])
}

/// Starts everything, serves until a stop signal, then shuts down.
async fn run(config: Config) -> Result<(), StartupError> {
    // Key files are read now: a bad one stops start-up before any socket
    // is bound.
    let auth = authenticator(&config)?;
    let namespace = config.default_namespace()?;
    // Files it names are read now: a missing one stops start-up at once.
    let pulsar = match config.backend {
        BackendKind::Pulsar => Some(config.pulsar_config()?),
        BackendKind::Embedded => {
            check_data_dir(&config.data_dir)?;
            None
        }
    };
    let mut signals = StopSignals::install().map_err(StartupError::Signals)?;
    let drain_timeout = config.drain_timeout.0;

    // Bind every socket before opening the store: a busy port fails fast
    // and leaves the data directory untouched.
    let http_socket = match config.http_addr.addr() {
        Some(addr) => Some(bind("http", addr).await?),
        None => None,
    };
    let wiring = protocol_handlers(&config)?;
    // MQTT over WebSocket is served by the MQTT listener's handler.
    let mqtt_handler = wiring
        .iter()
        .find(|(protocol, _, _)| *protocol == Protocol::Mqtt)
        .and_then(|(_, _, handler)| handler.clone());
    let mut protocol_sockets = Vec::new();
    for (protocol, addr, handler) in wiring {
        match (addr.addr(), handler) {
            (None, _) => info!("{protocol} listener is off"),
            (Some(addr), None) => {
                info!("{protocol}: no handler in this build yet; {addr} is not bound")
            }
            (Some(addr), Some(handler)) => {
                protocol_sockets.push((handler, bind(protocol.as_str(), addr).await?))
            }
        }
    }

    let mqtt_listens = protocol_sockets
        .iter()
        .any(|(handler, _)| handler.protocol() == Protocol::Mqtt);
    let mut registry = Registry::default();
    let metrics = Metrics::new(&mut registry);
    let shutdown = Shutdown::new();
    let location = match &pulsar {
        Some(pulsar) => format!("cluster: {}", pulsar.service_url),
        None => format!("data dir: {}", config.data_dir.display()),
    };
    let (store, connecting) = match pulsar {
        Some(pulsar) => {
            let (deferred, task) = connect_pulsar(pulsar, shutdown.token());
            (deferred, Some(task))
        }
        None => (open_embedded(&config).await?, None),
    };
    let backend: Arc<dyn Backend> = Arc::new(Metered::new(store, metrics.clone()));
    admin::register_build_info(&mut registry);
    let ctx = Context::new(Services {
        backend: backend.clone(),
        auth,
        router: Arc::new(DefaultRouter { namespace }),
        metrics,
        inbound: ByteBudget::new(config.max_inbound_bytes),
        shutdown: shutdown.token(),
    });

    for (handler, socket) in protocol_sockets {
        let protocol = handler.protocol();
        let listener = Listener::new(
            socket,
            handler,
            ctx.clone(),
            config.max_connections,
            shutdown.running(),
        );
        log_listening(protocol.as_str(), listener.local_addr(), "");
        tokio::spawn(listener.run());
    }

    let mut http_server = None;
    if let Some(socket) = http_socket {
        let acceptor = Acceptor::new(
            socket,
            "http",
            config.max_connections,
            None,
            shutdown.running(),
        );
        let local_addr = acceptor.local_addr();
        let mut app = admin::router(AdminState {
            backend: backend.clone(),
            registry: Arc::new(registry),
            shutdown: shutdown.token(),
        });
        let mut routes = "/healthz, /readyz, /metrics";
        if let (Some(mqtt), Ok(local)) = (mqtt_handler, &local_addr) {
            if !mqtt_listens {
                // Served over WebSocket alone, the handler's own work
                // (stored sessions' expiry, delayed wills) starts here.
                mqtt.start(*local, ctx.clone());
            }
            app = app.merge(websocket::mqtt_routes(mqtt, ctx.clone(), *local));
            routes = "/healthz, /readyz, /metrics, /mqtt";
        }
        log_listening("http", local_addr, &format!(" ({routes})"));
        http_server = Some(tokio::spawn(admin::serve(acceptor, app, shutdown.token())));
    }
    info!(
        "pulsar-gateway {} started (backend: {}, {location})",
        env!("CARGO_PKG_VERSION"),
        config.backend,
    );

    // Resolves only if connecting to the backend failed for good.
    let refused = async {
        match connecting {
            Some(task) => match task.await {
                Ok(Ok(())) => std::future::pending().await,
                Ok(Err(e)) => e,
                Err(e) => StartupError::PulsarTask(e.to_string()),
            },
            None => std::future::pending().await,
        }
    };
    let signal = tokio::select! {
        signal = signals.recv() => signal,
        refused = refused => {
            error!("{refused}");
            shutdown.drain(drain_timeout).await.ok();
            close_backend(&*backend).await.ok();
            return Err(refused);
        }
        ended = async {
            match http_server.as_mut() {
                Some(task) => task.await,
                None => std::future::pending().await,
            }
        } => {
            let why = match ended {
                Ok(Ok(())) => "it returned".to_owned(),
                Ok(Err(e)) => e.to_string(),
                Err(e) => e.to_string(),
            };
            error!("the HTTP server stopped unexpectedly: {why}");
            shutdown.drain(drain_timeout).await.ok();
            close_backend(&*backend).await.ok();
            return Err(StartupError::HttpServer(why));
        }
    };

    info!("{signal} received: no longer accepting connections, waiting for open ones to finish");
    let drained = tokio::select! {
        drained = shutdown.drain(drain_timeout) => drained,
        again = signals.recv() => {
            // Acknowledged messages are already durable; still try to leave
            // cursors flushed.
            close_backend(&*backend).await.ok();
            return Err(StartupError::Forced(again));
        }
    };
    match drained {
        Ok(()) => info!("all connections finished"),
        Err(left) => warn!(
            "{left} listeners or connections still open after {}; closing the store anyway",
            config.drain_timeout
        ),
    }
    close_backend(&*backend).await?;
    info!("stopped");
    Ok(())
}

/// Token authentication when a key file is configured (every client must
/// present a valid token), else none (every client is anonymous).
fn authenticator(config: &Config) -> Result<Arc<dyn Authenticator>, StartupError> {
    let secret = config.auth_token_secret_file.as_deref();
    let public = config.auth_token_public_key_file.as_deref();
    if secret.is_none() && public.is_none() {
        info!("client authentication is off (no auth_token_secret_file or auth_token_public_key_file)");
        return Ok(Arc::new(AllowAll));
    }
    let auth = JwtAuthenticator::from_files(secret, public)?;
    let keys: Vec<String> = [("secret key", secret), ("public key", public)]
        .into_iter()
        .filter_map(|(what, path)| path.map(|p| format!("{what} {}", p.display())))
        .collect();
    info!(
        "client authentication: JWT, verified with the {}",
        keys.join(" and the ")
    );
    Ok(Arc::new(auth))
}

/// Logs the one start-up line of a listener.
fn log_listening(name: &str, addr: std::io::Result<SocketAddr>, note: &str) {
    match addr {
        Ok(addr) => info!("{name} listening on {addr}{note}"),
        Err(e) => info!("{name} listening (address unknown: {e}){note}"),
    }
}

/// Binds a listener's socket.
async fn bind(listener: &'static str, addr: SocketAddr) -> Result<TcpListener, StartupError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartupError::Bind {
            listener,
            addr,
            source,
        })
}

/// Proves the data directory can be written: creates it, writes and
/// removes a probe file, so the error names the path, not a store internal.
fn check_data_dir(path: &Path) -> Result<(), StartupError> {
    let error = |source| StartupError::DataDir {
        path: path.to_owned(),
        source,
    };
    std::fs::create_dir_all(path).map_err(error)?;
    let probe = path.join(format!(".write-probe-{}", std::process::id()));
    std::fs::write(&probe, b"pulsar-gateway write probe\n").map_err(error)?;
    std::fs::remove_file(&probe).map_err(error)?;
    Ok(())
}

/// Opens the embedded store.
async fn open_embedded(config: &Config) -> Result<Arc<dyn Backend>, StartupError> {
    let settings = &config.embedded;
    let mut embedded = EmbeddedConfig::new(&config.data_dir);
    embedded.auto_create_topics = settings.auto_create_topics;
    embedded.log.segment_bytes = settings.segment_bytes;
    embedded.retention = RetentionPolicy {
        max_bytes: Some(settings.retention_max_bytes).filter(|&b| b > 0),
        max_age: Some(settings.retention_max_age.0).filter(|a| !a.is_zero()),
    };
    let backend =
        EmbeddedBackend::open(embedded)
            .await
            .map_err(|source| StartupError::Backend {
                path: config.data_dir.clone(),
                source,
            })?;
    Ok(Arc::new(backend))
}

/// A stand-in for the Pulsar backend, serving at once, and the task that
/// connects it: retried with backoff while the cluster is unreachable,
/// until `shutdown`. The task ends with an error only when the cluster
/// refuses the gateway for good.
fn connect_pulsar(
    pulsar: PulsarConfig,
    shutdown: CancellationToken,
) -> (Arc<dyn Backend>, JoinHandle<Result<(), StartupError>>) {
    let url = pulsar.service_url.clone();
    info!(
        "connecting to Pulsar at {url} (admin API {}{})",
        pulsar.admin_url,
        if pulsar.token.is_some() {
            ", with a token"
        } else {
            ""
        }
    );
    let deferred = Arc::new(Deferred::new(format!("connecting to Pulsar at {url}")));
    let task = {
        let deferred = deferred.clone();
        tokio::spawn(async move {
            let open = || {
                let pulsar = pulsar.clone();
                async move {
                    let backend = PulsarBackend::connect(pulsar).await?;
                    Ok(Arc::new(backend) as Arc<dyn Backend>)
                }
            };
            deferred
                .connect(open, Backoff::default(), &shutdown)
                .await
                .map_err(|source| StartupError::Pulsar {
                    url: url.clone(),
                    source,
                })?;
            if deferred.is_connected() {
                info!("connected to Pulsar at {url}");
            }
            Ok(())
        })
    };
    (deferred, task)
}

/// Flushes and closes the backend, bounded in time.
async fn close_backend(backend: &dyn Backend) -> Result<(), StartupError> {
    match tokio::time::timeout(CLOSE_TIMEOUT, backend.close()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(StartupError::Close(e)),
        Err(_) => Err(StartupError::CloseTimeout),
    }
}
