//! The sans-io shard runner: one shard's state, its hash chain and its
//! reorder buffer. The async runtime and the simulation both drive it, so
//! the code that seals events and consumes messages is the same everywhere.

use std::collections::BTreeMap;
use std::sync::Arc;

use ledger_core::codec::{
    BatchRecord, CodecError, Entry, Hash, InputEntries, MessageEnvelope, Snapshot, GENESIS_HASH,
    RECORD_BYTES_MAX, RECORD_ENTRIES_MAX,
};
use ledger_core::{
    decide, evolve, Answer, Completion, Config, Decision, Event, Input, Rejection, ShardId,
    ShardState, TimestampMs,
};

use crate::ports::Recovery;

/// Most early (out-of-order) messages held per shard before it refuses more.
pub const EARLY_MESSAGES_MAX: usize = 1_000_000;

/// What to tell whoever is waiting on a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Completed(Completion),
    Refused(Rejection),
}

/// The durable effects and answers of processing some inputs.
#[derive(Debug)]
pub struct Step<W> {
    /// The sealed records (see [`ShardRunner::seal`]), usually one.
    pub records: Vec<BatchRecord>,
    pub messages: Vec<MessageEnvelope>,
    /// Answers to deliver once `records` are durable.
    pub replies: Vec<(W, Reply)>,
}

impl<W> Default for Step<W> {
    fn default() -> Self {
        Self {
            records: Vec::new(),
            messages: Vec::new(),
            replies: Vec::new(),
        }
    }
}

impl<W> Step<W> {
    pub fn is_empty(&self) -> bool {
        self.records.is_empty() && self.replies.is_empty()
    }

    /// Entries (sequence numbers) in the step's records.
    pub fn entries(&self) -> u64 {
        self.records.iter().map(BatchRecord::len).sum()
    }
}

/// The cause logged with a message's entries: `message:<from>:<sequence>`
/// (written without `format!`, which cost a shard more than any other part
/// of logging a message).
fn message_cause(from: ShardId, sequence: u64) -> String {
    let mut digits = itoa::Buffer::new();
    let mut cause = String::with_capacity(8 + 5 + 1 + 20);
    cause.push_str("message:");
    cause.push_str(digits.format(from.0));
    cause.push(':');
    cause.push_str(digits.format(sequence));
    cause
}

/// One shard: state machine, hash chain, early-message buffer and the
/// callers waiting for commands to complete.
pub struct ShardRunner<W> {
    pub state: ShardState,
    pub last_hash: Hash,
    config: Arc<Config>,
    early: BTreeMap<(ShardId, u64), MessageEnvelope>,
    waiters: BTreeMap<String, Vec<W>>,
    /// Entries applied since the last seal, and where they start.
    open: Vec<InputEntries>,
    open_entries: usize,
    open_bytes: usize,
    open_first_sequence: u64,
    /// Records closed because they reached `RECORD_ENTRIES_MAX`, not yet sealed into a step.
    closed: Vec<BatchRecord>,
}

impl<W> ShardRunner<W> {
    pub fn new(shard: ShardId, config: Arc<Config>) -> Self {
        Self {
            state: ShardState::new(shard),
            last_hash: GENESIS_HASH,
            config,
            early: BTreeMap::new(),
            waiters: BTreeMap::new(),
            open: Vec::new(),
            open_entries: 0,
            open_bytes: 0,
            open_first_sequence: 1,
            closed: Vec::new(),
        }
    }

    /// Rebuilds a shard from its latest snapshot and the log after it,
    /// checking the hash chain and the sequence of every record.
    pub fn restore(
        shard: ShardId,
        config: Arc<Config>,
        recovery: Recovery,
    ) -> Result<Self, CodecError> {
        let mut runner = Self::new(shard, config);
        if let Some(Snapshot { state, last_hash }) = recovery.snapshot {
            assert_eq!(state.shard, shard, "snapshot belongs to the shard");
            runner.state = state;
            runner.last_hash = last_hash;
        }
        for record in recovery.records {
            if record.next_sequence() <= runner.state.next_sequence {
                continue;
            }
            if record.shard != shard
                || record.first_sequence != runner.state.next_sequence
                || record.previous_hash != runner.last_hash
            {
                return Err(CodecError::HashMismatch {
                    shard,
                    sequence: record.first_sequence,
                });
            }
            for logged in record.logged() {
                evolve(&mut runner.state, &logged.event()?);
            }
            runner.last_hash = record.hash;
        }
        runner.open_first_sequence = runner.state.next_sequence;
        Ok(runner)
    }

    pub fn shard(&self) -> ShardId {
        self.state.shard
    }

    /// The state as it is now (a copy), to save or to fork.
    pub fn snapshot(&self) -> Snapshot {
        self.assert_between_records();
        Snapshot {
            state: self.state.clone(),
            last_hash: self.last_hash,
        }
    }

    /// The state as it is now, to save, for about the cost of
    /// [`ShardRunner::snapshot`]: the shard goes on with an equal copy
    /// whose growing maps are rebuilt full ([`ShardState::compacted`]),
    /// so every snapshot also gives back the memory that half-full B-tree
    /// nodes hold, and the snapshot takes the state as it was.
    pub fn snapshot_and_compact(&mut self) -> Snapshot {
        self.assert_between_records();
        let compacted = self.state.compacted();
        debug_assert!(compacted == self.state, "a compacted state is equal");
        Snapshot {
            state: std::mem::replace(&mut self.state, compacted),
            last_hash: self.last_hash,
        }
    }

    fn assert_between_records(&self) {
        assert!(
            self.open.is_empty() && self.closed.is_empty(),
            "a snapshot is taken between sealed records"
        );
    }

    pub fn early_messages(&self) -> usize {
        self.early.len()
    }

    pub fn waiting_commands(&self) -> usize {
        self.waiters.values().map(Vec::len).sum()
    }

    fn apply(
        &mut self,
        events: Vec<Event>,
        cause: &str,
        timestamp_ms: TimestampMs,
        step: &mut Step<W>,
    ) -> Vec<(String, Completion)> {
        let mut completed = Vec::new();
        let count = events.len();
        for (index, event) in events.into_iter().enumerate() {
            match &event {
                Event::MessageSent {
                    to,
                    sequence,
                    message,
                } => step.messages.push(MessageEnvelope {
                    from: self.shard(),
                    to: *to,
                    sequence: *sequence,
                    message: message.clone(),
                }),
                _ => {
                    if let Some((key, completion)) = event.completion() {
                        let mut completion = completion.clone();
                        if let Event::CommandWithdrawn { retry_after_ms, .. } = &event {
                            completion.retry_after_ms = Some(*retry_after_ms);
                        }
                        completed.push((key.to_string(), completion));
                    }
                }
            }
            // Logged before it is applied: a record closed to make room ends
            // at the state's current sequence.
            self.log(
                Entry::from_event(&event),
                cause,
                timestamp_ms,
                count - index,
            );
            evolve(&mut self.state, &event);
        }
        completed
    }

    /// Adds the entry of the event about to be applied to the open record,
    /// closing the open record first if the entry would not fit in it.
    /// `entries_left`: this entry and those of the same input after it (the
    /// room an input's entries are given at once).
    fn log(&mut self, entry: Entry, cause: &str, timestamp_ms: TimestampMs, entries_left: usize) {
        // The input's cause and time (bounded) plus the entry.
        let bytes = entry.encoded_size() + cause.len() + 32;
        assert!(
            bytes <= RECORD_BYTES_MAX,
            "an entry of {bytes} bytes fits no record"
        );
        if self.open_entries == RECORD_ENTRIES_MAX || self.open_bytes + bytes > RECORD_BYTES_MAX {
            let record = self.close();
            self.closed.push(record);
        }
        match self.open.last_mut() {
            Some(input) if input.cause == cause && input.timestamp_ms == timestamp_ms => {
                input.entries.push(entry)
            }
            _ => {
                let mut entries = Vec::with_capacity(entries_left);
                entries.push(entry);
                self.open.push(InputEntries {
                    cause: cause.to_string(),
                    timestamp_ms,
                    entries,
                })
            }
        }
        self.open_entries += 1;
        self.open_bytes += bytes;
    }

    /// Seals the open entries into one record chained to the last.
    fn close(&mut self) -> BatchRecord {
        let record = BatchRecord::seal(
            self.shard(),
            self.open_first_sequence,
            self.last_hash,
            std::mem::take(&mut self.open),
        );
        assert_eq!(record.next_sequence(), self.state.next_sequence);
        self.open_entries = 0;
        self.open_bytes = 0;
        self.open_first_sequence = self.state.next_sequence;
        self.last_hash = record.hash;
        record
    }

    /// Seals what the inputs since the last seal logged into `step.records`
    /// (one record, or more past `RECORD_ENTRIES_MAX` entries). Every driver
    /// calls it before making the step durable.
    pub fn seal(&mut self, step: &mut Step<W>) {
        step.records.append(&mut self.closed);
        if self.open_entries > 0 {
            let record = self.close();
            step.records.push(record);
        }
    }

    /// Answers the waiters of the commands the last events answered, from
    /// those events (a withdrawn command is no longer in the state).
    fn resolve(&mut self, completed: Vec<(String, Completion)>, step: &mut Step<W>) {
        for (key, completion) in completed {
            if let Some(waiters) = self.waiters.remove(&key) {
                for waiter in waiters {
                    step.replies
                        .push((waiter, Reply::Completed(completion.clone())));
                }
            }
        }
    }

    fn completion(&self, key: &str) -> Option<Completion> {
        self.state
            .commands
            .get(key)
            .and_then(|remembered| remembered.record(key).completion.clone())
    }

    /// Runs a command; `waiter` is answered through `step.replies`, now or
    /// when the command completes.
    pub fn command(
        &mut self,
        command: ledger_core::Command,
        meta: ledger_core::CommandMeta,
        waiter: W,
        step: &mut Step<W>,
    ) {
        let cause = ledger_core::keys::prefixed("command:", &command.home_key());
        let timestamp_ms = meta.at_ms;
        let input = Input::Command { command, meta };
        match decide(&self.state, &self.config, &input) {
            Decision::Refuse(rejection) => step.replies.push((waiter, Reply::Refused(rejection))),
            Decision::Apply { events, answer } => {
                let completed = self.apply(events, &cause, timestamp_ms, step);
                match answer {
                    Answer::Now(completion) => {
                        step.replies.push((waiter, Reply::Completed(completion)))
                    }
                    Answer::OnCompletion(key) => {
                        // Completed by these events: answered with them, below
                        // (before the remembered record, which is kept encoded).
                        let completed_now = completed.iter().any(|(done, _)| *done == key);
                        match (!completed_now).then(|| self.completion(&key)).flatten() {
                            Some(completion) => {
                                step.replies.push((waiter, Reply::Completed(completion)))
                            }
                            None => self.waiters.entry(key).or_default().push(waiter),
                        }
                    }
                    Answer::None => unreachable!("commands are answered"),
                }
                self.resolve(completed, step);
            }
            Decision::Duplicate | Decision::Early => {
                unreachable!("commands are never early or duplicate")
            }
        }
    }

    /// Consumes a message from another shard (or itself): duplicates are
    /// dropped, early ones held until the gap before them is filled.
    pub fn message(&mut self, envelope: MessageEnvelope, now_ms: TimestampMs, step: &mut Step<W>) {
        assert_eq!(
            envelope.to,
            self.shard(),
            "message delivered to its receiver"
        );
        let mut next = Some(envelope);
        while let Some(envelope) = next.take() {
            let input = Input::Message {
                from: envelope.from,
                sequence: envelope.sequence,
                message: envelope.message.clone(),
            };
            match decide(&self.state, &self.config, &input) {
                Decision::Duplicate => {}
                Decision::Early => {
                    assert!(
                        self.early.len() < EARLY_MESSAGES_MAX,
                        "too many early messages: a sender skipped a sequence"
                    );
                    self.early
                        .insert((envelope.from, envelope.sequence), envelope);
                }
                Decision::Apply { events, .. } => {
                    let cause = message_cause(envelope.from, envelope.sequence);
                    let completed = self.apply(events, &cause, now_ms, step);
                    self.resolve(completed, step);
                    let following = (envelope.from, envelope.sequence + 1);
                    next = self.early.remove(&following);
                }
                Decision::Refuse(rejection) => panic!("a message is never refused: {rejection:?}"),
            }
        }
    }

    /// Advances the ledger's clock: releases escrow that is due.
    pub fn tick(&mut self, now_ms: TimestampMs, step: &mut Step<W>) {
        match decide(&self.state, &self.config, &Input::Tick { now_ms }) {
            Decision::Apply { events, .. } => {
                let completed = self.apply(events, "tick", now_ms, step);
                assert!(completed.is_empty(), "ticks complete no command");
            }
            other => panic!("a tick is always applied: {other:?}"),
        }
    }

    /// Drops every waiter (their callers see the channel close).
    pub fn abandon_waiters(&mut self) {
        self.waiters.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ledger_core::{Actor, Command, CommandMeta, GrantId, Role, UserId};

    #[test]
    fn a_message_cause_names_its_sender_and_sequence() {
        assert_eq!(message_cause(ShardId(3), 42), "message:3:42");
        assert_eq!(
            message_cause(ShardId(u16::MAX), u64::MAX),
            format!("message:{}:{}", u16::MAX, u64::MAX)
        );
    }

    /// One step too large for one record: it is sealed into several, each
    /// within the bounds, contiguous and chained, and they replay to the
    /// live state.
    #[test]
    fn a_step_past_the_record_bounds_is_sealed_into_chained_records() {
        let config = Arc::new(Config::new(1));
        let mut runner: ShardRunner<()> = ShardRunner::new(ShardId(0), config.clone());
        let mut step = Step::default();
        let meta = CommandMeta {
            at_ms: 1_000,
            actor: Actor {
                role: Role::Service,
                user_id: UserId::parse("service").expect("valid id"),
            },
        };
        let mut pending: Vec<MessageEnvelope> = Vec::new();
        for n in 0..6_000 {
            let grant = Command::Grant {
                grant_id: GrantId::parse(format!("g-{n}")).expect("valid id"),
                user_id: UserId::parse(format!("u-{n}")).expect("valid id"),
                amount: 10,
            };
            runner.command(grant, meta.clone(), (), &mut step);
            pending.append(&mut step.messages);
        }
        // The grants' messages to the (same) user shard, and their answers.
        while !pending.is_empty() {
            for message in std::mem::take(&mut pending) {
                runner.message(message, 1_000, &mut step);
            }
            pending.append(&mut step.messages);
        }
        runner.seal(&mut step);
        let records = step.records;
        assert!(records.len() > 2, "{} records", records.len());
        let mut next = 1;
        let mut previous = GENESIS_HASH;
        for record in &records {
            assert_eq!(record.first_sequence, next);
            assert_eq!(record.previous_hash, previous);
            assert!(record.len() as usize <= RECORD_ENTRIES_MAX);
            assert!(record.to_bytes().len() <= RECORD_BYTES_MAX + 64);
            next = record.next_sequence();
            previous = record.hash;
        }
        assert_eq!(next, runner.state.next_sequence);
        assert_eq!(previous, runner.last_hash);
        let replayed = ShardRunner::<()>::restore(
            ShardId(0),
            config,
            Recovery {
                snapshot: None,
                records,
            },
        )
        .expect("the records replay");
        assert!(replayed.state == runner.state);
        // Nothing is left open: a snapshot can be taken.
        let _ = runner.snapshot();
    }
}
