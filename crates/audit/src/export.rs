//! What `ledger export` writes, with no I/O: one row per posting of the
//! log, each shard's head (the manifest), and a creator's sales report.
//!
//! An adapter feeds each shard's records in sequence order to
//! [`Exporter::record`], which hands every posting row to a callback (rows
//! are never all held in memory), then [`Exporter::finish`] gives the
//! [`Manifest`] and the sales of the creator asked for.
//!
//! The rows let an auditor check the ledger with a spreadsheet or `sqlite3`
//! alone: the amounts of all rows sum to zero, each event's rows sum to
//! zero, and the sums per account are the balances (the manifest repeats
//! them per kind of account, as `ledger verify`'s trial balance).

use std::collections::BTreeMap;

use ledger_core::codec::{BatchRecord, Entry, Hash, GENESIS_HASH};
use ledger_core::{
    Account, Command, Event, PurchaseId, PurchaseTarget, SaleKind, ShardId, TimestampMs, UserId,
};
use serde::Serialize;

use crate::{hex, TrialBalance};

/// Version of the rows' and manifest's layout, in the manifest.
pub const EXPORT_FORMAT: &str = "ledger-export-1";

/// One posting of one event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PostingRow {
    /// `<shard>.<sequence>` of the event.
    pub position: String,
    pub shard: u16,
    pub sequence: u64,
    /// When the input that caused the event arrived, ms since the Unix epoch.
    pub time_ms: u64,
    /// The same instant, RFC 3339 in UTC.
    pub time: String,
    pub event_type: &'static str,
    /// `issuance`, `wallet`, `pending`, `fees` or `clearing`.
    pub account: &'static str,
    /// The user of a `wallet` or `pending` account, else empty.
    pub user_id: String,
    /// Added to the account (negative: taken out).
    pub amount: i64,
    pub purchase_id: String,
    pub grant_id: String,
    pub refund_id: String,
    /// The input that caused the event (`command:<key>`, `message:<from>:<sequence>`, `tick`).
    pub cause: String,
    /// Checksum of the record holding the event, lowercase hex.
    pub record_hash: String,
}

/// The columns of [`PostingRow`], in order (the CSV header).
pub const POSTING_COLUMNS: [&str; 14] = [
    "position",
    "shard",
    "sequence",
    "time_ms",
    "time",
    "event_type",
    "account",
    "user_id",
    "amount",
    "purchase_id",
    "grant_id",
    "refund_id",
    "cause",
    "record_hash",
];

/// One shard as exported.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ManifestShard {
    pub shard: u16,
    pub records: u64,
    pub last_sequence: u64,
    /// Checksum of the last record, lowercase hex (zeros for an empty log).
    pub head_hash: String,
    pub rows: u64,
}

/// What an export covered: each shard's head, the row count and the sums.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Manifest {
    pub format: &'static str,
    pub shards: Vec<ManifestShard>,
    pub rows: u64,
    /// Sums of the rows per kind of account; `total` is zero.
    pub trial_balance: TrialBalance,
}

/// Where a creator's sale stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SaleStatus {
    /// In escrow until `release_at_ms`.
    Held,
    /// In escrow, frozen by a refund in progress.
    Frozen,
    /// Paid out to the creator's wallet.
    Released,
    /// Refunded: the share and the fee were taken back.
    Refunded,
}

/// One sale of a creator, as the creator's sales report shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CreatorSale {
    pub purchase_id: String,
    /// When the buyer paid, ms since the Unix epoch.
    pub time_ms: u64,
    /// The same instant, RFC 3339 in UTC.
    pub time: String,
    pub buyer_id: String,
    /// The item sold (empty for a bundle).
    pub item_id: String,
    /// The bundle sold (empty for an item).
    pub bundle_id: String,
    /// A Limited's serial, if any.
    pub serial: Option<u32>,
    /// A resale (the creator's share is the royalty).
    pub resale: bool,
    /// What the buyer paid.
    pub price: i64,
    pub creator_share: i64,
    pub platform_fee: i64,
    /// The fee policy the split followed.
    pub policy_version: u16,
    pub status: SaleStatus,
    /// When escrow is (or was) due for release, ms since the Unix epoch.
    pub release_at_ms: u64,
    /// The same instant, RFC 3339 in UTC.
    pub release_at: String,
}

/// The columns of [`CreatorSale`], in order (the CSV header).
pub const SALE_COLUMNS: [&str; 15] = [
    "purchase_id",
    "time_ms",
    "time",
    "buyer_id",
    "item_id",
    "bundle_id",
    "serial",
    "resale",
    "price",
    "creator_share",
    "platform_fee",
    "policy_version",
    "status",
    "release_at_ms",
    "release_at",
];

/// What the log says about one purchase, gathered across shards.
#[derive(Default)]
struct PurchaseFacts {
    buyer_id: Option<UserId>,
    price: Option<i64>,
    paid_at_ms: Option<TimestampMs>,
    item_id: Option<String>,
    bundle_id: Option<String>,
    serial: Option<u32>,
    /// The creator's settlement: share, fee, policy, release, resale.
    settled: Option<(i64, i64, u16, TimestampMs, bool)>,
    frozen: bool,
    released: bool,
    refunded: bool,
}

struct ShardHead {
    summary: ManifestShard,
    last_hash: Hash,
}

/// Turns records into posting rows, and keeps what the manifest and the
/// sales report need.
pub struct Exporter {
    creator: Option<UserId>,
    shards: BTreeMap<ShardId, ShardHead>,
    trial_balance: TrialBalance,
    rows: u64,
    purchases: BTreeMap<PurchaseId, PurchaseFacts>,
}

impl Exporter {
    /// An exporter; with `creator`, it also gathers that creator's sales.
    pub fn new(creator: Option<UserId>) -> Exporter {
        Exporter {
            creator,
            shards: BTreeMap::new(),
            trial_balance: TrialBalance::default(),
            rows: 0,
            purchases: BTreeMap::new(),
        }
    }

    /// Lists `shard` in the manifest even if its log is empty.
    pub fn expect_shard(&mut self, shard: ShardId) {
        self.head(shard);
    }

    fn head(&mut self, shard: ShardId) -> &mut ShardHead {
        self.shards.entry(shard).or_insert_with(|| ShardHead {
            summary: ManifestShard {
                shard: shard.0,
                head_hash: hex(&GENESIS_HASH),
                ..ManifestShard::default()
            },
            last_hash: GENESIS_HASH,
        })
    }

    /// Exports one record (its shard's next), handing each posting to `row`.
    /// Entries that do not decode are skipped: `ledger verify` names them.
    pub fn record(&mut self, record: &BatchRecord, row: &mut dyn FnMut(PostingRow)) {
        let record_hash = hex(&record.hash);
        let mut rows: u64 = 0;
        for logged in record.logged() {
            let Entry::Event { .. } = logged.entry else {
                continue;
            };
            let Ok(event) = logged.event() else {
                continue;
            };
            self.learn(&event, logged.timestamp_ms);
            let (purchase_id, grant_id, refund_id) = references(&event);
            for posting in event.postings() {
                let (account, user_id) = account_columns(&posting.account);
                add_to(&mut self.trial_balance, &posting.account, posting.amount);
                rows += 1;
                row(PostingRow {
                    position: format!("{}.{}", logged.shard.0, logged.sequence),
                    shard: logged.shard.0,
                    sequence: logged.sequence,
                    time_ms: logged.timestamp_ms,
                    time: rfc3339(logged.timestamp_ms),
                    event_type: event.type_name(),
                    account,
                    user_id,
                    amount: posting.amount,
                    purchase_id: purchase_id.clone(),
                    grant_id: grant_id.clone(),
                    refund_id: refund_id.clone(),
                    cause: logged.cause.to_string(),
                    record_hash: record_hash.clone(),
                });
            }
        }
        self.rows += rows;
        let head = self.head(record.shard);
        head.summary.records += 1;
        head.summary.rows += rows;
        head.summary.last_sequence = record.last_sequence();
        head.last_hash = record.hash;
        head.summary.head_hash = hex(&head.last_hash);
    }

    /// Gathers what the creator's sales report needs from `event`.
    fn learn(&mut self, event: &Event, at_ms: TimestampMs) {
        let Some(creator) = &self.creator else {
            return;
        };
        match event {
            Event::CommandAccepted {
                command:
                    Command::Purchase {
                        purchase_id,
                        buyer_id,
                        target,
                        ..
                    },
                meta,
                ..
            } => {
                let facts = facts(&mut self.purchases, purchase_id);
                facts.buyer_id = Some(buyer_id.clone());
                // A cart's line, paid in its cart's one debit (logged under
                // the cart's id) at the cart's time, which its record keeps.
                if ledger_core::is_cart_line_id(purchase_id) {
                    facts.paid_at_ms = Some(meta.at_ms);
                }
                match target {
                    PurchaseTarget::Item(item_id) => facts.item_id = Some(item_id.to_string()),
                    PurchaseTarget::Bundle(bundle_id) => {
                        facts.bundle_id = Some(bundle_id.to_string())
                    }
                }
            }
            Event::CommandAccepted {
                command:
                    Command::ResalePurchase {
                        purchase_id,
                        buyer_id,
                        ..
                    },
                ..
            } => {
                let facts = facts(&mut self.purchases, purchase_id);
                facts.buyer_id = Some(buyer_id.clone());
            }
            Event::PurchaseCompleted {
                key, reservation, ..
            } => {
                let Some(purchase_id) = ledger_core::keys::purchase_id(key) else {
                    return;
                };
                let facts = self.purchases.entry(purchase_id).or_default();
                facts.price = Some(reservation.price);
                if let SaleKind::Resale {
                    item_id, serial, ..
                } = &reservation.sale
                {
                    facts.item_id = Some(item_id.to_string());
                    facts.serial = Some(*serial);
                }
            }
            Event::BuyerDebited {
                purchase_id,
                buyer_id,
                amount,
                at_ms,
                ..
            } => {
                let facts = facts(&mut self.purchases, purchase_id);
                facts.buyer_id = Some(buyer_id.clone());
                facts.price = Some(*amount);
                facts.paid_at_ms = Some(*at_ms);
            }
            Event::SerialSold {
                purchase_id,
                item_id,
                serial,
                ..
            }
            | Event::SerialTransferred {
                purchase_id,
                item_id,
                serial,
                ..
            } => {
                let facts = facts(&mut self.purchases, purchase_id);
                facts.item_id = Some(item_id.to_string());
                facts.serial = Some(*serial);
            }
            Event::SaleSettled {
                purchase_id,
                creator_id,
                resale,
                creator_share,
                platform_fee,
                policy_version,
                release_at_ms,
                ..
            } if creator_id == creator => {
                let facts = facts(&mut self.purchases, purchase_id);
                facts.settled = Some((
                    *creator_share,
                    *platform_fee,
                    *policy_version,
                    *release_at_ms,
                    *resale,
                ));
                facts.paid_at_ms.get_or_insert(at_ms);
            }
            Event::EscrowFrozen { purchase_id } => {
                facts(&mut self.purchases, purchase_id).frozen = true;
            }
            Event::EscrowUnfrozen { purchase_id } => {
                facts(&mut self.purchases, purchase_id).frozen = false;
            }
            Event::EscrowReleased {
                purchase_id,
                creator_id,
                ..
            } if creator_id == creator => {
                facts(&mut self.purchases, purchase_id).released = true;
            }
            Event::EscrowReversed {
                purchase_id,
                creator_id,
                ..
            } if creator_id == creator => {
                facts(&mut self.purchases, purchase_id).refunded = true;
            }
            _ => {}
        }
    }

    /// The manifest, and the sales of the creator asked for (by time).
    pub fn finish(self) -> (Manifest, Vec<CreatorSale>) {
        let mut trial_balance = self.trial_balance;
        trial_balance.total = trial_balance.issuance
            + trial_balance.wallets
            + trial_balance.pending
            + trial_balance.fees
            + trial_balance.clearing;
        trial_balance.granted = -trial_balance.issuance;
        let manifest = Manifest {
            format: EXPORT_FORMAT,
            shards: self.shards.into_values().map(|head| head.summary).collect(),
            rows: self.rows,
            trial_balance,
        };
        let mut sales: Vec<CreatorSale> = self
            .purchases
            .into_iter()
            .filter_map(|(purchase_id, facts)| {
                let (creator_share, platform_fee, policy_version, release_at_ms, resale) =
                    facts.settled?;
                let status = if facts.refunded {
                    SaleStatus::Refunded
                } else if facts.released {
                    SaleStatus::Released
                } else if facts.frozen {
                    SaleStatus::Frozen
                } else {
                    SaleStatus::Held
                };
                let time_ms = facts.paid_at_ms.unwrap_or(0);
                Some(CreatorSale {
                    purchase_id: purchase_id.to_string(),
                    time_ms,
                    time: rfc3339(time_ms),
                    buyer_id: facts.buyer_id.map(|id| id.to_string()).unwrap_or_default(),
                    item_id: facts.item_id.unwrap_or_default(),
                    bundle_id: facts.bundle_id.unwrap_or_default(),
                    serial: facts.serial,
                    resale,
                    price: facts.price.unwrap_or(creator_share + platform_fee),
                    creator_share,
                    platform_fee,
                    policy_version,
                    status,
                    release_at_ms,
                    release_at: rfc3339(release_at_ms),
                })
            })
            .collect();
        sales.sort_by(|a, b| (a.time_ms, &a.purchase_id).cmp(&(b.time_ms, &b.purchase_id)));
        (manifest, sales)
    }
}

/// `ms` since the Unix epoch as RFC 3339 in UTC, to the millisecond (the
/// latest instant RFC 3339 can write for times beyond the year 9999).
fn rfc3339(ms: u64) -> String {
    const LATEST_MS: u64 = 253_402_300_799_999; // 9999-12-31T23:59:59.999Z
    let instant = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.min(LATEST_MS));
    humantime::format_rfc3339_millis(instant).to_string()
}

/// What the log says so far about `purchase_id`.
fn facts<'a>(
    purchases: &'a mut BTreeMap<PurchaseId, PurchaseFacts>,
    purchase_id: &PurchaseId,
) -> &'a mut PurchaseFacts {
    purchases.entry(purchase_id.clone()).or_default()
}

/// The account's kind and user, as two columns.
fn account_columns(account: &Account) -> (&'static str, String) {
    match account {
        Account::Issuance => ("issuance", String::new()),
        Account::Wallet(user) => ("wallet", user.to_string()),
        Account::Pending(user) => ("pending", user.to_string()),
        Account::Fees => ("fees", String::new()),
        Account::Clearing => ("clearing", String::new()),
    }
}

fn add_to(trial_balance: &mut TrialBalance, account: &Account, amount: i64) {
    let sum = match account {
        Account::Issuance => &mut trial_balance.issuance,
        Account::Wallet(_) => &mut trial_balance.wallets,
        Account::Pending(_) => &mut trial_balance.pending,
        Account::Fees => &mut trial_balance.fees,
        Account::Clearing => &mut trial_balance.clearing,
    };
    *sum += amount;
}

/// The purchase, grant and refund an event that moves money belongs to.
fn references(event: &Event) -> (String, String, String) {
    match event {
        Event::CurrencyGranted { grant_id, .. } => {
            (String::new(), grant_id.to_string(), String::new())
        }
        Event::BuyerDebited { purchase_id, .. }
        | Event::SaleSettled { purchase_id, .. }
        | Event::SellerCredited { purchase_id, .. }
        | Event::EscrowReleased { purchase_id, .. } => {
            (purchase_id.to_string(), String::new(), String::new())
        }
        Event::EscrowReversed {
            purchase_id,
            refund_id,
            ..
        }
        | Event::BuyerRefunded {
            purchase_id,
            refund_id,
            ..
        } => (
            purchase_id.to_string(),
            String::new(),
            refund_id.to_string(),
        ),
        _ => (String::new(), String::new(), String::new()),
    }
}
