//! Format 2: one record per shard step, one SHA-256 per record. A golden
//! fixture guards its bytes; format 1 envelopes still read as records of one
//! entry with their own hash, so old logs keep their chain.

use ledger_core::codec::{
    BatchRecord, CodecError, Entry, Envelope, InputEntries, GENESIS_HASH, RECORD_MAGIC,
};
use ledger_core::*;

mod common;
use common::{fixture, hex, unhex};

fn user(id: &str) -> UserId {
    UserId::parse(id).unwrap()
}

/// A purchase's step on the buyer's shard: a message consumed, the debit,
/// a message sent; and a grant command in the same step.
fn sample_inputs() -> Vec<InputEntries> {
    let alice = user("alice");
    let debit = Event::BuyerDebited {
        purchase_id: PurchaseId::parse("p-1").unwrap(),
        buyer_id: alice.clone(),
        amount: 100,
        balance_after: 400,
        granted_items: vec![ItemId::parse("hat-1").unwrap()],
        at_ms: 1_800_000_000_000,
        postings: vec![
            Posting::new(Account::Wallet(alice.clone()), -100),
            Posting::new(Account::Clearing, 100),
        ],
    };
    let grant = Event::CurrencyGranted {
        grant_id: GrantId::parse("g-1").unwrap(),
        user_id: alice.clone(),
        amount: 500,
        balance_after: 500,
        postings: vec![
            Posting::new(Account::Issuance, -500),
            Posting::new(Account::Wallet(alice), 500),
        ],
    };
    vec![
        InputEntries {
            cause: "message:3:7".into(),
            timestamp_ms: 1_800_000_000_000,
            entries: vec![
                Entry::from_event(&debit),
                Entry::Sent {
                    to: ShardId(3),
                    sequence: 9,
                    message: std::sync::Arc::new(Message::CreditGrant {
                        grant_id: GrantId::parse("g-2").unwrap(),
                        user_id: user("bob"),
                        amount: 5,
                    }),
                },
                Entry::Received {
                    from: ShardId(3),
                    sequence: 7,
                },
            ],
        },
        InputEntries {
            cause: "command:grant:g-1".into(),
            timestamp_ms: 1_800_000_000_001,
            entries: vec![Entry::from_event(&grant)],
        },
    ]
}

fn sample_record() -> BatchRecord {
    BatchRecord::seal(ShardId(1), 41, [7; 32], sample_inputs())
}

#[test]
fn a_record_matches_its_golden_bytes() {
    let record = sample_record();
    let bytes = record.to_bytes();
    let path = fixture("record-v2.hex");
    if std::env::var("UPDATE_GOLDEN").is_ok() {
        std::fs::write(&path, hex(&bytes)).unwrap();
    }
    let golden = unhex(&std::fs::read_to_string(&path).expect("fixture record-v2.hex exists"));
    assert_eq!(
        bytes, golden,
        "the record format changed; add a format version"
    );
    assert!(golden.starts_with(&RECORD_MAGIC));
    let decoded = BatchRecord::from_bytes(&golden).unwrap();
    assert_eq!(decoded, record);
    assert_eq!((decoded.first_sequence, decoded.last_sequence()), (41, 44));
    let logged: Vec<_> = decoded
        .logged()
        .map(|logged| {
            (
                logged.sequence,
                logged.cause,
                logged.entry.event_type().to_string(),
            )
        })
        .collect();
    assert_eq!(
        logged,
        vec![
            (41, "message:3:7", "buyer_debited".to_string()),
            (42, "message:3:7", "message_sent".to_string()),
            (43, "message:3:7", "message_received".to_string()),
            (44, "command:grant:g-1", "currency_granted".to_string()),
        ]
    );
    let events: Vec<Event> = decoded.logged().map(|l| l.event().unwrap()).collect();
    assert!(matches!(events[1], Event::MessageSent { sequence: 9, .. }));
    assert!(matches!(
        events[2],
        Event::MessageReceived { sequence: 7, .. }
    ));
}

#[test]
fn any_changed_byte_is_refused() {
    let bytes = sample_record().to_bytes();
    for index in [RECORD_MAGIC.len(), bytes.len() / 2, bytes.len() - 1] {
        let mut tampered = bytes.clone();
        tampered[index] ^= 1;
        assert!(
            BatchRecord::from_bytes(&tampered).is_err(),
            "byte {index} changed and the record still decoded"
        );
    }
    assert!(matches!(
        BatchRecord::from_bytes(&RECORD_MAGIC),
        Err(CodecError::RecordTooShort { .. })
    ));
    let mut changed = bytes.clone();
    let middle = bytes.len() / 2;
    changed[middle] ^= 0x40;
    match BatchRecord::from_bytes(&changed) {
        Err(CodecError::RecordChecksum { .. }) | Err(CodecError::Decode { .. }) => {}
        other => panic!("expected a checksum or decode failure, got {other:?}"),
    }
}

#[test]
fn records_chain_and_the_hash_covers_position_and_link() {
    let first = sample_record();
    let second = BatchRecord::seal(
        ShardId(1),
        first.next_sequence(),
        first.hash,
        sample_inputs(),
    );
    assert_eq!(second.previous_hash, first.hash);
    assert_ne!(second.hash, first.hash);
    let elsewhere = BatchRecord::seal(ShardId(2), 41, [7; 32], sample_inputs());
    assert_ne!(elsewhere.hash, first.hash, "the shard is covered");
    let relinked = BatchRecord::seal(ShardId(1), 41, GENESIS_HASH, sample_inputs());
    assert_ne!(relinked.hash, first.hash, "the link is covered");
}

#[test]
fn a_format_one_envelope_reads_as_a_record_of_one_entry() {
    let bytes = unhex(
        &std::fs::read_to_string(fixture("event-3-buyer_debited-v1.hex")).expect("fixture exists"),
    );
    let envelope = Envelope::from_bytes(&bytes).unwrap();
    let record = BatchRecord::from_bytes(&bytes).unwrap();
    assert_eq!(record.shard, envelope.shard);
    assert_eq!(record.first_sequence, envelope.sequence);
    assert_eq!(record.last_sequence(), envelope.sequence);
    assert_eq!(record.hash, envelope.hash);
    assert_eq!(record.previous_hash, envelope.previous_hash);
    let logged: Vec<_> = record.logged().collect();
    assert_eq!(logged.len(), 1);
    assert_eq!(logged[0].cause, envelope.cause);
    assert_eq!(logged[0].timestamp_ms, envelope.timestamp_ms);
    assert_eq!(logged[0].event().unwrap(), envelope.event().unwrap());
    // Written back, it is the same envelope: a store copying an old log
    // (a takeover republishing it) keeps its hash valid.
    assert_eq!(record.to_bytes(), bytes);
}

#[test]
fn snapshots_of_both_encodings_read() {
    use ledger_core::codec::{Snapshot, SNAPSHOT_MAGIC};
    let mut state = ShardState::new(ShardId(2));
    let record = sample_record();
    state.next_sequence = record.next_sequence();
    state.balances.insert(Account::Wallet(user("alice")), 400);
    let snapshot = Snapshot {
        state,
        last_hash: record.hash,
    };
    let bytes = snapshot.to_bytes();
    assert!(bytes.starts_with(&SNAPSHOT_MAGIC));
    assert_eq!(Snapshot::from_bytes(&bytes).unwrap(), snapshot);
    // Any flipped bit is refused by the checksum, never restored.
    for index in [8, bytes.len() / 2, bytes.len() - 40, bytes.len() - 1] {
        let mut corrupted = bytes.clone();
        corrupted[index] ^= 0x10;
        assert!(
            Snapshot::from_bytes(&corrupted).is_err(),
            "bit flipped at {index}"
        );
    }
    // Format 5 holds a state without price floors; format 4 also without purchase rate limits: the same body
    // without the encoding of empty `BuyerLimits` (three zero lengths and
    // a zero mark, right before the 32-byte last hash). Formats 3 and older also lack
    // the retention queues (four zero lengths or values before those).
    let body = &bytes[8..bytes.len() - 32];
    let without_retention = |body: &[u8], retention_bytes: usize| -> Vec<u8> {
        let (state, hash) = body.split_at(body.len() - 32);
        let (state, retention) = state.split_at(state.len() - retention_bytes);
        assert!(retention.iter().all(|byte| *byte == 0));
        [state, hash].concat()
    };
    // Format 6: without the takedowns (five zero lengths).
    let body_v6 = without_retention(body, 5);
    let mut checked_v6 = ledger_core::codec::SNAPSHOT_MAGIC_V6.to_vec();
    checked_v6.extend_from_slice(&body_v6);
    checked_v6.extend_from_slice(&sha256(&body_v6));
    assert_eq!(Snapshot::from_bytes(&checked_v6).unwrap(), snapshot);
    // Format 5: also without the copy of the price floors, the items'
    // pricing and the price tests (four zero lengths).
    let body_v5 = without_retention(body, 5 + 4);
    let mut checked_v5 = ledger_core::codec::SNAPSHOT_MAGIC_V5.to_vec();
    checked_v5.extend_from_slice(&body_v5);
    checked_v5.extend_from_slice(&sha256(&body_v5));
    assert_eq!(Snapshot::from_bytes(&checked_v5).unwrap(), snapshot);
    let body_v4 = without_retention(body, 5 + 4 + 4);
    let mut checked_v4 = ledger_core::codec::SNAPSHOT_MAGIC_V4.to_vec();
    checked_v4.extend_from_slice(&body_v4);
    checked_v4.extend_from_slice(&sha256(&body_v4));
    assert_eq!(Snapshot::from_bytes(&checked_v4).unwrap(), snapshot);
    let body_v3 = without_retention(body, 5 + 4 + 4 + 4);
    // Format 3: checksummed, before commands were forgotten.
    let mut checked_v3 = ledger_core::codec::SNAPSHOT_MAGIC_V3.to_vec();
    checked_v3.extend_from_slice(&body_v3);
    checked_v3.extend_from_slice(&sha256(&body_v3));
    assert_eq!(Snapshot::from_bytes(&checked_v3).unwrap(), snapshot);
    let mut corrupted = checked_v3.clone();
    corrupted[12] ^= 0x01;
    assert!(Snapshot::from_bytes(&corrupted).is_err());
    // Written before snapshots had a checksum: the record encoding alone.
    let mut unchecked = ledger_core::codec::SNAPSHOT_MAGIC_UNCHECKED.to_vec();
    unchecked.extend_from_slice(&body_v3);
    assert_eq!(Snapshot::from_bytes(&unchecked).unwrap(), snapshot);
    // Written before the record encoding: fixed-width integers, no marker.
    let older = without_retention(&ledger_core::codec::encode(&snapshot), (5 + 4 + 4 + 4) * 8);
    assert!(older.len() > unchecked.len());
    assert_eq!(Snapshot::from_bytes(&older).unwrap(), snapshot);
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}

/// A primary purchase in three hops: the item's shard sends the reservation
/// on to the buyer's shard, which answers the home shard; the home shard
/// settles and completes with the reservation.
fn purchase_inputs() -> Vec<InputEntries> {
    let purchase_id = PurchaseId::parse("p-1").unwrap();
    let reservation = Reservation {
        price: 100,
        creator_id: user("carol"),
        sale: SaleKind::Item {
            item_id: ItemId::parse("hat-1").unwrap(),
            serial: None,
        },
        terms: None,
    };
    let completed = Event::PurchaseCompleted {
        key: "purchase:p-1".into(),
        completion: Completion {
            result: Ok(Success::Purchased {
                target: PurchaseTarget::Item(ItemId::parse("hat-1").unwrap()),
                price: 100,
                serial: None,
                granted_items: vec![ItemId::parse("hat-1").unwrap()],
                balance_after: 400,
            }),
            positions: vec![ShardPosition {
                shard: ShardId(2),
                sequence: 12,
            }],
            deliveries: vec![],
            retry_after_ms: None,
        },
        reservation: reservation.clone(),
    };
    vec![
        InputEntries {
            cause: "message:0:4".into(),
            timestamp_ms: 1_800_000_000_000,
            entries: vec![
                Entry::Sent {
                    to: ShardId(2),
                    sequence: 5,
                    message: std::sync::Arc::new(Message::ChargeBuyer {
                        purchase_id: purchase_id.clone(),
                        buyer_id: user("alice"),
                        reservation: reservation.clone(),
                        at_ms: 1_800_000_000_000,
                        home: ShardId(0),
                    }),
                },
                Entry::Received {
                    from: ShardId(0),
                    sequence: 4,
                },
            ],
        },
        InputEntries {
            cause: "message:2:6".into(),
            timestamp_ms: 1_800_000_000_001,
            entries: vec![
                Entry::Sent {
                    to: ShardId(3),
                    sequence: 8,
                    message: std::sync::Arc::new(Message::ReserveSale {
                        purchase_id,
                        buyer_id: user("alice"),
                        request: SaleRequest::Bundle(BundleId::parse("pack-1").unwrap()),
                        expected_price: 150,
                        at_ms: 1_800_000_000_001,
                        home: ShardId(1),
                    }),
                },
                Entry::from_event(&completed),
                Entry::Received {
                    from: ShardId(2),
                    sequence: 6,
                },
            ],
        },
    ]
}

#[test]
fn a_three_hop_purchase_record_matches_its_golden_bytes() {
    let record = BatchRecord::seal(ShardId(1), 90, [9; 32], purchase_inputs());
    let bytes = record.to_bytes();
    let path = fixture("record-v2-purchase.hex");
    if std::env::var("UPDATE_GOLDEN").is_ok() {
        std::fs::write(&path, hex(&bytes)).unwrap();
    }
    let golden =
        unhex(&std::fs::read_to_string(&path).expect("fixture record-v2-purchase.hex exists"));
    assert_eq!(
        bytes, golden,
        "the record format changed; add a format version"
    );
    let decoded = BatchRecord::from_bytes(&golden).unwrap();
    assert_eq!(decoded, record);
    let types: Vec<String> = decoded
        .logged()
        .map(|logged| logged.entry.event_type().to_string())
        .collect();
    assert_eq!(
        types,
        [
            "message_sent",
            "message_received",
            "message_sent",
            "purchase_completed",
            "message_received"
        ]
    );
    let events: Vec<Event> = decoded.logged().map(|l| l.event().unwrap()).collect();
    assert!(matches!(
        &events[3],
        Event::PurchaseCompleted { reservation, .. } if reservation.price == 100
    ));
}

/// Decoding never panics and never accepts damage: every single-bit flip
/// and every truncation of a record and of a snapshot is refused, and
/// seeded random byte strings (with and without a valid marker in front)
/// fed to every decoder return an error or a value, never a panic or an
/// allocation of whatever a corrupted length prefix claims.
#[test]
fn any_damaged_or_random_bytes_are_refused_without_panicking() {
    use ledger_core::codec::{
        CommandRecord, Envelope, MessageEnvelope, ReplyRecord, Snapshot, SNAPSHOT_MAGIC,
    };
    let record = sample_record().to_bytes();
    let mut state = ShardState::new(ShardId(1));
    state.next_sequence = 9;
    state.balances.insert(Account::Wallet(user("alice")), 400);
    let snapshot = Snapshot {
        state,
        last_hash: [7; 32],
    }
    .to_bytes();
    for (what, bytes) in [("record", &record), ("snapshot", &snapshot)] {
        let decodes = |bytes: &[u8]| match what {
            "record" => BatchRecord::from_bytes(bytes).is_ok(),
            _ => Snapshot::from_bytes(bytes).is_ok(),
        };
        assert!(decodes(bytes), "the undamaged {what} decodes");
        for bit in 0..bytes.len() * 8 {
            let mut damaged = bytes.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            assert!(!decodes(&damaged), "{what} with bit {bit} flipped decoded");
        }
        for length in 0..bytes.len() {
            assert!(
                !decodes(&bytes[..length]),
                "{what} cut to {length} bytes decoded"
            );
        }
    }
    // SplitMix64, seeded: the same byte strings every run.
    let mut seed = 0x5eed_u64;
    let mut next = move || {
        seed = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = seed;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    for round in 0..20_000 {
        let length = (next() % 300) as usize;
        let mut bytes: Vec<u8> = (0..length).map(|_| next() as u8).collect();
        let marker: &[u8] = match round % 3 {
            0 => &RECORD_MAGIC,
            1 => &SNAPSHOT_MAGIC,
            _ => &[],
        };
        bytes.splice(0..0, marker.iter().copied());
        let _ = BatchRecord::from_bytes(&bytes);
        let _ = Snapshot::from_bytes(&bytes);
        let _ = Envelope::from_bytes(&bytes);
        let _ = CommandRecord::from_bytes(&bytes);
        let _ = ReplyRecord::from_bytes(&bytes);
        let _ = ledger_core::codec::decode::<MessageEnvelope>("shard message", &bytes);
    }
}

/// Snapshots a server wrote in format 8 (`cdd4ee8`: `ledger serve --demo
/// --snapshot-every-events 2`, then alice's and bob's purchases of the
/// Limited and of the cap, then each asking for the cap six more times;
/// each shard's newest snapshot, as stored) still restore, with every
/// completed command read again under its key, and are written again in
/// format 9. A completed purchase names its item and buyer more than once,
/// so a record read with the wrong table of ids would name other ids.
#[test]
fn format_eight_snapshots_of_the_demo_economy_restore_and_write_as_format_nine() {
    use ledger_core::codec::{Snapshot, SNAPSHOT_MAGIC};
    let item = |key: &str| {
        if key.contains("crown") {
            "golden-crown"
        } else {
            "red-cap"
        }
    };
    let (mut grants, mut items, mut paid, mut refused, mut running) = (0, 0, 0, 0, 0);
    for shard in 0..4_u16 {
        let name = format!("snapshot-v8-shard-{shard}.hex");
        let text = std::fs::read_to_string(fixture(&name)).expect("the fixture exists");
        let snapshot = Snapshot::from_bytes(&unhex(&text)).expect("a format 8 snapshot restores");
        assert_eq!(snapshot.state.shard, ShardId(shard));
        for (key, remembered) in &snapshot.state.commands {
            let record = remembered.record(key);
            assert_eq!(record.command.idempotency_key().as_deref(), Some(&**key));
            assert_eq!(record.completion.is_some(), remembered.is_completed());
            match &record.command {
                Command::Grant {
                    user_id, amount, ..
                } => {
                    let expected = if user_id.as_str() == "alice" {
                        1000
                    } else {
                        500
                    };
                    assert_eq!(*amount, expected, "{key}");
                    grants += 1;
                }
                Command::PublishItem(definition) => {
                    assert_eq!(definition.creator_id.as_str(), "studio", "{key}");
                    items += 1;
                }
                Command::Purchase {
                    buyer_id, target, ..
                } => {
                    let purchase = key.trim_start_matches("purchase:");
                    assert!(purchase.starts_with(buyer_id.as_str()), "{key}: {buyer_id}");
                    assert_eq!(
                        target,
                        &PurchaseTarget::Item(ItemId::parse(item(key)).unwrap())
                    );
                    match record
                        .completion
                        .as_ref()
                        .map(|completion| &completion.result)
                    {
                        None => running += 1,
                        Some(Ok(Success::Purchased {
                            serial,
                            granted_items,
                            ..
                        })) => {
                            if item(key) == "golden-crown" {
                                assert!(matches!(serial, Some(1 | 2)), "{key}: {serial:?}");
                            } else {
                                assert_eq!(granted_items, &[ItemId::parse("red-cap").unwrap()]);
                            }
                            paid += 1;
                        }
                        Some(Err(rejection)) => {
                            assert_eq!(rejection.code, RejectionCode::AlreadyOwned, "{key}");
                            assert!(rejection.detail.contains(purchase), "{key}");
                            refused += 1;
                        }
                        Some(other) => panic!("{key}: {other:?}"),
                    }
                }
                other => panic!("{key}: {other:?}"),
            }
        }
        let again = snapshot.to_bytes();
        assert!(again.starts_with(&SNAPSHOT_MAGIC));
        assert_eq!(
            Snapshot::from_bytes(&again).expect("format 9 reads"),
            snapshot
        );
    }
    assert_eq!((grants, items, paid, refused, running), (2, 2, 4, 8, 4));
}
