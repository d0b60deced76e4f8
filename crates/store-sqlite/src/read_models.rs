//! The [`ReadModels`] port over the read-model tables.
//!
//! Listings page with keyset cursors: a cursor is the key of the last entry
//! returned (tagged with the listing it belongs to), hex-encoded so it is
//! opaque and URL-safe. Rows inserted or removed between pages never shift
//! the following pages.

use std::sync::Arc;

use async_trait::async_trait;
use ledger_core::{validate_id, ReadPosition};
use projectors::{
    sale_cursor, sale_status, BalanceView, BeyondHead, BundleView, CreatorSaleView, EarningsView,
    InventoryEntry, ItemDay, ItemDays, ItemPriceTestView, ItemView, ListingView, OwnerEntry, Page,
    PriceFloorView, PriceTestArmView, PriceTestView, PurchaseStepView, ReadError, ReadModels,
    SalesRange, TakedownLeftView, TakedownView, TransactionAccount, TransactionEntry,
    PAGE_SIZE_MAX, PRICE_FLOOR_VERSIONS_MAX,
};
use rusqlite::{params, Connection, OptionalExtension};

use crate::apply::NON_LIMITED_SERIAL;
use crate::error::{from_sql, SqliteStoreError};
use crate::published::{Balances, CachedKind, Inventories, Items, Published};
use crate::reader::ReadPool;

/// Read models served from the SQLite read-model tables, with the marks and
/// hottest views the projector publishes in memory ([`Published`]).
pub struct SqliteReadModels {
    readers: Arc<ReadPool>,
    published: Arc<Published>,
}

impl SqliteReadModels {
    pub(crate) fn new(readers: Arc<ReadPool>, published: Arc<Published>) -> Self {
        Self { readers, published }
    }

    /// The view under `key` from the published cache, or loaded by `load`
    /// and kept (see [`Published::keep`] for when it is not).
    async fn cached<K, L>(&self, key: K::Key, load: L) -> Result<K::View, ReadError>
    where
        K: CachedKind,
        L: std::future::Future<Output = Result<K::View, ReadError>>,
    {
        let missed = match self.published.lookup::<K>(&key) {
            Ok(view) => return Ok(view),
            Err(missed) => missed,
        };
        let view = load.await?;
        self.published.keep::<K>(missed, key, view.clone());
        Ok(view)
    }

    /// A bounded read (a row, or a page of at most `PAGE_SIZE_MAX` rows),
    /// run on the calling task ([`crate::reader::ReadPool::run_here`]).
    async fn read<T, F>(&self, operation: &'static str, work: F) -> Result<T, ReadError>
    where
        F: FnOnce(&mut Connection) -> Result<T, SqliteStoreError>,
    {
        self.readers
            .run_here(operation, work)
            .await
            .map_err(|error| ReadError::Backend(error.to_string()))
    }
}

/// `limit` clamped to `1..=PAGE_SIZE_MAX`.
fn page_size(limit: usize) -> usize {
    limit.clamp(1, PAGE_SIZE_MAX)
}

const CURSOR_INVENTORY: &str = "inventory";
const CURSOR_TRANSACTIONS: &str = "transactions";
const CURSOR_LISTINGS: &str = "listings";
const CURSOR_OWNERS: &str = "owners";
const CURSOR_TAKEDOWN_LEFT: &str = "takedown-left";

/// Makes a cursor from a listing tag and the fields of the last key.
fn encode_cursor(tag: &str, fields: &[&str]) -> String {
    let mut text = tag.to_string();
    for field in fields {
        text.push('/');
        text.push_str(field);
    }
    text.bytes().map(|byte| format!("{byte:02x}")).collect()
}

/// The key fields of a cursor made by [`encode_cursor`] for `tag`.
fn decode_cursor(tag: &str, cursor: &str, field_count: usize) -> Result<Vec<String>, ReadError> {
    if cursor.len() % 2 == 1 || cursor.len() > 1_024 {
        return Err(ReadError::BadCursor);
    }
    let bytes = (0..cursor.len())
        .step_by(2)
        .map(|index| {
            cursor
                .get(index..index + 2)
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
        })
        .collect::<Option<Vec<u8>>>()
        .ok_or(ReadError::BadCursor)?;
    let text = String::from_utf8(bytes).map_err(|_| ReadError::BadCursor)?;
    let mut parts = text.split('/');
    if parts.next() != Some(tag) {
        return Err(ReadError::BadCursor);
    }
    let fields: Vec<String> = parts.map(str::to_string).collect();
    if fields.len() != field_count {
        return Err(ReadError::BadCursor);
    }
    Ok(fields)
}

fn parse_field<T: std::str::FromStr>(field: &str) -> Result<T, ReadError> {
    field.parse().map_err(|_| ReadError::BadCursor)
}

fn parse_id(field: &str) -> Result<String, ReadError> {
    validate_id("cursor", field).map_err(|_| ReadError::BadCursor)?;
    Ok(field.to_string())
}

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

fn sql_limit(limit: usize) -> i64 {
    i64::try_from(limit + 1).expect("page sizes are small")
}

fn query_failed(operation: &'static str) -> impl FnOnce(rusqlite::Error) -> SqliteStoreError {
    SqliteStoreError::sqlite(operation)
}

struct TransactionRow {
    event_position: i64,
    account: String,
    entry: TransactionEntry,
}

/// How many messages `sender` has sent `receiver`, when that can be told
/// for sure; `None` when it cannot (the read then waits, within its bound).
///
/// A message a command's answer names was appended before the answer, so
/// it is either still in the outbox or already consumed. With messages in
/// the outbox, the last of them is the last sent. With none, every message
/// sent was consumed; once the read models have projected the receiver's
/// whole log, their delivery mark is the last one sent. Read in that order
/// (outbox, receiver's head, receiver's checkpoint, delivery mark), so a
/// message consumed meanwhile is counted, never missed.
fn messages_sent(
    connection: &Connection,
    sender: u16,
    receiver: u16,
) -> Result<Option<u64>, SqliteStoreError> {
    let outbox: Option<i64> = connection
        .prepare_cached("SELECT MAX(sequence) FROM messages WHERE receiver = ?1 AND sender = ?2")
        .and_then(|mut statement| statement.query_row(params![receiver, sender], |row| row.get(0)))
        .map_err(query_failed("read outbox head"))?;
    if let Some(last) = outbox {
        return Ok(Some(from_sql("outbox sequence", last)?));
    }
    let receiver_head: Option<i64> = connection
        .prepare_cached("SELECT MAX(last_sequence) FROM records WHERE shard = ?1")
        .and_then(|mut statement| statement.query_row(params![receiver], |row| row.get(0)))
        .map_err(query_failed("read receiver's log head"))?;
    let checkpoint: Option<i64> = connection
        .prepare_cached("SELECT sequence FROM projection_checkpoint WHERE shard = ?1")
        .and_then(|mut statement| {
            statement
                .query_row(params![receiver], |row| row.get(0))
                .optional()
        })
        .map_err(query_failed("read receiver's checkpoint"))?;
    if checkpoint.unwrap_or(0) < receiver_head.unwrap_or(0) {
        return Ok(None);
    }
    let delivered: Option<i64> = connection
        .prepare_cached(
            "SELECT sequence FROM projection_deliveries WHERE sender = ?1 AND receiver = ?2",
        )
        .and_then(|mut statement| {
            statement
                .query_row(params![sender, receiver], |row| row.get(0))
                .optional()
        })
        .map_err(query_failed("read delivery mark"))?;
    Ok(Some(from_sql("delivery sequence", delivered.unwrap_or(0))?))
}

impl SqliteReadModels {
    async fn load_balance(&self, user_id: &str) -> Result<BalanceView, ReadError> {
        let user_id = user_id.to_string();
        self.read("balance read", move |connection| {
            let found: Option<(i64, i64)> = connection
                .prepare_cached("SELECT balance, pending FROM balances WHERE user_id = ?1")
                .and_then(|mut statement| {
                    statement
                        .query_row(params![user_id], |row| Ok((row.get(0)?, row.get(1)?)))
                        .optional()
                })
                .map_err(query_failed("read balance"))?;
            let (balance, pending) = found.unwrap_or((0, 0));
            Ok(BalanceView {
                user_id,
                balance,
                pending,
            })
        })
        .await
    }

    async fn load_inventory(
        &self,
        user_id: &str,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<Page<InventoryEntry>, ReadError> {
        let limit = page_size(limit);
        let (after_item, after_serial) = match cursor {
            None => (String::new(), -1),
            Some(cursor) => {
                let fields = decode_cursor(CURSOR_INVENTORY, cursor, 2)?;
                (
                    parse_id(&fields[0])?,
                    parse_field::<u32>(&fields[1]).map(i64::from)?,
                )
            }
        };
        let user_id = user_id.to_string();
        self.read("inventory read", move |connection| {
            let rows = connection
                .prepare_cached(
                    "SELECT item_id, serial, purchase_id, acquired_at_ms FROM inventory
                     WHERE user_id = ?1 AND (item_id, serial) > (?2, ?3)
                     ORDER BY item_id, serial LIMIT ?4",
                )
                .and_then(|mut statement| {
                    statement
                        .query_map(
                            params![user_id, after_item, after_serial, sql_limit(limit)],
                            |row| {
                                Ok((
                                    row.get::<_, String>(0)?,
                                    row.get::<_, i64>(1)?,
                                    row.get::<_, String>(2)?,
                                    row.get::<_, i64>(3)?,
                                ))
                            },
                        )?
                        .collect::<Result<Vec<_>, _>>()
                })
                .map_err(query_failed("read inventory"))?;
            let mut entries = Vec::with_capacity(rows.len());
            for (item_id, serial, purchase_id, acquired_at_ms) in rows {
                let serial = if serial == NON_LIMITED_SERIAL {
                    None
                } else {
                    Some(u32::try_from(serial).map_err(|_| {
                        SqliteStoreError::StoredIntegerOutOfRange {
                            what: "serial",
                            value: serial,
                        }
                    })?)
                };
                let acquired_at_ms = from_sql("acquisition time", acquired_at_ms)?;
                entries.push(InventoryEntry {
                    item_id,
                    serial,
                    purchase_id,
                    acquired_at_ms,
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
        })
        .await
    }

    async fn load_item(&self, item_id: &str) -> Result<Option<ItemView>, ReadError> {
        let item_id = item_id.to_string();
        self.read("item read", move |connection| {
            let row = connection
                .prepare_cached(
                    "SELECT item_id, creator_id, name, price, on_sale, supply, max_per_user, starts_at_ms, ends_at_ms,
                            resellable, sold, sales_count, recent_average_price,
                            (SELECT MIN(price) FROM listings WHERE listings.item_id = items.item_id), kind,
                            regional_prices,
                            (SELECT test_id || ' ' || ends_at_ms || ' ' || arms FROM item_price_tests
                             WHERE item_price_tests.item_id = items.item_id AND closed = 0
                             ORDER BY started DESC LIMIT 1)
                     FROM items WHERE item_id = ?1",
                )
                .and_then(|mut statement| {
                    statement
                        .query_row(params![item_id], |row| {
                            Ok(ItemRow {
                                item_id: row.get(0)?,
                                creator_id: row.get(1)?,
                                name: row.get(2)?,
                                price: row.get(3)?,
                                on_sale: row.get(4)?,
                                supply: row.get(5)?,
                                max_per_user: row.get(6)?,
                                starts_at_ms: row.get(7)?,
                                ends_at_ms: row.get(8)?,
                                resellable: row.get(9)?,
                                sold: row.get(10)?,
                                sales_count: row.get(11)?,
                                recent_average_price: row.get(12)?,
                                lowest_resale_price: row.get(13)?,
                                kind: row.get(14)?,
                                regional_prices: row.get(15)?,
                                price_test: row.get(16)?,
                            })
                        })
                        .optional()
                })
                .map_err(query_failed("read item"))?;
            row.map(ItemRow::into_view).transpose()
        })
        .await
    }
}

#[async_trait]
impl ReadModels for SqliteReadModels {
    /// From the marks the projector published after its commit (the
    /// `projection_checkpoint` and `projection_deliveries` rows it committed):
    /// no read transaction, and no cached view older than them.
    async fn covers(&self, position: &ReadPosition) -> Result<bool, ReadError> {
        Ok(self.published.covers(position))
    }

    async fn beyond_head(&self, position: &ReadPosition) -> Result<Option<BeyondHead>, ReadError> {
        let position = position.clone();
        self.read("log head read", move |connection| {
            // `UNIQUE (shard, last_sequence)` makes this an index lookup.
            let mut heads = connection
                .prepare_cached("SELECT MAX(last_sequence) FROM records WHERE shard = ?1")
                .map_err(query_failed("prepare log head read"))?;
            let mut head_of = |shard: u16| -> Result<u64, SqliteStoreError> {
                let head: Option<i64> = heads
                    .query_row(params![shard], |row| row.get(0))
                    .map_err(query_failed("read log head"))?;
                from_sql("log head sequence", head.unwrap_or(0))
            };
            for wanted in &position.positions {
                if wanted.sequence == 0 {
                    continue;
                }
                let head = head_of(wanted.shard.0)?;
                if wanted.sequence > head {
                    return Ok(Some(BeyondHead {
                        part: format!("{}.{}", wanted.shard.0, wanted.sequence),
                        shard: wanted.shard.0,
                        head,
                    }));
                }
            }
            for mark in &position.deliveries {
                let head = head_of(mark.from.0)?;
                let beyond = |head| {
                    Ok(Some(BeyondHead {
                        part: format!("m{}.{}.{}", mark.from.0, mark.to.0, mark.sequence),
                        shard: mark.from.0,
                        head,
                    }))
                };
                if mark.sequence > head {
                    return beyond(head);
                }
                if let Some(sent) = messages_sent(connection, mark.from.0, mark.to.0)? {
                    if mark.sequence > sent {
                        return beyond(head);
                    }
                }
            }
            Ok(None)
        })
        .await
    }

    async fn balance(&self, user_id: &str) -> Result<BalanceView, ReadError> {
        self.cached::<Balances, _>(user_id.to_string(), self.load_balance(user_id))
            .await
    }

    async fn inventory(
        &self,
        user_id: &str,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<Page<InventoryEntry>, ReadError> {
        if cursor.is_some() {
            return self.load_inventory(user_id, limit, cursor).await;
        }
        self.cached::<Inventories, _>(
            (user_id.to_string(), page_size(limit)),
            self.load_inventory(user_id, limit, None),
        )
        .await
    }

    async fn item(&self, item_id: &str) -> Result<Option<ItemView>, ReadError> {
        self.cached::<Items, _>(item_id.to_string(), self.load_item(item_id))
            .await
    }

    async fn transactions(
        &self,
        user_id: &str,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<Page<TransactionEntry>, ReadError> {
        let limit = page_size(limit);
        let (before_position, before_account) = match cursor {
            None => (i64::MAX, String::new()),
            Some(cursor) => {
                let fields = decode_cursor(CURSOR_TRANSACTIONS, cursor, 2)?;
                let position = parse_field::<i64>(&fields[0])?;
                let account = TransactionAccount::parse(&fields[1]).ok_or(ReadError::BadCursor)?;
                (position, account.as_str().to_string())
            }
        };
        let user_id = user_id.to_string();
        self.read("transaction read", move |connection| {
            let rows = connection
                .prepare_cached(
                    "SELECT event_position, account, position, kind, amount, reference, at_ms FROM transactions
                     WHERE user_id = ?1 AND (event_position, account) < (?2, ?3)
                     ORDER BY event_position DESC, account DESC LIMIT ?4",
                )
                .and_then(|mut statement| {
                    statement
                        .query_map(params![user_id, before_position, before_account, sql_limit(limit)], |row| {
                            Ok((
                                row.get::<_, i64>(0)?,
                                row.get::<_, String>(1)?,
                                row.get::<_, String>(2)?,
                                row.get::<_, String>(3)?,
                                row.get::<_, i64>(4)?,
                                row.get::<_, String>(5)?,
                                row.get::<_, i64>(6)?,
                            ))
                        })?
                        .collect::<Result<Vec<_>, _>>()
                })
                .map_err(query_failed("read transactions"))?;
            let mut entries = Vec::with_capacity(rows.len());
            for (event_position, account, position, kind, amount, reference, at_ms) in rows {
                let at_ms = from_sql("transaction time", at_ms)?;
                let entry = TransactionEntry { position, kind, account: account.clone(), amount, reference, at_ms };
                entries.push(TransactionRow { event_position, account, entry });
            }
            Ok(into_page(
                entries,
                limit,
                |row| encode_cursor(CURSOR_TRANSACTIONS, &[&row.event_position.to_string(), &row.account]),
                |row| row.entry,
            ))
        })
        .await
    }

    async fn takedown(
        &self,
        item_id: &str,
        left_limit: usize,
        left_cursor: Option<&str>,
    ) -> Result<Option<TakedownView>, ReadError> {
        let left_limit = page_size(left_limit);
        // No id is empty: every purchase id sorts after "".
        let left_after = match left_cursor {
            None => String::new(),
            Some(cursor) => parse_id(&decode_cursor(CURSOR_TAKEDOWN_LEFT, cursor, 1)?[0])?,
        };
        let item_id = item_id.to_string();
        self.read("takedown read", move |connection| {
            type TakedownRow = (u32, u16, u16, u32, i64, u32, u32, i64, i64);
            let row: Option<TakedownRow> = connection
                .prepare_cached(
                    "SELECT listings_ended, shard_count, shards_reported, refunded, refunded_amount,
                     already_refunded, left_count, started_at_ms, updated_at_ms
                     FROM takedowns WHERE item_id = ?1",
                )
                .and_then(|mut statement| {
                    statement
                        .query_row(params![item_id], |row| {
                            Ok((
                                row.get(0)?,
                                row.get(1)?,
                                row.get(2)?,
                                row.get(3)?,
                                row.get(4)?,
                                row.get(5)?,
                                row.get(6)?,
                                row.get(7)?,
                                row.get(8)?,
                            ))
                        })
                        .optional()
                })
                .map_err(query_failed("read takedown"))?;
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
            let mut statement = connection
                .prepare_cached(
                    "SELECT purchase_id, reason FROM takedown_sales
                     WHERE item_id = ?1 AND outcome = 'left' AND purchase_id > ?2
                     ORDER BY purchase_id LIMIT ?3",
                )
                .map_err(query_failed("prepare takedown sales read"))?;
            let rows = statement
                .query_map(params![item_id, left_after, sql_limit(left_limit)], |row| {
                    Ok(TakedownLeftView {
                        purchase_id: row.get(0)?,
                        reason: row.get::<_, Option<String>>(1)?.unwrap_or_default(),
                    })
                })
                .map_err(query_failed("read takedown sales"))?;
            let left = rows
                .collect::<Result<Vec<_>, _>>()
                .map_err(query_failed("read a takedown sale"))?;
            let left = into_page(
                left,
                left_limit,
                |left| encode_cursor(CURSOR_TAKEDOWN_LEFT, &[&left.purchase_id]),
                |left| left,
            );
            Ok(Some(TakedownView {
                item_id,
                status: TakedownView::status_of(shards_reported, shard_count).to_string(),
                listings_ended,
                shard_count,
                shards_reported,
                refunded,
                refunded_amount,
                already_refunded,
                left_count,
                left: left.entries,
                left_next_cursor: left.next_cursor,
                started_at_ms: from_sql("takedown start", started_at_ms)?,
                updated_at_ms: from_sql("takedown update", updated_at_ms)?,
            }))
        })
        .await
    }

    async fn price_test(&self, test_id: &str) -> Result<Option<PriceTestView>, ReadError> {
        let test_id = test_id.to_string();
        self.read("price test read", move |connection| {
            type TestRow = (String, Option<String>, i64, bool, String, Option<u8>, Option<i64>);
            let test: Option<TestRow> = connection
                .prepare_cached(
                    "SELECT item_id, creator_id, ends_at_ms, apply_winner, status, winner, applied_price
                     FROM price_tests WHERE test_id = ?1",
                )
                .and_then(|mut statement| {
                    statement
                        .query_row(params![test_id], |row| {
                            Ok((
                                row.get(0)?,
                                row.get(1)?,
                                row.get(2)?,
                                row.get(3)?,
                                row.get(4)?,
                                row.get(5)?,
                                row.get(6)?,
                            ))
                        })
                        .optional()
                })
                .map_err(query_failed("read price test"))?;
            let Some((item_id, creator_id, ends_at_ms, apply_winner, status, winner, applied_price)) = test
            else {
                return Ok(None);
            };
            let mut statement = connection
                .prepare_cached(
                    "SELECT price, exposures, purchases, revenue FROM price_test_arms
                     WHERE test_id = ?1 ORDER BY arm LIMIT 16",
                )
                .map_err(query_failed("prepare price test arms read"))?;
            let rows = statement
                .query_map(params![test_id], |row| {
                    Ok((
                        row.get::<_, i64>(0)?,
                        row.get::<_, i64>(1)?,
                        row.get::<_, i64>(2)?,
                        row.get::<_, i64>(3)?,
                    ))
                })
                .map_err(query_failed("read price test arms"))?;
            let mut arms = Vec::new();
            for row in rows {
                let (price, exposures, purchases, revenue) =
                    row.map_err(query_failed("read a price test arm"))?;
                arms.push(PriceTestArmView {
                    price,
                    exposures: from_sql("exposures", exposures)?,
                    purchases: from_sql("test purchases", purchases)?,
                    revenue,
                });
            }
            Ok(Some(PriceTestView {
                test_id,
                item_id,
                creator_id,
                status,
                ends_at_ms: from_sql("test end", ends_at_ms)?,
                apply_winner,
                winner,
                applied_price,
                arms,
            }))
        })
        .await
    }

    async fn item_days(
        &self,
        item_id: &str,
        from_day: u64,
        to_day: u64,
    ) -> Result<ItemDays, ReadError> {
        let item_id = item_id.to_string();
        self.read("item history read", move |connection| {
            let from = crate::error::to_sql("history start", from_day)?;
            let to = crate::error::to_sql("history end", to_day)?;
            let rows = connection
                .prepare_cached(
                    "SELECT day, primary_count, primary_revenue, resale_count, resale_revenue, refunded_count,
                            refunded_revenue, recent_average_price, book_changed, lowest_resale_ask
                     FROM item_days WHERE item_id = ?1 AND day >= ?2 AND day < ?3 ORDER BY day",
                )
                .and_then(|mut statement| {
                    statement
                        .query_map(params![item_id, from, to], |row| {
                            Ok((
                                row.get::<_, i64>(0)?,
                                row.get::<_, i64>(1)?,
                                row.get::<_, i64>(2)?,
                                row.get::<_, i64>(3)?,
                                row.get::<_, i64>(4)?,
                                row.get::<_, i64>(5)?,
                                row.get::<_, i64>(6)?,
                                row.get::<_, Option<i64>>(7)?,
                                row.get::<_, bool>(8)?,
                                row.get::<_, Option<i64>>(9)?,
                            ))
                        })?
                        .collect::<Result<Vec<_>, _>>()
                })
                .map_err(query_failed("read item history"))?;
            let mut days = Vec::with_capacity(rows.len());
            for (day, primary_count, primary_revenue, resale_count, resale_revenue, refunded_count, refunded_revenue, recent_average_price, book_changed, lowest_resale_ask) in rows {
                days.push(ItemDay {
                    day: from_sql("history day", day)?,
                    primary_count: from_sql("primary sales count", primary_count)?,
                    primary_revenue,
                    resale_count: from_sql("resale count", resale_count)?,
                    resale_revenue,
                    refunded_count: from_sql("refunded count", refunded_count)?,
                    refunded_revenue,
                    recent_average_price,
                    lowest_resale_ask: book_changed.then_some(lowest_resale_ask),
                });
            }
            // As they stood when the range began: the last day before it
            // with a sale, and with a change of the listing book.
            let recent_average_price_before: Option<i64> = connection
                .prepare_cached(
                    "SELECT recent_average_price FROM item_days
                     WHERE item_id = ?1 AND day < ?2 AND recent_average_price IS NOT NULL
                     ORDER BY day DESC LIMIT 1",
                )
                .and_then(|mut statement| statement.query_row(params![item_id, from], |row| row.get(0)).optional())
                .map_err(query_failed("read the recent average price before a history"))?;
            let lowest_resale_ask_before: Option<Option<i64>> = connection
                .prepare_cached(
                    "SELECT lowest_resale_ask FROM item_days
                     WHERE item_id = ?1 AND day < ?2 AND book_changed = 1
                     ORDER BY day DESC LIMIT 1",
                )
                .and_then(|mut statement| statement.query_row(params![item_id, from], |row| row.get(0)).optional())
                .map_err(query_failed("read the lowest ask before a history"))?;
            Ok(ItemDays {
                recent_average_price_before,
                lowest_resale_ask_before: lowest_resale_ask_before.flatten(),
                days,
            })
        })
        .await
    }

    async fn resale_listings(
        &self,
        item_id: &str,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<Page<ListingView>, ReadError> {
        let limit = page_size(limit);
        let (after_price, after_listing) = match cursor {
            None => (i64::MIN, String::new()),
            Some(cursor) => {
                let fields = decode_cursor(CURSOR_LISTINGS, cursor, 2)?;
                (parse_field::<i64>(&fields[0])?, parse_id(&fields[1])?)
            }
        };
        let item_id = item_id.to_string();
        self.read("resale listing read", move |connection| {
            let rows = connection
                .prepare_cached(
                    "SELECT listing_id, item_id, serial, seller_id, price FROM listings
                     WHERE item_id = ?1 AND (price, listing_id) > (?2, ?3)
                     ORDER BY price, listing_id LIMIT ?4",
                )
                .and_then(|mut statement| {
                    statement
                        .query_map(
                            params![item_id, after_price, after_listing, sql_limit(limit)],
                            |row| {
                                Ok(ListingView {
                                    listing_id: row.get(0)?,
                                    item_id: row.get(1)?,
                                    serial: row.get(2)?,
                                    seller_id: row.get(3)?,
                                    price: row.get(4)?,
                                })
                            },
                        )?
                        .collect::<Result<Vec<_>, _>>()
                })
                .map_err(query_failed("read resale listings"))?;
            Ok(into_page(
                rows,
                limit,
                |listing| {
                    encode_cursor(
                        CURSOR_LISTINGS,
                        &[&listing.price.to_string(), &listing.listing_id],
                    )
                },
                |listing| listing,
            ))
        })
        .await
    }

    async fn owners(
        &self,
        item_id: &str,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<Page<OwnerEntry>, ReadError> {
        let limit = page_size(limit);
        let after_serial: i64 = match cursor {
            None => -1,
            Some(cursor) => {
                parse_field::<u32>(&decode_cursor(CURSOR_OWNERS, cursor, 1)?[0])?.into()
            }
        };
        let item_id = item_id.to_string();
        self.read("owner read", move |connection| {
            let rows = connection
                .prepare_cached("SELECT serial, user_id FROM owners WHERE item_id = ?1 AND serial > ?2 ORDER BY serial LIMIT ?3")
                .and_then(|mut statement| {
                    statement
                        .query_map(params![item_id, after_serial, sql_limit(limit)], |row| {
                            Ok(OwnerEntry { serial: row.get(0)?, user_id: row.get(1)? })
                        })?
                        .collect::<Result<Vec<_>, _>>()
                })
                .map_err(query_failed("read owners"))?;
            Ok(into_page(rows, limit, |owner| encode_cursor(CURSOR_OWNERS, &[&owner.serial.to_string()]), |owner| owner))
        })
        .await
    }

    async fn bundle(&self, bundle_id: &str) -> Result<Option<BundleView>, ReadError> {
        let bundle_id = bundle_id.to_string();
        self.read("bundle read", move |connection| {
            let row: Option<(String, String, String, String, i64)> = connection
                .prepare_cached("SELECT bundle_id, creator_id, name, item_ids, price FROM bundles WHERE bundle_id = ?1")
                .and_then(|mut statement| {
                    statement
                        .query_row(params![bundle_id], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?, row.get(4)?)))
                        .optional()
                })
                .map_err(query_failed("read bundle"))?;
            let Some((bundle_id, creator_id, name, item_ids, price)) = row else {
                return Ok(None);
            };
            let item_ids: Vec<String> = serde_json::from_str(&item_ids)
                .map_err(|source| SqliteStoreError::BundleItems { bundle_id: bundle_id.clone(), source })?;
            Ok(Some(BundleView { bundle_id, creator_id, name, item_ids, price }))
        })
        .await
    }

    async fn earnings(&self, creator_id: &str) -> Result<EarningsView, ReadError> {
        let creator_id = creator_id.to_string();
        self.read("earnings read", move |connection| {
            let row: Option<(i64, i64, i64, i64)> = connection
                .prepare_cached("SELECT pending, released, lifetime, sales_count FROM earnings WHERE creator_id = ?1")
                .and_then(|mut statement| {
                    statement
                        .query_row(params![creator_id], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)))
                        .optional()
                })
                .map_err(query_failed("read earnings"))?;
            let (pending, released, lifetime, sales_count) = row.unwrap_or((0, 0, 0, 0));
            let sales_count = from_sql("earnings sales count", sales_count)?;
            Ok(EarningsView { creator_id, pending, released, lifetime, sales_count })
        })
        .await
    }

    async fn price_floors(&self) -> Result<Vec<PriceFloorView>, ReadError> {
        self.read("price floor read", move |connection| {
            let mut statement = connection
                .prepare_cached(
                    "SELECT kind, version, price, effective_from_ms FROM price_floors
                     ORDER BY kind, version LIMIT ?1",
                )
                .map_err(query_failed("prepare price floor read"))?;
            let rows = statement
                .query_map(params![PRICE_FLOOR_VERSIONS_MAX as i64], |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, i64>(1)?,
                        row.get::<_, i64>(2)?,
                        row.get::<_, i64>(3)?,
                    ))
                })
                .map_err(query_failed("read price floors"))?;
            let mut floors = Vec::new();
            for row in rows {
                let (kind, version, price, effective_from_ms) =
                    row.map_err(query_failed("read a price floor"))?;
                floors.push(PriceFloorView {
                    kind,
                    version: u32::try_from(version).map_err(|_| {
                        SqliteStoreError::StoredIntegerOutOfRange {
                            what: "floor version",
                            value: version,
                        }
                    })?,
                    price,
                    effective_from_ms: from_sql("floor start", effective_from_ms)?,
                });
            }
            Ok(floors)
        })
        .await
    }

    async fn creator_sales(
        &self,
        creator_id: &str,
        range: SalesRange<'_>,
    ) -> Result<Page<CreatorSaleView>, ReadError> {
        let limit = page_size(range.limit);
        let (after_ms, after_purchase) = range.start()?;
        let after_ms = i64::try_from(after_ms).unwrap_or(i64::MAX);
        let to_ms = range
            .to_ms
            .map_or(i64::MAX, |to_ms| i64::try_from(to_ms).unwrap_or(i64::MAX));
        let creator_id = creator_id.to_string();
        self.read("creator sales read", move |connection| {
            let rows = connection
                .prepare_cached(
                    "SELECT purchase_id, sold_at_ms, position, resale, cleared, creator_share, platform_fee, policy_version,
                            release_at_ms, frozen, released_at_ms, refunded_at_ms
                     FROM creator_sales
                     WHERE creator_id = ?1 AND (sold_at_ms, purchase_id) > (?2, ?3) AND sold_at_ms < ?4
                     ORDER BY sold_at_ms, purchase_id LIMIT ?5",
                )
                .and_then(|mut statement| {
                    statement
                        .query_map(params![creator_id, after_ms, after_purchase, to_ms, sql_limit(limit)], |row| {
                            Ok((
                                row.get::<_, String>(0)?,
                                row.get::<_, i64>(1)?,
                                row.get::<_, String>(2)?,
                                row.get::<_, bool>(3)?,
                                row.get::<_, i64>(4)?,
                                row.get::<_, i64>(5)?,
                                row.get::<_, i64>(6)?,
                                row.get::<_, u16>(7)?,
                                row.get::<_, i64>(8)?,
                                row.get::<_, bool>(9)?,
                                row.get::<_, Option<i64>>(10)?,
                                row.get::<_, Option<i64>>(11)?,
                            ))
                        })?
                        .collect::<Result<Vec<_>, _>>()
                })
                .map_err(query_failed("read creator sales"))?;
            let mut sales = Vec::with_capacity(rows.len());
            for (purchase_id, sold_at_ms, position, resale, cleared, creator_share, platform_fee, policy_version, release_at_ms, frozen, released_at_ms, refunded_at_ms) in rows {
                let settled_at_ms = refunded_at_ms.or(released_at_ms).map(|at_ms| from_sql("escrow settlement time", at_ms)).transpose()?;
                sales.push(CreatorSaleView {
                    purchase_id,
                    sold_at_ms: from_sql("sale time", sold_at_ms)?,
                    position,
                    resale,
                    cleared,
                    creator_share,
                    platform_fee,
                    policy_version,
                    status: sale_status(frozen, released_at_ms.is_some(), refunded_at_ms.is_some()),
                    release_at_ms: from_sql("release time", release_at_ms)?,
                    settled_at_ms,
                });
            }
            Ok(into_page(sales, limit, sale_cursor, |sale| sale))
        })
        .await
    }

    async fn purchase_steps(&self, purchase_id: &str) -> Result<Vec<PurchaseStepView>, ReadError> {
        let purchase_id = purchase_id.to_string();
        // Decoding a handful of records is more than a bounded row read:
        // it runs in the blocking pool, not on the calling task.
        self.readers
            .run("purchase steps read", move |connection| {
                crate::trace::purchase_steps(connection, &purchase_id)
            })
            .await
            .map_err(|error| ReadError::Backend(error.to_string()))
    }
}

struct ItemRow {
    item_id: String,
    creator_id: String,
    name: String,
    price: i64,
    on_sale: bool,
    supply: Option<u32>,
    max_per_user: Option<u32>,
    starts_at_ms: Option<i64>,
    ends_at_ms: Option<i64>,
    resellable: bool,
    sold: i64,
    sales_count: i64,
    recent_average_price: Option<i64>,
    lowest_resale_price: Option<i64>,
    kind: String,
    regional_prices: String,
    /// `<test_id> <ends_at_ms> <arms JSON>` of the item's current test.
    price_test: Option<String>,
}

impl ItemRow {
    fn into_view(self) -> Result<ItemView, SqliteStoreError> {
        let sold = from_sql("items sold", self.sold)?;
        Ok(ItemView {
            item_id: self.item_id,
            creator_id: self.creator_id,
            name: self.name,
            price: self.price,
            on_sale: self.on_sale,
            limited: self.supply.is_some(),
            supply: self.supply,
            sold,
            remaining: self
                .supply
                .map(|supply| u64::from(supply).saturating_sub(sold)),
            max_per_user: self.max_per_user,
            starts_at_ms: self
                .starts_at_ms
                .map(|at| from_sql("sale start", at))
                .transpose()?,
            ends_at_ms: self
                .ends_at_ms
                .map(|at| from_sql("sale end", at))
                .transpose()?,
            resellable: self.resellable,
            kind: self.kind,
            price_test: self
                .price_test
                .as_deref()
                .map(|stored| {
                    let mut parts = stored.splitn(3, ' ');
                    let (Some(test_id), Some(ends_at_ms), Some(arms)) =
                        (parts.next(), parts.next(), parts.next())
                    else {
                        return Err(SqliteStoreError::ItemPricing {
                            what: "price test",
                            detail: format!("unreadable `{stored}`"),
                        });
                    };
                    Ok(ItemPriceTestView {
                        test_id: test_id.to_string(),
                        ends_at_ms: ends_at_ms.parse().map_err(|_| {
                            SqliteStoreError::ItemPricing {
                                what: "price test",
                                detail: format!("unreadable end `{ends_at_ms}`"),
                            }
                        })?,
                        arms: projectors::parse_arms(arms).map_err(|detail| {
                            SqliteStoreError::ItemPricing {
                                what: "price test",
                                detail,
                            }
                        })?,
                    })
                })
                .transpose()?,
            regional_prices: projectors::parse_regional_prices(&self.regional_prices).map_err(
                |detail| SqliteStoreError::ItemPricing {
                    what: "regional prices",
                    detail,
                },
            )?,
            sales_count: from_sql("item sales count", self.sales_count)?,
            recent_average_price: self.recent_average_price,
            lowest_resale_price: self.lowest_resale_price,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_refuse_other_listings_and_garbage() {
        let cursor = encode_cursor(CURSOR_LISTINGS, &["120", "listing.7:a"]);
        assert!(cursor.bytes().all(|byte| byte.is_ascii_hexdigit()));
        assert_eq!(
            decode_cursor(CURSOR_LISTINGS, &cursor, 2),
            Ok(vec!["120".to_string(), "listing.7:a".to_string()])
        );
        assert_eq!(
            decode_cursor(CURSOR_OWNERS, &cursor, 1),
            Err(ReadError::BadCursor)
        );
        for garbage in ["", "0", "zz", "abc", "6c697374696e6773"] {
            assert_eq!(
                decode_cursor(CURSOR_LISTINGS, garbage, 2),
                Err(ReadError::BadCursor),
                "{garbage}"
            );
        }
    }

    #[test]
    fn page_sizes_are_clamped() {
        assert_eq!(page_size(0), 1);
        assert_eq!(page_size(10), 10);
        assert_eq!(page_size(PAGE_SIZE_MAX + 1), PAGE_SIZE_MAX);
    }
}
