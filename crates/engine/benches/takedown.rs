//! A takedown of an item with 5,000 sales, half of them past escrow, on four
//! shards in one thread (every message delivered in memory, no storage): how
//! long the whole takedown takes (off sale, every escrowed sale refunded,
//! every shard reported), and the longest any one step of it holds a shard:
//! the item's shard, and any shard.
//!
//! `cargo bench -p ledger-engine --bench takedown`

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use ledger_core::*;
use ledger_engine::in_memory::InMemoryCluster;

const SHARDS: u16 = 4;
const SALES: usize = 5_000;
const PRICE: i64 = 100;
const ESCROW_HOLD_MS: u64 = 10_000;

fn item() -> ItemId {
    ItemId::parse("hat").unwrap()
}

fn purchases(range: std::ops::Range<usize>) -> impl Iterator<Item = Command> {
    range.map(|n| Command::Purchase {
        purchase_id: PurchaseId::parse(format!("p-{n}")).unwrap(),
        buyer_id: UserId::parse(format!("b-{n}")).unwrap(),
        target: PurchaseTarget::Item(item()),
        expected_price: PRICE,
        region: None,
    })
}

/// 5,000 sales of one item: the first half released from escrow, the
/// second half still in it.
fn sold_cluster() -> InMemoryCluster {
    let mut config = Config::new(SHARDS);
    config.escrow_hold_ms = ESCROW_HOLD_MS;
    let mut cluster = InMemoryCluster::with_config(Arc::new(config));
    cluster.run((0..SALES).map(|n| Command::Grant {
        grant_id: GrantId::parse(format!("g-{n}")).unwrap(),
        user_id: UserId::parse(format!("b-{n}")).unwrap(),
        amount: 1_000,
    }));
    cluster.run([Command::PublishItem(ItemDefinition {
        item_id: item(),
        creator_id: UserId::parse("carol").unwrap(),
        name: "hat".into(),
        price: PRICE,
        supply: None,
        max_per_user: None,
        resellable: false,
        starts_at_ms: None,
        ends_at_ms: None,
        kind: ItemKind::Accessory,
    })]);
    cluster.run(purchases(0..SALES / 2));
    cluster.tick(cluster.now_ms + ESCROW_HOLD_MS + 1);
    cluster.run(purchases(SALES / 2..SALES));
    cluster.expect_succeeded(SALES + 1 + SALES);
    cluster
}

/// Runs the takedown on a copy of `prepared` and returns how long it took
/// and its step times.
fn take_down(prepared: &InMemoryCluster) -> (Duration, Vec<(ShardId, Duration)>) {
    let mut cluster = prepared.fork();
    cluster.time_steps();
    let started = Instant::now();
    cluster.submit_as(Command::TakeDown { item_id: item() }, Role::Admin);
    cluster.drain();
    let elapsed = started.elapsed();
    cluster.expect_succeeded(1);
    let progress = &cluster.state_of(&keys::takedown(&item())).takedowns.homed[&item()];
    assert_eq!(progress.shards_reported, SHARDS, "the takedown finished");
    assert_eq!(progress.tally.refunded as usize, SALES / 2);
    assert_eq!(progress.tally.left as usize, SALES / 2);
    (elapsed, cluster.take_step_times())
}

fn bench_takedown(criterion: &mut Criterion) {
    let prepared = sold_cluster();
    let item_shard = prepared.config.shard_of(&keys::item(&item()));
    let (_, steps) = take_down(&prepared);
    let on_item_shard = steps
        .iter()
        .filter(|(shard, _)| *shard == item_shard)
        .count();
    println!(
        "takedown of {SALES} sales: {} message steps, {on_item_shard} on the item's shard",
        steps.len()
    );
    let mut group = criterion.benchmark_group("takedown_5000_sales_half_in_escrow");
    group.sample_size(10);
    group.bench_function("whole_takedown", |bencher| {
        bencher.iter_custom(|iterations| (0..iterations).map(|_| take_down(&prepared).0).sum())
    });
    // The longest single step: what a takedown adds to the wait of any
    // other command queued behind it on that shard.
    group.bench_function("longest_step_item_shard", |bencher| {
        bencher.iter_custom(|iterations| {
            (0..iterations)
                .map(|_| {
                    let (_, steps) = take_down(&prepared);
                    steps
                        .iter()
                        .filter(|(shard, _)| *shard == item_shard)
                        .map(|(_, duration)| *duration)
                        .max()
                        .unwrap_or_default()
                })
                .sum()
        })
    });
    group.bench_function("longest_step_any_shard", |bencher| {
        bencher.iter_custom(|iterations| {
            (0..iterations)
                .map(|_| {
                    let (_, steps) = take_down(&prepared);
                    steps
                        .iter()
                        .map(|(_, duration)| *duration)
                        .max()
                        .unwrap_or_default()
                })
                .sum()
        })
    });
    group.finish();
}

criterion_group!(benches, bench_takedown);
criterion_main!(benches);
