//! A benchmark peer, not part of the product: the ledger's primary-purchase
//! flow built the idiomatic way on `cqrs-es` + `postgres-es`.
//!
//! * `Item` aggregate (id = item id): published once with price and creator.
//! * `Wallet` aggregate (id = user id): balance, the items the user owns and
//!   the purchases and grants it has answered. A purchase is ONE command on
//!   the buyer's `Wallet`, so the debit and the grant of the item are one
//!   event in one aggregate commit (postgres-es: one transaction, optimistic
//!   concurrency through the events table's primary key).
//! * `SalesProjection`, a `cqrs_es::Query<Wallet>`: every committed
//!   `ItemPurchased` becomes a row of `sales` (idempotent by purchase id);
//!   item sold counts and creator earnings (70%, floor) are read from it.
//!
//! HTTP: exactly what `ledger bench --mode http --workload purchases` uses.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};

use async_trait::async_trait;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use cqrs_es::persist::PersistedEventStore;
use cqrs_es::{Aggregate, AggregateContext, AggregateError, DomainEvent, EventEnvelope, EventStore, Query};
use postgres_es::{postgres_snapshot_cqrs, PostgresCqrs, PostgresEventRepository};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sqlx::postgres::PgPoolOptions;
use sqlx::{Pool, Postgres};

/// Creator share of a primary sale, in percent, rounded down (the ledger's policy v1).
const CREATOR_PERCENT: i64 = 70;
/// Snapshot every this many events (postgres-es snapshot store).
const SNAPSHOT_SIZE: usize = 20;
/// Retries of a command that lost the optimistic-concurrency race.
const CONFLICT_RETRIES: usize = 20;

// ---------------------------------------------------------------- refusals

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub code: &'static str,
}

impl Refusal {
    const fn new(status: u16, code: &'static str) -> Self {
        Refusal { status, code }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.code)
    }
}
impl std::error::Error for Refusal {}

const NOT_FOUND: Refusal = Refusal::new(404, "not_found");
const INSUFFICIENT_FUNDS: Refusal = Refusal::new(409, "insufficient_funds");
const ALREADY_OWNED: Refusal = Refusal::new(409, "already_owned");
const PRICE_CHANGED: Refusal = Refusal::new(409, "price_changed");
const IDEMPOTENCY_CONFLICT: Refusal = Refusal::new(409, "idempotency_conflict");
const VALIDATION_FAILED: Refusal = Refusal::new(400, "validation_failed");

// ---------------------------------------------------------------- Item

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemDef {
    pub creator_id: String,
    pub name: String,
    pub price: i64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Item {
    pub published: Option<ItemDef>,
}

pub enum ItemCommand {
    Publish(ItemDef),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ItemEvent {
    ItemPublished(ItemDef),
}

impl DomainEvent for ItemEvent {
    fn event_type(&self) -> String {
        "ItemPublished".into()
    }
    fn event_version(&self) -> String {
        "1".into()
    }
}

#[async_trait]
impl Aggregate for Item {
    type Command = ItemCommand;
    type Event = ItemEvent;
    type Error = Refusal;
    type Services = ();

    fn aggregate_type() -> String {
        "Item".into()
    }

    async fn handle(&self, command: ItemCommand, _: &()) -> Result<Vec<ItemEvent>, Refusal> {
        let ItemCommand::Publish(def) = command;
        if def.price < 0 || def.creator_id.is_empty() {
            return Err(VALIDATION_FAILED);
        }
        match &self.published {
            None => Ok(vec![ItemEvent::ItemPublished(def)]),
            // A retried publish of the same item answers the same.
            Some(existing) if *existing == def => Ok(vec![]),
            Some(_) => Err(IDEMPOTENCY_CONFLICT),
        }
    }

    fn apply(&mut self, event: ItemEvent) {
        let ItemEvent::ItemPublished(def) = event;
        self.published = Some(def);
    }
}

// ---------------------------------------------------------------- Wallet

/// What a command answered, handed back to the HTTP handler (cqrs-es'
/// `execute` returns `()`): the command carries a cell its `handle` fills.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Receipt {
    Granted { balance_after: i64, version: u64 },
    Purchased(PurchaseRecord),
}
pub type Reply = Arc<Mutex<Option<Receipt>>>;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PurchaseRecord {
    pub item_id: String,
    pub price: i64,
    pub balance_after: i64,
    pub version: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantRecord {
    pub amount: i64,
    pub balance_after: i64,
    pub version: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Wallet {
    pub balance: i64,
    /// Events applied: the aggregate's sequence, shown as the answer's position.
    pub version: u64,
    pub grants: HashMap<String, GrantRecord>,
    /// item id -> purchase id: an item is owned once per buyer.
    pub owned: HashMap<String, String>,
    /// purchase id -> its answer, for idempotent retries.
    pub purchases: HashMap<String, PurchaseRecord>,
}

pub enum WalletCommand {
    Grant {
        grant_id: String,
        amount: i64,
        reply: Reply,
    },
    Purchase {
        purchase_id: String,
        item_id: String,
        expected_price: i64,
        reply: Reply,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum WalletEvent {
    Granted {
        grant_id: String,
        amount: i64,
    },
    /// The debit of the buyer and the grant of the item, in one event.
    ItemPurchased {
        purchase_id: String,
        item_id: String,
        creator_id: String,
        price: i64,
        creator_share: i64,
    },
}

impl DomainEvent for WalletEvent {
    fn event_type(&self) -> String {
        match self {
            WalletEvent::Granted { .. } => "Granted".into(),
            WalletEvent::ItemPurchased { .. } => "ItemPurchased".into(),
        }
    }
    fn event_version(&self) -> String {
        "1".into()
    }
}

/// The `Wallet`'s services: the catalogue, read from the `Item` aggregates.
/// Items are immutable once published in this peer (no reprice endpoint),
/// so a published item is cached after its first load.
pub struct Catalogue {
    store: PersistedEventStore<PostgresEventRepository, Item>,
    cache: RwLock<HashMap<String, ItemDef>>,
}

impl Catalogue {
    pub async fn item(&self, item_id: &str) -> Result<Option<ItemDef>, String> {
        if let Some(def) = self.cache.read().unwrap().get(item_id) {
            return Ok(Some(def.clone()));
        }
        let context = self
            .store
            .load_aggregate(item_id)
            .await
            .map_err(|error| error.to_string())?;
        let found = context.aggregate().published.clone();
        if let Some(def) = &found {
            self.cache
                .write()
                .unwrap()
                .insert(item_id.to_string(), def.clone());
        }
        Ok(found)
    }
}

#[async_trait]
impl Aggregate for Wallet {
    type Command = WalletCommand;
    type Event = WalletEvent;
    type Error = Refusal;
    type Services = Arc<Catalogue>;

    fn aggregate_type() -> String {
        "Wallet".into()
    }

    async fn handle(
        &self,
        command: WalletCommand,
        catalogue: &Arc<Catalogue>,
    ) -> Result<Vec<WalletEvent>, Refusal> {
        match command {
            WalletCommand::Grant {
                grant_id,
                amount,
                reply,
            } => {
                if let Some(done) = self.grants.get(&grant_id) {
                    if done.amount != amount {
                        return Err(IDEMPOTENCY_CONFLICT);
                    }
                    *reply.lock().unwrap() = Some(Receipt::Granted {
                        balance_after: done.balance_after,
                        version: done.version,
                    });
                    return Ok(vec![]);
                }
                if amount <= 0 {
                    return Err(VALIDATION_FAILED);
                }
                let balance_after = self.balance.checked_add(amount).ok_or(VALIDATION_FAILED)?;
                *reply.lock().unwrap() = Some(Receipt::Granted {
                    balance_after,
                    version: self.version + 1,
                });
                Ok(vec![WalletEvent::Granted { grant_id, amount }])
            }
            WalletCommand::Purchase {
                purchase_id,
                item_id,
                expected_price,
                reply,
            } => {
                // Idempotency: a retried purchase answers what it answered.
                if let Some(done) = self.purchases.get(&purchase_id) {
                    if done.item_id != item_id {
                        return Err(IDEMPOTENCY_CONFLICT);
                    }
                    *reply.lock().unwrap() = Some(Receipt::Purchased(done.clone()));
                    return Ok(vec![]);
                }
                let item = catalogue
                    .item(&item_id)
                    .await
                    .map_err(|_| Refusal::new(500, "internal_error"))?
                    .ok_or(NOT_FOUND)?;
                if item.price != expected_price {
                    return Err(PRICE_CHANGED);
                }
                if self.owned.contains_key(&item_id) {
                    return Err(ALREADY_OWNED);
                }
                if self.balance < item.price {
                    return Err(INSUFFICIENT_FUNDS);
                }
                let record = PurchaseRecord {
                    item_id: item_id.clone(),
                    price: item.price,
                    balance_after: self.balance - item.price,
                    version: self.version + 1,
                };
                *reply.lock().unwrap() = Some(Receipt::Purchased(record));
                Ok(vec![WalletEvent::ItemPurchased {
                    purchase_id,
                    item_id,
                    creator_share: item.price * CREATOR_PERCENT / 100,
                    creator_id: item.creator_id,
                    price: item.price,
                }])
            }
        }
    }

    fn apply(&mut self, event: WalletEvent) {
        self.version += 1;
        match event {
            WalletEvent::Granted { grant_id, amount } => {
                self.balance += amount;
                self.grants.insert(
                    grant_id,
                    GrantRecord {
                        amount,
                        balance_after: self.balance,
                        version: self.version,
                    },
                );
            }
            WalletEvent::ItemPurchased {
                purchase_id,
                item_id,
                price,
                ..
            } => {
                self.balance -= price;
                self.owned.insert(item_id.clone(), purchase_id.clone());
                self.purchases.insert(
                    purchase_id,
                    PurchaseRecord {
                        item_id,
                        price,
                        balance_after: self.balance,
                        version: self.version,
                    },
                );
            }
        }
    }
}

// ---------------------------------------------------------------- projection

/// `Query<Wallet>`: cqrs-es dispatches committed events to it right after
/// the commit, in the same `execute` call. Appending a row per sale (keyed,
/// so a replay is harmless) instead of read-modify-write of a view keeps one
/// hot creator from becoming a lost-update or lock hotspot.
pub struct SalesProjection {
    pool: Pool<Postgres>,
}

#[async_trait]
impl Query<Wallet> for SalesProjection {
    async fn dispatch(&self, buyer_id: &str, events: &[EventEnvelope<Wallet>]) {
        for envelope in events {
            if let WalletEvent::ItemPurchased {
                purchase_id,
                item_id,
                creator_id,
                price,
                creator_share,
            } = &envelope.payload
            {
                let result = sqlx::query(
                    "INSERT INTO sales (purchase_id, buyer_id, item_id, creator_id, price, creator_share) \
                     VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (purchase_id) DO NOTHING",
                )
                .bind(purchase_id)
                .bind(buyer_id)
                .bind(item_id)
                .bind(creator_id)
                .bind(price)
                .bind(creator_share)
                .execute(&self.pool)
                .await;
                if let Err(error) = result {
                    // cqrs-es queries cannot fail the command: the event is
                    // committed; a replay (QueryReplay) would repair this.
                    eprintln!("sales projection: {purchase_id}: {error}");
                }
            }
        }
    }
}

// ---------------------------------------------------------------- HTTP

pub struct App {
    wallets: PostgresCqrs<Wallet>,
    items: PostgresCqrs<Item>,
    wallet_store: PersistedEventStore<PostgresEventRepository, Wallet>,
    item_store: PersistedEventStore<PostgresEventRepository, Item>,
    pool: Pool<Postgres>,
}

fn problem(status: u16, code: &str) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, Json(json!({"code": code, "title": code}))).into_response()
}

fn aggregate_problem(error: AggregateError<Refusal>) -> Response {
    match error {
        AggregateError::UserError(refusal) => problem(refusal.status, refusal.code),
        AggregateError::AggregateConflict => problem(503, "overloaded"),
        other => {
            eprintln!("command failed: {other}");
            problem(500, "internal_error")
        }
    }
}

/// Executes a `Wallet` command, retrying when another command on the same
/// wallet committed first (optimistic concurrency: the events table's key).
async fn execute_wallet(
    app: &App,
    wallet_id: &str,
    make: impl Fn(Reply) -> WalletCommand,
) -> Result<Receipt, Response> {
    for _ in 0..CONFLICT_RETRIES {
        let reply: Reply = Arc::new(Mutex::new(None));
        match app.wallets.execute(wallet_id, make(reply.clone())).await {
            Ok(()) => {
                let receipt = reply.lock().unwrap().take();
                return receipt.ok_or_else(|| problem(500, "internal_error"));
            }
            Err(AggregateError::AggregateConflict) => {
                tokio::task::yield_now().await;
                continue;
            }
            Err(error) => return Err(aggregate_problem(error)),
        }
    }
    Err(problem(503, "overloaded"))
}

fn text<'a>(body: &'a Value, field: &str) -> Option<&'a str> {
    body[field].as_str().filter(|s| !s.is_empty() && s.len() <= 128)
}

async fn post_grant(State(app): State<Arc<App>>, Json(body): Json<Value>) -> Response {
    let (Some(grant_id), Some(user_id), Some(amount)) = (
        text(&body, "grant_id"),
        text(&body, "user_id"),
        body["amount"].as_i64(),
    ) else {
        return problem(400, "validation_failed");
    };
    let result = execute_wallet(&app, user_id, |reply| WalletCommand::Grant {
        grant_id: grant_id.to_string(),
        amount,
        reply,
    })
    .await;
    match result {
        Ok(Receipt::Granted {
            balance_after,
            version,
        }) => (
            StatusCode::CREATED,
            Json(json!({
                "grant_id": grant_id, "user_id": user_id, "amount": amount,
                "balance_after": balance_after, "position": format!("{user_id}/{version}"),
            })),
        )
            .into_response(),
        Ok(_) => problem(500, "internal_error"),
        Err(response) => response,
    }
}

async fn post_item(State(app): State<Arc<App>>, Json(body): Json<Value>) -> Response {
    let (Some(item_id), Some(creator_id), Some(name), Some(price)) = (
        text(&body, "item_id"),
        text(&body, "creator_id"),
        body["name"].as_str(),
        body["price"].as_i64(),
    ) else {
        return problem(400, "validation_failed");
    };
    if body.get("supply").is_some_and(|s| !s.is_null()) {
        // Limiteds are outside this peer's flow.
        return problem(400, "validation_failed");
    }
    let def = ItemDef {
        creator_id: creator_id.to_string(),
        name: name.to_string(),
        price,
    };
    let mut outcome = Err(AggregateError::AggregateConflict);
    for _ in 0..CONFLICT_RETRIES {
        outcome = app.items.execute(item_id, ItemCommand::Publish(def.clone())).await;
        if !matches!(outcome, Err(AggregateError::AggregateConflict)) {
            break;
        }
    }
    match outcome {
        Ok(()) => (
            StatusCode::CREATED,
            Json(json!({"item_id": item_id, "creator_id": creator_id, "name": name, "price": price})),
        )
            .into_response(),
        Err(error) => aggregate_problem(error),
    }
}

async fn post_purchase(State(app): State<Arc<App>>, Json(body): Json<Value>) -> Response {
    let (Some(purchase_id), Some(buyer_id), Some(expected_price)) = (
        text(&body, "purchase_id"),
        text(&body, "buyer_id"),
        body["expected_price"].as_i64(),
    ) else {
        return problem(400, "validation_failed");
    };
    let Some(item_id) = text(&body, "item_id") else {
        // Bundles are outside this peer's flow.
        return problem(400, "validation_failed");
    };
    let result = execute_wallet(&app, buyer_id, |reply| WalletCommand::Purchase {
        purchase_id: purchase_id.to_string(),
        item_id: item_id.to_string(),
        expected_price,
        reply,
    })
    .await;
    match result {
        Ok(Receipt::Purchased(record)) => (
            StatusCode::CREATED,
            Json(json!({
                "purchase_id": purchase_id, "status": "completed", "buyer_id": buyer_id,
                "item_id": record.item_id, "price": record.price,
                "balance_after": record.balance_after,
                "position": format!("{buyer_id}/{}", record.version),
            })),
        )
            .into_response(),
        Ok(_) => problem(500, "internal_error"),
        Err(response) => response,
    }
}

/// Balances are read from the `Wallet` aggregate itself (snapshot + events):
/// always current, no projection to wait for.
async fn get_balance(State(app): State<Arc<App>>, Path(user_id): Path<String>) -> Response {
    match app.wallet_store.load_aggregate(&user_id).await {
        Ok(context) => Json(json!({
            "user_id": user_id, "balance": context.aggregate().balance, "pending": 0,
        }))
        .into_response(),
        Err(error) => {
            eprintln!("balance {user_id}: {error}");
            problem(500, "internal_error")
        }
    }
}

async fn get_item(State(app): State<Arc<App>>, Path(item_id): Path<String>) -> Response {
    let item = match app.item_store.load_aggregate(&item_id).await {
        Ok(context) => context.aggregate().published.clone(),
        Err(error) => {
            eprintln!("item {item_id}: {error}");
            return problem(500, "internal_error");
        }
    };
    let Some(def) = item else {
        return problem(404, "not_found");
    };
    let sold: Result<i64, _> = sqlx::query_scalar("SELECT count(*) FROM sales WHERE item_id = $1")
        .bind(&item_id)
        .fetch_one(&app.pool)
        .await;
    match sold {
        Ok(sold) => Json(json!({
            "item_id": item_id, "creator_id": def.creator_id, "name": def.name,
            "price": def.price, "sold": sold, "remaining": null,
        }))
        .into_response(),
        Err(error) => {
            eprintln!("item {item_id}: {error}");
            problem(500, "internal_error")
        }
    }
}

async fn get_earnings(State(app): State<Arc<App>>, Path(creator_id): Path<String>) -> Response {
    let lifetime: Result<i64, _> = sqlx::query_scalar(
        "SELECT COALESCE(SUM(creator_share), 0)::bigint FROM sales WHERE creator_id = $1",
    )
    .bind(&creator_id)
    .fetch_one(&app.pool)
    .await;
    match lifetime {
        Ok(lifetime) => Json(json!({
            "creator_id": creator_id, "pending": lifetime, "released": 0, "lifetime": lifetime,
        }))
        .into_response(),
        Err(error) => {
            eprintln!("earnings {creator_id}: {error}");
            problem(500, "internal_error")
        }
    }
}

#[tokio::main]
async fn main() {
    let database_url = std::env::var("PEER_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://peer@127.0.0.1:15432/peer".into());
    let addr: SocketAddr = std::env::var("PEER_ADDR")
        .unwrap_or_else(|_| "127.0.0.1:18280".into())
        .parse()
        .expect("PEER_ADDR is host:port");
    let pool_size: u32 = std::env::var("PEER_POOL")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(32);
    let pool = PgPoolOptions::new()
        .max_connections(pool_size)
        .connect(&database_url)
        .await
        .expect("cannot connect to PostgreSQL");

    let catalogue = Arc::new(Catalogue {
        store: PersistedEventStore::new_snapshot_store(
            PostgresEventRepository::new(pool.clone()),
            SNAPSHOT_SIZE,
        ),
        cache: RwLock::new(HashMap::new()),
    });
    let sales = SalesProjection { pool: pool.clone() };
    let app = Arc::new(App {
        wallets: postgres_snapshot_cqrs(pool.clone(), vec![Box::new(sales)], SNAPSHOT_SIZE, catalogue),
        items: postgres_snapshot_cqrs(pool.clone(), vec![], SNAPSHOT_SIZE, ()),
        wallet_store: PersistedEventStore::new_snapshot_store(
            PostgresEventRepository::new(pool.clone()),
            SNAPSHOT_SIZE,
        ),
        item_store: PersistedEventStore::new_snapshot_store(
            PostgresEventRepository::new(pool.clone()),
            SNAPSHOT_SIZE,
        ),
        pool,
    });

    let router = Router::new()
        .route("/v1/grants", post(post_grant))
        .route("/v1/items", post(post_item))
        .route("/v1/purchases", post(post_purchase))
        .route("/v1/users/{id}/balance", get(get_balance))
        .route("/v1/items/{id}", get(get_item))
        .route("/v1/creators/{id}/earnings", get(get_earnings))
        .route("/health", get(|| async { "ok" }))
        .with_state(app);
    let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
    eprintln!("peer (cqrs-es + postgres-es) listening on {addr}, pool {pool_size}");
    axum::serve(listener, router)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .expect("serve");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creator_share_is_seventy_percent_floor() {
        assert_eq!(10 * CREATOR_PERCENT / 100, 7);
        assert_eq!(15 * CREATOR_PERCENT / 100, 10);
    }
}
