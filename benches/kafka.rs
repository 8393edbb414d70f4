//! Kafka clients against four targets on this machine, side by side in one
//! run, printed as absolute figures and ratios:
//!
//! - `kafka`: a real Apache Kafka broker (KRaft, single node, from Maven
//!   Central `org.apache.kafka:kafka_2.13`, see `benches/kafka/pom.xml`);
//! - `gw-embedded`: the gateway's Kafka handler on its embedded store;
//! - `gw-pulsar`: the gateway's Kafka handler on a Pulsar standalone
//!   (`deploy/pulsar-standalone.sh`);
//! - `pulsar`: a Pulsar client used directly on that same standalone.
//!
//! Columns of the table:
//!
//! - `produce rec/s`, `p50 ms`, `p99 ms`: one producer sends
//!   `BENCH_RECORDS` records of `BENCH_RECORD_BYTES` (default 1 KiB) to a
//!   fresh one-partition topic as fast as it can, acks=all. Kafka targets
//!   get librdkafka (confluent-kafka from the test virtualenv, driven by
//!   `benches/kafka/librdkafka_perf.py`), the same build for all three;
//!   `pulsar` gets `pulsar-perf produce` (Java pulsar-client) shipped with
//!   the standalone. Both batch for 1 ms (`linger.ms=1`, pulsar-perf's
//!   default window), pulsar-perf into entries of the gateway's size (up
//!   to 1000 messages and 128 KiB, the Java client's defaults, where
//!   pulsar-perf's own are 4 MiB: the broker's work, and so its rate on
//!   these two cores, goes by entries, and consuming the same topic costs
//!   the broker the same through the gateway or pulsar-perf), and keep at
//!   most 1000 records in flight
//!   (`queue.buffering.max.messages`, pulsar-perf's `-o 1000`), so their
//!   latencies, measured from the send call to its acknowledgement, are
//!   queueing at the same depth. Topics exist before the clock starts.
//!   librdkafka's clock runs from its first send to its last
//!   acknowledgement; pulsar-perf's rate here is taken from its log, from
//!   its producer's creation to its last send (its own summary counts from
//!   the JVM's start), so it may be up to 1000 records (0.5% at 200000)
//!   high.
//! - `consume rec/s`: those records are read back from the earliest
//!   offset: librdkafka in a consumer group, timed from its first record
//!   to its last (the group join left out), or `pulsar-perf consume` (an
//!   exclusive subscription from the earliest, receiver queue 1000,
//!   acknowledging each message; its rate includes subscribing). On
//!   Pulsar both read both topics, the gateway's and pulsar-perf's, each
//!   its own first: the figure is records over the time of both reads
//!   (the four reads are printed too), since the broker serves a topic
//!   written or read more recently from warmer caches.
//! - A second table runs the Java Kafka client on the three Kafka targets:
//!   `ProducerPerformance` and `ConsumerPerformance` from
//!   `org.apache.kafka:kafka-tools` (the code behind
//!   `kafka-producer-perf-test`), the same records to another topic, its
//!   fetch rate (without the group join) for consume. Its producer is
//!   idempotent (the Java default) and keeps at most five requests of
//!   `batch.size` in flight, see below. On this machine's two cores the
//!   client's own CPU counts: the Java producer spends about 25 µs of CPU
//!   per 1 KiB record (librdkafka about 6), taken from the broker and the
//!   gateway beside it, which is why the gateway-on-Pulsar ratio is read
//!   from the first table, whose clients cost the two sides alike.
//! - `1-at-a-time p50/p99 ms`: low load, one record in flight: a record is
//!   sent, its acknowledgement awaited, then the next, `BENCH_LOW_LOAD_RECORDS`
//!   times after 100 unmeasured ones. Measured in this process with Rust
//!   clients (rskafka, which asks acks=all, for the Kafka targets; the
//!   `pulsar` crate without batching for `pulsar`), to the microsecond.
//!   The latency the gateway adds over Pulsar is `gw-pulsar - pulsar`;
//!   it includes the difference between the two client libraries.
//!
//! Ratios printed under the table: gw-embedded / kafka, gw-pulsar / pulsar
//! for throughput, and the added latency.
//!
//! Caveats, also printed with the figures:
//!
//! - Durability differs. The gateway's embedded store fsyncs before it
//!   acknowledges; Kafka by default does not (it leaves flushing to the OS
//!   and relies on replication), and the standalone's bookie does not sync
//!   its journal (`journalSyncData=false`). `BENCH_KAFKA_FSYNC=1` makes the
//!   broker flush every message (`log.flush.interval.messages=1`), the
//!   like-for-like comparison with the embedded store.
//! - Everything shares this machine's cores (2 here, shared with other
//!   work): brokers, gateway and the client JVMs. Absolute figures drift;
//!   the ratios, measured minutes apart, are the result.
//! - Each target runs once per row; the row's runs follow each other.
//!   Every broker is freshly started and warmed first: each target gets
//!   `BENCH_WARMUP_RECORDS` records produced to another topic and consumed
//!   back by the same clients. The JVMs (Kafka, Pulsar) run
//!   `-Xmx1g -XX:+UseSerialGC` with the full JIT.
//!
//! The bench starts everything it needs and stops it at the end, also when
//! a step fails: a Pulsar standalone on ports 16750/18181
//! (`BENCH_PULSAR_PORT`, `BENCH_PULSAR_WEB_PORT`), the Kafka broker and
//! the two gateways on free ports, data on the scratch disk (`BENCH_DIR`,
//! see `common`). It needs java 17+, mvn (first run: resolves the broker
//! and tools into `~/.cache/pulsar-gateway/kafka-<version>/libs`) and
//! curl.
//!
//! ```text
//! cargo bench --bench kafka
//! BENCH_RECORDS=200000 BENCH_KAFKA_FSYNC=1 cargo bench --bench kafka
//! ```
//!
//! A Kafka producer keeps at most five requests in flight
//! (`max.in.flight.requests.per.connection`) of at most `batch.size` bytes
//! per partition each, so with acks=all its rate on one partition is at
//! most 5 x `batch.size` per round trip to durable storage. At Kafka's
//! default 16 KiB that is about 80 records of 1 KiB, where pulsar-perf
//! keeps 1000 in flight: the two clients would not be compared at the same
//! depth, and the Kafka figure would measure the client's window rather
//! than the server. So `batch.size` is one fifth of the in-flight records
//! (200 KiB at 1 KiB records) for all three Kafka targets, and
//! `buffer.memory` holds one more batch than those five. `BENCH_BATCH_BYTES`
//! sets `batch.size` (e.g. 16384 to see the client's default window; the
//! note under the table then says the depths differ).
//!
//! The runs are long enough to leave the JVMs' warm-up behind (200000
//! records produced and consumed first, then 200000): the broker's JIT
//! shows in the first runs on a fresh standalone (by hand, the same
//! producer through the gateway: 37k records/s on the first run, 48k on
//! the second, the broker's CPU per record down by a third).
//!
//! Knobs: `BENCH_RECORDS` (default 200000), `BENCH_RECORD_BYTES` (1024),
//! `BENCH_BATCH_BYTES` (1000 / 5 records),
//! `BENCH_WARMUP_RECORDS` (200000), `BENCH_LOW_LOAD_RECORDS` (1000),
//! `BENCH_KAFKA_FSYNC` (0).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::env_number;
use common::process::{free_port, http_ok, tail, Proc};
use pulsar_gateway::backend::pulsar::ProducerSettings;
use regex::Regex;

/// The Kafka version of `benches/kafka/pom.xml`; names the cache directory.
const KAFKA_VERSION: &str = "3.9.1";
/// Records in flight in a throughput run (see the header).
const IN_FLIGHT: u64 = 1000;
/// Kafka's `max.in.flight.requests.per.connection` (its default).
const MAX_IN_FLIGHT_REQUESTS: u64 = 5;
/// Unmeasured records before a low-load run.
const LOW_LOAD_WARMUP: usize = 100;
/// How long one client tool run may take.
const TOOL_TIMEOUT: Duration = Duration::from_secs(300);
/// JVM flags of both brokers: same heap, same collector, full JIT.
const BROKER_JVM: [&str; 3] = ["-Xms512m", "-Xmx1g", "-XX:+UseSerialGC"];
/// A fixed KRaft cluster id (any 16 bytes in URL-safe base64).
const KAFKA_CLUSTER_ID: &str = "cHVsc2FyLWdhdGV3YXkhIQ";

/// The run's settings, from the environment.
struct Knobs {
    /// Records per produce run, read back by the consume run.
    records: u64,
    /// Bytes per record value.
    record_bytes: u64,
    /// Records sent to each target before it is measured.
    warmup_records: u64,
    /// Measured records of a one-at-a-time run.
    low_load_records: usize,
    /// Whether the Kafka broker flushes every message to disk.
    kafka_fsync: bool,
    /// The Kafka producer's `batch.size`: by default a fifth of the
    /// records in flight, so that its five requests hold them all.
    batch_bytes: u64,
}

impl Knobs {
    fn from_env() -> Knobs {
        let record_bytes = env_number("BENCH_RECORD_BYTES").unwrap_or(1024);
        Knobs {
            records: env_number("BENCH_RECORDS").unwrap_or(200_000),
            record_bytes,
            warmup_records: env_number("BENCH_WARMUP_RECORDS").unwrap_or(200_000),
            low_load_records: env_number("BENCH_LOW_LOAD_RECORDS").unwrap_or(1_000) as usize,
            kafka_fsync: env_number("BENCH_KAFKA_FSYNC").unwrap_or(0) != 0,
            batch_bytes: env_number("BENCH_BATCH_BYTES")
                .unwrap_or(IN_FLIGHT / MAX_IN_FLIGHT_REQUESTS * record_bytes),
        }
    }
}

/// The Pulsar standalone started with `deploy/pulsar-standalone.sh`,
/// stopped with it when dropped.
struct Standalone {
    /// Its run directory (conf, data, logs, pid file).
    run_dir: PathBuf,
    /// Binary protocol URL.
    url: String,
    /// Admin API URL.
    web_url: String,
}

impl Standalone {
    fn start(run_dir: PathBuf) -> Standalone {
        let port = env_number("BENCH_PULSAR_PORT").unwrap_or(16750);
        let web_port = env_number("BENCH_PULSAR_WEB_PORT").unwrap_or(18181);
        let status = Command::new(script())
            .args(["start", "--run-dir"])
            .arg(&run_dir)
            .env("PULSAR_PORT", port.to_string())
            .env("PULSAR_WEB_PORT", web_port.to_string())
            // The script's default stops the JIT at C1 for a quick start;
            // a benchmark wants the JIT the Kafka broker gets.
            .env("PULSAR_GC", "-XX:+UseSerialGC")
            .env("PULSAR_MEM", "-Xms512m -Xmx1g -XX:MaxDirectMemorySize=1g")
            .stdout(Stdio::null())
            .status()
            .expect("run deploy/pulsar-standalone.sh");
        // Constructed before the check, so a half-started one is stopped.
        let standalone = Standalone {
            run_dir,
            url: format!("pulsar://127.0.0.1:{port}"),
            web_url: format!("http://127.0.0.1:{web_port}"),
        };
        assert!(status.success(), "the Pulsar standalone did not start");
        standalone
    }
}

impl Drop for Standalone {
    fn drop(&mut self) {
        let _ = Command::new(script())
            .args(["stop", "--run-dir"])
            .arg(&self.run_dir)
            .stdout(Stdio::null())
            .status();
    }
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/pulsar-standalone.sh")
}

fn cache_dir() -> PathBuf {
    let home = std::env::var_os("HOME").expect("HOME is set");
    PathBuf::from(home).join(".cache/pulsar-gateway")
}

/// The broker's and the tools' jars, resolved once with mvn.
fn kafka_libs() -> PathBuf {
    let libs = cache_dir().join(format!("kafka-{KAFKA_VERSION}/libs"));
    if libs
        .join(format!("kafka-tools-{KAFKA_VERSION}.jar"))
        .exists()
    {
        return libs;
    }
    eprintln!("resolving Kafka {KAFKA_VERSION} into {}", libs.display());
    let status = Command::new("mvn")
        .args([
            "-B",
            "-q",
            "-Dstyle.color=never",
            "dependency:copy-dependencies",
        ])
        .arg(format!("-DoutputDirectory={}", libs.display()))
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/kafka"))
        .status()
        .expect("run mvn (needed once to fetch the Kafka broker)");
    assert!(
        status.success(),
        "mvn could not resolve benches/kafka/pom.xml"
    );
    libs
}

/// Starts a single-node KRaft broker with its log in `dir`; returns it
/// with its bootstrap address.
fn start_kafka(libs: &Path, dir: &Path, fsync: bool) -> (Proc, String) {
    let (port, controller) = (free_port(), free_port());
    let mut props = format!(
        "process.roles=broker,controller\n\
         node.id=1\n\
         controller.quorum.voters=1@127.0.0.1:{controller}\n\
         listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}\n\
         advertised.listeners=PLAINTEXT://127.0.0.1:{port}\n\
         controller.listener.names=CONTROLLER\n\
         listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT\n\
         inter.broker.listener.name=PLAINTEXT\n\
         log.dirs={}\n\
         num.partitions=1\n\
         offsets.topic.replication.factor=1\n\
         offsets.topic.num.partitions=1\n\
         transaction.state.log.replication.factor=1\n\
         transaction.state.log.min.isr=1\n\
         group.initial.rebalance.delay.ms=0\n",
        dir.join("data").display()
    );
    if fsync {
        props.push_str("log.flush.interval.messages=1\n");
    }
    let conf = dir.join("server.properties");
    std::fs::write(&conf, props).expect("write server.properties");
    let log4j = dir.join("log4j.properties");
    std::fs::write(
        &log4j,
        "log4j.rootLogger=INFO, stdout\n\
         log4j.appender.stdout=org.apache.log4j.ConsoleAppender\n\
         log4j.appender.stdout.layout=org.apache.log4j.PatternLayout\n\
         log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n\n",
    )
    .expect("write log4j.properties");
    let java = |main: &str| {
        let mut cmd = Command::new("java");
        cmd.args(BROKER_JVM)
            .arg(format!("-Dlog4j.configuration=file:{}", log4j.display()))
            .arg("-cp")
            .arg(libs.join("*"))
            .arg(main);
        cmd
    };
    let format = java("kafka.tools.StorageTool")
        .args(["format", "-t", KAFKA_CLUSTER_ID, "-c"])
        .arg(&conf)
        .output()
        .expect("run kafka.tools.StorageTool");
    assert!(
        format.status.success(),
        "kafka storage format failed:\n{}{}",
        String::from_utf8_lossy(&format.stdout),
        String::from_utf8_lossy(&format.stderr)
    );
    let mut cmd = java("kafka.Kafka");
    cmd.arg(&conf);
    let mut broker = Proc::spawn("the Kafka broker", cmd, dir.join("kafka.log"));
    broker.wait_until("started", |log| log.contains("Kafka Server started"));
    (broker, format!("127.0.0.1:{port}"))
}

/// Starts the gateway (the binary of this build) with only its Kafka and
/// HTTP listeners; returns it when `/readyz` answers 200, with its Kafka
/// address.
fn start_gateway(name: &str, dir: &Path, backend: &[&str]) -> (Proc, String) {
    let (kafka, http) = (free_port(), free_port());
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pulsar-gateway"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PULSAR_GATEWAY_") {
            cmd.env_remove(&key);
        }
    }
    cmd.args(backend)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(["--kafka-addr", &format!("127.0.0.1:{kafka}")])
        .args(["--http-addr", &format!("127.0.0.1:{http}")])
        .args(["--mqtt-addr", "off", "--amqp-addr", "off"])
        .args(["--kafka-group-initial-rebalance-delay", "0s"])
        .args(["--log-level", "warn"]);
    let mut gw = Proc::spawn(name, cmd, dir.join("gateway.log"));
    gw.wait_until("ready", |_| http_ok(http, "/readyz"));
    (gw, format!("127.0.0.1:{kafka}"))
}

/// CPU time (user and system) of this process's children that ended and
/// were waited for, in seconds.
fn children_cpu() -> f64 {
    use nix::sys::resource::{getrusage, UsageWho};
    getrusage(UsageWho::RUSAGE_CHILDREN).map_or(0.0, |usage| {
        let seconds = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
        seconds(usage.user_time()) + seconds(usage.system_time())
    })
}

/// What one client tool run printed, and the CPU it took, start-up
/// included.
struct ToolRun {
    output: String,
    cpu: f64,
}

/// Runs a client tool to its end within [`TOOL_TIMEOUT`]; returns its
/// output and CPU time, or panics with its output if it failed.
fn run_tool(what: &str, cmd: Command, log: &Path) -> ToolRun {
    let cpu = children_cpu();
    let mut proc = Proc::spawn(what, cmd, log.to_path_buf());
    let deadline = Instant::now() + TOOL_TIMEOUT;
    let status = loop {
        if let Ok(Some(status)) = proc.child.try_wait() {
            break status;
        }
        if Instant::now() > deadline {
            panic!(
                "{what} did not finish within {TOOL_TIMEOUT:?} (log: {})",
                log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let output = std::fs::read_to_string(log).unwrap_or_default();
    assert!(
        status.success(),
        "{what} failed ({status}):\n{}",
        tail(&output)
    );
    ToolRun {
        output,
        cpu: children_cpu() - cpu,
    }
}

/// Throughput and latency of one produce run.
#[derive(Clone, Copy, Default)]
struct Produced {
    /// Records per second.
    rate: f64,
    /// Median send-to-acknowledgement latency, ms.
    p50: f64,
    /// 99th percentile, ms.
    p99: f64,
    /// The client's CPU time over the records, µs per record (its whole
    /// process: start-up included).
    client_cpu: f64,
}

/// Throughput of one consume run.
#[derive(Clone, Copy, Default)]
struct Consumed {
    /// Records per second.
    rate: f64,
    /// As in [`Produced`].
    client_cpu: f64,
}

impl Consumed {
    /// Two runs of the same number of records as one: records over the
    /// time of both.
    fn over_both(a: Consumed, b: Consumed) -> Consumed {
        Consumed {
            rate: 2.0 / (1.0 / a.rate + 1.0 / b.rate),
            client_cpu: (a.client_cpu + b.client_cpu) / 2.0,
        }
    }
}

/// Both Pulsar-side consumers on both topics written on the standalone.
struct PulsarReads {
    /// The gateway reading the topic it wrote, first.
    gateway_own: Consumed,
    /// pulsar-perf reading that topic second.
    perf_other: Consumed,
    /// pulsar-perf reading the topic it wrote, first.
    perf_own: Consumed,
    /// The gateway reading that topic second.
    gateway_other: Consumed,
}

/// The Java tools of both sides, and where their logs go.
struct Tools {
    /// Kafka broker and kafka-tools jars.
    kafka_libs: PathBuf,
    /// The Pulsar distribution's `bin/pulsar-perf`.
    pulsar_perf: PathBuf,
    /// The test virtualenv's interpreter, with confluent-kafka.
    python: PathBuf,
    /// Logs of every tool run.
    logs: PathBuf,
    knobs: Knobs,
}

impl Tools {
    fn kafka_tool(&self, main: &str) -> Command {
        let mut cmd = Command::new("java");
        cmd.args(["-Xmx512m", "-cp"])
            .arg(self.kafka_libs.join("*"))
            .arg(format!(
                "-Dlog4j.configuration=file:{}",
                self.logs.join("tools-log4j.properties").display()
            ))
            .arg(main);
        cmd
    }

    /// `ProducerPerformance` sends `records` to `topic` at `bootstrap`.
    fn kafka_produce(&self, bootstrap: &str, topic: &str, records: u64) -> Produced {
        let mut cmd = self.kafka_tool("org.apache.kafka.tools.ProducerPerformance");
        cmd.args(["--topic", topic, "--throughput", "-1"])
            .args(["--num-records", &records.to_string()])
            .args(["--record-size", &self.knobs.record_bytes.to_string()])
            .arg("--producer-props")
            .arg(format!("bootstrap.servers={bootstrap}"))
            .args(["acks=all", "linger.ms=1"])
            .arg(format!("batch.size={}", self.knobs.batch_bytes))
            .arg(format!(
                "buffer.memory={}",
                IN_FLIGHT * self.knobs.record_bytes + self.knobs.batch_bytes
            ));
        let run = run_tool("ProducerPerformance", cmd, &self.log(topic));
        let out = run.output;
        let re = Regex::new(
            r"(\d+) records sent, ([\d.]+) records/sec .*?, (\d+) ms 50th, \d+ ms 95th, (\d+) ms 99th",
        )
        .expect("valid regex");
        let c = re
            .captures_iter(&out)
            .last()
            .unwrap_or_else(|| panic!("no summary from ProducerPerformance:\n{}", tail(&out)));
        assert_eq!(
            c[1].parse::<u64>().ok(),
            Some(records),
            "not every record was sent"
        );
        Produced {
            rate: num(&c[2]),
            p50: num(&c[3]),
            p99: num(&c[4]),
            client_cpu: per_record(run.cpu, records),
        }
    }

    /// `ConsumerPerformance` reads `records` of `topic` from the earliest;
    /// returns its fetch rate (records/s, without the group join).
    fn kafka_consume(&self, bootstrap: &str, topic: &str, records: u64) -> Consumed {
        let mut cmd = self.kafka_tool("org.apache.kafka.tools.ConsumerPerformance");
        cmd.args(["--bootstrap-server", bootstrap, "--topic", topic])
            .args(["--messages", &records.to_string()])
            .args(["--group", &format!("{topic}-group"), "--timeout", "60000"]);
        let log = self.log(&format!("{topic}-consume"));
        let run = run_tool("ConsumerPerformance", cmd, &log);
        let out = run.output;
        // The data line: start, end, MB, MB/s, records, records/s,
        // rebalance ms, fetch ms, fetch MB/s, fetch records/s.
        let fields: Vec<&str> = out
            .lines()
            .rfind(|l| l.split(',').count() == 10 && !l.contains("start.time"))
            .unwrap_or_else(|| panic!("no summary from ConsumerPerformance:\n{}", tail(&out)))
            .split(',')
            .map(str::trim)
            .collect();
        assert_eq!(
            fields[4].parse::<u64>().ok(),
            Some(records),
            "ConsumerPerformance did not read every record:\n{}",
            tail(&out)
        );
        Consumed {
            rate: num(fields[9]),
            client_cpu: per_record(run.cpu, records),
        }
    }

    /// `librdkafka_perf.py` with `args`; returns its JSON summary and CPU.
    fn librdkafka(&self, args: &[String], log: &Path) -> (serde_json::Value, f64) {
        let mut cmd = Command::new(&self.python);
        cmd.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/kafka/librdkafka_perf.py"))
            .args(args);
        let run = run_tool("librdkafka_perf.py", cmd, log);
        let summary = run
            .output
            .lines()
            .rev()
            .find_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .unwrap_or_else(|| {
                panic!("no summary from librdkafka_perf.py:\n{}", tail(&run.output))
            });
        (summary, run.cpu)
    }

    /// librdkafka sends `records` to partition 0 of `topic` at `bootstrap`.
    fn rdkafka_produce(&self, bootstrap: &str, topic: &str, records: u64) -> Produced {
        let args = [
            "produce".to_owned(),
            bootstrap.to_owned(),
            topic.to_owned(),
            records.to_string(),
            self.knobs.record_bytes.to_string(),
            self.knobs.batch_bytes.to_string(),
            IN_FLIGHT.to_string(),
        ];
        let (summary, cpu) = self.librdkafka(&args, &self.log(&format!("{topic}-rdkafka")));
        let field = |name: &str| {
            summary[name]
                .as_f64()
                .unwrap_or_else(|| panic!("no {name} in {summary}"))
        };
        Produced {
            rate: field("rate"),
            p50: field("p50_ms"),
            p99: field("p99_ms"),
            client_cpu: per_record(cpu, records),
        }
    }

    /// librdkafka reads `records` of `topic` from the earliest in a group.
    fn rdkafka_consume(&self, bootstrap: &str, topic: &str, records: u64) -> Consumed {
        let args = [
            "consume".to_owned(),
            bootstrap.to_owned(),
            topic.to_owned(),
            records.to_string(),
        ];
        let log = self.log(&format!("{topic}-rdkafka-consume"));
        let (summary, cpu) = self.librdkafka(&args, &log);
        Consumed {
            rate: summary["rate"]
                .as_f64()
                .unwrap_or_else(|| panic!("no rate in {summary}")),
            client_cpu: per_record(cpu, records),
        }
    }

    fn pulsar_perf(&self, mode: &str, url: &str) -> Command {
        let mut cmd = Command::new(&self.pulsar_perf);
        cmd.env("PULSAR_MEM", "-Xmx512m")
            .env("PULSAR_LOG_DIR", &self.logs)
            .args([mode, "-u", url]);
        cmd
    }

    /// `pulsar-perf produce` sends `records` to `topic`.
    fn pulsar_produce(&self, url: &str, topic: &str, records: u64) -> Produced {
        let mut cmd = self.pulsar_perf("produce", url);
        // Entries as large as the gateway's (the Java client's defaults;
        // pulsar-perf's own are 4 MiB).
        let entries = ProducerSettings::default();
        cmd.args(["-m", &records.to_string(), "-r", "10000000"])
            .args(["-s", &self.knobs.record_bytes.to_string()])
            .args(["-o", &IN_FLIGHT.to_string(), "-b", "1"])
            .args(["-bb", &entries.batch_max_bytes.to_string()])
            .args(["-bm", &entries.batch_max_messages.to_string()])
            .arg(topic);
        let run = run_tool("pulsar-perf produce", cmd, &self.log(topic));
        let out = run.output;
        // Its "Aggregated throughput" counts from its start, producer
        // creation included (seconds, with a fresh topic on a busy
        // machine); the rate here runs from "Created 1 producers" to
        // "DONE", the last send (up to IN_FLIGHT records then still
        // unacknowledged: at most 0.5% high at 200000 records).
        let at = |marker: &str| {
            out.lines()
                .find(|l| l.contains(marker))
                .and_then(log_seconds)
                .unwrap_or_else(|| panic!("no {marker:?} in pulsar-perf's log:\n{}", tail(&out)))
        };
        let mut elapsed = at("DONE (reached the maximum number") - at("Created 1 producers");
        if elapsed < 0.0 {
            elapsed += 86_400.0; // across midnight
        }
        let sent = Regex::new(r"Aggregated throughput stats ---\s*(\d+) records sent")
            .expect("valid regex")
            .captures(&out)
            .and_then(|c| c[1].parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no summary from pulsar-perf produce:\n{}", tail(&out)));
        // pulsar-perf may send a few more than asked: its senders check the
        // count before they send, not after.
        assert!(
            sent >= records,
            "pulsar-perf produce did not send every record:\n{}",
            tail(&out)
        );
        // The summary's latency line can come twice (its stats thread and
        // its shutdown hook); the second reads an emptied histogram.
        let (p50, p99) = Regex::new(r"Aggregated latency stats --- Latency: mean:\s*[\d.]+ ms - med:\s*([\d.]+) - 95pct:\s*[\d.]+ - 99pct:\s*([\d.]+)")
            .expect("valid regex")
            .captures_iter(&out)
            .map(|c| (num(&c[1]), num(&c[2])))
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .unwrap_or_else(|| panic!("no latency from pulsar-perf produce:\n{}", tail(&out)));
        Produced {
            rate: records as f64 / elapsed.max(0.001),
            p50,
            p99,
            client_cpu: per_record(run.cpu, records),
        }
    }

    /// `pulsar-perf consume` reads `records` of `topic` from the earliest.
    fn pulsar_consume(&self, url: &str, topic: &str, records: u64) -> Consumed {
        let mut cmd = self.pulsar_perf("consume", url);
        cmd.args(["-m", &records.to_string(), "-sp", "Earliest", "-q", "1000"])
            .args(["-ss", "bench"])
            .arg(topic);
        let log = self.log(&format!("{}-consume", topic.replace('/', "_")));
        let run = run_tool("pulsar-perf consume", cmd, &log);
        let out = run.output;
        let c = Regex::new(
            r"Aggregated throughput stats ---\s*(\d+) records received ---\s*([\d.]+) msg/s",
        )
        .expect("valid regex")
        .captures(&out)
        .unwrap_or_else(|| panic!("no summary from pulsar-perf consume:\n{}", tail(&out)));
        assert!(
            c[1].parse::<u64>().is_ok_and(|n| n >= records),
            "pulsar-perf consume did not read every record:\n{}",
            tail(&out)
        );
        Consumed {
            rate: num(&c[2]),
            client_cpu: per_record(run.cpu, records),
        }
    }

    fn log(&self, topic: &str) -> PathBuf {
        self.logs
            .join(format!("{}.log", topic.replace(['/', ':'], "_")))
    }
}

/// The time of day of a pulsar-perf log line (`2026-12-01T15:06:21,569`),
/// in seconds.
fn log_seconds(line: &str) -> Option<f64> {
    let c = Regex::new(r"T(\d{2}):(\d{2}):(\d{2}),(\d{3})")
        .expect("valid regex")
        .captures(line)?;
    Some(num(&c[1]) * 3600.0 + num(&c[2]) * 60.0 + num(&c[3]) + num(&c[4]) / 1000.0)
}

/// `seconds` of CPU over `records`, in µs per record.
fn per_record(seconds: f64, records: u64) -> f64 {
    seconds * 1e6 / records.max(1) as f64
}

fn num(s: &str) -> f64 {
    s.parse()
        .unwrap_or_else(|_| panic!("{s:?} is not a number in a tool's output"))
}

/// Latencies of one-at-a-time sends, ms.
#[derive(Clone, Copy, Default)]
struct LowLoad {
    p50: f64,
    p99: f64,
}

impl LowLoad {
    fn from_samples(mut samples: Vec<Duration>) -> LowLoad {
        samples.sort();
        let at = |q: f64| {
            let i = ((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1;
            samples[i].as_secs_f64() * 1000.0
        };
        LowLoad {
            p50: at(0.50),
            p99: at(0.99),
        }
    }
}

/// Creates a one-partition `topic` with rskafka and returns the client,
/// so a measured run does not time the topic's creation.
async fn create_topic(bootstrap: &str, topic: &str) -> rskafka::client::Client {
    let client = rskafka::client::ClientBuilder::new(vec![bootstrap.to_owned()])
        .build()
        .await
        .unwrap_or_else(|e| panic!("rskafka cannot connect to {bootstrap}: {e}"));
    client
        .controller_client()
        .unwrap_or_else(|e| panic!("no controller at {bootstrap}: {e}"))
        .create_topic(topic, 1, 1, 30_000)
        .await
        .unwrap_or_else(|e| panic!("cannot create {topic} at {bootstrap}: {e}"));
    client
}

/// Sends `LOW_LOAD_WARMUP + n` records one at a time through rskafka.
async fn low_load_kafka(bootstrap: &str, topic: &str, bytes: usize, n: usize) -> LowLoad {
    use rskafka::client::partition::{Compression, UnknownTopicHandling};
    use rskafka::record::Record;
    let client = create_topic(bootstrap, topic).await;
    let partition = client
        .partition_client(topic, 0, UnknownTopicHandling::Retry)
        .await
        .unwrap_or_else(|e| panic!("no partition 0 of {topic} at {bootstrap}: {e}"));
    let value = vec![b'x'; bytes];
    let mut samples = Vec::with_capacity(n);
    for i in 0..LOW_LOAD_WARMUP + n {
        let record = Record {
            key: None,
            value: Some(value.clone()),
            headers: Default::default(),
            timestamp: std::time::SystemTime::now().into(),
        };
        let sent = Instant::now();
        tokio::time::timeout(
            Duration::from_secs(30),
            partition.produce(vec![record], Compression::NoCompression),
        )
        .await
        .unwrap_or_else(|_| panic!("a produce to {bootstrap} took over 30 s"))
        .unwrap_or_else(|e| panic!("produce to {bootstrap} failed: {e}"));
        if i >= LOW_LOAD_WARMUP {
            samples.push(sent.elapsed());
        }
    }
    LowLoad::from_samples(samples)
}

/// Sends `LOW_LOAD_WARMUP + n` messages one at a time through the `pulsar`
/// crate, without batching.
async fn low_load_pulsar(url: &str, topic: &str, bytes: usize, n: usize) -> LowLoad {
    use pulsar::{producer, Pulsar, TokioExecutor};
    let client: Pulsar<TokioExecutor> = Pulsar::builder(url, TokioExecutor)
        .build()
        .await
        .unwrap_or_else(|e| panic!("the pulsar crate cannot connect to {url}: {e}"));
    let mut producer = client
        .producer()
        .with_topic(topic)
        .build()
        .await
        .unwrap_or_else(|e| panic!("no producer for {topic}: {e}"));
    let value = vec![b'x'; bytes];
    let mut samples = Vec::with_capacity(n);
    for i in 0..LOW_LOAD_WARMUP + n {
        let message = producer::Message {
            payload: value.clone(),
            ..Default::default()
        };
        let sent = Instant::now();
        let receipt = producer
            .send_non_blocking(message)
            .await
            .unwrap_or_else(|e| panic!("send to {topic} failed: {e}"));
        tokio::time::timeout(Duration::from_secs(30), receipt)
            .await
            .unwrap_or_else(|_| panic!("a send to {url} took over 30 s"))
            .unwrap_or_else(|e| panic!("send to {topic} failed: {e}"));
        if i >= LOW_LOAD_WARMUP {
            samples.push(sent.elapsed());
        }
    }
    LowLoad::from_samples(samples)
}

/// One row of the tables.
#[derive(Clone, Copy, Default)]
struct Row {
    /// librdkafka, or pulsar-perf for `pulsar`.
    produce: Produced,
    consume: Consumed,
    /// The Java Kafka client (not run on `pulsar`).
    java_produce: Produced,
    java_consume: Consumed,
    low_load: LowLoad,
}

/// The four targets, in table order.
const TARGETS: [&str; 4] = ["kafka", "gw-embedded", "gw-pulsar", "pulsar"];

fn main() {
    let knobs = Knobs::from_env();
    let scratch = common::scratch_dir("kafka-bench-");
    let dir = |name: &str| {
        let d = scratch.path().join(name);
        std::fs::create_dir_all(&d).expect("create a scratch subdirectory");
        d
    };
    let logs = dir("logs");
    std::fs::write(
        logs.join("tools-log4j.properties"),
        "log4j.rootLogger=WARN, stderr\n\
         log4j.appender.stderr=org.apache.log4j.ConsoleAppender\n\
         log4j.appender.stderr.Target=System.err\n\
         log4j.appender.stderr.layout=org.apache.log4j.PatternLayout\n\
         log4j.appender.stderr.layout.ConversionPattern=%p %m (%c)%n\n",
    )
    .expect("write the tools' log4j.properties");
    println!(
        "kafka bench: {} records of {} B, warm-up {}, low load {} one at a time; disk {}; \
         Kafka fsync per message: {}",
        knobs.records,
        knobs.record_bytes,
        knobs.warmup_records,
        knobs.low_load_records,
        common::describe_fs(scratch.path()),
        if knobs.kafka_fsync {
            "yes"
        } else {
            "no (Kafka's default)"
        },
    );

    let libs = kafka_libs();
    // The slowest start (20-60 s) runs while the others start.
    let pulsar_dir = dir("pulsar");
    let pulsar = std::thread::spawn(move || Standalone::start(pulsar_dir));
    let kafka = start_kafka(&libs, &dir("kafka"), knobs.kafka_fsync);
    let embedded = start_gateway(
        "the gateway on embedded",
        &dir("gw-embedded"),
        &["--backend", "embedded"],
    );
    let pulsar = pulsar.join().expect("the Pulsar standalone started");
    let on_pulsar = start_gateway(
        "the gateway on Pulsar",
        &dir("gw-pulsar"),
        &[
            "--backend",
            "pulsar",
            "--pulsar-url",
            &pulsar.url,
            "--pulsar-admin-url",
            &pulsar.web_url,
        ],
    );
    let pulsar_perf = cache_dir().join("pulsar/apache-pulsar-4.0.8/bin/pulsar-perf");
    assert!(pulsar_perf.exists(), "{} is missing", pulsar_perf.display());
    let tools = Tools {
        kafka_libs: libs,
        pulsar_perf,
        python: python(),
        logs,
        knobs,
    };
    let bootstrap = [kafka.1.as_str(), embedded.1.as_str(), on_pulsar.1.as_str()];
    let run = std::process::id();
    let topic = |target: &str, what: &str| format!("bench-{run}-{target}-{what}");
    let pulsar_topic =
        |what: &str| format!("persistent://public/default/{}", topic("direct", what));
    let (n, warmup) = (tools.knobs.records, tools.knobs.warmup_records);

    let mut rows = [Row::default(); 4];
    // Every path a measured run takes, produce and consume, runs once
    // first, so that the JVMs' JIT (brokers and the standalone's bookie)
    // has compiled it: the gateway on Pulsar, measured before pulsar-perf,
    // would otherwise meet a colder broker than it.
    eprintln!("warming up");
    for (i, addr) in bootstrap.iter().enumerate() {
        let t = topic(TARGETS[i], "warmup");
        tools.rdkafka_produce(addr, &t, warmup);
        tools.rdkafka_consume(addr, &t, warmup);
    }
    tools.pulsar_produce(&pulsar.url, &pulsar_topic("warmup"), warmup);
    tools.pulsar_consume(&pulsar.url, &pulsar_topic("warmup"), warmup);

    // Topics are made before the clock starts (on Pulsar, a topic's
    // creation can take seconds on a busy machine); pulsar-perf's clock
    // starts once its producer exists.
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    for (i, addr) in bootstrap.iter().enumerate() {
        for what in ["data", "java"] {
            runtime.block_on(create_topic(addr, &topic(TARGETS[i], what)));
        }
    }

    eprintln!("produce");
    for (i, addr) in bootstrap.iter().enumerate() {
        rows[i].produce = tools.rdkafka_produce(addr, &topic(TARGETS[i], "data"), n);
    }
    rows[3].produce = tools.pulsar_produce(&pulsar.url, &pulsar_topic("data"), n);

    eprintln!("consume");
    for (i, addr) in bootstrap.iter().enumerate().take(2) {
        rows[i].consume = tools.rdkafka_consume(addr, &topic(TARGETS[i], "data"), n);
    }
    // The gateway on Pulsar and pulsar-perf each read both topics on the
    // standalone, the one it wrote first, then the other's: the broker
    // reads a topic written more recently, or read just before, from
    // warmer caches (its entry cache, the bookie's write and read-ahead
    // caches), and which side met them varied with the order of the runs.
    let gateway_topic = topic(TARGETS[2], "data");
    let reads = PulsarReads {
        gateway_own: tools.rdkafka_consume(bootstrap[2], &gateway_topic, n),
        perf_other: tools.pulsar_consume(
            &pulsar.url,
            &format!("persistent://public/default/{gateway_topic}"),
            n,
        ),
        perf_own: tools.pulsar_consume(&pulsar.url, &pulsar_topic("data"), n),
        gateway_other: tools.rdkafka_consume(bootstrap[2], &topic("direct", "data"), n),
    };
    rows[2].consume = Consumed::over_both(reads.gateway_own, reads.gateway_other);
    rows[3].consume = Consumed::over_both(reads.perf_own, reads.perf_other);

    eprintln!("the Java client");
    for (i, addr) in bootstrap.iter().enumerate() {
        let t = topic(TARGETS[i], "java");
        rows[i].java_produce = tools.kafka_produce(addr, &t, n);
        rows[i].java_consume = tools.kafka_consume(addr, &t, n);
    }

    eprintln!("one at a time");
    let (bytes, low) = (
        tools.knobs.record_bytes as usize,
        tools.knobs.low_load_records,
    );
    for (i, addr) in bootstrap.iter().enumerate() {
        let t = topic(TARGETS[i], "low");
        rows[i].low_load = runtime.block_on(low_load_kafka(addr, &t, bytes, low));
    }
    rows[3].low_load = runtime.block_on(low_load_pulsar(
        &pulsar.url,
        &pulsar_topic("low"),
        bytes,
        low,
    ));

    print!("{}", table(&rows, &reads, &tools.knobs));
    // Stop in reverse order of dependence: the gateway before its Pulsar.
    drop(on_pulsar);
    drop(pulsar);
    drop(embedded);
    drop(kafka);
}

/// The test virtualenv's interpreter: `PULSAR_GATEWAY_PYTHON` (as
/// `scripts/test.sh` sets it), or the one `scripts/python-venv.sh` makes.
fn python() -> PathBuf {
    if let Some(python) = std::env::var_os("PULSAR_GATEWAY_PYTHON") {
        return python.into();
    }
    let out = Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/python-venv.sh"))
        .stderr(Stdio::inherit())
        .output()
        .expect("run scripts/python-venv.sh");
    assert!(out.status.success(), "scripts/python-venv.sh failed");
    let path = String::from_utf8_lossy(&out.stdout);
    PathBuf::from(path.lines().last().unwrap_or_default().trim())
}

fn table(rows: &[Row; 4], reads: &PulsarReads, knobs: &Knobs) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\n{:<12} {:>14} {:>8} {:>8} {:>14} {:>12} {:>12}   client CPU µs/rec",
        "target", "produce rec/s", "p50 ms", "p99 ms", "consume rec/s", "1x1 p50 ms", "1x1 p99 ms"
    );
    for (name, r) in TARGETS.iter().zip(rows) {
        let _ = writeln!(
            s,
            "{:<12} {:>14.0} {:>8.1} {:>8.1} {:>14.0} {:>12.3} {:>12.3}   {:.1} / {:.1}",
            name,
            r.produce.rate,
            r.produce.p50,
            r.produce.p99,
            r.consume.rate,
            r.low_load.p50,
            r.low_load.p99,
            r.produce.client_cpu,
            r.consume.client_cpu,
        );
    }
    let _ = writeln!(
        s,
        "(clients: librdkafka on the Kafka targets, pulsar-perf on pulsar; \
         client CPU: produce / consume, whole process)"
    );
    let [kafka, embedded, on_pulsar, pulsar] = rows;
    let _ = writeln!(
        s,
        "\ngw-embedded / kafka: produce {:.2}, consume {:.2}  \
         (the embedded store fsyncs before acking; Kafka {})",
        embedded.produce.rate / kafka.produce.rate,
        embedded.consume.rate / kafka.consume.rate,
        if knobs.kafka_fsync {
            "flushed every message here too"
        } else {
            "does not, by default"
        }
    );
    let _ = writeln!(
        s,
        "gw-pulsar / pulsar:   produce {:.2}, consume {:.2}  \
         (the standalone's bookie does not fsync its journal)",
        on_pulsar.produce.rate / pulsar.produce.rate,
        on_pulsar.consume.rate / pulsar.consume.rate,
    );
    let _ = writeln!(
        s,
        "  consume on Pulsar, over both topics: the gateway's topic read by gw-pulsar {:.0} \
         then pulsar-perf {:.0}; pulsar-perf's topic read by pulsar-perf {:.0} then gw-pulsar {:.0}",
        reads.gateway_own.rate, reads.perf_other.rate, reads.perf_own.rate, reads.gateway_other.rate,
    );
    let _ = writeln!(
        s,
        "latency gw-pulsar adds over pulsar, one at a time: p50 {:+.3} ms, p99 {:+.3} ms",
        on_pulsar.low_load.p50 - pulsar.low_load.p50,
        on_pulsar.low_load.p99 - pulsar.low_load.p99,
    );

    let _ = writeln!(
        s,
        "\nthe Java Kafka client (ProducerPerformance, ConsumerPerformance), same records:\n\
         {:<12} {:>14} {:>8} {:>8} {:>14}   client CPU µs/rec",
        "target", "produce rec/s", "p50 ms", "p99 ms", "consume rec/s"
    );
    for (name, r) in TARGETS.iter().zip(rows).take(3) {
        let _ = writeln!(
            s,
            "{:<12} {:>14.0} {:>8.1} {:>8.1} {:>14.0}   {:.1} / {:.1}",
            name,
            r.java_produce.rate,
            r.java_produce.p50,
            r.java_produce.p99,
            r.java_consume.rate,
            r.java_produce.client_cpu,
            r.java_consume.client_cpu,
        );
    }
    let _ = writeln!(
        s,
        "gw-embedded / kafka: produce {:.2}, consume {:.2}; \
         gw-pulsar / pulsar (pulsar-perf above): produce {:.2}, consume {:.2}",
        embedded.java_produce.rate / kafka.java_produce.rate,
        embedded.java_consume.rate / kafka.java_consume.rate,
        on_pulsar.java_produce.rate / pulsar.produce.rate,
        on_pulsar.java_consume.rate / pulsar.consume.rate,
    );
    let window = MAX_IN_FLIGHT_REQUESTS * knobs.batch_bytes / knobs.record_bytes.max(1);
    if window < IN_FLIGHT {
        let _ = writeln!(
            s,
            "note: batch.size={} keeps at most ~{window} records in flight in the Java \
             producer against pulsar-perf's {IN_FLIGHT}: its ratios compare depths",
            knobs.batch_bytes,
        );
    }
    s
}
