//! The state of one shard and `evolve`, the only way it changes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use bincode::{Decode, Encode};
use serde::{Deserialize, Serialize};

use crate::ids::{BundleId, ItemId, ListingId, PriceTestId, PurchaseId, ShardId, UserId};
use crate::model::*;
use crate::money::{is_balanced, Account};
use crate::remembered::Remembered;
use crate::retention::{base_time_ms, id_time_ms, is_forgettable, key_digest, Retention};

/// Settings that shape decisions. Fed from outside; the same in every mode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    pub shard_count: u16,
    pub escrow_hold_ms: u64,
    pub resale_hold_ms: u64,
    pub primary_fee_policy: crate::money::PrimaryFeePolicy,
    pub resale_fee_policy: crate::money::ResaleFeePolicy,
    /// Most escrow entries released by one tick (the rest wait for the next).
    pub releases_per_tick_max: usize,
    /// How long a completed command is remembered by its id (see
    /// [`crate::retention`]).
    pub idempotency_horizon_ms: u64,
    /// Most records one tick forgets per retention class.
    pub forgets_per_tick_max: u32,
    /// Purchase rate limits per buyer (see [`crate::limits`]); off unless set.
    #[serde(default)]
    pub purchase_limits: crate::limits::PurchaseLimits,
}

impl Config {
    pub fn new(shard_count: u16) -> Self {
        Self {
            shard_count,
            escrow_hold_ms: 30 * 24 * 3_600 * 1_000,
            resale_hold_ms: 0,
            primary_fee_policy: crate::money::PRIMARY_FEE_POLICY_V1,
            resale_fee_policy: crate::money::RESALE_FEE_POLICY_V1,
            releases_per_tick_max: 10_000,
            idempotency_horizon_ms: crate::retention::IDEMPOTENCY_HORIZON_MS_DEFAULT,
            forgets_per_tick_max: crate::retention::FORGETS_PER_TICK_MAX,
            purchase_limits: crate::limits::PurchaseLimits::default(),
        }
    }

    pub fn shard_of(&self, key: &str) -> ShardId {
        shard_for(key, self.shard_count)
    }
}

/// Who holds a sold serial.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
pub struct SerialHolder {
    pub user_id: UserId,
    pub purchase_id: PurchaseId,
    pub acquired_at_ms: TimestampMs,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
pub struct Listing {
    pub serial: u32,
    pub seller_id: UserId,
    pub price: i64,
    pub reserved_by: Option<PurchaseId>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
pub struct ItemState {
    pub definition: ItemDefinition,
    pub price: i64,
    pub on_sale: bool,
    /// Lowest serial never handed out (Limiteds), from 1.
    pub next_serial: u32,
    /// Serials handed out then returned (cancelled reservation, refund).
    pub returned_serials: BTreeSet<u32>,
    /// Serials reserved by a purchase in flight.
    pub reservations: BTreeMap<PurchaseId, (u32, UserId)>,
    pub holders: BTreeMap<u32, SerialHolder>,
    /// Serials held or reserved, per user (for `max_per_user`).
    pub held_per_user: BTreeMap<UserId, u32>,
    pub listings: BTreeMap<ListingId, Listing>,
    pub listing_by_serial: BTreeMap<u32, ListingId>,
    pub ended_listings: BTreeMap<ListingId, ListingEndReason>,
}

impl ItemState {
    pub fn is_limited(&self) -> bool {
        self.definition.supply.is_some()
    }

    /// The serial the next sale takes, if any is left.
    pub fn next_free_serial(&self) -> Option<u32> {
        if let Some(serial) = self.returned_serials.first() {
            return Some(*serial);
        }
        let supply = self.definition.supply?;
        (self.next_serial <= supply).then_some(self.next_serial)
    }

    fn add_held(&mut self, user: &UserId) {
        *self.held_per_user.entry(user.clone()).or_insert(0) += 1;
    }

    fn remove_held(&mut self, user: &UserId) {
        let count = self
            .held_per_user
            .get_mut(user)
            .expect("user holds a serial of the item");
        *count -= 1;
        if *count == 0 {
            self.held_per_user.remove(user);
        }
    }

    fn end_listing_of_serial(&mut self, serial: u32, reason: ListingEndReason) {
        if let Some(listing_id) = self.listing_by_serial.remove(&serial) {
            self.listings.remove(&listing_id);
            self.ended_listings.insert(listing_id, reason);
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
pub struct BundleState {
    pub creator_id: UserId,
    pub name: String,
    pub item_ids: Vec<ItemId>,
    pub price: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
pub struct EscrowEntry {
    pub creator_id: UserId,
    pub creator_share: i64,
    pub platform_fee: i64,
    pub release_at_ms: TimestampMs,
    pub frozen: bool,
}

/// A command run by this shard (its home), remembered for idempotency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
pub struct CommandRecord {
    pub fingerprint: u64,
    pub command: Command,
    pub meta: CommandMeta,
    pub progress: Progress,
    pub positions: Vec<ShardPosition>,
    pub completion: Option<Completion>,
}

/// Everything one shard knows. Changed only by `evolve`.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct ShardState {
    pub shard: ShardId,
    /// Sequence number the next event of this shard gets (from 1).
    pub next_sequence: u64,
    pub inbound_next: BTreeMap<ShardId, u64>,
    pub outbound_next: BTreeMap<ShardId, u64>,
    /// Sum of this shard's postings per account.
    pub balances: BTreeMap<Account, i64>,
    pub owned_items: crate::owned::OwnedItems,
    pub escrow: BTreeMap<PurchaseId, EscrowEntry>,
    pub escrow_due: BTreeSet<(TimestampMs, PurchaseId)>,
    pub items: BTreeMap<ItemId, ItemState>,
    pub bundles: BTreeMap<BundleId, BundleState>,
    /// Keyed by the command's key, shared with the retention queues; a
    /// completed record is kept encoded (see [`Remembered`]). A record is
    /// shared with the snapshot being saved (copy on write), so a snapshot
    /// copies the map's nodes, not the records.
    pub commands: BTreeMap<Arc<str>, Remembered>,
    pub listing_directory: BTreeMap<ListingId, ItemId>,
    pub refunds: BTreeMap<PurchaseId, RefundProgress>,
    /// Which completed commands are forgotten when (see [`crate::retention`]).
    pub retention: Retention,
    /// The purchase requests of this shard's buyers still counted by the
    /// rate limits (see [`crate::limits`]).
    pub limits: crate::limits::BuyerLimits,
    /// This shard's copy of the platform's price floors (see
    /// [`crate::pricing`]).
    pub price_floors: crate::pricing::PriceFloors,
    /// Price rules of this shard's items beyond their base price (regional
    /// prices), only for items that have some.
    pub item_pricing: BTreeMap<ItemId, crate::pricing::ItemPricing>,
    /// The price tests homed on this shard (see [`crate::pricing::PriceTest`]).
    pub price_tests: BTreeMap<PriceTestId, crate::pricing::PriceTest>,
    /// Running tests by end time, for the clock to end them.
    pub tests_ending: BTreeSet<(TimestampMs, PriceTestId)>,
    /// Taken-down items of this shard and the takedowns it runs (see
    /// [`crate::takedown`]).
    pub takedowns: crate::takedown::Takedowns,
}

impl ShardState {
    pub fn new(shard: ShardId) -> Self {
        Self {
            shard,
            next_sequence: 1,
            inbound_next: BTreeMap::new(),
            outbound_next: BTreeMap::new(),
            balances: BTreeMap::new(),
            owned_items: crate::owned::OwnedItems::default(),
            escrow: BTreeMap::new(),
            escrow_due: BTreeSet::new(),
            items: BTreeMap::new(),
            bundles: BTreeMap::new(),
            commands: BTreeMap::new(),
            listing_directory: BTreeMap::new(),
            refunds: BTreeMap::new(),
            retention: Retention::default(),
            limits: crate::limits::BuyerLimits::default(),
            price_floors: crate::pricing::PriceFloors::default(),
            item_pricing: BTreeMap::new(),
            price_tests: BTreeMap::new(),
            tests_ending: BTreeSet::new(),
            takedowns: crate::takedown::Takedowns::default(),
        }
    }

    /// A copy of this state (equal to it) whose maps that grow with every
    /// command are rebuilt from their ordered entries. A B-tree filled in
    /// about increasing key order (ids that carry their time, a shard's
    /// purchases as they come) keeps its nodes about half full: each split
    /// leaves the left half behind and fills only the right edge. Built
    /// from ordered entries, every node is full, and the map takes about
    /// half the memory for its nodes. A shard swaps its state for this
    /// copy when it takes a snapshot ([`ShardState::clone`] copies the
    /// nodes as they are), and the snapshot keeps the old state.
    pub fn compacted(&self) -> ShardState {
        let ShardState {
            shard,
            next_sequence,
            inbound_next,
            outbound_next,
            balances,
            owned_items,
            escrow,
            escrow_due,
            items,
            bundles,
            commands,
            listing_directory,
            refunds,
            retention,
            limits,
            price_floors,
            item_pricing,
            price_tests,
            tests_ending,
            takedowns,
        } = self;
        ShardState {
            shard: *shard,
            next_sequence: *next_sequence,
            inbound_next: inbound_next.clone(),
            outbound_next: outbound_next.clone(),
            balances: rebuilt_map(balances),
            owned_items: owned_items.compacted(),
            escrow: rebuilt_map(escrow),
            escrow_due: escrow_due.iter().cloned().collect(),
            items: items.clone(),
            bundles: bundles.clone(),
            commands: rebuilt_map(commands),
            listing_directory: rebuilt_map(listing_directory),
            refunds: rebuilt_map(refunds),
            retention: retention.clone(),
            limits: limits.clone(),
            price_floors: price_floors.clone(),
            item_pricing: item_pricing.clone(),
            price_tests: price_tests.clone(),
            tests_ending: tests_ending.clone(),
            takedowns: takedowns.clone(),
        }
    }

    /// Makes the copies of one id in this state share one allocation, as
    /// they do in a live shard (which clones ids instead of decoding them):
    /// a retention queue's keys are the remembered commands' keys, an
    /// escrow's due dates name its purchases with the escrow's keys,
    /// each creator's escrow entries name the creator with one id, and a
    /// user's owned pairs name the user as their wallet's key does. A
    /// decoded state holds a copy of each (a snapshot writes their text
    /// once per place); this is run once it is decoded.
    pub fn share_keys(&mut self) {
        let commands = &self.commands;
        let shared_key = |key: Arc<str>| -> Arc<str> {
            commands
                .get_key_value(&*key)
                .map_or(key, |(known, _)| Arc::clone(known))
        };
        for queue in [&mut self.retention.due, &mut self.retention.due_paid] {
            queue.share_keys(shared_key);
        }
        let escrow = &self.escrow;
        self.escrow_due = std::mem::take(&mut self.escrow_due)
            .into_iter()
            .map(|(at_ms, purchase_id)| {
                let shared = escrow
                    .get_key_value(&purchase_id)
                    .map_or(purchase_id, |(known, _)| known.clone());
                (at_ms, shared)
            })
            .collect();
        let balances = &self.balances;
        self.owned_items
            .share_users(|user_id| Self::wallet_key_in(balances, user_id));
        let mut creators: BTreeSet<UserId> = BTreeSet::new();
        for entry in self.escrow.values_mut() {
            match creators.get(&entry.creator_id) {
                Some(known) => entry.creator_id = known.clone(),
                None => {
                    creators.insert(entry.creator_id.clone());
                }
            }
        }
    }

    /// The allocation of `user_id` that names the user's wallet on this
    /// shard, if it has one.
    fn wallet_key_in(balances: &BTreeMap<Account, i64>, user_id: &UserId) -> Option<UserId> {
        match balances.get_key_value(&Account::Wallet(user_id.clone())) {
            Some((Account::Wallet(known), _)) => Some(known.clone()),
            _ => None,
        }
    }

    pub fn balance(&self, account: &Account) -> i64 {
        self.balances.get(account).copied().unwrap_or(0)
    }

    pub fn next_inbound(&self, from: ShardId) -> u64 {
        self.inbound_next.get(&from).copied().unwrap_or(1)
    }

    pub fn next_outbound(&self, to: ShardId) -> u64 {
        self.outbound_next.get(&to).copied().unwrap_or(1)
    }

    fn takedown_scan_mut(&mut self, item_id: &ItemId) -> &mut crate::takedown::TakedownScan {
        self.takedowns
            .scans
            .get_mut(item_id)
            .expect("event refers to a takedown scanning this shard")
    }

    fn item_mut(&mut self, item_id: &ItemId) -> &mut ItemState {
        self.items
            .get_mut(item_id)
            .expect("event refers to an item of this shard")
    }

    fn listing_mut(&mut self, item_id: &ItemId, listing_id: &ListingId) -> &mut Listing {
        self.item_mut(item_id)
            .listings
            .get_mut(listing_id)
            .expect("event refers to a listing of this shard")
    }

    fn test_mut(&mut self, test_id: &PriceTestId) -> &mut crate::pricing::PriceTest {
        self.price_tests
            .get_mut(test_id)
            .expect("event refers to a price test of this shard")
    }

    fn record_mut(&mut self, key: &str) -> &mut CommandRecord {
        self.commands
            .get_mut(key)
            .expect("event refers to a command of this shard")
            .running_mut()
    }

    /// Completes the running command under `key` (`complete` sets its
    /// completion), queues it to be forgotten if its kind is (paid primary
    /// purchases in their own queue: a refund reads them for as long as the
    /// escrow is held; the others by the horizon), and keeps it encoded.
    /// One search of the commands for all three.
    fn complete_command(&mut self, key: &str, complete: impl FnOnce(&mut CommandRecord)) {
        let (key, remembered) = self
            .commands
            .range_mut::<str, _>((
                std::ops::Bound::Included(key),
                std::ops::Bound::Included(key),
            ))
            .next()
            .expect("event refers to a command of this shard");
        let record = remembered.running_mut();
        assert!(record.completion.is_none(), "a command completes once");
        complete(record);
        assert!(
            record.completion.is_some(),
            "a completed command has its completion"
        );
        if is_forgettable(&record.command) {
            let paid = matches!(record.command, Command::Purchase { .. })
                && record
                    .completion
                    .as_ref()
                    .is_some_and(|completion| completion.result.is_ok());
            let entry = (base_time_ms(key, &record.meta), key.clone());
            let queue = if paid {
                &mut self.retention.due_paid
            } else {
                &mut self.retention.due
            };
            assert!(
                queue.insert(entry, record.meta.at_ms),
                "a command is queued once"
            );
        }
        remembered.seal_if_completed(key);
    }

    /// Forgets the `count` oldest records of a retention queue, each with a
    /// base time before `before_ms`.
    fn forget_oldest(&mut self, paid: bool, count: u32, before_ms: TimestampMs) {
        for _ in 0..count {
            let queue = if paid {
                &mut self.retention.due_paid
            } else {
                &mut self.retention.due
            };
            let (base_ms, key) = queue
                .pop_first()
                .expect("a tick forgets only queued commands");
            assert!(base_ms < before_ms, "a command is forgotten after its time");
            let remembered = self
                .commands
                .remove(&*key)
                .expect("a queued command is remembered until forgotten");
            let record = remembered.record(&key);
            assert!(
                record.completion.is_some(),
                "only completed commands are forgotten"
            );
            if let Command::Purchase { purchase_id, .. } = &record.command {
                let refund = self.refunds.remove(purchase_id);
                assert!(
                    matches!(refund, None | Some(RefundProgress::Refunded { .. })),
                    "a purchase is not forgotten while its refund runs"
                );
            }
            if id_time_ms(&key).is_none() {
                self.retention.forgotten_digests.insert(key_digest(&key));
            }
        }
    }

    fn apply_postings(&mut self, postings: &[crate::money::Posting]) {
        assert!(
            is_balanced(postings),
            "postings of an event must sum to zero"
        );
        for posting in postings {
            let balance = self.balances.entry(posting.account.clone()).or_insert(0);
            *balance = balance
                .checked_add(posting.amount)
                .expect("account balance overflow");
            if let Account::Wallet(_) | Account::Pending(_) = posting.account {
                assert!(
                    *balance >= 0,
                    "a wallet or escrow account went negative: {:?}",
                    posting.account
                );
            }
        }
    }
}

/// The starting progress of a command accepted at its home shard.
pub fn initial_progress(command: &Command) -> Progress {
    match command {
        Command::Grant { .. } => Progress::Crediting,
        Command::CreateBundle { item_ids, .. } => {
            let distinct: BTreeSet<&ItemId> = item_ids.iter().collect();
            Progress::Describing {
                answers: Vec::new(),
                expected: distinct.len() as u32,
            }
        }
        Command::Purchase { .. } | Command::ResalePurchase { .. } => Progress::Reserving,
        Command::PurchaseCart { lines, .. } => Progress::Cart {
            answers: vec![None; lines.len()],
        },
        Command::CreateListing { .. } => Progress::Listing,
        Command::CancelListing { .. } => Progress::Cancelling,
        Command::Refund { .. } => Progress::Refunding,
        Command::SetPriceFloor { .. } => Progress::ReplicatingFloor { acknowledged: 0 },
        Command::StartPriceTest { .. } => Progress::StartingTest,
        Command::TakeDown { .. } => Progress::TakingDown,
        Command::SetRegionalPrices { .. }
        | Command::RecordExposures { .. }
        | Command::EndPriceTest { .. } => Progress::Crediting,
        Command::PublishItem(_) | Command::Reprice { .. } | Command::SetOnSale { .. } => {
            Progress::Crediting
        }
    }
}

/// Applies one event. Total for every event `decide` can produce; a failed
/// assertion here is a bug in `decide` (or a corrupt log) and must crash.
pub fn evolve(state: &mut ShardState, event: &Event) {
    state.next_sequence += 1;
    state.apply_postings(event.postings());
    match event {
        Event::MessageReceived { from, sequence } => {
            assert_eq!(
                state.next_inbound(*from),
                *sequence,
                "messages are consumed in order, once"
            );
            state.inbound_next.insert(*from, sequence + 1);
        }
        Event::MessageSent { to, sequence, .. } => {
            assert_eq!(
                state.next_outbound(*to),
                *sequence,
                "messages are numbered densely"
            );
            state.outbound_next.insert(*to, sequence + 1);
        }
        Event::CommandAccepted {
            key,
            fingerprint,
            command,
            meta,
        } => {
            let record = CommandRecord {
                fingerprint: *fingerprint,
                command: command.clone(),
                meta: meta.clone(),
                progress: initial_progress(command),
                positions: Vec::new(),
                completion: None,
            };
            let previous = state
                .commands
                .insert(Arc::from(key.as_str()), Remembered::new(key, record));
            // Only a listing cancel may start again after an earlier attempt finished.
            assert!(
                previous.is_none_or(|p| p.is_completed()
                    && matches!(p.record(key).command, Command::CancelListing { .. })),
                "a command id is accepted once"
            );
        }
        Event::CommandProgressed {
            key,
            progress,
            position,
        } => {
            let record = state.record_mut(key);
            assert!(
                record.completion.is_none(),
                "a completed command does not progress"
            );
            record.progress = progress.clone();
            record.positions.extend(position);
        }
        Event::CommandCompleted { key, completion } => {
            state.complete_command(key, |record| record.completion = Some(completion.clone()));
        }
        Event::PurchaseCompleted {
            key,
            completion,
            reservation,
        } => {
            assert!(
                completion.result.is_ok(),
                "only a paid purchase completes with its reservation"
            );
            state.complete_command(key, |record| {
                record.progress = Progress::Paid {
                    reservation: reservation.clone(),
                };
                record.completion = Some(completion.clone());
            });
        }
        Event::CommandsForgotten {
            before_ms,
            count,
            paid_before_ms,
            paid_count,
        } => {
            assert!(
                paid_before_ms <= before_ms,
                "paid purchases are kept at least as long as the horizon"
            );
            state.forget_oldest(false, *count, *before_ms);
            state.forget_oldest(true, *paid_count, *paid_before_ms);
            let mark = &mut state.retention.forgotten_before_ms;
            *mark = (*mark).max(*before_ms);
        }
        Event::PurchaseAdmitted {
            buyer_id,
            subject,
            at_ms,
            expire_before_ms,
        } => state
            .limits
            .admit(buyer_id, subject, *at_ms, *expire_before_ms),
        Event::CommandWithdrawn { key, .. } => {
            let remembered = state
                .commands
                .remove(key.as_str())
                .expect("a withdrawn command was accepted");
            let record = remembered
                .running()
                .expect("only a running command is withdrawn");
            assert!(
                matches!(
                    record.command,
                    Command::Purchase { .. }
                        | Command::ResalePurchase { .. }
                        | Command::PurchaseCart { .. }
                ),
                "only a purchase is withdrawn"
            );
        }
        Event::RegionalPricesSet { item_id, prices } => {
            assert!(
                state.items.contains_key(item_id),
                "regional prices are set on the item's shard"
            );
            let pricing = state.item_pricing.entry(item_id.clone()).or_default();
            pricing.regional = prices.iter().cloned().collect();
            if pricing.is_empty() {
                state.item_pricing.remove(item_id);
            }
        }
        Event::PriceTestStarted {
            test_id,
            item_id,
            arms,
            ends_at_ms,
        } => {
            assert!(
                state.items.contains_key(item_id),
                "a test prices an item of its shard"
            );
            state.item_pricing.entry(item_id.clone()).or_default().test =
                Some(crate::pricing::RunningTest {
                    test_id: test_id.clone(),
                    arms: arms.clone(),
                    ends_at_ms: *ends_at_ms,
                });
        }
        Event::ItemTakenDown { item_id, .. } => {
            state.item_mut(item_id).on_sale = false;
            let new = state.takedowns.items.insert(item_id.clone());
            assert!(new, "an item is taken down once");
        }
        Event::TakedownRefunding {
            item_id,
            shard_count,
            ..
        } => {
            let previous = state.takedowns.homed.insert(
                item_id.clone(),
                crate::takedown::TakedownProgress {
                    shard_count: *shard_count,
                    ..Default::default()
                },
            );
            assert!(previous.is_none(), "a takedown refunds once");
        }
        Event::TakedownScanStarted { item_id, reply_to } => {
            let previous = state.takedowns.scans.insert(
                item_id.clone(),
                crate::takedown::TakedownScan::new(*reply_to),
            );
            assert!(previous.is_none(), "a shard scans for a takedown once");
        }
        Event::TakedownScanned {
            item_id,
            cursor,
            scanned,
            in_flight,
        } => {
            let scan = state.takedown_scan_mut(item_id);
            assert!(!scan.scanned, "a finished scan does not go on");
            scan.cursor = cursor.clone();
            scan.scanned = *scanned;
            for purchase_id in in_flight {
                scan.pending.insert(purchase_id.clone());
                scan.in_flight.insert(purchase_id.clone());
            }
        }
        Event::TakedownRefundStarted {
            item_id,
            purchase_id,
            refund_id,
        } => {
            let scan = state.takedown_scan_mut(item_id);
            scan.pending.insert(purchase_id.clone());
            let previous = state
                .takedowns
                .refunds
                .insert(refund_id.clone(), (item_id.clone(), purchase_id.clone()));
            assert!(previous.is_none(), "a takedown refunds a purchase once");
        }
        Event::TakedownPurchaseFinished {
            item_id,
            purchase_id,
            paid,
        } => {
            let scan = state.takedown_scan_mut(item_id);
            assert!(
                scan.in_flight.remove(purchase_id),
                "a takedown waited for purchase {purchase_id}"
            );
            if !*paid {
                scan.pending.remove(purchase_id);
            }
        }
        Event::TakedownSaleResolved {
            item_id,
            purchase_id,
            outcome,
        } => {
            let scan = state.takedown_scan_mut(item_id);
            scan.pending.remove(purchase_id);
            scan.tally.count(outcome);
            let refund_id = crate::takedown::refund_id(item_id, purchase_id);
            state.takedowns.refunds.remove(&refund_id);
        }
        Event::TakedownScanFinished { item_id, tally } => {
            let scan = state
                .takedowns
                .scans
                .remove(item_id)
                .expect("a finished scan was started");
            assert!(scan.is_done(), "a scan finishes with nothing pending");
            assert_eq!(&scan.tally, tally, "a scan reports its own tally");
            state
                .takedowns
                .finished
                .insert(item_id.clone(), scan.reply_to);
        }
        Event::TakedownRefundAwaited {
            item_id,
            purchase_id,
        } => {
            let scan = state.takedown_scan_mut(item_id);
            assert!(
                scan.pending.contains(purchase_id),
                "a takedown awaits the refund of a purchase it holds"
            );
            scan.in_flight.insert(purchase_id.clone());
        }
        Event::TakedownLateSale {
            item_id,
            purchase_id,
            reply_to,
        } => {
            let scan = state
                .takedowns
                .scans
                .entry(item_id.clone())
                .or_insert_with(|| crate::takedown::TakedownScan {
                    scanned: true,
                    late: true,
                    ..crate::takedown::TakedownScan::new(*reply_to)
                });
            scan.pending.insert(purchase_id.clone());
        }
        Event::TakedownShardReported {
            item_id,
            tally,
            shards_reported,
            ..
        } => {
            let progress = state
                .takedowns
                .homed
                .get_mut(item_id)
                .expect("a shard reports to a refunding takedown");
            progress.tally = *tally;
            progress.shards_reported = *shards_reported;
            assert!(progress.shards_reported <= progress.shard_count);
        }
        Event::PriceTestClosed {
            test_id, item_id, ..
        } => {
            if let Some(pricing) = state.item_pricing.get_mut(item_id) {
                if pricing
                    .test
                    .as_ref()
                    .is_some_and(|test| &test.test_id == test_id)
                {
                    pricing.test = None;
                }
                if pricing.is_empty() {
                    state.item_pricing.remove(item_id);
                }
            }
        }
        Event::PriceTestOpened {
            test_id,
            item_id,
            arms,
            ends_at_ms,
            apply_winner,
        } => {
            let previous = state.price_tests.insert(
                test_id.clone(),
                crate::pricing::PriceTest {
                    item_id: item_id.clone(),
                    creator_id: None,
                    arms: arms.clone(),
                    ends_at_ms: *ends_at_ms,
                    apply_winner: *apply_winner,
                    counts: vec![crate::pricing::ArmCounts::default(); arms.len()],
                    outcome: None,
                },
            );
            assert!(previous.is_none(), "a price test is opened once");
        }
        Event::PriceTestRunning {
            test_id,
            creator_id,
        } => {
            let test = state.test_mut(test_id);
            assert!(test.creator_id.is_none(), "a price test starts once");
            test.creator_id = Some(creator_id.clone());
            let ends_at_ms = test.ends_at_ms;
            state.tests_ending.insert((ends_at_ms, test_id.clone()));
        }
        Event::PriceTestAborted { test_id } => {
            let test = state
                .price_tests
                .remove(test_id)
                .expect("an aborted test was opened");
            assert!(
                test.creator_id.is_none(),
                "only a test that never ran is aborted"
            );
        }
        Event::PriceTestExposed {
            test_id, exposures, ..
        } => {
            let test = state.test_mut(test_id);
            assert_eq!(exposures.len(), test.counts.len(), "one total per arm");
            for (counts, total) in test.counts.iter_mut().zip(exposures) {
                assert!(*total >= counts.exposures, "exposures only grow");
                counts.exposures = *total;
            }
        }
        Event::PriceTestSold {
            test_id,
            arm,
            purchases,
            revenue,
            ..
        } => {
            let counts = &mut state.test_mut(test_id).counts[usize::from(*arm)];
            counts.purchases = *purchases;
            counts.revenue = *revenue;
        }
        Event::PriceTestEnded {
            test_id,
            winner,
            applied_price,
        } => {
            let test = state.test_mut(test_id);
            assert!(test.is_running(), "only a running test ends");
            test.outcome = Some(crate::pricing::TestOutcome {
                winner: *winner,
                applied_price: *applied_price,
            });
            let key = (test.ends_at_ms, test_id.clone());
            assert!(
                state.tests_ending.remove(&key),
                "a running test waits for its end"
            );
        }
        Event::PriceFloorSet {
            kind,
            version,
            price,
            effective_from_ms,
        }
        | Event::PriceFloorReplicated {
            kind,
            version,
            price,
            effective_from_ms,
        } => state.price_floors.insert(
            *kind,
            *version,
            crate::pricing::FloorVersion {
                price: *price,
                effective_from_ms: *effective_from_ms,
            },
        ),
        Event::CurrencyGranted { .. } => {}
        Event::ItemPublished { definition } => {
            let item = ItemState {
                definition: definition.clone(),
                price: definition.price,
                on_sale: true,
                next_serial: 1,
                returned_serials: BTreeSet::new(),
                reservations: BTreeMap::new(),
                holders: BTreeMap::new(),
                held_per_user: BTreeMap::new(),
                listings: BTreeMap::new(),
                listing_by_serial: BTreeMap::new(),
                ended_listings: BTreeMap::new(),
            };
            assert!(
                state
                    .items
                    .insert(definition.item_id.clone(), item)
                    .is_none(),
                "an item is published once"
            );
        }
        Event::ItemRepriced { item_id, price } => state.item_mut(item_id).price = *price,
        Event::ItemSaleToggled { item_id, on_sale } => state.item_mut(item_id).on_sale = *on_sale,
        Event::BundleCreated {
            bundle_id,
            creator_id,
            name,
            item_ids,
            price,
        } => {
            let bundle = BundleState {
                creator_id: creator_id.clone(),
                name: name.clone(),
                item_ids: item_ids.clone(),
                price: *price,
            };
            assert!(
                state.bundles.insert(bundle_id.clone(), bundle).is_none(),
                "a bundle is created once"
            );
        }
        Event::SerialReserved {
            item_id,
            serial,
            purchase_id,
            buyer_id,
        } => {
            let item = state.item_mut(item_id);
            assert_eq!(
                item.next_free_serial(),
                Some(*serial),
                "the lowest free serial is reserved"
            );
            if !item.returned_serials.remove(serial) {
                item.next_serial += 1;
            }
            item.add_held(buyer_id);
            assert!(item
                .reservations
                .insert(purchase_id.clone(), (*serial, buyer_id.clone()))
                .is_none());
        }
        Event::ReservationCancelled {
            item_id,
            serial,
            purchase_id,
        } => {
            let item = state.item_mut(item_id);
            let (reserved, buyer) = item
                .reservations
                .remove(purchase_id)
                .expect("cancelled reservation exists");
            assert_eq!(reserved, *serial);
            item.remove_held(&buyer);
            item.returned_serials.insert(*serial);
        }
        Event::SerialSold {
            item_id,
            serial,
            purchase_id,
            buyer_id,
            at_ms,
            ..
        } => {
            let item = state.item_mut(item_id);
            let (reserved, buyer) = item
                .reservations
                .remove(purchase_id)
                .expect("sold serial was reserved");
            assert!(reserved == *serial && &buyer == buyer_id);
            let holder = SerialHolder {
                user_id: buyer,
                purchase_id: purchase_id.clone(),
                acquired_at_ms: *at_ms,
            };
            assert!(
                item.holders.insert(*serial, holder).is_none(),
                "a serial has one owner"
            );
        }
        Event::BuyerDebited {
            buyer_id,
            granted_items,
            ..
        } => {
            // The pairs hold the buyer's id as their wallet's key does (a
            // debited buyer has one, unless the price was 0).
            let wallet_key = ShardState::wallet_key_in(&state.balances, buyer_id);
            for item_id in granted_items {
                let inserted = match &wallet_key {
                    Some(buyer_id) => state.owned_items.insert_shared_user(buyer_id, item_id),
                    None => state.owned_items.insert(buyer_id, item_id),
                };
                assert!(inserted, "a non-limited item is owned at most once");
            }
        }
        Event::SaleSettled {
            purchase_id,
            creator_id,
            creator_share,
            platform_fee,
            release_at_ms,
            ..
        } => {
            let entry = EscrowEntry {
                creator_id: creator_id.clone(),
                creator_share: *creator_share,
                platform_fee: *platform_fee,
                release_at_ms: *release_at_ms,
                frozen: false,
            };
            assert!(
                state.escrow.insert(purchase_id.clone(), entry).is_none(),
                "a sale settles once"
            );
            state
                .escrow_due
                .insert((*release_at_ms, purchase_id.clone()));
        }
        Event::SellerCredited { .. } => {}
        Event::EscrowReleased { purchase_id, .. } => {
            let entry = state
                .escrow
                .remove(purchase_id)
                .expect("released escrow exists");
            assert!(!entry.frozen, "frozen escrow is not released");
            assert!(state
                .escrow_due
                .remove(&(entry.release_at_ms, purchase_id.clone())));
        }
        Event::ListingCreated {
            listing_id,
            item_id,
            serial,
            seller_id,
            price,
        } => {
            let item = state.item_mut(item_id);
            assert!(
                item.listing_by_serial
                    .insert(*serial, listing_id.clone())
                    .is_none(),
                "a serial is listed once"
            );
            let listing = Listing {
                serial: *serial,
                seller_id: seller_id.clone(),
                price: *price,
                reserved_by: None,
            };
            assert!(item.listings.insert(listing_id.clone(), listing).is_none());
        }
        Event::ListingEnded {
            item_id,
            serial,
            reason,
            ..
        } => {
            state
                .item_mut(item_id)
                .end_listing_of_serial(*serial, *reason);
        }
        Event::ListingReserved {
            listing_id,
            item_id,
            purchase_id,
        } => {
            let listing = state.listing_mut(item_id, listing_id);
            assert!(
                listing.reserved_by.is_none(),
                "a listing is reserved by one purchase"
            );
            listing.reserved_by = Some(purchase_id.clone());
        }
        Event::ListingReservationCancelled {
            listing_id,
            item_id,
            purchase_id,
        } => {
            let listing = state.listing_mut(item_id, listing_id);
            assert_eq!(listing.reserved_by.as_ref(), Some(purchase_id));
            listing.reserved_by = None;
        }
        Event::SerialTransferred {
            item_id,
            serial,
            purchase_id,
            from_user_id,
            to_user_id,
            at_ms,
            ..
        } => {
            let item = state.item_mut(item_id);
            let holder = item
                .holders
                .get_mut(serial)
                .expect("transferred serial has a holder");
            assert_eq!(
                &holder.user_id, from_user_id,
                "only the holder's serial moves"
            );
            *holder = SerialHolder {
                user_id: to_user_id.clone(),
                purchase_id: purchase_id.clone(),
                acquired_at_ms: *at_ms,
            };
            item.remove_held(from_user_id);
            item.add_held(to_user_id);
            item.end_listing_of_serial(*serial, ListingEndReason::SerialMoved);
        }
        Event::ListingRegistered {
            listing_id,
            item_id,
        } => {
            state
                .listing_directory
                .insert(listing_id.clone(), item_id.clone());
        }
        Event::RefundProgressed {
            purchase_id,
            progress,
        } => match progress {
            RefundProgress::Abandoned => {
                state.refunds.remove(purchase_id);
            }
            other => {
                state.refunds.insert(purchase_id.clone(), other.clone());
            }
        },
        Event::EscrowFrozen { purchase_id } => {
            state
                .escrow
                .get_mut(purchase_id)
                .expect("frozen escrow exists")
                .frozen = true;
        }
        Event::EscrowUnfrozen { purchase_id } => {
            state
                .escrow
                .get_mut(purchase_id)
                .expect("unfrozen escrow exists")
                .frozen = false;
        }
        Event::EscrowReversed { purchase_id, .. } => {
            let entry = state
                .escrow
                .remove(purchase_id)
                .expect("reversed escrow exists");
            assert!(entry.frozen, "escrow is frozen before it is reversed");
            assert!(state
                .escrow_due
                .remove(&(entry.release_at_ms, purchase_id.clone())));
        }
        Event::SerialRevoked {
            item_id,
            serial,
            owner_id,
            ..
        } => {
            let item = state.item_mut(item_id);
            let holder = item
                .holders
                .remove(serial)
                .expect("revoked serial has a holder");
            assert_eq!(&holder.user_id, owner_id);
            item.remove_held(owner_id);
            item.end_listing_of_serial(*serial, ListingEndReason::SerialMoved);
            item.returned_serials.insert(*serial);
        }
        Event::BuyerRefunded {
            buyer_id,
            revoked_items,
            ..
        } => {
            for item_id in revoked_items {
                assert!(
                    state.owned_items.remove(buyer_id, item_id),
                    "a revoked item was owned"
                );
            }
        }
    }
}

/// `map` rebuilt from its ordered entries: full nodes (see
/// [`ShardState::compacted`]).
fn rebuilt_map<K: Ord + Clone, V: Clone>(map: &BTreeMap<K, V>) -> BTreeMap<K, V> {
    map.iter()
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect()
}
