//! The CQL store: the event log, the shard message outbox and snapshots in
//! bounded partitions (see `schemas/cql/ledger.cql`).
//!
//! # The log
//!
//! One `events` row per [`BatchRecord`]: `sequence` is the record's last
//! sequence, `bucket` = that sequence / events per bucket, `hash` the
//! record's hash and `envelope` its bytes ([`BatchRecord::to_bytes`]). The
//! per-event columns (`event_type`, `schema_version`, `cause`,
//! `timestamp_ms`) describe format 1 rows (one envelope each, written
//! before records existed) and stay null in a record's row. A format 1 row
//! reads as a record of one entry, keyed the same way (its last sequence is
//! its event's), so old keyspaces stay valid without a migration, and the
//! rows holding an entry above `after` are exactly those keyed above it.
//!
//! # Writes
//!
//! No lightweight transactions: every write is a plain, idempotent upsert
//! whose row content depends only on the record or message, so a redo
//! writes identical rows. A different record at stored sequences must be
//! refused, which upserts alone cannot do; [`CqlStore::append`] therefore
//! reads the stored rows keyed inside the sequences it is about to write
//! first (the only one allowed is the same record's row: same last
//! sequence, same hash), refuses the whole append on any difference, and
//! only then writes. A stored record that starts inside a new one and ends
//! after it is not seen by that read (its row is keyed beyond); the engine
//! never writes one. That check is only sound because **each shard has a
//! single writer** (the engine runs one writer per shard, and a shard's
//! outgoing messages are written by that shard only): nobody else can write
//! the same keys between the read and the write.
//!
//! Rows go in unlogged batches that each stay inside one partition (atomic
//! and isolated there), bounded in rows and bytes. An append spanning
//! several partitions is not atomic across them: a crash in the middle
//! leaves a prefix, which the engine's redo of the same append completes
//! (identical rows). To keep that prefix harmless, the record partitions are
//! written before the message partitions (a message is never visible before
//! the record that sent it), and a bucket's entry in
//! `event_buckets`/`message_buckets` before its rows (an entry without rows
//! reads as empty).
//!
//! # Consistency
//!
//! Every statement runs at the configured consistency, QUORUM by default.
//! The tests use one node with replication factor 1, where QUORUM is that
//! node; production uses replication factor 3, where a QUORUM write and a
//! QUORUM read share a replica, so an acknowledged append is seen by every
//! later recovery or message read even with one replica down.

use std::collections::{BTreeMap, HashSet};
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
use scylla::statement::Consistency;

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
    Events {
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
    select_record_hashes: PreparedStatement,
    select_records: PreparedStatement,
    insert_event_bucket: PreparedStatement,
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
            KnownBucket::Events { shard, bucket } => {
                self.execute(
                    &self.statements.insert_event_bucket,
                    (i32::from(shard), to_cql("bucket", bucket)?),
                    "event bucket write",
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
        // Records by the partition of their last sequence (their row's key),
        // then by last sequence; duplicates inside one append must agree.
        let mut records: BTreeMap<(u16, u64), BTreeMap<u64, &BatchRecord>> = BTreeMap::new();
        let mut messages: BTreeMap<(u16, u16, u64), MessagePartition<'_>> = BTreeMap::new();
        for batch in &batches {
            for record in &batch.records {
                if let Some(batch_shard) = batch.shard {
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
                let last_sequence = record.last_sequence();
                to_cql("event sequence", last_sequence)?;
                let bucket = last_sequence / self.settings.events_per_bucket;
                let partition = records.entry((record.shard.0, bucket)).or_default();
                if let Some(other) = partition.insert(last_sequence, record) {
                    if other.hash != record.hash {
                        return Err(CqlStoreError::RecordConflict {
                            shard: record.shard,
                            sequence: last_sequence,
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

        // Read before write: what is stored must be identical; only the rest
        // is written. Sound under the single-writer-per-shard assumption.
        // Both checks at once: they only read.
        let (stored_records, message_writes) = futures_util::future::try_join(
            self.stored_record_rows(&records),
            try_join_all(
                messages
                    .iter()
                    .map(|(&(receiver, sender, bucket), partition)| {
                        self.new_messages(receiver, sender, bucket, partition)
                    }),
            ),
        )
        .await?;
        let mut record_writes = Vec::with_capacity(records.len());
        for (&(shard, bucket), partition) in &records {
            record_writes.push(self.new_records(shard, bucket, partition, &stored_records)?);
        }

        // Records before messages: a message is never visible without the
        // record that sent it.
        try_join_all(
            records
                .keys()
                .zip(record_writes)
                .filter(|(_, rows)| !rows.is_empty())
                .map(|(&(shard, bucket), rows)| async move {
                    self.ensure_bucket(KnownBucket::Events { shard, bucket })
                        .await?;
                    self.write_partition(
                        &self.statements.insert_record,
                        chunks(rows, |row| row.4.len()),
                        "record write",
                    )
                    .await
                }),
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

    /// The stored rows (last sequence, hash) of every `events` partition the
    /// records to append cover, in the sequence ranges they cover: a record
    /// spans from its first sequence to its last, possibly across buckets.
    async fn stored_record_rows(
        &self,
        records: &BTreeMap<(u16, u64), BTreeMap<u64, &BatchRecord>>,
    ) -> Result<StoredRecordRows, CqlStoreError> {
        let mut ranges: BTreeMap<(u16, u64), (u64, u64)> = BTreeMap::new();
        for record in records.values().flat_map(BTreeMap::values) {
            let (first, last) = (record.first_sequence, record.last_sequence());
            let per_bucket = self.settings.events_per_bucket;
            for bucket in first / per_bucket..=last / per_bucket {
                let range = ranges
                    .entry((record.shard.0, bucket))
                    .or_insert((first, last));
                *range = (range.0.min(first), range.1.max(last));
            }
        }
        let lookups = ranges
            .into_iter()
            .map(|((shard, bucket), (first, last))| async move {
                let rows: Vec<(i64, Vec<u8>)> = self
                    .select(
                        &self.statements.select_record_hashes,
                        (
                            i32::from(shard),
                            to_cql("bucket", bucket)?,
                            to_cql("event sequence", first)?,
                            to_cql("event sequence", last)?,
                        ),
                        "stored record lookup",
                    )
                    .await?;
                let mut found = Vec::with_capacity(rows.len());
                for (sequence, hash) in rows {
                    found.push((shard, from_cql("record sequence", sequence)?, hash));
                }
                Ok::<_, CqlStoreError>(found)
            });
        let mut stored = StoredRecordRows::new();
        for (shard, sequence, hash) in try_join_all(lookups).await?.into_iter().flatten() {
            stored.insert((shard, sequence), hash);
        }
        Ok(stored)
    }

    /// The rows of `partition` not stored yet; an error if a stored row
    /// differs from the record at its key, or lies inside a record with
    /// other boundaries.
    fn new_records(
        &self,
        shard: u16,
        bucket: u64,
        partition: &BTreeMap<u64, &BatchRecord>,
        stored: &StoredRecordRows,
    ) -> Result<Vec<RecordRow>, CqlStoreError> {
        let mut rows = Vec::new();
        for (&last_sequence, record) in partition {
            let covered = stored.range((shard, record.first_sequence)..=(shard, last_sequence));
            let mut already_stored = false;
            for (&(_, sequence), hash) in covered {
                if sequence != last_sequence || hash.as_slice() != record.hash.as_slice() {
                    return Err(CqlStoreError::RecordConflict {
                        shard: record.shard,
                        sequence,
                    });
                }
                already_stored = true;
            }
            if !already_stored {
                rows.push((
                    shard_column(record.shard),
                    to_cql("bucket", bucket)?,
                    to_cql("event sequence", last_sequence)?,
                    record.hash.to_vec(),
                    record.to_bytes(),
                ));
            }
        }
        Ok(rows)
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
        let Ok(after_column) = i64::try_from(after) else {
            return Ok(Vec::new());
        };
        if limit == 0 || after_column == i64::MAX {
            return Ok(Vec::new());
        }
        // A row's key is its record's last sequence: the records holding an
        // entry above `after` are exactly the rows above it, which start in
        // the bucket of `after + 1`.
        let first_bucket = (after + 1) / self.settings.events_per_bucket;
        let buckets: Vec<(i64,)> = self
            .select(
                &self.statements.select_event_buckets,
                (shard_column(shard), to_cql("bucket", first_bucket)?),
                "event bucket read",
            )
            .await?;
        let mut records = Vec::new();
        for (bucket,) in buckets {
            let remaining = limit - records.len();
            let row_limit = i32::try_from(remaining).unwrap_or(i32::MAX);
            let rows: Vec<(Vec<u8>,)> = self
                .select(
                    &self.statements.select_records,
                    (shard_column(shard), bucket, after_column, row_limit),
                    "shard read",
                )
                .await?;
            for (bytes,) in rows {
                records.push(BatchRecord::from_bytes(&bytes)?);
            }
            if records.len() >= limit {
                records.truncate(limit);
                break;
            }
        }
        Ok(records)
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

/// shard, bucket, sequence (the record's last), hash, envelope (the record's bytes)
type RecordRow = (i32, i64, i64, Vec<u8>, Vec<u8>);
/// Stored `events` rows looked up before an append: (shard, sequence) → hash.
type StoredRecordRows = BTreeMap<(u16, u64), Vec<u8>>;
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
    if contact_points.is_empty() {
        return Err(CqlStoreError::NoContactPoints);
    }
    if !is_valid_keyspace_name(keyspace) {
        return Err(CqlStoreError::InvalidKeyspaceName {
            keyspace: keyspace.to_string(),
        });
    }
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
        Ok(Self {
            // The per-event columns (event_type, schema_version, cause,
            // timestamp_ms) describe format 1 rows only: a record's row
            // leaves them null.
            insert_record: prepare(
                "record insert",
                "INSERT INTO events (shard, bucket, sequence, hash, envelope) VALUES (?, ?, ?, ?, ?)",
            )
            .await?,
            select_record_hashes: prepare(
                "record hash lookup",
                "SELECT sequence, hash FROM events WHERE shard = ? AND bucket = ? AND sequence >= ? AND sequence <= ?",
            )
            .await?,
            select_records: prepare(
                "shard read",
                "SELECT envelope FROM events WHERE shard = ? AND bucket = ? AND sequence > ? LIMIT ?",
            )
            .await?,
            insert_event_bucket: prepare(
                "event bucket insert",
                "INSERT INTO event_buckets (shard, bucket) VALUES (?, ?)",
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
