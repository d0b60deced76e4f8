//! The command routes: parse and validate, authenticate, authorize, submit,
//! render. Checks run in the contract's order: validation, authentication,
//! authorization, then the engine.

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use engine::ports::CommandBus;
use ledger_core::pricing::{
    EXPOSURES_PER_BATCH_MAX, REGIONS_PER_ITEM_MAX, TEST_ARMS_MAX, TEST_ARMS_MIN,
};
use ledger_core::{
    format_position, Actor, BundleId, Command, CommandMeta, Completion, GrantId, ItemDefinition,
    ItemId, ListingId, PurchaseId, PurchaseTarget, RefundId, Region, Role, Success, UserId,
    BUNDLE_ITEMS_MAX, SUPPLY_MAX,
};
use ledger_core::{CartLine, CartLinePurchased, CART_LINES_MAX};
use ledger_core::{ExposureBatchId, PriceTestId};
use serde::Deserialize;
use serde_json::{json, Value};

use engine::ports::SubmitError;
use ledger_http::auth::Verifier;
use ledger_http::extract::{fields, JsonObject, NoFields, PathSegment};
use ledger_http::problem::{Problem, CODE_OVERLOADED, CODE_SHUTTING_DOWN, CODE_TIMEOUT};
use ledger_http::validate;

/// What the command handlers share.
#[derive(Clone)]
pub(crate) struct CommandState {
    pub bus: Arc<dyn CommandBus>,
    pub verifier: Arc<Verifier>,
}

type Answer = Result<Response, Problem>;

// ---------------------------------------------------------------- request bodies

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantRequest {
    grant_id: Value,
    user_id: Value,
    amount: Value,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishItemRequest {
    item_id: Value,
    creator_id: Value,
    name: Value,
    price: Value,
    supply: Option<Value>,
    max_per_user: Option<Value>,
    starts_at: Option<Value>,
    ends_at: Option<Value>,
    resellable: Option<Value>,
    kind: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RepriceRequest {
    price: Value,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBundleRequest {
    bundle_id: Value,
    creator_id: Value,
    name: Value,
    item_ids: Value,
    price: Value,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PurchaseRequest {
    purchase_id: Value,
    buyer_id: Value,
    item_id: Option<Value>,
    bundle_id: Option<Value>,
    expected_price: Value,
    region: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CartRequest {
    purchase_id: Value,
    buyer_id: Value,
    lines: Value,
    region: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CartLineRequest {
    item_id: Option<Value>,
    bundle_id: Option<Value>,
    expected_price: Value,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PriceTestRequest {
    test_id: Value,
    item_id: Value,
    arms: Value,
    ends_at: Value,
    apply_winner: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExposuresRequest {
    batch_id: Value,
    counts: Value,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegionalPricesRequest {
    prices: Value,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateListingRequest {
    listing_id: Value,
    seller_id: Value,
    item_id: Value,
    serial: Value,
    price: Value,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResalePurchaseRequest {
    purchase_id: Value,
    buyer_id: Value,
    listing_id: Value,
    expected_price: Value,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PriceFloorRequest {
    kind: Value,
    price: Value,
    effective_from: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RefundRequest {
    refund_id: Value,
    purchase_id: Value,
}

// ---------------------------------------------------------------- validation

fn grant_command(object: JsonObject) -> Result<Command, Problem> {
    let request: GrantRequest = fields(object.0)?;
    Ok(Command::Grant {
        grant_id: validate::id::<GrantId>("grant_id", &request.grant_id)?,
        user_id: validate::id::<UserId>("user_id", &request.user_id)?,
        amount: validate::amount("amount", &request.amount)?,
    })
}

fn publish_item_command(object: JsonObject) -> Result<Command, Problem> {
    let request: PublishItemRequest = fields(object.0)?;
    let item_id = validate::id::<ItemId>("item_id", &request.item_id)?;
    let creator_id = validate::id::<UserId>("creator_id", &request.creator_id)?;
    let name = validate::name("name", &request.name)?;
    let price = validate::amount("price", &request.price)?;
    let supply = request
        .supply
        .as_ref()
        .map(|value| validate::count("supply", value, SUPPLY_MAX))
        .transpose()?;
    let max_per_user = request
        .max_per_user
        .as_ref()
        .map(|value| validate::count("max_per_user", value, u32::MAX))
        .transpose()?;
    let starts_at_ms = request
        .starts_at
        .as_ref()
        .map(|value| validate::timestamp("starts_at", value))
        .transpose()?;
    let ends_at_ms = request
        .ends_at
        .as_ref()
        .map(|value| validate::timestamp("ends_at", value))
        .transpose()?;
    if let (Some(starts), Some(ends)) = (starts_at_ms, ends_at_ms) {
        if starts >= ends {
            return Err(Problem::validation("starts_at must be before ends_at"));
        }
    }
    let resellable = request
        .resellable
        .as_ref()
        .map(|value| validate::boolean("resellable", value))
        .transpose()?
        .unwrap_or(false);
    if resellable && supply.is_none() {
        return Err(Problem::validation(
            "resellable may only be true for a limited item (one with a supply)",
        ));
    }
    let kind = request
        .kind
        .as_ref()
        .map(|value| validate::item_kind("kind", value))
        .transpose()?
        .unwrap_or_default();
    Ok(Command::PublishItem(ItemDefinition {
        item_id,
        creator_id,
        name,
        price,
        supply,
        max_per_user,
        starts_at_ms,
        ends_at_ms,
        resellable,
        kind,
    }))
}

fn price_floor_command(object: JsonObject, now_ms: u64) -> Result<Command, Problem> {
    let request: PriceFloorRequest = fields(object.0)?;
    let kind = validate::item_kind("kind", &request.kind)?;
    let price = validate::amount("price", &request.price)?;
    let effective_from_ms = request
        .effective_from
        .as_ref()
        .map(|value| validate::timestamp("effective_from", value))
        .transpose()?
        .unwrap_or(now_ms);
    Ok(Command::SetPriceFloor {
        kind,
        price,
        effective_from_ms,
    })
}

fn item_path(segment: &PathSegment) -> Result<ItemId, Problem> {
    validate::parse_id::<ItemId>("item_id", &segment.0)
}

fn reprice_command(segment: &PathSegment, object: JsonObject) -> Result<Command, Problem> {
    let item_id = item_path(segment)?;
    let request: RepriceRequest = fields(object.0)?;
    Ok(Command::Reprice {
        item_id,
        price: validate::amount("price", &request.price)?,
    })
}

fn create_bundle_command(object: JsonObject) -> Result<Command, Problem> {
    let request: CreateBundleRequest = fields(object.0)?;
    let bundle_id = validate::id::<BundleId>("bundle_id", &request.bundle_id)?;
    let creator_id = validate::id::<UserId>("creator_id", &request.creator_id)?;
    let name = validate::name("name", &request.name)?;
    let values = bounded_array("item_ids", &request.item_ids, BUNDLE_ITEMS_MAX, "items")?;
    let mut item_ids = Vec::with_capacity(values.len());
    let mut seen = BTreeSet::new();
    for value in values {
        let item_id = validate::id::<ItemId>("item_ids", value)?;
        if !seen.insert(item_id.clone()) {
            return Err(Problem::validation(format!(
                "item_ids must be distinct (`{item_id}` appears more than once)"
            )));
        }
        item_ids.push(item_id);
    }
    let price = validate::amount("price", &request.price)?;
    Ok(Command::CreateBundle {
        bundle_id,
        creator_id,
        name,
        item_ids,
        price,
    })
}

fn purchase_command(object: JsonObject) -> Result<Command, Problem> {
    let request: PurchaseRequest = fields(object.0)?;
    let purchase_id = validate::id::<PurchaseId>("purchase_id", &request.purchase_id)?;
    let buyer_id = validate::id::<UserId>("buyer_id", &request.buyer_id)?;
    let target = match (&request.item_id, &request.bundle_id) {
        (Some(item_id), None) => PurchaseTarget::Item(validate::id::<ItemId>("item_id", item_id)?),
        (None, Some(bundle_id)) => {
            PurchaseTarget::Bundle(validate::id::<BundleId>("bundle_id", bundle_id)?)
        }
        _ => {
            return Err(Problem::validation(
                "exactly one of item_id and bundle_id is required",
            ))
        }
    };
    let expected_price = validate::amount("expected_price", &request.expected_price)?;
    let region = request
        .region
        .as_ref()
        .filter(|value| !value.is_null())
        .map(|value| region("region", value))
        .transpose()?;
    Ok(Command::Purchase {
        purchase_id,
        buyer_id,
        target,
        expected_price,
        region,
    })
}

/// `POST /v1/carts`: 1 to 20 lines, each an item or a bundle at the price
/// the buyer saw, none twice. A refused line is named by its number (from 1).
/// `value` as an array of 1 to `max` elements (`noun` names them in the
/// refusal).
fn bounded_array<'a>(
    field: &str,
    value: &'a Value,
    max: usize,
    noun: &str,
) -> Result<&'a Vec<Value>, Problem> {
    let Value::Array(values) = value else {
        return Err(Problem::validation(format!(
            "{field} must be an array (got {})",
            validate::describe(value)
        )));
    };
    if values.is_empty() || values.len() > max {
        return Err(Problem::validation(format!(
            "{field} must hold 1 to {max} {noun} (got {})",
            values.len()
        )));
    }
    Ok(values)
}

fn cart_command(object: JsonObject) -> Result<Command, Problem> {
    let request: CartRequest = fields(object.0)?;
    let purchase_id = validate::id::<PurchaseId>("purchase_id", &request.purchase_id)?;
    let buyer_id = validate::id::<UserId>("buyer_id", &request.buyer_id)?;
    let values = bounded_array("lines", &request.lines, CART_LINES_MAX, "lines")?;
    let mut lines = Vec::with_capacity(values.len());
    let mut seen = BTreeSet::new();
    for (index, value) in values.iter().enumerate() {
        let number = index + 1;
        let in_line =
            |problem: Problem| Problem::validation(format!("line {number}: {}", problem.detail));
        let Value::Object(object) = value else {
            return Err(Problem::validation(format!(
                "line {number}: a line must be an object (got {})",
                validate::describe(value)
            )));
        };
        let line: CartLineRequest = fields(object.clone()).map_err(in_line)?;
        let target = match (&line.item_id, &line.bundle_id) {
            (Some(item_id), None) => {
                PurchaseTarget::Item(validate::id::<ItemId>("item_id", item_id).map_err(in_line)?)
            }
            (None, Some(bundle_id)) => PurchaseTarget::Bundle(
                validate::id::<BundleId>("bundle_id", bundle_id).map_err(in_line)?,
            ),
            _ => {
                return Err(Problem::validation(format!(
                    "line {number}: exactly one of item_id and bundle_id is required"
                )))
            }
        };
        let expected_price =
            validate::amount("expected_price", &line.expected_price).map_err(in_line)?;
        if !seen.insert(target.clone()) {
            let what = match &target {
                PurchaseTarget::Item(item_id) => format!("item {item_id}"),
                PurchaseTarget::Bundle(bundle_id) => format!("bundle {bundle_id}"),
            };
            return Err(Problem::validation(format!(
                "line {number}: {what} is already in the cart"
            )));
        }
        lines.push(CartLine {
            target,
            expected_price,
        });
    }
    let region = request
        .region
        .as_ref()
        .filter(|value| !value.is_null())
        .map(|value| region("region", value))
        .transpose()?;
    Ok(Command::PurchaseCart {
        purchase_id,
        buyer_id,
        lines,
        region,
    })
}

fn region(field: &'static str, value: &Value) -> Result<Region, Problem> {
    match value {
        Value::String(code) => Region::parse(code.clone())
            .map_err(|detail| Problem::validation(format!("{field}: {detail}"))),
        other => Err(Problem::validation(format!(
            "{field} must be a two-letter region code (got {})",
            validate::describe(other)
        ))),
    }
}

fn price_test_command(object: JsonObject) -> Result<Command, Problem> {
    let request: PriceTestRequest = fields(object.0)?;
    let test_id = validate::id::<PriceTestId>("test_id", &request.test_id)?;
    let item_id = validate::id::<ItemId>("item_id", &request.item_id)?;
    let Value::Array(values) = &request.arms else {
        return Err(Problem::validation(format!(
            "arms must be an array of 2 to 4 prices (got {})",
            validate::describe(&request.arms)
        )));
    };
    if !(TEST_ARMS_MIN..=TEST_ARMS_MAX).contains(&values.len()) {
        return Err(Problem::validation(format!(
            "arms must hold {TEST_ARMS_MIN} to {TEST_ARMS_MAX} prices (got {})",
            values.len()
        )));
    }
    let arms = values
        .iter()
        .map(|value| validate::amount("arms", value))
        .collect::<Result<Vec<_>, _>>()?;
    let ends_at_ms = validate::timestamp("ends_at", &request.ends_at)?;
    let apply_winner = request
        .apply_winner
        .as_ref()
        .map(|value| validate::boolean("apply_winner", value))
        .transpose()?
        .unwrap_or(false);
    Ok(Command::StartPriceTest {
        test_id,
        item_id,
        arms,
        ends_at_ms,
        apply_winner,
    })
}

fn test_path(segment: &PathSegment) -> Result<PriceTestId, Problem> {
    validate::parse_id::<PriceTestId>("test_id", &segment.0)
}

fn exposures_command(segment: &PathSegment, object: JsonObject) -> Result<Command, Problem> {
    let test_id = test_path(segment)?;
    let request: ExposuresRequest = fields(object.0)?;
    let batch_id = validate::id::<ExposureBatchId>("batch_id", &request.batch_id)?;
    let Value::Array(values) = &request.counts else {
        return Err(Problem::validation(format!(
            "counts must be an array of exposures per arm (got {})",
            validate::describe(&request.counts)
        )));
    };
    if !(TEST_ARMS_MIN..=TEST_ARMS_MAX).contains(&values.len()) {
        return Err(Problem::validation(format!(
            "counts must hold one count per arm, {TEST_ARMS_MIN} to {TEST_ARMS_MAX} (got {})",
            values.len()
        )));
    }
    let counts = values
        .iter()
        .map(|value| {
            validate::integer("counts", value, 0, EXPOSURES_PER_BATCH_MAX as i64)
                .map(|count| count as u64)
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Command::RecordExposures {
        test_id,
        batch_id,
        counts,
    })
}

fn regional_prices_command(segment: &PathSegment, object: JsonObject) -> Result<Command, Problem> {
    let item_id = item_path(segment)?;
    let request: RegionalPricesRequest = fields(object.0)?;
    let Value::Object(entries) = &request.prices else {
        return Err(Problem::validation(format!(
            "prices must be an object of region codes to prices (got {})",
            validate::describe(&request.prices)
        )));
    };
    if entries.len() > REGIONS_PER_ITEM_MAX {
        return Err(Problem::validation(format!(
            "prices holds at most {REGIONS_PER_ITEM_MAX} regions (got {})",
            entries.len()
        )));
    }
    let mut prices = Vec::with_capacity(entries.len());
    for (code, price) in entries {
        let region = Region::parse(code.clone())
            .map_err(|detail| Problem::validation(format!("prices: {detail}")))?;
        prices.push((region, validate::amount("prices", price)?));
    }
    Ok(Command::SetRegionalPrices { item_id, prices })
}

fn create_listing_command(object: JsonObject) -> Result<Command, Problem> {
    let request: CreateListingRequest = fields(object.0)?;
    Ok(Command::CreateListing {
        listing_id: validate::id::<ListingId>("listing_id", &request.listing_id)?,
        seller_id: validate::id::<UserId>("seller_id", &request.seller_id)?,
        item_id: validate::id::<ItemId>("item_id", &request.item_id)?,
        serial: validate::count("serial", &request.serial, SUPPLY_MAX)?,
        price: validate::amount("price", &request.price)?,
    })
}

fn resale_purchase_command(object: JsonObject) -> Result<Command, Problem> {
    let request: ResalePurchaseRequest = fields(object.0)?;
    Ok(Command::ResalePurchase {
        purchase_id: validate::id::<PurchaseId>("purchase_id", &request.purchase_id)?,
        buyer_id: validate::id::<UserId>("buyer_id", &request.buyer_id)?,
        listing_id: validate::id::<ListingId>("listing_id", &request.listing_id)?,
        expected_price: validate::amount("expected_price", &request.expected_price)?,
    })
}

fn refund_command(object: JsonObject) -> Result<Command, Problem> {
    let request: RefundRequest = fields(object.0)?;
    Ok(Command::Refund {
        refund_id: validate::id::<RefundId>("refund_id", &request.refund_id)?,
        purchase_id: validate::id::<PurchaseId>("purchase_id", &request.purchase_id)?,
    })
}

// ---------------------------------------------------------------- authorization

/// Who may submit `command`, beyond being authenticated. Ownership of items
/// and listings (reprice, sale toggles, cancellation) is checked by the engine.
fn authorize(actor: &Actor, command: &Command) -> Result<(), Problem> {
    let acting_as = |field: &str, user: &UserId| {
        if actor.may_act_as(user) {
            Ok(())
        } else {
            Err(Problem::forbidden(format!(
                "a user token may only act as its own user: {field} `{user}` is not `{}`",
                actor.user_id
            )))
        }
    };
    let admin_only = |action: &str| {
        if actor.role == Role::Admin {
            Ok(())
        } else {
            Err(Problem::forbidden(format!(
                "only an admin token may {action}"
            )))
        }
    };
    match command {
        Command::Grant { .. } => admin_only("grant currency"),
        Command::Refund { .. } => admin_only("refund a purchase"),
        Command::PublishItem(definition) => acting_as("creator_id", &definition.creator_id),
        Command::CreateBundle { creator_id, .. } => acting_as("creator_id", creator_id),
        Command::Purchase {
            buyer_id, region, ..
        }
        | Command::PurchaseCart {
            buyer_id, region, ..
        } => {
            acting_as("buyer_id", buyer_id)?;
            if region.is_some() && actor.role == Role::User {
                return Err(Problem::forbidden(
                    "a user token may not choose the buyer's region: the purchase flow sets it",
                ));
            }
            Ok(())
        }
        Command::ResalePurchase { buyer_id, .. } => acting_as("buyer_id", buyer_id),
        Command::CreateListing { seller_id, .. } => acting_as("seller_id", seller_id),
        Command::SetPriceFloor { .. } => admin_only("set a price floor"),
        Command::TakeDown { .. } => admin_only("take an item down"),
        Command::RecordExposures { .. } => {
            if actor.role == Role::User {
                Err(Problem::forbidden(
                    "only the storefront (a service token) or an admin reports exposures",
                ))
            } else {
                Ok(())
            }
        }
        // The item's shard checks that the actor may act for its creator.
        Command::StartPriceTest { .. } | Command::EndPriceTest { .. } => Ok(()),
        Command::Reprice { .. }
        | Command::SetOnSale { .. }
        | Command::CancelListing { .. }
        | Command::SetRegionalPrices { .. } => Ok(()),
    }
}

/// An engine refusal to run a command (it was not applied).
pub fn submit_problem(error: &SubmitError) -> Problem {
    let detail = error.to_string();
    match error {
        SubmitError::Overloaded => {
            Problem::new(StatusCode::SERVICE_UNAVAILABLE, CODE_OVERLOADED, detail)
        }
        SubmitError::ShuttingDown => {
            Problem::new(StatusCode::SERVICE_UNAVAILABLE, CODE_SHUTTING_DOWN, detail)
        }
        SubmitError::Timeout { .. } => {
            Problem::new(StatusCode::GATEWAY_TIMEOUT, CODE_TIMEOUT, detail)
        }
    }
}

/// Authenticates, authorizes and submits a validated command, then renders its completion.
async fn submit(state: &CommandState, headers: &HeaderMap, command: Command) -> Answer {
    let actor = state.verifier.authenticate(headers)?;
    authorize(&actor, &command)?;
    let meta = CommandMeta {
        at_ms: validate::now_ms(),
        actor,
    };
    let completion = state
        .bus
        .submit(command.clone(), meta)
        .await
        .map_err(|error| submit_problem(&error))?;
    Ok(render(&command, &completion))
}

// ---------------------------------------------------------------- rendering

fn json_response(status: StatusCode, body: &Value) -> Response {
    let bytes = serde_json::to_vec(body).expect("a json value serializes");
    let mut response = (status, bytes).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn optional_timestamp(at_ms: Option<u64>) -> Value {
    at_ms
        .map(|at_ms| Value::String(validate::format_timestamp(at_ms)))
        .unwrap_or(Value::Null)
}

/// One paid line of a cart, as a purchase of its own renders it.
fn cart_line_body(line: &CartLinePurchased) -> Value {
    let mut body = json!({
        "purchase_id": line.purchase_id,
        "price": line.price,
    });
    let object = body.as_object_mut().expect("an object");
    match &line.target {
        PurchaseTarget::Item(item_id) => {
            object.insert("item_id".to_owned(), json!(item_id));
        }
        PurchaseTarget::Bundle(bundle_id) => {
            object.insert("bundle_id".to_owned(), json!(bundle_id));
            object.insert("granted_item_ids".to_owned(), json!(line.granted_items));
        }
    }
    if let Some(serial) = line.serial {
        object.insert("serial".to_owned(), json!(serial));
    }
    body
}

/// Renders the answer to `command` from its `completion`. Pure: the same
/// completion always gives the same status and the same bytes, so an
/// idempotent retry gets the identical answer.
pub fn render(command: &Command, completion: &Completion) -> Response {
    let success = match &completion.result {
        Ok(success) => success,
        Err(rejection) => {
            return match completion.retry_after_ms {
                Some(retry_after_ms) => {
                    Problem::rate_limited(rejection.detail.clone(), retry_after_ms)
                }
                None => Problem::from(rejection),
            }
            .into_response()
        }
    };
    let position = format_position(&completion.read_position());
    let (status, body) = match (command, success) {
        (
            Command::Grant {
                grant_id,
                user_id,
                amount,
            },
            Success::Granted { balance_after },
        ) => (
            StatusCode::CREATED,
            json!({
                "grant_id": grant_id,
                "user_id": user_id,
                "amount": amount,
                "balance_after": balance_after,
                "position": position,
            }),
        ),
        (Command::PublishItem(definition), Success::ItemPublished) => (
            StatusCode::CREATED,
            json!({
                "item_id": definition.item_id,
                "creator_id": definition.creator_id,
                "name": definition.name,
                "price": definition.price,
                "limited": definition.supply.is_some(),
                "supply": definition.supply,
                "max_per_user": definition.max_per_user,
                "starts_at": optional_timestamp(definition.starts_at_ms),
                "ends_at": optional_timestamp(definition.ends_at_ms),
                "resellable": definition.resellable,
                "kind": definition.kind,
                "on_sale": true,
                "position": position,
            }),
        ),
        (
            Command::Reprice { item_id, .. } | Command::SetOnSale { item_id, .. },
            Success::ItemUpdated { price, on_sale },
        ) => (
            StatusCode::OK,
            json!({ "item_id": item_id, "price": price, "on_sale": on_sale, "position": position }),
        ),
        (
            Command::CreateBundle {
                bundle_id,
                creator_id,
                name,
                item_ids,
                price,
            },
            Success::BundleCreated,
        ) => (
            StatusCode::CREATED,
            json!({
                "bundle_id": bundle_id,
                "creator_id": creator_id,
                "name": name,
                "item_ids": item_ids,
                "price": price,
                "position": position,
            }),
        ),
        (
            Command::Purchase {
                purchase_id,
                buyer_id,
                region,
                ..
            },
            Success::Purchased {
                target,
                price,
                serial,
                granted_items,
                balance_after,
            },
        ) => {
            let mut body = json!({
                "purchase_id": purchase_id,
                "status": "completed",
                "buyer_id": buyer_id,
                "price": price,
                "balance_after": balance_after,
                "position": position,
            });
            let object = body.as_object_mut().expect("an object");
            match target {
                PurchaseTarget::Item(item_id) => {
                    object.insert("item_id".to_owned(), json!(item_id));
                }
                PurchaseTarget::Bundle(bundle_id) => {
                    object.insert("bundle_id".to_owned(), json!(bundle_id));
                    object.insert("granted_item_ids".to_owned(), json!(granted_items));
                }
            }
            if let Some(serial) = serial {
                object.insert("serial".to_owned(), json!(serial));
            }
            if let Some(region) = region {
                object.insert("region".to_owned(), json!(region));
            }
            (StatusCode::CREATED, body)
        }
        (
            Command::PurchaseCart {
                purchase_id,
                buyer_id,
                region,
                ..
            },
            Success::CartPurchased {
                lines,
                total,
                balance_after,
            },
        ) => {
            let mut body = json!({
                "purchase_id": purchase_id,
                "status": "completed",
                "buyer_id": buyer_id,
                "lines": lines.iter().map(cart_line_body).collect::<Vec<Value>>(),
                "total": total,
                "balance_after": balance_after,
                "position": position,
            });
            if let Some(region) = region {
                let object = body.as_object_mut().expect("an object");
                object.insert("region".to_owned(), json!(region));
            }
            (StatusCode::CREATED, body)
        }
        (
            Command::CreateListing {
                listing_id,
                seller_id,
                item_id,
                serial,
                price,
            },
            Success::ListingCreated,
        ) => (
            StatusCode::CREATED,
            json!({
                "listing_id": listing_id,
                "seller_id": seller_id,
                "item_id": item_id,
                "serial": serial,
                "price": price,
                "position": position,
            }),
        ),
        (Command::CancelListing { listing_id }, Success::ListingCancelled) => (
            StatusCode::OK,
            json!({ "listing_id": listing_id, "status": "cancelled", "position": position }),
        ),
        (
            Command::ResalePurchase {
                purchase_id,
                buyer_id,
                listing_id,
                ..
            },
            Success::ResalePurchased {
                item_id,
                serial,
                price,
                seller_id,
                balance_after,
            },
        ) => (
            StatusCode::CREATED,
            json!({
                "purchase_id": purchase_id,
                "status": "completed",
                "buyer_id": buyer_id,
                "listing_id": listing_id,
                "item_id": item_id,
                "serial": serial,
                "price": price,
                "seller_id": seller_id,
                "balance_after": balance_after,
                "position": position,
            }),
        ),
        (
            Command::Refund { refund_id, .. },
            Success::Refunded {
                purchase_id,
                amount,
            },
        ) => (
            StatusCode::CREATED,
            json!({ "refund_id": refund_id, "purchase_id": purchase_id, "amount": amount, "position": position }),
        ),
        (
            Command::StartPriceTest {
                test_id,
                item_id,
                arms,
                ends_at_ms,
                apply_winner,
            },
            Success::PriceTestStarted,
        ) => (
            StatusCode::CREATED,
            json!({
                "test_id": test_id,
                "item_id": item_id,
                "arms": arms,
                "ends_at": validate::format_timestamp(*ends_at_ms),
                "apply_winner": apply_winner,
                "status": "running",
                "position": position,
            }),
        ),
        (
            Command::RecordExposures {
                test_id,
                batch_id,
                counts,
            },
            Success::ExposuresRecorded { exposures },
        ) => (
            StatusCode::CREATED,
            json!({
                "test_id": test_id,
                "batch_id": batch_id,
                "counts": counts,
                "exposures": exposures,
                "position": position,
            }),
        ),
        (
            Command::EndPriceTest { test_id },
            Success::PriceTestEnded {
                winner,
                applied_price,
            },
        ) => (
            StatusCode::OK,
            json!({
                "test_id": test_id,
                "status": "ended",
                "winner": winner,
                "applied_price": applied_price,
                "position": position,
            }),
        ),
        (
            Command::SetRegionalPrices { item_id, .. },
            Success::RegionalPricesSet { price, prices },
        ) => (
            StatusCode::OK,
            json!({
                "item_id": item_id,
                "price": price,
                "regional_prices": prices
                    .iter()
                    .map(|(region, price)| (region.to_string(), json!(price)))
                    .collect::<serde_json::Map<String, Value>>(),
                "position": position,
            }),
        ),
        (
            Command::SetPriceFloor { .. },
            Success::PriceFloorSet {
                kind,
                version,
                price,
                effective_from_ms,
            },
        ) => (
            StatusCode::CREATED,
            json!({
                "kind": kind,
                "version": version,
                "price": price,
                "effective_from": validate::format_timestamp(*effective_from_ms),
                "position": position,
            }),
        ),
        (
            Command::TakeDown { .. },
            Success::TakenDown {
                item_id,
                listings_ended,
                shard_count,
            },
        ) => (
            // The item is off sale; its refunds go on (their progress:
            // `progress`, on the query API).
            StatusCode::ACCEPTED,
            json!({
                "item_id": item_id,
                "status": "refunding",
                "listings_ended": listings_ended,
                "shard_count": shard_count,
                "progress": format!("/v1/takedowns/{item_id}"),
                "position": position,
            }),
        ),
        (command, success) => {
            tracing::error!(
                ?command,
                ?success,
                "the engine answered a command with a success of another kind"
            );
            return Problem::internal("the ledger answered with an unexpected outcome")
                .into_response();
        }
    };
    json_response(status, &body)
}

// ---------------------------------------------------------------- handlers

pub(crate) async fn grant(
    State(state): State<CommandState>,
    headers: HeaderMap,
    object: JsonObject,
) -> Answer {
    let command = grant_command(object)?;
    submit(&state, &headers, command).await
}

pub(crate) async fn publish_item(
    State(state): State<CommandState>,
    headers: HeaderMap,
    object: JsonObject,
) -> Answer {
    let command = publish_item_command(object)?;
    submit(&state, &headers, command).await
}

pub(crate) async fn reprice(
    State(state): State<CommandState>,
    segment: PathSegment,
    headers: HeaderMap,
    object: JsonObject,
) -> Answer {
    let command = reprice_command(&segment, object)?;
    submit(&state, &headers, command).await
}

pub(crate) async fn put_off_sale(
    State(state): State<CommandState>,
    segment: PathSegment,
    headers: HeaderMap,
    _: NoFields,
) -> Answer {
    let command = Command::SetOnSale {
        item_id: item_path(&segment)?,
        on_sale: false,
    };
    submit(&state, &headers, command).await
}

pub(crate) async fn put_on_sale(
    State(state): State<CommandState>,
    segment: PathSegment,
    headers: HeaderMap,
    _: NoFields,
) -> Answer {
    let command = Command::SetOnSale {
        item_id: item_path(&segment)?,
        on_sale: true,
    };
    submit(&state, &headers, command).await
}

pub(crate) async fn create_bundle(
    State(state): State<CommandState>,
    headers: HeaderMap,
    object: JsonObject,
) -> Answer {
    let command = create_bundle_command(object)?;
    submit(&state, &headers, command).await
}

pub(crate) async fn purchase(
    State(state): State<CommandState>,
    headers: HeaderMap,
    object: JsonObject,
) -> Answer {
    let command = purchase_command(object)?;
    submit(&state, &headers, command).await
}

pub(crate) async fn purchase_cart(
    State(state): State<CommandState>,
    headers: HeaderMap,
    object: JsonObject,
) -> Answer {
    let command = cart_command(object)?;
    submit(&state, &headers, command).await
}

pub(crate) async fn create_listing(
    State(state): State<CommandState>,
    headers: HeaderMap,
    object: JsonObject,
) -> Answer {
    let command = create_listing_command(object)?;
    submit(&state, &headers, command).await
}

pub(crate) async fn cancel_listing(
    State(state): State<CommandState>,
    segment: PathSegment,
    headers: HeaderMap,
    _: NoFields,
) -> Answer {
    let command = Command::CancelListing {
        listing_id: validate::parse_id::<ListingId>("listing_id", &segment.0)?,
    };
    submit(&state, &headers, command).await
}

pub(crate) async fn resale_purchase(
    State(state): State<CommandState>,
    headers: HeaderMap,
    object: JsonObject,
) -> Answer {
    let command = resale_purchase_command(object)?;
    submit(&state, &headers, command).await
}

pub(crate) async fn set_regional_prices(
    State(state): State<CommandState>,
    segment: PathSegment,
    headers: HeaderMap,
    object: JsonObject,
) -> Answer {
    let command = regional_prices_command(&segment, object)?;
    submit(&state, &headers, command).await
}

pub(crate) async fn start_price_test(
    State(state): State<CommandState>,
    headers: HeaderMap,
    object: JsonObject,
) -> Answer {
    let command = price_test_command(object)?;
    submit(&state, &headers, command).await
}

pub(crate) async fn record_exposures(
    State(state): State<CommandState>,
    segment: PathSegment,
    headers: HeaderMap,
    object: JsonObject,
) -> Answer {
    let command = exposures_command(&segment, object)?;
    submit(&state, &headers, command).await
}

pub(crate) async fn end_price_test(
    State(state): State<CommandState>,
    segment: PathSegment,
    headers: HeaderMap,
    _: NoFields,
) -> Answer {
    let command = Command::EndPriceTest {
        test_id: test_path(&segment)?,
    };
    submit(&state, &headers, command).await
}

pub(crate) async fn take_down(
    State(state): State<CommandState>,
    segment: PathSegment,
    headers: HeaderMap,
    _: NoFields,
) -> Answer {
    let command = Command::TakeDown {
        item_id: item_path(&segment)?,
    };
    submit(&state, &headers, command).await
}

pub(crate) async fn set_price_floor(
    State(state): State<CommandState>,
    headers: HeaderMap,
    object: JsonObject,
) -> Answer {
    let command = price_floor_command(object, validate::now_ms())?;
    submit(&state, &headers, command).await
}

pub(crate) async fn refund(
    State(state): State<CommandState>,
    headers: HeaderMap,
    object: JsonObject,
) -> Answer {
    let command = refund_command(object)?;
    submit(&state, &headers, command).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::to_bytes;
    use ledger_core::{Rejection, RejectionCode, ShardId, ShardPosition};

    #[test]
    fn submit_errors_are_unavailable_or_timeouts() {
        assert_eq!(
            submit_problem(&SubmitError::Overloaded).status,
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            submit_problem(&SubmitError::ShuttingDown).code,
            "shutting_down"
        );
        let timeout = submit_problem(&SubmitError::Timeout { timeout_ms: 5 });
        assert_eq!(
            (timeout.status, timeout.code),
            (StatusCode::GATEWAY_TIMEOUT, "timeout")
        );
    }

    async fn body_of(response: Response) -> (StatusCode, String, Vec<u8>) {
        let status = response.status();
        let content_type = response.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .to_owned();
        let bytes = to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap()
            .to_vec();
        (status, content_type, bytes)
    }

    fn positions() -> Vec<ShardPosition> {
        vec![
            ShardPosition {
                shard: ShardId(1),
                sequence: 9,
            },
            ShardPosition {
                shard: ShardId(4),
                sequence: 2,
            },
        ]
    }

    fn purchase_of_limited() -> Command {
        Command::Purchase {
            purchase_id: PurchaseId::parse("p1").unwrap(),
            buyer_id: UserId::parse("bob").unwrap(),
            target: PurchaseTarget::Item(ItemId::parse("hat").unwrap()),
            expected_price: 50,
            region: None,
        }
    }

    #[tokio::test]
    async fn the_same_completion_renders_the_same_bytes() {
        let command = purchase_of_limited();
        let completion = Completion {
            result: Ok(Success::Purchased {
                target: PurchaseTarget::Item(ItemId::parse("hat").unwrap()),
                price: 50,
                serial: Some(7),
                granted_items: vec![ItemId::parse("hat").unwrap()],
                balance_after: 150,
            }),
            positions: positions(),
            deliveries: Vec::new(),
            retry_after_ms: None,
        };
        let first = body_of(render(&command, &completion)).await;
        let second = body_of(render(&command, &completion.clone())).await;
        assert_eq!(first, second);
        let (status, content_type, bytes) = first;
        assert_eq!(status, StatusCode::CREATED);
        assert_eq!(content_type, "application/json");
        let body: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(body["status"], "completed");
        assert_eq!(body["item_id"], "hat");
        assert_eq!(body["serial"], 7);
        assert_eq!(body["price"], 50);
        assert_eq!(body["balance_after"], 150);
        assert_eq!(body["position"], "p1.9_4.2");
        assert!(body.get("bundle_id").is_none());
    }

    #[tokio::test]
    async fn non_limited_purchases_have_no_serial() {
        let completion = Completion {
            result: Ok(Success::Purchased {
                target: PurchaseTarget::Item(ItemId::parse("hat").unwrap()),
                price: 50,
                serial: None,
                granted_items: vec![ItemId::parse("hat").unwrap()],
                balance_after: 150,
            }),
            positions: positions(),
            deliveries: Vec::new(),
            retry_after_ms: None,
        };
        let (_, _, bytes) = body_of(render(&purchase_of_limited(), &completion)).await;
        let body: Value = serde_json::from_slice(&bytes).unwrap();
        assert!(body.get("serial").is_none());
    }

    #[tokio::test]
    async fn remembered_rejections_render_as_problems() {
        let completion = Completion {
            result: Err(Rejection::new(
                RejectionCode::InsufficientFunds,
                "balance 10 is below the price 50",
            )),
            positions: positions(),
            deliveries: Vec::new(),
            retry_after_ms: None,
        };
        let first = body_of(render(&purchase_of_limited(), &completion)).await;
        assert_eq!(
            first,
            body_of(render(&purchase_of_limited(), &completion)).await
        );
        let (status, content_type, bytes) = first;
        assert_eq!(status, StatusCode::CONFLICT);
        assert_eq!(content_type, "application/problem+json");
        let body: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(body["code"], "insufficient_funds");
        assert_eq!(body["detail"], "balance 10 is below the price 50");
    }

    #[tokio::test]
    async fn a_mismatched_success_is_an_internal_error() {
        let completion = Completion {
            result: Ok(Success::BundleCreated),
            positions: positions(),
            deliveries: Vec::new(),
            retry_after_ms: None,
        };
        let (status, _, _) = body_of(render(&purchase_of_limited(), &completion)).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    }

    #[tokio::test]
    async fn published_items_render_timestamps_in_rfc3339() {
        let command = Command::PublishItem(ItemDefinition {
            item_id: ItemId::parse("hat").unwrap(),
            creator_id: UserId::parse("carol").unwrap(),
            name: "Hat".to_owned(),
            price: 10,
            supply: Some(100),
            max_per_user: None,
            starts_at_ms: Some(1_893_456_000_000),
            ends_at_ms: None,
            resellable: true,
            kind: Default::default(),
        });
        let completion = Completion {
            result: Ok(Success::ItemPublished),
            positions: positions(),
            deliveries: Vec::new(),
            retry_after_ms: None,
        };
        let (status, _, bytes) = body_of(render(&command, &completion)).await;
        assert_eq!(status, StatusCode::CREATED);
        let body: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(body["starts_at"], "2030-01-01T00:00:00.000Z");
        assert_eq!(body["ends_at"], Value::Null);
        assert_eq!(body["on_sale"], true);
        assert_eq!(body["limited"], true);
    }
}
