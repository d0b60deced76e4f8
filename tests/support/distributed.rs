//! The distributed ledger under test: the services of `ledger
//! command-api | projector | query-api | public-stream`, run in this process on a fresh
//! topic prefix and keyspace of the real Kafka and CQL database
//! (`scripts/infra env` exports their addresses).

use ledger_cli::cluster::{ClusterSettings, Role, Service};
use ledger_cli::Settings;
use secrecy::ExposeSecret;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::TestApp;

fn required_env(name: &str) -> String {
    match std::env::var(name) {
        Ok(value) if !value.trim().is_empty() => value,
        _ => panic!(
            "{name} is not set: the distributed backend needs a real Kafka and CQL database. \
             Run `scripts/infra up && scripts/infra wait && eval \"$(scripts/infra env)\"` first."
        ),
    }
}

/// A name no other test run uses: topic prefix and keyspace (CQL: letters,
/// digits and underscores, starting with a letter, at most 48 characters).
pub fn unique_name() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_nanos())
        .unwrap_or(0);
    format!(
        "t{}_{}_{}",
        nanos % 1_000_000_000_000,
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    )
}

/// Cluster settings equivalent to the embedded test `settings`, on a fresh
/// topic prefix and keyspace.
pub fn cluster_settings(settings: &Settings) -> ClusterSettings {
    let name = unique_name();
    ClusterSettings {
        shards: settings.shard_count,
        topic_prefix: name.clone(),
        kafka_bootstrap: required_env("LEDGER_KAFKA_BOOTSTRAP"),
        cql_contact: required_env("LEDGER_CQL_CONTACT"),
        cql_keyspace: name,
        topic_replication: 1,
        reply_partitions: 2,
        read_wait_ms: settings.read_wait.as_millis() as u64,
        escrow_hold_ms: settings.escrow_hold.as_millis() as u64,
        resale_hold_ms: settings.resale_hold.as_millis() as u64,
        tick_interval_ms: settings.tick_interval.as_millis() as u64,
        idempotency_horizon_ms: settings.idempotency_horizon.as_millis() as u64,
        purchase_limit: settings.purchase_limits.purchases_per_window,
        purchase_window_ms: settings.purchase_limits.purchase_window_ms,
        item_request_interval_ms: settings.purchase_limits.item_request_interval_ms,
        snapshot_every_events: 500,
        http_addr: Some("127.0.0.1:0".parse().expect("literal address")),
        jwt_secret: secrecy::SecretString::from(
            String::from_utf8(settings.jwt_secret.expose_secret().to_vec())
                .expect("test secret is text"),
        ),
        jwt_secret_previous: secrecy::SecretString::default(),
        engine: true,
        projector_group: None,
    }
}

/// Starts a projector, a query API and `command_apis` command APIs (each
/// with an engine worker), and returns a [`TestApp`] on the first command API.
pub async fn spawn(settings: &Settings, command_apis: usize) -> TestApp {
    let cluster = cluster_settings(settings);
    let (app, _) = spawn_cluster(&cluster, command_apis, true).await;
    app
}

/// As [`spawn`], on given settings, with or without a projector service;
/// also returns every command API's URL.
pub async fn spawn_cluster(
    cluster: &ClusterSettings,
    command_apis: usize,
    with_projector: bool,
) -> (TestApp, Vec<String>) {
    init_test_log();
    assert!(command_apis >= 1, "at least one command API");
    let mut services = Vec::new();
    let mut command_urls = Vec::new();
    for index in 0..command_apis {
        let service = Service::build(Role::CommandApi, cluster.clone())
            .await
            .unwrap_or_else(|error| panic!("command API {index} starts: {error}"));
        command_urls.push(format!("http://{}", service.local_addr()));
        services.push(service);
    }
    if with_projector {
        let projector = Service::build(Role::Projector, cluster.clone())
            .await
            .unwrap_or_else(|error| panic!("projector starts: {error}"));
        services.push(projector);
        let public_stream = Service::build(Role::PublicStream, cluster.clone())
            .await
            .unwrap_or_else(|error| panic!("public stream starts: {error}"));
        services.push(public_stream);
    }
    let query = Service::build(Role::QueryApi, cluster.clone())
        .await
        .unwrap_or_else(|error| panic!("query API starts: {error}"));
    let query_url = format!("http://{}", query.local_addr());
    services.push(query);
    let stoppers: Vec<_> = services.iter().map(Service::stopper).collect();
    let cleanup = cluster.clone();
    let (stop, mut stopping) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(async move {
        let running: Vec<_> = services
            .into_iter()
            .map(|service| tokio::spawn(service.run_until_stopped()))
            .collect();
        let _ = stopping.wait_for(|stopped| *stopped).await;
        for stopper in stoppers {
            let _ = stopper.send(true);
        }
        for service in running {
            let _ = service.await;
        }
        remove_cluster_data(&cleanup).await;
        Ok(())
    });
    let mut app = TestApp::connect(
        command_urls[0].clone(),
        query_url,
        Some(stop),
        Some(server),
        None,
    );
    if with_projector {
        app.public_topic = Some((
            cluster.kafka_bootstrap.clone(),
            log_kafka::Topics::with_prefix(&cluster.topic_prefix).public,
        ));
    }
    (app, command_urls)
}

/// With `LEDGER_TEST_LOG=<filter>` (e.g. `info,distributed=debug`) the
/// services' logs go to the test's output; silent otherwise.
pub fn init_test_log() {
    if let Ok(filter) = std::env::var("LEDGER_TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    }
}

/// Drops the keyspace and deletes the topics of a test cluster: each test
/// makes its own, and a shared Cassandra holding hundreds of keyspaces runs
/// out of heap. Best effort (a failure only leaves data behind).
pub async fn remove_cluster_data(cluster: &ClusterSettings) {
    drop_keyspace(&cluster.cql_contact, &cluster.cql_keyspace).await;
    let kafka = log_kafka::KafkaConfig::new(cluster.kafka_bootstrap.clone());
    if let Ok(admin) = log_kafka::TopicAdmin::connect(&kafka) {
        let topics = log_kafka::Topics::with_prefix(&cluster.topic_prefix);
        if let Err(error) = admin.delete_topics(&topics).await {
            eprintln!(
                "could not delete the topics of {}: {error}",
                cluster.topic_prefix
            );
        }
    }
}

/// `DROP KEYSPACE IF EXISTS`, best effort.
pub async fn drop_keyspace(contact: &str, keyspace: &str) {
    let contact_points: Vec<String> = contact
        .split(',')
        .map(|point| point.trim().to_string())
        .collect();
    if let Err(error) = store_cql::drop_keyspace(&contact_points, keyspace).await {
        eprintln!("could not drop keyspace {keyspace}: {error}");
    }
}

/// Every record of the public topic `topic` (`read_committed`, every
/// partition from its start to its end), in structured form: the
/// CloudEvents headers as attributes, the value as `data`. Records of one
/// partition keep their order; partitions follow each other.
pub fn read_public_topic(bootstrap: &str, topic: &str) -> Vec<public_events::StructuredEvent> {
    use log_kafka::rdkafka::consumer::{BaseConsumer, Consumer};
    use log_kafka::rdkafka::message::{Headers, Message};
    use log_kafka::rdkafka::{Offset, TopicPartitionList};
    use std::time::{Duration, Instant};

    let config = log_kafka::KafkaConfig::new(bootstrap.to_string());
    let partitions = log_kafka::partition_count(&config, topic, Duration::from_secs(30))
        .expect("the public topic's metadata");
    assert!(partitions > 0, "the public topic {topic} exists");
    let consumer: BaseConsumer = config
        .client_config(&[
            ("group.id", &format!("{topic}.test-reader")),
            ("isolation.level", "read_committed"),
            ("enable.auto.commit", "false"),
            ("enable.partition.eof", "true"),
        ])
        .create()
        .expect("a public topic reader");
    let mut events = Vec::new();
    for partition in 0..partitions {
        let mut assignment = TopicPartitionList::new();
        assignment
            .add_partition_offset(topic, partition, Offset::Beginning)
            .expect("an assignment");
        consumer.assign(&assignment).expect("assigned");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            assert!(
                Instant::now() < deadline,
                "the end of {topic}/{partition} is reached"
            );
            let Some(polled) = consumer.poll(Duration::from_millis(500)) else {
                continue;
            };
            let message = match polled {
                Ok(message) => message,
                Err(log_kafka::rdkafka::error::KafkaError::PartitionEOF(_)) => break,
                Err(error) => panic!("reading {topic}/{partition}: {error}"),
            };
            let mut attributes = std::collections::BTreeMap::new();
            if let Some(headers) = message.headers() {
                for header in headers.iter() {
                    let value = header
                        .value
                        .map(|bytes| String::from_utf8(bytes.to_vec()).expect("a text header"))
                        .unwrap_or_default();
                    attributes.insert(header.key.to_string(), value);
                }
            }
            let attribute = |name: &str| {
                attributes
                    .get(name)
                    .cloned()
                    .unwrap_or_else(|| panic!("the record has header {name}: {attributes:?}"))
            };
            let key = message
                .key()
                .map(|key| String::from_utf8(key.to_vec()).expect("a text key"))
                .expect("every public record has a key");
            assert_eq!(key, attribute("ce_subject"), "the key is the subject");
            let data: serde_json::Value =
                serde_json::from_slice(message.payload().expect("a value")).expect("JSON data");
            events.push(public_events::StructuredEvent {
                specversion: attribute("ce_specversion"),
                id: attribute("ce_id"),
                event_type: attribute("ce_type"),
                source: attribute("ce_source"),
                subject: attribute("ce_subject"),
                time: attribute("ce_time"),
                datacontenttype: attribute("content-type"),
                recordhash: attribute("ce_recordhash"),
                data,
            });
        }
    }
    events
}
