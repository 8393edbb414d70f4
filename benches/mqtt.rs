//! MQTT clients against Mosquitto and the gateway on this machine, side by
//! side in one run, printed as absolute figures and ratios:
//!
//! - `mosquitto`: Debian's Mosquitto broker (`/usr/sbin/mosquitto`, 2.0),
//!   anonymous, no persistence (its default);
//! - `gw-embedded`: the gateway's MQTT handler on its embedded store.
//!
//! Columns of the table (MQTT 3.1.1, QoS 1, `BENCH_MQTT_BYTES` payloads,
//! default 1 KiB; the load is generated in this process with rumqttc, the
//! same client code for both, each client keeping up to 100 messages in
//! flight, rumqttc's default):
//!
//! - `pub×1 msg/s`, `p50`, `p99`: one publisher sends `BENCH_MQTT_MESSAGES`
//!   messages to one topic as fast as its window allows while one
//!   subscriber of `bench/<run>/#` receives them; the rate is acknowledged
//!   messages per second from the first send to the last PUBACK, the
//!   latencies are end to end (send call to the subscriber's receipt).
//!   Publishers are connected, and their topics exist (each publisher's
//!   first message, acknowledged, creates its topic), before the clock
//!   starts: the rate is steady publishing. How long those first messages
//!   took is printed under the table.
//! - `pub×100 …`: the same messages spread over 100 publishers, each on a
//!   topic of its own under the subscriber's filter.
//! - `fan-out msg/s`: one publisher sends `BENCH_MQTT_FANOUT_MESSAGES` to a
//!   topic 100 subscribers (`BENCH_MQTT_FANOUT`) subscribe to; deliveries
//!   per second until every subscriber has them all.
//! - `lost`: messages acknowledged to their publisher that a subscriber,
//!   connected all along, never got (it waits 5 s of quiet for them).
//! - `idle KiB/conn`: `BENCH_MQTT_CONNECTIONS` (10,000) connections, each
//!   CONNECTed (3.1.1, keep-alive off) and then silent: the growth of the
//!   broker's resident memory divided by their number, once it stopped
//!   falling (the figure right after the burst of connections is printed
//!   too); measured once, on each fresh process, before anything else.
//!
//! Durability differs, and the table says so: Mosquitto acknowledges a
//! QoS 1 message once it is in its memory (it does not write it to disk,
//! let alone fsync); the gateway acknowledges once its store fsynced it.
//! Everything shares this machine's cores, and what else runs on it
//! drifts: both brokers run side by side, the publish and fan-out runs
//! are made in `BENCH_MQTT_ROUNDS` rounds (5), each measuring both
//! brokers seconds apart (which goes first alternates), and the median of
//! the rounds' ratios is the result (each round's ratio is printed beside
//! it).
//!
//! ```text
//! cargo bench --bench mqtt
//! BENCH_MQTT_MESSAGES=20000 BENCH_MQTT_CONNECTIONS=1000 cargo bench --bench mqtt
//! BENCH_MQTT_RUNS=one,many cargo bench --bench mqtt
//! ```

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::env_number;
use common::process::{free_port, http_ok, Proc};
use rumqttc::{AsyncClient, Event, EventLoop, Incoming, MqttOptions, QoS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long one measured run may take.
const RUN_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a subscriber waits for a next message before it counts the
/// rest as lost (Mosquitto drops QoS 1 messages past a subscriber's queue
/// of 1000).
const QUIET: Duration = Duration::from_secs(5);
/// Connections opened at once in the idle-memory run.
const CONNECT_BATCH: usize = 250;

/// The run's settings, from the environment.
struct Knobs {
    messages: usize,
    bytes: usize,
    fanout: usize,
    fanout_messages: usize,
    connections: usize,
    /// Rounds of the publish and fan-out runs (`BENCH_MQTT_ROUNDS`).
    rounds: usize,
    /// The runs to make (`BENCH_MQTT_RUNS`: some of `one,many,fanout,idle`,
    /// comma-separated; all by default). Runs left out print as NaN.
    runs: Vec<String>,
}

impl Knobs {
    fn from_env() -> Knobs {
        let n = |name: &str, default: u64| env_number(name).unwrap_or(default) as usize;
        Knobs {
            messages: n("BENCH_MQTT_MESSAGES", 100_000),
            bytes: n("BENCH_MQTT_BYTES", 1024).max(8),
            fanout: n("BENCH_MQTT_FANOUT", 100),
            fanout_messages: n("BENCH_MQTT_FANOUT_MESSAGES", 1_000),
            connections: n("BENCH_MQTT_CONNECTIONS", 10_000),
            rounds: n("BENCH_MQTT_ROUNDS", 5).max(1),
            runs: std::env::var("BENCH_MQTT_RUNS")
                .unwrap_or_else(|_| "one,many,fanout,idle".into())
                .split(',')
                .map(|r| r.trim().to_owned())
                .collect(),
        }
    }

    fn makes(&self, run: &str) -> bool {
        self.runs.iter().any(|r| r == run)
    }
}

/// A broker under test.
struct Target {
    name: &'static str,
    process: Proc,
    addr: SocketAddr,
}

impl Target {
    fn resident_bytes(&self) -> u64 {
        let pid = self.process.child.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kib| kib * 1024)
    }
}

/// Waits until something accepts TCP connections on `addr`.
fn wait_listening(process: &mut Proc, addr: SocketAddr) {
    process.wait_until("listening", |_| std::net::TcpStream::connect(addr).is_ok());
}

fn start_mosquitto(dir: &Path) -> Target {
    let port = free_port();
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!("listener {port} 127.0.0.1\nallow_anonymous true\nmax_connections -1\n"),
    )
    .expect("write mosquitto.conf");
    let mut cmd = Command::new("mosquitto");
    cmd.arg("-c").arg(&conf);
    let mut process = Proc::spawn("mosquitto", cmd, dir.join("mosquitto.log"));
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_listening(&mut process, addr);
    Target {
        name: "mosquitto",
        process,
        addr,
    }
}

fn start_gateway(dir: &Path) -> Target {
    let (mqtt, http) = (free_port(), free_port());
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pulsar-gateway"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PULSAR_GATEWAY_") {
            cmd.env_remove(&key);
        }
    }
    cmd.arg("--data-dir")
        .arg(dir.join("data"))
        .args(["--mqtt-addr", &format!("127.0.0.1:{mqtt}")])
        .args(["--http-addr", &format!("127.0.0.1:{http}")])
        .args(["--kafka-addr", "off", "--amqp-addr", "off"])
        .args(["--max-connections", "100000"])
        .args(["--log-level", "warn"]);
    let mut process = Proc::spawn("gw-embedded", cmd, dir.join("gateway.log"));
    process.wait_until("ready", |_| http_ok(http, "/readyz"));
    Target {
        name: "gw-embedded",
        process,
        addr: format!("127.0.0.1:{mqtt}").parse().unwrap(),
    }
}

fn options(target: &Target, id: String) -> MqttOptions {
    let mut o = MqttOptions::new(id, target.addr.ip().to_string(), target.addr.port());
    o.set_keep_alive(Duration::from_secs(60));
    o.set_max_packet_size(1 << 20, 1 << 20);
    o
}

/// Polls `events` until a packet `wanted` picks has come; `who` names the
/// client in a failure.
async fn until(events: &mut EventLoop, who: &str, wanted: fn(&Incoming) -> bool) {
    loop {
        match events.poll().await {
            Ok(Event::Incoming(packet)) if wanted(&packet) => return,
            Ok(_) => {}
            Err(e) => panic!("{who}: {e}"),
        }
    }
}

/// What each of `tasks` returned, in order.
async fn joined<T>(tasks: Vec<tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut done = Vec::with_capacity(tasks.len());
    for task in tasks {
        done.push(task.await.expect("a client task"));
    }
    done
}

/// Microseconds since `epoch`, as the first 8 bytes of a payload.
fn stamped(epoch: Instant, bytes: usize) -> Vec<u8> {
    let mut payload = vec![b'x'; bytes];
    let micros = epoch.elapsed().as_micros() as u64;
    payload[..8].copy_from_slice(&micros.to_be_bytes());
    payload
}

fn latency_micros(epoch: Instant, payload: &[u8]) -> u64 {
    let sent = payload
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u64::from_be_bytes);
    (epoch.elapsed().as_micros() as u64).saturating_sub(sent)
}

/// One publish run's result.
#[derive(Default)]
struct Published {
    rate: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// Messages acknowledged to a publisher that the subscriber never got.
    lost: usize,
    /// Milliseconds until every publisher's first message (to a topic new
    /// to the broker) was acknowledged.
    first_ms: f64,
}

/// What a publisher's first message (untimed) carries: shorter than the
/// 8-byte timestamp of the timed ones.
const FIRST: &[u8] = b"first";

/// `publishers` clients send `messages` in all to topics under one
/// subscriber's filter.
async fn publish_run(target: &Target, knobs: &Knobs, publishers: usize, run: &str) -> Published {
    let filter = format!("bench/{run}/#");
    let (subscriber, mut sub_events) = AsyncClient::new(options(target, format!("{run}-sub")), 100);
    subscriber
        .subscribe(&filter, QoS::AtLeastOnce)
        .await
        .unwrap();
    until(&mut sub_events, "subscriber", |p| {
        matches!(p, Incoming::SubAck(_))
    })
    .await;
    let epoch = Instant::now();
    let total = knobs.messages;
    let receiving = tokio::spawn(async move {
        let mut latencies = Vec::with_capacity(total);
        while latencies.len() < total {
            match tokio::time::timeout(QUIET, sub_events.poll()).await {
                Ok(Ok(Event::Incoming(Incoming::Publish(p)))) if p.payload.len() >= 8 => {
                    latencies.push(latency_micros(epoch, &p.payload))
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    eprintln!("subscriber: {e}");
                    break;
                }
                Err(_) => break,
            }
        }
        latencies
    });
    // Publishers are connected before the clock starts: the run measures
    // publishing, not connection set-up (the idle run covers connecting).
    let mut connected = Vec::new();
    for p in 0..publishers {
        let (client, mut events) = AsyncClient::new(options(target, format!("{run}-p{p}")), 100);
        connected.push(tokio::spawn(async move {
            until(&mut events, "publisher", |p| {
                matches!(p, Incoming::ConnAck(_))
            })
            .await;
            (client, events)
        }));
    }
    let ready = joined(connected).await;
    let first = Instant::now();
    let mut creating = Vec::new();
    for (p, (client, mut events)) in ready.into_iter().enumerate() {
        let topic = format!("bench/{run}/p{p}");
        creating.push(tokio::spawn(async move {
            client
                .publish(&topic, QoS::AtLeastOnce, false, FIRST)
                .await
                .unwrap();
            until(&mut events, "publisher", |p| {
                matches!(p, Incoming::PubAck(_))
            })
            .await;
            (client, events)
        }));
    }
    let clients = joined(creating).await;
    let first_ms = first.elapsed().as_secs_f64() * 1000.0;
    let started = Instant::now();
    let mut sending = Vec::new();
    for (p, (client, mut events)) in clients.into_iter().enumerate() {
        let share = total / publishers + usize::from(p < total % publishers);
        let topic = format!("bench/{run}/p{p}");
        let bytes = knobs.bytes;
        sending.push(tokio::spawn(async move {
            let sender = tokio::spawn(async move {
                for _ in 0..share {
                    let payload = stamped(epoch, bytes);
                    client
                        .publish(&topic, QoS::AtLeastOnce, false, payload)
                        .await
                        .unwrap();
                }
                client
            });
            let mut acked = 0;
            while acked < share {
                match events.poll().await {
                    Ok(Event::Incoming(Incoming::PubAck(_))) => acked += 1,
                    Ok(_) => {}
                    Err(e) => panic!("publisher: {e}"),
                }
            }
            let client = sender.await.unwrap();
            let _ = client.disconnect().await;
        }));
    }
    for s in sending {
        tokio::time::timeout(RUN_TIMEOUT, s)
            .await
            .expect("publishers done in time")
            .unwrap();
    }
    let elapsed = started.elapsed();
    let mut latencies = tokio::time::timeout(RUN_TIMEOUT, receiving)
        .await
        .expect("subscriber done in time")
        .unwrap();
    latencies.sort_unstable();
    let pct = |p: f64| {
        let i = ((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1));
        latencies.get(i).map_or(f64::NAN, |&us| us as f64 / 1000.0)
    };
    Published {
        rate: total as f64 / elapsed.as_secs_f64(),
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        lost: total - latencies.len(),
        first_ms,
    }
}

/// One publisher, `fanout` subscribers of its topic: deliveries per second.
async fn fanout_run(target: &Target, knobs: &Knobs, run: &str) -> Fanout {
    let topic = format!("bench/{run}/fan");
    let mut subscribers = Vec::new();
    for s in 0..knobs.fanout {
        let (client, mut events) = AsyncClient::new(options(target, format!("{run}-s{s}")), 100);
        client.subscribe(&topic, QoS::AtLeastOnce).await.unwrap();
        until(&mut events, "subscriber", |p| {
            matches!(p, Incoming::SubAck(_))
        })
        .await;
        let wanted = knobs.fanout_messages;
        subscribers.push(tokio::spawn(async move {
            let mut got = 0;
            let mut last = Instant::now();
            while got < wanted {
                match tokio::time::timeout(QUIET, events.poll()).await {
                    Ok(Ok(Event::Incoming(Incoming::Publish(_)))) => {
                        got += 1;
                        last = Instant::now();
                    }
                    Ok(Ok(_)) => {}
                    Ok(Err(_)) | Err(_) => break,
                }
            }
            drop(client);
            (got, last)
        }));
    }
    let (publisher, mut events) = AsyncClient::new(options(target, format!("{run}-fanpub")), 100);
    let started = Instant::now();
    let n = knobs.fanout_messages;
    let bytes = knobs.bytes;
    let sender = tokio::spawn(async move {
        for _ in 0..n {
            publisher
                .publish(&topic, QoS::AtLeastOnce, false, vec![b'x'; bytes])
                .await
                .unwrap();
        }
        publisher
    });
    let acks = tokio::spawn(async move {
        let mut acked = 0;
        while acked < n {
            match events.poll().await {
                Ok(Event::Incoming(Incoming::PubAck(_))) => acked += 1,
                Ok(_) => {}
                Err(e) => panic!("publisher: {e}"),
            }
        }
    });
    let mut delivered = 0;
    let mut finished = started;
    for s in subscribers {
        let (got, last) = tokio::time::timeout(RUN_TIMEOUT, s)
            .await
            .expect("subscribers done in time")
            .unwrap();
        delivered += got;
        finished = finished.max(last);
    }
    acks.await.unwrap();
    drop(sender.await.unwrap());
    Fanout {
        rate: delivered as f64 / (finished - started).as_secs_f64(),
        lost: knobs.fanout * n - delivered,
    }
}

/// One fan-out run's result.
#[derive(Default)]
struct Fanout {
    /// Deliveries per second, up to the last one.
    rate: f64,
    /// Deliveries that never came.
    lost: usize,
}

/// A 3.1.1 CONNECT of client id `id`, clean session, keep-alive off.
fn connect_packet(id: &str) -> Vec<u8> {
    let mut body = vec![0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x00];
    body.extend_from_slice(&(id.len() as u16).to_be_bytes());
    body.extend_from_slice(id.as_bytes());
    let mut packet = vec![0x10, body.len() as u8];
    packet.extend(body);
    packet
}

/// Idle memory per connection, KiB.
#[derive(Clone, Copy)]
struct Idle {
    /// Once the broker's resident memory stopped falling (see
    /// [`settled_resident`]): what the idle connections hold.
    settled: f64,
    /// Right after the last CONNACK: also what the allocator kept of the
    /// burst of connections being set up.
    burst: f64,
}

/// Opens `connections` idle MQTT connections, `CONNECT_BATCH` at a time:
/// the broker's memory growth per connection.
async fn idle_run(target: &Target, knobs: &Knobs, run: &str) -> Idle {
    let before = target.resident_bytes();
    let mut open = Vec::with_capacity(knobs.connections);
    for batch in 0..knobs.connections.div_ceil(CONNECT_BATCH) {
        let mut connecting = Vec::new();
        for i in 0..CONNECT_BATCH.min(knobs.connections - batch * CONNECT_BATCH) {
            let addr = target.addr;
            let id = format!("{run}-{batch}-{i}");
            connecting.push(tokio::spawn(async move {
                let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
                stream.write_all(&connect_packet(&id)).await.unwrap();
                let mut connack = [0u8; 4];
                stream.read_exact(&mut connack).await.unwrap();
                assert_eq!(connack[3], 0, "CONNACK accepted");
                stream
            }));
        }
        for c in connecting {
            open.push(c.await.unwrap());
        }
    }
    let burst = target.resident_bytes();
    let settled = settled_resident(target, burst).await;
    drop(open);
    let per_connection =
        |after: u64| after.saturating_sub(before) as f64 / 1024.0 / knobs.connections as f64;
    Idle {
        settled: per_connection(settled),
        burst: per_connection(burst),
    }
}

/// The broker's resident memory once it has not fallen for three seconds
/// in a row (at most 30 s): an allocator returns the pages freed by a
/// burst of work after a delay (jemalloc's dirty pages decay over 10 s),
/// and idle connections are measured at rest.
async fn settled_resident(target: &Target, mut lowest: u64) -> u64 {
    let mut steady = 0;
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = target.resident_bytes();
        if now < lowest {
            lowest = now;
            steady = 0;
        } else {
            steady += 1;
            if steady == 3 {
                break;
            }
        }
    }
    lowest
}

/// One round's publish and fan-out figures of one broker.
struct Row {
    one: Published,
    many: Published,
    fanout: Fanout,
}

/// A publish run not made: NaN.
fn skipped_publish() -> Published {
    Published {
        rate: f64::NAN,
        p50_ms: f64::NAN,
        p99_ms: f64::NAN,
        first_ms: f64::NAN,
        ..Published::default()
    }
}

/// One round of the runs `knobs` asks for on `target`; `round` keeps the
/// rounds' topics and client ids apart.
async fn measure(target: &Target, knobs: &Knobs, round: usize) -> Row {
    let mut row = Row {
        one: skipped_publish(),
        many: skipped_publish(),
        fanout: Fanout {
            rate: f64::NAN,
            ..Fanout::default()
        },
    };
    if knobs.makes("one") {
        row.one = publish_run(target, knobs, 1, &format!("one{round}")).await;
    }
    if knobs.makes("many") {
        row.many = publish_run(target, knobs, 100, &format!("many{round}")).await;
    }
    if knobs.makes("fanout") {
        row.fanout = fanout_run(target, knobs, &format!("fan{round}")).await;
    }
    row
}

/// The median of `values` (NaN when there are none).
fn median(mut values: Vec<f64>) -> f64 {
    values.retain(|v| !v.is_nan());
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

fn main() {
    let knobs = Knobs::from_env();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let dir = common::scratch_dir("mqtt-bench");
    let mosquitto_dir = dir.path().join("mosquitto");
    let gateway_dir = dir.path().join("gateway");
    std::fs::create_dir_all(&mosquitto_dir).unwrap();
    std::fs::create_dir_all(&gateway_dir).unwrap();

    // Both brokers run side by side, and each round measures both seconds
    // apart: drift in what else this machine runs reaches both, and the
    // median of the rounds' ratios is the result.
    let mosquitto = start_mosquitto(&mosquitto_dir);
    let gateway = start_gateway(&gateway_dir);
    let targets = [&mosquitto, &gateway];
    // Idle memory first, on fresh processes: memory the other runs
    // allocated and freed would otherwise be reused and hide the cost.
    let idle = targets.map(|t| {
        knobs
            .makes("idle")
            .then(|| runtime.block_on(idle_run(t, &knobs, "idle")))
    });
    // Warm up: connections, the store's first writes.
    for t in targets {
        runtime.block_on(publish_run(t, &knobs, 10, "warm"));
    }
    // Which broker goes first alternates from round to round.
    let rounds: Vec<[Row; 2]> = (0..knobs.rounds)
        .map(|round| {
            let [m, g] = targets;
            if round % 2 == 0 {
                let m = runtime.block_on(measure(m, &knobs, round));
                [m, runtime.block_on(measure(g, &knobs, round))]
            } else {
                let g = runtime.block_on(measure(g, &knobs, round));
                [runtime.block_on(measure(m, &knobs, round)), g]
            }
        })
        .collect();
    let names = targets.map(|t| t.name);
    drop(mosquitto);
    drop(gateway);

    println!(
        "\nMQTT 3.1.1, QoS 1, {} B payloads, {} messages per publish run, fan-out {} x {}, {} rounds",
        knobs.bytes, knobs.messages, knobs.fanout, knobs.fanout_messages, knobs.rounds
    );
    println!(
        "{:<6} {:<12} {:>12} {:>7} {:>7} {:>6} {:>13} {:>7} {:>7} {:>6} {:>13} {:>6}",
        "round",
        "target",
        "pub×1 msg/s",
        "p50 ms",
        "p99 ms",
        "lost",
        "pub×100 msg/s",
        "p50 ms",
        "p99 ms",
        "lost",
        "fan-out msg/s",
        "lost",
    );
    for (round, rows) in rounds.iter().enumerate() {
        for (name, r) in names.iter().zip(rows) {
            println!(
                "{:<6} {:<12} {:>12.0} {:>7.2} {:>7.2} {:>6} {:>13.0} {:>7.2} {:>7.2} {:>6} {:>13.0} {:>6}",
                round + 1,
                name,
                r.one.rate,
                r.one.p50_ms,
                r.one.p99_ms,
                r.one.lost,
                r.many.rate,
                r.many.p50_ms,
                r.many.p99_ms,
                r.many.lost,
                r.fanout.rate,
                r.fanout.lost,
            );
        }
    }
    let ratios = |rate: fn(&Row) -> f64| -> (f64, String) {
        let each: Vec<f64> = rounds.iter().map(|[m, g]| rate(g) / rate(m)).collect();
        let listed = each.iter().map(|r| format!("{r:.2}")).collect::<Vec<_>>();
        (median(each), listed.join(" "))
    };
    println!("\ngw-embedded / mosquitto, median of the rounds (each round's ratio):");
    for (what, rate) in [
        ("pub×1", (|r: &Row| r.one.rate) as fn(&Row) -> f64),
        ("pub×100", |r: &Row| r.many.rate),
        ("fan-out", |r: &Row| r.fanout.rate),
    ] {
        let (median, each) = ratios(rate);
        println!("  {what:<8} {median:.2}  ({each})");
    }
    if let [Some(m), Some(g)] = idle {
        println!(
            "idle KiB/conn ({} connections): mosquitto {:.2}, gw-embedded {:.2}, ratio {:.2}; \
             right after the connect burst, before the allocator returned its pages: {:.2} and {:.2}",
            knobs.connections,
            m.settled,
            g.settled,
            g.settled / m.settled,
            m.burst,
            g.burst
        );
    }
    println!(
        "first message to each of 100 new topics, all at once (untimed above), round 1: mosquitto {:.1} ms, gw-embedded {:.1} ms",
        rounds.first().map_or(f64::NAN, |[m, _]| m.many.first_ms),
        rounds.first().map_or(f64::NAN, |[_, g]| g.many.first_ms),
    );
    println!(
        "\"lost\": acknowledged to the publisher, never delivered to a connected subscriber (Mosquitto's max_queued_messages is 1000 by default)."
    );
    println!(
        "Mosquitto acknowledges QoS 1 from memory (no persistence, no fsync); the gateway after its store's fsync."
    );
}
