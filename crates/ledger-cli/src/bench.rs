//! `ledger bench`: purchase throughput and latency, closed loop at a fixed
//! concurrency, either through the HTTP API of a running ledger or straight
//! into an embedded engine (durable, no HTTP). Bounded in requests; loopback.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use engine::ports::CommandBus;
use ledger_core::*;
use serde_json::json;
use tokio::sync::Mutex;
use tokio::task::JoinSet;

/// Items each buyer can buy once: purchases are spread over buyers × items.
const ITEMS: usize = 50;
const PRICE: i64 = 10;

#[derive(Debug, Clone)]
pub struct Load {
    pub purchases: usize,
    pub concurrency: usize,
}

/// Result of a run: throughput and latency percentiles.
#[derive(Debug)]
pub struct Report {
    pub purchases: usize,
    pub succeeded: usize,
    pub elapsed: Duration,
    pub latency: hdrhistogram::Histogram<u64>,
    /// Broken invariants found through the query API after the run (HTTP mode).
    pub violations: Vec<String>,
}

impl Report {
    pub fn purchases_per_second(&self) -> f64 {
        self.purchases as f64 / self.elapsed.as_secs_f64()
    }

    pub fn summary(&self, label: &str) -> String {
        let ms = |q: f64| self.latency.value_at_quantile(q) as f64 / 1_000.0;
        format!(
            "{label}: {} purchases ({} succeeded) in {:.2} s = {:.0} purchases/s; latency ms p50 {:.2} p90 {:.2} p99 {:.2} p99.9 {:.2} max {:.2}",
            self.purchases,
            self.succeeded,
            self.elapsed.as_secs_f64(),
            self.purchases_per_second(),
            ms(0.50),
            ms(0.90),
            ms(0.99),
            ms(0.999),
            self.latency.max() as f64 / 1_000.0,
        )
    }
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

fn buyers_for(load: &Load) -> usize {
    load.purchases.div_ceil(ITEMS).max(1)
}

/// Runs `work(n)` for n in 0..count with `concurrency` workers; records latency.
async fn closed_loop<F, Fut>(
    count: usize,
    concurrency: usize,
    work: F,
) -> (usize, Duration, hdrhistogram::Histogram<u64>)
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let work = Arc::new(work);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let histogram = Arc::new(Mutex::new(
        hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
            .expect("histogram bounds"),
    ));
    let succeeded = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let (work, next, histogram, succeeded) = (
            work.clone(),
            next.clone(),
            histogram.clone(),
            succeeded.clone(),
        );
        workers.spawn(async move {
            let mut local = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
                .expect("histogram bounds");
            loop {
                let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if n >= count {
                    break;
                }
                let begun = Instant::now();
                if work(n).await {
                    succeeded.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                let _ = local.record((begun.elapsed().as_micros() as u64).max(1));
            }
            histogram.lock().await.add(&local).expect("same bounds");
        });
    }
    while workers.join_next().await.is_some() {}
    let elapsed = started.elapsed();
    let Ok(histogram) = Arc::try_unwrap(histogram) else {
        unreachable!("every worker finished and dropped its handle");
    };
    let histogram = histogram.into_inner();
    (
        succeeded.load(std::sync::atomic::Ordering::Relaxed),
        elapsed,
        histogram,
    )
}

fn service_meta() -> CommandMeta {
    let at_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    CommandMeta {
        at_ms,
        actor: Actor {
            role: Role::Service,
            user_id: UserId::parse("bench").expect("valid id"),
        },
    }
}

/// Durable embedded rate: engine + SQLite, no HTTP.
pub async fn embedded(engine: engine::Engine, load: Load) -> Report {
    let tag = run_tag();
    let buyers = buyers_for(&load);
    let bus = Arc::new(engine);
    let (_, _, _) = closed_loop(buyers, 256, {
        let (bus, tag) = (bus.clone(), tag.clone());
        move |n| {
            let (bus, tag) = (bus.clone(), tag.clone());
            async move {
                let command = Command::Grant {
                    grant_id: GrantId::parse(format!("bench-{tag}-g-{n}")).expect("id"),
                    user_id: UserId::parse(format!("bench-{tag}-b-{n}")).expect("id"),
                    amount: PRICE * ITEMS as i64,
                };
                bus.submit(command, service_meta()).await.is_ok()
            }
        }
    })
    .await;
    for item in 0..ITEMS {
        let definition = ItemDefinition {
            item_id: ItemId::parse(format!("bench-{tag}-i-{item}")).expect("id"),
            creator_id: UserId::parse(format!("bench-{tag}-creator")).expect("id"),
            name: "bench item".into(),
            price: PRICE,
            supply: None,
            max_per_user: None,
            starts_at_ms: None,
            ends_at_ms: None,
            resellable: false,
        };
        let _ = bus
            .submit(Command::PublishItem(definition), service_meta())
            .await;
    }
    let (succeeded, elapsed, latency) = closed_loop(load.purchases, load.concurrency, {
        let (bus, tag) = (bus.clone(), tag.clone());
        move |n| {
            let (bus, tag) = (bus.clone(), tag.clone());
            async move {
                let command = Command::Purchase {
                    purchase_id: PurchaseId::parse(format!("bench-{tag}-p-{n}")).expect("id"),
                    buyer_id: UserId::parse(format!("bench-{tag}-b-{}", n % buyers)).expect("id"),
                    target: PurchaseTarget::Item(
                        ItemId::parse(format!("bench-{tag}-i-{}", n / buyers)).expect("id"),
                    ),
                    expected_price: PRICE,
                };
                matches!(
                    bus.submit(command, service_meta()).await,
                    Ok(Completion { result: Ok(_), .. })
                )
            }
        }
    })
    .await;
    Report {
        purchases: load.purchases,
        succeeded,
        elapsed,
        latency,
        violations: Vec::new(),
    }
}

/// End-to-end rate through the command API of a running ledger.
pub async fn http(command_url: String, query_url: String, secret: Vec<u8>, load: Load) -> Report {
    let tag = run_tag();
    let buyers = buyers_for(&load);
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(load.concurrency.max(256))
        .build()
        .expect("http client");
    let now = command_api::auth::now_seconds();
    let admin = command_api::auth::issue_token(
        &secret,
        Role::Admin,
        &UserId::parse("bench-admin").expect("id"),
        3_600,
        now,
    );
    let service = command_api::auth::issue_token(
        &secret,
        Role::Service,
        &UserId::parse("bench").expect("id"),
        3_600,
        now,
    );
    let post = {
        let client = client.clone();
        let command_url = command_url.clone();
        move |path: &'static str, token: String, body: serde_json::Value| {
            let client = client.clone();
            let url = format!("{command_url}{path}");
            async move {
                match client.post(url).bearer_auth(token).json(&body).send().await {
                    Ok(response) => response.status().is_success(),
                    Err(_) => false,
                }
            }
        }
    };
    let (_, _, _) = closed_loop(buyers, 256, {
        let (post, tag, admin) = (post.clone(), tag.clone(), admin.clone());
        move |n| {
            let body = json!({"grant_id": format!("bench-{tag}-g-{n}"), "user_id": format!("bench-{tag}-b-{n}"), "amount": PRICE * ITEMS as i64});
            post("/v1/grants", admin.clone(), body)
        }
    })
    .await;
    for item in 0..ITEMS {
        let body = json!({"item_id": format!("bench-{tag}-i-{item}"), "creator_id": format!("bench-{tag}-creator"), "name": "bench item", "price": PRICE});
        let _ = post("/v1/items", service.clone(), body).await;
    }
    let outcomes: Arc<Vec<std::sync::atomic::AtomicBool>> = Arc::new(
        (0..load.purchases)
            .map(|_| std::sync::atomic::AtomicBool::new(false))
            .collect(),
    );
    let (succeeded, elapsed, latency) = closed_loop(load.purchases, load.concurrency, {
        let (post, tag, service, outcomes) =
            (post.clone(), tag.clone(), service.clone(), outcomes.clone());
        move |n| {
            let body = json!({
                "purchase_id": format!("bench-{tag}-p-{n}"),
                "buyer_id": format!("bench-{tag}-b-{}", n % buyers),
                "item_id": format!("bench-{tag}-i-{}", n / buyers),
                "expected_price": PRICE,
            });
            let (post, service, outcomes) = (post.clone(), service.clone(), outcomes.clone());
            async move {
                let ok = post("/v1/purchases", service, body).await;
                outcomes[n].store(ok, std::sync::atomic::Ordering::Relaxed);
                ok
            }
        }
    })
    .await;
    let successes: Vec<bool> = outcomes
        .iter()
        .map(|o| o.load(std::sync::atomic::Ordering::Relaxed))
        .collect();
    let expected = Expected::from_successes(&successes, buyers);
    let violations = check_invariants(&client, &query_url, &service, &tag, &expected).await;
    Report {
        purchases: load.purchases,
        succeeded,
        elapsed,
        latency,
        violations,
    }
}

/// What the read models must show after a run, derived from the answers.
#[derive(Debug, PartialEq, Eq)]
pub struct Expected {
    /// Balance of each buyer.
    pub balances: Vec<i64>,
    /// Copies sold of each item.
    pub sold: Vec<u64>,
    /// The creator's lifetime earnings (70% of each price, rounded down).
    pub creator_lifetime: i64,
}

impl Expected {
    pub fn from_successes(successes: &[bool], buyers: usize) -> Expected {
        let mut balances = vec![PRICE * ITEMS as i64; buyers];
        let mut sold = vec![0u64; ITEMS];
        let mut creator_lifetime = 0;
        for (n, ok) in successes.iter().enumerate() {
            if *ok {
                balances[n % buyers] -= PRICE;
                sold[n / buyers] += 1;
                creator_lifetime += ledger_core::PRIMARY_FEE_POLICY_V1
                    .split(PRICE)
                    .creator_share;
            }
        }
        Expected {
            balances,
            sold,
            creator_lifetime,
        }
    }
}

/// Reads every buyer's balance, every item's sold count and the creator's
/// earnings through the query API (waiting, bounded, for the projection)
/// and lists what disagrees with the answers the run received.
async fn check_invariants(
    client: &reqwest::Client,
    query_url: &str,
    token: &str,
    tag: &str,
    expected: &Expected,
) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let read = |path: String| {
        let request = client.get(format!("{query_url}{path}")).bearer_auth(token);
        async move {
            match request.send().await {
                Ok(response) if response.status().is_success() => {
                    response.json::<serde_json::Value>().await.ok()
                }
                _ => None,
            }
        }
    };
    let mut checks: Vec<(String, &'static str, i64)> = Vec::new();
    for (buyer, balance) in expected.balances.iter().enumerate() {
        checks.push((
            format!("/v1/users/bench-{tag}-b-{buyer}/balance"),
            "balance",
            *balance,
        ));
    }
    for (item, sold) in expected.sold.iter().enumerate() {
        checks.push((
            format!("/v1/items/bench-{tag}-i-{item}"),
            "sold",
            *sold as i64,
        ));
    }
    checks.push((
        format!("/v1/creators/bench-{tag}-creator/earnings"),
        "lifetime",
        expected.creator_lifetime,
    ));
    let mut violations = Vec::new();
    for (path, field, wanted) in checks {
        loop {
            let found = read(path.clone())
                .await
                .and_then(|body| body[field].as_i64());
            if found == Some(wanted) {
                break;
            }
            if Instant::now() >= deadline {
                violations.push(format!("{path}: {field} is {found:?}, expected {wanted}"));
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    violations
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn closed_loop_runs_each_request_once_and_records_latency() {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (succeeded, _, histogram) = closed_loop(100, 7, {
            let seen = seen.clone();
            move |n| {
                let seen = seen.clone();
                async move {
                    seen.lock().unwrap().push(n);
                    n % 2 == 0
                }
            }
        })
        .await;
        let mut seen = seen.lock().unwrap().clone();
        seen.sort();
        assert_eq!(seen, (0..100).collect::<Vec<_>>());
        assert_eq!(succeeded, 50);
        assert_eq!(histogram.len(), 100);
    }

    #[test]
    fn expected_state_follows_the_successful_answers() {
        // 4 purchases over 2 buyers: n=0 (buyer 0, item 0), n=1 (buyer 1, item 0),
        // n=2 (buyer 0, item 1), n=3 (buyer 1, item 1); n=1 failed.
        let expected = Expected::from_successes(&[true, false, true, true], 2);
        let funded = PRICE * ITEMS as i64;
        assert_eq!(expected.balances, vec![funded - 2 * PRICE, funded - PRICE]);
        assert_eq!(&expected.sold[..2], &[1, 2]);
        assert!(expected.sold[2..].iter().all(|sold| *sold == 0));
        assert_eq!(expected.creator_lifetime, 3 * 7);
    }

    #[test]
    fn buyers_cover_the_purchases() {
        assert_eq!(
            buyers_for(&Load {
                purchases: 1_000,
                concurrency: 1
            }),
            20
        );
        assert_eq!(
            buyers_for(&Load {
                purchases: 1,
                concurrency: 1
            }),
            1
        );
    }
}
