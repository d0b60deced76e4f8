//! The in-process primary purchase of `engine_primary_purchase/4_shards`,
//! run once, for an instruction count: time on these shared machines moves
//! ±15% from run to run, the instructions a build executes for the same
//! input do not. Under callgrind, only the purchases are counted (the
//! funding before them is not):
//!
//! ```sh
//! cargo bench -p ledger-engine --bench instructions --no-run   # prints the binary
//! valgrind --tool=callgrind --callgrind-out-file=/tmp/callgrind.out \
//!   --collect-atstart=no --toggle-collect='*run_primary_purchases' BINARY
//! callgrind_annotate /tmp/callgrind.out | head -30
//! ```
//!
//! The total divided by the purchases is instructions per purchase.
//! Environment: `INSTRUCTIONS_SHARDS` (4); `INSTRUCTIONS_WAVE_MS` (0): how
//! far the commands' clock moves after each wave of 256 purchases. The
//! criterion bench keeps one clock reading for all of them, so its
//! retention and escrow queues order 20,000 entries of the same
//! millisecond by key; a server's clock moves on.

mod fixtures;

use fixtures::*;

/// The allocator of the `ledger` binary, so that the count is the server's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    // `cargo bench` passes `--bench`; nothing else is read from the arguments.
    let shards = setting("INSTRUCTIONS_SHARDS", 4u16);
    let wave_ms = setting("INSTRUCTIONS_WAVE_MS", 0u64);
    let count = BUYERS * ITEMS;
    let mut cluster = funded_cluster(shards);
    run_primary_purchases(&mut cluster, count, wave_ms);
    cluster.expect_succeeded(count);
    println!(
        "{count} primary purchases on {shards} shards, one record per input, \
         the clock {wave_ms} ms on after each wave of 256"
    );
}
