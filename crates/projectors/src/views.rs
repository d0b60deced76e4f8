//! Read-model views served by the query API, and the port that serves them.

use async_trait::async_trait;
use ledger_core::{ReadPosition, TimestampMs};
use serde::Serialize;

/// Largest page a query returns; larger `limit`s are clamped.
pub const PAGE_SIZE_MAX: usize = 1_000;
pub const PAGE_SIZE_DEFAULT: usize = 100;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BalanceView {
    pub user_id: String,
    pub balance: i64,
    pub pending: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InventoryEntry {
    pub item_id: String,
    /// `None` for a non-limited item.
    pub serial: Option<u32>,
    pub purchase_id: String,
    pub acquired_at_ms: TimestampMs,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TransactionEntry {
    /// `<shard>.<sequence>` of the event that moved the money.
    pub position: String,
    /// e.g. `grant`, `purchase`, `sale`, `escrow_release`, `resale_proceeds`, `refund`, `refund_reversal`.
    pub kind: String,
    /// `wallet` or `pending` (escrowed earnings): the account that changed.
    pub account: String,
    /// Signed change of that account.
    pub amount: i64,
    /// The purchase, grant or refund id behind it.
    pub reference: String,
    pub at_ms: TimestampMs,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ItemView {
    pub item_id: String,
    pub creator_id: String,
    pub name: String,
    pub price: i64,
    pub on_sale: bool,
    pub limited: bool,
    pub supply: Option<u32>,
    /// Serials currently sold (Limiteds) or copies sold (others), net of refunds.
    pub sold: u64,
    pub remaining: Option<u64>,
    pub max_per_user: Option<u32>,
    pub starts_at_ms: Option<TimestampMs>,
    pub ends_at_ms: Option<TimestampMs>,
    pub resellable: bool,
    /// The item's kind (`accessory`, `classic_clothing`, ...): price floors
    /// are set per kind.
    pub kind: String,
    /// The item's prices per region (ISO 3166-1 alpha-2 code → price).
    pub regional_prices: std::collections::BTreeMap<String, i64>,
    /// The price test its shard prices it by, if any (until its end time).
    pub price_test: Option<ItemPriceTestView>,
    /// Primary and resale sales.
    pub sales_count: u64,
    pub recent_average_price: Option<i64>,
    pub lowest_resale_price: Option<i64>,
}

/// Regional prices as stored in a read model: a JSON object, region →
/// price, in region order.
pub fn regional_prices_json(prices: &[(ledger_core::Region, i64)]) -> String {
    let object: serde_json::Map<String, serde_json::Value> = prices
        .iter()
        .map(|(region, price)| (region.to_string(), serde_json::Value::from(*price)))
        .collect();
    serde_json::Value::Object(object).to_string()
}

/// Reads what [`regional_prices_json`] wrote (`None` in a CQL row written
/// before regional prices: none).
pub fn parse_regional_prices(
    stored: &str,
) -> Result<std::collections::BTreeMap<String, i64>, String> {
    serde_json::from_str(stored).map_err(|error| format!("stored regional prices: {error}"))
}

/// The price test an item's shard prices the item by.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ItemPriceTestView {
    pub test_id: String,
    pub arms: Vec<i64>,
    pub ends_at_ms: TimestampMs,
}

/// Purchases a takedown's view lists as left when the request names no
/// `limit` (the count is exact; the list is paged by purchase id).
pub const TAKEDOWN_LEFT_LISTED_MAX: usize = 1_000;

/// A takedown and what it did so far to the purchases of its item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TakedownView {
    pub item_id: String,
    /// `refunding` until every shard reported, then `done`.
    pub status: String,
    pub listings_ended: u32,
    pub shard_count: u16,
    pub shards_reported: u16,
    pub refunded: u32,
    pub refunded_amount: i64,
    pub already_refunded: u32,
    /// Purchases left as they are (escrow released, serial moved on): the
    /// count of the shards that reported, and one page of them by purchase
    /// id, with the cursor of the next page (`None` on the last).
    pub left_count: u32,
    pub left: Vec<TakedownLeftView>,
    pub left_next_cursor: Option<String>,
    pub started_at_ms: TimestampMs,
    pub updated_at_ms: TimestampMs,
}

impl TakedownView {
    /// `done` once every shard reported, `refunding` until then.
    pub fn status_of(shards_reported: u16, shard_count: u16) -> &'static str {
        if shards_reported == shard_count {
            "done"
        } else {
            "refunding"
        }
    }
}

/// A purchase a takedown left as it is, and why (a refusal's code:
/// `refund_window_closed`, `not_refundable`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TakedownLeftView {
    pub purchase_id: String,
    pub reason: String,
}

/// A price test with its counts per arm, as its shard logged them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PriceTestView {
    pub test_id: String,
    pub item_id: String,
    /// Known once the test runs.
    pub creator_id: Option<String>,
    /// `starting`, `running` or `ended`.
    pub status: String,
    pub ends_at_ms: TimestampMs,
    pub apply_winner: bool,
    pub winner: Option<u8>,
    pub applied_price: Option<i64>,
    pub arms: Vec<PriceTestArmView>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PriceTestArmView {
    pub price: i64,
    pub exposures: u64,
    pub purchases: u64,
    pub revenue: i64,
}

/// Arms as stored in a read model: a JSON array of prices.
pub fn arms_json(arms: &[i64]) -> String {
    serde_json::Value::from(arms.to_vec()).to_string()
}

pub fn parse_arms(stored: &str) -> Result<Vec<i64>, String> {
    serde_json::from_str(stored).map_err(|error| format!("stored test arms: {error}"))
}

/// One version of the price floor of a kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PriceFloorView {
    pub kind: String,
    pub version: u32,
    pub price: i64,
    pub effective_from_ms: TimestampMs,
}

/// Most floor versions a read returns (every kind's, at most
/// [`ledger_core::pricing::FLOOR_VERSIONS_MAX`] each).
pub const PRICE_FLOOR_VERSIONS_MAX: usize =
    ledger_core::pricing::ITEM_KIND_COUNT * ledger_core::pricing::FLOOR_VERSIONS_MAX;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ListingView {
    pub listing_id: String,
    pub item_id: String,
    pub serial: u32,
    pub seller_id: String,
    pub price: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OwnerEntry {
    pub serial: u32,
    pub user_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BundleView {
    pub bundle_id: String,
    pub creator_id: String,
    pub name: String,
    pub item_ids: Vec<String>,
    pub price: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EarningsView {
    pub creator_id: String,
    pub pending: i64,
    pub released: i64,
    pub lifetime: i64,
    pub sales_count: u64,
}

/// One step of a purchase's story, as served.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PurchaseStepView {
    /// `<shard>.<sequence>` of the event.
    pub position: String,
    pub step: String,
    pub user_id: String,
    pub subject: String,
    pub serial: Option<u32>,
    pub amount: Option<i64>,
    pub detail: String,
    pub at_ms: TimestampMs,
}

/// One sale of a creator, with its escrow, as served.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CreatorSaleView {
    pub purchase_id: String,
    /// When the share entered escrow.
    pub sold_at_ms: TimestampMs,
    /// `<shard>.<sequence>` of the settlement.
    pub position: String,
    pub resale: bool,
    pub cleared: i64,
    pub creator_share: i64,
    pub platform_fee: i64,
    pub policy_version: u16,
    /// `held`, `frozen`, `released` or `refunded`.
    pub status: &'static str,
    /// When the escrow is (or was) due for release.
    pub release_at_ms: TimestampMs,
    /// When it was released or refunded, if it was.
    pub settled_at_ms: Option<TimestampMs>,
}

/// Where a sale's escrow stands, from what the read models keep.
pub fn sale_status(frozen: bool, released: bool, refunded: bool) -> &'static str {
    if refunded {
        "refunded"
    } else if released {
        "released"
    } else if frozen {
        "frozen"
    } else {
        "held"
    }
}

/// A creator's sales from `from_ms` (inclusive) to `to_ms` (exclusive),
/// by time then purchase id; the cursor is the last row's
/// `<sold_at_ms>:<purchase_id>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SalesRange<'a> {
    pub from_ms: u64,
    pub to_ms: Option<u64>,
    pub limit: usize,
    pub cursor: Option<&'a str>,
}

impl SalesRange<'_> {
    /// The first row to return is after this `(sold_at_ms, purchase_id)`
    /// (exclusive); `None` from the start of the range.
    pub fn after(&self) -> Result<Option<(u64, String)>, ReadError> {
        let Some(cursor) = self.cursor else {
            return Ok(None);
        };
        let (at, purchase_id) = cursor.split_once(':').ok_or(ReadError::BadCursor)?;
        let at: u64 = at.parse().map_err(|_| ReadError::BadCursor)?;
        if purchase_id.is_empty() {
            return Err(ReadError::BadCursor);
        }
        Ok(Some((at, purchase_id.to_string())))
    }
}

impl SalesRange<'_> {
    /// Rows to return come after this `(sold_at_ms, purchase_id)`, in that
    /// order (purchase ids are never empty, so `(from_ms, "")` starts at
    /// `from_ms` inclusive).
    pub fn start(&self) -> Result<(u64, String), ReadError> {
        Ok(match self.after()? {
            Some((at_ms, purchase_id)) if at_ms >= self.from_ms => (at_ms, purchase_id),
            _ => (self.from_ms, String::new()),
        })
    }
}

/// The cursor after `sale`.
pub fn sale_cursor(sale: &CreatorSaleView) -> String {
    format!("{}:{}", sale.sold_at_ms, sale.purchase_id)
}

/// Most steps one purchase's story holds (a bundle's grants included).
pub const PURCHASE_STEPS_MAX: usize = 1_000;

/// One page of a listing; `next_cursor` is `None` on the last page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Page<T> {
    pub entries: Vec<T>,
    pub next_cursor: Option<String>,
}

/// A read-model failure (storage), or a bad cursor from the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    #[error("cursor is not valid for this listing")]
    BadCursor,
    #[error("read-model storage failed: {0}")]
    Backend(String),
}

/// A part of a read position that no command can have returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BeyondHead {
    /// The part, as in the token (`1.42`, `m0.3.7`).
    pub part: String,
    /// The shard whose log it is beyond.
    pub shard: u16,
    /// That log's last sequence (0: empty).
    pub head: u64,
}

/// The read models, as the query API sees them. Implemented by every backend.
#[async_trait]
pub trait ReadModels: Send + Sync + 'static {
    /// Whether every log position has been projected and every delivery
    /// mark's `message_received` too.
    async fn covers(&self, position: &ReadPosition) -> Result<bool, ReadError>;
    /// The first part of `position` beyond the head of a shard's log (so no
    /// command can have returned it): a log position past its shard's last
    /// sequence, or a delivery mark whose sequence is past its sender's (a
    /// message sent is an entry of the sender's log). `None` if every part
    /// is within its log. A read given such a position is refused at once
    /// rather than waiting for it. Backends that cannot tell answer `None`
    /// (the read then waits, within its bound).
    async fn beyond_head(&self, position: &ReadPosition) -> Result<Option<BeyondHead>, ReadError> {
        let _ = position;
        Ok(None)
    }
    /// A user never seen has a zero balance.
    async fn balance(&self, user_id: &str) -> Result<BalanceView, ReadError>;
    async fn inventory(
        &self,
        user_id: &str,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<Page<InventoryEntry>, ReadError>;
    /// Newest first.
    async fn transactions(
        &self,
        user_id: &str,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<Page<TransactionEntry>, ReadError>;
    async fn item(&self, item_id: &str) -> Result<Option<ItemView>, ReadError>;
    /// Lowest price first (ties by listing id).
    async fn resale_listings(
        &self,
        item_id: &str,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<Page<ListingView>, ReadError>;
    /// By serial.
    async fn owners(
        &self,
        item_id: &str,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<Page<OwnerEntry>, ReadError>;
    async fn bundle(&self, bundle_id: &str) -> Result<Option<BundleView>, ReadError>;
    /// A creator never seen has zero earnings.
    async fn earnings(&self, creator_id: &str) -> Result<EarningsView, ReadError>;
    /// The steps of a purchase's story (at most [`PURCHASE_STEPS_MAX`]), in
    /// no particular order; none for a purchase never seen.
    async fn purchase_steps(&self, purchase_id: &str) -> Result<Vec<PurchaseStepView>, ReadError>;
    /// A price test and its counts; `None` for a test never opened (or
    /// refused by its item).
    async fn price_test(&self, test_id: &str) -> Result<Option<PriceTestView>, ReadError>;
    /// The takedown of an item, with one page of the purchases it left
    /// (`left_limit` of them after `left_cursor`, by purchase id); `None` for
    /// an item never taken down.
    async fn takedown(
        &self,
        item_id: &str,
        left_limit: usize,
        left_cursor: Option<&str>,
    ) -> Result<Option<TakedownView>, ReadError>;
    /// Every version of every kind's price floor (at most
    /// [`PRICE_FLOOR_VERSIONS_MAX`]), by kind then version.
    async fn price_floors(&self) -> Result<Vec<PriceFloorView>, ReadError>;
    /// A creator's sales in a time range, oldest first, a page at a time;
    /// none for a creator never seen.
    async fn creator_sales(
        &self,
        creator_id: &str,
        range: SalesRange<'_>,
    ) -> Result<Page<CreatorSaleView>, ReadError>;
    /// An item's sales history of the UTC days `from_day..to_day` (at most
    /// [`crate::HISTORY_DAYS_MAX`] of them), with the recent average price
    /// and lowest ask as they stood when `from_day` began; empty for an item
    /// never seen.
    async fn item_days(
        &self,
        item_id: &str,
        from_day: u64,
        to_day: u64,
    ) -> Result<crate::ItemDays, ReadError>;
}
