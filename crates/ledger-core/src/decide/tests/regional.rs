//! Regional prices: `SetRegionalPrices` on the item's shard (each at least
//! 30 % of the base price), purchases carrying the buyer's region, reserved
//! at the regional price and recorded with their rule.

use crate::decide::testing::*;
use crate::decide::Answer;
use crate::model::*;
use crate::pricing::{ItemKind, PriceRule, Region, SaleTerms};
use crate::ShardId;

fn region(code: &str) -> Region {
    Region::parse(code).unwrap()
}

fn hat() -> ItemDefinition {
    item("hat", "carol", 100)
}

fn set_prices(prices: &[(&str, i64)]) -> Command {
    Command::SetRegionalPrices {
        item_id: item_id("hat"),
        prices: prices
            .iter()
            .map(|(code, price)| (region(code), *price))
            .collect(),
    }
}

fn prices_set(prices: &[(&str, i64)]) -> Event {
    Event::RegionalPricesSet {
        item_id: item_id("hat"),
        prices: prices
            .iter()
            .map(|(code, price)| (region(code), *price))
            .collect(),
    }
}

fn reserve_in(region_code: Option<&str>, expected_price: i64) -> Message {
    Message::ReserveSale {
        purchase_id: purchase_id("p-1"),
        buyer_id: user_id("alice"),
        request: match region_code {
            Some(code) => SaleRequest::ItemInRegion {
                item_id: item_id("hat"),
                region: region(code),
            },
            None => SaleRequest::Item(item_id("hat")),
        },
        expected_price,
        at_ms: NOW,
        home: PEER,
    }
}

fn charge(reservation: Reservation) -> Message {
    Message::ChargeBuyer {
        purchase_id: purchase_id("p-1"),
        buyer_id: user_id("alice"),
        reservation,
        at_ms: NOW,
        home: PEER,
    }
}

fn hat_reservation(price: i64, terms: Option<SaleTerms>) -> Reservation {
    Reservation {
        price,
        creator_id: user_id("carol"),
        sale: SaleKind::Item {
            item_id: item_id("hat"),
            serial: None,
        },
        terms,
    }
}

#[test]
fn the_creator_sets_regional_prices_in_region_order() {
    given([published(hat())])
        .when_command_by(acting_user("carol"), set_prices(&[("IN", 30), ("BR", 45)]))
        .then_answers(
            Answer::Now(Completion::new(
                Ok(Success::RegionalPricesSet {
                    price: 100,
                    prices: vec![(region("BR"), 45), (region("IN"), 30)],
                }),
                vec![position(2)],
                vec![],
            )),
            vec![prices_set(&[("BR", 45), ("IN", 30)])],
        );
}

#[test]
fn a_regional_price_under_thirty_percent_or_priced_twice_is_refused() {
    given([published(hat())])
        .when_command(set_prices(&[("BR", 29)]))
        .then_refused(
            RejectionCode::ValidationFailed,
            "the price of item hat in BR must be from 30 (30% of 100) to 1000000000000, not 29",
        );
    given([published(hat())])
        .when_command(set_prices(&[("BR", 40), ("BR", 50)]))
        .then_refused(RejectionCode::ValidationFailed, "region BR is priced twice");
    given([published(hat())])
        .when_command_by(acting_user("bob"), set_prices(&[("BR", 40)]))
        .then_refused(
            RejectionCode::Forbidden,
            "item hat belongs to another creator",
        );
}

#[test]
fn a_reprice_that_would_leave_a_regional_price_under_thirty_percent_is_refused() {
    given([published(hat()), prices_set(&[("BR", 40)])])
        .when_command(Command::Reprice {
            item_id: item_id("hat"),
            price: 134,
        })
        .then_refused(
            RejectionCode::ValidationFailed,
            "item hat costs 40 in BR, under 30% of 134: set its regional prices first",
        );
    given([published(hat()), prices_set(&[("BR", 40)])])
        .when_command(Command::Reprice {
            item_id: item_id("hat"),
            price: 133,
        })
        .then_answers(
            Answer::Now(Completion::new(
                Ok(Success::ItemUpdated {
                    price: 133,
                    on_sale: true,
                }),
                vec![position(3)],
                vec![],
            )),
            vec![Event::ItemRepriced {
                item_id: item_id("hat"),
                price: 133,
            }],
        );
}

#[test]
fn a_buyer_in_a_priced_region_is_reserved_at_the_regional_price_with_its_rule() {
    let terms = SaleTerms {
        rule: PriceRule::Region(region("BR")),
        kind: ItemKind::Accessory,
        floor: None,
        fee_policy_version: 1,
    };
    given([published(hat()), prices_set(&[("BR", 40)])])
        .when_message(reserve_in(Some("BR"), 40))
        .then(vec![
            sent(HOME, 1, charge(hat_reservation(40, Some(terms)))),
            received(1),
        ]);
}

#[test]
fn a_buyer_elsewhere_pays_the_base_price_and_a_wrong_expectation_names_the_region() {
    given([published(hat()), prices_set(&[("BR", 40)])])
        .when_message(reserve_in(Some("DE"), 100))
        .then(vec![
            sent(HOME, 1, charge(hat_reservation(100, None))),
            received(1),
        ]);
    given([published(hat()), prices_set(&[("BR", 40)])])
        .when_message(reserve_in(Some("BR"), 100))
        .then(vec![
            sent(
                PEER,
                1,
                Message::Reserved {
                    purchase_id: purchase_id("p-1"),
                    result: Err(rejection(
                        RejectionCode::PriceChanged,
                        "item hat costs 40 in BR, not 100",
                    )),
                },
            ),
            received(1),
        ]);
}

#[test]
fn clearing_the_regional_prices_restores_the_base_price_everywhere() {
    given([published(hat()), prices_set(&[("BR", 40)]), prices_set(&[])])
        .when_message(reserve_in(Some("BR"), 100))
        .then(vec![
            sent(HOME, 1, charge(hat_reservation(100, None))),
            received(1),
        ]);
}

#[test]
fn a_purchase_in_a_region_asks_for_the_item_in_that_region() {
    let command = Command::Purchase {
        purchase_id: purchase_id("p-1"),
        buyer_id: user_id("alice"),
        target: PurchaseTarget::Item(item_id("hat")),
        expected_price: 40,
        region: Some(region("BR")),
    };
    given([]).when_command(command.clone()).then_answers(
        Answer::OnCompletion("purchase:p-1".into()),
        vec![
            accepted(command),
            sent(
                ShardId(0),
                1,
                Message::ReserveSale {
                    purchase_id: purchase_id("p-1"),
                    buyer_id: user_id("alice"),
                    request: SaleRequest::ItemInRegion {
                        item_id: item_id("hat"),
                        region: region("BR"),
                    },
                    expected_price: 40,
                    at_ms: NOW,
                    home: HOME,
                },
            ),
        ],
    );
}

#[test]
fn a_purchase_without_a_region_is_stored_as_before_regions_existed() {
    #[derive(bincode::Encode)]
    enum Before {
        _Grant,
        _PublishItem,
        _Reprice,
        _SetOnSale,
        _CreateBundle,
        Purchase {
            purchase_id: crate::ids::PurchaseId,
            buyer_id: crate::ids::UserId,
            target: PurchaseTarget,
            expected_price: i64,
        },
    }
    let plain = Command::Purchase {
        purchase_id: purchase_id("p-1"),
        buyer_id: user_id("alice"),
        target: PurchaseTarget::Item(item_id("hat")),
        expected_price: 40,
        region: None,
    };
    let before = Before::Purchase {
        purchase_id: purchase_id("p-1"),
        buyer_id: user_id("alice"),
        target: PurchaseTarget::Item(item_id("hat")),
        expected_price: 40,
    };
    assert_eq!(crate::codec::encode(&plain), crate::codec::encode(&before));
    let in_region = match plain.clone() {
        Command::Purchase {
            purchase_id,
            buyer_id,
            target,
            expected_price,
            ..
        } => Command::Purchase {
            purchase_id,
            buyer_id,
            target,
            expected_price,
            region: Some(region("BR")),
        },
        _ => unreachable!(),
    };
    for command in [&plain, &in_region] {
        let decoded: Command =
            crate::codec::decode("command", &crate::codec::encode(command)).unwrap();
        assert_eq!(&decoded, command);
    }
    assert_ne!(
        crate::codec::fingerprint(&plain),
        crate::codec::fingerprint(&in_region),
        "the region is part of the request"
    );
}
