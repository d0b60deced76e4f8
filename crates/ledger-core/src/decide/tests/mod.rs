//! Given-events / when-input / then-events tests of `decide`, one module per
//! flow (see `testing` for the harness).

mod carts;
mod catalogue;
mod floors;
mod grant;
mod limits;
mod listing;
mod price_tests;
mod purchase;
mod refund;
mod regional;
mod resale;
mod tick;

use super::testing::*;
use super::{Decision, Input};
use crate::model::*;

fn credit_grant() -> Message {
    Message::CreditGrant {
        grant_id: grant_id("g-1"),
        user_id: user_id("alice"),
        amount: 5,
    }
}

#[test]
fn a_message_already_consumed_is_a_duplicate() {
    given([received(1), received(2)])
        .when(Input::Message {
            from: PEER,
            sequence: 2,
            message: credit_grant().into(),
        })
        .then_decides(Decision::Duplicate);
}

#[test]
fn a_message_after_a_gap_is_early() {
    given([received(1)])
        .when(Input::Message {
            from: PEER,
            sequence: 3,
            message: credit_grant().into(),
        })
        .then_decides(Decision::Early);
}

#[test]
fn a_message_is_marked_consumed_after_its_effects() {
    given([received(1)])
        .when(Input::Message {
            from: PEER,
            sequence: 2,
            message: credit_grant().into(),
        })
        .then(vec![
            granted("g-1", "alice", 5, 0),
            sent(
                PEER,
                1,
                Message::GrantCredited {
                    grant_id: grant_id("g-1"),
                    result: Ok(5),
                    position: position(3),
                },
            ),
            received(2),
        ]);
}
