//! Serving a router: bind, report the address, run until told to stop. Shared
//! by both APIs.
//!
//! Two kinds of limits:
//! - per connection ([`ConnectionLimits`], enforced by hyper's HTTP/1
//!   server): a client that does not send its request headers within the
//!   header read timeout is disconnected, and headers larger than the header
//!   buffer are refused with 431 and the connection closed;
//! - per request ([`limit_layer`], tower's layers): at most so many requests
//!   served at once (beyond, 503 `overloaded` at once: load shedding, never
//!   queueing), and a request not answered within the request timeout gets
//!   504 `timeout`. Both answers are problem+json.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::error_handling::HandleErrorLayer;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower::limit::GlobalConcurrencyLimitLayer;
use tower::load_shed::error::Overloaded;
use tower::load_shed::LoadShedLayer;
use tower::timeout::error::Elapsed;
use tower::timeout::TimeoutLayer;
use tower::{BoxError, ServiceBuilder};

use crate::problem::{Problem, CODE_TIMEOUT};

/// Most requests served at once by default; beyond, 503 `overloaded`.
pub const IN_FLIGHT_REQUESTS_MAX: usize = 4_096;
/// Longest time a request is served by default before 504 `timeout`.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest time a client may take to send its request headers by default.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head (request line and headers) by default, in bytes;
/// larger heads get 431 and the connection is closed.
pub const HEADER_BYTES_MAX: usize = 32 * 1024;

/// Limits of one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Longest time to receive a request's headers, from the connection's
    /// start or the previous answer (so also how long a keep-alive
    /// connection may idle); past it the connection is closed.
    pub header_read_timeout: Duration,
    /// Largest request head, in bytes (hyper's read buffer; at least 8 KiB).
    pub header_bytes_max: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: HEADER_READ_TIMEOUT,
            header_bytes_max: HEADER_BYTES_MAX,
        }
    }
}

/// Limits of the requests an API serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most requests served at once; beyond, 503 `overloaded` (0 refuses
    /// everything, for tests).
    pub in_flight_requests_max: usize,
    /// Longest time to answer a request; past it, 504 `timeout`.
    pub request_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            in_flight_requests_max: IN_FLIGHT_REQUESTS_MAX,
            request_timeout: REQUEST_TIMEOUT,
        }
    }
}

/// Applies `limits` to every route of `router`: tower's load shedding over
/// one concurrency limit shared by all the routes (a global limit: a
/// per-route `ConcurrencyLimitLayer` would give each route its own), and a
/// request timeout; refusals are problem+json.
pub fn limit<S: Clone + Send + Sync + 'static>(router: Router<S>, limits: Limits) -> Router<S> {
    let timeout = limits.request_timeout;
    router.layer(
        ServiceBuilder::new()
            .layer(HandleErrorLayer::new(move |error: BoxError| async move {
                refusal(&error, timeout)
            }))
            .layer(LoadShedLayer::new())
            .layer(GlobalConcurrencyLimitLayer::new(
                limits.in_flight_requests_max,
            ))
            .layer(TimeoutLayer::new(timeout)),
    )
}

/// The problem answer of a request the limits stopped.
fn refusal(error: &BoxError, timeout: Duration) -> Response {
    if error.is::<Overloaded>() {
        Problem::overloaded("too many requests in flight; retry later").into_response()
    } else if error.is::<Elapsed>() {
        Problem::new(
            StatusCode::GATEWAY_TIMEOUT,
            CODE_TIMEOUT,
            format!(
                "the request was not answered within {}",
                humantime::format_duration(timeout)
            ),
        )
        .into_response()
    } else {
        Problem::internal(format!("the request failed: {error}")).into_response()
    }
}

/// A bound listener and the router it will serve.
pub struct Server {
    listener: TcpListener,
    local_addr: SocketAddr,
    router: Router,
    limits: ConnectionLimits,
}

impl Server {
    /// Binds `addr` (port 0 picks a free port) with the default [`ConnectionLimits`].
    pub async fn bind(addr: SocketAddr, router: Router) -> io::Result<Self> {
        Self::bind_with_limits(addr, router, ConnectionLimits::default()).await
    }

    /// Binds `addr` (port 0 picks a free port).
    pub async fn bind_with_limits(
        addr: SocketAddr,
        router: Router,
        limits: ConnectionLimits,
    ) -> io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let local_addr = listener.local_addr()?;
        Ok(Self {
            listener,
            local_addr,
            router,
            limits,
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until `shutdown` completes, then waits for in-flight requests
    /// (graceful shutdown: idle connections are closed, answers in progress
    /// are finished).
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> io::Result<()> {
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(self.limits.header_read_timeout)
            .max_buf_size(self.limits.header_bytes_max.max(8 * 1024));
        let http = Arc::new(http);
        let graceful = GracefulShutdown::new();
        tokio::pin!(shutdown);
        loop {
            let (stream, _) = tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Out of file descriptors and the like: wait, then accept again.
                        tracing::warn!(%error, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            let _ = stream.set_nodelay(true);
            let service = TowerToHyperService::new(self.router.clone());
            let connection = http.serve_connection(TokioIo::new(stream), service);
            let connection = graceful.watch(connection);
            tokio::spawn(async move {
                // A closed or timed-out connection is the client's affair.
                if let Err(error) = connection.await {
                    tracing::debug!(%error, "connection ended with an error");
                }
            });
        }
        drop(self.listener);
        graceful.shutdown().await;
        Ok(())
    }
}
