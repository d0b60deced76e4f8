//! The log's single writer: one connection on a dedicated thread. It drains
//! every queued append into one transaction (group commit), commits once,
//! then answers each caller. Snapshots go through it too, so SQLite never
//! sees two writers of the log. (The projector writes the read models'
//! file beside it, see `projector`; the checkpoint thread copies the
//! write-ahead log into the database file, see `checkpoint`.)

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use engine::ports::ShardBatch;
use ledger_core::codec::{self, BatchRecord, Entry};
use rusqlite::{params, Connection, TransactionBehavior};
use tokio::sync::{mpsc, oneshot, Notify};

use crate::checkpoint::Checkpointer;
use crate::error::{to_sql, SqliteStoreError};
use crate::metrics as names;

/// Most entries (and outbox messages) written by one group commit.
pub const GROUP_COMMIT_ENTRIES_MAX: usize = 16_384;
/// Requests queued for the writer before callers wait.
pub const WRITE_QUEUE_CAPACITY: usize = 1_024;
/// Snapshots kept per shard (older ones are deleted): the newest, and one
/// to fall back on if the newest cannot be read.
pub const SNAPSHOTS_KEPT_PER_SHARD: i64 = 2;

type Reply<T> = oneshot::Sender<Result<T, SqliteStoreError>>;

/// Work for the writer thread.
pub enum WriteRequest {
    Append {
        batches: Vec<ShardBatch>,
        reply: Reply<()>,
    },
    SaveSnapshot {
        shard: u16,
        sequence: u64,
        snapshot: Vec<u8>,
        reply: Reply<()>,
    },
}

impl WriteRequest {
    fn entry_count(&self) -> usize {
        match self {
            WriteRequest::Append { batches, .. } => batches
                .iter()
                .map(|batch| batch.entries() as usize + batch.messages.len())
                .sum::<usize>()
                .max(1),
            _ => 1,
        }
    }
}

/// Starts the writer thread; it stops when every sender is dropped.
pub fn spawn(
    connection: Connection,
    appended: Arc<Notify>,
    checkpointer: Checkpointer,
) -> Result<mpsc::Sender<WriteRequest>, SqliteStoreError> {
    let (sender, receiver) = mpsc::channel(WRITE_QUEUE_CAPACITY);
    std::thread::Builder::new()
        .name("ledger-store-writer".to_string())
        .spawn(move || run(connection, receiver, appended, checkpointer))
        .map_err(|source| SqliteStoreError::WriterStart { source })?;
    Ok(sender)
}

struct PendingAppend {
    batches: Vec<ShardBatch>,
    reply: Reply<()>,
}

fn run(
    mut connection: Connection,
    mut receiver: mpsc::Receiver<WriteRequest>,
    appended: Arc<Notify>,
    checkpointer: Checkpointer,
) {
    while let Some(first) = receiver.blocking_recv() {
        let mut entries = first.entry_count();
        let mut appends = Vec::new();
        let mut others = Vec::new();
        sort_request(first, &mut appends, &mut others);
        while entries < GROUP_COMMIT_ENTRIES_MAX {
            match receiver.try_recv() {
                Ok(request) => {
                    entries += request.entry_count();
                    sort_request(request, &mut appends, &mut others);
                }
                Err(_) => break,
            }
        }
        if !appends.is_empty() {
            group_commit(&mut connection, appends, &appended);
        }
        for request in others {
            handle_other(&mut connection, request);
        }
        checkpointer.nudge();
    }
    tracing::debug!("store writer thread stopping: every sender is gone");
}

fn sort_request(
    request: WriteRequest,
    appends: &mut Vec<PendingAppend>,
    others: &mut Vec<WriteRequest>,
) {
    match request {
        WriteRequest::Append { batches, reply } => appends.push(PendingAppend { batches, reply }),
        other => others.push(other),
    }
}

fn handle_other(connection: &mut Connection, request: WriteRequest) {
    match request {
        WriteRequest::Append { .. } => unreachable!("appends are group committed"),
        WriteRequest::SaveSnapshot {
            shard,
            sequence,
            snapshot,
            reply,
        } => {
            let result = save_snapshot(connection, shard, sequence, &snapshot);
            if result.is_ok() {
                metrics::counter!(names::SNAPSHOTS_SAVED_TOTAL).increment(1);
            }
            let _ = reply.send(result);
        }
    }
}

/// What one append wrote.
#[derive(Default)]
struct Written {
    events: u64,
    messages: u64,
}

/// Writes every request in one transaction; each request inside its own
/// savepoint, so a refused request leaves nothing and does not sink the others.
fn group_commit(connection: &mut Connection, appends: Vec<PendingAppend>, appended: &Notify) {
    let started = Instant::now();
    let entry_count: usize = appends
        .iter()
        .map(|append| entries_of(&append.batches))
        .sum();
    let mut outcomes: Vec<Result<Written, SqliteStoreError>> = Vec::with_capacity(appends.len());
    let committed = write_group(connection, &appends, &mut outcomes);

    metrics::counter!(names::APPEND_BATCHES_TOTAL).increment(1);
    metrics::counter!(names::APPEND_REQUESTS_TOTAL).increment(appends.len() as u64);
    metrics::histogram!(names::APPEND_BATCH_ENVELOPES).record(entry_count as f64);
    metrics::histogram!(names::COMMIT_DURATION_SECONDS).record(started.elapsed().as_secs_f64());

    let failure = committed.err().map(|error| error.to_string());
    if let Some(detail) = &failure {
        tracing::error!(%detail, requests = appends.len(), "group commit failed");
    }
    let mut written = Written::default();
    let mut outcomes = outcomes.into_iter();
    for append in appends {
        let result = match (outcomes.next(), &failure) {
            (Some(Err(error)), _) => Err(error),
            (_, Some(detail)) => Err(SqliteStoreError::GroupCommitFailed {
                detail: detail.clone(),
            }),
            (Some(Ok(request_written)), None) => {
                written.events += request_written.events;
                written.messages += request_written.messages;
                Ok(())
            }
            (None, None) => unreachable!("every request has an outcome when the group committed"),
        };
        if result.is_err() {
            metrics::counter!(names::APPEND_FAILURES_TOTAL).increment(1);
        }
        // The caller may have gone away; the write stands either way.
        let _ = append.reply.send(result);
    }
    metrics::counter!(names::APPEND_EVENTS_TOTAL).increment(written.events);
    metrics::counter!(names::APPEND_MESSAGES_TOTAL).increment(written.messages);
    if written.events > 0 {
        appended.notify_one();
    }
}

fn entries_of(batches: &[ShardBatch]) -> usize {
    batches
        .iter()
        .map(|batch| batch.entries() as usize + batch.messages.len())
        .sum()
}

fn write_group(
    connection: &mut Connection,
    appends: &[PendingAppend],
    outcomes: &mut Vec<Result<Written, SqliteStoreError>>,
) -> Result<(), SqliteStoreError> {
    // Fast path: every request in one transaction, no savepoints. A refused
    // request (a conflicting redo) is rare; then the whole group is redone
    // with a savepoint per request, so only the refused one fails.
    {
        let transaction = connection
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(SqliteStoreError::sqlite("begin append transaction"))?;
        let mut written = Vec::with_capacity(appends.len());
        let mut refused = false;
        for append in appends {
            match write_batches(&transaction, &append.batches) {
                Ok(request_written) => written.push(Ok(request_written)),
                Err(_) => {
                    refused = true;
                    break;
                }
            }
        }
        if !refused {
            transaction
                .commit()
                .map_err(SqliteStoreError::sqlite("commit appends"))?;
            outcomes.extend(written);
            return Ok(());
        }
        transaction
            .rollback()
            .map_err(SqliteStoreError::sqlite("roll back refused group"))?;
    }
    let mut transaction = connection
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(SqliteStoreError::sqlite("begin append transaction"))?;
    for append in appends {
        let mut savepoint = transaction
            .savepoint()
            .map_err(SqliteStoreError::sqlite("open append savepoint"))?;
        let outcome = write_batches(&savepoint, &append.batches);
        if outcome.is_err() {
            savepoint
                .rollback()
                .map_err(SqliteStoreError::sqlite("roll back refused append"))?;
        }
        savepoint
            .commit()
            .map_err(SqliteStoreError::sqlite("release append savepoint"))?;
        outcomes.push(outcome);
    }
    transaction
        .commit()
        .map_err(SqliteStoreError::sqlite("commit appends"))
}

/// Writes the records and outbox messages of one append, and removes from
/// the outbox the messages its records consumed. Re-appending an identical
/// record or message is a no-op; different content at a stored key is refused.
fn write_batches(
    connection: &Connection,
    batches: &[ShardBatch],
) -> Result<Written, SqliteStoreError> {
    let mut written = Written::default();
    let mut insert_record = connection
        .prepare_cached(
            "INSERT INTO records (shard, last_sequence, hash, record) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (shard, last_sequence) DO NOTHING",
        )
        .map_err(SqliteStoreError::sqlite("prepare record insert"))?;
    let mut stored_hash = connection
        .prepare_cached("SELECT hash FROM records WHERE shard = ?1 AND last_sequence = ?2")
        .map_err(SqliteStoreError::sqlite("prepare record lookup"))?;
    let mut insert_message = connection
        .prepare_cached(
            "INSERT INTO messages (sender, receiver, sequence, envelope) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (receiver, sender, sequence) DO NOTHING",
        )
        .map_err(SqliteStoreError::sqlite("prepare message insert"))?;
    let mut stored_message = connection
        .prepare_cached(
            "SELECT envelope FROM messages WHERE receiver = ?1 AND sender = ?2 AND sequence = ?3",
        )
        .map_err(SqliteStoreError::sqlite("prepare message lookup"))?;
    let mut delete_consumed = connection
        .prepare_cached(
            "DELETE FROM messages WHERE receiver = ?1 AND sender = ?2 AND sequence <= ?3",
        )
        .map_err(SqliteStoreError::sqlite("prepare consumed message delete"))?;
    for batch in batches {
        // Messages first: a record may consume a message of the same append.
        for message in &batch.messages {
            let sequence = to_sql("message sequence", message.sequence)?;
            let bytes = codec::encode(message);
            let inserted = insert_message
                .execute(params![message.from.0, message.to.0, sequence, bytes])
                .map_err(SqliteStoreError::sqlite("insert message"))?;
            if inserted == 1 {
                written.messages += 1;
                continue;
            }
            let stored: Vec<u8> = stored_message
                .query_row(params![message.to.0, message.from.0, sequence], |row| {
                    row.get(0)
                })
                .map_err(SqliteStoreError::sqlite("look up stored message"))?;
            if stored != bytes {
                return Err(SqliteStoreError::MessageConflict {
                    sender: message.from,
                    receiver: message.to,
                    sequence: message.sequence,
                });
            }
        }
        for record in &batch.records {
            if let Some(batch_shard) = batch.shard {
                if batch_shard != record.shard {
                    return Err(SqliteStoreError::ShardMismatch {
                        batch_shard,
                        envelope_shard: record.shard,
                        sequence: record.first_sequence,
                    });
                }
            }
            let last_sequence = to_sql("record sequence", record.last_sequence())?;
            // Kept compressed (about 2.5 times smaller); every reader of
            // stored bytes goes through `BatchRecord::from_bytes`, which
            // unpacks them.
            let inserted = insert_record
                .execute(params![
                    record.shard.0,
                    last_sequence,
                    record.hash.as_slice(),
                    codec::compress_stored(record.bytes())
                ])
                .map_err(SqliteStoreError::sqlite("insert record"))?;
            if inserted == 1 {
                written.events += record.len();
                for (sender, sequence) in consumed(record) {
                    let sequence = to_sql("consumed message sequence", sequence)?;
                    delete_consumed
                        .execute(params![record.shard.0, sender, sequence])
                        .map_err(SqliteStoreError::sqlite("delete consumed messages"))?;
                }
                continue;
            }
            let hash: Vec<u8> = stored_hash
                .query_row(params![record.shard.0, last_sequence], |row| row.get(0))
                .map_err(SqliteStoreError::sqlite("look up stored record"))?;
            if hash != record.hash {
                return Err(SqliteStoreError::EventConflict {
                    shard: record.shard,
                    sequence: record.last_sequence(),
                });
            }
        }
    }
    Ok(written)
}

/// The highest message sequence a record consumed from each sender.
fn consumed(record: &BatchRecord) -> BTreeMap<u16, u64> {
    let mut highest = BTreeMap::new();
    for logged in record.logged() {
        if let Entry::Received { from, sequence } = logged.entry {
            let entry = highest.entry(from.0).or_insert(0);
            *entry = (*entry).max(*sequence);
        }
    }
    highest
}

fn save_snapshot(
    connection: &mut Connection,
    shard: u16,
    sequence: u64,
    snapshot: &[u8],
) -> Result<(), SqliteStoreError> {
    let sequence = to_sql("snapshot sequence", sequence)?;
    let transaction = connection
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(SqliteStoreError::sqlite("begin snapshot transaction"))?;
    transaction
        .execute(
            "INSERT OR REPLACE INTO snapshots (shard, sequence, snapshot) VALUES (?1, ?2, ?3)",
            params![shard, sequence, snapshot],
        )
        .map_err(SqliteStoreError::sqlite("insert snapshot"))?;
    transaction
        .execute(
            "DELETE FROM snapshots WHERE shard = ?1 AND sequence NOT IN
                 (SELECT sequence FROM snapshots WHERE shard = ?1 ORDER BY sequence DESC LIMIT ?2)",
            params![shard, SNAPSHOTS_KEPT_PER_SHARD],
        )
        .map_err(SqliteStoreError::sqlite("delete old snapshots"))?;
    transaction
        .commit()
        .map_err(SqliteStoreError::sqlite("commit snapshot"))
}
