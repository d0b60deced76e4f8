//! Helpers shared by the store tests: temporary data directories and
//! hash-chained envelopes built from real events.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use engine::ports::ShardBatch;
use ledger_core::codec::{Envelope, Hash, MessageEnvelope, GENESIS_HASH};
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

/// Builds per-shard hash chains of envelopes.
#[derive(Default)]
pub struct Log {
    heads: BTreeMap<u16, (u64, Hash)>,
}

impl Log {
    pub fn seal(&mut self, shard: u16, event: Event, at_ms: u64) -> Envelope {
        let (next, previous) = self.heads.get(&shard).copied().unwrap_or((1, GENESIS_HASH));
        let envelope = Envelope::seal(&event, ShardId(shard), next, "test", at_ms, previous);
        self.heads.insert(shard, (next + 1, envelope.hash));
        envelope
    }

    /// The last sequence sealed on `shard` (0 if none).
    pub fn last_sequence(&self, shard: u16) -> u64 {
        self.heads.get(&shard).map_or(0, |(next, _)| next - 1)
    }
}

pub fn batch(shard: u16, envelopes: Vec<Envelope>, messages: Vec<MessageEnvelope>) -> ShardBatch {
    ShardBatch {
        shard: Some(ShardId(shard)),
        envelopes,
        messages,
    }
}

pub fn user(id: &str) -> UserId {
    UserId::parse(id).expect("test user id is valid")
}
pub fn item(id: &str) -> ItemId {
    ItemId::parse(id).expect("test item id is valid")
}
pub fn purchase(id: &str) -> PurchaseId {
    PurchaseId::parse(id).expect("test purchase id is valid")
}
pub fn listing(id: &str) -> ListingId {
    ListingId::parse(id).expect("test listing id is valid")
}

pub fn grant(grant_id: &str, user_id: &str, amount: i64, balance_after: i64) -> Event {
    Event::CurrencyGranted {
        grant_id: GrantId::parse(grant_id).expect("test grant id is valid"),
        user_id: user(user_id),
        amount,
        balance_after,
        postings: vec![
            Posting::new(Account::Issuance, -amount),
            Posting::new(Account::Wallet(user(user_id)), amount),
        ],
    }
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
        },
    }
}
