//! # ledger-read-models-cql
//!
//! The read models of the distributed mode in CQL (ScyllaDB in production,
//! Apache Cassandra 5.0 in tests), with two users:
//!
//! * the projector service, which consumes the events topic (partition p =
//!   shard p, one Kafka record per batch record) and calls
//!   [`CqlReadModels::apply`] with each shard's records in sequence order,
//!   and [`CqlReadModels::next_sequence`] to know where to resume;
//! * the query API, through [`projectors::ReadModels`], with the semantics
//!   of the embedded SQLite read models (`store-sqlite`).
//!
//! The changes of each event (each entry of a record, with its
//! `<shard>.<sequence>` address) come from [`projectors::project()`], the
//! same pure function the embedded projector uses. The tables are
//! `schemas/cql/read_models.cql`, applied verbatim from that text.
//!
//! # Order across shards and replays
//!
//! The embedded projector applies all events in one global commit order,
//! each batch in one transaction with its checkpoint. Here every shard is
//! projected on its own: shards interleave arbitrarily, and after a crash a
//! shard's events are delivered again from an earlier point. The writes are
//! therefore designed so that the outcome depends only on *which* events of
//! each shard were applied, never on the order across shards nor on
//! repetitions:
//!
//! * **Identity rows** (inventory entries, item definition and price and
//!   sale state, serial owners, listings, bundles) have a single writing
//!   shard ([`ownership`] holds the proof,
//!   event by event, from `ledger_core::decide`). Each write or delete of
//!   them carries `USING TIMESTAMP` [`layout::write_timestamp`]`(sequence,
//!   change index)`, so CQL's last-write-wins keeps the newest event's
//!   effect whatever order the writes land in: replaying an older add after
//!   a newer remove leaves a tombstone that is newer than the add (no
//!   resurrection), and replaying an older value cannot overwrite a newer
//!   one. Writes of one chunk are thus sent concurrently.
//! * **Sums** receive changes from several shards: a buyer's wallet from
//!   the buyer's shard, an item's `sold` from the buyer's shard (non-limited
//!   copies) and the item's shard (serials), its `sales_count` from each
//!   purchase's home shard. They are rows keyed by (entity, source shard)
//!   holding that shard's partial sums and `applied_through`, the sequence
//!   of the last event folded in. Only the source shard's projector writes
//!   its row, by read-modify-write that skips events at or below
//!   `applied_through`; the row is written at the timestamp of
//!   `applied_through`, so a stale concurrent writer cannot roll it back.
//!   Sums commute, so readers add the at most shard-count rows of a
//!   partition. (CQL counters would be simpler, but a retried counter write
//!   may apply twice.)
//! * **Logs** (transaction history, sales) are keyed by the (shard,
//!   sequence) of the event that made each row: a replay rewrites the same
//!   rows.
//! * **Delivery marks** (`projection_deliveries(sender, receiver,
//!   sequence)`) are written by the receiver's projector only, at the
//!   timestamp of its `message_received` event; messages of a pair are
//!   consumed in order, so the newest write carries the largest sequence (a
//!   monotone maximum without a read). A mark promises that the message's
//!   effects are visible, so marks are written after the rows and sums of
//!   their chunk.
//! * **Checkpoints** (`projection_checkpoints(shard, next_sequence)`) are
//!   written last, so whoever sees a checkpoint sees the rows it covers, and
//!   events below it are skipped on redelivery.
//!
//! A chunk is written as: rows (concurrently, at most
//! [`ReadModelSettings::write_concurrency`] in flight), sums, delivery
//! marks, checkpoint. A crash anywhere leaves a state that the redelivery of
//! the chunk completes to the same result; the tests simulate such crashes
//! and compare every query with the embedded read models.
//!
//! # Semantic differences from the embedded read models
//!
//! * **Recent average price**: SQLite folds every sale of an item in global
//!   commit order. There is no global order across shards, so sales are
//!   folded in the order of (completion time, shard, sequence), and only the
//!   newest [`layout::RECENT_SALES_WINDOW`] of them (the oldest of those
//!   sets the start value), which bounds the read. Both agree when the item
//!   has at most that many sales and no two of its sales at different
//!   prices complete concurrently (in the same millisecond, or within the
//!   clock skew between shards).
//! * **Item history** (`item_days`): a day's recent average price is
//!   computed the same way at read time, from the newest
//!   [`layout::RECENT_SALES_WINDOW`] sales up to the day's end. A day's
//!   lowest ask is read from the live book when the item's shard projects
//!   each listing change (the newest change of the day wins by its write
//!   timestamp). A chunk replayed after a crash reads the book as the
//!   crashed attempt left it, which may already hold later changes of the
//!   same chunk: only when such a chunk crosses midnight for that item can
//!   the earlier day's ask show the later book. Counts and revenue are sums
//!   per (item, day, source shard), exact under replays.
//! * **Transactions** are ordered newest first by (event time, shard,
//!   sequence, account) instead of (commit position, account). All entries
//!   of a user come from the user's shard (every posting to a user's wallet
//!   or pending account is decided there), whose events are stamped by one
//!   clock in sequence order, so both orders agree unless that clock steps
//!   backwards.
//! * Cursors have their own (opaque, hex) format; malformed ones give
//!   [`projectors::ReadError::BadCursor`].
//! * Changes to an item not published yet are kept (SQLite drops them), as
//!   another shard's events may be projected before the publication;
//!   the item is shown only once its definition is there. In commit order
//!   both give the same views.
//! * Reads see each shard's projection at its own pace: a view can combine
//!   shards at different points. [`projectors::ReadModels::covers`] is what
//!   guarantees read-your-writes, as in the embedded mode.
//!
//! # Bounds
//!
//! Every read is one partition or a bounded walk over bucket partitions;
//! see the comments of each table in `schemas/cql/read_models.cql`. Pages
//! are clamped to `1..=PAGE_SIZE_MAX`. Partitions that grow with a single
//! entity's activity are bucketed (transactions by 30 days, sales by day,
//! serial owners by 10,000 serials); a user's inventory and an item's live
//! listings are one partition each, bounded by what the user holds and by
//! the item's supply. No LWT, materialized views, secondary indexes,
//! ALLOW FILTERING or counters; no batches (each write is one row).
//!
//! Tombstones shadow replayed older writes only until `gc_grace_seconds`
//! (ten days by default); a redelivery reaches back only to the last
//! checkpoint, so a projector must not resume a chunk it crashed in more
//! than that long ago without rebuilding.

// The driver's errors are large (ExecutionError is ~280 bytes); they are
// returned once per failed network request, where their size is irrelevant.
#![allow(clippy::result_large_err)]

mod error;
pub mod layout;
mod models;
pub mod ownership;
mod reader;
mod schema;
mod statements;
mod writer;

pub use error::CqlReadModelError;
pub use models::{CqlReadModels, ReadModelSettings, WRITE_CONCURRENCY};
pub use schema::SCHEMA;
pub use scylla::statement::Consistency;
pub use statements::READ_PAGE_ROWS;
