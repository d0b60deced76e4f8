//! The ledger's clock: a tick releases the escrow that is due to the
//! creators' wallets, a bounded number at a time, skipping frozen escrow
//! (a refund is running), and forgets the commands past their retention
//! (see [`crate::retention`]).

use crate::model::*;
use crate::money::{Account, Posting};
use crate::state::ShardState;

use super::out::Out;

/// Releases due escrow, at most `releases_per_tick_max` entries; the rest
/// waits for the next tick.
pub(super) fn release_due_escrow(out: &mut Out<'_>, now_ms: TimestampMs) {
    let state = out.state;
    for (release_at_ms, purchase_id) in state.escrow_due.iter() {
        if *release_at_ms > now_ms || out.events.len() >= out.config.releases_per_tick_max {
            break;
        }
        let entry = state
            .escrow
            .get(purchase_id)
            .unwrap_or_else(|| panic!("escrow of purchase {purchase_id} is due but missing"));
        if entry.frozen {
            continue;
        }
        let amount = entry.creator_share;
        let creator = entry.creator_id.clone();
        out.push(Event::EscrowReleased {
            purchase_id: purchase_id.clone(),
            creator_id: creator.clone(),
            amount,
            postings: vec![
                Posting::new(Account::Pending(creator.clone()), -amount),
                Posting::new(Account::Wallet(creator), amount),
            ],
        });
    }
}

/// Forgets completed commands past their retention, at most
/// `forgets_per_tick_max` per queue, oldest first: those kept for the
/// idempotency horizon, and paid primary purchases once they can no longer
/// be refunded either (a purchase whose refund runs stops its queue until
/// the refund ends). One event, whatever the count.
pub(super) fn forget_expired_commands(out: &mut Out<'_>, now_ms: TimestampMs) {
    let state = out.state;
    let horizon_ms = out.config.idempotency_horizon_ms;
    let before_ms = now_ms.saturating_sub(horizon_ms);
    let paid_before_ms = now_ms.saturating_sub(horizon_ms.max(out.config.escrow_hold_ms));
    let most = out.config.forgets_per_tick_max as usize;
    let count = state
        .retention
        .due
        .iter()
        .take_while(|(base_ms, _)| *base_ms < before_ms)
        .take(most)
        .count();
    let paid_count = state
        .retention
        .due_paid
        .iter()
        .take_while(|(base_ms, key)| *base_ms < paid_before_ms && !refund_runs(state, key))
        .take(most)
        .count();
    if count == 0 && paid_count == 0 {
        return;
    }
    out.push(Event::CommandsForgotten {
        before_ms,
        count: u32::try_from(count).expect("bounded by forgets_per_tick_max"),
        paid_before_ms,
        paid_count: u32::try_from(paid_count).expect("bounded by forgets_per_tick_max"),
    });
}

/// Whether a refund of the purchase under `key` is running. The key names
/// the purchase: its remembered record (kept encoded) is not decoded.
fn refund_runs(state: &ShardState, key: &str) -> bool {
    let Some(purchase_id) = keys::purchase_id(key) else {
        return false;
    };
    matches!(
        state.refunds.get(&purchase_id),
        Some(RefundProgress::Freezing { .. } | RefundProgress::Revoking { .. })
    )
}
