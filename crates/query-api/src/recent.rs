//! Item views read without `?after=`, kept for a short time.
//!
//! In the distributed mode an item read is five CQL queries (the item's
//! row, its sales counts from every shard, its lowest ask, its recent
//! sales for the average price, its price tests): about 1,200 reads per
//! second on the 2-core test machine, where `/healthz` answers 55,000. A
//! Limited's drop sends everyone to one item page at once. An answer
//! without `?after=` is "whatever has been projected", so one read per
//! item per [`ITEM_CACHE_TTL_DISTRIBUTED`] can serve them all: a kept view
//! is at most that much older than its read began. A read with `?after=`
//! never uses it (it waits for its position, then reads the read models).
//!
//! The embedded mode does not need this: its store serves item reads from
//! views its projector publishes and empties at each commit
//! (`ledger-store-sqlite`'s `published`).

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use projectors::{ItemView, ReadError};
use tokio::time::Instant;

use crate::metrics as names;

/// How long the distributed query API keeps an item view read without
/// `?after=`.
pub const ITEM_CACHE_TTL_DISTRIBUTED: Duration = Duration::from_millis(100);
/// Items kept at once; when full, expired views are dropped, then all.
pub const RECENT_ITEMS_MAX: usize = 10_000;

/// Item views by id, each with the instant its read began.
#[derive(Debug)]
pub struct RecentItems {
    time_to_live: Duration,
    views: Mutex<HashMap<String, (Instant, Option<ItemView>)>>,
}

impl RecentItems {
    /// `None` for a zero time to live (nothing kept).
    pub fn new(time_to_live: Duration) -> Option<RecentItems> {
        (!time_to_live.is_zero()).then(|| RecentItems {
            time_to_live,
            views: Mutex::new(HashMap::new()),
        })
    }

    /// The view of `item_id` read less than the time to live before `now`.
    fn fresh(&self, item_id: &str, now: Instant) -> Option<Option<ItemView>> {
        let views = self.views.lock().unwrap_or_else(PoisonError::into_inner);
        let (read_at, view) = views.get(item_id)?;
        (now.saturating_duration_since(*read_at) < self.time_to_live).then(|| view.clone())
    }

    /// Keeps `view` of `item_id`, read from `read_at`.
    fn keep(&self, item_id: &str, view: Option<ItemView>, read_at: Instant) {
        let mut views = self.views.lock().unwrap_or_else(PoisonError::into_inner);
        if views.len() >= RECENT_ITEMS_MAX && !views.contains_key(item_id) {
            let time_to_live = self.time_to_live;
            views.retain(|_, (kept_at, _)| {
                read_at.saturating_duration_since(*kept_at) < time_to_live
            });
            if views.len() >= RECENT_ITEMS_MAX {
                views.clear();
            }
        }
        views.insert(item_id.to_string(), (read_at, view));
    }

    /// The view of `item_id`: a fresh one kept, or `read`'s, then kept.
    pub async fn item<R>(&self, item_id: &str, read: R) -> Result<Option<ItemView>, ReadError>
    where
        R: Future<Output = Result<Option<ItemView>, ReadError>>,
    {
        let began = Instant::now();
        if let Some(view) = self.fresh(item_id, began) {
            metrics::counter!(names::ITEM_CACHE_HITS_TOTAL).increment(1);
            return Ok(view);
        }
        metrics::counter!(names::ITEM_CACHE_MISSES_TOTAL).increment(1);
        let view = read.await?;
        self.keep(item_id, view.clone(), began);
        Ok(view)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(item_id: &str, sold: u64) -> ItemView {
        ItemView {
            item_id: item_id.to_string(),
            creator_id: "studio".to_string(),
            name: "Golden Crown".to_string(),
            price: 250,
            on_sale: true,
            limited: true,
            supply: Some(10),
            sold,
            remaining: Some(10 - sold),
            max_per_user: None,
            starts_at_ms: None,
            ends_at_ms: None,
            resellable: true,
            kind: "accessory".to_string(),
            regional_prices: Default::default(),
            price_test: None,
            sales_count: sold,
            recent_average_price: None,
            lowest_resale_price: None,
        }
    }

    #[test]
    fn no_time_to_live_keeps_nothing() {
        assert!(RecentItems::new(Duration::ZERO).is_none());
    }

    #[test]
    fn a_view_is_fresh_until_its_time_to_live_from_when_its_read_began() {
        let recent = RecentItems::new(Duration::from_millis(100)).expect("a time to live");
        let began = Instant::now();
        let at = |milliseconds| began + Duration::from_millis(milliseconds);
        assert_eq!(recent.fresh("crown", began), None);
        recent.keep("crown", Some(view("crown", 1)), began);
        assert_eq!(recent.fresh("crown", at(99)), Some(Some(view("crown", 1))));
        assert_eq!(recent.fresh("crown", at(100)), None);
        recent.keep("crown", Some(view("crown", 3)), at(100));
        assert_eq!(recent.fresh("crown", at(150)), Some(Some(view("crown", 3))));
        // An item not found is kept too, and another item is its own entry.
        recent.keep("nothing", None, at(150));
        assert_eq!(recent.fresh("nothing", at(150)), Some(None));
        assert_eq!(recent.fresh("other", at(150)), None);
    }

    #[tokio::test]
    async fn a_read_is_made_once_per_fresh_view_and_a_failed_one_is_not_kept() {
        let recent = RecentItems::new(Duration::from_secs(60)).expect("a time to live");
        let read = |sold| async move { Ok(Some(view("crown", sold))) };
        let failed = async { Err(ReadError::Backend("cql timed out".to_string())) };
        assert!(recent.item("crown", failed).await.is_err());
        assert_eq!(
            recent.item("crown", read(1)).await,
            Ok(Some(view("crown", 1)))
        );
        assert_eq!(
            recent.item("crown", read(2)).await,
            Ok(Some(view("crown", 1)))
        );
    }

    #[test]
    fn a_full_cache_drops_expired_views_first_then_everything() {
        let recent = RecentItems::new(Duration::from_millis(100)).expect("a time to live");
        let began = Instant::now();
        let later = began + Duration::from_millis(100);
        for index in 0..RECENT_ITEMS_MAX - 1 {
            recent.keep(&format!("old-{index}"), None, began);
        }
        recent.keep("new-0", None, later);
        // Full: the expired views go, the fresh one stays.
        recent.keep("new-1", None, later);
        let kept = || recent.views.lock().expect("not poisoned").len();
        assert_eq!(kept(), 2);
        for index in 2..RECENT_ITEMS_MAX {
            recent.keep(&format!("new-{index}"), None, later);
        }
        assert_eq!(kept(), RECENT_ITEMS_MAX);
        // Full of fresh views: all go.
        recent.keep("new-last", None, later);
        assert_eq!(kept(), 1);
        assert_eq!(recent.fresh("new-last", later), Some(None));
    }
}
