//! A takedown of an item with 5,000 sales, half of them past escrow, on the
//! unchanged shard runners (every message delivered in memory): every
//! escrowed buyer is refunded exactly once, released sales are untouched,
//! money is conserved, the creator's pending total drops by exactly the
//! reversed shares, and a second takedown answers as the first.

use std::collections::BTreeMap;

use ledger_core::takedown::TakedownTally;
use ledger_core::*;
use ledger_engine::in_memory::InMemoryCluster;
use ledger_engine::shard::Reply;

const SHARDS: u16 = 4;
const SALES: usize = 5_000;
const PRICE: i64 = 100;
const ESCROW_HOLD_MS: u64 = 10_000;

fn user(name: &str) -> UserId {
    UserId::parse(name).unwrap()
}

fn buyer(n: usize) -> UserId {
    user(&format!("b-{n}"))
}

fn purchase(n: usize) -> PurchaseId {
    PurchaseId::parse(format!("p-{n}")).unwrap()
}

fn item() -> ItemId {
    ItemId::parse("hat").unwrap()
}

fn creator() -> UserId {
    user("carol")
}

fn cluster() -> InMemoryCluster {
    let mut config = Config::new(SHARDS);
    config.escrow_hold_ms = ESCROW_HOLD_MS;
    let mut cluster = InMemoryCluster::with_config(std::sync::Arc::new(config));
    cluster.run((0..SALES).map(|n| Command::Grant {
        grant_id: GrantId::parse(format!("g-{n}")).unwrap(),
        user_id: buyer(n),
        amount: 1_000,
    }));
    cluster.run([Command::PublishItem(ItemDefinition {
        item_id: item(),
        creator_id: creator(),
        name: "hat".into(),
        price: PRICE,
        supply: None,
        max_per_user: None,
        resellable: false,
        starts_at_ms: None,
        ends_at_ms: None,
        kind: ItemKind::Accessory,
    })]);
    cluster.expect_succeeded(SALES + 1);
    cluster
}

fn buy(cluster: &mut InMemoryCluster, range: std::ops::Range<usize>) {
    cluster.run(range.map(|n| Command::Purchase {
        purchase_id: purchase(n),
        buyer_id: buyer(n),
        target: PurchaseTarget::Item(item()),
        expected_price: PRICE,
        region: None,
    }));
}

/// Every account's balance, summed over every shard.
fn balances(cluster: &InMemoryCluster) -> BTreeMap<Account, i64> {
    let mut total = BTreeMap::new();
    for runner in &cluster.runners {
        for (account, amount) in &runner.state.balances {
            *total.entry(account.clone()).or_insert(0) += amount;
        }
    }
    total
}

fn takedown() -> Command {
    Command::TakeDown { item_id: item() }
}

#[test]
fn a_takedown_refunds_every_escrowed_sale_once_and_leaves_the_released_ones() {
    let mut cluster = cluster();
    // The first half is bought, then released from escrow by the clock; the
    // second half is bought after and is still in escrow.
    let half = SALES / 2;
    buy(&mut cluster, 0..half);
    cluster.tick(cluster.now_ms + ESCROW_HOLD_MS + 1);
    buy(&mut cluster, half..SALES);
    cluster.expect_succeeded(SALES);
    let before = balances(&cluster);
    let pending_before = before[&Account::Pending(creator())];
    let share = pending_before / half as i64;
    assert_eq!(
        pending_before,
        share * half as i64,
        "one share per sale in escrow"
    );

    // Only an admin takes an item down.
    let refused = cluster.answer_as(takedown(), Role::Service);
    assert!(
        matches!(&refused, Reply::Refused(rejection) if rejection.code == RejectionCode::Forbidden),
        "{refused:?}"
    );
    let first = cluster.answer_as(takedown(), Role::Admin);
    let Reply::Completed(Completion {
        result: Ok(Success::TakenDown { shard_count, .. }),
        ..
    }) = &first
    else {
        panic!("the takedown is answered: {first:?}");
    };
    assert_eq!(*shard_count, SHARDS);

    let after = balances(&cluster);
    // Conservation: every account sums to zero over the ledger, and the
    // clearing account is empty once everything settled.
    assert_eq!(after.values().sum::<i64>(), 0);
    assert_eq!(after.get(&Account::Clearing).copied().unwrap_or(0), 0);
    // The creator's pending total drops by exactly the reversed shares.
    assert_eq!(
        after
            .get(&Account::Pending(creator()))
            .copied()
            .unwrap_or(0),
        0
    );
    let available = |balances: &BTreeMap<Account, i64>| {
        balances
            .get(&Account::Wallet(creator()))
            .copied()
            .unwrap_or(0)
    };
    assert_eq!(
        available(&after),
        available(&before),
        "released earnings stay"
    );
    for n in 0..SALES {
        let wallet = after[&Account::Wallet(buyer(n))];
        let expected = if n < half { 1_000 - PRICE } else { 1_000 };
        assert_eq!(wallet, expected, "buyer {n}");
        let owns = cluster
            .state_of(&keys::user(&buyer(n)))
            .owned_items
            .owns(&buyer(n), &item());
        assert_eq!(
            owns,
            n < half,
            "buyer {n} keeps the item only if not refunded"
        );
    }
    // The takedown's shard holds every shard's tally.
    let progress = &cluster.state_of(&keys::takedown(&item())).takedowns.homed[&item()];
    assert_eq!(progress.shards_reported, SHARDS);
    assert_eq!(
        progress.tally,
        TakedownTally {
            refunded: half as u32,
            refunded_amount: PRICE * half as i64,
            already_refunded: 0,
            left: half as u32,
        }
    );
    for runner in &cluster.runners {
        assert!(
            runner.state.takedowns.scans.is_empty(),
            "every scan finished"
        );
        assert!(
            runner.state.takedowns.refunds.is_empty(),
            "every refund ended"
        );
    }

    // A second takedown answers as the first, and changes nothing.
    assert_eq!(cluster.answer_as(takedown(), Role::Admin), first);
    assert_eq!(balances(&cluster), after);
    // The item is off sale for good: a purchase and a sale toggle are refused.
    let late = cluster.answer(Command::Purchase {
        purchase_id: purchase(SALES),
        buyer_id: buyer(0),
        target: PurchaseTarget::Item(item()),
        expected_price: PRICE,
        region: None,
    });
    assert!(
        matches!(&late, Reply::Completed(Completion { result: Err(rejection), .. })
            if rejection.code == RejectionCode::ItemTakenDown),
        "{late:?}"
    );
    let toggle = cluster.answer(Command::SetOnSale {
        item_id: item(),
        on_sale: true,
    });
    assert!(
        matches!(&toggle, Reply::Refused(rejection) if rejection.code == RejectionCode::ItemTakenDown),
        "{toggle:?}"
    );
}

#[test]
fn purchases_in_flight_at_the_takedown_are_refunded_once_paid() {
    let mut cluster = cluster();
    // Purchases accepted on their shards but not yet reserved or paid when
    // the takedown is decided: each is refunded once paid, or never paid.
    for n in 0..SALES / 4 {
        cluster.submit(Command::Purchase {
            purchase_id: purchase(n),
            buyer_id: buyer(n),
            target: PurchaseTarget::Item(item()),
            expected_price: PRICE,
            region: None,
        });
    }
    cluster.submit_as(takedown(), Role::Admin);
    // The buyers' shards answer late: every purchase is reserved and paid
    // for, but its home shard learns it only after the takedown's scans.
    cluster
        .drain_holding_back(|envelope| matches!(*envelope.message, Message::PurchasePaid { .. }));
    let after = balances(&cluster);
    assert_eq!(after.values().sum::<i64>(), 0);
    assert_eq!(after.get(&Account::Clearing).copied().unwrap_or(0), 0);
    assert_eq!(
        after
            .get(&Account::Pending(creator()))
            .copied()
            .unwrap_or(0),
        0
    );
    assert_eq!(after.get(&Account::Fees).copied().unwrap_or(0), 0);
    for n in 0..SALES / 4 {
        assert_eq!(
            after[&Account::Wallet(buyer(n))],
            1_000,
            "buyer {n} paid nothing in the end"
        );
    }
    let progress = &cluster.state_of(&keys::takedown(&item())).takedowns.homed[&item()];
    assert_eq!(progress.shards_reported, SHARDS);
    assert_eq!(
        progress.tally,
        TakedownTally {
            refunded: (SALES / 4) as u32,
            refunded_amount: PRICE * (SALES / 4) as i64,
            already_refunded: 0,
            left: 0,
        }
    );
    for runner in &cluster.runners {
        assert!(
            runner.state.takedowns.scans.is_empty(),
            "every scan finished"
        );
    }
}

#[test]
fn a_cart_line_recorded_after_the_scans_is_refunded_and_reported_late() {
    let mut cluster = cluster();
    let other = ItemId::parse("scarf").unwrap();
    cluster.run([Command::PublishItem(ItemDefinition {
        item_id: other.clone(),
        creator_id: user("dora"),
        name: "scarf".into(),
        price: 30,
        supply: None,
        max_per_user: None,
        resellable: false,
        starts_at_ms: None,
        ends_at_ms: None,
        kind: ItemKind::Accessory,
    })]);
    cluster.expect_succeeded(1);
    // Carts holding the item are reserved and paid for, but their lines
    // reach their own shards only after every takedown scan finished.
    let carts = 40;
    for n in 0..carts {
        cluster.submit(Command::PurchaseCart {
            purchase_id: purchase(n),
            buyer_id: buyer(n),
            lines: vec![
                CartLine {
                    target: PurchaseTarget::Item(item()),
                    expected_price: PRICE,
                },
                CartLine {
                    target: PurchaseTarget::Item(other.clone()),
                    expected_price: 30,
                },
            ],
            region: None,
        });
    }
    cluster.submit_as(takedown(), Role::Admin);
    cluster
        .drain_holding_back(|envelope| matches!(*envelope.message, Message::RecordCartLine { .. }));
    let after = balances(&cluster);
    assert_eq!(after.values().sum::<i64>(), 0);
    assert_eq!(after.get(&Account::Clearing).copied().unwrap_or(0), 0);
    // Every line of the item was refunded; the other lines stand.
    assert_eq!(
        after
            .get(&Account::Pending(creator()))
            .copied()
            .unwrap_or(0),
        0
    );
    for n in 0..carts {
        assert_eq!(after[&Account::Wallet(buyer(n))], 1_000 - 30, "buyer {n}");
    }
    let progress = &cluster.state_of(&keys::takedown(&item())).takedowns.homed[&item()];
    assert_eq!(
        progress.shards_reported, SHARDS,
        "late reports count no shard twice"
    );
    assert_eq!(
        progress.tally,
        TakedownTally {
            refunded: carts as u32,
            refunded_amount: PRICE * carts as i64,
            already_refunded: 0,
            left: 0,
        }
    );
    for runner in &cluster.runners {
        assert!(
            runner.state.takedowns.scans.is_empty(),
            "every scan finished"
        );
    }
}

#[test]
fn a_refund_running_when_the_takedown_comes_is_awaited_until_it_ends() {
    let mut cluster = cluster();
    let sales = 200;
    buy(&mut cluster, 0..sales);
    cluster.expect_succeeded(sales);
    // Escrow is released; then support tries to refund some purchases, and
    // their escrow freezes reach the creator's shard only after the
    // takedown's scans found those refunds running: the takedown waits for
    // them, then finds the purchases past escrow too.
    cluster.tick(cluster.now_ms + ESCROW_HOLD_MS + 1);
    let tried_by_support = 50;
    for n in 0..tried_by_support {
        cluster.submit_as(
            Command::Refund {
                refund_id: RefundId::parse(format!("support-{n}")).unwrap(),
                purchase_id: purchase(n),
            },
            Role::Admin,
        );
    }
    cluster.submit_as(takedown(), Role::Admin);
    cluster.drain_holding_back(|envelope| {
        matches!(&*envelope.message, Message::FreezeEscrow { purchase_id, .. }
            if purchase_id.as_str().strip_prefix("p-").and_then(|n| n.parse::<usize>().ok())
                .is_some_and(|n| n < tried_by_support))
    });
    let after = balances(&cluster);
    assert_eq!(after.values().sum::<i64>(), 0);
    assert_eq!(after.get(&Account::Clearing).copied().unwrap_or(0), 0);
    for n in 0..sales {
        assert_eq!(
            after[&Account::Wallet(buyer(n))],
            1_000 - PRICE,
            "buyer {n} keeps the item"
        );
    }
    let progress = &cluster.state_of(&keys::takedown(&item())).takedowns.homed[&item()];
    assert_eq!(progress.shards_reported, SHARDS);
    // Not counted as refunded: the running refunds were given up.
    assert_eq!(
        progress.tally,
        TakedownTally {
            refunded: 0,
            refunded_amount: 0,
            already_refunded: 0,
            left: sales as u32,
        }
    );
}
