//! Resale listings. Creating one: the listing's home shard asks the item's
//! shard to list the serial, then records which item the listing is on.
//! Cancelling one: the listing's home shard asks the item's shard to end it.

use crate::ids::{ItemId, ListingId, UserId};
use crate::model::*;
use crate::state::CommandRecord;

use super::out::Out;
use super::saga::{self, SagaStage};
use super::{reject, Answer, Decision};

/// `CreateListing` accepted: asks the item's shard to list the serial.
pub(super) fn start(
    out: &mut Out<'_>,
    listing_id: &ListingId,
    seller_id: &UserId,
    item_id: &ItemId,
    serial: u32,
    price: i64,
    at_ms: TimestampMs,
) {
    let to = out.shard_of(&keys::item(item_id));
    out.send(
        to,
        Message::CreateListingOnItem {
            listing_id: listing_id.clone(),
            seller_id: seller_id.clone(),
            item_id: item_id.clone(),
            serial,
            price,
            at_ms,
        },
    );
}

/// On the item's shard: lists the serial if the seller holds it, may resell
/// it and has held it long enough. Returns the answer for the listing's shard.
pub(super) fn create_on_item(
    out: &mut Out<'_>,
    listing_id: &ListingId,
    seller_id: &UserId,
    item_id: &ItemId,
    serial: u32,
    price: i64,
    at_ms: TimestampMs,
) -> Message {
    let result = check_listable(out, seller_id, item_id, serial, at_ms).map(|()| {
        out.push(Event::ListingCreated {
            listing_id: listing_id.clone(),
            item_id: item_id.clone(),
            serial,
            seller_id: seller_id.clone(),
            price,
        });
    });
    Message::ListingResult {
        listing_id: listing_id.clone(),
        result,
        position: out.next_position(),
    }
}

/// Whether `seller_id` may list `serial` of `item_id` at `at_ms`.
fn check_listable(
    out: &Out<'_>,
    seller_id: &UserId,
    item_id: &ItemId,
    serial: u32,
    at_ms: TimestampMs,
) -> Result<(), Rejection> {
    let item = out.state.items.get(item_id).ok_or_else(|| {
        reject(
            RejectionCode::NotFound,
            format!("item {item_id} does not exist"),
        )
    })?;
    if !item.is_limited() || !item.definition.resellable {
        return Err(reject(
            RejectionCode::NotResellable,
            format!("item {item_id} cannot be resold"),
        ));
    }
    super::takedown::check_not_taken_down(out.state, item_id)?;
    let holder = item.holders.get(&serial).ok_or_else(|| {
        reject(
            RejectionCode::NotFound,
            format!("serial {serial} of item {item_id} has no owner"),
        )
    })?;
    if &holder.user_id != seller_id {
        return Err(reject(
            RejectionCode::NotOwner,
            format!("{seller_id} does not own serial {serial} of item {item_id}"),
        ));
    }
    let hold_ends_ms = holder
        .acquired_at_ms
        .saturating_add(out.config.resale_hold_ms);
    if at_ms < hold_ends_ms {
        return Err(reject(
            RejectionCode::ResaleHoldActive,
            format!("serial {serial} of item {item_id} can be listed from {hold_ends_ms} ms"),
        ));
    }
    if item.listing_by_serial.contains_key(&serial) {
        return Err(reject(
            RejectionCode::AlreadyListed,
            format!("serial {serial} of item {item_id} is already listed"),
        ));
    }
    Ok(())
}

/// A listing waiting for the item's shard.
struct Creating<'a> {
    item_id: &'a ItemId,
}

impl<'a> SagaStage<'a> for Creating<'a> {
    const EXPECTED: &'static str = "a listing waiting for the item's shard";

    fn read(record: &'a CommandRecord) -> Option<Self> {
        match (&record.command, &record.progress) {
            (Command::CreateListing { item_id, .. }, Progress::Listing) => Some(Self { item_id }),
            _ => None,
        }
    }
}

/// Back on the listing's shard: registers the listing's item (so purchases
/// and cancels find it) and completes.
pub(super) fn listed(
    out: &mut Out<'_>,
    listing_id: &ListingId,
    result: &Result<(), Rejection>,
    position: ShardPosition,
) {
    let key = keys::listing(listing_id);
    let listing: Creating = saga::stage(out.state, &key);
    match result {
        Ok(()) => {
            out.push(Event::ListingRegistered {
                listing_id: listing_id.clone(),
                item_id: listing.item_id.clone(),
            });
            out.complete(&key, Ok(Success::ListingCreated), vec![position]);
        }
        Err(rejection) => out.complete(&key, Err(rejection.clone()), Vec::new()),
    }
}

/// The key of a listing cancel: one at a time per listing, and a listing
/// may be cancelled again once the previous attempt finished.
fn cancel_key(listing_id: &ListingId) -> String {
    format!("cancel:{listing_id}")
}

/// `CancelListing`: joins a cancel in flight, or asks the item's shard to
/// end the listing.
pub(super) fn cancel(
    mut out: Out<'_>,
    command: &Command,
    meta: &CommandMeta,
    listing_id: &ListingId,
) -> Decision {
    let key = cancel_key(listing_id);
    if let Some(remembered) = out.state.commands.get(key.as_str()) {
        if !remembered.is_completed() {
            return Decision::Apply {
                events: Vec::new(),
                answer: Answer::OnCompletion(key),
            };
        }
    }
    let Some(item_id) = out.state.listing_directory.get(listing_id) else {
        return Decision::Refuse(reject(
            RejectionCode::NotFound,
            format!("listing {listing_id} does not exist"),
        ));
    };
    out.push(Event::CommandAccepted {
        key: key.clone(),
        fingerprint: 0,
        command: command.clone(),
        meta: meta.clone(),
    });
    let to = out.shard_of(&keys::item(item_id));
    out.send(
        to,
        Message::CancelListingOnItem {
            listing_id: listing_id.clone(),
            item_id: item_id.clone(),
            actor: meta.actor.clone(),
        },
    );
    out.apply(Answer::OnCompletion(key))
}

/// On the item's shard: ends the listing if `actor` may and nobody is
/// buying it (cancelling a cancelled listing again succeeds). Returns the
/// answer for the listing's shard.
pub(super) fn cancel_on_item(
    out: &mut Out<'_>,
    listing_id: &ListingId,
    item_id: &ItemId,
    actor: &Actor,
) -> Message {
    let item = super::routed_item(out.state, item_id);
    let result = match item.listings.get(listing_id) {
        Some(listing) if !actor.may_act_as(&listing.seller_id) => Err(reject(
            RejectionCode::Forbidden,
            format!("listing {listing_id} belongs to another seller"),
        )),
        Some(listing) if listing.reserved_by.is_some() => Err(reject(
            RejectionCode::ListingUnavailable,
            format!("listing {listing_id} is being bought"),
        )),
        Some(listing) => {
            out.push(Event::ListingEnded {
                listing_id: listing_id.clone(),
                item_id: item_id.clone(),
                serial: listing.serial,
                reason: ListingEndReason::Cancelled,
            });
            Ok(())
        }
        None => match item.ended_listings.get(listing_id) {
            Some(ListingEndReason::Cancelled) => Ok(()),
            _ => Err(reject(
                RejectionCode::ListingUnavailable,
                format!("listing {listing_id} is no longer available"),
            )),
        },
    };
    Message::CancelResult {
        listing_id: listing_id.clone(),
        result,
        position: out.next_position(),
    }
}

/// Back on the listing's shard: completes the cancel.
pub(super) fn cancelled(
    out: &mut Out<'_>,
    listing_id: &ListingId,
    result: &Result<(), Rejection>,
    position: ShardPosition,
) {
    out.complete(
        &cancel_key(listing_id),
        result.clone().map(|()| Success::ListingCancelled),
        vec![position],
    );
}
