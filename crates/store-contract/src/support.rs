//! Building blocks for store tests: hash-chained records of real events,
//! shard batches and messages.

use std::collections::BTreeMap;

use engine::ports::ShardBatch;
use ledger_core::codec::{BatchRecord, Entry, Hash, InputEntries, MessageEnvelope, GENESIS_HASH};
use ledger_core::{Account, Event, GrantId, Message, Posting, ShardId, UserId};

/// Builds per-shard hash chains of records with [`BatchRecord::seal`].
#[derive(Debug, Default, Clone)]
pub struct Log {
    heads: BTreeMap<u16, (u64, Hash)>,
}

impl Log {
    /// Seals `event` as the next record of `shard` (one entry), chained to the previous one.
    pub fn seal(&mut self, shard: u16, event: Event, at_ms: u64) -> BatchRecord {
        self.seal_many(shard, vec![event], at_ms)
    }

    /// Seals `events` as the next record of `shard`, chained to the previous one.
    pub fn seal_many(&mut self, shard: u16, events: Vec<Event>, at_ms: u64) -> BatchRecord {
        let (next, previous) = self.heads.get(&shard).copied().unwrap_or((1, GENESIS_HASH));
        let input = InputEntries {
            cause: "test".to_string(),
            timestamp_ms: at_ms,
            entries: events.iter().map(Entry::from_event).collect(),
        };
        let record = BatchRecord::seal(ShardId(shard), next, previous, vec![input]);
        self.heads
            .insert(shard, (record.next_sequence(), record.hash));
        record
    }

    /// Seals `count` currency grants on `shard` (ids `{prefix}-{n}`), one record each.
    pub fn grants(&mut self, shard: u16, prefix: &str, count: u64) -> Vec<BatchRecord> {
        (1..=count)
            .map(|index| {
                let amount = i64::try_from(index).unwrap_or(i64::MAX);
                self.seal(
                    shard,
                    grant(&format!("{prefix}-{index}"), "alice", amount, amount),
                    index,
                )
            })
            .collect()
    }

    /// The last sequence sealed on `shard` (0 if none).
    pub fn last_sequence(&self, shard: u16) -> u64 {
        self.heads.get(&shard).map_or(0, |(next, _)| next - 1)
    }
}

/// A batch of `shard` with its records and outgoing messages.
pub fn batch(shard: u16, records: Vec<BatchRecord>, messages: Vec<MessageEnvelope>) -> ShardBatch {
    ShardBatch {
        shard: Some(ShardId(shard)),
        records,
        messages,
    }
}

pub fn user(id: &str) -> UserId {
    UserId::parse(id).expect("test user id is valid")
}

/// A balanced currency grant.
pub fn grant(grant_id: &str, user_id: &str, amount: i64, balance_after: i64) -> Event {
    Event::CurrencyGranted {
        grant_id: GrantId::parse(grant_id).expect("test grant id is valid"),
        user_id: user(user_id),
        amount,
        balance_after,
        postings: vec![
            Posting::new(Account::Issuance, -amount),
            Posting::new(Account::Wallet(user(user_id)), amount),
        ],
    }
}

/// Message `sequence` from `from` to `to`: a credit of `amount`.
pub fn message(from: u16, to: u16, sequence: u64, amount: i64) -> MessageEnvelope {
    MessageEnvelope {
        from: ShardId(from),
        to: ShardId(to),
        sequence,
        message: std::sync::Arc::new(Message::CreditGrant {
            grant_id: GrantId::parse(format!("g{from}-{to}-{sequence}")).expect("valid grant id"),
            user_id: user("alice"),
            amount,
        }),
    }
}

/// Messages `first..=last` from `from` to `to`.
pub fn messages(from: u16, to: u16, first: u64, last: u64) -> Vec<MessageEnvelope> {
    (first..=last)
        .map(|sequence| message(from, to, sequence, 1))
        .collect()
}
