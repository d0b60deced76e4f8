//! One transactional producer per shard: a batch is ONE Kafka transaction.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ledger_core::codec::{self, BatchRecord, MessageEnvelope};
use ledger_core::ShardId;
use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};

use crate::error::WriteError;
use crate::{blocking, KafkaConfig, Topics};

type TxProducer = ThreadedProducer<DefaultProducerContext>;

/// Bound of each blocking transactional call (`init`, `commit`, `abort`, …).
const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// `<prefix>-engine-<shard>`: one id per shard, so a new owner fences the old one.
pub fn transactional_id(prefix: &str, shard: ShardId) -> String {
    format!("{prefix}-engine-{shard}")
}

/// The key of a shard's records on the events topic (and of a receiver's on the
/// shard-messages topic): the shard number in decimal.
pub fn event_key(shard: ShardId) -> String {
    shard.0.to_string()
}

/// Input offsets consumed by a batch, committed inside its transaction.
pub struct ConsumedOffsets {
    /// From the input consumer's `group_metadata()`.
    pub group: ConsumerGroupMetadata,
    /// For each input partition, the offset of the NEXT record to consume.
    pub offsets: TopicPartitionList,
}

impl ConsumedOffsets {
    /// `next_offsets`: `(topic, partition, last consumed offset + 1)`; offsets must not
    /// be negative.
    pub fn new(
        group: ConsumerGroupMetadata,
        next_offsets: &[(&str, i32, i64)],
    ) -> Result<Self, WriteError> {
        let mut offsets = TopicPartitionList::with_capacity(next_offsets.len());
        for (topic, partition, next) in next_offsets {
            offsets
                .add_partition_offset(topic, *partition, Offset::Offset(*next))
                .map_err(|_| WriteError::InvalidOffset {
                    topic: topic.to_string(),
                    partition: *partition,
                    offset: *next,
                })?;
        }
        Ok(Self { group, offsets })
    }
}

/// Which topic a record goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Destination {
    Events,
    Messages,
    Replies,
}

/// A reply to publish in a shard's transaction: `value` is an encoded
/// [`ledger_core::codec::ReplyRecord`], keyed by its request id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyRecordOut {
    pub partition: i32,
    pub request_id: String,
    pub value: Vec<u8>,
}

/// Sends the engine's replies outside its transactions, as soon as what
/// they answer is durable in the shard's source of truth (CQL): a caller
/// does not wait for the Kafka commit that publishes the batch. An
/// idempotent producer with `acks=all` and almost no linger. Best effort by
/// design: a reply that is lost (a broker down, the process gone) costs the
/// caller one resend of its command, which the engine answers from the
/// stored outcome.
pub struct ReplyProducer {
    producer: ThreadedProducer<DefaultProducerContext>,
    topic: String,
}

/// How long a reply may wait to be batched with others (librdkafka's `linger.ms`).
const REPLY_LINGER_MS: &str = "1";

impl ReplyProducer {
    pub fn connect(config: &KafkaConfig, topics: &Topics) -> Result<Self, WriteError> {
        let producer = config
            .client_config(&[
                ("enable.idempotence", "true"),
                ("acks", "all"),
                ("linger.ms", REPLY_LINGER_MS),
            ])
            .create()
            .map_err(|source| WriteError::ReplyClient { source })?;
        Ok(Self {
            producer,
            topic: topics.replies.clone(),
        })
    }

    /// Queues `replies` for sending; returns how many could not be queued
    /// (the producer's queue is full), which their callers recover from by
    /// resending.
    pub fn send(&self, replies: &[ReplyRecordOut]) -> usize {
        let mut refused = 0;
        for reply in replies {
            let record = BaseRecord::<str, [u8]>::to(&self.topic)
                .partition(reply.partition)
                .key(reply.request_id.as_str())
                .payload(reply.value.as_slice());
            if self.producer.send(record).is_err() {
                refused += 1;
            }
        }
        refused
    }
}

/// A record ready to be produced.
struct Record {
    destination: Destination,
    partition: i32,
    key: String,
    value: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Fenced,
    Fatal,
    Other,
}

fn is_fencing(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::Fenced
            | RDKafkaErrorCode::ProducerFenced
            | RDKafkaErrorCode::InvalidProducerEpoch
    )
}

fn classify(error: &KafkaError) -> Class {
    if let KafkaError::Transaction(inner) = error {
        if is_fencing(inner.code()) {
            return Class::Fenced;
        }
        if inner.is_fatal() {
            return Class::Fatal;
        }
        return Class::Other;
    }
    match error.rdkafka_error_code() {
        Some(code) if is_fencing(code) => Class::Fenced,
        Some(RDKafkaErrorCode::Fatal) => Class::Fatal,
        _ => Class::Other,
    }
}

/// First retry delay of a transactional request the broker refused for now
/// (librdkafka's `retry.backoff.ms`).
const TRANSACTION_RETRY_BACKOFF_MS: &str = "5";
/// Longest retry delay (librdkafka's `retry.backoff.max.ms`).
const TRANSACTION_RETRY_BACKOFF_MAX_MS: &str = "100";

/// The transactional producer of one shard (`transactional.id = <prefix>-engine-<shard>`,
/// `enable.idempotence=true`, `acks=all`).
pub struct ShardTransactionalWriter {
    producer: Arc<TxProducer>,
    transactional_id: String,
    shard: ShardId,
    events_topic: Arc<str>,
    messages_topic: Arc<str>,
    replies_topic: Arc<str>,
    call_timeout: Duration,
    /// A transaction was begun and neither committed nor aborted.
    open: bool,
    /// Set once fenced or fatally failed: `(fenced, detail)`.
    defunct: Option<(bool, String)>,
}

impl ShardTransactionalWriter {
    /// Creates the producer and runs `init_transactions`, which fences any previous
    /// instance with the same transactional id and aborts its open transaction.
    pub async fn connect(
        config: &KafkaConfig,
        topics: &Topics,
        transactional_prefix: &str,
        shard: ShardId,
    ) -> Result<Self, WriteError> {
        let transactional_id = transactional_id(transactional_prefix, shard);
        let producer: TxProducer = config
            .client_config(&[
                ("transactional.id", &transactional_id),
                ("client.id", &transactional_id),
                ("enable.idempotence", "true"),
                ("acks", "all"),
                // A transaction that begins right after the previous commit
                // meets CONCURRENT_TRANSACTIONS on AddOffsetsToTxn until the
                // commit markers are written; librdkafka retries it after
                // `retry.backoff.ms` (default 100 ms, growing to 1 s), which
                // was the p90 of a shard's transactions. Retry sooner.
                ("retry.backoff.ms", TRANSACTION_RETRY_BACKOFF_MS),
                ("retry.backoff.max.ms", TRANSACTION_RETRY_BACKOFF_MAX_MS),
            ])
            .create()
            .map_err(|source| WriteError::Client {
                transactional_id: transactional_id.clone(),
                source,
            })?;
        let mut writer = Self {
            producer: Arc::new(producer),
            transactional_id,
            shard,
            events_topic: topics.events.as_str().into(),
            messages_topic: topics.shard_messages.as_str().into(),
            replies_topic: topics.replies.as_str().into(),
            call_timeout: DEFAULT_CALL_TIMEOUT,
            open: false,
            defunct: None,
        };
        let timeout = writer.call_timeout;
        writer
            .call("init_transactions", move |producer| {
                producer.init_transactions(timeout)
            })
            .await?;
        Ok(writer)
    }

    /// Ends whatever transaction of this producer id a partition still holds
    /// open, then leaves nothing open itself.
    ///
    /// `init_transactions` makes the coordinator end the previous owner's
    /// transaction, but only on the partitions the coordinator remembers and can
    /// reach: a broker that restarts while a commit is being completed may skip
    /// the markers of partitions whose leader it does not know yet, and then
    /// forget them. Such a *hanging* transaction keeps the partition's last
    /// stable offset where it began (`read_committed` readers see nothing after
    /// it, a group's pending offsets stay unstable so its members never start
    /// fetching), and the next marker of the same producer id — a later commit
    /// of the new owner — would make its records visible behind the ones the
    /// new owner republished.
    ///
    /// So the new owner runs one transaction that touches every partition a
    /// shard writes to (its partition of the events topic, each partition of the
    /// shard-messages and replies topics, and the group's offsets through
    /// `consumed`) with one empty record each, and aborts it: its abort marker ends, for this producer id, every
    /// transaction a partition still holds open. Returns the partitions touched.
    pub async fn end_hanging_transactions(
        &mut self,
        consumed: Option<ConsumedOffsets>,
    ) -> Result<usize, WriteError> {
        let timeout = self.call_timeout;
        // Every partition of the shard-messages and replies topics (a shard
        // sends to any of them); of the events topic, the shard's own.
        let fanned_out = [
            Arc::clone(&self.messages_topic),
            Arc::clone(&self.replies_topic),
        ];
        let partitions = self
            .call("fetch_metadata", move |producer| {
                fanned_out
                    .iter()
                    .map(|topic| partition_count(producer, topic, timeout))
                    .collect::<Result<Vec<i32>, KafkaError>>()
            })
            .await?;
        let sweep = |destination, partition| Record {
            destination,
            partition,
            key: SWEEP_KEY.to_string(),
            value: Vec::new(),
        };
        let mut records = vec![sweep(Destination::Events, i32::from(self.shard.0))];
        for (destination, count) in [Destination::Messages, Destination::Replies]
            .into_iter()
            .zip(partitions)
        {
            records.extend((0..count).map(|partition| sweep(destination, partition)));
        }
        let count = records.len();
        let mut pending = self.begin_records(records).await?;
        pending.flush().await?;
        if let Some(consumed) = consumed {
            pending.send_offsets(consumed).await?;
        }
        pending.abort().await?;
        Ok(count)
    }

    pub fn shard(&self) -> ShardId {
        self.shard
    }

    pub fn transactional_id(&self) -> &str {
        &self.transactional_id
    }

    /// Bound of each blocking transactional call (default 30 s).
    pub fn set_call_timeout(&mut self, timeout: Duration) {
        self.call_timeout = timeout;
    }

    /// Publishes a batch as one transaction: each record to the events topic (partition
    /// and key = this shard, value = [`BatchRecord::to_bytes`]), each message to the
    /// shard-messages topic (partition and key = receiver, value = bincode
    /// [`MessageEnvelope`]) and, when given, the consumed input offsets
    /// (`send_offsets_to_transaction`); then commits.
    ///
    /// On failure the transaction is aborted and [`WriteError::Aborted`] returned (the
    /// batch may be retried); [`WriteError::Fenced`] means another instance owns the shard.
    pub async fn commit_batch(
        &mut self,
        records: &[BatchRecord],
        messages: &[MessageEnvelope],
        consumed: Option<ConsumedOffsets>,
    ) -> Result<(), WriteError> {
        self.begin(records, messages, &[])
            .await?
            .commit(consumed)
            .await
    }

    /// Begins a transaction and enqueues the batch's records (and `replies`,
    /// each to its partition of the replies topic), without committing.
    pub async fn begin(
        &mut self,
        records: &[BatchRecord],
        messages: &[MessageEnvelope],
        replies: &[ReplyRecordOut],
    ) -> Result<PendingTransaction<'_>, WriteError> {
        let mut records = self.encode(records, messages)?;
        records.extend(replies.iter().map(|reply| Record {
            destination: Destination::Replies,
            partition: reply.partition,
            key: reply.request_id.clone(),
            value: reply.value.clone(),
        }));
        self.begin_records(records).await
    }

    /// Begins a transaction (ending one a dropped [`PendingTransaction`] left
    /// open) and enqueues `records`.
    async fn begin_records(
        &mut self,
        records: Vec<Record>,
    ) -> Result<PendingTransaction<'_>, WriteError> {
        if self.open {
            // A PendingTransaction was dropped without an outcome: end it first.
            self.abort_open("abort_transaction").await?;
        }
        let count = records.len();
        let topics = [
            Arc::clone(&self.events_topic),
            Arc::clone(&self.messages_topic),
            Arc::clone(&self.replies_topic),
        ];
        let timeout = self.call_timeout;
        self.call("begin_transaction", |producer| producer.begin_transaction())
            .await?;
        self.open = true;
        let produced = self
            .call("produce", move |producer| {
                produce_all(producer, &topics, records, timeout)
            })
            .await;
        if let Err(error) = produced {
            return Err(self.after_failure(error).await);
        }
        Ok(PendingTransaction {
            writer: self,
            records: count,
        })
    }

    fn encode(
        &self,
        batch_records: &[BatchRecord],
        messages: &[MessageEnvelope],
    ) -> Result<Vec<Record>, WriteError> {
        let mut records = Vec::with_capacity(batch_records.len() + messages.len());
        let key = event_key(self.shard);
        for record in batch_records {
            if record.shard != self.shard {
                return Err(WriteError::ForeignRecord {
                    shard: self.shard,
                    record_shard: record.shard,
                    first_sequence: record.first_sequence,
                });
            }
            records.push(Record {
                destination: Destination::Events,
                partition: i32::from(self.shard.0),
                key: key.clone(),
                value: record.to_bytes(),
            });
        }
        for message in messages {
            if message.from != self.shard {
                return Err(WriteError::ForeignMessage {
                    shard: self.shard,
                    from: message.from,
                    sequence: message.sequence,
                });
            }
            records.push(Record {
                destination: Destination::Messages,
                partition: i32::from(message.to.0),
                key: event_key(message.to),
                value: codec::encode(message),
            });
        }
        Ok(records)
    }

    /// Runs a blocking producer call on the blocking pool. Fencing and fatal errors
    /// make the writer defunct ([`WriteError::Fenced`] / [`WriteError::Fatal`]); other
    /// failures come back as [`WriteError::Transaction`] for the caller to abort or report.
    async fn call<T, F>(&mut self, operation: &'static str, f: F) -> Result<T, WriteError>
    where
        F: FnOnce(&TxProducer) -> Result<T, KafkaError> + Send + 'static,
        T: Send + 'static,
    {
        match self.call_raw(operation, f).await? {
            Ok(value) => Ok(value),
            Err(source) => Err(self.judge(operation, source)),
        }
    }

    async fn call_raw<T, F>(
        &mut self,
        operation: &'static str,
        f: F,
    ) -> Result<Result<T, KafkaError>, WriteError>
    where
        F: FnOnce(&TxProducer) -> Result<T, KafkaError> + Send + 'static,
        T: Send + 'static,
    {
        if let Some((fenced, detail)) = &self.defunct {
            return Err(self.defunct_error(operation, *fenced, detail.clone()));
        }
        let producer = Arc::clone(&self.producer);
        blocking(move || f(&producer))
            .await
            .map_err(|join| WriteError::Task {
                transactional_id: self.transactional_id.clone(),
                operation,
                detail: join.to_string(),
            })
    }

    fn defunct_error(&self, operation: &'static str, fenced: bool, detail: String) -> WriteError {
        let transactional_id = self.transactional_id.clone();
        if fenced {
            WriteError::Fenced {
                transactional_id,
                operation,
                detail,
            }
        } else {
            WriteError::Fatal {
                transactional_id,
                operation,
                detail,
            }
        }
    }

    /// Turns a failed call into an error; fencing and fatal errors poison the writer.
    fn judge(&mut self, operation: &'static str, source: KafkaError) -> WriteError {
        match classify(&source) {
            Class::Fenced | Class::Fatal => {
                let fenced = classify(&source) == Class::Fenced;
                let detail = source.to_string();
                self.defunct = Some((fenced, detail.clone()));
                self.open = false;
                self.defunct_error(operation, fenced, detail)
            }
            Class::Other => WriteError::Transaction {
                transactional_id: self.transactional_id.clone(),
                operation,
                source,
            },
        }
    }

    /// After a failed call inside an open transaction: abort it (unless the writer is
    /// defunct) and describe what happened.
    async fn after_failure(&mut self, error: WriteError) -> WriteError {
        let WriteError::Transaction {
            operation, source, ..
        } = error
        else {
            return error;
        };
        let timeout = self.call_timeout;
        match self
            .call_raw("abort_transaction", move |producer| {
                producer.abort_transaction(timeout)
            })
            .await
        {
            Err(task) => task,
            Ok(Ok(())) => {
                self.open = false;
                WriteError::Aborted {
                    transactional_id: self.transactional_id.clone(),
                    operation,
                    source,
                }
            }
            Ok(Err(abort)) => match classify(&abort) {
                Class::Fenced | Class::Fatal => self.judge("abort_transaction", abort),
                Class::Other => WriteError::AbortFailed {
                    transactional_id: self.transactional_id.clone(),
                    operation,
                    source: Box::new(source),
                    abort: Box::new(abort),
                },
            },
        }
    }

    async fn abort_open(&mut self, operation: &'static str) -> Result<(), WriteError> {
        let timeout = self.call_timeout;
        self.call(operation, move |producer| {
            producer.abort_transaction(timeout)
        })
        .await?;
        self.open = false;
        Ok(())
    }
}

/// Key of the empty records [`ShardTransactionalWriter::end_hanging_transactions`]
/// writes in the transaction it aborts (never visible to `read_committed` readers).
pub const SWEEP_KEY: &str = "ledger-sweep";

/// Partitions of `topic`, from the cluster's metadata.
fn partition_count(
    producer: &TxProducer,
    topic: &str,
    timeout: Duration,
) -> Result<i32, KafkaError> {
    let metadata = producer.client().fetch_metadata(Some(topic), timeout)?;
    let partitions = metadata
        .topics()
        .iter()
        .find(|found| found.name() == topic)
        .map_or(0, |found| found.partitions().len());
    if partitions == 0 {
        return Err(KafkaError::MetadataFetch(
            RDKafkaErrorCode::UnknownTopicOrPartition,
        ));
    }
    Ok(i32::try_from(partitions).expect("a topic has fewer than 2^31 partitions"))
}

/// Enqueues every record; waits (bounded) while librdkafka's queue is full.
fn produce_all(
    producer: &TxProducer,
    topics: &[Arc<str>; 3],
    records: Vec<Record>,
    timeout: Duration,
) -> Result<(), KafkaError> {
    let deadline = Instant::now() + timeout;
    for record in &records {
        let topic: &str = match record.destination {
            Destination::Events => &topics[0],
            Destination::Messages => &topics[1],
            Destination::Replies => &topics[2],
        };
        let mut base = BaseRecord::to(topic)
            .partition(record.partition)
            .key(record.key.as_str())
            .payload(record.value.as_slice());
        loop {
            match producer.send(base) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back))
                    if Instant::now() < deadline =>
                {
                    base = back;
                    producer.poll(Duration::from_millis(5));
                }
                Err((error, _)) => return Err(error),
            }
        }
    }
    Ok(())
}

/// Waits until every enqueued record is delivered (or failed).
///
/// Not `Producer::flush`: rdkafka 0.38 implements it by polling the event queue in slices
/// of up to 100 ms, a queue the `ThreadedProducer`'s own thread also serves, so every
/// flush (and every commit, which flushes first) cost up to 100 ms. librdkafka's
/// `rd_kafka_flush` in event mode waits on the count of outstanding messages instead,
/// which the background thread's delivery-report handling brings to zero.
#[allow(unsafe_code)] // one FFI call; see the SAFETY comment
fn flush_outstanding(producer: &TxProducer, timeout: Duration) -> Result<(), KafkaError> {
    let millis = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: the pointer is the live `rd_kafka_t` owned by `producer`, which outlives
    // this call; `rd_kafka_flush` is thread-safe.
    let code = unsafe { rdkafka_sys::rd_kafka_flush(producer.client().native_ptr(), millis) };
    match RDKafkaErrorCode::from(code) {
        RDKafkaErrorCode::NoError => Ok(()),
        code => Err(KafkaError::Flush(code)),
    }
}

/// A begun transaction whose records are enqueued: commit or abort it. Dropping it
/// leaves the transaction open; the writer aborts it before the next `begin`.
pub struct PendingTransaction<'w> {
    writer: &'w mut ShardTransactionalWriter,
    records: usize,
}

impl PendingTransaction<'_> {
    /// Records enqueued in this transaction.
    pub fn records(&self) -> usize {
        self.records
    }

    /// Waits until every record reached the broker (still uncommitted, so invisible to
    /// `read_committed` readers).
    pub async fn flush(&mut self) -> Result<(), WriteError> {
        let timeout = self.writer.call_timeout;
        let flushed = self
            .writer
            .call("flush", move |producer| {
                flush_outstanding(producer, timeout)
            })
            .await;
        match flushed {
            Ok(()) => Ok(()),
            Err(error) => Err(self.writer.after_failure(error).await),
        }
    }

    /// Adds consumed input offsets to the transaction (`send_offsets_to_transaction`):
    /// the group sees them only if the transaction commits.
    pub async fn send_offsets(&mut self, consumed: ConsumedOffsets) -> Result<(), WriteError> {
        let timeout = self.writer.call_timeout;
        let sent = self
            .writer
            .call("send_offsets_to_transaction", move |producer| {
                producer.send_offsets_to_transaction(&consumed.offsets, &consumed.group, timeout)
            })
            .await;
        match sent {
            Ok(()) => Ok(()),
            Err(error) => Err(self.writer.after_failure(error).await),
        }
    }

    /// Adds the consumed offsets (if any) and commits the transaction. On a non-fatal
    /// failure the transaction is aborted ([`WriteError::Aborted`]).
    pub async fn commit(mut self, consumed: Option<ConsumedOffsets>) -> Result<(), WriteError> {
        if let Some(consumed) = consumed {
            self.send_offsets(consumed).await?;
        }
        let writer = self.writer;
        let timeout = writer.call_timeout;
        let committed = writer
            .call("commit_transaction", move |producer| {
                // Deliver first, without rdkafka's 100 ms polling slices; then
                // `commit_transaction`'s own flush finds nothing outstanding.
                flush_outstanding(producer, timeout)?;
                producer.commit_transaction(timeout)
            })
            .await;
        match committed {
            Ok(()) => {
                writer.open = false;
                Ok(())
            }
            Err(error) => Err(writer.after_failure(error).await),
        }
    }

    /// Aborts the transaction: none of its records or offsets become visible.
    pub async fn abort(self) -> Result<(), WriteError> {
        self.writer.abort_open("abort_transaction").await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transactional_ids_follow_the_design() {
        assert_eq!(transactional_id("ledger", ShardId(3)), "ledger-engine-3");
        assert_eq!(event_key(ShardId(12)), "12");
    }

    #[test]
    fn consumed_offsets_must_not_be_negative() {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        // No broker needed: the consumer is never polled.
        let consumer: BaseConsumer = KafkaConfig::new("127.0.0.1:1")
            .client_config(&[("group.id", "unit-test")])
            .create()
            .unwrap();
        let group = || consumer.group_metadata().unwrap();
        let offsets = ConsumedOffsets::new(group(), &[("ledger.commands", 2, 7)]).unwrap();
        let element = offsets
            .offsets
            .find_partition("ledger.commands", 2)
            .unwrap();
        assert_eq!(element.offset(), Offset::Offset(7));
        assert!(matches!(
            ConsumedOffsets::new(group(), &[("ledger.commands", 0, -1)]),
            Err(WriteError::InvalidOffset { offset: -1, .. })
        ));
    }

    #[test]
    fn fencing_codes_are_recognised() {
        for code in [
            RDKafkaErrorCode::Fenced,
            RDKafkaErrorCode::ProducerFenced,
            RDKafkaErrorCode::InvalidProducerEpoch,
        ] {
            assert_eq!(
                classify(&KafkaError::MessageProduction(code)),
                Class::Fenced
            );
        }
        assert_eq!(
            classify(&KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)),
            Class::Other
        );
    }
}
