//! What the distributed process tests share: starting real `ledger`
//! services, signing tokens, posting commands until they are answered, and
//! removing what a test created in the shared brokers. The chaos driver
//! (`crates/chaos`) includes this file too, with the binary named by
//! `LEDGER_BIN`.
#![allow(dead_code)] // each test binary uses its own part of it

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ledger_core::{Role, UserId};
use serde_json::Value;

/// The distributed tests run only with `LEDGER_TEST_BACKEND=distributed`
/// (and the brokers' addresses), as `scripts/test` sets them.
pub fn distributed_backend() -> bool {
    if std::env::var("LEDGER_TEST_BACKEND").ok().as_deref() == Some("distributed") {
        return true;
    }
    eprintln!("skipped; set LEDGER_TEST_BACKEND=distributed (scripts/test does)");
    false
}

/// A name for this run's topics and keyspace, unique on the shared brokers.
pub fn unique_name(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}{}_{}",
        nanos % 1_000_000_000_000,
        std::process::id()
    )
}

/// Shards of the services these tests start.
pub const SHARDS: u16 = 4;

/// The services' environment: [`SHARDS`] shards, this test's topics and keyspace.
pub fn environment(name: &str, secret: &str) -> Vec<(String, String)> {
    vec![
        ("LEDGER_SHARDS".into(), SHARDS.to_string()),
        ("LEDGER_TOPIC_PREFIX".into(), name.into()),
        ("LEDGER_CQL_KEYSPACE".into(), name.into()),
        ("LEDGER_REPLY_PARTITIONS".into(), "2".into()),
        ("LEDGER_JWT_SECRET".into(), secret.into()),
        ("LEDGER_SNAPSHOT_EVERY_EVENTS".into(), "300".into()),
        // Load that buys faster than a person: no purchase rate limits.
        ("LEDGER_PURCHASE_LIMIT".into(), "0".into()),
        ("LEDGER_ITEM_REQUEST_INTERVAL_MS".into(), "0".into()),
        (
            "LEDGER_KAFKA_BOOTSTRAP".into(),
            std::env::var("LEDGER_KAFKA_BOOTSTRAP").expect("LEDGER_KAFKA_BOOTSTRAP is set"),
        ),
        (
            "LEDGER_CQL_CONTACT".into(),
            std::env::var("LEDGER_CQL_CONTACT").expect("LEDGER_CQL_CONTACT is set"),
        ),
    ]
}

/// A running `ledger` service, killed when dropped.
pub struct Process {
    pub child: Child,
    pub url: String,
    /// Its log lines so far (the last [`LOG_LINES_KEPT`]).
    pub log: Arc<Mutex<VecDeque<String>>>,
}

/// Log lines a [`Process`] keeps for the test to inspect.
pub const LOG_LINES_KEPT: usize = 10_000;

impl Process {
    /// Stops the service as an orchestrator does (SIGTERM, then up to 60 s
    /// for a clean exit: an engine publishes every batch it queued before it
    /// leaves), killing it only if it does not exit in time.
    pub fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!("service did not stop within 60 s of SIGTERM; killing it");
    }

    /// Whether a kept log line contains `text`.
    pub fn logged(&self, text: &str) -> bool {
        self.log
            .lock()
            .expect("log lock")
            .iter()
            .any(|line| line.contains(text))
    }
}

fn keep_line(log: &Mutex<VecDeque<String>>, line: String) {
    let mut log = log.lock().expect("log lock");
    if log.len() == LOG_LINES_KEPT {
        log.pop_front();
    }
    log.push_back(line);
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether the services' log lines are echoed on this process's stderr
/// (the tests do; the chaos driver keeps them only in [`Process::log`]).
pub static ECHO_LOGS: AtomicBool = AtomicBool::new(true);

/// The `ledger` binary: `LEDGER_BIN` when set, else the one Cargo built for
/// this package's tests.
pub fn ledger_binary() -> std::path::PathBuf {
    if let Some(path) = std::env::var_os("LEDGER_BIN") {
        return path.into();
    }
    match option_env!("CARGO_BIN_EXE_ledger") {
        Some(path) => path.into(),
        None => panic!("set LEDGER_BIN to the ledger binary"),
    }
}

/// `ledger <role>` with the services' environment, listening on `address`,
/// its log on a pipe.
fn command(role: &str, environment: &[(String, String)], address: &str) -> Child {
    spawn_command(role, environment, address, None).expect("ledger binary starts")
}

/// As [`command`], run as `uid` (and gid) when given: the chaos driver
/// partitions one engine from a port with an iptables rule on its uid.
fn spawn_command(
    role: &str,
    environment: &[(String, String)],
    address: &str,
    uid: Option<u32>,
) -> std::io::Result<Child> {
    let mut command = Command::new(ledger_binary());
    if let Some(uid) = uid {
        command.uid(uid).gid(uid);
    }
    command
        .arg(role)
        .envs(
            environment
                .iter()
                .map(|(key, value)| (key.as_str(), value.as_str())),
        )
        .env("LEDGER_HTTP_ADDR", address)
        .env(
            "RUST_LOG",
            std::env::var("LEDGER_SERVICE_RUST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
}

/// Starts `ledger <role>` on `address` and forwards its log lines to the
/// test's output, prefixed with `label`; does not wait for it to listen.
pub fn spawn(role: &str, environment: &[(String, String)], address: &str, label: &str) -> Child {
    let mut child = command(role, environment, address);
    let stderr = child.stderr.take().expect("stderr is piped");
    let label = label.to_string();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("[{label}] {line}");
        }
    });
    child
}

/// Starts `ledger <role>` on a free port and waits until it listens.
pub fn start(role: &str, environment: &[(String, String)]) -> Process {
    let mut child = command(role, environment, "127.0.0.1:0");
    let stderr = child.stderr.take().expect("stderr is piped");
    let mut lines = BufReader::new(stderr).lines();
    let log = Arc::new(Mutex::new(VecDeque::new()));
    let url = loop {
        let line = lines
            .next()
            .unwrap_or_else(|| panic!("{role} exited before listening"))
            .expect("readable stderr");
        if let Some((_, url)) = line.split_once("listening on ") {
            break url.trim().to_string();
        }
        eprintln!("{role}: {line}");
        keep_line(&log, line);
    };
    let kept = log.clone();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            eprintln!("[service] {line}");
            keep_line(&kept, line);
        }
    });
    Process { child, url, log }
}

/// Starts `ledger <role>` on a free port (as `uid` when given) and waits,
/// at most `patience`, until it listens; an error (the process killed) if
/// it exits or does not listen in time.
pub fn try_start(
    role: &str,
    environment: &[(String, String)],
    uid: Option<u32>,
    patience: Duration,
) -> Result<Process, String> {
    let mut child = spawn_command(role, environment, "127.0.0.1:0", uid)
        .map_err(|error| format!("cannot start ledger {role}: {error}"))?;
    let stderr = child.stderr.take().expect("stderr is piped");
    let log = Arc::new(Mutex::new(VecDeque::new()));
    let (listening, url) = std::sync::mpsc::channel();
    let kept = log.clone();
    let label = role.to_string();
    // LEDGER_SERVICE_LOG_DIR: every line also goes to `<dir>/<role>-<pid>.log`
    // as it comes (to follow a run that hangs).
    let mut copy = std::env::var_os("LEDGER_SERVICE_LOG_DIR").and_then(|dir| {
        let path = std::path::Path::new(&dir).join(format!("{role}-{}.log", child.id()));
        std::fs::create_dir_all(&dir).ok()?;
        std::fs::File::create(path).ok()
    });
    std::thread::spawn(move || {
        let mut announced = false;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(file) = copy.as_mut() {
                use std::io::Write;
                let _ = writeln!(file, "{line}");
            }
            if !announced {
                if let Some((_, url)) = line.split_once("listening on ") {
                    announced = true;
                    let _ = listening.send(url.trim().to_string());
                    continue;
                }
            }
            if ECHO_LOGS.load(Ordering::Relaxed) {
                eprintln!("[{label}] {line}");
            }
            keep_line(&kept, line);
        }
    });
    match url.recv_timeout(patience) {
        Ok(url) => Ok(Process { child, url, log }),
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            let last: Vec<String> = log
                .lock()
                .expect("log lock")
                .iter()
                .rev()
                .take(3)
                .cloned()
                .collect();
            Err(format!(
                "ledger {role} did not listen within {patience:?}; last log lines: {last:?}"
            ))
        }
    }
}

/// A loopback address with a port that was free a moment ago.
pub fn free_address() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().expect("bound").to_string()
}

pub fn token(secret: &str, role: Role, sub: &str) -> String {
    ledger_http::auth::issue_token(
        secret.as_bytes(),
        role,
        &UserId::parse(sub).expect("valid subject"),
        3_600,
        ledger_http::auth::now_seconds(),
    )
}

/// Posts a command with the right role for its path.
pub async fn post(
    client: &reqwest::Client,
    secret: &str,
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
        .bearer_auth(token(secret, role, sub))
        .json(body)
        .send()
        .await?;
    let status = response.status().as_u16();
    let body = response.json::<Value>().await.unwrap_or(Value::Null);
    Ok((status, body))
}

/// Posts until a definitive answer (not 503/504, not a transport error),
/// trying `urls` in turn: the command id makes every retry safe.
pub async fn post_until_answered(
    client: &reqwest::Client,
    secret: &str,
    urls: &[&str],
    path: &str,
    body: &Value,
    patience: Duration,
) -> (u16, Value) {
    let deadline = Instant::now() + patience;
    let mut attempt = 0usize;
    loop {
        let url = format!("{}{path}", urls[attempt.min(urls.len() - 1)]);
        match post(client, secret, &url, body).await {
            Ok((status, body)) if status != 503 && status != 504 => return (status, body),
            Ok(_) | Err(_) => {
                assert!(
                    Instant::now() < deadline,
                    "no answer for {body} within {patience:?}"
                );
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// A query API read with a service token; panics unless it answers 200.
pub async fn get(client: &reqwest::Client, secret: &str, url: &str) -> Value {
    let response = client
        .get(url)
        .bearer_auth(token(secret, Role::Service, "purchase-flow"))
        .send()
        .await
        .expect("query API answers");
    assert_eq!(response.status().as_u16(), 200, "{url}");
    response.json().await.expect("json")
}

/// Reads `url` until `done` holds for the answer (the distributed read
/// models are projected shard by shard, so each figure a test asserts is
/// awaited for itself); panics with the last answer after `patience`.
pub async fn wait_for(
    client: &reqwest::Client,
    secret: &str,
    url: &str,
    patience: Duration,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + patience;
    loop {
        let answer = get(client, secret, url).await;
        if done(&answer) {
            return answer;
        }
        assert!(
            Instant::now() < deadline,
            "{url} never reached the expected state within {patience:?}; last answer: {answer}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The value of an unlabelled gauge or counter on a service's `/metrics`.
pub async fn metric(client: &reqwest::Client, base: &str, name: &str) -> Option<f64> {
    let text = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    let prefix = format!("{name} ");
    text.lines()
        .find_map(|line| line.strip_prefix(prefix.as_str()))
        .and_then(|value| value.trim().parse::<f64>().ok())
}

/// Drops the test's keyspace and deletes its topics (best effort): the
/// brokers are shared by every test of the run.
pub async fn remove_test_data(name: &str) {
    let contact = std::env::var("LEDGER_CQL_CONTACT").unwrap_or_default();
    let contact_points: Vec<String> = contact
        .split(',')
        .map(|point| point.trim().to_string())
        .collect();
    if let Err(error) = store_cql::drop_keyspace(&contact_points, name).await {
        eprintln!("could not drop keyspace {name}: {error}");
    }
    let kafka =
        log_kafka::KafkaConfig::new(std::env::var("LEDGER_KAFKA_BOOTSTRAP").unwrap_or_default());
    if let Ok(admin) = log_kafka::TopicAdmin::connect(&kafka) {
        let _ = admin
            .delete_topics(&log_kafka::Topics::with_prefix(name))
            .await;
    }
}
