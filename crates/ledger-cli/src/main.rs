//! `ledger`: run the embedded marketplace ledger, issue local tokens, audit.

/// mimalloc rather than the system allocator: measured faster, with less
/// resident memory, embedded and over HTTP (BENCHMARKS.md, "Allocator").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use secrecy::SecretSlice;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use ledger_cli::{Application, Settings};
use ledger_core::{Role, UserId};

#[derive(Parser)]
#[command(
    name = "ledger",
    version,
    about = "Economy ledger of an avatar-item marketplace"
)]
struct Cli {
    #[command(subcommand)]
    command: Commands,
}

#[derive(clap::Args, Clone)]
struct Common {
    /// Data directory of the embedded store.
    #[arg(long, env = "LEDGER_DATA_DIR", default_value = "./data")]
    data_dir: PathBuf,
    /// Token signing secret (HS256). Default: a random secret kept in the data directory.
    #[arg(long, env = "LEDGER_JWT_SECRET", hide_env_values = true)]
    jwt_secret: Option<String>,
    /// The secret before the last rotation: tokens signed with it are still
    /// accepted (new ones are signed with the current secret).
    #[arg(long, env = "LEDGER_JWT_SECRET_PREVIOUS", hide_env_values = true)]
    jwt_secret_previous: Option<String>,
}

#[derive(Subcommand)]
enum Commands {
    /// Run command API, engine, projector and query API in one process.
    Serve {
        #[command(flatten)]
        common: Common,
        #[arg(long, env = "LEDGER_COMMAND_ADDR", default_value = "127.0.0.1:8080")]
        command_addr: SocketAddr,
        #[arg(long, env = "LEDGER_QUERY_ADDR", default_value = "127.0.0.1:8081")]
        query_addr: SocketAddr,
        /// Number of shards; fixed for the life of a data directory.
        #[arg(long, env = "LEDGER_SHARDS", default_value_t = 4)]
        shards: u16,
        /// How long a creator's share stays in escrow (e.g. 30d, 3s).
        #[arg(long, env = "LEDGER_ESCROW_HOLD", default_value = "30d", value_parser = humantime::parse_duration)]
        escrow_hold: Duration,
        /// How long after acquiring a serial before it may be listed.
        #[arg(long, env = "LEDGER_RESALE_HOLD", default_value = "0s", value_parser = humantime::parse_duration)]
        resale_hold: Duration,
        /// The ledger's clock tick (escrow release).
        #[arg(long, env = "LEDGER_TICK_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
        tick_interval: Duration,
        /// How long a completed grant, purchase or refund is remembered by
        /// its id; a retry after it is refused (409 idempotency_expired),
        /// never run twice.
        #[arg(long, env = "LEDGER_IDEMPOTENCY_HORIZON", default_value = "7d", value_parser = humantime::parse_duration)]
        idempotency_horizon: Duration,
        /// Most purchase requests (primary and resale) one buyer may make
        /// per `--purchase-window`; more are refused with 429 rate_limited
        /// and Retry-After. 0 turns the limit off.
        #[arg(long, env = "LEDGER_PURCHASE_LIMIT", default_value_t = ledger_core::limits::PurchaseLimits::RECOMMENDED.purchases_per_window)]
        purchase_limit: u32,
        /// The window `--purchase-limit` counts over.
        #[arg(long, env = "LEDGER_PURCHASE_WINDOW", default_value = "60s", value_parser = humantime::parse_duration)]
        purchase_window: Duration,
        /// Least time between two purchase requests of one buyer for the
        /// same item, bundle or listing (429 rate_limited otherwise). 0s
        /// turns the limit off.
        #[arg(long, env = "LEDGER_ITEM_REQUEST_INTERVAL", default_value = "2s", value_parser = humantime::parse_duration)]
        item_request_interval: Duration,
        /// A shard snapshots its state every this many events (a restart
        /// replays at most this many per shard after its snapshot).
        #[arg(long, env = "LEDGER_SNAPSHOT_EVERY_EVENTS", default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
        snapshot_every_events: u64,
        /// Seed a small economy and print ready-to-paste curl commands.
        #[arg(long)]
        demo: bool,
    },
    /// Distributed: HTTP command API plus an engine worker owning shards
    /// (Kafka + CQL). Configured by the file `LEDGER_CONFIG` and `LEDGER_*`.
    #[cfg(feature = "distributed")]
    CommandApi,
    /// Distributed: project the events topic into the CQL read models.
    #[cfg(feature = "distributed")]
    Projector,
    /// Distributed: HTTP query API over the CQL read models.
    #[cfg(feature = "distributed")]
    QueryApi,
    /// Distributed: publish the analysts' public event stream
    /// (`<prefix>.public.v1`) from the events topic, exactly once. Run one
    /// replica per deployment.
    #[cfg(feature = "distributed")]
    PublicStream,
    /// Verify an embedded data directory from its log alone: hash chains,
    /// sequences, every entry decodes, balanced postings, no negative
    /// balance, messages consumed once and in order, replay, a trial
    /// balance; then the read models' balances against the log. Read-only
    /// (the server may be running). Exit code 1 on any finding.
    Verify {
        /// Data directory of the embedded store.
        #[arg(long, env = "LEDGER_DATA_DIR", default_value = "./data")]
        data_dir: PathBuf,
        /// Print the report as JSON (each shard's head hash and counts, the
        /// trial balance, the findings).
        #[arg(long)]
        json: bool,
        /// With --json: also every user's balance and pending amount as the
        /// log proves them.
        #[arg(long)]
        balances: bool,
        /// Verify a distributed ledger's events topic (every partition, from
        /// its first record) instead of a data directory.
        #[cfg(feature = "distributed")]
        #[arg(long)]
        kafka: bool,
        /// Kafka bootstrap servers, with --kafka.
        #[cfg(feature = "distributed")]
        #[arg(long, env = "LEDGER_KAFKA_BOOTSTRAP", default_value = "127.0.0.1:9092")]
        kafka_bootstrap: String,
        /// Topic prefix (`<prefix>.events`), with --kafka.
        #[cfg(feature = "distributed")]
        #[arg(long, env = "LEDGER_TOPIC_PREFIX", default_value = "ledger")]
        topic_prefix: String,
        /// With --kafka: also compare the topic with the CQL copy of the log
        /// (same records, same checksums; CQL may be ahead).
        #[cfg(feature = "distributed")]
        #[arg(long, requires = "kafka")]
        cql: bool,
        /// CQL contact points (comma-separated), with --cql.
        #[cfg(feature = "distributed")]
        #[arg(long, env = "LEDGER_CQL_CONTACT", default_value = "127.0.0.1:9042")]
        cql_contact: String,
        /// CQL keyspace, with --cql.
        #[cfg(feature = "distributed")]
        #[arg(long, env = "LEDGER_CQL_KEYSPACE", default_value = "ledger")]
        cql_keyspace: String,
    },
    /// Export an embedded data directory for auditors: one row per posting
    /// (position, time, event type, account, amount, purchase / grant /
    /// refund id, cause, record hash), NDJSON or CSV, and a manifest of each
    /// shard's head hash and the sums per kind of account; or, with
    /// --creator-sales, one creator's sales (price, share, held / frozen /
    /// released / refunded, release date). Read-only.
    Export {
        /// Data directory of the embedded store.
        #[arg(long, env = "LEDGER_DATA_DIR", default_value = "./data")]
        data_dir: PathBuf,
        /// Row format.
        #[arg(long, value_enum, default_value = "ndjson")]
        format: ledger_cli::export::Format,
        /// File for the rows (default: standard output).
        #[arg(long)]
        output: Option<PathBuf>,
        /// File for the manifest (default: OUTPUT.manifest.json when
        /// --output is given, else none).
        #[arg(long)]
        manifest: Option<PathBuf>,
        /// Export this creator's sales instead of the postings.
        #[arg(long, value_name = "CREATOR_ID")]
        creator_sales: Option<String>,
        /// Export the public event stream for analysts instead of the
        /// postings: one CloudEvents JSON object per line (`data` valid
        /// against schemas/json/<type>.v1.schema.json).
        #[arg(long, conflicts_with_all = ["creator_sales", "manifest"])]
        public: bool,
        /// With the public stream (implies --public): keep writing events
        /// as the ledger commits them, until interrupted.
        #[arg(long, conflicts_with_all = ["creator_sales", "manifest"])]
        follow: bool,
        /// How often --follow looks for new records.
        #[arg(long, default_value = "200ms", value_parser = humantime::parse_duration)]
        poll_interval: Duration,
    },
    /// The distributed services' configuration file.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Probe a running ledger's /healthz (the container image's
    /// HEALTHCHECK: the image has no shell and no curl). Exit code 0 when it
    /// answers 200 within the timeout, 1 otherwise.
    Health {
        /// `host:port` of the HTTP server to probe.
        #[arg(long, env = "LEDGER_HEALTH_ADDR", default_value = "127.0.0.1:8080")]
        addr: SocketAddr,
        /// Give up after this long.
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// Print a signed token for local use.
    Token {
        #[command(flatten)]
        common: Common,
        #[arg(long, value_parser = ["admin", "service", "user"])]
        role: String,
        #[arg(long)]
        sub: String,
        #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
        ttl: Duration,
    },
}

#[derive(Subcommand)]
enum ConfigAction {
    /// Parse a configuration file (the TOML that `LEDGER_CONFIG` names, e.g.
    /// the ConfigMap's `ledger.toml`) with the services' own settings:
    /// unknown keys, wrong types and out-of-range values are refused, and so
    /// is a signing secret in the file. Prints the effective settings
    /// (defaults filled in). Exit code 1 when the file is refused.
    Check {
        /// The TOML file.
        file: PathBuf,
        /// Print the effective settings as JSON (the secret left out).
        #[arg(long)]
        json: bool,
    },
}

/// `GET /healthz` on `addr`, HTTP/1.0 over a plain socket: the status code.
fn probe_health(addr: SocketAddr, timeout: Duration) -> std::io::Result<u16> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "GET /healthz HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut head = [0u8; 32];
    let mut read = 0;
    while read < 12 {
        let n = stream.read(&mut head[read..])?;
        if n == 0 {
            break;
        }
        read += n;
    }
    let line = String::from_utf8_lossy(&head[..read]).into_owned();
    line.split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("not an http answer: {line:?}"),
            )
        })
}

/// The signing secret: from the flag or environment, else kept in the data directory.
fn secret(common: &Common) -> Result<Vec<u8>, String> {
    if let Some(secret) = &common.jwt_secret {
        if secret.len() < 16 {
            return Err("LEDGER_JWT_SECRET must be at least 16 characters".into());
        }
        return Ok(secret.as_bytes().to_vec());
    }
    let path = common.data_dir.join("jwt-secret");
    if let Ok(text) = std::fs::read_to_string(&path) {
        return Ok(text.trim().as_bytes().to_vec());
    }
    std::fs::create_dir_all(&common.data_dir)
        .map_err(|e| format!("cannot create {}: {e}", common.data_dir.display()))?;
    let mut bytes = [0u8; 32];
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| format!("cannot read /dev/urandom: {e}"))?;
    let text: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    write_private(&path, &text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(text.into_bytes())
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    writeln!(file, "{text}")
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("SIGTERM handler installs");
        tokio::select! { _ = interrupt => {}, _ = terminate.recv() => {} }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Commands::Verify {
            data_dir,
            json,
            balances,
            #[cfg(feature = "distributed")]
            kafka,
            #[cfg(feature = "distributed")]
            kafka_bootstrap,
            #[cfg(feature = "distributed")]
            topic_prefix,
            #[cfg(feature = "distributed")]
            cql,
            #[cfg(feature = "distributed")]
            cql_contact,
            #[cfg(feature = "distributed")]
            cql_keyspace,
        } => {
            #[cfg(feature = "distributed")]
            let (verification, source) = if kafka {
                let topics = log_kafka::Topics::with_prefix(&topic_prefix);
                let source = format!("{} on {kafka_bootstrap}", topics.events);
                let config = log_kafka::KafkaConfig::new(kafka_bootstrap);
                let copy = cql.then(|| ledger_cli::verify::CqlCopy {
                    contact_points: ledger_cli::cluster::contact_list(&cql_contact),
                    keyspace: cql_keyspace,
                });
                (
                    ledger_cli::verify::verify_kafka(&config, &topics, copy.as_ref()),
                    source,
                )
            } else {
                let source = data_dir.display().to_string();
                (ledger_cli::verify::verify(&data_dir), source)
            };
            #[cfg(not(feature = "distributed"))]
            let (verification, source) = (
                ledger_cli::verify::verify(&data_dir),
                data_dir.display().to_string(),
            );
            let verification = match verification {
                Ok(verification) => verification,
                Err(error) => {
                    eprintln!("error: cannot verify {source}: {error}");
                    return ExitCode::from(2);
                }
            };
            if json {
                println!("{:#}", ledger_cli::verify::json(&verification, balances));
            } else {
                print!("{}", ledger_cli::verify::summary(&verification));
            }
            if verification.report.is_clean() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Commands::Export {
            data_dir,
            format,
            output,
            manifest,
            creator_sales,
            public,
            follow,
            poll_interval,
        } => {
            if public || follow {
                if format != ledger_cli::export::Format::Ndjson {
                    eprintln!("error: the public stream is written as NDJSON only");
                    return ExitCode::from(2);
                }
                return export_public(&data_dir, output.as_deref(), follow, poll_interval);
            }
            let creator_sales = match creator_sales.map(UserId::parse).transpose() {
                Ok(creator) => creator,
                Err(error) => {
                    eprintln!("error: --creator-sales: {error}");
                    return ExitCode::from(2);
                }
            };
            let request = ledger_cli::export::ExportRequest {
                data_dir: data_dir.clone(),
                format,
                output,
                manifest,
                creator_sales,
            };
            match ledger_cli::export::export(&request) {
                Ok(exported) => {
                    let heads: Vec<String> = exported
                        .manifest
                        .shards
                        .iter()
                        .map(|shard| format!("{}@{}", shard.shard, shard.last_sequence))
                        .collect();
                    eprintln!(
                        "exported {} rows from {} ({}){}",
                        exported.rows,
                        data_dir.display(),
                        heads.join(" "),
                        exported
                            .manifest_path
                            .map(|path| format!("; manifest {}", path.display()))
                            .unwrap_or_default()
                    );
                    ExitCode::SUCCESS
                }
                Err(error) => {
                    eprintln!("error: cannot export {}: {error}", data_dir.display());
                    ExitCode::from(2)
                }
            }
        }
        Commands::Health { addr, timeout } => match probe_health(addr, timeout) {
            Ok(200) => ExitCode::SUCCESS,
            Ok(status) => {
                eprintln!("error: http://{addr}/healthz answered {status}");
                ExitCode::FAILURE
            }
            Err(error) => {
                eprintln!("error: cannot probe http://{addr}/healthz: {error}");
                ExitCode::FAILURE
            }
        },
        Commands::Config {
            action: ConfigAction::Check { file, json },
        } => match ledger_cli::config::ClusterSettings::check_file(&file) {
            Ok(settings) => {
                if json {
                    println!(
                        "{:#}",
                        serde_json::to_value(&settings).expect("settings serialize")
                    );
                } else {
                    println!(
                        "{}: valid ({} shards, topics {}.*, kafka {}, cql {} keyspace {})",
                        file.display(),
                        settings.shards,
                        settings.topic_prefix,
                        settings.kafka_bootstrap,
                        settings.cql_contact,
                        settings.cql_keyspace
                    );
                }
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("error: {error}");
                ExitCode::FAILURE
            }
        },
        Commands::Token {
            common,
            role,
            sub,
            ttl,
        } => {
            let secret = match secret(&common) {
                Ok(secret) => secret,
                Err(error) => {
                    eprintln!("error: {error}");
                    return ExitCode::FAILURE;
                }
            };
            let role = match role.as_str() {
                "admin" => Role::Admin,
                "service" => Role::Service,
                _ => Role::User,
            };
            let Ok(sub) = UserId::parse(sub) else {
                eprintln!("error: --sub is not a valid user id");
                return ExitCode::FAILURE;
            };
            println!(
                "{}",
                ledger_http::auth::issue_token(
                    &secret,
                    role,
                    &sub,
                    ttl.as_secs(),
                    ledger_http::auth::now_seconds()
                )
            );
            ExitCode::SUCCESS
        }
        #[cfg(feature = "distributed")]
        Commands::CommandApi => run_service(ledger_cli::cluster::Role::CommandApi),
        #[cfg(feature = "distributed")]
        Commands::Projector => run_service(ledger_cli::cluster::Role::Projector),
        #[cfg(feature = "distributed")]
        Commands::QueryApi => run_service(ledger_cli::cluster::Role::QueryApi),
        #[cfg(feature = "distributed")]
        Commands::PublicStream => run_service(ledger_cli::cluster::Role::PublicStream),
        Commands::Serve {
            common,
            command_addr,
            query_addr,
            shards,
            escrow_hold,
            resale_hold,
            tick_interval,
            idempotency_horizon,
            purchase_limit,
            purchase_window,
            item_request_interval,
            snapshot_every_events,
            demo,
        } => {
            if shards == 0 || shards > 1024 {
                eprintln!("error: --shards must be between 1 and 1024");
                return ExitCode::FAILURE;
            }
            let purchase_limits = ledger_core::limits::PurchaseLimits {
                purchases_per_window: purchase_limit,
                purchase_window_ms: purchase_window.as_millis() as u64,
                item_request_interval_ms: item_request_interval.as_millis() as u64,
            };
            if let Err(error) = purchase_limits.validate() {
                eprintln!("error: {error}");
                return ExitCode::FAILURE;
            }
            let jwt_secret = match secret(&common) {
                Ok(secret) => secret,
                Err(error) => {
                    eprintln!("error: {error}");
                    return ExitCode::FAILURE;
                }
            };
            let jwt_secret_previous = match common.jwt_secret_previous.as_deref() {
                None | Some("") => None,
                Some(previous) if previous.len() < 16 => {
                    eprintln!("error: LEDGER_JWT_SECRET_PREVIOUS must be at least 16 characters");
                    return ExitCode::FAILURE;
                }
                Some(previous) => Some(SecretSlice::from(previous.as_bytes().to_vec())),
            };
            let settings = Settings {
                data_dir: common.data_dir,
                command_addr,
                query_addr,
                shard_count: shards,
                escrow_hold,
                resale_hold,
                tick_interval,
                idempotency_horizon,
                purchase_limits,
                jwt_secret: SecretSlice::from(jwt_secret.clone()),
                jwt_secret_previous,
                read_wait: Duration::from_secs(5),
                snapshot_every_events,
            };
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .expect("tokio runtime starts");
            runtime.block_on(async move {
                let application = match Application::build(settings).await {
                    Ok(application) => application,
                    Err(error) => {
                        eprintln!("error: {error}");
                        return ExitCode::FAILURE;
                    }
                };
                let command_url = format!("http://{}", application.command_addr());
                let query_url = format!("http://{}", application.query_addr());
                tracing::info!(%command_url, %query_url, shards, "ledger serving");
                eprintln!("command API: {command_url}\nquery API:   {query_url}");
                if demo {
                    let guide = ledger_cli::demo::seed(
                        &application.engine,
                        &jwt_secret,
                        &command_url,
                        &query_url,
                    )
                    .await;
                    println!("{guide}");
                }
                let stopper = application.stopper();
                tokio::spawn(async move {
                    shutdown_signal().await;
                    tracing::info!("shutting down");
                    let _ = stopper.send(true);
                });
                match application.run_until_stopped().await {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(error) => {
                        eprintln!("error: {error}");
                        ExitCode::FAILURE
                    }
                }
            })
        }
    }
}

/// Runs one distributed service until SIGTERM or Ctrl-C.
#[cfg(feature = "distributed")]
fn run_service(role: ledger_cli::cluster::Role) -> ExitCode {
    use ledger_cli::cluster::{ClusterSettings, Service};
    let settings = match ClusterSettings::load() {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime starts");
    runtime.block_on(async move {
        let service = match Service::build(role, settings).await {
            Ok(service) => service,
            Err(error) => {
                eprintln!("error: {error}");
                return ExitCode::FAILURE;
            }
        };
        tracing::info!(?role, address = %service.local_addr(), "serving");
        eprintln!("{role:?} listening on http://{}", service.local_addr());
        let stopper = service.stopper();
        tokio::spawn(async move {
            shutdown_signal().await;
            tracing::info!("shutting down");
            let _ = stopper.send(true);
        });
        match service.run_until_stopped().await {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("error: {error}");
                ExitCode::FAILURE
            }
        }
    })
}

/// `ledger export --public [--follow]`.
fn export_public(
    data_dir: &Path,
    output: Option<&Path>,
    follow: bool,
    poll_interval: Duration,
) -> ExitCode {
    let mut sink: Box<dyn std::io::Write> = match output {
        Some(path) => match std::fs::File::create(path) {
            Ok(file) => Box::new(std::io::BufWriter::new(file)),
            Err(error) => {
                eprintln!("error: cannot create {}: {error}", path.display());
                return ExitCode::from(2);
            }
        },
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    match ledger_cli::public::export_public(data_dir, &mut sink, follow, poll_interval) {
        Ok(written) => {
            eprintln!(
                "exported {written} public events from {}",
                data_dir.display()
            );
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!(
                "error: cannot export the public events of {}: {error}",
                data_dir.display()
            );
            ExitCode::from(2)
        }
    }
}
