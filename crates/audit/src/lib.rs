//! # ledger-audit
//!
//! What an auditor checks, from the records of a ledger's shards alone
//! (`schemas/events.md` §4), with no I/O: an adapter (an embedded data
//! directory, a Kafka topic, CQL tables) feeds each shard's records in
//! sequence order to [`Verifier::record`], then [`Verifier::finish`] gives a
//! [`Report`]: every shard's head, the messages in flight, a trial balance
//! and every [`Finding`], each naming its shard and sequence.
//!
//! Checks per record: it continues its shard's chain (first sequence and
//! previous hash), every entry decodes (older versions upcast), every
//! event's postings sum to zero, no wallet or pending balance goes below
//! zero at any point of its shard's log, and replaying the shard with the
//! core's `evolve` accepts every event. Across shards: every message
//! consumed was sent, each once and in order, and what remains is in
//! flight. Over everything: the postings of all accounts sum to zero.

pub mod export;

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};

use ledger_core::codec::{BatchRecord, Entry, Hash, GENESIS_HASH};
use ledger_core::{evolve, Account, Event, ShardId, ShardState, UserId};
use serde::Serialize;

/// Most findings kept (the count goes on): a broken log does not need a
/// million lines to be proven broken.
pub const FINDINGS_KEPT_MAX: usize = 1_000;

/// One violation, at a shard and sequence of its log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub shard: u16,
    pub sequence: u64,
    /// A stable machine code: `bad_checksum`, `misfiled_record`, `chain_gap`,
    /// `chain_link`, `undecodable_entry`,
    /// `unbalanced_postings`, `negative_balance`, `replay_refused`,
    /// `message_not_sent`, `message_out_of_order`, `conservation`.
    pub code: &'static str,
    pub detail: String,
}

/// One shard's log as verified.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ShardSummary {
    pub shard: u16,
    pub records: u64,
    pub entries: u64,
    /// Entries that are domain events (not `message_sent`/`message_received`).
    pub events: u64,
    pub last_sequence: u64,
    /// Checksum of the last record, lowercase hex (zeros for an empty log).
    pub head_hash: String,
}

/// Sums of postings over every shard, per kind of account.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TrialBalance {
    pub issuance: i64,
    pub wallets: i64,
    pub pending: i64,
    pub fees: i64,
    pub clearing: i64,
    /// The sum of the above: zero when money is conserved.
    pub total: i64,
    /// Currency ever granted (`−issuance`).
    pub granted: i64,
}

/// What the verifier concluded.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    pub shards: Vec<ShardSummary>,
    pub messages_sent: u64,
    pub messages_consumed: u64,
    /// Sent and not (yet) consumed: normal while the ledger runs.
    pub messages_in_flight: u64,
    pub trial_balance: TrialBalance,
    /// Total findings (only the first `FINDINGS_KEPT_MAX` are listed).
    pub finding_count: u64,
    pub findings: Vec<Finding>,
    /// Each user's wallet and pending balance, from the log alone.
    #[serde(skip)]
    pub balances: BTreeMap<UserId, (i64, i64)>,
}

impl Report {
    pub fn is_clean(&self) -> bool {
        self.finding_count == 0
    }

    /// Adds a finding of a check made outside the verifier (read models, a
    /// second copy of the log), counted and listed like the verifier's own.
    pub fn add_finding(&mut self, finding: Finding) {
        self.finding_count += 1;
        if self.findings.len() < FINDINGS_KEPT_MAX {
            self.findings.push(finding);
        }
    }
}

struct ShardLog {
    state: ShardState,
    next_sequence: u64,
    last_hash: Hash,
    summary: ShardSummary,
    /// The state stopped following the log (a replay assertion failed).
    replay_stopped: bool,
}

/// Feeds on records, shard by shard or interleaved, each shard in order.
pub struct Verifier {
    shards: BTreeMap<ShardId, ShardLog>,
    /// Highest message sequence sent, per (sender, receiver).
    sent: BTreeMap<(ShardId, ShardId), u64>,
    /// Next message sequence expected to be consumed, per (sender, receiver).
    consumed_next: BTreeMap<(ShardId, ShardId), u64>,
    /// Consumptions seen before their send was (shards fed one after another).
    consumed: Vec<(ShardId, ShardId, u64, u64)>,
    accounts: BTreeMap<Account, i64>,
    report: Report,
}

impl Default for Verifier {
    fn default() -> Self {
        Self::new()
    }
}

impl Verifier {
    pub fn new() -> Verifier {
        Verifier {
            shards: BTreeMap::new(),
            sent: BTreeMap::new(),
            consumed_next: BTreeMap::new(),
            consumed: Vec::new(),
            accounts: BTreeMap::new(),
            report: Report::default(),
        }
    }

    /// Lists shards `0..count` in the report even if their logs are empty.
    pub fn expect_shards(&mut self, count: u16) {
        for shard in 0..count {
            self.log(ShardId(shard));
        }
    }

    fn log(&mut self, shard: ShardId) -> &mut ShardLog {
        self.shards.entry(shard).or_insert_with(|| ShardLog {
            state: ShardState::new(shard),
            next_sequence: 1,
            last_hash: GENESIS_HASH,
            summary: ShardSummary {
                shard: shard.0,
                ..ShardSummary::default()
            },
            replay_stopped: false,
        })
    }

    fn find(&mut self, shard: ShardId, sequence: u64, code: &'static str, detail: String) {
        self.report.add_finding(Finding {
            shard: shard.0,
            sequence,
            code,
            detail,
        });
    }

    /// Decodes a stored record (`shard` and `last_sequence` as the store
    /// keys it) and checks it; bytes that do not decode or whose checksum
    /// fails are a finding.
    pub fn record_bytes(&mut self, shard: ShardId, last_sequence: u64, bytes: &[u8]) {
        match BatchRecord::from_bytes(bytes) {
            Ok(record) if record.shard == shard && !record.is_empty() && record.last_sequence() == last_sequence => {
                self.record(&record)
            }
            Ok(record) => self.find(
                shard,
                last_sequence,
                "misfiled_record",
                format!(
                    "the record stored at shard {shard} sequence {last_sequence} is of shard {} and ends at {}",
                    record.shard,
                    record.first_sequence + record.len().max(1) - 1
                ),
            ),
            Err(error) => self.find(shard, last_sequence, "bad_checksum", error.to_string()),
        }
    }

    /// Checks the next record of shard `shard` as published on a topic: the
    /// bytes at `offset` of the shard's partition, which names no sequence.
    /// A finding about bytes that do not decode names the sequence the
    /// shard's chain expected next, and the offset. Returns the record's
    /// last sequence and checksum when it decoded as one of `shard`'s.
    pub fn published_record_bytes(
        &mut self,
        shard: ShardId,
        offset: i64,
        bytes: &[u8],
    ) -> Option<(u64, Hash)> {
        match BatchRecord::from_bytes(bytes) {
            Ok(record) if record.shard == shard && !record.is_empty() => {
                self.record(&record);
                return Some((record.last_sequence(), record.hash));
            }
            Ok(record) => {
                let expected = self.next_sequence(shard);
                self.find(
                    shard,
                    expected,
                    "misfiled_record",
                    format!(
                        "the record at offset {offset} of shard {shard}'s partition is of shard {} and holds {} entries",
                        record.shard,
                        record.len()
                    ),
                )
            }
            Err(error) => {
                let expected = self.next_sequence(shard);
                self.find(
                    shard,
                    expected,
                    "bad_checksum",
                    format!("offset {offset}: {error}"),
                )
            }
        }
        None
    }

    /// The sequence shard `shard`'s chain expects next.
    fn next_sequence(&self, shard: ShardId) -> u64 {
        self.shards
            .get(&shard)
            .map(|log| log.next_sequence)
            .unwrap_or(1)
    }

    /// Checks the next record of its shard. A record that breaks the chain
    /// is reported and then taken as the chain's new head, so one tampered
    /// record gives one finding, not one per later record.
    pub fn record(&mut self, record: &BatchRecord) {
        let shard = record.shard;
        let log = self.log(shard);
        let (expected, link) = (log.next_sequence, log.last_hash);
        if record.is_empty() {
            self.find(
                shard,
                record.first_sequence,
                "chain_gap",
                "a record holds no entry".into(),
            );
            return;
        }
        let mut findings = Vec::new();
        if record.first_sequence != expected {
            findings.push((
                record.first_sequence,
                "chain_gap",
                format!(
                    "the record starts at sequence {} where {expected} was expected",
                    record.first_sequence
                ),
            ));
        }
        if record.previous_hash != link {
            findings.push((
                record.first_sequence,
                "chain_link",
                "the record's previous hash is not the checksum of the shard's previous record"
                    .to_string(),
            ));
        }
        for (sequence, code, detail) in findings {
            self.find(shard, sequence, code, detail);
        }
        for logged in record.logged() {
            let event = match logged.event() {
                Ok(event) => event,
                Err(error) => {
                    self.find(
                        shard,
                        logged.sequence,
                        "undecodable_entry",
                        error.to_string(),
                    );
                    continue;
                }
            };
            self.entry(shard, logged.sequence, logged.entry, &event);
        }
        let log = self.shards.get_mut(&shard).expect("the shard's log exists");
        log.next_sequence = record.next_sequence();
        log.last_hash = record.hash;
        log.summary.records += 1;
        log.summary.entries += record.len();
        log.summary.last_sequence = record.last_sequence();
    }

    fn entry(&mut self, shard: ShardId, sequence: u64, entry: &Entry, event: &Event) {
        let postings = event.postings();
        let sum: i128 = postings
            .iter()
            .map(|posting| i128::from(posting.amount))
            .sum();
        if sum != 0 {
            self.find(
                shard,
                sequence,
                "unbalanced_postings",
                format!("the postings of {} sum to {sum}", event.type_name()),
            );
        }
        for posting in postings {
            let balance = self.accounts.entry(posting.account.clone()).or_insert(0);
            *balance += posting.amount;
            let below_zero = *balance < 0;
            if below_zero && matches!(posting.account, Account::Wallet(_) | Account::Pending(_)) {
                let balance = *balance;
                self.find(
                    shard,
                    sequence,
                    "negative_balance",
                    format!(
                        "{:?} is {balance} after {}",
                        posting.account,
                        event.type_name()
                    ),
                );
            }
        }
        match event {
            Event::MessageSent {
                to,
                sequence: message,
                ..
            } => {
                self.report.messages_sent += 1;
                let highest = self.sent.get(&(shard, *to)).copied().unwrap_or(0);
                if *message != highest + 1 {
                    let detail =
                        format!("message {message} to shard {to} sent after message {highest}");
                    self.find(shard, sequence, "message_out_of_order", detail);
                }
                self.sent.insert((shard, *to), highest.max(*message));
            }
            Event::MessageReceived {
                from,
                sequence: message,
            } => {
                self.report.messages_consumed += 1;
                let next = self
                    .consumed_next
                    .get(&(*from, shard))
                    .copied()
                    .unwrap_or(1);
                if *message != next {
                    let detail = format!(
                        "message {message} from shard {from} consumed where {next} was next"
                    );
                    self.find(shard, sequence, "message_out_of_order", detail);
                }
                self.consumed_next.insert((*from, shard), message + 1);
                self.consumed.push((*from, shard, *message, sequence));
            }
            _ => {}
        }
        let log = self.shards.get_mut(&shard).expect("the shard's log exists");
        if matches!(entry, Entry::Event { .. } | Entry::FormatOne { .. })
            && !matches!(
                event,
                Event::MessageSent { .. } | Event::MessageReceived { .. }
            )
        {
            log.summary.events += 1;
        }
        if log.replay_stopped {
            return;
        }
        let state = &mut log.state;
        let replayed = catch_unwind(AssertUnwindSafe(|| evolve(state, event)));
        if let Err(panic) = replayed {
            log.replay_stopped = true;
            let detail = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|text| text.to_string()))
                .unwrap_or_else(|| "the core refused the event".to_string());
            self.find(
                shard,
                sequence,
                "replay_refused",
                format!("replaying {} failed: {detail}", event.type_name()),
            );
        }
    }

    /// Cross-shard and whole-ledger checks, and the report.
    pub fn finish(mut self) -> Report {
        for (from, to, message, sequence) in std::mem::take(&mut self.consumed) {
            let sent = self.sent.get(&(from, to)).copied().unwrap_or(0);
            if message > sent {
                let detail = format!("message {message} from shard {from} was never sent to it");
                self.find(to, sequence, "message_not_sent", detail);
            }
        }
        let mut in_flight = 0;
        for (pair, sent) in &self.sent {
            let consumed = self.consumed_next.get(pair).copied().unwrap_or(1) - 1;
            in_flight += sent.saturating_sub(consumed);
        }
        self.report.messages_in_flight = in_flight;
        let mut trial = TrialBalance::default();
        for (account, amount) in &self.accounts {
            match account {
                Account::Issuance => trial.issuance += amount,
                Account::Wallet(user) => {
                    trial.wallets += amount;
                    self.report.balances.entry(user.clone()).or_default().0 += amount;
                }
                Account::Pending(user) => {
                    trial.pending += amount;
                    self.report.balances.entry(user.clone()).or_default().1 += amount;
                }
                Account::Fees => trial.fees += amount,
                Account::Clearing => trial.clearing += amount,
            }
        }
        trial.total = trial.issuance + trial.wallets + trial.pending + trial.fees + trial.clearing;
        trial.granted = -trial.issuance;
        if trial.total != 0 {
            let detail = format!("the postings of all accounts sum to {}", trial.total);
            self.find(ShardId(0), 0, "conservation", detail);
        }
        self.report.trial_balance = trial;
        for log in self.shards.values_mut() {
            log.summary.head_hash = hex(&log.last_hash);
        }
        self.report.shards = self.shards.into_values().map(|log| log.summary).collect();
        self.report
    }
}

/// `bytes` as lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        write!(text, "{byte:02x}").expect("writing to a string cannot fail");
    }
    text
}
