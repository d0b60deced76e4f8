//! `drop`: N funded buyers race for one Limited of supply S. Every buyer
//! sends one purchase (or `--attempts-per-buyer`); request n is buyer
//! n mod N. Measures the time from the first request to the answer of the
//! S-th success, and checks that exactly S serials were sold, each once,
//! to the buyers the answers name, and that the money adds up.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use ledger_core::{Command, ItemDefinition, PurchaseTarget, PRIMARY_FEE_POLICY_V1};
use serde_json::{json, Map};
use tokio::time::Instant;

use super::driver::drive;
use super::reader::{EarningsRead, ItemRead};
use super::target::Code;
use super::{
    check_until, grants, item_id, purchase_id, setup, user_id, wait_until, Context, Outcome,
};

pub const DROP_PRICE: i64 = 50;

/// The answer to one purchase of the drop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DropAnswer {
    pub buyer: usize,
    pub code: Code,
    pub serial: Option<u32>,
}

/// The drop as set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DropSetup {
    pub supply: u32,
    pub price: i64,
    pub buyers: usize,
    pub funded_per_buyer: i64,
}

/// Checks the answers alone: never more than the supply, serials within
/// 1..=supply and each sold once, and a complete run (every request
/// answered without an error, at least as many requests as the supply)
/// sells exactly the supply; a `sold_out` answer means everything was sold.
pub fn check_answers(setup: &DropSetup, answers: &[DropAnswer], complete: bool) -> Vec<String> {
    let mut violations = Vec::new();
    let successes: Vec<&DropAnswer> = answers.iter().filter(|a| a.code.is_ok()).collect();
    let sold = successes.len() as u64;
    let supply = u64::from(setup.supply);
    if sold > supply {
        violations.push(format!(
            "oversold: {sold} purchases succeeded for a supply of {supply}"
        ));
    }
    let sold_out_answers = answers
        .iter()
        .filter(|a| a.code.as_str() == "sold_out")
        .count();
    if sold < supply && sold_out_answers > 0 {
        violations.push(format!(
            "{sold_out_answers} purchases were refused sold_out while only {sold} of {supply} serials were sold"
        ));
    } else if sold < supply && complete && answers.len() as u64 >= supply {
        violations.push(format!(
            "only {sold} of {supply} serials were sold although {} purchases were answered",
            answers.len()
        ));
    }
    let mut buyers_by_serial: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
    for answer in &successes {
        match answer.serial {
            None => violations.push(format!(
                "a purchase by buyer {} succeeded without a serial",
                answer.buyer
            )),
            Some(serial) => buyers_by_serial
                .entry(serial)
                .or_default()
                .push(answer.buyer),
        }
    }
    for (serial, buyers) in &buyers_by_serial {
        if !(1..=setup.supply).contains(serial) {
            violations.push(format!("serial {serial} is outside 1..={}", setup.supply));
        }
        if buyers.len() > 1 {
            violations.push(format!(
                "serial {serial} was sold {} times (buyers {buyers:?})",
                buyers.len()
            ));
        }
    }
    violations
}

/// What the read models showed after the drop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DropObserved {
    pub item: Option<ItemRead>,
    /// (serial, owner) from the owners list.
    pub owners: Vec<(u32, String)>,
    /// Every buyer's wallet, by buyer index.
    pub balances: Vec<i64>,
    pub creator: EarningsRead,
}

/// Compares the read models with the answers: the item's `sold` and
/// `remaining`, one owner per sold serial and the one the answer named,
/// every buyer's balance (funded − price × serials bought), their total,
/// and the creator's 70% of each sale.
pub fn compare(
    setup: &DropSetup,
    answers: &[DropAnswer],
    observed: &DropObserved,
    buyer: impl Fn(usize) -> String,
) -> Vec<String> {
    let mut violations = Vec::new();
    let successes: Vec<&DropAnswer> = answers.iter().filter(|a| a.code.is_ok()).collect();
    let sold = successes.len() as u64;
    let supply = u64::from(setup.supply);
    match observed.item {
        None => violations.push("the item is missing from the read models".to_string()),
        Some(item) => {
            if item.sold != sold {
                violations.push(format!(
                    "item: sold is {}, the answers sold {sold}",
                    item.sold
                ));
            }
            let remaining = supply.saturating_sub(sold);
            if item.remaining != Some(remaining) {
                violations.push(format!(
                    "item: remaining is {:?}, expected {remaining}",
                    item.remaining
                ));
            }
        }
    }
    let mut owner_by_serial: BTreeMap<u32, &str> = BTreeMap::new();
    for (serial, owner) in &observed.owners {
        if owner_by_serial.insert(*serial, owner).is_some() {
            violations.push(format!("serial {serial} has more than one owner"));
        }
    }
    if owner_by_serial.len() as u64 != sold {
        violations.push(format!(
            "the owners list has {} distinct serials, the answers sold {sold}",
            owner_by_serial.len()
        ));
    }
    for answer in &successes {
        let Some(serial) = answer.serial else {
            continue;
        };
        let wanted = buyer(answer.buyer);
        match owner_by_serial.get(&serial) {
            Some(owner) if *owner == wanted => {}
            found => violations.push(format!(
                "serial {serial}: owner is {found:?}, the answer sold it to {wanted}"
            )),
        }
    }
    let mut bought = vec![0i64; setup.buyers];
    for answer in &successes {
        bought[answer.buyer] += 1;
    }
    for (index, (count, balance)) in bought.iter().zip(&observed.balances).enumerate() {
        let wanted = setup.funded_per_buyer - count * setup.price;
        if *balance != wanted {
            violations.push(format!(
                "{}: balance is {balance}, expected {wanted}",
                buyer(index)
            ));
        }
    }
    let total: i64 = observed.balances.iter().sum();
    let wanted_total = setup.funded_per_buyer * setup.buyers as i64 - sold as i64 * setup.price;
    if total != wanted_total {
        violations.push(format!(
            "buyers' total balance is {total}, expected funded − sold × price = {wanted_total}"
        ));
    }
    let creator_share = PRIMARY_FEE_POLICY_V1.split(setup.price).creator_share;
    let wanted_lifetime = sold as i64 * creator_share;
    if observed.creator.lifetime != wanted_lifetime
        || observed.creator.pending + observed.creator.released != wanted_lifetime
    {
        violations.push(format!(
            "creator: earnings are pending {} + released {} (lifetime {}), expected {wanted_lifetime}",
            observed.creator.pending, observed.creator.released, observed.creator.lifetime
        ));
    }
    violations
}

pub async fn run(context: &Context) -> Result<Outcome, String> {
    let options = &context.options;
    let tag = context.tag.clone();
    let drop_setup = DropSetup {
        supply: options.supply(),
        price: DROP_PRICE,
        buyers: options.buyers(),
        funded_per_buyer: DROP_PRICE * options.attempts_per_buyer() as i64,
    };
    let item = format!("bench-{tag}-drop");
    let creator = format!("bench-{tag}-drop-creator");
    let publish = Command::PublishItem(ItemDefinition {
        item_id: item_id(&item),
        creator_id: user_id(&creator),
        name: "bench drop".into(),
        price: DROP_PRICE,
        supply: Some(drop_setup.supply),
        max_per_user: None,
        starts_at_ms: None,
        ends_at_ms: None,
        resellable: false,
        kind: Default::default(),
    });
    setup(context, "limited item publications", vec![publish]).await?;
    let users: Vec<usize> = (0..drop_setup.buyers).collect();
    setup(
        context,
        "grants",
        grants(context, &users, drop_setup.funded_per_buyer),
    )
    .await?;

    let requests = options.requests();
    let answers: Arc<Mutex<Vec<Option<DropAnswer>>>> = Arc::new(Mutex::new(vec![None; requests]));
    let successes = Arc::new(AtomicU64::new(0));
    let sold_out_at: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
    let phase = drive(&options.pace(), context.progress("drop"), {
        let (target, answers, successes, sold_out_at) = (
            context.target.clone(),
            answers.clone(),
            successes.clone(),
            sold_out_at.clone(),
        );
        let (tag, item, supply, buyers) = (
            tag.clone(),
            item.clone(),
            drop_setup.supply,
            drop_setup.buyers,
        );
        move |n| {
            let buyer = n % buyers;
            let command = Command::Purchase {
                purchase_id: purchase_id(&format!("bench-{tag}-p-{n}")),
                buyer_id: user_id(&format!("bench-{tag}-b-{buyer}")),
                target: PurchaseTarget::Item(item_id(&item)),
                expected_price: DROP_PRICE,
                region: None,
            };
            let (target, answers, successes, sold_out_at) = (
                target.clone(),
                answers.clone(),
                successes.clone(),
                sold_out_at.clone(),
            );
            async move {
                let answer = target.submit(command).await;
                if answer.is_ok()
                    && successes.fetch_add(1, Ordering::Relaxed) + 1 == u64::from(supply)
                {
                    *sold_out_at.lock().expect("sold-out lock") = Some(Instant::now());
                }
                answers.lock().expect("answers lock")[n] = Some(DropAnswer {
                    buyer,
                    code: answer.code,
                    serial: answer.accepted.and_then(|accepted| accepted.serial),
                });
                answer.code
            }
        }
    })
    .await;

    let answers: Vec<DropAnswer> = std::mem::take(&mut *answers.lock().expect("answers lock"))
        .into_iter()
        .flatten()
        .collect();
    let complete = phase.sent == requests
        && phase.count_where(Code::is_error) == 0
        && answers.len() == requests;
    let mut violations = check_answers(&drop_setup, &answers, complete);
    let sold = answers.iter().filter(|a| a.code.is_ok()).count();
    let time_to_sell_out = sold_out_at
        .lock()
        .expect("sold-out lock")
        .map(|at| at.saturating_duration_since(phase.started));
    let mut facts = Map::new();
    facts.insert("sold".into(), json!(sold));
    facts.insert(
        "time_to_sell_out_ms".into(),
        json!(time_to_sell_out.map(|t| t.as_secs_f64() * 1_000.0)),
    );
    let notes = vec![match time_to_sell_out {
        Some(time) => format!(
            "drop: sold out {} serials in {:.3} s (first request to the {}th success), {} buyers",
            drop_setup.supply,
            time.as_secs_f64(),
            drop_setup.supply,
            drop_setup.buyers
        ),
        None => format!(
            "drop: not sold out: {sold} of {} serials sold",
            drop_setup.supply
        ),
    }];

    let reader = context.reader();
    let deadline = context.check_deadline();
    let buyer_names: Vec<String> = users.iter().map(|user| context.user(*user)).collect();
    let (reader, item, creator, buyer_names, answers) =
        (&reader, &item, &creator, &buyer_names, &answers);
    wait_until(deadline, || async move {
        reader.item(item).await.ok().flatten().map(|i| i.sold) == Some(sold as u64)
    })
    .await;
    violations.extend(
        check_until(
            deadline,
            || async move {
                Ok(DropObserved {
                    item: reader.item(item).await?,
                    owners: reader.owners(item).await?,
                    balances: reader
                        .balances(buyer_names, super::CHECK_READ_PARALLELISM)
                        .await?,
                    creator: reader.earnings(creator).await?,
                })
            },
            |observed| {
                compare(&drop_setup, answers, observed, |index| {
                    buyer_names[index].clone()
                })
            },
        )
        .await,
    );
    Ok(Outcome {
        phase,
        facts,
        notes,
        invariants_checked: format!(
            "{sold} serials sold, each once, to the buyers the answers name; item sold and remaining, owners, every buyer's balance and the creator's earnings match"
        ),
        violations: super::bounded(violations),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SETUP: DropSetup = DropSetup {
        supply: 3,
        price: 50,
        buyers: 5,
        funded_per_buyer: 50,
    };

    fn answer(buyer: usize, code: &str, serial: Option<u32>) -> DropAnswer {
        DropAnswer {
            buyer,
            code: Code::from_text(code),
            serial,
        }
    }

    /// Five buyers, supply three: buyers 0, 2, 4 got serials 2, 1, 3.
    fn sold_out_answers() -> Vec<DropAnswer> {
        vec![
            answer(0, "ok", Some(2)),
            answer(1, "sold_out", None),
            answer(2, "ok", Some(1)),
            answer(3, "sold_out", None),
            answer(4, "ok", Some(3)),
        ]
    }

    fn name(index: usize) -> String {
        format!("b-{index}")
    }

    fn consistent_reads() -> DropObserved {
        DropObserved {
            item: Some(ItemRead {
                sold: 3,
                remaining: Some(0),
            }),
            owners: vec![(1, name(2)), (2, name(0)), (3, name(4))],
            balances: vec![0, 50, 0, 50, 0],
            creator: EarningsRead {
                pending: 105,
                released: 0,
                lifetime: 105,
            },
        }
    }

    #[test]
    fn a_clean_drop_passes_both_checks() {
        assert_eq!(
            check_answers(&SETUP, &sold_out_answers(), true),
            Vec::<String>::new()
        );
        assert_eq!(
            compare(&SETUP, &sold_out_answers(), &consistent_reads(), name),
            Vec::<String>::new()
        );
    }

    #[test]
    fn overselling_and_duplicate_serials_are_reported() {
        let mut answers = sold_out_answers();
        answers[1] = answer(1, "ok", Some(2));
        let violations = check_answers(&SETUP, &answers, true);
        assert!(
            violations.iter().any(|v| v.starts_with("oversold: 4")),
            "{violations:?}"
        );
        assert!(
            violations
                .iter()
                .any(|v| v.starts_with("serial 2 was sold 2 times")),
            "{violations:?}"
        );
        let mut answers = sold_out_answers();
        answers[4] = answer(4, "ok", Some(4));
        assert_eq!(
            check_answers(&SETUP, &answers, true),
            vec!["serial 4 is outside 1..=3".to_string()]
        );
    }

    #[test]
    fn sold_out_before_the_supply_is_gone_is_reported() {
        let mut answers = sold_out_answers();
        answers[4] = answer(4, "sold_out", None);
        assert_eq!(
            check_answers(&SETUP, &answers, true),
            vec![
                "3 purchases were refused sold_out while only 2 of 3 serials were sold".to_string()
            ]
        );
    }

    #[test]
    fn read_models_that_disagree_with_the_answers_are_reported() {
        let mut reads = consistent_reads();
        reads.item = Some(ItemRead {
            sold: 2,
            remaining: Some(1),
        });
        reads.owners = vec![(1, name(2)), (2, name(1)), (2, name(0))];
        reads.balances[1] = 0; // debited without a serial
        reads.creator.pending = 70;
        reads.creator.lifetime = 70;
        let violations = compare(&SETUP, &sold_out_answers(), &reads, name);
        let expected = [
            "item: sold is 2, the answers sold 3",
            "item: remaining is Some(1), expected 0",
            "serial 2 has more than one owner",
            "the owners list has 2 distinct serials, the answers sold 3",
            "serial 3: owner is None, the answer sold it to b-4",
            "b-1: balance is 0, expected 50",
            "buyers' total balance is 50, expected funded − sold × price = 100",
            "creator: earnings are pending 70 + released 0 (lifetime 70), expected 105",
        ];
        assert_eq!(violations, expected, "{violations:#?}");
    }
}
