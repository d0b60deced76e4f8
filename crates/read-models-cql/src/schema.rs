//! The CQL data model: `schemas/cql/read_models.cql`, applied verbatim.

/// The tables, exactly as documented in `schemas/cql/read_models.cql`.
pub const SCHEMA: &str = include_str!("../../../schemas/cql/read_models.cql");

/// Columns added to tables after they were first made: `(table, column,
/// type)`. A keyspace made before them gets each from `ALTER TABLE` when
/// the read models connect (`CREATE TABLE IF NOT EXISTS` leaves an
/// existing table as it is).
pub const ADDED_COLUMNS: &[(&str, &str, &str)] = &[
    ("items", "kind", "text"),
    ("items", "regional_prices", "text"),
];

/// The statements of [`SCHEMA`]: comment lines dropped, split on `;`.
pub fn schema_statements() -> Vec<String> {
    store_cql::split_statements(SCHEMA)
}

#[cfg(test)]
mod tests {
    use super::*;
    use store_cql::is_valid_keyspace_name;

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
                "item_day_parts",
                "item_sale_days",
                "item_ask_days",
                "serial_owners",
                "serial_owner_buckets",
                "resale_listings",
                "listings_by_id",
                "listings_by_serial",
                "bundles",
                "purchase_steps",
                "creator_sales",
                "creator_sale_buckets",
                "creator_sales_by_purchase",
                "price_floors",
                "item_price_tests",
                "price_tests",
                "price_test_arms",
                "takedowns",
                "takedown_sales",
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
