//! Metrics of the query API (the `metrics` facade; the binary installs the exporter).

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use ledger_http::metrics::RequestMetrics;

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

/// Item reads without `?after=` answered from a view kept a short while
/// (distributed mode; see `recent`).
pub const ITEM_CACHE_HITS_TOTAL: &str = "ledger_query_api_item_cache_hits_total";
/// Item reads without `?after=` that read the read models.
pub const ITEM_CACHE_MISSES_TOTAL: &str = "ledger_query_api_item_cache_misses_total";

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
    metrics::describe_counter!(
        ITEM_CACHE_HITS_TOTAL,
        metrics::Unit::Count,
        "item reads without ?after= answered from a view kept a short while"
    );
    metrics::describe_counter!(
        ITEM_CACHE_MISSES_TOTAL,
        metrics::Unit::Count,
        "item reads without ?after= that read the read models"
    );
    // Exported at 0 from the start (a position beyond the log's head is
    // refused at once, so a healthy ledger may never count one), so that
    // its rate and the alert on it have a series to read.
    metrics::counter!(PROJECTION_LAGGING_TOTAL).absolute(0);
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
    REQUEST_METRICS.record(request, next).await
}
