//! # ledger-command-api
//!
//! The HTTP command API: JSON requests are validated into
//! [`ledger_core::Command`]s, authenticated (HS256 bearer tokens),
//! authorized, submitted to the engine through its [`CommandBus`] port, and
//! answered from the command's [`ledger_core::Completion`]. Every error is an
//! RFC 7807 `application/problem+json` body.
//!
//! What it shares with the query API (tokens, problems, extractors,
//! validation, serving limits, health and metrics routes) is in
//! [`ledger_http`].

pub mod metrics;
pub mod routes;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::{delete, post, put};
use axum::Router;
use engine::ports::CommandBus;

use ledger_http::server::ConnectionLimits;
use ledger_http::{auth, extract, observability, problem, server};
pub use ledger_http::{issue_token, Observability, Problem, Server, Verifier};
pub use routes::{render, submit_problem};

/// Most requests served at once; beyond, requests get 503 `overloaded`.
pub const IN_FLIGHT_REQUESTS_MAX: usize = server::IN_FLIGHT_REQUESTS_MAX;

/// Limits of the command API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// Most `/v1` requests served at once.
    pub in_flight_requests_max: usize,
    /// Largest request body, in bytes.
    pub body_bytes_max: usize,
    /// Longest time to answer a request before 504 `timeout`.
    pub request_timeout: std::time::Duration,
    /// Header read timeout and largest request head, per connection.
    pub connection: ConnectionLimits,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            in_flight_requests_max: IN_FLIGHT_REQUESTS_MAX,
            body_bytes_max: extract::BODY_BYTES_MAX,
            request_timeout: server::REQUEST_TIMEOUT,
            connection: ConnectionLimits::default(),
        }
    }
}

/// The command API's routes with the default [`Settings`].
pub fn router(
    bus: Arc<dyn CommandBus>,
    auth: Arc<auth::Verifier>,
    observability: Observability,
) -> Router {
    router_with_settings(bus, auth, observability, Settings::default())
}

/// The command API's routes.
pub fn router_with_settings(
    bus: Arc<dyn CommandBus>,
    auth: Arc<auth::Verifier>,
    observability: Observability,
    settings: Settings,
) -> Router {
    metrics::describe();
    let state = routes::CommandState {
        bus,
        verifier: auth,
    };
    let commands = Router::new()
        .route("/v1/grants", post(routes::grant))
        .route("/v1/items", post(routes::publish_item))
        .route("/v1/items/{item_id}/price", post(routes::reprice))
        .route("/v1/items/{item_id}/off-sale", post(routes::put_off_sale))
        .route("/v1/items/{item_id}/on-sale", post(routes::put_on_sale))
        .route(
            "/v1/items/{item_id}/regional-prices",
            put(routes::set_regional_prices),
        )
        .route("/v1/items/{item_id}/takedown", post(routes::take_down))
        .route("/v1/bundles", post(routes::create_bundle))
        .route("/v1/purchases", post(routes::purchase))
        .route("/v1/carts", post(routes::purchase_cart))
        .route("/v1/resale-listings", post(routes::create_listing))
        .route(
            "/v1/resale-listings/{listing_id}",
            delete(routes::cancel_listing),
        )
        .route("/v1/resale-purchases", post(routes::resale_purchase))
        .route("/v1/refunds", post(routes::refund))
        .route("/v1/price-floors", post(routes::set_price_floor))
        .route("/v1/price-tests", post(routes::start_price_test))
        .route(
            "/v1/price-tests/{test_id}/exposures",
            post(routes::record_exposures),
        )
        .route(
            "/v1/price-tests/{test_id}/end",
            post(routes::end_price_test),
        )
        .method_not_allowed_fallback(observability::method_not_allowed)
        .layer(DefaultBodyLimit::max(settings.body_bytes_max))
        .layer(axum::middleware::from_fn_with_state(
            settings.body_bytes_max,
            refuse_declared_oversize,
        ))
        .with_state(state);
    let commands = server::limit(
        commands,
        server::Limits {
            in_flight_requests_max: settings.in_flight_requests_max,
            request_timeout: settings.request_timeout,
        },
    );
    commands
        .merge(observability.router())
        .fallback(observability::not_found)
        .layer(axum::middleware::from_fn(metrics::record))
}

/// Refuses a body whose declared `Content-Length` is over the limit before
/// reading any of it (bodies without a length are cut by `DefaultBodyLimit`).
async fn refuse_declared_oversize(
    axum::extract::State(body_bytes_max): axum::extract::State<usize>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let declared = request
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    match declared {
        Some(length) if length > body_bytes_max as u64 => problem::Problem::payload_too_large(
            format!("request body is larger than {body_bytes_max} bytes"),
        )
        .into_response(),
        _ => next.run(request).await,
    }
}

/// Binds the command API; the [`Server`] it returns serves it.
pub struct CommandApi;

impl CommandApi {
    /// Binds `addr` (port 0 picks a free port) with the default [`Settings`].
    pub async fn bind(
        addr: SocketAddr,
        bus: Arc<dyn CommandBus>,
        auth: Arc<auth::Verifier>,
        observability: Observability,
    ) -> io::Result<Server> {
        Self::bind_with_settings(addr, bus, auth, observability, Settings::default()).await
    }

    pub async fn bind_with_settings(
        addr: SocketAddr,
        bus: Arc<dyn CommandBus>,
        auth: Arc<auth::Verifier>,
        observability: Observability,
        settings: Settings,
    ) -> io::Result<Server> {
        Server::bind_with_limits(
            addr,
            router_with_settings(bus, auth, observability, settings),
            settings.connection,
        )
        .await
    }
}
