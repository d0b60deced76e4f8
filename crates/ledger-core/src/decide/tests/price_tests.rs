//! Price tests: `StartPriceTest` on the test's shard, `StartTestOnItem` /
//! `TestStartedOnItem` with the item's shard, exposures, sales reported by
//! the purchase's shard, and the end (by command or by the clock) with the
//! winning arm applied on the item's shard.

use crate::decide::testing::*;
use crate::decide::Answer;
use crate::ids::{ExposureBatchId, PriceTestId};
use crate::model::*;
use crate::pricing::{test_arm, ItemKind, PriceRule, SaleTerms};
use crate::ShardId;

const ENDS_AT: TimestampMs = NOW + 60_000;

fn test_id() -> PriceTestId {
    PriceTestId::parse("cap-test").unwrap()
}

fn cap() -> ItemDefinition {
    item("cap", "carol", 100)
}

fn start(arms: Vec<i64>) -> Command {
    Command::StartPriceTest {
        test_id: test_id(),
        item_id: item_id("cap"),
        arms,
        ends_at_ms: ENDS_AT,
        apply_winner: true,
    }
}

fn opened() -> Event {
    Event::PriceTestOpened {
        test_id: test_id(),
        item_id: item_id("cap"),
        arms: vec![80, 120],
        ends_at_ms: ENDS_AT,
        apply_winner: true,
    }
}

fn running() -> Event {
    Event::PriceTestRunning {
        test_id: test_id(),
        creator_id: user_id("carol"),
    }
}

fn start_on_item() -> Message {
    Message::StartTestOnItem {
        test_id: test_id(),
        item_id: item_id("cap"),
        arms: vec![80, 120],
        ends_at_ms: ENDS_AT,
        actor: service(),
        at_ms: NOW,
    }
}

fn started_on_item() -> Event {
    Event::PriceTestStarted {
        test_id: test_id(),
        item_id: item_id("cap"),
        arms: vec![80, 120],
        ends_at_ms: ENDS_AT,
    }
}

#[test]
fn a_test_is_opened_and_its_item_asked_to_price_by_it() {
    given([]).when_command(start(vec![80, 120])).then_answers(
        Answer::OnCompletion("price-test:cap-test".into()),
        vec![
            accepted(start(vec![80, 120])),
            opened(),
            sent(ShardId(0), 1, start_on_item()),
        ],
    );
}

#[test]
fn a_test_needs_two_to_four_arms_and_an_end_within_ninety_days() {
    let key = "price-test:cap-test";
    for (command, detail) in [
        (start(vec![80]), "a price test has 2 to 4 arms, not 1"),
        (
            start(vec![1, 2, 3, 4, 5]),
            "a price test has 2 to 4 arms, not 5",
        ),
        (
            Command::StartPriceTest {
                test_id: test_id(),
                item_id: item_id("cap"),
                arms: vec![80, 120],
                ends_at_ms: NOW,
                apply_winner: false,
            },
            "a price test must end after it starts and within 90 days",
        ),
    ] {
        given([]).when_command(command.clone()).then_answers(
            Answer::OnCompletion(key.into()),
            vec![
                accepted(command),
                completed(
                    key,
                    Err(rejection(RejectionCode::ValidationFailed, detail)),
                    vec![position(2)],
                    vec![],
                ),
            ],
        );
    }
}

#[test]
fn the_item_prices_by_the_test_and_answers_with_its_creator() {
    given([published(cap())])
        .when_message(start_on_item())
        .then(vec![
            started_on_item(),
            sent(
                PEER,
                1,
                Message::TestStartedOnItem {
                    test_id: test_id(),
                    result: Ok(user_id("carol")),
                    position: position(3),
                },
            ),
            received(1),
        ]);
}

#[test]
fn a_limited_another_creators_item_or_a_second_test_is_refused_on_the_item() {
    let refused = |events: Vec<Event>, actor: Actor, code: RejectionCode, detail: &str| {
        let sequence = events.len() as u64 + 1;
        given(events)
            .when_message(Message::StartTestOnItem {
                test_id: test_id(),
                item_id: item_id("cap"),
                arms: vec![80, 120],
                ends_at_ms: ENDS_AT,
                actor,
                at_ms: NOW,
            })
            .then(vec![
                sent(
                    PEER,
                    1,
                    Message::TestStartedOnItem {
                        test_id: test_id(),
                        result: Err(rejection(code, detail)),
                        position: position(sequence),
                    },
                ),
                received(1),
            ]);
    };
    refused(
        vec![published(limited("cap", "carol", 100, 5))],
        service(),
        RejectionCode::ValidationFailed,
        "item cap is a limited: its serials sell at one price and are not tested",
    );
    refused(
        vec![published(cap())],
        acting_user("mallory"),
        RejectionCode::Forbidden,
        "item cap belongs to another creator",
    );
    refused(
        vec![
            published(cap()),
            Event::PriceTestStarted {
                test_id: PriceTestId::parse("earlier").unwrap(),
                item_id: item_id("cap"),
                arms: vec![1, 2],
                ends_at_ms: ENDS_AT,
            },
        ],
        service(),
        RejectionCode::ValidationFailed,
        "item cap is already in price test earlier",
    );
    refused(
        vec![
            Event::PriceFloorSet {
                kind: ItemKind::Accessory,
                version: 1,
                price: 90,
                effective_from_ms: 0,
            },
            published(item("cap", "carol", 100)),
        ],
        service(),
        RejectionCode::BelowPriceFloor,
        "item cap would cost 80, under the floor of 90 for accessory (version 1)",
    );
}

#[test]
fn the_test_runs_once_its_item_prices_by_it() {
    let peer_at = ShardPosition {
        shard: PEER,
        sequence: 5,
    };
    given([accepted(start(vec![80, 120])), opened()])
        .when_message(Message::TestStartedOnItem {
            test_id: test_id(),
            result: Ok(user_id("carol")),
            position: peer_at,
        })
        .then(vec![
            running(),
            completed(
                "price-test:cap-test",
                Ok(Success::PriceTestStarted),
                vec![position(4), peer_at],
                vec![],
            ),
            received(1),
        ]);
}

#[test]
fn a_test_its_item_refused_is_forgotten() {
    let refusal = rejection(RejectionCode::NotFound, "item cap does not exist");
    given([accepted(start(vec![80, 120])), opened()])
        .when_message(Message::TestStartedOnItem {
            test_id: test_id(),
            result: Err(refusal.clone()),
            position: ShardPosition {
                shard: PEER,
                sequence: 1,
            },
        })
        .then(vec![
            Event::PriceTestAborted { test_id: test_id() },
            completed(
                "price-test:cap-test",
                Err(refusal),
                vec![position(4)],
                vec![],
            ),
            received(1),
        ]);
}

#[test]
fn a_buyer_is_reserved_at_the_price_of_their_arm() {
    let arm = test_arm(&test_id(), &user_id("alice"), 2);
    let price = [80, 120][arm];
    given([published(cap()), started_on_item()])
        .when_message(Message::ReserveSale {
            purchase_id: purchase_id("p-1"),
            buyer_id: user_id("alice"),
            request: SaleRequest::Item(item_id("cap")),
            expected_price: price,
            at_ms: NOW,
            home: PEER,
        })
        .then(vec![
            sent(
                HOME,
                1,
                Message::ChargeBuyer {
                    purchase_id: purchase_id("p-1"),
                    buyer_id: user_id("alice"),
                    reservation: Reservation {
                        price,
                        creator_id: user_id("carol"),
                        sale: SaleKind::Item {
                            item_id: item_id("cap"),
                            serial: None,
                        },
                        terms: Some(SaleTerms {
                            rule: PriceRule::TestArm {
                                test_id: test_id(),
                                arm: arm as u8,
                            },
                            kind: ItemKind::Accessory,
                            floor: None,
                            fee_policy_version: 1,
                        }),
                    },
                    at_ms: NOW,
                    home: PEER,
                },
            ),
            received(1),
        ]);
}

#[test]
fn exposures_add_up_per_arm_and_a_wrong_count_is_refused() {
    let batch = |id: &str, counts: Vec<u64>| Command::RecordExposures {
        test_id: test_id(),
        batch_id: ExposureBatchId::parse(id).unwrap(),
        counts,
    };
    let first = Event::PriceTestExposed {
        test_id: test_id(),
        batch: vec![10, 5],
        exposures: vec![10, 5],
    };
    given([opened(), running(), first])
        .when_command(batch("b-2", vec![3, 4]))
        .then_answers(
            Answer::OnCompletion("exposures:cap-test:b-2".into()),
            vec![
                accepted(batch("b-2", vec![3, 4])),
                Event::PriceTestExposed {
                    test_id: test_id(),
                    batch: vec![3, 4],
                    exposures: vec![13, 9],
                },
                completed(
                    "exposures:cap-test:b-2",
                    Ok(Success::ExposuresRecorded {
                        exposures: vec![13, 9],
                    }),
                    vec![position(5), position(6)],
                    vec![],
                ),
            ],
        );
    given([opened(), running()])
        .when_command(batch("b-3", vec![1, 2, 3]))
        .then_answers(
            Answer::OnCompletion("exposures:cap-test:b-3".into()),
            vec![
                accepted(batch("b-3", vec![1, 2, 3])),
                completed(
                    "exposures:cap-test:b-3",
                    Err(rejection(
                        RejectionCode::ValidationFailed,
                        "batch b-3 must count each of the 2 arms of price test cap-test at most \
                         1000000000 times",
                    )),
                    vec![position(4)],
                    vec![],
                ),
            ],
        );
}

#[test]
fn a_sale_at_an_arm_adds_to_its_totals() {
    given([opened(), running()])
        .when_message(Message::PriceTestSale {
            test_id: test_id(),
            purchase_id: purchase_id("p-1"),
            arm: 1,
            price: 120,
        })
        .then(vec![
            Event::PriceTestSold {
                test_id: test_id(),
                purchase_id: purchase_id("p-1"),
                arm: 1,
                price: 120,
                purchases: 1,
                revenue: 120,
            },
            received(1),
        ]);
}

/// Arm 1 earns 120 over 10 exposures, arm 0 80 over 20: arm 1 leads.
fn counted() -> Vec<Event> {
    vec![
        opened(),
        running(),
        Event::PriceTestExposed {
            test_id: test_id(),
            batch: vec![20, 10],
            exposures: vec![20, 10],
        },
        Event::PriceTestSold {
            test_id: test_id(),
            purchase_id: purchase_id("p-1"),
            arm: 0,
            price: 80,
            purchases: 1,
            revenue: 80,
        },
        Event::PriceTestSold {
            test_id: test_id(),
            purchase_id: purchase_id("p-2"),
            arm: 1,
            price: 120,
            purchases: 1,
            revenue: 120,
        },
    ]
}

fn ended_events(at_ms: TimestampMs) -> Vec<Event> {
    vec![
        Event::PriceTestEnded {
            test_id: test_id(),
            winner: Some(1),
            applied_price: Some(120),
        },
        sent(
            ShardId(0),
            1,
            Message::CloseTestOnItem {
                test_id: test_id(),
                item_id: item_id("cap"),
                apply_price: Some(120),
                at_ms,
            },
        ),
    ]
}

#[test]
fn the_creator_ends_a_test_and_the_arm_earning_most_per_exposure_wins() {
    given(counted())
        .when_command_by(
            acting_user("carol"),
            Command::EndPriceTest { test_id: test_id() },
        )
        .then_answers(
            Answer::Now(Completion::new(
                Ok(Success::PriceTestEnded {
                    winner: Some(1),
                    applied_price: Some(120),
                }),
                vec![position(6)],
                vec![delivery(ShardId(0), 1)],
            )),
            ended_events(NOW),
        );
    given(counted())
        .when_command_by(
            acting_user("mallory"),
            Command::EndPriceTest { test_id: test_id() },
        )
        .then_refused(
            RejectionCode::Forbidden,
            "price test cap-test belongs to another creator",
        );
}

#[test]
fn the_clock_ends_a_test_at_its_end_time() {
    given(counted()).when_tick(ENDS_AT - 1).then(vec![]);
    given(counted())
        .when_tick(ENDS_AT)
        .then(ended_events(ENDS_AT));
}

#[test]
fn the_item_takes_the_winning_price_unless_it_is_under_the_floor() {
    given([published(cap()), started_on_item()])
        .when_message(Message::CloseTestOnItem {
            test_id: test_id(),
            item_id: item_id("cap"),
            apply_price: Some(120),
            at_ms: ENDS_AT,
        })
        .then(vec![
            Event::PriceTestClosed {
                test_id: test_id(),
                item_id: item_id("cap"),
                applied_price: Some(120),
            },
            Event::ItemRepriced {
                item_id: item_id("cap"),
                price: 120,
            },
            received(1),
        ]);
    given([
        published(cap()),
        started_on_item(),
        Event::PriceFloorSet {
            kind: ItemKind::Accessory,
            version: 1,
            price: 150,
            effective_from_ms: 0,
        },
    ])
    .when_message(Message::CloseTestOnItem {
        test_id: test_id(),
        item_id: item_id("cap"),
        apply_price: Some(120),
        at_ms: ENDS_AT,
    })
    .then(vec![
        Event::PriceTestClosed {
            test_id: test_id(),
            item_id: item_id("cap"),
            applied_price: None,
        },
        received(1),
    ]);
}
