//! Money: integer currency units and double-entry postings.
//!
//! Every event that moves currency carries a set of postings whose amounts
//! sum to zero. Only `Issuance` may go negative (it is where granted currency
//! comes from); `Clearing` holds money in flight between shards.

use bincode::{Decode, Encode};
use serde::{Deserialize, Serialize};

use crate::ids::UserId;

/// Largest single amount (price, grant) accepted: 10^12 units. Keeps every
/// sum far from `i64` overflow.
pub const AMOUNT_MAX: i64 = 1_000_000_000_000;

/// An account of the ledger.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Encode, Decode,
)]
pub enum Account {
    /// Source of granted currency; the only account that may go negative.
    Issuance,
    /// A user's spendable balance.
    Wallet(UserId),
    /// A creator's earnings held in escrow until released.
    Pending(UserId),
    /// Platform fees.
    Fees,
    /// Money in flight between shards (debited on one, not yet credited on another).
    Clearing,
}

/// One side of a movement: `amount` is added to `account` (negative = taken out).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
pub struct Posting {
    pub account: Account,
    pub amount: i64,
}

impl Posting {
    pub fn new(account: Account, amount: i64) -> Self {
        Self { account, amount }
    }
}

/// True when the postings sum to zero (without overflow).
pub fn is_balanced(postings: &[Posting]) -> bool {
    let mut sum: i64 = 0;
    for posting in postings {
        match sum.checked_add(posting.amount) {
            Some(next) => sum = next,
            None => return false,
        }
    }
    sum == 0
}

/// Primary sale split, versioned and recorded in each sale event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
pub struct PrimaryFeePolicy {
    pub version: u16,
    /// Creator share in basis points (1/10,000).
    pub creator_share_basis_points: u32,
}

/// Resale split, versioned and recorded in each resale event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
pub struct ResaleFeePolicy {
    pub version: u16,
    pub seller_share_basis_points: u32,
    pub royalty_basis_points: u32,
}

pub const PRIMARY_FEE_POLICY_V1: PrimaryFeePolicy = PrimaryFeePolicy {
    version: 1,
    creator_share_basis_points: 7_000,
};

pub const RESALE_FEE_POLICY_V1: ResaleFeePolicy = ResaleFeePolicy {
    version: 1,
    seller_share_basis_points: 7_000,
    royalty_basis_points: 1_000,
};

const BASIS_POINTS_TOTAL: i128 = 10_000;

fn share_rounded_down(price: i64, basis_points: u32) -> i64 {
    let share = (price as i128 * basis_points as i128) / BASIS_POINTS_TOTAL;
    i64::try_from(share).expect("share of an i64 price fits in i64")
}

/// The division of a primary sale price.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
pub struct PrimarySplit {
    pub creator_share: i64,
    pub platform_fee: i64,
}

/// The division of a resale price.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
pub struct ResaleSplit {
    pub seller_share: i64,
    pub royalty: i64,
    pub platform_fee: i64,
}

impl PrimaryFeePolicy {
    /// Creator share rounded down; the platform takes the remainder.
    pub fn split(&self, price: i64) -> PrimarySplit {
        assert!(price >= 0, "price must not be negative");
        let creator_share = share_rounded_down(price, self.creator_share_basis_points);
        PrimarySplit {
            creator_share,
            platform_fee: price - creator_share,
        }
    }
}

impl ResaleFeePolicy {
    /// Seller share and royalty rounded down; the platform takes the remainder.
    pub fn split(&self, price: i64) -> ResaleSplit {
        assert!(price >= 0, "price must not be negative");
        let seller_share = share_rounded_down(price, self.seller_share_basis_points);
        let royalty = share_rounded_down(price, self.royalty_basis_points);
        ResaleSplit {
            seller_share,
            royalty,
            platform_fee: price - seller_share - royalty,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn primary_split_rounds_for_the_platform() {
        assert_eq!(
            PRIMARY_FEE_POLICY_V1.split(100),
            PrimarySplit {
                creator_share: 70,
                platform_fee: 30
            }
        );
        assert_eq!(
            PRIMARY_FEE_POLICY_V1.split(1),
            PrimarySplit {
                creator_share: 0,
                platform_fee: 1
            }
        );
        assert_eq!(
            PRIMARY_FEE_POLICY_V1.split(15),
            PrimarySplit {
                creator_share: 10,
                platform_fee: 5
            }
        );
    }

    #[test]
    fn resale_split_rounds_for_the_platform() {
        assert_eq!(
            RESALE_FEE_POLICY_V1.split(100),
            ResaleSplit {
                seller_share: 70,
                royalty: 10,
                platform_fee: 20
            }
        );
        assert_eq!(
            RESALE_FEE_POLICY_V1.split(9),
            ResaleSplit {
                seller_share: 6,
                royalty: 0,
                platform_fee: 3
            }
        );
    }

    #[test]
    fn splits_always_add_up() {
        for price in [1, 2, 3, 7, 99, 1_001, AMOUNT_MAX] {
            let primary = PRIMARY_FEE_POLICY_V1.split(price);
            assert_eq!(primary.creator_share + primary.platform_fee, price);
            let resale = RESALE_FEE_POLICY_V1.split(price);
            assert_eq!(
                resale.seller_share + resale.royalty + resale.platform_fee,
                price
            );
        }
    }

    #[test]
    fn balance_check_detects_imbalance_and_overflow() {
        let user = UserId::parse("u").unwrap();
        assert!(is_balanced(&[
            Posting::new(Account::Issuance, -5),
            Posting::new(Account::Wallet(user.clone()), 5)
        ]));
        assert!(!is_balanced(&[Posting::new(Account::Wallet(user), 5)]));
        assert!(!is_balanced(&[
            Posting::new(Account::Fees, i64::MAX),
            Posting::new(Account::Fees, 1)
        ]));
    }
}
