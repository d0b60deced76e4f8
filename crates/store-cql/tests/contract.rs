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
                    format!("SELECT first_sequence FROM {keyspace}.records WHERE shard = 0 AND bucket = {bucket}")
                )
                .await,
                expected
            );
        }
        assert_eq!(
            sequences_in(
                &store,
                format!("SELECT bucket FROM {keyspace}.record_buckets WHERE shard = 0")
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

/// One row per record in `records`, keyed and bucketed by the record's
/// first sequence, with its last sequence beside it; nothing goes to the
/// pre-fencing `events` table, and a record is read from any sequence
/// inside it, across the buckets it spans.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_is_one_row_keyed_by_its_first_sequence() {
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
        for (bucket, expected) in [(0, vec![1]), (1, vec![6, 7]), (2, vec![]), (3, vec![])] {
            assert_eq!(
                sequences_in(
                    &store,
                    format!("SELECT first_sequence FROM {keyspace}.records WHERE shard = 0 AND bucket = {bucket}")
                )
                .await,
                expected,
                "bucket {bucket}"
            );
        }
        assert_eq!(
            sequences_in(
                &store,
                format!("SELECT bucket FROM {keyspace}.record_buckets WHERE shard = 0")
            )
            .await,
            vec![0, 1]
        );
        assert_eq!(
            sequences_in(
                &store,
                format!("SELECT last_sequence FROM {keyspace}.records WHERE shard = 0 AND bucket = 1")
            )
            .await,
            vec![6, 13]
        );
        assert!(sequences_in(
            &store,
            format!("SELECT sequence FROM {keyspace}.events WHERE shard = 0 AND bucket IN (0, 1, 2, 3)")
        )
        .await
        .is_empty());
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

/// A second store on the same keyspace: another writer process.
async fn second_writer(store: &CqlStore) -> Arc<CqlStore> {
    CqlStore::connect(
        &contact_points(),
        store.keyspace(),
        store.settings().clone(),
    )
    .await
    .expect("a second writer connects")
}

fn assert_head_moved(error: &StoreError, sequence: u64) {
    assert!(
        matches!(error, StoreError::HeadMoved { shard: ShardId(0), sequence: moved } if *moved == sequence),
        "{error}"
    );
}

/// The zombie gap, closed: a writer superseded by a takeover cannot append
/// at the head it knows, whether the new owner has written there yet or
/// only claimed it; an unfilled claim is taken over by the next owner; two
/// writers continuing from one head collide; the log keeps one history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_superseded_writer_cannot_append_and_the_log_keeps_one_history() {
    with_small_buckets(|old_owner| async move {
        // The first owner takes the shard over and appends events 1 and 2.
        let mut log = Log::default();
        old_owner.recover(ShardId(0)).await.expect("recovery reads");
        old_owner
            .claim_shard(ShardId(0), 1)
            .await
            .expect("an empty shard is claimed");
        let first = log.seal_many(0, grant_events("a", 2), 1);
        old_owner
            .append(vec![batch(0, vec![first.clone()], Vec::new())])
            .await
            .expect("the owner appends");

        // It pauses; a new owner takes over (recovers, claims event 3) and
        // has written nothing yet when the old one wakes up.
        let new_owner = second_writer(&old_owner).await;
        let recovered = new_owner.recover(ShardId(0)).await.expect("recovery reads");
        assert_eq!(recovered.records, vec![first.clone()]);
        new_owner
            .claim_shard(ShardId(0), 3)
            .await
            .expect("the new owner claims the next event");
        let mut zombie_log = log.clone();
        let zombie = zombie_log.seal_many(0, grant_events("zombie", 3), 2);
        let error = old_owner
            .append(vec![batch(0, vec![zombie.clone()], messages(0, 1, 1, 1))])
            .await
            .expect_err("the superseded owner is refused at the claimed event");
        assert_head_moved(&error, 3);
        // Nothing of the refused append is visible: no record, no message.
        assert_eq!(read_all(&new_owner, 0).await, vec![first.clone()]);
        assert!(new_owner
            .pending_messages(ShardId(1), &std::collections::BTreeMap::new())
            .await
            .expect("messages read")
            .is_empty());

        // The new owner fills its claim; the old one is still refused.
        let second = log.seal_many(0, grant_events("b", 2), 3);
        new_owner
            .append(vec![batch(0, vec![second.clone()], Vec::new())])
            .await
            .expect("the new owner appends at its claim");
        let error = old_owner
            .append(vec![batch(0, vec![zombie], Vec::new())])
            .await
            .expect_err("the superseded owner is refused at a filled event");
        assert_head_moved(&error, 3);

        // A third owner claims event 5 and dies before writing; a fourth
        // takes the unfilled claim over, and the third cannot use it.
        let third_owner = second_writer(&old_owner).await;
        third_owner
            .recover(ShardId(0))
            .await
            .expect("recovery reads");
        third_owner
            .claim_shard(ShardId(0), 5)
            .await
            .expect("the third owner claims");
        let fourth_owner = second_writer(&old_owner).await;
        fourth_owner
            .recover(ShardId(0))
            .await
            .expect("recovery reads");
        fourth_owner
            .claim_shard(ShardId(0), 5)
            .await
            .expect("an unfilled claim is taken over");
        let mut third_log = log.clone();
        let error = third_owner
            .append(vec![batch(
                0,
                vec![third_log.seal_many(0, grant_events("third", 1), 4)],
                Vec::new(),
            )])
            .await
            .expect_err("a claim taken over no longer admits its writer");
        assert_head_moved(&error, 5);
        // A claim on a sequence already written means the log moved on.
        let error = third_owner
            .claim_shard(ShardId(0), 3)
            .await
            .expect_err("a written sequence cannot be claimed");
        assert_head_moved(&error, 3);
        let fourth = log.seal_many(0, grant_events("c", 1), 4);
        fourth_owner
            .append(vec![batch(0, vec![fourth.clone()], Vec::new())])
            .await
            .expect("the fourth owner appends at its claim");

        // Two writers continuing from one head without claims: the first
        // wins, the second is refused, and re-sending the winner's record
        // is a no-op.
        let racer = second_writer(&old_owner).await;
        racer.recover(ShardId(0)).await.expect("recovery reads");
        let mut racer_log = log.clone();
        let winner = log.seal_many(0, grant_events("d", 2), 5);
        fourth_owner
            .append(vec![batch(0, vec![winner.clone()], Vec::new())])
            .await
            .expect("the first of two writers appends");
        let error = racer
            .append(vec![batch(
                0,
                vec![racer_log.seal_many(0, grant_events("e", 2), 5)],
                Vec::new(),
            )])
            .await
            .expect_err("the second of two writers is refused");
        assert_head_moved(&error, 6);
        racer
            .append(vec![batch(0, vec![winner.clone()], Vec::new())])
            .await
            .expect("re-sending the stored record is a no-op");

        let history = vec![first, second, fourth, winner];
        for store in [&old_owner, &new_owner, &third_owner, &fourth_owner, &racer] {
            assert_eq!(read_all(store, 0).await, history);
            let recovered = store.recover(ShardId(0)).await.expect("recovery reads");
            assert_eq!(recovered.records, history);
        }
    })
    .await;
}

async fn read_all(store: &CqlStore, shard: u16) -> Vec<ledger_core::codec::BatchRecord> {
    store
        .read_shard(ShardId(shard), 0, 1_000)
        .await
        .expect("shard reads")
}
