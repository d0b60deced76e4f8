//! The Kafka side of the production path (`schemas/kafka/topics.md`):
//!
//! * [`TopicAdmin`] creates the ledger's topics idempotently, one partition per shard;
//! * [`ShardTransactionalWriter`] publishes one shard's batch (its records — one Kafka
//!   record per [`ledger_core::codec::BatchRecord`] on the events topic —, outgoing messages
//!   and the consumed input offsets) as ONE Kafka transaction, and reports fencing
//!   distinctly so the engine stops owning a shard another worker took over;
//! * [`EventLogReader`] reads one shard's records with `isolation.level=read_committed` and
//!   verifies the hash chain (checksums, `previous_hash` links, sequence continuity).
//!
//! librdkafka's transactional calls block the calling thread; every one of them runs on
//! `tokio::task::spawn_blocking`, never on an async worker.

mod admin;
mod config;
mod error;
mod reader;
mod writer;

pub use admin::{TopicAdmin, TopicLayout};
pub use config::{KafkaConfig, Topics, BOOTSTRAP_ENV};
pub use error::{AdminError, ReadError, WriteError};
pub use reader::{
    last_record, partition_count, read_partition_bytes, records_after, wait_until_stable,
    ChainCursor, EventLogReader, PublishedRecord, ReadBatch,
};
pub use writer::{
    event_key, transactional_id, ConsumedOffsets, PendingTransaction, ReplyProducer,
    ReplyRecordOut, ShardTransactionalWriter, SWEEP_KEY,
};

/// The client library underneath, for callers that build consumers of their own (the
/// engine's input consumer hands its [`rdkafka::consumer::ConsumerGroupMetadata`] to
/// [`ConsumedOffsets`]).
pub use rdkafka;

/// Runs a blocking librdkafka call off the async workers.
pub(crate) async fn blocking<T, F>(f: F) -> Result<T, tokio::task::JoinError>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f).await
}
