//! The handle: connection, schema, prepared statements and the request
//! helpers shared by the writer and the reader.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use scylla::client::pager::TypedRowStream;
use scylla::client::session::Session;
use scylla::deserialize::row::DeserializeRow;
use scylla::serialize::row::SerializeRow;
use scylla::statement::prepared::PreparedStatement;
use scylla::statement::Consistency;

use crate::error::CqlReadModelError;
use crate::schema::schema_statements;
use crate::statements::Statements;

/// Writes in flight at once while a chunk is applied (the default of
/// [`ReadModelSettings`]).
pub const WRITE_CONCURRENCY: usize = 32;

/// How to reach and lay out the read models.
#[derive(Debug, Clone)]
pub struct ReadModelSettings {
    /// The `replication` map of `CREATE KEYSPACE IF NOT EXISTS` (CQL map
    /// literal). The default, SimpleStrategy with one replica, suits a single
    /// test node only; production creates its keyspace beforehand with
    /// NetworkTopologyStrategy (see `schemas/cql/read_models.cql`).
    pub replication: String,
    /// Consistency of every read and write (QUORUM: a quorum write and a
    /// quorum read share a replica).
    pub consistency: Consistency,
    /// Client-side bound of one request.
    pub request_timeout: Duration,
    /// Bound of establishing a connection.
    pub connection_timeout: Duration,
    /// Writes in flight at once while a chunk is applied.
    pub write_concurrency: usize,
    /// The ledger's shard count, when known (the projector knows it): `apply`
    /// then asserts that every event writing identity rows comes from the
    /// shard the single-writer proof says (see [`crate::ownership`]).
    pub shard_count: Option<u16>,
}

impl Default for ReadModelSettings {
    fn default() -> Self {
        Self {
            replication: "{'class': 'SimpleStrategy', 'replication_factor': 1}".to_string(),
            consistency: Consistency::Quorum,
            request_timeout: Duration::from_secs(10),
            connection_timeout: Duration::from_secs(5),
            write_concurrency: WRITE_CONCURRENCY,
            shard_count: None,
        }
    }
}

/// The read models in CQL: the projector's writer ([`CqlReadModels::apply`])
/// and the query API's reader (its [`projectors::ReadModels`] impl).
/// Create it with [`CqlReadModels::connect`].
pub struct CqlReadModels {
    pub(crate) session: Arc<Session>,
    pub(crate) keyspace: String,
    pub(crate) settings: ReadModelSettings,
    pub(crate) statements: Statements,
    /// The last sequence seen of each shard's log in the engines' store
    /// (see `beyond_head`): a log only grows, so a position at or below it
    /// needs no new read.
    pub(crate) log_heads: std::sync::Mutex<std::collections::BTreeMap<u16, u64>>,
}

impl std::fmt::Debug for CqlReadModels {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("CqlReadModels")
            .field("keyspace", &self.keyspace)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl CqlReadModels {
    /// Connects to the cluster, creates `keyspace` (with the settings'
    /// replication) and the tables of `schemas/cql/read_models.cql` if they
    /// are missing, and prepares every statement. Idempotent.
    pub async fn connect(
        contact_points: &[String],
        keyspace: &str,
        settings: ReadModelSettings,
    ) -> Result<Arc<CqlReadModels>, CqlReadModelError> {
        if settings.write_concurrency == 0 {
            return Err(CqlReadModelError::InvalidSetting {
                what: "write concurrency",
                value: 0,
            });
        }
        if settings.shard_count == Some(0) {
            return Err(CqlReadModelError::InvalidSetting {
                what: "shard count",
                value: 0,
            });
        }
        let session = store_cql::open_keyspace(
            contact_points,
            keyspace,
            &store_cql::KeyspaceOptions {
                replication: &settings.replication,
                consistency: settings.consistency,
                request_timeout: settings.request_timeout,
                connection_timeout: settings.connection_timeout,
            },
            schema_statements(),
        )
        .await?;
        add_missing_columns(&session, keyspace).await?;
        let statements = Statements::prepare(&session, settings.consistency).await?;
        Ok(Arc::new(CqlReadModels {
            session: Arc::new(session),
            keyspace: keyspace.to_string(),
            settings,
            statements,
            log_heads: std::sync::Mutex::default(),
        }))
    }

    /// The driver session (for operators and tests: same cluster, same keyspace).
    pub fn session(&self) -> &Arc<Session> {
        &self.session
    }

    /// The keyspace holding the tables.
    pub fn keyspace(&self) -> &str {
        &self.keyspace
    }

    /// The settings the read models were connected with.
    pub fn settings(&self) -> &ReadModelSettings {
        &self.settings
    }

    pub(crate) async fn execute(
        &self,
        statement: &PreparedStatement,
        values: impl SerializeRow,
        operation: &'static str,
    ) -> Result<(), CqlReadModelError> {
        self.session
            .execute_unpaged(statement, values)
            .await
            .map(|_| ())
            .map_err(|source| CqlReadModelError::Execute { operation, source })
    }

    /// The rows of a read, paged lazily: a reader takes only what it needs.
    pub(crate) async fn stream<Row>(
        &self,
        statement: &PreparedStatement,
        values: impl SerializeRow,
        operation: &'static str,
    ) -> Result<TypedRowStream<Row>, CqlReadModelError>
    where
        Row: for<'frame, 'metadata> DeserializeRow<'frame, 'metadata>,
    {
        self.session
            .execute_iter(statement.clone(), values)
            .await
            .map_err(|source| CqlReadModelError::Page { operation, source })?
            .rows_stream::<Row>()
            .map_err(|source| CqlReadModelError::RowTypes { operation, source })
    }

    /// Every row of a read (bounded by the statement's LIMIT or key).
    pub(crate) async fn select<Row>(
        &self,
        statement: &PreparedStatement,
        values: impl SerializeRow,
        operation: &'static str,
    ) -> Result<Vec<Row>, CqlReadModelError>
    where
        Row: for<'frame, 'metadata> DeserializeRow<'frame, 'metadata>,
    {
        let mut rows = self.stream::<Row>(statement, values, operation).await?;
        let mut collected = Vec::new();
        while let Some(row) = rows.next().await {
            collected.push(row.map_err(|source| CqlReadModelError::NextRow { operation, source })?);
        }
        Ok(collected)
    }

    /// The first row of a read, if any.
    pub(crate) async fn select_first<Row>(
        &self,
        statement: &PreparedStatement,
        values: impl SerializeRow,
        operation: &'static str,
    ) -> Result<Option<Row>, CqlReadModelError>
    where
        Row: for<'frame, 'metadata> DeserializeRow<'frame, 'metadata>,
    {
        let mut rows = self.stream::<Row>(statement, values, operation).await?;
        match rows.next().await {
            None => Ok(None),
            Some(row) => row
                .map(Some)
                .map_err(|source| CqlReadModelError::NextRow { operation, source }),
        }
    }
}

/// The next row of a lazily paged read.
pub(crate) async fn next_row<Row>(
    rows: &mut TypedRowStream<Row>,
    operation: &'static str,
) -> Result<Option<Row>, CqlReadModelError>
where
    Row: for<'frame, 'metadata> DeserializeRow<'frame, 'metadata>,
{
    rows.next()
        .await
        .transpose()
        .map_err(|source| CqlReadModelError::NextRow { operation, source })
}

/// Adds the columns of [`crate::schema::ADDED_COLUMNS`] that a keyspace
/// made before them lacks (read from `system_schema.columns`, which
/// ScyllaDB and Cassandra both have).
async fn add_missing_columns(session: &Session, keyspace: &str) -> Result<(), CqlReadModelError> {
    let mut added = false;
    for (table, column, cql_type) in crate::schema::ADDED_COLUMNS {
        let rows = session
            .query_unpaged(
                "SELECT column_name FROM system_schema.columns \
                 WHERE keyspace_name = ? AND table_name = ? AND column_name = ?",
                (keyspace, *table, *column),
            )
            .await
            .map_err(|source| CqlReadModelError::Execute {
                operation: "column lookup",
                source,
            })?;
        let present = rows
            .into_rows_result()
            .map(|rows| rows.rows_num() > 0)
            .unwrap_or(false);
        if present {
            continue;
        }
        session
            .query_unpaged(format!("ALTER TABLE {table} ADD {column} {cql_type}"), &[])
            .await
            .map_err(|source| CqlReadModelError::Execute {
                operation: "column addition",
                source,
            })?;
        tracing::info!(table, column, "added a read-model column");
        added = true;
    }
    if added {
        session
            .await_schema_agreement()
            .await
            .map_err(|source| CqlReadModelError::Execute {
                operation: "schema agreement after a column addition",
                source: scylla::errors::ExecutionError::SchemaAgreementError(source),
            })?;
    }
    Ok(())
}
