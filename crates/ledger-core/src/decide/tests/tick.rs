//! The clock: a tick releases due escrow to the creators' wallets, in order
//! of release time, skipping frozen escrow, a bounded number at a time.
//! (A tick refuses nothing.)

use crate::decide::testing::*;
use crate::model::*;
use crate::money::{Account, Posting};

fn released(purchase: &str, creator: &str, amount: i64) -> Event {
    Event::EscrowReleased {
        purchase_id: purchase_id(purchase),
        creator_id: user_id(creator),
        amount,
        postings: vec![
            Posting::new(Account::Pending(user_id(creator)), -amount),
            Posting::new(Account::Wallet(user_id(creator)), amount),
        ],
    }
}

/// Escrow of three sales: p-1 (carol) and p-3 (dave) due at `NOW + 1_000`,
/// p-2 (carol) at `NOW + 2_000`.
fn three_sales() -> Vec<Event> {
    vec![
        sale_settled("p-1", "carol", 70, 30, NOW + 1_000),
        sale_settled("p-2", "carol", 35, 15, NOW + 2_000),
        sale_settled("p-3", "dave", 7, 3, NOW + 1_000),
    ]
}

#[test]
fn a_tick_releases_the_escrow_that_is_due() {
    given(three_sales()).when_tick(NOW + 1_000).then(vec![
        released("p-1", "carol", 70),
        released("p-3", "dave", 7),
    ]);
}

#[test]
fn a_tick_releases_nothing_before_it_is_due() {
    given(three_sales()).when_tick(NOW + 999).then(vec![]);
}

#[test]
fn a_tick_skips_frozen_escrow() {
    let mut events = three_sales();
    events.push(Event::EscrowFrozen {
        purchase_id: purchase_id("p-1"),
    });
    given(events).when_tick(NOW + 5_000).then(vec![
        released("p-3", "dave", 7),
        released("p-2", "carol", 35),
    ]);
}

#[test]
fn a_tick_releases_at_most_its_share_in_release_order() {
    let mut config = config();
    config.releases_per_tick_max = 2;
    given_with(config, three_sales())
        .when_tick(NOW + 5_000)
        .then(vec![
            released("p-1", "carol", 70),
            released("p-3", "dave", 7),
        ]);
}

// ------------------------------------------------------------------ forgetting commands

/// Grants `g-1` .. `g-count`, accepted at [`NOW`] and completed (plain ids).
fn completed_grants(count: usize) -> Vec<Event> {
    (1..=count)
        .flat_map(|n| {
            let command = Command::Grant {
                grant_id: grant_id(&format!("g-{n}")),
                user_id: user_id("bob"),
                amount: 10,
            };
            let key = command.idempotency_key().expect("grants are keyed");
            [
                accepted(command),
                completed(
                    &key,
                    Ok(Success::Granted { balance_after: 10 }),
                    vec![],
                    vec![],
                ),
            ]
        })
        .collect()
}

#[test]
fn a_tick_forgets_completed_commands_past_the_horizon_in_one_bounded_event() {
    let mut config = config();
    config.idempotency_horizon_ms = 5_000;
    config.forgets_per_tick_max = 2;
    given_with(config.clone(), completed_grants(3))
        .when_tick(NOW + 5_000)
        .then(vec![]);
    given_with(config, completed_grants(3))
        .when_tick(NOW + 5_001)
        .then(vec![Event::CommandsForgotten {
            before_ms: NOW + 1,
            count: 2,
            // Paid purchases wait for the escrow hold too (shorter here).
            paid_before_ms: NOW + 1,
            paid_count: 0,
        }]);
}

#[test]
fn a_forgotten_id_is_refused_without_running_again() {
    let mut config = config();
    config.idempotency_horizon_ms = 5_000;
    let mut events = completed_grants(1);
    events.push(Event::CommandsForgotten {
        before_ms: NOW + 1,
        count: 1,
        paid_before_ms: NOW + 1,
        paid_count: 0,
    });
    given_with(config, events)
        .when_command(Command::Grant {
            grant_id: grant_id("g-1"),
            user_id: user_id("bob"),
            amount: 10,
        })
        .then_refused(
            RejectionCode::IdempotencyExpired,
            "id g-1 is older than the idempotency horizon: its outcome is no longer kept, and it is not run again",
        );
}
