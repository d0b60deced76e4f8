//! The exporter on a real log (the engine's own records): grants, an item
//! and a Limited, purchases, a refund and an escrow release. Its rows must
//! add up to what the verifier proves, and the creator's report must tell
//! each sale's fate.

use std::collections::BTreeMap;

use engine::in_memory::InMemoryCluster;
use ledger_audit::export::{Exporter, PostingRow, SaleStatus};
use ledger_audit::Verifier;
use ledger_core::codec::BatchRecord;
use ledger_core::*;

fn user(n: usize) -> UserId {
    UserId::parse(format!("u-{n}")).unwrap()
}

fn item(id: &str, supply: Option<u32>) -> Command {
    Command::PublishItem(ItemDefinition {
        item_id: ItemId::parse(id).unwrap(),
        creator_id: user(99),
        name: id.into(),
        price: 10,
        supply,
        max_per_user: None,
        starts_at_ms: None,
        ends_at_ms: None,
        resellable: false,
        kind: Default::default(),
    })
}

fn purchase(n: usize, item_id: &str) -> Command {
    Command::Purchase {
        purchase_id: PurchaseId::parse(format!("p-{item_id}-{n}")).unwrap(),
        buyer_id: user(n),
        target: PurchaseTarget::Item(ItemId::parse(item_id).unwrap()),
        expected_price: 10,
        region: None,
    }
}

/// Ten hats bought and released, five crowns bought (one refunded), held.
fn history() -> Vec<BatchRecord> {
    let mut cluster = InMemoryCluster::new(4);
    cluster.record();
    cluster.run((0..10).map(|n| Command::Grant {
        grant_id: GrantId::parse(format!("g-{n}")).unwrap(),
        user_id: user(n),
        amount: 100,
    }));
    cluster.run([item("hat", None), item("crown", Some(5))]);
    cluster.run((0..10).map(|n| purchase(n, "hat")));
    cluster.expect_succeeded(22);
    // Past every hat's escrow hold: their shares are released.
    cluster.tick(u64::MAX / 4);
    cluster.run((0..5).map(|n| purchase(n, "crown")));
    cluster.run([Command::Refund {
        refund_id: RefundId::parse("r-0").unwrap(),
        purchase_id: PurchaseId::parse("p-crown-0").unwrap(),
    }]);
    cluster.expect_succeeded(6);
    cluster.take_recorded().records
}

fn by_shard(records: &[BatchRecord]) -> Vec<&BatchRecord> {
    let mut sorted: Vec<&BatchRecord> = records.iter().collect();
    sorted.sort_by_key(|record| (record.shard, record.first_sequence));
    sorted
}

#[test]
fn rows_add_up_to_what_the_verifier_proves() {
    let records = history();
    let mut verifier = Verifier::new();
    let mut exporter = Exporter::new(None);
    let mut rows: Vec<PostingRow> = Vec::new();
    for record in by_shard(&records) {
        verifier.record(record);
        exporter.record(record, &mut |row| rows.push(row));
    }
    let report = verifier.finish();
    assert!(report.is_clean(), "{:?}", report.findings);
    let (manifest, sales) = exporter.finish();
    assert!(sales.is_empty(), "no creator was asked for");

    assert_eq!(manifest.rows, rows.len() as u64);
    assert_eq!(rows.iter().map(|row| row.amount).sum::<i64>(), 0);
    let mut per_event: BTreeMap<&str, i64> = BTreeMap::new();
    for row in &rows {
        *per_event.entry(&row.position).or_default() += row.amount;
    }
    assert!(per_event.values().all(|sum| *sum == 0), "{per_event:?}");

    let mut per_user: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    for row in &rows {
        let balances = per_user.entry(row.user_id.clone()).or_default();
        match row.account {
            "wallet" => balances.0 += row.amount,
            "pending" => balances.1 += row.amount,
            _ => {}
        }
    }
    per_user.remove("");
    let proven: BTreeMap<String, (i64, i64)> = report
        .balances
        .iter()
        .map(|(user, balances)| (user.to_string(), *balances))
        .collect();
    assert_eq!(per_user, proven);
    assert_eq!(manifest.trial_balance, report.trial_balance);
    assert_eq!(manifest.trial_balance.granted, 1_000);
    let heads: Vec<(u16, u64, String)> = manifest
        .shards
        .iter()
        .map(|shard| (shard.shard, shard.last_sequence, shard.head_hash.clone()))
        .collect();
    let proven_heads: Vec<(u16, u64, String)> = report
        .shards
        .iter()
        .map(|shard| (shard.shard, shard.last_sequence, shard.head_hash.clone()))
        .collect();
    assert_eq!(heads, proven_heads);
    assert!(rows.iter().any(|row| row.event_type == "buyer_refunded"
        && row.refund_id == "r-0"
        && row.purchase_id == "p-crown-0"));
    assert!(rows
        .iter()
        .any(|row| row.event_type == "currency_granted" && row.grant_id == "g-3"));
}

#[test]
fn the_creator_report_tells_each_sale_its_fate() {
    let records = history();
    let mut exporter = Exporter::new(Some(user(99)));
    for record in by_shard(&records) {
        exporter.record(record, &mut |_| {});
    }
    let (_, sales) = exporter.finish();
    assert_eq!(sales.len(), 15);
    let status_of = |purchase_id: &str| {
        sales
            .iter()
            .find(|sale| sale.purchase_id == purchase_id)
            .unwrap_or_else(|| panic!("{purchase_id} is in the report"))
    };
    let hat = status_of("p-hat-3");
    assert_eq!(hat.status, SaleStatus::Released);
    assert_eq!(
        (hat.buyer_id.as_str(), hat.item_id.as_str(), hat.price),
        ("u-3", "hat", 10)
    );
    assert_eq!(
        (hat.creator_share, hat.platform_fee, hat.serial),
        (7, 3, None)
    );
    assert_eq!(status_of("p-crown-0").status, SaleStatus::Refunded);
    let crown = status_of("p-crown-2");
    assert_eq!(crown.status, SaleStatus::Held);
    assert!(crown.serial.is_some());
    assert!(crown.release_at_ms > crown.time_ms);
    assert!(
        sales
            .windows(2)
            .all(|pair| pair[0].time_ms <= pair[1].time_ms),
        "sales are in time order"
    );
    let nobody = {
        let mut exporter = Exporter::new(Some(user(1)));
        for record in by_shard(&records) {
            exporter.record(record, &mut |_| {});
        }
        exporter.finish().1
    };
    assert!(nobody.is_empty(), "u-1 created nothing");
}
