//! The read routes. Checks run in the contract's order: validation
//! (ids, `after`, `limit`, `cursor`), authentication, authorization; then the
//! read waits for the `after` position and reads the read models.

use std::sync::Arc;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use command_api::auth::Verifier;
use command_api::extract::{PathSegment, QueryParameters};
use command_api::problem::Problem;
use command_api::validate::{format_timestamp, parse_id};
use ledger_core::{parse_position, BundleId, ItemId, ReadPosition, Role, UserId};
use projectors::{ReadError, ReadModels, PAGE_SIZE_DEFAULT, PAGE_SIZE_MAX};
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

/// A page request: `limit` (default 100, clamped to 1000) and `cursor`.
struct PageRequest {
    limit: usize,
    cursor: Option<String>,
}

fn parse_page(query: &QueryParameters) -> Result<PageRequest, Problem> {
    let limit = match query.get("limit")? {
        None => PAGE_SIZE_DEFAULT,
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
    let deadline = Instant::now() + state.settings.projection_wait_max;
    loop {
        if state
            .read_models
            .covers(&after.position)
            .await
            .map_err(read_failed)?
        {
            return Ok(());
        }
        let now = Instant::now();
        if now >= deadline {
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
    authorize_private(&state, &headers, &user_id, "balance")?;
    wait_for(&state, after.as_ref()).await?;
    let view = state
        .read_models
        .balance(user_id.as_str())
        .await
        .map_err(read_failed)?;
    let position = after
        .map(|after| after.token)
        .unwrap_or_else(|| "p".to_owned());
    respond(json!({
        "user_id": view.user_id,
        "balance": view.balance,
        "pending": view.pending,
        "position": position,
    }))
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
    let items: Vec<Value> = found
        .entries
        .into_iter()
        .map(|entry| {
            json!({
                "item_id": entry.item_id,
                "serial": entry.serial,
                "purchase_id": entry.purchase_id,
                "acquired_at": format_timestamp(entry.acquired_at_ms),
            })
        })
        .collect();
    respond(json!({ "items": items, "next_cursor": found.next_cursor }))
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
                "amount": entry.amount,
                "reference": entry.reference,
                "at": format_timestamp(entry.at_ms),
            })
        })
        .collect();
    respond(json!({ "entries": entries, "next_cursor": found.next_cursor }))
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
    let view = state
        .read_models
        .item(item_id.as_str())
        .await
        .map_err(read_failed)?
        .ok_or_else(|| item_not_found(&item_id))?;
    respond(json!({
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
