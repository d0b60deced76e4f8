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

const BUYERS: usize = 2_000;
const ITEMS: usize = 10;

/// Commands per measured batch in `per_command`: small enough that a fresh
/// copy of the prepared cluster per batch is cheap, large enough that the
/// per-batch timer overhead disappears.
const COMMANDS_PER_BATCH: usize = 1_000;
/// Shards of the `per_command` clusters: several, so that most messages
/// cross shards, as they do in production.
const PER_COMMAND_SHARDS: u16 = 4;
/// Limited items in the `per_command` catalogue (`l-0` ..), each with a
/// supply of `COMMANDS_PER_BATCH`, so a batch never sells out.
const LIMITED_ITEMS: usize = 10;
/// Price of every resale listing.
const LISTING_PRICE: i64 = 20;
/// Events in the `replay` log.
const REPLAY_EVENTS: usize = 50_000;

fn user(n: usize) -> UserId {
    UserId::parse(format!("b-{n}")).unwrap()
}

fn item(n: usize) -> ItemId {
    ItemId::parse(format!("i-{n}")).unwrap()
}

fn limited_item(n: usize) -> ItemId {
    ItemId::parse(format!("l-{n}")).unwrap()
}

fn bundle() -> BundleId {
    BundleId::parse("bundle-0").unwrap()
}

fn funded_cluster(shards: u16) -> Cluster {
    let mut cluster = Cluster::new(shards);
    fund(&mut cluster);
    cluster.expect_succeeded(BUYERS + ITEMS);
    cluster
}

/// Funds `BUYERS` buyers and publishes `ITEMS` non-limited items.
fn fund(cluster: &mut Cluster) {
    for buyer in 0..BUYERS {
        cluster.submit(Command::Grant {
            grant_id: GrantId::parse(format!("g-{buyer}")).unwrap(),
            user_id: user(buyer),
            amount: 1_000_000,
        });
    }
    for item in 0..ITEMS {
        cluster.submit(Command::PublishItem(ItemDefinition {
            item_id: ItemId::parse(format!("i-{item}")).unwrap(),
            creator_id: UserId::parse(format!("c-{}", item % 5)).unwrap(),
            name: "thing".into(),
            price: 10,
            supply: None,
            max_per_user: None,
            starts_at_ms: None,
            ends_at_ms: None,
            resellable: false,
        }));
    }
    cluster.drain();
}

fn purchases(cluster: &mut Cluster, count: usize) {
    for n in 0..count {
        let buyer = n % BUYERS;
        let item = n / BUYERS;
        cluster.submit(Command::Purchase {
            purchase_id: PurchaseId::parse(format!("p-{n}")).unwrap(),
            buyer_id: UserId::parse(format!("b-{buyer}")).unwrap(),
            target: PurchaseTarget::Item(ItemId::parse(format!("i-{item}")).unwrap()),
            expected_price: 10,
        });
        // Deliver in waves, as a shard's batch would.
        if n % 256 == 255 {
            cluster.drain();
        }
    }
    cluster.drain();
}

fn bench_purchases(criterion: &mut Criterion) {
    let count = BUYERS * ITEMS;
    let mut group = criterion.benchmark_group("engine_primary_purchase");
    group.throughput(Throughput::Elements(count as u64));
    group.sample_size(10);
    for shards in [1u16, 4] {
        group.bench_function(format!("{shards}_shards"), |bencher| {
            bencher.iter_custom(|iterations| {
                let mut total = Duration::ZERO;
                for _ in 0..iterations {
                    let mut cluster = funded_cluster(shards);
                    let started = Instant::now();
                    purchases(&mut cluster, count);
                    total += started.elapsed();
                    cluster.expect_succeeded(count);
                }
                total
            })
        });
    }
    group.finish();
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

/// Primary purchase `purchase_id` of `target` by buyer `buyer`, at its price.
fn purchase(purchase_id: String, buyer: usize, target: PurchaseTarget, price: i64) -> Command {
    Command::Purchase {
        purchase_id: PurchaseId::parse(purchase_id).unwrap(),
        buyer_id: user(buyer),
        target,
        expected_price: price,
    }
}

/// The funded cluster plus what every command type needs: resellable
/// Limiteds and a bundle of two non-limited items of one creator.
fn catalogue_cluster() -> Cluster {
    let mut cluster = funded_cluster(PER_COMMAND_SHARDS);
    cluster.run((0..LIMITED_ITEMS).map(|n| {
        Command::PublishItem(ItemDefinition {
            item_id: limited_item(n),
            creator_id: UserId::parse(format!("c-{}", n % 5)).unwrap(),
            name: "limited thing".into(),
            price: 10,
            supply: Some(COMMANDS_PER_BATCH as u32),
            max_per_user: None,
            starts_at_ms: None,
            ends_at_ms: None,
            resellable: true,
        })
    }));
    // i-0 and i-5 are both items of c-0 (creator of i-n is c-(n % 5)).
    cluster.run([Command::CreateBundle {
        bundle_id: bundle(),
        creator_id: UserId::parse("c-0").unwrap(),
        name: "pair".into(),
        item_ids: vec![item(0), item(5)],
        price: 15,
    }]);
    cluster.expect_succeeded(LIMITED_ITEMS + 1);
    cluster
}

/// Buyer `n` buys one non-limited item (never the same one twice).
fn primary_purchases(prefix: &str) -> impl Iterator<Item = Command> + '_ {
    (0..COMMANDS_PER_BATCH).map(move |n| {
        purchase(
            format!("{prefix}-{n}"),
            n,
            PurchaseTarget::Item(item(n % ITEMS)),
            10,
        )
    })
}

/// Buyer `n` buys one serial of a Limited.
fn limited_purchases(prefix: &str) -> impl Iterator<Item = Command> + '_ {
    (0..COMMANDS_PER_BATCH).map(move |n| {
        purchase(
            format!("{prefix}-{n}"),
            n,
            PurchaseTarget::Item(limited_item(n % LIMITED_ITEMS)),
            10,
        )
    })
}

/// Every serial sold so far, as (item, serial, holder), read from the item
/// shards' state (a serial's number depends on delivery order).
fn sold_serials(cluster: &Cluster) -> Vec<(ItemId, u32, UserId)> {
    let mut serials = Vec::new();
    for n in 0..LIMITED_ITEMS {
        let item_id = limited_item(n);
        let state = cluster.state_of(&keys::item(&item_id));
        for (serial, holder) in &state.items[&item_id].holders {
            serials.push((item_id.clone(), *serial, holder.user_id.clone()));
        }
    }
    serials
}

/// One listing per sold serial, by its holder.
fn listings(serials: &[(ItemId, u32, UserId)]) -> impl Iterator<Item = Command> + '_ {
    serials
        .iter()
        .enumerate()
        .map(|(n, (item_id, serial, holder))| Command::CreateListing {
            listing_id: ListingId::parse(format!("listing-{n}")).unwrap(),
            seller_id: holder.clone(),
            item_id: item_id.clone(),
            serial: *serial,
            price: LISTING_PRICE,
        })
}

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
    let catalogue = catalogue_cluster();

    let mut owners = catalogue.fork();
    owners.run(limited_purchases("setup-limited"));
    owners.expect_succeeded(COMMANDS_PER_BATCH);
    let serials = sold_serials(&owners);
    assert_eq!(serials.len(), COMMANDS_PER_BATCH);

    let mut listed = owners.fork();
    listed.run(listings(&serials));
    listed.expect_succeeded(COMMANDS_PER_BATCH);

    let mut purchased = catalogue.fork();
    purchased.run(primary_purchases("setup-primary"));
    purchased.expect_succeeded(COMMANDS_PER_BATCH);

    let grants: Vec<Command> = (0..COMMANDS_PER_BATCH)
        .map(|n| Command::Grant {
            grant_id: GrantId::parse(format!("grant-{n}")).unwrap(),
            user_id: user(n),
            amount: 100,
        })
        .collect();
    let bundle_purchases: Vec<Command> = (0..COMMANDS_PER_BATCH)
        .map(|n| {
            purchase(
                format!("bundle-purchase-{n}"),
                n,
                PurchaseTarget::Bundle(bundle()),
                15,
            )
        })
        .collect();
    // Buyers COMMANDS_PER_BATCH.. never sold anything, so no buyer is the
    // seller of the listing it buys.
    let resale_purchases: Vec<Command> = (0..COMMANDS_PER_BATCH)
        .map(|n| Command::ResalePurchase {
            purchase_id: PurchaseId::parse(format!("resale-{n}")).unwrap(),
            buyer_id: user(COMMANDS_PER_BATCH + n),
            listing_id: ListingId::parse(format!("listing-{n}")).unwrap(),
            expected_price: LISTING_PRICE,
        })
        .collect();
    // Refunds of non-limited primary purchases (escrow frozen, then reversed
    // and the buyer credited); a Limited's refund also revokes its serial.
    let refunds: Vec<Command> = (0..COMMANDS_PER_BATCH)
        .map(|n| Command::Refund {
            refund_id: RefundId::parse(format!("refund-{n}")).unwrap(),
            purchase_id: PurchaseId::parse(format!("setup-primary-{n}")).unwrap(),
        })
        .collect();

    let mut group = criterion.benchmark_group("per_command");
    group.throughput(Throughput::Elements(COMMANDS_PER_BATCH as u64));
    group.sample_size(10);
    bench_command_type(&mut group, "grant", &catalogue, &grants);
    let primary: Vec<Command> = primary_purchases("p").collect();
    bench_command_type(&mut group, "primary_purchase", &catalogue, &primary);
    let limited: Vec<Command> = limited_purchases("p").collect();
    bench_command_type(&mut group, "limited_purchase", &catalogue, &limited);
    bench_command_type(&mut group, "bundle_purchase", &catalogue, &bundle_purchases);
    let listings: Vec<Command> = listings(&serials).collect();
    bench_command_type(&mut group, "create_listing", &owners, &listings);
    bench_command_type(&mut group, "resale_purchase", &listed, &resale_purchases);
    bench_command_type(&mut group, "refund", &purchased, &refunds);
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

criterion_group!(
    benches,
    bench_purchases,
    bench_codec,
    bench_per_command,
    bench_replay
);
criterion_main!(benches);
