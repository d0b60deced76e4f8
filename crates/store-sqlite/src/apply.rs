//! Applies projected changes to the read-model tables.
//!
//! A projection transaction applies many events. The changes that only add
//! to a row (balances, earnings, sold and sales counts, the item history's
//! daily sums, delivery marks, the purchase index) are summed per row in
//! memory and written once when the transaction ends: a busy item sells
//! hundreds of times in one transaction, and a purchase's events name it
//! five times in the index. The sums are exact: these rows only ever grow by
//! the deltas, and nothing else the transaction does reads them. A change
//! that does read or rewrite those tables writes the sums first.

use std::collections::{btree_map, BTreeMap};

use ledger_core::{ItemId, PurchaseId, UserId};
use projectors::{day_of, next_recent_average_price, Change, SaleEscrowChange};
use rusqlite::{params, OptionalExtension, Transaction};

use crate::error::SqliteStoreError;

/// `inventory.serial` of a non-limited item (Limited serials start at 1).
pub const NON_LIMITED_SERIAL: i64 = 0;

/// The changes of one projection transaction, applied in commit order; the
/// additive ones are held as sums until [`ChangeBatch::finish`].
#[derive(Default)]
pub struct ChangeBatch {
    /// Highest message consumed, per (sender, receiver).
    deliveries: BTreeMap<(u16, u16), u64>,
    /// Highest message consumed, per (sender, receiver), over the whole
    /// batch (what [`ChangeBatch::finish`] answers for publication).
    delivered: BTreeMap<(u16, u16), u64>,
    /// (wallet, pending) added, per user.
    balances: BTreeMap<UserId, (i64, i64)>,
    earnings: BTreeMap<UserId, EarningsSum>,
    /// Event positions to append to each purchase's index, in order.
    purchase_positions: BTreeMap<PurchaseId, Vec<i64>>,
    sold: BTreeMap<ItemId, i64>,
    /// Sales of each item: `None` for an item the read models do not know.
    sales: BTreeMap<ItemId, Option<ItemSales>>,
    /// The item history's sums, per (item, UTC day).
    sale_days: BTreeMap<(ItemId, i64), DaySales>,
}

#[derive(Default)]
struct EarningsSum {
    pending: i64,
    released: i64,
    lifetime: i64,
    sales_count: i64,
}

struct ItemSales {
    count: i64,
    /// The recent average price after the last sale so far (at first, as
    /// stored: `None` before the item's first sale).
    average: Option<i64>,
}

#[derive(Default)]
struct DaySales {
    primary_count: i64,
    primary_revenue: i64,
    resale_count: i64,
    resale_revenue: i64,
    /// The item's recent average price after the day's last sale so far.
    average: i64,
}

impl ChangeBatch {
    /// Applies the changes of the event at global `event_position`.
    ///
    /// Changes to an item the read models do not know (never published) are
    /// ignored: every item event follows its publication in commit order.
    pub fn apply(
        &mut self,
        transaction: &Transaction<'_>,
        event_position: i64,
        changes: &[Change],
    ) -> Result<(), SqliteStoreError> {
        for change in changes {
            match change {
                Change::MessageConsumed { from, to, sequence } => {
                    let highest = self.deliveries.entry((from.0, to.0)).or_insert(*sequence);
                    *highest = (*highest).max(*sequence);
                }
                Change::BalanceDelta {
                    user_id,
                    wallet_delta,
                    pending_delta,
                } => {
                    let (wallet, pending) = self.balances.entry(user_id.clone()).or_default();
                    *wallet = add(*wallet, *wallet_delta);
                    *pending = add(*pending, *pending_delta);
                }
                Change::EarningsDelta {
                    creator_id,
                    pending,
                    released,
                    lifetime,
                    sales_count,
                } => {
                    let sum = self.earnings.entry(creator_id.clone()).or_default();
                    sum.pending = add(sum.pending, *pending);
                    sum.released = add(sum.released, *released);
                    sum.lifetime = add(sum.lifetime, *lifetime);
                    sum.sales_count = add(sum.sales_count, *sales_count);
                }
                // An event is indexed once per purchase, however many of its steps.
                Change::PurchaseStep(step) => {
                    let positions = self
                        .purchase_positions
                        .entry(step.purchase_id.clone())
                        .or_default();
                    if positions.last() != Some(&event_position) {
                        positions.push(event_position);
                    }
                }
                Change::SoldDelta { item_id, delta } => {
                    let sold = self.sold.entry(item_id.clone()).or_default();
                    *sold = add(*sold, *delta);
                }
                Change::SaleRecorded {
                    item_id,
                    price,
                    purchase_id,
                    resale,
                    at_ms,
                } => {
                    self.sale_recorded(transaction, item_id, *price, purchase_id, *resale, *at_ms)?;
                }
                change if reads_summed_rows(change) => {
                    self.write_sums(transaction)?;
                    apply_change(transaction, event_position, change)?;
                }
                change => apply_change(transaction, event_position, change)?,
            }
        }
        Ok(())
    }

    /// Writes the sums held; call before the transaction commits. (A batch
    /// dropped unfinished belongs to a transaction rolled back.)
    /// Answers the highest message consumed per (sender, receiver).
    pub fn finish(
        mut self,
        transaction: &Transaction<'_>,
    ) -> Result<BTreeMap<(u16, u16), u64>, SqliteStoreError> {
        self.write_sums(transaction)?;
        Ok(self.delivered)
    }

    fn sale_recorded(
        &mut self,
        transaction: &Transaction<'_>,
        item_id: &ItemId,
        price: i64,
        purchase_id: &PurchaseId,
        resale: bool,
        at_ms: u64,
    ) -> Result<(), SqliteStoreError> {
        let sales = match self.sales.entry(item_id.clone()) {
            btree_map::Entry::Occupied(entry) => entry.into_mut(),
            btree_map::Entry::Vacant(entry) => {
                let known: Option<Option<i64>> = transaction
                    .prepare_cached("SELECT recent_average_price FROM items WHERE item_id = ?1")
                    .and_then(|mut statement| {
                        statement
                            .query_row(params![item_id.as_str()], |row| row.get(0))
                            .optional()
                    })
                    .map_err(SqliteStoreError::sqlite("read recent average price"))?;
                entry.insert(known.map(|average| ItemSales { count: 0, average }))
            }
        };
        let Some(sales) = sales else {
            return Ok(());
        };
        let average = next_recent_average_price(sales.average, price);
        sales.average = Some(average);
        sales.count = add(sales.count, 1);
        let day = crate::error::to_sql("sale day", day_of(at_ms))?;
        let day_sales = self.sale_days.entry((item_id.clone(), day)).or_default();
        if resale {
            day_sales.resale_count = add(day_sales.resale_count, 1);
            day_sales.resale_revenue = add(day_sales.resale_revenue, price);
        } else {
            day_sales.primary_count = add(day_sales.primary_count, 1);
            day_sales.primary_revenue = add(day_sales.primary_revenue, price);
        }
        day_sales.average = average;
        if !resale {
            transaction
                .prepare_cached(
                    "INSERT OR REPLACE INTO item_sale_days (purchase_id, item_id, day, price) VALUES (?1, ?2, ?3, ?4)",
                )
                .and_then(|mut statement| statement.execute(params![purchase_id.as_str(), item_id.as_str(), day, price]))
                .map_err(SqliteStoreError::sqlite("record a sale's day"))?;
        }
        Ok(())
    }

    fn write_sums(&mut self, transaction: &Transaction<'_>) -> Result<(), SqliteStoreError> {
        let failed = SqliteStoreError::sqlite;
        for ((from, to), delivered) in std::mem::take(&mut self.deliveries) {
            let highest = self.delivered.entry((from, to)).or_insert(delivered);
            *highest = (*highest).max(delivered);
            let sequence = crate::error::to_sql("delivery sequence", delivered)?;
            transaction
                .prepare_cached(
                    "INSERT INTO projection_deliveries (sender, receiver, sequence) VALUES (?1, ?2, ?3)
                     ON CONFLICT (sender, receiver) DO UPDATE SET sequence = MAX(sequence, excluded.sequence)",
                )
                .and_then(|mut statement| statement.execute(params![from, to, sequence]))
                .map_err(failed("mark a delivery projected"))?;
        }
        for (user_id, (wallet, pending)) in std::mem::take(&mut self.balances) {
            transaction
                .prepare_cached(
                    "INSERT INTO balances (user_id, balance, pending) VALUES (?1, ?2, ?3)
                     ON CONFLICT (user_id) DO UPDATE SET
                         balance = balance + excluded.balance, pending = pending + excluded.pending",
                )
                .and_then(|mut statement| statement.execute(params![user_id.as_str(), wallet, pending]))
                .map_err(failed("add to a balance"))?;
        }
        for (creator_id, sum) in std::mem::take(&mut self.earnings) {
            transaction
                .prepare_cached(
                    "INSERT INTO earnings (creator_id, pending, released, lifetime, sales_count)
                     VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT (creator_id) DO UPDATE SET
                         pending = pending + excluded.pending, released = released + excluded.released,
                         lifetime = lifetime + excluded.lifetime, sales_count = sales_count + excluded.sales_count",
                )
                .and_then(|mut statement| {
                    statement.execute(params![
                        creator_id.as_str(),
                        sum.pending,
                        sum.released,
                        sum.lifetime,
                        sum.sales_count
                    ])
                })
                .map_err(failed("add to earnings"))?;
        }
        // The index names the events; the steps are read back from them.
        for (purchase_id, positions) in std::mem::take(&mut self.purchase_positions) {
            let positions = positions
                .iter()
                .map(i64::to_string)
                .collect::<Vec<_>>()
                .join(",");
            transaction
                .prepare_cached(
                    "INSERT INTO purchase_index (purchase_id, event_positions) VALUES (?1, ?2)
                     ON CONFLICT (purchase_id) DO UPDATE SET
                         event_positions = event_positions || ',' || excluded.event_positions",
                )
                .and_then(|mut statement| {
                    statement.execute(params![purchase_id.as_str(), positions])
                })
                .map_err(failed("index a purchase's events"))?;
        }
        for (item_id, delta) in std::mem::take(&mut self.sold) {
            transaction
                .prepare_cached("UPDATE items SET sold = sold + ?2 WHERE item_id = ?1")
                .and_then(|mut statement| statement.execute(params![item_id.as_str(), delta]))
                .map_err(failed("add to an item's sold count"))?;
        }
        for ((item_id, day), sums) in std::mem::take(&mut self.sale_days) {
            transaction
                .prepare_cached(
                    "INSERT INTO item_days (item_id, day, primary_count, primary_revenue, resale_count,
                                            resale_revenue, recent_average_price)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                     ON CONFLICT (item_id, day) DO UPDATE SET
                         primary_count = primary_count + excluded.primary_count,
                         primary_revenue = primary_revenue + excluded.primary_revenue,
                         resale_count = resale_count + excluded.resale_count,
                         resale_revenue = resale_revenue + excluded.resale_revenue,
                         recent_average_price = excluded.recent_average_price",
                )
                .and_then(|mut statement| {
                    statement.execute(params![
                        item_id.as_str(),
                        day,
                        sums.primary_count,
                        sums.primary_revenue,
                        sums.resale_count,
                        sums.resale_revenue,
                        sums.average
                    ])
                })
                .map_err(failed("record sales in the item history"))?;
        }
        for (item_id, sales) in std::mem::take(&mut self.sales) {
            let Some(sales) = sales else { continue };
            transaction
                .prepare_cached(
                    "UPDATE items SET sales_count = sales_count + ?2, recent_average_price = ?3 WHERE item_id = ?1",
                )
                .and_then(|mut statement| statement.execute(params![item_id.as_str(), sales.count, sales.average]))
                .map_err(failed("add to an item's sales"))?;
        }
        Ok(())
    }
}

/// Adds two sums of money or counts; the ledger's amounts are far below
/// `i64::MAX`, so an overflow is a bug.
fn add(sum: i64, delta: i64) -> i64 {
    sum.checked_add(delta)
        .expect("a read-model sum overflowed i64")
}

/// Whether a change reads or rewrites a table that [`ChangeBatch`] holds
/// sums for (`items`, `item_days`): the sums are written before it. Every
/// variant is named, so a new change must choose.
fn reads_summed_rows(change: &Change) -> bool {
    match change {
        Change::ItemUpserted { .. }
        | Change::ItemPriceChanged { .. }
        | Change::ItemRegionalPricesChanged { .. }
        | Change::ItemOnSaleChanged { .. }
        | Change::SaleRefunded { .. }
        | Change::ResaleBookChanged { .. } => true,
        Change::TransactionAppended { .. }
        | Change::InventoryAdded { .. }
        | Change::InventoryRemoved { .. }
        | Change::ItemPriceTestStarted { .. }
        | Change::ItemPriceTestClosed { .. }
        | Change::PriceTestOpened { .. }
        | Change::PriceTestRunning { .. }
        | Change::PriceTestRemoved { .. }
        | Change::PriceTestExposures { .. }
        | Change::PriceTestArmSales { .. }
        | Change::PriceTestEnded { .. }
        | Change::PriceFloorSet { .. }
        | Change::TakedownStarted { .. }
        | Change::TakedownProgressed { .. }
        | Change::TakedownSaleResolved { .. }
        | Change::SerialOwnerSet { .. }
        | Change::SerialOwnerCleared { .. }
        | Change::ListingAdded { .. }
        | Change::ListingRemoved { .. }
        | Change::SerialListingsRemoved { .. }
        | Change::BundleUpserted { .. }
        | Change::CreatorSaleRecorded(_)
        | Change::CreatorSaleChanged { .. } => false,
        // Held as sums, never applied one by one.
        Change::MessageConsumed { .. }
        | Change::BalanceDelta { .. }
        | Change::EarningsDelta { .. }
        | Change::PurchaseStep(_)
        | Change::SoldDelta { .. }
        | Change::SaleRecorded { .. } => false,
    }
}

fn apply_change(
    transaction: &Transaction<'_>,
    event_position: i64,
    change: &Change,
) -> Result<(), SqliteStoreError> {
    let failed = SqliteStoreError::sqlite("apply read-model change");
    match change {
        Change::MessageConsumed { .. }
        | Change::BalanceDelta { .. }
        | Change::EarningsDelta { .. }
        | Change::PurchaseStep(_)
        | Change::SoldDelta { .. }
        | Change::SaleRecorded { .. } => unreachable!("a change held as a sum is written by ChangeBatch"),
        Change::TransactionAppended { user_id, account, position, kind, amount, reference, at_ms } => {
            let at_ms = crate::error::to_sql("transaction time", *at_ms)?;
            transaction
                .prepare_cached(
                    "INSERT INTO transactions
                         (user_id, event_position, account, position, kind, amount, reference, at_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                )
                .and_then(|mut statement| {
                    statement.execute(params![
                        user_id.as_str(),
                        event_position,
                        account.as_str(),
                        position,
                        kind,
                        amount,
                        reference,
                        at_ms
                    ])
                })
        }
        Change::InventoryAdded { user_id, item_id, serial, purchase_id, acquired_at_ms } => {
            let acquired_at_ms = crate::error::to_sql("acquisition time", *acquired_at_ms)?;
            transaction
                .prepare_cached(
                    "INSERT OR REPLACE INTO inventory (user_id, item_id, serial, purchase_id, acquired_at_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )
                .and_then(|mut statement| {
                    statement.execute(params![
                        user_id.as_str(),
                        item_id.as_str(),
                        serial_key(*serial),
                        purchase_id.as_str(),
                        acquired_at_ms
                    ])
                })
        }
        Change::InventoryRemoved { user_id, item_id, serial } => transaction
            .prepare_cached("DELETE FROM inventory WHERE user_id = ?1 AND item_id = ?2 AND serial = ?3")
            .and_then(|mut statement| statement.execute(params![user_id.as_str(), item_id.as_str(), serial_key(*serial)])),
        Change::ItemUpserted { definition } => {
            let starts_at_ms = definition.starts_at_ms.map(|at| crate::error::to_sql("sale start", at)).transpose()?;
            let ends_at_ms = definition.ends_at_ms.map(|at| crate::error::to_sql("sale end", at)).transpose()?;
            transaction
                .prepare_cached(
                    "INSERT INTO items (item_id, creator_id, name, price, on_sale, supply, max_per_user,
                                        starts_at_ms, ends_at_ms, resellable, kind)
                     VALUES (?1, ?2, ?3, ?4, 1, ?5, ?6, ?7, ?8, ?9, ?10)
                     ON CONFLICT (item_id) DO UPDATE SET
                         creator_id = excluded.creator_id, name = excluded.name, price = excluded.price,
                         on_sale = excluded.on_sale, supply = excluded.supply,
                         max_per_user = excluded.max_per_user, starts_at_ms = excluded.starts_at_ms,
                         ends_at_ms = excluded.ends_at_ms, resellable = excluded.resellable,
                         kind = excluded.kind",
                )
                .and_then(|mut statement| {
                    statement.execute(params![
                        definition.item_id.as_str(),
                        definition.creator_id.as_str(),
                        definition.name,
                        definition.price,
                        definition.supply,
                        definition.max_per_user,
                        starts_at_ms,
                        ends_at_ms,
                        definition.resellable,
                        definition.kind.as_str()
                    ])
                })
        }
        Change::ItemRegionalPricesChanged { item_id, prices } => {
            let prices = projectors::regional_prices_json(prices);
            transaction
                .prepare_cached("UPDATE items SET regional_prices = ?2 WHERE item_id = ?1")
                .and_then(|mut statement| statement.execute(params![item_id.as_str(), prices]))
        }
        Change::ItemPriceTestStarted {
            item_id,
            test_id,
            arms,
            ends_at_ms,
            started,
        } => {
            let ends_at_ms = crate::error::to_sql("test end", *ends_at_ms)?;
            let started = crate::error::to_sql("test start", *started)?;
            transaction
                .prepare_cached(
                    "INSERT OR REPLACE INTO item_price_tests (item_id, test_id, arms, ends_at_ms, started, closed)
                     VALUES (?1, ?2, ?3, ?4, ?5, 0)",
                )
                .and_then(|mut statement| {
                    statement.execute(params![
                        item_id.as_str(),
                        test_id.as_str(),
                        projectors::arms_json(arms),
                        ends_at_ms,
                        started
                    ])
                })
        }
        Change::ItemPriceTestClosed { item_id, test_id } => transaction
            .prepare_cached("UPDATE item_price_tests SET closed = 1 WHERE item_id = ?1 AND test_id = ?2")
            .and_then(|mut statement| statement.execute(params![item_id.as_str(), test_id.as_str()])),
        Change::PriceTestOpened {
            test_id,
            item_id,
            arms,
            ends_at_ms,
            apply_winner,
        } => {
            let ends_at_ms = crate::error::to_sql("test end", *ends_at_ms)?;
            transaction
                .prepare_cached(
                    "INSERT OR REPLACE INTO price_tests (test_id, item_id, creator_id, ends_at_ms, apply_winner, status)
                     VALUES (?1, ?2, NULL, ?3, ?4, 'starting')",
                )
                .and_then(|mut statement| {
                    statement.execute(params![test_id.as_str(), item_id.as_str(), ends_at_ms, apply_winner])
                })
                .map_err(SqliteStoreError::sqlite("apply price test"))?;
            for (arm, price) in arms.iter().enumerate() {
                transaction
                    .prepare_cached(
                        "INSERT OR REPLACE INTO price_test_arms (test_id, arm, price) VALUES (?1, ?2, ?3)",
                    )
                    .and_then(|mut statement| statement.execute(params![test_id.as_str(), arm, price]))
                    .map_err(SqliteStoreError::sqlite("apply price test arm"))?;
            }
            Ok(1)
        }
        Change::PriceTestRunning { test_id, creator_id } => transaction
            .prepare_cached("UPDATE price_tests SET status = 'running', creator_id = ?2 WHERE test_id = ?1")
            .and_then(|mut statement| statement.execute(params![test_id.as_str(), creator_id.as_str()])),
        Change::PriceTestRemoved { test_id } => {
            transaction
                .prepare_cached("DELETE FROM price_test_arms WHERE test_id = ?1")
                .and_then(|mut statement| statement.execute(params![test_id.as_str()]))
                .map_err(SqliteStoreError::sqlite("remove price test arms"))?;
            transaction
                .prepare_cached("DELETE FROM price_tests WHERE test_id = ?1")
                .and_then(|mut statement| statement.execute(params![test_id.as_str()]))
        }
        Change::PriceTestExposures { test_id, exposures } => {
            for (arm, exposures) in exposures.iter().enumerate() {
                let exposures = crate::error::to_sql("exposures", *exposures)?;
                transaction
                    .prepare_cached("UPDATE price_test_arms SET exposures = ?3 WHERE test_id = ?1 AND arm = ?2")
                    .and_then(|mut statement| statement.execute(params![test_id.as_str(), arm, exposures]))
                    .map_err(SqliteStoreError::sqlite("apply price test exposures"))?;
            }
            Ok(1)
        }
        Change::PriceTestArmSales {
            test_id,
            arm,
            purchases,
            revenue,
        } => {
            let purchases = crate::error::to_sql("test purchases", *purchases)?;
            transaction
                .prepare_cached(
                    "UPDATE price_test_arms SET purchases = ?3, revenue = ?4 WHERE test_id = ?1 AND arm = ?2",
                )
                .and_then(|mut statement| {
                    statement.execute(params![test_id.as_str(), arm, purchases, revenue])
                })
        }
        Change::PriceTestEnded {
            test_id,
            winner,
            applied_price,
        } => transaction
            .prepare_cached(
                "UPDATE price_tests SET status = 'ended', winner = ?2, applied_price = ?3 WHERE test_id = ?1",
            )
            .and_then(|mut statement| statement.execute(params![test_id.as_str(), winner, applied_price])),
        Change::PriceFloorSet {
            kind,
            version,
            price,
            effective_from_ms,
        } => {
            let effective_from_ms = crate::error::to_sql("floor start", *effective_from_ms)?;
            transaction
                .prepare_cached(
                    "INSERT OR REPLACE INTO price_floors (kind, version, price, effective_from_ms)
                     VALUES (?1, ?2, ?3, ?4)",
                )
                .and_then(|mut statement| {
                    statement.execute(params![kind.as_str(), version, price, effective_from_ms])
                })
        }
        Change::ItemPriceChanged { item_id, price } => transaction
            .prepare_cached("UPDATE items SET price = ?2 WHERE item_id = ?1")
            .and_then(|mut statement| statement.execute(params![item_id.as_str(), price])),
        Change::ItemOnSaleChanged { item_id, on_sale } => transaction
            .prepare_cached("UPDATE items SET on_sale = ?2 WHERE item_id = ?1")
            .and_then(|mut statement| statement.execute(params![item_id.as_str(), on_sale])),
        Change::TakedownStarted { item_id, listings_ended, shard_count, at_ms } => {
            let at_ms = crate::error::to_sql("takedown time", *at_ms)?;
            transaction
                .prepare_cached(
                    "INSERT OR IGNORE INTO takedowns (item_id, listings_ended, shard_count, started_at_ms, updated_at_ms)
                     VALUES (?1, ?2, ?3, ?4, ?4)",
                )
                .and_then(|mut statement| {
                    statement.execute(params![item_id.as_str(), listings_ended, shard_count, at_ms])
                })
        }
        Change::TakedownProgressed { item_id, shards_reported, tally, at_ms } => {
            let at_ms = crate::error::to_sql("takedown time", *at_ms)?;
            transaction
                .prepare_cached(
                    "UPDATE takedowns SET shards_reported = ?2, refunded = ?3, refunded_amount = ?4,
                     already_refunded = ?5, left_count = ?6, updated_at_ms = ?7 WHERE item_id = ?1",
                )
                .and_then(|mut statement| {
                    statement.execute(params![
                        item_id.as_str(),
                        shards_reported,
                        tally.refunded,
                        tally.refunded_amount,
                        tally.already_refunded,
                        tally.left,
                        at_ms
                    ])
                })
        }
        Change::TakedownSaleResolved { item_id, purchase_id, outcome, amount, reason } => transaction
            .prepare_cached(
                "INSERT OR REPLACE INTO takedown_sales (item_id, outcome, purchase_id, amount, reason)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .and_then(|mut statement| {
                statement.execute(params![item_id.as_str(), outcome, purchase_id.as_str(), amount, reason])
            }),
        Change::SerialOwnerSet { item_id, serial, user_id } => transaction
            .prepare_cached("INSERT OR REPLACE INTO owners (item_id, serial, user_id) VALUES (?1, ?2, ?3)")
            .and_then(|mut statement| statement.execute(params![item_id.as_str(), serial, user_id.as_str()])),
        Change::SerialOwnerCleared { item_id, serial } => transaction
            .prepare_cached("DELETE FROM owners WHERE item_id = ?1 AND serial = ?2")
            .and_then(|mut statement| statement.execute(params![item_id.as_str(), serial])),
        Change::SaleRefunded { purchase_id } => transaction
            // A refund of a bundle, or of a purchase never completed, names
            // no item sale: nothing to restate.
            .prepare_cached(
                "UPDATE item_days SET
                     refunded_count = refunded_count + 1,
                     refunded_revenue = refunded_revenue + (SELECT price FROM item_sale_days WHERE purchase_id = ?1)
                 WHERE (item_id, day) = (SELECT item_id, day FROM item_sale_days WHERE purchase_id = ?1)",
            )
            .and_then(|mut statement| statement.execute(params![purchase_id.as_str()])),
        Change::ResaleBookChanged { item_id, at_ms } => {
            let day = crate::error::to_sql("listing day", day_of(*at_ms))?;
            transaction
                .prepare_cached(
                    "INSERT INTO item_days (item_id, day, book_changed, lowest_resale_ask)
                     VALUES (?1, ?2, 1, (SELECT MIN(price) FROM listings WHERE item_id = ?1))
                     ON CONFLICT (item_id, day) DO UPDATE SET
                         book_changed = 1, lowest_resale_ask = excluded.lowest_resale_ask",
                )
                .and_then(|mut statement| statement.execute(params![item_id.as_str(), day]))
        }
        Change::ListingAdded { listing_id, item_id, serial, seller_id, price } => transaction
            .prepare_cached(
                "INSERT OR REPLACE INTO listings (listing_id, item_id, serial, seller_id, price)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .and_then(|mut statement| {
                statement.execute(params![listing_id.as_str(), item_id.as_str(), serial, seller_id.as_str(), price])
            }),
        Change::ListingRemoved { listing_id } => transaction
            .prepare_cached("DELETE FROM listings WHERE listing_id = ?1")
            .and_then(|mut statement| statement.execute(params![listing_id.as_str()])),
        Change::SerialListingsRemoved { item_id, serial } => transaction
            .prepare_cached("DELETE FROM listings WHERE item_id = ?1 AND serial = ?2")
            .and_then(|mut statement| statement.execute(params![item_id.as_str(), serial])),
        Change::BundleUpserted { bundle_id, creator_id, name, item_ids, price } => {
            let item_ids: Vec<&str> = item_ids.iter().map(|item_id| item_id.as_str()).collect();
            let item_ids = serde_json::to_string(&item_ids).expect("a list of strings always serializes");
            transaction
                .prepare_cached(
                    "INSERT OR REPLACE INTO bundles (bundle_id, creator_id, name, item_ids, price)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )
                .and_then(|mut statement| {
                    statement.execute(params![bundle_id.as_str(), creator_id.as_str(), name, item_ids, price])
                })
        }
        Change::CreatorSaleRecorded(sale) => {
            let sold_at_ms = crate::error::to_sql("sale time", sale.sold_at_ms)?;
            let release_at_ms = crate::error::to_sql("release time", sale.release_at_ms)?;
            transaction
                .prepare_cached(
                    "INSERT OR REPLACE INTO creator_sales
                         (purchase_id, creator_id, sold_at_ms, position, resale, cleared, creator_share,
                          platform_fee, policy_version, release_at_ms, frozen, released_at_ms, refunded_at_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, 0, NULL, NULL)",
                )
                .and_then(|mut statement| {
                    statement.execute(params![
                        sale.purchase_id.as_str(),
                        sale.creator_id.as_str(),
                        sold_at_ms,
                        sale.position,
                        sale.resale,
                        sale.cleared,
                        sale.creator_share,
                        sale.platform_fee,
                        sale.policy_version,
                        release_at_ms
                    ])
                })
        }
        Change::CreatorSaleChanged { purchase_id, change, at_ms } => {
            let at_ms = crate::error::to_sql("escrow change time", *at_ms)?;
            let statement = match change {
                SaleEscrowChange::Frozen => "UPDATE creator_sales SET frozen = 1 WHERE purchase_id = ?1 AND ?2 IS NOT NULL",
                SaleEscrowChange::Unfrozen => {
                    "UPDATE creator_sales SET frozen = 0 WHERE purchase_id = ?1 AND ?2 IS NOT NULL"
                }
                SaleEscrowChange::Released => "UPDATE creator_sales SET released_at_ms = ?2 WHERE purchase_id = ?1",
                SaleEscrowChange::Refunded => "UPDATE creator_sales SET refunded_at_ms = ?2 WHERE purchase_id = ?1",
            };
            transaction
                .prepare_cached(statement)
                .and_then(|mut statement| statement.execute(params![purchase_id.as_str(), at_ms]))
        }
    }
    .map(|_| ())
    .map_err(failed)
}

/// `inventory.serial` of an optional serial.
fn serial_key(serial: Option<u32>) -> i64 {
    serial.map_or(NON_LIMITED_SERIAL, i64::from)
}
