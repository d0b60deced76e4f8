//! A deterministic text dump of the read models, for equality checks.

use std::fmt::Write;

use rusqlite::types::ValueRef;
use rusqlite::Connection;

use crate::error::SqliteStoreError;
use crate::schema::READ_MODEL_TABLES;

/// Every read-model table, every column, rows ordered by key; all from one
/// read transaction, so the dump is a consistent cut.
pub fn dump_read_models(connection: &mut Connection) -> Result<String, SqliteStoreError> {
    let transaction = connection
        .transaction()
        .map_err(SqliteStoreError::sqlite("begin read-model dump"))?;
    let mut dump = String::new();
    for (table, key) in READ_MODEL_TABLES {
        let mut statement = transaction
            .prepare(&format!("SELECT * FROM {table} ORDER BY {key}"))
            .map_err(SqliteStoreError::sqlite("prepare read-model dump"))?;
        let columns: Vec<String> = statement
            .column_names()
            .into_iter()
            .map(str::to_string)
            .collect();
        let _ = writeln!(dump, "[{table}]");
        let mut rows = statement
            .query([])
            .map_err(SqliteStoreError::sqlite("dump read model"))?;
        while let Some(row) = rows
            .next()
            .map_err(SqliteStoreError::sqlite("dump read model"))?
        {
            let mut line = String::new();
            for (index, column) in columns.iter().enumerate() {
                let value = row
                    .get_ref(index)
                    .map_err(SqliteStoreError::sqlite("dump read model"))?;
                if index > 0 {
                    line.push(' ');
                }
                let _ = write!(line, "{column}=");
                match value {
                    ValueRef::Null => line.push_str("null"),
                    ValueRef::Integer(integer) => {
                        let _ = write!(line, "{integer}");
                    }
                    ValueRef::Real(real) => {
                        let _ = write!(line, "{real:?}");
                    }
                    ValueRef::Text(text) => {
                        let _ = write!(line, "{:?}", String::from_utf8_lossy(text));
                    }
                    ValueRef::Blob(blob) => {
                        line.push_str("0x");
                        for byte in blob {
                            let _ = write!(line, "{byte:02x}");
                        }
                    }
                }
            }
            dump.push_str(&line);
            dump.push('\n');
        }
    }
    Ok(dump)
}
