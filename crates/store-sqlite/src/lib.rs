//! # ledger-store-sqlite
//!
//! The embedded storage adapter: two SQLite files in WAL mode, the log's
//! (`ledger.sqlite3`, `synchronous=FULL`: the event log, the shard message
//! outbox and snapshots) and the read models' (`read-models.sqlite3`,
//! `synchronous=NORMAL`: derived from the log, projected again if lost).
//!
//! * One writer connection on a dedicated thread group-commits every queued
//!   append to the log in one transaction; snapshots use the same writer, so
//!   SQLite never sees competing writers of the log.
//! * The projector, a connection on a thread of its own, applies
//!   [`projectors::project`] to the log's records in global commit order,
//!   advancing its position and shard checkpoints atomically with the
//!   read-model rows. The log's writer never waits for it.
//! * Reads use a small pool of read-only connections, each on the read
//!   models with the log attached. After each commit the projector
//!   publishes in memory what it projected (the marks `?after=` waits for)
//!   and empties a bounded cache of the hottest point reads (items,
//!   balances, first inventory pages); see `published`.

mod apply;
mod checkpoint;
mod dump;
mod error;
pub mod log;
pub mod metrics;
mod projector;
mod published;
mod read_models;
mod reader;
mod schema;
mod store;
mod trace;
mod writer;

pub use checkpoint::{
    CheckpointedDatabase, Checkpointer, CHECKPOINT_INTERVAL, IDLE_BEFORE_TRUNCATE,
    WRITER_CHECKPOINT_PAGES,
};
pub use engine::ports::StoreError;
pub use error::SqliteStoreError;
pub use projector::{Projected, PROJECT_QUEUE_CAPACITY};
pub use published::CACHED_WEIGHT_PER_KIND_MAX;
pub use read_models::SqliteReadModels;
pub use reader::READERS_MAX;
pub use schema::{open_writer, DATABASE_FILE_NAME, READ_MODELS_FILE_NAME};
pub use store::{SqliteStore, PROJECTOR_BATCH_RECORDS, PROJECTOR_GATHER, PROJECTOR_INTERVAL};
pub use writer::{GROUP_COMMIT_ENTRIES_MAX, SNAPSHOTS_KEPT_PER_SHARD, WRITE_QUEUE_CAPACITY};
