//! Every metric of the distributed services, declared in one place.

pub const WORKER_SHARDS_OWNED: &str = "ledger_worker_shards_owned";
pub const WORKER_REBALANCES_TOTAL: &str = "ledger_worker_rebalances_total";
pub const WORKER_RECORDS_TOTAL: &str = "ledger_worker_records_total";
pub const WORKER_EVENTS_TOTAL: &str = "ledger_worker_events_total";
pub const WORKER_TRANSACTIONS_TOTAL: &str = "ledger_worker_transactions_total";
pub const WORKER_REPUBLISHED_EVENTS_TOTAL: &str = "ledger_worker_republished_events_total";
pub const WORKER_RESTORED_FROM_KAFKA_EVENTS_TOTAL: &str =
    "ledger_worker_restored_from_kafka_events_total";
pub const WORKER_COMMIT_DURATION_SECONDS: &str = "ledger_worker_commit_duration_seconds";
pub const WORKER_APPEND_DURATION_SECONDS: &str = "ledger_worker_append_duration_seconds";
pub const WORKER_TRANSACTION_DURATION_SECONDS: &str = "ledger_worker_transaction_duration_seconds";
pub const WORKER_BATCH_INPUTS: &str = "ledger_worker_batch_inputs";
pub const WORKER_RESTORE_DURATION_SECONDS: &str = "ledger_worker_restore_duration_seconds";
pub const WORKER_CLAIM_RETRIES_TOTAL: &str = "ledger_worker_claim_retries_total";
pub const WORKER_REPLIES_NOT_SENT_TOTAL: &str = "ledger_worker_replies_not_sent_total";
pub const WORKER_STALLED_PARTITIONS: &str = "ledger_worker_stalled_partitions";
pub const WORKER_BATCHES_PER_TRANSACTION: &str = "ledger_worker_batches_per_transaction";
pub const BUS_COMMANDS_TOTAL: &str = "ledger_command_bus_commands_total";
pub const BUS_REPLIES_TOTAL: &str = "ledger_command_bus_replies_total";
pub const BUS_TIMEOUTS_TOTAL: &str = "ledger_command_bus_timeouts_total";
pub const BUS_OVERLOADED_TOTAL: &str = "ledger_command_bus_overloaded_total";
pub const BUS_RESENDS_TOTAL: &str = "ledger_command_bus_resends_total";
pub const PROJECTOR_EVENTS_TOTAL: &str = "ledger_projector_events_total";
pub const PROJECTOR_BATCHES_TOTAL: &str = "ledger_projector_batches_total";
pub const PUBLIC_STREAM_EVENTS_TOTAL: &str = "ledger_public_stream_events_total";
pub const PUBLIC_STREAM_TRANSACTIONS_TOTAL: &str = "ledger_public_stream_transactions_total";
pub const PUBLIC_STREAM_RESTARTS_TOTAL: &str = "ledger_public_stream_restarts_total";
pub const PUBLIC_STREAM_WAITING_RECORDS: &str = "ledger_public_stream_waiting_records";
pub const PUBLIC_STREAM_TRANSACTION_DURATION_SECONDS: &str =
    "ledger_public_stream_transaction_duration_seconds";

pub fn describe() {
    engine::metrics::describe_shard_head();
    engine::metrics::describe_snapshots();
    engine::metrics::describe_projected();
    metrics::describe_gauge!(WORKER_SHARDS_OWNED, "shards this engine worker owns");
    metrics::describe_counter!(WORKER_REBALANCES_TOTAL, "consumer group rebalances seen");
    metrics::describe_counter!(WORKER_RECORDS_TOTAL, "command and message records consumed");
    metrics::describe_counter!(WORKER_EVENTS_TOTAL, "events appended to CQL and Kafka");
    metrics::describe_counter!(WORKER_TRANSACTIONS_TOTAL, "Kafka transactions committed");
    metrics::describe_counter!(
        WORKER_REPUBLISHED_EVENTS_TOTAL,
        "events found in CQL but not in Kafka at takeover, published again"
    );
    metrics::describe_counter!(
        WORKER_RESTORED_FROM_KAFKA_EVENTS_TOTAL,
        "events found in Kafka but no longer in CQL at takeover (a database that lost acknowledged writes), written back to CQL"
    );
    metrics::describe_histogram!(
        WORKER_COMMIT_DURATION_SECONDS,
        "from the start of a shard batch's CQL append to the commit of the Kafka transaction that publishes it"
    );
    metrics::describe_histogram!(
        WORKER_APPEND_DURATION_SECONDS,
        "CQL append of one shard batch"
    );
    metrics::describe_histogram!(
        WORKER_TRANSACTION_DURATION_SECONDS,
        "Kafka transaction (produce, offsets, commit) publishing one or more shard batches"
    );
    metrics::describe_counter!(
        WORKER_CLAIM_RETRIES_TOTAL,
        "takeovers that read a shard's CQL log again because the previous owner appended before the claim"
    );
    metrics::describe_counter!(
        WORKER_REPLIES_NOT_SENT_TOTAL,
        "replies the producer's queue refused (their callers resend the command)"
    );
    metrics::describe_histogram!(WORKER_BATCH_INPUTS, "records polled per worker batch");
    metrics::describe_histogram!(
        WORKER_BATCHES_PER_TRANSACTION,
        "shard batches published together in one Kafka transaction"
    );
    metrics::describe_gauge!(
        WORKER_STALLED_PARTITIONS,
        "owned input partitions with records waiting that the worker has stopped reading"
    );
    metrics::describe_histogram!(
        WORKER_RESTORE_DURATION_SECONDS,
        "time to take over a shard (recover, fence, republish)"
    );
    metrics::describe_counter!(
        BUS_COMMANDS_TOTAL,
        "commands produced to the commands topic"
    );
    metrics::describe_counter!(BUS_REPLIES_TOTAL, "replies received for waiting commands");
    metrics::describe_counter!(
        BUS_TIMEOUTS_TOTAL,
        "commands whose reply did not come in time"
    );
    metrics::describe_counter!(BUS_OVERLOADED_TOTAL, "commands refused: too many in flight");
    metrics::describe_counter!(
        BUS_RESENDS_TOTAL,
        "command records produced again because their reply was late"
    );
    metrics::describe_counter!(
        PROJECTOR_EVENTS_TOTAL,
        "events projected into CQL read models"
    );
    metrics::describe_counter!(PROJECTOR_BATCHES_TOTAL, "projection batches written");
    metrics::describe_counter!(
        PUBLIC_STREAM_EVENTS_TOTAL,
        "public events published to the public topic"
    );
    metrics::describe_counter!(
        PUBLIC_STREAM_TRANSACTIONS_TOTAL,
        "public stream transactions committed (records and consumed offsets)"
    );
    metrics::describe_counter!(
        PUBLIC_STREAM_RESTARTS_TOTAL,
        "public stream sessions started again after a failure"
    );
    metrics::describe_gauge!(
        PUBLIC_STREAM_WAITING_RECORDS,
        "records read and held until the records whose messages they consumed are published"
    );
    metrics::describe_histogram!(
        PUBLIC_STREAM_TRANSACTION_DURATION_SECONDS,
        "one public stream transaction: produce, offsets, commit"
    );
}
