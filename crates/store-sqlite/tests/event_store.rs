//! The event-store port over a real SQLite file: append, recovery, shard
//! reads, messages, snapshots, idempotency, conflicts and atomicity.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use common::*;
use engine::ports::{EventStore, ShardBatch};
use ledger_core::codec::{MessageEnvelope, Snapshot};
use ledger_core::{Message, ShardId, ShardState};
use ledger_store_sqlite::{SqliteStore, StoreError};

fn message(from: u16, to: u16, sequence: u64, amount: i64) -> MessageEnvelope {
    MessageEnvelope {
        from: ShardId(from),
        to: ShardId(to),
        sequence,
        message: Message::CreditGrant {
            grant_id: ledger_core::GrantId::parse(format!("g{sequence}")).expect("valid"),
            user_id: user("alice"),
            amount,
        },
    }
}

#[tokio::test]
async fn append_recover_read_shard_and_pending_messages_round_trip() {
    let directory = TempDir::new("round-trip");
    let mut log = Log::default();
    let envelopes: Vec<_> = (1..=3)
        .map(|index| {
            log.seal(
                0,
                grant(&format!("g{index}"), "alice", 10, 10 * index),
                index as u64,
            )
        })
        .collect();
    let messages = vec![
        message(0, 1, 1, 5),
        message(0, 1, 2, 6),
        message(0, 2, 1, 7),
    ];
    {
        let store = SqliteStore::open(&directory.path).expect("store opens");
        store
            .append(vec![batch(0, envelopes.clone(), messages.clone())])
            .await
            .expect("append succeeds");

        let recovery = store.recover(ShardId(0)).await.expect("recovery reads");
        assert!(recovery.snapshot.is_none());
        assert_eq!(recovery.envelopes, envelopes);

        assert_eq!(
            store
                .read_shard(ShardId(0), 1, 1)
                .await
                .expect("shard reads"),
            vec![envelopes[1].clone()]
        );
        assert_eq!(
            store
                .read_shard(ShardId(0), 0, 10)
                .await
                .expect("shard reads"),
            envelopes
        );
        assert!(store
            .read_shard(ShardId(0), 3, 10)
            .await
            .expect("shard reads")
            .is_empty());
        assert!(store
            .read_shard(ShardId(5), 0, 10)
            .await
            .expect("shard reads")
            .is_empty());

        let all = store
            .pending_messages(ShardId(1), &BTreeMap::new())
            .await
            .expect("messages read");
        assert_eq!(all, messages[..2].to_vec());
        let after_first = BTreeMap::from([(ShardId(0), 2)]);
        assert_eq!(
            store
                .pending_messages(ShardId(1), &after_first)
                .await
                .expect("messages read"),
            messages[1..2].to_vec()
        );
        assert_eq!(
            store
                .pending_messages(ShardId(2), &BTreeMap::new())
                .await
                .expect("messages read"),
            messages[2..].to_vec()
        );
        assert!(store
            .pending_messages(ShardId(3), &BTreeMap::new())
            .await
            .expect("messages read")
            .is_empty());
    }
    // Reopening finds everything (and re-creating the schema is harmless).
    let store = SqliteStore::open(&directory.path).expect("store reopens");
    assert_eq!(
        store
            .recover(ShardId(0))
            .await
            .expect("recovery reads")
            .envelopes,
        envelopes
    );
}

#[tokio::test]
async fn recovery_starts_from_the_latest_snapshot() {
    let directory = TempDir::new("snapshot");
    let store = SqliteStore::open(&directory.path).expect("store opens");
    let mut log = Log::default();
    let envelopes: Vec<_> = (1..=5)
        .map(|index| {
            log.seal(
                3,
                grant(&format!("g{index}"), "alice", 1, index),
                index as u64,
            )
        })
        .collect();
    store
        .append(vec![batch(3, envelopes.clone(), Vec::new())])
        .await
        .expect("append succeeds");
    for taken_after in [1_u64, 2, 3, 4] {
        let mut state = ShardState::new(ShardId(3));
        state.next_sequence = taken_after + 1;
        let snapshot = Snapshot {
            state,
            last_hash: envelopes[taken_after as usize - 1].hash,
        };
        store
            .save_snapshot(ShardId(3), &snapshot)
            .await
            .expect("snapshot saves");
    }
    let recovery = store.recover(ShardId(3)).await.expect("recovery reads");
    let snapshot = recovery.snapshot.expect("a snapshot is found");
    assert_eq!(snapshot.state.next_sequence, 5);
    assert_eq!(snapshot.last_hash, envelopes[3].hash);
    assert_eq!(recovery.envelopes, envelopes[4..].to_vec());

    let connection = rusqlite::Connection::open(store.database_path()).expect("database opens");
    let kept: i64 = connection
        .query_row(
            "SELECT COUNT(*) FROM snapshots WHERE shard = 3",
            [],
            |row| row.get(0),
        )
        .expect("snapshots count");
    assert_eq!(kept, ledger_store_sqlite::SNAPSHOTS_KEPT_PER_SHARD);
    let journal_mode: String = connection
        .query_row("PRAGMA journal_mode", [], |row| row.get(0))
        .expect("journal mode reads");
    assert_eq!(journal_mode, "wal");
}

#[tokio::test]
async fn re_appending_identical_events_is_a_no_op() {
    let directory = TempDir::new("idempotent");
    let store = SqliteStore::open(&directory.path).expect("store opens");
    let mut log = Log::default();
    let envelopes: Vec<_> = (1..=2)
        .map(|index| log.seal(0, grant(&format!("g{index}"), "alice", 1, index), 1))
        .collect();
    let messages = vec![message(0, 1, 1, 5)];
    store
        .append(vec![batch(0, envelopes.clone(), messages.clone())])
        .await
        .expect("first append succeeds");
    store
        .append(vec![batch(0, envelopes.clone(), messages.clone())])
        .await
        .expect("identical re-append succeeds");
    // A redo that overlaps and extends is fine too.
    let third = log.seal(0, grant("g3", "alice", 1, 3), 1);
    let mut extended = envelopes.clone();
    extended.push(third.clone());
    store
        .append(vec![batch(0, extended.clone(), messages.clone())])
        .await
        .expect("overlapping re-append succeeds");
    assert_eq!(
        store
            .read_shard(ShardId(0), 0, 100)
            .await
            .expect("shard reads"),
        extended
    );
    assert_eq!(
        store
            .pending_messages(ShardId(1), &BTreeMap::new())
            .await
            .expect("messages read"),
        messages
    );
}

#[tokio::test]
async fn conflicting_re_append_is_refused() {
    let directory = TempDir::new("conflict");
    let store = SqliteStore::open(&directory.path).expect("store opens");
    let mut log = Log::default();
    let original = log.seal(0, grant("g1", "alice", 1, 1), 1);
    store
        .append(vec![batch(
            0,
            vec![original.clone()],
            vec![message(0, 1, 1, 5)],
        )])
        .await
        .expect("append succeeds");

    let mut other_log = Log::default();
    let different = other_log.seal(0, grant("g1", "alice", 2, 2), 1);
    let error = store
        .append(vec![batch(0, vec![different], Vec::new())])
        .await
        .expect_err("a different event is refused");
    assert!(
        matches!(&error, StoreError::Backend { operation: "append", detail } if detail.contains("event 1 of shard 0")),
        "{error}"
    );
    let error = store
        .append(vec![batch(0, Vec::new(), vec![message(0, 1, 1, 6)])])
        .await
        .expect_err("a different message is refused");
    assert!(
        error
            .to_string()
            .contains("message 1 from shard 0 to shard 1"),
        "{error}"
    );
    assert_eq!(
        store
            .read_shard(ShardId(0), 0, 10)
            .await
            .expect("shard reads"),
        vec![original]
    );
}

#[tokio::test]
async fn a_failing_append_leaves_nothing() {
    let directory = TempDir::new("atomic");
    let store = SqliteStore::open(&directory.path).expect("store opens");
    let mut log = Log::default();
    let first = log.seal(0, grant("g1", "alice", 1, 1), 1);
    store
        .append(vec![batch(0, vec![first.clone()], Vec::new())])
        .await
        .expect("append succeeds");

    // Shard 1's batch is fine; shard 0's carries new events, a message, then
    // a conflicting event: the whole append must leave no trace.
    let shard_one = vec![log.seal(1, grant("g2", "bob", 1, 1), 1)];
    let new_on_zero = log.seal(0, grant("g3", "alice", 1, 2), 1);
    let conflicting = Log::default().seal(0, grant("other", "alice", 9, 9), 1);
    let result = store
        .append(vec![
            batch(1, shard_one, vec![message(1, 0, 1, 5)]),
            batch(0, vec![new_on_zero, conflicting], vec![message(0, 1, 1, 5)]),
        ])
        .await;
    assert!(result.is_err());
    assert_eq!(
        store
            .read_shard(ShardId(0), 0, 10)
            .await
            .expect("shard reads"),
        vec![first]
    );
    assert!(store
        .read_shard(ShardId(1), 0, 10)
        .await
        .expect("shard reads")
        .is_empty());
    assert!(store
        .pending_messages(ShardId(0), &BTreeMap::new())
        .await
        .expect("messages read")
        .is_empty());
    assert!(store
        .pending_messages(ShardId(1), &BTreeMap::new())
        .await
        .expect("messages read")
        .is_empty());

    // An envelope filed under the wrong shard is refused too.
    let misfiled = log.seal(2, grant("g4", "carol", 1, 1), 1);
    assert!(store
        .append(vec![batch(3, vec![misfiled], Vec::new())])
        .await
        .is_err());
    assert!(store
        .read_shard(ShardId(2), 0, 10)
        .await
        .expect("shard reads")
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_commit_together_and_one_refusal_sinks_only_itself() {
    let directory = TempDir::new("group-commit");
    let store = SqliteStore::open(&directory.path).expect("store opens");
    let mut log = Log::default();
    let taken = log.seal(0, grant("g0", "alice", 1, 1), 1);
    store
        .append(vec![batch(0, vec![taken], Vec::new())])
        .await
        .expect("append succeeds");

    let mut tasks = Vec::new();
    for shard in 1..=40_u16 {
        let envelopes: Vec<_> = (1..=3)
            .map(|index| {
                log.seal(
                    shard,
                    grant(&format!("g{shard}-{index}"), "bob", 1, index),
                    1,
                )
            })
            .collect();
        let store: Arc<SqliteStore> = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            store
                .append(vec![batch(shard, envelopes, Vec::new())])
                .await
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
    for shard in 1..=40_u16 {
        assert_eq!(
            store
                .read_shard(ShardId(shard), 0, 10)
                .await
                .expect("shard reads")
                .len(),
            3
        );
    }
    assert_eq!(
        store
            .read_shard(ShardId(0), 0, 10)
            .await
            .expect("shard reads")
            .len(),
        1
    );
}

#[tokio::test]
async fn empty_appends_are_accepted() {
    let directory = TempDir::new("empty");
    let store = SqliteStore::open(&directory.path).expect("store opens");
    store.append(Vec::new()).await.expect("nothing to append");
    store
        .append(vec![ShardBatch::default()])
        .await
        .expect("nothing to append");
}
