//! # ledger-projectors
//!
//! Read models are built from the event log. This crate holds the views the
//! query API serves and the port ([`ReadModels`]) that serves them.

pub mod views;

pub use views::*;
