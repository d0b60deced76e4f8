//! Helpers shared by the store tests: temporary data directories and
//! hash-chained records built from real events (the chain builder and the
//! grant, batch and user helpers come from the shared contract suite).

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use ledger_core::*;

/// A fresh, unique directory under the system temp dir, removed on drop.
pub struct TempDir {
    pub path: PathBuf,
}

impl TempDir {
    pub fn new(name: &str) -> Self {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|duration| duration.as_nanos())
            .unwrap_or(0);
        let unique = format!(
            "ledger-store-{name}-{}-{nanos}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let path = std::env::temp_dir().join(unique);
        Self { path }
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

#[allow(unused_imports)]
pub use store_contract::support::{batch, grant, user, Log};

pub fn item(id: &str) -> ItemId {
    ItemId::parse(id).expect("test item id is valid")
}
pub fn purchase(id: &str) -> PurchaseId {
    PurchaseId::parse(id).expect("test purchase id is valid")
}
pub fn listing(id: &str) -> ListingId {
    ListingId::parse(id).expect("test listing id is valid")
}

pub fn publish(item_id: &str, creator_id: &str, price: i64, supply: Option<u32>) -> Event {
    Event::ItemPublished {
        definition: ItemDefinition {
            item_id: item(item_id),
            creator_id: user(creator_id),
            name: format!("{item_id} name"),
            price,
            supply,
            max_per_user: None,
            starts_at_ms: None,
            ends_at_ms: None,
            resellable: supply.is_some(),
            kind: Default::default(),
        },
    }
}

pub fn debit(
    purchase_id: &str,
    buyer_id: &str,
    amount: i64,
    granted: &[&str],
    at_ms: u64,
) -> Event {
    Event::BuyerDebited {
        purchase_id: purchase(purchase_id),
        buyer_id: user(buyer_id),
        amount,
        granted_items: granted.iter().map(|id| item(id)).collect(),
        balance_after: 0,
        at_ms,
        postings: vec![
            Posting::new(Account::Wallet(user(buyer_id)), -amount),
            Posting::new(Account::Clearing, amount),
        ],
    }
}

pub fn settle(
    purchase_id: &str,
    creator_id: &str,
    resale: bool,
    cleared: i64,
    creator_share: i64,
) -> Event {
    let platform_fee = cleared - creator_share;
    Event::SaleSettled {
        purchase_id: purchase(purchase_id),
        creator_id: user(creator_id),
        resale,
        cleared,
        creator_share,
        platform_fee,
        policy_version: 1,
        release_at_ms: 1_000_000,
        postings: vec![
            Posting::new(Account::Clearing, -cleared),
            Posting::new(Account::Pending(user(creator_id)), creator_share),
            Posting::new(Account::Fees, platform_fee),
        ],
    }
}

pub fn completed_item_purchase(
    purchase_id: &str,
    item_id: &str,
    price: i64,
    serial: Option<u32>,
) -> Event {
    Event::CommandCompleted {
        key: format!("purchase:{purchase_id}"),
        completion: Completion {
            result: Ok(Success::Purchased {
                target: PurchaseTarget::Item(item(item_id)),
                price,
                serial,
                granted_items: Vec::new(),
                balance_after: 0,
            }),
            positions: Vec::new(),
            deliveries: Vec::new(),
            retry_after_ms: None,
        },
    }
}
