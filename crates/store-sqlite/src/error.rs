//! Errors of the SQLite store, with the context needed to act on them.

use std::path::PathBuf;

use engine::ports::StoreError;
use ledger_core::codec::CodecError;
use ledger_core::ShardId;

/// A failure of the SQLite store. Converted to the engine's [`StoreError`]
/// at the port boundary.
#[derive(Debug, thiserror::Error)]
pub enum SqliteStoreError {
    #[error("cannot create data directory {path}: {source}")]
    CreateDirectory {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("sqlite failed during {operation}: {source}")]
    Sqlite {
        operation: &'static str,
        source: rusqlite::Error,
    },
    #[error("no ledger database at {path}")]
    NoDatabase { path: PathBuf },
    #[error("sqlite refused write-ahead logging (journal mode is {journal_mode})")]
    WalUnavailable { journal_mode: String },
    #[error("event {sequence} of shard {shard} is already stored with a different hash")]
    EventConflict { shard: ShardId, sequence: u64 },
    #[error("message {sequence} from shard {sender} to shard {receiver} is already stored with different content")]
    MessageConflict {
        sender: ShardId,
        receiver: ShardId,
        sequence: u64,
    },
    #[error(
        "event {sequence} of shard {envelope_shard} was appended in a batch of shard {batch_shard}"
    )]
    ShardMismatch {
        batch_shard: ShardId,
        envelope_shard: ShardId,
        sequence: u64,
    },
    #[error("{what} {value} does not fit in a sqlite integer")]
    IntegerOutOfRange { what: &'static str, value: u64 },
    #[error("stored {what} {value} is out of range")]
    StoredIntegerOutOfRange { what: &'static str, value: i64 },
    #[error("stored bundle {bundle_id} has unreadable item ids: {source}")]
    BundleItems {
        bundle_id: String,
        source: serde_json::Error,
    },
    #[error("stored {what} of an item are unreadable: {detail}")]
    ItemPricing { what: &'static str, detail: String },
    #[error("the stored index of purchase {purchase_id} is unreadable: {detail}")]
    PurchaseIndex { purchase_id: String, detail: String },
    #[error("the group commit holding this append failed: {detail}")]
    GroupCommitFailed { detail: String },
    #[error("the store writer thread has stopped")]
    WriterStopped,
    #[error("cannot start the store writer thread: {source}")]
    WriterStart { source: std::io::Error },
    #[error("cannot start the store checkpoint thread: {source}")]
    CheckpointerStart { source: std::io::Error },
    #[error("the store projector thread has stopped")]
    ProjectorStopped,
    #[error("cannot start the store projector thread: {source}")]
    ProjectorStart { source: std::io::Error },
    #[error("a blocking {operation} task failed: {detail}")]
    BlockingTask {
        operation: &'static str,
        detail: String,
    },
    #[error("stored data is corrupt: {0}")]
    Corrupt(#[from] CodecError),
}

impl SqliteStoreError {
    /// Wraps a SQLite error with the operation that failed.
    pub(crate) fn sqlite(operation: &'static str) -> impl FnOnce(rusqlite::Error) -> Self {
        move |source| SqliteStoreError::Sqlite { operation, source }
    }

    fn operation(&self) -> &'static str {
        match self {
            SqliteStoreError::CreateDirectory { .. }
            | SqliteStoreError::WalUnavailable { .. }
            | SqliteStoreError::NoDatabase { .. } => "open",
            SqliteStoreError::Sqlite { operation, .. }
            | SqliteStoreError::BlockingTask { operation, .. } => operation,
            SqliteStoreError::EventConflict { .. }
            | SqliteStoreError::MessageConflict { .. }
            | SqliteStoreError::ShardMismatch { .. } => "append",
            SqliteStoreError::IntegerOutOfRange { .. }
            | SqliteStoreError::StoredIntegerOutOfRange { .. } => "integer conversion",
            SqliteStoreError::BundleItems { .. } => "bundle read",
            SqliteStoreError::ItemPricing { .. } => "item read",
            SqliteStoreError::PurchaseIndex { .. } => "purchase read",
            SqliteStoreError::GroupCommitFailed { .. } => "append",
            SqliteStoreError::WriterStopped
            | SqliteStoreError::WriterStart { .. }
            | SqliteStoreError::CheckpointerStart { .. }
            | SqliteStoreError::ProjectorStopped
            | SqliteStoreError::ProjectorStart { .. } => "write",
            SqliteStoreError::Corrupt(_) => "decode",
        }
    }
}

impl From<SqliteStoreError> for StoreError {
    fn from(error: SqliteStoreError) -> Self {
        match error {
            SqliteStoreError::Corrupt(source) => StoreError::Corrupt(source),
            other => StoreError::Backend {
                operation: other.operation(),
                detail: other.to_string(),
            },
        }
    }
}

/// A `u64` as a SQLite integer.
pub(crate) fn to_sql(what: &'static str, value: u64) -> Result<i64, SqliteStoreError> {
    i64::try_from(value).map_err(|_| SqliteStoreError::IntegerOutOfRange { what, value })
}

/// A stored SQLite integer as a `u64`.
pub(crate) fn from_sql(what: &'static str, value: i64) -> Result<u64, SqliteStoreError> {
    u64::try_from(value).map_err(|_| SqliteStoreError::StoredIntegerOutOfRange { what, value })
}
