//! The catalogue: publishing, repricing and toggling items on their own
//! shard, and creating bundles, whose home shard asks every item's shard to
//! describe it before the bundle exists.

use std::collections::{BTreeMap, BTreeSet};

use crate::ids::{BundleId, ItemId, UserId};
use crate::model::*;
use crate::money::AMOUNT_MAX;
use crate::pricing::{regional_price_min, Region, REGIONS_PER_ITEM_MAX};
use crate::state::{CommandRecord, ItemState, ShardState};

use super::out::Out;
use super::saga::{self, SagaStage};
use super::{reject, Answer, Decision};

/// `Reprice` by the item's creator (or an admin or service).
pub(super) fn reprice(
    mut out: Out<'_>,
    item_id: &ItemId,
    price: i64,
    meta: &CommandMeta,
) -> Decision {
    let checked = check_item_owner(out.state, item_id, &meta.actor).and_then(|item| {
        super::floors::check_reprice(item, out.state, price, meta.at_ms)?;
        check_regional_minimum(out.state, item_id, price)?;
        Ok(item)
    });
    match checked {
        Err(rejection) => Decision::Refuse(rejection),
        Ok(item) => {
            let position = out.push(Event::ItemRepriced {
                item_id: item_id.clone(),
                price,
            });
            let success = Success::ItemUpdated {
                price,
                on_sale: item.on_sale,
            };
            out.apply(Answer::Now(Completion::new(
                Ok(success),
                vec![position],
                Vec::new(),
            )))
        }
    }
}

/// `SetOnSale` by the item's creator (or an admin or service).
pub(super) fn set_on_sale(
    mut out: Out<'_>,
    item_id: &ItemId,
    on_sale: bool,
    actor: &Actor,
) -> Decision {
    match check_item_owner(out.state, item_id, actor) {
        Err(rejection) => Decision::Refuse(rejection),
        Ok(item) => {
            let position = out.push(Event::ItemSaleToggled {
                item_id: item_id.clone(),
                on_sale,
            });
            let success = Success::ItemUpdated {
                price: item.price,
                on_sale,
            };
            out.apply(Answer::Now(Completion::new(
                Ok(success),
                vec![position],
                Vec::new(),
            )))
        }
    }
}

/// Refuses a base price `price` under which a regional price of the item
/// would be less than 30 % of it.
fn check_regional_minimum(
    state: &ShardState,
    item_id: &ItemId,
    price: i64,
) -> Result<(), Rejection> {
    let Some(pricing) = state.item_pricing.get(item_id) else {
        return Ok(());
    };
    match pricing.under_minimum(price) {
        None => Ok(()),
        Some((region, regional)) => Err(reject(
            RejectionCode::ValidationFailed,
            format!(
                "item {item_id} costs {regional} in {region}, under 30% of {price}: \
                 set its regional prices first"
            ),
        )),
    }
}

/// `SetRegionalPrices` by the item's creator (or an admin or service):
/// replaces the item's prices per region, each at least 30 % of its base
/// price. Not remembered (as a reprice).
pub(super) fn set_regional_prices(
    mut out: Out<'_>,
    item_id: &ItemId,
    prices: &[(Region, i64)],
    actor: &Actor,
) -> Decision {
    let item = match check_item_owner(out.state, item_id, actor) {
        Err(rejection) => return Decision::Refuse(rejection),
        Ok(item) => item,
    };
    if let Err(rejection) = check_regional_prices(item, prices) {
        return Decision::Refuse(rejection);
    }
    // Stored in region order: the same set always logs the same event.
    let prices: Vec<(Region, i64)> = prices
        .iter()
        .cloned()
        .collect::<BTreeMap<_, _>>()
        .into_iter()
        .collect();
    let position = out.push(Event::RegionalPricesSet {
        item_id: item_id.clone(),
        prices: prices.clone(),
    });
    let success = Success::RegionalPricesSet {
        price: item.price,
        prices,
    };
    out.apply(Answer::Now(Completion::new(
        Ok(success),
        vec![position],
        Vec::new(),
    )))
}

/// At most [`REGIONS_PER_ITEM_MAX`] regions, each once, each priced from
/// 30 % of the item's base price to [`AMOUNT_MAX`].
fn check_regional_prices(item: &ItemState, prices: &[(Region, i64)]) -> Result<(), Rejection> {
    let item_id = &item.definition.item_id;
    if prices.len() > REGIONS_PER_ITEM_MAX {
        return Err(reject(
            RejectionCode::ValidationFailed,
            format!(
                "an item has at most {REGIONS_PER_ITEM_MAX} regional prices, not {}",
                prices.len()
            ),
        ));
    }
    let minimum = regional_price_min(item.price);
    let mut seen = BTreeSet::new();
    for (region, price) in prices {
        if !seen.insert(region) {
            return Err(reject(
                RejectionCode::ValidationFailed,
                format!("region {region} is priced twice"),
            ));
        }
        if !(minimum..=AMOUNT_MAX).contains(price) {
            return Err(reject(
                RejectionCode::ValidationFailed,
                format!(
                    "the price of item {item_id} in {region} must be from {minimum} (30% of {}) \
                     to {AMOUNT_MAX}, not {price}",
                    item.price
                ),
            ));
        }
    }
    Ok(())
}

fn check_item_owner<'a>(
    state: &'a ShardState,
    item_id: &ItemId,
    actor: &Actor,
) -> Result<&'a ItemState, Rejection> {
    let item = state.items.get(item_id).ok_or_else(|| {
        reject(
            RejectionCode::NotFound,
            format!("item {item_id} does not exist"),
        )
    })?;
    if !actor.may_act_as(&item.definition.creator_id) {
        return Err(reject(
            RejectionCode::Forbidden,
            format!("item {item_id} belongs to another creator"),
        ));
    }
    super::takedown::check_not_taken_down(state, item_id)?;
    Ok(item)
}

/// `PublishItem` accepted: the item exists from now on, unless its price
/// is under the floor in force for its kind (refused, and remembered).
pub(super) fn publish(
    out: &mut Out<'_>,
    key: &str,
    definition: &ItemDefinition,
    at_ms: TimestampMs,
) {
    let floor = super::floors::check_floor(
        out.state,
        &definition.item_id,
        definition.kind,
        definition.price,
        at_ms,
    );
    if let Err(rejection) = floor {
        return out.complete(key, Err(rejection), Vec::new());
    }
    let position = out.push(Event::ItemPublished {
        definition: definition.clone(),
    });
    out.complete(key, Ok(Success::ItemPublished), vec![position]);
}

/// `CreateBundle` accepted: asks each distinct item's shard to describe it.
pub(super) fn start_bundle(out: &mut Out<'_>, bundle_id: &BundleId, item_ids: &[ItemId]) {
    let distinct: BTreeSet<&ItemId> = item_ids.iter().collect();
    for item_id in distinct {
        let to = out.shard_of(&keys::item(item_id));
        out.send(
            to,
            Message::DescribeItem {
                bundle_id: bundle_id.clone(),
                item_id: item_id.clone(),
            },
        );
    }
}

/// On the item's shard: the answer for the bundle's shard.
pub(super) fn describe_item(state: &ShardState, bundle_id: &BundleId, item_id: &ItemId) -> Message {
    let answer = match state.items.get(item_id) {
        None => Err(item_id.clone()),
        Some(item) => Ok(ItemDescription {
            item_id: item_id.clone(),
            creator_id: item.definition.creator_id.clone(),
            limited: item.is_limited(),
        }),
    };
    Message::ItemDescribed {
        bundle_id: bundle_id.clone(),
        answer,
    }
}

/// A bundle waiting for the descriptions of its items.
struct Describing<'a> {
    bundle_id: &'a BundleId,
    creator_id: &'a UserId,
    name: &'a str,
    item_ids: &'a [ItemId],
    price: i64,
    answers: &'a [Result<ItemDescription, ItemId>],
    expected: u32,
}

impl<'a> SagaStage<'a> for Describing<'a> {
    const EXPECTED: &'static str = "a bundle waiting for item descriptions";

    fn read(record: &'a CommandRecord) -> Option<Self> {
        match (&record.command, &record.progress) {
            (
                Command::CreateBundle {
                    bundle_id,
                    creator_id,
                    name,
                    item_ids,
                    price,
                },
                Progress::Describing { answers, expected },
            ) => Some(Self {
                bundle_id,
                creator_id,
                name,
                item_ids,
                price: *price,
                answers,
                expected: *expected,
            }),
            _ => None,
        }
    }
}

/// Back on the bundle's shard: records the answer; once every item has
/// answered, creates the bundle or refuses it.
pub(super) fn item_described(
    out: &mut Out<'_>,
    bundle_id: &BundleId,
    answer: &Result<ItemDescription, ItemId>,
) {
    let key = keys::bundle(bundle_id);
    let bundle: Describing = saga::stage(out.state, &key);
    let mut answers = bundle.answers.to_vec();
    answers.push(answer.clone());
    if (answers.len() as u32) < bundle.expected {
        out.push(Event::CommandProgressed {
            key,
            progress: Progress::Describing {
                answers,
                expected: bundle.expected,
            },
            position: None,
        });
        return;
    }
    match bundle_verdict(bundle.creator_id, &answers) {
        Ok(()) => {
            let position = out.push(Event::BundleCreated {
                bundle_id: bundle.bundle_id.clone(),
                creator_id: bundle.creator_id.clone(),
                name: bundle.name.to_string(),
                item_ids: bundle.item_ids.to_vec(),
                price: bundle.price,
            });
            out.complete(&key, Ok(Success::BundleCreated), vec![position]);
        }
        Err(rejection) => out.complete(&key, Err(rejection), Vec::new()),
    }
}

/// Whether the described items make a bundle of `creator_id`: every item
/// exists, is the creator's and is not a Limited. The first problem wins,
/// except that a missing item wins over any other problem.
fn bundle_verdict(
    creator_id: &UserId,
    answers: &[Result<ItemDescription, ItemId>],
) -> Result<(), Rejection> {
    let mut result = Ok(());
    for answer in answers {
        let problem = match answer {
            Err(item_id) => Some(reject(
                RejectionCode::NotFound,
                format!("item {item_id} does not exist"),
            )),
            Ok(description) if &description.creator_id != creator_id => Some(reject(
                RejectionCode::ValidationFailed,
                format!(
                    "item {} is not an item of creator {creator_id}",
                    description.item_id
                ),
            )),
            Ok(description) if description.limited => Some(reject(
                RejectionCode::ValidationFailed,
                format!(
                    "item {} is a limited and cannot be bundled",
                    description.item_id
                ),
            )),
            Ok(_) => None,
        };
        if let Some(problem) = problem {
            // not_found wins over validation problems found later.
            match &result {
                Ok(()) => result = Err(problem),
                Err(existing)
                    if problem.code == RejectionCode::NotFound
                        && existing.code != RejectionCode::NotFound =>
                {
                    result = Err(problem)
                }
                Err(_) => {}
            }
        }
    }
    result
}
