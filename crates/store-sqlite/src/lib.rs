//! # ledger-store-sqlite
//!
//! The embedded storage adapter: one SQLite file (WAL, `synchronous=FULL`)
//! holding the event log, the shard message outbox, snapshots and the read
//! models.
//!
//! * One writer connection on a dedicated thread group-commits every queued
//!   append in one transaction; snapshots and projection batches use the same
//!   writer, so SQLite never sees competing writers.
//! * Reads use a small pool of read-only connections in tokio's blocking pool.
//! * The projector applies [`projectors::project`] to events in global commit
//!   order, advancing its position and shard checkpoints atomically with the
//!   read-model rows.

mod apply;
mod checkpoint;
mod dump;
mod error;
pub mod log;
pub mod metrics;
mod read_models;
mod reader;
mod schema;
mod store;
mod trace;
mod writer;

pub use checkpoint::{Checkpointer, CHECKPOINT_INTERVAL, WRITER_CHECKPOINT_PAGES};
pub use engine::ports::StoreError;
pub use error::SqliteStoreError;
pub use read_models::SqliteReadModels;
pub use reader::READERS_MAX;
pub use schema::{open_writer, DATABASE_FILE_NAME};
pub use store::{SqliteStore, PROJECTOR_BATCH_RECORDS, PROJECTOR_INTERVAL};
pub use writer::{
    Projected, GROUP_COMMIT_ENTRIES_MAX, SNAPSHOTS_KEPT_PER_SHARD, WRITE_QUEUE_CAPACITY,
};
