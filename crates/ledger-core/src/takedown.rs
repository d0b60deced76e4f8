//! Takedowns: moderation takes an item off sale for good and refunds every
//! purchase of it still in escrow.
//!
//! The takedown's shard (key `takedown:<item>`) asks the item's shard to
//! take the item down (off sale, its open listings ended), then asks every
//! shard to refund the item's sales it is home to. Each shard walks its
//! purchase records in bounded steps ([`RECORDS_SCANNED_PER_STEP`],
//! [`REFUNDS_STARTED_PER_STEP`]), runs the ordinary refund of each paid
//! purchase of the item (refused once its escrow was released or its serial
//! moved on: those are left as they are), waits for purchases still in
//! flight, and reports its tally once all are resolved. No shard does more
//! than one bounded step of a takedown at a time, and the item's shard only
//! ends its listings and revokes refunded serials.
//!
//! These are the state types; the flow is `decide::takedown`.

use std::collections::{BTreeMap, BTreeSet};

use bincode::{Decode, Encode};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::ids::{ItemId, PurchaseId, RefundId, ShardId};
use crate::model::Rejection;

/// Most purchase records one step of a takedown's scan examines.
pub const RECORDS_SCANNED_PER_STEP: usize = 2_048;
/// Most refunds one step of a takedown's scan starts.
pub const REFUNDS_STARTED_PER_STEP: usize = 128;

/// What a shard's takedowns hold.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
pub struct Takedowns {
    /// This shard's items that were taken down: never on sale again.
    pub items: BTreeSet<ItemId>,
    /// Takedowns homed on this shard, while shards report.
    pub homed: BTreeMap<ItemId, TakedownProgress>,
    /// Takedowns refunding this shard's purchases.
    pub scans: BTreeMap<ItemId, TakedownScan>,
    /// The refunds this shard runs for takedowns: their item and purchase.
    pub refunds: BTreeMap<RefundId, (ItemId, PurchaseId)>,
    /// Takedowns whose scan of this shard finished, with their home shard:
    /// a purchase of the item recorded here later (a cart's line, recorded
    /// after the cart is paid) is refunded and reported late.
    pub finished: BTreeMap<ItemId, ShardId>,
}

/// A takedown on its home shard, after its item went off sale.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
pub struct TakedownProgress {
    pub shard_count: u16,
    /// Shards that reported their tally.
    pub shards_reported: u16,
    pub tally: TakedownTally,
}

/// What a takedown did to the purchases of its item (on one shard, or in all).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
pub struct TakedownTally {
    /// Purchases refunded by the takedown, and the amount paid back.
    pub refunded: u32,
    pub refunded_amount: i64,
    /// Purchases already refunded before the takedown reached them.
    pub already_refunded: u32,
    /// Purchases left as they are: escrow released, or serial moved on.
    pub left: u32,
}

impl TakedownTally {
    pub fn add(&mut self, other: &TakedownTally) {
        self.refunded += other.refunded;
        self.refunded_amount += other.refunded_amount;
        self.already_refunded += other.already_refunded;
        self.left += other.left;
    }

    /// Counts one purchase's outcome.
    pub fn count(&mut self, outcome: &TakedownOutcome) {
        match outcome {
            TakedownOutcome::Refunded { amount } => {
                self.refunded += 1;
                self.refunded_amount += amount;
            }
            TakedownOutcome::AlreadyRefunded => self.already_refunded += 1,
            TakedownOutcome::Left { .. } => self.left += 1,
        }
    }
}

/// What became of one purchase of a taken-down item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
pub enum TakedownOutcome {
    /// Refunded: the buyer got `amount` back.
    Refunded { amount: i64 },
    /// Refunded before the takedown reached it.
    AlreadyRefunded,
    /// Left as it is, and why (escrow released, serial moved on).
    Left { rejection: Rejection },
}

/// A takedown refunding the purchases homed on one shard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
pub struct TakedownScan {
    /// The takedown's home shard, which gets the tally.
    pub reply_to: ShardId,
    /// The last purchase record examined (`None`: none yet).
    pub cursor: Option<String>,
    /// Every purchase record was examined.
    pub scanned: bool,
    /// Purchases of the item not resolved yet: in flight, or being refunded.
    pub pending: BTreeSet<PurchaseId>,
    /// Of those, purchases still in flight (neither paid nor refused).
    pub in_flight: BTreeSet<PurchaseId>,
    pub tally: TakedownTally,
    /// Reopened for purchases recorded after the scan finished: its tally
    /// adds to the shard's, which was reported before.
    pub late: bool,
}

impl TakedownScan {
    pub fn new(reply_to: ShardId) -> Self {
        Self {
            reply_to,
            cursor: None,
            scanned: false,
            pending: BTreeSet::new(),
            in_flight: BTreeSet::new(),
            tally: TakedownTally::default(),
            late: false,
        }
    }

    /// Nothing left to examine, wait for or refund.
    pub fn is_done(&self) -> bool {
        self.scanned && self.pending.is_empty()
    }
}

/// The id of the refund a takedown of `item_id` runs for `purchase_id`:
/// `takedown-` and 32 hex digits of SHA-256 over both (stable, and within
/// the id grammar whatever the ids' lengths).
pub fn refund_id(item_id: &ItemId, purchase_id: &PurchaseId) -> RefundId {
    let mut hasher = Sha256::new();
    hasher.update(b"takedown\0");
    hasher.update(item_id.as_str().as_bytes());
    hasher.update(b"\0");
    hasher.update(purchase_id.as_str().as_bytes());
    let digest = hasher.finalize();
    let hex: String = digest[..16]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    RefundId::parse(format!("takedown-{hex}")).expect("a takedown's refund id is well formed")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refund_ids_are_stable_and_distinct_per_purchase() {
        let item = ItemId::parse("hat").expect("valid id");
        let first = refund_id(&item, &PurchaseId::parse("p1").expect("valid id"));
        let second = refund_id(&item, &PurchaseId::parse("p2").expect("valid id"));
        assert_ne!(first, second);
        assert_eq!(
            first,
            refund_id(&item, &PurchaseId::parse("p1").expect("valid id"))
        );
        assert!(first.as_str().starts_with("takedown-"));
        assert_eq!(first.as_str().len(), "takedown-".len() + 32);
        let long = PurchaseId::parse("p".repeat(128)).expect("valid id");
        assert_eq!(refund_id(&item, &long).as_str().len(), 41);
    }
}
