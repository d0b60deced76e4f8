//! Checkpoints the write-ahead log on a thread of its own.
//!
//! SQLite's automatic checkpoint runs inside the commit that crosses its
//! threshold: the writer copies the log into the database file and syncs it
//! before it answers anyone, a pause of many milliseconds every few hundred
//! commits under load. Here a second connection copies the log in the
//! background (a passive checkpoint: it never blocks the writer or a
//! reader), so commits only append to the log. The writer keeps an automatic
//! checkpoint as a backstop, far above what this thread lets the log reach,
//! so the log stays bounded even if this thread falls behind. Once commits
//! pause, it cuts the log file to nothing if no one is using it.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rusqlite::Connection;

use crate::error::SqliteStoreError;
use crate::metrics as names;
use crate::schema::open_checkpointer;

/// How often the log is checkpointed while commits arrive.
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(100);
/// After this long without a commit, the log file is cut to nothing (a
/// log grown under load otherwise keeps its largest size on disk).
pub const IDLE_BEFORE_TRUNCATE: Duration = Duration::from_secs(1);
/// Log pages at which a database's writer (the log's or the projector)
/// checkpoints by itself: ten times SQLite's default threshold, reached only
/// if this thread falls behind.
pub const WRITER_CHECKPOINT_PAGES: u32 = 10_000;

/// Which database a checkpointer copies the log of (the `database` label
/// of its metrics).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckpointedDatabase {
    /// The log's database (`ledger.sqlite3`).
    Log,
    /// The read models' database (`read-models.sqlite3`).
    ReadModels,
}

impl CheckpointedDatabase {
    fn label(self) -> &'static str {
        match self {
            CheckpointedDatabase::Log => "log",
            CheckpointedDatabase::ReadModels => "read_models",
        }
    }

    /// The thread's name (Linux keeps 15 bytes).
    fn thread_name(self) -> &'static str {
        match self {
            CheckpointedDatabase::Log => "ledger-ckpt-log",
            CheckpointedDatabase::ReadModels => "ledger-ckpt-rm",
        }
    }
}

/// Nudges the checkpointer after commits; when dropped, the checkpointer
/// checkpoints once more and stops.
pub struct Checkpointer {
    nudge: mpsc::SyncSender<()>,
}

impl Checkpointer {
    /// Opens a connection to the database at `path` and starts the thread.
    pub fn spawn(
        path: &Path,
        database: CheckpointedDatabase,
    ) -> Result<Checkpointer, SqliteStoreError> {
        let connection = open_checkpointer(path)?;
        let (nudge, nudged) = mpsc::sync_channel(1);
        let path: PathBuf = path.to_path_buf();
        std::thread::Builder::new()
            .name(database.thread_name().to_string())
            .spawn(move || run(&connection, &nudged, &path, database))
            .map_err(|source| SqliteStoreError::CheckpointerStart { source })?;
        Ok(Checkpointer { nudge })
    }

    /// Tells the thread that the log grew. Never blocks: a nudge already
    /// waiting covers this one.
    pub fn nudge(&self) {
        let _ = self.nudge.try_send(());
    }
}

fn run(
    connection: &Connection,
    nudged: &mpsc::Receiver<()>,
    path: &Path,
    database: CheckpointedDatabase,
) {
    // Whether the log file was cut to nothing since the last commit.
    let mut truncated = false;
    loop {
        match nudged.recv_timeout(IDLE_BEFORE_TRUNCATE) {
            Ok(()) => {
                checkpoint(connection, path, database, Mode::Passive);
                truncated = false;
                // At most one checkpoint per interval: nudges meanwhile wait
                // in the channel (one is enough).
                std::thread::sleep(CHECKPOINT_INTERVAL);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if !truncated {
                    truncated = checkpoint(connection, path, database, Mode::Truncate);
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    checkpoint(connection, path, database, Mode::Passive);
    tracing::debug!("store checkpoint thread stopping: the writer is gone");
}

#[derive(Clone, Copy)]
enum Mode {
    /// Copies what it can without waiting for anyone.
    Passive,
    /// Copies everything and cuts the log file to nothing, if no reader or
    /// writer is using the log at that moment (it does not wait: the
    /// connection's busy timeout is zero); else nothing happens.
    Truncate,
}

/// Runs one checkpoint; answers whether it completed (not stopped by a
/// reader or writer using the log).
fn checkpoint(
    connection: &Connection,
    path: &Path,
    database: CheckpointedDatabase,
    mode: Mode,
) -> bool {
    let label = [("database", database.label())];
    let started = Instant::now();
    let statement = match mode {
        Mode::Passive => "PRAGMA wal_checkpoint(PASSIVE)",
        Mode::Truncate => "PRAGMA wal_checkpoint(TRUNCATE)",
    };
    // (busy, frames in the log, frames copied into the database).
    let outcome: Result<(i64, i64, i64), rusqlite::Error> =
        connection.query_row(statement, [], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?))
        });
    match outcome {
        Ok((busy, log_frames, copied_frames)) => {
            metrics::histogram!(names::CHECKPOINT_DURATION_SECONDS, &label)
                .record(started.elapsed().as_secs_f64());
            metrics::gauge!(names::CHECKPOINT_LOG_FRAMES, &label).set(log_frames as f64);
            metrics::gauge!(names::CHECKPOINT_COPIED_FRAMES, &label).set(copied_frames as f64);
            busy == 0
        }
        Err(error) => {
            // The writer's own checkpoint still bounds the log.
            metrics::counter!(names::CHECKPOINT_FAILURES_TOTAL, &label).increment(1);
            tracing::warn!(%error, path = %path.display(), "write-ahead log checkpoint failed");
            false
        }
    }
}
