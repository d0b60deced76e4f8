//! The async engine: one task per shard, each a single writer that decides
//! a batch of inputs in memory, appends it durably (group commit), then
//! answers callers and hands its outgoing messages to the receiving shards.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use ledger_core::codec::MessageEnvelope;
use ledger_core::{Command, CommandMeta, Completion, Config, ShardId};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::metrics as names;
use crate::ports::{AppendReceipt, CommandBus, EventStore, ShardBatch, StoreError, SubmitError};
use crate::shard::{Reply, ShardRunner, Step};
use crate::snapshots::{SnapshotPermits, SnapshotWriter};

/// Limits and cadence of the engine.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub core: Config,
    /// Commands queued per shard before `submit` reports overload.
    pub command_queue_capacity: usize,
    /// Most inputs decided into one group commit.
    pub batch_inputs_max: usize,
    /// The ledger's clock tick (escrow release).
    pub tick_interval: Duration,
    /// A snapshot every this many events per shard.
    pub snapshot_every_events: u64,
    /// How long `submit` waits for a completion.
    pub submit_timeout: Duration,
}

impl EngineConfig {
    pub fn new(core: Config) -> Self {
        Self {
            core,
            command_queue_capacity: 16_384,
            batch_inputs_max: 4_096,
            tick_interval: Duration::from_secs(1),
            snapshot_every_events: 100_000,
            submit_timeout: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("cannot recover shard {shard}: {source}")]
    Recovery { shard: ShardId, source: StoreError },
    #[error("shard {shard} log is corrupt: {source}")]
    Corrupt {
        shard: ShardId,
        source: ledger_core::codec::CodecError,
    },
}

type Waiter = oneshot::Sender<Reply>;

struct CommandInput {
    command: Command,
    meta: CommandMeta,
    reply: Waiter,
}

/// Handle to the running engine; cheap to clone.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    config: EngineConfig,
    commands: Vec<mpsc::Sender<CommandInput>>,
    stopping: watch::Sender<bool>,
    tasks: std::sync::Mutex<Vec<JoinHandle<()>>>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Engine {
    /// Recovers every shard from the store and starts them.
    pub async fn start(
        store: Arc<dyn EventStore>,
        config: EngineConfig,
    ) -> Result<Engine, EngineError> {
        names::describe();
        let shard_count = config.core.shard_count;
        let core = Arc::new(config.core.clone());
        let mut runners = Vec::new();
        for index in 0..shard_count {
            let shard = ShardId(index);
            let recovery = store
                .recover(shard)
                .await
                .map_err(|source| EngineError::Recovery { shard, source })?;
            let runner = ShardRunner::<Waiter>::restore(shard, core.clone(), recovery)
                .map_err(|source| EngineError::Corrupt { shard, source })?;
            runners.push(runner);
        }
        let mut command_senders = Vec::new();
        let mut command_receivers = Vec::new();
        let mut message_senders = Vec::new();
        let mut message_receivers = Vec::new();
        for _ in 0..shard_count {
            let (sender, receiver) = mpsc::channel(config.command_queue_capacity);
            command_senders.push(sender);
            command_receivers.push(receiver);
            // Unbounded on purpose: shards must never block on each other
            // (two full queues would deadlock). Admission of commands is
            // bounded, and each command causes a bounded number of messages.
            let (sender, receiver) = mpsc::unbounded_channel::<MessageEnvelope>();
            message_senders.push(sender);
            message_receivers.push(receiver);
        }
        // Redeliver messages that were durable but not yet consumed.
        for runner in &runners {
            let pending = store
                .pending_messages(runner.shard(), &runner.state.inbound_next)
                .await
                .map_err(|source| EngineError::Recovery {
                    shard: runner.shard(),
                    source,
                })?;
            for message in pending {
                message_senders[runner.shard().0 as usize]
                    .send(message)
                    .expect("receiver is alive");
            }
        }
        let (stopping, stopping_receiver) = watch::channel(false);
        let mut tasks = Vec::new();
        let message_senders = Arc::new(message_senders);
        let snapshot_permits = SnapshotPermits::default();
        for ((runner, commands), messages) in runners
            .into_iter()
            .zip(command_receivers)
            .zip(message_receivers)
        {
            let (acknowledgements, pending) = mpsc::channel(ACKNOWLEDGEMENTS_IN_FLIGHT_MAX);
            let acknowledger = tokio::spawn(acknowledge(pending));
            let task = ShardTask {
                acknowledgements,
                runner,
                store: store.clone(),
                commands,
                messages,
                peers: message_senders.clone(),
                config: config.clone(),
                stopping: stopping_receiver.clone(),
                events_since_snapshot: 0,
                snapshots: SnapshotWriter::new(snapshot_permits.clone()),
            };
            tasks.push(tokio::spawn(async move {
                task.run().await;
                // `run` dropped its sender: the acknowledger ends after the last answer.
                let _ = acknowledger.await;
            }));
        }
        Ok(Engine {
            inner: Arc::new(Inner {
                config,
                commands: command_senders,
                stopping,
                tasks: std::sync::Mutex::new(tasks),
            }),
        })
    }

    /// Stops taking commands, lets shards finish their current batch and
    /// waits for them (messages still queued are redelivered on restart).
    pub async fn shutdown(&self) {
        let _ = self.inner.stopping.send(true);
        let tasks: Vec<JoinHandle<()>> =
            std::mem::take(&mut *self.inner.tasks.lock().expect("task list lock"));
        for task in tasks {
            let _ = task.await;
        }
    }

    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }
}

#[async_trait]
impl CommandBus for Engine {
    async fn submit(&self, command: Command, meta: CommandMeta) -> Result<Completion, SubmitError> {
        if *self.inner.stopping.borrow() {
            return Err(SubmitError::ShuttingDown);
        }
        let shard = self.inner.config.core.shard_of(&command.home_key());
        let (reply, answer) = oneshot::channel();
        let sender = &self.inner.commands[shard.0 as usize];
        match sender.try_send(CommandInput {
            command,
            meta,
            reply,
        }) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                metrics::counter!(names::OVERLOADED_TOTAL).increment(1);
                return Err(SubmitError::Overloaded);
            }
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(SubmitError::ShuttingDown),
        }
        let timeout = self.inner.config.submit_timeout;
        match tokio::time::timeout(timeout, answer).await {
            Err(_) => Err(SubmitError::Timeout {
                timeout_ms: timeout.as_millis() as u64,
            }),
            Ok(Err(_)) => Err(SubmitError::ShuttingDown),
            Ok(Ok(Reply::Completed(completion))) => Ok(completion),
            Ok(Ok(Reply::Refused(rejection))) => Ok(Completion {
                result: Err(rejection),
                positions: Vec::new(),
                deliveries: Vec::new(),
                retry_after_ms: None,
            }),
        }
    }
}

struct ShardTask {
    runner: ShardRunner<Waiter>,
    store: Arc<dyn EventStore>,
    commands: mpsc::Receiver<CommandInput>,
    messages: mpsc::UnboundedReceiver<MessageEnvelope>,
    peers: Arc<Vec<mpsc::UnboundedSender<MessageEnvelope>>>,
    config: EngineConfig,
    stopping: watch::Receiver<bool>,
    events_since_snapshot: u64,
    snapshots: SnapshotWriter,
    acknowledgements: mpsc::Sender<Acknowledgement>,
}

enum Wake {
    Command(CommandInput),
    Message(MessageEnvelope),
    Tick,
    Stop,
}

impl ShardTask {
    async fn run(mut self) {
        let mut ticker = tokio::time::interval(self.config.tick_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let wake = tokio::select! {
                biased;
                changed = self.stopping.changed() => {
                    if changed.is_err() || *self.stopping.borrow() { Wake::Stop } else { continue }
                }
                Some(message) = self.messages.recv() => Wake::Message(message),
                Some(command) = self.commands.recv() => Wake::Command(command),
                _ = ticker.tick() => Wake::Tick,
            };
            let mut step: Step<Waiter> = Step::default();
            let mut inputs = 0usize;
            match wake {
                Wake::Stop => {
                    self.commands.close();
                    // Answer commands already queued; nothing new comes in.
                    while let Ok(command) = self.commands.try_recv() {
                        self.on_command(command, &mut step);
                        inputs += 1;
                    }
                    self.commit(step, inputs).await;
                    break;
                }
                Wake::Message(message) => {
                    self.on_message(message, &mut step);
                    inputs += 1;
                }
                Wake::Command(command) => {
                    self.on_command(command, &mut step);
                    inputs += 1;
                }
                Wake::Tick => self.runner.tick(now_ms(), &mut step),
            }
            // Group commit: take whatever else is already queued, up to the limit.
            while inputs < self.config.batch_inputs_max {
                if let Ok(message) = self.messages.try_recv() {
                    self.on_message(message, &mut step);
                } else if let Ok(command) = self.commands.try_recv() {
                    self.on_command(command, &mut step);
                } else {
                    break;
                }
                inputs += 1;
            }
            self.commit(step, inputs).await;
        }
        self.snapshots.finish().await;
        self.runner.abandon_waiters();
    }

    fn on_command(&mut self, input: CommandInput, step: &mut Step<Waiter>) {
        metrics::counter!(names::COMMANDS_TOTAL).increment(1);
        self.runner
            .command(input.command, input.meta, input.reply, step);
    }

    fn on_message(&mut self, message: MessageEnvelope, step: &mut Step<Waiter>) {
        metrics::counter!(names::MESSAGES_TOTAL).increment(1);
        self.runner.message(message, now_ms(), step);
    }

    async fn commit(&mut self, mut step: Step<Waiter>, inputs: usize) {
        self.runner.seal(&mut step);
        if step.is_empty() {
            return;
        }
        let events = step.entries();
        let Step {
            records,
            messages,
            replies,
        } = step;
        let started = Instant::now();
        let head = records.last().map(|record| record.last_sequence());
        let receipt: AppendReceipt = if records.is_empty() {
            Box::pin(std::future::ready(Ok(())))
        } else {
            let batch = ShardBatch {
                shard: Some(self.runner.shard()),
                records,
                messages: messages.clone(),
            };
            match self.store.append_ordered(vec![batch]).await {
                Ok(receipt) => receipt,
                Err(error) => self.fail(error),
            }
        };
        self.events_since_snapshot += events;
        let acknowledgement = Acknowledgement {
            shard: self.runner.shard(),
            receipt,
            replies,
            started,
            events,
            inputs,
            head,
        };
        if self.store.orders_appends_globally() {
            // Effects of these messages are queued after this append, so they
            // cannot become durable without it: hand them over now, and answer
            // callers (in order) once the append is durable.
            self.deliver(messages);
            if self.acknowledgements.send(acknowledgement).await.is_err() {
                panic!("the acknowledger of shard {} stopped", self.runner.shard());
            }
        } else {
            acknowledgement.complete().await;
            self.deliver(messages);
        }
        if self.events_since_snapshot >= self.config.snapshot_every_events
            && self.snapshots.start(&mut self.runner, &self.store)
        {
            self.events_since_snapshot = 0;
        }
    }

    fn deliver(&self, messages: Vec<MessageEnvelope>) {
        for message in messages {
            // A closed peer means the engine is stopping; the message is durable and will be redelivered.
            let _ = self.peers[message.to.0 as usize].send(message);
        }
    }

    fn fail(&self, error: StoreError) -> ! {
        // The in-memory state is ahead of the log: the only safe move is to stop.
        tracing::error!(shard = %self.runner.shard(), %error, "append failed; stopping the process");
        std::process::abort();
    }
}

/// Answers owed once an append is durable.
struct Acknowledgement {
    shard: ShardId,
    receipt: AppendReceipt,
    replies: Vec<(Waiter, Reply)>,
    started: Instant,
    events: u64,
    inputs: usize,
    /// Last sequence of the records this acknowledgement makes durable.
    head: Option<u64>,
}

impl Acknowledgement {
    async fn complete(self) {
        if let Err(error) = self.receipt.await {
            tracing::error!(shard = %self.shard, %error, "append failed; stopping the process");
            std::process::abort();
        }
        if let Some(head) = self.head {
            names::record_shard_head(self.shard, head);
        }
        if self.events > 0 {
            metrics::histogram!(names::COMMIT_DURATION_SECONDS)
                .record(self.started.elapsed().as_secs_f64());
            metrics::counter!(names::EVENTS_TOTAL).increment(self.events);
            metrics::counter!(names::BATCHES_TOTAL).increment(1);
            metrics::histogram!(names::BATCH_INPUTS).record(self.inputs as f64);
        }
        for (waiter, reply) in self.replies {
            let _ = waiter.send(reply);
        }
    }
}

/// Most appends of one shard waiting for durability at once.
const ACKNOWLEDGEMENTS_IN_FLIGHT_MAX: usize = 64;

/// Answers a shard's callers in append order as appends become durable.
async fn acknowledge(mut acknowledgements: mpsc::Receiver<Acknowledgement>) {
    while let Some(acknowledgement) = acknowledgements.recv().await {
        acknowledgement.complete().await;
    }
}
