//! The projector's side: applies a shard's records to the read models,
//! event by event, idempotently and independently of the other shards (see
//! the crate docs).

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;

use futures_util::StreamExt;
use ledger_core::codec::{BatchRecord, Logged};
use ledger_core::{shard_for, Event, ShardId};
use projectors::{day_of, project, Change, SaleEscrowChange};
use scylla::serialize::row::SerializeRow;
use scylla::statement::prepared::PreparedStatement;

use crate::error::{from_cql, to_cql, CqlReadModelError};
use crate::layout::{
    owner_bucket, sale_bucket, serial_key, transaction_bucket, write_timestamp,
    LAST_TIMESTAMP_SLOT, TIMESTAMP_SLOTS_PER_EVENT,
};
use crate::models::CqlReadModels;
use crate::ownership::single_writer_key;

/// A write not sent yet.
type PendingWrite<'models> =
    Pin<Box<dyn Future<Output = Result<(), CqlReadModelError>> + Send + 'models>>;

/// Writes collected while a chunk is applied, sent concurrently (bounded)
/// on `flush`. Their order does not matter: identity rows carry their
/// event's write timestamp, the rest are keyed by their event.
struct Writes<'models> {
    models: &'models CqlReadModels,
    pending: Vec<PendingWrite<'models>>,
}

impl<'models> Writes<'models> {
    fn new(models: &'models CqlReadModels) -> Self {
        Self {
            models,
            pending: Vec::new(),
        }
    }

    fn push<Values>(
        &mut self,
        statement: &'models PreparedStatement,
        values: Values,
        operation: &'static str,
    ) where
        Values: SerializeRow + Send + 'models,
    {
        let models = self.models;
        self.pending.push(Box::pin(async move {
            models.execute(statement, values, operation).await
        }));
    }

    async fn flush(&mut self) -> Result<(), CqlReadModelError> {
        let pending = std::mem::take(&mut self.pending);
        let mut results = futures_util::stream::iter(pending)
            .buffer_unordered(self.models.settings.write_concurrency);
        while let Some(result) = results.next().await {
            result?;
        }
        Ok(())
    }
}

/// A row of partial sums: an entity's figures contributed by one shard.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum SumKey {
    /// wallet, pending
    Balance(String),
    /// pending, released, lifetime, sales_count
    Earnings(String),
    /// sold, sales_count
    ItemCounts(String),
    /// An item's UTC day: primary_count, primary_revenue, resale_count,
    /// resale_revenue, refunded_count, refunded_revenue
    ItemDay(String, u64),
}

/// Figures per sum row (the widest row's).
const SUM_VALUES: usize = 6;

/// A sum row as loaded at the start of a chunk, then folded.
#[derive(Debug, Clone, Copy, Default)]
struct SumRow {
    values: [i64; SUM_VALUES],
    /// `applied_through` as stored: events at or below it are already in.
    loaded_through: u64,
    /// The last event folded in.
    applied_through: u64,
    changed: bool,
}

impl SumRow {
    fn add(&mut self, key: &SumKey, sequence: u64, deltas: [i64; SUM_VALUES]) {
        if sequence <= self.loaded_through {
            return;
        }
        for (value, delta) in self.values.iter_mut().zip(deltas) {
            *value = value
                .checked_add(delta)
                .unwrap_or_else(|| panic!("{key:?} overflows at event {sequence}"));
        }
        self.applied_through = sequence;
        self.changed = true;
    }
}

/// The sum rows a chunk touches, by key.
type Sums = BTreeMap<SumKey, SumRow>;

/// The item, UTC day and price of a primary item sale, by purchase id.
type SaleDays = BTreeMap<String, (String, u64, i64)>;

/// The sum rows a change adds to. A refund adds to the day of the sale it
/// restates, found in `sale_days` (a refund of a bundle, or of no item
/// sale, is not there and adds nothing).
fn sum_changes(change: &Change, sale_days: &SaleDays) -> Vec<(SumKey, [i64; SUM_VALUES])> {
    match change {
        Change::BalanceDelta {
            user_id,
            wallet_delta,
            pending_delta,
        } => vec![(
            SumKey::Balance(user_id.to_string()),
            [*wallet_delta, *pending_delta, 0, 0, 0, 0],
        )],
        Change::EarningsDelta {
            creator_id,
            pending,
            released,
            lifetime,
            sales_count,
        } => vec![(
            SumKey::Earnings(creator_id.to_string()),
            [*pending, *released, *lifetime, *sales_count, 0, 0],
        )],
        Change::SoldDelta { item_id, delta } => vec![(
            SumKey::ItemCounts(item_id.to_string()),
            [*delta, 0, 0, 0, 0, 0],
        )],
        Change::SaleRecorded {
            item_id,
            price,
            resale,
            at_ms,
            ..
        } => {
            let day = if *resale {
                [0, 0, 1, *price, 0, 0]
            } else {
                [1, *price, 0, 0, 0, 0]
            };
            vec![
                (SumKey::ItemCounts(item_id.to_string()), [0, 1, 0, 0, 0, 0]),
                (SumKey::ItemDay(item_id.to_string(), day_of(*at_ms)), day),
            ]
        }
        Change::SaleRefunded { purchase_id } => match sale_days.get(purchase_id.as_str()) {
            Some((item_id, day, price)) => vec![(
                SumKey::ItemDay(item_id.clone(), *day),
                [0, 0, 0, 0, 1, *price],
            )],
            None => Vec::new(),
        },
        _ => Vec::new(),
    }
}

fn shard_column(shard: ShardId) -> i32 {
    i32::from(shard.0)
}

impl CqlReadModels {
    /// Applies one shard's records (consecutive, ascending sequence), the
    /// events of each in order. Events below the shard's checkpoint, and
    /// repeated records, are skipped; the checkpoint advances, to the end of
    /// the last record, only after every row of the new events is written,
    /// so a crash and a redelivery from an earlier point change nothing.
    /// Only one caller at a time may apply a given shard (the projector
    /// owning it); different shards may be applied concurrently.
    ///
    /// A gap (a record starting after the next event expected, without it)
    /// is an error and nothing is written. Panics if a record belongs to
    /// another shard, or if two different records hold the same event.
    pub async fn apply(
        &self,
        shard: ShardId,
        records: &[BatchRecord],
    ) -> Result<(), CqlReadModelError> {
        self.apply_records(shard, records, true).await
    }

    /// [`CqlReadModels::apply`] without the final checkpoint write: the state
    /// a crash leaves after the rows and before the checkpoint. For tests.
    #[cfg(feature = "cql-tests")]
    #[doc(hidden)]
    pub async fn apply_without_checkpoint(
        &self,
        shard: ShardId,
        records: &[BatchRecord],
    ) -> Result<(), CqlReadModelError> {
        self.apply_records(shard, records, false).await
    }

    /// The next sequence the shard's projection expects: 1 (the first
    /// sequence of a shard) when nothing was projected yet.
    pub async fn next_sequence(&self, shard: ShardId) -> Result<u64, CqlReadModelError> {
        let stored: Option<(i64,)> = self
            .select_first(
                &self.statements.select_checkpoint,
                (shard_column(shard),),
                "checkpoint read",
            )
            .await?;
        match stored {
            Some((next_sequence,)) => from_cql("checkpoint", next_sequence),
            None => Ok(1),
        }
    }

    async fn apply_records(
        &self,
        shard: ShardId,
        records: &[BatchRecord],
        write_checkpoint: bool,
    ) -> Result<(), CqlReadModelError> {
        let next_sequence = self.next_sequence(shard).await?;
        // The records holding the events the checkpoint expects next, in
        // order; what the checkpoint (or this call) already has is skipped,
        // a gap refused.
        let mut fresh: Vec<&BatchRecord> = Vec::new();
        let mut expected = next_sequence;
        for record in records {
            assert_eq!(
                record.shard, shard,
                "the record of shard {} from event {} was handed to the projection of shard {shard}",
                record.shard, record.first_sequence
            );
            assert!(
                !record.is_empty(),
                "the record of shard {shard} from event {} holds no entry",
                record.first_sequence
            );
            let overlapped = fresh.iter().find(|taken| {
                taken.first_sequence <= record.last_sequence()
                    && record.first_sequence <= taken.last_sequence()
            });
            if let Some(taken) = overlapped {
                assert_eq!(
                    taken.hash,
                    record.hash,
                    "two different records of shard {shard} hold event {}",
                    taken.first_sequence.max(record.first_sequence)
                );
            }
            if record.last_sequence() < expected {
                continue;
            }
            if record.first_sequence > expected {
                return Err(CqlReadModelError::SequenceGap {
                    shard,
                    expected,
                    found: record.first_sequence,
                });
            }
            fresh.push(record);
            expected = record.next_sequence();
        }
        let Some(last) = fresh.last() else {
            return Ok(());
        };
        let last_sequence = last.last_sequence();

        // The first record may start below the checkpoint: its events there
        // are already applied.
        let mut projected = Vec::new();
        for logged in fresh
            .iter()
            .flat_map(|record| record.logged())
            .filter(|logged| logged.sequence >= next_sequence)
        {
            let event = logged.event().map_err(|source| CqlReadModelError::Decode {
                shard,
                sequence: logged.sequence,
                source,
            })?;
            self.check_single_writer(shard, logged.sequence, &event);
            let changes = project(&logged, &event);
            assert!(
                changes.len() <= TIMESTAMP_SLOTS_PER_EVENT,
                "event {} of shard {shard} has {} read-model changes",
                logged.sequence,
                changes.len()
            );
            projected.push((logged, changes));
        }

        let sale_days = self.refunded_sale_days(&projected).await?;
        let keys: BTreeSet<SumKey> = projected
            .iter()
            .flat_map(|(_, changes)| changes.iter())
            .flat_map(|change| sum_changes(change, &sale_days))
            .map(|(key, _)| key)
            .collect();
        let mut sums = self.load_sums(shard, keys).await?;

        let mut writes = Writes::new(self);
        // Delivery marks promise that a message's effects are visible: they
        // go after every row and sum of the chunk.
        let mut deliveries = Writes::new(self);
        let mut bucket_entries: BTreeSet<(&'static str, String, u64)> = BTreeSet::new();
        for (logged, changes) in &projected {
            for (slot, change) in changes.iter().enumerate() {
                let timestamp = write_timestamp(logged.sequence, slot);
                for (key, deltas) in sum_changes(change, &sale_days) {
                    sums.entry(key.clone())
                        .or_default()
                        .add(&key, logged.sequence, deltas);
                }
                if let Change::MessageConsumed { from, to, sequence } = change {
                    deliveries.push(
                        &self.statements.insert_delivery,
                        (
                            shard_column(*from),
                            shard_column(*to),
                            to_cql("delivery sequence", *sequence)?,
                            timestamp,
                        ),
                        "delivery write",
                    );
                } else {
                    self.write_change(&mut writes, &mut bucket_entries, logged, timestamp, change)
                        .await?;
                }
            }
        }
        writes.flush().await?;

        // Sums after the rows they summarize, then the delivery marks, the
        // checkpoint last.
        self.write_sums(&mut writes, shard, &sums)?;
        writes.flush().await?;
        deliveries.flush().await?;
        if write_checkpoint {
            self.execute(
                &self.statements.insert_checkpoint,
                (
                    shard_column(shard),
                    to_cql("checkpoint", last_sequence + 1)?,
                    write_timestamp(last_sequence, LAST_TIMESTAMP_SLOT),
                ),
                "checkpoint write",
            )
            .await?;
        }
        tracing::debug!(
            shard = shard.0,
            first = next_sequence,
            last = last_sequence,
            "projected into cql read models"
        );
        Ok(())
    }

    /// The item, day and price of every sale the chunk's refunds restate:
    /// from a sale earlier in the chunk, else as stored (the purchase's home
    /// shard, this one, logged the sale before its refund, so a sale before
    /// the chunk is written).
    async fn refunded_sale_days(
        &self,
        projected: &[(Logged<'_>, Vec<Change>)],
    ) -> Result<SaleDays, CqlReadModelError> {
        let mut in_chunk = SaleDays::new();
        let mut refunded = SaleDays::new();
        for change in projected.iter().flat_map(|(_, changes)| changes.iter()) {
            match change {
                Change::SaleRecorded {
                    item_id,
                    price,
                    purchase_id,
                    resale: false,
                    at_ms,
                } => {
                    in_chunk.insert(
                        purchase_id.to_string(),
                        (item_id.to_string(), day_of(*at_ms), *price),
                    );
                }
                Change::SaleRefunded { purchase_id } => {
                    let sale = match in_chunk.get(purchase_id.as_str()) {
                        Some(sale) => Some(sale.clone()),
                        None => self
                            .select_first::<(String, i64, i64)>(
                                &self.statements.select_item_sale_day,
                                (purchase_id.as_str(),),
                                "item sale day read",
                            )
                            .await?
                            .map(|(item_id, day, price)| {
                                from_cql("day", day).map(|day| (item_id, day, price))
                            })
                            .transpose()?,
                    };
                    if let Some(sale) = sale {
                        refunded.insert(purchase_id.to_string(), sale);
                    }
                }
                _ => {}
            }
        }
        Ok(refunded)
    }

    /// Asserts the single-writer proof of [`crate::ownership`] when the
    /// shard count is known.
    fn check_single_writer(&self, shard: ShardId, sequence: u64, event: &Event) {
        let (Some(shard_count), Some(key)) = (self.settings.shard_count, single_writer_key(event))
        else {
            return;
        };
        assert_eq!(
            shard_for(&key, shard_count),
            shard,
            "event {sequence} ({}) of shard {shard} writes rows of {key}, which only its own shard may write",
            event.type_name()
        );
    }

    /// Loads the stored part of each sum row for this shard.
    async fn load_sums(
        &self,
        shard: ShardId,
        keys: BTreeSet<SumKey>,
    ) -> Result<Sums, CqlReadModelError> {
        let loads = keys.into_iter().map(|key| async move {
            let row = self.load_sum(shard, &key).await?;
            Ok::<_, CqlReadModelError>((key, row))
        });
        let mut loaded =
            futures_util::stream::iter(loads).buffer_unordered(self.settings.write_concurrency);
        let mut sums = Sums::new();
        while let Some(result) = loaded.next().await {
            let (key, row) = result?;
            sums.insert(key, row);
        }
        Ok(sums)
    }

    async fn load_sum(&self, shard: ShardId, key: &SumKey) -> Result<SumRow, CqlReadModelError> {
        let source_shard = shard_column(shard);
        let (values, applied_through) = match key {
            SumKey::Balance(user_id) => {
                let row: Option<(i64, i64, i64)> = self
                    .select_first(
                        &self.statements.select_balance_part,
                        (user_id.as_str(), source_shard),
                        "balance part read",
                    )
                    .await?;
                match row {
                    Some((wallet, pending, through)) => ([wallet, pending, 0, 0, 0, 0], through),
                    None => ([0; SUM_VALUES], 0),
                }
            }
            SumKey::Earnings(creator_id) => {
                let row: Option<(i64, i64, i64, i64, i64)> = self
                    .select_first(
                        &self.statements.select_earnings_part,
                        (creator_id.as_str(), source_shard),
                        "earnings part read",
                    )
                    .await?;
                match row {
                    Some((pending, released, lifetime, sales_count, through)) => {
                        ([pending, released, lifetime, sales_count, 0, 0], through)
                    }
                    None => ([0; SUM_VALUES], 0),
                }
            }
            SumKey::ItemCounts(item_id) => {
                let row: Option<(i64, i64, i64)> = self
                    .select_first(
                        &self.statements.select_item_count_part,
                        (item_id.as_str(), source_shard),
                        "item count part read",
                    )
                    .await?;
                match row {
                    Some((sold, sales_count, through)) => {
                        ([sold, sales_count, 0, 0, 0, 0], through)
                    }
                    None => ([0; SUM_VALUES], 0),
                }
            }
            SumKey::ItemDay(item_id, day) => {
                type DayPart = (i64, i64, i64, i64, i64, i64, i64);
                let row: Option<DayPart> = self
                    .select_first(
                        &self.statements.select_item_day_part,
                        (item_id.as_str(), to_cql("day", *day)?, source_shard),
                        "item day part read",
                    )
                    .await?;
                match row {
                    Some((
                        primary,
                        primary_revenue,
                        resale,
                        resale_revenue,
                        refunded,
                        refunded_revenue,
                        through,
                    )) => (
                        [
                            primary,
                            primary_revenue,
                            resale,
                            resale_revenue,
                            refunded,
                            refunded_revenue,
                        ],
                        through,
                    ),
                    None => ([0; SUM_VALUES], 0),
                }
            }
        };
        let loaded_through = from_cql("applied through", applied_through)?;
        Ok(SumRow {
            values,
            loaded_through,
            applied_through: loaded_through,
            changed: false,
        })
    }

    /// Queues the changed sum rows, each at the timestamp of the last event
    /// folded into it (a stale writer's older state never wins).
    fn write_sums<'models>(
        &'models self,
        writes: &mut Writes<'models>,
        shard: ShardId,
        sums: &Sums,
    ) -> Result<(), CqlReadModelError> {
        let source_shard = shard_column(shard);
        for (key, row) in sums.iter().filter(|(_, row)| row.changed) {
            let through = to_cql("applied through", row.applied_through)?;
            let timestamp = write_timestamp(row.applied_through, LAST_TIMESTAMP_SLOT);
            let [first, second, third, fourth, fifth, sixth] = row.values;
            match key {
                SumKey::Balance(user_id) => writes.push(
                    &self.statements.insert_balance_part,
                    (
                        user_id.clone(),
                        source_shard,
                        first,
                        second,
                        through,
                        timestamp,
                    ),
                    "balance part write",
                ),
                SumKey::Earnings(creator_id) => writes.push(
                    &self.statements.insert_earnings_part,
                    (
                        creator_id.clone(),
                        source_shard,
                        first,
                        second,
                        third,
                        fourth,
                        through,
                        timestamp,
                    ),
                    "earnings part write",
                ),
                SumKey::ItemCounts(item_id) => writes.push(
                    &self.statements.insert_item_count_part,
                    (
                        item_id.clone(),
                        source_shard,
                        first,
                        second,
                        through,
                        timestamp,
                    ),
                    "item count part write",
                ),
                SumKey::ItemDay(item_id, day) => writes.push(
                    &self.statements.insert_item_day_part,
                    (
                        item_id.clone(),
                        to_cql("day", *day)?,
                        source_shard,
                        first,
                        second,
                        third,
                        fourth,
                        fifth,
                        sixth,
                        through,
                        timestamp,
                    ),
                    "item day part write",
                ),
            }
        }
        Ok(())
    }

    /// Queues the row writes of one change, written at `timestamp` (sums
    /// and delivery marks are handled by the caller). Removals that name a
    /// listing or a serial first flush what is queued, then read which rows
    /// to delete.
    async fn write_change<'models>(
        &'models self,
        writes: &mut Writes<'models>,
        bucket_entries: &mut BTreeSet<(&'static str, String, u64)>,
        logged: &Logged<'_>,
        timestamp: i64,
        change: &Change,
    ) -> Result<(), CqlReadModelError> {
        let statements = &self.statements;
        let shard = shard_column(logged.shard);
        let sequence = to_cql("event sequence", logged.sequence)?;
        match change {
            Change::MessageConsumed { .. }
            | Change::BalanceDelta { .. }
            | Change::EarningsDelta { .. }
            | Change::SaleRefunded { .. }
            | Change::SoldDelta { .. } => {}
            Change::TransactionAppended {
                user_id,
                account,
                position,
                kind,
                amount,
                reference,
                at_ms,
            } => {
                let bucket = transaction_bucket(*at_ms);
                if bucket_entries.insert(("transactions", user_id.to_string(), bucket)) {
                    writes.push(
                        &statements.insert_transaction_bucket,
                        (user_id.to_string(), to_cql("bucket", bucket)?),
                        "transaction bucket write",
                    );
                }
                writes.push(
                    &statements.insert_transaction,
                    (
                        user_id.to_string(),
                        to_cql("bucket", bucket)?,
                        to_cql("transaction time", *at_ms)?,
                        shard,
                        sequence,
                        account.as_str(),
                        position.clone(),
                        *kind,
                        *amount,
                        reference.clone(),
                    ),
                    "transaction write",
                );
            }
            Change::InventoryAdded {
                user_id,
                item_id,
                serial,
                purchase_id,
                acquired_at_ms,
            } => writes.push(
                &statements.insert_inventory,
                (
                    user_id.to_string(),
                    item_id.to_string(),
                    serial_key(*serial),
                    purchase_id.to_string(),
                    to_cql("acquisition time", *acquired_at_ms)?,
                    timestamp,
                ),
                "inventory write",
            ),
            Change::InventoryRemoved {
                user_id,
                item_id,
                serial,
            } => writes.push(
                &statements.delete_inventory,
                (
                    timestamp,
                    user_id.to_string(),
                    item_id.to_string(),
                    serial_key(*serial),
                ),
                "inventory delete",
            ),
            Change::ItemUpserted { definition } => {
                let starts_at_ms = definition
                    .starts_at_ms
                    .map(|at| to_cql("sale start", at))
                    .transpose()?;
                let ends_at_ms = definition
                    .ends_at_ms
                    .map(|at| to_cql("sale end", at))
                    .transpose()?;
                writes.push(
                    &statements.insert_item,
                    (
                        definition.item_id.to_string(),
                        definition.creator_id.to_string(),
                        definition.name.clone(),
                        definition.price,
                        true,
                        definition.supply.map(i64::from),
                        definition.max_per_user.map(i64::from),
                        starts_at_ms,
                        ends_at_ms,
                        definition.resellable,
                        definition.kind.as_str(),
                        timestamp,
                    ),
                    "item write",
                );
            }
            Change::ItemRegionalPricesChanged { item_id, prices } => writes.push(
                &statements.update_item_regional_prices,
                (
                    timestamp,
                    projectors::regional_prices_json(prices),
                    item_id.to_string(),
                ),
                "item regional prices write",
            ),
            Change::ItemPriceTestStarted {
                item_id,
                test_id,
                arms,
                ends_at_ms,
                started,
            } => writes.push(
                &statements.insert_item_price_test,
                (
                    item_id.to_string(),
                    test_id.to_string(),
                    projectors::arms_json(arms),
                    to_cql("test end", *ends_at_ms)?,
                    to_cql("test start", *started)?,
                    timestamp,
                ),
                "item price test write",
            ),
            Change::ItemPriceTestClosed { item_id, test_id } => writes.push(
                &statements.close_item_price_test,
                (timestamp, item_id.to_string(), test_id.to_string()),
                "item price test close",
            ),
            Change::PriceTestOpened {
                test_id,
                item_id,
                arms,
                ends_at_ms,
                apply_winner,
            } => {
                writes.push(
                    &statements.insert_price_test,
                    (
                        test_id.to_string(),
                        item_id.to_string(),
                        to_cql("test end", *ends_at_ms)?,
                        *apply_winner,
                        timestamp,
                    ),
                    "price test write",
                );
                for (arm, price) in arms.iter().enumerate() {
                    writes.push(
                        &statements.insert_price_test_arm,
                        (test_id.to_string(), arm as i32, *price, timestamp),
                        "price test arm write",
                    );
                }
            }
            Change::PriceTestRunning {
                test_id,
                creator_id,
            } => writes.push(
                &statements.update_price_test_running,
                (timestamp, creator_id.to_string(), test_id.to_string()),
                "price test start",
            ),
            Change::PriceTestRemoved { test_id } => {
                writes.push(
                    &statements.delete_price_test,
                    (timestamp, test_id.to_string()),
                    "price test removal",
                );
                writes.push(
                    &statements.delete_price_test_arms,
                    (timestamp, test_id.to_string()),
                    "price test arms removal",
                );
            }
            Change::PriceTestExposures { test_id, exposures } => {
                for (arm, exposures) in exposures.iter().enumerate() {
                    writes.push(
                        &statements.update_price_test_exposures,
                        (
                            timestamp,
                            to_cql("exposures", *exposures)?,
                            test_id.to_string(),
                            arm as i32,
                        ),
                        "price test exposures write",
                    );
                }
            }
            Change::PriceTestArmSales {
                test_id,
                arm,
                purchases,
                revenue,
            } => writes.push(
                &statements.update_price_test_sales,
                (
                    timestamp,
                    to_cql("test purchases", *purchases)?,
                    *revenue,
                    test_id.to_string(),
                    i32::from(*arm),
                ),
                "price test sales write",
            ),
            Change::PriceTestEnded {
                test_id,
                winner,
                applied_price,
            } => writes.push(
                &statements.update_price_test_ended,
                (
                    timestamp,
                    winner.map(i32::from),
                    *applied_price,
                    test_id.to_string(),
                ),
                "price test end",
            ),
            Change::PriceFloorSet {
                kind,
                version,
                price,
                effective_from_ms,
            } => writes.push(
                &statements.insert_price_floor,
                (
                    kind.as_str(),
                    i64::from(*version),
                    *price,
                    to_cql("floor start", *effective_from_ms)?,
                    timestamp,
                ),
                "price floor write",
            ),
            Change::ItemPriceChanged { item_id, price } => writes.push(
                &statements.update_item_price,
                (timestamp, *price, item_id.to_string()),
                "item price write",
            ),
            Change::TakedownStarted {
                item_id,
                listings_ended,
                shard_count,
                at_ms,
            } => writes.push(
                &statements.insert_takedown,
                (
                    item_id.to_string(),
                    i64::from(*listings_ended),
                    i64::from(*shard_count),
                    to_cql("takedown time", *at_ms)?,
                    to_cql("takedown time", *at_ms)?,
                    timestamp,
                ),
                "takedown write",
            ),
            Change::TakedownProgressed {
                item_id,
                shards_reported,
                tally,
                at_ms,
            } => writes.push(
                &statements.update_takedown_progress,
                (
                    timestamp,
                    i64::from(*shards_reported),
                    i64::from(tally.refunded),
                    tally.refunded_amount,
                    i64::from(tally.already_refunded),
                    i64::from(tally.left),
                    to_cql("takedown time", *at_ms)?,
                    item_id.to_string(),
                ),
                "takedown progress write",
            ),
            Change::TakedownSaleResolved {
                item_id,
                purchase_id,
                outcome,
                amount,
                reason,
            } => writes.push(
                &statements.insert_takedown_sale,
                (
                    item_id.to_string(),
                    outcome.to_string(),
                    purchase_id.to_string(),
                    *amount,
                    reason.clone(),
                    timestamp,
                ),
                "takedown sale write",
            ),
            Change::ItemOnSaleChanged { item_id, on_sale } => writes.push(
                &statements.update_item_on_sale,
                (timestamp, *on_sale, item_id.to_string()),
                "item sale state write",
            ),
            Change::SerialOwnerSet {
                item_id,
                serial,
                user_id,
            } => {
                let bucket = to_cql("bucket", owner_bucket(*serial))?;
                if bucket_entries.insert(("owners", item_id.to_string(), owner_bucket(*serial))) {
                    writes.push(
                        &statements.insert_owner_bucket,
                        (item_id.to_string(), bucket),
                        "owner bucket write",
                    );
                }
                writes.push(
                    &statements.insert_owner,
                    (
                        item_id.to_string(),
                        bucket,
                        i64::from(*serial),
                        user_id.to_string(),
                        timestamp,
                    ),
                    "owner write",
                );
            }
            Change::SerialOwnerCleared { item_id, serial } => writes.push(
                &statements.delete_owner,
                (
                    timestamp,
                    item_id.to_string(),
                    to_cql("bucket", owner_bucket(*serial))?,
                    i64::from(*serial),
                ),
                "owner delete",
            ),
            Change::SaleRecorded {
                item_id,
                price,
                purchase_id,
                resale,
                at_ms,
            } => {
                if !*resale {
                    writes.push(
                        &statements.insert_item_sale_day,
                        (
                            purchase_id.to_string(),
                            item_id.to_string(),
                            to_cql("day", day_of(*at_ms))?,
                            *price,
                        ),
                        "item sale day write",
                    );
                }
                let bucket = sale_bucket(logged.timestamp_ms);
                if bucket_entries.insert(("sales", item_id.to_string(), bucket)) {
                    writes.push(
                        &statements.insert_sale_bucket,
                        (item_id.to_string(), to_cql("bucket", bucket)?),
                        "sale bucket write",
                    );
                }
                writes.push(
                    &statements.insert_sale,
                    (
                        item_id.to_string(),
                        to_cql("bucket", bucket)?,
                        to_cql("sale time", logged.timestamp_ms)?,
                        shard,
                        sequence,
                        *price,
                    ),
                    "sale write",
                );
            }
            Change::ListingAdded {
                listing_id,
                item_id,
                serial,
                seller_id,
                price,
            } => {
                let serial = i64::from(*serial);
                writes.push(
                    &statements.insert_resale_listing,
                    (
                        item_id.to_string(),
                        *price,
                        listing_id.to_string(),
                        serial,
                        seller_id.to_string(),
                        timestamp,
                    ),
                    "resale listing write",
                );
                writes.push(
                    &statements.insert_listing_by_id,
                    (
                        listing_id.to_string(),
                        item_id.to_string(),
                        serial,
                        *price,
                        timestamp,
                    ),
                    "listing write",
                );
                writes.push(
                    &statements.insert_listing_by_serial,
                    (
                        item_id.to_string(),
                        serial,
                        listing_id.to_string(),
                        *price,
                        timestamp,
                    ),
                    "serial listing write",
                );
            }
            Change::ListingRemoved { listing_id } => {
                writes.flush().await?;
                let stored: Option<(String, i64, i64)> = self
                    .select_first(
                        &statements.select_listing_by_id,
                        (listing_id.as_str(),),
                        "listing read",
                    )
                    .await?;
                if let Some((item_id, serial, price)) = stored {
                    self.remove_listing(
                        writes,
                        timestamp,
                        item_id,
                        serial,
                        listing_id.to_string(),
                        price,
                    );
                }
            }
            Change::ResaleBookChanged { item_id, at_ms } => {
                // The book as of this event: every earlier change of it is
                // written (this shard alone writes it), no later one queued.
                writes.flush().await?;
                let lowest: Option<(i64,)> = self
                    .select_first(
                        &statements.select_lowest_resale_price,
                        (item_id.as_str(),),
                        "lowest resale price read",
                    )
                    .await?;
                writes.push(
                    &statements.insert_item_ask_day,
                    (
                        item_id.to_string(),
                        to_cql("day", day_of(*at_ms))?,
                        lowest.map(|(price,)| price),
                        timestamp,
                    ),
                    "item ask day write",
                );
            }
            Change::SerialListingsRemoved { item_id, serial } => {
                writes.flush().await?;
                let serial = i64::from(*serial);
                let stored: Vec<(String, i64)> = self
                    .select(
                        &statements.select_listings_by_serial,
                        (item_id.as_str(), serial),
                        "serial listing read",
                    )
                    .await?;
                for (listing_id, price) in stored {
                    self.remove_listing(
                        writes,
                        timestamp,
                        item_id.to_string(),
                        serial,
                        listing_id,
                        price,
                    );
                }
            }
            Change::BundleUpserted {
                bundle_id,
                creator_id,
                name,
                item_ids,
                price,
            } => writes.push(
                &statements.insert_bundle,
                (
                    bundle_id.to_string(),
                    creator_id.to_string(),
                    name.clone(),
                    item_ids
                        .iter()
                        .map(|item_id| item_id.to_string())
                        .collect::<Vec<String>>(),
                    *price,
                    timestamp,
                ),
                "bundle write",
            ),
            Change::PurchaseStep(step) => writes.push(
                &statements.insert_purchase_step,
                (
                    step.purchase_id.to_string(),
                    shard,
                    sequence,
                    step.step,
                    step.subject.clone(),
                    step.position.clone(),
                    step.user_id.clone(),
                    step.serial.map(i64::from),
                    step.amount,
                    step.detail.clone(),
                    to_cql("step time", step.at_ms)?,
                    timestamp,
                ),
                "purchase step write",
            ),
            Change::CreatorSaleRecorded(sale) => {
                let bucket = to_cql("bucket", transaction_bucket(sale.sold_at_ms))?;
                let sold_at_ms = to_cql("sale time", sale.sold_at_ms)?;
                if bucket_entries.insert((
                    "creator_sales",
                    sale.creator_id.to_string(),
                    transaction_bucket(sale.sold_at_ms),
                )) {
                    writes.push(
                        &statements.insert_creator_sale_bucket,
                        (sale.creator_id.to_string(), bucket),
                        "creator sale bucket write",
                    );
                }
                writes.push(
                    &statements.insert_creator_sale,
                    (
                        sale.creator_id.to_string(),
                        bucket,
                        sold_at_ms,
                        sale.purchase_id.to_string(),
                        sale.position.clone(),
                        sale.resale,
                        sale.cleared,
                        sale.creator_share,
                        sale.platform_fee,
                        i32::from(sale.policy_version),
                        to_cql("release time", sale.release_at_ms)?,
                        timestamp,
                    ),
                    "creator sale write",
                );
                writes.push(
                    &statements.insert_creator_sale_key,
                    (
                        sale.purchase_id.to_string(),
                        sale.creator_id.to_string(),
                        bucket,
                        sold_at_ms,
                        timestamp,
                    ),
                    "creator sale key write",
                );
            }
            Change::CreatorSaleChanged {
                purchase_id,
                change,
                at_ms,
            } => {
                // The sale was recorded by an earlier event of this shard.
                writes.flush().await?;
                let stored: Option<(String, i64, i64)> = self
                    .select_first(
                        &statements.select_creator_sale_key,
                        (purchase_id.as_str(),),
                        "creator sale key read",
                    )
                    .await?;
                let Some((creator_id, bucket, sold_at_ms)) = stored else {
                    return Ok(());
                };
                let key = (creator_id, bucket, sold_at_ms, purchase_id.to_string());
                let at_ms = to_cql("escrow change time", *at_ms)?;
                match change {
                    SaleEscrowChange::Frozen | SaleEscrowChange::Unfrozen => writes.push(
                        &statements.update_creator_sale_frozen,
                        (
                            timestamp,
                            *change == SaleEscrowChange::Frozen,
                            key.0,
                            key.1,
                            key.2,
                            key.3,
                        ),
                        "creator sale freeze",
                    ),
                    SaleEscrowChange::Released => writes.push(
                        &statements.update_creator_sale_released,
                        (timestamp, at_ms, key.0, key.1, key.2, key.3),
                        "creator sale release",
                    ),
                    SaleEscrowChange::Refunded => writes.push(
                        &statements.update_creator_sale_refunded,
                        (timestamp, at_ms, key.0, key.1, key.2, key.3),
                        "creator sale refund",
                    ),
                }
            }
        }
        Ok(())
    }

    /// Queues the deletes of a listing's three rows.
    fn remove_listing<'models>(
        &'models self,
        writes: &mut Writes<'models>,
        timestamp: i64,
        item_id: String,
        serial: i64,
        listing_id: String,
        price: i64,
    ) {
        let statements = &self.statements;
        writes.push(
            &statements.delete_resale_listing,
            (timestamp, item_id.clone(), price, listing_id.clone()),
            "resale listing delete",
        );
        writes.push(
            &statements.delete_listing_by_id,
            (timestamp, listing_id.clone()),
            "listing delete",
        );
        writes.push(
            &statements.delete_listing_by_serial,
            (timestamp, item_id, serial, listing_id),
            "serial listing delete",
        );
    }
}
