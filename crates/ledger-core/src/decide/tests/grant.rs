//! Grants: `Grant` on the grant's shard, `CreditGrant` on the user's shard,
//! `GrantCredited` back. Rejections: idempotency_conflict, validation_failed.

use crate::decide::testing::*;
use crate::decide::Answer;
use crate::model::*;

fn grant(amount: i64) -> Command {
    Command::Grant {
        grant_id: grant_id("g-1"),
        user_id: user_id("alice"),
        amount,
    }
}

fn credit_grant(amount: i64) -> Message {
    Message::CreditGrant {
        grant_id: grant_id("g-1"),
        user_id: user_id("alice"),
        amount,
    }
}

fn peer_position(sequence: u64) -> ShardPosition {
    ShardPosition {
        shard: PEER,
        sequence,
    }
}

#[test]
fn a_grant_asks_the_users_shard_for_the_credit() {
    given([]).when_command(grant(50)).then_answers(
        Answer::OnCompletion("grant:g-1".into()),
        vec![accepted(grant(50)), sent(HOME, 1, credit_grant(50))],
    );
}

#[test]
fn a_repeated_grant_waits_for_the_first() {
    given([accepted(grant(50))])
        .when_command(grant(50))
        .then_answers(Answer::OnCompletion("grant:g-1".into()), vec![]);
}

#[test]
fn a_grant_id_used_with_another_amount_is_refused() {
    given([accepted(grant(50))])
        .when_command(grant(51))
        .then_refused(
            RejectionCode::IdempotencyConflict,
            "grant:g-1 was already used with a different request",
        );
}

#[test]
fn the_users_shard_credits_the_wallet_and_reports_the_balance() {
    given([granted("g-0", "alice", 30, 0)])
        .when_message(credit_grant(50))
        .then(vec![
            granted("g-1", "alice", 50, 30),
            sent(
                PEER,
                1,
                Message::GrantCredited {
                    grant_id: grant_id("g-1"),
                    result: Ok(80),
                    position: position(3),
                },
            ),
            received(1),
        ]);
}

#[test]
fn a_credit_that_would_overflow_the_balance_is_refused() {
    given([granted("g-0", "alice", i64::MAX / 4, 0)])
        .when_message(credit_grant(1))
        .then(vec![
            sent(
                PEER,
                1,
                Message::GrantCredited {
                    grant_id: grant_id("g-1"),
                    result: Err(rejection(
                        RejectionCode::ValidationFailed,
                        "balance of alice would overflow",
                    )),
                    position: position(2),
                },
            ),
            received(1),
        ]);
}

#[test]
fn a_credited_grant_completes_with_the_balance() {
    given([accepted(grant(50))])
        .when_message(Message::GrantCredited {
            grant_id: grant_id("g-1"),
            result: Ok(80),
            position: peer_position(9),
        })
        .then(vec![
            completed(
                "grant:g-1",
                Ok(Success::Granted { balance_after: 80 }),
                vec![position(2), peer_position(9)],
                vec![],
            ),
            received(1),
        ]);
}

#[test]
fn a_refused_credit_completes_the_grant_with_the_refusal() {
    let refusal = rejection(
        RejectionCode::ValidationFailed,
        "balance of alice would overflow",
    );
    given([accepted(grant(50))])
        .when_message(Message::GrantCredited {
            grant_id: grant_id("g-1"),
            result: Err(refusal.clone()),
            position: peer_position(4),
        })
        .then(vec![
            completed(
                "grant:g-1",
                Err(refusal),
                vec![position(2), peer_position(4)],
                vec![],
            ),
            received(1),
        ]);
}
