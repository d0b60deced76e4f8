//! The public stream on a real log (the engine's own records): grants,
//! items, a bundle, purchases, a resale, a cancelled listing, a refund and
//! escrow releases. Whatever order the shards' records arrive in, the
//! stream publishes each business event once, in causal order; its money
//! adds up to the balances the log proves; and a stream resumed from a
//! checkpoint at any point publishes exactly what is left.

use std::collections::{BTreeMap, BTreeSet};

use engine::in_memory::InMemoryCluster;
use ledger_audit_free::*;
use ledger_core::codec::BatchRecord;
use ledger_core::*;
use ledger_public_events::types::{PublicData, PurchaseCompleted, ResaleCompleted};
use ledger_public_events::{PublicEvent, PublicStream, ShardCheckpoint, StreamError};

/// Helpers without the audit crate: balances straight from postings.
mod ledger_audit_free {
    use std::collections::BTreeMap;

    use ledger_core::codec::BatchRecord;
    use ledger_core::Account;

    /// Wallet and pending per user, summed from every posting of the log.
    pub fn proven_balances(records: &[BatchRecord]) -> BTreeMap<String, (i64, i64)> {
        let mut balances: BTreeMap<String, (i64, i64)> = BTreeMap::new();
        for record in records {
            for logged in record.logged() {
                let event = logged.event().expect("the engine's events decode");
                for posting in event.postings() {
                    match &posting.account {
                        Account::Wallet(user) => {
                            balances.entry(user.to_string()).or_default().0 += posting.amount
                        }
                        Account::Pending(user) => {
                            balances.entry(user.to_string()).or_default().1 += posting.amount
                        }
                        _ => {}
                    }
                }
            }
        }
        balances
    }
}

fn user(n: usize) -> UserId {
    UserId::parse(format!("u-{n}")).unwrap()
}

fn creator() -> UserId {
    UserId::parse("creator").unwrap()
}

fn item(id: &str, price: i64, supply: Option<u32>) -> Command {
    Command::PublishItem(ItemDefinition {
        item_id: ItemId::parse(id).unwrap(),
        creator_id: creator(),
        name: id.into(),
        price,
        supply,
        max_per_user: None,
        starts_at_ms: None,
        ends_at_ms: None,
        resellable: true,
        kind: Default::default(),
    })
}

fn purchase(id: &str, buyer: usize, target: PurchaseTarget, price: i64) -> Command {
    Command::Purchase {
        purchase_id: PurchaseId::parse(id).unwrap(),
        buyer_id: user(buyer),
        target,
        expected_price: price,
        region: None,
    }
}

fn hat() -> PurchaseTarget {
    PurchaseTarget::Item(ItemId::parse("hat").unwrap())
}

fn crown() -> PurchaseTarget {
    PurchaseTarget::Item(ItemId::parse("crown").unwrap())
}

/// The history, and how many purchases (primary and resale) completed.
fn history() -> (Vec<BatchRecord>, usize) {
    let mut cluster = InMemoryCluster::new(4);
    cluster.record();
    cluster.run((0..8).map(|n| Command::Grant {
        grant_id: GrantId::parse(format!("g-{n}")).unwrap(),
        user_id: user(n),
        amount: 1_000,
    }));
    cluster.run([
        item("hat", 10, None),
        item("crown", 100, Some(3)),
        item("scarf", 7, None),
    ]);
    cluster.expect_succeeded(11);
    cluster.run([Command::CreateBundle {
        bundle_id: BundleId::parse("outfit").unwrap(),
        creator_id: creator(),
        name: "Outfit".into(),
        item_ids: vec![
            ItemId::parse("hat").unwrap(),
            ItemId::parse("scarf").unwrap(),
        ],
        price: 15,
    }]);
    cluster.expect_succeeded(1);
    cluster.run((0..5).map(|n| purchase(&format!("p-hat-{n}"), n, hat(), 10)));
    cluster.run((0..3).map(|n| purchase(&format!("p-crown-{n}"), n, crown(), 100)));
    cluster.run([purchase(
        "p-outfit-6",
        6,
        PurchaseTarget::Bundle(BundleId::parse("outfit").unwrap()),
        15,
    )]);
    cluster.expect_succeeded(9);
    // Escrow of everything so far released.
    cluster.tick(u64::MAX / 4);
    cluster.run([Command::CreateListing {
        listing_id: ListingId::parse("l-1").unwrap(),
        seller_id: user(1),
        item_id: ItemId::parse("crown").unwrap(),
        serial: 2,
        price: 90,
    }]);
    cluster.run([Command::CreateListing {
        listing_id: ListingId::parse("l-2").unwrap(),
        seller_id: user(2),
        item_id: ItemId::parse("crown").unwrap(),
        serial: 3,
        price: 95,
    }]);
    cluster.expect_succeeded(2);
    cluster.run([
        Command::ResalePurchase {
            purchase_id: PurchaseId::parse("p-resale-5").unwrap(),
            buyer_id: user(5),
            listing_id: ListingId::parse("l-1").unwrap(),
            expected_price: 90,
        },
        Command::CancelListing {
            listing_id: ListingId::parse("l-2").unwrap(),
        },
    ]);
    cluster.expect_succeeded(2);
    cluster.run([purchase("p-hat-7", 7, hat(), 10)]);
    cluster.run([Command::Refund {
        refund_id: RefundId::parse("r-1").unwrap(),
        purchase_id: PurchaseId::parse("p-hat-7").unwrap(),
    }]);
    cluster.expect_succeeded(2);
    // Refused: sold out, and already owned.
    cluster.run([
        purchase("p-crown-7", 7, crown(), 100),
        purchase("p-hat-0-again", 0, hat(), 10),
    ]);
    // 5 hats, 3 crowns, 1 bundle, 1 resale, 1 more hat (refunded).
    (cluster.take_recorded().records, 11)
}

/// Each shard's records, in sequence order.
fn per_shard(records: &[BatchRecord]) -> BTreeMap<ShardId, Vec<BatchRecord>> {
    let mut shards: BTreeMap<ShardId, Vec<BatchRecord>> = BTreeMap::new();
    for record in records {
        shards.entry(record.shard).or_default().push(record.clone());
    }
    for records in shards.values_mut() {
        records.sort_by_key(|record| record.first_sequence);
    }
    shards
}

/// A fixed shuffle of the shards' records: each shard's in order, the
/// shards interleaved as `pick` says.
fn interleaved(
    shards: &BTreeMap<ShardId, Vec<BatchRecord>>,
    mut pick: impl FnMut(usize) -> usize,
) -> Vec<(i64, BatchRecord)> {
    let mut next: BTreeMap<ShardId, usize> = shards.keys().map(|shard| (*shard, 0)).collect();
    let mut out = Vec::new();
    loop {
        let open: Vec<ShardId> = shards
            .iter()
            .filter(|(shard, records)| next[*shard] < records.len())
            .map(|(shard, _)| *shard)
            .collect();
        if open.is_empty() {
            return out;
        }
        let shard = open[pick(open.len()) % open.len()];
        let index = next[&shard];
        out.push((index as i64, shards[&shard][index].clone()));
        *next.get_mut(&shard).unwrap() += 1;
    }
}

/// A small deterministic generator.
fn lcg(seed: u64) -> impl FnMut(usize) -> usize {
    let mut state = seed;
    move |_| {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (state >> 33) as usize
    }
}

fn stream_all(reads: &[(i64, BatchRecord)]) -> Vec<PublicEvent> {
    let mut stream = PublicStream::new("/ledger");
    let mut out = Vec::new();
    for (position, record) in reads {
        stream.push(*position, record.clone()).unwrap();
        out.extend(stream.drain().unwrap());
    }
    assert_eq!(stream.waiting(), 0, "every record was published");
    out
}

fn purchase_of(event: &PublicEvent) -> Option<&str> {
    match &event.data {
        PublicData::PurchaseCompleted(PurchaseCompleted { purchase_id, .. })
        | PublicData::ResaleCompleted(ResaleCompleted { purchase_id, .. }) => Some(purchase_id),
        _ => None,
    }
}

/// Checks what every ordering must give.
fn check(events: &[PublicEvent], records: &[BatchRecord], purchases: usize) {
    let ids: BTreeSet<&str> = events.iter().map(|event| event.id.as_str()).collect();
    assert_eq!(ids.len(), events.len(), "ce_id is unique");

    let completed: Vec<&str> = events.iter().filter_map(purchase_of).collect();
    assert_eq!(completed.len(), purchases, "{completed:?}");

    let mut summed: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    for event in events {
        let (wallet, pending) = event.data.account_changes();
        for change in wallet {
            summed.entry(change.user_id.clone()).or_default().0 += change.amount;
        }
        for change in pending {
            summed.entry(change.user_id.clone()).or_default().1 += change.amount;
        }
    }
    summed.retain(|_, sums| *sums != (0, 0));
    let mut proven = proven_balances(records);
    proven.retain(|_, sums| *sums != (0, 0));
    assert_eq!(summed, proven, "the stream's money adds up to the log's");

    // Causal order: a purchase before its refund and its escrow's release,
    // a grant before the purchases it paid for.
    let at = |predicate: &dyn Fn(&PublicEvent) -> bool| {
        events
            .iter()
            .position(predicate)
            .expect("the event is published")
    };
    let completed_hat_7 = at(&|event| purchase_of(event) == Some("p-hat-7"));
    let refunded_hat_7 = at(
        &|event| matches!(&event.data, PublicData::PurchaseRefunded(data) if data.purchase_id == "p-hat-7"),
    );
    assert!(completed_hat_7 < refunded_hat_7);
    let completed_hat_0 = at(&|event| purchase_of(event) == Some("p-hat-0"));
    let released_hat_0 = at(
        &|event| matches!(&event.data, PublicData::EscrowReleased(data) if data.purchase_id == "p-hat-0"),
    );
    assert!(completed_hat_0 < released_hat_0);
    let granted_0 = at(
        &|event| matches!(&event.data, PublicData::CurrencyGranted(data) if data.grant_id == "g-0"),
    );
    assert!(granted_0 < completed_hat_0);
    let published_crown = at(
        &|event| matches!(&event.data, PublicData::ItemPublished(data) if data.item_id == "crown"),
    );
    let listed = at(
        &|event| matches!(&event.data, PublicData::ListingCreated(data) if data.listing_id == "l-1"),
    );
    let resold = at(&|event| purchase_of(event) == Some("p-resale-5"));
    assert!(published_crown < listed && listed < resold);
}

#[test]
fn every_order_of_the_shards_gives_the_same_events_in_causal_order() {
    let (records, purchases) = history();
    let shards = per_shard(&records);
    // Shard by shard (the worst order for causality), then random mixes.
    let shard_major: Vec<(i64, BatchRecord)> = shards
        .values()
        .flat_map(|records| {
            records
                .iter()
                .enumerate()
                .map(|(index, record)| (index as i64, record.clone()))
        })
        .collect();
    let reference = stream_all(&shard_major);
    check(&reference, &records, purchases);
    let reference_set: BTreeSet<String> =
        reference.iter().map(|event| format!("{event:?}")).collect();
    for seed in 1..20 {
        let events = stream_all(&interleaved(&shards, lcg(seed)));
        check(&events, &records, purchases);
        let set: BTreeSet<String> = events.iter().map(|event| format!("{event:?}")).collect();
        assert_eq!(set, reference_set, "seed {seed}");
    }
}

#[test]
fn business_events_carry_the_split_the_serial_and_the_fee_policy() {
    let (records, _) = history();
    let events = stream_all(&interleaved(&per_shard(&records), lcg(7)));
    let crown_0 = events
        .iter()
        .find_map(|event| match &event.data {
            PublicData::PurchaseCompleted(data) if data.purchase_id == "p-crown-0" => Some(data),
            _ => None,
        })
        .expect("the crown purchase is published");
    assert_eq!(crown_0.buyer_id, "u-0");
    assert_eq!(crown_0.item_id.as_deref(), Some("crown"));
    assert_eq!(crown_0.serial, Some(1));
    assert_eq!(crown_0.price, 100);
    assert_eq!((crown_0.creator_share, crown_0.platform_fee), (70, 30));
    assert_eq!(crown_0.fee_policy_version, 1);
    assert_eq!(crown_0.creator_id, "creator");
    let resale = events
        .iter()
        .find_map(|event| match &event.data {
            PublicData::ResaleCompleted(data) => Some((event, data)),
            _ => None,
        })
        .expect("the resale is published");
    assert_eq!(resale.0.subject, "user:u-5");
    assert_eq!(resale.1.listing_id, "l-1");
    assert_eq!((resale.1.seller_id.as_str(), resale.1.serial), ("u-1", 2));
    assert_eq!(
        (
            resale.1.seller_share,
            resale.1.creator_royalty,
            resale.1.platform_fee
        ),
        (63, 9, 18)
    );
    let bundle = events
        .iter()
        .find_map(|event| match &event.data {
            PublicData::PurchaseCompleted(data) if data.bundle_id.is_some() => Some(data),
            _ => None,
        })
        .expect("the bundle purchase is published");
    assert_eq!(bundle.granted_items, ["hat", "scarf"]);
    assert!(events.iter().any(|event| matches!(
        &event.data,
        PublicData::ListingCancelled(data) if data.listing_id == "l-2"
    )));
    // Headers and the structured form agree.
    let event = &events[0];
    let headers: BTreeMap<&str, String> = event.headers().into_iter().collect();
    assert_eq!(headers["ce_id"], event.id);
    assert_eq!(headers["ce_subject"], event.subject);
    assert_eq!(headers["ce_type"], event.structured().event_type);
    assert!(headers["ce_type"].starts_with("ledger.") && headers["ce_type"].ends_with(".v1"));
    assert_eq!(headers["ce_recordhash"].len(), 64);
    assert!(headers["ce_time"].ends_with('Z'));
}

#[test]
fn a_stream_resumed_from_any_checkpoint_publishes_exactly_the_rest() {
    let (records, purchases) = history();
    let shards = per_shard(&records);
    for seed in 1..12 {
        let reads = interleaved(&shards, lcg(seed));
        let reference = stream_all(&reads);
        for cut in [1, reads.len() / 5, reads.len() / 2, reads.len() - 3] {
            // The first life: reads up to `cut`, then a crash after its
            // checkpoint was stored with what it published.
            let mut first = PublicStream::new("/ledger");
            let mut published = Vec::new();
            for (position, record) in &reads[..cut] {
                first.push(*position, record.clone()).unwrap();
                published.extend(first.drain().unwrap());
            }
            let stored: BTreeMap<ShardId, (i64, String)> = first
                .shards()
                .into_iter()
                .filter_map(|shard| {
                    first
                        .checkpoint(shard)
                        .map(|(resume, checkpoint)| (shard, (resume, checkpoint.to_metadata())))
                })
                .collect();
            // The second life reads each shard again from its stored position.
            let mut second = PublicStream::new("/ledger");
            for (shard, (_, metadata)) in &stored {
                second.resume(*shard, ShardCheckpoint::from_metadata(metadata).unwrap());
            }
            for (position, record) in &reads {
                let from = stored.get(&record.shard).map(|(resume, _)| *resume);
                if from.is_some_and(|from| *position < from) {
                    continue;
                }
                second.push(*position, record.clone()).unwrap();
                published.extend(second.drain().unwrap());
            }
            check(&published, &records, purchases);
            let ids: Vec<&str> = published.iter().map(|event| event.id.as_str()).collect();
            let mut expected: Vec<&str> = reference.iter().map(|event| event.id.as_str()).collect();
            let mut got = ids.clone();
            expected.sort_unstable();
            got.sort_unstable();
            assert_eq!(got, expected, "seed {seed}, cut {cut}");
        }
    }
}

#[test]
fn checkpoints_round_trip_and_bad_ones_are_refused() {
    let checkpoint = ShardCheckpoint {
        published_through: 42,
        sent: [(0, 3), (7, 19)].into_iter().collect(),
    };
    let metadata = checkpoint.to_metadata();
    assert_eq!(metadata, "pub1 p=42 s=0:3,7:19");
    assert_eq!(
        ShardCheckpoint::from_metadata(&metadata).unwrap(),
        checkpoint
    );
    assert_eq!(
        ShardCheckpoint::from_metadata("").unwrap(),
        ShardCheckpoint::default()
    );
    assert_eq!(
        ShardCheckpoint::from_metadata(&ShardCheckpoint::default().to_metadata()).unwrap(),
        ShardCheckpoint::default()
    );
    for bad in [
        "pub2 p=1 s=",
        "pub1 p=x s=",
        "pub1 s=",
        "pub1 p=1 s=3",
        "pub1 p=1 s= x",
    ] {
        assert!(
            matches!(
                ShardCheckpoint::from_metadata(bad),
                Err(StreamError::BadCheckpoint { .. })
            ),
            "{bad}"
        );
    }
}

#[test]
fn a_gap_in_a_shards_records_is_refused_and_a_copy_ignored() {
    let (records, _) = history();
    let shards = per_shard(&records);
    let (shard, records) = shards
        .iter()
        .find(|(_, records)| records.len() >= 3)
        .unwrap();
    let mut stream = PublicStream::new("/ledger");
    stream.push(0, records[0].clone()).unwrap();
    stream.push(0, records[0].clone()).unwrap();
    assert_eq!(
        stream.push(2, records[2].clone()),
        Err(StreamError::SequenceGap {
            shard: *shard,
            expected: records[1].first_sequence,
            found: records[2].first_sequence,
        })
    );
}
