//! Purchases of items and bundles: `Purchase` on the purchase's shard;
//! `ReserveSale` on the item's or bundle's shard, which sends the
//! reservation on to the buyer's shard (`ChargeBuyer`) or refuses it back
//! (`Reserved`); `PurchasePaid` back from the buyer's shard; then
//! `ConfirmReservation` / `CancelReservation` on the item's shard and
//! `SettleSale` on the creator's shard. Older logs' `Reserved` (reserved),
//! `DebitBuyer` and `BuyerDebited` still play.
//! Rejections: idempotency_conflict, not_found, not_on_sale,
//! purchaser_is_seller, price_changed, quantity_limit_reached, sold_out,
//! already_owned, insufficient_funds.

use crate::decide::testing::*;
use crate::decide::Answer;
use crate::ids::{ItemId, ShardId};
use crate::model::*;
use crate::money::{Account, Posting};

fn hat() -> ItemDefinition {
    item("hat", "carol", 100)
}

/// A Limited of carol with two serials, at most one per user.
fn crown() -> ItemDefinition {
    ItemDefinition {
        max_per_user: Some(1),
        ..limited("crown", "carol", 100, 2)
    }
}

fn bundle_created() -> Event {
    Event::BundleCreated {
        bundle_id: bundle_id("pack"),
        creator_id: user_id("carol"),
        name: "pack name".into(),
        item_ids: vec![item_id("hat"), item_id("scarf")],
        price: 150,
    }
}

fn purchase(buyer: &str, target: PurchaseTarget, expected_price: i64) -> Command {
    Command::Purchase {
        purchase_id: purchase_id("p-1"),
        buyer_id: user_id(buyer),
        target,
        expected_price,
        region: None,
    }
}

fn purchase_of_hat() -> Command {
    purchase("alice", PurchaseTarget::Item(item_id("hat")), 100)
}

/// The request the purchase's shard `home` sends for `request`.
fn reserve_sale(buyer: &str, request: SaleRequest, expected_price: i64, home: ShardId) -> Message {
    Message::ReserveSale {
        purchase_id: purchase_id("p-1"),
        buyer_id: user_id(buyer),
        request,
        expected_price,
        at_ms: NOW,
        home,
    }
}

/// The request of a purchase homed on [`PEER`] for `item`.
fn reserve_item(buyer: &str, item: &str, expected_price: i64) -> Message {
    reserve_sale(
        buyer,
        SaleRequest::Item(item_id(item)),
        expected_price,
        PEER,
    )
}

/// The request of a purchase homed on [`PEER`] for the bundle.
fn quote_bundle(buyer: &str, expected_price: i64) -> Message {
    reserve_sale(
        buyer,
        SaleRequest::Bundle(bundle_id("pack")),
        expected_price,
        PEER,
    )
}

fn reserved(result: Result<Reservation, Rejection>) -> Message {
    Message::Reserved {
        purchase_id: purchase_id("p-1"),
        result,
    }
}

/// The reservation sent on to alice's shard, for a purchase homed on `home`.
fn charge_buyer(reservation: Reservation, home: ShardId) -> Message {
    Message::ChargeBuyer {
        purchase_id: purchase_id("p-1"),
        buyer_id: user_id("alice"),
        reservation,
        at_ms: NOW,
        home,
    }
}

fn reservation(price: i64, sale: SaleKind) -> Reservation {
    Reservation {
        price,
        creator_id: user_id("carol"),
        sale,
        terms: None,
    }
}

fn hat_sale() -> SaleKind {
    SaleKind::Item {
        item_id: item_id("hat"),
        serial: None,
    }
}

fn crown_sale() -> SaleKind {
    SaleKind::Item {
        item_id: item_id("crown"),
        serial: Some(1),
    }
}

/// The reply of an item's shard refusing the reservation.
fn refused_reservation(code: RejectionCode, detail: &str) -> Vec<Event> {
    vec![
        sent(PEER, 1, reserved(Err(rejection(code, detail)))),
        received(1),
    ]
}

/// An older log's request for alice's money.
fn debit_buyer(amount: i64, grant_items: Vec<ItemId>, all_or_nothing: bool) -> Message {
    Message::DebitBuyer {
        purchase_id: purchase_id("p-1"),
        buyer_id: user_id("alice"),
        amount,
        grant_items,
        all_or_nothing,
        at_ms: NOW,
    }
}

fn buyer_debited_event(amount: i64, granted_items: Vec<ItemId>, balance_after: i64) -> Event {
    Event::BuyerDebited {
        purchase_id: purchase_id("p-1"),
        buyer_id: user_id("alice"),
        amount,
        granted_items,
        balance_after,
        at_ms: NOW,
        postings: vec![
            Posting::new(Account::Wallet(user_id("alice")), -amount),
            Posting::new(Account::Clearing, amount),
        ],
    }
}

/// alice already owns the hat, from purchase p-0.
fn alice_owns_hat() -> [Event; 2] {
    [
        granted("g-0", "alice", 100, 0),
        Event::BuyerDebited {
            purchase_id: purchase_id("p-0"),
            buyer_id: user_id("alice"),
            amount: 100,
            granted_items: vec![item_id("hat")],
            balance_after: 0,
            at_ms: NOW,
            postings: vec![
                Posting::new(Account::Wallet(user_id("alice")), -100),
                Posting::new(Account::Clearing, 100),
            ],
        },
    ]
}

/// The buyer's shard's answer for `sale`, reported at position 8 of its log.
fn purchase_paid(sale: SaleKind, result: Result<(i64, Vec<ItemId>), Rejection>) -> Message {
    Message::PurchasePaid {
        purchase_id: purchase_id("p-1"),
        reservation: reservation(100, sale),
        result,
        position: peer_position(8),
    }
}

fn peer_position(sequence: u64) -> ShardPosition {
    ShardPosition {
        shard: PEER,
        sequence,
    }
}

/// A purchase by alice of `target`, waiting for its sale to be paid for.
fn reserving(target: PurchaseTarget) -> [Event; 1] {
    [accepted(purchase("alice", target, 100))]
}

fn settle_primary_sale() -> Message {
    Message::SettleSale {
        purchase_id: purchase_id("p-1"),
        creator_id: user_id("carol"),
        cleared: 100,
        creator_share: 70,
        platform_fee: 30,
        policy_version: 1,
        resale: false,
        at_ms: NOW,
    }
}

// ------------------------------------------------------------------ the purchase's shard starts

#[test]
fn a_purchase_of_an_item_asks_the_items_shard_to_reserve_it() {
    given([]).when_command(purchase_of_hat()).then_answers(
        Answer::OnCompletion("purchase:p-1".into()),
        vec![
            accepted(purchase_of_hat()),
            sent(
                HOME,
                1,
                reserve_sale("alice", SaleRequest::Item(item_id("hat")), 100, HOME),
            ),
        ],
    );
}

#[test]
fn a_purchase_of_a_bundle_asks_the_bundles_shard_for_a_quote() {
    let command = purchase("alice", PurchaseTarget::Bundle(bundle_id("pack")), 150);
    given([]).when_command(command.clone()).then_answers(
        Answer::OnCompletion("purchase:p-1".into()),
        vec![
            accepted(command),
            sent(
                HOME,
                1,
                reserve_sale("alice", SaleRequest::Bundle(bundle_id("pack")), 150, HOME),
            ),
        ],
    );
}

#[test]
fn a_repeated_purchase_waits_for_the_first() {
    given([accepted(purchase_of_hat())])
        .when_command(purchase_of_hat())
        .then_answers(Answer::OnCompletion("purchase:p-1".into()), vec![]);
}

#[test]
fn a_purchase_id_used_for_another_item_is_refused() {
    given([accepted(purchase_of_hat())])
        .when_command(purchase(
            "alice",
            PurchaseTarget::Item(item_id("crown")),
            100,
        ))
        .then_refused(
            RejectionCode::IdempotencyConflict,
            "purchase:p-1 was already used with a different request",
        );
}

// ------------------------------------------------------------------ reservation

#[test]
fn an_item_without_serials_is_reserved_without_events_and_sent_on_to_the_buyer() {
    given([published(hat())])
        .when_message(reserve_item("alice", "hat", 100))
        .then(vec![
            sent(HOME, 1, charge_buyer(reservation(100, hat_sale()), PEER)),
            received(1),
        ]);
}

#[test]
fn a_limited_reserves_its_lowest_free_serial() {
    given([published(crown())])
        .when_message(reserve_item("alice", "crown", 100))
        .then(vec![
            Event::SerialReserved {
                item_id: item_id("crown"),
                serial: 1,
                purchase_id: purchase_id("p-1"),
                buyer_id: user_id("alice"),
            },
            sent(HOME, 1, charge_buyer(reservation(100, crown_sale()), PEER)),
            received(1),
        ]);
}

#[test]
fn an_unknown_item_is_not_reserved() {
    given([])
        .when_message(reserve_item("alice", "hat", 100))
        .then(refused_reservation(
            RejectionCode::NotFound,
            "item hat does not exist",
        ));
}

#[test]
fn an_item_taken_off_sale_is_not_reserved() {
    given([
        published(hat()),
        Event::ItemSaleToggled {
            item_id: item_id("hat"),
            on_sale: false,
        },
    ])
    .when_message(reserve_item("alice", "hat", 100))
    .then(refused_reservation(
        RejectionCode::NotOnSale,
        "item hat is not on sale",
    ));
}

#[test]
fn an_item_is_not_reserved_before_its_sale_starts() {
    let later = ItemDefinition {
        starts_at_ms: Some(NOW + 1),
        ..hat()
    };
    given([published(later)])
        .when_message(reserve_item("alice", "hat", 100))
        .then(refused_reservation(
            RejectionCode::NotOnSale,
            "item hat is not on sale",
        ));
}

#[test]
fn an_item_is_not_reserved_for_its_creator() {
    given([published(hat())])
        .when_message(reserve_item("carol", "hat", 100))
        .then(refused_reservation(
            RejectionCode::PurchaserIsSeller,
            "carol created item hat",
        ));
}

#[test]
fn an_item_is_not_reserved_at_another_price() {
    given([published(hat())])
        .when_message(reserve_item("alice", "hat", 90))
        .then(refused_reservation(
            RejectionCode::PriceChanged,
            "item hat costs 100, not 90",
        ));
}

#[test]
fn a_limited_is_not_reserved_beyond_the_quantity_limit() {
    let [reserved_serial, sold] = serial_sold("crown", 1, "p-0", "alice", NOW);
    given([published(crown()), reserved_serial, sold])
        .when_message(reserve_item("alice", "crown", 100))
        .then(refused_reservation(
            RejectionCode::QuantityLimitReached,
            "alice already holds 1 of item crown",
        ));
}

#[test]
fn a_limited_with_every_serial_taken_is_sold_out() {
    let [first_reserved, first_sold] = serial_sold("crown", 1, "p-0", "bob", NOW);
    let [second_reserved, second_sold] = serial_sold("crown", 2, "p-9", "dave", NOW);
    given([
        published(crown()),
        first_reserved,
        first_sold,
        second_reserved,
        second_sold,
    ])
    .when_message(reserve_item("alice", "crown", 100))
    .then(refused_reservation(
        RejectionCode::SoldOut,
        "item crown is sold out",
    ));
}

#[test]
fn a_bundle_is_quoted_with_its_items_and_sent_on_to_the_buyer() {
    let sale = SaleKind::Bundle {
        bundle_id: bundle_id("pack"),
        item_ids: vec![item_id("hat"), item_id("scarf")],
    };
    given([bundle_created()])
        .when_message(quote_bundle("alice", 150))
        .then(vec![
            sent(HOME, 1, charge_buyer(reservation(150, sale), PEER)),
            received(1),
        ]);
}

#[test]
fn an_unknown_bundle_is_not_quoted() {
    given([])
        .when_message(quote_bundle("alice", 150))
        .then(refused_reservation(
            RejectionCode::NotFound,
            "bundle pack does not exist",
        ));
}

#[test]
fn a_bundle_is_not_quoted_to_its_creator() {
    given([bundle_created()])
        .when_message(quote_bundle("carol", 150))
        .then(refused_reservation(
            RejectionCode::PurchaserIsSeller,
            "carol created bundle pack",
        ));
}

#[test]
fn a_bundle_is_not_quoted_at_another_price() {
    given([bundle_created()])
        .when_message(quote_bundle("alice", 140))
        .then(refused_reservation(
            RejectionCode::PriceChanged,
            "bundle pack costs 150, not 140",
        ));
}

// ------------------------------------------------------------------ refused, or reserved by an older log's request

#[test]
fn a_reservation_answered_to_an_older_request_goes_on_to_the_buyer() {
    let reservation = reservation(100, crown_sale());
    given(reserving(PurchaseTarget::Item(item_id("crown"))))
        .when_message(reserved(Ok(reservation.clone())))
        .then(vec![
            sent(HOME, 1, charge_buyer(reservation, HOME)),
            received(1),
        ]);
}

#[test]
fn an_older_request_for_an_item_is_answered_to_its_sender() {
    given([published(hat())])
        .when_message(Message::ReserveItem {
            purchase_id: purchase_id("p-1"),
            buyer_id: user_id("alice"),
            item_id: item_id("hat"),
            expected_price: 100,
            at_ms: NOW,
        })
        .then(vec![
            sent(PEER, 1, reserved(Ok(reservation(100, hat_sale())))),
            received(1),
        ]);
}

#[test]
fn an_older_request_for_a_bundle_is_answered_to_its_sender() {
    given([])
        .when_message(Message::QuoteBundle {
            purchase_id: purchase_id("p-1"),
            buyer_id: user_id("alice"),
            bundle_id: bundle_id("pack"),
            expected_price: 150,
        })
        .then(refused_reservation(
            RejectionCode::NotFound,
            "bundle pack does not exist",
        ));
}

#[test]
fn a_refused_reservation_completes_the_purchase() {
    let refusal = rejection(RejectionCode::SoldOut, "item crown is sold out");
    given([accepted(purchase_of_hat())])
        .when_message(reserved(Err(refusal.clone())))
        .then(vec![
            completed("purchase:p-1", Err(refusal), vec![position(2)], vec![]),
            received(1),
        ]);
}

// ------------------------------------------------------------------ the buyer's shard

/// What alice's shard answers to the home shard [`PEER`] for `sale`.
fn paid_answer(
    sale: SaleKind,
    price: i64,
    result: Result<(i64, Vec<ItemId>), Rejection>,
    at: u64,
) -> Event {
    sent(
        PEER,
        1,
        Message::PurchasePaid {
            purchase_id: purchase_id("p-1"),
            reservation: reservation(price, sale),
            result,
            position: position(at),
        },
    )
}

#[test]
fn the_buyer_pays_and_gets_the_item() {
    given([granted("g-0", "alice", 150, 0)])
        .when_message(charge_buyer(reservation(100, hat_sale()), PEER))
        .then(vec![
            buyer_debited_event(100, vec![item_id("hat")], 50),
            paid_answer(hat_sale(), 100, Ok((50, vec![item_id("hat")])), 3),
            received(1),
        ]);
}

#[test]
fn the_buyer_of_a_serial_pays_without_items_to_grant() {
    given([granted("g-0", "alice", 150, 0)])
        .when_message(charge_buyer(reservation(100, crown_sale()), PEER))
        .then(vec![
            buyer_debited_event(100, vec![], 50),
            paid_answer(crown_sale(), 100, Ok((50, vec![])), 3),
            received(1),
        ]);
}

#[test]
fn a_bundle_grants_only_the_items_the_buyer_lacks() {
    let [funds, owned_hat] = alice_owns_hat();
    let pack = SaleKind::Bundle {
        bundle_id: bundle_id("pack"),
        item_ids: vec![item_id("hat"), item_id("scarf")],
    };
    given([funds, owned_hat, granted("g-1", "alice", 150, 0)])
        .when_message(charge_buyer(reservation(150, pack.clone()), PEER))
        .then(vec![
            buyer_debited_event(150, vec![item_id("scarf")], 0),
            paid_answer(pack, 150, Ok((0, vec![item_id("scarf")])), 5),
            received(1),
        ]);
}

#[test]
fn a_buyer_who_owns_every_item_of_a_bundle_is_refused() {
    let [funds, owned_hat] = alice_owns_hat();
    let pack = SaleKind::Bundle {
        bundle_id: bundle_id("pack"),
        item_ids: vec![item_id("hat")],
    };
    let refusal = rejection(
        RejectionCode::AlreadyOwned,
        "alice already owns what purchase p-1 sells",
    );
    given([funds, owned_hat, granted("g-1", "alice", 150, 0)])
        .when_message(charge_buyer(reservation(150, pack.clone()), PEER))
        .then(vec![paid_answer(pack, 150, Err(refusal), 4), received(1)]);
}

#[test]
fn a_buyer_short_of_funds_is_refused() {
    let refusal = rejection(RejectionCode::InsufficientFunds, "alice has 30, needs 100");
    given([granted("g-0", "alice", 30, 0)])
        .when_message(charge_buyer(reservation(100, hat_sale()), PEER))
        .then(vec![
            paid_answer(hat_sale(), 100, Err(refusal), 2),
            received(1),
        ]);
}

#[test]
fn a_buyer_who_owns_the_item_is_refused() {
    let [funds, owned_hat] = alice_owns_hat();
    let refusal = rejection(
        RejectionCode::AlreadyOwned,
        "alice already owns what purchase p-1 sells",
    );
    given([funds, owned_hat, granted("g-1", "alice", 100, 0)])
        .when_message(charge_buyer(reservation(100, hat_sale()), PEER))
        .then(vec![
            paid_answer(hat_sale(), 100, Err(refusal), 4),
            received(1),
        ]);
}

#[test]
fn an_older_request_for_the_buyers_money_is_answered_to_its_sender() {
    given([granted("g-0", "alice", 150, 0)])
        .when_message(debit_buyer(100, vec![item_id("hat")], true))
        .then(vec![
            buyer_debited_event(100, vec![item_id("hat")], 50),
            sent(
                PEER,
                1,
                Message::BuyerDebited {
                    purchase_id: purchase_id("p-1"),
                    result: Ok((50, vec![item_id("hat")])),
                    position: position(3),
                },
            ),
            received(1),
        ]);
}

// ------------------------------------------------------------------ paid or refused

fn hat_purchased() -> Success {
    Success::Purchased {
        target: PurchaseTarget::Item(item_id("hat")),
        price: 100,
        serial: None,
        granted_items: vec![item_id("hat")],
        balance_after: 50,
    }
}

#[test]
fn a_paid_item_is_settled_and_completes_with_its_reservation() {
    given(reserving(PurchaseTarget::Item(item_id("hat"))))
        .when_message(purchase_paid(hat_sale(), Ok((50, vec![item_id("hat")]))))
        .then(vec![
            sent(HOME, 1, settle_primary_sale()),
            purchase_completed(
                "purchase:p-1",
                hat_purchased(),
                vec![position(3), peer_position(8)],
                vec![delivery(HOME, 1)],
                reservation(100, hat_sale()),
            ),
            received(1),
        ]);
}

#[test]
fn a_paid_serial_is_confirmed_then_settled() {
    given(reserving(PurchaseTarget::Item(item_id("crown"))))
        .when_message(purchase_paid(crown_sale(), Ok((50, vec![]))))
        .then(vec![
            sent(
                HOME,
                1,
                Message::ConfirmReservation {
                    purchase_id: purchase_id("p-1"),
                    item_id: item_id("crown"),
                    buyer_id: user_id("alice"),
                    at_ms: NOW,
                },
            ),
            sent(HOME, 2, settle_primary_sale()),
            purchase_completed(
                "purchase:p-1",
                Success::Purchased {
                    target: PurchaseTarget::Item(item_id("crown")),
                    price: 100,
                    serial: Some(1),
                    granted_items: vec![],
                    balance_after: 50,
                },
                vec![position(4), peer_position(8)],
                vec![delivery(HOME, 1), delivery(HOME, 2)],
                reservation(100, crown_sale()),
            ),
            received(1),
        ]);
}

#[test]
fn an_unpaid_serial_is_released_and_the_purchase_refused() {
    let refusal = rejection(RejectionCode::InsufficientFunds, "alice has 30, needs 100");
    given(reserving(PurchaseTarget::Item(item_id("crown"))))
        .when_message(purchase_paid(crown_sale(), Err(refusal.clone())))
        .then(vec![
            sent(
                HOME,
                1,
                Message::CancelReservation {
                    purchase_id: purchase_id("p-1"),
                    item_id: item_id("crown"),
                },
            ),
            completed(
                "purchase:p-1",
                Err(refusal),
                vec![position(3)],
                vec![delivery(HOME, 1)],
            ),
            received(1),
        ]);
}

#[test]
fn an_unpaid_item_without_serials_only_completes() {
    let refusal = rejection(
        RejectionCode::AlreadyOwned,
        "alice already owns what purchase p-1 sells",
    );
    given(reserving(PurchaseTarget::Item(item_id("hat"))))
        .when_message(purchase_paid(hat_sale(), Err(refusal.clone())))
        .then(vec![
            completed("purchase:p-1", Err(refusal), vec![position(2)], vec![]),
            received(1),
        ]);
}

#[test]
fn an_older_logs_purchase_waiting_for_the_buyer_completes_as_paid() {
    let reservation = reservation(100, hat_sale());
    given([
        accepted(purchase_of_hat()),
        progressed(
            "purchase:p-1",
            Progress::Debiting {
                reservation: reservation.clone(),
            },
        ),
    ])
    .when_message(Message::BuyerDebited {
        purchase_id: purchase_id("p-1"),
        result: Ok((50, vec![item_id("hat")])),
        position: peer_position(8),
    })
    .then(vec![
        sent(HOME, 1, settle_primary_sale()),
        purchase_completed(
            "purchase:p-1",
            hat_purchased(),
            vec![position(4), peer_position(8)],
            vec![delivery(HOME, 1)],
            reservation,
        ),
        received(1),
    ]);
}

#[test]
#[should_panic(expected = "which this shard never accepted")]
fn a_payment_for_a_purchase_that_was_not_started_is_a_bug() {
    given([]).when_message(purchase_paid(hat_sale(), Ok((50, vec![item_id("hat")]))));
}

// ------------------------------------------------------------------ follow-ups

#[test]
fn a_confirmed_serial_is_sold_to_its_buyer() {
    given([
        published(crown()),
        Event::SerialReserved {
            item_id: item_id("crown"),
            serial: 1,
            purchase_id: purchase_id("p-1"),
            buyer_id: user_id("alice"),
        },
    ])
    .when_message(Message::ConfirmReservation {
        purchase_id: purchase_id("p-1"),
        item_id: item_id("crown"),
        buyer_id: user_id("alice"),
        at_ms: NOW,
    })
    .then(vec![
        Event::SerialSold {
            item_id: item_id("crown"),
            serial: 1,
            purchase_id: purchase_id("p-1"),
            buyer_id: user_id("alice"),
            at_ms: NOW,
        },
        received(1),
    ]);
}

#[test]
fn a_cancelled_serial_is_returned() {
    given([
        published(crown()),
        Event::SerialReserved {
            item_id: item_id("crown"),
            serial: 1,
            purchase_id: purchase_id("p-1"),
            buyer_id: user_id("alice"),
        },
    ])
    .when_message(Message::CancelReservation {
        purchase_id: purchase_id("p-1"),
        item_id: item_id("crown"),
    })
    .then(vec![
        Event::ReservationCancelled {
            item_id: item_id("crown"),
            serial: 1,
            purchase_id: purchase_id("p-1"),
        },
        received(1),
    ]);
}

#[test]
fn a_settled_sale_goes_to_escrow_until_the_hold_ends() {
    given([]).when_message(settle_primary_sale()).then(vec![
        sale_settled("p-1", "carol", 70, 30, NOW + ESCROW_HOLD_MS),
        received(1),
    ]);
}
