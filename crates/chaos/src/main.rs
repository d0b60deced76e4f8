//! `ledger-chaos`: seeded chaos runs against real `ledger` processes (and,
//! in distributed mode, the real Kafka and Cassandra of `scripts/infra`).
//! Each run drives a mixed workload through the HTTP APIs while the faults
//! its seed picks are injected, heals the stack, retries every command with
//! its id, and checks: every acknowledged answer repeated identically, every
//! lost command applied at most once, every 201 purchase readable as done,
//! no serial with two owners, supply never exceeded, `ledger verify` clean,
//! the grants equal to what the log issued, every balance proved by the
//! log, and the read models equal to a rebuild from zero. One line per run,
//! a markdown table at the end, exit code 1 on any violation.
//! `scripts/chaos` builds and runs it.

#[path = "../../ledger-cli/tests/support/mod.rs"]
mod support;

mod faults;
mod rng;
mod run;
mod stack;
mod workload;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

use run::{Environment, Mode, RunResult};

#[derive(Parser)]
#[command(
    name = "ledger-chaos",
    about = "Seeded chaos runs against the real ledger processes"
)]
struct Args {
    /// Runs to do.
    #[arg(long, default_value_t = 10)]
    runs: usize,
    /// Seed of the first run; run i uses seed + i.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// distributed | embedded | both (even seeds embedded, odd distributed).
    #[arg(long, value_parser = ["distributed", "embedded", "both"], default_value = "both")]
    mode: String,
    /// Commands per run at least (the load goes on until the faults are over).
    #[arg(long, default_value_t = 200)]
    commands: usize,
    /// `scripts/infra`, for the broker and database faults and the heal.
    #[arg(long, default_value = "scripts/infra")]
    infra: PathBuf,
    /// Where the runs keep their data (a failed run's stays for inspection).
    #[arg(long, default_value = "/tmp/ledger-chaos")]
    work_dir: PathBuf,
    /// Write the summary table (markdown) to this file too.
    #[arg(long)]
    report: Option<PathBuf>,
    /// The command line to print in the report as the one that reproduces it.
    #[arg(long)]
    invocation: Option<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    support::ECHO_LOGS.store(false, std::sync::atomic::Ordering::Relaxed);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::from(2);
        }
    };
    let environment = Environment {
        infra: args.infra.clone(),
        work_dir: args.work_dir.clone(),
        kafka_bootstrap: std::env::var("LEDGER_KAFKA_BOOTSTRAP").unwrap_or_default(),
        cql_contact: std::env::var("LEDGER_CQL_CONTACT").unwrap_or_default(),
        commands: args.commands,
    };
    if args.mode != "embedded"
        && (environment.kafka_bootstrap.is_empty() || environment.cql_contact.is_empty())
    {
        eprintln!("error: distributed runs need LEDGER_KAFKA_BOOTSTRAP and LEDGER_CQL_CONTACT (scripts/infra env)");
        return ExitCode::from(2);
    }
    let started = std::time::Instant::now();
    let mut results = Vec::new();
    for index in 0..args.runs {
        let seed = args.seed + index as u64;
        let mode = match args.mode.as_str() {
            "embedded" => Mode::Embedded,
            "distributed" => Mode::Distributed,
            _ if seed.is_multiple_of(2) => Mode::Embedded,
            _ => Mode::Distributed,
        };
        // Consecutive runs of a mode cycle through its fault kinds.
        let rotation = if args.mode == "both" { seed / 2 } else { seed };
        let result = runtime.block_on(run::run(index, seed, rotation, mode, &environment));
        println!("{}", line(&result));
        for violation in &result.violations {
            println!("    violation: {violation}");
        }
        results.push(result);
        // The table so far after every run: an interrupted invocation
        // still leaves what it ran.
        if let Some(path) = &args.report {
            let table = summary(&results, &args, started.elapsed().as_secs_f64());
            if let Err(error) = std::fs::write(path, &table) {
                eprintln!("error: cannot write {}: {error}", path.display());
                return ExitCode::from(2);
            }
        }
    }
    let table = summary(&results, &args, started.elapsed().as_secs_f64());
    println!("\n{table}");
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    if results.iter().any(|result| !result.violations.is_empty()) {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

fn line(result: &RunResult) -> String {
    let faults: Vec<&str> = result.faults.iter().map(|fault| fault.name()).collect();
    format!(
        "run {:>3} seed {:>6} {:<11} faults [{}] commands {} acknowledged {} lost {} (applied on retry {}) restarts {} violations {} ({:.0} s)",
        result.index,
        result.seed,
        result.mode.name(),
        faults.join(", "),
        result.commands,
        result.acknowledged,
        result.lost,
        result.lost_applied,
        result.restarts,
        result.violations.len(),
        result.seconds
    )
}

fn summary(results: &[RunResult], args: &Args, seconds: f64) -> String {
    let mut out = String::new();
    let invocation = args.invocation.clone().unwrap_or_else(|| {
        format!(
            "scripts/chaos --runs {} --seed {} --mode {}",
            args.runs, args.seed, args.mode
        )
    });
    out.push_str(&format!(
        "Invocation: `{invocation}` ({:.0} min)\n\n",
        seconds / 60.0
    ));
    let count = |mode: Mode| results.iter().filter(|result| result.mode == mode).count();
    let sum = |pick: fn(&RunResult) -> usize| results.iter().map(pick).sum::<usize>();
    let violations = sum(|result| result.violations.len());
    out.push_str("| runs | embedded | distributed | commands | acknowledged | lost, retried | lost, applied on retry | process restarts | violations |\n");
    out.push_str("|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    out.push_str(&format!(
        "| {} | {} | {} | {} | {} | {} | {} | {} | {} |\n\n",
        results.len(),
        count(Mode::Embedded),
        count(Mode::Distributed),
        sum(|result| result.commands),
        sum(|result| result.acknowledged),
        sum(|result| result.lost),
        sum(|result| result.lost_applied),
        results
            .iter()
            .map(|result| result.restarts as usize)
            .sum::<usize>(),
        violations
    ));
    let mut by_kind: BTreeMap<faults::Fault, (usize, usize)> = BTreeMap::new();
    for result in results {
        for fault in &result.faults {
            let entry = by_kind.entry(*fault).or_default();
            entry.0 += 1;
            entry.1 += usize::from(!result.violations.is_empty());
        }
    }
    out.push_str("| fault | injected | in runs with a violation |\n|---|---:|---:|\n");
    for (fault, (injected, failed)) in by_kind {
        out.push_str(&format!("| {} | {injected} | {failed} |\n", fault.name()));
    }
    let failed: Vec<String> = results
        .iter()
        .filter(|result| !result.violations.is_empty())
        .map(|result| {
            format!(
                "- seed {} ({}): {}",
                result.seed,
                result.mode.name(),
                result.violations.join("; ")
            )
        })
        .collect();
    if !failed.is_empty() {
        out.push_str("\nViolations (each seed replays with `scripts/chaos --runs 1 --seed <seed>` and this invocation's `--mode`):\n\n");
        out.push_str(&failed.join("\n"));
        out.push('\n');
    }
    out
}
