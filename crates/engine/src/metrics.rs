//! Every metric the engine emits, declared in one place.

pub const COMMANDS_TOTAL: &str = "ledger_engine_commands_total";
pub const MESSAGES_TOTAL: &str = "ledger_engine_messages_total";
pub const EVENTS_TOTAL: &str = "ledger_engine_events_total";
pub const BATCHES_TOTAL: &str = "ledger_engine_batches_total";
pub const BATCH_INPUTS: &str = "ledger_engine_batch_inputs";
pub const COMMIT_DURATION_SECONDS: &str = "ledger_engine_commit_duration_seconds";
pub const SNAPSHOTS_TOTAL: &str = "ledger_engine_snapshots_total";
/// Snapshots put off to a shard's next batch because another shard's was
/// being saved.
pub const SNAPSHOTS_DEFERRED_TOTAL: &str = "ledger_engine_snapshots_deferred_total";
/// How long a snapshot holds its shard: the compacted copy of the state the
/// shard goes on with, made on the shard's task (the encoding and the write
/// run beside it).
pub const SNAPSHOT_COPY_DURATION_SECONDS: &str = "ledger_engine_snapshot_copy_duration_seconds";
/// How long encoding and saving a snapshot takes, beside its shard.
pub const SNAPSHOT_SAVE_DURATION_SECONDS: &str = "ledger_engine_snapshot_save_duration_seconds";
pub const OVERLOADED_TOTAL: &str = "ledger_engine_overloaded_total";
/// Last sequence durable in a shard's log, by shard: set by whoever writes
/// the shard (the embedded engine, or the distributed engine worker owning
/// it). With `ledger_projector_shard_sequence` it gives the projector's lag.
pub const SHARD_HEAD_SEQUENCE: &str = "ledger_shard_head_sequence";
/// Last sequence applied to the read models, by shard: set by the embedded
/// projector and the distributed one. The projector's lag on a shard is
/// `ledger_shard_head_sequence - ledger_projector_shard_sequence`.
pub const PROJECTOR_SHARD_SEQUENCE: &str = "ledger_projector_shard_sequence";

pub fn describe() {
    metrics::describe_counter!(COMMANDS_TOTAL, "commands received by shards");
    metrics::describe_counter!(MESSAGES_TOTAL, "cross-shard messages consumed");
    metrics::describe_counter!(EVENTS_TOTAL, "events appended");
    metrics::describe_counter!(BATCHES_TOTAL, "group commits by shards");
    metrics::describe_histogram!(BATCH_INPUTS, "inputs decided per group commit");
    metrics::describe_histogram!(COMMIT_DURATION_SECONDS, "time from append to durable");
    describe_snapshots();
    describe_shard_head();
    metrics::describe_counter!(
        OVERLOADED_TOTAL,
        "commands refused because a shard queue was full"
    );
}

/// Describes the snapshot metrics (also recorded by the distributed worker).
pub fn describe_snapshots() {
    metrics::describe_counter!(SNAPSHOTS_TOTAL, "shard snapshots saved");
    metrics::describe_counter!(
        SNAPSHOTS_DEFERRED_TOTAL,
        "shard snapshots put off to the next batch while another shard's was saved"
    );
    metrics::describe_histogram!(
        SNAPSHOT_COPY_DURATION_SECONDS,
        "time a snapshot holds its shard (the copy of the state)"
    );
    metrics::describe_histogram!(
        SNAPSHOT_SAVE_DURATION_SECONDS,
        "time to encode and save a snapshot, beside its shard"
    );
}

/// Describes [`SHARD_HEAD_SEQUENCE`] (also set by the distributed worker).
pub fn describe_shard_head() {
    metrics::describe_gauge!(
        SHARD_HEAD_SEQUENCE,
        "last sequence durable in the shard's log, by shard"
    );
}

/// Records the last durable sequence of `shard`.
pub fn record_shard_head(shard: ledger_core::ShardId, sequence: u64) {
    metrics::gauge!(SHARD_HEAD_SEQUENCE, "shard" => shard.0.to_string()).set(sequence as f64);
}

/// Describes [`PROJECTOR_SHARD_SEQUENCE`].
pub fn describe_projected() {
    metrics::describe_gauge!(
        PROJECTOR_SHARD_SEQUENCE,
        "last sequence applied to the read models, by shard"
    );
}

/// Records that the read models hold `shard` up to `sequence`.
pub fn record_projected(shard: ledger_core::ShardId, sequence: u64) {
    metrics::gauge!(PROJECTOR_SHARD_SEQUENCE, "shard" => shard.0.to_string()).set(sequence as f64);
}
