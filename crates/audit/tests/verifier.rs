//! The verifier on a real log (the engine's own records for grants,
//! purchases and a refund), clean and then broken in each way it must
//! notice.

use engine::in_memory::InMemoryCluster;
use ledger_audit::{Report, Verifier};
use ledger_core::codec::{BatchRecord, Entry, InputEntries};
use ledger_core::*;

fn user(n: usize) -> UserId {
    UserId::parse(format!("u-{n}")).unwrap()
}

/// Grants, a publication, purchases and a refund on 4 shards.
fn history() -> Vec<BatchRecord> {
    let mut cluster = InMemoryCluster::new(4);
    cluster.record();
    cluster.run((0..20).map(|n| Command::Grant {
        grant_id: GrantId::parse(format!("g-{n}")).unwrap(),
        user_id: user(n),
        amount: 100,
    }));
    cluster.run([Command::PublishItem(ItemDefinition {
        item_id: ItemId::parse("hat").unwrap(),
        creator_id: user(99),
        name: "hat".into(),
        price: 10,
        supply: Some(50),
        max_per_user: None,
        starts_at_ms: None,
        ends_at_ms: None,
        resellable: false,
        kind: Default::default(),
    })]);
    cluster.run((0..20).map(|n| Command::Purchase {
        purchase_id: PurchaseId::parse(format!("p-{n}")).unwrap(),
        buyer_id: user(n),
        target: PurchaseTarget::Item(ItemId::parse("hat").unwrap()),
        expected_price: 10,
        region: None,
    }));
    cluster.run([Command::Refund {
        refund_id: RefundId::parse("r-0").unwrap(),
        purchase_id: PurchaseId::parse("p-0").unwrap(),
    }]);
    cluster.expect_succeeded(42);
    cluster.take_recorded().records
}

fn verify(records: &[BatchRecord]) -> Report {
    let mut verifier = Verifier::new();
    // Shard by shard, as a store reads them.
    let mut sorted: Vec<&BatchRecord> = records.iter().collect();
    sorted.sort_by_key(|record| (record.shard, record.first_sequence));
    for record in sorted {
        verifier.record_bytes(record.shard, record.last_sequence(), &record.to_bytes());
    }
    verifier.finish()
}

/// `record` with every entry passed through `change`, sealed again at the
/// same place in the chain (as someone rewriting history would).
fn resealed(record: &BatchRecord, change: impl Fn(&Entry) -> Entry) -> BatchRecord {
    let inputs: Vec<InputEntries> = record
        .inputs
        .iter()
        .map(|input| InputEntries {
            cause: input.cause.clone(),
            timestamp_ms: input.timestamp_ms,
            entries: input.entries.iter().map(&change).collect(),
        })
        .collect();
    BatchRecord::seal(
        record.shard,
        record.first_sequence,
        record.previous_hash,
        inputs,
    )
}

fn codes(report: &Report) -> Vec<&'static str> {
    report.findings.iter().map(|finding| finding.code).collect()
}

#[test]
fn the_engines_log_verifies_and_its_trial_balance_holds() {
    let records = history();
    let report = verify(&records);
    assert!(report.is_clean(), "{:?}", report.findings);
    assert_eq!(report.shards.len(), 4);
    let trial = &report.trial_balance;
    assert_eq!(trial.granted, 2_000);
    assert_eq!(trial.total, 0);
    // 19 purchases stand (7 of 10 to the creator's escrow, 3 in fees), one refunded.
    assert_eq!(trial.pending, 19 * 7);
    assert_eq!(trial.fees, 19 * 3);
    assert_eq!(trial.wallets, 2_000 - 19 * 10);
    assert_eq!(report.messages_in_flight, 0);
    assert_eq!(report.messages_sent, report.messages_consumed);
    assert_eq!(report.balances[&user(0)], (100, 0));
    assert_eq!(report.balances[&user(1)], (90, 0));
    let entries: u64 = records.iter().map(BatchRecord::len).sum();
    assert_eq!(
        report.shards.iter().map(|shard| shard.entries).sum::<u64>(),
        entries
    );
}

#[test]
fn a_changed_byte_is_a_bad_checksum_at_its_shard_and_sequence() {
    let records = history();
    let target = &records[records.len() / 2];
    let mut verifier = Verifier::new();
    let mut sorted: Vec<&BatchRecord> = records.iter().collect();
    sorted.sort_by_key(|record| (record.shard, record.first_sequence));
    for record in sorted {
        let mut bytes = record.to_bytes();
        if record == target {
            let middle = bytes.len() / 2;
            bytes[middle] ^= 0x01;
        }
        verifier.record_bytes(record.shard, record.last_sequence(), &bytes);
    }
    let report = verifier.finish();
    assert!(!report.is_clean());
    let first = &report.findings[0];
    assert!(
        matches!(first.code, "bad_checksum" | "misfiled_record"),
        "{first:?}"
    );
    assert_eq!(
        (first.shard, first.sequence),
        (target.shard.0, target.last_sequence())
    );
    // The next record of that shard no longer links: reported too.
    assert!(codes(&report).contains(&"chain_gap") || codes(&report).contains(&"chain_link"));
}

#[test]
fn a_missing_record_is_a_gap() {
    let mut records = history();
    let index = records
        .iter()
        .position(|record| record.shard == ShardId(2) && record.first_sequence > 1)
        .unwrap();
    let removed = records.remove(index);
    let report = verify(&records);
    let gap = report
        .findings
        .iter()
        .find(|finding| finding.code == "chain_gap")
        .expect("a gap");
    assert_eq!(gap.shard, 2);
    assert_eq!(gap.sequence, removed.next_sequence());
    assert!(codes(&report).contains(&"chain_link"));
}

/// A record resealed by someone who changed an event: its checksum holds,
/// the chain after it does not, and its postings no longer balance.
#[test]
fn a_rewritten_record_breaks_the_chain_and_its_postings() {
    let mut records = history();
    let index = records
        .iter()
        .position(|record| {
            record
                .logged()
                .any(|logged| matches!(logged.event(), Ok(Event::CurrencyGranted { .. })))
        })
        .unwrap();
    let original = records[index].clone();
    records[index] = resealed(&original, |entry| match entry.event().unwrap() {
        Event::CurrencyGranted {
            grant_id,
            user_id,
            amount,
            balance_after,
            mut postings,
        } => {
            postings[1].amount += 1_000; // money from nowhere
            Entry::from_event(&Event::CurrencyGranted {
                grant_id,
                user_id,
                amount,
                balance_after,
                postings,
            })
        }
        _ => entry.clone(),
    });
    let report = verify(&records);
    let found = codes(&report);
    assert!(found.contains(&"unbalanced_postings"), "{found:?}");
    assert!(found.contains(&"conservation"), "{found:?}");
    let later_on_shard = records.iter().any(|record| {
        record.shard == original.shard && record.first_sequence > original.first_sequence
    });
    if later_on_shard {
        assert!(found.contains(&"chain_link"), "{found:?}");
    }
}

#[test]
fn a_message_consumed_but_never_sent_is_found() {
    let mut records = history();
    // Drop every `Sent` entry of one record that sent messages: its
    // receiver's consumption then has no send (and the chain breaks there).
    let index = records
        .iter()
        .position(|record| {
            record
                .logged()
                .any(|logged| matches!(logged.entry, Entry::Sent { .. }))
        })
        .unwrap();
    let original = records[index].clone();
    records[index] = resealed(&original, |entry| match entry {
        // Same sequence count: the send becomes a received mark of nothing.
        Entry::Sent { to, sequence, .. } => Entry::Received {
            from: *to,
            sequence: 1_000_000 + sequence,
        },
        other => other.clone(),
    });
    let report = verify(&records);
    let found = codes(&report);
    assert!(found.contains(&"message_not_sent"), "{found:?}");
    assert!(found.contains(&"message_out_of_order"), "{found:?}");
}
