//! # ledger-store-contract
//!
//! The contract of the engine's [`EventStore`] port, written once and run
//! against every storage adapter (embedded SQLite, CQL). Each check is a
//! `pub async fn(Arc<dyn EventStore>)` that panics on a violation and expects
//! a fresh, empty store.
//!
//! Instantiate the whole suite in an adapter's integration tests with
//! [`event_store_contract_tests!`], giving it a function that opens a fresh
//! store wrapped in a [`StoreFixture`] (which cleans up after the check,
//! pass or fail):
//!
//! ```ignore
//! async fn fresh_store() -> MyFixture { /* open an empty store */ }
//! store_contract::event_store_contract_tests!(fresh_store);
//! ```
//!
//! This expands to one `#[tokio::test]` per check, named after the check.
//! [`run_event_store_contract`] runs every check in sequence instead.
//!
//! Backend-specific behaviour (SQLite's WAL mode, atomicity of a failed
//! group commit, CQL bucket layout) is tested in the adapters' own tests.
// Test support only (a dev-dependency of the stores' tests): a failed
// unwrap is a failed check, as in a test.
#![allow(clippy::unwrap_used)]

pub mod support;

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use engine::ports::{EventStore, ShardBatch, StoreError};
use ledger_core::codec::{BatchRecord, Snapshot};
use ledger_core::{ShardId, ShardState};

use crate::support::{batch, grant, message, messages, Log};

/// A store under test and whatever it needs to clean up afterwards.
pub trait StoreFixture: Send + 'static {
    /// The store the check runs against.
    fn store(&self) -> Arc<dyn EventStore>;

    /// Removes what the fixture created (directories, keyspaces). Runs after
    /// the check, whether it passed or panicked.
    fn tear_down(self) -> Pin<Box<dyn Future<Output = ()> + Send>>;
}

/// A bare store needs no cleanup.
impl StoreFixture for Arc<dyn EventStore> {
    fn store(&self) -> Arc<dyn EventStore> {
        Arc::clone(self)
    }

    fn tear_down(self) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(std::future::ready(()))
    }
}

/// A contract check: panics when the store violates the port's contract.
pub type Check = fn(Arc<dyn EventStore>) -> Pin<Box<dyn Future<Output = ()> + Send>>;

/// Opens a fresh fixture, runs `check` on its store (in its own task, so a
/// panic is caught), tears the fixture down, then re-raises the panic.
pub async fn run_check<Fresh, FreshFuture, Fixture, CheckFuture>(
    fresh_store: Fresh,
    check: impl FnOnce(Arc<dyn EventStore>) -> CheckFuture,
) where
    Fresh: FnOnce() -> FreshFuture,
    FreshFuture: Future<Output = Fixture>,
    Fixture: StoreFixture,
    CheckFuture: Future<Output = ()> + Send + 'static,
{
    let fixture = fresh_store().await;
    let outcome = tokio::spawn(check(fixture.store())).await;
    fixture.tear_down().await;
    if let Err(error) = outcome {
        match error.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(error) => panic!("the contract check did not finish: {error}"),
        }
    }
}

macro_rules! checks {
    ($dollar:tt; $($name:ident),* $(,)?) => {
        /// Every check of the contract, by name.
        pub const CHECKS: &[(&str, Check)] = &[
            $((stringify!($name), |store| Box::pin($name(store))),)*
        ];

        /// Expands to one `#[tokio::test]` per contract check, named after
        /// the check, each on a fresh store from `$fresh_store` (a
        /// `FnOnce() -> impl Future<Output = impl StoreFixture>`, typically
        /// the path of an `async fn`). The calling crate needs `tokio` with
        /// the `macros` and `rt-multi-thread` features.
        #[macro_export]
        macro_rules! event_store_contract_tests {
            ($dollar fresh_store:expr) => {
                $(
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $name() {
                        $dollar crate::run_check($dollar fresh_store, $dollar crate::$name).await;
                    }
                )*
            };
        }
    };
}

checks!(
    $;
    append_then_read_shard_round_trip,
    recover_returns_the_latest_snapshot_and_only_later_events,
    snapshots_of_several_shards_stay_separate,
    pending_messages_honour_next_expected_per_sender,
    re_appending_identical_events_and_messages_is_a_no_op,
    a_different_event_or_message_at_a_stored_key_is_refused,
    a_refused_append_writes_nothing,
    one_append_carries_several_shards,
    append_ordered_resolves_once_durable,
    concurrent_appends_of_many_shards_all_land,
    empty_appends_are_accepted,
    records_of_many_entries_are_read_from_any_sequence_inside_them,
);

/// Runs every check in sequence, each on a fresh fixture.
pub async fn run_event_store_contract<Fresh, FreshFuture, Fixture>(fresh_store: Fresh)
where
    Fresh: Fn() -> FreshFuture,
    FreshFuture: Future<Output = Fixture>,
    Fixture: StoreFixture,
{
    for (name, check) in CHECKS {
        eprintln!("event store contract: {name}");
        run_check(&fresh_store, check).await;
    }
}

async fn read_all(store: &dyn EventStore, shard: u16) -> Vec<BatchRecord> {
    store
        .read_shard(ShardId(shard), 0, usize::MAX)
        .await
        .expect("shard reads")
}

fn snapshot_after(shard: u16, envelopes: &[BatchRecord], taken_after: u64) -> Snapshot {
    let mut state = ShardState::new(ShardId(shard));
    state.next_sequence = taken_after + 1;
    let index = usize::try_from(taken_after).expect("small sequence") - 1;
    Snapshot {
        state,
        last_hash: envelopes[index].hash,
    }
}

/// Appended events come back in sequence order; `after` and `limit` page.
pub async fn append_then_read_shard_round_trip(store: Arc<dyn EventStore>) {
    let mut log = Log::default();
    // Enough events to cross several buckets of a store with small buckets.
    let envelopes = log.grants(0, "g", 23);
    // Two appends: the log grows at its end.
    store
        .append(vec![batch(0, envelopes[..10].to_vec(), Vec::new())])
        .await
        .expect("first append succeeds");
    store
        .append(vec![batch(0, envelopes[10..].to_vec(), Vec::new())])
        .await
        .expect("second append succeeds");

    assert_eq!(read_all(&*store, 0).await, envelopes);
    assert_eq!(
        store
            .read_shard(ShardId(0), 0, 10)
            .await
            .expect("shard reads"),
        envelopes[..10].to_vec()
    );
    assert_eq!(
        store
            .read_shard(ShardId(0), 1, 1)
            .await
            .expect("shard reads"),
        vec![envelopes[1].clone()]
    );
    for after in [3_u64, 7, 8, 9, 15, 19, 22] {
        let from = usize::try_from(after).expect("small");
        for limit in [1_usize, 4, 5, 100] {
            let expected: Vec<_> = envelopes[from..].iter().take(limit).cloned().collect();
            assert_eq!(
                store
                    .read_shard(ShardId(0), after, limit)
                    .await
                    .expect("shard reads"),
                expected,
                "after {after}, limit {limit}"
            );
        }
    }
    assert!(store
        .read_shard(ShardId(0), 23, 10)
        .await
        .expect("shard reads")
        .is_empty());
    assert!(store
        .read_shard(ShardId(0), 1_000_000, 10)
        .await
        .expect("shard reads")
        .is_empty());
    assert!(store
        .read_shard(ShardId(0), 0, 0)
        .await
        .expect("shard reads")
        .is_empty());
    assert!(read_all(&*store, 5).await.is_empty());
    // The chain is intact: each event points at its predecessor's hash.
    for pair in read_all(&*store, 0).await.windows(2) {
        assert_eq!(pair[1].previous_hash, pair[0].hash);
    }
}

/// Recovery: no snapshot gives every event; otherwise the latest snapshot
/// and only the events after it.
pub async fn recover_returns_the_latest_snapshot_and_only_later_events(store: Arc<dyn EventStore>) {
    let empty = store.recover(ShardId(3)).await.expect("recovery reads");
    assert!(empty.snapshot.is_none());
    assert!(empty.records.is_empty());

    let mut log = Log::default();
    let envelopes = log.grants(3, "g", 11);
    store
        .append(vec![batch(3, envelopes.clone(), Vec::new())])
        .await
        .expect("append succeeds");
    let recovery = store.recover(ShardId(3)).await.expect("recovery reads");
    assert!(recovery.snapshot.is_none());
    assert_eq!(recovery.records, envelopes);

    for taken_after in [1_u64, 2, 3, 4, 9] {
        store
            .save_snapshot(ShardId(3), &snapshot_after(3, &envelopes, taken_after))
            .await
            .expect("snapshot saves");
    }
    let recovery = store.recover(ShardId(3)).await.expect("recovery reads");
    let snapshot = recovery.snapshot.expect("a snapshot is found");
    assert_eq!(snapshot, snapshot_after(3, &envelopes, 9));
    assert_eq!(recovery.records, envelopes[9..].to_vec());

    // Saving the same snapshot again is harmless; a snapshot at the head
    // leaves no events to replay.
    store
        .save_snapshot(ShardId(3), &snapshot_after(3, &envelopes, 9))
        .await
        .expect("snapshot saves again");
    store
        .save_snapshot(ShardId(3), &snapshot_after(3, &envelopes, 11))
        .await
        .expect("snapshot saves");
    let recovery = store.recover(ShardId(3)).await.expect("recovery reads");
    assert_eq!(recovery.snapshot, Some(snapshot_after(3, &envelopes, 11)));
    assert!(recovery.records.is_empty());

    // Events appended after the snapshot are replayed on top of it.
    let later = log.grants(3, "later", 2);
    store
        .append(vec![batch(3, later.clone(), Vec::new())])
        .await
        .expect("append succeeds");
    let recovery = store.recover(ShardId(3)).await.expect("recovery reads");
    assert_eq!(recovery.snapshot, Some(snapshot_after(3, &envelopes, 11)));
    assert_eq!(recovery.records, later);
}

/// Each shard recovers from its own snapshot, never another shard's.
pub async fn snapshots_of_several_shards_stay_separate(store: Arc<dyn EventStore>) {
    let mut log = Log::default();
    let first = log.grants(1, "a", 6);
    let second = log.grants(2, "b", 6);
    store
        .append(vec![
            batch(1, first.clone(), Vec::new()),
            batch(2, second.clone(), Vec::new()),
        ])
        .await
        .expect("append succeeds");
    store
        .save_snapshot(ShardId(1), &snapshot_after(1, &first, 2))
        .await
        .expect("snapshot saves");
    store
        .save_snapshot(ShardId(2), &snapshot_after(2, &second, 5))
        .await
        .expect("snapshot saves");
    store
        .save_snapshot(ShardId(1), &snapshot_after(1, &first, 4))
        .await
        .expect("snapshot saves");

    let one = store.recover(ShardId(1)).await.expect("recovery reads");
    assert_eq!(one.snapshot, Some(snapshot_after(1, &first, 4)));
    assert_eq!(one.records, first[4..].to_vec());
    let two = store.recover(ShardId(2)).await.expect("recovery reads");
    assert_eq!(two.snapshot, Some(snapshot_after(2, &second, 5)));
    assert_eq!(two.records, second[5..].to_vec());
    let three = store.recover(ShardId(3)).await.expect("recovery reads");
    assert!(three.snapshot.is_none());
    assert!(three.records.is_empty());
}

/// Pending messages: per sender from `next_expected` (1 when absent), in
/// (sender, sequence) order, only those addressed to the receiver.
pub async fn pending_messages_honour_next_expected_per_sender(store: Arc<dyn EventStore>) {
    // Senders append in an order unrelated to their ids, over several calls.
    let from_seven = messages(7, 1, 1, 12);
    let from_zero = messages(0, 1, 1, 9);
    let from_three = messages(3, 1, 1, 2);
    let to_others = [message(0, 2, 1, 5), message(3, 4, 1, 5)];
    store
        .append(vec![batch(7, Vec::new(), from_seven[..6].to_vec())])
        .await
        .expect("append succeeds");
    store
        .append(vec![batch(0, Vec::new(), from_zero.clone())])
        .await
        .expect("append succeeds");
    store
        .append(vec![
            batch(7, Vec::new(), from_seven[6..].to_vec()),
            batch(3, Vec::new(), from_three.clone()),
        ])
        .await
        .expect("append succeeds");
    store
        .append(vec![
            batch(0, Vec::new(), to_others[..1].to_vec()),
            batch(3, Vec::new(), to_others[1..].to_vec()),
        ])
        .await
        .expect("append succeeds");

    let pending = |next_expected: BTreeMap<ShardId, u64>, to: u16| {
        let store = Arc::clone(&store);
        async move {
            store
                .pending_messages(ShardId(to), &next_expected)
                .await
                .expect("messages read")
        }
    };
    let everything: Vec<_> = from_zero
        .iter()
        .chain(&from_three)
        .chain(&from_seven)
        .cloned()
        .collect();
    assert_eq!(pending(BTreeMap::new(), 1).await, everything);
    assert_eq!(
        pending(BTreeMap::from([(ShardId(0), 1), (ShardId(7), 1)]), 1).await,
        everything
    );

    let next_expected = BTreeMap::from([(ShardId(0), 5), (ShardId(3), 3), (ShardId(7), 9)]);
    let expected: Vec<_> = from_zero[4..]
        .iter()
        .chain(&from_seven[8..])
        .cloned()
        .collect();
    assert_eq!(pending(next_expected, 1).await, expected);

    // A sender whose messages were all consumed, or one far ahead.
    let next_expected = BTreeMap::from([(ShardId(0), 10), (ShardId(3), 1_000), (ShardId(7), 12)]);
    assert_eq!(pending(next_expected, 1).await, from_seven[11..].to_vec());

    assert_eq!(pending(BTreeMap::new(), 2).await, to_others[..1].to_vec());
    assert_eq!(pending(BTreeMap::new(), 4).await, to_others[1..].to_vec());
    assert!(pending(BTreeMap::new(), 3).await.is_empty());
    // Messages are not events of the receiver nor of the sender's log.
    assert!(read_all(&*store, 1).await.is_empty());
    assert!(read_all(&*store, 7).await.is_empty());
}

/// A redo of an append (whole, or overlapping and extending it) is a no-op
/// for what is already stored.
pub async fn re_appending_identical_events_and_messages_is_a_no_op(store: Arc<dyn EventStore>) {
    let mut log = Log::default();
    let envelopes = log.grants(0, "g", 2);
    let sent = vec![message(0, 1, 1, 5)];
    for attempt in ["first append", "identical re-append"] {
        store
            .append(vec![batch(0, envelopes.clone(), sent.clone())])
            .await
            .unwrap_or_else(|error| panic!("{attempt} fails: {error}"));
    }
    let mut extended = envelopes.clone();
    extended.push(log.seal(0, grant("g3", "alice", 1, 3), 3));
    let mut extended_messages = sent.clone();
    extended_messages.push(message(0, 1, 2, 6));
    store
        .append(vec![batch(0, extended.clone(), extended_messages.clone())])
        .await
        .expect("an overlapping re-append succeeds");
    store
        .append(vec![batch(0, envelopes[1..].to_vec(), sent.clone())])
        .await
        .expect("re-appending a part succeeds");

    assert_eq!(read_all(&*store, 0).await, extended);
    assert_eq!(
        store
            .recover(ShardId(0))
            .await
            .expect("recovery reads")
            .records,
        extended
    );
    assert_eq!(
        store
            .pending_messages(ShardId(1), &BTreeMap::new())
            .await
            .expect("messages read"),
        extended_messages
    );
}

fn assert_refused(error: &StoreError, mentions: &str) {
    match error {
        StoreError::Backend { operation, detail } => {
            assert_eq!(*operation, "append", "{error}");
            assert!(
                detail.contains(mentions),
                "{error} should mention {mentions}"
            );
        }
        other => panic!("expected a refused append, got {other}"),
    }
}

/// A different event (hash) or message at a stored key is refused, and the
/// stored one stays.
pub async fn a_different_event_or_message_at_a_stored_key_is_refused(store: Arc<dyn EventStore>) {
    let mut log = Log::default();
    let original = log.seal(0, grant("g1", "alice", 1, 1), 1);
    let sent = message(0, 1, 1, 5);
    store
        .append(vec![batch(0, vec![original.clone()], vec![sent.clone()])])
        .await
        .expect("append succeeds");

    let different = Log::default().seal(0, grant("g1", "alice", 2, 2), 1);
    assert_ne!(different.hash, original.hash);
    let error = store
        .append(vec![batch(0, vec![different], Vec::new())])
        .await
        .expect_err("a different event is refused");
    assert_refused(&error, "event 1 of shard 0");

    let error = store
        .append(vec![batch(0, Vec::new(), vec![message(0, 1, 1, 6)])])
        .await
        .expect_err("a different message is refused");
    assert_refused(&error, "message 1 from shard 0 to shard 1");

    assert_eq!(read_all(&*store, 0).await, vec![original]);
    assert_eq!(
        store
            .pending_messages(ShardId(1), &BTreeMap::new())
            .await
            .expect("messages read"),
        vec![sent]
    );
}

/// A refused append (a conflicting event among new ones, or an event filed
/// under another shard's batch) writes none of its events and messages.
pub async fn a_refused_append_writes_nothing(store: Arc<dyn EventStore>) {
    let mut log = Log::default();
    let first = log.seal(0, grant("g1", "alice", 1, 1), 1);
    store
        .append(vec![batch(0, vec![first.clone()], Vec::new())])
        .await
        .expect("append succeeds");

    // Shard 1's batch is fine; shard 0's carries a new event, a message, then
    // a conflicting event.
    let shard_one = vec![log.seal(1, grant("g2", "bob", 1, 1), 1)];
    let new_on_zero = log.seal(0, grant("g3", "alice", 1, 2), 1);
    let conflicting = Log::default().seal(0, grant("other", "alice", 9, 9), 1);
    let error = store
        .append(vec![
            batch(1, shard_one, vec![message(1, 0, 1, 5)]),
            batch(0, vec![new_on_zero, conflicting], vec![message(0, 1, 1, 5)]),
        ])
        .await
        .expect_err("the conflicting append is refused");
    assert_refused(&error, "event 1 of shard 0");
    assert_eq!(read_all(&*store, 0).await, vec![first]);
    assert!(read_all(&*store, 1).await.is_empty());
    for receiver in [0, 1] {
        assert!(store
            .pending_messages(ShardId(receiver), &BTreeMap::new())
            .await
            .expect("messages read")
            .is_empty());
    }

    // An envelope filed under the wrong shard is refused too.
    let misfiled = log.seal(2, grant("g4", "carol", 1, 1), 1);
    let error = store
        .append(vec![batch(3, vec![misfiled], Vec::new())])
        .await
        .expect_err("a misfiled event is refused");
    assert_refused(&error, "shard 2");
    assert!(read_all(&*store, 2).await.is_empty());
    assert!(read_all(&*store, 3).await.is_empty());
}

/// One append carries the events and messages of several shards.
pub async fn one_append_carries_several_shards(store: Arc<dyn EventStore>) {
    let mut log = Log::default();
    let batches: Vec<ShardBatch> = (0..4_u16)
        .map(|shard| {
            batch(
                shard,
                log.grants(shard, &format!("s{shard}"), 3 + u64::from(shard)),
                vec![message(shard, (shard + 1) % 4, 1, i64::from(shard))],
            )
        })
        .collect();
    store
        .append(batches.clone())
        .await
        .expect("append succeeds");
    for shard_batch in &batches {
        let shard = shard_batch.shard.expect("test batches name their shard");
        assert_eq!(read_all(&*store, shard.0).await, shard_batch.records);
        let receiver = shard_batch.messages[0].to;
        assert_eq!(
            store
                .pending_messages(receiver, &BTreeMap::new())
                .await
                .expect("messages read"),
            shard_batch.messages
        );
    }
}

/// `append_ordered`'s receipt resolves once the append is durable: a read
/// after it sees the data. A store that orders appends globally makes an
/// earlier append durable no later than a later one.
pub async fn append_ordered_resolves_once_durable(store: Arc<dyn EventStore>) {
    let mut log = Log::default();
    let earlier = log.grants(0, "a", 3);
    let later = log.grants(1, "b", 2);
    let earlier_receipt = store
        .append_ordered(vec![batch(0, earlier.clone(), vec![message(0, 1, 1, 5)])])
        .await
        .expect("append is queued");
    let later_receipt = store
        .append_ordered(vec![batch(1, later.clone(), Vec::new())])
        .await
        .expect("append is queued");
    later_receipt.await.expect("later append is durable");
    assert_eq!(read_all(&*store, 1).await, later);
    if store.orders_appends_globally() {
        // The earlier append committed no later than the later one.
        assert_eq!(read_all(&*store, 0).await, earlier);
    }
    earlier_receipt.await.expect("earlier append is durable");
    assert_eq!(read_all(&*store, 0).await, earlier);
    assert_eq!(
        store
            .recover(ShardId(0))
            .await
            .expect("recovery reads")
            .records,
        earlier
    );
    assert_eq!(
        store
            .pending_messages(ShardId(1), &BTreeMap::new())
            .await
            .expect("messages read"),
        vec![message(0, 1, 1, 5)]
    );
    let empty = store
        .append_ordered(Vec::new())
        .await
        .expect("an empty append is queued");
    empty.await.expect("an empty append resolves");
}

/// Many concurrent appends of different shards all land; a concurrent
/// refused append fails alone.
pub async fn concurrent_appends_of_many_shards_all_land(store: Arc<dyn EventStore>) {
    const SHARDS: u16 = 40;
    let mut log = Log::default();
    let taken = log.seal(0, grant("g0", "alice", 1, 1), 1);
    store
        .append(vec![batch(0, vec![taken.clone()], Vec::new())])
        .await
        .expect("append succeeds");

    let mut tasks = Vec::new();
    let mut expected = BTreeMap::new();
    for shard in 1..=SHARDS {
        let envelopes = log.grants(shard, &format!("g{shard}"), 3);
        let sent = vec![message(shard, 0, 1, i64::from(shard))];
        expected.insert(shard, envelopes.clone());
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            store.append(vec![batch(shard, envelopes, sent)]).await
        }));
    }
    let conflicting = Log::default().seal(0, grant("other", "alice", 9, 9), 1);
    let refused = {
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            store
                .append(vec![batch(0, vec![conflicting], Vec::new())])
                .await
        })
    };
    for task in tasks {
        task.await.expect("task runs").expect("append succeeds");
    }
    assert!(refused.await.expect("task runs").is_err());
    for (shard, envelopes) in expected {
        assert_eq!(read_all(&*store, shard).await, envelopes, "shard {shard}");
    }
    assert_eq!(read_all(&*store, 0).await, vec![taken]);
    let pending = store
        .pending_messages(ShardId(0), &BTreeMap::new())
        .await
        .expect("messages read");
    let senders: Vec<u16> = pending.iter().map(|sent| sent.from.0).collect();
    assert_eq!(senders, (1..=SHARDS).collect::<Vec<_>>());
}

/// Appending nothing succeeds and writes nothing.
pub async fn empty_appends_are_accepted(store: Arc<dyn EventStore>) {
    store.append(Vec::new()).await.expect("nothing to append");
    store
        .append(vec![ShardBatch::default()])
        .await
        .expect("nothing to append");
    store
        .append(vec![batch(4, Vec::new(), Vec::new())])
        .await
        .expect("nothing to append");
    assert!(read_all(&*store, 4).await.is_empty());
}

/// A record holds many entries: a read from any sequence inside it returns
/// the whole record, and the next one starts where it ends.
pub async fn records_of_many_entries_are_read_from_any_sequence_inside_them(
    store: Arc<dyn EventStore>,
) {
    let mut log = Log::default();
    let grants = |prefix: &str, count: i64| -> Vec<_> {
        (1..=count)
            .map(|n| support::grant(&format!("{prefix}-{n}"), "alice", n, n))
            .collect()
    };
    let first = log.seal_many(2, grants("a", 5), 1);
    let second = log.seal_many(2, grants("b", 1), 2);
    let third = log.seal_many(2, grants("c", 7), 3);
    assert_eq!((first.first_sequence, first.last_sequence()), (1, 5));
    assert_eq!((third.first_sequence, third.last_sequence()), (7, 13));
    store
        .append(vec![batch(
            2,
            vec![first.clone(), second.clone()],
            Vec::new(),
        )])
        .await
        .expect("append succeeds");
    store
        .append(vec![batch(2, vec![third.clone()], Vec::new())])
        .await
        .expect("append succeeds");
    let read = |after: u64, limit: usize| {
        let store = Arc::clone(&store);
        async move {
            store
                .read_shard(ShardId(2), after, limit)
                .await
                .expect("shard reads")
        }
    };
    assert_eq!(
        read(0, 10).await,
        vec![first.clone(), second.clone(), third.clone()]
    );
    for after in 1..=4 {
        assert_eq!(read(after, 1).await, vec![first.clone()], "after {after}");
    }
    assert_eq!(read(5, 10).await, vec![second.clone(), third.clone()]);
    for after in 6..=12 {
        assert_eq!(read(after, 10).await, vec![third.clone()], "after {after}");
    }
    assert!(read(13, 10).await.is_empty());
    // Recovery after a snapshot taken at a record boundary.
    let mut state = ShardState::new(ShardId(2));
    state.next_sequence = 7;
    let snapshot = Snapshot {
        state,
        last_hash: second.hash,
    };
    store
        .save_snapshot(ShardId(2), &snapshot)
        .await
        .expect("snapshot saves");
    let recovery = store.recover(ShardId(2)).await.expect("recovery reads");
    assert_eq!(recovery.snapshot, Some(snapshot));
    assert_eq!(recovery.records, vec![third.clone()]);
    assert_eq!(third.previous_hash, second.hash);
    assert_eq!(second.previous_hash, first.hash);
}
