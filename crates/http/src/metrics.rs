//! Metrics helpers shared by both APIs (the `metrics` facade; the binary
//! installs the exporter): route and outcome labels, the readiness gauge, and
//! the request-counting middleware each API instantiates with its own names.

use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;

/// 1 while the process answers `/readyz` with 200, else 0.
pub const READY: &str = "ledger_ready";
/// The `outcome` label of a successful answer.
pub const OUTCOME_OK: &str = "ok";

/// The names of one API's request metrics.
#[derive(Debug, Clone, Copy)]
pub struct RequestMetrics {
    /// Requests answered, by route template and status code.
    pub requests_total: &'static str,
    /// Time to answer a request, by route template and outcome.
    pub duration_seconds: &'static str,
    /// Requests answered with a problem, by route template and problem code.
    pub rejections_total: &'static str,
}

impl RequestMetrics {
    /// Counts and times one request.
    pub async fn record(self, request: Request, next: Next) -> Response {
        let route = route_label(&request);
        let started = Instant::now();
        let response = next.run(request).await;
        let status = response.status().as_u16().to_string();
        let outcome = outcome(&response);
        metrics::counter!(self.requests_total, "route" => route.clone(), "status" => status)
            .increment(1);
        if outcome != OUTCOME_OK {
            metrics::counter!(self.rejections_total, "route" => route.clone(), "code" => outcome)
                .increment(1);
        }
        metrics::histogram!(self.duration_seconds, "route" => route, "outcome" => outcome)
            .record(started.elapsed().as_secs_f64());
        response
    }
}

/// Registers the description of the readiness gauge.
pub fn describe() {
    metrics::describe_gauge!(READY, "1 while the process is ready (/readyz answers 200)");
}

/// The outcome of an answer: the problem code it carries, else `ok`.
pub fn outcome(response: &Response) -> &'static str {
    response
        .extensions()
        .get::<crate::problem::ProblemCode>()
        .map_or(OUTCOME_OK, |code| code.0)
}

/// The route label of a request: its route template, or `unmatched`.
pub fn route_label(request: &Request) -> String {
    request
        .extensions()
        .get::<MatchedPath>()
        .map(|path| path.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned())
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;
    use axum::routing::get;
    use axum::Router;

    use super::*;

    async fn echo_route(request: Request, next: Next) -> Response {
        let route = route_label(&request);
        let mut response = next.run(request).await;
        response
            .headers_mut()
            .insert("x-route", HeaderValue::from_str(&route).unwrap());
        response
    }

    #[tokio::test]
    async fn requests_are_labelled_by_route_template() {
        let router = Router::new()
            .route("/v1/items/{item_id}/price", get(|| async { "ok" }))
            .layer(axum::middleware::from_fn(echo_route));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await });
        let label = |path: &'static str| async move {
            let response = reqwest::get(format!("http://{address}{path}"))
                .await
                .unwrap();
            response.headers()["x-route"].to_str().unwrap().to_owned()
        };
        assert_eq!(
            label("/v1/items/hat/price").await,
            "/v1/items/{item_id}/price"
        );
        assert_eq!(label("/nowhere").await, "unmatched");
    }
}
