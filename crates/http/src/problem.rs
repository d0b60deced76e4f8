//! RFC 7807 problem details (`application/problem+json`): the one shape of
//! every error answer, and the one mapping from rejection codes to statuses.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use ledger_core::{Rejection, RejectionCode};

use crate::auth::AuthError;

/// Media type of problem answers.
pub const PROBLEM_CONTENT_TYPE: &str = "application/problem+json";
/// Prefix of the `type` URI of every problem.
pub const PROBLEM_TYPE_BASE: &str = "https://ledger.example/problems/";

/// Code of a request refused because too many are in flight, or the engine is at capacity.
pub const CODE_OVERLOADED: &str = "overloaded";
/// Code of a request refused because the ledger is shutting down.
pub const CODE_SHUTTING_DOWN: &str = "shutting_down";
/// Code of a command that did not complete in time.
pub const CODE_TIMEOUT: &str = "timeout";
/// Code of a request with a method the route does not serve.
pub const CODE_METHOD_NOT_ALLOWED: &str = "method_not_allowed";
/// Code of an unexpected server-side failure.
pub const CODE_INTERNAL_ERROR: &str = "internal_error";
/// Code of a request without a valid token.
pub const CODE_UNAUTHORIZED: &str = "unauthorized";
/// Code of a body larger than the API accepts.
pub const CODE_PAYLOAD_TOO_LARGE: &str = "payload_too_large";
/// Code of a read whose `after` position the read models did not reach in time.
pub const CODE_PROJECTION_LAGGING: &str = "projection_lagging";

/// The HTTP status of a code the core decided: the one mapping used by
/// both APIs. The transport's own codes (`unauthorized`,
/// `payload_too_large`, `projection_lagging`, `overloaded`, …) have their
/// constructors on [`Problem`].
///
/// `validation_failed` is 422 here; malformed JSON and a wrong content type
/// use [`Problem::malformed_request`] (400) instead.
pub fn status_for(code: RejectionCode) -> StatusCode {
    match code {
        RejectionCode::ValidationFailed | RejectionCode::BelowPriceFloor => {
            StatusCode::UNPROCESSABLE_ENTITY
        }
        RejectionCode::Forbidden => StatusCode::FORBIDDEN,
        RejectionCode::NotFound => StatusCode::NOT_FOUND,
        RejectionCode::IdempotencyConflict
        | RejectionCode::ListingUnavailable
        | RejectionCode::NotOnSale
        | RejectionCode::PurchaserIsSeller
        | RejectionCode::PriceChanged
        | RejectionCode::AlreadyOwned
        | RejectionCode::QuantityLimitReached
        | RejectionCode::SoldOut
        | RejectionCode::InsufficientFunds
        | RejectionCode::NotOwner
        | RejectionCode::NotResellable
        | RejectionCode::AlreadyListed
        | RejectionCode::ResaleHoldActive
        | RejectionCode::RefundWindowClosed
        | RejectionCode::AlreadyRefunded
        | RejectionCode::NotRefundable
        | RejectionCode::IdempotencyExpired
        | RejectionCode::ItemTakenDown => StatusCode::CONFLICT,
        RejectionCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
    }
}

/// A problem answer: status, machine code and a lowercase, specific detail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub status: StatusCode,
    pub code: &'static str,
    pub detail: String,
    /// Whole seconds the client should wait (`Retry-After`, and
    /// `retry_after_seconds` in the body): set for `rate_limited`; a 503
    /// without it says 1.
    pub retry_after_seconds: Option<u64>,
}

impl Problem {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            code,
            detail: detail.into(),
            retry_after_seconds: None,
        }
    }

    /// 429 `rate_limited`: the buyer may send the same request again after
    /// `retry_after_ms`, rounded up to whole seconds (at least 1).
    pub fn rate_limited(detail: impl Into<String>, retry_after_ms: u64) -> Self {
        Self {
            retry_after_seconds: Some(retry_after_ms.div_ceil(1_000).max(1)),
            ..Self::from_code(RejectionCode::RateLimited, detail)
        }
    }

    /// A problem for `code`, with the status of [`status_for`].
    pub fn from_code(code: RejectionCode, detail: impl Into<String>) -> Self {
        Self::new(status_for(code), code.as_str(), detail)
    }

    /// 422 `validation_failed`: a well-formed request with invalid content.
    pub fn validation(detail: impl Into<String>) -> Self {
        Self::from_code(RejectionCode::ValidationFailed, detail)
    }

    /// 400 `validation_failed`: malformed JSON, a wrong content type, a malformed query.
    pub fn malformed_request(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            RejectionCode::ValidationFailed.as_str(),
            detail,
        )
    }

    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, CODE_UNAUTHORIZED, detail)
    }

    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::from_code(RejectionCode::Forbidden, detail)
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::from_code(RejectionCode::NotFound, detail)
    }

    pub fn payload_too_large(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            CODE_PAYLOAD_TOO_LARGE,
            detail,
        )
    }

    /// 503 `projection_lagging`: the read models did not reach a read's
    /// `after` position in time.
    pub fn projection_lagging(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            CODE_PROJECTION_LAGGING,
            detail,
        )
    }

    pub fn method_not_allowed(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            CODE_METHOD_NOT_ALLOWED,
            detail,
        )
    }

    pub fn overloaded(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, CODE_OVERLOADED, detail)
    }

    pub fn internal(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            CODE_INTERNAL_ERROR,
            detail,
        )
    }

    /// The title: the code in words, e.g. `Validation failed`.
    pub fn title(&self) -> String {
        let words = self.code.replace('_', " ");
        let mut characters = words.chars();
        match characters.next() {
            Some(first) => first.to_uppercase().chain(characters).collect(),
            None => String::new(),
        }
    }

    /// The JSON body (keys in a fixed order, so equal problems give equal bytes).
    pub fn body(&self) -> serde_json::Value {
        let mut body = serde_json::json!({
            "type": format!("{PROBLEM_TYPE_BASE}{}", self.code),
            "title": self.title(),
            "status": self.status.as_u16(),
            "detail": self.detail,
            "code": self.code,
        });
        if let Some(seconds) = self.retry_after_seconds {
            body["retry_after_seconds"] = seconds.into();
        }
        body
    }
}

impl From<&Rejection> for Problem {
    fn from(rejection: &Rejection) -> Self {
        Self::from_code(rejection.code, rejection.detail.clone())
    }
}

impl From<Rejection> for Problem {
    fn from(rejection: Rejection) -> Self {
        Self::from(&rejection)
    }
}

impl From<AuthError> for Problem {
    fn from(error: AuthError) -> Self {
        Self::unauthorized(error.to_string())
    }
}

/// The machine code of a problem answer, kept in the response's extensions
/// for the metrics middleware (rejections by code, latency by outcome).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProblemCode(pub &'static str);

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&self.body()).expect("a json value serializes");
        let mut response = (self.status, body).into_response();
        response.extensions_mut().insert(ProblemCode(self.code));
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(PROBLEM_CONTENT_TYPE),
        );
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        match self.retry_after_seconds {
            Some(seconds) => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
            }
            None if self.status == StatusCode::SERVICE_UNAVAILABLE => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            None => {}
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn business_codes_are_conflicts() {
        assert_eq!(
            status_for(RejectionCode::InsufficientFunds),
            StatusCode::CONFLICT
        );
        assert_eq!(
            status_for(RejectionCode::IdempotencyConflict),
            StatusCode::CONFLICT
        );
        assert_eq!(
            status_for(RejectionCode::AlreadyRefunded),
            StatusCode::CONFLICT
        );
        assert_eq!(
            status_for(RejectionCode::ValidationFailed),
            StatusCode::UNPROCESSABLE_ENTITY
        );
    }

    #[test]
    fn a_rate_limited_answer_says_how_long_to_wait_in_whole_seconds() {
        let response = Problem::rate_limited("too fast", 1_001).into_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[header::RETRY_AFTER], "2");
        let problem = Problem::rate_limited("too fast", 1);
        assert_eq!(problem.body()["retry_after_seconds"], 1);
        assert_eq!(problem.body()["code"], "rate_limited");
    }

    #[test]
    fn an_answer_carries_its_code_for_the_metrics() {
        let response = Problem::not_found("no such item").into_response();
        assert_eq!(
            response.extensions().get::<ProblemCode>(),
            Some(&ProblemCode("not_found"))
        );
        assert_eq!(crate::metrics::outcome(&response), "not_found");
        let ok = (StatusCode::OK, "fine").into_response();
        assert_eq!(crate::metrics::outcome(&ok), crate::metrics::OUTCOME_OK);
    }

    #[test]
    fn transport_codes_have_their_own_statuses() {
        let lagging = Problem::projection_lagging("behind");
        assert_eq!(
            (lagging.status, lagging.code),
            (StatusCode::SERVICE_UNAVAILABLE, "projection_lagging")
        );
        let large = Problem::payload_too_large("big");
        assert_eq!(
            (large.status, large.code),
            (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
        );
        let unauthorized = Problem::unauthorized("no token");
        assert_eq!(
            (unauthorized.status, unauthorized.code),
            (StatusCode::UNAUTHORIZED, "unauthorized")
        );
    }

    #[test]
    fn no_code_of_the_core_is_a_server_error() {
        for code in RejectionCode::all() {
            let status = status_for(code);
            assert!(
                status.is_client_error(),
                "{} maps to {status}",
                code.as_str()
            );
        }
    }

    #[test]
    fn problems_render_rfc7807_fields() {
        let problem = Problem::from(Rejection::new(
            RejectionCode::SoldOut,
            "item `hat` is sold out",
        ));
        let body = problem.body();
        assert_eq!(body["type"], "https://ledger.example/problems/sold_out");
        assert_eq!(body["title"], "Sold out");
        assert_eq!(body["status"], 409);
        assert_eq!(body["detail"], "item `hat` is sold out");
        assert_eq!(body["code"], "sold_out");
    }
}
