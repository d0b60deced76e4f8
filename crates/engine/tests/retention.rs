//! Commands forgotten after the idempotency horizon: state shrinks back, a
//! late retry is refused and never runs twice, refunds still find paid
//! purchases while their escrow is held, and a restored shard (snapshot or
//! log) forgets exactly what the live one forgot.

use std::sync::Arc;

use ledger_core::codec::Snapshot;
use ledger_core::*;
use ledger_engine::in_memory::InMemoryCluster as Cluster;
use ledger_engine::ports::Recovery;
use ledger_engine::shard::{Reply, ShardRunner};

const HORIZON_MS: u64 = 10_000;
const ESCROW_HOLD_MS: u64 = 30_000;
const PRICE: i64 = 10;

fn cluster() -> Cluster {
    let mut config = Config::new(3);
    config.idempotency_horizon_ms = HORIZON_MS;
    config.escrow_hold_ms = ESCROW_HOLD_MS;
    let mut cluster = Cluster::with_config(Arc::new(config));
    // Everything from the start, so that a shard can be restored from its log.
    cluster.record();
    cluster.run([Command::PublishItem(ItemDefinition {
        item_id: ItemId::parse("hat").unwrap(),
        creator_id: UserId::parse("carol").unwrap(),
        name: "hat".into(),
        price: PRICE,
        supply: None,
        max_per_user: None,
        starts_at_ms: None,
        ends_at_ms: None,
        resellable: false,
        kind: Default::default(),
    })]);
    cluster.tick(1_000_000);
    cluster
}

/// A UUIDv7 dated `at_ms`, distinct per `n`.
fn uuid7(at_ms: u64, n: u64) -> String {
    format!(
        "{:08x}-{:04x}-7000-8000-{n:012x}",
        at_ms >> 16,
        at_ms & 0xffff
    )
}

fn grant(id: &str, user: &str, amount: i64) -> Command {
    Command::Grant {
        grant_id: GrantId::parse(id).unwrap(),
        user_id: UserId::parse(user).unwrap(),
        amount,
    }
}

fn purchase(id: &str, buyer: &str) -> Command {
    Command::Purchase {
        purchase_id: PurchaseId::parse(id).unwrap(),
        buyer_id: UserId::parse(buyer).unwrap(),
        target: PurchaseTarget::Item(ItemId::parse("hat").unwrap()),
        expected_price: PRICE,
        region: None,
    }
}

fn refund(id: &str, purchase_id: &str) -> Command {
    Command::Refund {
        refund_id: RefundId::parse(id).unwrap(),
        purchase_id: PurchaseId::parse(purchase_id).unwrap(),
    }
}

fn succeeded(reply: &Reply) -> bool {
    matches!(reply, Reply::Completed(Completion { result: Ok(_), .. }))
}

fn refused_with(reply: &Reply) -> Option<RejectionCode> {
    match reply {
        Reply::Refused(rejection)
        | Reply::Completed(Completion {
            result: Err(rejection),
            ..
        }) => Some(rejection.code),
        Reply::Completed(_) => None,
    }
}

fn remembered(cluster: &Cluster) -> usize {
    cluster
        .runners
        .iter()
        .map(|runner| runner.state.commands.len())
        .sum()
}

fn wallet(cluster: &Cluster, user: &str) -> i64 {
    let user = UserId::parse(user).unwrap();
    cluster
        .state_of(&keys::user(&user))
        .balance(&Account::Wallet(user))
}

#[test]
fn a_retry_after_the_horizon_is_refused_and_never_runs_twice() {
    let mut cluster = cluster();
    let start = cluster.now_ms;
    let grant_id = uuid7(start, 1);
    let plain_grant_id = "grant-plain-1";
    assert!(succeeded(&cluster.answer(grant(&grant_id, "bob", 100))));
    assert!(succeeded(&cluster.answer(grant(plain_grant_id, "bob", 5))));
    let purchase_id = uuid7(start, 2);
    assert!(succeeded(&cluster.answer(purchase(&purchase_id, "bob"))));
    let refused_purchase = uuid7(start, 3);
    let broke = cluster.answer(purchase(&refused_purchase, "nobody"));
    assert_eq!(refused_with(&broke), Some(RejectionCode::InsufficientFunds));
    assert_eq!(wallet(&cluster, "bob"), 95);
    let before = remembered(&cluster);

    // Inside the horizon: retries answer from the stored outcome.
    cluster.tick(start + HORIZON_MS - 1);
    assert_eq!(remembered(&cluster), before);
    assert!(succeeded(&cluster.answer(grant(&grant_id, "bob", 100))));
    assert_eq!(
        refused_with(&cluster.answer(purchase(&refused_purchase, "nobody"))),
        Some(RejectionCode::InsufficientFunds)
    );

    // Past the horizon: grants and refused purchases are forgotten, the paid
    // purchase is kept while its escrow is held.
    cluster.tick(start + HORIZON_MS + 1_000);
    assert_eq!(remembered(&cluster), before - 3);
    for retry in [
        grant(&grant_id, "bob", 100),
        grant(plain_grant_id, "bob", 5),
        purchase(&refused_purchase, "nobody"),
        // A different body under a forgotten id is refused the same way.
        grant(&grant_id, "bob", 7),
    ] {
        assert_eq!(
            refused_with(&cluster.answer(retry)),
            Some(RejectionCode::IdempotencyExpired)
        );
    }
    assert!(succeeded(&cluster.answer(purchase(&purchase_id, "bob"))));
    assert_eq!(wallet(&cluster, "bob"), 95, "no retry ran twice");

    // A UUIDv7 never seen but dated before the horizon is refused too; one
    // dated now runs.
    let now = cluster.now_ms;
    assert_eq!(
        refused_with(&cluster.answer(grant(&uuid7(now - HORIZON_MS - 5_000, 9), "bob", 1))),
        Some(RejectionCode::IdempotencyExpired)
    );
    assert!(succeeded(&cluster.answer(grant(&uuid7(now, 10), "bob", 1))));
    // Dated further ahead than the horizon: refused as invalid.
    assert_eq!(
        refused_with(&cluster.answer(grant(&uuid7(now + 2 * HORIZON_MS, 11), "bob", 1))),
        Some(RejectionCode::ValidationFailed)
    );
    assert_eq!(wallet(&cluster, "bob"), 96);

    // Only the id without a time left something behind: its digest.
    let digests: usize = cluster
        .runners
        .iter()
        .map(|runner| runner.state.retention.forgotten_digests.len())
        .sum();
    assert_eq!(digests, 1);
}

#[test]
fn a_paid_purchase_is_refundable_until_its_escrow_is_released_then_forgotten() {
    let mut cluster = cluster();
    let start = cluster.now_ms;
    assert!(succeeded(&cluster.answer(grant(
        &uuid7(start, 1),
        "bob",
        100
    ))));
    assert!(succeeded(&cluster.answer(grant(
        &uuid7(start, 6),
        "bea",
        100
    ))));
    let kept = uuid7(start, 2);
    let late = uuid7(start, 3);
    assert!(succeeded(&cluster.answer(purchase(&kept, "bob"))));
    assert!(succeeded(&cluster.answer(purchase(&late, "bea"))));
    assert_eq!((wallet(&cluster, "bob"), wallet(&cluster, "bea")), (90, 90));

    // Past the horizon, inside the escrow hold: still refundable.
    cluster.tick(start + HORIZON_MS + 1_000);
    assert!(succeeded(
        &cluster.answer(refund(&uuid7(cluster.now_ms, 4), &kept))
    ));
    assert_eq!(wallet(&cluster, "bob"), 100);

    // Past the escrow hold: the earnings are released and the purchases
    // forgotten; a refund is refused as too late, never paid.
    cluster.tick(start + ESCROW_HOLD_MS + 1_000);
    cluster.tick(start + ESCROW_HOLD_MS + 2_000);
    let purchases_left = cluster
        .runners
        .iter()
        .flat_map(|runner| runner.state.commands.iter())
        .filter(|(key, record)| matches!(record.record(key).command, Command::Purchase { .. }))
        .count();
    assert_eq!(purchases_left, 0);
    let refused = cluster.answer(refund(&uuid7(cluster.now_ms, 5), &late));
    assert_eq!(
        refused_with(&refused),
        Some(RejectionCode::RefundWindowClosed)
    );
    assert_eq!(
        (wallet(&cluster, "bob"), wallet(&cluster, "bea")),
        (100, 90)
    );
    let creator = UserId::parse("carol").unwrap();
    let creator_state = cluster.state_of(&keys::user(&creator));
    assert_eq!(creator_state.balance(&Account::Pending(creator.clone())), 0);
}

#[test]
fn a_restored_shard_forgets_what_the_live_one_forgot() {
    let mut cluster = cluster();
    let start = cluster.now_ms;
    for n in 0..40 {
        let id = if n % 2 == 0 {
            uuid7(start + n, n)
        } else {
            format!("grant-{n}")
        };
        cluster.submit(grant(&id, &format!("user-{}", n % 7), 10));
    }
    cluster.drain();
    cluster.tick(start + HORIZON_MS / 2);
    for n in 0..20 {
        cluster.submit(purchase(
            &uuid7(cluster.now_ms, 100 + n),
            &format!("user-{}", n % 7),
        ));
    }
    cluster.drain();
    cluster.tick(start + HORIZON_MS + 10);
    cluster.tick(start + ESCROW_HOLD_MS + HORIZON_MS);
    let recorded = cluster.take_recorded();
    let forgotten: u32 = recorded
        .records
        .iter()
        .flat_map(|record| record.logged())
        .filter_map(|logged| match logged.event() {
            Ok(Event::CommandsForgotten {
                count, paid_count, ..
            }) => Some(count + paid_count),
            _ => None,
        })
        .sum();
    assert_eq!(forgotten, 60, "every grant and purchase is forgotten");
    for runner in &cluster.runners {
        let shard = runner.shard();
        let records: Vec<_> = recorded
            .records
            .iter()
            .filter(|record| record.shard == shard)
            .cloned()
            .collect();
        // From the log alone.
        let replayed = ShardRunner::<()>::restore(
            shard,
            cluster.config.clone(),
            Recovery {
                snapshot: None,
                records,
            },
        )
        .expect("the log restores");
        assert_eq!(replayed.state, runner.state, "shard {shard}");
        // Through a snapshot's bytes.
        let bytes = runner.snapshot().to_bytes();
        let restored = ShardRunner::<()>::restore(
            shard,
            cluster.config.clone(),
            Recovery {
                snapshot: Some(Snapshot::from_bytes(&bytes).expect("the snapshot decodes")),
                records: Vec::new(),
            },
        )
        .expect("the snapshot restores");
        assert_eq!(restored.state, runner.state, "shard {shard}");
    }
}
