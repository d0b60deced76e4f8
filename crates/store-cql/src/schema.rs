//! The CQL data model: `schemas/cql/ledger.cql`, applied verbatim.

/// The tables, exactly as documented in `schemas/cql/ledger.cql`.
pub const SCHEMA: &str = include_str!("../../../schemas/cql/ledger.cql");

/// The statements of [`SCHEMA`]: comment lines dropped, split on `;`.
pub fn schema_statements() -> Vec<String> {
    split_statements(SCHEMA)
}

/// The statements of a CQL schema file: comment lines dropped, split on `;`.
/// (Shared with the read-model store, whose file follows the same rules.)
pub fn split_statements(schema: &str) -> Vec<String> {
    let without_comments: String = schema
        .lines()
        .filter(|line| !line.trim_start().starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n");
    without_comments
        .split(';')
        .map(str::trim)
        .filter(|statement| !statement.is_empty())
        .map(str::to_string)
        .collect()
}

/// Whether `keyspace` is safe to splice into DDL: a lowercase CQL identifier
/// of at most 48 characters (the CQL limit), starting with a letter.
pub fn is_valid_keyspace_name(keyspace: &str) -> bool {
    let mut characters = keyspace.chars();
    let starts_with_letter = characters
        .next()
        .is_some_and(|first| first.is_ascii_lowercase());
    starts_with_letter
        && keyspace.len() <= 48
        && keyspace.chars().all(|character| {
            character.is_ascii_lowercase() || character.is_ascii_digit() || character == '_'
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schema_file_splits_into_its_create_table_statements() {
        let statements = schema_statements();
        let tables: Vec<&str> = statements
            .iter()
            .map(|statement| {
                assert!(
                    statement.starts_with("CREATE TABLE IF NOT EXISTS "),
                    "{statement}"
                );
                statement["CREATE TABLE IF NOT EXISTS ".len()..]
                    .split_whitespace()
                    .next()
                    .expect("a table name")
            })
            .collect();
        assert_eq!(
            tables,
            [
                "store_layout",
                "records",
                "record_buckets",
                "events",
                "event_buckets",
                "messages",
                "message_buckets",
                "snapshots"
            ]
        );
        for forbidden in ["ALLOW FILTERING", "MATERIALIZED", "INDEX", "IF NOT EXISTS;"] {
            assert!(
                statements
                    .iter()
                    .all(|statement| !statement.contains(forbidden)),
                "{forbidden}"
            );
        }
    }

    #[test]
    fn keyspace_names_are_checked() {
        assert!(is_valid_keyspace_name("ledger"));
        assert!(is_valid_keyspace_name("ledger_test_12"));
        for bad in [
            "",
            "1ledger",
            "Ledger",
            "ledger-x",
            "ledger; DROP",
            &"a".repeat(49),
        ] {
            assert!(!is_valid_keyspace_name(bad), "{bad}");
        }
    }
}
