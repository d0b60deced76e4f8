//! `purchases`: the historical benchmark. Buyers funded for 50 unlimited
//! items at 10 each; purchase n is buyer n mod buyers buying item
//! n div buyers, so every purchase should succeed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use ledger_core::{Command, ItemDefinition, PurchaseTarget, PRIMARY_FEE_POLICY_V1};
use serde_json::Map;

use super::driver::drive;
use super::reader::ItemRead;
use super::{
    check_until, grants, item_id, purchase_id, setup, user_id, wait_until, Context, Outcome,
};

/// Items each buyer can buy once: purchases are spread over buyers × items.
pub const ITEMS: usize = 50;
pub const PRICE: i64 = 10;

pub fn buyers_for(purchases: usize) -> usize {
    purchases.div_ceil(ITEMS).max(1)
}

/// What the read models must show after a run, derived from the answers.
#[derive(Debug, PartialEq, Eq)]
pub struct Expected {
    /// Balance of each buyer.
    pub balances: Vec<i64>,
    /// Copies sold of each item.
    pub sold: Vec<u64>,
    /// The creator's lifetime earnings (70% of each price, rounded down).
    pub creator_lifetime: i64,
}

impl Expected {
    /// `successes[n]`: whether purchase n was answered 201.
    pub fn from_successes(successes: &[bool], buyers: usize) -> Expected {
        let mut balances = vec![PRICE * ITEMS as i64; buyers];
        let mut sold = vec![0u64; ITEMS];
        let mut creator_lifetime = 0;
        for (n, ok) in successes.iter().enumerate() {
            if *ok {
                balances[n % buyers] -= PRICE;
                sold[n / buyers] += 1;
                creator_lifetime += PRIMARY_FEE_POLICY_V1.split(PRICE).creator_share;
            }
        }
        Expected {
            balances,
            sold,
            creator_lifetime,
        }
    }
}

/// What the read models showed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub balances: Vec<i64>,
    pub items: Vec<Option<ItemRead>>,
    pub creator_lifetime: i64,
}

/// Every disagreement between the answers and the read models.
pub fn compare(
    expected: &Expected,
    observed: &Observed,
    buyer: impl Fn(usize) -> String,
) -> Vec<String> {
    let mut violations = Vec::new();
    for (index, (wanted, found)) in expected.balances.iter().zip(&observed.balances).enumerate() {
        if wanted != found {
            violations.push(format!(
                "{}: balance is {found}, expected {wanted}",
                buyer(index)
            ));
        }
    }
    for (index, (wanted, found)) in expected.sold.iter().zip(&observed.items).enumerate() {
        if found.map(|item| item.sold) != Some(*wanted) {
            violations.push(format!(
                "item {index}: sold is {:?}, expected {wanted}",
                found.map(|item| item.sold)
            ));
        }
    }
    if observed.creator_lifetime != expected.creator_lifetime {
        violations.push(format!(
            "creator: lifetime earnings are {}, expected {}",
            observed.creator_lifetime, expected.creator_lifetime
        ));
    }
    violations
}

pub async fn run(context: &Context) -> Result<Outcome, String> {
    let options = &context.options;
    let tag = context.tag.clone();
    let requests = options.requests();
    let buyers = buyers_for(requests);
    let users: Vec<usize> = (0..buyers).collect();
    setup(
        context,
        "grants",
        grants(context, &users, PRICE * ITEMS as i64),
    )
    .await?;
    let item_name = |item: usize| format!("bench-{tag}-i-{item}");
    let creator = format!("bench-{tag}-creator");
    let items = (0..ITEMS)
        .map(|item| {
            Command::PublishItem(ItemDefinition {
                item_id: item_id(&item_name(item)),
                creator_id: user_id(&creator),
                name: "bench item".into(),
                price: PRICE,
                supply: None,
                max_per_user: None,
                starts_at_ms: None,
                ends_at_ms: None,
                resellable: false,
                kind: Default::default(),
            })
        })
        .collect();
    setup(context, "items", items).await?;

    let outcomes: Arc<Vec<AtomicBool>> =
        Arc::new((0..requests).map(|_| AtomicBool::new(false)).collect());
    let phase = drive(&options.pace(), context.progress("purchases"), {
        let (target, tag, outcomes) = (context.target.clone(), tag.clone(), outcomes.clone());
        move |n| {
            let (target, outcomes) = (target.clone(), outcomes.clone());
            let command = Command::Purchase {
                purchase_id: purchase_id(&format!("bench-{tag}-p-{n}")),
                buyer_id: user_id(&format!("bench-{tag}-b-{}", n % buyers)),
                target: PurchaseTarget::Item(item_id(&format!("bench-{tag}-i-{}", n / buyers))),
                expected_price: PRICE,
                region: None,
            };
            async move {
                let answer = target.submit(command).await;
                outcomes[n].store(answer.is_ok(), Ordering::Relaxed);
                answer.code
            }
        }
    })
    .await;

    let successes: Vec<bool> = outcomes.iter().map(|o| o.load(Ordering::Relaxed)).collect();
    let expected = Expected::from_successes(&successes, buyers);
    let reader = context.reader();
    let deadline = context.check_deadline();
    wait_until(deadline, || async {
        reader.earnings(&creator).await.map(|e| e.lifetime).ok() == Some(expected.creator_lifetime)
    })
    .await;
    let buyer_names: Vec<String> = users.iter().map(|user| context.user(*user)).collect();
    let violations = check_until(
        deadline,
        || async {
            let balances = reader
                .balances(&buyer_names, super::CHECK_READ_PARALLELISM)
                .await?;
            let mut items = Vec::with_capacity(ITEMS);
            for item in 0..ITEMS {
                items.push(reader.item(&item_name(item)).await?);
            }
            let creator_lifetime = reader.earnings(&creator).await?.lifetime;
            Ok(Observed {
                balances,
                items,
                creator_lifetime,
            })
        },
        |observed| compare(&expected, observed, |index| buyer_names[index].clone()),
    )
    .await;
    Ok(Outcome {
        phase,
        facts: Map::new(),
        notes: Vec::new(),
        invariants_checked:
            "every balance, sold count and the creator's earnings match the answers".into(),
        violations,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_state_follows_the_successful_answers() {
        // 4 purchases over 2 buyers: n=0 (buyer 0, item 0), n=1 (buyer 1, item 0),
        // n=2 (buyer 0, item 1), n=3 (buyer 1, item 1); n=1 failed.
        let expected = Expected::from_successes(&[true, false, true, true], 2);
        let funded = PRICE * ITEMS as i64;
        assert_eq!(expected.balances, vec![funded - 2 * PRICE, funded - PRICE]);
        assert_eq!(&expected.sold[..2], &[1, 2]);
        assert!(expected.sold[2..].iter().all(|sold| *sold == 0));
        assert_eq!(expected.creator_lifetime, 3 * 7);
    }

    #[test]
    fn buyers_cover_the_purchases() {
        assert_eq!(buyers_for(1_000), 20);
        assert_eq!(buyers_for(1), 1);
    }

    #[test]
    fn the_comparison_accepts_agreement_and_reports_each_disagreement() {
        let expected = Expected::from_successes(&[true, true], 2);
        let item = |sold| {
            Some(ItemRead {
                sold,
                remaining: None,
            })
        };
        let mut observed = Observed {
            balances: expected.balances.clone(),
            items: (0..ITEMS)
                .map(|i| item(if i == 0 { 2 } else { 0 }))
                .collect(),
            creator_lifetime: 14,
        };
        let name = |index: usize| format!("b-{index}");
        assert_eq!(compare(&expected, &observed, name), Vec::<String>::new());
        observed.balances[1] += PRICE; // the purchase was answered 201 but not debited
        observed.items[0] = None;
        observed.creator_lifetime = 21;
        assert_eq!(
            compare(&expected, &observed, name),
            vec![
                "b-1: balance is 500, expected 490".to_string(),
                "item 0: sold is None, expected 2".to_string(),
                "creator: lifetime earnings are 21, expected 14".to_string(),
            ]
        );
    }
}
