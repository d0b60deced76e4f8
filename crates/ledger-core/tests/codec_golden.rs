//! Golden-byte fixtures guard the stored format: an event written today must
//! decode the same way forever. `UPDATE_GOLDEN=1` rewrites the fixtures
//! (only when a format change is intended, with a new schema version).

use ledger_core::codec::legacy::{CompletionV1, ItemPublishedV1, COMMAND_COMPLETED_VARIANT};
use ledger_core::codec::{Envelope, GENESIS_HASH};
use ledger_core::*;

mod common;
use common::{fixture, hex, unhex};

fn sample_events() -> Vec<Event> {
    let alice = UserId::parse("alice").unwrap();
    let creator = UserId::parse("creator-1").unwrap();
    let item = ItemId::parse("hat-1").unwrap();
    let purchase = PurchaseId::parse("p-1").unwrap();
    vec![
        Event::CurrencyGranted {
            grant_id: GrantId::parse("g-1").unwrap(),
            user_id: alice.clone(),
            amount: 500,
            balance_after: 500,
            postings: vec![
                Posting::new(Account::Issuance, -500),
                Posting::new(Account::Wallet(alice.clone()), 500),
            ],
        },
        Event::ItemPublished {
            definition: ItemDefinition {
                item_id: item.clone(),
                creator_id: creator.clone(),
                name: "Red Hat".into(),
                price: 100,
                supply: Some(10),
                max_per_user: Some(2),
                starts_at_ms: None,
                ends_at_ms: Some(1_900_000_000_000),
                resellable: true,
                kind: Default::default(),
            },
        },
        Event::BuyerDebited {
            purchase_id: purchase.clone(),
            buyer_id: alice.clone(),
            amount: 100,
            granted_items: vec![],
            balance_after: 400,
            at_ms: 1_800_000_000_000,
            postings: vec![
                Posting::new(Account::Wallet(alice.clone()), -100),
                Posting::new(Account::Clearing, 100),
            ],
        },
        Event::SaleSettled {
            purchase_id: purchase.clone(),
            creator_id: creator.clone(),
            resale: false,
            cleared: 100,
            creator_share: 70,
            platform_fee: 30,
            policy_version: 1,
            release_at_ms: 1_802_592_000_000,
            postings: vec![
                Posting::new(Account::Clearing, -100),
                Posting::new(Account::Pending(creator.clone()), 70),
                Posting::new(Account::Fees, 30),
            ],
        },
        Event::SerialSold {
            item_id: item,
            serial: 1,
            purchase_id: purchase,
            buyer_id: alice,
            at_ms: 1_800_000_000_000,
        },
        Event::CommandCompleted {
            key: "purchase:p-1".into(),
            completion: Completion {
                result: Ok(Success::Purchased {
                    target: PurchaseTarget::Item(ItemId::parse("hat-1").unwrap()),
                    price: 100,
                    serial: Some(1),
                    granted_items: vec![],
                    balance_after: 400,
                }),
                positions: vec![ShardPosition {
                    shard: ShardId(3),
                    sequence: 6,
                }],
                deliveries: vec![DeliveryMark {
                    from: ShardId(3),
                    to: ShardId(1),
                    sequence: 2,
                }],
                retry_after_ms: None,
            },
        },
    ]
}

fn sealed_chain() -> Vec<Envelope> {
    let mut previous = GENESIS_HASH;
    sample_events()
        .iter()
        .enumerate()
        .map(|(index, event)| {
            let envelope = Envelope::seal(
                event,
                ShardId(3),
                index as u64 + 1,
                "command:purchase:p-1",
                1_800_000_000_000,
                previous,
            );
            previous = envelope.hash;
            envelope
        })
        .collect()
}

#[test]
fn current_events_match_their_golden_bytes() {
    for (index, envelope) in sealed_chain().iter().enumerate() {
        let name = format!(
            "event-{}-{}-v{}.hex",
            index + 1,
            envelope.event_type,
            envelope.schema_version
        );
        let bytes = envelope.to_bytes();
        let path = fixture(&name);
        if std::env::var("UPDATE_GOLDEN").is_ok() {
            std::fs::write(&path, hex(&bytes)).unwrap();
        }
        let golden = unhex(
            &std::fs::read_to_string(&path).unwrap_or_else(|_| panic!("fixture {name} exists")),
        );
        assert_eq!(
            bytes, golden,
            "{name}: encoding changed; bump the schema version and add an upcaster"
        );
        let decoded = Envelope::from_bytes(&golden).unwrap();
        assert_eq!(decoded.event().unwrap(), sample_events()[index]);
    }
}

#[test]
fn item_published_version_1_is_upcast() {
    let path = fixture("legacy-item_published-v1.hex");
    if std::env::var("UPDATE_GOLDEN").is_ok() {
        let v1 = ItemPublishedV1 {
            item_id: ItemId::parse("old-hat").unwrap(),
            creator_id: UserId::parse("creator-0").unwrap(),
            name: "Old Hat".into(),
            price: 25,
            supply: Some(3),
            starts_at_ms: None,
            ends_at_ms: None,
        };
        let mut envelope = Envelope::seal(
            &sample_events()[1],
            ShardId(0),
            1,
            "command:item:old-hat",
            1_700_000_000_000,
            GENESIS_HASH,
        );
        envelope.schema_version = 1;
        envelope.payload = ledger_core::codec::encode(&v1);
        // Re-seal by hand: the hash covers the legacy payload.
        let resealed = Envelope::from_bytes(&envelope.to_bytes());
        assert!(resealed.is_err(), "tampered envelope is refused");
        let fixed = envelope.reseal();
        std::fs::write(&path, hex(&fixed.to_bytes())).unwrap();
    }
    let bytes = unhex(&std::fs::read_to_string(&path).expect("legacy fixture exists"));
    let envelope =
        Envelope::from_bytes(&bytes).expect("legacy envelope decodes and its hash holds");
    assert_eq!(envelope.schema_version, 1);
    let Event::ItemPublished { definition } = envelope.event().unwrap() else {
        panic!("upcast to item_published")
    };
    assert_eq!(definition.item_id.as_str(), "old-hat");
    assert_eq!(definition.supply, Some(3));
    assert_eq!(definition.max_per_user, None);
    assert!(
        !definition.resellable,
        "version 1 items were not resellable"
    );
}

#[test]
fn a_changed_byte_breaks_the_hash() {
    let envelope = &sealed_chain()[0];
    let mut bytes = envelope.to_bytes();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    assert!(Envelope::from_bytes(&bytes).is_err());
}

#[test]
fn the_chain_links_each_event_to_the_previous() {
    let chain = sealed_chain();
    for pair in chain.windows(2) {
        assert_eq!(pair[1].previous_hash, pair[0].hash);
    }
}

#[test]
fn command_completed_version_1_is_upcast() {
    let path = fixture("legacy-command_completed-v1.hex");
    if std::env::var("UPDATE_GOLDEN").is_ok() {
        let v1 = CompletionV1 {
            result: Ok(Success::Granted { balance_after: 500 }),
            positions: vec![ShardPosition {
                shard: ShardId(2),
                sequence: 9,
            }],
        };
        let mut payload = COMMAND_COMPLETED_VARIANT.to_le_bytes().to_vec();
        payload.extend(ledger_core::codec::encode(&("grant:g-1".to_string(), v1)));
        let completed = Event::CommandCompleted {
            key: "grant:g-1".into(),
            completion: Completion {
                result: Ok(Success::Granted { balance_after: 500 }),
                positions: vec![],
                deliveries: vec![],
                retry_after_ms: None,
            },
        };
        let mut envelope = Envelope::seal(
            &completed,
            ShardId(2),
            10,
            "message:1:4",
            1_700_000_000_000,
            GENESIS_HASH,
        );
        envelope.schema_version = 1;
        envelope.payload = payload;
        std::fs::write(&path, hex(&envelope.reseal().to_bytes())).unwrap();
    }
    let bytes = unhex(&std::fs::read_to_string(&path).expect("legacy fixture exists"));
    let envelope =
        Envelope::from_bytes(&bytes).expect("legacy envelope decodes and its hash holds");
    assert_eq!(envelope.schema_version, 1);
    let Event::CommandCompleted { key, completion } = envelope.event().unwrap() else {
        panic!("upcast to command_completed")
    };
    assert_eq!(key, "grant:g-1");
    assert_eq!(
        completion.result,
        Ok(Success::Granted { balance_after: 500 })
    );
    assert_eq!(
        completion.positions,
        vec![ShardPosition {
            shard: ShardId(2),
            sequence: 9
        }]
    );
    assert!(
        completion.deliveries.is_empty(),
        "version 1 completions carried no delivery marks"
    );
}

/// Rejection codes are stored by a fixed index; the indices of the
/// transport codes the core never decided (1, 20, 21) stay reserved (25 is
/// the next free one).
#[test]
fn rejection_codes_keep_their_stored_indices() {
    use ledger_core::codec::{decode, encode};
    let stored = [
        ("validation_failed", 0u32),
        ("forbidden", 2),
        ("idempotency_conflict", 3),
        ("not_found", 4),
        ("listing_unavailable", 5),
        ("not_on_sale", 6),
        ("purchaser_is_seller", 7),
        ("price_changed", 8),
        ("already_owned", 9),
        ("quantity_limit_reached", 10),
        ("sold_out", 11),
        ("insufficient_funds", 12),
        ("not_owner", 13),
        ("not_resellable", 14),
        ("already_listed", 15),
        ("resale_hold_active", 16),
        ("refund_window_closed", 17),
        ("already_refunded", 18),
        ("not_refundable", 19),
        ("idempotency_expired", 22),
        ("rate_limited", 23),
        ("below_price_floor", 24),
        ("item_taken_down", 25),
    ];
    let codes: Vec<RejectionCode> = RejectionCode::all().collect();
    assert_eq!(codes.len(), stored.len());
    for (code, (name, index)) in codes.into_iter().zip(stored) {
        assert_eq!(code.as_str(), name);
        assert_eq!(encode(&code), encode(&index), "{name} is stored as {index}");
        let decoded: RejectionCode = decode("rejection code", &encode(&index)).unwrap();
        assert_eq!(decoded, code);
    }
    for reserved in [1u32, 20, 21, 26] {
        assert!(
            decode::<RejectionCode>("rejection code", &encode(&reserved)).is_err(),
            "index {reserved} is not a code of the core"
        );
    }
}
