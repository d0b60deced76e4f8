//! A CQL database that lost the end of the shards' logs it had acknowledged
//! (as a Cassandra node killed with `commitlog_sync: periodic` does: it
//! replays only what it had synced), while Kafka holds those records: the
//! engine that takes the shards over writes them back to CQL, owns every
//! shard, becomes ready, answers every earlier command as it did, takes new
//! ones, and `ledger verify --kafka --cql` finds nothing. (The chaos runs'
//! Cassandra crash, distributed seeds 2 and 35, lost such tails; engines
//! then stayed unready and owned no shard.)
//!
//! Needs `LEDGER_TEST_BACKEND=distributed` with `LEDGER_KAFKA_BOOTSTRAP` and
//! `LEDGER_CQL_CONTACT` (`scripts/test` sets them); skipped otherwise.
#![cfg(feature = "distributed")]

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::start;

mod support;

const SECRET: &str = "distributed-cql-loss-secret-0123456789";
const GRANTS: usize = 40;
/// Records removed from the end of each shard's log in CQL.
const LOST_RECORDS: usize = 3;

/// Waits until the engine at `base` owns every shard and is ready (bounded).
async fn wait_until_owning_every_shard(client: &reqwest::Client, base: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let owned = support::metric(client, base, "ledger_worker_shards_owned").await;
        let ready = match client.get(format!("{base}/readyz")).send().await {
            Ok(response) => response.status().as_u16() == 200,
            Err(_) => false,
        };
        if ready && owned == Some(f64::from(support::SHARDS)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the engine never became ready owning every shard: owns {owned:?}, ready {ready}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn grant(client: &reqwest::Client, base: &str, body: &Value) -> (u16, Value) {
    support::post_until_answered(
        client,
        SECRET,
        &[base],
        "/v1/grants",
        body,
        Duration::from_secs(60),
    )
    .await
}

/// Deletes the last [`LOST_RECORDS`] records of every shard from CQL, as a
/// database that lost acknowledged writes would; returns how many it deleted.
async fn lose_the_ends_of_the_logs(keyspace: &str) -> usize {
    let contact = std::env::var("LEDGER_CQL_CONTACT").expect("LEDGER_CQL_CONTACT is set");
    let session = scylla::client::session_builder::SessionBuilder::new()
        .known_nodes(contact.split(',').map(str::trim))
        .use_keyspace(keyspace, false)
        .build()
        .await
        .expect("a CQL session");
    let mut deleted = 0;
    for shard in 0..i32::from(support::SHARDS) {
        let buckets: Vec<(i64,)> = session
            .query_unpaged(
                "SELECT bucket FROM record_buckets WHERE shard = ?",
                (shard,),
            )
            .await
            .expect("bucket read")
            .into_rows_result()
            .expect("rows")
            .rows::<(i64,)>()
            .expect("bucket rows")
            .collect::<Result<_, _>>()
            .expect("bucket values");
        let Some(&(bucket,)) = buckets.last() else {
            continue;
        };
        let firsts: Vec<(i64,)> = session
            .query_unpaged(
                "SELECT first_sequence FROM records WHERE shard = ? AND bucket = ?",
                (shard, bucket),
            )
            .await
            .expect("record read")
            .into_rows_result()
            .expect("rows")
            .rows::<(i64,)>()
            .expect("record rows")
            .collect::<Result<_, _>>()
            .expect("record values");
        for &(first,) in firsts.iter().rev().take(LOST_RECORDS) {
            session
                .query_unpaged(
                    "DELETE FROM records WHERE shard = ? AND bucket = ? AND first_sequence = ?",
                    (shard, bucket, first),
                )
                .await
                .expect("record delete");
            deleted += 1;
        }
    }
    deleted
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_restores_from_kafka_what_cql_lost_and_owns_its_shards_again() {
    if !support::distributed_backend() {
        return;
    }
    let name = support::unique_name("l");
    let environment = support::environment(&name, SECRET);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("http client");

    let first = start("command-api", &environment);
    wait_until_owning_every_shard(&client, &first.url).await;
    let mut answers = Vec::new();
    for index in 0..GRANTS {
        let body = json!({
            "grant_id": format!("g{index}"),
            "user_id": format!("u{}", index % 8),
            "amount": index as i64 + 1,
        });
        let answer = grant(&client, &first.url, &body).await;
        assert_eq!(answer.0, 201, "grant {index}: {answer:?}");
        answers.push((body, answer));
    }
    // A clean stop: every batch is published, so Kafka holds the whole log.
    first.stop();

    let deleted = lose_the_ends_of_the_logs(&name).await;
    assert!(
        deleted >= LOST_RECORDS,
        "the grants wrote too few records to lose some: {deleted}"
    );

    let second = start("command-api", &environment);
    wait_until_owning_every_shard(&client, &second.url).await;
    let restored = support::metric(
        &client,
        &second.url,
        "ledger_worker_restored_from_kafka_events_total",
    )
    .await
    .unwrap_or(0.0);
    assert!(
        restored >= deleted as f64,
        "{deleted} records were lost but only {restored} events written back"
    );
    for (body, answer) in &answers {
        let again = grant(&client, &second.url, body).await;
        assert_eq!(
            &again, answer,
            "{body} answered differently after the restore"
        );
    }
    let new = json!({"grant_id": "g-after", "user_id": "u0", "amount": 7});
    let answer = grant(&client, &second.url, &new).await;
    assert_eq!(answer.0, 201, "a new grant after the restore: {answer:?}");
    // A clean stop again, then the log must verify on both sides.
    second.stop();

    let output = std::process::Command::new(support::ledger_binary())
        .arg("verify")
        .args([
            "--kafka",
            "--kafka-bootstrap",
            &std::env::var("LEDGER_KAFKA_BOOTSTRAP").expect("set"),
            "--topic-prefix",
            &name,
            "--cql",
            "--cql-contact",
            &std::env::var("LEDGER_CQL_CONTACT").expect("set"),
            "--cql-keyspace",
            &name,
            "--json",
        ])
        .output()
        .expect("ledger verify runs");
    let report: Value = serde_json::from_slice(&output.stdout).unwrap_or(Value::Null);
    assert!(
        output.status.success(),
        "ledger verify found something: {} {}",
        report["report"]["findings"],
        String::from_utf8_lossy(&output.stderr)
    );
    let granted: i64 = (1..=GRANTS as i64).sum::<i64>() + 7;
    assert_eq!(
        report["report"]["trial_balance"]["issuance"]
            .as_i64()
            .map(i64::abs),
        Some(granted),
        "the log issued something else than the grants: {}",
        report["report"]["trial_balance"]
    );
    support::remove_test_data(&name).await;
}
