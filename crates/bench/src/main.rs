//! `ledger-bench`: the ledger's load generator (workloads, open and closed
//! loop, an invariant check after each run), kept out of the production
//! `ledger` binary. Figures recorded before it moved here were produced by
//! `ledger bench`, the same code.

/// mimalloc, like the `ledger` binary, so embedded runs measure the same allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use ledger_bench as bench;

/// Load-test the ledger with a workload and check its invariants afterwards.
///
/// Workloads (each in both modes): `purchases` (primary purchases of 50
/// unlimited items; the historical benchmark), `drop` (--buyers race for
/// one Limited of --supply serials), `catalogue` (Zipf-popular items and
/// bundles, Zipf-active buyers), `resale` (list / cancel / buy listings
/// of a resellable Limited). Closed loop at --concurrency, or open loop
/// at --rate. Bounded in requests (and --duration); loopback only.
#[derive(Parser)]
#[command(name = "ledger-bench", version, verbatim_doc_comment)]
struct Args {
    /// Data directory of the ledger under test: its `jwt-secret` file signs
    /// the HTTP mode's tokens when no secret is given.
    #[arg(long, env = "LEDGER_DATA_DIR", default_value = "./data")]
    data_dir: PathBuf,
    /// Token signing secret (HS256) of the ledger under test (HTTP mode).
    #[arg(long, env = "LEDGER_JWT_SECRET", hide_env_values = true)]
    jwt_secret: Option<String>,
    /// `embedded`: engine + SQLite in a temporary directory, no HTTP (its
    /// projector runs after the load, for the check). `http`: through the
    /// command API at --command-url, checked through --query-url. Every
    /// workload runs in both modes.
    #[arg(long, value_parser = ["embedded", "http"], default_value = "embedded")]
    mode: String,
    /// What the load is: purchases | drop | catalogue | resale.
    #[arg(long, value_parser = ledger_bench::Workload::NAMES, default_value = "purchases")]
    workload: String,
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    command_url: String,
    /// Where the invariant check reads after an HTTP run.
    #[arg(long, default_value = "http://127.0.0.1:8081")]
    query_url: String,
    /// Requests of the measured phase [default: 20000; resale 5000]
    /// (drop: --buyers × --attempts-per-buyer, not settable).
    #[arg(long, visible_alias = "purchases")]
    requests: Option<usize>,
    /// Closed loop: requests in flight. Open loop (--rate): the in-flight
    /// bound; a request due while it is reached is dropped by the generator.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// Open loop: requests per second on a fixed schedule whatever the
    /// answers; latency counts from each request's scheduled time.
    #[arg(long)]
    rate: Option<f64>,
    /// Stop issuing requests after this long (e.g. 30s, 2m).
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// drop, catalogue, resale: users [default: drop 100000, catalogue 10000, resale 1000].
    #[arg(long)]
    buyers: Option<usize>,
    /// drop, resale: serials of the Limited [default: drop 3000, resale 1000].
    #[arg(long)]
    supply: Option<u32>,
    /// drop: purchases each buyer sends [default: 1].
    #[arg(long)]
    attempts_per_buyer: Option<usize>,
    /// catalogue: unlimited items [default: 1000].
    #[arg(long)]
    items: Option<usize>,
    /// catalogue: Zipf exponent of item popularity and buyer activity [default: 1.1].
    #[arg(long = "zipf-s")]
    zipf_s: Option<f64>,
    /// catalogue: share of requests that buy a bundle, in percent [default: 5].
    #[arg(long)]
    bundle_percent: Option<u32>,
    /// Seed of every random choice (same seed, same requests).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Shards of the embedded engine.
    #[arg(long, default_value_t = 4)]
    shards: u16,
    /// Write the full result (parameters, rates, percentiles, counts by
    /// code, violations, latency histogram) to this JSON file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// No progress line on stderr.
    #[arg(long)]
    quiet: bool,
    /// How long the invariant check waits for the read models to agree.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    check_timeout: Duration,
}

/// The signing secret of the ledger under test: from the flag or the
/// environment, else the one `ledger serve` keeps in its data directory.
fn secret(data_dir: &Path, given: Option<&str>) -> Result<Vec<u8>, String> {
    if let Some(secret) = given {
        if secret.len() < 16 {
            return Err("LEDGER_JWT_SECRET must be at least 16 characters".into());
        }
        return Ok(secret.as_bytes().to_vec());
    }
    let path = data_dir.join("jwt-secret");
    std::fs::read_to_string(&path)
        .map(|text| text.trim().as_bytes().to_vec())
        .map_err(|error| {
            format!(
                "no --jwt-secret given and cannot read {}: {error}",
                path.display()
            )
        })
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let Args {
        mode,
        workload,
        command_url,
        query_url,
        requests,
        concurrency,
        rate,
        duration,
        buyers,
        supply,
        attempts_per_buyer,
        items,
        zipf_s,
        bundle_percent,
        seed,
        shards,
        json,
        quiet,
        check_timeout,
        data_dir,
        jwt_secret,
    } = Args::parse();
    let parsed = bench::Mode::parse(&mode).and_then(|mode| {
        Ok(bench::Options {
            mode,
            workload: bench::Workload::parse(&workload)?,
            command_url,
            query_url,
            shards,
            requests,
            concurrency,
            rate_per_second: rate,
            duration,
            buyers,
            supply,
            attempts_per_buyer,
            items,
            zipf_exponent: zipf_s,
            bundle_percent,
            seed,
            quiet,
            check_timeout,
            json,
        })
    });
    let options = match parsed.and_then(|options| options.validate().map(|()| options)) {
        Ok(options) => options,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::FAILURE;
        }
    };
    let secret = if options.mode == bench::Mode::Http {
        match secret(&data_dir, jwt_secret.as_deref()) {
            Ok(secret) => Some(secret),
            Err(error) => {
                eprintln!("error: {error}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        None
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime starts");
    let json_path = options.json.clone();
    let report = match runtime.block_on(bench::run(options, secret)) {
        Ok(report) => report,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::FAILURE;
        }
    };
    println!("{}", report.summary());
    for line in report.code_lines().iter().chain(&report.notes) {
        println!("{line}");
    }
    if report.violations.is_empty() {
        println!("invariants: {}", report.invariants_checked);
    } else {
        for violation in &report.violations {
            println!("invariant violated: {violation}");
        }
    }
    if let Some(path) = json_path {
        let text =
            serde_json::to_string_pretty(&report.to_json()).expect("a json value serializes");
        if let Err(error) = std::fs::write(&path, text + "\n") {
            eprintln!(
                "error: cannot write the result to {}: {error}",
                path.display()
            );
            return ExitCode::FAILURE;
        }
    }
    if report.violations.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
