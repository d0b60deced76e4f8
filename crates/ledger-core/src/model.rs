//! Commands, cross-shard messages, events and outcomes: the vocabulary of the
//! ledger. Everything here is plain data.

use std::sync::Arc;

use bincode::{Decode, Encode};
use serde::{Deserialize, Serialize};

use crate::ids::{
    BundleId, ExposureBatchId, GrantId, ItemId, ListingId, PriceTestId, PurchaseId, RefundId,
    ShardId, UserId,
};
use crate::money::Posting;
use crate::pricing::{ItemKind, Region, SaleTerms};

/// Longest item or bundle name, in bytes.
pub const NAME_LENGTH_MAX: usize = 200;
/// Largest supply of a Limited.
pub const SUPPLY_MAX: u32 = 10_000_000;
/// Most items in one bundle.
pub const BUNDLE_ITEMS_MAX: usize = 50;
/// Most lines in one cart.
pub const CART_LINES_MAX: usize = 20;
/// Longest cart id, in bytes: its lines' purchase ids append
/// `.line-<n>` to it (see [`cart_line_id`]).
pub const CART_ID_LENGTH_MAX: usize = crate::ids::ID_LENGTH_MAX - 8;

/// The purchase id of line `index` (from 0) of cart `cart_id`:
/// `<cart id>.line-<index + 1>`. Ids of that form are reserved for cart
/// lines (see [`is_cart_line_id`]), so they never collide with a client's.
pub fn cart_line_id(cart_id: &PurchaseId, index: usize) -> PurchaseId {
    PurchaseId::parse(format!("{cart_id}.line-{}", index + 1))
        .expect("a cart id short enough for its lines makes valid line ids")
}

/// Whether `purchase_id` has the form of a cart line's id
/// (`<id>.line-<digits>`), which a client may not use.
pub fn is_cart_line_id(purchase_id: &PurchaseId) -> bool {
    purchase_id
        .as_str()
        .rsplit_once(".line-")
        .is_some_and(|(cart, number)| {
            !cart.is_empty() && !number.is_empty() && number.bytes().all(|b| b.is_ascii_digit())
        })
}

/// Milliseconds since the Unix epoch, UTC.
pub type TimestampMs = u64;

// ---------------------------------------------------------------- actors

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    Service,
    User,
}

/// Who issued a command (from the verified token).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
pub struct Actor {
    pub role: Role,
    pub user_id: UserId,
}

impl Actor {
    /// Whether this actor may act on behalf of `user`.
    pub fn may_act_as(&self, user: &UserId) -> bool {
        match self.role {
            Role::Admin | Role::Service => true,
            Role::User => &self.user_id == user,
        }
    }
}

// ---------------------------------------------------------------- commands

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemDefinition {
    pub item_id: ItemId,
    pub creator_id: UserId,
    pub name: String,
    pub price: i64,
    /// `Some(n)`: a Limited with serials `1..=n`.
    pub supply: Option<u32>,
    pub max_per_user: Option<u32>,
    pub starts_at_ms: Option<TimestampMs>,
    pub ends_at_ms: Option<TimestampMs>,
    pub resellable: bool,
    /// What kind of avatar item it is (price floors are set per kind).
    #[serde(default)]
    pub kind: ItemKind,
}

// Stored as it always was, except that the byte that held `resellable`
// (0 or 1) is a flags byte: bit 0 is `resellable`, bits 1-7 the kind's
// stored index. Definitions written before kinds existed read as
// accessories, and an accessory's bytes (and so the fingerprint of the
// command that publishes it) are what they always were.
impl Encode for ItemDefinition {
    fn encode<E: bincode::enc::Encoder>(
        &self,
        encoder: &mut E,
    ) -> Result<(), bincode::error::EncodeError> {
        self.item_id.encode(encoder)?;
        self.creator_id.encode(encoder)?;
        self.name.encode(encoder)?;
        self.price.encode(encoder)?;
        self.supply.encode(encoder)?;
        self.max_per_user.encode(encoder)?;
        self.starts_at_ms.encode(encoder)?;
        self.ends_at_ms.encode(encoder)?;
        let flags = u8::from(self.resellable) | (self.kind.stored_index() << 1);
        flags.encode(encoder)
    }
}

impl<Context> Decode<Context> for ItemDefinition {
    fn decode<D: bincode::de::Decoder<Context = Context>>(
        decoder: &mut D,
    ) -> Result<Self, bincode::error::DecodeError> {
        let item_id = Decode::decode(decoder)?;
        let creator_id = Decode::decode(decoder)?;
        let name = Decode::decode(decoder)?;
        let price = Decode::decode(decoder)?;
        let supply = Decode::decode(decoder)?;
        let max_per_user = Decode::decode(decoder)?;
        let starts_at_ms = Decode::decode(decoder)?;
        let ends_at_ms = Decode::decode(decoder)?;
        let flags = u8::decode(decoder)?;
        let kind = ItemKind::from_stored_index(flags >> 1).ok_or(
            bincode::error::DecodeError::OtherString(format!(
                "unknown item kind index {} in an item definition",
                flags >> 1
            )),
        )?;
        Ok(Self {
            item_id,
            creator_id,
            name,
            price,
            supply,
            max_per_user,
            starts_at_ms,
            ends_at_ms,
            resellable: flags & 1 == 1,
            kind,
        })
    }
}

bincode::impl_borrow_decode!(ItemDefinition);

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, Encode, Decode)]
pub enum PurchaseTarget {
    Item(ItemId),
    Bundle(BundleId),
}

/// One line of a cart: what it buys and the price the buyer saw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
pub struct CartLine {
    pub target: PurchaseTarget,
    pub expected_price: i64,
}

/// A command, as the purchase flow service or the storefront sent it, after
/// parsing. Its fields (not its metadata) are what idempotency compares.
///
/// Stored as [`StoredCommand`]: a purchase without a region keeps the bytes
/// (and so the fingerprint) it had before regions existed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    Grant {
        grant_id: GrantId,
        user_id: UserId,
        amount: i64,
    },
    PublishItem(ItemDefinition),
    Reprice {
        item_id: ItemId,
        price: i64,
    },
    SetOnSale {
        item_id: ItemId,
        on_sale: bool,
    },
    CreateBundle {
        bundle_id: BundleId,
        creator_id: UserId,
        name: String,
        item_ids: Vec<ItemId>,
        price: i64,
    },
    Purchase {
        purchase_id: PurchaseId,
        buyer_id: UserId,
        target: PurchaseTarget,
        expected_price: i64,
        /// The buyer's region, set by the purchase flow service (an item's
        /// regional price applies in it).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        region: Option<Region>,
    },
    CreateListing {
        listing_id: ListingId,
        seller_id: UserId,
        item_id: ItemId,
        serial: u32,
        price: i64,
    },
    CancelListing {
        listing_id: ListingId,
    },
    ResalePurchase {
        purchase_id: PurchaseId,
        buyer_id: UserId,
        listing_id: ListingId,
        expected_price: i64,
    },
    Refund {
        refund_id: RefundId,
        purchase_id: PurchaseId,
    },
    /// Admin: the floor of `kind` is `price` from `effective_from_ms` on (a
    /// new version; earlier versions stay in the log and apply before it).
    /// Keyed by kind and start: the same change sent again is the same
    /// command.
    SetPriceFloor {
        kind: ItemKind,
        price: i64,
        effective_from_ms: TimestampMs,
    },
    /// The item's prices per region, replacing any before (empty: none).
    /// Each is at least 30 % of the base price.
    SetRegionalPrices {
        item_id: ItemId,
        prices: Vec<(Region, i64)>,
    },
    /// A price test of an item: each buyer is assigned one of `arms` (2 to
    /// 4 prices) until `ends_at_ms`; then the arm that earned most per
    /// exposure wins (and becomes the item's price if `apply_winner`).
    StartPriceTest {
        test_id: PriceTestId,
        item_id: ItemId,
        arms: Vec<i64>,
        ends_at_ms: TimestampMs,
        apply_winner: bool,
    },
    /// The storefront showed the test's arms `counts[arm]` times (one batch,
    /// counted once).
    RecordExposures {
        test_id: PriceTestId,
        batch_id: ExposureBatchId,
        counts: Vec<u64>,
    },
    /// Ends a running price test now (as its end time would).
    EndPriceTest {
        test_id: PriceTestId,
    },
    /// Admin (moderation): the item goes off sale for good, its open resale
    /// listings end and every purchase of it still in escrow is refunded.
    /// Keyed by the item: one takedown per item, a repeat answers the first.
    TakeDown {
        item_id: ItemId,
    },
    /// A cart: up to [`CART_LINES_MAX`] items and bundles bought at once,
    /// all or nothing, in one debit. Line `i` is purchase
    /// [`cart_line_id`]`(purchase_id, i)`, settled, refunded and traced on
    /// its own. Appended.
    PurchaseCart {
        purchase_id: PurchaseId,
        buyer_id: UserId,
        lines: Vec<CartLine>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        region: Option<Region>,
    },
}

/// [`Command`] as stored: its variants in their order, a purchase in a
/// region appended (so commands stored before regions read as written).
#[derive(Encode, Decode)]
enum StoredCommand {
    Grant {
        grant_id: GrantId,
        user_id: UserId,
        amount: i64,
    },
    PublishItem(ItemDefinition),
    Reprice {
        item_id: ItemId,
        price: i64,
    },
    SetOnSale {
        item_id: ItemId,
        on_sale: bool,
    },
    CreateBundle {
        bundle_id: BundleId,
        creator_id: UserId,
        name: String,
        item_ids: Vec<ItemId>,
        price: i64,
    },
    /// A purchase without a region.
    Purchase {
        purchase_id: PurchaseId,
        buyer_id: UserId,
        target: PurchaseTarget,
        expected_price: i64,
    },
    CreateListing {
        listing_id: ListingId,
        seller_id: UserId,
        item_id: ItemId,
        serial: u32,
        price: i64,
    },
    CancelListing {
        listing_id: ListingId,
    },
    ResalePurchase {
        purchase_id: PurchaseId,
        buyer_id: UserId,
        listing_id: ListingId,
        expected_price: i64,
    },
    Refund {
        refund_id: RefundId,
        purchase_id: PurchaseId,
    },
    SetPriceFloor {
        kind: ItemKind,
        price: i64,
        effective_from_ms: TimestampMs,
    },
    SetRegionalPrices {
        item_id: ItemId,
        prices: Vec<(Region, i64)>,
    },
    PurchaseInRegion {
        purchase_id: PurchaseId,
        buyer_id: UserId,
        target: PurchaseTarget,
        expected_price: i64,
        region: Region,
    },
    StartPriceTest {
        test_id: PriceTestId,
        item_id: ItemId,
        arms: Vec<i64>,
        ends_at_ms: TimestampMs,
        apply_winner: bool,
    },
    RecordExposures {
        test_id: PriceTestId,
        batch_id: ExposureBatchId,
        counts: Vec<u64>,
    },
    EndPriceTest {
        test_id: PriceTestId,
    },
    TakeDown {
        item_id: ItemId,
    },
    PurchaseCart {
        purchase_id: PurchaseId,
        buyer_id: UserId,
        lines: Vec<CartLine>,
        region: Option<Region>,
    },
}

impl From<Command> for StoredCommand {
    fn from(command: Command) -> Self {
        match command {
            Command::Grant {
                grant_id,
                user_id,
                amount,
            } => StoredCommand::Grant {
                grant_id,
                user_id,
                amount,
            },
            Command::PublishItem(definition) => StoredCommand::PublishItem(definition),
            Command::Reprice { item_id, price } => StoredCommand::Reprice { item_id, price },
            Command::SetOnSale { item_id, on_sale } => {
                StoredCommand::SetOnSale { item_id, on_sale }
            }
            Command::CreateBundle {
                bundle_id,
                creator_id,
                name,
                item_ids,
                price,
            } => StoredCommand::CreateBundle {
                bundle_id,
                creator_id,
                name,
                item_ids,
                price,
            },
            Command::Purchase {
                purchase_id,
                buyer_id,
                target,
                expected_price,
                region: None,
            } => StoredCommand::Purchase {
                purchase_id,
                buyer_id,
                target,
                expected_price,
            },
            Command::Purchase {
                purchase_id,
                buyer_id,
                target,
                expected_price,
                region: Some(region),
            } => StoredCommand::PurchaseInRegion {
                purchase_id,
                buyer_id,
                target,
                expected_price,
                region,
            },
            Command::CreateListing {
                listing_id,
                seller_id,
                item_id,
                serial,
                price,
            } => StoredCommand::CreateListing {
                listing_id,
                seller_id,
                item_id,
                serial,
                price,
            },
            Command::CancelListing { listing_id } => StoredCommand::CancelListing { listing_id },
            Command::ResalePurchase {
                purchase_id,
                buyer_id,
                listing_id,
                expected_price,
            } => StoredCommand::ResalePurchase {
                purchase_id,
                buyer_id,
                listing_id,
                expected_price,
            },
            Command::Refund {
                refund_id,
                purchase_id,
            } => StoredCommand::Refund {
                refund_id,
                purchase_id,
            },
            Command::SetPriceFloor {
                kind,
                price,
                effective_from_ms,
            } => StoredCommand::SetPriceFloor {
                kind,
                price,
                effective_from_ms,
            },
            Command::SetRegionalPrices { item_id, prices } => {
                StoredCommand::SetRegionalPrices { item_id, prices }
            }
            Command::StartPriceTest {
                test_id,
                item_id,
                arms,
                ends_at_ms,
                apply_winner,
            } => StoredCommand::StartPriceTest {
                test_id,
                item_id,
                arms,
                ends_at_ms,
                apply_winner,
            },
            Command::RecordExposures {
                test_id,
                batch_id,
                counts,
            } => StoredCommand::RecordExposures {
                test_id,
                batch_id,
                counts,
            },
            Command::EndPriceTest { test_id } => StoredCommand::EndPriceTest { test_id },
            Command::TakeDown { item_id } => StoredCommand::TakeDown { item_id },
            Command::PurchaseCart {
                purchase_id,
                buyer_id,
                lines,
                region,
            } => StoredCommand::PurchaseCart {
                purchase_id,
                buyer_id,
                lines,
                region,
            },
        }
    }
}

impl From<StoredCommand> for Command {
    fn from(stored: StoredCommand) -> Self {
        match stored {
            StoredCommand::Grant {
                grant_id,
                user_id,
                amount,
            } => Command::Grant {
                grant_id,
                user_id,
                amount,
            },
            StoredCommand::PublishItem(definition) => Command::PublishItem(definition),
            StoredCommand::Reprice { item_id, price } => Command::Reprice { item_id, price },
            StoredCommand::SetOnSale { item_id, on_sale } => {
                Command::SetOnSale { item_id, on_sale }
            }
            StoredCommand::CreateBundle {
                bundle_id,
                creator_id,
                name,
                item_ids,
                price,
            } => Command::CreateBundle {
                bundle_id,
                creator_id,
                name,
                item_ids,
                price,
            },
            StoredCommand::Purchase {
                purchase_id,
                buyer_id,
                target,
                expected_price,
            } => Command::Purchase {
                purchase_id,
                buyer_id,
                target,
                expected_price,
                region: None,
            },
            StoredCommand::PurchaseInRegion {
                purchase_id,
                buyer_id,
                target,
                expected_price,
                region,
            } => Command::Purchase {
                purchase_id,
                buyer_id,
                target,
                expected_price,
                region: Some(region),
            },
            StoredCommand::CreateListing {
                listing_id,
                seller_id,
                item_id,
                serial,
                price,
            } => Command::CreateListing {
                listing_id,
                seller_id,
                item_id,
                serial,
                price,
            },
            StoredCommand::CancelListing { listing_id } => Command::CancelListing { listing_id },
            StoredCommand::ResalePurchase {
                purchase_id,
                buyer_id,
                listing_id,
                expected_price,
            } => Command::ResalePurchase {
                purchase_id,
                buyer_id,
                listing_id,
                expected_price,
            },
            StoredCommand::Refund {
                refund_id,
                purchase_id,
            } => Command::Refund {
                refund_id,
                purchase_id,
            },
            StoredCommand::SetPriceFloor {
                kind,
                price,
                effective_from_ms,
            } => Command::SetPriceFloor {
                kind,
                price,
                effective_from_ms,
            },
            StoredCommand::SetRegionalPrices { item_id, prices } => {
                Command::SetRegionalPrices { item_id, prices }
            }
            StoredCommand::StartPriceTest {
                test_id,
                item_id,
                arms,
                ends_at_ms,
                apply_winner,
            } => Command::StartPriceTest {
                test_id,
                item_id,
                arms,
                ends_at_ms,
                apply_winner,
            },
            StoredCommand::RecordExposures {
                test_id,
                batch_id,
                counts,
            } => Command::RecordExposures {
                test_id,
                batch_id,
                counts,
            },
            StoredCommand::EndPriceTest { test_id } => Command::EndPriceTest { test_id },
            StoredCommand::TakeDown { item_id } => Command::TakeDown { item_id },
            StoredCommand::PurchaseCart {
                purchase_id,
                buyer_id,
                lines,
                region,
            } => Command::PurchaseCart {
                purchase_id,
                buyer_id,
                lines,
                region,
            },
        }
    }
}

impl Encode for Command {
    fn encode<E: bincode::enc::Encoder>(
        &self,
        encoder: &mut E,
    ) -> Result<(), bincode::error::EncodeError> {
        StoredCommand::from(self.clone()).encode(encoder)
    }
}

impl<Context> Decode<Context> for Command {
    fn decode<D: bincode::de::Decoder<Context = Context>>(
        decoder: &mut D,
    ) -> Result<Self, bincode::error::DecodeError> {
        StoredCommand::decode(decoder).map(Command::from)
    }
}

bincode::impl_borrow_decode!(Command);

/// Stamped by the API: time and who.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
pub struct CommandMeta {
    pub at_ms: TimestampMs,
    pub actor: Actor,
}

/// Routing keys: the shard of an entity is a pure function of its key.
pub mod keys {
    use super::*;

    /// `prefix` then `id`, in one allocation of their length (`format!`
    /// costs several times as much, and a purchase makes a dozen keys).
    pub fn prefixed(prefix: &str, id: &str) -> String {
        let mut key = String::with_capacity(prefix.len() + id.len());
        key.push_str(prefix);
        key.push_str(id);
        key
    }
    pub fn user(id: &UserId) -> String {
        prefixed("user:", id.as_str())
    }
    pub fn item(id: &ItemId) -> String {
        prefixed("item:", id.as_str())
    }
    pub fn bundle(id: &BundleId) -> String {
        prefixed("bundle:", id.as_str())
    }
    pub fn purchase(id: &PurchaseId) -> String {
        prefixed("purchase:", id.as_str())
    }
    /// The purchase whose key is `key` (made by [`purchase`]), if it is one.
    pub fn purchase_id(key: &str) -> Option<PurchaseId> {
        key.strip_prefix("purchase:")
            .and_then(|id| PurchaseId::parse(id.to_string()).ok())
    }
    pub fn grant(id: &GrantId) -> String {
        prefixed("grant:", id.as_str())
    }
    pub fn listing(id: &ListingId) -> String {
        prefixed("listing:", id.as_str())
    }
    pub fn refund(id: &RefundId) -> String {
        prefixed("refund:", id.as_str())
    }
    pub fn price_test(id: &PriceTestId) -> String {
        prefixed("price-test:", id.as_str())
    }
    /// The takedown of an item (one per item).
    pub fn takedown(id: &ItemId) -> String {
        prefixed("takedown:", id.as_str())
    }
    /// The id of a batch of exposures: its test and batch.
    pub fn exposures(test_id: &PriceTestId, batch_id: &ExposureBatchId) -> String {
        format!("exposures:{test_id}:{batch_id}")
    }
    /// The id of a floor change: its kind and start.
    pub fn price_floor(kind: ItemKind, effective_from_ms: TimestampMs) -> String {
        format!("price-floor:{kind}@{effective_from_ms}")
    }
}

impl Command {
    /// The key whose shard runs this command (its "home").
    pub fn home_key(&self) -> String {
        match self {
            Command::Grant { grant_id, .. } => keys::grant(grant_id),
            Command::PublishItem(definition) => keys::item(&definition.item_id),
            Command::Reprice { item_id, .. }
            | Command::SetOnSale { item_id, .. }
            | Command::SetRegionalPrices { item_id, .. } => keys::item(item_id),
            Command::CreateBundle { bundle_id, .. } => keys::bundle(bundle_id),
            Command::Purchase { purchase_id, .. }
            | Command::ResalePurchase { purchase_id, .. }
            | Command::PurchaseCart { purchase_id, .. } => keys::purchase(purchase_id),
            Command::CreateListing { listing_id, .. } | Command::CancelListing { listing_id } => {
                keys::listing(listing_id)
            }
            Command::Refund { refund_id, .. } => keys::refund(refund_id),
            // One shard orders every floor change (versions are its count).
            Command::SetPriceFloor { .. } => crate::pricing::FLOORS_KEY.to_string(),
            // A test's shard keeps its counts and decides its winner.
            Command::StartPriceTest { test_id, .. }
            | Command::RecordExposures { test_id, .. }
            | Command::EndPriceTest { test_id } => keys::price_test(test_id),
            Command::TakeDown { item_id } => keys::takedown(item_id),
        }
    }

    /// The idempotency key, for commands that carry their own id.
    pub fn idempotency_key(&self) -> Option<String> {
        match self {
            Command::Reprice { .. }
            | Command::SetOnSale { .. }
            | Command::CancelListing { .. }
            | Command::SetRegionalPrices { .. }
            | Command::EndPriceTest { .. } => None,
            Command::RecordExposures {
                test_id, batch_id, ..
            } => Some(keys::exposures(test_id, batch_id)),
            Command::SetPriceFloor {
                kind,
                effective_from_ms,
                ..
            } => Some(keys::price_floor(*kind, *effective_from_ms)),
            _ => Some(self.home_key()),
        }
    }

    /// Whether submitting this command again is the same as submitting it
    /// once, whatever happened to the first: true for the commands the
    /// engine remembers by their id from the moment they are accepted (no
    /// keyed command is refused before that), so a repeat is answered from
    /// the stored outcome or joins the running command. Reprice, sale
    /// toggles and listing cancels are not remembered: a late repeat could
    /// undo a newer change.
    pub fn is_repeatable(&self) -> bool {
        self.idempotency_key().is_some()
    }
}

/// Stable 64-bit FNV-1a: the routing hash (must never change; it places data).
pub fn stable_hash(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= *byte as u64;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// The shard that owns `key` among `shard_count` shards.
pub fn shard_for(key: &str, shard_count: u16) -> ShardId {
    assert!(shard_count > 0, "shard count must be positive");
    ShardId((stable_hash(key.as_bytes()) % shard_count as u64) as u16)
}

// ---------------------------------------------------------------- outcomes

/// Why the core refused a command: a machine code, stable across versions.
///
/// Only what `decide` can answer. Codes of the transport (a missing token,
/// a body too large, read models behind) belong to the HTTP layer, which
/// maps both kinds to statuses in one place.
///
/// Stored inside events by a stable index ([`RejectionCode::stored_index`]),
/// not by variant order: indices 1, 20 and 21 held transport codes that the
/// core never decided, so no log holds them, and they stay reserved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectionCode {
    ValidationFailed,
    Forbidden,
    IdempotencyConflict,
    NotFound,
    ListingUnavailable,
    NotOnSale,
    PurchaserIsSeller,
    PriceChanged,
    AlreadyOwned,
    QuantityLimitReached,
    SoldOut,
    InsufficientFunds,
    NotOwner,
    NotResellable,
    AlreadyListed,
    ResaleHoldActive,
    RefundWindowClosed,
    AlreadyRefunded,
    NotRefundable,
    /// The command's id is older than the idempotency horizon: its outcome
    /// is no longer kept, so it is not run again (never a second effect).
    IdempotencyExpired,
    /// The buyer is over a purchase rate limit: refused before anything was
    /// reserved or charged, and not remembered (the same command sent
    /// after the wait is decided afresh).
    RateLimited,
    /// A publish or reprice under the floor in force for the item's kind.
    BelowPriceFloor,
    /// The item was taken down: it never goes on sale again.
    ItemTakenDown,
}

/// Every code with its stored index and its name.
const REJECTION_CODES: [(RejectionCode, u32, &str); 23] = [
    (RejectionCode::ValidationFailed, 0, "validation_failed"),
    (RejectionCode::Forbidden, 2, "forbidden"),
    (
        RejectionCode::IdempotencyConflict,
        3,
        "idempotency_conflict",
    ),
    (RejectionCode::NotFound, 4, "not_found"),
    (RejectionCode::ListingUnavailable, 5, "listing_unavailable"),
    (RejectionCode::NotOnSale, 6, "not_on_sale"),
    (RejectionCode::PurchaserIsSeller, 7, "purchaser_is_seller"),
    (RejectionCode::PriceChanged, 8, "price_changed"),
    (RejectionCode::AlreadyOwned, 9, "already_owned"),
    (
        RejectionCode::QuantityLimitReached,
        10,
        "quantity_limit_reached",
    ),
    (RejectionCode::SoldOut, 11, "sold_out"),
    (RejectionCode::InsufficientFunds, 12, "insufficient_funds"),
    (RejectionCode::NotOwner, 13, "not_owner"),
    (RejectionCode::NotResellable, 14, "not_resellable"),
    (RejectionCode::AlreadyListed, 15, "already_listed"),
    (RejectionCode::ResaleHoldActive, 16, "resale_hold_active"),
    (
        RejectionCode::RefundWindowClosed,
        17,
        "refund_window_closed",
    ),
    (RejectionCode::AlreadyRefunded, 18, "already_refunded"),
    (RejectionCode::NotRefundable, 19, "not_refundable"),
    (RejectionCode::IdempotencyExpired, 22, "idempotency_expired"),
    (RejectionCode::RateLimited, 23, "rate_limited"),
    (RejectionCode::BelowPriceFloor, 24, "below_price_floor"),
    (RejectionCode::ItemTakenDown, 25, "item_taken_down"),
];

/// The stored indices a decoder accepts (those of [`REJECTION_CODES`]).
const REJECTION_CODE_INDICES: [u32; REJECTION_CODES.len()] = {
    let mut indices = [0; REJECTION_CODES.len()];
    let mut at = 0;
    while at < REJECTION_CODES.len() {
        indices[at] = REJECTION_CODES[at].1;
        at += 1;
    }
    indices
};

impl RejectionCode {
    /// Every code the core decides.
    pub fn all() -> impl Iterator<Item = RejectionCode> {
        REJECTION_CODES.iter().map(|(code, _, _)| *code)
    }

    fn entry(self) -> &'static (RejectionCode, u32, &'static str) {
        REJECTION_CODES
            .iter()
            .find(|(code, _, _)| *code == self)
            .expect("every code is listed once")
    }

    pub fn as_str(self) -> &'static str {
        self.entry().2
    }

    /// The index stored in events (`schemas/events.md` §2.2).
    pub fn stored_index(self) -> u32 {
        self.entry().1
    }

    /// The code stored as `index`, if the core ever decides it.
    pub fn from_stored_index(index: u32) -> Option<Self> {
        REJECTION_CODES
            .iter()
            .find(|(_, stored, _)| *stored == index)
            .map(|(code, _, _)| *code)
    }
}

impl Encode for RejectionCode {
    fn encode<E: bincode::enc::Encoder>(
        &self,
        encoder: &mut E,
    ) -> Result<(), bincode::error::EncodeError> {
        // The same bytes as a derived enum's variant index.
        self.stored_index().encode(encoder)
    }
}

impl<Context> Decode<Context> for RejectionCode {
    fn decode<D: bincode::de::Decoder<Context = Context>>(
        decoder: &mut D,
    ) -> Result<Self, bincode::error::DecodeError> {
        let index = u32::decode(decoder)?;
        Self::from_stored_index(index).ok_or(bincode::error::DecodeError::UnexpectedVariant {
            type_name: "RejectionCode",
            allowed: &bincode::error::AllowedEnumVariants::Allowed(&REJECTION_CODE_INDICES),
            found: index,
        })
    }
}

bincode::impl_borrow_decode!(RejectionCode);

/// A refusal with its machine code and a lowercase, specific detail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
pub struct Rejection {
    pub code: RejectionCode,
    pub detail: String,
}

impl Rejection {
    pub fn new(code: RejectionCode, detail: impl Into<String>) -> Self {
        Self {
            code,
            detail: detail.into(),
        }
    }
}

/// What a successful command produced (the API renders it with the command).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
pub enum Success {
    Granted {
        balance_after: i64,
    },
    ItemPublished,
    ItemUpdated {
        price: i64,
        on_sale: bool,
    },
    BundleCreated,
    Purchased {
        target: PurchaseTarget,
        price: i64,
        serial: Option<u32>,
        granted_items: Vec<ItemId>,
        balance_after: i64,
    },
    ListingCreated,
    ListingCancelled,
    ResalePurchased {
        item_id: ItemId,
        serial: u32,
        price: i64,
        seller_id: UserId,
        balance_after: i64,
    },
    Refunded {
        purchase_id: PurchaseId,
        amount: i64,
    },
    /// An item's regional prices, as set.
    RegionalPricesSet {
        price: i64,
        prices: Vec<(Region, i64)>,
    },
    /// A price test runs.
    PriceTestStarted,
    /// A batch of exposures counted: each arm's exposures so far.
    ExposuresRecorded {
        exposures: Vec<u64>,
    },
    /// A price test ended: its winner (if any arm was shown) and the price
    /// sent to the item, if the winner is applied.
    PriceTestEnded {
        winner: Option<u8>,
        applied_price: Option<i64>,
    },
    /// A floor change, in force on every shard.
    PriceFloorSet {
        kind: ItemKind,
        version: u32,
        price: i64,
        effective_from_ms: TimestampMs,
    },
    /// An item taken down: off sale for good, `listings_ended` of its resale
    /// listings ended; its escrowed purchases are being refunded on
    /// `shard_count` shards (progress: the takedown's read model).
    TakenDown {
        item_id: ItemId,
        listings_ended: u32,
        shard_count: u16,
    },
    /// A cart paid in one debit of `total`: every line, in the cart's order.
    CartPurchased {
        lines: Vec<CartLinePurchased>,
        total: i64,
        balance_after: i64,
    },
}

/// One paid line of a cart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
pub struct CartLinePurchased {
    /// The line's own purchase id ([`cart_line_id`]).
    pub purchase_id: PurchaseId,
    pub target: PurchaseTarget,
    pub price: i64,
    pub serial: Option<u32>,
    pub granted_items: Vec<ItemId>,
}

/// A point in one shard's log.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, Encode, Decode,
)]
pub struct ShardPosition {
    pub shard: ShardId,
    pub sequence: u64,
}

/// The final answer to a command, remembered for idempotent replays.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Completion {
    pub result: Result<Success, Rejection>,
    /// Log positions that a read must have seen to reflect this command.
    pub positions: Vec<ShardPosition>,
    /// Messages the command sent that still act after it completed (serial
    /// confirmation, settlement, refund credit): a read must also have seen
    /// their consumption.
    pub deliveries: Vec<DeliveryMark>,
    /// For a `rate_limited` refusal: how long until the buyer's limit lets
    /// the same request through (the `Retry-After` of the answer). Never
    /// stored with a completion: a rate-limited command is not remembered,
    /// and `command_withdrawn` carries the wait itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

impl Completion {
    /// A completion that carries no wait (every stored one).
    pub fn new(
        result: Result<Success, Rejection>,
        positions: Vec<ShardPosition>,
        deliveries: Vec<DeliveryMark>,
    ) -> Self {
        Self {
            result,
            positions,
            deliveries,
            retry_after_ms: None,
        }
    }
}

// Stored as it always was: the result, the positions and the deliveries.
// The wait of a rate-limited refusal is never stored in a completion.
impl Encode for Completion {
    fn encode<E: bincode::enc::Encoder>(
        &self,
        encoder: &mut E,
    ) -> Result<(), bincode::error::EncodeError> {
        self.result.encode(encoder)?;
        self.positions.encode(encoder)?;
        self.deliveries.encode(encoder)
    }
}

impl<Context> Decode<Context> for Completion {
    fn decode<D: bincode::de::Decoder<Context = Context>>(
        decoder: &mut D,
    ) -> Result<Self, bincode::error::DecodeError> {
        Ok(Self::new(
            Decode::decode(decoder)?,
            Decode::decode(decoder)?,
            Decode::decode(decoder)?,
        ))
    }
}

bincode::impl_borrow_decode!(Completion);

/// "Message `sequence` from `from` to `to` has been consumed." The receiver
/// logs `message_received` after the effects of the message, so once that
/// event is projected, so are the effects.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, Encode, Decode,
)]
pub struct DeliveryMark {
    pub from: ShardId,
    pub to: ShardId,
    pub sequence: u64,
}

/// Everything a read must have seen to reflect a command (read-your-writes).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadPosition {
    pub positions: Vec<ShardPosition>,
    pub deliveries: Vec<DeliveryMark>,
}

impl Completion {
    pub fn read_position(&self) -> ReadPosition {
        ReadPosition {
            positions: self.positions.clone(),
            deliveries: self.deliveries.clone(),
        }
    }
}

// ---------------------------------------------------------------- sagas

/// What the home shard learned when the sold thing was reserved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    pub price: i64,
    pub creator_id: UserId,
    pub sale: SaleKind,
    /// The pricing of a primary item sale (its price rule, floor and fee
    /// policy); `None` for bundles, resales and sales reserved before
    /// pricing terms existed (the configured flat split).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terms: Option<SaleTerms>,
}

/// A reservation's sale as stored: the kinds of [`SaleKind`] in its order,
/// then a sale with pricing terms (appended, so reservations stored
/// before terms existed read as they were written).
#[derive(Encode, Decode)]
enum StoredSale {
    Item {
        item_id: ItemId,
        serial: Option<u32>,
    },
    Bundle {
        bundle_id: BundleId,
        item_ids: Vec<ItemId>,
    },
    Resale {
        listing_id: ListingId,
        item_id: ItemId,
        serial: u32,
        seller_id: UserId,
    },
    Priced {
        terms: SaleTerms,
        sale: SaleKind,
    },
}

impl Encode for Reservation {
    fn encode<E: bincode::enc::Encoder>(
        &self,
        encoder: &mut E,
    ) -> Result<(), bincode::error::EncodeError> {
        self.price.encode(encoder)?;
        self.creator_id.encode(encoder)?;
        match &self.terms {
            // The same bytes as `StoredSale`'s first variants.
            None => self.sale.encode(encoder),
            Some(terms) => {
                // `StoredSale::Priced`, by reference.
                3u32.encode(encoder)?;
                terms.encode(encoder)?;
                self.sale.encode(encoder)
            }
        }
    }
}

impl<Context> Decode<Context> for Reservation {
    fn decode<D: bincode::de::Decoder<Context = Context>>(
        decoder: &mut D,
    ) -> Result<Self, bincode::error::DecodeError> {
        let price = Decode::decode(decoder)?;
        let creator_id = Decode::decode(decoder)?;
        let (sale, terms) = match StoredSale::decode(decoder)? {
            StoredSale::Item { item_id, serial } => (SaleKind::Item { item_id, serial }, None),
            StoredSale::Bundle {
                bundle_id,
                item_ids,
            } => (
                SaleKind::Bundle {
                    bundle_id,
                    item_ids,
                },
                None,
            ),
            StoredSale::Resale {
                listing_id,
                item_id,
                serial,
                seller_id,
            } => (
                SaleKind::Resale {
                    listing_id,
                    item_id,
                    serial,
                    seller_id,
                },
                None,
            ),
            StoredSale::Priced { terms, sale } => (sale, Some(terms)),
        };
        Ok(Self {
            price,
            creator_id,
            sale,
            terms,
        })
    }
}

bincode::impl_borrow_decode!(Reservation);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
pub enum SaleKind {
    /// A primary sale of one item; `serial` for a Limited.
    Item {
        item_id: ItemId,
        serial: Option<u32>,
    },
    Bundle {
        bundle_id: BundleId,
        item_ids: Vec<ItemId>,
    },
    Resale {
        listing_id: ListingId,
        item_id: ItemId,
        serial: u32,
        seller_id: UserId,
    },
}

/// A bundle item as its own shard describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
pub struct ItemDescription {
    pub item_id: ItemId,
    pub creator_id: UserId,
    pub limited: bool,
}

/// Where a running command stands on its home shard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
pub enum Progress {
    /// Grant: waiting for the user's shard to credit the wallet.
    Crediting,
    /// Bundle creation: waiting for item descriptions.
    Describing {
        answers: Vec<Result<ItemDescription, ItemId>>,
        expected: u32,
    },
    /// Purchase: waiting for the buyer's shard to pay for the reserved
    /// sale (or for the refusal of the item's, bundle's or listing's shard).
    Reserving,
    /// Purchase, in logs written before the reservation travelled to the
    /// buyer's shard: reserved, waiting for the buyer's funds; once
    /// completed, paid (as `Paid`).
    Debiting { reservation: Reservation },
    /// Listing: waiting for the item shard.
    Listing,
    /// Listing cancel in flight.
    Cancelling,
    /// Refund: waiting for the purchase's home shard.
    Refunding,
    /// Purchase: completed and paid for this reservation (what a refund
    /// reads). Appended with `PurchaseCompleted`.
    Paid { reservation: Reservation },
    /// A floor change: set on its home shard, waiting for every other
    /// shard to hold it (`acknowledged` of them so far).
    ReplicatingFloor { acknowledged: u32 },
    /// A price test: waiting for the item's shard to start pricing it.
    StartingTest,
    /// A takedown: waiting for the item's shard to take the item off sale.
    TakingDown,
    /// A cart: each line's answer from its item's or bundle's shard as it
    /// arrives (`None`: not yet). Once every line is reserved, waiting for
    /// the buyer's payment. Appended.
    Cart {
        answers: Vec<Option<Result<Reservation, Rejection>>>,
    },
}

impl Progress {
    /// The reservation a purchase holds: reserved and waiting for the buyer
    /// (older logs) or paid.
    pub fn reservation(&self) -> Option<&Reservation> {
        match self {
            Progress::Debiting { reservation } | Progress::Paid { reservation } => {
                Some(reservation)
            }
            _ => None,
        }
    }
}

/// What a purchase asks a shard to reserve (`Message::ReserveSale`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
pub enum SaleRequest {
    /// On the item's shard: the item (a serial, for a Limited).
    Item(ItemId),
    /// On the bundle's shard: a quote (nothing to reserve).
    Bundle(BundleId),
    /// On the listing's home shard, which forwards it as `ListingOnItem`.
    Listing(ListingId),
    /// On the listed item's shard: the listing.
    ListingOnItem {
        listing_id: ListingId,
        item_id: ItemId,
    },
    /// On the item's shard: the item, at its price in the buyer's region
    /// (appended; `Item` is the request without a region).
    ItemInRegion { item_id: ItemId, region: Region },
}

impl SaleRequest {
    /// The key of what the request names, which places it on its shard
    /// (and which the per-item rate limit counts requests against).
    pub fn subject_key(&self) -> String {
        match self {
            SaleRequest::Item(item_id)
            | SaleRequest::ListingOnItem { item_id, .. }
            | SaleRequest::ItemInRegion { item_id, .. } => keys::item(item_id),
            SaleRequest::Bundle(bundle_id) => keys::bundle(bundle_id),
            SaleRequest::Listing(listing_id) => keys::listing(listing_id),
        }
    }
}

/// The refund state of a completed purchase, on the purchase's home shard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
pub enum RefundProgress {
    /// Escrow freeze requested from the creator's shard.
    Freezing {
        refund_id: RefundId,
        reply_to: ShardId,
    },
    /// Serial revocation requested from the item's shard.
    Revoking {
        refund_id: RefundId,
        reply_to: ShardId,
    },
    Refunded {
        refund_id: RefundId,
    },
    /// The refund was refused; the purchase may be refunded again later.
    Abandoned,
}

// ---------------------------------------------------------------- messages

/// A message between shards. It is persisted atomically with the sender's
/// events and consumed exactly once, in order per (sender, receiver).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
pub enum Message {
    CreditGrant {
        grant_id: GrantId,
        user_id: UserId,
        amount: i64,
    },
    GrantCredited {
        grant_id: GrantId,
        result: Result<i64, Rejection>,
        position: ShardPosition,
    },

    DescribeItem {
        bundle_id: BundleId,
        item_id: ItemId,
    },
    ItemDescribed {
        bundle_id: BundleId,
        answer: Result<ItemDescription, ItemId>,
    },

    ReserveItem {
        purchase_id: PurchaseId,
        buyer_id: UserId,
        item_id: ItemId,
        expected_price: i64,
        at_ms: TimestampMs,
    },
    QuoteBundle {
        purchase_id: PurchaseId,
        buyer_id: UserId,
        bundle_id: BundleId,
        expected_price: i64,
    },
    /// To the listing's home shard, which forwards it to the item's shard.
    ReserveListing {
        purchase_id: PurchaseId,
        buyer_id: UserId,
        listing_id: ListingId,
        expected_price: i64,
        reply_to: ShardId,
    },
    ReserveListingOnItem {
        purchase_id: PurchaseId,
        buyer_id: UserId,
        listing_id: ListingId,
        item_id: ItemId,
        expected_price: i64,
        reply_to: ShardId,
    },
    Reserved {
        purchase_id: PurchaseId,
        result: Result<Reservation, Rejection>,
    },

    DebitBuyer {
        purchase_id: PurchaseId,
        buyer_id: UserId,
        amount: i64,
        grant_items: Vec<ItemId>,
        all_or_nothing: bool,
        at_ms: TimestampMs,
    },
    BuyerDebited {
        purchase_id: PurchaseId,
        result: Result<(i64, Vec<ItemId>), Rejection>,
        position: ShardPosition,
    },

    ConfirmReservation {
        purchase_id: PurchaseId,
        item_id: ItemId,
        buyer_id: UserId,
        at_ms: TimestampMs,
    },
    CancelReservation {
        purchase_id: PurchaseId,
        item_id: ItemId,
    },
    SettleSale {
        purchase_id: PurchaseId,
        creator_id: UserId,
        cleared: i64,
        creator_share: i64,
        platform_fee: i64,
        policy_version: u16,
        resale: bool,
        at_ms: TimestampMs,
    },
    CreditSeller {
        purchase_id: PurchaseId,
        seller_id: UserId,
        amount: i64,
    },

    CreateListingOnItem {
        listing_id: ListingId,
        seller_id: UserId,
        item_id: ItemId,
        serial: u32,
        price: i64,
        at_ms: TimestampMs,
    },
    ListingResult {
        listing_id: ListingId,
        result: Result<(), Rejection>,
        position: ShardPosition,
    },
    CancelListingOnItem {
        listing_id: ListingId,
        item_id: ItemId,
        actor: Actor,
    },
    CancelResult {
        listing_id: ListingId,
        result: Result<(), Rejection>,
        position: ShardPosition,
    },

    RefundPurchase {
        refund_id: RefundId,
        purchase_id: PurchaseId,
    },
    RefundResult {
        refund_id: RefundId,
        result: Result<i64, Rejection>,
    },
    FreezeEscrow {
        purchase_id: PurchaseId,
        creator_id: UserId,
    },
    FreezeResult {
        purchase_id: PurchaseId,
        result: Result<(), Rejection>,
    },
    RevokeSerial {
        purchase_id: PurchaseId,
        item_id: ItemId,
        serial: u32,
        owner_id: UserId,
    },
    RevokeResult {
        purchase_id: PurchaseId,
        result: Result<(), Rejection>,
    },
    UnfreezeEscrow {
        purchase_id: PurchaseId,
        creator_id: UserId,
    },
    ReverseEscrow {
        purchase_id: PurchaseId,
        refund_id: RefundId,
        creator_id: UserId,
    },
    RefundBuyer {
        purchase_id: PurchaseId,
        refund_id: RefundId,
        buyer_id: UserId,
        amount: i64,
        revoke_items: Vec<ItemId>,
    },
    /// A refund finished on the purchase's home shard; `deliveries` are the
    /// escrow reversal and buyer credit it sent. (Appended: older logs hold
    /// `RefundResult` for successes too.)
    RefundSettled {
        refund_id: RefundId,
        amount: i64,
        deliveries: Vec<DeliveryMark>,
    },

    // A purchase in three hops (appended; the variants above stay for
    // older logs and messages in flight): the shard that reserves the sale
    // sends the reservation on to the buyer's shard, which answers the
    // purchase's home shard.
    /// To the shard of what `request` names; a refusal goes back to `home`
    /// as `Reserved`, a reservation on to the buyer's shard as `ChargeBuyer`.
    ReserveSale {
        purchase_id: PurchaseId,
        buyer_id: UserId,
        request: SaleRequest,
        expected_price: i64,
        at_ms: TimestampMs,
        home: ShardId,
    },
    /// To the buyer's shard: pay for `reservation` (and get its items).
    ChargeBuyer {
        purchase_id: PurchaseId,
        buyer_id: UserId,
        reservation: Reservation,
        at_ms: TimestampMs,
        home: ShardId,
    },
    /// To the purchase's home shard: the buyer paid (balance after, items
    /// granted) at `position`, or refused.
    PurchasePaid {
        purchase_id: PurchaseId,
        reservation: Reservation,
        result: Result<(i64, Vec<ItemId>), Rejection>,
        position: ShardPosition,
    },

    // Refund answers that report the participant's position (appended; the
    // `RevokeResult` and `RefundSettled` above stay for older logs and
    // messages in flight), so that a read with the refund's `?after=` sees
    // the serial back in the pool and the item's sold count.
    /// From the item's shard: the serial was revoked (covered by
    /// `position`), or not.
    SerialRevokeAnswered {
        purchase_id: PurchaseId,
        result: Result<(), Rejection>,
        position: ShardPosition,
    },
    /// A refund finished on the purchase's home shard: `deliveries` are the
    /// escrow reversal and buyer credit it sent, `positions` the
    /// participants' positions it heard of (the serial's revocation).
    RefundCompleted {
        refund_id: RefundId,
        amount: i64,
        deliveries: Vec<DeliveryMark>,
        positions: Vec<ShardPosition>,
    },

    /// Home → buyer's shard, first hop of a purchase when purchase rate
    /// limits are on: the buyer's shard checks them before anything is
    /// reserved and sends `ReserveSale` on (or answers `SaleRateLimited`).
    AdmitSale {
        purchase_id: PurchaseId,
        buyer_id: UserId,
        request: SaleRequest,
        expected_price: i64,
        at_ms: TimestampMs,
        home: ShardId,
    },
    /// Buyer's shard → home: the purchase is over a rate limit; the buyer
    /// may send it again in `retry_after_ms`.
    SaleRateLimited {
        purchase_id: PurchaseId,
        rejection: Rejection,
        retry_after_ms: u64,
    },

    /// From the floors' home shard to every other shard: hold this floor
    /// version (answered with `PriceFloorHeld`).
    ReplicatePriceFloor {
        key: String,
        kind: ItemKind,
        version: u32,
        price: i64,
        effective_from_ms: TimestampMs,
    },
    /// The floor change `key` (version `version`) is held by the sender,
    /// at `position`.
    PriceFloorHeld {
        key: String,
        version: u32,
        position: ShardPosition,
    },

    /// Test's shard → item's shard: price the item by these arms until
    /// `ends_at_ms` (if `actor` may, and the item can be tested).
    StartTestOnItem {
        test_id: PriceTestId,
        item_id: ItemId,
        arms: Vec<i64>,
        ends_at_ms: TimestampMs,
        actor: Actor,
        at_ms: TimestampMs,
    },
    /// Item's shard → test's shard: the test runs (the item's creator), at
    /// `position`, or why not.
    TestStartedOnItem {
        test_id: PriceTestId,
        result: Result<UserId, Rejection>,
        position: ShardPosition,
    },
    /// Purchase's shard → test's shard: a purchase paid the price of `arm`.
    PriceTestSale {
        test_id: PriceTestId,
        purchase_id: PurchaseId,
        arm: u8,
        price: i64,
    },
    /// Test's shard → item's shard: the test ended; the item is priced
    /// `apply_price` from now on, if set (and still allowed).
    CloseTestOnItem {
        test_id: PriceTestId,
        item_id: ItemId,
        apply_price: Option<i64>,
        at_ms: TimestampMs,
    },

    /// Takedown's shard → item's shard: take the item off sale for good.
    TakeDownItem { item_id: ItemId, at_ms: TimestampMs },
    /// Item's shard → takedown's shard: the item is off sale (with how many
    /// listings ended), or the takedown is refused.
    ItemTakenDownAnswer {
        item_id: ItemId,
        result: Result<u32, Rejection>,
        position: ShardPosition,
    },
    /// Takedown's shard → every shard: refund the item's sales homed there.
    RefundItemSales { item_id: ItemId },
    /// A shard → itself: the next step of a takedown's scan.
    ContinueTakedownScan { item_id: ItemId },
    /// A shard → itself: a purchase in flight at the takedown was paid;
    /// refund it.
    RefundTakenDownSale {
        item_id: ItemId,
        purchase_id: PurchaseId,
    },
    /// A shard → takedown's shard: every sale of the item homed there is
    /// resolved.
    TakedownShardDone {
        item_id: ItemId,
        tally: crate::takedown::TakedownTally,
        /// Purchases recorded after the shard's first report (cart lines):
        /// their tally adds to the total; the shard was counted already.
        late: bool,
    },
    // Carts (appended).
    /// Cart's home → buyer's shard, first hop of a cart when purchase rate
    /// limits are on: the cart counts as one purchase request; admitted,
    /// the buyer's shard sends each line's `ReserveCartLine` (or answers
    /// `SaleRateLimited`).
    AdmitCart {
        cart_id: PurchaseId,
        buyer_id: UserId,
        requests: Vec<(SaleRequest, i64)>,
        at_ms: TimestampMs,
        home: ShardId,
    },
    /// To the shard of what `request` names: reserve line `line` of cart
    /// `cart_id` (as purchase `purchase_id`, the line's own id) and answer
    /// `home` with `CartLineReserved`.
    ReserveCartLine {
        cart_id: PurchaseId,
        line: u8,
        purchase_id: PurchaseId,
        buyer_id: UserId,
        request: SaleRequest,
        expected_price: i64,
        at_ms: TimestampMs,
        home: ShardId,
    },
    /// To the cart's home: line `line` reserved, or refused.
    CartLineReserved {
        cart_id: PurchaseId,
        line: u8,
        result: Result<Reservation, Rejection>,
    },
    /// Cart's home → buyer's shard: every line is reserved; pay their sum
    /// in one debit (and get their items), then answer `CartPaid`.
    ChargeCart {
        cart_id: PurchaseId,
        buyer_id: UserId,
        lines: Vec<Reservation>,
        at_ms: TimestampMs,
    },
    /// Buyer's shard → cart's home: paid (balance after, items granted per
    /// line) at `position`, or refused.
    CartPaid {
        cart_id: PurchaseId,
        result: Result<(i64, Vec<Vec<ItemId>>), Rejection>,
        position: ShardPosition,
    },
    /// Cart's home → a line's home (the shard of its purchase id): the
    /// line was paid as part of cart `cart_id`; remember it as a completed
    /// purchase (`command`, accepted with `meta`), which a refund reads.
    RecordCartLine {
        cart_id: PurchaseId,
        command: Box<Command>,
        meta: CommandMeta,
        success: Success,
        reservation: Reservation,
    },
}

// ---------------------------------------------------------------- events

/// Why a listing left the book.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
pub enum ListingEndReason {
    Cancelled,
    SerialMoved,
    /// Its item was taken down.
    TakenDown,
}

/// An immutable fact in a shard's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
pub enum Event {
    MessageReceived {
        from: ShardId,
        sequence: u64,
    },
    MessageSent {
        to: ShardId,
        sequence: u64,
        /// Shared with the outbox entry, the envelope and the receiver's input
        /// (encoded as the message itself).
        message: Arc<Message>,
    },

    CommandAccepted {
        key: String,
        fingerprint: u64,
        command: Command,
        meta: CommandMeta,
    },
    CommandProgressed {
        key: String,
        progress: Progress,
        position: Option<ShardPosition>,
    },
    CommandCompleted {
        key: String,
        completion: Completion,
    },

    CurrencyGranted {
        grant_id: GrantId,
        user_id: UserId,
        amount: i64,
        balance_after: i64,
        postings: Vec<Posting>,
    },

    ItemPublished {
        definition: ItemDefinition,
    },
    ItemRepriced {
        item_id: ItemId,
        price: i64,
    },
    ItemSaleToggled {
        item_id: ItemId,
        on_sale: bool,
    },
    BundleCreated {
        bundle_id: BundleId,
        creator_id: UserId,
        name: String,
        item_ids: Vec<ItemId>,
        price: i64,
    },

    SerialReserved {
        item_id: ItemId,
        serial: u32,
        purchase_id: PurchaseId,
        buyer_id: UserId,
    },
    ReservationCancelled {
        item_id: ItemId,
        serial: u32,
        purchase_id: PurchaseId,
    },
    SerialSold {
        item_id: ItemId,
        serial: u32,
        purchase_id: PurchaseId,
        buyer_id: UserId,
        at_ms: TimestampMs,
    },

    BuyerDebited {
        purchase_id: PurchaseId,
        buyer_id: UserId,
        amount: i64,
        granted_items: Vec<ItemId>,
        balance_after: i64,
        at_ms: TimestampMs,
        postings: Vec<Posting>,
    },
    SaleSettled {
        purchase_id: PurchaseId,
        creator_id: UserId,
        resale: bool,
        cleared: i64,
        creator_share: i64,
        platform_fee: i64,
        policy_version: u16,
        release_at_ms: TimestampMs,
        postings: Vec<Posting>,
    },
    SellerCredited {
        purchase_id: PurchaseId,
        seller_id: UserId,
        amount: i64,
        balance_after: i64,
        postings: Vec<Posting>,
    },
    EscrowReleased {
        purchase_id: PurchaseId,
        creator_id: UserId,
        amount: i64,
        postings: Vec<Posting>,
    },

    ListingCreated {
        listing_id: ListingId,
        item_id: ItemId,
        serial: u32,
        seller_id: UserId,
        price: i64,
    },
    ListingEnded {
        listing_id: ListingId,
        item_id: ItemId,
        serial: u32,
        reason: ListingEndReason,
    },
    ListingReserved {
        listing_id: ListingId,
        item_id: ItemId,
        purchase_id: PurchaseId,
    },
    ListingReservationCancelled {
        listing_id: ListingId,
        item_id: ItemId,
        purchase_id: PurchaseId,
    },
    SerialTransferred {
        item_id: ItemId,
        serial: u32,
        listing_id: ListingId,
        purchase_id: PurchaseId,
        from_user_id: UserId,
        to_user_id: UserId,
        price: i64,
        at_ms: TimestampMs,
    },
    ListingRegistered {
        listing_id: ListingId,
        item_id: ItemId,
    },

    RefundProgressed {
        purchase_id: PurchaseId,
        progress: RefundProgress,
    },
    EscrowFrozen {
        purchase_id: PurchaseId,
    },
    EscrowUnfrozen {
        purchase_id: PurchaseId,
    },
    EscrowReversed {
        purchase_id: PurchaseId,
        refund_id: RefundId,
        creator_id: UserId,
        creator_share: i64,
        platform_fee: i64,
        postings: Vec<Posting>,
    },
    SerialRevoked {
        item_id: ItemId,
        serial: u32,
        purchase_id: PurchaseId,
        owner_id: UserId,
    },
    BuyerRefunded {
        purchase_id: PurchaseId,
        refund_id: RefundId,
        buyer_id: UserId,
        amount: i64,
        revoked_items: Vec<ItemId>,
        balance_after: i64,
        postings: Vec<Posting>,
    },

    /// A paid purchase completed: `CommandCompleted` that also records what
    /// was sold, for refunds (appended; replaces `command_progressed` +
    /// `command_completed` on a purchase's home shard).
    PurchaseCompleted {
        key: String,
        completion: Completion,
        reservation: Reservation,
    },

    /// The clock forgot completed commands past their retention: the
    /// `count` oldest of those kept for the idempotency horizon (each with
    /// a base time before `before_ms`) and the `paid_count` oldest paid
    /// purchases, kept while they can be refunded (each before
    /// `paid_before_ms`). Which records these are follows from the state,
    /// so the event is the same size however many it forgets. Ids that
    /// carry their creation time and are dated before `before_ms` are
    /// refused from then on (`idempotency_expired`).
    CommandsForgotten {
        before_ms: TimestampMs,
        count: u32,
        paid_before_ms: TimestampMs,
        paid_count: u32,
    },

    /// On the buyer's shard: a purchase request of `buyer_id` for `subject`
    /// (the item, bundle or listing key) admitted under the purchase rate
    /// limits at `at_ms`. Admissions before `expire_before_ms` no longer
    /// count toward any limit and are dropped from the state.
    PurchaseAdmitted {
        buyer_id: UserId,
        subject: String,
        at_ms: TimestampMs,
        expire_before_ms: TimestampMs,
    },

    /// On a purchase's home shard: the purchase was refused by the buyer's
    /// rate limits before anything was reserved. The caller is answered
    /// with `completion` (a `rate_limited` refusal) and told to wait
    /// `retry_after_ms`; the command is then forgotten, so the same id sent
    /// again is decided afresh (`rate_limited` is never remembered).
    CommandWithdrawn {
        key: String,
        completion: Completion,
        retry_after_ms: u64,
    },

    /// On the floors' home shard: version `version` of the floor of `kind`
    /// is `price` from `effective_from_ms` on. The authoritative record of
    /// a floor change (read models and analysts read this one).
    PriceFloorSet {
        kind: ItemKind,
        version: u32,
        price: i64,
        effective_from_ms: TimestampMs,
    },
    /// On every other shard: its copy of a floor version, which publishes
    /// and reprices decided here are held to from now on.
    PriceFloorReplicated {
        kind: ItemKind,
        version: u32,
        price: i64,
        effective_from_ms: TimestampMs,
    },

    /// On the item's shard: the item's prices per region from now on
    /// (replacing any before; empty: none), each at least 30 % of its base
    /// price.
    RegionalPricesSet {
        item_id: ItemId,
        prices: Vec<(Region, i64)>,
    },

    /// On the item's shard: buyers are priced by the test's arms until
    /// `ends_at_ms` (see [`crate::pricing::test_arm`]).
    PriceTestStarted {
        test_id: PriceTestId,
        item_id: ItemId,
        arms: Vec<i64>,
        ends_at_ms: TimestampMs,
    },
    /// On the test's shard: the test is accepted and counts here (sales
    /// may arrive before the item's shard's answer).
    PriceTestOpened {
        test_id: PriceTestId,
        item_id: ItemId,
        arms: Vec<i64>,
        ends_at_ms: TimestampMs,
        apply_winner: bool,
    },
    /// On the test's shard: the item's shard prices by the test; it runs
    /// until its end time (or an `EndPriceTest`).
    PriceTestRunning {
        test_id: PriceTestId,
        creator_id: UserId,
    },
    /// On the test's shard: the item's shard refused the test; it is
    /// forgotten (its command's refusal is remembered).
    PriceTestAborted {
        test_id: PriceTestId,
    },
    /// On the test's shard: a batch of exposures; `exposures` is each
    /// arm's total after it.
    PriceTestExposed {
        test_id: PriceTestId,
        batch: Vec<u64>,
        exposures: Vec<u64>,
    },
    /// On the test's shard: a purchase at `arm`'s price; `purchases` and
    /// `revenue` are that arm's totals after it.
    PriceTestSold {
        test_id: PriceTestId,
        purchase_id: PurchaseId,
        arm: u8,
        price: i64,
        purchases: u64,
        revenue: i64,
    },
    /// On the test's shard: the test ended (by its time or a command) with
    /// `winner`, the arm that earned most per exposure; `applied_price` is
    /// sent to the item when the winner is applied.
    PriceTestEnded {
        test_id: PriceTestId,
        winner: Option<u8>,
        applied_price: Option<i64>,
    },
    /// On the item's shard: the item is no longer priced by the test;
    /// `applied_price` is its price from now on, if the winner was applied
    /// (not when under the floor in force or its regional prices' 30 %).
    PriceTestClosed {
        test_id: PriceTestId,
        item_id: ItemId,
        applied_price: Option<i64>,
    },
    /// On the item's shard: the item was taken down; it is off sale for
    /// good (its open listings ended, each with `ListingEnded`, before).
    ItemTakenDown {
        item_id: ItemId,
        at_ms: TimestampMs,
    },
    /// On the takedown's shard: the item is off sale; `shard_count` shards
    /// now refund its sales.
    TakedownRefunding {
        item_id: ItemId,
        listings_ended: u32,
        shard_count: u16,
    },
    /// On a shard: a takedown refunds the item's sales homed here.
    TakedownScanStarted {
        item_id: ItemId,
        reply_to: ShardId,
    },
    /// On a shard: one step of a takedown's scan examined the purchase
    /// records up to `cursor` (`scanned`: all of them) and found
    /// `in_flight` purchases of the item not yet paid or refused.
    TakedownScanned {
        item_id: ItemId,
        cursor: Option<String>,
        scanned: bool,
        in_flight: Vec<PurchaseId>,
    },
    /// On a shard: a takedown started the refund of a purchase.
    TakedownRefundStarted {
        item_id: ItemId,
        purchase_id: PurchaseId,
        refund_id: RefundId,
    },
    /// On a shard: a purchase in flight at the takedown was paid (its
    /// refund follows) or not.
    TakedownPurchaseFinished {
        item_id: ItemId,
        purchase_id: PurchaseId,
        paid: bool,
    },
    /// On a shard: what became of one purchase of a taken-down item.
    TakedownSaleResolved {
        item_id: ItemId,
        purchase_id: PurchaseId,
        outcome: crate::takedown::TakedownOutcome,
    },
    /// On a shard: every sale of the item homed here is resolved, with
    /// this tally (sent to the takedown's shard).
    TakedownScanFinished {
        item_id: ItemId,
        tally: crate::takedown::TakedownTally,
    },
    /// On the takedown's shard: `shard` reported its tally; `tally` is the
    /// total so far, of `shards_reported` shards.
    TakedownShardReported {
        item_id: ItemId,
        shard: ShardId,
        shard_tally: crate::takedown::TakedownTally,
        tally: crate::takedown::TakedownTally,
        shards_reported: u16,
    },
    /// On a shard: a purchase of a taken-down item was recorded after the
    /// takedown's scan passed it (a cart's line, recorded once the cart is
    /// paid): it is refunded next, and reported to `reply_to` late if the
    /// scan had finished.
    TakedownLateSale {
        item_id: ItemId,
        purchase_id: PurchaseId,
        reply_to: ShardId,
    },
    /// On a purchase's shard: another refund of a purchase the takedown is
    /// about to refund runs; the takedown waits for it to end.
    TakedownRefundAwaited {
        item_id: ItemId,
        purchase_id: PurchaseId,
    },
}

impl Event {
    /// The command this event answers and how: `CommandCompleted`,
    /// `PurchaseCompleted` and `CommandWithdrawn` (answered, then forgotten).
    pub fn completion(&self) -> Option<(&str, &Completion)> {
        match self {
            Event::CommandCompleted { key, completion }
            | Event::PurchaseCompleted {
                key, completion, ..
            }
            | Event::CommandWithdrawn {
                key, completion, ..
            } => Some((key, completion)),
            _ => None,
        }
    }

    /// Stable type name, recorded in the envelope and used by analysts.
    pub fn type_name(&self) -> &'static str {
        match self {
            Event::MessageReceived { .. } => "message_received",
            Event::MessageSent { .. } => "message_sent",
            Event::CommandAccepted { .. } => "command_accepted",
            Event::CommandProgressed { .. } => "command_progressed",
            Event::CommandCompleted { .. } => "command_completed",
            Event::PurchaseCompleted { .. } => "purchase_completed",
            Event::CurrencyGranted { .. } => "currency_granted",
            Event::ItemPublished { .. } => "item_published",
            Event::ItemRepriced { .. } => "item_repriced",
            Event::ItemSaleToggled { .. } => "item_sale_toggled",
            Event::BundleCreated { .. } => "bundle_created",
            Event::SerialReserved { .. } => "serial_reserved",
            Event::ReservationCancelled { .. } => "reservation_cancelled",
            Event::SerialSold { .. } => "serial_sold",
            Event::BuyerDebited { .. } => "buyer_debited",
            Event::SaleSettled { .. } => "sale_settled",
            Event::SellerCredited { .. } => "seller_credited",
            Event::EscrowReleased { .. } => "escrow_released",
            Event::ListingCreated { .. } => "listing_created",
            Event::ListingEnded { .. } => "listing_ended",
            Event::ListingReserved { .. } => "listing_reserved",
            Event::ListingReservationCancelled { .. } => "listing_reservation_cancelled",
            Event::SerialTransferred { .. } => "serial_transferred",
            Event::ListingRegistered { .. } => "listing_registered",
            Event::RefundProgressed { .. } => "refund_progressed",
            Event::EscrowFrozen { .. } => "escrow_frozen",
            Event::EscrowUnfrozen { .. } => "escrow_unfrozen",
            Event::EscrowReversed { .. } => "escrow_reversed",
            Event::SerialRevoked { .. } => "serial_revoked",
            Event::BuyerRefunded { .. } => "buyer_refunded",
            Event::CommandsForgotten { .. } => "commands_forgotten",
            Event::PurchaseAdmitted { .. } => "purchase_admitted",
            Event::CommandWithdrawn { .. } => "command_withdrawn",
            Event::PriceFloorSet { .. } => "price_floor_set",
            Event::PriceFloorReplicated { .. } => "price_floor_replicated",
            Event::RegionalPricesSet { .. } => "regional_prices_set",
            Event::PriceTestStarted { .. } => "price_test_started",
            Event::PriceTestOpened { .. } => "price_test_opened",
            Event::PriceTestRunning { .. } => "price_test_running",
            Event::PriceTestAborted { .. } => "price_test_aborted",
            Event::PriceTestExposed { .. } => "price_test_exposed",
            Event::PriceTestSold { .. } => "price_test_sold",
            Event::PriceTestEnded { .. } => "price_test_ended",
            Event::PriceTestClosed { .. } => "price_test_closed",
            Event::ItemTakenDown { .. } => "item_taken_down",
            Event::TakedownRefunding { .. } => "takedown_refunding",
            Event::TakedownScanStarted { .. } => "takedown_scan_started",
            Event::TakedownScanned { .. } => "takedown_scanned",
            Event::TakedownRefundStarted { .. } => "takedown_refund_started",
            Event::TakedownPurchaseFinished { .. } => "takedown_purchase_finished",
            Event::TakedownSaleResolved { .. } => "takedown_sale_resolved",
            Event::TakedownScanFinished { .. } => "takedown_scan_finished",
            Event::TakedownLateSale { .. } => "takedown_late_sale",
            Event::TakedownRefundAwaited { .. } => "takedown_refund_awaited",
            Event::TakedownShardReported { .. } => "takedown_shard_reported",
        }
    }

    /// The postings of this event (empty when it moves no currency).
    pub fn postings(&self) -> &[Posting] {
        match self {
            Event::CurrencyGranted { postings, .. }
            | Event::BuyerDebited { postings, .. }
            | Event::SaleSettled { postings, .. }
            | Event::SellerCredited { postings, .. }
            | Event::EscrowReleased { postings, .. }
            | Event::EscrowReversed { postings, .. }
            | Event::BuyerRefunded { postings, .. } => postings,
            _ => &[],
        }
    }
}

/// Most parts a read-your-writes token may hold.
pub const READ_POSITION_PARTS_MAX: usize = 64;

/// Read-your-writes token, opaque to clients: `p` then parts joined by `_`,
/// each `<shard>.<sequence>` (a log position) or `m<from>.<to>.<sequence>`
/// (a message consumed).
pub fn format_position(position: &ReadPosition) -> String {
    let mut parts: Vec<String> = position
        .positions
        .iter()
        .map(|p| format!("{}.{}", p.shard.0, p.sequence))
        .collect();
    parts.extend(
        position
            .deliveries
            .iter()
            .map(|d| format!("m{}.{}.{}", d.from.0, d.to.0, d.sequence)),
    );
    format!("p{}", parts.join("_"))
}

/// Parses a token made by [`format_position`]; `None` if malformed.
pub fn parse_position(token: &str) -> Option<ReadPosition> {
    let body = token.strip_prefix('p')?;
    let mut position = ReadPosition::default();
    if body.is_empty() {
        return Some(position);
    }
    for (index, part) in body.split('_').enumerate() {
        if index >= READ_POSITION_PARTS_MAX {
            return None;
        }
        if let Some(mark) = part.strip_prefix('m') {
            let mut fields = mark.split('.');
            let (from, to, sequence) = (fields.next()?, fields.next()?, fields.next()?);
            if fields.next().is_some() {
                return None;
            }
            position.deliveries.push(DeliveryMark {
                from: ShardId(from.parse().ok()?),
                to: ShardId(to.parse().ok()?),
                sequence: sequence.parse().ok()?,
            });
        } else {
            let (shard, sequence) = part.split_once('.')?;
            position.positions.push(ShardPosition {
                shard: ShardId(shard.parse().ok()?),
                sequence: sequence.parse().ok()?,
            });
        }
    }
    Some(position)
}

#[cfg(test)]
mod position_tests {
    use super::*;

    #[test]
    fn positions_round_trip_and_reject_garbage() {
        let position = ReadPosition {
            positions: vec![
                ShardPosition {
                    shard: ShardId(0),
                    sequence: 7,
                },
                ShardPosition {
                    shard: ShardId(3),
                    sequence: 12,
                },
            ],
            deliveries: vec![DeliveryMark {
                from: ShardId(3),
                to: ShardId(1),
                sequence: 4,
            }],
        };
        let token = format_position(&position);
        assert_eq!(token, "p0.7_3.12_m3.1.4");
        assert_eq!(parse_position(&token), Some(position));
        assert_eq!(parse_position("p"), Some(ReadPosition::default()));
        for bad in [
            "",
            "x1.2",
            "p1",
            "p1.",
            "p.2",
            "p1.2_",
            "p-1.2",
            "p99999999.1",
            "pm1.2",
            "pm1.2.3.4",
            "pm1..3",
        ] {
            assert_eq!(parse_position(bad), None, "{bad}");
        }
        let too_long = format!("p{}", vec!["1.1"; READ_POSITION_PARTS_MAX + 1].join("_"));
        assert_eq!(parse_position(&too_long), None);
    }
}
