//! The zombie test: `SIGSTOP` one of two engine instances of the
//! distributed ledger under load, past its session timeout; the other takes
//! its shards over and writes; then `SIGCONT` the paused one, whose state
//! is stale. Real `ledger command-api` processes, real Kafka and CQL.
//!
//! Afterwards the CQL log, the Kafka log and the read models hold exactly
//! one history: `ledger verify --kafka --cql` finds every chain whole and
//! the two copies identical, every acknowledged purchase is in the balances
//! and earnings once, and no serial is sold twice.
//!
//! Needs `LEDGER_TEST_BACKEND=distributed` with `LEDGER_KAFKA_BOOTSTRAP` and
//! `LEDGER_CQL_CONTACT` (`scripts/test` sets them); skipped otherwise.
#![cfg(feature = "distributed")]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::start;

mod support;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

const SECRET: &str = "distributed-pause-secret-0123456789";
const BUYERS: usize = 40;
const SUPPLY: u64 = 150;
/// Purchases before the pause, while paused (after the takeover), and
/// after the paused engine resumed.
const PHASES: [usize; 3] = [60, 60, 60];

fn signal(process: &support::Process, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([format!("-{signal}"), process.child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill -{signal} delivered");
}

async fn shards_owned(client: &reqwest::Client, base: &str) -> Option<u64> {
    support::metric(client, base, "ledger_worker_shards_owned")
        .await
        .map(|value| value as u64)
}

/// The outcome of one purchase: (request, item, status, answer).
type Outcome = (usize, &'static str, u16, Value);

/// Runs purchases `range` through `url`, `concurrency` at a time.
async fn purchases(
    client: &Arc<reqwest::Client>,
    url: &str,
    range: std::ops::Range<usize>,
) -> Vec<Outcome> {
    let permits = Arc::new(Semaphore::new(16));
    let mut tasks = JoinSet::new();
    for request in range {
        let client = client.clone();
        let url = url.to_string();
        let permit = permits.clone().acquire_owned().await.expect("semaphore");
        tasks.spawn(async move {
            let _permit = permit;
            let item: &'static str = if request % 3 == 0 { "hat" } else { "star" };
            let price = if item == "hat" { 5 } else { 20 };
            let body = json!({"purchase_id": format!("buy-{request}"), "buyer_id": format!("b-{}", request % BUYERS), "item_id": item, "expected_price": price});
            let (status, answer) = support::post_until_answered(
                &client,
                SECRET,
                &[url.as_str()],
                "/v1/purchases",
                &body,
                Duration::from_secs(120),
            )
            .await;
            (request, item, status, answer)
        });
    }
    let mut outcomes = Vec::new();
    while let Some(result) = tasks.join_next().await {
        outcomes.push(result.expect("purchase task"));
    }
    outcomes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_engine_resumed_after_its_takeover_cannot_fork_the_log() {
    if !support::distributed_backend() {
        return;
    }
    let name = support::unique_name("z");
    let environment = support::environment(&name, SECRET);
    let paused = start("command-api", &environment);
    let survivor = start("command-api", &environment);
    let projector = start("projector", &environment);
    let query = start("query-api", &environment);
    let client = Arc::new(
        reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("http client"),
    );
    let survivor_url = survivor.url.clone();
    let urls = [survivor_url.as_str()];
    for item in [
        json!({"item_id": "star", "creator_id": "forge", "name": "Star", "price": 20, "supply": SUPPLY}),
        json!({"item_id": "hat", "creator_id": "forge", "name": "Hat", "price": 5}),
    ] {
        let (status, body) = support::post_until_answered(
            &client,
            SECRET,
            &urls,
            "/v1/items",
            &item,
            Duration::from_secs(120),
        )
        .await;
        assert_eq!(status, 201, "{body}");
    }
    for buyer in 0..BUYERS {
        let (status, body) = support::post_until_answered(
            &client,
            SECRET,
            &urls,
            "/v1/grants",
            &json!({"grant_id": format!("g-{buyer}"), "user_id": format!("b-{buyer}"), "amount": 400}),
            Duration::from_secs(120),
        )
        .await;
        assert_eq!(status, 201, "{body}");
    }
    // Both engines own two of the four shards.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let owned = [
            shards_owned(&client, &paused.url).await.unwrap_or(0),
            shards_owned(&client, &survivor_url).await.unwrap_or(0),
        ];
        if owned == [2, 2] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "ownership never split: {owned:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Phase 1: load, and the pause a third of the way in. Commands for the
    // paused engine's shards wait for the takeover, then complete.
    let [first, second, third] = PHASES;
    let phase_one = tokio::spawn({
        let client = client.clone();
        let url = survivor_url.clone();
        async move { purchases(&client, &url, 0..first).await }
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    signal(&paused, "STOP");
    let mut outcomes = phase_one.await.expect("phase one");

    // The survivor owns every shard (the paused engine missed its session
    // timeout); phase 2 makes it write to the shards it took over.
    let deadline = Instant::now() + Duration::from_secs(90);
    while shards_owned(&client, &survivor_url).await != Some(4) {
        assert!(
            Instant::now() < deadline,
            "the survivor never took every shard"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    outcomes.extend(purchases(&client, &survivor_url, first..first + second).await);

    // The paused engine resumes with a stale view of two shards: whatever
    // it appends must be refused. It either stops (a refused append stops
    // the process) or rejoins the group and takes shards over cleanly.
    signal(&paused, "CONT");
    let mut paused = paused;
    let deadline = Instant::now() + Duration::from_secs(60);
    let resumed_as = loop {
        if let Some(status) = paused.child.try_wait().expect("wait") {
            break format!("stopped ({status})");
        }
        let owned = shards_owned(&client, &paused.url).await;
        let survivor_owned = shards_owned(&client, &survivor_url).await;
        if let (Some(owned), Some(survivor_owned)) = (owned, survivor_owned) {
            if owned + survivor_owned == 4 && owned > 0 {
                break format!("rejoined with {owned} shards");
            }
        }
        if Instant::now() >= deadline {
            break "still running without shards".to_string();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let refused = paused.logged("written by another writer");
    eprintln!("the resumed engine {resumed_as}; a stale append of it was refused: {refused}");

    // Phase 3: load again, through the survivor.
    outcomes.extend(
        purchases(
            &client,
            &survivor_url,
            first + second..first + second + third,
        )
        .await,
    );

    let mut serials = BTreeSet::new();
    let mut hats = 0u64;
    let mut spent_by_buyer: BTreeMap<String, i64> = BTreeMap::new();
    for (request, item, status, answer) in outcomes {
        match status {
            201 => {
                let buyer = format!("b-{}", request % BUYERS);
                if item == "star" {
                    let serial = answer["serial"].as_u64().expect("serial");
                    assert!(serials.insert(serial), "serial {serial} sold twice");
                    *spent_by_buyer.entry(buyer).or_default() += 20;
                } else {
                    hats += 1;
                    *spent_by_buyer.entry(buyer).or_default() += 5;
                }
            }
            409 => {
                let code = answer["code"].as_str().unwrap_or("");
                assert!(
                    ["sold_out", "already_owned", "insufficient_funds"].contains(&code),
                    "unexpected refusal {answer}"
                );
            }
            other => panic!("unexpected answer {other}: {answer}"),
        }
    }
    let stars = serials.len() as u64;
    assert!(stars > 0 && stars <= SUPPLY, "{stars} stars of {SUPPLY}");
    assert_eq!(
        serials,
        (1..=stars).collect::<BTreeSet<u64>>(),
        "serials are dense"
    );

    // The read models hold every acknowledged purchase once.
    let pending = (stars * 14 + hats * 3) as i64;
    support::wait_for(
        &client,
        SECRET,
        &format!("{}/v1/creators/forge/earnings", query.url),
        Duration::from_secs(60),
        |earnings| {
            earnings["sales_count"].as_u64() == Some(stars + hats)
                && earnings["pending"].as_i64() == Some(pending)
        },
    )
    .await;
    support::wait_for(
        &client,
        SECRET,
        &format!("{}/v1/items/star", query.url),
        Duration::from_secs(60),
        |item| item["sold"].as_u64() == Some(stars),
    )
    .await;
    for buyer in 0..BUYERS {
        let user = format!("b-{buyer}");
        let expected = 400 - spent_by_buyer.get(&user).copied().unwrap_or(0);
        support::wait_for(
            &client,
            SECRET,
            &format!("{}/v1/users/{user}/balance", query.url),
            Duration::from_secs(60),
            |balance| balance["balance"].as_i64() == Some(expected),
        )
        .await;
    }
    // Cleanly: an engine publishes every batch it queued before it exits
    // (the resumed one may have stopped already, or own shards again).
    paused.stop();
    survivor.stop();
    drop(projector);
    drop(query);

    // One history in CQL and on Kafka: every chain whole, the copies equal,
    // and the log alone proves every balance.
    let output = tokio::task::spawn_blocking({
        let name = name.clone();
        move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_ledger"))
                .args([
                    "verify",
                    "--kafka",
                    "--json",
                    "--balances",
                    "--topic-prefix",
                    &name,
                    "--cql",
                    "--cql-keyspace",
                    &name,
                ])
                .output()
                .expect("ledger verify runs")
        }
    })
    .await
    .expect("verify task");
    let report: Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|_| {
        panic!(
            "verify prints JSON: {}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    assert!(
        output.status.success(),
        "verify found something: {report:#}"
    );
    assert_eq!(report["report"]["trial_balance"]["total"], 0);
    assert!(
        report["copies"]["identical_records"].as_u64() > Some(0),
        "{}",
        report["copies"]
    );
    for buyer in 0..BUYERS {
        let user = format!("b-{buyer}");
        let expected = 400 - spent_by_buyer.get(&user).copied().unwrap_or(0);
        assert_eq!(
            report["balances"][&user]["balance"].as_i64(),
            Some(expected),
            "the log proves {user}'s balance"
        );
    }
    support::remove_test_data(&name).await;
}
