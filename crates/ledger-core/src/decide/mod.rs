//! `decide`: what an input means for a shard, as events (or a refusal).
//! Pure and deterministic: time and ids arrive on the input.
//!
//! Each flow has its own module; this one routes inputs to them:
//!
//! * `grant`: currency grants;
//! * `catalogue`: items (publish, reprice, sale toggle) and bundles;
//! * `purchase`: purchases of items and bundles, and the payment,
//!   serial confirmation and settlement every purchase shares;
//! * `cart`: carts of items and bundles, paid in one debit;
//! * `resale`: purchases of listed serials;
//! * `listing`: creating and cancelling listings;
//! * `refund`: refunds of primary purchases;
//! * `tick`: escrow release.
//!
//! A flow that spans shards is a saga: its home shard stores its state as a
//! `CommandRecord`, read back as a typed stage through `saga::stage`.

mod cart;
mod catalogue;
mod floors;
mod grant;
mod listing;
mod out;
mod price_tests;
mod purchase;
mod refund;
mod resale;
mod saga;
mod takedown;
mod tick;

#[cfg(test)]
mod testing;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use crate::codec::fingerprint;
use crate::ids::{ItemId, ShardId};
use crate::model::*;
use crate::retention;
use crate::state::{Config, ItemState, ShardState};

use out::Out;

/// Something a shard is asked to process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    Command {
        command: Command,
        meta: CommandMeta,
    },
    Message {
        from: ShardId,
        sequence: u64,
        message: Arc<Message>,
    },
    /// The ledger's clock: releases escrow that is due.
    Tick {
        now_ms: TimestampMs,
    },
}

/// How the engine answers the caller of a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Nobody waits (messages, ticks).
    None,
    /// Answer once the events are durable.
    Now(Completion),
    /// Answer when `CommandCompleted` for this key is durable.
    OnCompletion(String),
}

/// The outcome of `decide`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Append these events (apply them with `evolve`), then answer.
    Apply { events: Vec<Event>, answer: Answer },
    /// Refused before anything happened; nothing is remembered.
    Refuse(Rejection),
    /// A message already consumed: drop it.
    Duplicate,
    /// A message ahead of the next expected one: hold it back until the gap fills.
    Early,
}

fn reject(code: RejectionCode, detail: impl Into<String>) -> Rejection {
    Rejection::new(code, detail)
}

/// The item `item_id` of this shard, which a message routed here names.
fn routed_item<'a>(state: &'a ShardState, item_id: &ItemId) -> &'a ItemState {
    state
        .items
        .get(item_id)
        .unwrap_or_else(|| panic!("a message refers to item {item_id}, which this shard lacks"))
}

/// Decides what `input` means for `state`.
pub fn decide(state: &ShardState, config: &Config, input: &Input) -> Decision {
    match input {
        Input::Command { command, meta } => decide_command(state, config, command, meta),
        Input::Message {
            from,
            sequence,
            message,
        } => {
            let expected = state.next_inbound(*from);
            if *sequence < expected {
                return Decision::Duplicate;
            }
            if *sequence > expected {
                return Decision::Early;
            }
            let mut out = Out::new(state, config);
            on_message(&mut out, *from, message);
            // Logged after the message's effects: once a reader has seen this
            // event, it has seen them too (see `DeliveryMark`).
            out.push(Event::MessageReceived {
                from: *from,
                sequence: *sequence,
            });
            out.apply(Answer::None)
        }
        Input::Tick { now_ms } => {
            let mut out = Out::new(state, config);
            tick::release_due_escrow(&mut out, *now_ms);
            tick::forget_expired_commands(&mut out, *now_ms);
            price_tests::end_due_tests(&mut out, *now_ms);
            out.apply(Answer::None)
        }
    }
}

fn decide_command(
    state: &ShardState,
    config: &Config,
    command: &Command,
    meta: &CommandMeta,
) -> Decision {
    assert_eq!(
        config.shard_of(&command.home_key()),
        state.shard,
        "a command runs on its home shard"
    );
    let out = Out::new(state, config);
    match command {
        Command::Reprice { item_id, price } => catalogue::reprice(out, item_id, *price, meta),
        Command::SetOnSale { item_id, on_sale } => {
            catalogue::set_on_sale(out, item_id, *on_sale, &meta.actor)
        }
        Command::CancelListing { listing_id } => listing::cancel(out, command, meta, listing_id),
        Command::Grant {
            grant_id,
            user_id,
            amount,
        } => run_keyed(out, command, meta, |out, _| {
            grant::start(out, grant_id, user_id, *amount)
        }),
        Command::PublishItem(definition) => run_keyed(out, command, meta, |out, key| {
            catalogue::publish(out, key, definition, meta.at_ms)
        }),
        Command::SetPriceFloor {
            kind,
            price,
            effective_from_ms,
        } => {
            if meta.actor.role != Role::Admin {
                return Decision::Refuse(reject(
                    RejectionCode::Forbidden,
                    "only an admin sets price floors",
                ));
            }
            run_keyed(out, command, meta, |out, key| {
                floors::start(out, key, *kind, *price, *effective_from_ms)
            })
        }
        Command::CreateBundle {
            bundle_id,
            item_ids,
            ..
        } => run_keyed(out, command, meta, |out, _| {
            catalogue::start_bundle(out, bundle_id, item_ids)
        }),
        Command::Purchase { purchase_id, .. } | Command::ResalePurchase { purchase_id, .. }
            if is_cart_line_id(purchase_id) =>
        {
            Decision::Refuse(reject(
                RejectionCode::ValidationFailed,
                format!(
                    "purchase_id {purchase_id} has the form of a cart line's id \
                     (<id>.line-<n>), which is reserved"
                ),
            ))
        }
        Command::PurchaseCart {
            purchase_id,
            buyer_id,
            lines,
            region,
        } => {
            if let Err(rejection) = cart::validate(purchase_id, lines) {
                return Decision::Refuse(rejection);
            }
            run_keyed(out, command, meta, |out, _| {
                cart::start(
                    out,
                    purchase_id,
                    buyer_id,
                    lines,
                    region.as_ref(),
                    meta.at_ms,
                )
            })
        }
        Command::Purchase {
            purchase_id,
            buyer_id,
            target,
            expected_price,
            region,
        } => run_keyed(out, command, meta, |out, _| {
            purchase::start(
                out,
                purchase_id,
                buyer_id,
                target,
                region.as_ref(),
                *expected_price,
                meta.at_ms,
            )
        }),
        Command::SetRegionalPrices { item_id, prices } => {
            catalogue::set_regional_prices(out, item_id, prices, &meta.actor)
        }
        Command::StartPriceTest {
            test_id,
            item_id,
            arms,
            ends_at_ms,
            apply_winner,
        } => run_keyed(out, command, meta, |out, key| {
            let request = price_tests::StartRequest {
                test_id,
                item_id,
                arms,
                ends_at_ms: *ends_at_ms,
                apply_winner: *apply_winner,
            };
            price_tests::start(out, key, &request, meta)
        }),
        Command::RecordExposures {
            test_id,
            batch_id,
            counts,
        } => run_keyed(out, command, meta, |out, key| {
            price_tests::record_exposures(out, key, test_id, batch_id, counts)
        }),
        Command::EndPriceTest { test_id } => price_tests::end_now(out, test_id, meta),
        Command::TakeDown { item_id } => {
            if meta.actor.role != Role::Admin {
                return Decision::Refuse(reject(
                    RejectionCode::Forbidden,
                    "only an admin takes items down",
                ));
            }
            run_keyed(out, command, meta, |out, _| {
                takedown::start(out, item_id, meta.at_ms)
            })
        }
        Command::ResalePurchase {
            purchase_id,
            buyer_id,
            listing_id,
            expected_price,
        } => run_keyed(out, command, meta, |out, _| {
            resale::start(
                out,
                purchase_id,
                buyer_id,
                listing_id,
                *expected_price,
                meta.at_ms,
            )
        }),
        Command::CreateListing {
            listing_id,
            seller_id,
            item_id,
            serial,
            price,
        } => run_keyed(out, command, meta, |out, _| {
            listing::start(
                out, listing_id, seller_id, item_id, *serial, *price, meta.at_ms,
            )
        }),
        Command::Refund {
            refund_id,
            purchase_id,
        } => run_keyed(out, command, meta, |out, _| {
            refund::start(out, refund_id, purchase_id)
        }),
    }
}

/// Runs a command that carries its own id (its key): a repeat joins the
/// first run or gets its outcome, the same id with another request is
/// refused, and a new one is accepted and started by `start`.
fn run_keyed(
    mut out: Out<'_>,
    command: &Command,
    meta: &CommandMeta,
    start: impl FnOnce(&mut Out<'_>, &str),
) -> Decision {
    let key = command
        .idempotency_key()
        .expect("a keyed command carries its id");
    let command_fingerprint = fingerprint(command);
    if let Some(remembered) = out.state.commands.get(key.as_str()) {
        if remembered.record(&key).fingerprint != command_fingerprint {
            return Decision::Refuse(reject(
                RejectionCode::IdempotencyConflict,
                format!("{key} was already used with a different request"),
            ));
        }
        return Decision::Apply {
            events: Vec::new(),
            answer: Answer::OnCompletion(key),
        };
    }
    if let Some(refusal) = check_retention(out.state, out.config, command, meta, &key) {
        return Decision::Refuse(refusal);
    }
    out.push(Event::CommandAccepted {
        key: key.clone(),
        fingerprint: command_fingerprint,
        command: command.clone(),
        meta: meta.clone(),
    });
    start(&mut out, &key);
    out.apply(Answer::OnCompletion(key))
}

/// Refuses a command the shard may have run and forgotten (see
/// [`crate::retention`]), or one whose id is dated so far ahead that it
/// would be remembered beyond the horizon.
fn check_retention(
    state: &ShardState,
    config: &Config,
    command: &Command,
    meta: &CommandMeta,
    key: &str,
) -> Option<Rejection> {
    if !retention::is_forgettable(command) {
        return None;
    }
    let id = key.split_once(':').map_or(key, |(_, id)| id);
    let expired = || {
        Some(reject(
            RejectionCode::IdempotencyExpired,
            format!(
                "id {id} is older than the idempotency horizon: its outcome is no longer \
                 kept, and it is not run again"
            ),
        ))
    };
    if state.retention.is_forgotten(key) {
        return expired();
    }
    let created_ms = retention::id_time_ms(key)?;
    // Dated before the horizon by the command's own clock: refused even if
    // this shard has forgotten nothing yet, so the rule does not depend on
    // which shard the id lands on.
    if created_ms < meta.at_ms.saturating_sub(config.idempotency_horizon_ms) {
        return expired();
    }
    (created_ms > meta.at_ms.saturating_add(config.idempotency_horizon_ms)).then(|| {
        reject(
            RejectionCode::ValidationFailed,
            format!("id {id} is dated more than the idempotency horizon after the ledger's clock"),
        )
    })
}

/// Routes a message to its flow. Requests that are answered to their sender
/// return the answer, which is sent after their events.
fn on_message(out: &mut Out<'_>, from: ShardId, message: &Message) {
    let state = out.state;
    match message {
        Message::CreditGrant {
            grant_id,
            user_id,
            amount,
        } => {
            let answer = grant::credit_wallet(out, grant_id, user_id, *amount);
            out.send(from, answer);
        }
        Message::GrantCredited {
            grant_id,
            result,
            position,
        } => grant::credited(out, grant_id, result, *position),

        Message::DescribeItem { bundle_id, item_id } => {
            let answer = catalogue::describe_item(state, bundle_id, item_id);
            out.send(from, answer);
        }
        Message::ItemDescribed { bundle_id, answer } => {
            catalogue::item_described(out, bundle_id, answer)
        }

        // The same request, to the sale's shard or first to the buyer's
        // (rate limits on).
        Message::ReserveSale {
            purchase_id,
            buyer_id,
            request,
            expected_price,
            at_ms,
            home,
        }
        | Message::AdmitSale {
            purchase_id,
            buyer_id,
            request,
            expected_price,
            at_ms,
            home,
        } => {
            let sale = purchase::SaleToReserve {
                purchase_id,
                buyer_id,
                expected_price: *expected_price,
                at_ms: *at_ms,
                home: *home,
            };
            if matches!(message, Message::AdmitSale { .. }) {
                purchase::admit_sale(out, &sale, request)
            } else {
                purchase::reserve_sale(out, &sale, request)
            }
        }
        Message::SaleRateLimited {
            purchase_id,
            rejection,
            retry_after_ms,
        } => purchase::rate_limited(out, purchase_id, rejection, *retry_after_ms),
        Message::ChargeBuyer {
            purchase_id,
            buyer_id,
            reservation,
            at_ms,
            home,
        } => purchase::charge_buyer(out, purchase_id, buyer_id, reservation, *at_ms, *home),
        Message::PurchasePaid {
            purchase_id,
            reservation,
            result,
            position,
        } => purchase::purchase_paid(out, purchase_id, reservation, result, *position),
        Message::Reserved {
            purchase_id,
            result,
        } => purchase::reserved(out, purchase_id, result),

        // Requests and answers of purchases in older logs (see `purchase`).
        Message::ReserveItem {
            purchase_id,
            buyer_id,
            item_id,
            expected_price,
            at_ms,
        } => {
            let result = purchase::reserve_item(
                out,
                purchase_id,
                buyer_id,
                item_id,
                None,
                *expected_price,
                *at_ms,
            );
            let purchase_id = purchase_id.clone();
            out.send(
                from,
                Message::Reserved {
                    purchase_id,
                    result,
                },
            );
        }
        Message::QuoteBundle {
            purchase_id,
            buyer_id,
            bundle_id,
            expected_price,
        } => {
            let result = purchase::quote_bundle(state, buyer_id, bundle_id, *expected_price);
            let purchase_id = purchase_id.clone();
            out.send(
                from,
                Message::Reserved {
                    purchase_id,
                    result,
                },
            );
        }
        Message::ReserveListing {
            purchase_id,
            buyer_id,
            listing_id,
            expected_price,
            reply_to,
        } => resale::forward_listing_request(
            out,
            purchase_id,
            buyer_id,
            listing_id,
            *expected_price,
            *reply_to,
        ),
        Message::ReserveListingOnItem {
            purchase_id,
            buyer_id,
            listing_id,
            item_id,
            expected_price,
            reply_to,
        } => {
            let result = resale::reserve_listing(
                out,
                purchase_id,
                buyer_id,
                listing_id,
                item_id,
                *expected_price,
            );
            let purchase_id = purchase_id.clone();
            out.send(
                *reply_to,
                Message::Reserved {
                    purchase_id,
                    result,
                },
            );
        }
        Message::DebitBuyer {
            purchase_id,
            buyer_id,
            amount,
            grant_items,
            all_or_nothing,
            at_ms,
        } => {
            let answer = purchase::debit_buyer(
                out,
                purchase_id,
                buyer_id,
                *amount,
                grant_items,
                *all_or_nothing,
                *at_ms,
            );
            out.send(from, answer);
        }
        Message::BuyerDebited {
            purchase_id,
            result,
            position,
        } => purchase::buyer_debited(out, purchase_id, result, *position),

        Message::ConfirmReservation {
            purchase_id,
            item_id,
            buyer_id,
            at_ms,
        } => purchase::confirm_reservation(out, purchase_id, item_id, buyer_id, *at_ms),
        Message::CancelReservation {
            purchase_id,
            item_id,
        } => purchase::cancel_reservation(out, purchase_id, item_id),
        Message::SettleSale {
            purchase_id,
            creator_id,
            cleared,
            creator_share,
            platform_fee,
            policy_version,
            resale,
            at_ms,
        } => purchase::settle_sale(
            out,
            purchase_id,
            creator_id,
            *cleared,
            *creator_share,
            *platform_fee,
            *policy_version,
            *resale,
            *at_ms,
        ),
        Message::CreditSeller {
            purchase_id,
            seller_id,
            amount,
        } => resale::credit_seller(out, purchase_id, seller_id, *amount),

        Message::CreateListingOnItem {
            listing_id,
            seller_id,
            item_id,
            serial,
            price,
            at_ms,
        } => {
            let answer = listing::create_on_item(
                out, listing_id, seller_id, item_id, *serial, *price, *at_ms,
            );
            out.send(from, answer);
        }
        Message::ListingResult {
            listing_id,
            result,
            position,
        } => listing::listed(out, listing_id, result, *position),
        Message::CancelListingOnItem {
            listing_id,
            item_id,
            actor,
        } => {
            let answer = listing::cancel_on_item(out, listing_id, item_id, actor);
            out.send(from, answer);
        }
        Message::CancelResult {
            listing_id,
            result,
            position,
        } => listing::cancelled(out, listing_id, result, *position),

        Message::RefundPurchase {
            refund_id,
            purchase_id,
        } => refund::refund_purchase(out, from, refund_id, purchase_id),
        Message::FreezeEscrow { purchase_id, .. } => {
            let answer = refund::freeze_escrow(out, purchase_id);
            out.send(from, answer);
        }
        Message::FreezeResult {
            purchase_id,
            result,
        } => refund::escrow_frozen(out, purchase_id, result),
        Message::RevokeSerial {
            purchase_id,
            item_id,
            serial,
            owner_id,
        } => {
            let answer = refund::revoke_serial(out, purchase_id, item_id, *serial, owner_id);
            out.send(from, answer);
        }
        Message::RevokeResult {
            purchase_id,
            result,
        } => refund::serial_revoked(out, purchase_id, result, None),
        Message::SerialRevokeAnswered {
            purchase_id,
            result,
            position,
        } => refund::serial_revoked(out, purchase_id, result, Some(*position)),
        Message::UnfreezeEscrow { purchase_id, .. } => refund::unfreeze_escrow(out, purchase_id),
        Message::ReverseEscrow {
            purchase_id,
            refund_id,
            creator_id,
        } => refund::reverse_escrow(out, purchase_id, refund_id, creator_id),
        Message::RefundBuyer {
            purchase_id,
            refund_id,
            buyer_id,
            amount,
            revoke_items,
        } => refund::refund_buyer(out, purchase_id, refund_id, buyer_id, *amount, revoke_items),
        Message::RefundResult { refund_id, result } => {
            if takedown::runs_refund(state, refund_id) {
                takedown::refund_ended(out, refund_id, result.as_ref().map(|amount| *amount));
            } else {
                refund::refund_answered(out, refund_id, result)
            }
        }
        Message::RefundSettled {
            refund_id,
            amount,
            deliveries,
        } => refund::refund_settled(out, refund_id, *amount, deliveries, &[]),
        Message::ReplicatePriceFloor {
            key,
            kind,
            version,
            price,
            effective_from_ms,
        } => {
            let answer = floors::replicate(out, key, *kind, *version, *price, *effective_from_ms);
            out.send(from, answer);
        }
        Message::PriceFloorHeld {
            key,
            version,
            position,
        } => floors::held(out, key, *version, *position),
        Message::StartTestOnItem {
            test_id,
            item_id,
            arms,
            ends_at_ms,
            actor,
            at_ms,
        } => {
            let request = price_tests::StartRequest {
                test_id,
                item_id,
                arms,
                ends_at_ms: *ends_at_ms,
                apply_winner: false,
            };
            let answer = price_tests::start_on_item(out, &request, actor, *at_ms);
            out.send(from, answer);
        }
        Message::TestStartedOnItem {
            test_id,
            result,
            position,
        } => price_tests::started_on_item(out, test_id, result, *position),
        Message::PriceTestSale {
            test_id,
            purchase_id,
            arm,
            price,
        } => price_tests::sold(out, test_id, purchase_id, *arm, *price),
        Message::CloseTestOnItem {
            test_id,
            item_id,
            apply_price,
            at_ms,
        } => price_tests::close_on_item(out, test_id, item_id, *apply_price, *at_ms),
        Message::RefundCompleted {
            refund_id,
            amount,
            deliveries,
            positions,
        } => {
            if takedown::runs_refund(state, refund_id) {
                takedown::refund_ended(out, refund_id, Ok(*amount));
            } else {
                refund::refund_settled(out, refund_id, *amount, deliveries, positions)
            }
        }
        Message::TakeDownItem { item_id, at_ms } => {
            let answer = takedown::take_down_item(out, item_id, *at_ms);
            out.send(from, answer);
        }
        Message::ItemTakenDownAnswer {
            item_id,
            result,
            position,
        } => takedown::item_taken_down(out, item_id, result, *position),
        Message::RefundItemSales { item_id } => takedown::refund_item_sales(out, from, item_id),
        Message::ContinueTakedownScan { item_id } => takedown::continue_scan(out, item_id),
        Message::RefundTakenDownSale {
            item_id,
            purchase_id,
        } => takedown::refund_taken_down_sale(out, item_id, purchase_id),
        Message::TakedownShardDone {
            item_id,
            tally,
            late,
        } => takedown::shard_done(out, from, item_id, tally, *late),

        Message::AdmitCart {
            cart_id,
            buyer_id,
            requests,
            at_ms,
            home,
        } => {
            let cart = cart::CartRequest {
                cart_id,
                buyer_id,
                at_ms: *at_ms,
                home: *home,
            };
            cart::admit_cart(out, &cart, requests)
        }
        Message::ReserveCartLine {
            cart_id,
            line,
            purchase_id,
            buyer_id,
            request,
            expected_price,
            at_ms,
            home,
        } => {
            let cart = cart::CartRequest {
                cart_id,
                buyer_id,
                at_ms: *at_ms,
                home: *home,
            };
            cart::reserve_line(out, &cart, *line, purchase_id, request, *expected_price)
        }
        Message::CartLineReserved {
            cart_id,
            line,
            result,
        } => cart::line_reserved(out, cart_id, *line, result),
        Message::ChargeCart {
            cart_id,
            buyer_id,
            lines,
            at_ms,
        } => cart::charge_cart(out, cart_id, buyer_id, lines, *at_ms, from),
        Message::CartPaid {
            cart_id,
            result,
            position,
        } => cart::cart_paid(out, cart_id, result, *position),
        Message::RecordCartLine {
            command,
            meta,
            success,
            reservation,
            ..
        } => cart::record_line(out, command, meta, success, reservation),
    }
}
