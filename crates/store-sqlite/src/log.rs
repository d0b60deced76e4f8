//! Read-only access to a data directory's log and read models for audits
//! (`ledger verify`): one read transaction, so the log and the read models
//! it reads agree with each other, while a server may be running.

use std::collections::BTreeMap;
use std::path::Path;

use rusqlite::params;

use crate::error::{from_sql, SqliteStoreError};
use crate::schema::{open_reader, table_exists, DATABASE_FILE_NAME};

/// What an audit reads.
pub struct LogVisitor<'a> {
    /// Called with `(shard, last sequence, record bytes)` for every record,
    /// each shard's in sequence order.
    pub record: &'a mut dyn FnMut(u16, u64, &[u8]),
}

/// The read models' balances (wallet, pending) per user and the projection
/// checkpoint (the last sequence projected) per shard.
#[derive(Debug, Default)]
pub struct ReadModelTotals {
    pub balances: BTreeMap<String, (i64, i64)>,
    pub checkpoints: BTreeMap<u16, u64>,
}

/// Visits every record of the data directory `data_dir`, then reads the
/// read models' balances, all in one read transaction. Answers how many
/// records were visited and the read-model totals.
pub fn read_log(
    data_dir: &Path,
    visitor: LogVisitor<'_>,
) -> Result<(u64, ReadModelTotals), SqliteStoreError> {
    let path = data_dir.join(DATABASE_FILE_NAME);
    if !path.exists() {
        return Err(SqliteStoreError::NoDatabase { path });
    }
    let mut connection = open_reader(data_dir)?;
    let transaction = connection
        .transaction()
        .map_err(SqliteStoreError::sqlite("begin audit read"))?;
    // The read models first: each database's snapshot is taken at its first
    // read, and the projector applies only what the log committed, so a log
    // read after them holds everything they cover.
    let totals = read_model_totals(&transaction)?;
    // A directory no server of format 2 has opened yet still has `events`
    // (one format 1 envelope per row, which reads as a record).
    let query = if table_exists(&transaction, "records")? {
        "SELECT shard, last_sequence, record FROM records ORDER BY shard, last_sequence"
    } else {
        "SELECT shard, sequence, envelope FROM events ORDER BY shard, sequence"
    };
    let mut visited = 0;
    {
        let mut statement = transaction
            .prepare(query)
            .map_err(SqliteStoreError::sqlite("prepare log read"))?;
        let mut rows = statement
            .query([])
            .map_err(SqliteStoreError::sqlite("read log"))?;
        while let Some(row) = rows.next().map_err(SqliteStoreError::sqlite("read log"))? {
            let shard: u16 = row
                .get(0)
                .map_err(SqliteStoreError::sqlite("read record shard"))?;
            let last_sequence: i64 = row
                .get(1)
                .map_err(SqliteStoreError::sqlite("read record sequence"))?;
            let bytes = row
                .get_ref(2)
                .and_then(|value| value.as_blob().map_err(Into::into))
                .map_err(SqliteStoreError::sqlite("read record bytes"))?;
            (visitor.record)(shard, from_sql("record sequence", last_sequence)?, bytes);
            visited += 1;
        }
    }
    Ok((visited, totals))
}

/// The read models' balances and checkpoints.
fn read_model_totals(
    transaction: &rusqlite::Transaction<'_>,
) -> Result<ReadModelTotals, SqliteStoreError> {
    let mut totals = ReadModelTotals::default();
    let mut balances = transaction
        .prepare("SELECT user_id, balance, pending FROM balances")
        .map_err(SqliteStoreError::sqlite("prepare balance read"))?;
    let rows = balances
        .query_map([], |row| {
            Ok((row.get::<_, String>(0)?, row.get(1)?, row.get(2)?))
        })
        .map_err(SqliteStoreError::sqlite("read balances"))?;
    for row in rows {
        let (user, balance, pending) = row.map_err(SqliteStoreError::sqlite("read balance"))?;
        totals.balances.insert(user, (balance, pending));
    }
    totals.checkpoints = crate::projector::projection_checkpoints(transaction)?;
    Ok(totals)
}

/// Visits the records committed after `after` (a `records.position`; 0
/// for the start), in commit order (which every cause precedes its
/// effects in), at most `limit`, as `(position, record bytes)`; answers
/// how many were visited. A directory no format 2 server opened yet is
/// read from its format 1 `events` (same positions). Read-only, while a
/// server may be running: follow a growing log by calling again with the
/// last position visited.
pub fn read_records_after(
    data_dir: &Path,
    after: i64,
    limit: usize,
    visit: &mut dyn FnMut(i64, &[u8]),
) -> Result<usize, SqliteStoreError> {
    let path = data_dir.join(DATABASE_FILE_NAME);
    if !path.exists() {
        return Err(SqliteStoreError::NoDatabase { path });
    }
    let connection = open_reader(data_dir)?;
    let query = if table_exists(&connection, "records")? {
        "SELECT position, record FROM records WHERE position > ?1 ORDER BY position LIMIT ?2"
    } else {
        "SELECT position, envelope FROM events WHERE position > ?1 ORDER BY position LIMIT ?2"
    };
    let mut statement = connection
        .prepare(query)
        .map_err(SqliteStoreError::sqlite("prepare record read"))?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let mut rows = statement
        .query(params![after, limit])
        .map_err(SqliteStoreError::sqlite("read records"))?;
    let mut visited = 0;
    while let Some(row) = rows
        .next()
        .map_err(SqliteStoreError::sqlite("read records"))?
    {
        let position: i64 = row
            .get(0)
            .map_err(SqliteStoreError::sqlite("read record position"))?;
        let bytes = row
            .get_ref(1)
            .and_then(|value| value.as_blob().map_err(Into::into))
            .map_err(SqliteStoreError::sqlite("read record bytes"))?;
        visit(position, bytes);
        visited += 1;
    }
    Ok(visited)
}
