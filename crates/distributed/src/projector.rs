//! The projector service: consumes the events topic (`read_committed`, in
//! the consumer group `<prefix>-projector`; one Kafka record per batch
//! record) and writes the CQL read models.
//!
//! Each batch is grouped by shard (= partition) and applied shard by shard,
//! concurrently; the read models skip events below each shard's checkpoint
//! and move the checkpoint after the rows, so a batch consumed again after a
//! crash or a rebalance changes nothing. Offsets are committed
//! to the group after the batch is applied: they only save re-reading.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ledger_core::codec::{BatchRecord, Hash};
use ledger_core::ShardId;
use log_kafka::rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use log_kafka::rdkafka::error::KafkaError;
use log_kafka::rdkafka::message::Message;
use log_kafka::rdkafka::{Offset, TopicPartitionList};
use log_kafka::{KafkaConfig, Topics};
use read_models_cql::CqlReadModels;
use tokio::sync::watch;

use crate::metrics as names;

/// How the projector consumes.
#[derive(Debug, Clone)]
pub struct ProjectorSettings {
    pub group_id: String,
    /// Most events read per batch (a record is never split: the batch
    /// stops at the first record that reaches this many).
    pub batch_events_max: usize,
    /// Longest wait for the first record of a batch.
    pub poll_wait: Duration,
    pub session_timeout: Duration,
}

impl ProjectorSettings {
    pub fn new(topic_prefix: &str) -> Self {
        Self {
            group_id: format!("{topic_prefix}-projector"),
            batch_events_max: 4_096,
            poll_wait: Duration::from_millis(20),
            session_timeout: Duration::from_secs(6),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProjectorError {
    #[error("cannot create the projector consumer for {bootstrap}: {source}")]
    Consumer {
        bootstrap: String,
        source: KafkaError,
    },
    #[error("cannot subscribe to {topic}: {source}")]
    Subscribe { topic: String, source: KafkaError },
}

/// A running projector.
pub struct Projector {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Projector {
    pub async fn start(
        kafka: KafkaConfig,
        topics: Topics,
        read_models: Arc<CqlReadModels>,
        settings: ProjectorSettings,
    ) -> Result<Projector, ProjectorError> {
        names::describe();
        let session_timeout_ms = settings.session_timeout.as_millis().to_string();
        let consumer: BaseConsumer = kafka
            .client_config(&[
                ("group.id", &settings.group_id),
                ("isolation.level", "read_committed"),
                ("enable.auto.commit", "false"),
                ("enable.auto.offset.store", "false"),
                ("auto.offset.reset", "earliest"),
                ("session.timeout.ms", &session_timeout_ms),
                ("fetch.wait.max.ms", "5"),
            ])
            .create()
            .map_err(|source| ProjectorError::Consumer {
                bootstrap: kafka.bootstrap.clone(),
                source,
            })?;
        consumer
            .subscribe(&[&topics.events])
            .map_err(|source| ProjectorError::Subscribe {
                topic: topics.events.clone(),
                source,
            })?;
        let (stop, stopping) = watch::channel(false);
        let task = crate::spawn_or_crash(
            "projector",
            run(Arc::new(consumer), topics, read_models, settings, stopping),
        );
        Ok(Projector { stop, task })
    }

    /// Stops at once, as a crash would: the batch in progress may be half
    /// written and its offsets are not committed. (For failure tests.)
    pub fn kill(self) {
        self.task.abort();
    }

    /// Finishes the batch in progress, commits its offsets and leaves the group.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// One record read, with where it was.
struct Read {
    partition: i32,
    offset: i64,
    record: BatchRecord,
}

async fn run(
    consumer: Arc<BaseConsumer>,
    topics: Topics,
    read_models: Arc<CqlReadModels>,
    settings: ProjectorSettings,
    stopping: watch::Receiver<bool>,
) {
    // Last (sequence, hash) seen per shard: a record starting right after it
    // must continue the chain (an earlier one is a copy of one already read).
    let mut chain: BTreeMap<ShardId, (u64, Hash)> = BTreeMap::new();
    // Partitions whose read models are behind the group's committed offset
    // (the database lost writes it had acknowledged, as a Cassandra node
    // killed with a periodic commit log does): how far before that offset
    // the next rewind goes, doubling until it reaches the record the read
    // models expect.
    let mut behind: BTreeMap<i32, i64> = BTreeMap::new();
    while !*stopping.borrow() {
        let polling = consumer.clone();
        let max = settings.batch_events_max;
        let wait = settings.poll_wait;
        let reads = tokio::task::spawn_blocking(move || poll(&polling, max, wait))
            .await
            .expect("the projector poll task does not panic");
        if reads.is_empty() {
            continue;
        }
        let mut by_shard: BTreeMap<ShardId, Vec<BatchRecord>> = BTreeMap::new();
        let mut next_offsets: BTreeMap<i32, i64> = BTreeMap::new();
        for read in reads {
            let shard = ShardId(read.partition as u16);
            let record = read.record;
            assert_eq!(
                record.shard, shard,
                "a record of shard {} in partition {}",
                record.shard, read.partition
            );
            if let Some((sequence, hash)) = chain.get(&shard) {
                if record.first_sequence == sequence + 1 {
                    assert_eq!(
                        record.previous_hash, *hash,
                        "broken hash chain on shard {shard} at the record from event {}",
                        record.first_sequence
                    );
                }
            }
            chain.insert(shard, (record.last_sequence(), record.hash));
            next_offsets.insert(read.partition, read.offset + 1);
            by_shard.entry(shard).or_default().push(record);
        }
        let events: u64 = by_shard.values().flatten().map(BatchRecord::len).sum();
        let applied = by_shard.iter().map(|(shard, records)| {
            let read_models = read_models.clone();
            async move { (shard, read_models.apply(*shard, records).await) }
        });
        let mut failed = false;
        for (shard, result) in futures_util::future::join_all(applied).await {
            let partition = i32::from(shard.0);
            match result {
                Ok(()) => {
                    behind.remove(&partition);
                }
                Err(read_models_cql::CqlReadModelError::SequenceGap {
                    expected, found, ..
                }) if expected < found => {
                    let distance = behind
                        .get(&partition)
                        .map_or(REWIND_BEHIND_FIRST, |distance| distance.saturating_mul(4));
                    tracing::warn!(
                        %shard,
                        expected,
                        found,
                        distance,
                        "the read models lack events before the committed offset; reading from further back"
                    );
                    behind.insert(partition, distance);
                    failed = true;
                }
                Err(error) => {
                    // Nothing is lost: the offsets are not committed, the batch is read again.
                    tracing::error!(%shard, %error, "projecting failed; reading the batch again");
                    failed = true;
                }
            }
        }
        if failed {
            rewind(&consumer, &topics.events, &mut chain, &behind).await;
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        }
        for (shard, records) in &by_shard {
            if let Some(last) = records.iter().map(BatchRecord::last_sequence).max() {
                engine::metrics::record_projected(*shard, last);
            }
        }
        metrics::counter!(names::PROJECTOR_EVENTS_TOTAL).increment(events);
        metrics::counter!(names::PROJECTOR_BATCHES_TOTAL).increment(1);
        let mut list = TopicPartitionList::new();
        for (partition, next) in next_offsets {
            if let Err(error) =
                list.add_partition_offset(&topics.events, partition, Offset::Offset(next))
            {
                panic!("offset {next} of partition {partition} is valid: {error}");
            }
        }
        let committing = consumer.clone();
        let committed =
            tokio::task::spawn_blocking(move || committing.commit(&list, CommitMode::Sync))
                .await
                .expect("the projector commit task does not panic");
        if let Err(error) = committed {
            // Harmless: a later commit or a replay from older offsets fixes it.
            tracing::warn!(%error, "committing projector offsets failed");
        }
    }
    let closing = consumer.clone();
    let _ = tokio::task::spawn_blocking(move || {
        closing.unsubscribe();
        drop(closing);
    })
    .await;
    tracing::info!("projector stopped");
}

/// Records a partition's first rewind goes back before its committed offset
/// when its read models lack events before that offset (then ×4 each time).
const REWIND_BEHIND_FIRST: i64 = 64;

/// After a failed batch: go back to the committed offsets of every assigned
/// partition (the read models skip what they already hold), and `behind`
/// records further back for the partitions whose read models lack events
/// before it.
async fn rewind(
    consumer: &Arc<BaseConsumer>,
    topic: &str,
    chain: &mut BTreeMap<ShardId, (u64, Hash)>,
    behind: &BTreeMap<i32, i64>,
) {
    chain.clear();
    let consumer = consumer.clone();
    let topic = topic.to_string();
    let behind = behind.clone();
    let rewound = tokio::task::spawn_blocking(move || -> Result<(), KafkaError> {
        let assignment = consumer.assignment()?;
        let committed = consumer.committed_offsets(assignment, Duration::from_secs(10))?;
        for element in committed.elements_for_topic(&topic) {
            let distance = behind.get(&element.partition()).copied().unwrap_or(0);
            let offset = match element.offset() {
                Offset::Offset(offset) if offset > distance => Offset::Offset(offset - distance),
                _ => Offset::Beginning,
            };
            consumer.seek(&topic, element.partition(), offset, Duration::from_secs(10))?;
        }
        Ok(())
    })
    .await
    .expect("the projector rewind task does not panic");
    if let Err(error) = rewound {
        panic!("cannot rewind the projector after a failed batch: {error}");
    }
}

/// Blocking: records until they hold `max_events` events, waiting at most
/// `wait` for the first.
fn poll(consumer: &BaseConsumer, max_events: usize, wait: Duration) -> Vec<Read> {
    let mut reads = Vec::new();
    let mut events = 0;
    while events < max_events {
        let timeout = if reads.is_empty() {
            wait
        } else {
            Duration::ZERO
        };
        match consumer.poll(timeout) {
            None => break,
            Some(Err(error)) => {
                tracing::warn!(%error, "projector consumer error");
                break;
            }
            Some(Ok(message)) => {
                let Some(bytes) = message.payload() else {
                    panic!(
                        "events topic record without value at partition {} offset {}",
                        message.partition(),
                        message.offset()
                    );
                };
                let record = match BatchRecord::from_bytes(bytes) {
                    Ok(record) => record,
                    Err(error) => panic!(
                        "corrupt record at partition {} offset {}: {error}",
                        message.partition(),
                        message.offset()
                    ),
                };
                assert!(
                    !record.is_empty(),
                    "the record at partition {} offset {} holds no entry",
                    message.partition(),
                    message.offset()
                );
                events += record.len() as usize;
                reads.push(Read {
                    partition: message.partition(),
                    offset: message.offset(),
                    record,
                });
            }
        }
    }
    reads
}
