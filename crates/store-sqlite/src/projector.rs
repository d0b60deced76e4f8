//! The projector: one connection on a dedicated thread applies the log's
//! records to the read models, which live in a database file of their own
//! (see [`crate::schema::open_projector`]). The log's writer never waits
//! for a projection batch, and a projection batch never waits for a log
//! commit's sync: each file has its own writer.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use ledger_core::codec::BatchRecord;
use projectors::project;
use rusqlite::{params, Connection, OptionalExtension, Transaction, TransactionBehavior};
use tokio::sync::{mpsc, oneshot};

use crate::apply::ChangeBatch;
use crate::checkpoint::Checkpointer;
use crate::error::{from_sql, to_sql, SqliteStoreError};
use crate::metrics as names;
use crate::published::Published;
use crate::schema::{ENTRY_INDEX_BITS, READ_MODEL_TABLES};

/// Requests queued for the projector before callers wait.
pub const PROJECT_QUEUE_CAPACITY: usize = 64;

type Reply<T> = oneshot::Sender<Result<T, SqliteStoreError>>;

/// Work for the projector thread.
pub enum ProjectRequest {
    /// Projects up to `limit` records; answers how many records and entries.
    Project {
        limit: usize,
        reply: Reply<Projected>,
    },
    /// Empties the read models and their checkpoints.
    ResetReadModels { reply: Reply<()> },
}

/// Starts the projector thread; it stops when every sender is dropped.
/// `checkpointer` copies the read models' write-ahead log beside it; after
/// each commit the thread publishes what it projected to `published`.
pub fn spawn(
    connection: Connection,
    checkpointer: Checkpointer,
    published: Arc<Published>,
) -> Result<mpsc::Sender<ProjectRequest>, SqliteStoreError> {
    let (sender, receiver) = mpsc::channel(PROJECT_QUEUE_CAPACITY);
    std::thread::Builder::new()
        .name("ledger-projector".to_string())
        .spawn(move || run(connection, receiver, &checkpointer, &published))
        .map_err(|source| SqliteStoreError::ProjectorStart { source })?;
    Ok(sender)
}

fn run(
    mut connection: Connection,
    mut receiver: mpsc::Receiver<ProjectRequest>,
    checkpointer: &Checkpointer,
    published: &Published,
) {
    while let Some(request) = receiver.blocking_recv() {
        // Only a batch that wrote nudges the checkpointer: the projector
        // also runs on a timer when nothing is new, and an idle log must go
        // quiet for the checkpointer to cut it.
        let wrote = match request {
            ProjectRequest::Project { limit, reply } => {
                let started = Instant::now();
                let result = project_batch(&mut connection, limit, published);
                let wrote = match &result {
                    Ok(projected) => {
                        metrics::counter!(names::PROJECTOR_EVENTS_APPLIED_TOTAL)
                            .increment(projected.entries as u64);
                        metrics::histogram!(names::PROJECTOR_BATCH_DURATION_SECONDS)
                            .record(started.elapsed().as_secs_f64());
                        projected.records > 0
                    }
                    Err(_) => {
                        metrics::counter!(names::PROJECTOR_FAILURES_TOTAL).increment(1);
                        false
                    }
                };
                let _ = reply.send(result);
                wrote
            }
            ProjectRequest::ResetReadModels { reply } => {
                let result = reset_read_models(&mut connection);
                if result.is_ok() {
                    published.reset();
                }
                let _ = reply.send(result);
                true
            }
        };
        if wrote {
            checkpointer.nudge();
        }
    }
    tracing::debug!("store projector thread stopping: every sender is gone");
}

/// What one projection transaction applied.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Projected {
    /// Records read from the log (what the request's `limit` counts).
    pub records: usize,
    /// Entries (events) of those records applied to the read models.
    pub entries: usize,
}

impl Projected {
    /// Whether the transaction took as many records as it was allowed:
    /// then more may be waiting. A record holds many entries, so only the
    /// record count answers this.
    pub fn filled(&self, limit: usize) -> bool {
        self.records >= limit
    }
}

/// Applies up to `limit` unprojected records, in global order, and advances
/// the projection position and shard checkpoints in the same transaction.
/// Answers how many records and entries were applied. Once committed, what
/// it projected is published (and the cached views emptied).
fn project_batch(
    connection: &mut Connection,
    limit: usize,
    published: &Published,
) -> Result<Projected, SqliteStoreError> {
    let transaction = connection
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(SqliteStoreError::sqlite("begin projection transaction"))?;
    let projected: i64 = transaction
        .query_row(
            "SELECT position FROM projection_position WHERE id = 0",
            [],
            |row| row.get(0),
        )
        .map_err(SqliteStoreError::sqlite("read projection position"))?;
    let rows = read_records_after(&transaction, projected, limit)?;
    if rows.is_empty() {
        return Ok(Projected::default());
    }
    let mut checkpoints: BTreeMap<u16, u64> = BTreeMap::new();
    let mut last_position = projected;
    let mut applied = 0;
    let mut changes = ChangeBatch::default();
    for (position, bytes) in &rows {
        let record = BatchRecord::from_bytes(bytes)?;
        for (index, logged) in record.logged().enumerate() {
            let event = logged.event()?;
            let entry_position = (*position << ENTRY_INDEX_BITS) | index as i64;
            changes.apply(&transaction, entry_position, &project(&logged, &event))?;
        }
        applied += record.len() as usize;
        let checkpoint = checkpoints.entry(record.shard.0).or_insert(0);
        *checkpoint = (*checkpoint).max(record.last_sequence());
        last_position = *position;
    }
    let deliveries = changes.finish(&transaction)?;
    for (shard, sequence) in &checkpoints {
        let sequence = to_sql("checkpoint sequence", *sequence)?;
        transaction
            .prepare_cached(
                "INSERT INTO projection_checkpoint (shard, sequence) VALUES (?1, ?2)
                 ON CONFLICT (shard) DO UPDATE SET sequence = MAX(sequence, excluded.sequence)",
            )
            .and_then(|mut statement| statement.execute(params![shard, sequence]))
            .map_err(SqliteStoreError::sqlite("advance shard checkpoint"))?;
    }
    transaction
        .execute(
            "UPDATE projection_position SET position = ?1 WHERE id = 0",
            params![last_position],
        )
        .map_err(SqliteStoreError::sqlite("advance projection position"))?;
    transaction
        .commit()
        .map_err(SqliteStoreError::sqlite("commit projection"))?;
    published.publish(&checkpoints, &deliveries);
    for (shard, sequence) in &checkpoints {
        engine::metrics::record_projected(ledger_core::ShardId(*shard), *sequence);
    }
    Ok(Projected {
        records: rows.len(),
        entries: applied,
    })
}

fn read_records_after(
    transaction: &Transaction<'_>,
    position: i64,
    limit: usize,
) -> Result<Vec<(i64, Vec<u8>)>, SqliteStoreError> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let mut statement = transaction
        .prepare_cached(
            "SELECT position, record FROM records WHERE position > ?1 ORDER BY position LIMIT ?2",
        )
        .map_err(SqliteStoreError::sqlite("prepare projection read"))?;
    let rows = statement
        .query_map(params![position, limit], |row| {
            Ok((row.get(0)?, row.get(1)?))
        })
        .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
        .map_err(SqliteStoreError::sqlite("read records to project"))?;
    Ok(rows)
}

pub(crate) fn reset_read_models(connection: &mut Connection) -> Result<(), SqliteStoreError> {
    let transaction = connection
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(SqliteStoreError::sqlite("begin read-model reset"))?;
    for (table, _) in READ_MODEL_TABLES {
        transaction
            .execute(&format!("DELETE FROM {table}"), [])
            .map_err(SqliteStoreError::sqlite("truncate read model"))?;
    }
    transaction
        .execute(
            "INSERT INTO projection_position (id, position) VALUES (0, 0)",
            [],
        )
        .map_err(SqliteStoreError::sqlite("reset projection position"))?;
    transaction
        .commit()
        .map_err(SqliteStoreError::sqlite("commit read-model reset"))
}

/// Every shard's projection checkpoint (last sequence projected).
pub(crate) fn projection_checkpoints(
    connection: &Connection,
) -> Result<BTreeMap<u16, u64>, SqliteStoreError> {
    let mut statement = connection
        .prepare("SELECT shard, sequence FROM projection_checkpoint")
        .map_err(SqliteStoreError::sqlite("prepare checkpoint read"))?;
    let rows = statement
        .query_map([], |row| Ok((row.get::<_, u16>(0)?, row.get::<_, i64>(1)?)))
        .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
        .map_err(SqliteStoreError::sqlite("read checkpoints"))?;
    rows.into_iter()
        .map(|(shard, sequence)| Ok((shard, from_sql("checkpoint sequence", sequence)?)))
        .collect()
}

/// The projection position (last applied `records.position`).
pub fn projection_position(connection: &Connection) -> Result<u64, SqliteStoreError> {
    let position: Option<i64> = connection
        .query_row(
            "SELECT position FROM projection_position WHERE id = 0",
            [],
            |row| row.get(0),
        )
        .optional()
        .map_err(SqliteStoreError::sqlite("read projection position"))?;
    from_sql("projection position", position.unwrap_or(0))
}
