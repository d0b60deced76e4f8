//! Purchases of an item or a bundle, and what every purchase (primary or
//! resale) shares once its sale is reserved: the buyer's payment, the
//! serial's confirmation or release, and the settlement to escrow.
//!
//! Three hops before the buyer's answer: the purchase's home shard asks the
//! item's (or bundle's) shard to reserve the sale (`ReserveSale`); that
//! shard sends the reservation on to the buyer's shard (`ChargeBuyer`),
//! which pays and answers the home shard (`PurchasePaid`); the home shard
//! completes, confirms a held serial and settles the sale. A refusal on the
//! way goes straight back to the home shard (`Reserved` with the
//! rejection, or `PurchasePaid` with it).
//!
//! Logs and messages written before the reservation travelled with the
//! purchase still play: `ReserveItem` / `QuoteBundle` answer `Reserved`,
//! which the home shard turns into `ChargeBuyer`; `DebitBuyer` answers
//! `BuyerDebited` to a purchase in stage `Debiting`.

use crate::ids::{BundleId, ItemId, ListingId, PurchaseId, ShardId, UserId};
use crate::model::*;
use crate::money::{Account, Posting, PrimarySplit};
use crate::pricing::{PriceRule, Region, SaleTerms};
use crate::remembered::Remembered;
use crate::state::{CommandRecord, Config, ItemState, Listing, ShardState};

use super::out::Out;
use super::saga::{self, SagaStage};
use super::{reject, resale};

/// `Purchase` accepted: asks the item's or the bundle's shard to reserve it.
pub(super) fn start(
    out: &mut Out<'_>,
    purchase_id: &PurchaseId,
    buyer_id: &UserId,
    target: &PurchaseTarget,
    region: Option<&Region>,
    expected_price: i64,
    at_ms: TimestampMs,
) {
    let request = sale_request(target, region);
    request_sale(out, purchase_id, buyer_id, request, expected_price, at_ms);
}

/// What a primary purchase of `target` by a buyer in `region` asks the
/// target's shard to reserve.
pub(super) fn sale_request(target: &PurchaseTarget, region: Option<&Region>) -> SaleRequest {
    match (target, region) {
        (PurchaseTarget::Item(item_id), None) => SaleRequest::Item(item_id.clone()),
        (PurchaseTarget::Item(item_id), Some(region)) => SaleRequest::ItemInRegion {
            item_id: item_id.clone(),
            region: region.clone(),
        },
        // A bundle has one price everywhere.
        (PurchaseTarget::Bundle(bundle_id), _) => SaleRequest::Bundle(bundle_id.clone()),
    }
}

/// A purchase's first request (primary or resale), from its home shard:
/// with purchase rate limits on, to the buyer's shard (`AdmitSale`, see
/// [`crate::limits`]) — or, when that is this shard, admitted or refused
/// in this step, one hop fewer; with limits off, straight to the shard that
/// holds `request`.
pub(super) fn request_sale(
    out: &mut Out<'_>,
    purchase_id: &PurchaseId,
    buyer_id: &UserId,
    request: SaleRequest,
    expected_price: i64,
    at_ms: TimestampMs,
) {
    let home = out.state.shard;
    let sale = SaleToReserve {
        purchase_id,
        buyer_id,
        expected_price,
        at_ms,
        home,
    };
    if !out.config.purchase_limits.enabled() {
        send_to_reserve(out, &sale, request);
        return;
    }
    let buyer_shard = out.shard_of(&keys::user(buyer_id));
    if buyer_shard != home {
        out.send(
            buyer_shard,
            Message::AdmitSale {
                purchase_id: purchase_id.clone(),
                buyer_id: buyer_id.clone(),
                request,
                expected_price,
                at_ms,
                home,
            },
        );
        return;
    }
    if let Err((rejection, retry_after_ms)) = admit(out, &sale, request) {
        // Accepted in this very step: answered and forgotten at once.
        out.withdraw(&keys::purchase(purchase_id), rejection, retry_after_ms);
    }
}

/// Sends `sale` to the shard that holds what `request` names, to be reserved.
fn send_to_reserve(out: &mut Out<'_>, sale: &SaleToReserve<'_>, request: SaleRequest) {
    let to = out.shard_of(&request.subject_key());
    out.send(
        to,
        Message::ReserveSale {
            purchase_id: sale.purchase_id.clone(),
            buyer_id: sale.buyer_id.clone(),
            request,
            expected_price: sale.expected_price,
            at_ms: sale.at_ms,
            home: sale.home,
        },
    );
}

/// On the buyer's shard: admits `sale` under the buyer's rate limits and
/// sends it on to be reserved, or returns the refusal and the wait.
fn admit(
    out: &mut Out<'_>,
    sale: &SaleToReserve<'_>,
    request: SaleRequest,
) -> Result<(), (Rejection, u64)> {
    let limits = out.config.purchase_limits;
    let subject = request.subject_key();
    let checked = out
        .state
        .limits
        .check(&limits, sale.buyer_id, &subject, sale.at_ms);
    if let Err(over) = checked {
        return Err((
            reject(RejectionCode::RateLimited, over.detail),
            over.retry_after_ms,
        ));
    }
    out.push(Event::PurchaseAdmitted {
        buyer_id: sale.buyer_id.clone(),
        subject,
        at_ms: sale.at_ms,
        expire_before_ms: limits.expire_before_ms(sale.at_ms),
    });
    send_to_reserve(out, sale, request);
    Ok(())
}

/// `AdmitSale` on the buyer's shard: admitted and sent on, or refused to
/// the home shard before anything is reserved.
pub(super) fn admit_sale(out: &mut Out<'_>, sale: &SaleToReserve<'_>, request: &SaleRequest) {
    if let Err((rejection, retry_after_ms)) = admit(out, sale, request.clone()) {
        out.send(
            sale.home,
            Message::SaleRateLimited {
                purchase_id: sale.purchase_id.clone(),
                rejection,
                retry_after_ms,
            },
        );
    }
}

/// On the home shard: the buyer's shard refused the purchase under its
/// rate limits. Answered, then forgotten: the refusal is not remembered.
pub(super) fn rate_limited(
    out: &mut Out<'_>,
    purchase_id: &PurchaseId,
    rejection: &Rejection,
    retry_after_ms: u64,
) {
    let key = keys::purchase(purchase_id);
    if let Some(CommandRecord {
        command: Command::PurchaseCart { .. },
        ..
    }) = out
        .state
        .commands
        .get(key.as_str())
        .and_then(Remembered::running)
    {
        return super::cart::rate_limited(out, purchase_id, rejection, retry_after_ms);
    }
    let _purchase: Reserving = saga::stage(out.state, &key);
    out.withdraw(&key, rejection.clone(), retry_after_ms);
}

/// A purchase's request to reserve its sale, as the shard that holds the
/// sale receives it.
pub(super) struct SaleToReserve<'a> {
    pub(super) purchase_id: &'a PurchaseId,
    pub(super) buyer_id: &'a UserId,
    pub(super) expected_price: i64,
    pub(super) at_ms: TimestampMs,
    /// The purchase's home shard.
    pub(super) home: ShardId,
}

/// On the shard that holds what `request` names: reserves the sale and
/// sends it on to the buyer's shard, or refuses it to the home shard (a
/// listing's home shard forwards to the listed item's shard instead).
pub(super) fn reserve_sale(out: &mut Out<'_>, sale: &SaleToReserve<'_>, request: &SaleRequest) {
    let result = match request {
        SaleRequest::Item(item_id) => reserve_item(
            out,
            sale.purchase_id,
            sale.buyer_id,
            item_id,
            None,
            sale.expected_price,
            sale.at_ms,
        ),
        SaleRequest::ItemInRegion { item_id, region } => reserve_item(
            out,
            sale.purchase_id,
            sale.buyer_id,
            item_id,
            Some(region),
            sale.expected_price,
            sale.at_ms,
        ),
        SaleRequest::Bundle(bundle_id) => {
            quote_bundle(out.state, sale.buyer_id, bundle_id, sale.expected_price)
        }
        SaleRequest::Listing(listing_id) => match resale::listed_item(out.state, listing_id) {
            Ok(item_id) => {
                let to = out.shard_of(&keys::item(item_id));
                out.send(
                    to,
                    Message::ReserveSale {
                        purchase_id: sale.purchase_id.clone(),
                        buyer_id: sale.buyer_id.clone(),
                        request: SaleRequest::ListingOnItem {
                            listing_id: listing_id.clone(),
                            item_id: item_id.clone(),
                        },
                        expected_price: sale.expected_price,
                        at_ms: sale.at_ms,
                        home: sale.home,
                    },
                );
                return;
            }
            Err(rejection) => Err(rejection),
        },
        SaleRequest::ListingOnItem {
            listing_id,
            item_id,
        } => resale::reserve_listing(
            out,
            sale.purchase_id,
            sale.buyer_id,
            listing_id,
            item_id,
            sale.expected_price,
        ),
    };
    match result {
        Ok(reservation) => {
            let to = out.shard_of(&keys::user(sale.buyer_id));
            out.send(
                to,
                Message::ChargeBuyer {
                    purchase_id: sale.purchase_id.clone(),
                    buyer_id: sale.buyer_id.clone(),
                    reservation,
                    at_ms: sale.at_ms,
                    home: sale.home,
                },
            );
        }
        Err(rejection) => {
            out.send(
                sale.home,
                Message::Reserved {
                    purchase_id: sale.purchase_id.clone(),
                    result: Err(rejection),
                },
            );
        }
    }
}

/// On the item's shard: reserves the item (a serial, for a Limited) at its
/// price for the buyer (in `region`, if the item has a price there).
pub(super) fn reserve_item(
    out: &mut Out<'_>,
    purchase_id: &PurchaseId,
    buyer_id: &UserId,
    item_id: &ItemId,
    region: Option<&Region>,
    expected_price: i64,
    at_ms: TimestampMs,
) -> Result<Reservation, Rejection> {
    match out.state.items.get(item_id) {
        None => Err(reject(
            RejectionCode::NotFound,
            format!("item {item_id} does not exist"),
        )),
        Some(_) if out.state.takedowns.items.contains(item_id) => Err(reject(
            RejectionCode::ItemTakenDown,
            format!("item {item_id} was taken down"),
        )),
        Some(item) => {
            let (price, rule) = out
                .state
                .item_pricing
                .get(item_id)
                .map_or((item.price, PriceRule::Base), |pricing| {
                    pricing.price_for(item.price, region, Some(buyer_id), at_ms)
                });
            check_item_sale(item, buyer_id, price, &rule, expected_price, at_ms).and_then(|()| {
                let serial = reserve_serial(out, item, purchase_id, buyer_id)?;
                Ok(Reservation {
                    price,
                    creator_id: item.definition.creator_id.clone(),
                    sale: SaleKind::Item {
                        item_id: item_id.clone(),
                        serial,
                    },
                    terms: sale_terms(out.state, out.config, item, rule, at_ms),
                })
            })
        }
    }
}

/// The pricing terms of a primary sale of `item` reserved at `at_ms` under
/// `rule`: the floor in force for its kind then (fee policy 2 against it)
/// or none (the configured flat split). A sale at the base price without
/// a floor has none, as before terms existed.
fn sale_terms(
    state: &ShardState,
    config: &Config,
    item: &ItemState,
    rule: PriceRule,
    at_ms: TimestampMs,
) -> Option<SaleTerms> {
    let kind = item.definition.kind;
    let floor = state
        .price_floors
        .in_force(kind, at_ms)
        .map(|(_, floor)| floor.price)
        .filter(|floor| *floor > 0);
    if floor.is_none() && rule == PriceRule::Base {
        return None;
    }
    Some(SaleTerms {
        rule,
        kind,
        floor,
        fee_policy_version: if floor.is_some() {
            crate::pricing::FEE_POLICY_V2
        } else {
            config.primary_fee_policy.version
        },
    })
}

/// Whether `buyer_id` may buy `item`, priced `price` for them under
/// `rule`, at `expected_price` at `at_ms`.
fn check_item_sale(
    item: &ItemState,
    buyer_id: &UserId,
    price: i64,
    rule: &PriceRule,
    expected_price: i64,
    at_ms: TimestampMs,
) -> Result<(), Rejection> {
    let definition = &item.definition;
    let item_id = &definition.item_id;
    let in_window = definition.starts_at_ms.is_none_or(|starts| at_ms >= starts)
        && definition.ends_at_ms.is_none_or(|ends| at_ms < ends);
    if !item.on_sale || !in_window {
        return Err(reject(
            RejectionCode::NotOnSale,
            format!("item {item_id} is not on sale"),
        ));
    }
    if &definition.creator_id == buyer_id {
        return Err(reject(
            RejectionCode::PurchaserIsSeller,
            format!("{buyer_id} created item {item_id}"),
        ));
    }
    if price != expected_price {
        let detail = match rule {
            PriceRule::Region(region) => {
                format!("item {item_id} costs {price} in {region}, not {expected_price}")
            }
            PriceRule::TestArm { test_id, .. } => format!(
                "item {item_id} costs {price} for {buyer_id} in price test {test_id}, not \
                 {expected_price}"
            ),
            PriceRule::Base => format!("item {item_id} costs {price}, not {expected_price}"),
        };
        return Err(reject(RejectionCode::PriceChanged, detail));
    }
    Ok(())
}

/// Reserves the lowest free serial of a Limited for the buyer (`None` for
/// an item without serials).
fn reserve_serial(
    out: &mut Out<'_>,
    item: &ItemState,
    purchase_id: &PurchaseId,
    buyer_id: &UserId,
) -> Result<Option<u32>, Rejection> {
    if !item.is_limited() {
        return Ok(None);
    }
    let item_id = &item.definition.item_id;
    let held = item.held_per_user.get(buyer_id).copied().unwrap_or(0);
    if item.definition.max_per_user.is_some_and(|max| held >= max) {
        return Err(reject(
            RejectionCode::QuantityLimitReached,
            format!("{buyer_id} already holds {held} of item {item_id}"),
        ));
    }
    let free = item.next_free_serial().ok_or_else(|| {
        reject(
            RejectionCode::SoldOut,
            format!("item {item_id} is sold out"),
        )
    })?;
    out.push(Event::SerialReserved {
        item_id: item_id.clone(),
        serial: free,
        purchase_id: purchase_id.clone(),
        buyer_id: buyer_id.clone(),
    });
    Ok(Some(free))
}

/// On the bundle's shard: quotes the bundle (nothing to reserve).
pub(super) fn quote_bundle(
    state: &ShardState,
    buyer_id: &UserId,
    bundle_id: &BundleId,
    expected_price: i64,
) -> Result<Reservation, Rejection> {
    match state.bundles.get(bundle_id) {
        None => Err(reject(
            RejectionCode::NotFound,
            format!("bundle {bundle_id} does not exist"),
        )),
        Some(bundle) if &bundle.creator_id == buyer_id => Err(reject(
            RejectionCode::PurchaserIsSeller,
            format!("{buyer_id} created bundle {bundle_id}"),
        )),
        Some(bundle) if bundle.price != expected_price => Err(reject(
            RejectionCode::PriceChanged,
            format!(
                "bundle {bundle_id} costs {}, not {expected_price}",
                bundle.price
            ),
        )),
        Some(bundle) => Ok(Reservation {
            price: bundle.price,
            creator_id: bundle.creator_id.clone(),
            sale: SaleKind::Bundle {
                bundle_id: bundle_id.clone(),
                item_ids: bundle.item_ids.clone(),
            },
            terms: None,
        }),
    }
}

/// The buyer of a primary or resale purchase.
fn buyer_of(command: &Command) -> Option<&UserId> {
    match command {
        Command::Purchase { buyer_id, .. } | Command::ResalePurchase { buyer_id, .. } => {
            Some(buyer_id)
        }
        _ => None,
    }
}

/// A purchase waiting for its sale to be reserved and paid for.
struct Reserving<'a> {
    buyer_id: &'a UserId,
    at_ms: TimestampMs,
}

impl<'a> SagaStage<'a> for Reserving<'a> {
    const EXPECTED: &'static str = "a purchase waiting for its reservation and payment";

    fn read(record: &'a CommandRecord) -> Option<Self> {
        match &record.progress {
            Progress::Reserving => Some(Self {
                buyer_id: buyer_of(&record.command)?,
                at_ms: record.meta.at_ms,
            }),
            _ => None,
        }
    }
}

/// A purchase of an older log whose sale is reserved, waiting for the
/// buyer's money.
struct Debiting<'a> {
    buyer_id: &'a UserId,
    at_ms: TimestampMs,
    reservation: &'a Reservation,
}

impl<'a> SagaStage<'a> for Debiting<'a> {
    const EXPECTED: &'static str = "a purchase waiting for the buyer's payment";

    fn read(record: &'a CommandRecord) -> Option<Self> {
        match &record.progress {
            Progress::Debiting { reservation } => Some(Self {
                buyer_id: buyer_of(&record.command)?,
                at_ms: record.meta.at_ms,
                reservation,
            }),
            _ => None,
        }
    }
}

/// Back on the purchase's shard: the sale was refused (or, from a shard
/// running an older log's request, reserved: then off to the buyer's shard).
pub(super) fn reserved(
    out: &mut Out<'_>,
    purchase_id: &PurchaseId,
    result: &Result<Reservation, Rejection>,
) {
    let key = keys::purchase(purchase_id);
    let purchase: Reserving = saga::stage(out.state, &key);
    match result {
        Err(rejection) => out.complete(&key, Err(rejection.clone()), Vec::new()),
        Ok(reservation) => {
            let to = out.shard_of(&keys::user(purchase.buyer_id));
            out.send(
                to,
                Message::ChargeBuyer {
                    purchase_id: purchase_id.clone(),
                    buyer_id: purchase.buyer_id.clone(),
                    reservation: reservation.clone(),
                    at_ms: purchase.at_ms,
                    home: out.state.shard,
                },
            );
        }
    }
}

/// What the buyer's shard grants for `sale`: the items, and whether it is
/// all of them or nothing. A serial moves on the item's shard instead.
pub(super) fn items_granted_by(sale: &SaleKind) -> (Vec<ItemId>, bool) {
    match sale {
        SaleKind::Item {
            item_id,
            serial: None,
        } => (vec![item_id.clone()], true),
        SaleKind::Item {
            serial: Some(_), ..
        }
        | SaleKind::Resale { .. } => (Vec::new(), true),
        SaleKind::Bundle { item_ids, .. } => (item_ids.clone(), false),
    }
}

/// On the buyer's shard: pays for the reservation and answers the
/// purchase's home shard.
pub(super) fn charge_buyer(
    out: &mut Out<'_>,
    purchase_id: &PurchaseId,
    buyer_id: &UserId,
    reservation: &Reservation,
    at_ms: TimestampMs,
    home: ShardId,
) {
    let (grant_items, all_or_nothing) = items_granted_by(&reservation.sale);
    let result = debit(
        out,
        purchase_id,
        buyer_id,
        reservation.price,
        &grant_items,
        all_or_nothing,
        at_ms,
    );
    let position = out.next_position();
    out.send(
        home,
        Message::PurchasePaid {
            purchase_id: purchase_id.clone(),
            reservation: reservation.clone(),
            result,
            position,
        },
    );
}

/// On the buyer's shard, for a purchase of an older log: takes the money
/// and answers `BuyerDebited`.
#[allow(clippy::too_many_arguments)] // one per field of `Message::DebitBuyer`
pub(super) fn debit_buyer(
    out: &mut Out<'_>,
    purchase_id: &PurchaseId,
    buyer_id: &UserId,
    amount: i64,
    grant_items: &[ItemId],
    all_or_nothing: bool,
    at_ms: TimestampMs,
) -> Message {
    let result = debit(
        out,
        purchase_id,
        buyer_id,
        amount,
        grant_items,
        all_or_nothing,
        at_ms,
    );
    Message::BuyerDebited {
        purchase_id: purchase_id.clone(),
        result,
        position: out.next_position(),
    }
}

/// Takes `amount` from the buyer's wallet and grants the items the buyer
/// does not own yet (all of them, or nothing, when `all_or_nothing`).
/// Returns the balance after and the items granted.
fn debit(
    out: &mut Out<'_>,
    purchase_id: &PurchaseId,
    buyer_id: &UserId,
    amount: i64,
    grant_items: &[ItemId],
    all_or_nothing: bool,
    at_ms: TimestampMs,
) -> Result<(i64, Vec<ItemId>), Rejection> {
    let owned = &out.state.owned_items;
    let mut to_grant: Vec<ItemId> = Vec::new();
    for item_id in grant_items {
        if !owned.owns(buyer_id, item_id) && !to_grant.contains(item_id) {
            to_grant.push(item_id.clone());
        }
    }
    let wallet = out.state.balance(&Account::Wallet(buyer_id.clone()));
    if !grant_items.is_empty()
        && (to_grant.is_empty() || (all_or_nothing && to_grant.len() != grant_items.len()))
    {
        return Err(reject(
            RejectionCode::AlreadyOwned,
            format!("{buyer_id} already owns what purchase {purchase_id} sells"),
        ));
    }
    if wallet < amount {
        return Err(reject(
            RejectionCode::InsufficientFunds,
            format!("{buyer_id} has {wallet}, needs {amount}"),
        ));
    }
    let balance_after = wallet - amount;
    out.push(Event::BuyerDebited {
        purchase_id: purchase_id.clone(),
        buyer_id: buyer_id.clone(),
        amount,
        granted_items: to_grant.clone(),
        balance_after,
        at_ms,
        postings: vec![
            Posting::new(Account::Wallet(buyer_id.clone()), -amount),
            Posting::new(Account::Clearing, amount),
        ],
    });
    Ok((balance_after, to_grant))
}

/// The item whose shard holds a serial for `sale` while it is paid for: a
/// Limited's serial or a resold serial.
pub(super) fn item_with_held_serial(sale: &SaleKind) -> Option<&ItemId> {
    match sale {
        SaleKind::Item {
            item_id,
            serial: Some(_),
        }
        | SaleKind::Resale { item_id, .. } => Some(item_id),
        SaleKind::Item { serial: None, .. } | SaleKind::Bundle { .. } => None,
    }
}

/// Back on the purchase's shard: the buyer paid for `reservation`, or
/// refused it.
pub(super) fn purchase_paid(
    out: &mut Out<'_>,
    purchase_id: &PurchaseId,
    reservation: &Reservation,
    result: &Result<(i64, Vec<ItemId>), Rejection>,
    position: ShardPosition,
) {
    let key = keys::purchase(purchase_id);
    let purchase: Reserving = saga::stage(out.state, &key);
    let paying = Paying {
        key: &key,
        purchase_id,
        buyer_id: purchase.buyer_id,
        at_ms: purchase.at_ms,
        reservation,
    };
    paid(out, &paying, result, position);
}

/// Back on the purchase's shard, for a purchase of an older log waiting in
/// stage `Debiting`: as `purchase_paid`.
pub(super) fn buyer_debited(
    out: &mut Out<'_>,
    purchase_id: &PurchaseId,
    result: &Result<(i64, Vec<ItemId>), Rejection>,
    position: ShardPosition,
) {
    let key = keys::purchase(purchase_id);
    let purchase: Debiting = saga::stage(out.state, &key);
    let paying = Paying {
        key: &key,
        purchase_id,
        buyer_id: purchase.buyer_id,
        at_ms: purchase.at_ms,
        reservation: purchase.reservation,
    };
    paid(out, &paying, result, position);
}

/// A purchase whose buyer's shard answered.
struct Paying<'a> {
    key: &'a str,
    purchase_id: &'a PurchaseId,
    buyer_id: &'a UserId,
    at_ms: TimestampMs,
    reservation: &'a Reservation,
}

/// Paid: the held serial moves to the buyer, the sale is settled and the
/// purchase completes with its reservation. Refused: the serial is
/// released and the purchase completes with the rejection.
fn paid(
    out: &mut Out<'_>,
    purchase: &Paying<'_>,
    result: &Result<(i64, Vec<ItemId>), Rejection>,
    position: ShardPosition,
) {
    let reservation = purchase.reservation;
    let purchase_id = purchase.purchase_id;
    let held_on = item_with_held_serial(&reservation.sale);
    let (balance_after, granted_items) = match result {
        Err(rejection) => {
            if let Some(item_id) = held_on {
                let to = out.shard_of(&keys::item(item_id));
                out.send(
                    to,
                    Message::CancelReservation {
                        purchase_id: purchase_id.clone(),
                        item_id: item_id.clone(),
                    },
                );
            }
            return out.complete(purchase.key, Err(rejection.clone()), Vec::new());
        }
        Ok((balance_after, granted_items)) => (*balance_after, granted_items.clone()),
    };
    let success = purchased(reservation, balance_after, granted_items);
    if let Some(item_id) = held_on {
        let to = out.shard_of(&keys::item(item_id));
        out.send(
            to,
            Message::ConfirmReservation {
                purchase_id: purchase_id.clone(),
                item_id: item_id.clone(),
                at_ms: purchase.at_ms,
                buyer_id: purchase.buyer_id.clone(),
            },
        );
    }
    match &reservation.sale {
        SaleKind::Resale { seller_id, .. } => {
            resale::settle(out, purchase_id, reservation, seller_id, purchase.at_ms)
        }
        SaleKind::Item { .. } | SaleKind::Bundle { .. } => {
            settle_primary(out, purchase_id, reservation, purchase.at_ms)
        }
    }
    super::price_tests::report_sale(out, purchase_id, reservation);
    out.complete_purchase(purchase.key, success, vec![position], reservation);
}

/// The success a paid purchase answers with.
pub(super) fn purchased(
    reservation: &Reservation,
    balance_after: i64,
    granted_items: Vec<ItemId>,
) -> Success {
    match &reservation.sale {
        SaleKind::Item { item_id, serial } => Success::Purchased {
            target: PurchaseTarget::Item(item_id.clone()),
            price: reservation.price,
            serial: *serial,
            granted_items,
            balance_after,
        },
        SaleKind::Bundle { bundle_id, .. } => Success::Purchased {
            target: PurchaseTarget::Bundle(bundle_id.clone()),
            price: reservation.price,
            serial: None,
            granted_items,
            balance_after,
        },
        SaleKind::Resale {
            item_id,
            serial,
            seller_id,
            ..
        } => Success::ResalePurchased {
            item_id: item_id.clone(),
            serial: *serial,
            price: reservation.price,
            seller_id: seller_id.clone(),
            balance_after,
        },
    }
}

/// Sends a primary sale's price to the creator's escrow, minus the fee.
pub(super) fn settle_primary(
    out: &mut Out<'_>,
    purchase_id: &PurchaseId,
    reservation: &Reservation,
    at_ms: TimestampMs,
) {
    let (split, policy_version) = primary_split(out.config, reservation);
    let to = out.shard_of(&keys::user(&reservation.creator_id));
    out.send(
        to,
        Message::SettleSale {
            purchase_id: purchase_id.clone(),
            creator_id: reservation.creator_id.clone(),
            cleared: reservation.price,
            creator_share: split.creator_share,
            platform_fee: split.platform_fee,
            policy_version,
            resale: false,
            at_ms,
        },
    );
}

/// How a primary sale's price divides, and under which fee policy: the
/// sale's own terms (policy 2 against its floor) or the configured policy.
fn primary_split(config: &Config, reservation: &Reservation) -> (PrimarySplit, u16) {
    match &reservation.terms {
        Some(SaleTerms {
            floor: Some(floor),
            fee_policy_version: crate::pricing::FEE_POLICY_V2,
            ..
        }) => (
            crate::pricing::split_v2(reservation.price, *floor),
            crate::pricing::FEE_POLICY_V2,
        ),
        _ => (
            config.primary_fee_policy.split(reservation.price),
            config.primary_fee_policy.version,
        ),
    }
}

/// What an item's shard holds for a purchase being paid for.
enum Held<'a> {
    /// A serial of a Limited, reserved for its buyer.
    Serial { serial: u32, buyer_id: &'a UserId },
    /// A resale listing, reserved for the purchase.
    Listing {
        listing_id: &'a ListingId,
        listing: &'a Listing,
    },
}

/// What `item` holds for `purchase_id`, which must hold something: the
/// purchase's shard confirms or cancels only what was reserved.
fn held_for<'a>(item: &'a ItemState, purchase_id: &PurchaseId) -> Held<'a> {
    if let Some((serial, buyer_id)) = item.reservations.get(purchase_id) {
        return Held::Serial {
            serial: *serial,
            buyer_id,
        };
    }
    let (listing_id, listing) = item
        .listings
        .iter()
        .find(|(_, listing)| listing.reserved_by.as_ref() == Some(purchase_id))
        .unwrap_or_else(|| {
            panic!(
                "purchase {purchase_id} holds no reservation on item {}",
                item.definition.item_id
            )
        });
    Held::Listing {
        listing_id,
        listing,
    }
}

/// On the item's shard: the paid serial now belongs to the buyer.
pub(super) fn confirm_reservation(
    out: &mut Out<'_>,
    purchase_id: &PurchaseId,
    item_id: &ItemId,
    buyer_id: &UserId,
    at_ms: TimestampMs,
) {
    let item = super::routed_item(out.state, item_id);
    let event = match held_for(item, purchase_id) {
        Held::Serial { serial, buyer_id } => Event::SerialSold {
            item_id: item_id.clone(),
            serial,
            purchase_id: purchase_id.clone(),
            buyer_id: buyer_id.clone(),
            at_ms,
        },
        Held::Listing {
            listing_id,
            listing,
        } => Event::SerialTransferred {
            item_id: item_id.clone(),
            serial: listing.serial,
            listing_id: listing_id.clone(),
            purchase_id: purchase_id.clone(),
            from_user_id: listing.seller_id.clone(),
            to_user_id: buyer_id.clone(),
            price: listing.price,
            at_ms,
        },
    };
    out.push(event);
}

/// On the item's shard: the purchase was not paid; the serial is free again.
pub(super) fn cancel_reservation(out: &mut Out<'_>, purchase_id: &PurchaseId, item_id: &ItemId) {
    let item = super::routed_item(out.state, item_id);
    let event = match held_for(item, purchase_id) {
        Held::Serial { serial, .. } => Event::ReservationCancelled {
            item_id: item_id.clone(),
            serial,
            purchase_id: purchase_id.clone(),
        },
        Held::Listing { listing_id, .. } => Event::ListingReservationCancelled {
            listing_id: listing_id.clone(),
            item_id: item_id.clone(),
            purchase_id: purchase_id.clone(),
        },
    };
    out.push(event);
    // A listing a purchase held when its item was taken down ends now.
    if let Held::Listing {
        listing_id,
        listing,
    } = held_for(item, purchase_id)
    {
        if out.state.takedowns.items.contains(item_id) {
            out.push(Event::ListingEnded {
                listing_id: listing_id.clone(),
                item_id: item_id.clone(),
                serial: listing.serial,
                reason: ListingEndReason::TakenDown,
            });
        }
    }
}

/// On the creator's shard: the sale's money moves from clearing to the
/// creator's escrow and the platform's fees; escrow is released later.
#[allow(clippy::too_many_arguments)] // one per field of `Message::SettleSale`
pub(super) fn settle_sale(
    out: &mut Out<'_>,
    purchase_id: &PurchaseId,
    creator_id: &UserId,
    cleared: i64,
    creator_share: i64,
    platform_fee: i64,
    policy_version: u16,
    resale: bool,
    at_ms: TimestampMs,
) {
    assert_eq!(
        cleared,
        creator_share + platform_fee,
        "a settlement clears what it splits"
    );
    out.push(Event::SaleSettled {
        purchase_id: purchase_id.clone(),
        creator_id: creator_id.clone(),
        resale,
        cleared,
        creator_share,
        platform_fee,
        policy_version,
        release_at_ms: at_ms.saturating_add(out.config.escrow_hold_ms),
        postings: vec![
            Posting::new(Account::Clearing, -cleared),
            Posting::new(Account::Pending(creator_id.clone()), creator_share),
            Posting::new(Account::Fees, platform_fee),
        ],
    });
}
