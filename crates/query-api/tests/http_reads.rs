//! HTTP-level tests of what the query API decides itself: validation,
//! authentication, authorization, paging limits and read-your-writes waits.
//!
//! Two read models stand behind the router: one that must never be reached
//! (it counts calls and panics), and an empty one (a ledger where nothing
//! happened yet: zero balances, no items) that records the page sizes asked.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use ledger_core::{ReadPosition, Role, UserId};
use ledger_http::auth::{issue_token, now_seconds, Verifier};
use ledger_http::Observability;
use ledger_query_api::{QueryApi, Settings};
use projectors::{
    BalanceView, BundleView, CreatorSaleView, EarningsView, InventoryEntry, ItemDays, ItemView,
    ListingView, OwnerEntry, Page, PriceFloorView, PriceTestView, PurchaseStepView, ReadError,
    ReadModels, SalesRange, TransactionEntry,
};
use reqwest::StatusCode;
use serde_json::Value;

const SECRET: &[u8] = b"query-api-test-secret";

/// Read models that must never be reached.
#[derive(Default)]
struct UnreachableReadModels {
    calls: AtomicUsize,
}

impl UnreachableReadModels {
    fn reached(&self, what: &str) -> ! {
        self.calls.fetch_add(1, Ordering::SeqCst);
        panic!("a refused read reached the read models: {what}");
    }
}

#[async_trait]
impl ReadModels for UnreachableReadModels {
    async fn covers(&self, _: &ReadPosition) -> Result<bool, ReadError> {
        self.reached("covers")
    }
    async fn balance(&self, _: &str) -> Result<BalanceView, ReadError> {
        self.reached("balance")
    }
    async fn inventory(
        &self,
        _: &str,
        _: usize,
        _: Option<&str>,
    ) -> Result<Page<InventoryEntry>, ReadError> {
        self.reached("inventory")
    }
    async fn transactions(
        &self,
        _: &str,
        _: usize,
        _: Option<&str>,
    ) -> Result<Page<TransactionEntry>, ReadError> {
        self.reached("transactions")
    }
    async fn item(&self, _: &str) -> Result<Option<ItemView>, ReadError> {
        self.reached("item")
    }
    async fn resale_listings(
        &self,
        _: &str,
        _: usize,
        _: Option<&str>,
    ) -> Result<Page<ListingView>, ReadError> {
        self.reached("resale_listings")
    }
    async fn owners(
        &self,
        _: &str,
        _: usize,
        _: Option<&str>,
    ) -> Result<Page<OwnerEntry>, ReadError> {
        self.reached("owners")
    }
    async fn bundle(&self, _: &str) -> Result<Option<BundleView>, ReadError> {
        self.reached("bundle")
    }
    async fn earnings(&self, _: &str) -> Result<EarningsView, ReadError> {
        self.reached("earnings")
    }
    async fn purchase_steps(&self, _: &str) -> Result<Vec<PurchaseStepView>, ReadError> {
        self.reached("purchase steps")
    }
    async fn creator_sales(
        &self,
        _: &str,
        _: SalesRange<'_>,
    ) -> Result<Page<CreatorSaleView>, ReadError> {
        self.reached("creator sales")
    }
    async fn item_days(&self, _: &str, _: u64, _: u64) -> Result<ItemDays, ReadError> {
        self.reached("item days")
    }

    async fn price_floors(&self) -> Result<Vec<PriceFloorView>, ReadError> {
        self.reached("price floors")
    }

    async fn price_test(&self, _: &str) -> Result<Option<PriceTestView>, ReadError> {
        self.reached("price test")
    }

    async fn takedown(
        &self,
        _: &str,
        _: usize,
        _: Option<&str>,
    ) -> Result<Option<projectors::TakedownView>, ReadError> {
        self.reached("takedown")
    }
}

/// The read models of a ledger where nothing happened. `caught_up` says
/// whether they cover every position; page sizes asked are recorded.
struct EmptyReadModels {
    caught_up: AtomicBool,
    limits: Mutex<Vec<usize>>,
}

impl EmptyReadModels {
    fn new(caught_up: bool) -> Self {
        Self {
            caught_up: AtomicBool::new(caught_up),
            limits: Mutex::new(Vec::new()),
        }
    }

    fn page<T>(&self, limit: usize, cursor: Option<&str>) -> Result<Page<T>, ReadError> {
        self.limits.lock().unwrap().push(limit);
        match cursor {
            Some(_) => Err(ReadError::BadCursor),
            None => Ok(Page {
                entries: Vec::new(),
                next_cursor: None,
            }),
        }
    }
}

#[async_trait]
impl ReadModels for EmptyReadModels {
    async fn covers(&self, _: &ReadPosition) -> Result<bool, ReadError> {
        Ok(self.caught_up.load(Ordering::SeqCst))
    }
    async fn balance(&self, user_id: &str) -> Result<BalanceView, ReadError> {
        Ok(BalanceView {
            user_id: user_id.to_owned(),
            balance: 0,
            pending: 0,
        })
    }
    async fn inventory(
        &self,
        _: &str,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<Page<InventoryEntry>, ReadError> {
        self.page(limit, cursor)
    }
    async fn transactions(
        &self,
        _: &str,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<Page<TransactionEntry>, ReadError> {
        self.page(limit, cursor)
    }
    async fn item(&self, _: &str) -> Result<Option<ItemView>, ReadError> {
        Ok(None)
    }
    async fn resale_listings(
        &self,
        _: &str,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<Page<ListingView>, ReadError> {
        self.page(limit, cursor)
    }
    async fn owners(
        &self,
        _: &str,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<Page<OwnerEntry>, ReadError> {
        self.page(limit, cursor)
    }
    async fn bundle(&self, _: &str) -> Result<Option<BundleView>, ReadError> {
        Ok(None)
    }
    async fn earnings(&self, creator_id: &str) -> Result<EarningsView, ReadError> {
        Ok(EarningsView {
            creator_id: creator_id.to_owned(),
            pending: 0,
            released: 0,
            lifetime: 0,
            sales_count: 0,
        })
    }
    async fn purchase_steps(&self, _: &str) -> Result<Vec<PurchaseStepView>, ReadError> {
        Ok(Vec::new())
    }
    async fn creator_sales(
        &self,
        _: &str,
        range: SalesRange<'_>,
    ) -> Result<Page<CreatorSaleView>, ReadError> {
        range.after()?;
        Ok(Page {
            entries: Vec::new(),
            next_cursor: None,
        })
    }
    async fn item_days(&self, _: &str, _: u64, _: u64) -> Result<ItemDays, ReadError> {
        Ok(ItemDays::default())
    }

    async fn price_floors(&self) -> Result<Vec<PriceFloorView>, ReadError> {
        Ok(Vec::new())
    }

    async fn price_test(&self, _: &str) -> Result<Option<PriceTestView>, ReadError> {
        Ok(None)
    }

    async fn takedown(
        &self,
        _: &str,
        _: usize,
        _: Option<&str>,
    ) -> Result<Option<projectors::TakedownView>, ReadError> {
        Ok(None)
    }
}

const WAIT_MAX: Duration = Duration::from_millis(60);

async fn start(read_models: Arc<dyn ReadModels>) -> SocketAddr {
    let settings = Settings {
        projection_wait_max: WAIT_MAX,
        ..Settings::default()
    };
    let api = QueryApi::bind_with_settings(
        "127.0.0.1:0".parse().unwrap(),
        read_models,
        Arc::new(Verifier::new(SECRET)),
        Observability::always_ready(),
        settings,
    )
    .await
    .expect("binds");
    let address = api.local_addr();
    tokio::spawn(api.run_until_stopped(std::future::pending()));
    address
}

fn token(role: Role, sub: &str) -> String {
    issue_token(
        SECRET,
        role,
        &UserId::parse(sub).unwrap(),
        3_600,
        now_seconds(),
    )
}

#[derive(Debug)]
struct Answer {
    status: StatusCode,
    content_type: String,
    body: Value,
}

impl Answer {
    fn assert_problem(&self, status: u16, code: &str) -> String {
        assert_eq!(self.status.as_u16(), status, "{self:?}");
        assert_eq!(self.content_type, "application/problem+json", "{self:?}");
        assert_eq!(self.body["code"], code, "{self:?}");
        assert_eq!(self.body["status"], status);
        assert_eq!(
            self.body["type"],
            format!("https://ledger.example/problems/{code}")
        );
        self.body["detail"].as_str().unwrap().to_owned()
    }

    fn assert_ok(&self) -> &Value {
        assert_eq!(self.status, StatusCode::OK, "{self:?}");
        assert_eq!(self.content_type, "application/json", "{self:?}");
        &self.body
    }
}

async fn get(address: SocketAddr, path: &str, token: Option<&str>) -> Answer {
    send(reqwest::Method::GET, address, path, token).await
}

async fn send(
    method: reqwest::Method,
    address: SocketAddr,
    path: &str,
    token: Option<&str>,
) -> Answer {
    let mut request = reqwest::Client::new().request(method, format!("http://{address}{path}"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("the server answers");
    let status = response.status();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|value| value.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let text = response.text().await.unwrap();
    let body =
        serde_json::from_str(&text).unwrap_or_else(|error| panic!("not json ({error}): {text}"));
    Answer {
        status,
        content_type,
        body,
    }
}

const PRIVATE_READS: [&str; 4] = [
    "/v1/users/alice/balance",
    "/v1/users/alice/inventory",
    "/v1/users/alice/transactions",
    "/v1/creators/alice/earnings",
];

#[tokio::test]
async fn private_reads_need_a_token_of_that_user() {
    let read_models = Arc::new(UnreachableReadModels::default());
    let address = start(read_models.clone()).await;
    let mallory = token(Role::User, "mallory");
    let expired = issue_token(
        SECRET,
        Role::User,
        &UserId::parse("alice").unwrap(),
        60,
        now_seconds() - 3_600,
    );
    let foreign = issue_token(
        b"another-secret",
        Role::Admin,
        &UserId::parse("alice").unwrap(),
        3_600,
        now_seconds(),
    );
    for path in PRIVATE_READS {
        get(address, path, None)
            .await
            .assert_problem(401, "unauthorized");
        get(address, path, Some("not-a-token"))
            .await
            .assert_problem(401, "unauthorized");
        get(address, path, Some(&expired))
            .await
            .assert_problem(401, "unauthorized");
        get(address, path, Some(&foreign))
            .await
            .assert_problem(401, "unauthorized");
        let detail = get(address, path, Some(&mallory))
            .await
            .assert_problem(403, "forbidden");
        assert!(detail.contains("`alice` is not `mallory`"), "{detail}");
    }
    assert_eq!(read_models.calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn the_user_itself_services_and_admins_may_read_private_data() {
    let read_models = Arc::new(EmptyReadModels::new(true));
    let address = start(read_models).await;
    for caller in [
        token(Role::User, "alice"),
        token(Role::Service, "storefront"),
        token(Role::Admin, "root"),
    ] {
        for path in PRIVATE_READS {
            get(address, path, Some(&caller)).await.assert_ok();
        }
    }
}

#[tokio::test]
async fn never_seen_users_and_creators_are_zero() {
    let address = start(Arc::new(EmptyReadModels::new(true))).await;
    let alice = token(Role::User, "alice");
    let body = get(address, "/v1/users/alice/balance", Some(&alice))
        .await
        .assert_ok()
        .clone();
    assert_eq!(
        body,
        serde_json::json!({ "user_id": "alice", "balance": 0, "pending": 0, "position": "p" })
    );
    let body = get(address, "/v1/creators/alice/earnings", Some(&alice))
        .await
        .assert_ok()
        .clone();
    assert_eq!(
        body,
        serde_json::json!({ "creator_id": "alice", "pending": 0, "released": 0, "lifetime": 0, "sales_count": 0 })
    );
    let body = get(address, "/v1/users/alice/inventory", Some(&alice))
        .await
        .assert_ok()
        .clone();
    assert_eq!(
        body,
        serde_json::json!({ "items": [], "next_cursor": null })
    );
    let body = get(address, "/v1/users/alice/transactions", Some(&alice))
        .await
        .assert_ok()
        .clone();
    assert_eq!(
        body,
        serde_json::json!({ "entries": [], "next_cursor": null })
    );
}

#[tokio::test]
async fn public_reads_need_no_token_and_unknown_things_are_not_found() {
    let address = start(Arc::new(EmptyReadModels::new(true))).await;
    for path in [
        "/v1/items/hat",
        "/v1/items/hat/resale-listings",
        "/v1/items/hat/owners",
    ] {
        let detail = get(address, path, None)
            .await
            .assert_problem(404, "not_found");
        assert_eq!(detail, "item `hat` does not exist");
    }
    let detail = get(address, "/v1/bundles/set", None)
        .await
        .assert_problem(404, "not_found");
    assert_eq!(detail, "bundle `set` does not exist");
}

#[tokio::test]
async fn ids_in_paths_are_validated_first() {
    let read_models = Arc::new(UnreachableReadModels::default());
    let address = start(read_models.clone()).await;
    for (path, field) in [
        ("/v1/users/bad%20id/balance", "user_id"),
        ("/v1/users/-x/inventory", "user_id"),
        ("/v1/items/%C3%A9", "item_id"),
        ("/v1/items/_x/owners", "item_id"),
        ("/v1/bundles/a%2Fb", "bundle_id"),
        ("/v1/creators/a%20b/earnings", "creator_id"),
    ] {
        // No token: validation comes before authentication.
        let detail = get(address, path, None)
            .await
            .assert_problem(422, "validation_failed");
        assert!(detail.starts_with(field), "{path}: {detail}");
    }
    assert_eq!(read_models.calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn malformed_after_tokens_are_bad_requests() {
    let read_models = Arc::new(UnreachableReadModels::default());
    let address = start(read_models.clone()).await;
    for after in ["x", "p1", "p1.", "p-1.2", "1.2", "p1.2_", ""] {
        for path in ["/v1/items/hat", "/v1/users/alice/balance"] {
            let answer = get(address, &format!("{path}?after={after}"), None).await;
            let detail = answer.assert_problem(400, "validation_failed");
            assert!(
                detail.starts_with("after must be a position token"),
                "{detail}"
            );
        }
    }
    assert_eq!(read_models.calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn bad_limits_and_cursors_are_refused() {
    let read_models = Arc::new(UnreachableReadModels::default());
    let address = start(read_models.clone()).await;
    let alice = token(Role::User, "alice");
    for query in [
        "limit=0",
        "limit=-1",
        "limit=abc",
        "limit=1.5",
        "limit=",
        "limit=%2B5",
        "limit=1&limit=2",
        "cursor=",
    ] {
        for path in [
            "/v1/users/alice/inventory",
            "/v1/users/alice/transactions",
            "/v1/items/hat/owners",
            "/v1/items/hat/resale-listings",
        ] {
            let answer = get(address, &format!("{path}?{query}"), Some(&alice)).await;
            answer.assert_problem(422, "validation_failed");
        }
    }
    assert_eq!(read_models.calls.load(Ordering::SeqCst), 0);

    let address = start(Arc::new(EmptyReadModels::new(true))).await;
    let detail = get(
        address,
        "/v1/users/alice/inventory?cursor=forged",
        Some(&alice),
    )
    .await
    .assert_problem(422, "validation_failed");
    assert_eq!(detail, "cursor is not valid for this listing");
}

#[tokio::test]
async fn large_limits_are_clamped() {
    let read_models = Arc::new(EmptyReadModels::new(true));
    let address = start(read_models.clone()).await;
    let alice = token(Role::User, "alice");
    for query in [
        "",
        "?limit=7",
        "?limit=1000",
        "?limit=1001",
        "?limit=5000",
        "?limit=99999999999999999999999999",
    ] {
        get(
            address,
            &format!("/v1/users/alice/transactions{query}"),
            Some(&alice),
        )
        .await
        .assert_ok();
    }
    assert_eq!(
        *read_models.limits.lock().unwrap(),
        vec![100, 7, 1000, 1000, 1000, 1000]
    );
}

#[tokio::test]
async fn reads_wait_for_their_position_then_give_up() {
    let read_models = Arc::new(EmptyReadModels::new(false));
    let address = start(read_models.clone()).await;
    let alice = token(Role::User, "alice");

    let started = Instant::now();
    let answer = get(
        address,
        "/v1/users/alice/balance?after=p0.5_3.9",
        Some(&alice),
    )
    .await;
    let detail = answer.assert_problem(503, "projection_lagging");
    assert!(
        started.elapsed() >= WAIT_MAX,
        "gave up after {:?}",
        started.elapsed()
    );
    assert!(detail.contains("p0.5_3.9"), "{detail}");
    get(address, "/v1/items/hat?after=p1.1", None)
        .await
        .assert_problem(503, "projection_lagging");

    // An empty position needs no waiting.
    let body = get(address, "/v1/users/alice/balance?after=p", Some(&alice))
        .await
        .assert_ok()
        .clone();
    assert_eq!(body["position"], "p");

    // Once the read models catch up, the position is echoed.
    read_models.caught_up.store(true, Ordering::SeqCst);
    let body = get(
        address,
        "/v1/users/alice/balance?after=p0.5_3.9",
        Some(&alice),
    )
    .await
    .assert_ok()
    .clone();
    assert_eq!(body["position"], "p0.5_3.9");
}

#[tokio::test]
async fn a_read_waits_while_the_read_models_catch_up() {
    let read_models = Arc::new(EmptyReadModels::new(false));
    let settings = Settings {
        projection_wait_max: Duration::from_secs(5),
        ..Settings::default()
    };
    let api = QueryApi::bind_with_settings(
        "127.0.0.1:0".parse().unwrap(),
        read_models.clone(),
        Arc::new(Verifier::new(SECRET)),
        Observability::always_ready(),
        settings,
    )
    .await
    .unwrap();
    let address = api.local_addr();
    tokio::spawn(api.run_until_stopped(std::future::pending()));
    let catching_up = read_models.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        catching_up.caught_up.store(true, Ordering::SeqCst);
    });
    let alice = token(Role::User, "alice");
    let body = get(address, "/v1/users/alice/balance?after=p2.40", Some(&alice))
        .await
        .assert_ok()
        .clone();
    assert_eq!(body["position"], "p2.40");
}

#[tokio::test]
async fn unknown_routes_and_methods_are_problems() {
    let read_models = Arc::new(UnreachableReadModels::default());
    let address = start(read_models.clone()).await;
    get(address, "/v1/users/alice", None)
        .await
        .assert_problem(404, "not_found");
    get(address, "/v2/items/hat", None)
        .await
        .assert_problem(404, "not_found");
    send(reqwest::Method::POST, address, "/v1/items/hat", None)
        .await
        .assert_problem(405, "method_not_allowed");
    send(
        reqwest::Method::DELETE,
        address,
        "/v1/users/alice/balance",
        None,
    )
    .await
    .assert_problem(405, "method_not_allowed");
    let health = reqwest::get(format!("http://{address}/healthz"))
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    assert_eq!(read_models.calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn bad_history_ranges_are_refused_before_any_read() {
    let read_models = Arc::new(UnreachableReadModels::default());
    let address = start(read_models.clone()).await;
    for (query, words) in [
        ("bucket=week", "bucket must be day"),
        ("bucket=", "bucket must be day"),
        ("from=yesterday", "from must be an rfc 3339 timestamp"),
        (
            "to=2024-13-01T00:00:00Z",
            "to must be an rfc 3339 timestamp",
        ),
        (
            "from=2024-05-02T00:00:00Z&to=2024-05-01T00:00:00Z",
            "from must be before to",
        ),
        (
            "from=2024-05-01T00:00:00Z&to=2024-05-01T00:00:00Z",
            "from must be before to",
        ),
        // 367 days (2024 is a leap year: 2024-01-01 to 2025-01-01 is 366).
        (
            "from=2024-01-01T00:00:00Z&to=2025-01-02T00:00:00Z",
            "span 367 days",
        ),
        // A partial day at either end counts as a whole bucket.
        (
            "from=2024-01-01T12:00:00Z&to=2025-01-01T00:00:01Z",
            "span 367 days",
        ),
        ("after=nonsense", "after must be a position token"),
        // The end of the last bucket must be writable in RFC 3339.
        (
            "from=9999-12-01T00:00:00Z&to=9999-12-31T00:00:01Z",
            "to must not be after 9999-12-31T00:00:00Z",
        ),
    ] {
        let detail = get(address, &format!("/v1/items/hat/history?{query}"), None)
            .await
            .assert_problem(400, "validation_failed");
        assert!(detail.contains(words), "{query}: {detail}");
    }
    assert_eq!(read_models.calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn history_of_an_unknown_item_is_not_found_and_a_full_year_is_served() {
    let address = start(Arc::new(EmptyReadModels::new(true))).await;
    get(address, "/v1/items/nothing/history", None)
        .await
        .assert_problem(404, "not_found");
    for range in [
        "from=2024-01-01T00:00:00Z&to=2025-01-01T00:00:00Z&bucket=day",
        "from=9999-12-01T00:00:00Z&to=9999-12-31T00:00:00Z",
        "from=1970-01-01T00:00:00Z&to=1970-01-01T00:00:00.001Z",
    ] {
        get(address, &format!("/v1/items/nothing/history?{range}"), None)
            .await
            .assert_problem(404, "not_found");
    }
}
