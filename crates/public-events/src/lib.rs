//! # ledger-public-events
//!
//! The public event stream for analysts (README, "For analysts"): the
//! ledger's business events — grants, completed purchases and resales with
//! their price, split, serial and fee policy, refunds, escrow releases and
//! reversals, listings, catalogue changes — as JSON with CloudEvents
//! attributes, keyed by the entity they concern. No I/O: the Kafka
//! publisher (`ledger public-stream`, topic `ledger.public.v1`) and the
//! embedded `ledger export --public [--follow]` feed [`PublicStream`] the
//! records they read and write what it drains.
//!
//! * [`types`]: the public types (version 1), the published contract;
//! * [`stream`]: the mapping from records, in causal order, with a
//!   resumable checkpoint;
//! * [`schema`]: their JSON Schemas (`schemas/json/`).

pub mod schema;
pub mod stream;
pub mod types;

pub use stream::{PublicStream, ShardCheckpoint, StreamError};
pub use types::{PublicData, PublicEvent, StructuredEvent, PUBLIC_TYPES, PUBLIC_VERSION};
