//! The shared event-store contract against a real CQL database, plus what
//! only the CQL store promises (bucket layout, snapshot trimming, layout
//! checks). Off by default; run with
//!
//! ```sh
//! scripts/infra up cassandra && scripts/infra wait cassandra
//! env $(scripts/infra env) cargo test -p ledger-store-cql --features cql-tests
//! ```
//!
//! Every test uses its own fresh keyspace (so tests run in parallel against
//! one node) and drops it at the end, pass or fail.
#![cfg(feature = "cql-tests")]

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use engine::ports::{EventStore, StoreError};
use ledger_core::codec::Snapshot;
use ledger_core::{ShardId, ShardState};
use store_contract::support::{batch, messages, Log};
use store_contract::StoreFixture;

use ledger_store_cql::{CqlSettings, CqlStore};

/// The contact points from `LEDGER_CQL_CONTACT` (comma-separated); fails
/// the test with instructions when it is unset.
fn contact_points() -> Vec<String> {
    match std::env::var("LEDGER_CQL_CONTACT") {
        Ok(value) if !value.trim().is_empty() => value
            .split(',')
            .map(|contact| contact.trim().to_string())
            .filter(|contact| !contact.is_empty())
            .collect(),
        _ => panic!(
            "LEDGER_CQL_CONTACT is not set: these tests need a real CQL database. Run \
             `scripts/infra up cassandra && scripts/infra wait cassandra`, then \
             `export $(scripts/infra env)` (or prefix the command with `env $(scripts/infra env)`)"
        ),
    }
}

/// A keyspace name no other test (or test run) uses.
fn unique_keyspace() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|duration| duration.subsec_nanos())
        .unwrap_or(0);
    format!(
        "ledger_test_{}_{}_{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Small buckets, so a few records already span several partitions.
fn small_bucket_settings() -> CqlSettings {
    CqlSettings {
        events_per_bucket: 4,
        messages_per_bucket: 3,
        ..CqlSettings::default()
    }
}

/// A store in its own keyspace, dropped after the check.
struct CqlFixture {
    store: Arc<CqlStore>,
}

impl CqlFixture {
    async fn connect(settings: CqlSettings) -> Self {
        let keyspace = unique_keyspace();
        let store = CqlStore::connect(&contact_points(), &keyspace, settings)
            .await
            .unwrap_or_else(|error| panic!("cql store connects to keyspace {keyspace}: {error}"));
        Self { store }
    }
}

impl StoreFixture for CqlFixture {
    fn store(&self) -> Arc<dyn EventStore> {
        Arc::clone(&self.store) as Arc<dyn EventStore>
    }

    fn tear_down(self) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(async move {
            let drop_keyspace = format!("DROP KEYSPACE IF EXISTS {}", self.store.keyspace());
            if let Err(error) = self
                .store
                .session()
                .query_unpaged(drop_keyspace.as_str(), &[])
                .await
            {
                eprintln!(
                    "cannot drop test keyspace {}: {error}",
                    self.store.keyspace()
                );
            }
        })
    }
}

async fn fresh_store() -> CqlFixture {
    CqlFixture::connect(CqlSettings::default()).await
}

async fn fresh_store_with_small_buckets() -> CqlFixture {
    CqlFixture::connect(small_bucket_settings()).await
}

/// The contract with production bucket sizes (10,000 per partition).
mod contract {
    store_contract::event_store_contract_tests!(super::fresh_store);
}

/// The contract again with 4 events and 3 messages per partition: every
/// read and write crosses partition boundaries.
mod contract_with_small_buckets {
    store_contract::event_store_contract_tests!(super::fresh_store_with_small_buckets);
}

/// Runs `check` on a store with small buckets, dropping its keyspace after.
async fn with_small_buckets<Check, CheckFuture>(check: Check)
where
    Check: FnOnce(Arc<CqlStore>) -> CheckFuture,
    CheckFuture: Future<Output = ()> + Send + 'static,
{
    let fixture = fresh_store_with_small_buckets().await;
    let store = Arc::clone(&fixture.store);
    store_contract::run_check(move || async move { fixture }, |_| check(store)).await;
}

async fn sequences_in(store: &CqlStore, query: String) -> Vec<i64> {
    store
        .session()
        .query_unpaged(query.as_str(), &[])
        .await
        .expect("query runs")
        .into_rows_result()
        .expect("rows come back")
        .rows::<(i64,)>()
        .expect("bigint column")
        .map(|row| row.expect("row decodes").0)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_and_messages_fill_bounded_partitions() {
    with_small_buckets(|store| async move {
        let mut log = Log::default();
        let records = log.grants(0, "g", 10);
        store
            .append(vec![batch(0, records, messages(0, 1, 1, 7))])
            .await
            .expect("append succeeds");
        let keyspace = store.keyspace().to_string();
        for (bucket, expected) in [(0, vec![1, 2, 3]), (1, vec![4, 5, 6, 7]), (2, vec![8, 9, 10])] {
            assert_eq!(
                sequences_in(
                    &store,
                    format!("SELECT sequence FROM {keyspace}.events WHERE shard = 0 AND bucket = {bucket}")
                )
                .await,
                expected
            );
        }
        assert_eq!(
            sequences_in(
                &store,
                format!("SELECT bucket FROM {keyspace}.event_buckets WHERE shard = 0")
            )
            .await,
            vec![0, 1, 2]
        );
        for (bucket, expected) in [(0, vec![1, 2]), (1, vec![3, 4, 5]), (2, vec![6, 7])] {
            assert_eq!(
                sequences_in(
                    &store,
                    format!(
                        "SELECT sequence FROM {keyspace}.messages WHERE receiver = 1 AND sender = 0 AND bucket = {bucket}"
                    )
                )
                .await,
                expected
            );
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_latest_snapshots_are_kept() {
    with_small_buckets(|store| async move {
        let mut log = Log::default();
        let records = log.grants(3, "g", 6);
        store
            .append(vec![batch(3, records.clone(), Vec::new())])
            .await
            .expect("append succeeds");
        for taken_after in 1..=6_u64 {
            let mut state = ShardState::new(ShardId(3));
            state.next_sequence = taken_after + 1;
            let snapshot = Snapshot {
                state,
                last_hash: records[taken_after as usize - 1].hash,
            };
            store
                .save_snapshot(ShardId(3), &snapshot)
                .await
                .expect("snapshot saves");
        }
        let keyspace = store.keyspace().to_string();
        assert_eq!(
            sequences_in(
                &store,
                format!("SELECT sequence FROM {keyspace}.snapshots WHERE shard = 3")
            )
            .await,
            vec![6, 5, 4]
        );
        assert_eq!(
            ledger_store_cql::SNAPSHOTS_KEPT_PER_SHARD,
            store.settings().snapshots_kept_per_shard
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnecting_keeps_the_data_and_refuses_other_bucket_sizes() {
    with_small_buckets(|store| async move {
        let mut log = Log::default();
        let records = log.grants(2, "g", 5);
        store
            .append(vec![batch(2, records.clone(), Vec::new())])
            .await
            .expect("append succeeds");

        // Connecting again (schema creation is idempotent) sees the data.
        let again = CqlStore::connect(&contact_points(), store.keyspace(), small_bucket_settings())
            .await
            .expect("reconnects");
        assert_eq!(
            again
                .read_shard(ShardId(2), 0, 100)
                .await
                .expect("shard reads"),
            records
        );

        // Other bucket sizes would look rows up in the wrong partitions.
        let error = CqlStore::connect(&contact_points(), store.keyspace(), CqlSettings::default())
            .await
            .expect_err("other bucket sizes are refused");
        assert!(
            matches!(&error, StoreError::Backend { operation: "connect", detail } if detail.contains("events_per_bucket is 4")),
            "{error}"
        );
    })
    .await;
}

#[tokio::test]
async fn bad_keyspace_names_and_settings_are_refused_before_connecting() {
    let nowhere = vec!["127.0.0.1:1".to_string()];
    let error = CqlStore::connect(&nowhere, "Bad-Name", CqlSettings::default())
        .await
        .expect_err("a bad keyspace name is refused");
    assert!(error.to_string().contains("keyspace name"), "{error}");
    let error = CqlStore::connect(
        &nowhere,
        "ledger",
        CqlSettings {
            events_per_bucket: 0,
            ..CqlSettings::default()
        },
    )
    .await
    .expect_err("empty buckets are refused");
    assert!(error.to_string().contains("events per bucket"), "{error}");
    let error = CqlStore::connect(&[], "ledger", CqlSettings::default())
        .await
        .expect_err("no contact point is refused");
    assert!(
        error.to_string().contains("no cql contact point"),
        "{error}"
    );
}

/// `count` currency grants to `user` as events (ids `{prefix}-{n}`).
fn grant_events(prefix: &str, count: i64) -> Vec<ledger_core::Event> {
    (1..=count)
        .map(|n| store_contract::support::grant(&format!("{prefix}-{n}"), "alice", n, n))
        .collect()
}

/// One row per record, keyed and bucketed by the record's last sequence;
/// the per-event columns of format 1 rows stay empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_is_one_row_keyed_by_its_last_sequence() {
    with_small_buckets(|store| async move {
        let mut log = Log::default();
        let first = log.seal_many(0, grant_events("a", 5), 1);
        let second = log.seal_many(0, grant_events("b", 1), 2);
        let third = log.seal_many(0, grant_events("c", 7), 3);
        store
            .append(vec![batch(
                0,
                vec![first.clone(), second.clone(), third.clone()],
                Vec::new(),
            )])
            .await
            .expect("append succeeds");
        let keyspace = store.keyspace().to_string();
        for (bucket, expected) in [(0, vec![]), (1, vec![5, 6]), (2, vec![]), (3, vec![13])] {
            assert_eq!(
                sequences_in(
                    &store,
                    format!("SELECT sequence FROM {keyspace}.events WHERE shard = 0 AND bucket = {bucket}")
                )
                .await,
                expected,
                "bucket {bucket}"
            );
        }
        assert_eq!(
            sequences_in(
                &store,
                format!("SELECT bucket FROM {keyspace}.event_buckets WHERE shard = 0")
            )
            .await,
            vec![1, 3]
        );
        let rows = store
            .session()
            .query_unpaged(
                format!(
                    "SELECT event_type, schema_version, cause, timestamp_ms FROM {keyspace}.events WHERE shard = 0 AND bucket = 3"
                ),
                &[],
            )
            .await
            .expect("query runs")
            .into_rows_result()
            .expect("rows come back")
            .rows::<(Option<String>, Option<i32>, Option<String>, Option<i64>)>()
            .expect("nullable columns")
            .map(|row| row.expect("row decodes"))
            .collect::<Vec<_>>();
        assert_eq!(rows, vec![(None, None, None, None)]);
        for (after, expected) in [
            (0, vec![first.clone(), second.clone(), third.clone()]),
            (4, vec![first.clone(), second.clone(), third.clone()]),
            (5, vec![second.clone(), third.clone()]),
            (6, vec![third.clone()]),
            (12, vec![third.clone()]),
            (13, vec![]),
        ] {
            assert_eq!(
                store
                    .read_shard(ShardId(0), after, 10)
                    .await
                    .expect("shard reads"),
                expected,
                "after {after}"
            );
        }
    })
    .await;
}

/// A new record whose sequences hold a stored row of another record is
/// refused, and nothing of its append is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_overlapping_a_stored_one_is_refused() {
    with_small_buckets(|store| async move {
        let mut log = Log::default();
        let stored = log.seal_many(0, grant_events("a", 5), 1);
        store
            .append(vec![batch(0, vec![stored.clone()], Vec::new())])
            .await
            .expect("append succeeds");
        // Events 4 to 8, sealed over another history: event 5 is stored
        // as the end of the first record.
        let overlapping = ledger_core::codec::BatchRecord::seal(
            ShardId(0),
            4,
            stored.hash,
            vec![ledger_core::codec::InputEntries {
                cause: "test".to_string(),
                timestamp_ms: 9,
                entries: grant_events("b", 5)
                    .iter()
                    .map(ledger_core::codec::Entry::from_event)
                    .collect(),
            }],
        );
        let error = store
            .append(vec![batch(
                0,
                vec![overlapping],
                messages(0, 1, 1, 2),
            )])
            .await
            .expect_err("an overlapping record is refused");
        assert!(
            matches!(&error, StoreError::Backend { operation: "append", detail } if detail.contains("event 5 of shard 0")),
            "{error}"
        );
        assert_eq!(
            store
                .read_shard(ShardId(0), 0, 10)
                .await
                .expect("shard reads"),
            vec![stored]
        );
        assert!(store
            .pending_messages(ShardId(1), &std::collections::BTreeMap::new())
            .await
            .expect("messages read")
            .is_empty());
    })
    .await;
}

/// A keyspace written before records (one format 1 envelope per row, with
/// every per-event column) reads as records of one entry, and the log
/// continues with records chained to the last envelope.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn format_one_rows_read_as_records_and_the_chain_continues() {
    with_small_buckets(|store| async move {
        let keyspace = store.keyspace().to_string();
        let insert = format!(
            "INSERT INTO {keyspace}.events (shard, bucket, sequence, event_type, schema_version, cause, timestamp_ms, hash, envelope) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
        );
        let mut previous = ledger_core::codec::GENESIS_HASH;
        let mut envelopes = Vec::new();
        for (index, event) in grant_events("old", 6).iter().enumerate() {
            let sequence = index as u64 + 1;
            let envelope = ledger_core::codec::Envelope::seal(
                event,
                ShardId(1),
                sequence,
                "command:grant:old",
                1_000 + sequence,
                previous,
            );
            previous = envelope.hash;
            envelopes.push(envelope);
        }
        for envelope in &envelopes {
            let bucket = (envelope.sequence / 4) as i64;
            store
                .session()
                .query_unpaged(
                    format!("INSERT INTO {keyspace}.event_buckets (shard, bucket) VALUES (1, {bucket})"),
                    &[],
                )
                .await
                .expect("bucket row");
            store
                .session()
                .query_unpaged(
                    insert.as_str(),
                    (
                        1_i32,
                        bucket,
                        envelope.sequence as i64,
                        envelope.event_type.clone(),
                        i32::from(envelope.schema_version),
                        envelope.cause.clone(),
                        envelope.timestamp_ms as i64,
                        envelope.hash.to_vec(),
                        envelope.to_bytes(),
                    ),
                )
                .await
                .expect("format 1 row");
        }
        let old: Vec<_> = envelopes
            .iter()
            .cloned()
            .map(ledger_core::codec::BatchRecord::from_envelope)
            .collect();
        assert_eq!(
            store
                .read_shard(ShardId(1), 0, 100)
                .await
                .expect("shard reads"),
            old
        );
        // Re-appending a format 1 record is a no-op: it is written back as
        // the same envelope, with the same hash.
        store
            .append(vec![batch(1, old[4..].to_vec(), Vec::new())])
            .await
            .expect("a stored record appends again");

        let new = ledger_core::codec::BatchRecord::seal(
            ShardId(1),
            7,
            previous,
            vec![ledger_core::codec::InputEntries {
                cause: "command:grant:new".to_string(),
                timestamp_ms: 2_000,
                entries: grant_events("new", 3)
                    .iter()
                    .map(ledger_core::codec::Entry::from_event)
                    .collect(),
            }],
        );
        store
            .append(vec![batch(1, vec![new.clone()], Vec::new())])
            .await
            .expect("a record continues the format 1 log");
        let all = store
            .read_shard(ShardId(1), 0, 100)
            .await
            .expect("shard reads");
        assert_eq!(all.len(), 7);
        assert_eq!(all[..6], old[..]);
        assert_eq!(all[6], new);
        assert_eq!(
            store
                .read_shard(ShardId(1), 6, 100)
                .await
                .expect("shard reads"),
            vec![new.clone()]
        );
        let recovery = store.recover(ShardId(1)).await.expect("recovery reads");
        assert_eq!(recovery.records, all);
        let runner = engine::shard::ShardRunner::<()>::restore(
            ShardId(1),
            std::sync::Arc::new(ledger_core::Config::new(4)),
            recovery,
        )
        .expect("the chain continues across formats");
        assert_eq!(runner.state.next_sequence, 10);
    })
    .await;
}
