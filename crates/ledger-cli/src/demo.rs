//! `ledger serve --demo`: seeds a small economy and prints ready-to-paste
//! commands. Seeding is idempotent (fixed command ids), so restarting with
//! `--demo` changes nothing.

use std::time::{SystemTime, UNIX_EPOCH};

use engine::ports::CommandBus;
use engine::Engine;
use ledger_core::*;
use ledger_http::auth::issue_token;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn id<T>(parse: fn(String) -> Result<T, IdError>, value: &str) -> T {
    parse(value.to_string()).expect("demo ids are valid")
}

/// Seeds the demo economy; returns a printable guide.
pub async fn seed(engine: &Engine, secret: &[u8], command_url: &str, query_url: &str) -> String {
    let admin = Actor {
        role: Role::Admin,
        user_id: id(UserId::parse, "demo-admin"),
    };
    let meta = || CommandMeta {
        at_ms: now_ms(),
        actor: admin.clone(),
    };
    let studio = id(UserId::parse, "studio");
    let commands = vec![
        Command::Grant {
            grant_id: id(GrantId::parse, "demo-grant-alice"),
            user_id: id(UserId::parse, "alice"),
            amount: 1_000,
        },
        Command::Grant {
            grant_id: id(GrantId::parse, "demo-grant-bob"),
            user_id: id(UserId::parse, "bob"),
            amount: 500,
        },
        Command::PublishItem(ItemDefinition {
            item_id: id(ItemId::parse, "red-cap"),
            creator_id: studio.clone(),
            name: "Red Cap".into(),
            price: 100,
            supply: None,
            max_per_user: None,
            starts_at_ms: None,
            ends_at_ms: None,
            resellable: false,
            kind: Default::default(),
        }),
        Command::PublishItem(ItemDefinition {
            item_id: id(ItemId::parse, "golden-crown"),
            creator_id: studio.clone(),
            name: "Golden Crown".into(),
            price: 250,
            supply: Some(10),
            max_per_user: Some(2),
            starts_at_ms: None,
            ends_at_ms: None,
            resellable: true,
            kind: Default::default(),
        }),
    ];
    for command in commands {
        if let Err(error) = engine.submit(command, meta()).await {
            return format!("demo seeding failed: {error}");
        }
    }
    let day = 24 * 3600;
    let now = now_ms() / 1000;
    let alice = issue_token(secret, Role::User, &id(UserId::parse, "alice"), day, now);
    let bob = issue_token(secret, Role::User, &id(UserId::parse, "bob"), day, now);
    format!(
        r#"
Demo economy ready: alice has 1000, bob has 500; studio sells "red-cap" (100) and
the Limited "golden-crown" (250, supply 10, resellable). Tokens are valid for 24 hours.

  export ALICE='{alice}'
  export BOB='{bob}'

  # alice buys the Limited (answers with serial 1 the first time):
  curl -s -X POST {command_url}/v1/purchases -H "Authorization: Bearer $ALICE" -H 'content-type: application/json' \
       -d '{{"purchase_id":"alice-crown-1","buyer_id":"alice","item_id":"golden-crown","expected_price":250}}'

  # her balance (pass the purchase's "position" as ?after= to read your own write):
  curl -s {query_url}/v1/users/alice/balance -H "Authorization: Bearer $ALICE"

  # the item, its owners, and alice's inventory:
  curl -s {query_url}/v1/items/golden-crown
  curl -s {query_url}/v1/items/golden-crown/owners
  curl -s {query_url}/v1/users/alice/inventory -H "Authorization: Bearer $ALICE"

  # alice lists serial 1 for 400; bob buys it:
  curl -s -X POST {command_url}/v1/resale-listings -H "Authorization: Bearer $ALICE" -H 'content-type: application/json' \
       -d '{{"listing_id":"alice-crown-listing","seller_id":"alice","item_id":"golden-crown","serial":1,"price":400}}'
  curl -s -X POST {command_url}/v1/resale-purchases -H "Authorization: Bearer $BOB" -H 'content-type: application/json' \
       -d '{{"purchase_id":"bob-crown-1","buyer_id":"bob","listing_id":"alice-crown-listing","expected_price":400}}'

  # the creator's earnings (held in escrow for the hold period):
  curl -s {query_url}/v1/creators/studio/earnings -H "Authorization: Bearer $(ledger token --role service --sub storefront)"
"#
    )
}
