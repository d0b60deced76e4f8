//! Health, readiness and metrics routes, shared by both APIs.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::problem::Problem;

/// Renders the process's metrics in the Prometheus text format.
pub type RenderMetrics = Arc<dyn Fn() -> String + Send + Sync>;

/// Media type of the Prometheus text exposition format.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What `/healthz`, `/readyz` and `/metrics` report.
#[derive(Clone)]
pub struct Observability {
    /// `/readyz` answers 200 while set, 503 otherwise.
    pub ready: Arc<AtomicBool>,
    /// Body of `/metrics`.
    pub render_metrics: RenderMetrics,
}

impl std::fmt::Debug for Observability {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Observability")
            .field("ready", &self.ready)
            .finish_non_exhaustive()
    }
}

impl Observability {
    pub fn new(ready: Arc<AtomicBool>, render_metrics: RenderMetrics) -> Self {
        Self {
            ready,
            render_metrics,
        }
    }

    /// Ready, with an empty metrics page: for tests and tools.
    pub fn always_ready() -> Self {
        Self::new(Arc::new(AtomicBool::new(true)), Arc::new(String::new))
    }

    /// The routes `/healthz`, `/readyz` and `/metrics`.
    pub fn router<S: Clone + Send + Sync + 'static>(&self) -> Router<S> {
        Router::new()
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .route("/metrics", get(metrics))
            .method_not_allowed_fallback(method_not_allowed)
            .with_state(self.clone())
    }
}

async fn healthz() -> Response {
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        r#"{"status":"ok"}"#,
    )
        .into_response()
}

async fn readyz(State(observability): State<Observability>) -> Response {
    if observability.ready.load(Ordering::Acquire) {
        (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            r#"{"status":"ready"}"#,
        )
            .into_response()
    } else {
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "the service is not ready to serve requests",
        )
        .into_response()
    }
}

async fn metrics(State(observability): State<Observability>) -> Response {
    let ready = observability.ready.load(Ordering::Acquire);
    ::metrics::gauge!(crate::metrics::READY).set(if ready { 1.0 } else { 0.0 });
    let body = (observability.render_metrics)();
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(PROMETHEUS_CONTENT_TYPE),
        )],
        body,
    )
        .into_response()
}

/// 405 answer for a route that exists under another method.
pub async fn method_not_allowed() -> Problem {
    Problem::method_not_allowed("this method is not allowed on this route")
}

/// 404 answer for an unknown route.
pub async fn not_found() -> Problem {
    Problem::not_found("no such route")
}
