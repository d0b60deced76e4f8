//! In-process engine rate: commands decided, applied and sealed (bincode +
//! SHA-256 chain) by `ShardRunner`s on one core, with every cross-shard
//! message delivered in memory. No storage. Also: the codec alone, and a
//! shard restored from its log (what the engine does on startup).
//!
//! `cargo bench -p ledger-engine --bench engine`

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use ledger_core::codec::BatchRecord;
use ledger_core::*;
use ledger_engine::in_memory::InMemoryCluster as Cluster;
use ledger_engine::ports::Recovery;
use ledger_engine::shard::ShardRunner;

mod fixtures;

/// The allocator of the `ledger` binary, so that the figures are the server's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use fixtures::*;

/// Events in the `replay` log.
const REPLAY_EVENTS: usize = 50_000;

fn bench_purchases(criterion: &mut Criterion) {
    let count = BUYERS * ITEMS;
    // One record sealed per input (as the simulation runs), then one per
    // shard and round of delivery (as the runtime's group commit does).
    for (name, group_commit) in [
        ("engine_primary_purchase", false),
        ("engine_primary_purchase_group_commit", true),
    ] {
        let mut group = criterion.benchmark_group(name);
        group.throughput(Throughput::Elements(count as u64));
        group.sample_size(10);
        for shards in [1u16, 4] {
            group.bench_function(format!("{shards}_shards"), |bencher| {
                bencher.iter_custom(|iterations| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iterations {
                        let mut cluster = funded_cluster(shards);
                        if group_commit {
                            cluster.group_commit();
                        }
                        let started = Instant::now();
                        run_primary_purchases(&mut cluster, count, 0);
                        total += started.elapsed();
                        cluster.expect_succeeded(count);
                    }
                    total
                })
            });
        }
        group.finish();
    }
}

fn bench_codec(criterion: &mut Criterion) {
    let event = Event::BuyerDebited {
        purchase_id: PurchaseId::parse("purchase-000001").unwrap(),
        buyer_id: UserId::parse("buyer-000001").unwrap(),
        amount: 100,
        granted_items: vec![ItemId::parse("item-000001").unwrap()],
        balance_after: 900,
        at_ms: 1_800_000_000_000,
        postings: vec![
            Posting::new(
                Account::Wallet(UserId::parse("buyer-000001").unwrap()),
                -100,
            ),
            Posting::new(Account::Clearing, 100),
        ],
    };
    // One event in a record of its own: the cost per record.
    let seal = || {
        codec::BatchRecord::seal(
            ShardId(0),
            1,
            codec::GENESIS_HASH,
            vec![codec::InputEntries {
                cause: "command:purchase:purchase-000001".into(),
                timestamp_ms: 1,
                entries: vec![codec::Entry::from_event(&event)],
            }],
        )
    };
    let bytes = seal().to_bytes();
    let mut group = criterion.benchmark_group("codec");
    group.throughput(Throughput::Elements(1));
    group.bench_function("seal_and_encode", |b| b.iter(|| seal().to_bytes()));
    group.bench_function("decode_and_verify", |b| {
        b.iter(|| {
            let record = codec::BatchRecord::from_bytes(&bytes).unwrap();
            let event = record.logged().next().unwrap().event().unwrap();
            event
        })
    });
    group.finish();
}

// ------------------------------------------------------------ per command

/// Measures `commands` of one type, `COMMANDS_PER_BATCH` per batch, on a
/// fresh copy of `prepared` each batch (supply, funds and ownership would
/// otherwise run out or make later batches refuse).
fn bench_command_type(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    prepared: &Cluster,
    commands: &[Command],
) {
    assert_eq!(commands.len(), COMMANDS_PER_BATCH);
    group.bench_function(name, |bencher| {
        bencher.iter_batched(
            || (prepared.fork(), commands.to_vec()),
            |(mut cluster, commands)| {
                cluster.run(commands);
                cluster.expect_succeeded(COMMANDS_PER_BATCH);
                // Returned so that criterion drops it outside the timing.
                cluster
            },
            BatchSize::PerIteration,
        )
    });
}

fn bench_per_command(criterion: &mut Criterion) {
    let mut group = criterion.benchmark_group("per_command");
    group.throughput(Throughput::Elements(COMMANDS_PER_BATCH as u64));
    group.sample_size(10);
    for set in command_sets() {
        bench_command_type(&mut group, set.name, &set.prepared, &set.commands);
    }
    group.finish();
}

// ------------------------------------------------------------ replay

/// The log of a one-shard cluster from its first record (grants,
/// publications, then primary purchases), cut after the record that reaches
/// `REPLAY_EVENTS` entries, as stored bytes. Restore checks the chain of
/// whatever prefix it is given, so the cut only makes the count round.
fn replay_log() -> Vec<Vec<u8>> {
    let mut cluster = Cluster::new(1);
    cluster.record();
    fund(&mut cluster);
    let mut next_purchase = 0;
    while cluster.recorded_entries() < REPLAY_EVENTS as u64 {
        let wave = next_purchase..next_purchase + 256;
        next_purchase = wave.end;
        cluster.run(wave.map(|n| {
            purchase(
                format!("p-{n}"),
                n % BUYERS,
                PurchaseTarget::Item(item(n / BUYERS)),
                10,
            )
        }));
    }
    cluster.expect_succeeded(BUYERS + ITEMS + next_purchase);
    let mut log = cluster.take_recorded().records;
    let mut entries = 0;
    let keep = log
        .iter()
        .take_while(|record| {
            let before = entries;
            entries += record.len();
            before < REPLAY_EVENTS as u64
        })
        .count();
    log.truncate(keep);
    log.iter().map(BatchRecord::to_bytes).collect()
}

/// Panics unless `runner` is the shard rebuilt from all of `records`.
fn expect_restored(runner: &ShardRunner<()>, records: &[BatchRecord]) {
    let last = records.last().expect("a log");
    assert_eq!(runner.state.next_sequence, last.next_sequence());
    assert!(last.last_sequence() >= REPLAY_EVENTS as u64);
    assert_eq!(runner.last_hash, last.hash);
}

fn bench_replay(criterion: &mut Criterion) {
    let stored = replay_log();
    let records: Vec<BatchRecord> = stored
        .iter()
        .map(|bytes| BatchRecord::from_bytes(bytes).unwrap())
        .collect();
    let entries: u64 = records.iter().map(BatchRecord::len).sum();
    let config = Arc::new(Config::new(1));

    let mut group = criterion.benchmark_group("replay");
    group.throughput(Throughput::Elements(entries));
    group.sample_size(10);
    // From stored bytes, as on startup: the store decodes each record and
    // checks its checksum (`BatchRecord::from_bytes`, what the SQLite
    // store's recovery read does), then `ShardRunner::restore` (the engine's
    // startup path) checks the chain, decodes each event and evolves.
    group.bench_function("restore_50k_events", |bencher| {
        bencher.iter_with_large_drop(|| {
            let decoded = stored
                .iter()
                .map(|bytes| BatchRecord::from_bytes(bytes))
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            let recovery = Recovery {
                snapshot: None,
                records: decoded,
            };
            let runner = ShardRunner::<()>::restore(ShardId(0), config.clone(), recovery).unwrap();
            expect_restored(&runner, &records);
            runner
        })
    });
    // `ShardRunner::restore` alone, on records the store already decoded
    // and verified: how the time splits between the store and the engine.
    group.bench_function("restore_50k_decoded_envelopes", |bencher| {
        bencher.iter_batched(
            || Recovery {
                snapshot: None,
                records: records.clone(),
            },
            |recovery| {
                let runner =
                    ShardRunner::<()>::restore(ShardId(0), config.clone(), recovery).unwrap();
                expect_restored(&runner, &records);
                runner
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

// ------------------------------------------------------------ snapshot

/// Buyers and purchases behind the `snapshot` state: one shard that
/// remembers 250,000 commands (within the idempotency horizon).
const SNAPSHOT_BUYERS: usize = 50_000;
const SNAPSHOT_PURCHASES: usize = 200_000;

/// The pause a snapshot costs its shard: copying the state (encoding and
/// saving it run on another thread).
fn bench_snapshot(criterion: &mut Criterion) {
    let mut cluster = Cluster::new(1);
    cluster.group_commit();
    cluster.run((0..SNAPSHOT_BUYERS).map(fund_buyer));
    let items = SNAPSHOT_PURCHASES.div_ceil(SNAPSHOT_BUYERS);
    cluster.run((0..items).map(publish_item));
    cluster.run((0..SNAPSHOT_PURCHASES).map(|n| {
        let target = PurchaseTarget::Item(item(n / SNAPSHOT_BUYERS));
        purchase(format!("p-{n}"), n % SNAPSHOT_BUYERS, target, 10)
    }));
    cluster.expect_succeeded(SNAPSHOT_BUYERS + items + SNAPSHOT_PURCHASES);
    let runner = &mut cluster.runners[0];
    assert!(runner.state.commands.len() >= SNAPSHOT_BUYERS + SNAPSHOT_PURCHASES);
    let mut group = criterion.benchmark_group("snapshot");
    group.sample_size(10);
    group.bench_function("copy_state_of_250k_commands", |bencher| {
        bencher.iter_with_large_drop(|| runner.snapshot())
    });
    // What a server's shard pays: the copy it goes on with is rebuilt with
    // full B-tree nodes.
    group.bench_function("take_and_compact_state_of_250k_commands", |bencher| {
        bencher.iter_with_large_drop(|| runner.snapshot_and_compact())
    });
    group.finish();
}

criterion_group!(
    benches,
    bench_purchases,
    bench_codec,
    bench_per_command,
    bench_replay,
    bench_snapshot
);
criterion_main!(benches);
