//! `kill -9` of the Kafka broker under load, several times, with real
//! `ledger` services (command API with its engine worker, projector, query
//! API) on the real Kafka and CQL database: the ledger heals by itself.
//!
//! A broker that restarts while a transaction is being committed can skip
//! the transaction's markers on partitions whose leader it does not know yet
//! and then forget them: the transaction hangs on those partitions. Without
//! the takeover's sweep (`end_hanging_transactions`) a new owner read an
//! older "last published event", republished what became visible later
//! (two copies of part of a shard's history), and its group's offsets stayed
//! unstable so it consumed nothing. This test checks the outcome users see:
//! every command is answered, each shard's Kafka log holds every event of
//! its CQL log once and in order, the read models add up, and readiness
//! comes back.
//!
//! The engine stops its process when a Kafka transaction fails (its memory
//! may be ahead of what is durable); the test restarts stopped services, as
//! Kubernetes would. It needs `LEDGER_TEST_BACKEND=distributed`, the brokers'
//! addresses and `scripts/infra` (which `scripts/test` provides): it crashes
//! the shared broker, so it runs in the distributed pass, one test at a time.
#![cfg(feature = "distributed")]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use engine::ports::EventStore;
use ledger_core::codec::BatchRecord;
use ledger_core::ShardId;
use log_kafka::{ChainCursor, EventLogReader, KafkaConfig, Topics};
use serde_json::json;
use tokio::task::JoinSet;

const SECRET: &str = "broker-crash-secret-0123456789";
const BUYERS: usize = 40;
const GRANT: i64 = 1_000;
const STAR_SUPPLY: u64 = 150;
const STAR_PRICE: i64 = 10;
const HATS: usize = 10;
const HAT_PRICE: i64 = 3;
const CRASHES: usize = 3;
/// Requests in flight during the load.
const SENDERS: usize = 32;
/// Purchases answered between a recovery and the next crash, so each crash
/// lands on a busy engine (many transactions in every state).
const ANSWERS_BEFORE_CRASH: usize = 60;

fn infra_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/infra")
}

fn infra(arguments: &[&str]) -> bool {
    Command::new(infra_script())
        .args(arguments)
        .status()
        .map(|status| status.success())
        .unwrap_or(false)
}

/// Brings Kafka back whatever happens to the test: the broker is shared.
struct KafkaBack;

impl Drop for KafkaBack {
    fn drop(&mut self) {
        let _ = infra(&["up", "kafka"]);
        let _ = infra(&["wait", "kafka"]);
    }
}

/// Restarts a service whenever its process ends, until stopped.
struct Supervisor {
    stop: Arc<AtomicBool>,
    restarts: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Supervisor {
    fn start(role: &'static str, environment: Vec<(String, String)>, address: String) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let restarts = Arc::new(AtomicUsize::new(0));
        let (stopping, counted) = (stop.clone(), restarts.clone());
        let thread = std::thread::spawn(move || {
            let mut child: Child = support::spawn(role, &environment, &address, role);
            while !stopping.load(Ordering::SeqCst) {
                if let Ok(Some(_)) = child.try_wait() {
                    counted.fetch_add(1, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(300));
                    child = support::spawn(role, &environment, &address, role);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
        });
        Self {
            stop,
            restarts,
            thread: Some(thread),
        }
    }

    fn restarts(&self) -> usize {
        self.restarts.load(Ordering::SeqCst)
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// What the load was answered, by purchase id.
#[derive(Default)]
struct Answers {
    stars: BTreeSet<u64>,
    hats: u64,
    spent_by_buyer: BTreeMap<String, i64>,
    refusals: BTreeMap<String, u64>,
}

/// Keeps what an acknowledged purchase did, and checks a refusal is one the
/// load can meet.
fn record(
    answers: &mut Answers,
    status: u16,
    answer: &serde_json::Value,
    buyer: String,
    item: &str,
    price: i64,
) {
    match status {
        201 => {
            *answers.spent_by_buyer.entry(buyer).or_default() += price;
            if item == "star" {
                let serial = answer["serial"].as_u64().expect("a star has a serial");
                assert!(answers.stars.insert(serial), "serial {serial} sold twice");
            } else {
                answers.hats += 1;
            }
        }
        409 => {
            let code = answer["code"].as_str().unwrap_or("").to_string();
            assert!(
                ["sold_out", "already_owned", "insufficient_funds"].contains(&code.as_str()),
                "unexpected refusal {answer}"
            );
            *answers.refusals.entry(code).or_default() += 1;
        }
        other => panic!("unexpected answer {other}: {answer}"),
    }
}

async fn wait_until_ready(client: &reqwest::Client, base: &str, patience: Duration) {
    let deadline = Instant::now() + patience;
    loop {
        let ready = client
            .get(format!("{base}/readyz"))
            .send()
            .await
            .is_ok_and(|response| response.status().as_u16() == 200);
        if ready {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{base} not ready within {patience:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_crashes_under_load_heal_with_one_copy_of_every_event() {
    if !support::distributed_backend() {
        return;
    }
    let _kafka_back = KafkaBack;
    let name = support::unique_name("b");
    let environment = support::environment(&name, SECRET);
    let command_address = support::free_address();
    let projector_address = support::free_address();
    let commands = Supervisor::start("command-api", environment.clone(), command_address.clone());
    let projector = Supervisor::start("projector", environment.clone(), projector_address);
    let query = support::start("query-api", &environment);
    let command_url = format!("http://{command_address}");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(40))
        .build()
        .expect("http client");
    wait_until_ready(&client, &command_url, Duration::from_secs(90)).await;

    let setup = Duration::from_secs(120);
    let urls = [command_url.as_str()];
    let star = json!({"item_id": "star", "creator_id": "forge", "name": "Star", "price": STAR_PRICE, "supply": STAR_SUPPLY});
    let (status, body) =
        support::post_until_answered(&client, SECRET, &urls, "/v1/items", &star, setup).await;
    assert_eq!(status, 201, "{body}");
    for hat in 0..HATS {
        let item = json!({"item_id": format!("hat-{hat}"), "creator_id": "forge", "name": "Hat", "price": HAT_PRICE});
        let (status, body) =
            support::post_until_answered(&client, SECRET, &urls, "/v1/items", &item, setup).await;
        assert_eq!(status, 201, "{body}");
    }
    for buyer in 0..BUYERS {
        let grant = json!({"grant_id": format!("g-{buyer}"), "user_id": format!("b-{buyer}"), "amount": GRANT});
        let (status, body) =
            support::post_until_answered(&client, SECRET, &urls, "/v1/grants", &grant, setup).await;
        assert_eq!(status, 201, "{body}");
    }

    // The load runs until every crash is over and a little after; each
    // request is retried with the same id until it is answered.
    let crashes_over = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicUsize::new(0));
    let answers = Arc::new(Mutex::new(Answers::default()));
    let client = Arc::new(client);
    let mut senders = JoinSet::new();
    for sender in 0..SENDERS {
        let (client, answers, over) = (client.clone(), answers.clone(), crashes_over.clone());
        let answered = answered.clone();
        let command_url = command_url.clone();
        senders.spawn(async move {
            let mut sent = 0usize;
            while !over.load(Ordering::SeqCst) || sent < 20 {
                let index = sent * SENDERS + sender;
                let buyer = format!("b-{}", index % BUYERS);
                let (item, price) = if index.is_multiple_of(3) {
                    (format!("hat-{}", (index / 3) % HATS), HAT_PRICE)
                } else {
                    ("star".to_string(), STAR_PRICE)
                };
                let body = json!({"purchase_id": format!("p-{index}"), "buyer_id": buyer, "item_id": item, "expected_price": price});
                let (status, answer) = support::post_until_answered(
                    &client,
                    SECRET,
                    &[command_url.as_str()],
                    "/v1/purchases",
                    &body,
                    Duration::from_secs(300),
                )
                .await;
                record(&mut answers.lock().expect("answers lock"), status, &answer, buyer, &item, price);
                sent += 1;
                answered.fetch_add(1, Ordering::SeqCst);
            }
            sent
        });
    }
    // Crash the broker while the engine is busy: each time once the load
    // has had answers again since the last recovery, at a different moment.
    for crash in 0..CRASHES {
        let before = answered.load(Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(180);
        while answered.load(Ordering::SeqCst) < before + ANSWERS_BEFORE_CRASH {
            assert!(
                Instant::now() < deadline,
                "the load made no progress before crash {crash}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(300 * crash as u64)).await;
        assert!(
            infra(&["crash", "kafka"]),
            "scripts/infra crash kafka failed"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(infra(&["up", "kafka"]), "scripts/infra up kafka failed");
        assert!(infra(&["wait", "kafka"]), "kafka did not come back");
    }
    crashes_over.store(true, Ordering::SeqCst);
    let mut requests = 0;
    while let Some(sent) = senders.join_next().await {
        requests += sent.expect("sender task");
    }
    eprintln!(
        "{requests} purchases answered across {CRASHES} broker crashes; command-api restarted {} times, projector {} times",
        commands.restarts(),
        projector.restarts()
    );

    // Readiness comes back, and the engine consumes: a fresh command answers.
    wait_until_ready(&client, &command_url, Duration::from_secs(120)).await;
    let probe = json!({"grant_id": "after-the-crashes", "user_id": "prober", "amount": 1});
    let (status, body) =
        support::post_until_answered(&client, SECRET, &urls, "/v1/grants", &probe, setup).await;
    assert_eq!(status, 201, "{body}");

    // Each shard's Kafka log holds its CQL log exactly: read from the first
    // offset, every record continues the chain (a second copy of any record
    // is a gap), it ends where CQL ends, and it is CQL's log record for
    // record.
    let kafka = KafkaConfig::new(std::env::var("LEDGER_KAFKA_BOOTSTRAP").expect("bootstrap"));
    let topics = Topics::with_prefix(&name);
    let contact: Vec<String> = std::env::var("LEDGER_CQL_CONTACT")
        .expect("contact")
        .split(',')
        .map(|point| point.trim().to_string())
        .collect();
    let store = store_cql::CqlStore::connect(&contact, &name, store_cql::CqlSettings::default())
        .await
        .expect("the CQL store");
    for shard in (0..support::SHARDS).map(ShardId) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let mut reader =
                EventLogReader::open(&kafka, &topics, shard, 0, Some(ChainCursor::genesis()))
                    .expect("a reader of the events topic");
            let published: Vec<BatchRecord> = reader
                .read_to_end(Duration::from_secs(60))
                .await
                .unwrap_or_else(|error| panic!("shard {shard}'s kafka log: {error}"))
                .into_iter()
                .map(|published| published.record)
                .collect();
            let last = published.last().expect("every shard has records");
            let beyond = store
                .read_shard(shard, last.last_sequence(), 1)
                .await
                .expect("CQL log");
            if beyond.is_empty() {
                let stored = store
                    .read_shard(shard, 0, usize::MAX)
                    .await
                    .expect("CQL log");
                assert_eq!(
                    stored.last().map(|record| record.hash),
                    Some(last.hash),
                    "shard {shard}: kafka and CQL end on the same record"
                );
                assert!(
                    stored == published,
                    "shard {shard}: kafka's {} records differ from CQL's {}",
                    published.len(),
                    stored.len()
                );
                break;
            }
            assert!(
                Instant::now() < deadline,
                "shard {shard}: CQL holds events beyond kafka's {}",
                last.last_sequence()
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    // The read models add up to exactly what was acknowledged.
    let answers = Arc::try_unwrap(answers)
        .ok()
        .expect("senders are done")
        .into_inner()
        .expect("answers lock");
    let stars = answers.stars.len() as u64;
    assert!(stars > 0, "some stars were sold");
    assert_eq!(
        answers.stars,
        (1..=stars).collect::<BTreeSet<u64>>(),
        "serials are dense"
    );
    assert!(stars <= STAR_SUPPLY);
    let sales = stars + answers.hats;
    let earnings_url = format!("{}/v1/creators/forge/earnings", query.url);
    let pending = stars as i64 * 7 + answers.hats as i64 * 2;
    let earnings = support::wait_for(
        &client,
        SECRET,
        &earnings_url,
        Duration::from_secs(90),
        |earnings| {
            earnings["sales_count"].as_u64() == Some(sales)
                && earnings["pending"].as_i64() == Some(pending)
        },
    )
    .await;
    assert_eq!(
        earnings["pending"].as_i64(),
        Some(pending),
        "the creator's share of every acknowledged sale: {earnings}"
    );
    let deadline = Instant::now() + Duration::from_secs(90);
    for buyer in 0..BUYERS {
        let user = format!("b-{buyer}");
        let expected = GRANT - answers.spent_by_buyer.get(&user).copied().unwrap_or(0);
        let url = format!("{}/v1/users/{user}/balance", query.url);
        loop {
            let balance = support::get(&client, SECRET, &url).await;
            if balance["balance"].as_i64() == Some(expected) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{user} should hold {expected} after paying for exactly what they got: {balance}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    drop(commands);
    drop(projector);
    drop(query);
    support::remove_test_data(&name).await;
}
