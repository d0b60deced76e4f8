//! `catalogue`: a storefront. `--items` unlimited items of 10 creators with
//! Zipf popularity (`--zipf-s`), one bundle per 20 items, and buyers whose
//! activity is Zipf-distributed too. `--bundle-percent` of the requests buy
//! a bundle. A buyer owns each item at most once, so `already_owned` is an
//! expected rejection. The check derives, from the successful answers,
//! every buyer's balance, every creator's 70% and every item's copies
//! owned, and checks conservation: buyers' balances + creators' earnings
//! (pending + released) + platform fees (the remainders) = total granted.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use ledger_core::{Command, ItemDefinition, PurchaseTarget, PRIMARY_FEE_POLICY_V1};
use serde_json::{json, Map};

use super::driver::drive;
use super::random::{SplitMix64, Zipf};
use super::reader::EarningsRead;
use super::{
    bundle_id, check_until, grants, item_id, purchase_id, setup, user_id, wait_until, Context,
    Outcome,
};

pub const CREATORS: usize = 10;
pub const ITEM_PRICE_MIN: i64 = 5;
pub const ITEM_PRICE_MAX: i64 = 500;
/// One bundle per this many items.
pub const ITEMS_PER_BUNDLE: usize = 20;
pub const BUNDLE_SIZE_MIN: usize = 2;
pub const BUNDLE_SIZE_MAX: usize = 5;
/// Streams of the seed kept apart from the request stream.
const CATALOGUE_STREAM: u64 = 0xC0FF_EE00_0000_0001;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogueItem {
    pub creator: usize,
    pub price: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogueBundle {
    pub creator: usize,
    pub items: Vec<usize>,
    pub price: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Catalogue {
    pub items: Vec<CatalogueItem>,
    pub bundles: Vec<CatalogueBundle>,
}

impl Catalogue {
    /// Item k belongs to creator k mod 10 and costs 5..=500; bundle j is
    /// 2..=5 distinct items of creator j mod 10 at 80% of their sum.
    pub fn generate(items: usize, with_bundles: bool, seed: u64) -> Catalogue {
        let mut random = SplitMix64::new(seed ^ CATALOGUE_STREAM);
        let items: Vec<CatalogueItem> = (0..items)
            .map(|k| CatalogueItem {
                creator: k % CREATORS,
                price: random.between(ITEM_PRICE_MIN, ITEM_PRICE_MAX),
            })
            .collect();
        let bundle_count = if with_bundles {
            (items.len() / ITEMS_PER_BUNDLE).max(1)
        } else {
            0
        };
        let bundles = (0..bundle_count)
            .map(|j| {
                let creator = j % CREATORS.min(items.len());
                let mut owned: Vec<usize> = (creator..items.len()).step_by(CREATORS).collect();
                let size = (random.between(BUNDLE_SIZE_MIN as i64, BUNDLE_SIZE_MAX as i64)
                    as usize)
                    .min(owned.len());
                // Partial Fisher-Yates: the first `size` are a uniform sample.
                for slot in 0..size {
                    let pick = slot + random.below((owned.len() - slot) as u64) as usize;
                    owned.swap(slot, pick);
                }
                owned.truncate(size);
                owned.sort_unstable();
                let sum: i64 = owned.iter().map(|k| items[*k].price).sum();
                CatalogueBundle {
                    creator,
                    items: owned,
                    price: (sum * 8 / 10).max(1),
                }
            })
            .collect();
        Catalogue { items, bundles }
    }

    /// The most one buyer can spend: every item and every bundle once.
    pub fn spend_max(&self) -> i64 {
        self.items.iter().map(|i| i.price).sum::<i64>()
            + self.bundles.iter().map(|b| b.price).sum::<i64>()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Wanted {
    Item(usize),
    Bundle(usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub buyer: usize,
    pub wanted: Wanted,
}

/// Request n of a run, from (seed, n) alone.
pub struct Planner {
    seed: u64,
    buyers: Zipf,
    items: Zipf,
    bundles: Option<Zipf>,
    bundle_percent: u32,
}

impl Planner {
    pub fn new(
        seed: u64,
        buyers: usize,
        catalogue: &Catalogue,
        exponent: f64,
        bundle_percent: u32,
    ) -> Result<Planner, String> {
        Ok(Planner {
            seed,
            buyers: Zipf::new(buyers as u64, exponent)?,
            items: Zipf::new(catalogue.items.len() as u64, exponent)?,
            bundles: if catalogue.bundles.is_empty() {
                None
            } else {
                Some(Zipf::new(catalogue.bundles.len() as u64, exponent)?)
            },
            bundle_percent,
        })
    }

    pub fn request(&self, n: usize) -> Request {
        let mut random = SplitMix64::for_request(self.seed, n as u64);
        let buyer = self.buyers.sample(&mut random) as usize - 1;
        let wanted = match &self.bundles {
            Some(bundles) if random.percent(self.bundle_percent) => {
                Wanted::Bundle(bundles.sample(&mut random) as usize - 1)
            }
            _ => Wanted::Item(self.items.sample(&mut random) as usize - 1),
        };
        Request { buyer, wanted }
    }
}

/// A successful purchase, as answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sale {
    pub buyer: usize,
    pub wanted: Wanted,
    pub price: i64,
    /// Items the purchase granted (the item, or the bundle's items the buyer lacked).
    pub granted: Vec<usize>,
}

/// Checks the answers alone: the price is the catalogue's, a bundle grants
/// a non-empty subset of its items, and no buyer is granted an item twice.
pub fn check_sales(catalogue: &Catalogue, sales: &[Sale]) -> Vec<String> {
    let mut violations = Vec::new();
    let mut owned: BTreeSet<(usize, usize)> = BTreeSet::new();
    for sale in sales {
        let (price, allowed): (i64, Vec<usize>) = match sale.wanted {
            Wanted::Item(k) => (catalogue.items[k].price, vec![k]),
            Wanted::Bundle(j) => (
                catalogue.bundles[j].price,
                catalogue.bundles[j].items.clone(),
            ),
        };
        if sale.price != price {
            violations.push(format!(
                "{:?} sold to buyer {} at {}, the catalogue price is {price}",
                sale.wanted, sale.buyer, sale.price
            ));
        }
        if sale.granted.is_empty() {
            violations.push(format!(
                "{:?} sold to buyer {} granted nothing",
                sale.wanted, sale.buyer
            ));
        }
        for item in &sale.granted {
            if !allowed.contains(item) {
                violations.push(format!(
                    "{:?} sold to buyer {} granted item {item}, which it does not contain",
                    sale.wanted, sale.buyer
                ));
            }
            if !owned.insert((sale.buyer, *item)) {
                violations.push(format!(
                    "buyer {} was granted item {item} twice",
                    sale.buyer
                ));
            }
        }
    }
    violations
}

/// The read-model state the answers imply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    /// By funded buyer, in the order given.
    pub balances: Vec<i64>,
    /// Lifetime earnings of each creator: 70% (rounded down) of each sale.
    pub creator_lifetime: Vec<i64>,
    /// Copies owned of each item.
    pub sold: Vec<u64>,
    /// The platform's remainders.
    pub fees: i64,
    pub granted_total: i64,
}

pub fn expected(
    catalogue: &Catalogue,
    funded_buyers: &[usize],
    funds_per_buyer: i64,
    sales: &[Sale],
) -> Expected {
    let position: BTreeMap<usize, usize> = funded_buyers
        .iter()
        .enumerate()
        .map(|(slot, buyer)| (*buyer, slot))
        .collect();
    let mut balances = vec![funds_per_buyer; funded_buyers.len()];
    let mut creator_lifetime = vec![0i64; CREATORS];
    let mut sold = vec![0u64; catalogue.items.len()];
    let mut fees = 0;
    for sale in sales {
        if let Some(slot) = position.get(&sale.buyer) {
            balances[*slot] -= sale.price;
        }
        let creator = match sale.wanted {
            Wanted::Item(k) => catalogue.items[k].creator,
            Wanted::Bundle(j) => catalogue.bundles[j].creator,
        };
        let split = PRIMARY_FEE_POLICY_V1.split(sale.price);
        creator_lifetime[creator] += split.creator_share;
        fees += split.platform_fee;
        for item in &sale.granted {
            if let Some(count) = sold.get_mut(*item) {
                *count += 1;
            }
        }
    }
    Expected {
        balances,
        creator_lifetime,
        sold,
        fees,
        granted_total: funds_per_buyer * funded_buyers.len() as i64,
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    /// By funded buyer, in the order of `Expected::balances`.
    pub balances: Vec<i64>,
    pub creators: Vec<EarningsRead>,
    pub sold: Vec<Option<u64>>,
}

pub fn compare(
    expected: &Expected,
    observed: &Observed,
    buyer: impl Fn(usize) -> String,
) -> Vec<String> {
    let mut violations = Vec::new();
    for (slot, (wanted, found)) in expected.balances.iter().zip(&observed.balances).enumerate() {
        if wanted != found {
            violations.push(format!(
                "{}: balance is {found}, expected {wanted}",
                buyer(slot)
            ));
        }
    }
    for (creator, (wanted, found)) in expected
        .creator_lifetime
        .iter()
        .zip(&observed.creators)
        .enumerate()
    {
        if found.lifetime != *wanted || found.pending + found.released != *wanted {
            violations.push(format!(
                "creator {creator}: earnings are pending {} + released {} (lifetime {}), expected {wanted}",
                found.pending, found.released, found.lifetime
            ));
        }
    }
    for (item, (wanted, found)) in expected.sold.iter().zip(&observed.sold).enumerate() {
        if *found != Some(*wanted) {
            violations.push(format!("item {item}: sold is {found:?}, expected {wanted}"));
        }
    }
    let balances: i64 = observed.balances.iter().sum();
    let earnings: i64 = observed
        .creators
        .iter()
        .map(|e| e.pending + e.released)
        .sum();
    if balances + earnings + expected.fees != expected.granted_total {
        violations.push(format!(
            "conservation: buyers' balances {balances} + creators' earnings {earnings} + platform fees {} = {}, granted {}",
            expected.fees,
            balances + earnings + expected.fees,
            expected.granted_total
        ));
    }
    violations
}

pub async fn run(context: &Context) -> Result<Outcome, String> {
    let options = &context.options;
    let tag = context.tag.clone();
    let catalogue = Arc::new(Catalogue::generate(
        options.items(),
        options.bundle_percent() > 0,
        options.seed,
    ));
    let planner = Arc::new(Planner::new(
        options.seed,
        options.buyers(),
        &catalogue,
        options.zipf_exponent(),
        options.bundle_percent(),
    )?);
    let requests = options.requests();
    let funded_buyers: Vec<usize> = (0..requests)
        .map(|n| planner.request(n).buyer)
        .collect::<BTreeSet<usize>>()
        .into_iter()
        .collect();
    let funds_per_buyer = catalogue.spend_max();
    let item_name = {
        let tag = tag.clone();
        move |k: usize| format!("bench-{tag}-c-{k}")
    };
    let bundle_name = {
        let tag = tag.clone();
        move |j: usize| format!("bench-{tag}-cb-{j}")
    };
    let creator_name = {
        let tag = tag.clone();
        move |c: usize| format!("bench-{tag}-cc-{c}")
    };

    setup(
        context,
        "grants",
        grants(context, &funded_buyers, funds_per_buyer),
    )
    .await?;
    let items = catalogue
        .items
        .iter()
        .enumerate()
        .map(|(k, item)| {
            Command::PublishItem(ItemDefinition {
                item_id: item_id(&item_name(k)),
                creator_id: user_id(&creator_name(item.creator)),
                name: format!("catalogue item {k}"),
                price: item.price,
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
    let bundles = catalogue
        .bundles
        .iter()
        .enumerate()
        .map(|(j, bundle)| Command::CreateBundle {
            bundle_id: bundle_id(&bundle_name(j)),
            creator_id: user_id(&creator_name(bundle.creator)),
            name: format!("catalogue bundle {j}"),
            item_ids: bundle
                .items
                .iter()
                .map(|k| item_id(&item_name(*k)))
                .collect(),
            price: bundle.price,
        })
        .collect();
    setup(context, "bundles", bundles).await?;

    let sales: Arc<Mutex<Vec<Sale>>> = Arc::new(Mutex::new(Vec::new()));
    let phase = drive(&options.pace(), context.progress("catalogue"), {
        let (target, sales, planner, catalogue) = (
            context.target.clone(),
            sales.clone(),
            planner.clone(),
            catalogue.clone(),
        );
        let (item_name, bundle_name, tag) = (item_name.clone(), bundle_name.clone(), tag.clone());
        move |n| {
            let request = planner.request(n);
            let (purchase_target, price) = match request.wanted {
                Wanted::Item(k) => (
                    PurchaseTarget::Item(item_id(&item_name(k))),
                    catalogue.items[k].price,
                ),
                Wanted::Bundle(j) => (
                    PurchaseTarget::Bundle(bundle_id(&bundle_name(j))),
                    catalogue.bundles[j].price,
                ),
            };
            let command = Command::Purchase {
                purchase_id: purchase_id(&format!("bench-{tag}-p-{n}")),
                buyer_id: user_id(&format!("bench-{tag}-b-{}", request.buyer)),
                target: purchase_target,
                expected_price: price,
                region: None,
            };
            let item_prefix = format!("bench-{tag}-c-");
            let (target, sales) = (target.clone(), sales.clone());
            async move {
                let answer = target.submit(command).await;
                if let Some(accepted) = &answer.accepted {
                    let granted = match request.wanted {
                        Wanted::Item(k) => vec![k],
                        Wanted::Bundle(_) => accepted
                            .granted_item_ids
                            .iter()
                            .filter_map(|id| id.strip_prefix(&item_prefix)?.parse().ok())
                            .collect(),
                    };
                    sales.lock().expect("sales lock").push(Sale {
                        buyer: request.buyer,
                        wanted: request.wanted,
                        price: accepted.price.unwrap_or(price),
                        granted,
                    });
                }
                answer.code
            }
        }
    })
    .await;

    let sales = std::mem::take(&mut *sales.lock().expect("sales lock"));
    let mut violations = check_sales(&catalogue, &sales);
    let expected = expected(&catalogue, &funded_buyers, funds_per_buyer, &sales);
    let mut facts = Map::new();
    facts.insert("funded_buyers".into(), json!(funded_buyers.len()));
    facts.insert("items".into(), json!(catalogue.items.len()));
    facts.insert("bundles".into(), json!(catalogue.bundles.len()));
    facts.insert("funds_per_buyer".into(), json!(funds_per_buyer));
    facts.insert("platform_fees".into(), json!(expected.fees));
    let bundle_sales = sales
        .iter()
        .filter(|sale| matches!(sale.wanted, Wanted::Bundle(_)))
        .count();
    let notes = vec![format!(
        "catalogue: {} items and {} bundles of {CREATORS} creators, {} of {} buyers active (zipf s = {}), {} sales of which {bundle_sales} bundles",
        catalogue.items.len(),
        catalogue.bundles.len(),
        funded_buyers.len(),
        options.buyers(),
        options.zipf_exponent(),
        sales.len(),
    )];

    let reader = context.reader();
    let deadline = context.check_deadline();
    let buyer_names: Vec<String> = funded_buyers.iter().map(|b| context.user(*b)).collect();
    let creator_names: Vec<String> = (0..CREATORS).map(creator_name).collect();
    let item_names: Vec<String> = (0..catalogue.items.len()).map(item_name).collect();
    let (reader, buyer_names, creator_names, item_names, expected) = (
        &reader,
        &buyer_names,
        &creator_names,
        &item_names,
        &expected,
    );
    wait_until(deadline, || async move {
        for (name, wanted) in creator_names.iter().zip(&expected.creator_lifetime) {
            if reader.earnings(name).await.map(|e| e.lifetime).ok() != Some(*wanted) {
                return false;
            }
        }
        true
    })
    .await;
    violations.extend(
        check_until(
            deadline,
            || async move {
                let balances = reader
                    .balances(buyer_names, super::CHECK_READ_PARALLELISM)
                    .await?;
                let mut creators = Vec::with_capacity(CREATORS);
                for name in creator_names {
                    creators.push(reader.earnings(name).await?);
                }
                let mut sold = Vec::with_capacity(item_names.len());
                for name in item_names {
                    sold.push(reader.item(name).await?.map(|item| item.sold));
                }
                Ok(Observed {
                    balances,
                    creators,
                    sold,
                })
            },
            |observed| compare(expected, observed, |slot| buyer_names[slot].clone()),
        )
        .await,
    );
    Ok(Outcome {
        phase,
        facts,
        notes,
        invariants_checked: "no item granted twice to a buyer; every buyer's balance, every creator's earnings and every item's copies match the answers; balances + earnings + fees = granted".into(),
        violations: super::bounded(violations),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small_catalogue() -> Catalogue {
        Catalogue {
            items: vec![
                CatalogueItem {
                    creator: 0,
                    price: 100,
                },
                CatalogueItem {
                    creator: 1,
                    price: 15,
                },
                CatalogueItem {
                    creator: 0,
                    price: 9,
                },
            ],
            bundles: vec![CatalogueBundle {
                creator: 0,
                items: vec![0, 2],
                price: 80,
            }],
        }
    }

    /// Buyer 3 buys item 0 then the bundle (granted only item 2);
    /// buyer 5 buys item 1.
    fn sales() -> Vec<Sale> {
        vec![
            Sale {
                buyer: 3,
                wanted: Wanted::Item(0),
                price: 100,
                granted: vec![0],
            },
            Sale {
                buyer: 3,
                wanted: Wanted::Bundle(0),
                price: 80,
                granted: vec![2],
            },
            Sale {
                buyer: 5,
                wanted: Wanted::Item(1),
                price: 15,
                granted: vec![1],
            },
        ]
    }

    #[test]
    fn the_catalogue_is_deterministic_and_bundles_hold_their_creators_items() {
        let catalogue = Catalogue::generate(1_000, true, 7);
        assert_eq!(catalogue, Catalogue::generate(1_000, true, 7));
        assert_ne!(catalogue, Catalogue::generate(1_000, true, 8));
        assert_eq!(catalogue.bundles.len(), 50);
        for bundle in &catalogue.bundles {
            assert!((BUNDLE_SIZE_MIN..=BUNDLE_SIZE_MAX).contains(&bundle.items.len()));
            assert!(
                bundle.items.windows(2).all(|pair| pair[0] < pair[1]),
                "distinct"
            );
            assert!(bundle
                .items
                .iter()
                .all(|k| catalogue.items[*k].creator == bundle.creator));
        }
        assert!(catalogue
            .items
            .iter()
            .all(|item| (ITEM_PRICE_MIN..=ITEM_PRICE_MAX).contains(&item.price)));
        let tiny = Catalogue::generate(1, true, 7);
        assert_eq!(tiny.bundles[0].items, vec![0]);
        assert!(Catalogue::generate(100, false, 7).bundles.is_empty());
    }

    #[test]
    fn the_plan_follows_zipf_and_the_bundle_share() {
        let catalogue = Catalogue::generate(1_000, true, 1);
        let planner = Planner::new(1, 10_000, &catalogue, 1.1, 5).unwrap();
        assert_eq!(planner.request(17), planner.request(17));
        let requests: Vec<Request> = (0..100_000).map(|n| planner.request(n)).collect();
        let bundles = requests
            .iter()
            .filter(|r| matches!(r.wanted, Wanted::Bundle(_)))
            .count();
        assert!(
            (4_500..5_500).contains(&bundles),
            "{bundles} bundle requests"
        );
        let top_item = requests
            .iter()
            .filter(|r| r.wanted == Wanted::Item(0))
            .count() as f64;
        let theory = Zipf::new(1_000, 1.1).unwrap().probability(1) * (100_000 - bundles) as f64;
        assert!(
            (top_item - theory).abs() < theory * 0.05,
            "{top_item} vs {theory}"
        );
        let top_buyer = requests.iter().filter(|r| r.buyer == 0).count() as f64;
        let theory = Zipf::new(10_000, 1.1).unwrap().probability(1) * 100_000.0;
        assert!(
            (top_buyer - theory).abs() < theory * 0.05,
            "{top_buyer} vs {theory}"
        );
    }

    #[test]
    fn expectations_follow_the_sales_and_conserve_money() {
        let catalogue = small_catalogue();
        let expected = expected(&catalogue, &[3, 5, 8], 1_000, &sales());
        assert_eq!(expected.balances, vec![820, 985, 1_000]);
        // Creator 0: 70 + 56; creator 1: 10 (70% of 15 rounded down).
        assert_eq!(&expected.creator_lifetime[..2], &[126, 10]);
        assert_eq!(expected.sold, vec![1, 1, 1]);
        assert_eq!(expected.fees, 30 + 24 + 5);
        assert_eq!(expected.granted_total, 3_000);
        let mut creators = vec![EarningsRead::default(); CREATORS];
        creators[0] = EarningsRead {
            pending: 126,
            released: 0,
            lifetime: 126,
        };
        creators[1] = EarningsRead {
            pending: 3,
            released: 7,
            lifetime: 10,
        };
        let observed = Observed {
            balances: expected.balances.clone(),
            creators,
            sold: vec![Some(1), Some(1), Some(1)],
        };
        let name = |slot: usize| format!("slot-{slot}");
        assert_eq!(compare(&expected, &observed, name), Vec::<String>::new());
        assert_eq!(check_sales(&catalogue, &sales()), Vec::<String>::new());
    }

    #[test]
    fn broken_conservation_and_double_grants_are_reported() {
        let catalogue = small_catalogue();
        let mut sales = sales();
        // The bundle answer claims to grant item 0 again, at a wrong price.
        sales[1].granted = vec![0, 2];
        sales[1].price = 81;
        let violations = check_sales(&catalogue, &sales);
        assert_eq!(
            violations,
            vec![
                "Bundle(0) sold to buyer 3 at 81, the catalogue price is 80".to_string(),
                "buyer 3 was granted item 0 twice".to_string(),
            ]
        );
        let expected = expected(&catalogue, &[3, 5], 1_000, &self::sales());
        let mut creators = vec![EarningsRead::default(); CREATORS];
        creators[0] = EarningsRead {
            pending: 126,
            released: 0,
            lifetime: 126,
        };
        creators[1] = EarningsRead {
            pending: 10,
            released: 0,
            lifetime: 10,
        };
        // Buyer 5 was never debited: money created from nothing.
        let observed = Observed {
            balances: vec![820, 1_000],
            creators,
            sold: vec![Some(1), Some(1), Some(1)],
        };
        let violations = compare(&expected, &observed, |slot| format!("slot-{slot}"));
        assert_eq!(
            violations,
            vec![
                "slot-1: balance is 1000, expected 985".to_string(),
                "conservation: buyers' balances 1820 + creators' earnings 136 + platform fees 59 = 2015, granted 2000".to_string(),
            ]
        );
    }
}
