//! How long a shard remembers the commands it ran.
//!
//! A keyed command (grant, purchase, resale purchase, refund) is remembered
//! under its id so that a retry is answered from the stored outcome instead
//! of running twice. Remembering every command forever makes memory and
//! snapshots grow with every purchase ever made, so a completed command is
//! forgotten once it is older than the **idempotency horizon** (a paid
//! primary purchase: once it can no longer be refunded, if that is later).
//!
//! Forgetting must never let a late retry run a second time:
//!
//! * an id that carries its creation time (a UUIDv7, RFC 9562) is refused
//!   with `idempotency_expired` once it is dated before the shard's
//!   *forgotten-before* mark, which the clock moves forward in the same
//!   event that forgets the records older than it. Such ids cost nothing
//!   once forgotten: memory stays flat.
//! * any other id leaves a 16-byte digest behind when forgotten, and a
//!   retry that matches it is refused the same way. These digests are never
//!   dropped, so memory still grows with such ids, ~20× slower than with the
//!   full records.
//!
//! Every choice is made by `decide` on the clock's tick and recorded as an
//! event (`CommandsForgotten`); `evolve` applies it from the state alone, so
//! a replay forgets exactly what the live shard forgot.

use std::collections::BTreeSet;
use std::sync::Arc;

use bincode::{Decode, Encode};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::model::{Command, CommandMeta, TimestampMs};

/// The default idempotency horizon: 7 days.
pub const IDEMPOTENCY_HORIZON_MS_DEFAULT: u64 = 7 * 24 * 3_600 * 1_000;

/// Most records one tick forgets, per retention class (the rest wait for the
/// next tick): bounds the time a tick holds its shard.
pub const FORGETS_PER_TICK_MAX: u32 = 65_536;

/// What a shard keeps to forget commands and to refuse late retries.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
pub struct Retention {
    /// Completed commands kept for the idempotency horizon, by base time
    /// (see [`base_time_ms`]).
    pub due: BTreeSet<(TimestampMs, Arc<str>)>,
    /// Paid primary purchases, kept for the longer of the horizon and the
    /// escrow hold (a refund reads them), by base time.
    pub due_paid: BTreeSet<(TimestampMs, Arc<str>)>,
    /// Ids that carry their creation time and are dated before this are
    /// forgotten (or were never seen): refused, never run.
    pub forgotten_before_ms: TimestampMs,
    /// Digests of forgotten ids that carry no time.
    pub forgotten_digests: BTreeSet<u128>,
}

impl Retention {
    /// Whether the command under `key`, absent from the shard's records, may
    /// have run before and been forgotten.
    pub fn is_forgotten(&self, key: &str) -> bool {
        match id_time_ms(key) {
            Some(created_ms) => created_ms < self.forgotten_before_ms,
            None => self.forgotten_digests.contains(&key_digest(key)),
        }
    }
}

/// Whether a command of this kind is forgotten after the horizon. Item and
/// bundle creations are not: the catalogue keeps what they made anyway.
pub fn is_forgettable(command: &Command) -> bool {
    matches!(
        command,
        Command::Grant { .. }
            | Command::Purchase { .. }
            | Command::ResalePurchase { .. }
            | Command::PurchaseCart { .. }
            | Command::Refund { .. }
    )
}

/// The time a record's retention counts from: when it was accepted, or the
/// time its id carries if that is later.
pub fn base_time_ms(key: &str, meta: &CommandMeta) -> TimestampMs {
    id_time_ms(key).map_or(meta.at_ms, |created_ms| created_ms.max(meta.at_ms))
}

/// The creation time (ms since the Unix epoch) carried by the id in `key`
/// (`<kind>:<id>`), if the id is a UUIDv7.
pub fn id_time_ms(key: &str) -> Option<TimestampMs> {
    let (_, id) = key.split_once(':')?;
    let uuid = uuid::Uuid::try_parse(id).ok()?;
    if uuid.get_version_num() != 7 {
        return None;
    }
    let (seconds, nanos) = uuid.get_timestamp()?.to_unix();
    seconds
        .checked_mul(1_000)?
        .checked_add(u64::from(nanos / 1_000_000))
}

/// The digest a forgotten id without a time leaves behind.
pub fn key_digest(key: &str) -> u128 {
    let digest = Sha256::digest(key.as_bytes());
    let mut first = [0u8; 16];
    first.copy_from_slice(&digest[..16]);
    u128::from_be_bytes(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_uuid_v7_ids_carry_a_time() {
        // 2026-12-06T00:00:00.123Z as UUIDv7.
        let at_ms: u64 = 1_796_515_200_123;
        let hex = format!("{at_ms:012x}");
        let id = format!("{}-{}-7abc-8def-0123456789ab", &hex[..8], &hex[8..]);
        assert_eq!(id_time_ms(&format!("purchase:{id}")), Some(at_ms));
        assert_eq!(
            id_time_ms(&format!("purchase:{}", id.to_uppercase())),
            Some(at_ms)
        );
        // Version 4: random, no time.
        assert_eq!(
            id_time_ms("purchase:0f8fad5b-d9cb-469f-a165-70867728950e"),
            None
        );
        for key in ["purchase:p-1", "purchase:", "p-1", "grant:not-a-uuid"] {
            assert_eq!(id_time_ms(key), None, "{key}");
        }
    }

    #[test]
    fn a_forgotten_id_is_recognised_by_time_or_by_digest() {
        let mut retention = Retention {
            forgotten_before_ms: 1_796_515_200_000,
            ..Retention::default()
        };
        let old = "purchase:01900000-0000-7000-8000-000000000000";
        let new = format!(
            "purchase:{:08x}-{:04x}-7000-8000-000000000000",
            1_796_515_300_000u64 >> 16,
            1_796_515_300_000u64 & 0xffff
        );
        assert!(retention.is_forgotten(old));
        assert!(!retention.is_forgotten(&new));
        assert!(!retention.is_forgotten("purchase:p-1"));
        retention
            .forgotten_digests
            .insert(key_digest("purchase:p-1"));
        assert!(retention.is_forgotten("purchase:p-1"));
        assert!(!retention.is_forgotten("purchase:p-2"));
    }
}
