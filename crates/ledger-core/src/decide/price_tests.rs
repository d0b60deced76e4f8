//! Price tests: a test lives on its own shard (key `price-test:<id>`),
//! which counts exposures and sales per arm and decides the winner; the
//! item's shard prices each buyer by the arm the test assigns them (see
//! [`crate::pricing::test_arm`]).
//!
//! Start: the test's shard opens the test and asks the item's shard to
//! price by it (`StartTestOnItem`); the item's shard checks the item and
//! the creator and answers (`TestStartedOnItem`). Sales: the purchase's
//! shard reports each sale priced by an arm (`PriceTestSale`). End: the
//! clock (at the end time) or `EndPriceTest` picks the arm with the most
//! revenue per exposure and tells the item's shard (`CloseTestOnItem`),
//! which applies the winning price if asked and still allowed.

use crate::ids::{ExposureBatchId, ItemId, PriceTestId, PurchaseId, UserId};
use crate::model::*;
use crate::money::AMOUNT_MAX;
use crate::pricing::{
    leading_arm, RunningTest, EXPOSURES_PER_BATCH_MAX, TESTS_ENDED_PER_TICK_MAX, TEST_ARMS_MAX,
    TEST_ARMS_MIN, TEST_DURATION_MS_MAX,
};
use crate::state::{CommandRecord, ShardState};

use super::out::Out;
use super::saga::{self, SagaStage};
use super::{reject, Decision};

/// `StartPriceTest` accepted on the test's shard: checks the arms and the
/// end time, opens the test and asks the item's shard to price by it.
pub(super) fn start(out: &mut Out<'_>, key: &str, test: &StartRequest<'_>, meta: &CommandMeta) {
    if let Err(rejection) = check_request(test, meta.at_ms) {
        return out.complete(key, Err(rejection), Vec::new());
    }
    out.push(Event::PriceTestOpened {
        test_id: test.test_id.clone(),
        item_id: test.item_id.clone(),
        arms: test.arms.to_vec(),
        ends_at_ms: test.ends_at_ms,
        apply_winner: test.apply_winner,
    });
    let to = out.shard_of(&keys::item(test.item_id));
    out.send(
        to,
        Message::StartTestOnItem {
            test_id: test.test_id.clone(),
            item_id: test.item_id.clone(),
            arms: test.arms.to_vec(),
            ends_at_ms: test.ends_at_ms,
            actor: meta.actor.clone(),
            at_ms: meta.at_ms,
        },
    );
}

/// The fields of `StartPriceTest`.
pub(super) struct StartRequest<'a> {
    pub(super) test_id: &'a PriceTestId,
    pub(super) item_id: &'a ItemId,
    pub(super) arms: &'a [i64],
    pub(super) ends_at_ms: TimestampMs,
    pub(super) apply_winner: bool,
}

fn check_request(test: &StartRequest<'_>, at_ms: TimestampMs) -> Result<(), Rejection> {
    if !(TEST_ARMS_MIN..=TEST_ARMS_MAX).contains(&test.arms.len()) {
        return Err(reject(
            RejectionCode::ValidationFailed,
            format!(
                "a price test has {TEST_ARMS_MIN} to {TEST_ARMS_MAX} arms, not {}",
                test.arms.len()
            ),
        ));
    }
    if let Some(price) = test
        .arms
        .iter()
        .find(|price| !(0..=AMOUNT_MAX).contains(*price))
    {
        return Err(reject(
            RejectionCode::ValidationFailed,
            format!("an arm's price must be from 0 to {AMOUNT_MAX}, not {price}"),
        ));
    }
    if test.ends_at_ms <= at_ms || test.ends_at_ms - at_ms > TEST_DURATION_MS_MAX {
        return Err(reject(
            RejectionCode::ValidationFailed,
            "a price test must end after it starts and within 90 days",
        ));
    }
    Ok(())
}

/// On the item's shard: prices the item by the test from now on, if the
/// actor may and the item can be tested; answers the test's shard.
pub(super) fn start_on_item(
    out: &mut Out<'_>,
    test: &StartRequest<'_>,
    actor: &Actor,
    at_ms: TimestampMs,
) -> Message {
    let result = check_item(out.state, test, actor, at_ms).inspect(|_| {
        out.push(Event::PriceTestStarted {
            test_id: test.test_id.clone(),
            item_id: test.item_id.clone(),
            arms: test.arms.to_vec(),
            ends_at_ms: test.ends_at_ms,
        });
    });
    Message::TestStartedOnItem {
        test_id: test.test_id.clone(),
        result,
        position: out.next_position(),
    }
}

/// The item exists, `actor` may act for its creator, it is not a Limited,
/// no other test prices it and every arm is at least the floor in force.
fn check_item(
    state: &ShardState,
    test: &StartRequest<'_>,
    actor: &Actor,
    at_ms: TimestampMs,
) -> Result<UserId, Rejection> {
    let item_id = test.item_id;
    let item = state.items.get(item_id).ok_or_else(|| {
        reject(
            RejectionCode::NotFound,
            format!("item {item_id} does not exist"),
        )
    })?;
    let creator_id = &item.definition.creator_id;
    if !actor.may_act_as(creator_id) {
        return Err(reject(
            RejectionCode::Forbidden,
            format!("item {item_id} belongs to another creator"),
        ));
    }
    super::takedown::check_not_taken_down(state, item_id)?;
    if item.is_limited() {
        return Err(reject(
            RejectionCode::ValidationFailed,
            format!(
                "item {item_id} is a limited: its serials sell at one price and are not tested"
            ),
        ));
    }
    let running = state
        .item_pricing
        .get(item_id)
        .and_then(|pricing| pricing.test.as_ref())
        .filter(|running| at_ms < running.ends_at_ms);
    if let Some(RunningTest { test_id, .. }) = running {
        return Err(reject(
            RejectionCode::ValidationFailed,
            format!("item {item_id} is already in price test {test_id}"),
        ));
    }
    for price in test.arms {
        super::floors::check_floor(state, item_id, item.definition.kind, *price, at_ms)?;
    }
    Ok(creator_id.clone())
}

/// A test waiting for its item's shard.
struct Starting<'a> {
    test_id: &'a PriceTestId,
}

impl<'a> SagaStage<'a> for Starting<'a> {
    const EXPECTED: &'static str = "a price test waiting for its item";

    fn read(record: &'a CommandRecord) -> Option<Self> {
        match (&record.command, &record.progress) {
            (Command::StartPriceTest { test_id, .. }, Progress::StartingTest) => {
                Some(Self { test_id })
            }
            _ => None,
        }
    }
}

/// Back on the test's shard: the test runs, or is aborted.
pub(super) fn started_on_item(
    out: &mut Out<'_>,
    test_id: &PriceTestId,
    result: &Result<UserId, Rejection>,
    position: ShardPosition,
) {
    let key = keys::price_test(test_id);
    let starting: Starting = saga::stage(out.state, &key);
    let test_id = starting.test_id.clone();
    match result {
        Ok(creator_id) => {
            out.push(Event::PriceTestRunning {
                test_id,
                creator_id: creator_id.clone(),
            });
            out.complete(&key, Ok(Success::PriceTestStarted), vec![position]);
        }
        Err(rejection) => {
            out.push(Event::PriceTestAborted { test_id });
            out.complete(&key, Err(rejection.clone()), Vec::new());
        }
    }
}

/// `RecordExposures` accepted on the test's shard: adds the batch.
pub(super) fn record_exposures(
    out: &mut Out<'_>,
    key: &str,
    test_id: &PriceTestId,
    batch_id: &ExposureBatchId,
    counts: &[u64],
) {
    let Some(test) = out.state.price_tests.get(test_id) else {
        let rejection = reject(
            RejectionCode::NotFound,
            format!("price test {test_id} does not exist"),
        );
        return out.complete(key, Err(rejection), Vec::new());
    };
    if counts.len() != test.arms.len()
        || counts.iter().any(|count| *count > EXPOSURES_PER_BATCH_MAX)
    {
        let rejection = reject(
            RejectionCode::ValidationFailed,
            format!(
                "batch {batch_id} must count each of the {} arms of price test {test_id} \
                 at most {EXPOSURES_PER_BATCH_MAX} times",
                test.arms.len()
            ),
        );
        return out.complete(key, Err(rejection), Vec::new());
    }
    let exposures: Vec<u64> = test
        .counts
        .iter()
        .zip(counts)
        .map(|(arm, count)| arm.exposures + count)
        .collect();
    let position = out.push(Event::PriceTestExposed {
        test_id: test_id.clone(),
        batch: counts.to_vec(),
        exposures: exposures.clone(),
    });
    out.complete(
        key,
        Ok(Success::ExposuresRecorded { exposures }),
        vec![position],
    );
}

/// On the purchase's shard, once a purchase priced by a test's arm is
/// paid: reports it to the test's shard.
pub(super) fn report_sale(out: &mut Out<'_>, purchase_id: &PurchaseId, reservation: &Reservation) {
    let Some(crate::pricing::SaleTerms {
        rule: crate::pricing::PriceRule::TestArm { test_id, arm },
        ..
    }) = &reservation.terms
    else {
        return;
    };
    let to = out.shard_of(&keys::price_test(test_id));
    out.send(
        to,
        Message::PriceTestSale {
            test_id: test_id.clone(),
            purchase_id: purchase_id.clone(),
            arm: *arm,
            price: reservation.price,
        },
    );
}

/// On the test's shard: one more sale of `arm`.
pub(super) fn sold(
    out: &mut Out<'_>,
    test_id: &PriceTestId,
    purchase_id: &PurchaseId,
    arm: u8,
    price: i64,
) {
    let test =
        out.state.price_tests.get(test_id).unwrap_or_else(|| {
            panic!("a sale refers to price test {test_id}, which this shard lacks")
        });
    let counts = &test.counts[usize::from(arm)];
    out.push(Event::PriceTestSold {
        test_id: test_id.clone(),
        purchase_id: purchase_id.clone(),
        arm,
        price,
        purchases: counts.purchases + 1,
        revenue: counts.revenue + price,
    });
}

/// `EndPriceTest` on the test's shard: ends a running test now.
pub(super) fn end_now(mut out: Out<'_>, test_id: &PriceTestId, meta: &CommandMeta) -> Decision {
    let Some(test) = out.state.price_tests.get(test_id) else {
        return Decision::Refuse(reject(
            RejectionCode::NotFound,
            format!("price test {test_id} does not exist"),
        ));
    };
    let allowed = match &test.creator_id {
        Some(creator_id) => meta.actor.may_act_as(creator_id),
        None => meta.actor.role != Role::User,
    };
    if !allowed {
        return Decision::Refuse(reject(
            RejectionCode::Forbidden,
            format!("price test {test_id} belongs to another creator"),
        ));
    }
    if !test.is_running() {
        return Decision::Refuse(reject(
            RejectionCode::ValidationFailed,
            format!("price test {test_id} is not running"),
        ));
    }
    let (winner, applied_price, position) = end(&mut out, test_id, meta.at_ms);
    let answer = out.answer_now(
        Ok(Success::PriceTestEnded {
            winner,
            applied_price,
        }),
        vec![position],
    );
    out.apply(answer)
}

/// Ends a running test: its winner, and its price sent to the item if the
/// test applies it.
fn end(
    out: &mut Out<'_>,
    test_id: &PriceTestId,
    at_ms: TimestampMs,
) -> (Option<u8>, Option<i64>, ShardPosition) {
    let test = &out.state.price_tests[test_id];
    let winner = leading_arm(&test.counts);
    let applied_price = winner
        .filter(|_| test.apply_winner)
        .map(|arm| test.arms[arm]);
    let item_id = test.item_id.clone();
    let winner = winner.map(|arm| u8::try_from(arm).expect("at most 4 arms"));
    let position = out.push(Event::PriceTestEnded {
        test_id: test_id.clone(),
        winner,
        applied_price,
    });
    let to = out.shard_of(&keys::item(&item_id));
    out.send(
        to,
        Message::CloseTestOnItem {
            test_id: test_id.clone(),
            item_id,
            apply_price: applied_price,
            at_ms,
        },
    );
    (winner, applied_price, position)
}

/// The clock on a test's shard: ends the running tests whose time is up.
pub(super) fn end_due_tests(out: &mut Out<'_>, now_ms: TimestampMs) {
    let due: Vec<PriceTestId> = out
        .state
        .tests_ending
        .iter()
        .take_while(|(ends_at_ms, _)| *ends_at_ms <= now_ms)
        .take(TESTS_ENDED_PER_TICK_MAX)
        .map(|(_, test_id)| test_id.clone())
        .collect();
    for test_id in due {
        end(out, &test_id, now_ms);
    }
}

/// On the item's shard: the item is no longer priced by the test; the
/// winning price becomes its price if asked, unless under the floor in
/// force or its regional prices' 30 % (then the item keeps its price).
pub(super) fn close_on_item(
    out: &mut Out<'_>,
    test_id: &PriceTestId,
    item_id: &ItemId,
    apply_price: Option<i64>,
    at_ms: TimestampMs,
) {
    let item = super::routed_item(out.state, item_id);
    let applied_price = apply_price.filter(|price| {
        super::floors::check_reprice(item, out.state, *price, at_ms).is_ok()
            && out
                .state
                .item_pricing
                .get(item_id)
                .is_none_or(|pricing| pricing.under_minimum(*price).is_none())
    });
    out.push(Event::PriceTestClosed {
        test_id: test_id.clone(),
        item_id: item_id.clone(),
        applied_price,
    });
    if let Some(price) = applied_price {
        out.push(Event::ItemRepriced {
            item_id: item_id.clone(),
            price,
        });
    }
}
