//! The sans-io shard runner: one shard's state, its hash chain and its
//! reorder buffer. The async runtime and the simulation both drive it, so
//! the code that seals events and consumes messages is the same everywhere.

use std::collections::BTreeMap;
use std::sync::Arc;

use ledger_core::codec::{CodecError, Envelope, Hash, MessageEnvelope, Snapshot, GENESIS_HASH};
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
    pub envelopes: Vec<Envelope>,
    pub messages: Vec<MessageEnvelope>,
    /// Answers to deliver once `envelopes` are durable.
    pub replies: Vec<(W, Reply)>,
}

impl<W> Default for Step<W> {
    fn default() -> Self {
        Self {
            envelopes: Vec::new(),
            messages: Vec::new(),
            replies: Vec::new(),
        }
    }
}

impl<W> Step<W> {
    pub fn is_empty(&self) -> bool {
        self.envelopes.is_empty() && self.replies.is_empty()
    }
}

/// One shard: state machine, hash chain, early-message buffer and the
/// callers waiting for commands to complete.
pub struct ShardRunner<W> {
    pub state: ShardState,
    pub last_hash: Hash,
    config: Arc<Config>,
    early: BTreeMap<(ShardId, u64), MessageEnvelope>,
    waiters: BTreeMap<String, Vec<W>>,
}

impl<W> ShardRunner<W> {
    pub fn new(shard: ShardId, config: Arc<Config>) -> Self {
        Self {
            state: ShardState::new(shard),
            last_hash: GENESIS_HASH,
            config,
            early: BTreeMap::new(),
            waiters: BTreeMap::new(),
        }
    }

    /// Rebuilds a shard from its latest snapshot and the log after it,
    /// checking the hash chain and the sequence of every event.
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
        for envelope in recovery.envelopes {
            if envelope.sequence < runner.state.next_sequence {
                continue;
            }
            if envelope.shard != shard
                || envelope.sequence != runner.state.next_sequence
                || envelope.previous_hash != runner.last_hash
            {
                return Err(CodecError::HashMismatch {
                    shard,
                    sequence: envelope.sequence,
                });
            }
            let event = envelope.event()?;
            evolve(&mut runner.state, &event);
            runner.last_hash = envelope.hash;
        }
        Ok(runner)
    }

    pub fn shard(&self) -> ShardId {
        self.state.shard
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            state: self.state.clone(),
            last_hash: self.last_hash,
        }
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
    ) -> Vec<String> {
        let mut completed = Vec::new();
        for event in events {
            let sequence = self.state.next_sequence;
            let envelope = Envelope::seal(
                &event,
                self.shard(),
                sequence,
                cause,
                timestamp_ms,
                self.last_hash,
            );
            self.last_hash = envelope.hash;
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
                Event::CommandCompleted { key, .. } => completed.push(key.clone()),
                _ => {}
            }
            evolve(&mut self.state, &event);
            step.envelopes.push(envelope);
        }
        completed
    }

    fn resolve(&mut self, completed: Vec<String>, step: &mut Step<W>) {
        for key in completed {
            if let Some(waiters) = self.waiters.remove(&key) {
                let completion = self
                    .completion(&key)
                    .expect("completed command has a completion");
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
            .and_then(|record| record.completion.clone())
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
        let cause = format!("command:{}", command.home_key());
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
                    Answer::OnCompletion(key) => match self.completion(&key) {
                        Some(completion) if !completed.contains(&key) => {
                            step.replies.push((waiter, Reply::Completed(completion)))
                        }
                        _ => self.waiters.entry(key).or_default().push(waiter),
                    },
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
                    let cause = format!("message:{}:{}", envelope.from, envelope.sequence);
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
