//! An engine worker: owns the shards the consumer group `ledger-engine`
//! assigns it (partition `p` of the commands and shard-messages topics is
//! shard `p`; the range assignor gives both topics' partition `p` to the
//! same member), and runs each with the same [`ShardRunner`] as the embedded
//! engine.
//!
//! One loop, one batch at a time:
//!
//! 1. poll up to `batch_inputs_max` records (commands and messages);
//! 2. decide them in memory, shard by shard, and seal each shard's entries
//!    into its record (usually one per shard and batch);
//! 3. for every shard with output, concurrently: append its records to CQL
//!    (one conditional write per record: a shard has one writer), answer
//!    its callers (replies sent outside any transaction: what they report
//!    is durable), then queue the batch for the shard's publisher, a task
//!    that runs ONE Kafka transaction at a time holding the records, the
//!    messages and the consumed input offsets (`send_offsets_to_transaction`)
//!    of every batch queued since its last one. The loop never waits for a transaction (only for
//!    room in the bounded queue), so a shard's next hop is decided while
//!    its previous batch is still being published; a revocation waits for
//!    queued and running transactions inside the rebalance callback, so a
//!    shard is never handed over mid-commit;
//! 4. hand messages to shards this worker owns as soon as they are in CQL,
//!    without waiting for Kafka (their Kafka copies arrive later and are
//!    dropped as duplicates). Callers are answered once their batch is in
//!    CQL; Kafka publication follows (a takeover completes it).
//!
//! CQL is the shard's source of truth; Kafka publishes it, record for
//! record. A worker that dies between the two leaves records in CQL that
//! Kafka lacks: whoever takes the shard over fences the old producer
//! (`init_transactions`), compares the CQL log with the last record on Kafka
//! and publishes the records after it before it decides anything. Inputs whose offsets were not committed are consumed
//! again; the shard's state already holds their effects, so commands answer
//! from their idempotency record and messages are dropped as duplicates.
//!
//! A failed append or transaction stops the process (the in-memory state is
//! ahead of what is durable: crash, don't limp); the group moves its shards.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use engine::ports::{EventStore, ShardBatch, StoreError};
use engine::shard::{Reply, ShardRunner, Step};
use engine::snapshots::{SnapshotPermits, SnapshotWriter};
use engine::EngineConfig;
use ledger_core::codec::{BatchRecord, CommandRecord, Entry, MessageEnvelope, ReplyRecord};
use ledger_core::{Completion, Event, ShardId};
use log_kafka::rdkafka::consumer::{
    BaseConsumer, Consumer, ConsumerContext, ConsumerGroupMetadata, Rebalance,
};
use log_kafka::rdkafka::error::KafkaError;
use log_kafka::rdkafka::message::Message;
use log_kafka::rdkafka::ClientContext;
use log_kafka::{
    ConsumedOffsets, KafkaConfig, ReplyProducer, ReplyRecordOut, ShardTransactionalWriter, Topics,
};
use tokio::sync::watch;

use crate::metrics as names;

/// How the worker joins the group and paces itself.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// Consumer group of the engine workers.
    pub group_id: String,
    /// Prefix of the per-shard transactional ids (`<prefix>-engine-<shard>`).
    pub transactional_prefix: String,
    /// A member that misses heartbeats this long loses its shards.
    pub session_timeout: Duration,
    /// Longest wait for the first record of a batch.
    pub poll_wait: Duration,
    /// Bound of the takeover search for the last published record.
    pub takeover_timeout: Duration,
}

impl WorkerSettings {
    pub fn new(topic_prefix: &str) -> Self {
        Self {
            group_id: format!("{topic_prefix}-engine"),
            transactional_prefix: topic_prefix.to_string(),
            session_timeout: Duration::from_secs(6),
            poll_wait: Duration::from_millis(5),
            takeover_timeout: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("cannot create the engine consumer for {bootstrap}: {source}")]
    Consumer {
        bootstrap: String,
        source: KafkaError,
    },
    #[error("cannot subscribe to {topics}: {source}")]
    Subscribe { topics: String, source: KafkaError },
    #[error("cannot create the engine's reply producer: {source}")]
    Replies { source: log_kafka::WriteError },
}

/// Where a command's answer goes.
#[derive(Debug, Clone)]
struct ReplyAddress {
    partition: i32,
    request_id: String,
}

/// Rebalance news, recorded by the consumer's callbacks (which run inside
/// `poll`) and acted on by the loop between batches.
#[derive(Debug)]
enum Ownership {
    Revoked(Vec<i32>),
    Assigned(Vec<i32>),
}

/// Kafka transactions running in the background. A revocation waits for
/// them (inside the rebalance callback) so a shard is never handed over
/// while its last batch is still being committed.
#[derive(Default)]
struct TransactionsInFlight {
    count: Mutex<usize>,
    settled: std::sync::Condvar,
}

/// Reads and claims of a shard's log at takeover before giving up: each
/// retry means the previous owner appended in between, which it stops
/// doing once its own next append meets the claim.
const TAKEOVER_CLAIMS_MAX: u32 = 20;

/// Longest wait of a revocation for the transactions in flight.
const REVOCATION_WAIT_MAX: Duration = Duration::from_secs(60);

impl TransactionsInFlight {
    fn begin(self: &Arc<Self>) -> InFlightGuard {
        *self.count.lock().expect("in-flight lock") += 1;
        InFlightGuard(self.clone())
    }

    /// Blocks (the consumer's thread, in a rebalance callback) until none runs.
    fn wait_until_settled(&self, bound: Duration) -> bool {
        let count = self.count.lock().expect("in-flight lock");
        let (count, timeout) = self
            .settled
            .wait_timeout_while(count, bound, |count| *count > 0)
            .expect("in-flight lock");
        !timeout.timed_out() || *count == 0
    }
}

/// Counts one transaction in flight until dropped.
struct InFlightGuard(Arc<TransactionsInFlight>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        let mut count = self.0.count.lock().expect("in-flight lock");
        *count -= 1;
        if *count == 0 {
            self.0.settled.notify_all();
        }
    }
}

/// Whether the worker is consuming, for readiness: its loop turns, and no
/// owned input partition has records waiting that it has stopped reading.
#[derive(Debug)]
pub struct WorkerHealth {
    started: Instant,
    /// Milliseconds after `started` when the loop last finished a batch.
    loop_turned_ms: AtomicU64,
    /// Owned input partitions with records waiting and no progress over a
    /// whole [`STALL_AFTER`].
    stalled_partitions: AtomicU64,
}

/// A partition with records waiting that made no progress this long is stalled.
pub const STALL_AFTER: Duration = Duration::from_secs(10);
/// How often the worker compares its positions with the partitions' ends.
const PROGRESS_CHECK_INTERVAL: Duration = Duration::from_secs(5);

impl WorkerHealth {
    fn new() -> Self {
        Self {
            started: Instant::now(),
            loop_turned_ms: AtomicU64::new(0),
            stalled_partitions: AtomicU64::new(0),
        }
    }

    fn loop_turned(&self) {
        self.loop_turned_ms
            .store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// The loop finished a batch within [`STALL_AFTER`] and no owned input
    /// partition is stalled.
    pub fn is_consuming(&self) -> bool {
        let since_turn_ms = (self.started.elapsed().as_millis() as u64)
            .saturating_sub(self.loop_turned_ms.load(Ordering::Relaxed));
        since_turn_ms < STALL_AFTER.as_millis() as u64
            && self.stalled_partitions.load(Ordering::Relaxed) == 0
    }

    /// Owned input partitions with records waiting and no progress.
    pub fn stalled_partitions(&self) -> u64 {
        self.stalled_partitions.load(Ordering::Relaxed)
    }
}

/// Input partitions' positions at the previous progress check, and since when
/// each has had records waiting without moving.
#[derive(Default)]
struct ProgressWatch {
    checked_at: Option<Instant>,
    /// (topic, partition) → (position, waiting since).
    waiting: Waiting,
    /// The measurement running on the blocking pool.
    measuring: Option<tokio::task::JoinHandle<Vec<PartitionProgress>>>,
}

/// One owned input partition: the consumer's position and the partition's end.
struct PartitionProgress {
    topic: String,
    partition: i32,
    position: i64,
    /// `None` when the end could not be read.
    end: Option<i64>,
}

struct GroupContext {
    commands_topic: String,
    news: Mutex<Vec<Ownership>>,
    generation: AtomicU64,
    in_flight: Arc<TransactionsInFlight>,
}

impl GroupContext {
    fn partitions(&self, list: &log_kafka::rdkafka::TopicPartitionList) -> Vec<i32> {
        list.elements()
            .iter()
            .filter(|element| element.topic() == self.commands_topic)
            .map(|element| element.partition())
            .collect()
    }
}

impl ClientContext for GroupContext {}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(list) = rebalance {
            if !self.in_flight.wait_until_settled(REVOCATION_WAIT_MAX) {
                tracing::error!("transactions still running after {REVOCATION_WAIT_MAX:?}; revoking anyway (they will be fenced)");
            }
            let partitions = self.partitions(list);
            self.news
                .lock()
                .expect("ownership news lock")
                .push(Ownership::Revoked(partitions));
            self.generation.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(list) = rebalance {
            let partitions = self.partitions(list);
            self.news
                .lock()
                .expect("ownership news lock")
                .push(Ownership::Assigned(partitions));
            self.generation.fetch_add(1, Ordering::SeqCst);
        }
    }
}

type GroupConsumer = BaseConsumer<GroupContext>;

/// One polled record, copied out of librdkafka's buffers.
struct Input {
    is_command: bool,
    partition: i32,
    offset: i64,
    payload: Vec<u8>,
}

/// Batches a shard's publisher may hold before the loop waits for it.
const PUBLICATIONS_QUEUED_MAX: usize = 16;
/// Most queued batches one Kafka transaction publishes together.
const PUBLICATIONS_PER_TRANSACTION_MAX: usize = 64;
/// Most records a takeover publishes in one Kafka transaction.
const REPUBLISH_RECORDS_MAX: usize = 256;

/// One shard batch, durable in CQL, waiting for its Kafka transaction.
struct Publication {
    records: Vec<BatchRecord>,
    messages: Vec<MessageEnvelope>,
    /// Next offsets to commit: (commands, shard-messages).
    next_command_offset: Option<i64>,
    next_message_offset: Option<i64>,
    /// The group's metadata when the batch was decided; the newest of a
    /// transaction's batches fences its offsets.
    group: Option<ConsumerGroupMetadata>,
    /// When the batch's CQL append began (for the commit duration).
    started: Instant,
    /// Counts the batch as in flight until its transaction commits: a
    /// revocation waits for it.
    _guard: InFlightGuard,
}

/// A shard's Kafka side: a task that publishes its batches in order, one
/// transaction at a time, merging the batches that queued up meanwhile
/// into one transaction. The loop hands it a batch once the batch is in CQL
/// and goes on deciding: a shard's next batch never waits for the previous
/// one's transaction (only for room in the bounded queue).
struct Publisher {
    queue: tokio::sync::mpsc::Sender<Publication>,
    task: tokio::task::JoinHandle<()>,
}

/// A shard this worker owns.
struct OwnedShard {
    runner: ShardRunner<ReplyAddress>,
    publisher: Publisher,
    step: Step<ReplyAddress>,
    /// Next offsets to commit: commands, shard-messages.
    next_command_offset: Option<i64>,
    next_message_offset: Option<i64>,
    events_since_snapshot: u64,
    snapshots: SnapshotWriter,
}

/// A running engine worker.
pub struct EngineWorker {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    owned: Arc<Mutex<Vec<ShardId>>>,
    health: Arc<WorkerHealth>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as u64)
        .unwrap_or(0)
}

/// Stops the process: the shard's in-memory state may be ahead of what is durable.
fn crash(shard: ShardId, what: &str, error: &dyn std::fmt::Display) -> ! {
    tracing::error!(%shard, %error, "{what} failed; stopping the process so the group moves its shards");
    std::process::abort();
}

impl EngineWorker {
    /// Joins the group and starts the loop. Shards arrive with the first rebalance.
    pub async fn start(
        kafka: KafkaConfig,
        topics: Topics,
        store: Arc<dyn EventStore>,
        config: EngineConfig,
        settings: WorkerSettings,
    ) -> Result<EngineWorker, WorkerError> {
        names::describe();
        let in_flight = Arc::new(TransactionsInFlight::default());
        let context = GroupContext {
            commands_topic: topics.commands.clone(),
            news: Mutex::new(Vec::new()),
            generation: AtomicU64::new(0),
            in_flight: in_flight.clone(),
        };
        let session_timeout_ms = settings.session_timeout.as_millis().to_string();
        let heartbeat_ms = (settings.session_timeout.as_millis() / 3)
            .max(100)
            .to_string();
        let consumer: GroupConsumer = kafka
            .client_config(&[
                ("group.id", &settings.group_id),
                ("isolation.level", "read_committed"),
                ("enable.auto.commit", "false"),
                ("enable.auto.offset.store", "false"),
                ("auto.offset.reset", "earliest"),
                // Range gives partition p of both topics to the same member.
                ("partition.assignment.strategy", "range"),
                ("session.timeout.ms", &session_timeout_ms),
                ("heartbeat.interval.ms", &heartbeat_ms),
                ("fetch.wait.max.ms", "5"),
            ])
            .create_with_context(context)
            .map_err(|source| WorkerError::Consumer {
                bootstrap: kafka.bootstrap.clone(),
                source,
            })?;
        consumer
            .subscribe(&[&topics.commands, &topics.shard_messages])
            .map_err(|source| WorkerError::Subscribe {
                topics: format!("{}, {}", topics.commands, topics.shard_messages),
                source,
            })?;
        let replies = Arc::new(
            ReplyProducer::connect(&kafka, &topics)
                .map_err(|source| WorkerError::Replies { source })?,
        );
        let (stop, stopping) = watch::channel(false);
        let owned = Arc::new(Mutex::new(Vec::new()));
        let health = Arc::new(WorkerHealth::new());
        let worker = Worker {
            health: health.clone(),
            progress: ProgressWatch::default(),
            consumer: Arc::new(consumer),
            kafka,
            topics,
            store,
            core: Arc::new(config.core.clone()),
            config,
            settings,
            shards: BTreeMap::new(),
            local: VecDeque::new(),
            owned: owned.clone(),
            last_tick: Instant::now(),
            in_flight,
            replies,
            snapshot_permits: SnapshotPermits::default(),
        };
        let task = crate::spawn_or_crash("engine worker", worker.run(stopping));
        Ok(EngineWorker {
            stop,
            task,
            owned,
            health,
        })
    }

    /// Whether the worker is consuming (see [`WorkerHealth::is_consuming`]).
    pub fn health(&self) -> Arc<WorkerHealth> {
        self.health.clone()
    }

    /// The shards owned right now.
    pub fn owned_shards(&self) -> Vec<ShardId> {
        self.owned.lock().expect("owned shards lock").clone()
    }

    /// Finishes the batch in progress, then leaves the group.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

struct Worker {
    consumer: Arc<GroupConsumer>,
    kafka: KafkaConfig,
    topics: Topics,
    store: Arc<dyn EventStore>,
    core: Arc<ledger_core::Config>,
    config: EngineConfig,
    settings: WorkerSettings,
    shards: BTreeMap<ShardId, OwnedShard>,
    /// Messages committed by owned shards for owned shards.
    local: VecDeque<MessageEnvelope>,
    owned: Arc<Mutex<Vec<ShardId>>>,
    last_tick: Instant,
    in_flight: Arc<TransactionsInFlight>,
    /// Answers callers once their batch is in CQL (see [`commit_shard`]).
    replies: Arc<ReplyProducer>,
    health: Arc<WorkerHealth>,
    progress: ProgressWatch,
    /// The snapshots this worker's shards may save at once.
    snapshot_permits: SnapshotPermits,
}

/// Per partition (topic, number) with records waiting: its position and
/// since when it has not moved.
type Waiting = BTreeMap<(String, i32), (i64, Instant)>;

/// Which partitions have had records waiting since when, and which of them
/// are stalled: records waiting, and the position unmoved for [`STALL_AFTER`].
/// A partition whose end could not be read keeps no record (no evidence
/// either way); one that moved starts a new wait.
fn judge_progress(
    previous: &Waiting,
    measured: Vec<PartitionProgress>,
    now: Instant,
) -> (Waiting, Vec<(String, i32)>) {
    let mut waiting = BTreeMap::new();
    let mut stalled = Vec::new();
    for PartitionProgress {
        topic,
        partition,
        position,
        end,
    } in measured
    {
        let Some(end) = end else { continue };
        if end <= position.max(0) {
            continue;
        }
        let key = (topic, partition);
        let since = match previous.get(&key) {
            Some((earlier, since)) if *earlier == position => *since,
            _ => now,
        };
        if now.duration_since(since) >= STALL_AFTER {
            stalled.push(key.clone());
        }
        waiting.insert(key, (position, since));
    }
    (waiting, stalled)
}

impl Publisher {
    fn start(shard: ShardId, writer: ShardTransactionalWriter, topics: Topics) -> Self {
        let (queue, publications) = tokio::sync::mpsc::channel(PUBLICATIONS_QUEUED_MAX);
        let task = crate::spawn_or_crash(
            "shard publisher",
            publish(shard, writer, topics, publications),
        );
        Self { queue, task }
    }

    /// Queues a batch (waits while the queue is full).
    async fn send(&self, shard: ShardId, publication: Publication) {
        if self.queue.send(publication).await.is_err() {
            panic!("the publisher of shard {shard} stopped while the shard is owned");
        }
    }

    /// Publishes what is queued, then stops.
    async fn finish(self, shard: ShardId) {
        let Publisher { queue, task } = self;
        drop(queue);
        if let Err(error) = task.await {
            panic!("the publisher of shard {shard} failed: {error}");
        }
    }
}

/// A shard's publisher task: every queued batch, in order; the batches
/// waiting when a transaction starts go into it together (one transaction,
/// one commit, the newest consumed offsets).
async fn publish(
    shard: ShardId,
    mut writer: ShardTransactionalWriter,
    topics: Topics,
    mut publications: tokio::sync::mpsc::Receiver<Publication>,
) {
    let partition = i32::from(shard.0);
    while let Some(first) = publications.recv().await {
        let mut batch = vec![first];
        while batch.len() < PUBLICATIONS_PER_TRANSACTION_MAX {
            match publications.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let merged = batch.len();
        let mut records = Vec::new();
        let mut messages = Vec::new();
        let (mut command_offset, mut message_offset) = (None, None);
        for publication in batch.iter_mut() {
            records.append(&mut publication.records);
            messages.append(&mut publication.messages);
            command_offset = publication.next_command_offset.or(command_offset);
            message_offset = publication.next_message_offset.or(message_offset);
        }
        let group = batch
            .last_mut()
            .and_then(|newest| newest.group.take())
            .expect("every publication carries the group's metadata");
        let mut offsets = Vec::new();
        if let Some(next) = command_offset {
            offsets.push((topics.commands.as_str(), partition, next));
        }
        if let Some(next) = message_offset {
            offsets.push((topics.shard_messages.as_str(), partition, next));
        }
        let consumed = if offsets.is_empty() {
            None
        } else {
            match ConsumedOffsets::new(group, &offsets) {
                Ok(consumed) => Some(consumed),
                Err(error) => crash(shard, "recording consumed offsets", &error),
            }
        };
        let transaction_started = Instant::now();
        let committed = match writer.begin(&records, &messages, &[]).await {
            Ok(pending) => pending.commit(consumed).await,
            Err(error) => Err(error),
        };
        if let Err(error) = committed {
            crash(shard, "committing the shard's kafka transaction", &error);
        }
        metrics::histogram!(names::WORKER_TRANSACTION_DURATION_SECONDS)
            .record(transaction_started.elapsed().as_secs_f64());
        for publication in &batch {
            metrics::histogram!(names::WORKER_COMMIT_DURATION_SECONDS)
                .record(publication.started.elapsed().as_secs_f64());
        }
        metrics::histogram!(names::WORKER_BATCHES_PER_TRANSACTION).record(merged as f64);
        metrics::counter!(names::WORKER_TRANSACTIONS_TOTAL).increment(1);
        let events: u64 = records.iter().map(BatchRecord::len).sum();
        metrics::counter!(names::WORKER_EVENTS_TOTAL).increment(events);
        // Dropping the batch releases its in-flight guards.
        drop(batch);
    }
    let _ = tokio::task::spawn_blocking(move || drop(writer)).await;
}

impl Worker {
    async fn run(mut self, stopping: watch::Receiver<bool>) {
        loop {
            if *stopping.borrow() {
                break;
            }
            let inputs = self.poll().await;
            self.follow_rebalances().await;
            self.decide(inputs);
            self.commit().await;
            self.health.loop_turned();
            self.check_progress();
        }
        let shards = std::mem::take(&mut self.shards);
        for (shard, owned) in shards {
            owned.publisher.finish(shard).await;
        }
        // Leave the group: a final revoke, then the shards are free.
        let consumer = self.consumer.clone();
        let _ = tokio::task::spawn_blocking(move || {
            consumer.unsubscribe();
            drop(consumer);
        })
        .await;
        tracing::info!("engine worker stopped");
    }

    /// Polls a batch on the blocking pool. If the group rebalances during the
    /// batch, records polled before the rebalance are dropped (their
    /// partitions may belong to someone else now; they are read again by
    /// whoever owns them, from the committed offsets).
    async fn poll(&mut self) -> Vec<Input> {
        let consumer = self.consumer.clone();
        let max = self.config.batch_inputs_max;
        let wait = if self.local.is_empty() {
            self.settings.poll_wait
        } else {
            Duration::ZERO
        };
        let commands_topic = self.topics.commands.clone();
        let polled = tokio::task::spawn_blocking(move || {
            let mut inputs = Vec::new();
            loop {
                let before = consumer.context().generation.load(Ordering::SeqCst);
                let timeout = if inputs.is_empty() {
                    wait
                } else {
                    Duration::ZERO
                };
                let polled = consumer.poll(timeout);
                let rebalanced = consumer.context().generation.load(Ordering::SeqCst) != before;
                if rebalanced {
                    inputs.clear();
                }
                match polled {
                    None => break,
                    Some(Err(error)) => {
                        tracing::warn!(%error, "engine consumer error");
                        break;
                    }
                    Some(Ok(message)) => inputs.push(Input {
                        is_command: message.topic() == commands_topic,
                        partition: message.partition(),
                        offset: message.offset(),
                        payload: message.payload().unwrap_or_default().to_vec(),
                    }),
                }
                if rebalanced || inputs.len() >= max {
                    break;
                }
            }
            inputs
        })
        .await;
        match polled {
            Ok(inputs) => inputs,
            Err(error) => panic!("the engine poll task failed: {error}"),
        }
    }

    /// Every [`PROGRESS_CHECK_INTERVAL`]: compares the consumer's position on
    /// each owned input partition with the partition's end (its last stable
    /// offset). A partition that has had records waiting without its position
    /// moving for [`STALL_AFTER`] is stalled: the worker is not consuming, and
    /// readiness says so. (A hanging transaction can do this: the group's
    /// offsets stay unstable, so the consumer never starts fetching.) The
    /// measurement runs on the blocking pool while batches go on; its result is
    /// taken on a later turn of the loop.
    fn check_progress(&mut self) {
        let now = Instant::now();
        if let Some(measuring) = &self.progress.measuring {
            if !measuring.is_finished() {
                return;
            }
            let measuring = self.progress.measuring.take().expect("checked above");
            let measured = futures_util::FutureExt::now_or_never(measuring)
                .and_then(Result::ok)
                .unwrap_or_default();
            self.judge_progress(now, measured);
            return;
        }
        if self
            .progress
            .checked_at
            .is_some_and(|at| now.duration_since(at) < PROGRESS_CHECK_INTERVAL)
        {
            return;
        }
        self.progress.checked_at = Some(now);
        let partitions: Vec<(String, i32)> = self
            .shards
            .keys()
            .flat_map(|shard| {
                let partition = i32::from(shard.0);
                [
                    (self.topics.commands.clone(), partition),
                    (self.topics.shard_messages.clone(), partition),
                ]
            })
            .collect();
        let consumer = self.consumer.clone();
        self.progress.measuring = Some(tokio::task::spawn_blocking(move || {
            let positions = consumer.position().ok();
            partitions
                .into_iter()
                .map(|(topic, partition)| {
                    let position = positions
                        .as_ref()
                        .and_then(|list| list.find_partition(&topic, partition))
                        .and_then(|element| element.offset().to_raw())
                        .unwrap_or(-1);
                    // `read_committed`: the last stable offset.
                    let end = consumer
                        .fetch_watermarks(&topic, partition, Duration::from_secs(2))
                        .map(|(_, high)| high)
                        .ok();
                    PartitionProgress {
                        topic,
                        partition,
                        position,
                        end,
                    }
                })
                .collect()
        }));
    }

    fn judge_progress(&mut self, now: Instant, measured: Vec<PartitionProgress>) {
        let (waiting, stalled) = judge_progress(&self.progress.waiting, measured, now);
        for (topic, partition) in &stalled {
            tracing::warn!(
                %topic,
                partition,
                "input partition has records waiting and is not being consumed"
            );
        }
        self.progress.waiting = waiting;
        let stalled = stalled.len() as u64;
        self.health
            .stalled_partitions
            .store(stalled, Ordering::Relaxed);
        metrics::gauge!(names::WORKER_STALLED_PARTITIONS).set(stalled as f64);
    }

    async fn follow_rebalances(&mut self) {
        let news: Vec<Ownership> =
            std::mem::take(&mut *self.consumer.context().news.lock().expect("news lock"));
        for item in news {
            metrics::counter!(names::WORKER_REBALANCES_TOTAL).increment(1);
            match item {
                Ownership::Revoked(partitions) => {
                    for partition in partitions {
                        let shard = ShardId(partition as u16);
                        if let Some(owned) = self.shards.remove(&shard) {
                            tracing::info!(%shard, "shard revoked");
                            // Already published: the revocation waited for it.
                            owned.publisher.finish(shard).await;
                        }
                    }
                    self.local
                        .retain(|message| self.shards.contains_key(&message.to));
                }
                Ownership::Assigned(partitions) => {
                    for partition in partitions {
                        let shard = ShardId(partition as u16);
                        if !self.shards.contains_key(&shard) {
                            let owned = self.take_over(shard).await;
                            self.shards.insert(shard, owned);
                        }
                    }
                }
            }
        }
        let owned: Vec<ShardId> = self.shards.keys().copied().collect();
        metrics::gauge!(names::WORKER_SHARDS_OWNED).set(owned.len() as f64);
        *self.owned.lock().expect("owned shards lock") = owned;
    }

    /// Restores a shard from CQL, fences its previous owner and publishes
    /// whatever of its CQL log Kafka lacks. If Kafka holds records CQL lost
    /// (a database that acknowledged writes it did not keep through a
    /// crash), they are written back to CQL first: callers were answered
    /// for them and other shards acted on their messages.
    async fn take_over(&self, shard: ShardId) -> OwnedShard {
        let started = Instant::now();
        let mut writer = None;
        let mut restored_from_kafka = 0u64;
        let (runner, writer, last) = loop {
            let runner = self.restore_and_claim(shard).await;
            let kafka = match writer.take() {
                Some(writer) => writer,
                None => self.fence_kafka(shard).await,
            };
            let last = match log_kafka::last_record(
                &self.kafka,
                &self.topics,
                shard,
                self.settings.takeover_timeout,
            )
            .await
            {
                Ok(last) => last,
                Err(error) => crash(shard, "reading the shard's last published record", &error),
            };
            let stored_through = runner.state.next_sequence - 1;
            let published_through = last.as_ref().map_or(0, BatchRecord::last_sequence);
            if published_through <= stored_through {
                break (runner, kafka, last);
            }
            // CQL lost the end of the log Kafka holds (the claim just made
            // sits where the first lost record goes): write it back, then
            // read the log and claim again.
            let missing = match log_kafka::records_after(
                &self.kafka,
                &self.topics,
                shard,
                stored_through,
                self.settings.takeover_timeout,
            )
            .await
            {
                Ok(missing) => missing,
                Err(error) => crash(shard, "reading the records CQL lacks from kafka", &error),
            };
            let first = missing.first();
            assert!(
                first.is_some_and(|first| first.first_sequence == stored_through + 1
                    && first.previous_hash == runner.last_hash),
                "shard {shard}: kafka has event {published_through} but CQL ends at {stored_through}, and kafka's records after it do not continue CQL's log"
            );
            let events: u64 = missing.iter().map(BatchRecord::len).sum();
            tracing::warn!(
                %shard,
                stored_through,
                published_through,
                events,
                "CQL lacks the end of the shard's log that kafka holds; writing it back"
            );
            let batch = ShardBatch {
                shard: Some(shard),
                records: missing,
                messages: Vec::new(),
            };
            if let Err(error) = self.store.append(vec![batch]).await {
                crash(shard, "writing kafka's records back to CQL", &error);
            }
            restored_from_kafka += events;
            metrics::counter!(names::WORKER_RESTORED_FROM_KAFKA_EVENTS_TOTAL).increment(events);
            writer = Some(kafka);
        };
        let mut writer = writer;
        let stored_through = runner.state.next_sequence - 1;
        let published_through = last.as_ref().map_or(0, BatchRecord::last_sequence);
        assert!(
            published_through <= stored_through,
            "shard {shard}: kafka has event {published_through} but CQL ends at {stored_through}; records are written to CQL first"
        );
        if let Some(last) = &last {
            // The CQL record holding kafka's last event must be that record.
            match self.store.read_shard(shard, published_through - 1, 1).await {
                Ok(stored) => assert!(
                    stored.first().map(|record| record.hash) == Some(last.hash),
                    "shard {shard}: the record of events {} to {published_through} differs between kafka and CQL",
                    last.first_sequence
                ),
                Err(error) => crash(shard, "reading the shard's CQL log", &error),
            }
        }
        let mut after = published_through;
        let mut republished = 0u64;
        while after < stored_through {
            let records = match self
                .store
                .read_shard(shard, after, REPUBLISH_RECORDS_MAX)
                .await
            {
                Ok(records) => records,
                Err(error) => crash(shard, "reading the shard's CQL log", &error),
            };
            let first = records.first().unwrap_or_else(|| {
                panic!("shard {shard}: CQL log ends early, after event {after}")
            });
            assert_eq!(
                first.first_sequence,
                after + 1,
                "shard {shard}: the CQL record after kafka's event {after} does not start right after it"
            );
            let messages = sent_messages(&records);
            if let Err(error) = writer.commit_batch(&records, &messages, None).await {
                crash(shard, "publishing the shard's unpublished records", &error);
            }
            after = records.last().expect("not empty").last_sequence();
            republished += records.iter().map(BatchRecord::len).sum::<u64>();
        }
        metrics::counter!(names::WORKER_REPUBLISHED_EVENTS_TOTAL).increment(republished);
        metrics::histogram!(names::WORKER_RESTORE_DURATION_SECONDS)
            .record(started.elapsed().as_secs_f64());
        tracing::info!(
            %shard,
            next_sequence = runner.state.next_sequence,
            republished,
            restored_from_kafka,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "shard taken over"
        );
        OwnedShard {
            runner,
            publisher: Publisher::start(shard, writer, self.topics.clone()),
            step: Step::default(),
            next_command_offset: None,
            next_message_offset: None,
            events_since_snapshot: 0,
            snapshots: SnapshotWriter::new(self.snapshot_permits.clone()),
        }
    }

    /// Reads the shard's log, then claims its next sequence: from then on a
    /// previous owner that is still running (paused past its session, not
    /// dead) cannot append. A record written between the read and the claim
    /// means that owner was still appending: read again.
    async fn restore_and_claim(&self, shard: ShardId) -> ShardRunner<ReplyAddress> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            let recovery = match self.store.recover(shard).await {
                Ok(recovery) => recovery,
                Err(error) => crash(shard, "recovering the shard from CQL", &error),
            };
            let runner = match ShardRunner::restore(shard, self.core.clone(), recovery) {
                Ok(runner) => runner,
                Err(error) => crash(shard, "replaying the shard's CQL log", &error),
            };
            match self
                .store
                .claim_shard(shard, runner.state.next_sequence)
                .await
            {
                Ok(()) => return runner,
                Err(StoreError::HeadMoved { sequence, .. }) if attempts < TAKEOVER_CLAIMS_MAX => {
                    metrics::counter!(names::WORKER_CLAIM_RETRIES_TOTAL).increment(1);
                    tracing::warn!(%shard, sequence, attempts, "the previous owner appended while the shard was read; reading again");
                }
                Err(error) => crash(shard, "claiming the shard's next sequence in CQL", &error),
            }
        }
    }

    /// Fences the shard's previous producer (`init_transactions`) and ends
    /// what a broker restart may have left open for this producer id, on
    /// every partition the shard writes to and on the group's offsets,
    /// before anyone reads where Kafka's copy of the shard ends.
    async fn fence_kafka(&self, shard: ShardId) -> ShardTransactionalWriter {
        let mut writer = match ShardTransactionalWriter::connect(
            &self.kafka,
            &self.topics,
            &self.settings.transactional_prefix,
            shard,
        )
        .await
        {
            Ok(writer) => writer,
            Err(error) => crash(shard, "initialising the shard's transactions", &error),
        };
        let partition = i32::from(shard.0);
        let group = self
            .consumer
            .group_metadata()
            .expect("a subscribed consumer has group metadata");
        let sweep_offsets = ConsumedOffsets::new(
            group,
            &[
                (self.topics.commands.as_str(), partition, 0),
                (self.topics.shard_messages.as_str(), partition, 0),
            ],
        )
        .unwrap_or_else(|error| crash(shard, "recording the sweep's offsets", &error));
        match writer.end_hanging_transactions(Some(sweep_offsets)).await {
            Ok(partitions) => tracing::debug!(%shard, partitions, "open transactions ended"),
            Err(error) => crash(shard, "ending the shard's open transactions", &error),
        }
        writer
    }

    fn decide(&mut self, inputs: Vec<Input>) {
        let now = now_ms();
        while let Some(message) = self.local.pop_front() {
            if let Some(owned) = self.shards.get_mut(&message.to) {
                owned.runner.message(message, now, &mut owned.step);
            }
        }
        metrics::counter!(names::WORKER_RECORDS_TOTAL).increment(inputs.len() as u64);
        metrics::histogram!(names::WORKER_BATCH_INPUTS).record(inputs.len() as f64);
        for input in inputs {
            let shard = ShardId(input.partition as u16);
            let Some(owned) = self.shards.get_mut(&shard) else {
                tracing::warn!(%shard, "record of a shard this worker does not own; skipped");
                continue;
            };
            if input.is_command {
                owned.next_command_offset = Some(input.offset + 1);
                match CommandRecord::from_bytes(&input.payload) {
                    Ok(record) => {
                        let address = ReplyAddress {
                            partition: record.reply_partition,
                            request_id: record.request_id,
                        };
                        owned
                            .runner
                            .command(record.command, record.meta, address, &mut owned.step);
                    }
                    Err(error) => {
                        tracing::error!(%shard, offset = input.offset, %error, "undecodable command skipped")
                    }
                }
            } else {
                owned.next_message_offset = Some(input.offset + 1);
                match ledger_core::codec::decode::<MessageEnvelope>("shard message", &input.payload)
                {
                    Ok(message) => {
                        assert_eq!(
                            message.to, shard,
                            "a message sits in its receiver's partition"
                        );
                        owned.runner.message(message, now, &mut owned.step);
                    }
                    Err(error) => panic!(
                        "undecodable message on shard {shard} at offset {}: {error}",
                        input.offset
                    ),
                }
            }
        }
        if self.last_tick.elapsed() >= self.config.tick_interval {
            self.last_tick = Instant::now();
            for owned in self.shards.values_mut() {
                owned.runner.tick(now, &mut owned.step);
            }
        }
    }

    async fn commit(&mut self) {
        // Every shard's entries of this batch (ticks and local messages
        // included, which carry no input offset) into its records.
        for owned in self.shards.values_mut() {
            owned.runner.seal(&mut owned.step);
        }
        let consumer = &self.consumer;
        let store = &self.store;
        let in_flight = &self.in_flight;
        let replies = &self.replies;
        let snapshot_every_events = self.config.snapshot_every_events;
        let commits = self
            .shards
            .iter_mut()
            .filter(|(_, owned)| {
                !owned.step.is_empty()
                    || owned.next_command_offset.is_some()
                    || owned.next_message_offset.is_some()
            })
            .map(|(shard, owned)| {
                let group = consumer
                    .group_metadata()
                    .expect("a subscribed consumer has group metadata");
                commit_shard(
                    *shard,
                    owned,
                    store,
                    replies,
                    group,
                    snapshot_every_events,
                    in_flight,
                )
            });
        let sent: Vec<MessageEnvelope> = futures_util::future::join_all(commits)
            .await
            .into_iter()
            .flatten()
            .collect();
        for message in sent {
            if self.shards.contains_key(&message.to) {
                self.local.push_back(message);
            }
        }
    }
}

/// Appends one shard's batch to CQL, then queues it for the shard's
/// publisher (its Kafka transaction runs while the next batches are decided
/// and appended). Returns the batch's messages, durable in CQL, for local
/// delivery.
///
/// Order per shard stays: batch N in CQL before batch N in Kafka, and the
/// shard's batches reach Kafka in CQL order; CQL may run up to the queue's
/// bound of batches ahead of Kafka, which a takeover repairs.
async fn commit_shard(
    shard: ShardId,
    owned: &mut OwnedShard,
    store: &Arc<dyn EventStore>,
    reply_producer: &ReplyProducer,
    group: ConsumerGroupMetadata,
    snapshot_every_events: u64,
    in_flight: &Arc<TransactionsInFlight>,
) -> Vec<MessageEnvelope> {
    let started = Instant::now();
    let events = owned.step.entries();
    let Step {
        records,
        messages,
        replies,
    } = std::mem::take(&mut owned.step);
    if !records.is_empty() {
        // Only the records: each message is also a `Sent` entry of the
        // sender's record, receivers get messages from Kafka, and a takeover
        // rebuilds the unpublished ones from the records. Writing them to
        // the CQL outbox too would cost a third round trip per append for
        // rows nobody reads in this mode.
        let batch = ShardBatch {
            shard: Some(shard),
            records: records.clone(),
            messages: Vec::new(),
        };
        if let Err(error) = store.append(vec![batch]).await {
            crash(shard, "appending to CQL", &error);
        }
        metrics::histogram!(names::WORKER_APPEND_DURATION_SECONDS)
            .record(started.elapsed().as_secs_f64());
        if let Some(record) = records.last() {
            engine::metrics::record_shard_head(shard, record.last_sequence());
        }
    }
    // Receivers this worker owns may act on the messages as soon as they
    // are in CQL, the shard's source of truth: a receiver's effects are
    // appended after this append, so they can never be durable without it,
    // and if this batch's transaction fails, the takeover publishes it from
    // CQL. The Kafka copies arrive later and are dropped as duplicates.
    let delivered = messages.clone();
    let replies: Vec<ReplyRecordOut> = replies
        .into_iter()
        .map(|(address, reply)| {
            let completion = match reply {
                Reply::Completed(completion) => completion,
                Reply::Refused(rejection) => Completion {
                    result: Err(rejection),
                    positions: Vec::new(),
                    deliveries: Vec::new(),
                    retry_after_ms: None,
                },
            };
            ReplyRecordOut {
                partition: address.partition,
                value: ReplyRecord {
                    request_id: address.request_id.clone(),
                    completion,
                }
                .to_bytes(),
                request_id: address.request_id,
            }
        })
        .collect();
    // Callers are answered now: what the replies report is durable in CQL,
    // the shard's source of truth, and CQL admits one writer per shard (a
    // superseded one stopped at the append above). If the Kafka transaction
    // below never commits, whoever takes the shard over publishes these
    // records from CQL before deciding anything, and the consumed inputs
    // come back and are answered from the stored outcomes.
    let refused = reply_producer.send(&replies);
    if refused > 0 {
        metrics::counter!(names::WORKER_REPLIES_NOT_SENT_TOTAL).increment(refused as u64);
        tracing::warn!(%shard, refused, "replies not queued; their callers will resend");
    }
    let publication = Publication {
        records,
        messages,
        next_command_offset: owned.next_command_offset.take(),
        next_message_offset: owned.next_message_offset.take(),
        group: Some(group),
        started,
        _guard: in_flight.begin(),
    };
    owned.publisher.send(shard, publication).await;
    owned.events_since_snapshot += events;
    // The snapshot covers what is in CQL (this batch included); it is
    // encoded and saved beside the shard.
    if owned.events_since_snapshot >= snapshot_every_events
        && owned.snapshots.start(&mut owned.runner, store)
    {
        owned.events_since_snapshot = 0;
    }
    delivered
}

/// The messages a shard's records sent: their `Sent` entries (and any other
/// entry holding a `message_sent` event, as records read from format 1 do).
fn sent_messages(records: &[BatchRecord]) -> Vec<MessageEnvelope> {
    let mut messages = Vec::new();
    for logged in records.iter().flat_map(BatchRecord::logged) {
        let (to, sequence, message) = match logged.entry {
            Entry::Sent {
                to,
                sequence,
                message,
            } => (*to, *sequence, message.clone()),
            entry if entry.event_type() == "message_sent" => match logged.event() {
                Ok(Event::MessageSent {
                    to,
                    sequence,
                    message,
                }) => (to, sequence, message),
                Ok(other) => panic!(
                    "event {} of shard {} is declared message_sent but is {}",
                    logged.sequence,
                    logged.shard,
                    other.type_name()
                ),
                Err(error) => panic!(
                    "event {} of shard {} does not decode: {error}",
                    logged.sequence, logged.shard
                ),
            },
            _ => continue,
        };
        messages.push(MessageEnvelope {
            from: logged.shard,
            to,
            sequence,
            message,
        });
    }
    messages
}

#[cfg(test)]
mod tests {
    use super::*;

    fn progress(position: i64, end: Option<i64>) -> Vec<PartitionProgress> {
        vec![PartitionProgress {
            topic: "ledger.commands".to_string(),
            partition: 2,
            position,
            end,
        }]
    }

    #[test]
    fn a_partition_with_records_waiting_and_no_progress_is_stalled_after_the_bound() {
        let start = Instant::now();
        let (waiting, stalled) = judge_progress(&BTreeMap::new(), progress(5, Some(9)), start);
        assert!(stalled.is_empty(), "a first sight is not a stall");
        let (waiting, stalled) = judge_progress(
            &waiting,
            progress(5, Some(12)),
            start + STALL_AFTER - Duration::from_millis(1),
        );
        assert!(stalled.is_empty(), "not yet past the bound");
        let (_, stalled) = judge_progress(&waiting, progress(5, Some(12)), start + STALL_AFTER);
        assert_eq!(stalled, vec![("ledger.commands".to_string(), 2)]);
    }

    #[test]
    fn progress_or_nothing_waiting_is_never_a_stall() {
        let start = Instant::now();
        let (waiting, _) = judge_progress(&BTreeMap::new(), progress(5, Some(9)), start);
        // The position moved: a new wait starts.
        let (waiting, stalled) =
            judge_progress(&waiting, progress(7, Some(20)), start + STALL_AFTER * 2);
        assert!(stalled.is_empty());
        // Caught up: nothing waits.
        let (waiting, stalled) =
            judge_progress(&waiting, progress(20, Some(20)), start + STALL_AFTER * 4);
        assert!(stalled.is_empty() && waiting.is_empty());
        // An unreadable end (broker away) is no evidence either way.
        let (waiting, stalled) =
            judge_progress(&waiting, progress(20, None), start + STALL_AFTER * 6);
        assert!(stalled.is_empty() && waiting.is_empty());
    }

    #[test]
    fn a_consumer_that_never_started_fetching_is_stalled() {
        // librdkafka reports an invalid position (-1001) until the group's
        // offsets can be fetched; with records waiting, that is a stall too.
        let start = Instant::now();
        let (waiting, _) = judge_progress(&BTreeMap::new(), progress(-1001, Some(40)), start);
        let (_, stalled) = judge_progress(&waiting, progress(-1001, Some(40)), start + STALL_AFTER);
        assert_eq!(stalled.len(), 1);
    }

    #[test]
    fn the_messages_of_records_are_their_sent_entries_of_either_format() {
        use ledger_core::codec::{Envelope, InputEntries, GENESIS_HASH};
        use ledger_core::{GrantId, Message, UserId};
        let credit = |n: i64| Message::CreditGrant {
            grant_id: GrantId::parse(format!("g{n}")).expect("valid id"),
            user_id: UserId::parse("alice").expect("valid id"),
            amount: n,
        };
        let sent = |sequence: u64| Event::MessageSent {
            to: ShardId(2),
            sequence,
            message: credit(sequence as i64).into(),
        };
        // Format 1: one envelope per event, read as a record of one entry.
        let old = BatchRecord::from_envelope(Envelope::seal(
            &sent(1),
            ShardId(1),
            1,
            "command:grant:g1",
            5,
            GENESIS_HASH,
        ));
        let received = Event::MessageReceived {
            from: ShardId(3),
            sequence: 9,
        };
        let new = BatchRecord::seal(
            ShardId(1),
            2,
            old.hash,
            vec![InputEntries {
                cause: "command:grant:g2".to_string(),
                timestamp_ms: 6,
                entries: [&received, &sent(2), &sent(3)]
                    .into_iter()
                    .map(Entry::from_event)
                    .collect(),
            }],
        );
        let message = |sequence: u64| MessageEnvelope {
            from: ShardId(1),
            to: ShardId(2),
            sequence,
            message: credit(sequence as i64).into(),
        };
        assert_eq!(
            sent_messages(&[old, new]),
            vec![message(1), message(2), message(3)]
        );
    }

    #[test]
    fn health_follows_the_loop_and_the_stalls() {
        let health = WorkerHealth::new();
        health.loop_turned();
        assert!(health.is_consuming());
        health.stalled_partitions.store(1, Ordering::Relaxed);
        assert!(!health.is_consuming());
        health.stalled_partitions.store(0, Ordering::Relaxed);
        assert!(health.is_consuming());
    }
}
