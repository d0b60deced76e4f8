//! Crash safety: `kill -9` the real `ledger serve` process under load, start
//! it again on the same data directory, and check that every acknowledged
//! purchase is there, nothing is half-applied and the money adds up.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use ledger_core::{Role, UserId};
use serde_json::{json, Value};

const SECRET: &str = "crash-test-secret-0123456789abcdef";

struct Server {
    child: Child,
    command_url: String,
    query_url: String,
}

fn start(data_dir: &std::path::Path) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ledger"))
        .args([
            "serve",
            "--command-addr",
            "127.0.0.1:0",
            "--query-addr",
            "127.0.0.1:0",
            "--shards",
            "4",
        ])
        .env("LEDGER_DATA_DIR", data_dir)
        .env("LEDGER_JWT_SECRET", SECRET)
        .env("RUST_LOG", "warn")
        // Load that buys faster than a person: no purchase rate limits.
        .env("LEDGER_PURCHASE_LIMIT", "0")
        .env("LEDGER_ITEM_REQUEST_INTERVAL", "0s")
        // Snapshots every 50 events per shard: a restart restores from a
        // snapshot, then replays the log after it.
        .env("LEDGER_SNAPSHOT_EVERY_EVENTS", "50")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ledger binary starts");
    let stderr = child.stderr.take().expect("stderr is piped");
    let mut lines = BufReader::new(stderr).lines();
    let mut command_url = String::new();
    let mut query_url = String::new();
    while command_url.is_empty() || query_url.is_empty() {
        let line = lines
            .next()
            .expect("server prints its addresses")
            .expect("readable stderr");
        if let Some(url) = line.strip_prefix("command API: ") {
            command_url = url.trim().to_string();
        }
        if let Some(url) = line.strip_prefix("query API:") {
            query_url = url.trim().to_string();
        }
    }
    // Keep draining stderr so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Server {
        child,
        command_url,
        query_url,
    }
}

fn token(role: Role, sub: &str) -> String {
    ledger_http::auth::issue_token(
        SECRET.as_bytes(),
        role,
        &UserId::parse(sub).unwrap(),
        3_600,
        ledger_http::auth::now_seconds(),
    )
}

async fn post(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    body: &Value,
) -> Result<(u16, String), reqwest::Error> {
    let response = client
        .post(url)
        .bearer_auth(token)
        .json(body)
        .send()
        .await?;
    let status = response.status().as_u16();
    Ok((status, response.text().await?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_nine_under_load_loses_nothing_acknowledged() {
    let data_dir = std::env::temp_dir().join(format!("ledger-crash-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data_dir);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let admin = token(Role::Admin, "admin");
    let service = token(Role::Service, "purchase-flow");

    let mut server = start(&data_dir);
    let buyers = 40;
    let items = 30;
    for index in 0..buyers {
        let body = json!({"grant_id": format!("g-{index}"), "user_id": format!("b-{index}"), "amount": 1_000});
        let (status, text) = post(
            &client,
            &format!("{}/v1/grants", server.command_url),
            &admin,
            &body,
        )
        .await
        .unwrap();
        assert_eq!(status, 201, "{text}");
    }
    for index in 0..items {
        let supply = if index % 3 == 0 {
            json!(5)
        } else {
            Value::Null
        };
        let body = json!({"item_id": format!("i-{index}"), "creator_id": "maker", "name": "thing", "price": 7 + index, "supply": supply});
        let (status, text) = post(
            &client,
            &format!("{}/v1/items", server.command_url),
            &service,
            &body,
        )
        .await
        .unwrap();
        assert_eq!(status, 201, "{text}");
    }

    // Load: many purchases in flight; kill -9 while they are.
    let attempts: Arc<Vec<Value>> = Arc::new(
        (0..600)
            .map(|n| {
                let item = (n * 7) % items;
                json!({"purchase_id": format!("p-{n}"), "buyer_id": format!("b-{}", n % buyers), "item_id": format!("i-{item}"), "expected_price": 7 + item})
            })
            .collect(),
    );
    let url = format!("{}/v1/purchases", server.command_url);
    let mut tasks = tokio::task::JoinSet::new();
    for (n, body) in attempts.iter().cloned().enumerate() {
        let client = client.clone();
        let url = url.clone();
        let service = service.clone();
        tasks.spawn(async move {
            tokio::time::sleep(Duration::from_millis((n as u64 % 100) * 3)).await;
            (n, post(&client, &url, &service, &body).await.ok())
        });
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    server.child.kill().expect("SIGKILL delivered");
    server.child.wait().unwrap();
    let mut acknowledged: Vec<(usize, u16, String)> = Vec::new();
    while let Some(result) = tasks.join_next().await {
        if let (n, Some((status, text))) = result.unwrap() {
            if status == 201 || status == 409 {
                acknowledged.push((n, status, text));
            }
        }
    }
    assert!(
        !acknowledged.is_empty(),
        "some purchases were acknowledged before the kill"
    );

    let snapshots: i64 = database(&data_dir)
        .query_row("SELECT count(*) FROM snapshots", [], |row| row.get(0))
        .unwrap();
    assert!(snapshots > 0, "the shards saved snapshots before the kill");
    // Restart on the same data directory.
    let mut server = start(&data_dir);
    let url = format!("{}/v1/purchases", server.command_url);
    // Every acknowledged answer is durable: a retry returns it identically.
    for (n, status, text) in &acknowledged {
        let (again_status, again_text) =
            post(&client, &url, &service, &attempts[*n]).await.unwrap();
        assert_eq!(
            (again_status, &again_text),
            (*status, text),
            "purchase p-{n} survived the crash unchanged"
        );
    }
    // Finish every attempt (retries are idempotent), then check the money.
    let mut spent = vec![0i64; buyers];
    let mut sold = vec![0u64; items];
    let mut last_position = String::new();
    for (n, body) in attempts.iter().enumerate() {
        let (status, text) = post(&client, &url, &service, body).await.unwrap();
        let answer: Value = serde_json::from_str(&text).unwrap();
        match status {
            201 => {
                spent[n % buyers] += answer["price"].as_i64().unwrap();
                sold[(n * 7) % items] += 1;
                last_position = answer["position"].as_str().unwrap().to_string();
            }
            409 => assert!(
                ["already_owned", "sold_out", "insufficient_funds"]
                    .contains(&answer["code"].as_str().unwrap()),
                "{text}"
            ),
            other => panic!("unexpected {other}: {text}"),
        }
    }
    for (index, spent) in spent.iter().enumerate() {
        let response = client
            .get(format!(
                "{}/v1/users/b-{index}/balance?after={last_position}",
                server.query_url
            ))
            .bearer_auth(&service)
            .send()
            .await
            .unwrap();
        let body: Value = response.json().await.unwrap();
        assert_eq!(
            body["balance"].as_i64().unwrap(),
            1_000 - spent,
            "buyer b-{index} paid exactly for what they got"
        );
    }
    for (index, count) in sold.iter().enumerate() {
        let mut waited = 0;
        loop {
            let body: Value = client
                .get(format!("{}/v1/items/i-{index}", server.query_url))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if body["sold"].as_u64() == Some(*count) || waited > 200 {
                assert_eq!(
                    body["sold"].as_u64(),
                    Some(*count),
                    "item i-{index}: {body}"
                );
                if index % 3 == 0 {
                    assert!(*count <= 5, "a Limited is never oversold");
                }
                break;
            }
            waited += 1;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    // An auditor's check of the directory, while the server still runs:
    // the log alone proves every balance, and the read models agree.
    let verify = Command::new(env!("CARGO_BIN_EXE_ledger"))
        .args(["verify", "--json", "--data-dir"])
        .arg(&data_dir)
        .output()
        .expect("ledger verify runs");
    let report: Value = serde_json::from_slice(&verify.stdout).expect("verify prints JSON");
    assert!(
        verify.status.success(),
        "verify found something: {report:#}"
    );
    assert_eq!(report["verified"], true);
    assert_eq!(report["report"]["trial_balance"]["total"], 0);
    assert_eq!(report["report"]["shards"].as_array().map(Vec::len), Some(4));
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    // The export and the verification it is compared with read one log,
    // with no server appending in between.
    let (code, stopped) = verify_directory(&data_dir);
    assert_eq!(code, Some(0), "{stopped:#}");
    export_adds_up(&data_dir, &stopped);
    let _ = std::fs::remove_dir_all(&data_dir);
}

/// `ledger export` as an auditor uses it: the CSV imported into SQLite sums
/// to zero, its sums per kind of account are `verify`'s trial balance, its
/// manifest names `verify`'s heads, and the creator's sales report lists
/// every settled sale.
fn export_adds_up(data_dir: &std::path::Path, verified: &Value) {
    let csv_path = data_dir.with_extension("postings.csv");
    let export = Command::new(env!("CARGO_BIN_EXE_ledger"))
        .args(["export", "--format", "csv", "--data-dir"])
        .arg(data_dir)
        .arg("--output")
        .arg(&csv_path)
        .output()
        .expect("ledger export runs");
    assert!(
        export.status.success(),
        "export failed: {}",
        String::from_utf8_lossy(&export.stderr)
    );
    let database = rusqlite::Connection::open_in_memory().unwrap();
    database
        .execute_batch(
            "CREATE TABLE postings (position TEXT, shard INTEGER, sequence INTEGER,
               time_ms INTEGER, time TEXT, event_type TEXT, account TEXT, user_id TEXT,
               amount INTEGER, purchase_id TEXT, grant_id TEXT, refund_id TEXT,
               cause TEXT, record_hash TEXT)",
        )
        .unwrap();
    let text = std::fs::read_to_string(&csv_path).unwrap();
    let mut lines = text.lines();
    assert!(lines
        .next()
        .unwrap()
        .starts_with("position,shard,sequence,"));
    let mut rows = 0;
    for line in lines {
        // No field of this workload holds a comma or a quote.
        let fields: Vec<&str> = line.split(',').collect();
        assert_eq!(fields.len(), 14, "{line}");
        database
            .execute(
                "INSERT INTO postings VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
                rusqlite::params_from_iter(fields.iter()),
            )
            .unwrap();
        rows += 1;
    }
    assert!(rows > 0, "the export holds postings");
    let total: i64 = database
        .query_row("SELECT SUM(amount) FROM postings", [], |row| row.get(0))
        .unwrap();
    assert_eq!(total, 0, "all postings sum to zero");
    let unbalanced: i64 = database
        .query_row(
            "SELECT COUNT(*) FROM (SELECT position FROM postings GROUP BY position HAVING SUM(amount) != 0)",
            [],
            |row| row.get(0),
        )
        .unwrap();
    assert_eq!(unbalanced, 0, "every event's postings sum to zero");
    let trial = &verified["report"]["trial_balance"];
    for (account, key) in [
        ("issuance", "issuance"),
        ("wallet", "wallets"),
        ("pending", "pending"),
        ("fees", "fees"),
        ("clearing", "clearing"),
    ] {
        let sum: i64 = database
            .query_row(
                "SELECT COALESCE(SUM(amount), 0) FROM postings WHERE account = ?1",
                [account],
                |row| row.get(0),
            )
            .unwrap();
        assert_eq!(
            Some(sum),
            trial[key].as_i64(),
            "{account} sums as verify says"
        );
    }
    let manifest: Value = serde_json::from_str(
        &std::fs::read_to_string(csv_path.with_extension("csv.manifest.json")).unwrap(),
    )
    .unwrap();
    for (exported, proven) in manifest["shards"]
        .as_array()
        .unwrap()
        .iter()
        .zip(verified["report"]["shards"].as_array().unwrap())
    {
        assert_eq!(exported["head_hash"], proven["head_hash"]);
        assert_eq!(exported["last_sequence"], proven["last_sequence"]);
    }
    let sales = Command::new(env!("CARGO_BIN_EXE_ledger"))
        .args(["export", "--creator-sales", "maker", "--data-dir"])
        .arg(data_dir)
        .output()
        .expect("ledger export runs");
    assert!(sales.status.success());
    let sales: Vec<Value> = String::from_utf8(sales.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let settled: i64 = database
        .query_row(
            "SELECT COUNT(*) FROM postings WHERE event_type = 'sale_settled' AND account = 'pending' AND user_id = 'maker'",
            [],
            |row| row.get(0),
        )
        .unwrap();
    assert!(settled > 0);
    assert_eq!(sales.len() as i64, settled, "one report row per sale");
    for sale in &sales {
        assert_eq!(sale["status"], "held", "{sale}");
        assert_eq!(
            sale["price"].as_i64(),
            Some(sale["creator_share"].as_i64().unwrap() + sale["platform_fee"].as_i64().unwrap())
        );
        assert!(sale["buyer_id"].as_str().unwrap().starts_with("b-"));
        assert!(sale["item_id"].as_str().unwrap().starts_with("i-"));
    }
    let _ = std::fs::remove_file(&csv_path);
    let _ = std::fs::remove_file(csv_path.with_extension("csv.manifest.json"));
}

/// What `ledger verify` says about `data_dir`: exit code and JSON report.
fn verify_directory(data_dir: &std::path::Path) -> (Option<i32>, Value) {
    let output = Command::new(env!("CARGO_BIN_EXE_ledger"))
        .args(["verify", "--json", "--data-dir"])
        .arg(data_dir)
        .output()
        .expect("ledger verify runs");
    let report = serde_json::from_slice(&output.stdout).expect("verify prints JSON");
    (output.status.code(), report)
}

/// A copy of `from` at `to` (the database and its write-ahead log).
fn copy_directory(from: &std::path::Path, to: &std::path::Path) {
    let _ = std::fs::remove_dir_all(to);
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

/// The database of a data directory.
fn database(data_dir: &std::path::Path) -> rusqlite::Connection {
    rusqlite::Connection::open(data_dir.join(store_sqlite::DATABASE_FILE_NAME)).unwrap()
}

/// The (last sequence, bytes) of every record of `shard`, in order.
fn records_of(connection: &rusqlite::Connection, shard: i64) -> Vec<(i64, Vec<u8>)> {
    let mut statement = connection
        .prepare(
            "SELECT last_sequence, record FROM records WHERE shard = ?1 ORDER BY last_sequence",
        )
        .unwrap();
    statement
        .query_map([shard], |row| Ok((row.get(0)?, row.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// Whether `report` holds a finding of `code` at `shard` (and `sequence`,
/// when given).
fn has_finding(report: &Value, shard: i64, sequence: Option<i64>, code: &str) -> bool {
    report["report"]["findings"]
        .as_array()
        .unwrap()
        .iter()
        .any(|finding| {
            finding["shard"].as_i64() == Some(shard)
                && finding["code"] == code
                && sequence.is_none_or(|sequence| finding["sequence"].as_i64() == Some(sequence))
        })
}

/// An auditor's tamper tests on a stopped server's directory: one byte of
/// one stored record flipped, one record deleted, two records swapped. Each
/// time `verify` exits 1 and names the shard and the position.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_names_every_tampered_record() {
    let base = std::env::temp_dir().join(format!("ledger-tamper-{}", std::process::id()));
    let data_dir = base.join("original");
    let _ = std::fs::remove_dir_all(&base);
    let server = start(&data_dir);
    // The load generator (`ledger-bench`'s library), through the HTTP API.
    let options = ledger_bench::Options {
        mode: ledger_bench::Mode::Http,
        workload: ledger_bench::Workload::Catalogue,
        command_url: server.command_url.clone(),
        query_url: server.query_url.clone(),
        requests: Some(600),
        concurrency: 16,
        quiet: true,
        ..ledger_bench::Options::defaults()
    };
    let report = ledger_bench::run(options, Some(SECRET.as_bytes().to_vec()))
        .await
        .expect("the load generator runs");
    assert!(report.violations.is_empty(), "{:?}", report.violations);
    let mut child = server.child;
    child.kill().unwrap();
    child.wait().unwrap();
    let (code, report) = verify_directory(&data_dir);
    assert_eq!(
        code,
        Some(0),
        "the untouched directory verifies: {report:#}"
    );

    // One byte in the middle of a record of shard 1.
    let flipped = base.join("flipped");
    copy_directory(&data_dir, &flipped);
    let connection = database(&flipped);
    let records = records_of(&connection, 1);
    assert!(records.len() >= 3, "shard 1 holds records");
    let (sequence, mut bytes) = records[records.len() / 2].clone();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    connection
        .execute(
            "UPDATE records SET record = ?1 WHERE shard = 1 AND last_sequence = ?2",
            rusqlite::params![bytes, sequence],
        )
        .unwrap();
    drop(connection);
    let (code, report) = verify_directory(&flipped);
    assert_eq!(code, Some(1), "{report:#}");
    assert!(
        has_finding(&report, 1, Some(sequence), "bad_checksum"),
        "a flipped byte at shard 1 sequence {sequence}: {report:#}"
    );

    // A record of shard 2 deleted.
    let deleted = base.join("deleted");
    copy_directory(&data_dir, &deleted);
    let connection = database(&deleted);
    let records = records_of(&connection, 2);
    assert!(records.len() >= 3, "shard 2 holds records");
    let (sequence, _) = records[records.len() / 2];
    connection
        .execute(
            "DELETE FROM records WHERE shard = 2 AND last_sequence = ?1",
            [sequence],
        )
        .unwrap();
    drop(connection);
    let (code, report) = verify_directory(&deleted);
    assert_eq!(code, Some(1), "{report:#}");
    assert!(
        has_finding(&report, 2, None, "chain_gap"),
        "a record of shard 2 ending at {sequence} is missing: {report:#}"
    );

    // Two consecutive records of shard 3 swapped.
    let swapped = base.join("swapped");
    copy_directory(&data_dir, &swapped);
    let connection = database(&swapped);
    let records = records_of(&connection, 3);
    assert!(records.len() >= 3, "shard 3 holds records");
    let (first, first_bytes) = records[1].clone();
    let (second, second_bytes) = records[2].clone();
    for (sequence, bytes) in [(first, &second_bytes), (second, &first_bytes)] {
        connection
            .execute(
                "UPDATE records SET record = ?1 WHERE shard = 3 AND last_sequence = ?2",
                rusqlite::params![bytes, sequence],
            )
            .unwrap();
    }
    drop(connection);
    let (code, report) = verify_directory(&swapped);
    assert_eq!(code, Some(1), "{report:#}");
    assert!(
        has_finding(&report, 3, Some(first), "misfiled_record"),
        "the record at shard 3 sequence {first} is another's: {report:#}"
    );
    let _ = std::fs::remove_dir_all(&base);
}
