//! What each command type writes to the log: entries, events and stored
//! bytes per command, in format 2 (records) and, for the same entries, in
//! format 1 (one hash-chained envelope per event, as stored before). Counts,
//! not timings: the figures depend on the code only, not on the machine.
//!
//! `cargo bench -p ledger-engine --bench record_sizes`
//!
//! The in-memory cluster seals one record per input (a command or a
//! message); the server seals one record per shard per group commit, so
//! under load it writes fewer records (less header per command) than shown.

use ledger_core::codec::{Entry, Envelope, GENESIS_HASH};
use ledger_engine::in_memory::InMemoryCluster as Cluster;

mod fixtures;
use fixtures::*;

struct Sizes {
    records: u64,
    entries: u64,
    events: u64,
    format_two_bytes: u64,
    format_one_bytes: u64,
}

fn measure(prepared: &Cluster, commands: &[ledger_core::Command]) -> Sizes {
    let mut cluster = prepared.fork();
    cluster.record();
    cluster.run(commands.to_vec());
    cluster.expect_succeeded(commands.len());
    let recorded = cluster.take_recorded().records;
    let mut sizes = Sizes {
        records: recorded.len() as u64,
        entries: 0,
        events: 0,
        format_two_bytes: 0,
        format_one_bytes: 0,
    };
    for record in &recorded {
        sizes.format_two_bytes += record.to_bytes().len() as u64;
        for logged in record.logged() {
            sizes.entries += 1;
            if matches!(logged.entry, Entry::Event { .. }) {
                sizes.events += 1;
            }
            // The same entry as a format 1 envelope (the hash link does not
            // change the size).
            let envelope = Envelope::seal(
                &logged.event().expect("a recorded entry decodes"),
                logged.shard,
                logged.sequence,
                logged.cause,
                logged.timestamp_ms,
                GENESIS_HASH,
            );
            sizes.format_one_bytes += envelope.to_bytes().len() as u64;
        }
    }
    sizes
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument is not supported.
    println!(
        "| command | records | entries | of which events | format 1 bytes | format 2 bytes | format 2 / format 1 |"
    );
    println!("|---|---|---|---|---|---|---|");
    for set in command_sets() {
        let sizes = measure(&set.prepared, &set.commands);
        let per = |value: u64| value as f64 / set.commands.len() as f64;
        println!(
            "| {} | {:.1} | {:.1} | {:.1} | {:.0} | {:.0} | {:.2} |",
            set.name,
            per(sizes.records),
            per(sizes.entries),
            per(sizes.events),
            per(sizes.format_one_bytes),
            per(sizes.format_two_bytes),
            sizes.format_two_bytes as f64 / sizes.format_one_bytes as f64
        );
    }
}
