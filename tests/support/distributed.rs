//! The distributed ledger under test: the three services of `ledger
//! command-api | projector | query-api`, run in this process on a fresh
//! topic prefix and keyspace of the real Kafka and CQL database
//! (`scripts/infra env` exports their addresses).

use ledger_cli::cluster::{ClusterSettings, Role, Service};
use ledger_cli::Settings;
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
        snapshot_every_events: 500,
        http_addr: Some("127.0.0.1:0".parse().expect("literal address")),
        jwt_secret: String::from_utf8(settings.jwt_secret.clone()).expect("test secret is text"),
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
    let app = TestApp::connect(
        command_urls[0].clone(),
        query_url,
        Some(stop),
        Some(server),
        None,
    );
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
    let nodes: Vec<&str> = contact.split(',').map(str::trim).collect();
    match scylla::client::session_builder::SessionBuilder::new()
        .known_nodes(nodes)
        .build()
        .await
    {
        Ok(session) => {
            let statement = format!("DROP KEYSPACE IF EXISTS {keyspace}");
            if let Err(error) = session.query_unpaged(statement, &[]).await {
                eprintln!("could not drop keyspace {keyspace}: {error}");
            }
        }
        Err(error) => eprintln!("could not connect to drop keyspace {keyspace}: {error}"),
    }
}
