//! The claims the CQL layout rests on, checked on a real event stream (no
//! database needed): every identity row has one writing shard, and a
//! user's transaction entries come from the user's shard in time order.

#[allow(dead_code)]
mod scenario;

use ledger_core::{keys, shard_for};
use ledger_read_models_cql::ownership::single_writer_key;
use projectors::{project, Change};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_rows_have_one_writing_shard_and_histories_one_clock() {
    let scenario = scenario::run().await;
    let mut checked = 0;
    for log in &scenario.records {
        let mut last_entry_ms = 0;
        for logged in log.iter().flat_map(|record| record.logged()) {
            let event = logged.event().expect("stored events decode");
            if let Some(key) = single_writer_key(&event) {
                assert_eq!(
                    shard_for(&key, scenario::SHARD_COUNT),
                    logged.shard,
                    "{} at {}.{} writes rows of {key}",
                    logged.entry.event_type(),
                    logged.shard,
                    logged.sequence
                );
                checked += 1;
            }
            for change in project(&logged, &event) {
                if let Change::TransactionAppended { user_id, at_ms, .. } = change {
                    assert_eq!(
                        shard_for(&keys::user(&user_id), scenario::SHARD_COUNT),
                        logged.shard,
                        "a transaction of {user_id} comes from another shard"
                    );
                    assert!(
                        at_ms >= last_entry_ms,
                        "transaction times of shard {} go backwards at {}",
                        logged.shard,
                        logged.sequence
                    );
                    last_entry_ms = at_ms;
                }
            }
        }
    }
    assert!(checked > 50, "only {checked} events write identity rows");
}
