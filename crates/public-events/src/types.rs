//! The public event types (version 1): what analysts read, as JSON. They
//! are the published contract: a change of fields is a new version of the
//! type (a new `ce_type` and a new schema file), never an edit of v1.
//!
//! Money is integer currency units (`i64`), times are RFC 3339 in UTC, ids
//! are the ledger's ids. Every event that moves money lists what it did to
//! users' wallets (`wallet_changes`) and escrowed earnings
//! (`pending_changes`): summing them per user over the stream gives the
//! user's `balance` and `pending` of `GET /v1/users/{id}/balance`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A signed change of one user's account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AccountChange {
    pub user_id: String,
    /// Added to the account (negative: taken out).
    pub amount: i64,
}

/// An admin granted currency to a user's wallet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CurrencyGranted {
    pub grant_id: String,
    pub user_id: String,
    pub amount: i64,
    /// The user's wallet right after the grant.
    pub balance_after: i64,
    pub wallet_changes: Vec<AccountChange>,
    pub pending_changes: Vec<AccountChange>,
}

/// A primary purchase (an item, a Limited's serial or a bundle) completed:
/// the buyer paid, the creator's share went into escrow and the platform
/// took its fee, as the fee policy in force split the price.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PurchaseCompleted {
    pub purchase_id: String,
    pub buyer_id: String,
    /// The item bought, or null for a bundle.
    pub item_id: Option<String>,
    /// The bundle bought, or null for an item.
    pub bundle_id: Option<String>,
    /// The items the buyer was granted by this purchase (a Limited's serial
    /// is in `serial`; a bundle grants those of its items not yet owned).
    pub granted_items: Vec<String>,
    /// A Limited's serial, or null.
    pub serial: Option<u32>,
    /// What the buyer paid.
    pub price: i64,
    pub creator_id: String,
    /// The creator's share, held in escrow until released.
    pub creator_share: i64,
    pub platform_fee: i64,
    /// The version of the fee policy that split the price.
    pub fee_policy_version: u16,
    /// The buyer's wallet right after paying.
    pub buyer_balance_after: i64,
    pub wallet_changes: Vec<AccountChange>,
    pub pending_changes: Vec<AccountChange>,
}

/// A resale completed: a listed serial moved to the buyer; the seller was
/// paid, the original creator's royalty went into escrow, the platform took
/// its fee.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ResaleCompleted {
    pub purchase_id: String,
    pub buyer_id: String,
    pub seller_id: String,
    pub listing_id: String,
    pub item_id: String,
    pub serial: u32,
    pub price: i64,
    /// Paid straight into the seller's wallet.
    pub seller_share: i64,
    pub creator_id: String,
    /// The creator's royalty, held in escrow until released.
    pub creator_royalty: i64,
    pub platform_fee: i64,
    pub fee_policy_version: u16,
    pub buyer_balance_after: i64,
    pub wallet_changes: Vec<AccountChange>,
    pub pending_changes: Vec<AccountChange>,
}

/// A purchase was refunded: its price went back into the buyer's wallet
/// (the creator's side is `escrow_reversed`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PurchaseRefunded {
    pub refund_id: String,
    pub purchase_id: String,
    pub buyer_id: String,
    pub amount: i64,
    /// Items of the purchase the buyer no longer owns (a Limited's serial is
    /// taken back on the item's side).
    pub revoked_items: Vec<String>,
    pub buyer_balance_after: i64,
    pub wallet_changes: Vec<AccountChange>,
    pub pending_changes: Vec<AccountChange>,
}

/// A refund took a sale's escrowed share (and the platform's fee) back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EscrowReversed {
    pub refund_id: String,
    pub purchase_id: String,
    pub creator_id: String,
    pub creator_share: i64,
    pub platform_fee: i64,
    pub wallet_changes: Vec<AccountChange>,
    pub pending_changes: Vec<AccountChange>,
}

/// A sale's escrowed share (or royalty) was released into the creator's
/// wallet, on the ledger's clock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EscrowReleased {
    pub purchase_id: String,
    pub creator_id: String,
    pub amount: i64,
    pub wallet_changes: Vec<AccountChange>,
    pub pending_changes: Vec<AccountChange>,
}

/// A serial was put on the resale book.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListingCreated {
    pub listing_id: String,
    pub item_id: String,
    pub serial: u32,
    pub seller_id: String,
    pub price: i64,
}

/// A listing was cancelled by its seller (a sold listing ends with its
/// `resale_completed`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListingCancelled {
    pub listing_id: String,
    pub item_id: String,
    pub serial: u32,
}

/// An item was published (or published again with a new definition).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ItemPublished {
    pub item_id: String,
    pub creator_id: String,
    pub name: String,
    pub price: i64,
    /// A Limited's supply (serials 1..=supply), or null.
    pub supply: Option<u32>,
    pub max_per_user: Option<u32>,
    /// RFC 3339, or null.
    pub starts_at: Option<String>,
    /// RFC 3339, or null.
    pub ends_at: Option<String>,
    pub resellable: bool,
}

/// An item's primary price changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ItemRepriced {
    pub item_id: String,
    pub price: i64,
}

/// An item was put on or taken off sale.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ItemSaleToggled {
    pub item_id: String,
    pub on_sale: bool,
}

/// A bundle was created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BundleCreated {
    pub bundle_id: String,
    pub creator_id: String,
    pub name: String,
    pub item_ids: Vec<String>,
    pub price: i64,
}

/// A new version of the platform's price floor for an item kind: from
/// `effective_from`, publishing or repricing an item of the kind under
/// `price` is refused, and its primary sales are split by fee policy 2.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PriceFloorSet {
    /// `accessory`, `classic_clothing`, `layered_clothing`, `body` or `emote`.
    pub kind: String,
    pub version: u32,
    pub price: i64,
    /// RFC 3339.
    pub effective_from: String,
}

/// An item's prices per region from now on (replacing any before; empty:
/// none).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RegionalPricesSet {
    pub item_id: String,
    /// ISO 3166-1 alpha-2 region → price.
    pub prices: std::collections::BTreeMap<String, i64>,
}

/// The item's shard prices each buyer by one of a price test's arms until
/// `ends_at`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PriceTestStarted {
    pub test_id: String,
    pub item_id: String,
    pub arms: Vec<i64>,
    /// RFC 3339.
    pub ends_at: String,
}

/// A purchase paid the price of a price test's arm.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PriceTestSold {
    pub test_id: String,
    pub purchase_id: String,
    pub arm: u8,
    pub price: i64,
    /// The arm's purchases and revenue so far.
    pub arm_purchases: u64,
    pub arm_revenue: i64,
}

/// A batch of a price test's exposures.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PriceTestExposed {
    pub test_id: String,
    /// This batch's exposures per arm.
    pub batch: Vec<u64>,
    /// Each arm's exposures so far.
    pub exposures: Vec<u64>,
}

/// A price test ended with `winner` (the arm with the most revenue per
/// exposure; null without exposures); `applied_price` is sent to the item
/// when the test applies its winner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PriceTestEnded {
    pub test_id: String,
    pub winner: Option<u8>,
    pub applied_price: Option<i64>,
}

/// An item taken down by moderation: off sale for good; every purchase of
/// it still in escrow is refunded (each a `purchase_refunded` whose
/// `refund_id` starts with `takedown-`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ItemTakenDown {
    pub item_id: String,
    /// RFC 3339.
    pub taken_down_at: String,
}

/// The data of a public event, by type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublicData {
    CurrencyGranted(CurrencyGranted),
    PurchaseCompleted(PurchaseCompleted),
    ResaleCompleted(ResaleCompleted),
    PurchaseRefunded(PurchaseRefunded),
    EscrowReversed(EscrowReversed),
    EscrowReleased(EscrowReleased),
    ListingCreated(ListingCreated),
    ListingCancelled(ListingCancelled),
    ItemPublished(ItemPublished),
    ItemRepriced(ItemRepriced),
    ItemSaleToggled(ItemSaleToggled),
    BundleCreated(BundleCreated),
    PriceFloorSet(PriceFloorSet),
    RegionalPricesSet(RegionalPricesSet),
    PriceTestStarted(PriceTestStarted),
    PriceTestExposed(PriceTestExposed),
    PriceTestSold(PriceTestSold),
    PriceTestEnded(PriceTestEnded),
    ItemTakenDown(ItemTakenDown),
}

/// The version of every public type this crate writes.
pub const PUBLIC_VERSION: u16 = 1;

/// Every public type name, in the order of [`PublicData`].
pub const PUBLIC_TYPES: [&str; 19] = [
    "currency_granted",
    "purchase_completed",
    "resale_completed",
    "purchase_refunded",
    "escrow_reversed",
    "escrow_released",
    "listing_created",
    "listing_cancelled",
    "item_published",
    "item_repriced",
    "item_sale_toggled",
    "bundle_created",
    "price_floor_set",
    "regional_prices_set",
    "price_test_started",
    "price_test_exposed",
    "price_test_sold",
    "price_test_ended",
    "item_taken_down",
];

impl PublicData {
    /// The type's name, e.g. `purchase_completed`.
    pub fn type_name(&self) -> &'static str {
        match self {
            PublicData::CurrencyGranted(_) => "currency_granted",
            PublicData::PurchaseCompleted(_) => "purchase_completed",
            PublicData::ResaleCompleted(_) => "resale_completed",
            PublicData::PurchaseRefunded(_) => "purchase_refunded",
            PublicData::EscrowReversed(_) => "escrow_reversed",
            PublicData::EscrowReleased(_) => "escrow_released",
            PublicData::ListingCreated(_) => "listing_created",
            PublicData::ListingCancelled(_) => "listing_cancelled",
            PublicData::ItemPublished(_) => "item_published",
            PublicData::ItemRepriced(_) => "item_repriced",
            PublicData::ItemSaleToggled(_) => "item_sale_toggled",
            PublicData::BundleCreated(_) => "bundle_created",
            PublicData::PriceFloorSet(_) => "price_floor_set",
            PublicData::RegionalPricesSet(_) => "regional_prices_set",
            PublicData::PriceTestStarted(_) => "price_test_started",
            PublicData::PriceTestExposed(_) => "price_test_exposed",
            PublicData::PriceTestSold(_) => "price_test_sold",
            PublicData::PriceTestEnded(_) => "price_test_ended",
            PublicData::ItemTakenDown(_) => "item_taken_down",
        }
    }

    /// The data as JSON.
    pub fn to_value(&self) -> serde_json::Value {
        let value = match self {
            PublicData::CurrencyGranted(data) => serde_json::to_value(data),
            PublicData::PurchaseCompleted(data) => serde_json::to_value(data),
            PublicData::ResaleCompleted(data) => serde_json::to_value(data),
            PublicData::PurchaseRefunded(data) => serde_json::to_value(data),
            PublicData::EscrowReversed(data) => serde_json::to_value(data),
            PublicData::EscrowReleased(data) => serde_json::to_value(data),
            PublicData::ListingCreated(data) => serde_json::to_value(data),
            PublicData::ListingCancelled(data) => serde_json::to_value(data),
            PublicData::ItemPublished(data) => serde_json::to_value(data),
            PublicData::ItemRepriced(data) => serde_json::to_value(data),
            PublicData::ItemSaleToggled(data) => serde_json::to_value(data),
            PublicData::BundleCreated(data) => serde_json::to_value(data),
            PublicData::PriceFloorSet(data) => serde_json::to_value(data),
            PublicData::RegionalPricesSet(data) => serde_json::to_value(data),
            PublicData::PriceTestStarted(data) => serde_json::to_value(data),
            PublicData::PriceTestExposed(data) => serde_json::to_value(data),
            PublicData::PriceTestSold(data) => serde_json::to_value(data),
            PublicData::PriceTestEnded(data) => serde_json::to_value(data),
            PublicData::ItemTakenDown(data) => serde_json::to_value(data),
        };
        value.expect("public event data serializes to JSON")
    }

    /// What the event did to users' wallets and escrowed earnings
    /// (`(wallet_changes, pending_changes)`); empty for events that move no
    /// money.
    pub fn account_changes(&self) -> (&[AccountChange], &[AccountChange]) {
        match self {
            PublicData::CurrencyGranted(data) => (&data.wallet_changes, &data.pending_changes),
            PublicData::PurchaseCompleted(data) => (&data.wallet_changes, &data.pending_changes),
            PublicData::ResaleCompleted(data) => (&data.wallet_changes, &data.pending_changes),
            PublicData::PurchaseRefunded(data) => (&data.wallet_changes, &data.pending_changes),
            PublicData::EscrowReversed(data) => (&data.wallet_changes, &data.pending_changes),
            PublicData::EscrowReleased(data) => (&data.wallet_changes, &data.pending_changes),
            PublicData::ListingCreated(_)
            | PublicData::ListingCancelled(_)
            | PublicData::ItemPublished(_)
            | PublicData::ItemRepriced(_)
            | PublicData::ItemSaleToggled(_)
            | PublicData::BundleCreated(_)
            | PublicData::PriceFloorSet(_)
            | PublicData::RegionalPricesSet(_)
            | PublicData::PriceTestStarted(_)
            | PublicData::PriceTestExposed(_)
            | PublicData::PriceTestSold(_)
            | PublicData::PriceTestEnded(_)
            | PublicData::ItemTakenDown(_) => (&[], &[]),
        }
    }
}

/// The CloudEvents `type` of a public type: `ledger.<type>.v<version>`.
pub fn cloud_event_type(type_name: &str, version: u16) -> String {
    format!("ledger.{type_name}.v{version}")
}

/// The CloudEvents specification version the attributes follow.
pub const CLOUD_EVENTS_SPEC_VERSION: &str = "1.0";

/// One public event with its CloudEvents attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicEvent {
    /// `ce_id`: the position `<shard>.<sequence>` of the ledger event it
    /// comes from (unique: at most one public event per ledger event), or
    /// `<shard>.<sequence>.<line>` for each line of a paid cart, published
    /// from the cart's completion.
    pub id: String,
    /// `ce_source`, e.g. `/ledger`.
    pub source: String,
    /// `ce_subject` and the Kafka key: the entity, `user:<id>` (grants,
    /// purchases, resales and refunds by buyer, escrow by creator),
    /// `item:<id>` (catalogue, listings) or `bundle:<id>`.
    pub subject: String,
    /// `ce_time`: when the input behind the event arrived, ms since the Unix epoch.
    pub time_ms: u64,
    /// `ce_recordhash`: checksum of the ledger record holding the event,
    /// lowercase hex (as `ledger verify` prints heads).
    pub record_hash: String,
    pub data: PublicData,
}

/// A public event in CloudEvents' structured JSON mode: one line of
/// `ledger export --public`, and the envelope analysts may keep.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StructuredEvent {
    /// Always `1.0`.
    pub specversion: String,
    /// The position `<shard>.<sequence>` of the ledger event.
    pub id: String,
    /// `ledger.<type>.v<version>`.
    #[serde(rename = "type")]
    pub event_type: String,
    pub source: String,
    /// `user:<id>`, `item:<id>` or `bundle:<id>`.
    pub subject: String,
    /// RFC 3339, UTC.
    pub time: String,
    /// Always `application/json`.
    pub datacontenttype: String,
    /// Checksum of the ledger record holding the event, lowercase hex.
    pub recordhash: String,
    /// The event's data: valid against `schemas/json/<type>.v<version>.schema.json`.
    pub data: serde_json::Value,
}

impl PublicEvent {
    /// `ledger.<type>.v1`.
    pub fn cloud_event_type(&self) -> String {
        cloud_event_type(self.data.type_name(), PUBLIC_VERSION)
    }

    /// `ce_time`, RFC 3339 in UTC to the millisecond.
    pub fn time(&self) -> String {
        rfc3339(self.time_ms)
    }

    /// The Kafka key: the subject.
    pub fn key(&self) -> &str {
        &self.subject
    }

    /// The Kafka record value: the data as JSON.
    pub fn value(&self) -> Vec<u8> {
        serde_json::to_vec(&self.data.to_value()).expect("public event data serializes")
    }

    /// The Kafka headers (CloudEvents Kafka binary mode): `ce_specversion`,
    /// `ce_id`, `ce_type`, `ce_source`, `ce_time`, `ce_subject`,
    /// `ce_recordhash` and `content-type`.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        vec![
            ("ce_specversion", CLOUD_EVENTS_SPEC_VERSION.to_string()),
            ("ce_id", self.id.clone()),
            ("ce_type", self.cloud_event_type()),
            ("ce_source", self.source.clone()),
            ("ce_time", self.time()),
            ("ce_subject", self.subject.clone()),
            ("ce_recordhash", self.record_hash.clone()),
            ("content-type", "application/json".to_string()),
        ]
    }

    /// The event in structured mode (one NDJSON line of the export).
    pub fn structured(&self) -> StructuredEvent {
        StructuredEvent {
            specversion: CLOUD_EVENTS_SPEC_VERSION.to_string(),
            id: self.id.clone(),
            event_type: self.cloud_event_type(),
            source: self.source.clone(),
            subject: self.subject.clone(),
            time: self.time(),
            datacontenttype: "application/json".to_string(),
            recordhash: self.record_hash.clone(),
            data: self.data.to_value(),
        }
    }
}

/// `ms` since the Unix epoch as RFC 3339 in UTC, to the millisecond (the
/// latest instant RFC 3339 can write for times beyond the year 9999).
pub fn rfc3339(ms: u64) -> String {
    const LATEST_MS: u64 = 253_402_300_799_999; // 9999-12-31T23:59:59.999Z
    let instant = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.min(LATEST_MS));
    humantime::format_rfc3339_millis(instant).to_string()
}
