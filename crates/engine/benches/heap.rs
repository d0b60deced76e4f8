//! Where a shard's memory goes: live heap bytes per remembered command, by
//! part of the state.
//!
//! Buyers are funded, then buy non-limited items (one purchase in 50 buys a
//! Limited serial), through an in-memory cluster of 4 shards. Each shard's
//! state is then copied through its snapshot encoding (so nothing is shared
//! with the cluster), and its parts are dropped one by one under a counting
//! allocator: what each drop frees is that part's size in memory, next to
//! its encoded size.
//!
//! `cargo bench -p ledger-engine --bench heap` (release). Environment:
//! `HEAP_BUYERS` (50,000; each funded by one grant), `HEAP_PURCHASES`
//! (100,000).

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

    let mut parts: Vec<(&str, isize, usize)> = Vec::new();
    let mut add = |name: &'static str, bytes: isize, encoded: usize| match parts
        .iter_mut()
        .find(|(known, _, _)| *known == name)
    {
        Some(part) => {
            part.1 += bytes;
            part.2 += encoded;
        }
        None => parts.push((name, bytes, encoded)),
    };
    let mut whole = 0;
    let mut whole_encoded = 0;
    for runner in &cluster.runners {
        let bytes = encode(&runner.state);
        whole_encoded += bytes.len();
        let before = live_bytes();
        let mut state: ShardState = decode("shard state", &bytes).expect("state decodes");
        whole += live_bytes() - before;
        // A part: its encoded size, then what dropping its fields frees.
        macro_rules! part {
            ($name:literal, $($field:ident),+) => {{
                let encoded = 0 $(+ encode(&state.$field).len())+;
                let bytes = freed(&mut state, |s| ($(std::mem::take(&mut s.$field)),+));
                add($name, bytes, encoded);
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
        add(
            "everything else",
            freed(&mut state, |s| {
                std::mem::replace(s, ShardState::new(s.shard))
            }),
            rest_encoded,
        );
    }
    let per_command = |bytes: isize| bytes as f64 / commands as f64;
    println!("{commands} commands ({buyers} grants, {purchases} purchases), {SHARDS} shards");
    println!();
    println!("| part | live heap bytes per command | encoded bytes per command |");
    println!("|---|---|---|");
    for (name, bytes, encoded) in &parts {
        println!(
            "| {name} | {:.0} | {:.0} |",
            per_command(*bytes),
            per_command(*encoded as isize)
        );
    }
    println!(
        "| whole state | {:.0} | {:.0} |",
        per_command(whole),
        per_command(whole_encoded as isize)
    );
}
