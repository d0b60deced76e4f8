//! The event-store port over a real SQLite file: the shared contract suite
//! (`ledger-store-contract`), plus what only SQLite promises: reopening the
//! file, WAL mode, the number of snapshots kept, and group commits in which a
//! refused request sinks only itself.

mod common;

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use common::*;
use engine::ports::EventStore;
use ledger_core::codec::Snapshot;
use ledger_core::{ShardId, ShardState};
use ledger_store_sqlite::SqliteStore;
use store_contract::support::message;
use store_contract::StoreFixture;

/// A store in its own temporary directory, removed after the check.
struct SqliteFixture {
    store: Arc<SqliteStore>,
    directory: TempDir,
}

impl StoreFixture for SqliteFixture {
    fn store(&self) -> Arc<dyn EventStore> {
        Arc::clone(&self.store) as Arc<dyn EventStore>
    }

    fn tear_down(self) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        let SqliteFixture { store, directory } = self;
        Box::pin(async move {
            // The writer thread stops once the store is gone; then the
            // directory can go.
            drop(store);
            drop(directory);
        })
    }
}

async fn fresh_store() -> SqliteFixture {
    let directory = TempDir::new("contract");
    let store = SqliteStore::open(&directory.path).expect("store opens");
    SqliteFixture { store, directory }
}

mod contract {
    store_contract::event_store_contract_tests!(super::fresh_store);
}

#[tokio::test]
async fn reopening_the_file_finds_everything() {
    let directory = TempDir::new("reopen");
    let mut log = Log::default();
    let envelopes = log.grants(0, "g", 3);
    let sent = vec![message(0, 1, 1, 5), message(0, 1, 2, 6)];
    {
        let store = SqliteStore::open(&directory.path).expect("store opens");
        store
            .append(vec![batch(0, envelopes.clone(), sent.clone())])
            .await
            .expect("append succeeds");
    }
    // Reopening finds everything (and re-creating the schema is harmless).
    let store = SqliteStore::open(&directory.path).expect("store reopens");
    assert_eq!(
        store
            .recover(ShardId(0))
            .await
            .expect("recovery reads")
            .records,
        envelopes
    );
    assert_eq!(
        store
            .pending_messages(ShardId(1), &BTreeMap::new())
            .await
            .expect("messages read"),
        sent
    );
}

/// Records and snapshots are kept compressed; what is read back is the
/// canonical bytes, with their checksums.
#[tokio::test]
async fn records_and_snapshots_are_kept_compressed() {
    let directory = TempDir::new("compressed");
    let store = SqliteStore::open(&directory.path).expect("store opens");
    let mut log = Log::default();
    let grants = (0..100)
        .map(|n| store_contract::support::grant(&format!("grant-{n:04}"), "alice", 5, 5 * (n + 1)))
        .collect();
    let record = log.seal_many(0, grants, 1_800_000_000_000);
    store
        .append(vec![batch(0, vec![record.clone()], Vec::new())])
        .await
        .expect("append succeeds");
    let recovery = store.recover(ShardId(0)).await.expect("recovery reads");
    assert_eq!(recovery.records, vec![record.clone()]);
    assert_eq!(recovery.records[0].bytes(), record.bytes());
    let mut state = ShardState::new(ShardId(0));
    state.next_sequence = record.next_sequence();
    let snapshot = Snapshot {
        state,
        last_hash: record.hash,
    };
    store
        .save_snapshot(ShardId(0), &snapshot)
        .await
        .expect("snapshot saves");

    let connection = rusqlite::Connection::open(store.database_path()).expect("database opens");
    let stored: Vec<u8> = connection
        .query_row("SELECT record FROM records WHERE shard = 0", [], |row| {
            row.get(0)
        })
        .expect("the record is stored");
    assert!(stored.starts_with(&ledger_core::codec::COMPRESSED_MAGIC));
    assert!(
        stored.len() * 2 < record.bytes().len(),
        "{} bytes stored for {}",
        stored.len(),
        record.bytes().len()
    );
    let recovery = store.recover(ShardId(0)).await.expect("recovery reads");
    assert!(
        recovery.records.is_empty(),
        "the snapshot covers the record"
    );
    assert_eq!(recovery.snapshot, Some(snapshot));
    let stored: Vec<u8> = connection
        .query_row(
            "SELECT snapshot FROM snapshots WHERE shard = 0",
            [],
            |row| row.get(0),
        )
        .expect("the snapshot is stored");
    assert!(stored.starts_with(&ledger_core::codec::COMPRESSED_MAGIC));
}

#[tokio::test]
async fn old_snapshots_are_deleted_and_the_file_is_in_wal_mode() {
    let directory = TempDir::new("snapshot");
    let store = SqliteStore::open(&directory.path).expect("store opens");
    let mut log = Log::default();
    let envelopes = log.grants(3, "g", 5);
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

    let connection = rusqlite::Connection::open(store.database_path()).expect("database opens");
    let kept: i64 = connection
        .query_row(
            "SELECT COUNT(*) FROM snapshots WHERE shard = 3",
            [],
            |row| row.get(0),
        )
        .expect("snapshots count");
    assert_eq!(kept, ledger_store_sqlite::SNAPSHOTS_KEPT_PER_SHARD);

    // An unreadable newest snapshot: recovery takes the one before it; with
    // none readable, the log alone.
    connection
        .execute(
            "UPDATE snapshots SET snapshot = x'00' WHERE shard = 3 AND sequence = 4",
            [],
        )
        .expect("snapshot is damaged");
    let recovery = store.recover(ShardId(3)).await.expect("recovery reads");
    let snapshot = recovery.snapshot.expect("the older snapshot is used");
    assert_eq!(snapshot.state.next_sequence, 4);
    assert_eq!(recovery.records, envelopes[3..].to_vec());
    connection
        .execute("UPDATE snapshots SET snapshot = x'00' WHERE shard = 3", [])
        .expect("snapshots are damaged");
    let recovery = store.recover(ShardId(3)).await.expect("recovery reads");
    assert!(recovery.snapshot.is_none());
    assert_eq!(recovery.records, envelopes);
    let journal_mode: String = connection
        .query_row("PRAGMA journal_mode", [], |row| row.get(0))
        .expect("journal mode reads");
    assert_eq!(journal_mode, "wal");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_request_in_a_group_commit_sinks_only_itself() {
    let directory = TempDir::new("group-commit");
    let store = SqliteStore::open(&directory.path).expect("store opens");
    assert!(store.orders_appends_globally());
    let mut log = Log::default();
    let taken = log.seal(0, grant("g0", "alice", 1, 1), 1);
    store
        .append(vec![batch(0, vec![taken], Vec::new())])
        .await
        .expect("append succeeds");

    // Queue everything before awaiting anything, so the writer groups the
    // requests (a refused one in the middle of them) into shared commits.
    let mut receipts = Vec::new();
    for shard in 1..=20_u16 {
        let envelopes = log.grants(shard, &format!("g{shard}"), 2);
        receipts.push((
            Some(shard),
            store
                .append_ordered(vec![batch(shard, envelopes, Vec::new())])
                .await
                .expect("append is queued"),
        ));
        if shard == 10 {
            let conflicting = Log::default().seal(0, grant("other", "alice", 9, 9), 1);
            receipts.push((
                None,
                store
                    .append_ordered(vec![batch(0, vec![conflicting], Vec::new())])
                    .await
                    .expect("append is queued"),
            ));
        }
    }
    for (shard, receipt) in receipts {
        match shard {
            Some(shard) => receipt
                .await
                .unwrap_or_else(|error| panic!("shard {shard}'s append fails: {error}")),
            None => assert!(receipt.await.is_err(), "the conflicting append is refused"),
        }
    }
    for shard in 1..=20_u16 {
        assert_eq!(
            store
                .read_shard(ShardId(shard), 0, 10)
                .await
                .expect("shard reads")
                .len(),
            2
        );
    }
}

/// The write-ahead log is copied into the database file by a thread beside
/// the writer, long before the writer's own threshold
/// (`WRITER_CHECKPOINT_PAGES`), so commits never stop for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_is_checkpointed_beside_the_writer() {
    let directory = TempDir::new("checkpoint");
    let store = SqliteStore::open(&directory.path).expect("store opens");
    let database_bytes =
        || std::fs::metadata(store.database_path()).map_or(0, |metadata| metadata.len());
    let before = database_bytes();
    let mut log = Log::default();
    let records = log.grants(3, "checkpointed-grant", 4_000);
    store
        .append(vec![batch(3, records, Vec::new())])
        .await
        .expect("append succeeds");
    let wal_pages = std::fs::metadata(
        directory
            .path
            .join(format!("{}-wal", ledger_store_sqlite::DATABASE_FILE_NAME)),
    )
    .map_or(0, |metadata| metadata.len())
        / 4_096;
    assert!(
        wal_pages > 100 && wal_pages < u64::from(ledger_store_sqlite::WRITER_CHECKPOINT_PAGES),
        "the append filled {wal_pages} log pages: enough to see, below the writer's threshold"
    );
    // Only a checkpoint moves pages from the log into the database file.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while database_bytes() < before + 100 * 4_096 {
        assert!(
            std::time::Instant::now() < deadline,
            "the log was not checkpointed: the database file holds {} bytes, {before} before",
            database_bytes()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// The log's database holds the log alone; the read models have a file of
/// their own, written by the projector's thread, and are read with the log
/// attached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_read_models_live_in_a_file_of_their_own() {
    let directory = TempDir::new("read-model-file");
    let store = SqliteStore::open(&directory.path).expect("store opens");
    let mut log = Log::default();
    for prefix in ["first", "second"] {
        let records = log.grants(1, prefix, 3);
        store
            .append(vec![batch(1, records, Vec::new())])
            .await
            .expect("the append succeeds");
        store
            .project_all_pending()
            .await
            .expect("the projection succeeds");
    }
    let tables = |file: &str| -> Vec<String> {
        let connection =
            rusqlite::Connection::open(directory.path.join(file)).expect("database opens");
        let mut statement = connection
            .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .expect("schema query prepares");
        statement
            .query_map([], |row| row.get(0))
            .expect("schema reads")
            .collect::<Result<_, _>>()
            .expect("table names read")
    };
    assert_eq!(
        tables(ledger_store_sqlite::DATABASE_FILE_NAME),
        ["messages", "records", "snapshots"]
    );
    let read_model_tables = tables(ledger_store_sqlite::READ_MODELS_FILE_NAME);
    for table in ["balances", "purchase_index", "projection_position"] {
        assert!(
            read_model_tables.iter().any(|name| name == table),
            "{table} is in the read models' file: {read_model_tables:?}"
        );
    }
    assert_eq!(
        store.projection_position().await.expect("position reads"),
        6,
        "both appends' records are projected"
    );
    let balance = store
        .read_models()
        .balance("alice")
        .await
        .expect("the balance reads");
    assert_eq!(
        balance.balance,
        2 * (1 + 2 + 3),
        "both appends' grants are counted"
    );
}

/// Once commits pause, each database's write-ahead log file is cut to
/// nothing (SQLite otherwise keeps it at its largest size on disk), while
/// the projector keeps running on its timer as in a server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_store_cuts_its_write_ahead_logs_to_nothing() {
    let directory = TempDir::new("idle-truncate");
    let store = SqliteStore::open(&directory.path).expect("store opens");
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let projector = tokio::spawn(Arc::clone(&store).run_projector(stopped));
    let mut log = Log::default();
    let records = log.grants(2, "idle-grant", 500);
    store
        .append(vec![batch(2, records, Vec::new())])
        .await
        .expect("append succeeds");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while store.projection_position().await.expect("position reads") < 500 {
        assert!(
            std::time::Instant::now() < deadline,
            "the projector did not catch up"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let wal_bytes = |database: &str| {
        std::fs::metadata(directory.path.join(format!("{database}-wal")))
            .map_or(0, |metadata| metadata.len())
    };
    let databases = [
        ledger_store_sqlite::DATABASE_FILE_NAME,
        ledger_store_sqlite::READ_MODELS_FILE_NAME,
    ];
    // (The log's may already be cut: it has been idle since the append.)
    assert!(
        wal_bytes(databases[1]) > 0,
        "the projection's commits are in the read models' log"
    );
    let deadline = std::time::Instant::now()
        + ledger_store_sqlite::IDLE_BEFORE_TRUNCATE
        + std::time::Duration::from_secs(10);
    while databases.iter().any(|database| wal_bytes(database) > 0) {
        assert!(
            std::time::Instant::now() < deadline,
            "the logs were not cut: {} and {} bytes",
            wal_bytes(databases[0]),
            wal_bytes(databases[1])
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // Nothing was lost: both read back.
    assert_eq!(
        store.projection_position().await.expect("position reads"),
        500
    );
    assert_eq!(
        store
            .recover(ShardId(2))
            .await
            .expect("recovery reads")
            .records
            .len(),
        500
    );
    stop.send(true).expect("the projector listens");
    projector.await.expect("the projector stops");
}
