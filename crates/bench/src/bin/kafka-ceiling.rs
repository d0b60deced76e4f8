//! Ceiling of the Kafka production path: the raw transactional produce rate of our
//! records (real, sealed batch records of `--entries` `buyer_debited` events each, one
//! by default), through [`ShardTransactionalWriter::commit_batch`], with nothing else
//! (no engine, no store).
//!
//! ```sh
//! scripts/infra up kafka && scripts/infra wait kafka
//! env $(scripts/infra env) cargo run --release -p ledger-log-kafka --bin kafka-ceiling -- \
//!     --transactions 300 --batch 100 --shards 1 --max-seconds 60
//! ```
//!
//! Loopback brokers only; bounded in transactions and in time. Creates its own topics
//! (unique names) and deletes them at the end.

use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ledger_core::codec::{BatchRecord, Entry, InputEntries, GENESIS_HASH, RECORD_ENTRIES_MAX};
use ledger_core::{Account, Event, ItemId, Posting, PurchaseId, ShardId, UserId};
use log_kafka::{KafkaConfig, ShardTransactionalWriter, TopicAdmin, TopicLayout, Topics};

const USAGE: &str = "usage: kafka-ceiling [--bootstrap HOST:PORT] [--transactions N] [--batch B] \
[--shards S] [--entries E] [--max-seconds T] [--set KEY=VALUE]... [--json FILE]\n  defaults: \
bootstrap from LEDGER_KAFKA_BOOTSTRAP, N=300, B=100 records per transaction, S=1, E=1 event per \
record, T=60 (N <= 100000, B <= 10000, S <= 16, E <= 8190, T <= 600); --set adds a librdkafka \
property to every client (e.g. --set retry.backoff.ms=10)";

struct Params {
    bootstrap: String,
    transactions: usize,
    batch: usize,
    shards: u16,
    /// Events per record.
    entries: usize,
    max_seconds: u64,
    overrides: Vec<(String, String)>,
    /// Also write the result as JSON here (for `scripts/bench-report`).
    json: Option<String>,
}

fn parse() -> Result<Params, String> {
    let mut params = Params {
        bootstrap: std::env::var("LEDGER_KAFKA_BOOTSTRAP").unwrap_or_default(),
        transactions: 300,
        batch: 100,
        shards: 1,
        entries: 1,
        max_seconds: 60,
        overrides: Vec::new(),
        json: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "-h" || flag == "--help" {
            return Err(String::new());
        }
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number = |max: u64| -> Result<u64, String> {
            match value.parse::<u64>() {
                Ok(n) if (1..=max).contains(&n) => Ok(n),
                _ => Err(format!(
                    "{flag} must be an integer from 1 to {max}, not {value}"
                )),
            }
        };
        match flag.as_str() {
            "--bootstrap" => params.bootstrap = value.clone(),
            "--transactions" => params.transactions = number(100_000)? as usize,
            "--batch" => params.batch = number(10_000)? as usize,
            "--shards" => params.shards = number(16)? as u16,
            "--entries" => params.entries = number(RECORD_ENTRIES_MAX as u64)? as usize,
            "--max-seconds" => params.max_seconds = number(600)?,
            "--json" => params.json = Some(value.clone()),
            "--set" => {
                let (key, property) = value
                    .split_once('=')
                    .ok_or_else(|| format!("--set needs KEY=VALUE, not {value}"))?;
                params
                    .overrides
                    .push((key.to_string(), property.to_string()));
            }
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    if params.bootstrap.is_empty() {
        return Err("no broker: pass --bootstrap or set LEDGER_KAFKA_BOOTSTRAP \
                    (scripts/infra up kafka && scripts/infra wait kafka; $(scripts/infra env))"
            .into());
    }
    for server in params.bootstrap.split(',') {
        let host = server.rsplit_once(':').map_or(server, |(host, _)| host);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if !matches!(host, "127.0.0.1" | "localhost" | "::1") {
            return Err(format!(
                "refusing non-loopback broker {server}: this benchmark is loopback only"
            ));
        }
    }
    Ok(params)
}

/// A hash-chained run of `count` records of `shard`, each holding the buyer debits of
/// `entries` purchases, like the engine writes them.
fn buyer_debits(shard: ShardId, count: usize, entries: usize) -> Vec<BatchRecord> {
    let mut previous = GENESIS_HASH;
    let mut next_sequence = 1;
    (0..count)
        .map(|_| {
            let first_sequence = next_sequence;
            next_sequence += entries as u64;
            let inputs = (first_sequence..next_sequence)
                .map(|sequence| InputEntries {
                    cause: format!("command:purchase:purchase-{sequence:09}"),
                    timestamp_ms: 1_800_000_000_000 + sequence,
                    entries: vec![Entry::from_event(&buyer_debit(sequence))],
                })
                .collect();
            let record = BatchRecord::seal(shard, first_sequence, previous, inputs);
            previous = record.hash;
            record
        })
        .collect()
}

/// The `buyer_debited` event at `sequence`.
fn buyer_debit(sequence: u64) -> Event {
    // The ids below are fixed patterns of lowercase letters, digits and
    // hyphens, all valid.
    let buyer = UserId::parse(format!("buyer-{:06}", sequence % 1_000_000)).expect("a valid id");
    Event::BuyerDebited {
        purchase_id: PurchaseId::parse(format!("purchase-{sequence:09}")).expect("a valid id"),
        buyer_id: buyer.clone(),
        amount: 100,
        granted_items: vec![ItemId::parse("item-000001").expect("a valid id")],
        balance_after: 900,
        at_ms: 1_800_000_000_000 + sequence,
        postings: vec![
            Posting::new(Account::Wallet(buyer), -100),
            Posting::new(Account::Clearing, 100),
        ],
    }
}

struct ShardRun {
    transactions: usize,
    records: usize,
    latencies: Vec<Duration>,
}

async fn run_shard(
    config: KafkaConfig,
    topics: Topics,
    prefix: String,
    shard: ShardId,
    records: Vec<BatchRecord>,
    batch: usize,
    deadline: Instant,
) -> Result<ShardRun, String> {
    let mut writer = ShardTransactionalWriter::connect(&config, &topics, &prefix, shard)
        .await
        .map_err(|error| error.to_string())?;
    let mut run = ShardRun {
        transactions: 0,
        records: 0,
        latencies: Vec::new(),
    };
    for chunk in records.chunks(batch) {
        if Instant::now() >= deadline {
            break;
        }
        let started = Instant::now();
        writer
            .commit_batch(chunk, &[], None)
            .await
            .map_err(|error| error.to_string())?;
        run.latencies.push(started.elapsed());
        run.transactions += 1;
        run.records += chunk.len();
    }
    Ok(run)
}

fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() as f64 - 1.0) * fraction).round() as usize;
    sorted[index]
}

#[tokio::main]
async fn main() -> ExitCode {
    let params = match parse() {
        Ok(params) => params,
        Err(message) => {
            if !message.is_empty() {
                eprintln!("kafka-ceiling: {message}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let mut config = KafkaConfig::new(&params.bootstrap);
    config.overrides = params.overrides.clone();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_nanos())
        .unwrap_or_default();
    let prefix = format!("ceiling-{}-{nanos}", std::process::id());
    let topics = Topics::with_prefix(&prefix);
    let admin = match TopicAdmin::connect(&config) {
        Ok(admin) => admin,
        Err(error) => {
            eprintln!("kafka-ceiling: {error}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(error) = admin
        .ensure_topics(&topics, TopicLayout::single_node(params.shards))
        .await
    {
        eprintln!("kafka-ceiling: {error}");
        return ExitCode::FAILURE;
    }

    let per_shard = params.transactions * params.batch;
    let chains: Vec<Vec<BatchRecord>> = (0..params.shards)
        .map(|shard| buyer_debits(ShardId(shard), per_shard, params.entries))
        .collect();
    let record_bytes = chains[0][0].to_bytes().len();

    let started = Instant::now();
    let deadline = started + Duration::from_secs(params.max_seconds);
    let tasks: Vec<_> = chains
        .into_iter()
        .enumerate()
        .map(|(shard, records)| {
            tokio::spawn(run_shard(
                config.clone(),
                topics.clone(),
                prefix.clone(),
                ShardId(shard as u16),
                records,
                params.batch,
                deadline,
            ))
        })
        .collect();
    let mut runs = Vec::new();
    let mut failed = false;
    for task in tasks {
        match task.await {
            Ok(Ok(run)) => runs.push(run),
            Ok(Err(error)) => {
                eprintln!("kafka-ceiling: a shard writer failed: {error}");
                failed = true;
            }
            Err(join) => {
                eprintln!("kafka-ceiling: a shard task failed: {join}");
                failed = true;
            }
        }
    }
    let elapsed = started.elapsed();
    if let Err(error) = admin.delete_topics(&topics).await {
        eprintln!("kafka-ceiling: could not delete the benchmark topics: {error}");
    }
    if failed {
        return ExitCode::FAILURE;
    }

    let transactions: usize = runs.iter().map(|run| run.transactions).sum();
    let records: usize = runs.iter().map(|run| run.records).sum();
    let mut latencies: Vec<Duration> = runs.into_iter().flat_map(|run| run.latencies).collect();
    latencies.sort();
    let seconds = elapsed.as_secs_f64();
    let command: Vec<String> = std::env::args().collect();
    println!("command: {}", command.join(" "));
    println!(
        "parameters: bootstrap={} transactions={} batch={} shards={} entries={} max_seconds={} (one transactional writer per shard, acks=all, idempotent)",
        params.bootstrap, params.transactions, params.batch, params.shards, params.entries, params.max_seconds
    );
    let overrides: Vec<String> = params
        .overrides
        .iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect();
    println!(
        "librdkafka overrides: {}",
        if overrides.is_empty() {
            "none (defaults)".to_string()
        } else {
            overrides.join(" ")
        }
    );
    println!(
        "record: batch record of {} buyer_debited event(s), {record_bytes} bytes (value), key = shard",
        params.entries
    );
    println!(
        "done: {transactions} transactions, {records} records in {seconds:.2} s{}",
        if transactions < params.transactions * usize::from(params.shards) {
            " (stopped by --max-seconds)"
        } else {
            ""
        }
    );
    println!(
        "rate: {:.0} records/s, {:.1} transactions/s, {:.2} MB/s of values",
        records as f64 / seconds,
        transactions as f64 / seconds,
        (records * record_bytes) as f64 / seconds / 1e6
    );
    println!(
        "commit_batch latency: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        percentile(&latencies, 0.50).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        latencies.last().copied().unwrap_or_default().as_secs_f64() * 1e3
    );
    if let Some(path) = &params.json {
        let json = format!(
            "{{\"records_per_second\": {:.1}, \"records\": {records}, \"transactions\": {transactions}, \"seconds\": {seconds:.4}, \"record_bytes\": {record_bytes}, \"shards\": {}, \"batch\": {}, \"entries_per_record\": {}, \"commit_latency_ms_p50\": {:.2}, \"commit_latency_ms_p99\": {:.2}}}\n",
            records as f64 / seconds,
            params.shards,
            params.batch,
            params.entries,
            percentile(&latencies, 0.50).as_secs_f64() * 1e3,
            percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        );
        if let Err(error) = std::fs::write(path, json) {
            eprintln!("kafka-ceiling: cannot write {path}: {error}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
