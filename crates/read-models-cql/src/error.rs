//! Errors of the CQL read models, with the context needed to act on them.

use ledger_core::codec::CodecError;
use ledger_core::ShardId;
use projectors::ReadError;
use scylla::errors::{
    ExecutionError, NextRowError, PagerExecutionError, PrepareError, TypeCheckError,
};

/// A failure of the CQL read models. The query side sees it as
/// [`ReadError::Backend`].
#[derive(Debug, thiserror::Error)]
pub enum CqlReadModelError {
    /// Connecting, creating the keyspace or its tables (shared with the event store).
    #[error("cannot open the read-model keyspace: {0}")]
    Keyspace(#[from] store_cql::CqlStoreError),
    #[error("{what} must be at least 1, got {value}")]
    InvalidSetting { what: &'static str, value: u64 },
    #[error("cannot prepare the {statement} statement: {source}")]
    Prepare {
        statement: &'static str,
        source: PrepareError,
    },
    #[error("cql request failed during {operation}: {source}")]
    Execute {
        operation: &'static str,
        source: ExecutionError,
    },
    #[error("cql paged read failed during {operation}: {source}")]
    Page {
        operation: &'static str,
        source: PagerExecutionError,
    },
    #[error("cql rows of {operation} have unexpected column types: {source}")]
    RowTypes {
        operation: &'static str,
        source: TypeCheckError,
    },
    #[error("cannot read the next row during {operation}: {source}")]
    NextRow {
        operation: &'static str,
        source: NextRowError,
    },
    #[error("event {sequence} of shard {shard} cannot be decoded: {source}")]
    Decode {
        shard: ShardId,
        sequence: u64,
        source: CodecError,
    },
    #[error("projection of shard {shard} expects event {expected} next, but the next record starts at event {found}")]
    SequenceGap {
        shard: ShardId,
        expected: u64,
        found: u64,
    },
    #[error("stored row {key} of {table} has no {column}")]
    IncompleteRow {
        table: &'static str,
        column: &'static str,
        key: String,
    },
    #[error("{what} {value} does not fit in a cql bigint")]
    IntegerOutOfRange { what: &'static str, value: u64 },
    #[error("stored {what} {value} is out of range")]
    StoredIntegerOutOfRange { what: &'static str, value: i64 },
}

impl From<CqlReadModelError> for ReadError {
    fn from(error: CqlReadModelError) -> Self {
        ReadError::Backend(error.to_string())
    }
}

/// A `u64` as a CQL bigint.
pub(crate) fn to_cql(what: &'static str, value: u64) -> Result<i64, CqlReadModelError> {
    i64::try_from(value).map_err(|_| CqlReadModelError::IntegerOutOfRange { what, value })
}

/// A stored CQL bigint as a `u64`.
pub(crate) fn from_cql(what: &'static str, value: i64) -> Result<u64, CqlReadModelError> {
    u64::try_from(value).map_err(|_| CqlReadModelError::StoredIntegerOutOfRange { what, value })
}

/// A stored CQL bigint as a `u32` (serials, supplies, per-user caps).
pub(crate) fn u32_from_cql(what: &'static str, value: i64) -> Result<u32, CqlReadModelError> {
    u32::try_from(value).map_err(|_| CqlReadModelError::StoredIntegerOutOfRange { what, value })
}
