//! The embedded store: event log, shard outbox and snapshots in one SQLite
//! file, the read models in another, each with a writer thread of its own.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use engine::ports::{AppendReceipt, EventStore, Recovery, ShardBatch, StoreError};
use ledger_core::codec::{self, BatchRecord, MessageEnvelope, Snapshot};
use ledger_core::ShardId;
use rusqlite::{params, Connection};
use tokio::sync::{mpsc, oneshot, watch, Notify};

use crate::checkpoint::{CheckpointedDatabase, Checkpointer};
use crate::error::{from_sql, to_sql, SqliteStoreError};
use crate::projector::{self, ProjectRequest, Projected};
use crate::published::Published;
use crate::reader::ReadPool;
use crate::schema::{open_projector, open_writer, DATABASE_FILE_NAME, READ_MODELS_FILE_NAME};
use crate::writer::{self, WriteRequest};

/// Records applied per projection transaction by the projector loop (each
/// holds at most `RECORD_ENTRIES_MAX` entries; a busy shard's group commit
/// is one record).
pub const PROJECTOR_BATCH_RECORDS: usize = 256;
/// The projector runs at least this often, even without a signal.
pub const PROJECTOR_INTERVAL: Duration = Duration::from_millis(200);
/// After a signal, the projector waits this long before projecting, so that
/// one projection transaction takes the log commits of that time together
/// (fewer, larger transactions beside the log's writer) instead of one
/// per commit. The read models trail the log by at most this much more.
pub const PROJECTOR_GATHER: Duration = Duration::from_millis(10);

/// The SQLite store. Create it with [`SqliteStore::open`].
pub struct SqliteStore {
    path: PathBuf,
    writer: mpsc::Sender<WriteRequest>,
    projector: mpsc::Sender<ProjectRequest>,
    pub(crate) readers: Arc<ReadPool>,
    /// What the projector committed, for the query path.
    published: Arc<Published>,
    /// Signalled after each commit that wrote new events.
    appended: Arc<Notify>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database in `data_dir` and starts its
    /// writer thread. Idempotent. Blocking: from async code, call it before
    /// serving or inside `spawn_blocking`.
    pub fn open(data_dir: &Path) -> Result<Arc<SqliteStore>, StoreError> {
        Ok(Self::open_inner(data_dir)?)
    }

    fn open_inner(data_dir: &Path) -> Result<Arc<SqliteStore>, SqliteStoreError> {
        crate::metrics::describe();
        // The log first: the read models' connection attaches it.
        let connection = open_writer(data_dir)?;
        let projector_connection = open_projector(data_dir)?;
        let published = Arc::new(Published::load(&projector_connection)?);
        let projector = projector::spawn(
            projector_connection,
            Checkpointer::spawn(
                &data_dir.join(READ_MODELS_FILE_NAME),
                CheckpointedDatabase::ReadModels,
            )?,
            Arc::clone(&published),
        )?;
        let path = data_dir.join(DATABASE_FILE_NAME);
        let checkpointer = Checkpointer::spawn(&path, CheckpointedDatabase::Log)?;
        let appended = Arc::new(Notify::new());
        let writer = writer::spawn(connection, Arc::clone(&appended), checkpointer)?;
        Ok(Arc::new(SqliteStore {
            readers: Arc::new(ReadPool::new(data_dir.to_path_buf())),
            published,
            path,
            writer,
            projector,
            appended,
        }))
    }

    /// Path of the log's database file.
    pub fn database_path(&self) -> &Path {
        &self.path
    }

    async fn write<T>(
        &self,
        request: WriteRequest,
        reply: oneshot::Receiver<Result<T, SqliteStoreError>>,
    ) -> Result<T, SqliteStoreError> {
        ask(&self.writer, request, reply, || {
            SqliteStoreError::WriterStopped
        })
        .await
    }

    async fn project<T>(
        &self,
        request: ProjectRequest,
        reply: oneshot::Receiver<Result<T, SqliteStoreError>>,
    ) -> Result<T, SqliteStoreError> {
        ask(&self.projector, request, reply, || {
            SqliteStoreError::ProjectorStopped
        })
        .await
    }

    /// Applies up to `limit` unprojected records to the read models, in
    /// global commit order; the projection position and shard checkpoints
    /// advance in the same transaction. Returns how many records and
    /// entries were applied.
    pub async fn project_pending(&self, limit: usize) -> Result<Projected, StoreError> {
        let (reply, answer) = oneshot::channel();
        Ok(self
            .project(ProjectRequest::Project { limit, reply }, answer)
            .await?)
    }

    /// Projects until every committed record is applied, in transactions of
    /// [`PROJECTOR_BATCH_RECORDS`] records. Returns the entries applied.
    pub async fn project_all_pending(&self) -> Result<usize, StoreError> {
        let mut entries = 0;
        loop {
            let projected = self.project_pending(PROJECTOR_BATCH_RECORDS).await?;
            if projected.records == 0 {
                return Ok(entries);
            }
            entries += projected.entries;
        }
    }

    /// Keeps the read models up to date until `shutdown` turns true (or its
    /// sender is dropped): projects after each commit that wrote events and
    /// at least every [`PROJECTOR_INTERVAL`], in batches of
    /// [`PROJECTOR_BATCH_RECORDS`]. Failures are logged and retried.
    pub async fn run_projector(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        loop {
            if *shutdown.borrow() {
                break;
            }
            match self.project_pending(PROJECTOR_BATCH_RECORDS).await {
                // A full batch: more may be waiting.
                Ok(projected) if projected.filled(PROJECTOR_BATCH_RECORDS) => continue,
                Ok(_) => {}
                Err(error) => tracing::error!(%error, "read-model projection failed; retrying"),
            }
            tokio::select! {
                _ = self.appended.notified() => {
                    tokio::time::sleep(PROJECTOR_GATHER).await;
                }
                _ = tokio::time::sleep(PROJECTOR_INTERVAL) => {}
                changed = shutdown.changed() => {
                    if changed.is_err() {
                        break;
                    }
                }
            }
        }
        tracing::debug!("read-model projector stopped");
    }

    /// Empties the read models and their checkpoints, then replays the whole
    /// log. For tests and audits: readers see partial models meanwhile.
    pub async fn rebuild_read_models(&self) -> Result<(), StoreError> {
        let (reply, answer) = oneshot::channel();
        self.project(ProjectRequest::ResetReadModels { reply }, answer)
            .await?;
        self.project_all_pending().await?;
        Ok(())
    }

    /// A deterministic text dump of every read-model table (and the
    /// projection checkpoints), rows ordered by key, for equality checks.
    pub async fn dump_read_models(&self) -> Result<String, StoreError> {
        Ok(self
            .readers
            .run("read-model dump", crate::dump::dump_read_models)
            .await?)
    }

    /// The last `events.position` applied to the read models.
    pub async fn projection_position(&self) -> Result<u64, StoreError> {
        Ok(self
            .readers
            .run("projection position read", |connection| {
                projector::projection_position(connection)
            })
            .await?)
    }

    /// The read models over this store's tables.
    pub fn read_models(self: &Arc<Self>) -> Arc<dyn projectors::ReadModels> {
        Arc::new(crate::read_models::SqliteReadModels::new(
            Arc::clone(&self.readers),
            Arc::clone(&self.published),
        ))
    }
}

/// Queues `request` for a thread of the store and waits for its answer on
/// `reply`; `stopped` names the thread if it is gone.
async fn ask<R, T>(
    thread: &mpsc::Sender<R>,
    request: R,
    reply: oneshot::Receiver<Result<T, SqliteStoreError>>,
    stopped: fn() -> SqliteStoreError,
) -> Result<T, SqliteStoreError> {
    thread.send(request).await.map_err(|_| stopped())?;
    reply.await.map_err(|_| stopped())?
}

#[async_trait]
impl EventStore for SqliteStore {
    async fn append(&self, batches: Vec<ShardBatch>) -> Result<(), StoreError> {
        if batches
            .iter()
            .all(|batch| batch.records.is_empty() && batch.messages.is_empty())
        {
            return Ok(());
        }
        let (reply, answer) = oneshot::channel();
        Ok(self
            .write(WriteRequest::Append { batches, reply }, answer)
            .await?)
    }

    async fn append_ordered(&self, batches: Vec<ShardBatch>) -> Result<AppendReceipt, StoreError> {
        if batches
            .iter()
            .all(|batch| batch.records.is_empty() && batch.messages.is_empty())
        {
            return Ok(Box::pin(std::future::ready(Ok(()))));
        }
        let (reply, answer) = oneshot::channel();
        // The writer thread takes requests first in, first committed: once the
        // request is in its queue, its place in the commit order is fixed.
        self.writer
            .send(WriteRequest::Append { batches, reply })
            .await
            .map_err(|_| StoreError::from(SqliteStoreError::WriterStopped))?;
        Ok(Box::pin(async move {
            answer
                .await
                .map_err(|_| StoreError::from(SqliteStoreError::WriterStopped))?
                .map_err(StoreError::from)
        }))
    }

    fn orders_appends_globally(&self) -> bool {
        true
    }

    async fn recover(&self, shard: ShardId) -> Result<Recovery, StoreError> {
        Ok(self
            .readers
            .run("recovery", move |connection| recover(connection, shard))
            .await?)
    }

    async fn pending_messages(
        &self,
        to: ShardId,
        next_expected: &BTreeMap<ShardId, u64>,
    ) -> Result<Vec<MessageEnvelope>, StoreError> {
        let next_expected = next_expected.clone();
        Ok(self
            .readers
            .run("pending message read", move |connection| {
                pending_messages(connection, to, &next_expected)
            })
            .await?)
    }

    async fn save_snapshot(&self, shard: ShardId, snapshot: &Snapshot) -> Result<(), StoreError> {
        let sequence = snapshot.state.next_sequence.saturating_sub(1);
        let (reply, answer) = oneshot::channel();
        let request = WriteRequest::SaveSnapshot {
            shard: shard.0,
            sequence,
            // Compressed here, on the caller's (snapshot) thread, not the writer's.
            snapshot: codec::compress_stored(&snapshot.to_bytes()),
            reply,
        };
        Ok(self.write(request, answer).await?)
    }

    async fn read_shard(
        &self,
        shard: ShardId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<BatchRecord>, StoreError> {
        Ok(self
            .readers
            .run("shard read", move |connection| {
                read_shard(connection, shard, after, limit)
            })
            .await?)
    }
}

fn recover(connection: &mut Connection, shard: ShardId) -> Result<Recovery, SqliteStoreError> {
    // One read transaction: the snapshot and the records after it agree.
    let transaction = connection
        .transaction()
        .map_err(SqliteStoreError::sqlite("begin recovery read"))?;
    // The newest snapshot that decodes; an unreadable one (a torn or
    // corrupt write) falls back to the one before it, and with none left,
    // to the log alone (records are never deleted).
    let kept: Vec<(i64, Vec<u8>)> = transaction
        .prepare_cached(
            "SELECT sequence, snapshot FROM snapshots WHERE shard = ?1 ORDER BY sequence DESC",
        )
        .and_then(|mut statement| {
            statement
                .query_map(params![shard.0], |row| Ok((row.get(0)?, row.get(1)?)))?
                .collect::<Result<Vec<_>, _>>()
        })
        .map_err(SqliteStoreError::sqlite("read snapshots"))?;
    let mut after = 0;
    let mut snapshot = None;
    for (sequence, bytes) in kept {
        match Snapshot::from_bytes(&bytes) {
            Ok(decoded) => {
                after = from_sql("snapshot sequence", sequence)?;
                snapshot = Some(decoded);
                break;
            }
            Err(error) => {
                tracing::warn!(%shard, sequence, %error, "snapshot unreadable; trying an older one")
            }
        }
    }
    let records = read_shard(&transaction, shard, after, usize::MAX)?;
    Ok(Recovery { snapshot, records })
}

fn read_shard(
    connection: &Connection,
    shard: ShardId,
    after: u64,
    limit: usize,
) -> Result<Vec<BatchRecord>, SqliteStoreError> {
    let after = to_sql("sequence", after)?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let mut statement = connection
        .prepare_cached("SELECT record FROM records WHERE shard = ?1 AND last_sequence > ?2 ORDER BY last_sequence LIMIT ?3")
        .map_err(SqliteStoreError::sqlite("prepare shard read"))?;
    let rows = statement
        .query_map(params![shard.0, after, limit], |row| {
            row.get::<_, Vec<u8>>(0)
        })
        .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
        .map_err(SqliteStoreError::sqlite("read shard records"))?;
    let mut records = Vec::with_capacity(rows.len());
    for bytes in rows {
        records.push(BatchRecord::from_bytes(&bytes)?);
    }
    Ok(records)
}

fn pending_messages(
    connection: &mut Connection,
    to: ShardId,
    next_expected: &BTreeMap<ShardId, u64>,
) -> Result<Vec<MessageEnvelope>, SqliteStoreError> {
    let transaction = connection
        .transaction()
        .map_err(SqliteStoreError::sqlite("begin message read"))?;
    let mut next_sender = transaction
        .prepare_cached("SELECT MIN(sender) FROM messages WHERE receiver = ?1 AND sender > ?2")
        .map_err(SqliteStoreError::sqlite("prepare sender lookup"))?;
    let mut from_sender = transaction
        .prepare_cached(
            "SELECT envelope FROM messages WHERE receiver = ?1 AND sender = ?2 AND sequence >= ?3 ORDER BY sequence",
        )
        .map_err(SqliteStoreError::sqlite("prepare message read"))?;
    let mut messages = Vec::new();
    // Walk the senders through the primary key (receiver, sender, sequence):
    // each lookup is an index seek, however many messages were consumed.
    let mut previous_sender: i64 = -1;
    loop {
        let sender: Option<i64> = next_sender
            .query_row(params![to.0, previous_sender], |row| row.get(0))
            .map_err(SqliteStoreError::sqlite("find next message sender"))?;
        let Some(sender) = sender else {
            break;
        };
        previous_sender = sender;
        let sender_shard = ShardId(u16::try_from(sender).map_err(|_| {
            SqliteStoreError::StoredIntegerOutOfRange {
                what: "message sender",
                value: sender,
            }
        })?);
        let first = next_expected.get(&sender_shard).copied().unwrap_or(1);
        let rows = from_sender
            .query_map(
                params![to.0, sender, to_sql("message sequence", first)?],
                |row| row.get::<_, Vec<u8>>(0),
            )
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
            .map_err(SqliteStoreError::sqlite("read pending messages"))?;
        for bytes in rows {
            messages.push(codec::decode::<MessageEnvelope>(
                "message envelope",
                &bytes,
            )?);
        }
    }
    Ok(messages)
}
