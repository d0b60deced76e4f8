//! The projection function: one event in, read-model changes out.
//!
//! Pure and deterministic: no I/O, no clock. A storage adapter applies the
//! changes of each event, in global commit order, to its read-model tables.
//!
//! Conventions:
//!
//! * Balances follow postings generically: each `Wallet(u)` posting changes
//!   `u`'s balance, each `Pending(u)` posting changes `u`'s pending earnings.
//! * One [`Change::TransactionAppended`] is emitted per (event, user, account)
//!   whose postings sum to a non-zero amount. `escrow_released` moves money
//!   from a creator's pending earnings to their wallet, so it yields two
//!   entries for that creator: one for the pending account (negative) and one
//!   for the wallet (positive). Entries of one event are emitted in posting
//!   order of first appearance of each (user, account).
//! * `reference` is the purchase id, or the grant id for grants (refund
//!   entries reference the refunded purchase).

use ledger_core::codec::Logged;
use ledger_core::takedown::TakedownOutcome;
use ledger_core::{
    Account, BundleId, Completion, Event, ItemDefinition, ItemId, ListingId, Posting, PurchaseId,
    PurchaseTarget, RefundProgress, ShardId, Success, TimestampMs, UserId,
};

/// Which of a user's accounts a transaction entry changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TransactionAccount {
    /// The spendable wallet balance.
    Wallet,
    /// Earnings held in escrow.
    Pending,
}

impl TransactionAccount {
    /// Stable name, as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            TransactionAccount::Wallet => "wallet",
            TransactionAccount::Pending => "pending",
        }
    }

    /// Parses a name made by [`TransactionAccount::as_str`].
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "wallet" => Some(TransactionAccount::Wallet),
            "pending" => Some(TransactionAccount::Pending),
            _ => None,
        }
    }
}

/// One change to the read models.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Shard `to` consumed message `sequence` from shard `from`, after its effects.
    MessageConsumed {
        from: ShardId,
        to: ShardId,
        sequence: u64,
    },
    /// Adds to a user's wallet balance and pending earnings.
    BalanceDelta {
        user_id: UserId,
        wallet_delta: i64,
        pending_delta: i64,
    },
    /// Appends an entry to a user's transaction history.
    TransactionAppended {
        user_id: UserId,
        account: TransactionAccount,
        /// `<shard>.<sequence>` of the event.
        position: String,
        kind: &'static str,
        amount: i64,
        reference: String,
        at_ms: TimestampMs,
    },
    /// A user now holds an item (`serial` is `None` for a non-limited item).
    InventoryAdded {
        user_id: UserId,
        item_id: ItemId,
        serial: Option<u32>,
        purchase_id: PurchaseId,
        acquired_at_ms: TimestampMs,
    },
    /// A user no longer holds an item (or that serial of it).
    InventoryRemoved {
        user_id: UserId,
        item_id: ItemId,
        serial: Option<u32>,
    },
    /// An item was published: insert it, or overwrite its definition
    /// (keeping sales figures) if it is already known.
    ItemUpserted {
        definition: ItemDefinition,
    },
    ItemPriceChanged {
        item_id: ItemId,
        price: i64,
    },
    /// An item's regional prices from now on (empty: none).
    ItemRegionalPricesChanged {
        item_id: ItemId,
        prices: Vec<(ledger_core::Region, i64)>,
    },
    /// The item's shard prices it by a test (`started` orders the tests of
    /// one item: the log position of the start).
    ItemPriceTestStarted {
        item_id: ItemId,
        test_id: ledger_core::PriceTestId,
        arms: Vec<i64>,
        ends_at_ms: TimestampMs,
        started: u64,
    },
    /// The item's shard no longer prices it by that test.
    ItemPriceTestClosed {
        item_id: ItemId,
        test_id: ledger_core::PriceTestId,
    },
    /// A price test was opened on its shard (status `starting`).
    PriceTestOpened {
        test_id: ledger_core::PriceTestId,
        item_id: ItemId,
        arms: Vec<i64>,
        ends_at_ms: TimestampMs,
        apply_winner: bool,
    },
    /// The test runs: its item's shard prices by it.
    PriceTestRunning {
        test_id: ledger_core::PriceTestId,
        creator_id: UserId,
    },
    /// The item's shard refused the test: it does not exist.
    PriceTestRemoved {
        test_id: ledger_core::PriceTestId,
    },
    /// Each arm's exposures so far.
    PriceTestExposures {
        test_id: ledger_core::PriceTestId,
        exposures: Vec<u64>,
    },
    /// One arm's purchases and revenue so far.
    PriceTestArmSales {
        test_id: ledger_core::PriceTestId,
        arm: u8,
        purchases: u64,
        revenue: i64,
    },
    /// The test ended with `winner`.
    PriceTestEnded {
        test_id: ledger_core::PriceTestId,
        winner: Option<u8>,
        applied_price: Option<i64>,
    },
    /// A floor version (from the floors' home shard).
    PriceFloorSet {
        kind: ledger_core::ItemKind,
        version: u32,
        price: i64,
        effective_from_ms: TimestampMs,
    },
    ItemOnSaleChanged {
        item_id: ItemId,
        on_sale: bool,
    },
    /// An item was taken down; `shard_count` shards refund its sales.
    TakedownStarted {
        item_id: ItemId,
        listings_ended: u32,
        shard_count: u16,
        at_ms: TimestampMs,
    },
    /// `shards_reported` shards resolved the sales of a taken-down item,
    /// with this tally in all.
    TakedownProgressed {
        item_id: ItemId,
        shards_reported: u16,
        tally: ledger_core::takedown::TakedownTally,
        at_ms: TimestampMs,
    },
    /// What a takedown did to one purchase: `refunded` (with the amount),
    /// `already_refunded`, or `left` (with the refusal's code).
    TakedownSaleResolved {
        item_id: ItemId,
        purchase_id: PurchaseId,
        outcome: &'static str,
        amount: Option<i64>,
        reason: Option<String>,
    },
    /// A serial of a Limited now belongs to `user_id`.
    SerialOwnerSet {
        item_id: ItemId,
        serial: u32,
        user_id: UserId,
    },
    /// A serial of a Limited belongs to nobody any more.
    SerialOwnerCleared {
        item_id: ItemId,
        serial: u32,
    },
    /// Adds to the number of serials or copies of an item currently sold.
    SoldDelta {
        item_id: ItemId,
        delta: i64,
    },
    /// A primary or resale sale of an item completed at `price`:
    /// `sales_count += 1` and the recent average price moves (see
    /// [`next_recent_average_price`]). The sale counts in the history of
    /// the UTC day of `at_ms` (the completion's log time).
    SaleRecorded {
        item_id: ItemId,
        price: i64,
        purchase_id: PurchaseId,
        resale: bool,
        at_ms: TimestampMs,
    },
    /// The primary purchase `purchase_id` was refunded: if it was a sale of
    /// an item, the history of the sale's day counts it as refunded (logged
    /// by the purchase's home shard, after its sale).
    SaleRefunded {
        purchase_id: PurchaseId,
    },
    /// The resale listings of `item_id` changed at `at_ms` (after the
    /// listing changes of the same event): the history records the lowest
    /// open ask for that UTC day.
    ResaleBookChanged {
        item_id: ItemId,
        at_ms: TimestampMs,
    },
    ListingAdded {
        listing_id: ListingId,
        item_id: ItemId,
        serial: u32,
        seller_id: UserId,
        price: i64,
    },
    ListingRemoved {
        listing_id: ListingId,
    },
    /// Any listing of this serial left the book (the serial was revoked).
    SerialListingsRemoved {
        item_id: ItemId,
        serial: u32,
    },
    BundleUpserted {
        bundle_id: BundleId,
        creator_id: UserId,
        name: String,
        item_ids: Vec<ItemId>,
        price: i64,
    },
    /// Adds to a creator's earnings.
    EarningsDelta {
        creator_id: UserId,
        pending: i64,
        released: i64,
        lifetime: i64,
        sales_count: i64,
    },
    /// A step of a purchase's story (`crate::trace`).
    PurchaseStep(PurchaseStep),
    /// A creator's share (or royalty) of a sale entered escrow: the sale
    /// joins the creator's sales, held until `release_at_ms`.
    CreatorSaleRecorded(CreatorSale),
    /// The escrow of the sale of `purchase_id` changed (the creator's shard
    /// logs every change, so the sale was recorded by an earlier event of
    /// the same shard).
    CreatorSaleChanged {
        purchase_id: PurchaseId,
        change: SaleEscrowChange,
        at_ms: TimestampMs,
    },
}

/// A creator's sale as its escrow records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatorSale {
    pub creator_id: UserId,
    pub purchase_id: PurchaseId,
    /// When the share entered escrow (the creator's shard took the sale).
    pub sold_at_ms: TimestampMs,
    /// `<shard>.<sequence>` of the `sale_settled` event.
    pub position: String,
    pub resale: bool,
    /// What the sale moved to the creator's side: share (or royalty) plus fee.
    pub cleared: i64,
    pub creator_share: i64,
    pub platform_fee: i64,
    pub policy_version: u16,
    pub release_at_ms: TimestampMs,
}

/// What happened to a sale's escrow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaleEscrowChange {
    /// A refund froze it: ticks do not release it.
    Frozen,
    /// The refund was abandoned: releasable again.
    Unfrozen,
    /// Paid out to the creator's wallet.
    Released,
    /// Taken back by a refund.
    Refunded,
}

/// One step of a purchase's story, at the event that made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PurchaseStep {
    pub purchase_id: PurchaseId,
    /// `<shard>.<sequence>` of the event.
    pub position: String,
    /// `accepted`, `reserved`, `reservation_released`, `paid`, `granted`,
    /// `settled`, `seller_paid`, `completed`, `refused`, `released`,
    /// `escrow_frozen`, `escrow_unfrozen`, `escrow_reversed`,
    /// `serial_revoked`, `refunded`.
    pub step: &'static str,
    /// The user the step concerns (buyer, creator, seller), or empty.
    pub user_id: String,
    /// The item, bundle or listing the step concerns, or empty.
    pub subject: String,
    pub serial: Option<u32>,
    /// Money the step moved for `user_id` (signed), if any.
    pub amount: Option<i64>,
    /// A rejection, a fee or a refund id, or empty.
    pub detail: String,
    pub at_ms: TimestampMs,
}

impl PurchaseStep {
    /// The step as served.
    pub fn into_view(self) -> crate::views::PurchaseStepView {
        crate::views::PurchaseStepView {
            position: self.position,
            step: self.step.to_string(),
            user_id: self.user_id,
            subject: self.subject,
            serial: self.serial,
            amount: self.amount,
            detail: self.detail,
            at_ms: self.at_ms,
        }
    }
}

/// The recent average price after a sale at `price`: the first sale sets it,
/// each later one moves it by `(price - previous) / 10`, rounded toward zero.
pub fn next_recent_average_price(previous: Option<i64>, price: i64) -> i64 {
    match previous {
        None => price,
        Some(previous) => previous + (price - previous) / 10,
    }
}

/// `<shard>.<sequence>` of a logged event: how transaction entries name events.
pub fn position_text(logged: &Logged<'_>) -> String {
    format!("{}.{}", logged.shard.0, logged.sequence)
}

/// The read-model changes of one event.
/// A user now holds a Limited serial: it joins their inventory and the owners list.
fn serial_acquired(
    changes: &mut Vec<Change>,
    item_id: &ItemId,
    serial: u32,
    user_id: &UserId,
    purchase_id: &PurchaseId,
    acquired_at_ms: TimestampMs,
) {
    changes.push(Change::InventoryAdded {
        user_id: user_id.clone(),
        item_id: item_id.clone(),
        serial: Some(serial),
        purchase_id: purchase_id.clone(),
        acquired_at_ms,
    });
    changes.push(Change::SerialOwnerSet {
        item_id: item_id.clone(),
        serial,
        user_id: user_id.clone(),
    });
}

pub fn project(envelope: &Logged<'_>, event: &Event) -> Vec<Change> {
    let mut changes = crate::trace::purchase_steps(envelope, event);
    if let Some((kind, reference)) = money_movement(event) {
        posting_changes(envelope, event.postings(), kind, reference, &mut changes);
    }
    match event {
        Event::ItemPublished { definition } => changes.push(Change::ItemUpserted {
            definition: definition.clone(),
        }),
        Event::ItemRepriced { item_id, price } => changes.push(Change::ItemPriceChanged {
            item_id: item_id.clone(),
            price: *price,
        }),
        Event::ItemSaleToggled { item_id, on_sale } => changes.push(Change::ItemOnSaleChanged {
            item_id: item_id.clone(),
            on_sale: *on_sale,
        }),
        Event::BundleCreated {
            bundle_id,
            creator_id,
            name,
            item_ids,
            price,
        } => changes.push(Change::BundleUpserted {
            bundle_id: bundle_id.clone(),
            creator_id: creator_id.clone(),
            name: name.clone(),
            item_ids: item_ids.clone(),
            price: *price,
        }),
        Event::SerialSold {
            item_id,
            serial,
            purchase_id,
            buyer_id,
            at_ms,
        } => {
            serial_acquired(
                &mut changes,
                item_id,
                *serial,
                buyer_id,
                purchase_id,
                *at_ms,
            );
            changes.push(Change::SoldDelta {
                item_id: item_id.clone(),
                delta: 1,
            });
        }
        Event::SerialTransferred {
            item_id,
            serial,
            listing_id,
            purchase_id,
            from_user_id,
            to_user_id,
            at_ms,
            ..
        } => {
            changes.push(Change::InventoryRemoved {
                user_id: from_user_id.clone(),
                item_id: item_id.clone(),
                serial: Some(*serial),
            });
            serial_acquired(
                &mut changes,
                item_id,
                *serial,
                to_user_id,
                purchase_id,
                *at_ms,
            );
            changes.push(Change::ListingRemoved {
                listing_id: listing_id.clone(),
            });
            changes.push(Change::ResaleBookChanged {
                item_id: item_id.clone(),
                at_ms: envelope.timestamp_ms,
            });
        }
        Event::SerialRevoked {
            item_id,
            serial,
            owner_id,
            ..
        } => {
            changes.push(Change::InventoryRemoved {
                user_id: owner_id.clone(),
                item_id: item_id.clone(),
                serial: Some(*serial),
            });
            changes.push(Change::SerialOwnerCleared {
                item_id: item_id.clone(),
                serial: *serial,
            });
            changes.push(Change::SerialListingsRemoved {
                item_id: item_id.clone(),
                serial: *serial,
            });
            changes.push(Change::ResaleBookChanged {
                item_id: item_id.clone(),
                at_ms: envelope.timestamp_ms,
            });
            changes.push(Change::SoldDelta {
                item_id: item_id.clone(),
                delta: -1,
            });
        }
        Event::BuyerDebited {
            purchase_id,
            buyer_id,
            granted_items,
            at_ms,
            ..
        } => {
            for item_id in granted_items {
                changes.push(Change::InventoryAdded {
                    user_id: buyer_id.clone(),
                    item_id: item_id.clone(),
                    serial: None,
                    purchase_id: purchase_id.clone(),
                    acquired_at_ms: *at_ms,
                });
                changes.push(Change::SoldDelta {
                    item_id: item_id.clone(),
                    delta: 1,
                });
            }
        }
        Event::BuyerRefunded {
            buyer_id,
            revoked_items,
            ..
        } => {
            for item_id in revoked_items {
                changes.push(Change::InventoryRemoved {
                    user_id: buyer_id.clone(),
                    item_id: item_id.clone(),
                    serial: None,
                });
                changes.push(Change::SoldDelta {
                    item_id: item_id.clone(),
                    delta: -1,
                });
            }
        }
        Event::CommandCompleted { key, completion }
        | Event::PurchaseCompleted {
            key, completion, ..
        } => {
            let purchase_id = key
                .strip_prefix("purchase:")
                .and_then(|id| PurchaseId::parse(id).ok());
            if let (Some((item_id, price, resale)), Some(purchase_id)) =
                (completed_item_sale(completion), purchase_id)
            {
                changes.push(Change::SaleRecorded {
                    item_id,
                    price,
                    purchase_id,
                    resale,
                    at_ms: envelope.timestamp_ms,
                });
            }
        }
        Event::ListingCreated {
            listing_id,
            item_id,
            serial,
            seller_id,
            price,
        } => {
            changes.push(Change::ListingAdded {
                listing_id: listing_id.clone(),
                item_id: item_id.clone(),
                serial: *serial,
                seller_id: seller_id.clone(),
                price: *price,
            });
            changes.push(Change::ResaleBookChanged {
                item_id: item_id.clone(),
                at_ms: envelope.timestamp_ms,
            });
        }
        Event::ListingEnded {
            listing_id,
            item_id,
            ..
        } => {
            changes.push(Change::ListingRemoved {
                listing_id: listing_id.clone(),
            });
            changes.push(Change::ResaleBookChanged {
                item_id: item_id.clone(),
                at_ms: envelope.timestamp_ms,
            });
        }
        Event::RefundProgressed {
            purchase_id,
            progress: RefundProgress::Refunded { .. },
        } => changes.push(Change::SaleRefunded {
            purchase_id: purchase_id.clone(),
        }),
        Event::SaleSettled {
            purchase_id,
            creator_id,
            resale,
            cleared,
            creator_share,
            platform_fee,
            policy_version,
            release_at_ms,
            ..
        } => {
            changes.push(Change::EarningsDelta {
                creator_id: creator_id.clone(),
                pending: *creator_share,
                released: 0,
                lifetime: *creator_share,
                sales_count: 1,
            });
            changes.push(Change::CreatorSaleRecorded(CreatorSale {
                creator_id: creator_id.clone(),
                purchase_id: purchase_id.clone(),
                sold_at_ms: envelope.timestamp_ms,
                position: position_text(envelope),
                resale: *resale,
                cleared: *cleared,
                creator_share: *creator_share,
                platform_fee: *platform_fee,
                policy_version: *policy_version,
                release_at_ms: *release_at_ms,
            }));
        }
        Event::EscrowReleased {
            purchase_id,
            creator_id,
            amount,
            ..
        } => {
            changes.push(Change::EarningsDelta {
                creator_id: creator_id.clone(),
                pending: -amount,
                released: *amount,
                lifetime: 0,
                sales_count: 0,
            });
            changes.push(Change::CreatorSaleChanged {
                purchase_id: purchase_id.clone(),
                change: SaleEscrowChange::Released,
                at_ms: envelope.timestamp_ms,
            });
        }
        Event::EscrowReversed {
            purchase_id,
            creator_id,
            creator_share,
            ..
        } => {
            changes.push(Change::EarningsDelta {
                creator_id: creator_id.clone(),
                pending: -creator_share,
                released: 0,
                lifetime: -creator_share,
                sales_count: -1,
            });
            changes.push(Change::CreatorSaleChanged {
                purchase_id: purchase_id.clone(),
                change: SaleEscrowChange::Refunded,
                at_ms: envelope.timestamp_ms,
            });
        }
        Event::EscrowFrozen { purchase_id } => changes.push(Change::CreatorSaleChanged {
            purchase_id: purchase_id.clone(),
            change: SaleEscrowChange::Frozen,
            at_ms: envelope.timestamp_ms,
        }),
        Event::EscrowUnfrozen { purchase_id } => changes.push(Change::CreatorSaleChanged {
            purchase_id: purchase_id.clone(),
            change: SaleEscrowChange::Unfrozen,
            at_ms: envelope.timestamp_ms,
        }),
        Event::MessageReceived { from, sequence } => changes.push(Change::MessageConsumed {
            from: *from,
            to: envelope.shard,
            sequence: *sequence,
        }),
        Event::MessageSent { .. }
        | Event::CommandAccepted { .. }
        | Event::CommandProgressed { .. }
        | Event::CurrencyGranted { .. }
        | Event::SerialReserved { .. }
        | Event::ReservationCancelled { .. }
        | Event::SellerCredited { .. }
        | Event::ListingReserved { .. }
        | Event::ListingReservationCancelled { .. }
        | Event::ListingRegistered { .. }
        // Only a completed refund restates a sale.
        | Event::RefundProgressed { .. }
        | Event::CommandsForgotten { .. }
        | Event::PurchaseAdmitted { .. }
        // A rate-limited purchase: nothing happened but its refusal, which
        // the purchase's trace shows.
        | Event::CommandWithdrawn { .. }
        // Every shard's copy of a floor: the floors' home shard's
        // `price_floor_set` is the one read models keep.
        | Event::PriceFloorReplicated { .. }
        // A takedown's bookkeeping on each shard: the tally each reports
        // (`takedown_shard_reported`) and each sale's outcome are kept.
        | Event::TakedownScanStarted { .. }
        | Event::TakedownScanned { .. }
        | Event::TakedownRefundStarted { .. }
        | Event::TakedownPurchaseFinished { .. }
        | Event::TakedownScanFinished { .. }
        | Event::TakedownLateSale { .. }
        | Event::TakedownRefundAwaited { .. } => {}
        Event::ItemTakenDown { item_id, .. } => changes.push(Change::ItemOnSaleChanged {
            item_id: item_id.clone(),
            on_sale: false,
        }),
        Event::TakedownRefunding {
            item_id,
            listings_ended,
            shard_count,
        } => changes.push(Change::TakedownStarted {
            item_id: item_id.clone(),
            listings_ended: *listings_ended,
            shard_count: *shard_count,
            at_ms: envelope.timestamp_ms,
        }),
        Event::TakedownShardReported {
            item_id,
            tally,
            shards_reported,
            ..
        } => changes.push(Change::TakedownProgressed {
            item_id: item_id.clone(),
            shards_reported: *shards_reported,
            tally: *tally,
            at_ms: envelope.timestamp_ms,
        }),
        Event::TakedownSaleResolved {
            item_id,
            purchase_id,
            outcome,
        } => {
            let (outcome, amount, reason) = match outcome {
                TakedownOutcome::Refunded { amount } => ("refunded", Some(*amount), None),
                TakedownOutcome::AlreadyRefunded => ("already_refunded", None, None),
                TakedownOutcome::Left { rejection } => {
                    ("left", None, Some(rejection.code.as_str().to_string()))
                }
            };
            changes.push(Change::TakedownSaleResolved {
                item_id: item_id.clone(),
                purchase_id: purchase_id.clone(),
                outcome,
                amount,
                reason,
            });
        }
        Event::RegionalPricesSet { item_id, prices } => {
            changes.push(Change::ItemRegionalPricesChanged {
                item_id: item_id.clone(),
                prices: prices.clone(),
            })
        }
        Event::PriceTestStarted {
            test_id,
            item_id,
            arms,
            ends_at_ms,
        } => changes.push(Change::ItemPriceTestStarted {
            item_id: item_id.clone(),
            test_id: test_id.clone(),
            arms: arms.clone(),
            ends_at_ms: *ends_at_ms,
            started: envelope.sequence,
        }),
        Event::PriceTestClosed {
            test_id, item_id, ..
        } => changes.push(Change::ItemPriceTestClosed {
            item_id: item_id.clone(),
            test_id: test_id.clone(),
        }),
        Event::PriceTestOpened {
            test_id,
            item_id,
            arms,
            ends_at_ms,
            apply_winner,
        } => changes.push(Change::PriceTestOpened {
            test_id: test_id.clone(),
            item_id: item_id.clone(),
            arms: arms.clone(),
            ends_at_ms: *ends_at_ms,
            apply_winner: *apply_winner,
        }),
        Event::PriceTestRunning {
            test_id,
            creator_id,
        } => changes.push(Change::PriceTestRunning {
            test_id: test_id.clone(),
            creator_id: creator_id.clone(),
        }),
        Event::PriceTestAborted { test_id } => changes.push(Change::PriceTestRemoved {
            test_id: test_id.clone(),
        }),
        Event::PriceTestExposed {
            test_id, exposures, ..
        } => changes.push(Change::PriceTestExposures {
            test_id: test_id.clone(),
            exposures: exposures.clone(),
        }),
        Event::PriceTestSold {
            test_id,
            arm,
            purchases,
            revenue,
            ..
        } => changes.push(Change::PriceTestArmSales {
            test_id: test_id.clone(),
            arm: *arm,
            purchases: *purchases,
            revenue: *revenue,
        }),
        Event::PriceTestEnded {
            test_id,
            winner,
            applied_price,
        } => changes.push(Change::PriceTestEnded {
            test_id: test_id.clone(),
            winner: *winner,
            applied_price: *applied_price,
        }),
        Event::PriceFloorSet {
            kind,
            version,
            price,
            effective_from_ms,
        } => changes.push(Change::PriceFloorSet {
            kind: *kind,
            version: *version,
            price: *price,
            effective_from_ms: *effective_from_ms,
        }),
    }
    changes
}

/// The transaction kind and reference of an event that moves money.
fn money_movement(event: &Event) -> Option<(&'static str, String)> {
    let movement = match event {
        Event::CurrencyGranted { grant_id, .. } => ("grant", grant_id.to_string()),
        Event::BuyerDebited { purchase_id, .. } => ("purchase", purchase_id.to_string()),
        Event::SaleSettled {
            purchase_id,
            resale,
            ..
        } => (
            if *resale { "royalty" } else { "sale" },
            purchase_id.to_string(),
        ),
        Event::SellerCredited { purchase_id, .. } => ("resale_proceeds", purchase_id.to_string()),
        Event::EscrowReleased { purchase_id, .. } => ("escrow_release", purchase_id.to_string()),
        Event::EscrowReversed { purchase_id, .. } => ("refund_reversal", purchase_id.to_string()),
        Event::BuyerRefunded { purchase_id, .. } => ("refund", purchase_id.to_string()),
        _ => return None,
    };
    Some(movement)
}

/// Balance deltas and transaction entries from the user accounts of `postings`.
fn posting_changes(
    envelope: &Logged<'_>,
    postings: &[Posting],
    kind: &'static str,
    reference: String,
    changes: &mut Vec<Change>,
) {
    // Sum per (user, account), keeping the order of first appearance.
    let mut sums: Vec<(&UserId, TransactionAccount, i64)> = Vec::new();
    for posting in postings {
        let (user_id, account) = match &posting.account {
            Account::Wallet(user_id) => (user_id, TransactionAccount::Wallet),
            Account::Pending(user_id) => (user_id, TransactionAccount::Pending),
            Account::Issuance | Account::Fees | Account::Clearing => continue,
        };
        match sums
            .iter_mut()
            .find(|(known, known_account, _)| *known == user_id && *known_account == account)
        {
            Some((_, _, sum)) => *sum += posting.amount,
            None => sums.push((user_id, account, posting.amount)),
        }
    }
    let position = position_text(envelope);
    for (user_id, account, amount) in sums {
        if amount == 0 {
            continue;
        }
        let (wallet_delta, pending_delta) = match account {
            TransactionAccount::Wallet => (amount, 0),
            TransactionAccount::Pending => (0, amount),
        };
        changes.push(Change::BalanceDelta {
            user_id: user_id.clone(),
            wallet_delta,
            pending_delta,
        });
        changes.push(Change::TransactionAppended {
            user_id: user_id.clone(),
            account,
            position: position.clone(),
            kind,
            amount,
            reference: reference.clone(),
            at_ms: envelope.timestamp_ms,
        });
    }
}

/// The item and price of a completed primary item purchase or resale, and
/// whether it was a resale.
fn completed_item_sale(completion: &Completion) -> Option<(ItemId, i64, bool)> {
    match &completion.result {
        Ok(Success::Purchased {
            target: PurchaseTarget::Item(item_id),
            price,
            ..
        }) => Some((item_id.clone(), *price, false)),
        Ok(Success::ResalePurchased { item_id, price, .. }) => {
            Some((item_id.clone(), *price, true))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ledger_core::codec::Entry;
    use ledger_core::{
        GrantId, ListingEndReason, RefundId, Rejection, RejectionCode, ShardId, ShardPosition,
    };

    fn user(id: &str) -> UserId {
        UserId::parse(id).expect("test user id is valid")
    }
    fn item(id: &str) -> ItemId {
        ItemId::parse(id).expect("test item id is valid")
    }
    fn purchase(id: &str) -> PurchaseId {
        PurchaseId::parse(id).expect("test purchase id is valid")
    }
    fn listing(id: &str) -> ListingId {
        ListingId::parse(id).expect("test listing id is valid")
    }

    /// The changes of `event` other than its purchase steps (those are
    /// `crate::trace`'s, tested there).
    fn project_at(event: Event, shard: u16, sequence: u64, timestamp_ms: u64) -> Vec<Change> {
        let entry = Entry::from_event(&event);
        let logged = Logged {
            shard: ShardId(shard),
            sequence,
            cause: "test",
            timestamp_ms,
            entry: &entry,
        };
        let decoded = logged.event().expect("an entry decodes");
        project(&logged, &decoded)
            .into_iter()
            .filter(|change| !matches!(change, Change::PurchaseStep(_)))
            .collect()
    }

    fn definition(item_id: &str, supply: Option<u32>) -> ItemDefinition {
        ItemDefinition {
            item_id: item(item_id),
            creator_id: user("creator"),
            name: "Hat".to_string(),
            price: 100,
            supply,
            max_per_user: None,
            starts_at_ms: None,
            ends_at_ms: None,
            resellable: true,
            kind: Default::default(),
        }
    }

    #[test]
    fn grant_credits_the_wallet_and_logs_a_transaction() {
        let event = Event::CurrencyGranted {
            grant_id: GrantId::parse("g1").expect("valid"),
            user_id: user("alice"),
            amount: 500,
            balance_after: 500,
            postings: vec![
                Posting::new(Account::Issuance, -500),
                Posting::new(Account::Wallet(user("alice")), 500),
            ],
        };
        assert_eq!(
            project_at(event, 2, 7, 1_000),
            vec![
                Change::BalanceDelta {
                    user_id: user("alice"),
                    wallet_delta: 500,
                    pending_delta: 0
                },
                Change::TransactionAppended {
                    user_id: user("alice"),
                    account: TransactionAccount::Wallet,
                    position: "2.7".to_string(),
                    kind: "grant",
                    amount: 500,
                    reference: "g1".to_string(),
                    at_ms: 1_000,
                },
            ]
        );
    }

    #[test]
    fn buyer_debited_takes_money_and_grants_non_limited_items() {
        let event = Event::BuyerDebited {
            purchase_id: purchase("p1"),
            buyer_id: user("bob"),
            amount: 100,
            granted_items: vec![item("hat"), item("cap")],
            balance_after: 400,
            at_ms: 50,
            postings: vec![
                Posting::new(Account::Wallet(user("bob")), -100),
                Posting::new(Account::Clearing, 100),
            ],
        };
        let changes = project_at(event, 1, 3, 60);
        assert_eq!(
            changes[0],
            Change::BalanceDelta {
                user_id: user("bob"),
                wallet_delta: -100,
                pending_delta: 0
            }
        );
        assert!(matches!(
            &changes[1],
            Change::TransactionAppended {
                kind: "purchase",
                amount: -100,
                at_ms: 60,
                ..
            }
        ));
        assert_eq!(
            changes[2],
            Change::InventoryAdded {
                user_id: user("bob"),
                item_id: item("hat"),
                serial: None,
                purchase_id: purchase("p1"),
                acquired_at_ms: 50
            }
        );
        assert_eq!(
            changes[3],
            Change::SoldDelta {
                item_id: item("hat"),
                delta: 1
            }
        );
        assert_eq!(
            changes[5],
            Change::SoldDelta {
                item_id: item("cap"),
                delta: 1
            }
        );
        assert_eq!(changes.len(), 6);
    }

    #[test]
    fn sale_settled_feeds_pending_earnings_and_names_royalties() {
        let settled = |resale: bool| Event::SaleSettled {
            purchase_id: purchase("p1"),
            creator_id: user("creator"),
            resale,
            cleared: 100,
            creator_share: 70,
            platform_fee: 30,
            policy_version: 1,
            release_at_ms: 99,
            postings: vec![
                Posting::new(Account::Clearing, -100),
                Posting::new(Account::Pending(user("creator")), 70),
                Posting::new(Account::Fees, 30),
            ],
        };
        let changes = project_at(settled(false), 0, 1, 5);
        assert_eq!(
            changes,
            vec![
                Change::BalanceDelta {
                    user_id: user("creator"),
                    wallet_delta: 0,
                    pending_delta: 70
                },
                Change::TransactionAppended {
                    user_id: user("creator"),
                    account: TransactionAccount::Pending,
                    position: "0.1".to_string(),
                    kind: "sale",
                    amount: 70,
                    reference: "p1".to_string(),
                    at_ms: 5,
                },
                Change::EarningsDelta {
                    creator_id: user("creator"),
                    pending: 70,
                    released: 0,
                    lifetime: 70,
                    sales_count: 1
                },
                Change::CreatorSaleRecorded(CreatorSale {
                    creator_id: user("creator"),
                    purchase_id: purchase("p1"),
                    sold_at_ms: 5,
                    position: "0.1".to_string(),
                    resale: false,
                    cleared: 100,
                    creator_share: 70,
                    platform_fee: 30,
                    policy_version: 1,
                    release_at_ms: 99,
                }),
            ]
        );
        let changes = project_at(settled(true), 0, 1, 5);
        assert!(matches!(
            &changes[1],
            Change::TransactionAppended {
                kind: "royalty",
                ..
            }
        ));
    }

    #[test]
    fn escrow_release_moves_pending_to_wallet_with_two_entries() {
        let event = Event::EscrowReleased {
            purchase_id: purchase("p1"),
            creator_id: user("creator"),
            amount: 70,
            postings: vec![
                Posting::new(Account::Pending(user("creator")), -70),
                Posting::new(Account::Wallet(user("creator")), 70),
            ],
        };
        let changes = project_at(event, 0, 9, 10);
        assert_eq!(
            changes[0],
            Change::BalanceDelta {
                user_id: user("creator"),
                wallet_delta: 0,
                pending_delta: -70
            }
        );
        assert!(matches!(
            &changes[1],
            Change::TransactionAppended {
                account: TransactionAccount::Pending,
                kind: "escrow_release",
                amount: -70,
                ..
            }
        ));
        assert_eq!(
            changes[2],
            Change::BalanceDelta {
                user_id: user("creator"),
                wallet_delta: 70,
                pending_delta: 0
            }
        );
        assert!(matches!(
            &changes[3],
            Change::TransactionAppended {
                account: TransactionAccount::Wallet,
                kind: "escrow_release",
                amount: 70,
                ..
            }
        ));
        assert_eq!(
            changes[4],
            Change::EarningsDelta {
                creator_id: user("creator"),
                pending: -70,
                released: 70,
                lifetime: 0,
                sales_count: 0
            }
        );
        assert_eq!(
            changes[5],
            Change::CreatorSaleChanged {
                purchase_id: purchase("p1"),
                change: SaleEscrowChange::Released,
                at_ms: 10,
            }
        );
        assert_eq!(changes.len(), 6);
    }

    #[test]
    fn refunds_reverse_earnings_balances_and_inventory() {
        let reversed = Event::EscrowReversed {
            purchase_id: purchase("p1"),
            refund_id: RefundId::parse("r1").expect("valid"),
            creator_id: user("creator"),
            creator_share: 70,
            platform_fee: 30,
            postings: vec![
                Posting::new(Account::Pending(user("creator")), -70),
                Posting::new(Account::Fees, -30),
                Posting::new(Account::Clearing, 100),
            ],
        };
        let changes = project_at(reversed, 0, 4, 8);
        assert!(matches!(
            &changes[1],
            Change::TransactionAppended {
                kind: "refund_reversal",
                amount: -70,
                ..
            }
        ));
        assert_eq!(
            changes[2],
            Change::EarningsDelta {
                creator_id: user("creator"),
                pending: -70,
                released: 0,
                lifetime: -70,
                sales_count: -1
            }
        );

        let refunded = Event::BuyerRefunded {
            purchase_id: purchase("p1"),
            refund_id: RefundId::parse("r1").expect("valid"),
            buyer_id: user("bob"),
            amount: 100,
            revoked_items: vec![item("hat")],
            balance_after: 500,
            postings: vec![
                Posting::new(Account::Clearing, -100),
                Posting::new(Account::Wallet(user("bob")), 100),
            ],
        };
        let changes = project_at(refunded, 1, 5, 9);
        assert!(
            matches!(&changes[1], Change::TransactionAppended { kind: "refund", amount: 100, reference, .. } if reference == "p1")
        );
        assert_eq!(
            changes[2],
            Change::InventoryRemoved {
                user_id: user("bob"),
                item_id: item("hat"),
                serial: None
            }
        );
        assert_eq!(
            changes[3],
            Change::SoldDelta {
                item_id: item("hat"),
                delta: -1
            }
        );
    }

    #[test]
    fn serials_move_between_inventories_and_owners() {
        let sold = Event::SerialSold {
            item_id: item("crown"),
            serial: 3,
            purchase_id: purchase("p1"),
            buyer_id: user("bob"),
            at_ms: 11,
        };
        assert_eq!(
            project_at(sold, 0, 1, 12),
            vec![
                Change::InventoryAdded {
                    user_id: user("bob"),
                    item_id: item("crown"),
                    serial: Some(3),
                    purchase_id: purchase("p1"),
                    acquired_at_ms: 11
                },
                Change::SerialOwnerSet {
                    item_id: item("crown"),
                    serial: 3,
                    user_id: user("bob")
                },
                Change::SoldDelta {
                    item_id: item("crown"),
                    delta: 1
                },
            ]
        );
        let transferred = Event::SerialTransferred {
            item_id: item("crown"),
            serial: 3,
            listing_id: listing("l1"),
            purchase_id: purchase("p2"),
            from_user_id: user("bob"),
            to_user_id: user("carol"),
            price: 900,
            at_ms: 20,
        };
        assert_eq!(
            project_at(transferred, 0, 2, 21),
            vec![
                Change::InventoryRemoved {
                    user_id: user("bob"),
                    item_id: item("crown"),
                    serial: Some(3)
                },
                Change::InventoryAdded {
                    user_id: user("carol"),
                    item_id: item("crown"),
                    serial: Some(3),
                    purchase_id: purchase("p2"),
                    acquired_at_ms: 20
                },
                Change::SerialOwnerSet {
                    item_id: item("crown"),
                    serial: 3,
                    user_id: user("carol")
                },
                Change::ListingRemoved {
                    listing_id: listing("l1")
                },
                Change::ResaleBookChanged {
                    item_id: item("crown"),
                    at_ms: 21
                },
            ]
        );
        let revoked = Event::SerialRevoked {
            item_id: item("crown"),
            serial: 3,
            purchase_id: purchase("p1"),
            owner_id: user("carol"),
        };
        assert_eq!(
            project_at(revoked, 0, 3, 30),
            vec![
                Change::InventoryRemoved {
                    user_id: user("carol"),
                    item_id: item("crown"),
                    serial: Some(3)
                },
                Change::SerialOwnerCleared {
                    item_id: item("crown"),
                    serial: 3
                },
                Change::SerialListingsRemoved {
                    item_id: item("crown"),
                    serial: 3
                },
                Change::ResaleBookChanged {
                    item_id: item("crown"),
                    at_ms: 30
                },
                Change::SoldDelta {
                    item_id: item("crown"),
                    delta: -1
                },
            ]
        );
    }

    #[test]
    fn catalogue_and_listing_events_map_one_to_one() {
        let published = Event::ItemPublished {
            definition: definition("crown", Some(10)),
        };
        assert_eq!(
            project_at(published, 0, 1, 1),
            vec![Change::ItemUpserted {
                definition: definition("crown", Some(10))
            }]
        );
        assert_eq!(
            project_at(
                Event::ItemRepriced {
                    item_id: item("crown"),
                    price: 5
                },
                0,
                2,
                1
            ),
            vec![Change::ItemPriceChanged {
                item_id: item("crown"),
                price: 5
            }]
        );
        assert_eq!(
            project_at(
                Event::ItemSaleToggled {
                    item_id: item("crown"),
                    on_sale: false
                },
                0,
                3,
                1
            ),
            vec![Change::ItemOnSaleChanged {
                item_id: item("crown"),
                on_sale: false
            }]
        );
        let created = Event::ListingCreated {
            listing_id: listing("l1"),
            item_id: item("crown"),
            serial: 2,
            seller_id: user("bob"),
            price: 40,
        };
        assert_eq!(
            project_at(created, 0, 4, 1),
            vec![
                Change::ListingAdded {
                    listing_id: listing("l1"),
                    item_id: item("crown"),
                    serial: 2,
                    seller_id: user("bob"),
                    price: 40
                },
                Change::ResaleBookChanged {
                    item_id: item("crown"),
                    at_ms: 1
                }
            ]
        );
        let ended = Event::ListingEnded {
            listing_id: listing("l1"),
            item_id: item("crown"),
            serial: 2,
            reason: ListingEndReason::Cancelled,
        };
        assert_eq!(
            project_at(ended, 0, 5, 1),
            vec![
                Change::ListingRemoved {
                    listing_id: listing("l1")
                },
                Change::ResaleBookChanged {
                    item_id: item("crown"),
                    at_ms: 1
                }
            ]
        );
        let bundle = Event::BundleCreated {
            bundle_id: BundleId::parse("b1").expect("valid"),
            creator_id: user("creator"),
            name: "Set".to_string(),
            item_ids: vec![item("hat"), item("cap")],
            price: 150,
        };
        assert_eq!(
            project_at(bundle, 0, 6, 1),
            vec![Change::BundleUpserted {
                bundle_id: BundleId::parse("b1").expect("valid"),
                creator_id: user("creator"),
                name: "Set".to_string(),
                item_ids: vec![item("hat"), item("cap")],
                price: 150,
            }]
        );
    }

    #[test]
    fn completed_item_purchases_record_sales_but_bundles_and_rejections_do_not() {
        let completed = |result: Result<Success, Rejection>| Event::CommandCompleted {
            key: "purchase:p1".to_string(),
            completion: Completion {
                result,
                positions: vec![ShardPosition {
                    shard: ShardId(0),
                    sequence: 1,
                }],
                deliveries: Vec::new(),
                retry_after_ms: None,
            },
        };
        let primary = Success::Purchased {
            target: PurchaseTarget::Item(item("hat")),
            price: 100,
            serial: None,
            granted_items: vec![item("hat")],
            balance_after: 0,
        };
        assert_eq!(
            project_at(completed(Ok(primary)), 0, 1, 7),
            vec![Change::SaleRecorded {
                item_id: item("hat"),
                price: 100,
                purchase_id: purchase("p1"),
                resale: false,
                at_ms: 7
            }]
        );
        let resale = Success::ResalePurchased {
            item_id: item("crown"),
            serial: 1,
            price: 900,
            seller_id: user("bob"),
            balance_after: 0,
        };
        assert_eq!(
            project_at(completed(Ok(resale)), 0, 1, 8),
            vec![Change::SaleRecorded {
                item_id: item("crown"),
                price: 900,
                purchase_id: purchase("p1"),
                resale: true,
                at_ms: 8
            }]
        );
        let bundle = Success::Purchased {
            target: PurchaseTarget::Bundle(BundleId::parse("b1").expect("valid")),
            price: 100,
            serial: None,
            granted_items: vec![item("hat")],
            balance_after: 0,
        };
        assert_eq!(project_at(completed(Ok(bundle)), 0, 1, 1), vec![]);
        let refused = Rejection::new(RejectionCode::SoldOut, "item hat is sold out");
        assert_eq!(project_at(completed(Err(refused)), 0, 1, 1), vec![]);
    }

    #[test]
    fn only_a_completed_refund_restates_a_sale() {
        let progressed = |progress: RefundProgress| Event::RefundProgressed {
            purchase_id: purchase("p1"),
            progress,
        };
        let refund_id = RefundId::parse("r1").expect("valid");
        assert_eq!(
            project_at(
                progressed(RefundProgress::Refunded {
                    refund_id: refund_id.clone()
                }),
                0,
                3,
                9
            ),
            vec![Change::SaleRefunded {
                purchase_id: purchase("p1")
            }]
        );
        for progress in [
            RefundProgress::Freezing {
                refund_id: refund_id.clone(),
                reply_to: ShardId(1),
            },
            RefundProgress::Revoking {
                refund_id,
                reply_to: ShardId(1),
            },
            RefundProgress::Abandoned,
        ] {
            assert_eq!(project_at(progressed(progress), 0, 3, 9), vec![]);
        }
    }

    #[test]
    fn events_without_read_model_effect_project_nothing() {
        let reserved = Event::SerialReserved {
            item_id: item("crown"),
            serial: 1,
            purchase_id: purchase("p1"),
            buyer_id: user("bob"),
        };
        assert_eq!(project_at(reserved, 0, 1, 1), vec![]);
        // A freeze changes only the creator's sale.
        assert_eq!(
            project_at(
                Event::EscrowFrozen {
                    purchase_id: purchase("p1")
                },
                0,
                2,
                1
            ),
            vec![Change::CreatorSaleChanged {
                purchase_id: purchase("p1"),
                change: SaleEscrowChange::Frozen,
                at_ms: 1,
            }]
        );
    }

    #[test]
    fn recent_average_price_rounds_toward_zero() {
        assert_eq!(next_recent_average_price(None, 100), 100);
        // Up: 100 + (115 - 100) / 10 = 100 + 1.
        assert_eq!(next_recent_average_price(Some(100), 115), 101);
        // Down: 100 + (85 - 100) / 10 = 100 - 1 (toward zero, not -2).
        assert_eq!(next_recent_average_price(Some(100), 85), 99);
        // Moves smaller than ten units leave it unchanged, both ways.
        assert_eq!(next_recent_average_price(Some(100), 109), 100);
        assert_eq!(next_recent_average_price(Some(100), 91), 100);
        assert_eq!(
            next_recent_average_price(Some(0), 1_000_000_000_000),
            100_000_000_000
        );
    }

    #[test]
    fn postings_to_one_account_are_summed_and_zero_sums_skipped() {
        let event = Event::SellerCredited {
            purchase_id: purchase("p9"),
            seller_id: user("bob"),
            amount: 10,
            balance_after: 10,
            postings: vec![
                Posting::new(Account::Clearing, -10),
                Posting::new(Account::Wallet(user("bob")), 4),
                Posting::new(Account::Wallet(user("bob")), 6),
                Posting::new(Account::Wallet(user("eve")), 1),
                Posting::new(Account::Wallet(user("eve")), -1),
            ],
        };
        let changes = project_at(event, 3, 1, 1);
        assert_eq!(changes.len(), 2);
        assert_eq!(
            changes[0],
            Change::BalanceDelta {
                user_id: user("bob"),
                wallet_delta: 10,
                pending_delta: 0
            }
        );
        assert!(matches!(
            &changes[1],
            Change::TransactionAppended {
                kind: "resale_proceeds",
                amount: 10,
                ..
            }
        ));
    }
}
