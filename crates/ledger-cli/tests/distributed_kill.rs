//! `kill -9` one of two engine instances of the distributed ledger under
//! load (real `ledger command-api` processes, real Kafka and CQL): its shards
//! move to the other, every acknowledged purchase survives, no serial is sold
//! twice and no money is lost or created.
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

const SECRET: &str = "distributed-kill-secret-0123456789";
const BUYERS: usize = 60;
const PURCHASES: usize = 240;
const SUPPLY: u64 = 100;

/// The `ledger_worker_shards_owned` gauge of a command-api process.
async fn shards_owned(client: &reqwest::Client, base: &str) -> Option<u64> {
    support::metric(client, base, "ledger_worker_shards_owned")
        .await
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
    support::get(client, SECRET, url).await
}

/// Posts until a definitive answer, to `first` and then (once it is dead)
/// to `fallback`, with the same body: the command id makes retries safe.
async fn post_until_answered(
    client: &reqwest::Client,
    urls: [&str; 2],
    path: &str,
    body: &Value,
) -> (u16, Value) {
    support::post_until_answered(client, SECRET, &urls, path, body, Duration::from_secs(120)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_nine_of_an_engine_moves_its_shards_and_loses_nothing() {
    if !support::distributed_backend() {
        return;
    }
    let name = support::unique_name("k");
    let environment = support::environment(&name, SECRET);
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
    let pending = (stars * 14 + hats * 3) as i64;
    let earnings = support::wait_for(
        &client,
        SECRET,
        &earnings_url,
        deadline.saturating_duration_since(Instant::now()),
        |earnings| {
            earnings["sales_count"].as_u64() == Some(stars + hats)
                && earnings["pending"].as_i64() == Some(pending)
        },
    )
    .await;
    assert_eq!(
        earnings["pending"].as_i64(),
        Some(pending),
        "the creator's share of every acknowledged sale: {earnings}"
    );
    // The sold count is the item shard's: awaited for itself.
    let item = support::wait_for(
        &client,
        SECRET,
        &format!("{}/v1/items/star", query.url),
        Duration::from_secs(60),
        |item| item["sold"].as_u64() == Some(stars),
    )
    .await;
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
    // While the survivor still runs: its last batches may be only in CQL
    // (it answers before Kafka publishes), and with --cql they count.
    let live = {
        let name = name.to_string();
        tokio::task::spawn_blocking(move || verify_with_cql(&name, &name))
            .await
            .unwrap()
    };
    assert!(
        live.status.success(),
        "verify --kafka --cql of the running ledger found something: {}",
        String::from_utf8_lossy(&live.stdout)
    );
    // Stop the services (the engine cleanly: it publishes what it queued),
    // then drop what this test created in the shared brokers.
    survivor.stop();
    drop(projector);
    drop(query);
    auditors_verify_the_topic(&name, &spent_by_buyer).await;
    support::remove_test_data(&name).await;
}

/// `ledger verify --kafka --json --balances --cql` of the topic `<prefix>.events`
/// against the CQL keyspace `keyspace`.
fn verify_with_cql(prefix: &str, keyspace: &str) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_ledger"))
        .args([
            "verify",
            "--kafka",
            "--json",
            "--balances",
            "--topic-prefix",
            prefix,
        ])
        .args(["--cql", "--cql-keyspace", keyspace])
        .env(
            "LEDGER_KAFKA_BOOTSTRAP",
            std::env::var("LEDGER_KAFKA_BOOTSTRAP").expect("bootstrap"),
        )
        .env(
            "LEDGER_CQL_CONTACT",
            std::env::var("LEDGER_CQL_CONTACT").expect("cql contact"),
        )
        .output()
        .expect("ledger verify runs")
}

/// `ledger verify --kafka` after the kill: the events topic alone proves
/// every buyer's balance; the same topic copied with one byte of one record
/// changed is refused, naming the shard.
async fn auditors_verify_the_topic(name: &str, spent_by_buyer: &BTreeMap<String, i64>) {
    // The topic `<prefix>.events`, compared with this test's CQL keyspace.
    let keyspace = name.to_string();
    let verify = move |prefix: &str| verify_with_cql(prefix, &keyspace);
    let output = tokio::task::spawn_blocking({
        let name = name.to_string();
        let verify = verify.clone();
        move || verify(&name)
    })
    .await
    .unwrap();
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
        "the cql copy holds the published records: {}",
        report["copies"]
    );
    assert_eq!(
        report["report"]["shards"].as_array().map(Vec::len),
        Some(support::SHARDS as usize)
    );
    for buyer in 0..BUYERS {
        let user = format!("b-{buyer}");
        let expected = 300 - spent_by_buyer.get(&user).copied().unwrap_or(0);
        assert_eq!(
            report["balances"][&user]["balance"].as_i64(),
            Some(expected),
            "the log proves what the read models show for {user}"
        );
    }

    // A copy of the topic with one byte of one record of shard 1 changed.
    let tampered = format!("{name}_tampered");
    let bootstrap = std::env::var("LEDGER_KAFKA_BOOTSTRAP").expect("bootstrap");
    let (copied, changed_offset) = tokio::task::spawn_blocking({
        let name = name.to_string();
        let tampered = tampered.clone();
        move || copy_with_one_byte_changed(&bootstrap, &name, &tampered, 1)
    })
    .await
    .unwrap();
    assert!(copied > 0);
    let output = tokio::task::spawn_blocking({
        let tampered = tampered.clone();
        move || verify(&tampered)
    })
    .await
    .unwrap();
    assert_eq!(output.status.code(), Some(1), "a changed byte is a finding");
    let report: Value = serde_json::from_slice(&output.stdout).expect("verify prints JSON");
    let findings = report["report"]["findings"].as_array().unwrap();
    assert!(
        findings.iter().any(|finding| finding["shard"] == 1
            && finding["code"] == "bad_checksum"
            && finding["detail"]
                .as_str()
                .unwrap()
                .contains(&format!("offset {changed_offset}"))),
        "the finding names shard 1 and the offset: {findings:?}"
    );
    assert!(
        findings
            .iter()
            .any(|finding| finding["shard"] == 1 && finding["code"] == "missing_on_kafka"),
        "the cql copy still holds the record the topic lost: {findings:?}"
    );
    support::remove_test_data(&tampered).await;
}

/// Copies every committed record of `<from>.events` to `<to>.events` (same
/// partitions), with one byte changed in the middle of the first record of
/// partition `partition_changed`. Returns the records copied and the offset
/// of the changed one in the copy.
fn copy_with_one_byte_changed(
    bootstrap: &str,
    from: &str,
    to: &str,
    partition_changed: i32,
) -> (u64, i64) {
    use log_kafka::rdkafka::producer::Producer;
    use log_kafka::rdkafka::producer::{BaseRecord, DefaultProducerContext, ThreadedProducer};
    let config = log_kafka::KafkaConfig::new(bootstrap);
    let source = format!("{from}.events");
    let target = format!("{to}.events");
    let partitions = log_kafka::partition_count(&config, &source, Duration::from_secs(30))
        .expect("the events topic exists");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let admin = log_kafka::TopicAdmin::connect(&config).unwrap();
        admin
            .ensure_topics(
                &log_kafka::Topics::with_prefix(to),
                log_kafka::TopicLayout::single_node(partitions as u16),
            )
            .await
            .unwrap();
    });
    let producer: ThreadedProducer<DefaultProducerContext> =
        config.client_config(&[("acks", "all")]).create().unwrap();
    let mut copied = 0;
    let mut changed_offset = -1;
    for partition in 0..partitions {
        let mut first = true;
        let mut records: Vec<Vec<u8>> = Vec::new();
        log_kafka::read_partition_bytes(
            &config,
            &source,
            partition,
            Duration::from_secs(60),
            &mut |_, bytes| records.push(bytes.to_vec()),
        )
        .unwrap();
        for (index, mut bytes) in records.into_iter().enumerate() {
            if partition == partition_changed && first {
                let middle = bytes.len() / 2;
                bytes[middle] ^= 1;
                first = false;
                changed_offset = index as i64;
            }
            producer
                .send(
                    BaseRecord::<(), [u8]>::to(&target)
                        .partition(partition)
                        .payload(&bytes[..]),
                )
                .map_err(|(error, _)| error)
                .unwrap();
            copied += 1;
        }
    }
    producer.flush(Duration::from_secs(30)).unwrap();
    (copied, changed_offset)
}
