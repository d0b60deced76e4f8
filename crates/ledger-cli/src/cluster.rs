//! The distributed ledger's three services (README, "Distributed mode"):
//! `command-api` (HTTP commands + the engine worker), `projector` and
//! `query-api`, and the analysts' `public-stream`. Each is built from [`ClusterSettings`], binds its port
//! (0 picks a free one, for tests) and serves until stopped.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use command_api::{CommandApi, Server};
use distributed::projector::{Projector, ProjectorSettings};
use distributed::public::{PublicStreamPublisher, PublicStreamSettings};
use distributed::{BusSettings, EngineWorker, KafkaCommandBus, WorkerHealth, WorkerSettings};
use engine::EngineConfig;
use ledger_core::Config;
use ledger_http::auth::Verifier;
use ledger_http::observability::Observability;
use log_kafka::{KafkaConfig, TopicAdmin, TopicLayout, Topics};
use query_api::QueryApi;
use read_models_cql::{CqlReadModels, ReadModelSettings};
use store_cql::{CqlSettings, CqlStore};
use tokio::sync::watch;

use crate::{prometheus, StartError};

pub use crate::config::{ClusterSettings, SettingsError};

impl ClusterSettings {
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
        core.idempotency_horizon_ms = self.idempotency_horizon_ms;
        core.purchase_limits = self.purchase_limits();
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
/// `system.local`, every [`READINESS_INTERVAL`]. A client that could not be
/// made (the database or the broker was down when the process started, as
/// after a restart of either) is made again at the next check, so the
/// process becomes ready once they answer.
async fn monitor_readiness(
    settings: ClusterSettings,
    ready: Arc<AtomicBool>,
    engine: Option<Arc<WorkerHealth>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut session: Result<scylla::client::session::Session, String> =
        Err("not connected yet".into());
    let mut admin: Result<TopicAdmin, String> = Err("not connected yet".into());
    loop {
        if session.is_err() {
            session = tokio::time::timeout(
                READINESS_TIMEOUT,
                scylla::client::session_builder::SessionBuilder::new()
                    .known_nodes(settings.contact_points())
                    .connection_timeout(READINESS_TIMEOUT)
                    .build(),
            )
            .await
            .map_err(|_| "timed out".to_string())
            .and_then(|built| built.map_err(|error| error.to_string()));
        }
        if admin.is_err() {
            admin = TopicAdmin::connect(&settings.kafka()).map_err(|error| error.to_string());
        }

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
        let (current, previous) = settings.token_secrets();
        let verifier = Arc::new(Verifier::with_previous(current, previous));
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
                    .fallback(ledger_http::observability::not_found);
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
                    .fallback(ledger_http::observability::not_found);
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
                let query_settings = query_api::Settings {
                    projection_wait_max: Duration::from_millis(settings.read_wait_ms),
                    shard_count: Some(settings.shards),
                    item_cache_ttl: query_api::recent::ITEM_CACHE_TTL_DISTRIBUTED,
                    ..query_api::Settings::default()
                };
                let server = QueryApi::bind_with_settings(
                    address,
                    read_models,
                    verifier,
                    observability,
                    query_settings,
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
