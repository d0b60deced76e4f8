//! Connection settings and topic names.

use rdkafka::ClientConfig;

/// Environment variable naming the broker(s): `host:port[,host:port…]`.
pub const BOOTSTRAP_ENV: &str = "LEDGER_KAFKA_BOOTSTRAP";

/// How to reach the cluster, plus librdkafka properties applied to every client
/// this crate creates (after its own defaults, so they win).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaConfig {
    pub bootstrap: String,
    pub overrides: Vec<(String, String)>,
}

impl KafkaConfig {
    pub fn new(bootstrap: impl Into<String>) -> Self {
        Self {
            bootstrap: bootstrap.into(),
            overrides: Vec::new(),
        }
    }

    /// From `LEDGER_KAFKA_BOOTSTRAP`; `None` when unset or empty.
    pub fn from_env() -> Option<Self> {
        std::env::var(BOOTSTRAP_ENV)
            .ok()
            .filter(|value| !value.trim().is_empty())
            .map(Self::new)
    }

    /// Adds a librdkafka property (e.g. `linger.ms`) to every client.
    pub fn set(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.overrides.push((key.into(), value.into()));
        self
    }

    /// A librdkafka configuration with the bootstrap servers, `extra`, then the overrides.
    pub fn client_config(&self, extra: &[(&str, &str)]) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.bootstrap);
        for (key, value) in extra {
            config.set(*key, *value);
        }
        for (key, value) in &self.overrides {
            config.set(key, value);
        }
        config
    }
}

/// The names of the ledger's topics. Partition `p` of each (but `replies`) is shard `p`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    pub commands: String,
    pub events: String,
    pub shard_messages: String,
    pub replies: String,
    /// The public event stream for analysts (`<prefix>.public.v1`): business
    /// events as JSON, keyed by entity (`crates/public-events`).
    pub public: String,
}

impl Topics {
    /// `<prefix>.commands`, `<prefix>.events`, `<prefix>.shard-messages`, `<prefix>.replies`,
    /// `<prefix>.public.v1`.
    pub fn with_prefix(prefix: &str) -> Self {
        Self {
            commands: format!("{prefix}.commands"),
            events: format!("{prefix}.events"),
            shard_messages: format!("{prefix}.shard-messages"),
            replies: format!("{prefix}.replies"),
            public: format!("{prefix}.public.v1"),
        }
    }
}

impl Default for Topics {
    /// The production names: `ledger.commands`, `ledger.events`, …
    fn default() -> Self {
        Self::with_prefix("ledger")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_topic_names_follow_the_design() {
        let topics = Topics::default();
        assert_eq!(topics.commands, "ledger.commands");
        assert_eq!(topics.events, "ledger.events");
        assert_eq!(topics.shard_messages, "ledger.shard-messages");
        assert_eq!(topics.replies, "ledger.replies");
        assert_eq!(topics.public, "ledger.public.v1");
    }

    #[test]
    fn overrides_come_after_defaults() {
        let config = KafkaConfig::new("127.0.0.1:1").set("linger.ms", "0");
        let client = config.client_config(&[("linger.ms", "5"), ("acks", "all")]);
        assert_eq!(client.get("linger.ms"), Some("0"));
        assert_eq!(client.get("acks"), Some("all"));
        assert_eq!(client.get("bootstrap.servers"), Some("127.0.0.1:1"));
    }
}
