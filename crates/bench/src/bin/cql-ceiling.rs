//! Raw CQL write ceiling of our log rows, next to `CqlStore::append` in the
//! same run: how close the adapter gets to what the database allows.
//!
//! A row is one record of `--entries` events (1 by default: one row per
//! event, as before records); `--events` counts events, `--batch` rows.
//!
//! ```text
//! scripts/infra up cassandra && scripts/infra wait cassandra
//! env $(scripts/infra env) target/release/cql-ceiling --events 20000 --batch 100 --shards 4 [--entries 1]
//! ```
//!
//! Bounded in count; loopback only; its keyspace is dropped at the end.

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use engine::ports::{EventStore, ShardBatch};
use ledger_core::codec::{BatchRecord, Entry, InputEntries, GENESIS_HASH, RECORD_ENTRIES_MAX};
use ledger_core::{Account, Event, ItemId, Posting, PurchaseId, ShardId, UserId};
use store_cql::{CqlSettings, CqlStore};

const EVENTS_MAX: usize = 1_000_000;

struct Parameters {
    events: usize,
    /// Events per record (per row).
    entries: usize,
    batch: usize,
    shards: u16,
    /// Also write the result as JSON here (for `scripts/bench-report`).
    json: Option<String>,
}

fn parse() -> Result<Parameters, String> {
    let mut parameters = Parameters {
        events: 20_000,
        entries: 1,
        batch: 100,
        shards: 4,
        json: None,
    };
    let mut arguments = std::env::args().skip(1);
    while let Some(flag) = arguments.next() {
        let value = arguments
            .next()
            .ok_or_else(|| format!("{flag} needs a value"))?;
        let number = |value: &str| {
            value
                .parse::<usize>()
                .map_err(|_| format!("{flag} must be a positive integer"))
        };
        match flag.as_str() {
            "--events" => parameters.events = number(&value)?,
            "--entries" => parameters.entries = number(&value)?,
            "--batch" => parameters.batch = number(&value)?,
            "--json" => parameters.json = Some(value),
            "--shards" => {
                parameters.shards = u16::try_from(number(&value)?)
                    .map_err(|_| "--shards is too large".to_string())?
            }
            other => {
                return Err(format!(
                    "unknown flag {other}; use --events N --batch B --shards S [--entries E] [--json FILE]"
                ))
            }
        }
    }
    if parameters.events == 0
        || parameters.events > EVENTS_MAX
        || parameters.batch == 0
        || parameters.shards == 0
        || parameters.entries == 0
        || parameters.entries > RECORD_ENTRIES_MAX
    {
        return Err(format!(
            "--events must be 1..={EVENTS_MAX}, --entries 1..={RECORD_ENTRIES_MAX}, --batch and --shards positive"
        ));
    }
    Ok(parameters)
}

/// A hash-chained log of `records` records of `entries` `buyer_debited`
/// events each (our typical event) for one shard.
fn chain(shard: u16, records: usize, entries: usize) -> Vec<BatchRecord> {
    let mut previous = GENESIS_HASH;
    let mut next_sequence = 1;
    (0..records)
        .map(|_| {
            let first_sequence = next_sequence;
            next_sequence += entries as u64;
            let input = InputEntries {
                cause: "command:purchase:bench".to_string(),
                timestamp_ms: 1_800_000_000_000,
                entries: (first_sequence..next_sequence)
                    .map(|sequence| Entry::from_event(&debit(shard, sequence)))
                    .collect(),
            };
            let record = BatchRecord::seal(ShardId(shard), first_sequence, previous, vec![input]);
            previous = record.hash;
            record
        })
        .collect()
}

/// The `buyer_debited` event at `sequence` of `shard`.
fn debit(shard: u16, sequence: u64) -> Event {
    let buyer = UserId::parse(format!("buyer-{shard}")).expect("valid id");
    Event::BuyerDebited {
        purchase_id: PurchaseId::parse(format!("purchase-{shard}-{sequence:08}"))
            .expect("valid id"),
        buyer_id: buyer.clone(),
        amount: 100,
        granted_items: vec![ItemId::parse("item-000001").expect("valid id")],
        balance_after: 900,
        at_ms: 1_800_000_000_000,
        postings: vec![
            Posting::new(Account::Wallet(buyer.clone()), -100),
            Posting::new(Account::Clearing, 100),
        ],
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let parameters = match parse() {
        Ok(parameters) => parameters,
        Err(message) => {
            eprintln!("cql-ceiling: {message}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let contact =
        std::env::var("LEDGER_CQL_CONTACT").unwrap_or_else(|_| "127.0.0.1:19042".to_string());
    if !(contact.starts_with("127.")
        || contact.starts_with("localhost")
        || contact.starts_with("[::1]"))
    {
        eprintln!("cql-ceiling: only loopback contacts are measured, not {contact}");
        return std::process::ExitCode::FAILURE;
    }
    let suffix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let keyspace = format!("ledger_ceiling_{suffix}");
    let store = match CqlStore::connect(
        std::slice::from_ref(&contact),
        &keyspace,
        CqlSettings::default(),
    )
    .await
    {
        Ok(store) => store,
        Err(error) => {
            eprintln!("cql-ceiling: cannot connect to {contact}: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let per_shard = parameters
        .events
        .div_ceil(parameters.shards as usize * parameters.entries);
    let chains: Vec<Vec<BatchRecord>> = (0..parameters.shards)
        .map(|shard| chain(shard, per_shard, parameters.entries))
        .collect();
    let rows = per_shard * parameters.shards as usize;

    // 1. Raw: the same rows written the cheapest correct way — one unlogged batch of
    //    `batch` prepared INSERTs per partition, every shard concurrently — into shards
    //    offset by 10,000 so they never meet the adapter's rows. No reads, no checks.
    let session = Arc::clone(store.session());
    let insert = match session
        .prepare(format!(
            "INSERT INTO {keyspace}.events (shard, bucket, sequence, hash, envelope) VALUES (?, ?, ?, ?, ?)"
        ))
        .await
    {
        Ok(mut statement) => {
            statement.set_consistency(store_cql::Consistency::Quorum);
            statement
        }
        Err(error) => {
            eprintln!("cql-ceiling: cannot prepare the insert: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    // A warm-up pass first (the database's JIT and caches), not reported.
    if let Err(error) = raw_pass(&session, &insert, &chains, parameters.batch, 20_000).await {
        eprintln!("cql-ceiling: raw insert failed: {error}");
        return std::process::ExitCode::FAILURE;
    }
    let started = Instant::now();
    if let Err(error) = raw_pass(&session, &insert, &chains, parameters.batch, 10_000).await {
        eprintln!("cql-ceiling: raw insert failed: {error}");
        return std::process::ExitCode::FAILURE;
    }
    let raw_seconds = started.elapsed().as_secs_f64();

    // 2. The adapter: `append` of the same rows in batches of `batch` records per shard.
    let started = Instant::now();
    let mut appenders = tokio::task::JoinSet::new();
    for (shard, records) in chains.into_iter().enumerate() {
        let (store, batch) = (Arc::clone(&store), parameters.batch);
        appenders.spawn(async move {
            for group in records.chunks(batch) {
                let batch = ShardBatch {
                    shard: Some(ShardId(shard as u16)),
                    records: group.to_vec(),
                    messages: Vec::new(),
                };
                store.append(vec![batch]).await?;
            }
            Ok::<(), engine::ports::StoreError>(())
        });
    }
    while let Some(result) = appenders.join_next().await {
        match result {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                eprintln!("cql-ceiling: append failed: {error}");
                return std::process::ExitCode::FAILURE;
            }
            Err(error) => {
                eprintln!("cql-ceiling: append task failed: {error}");
                return std::process::ExitCode::FAILURE;
            }
        }
    }
    let append_seconds = started.elapsed().as_secs_f64();

    let _ = session
        .query_unpaged(format!("DROP KEYSPACE IF EXISTS {keyspace}"), &[])
        .await;
    let raw_rate = rows as f64 / raw_seconds;
    let append_rate = rows as f64 / append_seconds;
    println!(
        "cql-ceiling: {rows} record rows of {} events ({} shards, {} per batch, {} bytes per record)",
        parameters.entries,
        parameters.shards,
        parameters.batch,
        store_row_size(parameters.entries)
    );
    println!("raw unlogged batches: {raw_rate:.0} rows/s ({raw_seconds:.2} s)");
    println!(
        "CqlStore::append:     {append_rate:.0} rows/s ({append_seconds:.2} s) = {:.0}% of raw",
        100.0 * append_rate / raw_rate
    );
    if let Some(path) = &parameters.json {
        let json = format!(
            "{{\"rows_per_second\": {raw_rate:.1}, \"append_rows_per_second\": {append_rate:.1}, \"rows\": {rows}, \"seconds\": {raw_seconds:.4}, \"batch\": {}, \"shards\": {}, \"row_bytes\": {}, \"entries_per_row\": {}}}\n",
            parameters.batch,
            parameters.shards,
            store_row_size(parameters.entries),
            parameters.entries
        );
        if let Err(error) = std::fs::write(path, json) {
            eprintln!("cql-ceiling: cannot write {path}: {error}");
            return std::process::ExitCode::FAILURE;
        }
    }
    std::process::ExitCode::SUCCESS
}

/// Writes every chain with unlogged single-partition batches, shards concurrently.
async fn raw_pass(
    session: &Arc<scylla::client::session::Session>,
    insert: &scylla::statement::prepared::PreparedStatement,
    chains: &[Vec<BatchRecord>],
    batch: usize,
    shard_offset: i32,
) -> Result<(), String> {
    let mut writers = tokio::task::JoinSet::new();
    for records in chains.iter().cloned() {
        let (session, insert) = (Arc::clone(session), insert.clone());
        writers.spawn(async move {
            // Groups stay inside one bucket, so each batch is one partition.
            let bucket_of =
                |record: &BatchRecord| record.last_sequence() / store_cql::EVENTS_PER_BUCKET;
            let mut groups: Vec<Vec<BatchRecord>> = Vec::new();
            for record in records {
                match groups.last_mut() {
                    Some(group)
                        if group.len() < batch && bucket_of(&group[0]) == bucket_of(&record) =>
                    {
                        group.push(record)
                    }
                    _ => groups.push(vec![record]),
                }
            }
            for group in groups {
                let mut statement = scylla::statement::batch::Batch::new(
                    scylla::statement::batch::BatchType::Unlogged,
                );
                statement.set_consistency(store_cql::Consistency::Quorum);
                let mut values = Vec::with_capacity(group.len());
                for record in &group {
                    statement.append_statement(insert.clone());
                    values.push((
                        shard_offset + record.shard.0 as i32,
                        bucket_of(record) as i64,
                        record.last_sequence() as i64,
                        record.hash.to_vec(),
                        record.to_bytes(),
                    ));
                }
                session
                    .batch(&statement, values)
                    .await
                    .map_err(|error| error.to_string())?;
            }
            Ok::<(), String>(())
        });
    }
    while let Some(result) = writers.join_next().await {
        result.map_err(|error| error.to_string())??;
    }
    Ok(())
}

fn store_row_size(entries: usize) -> usize {
    chain(0, 1, entries)[0].to_bytes().len()
}
