//! Errors of the CQL store, with the context needed to act on them.

use engine::ports::StoreError;
use ledger_core::codec::CodecError;
use ledger_core::ShardId;
use scylla::errors::{
    ExecutionError, NewSessionError, NextRowError, PagerExecutionError, PrepareError,
    SchemaAgreementError, TypeCheckError, UseKeyspaceError,
};

/// A failure of the CQL store. Converted to the engine's [`StoreError`] at
/// the port boundary.
#[derive(Debug, thiserror::Error)]
pub enum CqlStoreError {
    #[error("no cql contact point was given")]
    NoContactPoints,
    #[error("cannot connect to cql contact points {contact_points}: {source}")]
    Connect {
        contact_points: String,
        source: Box<NewSessionError>,
    },
    #[error("keyspace name {keyspace:?} is not 1 to 48 lowercase letters, digits or underscores starting with a letter")]
    InvalidKeyspaceName { keyspace: String },
    #[error("cannot apply schema statement `{statement}`: {source}")]
    Schema {
        statement: String,
        source: ExecutionError,
    },
    #[error("cql nodes disagree on the schema after {operation}: {source}")]
    SchemaAgreement {
        operation: &'static str,
        source: SchemaAgreementError,
    },
    #[error("cannot switch to keyspace {keyspace}: {source}")]
    UseKeyspace {
        keyspace: String,
        source: UseKeyspaceError,
    },
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
    #[error("keyspace layout {name} is {stored}, but this store was configured with {configured}")]
    LayoutMismatch {
        name: &'static str,
        stored: i64,
        configured: i64,
    },
    #[error("{what} must be at least 1, got {value}")]
    InvalidSetting { what: &'static str, value: u64 },
    #[error(
        "event {sequence} of shard {shard} is already stored in a record with a different hash"
    )]
    RecordConflict { shard: ShardId, sequence: u64 },
    #[error("message {sequence} from shard {sender} to shard {receiver} is already stored with different content")]
    MessageConflict {
        sender: ShardId,
        receiver: ShardId,
        sequence: u64,
    },
    #[error(
        "the record of shard {record_shard} from event {first_sequence} was appended in a batch of shard {batch_shard}"
    )]
    ShardMismatch {
        batch_shard: ShardId,
        record_shard: ShardId,
        first_sequence: u64,
    },
    #[error("the record of shard {shard} from event {first_sequence} holds no entry")]
    EmptyRecord { shard: ShardId, first_sequence: u64 },
    #[error("shard {shard} holds a record or claim at event {sequence} written by another writer since this one read its log")]
    HeadMoved { shard: ShardId, sequence: u64 },
    #[error("the conditional write of {operation} answered without {column}")]
    ConditionalAnswer {
        operation: &'static str,
        column: &'static str,
    },
    #[error("{what} {value} does not fit in a cql bigint")]
    IntegerOutOfRange { what: &'static str, value: u64 },
    #[error("stored {what} {value} is out of range")]
    StoredIntegerOutOfRange { what: &'static str, value: i64 },
    #[error("stored data is corrupt: {0}")]
    Corrupt(#[from] CodecError),
}

impl CqlStoreError {
    fn operation(&self) -> &'static str {
        match self {
            CqlStoreError::NoContactPoints
            | CqlStoreError::Connect { .. }
            | CqlStoreError::InvalidKeyspaceName { .. }
            | CqlStoreError::UseKeyspace { .. }
            | CqlStoreError::LayoutMismatch { .. }
            | CqlStoreError::InvalidSetting { .. } => "connect",
            CqlStoreError::Schema { .. } => "schema",
            CqlStoreError::SchemaAgreement { operation, .. }
            | CqlStoreError::Execute { operation, .. }
            | CqlStoreError::Page { operation, .. }
            | CqlStoreError::RowTypes { operation, .. }
            | CqlStoreError::NextRow { operation, .. } => operation,
            CqlStoreError::Prepare { .. } => "prepare",
            CqlStoreError::RecordConflict { .. }
            | CqlStoreError::MessageConflict { .. }
            | CqlStoreError::ShardMismatch { .. }
            | CqlStoreError::EmptyRecord { .. }
            | CqlStoreError::HeadMoved { .. }
            | CqlStoreError::ConditionalAnswer { .. } => "append",
            CqlStoreError::IntegerOutOfRange { .. }
            | CqlStoreError::StoredIntegerOutOfRange { .. } => "integer conversion",
            CqlStoreError::Corrupt(_) => "decode",
        }
    }
}

impl From<CqlStoreError> for StoreError {
    fn from(error: CqlStoreError) -> Self {
        match error {
            CqlStoreError::Corrupt(source) => StoreError::Corrupt(source),
            CqlStoreError::HeadMoved { shard, sequence } => {
                StoreError::HeadMoved { shard, sequence }
            }
            other => StoreError::Backend {
                operation: other.operation(),
                detail: other.to_string(),
            },
        }
    }
}

/// A `u64` as a CQL bigint.
pub(crate) fn to_cql(what: &'static str, value: u64) -> Result<i64, CqlStoreError> {
    i64::try_from(value).map_err(|_| CqlStoreError::IntegerOutOfRange { what, value })
}

/// A stored CQL bigint as a `u64`.
pub(crate) fn from_cql(what: &'static str, value: i64) -> Result<u64, CqlStoreError> {
    u64::try_from(value).map_err(|_| CqlStoreError::StoredIntegerOutOfRange { what, value })
}
