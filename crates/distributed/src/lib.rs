//! # ledger-distributed
//!
//! The production path of the ledger (README, "Distributed mode"):
//!
//! * [`worker::EngineWorker`] owns shards through the Kafka consumer group of
//!   the engine, keeps their state in CQL and publishes their output in Kafka
//!   transactions;
//! * [`bus::KafkaCommandBus`] is the command API's [`engine::ports::CommandBus`]
//!   over the commands and replies topics;
//! * [`projector`] consumes the events topic into the CQL read models;
//! * [`public`] publishes the analysts' public event stream, exactly once.

pub mod bus;
pub mod metrics;
pub mod projector;
pub mod public;
pub mod worker;

pub use bus::{BusError, BusSettings, KafkaCommandBus};
pub use worker::{EngineWorker, WorkerError, WorkerHealth, WorkerSettings};

/// Spawns one of a service's long-running loops (an engine worker, a
/// publisher, the projector, the public stream, the reply reader). A panic
/// in it — a failed assertion: what the loop holds can no longer be
/// trusted — stops the process, as a failed append or transaction does.
/// Left to tokio, a panic would end only the task, and the process would go
/// on answering HTTP with nothing behind it (an engine owning no shard and
/// never ready again) instead of being restarted by its orchestrator.
pub(crate) fn spawn_or_crash<F>(what: &'static str, future: F) -> tokio::task::JoinHandle<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    use futures_util::FutureExt;
    tokio::spawn(async move {
        match std::panic::AssertUnwindSafe(future).catch_unwind().await {
            Ok(output) => output,
            Err(_) => {
                tracing::error!("the {what} panicked; stopping the process");
                std::process::abort();
            }
        }
    })
}
