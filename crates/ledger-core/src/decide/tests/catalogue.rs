//! The catalogue: `PublishItem`, `Reprice`, `SetOnSale` on the item's shard;
//! `CreateBundle` with `DescribeItem` / `ItemDescribed`.
//! Rejections: not_found, forbidden, validation_failed.

use crate::decide::testing::*;
use crate::decide::Answer;
use crate::ids::ItemId;
use crate::model::*;

fn hat() -> ItemDefinition {
    item("hat", "carol", 100)
}

fn reprice(price: i64) -> Command {
    Command::Reprice {
        item_id: item_id("hat"),
        price,
    }
}

fn set_on_sale(on_sale: bool) -> Command {
    Command::SetOnSale {
        item_id: item_id("hat"),
        on_sale,
    }
}

fn updated(price: i64, on_sale: bool, sequence: u64) -> Answer {
    Answer::Now(Completion {
        result: Ok(Success::ItemUpdated { price, on_sale }),
        positions: vec![position(sequence)],
        deliveries: vec![],
        retry_after_ms: None,
    })
}

/// Bundle `pack` of carol: hat, scarf and hat again, for 150.
fn create_bundle() -> Command {
    Command::CreateBundle {
        bundle_id: bundle_id("pack"),
        creator_id: user_id("carol"),
        name: "pack name".into(),
        item_ids: vec![item_id("hat"), item_id("scarf"), item_id("hat")],
        price: 150,
    }
}

fn description(item: &str, creator: &str, limited: bool) -> Result<ItemDescription, ItemId> {
    Ok(ItemDescription {
        item_id: item_id(item),
        creator_id: user_id(creator),
        limited,
    })
}

fn described(answer: Result<ItemDescription, ItemId>) -> Message {
    Message::ItemDescribed {
        bundle_id: bundle_id("pack"),
        answer,
    }
}

/// The bundle accepted (two distinct items) and `first` described.
fn bundle_with_one_answer(first: Result<ItemDescription, ItemId>) -> [Event; 2] {
    [
        accepted(create_bundle()),
        progressed(
            "bundle:pack",
            Progress::Describing {
                answers: vec![first],
                expected: 2,
            },
        ),
    ]
}

/// The bundle is refused with `refusal` once the second answer arrives.
fn bundle_refused(refusal: Rejection) -> Vec<Event> {
    vec![
        completed("bundle:pack", Err(refusal), vec![position(3)], vec![]),
        received(1),
    ]
}

#[test]
fn a_published_item_exists_at_once() {
    let command = Command::PublishItem(hat());
    given([]).when_command(command.clone()).then_answers(
        Answer::OnCompletion("item:hat".into()),
        vec![
            accepted(command),
            published(hat()),
            completed(
                "item:hat",
                Ok(Success::ItemPublished),
                vec![position(2), position(3)],
                vec![],
            ),
        ],
    );
}

#[test]
fn the_creator_reprices_an_item() {
    given([published(hat())])
        .when_command_by(acting_user("carol"), reprice(120))
        .then_answers(
            updated(120, true, 2),
            vec![Event::ItemRepriced {
                item_id: item_id("hat"),
                price: 120,
            }],
        );
}

#[test]
fn another_user_may_not_reprice_an_item() {
    given([published(hat())])
        .when_command_by(acting_user("bob"), reprice(120))
        .then_refused(
            RejectionCode::Forbidden,
            "item hat belongs to another creator",
        );
}

#[test]
fn an_unknown_item_is_not_repriced() {
    given([])
        .when_command(reprice(120))
        .then_refused(RejectionCode::NotFound, "item hat does not exist");
}

#[test]
fn the_service_takes_an_item_off_sale() {
    given([published(hat())])
        .when_command(set_on_sale(false))
        .then_answers(
            updated(100, false, 2),
            vec![Event::ItemSaleToggled {
                item_id: item_id("hat"),
                on_sale: false,
            }],
        );
}

#[test]
fn another_user_may_not_toggle_an_item() {
    given([published(hat())])
        .when_command_by(acting_user("bob"), set_on_sale(false))
        .then_refused(
            RejectionCode::Forbidden,
            "item hat belongs to another creator",
        );
}

#[test]
fn an_unknown_item_is_not_toggled() {
    given([])
        .when_command(set_on_sale(true))
        .then_refused(RejectionCode::NotFound, "item hat does not exist");
}

#[test]
fn a_bundle_asks_each_distinct_item_to_describe_itself() {
    let describe = |item: &str| Message::DescribeItem {
        bundle_id: bundle_id("pack"),
        item_id: item_id(item),
    };
    given([]).when_command(create_bundle()).then_answers(
        Answer::OnCompletion("bundle:pack".into()),
        vec![
            accepted(create_bundle()),
            sent(HOME, 1, describe("hat")),
            sent(HOME, 2, describe("scarf")),
        ],
    );
}

#[test]
fn an_item_describes_itself_to_the_bundle() {
    given([published(limited("crown", "carol", 500, 3))])
        .when_message(Message::DescribeItem {
            bundle_id: bundle_id("pack"),
            item_id: item_id("crown"),
        })
        .then(vec![
            sent(PEER, 1, described(description("crown", "carol", true))),
            received(1),
        ]);
}

#[test]
fn an_unknown_item_answers_with_its_id() {
    given([])
        .when_message(Message::DescribeItem {
            bundle_id: bundle_id("pack"),
            item_id: item_id("hat"),
        })
        .then(vec![
            sent(PEER, 1, described(Err(item_id("hat")))),
            received(1),
        ]);
}

#[test]
fn a_bundle_records_answers_until_every_item_answered() {
    let first = description("hat", "carol", false);
    given([accepted(create_bundle())])
        .when_message(described(first.clone()))
        .then(vec![
            progressed(
                "bundle:pack",
                Progress::Describing {
                    answers: vec![first],
                    expected: 2,
                },
            ),
            received(1),
        ]);
}

#[test]
fn a_bundle_of_the_creators_items_is_created_with_the_last_answer() {
    given(bundle_with_one_answer(description("hat", "carol", false)))
        .when_message(described(description("scarf", "carol", false)))
        .then(vec![
            Event::BundleCreated {
                bundle_id: bundle_id("pack"),
                creator_id: user_id("carol"),
                name: "pack name".into(),
                item_ids: vec![item_id("hat"), item_id("scarf"), item_id("hat")],
                price: 150,
            },
            completed(
                "bundle:pack",
                Ok(Success::BundleCreated),
                vec![position(3), position(4)],
                vec![],
            ),
            received(1),
        ]);
}

#[test]
fn a_bundle_with_another_creators_item_is_refused() {
    given(bundle_with_one_answer(description("hat", "carol", false)))
        .when_message(described(description("scarf", "dave", false)))
        .then(bundle_refused(rejection(
            RejectionCode::ValidationFailed,
            "item scarf is not an item of creator carol",
        )));
}

#[test]
fn a_bundle_with_a_limited_is_refused() {
    given(bundle_with_one_answer(description("hat", "carol", true)))
        .when_message(described(description("scarf", "carol", false)))
        .then(bundle_refused(rejection(
            RejectionCode::ValidationFailed,
            "item hat is a limited and cannot be bundled",
        )));
}

#[test]
fn a_missing_item_wins_over_an_earlier_validation_problem() {
    given(bundle_with_one_answer(description("hat", "dave", false)))
        .when_message(described(Err(item_id("scarf"))))
        .then(bundle_refused(rejection(
            RejectionCode::NotFound,
            "item scarf does not exist",
        )));
}

#[test]
fn the_first_missing_item_is_reported() {
    given(bundle_with_one_answer(Err(item_id("hat"))))
        .when_message(described(Err(item_id("scarf"))))
        .then(bundle_refused(rejection(
            RejectionCode::NotFound,
            "item hat does not exist",
        )));
}
