//! `kill -9` one of two engine instances of the distributed ledger under
//! load (real `ledger command-api` processes, real Kafka and CQL): its shards
//! move to the other, every acknowledged purchase survives, no serial is sold
//! twice and no money is lost or created.
//!
//! Needs `LEDGER_TEST_BACKEND=distributed` with `LEDGER_KAFKA_BOOTSTRAP` and
//! `LEDGER_CQL_CONTACT` (`scripts/test` sets them); skipped otherwise.
#![cfg(feature = "distributed")]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ledger_core::{Role, UserId};
use serde_json::{json, Value};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

const SECRET: &str = "distributed-kill-secret-0123456789";
const BUYERS: usize = 60;
const PURCHASES: usize = 240;
const SUPPLY: u64 = 100;

struct Process {
    child: Child,
    url: String,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(role: &str, environment: &[(String, String)]) -> Process {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ledger"))
        .arg(role)
        .envs(
            environment
                .iter()
                .map(|(key, value)| (key.as_str(), value.as_str())),
        )
        .env("LEDGER_HTTP_ADDR", "127.0.0.1:0")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ledger binary starts");
    let stderr = child.stderr.take().expect("stderr is piped");
    let mut lines = BufReader::new(stderr).lines();
    let url = loop {
        let line = lines
            .next()
            .unwrap_or_else(|| panic!("{role} exited before listening"))
            .expect("readable stderr");
        if let Some((_, url)) = line.split_once("listening on ") {
            break url.trim().to_string();
        }
        eprintln!("{role}: {line}");
    };
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            eprintln!("[service] {line}");
        }
    });
    Process { child, url }
}

fn token(role: Role, sub: &str) -> String {
    command_api::auth::issue_token(
        SECRET.as_bytes(),
        role,
        &UserId::parse(sub).expect("valid subject"),
        3_600,
        command_api::auth::now_seconds(),
    )
}

async fn post(
    client: &reqwest::Client,
    url: &str,
    body: &Value,
) -> Result<(u16, Value), reqwest::Error> {
    let (role, sub) = if url.ends_with("/v1/grants") {
        (Role::Admin, "admin")
    } else {
        (Role::Service, "purchase-flow")
    };
    let response = client
        .post(url)
        .bearer_auth(token(role, sub))
        .json(body)
        .send()
        .await?;
    let status = response.status().as_u16();
    let body = response.json::<Value>().await.unwrap_or(Value::Null);
    Ok((status, body))
}

/// The `ledger_worker_shards_owned` gauge of a command-api process.
async fn shards_owned(client: &reqwest::Client, base: &str) -> Option<u64> {
    let text = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix("ledger_worker_shards_owned "))
        .and_then(|value| value.trim().parse::<f64>().ok())
        .map(|value| value as u64)
}

/// Waits until `check` holds for the shards owned by `bases` (bounded).
async fn wait_for_ownership(
    client: &reqwest::Client,
    bases: &[&str],
    check: impl Fn(&[u64]) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let mut owned = Vec::new();
        for base in bases {
            owned.push(shards_owned(client, base).await.unwrap_or(0));
        }
        if check(&owned) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "shard ownership never settled: {owned:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn get(client: &reqwest::Client, url: &str) -> Value {
    let response = client
        .get(url)
        .bearer_auth(token(Role::Service, "purchase-flow"))
        .send()
        .await
        .expect("query API answers");
    assert_eq!(response.status().as_u16(), 200, "{url}");
    response.json().await.expect("json")
}

/// Posts until a definitive answer, to `first` and then (once it is dead)
/// to `fallback`, with the same body: the command id makes retries safe.
async fn post_until_answered(
    client: &reqwest::Client,
    urls: [&str; 2],
    path: &str,
    body: &Value,
) -> (u16, Value) {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut attempt = 0usize;
    loop {
        let url = format!("{}{path}", urls[attempt.min(1)]);
        match post(client, &url, body).await {
            Ok((status, body)) if status != 503 && status != 504 => return (status, body),
            Ok(_) | Err(_) => {
                assert!(
                    Instant::now() < deadline,
                    "no answer for {body} within 120 s"
                );
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_nine_of_an_engine_moves_its_shards_and_loses_nothing() {
    if std::env::var("LEDGER_TEST_BACKEND").ok().as_deref() != Some("distributed") {
        eprintln!("skipped; set LEDGER_TEST_BACKEND=distributed (scripts/test does)");
        return;
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_nanos())
        .unwrap_or(0);
    let name = format!("k{}_{}", nanos % 1_000_000_000_000, std::process::id());
    let environment: Vec<(String, String)> = vec![
        ("LEDGER_SHARDS".into(), "4".into()),
        ("LEDGER_TOPIC_PREFIX".into(), name.clone()),
        ("LEDGER_CQL_KEYSPACE".into(), name.clone()),
        ("LEDGER_REPLY_PARTITIONS".into(), "2".into()),
        ("LEDGER_JWT_SECRET".into(), SECRET.into()),
        ("LEDGER_SNAPSHOT_EVERY_EVENTS".into(), "300".into()),
        (
            "LEDGER_KAFKA_BOOTSTRAP".into(),
            std::env::var("LEDGER_KAFKA_BOOTSTRAP").expect("LEDGER_KAFKA_BOOTSTRAP is set"),
        ),
        (
            "LEDGER_CQL_CONTACT".into(),
            std::env::var("LEDGER_CQL_CONTACT").expect("LEDGER_CQL_CONTACT is set"),
        ),
    ];
    let victim = start("command-api", &environment);
    let survivor = start("command-api", &environment);
    let projector = start("projector", &environment);
    let query = start("query-api", &environment);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("http client");
    let victim_url = victim.url.clone();
    let survivor_url = survivor.url.clone();
    let urls = [victim_url.as_str(), survivor_url.as_str()];

    let (status, body) = post_until_answered(
        &client,
        urls,
        "/v1/items",
        &json!({"item_id": "star", "creator_id": "forge", "name": "Star", "price": 20, "supply": SUPPLY}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = post_until_answered(
        &client,
        urls,
        "/v1/items",
        &json!({"item_id": "hat", "creator_id": "forge", "name": "Hat", "price": 5}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    for buyer in 0..BUYERS {
        let (status, body) = post_until_answered(
            &client,
            urls,
            "/v1/grants",
            &json!({"grant_id": format!("g-{buyer}"), "user_id": format!("b-{buyer}"), "amount": 300}),
        )
        .await;
        assert_eq!(status, 201, "{body}");
    }

    // Both engines own half of the four shards before the load starts.
    wait_for_ownership(&client, &urls, |owned| owned == [2, 2]).await;

    // Load through both instances; the victim dies part-way.
    let client = Arc::new(client);
    let urls_owned = Arc::new([victim_url.clone(), survivor_url.clone()]);
    let permits = Arc::new(Semaphore::new(24));
    let mut tasks = JoinSet::new();
    // Even requests go to the victim first (then to the survivor once it is
    // dead), odd ones to the survivor; the victim is killed a third of the way in.
    let mut victim = Some(victim);
    for request in 0..PURCHASES {
        let client = client.clone();
        let urls_owned = urls_owned.clone();
        let permit = permits.clone().acquire_owned().await.expect("semaphore");
        tasks.spawn(async move {
            let _permit = permit;
            let item = if request % 3 == 0 { "hat" } else { "star" };
            let price = if item == "hat" { 5 } else { 20 };
            let body = json!({"purchase_id": format!("buy-{request}"), "buyer_id": format!("b-{}", request % BUYERS), "item_id": item, "expected_price": price});
            let first = if request % 2 == 0 { 0 } else { 1 };
            let order = [urls_owned[first].as_str(), urls_owned[1].as_str()];
            let (status, answer) = post_until_answered(&client, order, "/v1/purchases", &body).await;
            (request, item, status, answer)
        });
        if request == PURCHASES / 3 {
            // SIGKILL, no shutdown: open transactions and unflushed work die with it.
            let mut killed = victim.take().expect("killed once");
            killed.child.kill().expect("SIGKILL delivered");
            killed.child.wait().expect("victim reaped");
        }
    }
    let mut serials = BTreeSet::new();
    let mut hats = 0u64;
    let mut spent_by_buyer: BTreeMap<String, i64> = BTreeMap::new();
    while let Some(result) = tasks.join_next().await {
        let (request, item, status, answer) = result.expect("purchase task");
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
    // The survivor took over the victim's shards.
    wait_for_ownership(&client, &[survivor_url.as_str()], |owned| owned == [4]).await;
    let stars = serials.len() as u64;
    assert!(
        stars > 0 && stars <= SUPPLY,
        "{stars} stars sold of {SUPPLY}"
    );
    assert_eq!(
        serials,
        (1..=stars).collect::<BTreeSet<u64>>(),
        "serials are dense"
    );

    // The read models, once caught up, hold every acknowledged purchase.
    let deadline = Instant::now() + Duration::from_secs(60);
    let earnings_url = format!("{}/v1/creators/forge/earnings", query.url);
    loop {
        let earnings = get(&client, &earnings_url).await;
        if earnings["sales_count"].as_u64() == Some(stars + hats) {
            assert_eq!(
                earnings["pending"].as_i64(),
                Some((stars * 14 + hats * 3) as i64),
                "the creator's share of every acknowledged sale: {earnings}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "earnings never caught up: {earnings}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let item = get(&client, &format!("{}/v1/items/star", query.url)).await;
    assert_eq!(item["sold"].as_u64(), Some(stars), "{item}");
    let deadline = Instant::now() + Duration::from_secs(60);
    for buyer in 0..BUYERS {
        let name = format!("b-{buyer}");
        let expected = 300 - spent_by_buyer.get(&name).copied().unwrap_or(0);
        loop {
            let balance = get(&client, &format!("{}/v1/users/{name}/balance", query.url)).await;
            if balance["balance"].as_i64() == Some(expected) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{name} should have {expected} after paying for exactly what they got: {balance}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // Stop the services, then drop what this test created in the shared brokers.
    drop(survivor);
    drop(projector);
    drop(query);
    remove_test_data(&name).await;
}

/// Drops the test's keyspace and deletes its topics (best effort): the
/// brokers are shared by every test of the run.
async fn remove_test_data(name: &str) {
    let contact = std::env::var("LEDGER_CQL_CONTACT").unwrap_or_default();
    let nodes: Vec<&str> = contact.split(',').map(str::trim).collect();
    if let Ok(session) = scylla::client::session_builder::SessionBuilder::new()
        .known_nodes(nodes)
        .build()
        .await
    {
        let _ = session
            .query_unpaged(format!("DROP KEYSPACE IF EXISTS {name}"), &[])
            .await;
    }
    let kafka =
        log_kafka::KafkaConfig::new(std::env::var("LEDGER_KAFKA_BOOTSTRAP").unwrap_or_default());
    if let Ok(admin) = log_kafka::TopicAdmin::connect(&kafka) {
        let _ = admin
            .delete_topics(&log_kafka::Topics::with_prefix(name))
            .await;
    }
}
