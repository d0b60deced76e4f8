//! Topic creation, idempotent: the layout of `schemas/kafka/topics.md`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;

use crate::error::AdminError;
use crate::{blocking, KafkaConfig, Topics};

const SEVEN_DAYS_MS: &str = "604800000";
const ONE_HOUR_MS: &str = "3600000";
const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);

/// How many partitions and replicas the topics get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicLayout {
    /// Partitions of `commands`, `events` and `shard-messages`: one per shard.
    pub shards: u16,
    /// 3 in production, 1 on the single-node test broker.
    pub replication_factor: i32,
    /// Partitions of `replies` (one per command-api replica group).
    pub reply_partitions: i32,
}

impl TopicLayout {
    /// `shards` partitions, replication 1, one reply partition: the test broker's layout.
    pub fn single_node(shards: u16) -> Self {
        Self {
            shards,
            replication_factor: 1,
            reply_partitions: 1,
        }
    }

    /// `min.insync.replicas`: 2 of 3 in production, never more than the replicas.
    pub fn min_insync_replicas(&self) -> i32 {
        self.replication_factor.clamp(1, 2)
    }
}

/// Creates and inspects the ledger's topics.
pub struct TopicAdmin {
    client: Arc<AdminClient<DefaultClientContext>>,
}

impl TopicAdmin {
    pub fn connect(config: &KafkaConfig) -> Result<Self, AdminError> {
        let client = config
            .client_config(&[])
            .create::<AdminClient<DefaultClientContext>>()
            .map_err(|source| AdminError::Client {
                bootstrap: config.bootstrap.clone(),
                source,
            })?;
        Ok(Self {
            client: Arc::new(client),
        })
    }

    /// Creates every topic of `topics` that does not exist yet, with the retention and
    /// cleanup policy of the design; an existing topic is accepted if its partition
    /// count matches (the shard count is fixed for the life of a deployment).
    pub async fn ensure_topics(
        &self,
        topics: &Topics,
        layout: TopicLayout,
    ) -> Result<(), AdminError> {
        if layout.shards == 0 {
            return Err(AdminError::InvalidLayout {
                reason: "the shard count must be at least 1".into(),
            });
        }
        if layout.replication_factor < 1 || layout.reply_partitions < 1 {
            return Err(AdminError::InvalidLayout {
                reason: format!(
                    "replication factor {} and reply partitions {} must be at least 1",
                    layout.replication_factor, layout.reply_partitions
                ),
            });
        }
        let shards = i32::from(layout.shards);
        let min_insync = layout.min_insync_replicas().to_string();
        let specs = [
            (topics.commands.as_str(), shards, SEVEN_DAYS_MS, "-1"),
            // The events topic is the audit log: kept forever, never compacted.
            (topics.events.as_str(), shards, "-1", "-1"),
            (topics.shard_messages.as_str(), shards, SEVEN_DAYS_MS, "-1"),
            (
                topics.replies.as_str(),
                layout.reply_partitions,
                ONE_HOUR_MS,
                "-1",
            ),
            // The public stream: kept forever too (analysts replay it from
            // its start); partitioned by the hash of its keys.
            (topics.public.as_str(), shards, "-1", "-1"),
        ];
        let new_topics: Vec<NewTopic<'_>> = specs
            .iter()
            .map(|(name, partitions, retention_ms, retention_bytes)| {
                NewTopic::new(
                    name,
                    *partitions,
                    TopicReplication::Fixed(layout.replication_factor),
                )
                .set("cleanup.policy", "delete")
                .set("retention.ms", retention_ms)
                .set("retention.bytes", retention_bytes)
                .set("min.insync.replicas", &min_insync)
            })
            .collect();
        let options = AdminOptions::new().operation_timeout(Some(ADMIN_TIMEOUT));
        let results = self
            .client
            .create_topics(new_topics.iter(), &options)
            .await
            .map_err(|source| AdminError::Request {
                operation: "create_topics",
                source,
            })?;
        for result in results {
            match result {
                Ok(_) => {}
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => return Err(AdminError::Create { topic, code }),
            }
        }
        for (name, partitions, _, _) in specs {
            let actual = self.partition_count(name).await?;
            if actual != partitions {
                return Err(AdminError::PartitionMismatch {
                    topic: name.to_string(),
                    expected: partitions,
                    actual,
                });
            }
        }
        Ok(())
    }

    /// Number of partitions of `topic` as the cluster metadata reports it; waits (up
    /// to 30 s) for a just-created topic to appear in the metadata.
    pub async fn partition_count(&self, topic: &str) -> Result<i32, AdminError> {
        let client = Arc::clone(&self.client);
        let name = topic.to_string();
        blocking(move || -> Result<i32, AdminError> {
            let deadline = Instant::now() + ADMIN_TIMEOUT;
            loop {
                let detail = match fetch_partitions(&client, &name) {
                    Ok(Ok(count)) => return Ok(count),
                    Ok(Err(not_yet)) => not_yet,
                    Err(failure) => return Err(failure),
                };
                if Instant::now() >= deadline {
                    return Err(AdminError::Metadata {
                        topic: name.clone(),
                        detail,
                    });
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
        .await
        .map_err(|join| AdminError::Task {
            operation: "fetch_metadata",
            detail: join.to_string(),
        })?
    }

    /// Deletes the topics (test clean-up); missing topics are ignored.
    pub async fn delete_topics(&self, topics: &Topics) -> Result<(), AdminError> {
        let names = [
            topics.commands.as_str(),
            topics.events.as_str(),
            topics.shard_messages.as_str(),
            topics.replies.as_str(),
            topics.public.as_str(),
        ];
        let options = AdminOptions::new().operation_timeout(Some(ADMIN_TIMEOUT));
        let results = self
            .client
            .delete_topics(&names, &options)
            .await
            .map_err(|source| AdminError::Request {
                operation: "delete_topics",
                source,
            })?;
        for result in results {
            match result {
                Ok(_) => {}
                Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
                Err((topic, code)) => return Err(AdminError::Delete { topic, code }),
            }
        }
        Ok(())
    }
}

/// Blocking: `Ok(Ok(partitions))`, `Ok(Err(why))` while the topic is not (yet) in the
/// metadata, `Err` when the metadata cannot be fetched at all.
fn fetch_partitions(
    client: &AdminClient<DefaultClientContext>,
    name: &str,
) -> Result<Result<i32, String>, AdminError> {
    let metadata = client
        .inner()
        .fetch_metadata(Some(name), ADMIN_TIMEOUT)
        .map_err(|source| AdminError::Metadata {
            topic: name.to_string(),
            detail: source.to_string(),
        })?;
    let Some(found) = metadata.topics().iter().find(|topic| topic.name() == name) else {
        return Ok(Err("not in the metadata answer".into()));
    };
    if let Some(error) = found.error() {
        return Ok(Err(RDKafkaErrorCode::from(error).to_string()));
    }
    if found.partitions().is_empty() {
        return Ok(Err("no partitions in the metadata answer".into()));
    }
    Ok(Ok(found.partitions().len() as i32))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn min_insync_replicas_is_two_of_three_and_one_on_a_single_node() {
        assert_eq!(TopicLayout::single_node(4).min_insync_replicas(), 1);
        let production = TopicLayout {
            shards: 8,
            replication_factor: 3,
            reply_partitions: 2,
        };
        assert_eq!(production.min_insync_replicas(), 2);
    }
}
