//! The CQL store: the event log, the shard message outbox and snapshots in
//! bounded partitions (see `schemas/cql/ledger.cql`).
//!
//! # The log
//!
//! One `records` row per [`BatchRecord`], keyed by the record's *first*
//! sequence: `bucket` = first sequence / events per bucket, `last_sequence`, `hash` and `record` (its
//! bytes, [`BatchRecord::to_bytes`]). Keyspaces written before fencing keep
//! the start of each shard's log in `events` (rows keyed by their record's
//! last sequence; format 1 rows hold one envelope each): it is read, never
//! written, and the log continues in `records` where it ends.
//!
//! # Writes: one history per shard
//!
//! Every record is written with a lightweight transaction on its key, so
//! whatever a superseded writer does, a shard's log has one history:
//!
//! * a writer appends at the head it knows plus one (`INSERT ... IF NOT
//!   EXISTS`); two writers continuing from the same head collide on that
//!   key and one is refused ([`StoreError::HeadMoved`]): by induction
//!   every row starts right after the previous one ends;
//! * a writer taking a shard over claims the next sequence before it
//!   decides anything ([`EventStore::claim_shard`]: a row holding only its
//!   claim token, or an unfilled earlier claim taken over), and fills it
//!   with `UPDATE ... IF writer = <its token>`; a paused previous owner that
//!   wakes up finds that key claimed or filled and is refused, even when
//!   the new owner has written nothing yet.
//!
//! The writes are checked before they are made, so a refused append writes
//! nothing: a shard continuing from the head this process knows needs no
//! read (the conditional write is the check); otherwise the stored records
//! overlapping the new ones are read, and any that differs refuses the
//! whole append. A refused conditional write whose row holds the very same
//! record (a retry of a write that landed) counts as written.
//!
//! Messages and bucket entries are plain, idempotent upserts whose content
//! depends only on the record or message, so a redo writes identical rows.
//! Rows go in unlogged batches that each stay inside one partition, bounded
//! in rows and bytes. An append spanning several partitions is not atomic
//! across them: a crash in the middle leaves a prefix, which the engine's
//! redo of the same append completes. To keep that prefix harmless, records
//! are written before messages (a message is never visible before the
//! record that sent it), and a bucket's entry in
//! `record_buckets`/`message_buckets` before its rows (an entry without
//! rows reads as empty).
//!
//! # Consistency
//!
//! Every statement runs at the configured consistency, QUORUM by default;
//! conditional writes run their Paxos round at SERIAL.
//! The tests use one node with replication factor 1, where QUORUM is that
//! node; production uses replication factor 3, where a QUORUM write and a
//! QUORUM read share a replica, so an acknowledged append is seen by every
//! later recovery or message read even with one replica down.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use engine::ports::{EventStore, Recovery, ShardBatch, StoreError};
use futures_util::future::try_join_all;
use futures_util::StreamExt;
use ledger_core::codec::{self, BatchRecord, MessageEnvelope, Snapshot};
use ledger_core::ShardId;
use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::deserialize::row::DeserializeRow;
use scylla::serialize::row::SerializeRow;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use scylla::statement::{Consistency, SerialConsistency};

use crate::error::{from_cql, to_cql, CqlStoreError};
use crate::schema::{is_valid_keyspace_name, schema_statements};

/// Sequences per partition of `events` (the default of [`CqlSettings`]).
pub const EVENTS_PER_BUCKET: u64 = 10_000;
/// Messages per partition of `messages` (the default of [`CqlSettings`]).
pub const MESSAGES_PER_BUCKET: u64 = 10_000;
/// Snapshots kept per shard (the default of [`CqlSettings`]).
pub const SNAPSHOTS_KEPT_PER_SHARD: usize = 3;
/// Rows per unlogged batch: bounds the size of one mutation.
pub const BATCH_ROWS_MAX: usize = 200;
/// Blob bytes per unlogged batch of more than one row (a record can be
/// large): keeps a mutation far below the database's limit (half a commit
/// log segment, 16 MiB by default).
pub const BATCH_BYTES_MAX: usize = 1 << 20;
/// Rows fetched per page by paged reads.
pub const READ_PAGE_ROWS: i32 = 1_000;

/// How to reach and lay out the store.
#[derive(Debug, Clone)]
pub struct CqlSettings {
    /// The `replication` map of `CREATE KEYSPACE IF NOT EXISTS` (CQL map
    /// literal). The default, SimpleStrategy with one replica, suits a single
    /// test node only; production creates its keyspace beforehand with
    /// NetworkTopologyStrategy (see `schemas/cql/ledger.cql`).
    pub replication: String,
    /// Consistency of every read and write (QUORUM: see the module docs).
    pub consistency: Consistency,
    /// Client-side bound of one request.
    pub request_timeout: Duration,
    /// Bound of establishing a connection.
    pub connection_timeout: Duration,
    /// Sequences per `events` partition (rows are bucketed by their
    /// record's last sequence, so a partition holds at most this many).
    /// Fixed per keyspace: it is recorded in `store_layout` and a store
    /// opened with another value is refused.
    pub events_per_bucket: u64,
    /// Messages per `messages` partition; fixed per keyspace like the above.
    pub messages_per_bucket: u64,
    /// Snapshots kept per shard; older ones are deleted.
    pub snapshots_kept_per_shard: usize,
}

impl Default for CqlSettings {
    fn default() -> Self {
        Self {
            replication: "{'class': 'SimpleStrategy', 'replication_factor': 1}".to_string(),
            consistency: Consistency::Quorum,
            request_timeout: Duration::from_secs(10),
            connection_timeout: Duration::from_secs(5),
            events_per_bucket: EVENTS_PER_BUCKET,
            messages_per_bucket: MESSAGES_PER_BUCKET,
            snapshots_kept_per_shard: SNAPSHOTS_KEPT_PER_SHARD,
        }
    }
}

/// A partition whose bucket entry this process has already written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum KnownBucket {
    Records {
        shard: u16,
        bucket: u64,
    },
    Messages {
        receiver: u16,
        sender: u16,
        bucket: u64,
    },
}

/// The prepared statements, all at the configured consistency.
struct Statements {
    insert_record: PreparedStatement,
    write_claimed_record: PreparedStatement,
    insert_claim: PreparedStatement,
    take_claim: PreparedStatement,
    select_record_row: PreparedStatement,
    select_record_bounds: PreparedStatement,
    select_record_before: PreparedStatement,
    select_records: PreparedStatement,
    insert_record_bucket: PreparedStatement,
    select_record_buckets: PreparedStatement,
    select_record_bucket_at_or_below: PreparedStatement,
    select_legacy_hashes: PreparedStatement,
    select_legacy_records: PreparedStatement,
    select_event_buckets: PreparedStatement,
    insert_message: PreparedStatement,
    select_message_range: PreparedStatement,
    select_messages: PreparedStatement,
    insert_message_bucket: PreparedStatement,
    select_message_buckets: PreparedStatement,
    insert_snapshot: PreparedStatement,
    select_latest_snapshot: PreparedStatement,
    select_snapshot_sequences: PreparedStatement,
    delete_snapshots_before: PreparedStatement,
    select_layout: PreparedStatement,
    insert_layout: PreparedStatement,
}

/// The CQL event store. Create it with [`CqlStore::connect`].
pub struct CqlStore {
    session: Arc<Session>,
    keyspace: String,
    settings: CqlSettings,
    statements: Statements,
    known_buckets: Mutex<HashSet<KnownBucket>>,
    fencing: Mutex<Fencing>,
}

impl std::fmt::Debug for CqlStore {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("CqlStore")
            .field("keyspace", &self.keyspace)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

fn shard_column(shard: ShardId) -> i32 {
    i32::from(shard.0)
}

fn shard_from_column(what: &'static str, value: i32) -> Result<ShardId, CqlStoreError> {
    u16::try_from(value)
        .map(ShardId)
        .map_err(|_| CqlStoreError::StoredIntegerOutOfRange {
            what,
            value: i64::from(value),
        })
}

impl CqlStore {
    /// Connects to the cluster, creates `keyspace` (with the settings'
    /// replication) and the tables of `schemas/cql/ledger.cql` if they are
    /// missing, and prepares every statement. Idempotent.
    pub async fn connect(
        contact_points: &[String],
        keyspace: &str,
        settings: CqlSettings,
    ) -> Result<Arc<CqlStore>, StoreError> {
        Ok(Self::connect_inner(contact_points, keyspace, settings).await?)
    }

    async fn connect_inner(
        contact_points: &[String],
        keyspace: &str,
        settings: CqlSettings,
    ) -> Result<Arc<CqlStore>, CqlStoreError> {
        for (what, value) in [
            ("events per bucket", settings.events_per_bucket),
            ("messages per bucket", settings.messages_per_bucket),
            (
                "snapshots kept per shard",
                settings.snapshots_kept_per_shard as u64,
            ),
        ] {
            if value == 0 {
                return Err(CqlStoreError::InvalidSetting { what, value });
            }
        }
        let session = open_keyspace(
            contact_points,
            keyspace,
            &KeyspaceOptions {
                replication: &settings.replication,
                consistency: settings.consistency,
                request_timeout: settings.request_timeout,
                connection_timeout: settings.connection_timeout,
            },
            schema_statements(),
        )
        .await?;

        let statements = Statements::prepare(&session, settings.consistency).await?;
        let store = CqlStore {
            session: Arc::new(session),
            keyspace: keyspace.to_string(),
            settings,
            statements,
            known_buckets: Mutex::new(HashSet::new()),
            fencing: Mutex::new(Fencing::default()),
        };
        store.check_layout().await?;
        Ok(Arc::new(store))
    }

    /// The driver session (for operators and tests: same cluster, same keyspace).
    pub fn session(&self) -> &Arc<Session> {
        &self.session
    }

    /// The keyspace holding the tables.
    pub fn keyspace(&self) -> &str {
        &self.keyspace
    }

    /// The settings the store was connected with.
    pub fn settings(&self) -> &CqlSettings {
        &self.settings
    }

    /// Records the bucket sizes in a new keyspace; refuses other sizes in an
    /// existing one (its rows would be looked up in the wrong partitions).
    async fn check_layout(&self) -> Result<(), CqlStoreError> {
        for (name, configured) in [
            ("events_per_bucket", self.settings.events_per_bucket),
            ("messages_per_bucket", self.settings.messages_per_bucket),
        ] {
            let configured = to_cql(name, configured)?;
            let stored: Vec<(i64,)> = self
                .select(&self.statements.select_layout, (name,), "layout read")
                .await?;
            match stored.first() {
                Some((stored,)) if *stored != configured => {
                    return Err(CqlStoreError::LayoutMismatch {
                        name,
                        stored: *stored,
                        configured,
                    })
                }
                Some(_) => {}
                None => {
                    self.execute(
                        &self.statements.insert_layout,
                        (name, configured),
                        "layout write",
                    )
                    .await?
                }
            }
        }
        Ok(())
    }

    async fn execute(
        &self,
        statement: &PreparedStatement,
        values: impl SerializeRow,
        operation: &'static str,
    ) -> Result<(), CqlStoreError> {
        self.session
            .execute_unpaged(statement, values)
            .await
            .map(|_| ())
            .map_err(|source| CqlStoreError::Execute { operation, source })
    }

    /// Every row of a paged read.
    async fn select<Row>(
        &self,
        statement: &PreparedStatement,
        values: impl SerializeRow,
        operation: &'static str,
    ) -> Result<Vec<Row>, CqlStoreError>
    where
        Row: for<'frame, 'metadata> DeserializeRow<'frame, 'metadata>,
    {
        let mut rows = self
            .session
            .execute_iter(statement.clone(), values)
            .await
            .map_err(|source| CqlStoreError::Page { operation, source })?
            .rows_stream::<Row>()
            .map_err(|source| CqlStoreError::RowTypes { operation, source })?;
        let mut collected = Vec::new();
        while let Some(row) = rows.next().await {
            collected.push(row.map_err(|source| CqlStoreError::NextRow { operation, source })?);
        }
        Ok(collected)
    }

    /// Writes the rows of one partition, one unlogged batch per chunk (see
    /// [`chunks`]).
    async fn write_partition<Values: SerializeRow>(
        &self,
        statement: &PreparedStatement,
        chunks: Vec<Vec<Values>>,
        operation: &'static str,
    ) -> Result<(), CqlStoreError> {
        for chunk in chunks {
            let mut batch = Batch::new(BatchType::Unlogged);
            batch.set_consistency(self.settings.consistency);
            batch.set_is_idempotent(true);
            for _ in 0..chunk.len() {
                batch.append_statement(statement.clone());
            }
            self.session
                .batch(&batch, &chunk)
                .await
                .map_err(|source| CqlStoreError::Execute { operation, source })?;
        }
        Ok(())
    }

    /// Writes a bucket's entry unless this process already did.
    async fn ensure_bucket(&self, bucket: KnownBucket) -> Result<(), CqlStoreError> {
        if self.is_known(bucket) {
            return Ok(());
        }
        match bucket {
            KnownBucket::Records { shard, bucket } => {
                self.execute(
                    &self.statements.insert_record_bucket,
                    (i32::from(shard), to_cql("bucket", bucket)?),
                    "record bucket write",
                )
                .await?
            }
            KnownBucket::Messages {
                receiver,
                sender,
                bucket,
            } => {
                self.execute(
                    &self.statements.insert_message_bucket,
                    (
                        i32::from(receiver),
                        i32::from(sender),
                        to_cql("bucket", bucket)?,
                    ),
                    "message bucket write",
                )
                .await?
            }
        }
        if let Ok(mut known) = self.known_buckets.lock() {
            known.insert(bucket);
        }
        Ok(())
    }

    fn is_known(&self, bucket: KnownBucket) -> bool {
        // A poisoned cache only costs a redundant (idempotent) write.
        self.known_buckets
            .lock()
            .map(|known| known.contains(&bucket))
            .unwrap_or(false)
    }

    async fn append_inner(&self, batches: Vec<ShardBatch>) -> Result<(), CqlStoreError> {
        // Records by shard, then by first sequence (their row's key);
        // duplicates inside one append must agree.
        let mut records: BTreeMap<u16, BTreeMap<u64, &BatchRecord>> = BTreeMap::new();
        let mut messages: BTreeMap<(u16, u16, u64), MessagePartition<'_>> = BTreeMap::new();
        for batch in &batches {
            for record in &batch.records {
                self.check_record(batch.shard, record)?;
                let shard_records = records.entry(record.shard.0).or_default();
                if let Some(other) = shard_records.insert(record.first_sequence, record) {
                    if other.hash != record.hash || other.len() != record.len() {
                        return Err(CqlStoreError::RecordConflict {
                            shard: record.shard,
                            sequence: record.first_sequence,
                        });
                    }
                }
            }
            for message in &batch.messages {
                to_cql("message sequence", message.sequence)?;
                let bucket = message.sequence / self.settings.messages_per_bucket;
                let bytes = codec::encode(message);
                let partition = messages
                    .entry((message.to.0, message.from.0, bucket))
                    .or_default();
                if let Some((_, other)) = partition.get(&message.sequence) {
                    if *other != bytes {
                        return Err(CqlStoreError::MessageConflict {
                            sender: message.from,
                            receiver: message.to,
                            sequence: message.sequence,
                        });
                    }
                }
                partition.insert(message.sequence, (message, bytes));
            }
        }
        if records.is_empty() && messages.is_empty() {
            return Ok(());
        }

        // Everything is checked before anything is written, so a refused
        // append writes nothing (unless another writer races it: then the
        // conditional writes refuse what it took). A shard continuing from
        // the head this process knows needs no read: the conditional write
        // is the check. Otherwise what is stored in the records' sequences
        // is read first; only identical records may be there.
        let (record_writes, message_writes) = futures_util::future::try_join(
            try_join_all(
                records
                    .iter()
                    .map(|(&shard, shard_records)| self.records_to_write(shard, shard_records)),
            ),
            try_join_all(
                messages
                    .iter()
                    .map(|(&(receiver, sender, bucket), partition)| {
                        self.new_messages(receiver, sender, bucket, partition)
                    }),
            ),
        )
        .await?;

        // Records before messages: a message is never visible without the
        // record that sent it. One shard's records in order, shards at once.
        try_join_all(
            records
                .keys()
                .zip(record_writes)
                .filter(|(_, new)| !new.is_empty())
                .map(|(&shard, new)| self.write_records(shard, new)),
        )
        .await?;
        try_join_all(
            messages
                .keys()
                .zip(message_writes)
                .filter(|(_, rows)| !rows.is_empty())
                .map(|(&(receiver, sender, bucket), rows)| async move {
                    self.ensure_bucket(KnownBucket::Messages {
                        receiver,
                        sender,
                        bucket,
                    })
                    .await?;
                    self.write_partition(
                        &self.statements.insert_message,
                        chunks(rows, |row| row.4.len()),
                        "message write",
                    )
                    .await
                }),
        )
        .await?;
        Ok(())
    }

    /// Refuses a record filed under another shard's batch, an empty one, and
    /// one whose sequences do not fit a bigint.
    fn check_record(
        &self,
        batch_shard: Option<ShardId>,
        record: &BatchRecord,
    ) -> Result<(), CqlStoreError> {
        if let Some(batch_shard) = batch_shard {
            if batch_shard != record.shard {
                return Err(CqlStoreError::ShardMismatch {
                    batch_shard,
                    record_shard: record.shard,
                    first_sequence: record.first_sequence,
                });
            }
        }
        if record.is_empty() {
            return Err(CqlStoreError::EmptyRecord {
                shard: record.shard,
                first_sequence: record.first_sequence,
            });
        }
        to_cql("event sequence", record.last_sequence())?;
        Ok(())
    }

    /// The records of one shard's append that are not stored yet, in order;
    /// an error if a stored record overlaps one of them and differs.
    async fn records_to_write<'append>(
        &self,
        shard: u16,
        records: &BTreeMap<u64, &'append BatchRecord>,
    ) -> Result<Vec<&'append BatchRecord>, CqlStoreError> {
        let known_head = self.fencing().heads.get(&shard).copied();
        let continues_head = known_head.is_some_and(|head| {
            let mut next = head + 1;
            records.values().all(|record| {
                let continues = record.first_sequence == next;
                next = record.last_sequence() + 1;
                continues
            })
        });
        if continues_head {
            return Ok(records.values().copied().collect());
        }
        let (Some(first), Some(last)) = (
            records.values().map(|record| record.first_sequence).min(),
            records.values().map(|record| record.last_sequence()).max(),
        ) else {
            return Ok(Vec::new());
        };
        let (stored, legacy) = futures_util::future::try_join(
            self.stored_record_bounds(shard, first, last),
            self.legacy_record_hashes(shard, first, last),
        )
        .await?;
        let mut new = Vec::new();
        for record in records.values() {
            let (first, last) = (record.first_sequence, record.last_sequence());
            let mut already_stored = false;
            for bounds in &stored {
                if bounds.first > last || bounds.last < first {
                    continue;
                }
                if bounds.first != first || bounds.last != last || bounds.hash != record.hash {
                    return Err(CqlStoreError::RecordConflict {
                        shard: record.shard,
                        sequence: bounds.last.min(last),
                    });
                }
                already_stored = true;
            }
            for (&sequence, hash) in legacy.range(first..=last) {
                if sequence != last || hash.as_slice() != record.hash.as_slice() {
                    return Err(CqlStoreError::RecordConflict {
                        shard: record.shard,
                        sequence,
                    });
                }
                already_stored = true;
            }
            if !already_stored {
                new.push(*record);
            }
        }
        Ok(new)
    }

    /// The stored records of `shard` overlapping sequences `first..=last`:
    /// those starting inside them, and the one before `first` (which may
    /// reach into them). Claim rows (no record yet) are left out.
    async fn stored_record_bounds(
        &self,
        shard: u16,
        first: u64,
        last: u64,
    ) -> Result<Vec<RecordBounds>, CqlStoreError> {
        let per_bucket = self.settings.events_per_bucket;
        let inside = try_join_all((first / per_bucket..=last / per_bucket).map(
            |bucket| async move {
                self.select::<BoundsRow>(
                    &self.statements.select_record_bounds,
                    (
                        i32::from(shard),
                        to_cql("bucket", bucket)?,
                        to_cql("event sequence", first)?,
                        to_cql("event sequence", last)?,
                    ),
                    "stored record lookup",
                )
                .await
            },
        ));
        let (inside, before) =
            futures_util::future::try_join(inside, self.record_before(shard, first)).await?;
        let mut bounds = Vec::new();
        let before = before.map(|(first, last, hash, _)| (first, last, hash));
        for row in inside.into_iter().flatten().chain(before) {
            if let Some(row) = RecordBounds::from_row(row)? {
                bounds.push(row);
            }
        }
        Ok(bounds)
    }

    /// The row of `shard` with the greatest first sequence below `sequence`:
    /// in the greatest bucket at or below that of `sequence` that has rows
    /// (the buckets a long record spans past its first have no entry), or
    /// the one before it when all its rows start at or after `sequence`.
    async fn record_before(
        &self,
        shard: u16,
        sequence: u64,
    ) -> Result<Option<FullRow>, CqlStoreError> {
        let mut at_or_below = sequence / self.settings.events_per_bucket;
        for _ in 0..2 {
            let buckets: Vec<(i64,)> = self
                .select(
                    &self.statements.select_record_bucket_at_or_below,
                    (i32::from(shard), to_cql("bucket", at_or_below)?),
                    "record bucket lookup",
                )
                .await?;
            let Some((bucket,)) = buckets.into_iter().next() else {
                return Ok(None);
            };
            let rows: Vec<FullRow> = self
                .select(
                    &self.statements.select_record_before,
                    (
                        i32::from(shard),
                        bucket,
                        to_cql("event sequence", sequence)?,
                    ),
                    "stored record lookup",
                )
                .await?;
            if let Some(row) = rows.into_iter().next() {
                return Ok(Some(row));
            }
            // Every row of that bucket starts at or after `sequence`: only
            // its own bucket can be like that; the row is in an earlier one.
            match from_cql("bucket", bucket)?.checked_sub(1) {
                Some(earlier) => at_or_below = earlier,
                None => return Ok(None),
            }
        }
        Ok(None)
    }

    /// Rows of the pre-fencing `events` table keyed inside `first..=last`:
    /// last sequence → hash.
    async fn legacy_record_hashes(
        &self,
        shard: u16,
        first: u64,
        last: u64,
    ) -> Result<BTreeMap<u64, Vec<u8>>, CqlStoreError> {
        let per_bucket = self.settings.events_per_bucket;
        let lookups = (first / per_bucket..=last / per_bucket).map(|bucket| async move {
            self.select::<(i64, Vec<u8>)>(
                &self.statements.select_legacy_hashes,
                (
                    i32::from(shard),
                    to_cql("bucket", bucket)?,
                    to_cql("event sequence", first)?,
                    to_cql("event sequence", last)?,
                ),
                "stored record lookup",
            )
            .await
        });
        let mut hashes = BTreeMap::new();
        for (sequence, hash) in try_join_all(lookups).await?.into_iter().flatten() {
            hashes.insert(from_cql("record sequence", sequence)?, hash);
        }
        Ok(hashes)
    }

    /// Writes one shard's new records in order, each with a conditional
    /// write on its first sequence: the one this process claimed (taking
    /// the shard over) must still be its claim, any other must be free. A
    /// refused write whose row holds this very record (a retried write that
    /// had landed) counts as written; any other means another writer owns
    /// the shard's log from there: [`CqlStoreError::HeadMoved`].
    async fn write_records(
        &self,
        shard: u16,
        records: Vec<&BatchRecord>,
    ) -> Result<(), CqlStoreError> {
        for record in records {
            let first = record.first_sequence;
            let last = record.last_sequence();
            let bucket = first / self.settings.events_per_bucket;
            self.ensure_bucket(KnownBucket::Records { shard, bucket })
                .await?;
            let claim = self
                .fencing()
                .claims
                .get(&shard)
                .filter(|(claimed, _)| *claimed == first)
                .map(|(_, token)| *token);
            let key = (
                i32::from(shard),
                to_cql("bucket", bucket)?,
                to_cql("event sequence", first)?,
            );
            let bytes = record.to_bytes();
            let applied = match claim {
                Some(token) => {
                    self.conditional(
                        &self.statements.write_claimed_record,
                        (
                            to_cql("event sequence", last)?,
                            record.hash.to_vec(),
                            bytes,
                            key.0,
                            key.1,
                            key.2,
                            token.to_vec(),
                        ),
                        "record write",
                    )
                    .await?
                }
                None => {
                    self.conditional(
                        &self.statements.insert_record,
                        (
                            key.0,
                            key.1,
                            key.2,
                            to_cql("event sequence", last)?,
                            record.hash.to_vec(),
                            bytes,
                        ),
                        "record write",
                    )
                    .await?
                }
            };
            if !applied {
                let stored = self.stored_row(key).await?;
                let last_column = to_cql("event sequence", last)?;
                let same = stored.as_ref().is_some_and(|row| {
                    row.0 == Some(last_column) && row.1.as_deref() == Some(record.hash.as_slice())
                });
                if !same {
                    return Err(CqlStoreError::HeadMoved {
                        shard: ShardId(shard),
                        sequence: first,
                    });
                }
            }
            let mut fencing = self.fencing();
            if claim.is_some() {
                fencing.claims.remove(&shard);
            }
            fencing.heads.insert(shard, last);
        }
        Ok(())
    }

    /// Runs a lightweight transaction; whether it applied.
    async fn conditional(
        &self,
        statement: &PreparedStatement,
        values: impl SerializeRow,
        operation: &'static str,
    ) -> Result<bool, CqlStoreError> {
        let result = self
            .session
            .execute_unpaged(statement, values)
            .await
            .map_err(|source| CqlStoreError::Execute { operation, source })?;
        let rows = result
            .into_rows_result()
            .map_err(|_| CqlStoreError::ConditionalAnswer {
                operation,
                column: "[applied]",
            })?;
        let row = rows.maybe_first_row::<scylla::value::Row>().map_err(|_| {
            CqlStoreError::ConditionalAnswer {
                operation,
                column: "[applied]",
            }
        })?;
        match row.and_then(|row| row.columns.into_iter().next().flatten()) {
            Some(scylla::value::CqlValue::Boolean(applied)) => Ok(applied),
            _ => Err(CqlStoreError::ConditionalAnswer {
                operation,
                column: "[applied]",
            }),
        }
    }

    /// A `records` row read at SERIAL consistency (it sees the outcome of
    /// every conditional write before it): last sequence, hash, writer.
    async fn stored_row(&self, key: (i32, i64, i64)) -> Result<Option<StoredRow>, CqlStoreError> {
        let rows: Vec<StoredRow> = self
            .select(&self.statements.select_record_row, key, "record row read")
            .await?;
        Ok(rows.into_iter().next())
    }

    /// Claims `next_sequence` of `shard` for this process (see
    /// [`EventStore::claim_shard`]): a claim row where the next record will
    /// go, taken over from an earlier claimant that never filled it.
    async fn claim_shard_inner(
        &self,
        shard: ShardId,
        next_sequence: u64,
    ) -> Result<(), CqlStoreError> {
        let token = new_claim_token();
        let bucket = next_sequence / self.settings.events_per_bucket;
        let key = (
            shard_column(shard),
            to_cql("bucket", bucket)?,
            to_cql("event sequence", next_sequence)?,
        );
        let mut claimed = self
            .conditional(
                &self.statements.insert_claim,
                (key.0, key.1, key.2, token.to_vec()),
                "shard claim",
            )
            .await?;
        if !claimed {
            let head_moved = CqlStoreError::HeadMoved {
                shard,
                sequence: next_sequence,
            };
            match self.stored_row(key).await? {
                // A claim nobody filled: an earlier owner's, which this one
                // supersedes.
                Some((None, None, Some(previous))) => {
                    claimed = self
                        .conditional(
                            &self.statements.take_claim,
                            (token.to_vec(), key.0, key.1, key.2, previous),
                            "shard claim",
                        )
                        .await?;
                    if !claimed {
                        return Err(head_moved);
                    }
                }
                Some((Some(_), _, _)) => return Err(head_moved),
                _ => {
                    return Err(CqlStoreError::ConditionalAnswer {
                        operation: "shard claim",
                        column: "writer",
                    })
                }
            }
        }
        let mut fencing = self.fencing();
        fencing.claims.insert(shard.0, (next_sequence, token));
        fencing.heads.insert(shard.0, next_sequence - 1);
        Ok(())
    }

    fn fencing(&self) -> std::sync::MutexGuard<'_, Fencing> {
        // Only plain inserts and lookups happen under the lock: it cannot
        // be poisoned by a half-done update worth refusing.
        self.fencing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The rows of `partition` not stored yet; an error if a stored message
    /// differs.
    async fn new_messages(
        &self,
        receiver: u16,
        sender: u16,
        bucket: u64,
        partition: &MessagePartition<'_>,
    ) -> Result<Vec<MessageRow>, CqlStoreError> {
        let (Some(first), Some(last)) = (partition.keys().next(), partition.keys().next_back())
        else {
            return Ok(Vec::new());
        };
        let stored: Vec<(i64, Vec<u8>)> = self
            .select(
                &self.statements.select_message_range,
                (
                    i32::from(receiver),
                    i32::from(sender),
                    to_cql("bucket", bucket)?,
                    to_cql("message sequence", *first)?,
                    to_cql("message sequence", *last)?,
                ),
                "stored message lookup",
            )
            .await?;
        let stored: BTreeMap<i64, Vec<u8>> = stored.into_iter().collect();
        let mut rows = Vec::new();
        for (&sequence, (message, bytes)) in partition {
            let sequence_column = to_cql("message sequence", sequence)?;
            match stored.get(&sequence_column) {
                Some(stored) if stored == bytes => {}
                Some(_) => {
                    return Err(CqlStoreError::MessageConflict {
                        sender: message.from,
                        receiver: message.to,
                        sequence,
                    })
                }
                None => rows.push((
                    i32::from(receiver),
                    i32::from(sender),
                    to_cql("bucket", bucket)?,
                    sequence_column,
                    bytes.clone(),
                )),
            }
        }
        Ok(rows)
    }

    async fn read_shard_inner(
        &self,
        shard: ShardId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<BatchRecord>, CqlStoreError> {
        // Sequences are stored as bigint: nothing lies beyond i64::MAX.
        if limit == 0 || i64::try_from(after).map_or(true, |after| after == i64::MAX) {
            return Ok(Vec::new());
        }
        // A keyspace written before fencing holds the start of the log in
        // `events`; the log continues in `records` where that part ends.
        let mut records = self.read_legacy(shard, after, limit).await?;
        if records.len() < limit {
            let after = records.last().map_or(after, BatchRecord::last_sequence);
            let remaining = limit - records.len();
            records.extend(self.read_records(shard, after, remaining).await?);
        }
        Ok(records)
    }

    /// Records of `shard` in `records` holding an entry above `after`, at
    /// most `limit`: those starting after it, preceded by the one that
    /// starts at or before it and ends after it, if any.
    async fn read_records(
        &self,
        shard: ShardId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<BatchRecord>, CqlStoreError> {
        let mut records = self
            .read_buckets(
                shard,
                after,
                limit,
                (&self.statements.select_record_buckets, "record bucket read"),
                &self.statements.select_records,
            )
            .await?;
        let starts_right_after = records
            .first()
            .is_some_and(|record| record.first_sequence == after + 1);
        if after > 0 && !starts_right_after {
            if let Some((_, Some(last), _, Some(bytes))) =
                self.record_before(shard.0, after + 1).await?
            {
                if from_cql("record sequence", last)? > after {
                    records.insert(0, BatchRecord::from_bytes(&bytes)?);
                    records.truncate(limit);
                }
            }
        }
        Ok(records)
    }

    /// The records in the rows keyed above `after` of one log table, at
    /// most `limit`, visiting the buckets `buckets` lists from the bucket of
    /// `after + 1` on; rows without record bytes (claims) are skipped.
    async fn read_buckets(
        &self,
        shard: ShardId,
        after: u64,
        limit: usize,
        (buckets, buckets_operation): (&PreparedStatement, &'static str),
        rows: &PreparedStatement,
    ) -> Result<Vec<BatchRecord>, CqlStoreError> {
        let after_column = to_cql("event sequence", after)?;
        let first_bucket = (after + 1) / self.settings.events_per_bucket;
        let buckets: Vec<(i64,)> = self
            .select(
                buckets,
                (shard_column(shard), to_cql("bucket", first_bucket)?),
                buckets_operation,
            )
            .await?;
        let mut records = Vec::new();
        for (bucket,) in buckets {
            let remaining = limit - records.len();
            let row_limit = i32::try_from(remaining).unwrap_or(i32::MAX);
            let found: Vec<(Option<Vec<u8>>,)> = self
                .select(
                    rows,
                    (shard_column(shard), bucket, after_column, row_limit),
                    "shard read",
                )
                .await?;
            for bytes in found.into_iter().filter_map(|(bytes,)| bytes) {
                records.push(BatchRecord::from_bytes(&bytes)?);
            }
            if records.len() >= limit {
                records.truncate(limit);
                break;
            }
        }
        Ok(records)
    }

    /// Records of `shard` in the pre-fencing `events` table (rows keyed by
    /// their last sequence) holding an entry above `after`, at most `limit`.
    async fn read_legacy(
        &self,
        shard: ShardId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<BatchRecord>, CqlStoreError> {
        // A row's key is its record's last sequence: the records holding an
        // entry above `after` are exactly the rows above it, which start in
        // the bucket of `after + 1`.
        self.read_buckets(
            shard,
            after,
            limit,
            (&self.statements.select_event_buckets, "event bucket read"),
            &self.statements.select_legacy_records,
        )
        .await
    }

    async fn recover_inner(&self, shard: ShardId) -> Result<Recovery, CqlStoreError> {
        let latest: Vec<(i64, Vec<u8>)> = self
            .select(
                &self.statements.select_latest_snapshot,
                (shard_column(shard),),
                "latest snapshot read",
            )
            .await?;
        let (after, snapshot) = match latest.into_iter().next() {
            Some((sequence, bytes)) => (
                from_cql("snapshot sequence", sequence)?,
                Some(Snapshot::from_bytes(&bytes)?),
            ),
            None => (0, None),
        };
        let records = self.read_shard_inner(shard, after, usize::MAX).await?;
        let head = records.last().map_or(after, BatchRecord::last_sequence);
        self.fencing().heads.insert(shard.0, head);
        Ok(Recovery { snapshot, records })
    }

    async fn pending_messages_inner(
        &self,
        to: ShardId,
        next_expected: &BTreeMap<ShardId, u64>,
    ) -> Result<Vec<MessageEnvelope>, CqlStoreError> {
        // (sender, bucket) in clustering order: senders ascending, then buckets.
        let buckets: Vec<(i32, i64)> = self
            .select(
                &self.statements.select_message_buckets,
                (shard_column(to),),
                "message bucket read",
            )
            .await?;
        let mut messages = Vec::new();
        for (sender_column, bucket_column) in buckets {
            let sender = shard_from_column("message sender", sender_column)?;
            let bucket = from_cql("message bucket", bucket_column)?;
            let first = next_expected.get(&sender).copied().unwrap_or(1);
            if bucket < first / self.settings.messages_per_bucket {
                continue;
            }
            let Ok(first_column) = i64::try_from(first) else {
                continue;
            };
            let rows: Vec<(Vec<u8>,)> = self
                .select(
                    &self.statements.select_messages,
                    (shard_column(to), sender_column, bucket_column, first_column),
                    "pending message read",
                )
                .await?;
            for (bytes,) in rows {
                messages.push(codec::decode::<MessageEnvelope>(
                    "message envelope",
                    &bytes,
                )?);
            }
        }
        Ok(messages)
    }

    async fn save_snapshot_inner(
        &self,
        shard: ShardId,
        snapshot: &Snapshot,
    ) -> Result<(), CqlStoreError> {
        let sequence = to_cql(
            "snapshot sequence",
            snapshot.state.next_sequence.saturating_sub(1),
        )?;
        self.execute(
            &self.statements.insert_snapshot,
            (shard_column(shard), sequence, snapshot.to_bytes()),
            "snapshot write",
        )
        .await?;
        // Newest first: the last of the kept ones bounds what is deleted.
        let kept = i32::try_from(self.settings.snapshots_kept_per_shard).unwrap_or(i32::MAX);
        let newest: Vec<(i64,)> = self
            .select(
                &self.statements.select_snapshot_sequences,
                (shard_column(shard), kept),
                "snapshot list",
            )
            .await?;
        if newest.len() == self.settings.snapshots_kept_per_shard {
            if let Some((oldest_kept,)) = newest.last() {
                // One range tombstone per save, not one per deleted row.
                self.execute(
                    &self.statements.delete_snapshots_before,
                    (shard_column(shard), *oldest_kept),
                    "old snapshot delete",
                )
                .await?;
            }
        }
        Ok(())
    }
}

/// A `records` row's first sequence, last sequence and hash (the last two
/// null in a claim row).
type BoundsRow = (i64, Option<i64>, Option<Vec<u8>>);
/// A `records` row's first sequence, last sequence, hash and record bytes.
type FullRow = (i64, Option<i64>, Option<Vec<u8>>, Option<Vec<u8>>);
/// A `records` row's last sequence, hash and claimant (see `stored_row`).
type StoredRow = (Option<i64>, Option<Vec<u8>>, Option<Vec<u8>>);

/// The sequences and hash of a stored record.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RecordBounds {
    first: u64,
    last: u64,
    hash: [u8; 32],
}

impl RecordBounds {
    /// `None` for a claim row.
    fn from_row((first, last, hash): BoundsRow) -> Result<Option<Self>, CqlStoreError> {
        let (Some(last), Some(hash)) = (last, hash) else {
            return Ok(None);
        };
        let Ok(hash) = <[u8; 32]>::try_from(hash.as_slice()) else {
            return Err(CqlStoreError::StoredIntegerOutOfRange {
                what: "record hash length",
                value: hash.len() as i64,
            });
        };
        Ok(Some(Self {
            first: from_cql("record sequence", first)?,
            last: from_cql("record sequence", last)?,
            hash,
        }))
    }
}

/// What this process knows of the shards it writes (hints for the fast
/// path and its claims; the conditional writes are what enforce a single
/// history).
#[derive(Debug, Default)]
struct Fencing {
    /// Per shard: the last sequence known to be stored, from a recovery,
    /// a claim or this process's own appends.
    heads: HashMap<u16, u64>,
    /// Per shard: the sequence this process claimed and its claim token.
    claims: HashMap<u16, (u64, ClaimToken)>,
}

/// Identifies one claim of one process: 16 bytes no other claim shares.
type ClaimToken = [u8; 16];

/// A fresh claim token: the process id, the time and a counter, mixed with
/// the standard library's per-process random hash keys.
fn new_claim_token() -> ClaimToken {
    use std::hash::{BuildHasher, Hasher};
    static CLAIMS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let count = CLAIMS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos());
    let mut token = [0_u8; 16];
    for (half, salt) in token.chunks_mut(8).zip([0_u8, 1]) {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u8(salt);
        hasher.write_u32(std::process::id());
        hasher.write_u128(nanos);
        hasher.write_u64(count);
        half.copy_from_slice(&hasher.finish().to_le_bytes());
    }
    token
}
/// The messages of one partition to append, by sequence, with their bytes.
type MessagePartition<'append> = BTreeMap<u64, (&'append MessageEnvelope, Vec<u8>)>;
/// receiver, sender, bucket, sequence, envelope
type MessageRow = (i32, i32, i64, i64, Vec<u8>);

/// Splits one partition's rows into unlogged batches of at most
/// [`BATCH_ROWS_MAX`] rows and, past the first row, [`BATCH_BYTES_MAX`]
/// bytes of blobs (`bytes` of a row): one batch is one mutation, which the
/// database bounds in size.
fn chunks<Row>(rows: Vec<Row>, bytes: impl Fn(&Row) -> usize) -> Vec<Vec<Row>> {
    let mut chunks: Vec<Vec<Row>> = Vec::new();
    let mut chunk_bytes = 0;
    for row in rows {
        let row_bytes = bytes(&row);
        match chunks.last_mut() {
            Some(chunk)
                if chunk.len() < BATCH_ROWS_MAX && chunk_bytes + row_bytes <= BATCH_BYTES_MAX =>
            {
                chunk_bytes += row_bytes;
                chunk.push(row);
            }
            _ => {
                chunk_bytes = row_bytes;
                chunks.push(vec![row]);
            }
        }
    }
    chunks
}

/// How [`open_keyspace`] connects and creates a keyspace.
#[derive(Debug, Clone, Copy)]
pub struct KeyspaceOptions<'a> {
    /// The `replication` map of `CREATE KEYSPACE IF NOT EXISTS` (CQL map literal).
    pub replication: &'a str,
    /// Default consistency of the session's statements.
    pub consistency: Consistency,
    /// Client-side bound of one request.
    pub request_timeout: Duration,
    /// Bound of establishing a connection.
    pub connection_timeout: Duration,
}

/// Connects to the cluster, creates `keyspace` if it is missing, switches the
/// session to it and applies `statements` (idempotent DDL), waiting for
/// schema agreement after the keyspace and after the tables. Shared by the
/// event store and the read models (`ledger-read-models-cql`).
pub async fn open_keyspace(
    contact_points: &[String],
    keyspace: &str,
    options: &KeyspaceOptions<'_>,
    statements: Vec<String>,
) -> Result<Session, CqlStoreError> {
    check_target(contact_points, keyspace)?;
    let profile = ExecutionProfile::builder()
        .consistency(options.consistency)
        .request_timeout(Some(options.request_timeout))
        .build()
        .into_handle();
    let session = SessionBuilder::new()
        .known_nodes(contact_points)
        .connection_timeout(options.connection_timeout)
        .default_execution_profile_handle(profile)
        .build()
        .await
        .map_err(|source| CqlStoreError::Connect {
            contact_points: contact_points.join(","),
            source: Box::new(source),
        })?;
    let create_keyspace = format!(
        "CREATE KEYSPACE IF NOT EXISTS {keyspace} WITH replication = {}",
        options.replication
    );
    apply_schema_statement(&session, create_keyspace).await?;
    session
        .await_schema_agreement()
        .await
        .map_err(|source| CqlStoreError::SchemaAgreement {
            operation: "keyspace creation",
            source,
        })?;
    session
        .use_keyspace(keyspace, false)
        .await
        .map_err(|source| CqlStoreError::UseKeyspace {
            keyspace: keyspace.to_string(),
            source,
        })?;
    for statement in statements {
        apply_schema_statement(&session, statement).await?;
    }
    session
        .await_schema_agreement()
        .await
        .map_err(|source| CqlStoreError::SchemaAgreement {
            operation: "table creation",
            source,
        })?;
    Ok(session)
}

/// Drops `keyspace` and everything in it, if it exists: what a test or a
/// benchmark created for itself. Refuses a name [`is_valid_keyspace_name`]
/// refuses.
pub async fn drop_keyspace(contact_points: &[String], keyspace: &str) -> Result<(), CqlStoreError> {
    check_target(contact_points, keyspace)?;
    let session = SessionBuilder::new()
        .known_nodes(contact_points)
        .build()
        .await
        .map_err(|source| CqlStoreError::Connect {
            contact_points: contact_points.join(","),
            source: Box::new(source),
        })?;
    apply_schema_statement(&session, format!("DROP KEYSPACE IF EXISTS {keyspace}")).await
}

/// Refuses no contact points, and a keyspace name unsafe to splice into DDL.
fn check_target(contact_points: &[String], keyspace: &str) -> Result<(), CqlStoreError> {
    if contact_points.is_empty() {
        return Err(CqlStoreError::NoContactPoints);
    }
    if !is_valid_keyspace_name(keyspace) {
        return Err(CqlStoreError::InvalidKeyspaceName {
            keyspace: keyspace.to_string(),
        });
    }
    Ok(())
}

async fn apply_schema_statement(session: &Session, statement: String) -> Result<(), CqlStoreError> {
    session
        .query_unpaged(statement.as_str(), &[])
        .await
        .map(|_| ())
        .map_err(|source| CqlStoreError::Schema { statement, source })
}

impl Statements {
    async fn prepare(session: &Session, consistency: Consistency) -> Result<Self, CqlStoreError> {
        let prepare = |statement: &'static str, cql: &'static str| async move {
            let mut prepared = session
                .prepare(cql)
                .await
                .map_err(|source| CqlStoreError::Prepare { statement, source })?;
            prepared.set_consistency(consistency);
            // Every statement here is an idempotent upsert, delete or read:
            // the driver may retry it safely.
            prepared.set_is_idempotent(true);
            prepared.set_page_size(READ_PAGE_ROWS);
            Ok::<_, CqlStoreError>(prepared)
        };
        // Conditional writes run Paxos at SERIAL (every data centre agrees:
        // a shard has one writer worldwide); the row read that explains a
        // refused one runs at SERIAL too, so it sees every decided write.
        let conditional = |statement: &'static str, cql: &'static str| async move {
            let mut prepared = prepare(statement, cql).await?;
            prepared.set_serial_consistency(Some(SerialConsistency::Serial));
            Ok::<_, CqlStoreError>(prepared)
        };
        Ok(Self {
            insert_record: conditional(
                "record insert",
                "INSERT INTO records (shard, bucket, first_sequence, last_sequence, hash, record) \
                 VALUES (?, ?, ?, ?, ?, ?) IF NOT EXISTS",
            )
            .await?,
            write_claimed_record: conditional(
                "claimed record write",
                "UPDATE records SET last_sequence = ?, hash = ?, record = ?, writer = null \
                 WHERE shard = ? AND bucket = ? AND first_sequence = ? IF writer = ?",
            )
            .await?,
            insert_claim: conditional(
                "claim insert",
                "INSERT INTO records (shard, bucket, first_sequence, writer) VALUES (?, ?, ?, ?) IF NOT EXISTS",
            )
            .await?,
            take_claim: conditional(
                "claim takeover",
                "UPDATE records SET writer = ? WHERE shard = ? AND bucket = ? AND first_sequence = ? IF writer = ?",
            )
            .await?,
            select_record_row: {
                let mut prepared = prepare(
                    "record row read",
                    "SELECT last_sequence, hash, writer FROM records \
                     WHERE shard = ? AND bucket = ? AND first_sequence = ?",
                )
                .await?;
                prepared.set_consistency(Consistency::Serial);
                prepared
            },
            select_record_bounds: prepare(
                "record bounds lookup",
                "SELECT first_sequence, last_sequence, hash FROM records \
                 WHERE shard = ? AND bucket = ? AND first_sequence >= ? AND first_sequence <= ?",
            )
            .await?,
            select_record_before: prepare(
                "record before lookup",
                "SELECT first_sequence, last_sequence, hash, record FROM records \
                 WHERE shard = ? AND bucket = ? AND first_sequence < ? ORDER BY first_sequence DESC LIMIT 1",
            )
            .await?,
            select_records: prepare(
                "shard read",
                "SELECT record FROM records WHERE shard = ? AND bucket = ? AND first_sequence > ? LIMIT ?",
            )
            .await?,
            insert_record_bucket: prepare(
                "record bucket insert",
                "INSERT INTO record_buckets (shard, bucket) VALUES (?, ?)",
            )
            .await?,
            select_record_buckets: prepare(
                "record bucket read",
                "SELECT bucket FROM record_buckets WHERE shard = ? AND bucket >= ?",
            )
            .await?,
            select_record_bucket_at_or_below: prepare(
                "record bucket lookup",
                "SELECT bucket FROM record_buckets WHERE shard = ? AND bucket <= ? ORDER BY bucket DESC LIMIT 1",
            )
            .await?,
            select_legacy_hashes: prepare(
                "record hash lookup",
                "SELECT sequence, hash FROM events WHERE shard = ? AND bucket = ? AND sequence >= ? AND sequence <= ?",
            )
            .await?,
            select_legacy_records: prepare(
                "legacy shard read",
                "SELECT envelope FROM events WHERE shard = ? AND bucket = ? AND sequence > ? LIMIT ?",
            )
            .await?,
            select_event_buckets: prepare(
                "event bucket read",
                "SELECT bucket FROM event_buckets WHERE shard = ? AND bucket >= ?",
            )
            .await?,
            insert_message: prepare(
                "message insert",
                "INSERT INTO messages (receiver, sender, bucket, sequence, envelope) VALUES (?, ?, ?, ?, ?)",
            )
            .await?,
            select_message_range: prepare(
                "message lookup",
                "SELECT sequence, envelope FROM messages WHERE receiver = ? AND sender = ? AND bucket = ? \
                 AND sequence >= ? AND sequence <= ?",
            )
            .await?,
            select_messages: prepare(
                "pending message read",
                "SELECT envelope FROM messages WHERE receiver = ? AND sender = ? AND bucket = ? AND sequence >= ?",
            )
            .await?,
            insert_message_bucket: prepare(
                "message bucket insert",
                "INSERT INTO message_buckets (receiver, sender, bucket) VALUES (?, ?, ?)",
            )
            .await?,
            select_message_buckets: prepare(
                "message bucket read",
                "SELECT sender, bucket FROM message_buckets WHERE receiver = ?",
            )
            .await?,
            insert_snapshot: prepare(
                "snapshot insert",
                "INSERT INTO snapshots (shard, sequence, snapshot) VALUES (?, ?, ?)",
            )
            .await?,
            select_latest_snapshot: prepare(
                "latest snapshot read",
                "SELECT sequence, snapshot FROM snapshots WHERE shard = ? LIMIT 1",
            )
            .await?,
            select_snapshot_sequences: prepare(
                "snapshot list",
                "SELECT sequence FROM snapshots WHERE shard = ? LIMIT ?",
            )
            .await?,
            delete_snapshots_before: prepare(
                "old snapshot delete",
                "DELETE FROM snapshots WHERE shard = ? AND sequence < ?",
            )
            .await?,
            select_layout: prepare(
                "layout read",
                "SELECT value FROM store_layout WHERE name = ?",
            )
            .await?,
            insert_layout: prepare(
                "layout write",
                "INSERT INTO store_layout (name, value) VALUES (?, ?)",
            )
            .await?,
        })
    }
}

#[async_trait]
impl EventStore for CqlStore {
    async fn append(&self, batches: Vec<ShardBatch>) -> Result<(), StoreError> {
        Ok(self.append_inner(batches).await?)
    }

    async fn claim_shard(&self, shard: ShardId, next_sequence: u64) -> Result<(), StoreError> {
        Ok(self.claim_shard_inner(shard, next_sequence).await?)
    }

    async fn recover(&self, shard: ShardId) -> Result<Recovery, StoreError> {
        Ok(self.recover_inner(shard).await?)
    }

    async fn pending_messages(
        &self,
        to: ShardId,
        next_expected: &BTreeMap<ShardId, u64>,
    ) -> Result<Vec<MessageEnvelope>, StoreError> {
        Ok(self.pending_messages_inner(to, next_expected).await?)
    }

    async fn save_snapshot(&self, shard: ShardId, snapshot: &Snapshot) -> Result<(), StoreError> {
        Ok(self.save_snapshot_inner(shard, snapshot).await?)
    }

    async fn read_shard(
        &self,
        shard: ShardId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<BatchRecord>, StoreError> {
        Ok(self.read_shard_inner(shard, after, limit).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_bounded_in_rows_and_bytes_but_hold_at_least_one_row() {
        let sizes =
            |chunks: Vec<Vec<usize>>| -> Vec<usize> { chunks.iter().map(Vec::len).collect() };
        assert_eq!(sizes(chunks(vec![1; 450], |&row| row)), vec![200, 200, 50]);
        let half = BATCH_BYTES_MAX / 2;
        assert_eq!(
            sizes(chunks(
                vec![half, half, 1, BATCH_BYTES_MAX * 3, 1],
                |&row| row
            )),
            vec![2, 1, 1, 1]
        );
        assert!(chunks(Vec::<usize>::new(), |&row| row).is_empty());
    }
}
