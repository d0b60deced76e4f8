//! Where a shard's memory goes: live heap bytes per remembered command, by
//! part of the state.
//!
//! Buyers are funded, then buy non-limited items (one purchase in 50 buys a
//! Limited serial), through an in-memory cluster of 4 shards. Each shard's
//! state is then copied through its snapshot encoding (so nothing is shared
//! with the cluster; its copies of one id then share one allocation, as in
//! the live shard and a restored one), and its parts are dropped one by one
//! under a counting allocator: what each drop frees is that part's size in
//! memory, next to its encoded size.
//!
//! `cargo bench -p ledger-engine --bench heap` (release). Environment:
//! `HEAP_BUYERS` (50,000; each funded by one grant), `HEAP_PURCHASES`
//! (100,000).
//!
//! `HEAP_SNAPSHOTS=FILE[,FILE...]` measures a server's shards instead, from
//! their latest snapshots as stored (per remembered command), e.g. of an
//! embedded data directory:
//!
//! ```sh
//! sqlite3 DATA/ledger.sqlite3 "SELECT writefile('/tmp/snapshot-' || shard || '.bin', snapshot)
//!   FROM snapshots AS s WHERE sequence = (SELECT max(sequence) FROM snapshots WHERE shard = s.shard)"
//! HEAP_SNAPSHOTS=$(ls /tmp/snapshot-*.bin | paste -sd,) cargo bench -p ledger-engine --bench heap
//! ```

// A global allocator is an unsafe trait; this one only counts and forwards.
#![allow(unsafe_code)]

mod fixtures;

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicIsize, Ordering};

use fixtures::{fund_buyer, publish_item, purchase, setting};
use ledger_core::codec::{decode, encode};
use ledger_core::*;
use ledger_engine::in_memory::InMemoryCluster as Cluster;

/// The server's allocator, counting the bytes it has handed out and not
/// taken back.
struct Counting;

static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is forwarded unchanged to mimalloc, a correct
// allocator; the counter is only arithmetic beside it.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract.
        unsafe { mimalloc::MiMalloc.alloc(layout) }
    }
    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller upholds `GlobalAlloc::dealloc`'s contract.
        unsafe { mimalloc::MiMalloc.dealloc(pointer, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn live_bytes() -> isize {
    LIVE_BYTES.load(Ordering::Relaxed)
}

const SHARDS: u16 = 4;
const ITEMS: usize = 100;
const LIMITED_SUPPLY: u32 = 1_000_000;

/// Bytes freed by dropping what `take` removes from `state`.
fn freed<T>(state: &mut ShardState, take: impl FnOnce(&mut ShardState) -> T) -> isize {
    let before = live_bytes();
    drop(take(state));
    before - live_bytes()
}

fn main() {
    if let Ok(files) = std::env::var("HEAP_SNAPSHOTS") {
        let mut measured = Measured::default();
        let mut commands = 0;
        let mut stored_bytes = 0;
        for file in files.split(',') {
            let stored = std::fs::read(file).unwrap_or_else(|error| panic!("{file}: {error}"));
            stored_bytes += stored.len();
            let state = measured.state(|| {
                ledger_core::codec::Snapshot::from_bytes(&stored)
                    .expect("the snapshot decodes")
                    .state
            });
            commands += state.commands.len();
            measured.parts(state);
        }
        println!(
            "{commands} remembered commands in the snapshots given ({stored_bytes} bytes stored)"
        );
        measured.print(commands);
        return;
    }
    let buyers = setting("HEAP_BUYERS", 50_000);
    let purchases = setting("HEAP_PURCHASES", 100_000);
    let mut cluster = Cluster::new(SHARDS);
    cluster.run((0..buyers).map(fund_buyer));
    cluster.run((0..ITEMS).map(publish_item));
    let limited = fixtures::limited_item(0);
    cluster.run([fixtures::publish_limited(0, LIMITED_SUPPLY)]);
    cluster.expect_succeeded(buyers + ITEMS + 1);
    assert!(
        purchases / buyers < ITEMS,
        "at most {ITEMS} purchases per buyer"
    );
    cluster.run((0..purchases).map(|n| {
        let target = if n % 50 == 0 {
            PurchaseTarget::Item(limited.clone())
        } else {
            // A buyer's rounds buy different items (a non-limited item is
            // owned once).
            PurchaseTarget::Item(fixtures::item((n % buyers + n / buyers) % ITEMS))
        };
        purchase(format!("p-{n:08}"), n % buyers, target, 10)
    }));
    cluster.expect_succeeded(purchases);
    let commands = buyers + ITEMS + 1 + purchases;

    let mut measured = Measured::default();
    for runner in &cluster.runners {
        let bytes = encode(&runner.state);
        let state = measured.state(|| {
            let mut state: ShardState = decode("shard state", &bytes).expect("state decodes");
            // Its ids shared as in the live shard (and a restored one).
            state.share_keys();
            state
        });
        measured.parts(state);
    }
    println!("{commands} commands ({buyers} grants, {purchases} purchases), {SHARDS} shards");
    measured.print(commands);

    // The maps' nodes alone, as the live shards hold them and rebuilt full
    // (`ShardState::compacted`, what a shard goes on with after a
    // snapshot): a copy shares every id and record with the cluster, so
    // what it holds is its nodes.
    let mut live = Measured::default();
    let mut compacted = Measured::default();
    for runner in &cluster.runners {
        let state = live.state(|| runner.state.clone());
        live.parts(state);
        let state = compacted.state(|| runner.state.compacted());
        compacted.parts(state);
    }
    println!();
    println!("B-tree nodes as the live shards hold them:");
    live.print(commands);
    println!();
    println!("B-tree nodes rebuilt full (after a snapshot):");
    compacted.print(commands);
}

/// Live heap bytes of states and their parts, with their encoded sizes.
#[derive(Default)]
struct Measured {
    parts: Vec<(&'static str, isize, usize)>,
    whole: isize,
    whole_encoded: usize,
}

impl Measured {
    /// A state as `decode` makes it, counted whole.
    fn state(&mut self, decode: impl FnOnce() -> ShardState) -> ShardState {
        let before = live_bytes();
        let state = decode();
        self.whole += live_bytes() - before;
        self.whole_encoded += encode(&state).len();
        state
    }

    fn add(&mut self, name: &'static str, bytes: isize, encoded: usize) {
        match self.parts.iter_mut().find(|(known, _, _)| *known == name) {
            Some(part) => {
                part.1 += bytes;
                part.2 += encoded;
            }
            None => self.parts.push((name, bytes, encoded)),
        }
    }

    /// Drops the state's parts one by one: what each drop frees is its size.
    fn parts(&mut self, mut state: ShardState) {
        macro_rules! part {
            ($name:literal, $($field:ident),+) => {{
                let encoded = 0 $(+ encode(&state.$field).len())+;
                let bytes = freed(&mut state, |s| ($(std::mem::take(&mut s.$field)),+));
                self.add($name, bytes, encoded);
            }};
        }
        part!("commands", commands);
        part!("retention queues", retention);
        part!("balances", balances);
        part!("owned items", owned_items);
        part!("escrow (and its due set)", escrow, escrow_due);
        part!("items (serials, counts)", items);
        part!("rate limits", limits);
        let rest_encoded = encode(&state).len();
        let rest = freed(&mut state, |s| {
            std::mem::replace(s, ShardState::new(s.shard))
        });
        self.add("everything else", rest, rest_encoded);
    }

    fn print(&self, commands: usize) {
        let per_command = |bytes: isize| bytes as f64 / commands as f64;
        println!();
        println!("| part | live heap bytes per command | encoded bytes per command |");
        println!("|---|---|---|");
        for (name, bytes, encoded) in &self.parts {
            println!(
                "| {name} | {:.0} | {:.0} |",
                per_command(*bytes),
                per_command(*encoded as isize)
            );
        }
        println!(
            "| whole state | {:.0} | {:.0} |",
            per_command(self.whole),
            per_command(self.whole_encoded as isize)
        );
    }
}
