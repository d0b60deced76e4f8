//! From the ledger's records to public events, in causal order, with a
//! checkpoint to resume from.
//!
//! An adapter pushes each shard's records in sequence order, each with its
//! position in the adapter's source (a Kafka offset; any increasing number
//! for an embedded store), then drains the public events they produce.
//!
//! **Causal order.** Shards log independently, and a reader of several
//! shards' logs (a Kafka consumer of every partition) sees them interleaved
//! at random. A record is therefore published only once every message it
//! consumed (`message_received`) was published with its sender's record: a
//! purchase's `purchase_completed` (logged by its home shard once the
//! buyer's shard answered) always comes after what the buyer's shard logged
//! before answering, and a refund after the purchase it refunds. Every key's
//! events are thus in the order the ledger decided them.
//!
//! **Joins.** A purchase's completion on its home shard carries the price,
//! the sale and (in the messages it sends in the same step) the split and
//! the fee policy, but not the buyer, which its acceptance (an earlier
//! record of the same shard) names. The stream keeps each shard's open
//! purchases (accepted, not completed) with the position of the record that
//! accepted them.
//!
//! **Checkpoint.** Per shard: the last sequence published, the messages
//! published per receiver, and where to resume reading — the record of the
//! oldest open purchase, or else the next record not published. An adapter
//! stores it atomically with what it published (Kafka: the consumed offset
//! with [`ShardCheckpoint::to_metadata`] as its metadata, in the publishing
//! transaction). Resumed with [`PublicStream::resume`], records already
//! published are read again only to learn their open purchases; nothing is
//! published twice and nothing is skipped.

use std::collections::{BTreeMap, VecDeque};

use ledger_core::codec::{BatchRecord, Entry};
use ledger_core::{
    Command, Completion, Event, ListingEndReason, Message, PurchaseId, PurchaseTarget, ShardId,
    Success, UserId,
};

use crate::types::{
    rfc3339, AccountChange, BundleCreated, CurrencyGranted, EscrowReleased, EscrowReversed,
    ItemPublished, ItemRepriced, ItemSaleToggled, ItemTakenDown, ListingCancelled, ListingCreated,
    PriceFloorSet, PriceTestEnded, PriceTestExposed, PriceTestSold, PriceTestStarted, PublicData,
    PublicEvent, PurchaseCompleted, PurchaseRefunded, RegionalPricesSet, ResaleCompleted,
};

/// Why the stream cannot go on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    #[error("shard {shard}: the record from sequence {found} leaves a gap (expected {expected})")]
    SequenceGap {
        shard: ShardId,
        expected: u64,
        found: u64,
    },
    #[error("shard {shard}: the record at position {position} holds no entry")]
    EmptyRecord { shard: ShardId, position: i64 },
    #[error(
        "shard {shard}: purchase {purchase_id} completed at sequence {sequence} without its \
         acceptance in the log read (the checkpoint resumed after it)"
    )]
    UnknownBuyer {
        shard: ShardId,
        sequence: u64,
        purchase_id: String,
    },
    #[error("shard {shard}: the entry at sequence {sequence} does not decode: {detail}")]
    Undecodable {
        shard: ShardId,
        sequence: u64,
        detail: String,
    },
    #[error("checkpoint metadata `{metadata}` is not valid: {reason}")]
    BadCheckpoint { metadata: String, reason: String },
}

/// Where a shard's publication stands: stored with what was published.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShardCheckpoint {
    /// The last sequence of the shard whose public events were published (0: none).
    pub published_through: u64,
    /// Per receiver shard, the last message sequence sent to it by a
    /// published record.
    pub sent: BTreeMap<u16, u64>,
}

/// Version tag of [`ShardCheckpoint::to_metadata`].
const METADATA_VERSION: &str = "pub1";

impl ShardCheckpoint {
    /// `pub1 p=<published_through> s=<to>:<sequence>,…` (a few hundred bytes
    /// for hundreds of shards: within Kafka's offset metadata limit, 4 KiB by
    /// default, up to about 300 receivers).
    pub fn to_metadata(&self) -> String {
        let sent: Vec<String> = self
            .sent
            .iter()
            .map(|(to, sequence)| format!("{to}:{sequence}"))
            .collect();
        format!(
            "{METADATA_VERSION} p={} s={}",
            self.published_through,
            sent.join(",")
        )
    }

    /// Parses [`ShardCheckpoint::to_metadata`]; an empty text is a shard
    /// never published.
    pub fn from_metadata(metadata: &str) -> Result<Self, StreamError> {
        if metadata.is_empty() {
            return Ok(Self::default());
        }
        let bad = |reason: &str| StreamError::BadCheckpoint {
            metadata: metadata.to_string(),
            reason: reason.to_string(),
        };
        let mut parts = metadata.split(' ');
        if parts.next() != Some(METADATA_VERSION) {
            return Err(bad("it does not start with pub1"));
        }
        let published = parts
            .next()
            .and_then(|part| part.strip_prefix("p="))
            .ok_or_else(|| bad("p= is missing"))?;
        let published_through = published.parse().map_err(|_| bad("p= is not a sequence"))?;
        let sent_text = parts
            .next()
            .and_then(|part| part.strip_prefix("s="))
            .ok_or_else(|| bad("s= is missing"))?;
        if parts.next().is_some() {
            return Err(bad("it has trailing parts"));
        }
        let mut sent = BTreeMap::new();
        for pair in sent_text.split(',').filter(|pair| !pair.is_empty()) {
            let (to, sequence) = pair
                .split_once(':')
                .ok_or_else(|| bad("a sent mark is not <to>:<sequence>"))?;
            let to: u16 = to.parse().map_err(|_| bad("a receiver is not a shard"))?;
            let sequence: u64 = sequence
                .parse()
                .map_err(|_| bad("a sent mark is not a sequence"))?;
            sent.insert(to, sequence);
        }
        Ok(Self {
            published_through,
            sent,
        })
    }
}

/// A purchase accepted on its home shard and not completed yet.
#[derive(Debug, Clone)]
struct OpenPurchase {
    buyer_id: UserId,
    /// The listing a resale purchase buys.
    listing_id: Option<String>,
    /// Where the record that accepted it was read.
    position: i64,
}

/// One shard's lane through the stream.
#[derive(Debug, Default)]
struct Lane {
    checkpoint: ShardCheckpoint,
    /// The next sequence expected (unknown until the first record).
    next_sequence: Option<u64>,
    /// After the last record pushed, in the adapter's positions.
    next_position: Option<i64>,
    /// Read, not published yet: waiting for their causes, in order.
    waiting: VecDeque<(i64, BatchRecord)>,
    open: BTreeMap<PurchaseId, OpenPurchase>,
}

/// The public stream of a ledger (see the module docs).
#[derive(Debug)]
pub struct PublicStream {
    source: String,
    lanes: BTreeMap<ShardId, Lane>,
}

/// What a shard's step sent along with a purchase's completion.
#[derive(Default)]
struct Settlement {
    creator: Option<(UserId, i64, i64, u16)>,
    seller: Option<(UserId, i64)>,
}

impl PublicStream {
    /// A stream whose events name `source` (`ce_source`, e.g. `/ledger`).
    pub fn new(source: impl Into<String>) -> Self {
        Self {
            source: source.into(),
            lanes: BTreeMap::new(),
        }
    }

    /// Resumes shard `shard` from a stored checkpoint (before its records are pushed).
    pub fn resume(&mut self, shard: ShardId, checkpoint: ShardCheckpoint) {
        self.lanes.entry(shard).or_default().checkpoint = checkpoint;
    }

    /// Records read and not published yet (waiting for another shard's).
    pub fn waiting(&self) -> usize {
        self.lanes.values().map(|lane| lane.waiting.len()).sum()
    }

    /// Takes the next record of its shard, read at `position` of the
    /// adapter's source. A record already pushed (a copy) is ignored; one
    /// that leaves a gap is refused. Records at or below the shard's
    /// checkpoint are read only for their open purchases.
    pub fn push(&mut self, position: i64, record: BatchRecord) -> Result<(), StreamError> {
        let shard = record.shard;
        if record.is_empty() {
            return Err(StreamError::EmptyRecord { shard, position });
        }
        let lane = self.lanes.entry(shard).or_default();
        if let Some(expected) = lane.next_sequence {
            if record.last_sequence() < expected {
                return Ok(());
            }
            if record.first_sequence != expected {
                return Err(StreamError::SequenceGap {
                    shard,
                    expected,
                    found: record.first_sequence,
                });
            }
        }
        lane.next_sequence = Some(record.next_sequence());
        lane.next_position = Some(position + 1);
        if record.last_sequence() <= lane.checkpoint.published_through {
            learn_open_purchases(lane, position, &record);
            return Ok(());
        }
        lane.waiting.push_back((position, record));
        Ok(())
    }

    /// Publishes every record whose causes are published, in causal order,
    /// and returns their public events.
    pub fn drain(&mut self) -> Result<Vec<PublicEvent>, StreamError> {
        let mut out = Vec::new();
        loop {
            let mut progressed = false;
            let shards: Vec<ShardId> = self.lanes.keys().copied().collect();
            for shard in shards {
                while self.ready(shard) {
                    let lane = self.lanes.get_mut(&shard).expect("the lane exists");
                    let (position, record) = lane.waiting.pop_front().expect("a record waits");
                    publish(&self.source, lane, position, &record, &mut out)?;
                    progressed = true;
                }
            }
            if !progressed {
                return Ok(out);
            }
        }
    }

    /// Whether the first waiting record of `shard` may be published: every
    /// message it consumed from another shard was published.
    fn ready(&self, shard: ShardId) -> bool {
        let Some((_, record)) = self.lanes.get(&shard).and_then(|lane| lane.waiting.front()) else {
            return false;
        };
        record.logged().all(|logged| match logged.entry {
            Entry::Received { from, sequence } => self.delivered(*from, shard, *sequence),
            Entry::FormatOne { event_type, .. } if event_type == "message_received" => {
                match logged.event() {
                    Ok(Event::MessageReceived { from, sequence }) => {
                        self.delivered(from, shard, sequence)
                    }
                    _ => true,
                }
            }
            _ => true,
        })
    }

    /// Whether message `sequence` from `from` to `to` was published.
    fn delivered(&self, from: ShardId, to: ShardId, sequence: u64) -> bool {
        // A shard's own messages come earlier in its own log.
        from == to
            || self
                .lanes
                .get(&from)
                .and_then(|lane| lane.checkpoint.sent.get(&to.0))
                .is_some_and(|sent| *sent >= sequence)
    }

    /// The checkpoint of `shard` after what was drained, and the position
    /// to resume reading from (`None`: nothing of the shard was read).
    pub fn checkpoint(&self, shard: ShardId) -> Option<(i64, ShardCheckpoint)> {
        let lane = self.lanes.get(&shard)?;
        let next = lane.next_position?;
        let resume = lane
            .open
            .values()
            .map(|open| open.position)
            .chain(lane.waiting.front().map(|(position, _)| *position))
            .min()
            .unwrap_or(next)
            .min(next);
        Some((resume, lane.checkpoint.clone()))
    }

    /// The shards seen (pushed or resumed).
    pub fn shards(&self) -> Vec<ShardId> {
        self.lanes.keys().copied().collect()
    }
}

/// Learns the purchases a record accepts and completes.
fn learn_open_purchases(lane: &mut Lane, position: i64, record: &BatchRecord) {
    for logged in record.logged() {
        if !matches!(logged.entry, Entry::Event { .. } | Entry::FormatOne { .. }) {
            continue;
        }
        if !matches!(
            logged.entry.event_type(),
            "command_accepted" | "command_completed" | "purchase_completed" | "command_withdrawn"
        ) {
            continue;
        }
        let Ok(event) = logged.event() else {
            continue;
        };
        track_purchase(lane, position, &event);
    }
}

/// Opens a purchase on its acceptance, closes it on its completion.
fn track_purchase(lane: &mut Lane, position: i64, event: &Event) {
    match event {
        // A cart line's purchase is published from its cart's completion.
        Event::CommandAccepted {
            command: Command::Purchase { purchase_id, .. },
            ..
        } if ledger_core::is_cart_line_id(purchase_id) => {}
        Event::CommandAccepted {
            command:
                Command::Purchase {
                    purchase_id,
                    buyer_id,
                    ..
                }
                | Command::PurchaseCart {
                    purchase_id,
                    buyer_id,
                    ..
                },
            ..
        } => {
            lane.open.insert(
                purchase_id.clone(),
                OpenPurchase {
                    buyer_id: buyer_id.clone(),
                    listing_id: None,
                    position,
                },
            );
        }
        Event::CommandAccepted {
            command:
                Command::ResalePurchase {
                    purchase_id,
                    buyer_id,
                    listing_id,
                    ..
                },
            ..
        } => {
            lane.open.insert(
                purchase_id.clone(),
                OpenPurchase {
                    buyer_id: buyer_id.clone(),
                    listing_id: Some(listing_id.to_string()),
                    position,
                },
            );
        }
        // A rate-limited purchase (withdrawn) closes too: nothing happened.
        Event::CommandCompleted { key, .. }
        | Event::PurchaseCompleted { key, .. }
        | Event::CommandWithdrawn { key, .. } => {
            if let Some(purchase_id) = ledger_core::keys::purchase_id(key) {
                lane.open.remove(&purchase_id);
            }
        }
        _ => {}
    }
}

/// Publishes one record: its public events, then the lane's checkpoint.
fn publish(
    source: &str,
    lane: &mut Lane,
    position: i64,
    record: &BatchRecord,
    out: &mut Vec<PublicEvent>,
) -> Result<(), StreamError> {
    let shard = record.shard;
    let record_hash = hex(&record.hash);
    let mut sequence = record.first_sequence;
    for input in &record.inputs {
        // What the step sent with a purchase's completion: the split.
        let mut settlements: BTreeMap<&PurchaseId, Settlement> = BTreeMap::new();
        for entry in &input.entries {
            if let Entry::Sent { message, .. } = entry {
                match message.as_ref() {
                    Message::SettleSale {
                        purchase_id,
                        creator_id,
                        creator_share,
                        platform_fee,
                        policy_version,
                        ..
                    } => {
                        settlements.entry(purchase_id).or_default().creator = Some((
                            creator_id.clone(),
                            *creator_share,
                            *platform_fee,
                            *policy_version,
                        ));
                    }
                    Message::CreditSeller {
                        purchase_id,
                        seller_id,
                        amount,
                    } => {
                        settlements.entry(purchase_id).or_default().seller =
                            Some((seller_id.clone(), *amount));
                    }
                    _ => {}
                }
            }
        }
        for entry in &input.entries {
            let at = sequence;
            sequence += 1;
            match entry {
                Entry::Sent { to, sequence, .. } => {
                    lane.checkpoint.sent.insert(to.0, *sequence);
                    continue;
                }
                Entry::Received { .. } => continue,
                Entry::Event { .. } | Entry::FormatOne { .. } => {}
            }
            let event = entry.event().map_err(|error| StreamError::Undecodable {
                shard,
                sequence: at,
                detail: error.to_string(),
            })?;
            if let Event::MessageSent { to, sequence, .. } = &event {
                lane.checkpoint.sent.insert(to.0, *sequence);
                continue;
            }
            let open = match &event {
                Event::CommandCompleted { key, .. } | Event::PurchaseCompleted { key, .. } => {
                    ledger_core::keys::purchase_id(key)
                        .and_then(|purchase_id| lane.open.get(&purchase_id))
                        .cloned()
                }
                _ => None,
            };
            let mapped = map_event(&event, open.as_ref(), &settlements);
            track_purchase(lane, position, &event);
            let (subject, data) = match mapped {
                Mapped::Public(subject, data) => (subject, *data),
                Mapped::Nothing => continue,
                // A cart: one public event per line, `<shard>.<sequence>.<line>`.
                Mapped::Lines(subject, lines) => {
                    for (index, data) in lines.into_iter().enumerate() {
                        out.push(PublicEvent {
                            id: format!("{}.{at}.{}", shard.0, index + 1),
                            source: source.to_string(),
                            subject: subject.clone(),
                            time_ms: input.timestamp_ms,
                            record_hash: record_hash.clone(),
                            data,
                        });
                    }
                    continue;
                }
                Mapped::BuyerMissing(purchase_id) => {
                    return Err(StreamError::UnknownBuyer {
                        shard,
                        sequence: at,
                        purchase_id: purchase_id.to_string(),
                    })
                }
            };
            out.push(PublicEvent {
                id: format!("{}.{at}", shard.0),
                source: source.to_string(),
                subject,
                time_ms: input.timestamp_ms,
                record_hash: record_hash.clone(),
                data,
            });
        }
    }
    lane.checkpoint.published_through = record.last_sequence();
    Ok(())
}

/// What one ledger event becomes.
enum Mapped {
    Public(String, Box<PublicData>),
    /// A paid cart: the purchase of each line, in order.
    Lines(String, Vec<PublicData>),
    Nothing,
    /// A purchase completed whose buyer the stream does not know.
    BuyerMissing(PurchaseId),
}

fn user_subject(user_id: &UserId) -> String {
    format!("user:{user_id}")
}

fn item_subject(item_id: &impl std::fmt::Display) -> String {
    format!("item:{item_id}")
}

fn change(user_id: &UserId, amount: i64) -> AccountChange {
    AccountChange {
        user_id: user_id.to_string(),
        amount,
    }
}

fn strings<T: std::fmt::Display>(ids: &[T]) -> Vec<String> {
    ids.iter().map(ToString::to_string).collect()
}

/// The public event of one ledger event, if it has one. `open` is the
/// purchase the event completes, as accepted; `settlements` what the same
/// step sent to settle purchases.
fn map_event(
    event: &Event,
    open: Option<&OpenPurchase>,
    settlements: &BTreeMap<&PurchaseId, Settlement>,
) -> Mapped {
    let (subject, data) = match event {
        Event::CurrencyGranted {
            grant_id,
            user_id,
            amount,
            balance_after,
            ..
        } => (
            user_subject(user_id),
            PublicData::CurrencyGranted(CurrencyGranted {
                grant_id: grant_id.to_string(),
                user_id: user_id.to_string(),
                amount: *amount,
                balance_after: *balance_after,
                wallet_changes: vec![change(user_id, *amount)],
                pending_changes: Vec::new(),
            }),
        ),
        Event::PurchaseCompleted {
            key, completion, ..
        }
        | Event::CommandCompleted { key, completion } => {
            return completed_purchase(key, completion, open, settlements)
        }
        Event::BuyerRefunded {
            purchase_id,
            refund_id,
            buyer_id,
            amount,
            revoked_items,
            balance_after,
            ..
        } => (
            user_subject(buyer_id),
            PublicData::PurchaseRefunded(PurchaseRefunded {
                refund_id: refund_id.to_string(),
                purchase_id: purchase_id.to_string(),
                buyer_id: buyer_id.to_string(),
                amount: *amount,
                revoked_items: strings(revoked_items),
                buyer_balance_after: *balance_after,
                wallet_changes: vec![change(buyer_id, *amount)],
                pending_changes: Vec::new(),
            }),
        ),
        Event::EscrowReversed {
            purchase_id,
            refund_id,
            creator_id,
            creator_share,
            platform_fee,
            ..
        } => (
            user_subject(creator_id),
            PublicData::EscrowReversed(EscrowReversed {
                refund_id: refund_id.to_string(),
                purchase_id: purchase_id.to_string(),
                creator_id: creator_id.to_string(),
                creator_share: *creator_share,
                platform_fee: *platform_fee,
                wallet_changes: Vec::new(),
                pending_changes: vec![change(creator_id, -creator_share)],
            }),
        ),
        Event::EscrowReleased {
            purchase_id,
            creator_id,
            amount,
            ..
        } => (
            user_subject(creator_id),
            PublicData::EscrowReleased(EscrowReleased {
                purchase_id: purchase_id.to_string(),
                creator_id: creator_id.to_string(),
                amount: *amount,
                wallet_changes: vec![change(creator_id, *amount)],
                pending_changes: vec![change(creator_id, -amount)],
            }),
        ),
        Event::ListingCreated {
            listing_id,
            item_id,
            serial,
            seller_id,
            price,
        } => (
            item_subject(item_id),
            PublicData::ListingCreated(ListingCreated {
                listing_id: listing_id.to_string(),
                item_id: item_id.to_string(),
                serial: *serial,
                seller_id: seller_id.to_string(),
                price: *price,
            }),
        ),
        Event::ListingEnded {
            listing_id,
            item_id,
            serial,
            reason: ListingEndReason::Cancelled,
        } => (
            item_subject(item_id),
            PublicData::ListingCancelled(ListingCancelled {
                listing_id: listing_id.to_string(),
                item_id: item_id.to_string(),
                serial: *serial,
            }),
        ),
        Event::ItemPublished { definition } => (
            item_subject(&definition.item_id),
            PublicData::ItemPublished(ItemPublished {
                item_id: definition.item_id.to_string(),
                creator_id: definition.creator_id.to_string(),
                name: definition.name.clone(),
                price: definition.price,
                supply: definition.supply,
                max_per_user: definition.max_per_user,
                starts_at: definition.starts_at_ms.map(rfc3339),
                ends_at: definition.ends_at_ms.map(rfc3339),
                resellable: definition.resellable,
            }),
        ),
        Event::ItemRepriced { item_id, price } => (
            item_subject(item_id),
            PublicData::ItemRepriced(ItemRepriced {
                item_id: item_id.to_string(),
                price: *price,
            }),
        ),
        Event::ItemSaleToggled { item_id, on_sale } => (
            item_subject(item_id),
            PublicData::ItemSaleToggled(ItemSaleToggled {
                item_id: item_id.to_string(),
                on_sale: *on_sale,
            }),
        ),
        Event::BundleCreated {
            bundle_id,
            creator_id,
            name,
            item_ids,
            price,
        } => (
            format!("bundle:{bundle_id}"),
            PublicData::BundleCreated(BundleCreated {
                bundle_id: bundle_id.to_string(),
                creator_id: creator_id.to_string(),
                name: name.clone(),
                item_ids: strings(item_ids),
                price: *price,
            }),
        ),
        Event::PriceFloorSet {
            kind,
            version,
            price,
            effective_from_ms,
        } => (
            format!("price-floor:{kind}"),
            PublicData::PriceFloorSet(PriceFloorSet {
                kind: kind.to_string(),
                version: *version,
                price: *price,
                effective_from: rfc3339(*effective_from_ms),
            }),
        ),
        Event::RegionalPricesSet { item_id, prices } => (
            item_subject(item_id),
            PublicData::RegionalPricesSet(RegionalPricesSet {
                item_id: item_id.to_string(),
                prices: prices
                    .iter()
                    .map(|(region, price)| (region.to_string(), *price))
                    .collect(),
            }),
        ),
        Event::PriceTestStarted {
            test_id,
            item_id,
            arms,
            ends_at_ms,
        } => (
            item_subject(item_id),
            PublicData::PriceTestStarted(PriceTestStarted {
                test_id: test_id.to_string(),
                item_id: item_id.to_string(),
                arms: arms.clone(),
                ends_at: rfc3339(*ends_at_ms),
            }),
        ),
        Event::PriceTestExposed {
            test_id,
            batch,
            exposures,
        } => (
            format!("price-test:{test_id}"),
            PublicData::PriceTestExposed(PriceTestExposed {
                test_id: test_id.to_string(),
                batch: batch.clone(),
                exposures: exposures.clone(),
            }),
        ),
        Event::PriceTestSold {
            test_id,
            purchase_id,
            arm,
            price,
            purchases,
            revenue,
        } => (
            format!("price-test:{test_id}"),
            PublicData::PriceTestSold(PriceTestSold {
                test_id: test_id.to_string(),
                purchase_id: purchase_id.to_string(),
                arm: *arm,
                price: *price,
                arm_purchases: *purchases,
                arm_revenue: *revenue,
            }),
        ),
        Event::PriceTestEnded {
            test_id,
            winner,
            applied_price,
        } => (
            format!("price-test:{test_id}"),
            PublicData::PriceTestEnded(PriceTestEnded {
                test_id: test_id.to_string(),
                winner: *winner,
                applied_price: *applied_price,
            }),
        ),
        Event::ItemTakenDown { item_id, at_ms } => (
            item_subject(item_id),
            PublicData::ItemTakenDown(ItemTakenDown {
                item_id: item_id.to_string(),
                taken_down_at: rfc3339(*at_ms),
            }),
        ),
        _ => return Mapped::Nothing,
    };
    Mapped::Public(subject, Box::new(data))
}

/// A purchase's completion, if it completed a paid purchase: one public
/// event per completed purchase (a refused one completes with
/// `command_completed` and a rejection: nothing).
fn completed_purchase(
    key: &str,
    completion: &Completion,
    open: Option<&OpenPurchase>,
    settlements: &BTreeMap<&PurchaseId, Settlement>,
) -> Mapped {
    let Some(purchase_id) = ledger_core::keys::purchase_id(key) else {
        return Mapped::Nothing;
    };
    let Ok(success) = &completion.result else {
        return Mapped::Nothing;
    };
    // A cart line's own record: published with its cart.
    if !matches!(
        success,
        Success::Purchased { .. } | Success::ResalePurchased { .. } | Success::CartPurchased { .. }
    ) || ledger_core::is_cart_line_id(&purchase_id)
    {
        return Mapped::Nothing;
    }
    let Some(open) = open else {
        return Mapped::BuyerMissing(purchase_id);
    };
    let buyer_id = &open.buyer_id;
    if let Success::CartPurchased {
        lines,
        balance_after,
        ..
    } = success
    {
        let lines = lines
            .iter()
            .map(|line| {
                let settlement = settlements
                    .get(&line.purchase_id)
                    .and_then(|settlement| settlement.creator.as_ref());
                primary_purchase(
                    &line.purchase_id,
                    buyer_id,
                    &line.target,
                    line.price,
                    line.serial,
                    &line.granted_items,
                    *balance_after,
                    settlement,
                )
            })
            .collect();
        return Mapped::Lines(user_subject(buyer_id), lines);
    }
    let settlement = settlements.get(&purchase_id);
    let (creator_id, creator_share, platform_fee, fee_policy_version) = settlement
        .and_then(|settlement| settlement.creator.clone())
        .map(|(creator, share, fee, policy)| (creator.to_string(), share, fee, policy))
        .unwrap_or_default();
    let data = match success {
        Success::Purchased {
            target,
            price,
            serial,
            granted_items,
            balance_after,
        } => primary_purchase(
            &purchase_id,
            buyer_id,
            target,
            *price,
            *serial,
            granted_items,
            *balance_after,
            settlement.and_then(|settlement| settlement.creator.as_ref()),
        ),
        Success::ResalePurchased {
            item_id,
            serial,
            price,
            seller_id,
            balance_after,
        } => {
            let seller_share = settlement
                .and_then(|settlement| settlement.seller.as_ref())
                .map(|(_, amount)| *amount)
                .unwrap_or_default();
            let mut wallet_changes = vec![change(buyer_id, -price)];
            if seller_share != 0 {
                wallet_changes.push(change(seller_id, seller_share));
            }
            let mut pending_changes = Vec::new();
            if let Some(settlement) = settlement.and_then(|settlement| settlement.creator.as_ref())
            {
                pending_changes.push(change(&settlement.0, settlement.1));
            }
            PublicData::ResaleCompleted(ResaleCompleted {
                purchase_id: purchase_id.to_string(),
                buyer_id: buyer_id.to_string(),
                seller_id: seller_id.to_string(),
                listing_id: open.listing_id.clone().unwrap_or_default(),
                item_id: item_id.to_string(),
                serial: *serial,
                price: *price,
                seller_share,
                creator_id,
                creator_royalty: creator_share,
                platform_fee,
                fee_policy_version,
                buyer_balance_after: *balance_after,
                wallet_changes,
                pending_changes,
            })
        }
        _ => return Mapped::Nothing,
    };
    Mapped::Public(user_subject(buyer_id), Box::new(data))
}

/// The public event of a paid primary purchase (or a cart's line), with
/// the split its step sent to the creator, if any.
#[allow(clippy::too_many_arguments)] // the fields of a purchase's success
fn primary_purchase(
    purchase_id: &PurchaseId,
    buyer_id: &UserId,
    target: &PurchaseTarget,
    price: i64,
    serial: Option<u32>,
    granted_items: &[ledger_core::ItemId],
    balance_after: i64,
    settlement: Option<&(UserId, i64, i64, u16)>,
) -> PublicData {
    let (item_id, bundle_id) = match target {
        PurchaseTarget::Item(item_id) => (Some(item_id.to_string()), None),
        PurchaseTarget::Bundle(bundle_id) => (None, Some(bundle_id.to_string())),
    };
    let (creator_id, creator_share, platform_fee, fee_policy_version) = settlement
        .map(|(creator, share, fee, policy)| (creator.to_string(), *share, *fee, *policy))
        .unwrap_or_default();
    let pending_changes = settlement
        .map(|(creator, share, _, _)| vec![change(creator, *share)])
        .unwrap_or_default();
    PublicData::PurchaseCompleted(PurchaseCompleted {
        purchase_id: purchase_id.to_string(),
        buyer_id: buyer_id.to_string(),
        item_id,
        bundle_id,
        granted_items: strings(granted_items),
        serial,
        price,
        creator_id,
        creator_share,
        platform_fee,
        fee_policy_version,
        buyer_balance_after: balance_after,
        wallet_changes: vec![change(buyer_id, -price)],
        pending_changes,
    })
}

/// Lowercase hex.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}
