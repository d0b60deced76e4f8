//! # ledger-http
//!
//! What the command API and the query API share: bearer tokens ([`auth`],
//! HS256 JWTs verified with a current and a previous secret), RFC 7807
//! problem answers ([`problem`]), extractors whose every rejection is a
//! problem ([`extract`]), field validation ([`validate`]), serving with
//! connection and request limits ([`server`]), and the health, readiness and
//! metrics routes ([`observability`], [`metrics`]).

pub mod auth;
pub mod extract;
pub mod metrics;
pub mod observability;
pub mod problem;
pub mod server;
pub mod validate;

pub use auth::{issue_token, Verifier};
pub use observability::Observability;
pub use problem::Problem;
pub use server::{ConnectionLimits, Limits, Server};
