//! # ledger-query-api
//!
//! The HTTP query API over the read models ([`ReadModels`]). Every read
//! accepts `?after=<position>` (a token from the command API) and waits,
//! within a bound, until the read models reflect it: read-your-writes.
//!
//! Items, bundles, resale listings and owners are public; balances,
//! inventories, transactions and earnings need a token of that user, or a
//! `service` or `admin` token. Errors are `application/problem+json`, with the
//! command API's mapping.

pub mod metrics;
pub mod recent;
pub mod routes;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use ledger_http::auth::Verifier;
use ledger_http::observability::{self, Observability};
use ledger_http::server::{self, ConnectionLimits, Server};
use projectors::ReadModels;

/// How long a read waits for its `after` position by default.
pub const PROJECTION_WAIT_MAX: Duration = Duration::from_secs(5);
/// How often a waiting read polls the read models.
pub const PROJECTION_POLL_INTERVAL: Duration = Duration::from_millis(5);

/// Limits of the query API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// Longest wait for an `after` position before 503 `projection_lagging`.
    pub projection_wait_max: Duration,
    /// Pause between two checks of the read models' progress.
    pub projection_poll_interval: Duration,
    /// Most `/v1` requests served at once; beyond, 503 `overloaded`.
    pub in_flight_requests_max: usize,
    /// Longest time to answer a request before 504 `timeout` (above
    /// `projection_wait_max`, so a waiting read gets its own answer first).
    pub request_timeout: Duration,
    /// Header read timeout and largest request head, per connection.
    pub connection: ConnectionLimits,
    /// The ledger's shard count, when known: an `after` naming a shard
    /// beyond it is refused at once (400) rather than waited for.
    pub shard_count: Option<u16>,
    /// How long an item view read without `?after=` is kept
    /// ([`recent::RecentItems`]); zero keeps none (the default).
    pub item_cache_ttl: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            projection_wait_max: PROJECTION_WAIT_MAX,
            projection_poll_interval: PROJECTION_POLL_INTERVAL,
            in_flight_requests_max: server::IN_FLIGHT_REQUESTS_MAX,
            request_timeout: server::REQUEST_TIMEOUT,
            connection: ConnectionLimits::default(),
            shard_count: None,
            item_cache_ttl: Duration::ZERO,
        }
    }
}

/// The query API's routes with the default [`Settings`].
pub fn router(
    read_models: Arc<dyn ReadModels>,
    auth: Arc<Verifier>,
    observability: Observability,
) -> Router {
    router_with_settings(read_models, auth, observability, Settings::default())
}

/// The query API's routes.
pub fn router_with_settings(
    read_models: Arc<dyn ReadModels>,
    auth: Arc<Verifier>,
    observability: Observability,
    settings: Settings,
) -> Router {
    metrics::describe();
    let state = routes::QueryState {
        read_models,
        verifier: auth,
        settings,
        recent_items: recent::RecentItems::new(settings.item_cache_ttl).map(Arc::new),
    };
    let reads = Router::new()
        .route("/v1/users/{id}/balance", get(routes::balance))
        .route("/v1/users/{id}/inventory", get(routes::inventory))
        .route("/v1/users/{id}/transactions", get(routes::transactions))
        .route("/v1/users/{id}/statement", get(routes::statement))
        .route("/v1/purchases/{id}", get(routes::purchase))
        .route("/v1/items/{id}", get(routes::item))
        .route("/v1/items/{id}/price", get(routes::item_price))
        .route(
            "/v1/items/{id}/resale-listings",
            get(routes::resale_listings),
        )
        .route("/v1/items/{id}/owners", get(routes::owners))
        .route("/v1/items/{id}/history", get(routes::item_history))
        .route("/v1/bundles/{id}", get(routes::bundle))
        .route("/v1/creators/{id}/earnings", get(routes::earnings))
        .route("/v1/creators/{id}/sales", get(routes::creator_sales))
        .route("/v1/price-floors", get(routes::price_floors))
        .route("/v1/price-tests/{id}", get(routes::price_test))
        .route("/v1/takedowns/{id}", get(routes::takedown))
        .method_not_allowed_fallback(observability::method_not_allowed)
        .with_state(state);
    let reads = server::limit(
        reads,
        server::Limits {
            in_flight_requests_max: settings.in_flight_requests_max,
            request_timeout: settings
                .request_timeout
                .max(settings.projection_wait_max + Duration::from_secs(1)),
        },
    );
    reads
        .merge(observability.router())
        .fallback(observability::not_found)
        .layer(axum::middleware::from_fn(metrics::record))
}

/// Binds the query API; the [`Server`] it returns serves it.
pub struct QueryApi;

impl QueryApi {
    /// Binds `addr` (port 0 picks a free port); reads with `?after=` wait at
    /// most `projection_wait_max` for the projection of a ledger of
    /// `shard_count` shards. Other settings default.
    pub async fn bind(
        addr: SocketAddr,
        read_models: Arc<dyn ReadModels>,
        auth: Arc<Verifier>,
        observability: Observability,
        projection_wait_max: Duration,
        shard_count: u16,
    ) -> io::Result<Server> {
        let settings = Settings {
            projection_wait_max,
            shard_count: Some(shard_count),
            ..Settings::default()
        };
        Self::bind_with_settings(addr, read_models, auth, observability, settings).await
    }

    pub async fn bind_with_settings(
        addr: SocketAddr,
        read_models: Arc<dyn ReadModels>,
        auth: Arc<Verifier>,
        observability: Observability,
        settings: Settings,
    ) -> io::Result<Server> {
        Server::bind_with_limits(
            addr,
            router_with_settings(read_models, auth, observability, settings),
            settings.connection,
        )
        .await
    }
}
