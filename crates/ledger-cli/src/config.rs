//! The distributed services' settings ([`ClusterSettings`]): parsed and
//! checked without the services themselves, so `ledger config check` (and
//! the manifest checks that call it) hold a configuration file to the very
//! struct the services read, in every build of the binary.

use std::net::SocketAddr;
use std::path::Path;

use secrecy::{ExposeSecret, SecretSlice, SecretString};
use serde::{Deserialize, Serialize};

/// Everything the distributed services are told: defaults, then the TOML
/// file named by `LEDGER_CONFIG`, then `LEDGER_<FIELD>` environment variables.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterSettings {
    /// Shards = partitions of the commands, events and shard-messages topics.
    pub shards: u16,
    pub topic_prefix: String,
    pub kafka_bootstrap: String,
    /// Comma-separated `host:port` contact points.
    pub cql_contact: String,
    pub cql_keyspace: String,
    /// Replicas of each topic partition (3 in production).
    pub topic_replication: i32,
    /// Partitions of the replies topic.
    pub reply_partitions: i32,
    pub read_wait_ms: u64,
    pub escrow_hold_ms: u64,
    pub resale_hold_ms: u64,
    pub tick_interval_ms: u64,
    /// How long a completed command is remembered by its id (7 days).
    pub idempotency_horizon_ms: u64,
    /// Most purchase requests one buyer may make per `purchase_window_ms`
    /// (0: no limit).
    pub purchase_limit: u32,
    pub purchase_window_ms: u64,
    /// Least time between two purchase requests of one buyer for the same
    /// item, bundle or listing (0: no limit).
    pub item_request_interval_ms: u64,
    pub snapshot_every_events: u64,
    /// `host:port` of the service's HTTP listener; default per service.
    pub http_addr: Option<SocketAddr>,
    /// HS256 signing secret (environment only in production: `LEDGER_JWT_SECRET`).
    #[serde(skip_serializing)]
    pub jwt_secret: SecretString,
    /// The secret before the last rotation, still accepted while tokens
    /// signed with it are in use (environment only: `LEDGER_JWT_SECRET_PREVIOUS`;
    /// empty: none).
    #[serde(skip_serializing)]
    pub jwt_secret_previous: SecretString,
    /// Whether `command-api` also runs an engine worker.
    pub engine: bool,
    /// Consumer group of the projector (default `<topic_prefix>-projector`).
    pub projector_group: Option<String>,
}

impl Default for ClusterSettings {
    fn default() -> Self {
        Self {
            shards: 16,
            topic_prefix: "ledger".into(),
            kafka_bootstrap: "127.0.0.1:19092".into(),
            cql_contact: "127.0.0.1:19042".into(),
            cql_keyspace: "ledger".into(),
            topic_replication: 1,
            reply_partitions: 4,
            read_wait_ms: 5_000,
            escrow_hold_ms: 30 * 24 * 3600 * 1000,
            resale_hold_ms: 0,
            tick_interval_ms: 1_000,
            idempotency_horizon_ms: ledger_core::retention::IDEMPOTENCY_HORIZON_MS_DEFAULT,
            purchase_limit: ledger_core::limits::PurchaseLimits::RECOMMENDED.purchases_per_window,
            purchase_window_ms: ledger_core::limits::PurchaseLimits::RECOMMENDED.purchase_window_ms,
            item_request_interval_ms: ledger_core::limits::PurchaseLimits::RECOMMENDED
                .item_request_interval_ms,
            snapshot_every_events: 100_000,
            http_addr: None,
            jwt_secret: SecretString::default(),
            jwt_secret_previous: SecretString::default(),
            engine: true,
            projector_group: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("cannot read the configuration file {path}: {detail}")]
    File { path: String, detail: String },
    #[error("environment variable {name} is not a valid {expected}: {value:?}")]
    Environment {
        name: String,
        expected: &'static str,
        value: String,
    },
    #[error("{0}")]
    Invalid(String),
}

fn parse_env<T: std::str::FromStr>(
    name: &str,
    expected: &'static str,
    target: &mut T,
) -> Result<(), SettingsError> {
    if let Ok(value) = std::env::var(name) {
        *target = value
            .trim()
            .parse()
            .map_err(|_| SettingsError::Environment {
                name: name.to_string(),
                expected,
                value,
            })?;
    }
    Ok(())
}

impl ClusterSettings {
    /// Defaults, then the file `LEDGER_CONFIG` names (if any), then the environment.
    pub fn load() -> Result<ClusterSettings, SettingsError> {
        let mut settings = match std::env::var("LEDGER_CONFIG") {
            Ok(path) if !path.trim().is_empty() => Self::from_file(Path::new(path.trim()))?,
            _ => ClusterSettings::default(),
        };
        settings.apply_environment()?;
        settings.validate()?;
        Ok(settings)
    }

    pub fn from_file(path: &Path) -> Result<ClusterSettings, SettingsError> {
        let failed = |detail: String| SettingsError::File {
            path: path.display().to_string(),
            detail,
        };
        let text = std::fs::read_to_string(path).map_err(|error| failed(error.to_string()))?;
        Self::from_toml(&text).map_err(failed)
    }

    /// Parses the TOML of a configuration file over the defaults; unknown
    /// keys and values of the wrong type are refused.
    pub fn from_toml(text: &str) -> Result<ClusterSettings, String> {
        toml::from_str(text).map_err(|error| error.to_string().trim_end().to_string())
    }

    fn apply_environment(&mut self) -> Result<(), SettingsError> {
        parse_env("LEDGER_SHARDS", "shard count", &mut self.shards)?;
        parse_env(
            "LEDGER_TOPIC_PREFIX",
            "topic prefix",
            &mut self.topic_prefix,
        )?;
        parse_env(
            "LEDGER_KAFKA_BOOTSTRAP",
            "bootstrap list",
            &mut self.kafka_bootstrap,
        )?;
        parse_env("LEDGER_CQL_CONTACT", "contact list", &mut self.cql_contact)?;
        parse_env("LEDGER_CQL_KEYSPACE", "keyspace", &mut self.cql_keyspace)?;
        parse_env(
            "LEDGER_TOPIC_REPLICATION",
            "number",
            &mut self.topic_replication,
        )?;
        parse_env(
            "LEDGER_REPLY_PARTITIONS",
            "number",
            &mut self.reply_partitions,
        )?;
        parse_env("LEDGER_READ_WAIT_MS", "number", &mut self.read_wait_ms)?;
        parse_env("LEDGER_ESCROW_HOLD_MS", "number", &mut self.escrow_hold_ms)?;
        parse_env("LEDGER_RESALE_HOLD_MS", "number", &mut self.resale_hold_ms)?;
        parse_env(
            "LEDGER_TICK_INTERVAL_MS",
            "number",
            &mut self.tick_interval_ms,
        )?;
        parse_env(
            "LEDGER_IDEMPOTENCY_HORIZON_MS",
            "number",
            &mut self.idempotency_horizon_ms,
        )?;
        parse_env("LEDGER_PURCHASE_LIMIT", "number", &mut self.purchase_limit)?;
        parse_env(
            "LEDGER_PURCHASE_WINDOW_MS",
            "number",
            &mut self.purchase_window_ms,
        )?;
        parse_env(
            "LEDGER_ITEM_REQUEST_INTERVAL_MS",
            "number",
            &mut self.item_request_interval_ms,
        )?;
        parse_env(
            "LEDGER_SNAPSHOT_EVERY_EVENTS",
            "number",
            &mut self.snapshot_every_events,
        )?;
        if let Ok(secret) = std::env::var("LEDGER_JWT_SECRET") {
            self.jwt_secret = SecretString::from(secret.trim().to_owned());
        }
        if let Ok(secret) = std::env::var("LEDGER_JWT_SECRET_PREVIOUS") {
            self.jwt_secret_previous = SecretString::from(secret.trim().to_owned());
        }
        parse_env("LEDGER_ENGINE", "boolean", &mut self.engine)?;
        if let Ok(group) = std::env::var("LEDGER_PROJECTOR_GROUP") {
            self.projector_group = Some(group);
        }
        if let Ok(value) = std::env::var("LEDGER_HTTP_ADDR") {
            let address = value
                .trim()
                .parse()
                .map_err(|_| SettingsError::Environment {
                    name: "LEDGER_HTTP_ADDR".into(),
                    expected: "socket address",
                    value,
                })?;
            self.http_addr = Some(address);
        }
        Ok(())
    }

    /// Everything [`ClusterSettings::check_values`] checks, and a signing
    /// secret of at least 16 characters.
    pub fn validate(&self) -> Result<(), SettingsError> {
        self.check_values()?;
        if self.jwt_secret.expose_secret().len() < 16 {
            return Err(SettingsError::Invalid(
                "the jwt secret (LEDGER_JWT_SECRET) must be at least 16 characters".into(),
            ));
        }
        let previous = self.jwt_secret_previous.expose_secret();
        if !previous.is_empty() && previous.len() < 16 {
            return Err(SettingsError::Invalid(
                "the previous jwt secret (LEDGER_JWT_SECRET_PREVIOUS) must be at least 16 characters, or empty".into(),
            ));
        }
        Ok(())
    }

    /// The token verifier's secrets: the current one, and the previous one
    /// during a rotation.
    pub fn token_secrets(&self) -> (SecretSlice<u8>, Option<SecretSlice<u8>>) {
        let current = SecretSlice::from(self.jwt_secret.expose_secret().as_bytes().to_vec());
        let previous = self.jwt_secret_previous.expose_secret();
        let previous =
            (!previous.is_empty()).then(|| SecretSlice::from(previous.as_bytes().to_vec()));
        (current, previous)
    }

    /// The checks that do not involve the secret: what a configuration file
    /// alone can be held to.
    /// The purchase rate limits these settings give every engine.
    pub fn purchase_limits(&self) -> ledger_core::limits::PurchaseLimits {
        ledger_core::limits::PurchaseLimits {
            purchases_per_window: self.purchase_limit,
            purchase_window_ms: self.purchase_window_ms,
            item_request_interval_ms: self.item_request_interval_ms,
        }
    }

    pub fn check_values(&self) -> Result<(), SettingsError> {
        if self.shards == 0 || self.shards > 1024 {
            return Err(SettingsError::Invalid(format!(
                "shards must be between 1 and 1024, is {}",
                self.shards
            )));
        }
        if self.reply_partitions <= 0 || self.topic_replication <= 0 {
            return Err(SettingsError::Invalid(
                "reply partitions and topic replication must be positive".into(),
            ));
        }
        if self.read_wait_ms == 0 {
            return Err(SettingsError::Invalid(
                "read_wait_ms must be positive".into(),
            ));
        }
        if self.tick_interval_ms == 0 {
            return Err(SettingsError::Invalid(
                "tick_interval_ms must be positive".into(),
            ));
        }
        self.purchase_limits()
            .validate()
            .map_err(SettingsError::Invalid)?;
        let prefix_ok = !self.topic_prefix.is_empty()
            && self
                .topic_prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !prefix_ok {
            return Err(SettingsError::Invalid(format!(
                "topic_prefix {:?} must be letters, digits, '.', '_' or '-' (a Kafka topic name)",
                self.topic_prefix
            )));
        }
        let mut keyspace = self.cql_keyspace.chars();
        let keyspace_ok = keyspace.next().is_some_and(|c| c.is_ascii_lowercase())
            && keyspace.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            && self.cql_keyspace.len() <= 48;
        if !keyspace_ok {
            return Err(SettingsError::Invalid(format!(
                "cql_keyspace {:?} must be a plain CQL identifier (lowercase letter, then \
                 lowercase letters, digits or '_', at most 48)",
                self.cql_keyspace
            )));
        }
        for (key, list) in [
            ("kafka_bootstrap", &self.kafka_bootstrap),
            ("cql_contact", &self.cql_contact),
        ] {
            let entries: Vec<&str> = list.split(',').map(str::trim).collect();
            for entry in &entries {
                let valid = entry
                    .rsplit_once(':')
                    .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
                if !valid {
                    return Err(SettingsError::Invalid(format!(
                        "{key} entry {entry:?} is not host:port"
                    )));
                }
            }
        }
        Ok(())
    }

    /// Reads a configuration file as the services do (unknown keys are
    /// refused) and holds it to [`ClusterSettings::check_values`]. A file
    /// must not carry the signing secret: it belongs in a Secret, given as
    /// `LEDGER_JWT_SECRET`. What `ledger config check` runs.
    pub fn check_file(path: &Path) -> Result<ClusterSettings, SettingsError> {
        let settings = Self::from_file(path)?;
        for (key, secret, variable) in [
            ("jwt_secret", &settings.jwt_secret, "LEDGER_JWT_SECRET"),
            (
                "jwt_secret_previous",
                &settings.jwt_secret_previous,
                "LEDGER_JWT_SECRET_PREVIOUS",
            ),
        ] {
            if !secret.expose_secret().is_empty() {
                return Err(SettingsError::Invalid(format!(
                    "{} sets {key}: the signing secret belongs in a Secret, given as \
                     {variable}, never in the configuration file",
                    path.display()
                )));
            }
        }
        settings.check_values()?;
        Ok(settings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PRODUCTION: &str = r#"
shards = 16
topic_prefix = "ledger"
kafka_bootstrap = "ledger-kafka-bootstrap.ledger.svc:9092"
cql_contact = "ledger-scylla-client.ledger.svc:9042"
cql_keyspace = "ledger"
read_wait_ms = 5000
topic_replication = 3
reply_partitions = 4
purchase_limit = 9
purchase_window_ms = 60000
item_request_interval_ms = 2000
"#;

    #[test]
    fn a_production_file_parses_over_the_defaults() {
        let settings = ClusterSettings::from_toml(PRODUCTION).unwrap();
        assert_eq!(settings.shards, 16);
        assert_eq!(settings.topic_replication, 3);
        assert_eq!(settings.snapshot_every_events, 100_000);
        settings.check_values().unwrap();
    }

    #[test]
    fn unknown_keys_and_wrong_types_are_refused() {
        let unknown = ClusterSettings::from_toml("shards = 4\nshard_count = 4\n").unwrap_err();
        assert!(unknown.contains("unknown field `shard_count`"), "{unknown}");
        let typed = ClusterSettings::from_toml("shards = \"four\"\n").unwrap_err();
        assert!(typed.contains("shards"), "{typed}");
    }

    #[test]
    fn values_are_checked_without_a_secret() {
        let bad = |text: &str| {
            ClusterSettings::from_toml(text)
                .unwrap()
                .check_values()
                .unwrap_err()
                .to_string()
        };
        assert!(bad("shards = 0").contains("shards must be between 1 and 1024"));
        assert!(bad("kafka_bootstrap = \"kafka\"").contains("kafka_bootstrap entry"));
        assert!(bad("cql_keyspace = \"Ledger-1\"").contains("plain CQL identifier"));
        assert!(bad("topic_prefix = \"a b\"").contains("topic_prefix"));
        assert!(bad("reply_partitions = 0").contains("must be positive"));
    }

    #[test]
    fn a_file_with_the_secret_is_refused() {
        let directory = std::env::temp_dir().join(format!("ledger-config-{}", std::process::id()));
        std::fs::create_dir_all(&directory).unwrap();
        let path = directory.join("ledger.toml");
        std::fs::write(
            &path,
            format!("{PRODUCTION}jwt_secret = \"0123456789abcdef\"\n"),
        )
        .unwrap();
        let error = ClusterSettings::check_file(&path).unwrap_err().to_string();
        assert!(error.contains("belongs in a Secret"), "{error}");
        std::fs::write(
            &path,
            format!("{PRODUCTION}jwt_secret_previous = \"0123456789abcdef\"\n"),
        )
        .unwrap();
        let error = ClusterSettings::check_file(&path).unwrap_err().to_string();
        assert!(error.contains("sets jwt_secret_previous"), "{error}");
        std::fs::write(&path, PRODUCTION).unwrap();
        assert_eq!(ClusterSettings::check_file(&path).unwrap().shards, 16);
        std::fs::remove_dir_all(&directory).unwrap();
    }

    #[test]
    fn the_secret_is_never_serialized() {
        let mut settings = ClusterSettings::from_toml(PRODUCTION).unwrap();
        settings.jwt_secret = "0123456789abcdef".into();
        settings.jwt_secret_previous = "fedcba9876543210".into();
        let json = serde_json::to_string(&settings).unwrap();
        assert!(!json.contains("jwt_secret") && !json.contains("0123456789abcdef"));
        assert!(!json.contains("fedcba9876543210"));
    }

    #[test]
    fn secrets_never_appear_in_debug_output() {
        let mut settings = ClusterSettings::from_toml(PRODUCTION).unwrap();
        settings.jwt_secret = "current-0123456789".into();
        settings.jwt_secret_previous = "previous-0123456789".into();
        settings.validate().unwrap();
        let (current, previous) = settings.token_secrets();
        let verifier = ledger_http::Verifier::with_previous(current, previous);
        let shown = format!("{settings:?} {settings:#?} {verifier:?}");
        assert!(!shown.contains("current-0123456789"), "{shown}");
        assert!(!shown.contains("previous-0123456789"), "{shown}");
    }
}
