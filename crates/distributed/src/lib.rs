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
