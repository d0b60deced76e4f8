//! Every metric the SQLite store and its projector emit, declared in one place.

/// Group commits (one SQLite transaction each).
pub const APPEND_BATCHES_TOTAL: &str = "ledger_store_append_batches_total";
/// `append` calls answered.
pub const APPEND_REQUESTS_TOTAL: &str = "ledger_store_append_requests_total";
/// `append` calls refused (conflict, storage failure).
pub const APPEND_FAILURES_TOTAL: &str = "ledger_store_append_failures_total";
/// Events newly written (re-appended duplicates excluded).
pub const APPEND_EVENTS_TOTAL: &str = "ledger_store_append_events_total";
/// Shard messages newly written.
pub const APPEND_MESSAGES_TOTAL: &str = "ledger_store_append_messages_total";
/// Envelopes carried by one group commit.
pub const APPEND_BATCH_ENVELOPES: &str = "ledger_store_append_batch_envelopes";
/// Time to write and commit one group commit.
pub const COMMIT_DURATION_SECONDS: &str = "ledger_store_commit_duration_seconds";
/// Snapshots written.
pub const SNAPSHOTS_SAVED_TOTAL: &str = "ledger_store_snapshots_saved_total";
/// Events applied to the read models.
pub const PROJECTOR_EVENTS_APPLIED_TOTAL: &str = "ledger_projector_events_applied_total";
/// Time to apply and commit one projection batch.
pub const PROJECTOR_BATCH_DURATION_SECONDS: &str = "ledger_projector_batch_duration_seconds";
/// Projection batches that failed (the projector retries).
pub const PROJECTOR_FAILURES_TOTAL: &str = "ledger_projector_failures_total";

/// Point reads answered from the published views (item, balance, first
/// inventory page).
pub const READ_CACHE_HITS_TOTAL: &str = "ledger_store_read_cache_hits_total";
/// Point reads of those kinds loaded from SQLite.
pub const READ_CACHE_MISSES_TOTAL: &str = "ledger_store_read_cache_misses_total";

/// Time of one background checkpoint of the write-ahead log.
pub const CHECKPOINT_DURATION_SECONDS: &str = "ledger_store_checkpoint_duration_seconds";
/// Frames in the write-ahead log at the last checkpoint.
pub const CHECKPOINT_LOG_FRAMES: &str = "ledger_store_checkpoint_log_frames";
/// Frames of the log in the database file after the last checkpoint.
pub const CHECKPOINT_COPIED_FRAMES: &str = "ledger_store_checkpoint_copied_frames";
/// Background checkpoints that failed (the writer's own still bounds the log).
pub const CHECKPOINT_FAILURES_TOTAL: &str = "ledger_store_checkpoint_failures_total";

/// Registers descriptions with the installed recorder.
pub fn describe() {
    metrics::describe_counter!(APPEND_BATCHES_TOTAL, "group commits written by the store");
    metrics::describe_counter!(APPEND_REQUESTS_TOTAL, "append calls answered by the store");
    metrics::describe_counter!(APPEND_FAILURES_TOTAL, "append calls refused by the store");
    metrics::describe_counter!(APPEND_EVENTS_TOTAL, "events newly written to the log");
    metrics::describe_counter!(
        APPEND_MESSAGES_TOTAL,
        "shard messages newly written to the outbox"
    );
    metrics::describe_histogram!(APPEND_BATCH_ENVELOPES, "envelopes per group commit");
    metrics::describe_histogram!(
        COMMIT_DURATION_SECONDS,
        metrics::Unit::Seconds,
        "time to write and commit a group commit"
    );
    metrics::describe_counter!(SNAPSHOTS_SAVED_TOTAL, "shard snapshots written");
    metrics::describe_counter!(
        PROJECTOR_EVENTS_APPLIED_TOTAL,
        "events applied to the read models"
    );
    metrics::describe_histogram!(
        PROJECTOR_BATCH_DURATION_SECONDS,
        metrics::Unit::Seconds,
        "time to apply and commit a projection batch"
    );
    metrics::describe_counter!(PROJECTOR_FAILURES_TOTAL, "projection batches that failed");
    metrics::describe_histogram!(
        CHECKPOINT_DURATION_SECONDS,
        metrics::Unit::Seconds,
        "time of a background write-ahead log checkpoint"
    );
    metrics::describe_gauge!(
        CHECKPOINT_LOG_FRAMES,
        "frames in the write-ahead log at the last checkpoint"
    );
    metrics::describe_gauge!(
        CHECKPOINT_COPIED_FRAMES,
        "frames of the write-ahead log in the database file after the last checkpoint"
    );
    metrics::describe_counter!(
        CHECKPOINT_FAILURES_TOTAL,
        "background write-ahead log checkpoints that failed"
    );
    metrics::describe_counter!(
        READ_CACHE_HITS_TOTAL,
        "point reads answered from the views published by the projector"
    );
    metrics::describe_counter!(
        READ_CACHE_MISSES_TOTAL,
        "point reads of cached kinds loaded from the read-model database"
    );
    engine::metrics::describe_projected();
}
