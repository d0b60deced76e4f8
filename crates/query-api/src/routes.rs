//! The read routes. Checks run in the contract's order: validation
//! (ids, `after`, `limit`, `cursor`), authentication, authorization; then the
//! read waits for the `after` position and reads the read models.

use std::sync::Arc;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use ledger_core::{parse_position, BundleId, ItemId, PurchaseId, ReadPosition, Role, UserId};
use ledger_http::auth::Verifier;
use ledger_http::extract::{PathSegment, QueryParameters};
use ledger_http::problem::Problem;
use ledger_http::validate::{self, format_timestamp, parse_id};
use projectors::{
    day_ceiling, day_of, history_buckets, ReadError, ReadModels, SalesRange, TransactionEntry,
    DAY_MS, HISTORY_DAYS_DEFAULT, HISTORY_DAYS_MAX, PAGE_SIZE_DEFAULT, PAGE_SIZE_MAX,
};
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::Settings;

/// Longest cursor accepted, in bytes.
pub const CURSOR_LENGTH_MAX: usize = 1_024;

/// What the read handlers share.
#[derive(Clone)]
pub(crate) struct QueryState {
    pub read_models: Arc<dyn ReadModels>,
    pub verifier: Arc<Verifier>,
    pub settings: Settings,
    /// Item views read without `?after=`, when the settings keep them.
    pub recent_items: Option<Arc<crate::recent::RecentItems>>,
}

type Answer = Result<Response, Problem>;

/// A read-your-writes token from `?after=`, as given and parsed.
struct After {
    token: String,
    position: ReadPosition,
}

fn parse_after(query: &QueryParameters) -> Result<Option<After>, Problem> {
    let Some(token) = query.get("after")? else {
        return Ok(None);
    };
    let position = parse_position(token).ok_or_else(|| {
        Problem::malformed_request(
            "after must be a position token returned by the command api, e.g. p0.12_3.4",
        )
    })?;
    Ok(Some(After {
        token: token.to_owned(),
        position,
    }))
}

/// The position an answer reflects: the `after` it waited for, else `p`
/// (the read models as they are).
fn answered_position(after: Option<&After>) -> String {
    after
        .map(|after| after.token.clone())
        .unwrap_or_else(|| "p".to_owned())
}

/// A page request: `limit` (default 100, clamped to 1000) and `cursor`.
struct PageRequest {
    limit: usize,
    cursor: Option<String>,
}

fn parse_page(query: &QueryParameters) -> Result<PageRequest, Problem> {
    parse_page_or(query, PAGE_SIZE_DEFAULT)
}

/// [`parse_page`] for a list whose page without a `limit` holds
/// `default_limit` entries.
fn parse_page_or(query: &QueryParameters, default_limit: usize) -> Result<PageRequest, Problem> {
    let limit = match query.get("limit")? {
        None => default_limit,
        Some(text) => {
            let refuse = || {
                Problem::validation(format!(
                    "limit must be a positive integer (values above {PAGE_SIZE_MAX} are clamped)"
                ))
            };
            if text.is_empty() || !text.bytes().all(|byte| byte.is_ascii_digit()) {
                return Err(refuse());
            }
            // All digits: a number too large for u64 is simply above the maximum.
            let limit = text.parse::<u64>().unwrap_or(u64::MAX);
            if limit == 0 {
                return Err(refuse());
            }
            limit.min(PAGE_SIZE_MAX as u64) as usize
        }
    };
    let cursor = match query.get("cursor")? {
        None => None,
        Some("") => return Err(Problem::validation("cursor must not be empty")),
        Some(text) if text.len() > CURSOR_LENGTH_MAX => {
            return Err(Problem::validation("cursor is not valid for this listing"))
        }
        Some(text) => Some(text.to_owned()),
    };
    Ok(PageRequest { limit, cursor })
}

/// Only the user itself, or a `service` or `admin` token, may read private data of `user_id`.
fn authorize_private(
    state: &QueryState,
    headers: &HeaderMap,
    user_id: &UserId,
    what: &str,
) -> Result<(), Problem> {
    let actor = state.verifier.authenticate(headers)?;
    match actor.role {
        Role::Admin | Role::Service => Ok(()),
        Role::User if &actor.user_id == user_id => Ok(()),
        Role::User => Err(Problem::forbidden(format!(
            "a user token may only read its own {what}: `{user_id}` is not `{}`",
            actor.user_id
        ))),
    }
}

fn read_failed(error: ReadError) -> Problem {
    match error {
        ReadError::BadCursor => Problem::validation("cursor is not valid for this listing"),
        ReadError::Backend(detail) => {
            tracing::error!(%detail, "read-model storage failed");
            Problem::internal("the read models could not be read; retry later")
        }
    }
}

/// Waits until the read models cover `after`, polling, within the configured bound.
async fn wait_for(state: &QueryState, after: Option<&After>) -> Result<(), Problem> {
    let Some(after) = after else {
        return Ok(());
    };
    if after.position == ReadPosition::default() {
        return Ok(());
    }
    // A position no command can have returned (a shard the ledger does not
    // have, or beyond the head of its shard's log) would only hold the
    // request until the bound: refused at once.
    if let Some(shard_count) = state.settings.shard_count {
        let shards = after
            .position
            .positions
            .iter()
            .map(|part| part.shard)
            .chain(
                after
                    .position
                    .deliveries
                    .iter()
                    .flat_map(|mark| [mark.from, mark.to]),
            );
        for shard in shards {
            if shard.0 >= shard_count {
                return Err(Problem::malformed_request(format!(
                    "after names shard {}, but the ledger has {shard_count} shards: pass a \
                     position returned by the command api",
                    shard.0
                )));
            }
        }
    }
    if !state
        .read_models
        .covers(&after.position)
        .await
        .map_err(read_failed)?
    {
        if let Some(beyond) = state
            .read_models
            .beyond_head(&after.position)
            .await
            .map_err(read_failed)?
        {
            return Err(Problem::malformed_request(format!(
                "after names {}, beyond the head of shard {}'s log (sequence {}): pass a \
                 position returned by the command api",
                beyond.part, beyond.shard, beyond.head
            )));
        }
    }
    let started = Instant::now();
    let deadline = started + state.settings.projection_wait_max;
    loop {
        if state
            .read_models
            .covers(&after.position)
            .await
            .map_err(read_failed)?
        {
            crate::metrics::record_wait(started.elapsed(), true);
            return Ok(());
        }
        let now = Instant::now();
        if now >= deadline {
            crate::metrics::record_wait(started.elapsed(), false);
            crate::metrics::record_projection_lagging();
            return Err(Problem::projection_lagging(format!(
                "the read models have not reached position {} within {} ms; retry",
                after.token,
                state.settings.projection_wait_max.as_millis()
            )));
        }
        tokio::time::sleep(state.settings.projection_poll_interval.min(deadline - now)).await;
    }
}

fn optional_timestamp(at_ms: Option<u64>) -> Value {
    at_ms
        .map(|at_ms| Value::String(format_timestamp(at_ms)))
        .unwrap_or(Value::Null)
}

fn respond(body: Value) -> Answer {
    Ok(Json(body).into_response())
}

// ---------------------------------------------------------------- users

pub(crate) async fn balance(
    State(state): State<QueryState>,
    PathSegment(segment): PathSegment,
    headers: HeaderMap,
    query: QueryParameters,
) -> Answer {
    let user_id = parse_id::<UserId>("user_id", &segment)?;
    let after = parse_after(&query)?;
    let as_of = parse_instant(&query, "as_of")?;
    authorize_private(&state, &headers, &user_id, "balance")?;
    wait_for(&state, after.as_ref()).await?;
    let position = answered_position(after.as_ref());
    if let Some(as_of_ms) = as_of {
        // Everything committed at or before `as_of`.
        let history = history(&state, &user_id).await?;
        let sum = |account: &str| -> i64 {
            history
                .iter()
                .filter(|entry| entry.account == account && entry.at_ms <= as_of_ms)
                .map(|entry| entry.amount)
                .sum()
        };
        return respond(json!({
            "user_id": user_id.as_str(),
            "balance": sum(ACCOUNT_WALLET),
            "pending": sum(ACCOUNT_PENDING),
            "as_of": format_timestamp(as_of_ms),
            "position": position,
        }));
    }
    let view = state
        .read_models
        .balance(user_id.as_str())
        .await
        .map_err(read_failed)?;
    Ok(Json(BalanceAnswer {
        balance: view.balance,
        pending: view.pending,
        position: &position,
        user_id: &view.user_id,
    })
    .into_response())
}

/// `GET /v1/users/{id}/balance`'s answer (without `as_of`), written straight
/// from the view like [`ItemAnswer`]: fields in alphabetical order, the
/// order a `json!` map writes them, so the bytes are the same (tested).
#[derive(serde::Serialize)]
struct BalanceAnswer<'a> {
    balance: i64,
    pending: i64,
    position: &'a str,
    user_id: &'a str,
}

/// `GET /v1/users/{id}/inventory`'s answer, written straight from the page
/// like [`ItemAnswer`] (fields in alphabetical order, tested against the map).
#[derive(serde::Serialize)]
struct InventoryAnswer<'a> {
    items: Vec<InventoryAnswerEntry<'a>>,
    next_cursor: Option<&'a str>,
}

/// One entry of an [`InventoryAnswer`].
#[derive(serde::Serialize)]
struct InventoryAnswerEntry<'a> {
    acquired_at: String,
    item_id: &'a str,
    purchase_id: &'a str,
    serial: Option<u32>,
}

impl<'a> InventoryAnswer<'a> {
    fn of(page: &'a projectors::Page<projectors::InventoryEntry>) -> Self {
        Self {
            items: page
                .entries
                .iter()
                .map(|entry| InventoryAnswerEntry {
                    acquired_at: format_timestamp(entry.acquired_at_ms),
                    item_id: &entry.item_id,
                    purchase_id: &entry.purchase_id,
                    serial: entry.serial,
                })
                .collect(),
            next_cursor: page.next_cursor.as_deref(),
        }
    }
}

pub(crate) async fn inventory(
    State(state): State<QueryState>,
    PathSegment(segment): PathSegment,
    headers: HeaderMap,
    query: QueryParameters,
) -> Answer {
    let user_id = parse_id::<UserId>("user_id", &segment)?;
    let after = parse_after(&query)?;
    let page = parse_page(&query)?;
    authorize_private(&state, &headers, &user_id, "inventory")?;
    wait_for(&state, after.as_ref()).await?;
    let found = state
        .read_models
        .inventory(user_id.as_str(), page.limit, page.cursor.as_deref())
        .await
        .map_err(read_failed)?;
    Ok(Json(InventoryAnswer::of(&found)).into_response())
}

pub(crate) async fn transactions(
    State(state): State<QueryState>,
    PathSegment(segment): PathSegment,
    headers: HeaderMap,
    query: QueryParameters,
) -> Answer {
    let user_id = parse_id::<UserId>("user_id", &segment)?;
    let after = parse_after(&query)?;
    let page = parse_page(&query)?;
    authorize_private(&state, &headers, &user_id, "transactions")?;
    wait_for(&state, after.as_ref()).await?;
    let found = state
        .read_models
        .transactions(user_id.as_str(), page.limit, page.cursor.as_deref())
        .await
        .map_err(read_failed)?;
    let entries: Vec<Value> = found
        .entries
        .into_iter()
        .map(|entry| {
            json!({
                "position": entry.position,
                "kind": entry.kind,
                "account": entry.account,
                "amount": entry.amount,
                "reference": entry.reference,
                "at": format_timestamp(entry.at_ms),
            })
        })
        .collect();
    respond(json!({ "entries": entries, "next_cursor": found.next_cursor }))
}

/// The account of a wallet movement in the read models.
const ACCOUNT_WALLET: &str = "wallet";
/// The account of an escrow (pending earnings) movement.
const ACCOUNT_PENDING: &str = "pending";

/// Most movements a statement or an `as_of` balance reads: both sum a
/// user's history from its start.
pub const STATEMENT_ENTRIES_MAX: usize = 100_000;

/// An optional RFC 3339 instant in `name`, as milliseconds since the epoch.
fn parse_instant(query: &QueryParameters, name: &'static str) -> Result<Option<u64>, Problem> {
    query
        .get(name)?
        .map(|text| validate::timestamp(name, &Value::String(text.to_owned())))
        .transpose()
}

/// Every wallet and escrow movement of `user_id`, oldest first (the user's
/// shard's log order), at most [`STATEMENT_ENTRIES_MAX`].
async fn history(state: &QueryState, user_id: &UserId) -> Result<Vec<TransactionEntry>, Problem> {
    let mut entries: Vec<TransactionEntry> = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = state
            .read_models
            .transactions(user_id.as_str(), PAGE_SIZE_MAX, cursor.as_deref())
            .await
            .map_err(read_failed)?;
        entries.extend(page.entries);
        if entries.len() > STATEMENT_ENTRIES_MAX {
            return Err(Problem::validation(format!(
                "the history of {user_id} holds more than {STATEMENT_ENTRIES_MAX} movements; \
                 statements and as_of balances of such histories are not served"
            )));
        }
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    // Every movement of one user is an event of the user's shard, so the
    // sequence in `<shard>.<sequence>` orders them as the log does.
    entries.sort_by_key(|entry| {
        let sequence = entry
            .position
            .split_once('.')
            .and_then(|(_, sequence)| sequence.parse::<u64>().ok())
            .unwrap_or(0);
        (sequence, entry.account == ACCOUNT_WALLET)
    });
    Ok(entries)
}

/// `GET /v1/users/{id}/statement?from=&to=&account=`: the opening balance at
/// `from`, every movement in `[from, to)` with the balance after it, and the
/// closing balance, of the wallet (default) or of the escrowed earnings
/// (`account=pending`).
pub(crate) async fn statement(
    State(state): State<QueryState>,
    PathSegment(segment): PathSegment,
    headers: HeaderMap,
    query: QueryParameters,
) -> Answer {
    let user_id = parse_id::<UserId>("user_id", &segment)?;
    let after = parse_after(&query)?;
    let from_ms = parse_instant(&query, "from")?;
    let to_ms = parse_instant(&query, "to")?;
    if let (Some(from_ms), Some(to_ms)) = (from_ms, to_ms) {
        if to_ms < from_ms {
            return Err(Problem::validation("to must not be before from"));
        }
    }
    let account = match query.get("account")? {
        None | Some(ACCOUNT_WALLET) => ACCOUNT_WALLET,
        Some(ACCOUNT_PENDING) => ACCOUNT_PENDING,
        Some(_) => return Err(Problem::validation("account must be wallet or pending")),
    };
    authorize_private(&state, &headers, &user_id, "statement")?;
    wait_for(&state, after.as_ref()).await?;
    let history = history(&state, &user_id).await?;
    let from_ms = from_ms.unwrap_or(0);
    let mut opening: i64 = 0;
    let mut running: i64 = 0;
    let mut entries: Vec<Value> = Vec::new();
    for entry in history.iter().filter(|entry| entry.account == account) {
        if to_ms.is_some_and(|to_ms| entry.at_ms >= to_ms) {
            continue;
        }
        running += entry.amount;
        if entry.at_ms < from_ms {
            opening = running;
            continue;
        }
        entries.push(json!({
            "position": entry.position,
            "kind": entry.kind,
            "amount": entry.amount,
            "balance_after": running,
            "reference": entry.reference,
            "at": format_timestamp(entry.at_ms),
        }));
    }
    let position = answered_position(after.as_ref());
    respond(json!({
        "user_id": user_id.as_str(),
        "account": account,
        "from": format_timestamp(from_ms),
        "to": to_ms.map(format_timestamp),
        "opening_balance": opening,
        "entries": entries,
        "closing_balance": running,
        "position": position,
    }))
}

/// The steps of a purchase in the order its saga takes them.
const PURCHASE_STEP_ORDER: [&str; 15] = [
    "accepted",
    "reserved",
    "paid",
    "granted",
    "reservation_released",
    "refused",
    "completed",
    "settled",
    "seller_paid",
    "escrow_frozen",
    "serial_revoked",
    "escrow_unfrozen",
    "escrow_reversed",
    "refunded",
    "released",
];

/// `GET /v1/purchases/{id}`: the purchase's story across shards, in order.
pub(crate) async fn purchase(
    State(state): State<QueryState>,
    PathSegment(segment): PathSegment,
    headers: HeaderMap,
    query: QueryParameters,
) -> Answer {
    let purchase_id = parse_id::<PurchaseId>("purchase_id", &segment)?;
    let after = parse_after(&query)?;
    let actor = state.verifier.authenticate(&headers)?;
    wait_for(&state, after.as_ref()).await?;
    let mut steps = state
        .read_models
        .purchase_steps(purchase_id.as_str())
        .await
        .map_err(read_failed)?;
    let buyer_id = steps
        .iter()
        .find(|step| step.step == "accepted" || step.step == "paid")
        .map(|step| step.user_id.clone());
    if steps.is_empty() {
        return Err(Problem::not_found(format!(
            "purchase {purchase_id} was never seen"
        )));
    }
    if let Role::User = actor.role {
        if buyer_id.as_deref() != Some(actor.user_id.as_str()) {
            return Err(Problem::forbidden(format!(
                "a user token may only read its own purchases: `{purchase_id}` is not `{}`'s",
                actor.user_id
            )));
        }
    }
    // Shards log independently: order by time, then (within a millisecond)
    // by the order the saga takes its steps, then by position.
    let order = |position: &str| -> (u64, u64) {
        let (shard, sequence) = position.split_once('.').unwrap_or(("0", "0"));
        (shard.parse().unwrap_or(0), sequence.parse().unwrap_or(0))
    };
    let rank = |step: &str| {
        PURCHASE_STEP_ORDER
            .iter()
            .position(|known| *known == step)
            .unwrap_or(PURCHASE_STEP_ORDER.len())
    };
    steps.sort_by(|a, b| {
        (a.at_ms, rank(&a.step), order(&a.position)).cmp(&(
            b.at_ms,
            rank(&b.step),
            order(&b.position),
        ))
    });
    let has = |name: &str| steps.iter().any(|step| step.step == name);
    let status = if has("refunded") {
        "refunded"
    } else if has("completed") {
        "completed"
    } else if has("refused") {
        "refused"
    } else {
        "in_progress"
    };
    let rendered: Vec<Value> = steps
        .iter()
        .map(|step| {
            let mut entry = json!({
                "position": step.position,
                "step": step.step,
                "at": format_timestamp(step.at_ms),
            });
            if !step.user_id.is_empty() {
                entry["user_id"] = json!(step.user_id);
            }
            if !step.subject.is_empty() {
                entry["subject"] = json!(step.subject);
            }
            if let Some(serial) = step.serial {
                entry["serial"] = json!(serial);
            }
            if let Some(amount) = step.amount {
                entry["amount"] = json!(amount);
            }
            if !step.detail.is_empty() {
                entry["detail"] = json!(step.detail);
            }
            entry
        })
        .collect();
    let position = answered_position(after.as_ref());
    respond(json!({
        "purchase_id": purchase_id.as_str(),
        "buyer_id": buyer_id,
        "status": status,
        "steps": rendered,
        "position": position,
    }))
}

pub(crate) async fn earnings(
    State(state): State<QueryState>,
    PathSegment(segment): PathSegment,
    headers: HeaderMap,
    query: QueryParameters,
) -> Answer {
    let creator_id = parse_id::<UserId>("creator_id", &segment)?;
    let after = parse_after(&query)?;
    authorize_private(&state, &headers, &creator_id, "earnings")?;
    wait_for(&state, after.as_ref()).await?;
    let view = state
        .read_models
        .earnings(creator_id.as_str())
        .await
        .map_err(read_failed)?;
    respond(json!({
        "creator_id": view.creator_id,
        "pending": view.pending,
        "released": view.released,
        "lifetime": view.lifetime,
        "sales_count": view.sales_count,
    }))
}

/// `GET /v1/creators/{id}/sales?from=&to=`: the creator's sales whose share
/// entered escrow in `[from, to)`, oldest first, a page at a time, each
/// with its escrow's state (`held`, `frozen`, `released`, `refunded`) and
/// release date.
pub(crate) async fn creator_sales(
    State(state): State<QueryState>,
    PathSegment(segment): PathSegment,
    headers: HeaderMap,
    query: QueryParameters,
) -> Answer {
    let creator_id = parse_id::<UserId>("creator_id", &segment)?;
    let after = parse_after(&query)?;
    let from_ms = parse_instant(&query, "from")?;
    let to_ms = parse_instant(&query, "to")?;
    if let (Some(from_ms), Some(to_ms)) = (from_ms, to_ms) {
        if to_ms < from_ms {
            return Err(Problem::validation("to must not be before from"));
        }
    }
    let page = parse_page(&query)?;
    authorize_private(&state, &headers, &creator_id, "sales")?;
    wait_for(&state, after.as_ref()).await?;
    let from_ms = from_ms.unwrap_or(0);
    let found = state
        .read_models
        .creator_sales(
            creator_id.as_str(),
            SalesRange {
                from_ms,
                to_ms,
                limit: page.limit,
                cursor: page.cursor.as_deref(),
            },
        )
        .await
        .map_err(read_failed)?;
    let sales: Vec<Value> = found
        .entries
        .into_iter()
        .map(|sale| {
            json!({
                "purchase_id": sale.purchase_id,
                "sold_at": format_timestamp(sale.sold_at_ms),
                "resale": sale.resale,
                "cleared": sale.cleared,
                "creator_share": sale.creator_share,
                "platform_fee": sale.platform_fee,
                "fee_policy_version": sale.policy_version,
                "escrow_status": sale.status,
                "release_at": format_timestamp(sale.release_at_ms),
                "escrow_settled_at": optional_timestamp(sale.settled_at_ms),
                "position": sale.position,
            })
        })
        .collect();
    respond(json!({
        "creator_id": creator_id.as_str(),
        "from": format_timestamp(from_ms),
        "to": to_ms.map(format_timestamp),
        "sales": sales,
        "next_cursor": found.next_cursor,
        "position": answered_position(after.as_ref()),
    }))
}

// ---------------------------------------------------------------- catalogue (public)

fn item_not_found(item_id: &ItemId) -> Problem {
    Problem::not_found(format!("item `{item_id}` does not exist"))
}

pub(crate) async fn item(
    State(state): State<QueryState>,
    PathSegment(segment): PathSegment,
    query: QueryParameters,
) -> Answer {
    let item_id = parse_id::<ItemId>("item_id", &segment)?;
    let after = parse_after(&query)?;
    wait_for(&state, after.as_ref()).await?;
    let read = state.read_models.item(item_id.as_str());
    let view = match (&after, &state.recent_items) {
        (None, Some(recent)) => recent.item(item_id.as_str(), read).await,
        _ => read.await,
    }
    .map_err(read_failed)?
    .ok_or_else(|| item_not_found(&item_id))?;
    Ok(Json(ItemAnswer::of(&view)).into_response())
}

/// `GET /v1/items/{id}`'s answer, written straight from the view: the
/// storefront's most frequent read, where building a `json!` map (a key
/// and a node allocated per field) cost more than the rest of the read.
/// Fields in alphabetical order, as every answer built as a `json!` map is
/// written, so the bytes are the same (tested against the map).
#[derive(serde::Serialize)]
struct ItemAnswer<'a> {
    creator_id: &'a str,
    ends_at: Option<String>,
    item_id: &'a str,
    kind: &'a str,
    limited: bool,
    lowest_resale_price: Option<i64>,
    max_per_user: Option<u32>,
    name: &'a str,
    on_sale: bool,
    price: i64,
    recent_average_price: Option<i64>,
    regional_prices: &'a std::collections::BTreeMap<String, i64>,
    remaining: Option<u64>,
    resellable: bool,
    sales_count: u64,
    sold: u64,
    starts_at: Option<String>,
    supply: Option<u32>,
}

impl<'a> ItemAnswer<'a> {
    fn of(view: &'a projectors::ItemView) -> Self {
        Self {
            creator_id: &view.creator_id,
            ends_at: view.ends_at_ms.map(format_timestamp),
            item_id: &view.item_id,
            kind: &view.kind,
            limited: view.limited,
            lowest_resale_price: view.lowest_resale_price,
            max_per_user: view.max_per_user,
            name: &view.name,
            on_sale: view.on_sale,
            price: view.price,
            recent_average_price: view.recent_average_price,
            regional_prices: &view.regional_prices,
            remaining: view.remaining,
            resellable: view.resellable,
            sales_count: view.sales_count,
            sold: view.sold,
            starts_at: view.starts_at_ms.map(format_timestamp),
            supply: view.supply,
        }
    }
}

/// `GET /v1/items/{id}/price?user_id=&region=`: the price a user sees (the
/// one a purchase's `expected_price` must equal) and the rule that sets
/// it: the item's price in the user's region, else its base price.
pub(crate) async fn item_price(
    State(state): State<QueryState>,
    PathSegment(segment): PathSegment,
    query: QueryParameters,
) -> Answer {
    let item_id = parse_id::<ItemId>("item_id", &segment)?;
    let user_id = query
        .get("user_id")?
        .map(|user| parse_id::<UserId>("user_id", user))
        .transpose()?;
    let region = query
        .get("region")?
        .map(|code| {
            ledger_core::Region::parse(code.to_owned())
                .map_err(|detail| Problem::validation(format!("region: {detail}")))
        })
        .transpose()?;
    let after = parse_after(&query)?;
    wait_for(&state, after.as_ref()).await?;
    let view = state
        .read_models
        .item(item_id.as_str())
        .await
        .map_err(read_failed)?
        .ok_or_else(|| item_not_found(&item_id))?;
    let mut regional = std::collections::BTreeMap::new();
    for (code, price) in &view.regional_prices {
        let Ok(region) = ledger_core::Region::parse(code.clone()) else {
            tracing::error!(%code, item = %item_id, "a stored regional price names an invalid region");
            return Err(Problem::internal(
                "a stored regional price names an invalid region",
            ));
        };
        regional.insert(region, *price);
    }
    // The same rule the item's shard applies to a purchase.
    let now_ms = ledger_http::validate::now_ms();
    let test = match &view.price_test {
        None => None,
        Some(test) => Some(ledger_core::pricing::RunningTest {
            test_id: parse_stored_id::<ledger_core::PriceTestId>(&test.test_id)?,
            arms: test.arms.clone(),
            ends_at_ms: test.ends_at_ms,
        }),
    };
    let (price, rule) = ledger_core::ItemPricing { regional, test }.price_for(
        view.price,
        region.as_ref(),
        user_id.as_ref(),
        now_ms,
    );
    let (test_id, arm) = match &rule {
        ledger_core::PriceRule::TestArm { test_id, arm } => (Some(test_id.to_string()), Some(*arm)),
        _ => (None, None),
    };
    respond(json!({
        "item_id": view.item_id,
        "user_id": user_id,
        "region": region,
        "price": price,
        "rule": rule.name(),
        "test_id": test_id,
        "arm": arm,
        "base_price": view.price,
        "on_sale": view.on_sale,
    }))
}

/// An id the read models stored (a corrupt one is the server's fault).
fn parse_stored_id<T: TryFrom<String, Error = ledger_core::IdError>>(
    stored: &str,
) -> Result<T, Problem> {
    T::try_from(stored.to_string()).map_err(|error| {
        tracing::error!(%stored, %error, "a stored id is invalid");
        Problem::internal("a stored id is invalid")
    })
}

/// `GET /v1/takedowns/{item_id}`: what the takedown of an item did so far
/// (service and admin tokens: moderation and support).
pub(crate) async fn takedown(
    State(state): State<QueryState>,
    PathSegment(segment): PathSegment,
    headers: HeaderMap,
    query: QueryParameters,
) -> Answer {
    let item_id = parse_id::<ledger_core::ItemId>("item_id", &segment)?;
    let after = parse_after(&query)?;
    // The purchases left, paged; a page without `limit` lists 1,000, as the
    // list did before it was paged.
    let page = parse_page_or(&query, projectors::TAKEDOWN_LEFT_LISTED_MAX)?;
    let actor = state.verifier.authenticate(&headers)?;
    if let Role::User = actor.role {
        return Err(Problem::forbidden(
            "takedowns are read with a service or admin token",
        ));
    }
    wait_for(&state, after.as_ref()).await?;
    let view = state
        .read_models
        .takedown(item_id.as_str(), page.limit, page.cursor.as_deref())
        .await
        .map_err(read_failed)?
        .ok_or_else(|| Problem::not_found(format!("item {item_id} was never taken down")))?;
    let left: Vec<Value> = view
        .left
        .iter()
        .map(|left| json!({"purchase_id": left.purchase_id, "reason": left.reason}))
        .collect();
    respond(json!({
            "item_id": view.item_id,
            "status": view.status,
            "listings_ended": view.listings_ended,
            "shards": {"total": view.shard_count, "reported": view.shards_reported},
            "refunded": {"count": view.refunded, "amount": view.refunded_amount},
            "already_refunded": view.already_refunded,
            "left": {
                "count": view.left_count,
                "purchases": left,
                "next_cursor": view.left_next_cursor,
            },
            "started_at": format_timestamp(view.started_at_ms),
            "updated_at": format_timestamp(view.updated_at_ms),
    }))
}

/// `GET /v1/price-tests/{id}`: a price test with, per arm, its exposures,
/// purchases, conversion, revenue and revenue per thousand exposures with a
/// 95 % confidence interval, and the arm leading now.
pub(crate) async fn price_test(
    State(state): State<QueryState>,
    PathSegment(segment): PathSegment,
    query: QueryParameters,
) -> Answer {
    let test_id = parse_id::<ledger_core::PriceTestId>("test_id", &segment)?;
    let after = parse_after(&query)?;
    wait_for(&state, after.as_ref()).await?;
    let view = state
        .read_models
        .price_test(test_id.as_str())
        .await
        .map_err(read_failed)?
        .ok_or_else(|| Problem::not_found(format!("price test {test_id} does not exist")))?;
    let counts: Vec<ledger_core::pricing::ArmCounts> = view
        .arms
        .iter()
        .map(|arm| ledger_core::pricing::ArmCounts {
            exposures: arm.exposures,
            purchases: arm.purchases,
            revenue: arm.revenue,
        })
        .collect();
    let arms: Vec<Value> = view
        .arms
        .iter()
        .enumerate()
        .map(|(index, arm)| {
            let interval = ledger_core::pricing::revenue_per_thousand_exposures(
                arm.price,
                arm.exposures,
                arm.purchases,
                arm.revenue,
            );
            json!({
                "arm": index,
                "price": arm.price,
                "exposures": arm.exposures,
                "purchases": arm.purchases,
                "conversion_basis_points": (arm.exposures > 0)
                    .then(|| (u128::from(arm.purchases) * 10_000 / u128::from(arm.exposures)) as u64),
                "revenue": arm.revenue,
                "revenue_per_thousand_exposures": interval.map(|(estimate, _, _)| estimate),
                "revenue_per_thousand_exposures_low": interval.map(|(_, low, _)| low),
                "revenue_per_thousand_exposures_high": interval.map(|(_, _, high)| high),
            })
        })
        .collect();
    respond(json!({
        "test_id": view.test_id,
        "item_id": view.item_id,
        "creator_id": view.creator_id,
        "status": view.status,
        "ends_at": format_timestamp(view.ends_at_ms),
        "apply_winner": view.apply_winner,
        "leading_arm": ledger_core::pricing::leading_arm(&counts),
        "winner": view.winner,
        "applied_price": view.applied_price,
        "arms": arms,
    }))
}

/// `GET /v1/price-floors`: every kind with the floor in force now (null
/// without one) and every version of its floor, oldest first.
pub(crate) async fn price_floors(
    State(state): State<QueryState>,
    query: QueryParameters,
) -> Answer {
    let after = parse_after(&query)?;
    wait_for(&state, after.as_ref()).await?;
    let views = state
        .read_models
        .price_floors()
        .await
        .map_err(read_failed)?;
    let now_ms = ledger_http::validate::now_ms();
    let mut floors = ledger_core::PriceFloors::default();
    for view in &views {
        let Some(kind) = ledger_core::ItemKind::parse(&view.kind) else {
            tracing::error!(kind = %view.kind, "a stored price floor names an unknown kind");
            return Err(Problem::internal(
                "a stored price floor names an unknown kind",
            ));
        };
        floors.insert(
            kind,
            view.version,
            ledger_core::pricing::FloorVersion {
                price: view.price,
                effective_from_ms: view.effective_from_ms,
            },
        );
    }
    let version_json = |version: u32, floor: &ledger_core::pricing::FloorVersion| {
        json!({
            "version": version,
            "price": floor.price,
            "effective_from": ledger_http::validate::format_timestamp(floor.effective_from_ms),
        })
    };
    let kinds: Vec<Value> = ledger_core::ItemKind::all()
        .map(|kind| {
            let versions: Vec<Value> = floors
                .kinds
                .get(&kind)
                .into_iter()
                .flatten()
                .map(|(version, floor)| version_json(*version, floor))
                .collect();
            json!({
                "kind": kind,
                "floor": floors
                    .in_force(kind, now_ms)
                    .map(|(version, floor)| version_json(version, &floor)),
                "versions": versions,
            })
        })
        .collect();
    respond(json!({
        "as_of": ledger_http::validate::format_timestamp(now_ms),
        "kinds": kinds,
    }))
}

/// The common start of a paged read under an item: parse, wait for
/// `?after=`, and 404 for an unknown item.
async fn item_page_request(
    state: &QueryState,
    segment: &str,
    query: &QueryParameters,
) -> Result<(ItemId, PageRequest), Problem> {
    let item_id = parse_id::<ItemId>("item_id", segment)?;
    let after = parse_after(query)?;
    let page = parse_page(query)?;
    wait_for(state, after.as_ref()).await?;
    if state
        .read_models
        .item(item_id.as_str())
        .await
        .map_err(read_failed)?
        .is_none()
    {
        return Err(item_not_found(&item_id));
    }
    Ok((item_id, page))
}

pub(crate) async fn resale_listings(
    State(state): State<QueryState>,
    PathSegment(segment): PathSegment,
    query: QueryParameters,
) -> Answer {
    let (item_id, page) = item_page_request(&state, &segment, &query).await?;
    let found = state
        .read_models
        .resale_listings(item_id.as_str(), page.limit, page.cursor.as_deref())
        .await
        .map_err(read_failed)?;
    let listings: Vec<Value> = found
        .entries
        .into_iter()
        .map(|listing| {
            json!({
                "listing_id": listing.listing_id,
                "item_id": listing.item_id,
                "serial": listing.serial,
                "seller_id": listing.seller_id,
                "price": listing.price,
            })
        })
        .collect();
    respond(json!({ "listings": listings, "next_cursor": found.next_cursor }))
}

pub(crate) async fn owners(
    State(state): State<QueryState>,
    PathSegment(segment): PathSegment,
    query: QueryParameters,
) -> Answer {
    let (item_id, page) = item_page_request(&state, &segment, &query).await?;
    let found = state
        .read_models
        .owners(item_id.as_str(), page.limit, page.cursor.as_deref())
        .await
        .map_err(read_failed)?;
    let owners: Vec<Value> = found
        .entries
        .into_iter()
        .map(|owner| json!({ "serial": owner.serial, "user_id": owner.user_id }))
        .collect();
    respond(json!({ "owners": owners, "next_cursor": found.next_cursor }))
}

/// The last day a history may end at (exclusive): 9999-12-31, so that the
/// end of its last bucket is a year RFC 3339 can write.
const HISTORY_LAST_DAY: u64 = 253_402_300_800_000 / DAY_MS - 1;

/// `GET /v1/items/{id}/history?from=&to=&bucket=day`: an item's sales by
/// UTC day, for creators choosing a price. One bucket per UTC day that
/// meets `[from, to)` (days without sales zero-filled), at most
/// [`HISTORY_DAYS_MAX`]; `to` defaults to now, `from` to the
/// [`HISTORY_DAYS_DEFAULT`] days up to `to`'s. Definitions in
/// `projectors::history`.
pub(crate) async fn item_history(
    State(state): State<QueryState>,
    PathSegment(segment): PathSegment,
    query: QueryParameters,
) -> Answer {
    let item_id = parse_id::<ItemId>("item_id", &segment)?;
    let after = parse_after(&query)?;
    // The range and the bucket are refused as a malformed query (400).
    let range_instant = |name: &'static str| -> Result<Option<u64>, Problem> {
        query
            .get(name)?
            .map(|text| {
                validate::timestamp(name, &Value::String(text.to_owned())).map_err(|_| {
                    Problem::malformed_request(format!(
                        "{name} must be an rfc 3339 timestamp in utc, e.g. 2030-01-01T00:00:00Z"
                    ))
                })
            })
            .transpose()
    };
    let from_ms = range_instant("from")?;
    let to_ms = range_instant("to")?;
    match query.get("bucket")? {
        None | Some("day") => {}
        Some(other) => {
            return Err(Problem::malformed_request(format!(
                "bucket must be day (the only bucket served), not `{other}`"
            )))
        }
    }
    let to_ms = to_ms.unwrap_or_else(validate::now_ms);
    if from_ms.is_some_and(|from_ms| from_ms >= to_ms) {
        return Err(Problem::malformed_request(
            "from must be before to (to defaults to now)",
        ));
    }
    let to_day = day_ceiling(to_ms);
    // The answer names the end of the last bucket, which RFC 3339 must be
    // able to write (years up to 9999).
    if to_day > HISTORY_LAST_DAY {
        return Err(Problem::malformed_request(
            "to must not be after 9999-12-31T00:00:00Z",
        ));
    }
    let from_day = from_ms.map_or_else(|| to_day.saturating_sub(HISTORY_DAYS_DEFAULT), day_of);
    let days = to_day - from_day;
    if days > HISTORY_DAYS_MAX {
        return Err(Problem::malformed_request(format!(
            "from and to span {days} days; at most {HISTORY_DAYS_MAX} daily buckets are served per read"
        )));
    }
    wait_for(&state, after.as_ref()).await?;
    let item = state
        .read_models
        .item(item_id.as_str())
        .await
        .map_err(read_failed)?
        .ok_or_else(|| item_not_found(&item_id))?;
    let stored = state
        .read_models
        .item_days(item_id.as_str(), from_day, to_day)
        .await
        .map_err(read_failed)?;
    let buckets: Vec<Value> = history_buckets(from_day, to_day, &stored)
        .into_iter()
        .map(|bucket| {
            let mut entry = json!({
                "start": format_timestamp(bucket.day * DAY_MS),
                "sales_count": bucket.sales_count,
                "primary_sales_count": bucket.primary_sales_count,
                "resale_sales_count": bucket.resale_sales_count,
                "refunded_count": bucket.refunded_count,
                "revenue": bucket.revenue,
                "primary_revenue": bucket.primary_revenue,
                "resale_revenue": bucket.resale_revenue,
                "average_price": bucket.average_price,
            });
            if item.limited {
                entry["recent_average_price"] = json!(bucket.recent_average_price);
                entry["lowest_resale_ask"] = json!(bucket.lowest_resale_ask);
            }
            entry
        })
        .collect();
    respond(json!({
        "item_id": item.item_id,
        "limited": item.limited,
        "bucket": "day",
        "from": format_timestamp(from_day * DAY_MS),
        "to": format_timestamp(to_day * DAY_MS),
        "buckets": buckets,
        "position": answered_position(after.as_ref()),
    }))
}

pub(crate) async fn bundle(
    State(state): State<QueryState>,
    PathSegment(segment): PathSegment,
    query: QueryParameters,
) -> Answer {
    let bundle_id = parse_id::<BundleId>("bundle_id", &segment)?;
    let after = parse_after(&query)?;
    wait_for(&state, after.as_ref()).await?;
    let view = state
        .read_models
        .bundle(bundle_id.as_str())
        .await
        .map_err(read_failed)?
        .ok_or_else(|| Problem::not_found(format!("bundle `{bundle_id}` does not exist")))?;
    respond(json!({
        "bundle_id": view.bundle_id,
        "creator_id": view.creator_id,
        "name": view.name,
        "item_ids": view.item_ids,
        "price": view.price,
    }))
}

#[cfg(test)]
mod typed_answer_tests {
    use super::*;

    /// The map the item's answer was built as before it was typed.
    fn as_map(view: projectors::ItemView) -> Value {
        json!({
            "item_id": view.item_id,
            "creator_id": view.creator_id,
            "name": view.name,
            "price": view.price,
            "on_sale": view.on_sale,
            "limited": view.limited,
            "supply": view.supply,
            "sold": view.sold,
            "remaining": view.remaining,
            "max_per_user": view.max_per_user,
            "sales_count": view.sales_count,
            "recent_average_price": view.recent_average_price,
            "lowest_resale_price": view.lowest_resale_price,
            "starts_at": optional_timestamp(view.starts_at_ms),
            "ends_at": optional_timestamp(view.ends_at_ms),
            "resellable": view.resellable,
            "kind": view.kind,
            "regional_prices": view.regional_prices,
        })
    }

    #[test]
    fn the_typed_item_answer_writes_the_same_bytes_as_the_map() {
        let limited = projectors::ItemView {
            item_id: "golden-crown".to_string(),
            creator_id: "studio".to_string(),
            name: "Golden \"Crown\" ✨".to_string(),
            price: 250,
            on_sale: true,
            limited: true,
            supply: Some(10),
            sold: 3,
            remaining: Some(7),
            max_per_user: Some(2),
            starts_at_ms: Some(1_700_000_000_000),
            ends_at_ms: Some(1_800_000_000_123),
            resellable: true,
            kind: "accessory".to_string(),
            regional_prices: [("BR".to_string(), 200), ("DE".to_string(), 275)].into(),
            price_test: None,
            sales_count: 5,
            recent_average_price: Some(260),
            lowest_resale_price: Some(300),
        };
        let plain = projectors::ItemView {
            supply: None,
            remaining: None,
            max_per_user: None,
            starts_at_ms: None,
            ends_at_ms: None,
            limited: false,
            resellable: false,
            on_sale: false,
            regional_prices: Default::default(),
            recent_average_price: None,
            lowest_resale_price: None,
            ..limited.clone()
        };
        for view in [limited, plain] {
            let typed = serde_json::to_string(&ItemAnswer::of(&view)).expect("the answer writes");
            let map = serde_json::to_string(&as_map(view)).expect("the map writes");
            assert_eq!(typed, map);
        }
    }

    #[test]
    fn the_typed_balance_answer_writes_the_same_bytes_as_the_map() {
        for (user_id, balance, pending, position) in [
            ("alice", 750, 0, "p"),
            ("b\"ob ✨", -0, 1_234_567_890_123, "0.17,3.2"),
        ] {
            let typed = serde_json::to_string(&BalanceAnswer {
                balance,
                pending,
                position,
                user_id,
            })
            .expect("the answer writes");
            let map = serde_json::to_string(&json!({
                "user_id": user_id,
                "balance": balance,
                "pending": pending,
                "position": position,
            }))
            .expect("the map writes");
            assert_eq!(typed, map);
        }
    }

    #[test]
    fn the_typed_inventory_answer_writes_the_same_bytes_as_the_map() {
        let entries = vec![
            projectors::InventoryEntry {
                item_id: "golden-crown".to_string(),
                serial: Some(7),
                purchase_id: "alice-\"crown\"-1".to_string(),
                acquired_at_ms: 1_700_000_000_123,
            },
            projectors::InventoryEntry {
                item_id: "red-cap ✨".to_string(),
                serial: None,
                purchase_id: "alice-cap-1".to_string(),
                acquired_at_ms: 0,
            },
        ];
        for (entries, next_cursor) in [
            (entries.clone(), Some("cursor-2".to_string())),
            (entries, None),
            (Vec::new(), None),
        ] {
            let page = projectors::Page {
                entries,
                next_cursor,
            };
            let typed =
                serde_json::to_string(&InventoryAnswer::of(&page)).expect("the answer writes");
            let items: Vec<Value> = page
                .entries
                .iter()
                .map(|entry| {
                    json!({
                        "item_id": entry.item_id,
                        "serial": entry.serial,
                        "purchase_id": entry.purchase_id,
                        "acquired_at": format_timestamp(entry.acquired_at_ms),
                    })
                })
                .collect();
            let map =
                serde_json::to_string(&json!({ "items": items, "next_cursor": page.next_cursor }))
                    .expect("the map writes");
            assert_eq!(typed, map);
        }
    }
}
