//! Refunds of primary purchases. The refund's home shard asks the
//! purchase's home shard, which runs the refund: it freezes the creator's
//! escrow (refused once released), revokes a Limited's serial (refused once
//! it moved on), then reverses the escrow, credits the buyer and reports
//! back. A refused refund is abandoned: the purchase may be refunded later.

use crate::ids::{ItemId, PurchaseId, RefundId, ShardId, UserId};
use crate::model::*;
use crate::money::{Account, Posting};
use crate::state::{CommandRecord, ShardState};

use super::out::Out;
use super::reject;
use super::saga::{self, SagaStage};

/// `Refund` accepted: asks the purchase's shard to refund it.
pub(super) fn start(out: &mut Out<'_>, refund_id: &RefundId, purchase_id: &PurchaseId) {
    let to = out.shard_of(&keys::purchase(purchase_id));
    out.send(
        to,
        Message::RefundPurchase {
            refund_id: refund_id.clone(),
            purchase_id: purchase_id.clone(),
        },
    );
}

/// On the purchase's shard: starts the refund by freezing the creator's
/// escrow, or refuses it at once.
pub(super) fn refund_purchase(
    out: &mut Out<'_>,
    from: ShardId,
    refund_id: &RefundId,
    purchase_id: &PurchaseId,
) {
    match check_refundable(out.state, purchase_id) {
        Err(rejection) => {
            out.send(
                from,
                Message::RefundResult {
                    refund_id: refund_id.clone(),
                    result: Err(rejection),
                },
            );
        }
        Ok(creator_id) => begin(out, refund_id, purchase_id, &creator_id, from),
    }
}

/// On the purchase's shard: runs the refund of `purchase_id` (refundable,
/// by `creator_id`'s item) by freezing the creator's escrow; the outcome
/// goes to `reply_to`.
pub(super) fn begin(
    out: &mut Out<'_>,
    refund_id: &RefundId,
    purchase_id: &PurchaseId,
    creator_id: &UserId,
    reply_to: ShardId,
) {
    out.push(Event::RefundProgressed {
        purchase_id: purchase_id.clone(),
        progress: RefundProgress::Freezing {
            refund_id: refund_id.clone(),
            reply_to,
        },
    });
    let to = out.shard_of(&keys::user(creator_id));
    out.send(
        to,
        Message::FreezeEscrow {
            purchase_id: purchase_id.clone(),
            creator_id: creator_id.clone(),
        },
    );
}

/// Whether `purchase_id` can be refunded now: it completed successfully, is
/// not a resale and has no refund running or done. Returns its creator.
pub(super) fn check_refundable(
    state: &ShardState,
    purchase_id: &PurchaseId,
) -> Result<UserId, Rejection> {
    let key = keys::purchase(purchase_id);
    let Some(remembered) = state.commands.get(key.as_str()) else {
        if state.retention.is_forgotten(&key) {
            return Err(reject(
                RejectionCode::RefundWindowClosed,
                format!("purchase {purchase_id} is past its refund window"),
            ));
        }
        return Err(reject(
            RejectionCode::NotFound,
            format!("purchase {purchase_id} does not exist"),
        ));
    };
    let record = remembered.record(&key);
    if let Command::PurchaseCart { lines, .. } = &record.command {
        return Err(reject(
            RejectionCode::NotFound,
            format!(
                "{purchase_id} is a cart, not a purchase: its lines are refunded one by one, as \
                 purchases {purchase_id}.line-1 to {purchase_id}.line-{}",
                lines.len()
            ),
        ));
    }
    let (Some(Completion { result: Ok(_), .. }), Some(reservation)) =
        (&record.completion, record.progress.reservation())
    else {
        return Err(reject(
            RejectionCode::NotFound,
            format!("purchase {purchase_id} did not complete"),
        ));
    };
    if let SaleKind::Resale { .. } = reservation.sale {
        return Err(reject(
            RejectionCode::NotRefundable,
            format!("purchase {purchase_id} is a resale"),
        ));
    }
    if state.refunds.contains_key(purchase_id) {
        return Err(reject(
            RejectionCode::AlreadyRefunded,
            format!("purchase {purchase_id} was already refunded"),
        ));
    }
    Ok(reservation.creator_id.clone())
}

/// A paid primary purchase, as a refund reads it.
struct Paid<'a> {
    buyer_id: &'a UserId,
    reservation: &'a Reservation,
    granted_items: &'a [ItemId],
}

impl<'a> SagaStage<'a> for Paid<'a> {
    const EXPECTED: &'static str = "a paid primary purchase";

    fn read(record: &'a CommandRecord) -> Option<Self> {
        match (
            &record.command,
            record.progress.reservation(),
            &record.completion,
        ) {
            (
                Command::Purchase { buyer_id, .. },
                Some(reservation),
                Some(Completion {
                    result: Ok(Success::Purchased { granted_items, .. }),
                    ..
                }),
            ) => Some(Self {
                buyer_id,
                reservation,
                granted_items,
            }),
            _ => None,
        }
    }
}

/// The step a running refund waits on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RefundStep {
    Freezing,
    Revoking,
}

/// The refund running for `purchase_id`, which must wait on `step`: its id
/// and the refund's shard. Panics otherwise (an answer nobody asked for).
fn running_refund(
    state: &ShardState,
    purchase_id: &PurchaseId,
    step: RefundStep,
) -> (RefundId, ShardId) {
    let progress = state.refunds.get(purchase_id);
    match (step, progress) {
        (
            RefundStep::Freezing,
            Some(RefundProgress::Freezing {
                refund_id,
                reply_to,
            }),
        )
        | (
            RefundStep::Revoking,
            Some(RefundProgress::Revoking {
                refund_id,
                reply_to,
            }),
        ) => (refund_id.clone(), *reply_to),
        _ => panic!(
            "the refund of purchase {purchase_id} should be {} but is {progress:?}",
            match step {
                RefundStep::Freezing => "freezing escrow",
                RefundStep::Revoking => "revoking the serial",
            }
        ),
    }
}

/// On the creator's shard: freezes the sale's escrow unless it was released.
/// Returns the answer for the purchase's shard.
pub(super) fn freeze_escrow(out: &mut Out<'_>, purchase_id: &PurchaseId) -> Message {
    let result = match out.state.escrow.get(purchase_id) {
        Some(entry) if !entry.frozen => {
            out.push(Event::EscrowFrozen {
                purchase_id: purchase_id.clone(),
            });
            Ok(())
        }
        _ => Err(reject(
            RejectionCode::RefundWindowClosed,
            format!("earnings of purchase {purchase_id} were already released"),
        )),
    };
    Message::FreezeResult {
        purchase_id: purchase_id.clone(),
        result,
    }
}

/// Back on the purchase's shard: escrow frozen, so revoke a Limited's serial
/// or, without one, refund; or abandon the refund.
pub(super) fn escrow_frozen(
    out: &mut Out<'_>,
    purchase_id: &PurchaseId,
    result: &Result<(), Rejection>,
) {
    let (refund_id, reply_to) = running_refund(out.state, purchase_id, RefundStep::Freezing);
    let key = keys::purchase(purchase_id);
    let record = saga::completed(out.state, &key);
    let purchase: Paid = saga::stage_of(&record, &key);
    if let Err(rejection) = result {
        out.push(Event::RefundProgressed {
            purchase_id: purchase_id.clone(),
            progress: RefundProgress::Abandoned,
        });
        super::takedown::refund_over(out, purchase_id);
        out.send(
            reply_to,
            Message::RefundResult {
                refund_id,
                result: Err(rejection.clone()),
            },
        );
        return;
    }
    match &purchase.reservation.sale {
        SaleKind::Item {
            item_id,
            serial: Some(serial),
        } => {
            out.push(Event::RefundProgressed {
                purchase_id: purchase_id.clone(),
                progress: RefundProgress::Revoking {
                    refund_id,
                    reply_to,
                },
            });
            let to = out.shard_of(&keys::item(item_id));
            out.send(
                to,
                Message::RevokeSerial {
                    purchase_id: purchase_id.clone(),
                    item_id: item_id.clone(),
                    serial: *serial,
                    owner_id: purchase.buyer_id.clone(),
                },
            );
        }
        _ => finish(out, purchase_id, &purchase, refund_id, reply_to, Vec::new()),
    }
}

/// On the item's shard: takes the serial back, unless it moved on since the
/// purchase (resold, or being bought from a listing). Returns the answer for
/// the purchase's shard.
pub(super) fn revoke_serial(
    out: &mut Out<'_>,
    purchase_id: &PurchaseId,
    item_id: &ItemId,
    serial: u32,
    owner_id: &UserId,
) -> Message {
    let item = super::routed_item(out.state, item_id);
    let listed_and_reserved = item
        .listing_by_serial
        .get(&serial)
        .is_some_and(|listing_id| item.listings[listing_id].reserved_by.is_some());
    let result = match item.holders.get(&serial) {
        Some(holder)
            if &holder.user_id == owner_id
                && &holder.purchase_id == purchase_id
                && !listed_and_reserved =>
        {
            out.push(Event::SerialRevoked {
                item_id: item_id.clone(),
                serial,
                purchase_id: purchase_id.clone(),
                owner_id: owner_id.clone(),
            });
            Ok(())
        }
        _ => Err(reject(
            RejectionCode::NotRefundable,
            format!("serial {serial} of item {item_id} has moved on since purchase {purchase_id}"),
        )),
    };
    Message::SerialRevokeAnswered {
        purchase_id: purchase_id.clone(),
        result,
        position: out.next_position(),
    }
}

/// Back on the purchase's shard: serial revoked (at `position` on the
/// item's shard, when the answer reports it), so refund; or unfreeze the
/// escrow and abandon the refund.
pub(super) fn serial_revoked(
    out: &mut Out<'_>,
    purchase_id: &PurchaseId,
    result: &Result<(), Rejection>,
    position: Option<ShardPosition>,
) {
    let (refund_id, reply_to) = running_refund(out.state, purchase_id, RefundStep::Revoking);
    let key = keys::purchase(purchase_id);
    let record = saga::completed(out.state, &key);
    let purchase: Paid = saga::stage_of(&record, &key);
    let Err(rejection) = result else {
        let positions = position.into_iter().collect();
        return finish(out, purchase_id, &purchase, refund_id, reply_to, positions);
    };
    let creator_id = &purchase.reservation.creator_id;
    out.push(Event::RefundProgressed {
        purchase_id: purchase_id.clone(),
        progress: RefundProgress::Abandoned,
    });
    super::takedown::refund_over(out, purchase_id);
    let to = out.shard_of(&keys::user(creator_id));
    out.send(
        to,
        Message::UnfreezeEscrow {
            purchase_id: purchase_id.clone(),
            creator_id: creator_id.clone(),
        },
    );
    out.send(
        reply_to,
        Message::RefundResult {
            refund_id,
            result: Err(rejection.clone()),
        },
    );
}

/// The refund goes through: the creator's escrow is reversed, the buyer is
/// paid back (losing the granted items), and the refund's shard is told,
/// with `positions` (the serial's revocation) and the deliveries to cover.
fn finish(
    out: &mut Out<'_>,
    purchase_id: &PurchaseId,
    purchase: &Paid<'_>,
    refund_id: RefundId,
    reply_to: ShardId,
    positions: Vec<ShardPosition>,
) {
    let reservation = purchase.reservation;
    out.push(Event::RefundProgressed {
        purchase_id: purchase_id.clone(),
        progress: RefundProgress::Refunded {
            refund_id: refund_id.clone(),
        },
    });
    super::takedown::refund_over(out, purchase_id);
    let creator_shard = out.shard_of(&keys::user(&reservation.creator_id));
    let reversal = out.send(
        creator_shard,
        Message::ReverseEscrow {
            purchase_id: purchase_id.clone(),
            refund_id: refund_id.clone(),
            creator_id: reservation.creator_id.clone(),
        },
    );
    let buyer_shard = out.shard_of(&keys::user(purchase.buyer_id));
    let credit = out.send(
        buyer_shard,
        Message::RefundBuyer {
            purchase_id: purchase_id.clone(),
            refund_id: refund_id.clone(),
            buyer_id: purchase.buyer_id.clone(),
            amount: reservation.price,
            revoke_items: purchase.granted_items.to_vec(),
        },
    );
    out.send(
        reply_to,
        Message::RefundCompleted {
            refund_id,
            amount: reservation.price,
            deliveries: vec![reversal, credit],
            positions,
        },
    );
}

/// On the creator's shard: the abandoned refund's escrow is released again
/// on schedule.
pub(super) fn unfreeze_escrow(out: &mut Out<'_>, purchase_id: &PurchaseId) {
    out.push(Event::EscrowUnfrozen {
        purchase_id: purchase_id.clone(),
    });
}

/// On the creator's shard: the frozen escrow and the fee go back to clearing.
pub(super) fn reverse_escrow(
    out: &mut Out<'_>,
    purchase_id: &PurchaseId,
    refund_id: &RefundId,
    creator_id: &UserId,
) {
    let entry = out
        .state
        .escrow
        .get(purchase_id)
        .unwrap_or_else(|| panic!("purchase {purchase_id} has no escrow to reverse"));
    let cleared = entry.creator_share + entry.platform_fee;
    out.push(Event::EscrowReversed {
        purchase_id: purchase_id.clone(),
        refund_id: refund_id.clone(),
        creator_id: creator_id.clone(),
        creator_share: entry.creator_share,
        platform_fee: entry.platform_fee,
        postings: vec![
            Posting::new(Account::Pending(creator_id.clone()), -entry.creator_share),
            Posting::new(Account::Fees, -entry.platform_fee),
            Posting::new(Account::Clearing, cleared),
        ],
    });
}

/// On the buyer's shard: the price goes back to the wallet; the granted
/// items are taken back.
pub(super) fn refund_buyer(
    out: &mut Out<'_>,
    purchase_id: &PurchaseId,
    refund_id: &RefundId,
    buyer_id: &UserId,
    amount: i64,
    revoke_items: &[ItemId],
) {
    let balance_after = out.state.balance(&Account::Wallet(buyer_id.clone())) + amount;
    out.push(Event::BuyerRefunded {
        purchase_id: purchase_id.clone(),
        refund_id: refund_id.clone(),
        buyer_id: buyer_id.clone(),
        amount,
        revoked_items: revoke_items.to_vec(),
        balance_after,
        postings: vec![
            Posting::new(Account::Clearing, -amount),
            Posting::new(Account::Wallet(buyer_id.clone()), amount),
        ],
    });
}

/// A refund waiting for the purchase's shard.
struct Refunding<'a> {
    purchase_id: &'a PurchaseId,
}

impl<'a> SagaStage<'a> for Refunding<'a> {
    const EXPECTED: &'static str = "a refund waiting for the purchase's shard";

    fn read(record: &'a CommandRecord) -> Option<Self> {
        match (&record.command, &record.progress) {
            (Command::Refund { purchase_id, .. }, Progress::Refunding) => {
                Some(Self { purchase_id })
            }
            _ => None,
        }
    }
}

/// Back on the refund's shard: the refund was refused (or, in logs written
/// before `RefundSettled` existed, it succeeded).
pub(super) fn refund_answered(
    out: &mut Out<'_>,
    refund_id: &RefundId,
    result: &Result<i64, Rejection>,
) {
    let key = keys::refund(refund_id);
    let refund: Refunding = saga::stage(out.state, &key);
    let result = result.clone().map(|amount| Success::Refunded {
        purchase_id: refund.purchase_id.clone(),
        amount,
    });
    out.complete(&key, result, Vec::new());
}

/// Back on the refund's shard: the refund went through; the completion also
/// covers the escrow reversal and the buyer's credit (`deliveries`) and the
/// serial's revocation (`positions`; none in `RefundSettled` of older logs).
pub(super) fn refund_settled(
    out: &mut Out<'_>,
    refund_id: &RefundId,
    amount: i64,
    deliveries: &[DeliveryMark],
    positions: &[ShardPosition],
) {
    let key = keys::refund(refund_id);
    let refund: Refunding = saga::stage(out.state, &key);
    let success = Success::Refunded {
        purchase_id: refund.purchase_id.clone(),
        amount,
    };
    out.complete_with(&key, Ok(success), positions.to_vec(), deliveries.to_vec());
}
