//! Metrics of the command API (the `metrics` facade; the binary installs the exporter).

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use ledger_http::metrics::RequestMetrics;
pub use ledger_http::metrics::{outcome, route_label, OUTCOME_OK, READY};

/// Requests answered, by route template and status code.
pub const REQUESTS_TOTAL: &str = "ledger_command_api_requests_total";
/// Time to answer a request, by route template and outcome (`ok`, or the
/// problem code of the answer: `insufficient_funds`, `sold_out`, ...).
pub const REQUEST_DURATION_SECONDS: &str = "ledger_command_api_request_duration_seconds";
/// Requests answered with a problem, by route template and problem code.
pub const REJECTIONS_TOTAL: &str = "ledger_command_api_rejections_total";

const REQUEST_METRICS: RequestMetrics = RequestMetrics {
    requests_total: REQUESTS_TOTAL,
    duration_seconds: REQUEST_DURATION_SECONDS,
    rejections_total: REJECTIONS_TOTAL,
};

/// Registers the descriptions of this crate's metrics.
pub fn describe() {
    metrics::describe_counter!(
        REQUESTS_TOTAL,
        metrics::Unit::Count,
        "command api requests answered, by route and status"
    );
    metrics::describe_histogram!(
        REQUEST_DURATION_SECONDS,
        metrics::Unit::Seconds,
        "time to answer a command api request, by route and outcome"
    );
    metrics::describe_counter!(
        REJECTIONS_TOTAL,
        metrics::Unit::Count,
        "command api requests answered with a problem, by route and code"
    );
    ledger_http::metrics::describe();
}

/// Middleware counting and timing every request.
pub async fn record(request: Request, next: Next) -> Response {
    REQUEST_METRICS.record(request, next).await
}
