//! The mixed workload: grants, primary purchases (unlimited items and
//! Limiteds of small supply), bundles, resale listings and resale purchases,
//! refunds — every command through the real HTTP API with its own id, its
//! first answer (or its loss) recorded for the checks.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ledger_core::Role;
use serde_json::{json, Value};

use crate::rng::Rng;
use crate::stack::Stack;
use crate::support;

pub const SECRET: &str = "chaos-suite-secret-0123456789abcdef";
pub const CREATOR: &str = "maker";
pub const BUYERS: usize = 16;
pub const INITIAL_FUNDS: i64 = 400;
/// Commands of one run's load at most, whatever the faults.
pub const COMMANDS_MAX: usize = 3_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Setup,
    Grant,
    Purchase,
    Bundle,
    Listing,
    Resale,
    Refund,
}

#[derive(Clone, Debug)]
pub enum Outcome {
    /// A definitive answer: 2xx or 4xx, with its body.
    Answered(u16, Value),
    /// No definitive answer: a transport error, a timeout or a 5xx.
    Lost(String),
}

#[derive(Clone, Debug)]
pub struct Sent {
    pub kind: Kind,
    pub id: String,
    pub path: String,
    pub body: Value,
    pub first: Outcome,
    /// The answer after the stack healed (a retry with the same id).
    pub last: Option<(u16, Value)>,
}

#[derive(Clone, Debug)]
pub struct Item {
    pub id: String,
    pub price: i64,
    pub supply: Option<u64>,
}

/// What the run publishes before the load.
pub struct Catalogue {
    pub items: Vec<Item>,
    pub bundle_id: String,
    pub bundle_price: i64,
    pub users: Vec<String>,
}

impl Catalogue {
    pub fn new(rng: &mut Rng) -> Catalogue {
        let mut items = Vec::new();
        for index in 0..5 {
            items.push(Item {
                id: format!("hat-{index}"),
                price: rng.between(3, 25) as i64,
                supply: None,
            });
        }
        for index in 0..3 {
            items.push(Item {
                id: format!("ltd-{index}"),
                price: rng.between(10, 40) as i64,
                supply: Some(rng.between(2, 8)),
            });
        }
        Catalogue {
            items,
            bundle_id: "pack".into(),
            bundle_price: rng.between(10, 30) as i64,
            users: (0..BUYERS).map(|index| format!("u-{index}")).collect(),
        }
    }

    pub fn limiteds(&self) -> impl Iterator<Item = &Item> {
        self.items.iter().filter(|item| item.supply.is_some())
    }
}

/// Posts one command; never panics.
pub async fn post(client: &reqwest::Client, base: &str, path: &str, body: &Value) -> Outcome {
    let (role, sub) = if path == "/v1/grants" || path == "/v1/refunds" {
        (Role::Admin, "admin")
    } else {
        (Role::Service, "purchase-flow")
    };
    let response = client
        .post(format!("{base}{path}"))
        .bearer_auth(support::token(SECRET, role, sub))
        .json(body)
        .send()
        .await;
    match response {
        Ok(response) => {
            let status = response.status().as_u16();
            let text = response.text().await.unwrap_or_default();
            let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
            if status >= 500 {
                Outcome::Lost(format!("{status} {}", body["code"].as_str().unwrap_or("")))
            } else {
                Outcome::Answered(status, body)
            }
        }
        Err(error) if error.is_timeout() => Outcome::Lost("timeout".into()),
        Err(error) => Outcome::Lost(format!("transport: {error}")),
    }
}

/// Posts until a definitive answer, over every command URL in turn.
pub async fn post_until_answered(
    client: &reqwest::Client,
    stack: &Stack,
    path: &str,
    body: &Value,
    patience: Duration,
) -> Result<(u16, Value), String> {
    let deadline = tokio::time::Instant::now() + patience;
    let mut attempt = 0usize;
    loop {
        match post(client, &stack.command_url(attempt), path, body).await {
            Outcome::Answered(status, body) => return Ok((status, body)),
            Outcome::Lost(why) => {
                if tokio::time::Instant::now() >= deadline {
                    return Err(format!(
                        "no answer to {path} {body} within {patience:?} (last: {why})"
                    ));
                }
            }
        }
        attempt += 1;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The market as the workload knows it from acknowledged answers: what it
/// may list, buy on resale or refund next (a stale guess is refused, which
/// the workload wants too).
#[derive(Default)]
struct Market {
    owned: Vec<(String, String, u64)>,
    listings: Vec<(String, String, u64, i64, String)>,
    purchases: Vec<String>,
}

pub struct Workload {
    pub catalogue: Catalogue,
    pub sent: Mutex<Vec<Sent>>,
    market: Mutex<Market>,
    next: AtomicUsize,
}

impl Workload {
    pub fn new(catalogue: Catalogue) -> Arc<Workload> {
        Arc::new(Workload {
            catalogue,
            sent: Mutex::new(Vec::new()),
            market: Mutex::new(Market::default()),
            next: AtomicUsize::new(0),
        })
    }

    fn record(&self, kind: Kind, id: String, path: &str, body: Value, first: Outcome) {
        self.sent.lock().expect("sent lock").push(Sent {
            kind,
            id,
            path: path.into(),
            body,
            first,
            last: None,
        });
    }

    /// Publishes the catalogue and funds the buyers (retried until answered:
    /// no fault runs yet).
    pub async fn setup(&self, client: &reqwest::Client, stack: &Stack) -> Result<(), String> {
        let mut commands = Vec::new();
        for item in &self.catalogue.items {
            let mut body = json!({"item_id": item.id, "creator_id": CREATOR, "name": item.id, "price": item.price});
            if let Some(supply) = item.supply {
                body["supply"] = json!(supply);
                body["resellable"] = json!(true);
            }
            commands.push((item.id.clone(), "/v1/items", body));
        }
        let bundled: Vec<&str> = self.catalogue.items[..3]
            .iter()
            .map(|item| item.id.as_str())
            .collect();
        commands.push((
            self.catalogue.bundle_id.clone(),
            "/v1/bundles",
            json!({"bundle_id": self.catalogue.bundle_id, "creator_id": CREATOR, "name": "pack", "item_ids": bundled, "price": self.catalogue.bundle_price}),
        ));
        for (index, user) in self.catalogue.users.iter().enumerate() {
            commands.push((
                format!("g0-{index}"),
                "/v1/grants",
                json!({"grant_id": format!("g0-{index}"), "user_id": user, "amount": INITIAL_FUNDS}),
            ));
        }
        for (id, path, body) in commands {
            let (status, answer) =
                post_until_answered(client, stack, path, &body, Duration::from_secs(120)).await?;
            if status != 201 {
                return Err(format!("setup {path} {body} answered {status}: {answer}"));
            }
            let kind = if path == "/v1/grants" {
                Kind::Grant
            } else {
                Kind::Setup
            };
            self.record(kind, id, path, body, Outcome::Answered(status, answer));
        }
        Ok(())
    }

    /// One worker: a command every 100–200 ms (with 12 workers about 80 a
    /// second, so the load lasts through the faults) until `minimum` were
    /// sent in all and the faults are over (at most [`COMMANDS_MAX`]).
    pub async fn worker(
        self: Arc<Self>,
        client: reqwest::Client,
        stack: Arc<Stack>,
        mut rng: Rng,
        minimum: usize,
        faults_done: Arc<AtomicBool>,
    ) {
        loop {
            let number = self.next.fetch_add(1, Ordering::SeqCst);
            if (number >= minimum && faults_done.load(Ordering::SeqCst)) || number >= COMMANDS_MAX {
                return;
            }
            let (kind, id, path, body) = self.generate(&mut rng, number);
            let first = post(&client, &stack.command_url(number), path, &body).await;
            let pause = match &first {
                Outcome::Answered(201, answer) => {
                    self.learn(kind, &body, answer);
                    100 + rng.below(100)
                }
                Outcome::Answered(..) => 100 + rng.below(100),
                // A process down or paused: do not burn the run's commands.
                Outcome::Lost(_) => 300 + rng.below(300),
            };
            self.record(kind, id, path, body, first);
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
    }

    fn generate(&self, rng: &mut Rng, number: usize) -> (Kind, String, &'static str, Value) {
        let users = &self.catalogue.users;
        let buyer = users[rng.index(users.len())].clone();
        let market = self.market.lock().expect("market lock");
        let roll = rng.below(100);
        if (60..72).contains(&roll) && !market.owned.is_empty() {
            let (seller, item, serial) = market.owned[rng.index(market.owned.len())].clone();
            let id = format!("l-{number}");
            let price = rng.between(5, 60);
            return (
                Kind::Listing,
                id.clone(),
                "/v1/resale-listings",
                json!({"listing_id": id, "seller_id": seller, "item_id": item, "serial": serial, "price": price}),
            );
        }
        if (72..85).contains(&roll) && !market.listings.is_empty() {
            let (listing, _, _, price, _) =
                market.listings[rng.index(market.listings.len())].clone();
            let id = format!("r-{number}");
            return (
                Kind::Resale,
                id.clone(),
                "/v1/resale-purchases",
                json!({"purchase_id": id, "buyer_id": buyer, "listing_id": listing, "expected_price": price}),
            );
        }
        if (85..95).contains(&roll) && !market.purchases.is_empty() {
            let purchase = market.purchases[rng.index(market.purchases.len())].clone();
            let id = format!("f-{number}");
            return (
                Kind::Refund,
                id.clone(),
                "/v1/refunds",
                json!({"refund_id": id, "purchase_id": purchase}),
            );
        }
        if (50..60).contains(&roll) || (95..100).contains(&roll) {
            let id = format!("g-{number}");
            return (
                Kind::Grant,
                id.clone(),
                "/v1/grants",
                json!({"grant_id": id, "user_id": buyer, "amount": rng.between(20, 150)}),
            );
        }
        let id = format!("p-{number}");
        if (40..50).contains(&roll) {
            return (
                Kind::Bundle,
                id.clone(),
                "/v1/purchases",
                json!({"purchase_id": id, "buyer_id": buyer, "bundle_id": self.catalogue.bundle_id, "expected_price": self.catalogue.bundle_price}),
            );
        }
        // Limiteds half the time: their small supply runs out under the load.
        let items = &self.catalogue.items;
        let item = if rng.below(2) == 0 {
            &items[5 + rng.index(3)]
        } else {
            &items[rng.index(5)]
        };
        (
            Kind::Purchase,
            id.clone(),
            "/v1/purchases",
            json!({"purchase_id": id, "buyer_id": buyer, "item_id": item.id, "expected_price": item.price}),
        )
    }

    fn learn(&self, kind: Kind, body: &Value, answer: &Value) {
        let mut market = self.market.lock().expect("market lock");
        let text = |value: &Value| value.as_str().unwrap_or_default().to_string();
        match kind {
            Kind::Purchase => {
                market.purchases.push(text(&body["purchase_id"]));
                if let Some(serial) = answer["serial"].as_u64() {
                    market
                        .owned
                        .push((text(&body["buyer_id"]), text(&body["item_id"]), serial));
                }
            }
            Kind::Bundle => market.purchases.push(text(&body["purchase_id"])),
            Kind::Listing => market.listings.push((
                text(&body["listing_id"]),
                text(&body["item_id"]),
                body["serial"].as_u64().unwrap_or(0),
                body["price"].as_i64().unwrap_or(0),
                text(&body["seller_id"]),
            )),
            Kind::Resale => {
                let listing = text(&body["listing_id"]);
                if let Some(at) = market.listings.iter().position(|l| l.0 == listing) {
                    let (_, item, serial, _, seller) = market.listings.remove(at);
                    market
                        .owned
                        .retain(|(owner, i, s)| !(owner == &seller && i == &item && *s == serial));
                    market.owned.push((text(&body["buyer_id"]), item, serial));
                }
            }
            Kind::Refund | Kind::Grant | Kind::Setup => {}
        }
    }
}
