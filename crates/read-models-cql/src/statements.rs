//! The prepared statements, all at the configured consistency.
//!
//! Writes of identity rows carry `USING TIMESTAMP ?` (see
//! `schemas/cql/read_models.cql`): the bind order is the values, then the
//! timestamp, for INSERT; the timestamp first for UPDATE and DELETE.

use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;
use scylla::statement::Consistency;

use crate::error::CqlReadModelError;

/// Rows fetched per page by paged reads: one page holds a full page of a
/// listing (at most `PAGE_SIZE_MAX + 1` rows).
pub const READ_PAGE_ROWS: i32 = 1_024;
/// Rows fetched per page of a bucket list: readers usually need the first few.
const BUCKET_PAGE_ROWS: i32 = 64;

pub(crate) struct Statements {
    pub select_checkpoint: PreparedStatement,
    pub insert_checkpoint: PreparedStatement,
    pub select_delivery: PreparedStatement,
    pub insert_delivery: PreparedStatement,

    pub select_balance_part: PreparedStatement,
    pub select_balance_parts: PreparedStatement,
    pub insert_balance_part: PreparedStatement,
    pub select_earnings_part: PreparedStatement,
    pub select_earnings_parts: PreparedStatement,
    pub insert_earnings_part: PreparedStatement,
    pub select_item_count_part: PreparedStatement,
    pub select_item_count_parts: PreparedStatement,
    pub insert_item_count_part: PreparedStatement,

    pub insert_transaction: PreparedStatement,
    pub insert_transaction_bucket: PreparedStatement,
    pub select_transaction_buckets: PreparedStatement,
    pub select_transactions: PreparedStatement,
    pub select_transactions_before: PreparedStatement,

    pub insert_inventory: PreparedStatement,
    pub delete_inventory: PreparedStatement,
    pub select_inventory: PreparedStatement,

    pub insert_item: PreparedStatement,
    pub update_item_price: PreparedStatement,
    pub update_item_on_sale: PreparedStatement,
    pub select_item: PreparedStatement,
    pub insert_price_floor: PreparedStatement,
    pub update_item_regional_prices: PreparedStatement,
    pub insert_item_price_test: PreparedStatement,
    pub close_item_price_test: PreparedStatement,
    pub select_item_price_tests: PreparedStatement,
    pub insert_price_test: PreparedStatement,
    pub update_price_test_running: PreparedStatement,
    pub update_price_test_ended: PreparedStatement,
    pub delete_price_test: PreparedStatement,
    pub delete_price_test_arms: PreparedStatement,
    pub insert_price_test_arm: PreparedStatement,
    pub update_price_test_exposures: PreparedStatement,
    pub update_price_test_sales: PreparedStatement,
    pub select_price_test: PreparedStatement,
    pub select_price_test_arms: PreparedStatement,
    pub select_price_floors: PreparedStatement,
    pub insert_takedown: PreparedStatement,
    pub update_takedown_progress: PreparedStatement,
    pub insert_takedown_sale: PreparedStatement,
    pub select_takedown: PreparedStatement,
    pub select_takedown_sales: PreparedStatement,

    pub insert_sale: PreparedStatement,
    pub insert_sale_bucket: PreparedStatement,
    pub select_sale_buckets: PreparedStatement,
    pub select_sale_prices: PreparedStatement,
    pub select_sale_buckets_between: PreparedStatement,
    pub select_sale_buckets_before: PreparedStatement,

    pub select_item_day_part: PreparedStatement,
    pub select_item_day_parts: PreparedStatement,
    pub insert_item_day_part: PreparedStatement,
    pub insert_item_sale_day: PreparedStatement,
    pub select_item_sale_day: PreparedStatement,
    pub insert_item_ask_day: PreparedStatement,
    pub select_item_ask_days: PreparedStatement,
    pub select_item_ask_before: PreparedStatement,

    pub insert_owner: PreparedStatement,
    pub delete_owner: PreparedStatement,
    pub insert_owner_bucket: PreparedStatement,
    pub select_owner_buckets: PreparedStatement,
    pub select_owners: PreparedStatement,

    pub insert_resale_listing: PreparedStatement,
    pub delete_resale_listing: PreparedStatement,
    pub select_resale_listings: PreparedStatement,
    pub select_lowest_resale_price: PreparedStatement,
    pub insert_listing_by_id: PreparedStatement,
    pub delete_listing_by_id: PreparedStatement,
    pub select_listing_by_id: PreparedStatement,
    pub insert_listing_by_serial: PreparedStatement,
    pub delete_listing_by_serial: PreparedStatement,
    pub select_listings_by_serial: PreparedStatement,

    pub insert_bundle: PreparedStatement,
    pub select_bundle: PreparedStatement,
    pub insert_purchase_step: PreparedStatement,
    pub select_purchase_steps: PreparedStatement,

    pub insert_creator_sale: PreparedStatement,
    pub insert_creator_sale_bucket: PreparedStatement,
    pub insert_creator_sale_key: PreparedStatement,
    pub select_creator_sale_key: PreparedStatement,
    pub update_creator_sale_frozen: PreparedStatement,
    pub update_creator_sale_released: PreparedStatement,
    pub update_creator_sale_refunded: PreparedStatement,
    pub select_creator_sale_buckets: PreparedStatement,
    pub select_creator_sales: PreparedStatement,
}

impl Statements {
    pub(crate) async fn prepare(
        session: &Session,
        consistency: Consistency,
    ) -> Result<Self, CqlReadModelError> {
        let prepare = |statement: &'static str, page_rows: i32, cql: &'static str| async move {
            let mut prepared = session
                .prepare(cql)
                .await
                .map_err(|source| CqlReadModelError::Prepare { statement, source })?;
            prepared.set_consistency(consistency);
            // Every statement is a read, an upsert, a delete or an insert
            // with a fixed write timestamp: a retry lands the same cells.
            prepared.set_is_idempotent(true);
            prepared.set_page_size(page_rows);
            Ok::<_, CqlReadModelError>(prepared)
        };
        let page = READ_PAGE_ROWS;
        let buckets = BUCKET_PAGE_ROWS;
        Ok(Self {
            select_checkpoint: prepare(
                "checkpoint read",
                page,
                "SELECT next_sequence FROM projection_checkpoints WHERE shard = ?",
            )
            .await?,
            insert_checkpoint: prepare(
                "checkpoint write",
                page,
                "INSERT INTO projection_checkpoints (shard, next_sequence) VALUES (?, ?) USING TIMESTAMP ?",
            )
            .await?,
            select_delivery: prepare(
                "delivery read",
                page,
                "SELECT sequence FROM projection_deliveries WHERE sender = ? AND receiver = ?",
            )
            .await?,
            insert_delivery: prepare(
                "delivery write",
                page,
                "INSERT INTO projection_deliveries (sender, receiver, sequence) VALUES (?, ?, ?) USING TIMESTAMP ?",
            )
            .await?,

            select_balance_part: prepare(
                "balance part read",
                page,
                "SELECT wallet, pending, applied_through FROM balance_parts WHERE user_id = ? AND source_shard = ?",
            )
            .await?,
            select_balance_parts: prepare(
                "balance read",
                page,
                "SELECT wallet, pending FROM balance_parts WHERE user_id = ?",
            )
            .await?,
            insert_balance_part: prepare(
                "balance part write",
                page,
                "INSERT INTO balance_parts (user_id, source_shard, wallet, pending, applied_through) \
                 VALUES (?, ?, ?, ?, ?) USING TIMESTAMP ?",
            )
            .await?,
            select_earnings_part: prepare(
                "earnings part read",
                page,
                "SELECT pending, released, lifetime, sales_count, applied_through FROM earnings_parts \
                 WHERE creator_id = ? AND source_shard = ?",
            )
            .await?,
            select_earnings_parts: prepare(
                "earnings read",
                page,
                "SELECT pending, released, lifetime, sales_count FROM earnings_parts WHERE creator_id = ?",
            )
            .await?,
            insert_earnings_part: prepare(
                "earnings part write",
                page,
                "INSERT INTO earnings_parts (creator_id, source_shard, pending, released, lifetime, sales_count, applied_through) \
                 VALUES (?, ?, ?, ?, ?, ?, ?) USING TIMESTAMP ?",
            )
            .await?,
            select_item_count_part: prepare(
                "item count part read",
                page,
                "SELECT sold, sales_count, applied_through FROM item_count_parts WHERE item_id = ? AND source_shard = ?",
            )
            .await?,
            select_item_count_parts: prepare(
                "item count read",
                page,
                "SELECT sold, sales_count FROM item_count_parts WHERE item_id = ?",
            )
            .await?,
            insert_item_count_part: prepare(
                "item count part write",
                page,
                "INSERT INTO item_count_parts (item_id, source_shard, sold, sales_count, applied_through) \
                 VALUES (?, ?, ?, ?, ?) USING TIMESTAMP ?",
            )
            .await?,

            insert_transaction: prepare(
                "transaction write",
                page,
                "INSERT INTO transactions (user_id, bucket, at_ms, shard, sequence, account, position, kind, amount, reference) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .await?,
            insert_transaction_bucket: prepare(
                "transaction bucket write",
                page,
                "INSERT INTO transaction_buckets (user_id, bucket) VALUES (?, ?)",
            )
            .await?,
            select_transaction_buckets: prepare(
                "transaction bucket read",
                buckets,
                "SELECT bucket FROM transaction_buckets WHERE user_id = ? AND bucket <= ?",
            )
            .await?,
            select_transactions: prepare(
                "transaction read",
                page,
                "SELECT at_ms, shard, sequence, account, position, kind, amount, reference FROM transactions \
                 WHERE user_id = ? AND bucket = ? LIMIT ?",
            )
            .await?,
            select_transactions_before: prepare(
                "transaction page read",
                page,
                "SELECT at_ms, shard, sequence, account, position, kind, amount, reference FROM transactions \
                 WHERE user_id = ? AND bucket = ? AND (at_ms, shard, sequence, account) < (?, ?, ?, ?) LIMIT ?",
            )
            .await?,

            insert_inventory: prepare(
                "inventory write",
                page,
                "INSERT INTO inventory (user_id, item_id, serial, purchase_id, acquired_at_ms) \
                 VALUES (?, ?, ?, ?, ?) USING TIMESTAMP ?",
            )
            .await?,
            delete_inventory: prepare(
                "inventory delete",
                page,
                "DELETE FROM inventory USING TIMESTAMP ? WHERE user_id = ? AND item_id = ? AND serial = ?",
            )
            .await?,
            select_inventory: prepare(
                "inventory read",
                page,
                "SELECT item_id, serial, purchase_id, acquired_at_ms FROM inventory \
                 WHERE user_id = ? AND (item_id, serial) > (?, ?) LIMIT ?",
            )
            .await?,

            insert_item: prepare(
                "item write",
                page,
                "INSERT INTO items (item_id, creator_id, name, price, on_sale, supply, max_per_user, starts_at_ms, ends_at_ms, resellable, kind) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) USING TIMESTAMP ?",
            )
            .await?,
            update_item_price: prepare(
                "item price write",
                page,
                "UPDATE items USING TIMESTAMP ? SET price = ? WHERE item_id = ?",
            )
            .await?,
            update_item_on_sale: prepare(
                "item sale state write",
                page,
                "UPDATE items USING TIMESTAMP ? SET on_sale = ? WHERE item_id = ?",
            )
            .await?,
            select_item: prepare(
                "item read",
                page,
                "SELECT creator_id, name, price, on_sale, supply, max_per_user, starts_at_ms, ends_at_ms, resellable, kind, regional_prices \
                 FROM items WHERE item_id = ?",
            )
            .await?,

            insert_item_price_test: prepare(
                "item price test write",
                page,
                "INSERT INTO item_price_tests (item_id, test_id, arms, ends_at_ms, started, closed) \
                 VALUES (?, ?, ?, ?, ?, false) USING TIMESTAMP ?",
            )
            .await?,
            close_item_price_test: prepare(
                "item price test close",
                page,
                "UPDATE item_price_tests USING TIMESTAMP ? SET closed = true WHERE item_id = ? AND test_id = ?",
            )
            .await?,
            select_item_price_tests: prepare(
                "item price tests read",
                page,
                "SELECT test_id, arms, ends_at_ms, started, closed FROM item_price_tests WHERE item_id = ? LIMIT 1000",
            )
            .await?,
            insert_price_test: prepare(
                "price test write",
                page,
                "INSERT INTO price_tests (test_id, item_id, ends_at_ms, apply_winner, status) \
                 VALUES (?, ?, ?, ?, 'starting') USING TIMESTAMP ?",
            )
            .await?,
            update_price_test_running: prepare(
                "price test start",
                page,
                "UPDATE price_tests USING TIMESTAMP ? SET status = 'running', creator_id = ? WHERE test_id = ?",
            )
            .await?,
            update_price_test_ended: prepare(
                "price test end",
                page,
                "UPDATE price_tests USING TIMESTAMP ? SET status = 'ended', winner = ?, applied_price = ? WHERE test_id = ?",
            )
            .await?,
            delete_price_test: prepare(
                "price test removal",
                page,
                "DELETE FROM price_tests USING TIMESTAMP ? WHERE test_id = ?",
            )
            .await?,
            delete_price_test_arms: prepare(
                "price test arms removal",
                page,
                "DELETE FROM price_test_arms USING TIMESTAMP ? WHERE test_id = ?",
            )
            .await?,
            insert_price_test_arm: prepare(
                "price test arm write",
                page,
                "INSERT INTO price_test_arms (test_id, arm, price, exposures, purchases, revenue) \
                 VALUES (?, ?, ?, 0, 0, 0) USING TIMESTAMP ?",
            )
            .await?,
            update_price_test_exposures: prepare(
                "price test exposures write",
                page,
                "UPDATE price_test_arms USING TIMESTAMP ? SET exposures = ? WHERE test_id = ? AND arm = ?",
            )
            .await?,
            update_price_test_sales: prepare(
                "price test sales write",
                page,
                "UPDATE price_test_arms USING TIMESTAMP ? SET purchases = ?, revenue = ? WHERE test_id = ? AND arm = ?",
            )
            .await?,
            insert_takedown: prepare(
                "takedown write",
                page,
                "INSERT INTO takedowns (item_id, listings_ended, shard_count, shards_reported, refunded, \
                 refunded_amount, already_refunded, left_count, started_at_ms, updated_at_ms) \
                 VALUES (?, ?, ?, 0, 0, 0, 0, 0, ?, ?) USING TIMESTAMP ?",
            )
            .await?,
            update_takedown_progress: prepare(
                "takedown progress write",
                page,
                "UPDATE takedowns USING TIMESTAMP ? SET shards_reported = ?, refunded = ?, \
                 refunded_amount = ?, already_refunded = ?, left_count = ?, updated_at_ms = ? \
                 WHERE item_id = ?",
            )
            .await?,
            insert_takedown_sale: prepare(
                "takedown sale write",
                page,
                "INSERT INTO takedown_sales (item_id, outcome, purchase_id, amount, reason) \
                 VALUES (?, ?, ?, ?, ?) USING TIMESTAMP ?",
            )
            .await?,
            select_takedown: prepare(
                "takedown read",
                page,
                "SELECT listings_ended, shard_count, shards_reported, refunded, refunded_amount, \
                 already_refunded, left_count, started_at_ms, updated_at_ms FROM takedowns WHERE item_id = ?",
            )
            .await?,
            select_takedown_sales: prepare(
                "takedown sales read",
                page,
                "SELECT purchase_id, reason FROM takedown_sales WHERE item_id = ? AND outcome = ? \
                 AND purchase_id > ? LIMIT ?",
            )
            .await?,
            select_price_test: prepare(
                "price test read",
                page,
                "SELECT item_id, creator_id, ends_at_ms, apply_winner, status, winner, applied_price \
                 FROM price_tests WHERE test_id = ?",
            )
            .await?,
            select_price_test_arms: prepare(
                "price test arms read",
                page,
                "SELECT price, exposures, purchases, revenue FROM price_test_arms WHERE test_id = ? LIMIT 16",
            )
            .await?,
            update_item_regional_prices: prepare(
                "item regional prices write",
                page,
                "UPDATE items USING TIMESTAMP ? SET regional_prices = ? WHERE item_id = ?",
            )
            .await?,
            insert_price_floor: prepare(
                "price floor write",
                page,
                "INSERT INTO price_floors (scope, kind, version, price, effective_from_ms) \
                 VALUES ('all', ?, ?, ?, ?) USING TIMESTAMP ?",
            )
            .await?,
            select_price_floors: prepare(
                "price floor read",
                page,
                "SELECT kind, version, price, effective_from_ms FROM price_floors \
                 WHERE scope = 'all' LIMIT ?",
            )
            .await?,

            insert_sale: prepare(
                "sale write",
                page,
                "INSERT INTO item_sales (item_id, bucket, at_ms, shard, sequence, price) VALUES (?, ?, ?, ?, ?, ?)",
            )
            .await?,
            insert_sale_bucket: prepare(
                "sale bucket write",
                page,
                "INSERT INTO item_sale_buckets (item_id, bucket) VALUES (?, ?)",
            )
            .await?,
            select_sale_buckets: prepare(
                "sale bucket read",
                buckets,
                "SELECT bucket FROM item_sale_buckets WHERE item_id = ?",
            )
            .await?,
            select_sale_prices: prepare(
                "sale read",
                page,
                "SELECT price FROM item_sales WHERE item_id = ? AND bucket = ? LIMIT ?",
            )
            .await?,
            select_sale_buckets_between: prepare(
                "sale bucket read",
                page,
                "SELECT bucket FROM item_sale_buckets WHERE item_id = ? AND bucket >= ? AND bucket < ?",
            )
            .await?,
            select_sale_buckets_before: prepare(
                "sale bucket read",
                buckets,
                "SELECT bucket FROM item_sale_buckets WHERE item_id = ? AND bucket < ?",
            )
            .await?,

            select_item_day_part: prepare(
                "item day part read",
                page,
                "SELECT primary_count, primary_revenue, resale_count, resale_revenue, refunded_count, \
                 refunded_revenue, applied_through FROM item_day_parts \
                 WHERE item_id = ? AND day = ? AND source_shard = ?",
            )
            .await?,
            select_item_day_parts: prepare(
                "item history read",
                page,
                "SELECT day, primary_count, primary_revenue, resale_count, resale_revenue, refunded_count, \
                 refunded_revenue FROM item_day_parts WHERE item_id = ? AND day >= ? AND day < ?",
            )
            .await?,
            insert_item_day_part: prepare(
                "item day part write",
                page,
                "INSERT INTO item_day_parts (item_id, day, source_shard, primary_count, primary_revenue, \
                 resale_count, resale_revenue, refunded_count, refunded_revenue, applied_through) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) USING TIMESTAMP ?",
            )
            .await?,
            insert_item_sale_day: prepare(
                "item sale day write",
                page,
                "INSERT INTO item_sale_days (purchase_id, item_id, day, price) VALUES (?, ?, ?, ?)",
            )
            .await?,
            select_item_sale_day: prepare(
                "item sale day read",
                page,
                "SELECT item_id, day, price FROM item_sale_days WHERE purchase_id = ?",
            )
            .await?,
            insert_item_ask_day: prepare(
                "item ask day write",
                page,
                "INSERT INTO item_ask_days (item_id, day, lowest_resale_ask) VALUES (?, ?, ?) USING TIMESTAMP ?",
            )
            .await?,
            select_item_ask_days: prepare(
                "item ask read",
                page,
                "SELECT day, lowest_resale_ask FROM item_ask_days WHERE item_id = ? AND day >= ? AND day < ?",
            )
            .await?,
            select_item_ask_before: prepare(
                "item ask read",
                page,
                "SELECT lowest_resale_ask FROM item_ask_days WHERE item_id = ? AND day < ? LIMIT 1",
            )
            .await?,

            insert_owner: prepare(
                "owner write",
                page,
                "INSERT INTO serial_owners (item_id, bucket, serial, user_id) VALUES (?, ?, ?, ?) USING TIMESTAMP ?",
            )
            .await?,
            delete_owner: prepare(
                "owner delete",
                page,
                "DELETE FROM serial_owners USING TIMESTAMP ? WHERE item_id = ? AND bucket = ? AND serial = ?",
            )
            .await?,
            insert_owner_bucket: prepare(
                "owner bucket write",
                page,
                "INSERT INTO serial_owner_buckets (item_id, bucket) VALUES (?, ?)",
            )
            .await?,
            select_owner_buckets: prepare(
                "owner bucket read",
                buckets,
                "SELECT bucket FROM serial_owner_buckets WHERE item_id = ? AND bucket >= ?",
            )
            .await?,
            select_owners: prepare(
                "owner read",
                page,
                "SELECT serial, user_id FROM serial_owners WHERE item_id = ? AND bucket = ? AND serial > ? LIMIT ?",
            )
            .await?,

            insert_resale_listing: prepare(
                "resale listing write",
                page,
                "INSERT INTO resale_listings (item_id, price, listing_id, serial, seller_id) \
                 VALUES (?, ?, ?, ?, ?) USING TIMESTAMP ?",
            )
            .await?,
            delete_resale_listing: prepare(
                "resale listing delete",
                page,
                "DELETE FROM resale_listings USING TIMESTAMP ? WHERE item_id = ? AND price = ? AND listing_id = ?",
            )
            .await?,
            select_resale_listings: prepare(
                "resale listing read",
                page,
                "SELECT listing_id, serial, seller_id, price FROM resale_listings \
                 WHERE item_id = ? AND (price, listing_id) > (?, ?) LIMIT ?",
            )
            .await?,
            select_lowest_resale_price: prepare(
                "lowest resale price read",
                page,
                "SELECT price FROM resale_listings WHERE item_id = ? LIMIT 1",
            )
            .await?,
            insert_listing_by_id: prepare(
                "listing write",
                page,
                "INSERT INTO listings_by_id (listing_id, item_id, serial, price) VALUES (?, ?, ?, ?) USING TIMESTAMP ?",
            )
            .await?,
            delete_listing_by_id: prepare(
                "listing delete",
                page,
                "DELETE FROM listings_by_id USING TIMESTAMP ? WHERE listing_id = ?",
            )
            .await?,
            select_listing_by_id: prepare(
                "listing read",
                page,
                "SELECT item_id, serial, price FROM listings_by_id WHERE listing_id = ?",
            )
            .await?,
            insert_listing_by_serial: prepare(
                "serial listing write",
                page,
                "INSERT INTO listings_by_serial (item_id, serial, listing_id, price) VALUES (?, ?, ?, ?) USING TIMESTAMP ?",
            )
            .await?,
            delete_listing_by_serial: prepare(
                "serial listing delete",
                page,
                "DELETE FROM listings_by_serial USING TIMESTAMP ? WHERE item_id = ? AND serial = ? AND listing_id = ?",
            )
            .await?,
            select_listings_by_serial: prepare(
                "serial listing read",
                page,
                "SELECT listing_id, price FROM listings_by_serial WHERE item_id = ? AND serial = ?",
            )
            .await?,

            insert_bundle: prepare(
                "bundle write",
                page,
                "INSERT INTO bundles (bundle_id, creator_id, name, item_ids, price) VALUES (?, ?, ?, ?, ?) USING TIMESTAMP ?",
            )
            .await?,
            select_bundle: prepare(
                "bundle read",
                page,
                "SELECT creator_id, name, item_ids, price FROM bundles WHERE bundle_id = ?",
            )
            .await?,

            insert_purchase_step: prepare(
                "purchase step write",
                page,
                "INSERT INTO purchase_steps (purchase_id, shard, sequence, step, subject, position, user_id, serial, amount, detail, at_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) USING TIMESTAMP ?",
            )
            .await?,
            select_purchase_steps: prepare(
                "purchase steps read",
                page,
                "SELECT position, step, user_id, subject, serial, amount, detail, at_ms FROM purchase_steps WHERE purchase_id = ? LIMIT ?",
            )
            .await?,

            insert_creator_sale: prepare(
                "creator sale write",
                page,
                "INSERT INTO creator_sales (creator_id, bucket, sold_at_ms, purchase_id, position, resale, cleared, \
                 creator_share, platform_fee, policy_version, release_at_ms, frozen) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, false) USING TIMESTAMP ?",
            )
            .await?,
            insert_creator_sale_bucket: prepare(
                "creator sale bucket write",
                page,
                "INSERT INTO creator_sale_buckets (creator_id, bucket) VALUES (?, ?)",
            )
            .await?,
            insert_creator_sale_key: prepare(
                "creator sale key write",
                page,
                "INSERT INTO creator_sales_by_purchase (purchase_id, creator_id, bucket, sold_at_ms) \
                 VALUES (?, ?, ?, ?) USING TIMESTAMP ?",
            )
            .await?,
            select_creator_sale_key: prepare(
                "creator sale key read",
                page,
                "SELECT creator_id, bucket, sold_at_ms FROM creator_sales_by_purchase WHERE purchase_id = ?",
            )
            .await?,
            update_creator_sale_frozen: prepare(
                "creator sale freeze",
                page,
                "UPDATE creator_sales USING TIMESTAMP ? SET frozen = ? \
                 WHERE creator_id = ? AND bucket = ? AND sold_at_ms = ? AND purchase_id = ?",
            )
            .await?,
            update_creator_sale_released: prepare(
                "creator sale release",
                page,
                "UPDATE creator_sales USING TIMESTAMP ? SET released_at_ms = ? \
                 WHERE creator_id = ? AND bucket = ? AND sold_at_ms = ? AND purchase_id = ?",
            )
            .await?,
            update_creator_sale_refunded: prepare(
                "creator sale refund",
                page,
                "UPDATE creator_sales USING TIMESTAMP ? SET refunded_at_ms = ? \
                 WHERE creator_id = ? AND bucket = ? AND sold_at_ms = ? AND purchase_id = ?",
            )
            .await?,
            select_creator_sale_buckets: prepare(
                "creator sale bucket read",
                buckets,
                "SELECT bucket FROM creator_sale_buckets WHERE creator_id = ? AND bucket >= ? AND bucket <= ?",
            )
            .await?,
            select_creator_sales: prepare(
                "creator sales read",
                page,
                "SELECT purchase_id, sold_at_ms, position, resale, cleared, creator_share, platform_fee, \
                 policy_version, release_at_ms, frozen, released_at_ms, refunded_at_ms FROM creator_sales \
                 WHERE creator_id = ? AND bucket = ? AND (sold_at_ms, purchase_id) > (?, ?) LIMIT ?",
            )
            .await?,
        })
    }
}
