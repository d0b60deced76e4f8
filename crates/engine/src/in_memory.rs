//! Every shard of a ledger in one thread, messages delivered in memory in
//! order, no storage: the unchanged `ShardRunner`s, for benchmarks and
//! measuring tools that need the engine's real output (its events, its
//! messages) without its I/O.

use std::collections::VecDeque;
use std::sync::Arc;

use ledger_core::codec::{BatchRecord, MessageEnvelope};
use ledger_core::{
    Actor, Command, CommandMeta, Completion, Config, Role, ShardId, ShardState, TimestampMs, UserId,
};

use crate::ports::Recovery;
use crate::shard::{Reply, ShardRunner, Step};

/// How the commands ended, counted from the replies.
#[derive(Debug, Default)]
pub struct Outcomes {
    pub succeeded: usize,
    pub failed: usize,
    pub first_failure: Option<String>,
}

/// What a cluster keeps of its output.
#[derive(Debug, Default)]
pub struct Recorded {
    /// Every record, in the order the shards sealed them: a valid global
    /// commit order (causes before effects).
    pub records: Vec<BatchRecord>,
    /// Every message sent, in the order sent.
    pub messages: Vec<MessageEnvelope>,
}

pub struct InMemoryCluster {
    pub config: Arc<Config>,
    pub runners: Vec<ShardRunner<()>>,
    network: VecDeque<MessageEnvelope>,
    outcomes: Outcomes,
    /// `None` unless recording: the timed paths of a benchmark skip the copy.
    recorded: Option<Recorded>,
    /// Replies collected while [`InMemoryCluster::answer`] runs.
    replies: Option<Vec<Reply>>,
    /// The clock the commands and messages see.
    pub now_ms: TimestampMs,
    /// `None` unless timing steps (see [`InMemoryCluster::time_steps`]).
    step_times: Option<Vec<(ShardId, std::time::Duration)>>,
    /// `Some` (one open step per shard) when sealing per group commit (see
    /// [`InMemoryCluster::group_commit`]); `None` seals after every input.
    open_steps: Option<Vec<Step<()>>>,
}

impl InMemoryCluster {
    pub fn new(shards: u16) -> InMemoryCluster {
        Self::with_config(Arc::new(Config::new(shards)))
    }

    pub fn with_config(config: Arc<Config>) -> InMemoryCluster {
        let runners = (0..config.shard_count)
            .map(|shard| ShardRunner::new(ShardId(shard), config.clone()))
            .collect();
        InMemoryCluster {
            config,
            runners,
            network: VecDeque::new(),
            outcomes: Outcomes::default(),
            recorded: None,
            replies: None,
            now_ms: 1_000,
            step_times: None,
            open_steps: None,
        }
    }

    /// From now on, seals as the runtime does: every input a shard has
    /// waiting is applied, then the shard seals one record for all of them
    /// (a group commit), and only then are their messages sent and their
    /// commands answered. Delivery goes in rounds: each round, every shard
    /// takes what was sent to it in the round before. Without it (the
    /// default) the cluster seals one record per input.
    pub fn group_commit(&mut self) {
        assert!(self.network.is_empty(), "switch a quiescent cluster");
        self.open_steps = Some((0..self.runners.len()).map(|_| Step::default()).collect());
    }

    /// Starts keeping every record and message from now on.
    pub fn record(&mut self) {
        self.recorded.get_or_insert_with(Recorded::default);
    }

    /// What was kept since `record` (and stops keeping).
    pub fn take_recorded(&mut self) -> Recorded {
        self.recorded.take().unwrap_or_default()
    }

    /// Entries (sequence numbers) kept so far.
    pub fn recorded_entries(&self) -> u64 {
        self.recorded.as_ref().map_or(0, |recorded| {
            recorded.records.iter().map(BatchRecord::len).sum()
        })
    }

    /// An independent copy of a quiescent cluster, with fresh outcome
    /// counts, through snapshot and restore (a quiescent shard holds no
    /// early message and no waiter, so its snapshot is all of it).
    pub fn fork(&self) -> InMemoryCluster {
        assert!(self.network.is_empty(), "fork a quiescent cluster");
        let runners = self
            .runners
            .iter()
            .map(|runner| {
                assert_eq!((runner.early_messages(), runner.waiting_commands()), (0, 0));
                let recovery = Recovery {
                    snapshot: Some(runner.snapshot()),
                    records: Vec::new(),
                };
                ShardRunner::restore(runner.shard(), self.config.clone(), recovery)
                    .expect("a snapshot restores")
            })
            .collect();
        InMemoryCluster {
            config: self.config.clone(),
            runners,
            network: VecDeque::new(),
            outcomes: Outcomes::default(),
            recorded: None,
            replies: None,
            now_ms: self.now_ms,
            step_times: None,
            open_steps: None,
        }
    }

    fn absorb(&mut self, step: Step<()>) {
        if let Some(replies) = &mut self.replies {
            replies.extend(step.replies.iter().map(|(_, reply)| reply.clone()));
        }
        for (_, reply) in &step.replies {
            match reply {
                Reply::Completed(Completion { result: Ok(_), .. }) => self.outcomes.succeeded += 1,
                failure => {
                    self.outcomes.failed += 1;
                    if self.outcomes.first_failure.is_none() {
                        self.outcomes.first_failure = Some(format!("{failure:?}"));
                    }
                }
            }
        }
        if let Some(recorded) = &mut self.recorded {
            recorded.records.extend(step.records);
            recorded.messages.extend(step.messages.iter().cloned());
        }
        self.network.extend(step.messages);
    }

    /// Decides one command on its home shard (as a `service` caller; roles
    /// are the API's concern, not the engine's).
    pub fn submit(&mut self, command: Command) {
        self.submit_as(command, Role::Service);
    }

    /// Decides one command on its home shard, as a caller with `role`.
    pub fn submit_as(&mut self, command: Command, role: Role) {
        let meta = CommandMeta {
            at_ms: self.now_ms,
            actor: Actor {
                role,
                user_id: UserId::parse("in-memory").expect("literal id"),
            },
        };
        let shard = self.config.shard_of(&command.home_key());
        let runner = &mut self.runners[shard.0 as usize];
        if let Some(open_steps) = &mut self.open_steps {
            runner.command(command, meta, (), &mut open_steps[shard.0 as usize]);
            return;
        }
        let mut step = Step::default();
        runner.command(command, meta, (), &mut step);
        runner.seal(&mut step);
        self.absorb(step);
    }

    /// Runs `command` alone until the cluster is quiescent and returns its
    /// answer (the one reply since the last call).
    pub fn answer(&mut self, command: Command) -> Reply {
        self.answer_as(command, Role::Service)
    }

    /// As [`InMemoryCluster::answer`], as a caller with `role`.
    pub fn answer_as(&mut self, command: Command, role: Role) -> Reply {
        self.replies = Some(Vec::new());
        self.submit_as(command, role);
        self.drain();
        let mut replies = self.replies.take().unwrap_or_default();
        assert_eq!(replies.len(), 1, "one command, one answer: {replies:?}");
        replies.remove(0)
    }

    /// Delivers messages until none is left.
    pub fn drain(&mut self) {
        if self.open_steps.is_some() {
            return self.drain_in_group_commits();
        }
        while let Some(message) = self.network.pop_front() {
            let shard = message.to.0 as usize;
            let started = self.step_times.is_some().then(std::time::Instant::now);
            let mut step = Step::default();
            self.runners[shard].message(message, self.now_ms, &mut step);
            self.runners[shard].seal(&mut step);
            if let (Some(started), Some(times)) = (started, &mut self.step_times) {
                times.push((ShardId(shard as u16), started.elapsed()));
            }
            self.absorb(step);
        }
    }

    /// [`InMemoryCluster::drain`] when sealing per group commit.
    fn drain_in_group_commits(&mut self) {
        loop {
            for shard in 0..self.runners.len() {
                let open_steps = self.open_steps.as_mut().expect("group commit");
                let mut step = std::mem::take(&mut open_steps[shard]);
                self.runners[shard].seal(&mut step);
                self.absorb(step);
            }
            if self.network.is_empty() {
                return;
            }
            let round = std::mem::take(&mut self.network);
            let open_steps = self.open_steps.as_mut().expect("group commit");
            for message in round {
                let shard = message.to.0 as usize;
                self.runners[shard].message(message, self.now_ms, &mut open_steps[shard]);
            }
        }
    }

    /// Delivers every message, except that those `hold_back` picks wait
    /// until nothing else is left (then all are delivered, in order): a
    /// network that is slow on some path. A shard keeps a message that
    /// arrives ahead of one held back until that one comes.
    pub fn drain_holding_back(&mut self, hold_back: impl Fn(&MessageEnvelope) -> bool) {
        assert!(self.open_steps.is_none(), "not with group commits");
        let mut held = VecDeque::new();
        while let Some(message) = self.network.pop_front() {
            if hold_back(&message) {
                held.push_back(message);
                continue;
            }
            let shard = message.to.0 as usize;
            let mut step = Step::default();
            self.runners[shard].message(message, self.now_ms, &mut step);
            self.runners[shard].seal(&mut step);
            self.absorb(step);
        }
        self.network.extend(held);
        self.drain();
    }

    /// Starts timing every message step (decide, apply, seal) from now on.
    pub fn time_steps(&mut self) {
        self.step_times.get_or_insert_with(Vec::new);
    }

    /// The shard and duration of every message step timed since
    /// `time_steps` (and stops timing).
    pub fn take_step_times(&mut self) -> Vec<(ShardId, std::time::Duration)> {
        self.step_times.take().unwrap_or_default()
    }

    /// Submits `commands`, delivering messages in waves of 256 commands as a
    /// shard's batch would, until the cluster is quiescent.
    pub fn run(&mut self, commands: impl IntoIterator<Item = Command>) {
        for (n, command) in commands.into_iter().enumerate() {
            self.submit(command);
            if n % 256 == 255 {
                self.drain();
            }
        }
        self.drain();
    }

    /// Advances every shard's clock to `now_ms` (due escrow is released).
    pub fn tick(&mut self, now_ms: TimestampMs) {
        assert!(self.open_steps.is_none(), "not with group commits");
        self.now_ms = now_ms;
        for shard in 0..self.runners.len() {
            let mut step = Step::default();
            self.runners[shard].tick(now_ms, &mut step);
            self.runners[shard].seal(&mut step);
            self.absorb(step);
        }
        self.drain();
    }

    /// Panics unless exactly `count` commands completed since the cluster
    /// was made or forked, or since the last check, all successfully (a
    /// measurement must not count refusals). Starts counting afresh.
    pub fn expect_succeeded(&mut self, count: usize) {
        assert!(self.network.is_empty(), "messages left undelivered");
        let outcomes = std::mem::take(&mut self.outcomes);
        assert_eq!(
            (outcomes.succeeded, outcomes.failed),
            (count, 0),
            "commands did not all succeed; first failure: {:?}",
            outcomes.first_failure
        );
    }

    /// The state of the shard that owns `key`.
    pub fn state_of(&self, key: &str) -> &ShardState {
        &self.runners[self.config.shard_of(key).0 as usize].state
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ledger_core::{Account, GrantId};

    fn grant(n: usize, amount: i64) -> Command {
        Command::Grant {
            grant_id: GrantId::parse(format!("g-{n}")).unwrap(),
            user_id: UserId::parse(format!("u-{n}")).unwrap(),
            amount,
        }
    }

    fn publish(item: &str, supply: Option<u32>) -> Command {
        Command::PublishItem(ledger_core::ItemDefinition {
            item_id: ledger_core::ItemId::parse(item).unwrap(),
            creator_id: UserId::parse("creator").unwrap(),
            name: "thing".into(),
            price: 3,
            supply,
            max_per_user: None,
            starts_at_ms: None,
            ends_at_ms: None,
            resellable: false,
            kind: Default::default(),
        })
    }

    fn purchase(n: usize, buyer: usize, item: &str) -> Command {
        Command::Purchase {
            purchase_id: ledger_core::PurchaseId::parse(format!("p-{n:04}")).unwrap(),
            buyer_id: UserId::parse(format!("u-{buyer}")).unwrap(),
            target: ledger_core::PurchaseTarget::Item(ledger_core::ItemId::parse(item).unwrap()),
            expected_price: 3,
            region: None,
        }
    }

    /// A snapshot that compacts the shard's maps takes the state as it was,
    /// and the shard goes on with an equal one that decides the same: the
    /// same commands after it leave the same states as without it.
    #[test]
    fn a_compacting_snapshot_changes_nothing_the_shard_decides() {
        let setup = || {
            let mut cluster = InMemoryCluster::new(4);
            cluster.run((0..60).map(|n| grant(n, 50)));
            cluster.run([publish("hat", None), publish("crown", Some(20))]);
            cluster.run((0..60).map(|n| purchase(n, n, if n % 3 == 0 { "crown" } else { "hat" })));
            cluster.expect_succeeded(60 + 2 + 60);
            cluster
        };
        let mut compacted = setup();
        let mut plain = setup();
        for runner in &mut compacted.runners {
            let before = runner.state.clone();
            let snapshot = runner.snapshot_and_compact();
            assert!(
                snapshot.state == before,
                "the snapshot is the state as it was"
            );
            assert!(
                runner.state == before,
                "the shard goes on with an equal state"
            );
            assert_eq!(snapshot.last_hash, runner.last_hash);
        }
        // Repeats (already owned), new buyers of both items, a sold-out
        // crown: the same answers and the same states.
        let more =
            || (0..80).map(|n| purchase(60 + n, n % 70, if n % 2 == 0 { "crown" } else { "hat" }));
        compacted.run(more());
        plain.run(more());
        let outcomes = |cluster: &mut InMemoryCluster| {
            let outcomes = std::mem::take(&mut cluster.outcomes);
            (outcomes.succeeded, outcomes.failed)
        };
        let (succeeded, failed) = outcomes(&mut compacted);
        assert!(
            succeeded > 0 && failed > 0,
            "{succeeded} succeeded, {failed} refused"
        );
        assert_eq!((succeeded, failed), outcomes(&mut plain));
        for (left, right) in compacted.runners.iter().zip(&plain.runners) {
            assert!(left.state == right.state);
            assert_eq!(left.last_hash, right.last_hash);
        }
    }

    #[test]
    fn commands_finish_across_shards_and_are_recorded() {
        let mut cluster = InMemoryCluster::new(4);
        cluster.record();
        cluster.run((0..40).map(|n| grant(n, 5)));
        cluster.expect_succeeded(40);
        let user = UserId::parse("u-7").unwrap();
        let state = cluster.state_of(&ledger_core::keys::user(&user));
        assert_eq!(state.balance(&Account::Wallet(user)), 5);
        let recorded = cluster.take_recorded();
        assert!(!recorded.records.is_empty());
        assert!(
            !recorded.messages.is_empty(),
            "a grant credits the user's shard by message"
        );
    }

    #[test]
    fn group_commits_seal_one_record_per_shard_and_round_with_the_same_effects() {
        let grants = || (0..40).map(|n| grant(n, 5)).collect::<Vec<_>>();
        let mut per_input = InMemoryCluster::new(4);
        per_input.record();
        per_input.run(grants());
        per_input.expect_succeeded(40);
        let mut grouped = InMemoryCluster::new(4);
        grouped.group_commit();
        grouped.record();
        grouped.run(grants());
        grouped.expect_succeeded(40);
        for (one, other) in per_input.runners.iter().zip(&grouped.runners) {
            assert_eq!(one.state.next_sequence, other.state.next_sequence);
            assert_eq!(one.state.balances, other.state.balances);
        }
        let per_input = per_input.take_recorded().records.len();
        let grouped = grouped.take_recorded().records;
        // A grant is three inputs (the command, its credit on the user's
        // shard, the answer back home): at most one record per shard for each.
        assert!(grouped.len() <= 3 * 4, "{} records", grouped.len());
        assert!(per_input >= 3 * 40 - 40, "{per_input} records");
        let mut last = std::collections::BTreeMap::new();
        for record in &grouped {
            let hash = last.insert(record.shard, record.hash);
            assert_eq!(
                record.previous_hash,
                hash.unwrap_or(ledger_core::codec::GENESIS_HASH)
            );
        }
    }

    #[test]
    fn a_fork_is_independent_and_a_repeat_is_not_applied_twice() {
        let mut cluster = InMemoryCluster::new(2);
        cluster.run([grant(1, 5)]);
        cluster.expect_succeeded(1);
        let mut fork = cluster.fork();
        fork.run([grant(1, 5), grant(2, 9)]);
        fork.expect_succeeded(2);
        let user = UserId::parse("u-1").unwrap();
        let balance = |cluster: &InMemoryCluster| {
            cluster
                .state_of(&ledger_core::keys::user(&user))
                .balance(&Account::Wallet(user.clone()))
        };
        assert_eq!(
            balance(&fork),
            5,
            "the repeated grant is answered, not applied"
        );
        let other = UserId::parse("u-2").unwrap();
        assert_eq!(
            cluster
                .state_of(&ledger_core::keys::user(&other))
                .balance(&Account::Wallet(other.clone())),
            0,
            "the original does not see the fork's grant"
        );
    }
}
