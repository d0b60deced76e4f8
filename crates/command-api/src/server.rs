//! Serving a router: bind, report the address, run until told to stop. Shared
//! by both APIs.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::{FromFnLayer, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::problem::Problem;

/// A bound listener and the router it will serve.
pub struct Server {
    listener: TcpListener,
    local_addr: SocketAddr,
    router: Router,
}

impl Server {
    /// Binds `addr` (port 0 picks a free port).
    pub async fn bind(addr: SocketAddr, router: Router) -> io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let local_addr = listener.local_addr()?;
        Ok(Self {
            listener,
            local_addr,
            router,
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until `shutdown` completes, then waits for in-flight requests
    /// (graceful shutdown).
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> io::Result<()> {
        axum::serve(self.listener, self.router)
            .with_graceful_shutdown(shutdown)
            .await
    }
}

/// A bound on requests served at once.
#[derive(Debug, Clone)]
pub struct InFlightLimit {
    permits: Arc<Semaphore>,
}

impl InFlightLimit {
    /// At most `requests_max` at once (0 refuses everything, for tests).
    pub fn new(requests_max: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(requests_max.min(Semaphore::MAX_PERMITS))),
        }
    }

    /// The middleware layer enforcing this limit.
    pub fn layer(&self) -> InFlightLimitLayer {
        axum::middleware::from_fn_with_state(self.clone(), |state, request, next| {
            Box::pin(limit_in_flight(state, request, next))
        })
    }
}

/// The boxed future of the in-flight limit middleware.
pub type MiddlewareFuture = Pin<Box<dyn Future<Output = Response> + Send>>;
/// The in-flight limit middleware, as a function pointer.
pub type InFlightLimitFunction = fn(State<InFlightLimit>, Request, Next) -> MiddlewareFuture;
/// The layer returned by [`InFlightLimit::layer`].
pub type InFlightLimitLayer =
    FromFnLayer<InFlightLimitFunction, InFlightLimit, (State<InFlightLimit>, Request)>;

/// Middleware: 503 `overloaded` once the limit is reached.
pub async fn limit_in_flight(
    State(limit): State<InFlightLimit>,
    request: Request,
    next: Next,
) -> Response {
    match limit.permits.try_acquire() {
        Ok(_permit) => next.run(request).await,
        Err(_) => Problem::overloaded("too many requests in flight; retry later").into_response(),
    }
}
