//! The CQL data model: `schemas/cql/read_models.cql`, applied verbatim.

/// The tables, exactly as documented in `schemas/cql/read_models.cql`.
pub const SCHEMA: &str = include_str!("../../../schemas/cql/read_models.cql");

/// The statements of [`SCHEMA`]: comment lines dropped, split on `;`.
pub fn schema_statements() -> Vec<String> {
    let without_comments: String = SCHEMA
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
    let starts_with_letter = keyspace
        .chars()
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
                "projection_checkpoints",
                "projection_deliveries",
                "balance_parts",
                "earnings_parts",
                "item_count_parts",
                "transactions",
                "transaction_buckets",
                "inventory",
                "items",
                "item_sales",
                "item_sale_buckets",
                "serial_owners",
                "serial_owner_buckets",
                "resale_listings",
                "listings_by_id",
                "listings_by_serial",
                "bundles",
            ]
        );
        for forbidden in [
            "ALLOW FILTERING",
            "MATERIALIZED",
            "INDEX",
            "counter",
            "IF NOT EXISTS;",
        ] {
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
        assert!(is_valid_keyspace_name("ledger_read_models"));
        assert!(is_valid_keyspace_name("read_models_test_12"));
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
