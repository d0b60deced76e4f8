//! # ledger-engine
//!
//! Runs `ledger-core` shards: a sans-io [`shard::ShardRunner`] (shared by the
//! async runtime and the simulation) and the tokio [`runtime::Engine`].

pub mod in_memory;
pub mod metrics;
pub mod ports;
pub mod runtime;
pub mod shard;
pub mod snapshots;

pub use runtime::{Engine, EngineConfig, EngineError};
