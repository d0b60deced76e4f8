//! Pricing controls: item kinds, the platform's price floors per kind, and
//! the primary fee policy that grows the creator's share with the price's
//! ratio to its floor.
//!
//! Floors are set by an admin on one home shard (key [`FLOORS_KEY`]), which
//! replicates every version to every other shard before it answers, so a
//! publish or reprice decided on any shard after the answer sees it. A floor
//! is versioned and takes effect from a time: a decision at `at_ms` uses the
//! version with the latest `effective_from_ms` at or before `at_ms`. Items
//! that already sell keep their price when a floor rises; only publishing
//! and repricing are held to it.

use std::collections::BTreeMap;

use bincode::{Decode, Encode};
use serde::{Deserialize, Serialize};

use crate::ids::{PriceTestId, UserId};
use crate::model::TimestampMs;
use crate::money::PrimarySplit;

/// The key of the shard that orders floor changes.
pub const FLOORS_KEY: &str = "price-floors";

/// What kind of avatar item an item is: floors are set per kind.
///
/// Stored by a stable index (see [`ItemKind::stored_index`]) inside the
/// flags byte of an item definition; append new kinds, never reorder.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    Encode,
    Decode,
)]
#[serde(rename_all = "snake_case")]
pub enum ItemKind {
    /// Hats, hair, face and other rigid accessories (the kind of every item
    /// published before kinds existed).
    #[default]
    Accessory,
    /// Shirts, pants and t-shirts.
    ClassicClothing,
    /// Layered clothing.
    LayeredClothing,
    /// Bodies and heads.
    Body,
    /// Emotes and animations.
    Emote,
}

const ITEM_KINDS: [(ItemKind, u8, &str); 5] = [
    (ItemKind::Accessory, 0, "accessory"),
    (ItemKind::ClassicClothing, 1, "classic_clothing"),
    (ItemKind::LayeredClothing, 2, "layered_clothing"),
    (ItemKind::Body, 3, "body"),
    (ItemKind::Emote, 4, "emote"),
];

/// How many kinds there are.
pub const ITEM_KIND_COUNT: usize = ITEM_KINDS.len();

impl ItemKind {
    pub fn all() -> impl Iterator<Item = ItemKind> {
        ITEM_KINDS.iter().map(|(kind, _, _)| *kind)
    }

    fn entry(self) -> &'static (ItemKind, u8, &'static str) {
        ITEM_KINDS
            .iter()
            .find(|(kind, _, _)| *kind == self)
            .expect("every kind is listed once")
    }

    pub fn as_str(self) -> &'static str {
        self.entry().2
    }

    /// Parses the name used by the API (`accessory`, `classic_clothing`, ...).
    pub fn parse(name: &str) -> Option<ItemKind> {
        ITEM_KINDS
            .iter()
            .find(|(_, _, stored)| *stored == name)
            .map(|(kind, _, _)| *kind)
    }

    /// The index stored in an item definition's flags byte (7 bits).
    pub fn stored_index(self) -> u8 {
        self.entry().1
    }

    pub fn from_stored_index(index: u8) -> Option<ItemKind> {
        ITEM_KINDS
            .iter()
            .find(|(_, stored, _)| *stored == index)
            .map(|(kind, _, _)| *kind)
    }
}

impl std::fmt::Display for ItemKind {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// One version of the floor of a kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
pub struct FloorVersion {
    pub price: i64,
    pub effective_from_ms: TimestampMs,
}

/// Most versions a kind's floor may have: bounds the state (a floor changes
/// a few times a year).
pub const FLOOR_VERSIONS_MAX: usize = 1_000;

/// Every shard's copy of the floors, by kind and version (from 1).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
pub struct PriceFloors {
    pub kinds: BTreeMap<ItemKind, BTreeMap<u32, FloorVersion>>,
}

impl PriceFloors {
    /// The version the next floor of `kind` gets.
    pub fn next_version(&self, kind: ItemKind) -> u32 {
        self.kinds
            .get(&kind)
            .and_then(|versions| versions.last_key_value())
            .map_or(1, |(version, _)| version + 1)
    }

    pub fn version_count(&self, kind: ItemKind) -> usize {
        self.kinds.get(&kind).map_or(0, BTreeMap::len)
    }

    /// The floor of `kind` in force at `at_ms`: the version with the latest
    /// start at or before it (the newer version on a tie), if any.
    pub fn in_force(&self, kind: ItemKind, at_ms: TimestampMs) -> Option<(u32, FloorVersion)> {
        self.kinds
            .get(&kind)?
            .iter()
            .filter(|(_, floor)| floor.effective_from_ms <= at_ms)
            .max_by_key(|(version, floor)| (floor.effective_from_ms, **version))
            .map(|(version, floor)| (*version, *floor))
    }

    /// Records a version; replaying the same version again is a bug.
    pub fn insert(&mut self, kind: ItemKind, version: u32, floor: FloorVersion) {
        let previous = self.kinds.entry(kind).or_default().insert(version, floor);
        assert!(
            previous.is_none(),
            "floor version {version} of {kind} is recorded once"
        );
    }
}

/// Which price rule set a sale's price (recorded with the sale so every
/// figure can be recomputed from the log). Append new rules, never reorder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
#[serde(rename_all = "snake_case")]
pub enum PriceRule {
    /// The item's own price.
    Base,
    /// The item's price in the buyer's region.
    Region(Region),
    /// The price of the buyer's arm in a running price test.
    TestArm { test_id: PriceTestId, arm: u8 },
}

impl PriceRule {
    /// The rule's name in the API (`base`, `region`).
    pub fn name(&self) -> &'static str {
        match self {
            PriceRule::Base => "base",
            PriceRule::Region(_) => "region",
            PriceRule::TestArm { .. } => "test_arm",
        }
    }
}

/// A buyer's region: an ISO 3166-1 alpha-2 country code, two ASCII
/// capitals (`BR`, `DE`). Set by the purchase flow service, never by the
/// buyer.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Encode, Decode,
)]
#[serde(try_from = "String", into = "String")]
pub struct Region(String);

impl Region {
    pub fn parse(value: impl Into<String>) -> Result<Region, String> {
        let value = value.into();
        if value.len() == 2 && value.bytes().all(|byte| byte.is_ascii_uppercase()) {
            Ok(Region(value))
        } else {
            Err(format!(
                "a region is an ISO 3166-1 alpha-2 code, two capital letters (got `{value}`)"
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Region {
    type Error = String;
    fn try_from(value: String) -> Result<Self, String> {
        Region::parse(value)
    }
}

impl From<Region> for String {
    fn from(region: Region) -> String {
        region.0
    }
}

impl std::fmt::Display for Region {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(&self.0)
    }
}

/// Fewest and most arms of a price test.
pub const TEST_ARMS_MIN: usize = 2;
pub const TEST_ARMS_MAX: usize = 4;
/// Longest price test: 90 days.
pub const TEST_DURATION_MS_MAX: u64 = 90 * 24 * 3_600 * 1_000;

/// The arm of `arms` that `user` is assigned to in test `test_id`: the
/// first 8 bytes of SHA-256(`price-test`, test id, user id), modulo the
/// arm count. Stable forever (the storefront and every replay agree) and
/// uniform. Must never change.
pub fn test_arm(test_id: &PriceTestId, user: &UserId, arms: usize) -> usize {
    use sha2::{Digest, Sha256};
    assert!(
        (TEST_ARMS_MIN..=TEST_ARMS_MAX).contains(&arms),
        "a price test has 2 to 4 arms"
    );
    let mut hasher = Sha256::new();
    hasher.update(b"price-test\0");
    hasher.update(test_id.as_str().as_bytes());
    hasher.update(b"\0");
    hasher.update(user.as_str().as_bytes());
    let digest = hasher.finalize();
    let value = u64::from_le_bytes(digest[..8].try_into().expect("8 bytes"));
    (value % arms as u64) as usize
}

/// What a price test has counted per arm.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
pub struct ArmCounts {
    pub exposures: u64,
    pub purchases: u64,
    pub revenue: i64,
}

/// The arm with the highest revenue per exposure (the lower arm on a tie);
/// `None` while no arm has an exposure. Compared exactly, in integers.
pub fn leading_arm(arms: &[ArmCounts]) -> Option<usize> {
    let mut best: Option<usize> = None;
    for (index, arm) in arms.iter().enumerate() {
        if arm.exposures == 0 {
            continue;
        }
        let better = match best {
            None => true,
            Some(current) => {
                let leader = &arms[current];
                // revenue / exposures > leader.revenue / leader.exposures
                (arm.revenue as i128) * (leader.exposures as i128)
                    > (leader.revenue as i128) * (arm.exposures as i128)
            }
        };
        if better {
            best = Some(index);
        }
    }
    best
}

/// A price test on its own shard, which counts it and decides its winner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
pub struct PriceTest {
    pub item_id: crate::ids::ItemId,
    /// Known once the item's shard started pricing by the test.
    pub creator_id: Option<UserId>,
    pub arms: Vec<i64>,
    pub ends_at_ms: TimestampMs,
    pub apply_winner: bool,
    pub counts: Vec<ArmCounts>,
    /// Set when the test ended.
    pub outcome: Option<TestOutcome>,
}

impl PriceTest {
    /// Running: the item prices by it and it has not ended.
    pub fn is_running(&self) -> bool {
        self.creator_id.is_some() && self.outcome.is_none()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
pub struct TestOutcome {
    pub winner: Option<u8>,
    pub applied_price: Option<i64>,
}

/// Most tests one tick ends (the rest wait for the next).
pub const TESTS_ENDED_PER_TICK_MAX: usize = 1_000;
/// Most exposures one batch may report per arm.
pub const EXPOSURES_PER_BATCH_MAX: u64 = 1_000_000_000;

/// An arm's revenue per thousand exposures with its 95 % confidence
/// interval, in integer currency units (rounded down; the low end never
/// under 0). Each exposure either buys at the arm's `price` or not, so the
/// revenue per exposure is `price × p` with `p = purchases / exposures`,
/// and the interval is the normal approximation `price × (p ± 1.96 ×
/// √(p(1 − p) / exposures))`. `None` without exposures.
pub fn revenue_per_thousand_exposures(
    price: i64,
    exposures: u64,
    purchases: u64,
    revenue: i64,
) -> Option<(i64, i64, i64)> {
    if exposures == 0 {
        return None;
    }
    let n = exposures as u128;
    // More purchases than reported exposures: the rate is taken as 1.
    let s = (purchases as u128).min(n);
    let estimate = (revenue.max(0) as u128) * 1_000 / n;
    // 1000 × price × 1.96 × √(s(n − s)) / (n √n), with the square roots
    // taken at a scale of 10^6 so the ratio keeps its precision (unscaled
    // for counts so large that the precision is there anyway).
    let variance = s * (n - s);
    let (spread, root_n) = match variance.checked_mul(1_000_000) {
        Some(scaled) => (scaled.isqrt(), (n * 1_000_000).isqrt()),
        None => (variance.isqrt(), n.isqrt()),
    };
    let half_width = (price.max(0) as u128) * 1_960 * spread / (n * root_n);
    let clamp = |value: u128| i64::try_from(value).unwrap_or(i64::MAX);
    Some((
        clamp(estimate),
        clamp(estimate.saturating_sub(half_width)),
        clamp(estimate + half_width),
    ))
}

/// A regional price is at least this share of the item's base price.
pub const REGIONAL_PRICE_MIN_BASIS_POINTS: i128 = 3_000;
/// Most regions one item may price.
pub const REGIONS_PER_ITEM_MAX: usize = 250;

/// The lowest regional price allowed for an item priced `base`: 30 % of
/// it, rounded up (so a regional price is never under 30 %).
pub fn regional_price_min(base: i64) -> i64 {
    assert!(base >= 0, "price must not be negative");
    let scaled = base as i128 * REGIONAL_PRICE_MIN_BASIS_POINTS;
    i64::try_from((scaled + 9_999) / 10_000).expect("30 % of an i64 fits in i64")
}

/// An item's price rules beyond its base price, on the item's shard.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
pub struct ItemPricing {
    /// The item's price per region; other regions pay the base price.
    pub regional: BTreeMap<Region, i64>,
    /// The item's running price test, if any.
    pub test: Option<RunningTest>,
}

/// A price test as the item's shard prices it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
pub struct RunningTest {
    pub test_id: PriceTestId,
    pub arms: Vec<i64>,
    pub ends_at_ms: TimestampMs,
}

impl ItemPricing {
    /// Whether nothing beyond the base price is set.
    pub fn is_empty(&self) -> bool {
        self.regional.is_empty() && self.test.is_none()
    }

    /// The price `buyer` in `region` pays at `at_ms` for an item priced
    /// `base`, and the rule that sets it: the regional price if the item
    /// has one there (buyers with a regional price are not in a test), else
    /// the buyer's arm of a test running then, else the base price.
    pub fn price_for(
        &self,
        base: i64,
        region: Option<&Region>,
        buyer: Option<&UserId>,
        at_ms: TimestampMs,
    ) -> (i64, PriceRule) {
        if let Some((region, price)) =
            region.and_then(|region| Some((region, self.regional.get(region)?)))
        {
            return (*price, PriceRule::Region(region.clone()));
        }
        match (&self.test, buyer) {
            (Some(test), Some(buyer)) if at_ms < test.ends_at_ms => {
                let arm = test_arm(&test.test_id, buyer, test.arms.len());
                (
                    test.arms[arm],
                    PriceRule::TestArm {
                        test_id: test.test_id.clone(),
                        arm: u8::try_from(arm).expect("at most 4 arms"),
                    },
                )
            }
            _ => (base, PriceRule::Base),
        }
    }

    /// The first regional price under 30 % of `base`, if any.
    pub fn under_minimum(&self, base: i64) -> Option<(&Region, i64)> {
        let minimum = regional_price_min(base);
        self.regional
            .iter()
            .find(|(_, price)| **price < minimum)
            .map(|(region, price)| (region, *price))
    }
}

/// The pricing a primary item sale was reserved under, decided on the
/// item's shard: the rule that set its price, the floor in force for its
/// kind then, and the primary fee policy its settlement follows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
pub struct SaleTerms {
    pub rule: PriceRule,
    pub kind: ItemKind,
    /// The floor of the item's kind in force at the reservation.
    pub floor: Option<i64>,
    /// 1: the configured flat split; 2: [`split_v2`] against `floor`.
    pub fee_policy_version: u16,
}

/// The primary fee policy version whose share follows the floor.
pub const FEE_POLICY_V2: u16 = 2;
/// Creator share at the floor, in basis points.
pub const V2_SHARE_AT_FLOOR_BASIS_POINTS: i128 = 3_000;
/// Creator share from [`V2_TOP_RATIO`] times the floor up.
pub const V2_SHARE_TOP_BASIS_POINTS: i128 = 7_000;
/// The price-to-floor ratio at which the share stops growing.
pub const V2_TOP_RATIO: i128 = 6;

/// The creator's share under fee policy 2, in basis points: 30% at the
/// floor, growing linearly with the price's ratio to the floor to 70% at
/// six times the floor and above (rounded down).
pub fn share_v2_basis_points(price: i64, floor: i64) -> u32 {
    assert!(floor > 0, "policy 2 splits against a positive floor");
    assert!(price >= 0, "price must not be negative");
    let (price, floor) = (price as i128, floor as i128);
    let above = (price - floor).max(0);
    let span = V2_SHARE_TOP_BASIS_POINTS - V2_SHARE_AT_FLOOR_BASIS_POINTS;
    let grown = above * span / ((V2_TOP_RATIO - 1) * floor);
    let share = (V2_SHARE_AT_FLOOR_BASIS_POINTS + grown).min(V2_SHARE_TOP_BASIS_POINTS);
    u32::try_from(share).expect("a share in basis points fits in u32")
}

/// The split of a primary sale under fee policy 2: the creator's share
/// rounded down, the platform takes the remainder.
pub fn split_v2(price: i64, floor: i64) -> PrimarySplit {
    let basis_points = share_v2_basis_points(price, floor);
    let creator_share = i64::try_from(price as i128 * basis_points as i128 / 10_000)
        .expect("share of an i64 price fits in i64");
    PrimarySplit {
        creator_share,
        platform_fee: price - creator_share,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_share_grows_from_thirty_percent_at_the_floor_to_seventy_at_six_times() {
        assert_eq!(share_v2_basis_points(100, 100), 3_000);
        // Below the floor (an item priced before the floor rose): the floor's share.
        assert_eq!(share_v2_basis_points(50, 100), 3_000);
        assert_eq!(share_v2_basis_points(350, 100), 5_000);
        assert_eq!(share_v2_basis_points(600, 100), 7_000);
        assert_eq!(share_v2_basis_points(10_000, 100), 7_000);
        // Rounded down: 101/100 → 3,000 + 4,000 × 1 / 500 = 3,008.
        assert_eq!(share_v2_basis_points(101, 100), 3_008);
        let mut previous = 0;
        for price in 1..=1_000 {
            let share = share_v2_basis_points(price, 75);
            assert!(
                share >= previous,
                "the share never shrinks as the price grows"
            );
            previous = share;
        }
    }

    #[test]
    fn the_v2_split_adds_up_and_rounds_for_the_platform() {
        assert_eq!(
            split_v2(100, 100),
            PrimarySplit {
                creator_share: 30,
                platform_fee: 70
            }
        );
        assert_eq!(
            split_v2(999, 100),
            PrimarySplit {
                creator_share: 699,
                platform_fee: 300
            }
        );
        for (price, floor) in [
            (1, 1),
            (7, 3),
            (1_000_003, 17),
            (crate::money::AMOUNT_MAX, 5),
        ] {
            let split = split_v2(price, floor);
            assert_eq!(split.creator_share + split.platform_fee, price);
            assert!(split.creator_share <= price * 7 / 10);
        }
    }

    #[test]
    fn the_floor_in_force_is_the_latest_started_version() {
        let mut floors = PriceFloors::default();
        assert_eq!(floors.in_force(ItemKind::Accessory, 1_000), None);
        assert_eq!(floors.next_version(ItemKind::Accessory), 1);
        let floor = |price, effective_from_ms| FloorVersion {
            price,
            effective_from_ms,
        };
        floors.insert(ItemKind::Accessory, 1, floor(50, 100));
        floors.insert(ItemKind::Accessory, 2, floor(80, 500));
        // A correction for the same instant: the newer version wins.
        floors.insert(ItemKind::Accessory, 3, floor(70, 500));
        floors.insert(ItemKind::Emote, 1, floor(10, 0));
        assert_eq!(floors.in_force(ItemKind::Accessory, 99), None);
        assert_eq!(
            floors.in_force(ItemKind::Accessory, 100),
            Some((1, floor(50, 100)))
        );
        assert_eq!(
            floors.in_force(ItemKind::Accessory, 499),
            Some((1, floor(50, 100)))
        );
        assert_eq!(
            floors.in_force(ItemKind::Accessory, 500),
            Some((3, floor(70, 500)))
        );
        assert_eq!(floors.in_force(ItemKind::Body, 500), None);
        assert_eq!(floors.next_version(ItemKind::Accessory), 4);
    }

    #[test]
    fn regional_prices_apply_in_their_region_and_are_at_least_thirty_percent() {
        let brazil = Region::parse("BR").unwrap();
        let pricing = ItemPricing {
            regional: [(brazil.clone(), 40)].into(),
            test: None,
        };
        assert_eq!(
            pricing.price_for(100, Some(&brazil), None, 0),
            (40, PriceRule::Region(brazil.clone()))
        );
        let germany = Region::parse("DE").unwrap();
        assert_eq!(
            pricing.price_for(100, Some(&germany), None, 0),
            (100, PriceRule::Base)
        );
        assert_eq!(
            pricing.price_for(100, None, None, 0),
            (100, PriceRule::Base)
        );
        assert_eq!(regional_price_min(100), 30);
        assert_eq!(regional_price_min(101), 31, "rounded up");
        assert_eq!(regional_price_min(0), 0);
        assert_eq!(pricing.under_minimum(133), None);
        assert_eq!(pricing.under_minimum(134), Some((&brazil, 40)));
        for bad in ["br", "BRA", "B", "", "1A", "É"] {
            assert!(Region::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn arms_are_assigned_stably_and_uniformly() {
        let test = PriceTestId::parse("spring-test").unwrap();
        // Fixed values: the assignment must never change (the storefront
        // and every replay depend on it).
        let arms: Vec<usize> = ["alice", "bob", "carol", "dave", "erin", "frank"]
            .iter()
            .map(|user| test_arm(&test, &UserId::parse(*user).unwrap(), 3))
            .collect();
        assert_eq!(arms, ASSIGNED_ARMS);
        for count in TEST_ARMS_MIN..=TEST_ARMS_MAX {
            let mut per_arm = vec![0u32; count];
            for buyer in 0..10_000 {
                let user = UserId::parse(format!("buyer-{buyer}")).unwrap();
                per_arm[test_arm(&test, &user, count)] += 1;
            }
            let expected = 10_000 / count as u32;
            for arm in per_arm {
                // Within 2 % of 10,000 of a uniform split.
                assert!(
                    arm.abs_diff(expected) <= 200,
                    "{count} arms: {arm} vs {expected}"
                );
            }
        }
    }

    /// The arms of alice, bob, carol, dave, erin and frank in `spring-test`
    /// with three arms.
    const ASSIGNED_ARMS: [usize; 6] = [1, 1, 1, 2, 0, 2];

    #[test]
    fn the_interval_of_revenue_per_exposure_follows_the_normal_approximation() {
        // p = 0.1 over 1,000 exposures at 100: 10,000 per thousand, half-width
        // 1000 × 100 × 1.96 × √(0.09 / 1000) = 1,859.4.
        assert_eq!(
            revenue_per_thousand_exposures(100, 1_000, 100, 10_000),
            Some((10_000, 8_141, 11_859))
        );
        assert_eq!(revenue_per_thousand_exposures(100, 0, 0, 0), None);
        // No purchases: a zero-width interval at zero.
        assert_eq!(
            revenue_per_thousand_exposures(100, 50, 0, 0),
            Some((0, 0, 0))
        );
        // Every exposure bought.
        assert_eq!(
            revenue_per_thousand_exposures(7, 3, 3, 21),
            Some((7_000, 7_000, 7_000))
        );
        // Huge figures do not overflow.
        assert!(revenue_per_thousand_exposures(
            crate::money::AMOUNT_MAX,
            u64::MAX / 4,
            u64::MAX / 8,
            i64::MAX
        )
        .is_some());
    }

    #[test]
    fn the_leading_arm_earns_most_per_exposure() {
        let arm = |exposures, revenue| ArmCounts {
            exposures,
            purchases: 0,
            revenue,
        };
        assert_eq!(leading_arm(&[arm(0, 0), arm(0, 0)]), None);
        assert_eq!(leading_arm(&[arm(100, 500), arm(50, 300)]), Some(1));
        // A tie goes to the lower arm.
        assert_eq!(leading_arm(&[arm(100, 500), arm(200, 1_000)]), Some(0));
        assert_eq!(leading_arm(&[arm(0, 0), arm(10, 0)]), Some(1));
    }

    #[test]
    fn a_running_test_prices_by_arm_until_it_ends_and_a_region_wins_over_it() {
        let test_id = PriceTestId::parse("t").unwrap();
        let brazil = Region::parse("BR").unwrap();
        let pricing = ItemPricing {
            regional: [(brazil.clone(), 40)].into(),
            test: Some(RunningTest {
                test_id: test_id.clone(),
                arms: vec![90, 110],
                ends_at_ms: 1_000,
            }),
        };
        let user = UserId::parse("alice").unwrap();
        let arm = test_arm(&test_id, &user, 2);
        assert_eq!(
            pricing.price_for(100, None, Some(&user), 999),
            (
                [90, 110][arm],
                PriceRule::TestArm {
                    test_id: test_id.clone(),
                    arm: arm as u8
                }
            )
        );
        assert_eq!(
            pricing.price_for(100, None, Some(&user), 1_000),
            (100, PriceRule::Base)
        );
        assert_eq!(
            pricing.price_for(100, Some(&brazil), Some(&user), 999),
            (40, PriceRule::Region(brazil))
        );
        // Without a buyer (an anonymous view), the base price.
        assert_eq!(
            pricing.price_for(100, None, None, 999),
            (100, PriceRule::Base)
        );
    }

    #[test]
    fn kinds_keep_their_names_and_stored_indices() {
        for kind in ItemKind::all() {
            assert_eq!(ItemKind::parse(kind.as_str()), Some(kind));
            assert_eq!(ItemKind::from_stored_index(kind.stored_index()), Some(kind));
            assert!(kind.stored_index() < 128, "seven bits of the flags byte");
        }
        assert_eq!(ItemKind::Accessory.stored_index(), 0);
        assert_eq!(ItemKind::Emote.stored_index(), 4);
        assert_eq!(ItemKind::parse("hat"), None);
    }
}
