//! Projector rate: events of a mixed marketplace workload turned into
//! read-model changes (the pure `project`), and applied to the SQLite read
//! models the way the embedded store's projector does.
//!
//! `cargo bench -p ledger-projectors --bench projectors`

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use engine::in_memory::InMemoryCluster;
use engine::ports::{EventStore, ShardBatch};
use ledger_core::codec::BatchRecord;
use ledger_core::*;
use ledger_projectors::project;
use store_sqlite::SqliteStore;

/// Buyers of the workload; each runs one command of every kind.
const BUYERS: usize = 300;
const ITEMS: usize = 10;
const LIMITED_ITEMS: usize = 10;
const SHARDS: u16 = 4;
const LISTING_PRICE: i64 = 20;
/// When the workload's commands run; escrow is released a hold later.
const AT_MS: TimestampMs = 1_000;

type Cluster = InMemoryCluster;

/// Runs `commands` until every message is delivered; panics unless every
/// one succeeded, so the workload is exactly the one described.
fn run_all(cluster: &mut Cluster, commands: impl IntoIterator<Item = Command>) {
    let commands: Vec<Command> = commands.into_iter().collect();
    let count = commands.len();
    cluster.run(commands);
    cluster.expect_succeeded(count);
}

fn wallet(cluster: &Cluster, user_id: &UserId) -> i64 {
    cluster
        .state_of(&keys::user(user_id))
        .balance(&Account::Wallet(user_id.clone()))
}

fn user(n: usize) -> UserId {
    UserId::parse(format!("b-{n}")).unwrap()
}

fn creator(n: usize) -> UserId {
    UserId::parse(format!("c-{}", n % 5)).unwrap()
}

fn item(n: usize) -> ItemId {
    ItemId::parse(format!("i-{n}")).unwrap()
}

fn limited_item(n: usize) -> ItemId {
    ItemId::parse(format!("l-{n}")).unwrap()
}

fn purchase(purchase_id: String, buyer: usize, target: PurchaseTarget, price: i64) -> Command {
    Command::Purchase {
        purchase_id: PurchaseId::parse(purchase_id).unwrap(),
        buyer_id: user(buyer),
        target,
        expected_price: price,
        region: None,
    }
}

fn definition(item_id: ItemId, creator_id: UserId, supply: Option<u32>) -> ItemDefinition {
    ItemDefinition {
        item_id,
        creator_id,
        name: "thing".into(),
        price: 10,
        supply,
        max_per_user: None,
        starts_at_ms: None,
        ends_at_ms: None,
        resellable: supply.is_some(),
        kind: Default::default(),
    }
}

/// Every kind of event the read models follow: grants, publications, a
/// bundle, primary, Limited and bundle purchases, listings, resales,
/// refunds and escrow releases. Returns the log and the cluster after it.
fn workload() -> (Vec<BatchRecord>, Cluster) {
    let mut cluster = Cluster::new(SHARDS);
    cluster.now_ms = AT_MS;
    cluster.record();
    run_all(
        &mut cluster,
        (0..BUYERS).map(|n| Command::Grant {
            grant_id: GrantId::parse(format!("g-{n}")).unwrap(),
            user_id: user(n),
            amount: 1_000_000,
        }),
    );
    run_all(
        &mut cluster,
        (0..ITEMS)
            .map(|n| Command::PublishItem(definition(item(n), creator(n), None)))
            .chain((0..LIMITED_ITEMS).map(|n| {
                Command::PublishItem(definition(limited_item(n), creator(n), Some(BUYERS as u32)))
            })),
    );
    // i-0 and i-5 are both items of c-0.
    run_all(
        &mut cluster,
        [Command::CreateBundle {
            bundle_id: BundleId::parse("bundle-0").unwrap(),
            creator_id: creator(0),
            name: "pair".into(),
            item_ids: vec![item(0), item(5)],
            price: 15,
        }],
    );
    // Primary purchases skip i-0 and i-5, the bundle's items, so that
    // every bundle purchase grants both.
    let plain_item = |n: usize| if n.is_multiple_of(5) { n + 1 } else { n };
    run_all(
        &mut cluster,
        (0..BUYERS).map(|n| {
            purchase(
                format!("primary-{n}"),
                n,
                PurchaseTarget::Item(item(plain_item(n % ITEMS))),
                10,
            )
        }),
    );
    run_all(
        &mut cluster,
        (0..BUYERS).map(|n| {
            purchase(
                format!("limited-{n}"),
                n,
                PurchaseTarget::Item(limited_item(n % LIMITED_ITEMS)),
                10,
            )
        }),
    );
    run_all(
        &mut cluster,
        (0..BUYERS).map(|n| {
            purchase(
                format!("bundle-purchase-{n}"),
                n,
                PurchaseTarget::Bundle(BundleId::parse("bundle-0").unwrap()),
                15,
            )
        }),
    );
    let mut serials = Vec::new();
    for n in 0..LIMITED_ITEMS {
        let item_id = limited_item(n);
        let shard = cluster.config.shard_of(&keys::item(&item_id));
        for (serial, holder) in &cluster.runners[shard.0 as usize].state.items[&item_id].holders {
            serials.push((item_id.clone(), *serial, holder.user_id.clone()));
        }
    }
    assert_eq!(
        serials.len(),
        BUYERS,
        "every Limited purchase holds a serial"
    );
    run_all(
        &mut cluster,
        serials
            .iter()
            .enumerate()
            .map(|(n, (item_id, serial, holder))| Command::CreateListing {
                listing_id: ListingId::parse(format!("listing-{n}")).unwrap(),
                seller_id: holder.clone(),
                item_id: item_id.clone(),
                serial: *serial,
                price: LISTING_PRICE,
            }),
    );
    // Listing n is bought by the buyer after its seller: never the seller.
    run_all(
        &mut cluster,
        serials.iter().enumerate().map(|(n, (_, _, seller))| {
            let seller_number: usize = seller.as_str()["b-".len()..].parse().unwrap();
            Command::ResalePurchase {
                purchase_id: PurchaseId::parse(format!("resale-{n}")).unwrap(),
                buyer_id: user((seller_number + 1) % BUYERS),
                listing_id: ListingId::parse(format!("listing-{n}")).unwrap(),
                expected_price: LISTING_PRICE,
            }
        }),
    );
    // Half the primary purchases are refunded before their escrow is due...
    run_all(
        &mut cluster,
        (0..BUYERS / 2).map(|n| Command::Refund {
            refund_id: RefundId::parse(format!("refund-{n}")).unwrap(),
            purchase_id: PurchaseId::parse(format!("primary-{n}")).unwrap(),
        }),
    );
    // ... and the rest of the escrow is released.
    cluster.tick(AT_MS + cluster.config.escrow_hold_ms);
    (cluster.take_recorded().records, cluster)
}

fn bench_project(criterion: &mut Criterion) {
    let (log, _) = workload();
    let decoded: Vec<Vec<Event>> = log
        .iter()
        .map(|record| {
            record
                .logged()
                .map(|logged| logged.event().unwrap())
                .collect()
        })
        .collect();
    let project_log = || -> usize {
        log.iter()
            .zip(&decoded)
            .flat_map(|(record, events)| record.logged().zip(events))
            .map(|(logged, event)| project(&logged, event).len())
            .sum()
    };
    let expected_changes = project_log();
    let entries: u64 = log.iter().map(BatchRecord::len).sum();

    let mut group = criterion.benchmark_group("projector");
    group.throughput(Throughput::Elements(entries));
    group.sample_size(10);
    // The pure projection of decoded events into read-model changes: the
    // part every read-model backend shares.
    group.bench_function("project_events", |bencher| {
        bencher.iter(|| {
            let changes = project_log();
            assert_eq!(changes, expected_changes);
            changes
        })
    });
    group.finish();
}

/// A fresh data directory under the system temp dir, removed on drop.
struct TemporaryDirectory(std::path::PathBuf);

impl TemporaryDirectory {
    fn new() -> TemporaryDirectory {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "ledger-projector-bench-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        TemporaryDirectory(path)
    }
}

impl Drop for TemporaryDirectory {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn bench_apply_sqlite(criterion: &mut Criterion) {
    let (log, cluster) = workload();
    let event_count: u64 = log.iter().map(BatchRecord::len).sum();
    // Read back after each run: the read models agree with the engine.
    let checked_user = user(1);
    let checked_wallet = wallet(&cluster, &checked_user);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    let mut group = criterion.benchmark_group("projector");
    group.throughput(Throughput::Elements(event_count));
    group.sample_size(10);
    // Every run needs a fresh database, filled untimed (the fill costs more
    // than the projection): the same few runs per sample keep that bounded.
    group.sampling_mode(SamplingMode::Flat);
    // The embedded store's projector: reads the events in global commit
    // order, decodes and verifies each, projects it and applies the changes,
    // `PROJECTOR_BATCH_RECORDS` per transaction (WAL, synchronous=FULL).
    // Appending the log to a fresh database is not timed.
    group.bench_function("apply_sqlite", |bencher| {
        bencher.iter_custom(|iterations| {
            let mut total = Duration::ZERO;
            for _ in 0..iterations {
                let directory = TemporaryDirectory::new();
                let store = SqliteStore::open(&directory.0).unwrap();
                runtime.block_on(async {
                    store
                        .append(vec![ShardBatch {
                            shard: None,
                            records: log.clone(),
                            messages: Vec::new(),
                        }])
                        .await
                        .unwrap();
                    let started = Instant::now();
                    let applied = store.project_all_pending().await.unwrap();
                    total += started.elapsed();
                    assert_eq!(applied as u64, event_count);
                    let balance = store
                        .read_models()
                        .balance(checked_user.as_str())
                        .await
                        .unwrap();
                    assert_eq!(balance.balance, checked_wallet);
                });
                drop(store);
            }
            total
        })
    });
    group.finish();
}

criterion_group!(benches, bench_project, bench_apply_sqlite);
criterion_main!(benches);
