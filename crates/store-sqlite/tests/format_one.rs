//! A data directory written by the format 1 store (one `events` row per
//! hash-chained envelope, `schemas/fixtures/sqlite-format-1.sql`, written by
//! `ledger serve` before records existed: a demo, a catalogue run and a
//! limited drop) opens with today's store: its events move into `records`
//! without changing a hash, every shard recovers from them, the read models
//! equal a rebuild from the moved log, and new records chain onto the old
//! history.

mod common;

use std::sync::Arc;

use common::TempDir;
use engine::ports::{EventStore, ShardBatch};
use engine::shard::{ShardRunner, Step};
use ledger_core::codec::{BatchRecord, RECORD_MAGIC};
use ledger_core::{Account, Actor, Command, CommandMeta, Config, GrantId, Role, ShardId, UserId};
use ledger_store_sqlite::{SqliteStore, DATABASE_FILE_NAME};
use rusqlite::Connection;

const SHARDS: u16 = 4;

fn fixture() -> String {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../schemas/fixtures/sqlite-format-1.sql"
    );
    std::fs::read_to_string(path).expect("the format 1 fixture is readable")
}

/// Events per shard and the last envelope hash, read before the migration.
fn format_one_heads(connection: &Connection) -> Vec<(u64, Vec<u8>)> {
    (0..SHARDS)
        .map(|shard| {
            connection
                .query_row(
                    "SELECT count(*), (SELECT hash FROM events WHERE shard = ?1 ORDER BY sequence DESC LIMIT 1)
                     FROM events WHERE shard = ?1",
                    [shard],
                    |row| Ok((row.get::<_, i64>(0)? as u64, row.get(1)?)),
                )
                .expect("the fixture has events")
        })
        .collect()
}

/// `ledger verify`'s check of the directory: clean, with each shard's head.
fn verified_heads(directory: &std::path::Path) -> Vec<String> {
    let mut verifier = audit::Verifier::new();
    let mut visit =
        |shard: u16, last: u64, bytes: &[u8]| verifier.record_bytes(ShardId(shard), last, bytes);
    ledger_store_sqlite::log::read_log(
        directory,
        ledger_store_sqlite::log::LogVisitor { record: &mut visit },
    )
    .expect("the log reads");
    let report = verifier.finish();
    assert!(report.is_clean(), "{:?}", report.findings);
    assert_eq!(report.trial_balance.total, 0);
    report
        .shards
        .iter()
        .map(|shard| shard.head_hash.clone())
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

async fn restore(store: &SqliteStore, shard: u16) -> ShardRunner<()> {
    let recovery = store.recover(ShardId(shard)).await.expect("recovery reads");
    ShardRunner::restore(ShardId(shard), Arc::new(Config::new(SHARDS)), recovery)
        .expect("the moved log replays: chain, sequences and every event decode")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_format_one_directory_opens_recovers_and_continues() {
    let directory = TempDir::new("format-one");
    std::fs::create_dir_all(&directory.path).expect("directory is created");
    let heads = {
        let connection =
            Connection::open(directory.path.join(DATABASE_FILE_NAME)).expect("database opens");
        connection
            .execute_batch(&fixture())
            .expect("the fixture loads");
        format_one_heads(&connection)
    };
    assert!(heads.iter().all(|(events, _)| *events > 10), "{heads:?}");
    // An auditor can verify the directory before any server opened it.
    let expected: Vec<String> = heads.iter().map(|(_, hash)| hex(hash)).collect();
    assert_eq!(verified_heads(&directory.path), expected);

    let store = SqliteStore::open(&directory.path).expect("a format 1 directory opens");
    // The directory predates the purchase-steps read model: opening it
    // projects the whole log again, as the server's projector does.
    store.project_all_pending().await.expect("projection runs");
    let migrated = store.dump_read_models().await.expect("read models dump");
    assert!(
        migrated.contains("kind=\"grant\""),
        "the read models came along: {migrated}"
    );
    let purchase_ids: Vec<&str> = migrated
        .lines()
        .skip_while(|line| *line != "[purchase_index]")
        .skip(1)
        .take_while(|line| !line.starts_with('['))
        .filter_map(|line| line.strip_prefix("purchase_id=\"")?.split('"').next())
        .collect();
    assert!(
        !purchase_ids.is_empty(),
        "the old purchases are indexed: {migrated}"
    );
    let read_models = store.read_models();
    for purchase_id in purchase_ids {
        let steps = read_models
            .purchase_steps(purchase_id)
            .await
            .expect("steps read");
        assert!(
            steps.iter().any(|step| step.step == "accepted"),
            "the old purchase {purchase_id} has its steps: {steps:?}"
        );
    }

    // Every shard recovers from the moved envelopes, to the same head.
    let mut runners = Vec::new();
    for shard in 0..SHARDS {
        let runner = restore(&store, shard).await;
        let (events, hash) = &heads[usize::from(shard)];
        assert_eq!(runner.state.next_sequence, events + 1, "shard {shard}");
        assert_eq!(
            runner.last_hash.as_slice(),
            hash.as_slice(),
            "shard {shard}"
        );
        runners.push(runner);
    }
    // Money is conserved in the recovered state.
    let total: i64 = runners
        .iter()
        .flat_map(|runner| runner.state.balances.values())
        .sum();
    assert_eq!(total, 0, "postings balance across shards");
    let issued: i64 = runners
        .iter()
        .map(|runner| runner.state.balance(&Account::Issuance))
        .sum();
    assert!(issued < 0, "the fixture granted currency");

    // The read models of the moved log equal a rebuild from it.
    store
        .rebuild_read_models()
        .await
        .expect("read models rebuild");
    store.project_all_pending().await.expect("projection runs");
    assert_eq!(
        store.dump_read_models().await.expect("read models dump"),
        migrated
    );

    // A new record (format 2) chains onto the old history and survives a reopen.
    let grant = Command::Grant {
        grant_id: GrantId::parse("after-migration").expect("valid id"),
        user_id: UserId::parse("format-two-user").expect("valid id"),
        amount: 5,
    };
    let home = Config::new(SHARDS).shard_of(&grant.home_key());
    let runner = &mut runners[usize::from(home.0)];
    let head = runner.last_hash;
    let mut step: Step<()> = Step::default();
    runner.command(
        grant,
        CommandMeta {
            at_ms: 1_900_000_000_000,
            actor: Actor {
                role: Role::Service,
                user_id: UserId::parse("service").expect("valid id"),
            },
        },
        (),
        &mut step,
    );
    runner.seal(&mut step);
    assert_eq!(step.records.len(), 1);
    let record = step.records[0].clone();
    assert_eq!(record.previous_hash, head);
    assert!(record.to_bytes().starts_with(&RECORD_MAGIC));
    store
        .append(vec![ShardBatch {
            shard: Some(home),
            records: step.records,
            messages: step.messages,
        }])
        .await
        .expect("append succeeds");
    drop(store);
    let store = SqliteStore::open(&directory.path).expect("the directory reopens");
    let reopened = restore(&store, home.0).await;
    assert_eq!(reopened.last_hash, record.hash);
    let stored = store
        .read_shard(home, record.first_sequence - 1, 10)
        .await
        .expect("shard reads");
    assert_eq!(stored, vec![record.clone()]);
    // The mixed log (format 1 rows, then a record) verifies as one chain.
    let heads = verified_heads(&directory.path);
    assert_eq!(heads[usize::from(home.0)], hex(&record.hash));
    assert_eq!(
        BatchRecord::from_bytes(&record.to_bytes()).expect("decodes"),
        record
    );
}
