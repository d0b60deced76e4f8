//! A realistic event stream from the real embedded ledger: `engine::Engine`
//! on a `store_sqlite::SqliteStore` in a temporary directory, 4 shards, a
//! scenario of grants, publishes, purchases (items, Limiteds, bundles),
//! price and sale-state changes, listings, resales, cancels and refunds,
//! with the embedded projector keeping SQLite's read models, which the CQL
//! read models are compared with.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use engine::ports::{CommandBus, EventStore};
use engine::{Engine, EngineConfig};
use ledger_core::codec::BatchRecord;
use ledger_core::{
    Actor, BundleId, Command, CommandMeta, Completion, Config, GrantId, ItemDefinition, ItemId,
    ListingId, PurchaseId, PurchaseTarget, RefundId, RejectionCode, Role, ShardId, UserId,
};
use projectors::ReadModels;
use store_sqlite::SqliteStore;

pub const SHARD_COUNT: u16 = 4;
/// Short enough for the test to wait for releases, long enough for the
/// refunds that follow their purchases closely.
const ESCROW_HOLD_MS: u64 = 4_000;

/// A unique, empty directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    fn new(prefix: &str) -> TempDir {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|duration| duration.as_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "{prefix}-{}-{}-{nanos}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&path).expect("temp dir is creatable");
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What the scenario left: the embedded read models, every shard's log and
/// every command's completion.
pub struct Scenario {
    pub store: Arc<SqliteStore>,
    pub read_models: Arc<dyn ReadModels>,
    /// Records of each shard, in sequence order (index = shard).
    pub records: Vec<Vec<BatchRecord>>,
    pub completions: Vec<Completion>,
    pub users: Vec<String>,
    pub items: Vec<String>,
    pub bundles: Vec<String>,
    pub data_dir: TempDir,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|duration| duration.as_millis() as u64)
        .unwrap_or(0)
}

fn user(id: &str) -> UserId {
    UserId::parse(id).expect("valid user id")
}
fn item(id: &str) -> ItemId {
    ItemId::parse(id).expect("valid item id")
}
fn purchase(id: &str) -> PurchaseId {
    PurchaseId::parse(id).expect("valid purchase id")
}
fn listing(id: &str) -> ListingId {
    ListingId::parse(id).expect("valid listing id")
}
fn bundle(id: &str) -> BundleId {
    BundleId::parse(id).expect("valid bundle id")
}

struct Driver {
    engine: Engine,
    read_models: Arc<dyn ReadModels>,
    completions: Vec<Completion>,
}

impl Driver {
    /// Runs `command` as an admin, waits until the embedded read models
    /// cover its completion (its effects after completion included), and
    /// checks its outcome.
    async fn run(&mut self, command: Command, expected: Result<(), RejectionCode>) {
        let meta = CommandMeta {
            at_ms: now_ms(),
            actor: Actor {
                role: Role::Admin,
                user_id: user("admin"),
            },
        };
        let completion = self
            .engine
            .submit(command.clone(), meta)
            .await
            .unwrap_or_else(|error| panic!("{command:?} is submitted: {error}"));
        let outcome = completion
            .result
            .as_ref()
            .map(|_| ())
            .map_err(|rejection| rejection.code);
        assert_eq!(
            outcome, expected,
            "{command:?} gave {:?}",
            completion.result
        );
        let position = completion.read_position();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self
            .read_models
            .covers(&position)
            .await
            .expect("sqlite coverage read")
        {
            assert!(Instant::now() < deadline, "{command:?} is never projected");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        self.completions.push(completion);
    }

    async fn grant(&mut self, grant_id: &str, user_id: &str, amount: i64) {
        self.run(
            Command::Grant {
                grant_id: GrantId::parse(grant_id).expect("valid grant id"),
                user_id: user(user_id),
                amount,
            },
            Ok(()),
        )
        .await;
    }

    async fn publish(&mut self, definition: ItemDefinition) {
        self.run(Command::PublishItem(definition), Ok(())).await;
    }

    async fn buy(
        &mut self,
        purchase_id: &str,
        buyer_id: &str,
        target: PurchaseTarget,
        expected_price: i64,
        expected: Result<(), RejectionCode>,
    ) {
        self.run(
            Command::Purchase {
                purchase_id: purchase(purchase_id),
                buyer_id: user(buyer_id),
                target,
                expected_price,
                region: None,
            },
            expected,
        )
        .await;
    }

    async fn buy_item(
        &mut self,
        purchase_id: &str,
        buyer_id: &str,
        item_id: &str,
        expected_price: i64,
        expected: Result<(), RejectionCode>,
    ) {
        let target = PurchaseTarget::Item(item(item_id));
        self.buy(purchase_id, buyer_id, target, expected_price, expected)
            .await;
    }

    async fn list(
        &mut self,
        listing_id: &str,
        seller_id: &str,
        item_id: &str,
        serial: u32,
        price: i64,
        expected: Result<(), RejectionCode>,
    ) {
        self.run(
            Command::CreateListing {
                listing_id: listing(listing_id),
                seller_id: user(seller_id),
                item_id: item(item_id),
                serial,
                price,
            },
            expected,
        )
        .await;
    }

    async fn buy_listing(
        &mut self,
        purchase_id: &str,
        buyer_id: &str,
        listing_id: &str,
        expected_price: i64,
        expected: Result<(), RejectionCode>,
    ) {
        self.run(
            Command::ResalePurchase {
                purchase_id: purchase(purchase_id),
                buyer_id: user(buyer_id),
                listing_id: listing(listing_id),
                expected_price,
            },
            expected,
        )
        .await;
    }

    async fn refund(
        &mut self,
        refund_id: &str,
        purchase_id: &str,
        expected: Result<(), RejectionCode>,
    ) {
        self.run(
            Command::Refund {
                refund_id: RefundId::parse(refund_id).expect("valid refund id"),
                purchase_id: purchase(purchase_id),
            },
            expected,
        )
        .await;
    }
}

fn definition(
    item_id: &str,
    creator_id: &str,
    price: i64,
    supply: Option<u32>,
    max_per_user: Option<u32>,
    resellable: bool,
) -> ItemDefinition {
    ItemDefinition {
        item_id: item(item_id),
        creator_id: user(creator_id),
        name: format!("The {item_id}"),
        price,
        supply,
        max_per_user,
        starts_at_ms: None,
        ends_at_ms: None,
        resellable,
        kind: Default::default(),
    }
}

/// Runs the scenario on a fresh embedded ledger and returns what it left.
pub async fn run() -> Scenario {
    use RejectionCode::*;
    let data_dir = TempDir::new("read-models-cql-scenario");
    let store = SqliteStore::open(&data_dir.0).expect("sqlite store opens");
    let mut core = Config::new(SHARD_COUNT);
    core.escrow_hold_ms = ESCROW_HOLD_MS;
    let mut engine_config = EngineConfig::new(core);
    engine_config.tick_interval = Duration::from_millis(50);
    let engine = Engine::start(store.clone(), engine_config)
        .await
        .expect("engine starts");
    let (stop_projector, stopped) = tokio::sync::watch::channel(false);
    let projector = tokio::spawn(store.clone().run_projector(stopped));
    let read_models = store.read_models();
    let mut driver = Driver {
        engine: engine.clone(),
        read_models: read_models.clone(),
        completions: Vec::new(),
    };

    for (grant_id, user_id, amount) in [
        ("g-alice", "alice", 2_000),
        ("g-bob", "bob", 2_000),
        ("g-carol", "carol", 1_500),
        ("g-dave", "dave", 1_000),
        ("g-erin", "erin", 300),
        ("g-cora", "cora", 100),
        ("g-alice-2", "alice", 500),
    ] {
        driver.grant(grant_id, user_id, amount).await;
    }
    driver
        .publish(definition("hat", "cora", 100, None, None, false))
        .await;
    driver
        .publish(definition("cap", "cora", 50, None, None, false))
        .await;
    driver
        .publish(definition("scarf", "cody", 80, None, None, false))
        .await;
    driver
        .publish(definition("crown", "cora", 300, Some(5), Some(2), true))
        .await;
    driver
        .publish(definition("ring", "cody", 200, Some(2), None, false))
        .await;
    driver
        .publish(definition("gem", "cody", 500, Some(3), None, true))
        .await;
    let mut expired = definition("badge", "cody", 10, None, None, false);
    expired.ends_at_ms = Some(1_000);
    driver.publish(expired).await;
    driver
        .run(
            Command::CreateBundle {
                bundle_id: bundle("kit"),
                creator_id: user("cora"),
                name: "Hat and cap".to_string(),
                item_ids: vec![item("hat"), item("cap")],
                price: 120,
            },
            Ok(()),
        )
        .await;
    driver
        .run(
            Command::CreateBundle {
                bundle_id: bundle("bad-kit"),
                creator_id: user("cora"),
                name: "With a Limited".to_string(),
                item_ids: vec![item("hat"), item("crown")],
                price: 350,
            },
            Err(ValidationFailed),
        )
        .await;

    let kit = || PurchaseTarget::Bundle(bundle("kit"));
    driver.buy_item("p1", "alice", "hat", 100, Ok(())).await;
    driver.buy_item("p2", "bob", "hat", 100, Ok(())).await;
    driver.buy_item("p3", "carol", "cap", 50, Ok(())).await;
    driver.buy("p4", "dave", kit(), 120, Ok(())).await;
    // Alice owns the hat already: the bundle grants only the cap.
    driver.buy("p5", "alice", kit(), 120, Ok(())).await;
    driver
        .buy_item("p6", "alice", "hat", 100, Err(AlreadyOwned))
        .await;
    driver
        .buy_item("p6b", "bob", "badge", 10, Err(NotOnSale))
        .await;
    driver
        .run(
            Command::Reprice {
                item_id: item("hat"),
                price: 120,
            },
            Ok(()),
        )
        .await;
    driver
        .buy_item("p7", "erin", "hat", 100, Err(PriceChanged))
        .await;
    driver.buy_item("p8", "erin", "hat", 120, Ok(())).await;
    driver.buy_item("p9", "bob", "crown", 300, Ok(())).await;
    driver.buy_item("p10", "bob", "crown", 300, Ok(())).await;
    driver
        .buy_item("p11", "bob", "crown", 300, Err(QuantityLimitReached))
        .await;
    driver.buy_item("p12", "carol", "crown", 300, Ok(())).await;
    driver.buy_item("p13", "dave", "ring", 200, Ok(())).await;
    // Reserved, then refused for funds: the reservation is cancelled.
    driver
        .buy_item("p14", "erin", "ring", 200, Err(InsufficientFunds))
        .await;
    driver.buy_item("p15", "alice", "ring", 200, Ok(())).await;
    driver
        .buy_item("p16", "bob", "ring", 200, Err(SoldOut))
        .await;
    driver
        .run(
            Command::SetOnSale {
                item_id: item("scarf"),
                on_sale: false,
            },
            Ok(()),
        )
        .await;
    driver
        .buy_item("p17", "carol", "scarf", 80, Err(NotOnSale))
        .await;
    driver
        .run(
            Command::SetOnSale {
                item_id: item("scarf"),
                on_sale: true,
            },
            Ok(()),
        )
        .await;
    driver.buy_item("p18", "carol", "scarf", 80, Ok(())).await;
    driver.buy_item("p19", "dave", "gem", 500, Ok(())).await;

    // Refunds while the creators' shares are in escrow: a non-limited item
    // (inventory and sold count go back), a Limited (the serial is revoked
    // and sold again).
    driver.refund("r1", "p3", Ok(())).await;
    driver.refund("r2", "p13", Ok(())).await;
    driver.buy_item("p20", "bob", "ring", 200, Ok(())).await;

    driver.list("l1", "bob", "crown", 1, 400, Ok(())).await;
    driver.list("l2", "bob", "crown", 2, 350, Ok(())).await;
    driver.list("l3", "carol", "crown", 3, 450, Ok(())).await;
    driver
        .list("l4", "alice", "ring", 2, 300, Err(NotResellable))
        .await;
    driver.list("l5", "dave", "gem", 1, 650, Ok(())).await;
    driver
        .list("l5b", "erin", "gem", 1, 640, Err(NotOwner))
        .await;
    driver.buy_listing("rp1", "alice", "l2", 350, Ok(())).await;
    driver
        .buy_listing("rp2", "bob", "l1", 400, Err(PurchaserIsSeller))
        .await;
    driver
        .run(
            Command::CancelListing {
                listing_id: listing("l3"),
            },
            Ok(()),
        )
        .await;
    driver
        .buy_listing("rp3", "dave", "l3", 450, Err(ListingUnavailable))
        .await;
    driver.list("l6", "carol", "crown", 3, 380, Ok(())).await;
    // Serial 1 is listed (not reserved): the refund revokes it and takes
    // its listing off the book.
    driver.refund("r3", "p9", Ok(())).await;
    driver.refund("r4", "rp1", Err(NotRefundable)).await;
    driver.refund("r5", "p3", Err(AlreadyRefunded)).await;
    driver.grant("g-erin-2", "erin", 500).await;
    driver.buy_item("p21", "erin", "crown", 300, Ok(())).await;
    driver.buy_listing("p22", "bob", "l5", 650, Ok(())).await;
    driver.buy_item("p23", "carol", "hat", 120, Ok(())).await;
    driver
        .run(
            Command::Reprice {
                item_id: item("crown"),
                price: 320,
            },
            Ok(()),
        )
        .await;
    driver.buy_item("p24", "dave", "crown", 320, Ok(())).await;

    // Every share still in escrow is released by the ledger's clock.
    let creators = ["cora", "cody"];
    let deadline = Instant::now() + Duration::from_millis(ESCROW_HOLD_MS) + Duration::from_secs(20);
    for creator in creators {
        while read_models
            .earnings(creator)
            .await
            .expect("sqlite earnings read")
            .pending
            != 0
        {
            assert!(
                Instant::now() < deadline,
                "escrow of {creator} is never released"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    driver.refund("r6", "p1", Err(RefundWindowClosed)).await;

    engine.shutdown().await;
    let _ = stop_projector.send(true);
    let _ = projector.await;
    store
        .project_all_pending()
        .await
        .expect("sqlite projection");

    let mut records = Vec::new();
    for shard in 0..SHARD_COUNT {
        let mut log: Vec<BatchRecord> = Vec::new();
        loop {
            let after = log.last().map_or(0, BatchRecord::last_sequence);
            let page = store
                .read_shard(ShardId(shard), after, 1_000)
                .await
                .expect("shard read");
            if page.is_empty() {
                break;
            }
            log.extend(page);
        }
        records.push(log);
    }
    let event_types: BTreeSet<&str> = records
        .iter()
        .flatten()
        .flat_map(BatchRecord::logged)
        .map(|logged| logged.entry.event_type())
        .collect();
    for wanted in [
        "currency_granted",
        "item_published",
        "item_repriced",
        "item_sale_toggled",
        "bundle_created",
        "serial_reserved",
        "reservation_cancelled",
        "serial_sold",
        "buyer_debited",
        "sale_settled",
        "seller_credited",
        "escrow_released",
        "listing_created",
        "listing_ended",
        "serial_transferred",
        "escrow_reversed",
        "serial_revoked",
        "buyer_refunded",
        "message_received",
        "command_completed",
        "purchase_completed",
    ] {
        assert!(
            event_types.contains(wanted),
            "the scenario produced no {wanted} event"
        );
    }

    Scenario {
        store,
        read_models,
        records,
        completions: driver.completions,
        users: [
            "alice", "bob", "carol", "dave", "erin", "cora", "cody", "nobody",
        ]
        .map(str::to_string)
        .to_vec(),
        items: [
            "hat",
            "cap",
            "scarf",
            "crown",
            "ring",
            "gem",
            "badge",
            "unknown-item",
        ]
        .map(str::to_string)
        .to_vec(),
        bundles: ["kit", "bad-kit", "unknown-bundle"]
            .map(str::to_string)
            .to_vec(),
        data_dir,
    }
}
