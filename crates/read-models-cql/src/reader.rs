//! The query API's side: the [`ReadModels`] port over the CQL tables, with
//! the semantics of the embedded SQLite read models.

use std::collections::{BTreeMap, VecDeque};

use async_trait::async_trait;
use futures_util::StreamExt;
use ledger_core::{ReadPosition, ShardId};
use projectors::{
    sale_cursor, sale_status, BalanceView, BeyondHead, BundleView, CreatorSaleView, EarningsView,
    InventoryEntry, ItemDay, ItemDays, ItemPriceTestView, ItemView, ListingView, OwnerEntry, Page,
    PriceFloorView, PriceTestArmView, PriceTestView, PurchaseStepView, ReadError, ReadModels,
    SalesRange, TakedownLeftView, TakedownView, TransactionAccount, TransactionEntry,
    PRICE_FLOOR_VERSIONS_MAX, PURCHASE_STEPS_MAX,
};

use crate::error::{from_cql, to_cql, u32_from_cql, CqlReadModelError};
use crate::layout::{
    decode_cursor, encode_cursor, owner_bucket, page_size, parse_field, parse_id,
    recent_average_price, transaction_bucket, CURSOR_INVENTORY, CURSOR_LISTINGS, CURSOR_OWNERS,
    CURSOR_TAKEDOWN_LEFT, CURSOR_TRANSACTIONS, NON_LIMITED_SERIAL, RECENT_SALES_WINDOW,
};
use crate::models::{next_row, CqlReadModels};

/// Turns `limit + 1` fetched rows into a page: the extra row only says that
/// another page follows, whose cursor is the key of the last entry kept.
fn into_page<Row, T>(
    mut rows: Vec<Row>,
    limit: usize,
    cursor_of: impl Fn(&Row) -> String,
    entry_of: impl Fn(Row) -> T,
) -> Page<T> {
    let next_cursor = if rows.len() > limit {
        rows.truncate(limit);
        rows.last().map(&cursor_of)
    } else {
        None
    };
    Page {
        entries: rows.into_iter().map(entry_of).collect(),
        next_cursor,
    }
}

/// A row count as a CQL `LIMIT` (pages are small).
fn row_limit(rows: usize) -> i32 {
    i32::try_from(rows).expect("page sizes are small")
}

/// The sum of the parts of one figure, as stored.
fn total(
    what: &'static str,
    parts: impl IntoIterator<Item = i64>,
) -> Result<i64, CqlReadModelError> {
    let sum: i128 = parts.into_iter().map(i128::from).sum();
    i64::try_from(sum).map_err(|_| CqlReadModelError::StoredIntegerOutOfRange {
        what,
        value: if sum > 0 { i64::MAX } else { i64::MIN },
    })
}

/// The position of a transaction entry in a user's history: its key.
struct TransactionKey {
    at_ms: i64,
    shard: i32,
    sequence: i64,
    account: String,
}

impl TransactionKey {
    fn cursor(&self) -> String {
        encode_cursor(
            CURSOR_TRANSACTIONS,
            &[
                &self.at_ms.to_string(),
                &self.shard.to_string(),
                &self.sequence.to_string(),
                &self.account,
            ],
        )
    }

    fn from_cursor(cursor: &str) -> Result<Self, ReadError> {
        let fields = decode_cursor(CURSOR_TRANSACTIONS, cursor, 4)?;
        let at_ms = parse_field::<u64>(&fields[0])?;
        let shard = parse_field::<u16>(&fields[1])?;
        let sequence = parse_field::<u64>(&fields[2])?;
        let account = TransactionAccount::parse(&fields[3]).ok_or(ReadError::BadCursor)?;
        Ok(TransactionKey {
            at_ms: i64::try_from(at_ms).map_err(|_| ReadError::BadCursor)?,
            shard: i32::from(shard),
            sequence: i64::try_from(sequence).map_err(|_| ReadError::BadCursor)?,
            account: account.as_str().to_string(),
        })
    }
}

/// at_ms, shard, sequence, account, position, kind, amount, reference
type TransactionRow = (i64, i32, i64, String, String, String, i64, String);

/// creator_id, name, price, on_sale, supply, max_per_user, starts_at_ms,
/// ends_at_ms, resellable, kind, regional_prices
type ItemRow = (
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<bool>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<bool>,
    Option<String>,
    Option<String>,
);

/// creator_id, name, item_ids, price
type BundleRow = (
    Option<String>,
    Option<String>,
    Option<Vec<String>>,
    Option<i64>,
);

impl CqlReadModels {
    /// The last sequence of `shard`'s log as the engines stored it: the
    /// `records` table of this keyspace, where an engine appends a record
    /// before it answers the commands in it (Kafka, which the projection
    /// reads, follows). `None` when it cannot be told: a keyspace of read
    /// models alone, a log kept in the format before fencing, a failed read
    /// (the read then waits for its position, within its bound).
    async fn log_head(&self, shard: ShardId) -> Option<u64> {
        let shard_column = i32::from(shard.0);
        let read = async {
            let bucket = self
                .session
                .query_unpaged(
                    "SELECT bucket FROM record_buckets WHERE shard = ? ORDER BY bucket DESC LIMIT 1",
                    (shard_column,),
                )
                .await?
                .into_rows_result()?
                .maybe_first_row::<(i64,)>()?;
            let Some((bucket,)) = bucket else {
                return Ok(None);
            };
            // The newest rows of the newest bucket; a claim row (no record
            // yet) carries no last sequence.
            let rows = self
                .session
                .query_unpaged(
                    "SELECT last_sequence FROM records WHERE shard = ? AND bucket = ? \
                     ORDER BY first_sequence DESC LIMIT 4",
                    (shard_column, bucket),
                )
                .await?
                .into_rows_result()?;
            let last = rows
                .rows::<(Option<i64>,)>()?
                .filter_map(Result::ok)
                .find_map(|(last,)| last);
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(
                last.and_then(|last| u64::try_from(last).ok()),
            )
        };
        match read.await {
            Ok(head) => head,
            Err(error) => {
                tracing::debug!(%shard, %error, "the log head could not be read");
                None
            }
        }
    }

    async fn beyond_head_inner(&self, position: &ReadPosition) -> Option<BeyondHead> {
        let parts = position
            .positions
            .iter()
            .map(|wanted| {
                (
                    wanted.shard,
                    wanted.sequence,
                    format!("{}.{}", wanted.shard.0, wanted.sequence),
                )
            })
            .chain(position.deliveries.iter().map(|mark| {
                (
                    mark.from,
                    mark.sequence,
                    format!("m{}.{}.{}", mark.from.0, mark.to.0, mark.sequence),
                )
            }));
        for (shard, sequence, part) in parts {
            if sequence == 0 {
                continue;
            }
            let known = self
                .log_heads
                .lock()
                .expect("log heads lock")
                .get(&shard.0)
                .copied()
                .unwrap_or(0);
            if sequence <= known {
                continue;
            }
            // Beyond what was seen: read the head again (a command may have
            // returned this position since), and refuse only past it.
            let Some(head) = self.log_head(shard).await else {
                continue;
            };
            {
                let mut heads = self.log_heads.lock().expect("log heads lock");
                let entry = heads.entry(shard.0).or_default();
                *entry = (*entry).max(head);
            }
            if sequence > head {
                return Some(BeyondHead {
                    part,
                    shard: shard.0,
                    head,
                });
            }
        }
        None
    }

    async fn covers_inner(&self, position: &ReadPosition) -> Result<bool, CqlReadModelError> {
        for wanted in &position.positions {
            if wanted.sequence == 0 {
                continue;
            }
            let projected_through = self.next_sequence(wanted.shard).await?.saturating_sub(1);
            if projected_through < wanted.sequence {
                return Ok(false);
            }
        }
        for mark in &position.deliveries {
            let consumed: Option<(i64,)> = self
                .select_first(
                    &self.statements.select_delivery,
                    (i32::from(mark.from.0), i32::from(mark.to.0)),
                    "delivery read",
                )
                .await?;
            let consumed = match consumed {
                Some((sequence,)) => from_cql("delivery sequence", sequence)?,
                None => 0,
            };
            if consumed < mark.sequence {
                return Ok(false);
            }
        }
        Ok(true)
    }

    async fn balance_inner(&self, user_id: &str) -> Result<BalanceView, CqlReadModelError> {
        let parts: Vec<(i64, i64)> = self
            .select(
                &self.statements.select_balance_parts,
                (user_id,),
                "balance read",
            )
            .await?;
        Ok(BalanceView {
            user_id: user_id.to_string(),
            balance: total("balance", parts.iter().map(|(wallet, _)| *wallet))?,
            pending: total(
                "pending earnings",
                parts.iter().map(|(_, pending)| *pending),
            )?,
        })
    }

    async fn inventory_inner(
        &self,
        user_id: &str,
        limit: usize,
        after: (String, i64),
    ) -> Result<Page<InventoryEntry>, CqlReadModelError> {
        let rows: Vec<(String, i64, String, i64)> = self
            .select(
                &self.statements.select_inventory,
                (user_id, after.0, after.1, row_limit(limit + 1)),
                "inventory read",
            )
            .await?;
        let mut entries = Vec::with_capacity(rows.len());
        for (item_id, serial, purchase_id, acquired_at_ms) in rows {
            let serial = if serial == NON_LIMITED_SERIAL {
                None
            } else {
                Some(u32_from_cql("serial", serial)?)
            };
            entries.push(InventoryEntry {
                item_id,
                serial,
                purchase_id,
                acquired_at_ms: from_cql("acquisition time", acquired_at_ms)?,
            });
        }
        Ok(into_page(
            entries,
            limit,
            |entry| {
                encode_cursor(
                    CURSOR_INVENTORY,
                    &[&entry.item_id, &entry.serial.unwrap_or(0).to_string()],
                )
            },
            |entry| entry,
        ))
    }

    async fn transactions_inner(
        &self,
        user_id: &str,
        limit: usize,
        before: Option<TransactionKey>,
    ) -> Result<Page<TransactionEntry>, CqlReadModelError> {
        let newest_bucket = match &before {
            Some(key) => to_cql(
                "bucket",
                transaction_bucket(from_cql("cursor time", key.at_ms)?),
            )?,
            None => i64::MAX,
        };
        let mut buckets = self
            .stream::<(i64,)>(
                &self.statements.select_transaction_buckets,
                (user_id, newest_bucket),
                "transaction bucket read",
            )
            .await?;
        let mut rows: Vec<TransactionRow> = Vec::new();
        while rows.len() <= limit {
            let Some((bucket,)) = next_row(&mut buckets, "transaction bucket read").await? else {
                break;
            };
            let wanted = row_limit(limit + 1 - rows.len());
            let page: Vec<TransactionRow> = match &before {
                Some(key) => {
                    self.select(
                        &self.statements.select_transactions_before,
                        (
                            user_id,
                            bucket,
                            key.at_ms,
                            key.shard,
                            key.sequence,
                            key.account.as_str(),
                            wanted,
                        ),
                        "transaction page read",
                    )
                    .await?
                }
                None => {
                    self.select(
                        &self.statements.select_transactions,
                        (user_id, bucket, wanted),
                        "transaction read",
                    )
                    .await?
                }
            };
            rows.extend(page);
        }
        let mut entries = Vec::with_capacity(rows.len());
        for (at_ms, shard, sequence, account, position, kind, amount, reference) in rows {
            entries.push((
                TransactionKey {
                    at_ms,
                    shard,
                    sequence,
                    account: account.clone(),
                },
                TransactionEntry {
                    position,
                    kind,
                    account,
                    amount,
                    reference,
                    at_ms: from_cql("transaction time", at_ms)?,
                },
            ));
        }
        Ok(into_page(
            entries,
            limit,
            |(key, _)| key.cursor(),
            |(_, entry)| entry,
        ))
    }

    async fn item_inner(&self, item_id: &str) -> Result<Option<ItemView>, CqlReadModelError> {
        let definition = async {
            self.select_first::<ItemRow>(&self.statements.select_item, (item_id,), "item read")
                .await
        };
        let counts = async {
            self.select::<(i64, i64)>(
                &self.statements.select_item_count_parts,
                (item_id,),
                "item count read",
            )
            .await
        };
        let lowest_resale_price = async {
            self.select_first::<(i64,)>(
                &self.statements.select_lowest_resale_price,
                (item_id,),
                "lowest resale price read",
            )
            .await
        };
        let (definition, counts, lowest_resale_price, recent_average_price, price_test) = tokio::try_join!(
            definition,
            counts,
            lowest_resale_price,
            self.recent_average_price(item_id),
            self.item_price_test(item_id)
        )?;
        let Some((
            Some(creator_id),
            name,
            price,
            on_sale,
            supply,
            max_per_user,
            starts_at_ms,
            ends_at_ms,
            resellable,
            kind,
            regional_prices,
        )) = definition
        else {
            return Ok(None);
        };
        let incomplete = |column: &'static str| CqlReadModelError::IncompleteRow {
            table: "items",
            column,
            key: item_id.to_string(),
        };
        let sold = from_cql(
            "items sold",
            total("items sold", counts.iter().map(|(sold, _)| *sold))?,
        )?;
        let sales_count = from_cql(
            "item sales count",
            total("item sales count", counts.iter().map(|(_, sales)| *sales))?,
        )?;
        let supply = supply
            .map(|supply| u32_from_cql("supply", supply))
            .transpose()?;
        Ok(Some(ItemView {
            item_id: item_id.to_string(),
            creator_id,
            name: name.ok_or_else(|| incomplete("name"))?,
            price: price.ok_or_else(|| incomplete("price"))?,
            on_sale: on_sale.ok_or_else(|| incomplete("on_sale"))?,
            limited: supply.is_some(),
            supply,
            sold,
            remaining: supply.map(|supply| u64::from(supply).saturating_sub(sold)),
            max_per_user: max_per_user
                .map(|max| u32_from_cql("max per user", max))
                .transpose()?,
            starts_at_ms: starts_at_ms
                .map(|at| from_cql("sale start", at))
                .transpose()?,
            ends_at_ms: ends_at_ms.map(|at| from_cql("sale end", at)).transpose()?,
            resellable: resellable.ok_or_else(|| incomplete("resellable"))?,
            // Rows written before kinds existed are accessories.
            kind: kind.unwrap_or_else(|| ledger_core::ItemKind::Accessory.as_str().to_string()),
            price_test,
            regional_prices: match regional_prices {
                None => Default::default(),
                Some(stored) => projectors::parse_regional_prices(&stored)
                    .map_err(|_| incomplete("regional_prices"))?,
            },
            sales_count,
            recent_average_price,
            lowest_resale_price: lowest_resale_price.map(|(price,)| price),
        }))
    }

    /// The recent average price over the item's newest
    /// [`RECENT_SALES_WINDOW`] sales, folded oldest first.
    async fn recent_average_price(&self, item_id: &str) -> Result<Option<i64>, CqlReadModelError> {
        let mut buckets = self
            .stream::<(i64,)>(
                &self.statements.select_sale_buckets,
                (item_id,),
                "sale bucket read",
            )
            .await?;
        let mut newest_first: Vec<i64> = Vec::new();
        while newest_first.len() < RECENT_SALES_WINDOW {
            let Some((bucket,)) = next_row(&mut buckets, "sale bucket read").await? else {
                break;
            };
            let wanted = row_limit(RECENT_SALES_WINDOW - newest_first.len());
            let prices: Vec<(i64,)> = self
                .select(
                    &self.statements.select_sale_prices,
                    (item_id, bucket, wanted),
                    "sale read",
                )
                .await?;
            newest_first.extend(prices.into_iter().map(|(price,)| price));
        }
        Ok(recent_average_price(newest_first.into_iter().rev()))
    }

    /// An item's history of days `from_day..to_day`: the sums of each day's
    /// parts, the lowest ask after each day's last change of the book, and
    /// the recent average price at the end of each day with sales, computed
    /// as [`Self::recent_average_price`] does (the newest
    /// [`RECENT_SALES_WINDOW`] sales up to that day's end, folded oldest
    /// first).
    async fn item_days_inner(
        &self,
        item_id: &str,
        from_day: u64,
        to_day: u64,
    ) -> Result<ItemDays, CqlReadModelError> {
        let from = to_cql("history start", from_day)?;
        let to = to_cql("history end", to_day)?;
        type DayPartRow = (i64, i64, i64, i64, i64, i64, i64);
        let parts = self.select::<DayPartRow>(
            &self.statements.select_item_day_parts,
            (item_id, from, to),
            "item history read",
        );
        let asks = self.select::<(i64, Option<i64>)>(
            &self.statements.select_item_ask_days,
            (item_id, from, to),
            "item ask read",
        );
        let ask_before = self.select_first::<(Option<i64>,)>(
            &self.statements.select_item_ask_before,
            (item_id, from),
            "item ask read",
        );
        let (parts, asks, ask_before, (average_before, averages)) = tokio::try_join!(
            parts,
            asks,
            ask_before,
            self.daily_recent_average_prices(item_id, from, to)
        )?;
        let mut days: BTreeMap<u64, ItemDay> = BTreeMap::new();
        fn day_entry(
            days: &mut BTreeMap<u64, ItemDay>,
            day: i64,
        ) -> Result<&mut ItemDay, CqlReadModelError> {
            let day = from_cql("history day", day)?;
            Ok(days.entry(day).or_insert_with(|| ItemDay {
                day,
                ..ItemDay::default()
            }))
        }
        for (day, primary, primary_revenue, resale, resale_revenue, refunded, refunded_revenue) in
            parts
        {
            let entry = day_entry(&mut days, day)?;
            let add = |total: u64, part: i64| -> Result<u64, CqlReadModelError> {
                Ok(total.saturating_add(from_cql("item history count", part)?))
            };
            entry.primary_count = add(entry.primary_count, primary)?;
            entry.resale_count = add(entry.resale_count, resale)?;
            entry.refunded_count = add(entry.refunded_count, refunded)?;
            entry.primary_revenue = entry.primary_revenue.saturating_add(primary_revenue);
            entry.resale_revenue = entry.resale_revenue.saturating_add(resale_revenue);
            entry.refunded_revenue = entry.refunded_revenue.saturating_add(refunded_revenue);
        }
        for (day, lowest) in asks {
            day_entry(&mut days, day)?.lowest_resale_ask = Some(lowest);
        }
        for (day, average) in averages {
            day_entry(&mut days, day)?.recent_average_price = Some(average);
        }
        Ok(ItemDays {
            recent_average_price_before: average_before,
            lowest_resale_ask_before: ask_before.and_then(|(lowest,)| lowest),
            days: days.into_values().collect(),
        })
    }

    /// The recent average price when day `from` began, and at the end of
    /// each day of `from..to` with sales: a window of the newest
    /// [`RECENT_SALES_WINDOW`] sales slides over the days, oldest first.
    /// Reads the newest window before `from` (walking back over days with
    /// sales), then at most a window's worth of each day in the range.
    async fn daily_recent_average_prices(
        &self,
        item_id: &str,
        from: i64,
        to: i64,
    ) -> Result<(Option<i64>, Vec<(i64, i64)>), CqlReadModelError> {
        let window_rows = row_limit(RECENT_SALES_WINDOW);
        let mut before = self
            .stream::<(i64,)>(
                &self.statements.select_sale_buckets_before,
                (item_id, from),
                "sale bucket read",
            )
            .await?;
        let mut newest_first: Vec<i64> = Vec::new();
        while newest_first.len() < RECENT_SALES_WINDOW {
            let Some((bucket,)) = next_row(&mut before, "sale bucket read").await? else {
                break;
            };
            let wanted = row_limit(RECENT_SALES_WINDOW - newest_first.len());
            let prices: Vec<(i64,)> = self
                .select(
                    &self.statements.select_sale_prices,
                    (item_id, bucket, wanted),
                    "sale read",
                )
                .await?;
            newest_first.extend(prices.into_iter().map(|(price,)| price));
        }
        let mut window: VecDeque<i64> = newest_first.into_iter().rev().collect();
        let average_before = recent_average_price(window.iter().copied());

        let mut buckets: Vec<i64> = self
            .select::<(i64,)>(
                &self.statements.select_sale_buckets_between,
                (item_id, from, to),
                "sale bucket read",
            )
            .await?
            .into_iter()
            .map(|(bucket,)| bucket)
            .collect();
        buckets.sort_unstable();
        let reads = buckets.iter().copied().map(|bucket| async move {
            let prices: Vec<(i64,)> = self
                .select(
                    &self.statements.select_sale_prices,
                    (item_id, bucket, window_rows),
                    "sale read",
                )
                .await?;
            Ok::<_, CqlReadModelError>((bucket, prices))
        });
        let mut days = futures_util::stream::iter(reads).buffered(self.settings.write_concurrency);
        let mut averages = Vec::with_capacity(buckets.len());
        while let Some(day) = days.next().await {
            let (bucket, newest_first) = day?;
            if newest_first.is_empty() {
                continue;
            }
            window.extend(newest_first.into_iter().rev().map(|(price,)| price));
            while window.len() > RECENT_SALES_WINDOW {
                window.pop_front();
            }
            if let Some(average) = recent_average_price(window.iter().copied()) {
                averages.push((bucket, average));
            }
        }
        Ok((average_before, averages))
    }

    async fn resale_listings_inner(
        &self,
        item_id: &str,
        limit: usize,
        after: (i64, String),
    ) -> Result<Page<ListingView>, CqlReadModelError> {
        let rows: Vec<(String, i64, String, i64)> = self
            .select(
                &self.statements.select_resale_listings,
                (item_id, after.0, after.1, row_limit(limit + 1)),
                "resale listing read",
            )
            .await?;
        let mut listings = Vec::with_capacity(rows.len());
        for (listing_id, serial, seller_id, price) in rows {
            listings.push(ListingView {
                listing_id,
                item_id: item_id.to_string(),
                serial: u32_from_cql("serial", serial)?,
                seller_id,
                price,
            });
        }
        Ok(into_page(
            listings,
            limit,
            |listing| {
                encode_cursor(
                    CURSOR_LISTINGS,
                    &[&listing.price.to_string(), &listing.listing_id],
                )
            },
            |listing| listing,
        ))
    }

    async fn owners_inner(
        &self,
        item_id: &str,
        limit: usize,
        after_serial: Option<u32>,
    ) -> Result<Page<OwnerEntry>, CqlReadModelError> {
        let first_bucket = to_cql("bucket", after_serial.map_or(0, owner_bucket))?;
        let after_serial = after_serial.map_or(-1, i64::from);
        let mut buckets = self
            .stream::<(i64,)>(
                &self.statements.select_owner_buckets,
                (item_id, first_bucket),
                "owner bucket read",
            )
            .await?;
        let mut owners: Vec<OwnerEntry> = Vec::new();
        while owners.len() <= limit {
            let Some((bucket,)) = next_row(&mut buckets, "owner bucket read").await? else {
                break;
            };
            let wanted = row_limit(limit + 1 - owners.len());
            let rows: Vec<(i64, String)> = self
                .select(
                    &self.statements.select_owners,
                    (item_id, bucket, after_serial, wanted),
                    "owner read",
                )
                .await?;
            for (serial, user_id) in rows {
                owners.push(OwnerEntry {
                    serial: u32_from_cql("serial", serial)?,
                    user_id,
                });
            }
        }
        Ok(into_page(
            owners,
            limit,
            |owner| encode_cursor(CURSOR_OWNERS, &[&owner.serial.to_string()]),
            |owner| owner,
        ))
    }

    async fn bundle_inner(&self, bundle_id: &str) -> Result<Option<BundleView>, CqlReadModelError> {
        let row: Option<BundleRow> = self
            .select_first(&self.statements.select_bundle, (bundle_id,), "bundle read")
            .await?;
        let Some((Some(creator_id), name, item_ids, price)) = row else {
            return Ok(None);
        };
        let incomplete = |column: &'static str| CqlReadModelError::IncompleteRow {
            table: "bundles",
            column,
            key: bundle_id.to_string(),
        };
        Ok(Some(BundleView {
            bundle_id: bundle_id.to_string(),
            creator_id,
            name: name.ok_or_else(|| incomplete("name"))?,
            item_ids: item_ids.ok_or_else(|| incomplete("item_ids"))?,
            price: price.ok_or_else(|| incomplete("price"))?,
        }))
    }

    async fn purchase_steps_inner(
        &self,
        purchase_id: &str,
    ) -> Result<Vec<PurchaseStepView>, CqlReadModelError> {
        type StepRow = (
            String,
            String,
            String,
            String,
            Option<i64>,
            Option<i64>,
            String,
            i64,
        );
        let rows: Vec<StepRow> = self
            .select(
                &self.statements.select_purchase_steps,
                (purchase_id, row_limit(PURCHASE_STEPS_MAX)),
                "purchase steps read",
            )
            .await?;
        let mut steps = Vec::with_capacity(rows.len());
        for (position, step, user_id, subject, serial, amount, detail, at_ms) in rows {
            steps.push(PurchaseStepView {
                position,
                step,
                user_id,
                subject,
                serial: serial
                    .map(|serial| u32_from_cql("serial", serial))
                    .transpose()?,
                amount,
                detail,
                at_ms: from_cql("step time", at_ms)?,
            });
        }
        Ok(steps)
    }

    /// The item's current price test: the latest started, not closed.
    async fn item_price_test(
        &self,
        item_id: &str,
    ) -> Result<Option<ItemPriceTestView>, CqlReadModelError> {
        let rows = self
            .select::<(
                String,
                Option<String>,
                Option<i64>,
                Option<i64>,
                Option<bool>,
            )>(
                &self.statements.select_item_price_tests,
                (item_id,),
                "item price tests read",
            )
            .await?;
        let incomplete = |column: &'static str| CqlReadModelError::IncompleteRow {
            table: "item_price_tests",
            column,
            key: item_id.to_string(),
        };
        let mut current: Option<(i64, ItemPriceTestView)> = None;
        for (test_id, arms, ends_at_ms, started, closed) in rows {
            if closed.unwrap_or(false) {
                continue;
            }
            let started = started.ok_or_else(|| incomplete("started"))?;
            if current
                .as_ref()
                .is_some_and(|(latest, _)| *latest > started)
            {
                continue;
            }
            let arms = projectors::parse_arms(&arms.ok_or_else(|| incomplete("arms"))?)
                .map_err(|_| incomplete("arms"))?;
            let ends_at_ms = from_cql(
                "test end",
                ends_at_ms.ok_or_else(|| incomplete("ends_at_ms"))?,
            )?;
            current = Some((
                started,
                ItemPriceTestView {
                    test_id,
                    arms,
                    ends_at_ms,
                },
            ));
        }
        Ok(current.map(|(_, view)| view))
    }

    /// The takedown of `item_id`, with `left_limit` of the purchases it
    /// left after the purchase id `left_after` ("" for the first page: no
    /// id is empty).
    async fn takedown_inner(
        &self,
        item_id: &str,
        left_limit: usize,
        left_after: &str,
    ) -> Result<Option<TakedownView>, CqlReadModelError> {
        type TakedownRow = (
            Option<i64>,
            Option<i64>,
            Option<i64>,
            Option<i64>,
            Option<i64>,
            Option<i64>,
            Option<i64>,
            Option<i64>,
            Option<i64>,
        );
        let (row, left) = tokio::try_join!(
            self.select_first::<TakedownRow>(
                &self.statements.select_takedown,
                (item_id,),
                "takedown read"
            ),
            self.select::<(String, Option<String>)>(
                &self.statements.select_takedown_sales,
                (item_id, "left", left_after, row_limit(left_limit + 1)),
                "takedown sales read",
            )
        )?;
        let Some((
            listings_ended,
            shard_count,
            shards_reported,
            refunded,
            refunded_amount,
            already_refunded,
            left_count,
            started_at_ms,
            updated_at_ms,
        )) = row
        else {
            return Ok(None);
        };
        let incomplete = |column: &'static str| CqlReadModelError::IncompleteRow {
            table: "takedowns",
            column,
            key: item_id.to_string(),
        };
        let count = |what: &'static str, value: Option<i64>| -> Result<u32, CqlReadModelError> {
            u32_from_cql(what, value.unwrap_or(0))
        };
        let shard_count = shard_count.ok_or_else(|| incomplete("shard_count"))?;
        let shard_count = u16::try_from(shard_count).map_err(|_| incomplete("shard_count"))?;
        let shards_reported = u16::try_from(shards_reported.unwrap_or(0))
            .map_err(|_| incomplete("shards_reported"))?;
        let started_at_ms = from_cql(
            "takedown start",
            started_at_ms.ok_or_else(|| incomplete("started_at_ms"))?,
        )?;
        let left = into_page(
            left,
            left_limit,
            |(purchase_id, _)| encode_cursor(CURSOR_TAKEDOWN_LEFT, &[purchase_id]),
            |(purchase_id, reason)| TakedownLeftView {
                purchase_id,
                reason: reason.unwrap_or_default(),
            },
        );
        Ok(Some(TakedownView {
            item_id: item_id.to_string(),
            status: TakedownView::status_of(shards_reported, shard_count).to_string(),
            listings_ended: count("listings ended", listings_ended)?,
            shard_count,
            shards_reported,
            refunded: count("refunded", refunded)?,
            refunded_amount: refunded_amount.unwrap_or(0),
            already_refunded: count("already refunded", already_refunded)?,
            left_count: count("left", left_count)?,
            left: left.entries,
            left_next_cursor: left.next_cursor,
            started_at_ms,
            updated_at_ms: from_cql("takedown update", updated_at_ms.unwrap_or(0))?
                .max(started_at_ms),
        }))
    }

    async fn price_test_inner(
        &self,
        test_id: &str,
    ) -> Result<Option<PriceTestView>, CqlReadModelError> {
        type TestRow = (
            Option<String>,
            Option<String>,
            Option<i64>,
            Option<bool>,
            Option<String>,
            Option<i32>,
            Option<i64>,
        );
        let (test, arms) = tokio::try_join!(
            self.select_first::<TestRow>(
                &self.statements.select_price_test,
                (test_id,),
                "price test read"
            ),
            self.select::<(Option<i64>, Option<i64>, Option<i64>, Option<i64>)>(
                &self.statements.select_price_test_arms,
                (test_id,),
                "price test arms read",
            )
        )?;
        let Some((item_id, creator_id, ends_at_ms, apply_winner, status, winner, applied_price)) =
            test
        else {
            return Ok(None);
        };
        let incomplete = |column: &'static str| CqlReadModelError::IncompleteRow {
            table: "price_tests",
            column,
            key: test_id.to_string(),
        };
        let arms = arms
            .into_iter()
            .map(|(price, exposures, purchases, revenue)| {
                Ok(PriceTestArmView {
                    price: price.ok_or_else(|| incomplete("price"))?,
                    exposures: from_cql("exposures", exposures.unwrap_or(0))?,
                    purchases: from_cql("test purchases", purchases.unwrap_or(0))?,
                    revenue: revenue.unwrap_or(0),
                })
            })
            .collect::<Result<Vec<_>, CqlReadModelError>>()?;
        Ok(Some(PriceTestView {
            test_id: test_id.to_string(),
            item_id: item_id.ok_or_else(|| incomplete("item_id"))?,
            creator_id,
            status: status.ok_or_else(|| incomplete("status"))?,
            ends_at_ms: from_cql(
                "test end",
                ends_at_ms.ok_or_else(|| incomplete("ends_at_ms"))?,
            )?,
            apply_winner: apply_winner.ok_or_else(|| incomplete("apply_winner"))?,
            winner: winner
                .map(|arm| u8::try_from(arm).map_err(|_| incomplete("winner")))
                .transpose()?,
            applied_price,
            arms,
        }))
    }

    async fn price_floors_inner(&self) -> Result<Vec<PriceFloorView>, CqlReadModelError> {
        let limit = i32::try_from(PRICE_FLOOR_VERSIONS_MAX).expect("the floor bound fits in i32");
        let rows = self
            .select::<(String, i64, i64, i64)>(
                &self.statements.select_price_floors,
                (limit,),
                "price floor read",
            )
            .await?;
        rows.into_iter()
            .map(|(kind, version, price, effective_from_ms)| {
                Ok(PriceFloorView {
                    kind,
                    version: u32::try_from(version).map_err(|_| {
                        CqlReadModelError::StoredIntegerOutOfRange {
                            what: "floor version",
                            value: version,
                        }
                    })?,
                    price,
                    effective_from_ms: from_cql("floor start", effective_from_ms)?,
                })
            })
            .collect()
    }

    async fn creator_sales_inner(
        &self,
        creator_id: &str,
        range: SalesRange<'_>,
    ) -> Result<Page<CreatorSaleView>, ReadError> {
        type SaleRow = (
            String,
            i64,
            String,
            bool,
            i64,
            i64,
            i64,
            i32,
            i64,
            Option<bool>,
            Option<i64>,
            Option<i64>,
        );
        let limit = page_size(range.limit);
        let (start_ms, start_purchase) = range.start()?;
        let to_ms = range.to_ms.unwrap_or(u64::MAX);
        if start_ms >= to_ms {
            return Ok(Page {
                entries: Vec::new(),
                next_cursor: None,
            });
        }
        let first_bucket = to_cql("bucket", transaction_bucket(start_ms))?;
        let last_bucket = to_cql("bucket", transaction_bucket(to_ms.saturating_sub(1)))?;
        let start_at = to_cql("sale time", start_ms)?;
        let mut buckets = self
            .stream::<(i64,)>(
                &self.statements.select_creator_sale_buckets,
                (creator_id, first_bucket, last_bucket),
                "creator sale bucket read",
            )
            .await?;
        let mut sales: Vec<CreatorSaleView> = Vec::new();
        'buckets: while sales.len() <= limit {
            let Some((bucket,)) = next_row(&mut buckets, "creator sale bucket read").await? else {
                break;
            };
            let rows: Vec<SaleRow> = self
                .select(
                    &self.statements.select_creator_sales,
                    (
                        creator_id,
                        bucket,
                        start_at,
                        start_purchase.as_str(),
                        row_limit(limit + 1 - sales.len()),
                    ),
                    "creator sales read",
                )
                .await?;
            for row in rows {
                let (
                    purchase_id,
                    sold_at_ms,
                    position,
                    resale,
                    cleared,
                    creator_share,
                    platform_fee,
                    policy_version,
                    release_at_ms,
                    frozen,
                    released_at_ms,
                    refunded_at_ms,
                ) = row;
                let sold_at_ms = from_cql("sale time", sold_at_ms)?;
                if sold_at_ms >= to_ms {
                    break 'buckets;
                }
                let settled_at_ms = refunded_at_ms
                    .or(released_at_ms)
                    .map(|at_ms| from_cql("escrow settlement time", at_ms))
                    .transpose()?;
                sales.push(CreatorSaleView {
                    purchase_id,
                    sold_at_ms,
                    position,
                    resale,
                    cleared,
                    creator_share,
                    platform_fee,
                    policy_version: u16::try_from(policy_version).map_err(|_| {
                        CqlReadModelError::StoredIntegerOutOfRange {
                            what: "fee policy version",
                            value: i64::from(policy_version),
                        }
                    })?,
                    status: sale_status(
                        frozen.unwrap_or(false),
                        released_at_ms.is_some(),
                        refunded_at_ms.is_some(),
                    ),
                    release_at_ms: from_cql("release time", release_at_ms)?,
                    settled_at_ms,
                });
            }
        }
        Ok(into_page(sales, limit, sale_cursor, |sale| sale))
    }

    async fn earnings_inner(&self, creator_id: &str) -> Result<EarningsView, CqlReadModelError> {
        let parts: Vec<(i64, i64, i64, i64)> = self
            .select(
                &self.statements.select_earnings_parts,
                (creator_id,),
                "earnings read",
            )
            .await?;
        let sales_count = total("earnings sales count", parts.iter().map(|part| part.3))?;
        Ok(EarningsView {
            creator_id: creator_id.to_string(),
            pending: total("pending earnings", parts.iter().map(|part| part.0))?,
            released: total("released earnings", parts.iter().map(|part| part.1))?,
            lifetime: total("lifetime earnings", parts.iter().map(|part| part.2))?,
            sales_count: from_cql("earnings sales count", sales_count)?,
        })
    }
}

#[async_trait]
impl ReadModels for CqlReadModels {
    async fn covers(&self, position: &ReadPosition) -> Result<bool, ReadError> {
        Ok(self.covers_inner(position).await?)
    }

    async fn beyond_head(&self, position: &ReadPosition) -> Result<Option<BeyondHead>, ReadError> {
        Ok(self.beyond_head_inner(position).await)
    }

    async fn balance(&self, user_id: &str) -> Result<BalanceView, ReadError> {
        Ok(self.balance_inner(user_id).await?)
    }

    async fn inventory(
        &self,
        user_id: &str,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<Page<InventoryEntry>, ReadError> {
        let after = match cursor {
            None => (String::new(), -1),
            Some(cursor) => {
                let fields = decode_cursor(CURSOR_INVENTORY, cursor, 2)?;
                (
                    parse_id(&fields[0])?,
                    parse_field::<u32>(&fields[1]).map(i64::from)?,
                )
            }
        };
        Ok(self
            .inventory_inner(user_id, page_size(limit), after)
            .await?)
    }

    async fn transactions(
        &self,
        user_id: &str,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<Page<TransactionEntry>, ReadError> {
        let before = cursor.map(TransactionKey::from_cursor).transpose()?;
        Ok(self
            .transactions_inner(user_id, page_size(limit), before)
            .await?)
    }

    async fn item(&self, item_id: &str) -> Result<Option<ItemView>, ReadError> {
        Ok(self.item_inner(item_id).await?)
    }

    async fn item_days(
        &self,
        item_id: &str,
        from_day: u64,
        to_day: u64,
    ) -> Result<ItemDays, ReadError> {
        Ok(self.item_days_inner(item_id, from_day, to_day).await?)
    }

    async fn resale_listings(
        &self,
        item_id: &str,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<Page<ListingView>, ReadError> {
        let after = match cursor {
            None => (i64::MIN, String::new()),
            Some(cursor) => {
                let fields = decode_cursor(CURSOR_LISTINGS, cursor, 2)?;
                (parse_field::<i64>(&fields[0])?, parse_id(&fields[1])?)
            }
        };
        Ok(self
            .resale_listings_inner(item_id, page_size(limit), after)
            .await?)
    }

    async fn owners(
        &self,
        item_id: &str,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<Page<OwnerEntry>, ReadError> {
        let after_serial = match cursor {
            None => None,
            Some(cursor) => Some(parse_field::<u32>(
                &decode_cursor(CURSOR_OWNERS, cursor, 1)?[0],
            )?),
        };
        Ok(self
            .owners_inner(item_id, page_size(limit), after_serial)
            .await?)
    }

    async fn bundle(&self, bundle_id: &str) -> Result<Option<BundleView>, ReadError> {
        Ok(self.bundle_inner(bundle_id).await?)
    }

    async fn earnings(&self, creator_id: &str) -> Result<EarningsView, ReadError> {
        Ok(self.earnings_inner(creator_id).await?)
    }

    async fn purchase_steps(&self, purchase_id: &str) -> Result<Vec<PurchaseStepView>, ReadError> {
        Ok(self.purchase_steps_inner(purchase_id).await?)
    }

    async fn creator_sales(
        &self,
        creator_id: &str,
        range: SalesRange<'_>,
    ) -> Result<Page<CreatorSaleView>, ReadError> {
        self.creator_sales_inner(creator_id, range).await
    }

    async fn price_floors(&self) -> Result<Vec<PriceFloorView>, ReadError> {
        Ok(self.price_floors_inner().await?)
    }

    async fn price_test(&self, test_id: &str) -> Result<Option<PriceTestView>, ReadError> {
        Ok(self.price_test_inner(test_id).await?)
    }

    async fn takedown(
        &self,
        item_id: &str,
        left_limit: usize,
        left_cursor: Option<&str>,
    ) -> Result<Option<TakedownView>, ReadError> {
        let left_after = match left_cursor {
            None => String::new(),
            Some(cursor) => parse_id(&decode_cursor(CURSOR_TAKEDOWN_LEFT, cursor, 1)?[0])?,
        };
        Ok(self
            .takedown_inner(item_id, page_size(left_limit), &left_after)
            .await?)
    }
}
