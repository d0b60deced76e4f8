//! Soak: does a shard's state stay flat once commands are forgotten?
//!
//! Millions of primary purchases over a million users, through
//! `ShardRunner`s in memory (no storage: what is measured is the state the
//! shards keep), with a simulated clock so that the idempotency horizon (the
//! escrow hold too) is passed many times within the run. Every
//! `SOAK_SAMPLE` purchases it prints one CSV line: purchases, simulated
//! seconds, resident memory, the encoded size of every shard's snapshot,
//! the commands remembered, the digests of forgotten ids and the items
//! owned. At the end, a table of encoded bytes per account, owned item,
//! item, serial and remembered command, and the resident memory added per
//! purchase before and after the horizon.
//!
//! `cargo bench -p ledger-engine --bench soak` (release). Environment:
//! `SOAK_PURCHASES` (5,000,000), `SOAK_USERS` (1,000,000), `SOAK_ITEMS`
//! (100 unlimited items; 1 % of purchases go to 10 Limiteds),
//! `SOAK_HORIZON_SECONDS` (60, simulated; also the escrow hold),
//! `SOAK_RATE` (20,000 purchases per simulated second), `SOAK_SAMPLE`
//! (250,000), `SOAK_IDS` (`uuid7`, or `plain` for ids without a time),
//! `SOAK_OUTPUT` (a file for the CSV, besides stdout).

mod fixtures;

use std::io::Write;
use std::sync::Arc;

use fixtures::setting;
use ledger_core::codec::encode;
use ledger_core::*;
use ledger_engine::in_memory::InMemoryCluster as Cluster;

const SHARDS: u16 = 4;
const LIMITED_ITEMS: usize = 10;
const LIMITED_SUPPLY: u32 = 100_000;
const PRICE: i64 = 10;

struct Ids {
    uuid7: bool,
}

impl Ids {
    /// The `n`th id of `kind`, dated `at_ms` when ids are UUIDv7.
    fn make(&self, kind: u8, n: u64, at_ms: u64) -> String {
        if self.uuid7 {
            format!(
                "{:08x}-{:04x}-7{:03x}-8{:03x}-{:012x}",
                at_ms >> 16,
                at_ms & 0xffff,
                kind,
                (n >> 48) & 0xfff,
                n & 0xffff_ffff_ffff
            )
        } else {
            format!("{}-{n}", kind as char)
        }
    }
}

fn user(n: u64) -> UserId {
    UserId::parse(format!("u-{n}")).expect("valid user id")
}

fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|field| field.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

struct Sample {
    purchases: u64,
    resident_bytes: u64,
}

fn main() {
    let purchases = setting("SOAK_PURCHASES", 5_000_000);
    let users = setting("SOAK_USERS", 1_000_000);
    let items = setting("SOAK_ITEMS", 100);
    let horizon_ms = setting("SOAK_HORIZON_SECONDS", 60) * 1_000;
    let rate = setting("SOAK_RATE", 20_000);
    let sample_every = setting("SOAK_SAMPLE", 250_000);
    let ids = Ids {
        uuid7: std::env::var("SOAK_IDS").map_or(true, |ids| ids != "plain"),
    };
    let mut output = std::env::var("SOAK_OUTPUT")
        .ok()
        .map(|path| std::fs::File::create(path).expect("SOAK_OUTPUT is writable"));

    let mut config = Config::new(SHARDS);
    config.idempotency_horizon_ms = horizon_ms;
    config.escrow_hold_ms = horizon_ms;
    let mut cluster = Cluster::with_config(Arc::new(config));

    // The catalogue and every user's funds.
    let mut catalogue: Vec<Command> = (0..items)
        .map(|n| item_definition(format!("i-{n}"), None))
        .collect();
    catalogue.extend(
        (0..LIMITED_ITEMS).map(|n| item_definition(format!("l-{n}"), Some(LIMITED_SUPPLY))),
    );
    cluster.run(catalogue);
    let funds = PRICE * (purchases / users.max(1) + 2) as i64;
    let mut n = 0;
    let grants: Vec<Command> = (0..users)
        .map(|user_number| {
            n += 1;
            Command::Grant {
                grant_id: GrantId::parse(ids.make(b'g', n, cluster.now_ms)).expect("valid id"),
                user_id: user(user_number),
                amount: funds,
            }
        })
        .collect();
    cluster.run(grants);
    cluster.expect_succeeded(items as usize + LIMITED_ITEMS + users as usize);

    let header = "purchases,simulated_seconds,resident_bytes,snapshot_bytes,remembered_commands,forgotten_digests,owned_items";
    println!("{header}");
    if let Some(file) = output.as_mut() {
        writeln!(file, "{header}").expect("SOAK_OUTPUT is writable");
    }
    let started_ms = cluster.now_ms;
    let mut samples = Vec::new();
    let per_tick = (rate / 20).max(1);
    for purchase in 0..purchases {
        // Each user buys the items in turn, so a purchase rarely meets one
        // its buyer already owns; 1 in 100 goes to a Limited.
        let buyer = purchase % users;
        let round = purchase / users;
        let target = if purchase % 100 == 99 {
            ItemId::parse(format!("l-{}", purchase % LIMITED_ITEMS as u64))
        } else {
            ItemId::parse(format!("i-{}", (buyer + round) % items))
        }
        .expect("valid item id");
        cluster.submit(Command::Purchase {
            purchase_id: PurchaseId::parse(ids.make(b'p', purchase, cluster.now_ms))
                .expect("valid id"),
            buyer_id: user(buyer),
            target: PurchaseTarget::Item(target),
            expected_price: PRICE,
            region: None,
        });
        if purchase % 256 == 255 {
            cluster.drain();
        }
        if purchase % per_tick == per_tick - 1 {
            let now_ms = cluster.now_ms + per_tick * 1_000 / rate;
            cluster.tick(now_ms);
        }
        if (purchase + 1) % sample_every == 0 || purchase + 1 == purchases {
            cluster.drain();
            let line = sample(&cluster, purchase + 1, started_ms);
            println!("{}", line.0);
            if let Some(file) = output.as_mut() {
                writeln!(file, "{}", line.0).expect("SOAK_OUTPUT is writable");
            }
            samples.push(line.1);
        }
    }
    report(&cluster, &samples, horizon_ms, rate);
}

fn item_definition(item_id: String, supply: Option<u32>) -> Command {
    Command::PublishItem(ItemDefinition {
        item_id: ItemId::parse(item_id).expect("valid item id"),
        creator_id: UserId::parse("creator").expect("valid user id"),
        name: "soak thing".into(),
        price: PRICE,
        supply,
        max_per_user: None,
        starts_at_ms: None,
        ends_at_ms: None,
        resellable: false,
        kind: Default::default(),
    })
}

fn sample(cluster: &Cluster, purchases: u64, started_ms: u64) -> (String, Sample) {
    let resident = resident_bytes();
    let snapshot_bytes: usize = cluster
        .runners
        .iter()
        .map(|runner| runner.snapshot().to_bytes().len())
        .sum();
    let states = || cluster.runners.iter().map(|runner| &runner.state);
    let remembered: usize = states().map(|state| state.commands.len()).sum();
    let digests: usize = states()
        .map(|state| state.retention.forgotten_digests.len())
        .sum();
    let owned: usize = states().map(|state| state.owned_items.len()).sum();
    let line = format!(
        "{purchases},{:.1},{resident},{snapshot_bytes},{remembered},{digests},{owned}",
        (cluster.now_ms - started_ms) as f64 / 1_000.0
    );
    (
        line,
        Sample {
            purchases,
            resident_bytes: resident,
        },
    )
}

/// Encoded bytes per entry of a collection, over every shard.
fn per_entry<T: bincode::Encode>(parts: impl Iterator<Item = (T, usize)>) -> String {
    let (bytes, entries) = parts.fold((0usize, 0usize), |(bytes, entries), (part, count)| {
        (bytes + encode(&part).len(), entries + count)
    });
    if entries == 0 {
        return "n/a".into();
    }
    format!("{:.0}", bytes as f64 / entries as f64)
}

fn report(cluster: &Cluster, samples: &[Sample], horizon_ms: u64, rate: u64) {
    let states = || cluster.runners.iter().map(|runner| &runner.state);
    println!();
    println!("| what | encoded bytes each (snapshot) |");
    println!("|---|---|");
    println!(
        "| account (a user's wallet, a creator's pending) | {} |",
        per_entry(states().map(|s| (&s.balances, s.balances.len())))
    );
    println!(
        "| owned item (user, unlimited item) | {} |",
        per_entry(states().map(|s| { (&s.owned_items, s.owned_items.len()) }))
    );
    println!(
        "| serial held (Limited) | {} |",
        per_entry(
            states()
                .flat_map(|s| s.items.values())
                .map(|item| { ((&item.holders, &item.held_per_user), item.holders.len(),) })
        )
    );
    println!(
        "| item (definition, price, flags) | {} |",
        per_entry(states().flat_map(|s| s.items.values()).map(|item| {
            (
                (&item.definition, item.price, item.on_sale, item.next_serial),
                1,
            )
        }))
    );
    println!(
        "| remembered command (record + retention entry) | {} |",
        per_entry(states().map(|s| {
            (
                (&s.commands, &s.retention.due, &s.retention.due_paid),
                s.commands.len(),
            )
        }))
    );
    println!(
        "| forgotten id without a time (digest) | {} |",
        per_entry(states().map(|s| {
            (
                &s.retention.forgotten_digests,
                s.retention.forgotten_digests.len(),
            )
        }))
    );
    // Resident memory added per purchase: while nothing is forgotten yet,
    // and once the horizon has been passed twice.
    let horizon_purchases = horizon_ms * rate / 1_000;
    let slope = |from: &Sample, to: &Sample| {
        (to.resident_bytes as f64 - from.resident_bytes as f64)
            / (to.purchases - from.purchases) as f64
    };
    let before: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.purchases <= horizon_purchases)
        .collect();
    let after: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.purchases >= 2 * horizon_purchases)
        .collect();
    if let (Some(first), Some(last)) = (before.first(), before.last()) {
        if last.purchases > first.purchases {
            println!(
                "resident bytes added per purchase before the horizon: {:.0}",
                slope(first, last)
            );
        }
    }
    if let (Some(first), Some(last)) = (after.first(), after.last()) {
        if last.purchases > first.purchases {
            println!(
                "resident bytes added per purchase after twice the horizon: {:.0}",
                slope(first, last)
            );
        }
    }
}
