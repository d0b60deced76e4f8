//! Pure helpers of the layout: write timestamps, bucket numbers, cursors,
//! page sizes and the recent average price. No I/O.

use ledger_core::validate_id;
use projectors::{next_recent_average_price, ReadError, PAGE_SIZE_MAX};

/// Write-timestamp slots per event: an event's changes get consecutive
/// slots, so a later change of the same event wins over an earlier one.
pub const TIMESTAMP_SLOTS_PER_EVENT: usize = 1_024;
/// The slot of rows written once per event or per chunk (sums, checkpoints).
pub const LAST_TIMESTAMP_SLOT: usize = TIMESTAMP_SLOTS_PER_EVENT - 1;
/// Largest sequence whose write timestamps fit in a CQL timestamp (i64).
pub const SEQUENCE_MAX: u64 = (i64::MAX as u64) / TIMESTAMP_SLOTS_PER_EVENT as u64;

/// Width of a `transactions` bucket: 30 days of event time.
pub const TRANSACTION_BUCKET_MS: u64 = 30 * 24 * 3_600 * 1_000;
/// Width of an `item_sales` bucket: one day of completion time.
pub const SALE_BUCKET_MS: u64 = 24 * 3_600 * 1_000;
/// Serials per `serial_owners` partition.
pub const SERIALS_PER_OWNER_BUCKET: u64 = 10_000;
/// The recent average price folds this many of an item's newest sales.
pub const RECENT_SALES_WINDOW: usize = 256;

/// `inventory.serial` of a non-limited item (Limited serials start at 1),
/// as in the embedded store.
pub const NON_LIMITED_SERIAL: i64 = 0;

/// The CQL write timestamp of the change at `slot` of the event at
/// `sequence`: ordered like (sequence, slot), so among writes of one shard
/// the newest event (and, within it, the later change) wins.
pub fn write_timestamp(sequence: u64, slot: usize) -> i64 {
    assert!(
        slot < TIMESTAMP_SLOTS_PER_EVENT,
        "an event has at most {TIMESTAMP_SLOTS_PER_EVENT} write slots, got slot {slot}"
    );
    assert!(
        sequence <= SEQUENCE_MAX,
        "sequence {sequence} is beyond the write-timestamp range"
    );
    let timestamp = sequence * TIMESTAMP_SLOTS_PER_EVENT as u64 + slot as u64;
    i64::try_from(timestamp).expect("bounded by SEQUENCE_MAX")
}

/// The `transactions` bucket of an entry made at `at_ms`.
pub fn transaction_bucket(at_ms: u64) -> u64 {
    at_ms / TRANSACTION_BUCKET_MS
}

/// The `item_sales` bucket of a sale completed at `at_ms`.
pub fn sale_bucket(at_ms: u64) -> u64 {
    at_ms / SALE_BUCKET_MS
}

/// The `serial_owners` bucket of a serial.
pub fn owner_bucket(serial: u32) -> u64 {
    u64::from(serial) / SERIALS_PER_OWNER_BUCKET
}

/// `inventory.serial` of an optional serial.
pub fn serial_key(serial: Option<u32>) -> i64 {
    serial.map_or(NON_LIMITED_SERIAL, i64::from)
}

/// The recent average price after the sales at `prices_oldest_first`
/// (`None` without sales), as the embedded projection computes it sale by
/// sale.
pub fn recent_average_price(prices_oldest_first: impl IntoIterator<Item = i64>) -> Option<i64> {
    prices_oldest_first
        .into_iter()
        .fold(None, |average, price| {
            Some(next_recent_average_price(average, price))
        })
}

/// `limit` clamped to `1..=PAGE_SIZE_MAX`.
pub fn page_size(limit: usize) -> usize {
    limit.clamp(1, PAGE_SIZE_MAX)
}

pub const CURSOR_INVENTORY: &str = "inventory";
pub const CURSOR_TRANSACTIONS: &str = "transactions";
pub const CURSOR_LISTINGS: &str = "listings";
pub const CURSOR_OWNERS: &str = "owners";
pub const CURSOR_TAKEDOWN_LEFT: &str = "takedown-left";

/// Longest cursor accepted, in characters.
const CURSOR_LENGTH_MAX: usize = 1_024;

/// Makes an opaque, URL-safe cursor from a listing tag and the fields of the
/// last key returned: `tag/field/...`, hex-encoded. Fields never contain `/`
/// (ids, numbers and account names).
pub fn encode_cursor(tag: &str, fields: &[&str]) -> String {
    let mut text = tag.to_string();
    for field in fields {
        text.push('/');
        text.push_str(field);
    }
    text.bytes().map(|byte| format!("{byte:02x}")).collect()
}

/// The key fields of a cursor made by [`encode_cursor`] for `tag`.
pub fn decode_cursor(
    tag: &str,
    cursor: &str,
    field_count: usize,
) -> Result<Vec<String>, ReadError> {
    if cursor.len() % 2 == 1 || cursor.len() > CURSOR_LENGTH_MAX {
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

/// A numeric cursor field.
pub fn parse_field<T: std::str::FromStr>(field: &str) -> Result<T, ReadError> {
    field.parse().map_err(|_| ReadError::BadCursor)
}

/// An id cursor field.
pub fn parse_id(field: &str) -> Result<String, ReadError> {
    validate_id("cursor", field).map_err(|_| ReadError::BadCursor)?;
    Ok(field.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_timestamps_order_like_sequence_then_slot() {
        assert_eq!(write_timestamp(0, 0), 0);
        assert_eq!(write_timestamp(1, 0), 1_024);
        assert_eq!(write_timestamp(1, 5), 1_029);
        assert!(write_timestamp(1, LAST_TIMESTAMP_SLOT) < write_timestamp(2, 0));
        assert!(write_timestamp(7, 3) < write_timestamp(7, 4));
        assert_eq!(
            write_timestamp(SEQUENCE_MAX, LAST_TIMESTAMP_SLOT),
            i64::MAX - (i64::MAX % 1_024) + 1_023
        );
    }

    #[test]
    #[should_panic(expected = "write slots")]
    fn too_many_changes_in_one_event_are_refused() {
        write_timestamp(1, TIMESTAMP_SLOTS_PER_EVENT);
    }

    #[test]
    #[should_panic(expected = "beyond the write-timestamp range")]
    fn sequences_beyond_the_timestamp_range_are_refused() {
        write_timestamp(SEQUENCE_MAX + 1, 0);
    }

    #[test]
    fn buckets_split_time_and_serials() {
        assert_eq!(transaction_bucket(0), 0);
        assert_eq!(transaction_bucket(TRANSACTION_BUCKET_MS - 1), 0);
        assert_eq!(transaction_bucket(TRANSACTION_BUCKET_MS), 1);
        assert_eq!(sale_bucket(1_700_000_000_000), 19_675);
        assert_eq!(owner_bucket(1), 0);
        assert_eq!(owner_bucket(9_999), 0);
        assert_eq!(owner_bucket(10_000), 1);
        assert_eq!(
            owner_bucket(ledger_core::SUPPLY_MAX),
            u64::from(ledger_core::SUPPLY_MAX) / SERIALS_PER_OWNER_BUCKET
        );
        assert_eq!(serial_key(None), NON_LIMITED_SERIAL);
        assert_eq!(serial_key(Some(3)), 3);
    }

    #[test]
    fn the_recent_average_price_folds_sales_in_order() {
        assert_eq!(recent_average_price([]), None);
        assert_eq!(recent_average_price([100]), Some(100));
        // 100, then 100 + (120 - 100) / 10 = 102, then 102 + (50 - 102) / 10 = 97.
        assert_eq!(recent_average_price([100, 120, 50]), Some(97));
        // Order matters.
        assert_eq!(recent_average_price([50, 120, 100]), Some(61));
    }

    #[test]
    fn cursors_round_trip_and_refuse_other_listings_and_garbage() {
        let cursor = encode_cursor(CURSOR_TRANSACTIONS, &["1700000000000", "3", "42", "wallet"]);
        assert!(cursor.bytes().all(|byte| byte.is_ascii_hexdigit()));
        assert_eq!(
            decode_cursor(CURSOR_TRANSACTIONS, &cursor, 4),
            Ok(vec![
                "1700000000000".to_string(),
                "3".to_string(),
                "42".to_string(),
                "wallet".to_string()
            ])
        );
        assert_eq!(
            decode_cursor(CURSOR_OWNERS, &cursor, 4),
            Err(ReadError::BadCursor)
        );
        assert_eq!(
            decode_cursor(CURSOR_TRANSACTIONS, &cursor, 3),
            Err(ReadError::BadCursor)
        );
        for garbage in ["", "0", "zz", "abc", "6c697374696e6773", &"00".repeat(600)] {
            assert_eq!(
                decode_cursor(CURSOR_LISTINGS, garbage, 2),
                Err(ReadError::BadCursor),
                "{garbage}"
            );
        }
        assert_eq!(parse_field::<u32>("12"), Ok(12));
        assert_eq!(parse_field::<u32>("-1"), Err(ReadError::BadCursor));
        assert_eq!(parse_id("listing.7:a"), Ok("listing.7:a".to_string()));
        assert_eq!(parse_id("not an id"), Err(ReadError::BadCursor));
    }

    #[test]
    fn page_sizes_are_clamped() {
        assert_eq!(page_size(0), 1);
        assert_eq!(page_size(10), 10);
        assert_eq!(page_size(PAGE_SIZE_MAX + 1), PAGE_SIZE_MAX);
    }
}
