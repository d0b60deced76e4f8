//! Resale purchases: the purchase's home shard asks the listing's home
//! shard, which knows the listing's item, to have the item's shard reserve
//! the listing (four hops before the answer: home, listing, item, buyer,
//! home). Payment and confirmation are those of every purchase (see
//! `purchase`); the settlement pays the seller and the creator's royalty.

use crate::ids::{ItemId, ListingId, PurchaseId, ShardId, UserId};
use crate::model::*;
use crate::money::{Account, Posting};
use crate::state::ShardState;

use super::out::Out;
use super::reject;

/// `ResalePurchase` accepted: asks the listing's shard to reserve it.
pub(super) fn start(
    out: &mut Out<'_>,
    purchase_id: &PurchaseId,
    buyer_id: &UserId,
    listing_id: &ListingId,
    expected_price: i64,
    at_ms: TimestampMs,
) {
    super::purchase::request_sale(
        out,
        purchase_id,
        buyer_id,
        SaleRequest::Listing(listing_id.clone()),
        expected_price,
        at_ms,
    );
}

/// On the listing's home shard: the item `listing_id` lists.
pub(super) fn listed_item<'a>(
    state: &'a ShardState,
    listing_id: &ListingId,
) -> Result<&'a ItemId, Rejection> {
    state.listing_directory.get(listing_id).ok_or_else(|| {
        reject(
            RejectionCode::NotFound,
            format!("listing {listing_id} does not exist"),
        )
    })
}

/// On the item's shard: reserves the listing for the purchase.
pub(super) fn reserve_listing(
    out: &mut Out<'_>,
    purchase_id: &PurchaseId,
    buyer_id: &UserId,
    listing_id: &ListingId,
    item_id: &ItemId,
    expected_price: i64,
) -> Result<Reservation, Rejection> {
    let item = super::routed_item(out.state, item_id);
    let listing = match item.listings.get(listing_id) {
        Some(listing) if listing.reserved_by.is_none() => listing,
        _ => {
            return Err(reject(
                RejectionCode::ListingUnavailable,
                format!("listing {listing_id} is no longer available"),
            ))
        }
    };
    if &listing.seller_id == buyer_id {
        return Err(reject(
            RejectionCode::PurchaserIsSeller,
            format!("{buyer_id} is the seller of listing {listing_id}"),
        ));
    }
    if listing.price != expected_price {
        return Err(reject(
            RejectionCode::PriceChanged,
            format!(
                "listing {listing_id} costs {}, not {expected_price}",
                listing.price
            ),
        ));
    }
    out.push(Event::ListingReserved {
        listing_id: listing_id.clone(),
        item_id: item_id.clone(),
        purchase_id: purchase_id.clone(),
    });
    Ok(Reservation {
        price: listing.price,
        creator_id: item.definition.creator_id.clone(),
        sale: SaleKind::Resale {
            listing_id: listing_id.clone(),
            item_id: item_id.clone(),
            serial: listing.serial,
            seller_id: listing.seller_id.clone(),
        },
        terms: None,
    })
}

/// On the listing's shard, for a request of an older log
/// (`ReserveListing`): forwards it to the item's shard, or refuses it.
pub(super) fn forward_listing_request(
    out: &mut Out<'_>,
    purchase_id: &PurchaseId,
    buyer_id: &UserId,
    listing_id: &ListingId,
    expected_price: i64,
    reply_to: ShardId,
) {
    match listed_item(out.state, listing_id) {
        Err(rejection) => {
            out.send(
                reply_to,
                Message::Reserved {
                    purchase_id: purchase_id.clone(),
                    result: Err(rejection),
                },
            );
        }
        Ok(item_id) => {
            let to = out.shard_of(&keys::item(item_id));
            out.send(
                to,
                Message::ReserveListingOnItem {
                    purchase_id: purchase_id.clone(),
                    buyer_id: buyer_id.clone(),
                    listing_id: listing_id.clone(),
                    item_id: item_id.clone(),
                    expected_price,
                    reply_to,
                },
            );
        }
    }
}

/// A paid resale: the seller's share goes to the seller's wallet, the
/// royalty and the fee to the creator's shard for settlement.
pub(super) fn settle(
    out: &mut Out<'_>,
    purchase_id: &PurchaseId,
    reservation: &Reservation,
    seller_id: &UserId,
    at_ms: TimestampMs,
) {
    let policy = &out.config.resale_fee_policy;
    let split = policy.split(reservation.price);
    let seller_shard = out.shard_of(&keys::user(seller_id));
    out.send(
        seller_shard,
        Message::CreditSeller {
            purchase_id: purchase_id.clone(),
            seller_id: seller_id.clone(),
            amount: split.seller_share,
        },
    );
    let creator_shard = out.shard_of(&keys::user(&reservation.creator_id));
    out.send(
        creator_shard,
        Message::SettleSale {
            purchase_id: purchase_id.clone(),
            creator_id: reservation.creator_id.clone(),
            cleared: split.royalty + split.platform_fee,
            creator_share: split.royalty,
            platform_fee: split.platform_fee,
            policy_version: policy.version,
            resale: true,
            at_ms,
        },
    );
}

/// On the seller's shard: the seller is paid.
pub(super) fn credit_seller(
    out: &mut Out<'_>,
    purchase_id: &PurchaseId,
    seller_id: &UserId,
    amount: i64,
) {
    let balance_after = out.state.balance(&Account::Wallet(seller_id.clone())) + amount;
    out.push(Event::SellerCredited {
        purchase_id: purchase_id.clone(),
        seller_id: seller_id.clone(),
        amount,
        balance_after,
        postings: vec![
            Posting::new(Account::Clearing, -amount),
            Posting::new(Account::Wallet(seller_id.clone()), amount),
        ],
    });
}
