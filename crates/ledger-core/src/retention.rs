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

use std::collections::{BTreeSet, VecDeque};
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
    pub due: TimeQueue,
    /// Paid primary purchases, kept for the longer of the horizon and the
    /// escrow hold (a refund reads them), by base time.
    pub due_paid: TimeQueue,
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
            // No digest to compute while nothing undated was forgotten.
            None => {
                !self.forgotten_digests.is_empty()
                    && self.forgotten_digests.contains(&key_digest(key))
            }
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

/// One retention entry: a remembered command's base time and key.
pub type QueueEntry = (TimestampMs, Arc<str>);

/// Most entries one insert moves in a [`TimeQueue`]'s ordered run; an
/// entry that belongs further from its back is kept aside instead.
pub const QUEUE_SHIFT_MAX: usize = 1_024;

/// Remembered commands' keys by base time, oldest first, each once.
///
/// Commands complete in about the order of their base times, so most
/// entries go in at or near the back of a sorted queue (`near`) and leave
/// from its front: 24 bytes per entry and its spare capacity, where a
/// B-tree filled that way leaves its leaves 6/11 full (about 50 bytes per
/// entry). An insert moves at most [`QUEUE_SHIFT_MAX`] entries of it. The
/// others are kept in a B-tree beside it (`far`): ids dated ahead of the
/// clock (up to the horizon), which every later entry would otherwise have
/// to move past, and commands that completed long after they were accepted
/// (a saga held up by a shard that was down). The queue is the two merged.
///
/// Encoded as the ordered set it replaced (a count, then the entries in
/// order), so snapshots did not change; equal by content, however its
/// entries are split.
#[derive(Debug, Clone, Default)]
pub struct TimeQueue {
    near: VecDeque<QueueEntry>,
    far: BTreeSet<QueueEntry>,
}

impl TimeQueue {
    /// Queues `entry` in order (`accepted_at_ms`: when its command was
    /// accepted); false if it was queued already.
    pub fn insert(&mut self, entry: QueueEntry, accepted_at_ms: TimestampMs) -> bool {
        if self.far.contains(&entry) {
            return false;
        }
        let dated_ahead = entry.0 > accepted_at_ms;
        // Most entries: after everything queued (no search).
        if !dated_ahead && self.near.back().is_none_or(|last| *last < entry) {
            self.near.push_back(entry);
            return true;
        }
        let index = self.near.partition_point(|queued| *queued < entry);
        if self.near.get(index) == Some(&entry) {
            return false;
        }
        if dated_ahead || self.near.len() - index > QUEUE_SHIFT_MAX {
            return self.far.insert(entry);
        }
        self.near.insert(index, entry);
        true
    }

    /// The oldest entry.
    pub fn first(&self) -> Option<&QueueEntry> {
        match (self.near.front(), self.far.first()) {
            (Some(near), Some(far)) => Some(near.min(far)),
            (near, far) => near.or(far),
        }
    }

    /// Takes the oldest entry.
    pub fn pop_first(&mut self) -> Option<QueueEntry> {
        match (self.near.front(), self.far.first()) {
            (Some(near), Some(far)) if far < near => self.far.pop_first(),
            (Some(_), _) => self.near.pop_front(),
            (None, _) => self.far.pop_first(),
        }
    }

    /// The entries, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &QueueEntry> {
        let mut near = self.near.iter().peekable();
        let mut far = self.far.iter().peekable();
        std::iter::from_fn(move || match (near.peek(), far.peek()) {
            (Some(next_near), Some(next_far)) if next_far < next_near => far.next(),
            (Some(_), _) => near.next(),
            (None, _) => far.next(),
        })
    }

    pub fn len(&self) -> usize {
        self.near.len() + self.far.len()
    }

    pub fn is_empty(&self) -> bool {
        self.near.is_empty() && self.far.is_empty()
    }

    /// Replaces each key by the one `shared` gives for it (the same text,
    /// so the order stands).
    pub fn share_keys(&mut self, shared: impl Fn(Arc<str>) -> Arc<str>) {
        let share = |key: &Arc<str>| {
            let same = shared(Arc::clone(key));
            assert_eq!(*same, **key, "a shared key has the same text");
            same
        };
        for (_, key) in self.near.iter_mut() {
            *key = share(key);
        }
        self.far = std::mem::take(&mut self.far)
            .into_iter()
            .map(|(at_ms, key)| (at_ms, share(&key)))
            .collect();
    }

    /// A queue of `entries`, if they are in order and each once.
    fn from_ordered(entries: Vec<QueueEntry>) -> Result<TimeQueue, &'static str> {
        if entries.windows(2).all(|pair| pair[0] < pair[1]) {
            Ok(TimeQueue {
                near: VecDeque::from(entries),
                far: BTreeSet::new(),
            })
        } else {
            Err("a retention queue's entries are out of order or repeated")
        }
    }
}

impl PartialEq for TimeQueue {
    fn eq(&self, other: &TimeQueue) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Eq for TimeQueue {}

#[cfg(test)]
impl<const N: usize> From<[QueueEntry; N]> for TimeQueue {
    fn from(entries: [QueueEntry; N]) -> TimeQueue {
        let mut queue = TimeQueue::default();
        for entry in entries {
            let accepted_at_ms = entry.0;
            queue.insert(entry, accepted_at_ms);
        }
        queue
    }
}

impl Encode for TimeQueue {
    fn encode<E: bincode::enc::Encoder>(
        &self,
        encoder: &mut E,
    ) -> Result<(), bincode::error::EncodeError> {
        (self.len() as u64).encode(encoder)?;
        for entry in self.iter() {
            entry.encode(encoder)?;
        }
        Ok(())
    }
}

impl<Context> Decode<Context> for TimeQueue {
    fn decode<D: bincode::de::Decoder<Context = Context>>(
        decoder: &mut D,
    ) -> Result<Self, bincode::error::DecodeError> {
        let entries: Vec<QueueEntry> = Decode::decode(decoder)?;
        TimeQueue::from_ordered(entries).map_err(bincode::error::DecodeError::Other)
    }
}

bincode::impl_borrow_decode!(TimeQueue);

impl Serialize for TimeQueue {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.iter())
    }
}

impl<'de> Deserialize<'de> for TimeQueue {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let entries = Vec::<QueueEntry>::deserialize(deserializer)?;
        TimeQueue::from_ordered(entries).map_err(serde::de::Error::custom)
    }
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

    fn entry(at_ms: TimestampMs, key: &str) -> (TimestampMs, Arc<str>) {
        (at_ms, Arc::from(key))
    }

    #[test]
    fn a_time_queue_keeps_its_entries_in_order_each_once() {
        let mut queue = TimeQueue::default();
        let arrivals = [
            entry(5, "purchase:b"),
            entry(7, "purchase:c"),
            entry(5, "purchase:a"),
            entry(9, "grant:z"),
            entry(1, "refund:r"),
            entry(7, "purchase:d"),
        ];
        for arrival in arrivals.iter().cloned() {
            let accepted_at_ms = arrival.0;
            assert!(queue.insert(arrival, accepted_at_ms));
        }
        assert!(!queue.insert(entry(7, "purchase:c"), 7), "queued once");
        let ordered: BTreeSet<_> = arrivals.iter().cloned().collect();
        assert_eq!(queue.len(), ordered.len());
        assert!(queue.iter().eq(ordered.iter()), "{queue:?}");
        assert_eq!(queue.first(), ordered.first());
        let mut popped = Vec::new();
        while let Some(first) = queue.pop_first() {
            popped.push(first);
        }
        assert!(popped.iter().eq(ordered.iter()));
        assert!(queue.is_empty());
    }

    /// Pops every entry of `queue`, oldest first.
    fn drained(mut queue: TimeQueue) -> Vec<QueueEntry> {
        std::iter::from_fn(|| queue.pop_first()).collect()
    }

    #[test]
    fn a_time_queue_moves_a_bounded_run_and_keeps_the_rest_aside() {
        let mut queue = TimeQueue::default();
        let mut all = BTreeSet::new();
        let mut add = |queue: &mut TimeQueue, entry: QueueEntry, accepted_at_ms| {
            assert!(all.insert(entry.clone()));
            assert!(queue.insert(entry, accepted_at_ms));
        };
        let run = u64::try_from(QUEUE_SHIFT_MAX).expect("small") + 2;
        for at_ms in 10..10 + run {
            add(&mut queue, entry(at_ms, "grant:g"), at_ms);
        }
        // Before the whole run: aside, nothing moved.
        add(&mut queue, entry(1, "grant:late"), 1);
        assert_eq!(
            (queue.near.len(), queue.far.len()),
            (QUEUE_SHIFT_MAX + 2, 1)
        );
        // Near the back: in the run.
        add(&mut queue, entry(8 + run, "grant:h"), 8 + run);
        assert_eq!(queue.far.len(), 1);
        // Dated ahead of its acceptance: aside, so that the entries after
        // it still go in at the back instead of moving past it.
        add(&mut queue, entry(1_000_000, "purchase:ahead"), 20 + run);
        add(&mut queue, entry(20 + run, "grant:next"), 20 + run);
        assert_eq!(
            (queue.near.len(), queue.far.len()),
            (QUEUE_SHIFT_MAX + 4, 2)
        );
        assert_eq!(queue.near.back(), Some(&entry(20 + run, "grant:next")));
        // Each once, wherever it is kept.
        assert!(!queue.insert(entry(1, "grant:late"), 1));
        assert!(!queue.insert(entry(10, "grant:g"), 10));
        // (Even where it would go now: in the run, at its back.)
        assert!(!queue.insert(entry(1_000_000, "purchase:ahead"), 1_000_000));
        assert_eq!(queue.len(), all.len());
        assert!(queue.iter().eq(all.iter()));
        assert_eq!(queue.first(), all.first());
        // Equal by content to the same entries decoded (all in the run).
        let decoded: TimeQueue =
            crate::codec::decode_record_part("queue", &crate::codec::encode_record_part(&queue))
                .expect("decodes");
        assert!(decoded.far.is_empty());
        assert_eq!(decoded, queue);
        assert!(drained(queue).iter().eq(all.iter()));
    }

    #[test]
    fn a_time_queue_in_any_arrival_order_is_its_ordered_set() {
        // A fixed pseudo-random walk (64-bit LCG): times clustered like
        // completions, some far behind, some dated ahead; pops between.
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = |bound: u64| {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (seed >> 33) % bound
        };
        let mut queue = TimeQueue::default();
        let mut all = BTreeSet::new();
        for n in 0..20_000_u64 {
            let clock_ms = n / 4;
            let (at_ms, accepted_at_ms) = match next(100) {
                0 => (clock_ms + 1 + next(100_000), clock_ms),
                1..=2 => {
                    let behind = next(clock_ms + 1);
                    (behind, behind)
                }
                _ => {
                    let jitter = next(50).min(clock_ms);
                    (clock_ms - jitter, clock_ms - jitter)
                }
            };
            let key: Arc<str> = Arc::from(format!("purchase:p-{}", next(5_000)));
            let fresh = all.insert((at_ms, Arc::clone(&key)));
            assert_eq!(queue.insert((at_ms, key), accepted_at_ms), fresh);
            if next(10) == 0 {
                assert_eq!(queue.pop_first(), all.pop_first());
            }
            assert!(queue.near.len() + queue.far.len() == all.len());
        }
        assert!(!queue.far.is_empty(), "the walk exercised both parts");
        assert!(queue.iter().eq(all.iter()));
        let ordered = TimeQueue::from_ordered(all.iter().cloned().collect()).expect("ordered");
        assert_eq!(queue, ordered);
        assert!(drained(queue).iter().eq(all.iter()));
    }

    #[test]
    fn a_time_queue_encodes_as_the_ordered_set_it_replaced() {
        use crate::codec::{decode, decode_record_part, encode, encode_record_part};
        let set: BTreeSet<(TimestampMs, Arc<str>)> = BTreeSet::from([
            entry(3, "grant:g-1"),
            entry(3, "purchase:p-1"),
            entry(1_796_515_200_123, "purchase:p-2"),
        ]);
        let queue = TimeQueue::from([
            entry(1_796_515_200_123, "purchase:p-2"),
            entry(3, "purchase:p-1"),
            entry(3, "grant:g-1"),
        ]);
        assert_eq!(encode(&queue), encode(&set));
        assert_eq!(encode_record_part(&queue), encode_record_part(&set));
        let decoded: TimeQueue = decode("queue", &encode(&set)).expect("decodes");
        assert_eq!(decoded, queue);
        let decoded: TimeQueue =
            decode_record_part("queue", &encode_record_part(&set)).expect("decodes");
        assert_eq!(decoded, queue);
        assert_eq!(
            serde_json::to_value(&queue).expect("serializes"),
            serde_json::to_value(&set).expect("serializes")
        );
        // Out of order or repeated, the bytes are refused, not trusted.
        for entries in [
            vec![entry(5, "purchase:a"), entry(4, "purchase:b")],
            vec![entry(5, "purchase:a"), entry(5, "purchase:a")],
        ] {
            let bytes = encode_record_part(&entries);
            assert!(decode_record_part::<TimeQueue>("queue", &bytes).is_err());
            let json = serde_json::to_string(&entries).expect("serializes");
            assert!(serde_json::from_str::<TimeQueue>(&json).is_err());
        }
    }

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
