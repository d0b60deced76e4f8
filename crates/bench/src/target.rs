//! Where the load goes: the command API of a running ledger over HTTP, or an
//! embedded engine (`CommandBus`) in the same process. Workloads build
//! `ledger_core::Command`s; both targets answer with the same `Answer`.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use engine::ports::{CommandBus, SubmitError};
use ledger_core::{Actor, Command, CommandMeta, Completion, PurchaseTarget, Role, Success, UserId};
use serde_json::{json, Value};

/// Every answer code the generator counts, `ok` first. A `Code` is an index
/// into this table, so counting needs no allocation and no lock.
pub const CODES: &[&str] = &[
    "ok",
    // Business rejections (409, and 404 for a listing or item that is gone).
    "sold_out",
    "already_owned",
    "insufficient_funds",
    "price_changed",
    "quantity_limit_reached",
    "not_on_sale",
    "listing_unavailable",
    "not_owner",
    "purchaser_is_seller",
    "resale_hold_active",
    "refund_window_closed",
    "already_refunded",
    "not_refundable",
    "not_resellable",
    "already_listed",
    "not_found",
    // Over a buyer's purchase rate limit (429): nothing was reserved or charged.
    "rate_limited",
    // Errors: the request was malformed, refused, or not answered.
    "idempotency_conflict",
    "validation_failed",
    "unauthorized",
    "forbidden",
    "payload_too_large",
    "method_not_allowed",
    "projection_lagging",
    "overloaded",
    "shutting_down",
    "timeout",
    "internal_error",
    "transport_error",
    "unexpected_answer",
    "unknown_code",
];

/// The first index of `CODES` that is an error rather than a rejection.
const FIRST_ERROR_INDEX: usize = 18;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Code(u8);

impl Code {
    pub const OK: Code = Code(0);

    /// The code for `text`, or `unknown_code` for a code this table lacks.
    pub fn from_text(text: &str) -> Code {
        match CODES.iter().position(|known| *known == text) {
            Some(index) => Code(index as u8),
            None => Code::from_text("unknown_code"),
        }
    }

    pub fn index(self) -> usize {
        self.0 as usize
    }

    pub fn from_index(index: usize) -> Code {
        assert!(index < CODES.len(), "code index out of range");
        Code(index as u8)
    }

    pub fn as_str(self) -> &'static str {
        CODES[self.0 as usize]
    }

    pub fn is_ok(self) -> bool {
        self.0 == 0
    }

    /// A business rejection the ledger is expected to give under load.
    pub fn is_rejection(self) -> bool {
        (1..FIRST_ERROR_INDEX).contains(&(self.0 as usize))
    }

    pub fn is_error(self) -> bool {
        self.0 as usize >= FIRST_ERROR_INDEX
    }
}

/// What a successful command answered that the invariant checks need.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Accepted {
    pub serial: Option<u32>,
    pub price: Option<i64>,
    pub balance_after: Option<i64>,
    pub seller_id: Option<String>,
    pub granted_item_ids: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub code: Code,
    /// `Some` exactly when `code` is `ok`.
    pub accepted: Option<Accepted>,
}

impl Answer {
    pub fn refused(code: &str) -> Answer {
        Answer {
            code: Code::from_text(code),
            accepted: None,
        }
    }

    pub fn accepted(accepted: Accepted) -> Answer {
        Answer {
            code: Code::OK,
            accepted: Some(accepted),
        }
    }

    pub fn is_ok(&self) -> bool {
        self.code.is_ok()
    }
}

/// The HTTP request for a command: method, path, body, whether it needs the admin token.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpRequest {
    pub delete: bool,
    pub path: String,
    pub body: Option<Value>,
    pub admin: bool,
}

/// The command API request that carries `command`, or `None` for commands
/// the load generator never sends.
pub fn http_request(command: &Command) -> Option<HttpRequest> {
    let post = |path: &str, body: Value, admin: bool| HttpRequest {
        delete: false,
        path: path.to_string(),
        body: Some(body),
        admin,
    };
    Some(match command {
        Command::Grant {
            grant_id,
            user_id,
            amount,
        } => post(
            "/v1/grants",
            json!({"grant_id": grant_id.as_str(), "user_id": user_id.as_str(), "amount": amount}),
            true,
        ),
        Command::PublishItem(definition) => {
            let mut body = json!({
                "item_id": definition.item_id.as_str(),
                "creator_id": definition.creator_id.as_str(),
                "name": definition.name,
                "price": definition.price,
            });
            if let Some(supply) = definition.supply {
                body["supply"] = json!(supply);
                body["resellable"] = json!(definition.resellable);
            }
            if let Some(max_per_user) = definition.max_per_user {
                body["max_per_user"] = json!(max_per_user);
            }
            post("/v1/items", body, false)
        }
        Command::CreateBundle {
            bundle_id,
            creator_id,
            name,
            item_ids,
            price,
        } => post(
            "/v1/bundles",
            json!({
                "bundle_id": bundle_id.as_str(),
                "creator_id": creator_id.as_str(),
                "name": name,
                "item_ids": item_ids.iter().map(|id| id.as_str()).collect::<Vec<_>>(),
                "price": price,
            }),
            false,
        ),
        Command::Purchase {
            purchase_id,
            buyer_id,
            target,
            expected_price,
            region,
        } => {
            let mut body = json!({
                "purchase_id": purchase_id.as_str(),
                "buyer_id": buyer_id.as_str(),
                "expected_price": expected_price,
            });
            if let Some(region) = region {
                body["region"] = json!(region.as_str());
            }
            match target {
                PurchaseTarget::Item(item_id) => body["item_id"] = json!(item_id.as_str()),
                PurchaseTarget::Bundle(bundle_id) => body["bundle_id"] = json!(bundle_id.as_str()),
            }
            post("/v1/purchases", body, false)
        }
        Command::CreateListing {
            listing_id,
            seller_id,
            item_id,
            serial,
            price,
        } => post(
            "/v1/resale-listings",
            json!({
                "listing_id": listing_id.as_str(),
                "seller_id": seller_id.as_str(),
                "item_id": item_id.as_str(),
                "serial": serial,
                "price": price,
            }),
            false,
        ),
        Command::CancelListing { listing_id } => HttpRequest {
            delete: true,
            path: format!("/v1/resale-listings/{}", listing_id.as_str()),
            body: None,
            admin: false,
        },
        Command::ResalePurchase {
            purchase_id,
            buyer_id,
            listing_id,
            expected_price,
        } => post(
            "/v1/resale-purchases",
            json!({
                "purchase_id": purchase_id.as_str(),
                "buyer_id": buyer_id.as_str(),
                "listing_id": listing_id.as_str(),
                "expected_price": expected_price,
            }),
            false,
        ),
        Command::TakeDown { item_id } => post(
            &format!("/v1/items/{}/takedown", item_id.as_str()),
            json!({}),
            true,
        ),
        Command::Reprice { .. }
        | Command::SetOnSale { .. }
        | Command::Refund { .. }
        | Command::SetPriceFloor { .. }
        | Command::SetRegionalPrices { .. }
        | Command::StartPriceTest { .. }
        | Command::RecordExposures { .. }
        | Command::EndPriceTest { .. }
        | Command::PurchaseCart { .. } => return None,
    })
}

/// Reads an HTTP answer: 2xx is `ok` with the fields the checks need,
/// anything else the problem's `code` (or `unexpected_answer`).
pub fn answer_from_http(status: u16, body: &[u8]) -> Answer {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    if (200..300).contains(&status) {
        let Some(body) = parsed else {
            return Answer::refused("unexpected_answer");
        };
        return Answer::accepted(Accepted {
            serial: body["serial"].as_u64().and_then(|s| u32::try_from(s).ok()),
            price: body["price"].as_i64(),
            balance_after: body["balance_after"].as_i64(),
            seller_id: body["seller_id"].as_str().map(str::to_string),
            granted_item_ids: body["granted_item_ids"]
                .as_array()
                .map(|ids| {
                    ids.iter()
                        .filter_map(|id| id.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default(),
        });
    }
    match parsed.as_ref().and_then(|body| body["code"].as_str()) {
        Some(code) => Answer::refused(code),
        None => Answer::refused("unexpected_answer"),
    }
}

/// Reads an embedded engine's completion the way the HTTP API renders it.
pub fn answer_from_completion(result: Result<Completion, SubmitError>) -> Answer {
    match result {
        Err(SubmitError::Overloaded) => Answer::refused("overloaded"),
        Err(SubmitError::ShuttingDown) => Answer::refused("shutting_down"),
        Err(SubmitError::Timeout { .. }) => Answer::refused("timeout"),
        Ok(Completion {
            result: Err(rejection),
            ..
        }) => Answer::refused(rejection.code.as_str()),
        Ok(Completion {
            result: Ok(success),
            ..
        }) => Answer::accepted(match success {
            Success::Granted { balance_after } => Accepted {
                balance_after: Some(balance_after),
                ..Accepted::default()
            },
            Success::Purchased {
                price,
                serial,
                granted_items,
                balance_after,
                ..
            } => Accepted {
                serial,
                price: Some(price),
                balance_after: Some(balance_after),
                seller_id: None,
                granted_item_ids: granted_items.iter().map(|id| id.to_string()).collect(),
            },
            Success::ResalePurchased {
                serial,
                price,
                seller_id,
                balance_after,
                ..
            } => Accepted {
                serial: Some(serial),
                price: Some(price),
                balance_after: Some(balance_after),
                seller_id: Some(seller_id.to_string()),
                granted_item_ids: Vec::new(),
            },
            _ => Accepted::default(),
        }),
    }
}

/// A running ledger's command API.
pub struct HttpTarget {
    client: reqwest::Client,
    command_url: String,
    admin_token: String,
    service_token: String,
}

/// The ledger under load.
#[derive(Clone)]
pub enum Target {
    Http(Arc<HttpTarget>),
    Embedded(engine::Engine),
}

/// How long one HTTP request may take before it counts as `transport_error`.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Tokens live this long; longer runs are refused by the duration bound.
pub const TOKEN_LIFETIME_SECONDS: u64 = 26 * 3_600;

impl Target {
    pub fn http(client: reqwest::Client, command_url: &str, secret: &[u8]) -> Target {
        Target::Http(Arc::new(HttpTarget {
            client,
            command_url: command_url.trim_end_matches('/').to_string(),
            admin_token: token(secret, Role::Admin, "bench-admin"),
            service_token: service_token(secret),
        }))
    }

    pub async fn submit(&self, command: Command) -> Answer {
        match self {
            Target::Embedded(engine) => {
                let role = match command {
                    Command::Grant { .. } | Command::Refund { .. } => Role::Admin,
                    _ => Role::Service,
                };
                answer_from_completion(engine.submit(command, meta(role)).await)
            }
            Target::Http(target) => {
                let Some(request) = http_request(&command) else {
                    return Answer::refused("unexpected_answer");
                };
                let url = format!("{}{}", target.command_url, request.path);
                let builder = if request.delete {
                    target.client.delete(url)
                } else {
                    target.client.post(url)
                };
                let token = if request.admin {
                    &target.admin_token
                } else {
                    &target.service_token
                };
                let mut builder = builder.bearer_auth(token).timeout(REQUEST_TIMEOUT);
                if let Some(body) = &request.body {
                    builder = builder.json(body);
                }
                match builder.send().await {
                    Ok(response) => {
                        let status = response.status().as_u16();
                        match response.bytes().await {
                            Ok(bytes) => answer_from_http(status, &bytes),
                            Err(_) => Answer::refused("transport_error"),
                        }
                    }
                    Err(_) => Answer::refused("transport_error"),
                }
            }
        }
    }
}

fn token(secret: &[u8], role: Role, subject: &str) -> String {
    ledger_http::auth::issue_token(
        secret,
        role,
        &UserId::parse(subject).expect("literal id"),
        TOKEN_LIFETIME_SECONDS,
        ledger_http::auth::now_seconds(),
    )
}

/// A `service` token: any buyer, seller or creator, and every private read.
pub fn service_token(secret: &[u8]) -> String {
    token(secret, Role::Service, "bench")
}

fn meta(role: Role) -> CommandMeta {
    let at_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    CommandMeta {
        at_ms,
        actor: Actor {
            role,
            user_id: UserId::parse("bench").expect("literal id"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ledger_core::{ItemId, ListingId, PurchaseId, Rejection, RejectionCode};

    #[test]
    fn codes_are_classified_and_unknown_codes_are_kept_apart() {
        assert!(Code::from_text("ok").is_ok());
        assert!(Code::from_text("sold_out").is_rejection());
        assert!(Code::from_text("not_found").is_rejection());
        // Refused before anything happened: its effects are known (none).
        assert!(Code::from_text("rate_limited").is_rejection());
        assert!(Code::from_text("overloaded").is_error());
        assert!(Code::from_text("idempotency_conflict").is_error());
        assert_eq!(Code::from_text("brand_new").as_str(), "unknown_code");
        assert!(CODES.len() < u8::MAX as usize);
        assert_eq!(CODES[FIRST_ERROR_INDEX], "idempotency_conflict");
    }

    #[test]
    fn http_answers_are_read_like_the_contract_writes_them() {
        let answer = answer_from_http(
            201,
            br#"{"purchase_id":"p","status":"completed","price":50,"serial":7,"balance_after":0,"position":"p0.1"}"#,
        );
        assert_eq!(answer.code, Code::OK);
        let accepted = answer.accepted.unwrap();
        assert_eq!((accepted.serial, accepted.price), (Some(7), Some(50)));
        let refused = answer_from_http(
            409,
            br#"{"type":"about:blank","title":"Conflict","status":409,"code":"sold_out"}"#,
        );
        assert_eq!(refused.code.as_str(), "sold_out");
        assert!(refused.accepted.is_none());
        assert_eq!(
            answer_from_http(502, b"<html>").code.as_str(),
            "unexpected_answer"
        );
    }

    #[test]
    fn embedded_completions_are_read_like_http_answers() {
        let rejected = answer_from_completion(Ok(Completion {
            result: Err(Rejection::new(RejectionCode::AlreadyOwned, "owned")),
            positions: Vec::new(),
            deliveries: Vec::new(),
            retry_after_ms: None,
        }));
        assert_eq!(rejected.code.as_str(), "already_owned");
        assert_eq!(
            answer_from_completion(Err(SubmitError::Overloaded))
                .code
                .as_str(),
            "overloaded"
        );
    }

    #[test]
    fn commands_map_to_the_documented_routes() {
        let purchase = Command::Purchase {
            purchase_id: PurchaseId::parse("p-1").unwrap(),
            buyer_id: UserId::parse("b-1").unwrap(),
            target: PurchaseTarget::Item(ItemId::parse("i-1").unwrap()),
            expected_price: 10,
            region: None,
        };
        let request = http_request(&purchase).unwrap();
        assert_eq!(request.path, "/v1/purchases");
        assert_eq!(
            request.body.unwrap(),
            json!({"purchase_id": "p-1", "buyer_id": "b-1", "item_id": "i-1", "expected_price": 10})
        );
        let cancel = http_request(&Command::CancelListing {
            listing_id: ListingId::parse("l-1").unwrap(),
        })
        .unwrap();
        assert!(cancel.delete && cancel.body.is_none());
        assert_eq!(cancel.path, "/v1/resale-listings/l-1");
    }
}
