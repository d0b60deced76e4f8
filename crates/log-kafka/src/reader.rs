//! `read_committed` reader of one shard's partition of the events topic (one Kafka
//! record per [`BatchRecord`]), verifying the hash chain as it goes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ledger_core::codec::{BatchRecord, Hash, GENESIS_HASH};
use ledger_core::ShardId;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crate::error::ReadError;
use crate::{blocking, KafkaConfig, Topics};

/// Where the hash chain of a shard stands: the next record must start at
/// `next_sequence` and link to `previous_hash`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainCursor {
    pub next_sequence: u64,
    pub previous_hash: Hash,
}

impl ChainCursor {
    /// The start of a shard's log: a record from event 1, linked to the zero hash.
    pub fn genesis() -> Self {
        Self {
            next_sequence: 1,
            previous_hash: GENESIS_HASH,
        }
    }

    /// Right after `record`.
    pub fn after(record: &BatchRecord) -> Self {
        Self {
            next_sequence: record.next_sequence(),
            previous_hash: record.hash,
        }
    }
}

/// A record and its offset in the partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedRecord {
    pub offset: i64,
    pub record: BatchRecord,
}

/// What one [`EventLogReader::next_batch`] returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadBatch {
    pub records: Vec<PublishedRecord>,
    /// The reader has reached the last stable offset of the partition (everything
    /// committed so far has been read).
    pub at_end: bool,
}

/// Reads the records of one shard (one partition) from an offset, with
/// `isolation.level=read_committed`: aborted and open transactions are never returned.
/// Every record's checksum is checked on decode; the reader also checks that each
/// record continues the chain (it starts right after the previous record's last event,
/// `previous_hash` = previous `hash`) and fails on a gap, an overlap or a repeat.
pub struct EventLogReader {
    consumer: Arc<BaseConsumer>,
    topic: String,
    shard: ShardId,
    cursor: Option<ChainCursor>,
    next_offset: i64,
    at_end: bool,
}

impl EventLogReader {
    /// Starts reading shard `shard` of `topics.events` at `from_offset`. `cursor` is the
    /// chain position expected at that offset ([`ChainCursor::genesis`] from offset 0);
    /// `None` trusts the first record read and checks continuity from there.
    pub fn open(
        config: &KafkaConfig,
        topics: &Topics,
        shard: ShardId,
        from_offset: i64,
        cursor: Option<ChainCursor>,
    ) -> Result<Self, ReadError> {
        let topic = topics.events.clone();
        let group = format!("{topic}.reader.{shard}");
        let consumer: BaseConsumer = config
            .client_config(&[
                ("group.id", &group),
                ("isolation.level", "read_committed"),
                ("enable.auto.commit", "false"),
                ("enable.auto.offset.store", "false"),
                ("enable.partition.eof", "true"),
                // An offset outside the log (truncated or never written) is an error, not
                // a silent jump.
                ("auto.offset.reset", "error"),
            ])
            .create()
            .map_err(|source| ReadError::Client {
                topic: topic.clone(),
                source,
            })?;
        let partition = i32::from(shard.0);
        let mut assignment = TopicPartitionList::with_capacity(1);
        assignment
            .add_partition_offset(&topic, partition, Offset::Offset(from_offset))
            .and_then(|()| consumer.assign(&assignment))
            .map_err(|source| ReadError::Assign {
                topic: topic.clone(),
                partition,
                offset: from_offset,
                source,
            })?;
        Ok(Self {
            consumer: Arc::new(consumer),
            topic,
            shard,
            cursor,
            next_offset: from_offset,
            at_end: false,
        })
    }

    pub fn shard(&self) -> ShardId {
        self.shard
    }

    /// The chain position after the last record returned.
    pub fn cursor(&self) -> Option<ChainCursor> {
        self.cursor
    }

    /// The offset after the last record returned (where to resume).
    pub fn next_offset(&self) -> i64 {
        self.next_offset
    }

    fn partition(&self) -> i32 {
        i32::from(self.shard.0)
    }

    /// Up to `max` verified records; waits at most `wait` for the first one.
    pub async fn next_batch(&mut self, max: usize, wait: Duration) -> Result<ReadBatch, ReadError> {
        let consumer = Arc::clone(&self.consumer);
        let topic = self.topic.clone();
        let partition = self.partition();
        let max = max.max(1);
        let (raw, eof) = blocking(move || poll_batch(&consumer, &topic, partition, max, wait))
            .await
            .map_err(|join| ReadError::Task {
                topic: self.topic.clone(),
                partition,
                detail: join.to_string(),
            })??;
        let mut records = Vec::with_capacity(raw.len());
        for (offset, record) in raw {
            self.check(offset, &record)?;
            self.cursor = Some(ChainCursor::after(&record));
            self.next_offset = offset + 1;
            records.push(PublishedRecord { offset, record });
        }
        self.at_end = eof || (self.at_end && records.is_empty());
        Ok(ReadBatch {
            records,
            at_end: self.at_end,
        })
    }

    /// Every committed record from the current position to the end of the partition.
    /// Fails with [`ReadError::Timeout`] if the end is not reached within `timeout`.
    pub async fn read_to_end(
        &mut self,
        timeout: Duration,
    ) -> Result<Vec<PublishedRecord>, ReadError> {
        let deadline = Instant::now() + timeout;
        let mut all = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let batch = self
                .next_batch(1024, left.min(Duration::from_secs(1)))
                .await?;
            all.extend(batch.records);
            if batch.at_end {
                return Ok(all);
            }
            if Instant::now() >= deadline {
                return Err(ReadError::Timeout {
                    topic: self.topic.clone(),
                    partition: self.partition(),
                    waited_ms: timeout.as_millis() as u64,
                });
            }
        }
    }

    fn check(&self, offset: i64, record: &BatchRecord) -> Result<(), ReadError> {
        if record.shard != self.shard {
            return Err(ReadError::WrongShard {
                topic: self.topic.clone(),
                partition: self.partition(),
                offset,
                expected: self.shard,
                found: record.shard,
            });
        }
        if record.is_empty() {
            return Err(ReadError::NoEntries {
                shard: self.shard,
                first_sequence: record.first_sequence,
                offset,
            });
        }
        let Some(cursor) = self.cursor else {
            return Ok(());
        };
        if record.first_sequence != cursor.next_sequence {
            return Err(ReadError::SequenceGap {
                shard: self.shard,
                expected: cursor.next_sequence,
                found: record.first_sequence,
                offset,
            });
        }
        if record.previous_hash != cursor.previous_hash {
            return Err(ReadError::BrokenChain {
                shard: self.shard,
                sequence: record.first_sequence,
                offset,
            });
        }
        Ok(())
    }
}

/// Records looked at first, back from the end, when searching for the last one.
const TAIL_WINDOW_RECORDS: i64 = 256;

/// The last committed record of shard `shard` on the events topic, `None` when
/// the partition holds none. Call it after the shard's transactional producer
/// was initialised (which aborts its predecessor's open transaction), so
/// nothing is pending. Reads a window before the end, widening it (×8) while
/// it holds only transaction markers and aborted records.
pub async fn last_record(
    config: &KafkaConfig,
    topics: &Topics,
    shard: ShardId,
    timeout: Duration,
) -> Result<Option<BatchRecord>, ReadError> {
    let deadline = Instant::now() + timeout;
    let (low, high) = wait_until_stable(config, topics, shard, timeout).await?;
    let mut window = TAIL_WINDOW_RECORDS;
    loop {
        if high <= low {
            return Ok(None);
        }
        let start = (high - window).max(low);
        let mut reader = EventLogReader::open(config, topics, shard, start, None)?;
        let left = deadline.saturating_duration_since(Instant::now());
        let records = reader.read_to_end(left).await?;
        if let Some(last) = records.into_iter().last() {
            return Ok(Some(last.record));
        }
        if start == low {
            return Ok(None);
        }
        window = window.saturating_mul(8);
    }
}

/// The committed records of shard `shard` holding events after `after`, in
/// order (empty when the partition ends at or before it). Like
/// [`last_record`], call it once the shard's transactional producer was
/// initialised. Reads a window before the end, widening it (×8) until it
/// reaches back to the record that starts right after `after` (or to the
/// start of the partition); the records read are chained by the reader.
pub async fn records_after(
    config: &KafkaConfig,
    topics: &Topics,
    shard: ShardId,
    after: u64,
    timeout: Duration,
) -> Result<Vec<BatchRecord>, ReadError> {
    let deadline = Instant::now() + timeout;
    let (low, high) = wait_until_stable(config, topics, shard, timeout).await?;
    let mut window = TAIL_WINDOW_RECORDS;
    loop {
        if high <= low {
            return Ok(Vec::new());
        }
        let start = (high - window).max(low);
        let mut reader = EventLogReader::open(config, topics, shard, start, None)?;
        let left = deadline.saturating_duration_since(Instant::now());
        let records = reader.read_to_end(left).await?;
        let reaches_back = records
            .first()
            .is_some_and(|first| first.record.first_sequence <= after + 1);
        if reaches_back || start == low {
            return Ok(records
                .into_iter()
                .map(|published| published.record)
                .filter(|record| record.last_sequence() > after)
                .collect());
        }
        window = window.saturating_mul(8);
    }
}

/// How often [`wait_until_stable`] asks again.
const STABLE_POLL_INTERVAL: Duration = Duration::from_millis(200);

/// Waits until shard `shard`'s partition of the events topic holds no open
/// transaction — its last stable offset (the end `read_committed` readers
/// reach) equals its high watermark — and returns `(low watermark, end)`.
/// A partition whose writer was just initialised normally is stable at once;
/// one that stays unstable holds a transaction nobody will end (see
/// [`crate::ShardTransactionalWriter::end_hanging_transactions`]), and reading
/// "the last record" there would miss records that become visible later.
pub async fn wait_until_stable(
    config: &KafkaConfig,
    topics: &Topics,
    shard: ShardId,
    timeout: Duration,
) -> Result<(i64, i64), ReadError> {
    let started = Instant::now();
    let topic = topics.events.clone();
    let partition = i32::from(shard.0);
    let client = |isolation: &str| -> Result<Arc<BaseConsumer>, ReadError> {
        config
            .client_config(&[
                ("group.id", &format!("{topic}.stability.{shard}")),
                ("isolation.level", isolation),
                ("enable.auto.commit", "false"),
            ])
            .create()
            .map(Arc::new)
            .map_err(|source| ReadError::Client {
                topic: topic.clone(),
                source,
            })
    };
    let committed = client("read_committed")?;
    let uncommitted = client("read_uncommitted")?;
    loop {
        let left = timeout.saturating_sub(started.elapsed());
        let (committed, uncommitted) = (Arc::clone(&committed), Arc::clone(&uncommitted));
        let watermark_topic = topic.clone();
        let ((low, stable), (_, high)) = blocking(move || {
            // `read_committed` answers the last stable offset (librdkafka ≥ 1.7.1).
            let stable = committed.fetch_watermarks(&watermark_topic, partition, left)?;
            let high = uncommitted.fetch_watermarks(&watermark_topic, partition, left)?;
            Ok::<_, KafkaError>((stable, high))
        })
        .await
        .map_err(|join| ReadError::Task {
            topic: topic.clone(),
            partition,
            detail: join.to_string(),
        })?
        .map_err(|source| ReadError::Watermarks {
            topic: topic.clone(),
            partition,
            source,
        })?;
        if stable >= high {
            return Ok((low, stable));
        }
        if started.elapsed() >= timeout {
            return Err(ReadError::OpenTransaction {
                topic,
                partition,
                stable,
                high,
                waited_ms: timeout.as_millis() as u64,
            });
        }
        tokio::time::sleep(STABLE_POLL_INTERVAL).await;
    }
}

/// Blocking: polls up to `max` records (decoded and checksum-checked), waiting at most
/// `wait` for the first; `true` when the end of the partition was reached.
fn poll_batch(
    consumer: &BaseConsumer,
    topic: &str,
    partition: i32,
    max: usize,
    wait: Duration,
) -> Result<(Vec<(i64, BatchRecord)>, bool), ReadError> {
    let deadline = Instant::now() + wait;
    let mut out = Vec::new();
    while out.len() < max {
        let timeout = if out.is_empty() {
            deadline.saturating_duration_since(Instant::now())
        } else {
            Duration::ZERO
        };
        let Some(polled) = consumer.poll(timeout) else {
            break;
        };
        let message = match polled {
            Ok(message) => message,
            Err(KafkaError::PartitionEOF(_)) => return Ok((out, true)),
            Err(source) => {
                return Err(ReadError::Consume {
                    topic: topic.to_string(),
                    partition,
                    source,
                })
            }
        };
        let offset = message.offset();
        let Some(bytes) = message.payload() else {
            return Err(ReadError::EmptyRecord {
                topic: topic.to_string(),
                partition,
                offset,
            });
        };
        let record = BatchRecord::from_bytes(bytes).map_err(|source| ReadError::Corrupt {
            topic: topic.to_string(),
            partition,
            offset,
            source,
        })?;
        out.push((offset, record));
    }
    Ok((out, false))
}

/// Most time [`read_partition_bytes`] waits for one poll.
const RAW_POLL_WAIT: Duration = Duration::from_millis(500);

/// Every committed record of `topic` partition `partition`, from its first
/// offset to its end, handed to `visit` as `(offset, bytes)` without
/// decoding or checking anything (an auditor's tool decides what a broken
/// record means). `read_committed`, so aborted and open transactions are
/// skipped. Blocking; fails with [`ReadError::Timeout`] if the end is not
/// reached within `timeout`. Returns the number of records visited.
pub fn read_partition_bytes(
    config: &KafkaConfig,
    topic: &str,
    partition: i32,
    timeout: Duration,
    visit: &mut dyn FnMut(i64, &[u8]),
) -> Result<u64, ReadError> {
    let deadline = Instant::now() + timeout;
    let consumer: BaseConsumer = config
        .client_config(&[
            ("group.id", &format!("{topic}.audit.{partition}")),
            ("isolation.level", "read_committed"),
            ("enable.auto.commit", "false"),
            ("enable.auto.offset.store", "false"),
            ("enable.partition.eof", "true"),
        ])
        .create()
        .map_err(|source| ReadError::Client {
            topic: topic.to_string(),
            source,
        })?;
    let mut assignment = TopicPartitionList::with_capacity(1);
    assignment
        .add_partition_offset(topic, partition, Offset::Beginning)
        .and_then(|()| consumer.assign(&assignment))
        .map_err(|source| ReadError::Assign {
            topic: topic.to_string(),
            partition,
            offset: 0,
            source,
        })?;
    let mut visited: u64 = 0;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ReadError::Timeout {
                topic: topic.to_string(),
                partition,
                waited_ms: timeout.as_millis() as u64,
            });
        }
        let Some(polled) = consumer.poll(left.min(RAW_POLL_WAIT)) else {
            continue;
        };
        match polled {
            Ok(message) => {
                visit(message.offset(), message.payload().unwrap_or_default());
                visited += 1;
            }
            Err(KafkaError::PartitionEOF(_)) => return Ok(visited),
            Err(source) => {
                return Err(ReadError::Consume {
                    topic: topic.to_string(),
                    partition,
                    source,
                })
            }
        }
    }
}

/// The number of partitions of `topic` (blocking metadata request).
pub fn partition_count(
    config: &KafkaConfig,
    topic: &str,
    timeout: Duration,
) -> Result<i32, ReadError> {
    let consumer: BaseConsumer = config
        .client_config(&[("group.id", &format!("{topic}.audit"))])
        .create()
        .map_err(|source| ReadError::Client {
            topic: topic.to_string(),
            source,
        })?;
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(|source| ReadError::Consume {
            topic: topic.to_string(),
            partition: -1,
            source,
        })?;
    Ok(metadata
        .topics()
        .iter()
        .find(|found| found.name() == topic)
        .map(|found| found.partitions().len() as i32)
        .unwrap_or(0))
}
