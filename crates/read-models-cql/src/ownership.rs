//! Which shard writes each identity row: the proof that every row with an
//! identity (an inventory entry, an item definition, a serial owner, a
//! listing, a bundle) has a single writing shard.
//!
//! Identity rows are written with the event's sequence as write timestamp
//! (see [`crate::layout::write_timestamp`]), so the newest event wins. That
//! is only meaningful among events of one shard: sequences of different
//! shards are not comparable. So every add, overwrite and removal of one
//! row must come from the same shard. Going through `ledger_core::decide`
//! (the only place events are made) event by event:
//!
//! * `item_published` is decided for the `PublishItem` command on its home
//!   shard, the shard of `item:<id>`; `item_repriced` and
//!   `item_sale_toggled` for `Reprice` and `SetOnSale`, whose home key is
//!   also `item:<id>`. They alone write `items`.
//! * `serial_sold` and `serial_transferred` are decided on
//!   `ConfirmReservation`, `serial_revoked` on `RevokeSerial`,
//!   `listing_created` on `CreateListingOnItem` and `listing_ended` on
//!   `CancelListingOnItem`: every one of these messages is sent to
//!   `shard_of(item:<id>)`. They alone write Limited inventory rows
//!   (serial ≥ 1), `serial_owners` and the listing tables.
//! * `buyer_debited` is decided on `ChargeBuyer` (`DebitBuyer` in older
//!   logs), `buyer_refunded` on
//!   `RefundBuyer`, both sent to `shard_of(user:<buyer>)`. They alone write
//!   non-limited inventory rows (serial 0: `granted_items` and
//!   `revoked_items` never hold a Limited, which the buyer's shard grants through
//!   `serial_sold` instead and bundles refuse).
//! * `bundle_created` is decided on the last `ItemDescribed` answer, on the
//!   home shard of the `CreateBundle` command, the shard of `bundle:<id>`.
//!   It alone writes `bundles`.
//!
//! A row keyed by a user, item or bundle is therefore only ever written by
//! the shard of [`single_writer_key`] of the events that touch it.
//! `projection_deliveries` rows are keyed by their receiver, the shard that
//! logged `message_received`, and `projection_checkpoints` rows by the
//! projected shard itself. The tests check the proof on a real event
//! stream, and [`crate::CqlReadModels::apply`] asserts it when
//! [`crate::ReadModelSettings::shard_count`] is set.

use ledger_core::{keys, Event};

/// The routing key of the entity whose shard alone emits `event`, for the
/// events whose changes write identity rows; `None` for the others (they
/// only add to sums, append to logs, or mark deliveries).
pub fn single_writer_key(event: &Event) -> Option<String> {
    match event {
        Event::ItemPublished { definition } => Some(keys::item(&definition.item_id)),
        Event::ItemRepriced { item_id, .. }
        | Event::RegionalPricesSet { item_id, .. }
        | Event::ItemSaleToggled { item_id, .. }
        | Event::SerialSold { item_id, .. }
        | Event::SerialTransferred { item_id, .. }
        | Event::SerialRevoked { item_id, .. }
        | Event::ListingCreated { item_id, .. }
        | Event::ListingEnded { item_id, .. }
        | Event::PriceTestStarted { item_id, .. }
        | Event::PriceTestClosed { item_id, .. } => Some(keys::item(item_id)),
        // A test's rows (`price_tests`, `price_test_arms`) are written by
        // the test's shard only.
        Event::PriceTestOpened { test_id, .. }
        | Event::PriceTestRunning { test_id, .. }
        | Event::PriceTestAborted { test_id }
        | Event::PriceTestExposed { test_id, .. }
        | Event::PriceTestSold { test_id, .. }
        | Event::PriceTestEnded { test_id, .. } => Some(keys::price_test(test_id)),
        Event::ItemTakenDown { item_id, .. } => Some(keys::item(item_id)),
        // A takedown's row (`takedowns`) is written by its shard only; each
        // sale's outcome (`takedown_sales`) by the purchase's shard only.
        Event::TakedownRefunding { item_id, .. } | Event::TakedownShardReported { item_id, .. } => {
            Some(keys::takedown(item_id))
        }
        Event::TakedownSaleResolved { purchase_id, .. } => Some(keys::purchase(purchase_id)),
        Event::BuyerDebited { buyer_id, .. } | Event::BuyerRefunded { buyer_id, .. } => {
            Some(keys::user(buyer_id))
        }
        Event::BundleCreated { bundle_id, .. } => Some(keys::bundle(bundle_id)),
        // Floor versions (`price_floors`) are written by the floors' home
        // shard only; the other shards' copies write nothing.
        Event::PriceFloorSet { .. } => Some(ledger_core::pricing::FLOORS_KEY.to_string()),
        // A creator's sales (`creator_sales`) are written by the creator's
        // shard only (escrow freezes name only the purchase: they are logged
        // there too, after the sale).
        Event::SaleSettled { creator_id, .. }
        | Event::EscrowReleased { creator_id, .. }
        | Event::EscrowReversed { creator_id, .. } => Some(keys::user(creator_id)),
        Event::MessageReceived { .. }
        | Event::MessageSent { .. }
        | Event::CommandAccepted { .. }
        | Event::CommandProgressed { .. }
        | Event::CommandCompleted { .. }
        | Event::PurchaseCompleted { .. }
        | Event::CurrencyGranted { .. }
        | Event::SerialReserved { .. }
        | Event::ReservationCancelled { .. }
        | Event::SellerCredited { .. }
        | Event::ListingReserved { .. }
        | Event::ListingReservationCancelled { .. }
        | Event::ListingRegistered { .. }
        | Event::RefundProgressed { .. }
        | Event::EscrowFrozen { .. }
        | Event::EscrowUnfrozen { .. }
        | Event::CommandsForgotten { .. }
        | Event::PurchaseAdmitted { .. }
        | Event::CommandWithdrawn { .. }
        | Event::PriceFloorReplicated { .. }
        | Event::TakedownScanStarted { .. }
        | Event::TakedownScanned { .. }
        | Event::TakedownRefundStarted { .. }
        | Event::TakedownPurchaseFinished { .. }
        | Event::TakedownScanFinished { .. }
        | Event::TakedownLateSale { .. }
        | Event::TakedownRefundAwaited { .. } => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ledger_core::{ItemId, ListingEndReason, ListingId, PurchaseId, UserId};

    #[test]
    fn listing_and_serial_events_belong_to_the_item_and_debits_to_the_buyer() {
        let item = ItemId::parse("crown").expect("valid");
        let ended = Event::ListingEnded {
            listing_id: ListingId::parse("l1").expect("valid"),
            item_id: item.clone(),
            serial: 1,
            reason: ListingEndReason::Cancelled,
        };
        assert_eq!(single_writer_key(&ended), Some("item:crown".to_string()));
        let debited = Event::BuyerDebited {
            purchase_id: PurchaseId::parse("p1").expect("valid"),
            buyer_id: UserId::parse("bob").expect("valid"),
            amount: 1,
            granted_items: vec![item],
            balance_after: 0,
            at_ms: 1,
            postings: Vec::new(),
        };
        assert_eq!(single_writer_key(&debited), Some("user:bob".to_string()));
        let received = Event::MessageReceived {
            from: ledger_core::ShardId(1),
            sequence: 3,
        };
        assert_eq!(single_writer_key(&received), None);
    }
}
