//! Every metric the engine emits, declared in one place.

pub const COMMANDS_TOTAL: &str = "ledger_engine_commands_total";
pub const MESSAGES_TOTAL: &str = "ledger_engine_messages_total";
pub const EVENTS_TOTAL: &str = "ledger_engine_events_total";
pub const BATCHES_TOTAL: &str = "ledger_engine_batches_total";
pub const BATCH_INPUTS: &str = "ledger_engine_batch_inputs";
pub const COMMIT_DURATION_SECONDS: &str = "ledger_engine_commit_duration_seconds";
pub const SNAPSHOTS_TOTAL: &str = "ledger_engine_snapshots_total";
pub const OVERLOADED_TOTAL: &str = "ledger_engine_overloaded_total";

pub fn describe() {
    metrics::describe_counter!(COMMANDS_TOTAL, "commands received by shards");
    metrics::describe_counter!(MESSAGES_TOTAL, "cross-shard messages consumed");
    metrics::describe_counter!(EVENTS_TOTAL, "events appended");
    metrics::describe_counter!(BATCHES_TOTAL, "group commits by shards");
    metrics::describe_histogram!(BATCH_INPUTS, "inputs decided per group commit");
    metrics::describe_histogram!(COMMIT_DURATION_SECONDS, "time from append to durable");
    metrics::describe_counter!(SNAPSHOTS_TOTAL, "shard snapshots saved");
    metrics::describe_counter!(
        OVERLOADED_TOTAL,
        "commands refused because a shard queue was full"
    );
}
