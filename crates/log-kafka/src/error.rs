//! Errors of this crate: what failed, on which topic, partition, shard or transactional id.

use ledger_core::codec::CodecError;
use ledger_core::ShardId;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

/// Creating or checking topics failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("cannot create a kafka admin client for {bootstrap}: {source}")]
    Client {
        bootstrap: String,
        source: KafkaError,
    },
    #[error("invalid topic layout: {reason}")]
    InvalidLayout { reason: String },
    #[error("kafka admin request {operation} failed: {source}")]
    Request {
        operation: &'static str,
        source: KafkaError,
    },
    #[error("cannot create topic {topic}: {code}")]
    Create {
        topic: String,
        code: RDKafkaErrorCode,
    },
    #[error("cannot delete topic {topic}: {code}")]
    Delete {
        topic: String,
        code: RDKafkaErrorCode,
    },
    #[error("cannot read the metadata of topic {topic}: {detail}")]
    Metadata { topic: String, detail: String },
    #[error("topic {topic} exists with {actual} partitions, expected {expected}")]
    PartitionMismatch {
        topic: String,
        expected: i32,
        actual: i32,
    },
    #[error("blocking kafka admin task for {operation} failed: {detail}")]
    Task {
        operation: &'static str,
        detail: String,
    },
}

/// Publishing a shard's batch failed. See [`WriteError::is_fenced`] and
/// [`WriteError::must_stop`]: a fenced or fatally failed writer must not be used again.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("cannot create transactional producer {transactional_id}: {source}")]
    Client {
        transactional_id: String,
        source: KafkaError,
    },
    /// Another instance initialised the same transactional id: this one is a zombie.
    /// Nothing it wrote in the open transaction is (or will become) visible to
    /// `read_committed` readers. The engine must stop owning the shard.
    #[error("transactional producer {transactional_id} was fenced by a newer instance during {operation}: {detail}")]
    Fenced {
        transactional_id: String,
        operation: &'static str,
        detail: String,
    },
    /// librdkafka raised a fatal error: the producer cannot be used any more.
    #[error(
        "transactional producer {transactional_id} failed fatally during {operation}: {detail}"
    )]
    Fatal {
        transactional_id: String,
        operation: &'static str,
        detail: String,
    },
    /// The transaction was aborted (nothing of it is visible); the batch may be retried
    /// with the same writer.
    #[error("transaction of {transactional_id} aborted because {operation} failed: {source}")]
    Aborted {
        transactional_id: String,
        operation: &'static str,
        source: KafkaError,
    },
    /// A call failed and the transaction could not be aborted either.
    #[error("transaction of {transactional_id} failed during {operation} ({source}) and aborting it failed too: {abort}")]
    AbortFailed {
        transactional_id: String,
        operation: &'static str,
        source: Box<KafkaError>,
        abort: Box<KafkaError>,
    },
    #[error("cannot create the reply producer: {source}")]
    ReplyClient { source: KafkaError },
    /// A non-transactional call (such as `init_transactions`) failed without fencing.
    #[error("{operation} of transactional producer {transactional_id} failed: {source}")]
    Transaction {
        transactional_id: String,
        operation: &'static str,
        source: KafkaError,
    },
    #[error("the record of shard {record_shard} from event {first_sequence} was handed to the writer of shard {shard}")]
    ForeignRecord {
        shard: ShardId,
        record_shard: ShardId,
        first_sequence: u64,
    },
    #[error("message {sequence} from shard {from} handed to the writer of shard {shard}")]
    ForeignMessage {
        shard: ShardId,
        from: ShardId,
        sequence: u64,
    },
    #[error("invalid consumed offset {offset} for {topic} partition {partition}")]
    InvalidOffset {
        topic: String,
        partition: i32,
        offset: i64,
    },
    #[error("blocking kafka task of {transactional_id} for {operation} failed: {detail}")]
    Task {
        transactional_id: String,
        operation: &'static str,
        detail: String,
    },
}

impl WriteError {
    /// This instance was fenced: another owner of the shard took over.
    pub fn is_fenced(&self) -> bool {
        matches!(self, WriteError::Fenced { .. })
    }

    /// The writer is unusable (fenced, fatal, or stuck in an un-abortable transaction):
    /// the engine must stop owning the shard and build a new writer to continue.
    pub fn must_stop(&self) -> bool {
        matches!(
            self,
            WriteError::Fenced { .. }
                | WriteError::Fatal { .. }
                | WriteError::AbortFailed { .. }
                | WriteError::Task { .. }
        )
    }
}

/// Reading or verifying the log of records failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("cannot create a read_committed consumer for {topic}: {source}")]
    Client { topic: String, source: KafkaError },
    #[error("cannot assign {topic} partition {partition} at offset {offset}: {source}")]
    Assign {
        topic: String,
        partition: i32,
        offset: i64,
        source: KafkaError,
    },
    #[error("consuming {topic} partition {partition} failed: {source}")]
    Consume {
        topic: String,
        partition: i32,
        source: KafkaError,
    },
    #[error("record at {topic} partition {partition} offset {offset} has no value")]
    EmptyRecord {
        topic: String,
        partition: i32,
        offset: i64,
    },
    #[error(
        "record at {topic} partition {partition} offset {offset} is not a valid batch record: {source}"
    )]
    Corrupt {
        topic: String,
        partition: i32,
        offset: i64,
        source: CodecError,
    },
    #[error("record at {topic} partition {partition} offset {offset} belongs to shard {found}, not shard {expected}")]
    WrongShard {
        topic: String,
        partition: i32,
        offset: i64,
        expected: ShardId,
        found: ShardId,
    },
    #[error("gap in the log of shard {shard}: expected a record from event {expected}, found one from event {found} at offset {offset}")]
    SequenceGap {
        shard: ShardId,
        expected: u64,
        found: u64,
        offset: i64,
    },
    #[error(
        "the record of shard {shard} from event {first_sequence} at offset {offset} holds no entry"
    )]
    NoEntries {
        shard: ShardId,
        first_sequence: u64,
        offset: i64,
    },
    #[error("broken hash chain on shard {shard}: the record from event {sequence} at offset {offset} does not link to the previous record's hash")]
    BrokenChain {
        shard: ShardId,
        sequence: u64,
        offset: i64,
    },
    #[error("did not reach the end of {topic} partition {partition} within {waited_ms} ms")]
    Timeout {
        topic: String,
        partition: i32,
        waited_ms: u64,
    },
    #[error("{topic} partition {partition} still holds an open transaction after {waited_ms} ms: its last stable offset is {stable}, its high watermark {high}")]
    OpenTransaction {
        topic: String,
        partition: i32,
        stable: i64,
        high: i64,
        waited_ms: u64,
    },
    #[error("cannot read the offsets of {topic} partition {partition}: {source}")]
    Watermarks {
        topic: String,
        partition: i32,
        source: KafkaError,
    },
    #[error("blocking kafka read task on {topic} partition {partition} failed: {detail}")]
    Task {
        topic: String,
        partition: i32,
        detail: String,
    },
}
