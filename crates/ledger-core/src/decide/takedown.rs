//! Takedowns (see [`crate::takedown`]): the takedown's shard asks the item's
//! shard to take the item off sale (`TakeDownItem`, answered
//! `ItemTakenDownAnswer`), answers the admin, and asks every shard to
//! refund the item's sales homed there (`RefundItemSales`). Each shard scans
//! its purchase records in bounded steps (`ContinueTakedownScan` to itself
//! between steps), refunds each paid purchase of the item with the ordinary
//! refund (its outcome comes back to the same shard as `RefundCompleted` or
//! `RefundResult`), waits for purchases in flight, and reports its tally
//! (`TakedownShardDone`) once every one is resolved.

use crate::ids::{ItemId, ListingId, PurchaseId, RefundId, ShardId};
use crate::model::*;
use crate::state::{CommandRecord, ShardState};
use crate::takedown::{
    TakedownOutcome, TakedownTally, RECORDS_SCANNED_PER_STEP, REFUNDS_STARTED_PER_STEP,
};

use super::out::Out;
use super::reject;
use super::saga::{self, SagaStage};

/// `TakeDown` accepted on the takedown's shard: asks the item's shard.
pub(super) fn start(out: &mut Out<'_>, item_id: &ItemId, at_ms: TimestampMs) {
    let to = out.shard_of(&keys::item(item_id));
    out.send(
        to,
        Message::TakeDownItem {
            item_id: item_id.clone(),
            at_ms,
        },
    );
}

/// On the item's shard: the item goes off sale for good and its open
/// listings end (a listing a purchase holds ends if that purchase is not
/// paid). Answers with how many listings ended.
pub(super) fn take_down_item(out: &mut Out<'_>, item_id: &ItemId, at_ms: TimestampMs) -> Message {
    let result = match out.state.items.get(item_id) {
        None => Err(reject(
            RejectionCode::NotFound,
            format!("item {item_id} does not exist"),
        )),
        Some(_) if out.state.takedowns.items.contains(item_id) => Err(reject(
            RejectionCode::ItemTakenDown,
            format!("item {item_id} was already taken down"),
        )),
        Some(item) => {
            let open: Vec<(ListingId, u32)> = item
                .listings
                .iter()
                .filter(|(_, listing)| listing.reserved_by.is_none())
                .map(|(listing_id, listing)| (listing_id.clone(), listing.serial))
                .collect();
            for (listing_id, serial) in &open {
                out.push(Event::ListingEnded {
                    listing_id: listing_id.clone(),
                    item_id: item_id.clone(),
                    serial: *serial,
                    reason: ListingEndReason::TakenDown,
                });
            }
            out.push(Event::ItemTakenDown {
                item_id: item_id.clone(),
                at_ms,
            });
            Ok(u32::try_from(open.len()).expect("an item has fewer than 2^32 listings"))
        }
    };
    Message::ItemTakenDownAnswer {
        item_id: item_id.clone(),
        result,
        position: out.next_position(),
    }
}

/// Refuses a change to an item that was taken down.
pub(super) fn check_not_taken_down(state: &ShardState, item_id: &ItemId) -> Result<(), Rejection> {
    if state.takedowns.items.contains(item_id) {
        return Err(reject(
            RejectionCode::ItemTakenDown,
            format!("item {item_id} was taken down"),
        ));
    }
    Ok(())
}

/// A takedown waiting for its item's shard.
struct TakingDown<'a> {
    item_id: &'a ItemId,
}

impl<'a> SagaStage<'a> for TakingDown<'a> {
    const EXPECTED: &'static str = "a takedown waiting for its item";

    fn read(record: &'a CommandRecord) -> Option<Self> {
        match (&record.command, &record.progress) {
            (Command::TakeDown { item_id }, Progress::TakingDown) => Some(Self { item_id }),
            _ => None,
        }
    }
}

/// Back on the takedown's shard: the item is off sale, so every shard is
/// asked to refund its sales and the admin is answered; or the takedown is
/// refused.
pub(super) fn item_taken_down(
    out: &mut Out<'_>,
    item_id: &ItemId,
    result: &Result<u32, Rejection>,
    position: ShardPosition,
) {
    let key = keys::takedown(item_id);
    let takedown: TakingDown = saga::stage(out.state, &key);
    let item_id = takedown.item_id.clone();
    let listings_ended = match result {
        Err(rejection) => return out.complete(&key, Err(rejection.clone()), Vec::new()),
        Ok(listings_ended) => *listings_ended,
    };
    let shard_count = out.config.shard_count;
    out.push(Event::TakedownRefunding {
        item_id: item_id.clone(),
        listings_ended,
        shard_count,
    });
    for shard in 0..shard_count {
        out.send(
            ShardId(shard),
            Message::RefundItemSales {
                item_id: item_id.clone(),
            },
        );
    }
    out.complete(
        &key,
        Ok(Success::TakenDown {
            item_id,
            listings_ended,
            shard_count,
        }),
        vec![position],
    );
}

/// What one step of a shard's part in a takedown changed, beyond the state
/// it read: enough to tell whether the shard is done.
#[derive(Default)]
struct StepChanges {
    scanned: Option<bool>,
    pending_added: usize,
    pending_resolved: usize,
    tally: TakedownTally,
}

/// On every shard: starts refunding the item's sales homed here.
pub(super) fn refund_item_sales(out: &mut Out<'_>, from: ShardId, item_id: &ItemId) {
    assert!(
        !out.state.takedowns.scans.contains_key(item_id),
        "a shard is asked once to refund the sales of item {item_id}"
    );
    out.push(Event::TakedownScanStarted {
        item_id: item_id.clone(),
        reply_to: from,
    });
    let mut changes = StepChanges::default();
    scan_step(out, item_id, None, &mut changes);
    finish_if_done(out, item_id, from, changes);
}

/// On a shard, to itself: the next step of the takedown's scan.
pub(super) fn continue_scan(out: &mut Out<'_>, item_id: &ItemId) {
    let scan = &out.state.takedowns.scans[item_id];
    let (cursor, reply_to) = (scan.cursor.clone(), scan.reply_to);
    let mut changes = StepChanges::default();
    scan_step(out, item_id, cursor.as_deref(), &mut changes);
    finish_if_done(out, item_id, reply_to, changes);
}

/// Examines up to [`RECORDS_SCANNED_PER_STEP`] purchase records after
/// `cursor`, starting up to [`REFUNDS_STARTED_PER_STEP`] refunds; asks for
/// another step if records are left.
fn scan_step(out: &mut Out<'_>, item_id: &ItemId, cursor: Option<&str>, changes: &mut StepChanges) {
    use std::ops::Bound;
    const PREFIX: &str = "purchase:";
    let state = out.state;
    let start = match cursor {
        Some(cursor) => Bound::Excluded(cursor),
        None => Bound::Included(PREFIX),
    };
    let mut started = 0;
    let mut last: Option<&str> = None;
    let mut in_flight = Vec::new();
    let mut scanned = true;
    let records = state.commands.range::<str, _>((start, Bound::Unbounded));
    for (examined, (key, record)) in records.enumerate() {
        if !key.starts_with(PREFIX) {
            break;
        }
        if examined == RECORDS_SCANNED_PER_STEP || started == REFUNDS_STARTED_PER_STEP {
            scanned = false;
            break;
        }
        last = Some(key);
        let record = record.record(key);
        let Command::Purchase {
            purchase_id,
            target: PurchaseTarget::Item(bought),
            ..
        } = &record.command
        else {
            continue;
        };
        if bought != item_id {
            continue;
        }
        match &record.completion {
            None => in_flight.push(purchase_id.clone()),
            // Another refund of it runs: awaited like a purchase in flight
            // (refunded by it, or refunded by the takedown once it gave up).
            Some(Completion { result: Ok(_), .. }) if refund_running(state, purchase_id) => {
                in_flight.push(purchase_id.clone())
            }
            Some(Completion { result: Err(_), .. }) => {}
            Some(Completion { result: Ok(_), .. }) => {
                if refund_sale(out, item_id, purchase_id, changes) {
                    started += 1;
                }
            }
        }
    }
    let cursor = last.or(cursor).map(str::to_string);
    changes.pending_added += in_flight.len();
    changes.scanned = Some(scanned);
    out.push(Event::TakedownScanned {
        item_id: item_id.clone(),
        cursor,
        scanned,
        in_flight,
    });
    if !scanned {
        let me = out.state.shard;
        out.send(
            me,
            Message::ContinueTakedownScan {
                item_id: item_id.clone(),
            },
        );
    }
}

/// Refunds a paid purchase of the taken-down item (homed here): starts its
/// refund, or resolves it at once when it cannot be refunded. Returns
/// whether a refund started.
fn refund_sale(
    out: &mut Out<'_>,
    item_id: &ItemId,
    purchase_id: &PurchaseId,
    changes: &mut StepChanges,
) -> bool {
    match super::refund::check_refundable(out.state, purchase_id) {
        Ok(creator_id) => {
            let refund_id = crate::takedown::refund_id(item_id, purchase_id);
            out.push(Event::TakedownRefundStarted {
                item_id: item_id.clone(),
                purchase_id: purchase_id.clone(),
                refund_id: refund_id.clone(),
            });
            changes.pending_added += 1;
            let me = out.state.shard;
            super::refund::begin(out, &refund_id, purchase_id, &creator_id, me);
            true
        }
        Err(rejection) => {
            let outcome = match rejection.code {
                RejectionCode::AlreadyRefunded => TakedownOutcome::AlreadyRefunded,
                _ => TakedownOutcome::Left { rejection },
            };
            changes.tally.count(&outcome);
            out.push(Event::TakedownSaleResolved {
                item_id: item_id.clone(),
                purchase_id: purchase_id.clone(),
                outcome,
            });
            false
        }
    }
}

/// Whether a refund of `purchase_id` (homed here) is running.
fn refund_running(state: &ShardState, purchase_id: &PurchaseId) -> bool {
    matches!(
        state.refunds.get(purchase_id),
        Some(RefundProgress::Freezing { .. } | RefundProgress::Revoking { .. })
    )
}

/// On a purchase's shard, as a refund of a purchase ends (refunded or
/// given up): a takedown waiting for it refunds the purchase next (found
/// refunded already, or refunded now).
pub(super) fn refund_over(out: &mut Out<'_>, purchase_id: &PurchaseId) {
    if !out.state.takedowns.scans.is_empty() {
        purchase_finished(out, purchase_id, true);
    }
}

/// Whether `refund_id` is a refund a takedown runs on this shard (a client's
/// refund of the same id, if one were ever sent, keeps its own record).
pub(super) fn runs_refund(state: &ShardState, refund_id: &RefundId) -> bool {
    state.takedowns.refunds.contains_key(refund_id)
        && !state
            .commands
            .contains_key(keys::refund(refund_id).as_str())
}

/// On the purchase's shard: a takedown's refund ended, refunded (`Ok` with
/// the amount) or refused (left as it is).
pub(super) fn refund_ended(
    out: &mut Out<'_>,
    refund_id: &RefundId,
    result: Result<i64, &Rejection>,
) {
    let state = out.state;
    let (item_id, purchase_id) = state.takedowns.refunds[refund_id].clone();
    let scan = &state.takedowns.scans[&item_id];
    assert!(
        scan.pending.contains(&purchase_id),
        "takedown refund {refund_id} is pending"
    );
    let outcome = match result {
        Ok(amount) => TakedownOutcome::Refunded { amount },
        Err(rejection) => TakedownOutcome::Left {
            rejection: rejection.clone(),
        },
    };
    let mut changes = StepChanges {
        pending_resolved: 1,
        ..Default::default()
    };
    changes.tally.count(&outcome);
    out.push(Event::TakedownSaleResolved {
        item_id: item_id.clone(),
        purchase_id,
        outcome,
    });
    finish_if_done(out, &item_id, scan.reply_to, changes);
}

/// On a purchase's shard, as the purchase completes (paid or not): a
/// takedown waiting for it refunds it next, or stops waiting.
pub(super) fn purchase_finished(out: &mut Out<'_>, purchase_id: &PurchaseId, paid: bool) {
    let state = out.state;
    let Some((item_id, scan)) = state
        .takedowns
        .scans
        .iter()
        .find(|(_, scan)| scan.in_flight.contains(purchase_id))
    else {
        return;
    };
    out.push(Event::TakedownPurchaseFinished {
        item_id: item_id.clone(),
        purchase_id: purchase_id.clone(),
        paid,
    });
    if paid {
        // Refunded from the next step on, once the purchase's completion
        // is part of the state the refund reads.
        let me = state.shard;
        out.send(
            me,
            Message::RefundTakenDownSale {
                item_id: item_id.clone(),
                purchase_id: purchase_id.clone(),
            },
        );
    } else {
        let changes = StepChanges {
            pending_resolved: 1,
            ..Default::default()
        };
        finish_if_done(out, item_id, scan.reply_to, changes);
    }
}

/// On a purchase's shard, to itself: refunds a purchase that was in
/// flight when the takedown started and was paid since.
pub(super) fn refund_taken_down_sale(
    out: &mut Out<'_>,
    item_id: &ItemId,
    purchase_id: &PurchaseId,
) {
    let reply_to = out.state.takedowns.scans[item_id].reply_to;
    if refund_running(out.state, purchase_id) {
        // Another refund of it started meanwhile: awaited until it ends.
        out.push(Event::TakedownRefundAwaited {
            item_id: item_id.clone(),
            purchase_id: purchase_id.clone(),
        });
        return;
    }
    let mut changes = StepChanges::default();
    if !refund_sale(out, item_id, purchase_id, &mut changes) {
        // Resolved at once: it was pending (paid, awaiting its refund).
        changes.pending_resolved += 1;
    } else {
        // Already counted as pending when it was found in flight.
        changes.pending_added -= 1;
    }
    finish_if_done(out, item_id, reply_to, changes);
}

/// Reports this shard's tally to the takedown's shard once the scan is
/// over and nothing is pending, counting this step's `changes`.
fn finish_if_done(out: &mut Out<'_>, item_id: &ItemId, reply_to: ShardId, changes: StepChanges) {
    let (scanned, pending, mut tally, late) = match out.state.takedowns.scans.get(item_id) {
        Some(scan) => (scan.scanned, scan.pending.len(), scan.tally, scan.late),
        // Started in this very step.
        None => (false, 0, TakedownTally::default(), false),
    };
    let scanned = changes.scanned.unwrap_or(scanned);
    let pending = (pending + changes.pending_added)
        .checked_sub(changes.pending_resolved)
        .expect("a takedown resolves only pending purchases");
    if !scanned || pending > 0 {
        return;
    }
    tally.add(&changes.tally);
    out.push(Event::TakedownScanFinished {
        item_id: item_id.clone(),
        tally,
    });
    out.send(
        reply_to,
        Message::TakedownShardDone {
            item_id: item_id.clone(),
            tally,
            late,
        },
    );
}

/// On a purchase's shard, as a cart's line is recorded there (once the cart
/// is paid): if a takedown of its item already scanned past it (or finished
/// here), the line is refunded next, and reported late if need be. A scan
/// that has not reached it yet finds it as any other purchase.
pub(super) fn line_recorded(out: &mut Out<'_>, purchase_id: &PurchaseId, item_id: &ItemId) {
    let state = out.state;
    let key = keys::purchase(purchase_id);
    let reply_to = match state.takedowns.scans.get(item_id) {
        Some(scan) if scan.scanned || scan.cursor.as_ref().is_some_and(|cursor| *cursor >= key) => {
            scan.reply_to
        }
        Some(_) => return,
        None => match state.takedowns.finished.get(item_id) {
            Some(reply_to) => *reply_to,
            None => return,
        },
    };
    out.push(Event::TakedownLateSale {
        item_id: item_id.clone(),
        purchase_id: purchase_id.clone(),
        reply_to,
    });
    // Refunded from the next step on, once the line's record is part of
    // the state the refund reads.
    let me = state.shard;
    out.send(
        me,
        Message::RefundTakenDownSale {
            item_id: item_id.clone(),
            purchase_id: purchase_id.clone(),
        },
    );
}

/// Back on the takedown's shard: one more shard resolved its sales.
pub(super) fn shard_done(
    out: &mut Out<'_>,
    from: ShardId,
    item_id: &ItemId,
    shard_tally: &TakedownTally,
    late: bool,
) {
    let progress = out
        .state
        .takedowns
        .homed
        .get(item_id)
        .unwrap_or_else(|| panic!("shard {from} reports to takedown of {item_id}, not here"));
    let mut tally = progress.tally;
    tally.add(shard_tally);
    out.push(Event::TakedownShardReported {
        item_id: item_id.clone(),
        shard: from,
        shard_tally: *shard_tally,
        tally,
        // A late report adds to the tally of a shard counted before.
        shards_reported: progress.shards_reported + u16::from(!late),
    });
}
