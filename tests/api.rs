//! End-to-end scenarios through the real HTTP APIs of a real embedded ledger.

use std::collections::BTreeSet;
use std::sync::Arc;

use ledger_core::Role;
use marketplace_ledger::{spawn_app, TestApp};
use serde_json::{json, Value};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// Funds `count` users `buyer-<i>` with `amount` each, `parallelism` at a time.
async fn fund(app: &Arc<TestApp>, prefix: &str, count: usize, amount: i64) {
    let permits = Arc::new(Semaphore::new(64));
    let mut tasks = JoinSet::new();
    for index in 0..count {
        let app = app.clone();
        let permit = permits.clone().acquire_owned().await.unwrap();
        let prefix = prefix.to_string();
        tasks.spawn(async move {
            let answer = app
                .grant(
                    &format!("grant-{prefix}-{index}"),
                    &format!("{prefix}-{index}"),
                    amount,
                )
                .await;
            drop(permit);
            assert_eq!(answer.status, 201, "grant: {}", answer.text);
        });
    }
    while let Some(result) = tasks.join_next().await {
        result.expect("grant task");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limited_drop_never_oversells() {
    let app = Arc::new(spawn_app().await);
    let answer = app
        .publish(json!({"item_id": "crown", "creator_id": "studio", "name": "Crown", "price": 50, "supply": 100, "resellable": true}))
        .await;
    assert_eq!(answer.status, 201, "{}", answer.text);
    fund(&app, "fan", 1_000, 100).await;

    // 2,000 concurrent purchase requests from 1,000 buyers (two each).
    let mut tasks = JoinSet::new();
    for request in 0..2_000 {
        let app = app.clone();
        tasks.spawn(async move {
            let buyer = format!("fan-{}", request % 1_000);
            app.purchase(&format!("drop-{request}"), &buyer, "crown", 50)
                .await
        });
    }
    let mut serials = Vec::new();
    let mut sold_out = 0;
    while let Some(result) = tasks.join_next().await {
        let answer = result.expect("purchase task");
        match answer.status {
            201 => serials.push(
                answer.body["serial"]
                    .as_u64()
                    .expect("a Limited purchase has a serial"),
            ),
            409 if answer.code() == "sold_out" => sold_out += 1,
            other => panic!("unexpected answer {other}: {}", answer.text),
        }
    }
    assert_eq!(serials.len(), 100, "exactly the supply is sold");
    assert_eq!(sold_out, 1_900);
    let unique: BTreeSet<u64> = serials.iter().copied().collect();
    assert_eq!(
        unique,
        (1..=100).collect::<BTreeSet<u64>>(),
        "serials 1..100, once each"
    );

    // Read models agree once the projection catches up: supply, owners, money.
    // In distributed mode these figures come from different shards (the item's,
    // each purchase's home, each buyer's), projected independently, so each
    // is awaited for itself rather than inferred from another.
    let token = app.service();
    let item = wait_for(&app, "/v1/items/crown", |body| {
        body["sold"] == 100 && body["sales_count"] == 100
    })
    .await;
    assert_eq!(item["remaining"], 0);
    let owners = eventually("100 owners of the crown", || async {
        let owners = app
            .all_pages("/v1/items/crown/owners", "owners", None)
            .await;
        (owners.len() == 100).then_some(owners)
    })
    .await;
    let serial_owners: BTreeSet<u64> = owners
        .iter()
        .map(|owner| owner["serial"].as_u64().expect("serial"))
        .collect();
    assert_eq!(
        serial_owners, unique,
        "the owners hold exactly the sold serials"
    );
    let earnings = wait_for_auth(&app, "/v1/creators/studio/earnings", &token, |body| {
        body["sales_count"] == 100 && body["pending"] == 100 * 35
    })
    .await;
    assert_eq!(
        earnings["pending"],
        100 * 35,
        "70% of 50 per sale, held in escrow"
    );
    let expected_total = 1_000 * 100 - 100 * 50;
    eventually("the buyers' balances to add up", || async {
        let mut total_balance = 0;
        for index in 0..1_000 {
            total_balance += app.balance(&format!("fan-{index}"), None).await.0;
        }
        // Balances only go down as purchases are projected: a total below the
        // expected one is a real fault, never a lag.
        assert!(
            total_balance >= expected_total,
            "buyers paid more than for what they got: {total_balance}"
        );
        (total_balance == expected_total).then_some(())
    })
    .await;
    Arc::try_unwrap(app)
        .ok()
        .expect("single owner")
        .stop()
        .await;
}

/// How long a read waits for the read models to show what it asserts: the
/// distributed projector applies shards independently, so a figure projected
/// from one shard can lag another's.
const PROJECTION_DEADLINE: std::time::Duration = std::time::Duration::from_secs(30);

/// Polls `probe` until it returns a value, and fails naming `what` if it never
/// does before the deadline.
async fn eventually<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + PROJECTION_DEADLINE;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "waited {PROJECTION_DEADLINE:?} for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

async fn wait_for(app: &TestApp, path: &str, done: impl Fn(&Value) -> bool) -> Value {
    wait_for_with(app, path, None, done).await
}

async fn wait_for_auth(
    app: &TestApp,
    path: &str,
    token: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    wait_for_with(app, path, Some(token), done).await
}

async fn wait_for_with(
    app: &TestApp,
    path: &str,
    token: Option<&str>,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + PROJECTION_DEADLINE;
    loop {
        let answer = app.get(path, token).await;
        if answer.status == 200 && done(&answer.body) {
            return answer.body;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!(
                "{path} never reached the expected state; last answer: {}",
                answer.text
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_buyer_cannot_overspend_with_concurrent_purchases() {
    let app = Arc::new(spawn_app().await);
    for index in 0..50 {
        let answer = app.publish(json!({"item_id": format!("shirt-{index}"), "creator_id": "tailor", "name": "Shirt", "price": 10})).await;
        assert_eq!(answer.status, 201, "{}", answer.text);
    }
    assert_eq!(app.grant("grant-spender", "spender", 100).await.status, 201);
    let mut tasks = JoinSet::new();
    for index in 0..50 {
        let app = app.clone();
        tasks.spawn(async move {
            app.purchase(
                &format!("spend-{index}"),
                "spender",
                &format!("shirt-{index}"),
                10,
            )
            .await
        });
    }
    let mut succeeded = 0;
    let mut last_position = String::new();
    while let Some(result) = tasks.join_next().await {
        let answer = result.expect("purchase task");
        match answer.status {
            201 => {
                succeeded += 1;
                assert!(
                    answer.body["balance_after"].as_i64().unwrap() >= 0,
                    "balance never negative"
                );
                last_position = answer.body["position"].as_str().unwrap().to_string();
            }
            409 => assert_eq!(answer.code(), "insufficient_funds", "{}", answer.text),
            other => panic!("unexpected {other}: {}", answer.text),
        }
    }
    assert_eq!(succeeded, 10, "funds for exactly ten");
    // The last answer's position covers its own debit, not necessarily the
    // other nine (answers arrive in any order), so the rest is awaited.
    let (balance, _) = app.balance("spender", Some(&last_position)).await;
    assert!((0..=90).contains(&balance), "balance {balance}");
    eventually("the spender's ten debits", || async {
        (app.balance("spender", None).await.0 == 0).then_some(())
    })
    .await;
    let service = app.service();
    let inventory = eventually("the spender's ten items", || async {
        let inventory = app
            .all_pages("/v1/users/spender/inventory", "items", Some(&service))
            .await;
        assert!(
            inventory.len() <= 10,
            "granted more than paid for: {inventory:?}"
        );
        (inventory.len() == 10).then_some(inventory)
    })
    .await;
    assert_eq!(inventory.len(), 10, "paid for ten, granted ten");
    Arc::try_unwrap(app)
        .ok()
        .expect("single owner")
        .stop()
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_commands_return_the_identical_answer() {
    let app = spawn_app().await;
    let first = app.grant("grant-retry", "retrier", 300).await;
    let again = app.grant("grant-retry", "retrier", 300).await;
    assert_eq!(first.status, 201);
    assert_eq!(
        (again.status, &again.text),
        (first.status, &first.text),
        "a retried grant answers identically"
    );
    assert_eq!(
        app.balance("retrier", Some(first.body["position"].as_str().unwrap()))
            .await
            .0,
        300,
        "applied once"
    );

    let conflict = app.grant("grant-retry", "retrier", 301).await;
    assert_eq!(
        (conflict.status, conflict.code()),
        (409, "idempotency_conflict")
    );

    assert_eq!(
        app.publish(json!({"item_id": "mug", "creator_id": "potter", "name": "Mug", "price": 120}))
            .await
            .status,
        201
    );
    let purchase = app.purchase("buy-mug", "retrier", "mug", 120).await;
    let retried = app.purchase("buy-mug", "retrier", "mug", 120).await;
    assert_eq!(purchase.status, 201, "{}", purchase.text);
    assert_eq!(retried.text, purchase.text);
    // A rejection is remembered too: same id, same body, same answer, even after the world changed.
    let poor = app.purchase("buy-mug-2", "pauper", "mug", 120).await;
    assert_eq!((poor.status, poor.code()), (409, "insufficient_funds"));
    assert_eq!(app.grant("grant-pauper", "pauper", 500).await.status, 201);
    let poor_again = app.purchase("buy-mug-2", "pauper", "mug", 120).await;
    assert_eq!(poor_again.text, poor.text);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_economy_scenario() {
    let app = spawn_app().await;
    let admin = app.admin();
    assert_eq!(app.grant("g-alice", "alice", 1_000).await.status, 201);
    assert_eq!(app.grant("g-bob", "bob", 1_000).await.status, 201);
    let creator = app.token(Role::User, "studio");
    let hat = app
        .post(
            "/v1/items",
            Some(&creator),
            &json!({"item_id": "hat", "creator_id": "studio", "name": "Hat", "price": 100}),
        )
        .await;
    assert_eq!(hat.status, 201, "{}", hat.text);
    let other = app
        .post(
            "/v1/items",
            Some(&creator),
            &json!({"item_id": "scarf", "creator_id": "studio", "name": "Scarf", "price": 40}),
        )
        .await;
    assert_eq!(other.status, 201);
    let crown = app
        .post(
            "/v1/items",
            Some(&creator),
            &json!({"item_id": "crown", "creator_id": "studio", "name": "Crown", "price": 200, "supply": 3, "max_per_user": 1, "resellable": true}),
        )
        .await;
    assert_eq!(crown.status, 201, "{}", crown.text);
    // A user cannot publish for somebody else.
    let forged = app
        .post(
            "/v1/items",
            Some(&creator),
            &json!({"item_id": "x", "creator_id": "someone", "name": "X", "price": 1}),
        )
        .await;
    assert_eq!((forged.status, forged.code()), (403, "forbidden"));

    // Primary purchases, read-your-writes.
    let alice = app.token(Role::User, "alice");
    let bought = app
        .post("/v1/purchases", Some(&alice), &json!({"purchase_id": "a-hat", "buyer_id": "alice", "item_id": "hat", "expected_price": 100}))
        .await;
    assert_eq!(bought.status, 201, "{}", bought.text);
    assert_eq!(bought.body["status"], "completed");
    assert_eq!(bought.body["balance_after"], 900);
    let (balance, _) = app
        .balance("alice", Some(bought.body["position"].as_str().unwrap()))
        .await;
    assert_eq!(balance, 900);
    let twice = app
        .post("/v1/purchases", Some(&alice), &json!({"purchase_id": "a-hat-2", "buyer_id": "alice", "item_id": "hat", "expected_price": 100}))
        .await;
    assert_eq!((twice.status, twice.code()), (409, "already_owned"));
    let stale = app
        .post("/v1/purchases", Some(&alice), &json!({"purchase_id": "a-scarf", "buyer_id": "alice", "item_id": "scarf", "expected_price": 39}))
        .await;
    assert_eq!((stale.status, stale.code()), (409, "price_changed"));
    let own = app
        .post("/v1/purchases", Some(&creator), &json!({"purchase_id": "s-hat", "buyer_id": "studio", "item_id": "hat", "expected_price": 100}))
        .await;
    assert_eq!((own.status, own.code()), (409, "purchaser_is_seller"));

    // Bundles: granted all-or-nothing, alice already owns the hat and still gets the scarf.
    let bundle = app
        .post("/v1/bundles", Some(&creator), &json!({"bundle_id": "outfit", "creator_id": "studio", "name": "Outfit", "item_ids": ["hat", "scarf"], "price": 120}))
        .await;
    assert_eq!(bundle.status, 201, "{}", bundle.text);
    let outfit = app
        .post("/v1/purchases", Some(&alice), &json!({"purchase_id": "a-outfit", "buyer_id": "alice", "bundle_id": "outfit", "expected_price": 120}))
        .await;
    assert_eq!(outfit.status, 201, "{}", outfit.text);
    let outfit_again = app
        .post("/v1/purchases", Some(&alice), &json!({"purchase_id": "a-outfit-2", "buyer_id": "alice", "bundle_id": "outfit", "expected_price": 120}))
        .await;
    assert_eq!(
        (outfit_again.status, outfit_again.code()),
        (409, "already_owned")
    );

    // Limiteds, per-user cap, resale.
    let first_crown = app
        .post("/v1/purchases", Some(&alice), &json!({"purchase_id": "a-crown", "buyer_id": "alice", "item_id": "crown", "expected_price": 200}))
        .await;
    assert_eq!(first_crown.body["serial"], 1, "{}", first_crown.text);
    let capped = app
        .post("/v1/purchases", Some(&alice), &json!({"purchase_id": "a-crown-2", "buyer_id": "alice", "item_id": "crown", "expected_price": 200}))
        .await;
    assert_eq!(
        (capped.status, capped.code()),
        (409, "quantity_limit_reached")
    );
    let listing = app
        .post("/v1/resale-listings", Some(&alice), &json!({"listing_id": "l-1", "seller_id": "alice", "item_id": "crown", "serial": 1, "price": 500}))
        .await;
    assert_eq!(listing.status, 201, "{}", listing.text);
    let bob = app.token(Role::User, "bob");
    let not_owner = app
        .post("/v1/resale-listings", Some(&bob), &json!({"listing_id": "l-2", "seller_id": "bob", "item_id": "crown", "serial": 1, "price": 5}))
        .await;
    assert_eq!((not_owner.status, not_owner.code()), (409, "not_owner"));
    let listings = app
        .get(
            "/v1/items/crown/resale-listings?after="
                .to_string()
                .as_str()
                .replace("?after=", "")
                .as_str(),
            None,
        )
        .await;
    assert_eq!(listings.status, 200);
    let resale = app
        .post("/v1/resale-purchases", Some(&bob), &json!({"purchase_id": "b-crown", "buyer_id": "bob", "listing_id": "l-1", "expected_price": 500}))
        .await;
    assert_eq!(resale.status, 201, "{}", resale.text);
    assert_eq!(resale.body["seller_id"], "alice");
    assert_eq!(resale.body["serial"], 1);
    let gone = app
        .post("/v1/resale-purchases", Some(&alice), &json!({"purchase_id": "a-crown-back", "buyer_id": "alice", "listing_id": "l-1", "expected_price": 500}))
        .await;
    assert_eq!((gone.status, gone.code()), (409, "listing_unavailable"));
    let position = resale.body["position"].as_str().unwrap().to_string();
    // The answer's position also covers the serial's move on the item's shard.
    let owners = app
        .get(&format!("/v1/items/crown/owners?after={position}"), None)
        .await;
    assert_eq!(
        owners.body["owners"],
        json!([{"serial": 1, "user_id": "bob"}]),
        "{}",
        owners.text
    );
    let (alice_after_sale, _) = app.balance("alice", Some(&position)).await;
    assert_eq!(
        alice_after_sale,
        1_000 - 100 - 120 - 200 + 350,
        "the reseller's proceeds are covered too"
    );

    // Refund of the primary crown purchase: the serial moved on, so it is not refundable.
    let refused = app
        .post(
            "/v1/refunds",
            Some(&admin),
            &json!({"refund_id": "r-crown", "purchase_id": "a-crown"}),
        )
        .await;
    assert_eq!((refused.status, refused.code()), (409, "not_refundable"));
    let resale_refund = app
        .post(
            "/v1/refunds",
            Some(&admin),
            &json!({"refund_id": "r-resale", "purchase_id": "b-crown"}),
        )
        .await;
    assert_eq!(
        (resale_refund.status, resale_refund.code()),
        (409, "not_refundable")
    );
    // Refund the hat: money back, item revoked, creator's escrow reversed.
    let refund = app
        .post(
            "/v1/refunds",
            Some(&admin),
            &json!({"refund_id": "r-hat", "purchase_id": "a-hat"}),
        )
        .await;
    assert_eq!(refund.status, 201, "{}", refund.text);
    let again = app
        .post(
            "/v1/refunds",
            Some(&admin),
            &json!({"refund_id": "r-hat-2", "purchase_id": "a-hat"}),
        )
        .await;
    assert_eq!((again.status, again.code()), (409, "already_refunded"));
    let not_admin = app
        .post(
            "/v1/refunds",
            Some(&alice),
            &json!({"refund_id": "r-x", "purchase_id": "a-outfit"}),
        )
        .await;
    assert_eq!((not_admin.status, not_admin.code()), (403, "forbidden"));

    // Money adds up: alice 1000 - 100 (hat) + 100 (refund) - 120 (outfit) - 200 (crown) + 350 (70% of 500).
    let token = app.service();
    let refund_position = refund.body["position"].as_str().unwrap();
    let wanted = 1_000 - 100 + 100 - 120 - 200 + 350;
    assert_eq!(
        app.balance("alice", Some(refund_position)).await.0,
        wanted,
        "the refund's credit is covered by its position"
    );
    assert_eq!(app.balance("bob", Some(&position)).await.0, 500);
    // Creator: 70% of the outfit (84) + crown (140) in escrow + 10% royalty of 500 (50); the hat share was reversed.
    let earnings = wait_for_auth(&app, "/v1/creators/studio/earnings", &token, |body| {
        body["pending"] == 84 + 140 + 50 && body["lifetime"] == 84 + 140 + 50
    })
    .await;
    assert_eq!(earnings["released"], 0);
    assert_eq!(earnings["lifetime"], 84 + 140 + 50);
    let item = wait_for(&app, "/v1/items/crown", |body| {
        body["sales_count"] == 2 && body["recent_average_price"] == 200 + (500 - 200) / 10
    })
    .await;
    assert_eq!(
        item["recent_average_price"],
        200 + (500 - 200) / 10,
        "RAP moves by a tenth of the difference"
    );
    let owned = eventually(
        "alice's inventory after the refund and the resale",
        || async {
            let inventory = app
                .all_pages("/v1/users/alice/inventory", "items", Some(&alice))
                .await;
            let owned: BTreeSet<String> = inventory
                .iter()
                .map(|e| e["item_id"].as_str().unwrap().to_string())
                .collect();
            (owned.len() == 1).then_some(owned)
        },
    )
    .await;
    assert_eq!(
        owned,
        BTreeSet::from(["scarf".to_string()]),
        "hat revoked by the refund, crown resold"
    );
    let transactions = eventually("alice's transactions", || async {
        let entries = app
            .all_pages("/v1/users/alice/transactions", "entries", Some(&alice))
            .await;
        (entries.len() >= 5).then_some(entries)
    })
    .await;
    assert!(
        transactions.len() >= 5,
        "grant, purchases, refund and resale proceeds are listed: {transactions:?}"
    );
    // Other users' private reads are refused.
    let snoop = app.get("/v1/users/alice/balance", Some(&bob)).await;
    assert_eq!((snoop.status, snoop.code()), (403, "forbidden"));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escrow_is_released_by_the_clock() {
    let app = marketplace_ledger::spawn_app_with(|settings| {
        settings.escrow_hold = std::time::Duration::from_millis(300)
    })
    .await;
    assert_eq!(app.grant("g", "buyer", 100).await.status, 201);
    assert_eq!(
        app.publish(json!({"item_id": "pin", "creator_id": "maker", "name": "Pin", "price": 10}))
            .await
            .status,
        201
    );
    let bought = app.purchase("p-pin", "buyer", "pin", 10).await;
    assert_eq!(bought.status, 201, "{}", bought.text);
    let token = app.service();
    let earnings = wait_for_auth(&app, "/v1/creators/maker/earnings", &token, |body| {
        body["released"] == 7 && body["pending"] == 0
    })
    .await;
    assert_eq!(earnings["pending"], 0);
    // The release credits the maker's wallet; awaited for itself, since it is
    // a different read model from the earnings.
    eventually("the maker's released earnings in its wallet", || async {
        (app.balance("maker", None).await == (7, 0)).then_some(())
    })
    .await;
    let late = app
        .post(
            "/v1/refunds",
            Some(&app.admin()),
            &json!({"refund_id": "late", "purchase_id": "p-pin"}),
        )
        .await;
    assert_eq!((late.status, late.code()), (409, "refund_window_closed"));
    app.stop().await;
}

/// Each command type, then at once every view it changes, read with the
/// answer's `?after=` position and no polling: the view shows the command.
/// In the distributed mode each shard is projected on its own, so this holds
/// only if the position covers every participant of the command. Three
/// rounds, to give a lagging shard three chances to show.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_read_with_after_sees_the_command_before_it() {
    let app = spawn_app().await;
    let service = app.service();
    let admin = app.admin();
    let read = |path: String, position: String| {
        let app = &app;
        let service = &service;
        async move {
            let separator = if path.contains('?') { '&' } else { '?' };
            let answer = app
                .get(&format!("{path}{separator}after={position}"), Some(service))
                .await;
            assert_eq!(
                answer.status, 200,
                "{path} after {position}: {}",
                answer.text
            );
            answer.body
        }
    };
    let position = |answer: &marketplace_ledger::Answer| -> String {
        assert!(
            (200..300).contains(&answer.status),
            "{} {}",
            answer.status,
            answer.text
        );
        answer.body["position"]
            .as_str()
            .expect("a command's answer carries its position")
            .to_string()
    };
    for round in 0..3 {
        let id = |name: &str| format!("{name}-{round}");
        let (buyer, other, maker) = (id("buyer"), id("other"), id("maker"));
        let (hat, pin, crown, outfit) = (id("hat"), id("pin"), id("crown"), id("outfit"));

        // Grants: the wallet.
        for user in [&buyer, &other] {
            let granted = position(&app.grant(&id(&format!("g-{user}")), user, 1_000).await);
            let balance = read(format!("/v1/users/{user}/balance"), granted).await;
            assert_eq!(balance["balance"], 1_000);
        }
        // Publications: the items.
        for (item, price, extra) in [
            (&hat, 100, json!({})),
            (&pin, 50, json!({})),
            (&crown, 200, json!({"supply": 3, "resellable": true})),
        ] {
            let mut body =
                json!({"item_id": item, "creator_id": maker, "name": "Thing", "price": price});
            body.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            let published = position(&app.publish(body).await);
            let view = read(format!("/v1/items/{item}"), published).await;
            assert_eq!(
                (view["price"].as_i64(), view["sold"].as_i64()),
                (Some(price), Some(0))
            );
        }
        // Reprice and sale toggles: the item.
        let repriced = position(
            &app.post(
                &format!("/v1/items/{pin}/price"),
                Some(&service),
                &json!({"price": 60}),
            )
            .await,
        );
        assert_eq!(
            read(format!("/v1/items/{pin}"), repriced).await["price"],
            60
        );
        let off = position(
            &app.post(
                &format!("/v1/items/{pin}/off-sale"),
                Some(&service),
                &json!({}),
            )
            .await,
        );
        assert_eq!(
            read(format!("/v1/items/{pin}"), off).await["on_sale"],
            false
        );
        let on = position(
            &app.post(
                &format!("/v1/items/{pin}/on-sale"),
                Some(&service),
                &json!({}),
            )
            .await,
        );
        assert_eq!(read(format!("/v1/items/{pin}"), on).await["on_sale"], true);
        // A bundle.
        let bundled = position(
            &app.post("/v1/bundles", Some(&service), &json!({"bundle_id": outfit, "creator_id": maker, "name": "Outfit", "item_ids": [hat, pin], "price": 130}))
                .await,
        );
        assert_eq!(
            read(format!("/v1/bundles/{outfit}"), bundled).await["price"],
            130
        );

        // A primary purchase of an unlimited item: the buyer's wallet and
        // inventory, the item's sales, the creator's earnings, the purchase.
        let bought = position(&app.purchase(&id("p-hat"), &buyer, &hat, 100).await);
        assert_eq!(
            read(format!("/v1/users/{buyer}/balance"), bought.clone()).await["balance"],
            900
        );
        let inventory = read(format!("/v1/users/{buyer}/inventory"), bought.clone()).await;
        assert!(
            inventory["items"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["item_id"] == hat.as_str()),
            "{inventory}"
        );
        let item = read(format!("/v1/items/{hat}"), bought.clone()).await;
        assert_eq!(
            (item["sold"].as_i64(), item["sales_count"].as_i64()),
            (Some(1), Some(1)),
            "{item}"
        );
        assert_eq!(
            read(format!("/v1/creators/{maker}/earnings"), bought.clone()).await["pending"],
            70
        );
        read(format!("/v1/purchases/{}", id("p-hat")), bought).await;
        // A bundle: everything in it.
        let bundle_bought = position(
            &app.post("/v1/purchases", Some(&service), &json!({"purchase_id": id("p-outfit"), "buyer_id": other, "bundle_id": outfit, "expected_price": 130}))
                .await,
        );
        let inventory = read(
            format!("/v1/users/{other}/inventory"),
            bundle_bought.clone(),
        )
        .await;
        assert_eq!(
            inventory["items"].as_array().unwrap().len(),
            2,
            "{inventory}"
        );
        assert_eq!(
            read(format!("/v1/items/{pin}"), bundle_bought).await["sold"],
            1
        );
        // A Limited: its serial's owner and the item's sold count.
        let crowned = position(&app.purchase(&id("p-crown"), &buyer, &crown, 200).await);
        let owners = read(format!("/v1/items/{crown}/owners"), crowned.clone()).await;
        assert_eq!(owners["owners"], json!([{"serial": 1, "user_id": buyer}]));
        let item = read(format!("/v1/items/{crown}"), crowned).await;
        assert_eq!(
            (item["sold"].as_i64(), item["remaining"].as_i64()),
            (Some(1), Some(2)),
            "{item}"
        );

        // Listings: the item's resale book.
        let seller = app.token(Role::User, &buyer);
        let listed = position(
            &app.post("/v1/resale-listings", Some(&seller), &json!({"listing_id": id("l-a"), "seller_id": buyer, "item_id": crown, "serial": 1, "price": 300}))
                .await,
        );
        let book = read(format!("/v1/items/{crown}/resale-listings"), listed.clone()).await;
        assert_eq!(book["listings"].as_array().unwrap().len(), 1, "{book}");
        assert_eq!(
            read(format!("/v1/items/{crown}"), listed).await["lowest_resale_price"],
            300
        );
        let cancelled = position(
            &app.delete(&format!("/v1/resale-listings/{}", id("l-a")), Some(&seller))
                .await,
        );
        let book = read(format!("/v1/items/{crown}/resale-listings"), cancelled).await;
        assert_eq!(book["listings"], json!([]));
        let relisted = position(
            &app.post("/v1/resale-listings", Some(&seller), &json!({"listing_id": id("l-b"), "seller_id": buyer, "item_id": crown, "serial": 1, "price": 300}))
                .await,
        );
        // A resale: the serial's owner, the book, the seller's wallet.
        read(format!("/v1/items/{crown}/resale-listings"), relisted).await;
        let resold = position(
            &app.post("/v1/resale-purchases", Some(&service), &json!({"purchase_id": id("p-resale"), "buyer_id": other, "listing_id": id("l-b"), "expected_price": 300}))
                .await,
        );
        let owners = read(format!("/v1/items/{crown}/owners"), resold.clone()).await;
        assert_eq!(owners["owners"], json!([{"serial": 1, "user_id": other}]));
        assert_eq!(
            read(format!("/v1/items/{crown}/resale-listings"), resold.clone()).await["listings"],
            json!([])
        );
        assert_eq!(
            read(format!("/v1/users/{buyer}/balance"), resold).await["balance"],
            700 + 210
        );

        // Refunds: of the unlimited item, and of a Limited's serial.
        let refunded = position(
            &app.post(
                "/v1/refunds",
                Some(&admin),
                &json!({"refund_id": id("r-hat"), "purchase_id": id("p-hat")}),
            )
            .await,
        );
        assert_eq!(
            read(format!("/v1/users/{buyer}/balance"), refunded.clone()).await["balance"],
            1_010
        );
        let inventory = read(format!("/v1/users/{buyer}/inventory"), refunded.clone()).await;
        assert!(
            !inventory["items"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["item_id"] == hat.as_str()),
            "{inventory}"
        );
        // Two copies sold (one in the bundle), one refunded.
        assert_eq!(
            read(format!("/v1/items/{hat}"), refunded.clone()).await["sold"],
            1
        );
        assert_eq!(
            read(format!("/v1/creators/{maker}/earnings"), refunded).await["pending"],
            70 + 91 + 140 + 30 - 70
        );
        let second = position(&app.purchase(&id("p-crown-2"), &buyer, &crown, 200).await);
        read(format!("/v1/items/{crown}/owners"), second).await;
        let revoked = position(
            &app.post(
                "/v1/refunds",
                Some(&admin),
                &json!({"refund_id": id("r-crown"), "purchase_id": id("p-crown-2")}),
            )
            .await,
        );
        let owners = read(format!("/v1/items/{crown}/owners"), revoked.clone()).await;
        assert_eq!(
            owners["owners"],
            json!([{"serial": 1, "user_id": other}]),
            "the refunded serial is back in the pool"
        );
        let item = read(format!("/v1/items/{crown}"), revoked).await;
        assert_eq!(
            (item["sold"].as_i64(), item["remaining"].as_i64()),
            (Some(1), Some(2)),
            "{item}"
        );
    }
    app.stop().await;
}

/// A UUIDv7 (RFC 9562) dated `at_ms`, distinct per `n`.
fn uuid7(at_ms: u64, n: u64) -> String {
    format!(
        "{:08x}-{:04x}-7000-8000-{n:012x}",
        at_ms >> 16,
        at_ms & 0xffff
    )
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_millis() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_the_idempotency_horizon_is_refused_and_never_runs_twice() {
    let app = marketplace_ledger::spawn_app_with(|settings| {
        settings.idempotency_horizon = std::time::Duration::from_secs(3);
        settings.escrow_hold = std::time::Duration::from_millis(300);
    })
    .await;
    let now = now_ms();
    let grant_id = uuid7(now, 1);
    assert_eq!(app.grant(&grant_id, "late", 100).await.status, 201);
    assert_eq!(app.grant("plain-grant-late", "late", 50).await.status, 201);
    assert_eq!(
        app.publish(
            json!({"item_id": "badge", "creator_id": "maker", "name": "Badge", "price": 10})
        )
        .await
        .status,
        201
    );
    // Dated when sent (the distributed services take a while to start).
    let purchase_id = uuid7(now_ms(), 2);
    let bought = app.purchase(&purchase_id, "late", "badge", 10).await;
    assert_eq!(bought.status, 201, "{}", bought.text);
    // Inside the horizon: the stored outcome.
    let again = app.purchase(&purchase_id, "late", "badge", 10).await;
    assert_eq!((again.status, &again.body), (201, &bought.body));

    // Past it: refused, and nothing runs a second time.
    let expired = eventually("the purchase to be forgotten", || async {
        let retry = app.purchase(&purchase_id, "late", "badge", 10).await;
        (retry.status == 409).then_some(retry)
    })
    .await;
    assert_eq!(expired.code(), "idempotency_expired", "{}", expired.text);
    assert_eq!(expired.content_type, "application/problem+json");
    for retry in [
        app.grant(&grant_id, "late", 100).await,
        app.grant("plain-grant-late", "late", 50).await,
        // An id never seen, dated two days ago: older than the horizon.
        app.grant(&uuid7(now - 2 * 86_400_000, 3), "late", 100)
            .await,
    ] {
        assert_eq!(
            (retry.status, retry.code()),
            (409, "idempotency_expired"),
            "{}",
            retry.text
        );
    }
    assert_eq!(app.balance("late", None).await.0, 140);
    // A fresh UUIDv7 still runs.
    assert_eq!(app.grant(&uuid7(now_ms(), 4), "late", 1).await.status, 201);
    eventually("the last grant in the balance", || async {
        (app.balance("late", None).await.0 == 141).then_some(())
    })
    .await;
    app.stop().await;
}

/// Roblox-like abuse limits, on: at most 3 purchase requests per buyer a
/// minute, one request per buyer per item a minute.
fn abuse_limits() -> ledger_core::limits::PurchaseLimits {
    ledger_core::limits::PurchaseLimits {
        purchases_per_window: 3,
        purchase_window_ms: 60_000,
        item_request_interval_ms: 60_000,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bots_in_a_limited_drop_get_no_more_than_their_cap_while_people_still_buy() {
    let app = Arc::new(
        marketplace_ledger::spawn_app_with(|settings| {
            settings.purchase_limits = abuse_limits();
        })
        .await,
    );
    let drops = ["drop-a", "drop-b", "drop-c", "drop-d", "drop-e"];
    for drop in drops {
        let answer = app
            .publish(json!({"item_id": drop, "creator_id": "studio", "name": drop, "price": 50, "supply": 20}))
            .await;
        assert_eq!(answer.status, 201, "{}", answer.text);
    }
    fund(&app, "bot", 10, 10_000).await;
    fund(&app, "person", 40, 100).await;

    // 10 bots send 50 requests each (10 per drop), all at once, among 40
    // people who each ask for one serial.
    let mut tasks = JoinSet::new();
    for bot in 0..10 {
        for request in 0..50 {
            let app = app.clone();
            let drop = drops[request % drops.len()];
            tasks.spawn(async move {
                let buyer = format!("bot-{bot}");
                let answer = app
                    .purchase(&format!("bot-{bot}-{request}"), &buyer, drop, 50)
                    .await;
                (buyer, drop, answer)
            });
        }
    }
    for person in 0..40 {
        let app = app.clone();
        let drop = drops[person % drops.len()];
        tasks.spawn(async move {
            let buyer = format!("person-{person}");
            let answer = app
                .purchase(&format!("person-{person}"), &buyer, drop, 50)
                .await;
            (buyer, drop, answer)
        });
    }
    let mut bought: std::collections::BTreeMap<String, Vec<&str>> = Default::default();
    let mut limited = 0;
    while let Some(result) = tasks.join_next().await {
        let (buyer, drop, answer) = result.expect("purchase task");
        match (answer.status, answer.code()) {
            (201, _) => bought.entry(buyer).or_default().push(drop),
            (429, "rate_limited") => {
                assert!(
                    buyer.starts_with("bot-"),
                    "{buyer} was limited: {}",
                    answer.text
                );
                assert_eq!(answer.content_type, "application/problem+json");
                let wait: u64 = answer
                    .retry_after
                    .as_deref()
                    .and_then(|value| value.parse().ok())
                    .unwrap_or_else(|| panic!("429 without Retry-After: {answer:?}"));
                // A minute, plus up to one second for requests that reached
                // the buyer's shard out of the order of their times.
                assert!((1..=61).contains(&wait), "retry after {wait} s");
                assert_eq!(answer.body["retry_after_seconds"], wait);
                limited += 1;
            }
            other => panic!("unexpected answer {other:?} for {buyer}: {}", answer.text),
        }
    }
    for person in 0..40 {
        assert_eq!(
            bought.get(&format!("person-{person}")).map(Vec::len),
            Some(1),
            "every person buys their serial"
        );
    }
    let mut bot_serials = 0;
    for bot in 0..10 {
        let drops_bought = bought
            .get(&format!("bot-{bot}"))
            .cloned()
            .unwrap_or_default();
        assert!(drops_bought.len() <= 3, "bot-{bot} bought {drops_bought:?}");
        let distinct: BTreeSet<&str> = drops_bought.iter().copied().collect();
        assert_eq!(distinct.len(), drops_bought.len(), "one request per drop");
        bot_serials += drops_bought.len();
    }
    assert_eq!(
        limited,
        500 - bot_serials,
        "every other bot request was limited"
    );

    // A limited request charged and reserved nothing: each bot paid for
    // exactly what it got, and the drops sold exactly the serials granted.
    for bot in 0..10 {
        let owned = bought.get(&format!("bot-{bot}")).map_or(0, Vec::len) as i64;
        let buyer = format!("bot-{bot}");
        eventually("a bot's balance", || async {
            (app.balance(&buyer, None).await.0 == 10_000 - 50 * owned).then_some(())
        })
        .await;
    }
    for drop in drops {
        let sold = bought
            .values()
            .flatten()
            .filter(|bought| **bought == drop)
            .count();
        wait_for(&app, &format!("/v1/items/{drop}"), |body| {
            body["sold"] == sold
        })
        .await;
    }
    Arc::try_unwrap(app)
        .ok()
        .expect("single owner")
        .stop()
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_purchase_is_not_remembered() {
    let app = marketplace_ledger::spawn_app_with(|settings| {
        settings.purchase_limits = abuse_limits();
    })
    .await;
    for item in ["hat", "scarf"] {
        let answer = app
            .publish(json!({"item_id": item, "creator_id": "maker", "name": item, "price": 10, "supply": 5}))
            .await;
        assert_eq!(answer.status, 201, "{}", answer.text);
    }
    assert_eq!(app.grant("eager-funds", "eager", 100).await.status, 201);
    assert_eq!(
        app.purchase("eager-1", "eager", "hat", 10).await.status,
        201
    );
    // A second request for the same item within the interval.
    let limited = app.purchase("eager-2", "eager", "hat", 10).await;
    assert_eq!(
        (limited.status, limited.code()),
        (429, "rate_limited"),
        "{}",
        limited.text
    );
    // Sent again as is: decided afresh (still too soon), not answered from a record.
    let again = app.purchase("eager-2", "eager", "hat", 10).await;
    assert_eq!(again.code(), "rate_limited", "{}", again.text);
    // The same id for another request is not an idempotency conflict: nothing
    // was remembered under it. It runs.
    let other = app.purchase("eager-2", "eager", "scarf", 10).await;
    assert_eq!(other.status, 201, "{}", other.text);
    eventually("two purchases paid, no more", || async {
        (app.balance("eager", None).await.0 == 80).then_some(())
    })
    .await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_without_changing_state() {
    let app = spawn_app().await;
    let grant = app.grant("g-steady", "steady", 500).await;
    assert_eq!(grant.status, 201);
    let lamp = app
        .publish(json!({"item_id": "lamp", "creator_id": "maker", "name": "Lamp", "price": 30}))
        .await;
    assert_eq!(lamp.status, 201);
    // Read the state the refusals must not change once it is surely projected.
    let before_balance = app.balance("steady", grant.body["position"].as_str()).await;
    let before_item = app
        .get(
            &format!(
                "/v1/items/lamp?after={}",
                lamp.body["position"].as_str().unwrap()
            ),
            None,
        )
        .await
        .text;
    let service = app.service();
    let admin = app.admin();
    // (path, token, content type, body, expected status, expected code)
    type Case<'a> = (&'a str, Option<&'a str>, &'a str, Vec<u8>, u16, &'a str);
    let cases: Vec<Case> = vec![
        ("/v1/purchases", Some(&service), "application/json", b"{not json".to_vec(), 400, "validation_failed"),
        ("/v1/purchases", Some(&service), "application/json", br#"{"purchase_id":"x","buyer_id":"steady","item_id":"lamp","expected_price":"30"}"#.to_vec(), 422, "validation_failed"),
        ("/v1/purchases", Some(&service), "application/json", br#"{"purchase_id":"x","buyer_id":"steady","item_id":"lamp"}"#.to_vec(), 422, "validation_failed"),
        ("/v1/purchases", Some(&service), "application/json", br#"{"purchase_id":"x","buyer_id":"steady","item_id":"lamp","expected_price":30.5}"#.to_vec(), 422, "validation_failed"),
        ("/v1/grants", Some(&admin), "application/json", br#"{"grant_id":"g0","user_id":"steady","amount":0}"#.to_vec(), 422, "validation_failed"),
        ("/v1/grants", Some(&admin), "application/json", br#"{"grant_id":"g1","user_id":"steady","amount":-5}"#.to_vec(), 422, "validation_failed"),
        ("/v1/grants", Some(&admin), "application/json", br#"{"grant_id":"g2","user_id":"steady","amount":99999999999999999999999}"#.to_vec(), 422, "validation_failed"),
        ("/v1/grants", Some(&admin), "application/json", br#"{"grant_id":"bad id","user_id":"steady","amount":5}"#.to_vec(), 422, "validation_failed"),
        ("/v1/grants", Some("not-a-token"), "application/json", br#"{"grant_id":"g3","user_id":"steady","amount":5}"#.to_vec(), 401, "unauthorized"),
        ("/v1/grants", None, "application/json", br#"{"grant_id":"g4","user_id":"steady","amount":5}"#.to_vec(), 401, "unauthorized"),
        ("/v1/grants", Some(&service), "application/json", br#"{"grant_id":"g5","user_id":"steady","amount":5}"#.to_vec(), 403, "forbidden"),
        ("/v1/purchases", Some(&service), "application/json", br#"{"purchase_id":"u1","buyer_id":"steady","item_id":"no-such-item","expected_price":30}"#.to_vec(), 404, "not_found"),
        ("/v1/resale-purchases", Some(&service), "application/json", br#"{"purchase_id":"u2","buyer_id":"steady","listing_id":"no-such-listing","expected_price":30}"#.to_vec(), 404, "not_found"),
        ("/v1/refunds", Some(&admin), "application/json", br#"{"refund_id":"u3","purchase_id":"no-such-purchase"}"#.to_vec(), 404, "not_found"),
        ("/v1/items/no-such-item/price", Some(&service), "application/json", br#"{"price":5}"#.to_vec(), 404, "not_found"),
    ];
    let unknown = app
        .delete("/v1/resale-listings/no-such-listing", Some(&service))
        .await;
    assert_eq!((unknown.status, unknown.code()), (404, "not_found"));
    for (path, token, content_type, body, status, code) in cases {
        let answer = app.post_raw(path, token, content_type, body).await;
        assert_eq!(
            (answer.status, answer.code()),
            (status, code),
            "{path}: {}",
            answer.text
        );
        assert!(
            answer.content_type.starts_with("application/problem+json"),
            "{path}: {}",
            answer.content_type
        );
    } // An oversized body is refused from its declared length, before it is sent.
    let oversized = app.post_head_only("/v1/purchases", 2 * 1024 * 1024).await;
    assert!(oversized.starts_with("HTTP/1.1 413"), "{oversized}");
    assert!(
        oversized.contains("application/problem+json") && oversized.contains("payload_too_large"),
        "{oversized}"
    );

    let unknown = app
        .delete("/v1/resale-listings/no-such-listing", Some(&service))
        .await;
    assert_eq!((unknown.status, unknown.code()), (404, "not_found"));
    assert_eq!(
        app.balance("steady", None).await,
        before_balance,
        "refused requests changed no balance"
    );
    assert_eq!(
        app.get("/v1/items/lamp", None).await.text,
        before_item,
        "refused requests changed no item"
    );
    app.stop().await;
}

/// An `?after=` position beyond the head of its shard's log (no command can
/// have returned it) is refused at once with 400 `validation_failed` on
/// every read that takes `after`, rather than held until the wait bound.
/// (Both backends: the embedded one reads its log's heads in SQLite, the
/// distributed one in the engines' CQL store, where a record is before its
/// commands are answered.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn positions_beyond_the_log_head_are_refused_at_once() {
    let app = spawn_app().await;
    // A shard the ledger does not have (both backends).
    for after in ["p4096.1", "pm0.4096.1", "p0.1_m4096.0.1"] {
        let started = std::time::Instant::now();
        let answer = app
            .get(&format!("/v1/items/lamp?after={after}"), None)
            .await;
        assert_eq!(
            (answer.status, answer.code()),
            (400, "validation_failed"),
            "{after}: {}",
            answer.text
        );
        assert!(answer.text.contains("shards"), "{after}: {}", answer.text);
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
    }
    let grant = app.grant("g-head", "headroom", 500).await;
    assert_eq!(grant.status, 201);
    let position = grant.body["position"].as_str().unwrap().to_owned();
    let admin = app.admin();
    let reads = [
        "/v1/users/headroom/balance",
        "/v1/users/headroom/inventory",
        "/v1/users/headroom/transactions",
        "/v1/users/headroom/statement",
        "/v1/purchases/no-such-purchase",
        "/v1/items/no-such-item",
        "/v1/items/no-such-item/resale-listings",
        "/v1/items/no-such-item/owners",
        "/v1/bundles/no-such-bundle",
        "/v1/creators/headroom/earnings",
        "/v1/creators/headroom/sales",
    ];
    for path in reads {
        let started = std::time::Instant::now();
        let answer = app
            .get(&format!("{path}?after=p1.999999"), Some(&admin))
            .await;
        assert_eq!(
            (answer.status, answer.code()),
            (400, "validation_failed"),
            "{path}: {}",
            answer.text
        );
        assert!(
            answer.text.contains("beyond the head"),
            "{path}: {}",
            answer.text
        );
        assert!(
            started.elapsed() < std::time::Duration::from_secs(2),
            "{path} waited {:?}",
            started.elapsed()
        );
        // A position a command returned is still waited for and served.
        let answer = app
            .get(&format!("{path}?after={position}"), Some(&admin))
            .await;
        assert_ne!(answer.status, 400, "{path}: {}", answer.text);
        assert!(answer.status < 500, "{path}: {}", answer.text);
    }
    if !marketplace_ledger::distributed_backend() {
        // A delivery mark within its sender's log but past the messages it
        // ever sent its receiver: refused at once too (embedded: the
        // outbox and the projected deliveries tell).
        let mut last = String::new();
        let mut heads: std::collections::BTreeMap<u16, u64> = std::collections::BTreeMap::new();
        for grant in 0..12 {
            let answer = app
                .grant(&format!("g-mark-{grant}"), &format!("mark-{grant}"), 5)
                .await;
            assert_eq!(answer.status, 201, "{}", answer.text);
            last = answer.body["position"].as_str().unwrap().to_owned();
            for part in last.trim_start_matches('p').split('_') {
                if let Some((shard, sequence)) =
                    part.split_once('.').filter(|_| !part.starts_with('m'))
                {
                    let head = heads.entry(shard.parse().unwrap()).or_default();
                    *head = (*head).max(sequence.parse().unwrap());
                }
            }
        }
        // Everything so far is projected.
        assert_eq!(
            app.get(
                &format!("/v1/users/mark-0/balance?after={last}"),
                Some(&admin)
            )
            .await
            .status,
            200
        );
        let (sender, head) = heads.iter().max_by_key(|(_, head)| **head).unwrap();
        // Each grant homed on `sender` logged several events and sent one message.
        for receiver in heads.keys().filter(|receiver| *receiver != sender) {
            let mark = format!("pm{sender}.{receiver}.{head}");
            let started = std::time::Instant::now();
            let answer = app
                .get(
                    &format!("/v1/users/mark-0/balance?after={mark}"),
                    Some(&admin),
                )
                .await;
            assert_eq!(
                (answer.status, answer.code()),
                (400, "validation_failed"),
                "{mark}: {}",
                answer.text
            );
            assert!(
                started.elapsed() < std::time::Duration::from_secs(2),
                "{mark} waited"
            );
        }
    }
    app.stop().await;
}

/// The current instant, RFC 3339 with milliseconds, a few ms after
/// everything acknowledged so far.
async fn instant_now() -> String {
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let text = ledger_http::validate::format_timestamp(ledger_http::validate::now_ms());
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_chain_to_the_balance_and_as_of_sees_the_past() {
    let app = marketplace_ledger::spawn_app_with(|settings| {
        settings.escrow_hold = std::time::Duration::from_millis(300)
    })
    .await;
    assert_eq!(app.grant("g-st", "saver", 100).await.status, 201);
    eventually("the grant in the read models", || async {
        (app.balance("saver", None).await == (100, 0)).then_some(())
    })
    .await;
    let between = instant_now().await;
    assert_eq!(
        app.publish(
            json!({"item_id": "cap", "creator_id": "capmaker", "name": "Cap", "price": 10})
        )
        .await
        .status,
        201
    );
    let bought = app.purchase("p-cap", "saver", "cap", 10).await;
    assert_eq!(bought.status, 201, "{}", bought.text);
    let token = app.service();
    // The maker's share is released by the clock (300 ms hold).
    wait_for_auth(&app, "/v1/creators/capmaker/earnings", &token, |body| {
        body["released"] == 7 && body["pending"] == 0
    })
    .await;
    eventually("the saver's purchase and the maker's release", || async {
        (app.balance("saver", None).await == (90, 0)
            && app.balance("capmaker", None).await == (7, 0))
            .then_some(())
    })
    .await;

    // The statement reads the transactions read model: waited for itself.
    let whole = wait_for_auth(&app, "/v1/users/saver/statement", &token, |body| {
        body["entries"].as_array().map(Vec::len) == Some(2)
    })
    .await;
    let body = &whole;
    assert_eq!(
        (body["account"].as_str(), body["opening_balance"].as_i64()),
        (Some("wallet"), Some(0))
    );
    let entries = body["entries"].as_array().unwrap();
    let moves: Vec<(i64, i64)> = entries
        .iter()
        .map(|entry| {
            (
                entry["amount"].as_i64().unwrap(),
                entry["balance_after"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(moves, [(100, 100), (-10, 90)], "{body}");
    assert_eq!(entries[0]["kind"], "grant");
    assert_eq!(entries[1]["reference"], "p-cap");
    assert_eq!(
        body["closing_balance"].as_i64(),
        Some(app.balance("saver", None).await.0)
    );

    // From the instant between the grant and the purchase.
    let since = app
        .get(
            &format!("/v1/users/saver/statement?from={between}"),
            Some(&token),
        )
        .await;
    assert_eq!(since.status, 200, "{}", since.text);
    assert_eq!(since.body["opening_balance"], 100);
    assert_eq!(since.body["entries"].as_array().map(Vec::len), Some(1));
    assert_eq!(since.body["closing_balance"], 90);
    let until = app
        .get(
            &format!("/v1/users/saver/statement?to={between}"),
            Some(&token),
        )
        .await;
    assert_eq!(until.body["closing_balance"], 100, "{}", until.text);

    let then = app
        .get(
            &format!("/v1/users/saver/balance?as_of={between}"),
            Some(&token),
        )
        .await;
    assert_eq!(then.status, 200, "{}", then.text);
    assert_eq!(
        (then.body["balance"].as_i64(), then.body["pending"].as_i64()),
        (Some(100), Some(0))
    );

    // The maker's escrow: the share in, then released to the wallet.
    let escrow = wait_for_auth(
        &app,
        "/v1/users/capmaker/statement?account=pending",
        &token,
        |body| body["entries"].as_array().map(Vec::len) == Some(2),
    )
    .await;
    let moves: Vec<(i64, i64)> = escrow["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| {
            (
                entry["amount"].as_i64().unwrap(),
                entry["balance_after"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(moves, [(7, 7), (-7, 0)], "{escrow}");
    let wallet = app.get("/v1/users/capmaker/statement", Some(&token)).await;
    assert_eq!(wallet.body["closing_balance"], 7, "{}", wallet.text);
    let before_sale = app
        .get(
            &format!("/v1/users/capmaker/balance?as_of={between}"),
            Some(&token),
        )
        .await;
    assert_eq!(
        (
            before_sale.body["balance"].as_i64(),
            before_sale.body["pending"].as_i64()
        ),
        (Some(0), Some(0))
    );

    // Refusals.
    for (path, status, code) in [
        (
            "/v1/users/saver/statement?account=fees",
            422,
            "validation_failed",
        ),
        (
            "/v1/users/saver/statement?from=yesterday",
            422,
            "validation_failed",
        ),
        (
            "/v1/users/saver/balance?as_of=2030-13-01T00:00:00Z",
            422,
            "validation_failed",
        ),
        (
            "/v1/users/saver/statement?from=2030-01-02T00:00:00Z&to=2030-01-01T00:00:00Z",
            422,
            "validation_failed",
        ),
    ] {
        let answer = app.get(path, Some(&token)).await;
        assert_eq!(
            (answer.status, answer.code()),
            (status, code),
            "{path}: {}",
            answer.text
        );
    }
    let stranger = app.token(Role::User, "someone-else");
    let refused = app.get("/v1/users/saver/statement", Some(&stranger)).await;
    assert_eq!((refused.status, refused.code()), (403, "forbidden"));
    app.stop().await;
}

/// The step names of `GET /v1/purchases/{id}`, in the order served.
fn step_names(trace: &Value) -> Vec<String> {
    trace["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|step| step["step"].as_str().unwrap().to_string())
        .collect()
}

/// Whether `names` holds `wanted` in this relative order.
fn in_order(names: &[String], wanted: &[&str]) -> bool {
    let mut rest = names.iter();
    wanted
        .iter()
        .all(|want| rest.by_ref().any(|name| name == want))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purchase_trace_tells_support_what_happened() {
    let app = spawn_app().await;
    assert_eq!(app.grant("g-tr", "tracy", 1_000).await.status, 201);
    assert_eq!(app.grant("g-tr-poor", "penny", 5).await.status, 201);
    assert_eq!(
        app.publish(json!({"item_id": "tiara", "creator_id": "tiaramaker", "name": "Tiara", "price": 300, "supply": 2}))
            .await
            .status,
        201
    );
    let bought = app.purchase("p-tiara", "tracy", "tiara", 300).await;
    assert_eq!(bought.status, 201, "{}", bought.text);
    let refund = app
        .post(
            "/v1/refunds",
            Some(&app.admin()),
            &json!({"refund_id": "r-tiara", "purchase_id": "p-tiara"}),
        )
        .await;
    assert_eq!(refund.status, 201, "{}", refund.text);
    let refused = app.purchase("p-tiara-poor", "penny", "tiara", 300).await;
    assert_eq!(
        (refused.status, refused.code()),
        (409, "insufficient_funds")
    );

    // The buyer's own token reads the story of the refunded Limited.
    let tracy = app.token(Role::User, "tracy");
    let trace = wait_for_auth(&app, "/v1/purchases/p-tiara", &tracy, |body| {
        let names = step_names(body);
        body["status"] == "refunded"
            && [
                "accepted",
                "reserved",
                "paid",
                "completed",
                "granted",
                "settled",
                "serial_revoked",
                "escrow_reversed",
                "refunded",
            ]
            .iter()
            .all(|step| names.iter().any(|name| name == step))
    })
    .await;
    let names = step_names(&trace);
    assert!(
        in_order(
            &names,
            &[
                "accepted",
                "reserved",
                "paid",
                "completed",
                "serial_revoked",
                "refunded"
            ]
        ),
        "{names:?}"
    );
    assert_eq!(trace["buyer_id"], "tracy");
    let steps = trace["steps"].as_array().unwrap();
    let paid = steps.iter().find(|step| step["step"] == "paid").unwrap();
    assert_eq!(
        (paid["user_id"].as_str(), paid["amount"].as_i64()),
        (Some("tracy"), Some(-300))
    );
    let granted = steps.iter().find(|step| step["step"] == "granted").unwrap();
    assert_eq!(
        (granted["subject"].as_str(), granted["serial"].as_u64()),
        (Some("tiara"), Some(1))
    );
    let settled = steps.iter().find(|step| step["step"] == "settled").unwrap();
    assert_eq!(
        (settled["user_id"].as_str(), settled["amount"].as_i64()),
        (Some("tiaramaker"), Some(210))
    );
    let refunded = steps
        .iter()
        .find(|step| step["step"] == "refunded")
        .unwrap();
    assert_eq!(refunded["amount"].as_i64(), Some(300));
    assert!(steps
        .iter()
        .all(|step| step["position"].as_str().unwrap().contains('.')));

    // A refused purchase: the serial held for it is released.
    let service = app.service();
    let trace = wait_for_auth(&app, "/v1/purchases/p-tiara-poor", &service, |body| {
        body["status"] == "refused"
            && step_names(body)
                .iter()
                .any(|name| name == "reservation_released")
    })
    .await;
    let names = step_names(&trace);
    assert!(
        in_order(&names, &["accepted", "reserved", "refused"]),
        "{names:?}"
    );
    let refusal = trace["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|step| step["step"] == "refused")
        .unwrap();
    assert!(refusal["detail"]
        .as_str()
        .unwrap()
        .starts_with("insufficient_funds"));

    // Someone else's purchase, an unknown one, a bad id.
    let other = app.get("/v1/purchases/p-tiara-poor", Some(&tracy)).await;
    assert_eq!((other.status, other.code()), (403, "forbidden"));
    let unknown = app.get("/v1/purchases/p-never", Some(&service)).await;
    assert_eq!((unknown.status, unknown.code()), (404, "not_found"));
    let anonymous = app.get("/v1/purchases/p-tiara", None).await;
    assert_eq!((anonymous.status, anonymous.code()), (401, "unauthorized"));
    let bad = app.get("/v1/purchases/bad%20id", Some(&service)).await;
    assert_eq!(
        (bad.status, bad.code()),
        (422, "validation_failed"),
        "{}",
        bad.text
    );
    app.stop().await;
}

/// Sums the money of public events per user: `(wallet, pending)`.
fn public_sums(
    events: &[public_events::StructuredEvent],
) -> std::collections::BTreeMap<String, (i64, i64)> {
    let mut sums: std::collections::BTreeMap<String, (i64, i64)> = Default::default();
    for event in events {
        for (field, wallet) in [("wallet_changes", true), ("pending_changes", false)] {
            for change in event.data[field].as_array().into_iter().flatten() {
                let user = change["user_id"].as_str().expect("a user").to_string();
                let amount = change["amount"].as_i64().expect("an integer amount");
                let sum = sums.entry(user).or_default();
                if wallet {
                    sum.0 += amount;
                } else {
                    sum.1 += amount;
                }
            }
        }
    }
    sums
}

/// With `LEDGER_PUBLIC_EVENTS_VALIDATOR` set (`scripts/test` sets it to
/// `scripts/validate-public-events`), the published events are checked by a
/// non-Rust consumer too: Python's jsonschema against `schemas/json/`, on
/// the distributed backend reading the topic itself with confluent-kafka
/// (`read_committed`). Answers the money per user it summed, if it ran.
async fn validate_with_python(
    app: &TestApp,
    events: &[public_events::StructuredEvent],
) -> Option<std::collections::BTreeMap<String, (i64, i64)>> {
    let validator = std::env::var("LEDGER_PUBLIC_EVENTS_VALIDATOR").ok()?;
    let mut arguments: Vec<String> = Vec::new();
    let mut _file = None;
    match &app.public_topic {
        Some((bootstrap, topic)) => arguments.extend([
            "--kafka".into(),
            bootstrap.clone(),
            "--topic".into(),
            topic.clone(),
        ]),
        None => {
            let dir = marketplace_ledger::TempDir::new("public-events");
            let path = dir.0.join("events.ndjson");
            let mut text = String::new();
            for event in events {
                text.push_str(&serde_json::to_string(event).expect("an event serializes"));
                text.push('\n');
            }
            std::fs::write(&path, text).expect("the events file is written");
            arguments.push(path.display().to_string());
            _file = Some(dir);
        }
    }
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(&validator)
            .args(&arguments)
            .output()
    })
    .await
    .expect("the validator task")
    .expect("the validator runs");
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(
        output.status.success(),
        "the Python validation failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary: Value = serde_json::from_str(stdout.lines().last().expect("a summary line"))
        .expect("the summary is JSON");
    Some(
        summary["money_per_user"]
            .as_object()
            .expect("money per user")
            .iter()
            .map(|(user, sums)| {
                (
                    user.clone(),
                    (sums[0].as_i64().unwrap(), sums[1].as_i64().unwrap()),
                )
            })
            .collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_public_stream_adds_up_to_the_ledger() {
    let app = marketplace_ledger::spawn_app_with(|settings| {
        settings.escrow_hold = std::time::Duration::from_secs(2)
    })
    .await;
    let users = ["ann", "ben", "cid", "dot"];
    for user in users {
        assert_eq!(
            app.grant(&format!("g-{user}"), user, 1_000).await.status,
            201
        );
    }
    let studio = app.token(Role::User, "studio");
    for body in [
        json!({"item_id": "hat", "creator_id": "studio", "name": "Hat", "price": 100}),
        json!({"item_id": "scarf", "creator_id": "studio", "name": "Scarf", "price": 40}),
        json!({"item_id": "pin", "creator_id": "studio", "name": "Pin", "price": 15}),
        json!({"item_id": "crown", "creator_id": "studio", "name": "Crown", "price": 200, "supply": 3, "resellable": true}),
    ] {
        let published = app.post("/v1/items", Some(&studio), &body).await;
        assert_eq!(published.status, 201, "{}", published.text);
    }
    let repriced = app
        .post("/v1/items/pin/price", Some(&studio), &json!({"price": 20}))
        .await;
    assert_eq!(repriced.status, 200, "{}", repriced.text);
    let bundle = app
        .post("/v1/bundles", Some(&studio), &json!({"bundle_id": "kit", "creator_id": "studio", "name": "Kit", "item_ids": ["scarf", "pin"], "price": 50}))
        .await;
    assert_eq!(bundle.status, 201, "{}", bundle.text);

    let service = app.service();
    let mut completed = 0;
    let buy = |body: Value| {
        let app = &app;
        let service = service.clone();
        async move {
            let path = if body.get("listing_id").is_some() {
                "/v1/resale-purchases"
            } else {
                "/v1/purchases"
            };
            app.post(path, Some(&service), &body).await
        }
    };
    for (id, buyer, item) in [
        ("pp-ann-hat", "ann", "hat"),
        ("pp-ben-hat", "ben", "hat"),
        ("pp-cid-crown", "cid", "crown"),
        ("pp-dot-crown", "dot", "crown"),
        ("pp-ann-crown", "ann", "crown"),
    ] {
        let answer = buy(json!({"purchase_id": id, "buyer_id": buyer, "item_id": item, "expected_price": if item == "hat" { 100 } else { 200 }})).await;
        assert_eq!(answer.status, 201, "{id}: {}", answer.text);
        completed += 1;
    }
    let sold_out = buy(json!({"purchase_id": "pp-ben-crown", "buyer_id": "ben", "item_id": "crown", "expected_price": 200})).await;
    assert_eq!((sold_out.status, sold_out.code()), (409, "sold_out"));
    let kit = buy(json!({"purchase_id": "pp-ben-kit", "buyer_id": "ben", "bundle_id": "kit", "expected_price": 50})).await;
    assert_eq!(kit.status, 201, "{}", kit.text);
    completed += 1;
    let cid = app.token(Role::User, "cid");
    let dot = app.token(Role::User, "dot");
    let listed = app
        .post("/v1/resale-listings", Some(&cid), &json!({"listing_id": "pl-cid", "seller_id": "cid", "item_id": "crown", "serial": 1, "price": 300}))
        .await;
    assert_eq!(listed.status, 201, "{}", listed.text);
    let listed = app
        .post("/v1/resale-listings", Some(&dot), &json!({"listing_id": "pl-dot", "seller_id": "dot", "item_id": "crown", "serial": 2, "price": 900}))
        .await;
    assert_eq!(listed.status, 201, "{}", listed.text);
    let cancelled = app.delete("/v1/resale-listings/pl-dot", Some(&dot)).await;
    assert_eq!(cancelled.status, 200, "{}", cancelled.text);
    let resale = buy(json!({"purchase_id": "pp-ben-resale", "buyer_id": "ben", "listing_id": "pl-cid", "expected_price": 300})).await;
    assert_eq!(resale.status, 201, "{}", resale.text);
    completed += 1;
    let refund = app
        .post(
            "/v1/refunds",
            Some(&app.admin()),
            &json!({"refund_id": "pr-ben-hat", "purchase_id": "pp-ben-hat"}),
        )
        .await;
    assert_eq!(refund.status, 201, "{}", refund.text);

    // Escrow held 2 s: wait until everything is released.
    wait_for_auth(&app, "/v1/creators/studio/earnings", &service, |body| {
        body["pending"] == 0 && body["released"].as_i64().unwrap_or(0) > 0
    })
    .await;
    let mut everyone: Vec<String> = users.iter().map(|user| user.to_string()).collect();
    everyone.push("studio".into());
    let mut balances = std::collections::BTreeMap::new();
    for user in &everyone {
        let balance = eventually(&format!("{user}'s released balance"), || async {
            let balance = app.balance(user, None).await;
            (balance.1 == 0).then_some(balance)
        })
        .await;
        balances.insert(user.clone(), balance);
    }

    // The stream catches up with what the read models show.
    let events = eventually("the public stream to add up to the balances", || async {
        let events = app.public_events().await;
        let sums = public_sums(&events);
        everyone
            .iter()
            .all(|user| sums.get(user).copied().unwrap_or_default() == balances[user])
            .then_some(events)
    })
    .await;

    let ids: BTreeSet<&str> = events.iter().map(|event| event.id.as_str()).collect();
    assert_eq!(ids.len(), events.len(), "ce_id is unique");
    let purchases: Vec<&public_events::StructuredEvent> = events
        .iter()
        .filter(|event| {
            event.event_type == "ledger.purchase_completed.v1"
                || event.event_type == "ledger.resale_completed.v1"
        })
        .collect();
    assert_eq!(
        purchases.len(),
        completed,
        "one event per completed purchase"
    );
    let sums = public_sums(&events);
    for user in &everyone {
        assert_eq!(
            sums[user], balances[user],
            "{user}: money events sum to the balance"
        );
    }
    if let Some(python_sums) = validate_with_python(&app, &events).await {
        for user in &everyone {
            assert_eq!(
                python_sums[user], balances[user],
                "{user}: as Python sums it"
            );
        }
    }
    // Every record parses as its published type (unknown fields refused).
    for event in &events {
        assert_eq!(event.specversion, "1.0");
        assert_eq!(event.datacontenttype, "application/json");
        assert_eq!(event.recordhash.len(), 64);
        assert!(event.time.ends_with('Z'), "{}", event.time);
        let data = event.data.clone();
        let parsed = match event.event_type.as_str() {
            "ledger.currency_granted.v1" => {
                serde_json::from_value::<public_events::types::CurrencyGranted>(data).map(drop)
            }
            "ledger.purchase_completed.v1" => {
                serde_json::from_value::<public_events::types::PurchaseCompleted>(data).map(drop)
            }
            "ledger.resale_completed.v1" => {
                serde_json::from_value::<public_events::types::ResaleCompleted>(data).map(drop)
            }
            "ledger.purchase_refunded.v1" => {
                serde_json::from_value::<public_events::types::PurchaseRefunded>(data).map(drop)
            }
            "ledger.escrow_reversed.v1" => {
                serde_json::from_value::<public_events::types::EscrowReversed>(data).map(drop)
            }
            "ledger.escrow_released.v1" => {
                serde_json::from_value::<public_events::types::EscrowReleased>(data).map(drop)
            }
            "ledger.listing_created.v1" => {
                serde_json::from_value::<public_events::types::ListingCreated>(data).map(drop)
            }
            "ledger.listing_cancelled.v1" => {
                serde_json::from_value::<public_events::types::ListingCancelled>(data).map(drop)
            }
            "ledger.item_published.v1" => {
                serde_json::from_value::<public_events::types::ItemPublished>(data).map(drop)
            }
            "ledger.item_repriced.v1" => {
                serde_json::from_value::<public_events::types::ItemRepriced>(data).map(drop)
            }
            "ledger.item_sale_toggled.v1" => {
                serde_json::from_value::<public_events::types::ItemSaleToggled>(data).map(drop)
            }
            "ledger.bundle_created.v1" => {
                serde_json::from_value::<public_events::types::BundleCreated>(data).map(drop)
            }
            other => panic!("unknown public type {other}"),
        };
        parsed.unwrap_or_else(|error| panic!("{} does not parse: {error}", event.id));
    }
    // The resale carries its split; the crown's primary sale its serial.
    let resale = purchases
        .iter()
        .find(|event| event.data["purchase_id"] == "pp-ben-resale")
        .expect("the resale is published");
    assert_eq!(resale.subject, "user:ben");
    assert_eq!(
        (
            &resale.data["seller_share"],
            &resale.data["creator_royalty"],
            &resale.data["platform_fee"]
        ),
        (&json!(210), &json!(30), &json!(60))
    );
    let crown = purchases
        .iter()
        .find(|event| event.data["purchase_id"] == "pp-cid-crown")
        .expect("the crown purchase is published");
    assert_eq!(
        (&crown.data["serial"], &crown.data["creator_share"]),
        (&json!(1), &json!(140))
    );
    // In order per key: ben's hat purchase before its refund.
    let position = |wanted: &dyn Fn(&public_events::StructuredEvent) -> bool| {
        events
            .iter()
            .position(wanted)
            .expect("the event is published")
    };
    let bought = position(&|event| {
        event.data["purchase_id"] == "pp-ben-hat"
            && event.event_type == "ledger.purchase_completed.v1"
    });
    let refunded = position(&|event| event.event_type == "ledger.purchase_refunded.v1");
    assert!(bought < refunded, "a purchase comes before its refund");
    for (kind, count) in [
        ("ledger.listing_created.v1", 2),
        ("ledger.listing_cancelled.v1", 1),
        ("ledger.item_published.v1", 4),
        ("ledger.item_repriced.v1", 1),
        ("ledger.bundle_created.v1", 1),
        ("ledger.currency_granted.v1", 4),
        ("ledger.escrow_reversed.v1", 1),
    ] {
        let found = events
            .iter()
            .filter(|event| event.event_type == kind)
            .count();
        assert_eq!(found, count, "{kind}");
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_creators_sales_show_each_escrow_and_its_release_date() {
    let hold_ms: i64 = 3_000;
    let app = marketplace_ledger::spawn_app_with(|settings| {
        settings.escrow_hold = std::time::Duration::from_millis(hold_ms as u64)
    })
    .await;
    let maker = app.token(Role::User, "maker");
    let service = app.service();
    assert_eq!(app.grant("g-fan", "fan", 1_000).await.status, 201);
    for (item, price) in [("hat", 100), ("scarf", 40), ("pin", 20)] {
        let published = app
            .post(
                "/v1/items",
                Some(&maker),
                &json!({"item_id": item, "creator_id": "maker", "name": item, "price": price}),
            )
            .await;
        assert_eq!(published.status, 201, "{}", published.text);
    }
    // A sale refunded, a sale released after the hold, then a sale held.
    assert_eq!(app.purchase("s-hat", "fan", "hat", 100).await.status, 201);
    let scarf = app.purchase("s-scarf", "fan", "scarf", 40).await;
    assert_eq!(scarf.status, 201, "{}", scarf.text);
    let refund = app
        .post(
            "/v1/refunds",
            Some(&app.admin()),
            &json!({"refund_id": "r-hat", "purchase_id": "s-hat"}),
        )
        .await;
    assert_eq!(refund.status, 201, "{}", refund.text);
    wait_for_auth(&app, "/v1/creators/maker/earnings", &service, |body| {
        body["released"] == 28 && body["pending"] == 0
    })
    .await;
    let pin = app.purchase("s-pin", "fan", "pin", 20).await;
    assert_eq!(pin.status, 201, "{}", pin.text);
    let position = pin.body["position"].as_str().unwrap().to_string();

    let sales = app
        .get(
            &format!("/v1/creators/maker/sales?after={position}"),
            Some(&maker),
        )
        .await;
    assert_eq!(sales.status, 200, "{}", sales.text);
    let rows = sales.body["sales"].as_array().expect("sales").clone();
    let summary: Vec<(&str, &str, i64, i64)> = rows
        .iter()
        .map(|sale| {
            (
                sale["purchase_id"].as_str().unwrap(),
                sale["escrow_status"].as_str().unwrap(),
                sale["creator_share"].as_i64().unwrap(),
                sale["platform_fee"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("s-hat", "refunded", 70, 30),
            ("s-scarf", "released", 28, 12),
            ("s-pin", "held", 14, 6),
        ],
        "{}",
        sales.text
    );
    assert_eq!(sales.body["next_cursor"], Value::Null);
    let instant = |value: &Value| -> i64 {
        let text = value.as_str().expect("an RFC 3339 instant");
        let at = humantime_like_ms(text);
        assert!(at > 0, "{text}");
        at
    };
    for sale in &rows {
        let sold_at = instant(&sale["sold_at"]);
        let release_at = instant(&sale["release_at"]);
        // Released `hold` after the purchase, which the share follows by a hop.
        assert!(
            (release_at - sold_at - hold_ms).abs() < 2_000,
            "release date {release_at} of a sale at {sold_at}"
        );
        assert_eq!(sale["fee_policy_version"], 1);
        assert_eq!(sale["resale"], false);
    }
    assert_eq!(
        rows[2]["escrow_settled_at"],
        Value::Null,
        "held: not settled"
    );
    assert!(
        rows[1]["escrow_settled_at"].is_string(),
        "released: settled"
    );

    // from inclusive, to exclusive.
    let (scarf_at, pin_at) = (
        rows[1]["sold_at"].as_str().unwrap(),
        rows[2]["sold_at"].as_str().unwrap(),
    );
    let window = app
        .get(
            &format!("/v1/creators/maker/sales?from={scarf_at}&to={pin_at}"),
            Some(&service),
        )
        .await;
    assert_eq!(window.status, 200, "{}", window.text);
    let ids: Vec<&str> = window.body["sales"]
        .as_array()
        .unwrap()
        .iter()
        .map(|sale| sale["purchase_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["s-scarf"], "{}", window.text);
    // Pages of one.
    let mut paged = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let url = match &cursor {
            Some(cursor) => format!("/v1/creators/maker/sales?limit=1&cursor={cursor}"),
            None => "/v1/creators/maker/sales?limit=1".to_string(),
        };
        let page = app.get(&url, Some(&app.admin())).await;
        assert_eq!(page.status, 200, "{}", page.text);
        for sale in page.body["sales"].as_array().unwrap() {
            paged.push(sale["purchase_id"].as_str().unwrap().to_string());
        }
        match page.body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => break,
        }
        assert!(paged.len() <= 3, "pages end");
    }
    assert_eq!(paged, ["s-hat", "s-scarf", "s-pin"]);

    // Private: the creator, a service or an admin; bad input is refused.
    let fan = app.token(Role::User, "fan");
    let snoop = app.get("/v1/creators/maker/sales", Some(&fan)).await;
    assert_eq!((snoop.status, snoop.code()), (403, "forbidden"));
    let anonymous = app.get("/v1/creators/maker/sales", None).await;
    assert_eq!((anonymous.status, anonymous.code()), (401, "unauthorized"));
    for bad in [
        "/v1/creators/maker/sales?from=yesterday",
        "/v1/creators/maker/sales?from=2030-01-02T00:00:00Z&to=2030-01-01T00:00:00Z",
        "/v1/creators/maker/sales?cursor=nonsense",
        "/v1/creators/maker/sales?limit=0",
    ] {
        let refused = app.get(bad, Some(&maker)).await;
        assert!(
            matches!(refused.status, 400 | 422) && refused.code() == "validation_failed",
            "{bad}: {}",
            refused.text
        );
    }
    let nobody = app.get("/v1/creators/nobody/sales", Some(&service)).await;
    assert_eq!(nobody.status, 200);
    assert_eq!(nobody.body["sales"], json!([]));
    app.stop().await;
}

/// Milliseconds since the epoch of an RFC 3339 instant of the API
/// (`YYYY-MM-DDTHH:MM:SS[.mmm]Z`).
fn humantime_like_ms(text: &str) -> i64 {
    let parse = |range: std::ops::Range<usize>| -> i64 { text[range].parse().unwrap() };
    let (year, month, day) = (parse(0..4), parse(5..7), parse(8..10));
    let (hour, minute, second) = (parse(11..13), parse(14..16), parse(17..19));
    let millis = if text.as_bytes().get(19) == Some(&b'.') {
        parse(20..23)
    } else {
        0
    };
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    ((days * 24 + hour) * 60 + minute) * 60_000 + second * 1_000 + millis
}

/// Milliseconds in a UTC day: the history's bucket.
const DAY_MS: i64 = 86_400_000;

/// The UTC day (since the epoch) a purchase completed, from its story.
async fn completion_day(app: &TestApp, token: &str, purchase_id: &str) -> i64 {
    let story = wait_for_auth(
        app,
        &format!("/v1/purchases/{purchase_id}"),
        token,
        |body| {
            body["steps"]
                .as_array()
                .is_some_and(|steps| steps.iter().any(|step| step["step"] == "completed"))
        },
    )
    .await;
    let completed = story["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|step| step["step"] == "completed")
        .unwrap()
        .clone();
    humantime_like_ms(completed["at"].as_str().unwrap()).div_euclid(DAY_MS)
}

/// The recent average price rule of the contract notes.
fn next_rap(previous: Option<i64>, price: i64) -> i64 {
    match previous {
        None => price,
        Some(previous) => previous + (price - previous) / 10,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_items_history_shows_each_days_sales_refunds_average_and_lowest_ask() {
    let app = spawn_app().await;
    let service = app.service();
    let admin = app.admin();
    let published = app
        .publish(json!({"item_id": "crown", "creator_id": "studio", "name": "Crown", "price": 100, "supply": 10, "resellable": true}))
        .await;
    assert_eq!(published.status, 201, "{}", published.text);
    let published = app
        .publish(json!({"item_id": "hat", "creator_id": "studio", "name": "Hat", "price": 30}))
        .await;
    assert_eq!(published.status, 201, "{}", published.text);
    for buyer in ["ann", "ben", "cat", "dan", "eve"] {
        assert_eq!(
            app.grant(&format!("g-{buyer}"), buyer, 10_000).await.status,
            201
        );
    }

    // (purchase, item, price, resale), in the order they complete.
    let mut sales: Vec<(&str, &str, i64, bool)> = Vec::new();
    let mut serials = std::collections::BTreeMap::new();
    for (purchase_id, buyer) in [("h-ann", "ann"), ("h-ben", "ben"), ("h-cat", "cat")] {
        let bought = app.purchase(purchase_id, buyer, "crown", 100).await;
        assert_eq!(bought.status, 201, "{}", bought.text);
        serials.insert(buyer, bought.body["serial"].as_u64().unwrap());
        sales.push((purchase_id, "crown", 100, false));
    }
    let repriced = app
        .post(
            "/v1/items/crown/price",
            Some(&service),
            &json!({"price": 150}),
        )
        .await;
    assert_eq!(repriced.status, 200, "{}", repriced.text);
    let bought = app.purchase("h-dan", "dan", "crown", 150).await;
    assert_eq!(bought.status, 201, "{}", bought.text);
    serials.insert("dan", bought.body["serial"].as_u64().unwrap());
    sales.push(("h-dan", "crown", 150, false));
    // cat's serial is refunded: it leaves the counts of its day.
    let refunded = app
        .post(
            "/v1/refunds",
            Some(&admin),
            &json!({"refund_id": "r-cat", "purchase_id": "h-cat"}),
        )
        .await;
    assert_eq!(refunded.status, 201, "{}", refunded.text);

    // The book: ann asks 400, ben 250 (bought by eve), dan 120 (cancelled).
    for (listing_id, seller, price) in [
        ("l-ann", "ann", 400),
        ("l-ben", "ben", 250),
        ("l-dan", "dan", 120),
    ] {
        let listed = app
            .post(
                "/v1/resale-listings",
                Some(&service),
                &json!({"listing_id": listing_id, "seller_id": seller, "item_id": "crown", "serial": serials[seller], "price": price}),
            )
            .await;
        assert_eq!(listed.status, 201, "{}", listed.text);
    }
    let cancelled = app
        .delete("/v1/resale-listings/l-dan", Some(&service))
        .await;
    assert_eq!(cancelled.status, 200, "{}", cancelled.text);
    let resold = app
        .post(
            "/v1/resale-purchases",
            Some(&service),
            &json!({"purchase_id": "h-eve", "buyer_id": "eve", "listing_id": "l-ben", "expected_price": 250}),
        )
        .await;
    assert_eq!(resold.status, 201, "{}", resold.text);
    sales.push(("h-eve", "crown", 250, true));

    // An unlimited item: two copies, one refunded.
    for (purchase_id, buyer) in [("h-hat-ann", "ann"), ("h-hat-ben", "ben")] {
        let bought = app.purchase(purchase_id, buyer, "hat", 30).await;
        assert_eq!(bought.status, 201, "{}", bought.text);
        sales.push((purchase_id, "hat", 30, false));
    }
    let refunded = app
        .post(
            "/v1/refunds",
            Some(&admin),
            &json!({"refund_id": "r-hat-ben", "purchase_id": "h-hat-ben"}),
        )
        .await;
    assert_eq!(refunded.status, 201, "{}", refunded.text);
    let position = refunded.body["position"].as_str().unwrap().to_string();
    let refunds = ["h-cat", "h-hat-ben"];

    // Expected figures per item and UTC day, from when each sale completed
    // (the server's clock: a run across midnight spreads them over two days).
    #[derive(Default, Debug, Clone, PartialEq)]
    struct Day {
        primary: i64,
        primary_revenue: i64,
        resale: i64,
        resale_revenue: i64,
        refunded: i64,
        rap: Option<i64>,
    }
    let mut expected: std::collections::BTreeMap<(&str, i64), Day> = Default::default();
    let mut rap: std::collections::BTreeMap<&str, i64> = Default::default();
    for (purchase_id, item, price, resale) in &sales {
        let day = completion_day(&app, &service, purchase_id).await;
        let entry = expected.entry((*item, day)).or_default();
        if *resale {
            entry.resale += 1;
            entry.resale_revenue += price;
        } else if refunds.contains(purchase_id) {
            entry.refunded += 1;
        } else {
            entry.primary += 1;
            entry.primary_revenue += price;
        }
        let average = next_rap(rap.get(item).copied(), *price);
        rap.insert(*item, average);
        entry.rap = Some(average);
    }
    let first_day = expected.keys().map(|(_, day)| *day).min().unwrap();
    let today = ledger_http::validate::now_ms() as i64 / DAY_MS;
    let midnight = |day: i64| ledger_http::validate::format_timestamp((day * DAY_MS) as u64);
    // Three empty days before the first sale, then up to now.
    let from = midnight(first_day - 3);
    let path = |item: &str| format!("/v1/items/{item}/history?from={from}&bucket=day");

    // `after` is honoured; then every shard's share of the figures (the
    // distributed read models project shards independently) is awaited.
    let answer = app
        .get(&format!("{}&after={position}", path("hat")), None)
        .await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!(answer.body["position"], position.as_str());
    let settled = |body: &Value, sales: i64, refunded: i64| {
        let buckets = body["buckets"].as_array().unwrap();
        let total = |field: &str| {
            buckets
                .iter()
                .map(|b| b[field].as_i64().unwrap())
                .sum::<i64>()
        };
        total("sales_count") == sales && total("refunded_count") == refunded
    };
    let crown = wait_for(&app, &path("crown"), |body| {
        let last = body["buckets"].as_array().unwrap().last().unwrap().clone();
        settled(body, 4, 1)
            && last["lowest_resale_ask"] == 400
            && last["recent_average_price"] == 119
    })
    .await;
    let hat = wait_for(&app, &path("hat"), |body| settled(body, 1, 1)).await;

    for (item, body) in [("crown", &crown), ("hat", &hat)] {
        assert_eq!(body["item_id"], item);
        assert_eq!(body["bucket"], "day");
        assert_eq!(body["limited"], item == "crown");
        assert_eq!(body["from"], midnight(first_day - 3));
        assert_eq!(body["to"], midnight(today + 1));
        let buckets = body["buckets"].as_array().unwrap();
        assert_eq!(buckets.len() as i64, today + 1 - (first_day - 3), "{body}");
        let mut carried: Option<i64> = None;
        for (index, bucket) in buckets.iter().enumerate() {
            let day = first_day - 3 + index as i64;
            assert_eq!(bucket["start"], midnight(day));
            let want = expected.get(&(item, day)).cloned().unwrap_or_default();
            let sales_count = want.primary + want.resale;
            let revenue = want.primary_revenue + want.resale_revenue;
            assert_eq!(
                bucket["primary_sales_count"], want.primary,
                "{item} day {day}: {bucket}"
            );
            assert_eq!(
                bucket["resale_sales_count"], want.resale,
                "{item} day {day}: {bucket}"
            );
            assert_eq!(
                bucket["refunded_count"], want.refunded,
                "{item} day {day}: {bucket}"
            );
            assert_eq!(
                bucket["sales_count"], sales_count,
                "{item} day {day}: {bucket}"
            );
            assert_eq!(bucket["primary_revenue"], want.primary_revenue);
            assert_eq!(bucket["resale_revenue"], want.resale_revenue);
            assert_eq!(bucket["revenue"], revenue, "{item} day {day}: {bucket}");
            let average = (sales_count > 0).then(|| revenue / sales_count);
            assert_eq!(
                bucket["average_price"],
                json!(average),
                "{item} day {day}: {bucket}"
            );
            if item == "crown" {
                carried = want.rap.or(carried);
                assert_eq!(
                    bucket["recent_average_price"],
                    json!(carried),
                    "day {day}: {bucket}"
                );
                if day < first_day {
                    assert_eq!(
                        bucket["lowest_resale_ask"],
                        Value::Null,
                        "day {day}: {bucket}"
                    );
                }
            } else {
                assert!(bucket.get("recent_average_price").is_none(), "{bucket}");
                assert!(bucket.get("lowest_resale_ask").is_none(), "{bucket}");
            }
        }
    }
    // All on one day (unless the run crossed midnight): the figures written out.
    if expected.keys().all(|(_, day)| *day == today) {
        let last = crown["buckets"].as_array().unwrap().last().unwrap();
        // Primary 100 + 100 + 150 (cat's 100 refunded), resale 250.
        assert_eq!(last["sales_count"], 4);
        assert_eq!(last["revenue"], 600);
        assert_eq!(last["average_price"], 150);
        assert_eq!(last["refunded_count"], 1);
        // 100, 100, 100, 100 + 50/10 = 105, 105 + 145/10 = 119.
        assert_eq!(last["recent_average_price"], 119);
        let last = hat["buckets"].as_array().unwrap().last().unwrap();
        assert_eq!(
            (last["sales_count"].clone(), last["revenue"].clone()),
            (json!(1), json!(30))
        );
    }
    // The last day agrees with the item's current figures.
    let item = app.get("/v1/items/crown", None).await.body;
    let last = crown["buckets"].as_array().unwrap().last().unwrap();
    assert_eq!(last["recent_average_price"], item["recent_average_price"]);
    assert_eq!(last["lowest_resale_ask"], item["lowest_resale_price"]);

    // Defaults: the 30 days up to now, today last.
    let default = app.get("/v1/items/crown/history", None).await;
    assert_eq!(default.status, 200, "{}", default.text);
    let buckets = default.body["buckets"].as_array().unwrap();
    assert_eq!(buckets.len(), 30);
    assert_eq!(buckets.last().unwrap()["start"], midnight(today));
    assert_eq!(default.body["to"], midnight(today + 1));

    // Refusals.
    for bad in [
        "/v1/items/crown/history?bucket=week".to_string(),
        "/v1/items/crown/history?from=2030-01-02T00:00:00Z&to=2030-01-01T00:00:00Z".to_string(),
        // 367 days.
        "/v1/items/crown/history?from=2029-01-01T00:00:00Z&to=2030-01-03T00:00:00Z".to_string(),
        "/v1/items/crown/history?from=yesterday".to_string(),
    ] {
        let refused = app.get(&bad, None).await;
        assert_eq!(refused.status, 400, "{bad}: {}", refused.text);
        assert_eq!(
            refused.code(),
            "validation_failed",
            "{bad}: {}",
            refused.text
        );
        assert_eq!(refused.content_type, "application/problem+json");
    }
    let unknown = app.get("/v1/items/nothing/history", None).await;
    assert_eq!(unknown.status, 404, "{}", unknown.text);
    assert_eq!(unknown.code(), "not_found");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn price_floors_refuse_cheap_items_and_grow_the_creators_share_with_the_price() {
    let app = spawn_app().await;
    let admin = app.admin();
    let floor =
        json!({"kind": "classic_clothing", "price": 50, "effective_from": "2026-01-01T00:00:00Z"});
    // Only an admin sets floors; an unknown kind is bad input.
    let by_user = app
        .post(
            "/v1/price-floors",
            Some(&app.token(Role::User, "maker")),
            &floor,
        )
        .await;
    assert_eq!(
        (by_user.status, by_user.code()),
        (403, "forbidden"),
        "{}",
        by_user.text
    );
    let unknown = app
        .post(
            "/v1/price-floors",
            Some(&admin),
            &json!({"kind": "hat", "price": 5}),
        )
        .await;
    assert_eq!(
        (unknown.status, unknown.code()),
        (422, "validation_failed"),
        "{}",
        unknown.text
    );
    let set = app.post("/v1/price-floors", Some(&admin), &floor).await;
    assert_eq!(set.status, 201, "{}", set.text);
    assert_eq!(set.body["version"], 1);
    assert_eq!(set.body["kind"], "classic_clothing");
    assert_eq!(set.body["effective_from"], "2026-01-01T00:00:00.000Z");
    // The same change again is the same command; another price for the same
    // kind and instant is a conflict.
    let again = app.post("/v1/price-floors", Some(&admin), &floor).await;
    assert_eq!((again.status, &again.body), (201, &set.body));
    let conflicting = app
        .post(
            "/v1/price-floors",
            Some(&admin),
            &json!({"kind": "classic_clothing", "price": 60, "effective_from": "2026-01-01T00:00:00Z"}),
        )
        .await;
    assert_eq!(
        conflicting.code(),
        "idempotency_conflict",
        "{}",
        conflicting.text
    );

    // Publishing under the floor is refused, and remembered under its id.
    let cheap = json!({"item_id": "cheap-shirt", "creator_id": "maker", "name": "Shirt", "price": 49, "kind": "classic_clothing"});
    let refused = app.publish(cheap.clone()).await;
    assert_eq!(
        (refused.status, refused.code()),
        (422, "below_price_floor"),
        "{}",
        refused.text
    );
    assert_eq!(app.publish(cheap).await.text, refused.text);
    assert_eq!(app.get("/v1/items/cheap-shirt", None).await.status, 404);
    // Another kind has no floor; at 3.5x the floor the creator gets 50%.
    let hat = app
        .publish(json!({"item_id": "plain-hat", "creator_id": "maker", "name": "Hat", "price": 40}))
        .await;
    assert_eq!(
        (hat.status, &hat.body["kind"]),
        (201, &json!("accessory")),
        "{}",
        hat.text
    );
    let shirt = app
        .publish(json!({"item_id": "shirt", "creator_id": "maker", "name": "Shirt", "price": 175, "kind": "classic_clothing"}))
        .await;
    assert_eq!(
        (shirt.status, &shirt.body["kind"]),
        (201, &json!("classic_clothing")),
        "{}",
        shirt.text
    );
    // Repricing under the floor is refused and changes nothing.
    let maker = app.token(Role::User, "maker");
    let under = app
        .post("/v1/items/shirt/price", Some(&maker), &json!({"price": 49}))
        .await;
    assert_eq!(
        (under.status, under.code()),
        (422, "below_price_floor"),
        "{}",
        under.text
    );
    let at_floor = app
        .post("/v1/items/shirt/price", Some(&maker), &json!({"price": 50}))
        .await;
    assert_eq!(at_floor.status, 200, "{}", at_floor.text);
    let back = app
        .post(
            "/v1/items/shirt/price",
            Some(&maker),
            &json!({"price": 175}),
        )
        .await;
    assert_eq!(back.status, 200, "{}", back.text);
    let item = app
        .get(
            &format!(
                "/v1/items/shirt?after={}",
                back.body["position"].as_str().unwrap()
            ),
            None,
        )
        .await;
    assert_eq!(
        (item.body["price"].as_i64(), item.body["kind"].as_str()),
        (Some(175), Some("classic_clothing")),
        "{}",
        item.text
    );

    assert_eq!(app.grant("floor-funds", "buyer", 1_000).await.status, 201);
    let bought_shirt = app.purchase("floor-p1", "buyer", "shirt", 175).await;
    assert_eq!(bought_shirt.status, 201, "{}", bought_shirt.text);
    let bought_hat = app.purchase("floor-p2", "buyer", "plain-hat", 40).await;
    assert_eq!(bought_hat.status, 201, "{}", bought_hat.text);
    // Policy 2 against the floor for the shirt (50% of 175, rounded down),
    // policy 1 for the hat (70% of 40).
    let sales = wait_for_auth(&app, "/v1/creators/maker/sales", &maker, |body| {
        body["sales"]
            .as_array()
            .is_some_and(|entries| entries.len() == 2)
    })
    .await;
    let mut splits: Vec<(String, i64, i64, i64)> = sales["sales"]
        .as_array()
        .unwrap()
        .iter()
        .map(|sale| {
            (
                sale["purchase_id"].as_str().unwrap().to_string(),
                sale["creator_share"].as_i64().unwrap(),
                sale["platform_fee"].as_i64().unwrap(),
                sale["fee_policy_version"].as_i64().unwrap(),
            )
        })
        .collect();
    splits.sort();
    assert_eq!(
        splits,
        [
            ("floor-p1".to_string(), 87, 88, 2),
            ("floor-p2".to_string(), 28, 12, 1),
        ]
    );
    let earnings = wait_for_auth(&app, "/v1/creators/maker/earnings", &maker, |body| {
        body["pending"] == 87 + 28
    })
    .await;
    assert_eq!(earnings["sales_count"], 2);

    // The floors read: classic clothing's floor in force, the others none.
    let floors = app
        .get(
            &format!(
                "/v1/price-floors?after={}",
                set.body["position"].as_str().unwrap()
            ),
            None,
        )
        .await;
    assert_eq!(floors.status, 200, "{}", floors.text);
    let kinds = floors.body["kinds"].as_array().unwrap();
    let clothing = kinds
        .iter()
        .find(|kind| kind["kind"] == "classic_clothing")
        .unwrap();
    assert_eq!(
        clothing["floor"],
        json!({"version": 1, "price": 50, "effective_from": "2026-01-01T00:00:00.000Z"})
    );
    assert_eq!(clothing["versions"].as_array().unwrap().len(), 1);
    let accessory = kinds
        .iter()
        .find(|kind| kind["kind"] == "accessory")
        .unwrap();
    assert_eq!(
        (
            &accessory["floor"],
            accessory["versions"].as_array().unwrap().len()
        ),
        (&Value::Null, 0)
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regional_prices_are_what_buyers_in_the_region_see_and_pay() {
    let app = spawn_app().await;
    let maker = app.token(Role::User, "maker");
    let hat = app
        .publish(
            json!({"item_id": "world-hat", "creator_id": "maker", "name": "Hat", "price": 100}),
        )
        .await;
    assert_eq!(hat.status, 201, "{}", hat.text);
    // Under 30 % of the base price, or a malformed region: refused.
    let cheap = app
        .put(
            "/v1/items/world-hat/regional-prices",
            Some(&maker),
            &json!({"prices": {"BR": 29}}),
        )
        .await;
    assert_eq!(
        (cheap.status, cheap.code()),
        (422, "validation_failed"),
        "{}",
        cheap.text
    );
    let malformed = app
        .put(
            "/v1/items/world-hat/regional-prices",
            Some(&maker),
            &json!({"prices": {"brazil": 40}}),
        )
        .await;
    assert_eq!(malformed.code(), "validation_failed", "{}", malformed.text);
    let set = app
        .put(
            "/v1/items/world-hat/regional-prices",
            Some(&maker),
            &json!({"prices": {"IN": 30, "BR": 45}}),
        )
        .await;
    assert_eq!(set.status, 200, "{}", set.text);
    assert_eq!(set.body["regional_prices"], json!({"BR": 45, "IN": 30}));
    let after = set.body["position"].as_str().unwrap().to_string();
    // What the storefront shows each buyer.
    let price_in = |region: &'static str| {
        let app = &app;
        let after = after.clone();
        async move {
            app.get(
                &format!("/v1/items/world-hat/price?user_id=ana&region={region}&after={after}"),
                None,
            )
            .await
        }
    };
    let brazil = price_in("BR").await;
    assert_eq!(
        (brazil.body["price"].as_i64(), brazil.body["rule"].as_str()),
        (Some(45), Some("region")),
        "{}",
        brazil.text
    );
    let germany = price_in("DE").await;
    assert_eq!(
        (
            germany.body["price"].as_i64(),
            germany.body["rule"].as_str()
        ),
        (Some(100), Some("base")),
        "{}",
        germany.text
    );
    // A user token may not choose its own region.
    assert_eq!(app.grant("world-funds-ana", "ana", 500).await.status, 201);
    assert_eq!(app.grant("world-funds-ben", "ben", 500).await.status, 201);
    let by_user = app
        .post(
            "/v1/purchases",
            Some(&app.token(Role::User, "ana")),
            &json!({"purchase_id": "world-p0", "buyer_id": "ana", "item_id": "world-hat", "expected_price": 45, "region": "BR"}),
        )
        .await;
    assert_eq!(
        (by_user.status, by_user.code()),
        (403, "forbidden"),
        "{}",
        by_user.text
    );
    // The purchase flow sets it: the buyer pays the regional price.
    let in_brazil = app
        .post(
            "/v1/purchases",
            Some(&app.service()),
            &json!({"purchase_id": "world-p1", "buyer_id": "ana", "item_id": "world-hat", "expected_price": 45, "region": "BR"}),
        )
        .await;
    assert_eq!(in_brazil.status, 201, "{}", in_brazil.text);
    assert_eq!(
        (
            in_brazil.body["price"].as_i64(),
            in_brazil.body["balance_after"].as_i64(),
            in_brazil.body["region"].as_str()
        ),
        (Some(45), Some(455), Some("BR"))
    );
    // The base price in Brazil is a changed price there.
    let stale = app
        .post(
            "/v1/purchases",
            Some(&app.service()),
            &json!({"purchase_id": "world-p2", "buyer_id": "ben", "item_id": "world-hat", "expected_price": 100, "region": "BR"}),
        )
        .await;
    assert_eq!(stale.code(), "price_changed", "{}", stale.text);
    let elsewhere = app
        .post(
            "/v1/purchases",
            Some(&app.service()),
            &json!({"purchase_id": "world-p3", "buyer_id": "ben", "item_id": "world-hat", "expected_price": 100, "region": "DE"}),
        )
        .await;
    assert_eq!(elsewhere.status, 201, "{}", elsewhere.text);
    // Earnings follow the price paid: 70 % of 45 and of 100.
    let earnings = wait_for_auth(&app, "/v1/creators/maker/earnings", &maker, |body| {
        body["sales_count"] == 2
    })
    .await;
    assert_eq!(earnings["pending"], 31 + 70);
    // A reprice that would leave Brazil under 30 % is refused.
    let too_high = app
        .post(
            "/v1/items/world-hat/price",
            Some(&maker),
            &json!({"price": 151}),
        )
        .await;
    assert_eq!(
        (too_high.status, too_high.code()),
        (422, "validation_failed"),
        "{}",
        too_high.text
    );
    let item = app
        .get(&format!("/v1/items/world-hat?after={after}"), None)
        .await;
    assert_eq!(
        item.body["regional_prices"],
        json!({"BR": 45, "IN": 30}),
        "{}",
        item.text
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_price_test_prices_each_buyer_by_a_stable_arm_and_its_results_match_what_happened() {
    let app = spawn_app().await;
    let maker = app.token(Role::User, "tester");
    let service = app.service();
    let cap = app
        .publish(
            json!({"item_id": "test-cap", "creator_id": "tester", "name": "Cap", "price": 100}),
        )
        .await;
    assert_eq!(cap.status, 201, "{}", cap.text);
    let crown = app
        .publish(json!({"item_id": "test-crown", "creator_id": "tester", "name": "Crown", "price": 100, "supply": 5}))
        .await;
    assert_eq!(crown.status, 201, "{}", crown.text);
    let ends_at =
        ledger_http::validate::format_timestamp(ledger_http::validate::now_ms() + 86_400_000);
    let start = |test_id: &'static str, item_id: &'static str| {
        let (app, maker, ends_at) = (&app, &maker, ends_at.clone());
        async move {
            app.post(
                "/v1/price-tests",
                Some(maker),
                &json!({"test_id": test_id, "item_id": item_id, "arms": [80, 120], "ends_at": ends_at, "apply_winner": true}),
            )
            .await
        }
    };
    // Limiteds are not tested; another creator may not test the item.
    let limited = start("crown-test", "test-crown").await;
    assert_eq!(
        (limited.status, limited.code()),
        (422, "validation_failed"),
        "{}",
        limited.text
    );
    let other = app
        .post(
            "/v1/price-tests",
            Some(&app.token(Role::User, "intruder")),
            &json!({"test_id": "intruder-test", "item_id": "test-cap", "arms": [80, 90], "ends_at": ends_at}),
        )
        .await;
    assert_eq!(
        (other.status, other.code()),
        (403, "forbidden"),
        "{}",
        other.text
    );
    let started = start("cap-test", "test-cap").await;
    assert_eq!(started.status, 201, "{}", started.text);
    assert_eq!(
        start("cap-test", "test-cap").await.text,
        started.text,
        "a repeat is the same answer"
    );
    let second = start("cap-test-2", "test-cap").await;
    assert_eq!(
        second.code(),
        "validation_failed",
        "one test at a time: {}",
        second.text
    );
    let after = started.body["position"].as_str().unwrap().to_string();

    // The storefront's price for each buyer: one arm each, stable.
    let mut arm_of = std::collections::BTreeMap::new();
    for buyer in 0..24 {
        let user = format!("tb-{buyer}");
        let seen = app
            .get(
                &format!("/v1/items/test-cap/price?user_id={user}&after={after}"),
                None,
            )
            .await;
        assert_eq!(seen.body["rule"], "test_arm", "{}", seen.text);
        let arm = seen.body["arm"].as_u64().unwrap() as usize;
        assert_eq!(seen.body["price"].as_i64(), Some([80, 120][arm]));
        let again = app
            .get(&format!("/v1/items/test-cap/price?user_id={user}"), None)
            .await;
        assert_eq!(again.body["arm"], seen.body["arm"], "stable for {user}");
        arm_of.insert(user, arm);
    }
    assert_eq!(
        arm_of.values().collect::<BTreeSet<_>>().len(),
        2,
        "both arms are shown: {arm_of:?}"
    );
    // Half the buyers buy at the price they were shown; one tries the other arm's price.
    let mut purchases = [0u64; 2];
    let mut revenue = [0i64; 2];
    let mut last_position = after.clone();
    for (index, (user, arm)) in arm_of.iter().enumerate() {
        assert_eq!(
            app.grant(&format!("{user}-funds"), user, 500).await.status,
            201
        );
        if index % 2 == 1 {
            continue;
        }
        let price = [80, 120][*arm];
        if index == 0 {
            let wrong = app
                .purchase("tp-wrong", user, "test-cap", [80, 120][1 - *arm])
                .await;
            assert_eq!(wrong.code(), "price_changed", "{}", wrong.text);
        }
        let bought = app
            .purchase(&format!("tp-{user}"), user, "test-cap", price)
            .await;
        assert_eq!(bought.status, 201, "{}", bought.text);
        purchases[*arm] += 1;
        revenue[*arm] += price;
        last_position = bought.body["position"].as_str().unwrap().to_string();
    }
    // Exposures, in batches: idempotent per batch; only the storefront reports them.
    let batch = json!({"batch_id": "b-1", "counts": [40, 30]});
    let reported = app
        .post("/v1/price-tests/cap-test/exposures", Some(&service), &batch)
        .await;
    assert_eq!(reported.status, 201, "{}", reported.text);
    let repeated = app
        .post("/v1/price-tests/cap-test/exposures", Some(&service), &batch)
        .await;
    assert_eq!(repeated.text, reported.text);
    let second_batch = app
        .post(
            "/v1/price-tests/cap-test/exposures",
            Some(&service),
            &json!({"batch_id": "b-2", "counts": [10, 25]}),
        )
        .await;
    assert_eq!(
        second_batch.body["exposures"],
        json!([50, 55]),
        "{}",
        second_batch.text
    );
    let by_user = app
        .post(
            "/v1/price-tests/cap-test/exposures",
            Some(&maker),
            &json!({"batch_id": "b-3", "counts": [1, 1]}),
        )
        .await;
    assert_eq!(by_user.code(), "forbidden", "{}", by_user.text);
    let wrong_arms = app
        .post(
            "/v1/price-tests/cap-test/exposures",
            Some(&service),
            &json!({"batch_id": "b-4", "counts": [1, 1, 1]}),
        )
        .await;
    assert_eq!(
        wrong_arms.code(),
        "validation_failed",
        "{}",
        wrong_arms.text
    );

    // The results equal what happened.
    let exposures = [50u64, 55];
    let results = wait_for_with(
        &app,
        &format!("/v1/price-tests/cap-test?after={last_position}"),
        None,
        |body| {
            body["arms"].as_array().is_some_and(|arms| {
                arms.iter()
                    .map(|arm| arm["exposures"].as_u64().unwrap())
                    .collect::<Vec<_>>()
                    == exposures
            })
        },
    )
    .await;
    let leading =
        if revenue[0] as i128 * exposures[1] as i128 >= revenue[1] as i128 * exposures[0] as i128 {
            0
        } else {
            1
        };
    for arm in 0..2 {
        let shown = &results["arms"][arm];
        assert_eq!(
            shown["purchases"].as_u64(),
            Some(purchases[arm]),
            "{results}"
        );
        assert_eq!(shown["revenue"].as_i64(), Some(revenue[arm]), "{results}");
        assert_eq!(
            shown["conversion_basis_points"].as_u64(),
            Some(purchases[arm] * 10_000 / exposures[arm])
        );
        assert_eq!(
            shown["revenue_per_thousand_exposures"].as_i64(),
            Some(revenue[arm] * 1_000 / exposures[arm] as i64)
        );
        assert!(
            shown["revenue_per_thousand_exposures_low"].as_i64()
                <= shown["revenue_per_thousand_exposures"].as_i64()
        );
        assert!(
            shown["revenue_per_thousand_exposures_high"].as_i64()
                >= shown["revenue_per_thousand_exposures"].as_i64()
        );
    }
    assert_eq!(results["leading_arm"], leading, "{results}");
    assert_eq!(results["status"], "running");

    // Ending it applies the winner as the item's price.
    let ended = app
        .post("/v1/price-tests/cap-test/end", Some(&maker), &json!({}))
        .await;
    assert_eq!(ended.status, 200, "{}", ended.text);
    assert_eq!(ended.body["winner"], leading);
    assert_eq!(
        ended.body["applied_price"].as_i64(),
        Some([80, 120][leading])
    );
    let again = app
        .post("/v1/price-tests/cap-test/end", Some(&maker), &json!({}))
        .await;
    assert_eq!(again.code(), "validation_failed", "{}", again.text);
    let position = ended.body["position"].as_str().unwrap();
    let price = app
        .get(
            &format!("/v1/items/test-cap/price?user_id=tb-0&after={position}"),
            None,
        )
        .await;
    assert_eq!(
        (price.body["price"].as_i64(), price.body["rule"].as_str()),
        (Some([80, 120][leading]), Some("base")),
        "{}",
        price.text
    );
    let ended_view = app
        .get(&format!("/v1/price-tests/cap-test?after={position}"), None)
        .await;
    assert_eq!(
        (
            ended_view.body["status"].as_str(),
            &ended_view.body["winner"]
        ),
        (Some("ended"), &json!(leading)),
        "{}",
        ended_view.text
    );
    assert_eq!(
        app.get("/v1/price-tests/no-such-test", None).await.status,
        404
    );

    // Analysts recompute the results from the public event stream.
    let events = eventually("the public stream to show the test's end", || async {
        let events = app.public_events().await;
        events
            .iter()
            .any(|event| {
                event.event_type == "ledger.price_test_ended.v1"
                    && event.data["test_id"] == "cap-test"
            })
            .then_some(events)
    })
    .await;
    let of_test = |kind: &str| -> Vec<&Value> {
        events
            .iter()
            .filter(|event| event.event_type == kind && event.data["test_id"] == "cap-test")
            .map(|event| &event.data)
            .collect()
    };
    let mut sold = [(0u64, 0i64); 2];
    for sale in of_test("ledger.price_test_sold.v1") {
        let arm = sale["arm"].as_u64().unwrap() as usize;
        sold[arm].0 += 1;
        sold[arm].1 += sale["price"].as_i64().unwrap();
    }
    let mut shown = [0u64; 2];
    for batch in of_test("ledger.price_test_exposed.v1") {
        for (arm, count) in batch["batch"].as_array().unwrap().iter().enumerate() {
            shown[arm] += count.as_u64().unwrap();
        }
    }
    for arm in 0..2 {
        assert_eq!(
            (sold[arm].0, sold[arm].1, shown[arm]),
            (
                results["arms"][arm]["purchases"].as_u64().unwrap(),
                results["arms"][arm]["revenue"].as_i64().unwrap(),
                results["arms"][arm]["exposures"].as_u64().unwrap()
            ),
            "arm {arm} from the public stream"
        );
    }
    assert_eq!(of_test("ledger.price_test_started.v1").len(), 1);
    assert_eq!(of_test("ledger.price_test_ended.v1")[0]["winner"], leading);
    app.stop().await;
}

/// A takedown of an item with sales on both sides of the escrow window: the
/// escrowed buyers get their money back once, the released sales stay and
/// are listed, the creator's pending earnings drop by exactly the reversed
/// shares, the item never sells again, and a second takedown answers as the
/// first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takedown_refunds_the_escrowed_buyers_and_lists_the_released_sales() {
    const HOLD_MS: u64 = 8_000;
    const EACH_SIDE: usize = 4;
    let app = marketplace_ledger::spawn_app_with(|settings| {
        settings.escrow_hold = std::time::Duration::from_millis(HOLD_MS)
    })
    .await;
    let admin = app.admin();
    let service = app.service();
    for n in 0..2 * EACH_SIDE {
        let granted = app
            .grant(&format!("g-td-{n}"), &format!("td-buyer-{n}"), 100)
            .await;
        assert_eq!(granted.status, 201, "{}", granted.text);
    }
    let published = app
        .publish(json!({"item_id": "td-hat", "creator_id": "td-maker", "name": "Hat", "price": 40}))
        .await;
    assert_eq!(published.status, 201, "{}", published.text);
    // Sales past escrow: bought, then released by the clock (70 % of 40 each).
    for n in 0..EACH_SIDE {
        let bought = app
            .purchase(&format!("td-p-{n}"), &format!("td-buyer-{n}"), "td-hat", 40)
            .await;
        assert_eq!(bought.status, 201, "{}", bought.text);
    }
    let released = wait_for_with_deadline(
        &app,
        "/v1/creators/td-maker/earnings",
        &service,
        std::time::Duration::from_millis(HOLD_MS * 3),
        |body| body["released"] == json!(28 * EACH_SIDE) && body["pending"] == 0,
    )
    .await;
    assert_eq!(released["pending"], 0);
    // Sales still in escrow.
    for n in EACH_SIDE..2 * EACH_SIDE {
        let bought = app
            .purchase(&format!("td-p-{n}"), &format!("td-buyer-{n}"), "td-hat", 40)
            .await;
        assert_eq!(bought.status, 201, "{}", bought.text);
    }
    // Only an admin takes an item down; nothing changes otherwise.
    let path = "/v1/items/td-hat/takedown";
    let refused = app.post(path, Some(&service), &json!({})).await;
    assert_eq!(
        (refused.status, refused.code()),
        (403, "forbidden"),
        "{}",
        refused.text
    );
    let first = app.post(path, Some(&admin), &json!({})).await;
    assert_eq!(first.status, 202, "{}", first.text);
    assert_eq!(first.body["status"], "refunding");
    assert_eq!(first.body["progress"], "/v1/takedowns/td-hat");
    // Done once every shard reported; the purchases left are listed from
    // each purchase's shard, projected on its own in the distributed mode,
    // so the list may trail the count for a moment.
    let done = wait_for_auth(&app, "/v1/takedowns/td-hat", &service, |body| {
        body["status"] == "done"
            && body["left"]["purchases"].as_array().map(Vec::len)
                == body["left"]["count"].as_u64().map(|count| count as usize)
    })
    .await;
    assert_eq!(
        done["refunded"],
        json!({"count": EACH_SIDE, "amount": 40 * EACH_SIDE})
    );
    assert_eq!(done["already_refunded"], 0);
    assert_eq!(done["left"]["count"], EACH_SIDE);
    let left: BTreeSet<String> = done["left"]["purchases"]
        .as_array()
        .expect("purchases left")
        .iter()
        .map(|left| {
            assert_eq!(left["reason"], "refund_window_closed");
            left["purchase_id"].as_str().expect("an id").to_string()
        })
        .collect();
    let expected: BTreeSet<String> = (0..EACH_SIDE).map(|n| format!("td-p-{n}")).collect();
    assert_eq!(
        left, expected,
        "the released sales are listed, and only they"
    );
    assert_eq!(
        done["left"]["next_cursor"],
        Value::Null,
        "one page holds them"
    );
    // Paged by purchase id: `limit` of them, then the next page from the
    // cursor, until the cursor is null.
    let mut paged = Vec::new();
    let mut page_path = "/v1/takedowns/td-hat?limit=3".to_string();
    let mut pages = 0;
    loop {
        let page = app.get(&page_path, Some(&service)).await;
        assert_eq!(page.status, 200, "{}", page.text);
        pages += 1;
        let purchases = page.body["left"]["purchases"].as_array().expect("a page");
        assert!(purchases.len() <= 3, "{}", page.text);
        assert_eq!(
            page.body["left"]["count"], EACH_SIDE,
            "the count is not paged"
        );
        paged.extend(
            purchases
                .iter()
                .map(|left| left["purchase_id"].as_str().expect("an id").to_string()),
        );
        match page.body["left"]["next_cursor"].as_str() {
            Some(cursor) => page_path = format!("/v1/takedowns/td-hat?limit=3&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(pages, EACH_SIDE.div_ceil(3));
    assert_eq!(
        paged,
        expected.iter().cloned().collect::<Vec<_>>(),
        "every purchase left once, in purchase id order"
    );
    let bad = app
        .get(
            "/v1/takedowns/td-hat?cursor=6f776e6572732f31",
            Some(&service),
        )
        .await;
    assert_eq!(
        (bad.status, bad.code()),
        (422, "validation_failed"),
        "another listing's cursor: {}",
        bad.text
    );
    // Escrowed buyers have their money back, once; the others keep the hat.
    for n in 0..2 * EACH_SIDE {
        let expected = if n < EACH_SIDE { 60 } else { 100 };
        let buyer = format!("td-buyer-{n}");
        eventually(&format!("{buyer}'s balance"), || async {
            (app.balance(&buyer, None).await == (expected, 0)).then_some(())
        })
        .await;
    }
    // The creator's pending earnings drop by exactly the reversed shares.
    let earnings = wait_for_auth(&app, "/v1/creators/td-maker/earnings", &service, |body| {
        body["pending"] == 0
    })
    .await;
    assert_eq!(earnings["released"], json!(28 * EACH_SIDE));
    // A second takedown answers as the first; the item never sells again.
    let second = app.post(path, Some(&admin), &json!({})).await;
    assert_eq!((second.status, &second.body), (first.status, &first.body));
    let late = app.purchase("td-late", "td-buyer-0", "td-hat", 40).await;
    assert_eq!(
        (late.status, late.code()),
        (409, "item_taken_down"),
        "{}",
        late.text
    );
    let toggle = app
        .post("/v1/items/td-hat/on-sale", Some(&admin), &json!({}))
        .await;
    assert_eq!(
        (toggle.status, toggle.code()),
        (409, "item_taken_down"),
        "{}",
        toggle.text
    );
    // Moderation data: not for a user token.
    let user = app.token(ledger_core::Role::User, "td-buyer-0");
    let forbidden = app.get("/v1/takedowns/td-hat", Some(&user)).await;
    assert_eq!(forbidden.status, 403, "{}", forbidden.text);
    let unknown = app.get("/v1/takedowns/td-none", Some(&service)).await;
    assert_eq!(unknown.status, 404, "{}", unknown.text);
    // Analysts see the takedown and each of its refunds on the public stream.
    let events = eventually("the takedown on the public stream", || async {
        let events = app.public_events().await;
        let refunds = events
            .iter()
            .filter(|event| {
                event.event_type == "ledger.purchase_refunded.v1"
                    && event.data["refund_id"]
                        .as_str()
                        .is_some_and(|id| id.starts_with("takedown-"))
            })
            .count();
        (refunds == EACH_SIDE).then_some(events)
    })
    .await;
    let taken_down: Vec<_> = events
        .iter()
        .filter(|event| event.event_type == "ledger.item_taken_down.v1")
        .collect();
    assert_eq!(taken_down.len(), 1);
    assert_eq!(taken_down[0].data["item_id"], "td-hat");
    app.stop().await;
}

async fn wait_for_with_deadline(
    app: &TestApp,
    path: &str,
    token: &str,
    deadline: std::time::Duration,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + deadline;
    loop {
        let answer = app.get(path, Some(token)).await;
        if answer.status == 200 && done(&answer.body) {
            return answer.body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{path} never reached the expected state; last answer: {}",
            answer.text
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// A cart's line of an item or a bundle, as `POST /v1/carts` takes it.
fn cart_line(kind: &str, id: &str, price: i64) -> Value {
    json!({ kind: id, "expected_price": price })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cart_is_all_or_nothing_in_one_debit_and_settles_every_creator() {
    let app = spawn_app().await;
    let service = app.service();
    let admin = app.admin();
    // 17 plain items of five creators, a Limited sold out before the cart
    // (one serial), another Limited (five serials), a bundle of two items.
    let mut lines = Vec::new();
    let mut shares: std::collections::BTreeMap<String, (i64, i64)> = Default::default();
    for index in 0..17i64 {
        let creator = format!("cart-maker-{}", index % 5);
        let item = format!("cart-item-{index}");
        let price = 10 + index;
        let published = app
            .publish(
                json!({"item_id": item, "creator_id": creator, "name": "Thing", "price": price}),
            )
            .await;
        assert_eq!(published.status, 201, "{}", published.text);
        lines.push(cart_line("item_id", &item, price));
        let share = shares.entry(creator).or_default();
        share.0 += price * 70 / 100;
        share.1 += 1;
    }
    for body in [
        json!({"item_id": "cart-drop", "creator_id": "cart-drops", "name": "Drop", "price": 50, "supply": 1, "resellable": true}),
        json!({"item_id": "cart-orb", "creator_id": "cart-drops", "name": "Orb", "price": 60, "supply": 1, "resellable": true}),
        json!({"item_id": "cart-crown", "creator_id": "cart-crowns", "name": "Crown", "price": 40, "supply": 5, "resellable": true}),
        json!({"item_id": "cart-scarf", "creator_id": "cart-kits", "name": "Scarf", "price": 30}),
        json!({"item_id": "cart-boots", "creator_id": "cart-kits", "name": "Boots", "price": 30}),
    ] {
        let published = app.publish(body).await;
        assert_eq!(published.status, 201, "{}", published.text);
    }
    let kits = app.token(Role::User, "cart-kits");
    let bundle = app
        .post("/v1/bundles", Some(&kits), &json!({"bundle_id": "cart-kit", "creator_id": "cart-kits", "name": "Kit", "item_ids": ["cart-scarf", "cart-boots"], "price": 50}))
        .await;
    assert_eq!(bundle.status, 201, "{}", bundle.text);
    assert_eq!(
        app.grant("cart-funds-ann", "cart-ann", 10_000).await.status,
        201
    );
    assert_eq!(
        app.grant("cart-funds-bob", "cart-bob", 100).await.status,
        201
    );
    let bob = app
        .purchase("cart-bob-drop", "cart-bob", "cart-drop", 50)
        .await;
    assert_eq!(bob.status, 201, "{}", bob.text);

    // Line 3 the crown, line 7 the sold-out drop, line 20 the bundle.
    lines.insert(2, cart_line("item_id", "cart-crown", 40));
    lines.insert(6, cart_line("item_id", "cart-drop", 50));
    lines.push(cart_line("bundle_id", "cart-kit", 50));
    assert_eq!(lines.len(), 20);

    // Refused before it is a command: 21 lines, a line twice, a user
    // choosing its region.
    let mut too_many = lines.clone();
    too_many.push(cart_line("item_id", "cart-orb", 60));
    let long = app
        .post(
            "/v1/carts",
            Some(&service),
            &json!({"purchase_id": "cart-x", "buyer_id": "cart-ann", "lines": too_many}),
        )
        .await;
    assert_eq!(
        (long.status, long.code()),
        (422, "validation_failed"),
        "{}",
        long.text
    );
    let mut twice = lines.clone();
    twice[4] = lines[0].clone();
    let doubled = app
        .post(
            "/v1/carts",
            Some(&service),
            &json!({"purchase_id": "cart-x", "buyer_id": "cart-ann", "lines": twice}),
        )
        .await;
    assert_eq!((doubled.status, doubled.code()), (422, "validation_failed"));
    assert!(
        doubled.body["detail"]
            .as_str()
            .unwrap()
            .starts_with("line 5: "),
        "{}",
        doubled.text
    );
    let by_user = app
        .post("/v1/carts", Some(&app.token(Role::User, "cart-ann")), &json!({"purchase_id": "cart-x", "buyer_id": "cart-ann", "region": "BR", "lines": lines}))
        .await;
    assert_eq!((by_user.status, by_user.code()), (403, "forbidden"));

    // A 20-line cart with one sold-out Limited leaves no trace.
    let refused = app
        .post(
            "/v1/carts",
            Some(&service),
            &json!({"purchase_id": "cart-1", "buyer_id": "cart-ann", "lines": lines}),
        )
        .await;
    assert_eq!(
        (refused.status, refused.code()),
        (409, "sold_out"),
        "{}",
        refused.text
    );
    assert_eq!(refused.body["detail"], "line 7: item cart-drop is sold out");

    // The same cart with the orb instead of the drop is paid in one debit.
    lines[6] = cart_line("item_id", "cart-orb", 60);
    let total: i64 = lines
        .iter()
        .map(|line| line["expected_price"].as_i64().unwrap())
        .sum();
    let cart = json!({"purchase_id": "cart-2", "buyer_id": "cart-ann", "lines": lines});
    let paid = app.post("/v1/carts", Some(&service), &cart).await;
    assert_eq!(paid.status, 201, "{}", paid.text);
    assert_eq!(paid.body["total"], total);
    assert_eq!(paid.body["balance_after"], 10_000 - total);
    let paid_lines = paid.body["lines"].as_array().unwrap();
    assert_eq!(paid_lines.len(), 20);
    for (index, line) in paid_lines.iter().enumerate() {
        assert_eq!(line["purchase_id"], format!("cart-2.line-{}", index + 1));
        assert_eq!(line["price"], lines[index]["expected_price"]);
    }
    // The crown's first serial: the refused cart held it, then let it go.
    assert_eq!(paid_lines[2]["serial"], 1);
    assert_eq!(paid_lines[6]["serial"], 1);
    assert_eq!(
        paid_lines[19]["granted_item_ids"],
        json!(["cart-scarf", "cart-boots"])
    );
    let after = paid.body["position"].as_str().unwrap().to_string();
    assert!(
        after.split('_').count() <= ledger_core::READ_POSITION_PARTS_MAX,
        "{after}"
    );
    // A retry gets the identical answer.
    let again = app.post("/v1/carts", Some(&service), &cart).await;
    assert_eq!((again.status, &again.text), (201, &paid.text));

    // One debit: the buyer paid the total once, nothing for the refused cart.
    let (balance, _) = app.balance("cart-ann", Some(&after)).await;
    assert_eq!(balance, 10_000 - total);
    let inventory = eventually("every line granted", || async {
        let inventory = app
            .all_pages("/v1/users/cart-ann/inventory", "items", Some(&service))
            .await;
        (inventory.len() >= 21).then_some(inventory)
    })
    .await;
    let owned: BTreeSet<String> = inventory
        .iter()
        .map(|entry| entry["item_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(inventory.len(), 21, "{inventory:?}");
    for index in 0..17 {
        assert!(owned.contains(&format!("cart-item-{index}")));
    }
    for item in ["cart-orb", "cart-crown", "cart-scarf", "cart-boots"] {
        assert!(owned.contains(item), "{item}");
    }
    assert!(!owned.contains("cart-drop"));
    let crown = wait_for(
        &app,
        &format!("/v1/items/cart-crown?after={after}"),
        |body| body["sold"] == 1,
    )
    .await;
    assert_eq!(crown["remaining"], 4);
    // Every creator settled on their own lines.
    shares.insert("cart-crowns".into(), (28, 1));
    shares.insert("cart-kits".into(), (35, 1));
    for (creator, (pending, sales)) in &shares {
        let earnings = wait_for_auth(
            &app,
            &format!("/v1/creators/{creator}/earnings?after={after}"),
            &service,
            |body| body["sales_count"] == *sales,
        )
        .await;
        assert_eq!(earnings["pending"], *pending, "{creator}: {earnings}");
    }
    let drops = wait_for_auth(
        &app,
        &format!("/v1/creators/cart-drops/earnings?after={after}"),
        &service,
        |body| body["sales_count"] == 2,
    )
    .await;
    assert_eq!(drops["pending"], 35 + 42, "bob's drop and the cart's orb");

    // The public stream: one purchase of each line, with its creator's
    // share, adding up to the one debit.
    let lines_published = eventually("the cart's lines on the public stream", || async {
        let events = app.public_events().await;
        let lines: Vec<Value> = events
            .iter()
            .filter(|event| {
                event.event_type == "ledger.purchase_completed.v1"
                    && event.data["purchase_id"]
                        .as_str()
                        .is_some_and(|id| id.starts_with("cart-2.line-"))
            })
            .map(|event| event.data.clone())
            .collect();
        (lines.len() == 20).then_some(lines)
    })
    .await;
    let mut paid_out = 0;
    let mut pending: std::collections::BTreeMap<String, i64> = Default::default();
    for line in &lines_published {
        paid_out += line["wallet_changes"][0]["amount"].as_i64().unwrap();
        *pending
            .entry(line["creator_id"].as_str().unwrap().to_string())
            .or_default() += line["creator_share"].as_i64().unwrap();
    }
    assert_eq!(paid_out, -total);
    for (creator, (share, _)) in &shares {
        assert_eq!(pending.get(creator), Some(share), "{creator} on the stream");
    }
    assert_eq!(pending.get("cart-drops"), Some(&42));

    // Support reads the cart's story and each line's.
    let cart_trace = wait_for_auth(
        &app,
        &format!("/v1/purchases/cart-2?after={after}"),
        &service,
        |body| in_order(&step_names(body), &["accepted", "paid", "completed"]),
    )
    .await;
    assert_eq!(
        step_names(&cart_trace)
            .iter()
            .filter(|name| *name == "granted")
            .count(),
        19
    );
    let orb = wait_for_auth(
        &app,
        &format!("/v1/purchases/cart-2.line-7?after={after}"),
        &service,
        |body| {
            let names = step_names(body);
            ["reserved", "granted", "settled", "completed"]
                .iter()
                .all(|step| names.iter().any(|name| name == step))
        },
    )
    .await;
    assert!(orb["steps"].as_array().unwrap().len() >= 4, "{orb}");

    // One line is refunded on its own: exactly its price comes back.
    let refund = app
        .post(
            "/v1/refunds",
            Some(&admin),
            &json!({"refund_id": "cart-r-3", "purchase_id": "cart-2.line-3"}),
        )
        .await;
    assert_eq!(refund.status, 201, "{}", refund.text);
    assert_eq!(refund.body["amount"], 40);
    let after_refund = refund.body["position"].as_str().unwrap().to_string();
    let (balance, _) = app.balance("cart-ann", Some(&after_refund)).await;
    assert_eq!(balance, 10_000 - total + 40);
    let crowns = wait_for_auth(
        &app,
        "/v1/creators/cart-crowns/earnings",
        &service,
        |body| body["sales_count"] == 0,
    )
    .await;
    assert_eq!(crowns["pending"], 0);
    app.stop().await;
}
