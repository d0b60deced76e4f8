//! # ledger-core
//!
//! The pure domain of the marketplace ledger: no I/O, no clock, no async.
//! A shard is a deterministic state machine:
//!
//! * [`decide`] turns an [`Input`] (a command, a message from another shard,
//!   a clock tick) into events or a refusal;
//! * [`evolve`] applies one event to the [`ShardState`].
//!
//! The same code runs embedded and on Kafka/ScyllaDB; adapters feed it.

pub mod codec;
pub mod decide;
pub mod ids;
pub mod limits;
pub mod model;
pub mod money;
pub mod owned;
pub mod pricing;
pub mod remembered;
pub mod retention;
pub mod state;
pub mod takedown;

pub use decide::{decide, Answer, Decision, Input};
pub use ids::*;
pub use model::*;
pub use money::*;
pub use pricing::{ItemKind, ItemPricing, PriceFloors, PriceRule, Region, SaleTerms};
pub use state::{evolve, Config, ShardState};
