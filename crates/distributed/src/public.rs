//! The public stream publisher (`ledger public-stream`): reads the events
//! topic (`read_committed`, every partition) and publishes the analysts'
//! business events (`crates/public-events`) to `<prefix>.public.v1`,
//! exactly once.
//!
//! **Exactly once.** One transactional producer (`transactional.id =
//! <prefix>-public`; `init_transactions` fences any previous instance and
//! aborts its open transaction). Each transaction holds the public records
//! of the events read since the previous one AND, through
//! `send_offsets_to_transaction`, the events topic offsets of the group
//! `<prefix>-public` with each shard's checkpoint as the offset's metadata
//! (the last sequence published, the messages published per receiver).
//! Both become visible together or not at all: after a crash the next
//! instance reads each partition again from its committed offset (at most
//! back to the oldest purchase still open, whose buyer the stream needs)
//! and publishes only what follows the checkpoint. Readers with
//! `isolation.level=read_committed` never see an aborted transaction's
//! records.
//!
//! **Order.** The stream publishes a record only after the records whose
//! messages it consumed (causal order across shards); the producer is
//! idempotent, so each partition keeps the order of the sends: every key's
//! events are in the order the ledger decided them.
//!
//! One instance runs per deployment (a second one fences the first, which
//! then restarts and fences it back: run one replica).

use std::sync::Arc;
use std::time::{Duration, Instant};

use ledger_core::codec::BatchRecord;
use ledger_core::ShardId;
use log_kafka::rdkafka::consumer::{BaseConsumer, Consumer};
use log_kafka::rdkafka::error::{KafkaError, RDKafkaErrorCode};
use log_kafka::rdkafka::message::{Header, Message, OwnedHeaders};
use log_kafka::rdkafka::producer::{
    BaseRecord, DefaultProducerContext, Producer, ThreadedProducer,
};
use log_kafka::rdkafka::{Offset, TopicPartitionList};
use log_kafka::{KafkaConfig, Topics};
use public_events::{PublicEvent, PublicStream, ShardCheckpoint, StreamError};
use tokio::sync::watch;

use crate::metrics as names;

type Producer_ = ThreadedProducer<DefaultProducerContext>;

/// How the publisher consumes and produces.
#[derive(Debug, Clone)]
pub struct PublicStreamSettings {
    /// `<prefix>-public`: the consumer group whose offsets (with the
    /// checkpoints) commit in the publishing transactions.
    pub group_id: String,
    /// `<prefix>-public`.
    pub transactional_id: String,
    /// `ce_source` of every event: `/<prefix>`.
    pub source: String,
    /// Most records read per transaction.
    pub batch_records_max: usize,
    /// Longest wait for the first record of a batch.
    pub poll_wait: Duration,
    /// Bound of each blocking Kafka call.
    pub call_timeout: Duration,
    /// Wait before starting again after a failure.
    pub restart_backoff: Duration,
}

impl PublicStreamSettings {
    pub fn new(topic_prefix: &str) -> Self {
        Self {
            group_id: format!("{topic_prefix}-public"),
            transactional_id: format!("{topic_prefix}-public"),
            source: format!("/{topic_prefix}"),
            batch_records_max: 2_048,
            poll_wait: Duration::from_millis(50),
            call_timeout: Duration::from_secs(30),
            restart_backoff: Duration::from_secs(1),
        }
    }
}

/// Why a publishing session stopped (the publisher starts a new one).
#[derive(Debug, thiserror::Error)]
pub enum PublicStreamError {
    #[error("cannot create the public stream's {client} for {bootstrap}: {source}")]
    Client {
        client: &'static str,
        bootstrap: String,
        source: KafkaError,
    },
    #[error("kafka call {operation} of the public stream failed: {source}")]
    Kafka {
        operation: &'static str,
        source: KafkaError,
    },
    #[error(
        "the record at partition {partition} offset {offset} of {topic} is unreadable: {detail}"
    )]
    Record {
        topic: String,
        partition: i32,
        offset: i64,
        detail: String,
    },
    #[error("the public stream cannot go on: {0}")]
    Stream(#[from] StreamError),
    #[error("a blocking call of the public stream failed: {detail}")]
    Task { detail: String },
}

fn failed(operation: &'static str) -> impl FnOnce(KafkaError) -> PublicStreamError {
    move |source| PublicStreamError::Kafka { operation, source }
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, PublicStreamError> + Send + 'static,
) -> Result<T, PublicStreamError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|join| PublicStreamError::Task {
            detail: join.to_string(),
        })?
}

/// A running publisher.
pub struct PublicStreamPublisher {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl PublicStreamPublisher {
    /// Starts publishing the events of `shards` shards.
    pub fn start(
        kafka: KafkaConfig,
        topics: Topics,
        shards: u16,
        settings: PublicStreamSettings,
    ) -> PublicStreamPublisher {
        names::describe();
        let (stop, stopping) = watch::channel(false);
        let task = crate::spawn_or_crash(
            "public stream publisher",
            run(kafka, topics, shards, settings, stopping),
        );
        PublicStreamPublisher { stop, task }
    }

    /// Stops at once, as a crash would: an open transaction stays open
    /// until the next instance's `init_transactions` aborts it. (For tests.)
    pub fn kill(self) {
        self.task.abort();
    }

    /// Finishes the transaction in progress and stops.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

async fn run(
    kafka: KafkaConfig,
    topics: Topics,
    shards: u16,
    settings: PublicStreamSettings,
    stopping: watch::Receiver<bool>,
) {
    while !*stopping.borrow() {
        match session(&kafka, &topics, shards, &settings, &stopping).await {
            Ok(()) => break,
            Err(error) => {
                metrics::counter!(names::PUBLIC_STREAM_RESTARTS_TOTAL).increment(1);
                tracing::error!(%error, "the public stream stopped; starting again");
                let mut stopping = stopping.clone();
                tokio::select! {
                    _ = stopping.wait_for(|stopped| *stopped) => break,
                    _ = tokio::time::sleep(settings.restart_backoff) => {}
                }
            }
        }
    }
    tracing::info!("public stream stopped");
}

/// One life of the publisher: fence, resume from the committed
/// checkpoints, then publish until stopped or failed.
async fn session(
    kafka: &KafkaConfig,
    topics: &Topics,
    shards: u16,
    settings: &PublicStreamSettings,
    stopping: &watch::Receiver<bool>,
) -> Result<(), PublicStreamError> {
    let timeout = settings.call_timeout;
    let producer: Producer_ = kafka
        .client_config(&[
            ("transactional.id", &settings.transactional_id),
            ("client.id", &settings.transactional_id),
            ("enable.idempotence", "true"),
            ("acks", "all"),
            // The partition of a key as Java clients compute it.
            ("partitioner", "murmur2_random"),
            ("linger.ms", "5"),
        ])
        .create()
        .map_err(|source| PublicStreamError::Client {
            client: "producer",
            bootstrap: kafka.bootstrap.clone(),
            source,
        })?;
    let producer = Arc::new(producer);
    let initializing = Arc::clone(&producer);
    blocking(move || {
        initializing
            .init_transactions(timeout)
            .map_err(failed("init_transactions"))
    })
    .await?;
    let consumer: BaseConsumer = kafka
        .client_config(&[
            ("group.id", &settings.group_id),
            ("isolation.level", "read_committed"),
            ("enable.auto.commit", "false"),
            ("enable.auto.offset.store", "false"),
            ("auto.offset.reset", "earliest"),
            ("fetch.wait.max.ms", "20"),
        ])
        .create()
        .map_err(|source| PublicStreamError::Client {
            client: "consumer",
            bootstrap: kafka.bootstrap.clone(),
            source,
        })?;
    let consumer = Arc::new(consumer);

    // Resume every shard from its committed offset and checkpoint.
    let mut stream = PublicStream::new(settings.source.clone());
    let events_topic = topics.events.clone();
    let fetching = Arc::clone(&consumer);
    let committed = blocking(move || {
        let mut wanted = TopicPartitionList::new();
        for shard in 0..shards {
            wanted.add_partition(&events_topic, i32::from(shard));
        }
        let committed = fetching
            .committed_offsets(wanted, timeout)
            .map_err(failed("committed_offsets"))?;
        Ok(committed
            .elements_for_topic(&events_topic)
            .iter()
            .map(|element| {
                (
                    element.partition(),
                    element.offset(),
                    element.metadata().to_string(),
                )
            })
            .collect::<Vec<_>>())
    })
    .await?;
    let mut assignment = TopicPartitionList::new();
    for (partition, offset, metadata) in committed {
        let shard = ShardId(partition as u16);
        stream.resume(shard, ShardCheckpoint::from_metadata(&metadata)?);
        let offset = match offset {
            Offset::Offset(offset) => Offset::Offset(offset),
            _ => Offset::Beginning,
        };
        assignment
            .add_partition_offset(&topics.events, partition, offset)
            .map_err(failed("assign"))?;
    }
    consumer.assign(&assignment).map_err(failed("assign"))?;
    let group = consumer
        .group_metadata()
        .ok_or_else(|| PublicStreamError::Task {
            detail: "the consumer has no group metadata".into(),
        })?;
    tracing::info!(
        transactional_id = settings.transactional_id,
        "public stream resumed"
    );

    let group = Arc::new(group);
    while !*stopping.borrow() {
        let polling = Arc::clone(&consumer);
        let events_topic = topics.events.clone();
        let (max, wait) = (settings.batch_records_max, settings.poll_wait);
        let reads = blocking(move || poll(&polling, &events_topic, max, wait)).await?;
        if reads.is_empty() {
            continue;
        }
        for (offset, record) in reads {
            stream.push(offset, record)?;
        }
        let events = stream.drain()?;
        metrics::gauge!(names::PUBLIC_STREAM_WAITING_RECORDS).set(stream.waiting() as f64);
        let mut offsets = TopicPartitionList::new();
        for shard in stream.shards() {
            let Some((resume, checkpoint)) = stream.checkpoint(shard) else {
                continue;
            };
            offsets
                .add_partition_offset(&topics.events, i32::from(shard.0), Offset::Offset(resume))
                .map_err(failed("send_offsets_to_transaction"))?;
            if let Some(mut element) = offsets.find_partition(&topics.events, i32::from(shard.0)) {
                element.set_metadata(checkpoint.to_metadata());
            }
        }
        let count = events.len() as u64;
        let started = Instant::now();
        let publishing = Arc::clone(&producer);
        let public_topic = topics.public.clone();
        let group = Arc::clone(&group);
        blocking(move || {
            publish(
                &publishing,
                &public_topic,
                &events,
                &offsets,
                &group,
                timeout,
            )
        })
        .await?;
        metrics::counter!(names::PUBLIC_STREAM_EVENTS_TOTAL).increment(count);
        metrics::counter!(names::PUBLIC_STREAM_TRANSACTIONS_TOTAL).increment(1);
        metrics::histogram!(names::PUBLIC_STREAM_TRANSACTION_DURATION_SECONDS)
            .record(started.elapsed().as_secs_f64());
    }
    Ok(())
}

/// Blocking: one transaction with `events` and the consumed `offsets`.
/// On failure the transaction is left to the next instance's
/// `init_transactions`, which aborts it.
fn publish(
    producer: &Producer_,
    topic: &str,
    events: &[PublicEvent],
    offsets: &TopicPartitionList,
    group: &log_kafka::rdkafka::consumer::ConsumerGroupMetadata,
    timeout: Duration,
) -> Result<(), PublicStreamError> {
    producer
        .begin_transaction()
        .map_err(failed("begin_transaction"))?;
    let deadline = Instant::now() + timeout;
    for event in events {
        let headers = event.headers();
        let mut owned = OwnedHeaders::new_with_capacity(headers.len());
        for (key, value) in &headers {
            owned = owned.insert(Header {
                key,
                value: Some(value.as_str()),
            });
        }
        let value = event.value();
        let mut record = BaseRecord::to(topic)
            .key(event.key())
            .payload(value.as_slice())
            .headers(owned);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back))
                    if Instant::now() < deadline =>
                {
                    record = back;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err((error, _)) => return Err(failed("produce")(error)),
            }
        }
    }
    producer
        .send_offsets_to_transaction(offsets, group, timeout)
        .map_err(failed("send_offsets_to_transaction"))?;
    producer
        .commit_transaction(timeout)
        .map_err(failed("commit_transaction"))?;
    Ok(())
}

/// Blocking: up to `max` records of any partition, waiting at most `wait`
/// for the first.
fn poll(
    consumer: &BaseConsumer,
    topic: &str,
    max: usize,
    wait: Duration,
) -> Result<Vec<(i64, BatchRecord)>, PublicStreamError> {
    let mut reads = Vec::new();
    while reads.len() < max {
        let timeout = if reads.is_empty() {
            wait
        } else {
            Duration::ZERO
        };
        let Some(polled) = consumer.poll(timeout) else {
            break;
        };
        let message = match polled {
            Ok(message) => message,
            Err(KafkaError::PartitionEOF(_)) => continue,
            Err(source) => return Err(failed("poll")(source)),
        };
        let unreadable = |detail: String| PublicStreamError::Record {
            topic: topic.to_string(),
            partition: message.partition(),
            offset: message.offset(),
            detail,
        };
        let bytes = message
            .payload()
            .ok_or_else(|| unreadable("no value".into()))?;
        let record =
            BatchRecord::from_bytes(bytes).map_err(|error| unreadable(error.to_string()))?;
        if i32::from(record.shard.0) != message.partition() {
            return Err(unreadable(format!("it belongs to shard {}", record.shard)));
        }
        reads.push((message.offset(), record));
    }
    Ok(reads)
}
