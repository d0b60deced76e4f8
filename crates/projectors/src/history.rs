//! An item's sales history by UTC day (`GET /v1/items/{id}/history`): what
//! the read models keep per (item, day), and the pure arithmetic that turns
//! it into the buckets the query API serves.
//!
//! Definitions (the OpenAPI file states them for clients):
//!
//! * A sale is a completed primary purchase of the item or a completed
//!   resale of one of its serials (bundle purchases are not sales of an
//!   item, as in `GET /v1/items/{id}`), counted in the UTC day its
//!   completion was logged, at its price.
//! * A refund restates the day of the sale it refunds: the sale leaves
//!   that day's counts and revenue and is counted in its `refunded_count`.
//!   So a day shows what its sales are worth now, never a negative figure.
//! * The recent average price of a day is the item's recent average price
//!   after the last sale of that day (the rule of the contract notes:
//!   primary and resale sales both move it, refunds do not), carried over
//!   days without sales; `None` before the first sale.
//! * The lowest resale ask of a day is the lowest price of the item's open
//!   resale listings when the day ended (as of the last change of the
//!   listing book that day), carried over days without changes; `None` when
//!   no listing was open.

use serde::Serialize;

/// Width of a history bucket: one UTC day, in milliseconds.
pub const DAY_MS: u64 = 24 * 3_600 * 1_000;
/// Most buckets one history read returns.
pub const HISTORY_DAYS_MAX: u64 = 366;
/// Buckets returned when `from` is not given: the days up to `to`'s.
pub const HISTORY_DAYS_DEFAULT: u64 = 30;

/// The UTC day (days since the Unix epoch) holding `at_ms`.
pub fn day_of(at_ms: u64) -> u64 {
    at_ms / DAY_MS
}

/// The first day not before `at_ms`: `at_ms` rounded up to a day boundary,
/// in days.
pub fn day_ceiling(at_ms: u64) -> u64 {
    at_ms.div_ceil(DAY_MS)
}

/// What the read models keep of one item on one UTC day, as stored: gross
/// figures, the refunds of the day's sales apart.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ItemDay {
    /// Days since the Unix epoch.
    pub day: u64,
    /// Primary sales completed that day, refunded ones included.
    pub primary_count: u64,
    pub primary_revenue: i64,
    pub resale_count: u64,
    pub resale_revenue: i64,
    /// Primary sales of that day refunded since, and their prices.
    pub refunded_count: u64,
    pub refunded_revenue: i64,
    /// The recent average price after the day's last sale, if it had one.
    pub recent_average_price: Option<i64>,
    /// The lowest open ask after the day's last change of the listing book
    /// (`Some(None)`: no listing open then), if the book changed that day.
    pub lowest_resale_ask: Option<Option<i64>>,
}

/// What a backend returns for a history read of days `from_day..to_day`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ItemDays {
    /// The recent average price when `from_day` began (`None`: no sale yet).
    pub recent_average_price_before: Option<i64>,
    /// The lowest open ask when `from_day` began (`None`: none open).
    pub lowest_resale_ask_before: Option<i64>,
    /// The days of the range with a sale, a refund or a change of the
    /// listing book, ascending, each at most once.
    pub days: Vec<ItemDay>,
}

/// One served bucket: a UTC day of an item's sales.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HistoryBucket {
    /// Days since the Unix epoch.
    pub day: u64,
    /// Sales of the day net of refunds: primary plus resale.
    pub sales_count: u64,
    pub primary_sales_count: u64,
    pub resale_sales_count: u64,
    /// Primary sales of the day refunded since (not in `sales_count`).
    pub refunded_count: u64,
    /// Prices of the day's sales net of refunds.
    pub revenue: i64,
    pub primary_revenue: i64,
    pub resale_revenue: i64,
    /// `revenue / sales_count` rounded down; `None` without sales.
    pub average_price: Option<i64>,
    /// As of the end of the day (see the module docs).
    pub recent_average_price: Option<i64>,
    /// As of the end of the day (see the module docs).
    pub lowest_resale_ask: Option<i64>,
}

/// One bucket per day of `from_day..to_day`, ascending, days without
/// activity zero-filled and carrying the recent average price and lowest
/// ask forward. Days of `stored` outside the range are ignored.
pub fn history_buckets(from_day: u64, to_day: u64, stored: &ItemDays) -> Vec<HistoryBucket> {
    let mut recent_average_price = stored.recent_average_price_before;
    let mut lowest_resale_ask = stored.lowest_resale_ask_before;
    let mut days = stored
        .days
        .iter()
        .filter(|day| (from_day..to_day).contains(&day.day))
        .peekable();
    let mut buckets = Vec::new();
    for day in from_day..to_day {
        let mut bucket = HistoryBucket {
            day,
            sales_count: 0,
            primary_sales_count: 0,
            resale_sales_count: 0,
            refunded_count: 0,
            revenue: 0,
            primary_revenue: 0,
            resale_revenue: 0,
            average_price: None,
            recent_average_price,
            lowest_resale_ask,
        };
        while let Some(stored_day) = days.next_if(|stored_day| stored_day.day <= day) {
            if stored_day.day < day {
                continue;
            }
            // Refunds never exceed the sales they restate; saturate rather
            // than serve a negative figure should a read see them apart.
            let primary_count = stored_day
                .primary_count
                .saturating_sub(stored_day.refunded_count);
            let primary_revenue = stored_day
                .primary_revenue
                .saturating_sub(stored_day.refunded_revenue)
                .max(0);
            bucket.primary_sales_count = primary_count;
            bucket.resale_sales_count = stored_day.resale_count;
            bucket.refunded_count = stored_day.refunded_count;
            bucket.primary_revenue = primary_revenue;
            bucket.resale_revenue = stored_day.resale_revenue;
            bucket.sales_count = primary_count.saturating_add(stored_day.resale_count);
            bucket.revenue = primary_revenue.saturating_add(stored_day.resale_revenue);
            bucket.average_price = average_price(bucket.revenue, bucket.sales_count);
            if let Some(average) = stored_day.recent_average_price {
                recent_average_price = Some(average);
                bucket.recent_average_price = Some(average);
            }
            if let Some(ask) = stored_day.lowest_resale_ask {
                lowest_resale_ask = ask;
                bucket.lowest_resale_ask = ask;
            }
        }
        buckets.push(bucket);
    }
    buckets
}

/// `revenue / count` rounded down (revenue is never negative); `None`
/// without sales.
pub fn average_price(revenue: i64, count: u64) -> Option<i64> {
    if count == 0 {
        return None;
    }
    let count = i64::try_from(count).unwrap_or(i64::MAX);
    Some(revenue.div_euclid(count))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(day: u64) -> ItemDay {
        ItemDay {
            day,
            ..ItemDay::default()
        }
    }

    #[test]
    fn days_split_at_utc_midnight() {
        assert_eq!(day_of(0), 0);
        assert_eq!(day_of(DAY_MS - 1), 0);
        assert_eq!(day_of(DAY_MS), 1);
        // 2024-05-03T10:00:00Z is day 19 846.
        assert_eq!(day_of(1_714_730_400_000), 19_846);
        assert_eq!(day_ceiling(0), 0);
        assert_eq!(day_ceiling(1), 1);
        assert_eq!(day_ceiling(DAY_MS), 1);
        assert_eq!(day_ceiling(DAY_MS + 1), 2);
    }

    #[test]
    fn average_price_rounds_down_and_is_none_without_sales() {
        assert_eq!(average_price(0, 0), None);
        assert_eq!(average_price(100, 0), None);
        assert_eq!(average_price(300, 3), Some(100));
        assert_eq!(average_price(301, 3), Some(100));
        assert_eq!(average_price(302, 3), Some(100));
        assert_eq!(average_price(299, 3), Some(99));
        assert_eq!(average_price(1, 2), Some(0));
    }

    #[test]
    fn empty_days_are_zero_filled_within_the_range() {
        let buckets = history_buckets(10, 13, &ItemDays::default());
        assert_eq!(buckets.len(), 3);
        assert_eq!(
            buckets.iter().map(|bucket| bucket.day).collect::<Vec<_>>(),
            [10, 11, 12]
        );
        for bucket in &buckets {
            assert_eq!(bucket.sales_count, 0);
            assert_eq!(bucket.revenue, 0);
            assert_eq!(bucket.average_price, None);
            assert_eq!(bucket.recent_average_price, None);
            assert_eq!(bucket.lowest_resale_ask, None);
        }
        assert!(history_buckets(5, 5, &ItemDays::default()).is_empty());
    }

    #[test]
    fn refunds_are_netted_out_of_the_day_of_their_sale() {
        let stored = ItemDays {
            days: vec![ItemDay {
                primary_count: 3,
                primary_revenue: 350,
                resale_count: 1,
                resale_revenue: 250,
                refunded_count: 1,
                refunded_revenue: 100,
                ..day(20)
            }],
            ..ItemDays::default()
        };
        let buckets = history_buckets(20, 21, &stored);
        let bucket = &buckets[0];
        assert_eq!(bucket.primary_sales_count, 2);
        assert_eq!(bucket.resale_sales_count, 1);
        assert_eq!(bucket.sales_count, 3);
        assert_eq!(bucket.refunded_count, 1);
        assert_eq!(bucket.primary_revenue, 250);
        assert_eq!(bucket.resale_revenue, 250);
        assert_eq!(bucket.revenue, 500);
        // 500 / 3 = 166.67, rounded down.
        assert_eq!(bucket.average_price, Some(166));
    }

    #[test]
    fn a_day_whose_sales_were_all_refunded_has_no_average() {
        let stored = ItemDays {
            days: vec![ItemDay {
                primary_count: 1,
                primary_revenue: 100,
                refunded_count: 1,
                refunded_revenue: 100,
                recent_average_price: Some(100),
                ..day(7)
            }],
            ..ItemDays::default()
        };
        let bucket = &history_buckets(7, 8, &stored)[0];
        assert_eq!(bucket.sales_count, 0);
        assert_eq!(bucket.refunded_count, 1);
        assert_eq!(bucket.revenue, 0);
        assert_eq!(bucket.average_price, None);
        // A refund does not move the recent average price.
        assert_eq!(bucket.recent_average_price, Some(100));
    }

    #[test]
    fn the_average_and_the_ask_carry_forward_until_they_change() {
        let stored = ItemDays {
            recent_average_price_before: Some(90),
            lowest_resale_ask_before: Some(500),
            days: vec![
                // Outside the range: ignored.
                ItemDay {
                    recent_average_price: Some(1),
                    lowest_resale_ask: Some(Some(1)),
                    ..day(9)
                },
                ItemDay {
                    primary_count: 1,
                    primary_revenue: 190,
                    recent_average_price: Some(100),
                    ..day(11)
                },
                ItemDay {
                    lowest_resale_ask: Some(Some(400)),
                    ..day(12)
                },
                // Every listing closed.
                ItemDay {
                    lowest_resale_ask: Some(None),
                    ..day(14)
                },
            ],
        };
        let buckets = history_buckets(10, 16, &stored);
        let averages: Vec<Option<i64>> = buckets
            .iter()
            .map(|bucket| bucket.recent_average_price)
            .collect();
        assert_eq!(
            averages,
            [
                Some(90),
                Some(100),
                Some(100),
                Some(100),
                Some(100),
                Some(100)
            ]
        );
        let asks: Vec<Option<i64>> = buckets
            .iter()
            .map(|bucket| bucket.lowest_resale_ask)
            .collect();
        assert_eq!(
            asks,
            [Some(500), Some(500), Some(400), Some(400), None, None]
        );
        assert_eq!(buckets[1].sales_count, 1);
        assert_eq!(buckets[1].average_price, Some(190));
        assert_eq!(buckets[2].sales_count, 0);
    }
}
