//! Ports: what the engine needs from storage and what it offers to the APIs.
//! Adapters (embedded SQLite; Kafka + CQL) implement these.

use std::collections::BTreeMap;

use async_trait::async_trait;
use ledger_core::codec::{BatchRecord, MessageEnvelope, Snapshot};
use ledger_core::{Command, CommandMeta, Completion, ShardId};

/// A storage failure. The engine treats a failed append as fatal for the shard.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage backend failed during {operation}: {detail}")]
    Backend {
        operation: &'static str,
        detail: String,
    },
    #[error("stored data is corrupt: {0}")]
    Corrupt(#[from] ledger_core::codec::CodecError),
    /// Another writer appended to (or claimed) the shard at a sequence this
    /// writer meant to write: it was superseded, or its view of the log is
    /// behind. Its in-memory state must be dropped and the log read again.
    #[error("shard {shard} holds a record or claim at event {sequence} written by another writer since this one read its log")]
    HeadMoved { shard: ShardId, sequence: u64 },
}

/// The records and outgoing messages of one shard, decided together.
/// `messages` are the `Sent` entries of `records`, for the outbox.
#[derive(Debug, Clone, Default)]
pub struct ShardBatch {
    pub shard: Option<ShardId>,
    pub records: Vec<BatchRecord>,
    pub messages: Vec<MessageEnvelope>,
}

impl ShardBatch {
    /// Entries (sequence numbers) in the batch's records.
    pub fn entries(&self) -> u64 {
        self.records.iter().map(BatchRecord::len).sum()
    }
}

/// What a shard needs to rebuild its state.
#[derive(Debug, Clone, Default)]
pub struct Recovery {
    pub snapshot: Option<Snapshot>,
    /// Records after the snapshot, in sequence order.
    pub records: Vec<BatchRecord>,
}

/// Resolves when an ordered append is durable (see [`EventStore::append_ordered`]).
pub type AppendReceipt =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), StoreError>> + Send>>;

/// The event log, the shard message outbox and snapshots.
#[async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// Durably appends several shards' batches in one atomic write: all or none.
    /// Appending a record that is already stored (same shard and sequences,
    /// same hash) is a no-op, so a redo is safe.
    async fn append(&self, batches: Vec<ShardBatch>) -> Result<(), StoreError>;

    /// Queues an append and returns once its place in the commit order is
    /// fixed; the receipt resolves when it is durable. A store that commits
    /// every append in queue order, across all shards (one log), lets a shard
    /// hand its messages to other shards before its own append is durable:
    /// their effects are queued after it, so they can never be durable
    /// without it. Such a store answers `true` to `orders_appends_globally`.
    /// The default appends fully before returning.
    async fn append_ordered(&self, batches: Vec<ShardBatch>) -> Result<AppendReceipt, StoreError> {
        self.append(batches).await?;
        Ok(Box::pin(std::future::ready(Ok(()))))
    }

    /// Whether appends become durable in the order `append_ordered` queued them.
    fn orders_appends_globally(&self) -> bool {
        false
    }

    /// Makes this process the only writer of `shard` from `next_sequence`
    /// (its head after [`EventStore::recover`], plus one) on: any other
    /// writer, including an earlier owner that is still running, can no
    /// longer append there. Fails with [`StoreError::HeadMoved`] when a
    /// record already starts at `next_sequence` (another writer appended
    /// since the log was read: recover again, then claim again). A store
    /// that has one writer by construction (a file one process holds)
    /// claims nothing.
    async fn claim_shard(&self, shard: ShardId, next_sequence: u64) -> Result<(), StoreError> {
        let _ = (shard, next_sequence);
        Ok(())
    }

    /// The latest snapshot of `shard` and every record after it.
    async fn recover(&self, shard: ShardId) -> Result<Recovery, StoreError>;

    /// Messages addressed to `to` that it has not consumed yet: from each
    /// sender, those with a sequence at or above `next_expected[sender]`
    /// (1 when absent), in (sender, sequence) order.
    async fn pending_messages(
        &self,
        to: ShardId,
        next_expected: &BTreeMap<ShardId, u64>,
    ) -> Result<Vec<MessageEnvelope>, StoreError>;

    /// Stores a snapshot taken after event `snapshot.state.next_sequence - 1`.
    async fn save_snapshot(&self, shard: ShardId, snapshot: &Snapshot) -> Result<(), StoreError>;

    /// Records of `shard` holding an entry with a sequence above `after`
    /// (the first may start at or before it), at most `limit`, in order.
    async fn read_shard(
        &self,
        shard: ShardId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<BatchRecord>, StoreError>;
}

/// Why a command could not be run (it was not applied).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    #[error("the ledger is at capacity; retry later")]
    Overloaded,
    #[error("the ledger is shutting down")]
    ShuttingDown,
    #[error("the command did not complete within {timeout_ms} ms; retry with the same id")]
    Timeout { timeout_ms: u64 },
}

/// Runs commands: the command API's view of the engine.
#[async_trait]
pub trait CommandBus: Send + Sync + 'static {
    /// Runs `command` and returns its completion once it is durable.
    /// Idempotent: the same command id returns the original completion.
    async fn submit(&self, command: Command, meta: CommandMeta) -> Result<Completion, SubmitError>;
}
