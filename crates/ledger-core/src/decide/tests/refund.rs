//! Refunds: `Refund` on the refund's shard; `RefundPurchase` on the
//! purchase's shard; `FreezeEscrow` on the creator's shard, `FreezeResult`
//! back; for a Limited, `RevokeSerial` on the item's shard,
//! `SerialRevokeAnswered` back (with the item shard's position; older logs:
//! `RevokeResult`); then `ReverseEscrow`, `RefundBuyer`, and
//! `RefundCompleted` (older logs: `RefundSettled`; or
//! `RefundResult` with a refusal) to the refund's shard; `UnfreezeEscrow`
//! when a refund is abandoned after the freeze.
//! Rejections: idempotency_conflict, not_found, not_refundable,
//! already_refunded, refund_window_closed.

use crate::decide::testing::{self, *};
use crate::decide::Answer;
use crate::ids::{ItemId, ShardId};
use crate::model::*;
use crate::money::{Account, Posting};

fn refund() -> Command {
    Command::Refund {
        refund_id: refund_id("r-1"),
        purchase_id: purchase_id("p-1"),
    }
}

fn refund_purchase() -> Message {
    Message::RefundPurchase {
        refund_id: refund_id("r-1"),
        purchase_id: purchase_id("p-1"),
    }
}

fn refund_result(result: Result<i64, Rejection>) -> Message {
    Message::RefundResult {
        refund_id: refund_id("r-1"),
        result,
    }
}

fn item_sale(item: &str, serial: Option<u32>) -> SaleKind {
    SaleKind::Item {
        item_id: item_id(item),
        serial,
    }
}

fn purchase_of(item: &str) -> Event {
    accepted(Command::Purchase {
        purchase_id: purchase_id("p-1"),
        buyer_id: user_id("alice"),
        target: PurchaseTarget::Item(item_id(item)),
        expected_price: 100,
        region: None,
    })
}

fn reservation_of(item: &str, serial: Option<u32>) -> Reservation {
    Reservation {
        price: 100,
        creator_id: user_id("carol"),
        sale: item_sale(item, serial),
        terms: None,
    }
}

/// The purchase's shard: alice's purchase p-1 of `item` from carol for
/// 100, completed with `result`.
fn purchase_completed(
    item: &str,
    serial: Option<u32>,
    result: Result<Success, Rejection>,
) -> Vec<Event> {
    let completion = match result {
        Ok(success) => testing::purchase_completed(
            "purchase:p-1",
            success,
            vec![position(2)],
            vec![],
            reservation_of(item, serial),
        ),
        Err(rejection) => completed("purchase:p-1", Err(rejection), vec![position(2)], vec![]),
    };
    vec![purchase_of(item), completion]
}

/// alice's paid purchase of carol's hat (granted with it).
fn hat_paid() -> Vec<Event> {
    purchase_completed(
        "hat",
        None,
        Ok(Success::Purchased {
            target: PurchaseTarget::Item(item_id("hat")),
            price: 100,
            serial: None,
            granted_items: vec![item_id("hat")],
            balance_after: 50,
        }),
    )
}

/// alice's paid purchase of serial 1 of carol's crown.
fn crown_paid() -> Vec<Event> {
    purchase_completed(
        "crown",
        Some(1),
        Ok(Success::Purchased {
            target: PurchaseTarget::Item(item_id("crown")),
            price: 100,
            serial: Some(1),
            granted_items: vec![],
            balance_after: 50,
        }),
    )
}

fn refund_progressed(progress: RefundProgress) -> Event {
    Event::RefundProgressed {
        purchase_id: purchase_id("p-1"),
        progress,
    }
}

fn freezing() -> RefundProgress {
    RefundProgress::Freezing {
        refund_id: refund_id("r-1"),
        reply_to: PEER,
    }
}

fn revoking() -> RefundProgress {
    RefundProgress::Revoking {
        refund_id: refund_id("r-1"),
        reply_to: PEER,
    }
}

/// `purchase` events then the refund's `progress`.
fn refund_running(purchase: Vec<Event>, progress: RefundProgress) -> Vec<Event> {
    let mut events = purchase;
    events.push(refund_progressed(progress));
    events
}

/// The refund goes through: escrow reversed, buyer credited (losing
/// `revoked`), refund's shard told.
fn refund_finished(revoked: Vec<ItemId>, positions: Vec<ShardPosition>) -> Vec<Event> {
    vec![
        refund_progressed(RefundProgress::Refunded {
            refund_id: refund_id("r-1"),
        }),
        sent(
            HOME,
            1,
            Message::ReverseEscrow {
                purchase_id: purchase_id("p-1"),
                refund_id: refund_id("r-1"),
                creator_id: user_id("carol"),
            },
        ),
        sent(
            HOME,
            2,
            Message::RefundBuyer {
                purchase_id: purchase_id("p-1"),
                refund_id: refund_id("r-1"),
                buyer_id: user_id("alice"),
                amount: 100,
                revoke_items: revoked,
            },
        ),
        sent(
            PEER,
            1,
            Message::RefundCompleted {
                refund_id: refund_id("r-1"),
                amount: 100,
                deliveries: vec![delivery(HOME, 1), delivery(HOME, 2)],
                positions,
            },
        ),
        received(1),
    ]
}

/// The purchase's shard refusing the refund at once.
fn refused_refund(code: RejectionCode, detail: &str) -> Vec<Event> {
    vec![
        sent(PEER, 1, refund_result(Err(rejection(code, detail)))),
        received(1),
    ]
}

/// The creator's shard: carol's escrow for p-1 (70, fee 30).
fn escrow_held() -> Event {
    sale_settled("p-1", "carol", 70, 30, NOW + ESCROW_HOLD_MS)
}

fn escrow_frozen() -> Event {
    Event::EscrowFrozen {
        purchase_id: purchase_id("p-1"),
    }
}

fn freeze_escrow() -> Message {
    Message::FreezeEscrow {
        purchase_id: purchase_id("p-1"),
        creator_id: user_id("carol"),
    }
}

fn freeze_result(result: Result<(), Rejection>) -> Message {
    Message::FreezeResult {
        purchase_id: purchase_id("p-1"),
        result,
    }
}

fn revoke_serial() -> Message {
    Message::RevokeSerial {
        purchase_id: purchase_id("p-1"),
        item_id: item_id("crown"),
        serial: 1,
        owner_id: user_id("alice"),
    }
}

/// The item's shard answering a revocation, at `sequence` of its log.
fn revoke_answered(result: Result<(), Rejection>, sequence: u64) -> Message {
    Message::SerialRevokeAnswered {
        purchase_id: purchase_id("p-1"),
        result,
        position: position(sequence),
    }
}

/// Where the item's shard revoked the serial, as the purchase's shard hears it.
fn item_shard_position() -> ShardPosition {
    ShardPosition {
        shard: ShardId(3),
        sequence: 9,
    }
}

/// The same answer as the purchase's shard receives it from the item's shard.
fn revoke_result(result: Result<(), Rejection>) -> Message {
    Message::SerialRevokeAnswered {
        purchase_id: purchase_id("p-1"),
        result,
        position: item_shard_position(),
    }
}

fn serial_moved_on() -> Rejection {
    rejection(
        RejectionCode::NotRefundable,
        "serial 1 of item crown has moved on since purchase p-1",
    )
}

// ------------------------------------------------------------------ the refund's shard

#[test]
fn a_refund_asks_the_purchases_shard() {
    given([]).when_command(refund()).then_answers(
        Answer::OnCompletion("refund:r-1".into()),
        vec![accepted(refund()), sent(HOME, 1, refund_purchase())],
    );
}

#[test]
fn a_refund_id_used_for_another_purchase_is_refused() {
    given([accepted(refund())])
        .when_command(Command::Refund {
            refund_id: refund_id("r-1"),
            purchase_id: purchase_id("p-2"),
        })
        .then_refused(
            RejectionCode::IdempotencyConflict,
            "refund:r-1 was already used with a different request",
        );
}

#[test]
fn a_settled_refund_completes_with_the_reversal_and_credit_to_wait_for() {
    let deliveries = vec![
        DeliveryMark {
            from: PEER,
            to: ShardId(3),
            sequence: 4,
        },
        DeliveryMark {
            from: PEER,
            to: ShardId(5),
            sequence: 9,
        },
    ];
    given([accepted(refund())])
        .when_message(Message::RefundSettled {
            refund_id: refund_id("r-1"),
            amount: 100,
            deliveries: deliveries.clone(),
        })
        .then(vec![
            completed(
                "refund:r-1",
                Ok(Success::Refunded {
                    purchase_id: purchase_id("p-1"),
                    amount: 100,
                }),
                vec![position(2)],
                deliveries,
            ),
            received(1),
        ]);
}

#[test]
fn a_completed_refund_also_covers_the_serials_revocation() {
    let deliveries = vec![DeliveryMark {
        from: PEER,
        to: ShardId(3),
        sequence: 4,
    }];
    given([accepted(refund())])
        .when_message(Message::RefundCompleted {
            refund_id: refund_id("r-1"),
            amount: 100,
            deliveries: deliveries.clone(),
            positions: vec![item_shard_position()],
        })
        .then(vec![
            completed(
                "refund:r-1",
                Ok(Success::Refunded {
                    purchase_id: purchase_id("p-1"),
                    amount: 100,
                }),
                vec![position(2), item_shard_position()],
                deliveries,
            ),
            received(1),
        ]);
}

#[test]
fn a_refused_refund_completes_with_the_refusal() {
    let refusal = rejection(
        RejectionCode::AlreadyRefunded,
        "purchase p-1 was already refunded",
    );
    given([accepted(refund())])
        .when_message(refund_result(Err(refusal.clone())))
        .then(vec![
            completed("refund:r-1", Err(refusal), vec![position(2)], vec![]),
            received(1),
        ]);
}

#[test]
fn a_refund_result_with_an_amount_from_older_logs_completes_it() {
    given([accepted(refund())])
        .when_message(refund_result(Ok(100)))
        .then(vec![
            completed(
                "refund:r-1",
                Ok(Success::Refunded {
                    purchase_id: purchase_id("p-1"),
                    amount: 100,
                }),
                vec![position(2)],
                vec![],
            ),
            received(1),
        ]);
}

// ------------------------------------------------------------------ the purchase's shard starts

#[test]
fn a_paid_purchase_starts_its_refund_by_freezing_the_escrow() {
    given(hat_paid()).when_message(refund_purchase()).then(vec![
        refund_progressed(freezing()),
        sent(HOME, 1, freeze_escrow()),
        received(1),
    ]);
}

#[test]
fn a_paid_purchase_of_an_older_log_starts_its_refund_too() {
    let success = Success::Purchased {
        target: PurchaseTarget::Item(item_id("hat")),
        price: 100,
        serial: None,
        granted_items: vec![item_id("hat")],
        balance_after: 50,
    };
    given([
        purchase_of("hat"),
        progressed(
            "purchase:p-1",
            Progress::Debiting {
                reservation: reservation_of("hat", None),
            },
        ),
        completed("purchase:p-1", Ok(success), vec![position(3)], vec![]),
    ])
    .when_message(refund_purchase())
    .then(vec![
        refund_progressed(freezing()),
        sent(HOME, 1, freeze_escrow()),
        received(1),
    ]);
}

#[test]
fn an_unknown_purchase_is_not_refunded() {
    given([])
        .when_message(refund_purchase())
        .then(refused_refund(
            RejectionCode::NotFound,
            "purchase p-1 does not exist",
        ));
}

#[test]
fn a_purchase_still_running_is_not_refunded() {
    given([purchase_of("hat")])
        .when_message(refund_purchase())
        .then(refused_refund(
            RejectionCode::NotFound,
            "purchase p-1 did not complete",
        ));
}

#[test]
fn a_refused_purchase_is_not_refunded() {
    let refused = rejection(RejectionCode::InsufficientFunds, "alice has 30, needs 100");
    given(purchase_completed("hat", None, Err(refused)))
        .when_message(refund_purchase())
        .then(refused_refund(
            RejectionCode::NotFound,
            "purchase p-1 did not complete",
        ));
}

#[test]
fn a_resale_is_not_refundable() {
    given([
        accepted(Command::ResalePurchase {
            purchase_id: purchase_id("p-1"),
            buyer_id: user_id("alice"),
            listing_id: listing_id("l-1"),
            expected_price: 100,
        }),
        progressed(
            "purchase:p-1",
            Progress::Debiting {
                reservation: Reservation {
                    price: 100,
                    creator_id: user_id("carol"),
                    sale: SaleKind::Resale {
                        listing_id: listing_id("l-1"),
                        item_id: item_id("crown"),
                        serial: 1,
                        seller_id: user_id("bob"),
                    },
                    terms: None,
                },
            },
        ),
        completed(
            "purchase:p-1",
            Ok(Success::ResalePurchased {
                item_id: item_id("crown"),
                serial: 1,
                price: 100,
                seller_id: user_id("bob"),
                balance_after: 0,
            }),
            vec![position(3)],
            vec![],
        ),
    ])
    .when_message(refund_purchase())
    .then(refused_refund(
        RejectionCode::NotRefundable,
        "purchase p-1 is a resale",
    ));
}

#[test]
fn a_purchase_is_refunded_once() {
    given(refund_running(
        hat_paid(),
        RefundProgress::Refunded {
            refund_id: refund_id("r-0"),
        },
    ))
    .when_message(refund_purchase())
    .then(refused_refund(
        RejectionCode::AlreadyRefunded,
        "purchase p-1 was already refunded",
    ));
}

#[test]
fn a_purchase_with_a_refund_running_is_not_refunded_twice() {
    given(refund_running(hat_paid(), freezing()))
        .when_message(refund_purchase())
        .then(refused_refund(
            RejectionCode::AlreadyRefunded,
            "purchase p-1 was already refunded",
        ));
}

#[test]
fn an_abandoned_refund_may_be_tried_again() {
    given(refund_running(hat_paid(), RefundProgress::Abandoned))
        .when_message(refund_purchase())
        .then(vec![
            refund_progressed(freezing()),
            sent(HOME, 1, freeze_escrow()),
            received(1),
        ]);
}

// ------------------------------------------------------------------ escrow freeze

#[test]
fn the_creators_shard_freezes_held_escrow() {
    given([escrow_held()])
        .when_message(freeze_escrow())
        .then(vec![
            escrow_frozen(),
            sent(PEER, 1, freeze_result(Ok(()))),
            received(1),
        ]);
}

#[test]
fn released_escrow_closes_the_refund_window() {
    given([]).when_message(freeze_escrow()).then(vec![
        sent(
            PEER,
            1,
            freeze_result(Err(rejection(
                RejectionCode::RefundWindowClosed,
                "earnings of purchase p-1 were already released",
            ))),
        ),
        received(1),
    ]);
}

#[test]
fn frozen_escrow_is_not_frozen_twice() {
    given([escrow_held(), escrow_frozen()])
        .when_message(freeze_escrow())
        .then(vec![
            sent(
                PEER,
                1,
                freeze_result(Err(rejection(
                    RejectionCode::RefundWindowClosed,
                    "earnings of purchase p-1 were already released",
                ))),
            ),
            received(1),
        ]);
}

#[test]
fn with_escrow_frozen_an_item_without_serials_is_refunded() {
    given(refund_running(hat_paid(), freezing()))
        .when_message(freeze_result(Ok(())))
        .then(refund_finished(vec![item_id("hat")], vec![]));
}

#[test]
fn with_escrow_frozen_a_limiteds_serial_is_revoked_first() {
    given(refund_running(crown_paid(), freezing()))
        .when_message(freeze_result(Ok(())))
        .then(vec![
            refund_progressed(revoking()),
            sent(HOME, 1, revoke_serial()),
            received(1),
        ]);
}

#[test]
fn a_refused_freeze_abandons_the_refund() {
    let refusal = rejection(
        RejectionCode::RefundWindowClosed,
        "earnings of purchase p-1 were already released",
    );
    given(refund_running(hat_paid(), freezing()))
        .when_message(freeze_result(Err(refusal.clone())))
        .then(vec![
            refund_progressed(RefundProgress::Abandoned),
            sent(PEER, 1, refund_result(Err(refusal))),
            received(1),
        ]);
}

// ------------------------------------------------------------------ serial revocation

#[test]
fn the_items_shard_revokes_the_serial_from_its_buyer() {
    let mut events = vec![published(limited("crown", "carol", 100, 2))];
    events.extend(serial_sold("crown", 1, "p-1", "alice", NOW));
    given(events).when_message(revoke_serial()).then(vec![
        Event::SerialRevoked {
            item_id: item_id("crown"),
            serial: 1,
            purchase_id: purchase_id("p-1"),
            owner_id: user_id("alice"),
        },
        sent(PEER, 1, revoke_answered(Ok(()), 5)),
        received(1),
    ]);
}

#[test]
fn a_serial_resold_since_the_purchase_is_not_revoked() {
    let mut events = vec![published(limited("crown", "carol", 100, 2))];
    events.extend(serial_sold("crown", 1, "p-1", "alice", NOW));
    events.push(Event::ListingCreated {
        listing_id: listing_id("l-1"),
        item_id: item_id("crown"),
        serial: 1,
        seller_id: user_id("alice"),
        price: 150,
    });
    events.push(Event::ListingReserved {
        listing_id: listing_id("l-1"),
        item_id: item_id("crown"),
        purchase_id: purchase_id("p-2"),
    });
    events.push(Event::SerialTransferred {
        item_id: item_id("crown"),
        serial: 1,
        listing_id: listing_id("l-1"),
        purchase_id: purchase_id("p-2"),
        from_user_id: user_id("alice"),
        to_user_id: user_id("bob"),
        price: 150,
        at_ms: NOW,
    });
    given(events).when_message(revoke_serial()).then(vec![
        sent(PEER, 1, revoke_answered(Err(serial_moved_on()), 7)),
        received(1),
    ]);
}

#[test]
fn a_serial_being_bought_from_a_listing_is_not_revoked() {
    let mut events = vec![published(limited("crown", "carol", 100, 2))];
    events.extend(serial_sold("crown", 1, "p-1", "alice", NOW));
    events.push(Event::ListingCreated {
        listing_id: listing_id("l-1"),
        item_id: item_id("crown"),
        serial: 1,
        seller_id: user_id("alice"),
        price: 150,
    });
    events.push(Event::ListingReserved {
        listing_id: listing_id("l-1"),
        item_id: item_id("crown"),
        purchase_id: purchase_id("p-2"),
    });
    given(events).when_message(revoke_serial()).then(vec![
        sent(PEER, 1, revoke_answered(Err(serial_moved_on()), 6)),
        received(1),
    ]);
}

#[test]
fn with_the_serial_revoked_the_refund_goes_through() {
    given(refund_running(crown_paid(), revoking()))
        .when_message(revoke_result(Ok(())))
        .then(refund_finished(vec![], vec![item_shard_position()]));
}

#[test]
fn a_revocation_answered_in_an_older_log_refunds_without_its_position() {
    given(refund_running(crown_paid(), revoking()))
        .when_message(Message::RevokeResult {
            purchase_id: purchase_id("p-1"),
            result: Ok(()),
        })
        .then(refund_finished(vec![], vec![]));
}

#[test]
fn a_refused_revocation_unfreezes_the_escrow_and_abandons_the_refund() {
    given(refund_running(crown_paid(), revoking()))
        .when_message(revoke_result(Err(serial_moved_on())))
        .then(vec![
            refund_progressed(RefundProgress::Abandoned),
            sent(
                HOME,
                1,
                Message::UnfreezeEscrow {
                    purchase_id: purchase_id("p-1"),
                    creator_id: user_id("carol"),
                },
            ),
            sent(PEER, 1, refund_result(Err(serial_moved_on()))),
            received(1),
        ]);
}

// ------------------------------------------------------------------ money back

#[test]
fn unfrozen_escrow_is_released_on_schedule_again() {
    given([escrow_held(), escrow_frozen()])
        .when_message(Message::UnfreezeEscrow {
            purchase_id: purchase_id("p-1"),
            creator_id: user_id("carol"),
        })
        .then(vec![
            Event::EscrowUnfrozen {
                purchase_id: purchase_id("p-1"),
            },
            received(1),
        ]);
}

#[test]
fn reversed_escrow_returns_the_share_and_the_fee_to_clearing() {
    given([escrow_held(), escrow_frozen()])
        .when_message(Message::ReverseEscrow {
            purchase_id: purchase_id("p-1"),
            refund_id: refund_id("r-1"),
            creator_id: user_id("carol"),
        })
        .then(vec![
            Event::EscrowReversed {
                purchase_id: purchase_id("p-1"),
                refund_id: refund_id("r-1"),
                creator_id: user_id("carol"),
                creator_share: 70,
                platform_fee: 30,
                postings: vec![
                    Posting::new(Account::Pending(user_id("carol")), -70),
                    Posting::new(Account::Fees, -30),
                    Posting::new(Account::Clearing, 100),
                ],
            },
            received(1),
        ]);
}

#[test]
fn the_buyer_is_paid_back_and_loses_the_granted_items() {
    given([
        granted("g-0", "alice", 150, 0),
        Event::BuyerDebited {
            purchase_id: purchase_id("p-1"),
            buyer_id: user_id("alice"),
            amount: 100,
            granted_items: vec![item_id("hat")],
            balance_after: 50,
            at_ms: NOW,
            postings: vec![
                Posting::new(Account::Wallet(user_id("alice")), -100),
                Posting::new(Account::Clearing, 100),
            ],
        },
    ])
    .when_message(Message::RefundBuyer {
        purchase_id: purchase_id("p-1"),
        refund_id: refund_id("r-1"),
        buyer_id: user_id("alice"),
        amount: 100,
        revoke_items: vec![item_id("hat")],
    })
    .then(vec![
        Event::BuyerRefunded {
            purchase_id: purchase_id("p-1"),
            refund_id: refund_id("r-1"),
            buyer_id: user_id("alice"),
            amount: 100,
            revoked_items: vec![item_id("hat")],
            balance_after: 150,
            postings: vec![
                Posting::new(Account::Clearing, -100),
                Posting::new(Account::Wallet(user_id("alice")), 100),
            ],
        },
        received(1),
    ]);
}
