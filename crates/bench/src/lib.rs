//! `ledger bench`: a load generator for the ledger, with realistic
//! workloads and an invariant check after each run.
//!
//! * `purchases`: primary purchases of 50 unlimited items (the historical
//!   benchmark, unchanged).
//! * `drop`: many funded buyers race for one Limited; time to sell out.
//! * `catalogue`: Zipf-popular items and bundles bought by Zipf-active buyers.
//! * `resale`: owners of a resellable Limited list, cancel and buy listings.
//!
//! Every workload runs through the HTTP API of a running ledger (`http`) or
//! straight into an embedded engine on a temporary SQLite store
//! (`embedded`, no HTTP; its projector starts after the load, for the
//! check). Closed loop at a fixed concurrency, or open loop at `--rate`.
//! Bounded in requests and optionally in time; loopback only.

mod catalogue;
mod driver;
mod limited_drop;
mod purchases;
mod random;
mod reader;
mod report;
mod resale;
mod target;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ledger_core::{BundleId, Command, GrantId, ItemId, ListingId, PurchaseId, UserId};
use serde_json::{json, Map, Value};
use tokio::time::Instant;

pub use driver::{Pace, Phase};
use reader::Reader;
pub use report::Report;
use target::{Accepted, Answer, Target};

/// Requests a run may issue at most.
pub const REQUESTS_MAX: usize = 10_000_000;
/// Users a run may create at most.
pub const BUYERS_MAX: usize = 10_000_000;
pub const CONCURRENCY_MAX: usize = 65_536;
pub const SUPPLY_MAX: u32 = 1_000_000;
pub const ITEMS_MAX: usize = 100_000;
pub const RATE_PER_SECOND_MAX: f64 = 1_000_000.0;
pub const DURATION_MAX: Duration = Duration::from_secs(24 * 3_600);
pub const CHECK_TIMEOUT_MAX: Duration = Duration::from_secs(3_600);
/// Setup commands (grants, items) in flight at once.
const SETUP_CONCURRENCY: usize = 256;
/// Read-model reads in flight at once during a check.
pub(crate) const CHECK_READ_PARALLELISM: usize = 64;
/// Violations listed one by one; the rest are counted.
const VIOLATIONS_LISTED_MAX: usize = 50;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    Purchases,
    Drop,
    Catalogue,
    Resale,
}

impl Workload {
    pub const NAMES: [&'static str; 4] = ["purchases", "drop", "catalogue", "resale"];

    pub fn parse(text: &str) -> Result<Workload, String> {
        match text {
            "purchases" => Ok(Workload::Purchases),
            "drop" => Ok(Workload::Drop),
            "catalogue" => Ok(Workload::Catalogue),
            "resale" => Ok(Workload::Resale),
            other => Err(format!(
                "unknown workload `{other}`: expected purchases, drop, catalogue or resale"
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Workload::Purchases => "purchases",
            Workload::Drop => "drop",
            Workload::Catalogue => "catalogue",
            Workload::Resale => "resale",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Embedded,
    Http,
}

impl Mode {
    pub fn parse(text: &str) -> Result<Mode, String> {
        match text {
            "embedded" => Ok(Mode::Embedded),
            "http" => Ok(Mode::Http),
            other => Err(format!("unknown mode `{other}`: expected embedded or http")),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Embedded => "embedded",
            Mode::Http => "http",
        }
    }
}

/// Everything `ledger bench` can be told. `None` means "the workload's default".
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    pub mode: Mode,
    pub workload: Workload,
    pub command_url: String,
    pub query_url: String,
    /// Embedded mode: shards of the engine.
    pub shards: u16,
    pub requests: Option<usize>,
    pub concurrency: usize,
    pub rate_per_second: Option<f64>,
    pub duration: Option<Duration>,
    pub buyers: Option<usize>,
    pub supply: Option<u32>,
    pub attempts_per_buyer: Option<usize>,
    pub items: Option<usize>,
    pub zipf_exponent: Option<f64>,
    pub bundle_percent: Option<u32>,
    pub seed: u64,
    pub quiet: bool,
    pub check_timeout: Duration,
    pub json: Option<PathBuf>,
}

impl Options {
    /// The options of `ledger bench` without flags.
    pub fn defaults() -> Options {
        Options {
            mode: Mode::Embedded,
            workload: Workload::Purchases,
            command_url: "http://127.0.0.1:8080".into(),
            query_url: "http://127.0.0.1:8081".into(),
            shards: 4,
            requests: None,
            concurrency: 256,
            rate_per_second: None,
            duration: None,
            buyers: None,
            supply: None,
            attempts_per_buyer: None,
            items: None,
            zipf_exponent: None,
            bundle_percent: None,
            seed: 1,
            quiet: false,
            check_timeout: Duration::from_secs(120),
            json: None,
        }
    }

    /// Requests of the measured phase.
    pub fn requests(&self) -> usize {
        match self.workload {
            Workload::Drop => self.buyers() * self.attempts_per_buyer(),
            Workload::Resale => self.requests.unwrap_or(5_000),
            Workload::Purchases | Workload::Catalogue => self.requests.unwrap_or(20_000),
        }
    }

    pub fn buyers(&self) -> usize {
        match self.workload {
            Workload::Purchases => purchases::buyers_for(self.requests()),
            Workload::Drop => self.buyers.unwrap_or(100_000),
            Workload::Catalogue => self.buyers.unwrap_or(10_000),
            Workload::Resale => self.buyers.unwrap_or(1_000),
        }
    }

    pub fn supply(&self) -> u32 {
        self.supply.unwrap_or(match self.workload {
            Workload::Resale => 1_000,
            _ => 3_000,
        })
    }

    pub fn attempts_per_buyer(&self) -> usize {
        self.attempts_per_buyer.unwrap_or(1)
    }

    pub fn items(&self) -> usize {
        self.items.unwrap_or(1_000)
    }

    pub fn zipf_exponent(&self) -> f64 {
        self.zipf_exponent.unwrap_or(1.1)
    }

    pub fn bundle_percent(&self) -> u32 {
        self.bundle_percent.unwrap_or(5)
    }

    pub fn pace(&self) -> Pace {
        Pace {
            count: self.requests(),
            concurrency: self.concurrency,
            rate_per_second: self.rate_per_second,
            duration: self.duration,
        }
    }

    /// e.g. `http (256 concurrent)` (the historical label) or
    /// `http (open loop at 4000/s, at most 256 in flight)`.
    pub fn label(&self) -> String {
        match self.rate_per_second {
            None => format!("{} ({} concurrent)", self.mode.as_str(), self.concurrency),
            Some(rate) => format!(
                "{} (open loop at {rate}/s, at most {} in flight)",
                self.mode.as_str(),
                self.concurrency
            ),
        }
    }

    /// Refuses what cannot run, or would not mean what it says.
    pub fn validate(&self) -> Result<(), String> {
        let workload = self.workload.as_str();
        if !(1..=CONCURRENCY_MAX).contains(&self.concurrency) {
            return Err(format!("--concurrency must be 1..={CONCURRENCY_MAX}"));
        }
        if !is_loopback_url(&self.command_url) || !is_loopback_url(&self.query_url) {
            return Err("the load generator only targets loopback addresses".into());
        }
        if self.mode == Mode::Embedded && !(1..=1_024).contains(&self.shards) {
            return Err("--shards must be 1..=1024".into());
        }
        if let Some(requests) = self.requests {
            if self.workload == Workload::Drop {
                return Err("--requests does not apply to --workload drop: it sends --buyers × --attempts-per-buyer purchases".into());
            }
            if !(1..=REQUESTS_MAX).contains(&requests) {
                return Err(format!("--requests must be 1..={REQUESTS_MAX}"));
            }
        }
        let applies = |flag: &str, given: bool, workloads: &[Workload]| {
            if given && !workloads.contains(&self.workload) {
                let names: Vec<&str> = workloads.iter().map(|w| w.as_str()).collect();
                return Err(format!(
                    "{flag} does not apply to --workload {workload} (only to {})",
                    names.join(", ")
                ));
            }
            Ok(())
        };
        use Workload::*;
        applies(
            "--buyers",
            self.buyers.is_some(),
            &[Drop, Catalogue, Resale],
        )?;
        applies("--supply", self.supply.is_some(), &[Drop, Resale])?;
        applies(
            "--attempts-per-buyer",
            self.attempts_per_buyer.is_some(),
            &[Drop],
        )?;
        applies("--items", self.items.is_some(), &[Catalogue])?;
        applies("--zipf-s", self.zipf_exponent.is_some(), &[Catalogue])?;
        applies(
            "--bundle-percent",
            self.bundle_percent.is_some(),
            &[Catalogue],
        )?;
        if !(1..=BUYERS_MAX).contains(&self.buyers()) {
            return Err(format!("--buyers must be 1..={BUYERS_MAX}"));
        }
        if self.workload == Resale && self.buyers() < 2 {
            return Err(
                "--workload resale needs at least 2 buyers (a buyer cannot buy its own listing)"
                    .into(),
            );
        }
        if !(1..=SUPPLY_MAX).contains(&self.supply()) {
            return Err(format!("--supply must be 1..={SUPPLY_MAX}"));
        }
        if !(1..=100).contains(&self.attempts_per_buyer()) {
            return Err("--attempts-per-buyer must be 1..=100".into());
        }
        if self.workload == Drop && self.requests() > REQUESTS_MAX {
            return Err(format!(
                "--buyers × --attempts-per-buyer must be at most {REQUESTS_MAX}"
            ));
        }
        if !(1..=ITEMS_MAX).contains(&self.items()) {
            return Err(format!("--items must be 1..={ITEMS_MAX}"));
        }
        let exponent = self.zipf_exponent();
        if !(exponent.is_finite() && exponent > 0.0 && exponent <= 10.0) {
            return Err("--zipf-s must be a number in (0, 10]".into());
        }
        if self.bundle_percent() > 100 {
            return Err("--bundle-percent must be 0..=100".into());
        }
        if let Some(rate) = self.rate_per_second {
            if !(rate.is_finite() && rate > 0.0 && rate <= RATE_PER_SECOND_MAX) {
                return Err(format!(
                    "--rate must be a number of requests per second in (0, {RATE_PER_SECOND_MAX}]"
                ));
            }
        }
        if let Some(duration) = self.duration {
            if duration.is_zero() || duration > DURATION_MAX {
                return Err("--duration must be more than 0 s and at most 24h".into());
            }
        }
        if self.check_timeout < Duration::from_secs(1) || self.check_timeout > CHECK_TIMEOUT_MAX {
            return Err("--check-timeout must be 1s..=1h".into());
        }
        Ok(())
    }

    /// The parameters as recorded in the JSON result.
    pub fn parameters(&self) -> Map<String, Value> {
        let mut parameters = Map::new();
        let mut put = |key: &str, value: Value| {
            parameters.insert(key.to_string(), value);
        };
        put("mode", json!(self.mode.as_str()));
        put("workload", json!(self.workload.as_str()));
        put("requests", json!(self.requests()));
        put("concurrency", json!(self.concurrency));
        put("rate_per_second", json!(self.rate_per_second));
        put("duration_s", json!(self.duration.map(|d| d.as_secs_f64())));
        put("seed", json!(self.seed));
        if self.mode == Mode::Embedded {
            put("shards", json!(self.shards));
        } else {
            put("command_url", json!(self.command_url));
            put("query_url", json!(self.query_url));
        }
        match self.workload {
            Workload::Purchases => {
                put("buyers", json!(self.buyers()));
                put("items", json!(purchases::ITEMS));
                put("price", json!(purchases::PRICE));
            }
            Workload::Drop => {
                put("buyers", json!(self.buyers()));
                put("supply", json!(self.supply()));
                put("attempts_per_buyer", json!(self.attempts_per_buyer()));
                put("price", json!(limited_drop::DROP_PRICE));
            }
            Workload::Catalogue => {
                put("buyers", json!(self.buyers()));
                put("items", json!(self.items()));
                put("zipf_s", json!(self.zipf_exponent()));
                put("bundle_percent", json!(self.bundle_percent()));
            }
            Workload::Resale => {
                put("buyers", json!(self.buyers()));
                put("supply", json!(self.supply()));
                put("primary_price", json!(resale::PRIMARY_PRICE));
            }
        }
        parameters
    }
}

pub fn is_loopback_url(url: &str) -> bool {
    url.starts_with("http://127.")
        || url.starts_with("http://localhost")
        || url.starts_with("http://[::1]")
}

/// What a workload found; `run` adds the run's identity to make a `Report`.
pub struct Outcome {
    pub phase: Phase,
    pub facts: Map<String, Value>,
    pub notes: Vec<String>,
    pub invariants_checked: String,
    pub violations: Vec<String>,
}

/// How the check reads the read models.
enum Reads {
    Http(Reader),
    /// The embedded store; its projector starts on the first read.
    Embedded {
        store: Arc<store_sqlite::SqliteStore>,
        projector: std::sync::Mutex<
            Option<(
                tokio::sync::watch::Sender<bool>,
                tokio::task::JoinHandle<()>,
            )>,
        >,
    },
}

/// One run: its options, where the load goes, and its unique id prefix.
pub struct Context {
    pub options: Options,
    pub target: Target,
    /// Prefix of every id the run creates, unique per run.
    pub tag: String,
    reads: Reads,
}

impl Context {
    /// The label of a progress line, or `None` when `--quiet`.
    pub fn progress(&self, what: &str) -> Option<String> {
        (!self.options.quiet).then(|| format!("bench {what}"))
    }

    pub fn user(&self, index: usize) -> String {
        format!("bench-{}-b-{index}", self.tag)
    }

    /// The read models, for the check. Embedded: starts the projector.
    pub fn reader(&self) -> Reader {
        match &self.reads {
            Reads::Http(reader) => reader.clone(),
            Reads::Embedded { store, projector } => {
                let mut projector = projector.lock().expect("projector lock");
                if projector.is_none() {
                    let (stop, stopped) = tokio::sync::watch::channel(false);
                    let task = tokio::spawn(store.clone().run_projector(stopped));
                    *projector = Some((stop, task));
                }
                Reader::Store(store.read_models())
            }
        }
    }

    async fn stop_projector(&self) {
        if let Reads::Embedded { projector, .. } = &self.reads {
            let running = projector.lock().expect("projector lock").take();
            if let Some((stop, task)) = running {
                let _ = stop.send(true);
                let _ = task.await;
            }
        }
    }

    /// The check gives up this long after it starts.
    pub fn check_deadline(&self) -> Instant {
        Instant::now() + self.options.check_timeout
    }
}

/// Runs setup commands (grants, items, bundles) closed loop; every one must
/// be accepted. Returns the accepted answers in the order of `commands`.
pub async fn setup(
    context: &Context,
    what: &str,
    commands: Vec<Command>,
) -> Result<Vec<Accepted>, String> {
    let count = commands.len();
    if count == 0 {
        return Ok(Vec::new());
    }
    let commands = Arc::new(commands);
    let answers: Arc<std::sync::Mutex<Vec<Option<Answer>>>> =
        Arc::new(std::sync::Mutex::new(vec![None; count]));
    driver::drive(
        &Pace::closed(count, SETUP_CONCURRENCY),
        context.progress(&format!("setup ({what})")),
        {
            let (target, commands, answers) =
                (context.target.clone(), commands.clone(), answers.clone());
            move |n| {
                let (target, commands, answers) =
                    (target.clone(), commands.clone(), answers.clone());
                async move {
                    let answer = target.submit(commands[n].clone()).await;
                    let code = answer.code;
                    answers.lock().expect("answers lock")[n] = Some(answer);
                    code
                }
            }
        },
    )
    .await;
    let answers = std::mem::take(&mut *answers.lock().expect("answers lock"));
    let refused: Vec<&'static str> = answers
        .iter()
        .filter_map(|answer| match answer {
            Some(answer) if answer.is_ok() => None,
            Some(answer) => Some(answer.code.as_str()),
            None => Some("not_sent"),
        })
        .collect();
    if let Some(first) = refused.first() {
        return Err(format!(
            "setup failed: {} of {count} {what} were not accepted (first answer: {first})",
            refused.len()
        ));
    }
    Ok(answers
        .into_iter()
        .map(|answer| answer.and_then(|a| a.accepted).unwrap_or_default())
        .collect())
}

/// Observes with `gather` and compares with `compare` until they agree or
/// `deadline` passes (the read models trail the answers); returns what
/// still disagrees, at most `VIOLATIONS_LISTED_MAX` lines plus a count.
pub async fn check_until<O, G, Fut>(
    deadline: Instant,
    mut gather: G,
    compare: impl Fn(&O) -> Vec<String>,
) -> Vec<String>
where
    G: FnMut() -> Fut,
    Fut: Future<Output = Result<O, String>>,
{
    loop {
        let violations = match gather().await {
            Ok(observed) => compare(&observed),
            Err(error) => vec![format!("cannot read the read models: {error}")],
        };
        if violations.is_empty() || Instant::now() >= deadline {
            return bounded(violations);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Waits, bounded by `deadline`, until `ready` says the read models have
/// caught up on a cheap read, so the full (expensive) read runs once.
pub async fn wait_until<G, Fut>(deadline: Instant, mut ready: G)
where
    G: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    while !ready().await && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn bounded(mut violations: Vec<String>) -> Vec<String> {
    if violations.len() > VIOLATIONS_LISTED_MAX {
        let more = violations.len() - VIOLATIONS_LISTED_MAX;
        violations.truncate(VIOLATIONS_LISTED_MAX);
        violations.push(format!("… and {more} more"));
    }
    violations
}

fn run_tag() -> String {
    format!(
        "{}",
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0)
    )
}

// Ids the generator makes are valid by construction (digits, letters, `-`).
pub fn user_id(text: &str) -> UserId {
    UserId::parse(text).expect("generated user id is valid")
}
pub fn item_id(text: &str) -> ItemId {
    ItemId::parse(text).expect("generated item id is valid")
}
pub fn bundle_id(text: &str) -> BundleId {
    BundleId::parse(text).expect("generated bundle id is valid")
}
pub fn purchase_id(text: &str) -> PurchaseId {
    PurchaseId::parse(text).expect("generated purchase id is valid")
}
pub fn grant_id(text: &str) -> GrantId {
    GrantId::parse(text).expect("generated grant id is valid")
}
pub fn listing_id(text: &str) -> ListingId {
    ListingId::parse(text).expect("generated listing id is valid")
}

/// Grants `amount` to each user (by index), ids under the run's tag.
pub fn grants(context: &Context, users: &[usize], amount: i64) -> Vec<Command> {
    users
        .iter()
        .map(|user| Command::Grant {
            grant_id: grant_id(&format!("bench-{}-g-{user}", context.tag)),
            user_id: user_id(&context.user(*user)),
            amount,
        })
        .collect()
}

async fn run_workload(context: &Context) -> Result<Outcome, String> {
    match context.options.workload {
        Workload::Purchases => purchases::run(context).await,
        Workload::Drop => limited_drop::run(context).await,
        Workload::Catalogue => catalogue::run(context).await,
        Workload::Resale => resale::run(context).await,
    }
}

/// Runs the configured workload and checks the invariants afterwards.
/// `secret`: the ledger's token secret (HTTP mode).
pub async fn run(options: Options, secret: Option<Vec<u8>>) -> Result<Report, String> {
    options.validate()?;
    let tag = run_tag();
    let outcome = match options.mode {
        Mode::Http => {
            let secret = secret.ok_or(
                "the http mode needs the ledger's token secret (--jwt-secret or LEDGER_JWT_SECRET)",
            )?;
            let client = reqwest::Client::builder()
                .pool_max_idle_per_host(options.concurrency.max(SETUP_CONCURRENCY))
                .build()
                .map_err(|error| format!("cannot build the http client: {error}"))?;
            let target = Target::http(client.clone(), &options.command_url, &secret);
            let reader = Reader::Http {
                client,
                query_url: options.query_url.clone(),
                token: target::service_token(&secret),
            };
            let context = Context {
                options: options.clone(),
                target,
                tag,
                reads: Reads::Http(reader),
            };
            run_workload(&context).await?
        }
        Mode::Embedded => {
            let directory =
                std::env::temp_dir().join(format!("ledger-bench-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&directory);
            let store = store_sqlite::SqliteStore::open(&directory).map_err(|error| {
                format!(
                    "cannot open the embedded store in {}: {error}",
                    directory.display()
                )
            })?;
            let config = engine::EngineConfig::new(ledger_core::Config::new(options.shards));
            let engine = engine::Engine::start(store.clone(), config)
                .await
                .map_err(|error| format!("cannot start the embedded engine: {error}"))?;
            let context = Context {
                options: options.clone(),
                target: Target::Embedded(engine.clone()),
                tag,
                reads: Reads::Embedded {
                    store,
                    projector: std::sync::Mutex::new(None),
                },
            };
            let outcome = run_workload(&context).await;
            context.stop_projector().await;
            engine.shutdown().await;
            drop(context);
            let _ = std::fs::remove_dir_all(&directory);
            outcome?
        }
    };
    let mut notes = outcome.notes;
    let errors = outcome.phase.count_where(target::Code::is_error);
    if errors > 0 {
        notes.push(format!(
            "{errors} requests ended in errors: their effects are unknown to the check"
        ));
    }
    Ok(Report {
        workload: options.workload.as_str(),
        mode: options.mode.as_str(),
        label: options.label(),
        parameters: options.parameters(),
        phase: outcome.phase,
        facts: outcome.facts,
        notes,
        invariants_checked: outcome.invariants_checked,
        violations: outcome.violations,
    })
}

/// Counts per key, for reports.
pub fn tally<K: Ord>(keys: impl IntoIterator<Item = K>) -> BTreeMap<K, u64> {
    let mut counts = BTreeMap::new();
    for key in keys {
        *counts.entry(key).or_insert(0) += 1;
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(workload: Workload) -> Options {
        Options {
            workload,
            ..Options::defaults()
        }
    }

    #[test]
    fn defaults_are_valid_for_every_workload() {
        for name in Workload::NAMES {
            let options = options(Workload::parse(name).unwrap());
            assert_eq!(options.validate(), Ok(()), "{name}");
        }
        assert_eq!(options(Workload::Purchases).requests(), 20_000);
        assert_eq!(options(Workload::Purchases).buyers(), 400);
        assert_eq!(options(Workload::Drop).requests(), 100_000);
        assert_eq!(options(Workload::Resale).requests(), 5_000);
    }

    #[test]
    fn flags_that_do_not_apply_or_exceed_bounds_are_refused() {
        let refused = |options: Options, fragment: &str| {
            let error = options.validate().unwrap_err();
            assert!(error.contains(fragment), "{error}");
        };
        refused(
            Options {
                supply: Some(10),
                ..options(Workload::Catalogue)
            },
            "--supply does not apply to --workload catalogue",
        );
        refused(
            Options {
                requests: Some(10),
                ..options(Workload::Drop)
            },
            "--requests does not apply",
        );
        refused(
            Options {
                command_url: "http://10.0.0.1:8080".into(),
                ..options(Workload::Purchases)
            },
            "loopback",
        );
        refused(
            Options {
                rate_per_second: Some(0.0),
                ..options(Workload::Purchases)
            },
            "--rate",
        );
        refused(
            Options {
                buyers: Some(1),
                ..options(Workload::Resale)
            },
            "at least 2 buyers",
        );
        refused(
            Options {
                zipf_exponent: Some(-1.0),
                ..options(Workload::Catalogue)
            },
            "--zipf-s",
        );
        refused(
            Options {
                buyers: Some(200_000),
                attempts_per_buyer: Some(100),
                ..options(Workload::Drop)
            },
            "at most 10000000",
        );
        assert!(Workload::parse("flash").is_err());
        assert!(Mode::parse("grpc").is_err());
    }

    #[test]
    fn long_violation_lists_are_bounded() {
        let violations: Vec<String> = (0..60).map(|n| n.to_string()).collect();
        let bounded = bounded(violations);
        assert_eq!(bounded.len(), VIOLATIONS_LISTED_MAX + 1);
        assert_eq!(bounded.last().unwrap(), "… and 10 more");
    }

    #[test]
    fn labels_keep_the_historical_closed_loop_form() {
        assert_eq!(
            options(Workload::Purchases).label(),
            "embedded (256 concurrent)"
        );
        let open = Options {
            rate_per_second: Some(4_000.0),
            ..options(Workload::Purchases)
        };
        assert_eq!(
            open.label(),
            "embedded (open loop at 4000/s, at most 256 in flight)"
        );
    }
}
