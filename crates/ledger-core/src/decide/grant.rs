//! Currency grants: the grant's home shard asks the user's shard to credit
//! the wallet, then completes with the balance it reports.

use crate::ids::{GrantId, UserId};
use crate::model::*;
use crate::money::{Account, Posting};

use super::out::Out;
use super::reject;

/// `Grant` accepted: asks the user's shard for the credit.
pub(super) fn start(out: &mut Out<'_>, grant_id: &GrantId, user_id: &UserId, amount: i64) {
    let to = out.shard_of(&keys::user(user_id));
    out.send(
        to,
        Message::CreditGrant {
            grant_id: grant_id.clone(),
            user_id: user_id.clone(),
            amount,
        },
    );
}

/// On the user's shard: credits the wallet unless the balance would grow
/// out of range. Returns the answer for the grant's shard.
pub(super) fn credit_wallet(
    out: &mut Out<'_>,
    grant_id: &GrantId,
    user_id: &UserId,
    amount: i64,
) -> Message {
    let wallet = out.state.balance(&Account::Wallet(user_id.clone()));
    let result = match wallet
        .checked_add(amount)
        .filter(|total| *total <= i64::MAX / 4)
    {
        None => Err(reject(
            RejectionCode::ValidationFailed,
            format!("balance of {user_id} would overflow"),
        )),
        Some(balance_after) => {
            out.push(Event::CurrencyGranted {
                grant_id: grant_id.clone(),
                user_id: user_id.clone(),
                amount,
                balance_after,
                postings: vec![
                    Posting::new(Account::Issuance, -amount),
                    Posting::new(Account::Wallet(user_id.clone()), amount),
                ],
            });
            Ok(balance_after)
        }
    };
    Message::GrantCredited {
        grant_id: grant_id.clone(),
        result,
        position: out.next_position(),
    }
}

/// Back on the grant's shard: completes the grant.
pub(super) fn credited(
    out: &mut Out<'_>,
    grant_id: &GrantId,
    result: &Result<i64, Rejection>,
    position: ShardPosition,
) {
    let result = result
        .clone()
        .map(|balance_after| Success::Granted { balance_after });
    out.complete(&keys::grant(grant_id), result, vec![position]);
}
