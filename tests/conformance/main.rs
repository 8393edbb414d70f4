//! The backend conformance suite: every case of `cases.rs` runs against
//! every backend through the handler contract alone.

mod cases;
mod cluster;
mod producers;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use gateway_api::topic::Namespace;
use gateway_api::{Backend, SubscribeRequest, Subscription, TopicName};
use pulsar_gateway::backend::embedded::{EmbeddedBackend, EmbeddedConfig};
use pulsar_gateway::backend::pulsar::{ProducerSettings, PulsarBackend, PulsarConfig};

/// Which backend a case runs against.
#[derive(Clone, Copy)]
pub enum Kind {
    Embedded,
    /// The real standalone `scripts/test.sh` starts; its URLs come from
    /// `PULSAR_GATEWAY_TEST_PULSAR_URL` and `PULSAR_GATEWAY_TEST_PULSAR_WEB_URL`.
    Pulsar,
}

/// A backend for one case, with what it takes to restart it.
pub struct TestBackend {
    /// The backend under test, through the contract only.
    pub backend: Arc<dyn Backend>,
    /// Unique per case: topic names and metadata keys include it, so cases
    /// never see each other's data on a shared cluster.
    pub run_id: String,
    /// The embedded store's directory, kept for restarts.
    dir: Arc<tempfile::TempDir>,
    kind: Kind,
}

impl TestBackend {
    pub async fn start(kind: Kind) -> TestBackend {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let dir = Arc::new(tempfile::tempdir().unwrap());
        let backend = open(kind, &dir).await;
        TestBackend {
            backend,
            run_id: format!("t{nanos:x}"),
            dir,
            kind,
        }
    }

    /// A topic name unique to this case.
    pub fn topic(&self, name: &str) -> TopicName {
        TopicName::from_kafka(&format!("{}-{name}", self.run_id), &Namespace::default()).unwrap()
    }

    /// Attaches a consumer, failing the case if the backend refuses.
    pub async fn subscribe(&self, request: SubscribeRequest) -> Box<dyn Subscription> {
        self.backend.subscribe(request).await.unwrap()
    }

    /// A second backend on the same cluster, as another gateway process
    /// would have (Pulsar only: the embedded store has one owner).
    pub async fn another(&self) -> Arc<dyn Backend> {
        assert!(
            matches!(self.kind, Kind::Pulsar),
            "only a Pulsar cluster is shared by two gateways"
        );
        open(self.kind, &self.dir).await
    }

    /// A second backend on the same cluster whose producers behave as
    /// `settings` says (Pulsar only).
    pub async fn with_producers(&self, settings: ProducerSettings) -> Arc<dyn Backend> {
        assert!(
            matches!(self.kind, Kind::Pulsar),
            "producer settings are Pulsar's"
        );
        let config = PulsarConfig {
            producers: settings,
            ..pulsar_config()
        };
        Arc::new(PulsarBackend::connect(config).await.unwrap())
    }

    /// Closes the backend and opens it again on the same data.
    pub async fn restart(self) -> TestBackend {
        self.backend.close().await.unwrap();
        drop(self.backend);
        let backend = open(self.kind, &self.dir).await;
        TestBackend { backend, ..self }
    }
}

async fn open(kind: Kind, dir: &tempfile::TempDir) -> Arc<dyn Backend> {
    match kind {
        Kind::Embedded => {
            let config = EmbeddedConfig::new(dir.path());
            Arc::new(EmbeddedBackend::open(config).await.unwrap())
        }
        Kind::Pulsar => Arc::new(PulsarBackend::connect(pulsar_config()).await.unwrap()),
    }
}

/// The test cluster `scripts/test.sh` started, with default settings.
fn pulsar_config() -> PulsarConfig {
    let url = |name: &str| {
        std::env::var(name).unwrap_or_else(|_| {
            panic!(
                "{name} is not set: the Pulsar backend's cases need a real Pulsar; \
                 run scripts/test.sh, which starts one (deploy/pulsar-standalone.sh)"
            )
        })
    };
    PulsarConfig::new(
        url("PULSAR_GATEWAY_TEST_PULSAR_URL"),
        url("PULSAR_GATEWAY_TEST_PULSAR_WEB_URL"),
    )
}

/// One test per case for a backend.
macro_rules! suite {
    ($kind:ident: $($case:ident),* $(,)?) => {
        #[allow(non_snake_case)]
        mod $kind {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::cases::$case(super::TestBackend::start(super::Kind::$kind).await).await
                }
            )*
        }
    };
}

/// The list of cases, written once for every backend.
macro_rules! all_cases {
    ($kind:ident) => {
        suite!($kind:
            publish_keeps_every_field_and_offsets_start_at_zero,
            concurrent_publishers_get_contiguous_offsets,
            a_published_batch_keeps_its_order_with_consecutive_offsets,
            exclusive_subscription_refuses_a_second_consumer,
            shared_subscription_spreads_messages_over_consumers,
            failover_standby_takes_over_unacked_messages,
            key_shared_keeps_each_key_on_one_consumer_in_order,
            key_shared_keeps_key_order_when_a_consumer_joins,
            acknowledged_messages_are_not_delivered_again,
            cumulative_ack_moves_the_cursor,
            nack_redelivers_with_a_higher_redelivery_count,
            unacked_messages_go_to_the_next_consumer,
            new_subscription_starts_where_asked,
            readers_start_at_every_kind_of_position,
            a_reader_polled_for_availability_reads_through_large_batches,
            a_reader_hands_over_what_is_at_hand_in_batches,
            subscription_seek_rewinds_and_skips,
            seeks_forget_buffered_messages_and_move_every_partition,
            partitioned_topics_route_by_key_and_subscribe_as_one,
            added_partitions_reach_existing_subscribers,
            pattern_subscriptions_pick_up_topics_created_later,
            topics_found_later_are_read_from_their_first_message,
            non_durable_subscriptions_leave_nothing_behind,
            unsubscribe_deletes_the_cursor,
            metadata_store_compares_and_sets,
            deleted_topics_are_gone,
            restart_keeps_messages_topics_and_cursors,
        );
    };
}

all_cases!(Embedded);

all_cases!(Pulsar);
