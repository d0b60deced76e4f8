//! The embedded ledger as one process: engine, projector, command API and
//! query API on one SQLite data directory. `Application::build` binds the
//! ports (0 picks a free one, for tests), `run_until_stopped` serves.

use secrecy::SecretSlice;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use command_api::{CommandApi, Server};
use engine::{Engine, EngineConfig};
use ledger_core::Config;
use ledger_http::auth::Verifier;
use ledger_http::observability::Observability;
use query_api::QueryApi;
use store_sqlite::SqliteStore;
use tokio::sync::watch;

#[cfg(feature = "distributed")]
pub mod cluster;
pub mod config;
pub mod demo;
pub mod export;
pub mod public;
pub mod verify;

/// Everything `ledger serve` can be told.
#[derive(Debug, Clone)]
pub struct Settings {
    pub data_dir: PathBuf,
    pub command_addr: SocketAddr,
    pub query_addr: SocketAddr,
    pub shard_count: u16,
    pub escrow_hold: Duration,
    pub resale_hold: Duration,
    pub tick_interval: Duration,
    /// How long a completed command is remembered by its id.
    pub idempotency_horizon: Duration,
    /// Purchase rate limits per buyer (see `ledger_core::limits`).
    pub purchase_limits: ledger_core::limits::PurchaseLimits,
    /// The HS256 secret tokens are verified with (and `ledger token` signs with).
    pub jwt_secret: SecretSlice<u8>,
    /// The secret before the last rotation, still accepted (rotation without downtime).
    pub jwt_secret_previous: Option<SecretSlice<u8>>,
    /// How long a read with `?after=` waits for the projection.
    pub read_wait: Duration,
    /// A shard snapshots its state every this many events.
    pub snapshot_every_events: u64,
}

impl Settings {
    pub fn for_tests(data_dir: &Path, jwt_secret: &str) -> Self {
        Settings {
            data_dir: data_dir.to_path_buf(),
            command_addr: "127.0.0.1:0".parse().expect("literal address"),
            query_addr: "127.0.0.1:0".parse().expect("literal address"),
            shard_count: 4,
            escrow_hold: Duration::from_secs(30 * 24 * 3600),
            resale_hold: Duration::ZERO,
            tick_interval: Duration::from_millis(200),
            idempotency_horizon: Duration::from_millis(
                ledger_core::retention::IDEMPOTENCY_HORIZON_MS_DEFAULT,
            ),
            // Off: most tests buy faster than a person; the rate limit
            // tests turn them on.
            purchase_limits: ledger_core::limits::PurchaseLimits::default(),
            jwt_secret: SecretSlice::from(jwt_secret.as_bytes().to_vec()),
            jwt_secret_previous: None,
            read_wait: Duration::from_secs(5),
            snapshot_every_events: EngineConfig::new(Config::new(1)).snapshot_every_events,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot open the data directory {path}: {detail}")]
    Store { path: PathBuf, detail: String },
    #[error("data directory {path} was created with {stored} shards, not {requested}; shard count cannot change")]
    ShardCountChanged {
        path: PathBuf,
        stored: u16,
        requested: u16,
    },
    #[error("cannot start the engine: {0}")]
    Engine(#[from] engine::EngineError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start: {what} is not available: {detail}")]
    Dependency { what: &'static str, detail: String },
    #[error("cannot install the metrics recorder: {0}")]
    Metrics(String),
}

/// A running embedded ledger.
pub struct Application {
    pub engine: Engine,
    pub store: Arc<SqliteStore>,
    command_api: Server,
    query_api: Server,
    stop: watch::Sender<bool>,
    projector: tokio::task::JoinHandle<()>,
    ready: Arc<AtomicBool>,
}

/// Remembers the shard count of a data directory: routing depends on it.
fn check_shard_count(data_dir: &Path, requested: u16) -> Result<(), StartError> {
    let path = data_dir.join("shard-count");
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let stored: u16 = text.trim().parse().map_err(|_| StartError::Store {
                path: path.clone(),
                detail: "shard-count is not a number".into(),
            })?;
            if stored != requested {
                return Err(StartError::ShardCountChanged {
                    path: data_dir.to_path_buf(),
                    stored,
                    requested,
                });
            }
            Ok(())
        }
        Err(_) => {
            std::fs::write(&path, format!("{requested}\n")).map_err(|error| StartError::Store {
                path,
                detail: error.to_string(),
            })
        }
    }
}

static RECORDER: std::sync::OnceLock<
    Result<metrics_exporter_prometheus::PrometheusHandle, String>,
> = std::sync::OnceLock::new();

/// Bucket bounds (seconds) of every `*_seconds` histogram: 0.5 ms to 30 s,
/// so p50 to p99 of a purchase, a group commit, a Kafka transaction or a
/// read's wait can be computed across processes with `histogram_quantile`.
pub const SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Bucket bounds of the batch-size histograms (inputs, envelopes, batches
/// per transaction): powers of two up to the 4,096 records of a poll.
pub const SIZE_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0,
];

/// The process-wide Prometheus recorder (installed once, by whoever asks
/// first). Histograms are exported as Prometheus histograms (buckets), not
/// summaries: the dashboards and alerts aggregate them over every replica.
pub fn prometheus() -> Result<metrics_exporter_prometheus::PrometheusHandle, StartError> {
    use metrics_exporter_prometheus::Matcher;
    RECORDER
        .get_or_init(|| {
            let mut builder = metrics_exporter_prometheus::PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
                .map_err(|error| error.to_string())?;
            for suffix in ["_inputs", "_envelopes", "_per_transaction"] {
                builder = builder
                    .set_buckets_for_metric(Matcher::Suffix(suffix.into()), SIZE_BUCKETS)
                    .map_err(|error| error.to_string())?;
            }
            let handle = builder
                .install_recorder()
                .map_err(|error| error.to_string())?;
            engine::metrics::describe();
            store_sqlite::metrics::describe();
            Ok(handle)
        })
        .clone()
        .map_err(StartError::Metrics)
}

impl Application {
    pub async fn build(settings: Settings) -> Result<Application, StartError> {
        let store_error = |detail: String| StartError::Store {
            path: settings.data_dir.clone(),
            detail,
        };
        std::fs::create_dir_all(&settings.data_dir)
            .map_err(|error| store_error(error.to_string()))?;
        check_shard_count(&settings.data_dir, settings.shard_count)?;
        let store = SqliteStore::open(&settings.data_dir)
            .map_err(|error| store_error(error.to_string()))?;
        let mut core = Config::new(settings.shard_count);
        core.escrow_hold_ms = settings.escrow_hold.as_millis() as u64;
        core.resale_hold_ms = settings.resale_hold.as_millis() as u64;
        core.idempotency_horizon_ms = settings.idempotency_horizon.as_millis() as u64;
        core.purchase_limits = settings.purchase_limits;
        let mut engine_config = EngineConfig::new(core);
        engine_config.tick_interval = settings.tick_interval;
        engine_config.snapshot_every_events = settings.snapshot_every_events;
        let engine = Engine::start(store.clone(), engine_config).await?;

        let (stop, stop_receiver) = watch::channel(false);
        let projector = tokio::spawn(store.clone().run_projector(stop_receiver));

        let handle = prometheus()?;
        let ready = Arc::new(AtomicBool::new(false));
        let observability = Observability::new(ready.clone(), Arc::new(move || handle.render()));
        let verifier = Arc::new(Verifier::with_previous(
            settings.jwt_secret.clone(),
            settings.jwt_secret_previous.clone(),
        ));
        let command_api = CommandApi::bind(
            settings.command_addr,
            Arc::new(engine.clone()),
            verifier.clone(),
            observability.clone(),
        )
        .await
        .map_err(|source| StartError::Bind {
            addr: settings.command_addr,
            source,
        })?;
        let query_api = QueryApi::bind(
            settings.query_addr,
            store.read_models(),
            verifier,
            observability,
            settings.read_wait,
            settings.shard_count,
        )
        .await
        .map_err(|source| StartError::Bind {
            addr: settings.query_addr,
            source,
        })?;
        Ok(Application {
            engine,
            store,
            command_api,
            query_api,
            stop,
            projector,
            ready,
        })
    }

    pub fn command_addr(&self) -> SocketAddr {
        self.command_api.local_addr()
    }

    pub fn query_addr(&self) -> SocketAddr {
        self.query_api.local_addr()
    }

    /// A handle that stops the application when sent `true`.
    pub fn stopper(&self) -> watch::Sender<bool> {
        self.stop.clone()
    }

    /// Serves until `stop` is signalled, then shuts down in order: stop
    /// taking requests, drain the engine, finish projecting.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let Application {
            engine,
            store: _store,
            command_api,
            query_api,
            stop,
            projector,
            ready,
        } = self;
        ready.store(true, Ordering::SeqCst);
        let signal = |mut receiver: watch::Receiver<bool>| async move {
            let _ = receiver.wait_for(|stopped| *stopped).await;
        };
        let command_server = tokio::spawn(command_api.run_until_stopped(signal(stop.subscribe())));
        let query_server = tokio::spawn(query_api.run_until_stopped(signal(stop.subscribe())));
        signal(stop.subscribe()).await;
        ready.store(false, Ordering::SeqCst);
        let _ = command_server.await;
        engine.shutdown().await;
        let _ = query_server.await;
        let _ = projector.await;
        Ok(())
    }
}
