//! The ledger's clock: a tick releases the escrow that is due to the
//! creators' wallets, a bounded number at a time, skipping frozen escrow
//! (a refund is running).

use crate::model::*;
use crate::money::{Account, Posting};

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
