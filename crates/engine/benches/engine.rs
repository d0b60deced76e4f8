//! In-process engine rate: primary purchases decided, applied and sealed
//! (bincode + SHA-256 chain) by `ShardRunner`s on one core, with every
//! cross-shard message delivered in memory. No storage.
//!
//! `cargo bench -p ledger-engine --bench engine`

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ledger_core::codec::MessageEnvelope;
use ledger_core::*;
use ledger_engine::shard::{ShardRunner, Step};

const BUYERS: usize = 2_000;
const ITEMS: usize = 10;

struct Cluster {
    config: Arc<Config>,
    runners: Vec<ShardRunner<()>>,
    network: VecDeque<MessageEnvelope>,
}

impl Cluster {
    fn new(shards: u16) -> Cluster {
        let config = Arc::new(Config::new(shards));
        let runners = (0..shards)
            .map(|s| ShardRunner::new(ShardId(s), config.clone()))
            .collect();
        Cluster {
            config,
            runners,
            network: VecDeque::new(),
        }
    }

    fn absorb(&mut self, step: Step<()>) {
        self.network.extend(step.messages);
    }

    fn submit(&mut self, command: Command) {
        let meta = CommandMeta {
            at_ms: 1_000,
            actor: Actor {
                role: Role::Service,
                user_id: UserId::parse("bench").unwrap(),
            },
        };
        let shard = self.config.shard_of(&command.home_key());
        let mut step = Step::default();
        self.runners[shard.0 as usize].command(command, meta, (), &mut step);
        self.absorb(step);
    }

    fn drain(&mut self) {
        while let Some(message) = self.network.pop_front() {
            let shard = message.to.0 as usize;
            let mut step = Step::default();
            self.runners[shard].message(message, 1_000, &mut step);
            self.absorb(step);
        }
    }
}

fn funded_cluster(shards: u16) -> Cluster {
    let mut cluster = Cluster::new(shards);
    for buyer in 0..BUYERS {
        cluster.submit(Command::Grant {
            grant_id: GrantId::parse(format!("g-{buyer}")).unwrap(),
            user_id: UserId::parse(format!("b-{buyer}")).unwrap(),
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
    cluster
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
    let envelope = codec::Envelope::seal(
        &event,
        ShardId(0),
        1,
        "command:purchase:purchase-000001",
        1,
        codec::GENESIS_HASH,
    );
    let bytes = envelope.to_bytes();
    let mut group = criterion.benchmark_group("codec");
    group.throughput(Throughput::Elements(1));
    group.bench_function("seal_and_encode", |b| {
        b.iter(|| {
            codec::Envelope::seal(
                &event,
                ShardId(0),
                1,
                "command:purchase:purchase-000001",
                1,
                codec::GENESIS_HASH,
            )
            .to_bytes()
        })
    });
    group.bench_function("decode_and_verify", |b| {
        b.iter(|| {
            codec::Envelope::from_bytes(&bytes)
                .unwrap()
                .event()
                .unwrap()
        })
    });
    group.finish();
}

criterion_group!(benches, bench_purchases, bench_codec);
criterion_main!(benches);
