//! Publish and consume throughput of the Pulsar backend through the handler
//! contract (`Backend::publish`, `subscribe`, `receive`, `ack`, as every
//! protocol handler calls them), against the `pulsar` crate used directly
//! on the same cluster, in one run, printed as a ratio (gateway / direct).
//!
//! Publish: 1 and 64 tokio tasks publish 1 KiB messages to one topic in a
//! loop for `BENCH_SECONDS`. The direct side is what a fair user of the
//! crate writes: one producer for the topic shared by the tasks behind a
//! `tokio::sync::Mutex`, held only to enqueue a send, the receipt awaited
//! outside the lock. The gateway, at its defaults, sends the publishes
//! waiting for a partition together as batched entries (one publisher
//! never waits, so its publishes go alone); the direct side sends each
//! message alone (the crate's own batching would send one batch per
//! receipt). On both a send waits for room in the connection's send queue
//! rather than failing.
//!
//! Consume: `BENCH_MESSAGES` messages are published to a topic, then one
//! consumer drains them from the earliest, acknowledging each: through a
//! contract subscription, or the crate's consumer (`next` + `ack`), both
//! with a receiver queue of 1000.
//!
//! The gateway learns a publish's offset from the previous publish while
//! entries follow each other in a ledger, and asks the admin API after a
//! ledger roll-over; the header prints how often the broker rolls ledgers
//! (`deploy/pulsar-standalone.sh start --small-ledgers` rolls every 200
//! entries, which costs the gateway about a tenth of its throughput with
//! 64 publishers; Pulsar's default rolls every 50000).
//!
//! A shared machine is noisy, so the two sides take turns in
//! `BENCH_ROUNDS` rounds per row (who goes first alternates) and each
//! column sums its rounds. Every run uses a fresh topic, deleted after.
//!
//! It needs a running Pulsar configured for the gateway:
//!
//! ```text
//! deploy/pulsar-standalone.sh start
//! cargo bench --bench pulsar_backend
//! BENCH_SECONDS=8 BENCH_ROUNDS=5 BENCH_MESSAGES=50000 cargo bench --bench pulsar_backend
//! ```
//!
//! `PULSAR_URL` (default `pulsar://127.0.0.1:6650`) and `PULSAR_WEB_URL`
//! (default `http://127.0.0.1:8081`) say where it is. `BENCH_SECONDS` is the
//! time of one publish run (default 4), `BENCH_ROUNDS` the runs per side
//! and row (default 3), `BENCH_MESSAGES` the messages per drain (default
//! 20000).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

mod common;

use bytes::Bytes;
use futures::StreamExt;
use gateway_api::topic::Namespace;
use gateway_api::{Backend, NewMessage, SubscribeRequest, TopicName};
use pulsar::consumer::{ConsumerOptions, InitialPosition};
use pulsar::{producer, Consumer, Producer, Pulsar, SubType, TokioExecutor};
use pulsar_gateway::backend::pulsar::{PulsarBackend, PulsarConfig};

const PAYLOAD_BYTES: usize = 1024;
const PUBLISHERS: [usize; 2] = [1, 64];
/// Receiver queue of both consumers (the contract's default).
const RECEIVE_QUEUE: usize = 1000;
/// Sends in flight while a topic is filled for a drain.
const FILL_WINDOW: usize = 1000;
/// How long one receive may take before the drain is declared stuck.
const RECEIVE_TIMEOUT: Duration = Duration::from_secs(30);
/// Subscription name of every drain.
const SUBSCRIPTION: &str = "bench";

/// The two ways to the cluster being compared.
struct Sides {
    /// The gateway's backend.
    backend: PulsarBackend,
    /// A client of the crate of its own, for the direct side (and for
    /// filling topics).
    client: Pulsar<TokioExecutor>,
    /// Where this run's topics go.
    namespace: Namespace,
    /// Starts every topic name of this run; no earlier run used it.
    prefix: String,
    /// Topics made so far, for fresh names.
    made: AtomicU64,
}

impl Sides {
    /// A topic no earlier run used.
    fn fresh_topic(&self, what: &str) -> TopicName {
        let n = self.made.fetch_add(1, Ordering::Relaxed);
        let local = format!("{}-{what}-{n}", self.prefix);
        TopicName::new(
            gateway_api::topic::Domain::Persistent,
            &self.namespace,
            &local,
        )
        .expect("topic name")
    }

    /// Deletes a run's topic; a failure only leaves it behind.
    async fn delete(&self, topic: &TopicName) {
        if let Err(e) = self.backend.delete_topic(topic).await {
            eprintln!("could not delete {topic}: {e}");
        }
    }
}

/// Messages done in some time.
#[derive(Default, Clone, Copy)]
struct Tally {
    messages: u64,
    seconds: f64,
}

impl Tally {
    fn add(&mut self, other: Tally) {
        self.messages += other.messages;
        self.seconds += other.seconds;
    }

    fn rate(&self) -> f64 {
        self.messages as f64 / self.seconds
    }
}

fn main() {
    let service_url =
        std::env::var("PULSAR_URL").unwrap_or_else(|_| "pulsar://127.0.0.1:6650".into());
    let admin_url =
        std::env::var("PULSAR_WEB_URL").unwrap_or_else(|_| "http://127.0.0.1:8081".into());
    let seconds = common::env_number("BENCH_SECONDS").unwrap_or(4);
    let rounds = common::env_number("BENCH_ROUNDS").unwrap_or(3).max(1);
    let messages = common::env_number("BENCH_MESSAGES")
        .unwrap_or(20_000)
        .max(1);
    let duration = Duration::from_secs(seconds);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let sides = runtime.block_on(connect(&service_url, &admin_url));

    println!(
        "pulsar_backend: {PAYLOAD_BYTES} B payloads, {service_url} + {admin_url}, \
         {rounds} rounds per side: publish runs of {seconds} s, drains of {messages} messages"
    );
    println!(
        "ledgers roll over every {} entries (managedLedgerMaxEntriesPerLedger, Pulsar's \
         default 50000); a gateway publish after a roll-over waits for an admin lookup",
        entries_per_ledger(&admin_url).map_or("?".into(), |n| n.to_string())
    );

    let mut publish_rows = Vec::new();
    for publishers in PUBLISHERS {
        let label = format!("publish, {publishers:>2} publishers");
        let (gateway, direct) = alternate(rounds, &label, |gateway_turn| {
            let sides = &sides;
            runtime.block_on(async move {
                if gateway_turn {
                    publish_gateway(sides, publishers, duration).await
                } else {
                    publish_direct(sides, publishers, duration).await
                }
            })
        });
        publish_rows.push((publishers, gateway, direct));
    }

    let (gateway, direct) = alternate(rounds, "consume", |gateway_turn| {
        let sides = &sides;
        runtime.block_on(async move {
            let topic = sides.fresh_topic("consume");
            fill(&sides.client, &topic, messages).await;
            let run = if gateway_turn {
                drain_gateway(&sides.backend, &topic, messages).await
            } else {
                drain_direct(&sides.client, &topic, messages).await
            };
            sides.delete(&topic).await;
            run
        })
    });

    println!();
    println!("publish (1 KiB, each publish awaits its receipt; the gateway at its defaults, the crate without batching)");
    println!(
        "{:>10}  {:>14}  {:>14}  {:>6}",
        "publishers", "gateway msg/s", "direct msg/s", "ratio"
    );
    for (publishers, gateway, direct) in publish_rows {
        println!(
            "{:>10}  {:>14.0}  {:>14.0}  {:>6.2}",
            publishers,
            gateway.rate(),
            direct.rate(),
            gateway.rate() / direct.rate()
        );
    }
    println!();
    println!("consume (1 KiB, one consumer, receiver queue {RECEIVE_QUEUE}, ack per message)");
    println!(
        "{:>10}  {:>14}  {:>14}  {:>6}",
        "messages", "gateway msg/s", "direct msg/s", "ratio"
    );
    println!(
        "{:>10}  {:>14.0}  {:>14.0}  {:>6.2}",
        messages,
        gateway.rate(),
        direct.rate(),
        gateway.rate() / direct.rate()
    );

    runtime.block_on(async {
        let _ = sides.backend.close().await;
    });
}

/// Runs `run(gateway_turn)` for both sides in each of `rounds` rounds, who
/// goes first alternating so a drift of the machine's speed favours
/// neither; prints each run and returns the (gateway, direct) sums.
fn alternate(rounds: u64, label: &str, mut run: impl FnMut(bool) -> Tally) -> (Tally, Tally) {
    let (mut gateway, mut direct) = (Tally::default(), Tally::default());
    for round in 0..rounds {
        for gateway_turn in turns(round) {
            let tally = run(gateway_turn);
            println!(
                "  {label}, round {}: {:<7} {:>8.0} msg/s",
                round + 1,
                if gateway_turn { "gateway" } else { "direct" },
                tally.rate()
            );
            if gateway_turn {
                &mut gateway
            } else {
                &mut direct
            }
            .add(tally);
        }
    }
    (gateway, direct)
}

/// The order of the two sides in a round: `true` is the gateway.
fn turns(round: u64) -> [bool; 2] {
    if round.is_multiple_of(2) {
        [true, false]
    } else {
        [false, true]
    }
}

/// Connects both sides, or ends the process saying how to start Pulsar.
async fn connect(service_url: &str, admin_url: &str) -> Sides {
    for url in [service_url, admin_url] {
        if let Err(e) = reachable(url).await {
            unreachable_pulsar(&format!("{url}: {e}"));
        }
    }
    let config = PulsarConfig::new(service_url, admin_url);
    let backend =
        match tokio::time::timeout(Duration::from_secs(60), PulsarBackend::connect(config)).await {
            Ok(Ok(backend)) => backend,
            Ok(Err(e)) => unreachable_pulsar(&e.to_string()),
            Err(_) => unreachable_pulsar("the backend did not connect within 60 s"),
        };
    let client = match tokio::time::timeout(
        Duration::from_secs(60),
        Pulsar::builder(service_url, TokioExecutor).build(),
    )
    .await
    {
        Ok(Ok(client)) => client,
        Ok(Err(e)) => unreachable_pulsar(&e.to_string()),
        Err(_) => unreachable_pulsar("the crate's client did not connect within 60 s"),
    };
    let started = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    Sides {
        backend,
        client,
        namespace: Namespace::default(),
        prefix: format!("bench-{started}"),
        made: AtomicU64::new(0),
    }
}

/// The broker's `managedLedgerMaxEntriesPerLedger`, when it may be read.
/// The table depends on it: the gateway learns a publish's offset from the
/// previous one while entries follow each other in a ledger, and from the
/// admin API after a roll-over (see `PulsarBackend::publish`).
fn entries_per_ledger(admin_url: &str) -> Option<u64> {
    let text = ureq::get(&format!(
        "{admin_url}/admin/v2/brokers/configuration/runtime"
    ))
    .call()
    .ok()?
    .into_body()
    .read_to_string()
    .ok()?;
    let settings: serde_json::Value = serde_json::from_str(&text).ok()?;
    settings["managedLedgerMaxEntriesPerLedger"]
        .as_str()?
        .parse()
        .ok()
}

/// Whether a TCP connection to the URL's host and port opens.
async fn reachable(url: &str) -> std::io::Result<()> {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let authority = rest.split('/').next().unwrap_or(rest);
    let address = if authority.contains(':') {
        authority.to_owned()
    } else {
        let port = match scheme {
            "pulsar" => 6650,
            "pulsar+ssl" => 6651,
            "https" => 443,
            _ => 80,
        };
        format!("{authority}:{port}")
    };
    match tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::TcpStream::connect(address),
    )
    .await
    {
        Ok(connected) => connected.map(drop),
        Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
    }
}

fn unreachable_pulsar(why: &str) -> ! {
    eprintln!(
        "pulsar_backend: no usable Pulsar ({why}).\n\
         Start one with `deploy/pulsar-standalone.sh start`, or point PULSAR_URL and \
         PULSAR_WEB_URL at a cluster configured for the gateway."
    );
    std::process::exit(1)
}

fn payload() -> Bytes {
    Bytes::from(vec![0xA5u8; PAYLOAD_BYTES])
}

/// The crate's message for `payload`, as the backend builds it.
fn raw_message(payload: &Bytes) -> producer::Message {
    producer::Message {
        payload: payload.to_vec(),
        ..Default::default()
    }
}

/// A producer that does not batch and whose sends wait for room in the
/// connection's send queue rather than fail, as the backend's.
fn waiting_producer() -> producer::ProducerOptions {
    producer::ProducerOptions {
        block_queue_if_full: true,
        ..Default::default()
    }
}

/// `publishers` tasks publish through the contract to a fresh topic for
/// `duration`.
async fn publish_gateway(sides: &Sides, publishers: usize, duration: Duration) -> Tally {
    let topic = sides.fresh_topic("publish-gateway");
    let backend = &sides.backend;
    let payload = payload();
    // The first publish creates the topic and the producer, and resolves
    // its offset with the admin API: set-up, not throughput.
    backend
        .publish(&topic, NewMessage::new(payload.clone()))
        .await
        .expect("first publish");
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let tasks = common::spawn_publishers(backend, &topic, &payload, publishers, &stop);
    let tally = finish(tasks, stop, started, duration).await;
    sides.delete(&topic).await;
    tally
}

/// `publishers` tasks publish with the crate to a fresh topic for
/// `duration`, sharing one producer.
async fn publish_direct(sides: &Sides, publishers: usize, duration: Duration) -> Tally {
    let topic = sides.fresh_topic("publish-direct");
    let payload = payload();
    let mut producer = sides
        .client
        .producer()
        .with_topic(topic.as_str())
        .with_options(waiting_producer())
        .build()
        .await
        .expect("producer");
    // As on the gateway side: the topic exists and the producer is ready.
    producer
        .send_non_blocking(raw_message(&payload))
        .await
        .expect("first send")
        .await
        .expect("first receipt");
    let producer = Arc::new(tokio::sync::Mutex::new(producer));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let tasks: Vec<_> = (0..publishers)
        .map(|_| {
            let (producer, payload, stop) = (producer.clone(), payload.clone(), stop.clone());
            tokio::spawn(async move {
                let mut acked = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let receipt = producer
                        .lock()
                        .await
                        .send_non_blocking(raw_message(&payload))
                        .await
                        .expect("send");
                    receipt.await.expect("receipt");
                    acked += 1;
                }
                acked
            })
        })
        .collect();
    let tally = finish(tasks, stop, started, duration).await;
    let _ = producer.lock().await.close().await;
    sides.delete(&topic).await;
    tally
}

/// Lets publisher tasks run for `duration`, stops them and counts.
async fn finish(
    tasks: Vec<tokio::task::JoinHandle<u64>>,
    stop: Arc<AtomicBool>,
    started: Instant,
    duration: Duration,
) -> Tally {
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut messages = 0;
    for task in tasks {
        messages += task.await.expect("publisher task");
    }
    Tally {
        messages,
        seconds: started.elapsed().as_secs_f64(),
    }
}

/// Publishes `count` messages to `topic` with the crate, `FILL_WINDOW` in
/// flight.
async fn fill(client: &Pulsar<TokioExecutor>, topic: &TopicName, count: u64) {
    let payload = payload();
    let mut producer: Producer<TokioExecutor> = client
        .producer()
        .with_topic(topic.as_str())
        .with_options(waiting_producer())
        .build()
        .await
        .expect("fill producer");
    let mut in_flight = futures::stream::FuturesOrdered::<producer::SendFuture>::new();
    for _ in 0..count {
        if in_flight.len() >= FILL_WINDOW {
            in_flight
                .next()
                .await
                .expect("in flight")
                .expect("fill receipt");
        }
        let receipt = producer
            .send_non_blocking(raw_message(&payload))
            .await
            .expect("fill send");
        in_flight.push_back(receipt);
    }
    while let Some(receipt) = in_flight.next().await {
        receipt.expect("fill receipt");
    }
    let _ = producer.close().await;
}

/// Drains `count` messages through a contract subscription, acknowledging
/// each.
async fn drain_gateway(backend: &PulsarBackend, topic: &TopicName, count: u64) -> Tally {
    let mut request = SubscribeRequest::new(topic.clone(), SUBSCRIPTION);
    request.receive_queue = RECEIVE_QUEUE;
    let subscription = backend.subscribe(request).await.expect("subscribe");
    let started = Instant::now();
    let mut bytes = 0;
    for _ in 0..count {
        let message = tokio::time::timeout(RECEIVE_TIMEOUT, subscription.receive())
            .await
            .expect("the drain stalled")
            .expect("receive");
        bytes += message.payload.len();
        subscription
            .ack(&message.topic, message.id)
            .await
            .expect("ack");
    }
    let seconds = started.elapsed().as_secs_f64();
    assert_eq!(bytes, count as usize * PAYLOAD_BYTES);
    subscription.close().await.expect("close subscription");
    Tally {
        messages: count,
        seconds,
    }
}

/// Drains `count` messages with the crate's consumer, acknowledging each.
async fn drain_direct(client: &Pulsar<TokioExecutor>, topic: &TopicName, count: u64) -> Tally {
    let options = ConsumerOptions::default()
        .durable(true)
        .with_receiver_queue_size(RECEIVE_QUEUE as u32)
        .with_initial_position(InitialPosition::Earliest);
    let mut consumer: Consumer<Vec<u8>, TokioExecutor> = client
        .consumer()
        .with_topic(topic.as_str())
        .with_subscription(SUBSCRIPTION)
        .with_subscription_type(SubType::Exclusive)
        .with_options(options)
        .build()
        .await
        .expect("consumer");
    let started = Instant::now();
    let mut bytes = 0;
    for _ in 0..count {
        let message = tokio::time::timeout(RECEIVE_TIMEOUT, consumer.next())
            .await
            .expect("the drain stalled")
            .expect("consumer ended")
            .expect("receive");
        bytes += message.payload.data.len();
        consumer.ack(&message).await.expect("ack");
    }
    let seconds = started.elapsed().as_secs_f64();
    assert_eq!(bytes, count as usize * PAYLOAD_BYTES);
    consumer.close().await.expect("close consumer");
    Tally {
        messages: count,
        seconds,
    }
}
