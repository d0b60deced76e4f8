//! # ledger-projectors
//!
//! Read models are built from the event log. This crate holds the views the
//! query API serves, the port ([`ReadModels`]) that serves them, and the pure
//! projection ([`project`]) that turns each event into read-model changes.

pub mod history;
pub mod project;
pub mod trace;
pub mod views;

pub use history::{
    average_price, day_ceiling, day_of, history_buckets, HistoryBucket, ItemDay, ItemDays, DAY_MS,
    HISTORY_DAYS_DEFAULT, HISTORY_DAYS_MAX,
};
pub use project::{
    next_recent_average_price, position_text, project, Change, CreatorSale, PurchaseStep,
    SaleEscrowChange, TransactionAccount,
};
pub use views::*;
