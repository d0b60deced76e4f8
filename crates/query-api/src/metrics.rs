//! Metrics of the query API (the `metrics` facade; the binary installs the exporter).

use std::time::Instant;

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use command_api::metrics::{outcome, route_label, OUTCOME_OK};

/// Requests answered, by route template and status code.
pub const REQUESTS_TOTAL: &str = "ledger_query_api_requests_total";
/// Time to answer a request, by route template and outcome (`ok` or the problem code).
pub const REQUEST_DURATION_SECONDS: &str = "ledger_query_api_request_duration_seconds";
/// Requests answered with a problem, by route template and problem code.
pub const REJECTIONS_TOTAL: &str = "ledger_query_api_rejections_total";
/// Time a read with `?after=` waited for the read models to reach its
/// position, by result (`reached` or `lagging`).
pub const WAIT_SECONDS: &str = "ledger_query_api_wait_seconds";
/// Reads answered 503 `projection_lagging` after waiting for an `after` position.
pub const PROJECTION_LAGGING_TOTAL: &str = "ledger_query_api_projection_lagging_total";

/// Registers the descriptions of this crate's metrics.
pub fn describe() {
    metrics::describe_counter!(
        REQUESTS_TOTAL,
        metrics::Unit::Count,
        "query api requests answered, by route and status"
    );
    metrics::describe_histogram!(
        REQUEST_DURATION_SECONDS,
        metrics::Unit::Seconds,
        "time to answer a query api request, by route and outcome"
    );
    metrics::describe_counter!(
        REJECTIONS_TOTAL,
        metrics::Unit::Count,
        "query api requests answered with a problem, by route and code"
    );
    metrics::describe_histogram!(
        WAIT_SECONDS,
        metrics::Unit::Seconds,
        "time a read with ?after= waited for the read models, by result"
    );
    metrics::describe_counter!(
        PROJECTION_LAGGING_TOTAL,
        metrics::Unit::Count,
        "reads refused because the read models did not reach the requested position in time"
    );
}

/// Counts a read refused for projection lag.
pub fn record_projection_lagging() {
    metrics::counter!(PROJECTION_LAGGING_TOTAL).increment(1);
}

/// Records how long a read waited for its `?after=` position.
pub fn record_wait(waited: std::time::Duration, reached: bool) {
    let result = if reached { "reached" } else { "lagging" };
    metrics::histogram!(WAIT_SECONDS, "result" => result).record(waited.as_secs_f64());
}

/// Middleware counting and timing every request.
pub async fn record(request: Request, next: Next) -> Response {
    let route = route_label(&request);
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    let outcome = outcome(&response);
    metrics::counter!(REQUESTS_TOTAL, "route" => route.clone(), "status" => status).increment(1);
    if outcome != OUTCOME_OK {
        metrics::counter!(REJECTIONS_TOTAL, "route" => route.clone(), "code" => outcome)
            .increment(1);
    }
    metrics::histogram!(REQUEST_DURATION_SECONDS, "route" => route, "outcome" => outcome)
        .record(started.elapsed().as_secs_f64());
    response
}
