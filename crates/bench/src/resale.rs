//! `resale`: a secondary market. A resellable Limited of `--supply`
//! serials is sold to `--buyers` users (serial k to user k mod users),
//! then `--requests` operations churn: list an owned serial (40%), cancel
//! an open listing (15%), buy an open listing (45%), chosen from a model of
//! the market built from the answers. Races between them (two buyers, a
//! buyer and a cancel) give expected rejections such as
//! `listing_unavailable`. The check: every serial has exactly one owner,
//! the one the answers say; every open listing is of a serial its seller
//! owns, one per serial, the ones the answers left open; every balance
//! follows the fee rule (seller 70%, creator 10% royalty into escrow, both
//! rounded down, platform the remainder) and money is conserved.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use ledger_core::{
    Command, ItemDefinition, PurchaseTarget, PRIMARY_FEE_POLICY_V1, RESALE_FEE_POLICY_V1,
};
use serde_json::{json, Map};

use super::driver::drive;
use super::random::SplitMix64;
use super::reader::{EarningsRead, ItemRead, ListingRead};
use super::target::Code;
use super::{
    check_until, grants, item_id, listing_id, purchase_id, setup, user_id, wait_until, Context,
    Outcome,
};

pub const PRIMARY_PRICE: i64 = 100;
pub const FUNDS_PER_USER: i64 = 1_000_000;
pub const RESALE_PRICE_MIN: i64 = 20;
pub const RESALE_PRICE_MAX: i64 = 400;
/// Operation mix, cumulative percentages: list below 40, cancel below 55, else buy.
const LIST_BELOW: u64 = 40;
const CANCEL_BELOW: u64 = 55;
/// Random picks tried to find an unlisted serial.
const LIST_TRIES: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenListing {
    /// The request that created it (its id is `bench-<tag>-l-<listing>`).
    pub listing: usize,
    pub serial: u32,
    pub seller: usize,
    pub price: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    List {
        serial: u32,
        seller: usize,
        price: i64,
    },
    Cancel(OpenListing),
    Buy {
        listing: OpenListing,
        buyer: usize,
    },
}

/// The market as the answers describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Market {
    /// Owner of serial s at index s - 1.
    pub owner_by_serial: Vec<usize>,
    pub open: Vec<OpenListing>,
    listed: Vec<bool>,
    users: usize,
    /// Listings that are no longer open, and whether they were sold.
    closed: BTreeMap<usize, bool>,
}

impl Market {
    pub fn new(owner_by_serial: Vec<usize>, users: usize) -> Market {
        let listed = vec![false; owner_by_serial.len()];
        Market {
            owner_by_serial,
            open: Vec::new(),
            listed,
            users,
            closed: BTreeMap::new(),
        }
    }

    pub fn choose(&self, random: &mut SplitMix64) -> Operation {
        let roll = random.below(100);
        if self.open.is_empty() || roll < LIST_BELOW {
            for _ in 0..LIST_TRIES {
                let serial = random.below(self.owner_by_serial.len() as u64) as usize;
                if !self.listed[serial] {
                    return Operation::List {
                        serial: serial as u32 + 1,
                        seller: self.owner_by_serial[serial],
                        price: random.between(RESALE_PRICE_MIN, RESALE_PRICE_MAX),
                    };
                }
            }
        }
        if self.open.is_empty() {
            // Every try hit a serial whose listing is still in flight: list
            // serial 1 again (an expected `already_listed`).
            return Operation::List {
                serial: 1,
                seller: self.owner_by_serial[0],
                price: RESALE_PRICE_MIN,
            };
        }
        let listing = self.open[random.below(self.open.len() as u64) as usize];
        if (LIST_BELOW..CANCEL_BELOW).contains(&roll) {
            return Operation::Cancel(listing);
        }
        let mut buyer = random.below(self.users as u64 - 1) as usize;
        if buyer >= listing.seller {
            buyer += 1;
        }
        Operation::Buy { listing, buyer }
    }

    pub fn listed(&mut self, listing: OpenListing) {
        self.listed[listing.serial as usize - 1] = true;
        self.open.push(listing);
    }

    /// Removes an open listing; `None` if it was not open.
    fn close(&mut self, listing: usize, sold: bool) -> Option<OpenListing> {
        let index = self.open.iter().position(|open| open.listing == listing)?;
        let closed = self.open.swap_remove(index);
        self.listed[closed.serial as usize - 1] = false;
        self.closed.insert(listing, sold);
        Some(closed)
    }

    /// A cancel was answered 200. Cancelling a cancelled listing answers
    /// 200 again (the contract); cancelling a sold one must not.
    pub fn cancelled(&mut self, listing: usize) -> Result<(), String> {
        if self.close(listing, false).is_some() {
            return Ok(());
        }
        match self.closed.get(&listing) {
            Some(false) => Ok(()),
            Some(true) => Err(format!("listing {listing} was cancelled after it was sold")),
            None => Err(format!("listing {listing} was cancelled but never listed")),
        }
    }

    /// A resale purchase was answered 201.
    pub fn sold(&mut self, listing: usize, buyer: usize) -> Result<OpenListing, String> {
        if let Some(closed) = self.close(listing, true) {
            self.owner_by_serial[closed.serial as usize - 1] = buyer;
            return Ok(closed);
        }
        match self.closed.get(&listing) {
            Some(true) => Err(format!("listing {listing} was sold twice")),
            Some(false) => Err(format!("listing {listing} was sold after it was cancelled")),
            None => Err(format!("listing {listing} was sold but never listed")),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResaleSale {
    pub buyer: usize,
    pub seller: usize,
    pub price: i64,
}

/// The money the answers imply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Money {
    pub balances: Vec<i64>,
    pub creator_lifetime: i64,
    pub fees: i64,
    pub granted_total: i64,
}

/// `primary_buyers`: the buyer of each primary sale (at `PRIMARY_PRICE`).
pub fn expected_money(users: usize, primary_buyers: &[usize], sales: &[ResaleSale]) -> Money {
    let mut balances = vec![FUNDS_PER_USER; users];
    let primary = PRIMARY_FEE_POLICY_V1.split(PRIMARY_PRICE);
    let mut creator_lifetime = 0;
    let mut fees = 0;
    for buyer in primary_buyers {
        balances[*buyer] -= PRIMARY_PRICE;
        creator_lifetime += primary.creator_share;
        fees += primary.platform_fee;
    }
    for sale in sales {
        let split = RESALE_FEE_POLICY_V1.split(sale.price);
        balances[sale.buyer] -= sale.price;
        balances[sale.seller] += split.seller_share;
        creator_lifetime += split.royalty;
        fees += split.platform_fee;
    }
    Money {
        balances,
        creator_lifetime,
        fees,
        granted_total: FUNDS_PER_USER * users as i64,
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResaleObserved {
    pub item: Option<ItemRead>,
    pub owners: Vec<(u32, String)>,
    pub listings: Vec<ListingRead>,
    pub balances: Vec<i64>,
    pub creator: EarningsRead,
}

/// Compares the read models with the market and money the answers imply.
pub fn compare(
    market: &Market,
    money: &Money,
    observed: &ResaleObserved,
    user: impl Fn(usize) -> String,
    listing_name: impl Fn(usize) -> String,
) -> Vec<String> {
    let mut violations = Vec::new();
    let supply = market.owner_by_serial.len() as u64;
    if observed.item.map(|item| (item.sold, item.remaining)) != Some((supply, Some(0))) {
        violations.push(format!(
            "item: sold and remaining are {:?}, expected {supply} and 0",
            observed.item.map(|item| (item.sold, item.remaining))
        ));
    }
    let mut owner_by_serial: BTreeMap<u32, &str> = BTreeMap::new();
    for (serial, owner) in &observed.owners {
        if owner_by_serial.insert(*serial, owner).is_some() {
            violations.push(format!("serial {serial} has more than one owner"));
        }
    }
    for (index, wanted) in market.owner_by_serial.iter().enumerate() {
        let serial = index as u32 + 1;
        let wanted = user(*wanted);
        match owner_by_serial.get(&serial) {
            Some(owner) if *owner == wanted => {}
            found => violations.push(format!(
                "serial {serial}: owner is {found:?}, the answers say {wanted}"
            )),
        }
    }
    if owner_by_serial.len() as u64 != supply {
        violations.push(format!(
            "the owners list has {} serials, the supply is {supply}",
            owner_by_serial.len()
        ));
    }
    let mut listed_serials = BTreeSet::new();
    for listing in &observed.listings {
        match owner_by_serial.get(&listing.serial) {
            Some(owner) if *owner == listing.seller_id => {}
            owner => violations.push(format!(
                "listing {} of serial {} by {}, but the serial's owner is {owner:?}",
                listing.listing_id, listing.serial, listing.seller_id
            )),
        }
        if !listed_serials.insert(listing.serial) {
            violations.push(format!(
                "serial {} is on more than one open listing",
                listing.serial
            ));
        }
    }
    let wanted: BTreeSet<(String, u32, String, i64)> = market
        .open
        .iter()
        .map(|o| (listing_name(o.listing), o.serial, user(o.seller), o.price))
        .collect();
    let found: BTreeSet<(String, u32, String, i64)> = observed
        .listings
        .iter()
        .map(|l| (l.listing_id.clone(), l.serial, l.seller_id.clone(), l.price))
        .collect();
    for missing in wanted.difference(&found) {
        violations.push(format!(
            "listing {} is open per the answers but not listed",
            missing.0
        ));
    }
    for extra in found.difference(&wanted) {
        violations.push(format!(
            "listing {} is listed but not open per the answers",
            extra.0
        ));
    }
    for (index, (wanted, found)) in money.balances.iter().zip(&observed.balances).enumerate() {
        if wanted != found {
            violations.push(format!(
                "{}: balance is {found}, expected {wanted}",
                user(index)
            ));
        }
    }
    let creator = observed.creator;
    if creator.lifetime != money.creator_lifetime
        || creator.pending + creator.released != money.creator_lifetime
    {
        violations.push(format!(
            "creator: earnings are pending {} + released {} (lifetime {}), expected {}",
            creator.pending, creator.released, creator.lifetime, money.creator_lifetime
        ));
    }
    let balances: i64 = observed.balances.iter().sum();
    let total = balances + creator.pending + creator.released + money.fees;
    if total != money.granted_total {
        violations.push(format!(
            "conservation: users' balances {balances} + creator's earnings {} + platform fees {} = {total}, granted {}",
            creator.pending + creator.released,
            money.fees,
            money.granted_total
        ));
    }
    violations
}

/// What the churn shares between requests.
struct Shared {
    market: Market,
    sales: Vec<ResaleSale>,
    /// Answers that contradict the model (a bug in the ledger or the model).
    violations: Vec<String>,
    created: u64,
    cancelled: u64,
}

pub async fn run(context: &Context) -> Result<Outcome, String> {
    let options = &context.options;
    let tag = context.tag.clone();
    let users = options.buyers();
    let supply = options.supply();
    let item = format!("bench-{tag}-r");
    let creator = format!("bench-{tag}-r-creator");
    let publish = Command::PublishItem(ItemDefinition {
        item_id: item_id(&item),
        creator_id: user_id(&creator),
        name: "bench resale limited".into(),
        price: PRIMARY_PRICE,
        supply: Some(supply),
        max_per_user: None,
        starts_at_ms: None,
        ends_at_ms: None,
        resellable: true,
        kind: Default::default(),
    });
    setup(context, "limited item publications", vec![publish]).await?;
    let all_users: Vec<usize> = (0..users).collect();
    setup(
        context,
        "grants",
        grants(context, &all_users, FUNDS_PER_USER),
    )
    .await?;
    let primary_buyers: Vec<usize> = (0..supply as usize).map(|k| k % users).collect();
    let primary = primary_buyers
        .iter()
        .enumerate()
        .map(|(k, buyer)| Command::Purchase {
            purchase_id: purchase_id(&format!("bench-{tag}-rp-{k}")),
            buyer_id: user_id(&context.user(*buyer)),
            target: PurchaseTarget::Item(item_id(&item)),
            expected_price: PRIMARY_PRICE,
            region: None,
        })
        .collect();
    let answers = setup(context, "primary purchases", primary).await?;
    let mut owner_by_serial: Vec<Option<usize>> = vec![None; supply as usize];
    for (answer, buyer) in answers.iter().zip(&primary_buyers) {
        let slot = answer
            .serial
            .and_then(|serial| owner_by_serial.get_mut((serial as usize).wrapping_sub(1)))
            .ok_or_else(|| {
                format!(
                    "setup failed: a primary purchase answered serial {:?}",
                    answer.serial
                )
            })?;
        if slot.replace(*buyer).is_some() {
            return Err(format!(
                "setup failed: serial {:?} was sold twice",
                answer.serial
            ));
        }
    }
    let owner_by_serial: Vec<usize> = owner_by_serial
        .into_iter()
        .map(|o| o.unwrap_or(0))
        .collect();

    let shared = Arc::new(Mutex::new(Shared {
        market: Market::new(owner_by_serial, users),
        sales: Vec::new(),
        violations: Vec::new(),
        created: 0,
        cancelled: 0,
    }));
    let seed = options.seed;
    let phase = drive(&options.pace(), context.progress("resale"), {
        let (target, shared, tag, item) =
            (context.target.clone(), shared.clone(), tag.clone(), item.clone());
        move |n| {
            let mut random = SplitMix64::for_request(seed, n as u64);
            let operation = shared.lock().expect("market lock").market.choose(&mut random);
            let listing_name = |listing: usize| format!("bench-{tag}-l-{listing}");
            let user_name = |user: usize| format!("bench-{tag}-b-{user}");
            let command = match operation {
                Operation::List { serial, seller, price } => Command::CreateListing {
                    listing_id: listing_id(&listing_name(n)),
                    seller_id: user_id(&user_name(seller)),
                    item_id: item_id(&item),
                    serial,
                    price,
                },
                Operation::Cancel(open) => Command::CancelListing {
                    listing_id: listing_id(&listing_name(open.listing)),
                },
                Operation::Buy { listing, buyer } => Command::ResalePurchase {
                    purchase_id: purchase_id(&format!("bench-{tag}-rb-{n}")),
                    buyer_id: user_id(&user_name(buyer)),
                    listing_id: listing_id(&listing_name(listing.listing)),
                    expected_price: listing.price,
                },
            };
            let (target, shared) = (target.clone(), shared.clone());
            let seller_name = match operation {
                Operation::Buy { listing, .. } => user_name(listing.seller),
                _ => String::new(),
            };
            async move {
                let answer = target.submit(command).await;
                let Some(accepted) = answer.accepted else {
                    return answer.code;
                };
                let mut shared = shared.lock().expect("market lock");
                match operation {
                    Operation::List { serial, seller, price } => {
                        shared.created += 1;
                        shared.market.listed(OpenListing {
                            listing: n,
                            serial,
                            seller,
                            price,
                        });
                    }
                    Operation::Cancel(open) => {
                        shared.cancelled += 1;
                        if let Err(violation) = shared.market.cancelled(open.listing) {
                            shared.violations.push(violation);
                        }
                    }
                    Operation::Buy { listing, buyer } => {
                        if let Err(violation) = shared.market.sold(listing.listing, buyer) {
                            shared.violations.push(violation);
                        }
                        if accepted.seller_id.as_deref() != Some(seller_name.as_str())
                            || accepted.serial != Some(listing.serial)
                            || accepted.price != Some(listing.price)
                        {
                            shared.violations.push(format!(
                                "resale of listing {} answered seller {:?} serial {:?} price {:?}, the listing was {seller_name} serial {} price {}",
                                listing.listing, accepted.seller_id, accepted.serial, accepted.price, listing.serial, listing.price
                            ));
                        }
                        shared.sales.push(ResaleSale {
                            buyer,
                            seller: listing.seller,
                            price: listing.price,
                        });
                    }
                }
                Code::OK
            }
        }
    })
    .await;

    let shared = std::mem::replace(
        &mut *shared.lock().expect("market lock"),
        Shared {
            market: Market::new(Vec::new(), 0),
            sales: Vec::new(),
            violations: Vec::new(),
            created: 0,
            cancelled: 0,
        },
    );
    let money = expected_money(users, &primary_buyers, &shared.sales);
    let mut facts = Map::new();
    facts.insert("listings_created".into(), json!(shared.created));
    facts.insert("listings_cancelled".into(), json!(shared.cancelled));
    facts.insert("resales".into(), json!(shared.sales.len()));
    facts.insert(
        "listings_open_at_end".into(),
        json!(shared.market.open.len()),
    );
    facts.insert("platform_fees".into(), json!(money.fees));
    let notes = vec![format!(
        "resale: {} users, {supply} serials; {} listings created, {} cancelled, {} resold, {} open at the end",
        users,
        shared.created,
        shared.cancelled,
        shared.sales.len(),
        shared.market.open.len()
    )];
    let mut violations = shared.violations;

    let reader = context.reader();
    let deadline = context.check_deadline();
    let user_names: Vec<String> = all_users.iter().map(|u| context.user(*u)).collect();
    let listing_prefix = format!("bench-{tag}-l-");
    let (reader, item, creator, user_names, market, money) = (
        &reader,
        &item,
        &creator,
        &user_names,
        &shared.market,
        &money,
    );
    wait_until(deadline, || async move {
        reader.earnings(creator).await.map(|e| e.lifetime).ok() == Some(money.creator_lifetime)
    })
    .await;
    violations.extend(
        check_until(
            deadline,
            || async move {
                Ok(ResaleObserved {
                    item: reader.item(item).await?,
                    owners: reader.owners(item).await?,
                    listings: reader.listings(item).await?,
                    balances: reader
                        .balances(user_names, super::CHECK_READ_PARALLELISM)
                        .await?,
                    creator: reader.earnings(creator).await?,
                })
            },
            |observed| {
                compare(
                    market,
                    money,
                    observed,
                    |index| user_names[index].clone(),
                    |listing| format!("{listing_prefix}{listing}"),
                )
            },
        )
        .await,
    );
    Ok(Outcome {
        phase,
        facts,
        notes,
        invariants_checked: "every serial has exactly one owner, the one the answers say; every open listing is of a serial its seller owns, one per serial, as the answers left them; balances follow 70% to the seller, 10% royalty, platform the remainder, and money is conserved".into(),
        violations: super::bounded(violations),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(user: usize) -> String {
        format!("u-{user}")
    }

    fn listing_name(listing: usize) -> String {
        format!("l-{listing}")
    }

    /// Three serials owned by users 0, 1, 2 (of 3). User 0 listed serial 1
    /// at 200 (listing 10) and user 2 bought it; user 1 listed serial 2 at
    /// 9 (listing 11), still open.
    fn scenario() -> (Market, Money) {
        let mut market = Market::new(vec![0, 1, 2], 3);
        market.listed(OpenListing {
            listing: 10,
            serial: 1,
            seller: 0,
            price: 200,
        });
        market.listed(OpenListing {
            listing: 11,
            serial: 2,
            seller: 1,
            price: 9,
        });
        assert!(market.sold(10, 2).is_ok());
        let sales = [ResaleSale {
            buyer: 2,
            seller: 0,
            price: 200,
        }];
        (market, expected_money(3, &[0, 1, 2], &sales))
    }

    fn consistent(money: &Money) -> ResaleObserved {
        ResaleObserved {
            item: Some(ItemRead {
                sold: 3,
                remaining: Some(0),
            }),
            owners: vec![(1, name(2)), (2, name(1)), (3, name(2))],
            listings: vec![ListingRead {
                listing_id: listing_name(11),
                serial: 2,
                seller_id: name(1),
                price: 9,
            }],
            balances: money.balances.clone(),
            creator: EarningsRead {
                pending: 230,
                released: 0,
                lifetime: 230,
            },
        }
    }

    #[test]
    fn money_follows_the_resale_fee_rule() {
        let (_, money) = scenario();
        // Seller 0: -100 + 140; buyer 2: -100 - 200; creator 3 × 70 + 20.
        assert_eq!(
            money.balances,
            vec![
                FUNDS_PER_USER + 40,
                FUNDS_PER_USER - 100,
                FUNDS_PER_USER - 300
            ]
        );
        assert_eq!(money.creator_lifetime, 230);
        assert_eq!(money.fees, 3 * 30 + 40);
        // Price 9: seller 6, royalty 0, platform 3 (the contract's example).
        let tiny = expected_money(
            2,
            &[],
            &[ResaleSale {
                buyer: 1,
                seller: 0,
                price: 9,
            }],
        );
        assert_eq!(tiny.balances, vec![FUNDS_PER_USER + 6, FUNDS_PER_USER - 9]);
        assert_eq!((tiny.creator_lifetime, tiny.fees), (0, 3));
    }

    #[test]
    fn a_consistent_market_passes() {
        let (market, money) = scenario();
        assert_eq!(
            compare(&market, &money, &consistent(&money), name, listing_name),
            Vec::<String>::new()
        );
    }

    #[test]
    fn a_listing_by_a_non_owner_and_a_double_owner_are_reported() {
        let (market, money) = scenario();
        let mut observed = consistent(&money);
        // User 0 still lists serial 1, which user 2 bought; serial 3 has two owners.
        observed.listings.push(ListingRead {
            listing_id: listing_name(10),
            serial: 1,
            seller_id: name(0),
            price: 200,
        });
        observed.owners.push((3, name(0)));
        observed.balances[0] -= 140; // the seller was not paid
        let violations = compare(&market, &money, &observed, name, listing_name);
        let expected = [
            "serial 3 has more than one owner",
            "serial 3: owner is Some(\"u-0\"), the answers say u-2",
            "listing l-10 of serial 1 by u-0, but the serial's owner is Some(\"u-2\")",
            "listing l-10 is listed but not open per the answers",
            "u-0: balance is 999900, expected 1000040",
            "conservation: users' balances 2999500 + creator's earnings 230 + platform fees 130 = 2999860, granted 3000000",
        ];
        assert_eq!(violations, expected, "{violations:#?}");
    }

    #[test]
    fn the_model_chooses_valid_operations() {
        let mut market = Market::new(vec![0, 1, 2, 3], 4);
        let mut random = SplitMix64::new(5);
        // Nothing is open: only listings can be chosen.
        for _ in 0..100 {
            match market.choose(&mut random) {
                Operation::List {
                    serial,
                    seller,
                    price,
                } => {
                    assert!((1..=4).contains(&serial));
                    assert_eq!(seller, market.owner_by_serial[serial as usize - 1]);
                    assert!((RESALE_PRICE_MIN..=RESALE_PRICE_MAX).contains(&price));
                }
                other => panic!("{other:?} with nothing open"),
            }
        }
        market.listed(OpenListing {
            listing: 1,
            serial: 2,
            seller: 1,
            price: 50,
        });
        let mut seen = (0, 0, 0);
        for _ in 0..1_000 {
            match market.choose(&mut random) {
                Operation::List { serial, .. } => {
                    assert_ne!(serial, 2, "serial 2 is listed already");
                    seen.0 += 1;
                }
                Operation::Cancel(open) => {
                    assert_eq!(open.listing, 1);
                    seen.1 += 1;
                }
                Operation::Buy { listing, buyer } => {
                    assert_ne!(buyer, listing.seller, "never buy one's own listing");
                    assert!(buyer < 4);
                    seen.2 += 1;
                }
            }
        }
        assert!(seen.0 > 300 && seen.1 > 100 && seen.2 > 350, "{seen:?}");
        assert_eq!(market.cancelled(1), Ok(()));
        assert_eq!(
            market.cancelled(1),
            Ok(()),
            "a repeated cancel answers 200 again"
        );
        assert!(market.open.is_empty());
        market.listed(OpenListing {
            listing: 2,
            serial: 2,
            seller: 1,
            price: 50,
        });
        assert_eq!(market.sold(2, 3).map(|o| o.serial), Ok(2));
        assert_eq!(market.owner_by_serial[1], 3);
        assert_eq!(
            market.cancelled(2),
            Err("listing 2 was cancelled after it was sold".to_string())
        );
        assert_eq!(
            market.sold(2, 0),
            Err("listing 2 was sold twice".to_string())
        );
        assert_eq!(
            market.sold(1, 0),
            Err("listing 1 was sold after it was cancelled".to_string())
        );
    }
}
