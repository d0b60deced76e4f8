//! Resale purchases: `ResalePurchase` on the purchase's shard;
//! `ReserveSale` for the listing on the listing's shard, forwarded for the
//! listing on its item to the item's shard, which sends the reservation on
//! to the buyer's shard (`ChargeBuyer`) or refuses it back (`Reserved`);
//! `PurchasePaid` back, as for every purchase; then `ConfirmReservation` / `CancelReservation` on the
//! item's shard, `CreditSeller` on the seller's and `SettleSale` on the
//! creator's. Rejections: not_found, listing_unavailable,
//! purchaser_is_seller, price_changed, insufficient_funds.

use crate::decide::testing::*;
use crate::decide::Answer;
use crate::model::*;
use crate::money::{Account, Posting};

fn resale_purchase(buyer: &str, expected_price: i64) -> Command {
    Command::ResalePurchase {
        purchase_id: purchase_id("p-2"),
        buyer_id: user_id(buyer),
        listing_id: listing_id("l-1"),
        expected_price,
    }
}

/// A request of a purchase homed on `home` for `request`.
fn reserve_sale(
    buyer: &str,
    request: SaleRequest,
    expected_price: i64,
    home: crate::ids::ShardId,
) -> Message {
    Message::ReserveSale {
        purchase_id: purchase_id("p-2"),
        buyer_id: user_id(buyer),
        request,
        expected_price,
        at_ms: NOW,
        home,
    }
}

/// The request of a purchase homed on [`PEER`] for l-1, to its shard.
fn reserve_listing(buyer: &str, expected_price: i64) -> Message {
    reserve_sale(
        buyer,
        SaleRequest::Listing(listing_id("l-1")),
        expected_price,
        PEER,
    )
}

/// The request of a purchase homed on [`PEER`] for l-1, to the crown's shard.
fn reserve_listing_on_item(buyer: &str, expected_price: i64) -> Message {
    reserve_sale(
        buyer,
        SaleRequest::ListingOnItem {
            listing_id: listing_id("l-1"),
            item_id: item_id("crown"),
        },
        expected_price,
        PEER,
    )
}

fn reserved(result: Result<Reservation, Rejection>) -> Message {
    Message::Reserved {
        purchase_id: purchase_id("p-2"),
        result,
    }
}

fn resale_reservation() -> Reservation {
    Reservation {
        price: 150,
        creator_id: user_id("carol"),
        sale: SaleKind::Resale {
            listing_id: listing_id("l-1"),
            item_id: item_id("crown"),
            serial: 1,
            seller_id: user_id("bob"),
        },
        terms: None,
    }
}

fn listing_registered() -> Event {
    Event::ListingRegistered {
        listing_id: listing_id("l-1"),
        item_id: item_id("crown"),
    }
}

fn listing_reserved(purchase: &str) -> Event {
    Event::ListingReserved {
        listing_id: listing_id("l-1"),
        item_id: item_id("crown"),
        purchase_id: purchase_id(purchase),
    }
}

/// The item's shard: carol's crown, serial 1 bought by bob and listed by
/// him for 150 as l-1.
fn crown_listed_by_bob() -> Vec<Event> {
    let mut events = vec![published(limited("crown", "carol", 100, 2))];
    events.extend(serial_sold("crown", 1, "p-0", "bob", NOW - 1_000));
    events.push(Event::ListingCreated {
        listing_id: listing_id("l-1"),
        item_id: item_id("crown"),
        serial: 1,
        seller_id: user_id("bob"),
        price: 150,
    });
    events
}

/// The purchase's shard: alice's resale purchase waiting for her payment.
fn reserving() -> [Event; 1] {
    [accepted(resale_purchase("alice", 150))]
}

/// Alice's shard's answer.
fn purchase_paid(result: Result<(i64, Vec<crate::ids::ItemId>), Rejection>) -> Message {
    Message::PurchasePaid {
        purchase_id: purchase_id("p-2"),
        reservation: resale_reservation(),
        result,
        position: ShardPosition {
            shard: PEER,
            sequence: 8,
        },
    }
}

#[test]
fn a_resale_purchase_asks_the_listings_shard_to_reserve_it() {
    given([])
        .when_command(resale_purchase("alice", 150))
        .then_answers(
            Answer::OnCompletion("purchase:p-2".into()),
            vec![
                accepted(resale_purchase("alice", 150)),
                sent(
                    HOME,
                    1,
                    reserve_sale("alice", SaleRequest::Listing(listing_id("l-1")), 150, HOME),
                ),
            ],
        );
}

#[test]
fn the_listings_shard_forwards_the_reservation_to_the_items_shard() {
    given([listing_registered()])
        .when_message(reserve_listing("alice", 150))
        .then(vec![
            sent(HOME, 1, reserve_listing_on_item("alice", 150)),
            received(1),
        ]);
}

#[test]
fn an_unknown_listing_is_refused_to_the_purchases_shard() {
    given([])
        .when_message(reserve_listing("alice", 150))
        .then(vec![
            sent(
                PEER,
                1,
                reserved(Err(rejection(
                    RejectionCode::NotFound,
                    "listing l-1 does not exist",
                ))),
            ),
            received(1),
        ]);
}

#[test]
fn the_items_shard_reserves_the_listing_and_sends_it_on_to_the_buyer() {
    given(crown_listed_by_bob())
        .when_message(reserve_listing_on_item("alice", 150))
        .then(vec![
            listing_reserved("p-2"),
            sent(
                HOME,
                1,
                Message::ChargeBuyer {
                    purchase_id: purchase_id("p-2"),
                    buyer_id: user_id("alice"),
                    reservation: resale_reservation(),
                    at_ms: NOW,
                    home: PEER,
                },
            ),
            received(1),
        ]);
}

#[test]
fn an_older_request_for_a_listing_is_forwarded_then_answered_to_the_purchases_shard() {
    given([listing_registered()])
        .when_message(Message::ReserveListing {
            purchase_id: purchase_id("p-2"),
            buyer_id: user_id("alice"),
            listing_id: listing_id("l-1"),
            expected_price: 150,
            reply_to: PEER,
        })
        .then(vec![
            sent(
                HOME,
                1,
                Message::ReserveListingOnItem {
                    purchase_id: purchase_id("p-2"),
                    buyer_id: user_id("alice"),
                    listing_id: listing_id("l-1"),
                    item_id: item_id("crown"),
                    expected_price: 150,
                    reply_to: PEER,
                },
            ),
            received(1),
        ]);
    given(crown_listed_by_bob())
        .when_message(Message::ReserveListingOnItem {
            purchase_id: purchase_id("p-2"),
            buyer_id: user_id("alice"),
            listing_id: listing_id("l-1"),
            item_id: item_id("crown"),
            expected_price: 150,
            reply_to: PEER,
        })
        .then(vec![
            listing_reserved("p-2"),
            sent(PEER, 1, reserved(Ok(resale_reservation()))),
            received(1),
        ]);
}

#[test]
fn a_listing_reserved_by_another_purchase_is_unavailable() {
    let mut events = crown_listed_by_bob();
    events.push(listing_reserved("p-9"));
    given(events)
        .when_message(reserve_listing_on_item("alice", 150))
        .then(vec![
            sent(
                PEER,
                1,
                reserved(Err(rejection(
                    RejectionCode::ListingUnavailable,
                    "listing l-1 is no longer available",
                ))),
            ),
            received(1),
        ]);
}

#[test]
fn a_seller_may_not_buy_their_own_listing() {
    given(crown_listed_by_bob())
        .when_message(reserve_listing_on_item("bob", 150))
        .then(vec![
            sent(
                PEER,
                1,
                reserved(Err(rejection(
                    RejectionCode::PurchaserIsSeller,
                    "bob is the seller of listing l-1",
                ))),
            ),
            received(1),
        ]);
}

#[test]
fn a_listing_is_not_reserved_at_another_price() {
    given(crown_listed_by_bob())
        .when_message(reserve_listing_on_item("alice", 140))
        .then(vec![
            sent(
                PEER,
                1,
                reserved(Err(rejection(
                    RejectionCode::PriceChanged,
                    "listing l-1 costs 150, not 140",
                ))),
            ),
            received(1),
        ]);
}

#[test]
fn a_buyer_short_of_funds_for_a_resale_is_refused() {
    given([granted("g-0", "alice", 10, 0)])
        .when_message(Message::ChargeBuyer {
            purchase_id: purchase_id("p-2"),
            buyer_id: user_id("alice"),
            reservation: resale_reservation(),
            at_ms: NOW,
            home: PEER,
        })
        .then(vec![
            sent(
                PEER,
                1,
                Message::PurchasePaid {
                    purchase_id: purchase_id("p-2"),
                    reservation: resale_reservation(),
                    result: Err(rejection(
                        RejectionCode::InsufficientFunds,
                        "alice has 10, needs 150",
                    )),
                    position: position(2),
                },
            ),
            received(1),
        ]);
}

#[test]
fn a_paid_resale_moves_the_serial_pays_the_seller_and_settles_the_royalty() {
    given(reserving())
        .when_message(purchase_paid(Ok((40, vec![]))))
        .then(vec![
            sent(
                HOME,
                1,
                Message::ConfirmReservation {
                    purchase_id: purchase_id("p-2"),
                    item_id: item_id("crown"),
                    buyer_id: user_id("alice"),
                    at_ms: NOW,
                },
            ),
            sent(
                HOME,
                2,
                Message::CreditSeller {
                    purchase_id: purchase_id("p-2"),
                    seller_id: user_id("bob"),
                    amount: 105,
                },
            ),
            sent(
                HOME,
                3,
                Message::SettleSale {
                    purchase_id: purchase_id("p-2"),
                    creator_id: user_id("carol"),
                    cleared: 45,
                    creator_share: 15,
                    platform_fee: 30,
                    policy_version: 1,
                    resale: true,
                    at_ms: NOW,
                },
            ),
            purchase_completed(
                "purchase:p-2",
                Success::ResalePurchased {
                    item_id: item_id("crown"),
                    serial: 1,
                    price: 150,
                    seller_id: user_id("bob"),
                    balance_after: 40,
                },
                vec![
                    position(5),
                    ShardPosition {
                        shard: PEER,
                        sequence: 8,
                    },
                ],
                vec![delivery(HOME, 1), delivery(HOME, 2), delivery(HOME, 3)],
                resale_reservation(),
            ),
            received(1),
        ]);
}

#[test]
fn an_unpaid_resale_releases_the_listing() {
    let refusal = rejection(RejectionCode::InsufficientFunds, "alice has 10, needs 150");
    given(reserving())
        .when_message(purchase_paid(Err(refusal.clone())))
        .then(vec![
            sent(
                HOME,
                1,
                Message::CancelReservation {
                    purchase_id: purchase_id("p-2"),
                    item_id: item_id("crown"),
                },
            ),
            completed(
                "purchase:p-2",
                Err(refusal),
                vec![position(3)],
                vec![delivery(HOME, 1)],
            ),
            received(1),
        ]);
}

#[test]
fn a_confirmed_resale_transfers_the_serial_and_ends_the_listing() {
    let mut events = crown_listed_by_bob();
    events.push(listing_reserved("p-2"));
    given(events)
        .when_message(Message::ConfirmReservation {
            purchase_id: purchase_id("p-2"),
            item_id: item_id("crown"),
            buyer_id: user_id("alice"),
            at_ms: NOW,
        })
        .then(vec![
            Event::SerialTransferred {
                item_id: item_id("crown"),
                serial: 1,
                listing_id: listing_id("l-1"),
                purchase_id: purchase_id("p-2"),
                from_user_id: user_id("bob"),
                to_user_id: user_id("alice"),
                price: 150,
                at_ms: NOW,
            },
            received(1),
        ]);
}

#[test]
fn a_cancelled_resale_frees_the_listing() {
    let mut events = crown_listed_by_bob();
    events.push(listing_reserved("p-2"));
    given(events)
        .when_message(Message::CancelReservation {
            purchase_id: purchase_id("p-2"),
            item_id: item_id("crown"),
        })
        .then(vec![
            Event::ListingReservationCancelled {
                listing_id: listing_id("l-1"),
                item_id: item_id("crown"),
                purchase_id: purchase_id("p-2"),
            },
            received(1),
        ]);
}

#[test]
fn the_seller_is_credited() {
    given([granted("g-0", "bob", 20, 0)])
        .when_message(Message::CreditSeller {
            purchase_id: purchase_id("p-2"),
            seller_id: user_id("bob"),
            amount: 105,
        })
        .then(vec![
            Event::SellerCredited {
                purchase_id: purchase_id("p-2"),
                seller_id: user_id("bob"),
                amount: 105,
                balance_after: 125,
                postings: vec![
                    Posting::new(Account::Clearing, -105),
                    Posting::new(Account::Wallet(user_id("bob")), 105),
                ],
            },
            received(1),
        ]);
}
