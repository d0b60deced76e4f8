//! `Out`: the events of one decision, with the sequence numbers they will get.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::ids::ShardId;
use crate::model::*;
use crate::state::{Config, ShardState};

use super::{Answer, Decision};

/// Builds the events of one decision, predicting sequence numbers.
pub(super) struct Out<'a> {
    pub(super) state: &'a ShardState,
    pub(super) config: &'a Config,
    pub(super) events: Vec<Event>,
    /// Messages sent to each receiver so far (a decision sends to a few
    /// shards: searched in order, no tree node allocated per decision).
    sent: Vec<(ShardId, u64)>,
    /// Messages sent by this decision.
    deliveries: Vec<DeliveryMark>,
}

impl<'a> Out<'a> {
    pub(super) fn new(state: &'a ShardState, config: &'a Config) -> Self {
        Self {
            state,
            config,
            events: Vec::new(),
            sent: Vec::new(),
            deliveries: Vec::new(),
        }
    }

    /// Position the next pushed event will have.
    pub(super) fn next_position(&self) -> ShardPosition {
        ShardPosition {
            shard: self.state.shard,
            sequence: self.state.next_sequence + self.events.len() as u64,
        }
    }

    pub(super) fn push(&mut self, event: Event) -> ShardPosition {
        let position = self.next_position();
        self.events.push(event);
        position
    }

    /// Sends `message`; returns the mark a read can wait on for its effects.
    pub(super) fn send(&mut self, to: ShardId, message: Message) -> DeliveryMark {
        let offset = match self.sent.iter_mut().find(|(receiver, _)| *receiver == to) {
            Some((_, offset)) => offset,
            None => {
                self.sent.push((to, 0));
                &mut self.sent.last_mut().expect("just pushed").1
            }
        };
        let sequence = self.state.next_outbound(to) + *offset;
        *offset += 1;
        let mark = DeliveryMark {
            from: self.state.shard,
            to,
            sequence,
        };
        self.deliveries.push(mark);
        self.events.push(Event::MessageSent {
            to,
            sequence,
            message: Arc::new(message),
        });
        mark
    }

    pub(super) fn shard_of(&self, key: &str) -> ShardId {
        self.config.shard_of(key)
    }

    /// Completes the command `key`. The completion covers `positions`, the
    /// positions its participants reported, this event, and the consumption
    /// of every message this decision sent (effects that follow completion).
    pub(super) fn complete(
        &mut self,
        key: &str,
        result: Result<Success, Rejection>,
        positions: Vec<ShardPosition>,
    ) {
        self.complete_with(key, result, positions, Vec::new());
    }

    pub(super) fn complete_with(
        &mut self,
        key: &str,
        result: Result<Success, Rejection>,
        positions: Vec<ShardPosition>,
        deliveries: Vec<DeliveryMark>,
    ) {
        let paid = result.is_ok();
        let completion = self.completion(key, result, positions, deliveries);
        self.push(Event::CommandCompleted {
            key: key.to_string(),
            completion,
        });
        self.purchase_finished(key, paid);
    }

    /// A takedown waiting for the purchase `key` (if it is one) learns it
    /// completed, `paid` or not (see [`super::takedown`]).
    fn purchase_finished(&mut self, key: &str, paid: bool) {
        if self.state.takedowns.scans.is_empty() {
            return;
        }
        if let Some(purchase_id) = keys::purchase_id(key) {
            super::takedown::purchase_finished(self, &purchase_id, paid);
        }
    }

    /// Completes the command `key` as `complete` does, its read position
    /// kept to one part per shard and per pair of shards: a read that has
    /// seen a shard's log up to a position has seen it up to every earlier
    /// one, and a consumed message means every earlier message between the
    /// same two shards was consumed (they are consumed in order). For a
    /// command that sends many messages (a cart), so its token stays within
    /// [`READ_POSITION_PARTS_MAX`] parts.
    pub(super) fn complete_compact(
        &mut self,
        key: &str,
        result: Result<Success, Rejection>,
        positions: Vec<ShardPosition>,
    ) {
        let mut completion = self.completion(key, result, positions, Vec::new());
        let mut latest: BTreeMap<ShardId, u64> = BTreeMap::new();
        for position in &completion.positions {
            let sequence = latest.entry(position.shard).or_insert(0);
            *sequence = (*sequence).max(position.sequence);
        }
        completion.positions = latest
            .into_iter()
            .map(|(shard, sequence)| ShardPosition { shard, sequence })
            .collect();
        let mut consumed: BTreeMap<(ShardId, ShardId), u64> = BTreeMap::new();
        for mark in &completion.deliveries {
            let sequence = consumed.entry((mark.from, mark.to)).or_insert(0);
            *sequence = (*sequence).max(mark.sequence);
        }
        completion.deliveries = consumed
            .into_iter()
            .map(|((from, to), sequence)| DeliveryMark { from, to, sequence })
            .collect();
        self.push(Event::CommandCompleted {
            key: key.to_string(),
            completion,
        });
    }

    /// Answers the running purchase `key` with a `rate_limited` refusal and
    /// forgets it (see [`crate::limits`]).
    pub(super) fn withdraw(&mut self, key: &str, rejection: Rejection, retry_after_ms: u64) {
        assert_eq!(rejection.code, RejectionCode::RateLimited);
        let completion = self.completion(key, Err(rejection), Vec::new(), Vec::new());
        self.push(Event::CommandWithdrawn {
            key: key.to_string(),
            completion,
            retry_after_ms,
        });
        self.purchase_finished(key, false);
    }

    /// Completes the purchase `key`, paid for `reservation` (which a refund
    /// reads later), as `complete` does.
    pub(super) fn complete_purchase(
        &mut self,
        key: &str,
        success: Success,
        positions: Vec<ShardPosition>,
        reservation: &Reservation,
    ) {
        let completion = self.completion(key, Ok(success), positions, Vec::new());
        self.push(Event::PurchaseCompleted {
            key: key.to_string(),
            completion,
            reservation: reservation.clone(),
        });
        self.purchase_finished(key, true);
    }

    /// The completion of `key` by the next event: it covers `positions`,
    /// the positions its participants reported, that event, and the
    /// consumption of `deliveries` and of every message this decision sent.
    fn completion(
        &self,
        key: &str,
        result: Result<Success, Rejection>,
        mut positions: Vec<ShardPosition>,
        mut deliveries: Vec<DeliveryMark>,
    ) -> Completion {
        if let Some(remembered) = self.state.commands.get(key) {
            positions.extend(remembered.record(key).positions.iter().copied());
        }
        positions.push(self.next_position());
        positions.sort();
        positions.dedup();
        deliveries.extend(self.deliveries.iter().copied());
        deliveries.sort();
        deliveries.dedup();
        Completion::new(result, positions, deliveries)
    }

    /// An answer given at once (for a command that is not remembered): it
    /// covers `positions` and the consumption of every message sent.
    pub(super) fn answer_now(
        &self,
        result: Result<Success, Rejection>,
        positions: Vec<ShardPosition>,
    ) -> Answer {
        let mut deliveries = self.deliveries.clone();
        deliveries.sort();
        Answer::Now(Completion::new(result, positions, deliveries))
    }

    pub(super) fn apply(self, answer: Answer) -> Decision {
        Decision::Apply {
            events: self.events,
            answer,
        }
    }
}
