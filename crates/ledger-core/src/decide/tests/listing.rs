//! Listings: `CreateListing` on the listing's shard, `CreateListingOnItem`
//! on the item's shard, `ListingResult` back; `CancelListing`,
//! `CancelListingOnItem`, `CancelResult` back.
//! Rejections: idempotency_conflict, not_found, not_resellable, not_owner,
//! resale_hold_active, already_listed, forbidden, listing_unavailable.

use crate::decide::testing::*;
use crate::decide::Answer;
use crate::model::*;

fn create_listing(seller: &str, item: &str, serial: u32) -> Command {
    Command::CreateListing {
        listing_id: listing_id("l-1"),
        seller_id: user_id(seller),
        item_id: item_id(item),
        serial,
        price: 150,
    }
}

fn create_on_item(seller: &str, item: &str, serial: u32) -> Message {
    Message::CreateListingOnItem {
        listing_id: listing_id("l-1"),
        seller_id: user_id(seller),
        item_id: item_id(item),
        serial,
        price: 150,
        at_ms: NOW,
    }
}

fn listing_result(result: Result<(), Rejection>, sequence: u64) -> Message {
    Message::ListingResult {
        listing_id: listing_id("l-1"),
        result,
        position: position(sequence),
    }
}

/// The item's shard: carol's crown, serial 1 bought by bob at `acquired_at_ms`.
fn crown_held_by_bob_since(acquired_at_ms: TimestampMs) -> Vec<Event> {
    let mut events = vec![published(limited("crown", "carol", 100, 2))];
    events.extend(serial_sold("crown", 1, "p-0", "bob", acquired_at_ms));
    events
}

/// The item's shard, with bob's serial 1 listed as l-1.
fn crown_listed_by_bob() -> Vec<Event> {
    let mut events = crown_held_by_bob_since(NOW - RESALE_HOLD_MS);
    events.push(Event::ListingCreated {
        listing_id: listing_id("l-1"),
        item_id: item_id("crown"),
        serial: 1,
        seller_id: user_id("bob"),
        price: 150,
    });
    events
}

/// The item's shard refusing to list, logging nothing after its `logged` events.
fn refused_listing(code: RejectionCode, detail: &str, logged: u64) -> Vec<Event> {
    vec![
        sent(
            PEER,
            1,
            listing_result(Err(rejection(code, detail)), logged + 1),
        ),
        received(1),
    ]
}

fn cancel_listing() -> Command {
    Command::CancelListing {
        listing_id: listing_id("l-1"),
    }
}

fn cancel_accepted(actor: Actor) -> Event {
    Event::CommandAccepted {
        key: "cancel:l-1".into(),
        fingerprint: 0,
        command: cancel_listing(),
        meta: CommandMeta { at_ms: NOW, actor },
    }
}

fn cancel_on_item(actor: Actor) -> Message {
    Message::CancelListingOnItem {
        listing_id: listing_id("l-1"),
        item_id: item_id("crown"),
        actor,
    }
}

fn cancel_result(result: Result<(), Rejection>, sequence: u64) -> Message {
    Message::CancelResult {
        listing_id: listing_id("l-1"),
        result,
        position: position(sequence),
    }
}

fn listing_ended(reason: ListingEndReason) -> Event {
    Event::ListingEnded {
        listing_id: listing_id("l-1"),
        item_id: item_id("crown"),
        serial: 1,
        reason,
    }
}

fn listing_registered() -> Event {
    Event::ListingRegistered {
        listing_id: listing_id("l-1"),
        item_id: item_id("crown"),
    }
}

// ------------------------------------------------------------------ creating

#[test]
fn a_listing_asks_the_items_shard_to_list_the_serial() {
    given([])
        .when_command(create_listing("bob", "crown", 1))
        .then_answers(
            Answer::OnCompletion("listing:l-1".into()),
            vec![
                accepted(create_listing("bob", "crown", 1)),
                sent(HOME, 1, create_on_item("bob", "crown", 1)),
            ],
        );
}

#[test]
fn a_listing_id_used_for_another_serial_is_refused() {
    given([accepted(create_listing("bob", "crown", 1))])
        .when_command(create_listing("bob", "crown", 2))
        .then_refused(
            RejectionCode::IdempotencyConflict,
            "listing:l-1 was already used with a different request",
        );
}

#[test]
fn the_holder_lists_a_serial_once_the_hold_ended() {
    given(crown_held_by_bob_since(NOW - RESALE_HOLD_MS))
        .when_message(create_on_item("bob", "crown", 1))
        .then(vec![
            Event::ListingCreated {
                listing_id: listing_id("l-1"),
                item_id: item_id("crown"),
                serial: 1,
                seller_id: user_id("bob"),
                price: 150,
            },
            sent(PEER, 1, listing_result(Ok(()), 5)),
            received(1),
        ]);
}

#[test]
fn an_unknown_item_is_not_listed() {
    given([])
        .when_message(create_on_item("bob", "crown", 1))
        .then(refused_listing(
            RejectionCode::NotFound,
            "item crown does not exist",
            0,
        ));
}

#[test]
fn a_serial_nobody_holds_is_not_listed() {
    given(crown_held_by_bob_since(NOW - RESALE_HOLD_MS))
        .when_message(create_on_item("bob", "crown", 2))
        .then(refused_listing(
            RejectionCode::NotFound,
            "serial 2 of item crown has no owner",
            3,
        ));
}

#[test]
fn an_item_without_serials_is_not_resellable() {
    given([published(item("hat", "carol", 100))])
        .when_message(create_on_item("bob", "hat", 1))
        .then(refused_listing(
            RejectionCode::NotResellable,
            "item hat cannot be resold",
            1,
        ));
}

#[test]
fn a_limited_its_creator_made_unresellable_is_not_listed() {
    let crown = ItemDefinition {
        resellable: false,
        ..limited("crown", "carol", 100, 2)
    };
    let mut events = vec![published(crown)];
    events.extend(serial_sold("crown", 1, "p-0", "bob", NOW - RESALE_HOLD_MS));
    given(events)
        .when_message(create_on_item("bob", "crown", 1))
        .then(refused_listing(
            RejectionCode::NotResellable,
            "item crown cannot be resold",
            3,
        ));
}

#[test]
fn only_the_holder_lists_a_serial() {
    given(crown_held_by_bob_since(NOW - RESALE_HOLD_MS))
        .when_message(create_on_item("alice", "crown", 1))
        .then(refused_listing(
            RejectionCode::NotOwner,
            "alice does not own serial 1 of item crown",
            3,
        ));
}

#[test]
fn a_serial_is_not_listed_during_the_resale_hold() {
    given(crown_held_by_bob_since(NOW - 100))
        .when_message(create_on_item("bob", "crown", 1))
        .then(refused_listing(
            RejectionCode::ResaleHoldActive,
            &format!(
                "serial 1 of item crown can be listed from {} ms",
                NOW - 100 + RESALE_HOLD_MS
            ),
            3,
        ));
}

#[test]
fn a_listed_serial_is_not_listed_again() {
    given(crown_listed_by_bob())
        .when_message(create_on_item("bob", "crown", 1))
        .then(refused_listing(
            RejectionCode::AlreadyListed,
            "serial 1 of item crown is already listed",
            4,
        ));
}

#[test]
fn a_created_listing_is_registered_and_completes() {
    given([accepted(create_listing("bob", "crown", 1))])
        .when_message(listing_result(Ok(()), 40))
        .then(vec![
            listing_registered(),
            completed(
                "listing:l-1",
                Ok(Success::ListingCreated),
                vec![position(3), position(40)],
                vec![],
            ),
            received(1),
        ]);
}

#[test]
fn a_refused_listing_completes_without_registering() {
    let refusal = rejection(
        RejectionCode::NotOwner,
        "alice does not own serial 1 of item crown",
    );
    given([accepted(create_listing("alice", "crown", 1))])
        .when_message(listing_result(Err(refusal.clone()), 40))
        .then(vec![
            completed("listing:l-1", Err(refusal), vec![position(2)], vec![]),
            received(1),
        ]);
}

// ------------------------------------------------------------------ cancelling

#[test]
fn a_cancel_asks_the_items_shard_to_end_the_listing() {
    given([listing_registered()])
        .when_command_by(acting_user("bob"), cancel_listing())
        .then_answers(
            Answer::OnCompletion("cancel:l-1".into()),
            vec![
                cancel_accepted(acting_user("bob")),
                sent(HOME, 1, cancel_on_item(acting_user("bob"))),
            ],
        );
}

#[test]
fn a_cancel_joins_the_one_in_flight() {
    given([listing_registered(), cancel_accepted(acting_user("bob"))])
        .when_command_by(acting_user("bob"), cancel_listing())
        .then_answers(Answer::OnCompletion("cancel:l-1".into()), vec![]);
}

#[test]
fn an_unknown_listing_is_not_cancelled() {
    given([])
        .when_command(cancel_listing())
        .then_refused(RejectionCode::NotFound, "listing l-1 does not exist");
}

#[test]
fn the_seller_ends_the_listing() {
    given(crown_listed_by_bob())
        .when_message(cancel_on_item(acting_user("bob")))
        .then(vec![
            listing_ended(ListingEndReason::Cancelled),
            sent(PEER, 1, cancel_result(Ok(()), 6)),
            received(1),
        ]);
}

#[test]
fn another_user_may_not_end_the_listing() {
    given(crown_listed_by_bob())
        .when_message(cancel_on_item(acting_user("alice")))
        .then(vec![
            sent(
                PEER,
                1,
                cancel_result(
                    Err(rejection(
                        RejectionCode::Forbidden,
                        "listing l-1 belongs to another seller",
                    )),
                    5,
                ),
            ),
            received(1),
        ]);
}

#[test]
fn a_listing_being_bought_is_not_ended() {
    let mut events = crown_listed_by_bob();
    events.push(Event::ListingReserved {
        listing_id: listing_id("l-1"),
        item_id: item_id("crown"),
        purchase_id: purchase_id("p-2"),
    });
    given(events)
        .when_message(cancel_on_item(acting_user("bob")))
        .then(vec![
            sent(
                PEER,
                1,
                cancel_result(
                    Err(rejection(
                        RejectionCode::ListingUnavailable,
                        "listing l-1 is being bought",
                    )),
                    6,
                ),
            ),
            received(1),
        ]);
}

#[test]
fn a_cancelled_listing_is_cancelled_again_without_events() {
    let mut events = crown_listed_by_bob();
    events.push(listing_ended(ListingEndReason::Cancelled));
    given(events)
        .when_message(cancel_on_item(acting_user("bob")))
        .then(vec![sent(PEER, 1, cancel_result(Ok(()), 6)), received(1)]);
}

#[test]
fn a_listing_ended_by_a_sale_is_unavailable() {
    let mut events = crown_listed_by_bob();
    events.push(listing_ended(ListingEndReason::SerialMoved));
    given(events)
        .when_message(cancel_on_item(acting_user("bob")))
        .then(vec![
            sent(
                PEER,
                1,
                cancel_result(
                    Err(rejection(
                        RejectionCode::ListingUnavailable,
                        "listing l-1 is no longer available",
                    )),
                    6,
                ),
            ),
            received(1),
        ]);
}

#[test]
fn an_answered_cancel_completes() {
    given([listing_registered(), cancel_accepted(acting_user("bob"))])
        .when_message(cancel_result(Ok(()), 30))
        .then(vec![
            completed(
                "cancel:l-1",
                Ok(Success::ListingCancelled),
                vec![position(3), position(30)],
                vec![],
            ),
            received(1),
        ]);
}

#[test]
fn a_finished_cancel_may_be_tried_again() {
    let first_completed = completed(
        "cancel:l-1",
        Err(rejection(
            RejectionCode::ListingUnavailable,
            "listing l-1 is being bought",
        )),
        vec![position(3)],
        vec![],
    );
    given([
        listing_registered(),
        cancel_accepted(acting_user("bob")),
        first_completed,
    ])
    .when_command_by(acting_user("bob"), cancel_listing())
    .then_answers(
        Answer::OnCompletion("cancel:l-1".into()),
        vec![
            cancel_accepted(acting_user("bob")),
            sent(HOME, 1, cancel_on_item(acting_user("bob"))),
        ],
    );
}
