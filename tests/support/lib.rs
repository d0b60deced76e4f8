//! Test support shared by the workspace-level tests: `spawn_app()` starts a
//! real embedded ledger (real SQLite files, real HTTP servers on port 0) and
//! `TestApp` talks to it over HTTP like the purchase flow and storefront do.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ledger_cli::{Application, Settings};

pub mod distributed;
use ledger_core::{Role, UserId};
use serde_json::{json, Value};

pub const SECRET: &str = "test-secret-for-the-ledger-0123456789";

/// A unique, empty directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
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

/// A response: status, content type and JSON body.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub content_type: String,
    /// The `Retry-After` header, when the answer has one.
    pub retry_after: Option<String>,
    pub body: Value,
    pub text: String,
}

impl Answer {
    pub fn code(&self) -> &str {
        self.body.get("code").and_then(Value::as_str).unwrap_or("")
    }
}

/// A ledger under test, reached over HTTP only.
pub struct TestApp {
    pub command_url: String,
    pub query_url: String,
    pub client: reqwest::Client,
    pub secret: Vec<u8>,
    stop: Option<tokio::sync::watch::Sender<bool>>,
    server: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    pub data_dir: Option<TempDir>,
    /// Distributed: the Kafka bootstrap and the public topic.
    pub public_topic: Option<(String, String)>,
}

/// Starts an embedded ledger on a fresh data directory.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Which ledger `spawn_app` starts: `LEDGER_TEST_BACKEND=distributed` runs
/// the same suite against the distributed services (real Kafka and CQL, from
/// `LEDGER_KAFKA_BOOTSTRAP` and `LEDGER_CQL_CONTACT`); anything else, the
/// embedded ledger.
pub fn distributed_backend() -> bool {
    std::env::var("LEDGER_TEST_BACKEND").is_ok_and(|backend| backend == "distributed")
}

pub async fn spawn_app_with(adjust: impl FnOnce(&mut Settings)) -> TestApp {
    let data_dir = TempDir::new("ledger-test");
    let mut settings = Settings::for_tests(&data_dir.0, SECRET);
    adjust(&mut settings);
    if distributed_backend() {
        return distributed::spawn(&settings, 1).await;
    }
    let application = Application::build(settings)
        .await
        .expect("application starts");
    let command_url = format!("http://{}", application.command_addr());
    let query_url = format!("http://{}", application.query_addr());
    let stop = application.stopper();
    let server = tokio::spawn(application.run_until_stopped());
    TestApp::connect(
        command_url,
        query_url,
        Some(stop),
        Some(server),
        Some(data_dir),
    )
}

impl TestApp {
    pub fn connect(
        command_url: String,
        query_url: String,
        stop: Option<tokio::sync::watch::Sender<bool>>,
        server: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
        data_dir: Option<TempDir>,
    ) -> TestApp {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(512)
            .timeout(Duration::from_secs(60))
            .build()
            .expect("http client");
        TestApp {
            command_url,
            query_url,
            client,
            secret: SECRET.as_bytes().to_vec(),
            stop,
            server,
            data_dir,
            public_topic: None,
        }
    }

    /// The public event stream so far, in structured form: the embedded
    /// ledger's `ledger export --public`, or the distributed ledger's public
    /// topic read `read_committed`.
    pub async fn public_events(&self) -> Vec<public_events::StructuredEvent> {
        if let Some((bootstrap, topic)) = self.public_topic.clone() {
            return tokio::task::spawn_blocking(move || {
                distributed::read_public_topic(&bootstrap, &topic)
            })
            .await
            .expect("the public topic reader does not panic");
        }
        let data_dir = self
            .data_dir
            .as_ref()
            .expect("an embedded ledger has a data directory")
            .0
            .clone();
        tokio::task::spawn_blocking(move || {
            ledger_cli::public::public_events(&data_dir)
                .expect("the public events export")
                .iter()
                .map(|event| event.structured())
                .collect()
        })
        .await
        .expect("the export does not panic")
    }

    pub fn token(&self, role: Role, sub: &str) -> String {
        let sub = UserId::parse(sub).expect("valid sub");
        ledger_http::auth::issue_token(
            &self.secret,
            role,
            &sub,
            3_600,
            ledger_http::auth::now_seconds(),
        )
    }

    pub fn admin(&self) -> String {
        self.token(Role::Admin, "admin")
    }

    pub fn service(&self) -> String {
        self.token(Role::Service, "purchase-flow")
    }

    async fn answer(response: reqwest::Response) -> Answer {
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let text = response.text().await.expect("body is readable");
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Answer {
            status,
            retry_after,
            content_type,
            body,
            text,
        }
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: &Value) -> Answer {
        self.post_raw(
            path,
            token,
            "application/json",
            body.to_string().into_bytes(),
        )
        .await
    }

    pub async fn post_raw(
        &self,
        path: &str,
        token: Option<&str>,
        content_type: &str,
        body: Vec<u8>,
    ) -> Answer {
        let mut request = self
            .client
            .post(format!("{}{path}", self.command_url))
            .header("content-type", content_type)
            .body(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        Self::answer(request.send().await.expect("command API answers")).await
    }

    /// Sends only the head of a POST declaring `content_length` bytes and
    /// reads the answer's status line: how a client sees an early refusal.
    pub async fn post_head_only(&self, path: &str, content_length: usize) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let address = self.command_url.trim_start_matches("http://");
        let mut stream = tokio::net::TcpStream::connect(address)
            .await
            .expect("command API accepts connections");
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\nContent-Length: {content_length}\r\n\r\n"
        );
        stream
            .write_all(head.as_bytes())
            .await
            .expect("head is written");
        let mut answer = vec![0u8; 4096];
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut answer))
            .await
            .expect("the server answers before the body arrives")
            .expect("answer is readable");
        String::from_utf8_lossy(&answer[..read]).to_string()
    }

    pub async fn put(&self, path: &str, token: Option<&str>, body: &Value) -> Answer {
        let mut request = self
            .client
            .put(format!("{}{path}", self.command_url))
            .header("content-type", "application/json")
            .body(body.to_string());
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        Self::answer(request.send().await.expect("command API answers")).await
    }

    pub async fn delete(&self, path: &str, token: Option<&str>) -> Answer {
        let mut request = self.client.delete(format!("{}{path}", self.command_url));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        Self::answer(request.send().await.expect("command API answers")).await
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Answer {
        let mut request = self.client.get(format!("{}{path}", self.query_url));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        Self::answer(request.send().await.expect("query API answers")).await
    }

    // ---- domain helpers (all through HTTP) ----

    pub async fn grant(&self, grant_id: &str, user_id: &str, amount: i64) -> Answer {
        self.post(
            "/v1/grants",
            Some(&self.admin()),
            &json!({"grant_id": grant_id, "user_id": user_id, "amount": amount}),
        )
        .await
    }

    pub async fn publish(&self, body: Value) -> Answer {
        self.post("/v1/items", Some(&self.service()), &body).await
    }

    pub async fn purchase(
        &self,
        purchase_id: &str,
        buyer_id: &str,
        item_id: &str,
        expected_price: i64,
    ) -> Answer {
        self.post(
            "/v1/purchases",
            Some(&self.service()),
            &json!({"purchase_id": purchase_id, "buyer_id": buyer_id, "item_id": item_id, "expected_price": expected_price}),
        )
        .await
    }

    /// Reads a user's balance after `position` (read-your-writes).
    pub async fn balance(&self, user_id: &str, after: Option<&str>) -> (i64, i64) {
        let path = match after {
            Some(position) => format!("/v1/users/{user_id}/balance?after={position}"),
            None => format!("/v1/users/{user_id}/balance"),
        };
        let answer = self.get(&path, Some(&self.service())).await;
        assert_eq!(answer.status, 200, "balance of {user_id}: {}", answer.text);
        (
            answer.body["balance"].as_i64().expect("balance"),
            answer.body["pending"].as_i64().expect("pending"),
        )
    }

    /// Fetches every page of a paged listing.
    pub async fn all_pages(&self, path: &str, field: &str, token: Option<&str>) -> Vec<Value> {
        let mut entries = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let separator = if path.contains('?') { '&' } else { '?' };
            let url = match &cursor {
                Some(cursor) => format!("{path}{separator}limit=1000&cursor={cursor}"),
                None => format!("{path}{separator}limit=1000"),
            };
            let answer = self.get(&url, token).await;
            assert_eq!(answer.status, 200, "{url}: {}", answer.text);
            entries.extend(answer.body[field].as_array().cloned().unwrap_or_default());
            match answer.body["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_string()),
                None => return entries,
            }
        }
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(true);
        }
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
    }
}
