//! HTTP-level tests of everything the command API decides without the engine:
//! the bus behind the router records calls and panics if called, proving
//! that refused requests never reach the ledger.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use engine::ports::{CommandBus, SubmitError};
use ledger_command_api::{CommandApi, Observability, Settings};
use ledger_core::{Command, CommandMeta, Completion, Role, UserId};
use ledger_http::auth::{issue_token, now_seconds, Verifier};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const SECRET: &[u8] = b"command-api-test-secret";

/// A bus that must never be reached: it counts calls, then panics.
#[derive(Default)]
struct UnreachableBus {
    calls: AtomicUsize,
}

#[async_trait]
impl CommandBus for UnreachableBus {
    async fn submit(
        &self,
        command: Command,
        _meta: CommandMeta,
    ) -> Result<Completion, SubmitError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        panic!("a refused request reached the engine: {command:?}");
    }
}

struct TestApi {
    address: SocketAddr,
    bus: Arc<UnreachableBus>,
    ready: Arc<AtomicBool>,
    client: reqwest::Client,
}

impl TestApi {
    async fn start() -> Self {
        Self::start_with(Settings::default()).await
    }

    async fn start_with(settings: Settings) -> Self {
        let bus = Arc::new(UnreachableBus::default());
        let ready = Arc::new(AtomicBool::new(false));
        let observability = Observability::new(
            ready.clone(),
            Arc::new(|| "# TYPE ledger_test_total counter\nledger_test_total 3\n".to_owned()),
        );
        let api = CommandApi::bind_with_settings(
            "127.0.0.1:0".parse().unwrap(),
            bus.clone(),
            Arc::new(Verifier::new(SECRET)),
            observability,
            settings,
        )
        .await
        .expect("binds");
        let address = api.local_addr();
        tokio::spawn(api.run_until_stopped(std::future::pending()));
        Self {
            address,
            bus,
            ready,
            client: reqwest::Client::new(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.address, path)
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Vec<u8>>,
        content_type: Option<&str>,
    ) -> Answer {
        let mut request = self.client.request(method, self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        if let Some(body) = body {
            request = request.body(body);
        }
        let response = request.send().await.expect("the server answers");
        Answer::read(response).await
    }

    async fn post(&self, path: &str, token: Option<&str>, body: Value) -> Answer {
        self.send(
            Method::POST,
            path,
            token,
            Some(body.to_string().into_bytes()),
            Some("application/json"),
        )
        .await
    }

    fn assert_engine_untouched(&self) {
        assert_eq!(
            self.bus.calls.load(Ordering::SeqCst),
            0,
            "the engine was called"
        );
    }
}

#[derive(Debug)]
struct Answer {
    status: StatusCode,
    content_type: String,
    headers: reqwest::header::HeaderMap,
    text: String,
}

impl Answer {
    async fn read(response: reqwest::Response) -> Self {
        let status = response.status();
        let headers = response.headers().clone();
        let content_type = headers
            .get("content-type")
            .map(|value| value.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let text = response.text().await.unwrap();
        Self {
            status,
            content_type,
            headers,
            text,
        }
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|error| panic!("not json ({error}): {}", self.text))
    }

    /// Asserts a problem+json answer with `status` and `code`; returns its detail.
    fn assert_problem(&self, status: u16, code: &str) -> String {
        assert_eq!(self.status.as_u16(), status, "{self:?}");
        assert_eq!(self.content_type, "application/problem+json", "{self:?}");
        let body = self.json();
        assert_eq!(body["code"], code, "{self:?}");
        assert_eq!(body["status"], status, "{self:?}");
        assert_eq!(
            body["type"],
            format!("https://ledger.example/problems/{code}")
        );
        assert!(body["title"]
            .as_str()
            .is_some_and(|title| !title.is_empty()));
        let detail = body["detail"].as_str().expect("a detail").to_owned();
        assert!(
            detail.starts_with(|first: char| !first.is_uppercase()),
            "detail is lowercase: {detail}"
        );
        detail
    }
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

fn grant() -> Value {
    json!({ "grant_id": "g1", "user_id": "alice", "amount": 100 })
}

fn purchase() -> Value {
    json!({ "purchase_id": "p1", "buyer_id": "alice", "item_id": "hat", "expected_price": 10 })
}

fn item() -> Value {
    json!({ "item_id": "hat", "creator_id": "alice", "name": "Hat", "price": 10 })
}

fn with(mut body: Value, field: &str, value: Value) -> Value {
    body[field] = value;
    body
}

fn without(mut body: Value, field: &str) -> Value {
    body.as_object_mut().unwrap().remove(field);
    body
}

#[tokio::test]
async fn malformed_json_is_a_bad_request() {
    let api = TestApi::start().await;
    let admin = token(Role::Admin, "root");
    for body in ["{", "{\"grant_id\": }", "not json", "", "{\"amount\": 1,}"] {
        let answer = api
            .send(
                Method::POST,
                "/v1/grants",
                Some(&admin),
                Some(body.as_bytes().to_vec()),
                Some("application/json"),
            )
            .await;
        let detail = answer.assert_problem(400, "validation_failed");
        assert!(detail.contains("not valid json"), "{detail}");
    }
    api.assert_engine_untouched();
}

#[tokio::test]
async fn a_body_that_is_not_declared_json_is_a_bad_request() {
    let api = TestApi::start().await;
    let admin = token(Role::Admin, "root");
    let body = Some(grant().to_string().into_bytes());
    for content_type in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
    ] {
        let answer = api
            .send(
                Method::POST,
                "/v1/grants",
                Some(&admin),
                body.clone(),
                content_type,
            )
            .await;
        let detail = answer.assert_problem(400, "validation_failed");
        assert_eq!(detail, "content-type must be application/json");
    }
    // A declared json body with parameters passes on to authorization.
    let user = token(Role::User, "alice");
    let answer = api
        .send(
            Method::POST,
            "/v1/grants",
            Some(&user),
            body,
            Some("application/json; charset=utf-8"),
        )
        .await;
    answer.assert_problem(403, "forbidden");
    api.assert_engine_untouched();
}

#[tokio::test]
async fn a_body_that_is_not_an_object_is_refused() {
    let api = TestApi::start().await;
    let admin = token(Role::Admin, "root");
    for body in [
        json!(["g1", "alice", 100]),
        json!(5),
        json!(null),
        json!("grant"),
    ] {
        let detail = api
            .post("/v1/grants", Some(&admin), body)
            .await
            .assert_problem(422, "validation_failed");
        assert_eq!(detail, "request body must be a json object");
    }
    api.assert_engine_untouched();
}

#[tokio::test]
async fn missing_and_unknown_fields_are_refused() {
    let api = TestApi::start().await;
    let admin = token(Role::Admin, "root");
    let detail = api
        .post("/v1/grants", Some(&admin), without(grant(), "amount"))
        .await
        .assert_problem(422, "validation_failed");
    assert!(detail.contains("missing field `amount`"), "{detail}");
    let detail = api
        .post(
            "/v1/grants",
            Some(&admin),
            with(grant(), "currency", json!("gold")),
        )
        .await
        .assert_problem(422, "validation_failed");
    assert!(detail.contains("unknown field `currency`"), "{detail}");
    let user = token(Role::User, "alice");
    let detail = api
        .post(
            "/v1/purchases",
            Some(&user),
            with(purchase(), "quantity", json!(2)),
        )
        .await
        .assert_problem(422, "validation_failed");
    assert!(detail.contains("unknown field `quantity`"), "{detail}");
    api.assert_engine_untouched();
}

#[tokio::test]
async fn amounts_must_be_positive_bounded_integers() {
    let api = TestApi::start().await;
    let admin = token(Role::Admin, "root");
    let user = token(Role::User, "alice");
    let bad_amounts = [
        json!(0),
        json!(-5),
        json!(1.5),
        // A zero fraction is an integer (JSON Schema's `integer`), but 0.0 is still 0.
        json!(0.0),
        json!(100.25),
        json!("100"),
        json!(null),
        json!(true),
        json!(1_000_000_000_001_i64),
        json!(i64::MAX),
        json!(u64::MAX),
    ];
    for amount in &bad_amounts {
        let detail = api
            .post(
                "/v1/grants",
                Some(&admin),
                with(grant(), "amount", amount.clone()),
            )
            .await
            .assert_problem(422, "validation_failed");
        assert!(
            detail.starts_with("amount must be an integer from 1 to 1000000000000"),
            "{detail}"
        );
        let detail = api
            .post(
                "/v1/purchases",
                Some(&user),
                with(purchase(), "expected_price", amount.clone()),
            )
            .await
            .assert_problem(422, "validation_failed");
        assert!(
            detail.starts_with("expected_price must be an integer"),
            "{detail}"
        );
        let detail = api
            .post(
                "/v1/items",
                Some(&user),
                with(item(), "price", amount.clone()),
            )
            .await
            .assert_problem(422, "validation_failed");
        assert!(detail.starts_with("price must be an integer"), "{detail}");
    }
    // Numbers too large for any integer type, written out in the body.
    for raw in [
        r#"{"grant_id":"g1","user_id":"alice","amount":99999999999999999999999}"#,
        r#"{"grant_id":"g1","user_id":"alice","amount":1e400}"#,
        // An exponent with a fraction left: not an integer (1e3 is one, and accepted).
        r#"{"grant_id":"g1","user_id":"alice","amount":1.5e0}"#,
    ] {
        let answer = api
            .send(
                Method::POST,
                "/v1/grants",
                Some(&admin),
                Some(raw.as_bytes().to_vec()),
                Some("application/json"),
            )
            .await;
        answer.assert_problem(422, "validation_failed");
    }
    api.assert_engine_untouched();
}

#[tokio::test]
async fn ids_must_follow_the_grammar() {
    let api = TestApi::start().await;
    let admin = token(Role::Admin, "root");
    let user = token(Role::User, "alice");
    for bad in [
        json!(""),
        json!("has space"),
        json!("-leading"),
        json!("é"),
        json!("x".repeat(129)),
        json!(7),
        json!(null),
    ] {
        let detail = api
            .post(
                "/v1/grants",
                Some(&admin),
                with(grant(), "grant_id", bad.clone()),
            )
            .await
            .assert_problem(422, "validation_failed");
        assert!(detail.starts_with("grant_id "), "{detail}");
        let detail = api
            .post(
                "/v1/purchases",
                Some(&user),
                with(purchase(), "item_id", bad.clone()),
            )
            .await
            .assert_problem(422, "validation_failed");
        // A null target counts as absent.
        let expected = if bad.is_null() {
            "exactly one of item_id and bundle_id"
        } else {
            "item_id "
        };
        assert!(detail.starts_with(expected), "{detail}");
        let detail = api
            .post(
                "/v1/purchases",
                Some(&user),
                with(purchase(), "buyer_id", bad.clone()),
            )
            .await
            .assert_problem(422, "validation_failed");
        assert!(detail.starts_with("buyer_id "), "{detail}");
    }
    // Ids in the path.
    let detail = api
        .post(
            "/v1/items/bad%20id/price",
            Some(&user),
            json!({ "price": 5 }),
        )
        .await
        .assert_problem(422, "validation_failed");
    assert!(detail.starts_with("item_id "), "{detail}");
    let detail = api
        .send(
            Method::DELETE,
            "/v1/resale-listings/-x",
            Some(&user),
            None,
            None,
        )
        .await
        .assert_problem(422, "validation_failed");
    assert!(detail.starts_with("listing_id "), "{detail}");
    api.assert_engine_untouched();
}

#[tokio::test]
async fn item_definitions_are_validated() {
    let api = TestApi::start().await;
    let user = token(Role::User, "alice");
    let cases = [
        (with(item(), "name", json!("")), "name must not be empty"),
        (
            with(item(), "name", json!("n".repeat(201))),
            "name is longer than 200 bytes",
        ),
        (
            with(item(), "supply", json!(0)),
            "supply must be an integer from 1 to 10000000",
        ),
        (
            with(item(), "supply", json!(10_000_001)),
            "supply must be an integer from 1 to 10000000",
        ),
        (
            with(item(), "max_per_user", json!(0)),
            "max_per_user must be an integer",
        ),
        (
            with(item(), "resellable", json!(true)),
            "resellable may only be true for a limited item",
        ),
        (
            with(item(), "resellable", json!("yes")),
            "resellable must be a boolean",
        ),
        (
            with(item(), "starts_at", json!("tomorrow")),
            "starts_at must be an rfc 3339 timestamp",
        ),
        (
            with(item(), "ends_at", json!("2030-01-01T00:00:00+02:00")),
            "ends_at must be an rfc 3339 timestamp",
        ),
        (
            with(
                with(item(), "starts_at", json!("2030-01-02T00:00:00Z")),
                "ends_at",
                json!("2030-01-01T00:00:00Z"),
            ),
            "starts_at must be before ends_at",
        ),
        (
            with(
                with(item(), "starts_at", json!("2030-01-01T00:00:00Z")),
                "ends_at",
                json!("2030-01-01T00:00:00Z"),
            ),
            "starts_at must be before ends_at",
        ),
    ];
    for (body, expected) in cases {
        let detail = api
            .post("/v1/items", Some(&user), body)
            .await
            .assert_problem(422, "validation_failed");
        assert!(detail.starts_with(expected), "{detail} / {expected}");
    }
    api.assert_engine_untouched();
}

#[tokio::test]
async fn bundles_and_purchases_are_validated() {
    let api = TestApi::start().await;
    let user = token(Role::User, "alice");
    let bundle = |item_ids: Value| json!({ "bundle_id": "b1", "creator_id": "alice", "name": "Set", "item_ids": item_ids, "price": 10 });
    let many: Vec<String> = (0..51).map(|index| format!("item{index}")).collect();
    for (body, expected) in [
        (bundle(json!([])), "item_ids must hold 1 to 50 items"),
        (bundle(json!(many)), "item_ids must hold 1 to 50 items"),
        (bundle(json!(["a", "b", "a"])), "item_ids must be distinct"),
        (bundle(json!("a")), "item_ids must be an array"),
        (bundle(json!(["a", "no good"])), "item_ids must start"),
    ] {
        let detail = api
            .post("/v1/bundles", Some(&user), body)
            .await
            .assert_problem(422, "validation_failed");
        assert!(detail.starts_with(expected), "{detail}");
    }
    let both = with(purchase(), "bundle_id", json!("b1"));
    let neither = without(purchase(), "item_id");
    for body in [both, neither] {
        let detail = api
            .post("/v1/purchases", Some(&user), body)
            .await
            .assert_problem(422, "validation_failed");
        assert_eq!(detail, "exactly one of item_id and bundle_id is required");
    }
    let listing = json!({ "listing_id": "l1", "seller_id": "alice", "item_id": "hat", "serial": 0, "price": 5 });
    let detail = api
        .post("/v1/resale-listings", Some(&user), listing)
        .await
        .assert_problem(422, "validation_failed");
    assert!(detail.starts_with("serial must be an integer"), "{detail}");
    let detail = api
        .post(
            "/v1/items/hat/off-sale",
            Some(&user),
            json!({ "on_sale": false }),
        )
        .await
        .assert_problem(422, "validation_failed");
    assert!(detail.starts_with("unknown field `on_sale`"), "{detail}");
    api.assert_engine_untouched();
}

#[tokio::test]
async fn carts_are_validated_line_by_line() {
    let api = TestApi::start().await;
    let user = token(Role::User, "alice");
    let cart = |lines: Value| json!({ "purchase_id": "c1", "buyer_id": "alice", "lines": lines });
    let line = |item: &str| json!({ "item_id": item, "expected_price": 10 });
    let many: Vec<Value> = (0..21).map(|index| line(&format!("item{index}"))).collect();
    for (body, expected) in [
        (cart(json!([])), "lines must hold 1 to 20 lines (got 0)"),
        (cart(json!(many)), "lines must hold 1 to 20 lines (got 21)"),
        (cart(json!("hat")), "lines must be an array"),
        (
            cart(json!([line("a"), line("b"), line("a")])),
            "line 3: item a is already in the cart",
        ),
        (
            cart(json!([line("a"), { "bundle_id": "b", "item_id": "c", "expected_price": 1 }])),
            "line 2: exactly one of item_id and bundle_id is required",
        ),
        (
            cart(json!([line("a"), { "item_id": "b", "expected_price": 0 }])),
            "line 2: expected_price must be an integer",
        ),
        (
            cart(json!([line("a"), { "item_id": "b", "expected_price": 1, "qty": 2 }])),
            "line 2: unknown field `qty`",
        ),
        (
            cart(json!([line("a"), "b"])),
            "line 2: a line must be an object",
        ),
    ] {
        let detail = api
            .post("/v1/carts", Some(&user), body)
            .await
            .assert_problem(422, "validation_failed");
        assert!(detail.starts_with(expected), "{detail}");
    }
    let detail = api
        .post(
            "/v1/carts",
            Some(&user),
            json!({ "purchase_id": "c1", "buyer_id": "alice", "region": "BR", "lines": [line("a")] }),
        )
        .await
        .assert_problem(403, "forbidden");
    assert!(detail.contains("region"), "{detail}");
    let detail = api
        .post(
            "/v1/carts",
            Some(&token(Role::User, "mallory")),
            cart(json!([line("a")])),
        )
        .await
        .assert_problem(403, "forbidden");
    assert!(detail.contains("buyer_id `alice`"), "{detail}");
    api.assert_engine_untouched();
}

#[tokio::test]
async fn bodies_over_one_mebibyte_are_too_large() {
    let api = TestApi::start().await;
    let admin = token(Role::Admin, "root");
    let padding = "x".repeat(1024 * 1024);
    let body = json!({ "grant_id": "g1", "user_id": "alice", "amount": 1, "padding": padding });
    let answer = api.post("/v1/grants", Some(&admin), body).await;
    let detail = answer.assert_problem(413, "payload_too_large");
    assert_eq!(detail, "request body is larger than 1048576 bytes");
    api.assert_engine_untouched();
}

#[tokio::test]
async fn validation_comes_before_authentication() {
    let api = TestApi::start().await;
    api.post("/v1/grants", None, with(grant(), "amount", json!(0)))
        .await
        .assert_problem(422, "validation_failed");
    api.post("/v1/grants", Some("garbage"), without(grant(), "user_id"))
        .await
        .assert_problem(422, "validation_failed");
    api.assert_engine_untouched();
}

#[tokio::test]
async fn bad_tokens_are_unauthorized() {
    let api = TestApi::start().await;
    let now = now_seconds();
    let alice = UserId::parse("alice").unwrap();
    let expired = issue_token(SECRET, Role::User, &alice, 60, now - 3_600);
    let foreign = issue_token(b"another-secret", Role::User, &alice, 3_600, now);
    let valid = issue_token(SECRET, Role::User, &alice, 3_600, now);
    let (signed, _) = valid.rsplit_once('.').unwrap();
    let unsigned = {
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        use base64::Engine;
        let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#);
        let claims = URL_SAFE_NO_PAD.encode(format!(
            r#"{{"sub":"alice","role":"admin","exp":{}}}"#,
            now + 3_600
        ));
        format!("{header}.{claims}.")
    };
    let cases = [
        (None, "authorization header is missing"),
        (Some("garbage".to_owned()), "token is not a well-formed jwt"),
        (Some(expired), "token has expired"),
        (Some(foreign), "token signature is not valid"),
        (
            Some(format!("{signed}.AAAA")),
            "token signature is not valid",
        ),
        (Some(unsigned), "token algorithm must be hs256"),
    ];
    for (token, expected) in cases {
        let answer = api
            .post("/v1/purchases", token.as_deref(), purchase())
            .await;
        let detail = answer.assert_problem(401, "unauthorized");
        assert!(detail.starts_with(expected), "{detail}");
        assert_eq!(answer.headers.get("www-authenticate").unwrap(), "Bearer");
    }
    let answer = api
        .client
        .post(api.url("/v1/purchases"))
        .header(
            "authorization",
            format!("Basic {}", token(Role::User, "alice")),
        )
        .json(&purchase())
        .send()
        .await
        .unwrap();
    Answer::read(answer)
        .await
        .assert_problem(401, "unauthorized");
    api.assert_engine_untouched();
}

#[tokio::test]
async fn users_act_only_as_themselves() {
    let api = TestApi::start().await;
    let mallory = token(Role::User, "mallory");
    let cases = [
        ("/v1/purchases", purchase(), "buyer_id `alice`"),
        ("/v1/items", item(), "creator_id `alice`"),
        (
            "/v1/bundles",
            json!({ "bundle_id": "b1", "creator_id": "alice", "name": "Set", "item_ids": ["hat"], "price": 10 }),
            "creator_id `alice`",
        ),
        (
            "/v1/resale-listings",
            json!({ "listing_id": "l1", "seller_id": "alice", "item_id": "hat", "serial": 1, "price": 5 }),
            "seller_id `alice`",
        ),
        (
            "/v1/resale-purchases",
            json!({ "purchase_id": "p2", "buyer_id": "alice", "listing_id": "l1", "expected_price": 5 }),
            "buyer_id `alice`",
        ),
    ];
    for (path, body, expected) in cases {
        let detail = api
            .post(path, Some(&mallory), body)
            .await
            .assert_problem(403, "forbidden");
        assert!(detail.contains(expected), "{detail}");
        assert!(detail.contains("`mallory`"), "{detail}");
    }
    api.assert_engine_untouched();
}

#[tokio::test]
async fn only_admins_grant_and_refund() {
    let api = TestApi::start().await;
    for role in [Role::User, Role::Service] {
        let caller = token(role, "alice");
        let detail = api
            .post("/v1/grants", Some(&caller), grant())
            .await
            .assert_problem(403, "forbidden");
        assert_eq!(detail, "only an admin token may grant currency");
        let detail = api
            .post(
                "/v1/refunds",
                Some(&caller),
                json!({ "refund_id": "r1", "purchase_id": "p1" }),
            )
            .await
            .assert_problem(403, "forbidden");
        assert_eq!(detail, "only an admin token may refund a purchase");
    }
    api.assert_engine_untouched();
}

#[tokio::test]
async fn unknown_routes_and_methods_are_problems() {
    let api = TestApi::start().await;
    let admin = token(Role::Admin, "root");
    let answer = api
        .send(Method::GET, "/v1/nothing-here", Some(&admin), None, None)
        .await;
    answer.assert_problem(404, "not_found");
    let answer = api.send(Method::POST, "/", None, None, None).await;
    answer.assert_problem(404, "not_found");
    let answer = api
        .send(Method::GET, "/v1/grants", Some(&admin), None, None)
        .await;
    answer.assert_problem(405, "method_not_allowed");
    assert_eq!(
        answer
            .headers
            .get("allow")
            .map(|value| value.to_str().unwrap()),
        Some("POST")
    );
    let answer = api
        .send(
            Method::PUT,
            "/v1/resale-listings/l1",
            Some(&admin),
            None,
            None,
        )
        .await;
    answer.assert_problem(405, "method_not_allowed");
    api.assert_engine_untouched();
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let api = TestApi::start().await;
    let answer = api.send(Method::GET, "/healthz", None, None, None).await;
    assert_eq!(answer.status, StatusCode::OK);
    let answer = api.send(Method::GET, "/readyz", None, None, None).await;
    answer.assert_problem(503, "not_ready");
    api.ready.store(true, Ordering::SeqCst);
    let answer = api.send(Method::GET, "/readyz", None, None, None).await;
    assert_eq!(answer.status, StatusCode::OK);
    let answer = api.send(Method::GET, "/metrics", None, None, None).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert!(
        answer.content_type.starts_with("text/plain"),
        "{}",
        answer.content_type
    );
    assert!(answer.text.contains("ledger_test_total 3"));
    api.assert_engine_untouched();
}

#[tokio::test]
async fn requests_beyond_the_in_flight_limit_are_overloaded() {
    let api = TestApi::start_with(Settings {
        in_flight_requests_max: 0,
        ..Settings::default()
    })
    .await;
    let answer = api
        .post("/v1/grants", Some(&token(Role::Admin, "root")), grant())
        .await;
    answer.assert_problem(503, "overloaded");
    // Observability routes stay outside the limit.
    let answer = api.send(Method::GET, "/healthz", None, None, None).await;
    assert_eq!(answer.status, StatusCode::OK);
    api.assert_engine_untouched();
}

#[tokio::test]
async fn the_server_stops_when_told() {
    let bus: Arc<dyn CommandBus> = Arc::new(UnreachableBus::default());
    let api = CommandApi::bind(
        "127.0.0.1:0".parse().unwrap(),
        bus,
        Arc::new(Verifier::new(SECRET)),
        Observability::always_ready(),
    )
    .await
    .unwrap();
    let address = api.local_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(api.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    let answer = reqwest::get(format!("http://{address}/healthz"))
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    stop.send(()).unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(5), running)
        .await
        .expect("stops in time")
        .unwrap()
        .unwrap();
}
