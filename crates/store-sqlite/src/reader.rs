//! A small pool of read-only connections, used off the async threads.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use rusqlite::Connection;
use tokio::sync::Semaphore;

use crate::error::SqliteStoreError;
use crate::schema::open_reader;

/// Reads running at once (each holds one connection).
pub const READERS_MAX: usize = 4;

pub struct ReadPool {
    /// The data directory (see [`open_reader`]).
    data_dir: PathBuf,
    idle: Mutex<Vec<Connection>>,
    permits: Arc<Semaphore>,
}

impl ReadPool {
    pub fn new(data_dir: PathBuf) -> Self {
        Self {
            data_dir,
            idle: Mutex::new(Vec::new()),
            permits: Arc::new(Semaphore::new(READERS_MAX)),
        }
    }

    /// Runs `work` on a pooled connection in tokio's blocking pool.
    pub async fn run<T, F>(
        self: &Arc<Self>,
        operation: &'static str,
        work: F,
    ) -> Result<T, SqliteStoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, SqliteStoreError> + Send + 'static,
    {
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .map_err(|error| SqliteStoreError::BlockingTask {
                operation,
                detail: error.to_string(),
            })?;
        let pool = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let mut connection = pool.take()?;
            let result = work(&mut connection);
            pool.give_back(connection);
            result
        })
        .await
        .map_err(|error| SqliteStoreError::BlockingTask {
            operation,
            detail: error.to_string(),
        })?
    }

    /// Runs a bounded read — one indexed row, or one page of at most
    /// `PAGE_SIZE_MAX` rows by an index — right on the calling task: handing
    /// it to the blocking pool and back costs two thread wake-ups, several
    /// times the query itself (a profile of item reads spent half the
    /// server's time switching threads). Unbounded work (recovery, log and
    /// read-model dumps) uses [`ReadPool::run`].
    pub async fn run_here<T, F>(
        self: &Arc<Self>,
        operation: &'static str,
        work: F,
    ) -> Result<T, SqliteStoreError>
    where
        F: FnOnce(&mut Connection) -> Result<T, SqliteStoreError>,
    {
        let _permit =
            self.permits
                .acquire()
                .await
                .map_err(|error| SqliteStoreError::BlockingTask {
                    operation,
                    detail: error.to_string(),
                })?;
        let mut connection = self.take()?;
        let result = work(&mut connection);
        self.give_back(connection);
        result
    }

    fn take(&self) -> Result<Connection, SqliteStoreError> {
        let pooled = self
            .idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .pop();
        match pooled {
            Some(connection) => Ok(connection),
            None => open_reader(&self.data_dir),
        }
    }

    fn give_back(&self, connection: Connection) {
        let mut idle = self
            .idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if idle.len() < READERS_MAX {
            idle.push(connection);
        }
    }
}
