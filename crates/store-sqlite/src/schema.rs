//! The database layout and connection settings.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use crate::error::SqliteStoreError;

/// `transactions.event_position` is `record position << ENTRY_INDEX_BITS |
/// entry index`: the log's order, unique per entry.
pub const ENTRY_INDEX_BITS: u32 = 16;
const _: () = assert!(ledger_core::codec::RECORD_ENTRIES_MAX < 1 << ENTRY_INDEX_BITS);

/// File name of the log's database (records, outbox, snapshots) inside the
/// data directory.
pub const DATABASE_FILE_NAME: &str = "ledger.sqlite3";
/// File name of the read models' database inside the data directory. The
/// read models are derived from the log, so they have a file (and a writer
/// thread) of their own: projecting never holds up an append.
pub const READ_MODELS_FILE_NAME: &str = "read-models.sqlite3";
/// The name the log's database is attached under on read-model connections.
pub const LOG_SCHEMA_NAME: &str = "log";

/// How long a connection waits for a lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// The page cache of the log attached to a read-model connection, in KiB
/// (SQLite's default is 2,000 KiB per database of each connection).
const ATTACHED_LOG_CACHE_KIBIBYTES: i64 = 256;
/// The page cache of the log's writer, in KiB. It appends at the right
/// edge of the records' B-tree and keeps a small outbox; it reads little
/// else. At SQLite's default (2,000 KiB) a heap profile put the writer's
/// pages at 9.9 MB after 60,000 catalogue requests; at 512 KiB, 4.8 MB
/// (BENCHMARKS.md, "Issue 8, ninth session").
const LOG_WRITER_CACHE_KIBIBYTES: i64 = 512;
/// Bytes a write-ahead log file keeps once it restarts (SQLite leaves it at
/// its largest size otherwise): a log grown while readers held it back is
/// cut down when the writer starts it over.
const WAL_SIZE_LIMIT_BYTES: i64 = 16 * 1024 * 1024;
/// Prepared statements a connection keeps: more than the writer (the log,
/// the outbox, snapshots and every read-model change) or a reader (every
/// query) uses, so none is parsed again. rusqlite keeps 16 by default, fewer
/// than a projection batch cycles through.
pub const STATEMENT_CACHE_CAPACITY: usize = 256;

/// The log's tables, idempotent. `records.position` is the global commit
/// order. The `messages` outbox holds the messages not yet consumed (a
/// record that consumes messages deletes them in the same transaction).
const LOG_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS records (
    -- One row per shard record (a step's entries under one checksum).
    -- Records are never deleted, so the rowid alone grows with commit order
    -- (no AUTOINCREMENT bookkeeping per insert).
    position INTEGER PRIMARY KEY,
    shard INTEGER NOT NULL,
    last_sequence INTEGER NOT NULL,
    hash BLOB NOT NULL,
    record BLOB NOT NULL,
    UNIQUE (shard, last_sequence)
);
CREATE TABLE IF NOT EXISTS messages (
    sender INTEGER NOT NULL,
    receiver INTEGER NOT NULL,
    sequence INTEGER NOT NULL,
    envelope BLOB NOT NULL,
    PRIMARY KEY (receiver, sender, sequence)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS snapshots (
    shard INTEGER NOT NULL,
    sequence INTEGER NOT NULL,
    snapshot BLOB NOT NULL,
    PRIMARY KEY (shard, sequence)
);
";

/// The read models' tables, idempotent, in their own file.
const READ_MODEL_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS balances (
    user_id TEXT PRIMARY KEY,
    balance INTEGER NOT NULL,
    pending INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS transactions (
    user_id TEXT NOT NULL,
    event_position INTEGER NOT NULL,
    account TEXT NOT NULL,
    position TEXT NOT NULL,
    kind TEXT NOT NULL,
    amount INTEGER NOT NULL,
    reference TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    PRIMARY KEY (user_id, event_position, account)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS inventory (
    user_id TEXT NOT NULL,
    item_id TEXT NOT NULL,
    serial INTEGER NOT NULL,
    purchase_id TEXT NOT NULL,
    acquired_at_ms INTEGER NOT NULL,
    PRIMARY KEY (user_id, item_id, serial)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS items (
    item_id TEXT PRIMARY KEY,
    creator_id TEXT NOT NULL,
    name TEXT NOT NULL,
    price INTEGER NOT NULL,
    on_sale INTEGER NOT NULL,
    supply INTEGER,
    max_per_user INTEGER,
    starts_at_ms INTEGER,
    ends_at_ms INTEGER,
    resellable INTEGER NOT NULL,
    kind TEXT NOT NULL DEFAULT 'accessory',
    -- JSON object of the item's prices per region, e.g. {'BR': 40} as JSON; '{}' for none.
    regional_prices TEXT NOT NULL DEFAULT '{}',
    sold INTEGER NOT NULL DEFAULT 0,
    sales_count INTEGER NOT NULL DEFAULT 0,
    recent_average_price INTEGER
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS owners (
    item_id TEXT NOT NULL,
    serial INTEGER NOT NULL,
    user_id TEXT NOT NULL,
    PRIMARY KEY (item_id, serial)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS listings (
    listing_id TEXT PRIMARY KEY,
    item_id TEXT NOT NULL,
    serial INTEGER NOT NULL,
    seller_id TEXT NOT NULL,
    price INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS listings_by_price ON listings (item_id, price, listing_id);
CREATE INDEX IF NOT EXISTS listings_by_serial ON listings (item_id, serial);
CREATE TABLE IF NOT EXISTS bundles (
    bundle_id TEXT PRIMARY KEY,
    creator_id TEXT NOT NULL,
    name TEXT NOT NULL,
    item_ids TEXT NOT NULL,
    price INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS earnings (
    creator_id TEXT PRIMARY KEY,
    pending INTEGER NOT NULL,
    released INTEGER NOT NULL,
    lifetime INTEGER NOT NULL,
    sales_count INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS purchase_index (
    -- Where a purchase's story is in the log: the `event_position`s (as in
    -- `transactions`) of the events that moved it on, comma-separated in
    -- commit order. The steps themselves are read from those records when
    -- asked for: a support read is rare, a purchase is not.
    purchase_id TEXT PRIMARY KEY,
    event_positions TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS creator_sales (
    -- One row per sale settled into a creator's escrow (one per purchase).
    purchase_id TEXT PRIMARY KEY,
    creator_id TEXT NOT NULL,
    sold_at_ms INTEGER NOT NULL,
    position TEXT NOT NULL,
    resale INTEGER NOT NULL,
    cleared INTEGER NOT NULL,
    creator_share INTEGER NOT NULL,
    platform_fee INTEGER NOT NULL,
    policy_version INTEGER NOT NULL,
    release_at_ms INTEGER NOT NULL,
    frozen INTEGER NOT NULL,
    released_at_ms INTEGER,
    refunded_at_ms INTEGER
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS creator_sales_by_time ON creator_sales (creator_id, sold_at_ms, purchase_id);
CREATE TABLE IF NOT EXISTS item_days (
    -- An item's sales history by UTC day (day = at_ms / 86,400,000): the
    -- day's sales (gross), the refunds of those sales, the recent average
    -- price after the day's last sale (commit order; NULL without a sale)
    -- and the lowest open ask after the day's last change of the listing
    -- book (book_changed = 0: the book did not change that day; NULL: no
    -- listing open). One row per item and day with activity.
    item_id TEXT NOT NULL,
    day INTEGER NOT NULL,
    primary_count INTEGER NOT NULL DEFAULT 0,
    primary_revenue INTEGER NOT NULL DEFAULT 0,
    resale_count INTEGER NOT NULL DEFAULT 0,
    resale_revenue INTEGER NOT NULL DEFAULT 0,
    refunded_count INTEGER NOT NULL DEFAULT 0,
    refunded_revenue INTEGER NOT NULL DEFAULT 0,
    recent_average_price INTEGER,
    book_changed INTEGER NOT NULL DEFAULT 0,
    lowest_resale_ask INTEGER,
    PRIMARY KEY (item_id, day)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS item_sale_days (
    -- The item, day and price of each primary item sale, for the refund
    -- that restates it.
    purchase_id TEXT PRIMARY KEY,
    item_id TEXT NOT NULL,
    day INTEGER NOT NULL,
    price INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS item_price_tests (
    -- The tests an item's shard priced the item by; the current one is the
    -- latest started (by its log position) that is not closed.
    item_id TEXT NOT NULL,
    test_id TEXT NOT NULL,
    arms TEXT NOT NULL,
    ends_at_ms INTEGER NOT NULL,
    started INTEGER NOT NULL,
    closed INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (item_id, test_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS takedowns (
    item_id TEXT PRIMARY KEY,
    listings_ended INTEGER NOT NULL,
    shard_count INTEGER NOT NULL,
    shards_reported INTEGER NOT NULL DEFAULT 0,
    refunded INTEGER NOT NULL DEFAULT 0,
    refunded_amount INTEGER NOT NULL DEFAULT 0,
    already_refunded INTEGER NOT NULL DEFAULT 0,
    left_count INTEGER NOT NULL DEFAULT 0,
    started_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS takedown_sales (
    -- What a takedown did to each purchase of its item.
    item_id TEXT NOT NULL,
    outcome TEXT NOT NULL,
    purchase_id TEXT NOT NULL,
    amount INTEGER,
    reason TEXT,
    PRIMARY KEY (item_id, outcome, purchase_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS price_tests (
    test_id TEXT PRIMARY KEY,
    item_id TEXT NOT NULL,
    creator_id TEXT,
    ends_at_ms INTEGER NOT NULL,
    apply_winner INTEGER NOT NULL,
    status TEXT NOT NULL,
    winner INTEGER,
    applied_price INTEGER
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS price_test_arms (
    test_id TEXT NOT NULL,
    arm INTEGER NOT NULL,
    price INTEGER NOT NULL,
    exposures INTEGER NOT NULL DEFAULT 0,
    purchases INTEGER NOT NULL DEFAULT 0,
    revenue INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (test_id, arm)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS price_floors (
    -- Every floor version, from the floors' home shard's price_floor_set.
    kind TEXT NOT NULL,
    version INTEGER NOT NULL,
    price INTEGER NOT NULL,
    effective_from_ms INTEGER NOT NULL,
    PRIMARY KEY (kind, version)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS projection_checkpoint (
    shard INTEGER PRIMARY KEY,
    sequence INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS projection_deliveries (
    sender INTEGER NOT NULL,
    receiver INTEGER NOT NULL,
    sequence INTEGER NOT NULL,
    PRIMARY KEY (sender, receiver)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS projection_position (
    id INTEGER PRIMARY KEY CHECK (id = 0),
    position INTEGER NOT NULL
);
INSERT OR IGNORE INTO projection_position (id, position) VALUES (0, 0);
";

/// Read-model tables with the columns that order their rows (their keys),
/// as dumped and truncated. The projection writes exactly these tables.
pub const READ_MODEL_TABLES: &[(&str, &str)] = &[
    ("balances", "user_id"),
    ("transactions", "user_id, event_position, account"),
    ("inventory", "user_id, item_id, serial"),
    ("items", "item_id"),
    ("owners", "item_id, serial"),
    ("listings", "listing_id"),
    ("bundles", "bundle_id"),
    ("earnings", "creator_id"),
    ("purchase_index", "purchase_id"),
    ("creator_sales", "purchase_id"),
    ("item_days", "item_id, day"),
    ("item_sale_days", "purchase_id"),
    ("price_floors", "kind, version"),
    ("item_price_tests", "item_id, test_id"),
    ("price_tests", "test_id"),
    ("price_test_arms", "test_id, arm"),
    ("projection_checkpoint", "shard"),
    ("projection_deliveries", "sender, receiver"),
    ("projection_position", "id"),
];

/// Opens the log's single writer connection, creating the file and schema
/// if needed.
pub fn open_writer(data_dir: &Path) -> Result<Connection, SqliteStoreError> {
    std::fs::create_dir_all(data_dir).map_err(|source| SqliteStoreError::CreateDirectory {
        path: data_dir.to_path_buf(),
        source,
    })?;
    let mut connection = Connection::open(data_dir.join(DATABASE_FILE_NAME))
        .map_err(SqliteStoreError::sqlite("open writer connection"))?;
    // FULL syncs the WAL on every commit, so an acknowledged append
    // survives power loss.
    configure_writer(&connection, "FULL")?;
    connection
        .pragma_update(
            None,
            "cache_size",
            LOG_WRITER_CACHE_KIBIBYTES.saturating_neg(),
        )
        .map_err(SqliteStoreError::sqlite("size the log writer's cache"))?;
    connection
        .execute_batch(LOG_SCHEMA)
        .map_err(SqliteStoreError::sqlite("create schema"))?;
    migrate_event_rows(&mut connection)?;
    drop_read_models_beside_the_log(&mut connection)?;
    Ok(connection)
}

/// Opens the projector's connection: the read models' database (created if
/// needed) with the log's attached read-only as [`LOG_SCHEMA_NAME`]. Open
/// the log with [`open_writer`] first.
///
/// Its commits are not synced by themselves (`synchronous = NORMAL`): the
/// read models are derived from the log and carry their position in the
/// same transaction, so a power cut can only lose the last projection
/// batches, which are projected again. (A crash of the process loses
/// nothing: the commit is in the operating system's hands.)
pub fn open_projector(data_dir: &Path) -> Result<Connection, SqliteStoreError> {
    let mut connection = Connection::open_with_flags(
        data_dir.join(READ_MODELS_FILE_NAME),
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI,
    )
    .map_err(SqliteStoreError::sqlite("open projector connection"))?;
    configure_writer(&connection, "NORMAL")?;
    // A read-model database from before one of its tables existed projects
    // the whole log again, so the new model covers the old history. (Looked
    // for before the log is attached: only this file counts.)
    let mut missing_tables = Vec::new();
    let positioned = table_exists(&connection, "projection_position")?;
    for (table, _) in READ_MODEL_TABLES {
        if !table_exists(&connection, table)? {
            missing_tables.push(*table);
        }
    }
    connection
        .execute_batch(READ_MODEL_SCHEMA)
        .map_err(SqliteStoreError::sqlite("create read-model schema"))?;
    if positioned && !missing_tables.is_empty() {
        crate::projector::reset_read_models(&mut connection)?;
        tracing::info!(
            tables = %missing_tables.join(", "),
            "the read models are projected again from the log for a new read model"
        );
    }
    attach_log(&connection, &data_dir.join(DATABASE_FILE_NAME))?;
    Ok(connection)
}

/// Settings shared by the two writers (the log's and the projector): WAL,
/// so readers run beside the writer, with commits synced as `synchronous`
/// says (`FULL` or `NORMAL`); a checkpoint thread copies the log, the
/// writer itself only if that thread falls behind (see `checkpoint`).
fn configure_writer(connection: &Connection, synchronous: &str) -> Result<(), SqliteStoreError> {
    connection
        .busy_timeout(BUSY_TIMEOUT)
        .map_err(SqliteStoreError::sqlite("set busy timeout"))?;
    connection.set_prepared_statement_cache_capacity(STATEMENT_CACHE_CAPACITY);
    enable_write_ahead_log(connection)?;
    connection
        .pragma_update(None, "synchronous", synchronous)
        .map_err(SqliteStoreError::sqlite("set the commit sync level"))?;
    connection
        .execute_batch("PRAGMA foreign_keys = OFF;")
        .map_err(SqliteStoreError::sqlite("turn foreign keys off"))?;
    connection
        .pragma_update(
            None,
            "wal_autocheckpoint",
            crate::checkpoint::WRITER_CHECKPOINT_PAGES,
        )
        .map_err(SqliteStoreError::sqlite(
            "set the writer's checkpoint threshold",
        ))?;
    Ok(())
}

fn enable_write_ahead_log(connection: &Connection) -> Result<(), SqliteStoreError> {
    let journal_mode: String = connection
        .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
        .map_err(SqliteStoreError::sqlite("enable write-ahead logging"))?;
    if !journal_mode.eq_ignore_ascii_case("wal") {
        return Err(SqliteStoreError::WalUnavailable { journal_mode });
    }
    let _limit: i64 = connection
        .query_row(
            &format!("PRAGMA journal_size_limit = {WAL_SIZE_LIMIT_BYTES}"),
            [],
            |row| row.get(0),
        )
        .map_err(SqliteStoreError::sqlite("limit the write-ahead log's size"))?;
    Ok(())
}

/// Attaches the log's database read-only under [`LOG_SCHEMA_NAME`]. Table
/// names are unique across the two files, so queries name tables alone.
/// Its page cache is small: a read-model connection reads the log only for
/// a purchase's story (a few records) and the projector's batch (records
/// just written, read once).
fn attach_log(connection: &Connection, log_path: &Path) -> Result<(), SqliteStoreError> {
    connection
        .execute(
            &format!("ATTACH DATABASE ?1 AS {LOG_SCHEMA_NAME}"),
            [read_only_uri(log_path)],
        )
        .map_err(SqliteStoreError::sqlite("attach the log"))?;
    connection
        .pragma_update(
            Some(rusqlite::DatabaseName::Attached(LOG_SCHEMA_NAME)),
            "cache_size",
            ATTACHED_LOG_CACHE_KIBIBYTES.saturating_neg(),
        )
        .map_err(SqliteStoreError::sqlite("size the attached log's cache"))?;
    Ok(())
}

/// A `file:` URI opening `path` read-only (percent-encoding what a URI
/// path may not hold).
fn read_only_uri(path: &Path) -> String {
    let mut uri = String::from("file:");
    for byte in path.to_string_lossy().bytes() {
        if byte.is_ascii_alphanumeric() || b"/-_.~".contains(&byte) {
            uri.push(char::from(byte));
        } else {
            uri.push_str(&format!("%{byte:02X}"));
        }
    }
    uri.push_str("?mode=ro");
    uri
}

/// Data directories from before the read models had a file of their own
/// kept them in the log's database: those tables go (with the purchase
/// steps table older still), and the read models' database, new then, is
/// projected from the whole log.
fn drop_read_models_beside_the_log(connection: &mut Connection) -> Result<(), SqliteStoreError> {
    let transaction = connection
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(SqliteStoreError::sqlite("begin dropping old read models"))?;
    let mut dropped = 0;
    let old_tables = READ_MODEL_TABLES
        .iter()
        .map(|(table, _)| *table)
        .chain(["purchase_steps"]);
    for table in old_tables {
        if table_exists(&transaction, table)? {
            transaction
                .execute_batch(&format!("DROP TABLE {table};"))
                .map_err(SqliteStoreError::sqlite("drop an old read-model table"))?;
            dropped += 1;
        }
    }
    transaction
        .commit()
        .map_err(SqliteStoreError::sqlite("commit dropping old read models"))?;
    if dropped > 0 {
        tracing::info!(
            dropped,
            "the read models moved out of the log's database; they are projected again"
        );
    }
    Ok(())
}

/// Moves a format 1 data directory's `events` rows (one envelope each) into
/// `records`, in one transaction: an envelope reads as a record of one entry
/// with the same hash, so the chain and positions stay valid. (Its read
/// models are projected again, in their own file.)
fn migrate_event_rows(connection: &mut Connection) -> Result<(), SqliteStoreError> {
    let transaction = connection
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(SqliteStoreError::sqlite("begin event migration"))?;
    if !table_exists(&transaction, "events")? {
        return Ok(());
    }
    let moved = transaction
        .execute(
            "INSERT INTO records (position, shard, last_sequence, hash, record)
             SELECT position, shard, sequence, hash, envelope FROM events ORDER BY position",
            [],
        )
        .map_err(SqliteStoreError::sqlite("move format 1 events"))?;
    transaction
        .execute_batch("DROP TABLE events;")
        .map_err(SqliteStoreError::sqlite("drop format 1 events"))?;
    transaction
        .commit()
        .map_err(SqliteStoreError::sqlite("commit event migration"))?;
    tracing::info!(moved, "moved format 1 events into records");
    Ok(())
}

/// Whether the connection's databases (the main one or an attached one)
/// have a table named `name`.
pub(crate) fn table_exists(connection: &Connection, name: &str) -> Result<bool, SqliteStoreError> {
    connection
        .query_row(
            "SELECT count(*) > 0 FROM pragma_table_list WHERE type = 'table' AND name = ?1",
            [name],
            |row| row.get(0),
        )
        .map_err(SqliteStoreError::sqlite("look for a table"))
}

/// Opens the checkpointer's connection (see `checkpoint`). It syncs as the
/// writer does: a checkpoint must reach the disk before the log restarts.
pub fn open_checkpointer(path: &Path) -> Result<Connection, SqliteStoreError> {
    let connection = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(SqliteStoreError::sqlite("open checkpoint connection"))?;
    // Never waits: a checkpoint that would wait for a reader or the writer
    // gives up and comes again later.
    connection
        .busy_timeout(Duration::ZERO)
        .map_err(SqliteStoreError::sqlite("set busy timeout"))?;
    connection
        .execute_batch("PRAGMA synchronous = FULL;")
        .map_err(SqliteStoreError::sqlite("set checkpoint durability"))?;
    Ok(connection)
}

/// Opens a read-only connection on the data directory `data_dir`: the read
/// models' database with the log's attached as [`LOG_SCHEMA_NAME`] (readers
/// never block a writer under WAL). A directory no server of this version
/// has opened yet has no read models' file: then the log's database alone,
/// whose tables held the read models then.
pub fn open_reader(data_dir: &Path) -> Result<Connection, SqliteStoreError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
        | OpenFlags::SQLITE_OPEN_NO_MUTEX
        | OpenFlags::SQLITE_OPEN_URI;
    let read_models = data_dir.join(READ_MODELS_FILE_NAME);
    let log = data_dir.join(DATABASE_FILE_NAME);
    let connection = if read_models.exists() {
        let connection = Connection::open_with_flags(&read_models, flags)
            .map_err(SqliteStoreError::sqlite("open reader connection"))?;
        attach_log(&connection, &log)?;
        connection
    } else {
        Connection::open_with_flags(&log, flags)
            .map_err(SqliteStoreError::sqlite("open reader connection"))?
    };
    connection
        .busy_timeout(BUSY_TIMEOUT)
        .map_err(SqliteStoreError::sqlite("set busy timeout"))?;
    connection.set_prepared_statement_cache_capacity(STATEMENT_CACHE_CAPACITY);
    Ok(connection)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The log's commits sync (an acknowledged append survives power
    /// loss); the read models' do not (they are projected again).
    #[test]
    fn the_log_syncs_every_commit_and_the_read_models_do_not() {
        let data_dir = std::env::temp_dir().join(format!(
            "ledger-schema-sync-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&data_dir);
        let level = |connection: &Connection| -> i64 {
            connection
                .query_row("PRAGMA synchronous", [], |row| row.get(0))
                .expect("the sync level reads")
        };
        let log = open_writer(&data_dir).expect("the log opens");
        let read_models = open_projector(&data_dir).expect("the read models open");
        // SQLite's levels: 1 NORMAL, 2 FULL.
        assert_eq!(level(&log), 2, "the log commits with synchronous=FULL");
        assert_eq!(level(&read_models), 1, "the read models with NORMAL");
        let cache_kibibytes: i64 = log
            .query_row("PRAGMA cache_size", [], |row| row.get(0))
            .expect("the cache size reads");
        assert_eq!(
            cache_kibibytes, -LOG_WRITER_CACHE_KIBIBYTES,
            "the log's writer keeps a small cache"
        );
        for connection in [&log, &read_models] {
            let mode: String = connection
                .query_row("PRAGMA journal_mode", [], |row| row.get(0))
                .expect("the journal mode reads");
            assert_eq!(mode, "wal");
        }
        drop((log, read_models));
        std::fs::remove_dir_all(&data_dir).expect("the directory is removed");
    }
}
