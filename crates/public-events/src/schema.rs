//! The JSON Schemas of the public events, generated from their types: the
//! files of `schemas/json/`, which a test compares with these (run it with
//! `UPDATE_SCHEMAS=1` to rewrite them after an intended change — a new
//! version of a type, never an edit of a published one).

use schemars::JsonSchema;

use crate::types::{
    BundleCreated, CurrencyGranted, EscrowReleased, EscrowReversed, ItemPublished, ItemRepriced,
    ItemSaleToggled, ItemTakenDown, ListingCancelled, ListingCreated, PriceFloorSet,
    PriceTestEnded, PriceTestExposed, PriceTestSold, PriceTestStarted, PurchaseCompleted,
    PurchaseRefunded, RegionalPricesSet, ResaleCompleted, StructuredEvent, PUBLIC_VERSION,
};

/// The file name of a public type's schema: `<type>.v<version>.schema.json`.
pub fn schema_file_name(type_name: &str, version: u16) -> String {
    format!("{type_name}.v{version}.schema.json")
}

/// The file name of the structured (NDJSON) envelope's schema.
pub const ENVELOPE_SCHEMA_FILE: &str = "cloudevent.v1.schema.json";

fn schema_of<T: JsonSchema>() -> serde_json::Value {
    schemars::schema_for!(T).to_value()
}

/// Every schema file of `schemas/json/`: `(file name, pretty JSON text
/// ending with a newline)`, sorted by name.
pub fn schema_files() -> Vec<(String, String)> {
    let typed: [(&str, serde_json::Value); 19] = [
        ("currency_granted", schema_of::<CurrencyGranted>()),
        ("purchase_completed", schema_of::<PurchaseCompleted>()),
        ("resale_completed", schema_of::<ResaleCompleted>()),
        ("purchase_refunded", schema_of::<PurchaseRefunded>()),
        ("escrow_reversed", schema_of::<EscrowReversed>()),
        ("escrow_released", schema_of::<EscrowReleased>()),
        ("listing_created", schema_of::<ListingCreated>()),
        ("listing_cancelled", schema_of::<ListingCancelled>()),
        ("item_published", schema_of::<ItemPublished>()),
        ("item_repriced", schema_of::<ItemRepriced>()),
        ("item_sale_toggled", schema_of::<ItemSaleToggled>()),
        ("bundle_created", schema_of::<BundleCreated>()),
        ("price_floor_set", schema_of::<PriceFloorSet>()),
        ("regional_prices_set", schema_of::<RegionalPricesSet>()),
        ("price_test_started", schema_of::<PriceTestStarted>()),
        ("price_test_exposed", schema_of::<PriceTestExposed>()),
        ("price_test_sold", schema_of::<PriceTestSold>()),
        ("price_test_ended", schema_of::<PriceTestEnded>()),
        ("item_taken_down", schema_of::<ItemTakenDown>()),
    ];
    let mut files: Vec<(String, String)> = typed
        .into_iter()
        .map(|(type_name, schema)| (schema_file_name(type_name, PUBLIC_VERSION), pretty(&schema)))
        .collect();
    files.push((
        ENVELOPE_SCHEMA_FILE.to_string(),
        pretty(&schema_of::<StructuredEvent>()),
    ));
    files.sort();
    files
}

fn pretty(value: &serde_json::Value) -> String {
    serde_json::to_string_pretty(value).expect("a schema serializes") + "\n"
}
