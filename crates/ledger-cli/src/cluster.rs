//! The distributed ledger's three services (README, "Distributed mode"):
//! `command-api` (HTTP commands + the engine worker), `projector` and
//! `query-api`, and the analysts' `public-stream`. Each is built from [`ClusterSettings`], binds its port
//! (0 picks a free one, for tests) and serves until stopped.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use command_api::auth::Verifier;
use command_api::observability::Observability;
use command_api::{CommandApi, Server};
use distributed::projector::{Projector, ProjectorSettings};
use distributed::public::{PublicStreamPublisher, PublicStreamSettings};
use distributed::{BusSettings, EngineWorker, KafkaCommandBus, WorkerHealth, WorkerSettings};
use engine::EngineConfig;
use ledger_core::Config;
use log_kafka::{KafkaConfig, TopicAdmin, TopicLayout, Topics};
use query_api::QueryApi;
use read_models_cql::{CqlReadModels, ReadModelSettings};
use serde::Deserialize;
use store_cql::{CqlSettings, CqlStore};
use tokio::sync::watch;

use crate::{prometheus, StartError};

/// Everything the distributed services are told: defaults, then the TOML
/// file named by `LEDGER_CONFIG`, then `LEDGER_<FIELD>` environment variables.
#[derive(Debug, Clone, Deserialize)]
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
    pub snapshot_every_events: u64,
    /// `host:port` of the service's HTTP listener; default per service.
    pub http_addr: Option<SocketAddr>,
    /// HS256 signing secret (environment only in production: `LEDGER_JWT_SECRET`).
    pub jwt_secret: String,
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
            snapshot_every_events: 100_000,
            http_addr: None,
            jwt_secret: String::new(),
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
        toml::from_str(&text).map_err(|error| failed(error.to_string()))
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
            "LEDGER_SNAPSHOT_EVERY_EVENTS",
            "number",
            &mut self.snapshot_every_events,
        )?;
        parse_env("LEDGER_JWT_SECRET", "secret", &mut self.jwt_secret)?;
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

    pub fn validate(&self) -> Result<(), SettingsError> {
        if self.shards == 0 {
            return Err(SettingsError::Invalid("shards must be at least 1".into()));
        }
        if self.jwt_secret.len() < 16 {
            return Err(SettingsError::Invalid(
                "the jwt secret (LEDGER_JWT_SECRET) must be at least 16 characters".into(),
            ));
        }
        if self.reply_partitions <= 0 || self.topic_replication <= 0 {
            return Err(SettingsError::Invalid(
                "reply partitions and topic replication must be positive".into(),
            ));
        }
        Ok(())
    }

    fn kafka(&self) -> KafkaConfig {
        KafkaConfig::new(self.kafka_bootstrap.clone())
    }

    fn topics(&self) -> Topics {
        Topics::with_prefix(&self.topic_prefix)
    }

    fn contact_points(&self) -> Vec<String> {
        contact_list(&self.cql_contact)
    }

    fn core(&self) -> Config {
        let mut core = Config::new(self.shards);
        core.escrow_hold_ms = self.escrow_hold_ms;
        core.resale_hold_ms = self.resale_hold_ms;
        core
    }

    fn address(&self, default_port: u16) -> SocketAddr {
        self.http_addr
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], default_port)))
    }
}

/// How often readiness re-checks Kafka and the CQL database.
const READINESS_INTERVAL: Duration = Duration::from_secs(5);
/// Bound of one readiness check.
const READINESS_TIMEOUT: Duration = Duration::from_secs(3);

/// Keeps `ready` equal to "Kafka and the CQL database both answer" until
/// `stop`: a metadata request for the commands topic and `SELECT` from
/// `system.local`, every [`READINESS_INTERVAL`].
async fn monitor_readiness(
    settings: ClusterSettings,
    ready: Arc<AtomicBool>,
    engine: Option<Arc<WorkerHealth>>,
    mut stop: watch::Receiver<bool>,
) {
    let session = scylla::client::session_builder::SessionBuilder::new()
        .known_nodes(settings.contact_points())
        .connection_timeout(READINESS_TIMEOUT)
        .build()
        .await;
    let admin = TopicAdmin::connect(&settings.kafka());
    loop {
        let kafka_answers = match &admin {
            Ok(admin) => matches!(
                tokio::time::timeout(
                    READINESS_TIMEOUT,
                    admin.partition_count(&settings.topics().commands)
                )
                .await,
                Ok(Ok(_))
            ),
            Err(_) => false,
        };
        let cql_answers = match &session {
            Ok(session) => matches!(
                tokio::time::timeout(
                    READINESS_TIMEOUT,
                    session.query_unpaged("SELECT release_version FROM system.local", &[])
                )
                .await,
                Ok(Ok(_))
            ),
            Err(_) => false,
        };
        // An engine worker that stopped consuming (its loop stuck, or input
        // records waiting that it no longer reads) makes its process unready.
        let engine_consuming = engine.as_ref().is_none_or(|health| health.is_consuming());
        let now_ready = kafka_answers && cql_answers && engine_consuming;
        if ready.swap(now_ready, Ordering::SeqCst) != now_ready {
            tracing::warn!(
                kafka_answers,
                cql_answers,
                engine_consuming,
                "readiness changed to {now_ready}"
            );
        }
        tokio::select! {
            _ = stop.wait_for(|stopped| *stopped) => return,
            _ = tokio::time::sleep(READINESS_INTERVAL) => {}
        }
    }
}

/// Which service to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    CommandApi,
    Projector,
    QueryApi,
    /// The analysts' public event stream (one replica per deployment).
    PublicStream,
}

impl Role {
    pub fn default_port(self) -> u16 {
        match self {
            Role::CommandApi => 8080,
            Role::QueryApi => 8081,
            Role::Projector => 8082,
            Role::PublicStream => 8083,
        }
    }
}

enum Parts {
    CommandApi {
        worker: Option<EngineWorker>,
        _bus: Arc<KafkaCommandBus>,
    },
    Projector {
        projector: Projector,
    },
    PublicStream {
        publisher: PublicStreamPublisher,
    },
    QueryApi,
}

/// One running distributed service.
pub struct Service {
    settings: ClusterSettings,
    server: Server,
    parts: Parts,
    stop: watch::Sender<bool>,
    ready: Arc<AtomicBool>,
}

fn failed(what: &'static str) -> impl Fn(String) -> StartError {
    move |detail| StartError::Dependency { what, detail }
}

/// Creates the topics if missing (idempotent; every service may call it).
async fn ensure_topics(settings: &ClusterSettings) -> Result<(), StartError> {
    let admin =
        TopicAdmin::connect(&settings.kafka()).map_err(|e| failed("kafka")(e.to_string()))?;
    let layout = TopicLayout {
        shards: settings.shards,
        replication_factor: settings.topic_replication,
        reply_partitions: settings.reply_partitions,
    };
    admin
        .ensure_topics(&settings.topics(), layout)
        .await
        .map_err(|e| failed("kafka topics")(e.to_string()))
}

impl Service {
    pub async fn build(role: Role, settings: ClusterSettings) -> Result<Service, StartError> {
        settings
            .validate()
            .map_err(|e| failed("settings")(e.to_string()))?;
        let handle = prometheus()?;
        let ready = Arc::new(AtomicBool::new(false));
        let observability = Observability::new(ready.clone(), Arc::new(move || handle.render()));
        let verifier = Arc::new(Verifier::new(settings.jwt_secret.as_bytes().to_vec()));
        let address = settings.address(role.default_port());
        let settings_kept = settings.clone();
        let bind_failed = |source| StartError::Bind {
            addr: address,
            source,
        };
        let (server, parts) = match role {
            Role::CommandApi => {
                ensure_topics(&settings).await?;
                let worker = if settings.engine {
                    let store = CqlStore::connect(
                        &settings.contact_points(),
                        &settings.cql_keyspace,
                        CqlSettings::default(),
                    )
                    .await
                    .map_err(|e| failed("cql")(e.to_string()))?;
                    let mut engine_config = EngineConfig::new(settings.core());
                    engine_config.tick_interval = Duration::from_millis(settings.tick_interval_ms);
                    engine_config.snapshot_every_events = settings.snapshot_every_events;
                    let worker = EngineWorker::start(
                        settings.kafka(),
                        settings.topics(),
                        store,
                        engine_config,
                        WorkerSettings::new(&settings.topic_prefix),
                    )
                    .await
                    .map_err(|e| failed("engine worker")(e.to_string()))?;
                    Some(worker)
                } else {
                    None
                };
                let bus = Arc::new(
                    KafkaCommandBus::connect(
                        &settings.kafka(),
                        settings.topics(),
                        settings.core(),
                        BusSettings::default(),
                    )
                    .await
                    .map_err(|e| failed("command bus")(e.to_string()))?,
                );
                let server = CommandApi::bind(address, bus.clone(), verifier, observability)
                    .await
                    .map_err(bind_failed)?;
                (server, Parts::CommandApi { worker, _bus: bus })
            }
            Role::Projector => {
                ensure_topics(&settings).await?;
                // With the shard count, every event is checked against the
                // single-writer rules the tables rely on.
                let read_model_settings = ReadModelSettings {
                    shard_count: Some(settings.shards),
                    ..ReadModelSettings::default()
                };
                let read_models = CqlReadModels::connect(
                    &settings.contact_points(),
                    &settings.cql_keyspace,
                    read_model_settings,
                )
                .await
                .map_err(|e| failed("cql read models")(e.to_string()))?;
                let mut projector_settings = ProjectorSettings::new(&settings.topic_prefix);
                if let Some(group) = &settings.projector_group {
                    projector_settings.group_id = group.clone();
                }
                let projector = Projector::start(
                    settings.kafka(),
                    settings.topics(),
                    read_models,
                    projector_settings,
                )
                .await
                .map_err(|e| failed("projector")(e.to_string()))?;
                let router = observability
                    .router()
                    .fallback(command_api::observability::not_found);
                let server = Server::bind(address, router).await.map_err(bind_failed)?;
                (server, Parts::Projector { projector })
            }
            Role::PublicStream => {
                ensure_topics(&settings).await?;
                let publisher = PublicStreamPublisher::start(
                    settings.kafka(),
                    settings.topics(),
                    settings.shards,
                    PublicStreamSettings::new(&settings.topic_prefix),
                );
                let router = observability
                    .router()
                    .fallback(command_api::observability::not_found);
                let server = Server::bind(address, router).await.map_err(bind_failed)?;
                (server, Parts::PublicStream { publisher })
            }
            Role::QueryApi => {
                let read_models = CqlReadModels::connect(
                    &settings.contact_points(),
                    &settings.cql_keyspace,
                    ReadModelSettings::default(),
                )
                .await
                .map_err(|e| failed("cql read models")(e.to_string()))?;
                let server = QueryApi::bind(
                    address,
                    read_models,
                    verifier,
                    observability,
                    Duration::from_millis(settings.read_wait_ms),
                )
                .await
                .map_err(bind_failed)?;
                (server, Parts::QueryApi)
            }
        };
        let (stop, _) = watch::channel(false);
        Ok(Service {
            settings: settings_kept,
            server,
            parts,
            stop,
            ready,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// A handle that stops the service when sent `true`.
    pub fn stopper(&self) -> watch::Sender<bool> {
        self.stop.clone()
    }

    /// Serves until stopped, then: stop taking requests, finish the batch in
    /// progress (its transaction commits or the process stops), leave the group.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let Service {
            settings,
            server,
            parts,
            stop,
            ready,
        } = self;
        ready.store(true, Ordering::SeqCst);
        let engine = match &parts {
            Parts::CommandApi {
                worker: Some(worker),
                ..
            } => Some(worker.health()),
            _ => None,
        };
        let monitor = tokio::spawn(monitor_readiness(
            settings,
            ready.clone(),
            engine,
            stop.subscribe(),
        ));
        let mut receiver = stop.subscribe();
        let signal = async move {
            let _ = receiver.wait_for(|stopped| *stopped).await;
        };
        let served = server.run_until_stopped(signal).await;
        let _ = monitor.await;
        ready.store(false, Ordering::SeqCst);
        match parts {
            Parts::CommandApi { worker, _bus } => {
                if let Some(worker) = worker {
                    worker.shutdown().await;
                }
            }
            Parts::Projector { projector } => projector.shutdown().await,
            Parts::PublicStream { publisher } => publisher.shutdown().await,
            Parts::QueryApi => {}
        }
        served
    }
}

/// A comma-separated list of CQL contact points (`LEDGER_CQL_CONTACT`).
pub fn contact_list(text: &str) -> Vec<String> {
    text.split(',')
        .map(str::trim)
        .filter(|point| !point.is_empty())
        .map(String::from)
        .collect()
}
