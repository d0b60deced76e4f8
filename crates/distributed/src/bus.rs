//! The command API's view of the distributed engine: a command becomes a
//! record on the commands topic (partition = its home shard); whichever
//! worker owns that shard decides it and, once the decision is durable in
//! CQL, sends the answer to this instance's replies partition (outside the
//! Kafka transaction that publishes the events, which follows).

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use engine::ports::{CommandBus, SubmitError};
use ledger_core::codec::{CommandRecord, ReplyRecord};
use ledger_core::{Command, CommandMeta, Completion, Config};
use log_kafka::rdkafka::consumer::{Consumer, StreamConsumer};
use log_kafka::rdkafka::message::Message;
use log_kafka::rdkafka::producer::{FutureProducer, FutureRecord};
use log_kafka::rdkafka::util::Timeout;
use log_kafka::rdkafka::{Offset, TopicPartitionList};
use log_kafka::{KafkaConfig, TopicAdmin, Topics};
use tokio::sync::{oneshot, Semaphore};

use crate::metrics as names;

/// Limits of the bus.
#[derive(Debug, Clone)]
pub struct BusSettings {
    /// Commands waiting for their reply at once; beyond, `Overloaded`.
    pub in_flight_max: usize,
    /// How long `submit` waits for the reply.
    pub submit_timeout: Duration,
    /// Bound of producing one command record.
    pub produce_timeout: Duration,
    /// A reply later than this makes the bus produce the same record again
    /// (then after twice as long, and so on, within `submit_timeout`).
    ///
    /// A worker that takes a shard over restores it from CQL, where reply
    /// addresses are not kept: a command it finishes (a grant waiting for
    /// its credit, a purchase waiting for its item) has nobody to answer.
    /// The engine treats the repeated record as the retry it is: it answers
    /// a finished command from its stored outcome, and attaches the new
    /// address to a running one. Nothing applies twice. Only commands
    /// remembered by id are sent again (`Command::is_repeatable`).
    pub resend_after: Duration,
}

impl Default for BusSettings {
    fn default() -> Self {
        Self {
            in_flight_max: 16_384,
            submit_timeout: Duration::from_secs(30),
            produce_timeout: Duration::from_secs(10),
            resend_after: Duration::from_secs(2),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("cannot reach kafka at {bootstrap}: {detail}")]
    Kafka { bootstrap: String, detail: String },
    #[error("topic {topic} has no partitions")]
    NoReplyPartitions { topic: String },
}

type Waiters = Arc<Mutex<HashMap<String, oneshot::Sender<Completion>>>>;

/// A [`CommandBus`] over Kafka. Cheap to share behind an `Arc`.
pub struct KafkaCommandBus {
    producer: FutureProducer,
    topics: Topics,
    core: Arc<Config>,
    instance: String,
    reply_partition: i32,
    next_request: AtomicU64,
    waiters: Waiters,
    in_flight: Arc<Semaphore>,
    settings: BusSettings,
    reader: tokio::task::JoinHandle<()>,
}

/// A random 64-bit value from the standard library's per-process random keys.
fn random_u64() -> u64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|elapsed| elapsed.as_nanos())
            .unwrap_or(0),
    );
    hasher.write_u32(std::process::id());
    hasher.finish()
}

impl KafkaCommandBus {
    /// Picks a replies partition, starts reading it from its current end, and
    /// creates the idempotent producer of commands.
    pub async fn connect(
        kafka: &KafkaConfig,
        topics: Topics,
        core: Config,
        settings: BusSettings,
    ) -> Result<KafkaCommandBus, BusError> {
        names::describe();
        let failed = |detail: String| BusError::Kafka {
            bootstrap: kafka.bootstrap.clone(),
            detail,
        };
        let admin = TopicAdmin::connect(kafka).map_err(|error| failed(error.to_string()))?;
        let partitions = admin
            .partition_count(&topics.replies)
            .await
            .map_err(|error| failed(error.to_string()))?;
        if partitions <= 0 {
            return Err(BusError::NoReplyPartitions {
                topic: topics.replies.clone(),
            });
        }
        let random = random_u64();
        let instance = format!("{random:016x}");
        let reply_partition = (random % partitions as u64) as i32;
        let consumer: StreamConsumer = kafka
            .client_config(&[
                (
                    "group.id",
                    &format!("{}-replies-{instance}", topics.replies),
                ),
                ("isolation.level", "read_committed"),
                ("enable.auto.commit", "false"),
                ("enable.auto.offset.store", "false"),
                ("fetch.wait.max.ms", "10"),
            ])
            .create()
            .map_err(|error| failed(error.to_string()))?;
        // Start at the current end, resolved now: a reply produced after the
        // first command is sent must not be skipped by a lazy "end".
        let (_, high) = {
            let topic = topics.replies.clone();
            let probe: log_kafka::rdkafka::consumer::BaseConsumer = kafka
                .client_config(&[])
                .create()
                .map_err(|error| failed(error.to_string()))?;
            tokio::task::spawn_blocking(move || {
                probe.fetch_watermarks(&topic, reply_partition, Duration::from_secs(30))
            })
            .await
            .map_err(|error| failed(error.to_string()))?
            .map_err(|error| failed(error.to_string()))?
        };
        let mut assignment = TopicPartitionList::new();
        assignment
            .add_partition_offset(&topics.replies, reply_partition, Offset::Offset(high))
            .and_then(|()| consumer.assign(&assignment))
            .map_err(|error| failed(error.to_string()))?;
        let producer: FutureProducer = kafka
            .client_config(&[
                ("enable.idempotence", "true"),
                ("acks", "all"),
                ("linger.ms", "1"),
            ])
            .create()
            .map_err(|error| failed(error.to_string()))?;
        let waiters: Waiters = Arc::default();
        let reader = crate::spawn_or_crash("reply reader", read_replies(consumer, waiters.clone()));
        tracing::info!(%instance, reply_partition, "command bus connected");
        Ok(KafkaCommandBus {
            producer,
            topics,
            core: Arc::new(core),
            instance,
            reply_partition,
            next_request: AtomicU64::new(1),
            waiters,
            in_flight: Arc::new(Semaphore::new(settings.in_flight_max)),
            settings,
            reader,
        })
    }

    /// The partition of the replies topic this instance reads.
    pub fn reply_partition(&self) -> i32 {
        self.reply_partition
    }

    async fn produce(
        &self,
        shard: ledger_core::ShardId,
        home_key: &str,
        record: &[u8],
    ) -> Result<(), log_kafka::rdkafka::error::KafkaError> {
        self.producer
            .send(
                FutureRecord::to(&self.topics.commands)
                    .partition(i32::from(shard.0))
                    .key(home_key)
                    .payload(record),
                Timeout::After(self.settings.produce_timeout),
            )
            .await
            .map(|_| ())
            .map_err(|(error, _)| error)
    }

    fn forget(&self, request_id: &str) {
        self.waiters
            .lock()
            .expect("waiters lock")
            .remove(request_id);
    }
}

impl Drop for KafkaCommandBus {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

async fn read_replies(consumer: StreamConsumer, waiters: Waiters) {
    loop {
        let message = match consumer.recv().await {
            Ok(message) => message,
            Err(error) => {
                tracing::warn!(%error, "reading replies failed; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(bytes) = message.payload() else {
            continue;
        };
        let reply = match ReplyRecord::from_bytes(bytes) {
            Ok(reply) => reply,
            Err(error) => {
                tracing::error!(%error, offset = message.offset(), "undecodable reply skipped");
                continue;
            }
        };
        let waiter = waiters
            .lock()
            .expect("waiters lock")
            .remove(&reply.request_id);
        // Replies of other instances sharing the partition, and repeated
        // replies of a redelivered command, have no waiter here.
        if let Some(waiter) = waiter {
            metrics::counter!(names::BUS_REPLIES_TOTAL).increment(1);
            let _ = waiter.send(reply.completion);
        }
    }
}

#[async_trait]
impl CommandBus for KafkaCommandBus {
    async fn submit(&self, command: Command, meta: CommandMeta) -> Result<Completion, SubmitError> {
        let Ok(_permit) = self.in_flight.try_acquire() else {
            metrics::counter!(names::BUS_OVERLOADED_TOTAL).increment(1);
            return Err(SubmitError::Overloaded);
        };
        let home_key = command.home_key();
        let repeatable = command.is_repeatable();
        let shard = self.core.shard_of(&home_key);
        let sequence = self.next_request.fetch_add(1, Ordering::Relaxed);
        let request_id = format!("{}-{sequence}", self.instance);
        let (sender, answer) = oneshot::channel();
        self.waiters
            .lock()
            .expect("waiters lock")
            .insert(request_id.clone(), sender);
        let record = CommandRecord {
            request_id: request_id.clone(),
            reply_partition: self.reply_partition,
            command,
            meta,
        }
        .to_bytes();
        let timeout_ms = self.settings.submit_timeout.as_millis() as u64;
        let deadline = tokio::time::Instant::now() + self.settings.submit_timeout;
        if let Err(error) = self.produce(shard, &home_key, &record).await {
            // Unknown outcome: the caller retries with the same command id.
            tracing::warn!(%error, %request_id, "producing a command failed");
            self.forget(&request_id);
            return Err(SubmitError::Timeout { timeout_ms });
        }
        metrics::counter!(names::BUS_COMMANDS_TOTAL).increment(1);
        let mut answer = answer;
        let mut resend_after = self.settings.resend_after;
        loop {
            let resend_at = if repeatable {
                (tokio::time::Instant::now() + resend_after).min(deadline)
            } else {
                deadline
            };
            match tokio::time::timeout_at(resend_at, &mut answer).await {
                Ok(Ok(completion)) => return Ok(completion),
                Ok(Err(_)) => return Err(SubmitError::ShuttingDown),
                Err(_) if resend_at >= deadline || !repeatable => {
                    metrics::counter!(names::BUS_TIMEOUTS_TOTAL).increment(1);
                    self.forget(&request_id);
                    return Err(SubmitError::Timeout { timeout_ms });
                }
                Err(_) => {
                    metrics::counter!(names::BUS_RESENDS_TOTAL).increment(1);
                    if let Err(error) = self.produce(shard, &home_key, &record).await {
                        tracing::warn!(%error, %request_id, "producing a command again failed");
                    }
                    resend_after = resend_after.saturating_mul(2);
                }
            }
        }
    }
}
