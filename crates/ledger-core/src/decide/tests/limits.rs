//! Purchase rate limits (see `crate::limits`): with them on, a purchase's
//! first hop is `AdmitSale` to the buyer's shard (unless that is the
//! purchase's home: then in the same step), which admits it
//! (`PurchaseAdmitted`, then `ReserveSale` on) or refuses it to the home
//! shard (`SaleRateLimited`) before anything is reserved; the home shard
//! answers and forgets it (`CommandWithdrawn`), so the same id sent again
//! is decided afresh. Rejection: rate_limited.

use crate::decide::testing::*;
use crate::decide::{Answer, Decision};
use crate::ids::ShardId;
use crate::limits::PurchaseLimits;
use crate::model::*;
use crate::state::Config;

/// 2 purchases per second, one request per item per 500 ms.
fn limited_config() -> Config {
    let mut config = config();
    config.purchase_limits = PurchaseLimits {
        purchases_per_window: 2,
        purchase_window_ms: 1_000,
        item_request_interval_ms: 500,
    };
    config
}

fn purchase_of(item: &str) -> Command {
    Command::Purchase {
        purchase_id: purchase_id("p-1"),
        buyer_id: user_id("bot"),
        target: PurchaseTarget::Item(item_id(item)),
        expected_price: 100,
        region: None,
    }
}

/// The admission request of a purchase homed on `home`.
fn admit_sale_from(item: &str, at_ms: TimestampMs, home: ShardId) -> Message {
    Message::AdmitSale {
        purchase_id: purchase_id("p-1"),
        buyer_id: user_id("bot"),
        request: SaleRequest::Item(item_id(item)),
        expected_price: 100,
        at_ms,
        home,
    }
}

/// The admission request of a purchase homed on [`PEER`].
fn admit_sale(item: &str, at_ms: TimestampMs) -> Message {
    admit_sale_from(item, at_ms, PEER)
}

/// The reservation request of a purchase homed on `home`, made at [`NOW`].
fn reserve_sale(item: &str, home: ShardId) -> Message {
    Message::ReserveSale {
        purchase_id: purchase_id("p-1"),
        buyer_id: user_id("bot"),
        request: SaleRequest::Item(item_id(item)),
        expected_price: 100,
        at_ms: NOW,
        home,
    }
}

fn admitted(item: &str, at_ms: TimestampMs) -> Event {
    Event::PurchaseAdmitted {
        buyer_id: user_id("bot"),
        subject: keys::item(&item_id(item)),
        at_ms,
        expire_before_ms: at_ms - 2_000,
    }
}

fn rate_limited(detail: &str, retry_after_ms: u64) -> Message {
    Message::SaleRateLimited {
        purchase_id: purchase_id("p-1"),
        rejection: rejection(RejectionCode::RateLimited, detail),
        retry_after_ms,
    }
}

#[test]
fn with_limits_on_a_buyer_homed_on_the_purchases_shard_is_admitted_in_the_same_step() {
    // One shard here: the buyer's shard is the purchase's home, so no
    // `AdmitSale` hop (other buyers get one: see the messages below).
    given_with(limited_config(), [])
        .when_command(purchase_of("hat"))
        .then_answers(
            Answer::OnCompletion("purchase:p-1".into()),
            vec![
                accepted(purchase_of("hat")),
                admitted("hat", NOW),
                sent(HOME, 1, reserve_sale("hat", HOME)),
            ],
        );
}

#[test]
fn a_purchase_refused_on_its_own_shard_is_answered_and_forgotten_in_the_same_step() {
    given_with(limited_config(), [admitted("hat", NOW - 100)])
        .when_command(purchase_of("hat"))
        .then_answers(
            Answer::OnCompletion("purchase:p-1".into()),
            vec![
                accepted(purchase_of("hat")),
                Event::CommandWithdrawn {
                    key: "purchase:p-1".into(),
                    completion: Completion::new(
                        Err(rejection(
                            RejectionCode::RateLimited,
                            "buyer bot already asked for item:hat within the last 500 ms",
                        )),
                        vec![position(3)],
                        Vec::new(),
                    ),
                    retry_after_ms: 400,
                },
            ],
        );
}

#[test]
fn an_admitted_purchase_is_counted_and_sent_on_to_be_reserved() {
    given_with(limited_config(), [])
        .when_message(admit_sale("hat", NOW))
        .then(vec![
            admitted("hat", NOW),
            sent(HOME, 1, reserve_sale("hat", PEER)),
            received(1),
        ]);
}

#[test]
fn a_second_request_for_the_same_item_too_soon_is_refused_before_any_reservation() {
    given_with(limited_config(), [admitted("hat", NOW - 100)])
        .when_message(admit_sale("hat", NOW))
        .then(vec![
            sent(
                PEER,
                1,
                rate_limited(
                    "buyer bot already asked for item:hat within the last 500 ms",
                    400,
                ),
            ),
            received(1),
        ]);
}

#[test]
fn a_buyer_over_the_purchase_cap_is_refused_until_the_oldest_leaves_the_window() {
    given_with(
        limited_config(),
        [admitted("hat", NOW - 900), admitted("scarf", NOW - 200)],
    )
    .when_message(admit_sale("crown", NOW))
    .then(vec![
        sent(
            PEER,
            1,
            rate_limited(
                "buyer bot made 2 purchase requests in the last 1000 ms (limit 2)",
                100,
            ),
        ),
        received(1),
    ]);
}

#[test]
fn admissions_older_than_the_window_no_longer_count() {
    given_with(
        limited_config(),
        [admitted("hat", NOW - 1_500), admitted("scarf", NOW - 1_100)],
    )
    .when_message(admit_sale("hat", NOW))
    .then(vec![
        admitted("hat", NOW),
        sent(HOME, 1, reserve_sale("hat", PEER)),
        received(1),
    ]);
}

#[test]
fn a_rate_limited_purchase_is_answered_then_forgotten_so_a_later_send_is_decided_afresh() {
    let detail = "buyer bot made 2 purchase requests in the last 1000 ms (limit 2)";
    let withdrawn = Event::CommandWithdrawn {
        key: "purchase:p-1".into(),
        completion: Completion::new(
            Err(rejection(RejectionCode::RateLimited, detail)),
            vec![position(2)],
            Vec::new(),
        ),
        retry_after_ms: 700,
    };
    given_with(limited_config(), [accepted(purchase_of("hat"))])
        .when_message(rate_limited(detail, 700))
        .then(vec![withdrawn.clone(), received(1)]);
    // Sent again (even with another item): accepted as new.
    given_with(
        limited_config(),
        [accepted(purchase_of("hat")), withdrawn, received(1)],
    )
    .when_command(purchase_of("scarf"))
    .then_decides(Decision::Apply {
        events: vec![
            accepted(purchase_of("scarf")),
            admitted("scarf", NOW),
            sent(HOME, 1, reserve_sale("scarf", HOME)),
        ],
        answer: Answer::OnCompletion("purchase:p-1".into()),
    });
}

#[test]
fn with_limits_off_a_purchase_goes_straight_to_the_items_shard() {
    let mut config = limited_config();
    config.purchase_limits = PurchaseLimits::default();
    given_with(config, [])
        .when_command(purchase_of("hat"))
        .then_answers(
            Answer::OnCompletion("purchase:p-1".into()),
            vec![
                accepted(purchase_of("hat")),
                sent(HOME, 1, reserve_sale("hat", HOME)),
            ],
        );
}
