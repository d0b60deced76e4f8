//! Projection into the SQLite read models: a hand-built purchase history,
//! rebuild equivalence, the projector loop and cursor paging.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use engine::ports::EventStore;
use ledger_core::codec::BatchRecord;
use ledger_core::{
    Completion, Event, ListingEndReason, Posting, ReadPosition, RefundId, ShardId, ShardPosition,
    Success,
};
use ledger_store_sqlite::{Projected, SqliteStore};
use projectors::{InventoryEntry, OwnerEntry, ReadError, ReadModels, PAGE_SIZE_MAX};

const GRANTS: u16 = 0;
const ITEMS: u16 = 1;
const USERS: u16 = 2;
const PURCHASES: u16 = 3;

/// Grants, a Limited and a non-limited item, primary purchases of both,
/// an escrow release, a listing and a resale of the Limited's serial.
fn purchase_history(log: &mut Log) -> Vec<BatchRecord> {
    let mut envelopes = Vec::new();
    let mut push =
        |shard: u16, event: Event, at_ms: u64| envelopes.push(log.seal(shard, event, at_ms));
    push(GRANTS, grant("g-bob", "bob", 1_000, 1_000), 10);
    push(GRANTS, grant("g-dave", "dave", 1_000, 1_000), 11);
    push(ITEMS, publish("crown", "carol", 100, Some(10)), 12);
    push(ITEMS, publish("hat", "carol", 50, None), 13);
    // Bob buys crown #1.
    push(
        ITEMS,
        Event::SerialReserved {
            item_id: item("crown"),
            serial: 1,
            purchase_id: purchase("p1"),
            buyer_id: user("bob"),
        },
        20,
    );
    push(USERS, debit("p1", "bob", 100, &[], 20), 21);
    push(
        ITEMS,
        Event::SerialSold {
            item_id: item("crown"),
            serial: 1,
            purchase_id: purchase("p1"),
            buyer_id: user("bob"),
            at_ms: 20,
        },
        22,
    );
    push(USERS, settle("p1", "carol", false, 100, 70), 23);
    push(
        PURCHASES,
        completed_item_purchase("p1", "crown", 100, Some(1)),
        24,
    );
    // Bob buys the hat.
    push(USERS, debit("p2", "bob", 50, &["hat"], 30), 31);
    push(USERS, settle("p2", "carol", false, 50, 35), 32);
    push(
        PURCHASES,
        completed_item_purchase("p2", "hat", 50, None),
        33,
    );
    // Carol's crown earnings are released.
    push(
        USERS,
        Event::EscrowReleased {
            purchase_id: purchase("p1"),
            creator_id: user("carol"),
            amount: 70,
            postings: vec![
                Posting::new(ledger_core::Account::Pending(user("carol")), -70),
                Posting::new(ledger_core::Account::Wallet(user("carol")), 70),
            ],
        },
        40,
    );
    // Bob lists crown #1 (and cancels a first listing); Dave buys it.
    push(
        ITEMS,
        Event::ListingCreated {
            listing_id: listing("l0"),
            item_id: item("crown"),
            serial: 1,
            seller_id: user("bob"),
            price: 500,
        },
        50,
    );
    push(
        ITEMS,
        Event::ListingEnded {
            listing_id: listing("l0"),
            item_id: item("crown"),
            serial: 1,
            reason: ListingEndReason::Cancelled,
        },
        51,
    );
    push(
        ITEMS,
        Event::ListingCreated {
            listing_id: listing("l1"),
            item_id: item("crown"),
            serial: 1,
            seller_id: user("bob"),
            price: 300,
        },
        52,
    );
    push(USERS, debit("p3", "dave", 300, &[], 60), 61);
    push(
        ITEMS,
        Event::SerialTransferred {
            item_id: item("crown"),
            serial: 1,
            listing_id: listing("l1"),
            purchase_id: purchase("p3"),
            from_user_id: user("bob"),
            to_user_id: user("dave"),
            price: 300,
            at_ms: 60,
        },
        62,
    );
    push(
        USERS,
        Event::SellerCredited {
            purchase_id: purchase("p3"),
            seller_id: user("bob"),
            amount: 210,
            balance_after: 1_060,
            postings: vec![
                Posting::new(ledger_core::Account::Clearing, -210),
                Posting::new(ledger_core::Account::Wallet(user("bob")), 210),
            ],
        },
        63,
    );
    push(USERS, settle("p3", "carol", true, 90, 30), 64);
    push(
        PURCHASES,
        Event::CommandCompleted {
            key: "purchase:p3".to_string(),
            completion: Completion {
                result: Ok(Success::ResalePurchased {
                    item_id: item("crown"),
                    serial: 1,
                    price: 300,
                    seller_id: user("bob"),
                    balance_after: 700,
                }),
                positions: Vec::new(),
                deliveries: Vec::new(),
                retry_after_ms: None,
            },
        },
        65,
    );
    envelopes
}

/// Appends each record as a batch of its own, in order.
async fn append_each(store: &SqliteStore, records: &[BatchRecord]) {
    for record in records {
        store
            .append(vec![batch(
                record.shard.0,
                vec![record.clone()],
                Vec::new(),
            )])
            .await
            .expect("append succeeds");
    }
}

async fn project_all(store: &SqliteStore) {
    store
        .project_all_pending()
        .await
        .expect("projection succeeds");
}

#[tokio::test]
async fn a_purchase_history_projects_to_the_expected_read_models() {
    let directory = TempDir::new("projection");
    let store = SqliteStore::open(&directory.path).expect("store opens");
    let mut log = Log::default();
    let envelopes = purchase_history(&mut log);
    append_each(&store, &envelopes).await;
    let read_models = store.read_models();
    let positions = |shard: u16, sequence: u64| ReadPosition {
        positions: vec![ShardPosition {
            shard: ShardId(shard),
            sequence,
        }],
        deliveries: Vec::new(),
    };
    assert!(!read_models
        .covers(&positions(USERS, 1))
        .await
        .expect("coverage reads"));
    assert!(read_models
        .covers(&ReadPosition::default())
        .await
        .expect("coverage reads"));

    project_all(&store).await;
    assert_eq!(
        store.projection_position().await.expect("position reads"),
        envelopes.len() as u64
    );
    for shard in [GRANTS, ITEMS, USERS, PURCHASES] {
        assert!(read_models
            .covers(&positions(shard, log.last_sequence(shard)))
            .await
            .expect("coverage reads"));
        assert!(!read_models
            .covers(&positions(shard, log.last_sequence(shard) + 1))
            .await
            .expect("coverage reads"));
    }
    assert!(!read_models
        .covers(&positions(9, 1))
        .await
        .expect("coverage reads"));

    // Balances: bob 1000 - 100 - 50 + 210; dave 1000 - 300; carol got 70 released.
    let bob = read_models.balance("bob").await.expect("balance reads");
    assert_eq!((bob.balance, bob.pending), (1_060, 0));
    let dave = read_models.balance("dave").await.expect("balance reads");
    assert_eq!((dave.balance, dave.pending), (700, 0));
    let carol = read_models.balance("carol").await.expect("balance reads");
    assert_eq!((carol.balance, carol.pending), (70, 35 + 30));
    let nobody = read_models.balance("nobody").await.expect("balance reads");
    assert_eq!(
        (nobody.user_id.as_str(), nobody.balance, nobody.pending),
        ("nobody", 0, 0)
    );

    // Earnings: three sales, 70 released, 135 earned.
    let earnings = read_models.earnings("carol").await.expect("earnings read");
    assert_eq!(
        (
            earnings.pending,
            earnings.released,
            earnings.lifetime,
            earnings.sales_count
        ),
        (65, 70, 135, 3)
    );
    assert_eq!(
        read_models
            .earnings("nobody")
            .await
            .expect("earnings read")
            .sales_count,
        0
    );

    // Inventory: bob kept the hat, dave holds crown #1.
    let bob_inventory = read_models
        .inventory("bob", 10, None)
        .await
        .expect("inventory reads");
    assert_eq!(
        bob_inventory.entries,
        vec![InventoryEntry {
            item_id: "hat".to_string(),
            serial: None,
            purchase_id: "p2".to_string(),
            acquired_at_ms: 30
        }]
    );
    assert_eq!(bob_inventory.next_cursor, None);
    let dave_inventory = read_models
        .inventory("dave", 10, None)
        .await
        .expect("inventory reads");
    assert_eq!(
        dave_inventory.entries,
        vec![InventoryEntry {
            item_id: "crown".to_string(),
            serial: Some(1),
            purchase_id: "p3".to_string(),
            acquired_at_ms: 60
        }]
    );
    let owners = read_models
        .owners("crown", 10, None)
        .await
        .expect("owners read");
    assert_eq!(
        owners.entries,
        vec![OwnerEntry {
            serial: 1,
            user_id: "dave".to_string()
        }]
    );

    // Items: RAP 100 then 100 + (300 - 100) / 10 = 120.
    let crown = read_models
        .item("crown")
        .await
        .expect("item reads")
        .expect("crown exists");
    assert_eq!(
        (
            crown.limited,
            crown.supply,
            crown.sold,
            crown.remaining,
            crown.sales_count,
            crown.recent_average_price
        ),
        (true, Some(10), 1, Some(9), 2, Some(120))
    );
    assert_eq!(
        (
            crown.creator_id.as_str(),
            crown.price,
            crown.on_sale,
            crown.resellable
        ),
        ("carol", 100, true, true)
    );
    assert_eq!(crown.lowest_resale_price, None);
    assert!(read_models
        .resale_listings("crown", 10, None)
        .await
        .expect("listings read")
        .entries
        .is_empty());
    let hat = read_models
        .item("hat")
        .await
        .expect("item reads")
        .expect("hat exists");
    assert_eq!(
        (
            hat.limited,
            hat.sold,
            hat.remaining,
            hat.sales_count,
            hat.recent_average_price
        ),
        (false, 1, None, 1, Some(50))
    );
    assert_eq!(read_models.item("nothing").await.expect("item reads"), None);

    // Carol's history, newest first: royalty, release (wallet, pending), two sales.
    let history = read_models
        .transactions("carol", 10, None)
        .await
        .expect("transactions read");
    let summary: Vec<(String, i64, String)> = history
        .entries
        .iter()
        .map(|entry| (entry.kind.clone(), entry.amount, entry.reference.clone()))
        .collect();
    assert_eq!(
        summary,
        vec![
            ("royalty".to_string(), 30, "p3".to_string()),
            ("escrow_release".to_string(), 70, "p1".to_string()),
            ("escrow_release".to_string(), -70, "p1".to_string()),
            ("sale".to_string(), 35, "p2".to_string()),
            ("sale".to_string(), 70, "p1".to_string()),
        ]
    );
    assert_eq!(history.entries[4].position, format!("{USERS}.2"));
    assert_eq!(history.entries[4].at_ms, 23);
    let bob_history = read_models
        .transactions("bob", 10, None)
        .await
        .expect("transactions read");
    let kinds: Vec<&str> = bob_history
        .entries
        .iter()
        .map(|entry| entry.kind.as_str())
        .collect();
    assert_eq!(
        kinds,
        vec!["resale_proceeds", "purchase", "purchase", "grant"]
    );
}

/// The purchase history, then a refunded purchase of a listed serial and a
/// refunded purchase of a non-limited item.
fn refund_history(log: &mut Log) -> Vec<BatchRecord> {
    let mut envelopes = purchase_history(log);
    // Erin buys crown #2 and lists it; the purchase is refunded.
    let mut push =
        |shard: u16, event: Event, at_ms: u64| envelopes.push(log.seal(shard, event, at_ms));
    push(GRANTS, grant("g-erin", "erin", 500, 500), 70);
    push(USERS, debit("p4", "erin", 100, &[], 71), 71);
    push(
        ITEMS,
        Event::SerialSold {
            item_id: item("crown"),
            serial: 2,
            purchase_id: purchase("p4"),
            buyer_id: user("erin"),
            at_ms: 71,
        },
        72,
    );
    push(USERS, settle("p4", "carol", false, 100, 70), 73);
    push(
        PURCHASES,
        completed_item_purchase("p4", "crown", 100, Some(2)),
        74,
    );
    push(
        ITEMS,
        Event::ListingCreated {
            listing_id: listing("l2"),
            item_id: item("crown"),
            serial: 2,
            seller_id: user("erin"),
            price: 250,
        },
        75,
    );
    push(
        USERS,
        Event::EscrowReversed {
            purchase_id: purchase("p4"),
            refund_id: RefundId::parse("r4").expect("valid"),
            creator_id: user("carol"),
            creator_share: 70,
            platform_fee: 30,
            postings: vec![
                Posting::new(ledger_core::Account::Pending(user("carol")), -70),
                Posting::new(ledger_core::Account::Fees, -30),
                Posting::new(ledger_core::Account::Clearing, 100),
            ],
        },
        80,
    );
    push(
        ITEMS,
        Event::SerialRevoked {
            item_id: item("crown"),
            serial: 2,
            purchase_id: purchase("p4"),
            owner_id: user("erin"),
        },
        81,
    );
    push(
        USERS,
        Event::BuyerRefunded {
            purchase_id: purchase("p4"),
            refund_id: RefundId::parse("r4").expect("valid"),
            buyer_id: user("erin"),
            amount: 100,
            revoked_items: Vec::new(),
            balance_after: 500,
            postings: vec![
                Posting::new(ledger_core::Account::Clearing, -100),
                Posting::new(ledger_core::Account::Wallet(user("erin")), 100),
            ],
        },
        82,
    );
    // The hat purchase is refunded too (a non-limited item).
    push(
        USERS,
        Event::BuyerRefunded {
            purchase_id: purchase("p2"),
            refund_id: RefundId::parse("r2").expect("valid"),
            buyer_id: user("bob"),
            amount: 50,
            revoked_items: vec![item("hat")],
            balance_after: 1_110,
            postings: vec![
                Posting::new(ledger_core::Account::Clearing, -50),
                Posting::new(ledger_core::Account::Wallet(user("bob")), 50),
            ],
        },
        91,
    );
    envelopes
}

/// A projection transaction holds additive changes as sums and writes them
/// once. The read models must equal those of one event per transaction
/// (each record here holds one event), whatever the history does between:
/// sales of one item, refunds that restate the item's history, listings,
/// escrow releases.
#[tokio::test]
async fn sums_held_by_a_transaction_equal_applying_each_event_alone() {
    let mut log = Log::default();
    let mut envelopes = refund_history(&mut log);
    // More sales of the hat, over two days, and two of them refunded.
    for index in 0..6u64 {
        let purchase_id = format!("p-hat-{index}");
        let at_ms = 100 + index * 40_000_000;
        envelopes.push(log.seal(USERS, debit(&purchase_id, "dave", 50, &[], at_ms), at_ms));
        envelopes.push(log.seal(
            USERS,
            settle(
                &purchase_id,
                "carol",
                false,
                50 + i64::try_from(index).expect("small"),
                35,
            ),
            at_ms + 1,
        ));
        envelopes.push(log.seal(
            PURCHASES,
            completed_item_purchase(
                &purchase_id,
                "hat",
                50 + i64::try_from(index).expect("small"),
                None,
            ),
            at_ms + 2,
        ));
        if index % 3 == 1 {
            envelopes.push(log.seal(
                PURCHASES,
                Event::RefundProgressed {
                    purchase_id: purchase(&purchase_id),
                    progress: ledger_core::RefundProgress::Refunded {
                        refund_id: RefundId::parse(format!("r-hat-{index}")).expect("valid"),
                    },
                },
                at_ms + 3,
            ));
        }
    }
    let mut dumps = Vec::new();
    for records_per_transaction in [1, 1_000] {
        let directory = TempDir::new("sums");
        let store = SqliteStore::open(&directory.path).expect("store opens");
        append_each(&store, &envelopes).await;
        while store
            .project_pending(records_per_transaction)
            .await
            .expect("projection succeeds")
            .records
            > 0
        {}
        dumps.push(store.dump_read_models().await.expect("dump reads"));
    }
    assert!(
        dumps[0].contains("refunded_count=1"),
        "the hat's history counts its refunds: {}",
        dumps[0]
    );
    assert_eq!(dumps[0], dumps[1]);
}

#[tokio::test]
async fn refunds_and_revocations_undo_what_purchases_did() {
    let directory = TempDir::new("refund");
    let store = SqliteStore::open(&directory.path).expect("store opens");
    let mut log = Log::default();
    let envelopes = refund_history(&mut log);
    append_each(&store, &envelopes).await;
    project_all(&store).await;
    let read_models = store.read_models();

    let erin = read_models.balance("erin").await.expect("balance reads");
    assert_eq!(erin.balance, 500);
    assert!(read_models
        .inventory("erin", 10, None)
        .await
        .expect("inventory reads")
        .entries
        .is_empty());
    let owners = read_models
        .owners("crown", 10, None)
        .await
        .expect("owners read");
    assert_eq!(
        owners.entries,
        vec![OwnerEntry {
            serial: 1,
            user_id: "dave".to_string()
        }]
    );
    // The revoked serial's listing left the book with it.
    assert!(read_models
        .resale_listings("crown", 10, None)
        .await
        .expect("listings read")
        .entries
        .is_empty());
    let crown = read_models
        .item("crown")
        .await
        .expect("item reads")
        .expect("crown exists");
    // Sold is net of the refund; sales_count counts completed sales (3).
    assert_eq!(
        (crown.sold, crown.remaining, crown.sales_count),
        (1, Some(9), 3)
    );
    let earnings = read_models.earnings("carol").await.expect("earnings read");
    assert_eq!(
        (
            earnings.pending,
            earnings.released,
            earnings.lifetime,
            earnings.sales_count
        ),
        (65, 70, 135, 3)
    );
    let erin_history = read_models
        .transactions("erin", 10, None)
        .await
        .expect("transactions read");
    let kinds: Vec<&str> = erin_history
        .entries
        .iter()
        .map(|entry| entry.kind.as_str())
        .collect();
    assert_eq!(kinds, vec!["refund", "purchase", "grant"]);

    let hat = read_models
        .item("hat")
        .await
        .expect("item reads")
        .expect("hat exists");
    assert_eq!(hat.sold, 0);
    assert!(read_models
        .inventory("bob", 10, None)
        .await
        .expect("inventory reads")
        .entries
        .is_empty());
    assert_eq!(
        read_models
            .balance("bob")
            .await
            .expect("balance reads")
            .balance,
        1_110
    );
}

#[tokio::test]
async fn rebuilding_gives_the_same_read_models_as_incremental_projection() {
    let directory = TempDir::new("rebuild");
    let store = SqliteStore::open(&directory.path).expect("store opens");
    let mut log = Log::default();
    let envelopes = purchase_history(&mut log);
    // Incremental: append and project in small steps, interleaved.
    for chunk in envelopes.chunks(3) {
        append_each(&store, chunk).await;
        store.project_pending(2).await.expect("projection succeeds");
    }
    project_all(&store).await;
    let incremental = store.dump_read_models().await.expect("dump reads");
    assert!(
        incremental.contains("[balances]")
            && incremental.contains("user_id=\"bob\" balance=1060 pending=0"),
        "{incremental}"
    );

    store.rebuild_read_models().await.expect("rebuild succeeds");
    let rebuilt = store.dump_read_models().await.expect("dump reads");
    assert_eq!(incremental, rebuilt);
    // Projecting again applies nothing.
    assert_eq!(
        store
            .project_pending(100)
            .await
            .expect("projection succeeds"),
        Projected::default()
    );
}

/// The storefront's point reads (an item, a balance, a first inventory
/// page) are served from views the projector publishes and empties at each
/// commit: read at every step of a history, twice (the second read is
/// served from memory), they equal what a store that never cached them
/// reads for the same log. And the marks `?after=` waits for are loaded
/// again when the store reopens.
#[tokio::test]
async fn cached_point_reads_follow_every_projection_and_marks_survive_a_reopen() {
    let directory = TempDir::new("cached-reads");
    let store = SqliteStore::open(&directory.path).expect("store opens");
    let mut log = Log::default();
    let envelopes = purchase_history(&mut log);
    let read_models = store.read_models();
    let read_all = |read_models: Arc<dyn ReadModels>| async move {
        let mut views = Vec::new();
        for user in ["bob", "carol", "dave"] {
            let balance = read_models.balance(user).await.expect("balance reads");
            let inventory = read_models
                .inventory(user, 100, None)
                .await
                .expect("inventory reads");
            views.push(format!("{balance:?} {inventory:?}"));
        }
        for item_id in ["crown", "hat", "nothing"] {
            let item = read_models.item(item_id).await.expect("item reads");
            views.push(format!("{item:?}"));
        }
        views
    };
    let mut appended = 0;
    for chunk in envelopes.chunks(3) {
        append_each(&store, chunk).await;
        appended += chunk.len();
        project_all(&store).await;
        let first = read_all(Arc::clone(&read_models)).await;
        let second = read_all(Arc::clone(&read_models)).await;
        assert_eq!(first, second);

        let reference_directory = TempDir::new("cached-reads-reference");
        let reference = SqliteStore::open(&reference_directory.path).expect("store opens");
        append_each(&reference, &envelopes[..appended]).await;
        project_all(&reference).await;
        assert_eq!(
            first,
            read_all(reference.read_models()).await,
            "after {appended} records"
        );
    }
    let everything = ReadPosition {
        positions: [GRANTS, ITEMS, USERS, PURCHASES]
            .into_iter()
            .map(|shard| ShardPosition {
                shard: ShardId(shard),
                sequence: log.last_sequence(shard),
            })
            .collect(),
        deliveries: Vec::new(),
    };
    assert!(read_models
        .covers(&everything)
        .await
        .expect("coverage reads"));
    drop(read_models);
    drop(store);
    let reopened = SqliteStore::open(&directory.path).expect("store reopens");
    assert!(reopened
        .read_models()
        .covers(&everything)
        .await
        .expect("coverage reads"));
}

/// A projection transaction is bounded in records, and a record holds many
/// entries: the answer counts both, so the projector loop can tell a full
/// batch (more waiting) from the end of the log. It once compared entries
/// with the record limit, saw no full batch, and slept between batches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projection_batch_is_counted_in_records_and_entries() {
    let directory = TempDir::new("projected");
    let store = SqliteStore::open(&directory.path).expect("store opens");
    let mut log = Log::default();
    let records: Vec<BatchRecord> = (0..5)
        .map(|index| {
            let grants = (0..3)
                .map(|grant_index| {
                    let balance_after =
                        i64::try_from(index * 3 + grant_index + 1).expect("a small balance");
                    grant(
                        &format!("g-{index}-{grant_index}"),
                        "alice",
                        1,
                        balance_after,
                    )
                })
                .collect();
            log.seal_many(GRANTS, grants, 10 + index)
        })
        .collect();
    append_each(&store, &records).await;

    let first = store.project_pending(2).await.expect("projection succeeds");
    assert_eq!(
        first,
        Projected {
            records: 2,
            entries: 6
        }
    );
    assert!(first.filled(2), "two records of two allowed: more may wait");
    let second = store.project_pending(2).await.expect("projection succeeds");
    assert_eq!(
        second,
        Projected {
            records: 2,
            entries: 6
        }
    );
    let last = store.project_pending(2).await.expect("projection succeeds");
    assert_eq!(
        last,
        Projected {
            records: 1,
            entries: 3
        }
    );
    assert!(!last.filled(2), "the log's end is not a full batch");
    assert_eq!(
        store.project_pending(2).await.expect("projection succeeds"),
        Projected::default()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_projector_loop_follows_appends_and_stops_on_shutdown() {
    let directory = TempDir::new("projector");
    let store = SqliteStore::open(&directory.path).expect("store opens");
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let projector = tokio::spawn(Arc::clone(&store).run_projector(shutdown));

    let mut log = Log::default();
    let envelopes = purchase_history(&mut log);
    store
        .append(vec![batch(ITEMS, Vec::new(), Vec::new())])
        .await
        .expect("append succeeds");
    append_each(&store, &envelopes).await;
    let read_models = store.read_models();
    let last = ReadPosition {
        positions: vec![ShardPosition {
            shard: ShardId(PURCHASES),
            sequence: log.last_sequence(PURCHASES),
        }],
        deliveries: Vec::new(),
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !read_models.covers(&last).await.expect("coverage reads") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the projector caught up in time"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        read_models
            .balance("dave")
            .await
            .expect("balance reads")
            .balance,
        700
    );

    stop.send(true).expect("projector listens");
    tokio::time::timeout(Duration::from_secs(5), projector)
        .await
        .expect("projector stops")
        .expect("projector task ends cleanly");
}

#[tokio::test]
async fn listings_page_with_stable_keyset_cursors() {
    let directory = TempDir::new("paging");
    let store = SqliteStore::open(&directory.path).expect("store opens");
    let mut log = Log::default();
    let mut envelopes = vec![log.seal(ITEMS, publish("crown", "carol", 100, Some(100)), 1)];
    for serial in 1..=30_u32 {
        let buyer = format!("buyer{:02}", serial % 4);
        envelopes.push(log.seal(
            ITEMS,
            Event::SerialSold {
                item_id: item("crown"),
                serial,
                purchase_id: purchase(&format!("p{serial}")),
                buyer_id: user(&buyer),
                at_ms: 5,
            },
            5,
        ));
        // Prices with ties: 100, 110, 120, 100, ...
        envelopes.push(log.seal(
            ITEMS,
            Event::ListingCreated {
                listing_id: listing(&format!("l{serial:02}")),
                item_id: item("crown"),
                serial,
                seller_id: user(&buyer),
                price: 100 + i64::from(serial % 3) * 10,
            },
            6,
        ));
    }
    for serial in 1..=12_u32 {
        envelopes.push(log.seal(
            USERS,
            grant(
                &format!("g{serial}"),
                "buyer01",
                i64::from(serial),
                i64::from(serial),
            ),
            7,
        ));
    }
    store
        .append(vec![
            batch(ITEMS, envelopes[..61].to_vec(), Vec::new()),
            batch(USERS, envelopes[61..].to_vec(), Vec::new()),
        ])
        .await
        .expect("append succeeds");
    project_all(&store).await;
    let read_models = store.read_models();

    // Listings: lowest price first, ties by listing id, in pages of 7.
    let mut listed = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let page = read_models
            .resale_listings("crown", 7, cursor.as_deref())
            .await
            .expect("listings read");
        assert!(page.entries.len() <= 7);
        listed.extend(
            page.entries
                .iter()
                .map(|listing| (listing.price, listing.listing_id.clone())),
        );
        pages += 1;
        if pages == 2 {
            // A listing inserted before the cursor does not shift later pages.
            let early = log.seal(
                ITEMS,
                Event::ListingCreated {
                    listing_id: listing("l00"),
                    item_id: item("crown"),
                    serial: 31,
                    seller_id: user("zed"),
                    price: 1,
                },
                8,
            );
            store
                .append(vec![batch(ITEMS, vec![early], Vec::new())])
                .await
                .expect("append succeeds");
            project_all(&store).await;
        }
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(pages, 5);
    let mut expected: Vec<(i64, String)> = (1..=30_u32)
        .map(|serial| (100 + i64::from(serial % 3) * 10, format!("l{serial:02}")))
        .collect();
    expected.sort();
    assert_eq!(listed, expected);
    let crown = read_models
        .item("crown")
        .await
        .expect("item reads")
        .expect("crown exists");
    assert_eq!(crown.lowest_resale_price, Some(1));

    // Owners by serial.
    let first = read_models
        .owners("crown", 10, None)
        .await
        .expect("owners read");
    assert_eq!(
        first
            .entries
            .iter()
            .map(|owner| owner.serial)
            .collect::<Vec<_>>(),
        (1..=10).collect::<Vec<_>>()
    );
    let second = read_models
        .owners("crown", 25, first.next_cursor.as_deref())
        .await
        .expect("owners read");
    assert_eq!(
        second
            .entries
            .iter()
            .map(|owner| owner.serial)
            .collect::<Vec<_>>(),
        (11..=30).collect::<Vec<_>>()
    );
    assert_eq!(second.next_cursor, None);

    // Inventory: buyer01 holds serials 1, 5, 9, ... 29 (8 of them).
    let first = read_models
        .inventory("buyer01", 5, None)
        .await
        .expect("inventory reads");
    let second = read_models
        .inventory("buyer01", 5, first.next_cursor.as_deref())
        .await
        .expect("inventory reads");
    let serials: Vec<Option<u32>> = first
        .entries
        .iter()
        .chain(&second.entries)
        .map(|entry| entry.serial)
        .collect();
    assert_eq!(
        serials,
        (0..8).map(|index| Some(1 + 4 * index)).collect::<Vec<_>>()
    );
    assert_eq!(second.next_cursor, None);

    // Transactions: newest first across pages; an exact multiple ends with no cursor.
    let first = read_models
        .transactions("buyer01", 6, None)
        .await
        .expect("transactions read");
    let second = read_models
        .transactions("buyer01", 6, first.next_cursor.as_deref())
        .await
        .expect("transactions read");
    let amounts: Vec<i64> = first
        .entries
        .iter()
        .chain(&second.entries)
        .map(|entry| entry.amount)
        .collect();
    assert_eq!(amounts, (1..=12).rev().collect::<Vec<i64>>());
    assert_eq!(second.next_cursor, None);

    // Limits are clamped; bad or foreign cursors are refused.
    let everything = read_models
        .transactions("buyer01", PAGE_SIZE_MAX * 10, None)
        .await
        .expect("transactions read");
    assert_eq!(everything.entries.len(), 12);
    let zero = read_models
        .transactions("buyer01", 0, None)
        .await
        .expect("transactions read");
    assert_eq!(zero.entries.len(), 1);
    for bad in ["", "not-a-cursor", "12", "zz"] {
        assert_eq!(
            read_models.owners("crown", 10, Some(bad)).await,
            Err(ReadError::BadCursor),
            "{bad}"
        );
        assert_eq!(
            read_models
                .transactions("buyer01", 10, Some(bad))
                .await
                .err(),
            Some(ReadError::BadCursor),
            "{bad}"
        );
    }
    let owners_cursor = first_owner_cursor(&*read_models).await;
    assert_eq!(
        read_models
            .resale_listings("crown", 10, Some(&owners_cursor))
            .await,
        Err(ReadError::BadCursor)
    );
    assert_eq!(
        read_models
            .inventory("buyer01", 10, Some(&owners_cursor))
            .await
            .err(),
        Some(ReadError::BadCursor)
    );
}

async fn first_owner_cursor(read_models: &dyn ReadModels) -> String {
    read_models
        .owners("crown", 1, None)
        .await
        .expect("owners read")
        .next_cursor
        .expect("more owners follow")
}

/// An item's history over several UTC days: sales (primary and resale),
/// a refund that restates the day of its sale, listing changes; and a data
/// directory written before the history existed is projected again on open.
#[tokio::test]
async fn the_item_history_counts_each_day_and_older_directories_are_projected_again() {
    const DAY: u64 = projectors::DAY_MS;
    let directory = TempDir::new("history");
    let mut log = Log::default();
    let mut envelopes = Vec::new();
    let mut push =
        |shard: u16, event: Event, at_ms: u64| envelopes.push(log.seal(shard, event, at_ms));
    let completed_resale = |purchase_id: &str, price: i64| Event::CommandCompleted {
        key: format!("purchase:{purchase_id}"),
        completion: Completion {
            result: Ok(Success::ResalePurchased {
                item_id: item("crown"),
                serial: 1,
                price,
                seller_id: user("bob"),
                balance_after: 0,
            }),
            positions: Vec::new(),
            deliveries: Vec::new(),
            retry_after_ms: None,
        },
    };
    let listed = |listing_id: &str, serial: u32, price: i64| Event::ListingCreated {
        listing_id: listing(listing_id),
        item_id: item("crown"),
        serial,
        seller_id: user("bob"),
        price,
    };
    push(ITEMS, publish("crown", "carol", 100, Some(10)), 5);
    // Day 1: two primary sales at 100, then 200; a listing at 500.
    push(
        PURCHASES,
        completed_item_purchase("p1", "crown", 100, Some(1)),
        DAY + 10,
    );
    push(
        PURCHASES,
        completed_item_purchase("p2", "crown", 200, Some(2)),
        DAY + 20,
    );
    push(ITEMS, listed("l1", 1, 500), DAY + 30);
    // Day 2: nothing. Day 3: a cheaper listing, p1 refunded (restates day
    // 1), a resale at 300 through the cheaper listing (the ask goes back
    // to 500).
    push(ITEMS, listed("l2", 2, 250), 3 * DAY + 1);
    push(
        PURCHASES,
        Event::RefundProgressed {
            purchase_id: purchase("p1"),
            progress: ledger_core::RefundProgress::Refunded {
                refund_id: RefundId::parse("r1").expect("valid"),
            },
        },
        3 * DAY + 2,
    );
    push(PURCHASES, completed_resale("p3", 300), 3 * DAY + 3);
    push(
        ITEMS,
        Event::SerialTransferred {
            item_id: item("crown"),
            serial: 2,
            listing_id: listing("l2"),
            purchase_id: purchase("p3"),
            from_user_id: user("bob"),
            to_user_id: user("dave"),
            price: 300,
            at_ms: 3 * DAY + 3,
        },
        3 * DAY + 4,
    );
    // Day 4: the last listing is cancelled.
    push(
        ITEMS,
        Event::ListingEnded {
            listing_id: listing("l1"),
            item_id: item("crown"),
            serial: 1,
            reason: ListingEndReason::Cancelled,
        },
        4 * DAY + 1,
    );

    let expected = |days: &projectors::ItemDays| {
        let buckets = projectors::history_buckets(0, 6, days);
        let summary: Vec<_> = buckets
            .iter()
            .map(|bucket| {
                (
                    bucket.day,
                    bucket.primary_sales_count,
                    bucket.resale_sales_count,
                    bucket.refunded_count,
                    bucket.revenue,
                    bucket.average_price,
                    bucket.recent_average_price,
                    bucket.lowest_resale_ask,
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                (0, 0, 0, 0, 0, None, None, None),
                // p1 (100) refunded; RAP 100, then 100 + 100/10 = 110.
                (1, 1, 0, 1, 200, Some(200), Some(110), Some(500)),
                (2, 0, 0, 0, 0, None, Some(110), Some(500)),
                // 110 + (300 - 110)/10 = 129; l2 (250) sold, l1 (500) left.
                (3, 0, 1, 0, 300, Some(300), Some(129), Some(500)),
                (4, 0, 0, 0, 0, None, Some(129), None),
                (5, 0, 0, 0, 0, None, Some(129), None),
            ]
        );
    };
    {
        let store = SqliteStore::open(&directory.path).expect("store opens");
        append_each(&store, &envelopes).await;
        project_all(&store).await;
        let read_models = store.read_models();
        expected(
            &read_models
                .item_days("crown", 0, 6)
                .await
                .expect("history read"),
        );
        // A range that starts later takes the figures as they stood.
        let later = read_models
            .item_days("crown", 2, 3)
            .await
            .expect("history read");
        assert_eq!(later.recent_average_price_before, Some(110));
        assert_eq!(later.lowest_resale_ask_before, Some(500));
        assert!(later.days.is_empty());
        assert_eq!(
            read_models.item_days("nothing", 0, 6).await,
            Ok(projectors::ItemDays::default())
        );
        drop(read_models);
        drop(store);
    }
    // A directory written before the history: its tables are missing.
    {
        let database = directory
            .path
            .join(ledger_store_sqlite::READ_MODELS_FILE_NAME);
        let connection = rusqlite::Connection::open(database).expect("database opens");
        connection
            .busy_timeout(Duration::from_secs(10))
            .expect("busy timeout set");
        connection
            .execute_batch("DROP TABLE item_days; DROP TABLE item_sale_days;")
            .expect("tables dropped");
    }
    let store = SqliteStore::open(&directory.path).expect("store opens");
    project_all(&store).await;
    expected(
        &store
            .read_models()
            .item_days("crown", 0, 6)
            .await
            .expect("history read"),
    );
}

/// The steps a read-back must give: the projection's own, event by event.
fn steps_told_by(records: &[BatchRecord], purchase_id: &str) -> Vec<projectors::PurchaseStepView> {
    let mut steps = Vec::new();
    for record in records {
        for logged in record.logged() {
            let event = logged.event().expect("event decodes");
            for change in projectors::trace::purchase_steps(&logged, &event) {
                if let projectors::Change::PurchaseStep(step) = change {
                    if step.purchase_id.as_str() == purchase_id {
                        steps.push(step.into_view());
                    }
                }
            }
        }
    }
    steps
}

#[tokio::test]
async fn purchase_steps_are_read_back_from_the_log_and_replace_the_old_table() {
    let directory = TempDir::new("purchase-steps");
    let mut log = Log::default();
    let mut records = purchase_history(&mut log);
    // Several entries in one record, two of them about p1: each entry is
    // found by its index, and the step of an unrelated one is not told.
    records.push(log.seal_many(
        USERS,
        vec![
            grant("g-erin", "erin", 1_000, 1_000),
            settle("p1", "dora", true, 30, 20),
            debit("p9", "bob", 5, &[], 70),
            settle("p1", "eve", true, 10, 5),
        ],
        70,
    ));
    let expected = steps_told_by(&records, "p1");
    assert!(expected.len() >= 6, "{expected:?}");
    assert!(
        expected
            .iter()
            .any(|step| step.step == "settled" && step.user_id == "eve"),
        "{expected:?}"
    );
    {
        let store = SqliteStore::open(&directory.path).expect("store opens");
        append_each(&store, &records).await;
        project_all(&store).await;
        let read_models = store.read_models();
        assert_eq!(
            read_models.purchase_steps("p1").await.expect("steps read"),
            expected
        );
        assert_eq!(
            read_models.purchase_steps("p9").await.expect("steps read"),
            steps_told_by(&records, "p9")
        );
        assert_eq!(read_models.purchase_steps("p-none").await, Ok(Vec::new()));
    }
    // A directory written when steps had a table of their own, and the read
    // models lived in the log's database: the old tables go, the read models
    // get their file and are projected from the log, the story is the same.
    let database = directory.path.join(ledger_store_sqlite::DATABASE_FILE_NAME);
    {
        for suffix in ["", "-wal", "-shm"] {
            let file = directory.path.join(format!(
                "{}{suffix}",
                ledger_store_sqlite::READ_MODELS_FILE_NAME
            ));
            if file.exists() {
                std::fs::remove_file(file).expect("the read models' file is removed");
            }
        }
        let connection = rusqlite::Connection::open(&database).expect("database opens");
        connection
            .execute_batch(
                "CREATE TABLE balances (user_id TEXT PRIMARY KEY, balance INTEGER NOT NULL,
                     pending INTEGER NOT NULL) WITHOUT ROWID;
                 INSERT INTO balances VALUES ('bob', 1, 0);
                 CREATE TABLE purchase_steps (purchase_id TEXT NOT NULL, position TEXT NOT NULL,
                     step TEXT NOT NULL, subject TEXT NOT NULL, user_id TEXT NOT NULL, serial INTEGER,
                     amount INTEGER, detail TEXT NOT NULL, at_ms INTEGER NOT NULL,
                     PRIMARY KEY (purchase_id, position, step, subject)) WITHOUT ROWID;
                 INSERT INTO purchase_steps VALUES ('p1', '1.1', 'reserved', 'crown', 'bob', 1, NULL, '', 20);",
            )
            .expect("the old layout is made");
    }
    let store = SqliteStore::open(&directory.path).expect("store opens");
    project_all(&store).await;
    assert_eq!(
        store
            .read_models()
            .purchase_steps("p1")
            .await
            .expect("steps read"),
        expected
    );
    let connection = rusqlite::Connection::open(&database).expect("database opens");
    let old_tables: i64 = connection
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE name IN ('purchase_steps', 'balances')",
            [],
            |row| row.get(0),
        )
        .expect("schema reads");
    assert_eq!(old_tables, 0, "the old tables are dropped");
}
