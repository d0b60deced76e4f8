//! Purchase rate limits per buyer, enforced on the buyer's shard.
//!
//! Two limits keep bots from draining a limited drop:
//!
//! * **purchases per window**: at most `purchases_per_window` purchase
//!   requests (primary or resale) admitted per buyer in any
//!   `purchase_window_ms` (Roblox: about 9 a minute);
//! * **one request per item per interval**: at most one purchase request of
//!   a buyer for the same item, bundle or listing per
//!   `item_request_interval_ms` (Roblox: one per 2 s).
//!
//! When either limit is on, a purchase's first hop goes to the buyer's
//! shard (`AdmitSale`; decided in the same step when the buyer's shard is
//! the purchase's home), before anything is reserved or charged. A request over a limit is refused with `rate_limited` and a
//! wait; the purchase's home shard then forgets the command
//! (`command_withdrawn`), so it is never remembered and never counted. An
//! admitted request counts whatever happens to it next (sold out, price
//! changed): a bot hammering a sold-out drop is what the limit is for.
//!
//! Every decision is made by `decide` from the request's own time and
//! recorded as an event (`PurchaseAdmitted`), so every replica, a replay and
//! the embedded mode agree. The state holds only the admissions of the last
//! two windows: it is bounded by the admission rate times the window.
//!
//! Requests reach the buyer's shard a little out of the order of their
//! times; each is judged against every admission near its own time, so no
//! window of any buyer ever holds more than the cap. The one request that
//! cannot be judged exactly is one that arrives more than a whole window
//! after newer admissions of its shard (what it would be counted against
//! may be dropped already): it is refused too, with a wait of one second,
//! after which it is sent again with a fresh time.

use std::collections::{BTreeMap, VecDeque};

use bincode::{Decode, Encode};
use serde::{Deserialize, Serialize};

use crate::ids::UserId;
use crate::model::TimestampMs;

/// How much a buyer may purchase (0 turns a limit off; both off by default).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PurchaseLimits {
    /// Most purchase requests admitted per buyer in any `purchase_window_ms`.
    pub purchases_per_window: u32,
    pub purchase_window_ms: u64,
    /// Least time between two admitted requests of one buyer for one item,
    /// bundle or listing.
    pub item_request_interval_ms: u64,
}

impl PurchaseLimits {
    /// Roblox's published limits: 9 purchases a minute, one request per
    /// item every 2 s (what the deployment manifests turn on).
    pub const RECOMMENDED: PurchaseLimits = PurchaseLimits {
        purchases_per_window: 9,
        purchase_window_ms: 60_000,
        item_request_interval_ms: 2_000,
    };

    /// The longest window a limit may have: admissions are kept for two
    /// windows, so this bounds the state.
    pub const WINDOW_MS_MAX: u64 = 24 * 3_600 * 1_000;

    /// Refuses settings that would not limit what they seem to: a cap
    /// without a window, or a window longer than [`Self::WINDOW_MS_MAX`].
    pub fn validate(&self) -> Result<(), String> {
        if self.purchases_per_window > 0 && self.purchase_window_ms == 0 {
            return Err("the purchase window must be positive when a purchase limit is set".into());
        }
        if self.purchase_window_ms > Self::WINDOW_MS_MAX
            || self.item_request_interval_ms > Self::WINDOW_MS_MAX
        {
            return Err(format!(
                "purchase windows and item request intervals must be at most {} ms (one day)",
                Self::WINDOW_MS_MAX
            ));
        }
        Ok(())
    }

    fn purchase_limit_on(&self) -> bool {
        self.purchases_per_window > 0 && self.purchase_window_ms > 0
    }

    /// Whether purchases go through the buyer's shard first.
    pub fn enabled(&self) -> bool {
        self.purchase_limit_on() || self.item_request_interval_ms > 0
    }

    /// How long an admission counts toward some limit.
    pub fn longest_window_ms(&self) -> u64 {
        let purchases = if self.purchase_limit_on() {
            self.purchase_window_ms
        } else {
            0
        };
        purchases.max(self.item_request_interval_ms)
    }

    /// Admissions before this (relative to a request at `at_ms`) are
    /// dropped: two windows, so a request up to one window late is still
    /// judged against everything near its time.
    pub fn expire_before_ms(&self, at_ms: TimestampMs) -> TimestampMs {
        at_ms.saturating_sub(self.longest_window_ms().saturating_mul(2))
    }
}

/// One admitted purchase request, in admission order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
pub struct Admission {
    pub at_ms: TimestampMs,
    pub buyer_id: UserId,
    pub subject: String,
}

/// The admissions of the last window on one shard.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
pub struct BuyerLimits {
    /// Every admission still counted, in admission order (to expire them).
    pub admitted: VecDeque<Admission>,
    /// Per buyer: the times of their admissions still counted.
    pub purchases: BTreeMap<UserId, VecDeque<TimestampMs>>,
    /// Per buyer and subject: the time of the last admission still counted.
    pub last_request_ms: BTreeMap<(UserId, String), TimestampMs>,
    /// Every admission before this was dropped.
    pub expired_before_ms: TimestampMs,
}

/// Why a request is refused, and how long until it would pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverLimit {
    pub detail: String,
    pub retry_after_ms: u64,
}

impl BuyerLimits {
    /// Whether `buyer_id` may purchase `subject` at `at_ms` under `limits`.
    pub fn check(
        &self,
        limits: &PurchaseLimits,
        buyer_id: &UserId,
        subject: &str,
        at_ms: TimestampMs,
    ) -> Result<(), OverLimit> {
        if !limits.enabled() {
            return Ok(());
        }
        // What this request counts against may have been dropped.
        if at_ms.saturating_sub(limits.longest_window_ms()) < self.expired_before_ms {
            return Err(OverLimit {
                detail: format!(
                    "the purchase request of buyer {buyer_id} reached its shard too late to be \
                     counted; send it again"
                ),
                retry_after_ms: 1_000,
            });
        }
        if limits.item_request_interval_ms > 0 {
            let key = (buyer_id.clone(), subject.to_string());
            if let Some(&last_ms) = self.last_request_ms.get(&key) {
                let free_at_ms = last_ms.saturating_add(limits.item_request_interval_ms);
                if at_ms < free_at_ms {
                    return Err(OverLimit {
                        detail: format!(
                            "buyer {buyer_id} already asked for {subject} within the last {} ms",
                            limits.item_request_interval_ms
                        ),
                        retry_after_ms: free_at_ms - at_ms,
                    });
                }
            }
        }
        if limits.purchase_limit_on() {
            let window_start_ms = at_ms.saturating_sub(limits.purchase_window_ms);
            let mut counted: Vec<TimestampMs> = self
                .purchases
                .get(buyer_id)
                .into_iter()
                .flatten()
                .copied()
                .filter(|&time_ms| time_ms > window_start_ms)
                .collect();
            let cap = limits.purchases_per_window as usize;
            if counted.len() >= cap {
                counted.sort_unstable();
                // The request passes once all but cap - 1 of them left the window.
                let freeing_ms = counted[counted.len() - cap];
                return Err(OverLimit {
                    detail: format!(
                        "buyer {buyer_id} made {} purchase requests in the last {} ms (limit {})",
                        counted.len(),
                        limits.purchase_window_ms,
                        limits.purchases_per_window
                    ),
                    retry_after_ms: (freeing_ms + limits.purchase_window_ms - at_ms).max(1),
                });
            }
        }
        Ok(())
    }

    /// Records an admission, after dropping those before `expire_before_ms`.
    pub fn admit(
        &mut self,
        buyer_id: &UserId,
        subject: &str,
        at_ms: TimestampMs,
        expire_before_ms: TimestampMs,
    ) {
        while self
            .admitted
            .front()
            .is_some_and(|admission| admission.at_ms < expire_before_ms)
        {
            let expired = self.admitted.pop_front().expect("checked non-empty");
            self.expire(&expired);
        }
        self.expired_before_ms = self.expired_before_ms.max(expire_before_ms);
        self.admitted.push_back(Admission {
            at_ms,
            buyer_id: buyer_id.clone(),
            subject: subject.to_string(),
        });
        self.purchases
            .entry(buyer_id.clone())
            .or_default()
            .push_back(at_ms);
        let last = self
            .last_request_ms
            .entry((buyer_id.clone(), subject.to_string()))
            .or_insert(at_ms);
        *last = (*last).max(at_ms);
    }

    /// Drops one expired admission from the per-buyer indexes.
    fn expire(&mut self, expired: &Admission) {
        let times = self
            .purchases
            .get_mut(&expired.buyer_id)
            .expect("an admitted buyer has its times");
        let at = times
            .iter()
            .position(|&time_ms| time_ms == expired.at_ms)
            .expect("an admission is indexed under its buyer");
        times.remove(at);
        if times.is_empty() {
            self.purchases.remove(&expired.buyer_id);
        }
        let key = (expired.buyer_id.clone(), expired.subject.clone());
        if self.last_request_ms.get(&key) == Some(&expired.at_ms) {
            self.last_request_ms.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_later_than_a_window_behind_the_newest_admissions_is_refused() {
        let limits = PurchaseLimits {
            purchases_per_window: 5,
            purchase_window_ms: 1_000,
            item_request_interval_ms: 0,
        };
        let mut state = BuyerLimits::default();
        state.admit(&buyer(), "item:a", 10_000, limits.expire_before_ms(10_000));
        // Within one window behind: judged as usual.
        assert!(state.check(&limits, &buyer(), "item:b", 9_000).is_ok());
        let late = state.check(&limits, &buyer(), "item:b", 8_999).unwrap_err();
        assert_eq!(late.retry_after_ms, 1_000);
    }

    fn buyer() -> UserId {
        UserId::parse("bot").unwrap()
    }

    #[test]
    fn the_purchase_cap_counts_only_the_window_and_says_when_it_frees() {
        let limits = PurchaseLimits {
            purchases_per_window: 2,
            purchase_window_ms: 1_000,
            item_request_interval_ms: 0,
        };
        let mut state = BuyerLimits::default();
        state.admit(&buyer(), "item:a", 100, 0);
        state.admit(&buyer(), "item:b", 400, 0);
        let refused = state.check(&limits, &buyer(), "item:c", 500).unwrap_err();
        // The first admission leaves the window at 1,100.
        assert_eq!(refused.retry_after_ms, 600);
        assert!(state.check(&limits, &buyer(), "item:c", 1_100).is_ok());
        // Another buyer is not limited by this one.
        let other = UserId::parse("human").unwrap();
        assert!(state.check(&limits, &other, "item:c", 500).is_ok());
    }

    #[test]
    fn settings_that_would_not_limit_are_refused() {
        assert!(PurchaseLimits::RECOMMENDED.validate().is_ok());
        assert!(PurchaseLimits::default().validate().is_ok());
        let no_window = PurchaseLimits {
            purchase_window_ms: 0,
            ..PurchaseLimits::RECOMMENDED
        };
        assert!(no_window.validate().is_err());
        let a_year = PurchaseLimits {
            item_request_interval_ms: 365 * PurchaseLimits::WINDOW_MS_MAX,
            ..PurchaseLimits::RECOMMENDED
        };
        assert!(a_year.validate().is_err());
    }

    #[test]
    fn one_request_per_item_per_interval() {
        let limits = PurchaseLimits {
            purchases_per_window: 0,
            purchase_window_ms: 0,
            item_request_interval_ms: 2_000,
        };
        let mut state = BuyerLimits::default();
        state.admit(&buyer(), "item:a", 1_000, 0);
        let refused = state.check(&limits, &buyer(), "item:a", 2_500).unwrap_err();
        assert_eq!(refused.retry_after_ms, 500);
        assert!(state.check(&limits, &buyer(), "item:b", 2_500).is_ok());
        assert!(state.check(&limits, &buyer(), "item:a", 3_000).is_ok());
    }

    #[test]
    fn expired_admissions_leave_no_trace() {
        let mut state = BuyerLimits::default();
        for at_ms in 0..100 {
            state.admit(&buyer(), &format!("item:{at_ms}"), at_ms, 0);
        }
        state.admit(&buyer(), "item:last", 5_000, 4_000);
        assert_eq!(state.admitted.len(), 1);
        assert_eq!(state.expired_before_ms, 4_000);
        assert_eq!(state.purchases[&buyer()].len(), 1);
        assert_eq!(state.last_request_ms.len(), 1);
    }
}
