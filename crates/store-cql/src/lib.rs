//! # ledger-store-cql
//!
//! The CQL storage adapter of the distributed mode: the event log, the shard
//! message outbox and snapshots in ScyllaDB (tested against Apache
//! Cassandra, with only CQL both support), through the `scylla` driver.
//!
//! * Bounded partitions: the log by (shard, bucket), one row per record
//!   keyed by its last sequence; messages by (receiver, sender, bucket);
//!   bucket = sequence / 10,000; snapshots by shard, only
//!   the latest few kept. The layout is `schemas/cql/ledger.cql`, applied
//!   from that same text.
//! * Prepared statements only, QUORUM reads and writes, no lightweight
//!   transactions, no ALLOW FILTERING, unlogged batches only within one
//!   partition.
//! * Idempotent appends: a redo writes identical rows; a different record at
//!   stored sequences of a shard is refused by a read before the write, which
//!   relies on the engine being the single writer of each shard.
//!
//! Appends are not ordered globally (`orders_appends_globally` is false), so
//! the engine waits for each append before handing its messages over.

// The driver's errors are large (ExecutionError is ~280 bytes); they are
// returned once per failed network request, where their size is irrelevant.
#![allow(clippy::result_large_err)]

mod error;
mod schema;
mod store;

pub use engine::ports::StoreError;
pub use error::CqlStoreError;
pub use schema::{is_valid_keyspace_name, split_statements, SCHEMA};
pub use scylla::statement::Consistency;
pub use store::{
    drop_keyspace, open_keyspace, CqlSettings, CqlStore, KeyspaceOptions, BATCH_BYTES_MAX,
    BATCH_ROWS_MAX, EVENTS_PER_BUCKET, MESSAGES_PER_BUCKET, READ_PAGE_ROWS,
    SNAPSHOTS_KEPT_PER_SHARD,
};
