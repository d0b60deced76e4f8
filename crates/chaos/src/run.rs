//! One seeded run: start the ledger, load it while the seed's faults are
//! injected, heal, retry every command, then check every invariant.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use projectors::ReadModels;
use serde_json::Value;

use crate::faults::{self, Fault, World};
use crate::rng::Rng;
use crate::stack::{self, Role, Stack};
use crate::support;
use crate::workload::{self, Catalogue, Kind, Outcome, Workload, CREATOR, SECRET};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Embedded,
    Distributed,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Embedded => "embedded",
            Mode::Distributed => "distributed",
        }
    }
}

/// What the driver was told about its world.
#[derive(Clone)]
pub struct Environment {
    pub infra: PathBuf,
    pub work_dir: PathBuf,
    pub kafka_bootstrap: String,
    pub cql_contact: String,
    pub commands: usize,
}

pub struct RunResult {
    pub index: usize,
    pub seed: u64,
    pub mode: Mode,
    pub faults: Vec<Fault>,
    pub commands: usize,
    pub acknowledged: usize,
    pub lost: usize,
    pub lost_applied: usize,
    pub restarts: u32,
    pub violations: Vec<String>,
    pub seconds: f64,
}

fn port_of(address: &str) -> u16 {
    address
        .split(',')
        .next()
        .and_then(|first| first.rsplit(':').next())
        .and_then(|port| port.trim().parse().ok())
        .unwrap_or(0)
}

pub async fn run(
    index: usize,
    seed: u64,
    rotation: u64,
    mode: Mode,
    environment: &Environment,
) -> RunResult {
    let started = Instant::now();
    let mut rng = Rng::new(seed);
    let kinds: &[Fault] = match mode {
        Mode::Embedded => &faults::EMBEDDED,
        Mode::Distributed => &faults::DISTRIBUTED,
    };
    let chosen = faults::choose(rotation, &mut rng, kinds);
    let mut result = RunResult {
        index,
        seed,
        mode,
        faults: chosen.clone(),
        commands: 0,
        acknowledged: 0,
        lost: 0,
        lost_applied: 0,
        restarts: 0,
        violations: Vec::new(),
        seconds: 0.0,
    };
    let name = format!("chaos{seed}_{}", support::unique_name("r"));
    let run_dir = environment.work_dir.join(&name);
    let data_dir = run_dir.join("data");
    let mut mounted = false;
    if let Err(error) = std::fs::create_dir_all(&data_dir) {
        result.violations.push(format!(
            "run could not start: cannot create {}: {error}",
            data_dir.display()
        ));
        return result;
    }
    if chosen.contains(&Fault::FullDisk) {
        match mount_tmpfs(&data_dir) {
            Ok(()) => mounted = true,
            Err(error) => {
                result
                    .violations
                    .push(format!("run could not start: {error}"));
                return result;
            }
        }
    }
    let outcome = match mode {
        Mode::Embedded => embedded(&mut result, &mut rng, &chosen, environment, &data_dir).await,
        Mode::Distributed => distributed(&mut result, &mut rng, &chosen, environment, &name).await,
    };
    if let Err(error) = outcome {
        result
            .violations
            .push(format!("run could not complete: {error}"));
    }
    if mounted {
        let _ = std::process::Command::new("umount").arg(&data_dir).status();
    }
    if result.violations.is_empty() {
        let _ = std::fs::remove_dir_all(&run_dir);
    }
    result.seconds = started.elapsed().as_secs_f64();
    result
}

fn mount_tmpfs(path: &Path) -> Result<(), String> {
    let status = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=48m", "chaos-full-disk"])
        .arg(path)
        .status()
        .map_err(|error| format!("cannot run mount: {error}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("mounting a tmpfs at {} failed", path.display()))
    }
}

fn client(timeout: Duration) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .timeout(timeout)
        .build()
        .map_err(|error| format!("http client: {error}"))
}

/// The load, with the faults injected one after another meanwhile.
async fn load_under_faults(
    result: &mut RunResult,
    rng: &mut Rng,
    chosen: &[Fault],
    world: &World,
    workload: &Arc<Workload>,
    commands: usize,
) -> Result<(), String> {
    let http = client(Duration::from_secs(8))?;
    let faults_done = Arc::new(AtomicBool::new(false));
    let mut workers = tokio::task::JoinSet::new();
    for worker in 0..12 {
        workers.spawn(workload.clone().worker(
            http.clone(),
            world.stack.clone(),
            Rng::new(rng.next_u64() ^ worker),
            commands,
            faults_done.clone(),
        ));
    }
    let mut fault_errors = Vec::new();
    for fault in chosen {
        tokio::time::sleep(Duration::from_millis(rng.between(300, 2_500))).await;
        if let Err(error) = faults::inject(*fault, world, rng).await {
            fault_errors.push(format!("{}: {error}", fault.name()));
        }
    }
    faults_done.store(true, Ordering::SeqCst);
    while workers.join_next().await.is_some() {}
    let sent = workload.sent.lock().expect("sent lock");
    result.commands = sent.len();
    result.acknowledged = sent
        .iter()
        .filter(|sent| matches!(sent.first, Outcome::Answered(..)))
        .count();
    result.lost = sent.len() - result.acknowledged;
    if fault_errors.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "a fault could not be injected or healed: {fault_errors:?}"
        ))
    }
}

/// Every command again with its id, once the stack has healed: an
/// acknowledged one must answer as it did, a lost one is retried until
/// answered and then must answer the same again (applied at most once).
async fn retry_everything(
    result: &mut RunResult,
    stack: &Arc<Stack>,
    workload: &Workload,
) -> Result<(), String> {
    let http = client(Duration::from_secs(30))?;
    let sent = workload.sent.lock().expect("sent lock").clone();
    let permits = Arc::new(tokio::sync::Semaphore::new(8));
    let mut tasks = tokio::task::JoinSet::new();
    for (index, command) in sent.iter().cloned().enumerate() {
        let permit = permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|error| format!("retry permits: {error}"))?;
        let (http, stack) = (http.clone(), stack.clone());
        tasks.spawn(async move {
            let _permit = permit;
            let patience = Duration::from_secs(120);
            let first = workload::post_until_answered(
                &http,
                &stack,
                &command.path,
                &command.body,
                patience,
            )
            .await?;
            let again = match command.first {
                Outcome::Answered(..) => None,
                Outcome::Lost(_) => Some(
                    workload::post_until_answered(
                        &http,
                        &stack,
                        &command.path,
                        &command.body,
                        patience,
                    )
                    .await?,
                ),
            };
            Ok::<_, String>((index, first, again))
        });
    }
    let mut sent = sent;
    while let Some(joined) = tasks.join_next().await {
        let (index, (status, body), again) =
            joined.map_err(|error| format!("retry task: {error}"))??;
        let command = &mut sent[index];
        match (&command.first, again) {
            (Outcome::Answered(first_status, first_body), _) => {
                if (*first_status, first_body) != (status, &body) {
                    result.violations.push(format!(
                        "acknowledged {:?} {} answered {first_status} {first_body} and, retried, {status} {body}",
                        command.kind, command.id
                    ));
                }
            }
            (Outcome::Lost(_), Some((again, again_body))) => {
                if (again, &again_body) != (status, &body) {
                    result.violations.push(format!(
                        "retried {:?} {} answered {status} {body}, then {again} {again_body}",
                        command.kind, command.id
                    ));
                }
                if status == 201 {
                    result.lost_applied += 1;
                }
            }
            (Outcome::Lost(_), None) => {}
        }
        command.last = Some((status, body));
    }
    *workload.sent.lock().expect("sent lock") = sent;
    Ok(())
}

/// A serial changing hands: (seller, buyer); a primary sale has no seller.
type Transfer = (Option<String>, String);

/// What the final answers say the ledger must hold.
struct Expected {
    grants: i64,
    /// purchase id → refunded (primary and resale purchases answered 201).
    purchases: BTreeMap<String, bool>,
    /// (item, serial) → its owner, for serials no refund touched.
    owners: BTreeMap<(String, u64), String>,
    /// Limited item → serials sold in answers.
    serials: BTreeMap<String, BTreeSet<u64>>,
    /// Items and bundles bought, for the rebuild comparison.
    users: Vec<String>,
}

fn expected(workload: &Workload) -> Expected {
    let sent = workload.sent.lock().expect("sent lock");
    let created = |command: &&workload::Sent| matches!(command.last, Some((201, _)));
    let text = |value: &Value| value.as_str().unwrap_or_default().to_string();
    let mut grants = 0;
    let mut purchases = BTreeMap::new();
    let mut serials: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
    // (item, serial) → transfers (from, to); a primary sale has no `from`.
    let mut transfers: BTreeMap<(String, u64), Vec<Transfer>> = BTreeMap::new();
    let mut primary_of: BTreeMap<String, (String, u64)> = BTreeMap::new();
    let listings: BTreeMap<String, &Value> = sent
        .iter()
        .filter(created)
        .filter(|command| command.kind == Kind::Listing)
        .map(|command| (command.id.clone(), &command.body))
        .collect();
    for command in sent.iter().filter(created) {
        let answer = command
            .last
            .as_ref()
            .map(|(_, body)| body)
            .unwrap_or(&Value::Null);
        match command.kind {
            Kind::Grant => grants += command.body["amount"].as_i64().unwrap_or(0),
            Kind::Purchase | Kind::Bundle => {
                purchases.insert(command.id.clone(), false);
                if let Some(serial) = answer["serial"].as_u64() {
                    let item = text(&command.body["item_id"]);
                    serials.entry(item.clone()).or_default().insert(serial);
                    transfers
                        .entry((item.clone(), serial))
                        .or_default()
                        .push((None, text(&command.body["buyer_id"])));
                    primary_of.insert(command.id.clone(), (item, serial));
                }
            }
            Kind::Resale => {
                purchases.insert(command.id.clone(), false);
                if let Some(listing) = listings.get(&text(&command.body["listing_id"])) {
                    let key = (
                        text(&listing["item_id"]),
                        listing["serial"].as_u64().unwrap_or(0),
                    );
                    transfers.entry(key).or_default().push((
                        Some(text(&listing["seller_id"])),
                        text(&command.body["buyer_id"]),
                    ));
                }
            }
            Kind::Setup | Kind::Listing | Kind::Refund => {}
        }
    }
    let mut refunded_serials = BTreeSet::new();
    for command in sent.iter().filter(created) {
        if command.kind == Kind::Refund {
            let purchase = text(&command.body["purchase_id"]);
            purchases.insert(purchase.clone(), true);
            if let Some(key) = primary_of.get(&purchase) {
                refunded_serials.insert(key.clone());
            }
        }
    }
    let mut owners = BTreeMap::new();
    for (key, moves) in transfers {
        if refunded_serials.contains(&key) {
            continue;
        }
        // The owner is whoever received the serial once more than they gave it.
        let mut balance: BTreeMap<String, i64> = BTreeMap::new();
        for (from, to) in moves {
            if let Some(from) = from {
                *balance.entry(from).or_default() -= 1;
            }
            *balance.entry(to).or_default() += 1;
        }
        if let Some((owner, _)) = balance.into_iter().find(|(_, count)| *count == 1) {
            owners.insert(key, owner);
        }
    }
    let mut users = workload.catalogue.users.clone();
    users.push(CREATOR.into());
    if std::env::var("LEDGER_CHAOS_SELF_TEST").is_ok_and(|value| value == "1") {
        // The checks checked: expectations wrong on purpose (one coin more
        // granted, one purchase's refund and one serial's owner invented),
        // each of which the run must report.
        grants += 1;
        if let Some((_, refunded)) = purchases.iter_mut().next() {
            *refunded = !*refunded;
        }
        if let Some((_, owner)) = owners.iter_mut().next() {
            owner.push_str("-someone-else");
        }
    }
    Expected {
        grants,
        purchases,
        owners,
        serials,
        users,
    }
}

async fn query(http: &reqwest::Client, url: &str) -> Result<Value, String> {
    let response = http
        .get(url)
        .bearer_auth(support::token(
            SECRET,
            ledger_core::Role::Service,
            "purchase-flow",
        ))
        .send()
        .await
        .map_err(|error| format!("GET {url}: {error}"))?;
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    if status == 200 {
        Ok(body)
    } else {
        Err(format!("GET {url} answered {status}: {body}"))
    }
}

/// The read-model checks through the query API; the violations still
/// standing after `patience` (the read models converge, they may lag).
async fn check_read_models(
    stack: &Stack,
    workload: &Workload,
    expected: &Expected,
    patience: Duration,
) -> Vec<String> {
    let http = match client(Duration::from_secs(10)) {
        Ok(http) => http,
        Err(error) => return vec![error],
    };
    let deadline = Instant::now() + patience;
    loop {
        let base = stack.query_url();
        let mut violations = Vec::new();
        for (purchase, refunded) in &expected.purchases {
            let want = if *refunded { "refunded" } else { "completed" };
            match query(&http, &format!("{base}/v1/purchases/{purchase}")).await {
                Ok(story) if story["status"] == want => {}
                Ok(story) => violations.push(format!(
                    "purchase {purchase} answered 201 but reads as {} (expected {want})",
                    story["status"]
                )),
                Err(error) => violations.push(format!("purchase {purchase} answered 201: {error}")),
            }
        }
        for item in workload.catalogue.limiteds() {
            let supply = item.supply.unwrap_or(0);
            let sold_in_answers = expected.serials.get(&item.id).cloned().unwrap_or_default();
            if let Some(serial) = sold_in_answers
                .iter()
                .find(|serial| **serial == 0 || **serial > supply)
            {
                violations.push(format!(
                    "{} sold serial {serial} of a supply of {supply}",
                    item.id
                ));
            }
            match query(&http, &format!("{base}/v1/items/{}", item.id)).await {
                Ok(view) if view["sold"].as_u64().unwrap_or(u64::MAX) <= supply => {}
                Ok(view) => violations.push(format!(
                    "{} sold {} of a supply of {supply}",
                    item.id, view["sold"]
                )),
                Err(error) => violations.push(error),
            }
            match query(
                &http,
                &format!("{base}/v1/items/{}/owners?limit=100", item.id),
            )
            .await
            {
                Ok(page) => {
                    let mut seen = BTreeSet::new();
                    for owner in page["owners"].as_array().cloned().unwrap_or_default() {
                        let serial = owner["serial"].as_u64().unwrap_or(0);
                        if !seen.insert(serial) {
                            violations.push(format!("{} serial {serial} has two owners", item.id));
                        }
                        if serial == 0 || serial > supply {
                            violations.push(format!(
                                "{} has an owner of serial {serial} beyond its supply {supply}",
                                item.id
                            ));
                        }
                        let user = owner["user_id"].as_str().unwrap_or_default();
                        if let Some(expected_owner) =
                            expected.owners.get(&(item.id.clone(), serial))
                        {
                            if expected_owner != user {
                                violations.push(format!(
                                    "{} serial {serial} is owned by {user}; the answers say {expected_owner}",
                                    item.id
                                ));
                            }
                        }
                    }
                    for ((owned_item, serial), owner) in &expected.owners {
                        if owned_item == &item.id && !seen.contains(serial) {
                            violations.push(format!(
                                "{owned_item} serial {serial} was acknowledged to {owner} but has no owner"
                            ));
                        }
                    }
                }
                Err(error) => violations.push(error),
            }
        }
        if violations.is_empty() || Instant::now() >= deadline {
            return violations;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// `ledger verify ARGS --json --balances`: its violations, and every user's
/// (balance, pending) as the log proves them.
async fn verify(
    args: Vec<String>,
    users: &[String],
    expected_grants: i64,
) -> (Vec<String>, BTreeMap<String, (i64, i64)>) {
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(support::ledger_binary())
            .arg("verify")
            .args(args)
            .args(["--json", "--balances"])
            .output()
    })
    .await;
    let output = match output {
        Ok(Ok(output)) => output,
        Ok(Err(error)) => {
            return (
                vec![format!("ledger verify did not run: {error}")],
                BTreeMap::new(),
            )
        }
        Err(error) => {
            return (
                vec![format!("ledger verify task failed: {error}")],
                BTreeMap::new(),
            )
        }
    };
    let report: Value = match serde_json::from_slice(&output.stdout) {
        Ok(report) => report,
        Err(_) => {
            return (
                vec![format!(
                    "ledger verify printed no report: {}",
                    String::from_utf8_lossy(&output.stderr).trim()
                )],
                BTreeMap::new(),
            )
        }
    };
    let mut violations = Vec::new();
    if !output.status.success() {
        violations.push(format!(
            "ledger verify exited {:?}: findings {}",
            output.status.code(),
            report["report"]["findings"]
        ));
    }
    let trial = &report["report"]["trial_balance"];
    if trial["total"].as_i64() != Some(0) {
        violations.push(format!("the trial balance does not sum to zero: {trial}"));
    }
    if trial["issuance"].as_i64().map(i64::abs) != Some(expected_grants) {
        violations.push(format!(
            "the acknowledged grants sum to {expected_grants} but the log issued {}",
            trial["issuance"]
        ));
    }
    let mut balances = BTreeMap::new();
    for user in users {
        let proven = &report["balances"][user];
        balances.insert(
            user.clone(),
            (
                proven["balance"].as_i64().unwrap_or(0),
                proven["pending"].as_i64().unwrap_or(0),
            ),
        );
    }
    (violations, balances)
}

/// Every user's (balance, pending) in `read_models` equals what the log proves.
async fn compare_balances(
    read_models: &dyn ReadModels,
    proven: &BTreeMap<String, (i64, i64)>,
) -> Vec<String> {
    let mut violations = Vec::new();
    for (user, (balance, pending)) in proven {
        match read_models.balance(user).await {
            Ok(view) if (view.balance, view.pending) == (*balance, *pending) => {}
            Ok(view) => violations.push(format!(
                "{user} reads balance {} pending {} but the log proves {balance} and {pending}",
                view.balance, view.pending
            )),
            Err(error) => violations.push(format!("balance of {user}: {error}")),
        }
    }
    violations
}

/// Everything the read models say about the run's users, items and
/// purchases, as text (for the rebuild comparison).
async fn read_everything(
    read_models: &dyn ReadModels,
    users: &[String],
    items: &[String],
    purchases: &[String],
) -> String {
    let mut out = String::new();
    for user in users {
        out.push_str(&format!("{:?}\n", read_models.balance(user).await));
        out.push_str(&format!("{:?}\n", read_models.earnings(user).await));
        out.push_str(&format!(
            "{:?}\n",
            read_models
                .inventory(user, 1_000, None)
                .await
                .map(|page| page.entries)
        ));
        out.push_str(&format!(
            "{:?}\n",
            read_models
                .transactions(user, 1_000, None)
                .await
                .map(|page| page.entries)
        ));
    }
    for item in items {
        out.push_str(&format!("{:?}\n", read_models.item(item).await));
        out.push_str(&format!(
            "{:?}\n",
            read_models
                .owners(item, 1_000, None)
                .await
                .map(|page| page.entries)
        ));
        out.push_str(&format!(
            "{:?}\n",
            read_models
                .resale_listings(item, 1_000, None)
                .await
                .map(|page| page.entries)
        ));
    }
    out.push_str(&format!("{:?}\n", read_models.bundle("pack").await));
    for purchase in purchases {
        let mut steps: Vec<String> = read_models
            .purchase_steps(purchase)
            .await
            .map(|steps| steps.iter().map(|step| format!("{step:?}")).collect())
            .unwrap_or_else(|error| vec![error.to_string()]);
        steps.sort();
        out.push_str(&format!("{purchase}: {steps:?}\n"));
    }
    out
}

fn first_difference(left: &str, right: &str) -> String {
    left.lines()
        .zip(right.lines())
        .find(|(a, b)| a != b)
        .map(|(a, b)| format!("live {a} / rebuilt {b}"))
        .unwrap_or_else(|| "one has more lines".into())
}

async fn embedded(
    result: &mut RunResult,
    rng: &mut Rng,
    chosen: &[Fault],
    environment: &Environment,
    data_dir: &Path,
) -> Result<(), String> {
    let starter = stack::serve_starter(data_dir.to_path_buf(), SECRET.into());
    let stack = Stack::start(vec![(Role::Serve, None, starter)]).await?;
    let workload = Workload::new(Catalogue::new(rng));
    let http = client(Duration::from_secs(10))?;
    workload.setup(&http, &stack).await?;
    let supervisor = stack.supervise();
    let world = World {
        stack: stack.clone(),
        infra: environment.infra.clone(),
        kafka_port: 0,
        cql_port: 0,
        data_dir: data_dir.to_path_buf(),
    };
    let loaded =
        load_under_faults(result, rng, chosen, &world, &workload, environment.commands).await;
    stack.resume_all().await;
    stack.wait_all_running(Duration::from_secs(120)).await?;
    loaded?;
    retry_everything(result, &stack, &workload).await?;
    let expected = expected(&workload);
    let violations = check_read_models(&stack, &workload, &expected, Duration::from_secs(30)).await;
    result.violations.extend(violations);
    stack.stop_all().await;
    supervisor.abort();
    result.restarts = stack.restarts().await;

    let (violations, proven) = verify(
        vec!["--data-dir".into(), data_dir.display().to_string()],
        &expected.users,
        expected.grants,
    )
    .await;
    result.violations.extend(violations);

    // The read models (projected on from where they stood) against a
    // rebuild from zero of a copy of the directory.
    let copy = data_dir.with_file_name("rebuild");
    copy_directory(data_dir, &copy)?;
    let store = store_sqlite::SqliteStore::open(&copy)
        .map_err(|error| format!("opening the copy: {error}"))?;
    store
        .project_all_pending()
        .await
        .map_err(|error| format!("projecting the copy: {error}"))?;
    let read_models = store.read_models();
    result
        .violations
        .extend(compare_balances(read_models.as_ref(), &proven).await);
    let live = store
        .dump_read_models()
        .await
        .map_err(|error| format!("dump: {error}"))?;
    store
        .rebuild_read_models()
        .await
        .map_err(|error| format!("rebuild: {error}"))?;
    let rebuilt = store
        .dump_read_models()
        .await
        .map_err(|error| format!("dump: {error}"))?;
    if live != rebuilt {
        result.violations.push(format!(
            "the read models differ from a rebuild from zero: {}",
            first_difference(&live, &rebuilt)
        ));
    }
    Ok(())
}

fn copy_directory(from: &Path, to: &Path) -> Result<(), String> {
    let _ = std::fs::remove_dir_all(to);
    std::fs::create_dir_all(to)
        .map_err(|error| format!("cannot create {}: {error}", to.display()))?;
    let entries = std::fs::read_dir(from)
        .map_err(|error| format!("cannot read {}: {error}", from.display()))?;
    for entry in entries.flatten() {
        let name = entry.file_name();
        if name == "filler"
            || !entry
                .file_type()
                .map(|kind| kind.is_file())
                .unwrap_or(false)
        {
            continue;
        }
        std::fs::copy(entry.path(), to.join(&name))
            .map_err(|error| format!("cannot copy {}: {error}", entry.path().display()))?;
    }
    Ok(())
}

async fn distributed(
    result: &mut RunResult,
    rng: &mut Rng,
    chosen: &[Fault],
    environment: &Environment,
    name: &str,
) -> Result<(), String> {
    std::env::set_var("LEDGER_KAFKA_BOOTSTRAP", &environment.kafka_bootstrap);
    std::env::set_var("LEDGER_CQL_CONTACT", &environment.cql_contact);
    let services = support::environment(name, SECRET);
    let slots = vec![
        (
            Role::Engine(0),
            Some(64_100),
            stack::service_starter("command-api", services.clone(), Some(64_100)),
        ),
        (
            Role::Engine(1),
            Some(64_101),
            stack::service_starter("command-api", services.clone(), Some(64_101)),
        ),
        (
            Role::Projector,
            None,
            stack::service_starter("projector", services.clone(), None),
        ),
        (
            Role::QueryApi,
            None,
            stack::service_starter("query-api", services.clone(), None),
        ),
    ];
    let outcome = distributed_inner(result, rng, chosen, environment, name, slots).await;
    support::remove_test_data(name).await;
    support::remove_test_data(&format!("{name}_rb")).await;
    outcome
}

async fn distributed_inner(
    result: &mut RunResult,
    rng: &mut Rng,
    chosen: &[Fault],
    environment: &Environment,
    name: &str,
    slots: Vec<(Role, Option<u32>, stack::Starter)>,
) -> Result<(), String> {
    let stack = Stack::start(slots).await?;
    let outcome = distributed_loaded(result, rng, chosen, environment, name, &stack).await;
    if outcome.is_err() || !result.violations.is_empty() {
        let directory = environment.work_dir.join(name).join("logs");
        if let Err(error) = stack.write_logs(&directory) {
            eprintln!("{error}");
        }
    }
    stack.stop_all().await;
    outcome
}

async fn distributed_loaded(
    result: &mut RunResult,
    rng: &mut Rng,
    chosen: &[Fault],
    environment: &Environment,
    name: &str,
    stack: &Arc<Stack>,
) -> Result<(), String> {
    let workload = Workload::new(Catalogue::new(rng));
    let http = client(Duration::from_secs(30))?;
    workload.setup(&http, stack).await?;
    let supervisor = stack.supervise();
    let world = World {
        stack: stack.clone(),
        infra: environment.infra.clone(),
        kafka_port: port_of(&environment.kafka_bootstrap),
        cql_port: port_of(&environment.cql_contact),
        data_dir: PathBuf::new(),
    };
    let loaded =
        load_under_faults(result, rng, chosen, &world, &workload, environment.commands).await;
    // Heal: brokers up, nothing paused, every process running.
    faults::infra(&environment.infra, &["up"]).await?;
    faults::infra(&environment.infra, &["wait"]).await?;
    stack.resume_all().await;
    stack.wait_all_running(Duration::from_secs(180)).await?;
    loaded?;
    retry_everything(result, stack, &workload).await?;
    let expected = expected(&workload);
    let violations = check_read_models(stack, &workload, &expected, Duration::from_secs(90)).await;
    result.violations.extend(violations);

    // Engines stopped cleanly (they publish what they queued), then the
    // topic is the whole log.
    stack.stop_supervising();
    supervisor.abort();
    for engine in faults::ENGINES {
        stack.stop(engine).await;
    }
    result.restarts = stack.restarts().await;
    let contact: Vec<String> = environment
        .cql_contact
        .split(',')
        .map(String::from)
        .collect();
    let live = read_models_cql::CqlReadModels::connect(&contact, name, Default::default())
        .await
        .map_err(|error| format!("live read models: {error}"))?;
    let ends = log_ends(environment, name).await?;
    wait_caught_up(&live, &ends).await?;
    let (violations, proven) = verify(
        vec![
            "--kafka".into(),
            "--kafka-bootstrap".into(),
            environment.kafka_bootstrap.clone(),
            "--topic-prefix".into(),
            name.into(),
            "--cql".into(),
            "--cql-contact".into(),
            environment.cql_contact.clone(),
            "--cql-keyspace".into(),
            name.into(),
        ],
        &expected.users,
        expected.grants,
    )
    .await;
    result.violations.extend(violations);
    result
        .violations
        .extend(compare_balances(live.as_ref(), &proven).await);

    // A rebuild from zero: a fresh projector group into a fresh keyspace.
    let mut rebuild_environment = support::environment(name, SECRET);
    let rebuild_keyspace = format!("{name}_rb");
    for (key, value) in rebuild_environment.iter_mut() {
        if key == "LEDGER_CQL_KEYSPACE" {
            *value = rebuild_keyspace.clone();
        }
    }
    rebuild_environment.push(("LEDGER_PROJECTOR_GROUP".into(), format!("{name}-rebuild")));
    let rebuilder = tokio::task::spawn_blocking(move || {
        support::try_start(
            "projector",
            &rebuild_environment,
            None,
            Duration::from_secs(60),
        )
    })
    .await
    .map_err(|error| format!("rebuild projector task: {error}"))??;
    let rebuilt =
        read_models_cql::CqlReadModels::connect(&contact, &rebuild_keyspace, Default::default())
            .await
            .map_err(|error| format!("rebuilt read models: {error}"))?;
    let caught_up = wait_caught_up(&rebuilt, &ends).await;
    let items: Vec<String> = workload
        .catalogue
        .items
        .iter()
        .map(|item| item.id.clone())
        .collect();
    let purchases: Vec<String> = expected.purchases.keys().cloned().collect();
    if caught_up.is_ok() {
        let live_view = read_everything(live.as_ref(), &expected.users, &items, &purchases).await;
        let rebuilt_view =
            read_everything(rebuilt.as_ref(), &expected.users, &items, &purchases).await;
        if live_view != rebuilt_view {
            result.violations.push(format!(
                "the read models differ from a rebuild from zero: {}",
                first_difference(&live_view, &rebuilt_view)
            ));
        }
    }
    tokio::task::spawn_blocking(move || rebuilder.stop())
        .await
        .map_err(|error| format!("stopping the rebuild projector: {error}"))?;
    stack.stop_all().await;
    caught_up
}

/// Each shard's next sequence after the last record on the events topic.
async fn log_ends(environment: &Environment, name: &str) -> Result<Vec<u64>, String> {
    let kafka = log_kafka::KafkaConfig::new(environment.kafka_bootstrap.clone());
    let topics = log_kafka::Topics::with_prefix(name);
    let mut ends = Vec::new();
    for shard in 0..support::SHARDS {
        let last = log_kafka::last_record(
            &kafka,
            &topics,
            ledger_core::ShardId(shard),
            Duration::from_secs(60),
        )
        .await
        .map_err(|error| format!("last record of shard {shard}: {error}"))?;
        ends.push(last.map_or(1, |record| record.next_sequence()));
    }
    Ok(ends)
}

async fn wait_caught_up(
    read_models: &read_models_cql::CqlReadModels,
    ends: &[u64],
) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let mut behind = Vec::new();
        for (shard, wanted) in ends.iter().enumerate() {
            let next = read_models
                .next_sequence(ledger_core::ShardId(shard as u16))
                .await
                .unwrap_or(0);
            if next < *wanted {
                behind.push(format!("shard {shard} at {next} of {wanted}"));
            }
        }
        if behind.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "a projection never caught up with the log: {behind:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
