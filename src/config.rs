//! The gateway's configuration: one [`Config`] struct, filled from (lowest
//! to highest precedence) its defaults, a TOML file (`--config FILE`),
//! `PULSAR_GATEWAY_*` environment variables, and command-line flags.
//!
//! Every key is both a TOML key and a flag: `http_addr` in the file,
//! `--http-addr` on the command line, `PULSAR_GATEWAY_HTTP_ADDR` in the
//! environment. Keys of the `[embedded]` table keep their name
//! (`segment_bytes` = `--segment-bytes` = `PULSAR_GATEWAY_SEGMENT_BYTES`).
//! `gateway.example.toml` documents every key and holds the defaults; a
//! test keeps the two equal.
//!
//! Files the configuration names (the Pulsar token, trusted certificates)
//! are read at start-up by [`Config::pulsar_config`], not while loading, so
//! that `--help` and a config check never touch them.

use std::ffi::OsString;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, ValueEnum};
use gateway_api::topic::Namespace;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::backend::pulsar::{Compression, ProducerSettings, PulsarConfig};
use gateway_kafka::{GroupSettings, KafkaConfig};
use gateway_mqtt::MqttConfig;

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file named by `--config` could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The config file is not valid TOML for [`Config`].
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The TOML parser's explanation, with line and column.
        message: String,
    },
    /// A file named by a key (not the config file) could not be read.
    #[error("cannot read {key} {path}: {source}")]
    ReadFile {
        /// The key naming the file (as written in the TOML file).
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A value is well-formed but unusable.
    #[error("invalid {key}: {message}")]
    Invalid {
        /// The key (as written in the TOML file).
        key: &'static str,
        /// What is wrong with it.
        message: String,
    },
}

/// Which store serves the topics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// The embedded durable store under `data_dir`: no cluster needed.
    #[default]
    Embedded,
    /// An Apache Pulsar cluster at `pulsar_url`.
    Pulsar,
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendKind::Embedded => "embedded",
            BackendKind::Pulsar => "pulsar",
        })
    }
}

/// Where a listener listens: an `IP:PORT`, or `off` for no listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenAddr {
    /// The protocol is disabled.
    Off,
    /// Bind this address.
    On(SocketAddr),
}

impl ListenAddr {
    /// The address, unless the listener is off.
    pub fn addr(self) -> Option<SocketAddr> {
        match self {
            ListenAddr::Off => None,
            ListenAddr::On(a) => Some(a),
        }
    }
}

impl FromStr for ListenAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("off") {
            return Ok(ListenAddr::Off);
        }
        s.parse()
            .map(ListenAddr::On)
            .map_err(|_| format!("'{s}' is neither IP:PORT (e.g. 0.0.0.0:9092) nor 'off'"))
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Off => f.write_str("off"),
            ListenAddr::On(a) => a.fmt(f),
        }
    }
}

impl Serialize for ListenAddr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ListenAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A span of time written with a unit: `5ms`, `90s`, `30m`, `12h`, `7d`;
/// `0` means "no limit" where the key says so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(
    /// The span; zero where a key reads it as "no limit".
    pub Duration,
);

impl FromStr for HumanDuration {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s == "0" {
            return Ok(HumanDuration(Duration::ZERO));
        }
        let split = s
            .find(|c: char| !c.is_ascii_digit())
            .ok_or_else(|| format!("'{s}' has no unit (use ms, s, m, h or d, e.g. 7d)"))?;
        let (digits, unit) = s.split_at(split);
        let n: u64 = digits
            .parse()
            .map_err(|_| format!("'{s}' does not start with a number"))?;
        let millis_per = match unit {
            "ms" => 1,
            "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => {
                return Err(format!(
                    "'{s}': unknown unit '{unit}' (use ms, s, m, h or d)"
                ))
            }
        };
        n.checked_mul(millis_per)
            .map(|millis| HumanDuration(Duration::from_millis(millis)))
            .ok_or_else(|| format!("'{s}' is too long"))
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.0.as_secs();
        if self.0.subsec_nanos() != 0 {
            return write!(f, "{}ms", self.0.as_millis());
        }
        if secs == 0 {
            return f.write_str("0");
        }
        for (unit, per) in [("d", 86_400), ("h", 3600), ("m", 60)] {
            if secs.is_multiple_of(per) {
                return write!(f, "{}{unit}", secs / per);
            }
        }
        write!(f, "{secs}s")
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The defaults, shared by [`Config::default`] and the `--help` text so the
/// two cannot disagree.
mod defaults {
    use super::*;

    pub fn data_dir() -> PathBuf {
        PathBuf::from("./data")
    }
    pub fn kafka_addr() -> ListenAddr {
        ListenAddr::On(SocketAddr::from(([0, 0, 0, 0], 9092)))
    }
    pub fn mqtt_addr() -> ListenAddr {
        ListenAddr::On(SocketAddr::from(([0, 0, 0, 0], 1883)))
    }
    pub fn amqp_addr() -> ListenAddr {
        ListenAddr::On(SocketAddr::from(([0, 0, 0, 0], 5672)))
    }
    pub fn http_addr() -> ListenAddr {
        ListenAddr::On(SocketAddr::from(([0, 0, 0, 0], 8080)))
    }
    pub fn tenant() -> String {
        "public".into()
    }
    pub fn namespace() -> String {
        "default".into()
    }
    pub const MAX_CONNECTIONS: usize = 10_000;
    /// 256 MiB: a few of Kafka's largest requests (100 MiB) at once, or
    /// thousands of ordinary ones.
    pub const MAX_INBOUND_BYTES: usize = 256 << 20;
    pub fn log_level() -> String {
        "info".into()
    }
    /// With the backend's close, shutdown stays under 10 s.
    pub fn drain_timeout() -> HumanDuration {
        HumanDuration(Duration::from_secs(8))
    }
    pub const AUTO_CREATE_TOPICS: bool = true;
    /// 64 MiB, the embedded store's own default: small enough that
    /// retention frees space in useful steps on an edge box, large enough to
    /// keep the file count low.
    pub const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
    pub const RETENTION_MAX_BYTES: u64 = 0;
    /// Kafka's default (`log.retention.hours=168`).
    pub fn retention_max_age() -> HumanDuration {
        HumanDuration(Duration::from_secs(7 * 86_400))
    }
}

/// Everything the gateway can be told. Field names are the TOML keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Which store serves the topics.
    pub backend: BackendKind,
    /// Where the embedded store keeps its files (and where start-up proves
    /// it can write).
    pub data_dir: PathBuf,
    /// The Pulsar cluster's service URL, for `backend = "pulsar"`:
    /// `pulsar://host:6650`, or `pulsar+ssl://host:6651` for TLS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pulsar_url: Option<String>,
    /// The cluster's admin REST API (topic creation, the start-up check of
    /// broker settings). Unset: derived from `pulsar_url` with Pulsar's
    /// default ports, see [`derive_pulsar_admin_url`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pulsar_admin_url: Option<String>,
    /// A file holding the JWT the gateway presents to Pulsar on both APIs,
    /// read once at start-up. Unset: no authentication toward Pulsar.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pulsar_token_file: Option<PathBuf>,
    /// PEM CA certificates trusted on TLS connections to Pulsar
    /// (`pulsar+ssl://`, `https://`), on top of the built-in public roots;
    /// for a cluster whose certificate a private CA signed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pulsar_tls_trust_certs_file: Option<PathBuf>,
    /// Kafka clients connect here (`off`: no Kafka listener).
    pub kafka_addr: ListenAddr,
    /// MQTT clients connect here (`off`: no MQTT listener).
    pub mqtt_addr: ListenAddr,
    /// AMQP 0-9-1 clients connect here (`off`: no AMQP listener).
    pub amqp_addr: ListenAddr,
    /// The HTTP server: `/metrics`, `/healthz`, `/readyz`, later the
    /// WebSocket API (`off`: no HTTP server).
    pub http_addr: ListenAddr,
    /// HMAC (HS256/384/512) secret key verifying clients' JWTs, read at start-up
    /// (see `crate::auth`); auth is off when neither key file is set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_token_secret_file: Option<PathBuf>,
    /// RSA or ECDSA (RS256/384/512, ES256/384) public key (PEM or DER)
    /// verifying clients' JWTs, read
    /// at start-up.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_token_public_key_file: Option<PathBuf>,
    /// The Pulsar tenant that short topic names belong to.
    pub tenant: String,
    /// The Pulsar namespace (within `tenant`) that short topic names belong
    /// to.
    pub namespace: String,
    /// The most connections each listener holds open at once; further
    /// clients wait in the kernel's accept queue.
    pub max_connections: usize,
    /// The most bytes of client requests held in memory at once, across
    /// every connection: a handler reserves a request's size before it
    /// reads it, so past this bound clients wait (TCP backpressure) rather
    /// than the gateway's memory growing with its connections.
    pub max_inbound_bytes: usize,
    /// Log filter when `RUST_LOG` is unset: a level (`info`) or
    /// tracing-subscriber directives (`info,pulsar_gateway=debug`).
    pub log_level: String,
    /// On SIGTERM/SIGINT, how long to wait for open connections to finish
    /// before closing the store anyway; bounds the time to exit.
    pub drain_timeout: HumanDuration,
    /// Settings of the embedded store.
    pub embedded: EmbeddedSettings,
    /// How producers toward Pulsar behave (`backend = "pulsar"`).
    pub pulsar_producers: PulsarProducerSettings,
    /// How the Kafka handler behaves.
    pub kafka: KafkaSettings,
    /// The MQTT handler's settings.
    pub mqtt: MqttSettings,
}

/// The MQTT handler (`[mqtt]` in the TOML file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MqttSettings {
    /// The largest MQTT packet accepted, in bytes (MQTT 5's Maximum Packet
    /// Size the gateway announces); a larger one closes its connection
    /// before it is read.
    pub max_packet_size: u32,
    /// How long a new connection may take to send its CONNECT.
    pub connect_timeout: HumanDuration,
    /// Publishes of one connection being stored at once (MQTT 5's Receive
    /// Maximum), and deliveries awaiting one client's acknowledgement.
    pub max_inflight: u16,
    /// Filters one connection may subscribe.
    pub max_subscriptions: usize,
    /// The longest a session outlives its connection (3.1.1 persistent
    /// sessions included).
    pub max_session_expiry: HumanDuration,
}

impl Default for MqttSettings {
    fn default() -> MqttSettings {
        let d = MqttConfig::default();
        MqttSettings {
            max_packet_size: d.max_packet_size,
            connect_timeout: HumanDuration(d.connect_timeout),
            max_inflight: d.max_inflight,
            max_subscriptions: d.max_subscriptions,
            max_session_expiry: HumanDuration(Duration::from_secs(
                d.max_session_expiry_secs.into(),
            )),
        }
    }
}

impl MqttSettings {
    /// The handler's settings; refuses limits that leave nothing to serve.
    pub fn handler_config(&self) -> Result<MqttConfig, ConfigError> {
        if self.max_packet_size < 1024 {
            return Err(ConfigError::Invalid {
                key: "mqtt.max_packet_size",
                message: format!("{} is below the minimum of 1024", self.max_packet_size),
            });
        }
        if self.max_inflight == 0 {
            return Err(ConfigError::Invalid {
                key: "mqtt.max_inflight",
                message: "must be at least 1".into(),
            });
        }
        Ok(MqttConfig {
            max_packet_size: self.max_packet_size,
            connect_timeout: self.connect_timeout.0,
            max_inflight: self.max_inflight,
            max_subscriptions: self.max_subscriptions,
            max_session_expiry_secs: u32::try_from(self.max_session_expiry.0.as_secs())
                .unwrap_or(u32::MAX),
            ..MqttConfig::default()
        })
    }
}

/// The Kafka handler (`[kafka]` in the TOML file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaSettings {
    /// `host:port` Metadata and FindCoordinator give clients for the
    /// broker (Kafka's `advertised.listeners`); unset: the address each
    /// client connected to. Set it behind NAT or a load balancer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advertised_addr: Option<String>,
    /// The Kafka cluster this gateway is a broker of (Metadata's cluster
    /// id): gateways on one backend with the same id list each other as
    /// brokers and share the coordination of consumer groups.
    pub cluster_id: String,
    /// Partitions of a topic created because a client used it (Kafka's
    /// `num.partitions`); 1 creates a topic without partitions.
    pub default_partitions: u32,
    /// The most partitions a Kafka client may give a topic (CreateTopics,
    /// CreatePartitions): each partition costs the backend (a log and an
    /// I/O thread on the embedded store), and a client must not be able to
    /// ask for millions.
    pub max_partitions: u32,
    /// The longest request a Kafka client may send, in bytes (Kafka's
    /// `socket.request.max.bytes`): a longer one closes its connection
    /// before anything of its size is read. Also the most a produced
    /// record batch may decompress to, and the topics' `max.message.bytes`
    /// (DescribeConfigs).
    pub max_request_bytes: usize,
    /// How long a new consumer group waits for more members before its
    /// first generation (`group.initial.rebalance.delay.ms`).
    pub group_initial_rebalance_delay: HumanDuration,
    /// The shortest session timeout a consumer may ask for.
    pub group_min_session_timeout: HumanDuration,
    /// The longest session timeout a consumer may ask for.
    pub group_max_session_timeout: HumanDuration,
}

impl Default for KafkaSettings {
    fn default() -> KafkaSettings {
        let d = KafkaConfig::default();
        KafkaSettings {
            advertised_addr: None,
            cluster_id: d.cluster_id,
            default_partitions: d.default_partitions,
            max_partitions: d.max_partitions,
            max_request_bytes: d.max_frame_bytes,
            group_initial_rebalance_delay: HumanDuration(d.groups.initial_rebalance_delay),
            group_min_session_timeout: HumanDuration(d.groups.min_session_timeout),
            group_max_session_timeout: HumanDuration(d.groups.max_session_timeout),
        }
    }
}

impl KafkaSettings {
    /// The handler's settings; refuses an advertised address that is not
    /// `host:port`, and a request limit no request header fits in or no
    /// frame length (an int32) can reach.
    pub fn handler_config(&self) -> Result<KafkaConfig, ConfigError> {
        let advertised = match &self.advertised_addr {
            None => None,
            Some(addr) => {
                let invalid = || ConfigError::Invalid {
                    key: "kafka.advertised_addr",
                    message: format!("\"{addr}\" is not host:port"),
                };
                let (host, port) = addr.rsplit_once(':').ok_or_else(invalid)?;
                let port: u16 = port.parse().map_err(|_| invalid())?;
                let host = host.trim_start_matches('[').trim_end_matches(']');
                if host.is_empty() || port == 0 {
                    return Err(invalid());
                }
                Some((host.to_owned(), port))
            }
        };
        if self.cluster_id.is_empty() || self.cluster_id.contains('/') {
            return Err(ConfigError::Invalid {
                key: "kafka.cluster_id",
                message: format!("\"{}\" is empty or has a '/'", self.cluster_id),
            });
        }
        if !(1024..=i32::MAX as usize).contains(&self.max_request_bytes) {
            return Err(ConfigError::Invalid {
                key: "kafka.max_request_bytes",
                message: format!(
                    "{} is outside 1024..={} (a Kafka frame's length is an int32)",
                    self.max_request_bytes,
                    i32::MAX
                ),
            });
        }
        let d = KafkaConfig::default();
        Ok(KafkaConfig {
            max_frame_bytes: self.max_request_bytes,
            advertised,
            cluster_id: self.cluster_id.clone(),
            default_partitions: self.default_partitions,
            max_partitions: self.max_partitions,
            groups: GroupSettings {
                initial_rebalance_delay: self.group_initial_rebalance_delay.0,
                min_session_timeout: self.group_min_session_timeout.0,
                max_session_timeout: self.group_max_session_timeout.0,
                ..d.groups
            },
            ..d
        })
    }
}

/// Producers toward Pulsar (`[pulsar_producers]` in the TOML file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PulsarProducerSettings {
    /// A partition's producer is closed after this long without a publish
    /// (`0`: kept open).
    pub idle_timeout: HumanDuration,
    /// Bytes published and not yet persisted by Pulsar, across the gateway;
    /// further publishes wait (back-pressure).
    pub max_in_flight_bytes: usize,
    /// Compression toward Pulsar: none, lz4, zlib, zstd or snappy.
    pub compression: Compression,
    /// Publishes waiting for a partition's producer are sent together as
    /// batched entries of at most this many messages (1: no batching).
    pub batch_max_messages: u32,
    /// A batched entry is closed once it holds this many bytes.
    pub batch_max_bytes: usize,
    /// Read and ignored, so that files written for earlier versions still
    /// load: batches no longer wait for company (see `batch_max_messages`).
    #[serde(skip_serializing)]
    pub batch_max_delay: Option<HumanDuration>,
}

impl Default for PulsarProducerSettings {
    fn default() -> PulsarProducerSettings {
        let d = ProducerSettings::default();
        PulsarProducerSettings {
            idle_timeout: HumanDuration(d.idle_timeout),
            max_in_flight_bytes: d.max_in_flight_bytes,
            compression: d.compression,
            batch_max_messages: d.batch_max_messages,
            batch_max_bytes: d.batch_max_bytes,
            batch_max_delay: None,
        }
    }
}

impl PulsarProducerSettings {
    /// The backend's settings.
    pub fn settings(&self) -> ProducerSettings {
        ProducerSettings {
            idle_timeout: self.idle_timeout.0,
            max_in_flight_bytes: self.max_in_flight_bytes,
            compression: self.compression,
            batch_max_messages: self.batch_max_messages,
            batch_max_bytes: self.batch_max_bytes,
        }
    }
}

/// Settings of the embedded store (`[embedded]` in the TOML file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EmbeddedSettings {
    /// Create a topic when a client first publishes to or subscribes to it,
    /// as Kafka and MQTT clients expect.
    pub auto_create_topics: bool,
    /// A partition's log rolls to a new segment file at this size; retention
    /// deletes whole segments.
    pub segment_bytes: u64,
    /// Oldest segments are deleted once a partition holds more than this
    /// (0: no size limit).
    pub retention_max_bytes: u64,
    /// Segments whose newest message is older than this are deleted (`0`:
    /// kept forever).
    pub retention_max_age: HumanDuration,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            backend: BackendKind::default(),
            data_dir: defaults::data_dir(),
            pulsar_url: None,
            pulsar_admin_url: None,
            pulsar_token_file: None,
            pulsar_tls_trust_certs_file: None,
            kafka_addr: defaults::kafka_addr(),
            mqtt_addr: defaults::mqtt_addr(),
            amqp_addr: defaults::amqp_addr(),
            http_addr: defaults::http_addr(),
            auth_token_secret_file: None,
            auth_token_public_key_file: None,
            tenant: defaults::tenant(),
            namespace: defaults::namespace(),
            max_connections: defaults::MAX_CONNECTIONS,
            max_inbound_bytes: defaults::MAX_INBOUND_BYTES,
            log_level: defaults::log_level(),
            drain_timeout: defaults::drain_timeout(),
            embedded: EmbeddedSettings::default(),
            pulsar_producers: PulsarProducerSettings::default(),
            kafka: KafkaSettings::default(),
            mqtt: MqttSettings::default(),
        }
    }
}

impl Default for EmbeddedSettings {
    fn default() -> EmbeddedSettings {
        EmbeddedSettings {
            auto_create_topics: defaults::AUTO_CREATE_TOPICS,
            segment_bytes: defaults::SEGMENT_BYTES,
            retention_max_bytes: defaults::RETENTION_MAX_BYTES,
            retention_max_age: defaults::retention_max_age(),
        }
    }
}

/// The command line. Each flag also reads `PULSAR_GATEWAY_<FLAG>`; a flag or
/// variable that is given overrides the config file, one that is not leaves
/// the file's value (or the default) alone.
#[derive(Debug, Parser)]
#[command(
    name = "pulsar-gateway",
    version,
    about,
    max_term_width = 100,
    args_override_self = true
)]
struct Cli {
    /// TOML config file (see gateway.example.toml).
    #[arg(long, env = "PULSAR_GATEWAY_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Where topics are stored: the embedded store, or the Pulsar cluster at --pulsar-url.
    #[arg(long, env = "PULSAR_GATEWAY_BACKEND", value_enum, default_value_t)]
    backend: BackendKind,
    /// Directory of the embedded store.
    #[arg(long, env = "PULSAR_GATEWAY_DATA_DIR", value_name = "DIR", default_value_os_t = defaults::data_dir())]
    data_dir: PathBuf,
    /// Pulsar service URL, for --backend pulsar: pulsar://host:6650, or pulsar+ssl://host:6651 (TLS).
    #[arg(long, env = "PULSAR_GATEWAY_PULSAR_URL", value_name = "URL")]
    pulsar_url: Option<String>,
    /// Pulsar admin REST API [default: from --pulsar-url, pulsar://h:6650 -> http://h:8080, pulsar+ssl://h:6651 -> https://h:8443].
    #[arg(long, env = "PULSAR_GATEWAY_PULSAR_ADMIN_URL", value_name = "URL")]
    pulsar_admin_url: Option<String>,
    /// File holding the JWT presented to Pulsar (read at start-up).
    #[arg(long, env = "PULSAR_GATEWAY_PULSAR_TOKEN_FILE", value_name = "FILE")]
    pulsar_token_file: Option<PathBuf>,
    /// PEM CA certificates trusted for TLS to Pulsar, besides the built-in public roots.
    #[arg(
        long,
        env = "PULSAR_GATEWAY_PULSAR_TLS_TRUST_CERTS_FILE",
        value_name = "FILE"
    )]
    pulsar_tls_trust_certs_file: Option<PathBuf>,
    /// Kafka listener address, or `off`.
    #[arg(long, env = "PULSAR_GATEWAY_KAFKA_ADDR", value_name = "ADDR", default_value_t = defaults::kafka_addr())]
    kafka_addr: ListenAddr,
    /// MQTT listener address, or `off`.
    #[arg(long, env = "PULSAR_GATEWAY_MQTT_ADDR", value_name = "ADDR", default_value_t = defaults::mqtt_addr())]
    mqtt_addr: ListenAddr,
    /// AMQP 0-9-1 listener address, or `off`.
    #[arg(long, env = "PULSAR_GATEWAY_AMQP_ADDR", value_name = "ADDR", default_value_t = defaults::amqp_addr())]
    amqp_addr: ListenAddr,
    /// HTTP address (/metrics, /healthz, /readyz), or `off`.
    #[arg(long, env = "PULSAR_GATEWAY_HTTP_ADDR", value_name = "ADDR", default_value_t = defaults::http_addr())]
    http_addr: ListenAddr,
    /// Turns client authentication on: HMAC (HS256/384/512) secret key file for
    /// client JWTs (raw bytes, or `data:;base64,...`).
    #[arg(
        long,
        env = "PULSAR_GATEWAY_AUTH_TOKEN_SECRET_FILE",
        value_name = "FILE"
    )]
    auth_token_secret_file: Option<PathBuf>,
    /// Turns client authentication on: RSA or ECDSA (RS256/384/512,
    /// ES256/384) public key file (PEM or DER) for client JWTs.
    #[arg(
        long,
        env = "PULSAR_GATEWAY_AUTH_TOKEN_PUBLIC_KEY_FILE",
        value_name = "FILE"
    )]
    auth_token_public_key_file: Option<PathBuf>,
    /// Pulsar tenant of short topic names.
    #[arg(long, env = "PULSAR_GATEWAY_TENANT", default_value_t = defaults::tenant())]
    tenant: String,
    /// Pulsar namespace of short topic names.
    #[arg(long, env = "PULSAR_GATEWAY_NAMESPACE", default_value_t = defaults::namespace())]
    namespace: String,
    /// Most open connections per listener.
    #[arg(long, env = "PULSAR_GATEWAY_MAX_CONNECTIONS", value_name = "N", default_value_t = defaults::MAX_CONNECTIONS)]
    max_connections: usize,
    /// Most bytes of client requests held in memory at once, all connections together.
    #[arg(long, env = "PULSAR_GATEWAY_MAX_INBOUND_BYTES", value_name = "BYTES", default_value_t = defaults::MAX_INBOUND_BYTES)]
    max_inbound_bytes: usize,
    /// Log filter used when RUST_LOG is unset.
    #[arg(long, env = "PULSAR_GATEWAY_LOG_LEVEL", value_name = "FILTER", default_value_t = defaults::log_level())]
    log_level: String,
    /// How long shutdown waits for open connections, e.g. 8s.
    #[arg(long, env = "PULSAR_GATEWAY_DRAIN_TIMEOUT", value_name = "DURATION", default_value_t = defaults::drain_timeout())]
    drain_timeout: HumanDuration,
    /// Embedded store: create topics on first use.
    #[arg(long, env = "PULSAR_GATEWAY_AUTO_CREATE_TOPICS", value_name = "BOOL", action = clap::ArgAction::Set, default_value_t = defaults::AUTO_CREATE_TOPICS)]
    auto_create_topics: bool,
    /// Embedded store: segment file size in bytes.
    #[arg(long, env = "PULSAR_GATEWAY_SEGMENT_BYTES", value_name = "BYTES", default_value_t = defaults::SEGMENT_BYTES)]
    segment_bytes: u64,
    /// Embedded store: bytes kept per partition (0: unlimited).
    #[arg(long, env = "PULSAR_GATEWAY_RETENTION_MAX_BYTES", value_name = "BYTES", default_value_t = defaults::RETENTION_MAX_BYTES)]
    retention_max_bytes: u64,
    /// Embedded store: age of messages kept, e.g. 7d, 12h (0: forever).
    #[arg(long, env = "PULSAR_GATEWAY_RETENTION_MAX_AGE", value_name = "AGE", default_value_t = defaults::retention_max_age())]
    retention_max_age: HumanDuration,
    /// Pulsar: close a partition's producer after this long unused (0: never).
    #[arg(long, env = "PULSAR_GATEWAY_PULSAR_PRODUCER_IDLE_TIMEOUT", value_name = "DURATION", default_value_t = PulsarProducerSettings::default().idle_timeout)]
    pulsar_producer_idle_timeout: HumanDuration,
    /// Pulsar: bytes of publishes awaiting Pulsar across the gateway; more wait.
    #[arg(long, env = "PULSAR_GATEWAY_PULSAR_MAX_IN_FLIGHT_BYTES", value_name = "BYTES", default_value_t = PulsarProducerSettings::default().max_in_flight_bytes)]
    pulsar_max_in_flight_bytes: usize,
    /// Pulsar: compression of what is sent.
    #[arg(
        long,
        env = "PULSAR_GATEWAY_PULSAR_COMPRESSION",
        value_enum,
        default_value_t
    )]
    pulsar_compression: Compression,
    /// Pulsar: publishes waiting for a partition's producer go as batched entries of at most N messages (1: no batching).
    #[arg(long, env = "PULSAR_GATEWAY_PULSAR_BATCH_MAX_MESSAGES", value_name = "N", default_value_t = PulsarProducerSettings::default().batch_max_messages)]
    pulsar_batch_max_messages: u32,
    /// Pulsar: a batched entry is closed once it holds this many bytes.
    #[arg(long, env = "PULSAR_GATEWAY_PULSAR_BATCH_MAX_BYTES", value_name = "BYTES", default_value_t = PulsarProducerSettings::default().batch_max_bytes)]
    pulsar_batch_max_bytes: usize,
    /// Kafka: host:port given to clients for the broker (default: the address they connected to).
    #[arg(
        long,
        env = "PULSAR_GATEWAY_KAFKA_ADVERTISED_ADDR",
        value_name = "HOST:PORT"
    )]
    kafka_advertised_addr: Option<String>,
    /// Kafka: the cluster this gateway is a broker of; gateways on one backend with the same id share consumer groups.
    #[arg(long, env = "PULSAR_GATEWAY_KAFKA_CLUSTER_ID", value_name = "ID", default_value_t = KafkaSettings::default().cluster_id)]
    kafka_cluster_id: String,
    /// Kafka: partitions of an auto-created topic (1: not partitioned).
    #[arg(long, env = "PULSAR_GATEWAY_KAFKA_DEFAULT_PARTITIONS", value_name = "N", default_value_t = KafkaSettings::default().default_partitions)]
    kafka_default_partitions: u32,
    /// Kafka: the most partitions a client may give a topic.
    #[arg(long, env = "PULSAR_GATEWAY_KAFKA_MAX_PARTITIONS", value_name = "N", default_value_t = KafkaSettings::default().max_partitions)]
    kafka_max_partitions: u32,
    /// Kafka: the longest request accepted, in bytes; a longer one closes its connection.
    #[arg(long, env = "PULSAR_GATEWAY_KAFKA_MAX_REQUEST_BYTES", value_name = "BYTES", default_value_t = KafkaSettings::default().max_request_bytes)]
    kafka_max_request_bytes: usize,
    /// Kafka: how long a new consumer group waits for more members, e.g. 3s.
    #[arg(long, env = "PULSAR_GATEWAY_KAFKA_GROUP_INITIAL_REBALANCE_DELAY", value_name = "DURATION", default_value_t = KafkaSettings::default().group_initial_rebalance_delay)]
    kafka_group_initial_rebalance_delay: HumanDuration,
    /// Kafka: shortest consumer session timeout accepted.
    #[arg(long, env = "PULSAR_GATEWAY_KAFKA_GROUP_MIN_SESSION_TIMEOUT", value_name = "DURATION", default_value_t = KafkaSettings::default().group_min_session_timeout)]
    kafka_group_min_session_timeout: HumanDuration,
    /// Kafka: longest consumer session timeout accepted.
    #[arg(long, env = "PULSAR_GATEWAY_KAFKA_GROUP_MAX_SESSION_TIMEOUT", value_name = "DURATION", default_value_t = KafkaSettings::default().group_max_session_timeout)]
    kafka_group_max_session_timeout: HumanDuration,
    /// MQTT: the largest packet accepted, in bytes.
    #[arg(long, env = "PULSAR_GATEWAY_MQTT_MAX_PACKET_SIZE", value_name = "BYTES", default_value_t = MqttSettings::default().max_packet_size)]
    mqtt_max_packet_size: u32,
    /// MQTT: how long a new connection may take to send its CONNECT, e.g. 10s.
    #[arg(long, env = "PULSAR_GATEWAY_MQTT_CONNECT_TIMEOUT", value_name = "DURATION", default_value_t = MqttSettings::default().connect_timeout)]
    mqtt_connect_timeout: HumanDuration,
    /// MQTT: publishes (and deliveries) of one connection in flight at once.
    #[arg(long, env = "PULSAR_GATEWAY_MQTT_MAX_INFLIGHT", value_name = "N", default_value_t = MqttSettings::default().max_inflight)]
    mqtt_max_inflight: u16,
    /// MQTT: filters one connection may subscribe.
    #[arg(long, env = "PULSAR_GATEWAY_MQTT_MAX_SUBSCRIPTIONS", value_name = "N", default_value_t = MqttSettings::default().max_subscriptions)]
    mqtt_max_subscriptions: usize,
    /// MQTT: the longest a session outlives its connection, e.g. 7d.
    #[arg(long, env = "PULSAR_GATEWAY_MQTT_MAX_SESSION_EXPIRY", value_name = "DURATION", default_value_t = MqttSettings::default().max_session_expiry)]
    mqtt_max_session_expiry: HumanDuration,
}

/// Overwrites `target` with the argument `id` if it came from the command
/// line or the environment (not from its default).
fn overlay<T: Clone + Send + Sync + 'static>(m: &ArgMatches, id: &str, target: &mut T) {
    let given = matches!(
        m.value_source(id),
        Some(ValueSource::CommandLine | ValueSource::EnvVariable)
    );
    if given {
        if let Some(v) = m.get_one::<T>(id) {
            *target = v.clone();
        }
    }
}

/// Like [`overlay`], for keys without a default.
fn overlay_opt<T: Clone + Send + Sync + 'static>(m: &ArgMatches, id: &str, target: &mut Option<T>) {
    if let Some(v) = m.get_one::<T>(id) {
        *target = Some(v.clone());
    }
}

impl Config {
    /// Loads the configuration from the process's arguments and environment
    /// (and the file they name). Prints usage and exits on a bad command
    /// line, as command-line tools do.
    pub fn load() -> Result<Config, ConfigError> {
        Config::load_from(std::env::args_os())
    }

    /// Like [`Config::load`] with explicit arguments (the first one is the
    /// program name). Environment variables are still read.
    pub fn load_from<I, T>(args: I) -> Result<Config, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let matches = Cli::command().get_matches_from(args);
        // The derive and the matches come from the same definition, so this
        // only fails on a programming error; report it instead of panicking.
        let cli = Cli::from_arg_matches(&matches).map_err(|e| ConfigError::Invalid {
            key: "command line",
            message: e.to_string(),
        })?;
        let mut config = match &cli.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        config.apply_args(&matches);
        config.validate()?;
        Ok(config)
    }

    /// Reads a TOML file; keys it leaves out keep their defaults.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::from_toml(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.message().to_owned() + &line_of(&text, e.span()),
        })
    }

    /// Parses TOML text.
    pub fn from_toml(text: &str) -> Result<Config, toml::de::Error> {
        toml::from_str(text)
    }

    fn apply_args(&mut self, m: &ArgMatches) {
        overlay(m, "backend", &mut self.backend);
        overlay(m, "data_dir", &mut self.data_dir);
        overlay_opt(m, "pulsar_url", &mut self.pulsar_url);
        overlay_opt(m, "pulsar_admin_url", &mut self.pulsar_admin_url);
        overlay_opt(m, "pulsar_token_file", &mut self.pulsar_token_file);
        overlay_opt(
            m,
            "pulsar_tls_trust_certs_file",
            &mut self.pulsar_tls_trust_certs_file,
        );
        overlay(m, "kafka_addr", &mut self.kafka_addr);
        overlay(m, "mqtt_addr", &mut self.mqtt_addr);
        overlay(m, "amqp_addr", &mut self.amqp_addr);
        overlay(m, "http_addr", &mut self.http_addr);
        overlay_opt(
            m,
            "auth_token_secret_file",
            &mut self.auth_token_secret_file,
        );
        overlay_opt(
            m,
            "auth_token_public_key_file",
            &mut self.auth_token_public_key_file,
        );
        overlay(m, "tenant", &mut self.tenant);
        overlay(m, "namespace", &mut self.namespace);
        overlay(m, "max_connections", &mut self.max_connections);
        overlay(m, "max_inbound_bytes", &mut self.max_inbound_bytes);
        overlay(m, "log_level", &mut self.log_level);
        overlay(m, "drain_timeout", &mut self.drain_timeout);
        let e = &mut self.embedded;
        overlay(m, "auto_create_topics", &mut e.auto_create_topics);
        overlay(m, "segment_bytes", &mut e.segment_bytes);
        overlay(m, "retention_max_bytes", &mut e.retention_max_bytes);
        overlay(m, "retention_max_age", &mut e.retention_max_age);
        let p = &mut self.pulsar_producers;
        overlay(m, "pulsar_producer_idle_timeout", &mut p.idle_timeout);
        overlay(m, "pulsar_max_in_flight_bytes", &mut p.max_in_flight_bytes);
        overlay(m, "pulsar_compression", &mut p.compression);
        overlay(m, "pulsar_batch_max_messages", &mut p.batch_max_messages);
        overlay(m, "pulsar_batch_max_bytes", &mut p.batch_max_bytes);
        let k = &mut self.kafka;
        overlay_opt(m, "kafka_advertised_addr", &mut k.advertised_addr);
        overlay(m, "kafka_cluster_id", &mut k.cluster_id);
        overlay(m, "kafka_default_partitions", &mut k.default_partitions);
        overlay(m, "kafka_max_partitions", &mut k.max_partitions);
        overlay(m, "kafka_max_request_bytes", &mut k.max_request_bytes);
        overlay(
            m,
            "kafka_group_initial_rebalance_delay",
            &mut k.group_initial_rebalance_delay,
        );
        overlay(
            m,
            "kafka_group_min_session_timeout",
            &mut k.group_min_session_timeout,
        );
        overlay(
            m,
            "kafka_group_max_session_timeout",
            &mut k.group_max_session_timeout,
        );
        let q = &mut self.mqtt;
        overlay(m, "mqtt_max_packet_size", &mut q.max_packet_size);
        overlay(m, "mqtt_connect_timeout", &mut q.connect_timeout);
        overlay(m, "mqtt_max_inflight", &mut q.max_inflight);
        overlay(m, "mqtt_max_subscriptions", &mut q.max_subscriptions);
        overlay(m, "mqtt_max_session_expiry", &mut q.max_session_expiry);
    }

    /// Checks what types alone do not.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.default_namespace()?;
        if self.backend == BackendKind::Pulsar {
            self.pulsar_urls()?;
        }
        if self.max_connections == 0 {
            return Err(ConfigError::Invalid {
                key: "max_connections",
                message: "must be at least 1".into(),
            });
        }
        if self.max_inbound_bytes < 64 * 1024 {
            return Err(ConfigError::Invalid {
                key: "max_inbound_bytes",
                message: format!("{} is below the minimum of 65536", self.max_inbound_bytes),
            });
        }
        self.kafka.handler_config()?;
        self.mqtt.handler_config()?;
        if self.kafka.default_partitions == 0 {
            return Err(ConfigError::Invalid {
                key: "kafka.default_partitions",
                message: "must be at least 1 (1: not partitioned)".into(),
            });
        }
        if self.kafka.max_partitions < self.kafka.default_partitions {
            return Err(ConfigError::Invalid {
                key: "kafka.max_partitions",
                message: "is below kafka.default_partitions".into(),
            });
        }
        if self.kafka.group_min_session_timeout.0 > self.kafka.group_max_session_timeout.0 {
            return Err(ConfigError::Invalid {
                key: "kafka.group_min_session_timeout",
                message: "is longer than kafka.group_max_session_timeout".into(),
            });
        }
        let p = &self.pulsar_producers;
        if p.batch_max_messages == 0 {
            return Err(ConfigError::Invalid {
                key: "pulsar_producers.batch_max_messages",
                message: "must be at least 1 (1: no batching)".into(),
            });
        }
        if p.max_in_flight_bytes < 1024 {
            return Err(ConfigError::Invalid {
                key: "pulsar_producers.max_in_flight_bytes",
                message: format!("{} is below the minimum of 1024", p.max_in_flight_bytes),
            });
        }
        if self.embedded.segment_bytes < 1024 {
            return Err(ConfigError::Invalid {
                key: "embedded.segment_bytes",
                message: format!(
                    "{} is below the minimum of 1024",
                    self.embedded.segment_bytes
                ),
            });
        }
        Ok(())
    }

    /// The namespace short topic names resolve into.
    pub fn default_namespace(&self) -> Result<Namespace, ConfigError> {
        Namespace::new(&self.tenant, &self.namespace).map_err(|e| ConfigError::Invalid {
            key: "tenant/namespace",
            message: e.to_string(),
        })
    }

    /// The Pulsar service URL (with its port made explicit) and admin URL
    /// (`pulsar_admin_url`, or derived from the service URL).
    pub fn pulsar_urls(&self) -> Result<(String, String), ConfigError> {
        let url = self.pulsar_url.as_deref().ok_or(ConfigError::Invalid {
            key: "pulsar_url",
            message: "backend = \"pulsar\" needs the cluster's service URL, \
                      e.g. --pulsar-url pulsar://localhost:6650"
                .into(),
        })?;
        let service = ServiceUrl::parse(url).map_err(|message| ConfigError::Invalid {
            key: "pulsar_url",
            message,
        })?;
        let admin = match self.pulsar_admin_url.as_deref().map(str::trim) {
            None => service.admin_url(),
            Some(admin) => {
                let scheme_ok = ["http://", "https://"].iter().any(|scheme| {
                    admin.len() > scheme.len()
                        && admin
                            .get(..scheme.len())
                            .is_some_and(|s| s.eq_ignore_ascii_case(scheme))
                });
                if !scheme_ok {
                    return Err(ConfigError::Invalid {
                        key: "pulsar_admin_url",
                        message: format!(
                            "'{admin}' is not an http:// or https:// URL (e.g. http://localhost:8080)"
                        ),
                    });
                }
                admin.trim_end_matches('/').to_owned()
            }
        };
        Ok((service.to_string(), admin))
    }

    /// Everything the Pulsar backend needs, reading the files the
    /// configuration names (token, trusted certificates). Errors name the
    /// key and the file. The token itself appears in no error and no log.
    pub fn pulsar_config(&self) -> Result<PulsarConfig, ConfigError> {
        let (service_url, admin_url) = self.pulsar_urls()?;
        let token = match &self.pulsar_token_file {
            None => None,
            Some(path) => Some(read_token(path)?),
        };
        let tls_trust_certs = match &self.pulsar_tls_trust_certs_file {
            None => None,
            Some(path) => Some(read_trusted_certs(path)?),
        };
        Ok(PulsarConfig {
            service_url,
            admin_url,
            token,
            namespace: self.default_namespace()?,
            tls_trust_certs,
            producers: self.pulsar_producers.settings(),
        })
    }
}

/// The Pulsar admin URL that Pulsar's default ports put next to a service
/// URL: the same host, `http://host:8080` for `pulsar://` and
/// `https://host:8443` for `pulsar+ssl://`, whatever the service port.
/// A cluster on other ports needs `pulsar_admin_url`.
pub fn derive_pulsar_admin_url(service_url: &str) -> Result<String, String> {
    ServiceUrl::parse(service_url).map(|url| url.admin_url())
}

/// A Pulsar service URL, checked: `pulsar[+ssl]://host[:port][/]`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ServiceUrl {
    /// `pulsar+ssl://`: TLS on both APIs.
    tls: bool,
    /// A name, an IPv4 address, or an IPv6 address in brackets.
    host: String,
    /// The port given, or the scheme's default (6650, TLS 6651).
    port: u16,
}

impl ServiceUrl {
    fn parse(url: &str) -> Result<ServiceUrl, String> {
        let url = url.trim();
        let scheme_end = url.find("://").unwrap_or(0);
        let (tls, rest) = match url[..scheme_end].to_ascii_lowercase().as_str() {
            "pulsar" => (false, &url[scheme_end + 3..]),
            "pulsar+ssl" => (true, &url[scheme_end + 3..]),
            _ => {
                return Err(format!(
                    "'{url}' is not a pulsar:// or pulsar+ssl:// URL (e.g. pulsar://localhost:6650)"
                ))
            }
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.contains(',') {
            return Err(format!(
                "'{url}' lists several hosts; give one address (a DNS name or load balancer in front of the brokers)"
            ));
        }
        if authority.contains(['/', '@', '?', '#']) {
            return Err(format!(
                "'{url}' must be scheme://host:port, without path, user or query"
            ));
        }
        // `[v6]:port`, `[v6]`, `host:port`, `host`.
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) if !authority.ends_with(']') => {
                let port = port
                    .parse::<u16>()
                    .ok()
                    .filter(|&p| p > 0)
                    .ok_or_else(|| format!("'{url}': '{port}' is not a port number"))?;
                (host, port)
            }
            _ => (authority, if tls { 6651 } else { 6650 }),
        };
        let bracketed = host.starts_with('[') && host.ends_with(']');
        if host.is_empty() || (host.contains(':') && !bracketed) {
            return Err(format!("'{url}' has no usable host"));
        }
        Ok(ServiceUrl {
            tls,
            host: host.to_owned(),
            port,
        })
    }

    fn admin_url(&self) -> String {
        match self.tls {
            false => format!("http://{}:8080", self.host),
            true => format!("https://{}:8443", self.host),
        }
    }
}

impl fmt::Display for ServiceUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "pulsar+ssl" } else { "pulsar" };
        write!(f, "{scheme}://{}:{}", self.host, self.port)
    }
}

/// The JWT in `path`, without surrounding whitespace (files usually end
/// with a newline).
fn read_token(path: &Path) -> Result<String, ConfigError> {
    const KEY: &str = "pulsar_token_file";
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
        key: KEY,
        path: path.to_owned(),
        source,
    })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(ConfigError::Invalid {
            key: KEY,
            message: format!("{} is empty", path.display()),
        });
    }
    if token.contains(char::is_whitespace) {
        return Err(ConfigError::Invalid {
            key: KEY,
            message: format!(
                "{} holds more than one word; it must hold the JWT alone",
                path.display()
            ),
        });
    }
    Ok(token.to_owned())
}

/// The PEM text of `path`, once it is known to hold at least one
/// certificate and nothing unreadable.
fn read_trusted_certs(path: &Path) -> Result<Vec<u8>, ConfigError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    const KEY: &str = "pulsar_tls_trust_certs_file";
    let pem = std::fs::read(path).map_err(|source| ConfigError::ReadFile {
        key: KEY,
        path: path.to_owned(),
        source,
    })?;
    let invalid = |message: String| ConfigError::Invalid {
        key: KEY,
        message: format!("{}: {message}", path.display()),
    };
    let mut count = 0;
    for cert in CertificateDer::pem_slice_iter(&pem) {
        cert.map_err(|e| invalid(format!("not a PEM certificate bundle ({e})")))?;
        count += 1;
    }
    if count == 0 {
        return Err(invalid("holds no PEM certificate".into()));
    }
    Ok(pem)
}

/// " (line N)" for an error span, to keep TOML errors on one line.
fn line_of(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    match span {
        Some(span) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            format!(" (line {line})")
        }
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../gateway.example.toml");

    /// `key = value`, as opposed to prose that happens to hold ` = `.
    fn is_key_line(line: &str) -> bool {
        line.split_once(" = ").is_some_and(|(key, _)| {
            !key.is_empty() && key.chars().all(|c| c.is_ascii_lowercase() || c == '_')
        })
    }

    #[test]
    fn the_example_file_holds_the_defaults() {
        let parsed = Config::from_toml(EXAMPLE).unwrap();
        assert_eq!(parsed, Config::default());
    }

    /// The commented-out keys of the example (`# key = value`) are valid
    /// too, so uncommenting one never surprises.
    #[test]
    fn the_example_files_commented_keys_parse() {
        let uncommented: String = EXAMPLE
            .lines()
            .map(|l| match l.strip_prefix("# ") {
                Some(rest) if is_key_line(rest) => rest,
                _ => l,
            })
            .collect::<Vec<_>>()
            .join("\n");
        let parsed = Config::from_toml(&uncommented).unwrap();
        assert!(parsed.pulsar_url.is_some());
        assert!(parsed.pulsar_admin_url.is_some());
        assert!(parsed.pulsar_token_file.is_some());
        assert!(parsed.pulsar_tls_trust_certs_file.is_some());
        assert!(parsed.auth_token_secret_file.is_some());
        assert!(parsed.auth_token_public_key_file.is_some());
    }

    /// Every key of `Config` appears in the example file.
    #[test]
    fn the_example_file_documents_every_key() {
        let full = Config {
            pulsar_url: Some("x".into()),
            pulsar_admin_url: Some("x".into()),
            pulsar_token_file: Some("x".into()),
            pulsar_tls_trust_certs_file: Some("x".into()),
            auth_token_secret_file: Some("x".into()),
            auth_token_public_key_file: Some("x".into()),
            ..Config::default()
        };
        let table: toml::Table = toml::from_str(&toml::to_string(&full).unwrap()).unwrap();
        let mut keys = Vec::new();
        for (k, v) in &table {
            match v.as_table() {
                Some(sub) => {
                    keys.push(format!("[{k}]"));
                    keys.extend(sub.keys().cloned());
                }
                None => keys.push(k.clone()),
            }
        }
        for key in keys {
            let documented = EXAMPLE.lines().any(|l| {
                let l = l.strip_prefix("# ").filter(|l| is_key_line(l)).unwrap_or(l);
                l.starts_with(&format!("{key} = ")) || l == key
            });
            assert!(documented, "{key} is missing from gateway.example.toml");
        }
    }

    /// Whether a variable the command line reads is set in the test's
    /// environment (then tests of defaults and precedence cannot hold).
    /// Other `PULSAR_GATEWAY_*` variables, such as the test cluster's URLs,
    /// do not count.
    fn config_env_is_set() -> bool {
        Cli::command()
            .get_arguments()
            .filter_map(|arg| arg.get_env())
            .any(|name| std::env::var_os(name).is_some())
    }

    #[test]
    fn no_arguments_means_defaults() {
        // Only meaningful when no PULSAR_GATEWAY_* variable is set.
        if config_env_is_set() {
            return;
        }
        assert_eq!(
            Config::load_from(["pulsar-gateway"]).unwrap(),
            Config::default()
        );
    }

    #[test]
    fn flags_override_the_file_and_the_file_overrides_defaults() {
        if config_env_is_set() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("gw.toml");
        std::fs::write(
            &file,
            "http_addr = \"127.0.0.1:1\"\nmqtt_addr = \"off\"\n[embedded]\nretention_max_age = \"12h\"\n",
        )
        .unwrap();
        let config = Config::load_from([
            "pulsar-gateway".as_ref(),
            "--config".as_ref(),
            file.as_os_str(),
            "--http-addr".as_ref(),
            "127.0.0.1:2".as_ref(),
            "--auto-create-topics".as_ref(),
            "false".as_ref(),
        ])
        .unwrap();
        assert_eq!(config.http_addr, "127.0.0.1:2".parse().unwrap());
        assert_eq!(config.mqtt_addr, ListenAddr::Off);
        assert_eq!(config.kafka_addr, defaults::kafka_addr());
        assert_eq!(
            config.embedded.retention_max_age,
            HumanDuration(Duration::from_secs(12 * 3600))
        );
        assert!(!config.embedded.auto_create_topics);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused_with_their_line() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("gw.toml");
        std::fs::write(&file, "backend = \"embedded\"\nhttp_adr = \"off\"\n").unwrap();
        let err = Config::from_file(&file).unwrap_err().to_string();
        assert!(err.contains("http_adr") && err.contains("line 2"), "{err}");
        assert!(!err.contains('\n'), "{err}");

        std::fs::write(&file, "kafka_addr = \"localhost\"\n").unwrap();
        let err = Config::from_file(&file).unwrap_err().to_string();
        assert!(err.contains("neither IP:PORT"), "{err}");
    }

    #[test]
    fn listen_addresses_and_durations_round_trip() {
        for s in ["off", "0.0.0.0:9092", "[::1]:80"] {
            assert_eq!(s.parse::<ListenAddr>().unwrap().to_string(), s);
        }
        assert_eq!("OFF".parse::<ListenAddr>().unwrap(), ListenAddr::Off);
        for s in ["0", "7d", "12h", "30m", "90s", "5ms", "1500ms"] {
            assert_eq!(s.parse::<HumanDuration>().unwrap().to_string(), s);
        }
        assert_eq!(
            "168h".parse::<HumanDuration>().unwrap(),
            defaults::retention_max_age()
        );
        assert!("7".parse::<HumanDuration>().is_err());
        assert!("7w".parse::<HumanDuration>().is_err());
        assert!("99999999999999999999d".parse::<HumanDuration>().is_err());
    }

    #[test]
    fn bad_namespaces_and_limits_are_refused() {
        let c = Config {
            tenant: "a/b".into(),
            ..Config::default()
        };
        assert!(c.validate().is_err());
        let c = Config {
            max_connections: 0,
            ..Config::default()
        };
        assert!(c.validate().is_err());
    }

    const TEST_CA: &str = include_str!("../tests/fixtures/test-ca.pem");

    fn pulsar(url: &str) -> Config {
        Config {
            backend: BackendKind::Pulsar,
            pulsar_url: Some(url.into()),
            ..Config::default()
        }
    }

    #[test]
    fn the_admin_url_is_derived_from_the_service_url_with_pulsars_default_ports() {
        for (service, admin) in [
            ("pulsar://h:6650", "http://h:8080"),
            ("pulsar+ssl://h:6651", "https://h:8443"),
            (
                "pulsar://broker.example.com",
                "http://broker.example.com:8080",
            ),
            (
                "pulsar+ssl://broker.example.com/",
                "https://broker.example.com:8443",
            ),
            ("PULSAR://10.0.0.1:16650", "http://10.0.0.1:8080"),
            ("pulsar://[::1]:6650", "http://[::1]:8080"),
            ("pulsar+ssl://[::1]", "https://[::1]:8443"),
        ] {
            assert_eq!(
                derive_pulsar_admin_url(service).as_deref(),
                Ok(admin),
                "{service}"
            );
        }
        for bad in [
            "http://h:8080",
            "h:6650",
            "pulsar://",
            "pulsar://:6650",
            "pulsar://h:port",
            "pulsar://h:0",
            "pulsar://h:6650/path",
            "pulsar://h1:6650,h2:6650",
            "pulsar://::1:6650",
        ] {
            assert!(derive_pulsar_admin_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_service_url_gets_its_default_port_and_an_explicit_admin_url_wins() {
        assert_eq!(
            pulsar("pulsar+ssl://h").pulsar_urls().unwrap(),
            ("pulsar+ssl://h:6651".into(), "https://h:8443".into())
        );
        assert_eq!(
            pulsar(" pulsar://h ").pulsar_urls().unwrap(),
            ("pulsar://h:6650".into(), "http://h:8080".into())
        );
        let c = Config {
            pulsar_admin_url: Some("https://admin.example.com:443/".into()),
            ..pulsar("pulsar+ssl://h:6651")
        };
        assert_eq!(
            c.pulsar_urls().unwrap(),
            (
                "pulsar+ssl://h:6651".into(),
                "https://admin.example.com:443".into()
            )
        );
        let c = Config {
            pulsar_admin_url: Some("h:8080".into()),
            ..pulsar("pulsar://h:6650")
        };
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("pulsar_admin_url"), "{err}");
    }

    #[test]
    fn the_pulsar_backend_needs_a_valid_pulsar_url_and_the_embedded_one_does_not() {
        let c = Config {
            backend: BackendKind::Pulsar,
            ..Config::default()
        };
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("pulsar_url"), "{err}");
        let err = pulsar("http://h:8080").validate().unwrap_err().to_string();
        assert!(
            err.contains("pulsar_url") && err.contains("pulsar://"),
            "{err}"
        );
        pulsar("pulsar://h:6650").validate().unwrap();
        // Unused by the embedded store, so not checked.
        Config {
            pulsar_url: Some("nonsense".into()),
            ..Config::default()
        }
        .validate()
        .unwrap();
    }

    #[test]
    fn pulsar_config_reads_the_token_trimmed_and_the_trusted_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("gw.jwt");
        std::fs::write(&token, "\n  header.claims.signature \n").unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, TEST_CA).unwrap();
        let c = Config {
            pulsar_token_file: Some(token),
            pulsar_tls_trust_certs_file: Some(ca),
            tenant: "acme".into(),
            namespace: "iot".into(),
            ..pulsar("pulsar+ssl://h")
        };
        let p = c.pulsar_config().unwrap();
        assert_eq!(p.service_url, "pulsar+ssl://h:6651");
        assert_eq!(p.admin_url, "https://h:8443");
        assert_eq!(p.token.as_deref(), Some("header.claims.signature"));
        assert_eq!(p.tls_trust_certs.as_deref(), Some(TEST_CA.as_bytes()));
        assert_eq!(p.namespace, Namespace::new("acme", "iot").unwrap());
        // Debug output, which may end up in a log, hides the token.
        assert!(!format!("{p:?}").contains("signature"), "{p:?}");

        let p = pulsar("pulsar://h").pulsar_config().unwrap();
        assert_eq!((p.token, p.tls_trust_certs), (None, None));
    }

    /// `c` is refused with an error naming `key`, `file` and `wanted`.
    fn assert_refused(c: &Config, key: &str, file: &Path, wanted: &str) {
        let err = c.pulsar_config().unwrap_err().to_string();
        assert!(err.contains(&file.display().to_string()), "{err}");
        assert!(err.contains(key), "{err}");
        assert!(err.contains(wanted), "{err}");
    }

    #[test]
    fn unreadable_or_unusable_pulsar_files_are_refused_naming_key_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        let empty = dir.path().join("empty");
        std::fs::write(&empty, " \n").unwrap();
        let two_words = dir.path().join("two-words");
        std::fs::write(&two_words, "Bearer abc.def.ghi\n").unwrap();
        for (file, wanted) in [
            (&missing, "cannot read pulsar_token_file"),
            (&empty, "is empty"),
            (&two_words, "more than one word"),
        ] {
            let c = Config {
                pulsar_token_file: Some(file.clone()),
                ..pulsar("pulsar://h")
            };
            assert_refused(&c, "pulsar_token_file", file, wanted);
        }

        let not_pem = dir.path().join("not.pem");
        std::fs::write(&not_pem, "just text\n").unwrap();
        let broken = dir.path().join("broken.pem");
        std::fs::write(
            &broken,
            "-----BEGIN CERTIFICATE-----\n@@@\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        for (file, wanted) in [
            (&missing, "cannot read"),
            (&not_pem, "no PEM certificate"),
            (&broken, "not a PEM certificate bundle"),
        ] {
            let c = Config {
                pulsar_tls_trust_certs_file: Some(file.clone()),
                ..pulsar("pulsar+ssl://h")
            };
            assert_refused(&c, "pulsar_tls_trust_certs_file", file, wanted);
        }
    }

    #[test]
    fn pulsar_keys_come_from_flags_and_the_file() {
        if config_env_is_set() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("gw.toml");
        std::fs::write(
            &file,
            "backend = \"pulsar\"\npulsar_url = \"pulsar+ssl://file:6651\"\n\
             pulsar_token_file = \"/file/token\"\n\
             [pulsar_producers]\nbatch_max_messages = 100\nbatch_max_delay = \"1ms\"\n",
        )
        .unwrap();
        let config = Config::load_from([
            "pulsar-gateway".as_ref(),
            "--config".as_ref(),
            file.as_os_str(),
            "--pulsar-admin-url".as_ref(),
            "https://flag:8443".as_ref(),
            "--pulsar-tls-trust-certs-file".as_ref(),
            "/flag/ca.pem".as_ref(),
            "--pulsar-compression".as_ref(),
            "zstd".as_ref(),
            "--pulsar-batch-max-bytes".as_ref(),
            "4096".as_ref(),
        ])
        .unwrap();
        let p = config.pulsar_producers.settings();
        assert_eq!(p.compression, Compression::Zstd);
        assert_eq!(p.batch_max_bytes, 4096);
        assert_eq!(p.batch_max_messages, 100, "from the file");
        assert_eq!(p.idle_timeout, Duration::from_secs(300), "the default");
        assert_eq!(config.backend, BackendKind::Pulsar);
        assert_eq!(config.pulsar_url.as_deref(), Some("pulsar+ssl://file:6651"));
        assert_eq!(
            config.pulsar_admin_url.as_deref(),
            Some("https://flag:8443")
        );
        assert_eq!(config.pulsar_token_file, Some(PathBuf::from("/file/token")));
        assert_eq!(
            config.pulsar_tls_trust_certs_file,
            Some(PathBuf::from("/flag/ca.pem"))
        );
    }

    #[test]
    fn kafka_settings_reach_the_handler_and_a_bad_advertised_address_is_refused() {
        let config = Config::load_from([
            "pulsar-gateway",
            "--kafka-advertised-addr",
            "kafka.example.com:19092",
            "--kafka-default-partitions",
            "3",
            "--kafka-group-initial-rebalance-delay",
            "0",
        ])
        .unwrap();
        let kafka = config.kafka.handler_config().unwrap();
        assert_eq!(kafka.advertised, Some(("kafka.example.com".into(), 19092)));
        assert_eq!(kafka.max_frame_bytes, 100 << 20, "Kafka's default");
        assert_eq!(kafka.default_partitions, 3);
        assert_eq!(kafka.groups.initial_rebalance_delay, Duration::ZERO);
        assert_eq!(kafka.groups.min_session_timeout, Duration::from_secs(6));
        for bad in ["no-port", "host:0", ":9092", "host:99999"] {
            let err = Config::load_from(["pulsar-gateway", "--kafka-advertised-addr", bad])
                .unwrap_err()
                .to_string();
            assert!(err.contains("kafka.advertised_addr"), "{bad}: {err}");
        }
        assert_eq!(kafka.cluster_id, "pulsar-gateway");
        let named = Config::load_from(["pulsar-gateway", "--kafka-cluster-id", "east"]).unwrap();
        assert_eq!(named.kafka.handler_config().unwrap().cluster_id, "east");
        for bad in ["", "a/b"] {
            let err = Config::load_from(["pulsar-gateway", "--kafka-cluster-id", bad])
                .and_then(|c| c.kafka.handler_config().map(drop))
                .unwrap_err()
                .to_string();
            assert!(err.contains("kafka.cluster_id"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn the_kafka_request_limit_comes_from_the_flag_or_the_file_within_bounds() {
        let limited =
            Config::load_from(["pulsar-gateway", "--kafka-max-request-bytes", "1048576"]).unwrap();
        let kafka = limited.kafka.handler_config().unwrap();
        assert_eq!(kafka.max_frame_bytes, 1 << 20);

        let from_file = Config::from_toml("[kafka]\nmax_request_bytes = 2097152\n").unwrap();
        let kafka = from_file.kafka.handler_config().unwrap();
        assert_eq!(kafka.max_frame_bytes, 2 << 20);

        for bad in ["1023", "2147483648"] {
            let err = Config::load_from(["pulsar-gateway", "--kafka-max-request-bytes", bad])
                .unwrap_err()
                .to_string();
            assert!(err.contains("kafka.max_request_bytes"), "{bad}: {err}");
        }
        for fine in ["1024", "2147483647"] {
            Config::load_from(["pulsar-gateway", "--kafka-max-request-bytes", fine]).unwrap();
        }
    }
}
