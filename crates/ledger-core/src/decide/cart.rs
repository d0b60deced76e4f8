//! Carts: up to [`CART_LINES_MAX`] items and bundles bought at once, all or
//! nothing, in one debit.
//!
//! The cart's home shard (the shard of its purchase id) asks each line's
//! item or bundle shard to reserve the line (`ReserveCartLine`; a Limited's
//! serial is held under the line's own purchase id, [`cart_line_id`]) and
//! records each answer (`command_progressed`). Once every line answered:
//!
//! * a line refused: every held serial is released (`CancelReservation`)
//!   and the cart completes with the refusal of the first refused line,
//!   its detail naming the line (`line 7: item x is sold out`). Nothing was
//!   debited.
//! * every line reserved: the buyer's shard is asked to pay their sum in
//!   one debit (`ChargeCart`: one `buyer_debited` under the cart's id,
//!   granting every line's items; a line whose items the buyer owns
//!   already refuses the cart with `already_owned`), and answers
//!   (`CartPaid`). Paid, the home shard confirms each held serial, settles
//!   each line to its creator on its own (`SettleSale` with the line's
//!   purchase id), and sends each line to its own home shard as a completed
//!   purchase (`RecordCartLine`), which a refund of the line reads there.
//!
//! With purchase rate limits on, a cart counts as one purchase request of
//! its buyer (`AdmitCart` first, as `AdmitSale` for a purchase); each of
//! its items and bundles is checked against the per-item interval.

use std::collections::BTreeSet;

use crate::ids::{ItemId, PurchaseId, ShardId, UserId};
use crate::model::*;
use crate::money::{Account, Posting};
use crate::pricing::Region;
use crate::state::CommandRecord;

use super::out::Out;
use super::saga::{self, SagaStage};
use super::{purchase, reject};

/// Refuses a cart that cannot be run: no line or more than
/// [`CART_LINES_MAX`], an item or bundle twice, a negative price, or an id
/// too long for its lines' ids (or itself a line's id).
pub(super) fn validate(cart_id: &PurchaseId, lines: &[CartLine]) -> Result<(), Rejection> {
    let invalid = |detail: String| Err(reject(RejectionCode::ValidationFailed, detail));
    if lines.is_empty() || lines.len() > CART_LINES_MAX {
        return invalid(format!(
            "a cart holds 1 to {CART_LINES_MAX} lines, not {}",
            lines.len()
        ));
    }
    if cart_id.as_str().len() > CART_ID_LENGTH_MAX {
        return invalid(format!(
            "a cart's purchase_id is at most {CART_ID_LENGTH_MAX} characters (its lines' ids \
             append .line-<n>)"
        ));
    }
    if is_cart_line_id(cart_id) {
        return invalid(format!(
            "purchase_id {cart_id} has the form of a cart line's id (<id>.line-<n>), which is \
             reserved"
        ));
    }
    let mut seen = BTreeSet::new();
    for (index, line) in lines.iter().enumerate() {
        if line.expected_price < 0 {
            return invalid(format!(
                "line {}: expected_price must not be negative",
                index + 1
            ));
        }
        if !seen.insert(&line.target) {
            return invalid(format!(
                "line {}: {} is already in the cart",
                index + 1,
                describe(&line.target)
            ));
        }
    }
    Ok(())
}

fn describe(target: &PurchaseTarget) -> String {
    match target {
        PurchaseTarget::Item(item_id) => format!("item {item_id}"),
        PurchaseTarget::Bundle(bundle_id) => format!("bundle {bundle_id}"),
    }
}

/// `PurchaseCart` accepted: each line to its item's or bundle's shard
/// (first to the buyer's shard, with purchase rate limits on).
pub(super) fn start(
    out: &mut Out<'_>,
    cart_id: &PurchaseId,
    buyer_id: &UserId,
    lines: &[CartLine],
    region: Option<&Region>,
    at_ms: TimestampMs,
) {
    let home = out.state.shard;
    let requests: Vec<(SaleRequest, i64)> = lines
        .iter()
        .map(|line| {
            (
                purchase::sale_request(&line.target, region),
                line.expected_price,
            )
        })
        .collect();
    let cart = CartRequest {
        cart_id,
        buyer_id,
        at_ms,
        home,
    };
    if !out.config.purchase_limits.enabled() {
        reserve_lines(out, &cart, &requests);
        return;
    }
    let buyer_shard = out.shard_of(&keys::user(buyer_id));
    if buyer_shard != home {
        out.send(
            buyer_shard,
            Message::AdmitCart {
                cart_id: cart_id.clone(),
                buyer_id: buyer_id.clone(),
                requests,
                at_ms,
                home,
            },
        );
        return;
    }
    if let Err((rejection, retry_after_ms)) = admit(out, &cart, &requests) {
        out.withdraw(&keys::purchase(cart_id), rejection, retry_after_ms);
    }
}

/// A cart's request, as its lines' shards and the buyer's shard get it.
pub(super) struct CartRequest<'a> {
    pub(super) cart_id: &'a PurchaseId,
    pub(super) buyer_id: &'a UserId,
    pub(super) at_ms: TimestampMs,
    /// The cart's home shard.
    pub(super) home: ShardId,
}

fn reserve_lines(out: &mut Out<'_>, cart: &CartRequest<'_>, requests: &[(SaleRequest, i64)]) {
    for (index, (request, expected_price)) in requests.iter().enumerate() {
        let to = out.shard_of(&request.subject_key());
        out.send(
            to,
            Message::ReserveCartLine {
                cart_id: cart.cart_id.clone(),
                line: u8::try_from(index).expect("a cart has at most 20 lines"),
                purchase_id: cart_line_id(cart.cart_id, index),
                buyer_id: cart.buyer_id.clone(),
                request: request.clone(),
                expected_price: *expected_price,
                at_ms: cart.at_ms,
                home: cart.home,
            },
        );
    }
}

/// On the buyer's shard: admits the cart as one purchase request (each of
/// its subjects checked against the per-item interval) and sends its lines
/// on, or returns the refusal and the wait.
fn admit(
    out: &mut Out<'_>,
    cart: &CartRequest<'_>,
    requests: &[(SaleRequest, i64)],
) -> Result<(), (Rejection, u64)> {
    let limits = out.config.purchase_limits;
    for (request, _) in requests {
        out.state
            .limits
            .check(&limits, cart.buyer_id, &request.subject_key(), cart.at_ms)
            .map_err(|over| {
                (
                    reject(RejectionCode::RateLimited, over.detail),
                    over.retry_after_ms,
                )
            })?;
    }
    out.push(Event::PurchaseAdmitted {
        buyer_id: cart.buyer_id.clone(),
        subject: keys::purchase(cart.cart_id),
        at_ms: cart.at_ms,
        expire_before_ms: limits.expire_before_ms(cart.at_ms),
    });
    reserve_lines(out, cart, requests);
    Ok(())
}

/// `AdmitCart` on the buyer's shard: admitted and sent on, or refused to
/// the cart's home before anything is reserved.
pub(super) fn admit_cart(
    out: &mut Out<'_>,
    cart: &CartRequest<'_>,
    requests: &[(SaleRequest, i64)],
) {
    if let Err((rejection, retry_after_ms)) = admit(out, cart, requests) {
        out.send(
            cart.home,
            Message::SaleRateLimited {
                purchase_id: cart.cart_id.clone(),
                rejection,
                retry_after_ms,
            },
        );
    }
}

/// On the shard of what `request` names: reserves line `line` (a serial of
/// a Limited, held for the line's purchase id) or refuses it, and answers
/// the cart's home.
pub(super) fn reserve_line(
    out: &mut Out<'_>,
    cart: &CartRequest<'_>,
    line: u8,
    line_id: &PurchaseId,
    request: &SaleRequest,
    expected_price: i64,
) {
    let result = match request {
        SaleRequest::Item(item_id) => purchase::reserve_item(
            out,
            line_id,
            cart.buyer_id,
            item_id,
            None,
            expected_price,
            cart.at_ms,
        ),
        SaleRequest::ItemInRegion { item_id, region } => purchase::reserve_item(
            out,
            line_id,
            cart.buyer_id,
            item_id,
            Some(region),
            expected_price,
            cart.at_ms,
        ),
        SaleRequest::Bundle(bundle_id) => {
            purchase::quote_bundle(out.state, cart.buyer_id, bundle_id, expected_price)
        }
        SaleRequest::Listing(_) | SaleRequest::ListingOnItem { .. } => {
            panic!("cart {} asks for a listing", cart.cart_id)
        }
    };
    out.send(
        cart.home,
        Message::CartLineReserved {
            cart_id: cart.cart_id.clone(),
            line,
            result,
        },
    );
}

/// A cart on its home shard, waiting for its lines' answers or its payment.
struct Carting<'a> {
    record: &'a CommandRecord,
    buyer_id: &'a UserId,
    lines: &'a [CartLine],
    region: Option<&'a Region>,
    answers: &'a [Option<Result<Reservation, Rejection>>],
}

impl<'a> SagaStage<'a> for Carting<'a> {
    const EXPECTED: &'static str = "a cart waiting for its lines or its payment";

    fn read(record: &'a CommandRecord) -> Option<Self> {
        match (&record.command, &record.progress, &record.completion) {
            (
                Command::PurchaseCart {
                    buyer_id,
                    lines,
                    region,
                    ..
                },
                Progress::Cart { answers },
                None,
            ) => Some(Self {
                record,
                buyer_id,
                lines,
                region: region.as_ref(),
                answers,
            }),
            _ => None,
        }
    }
}

impl Carting<'_> {
    /// Every line's reservation: the cart is waiting for its payment.
    fn reservations(&self, cart_id: &PurchaseId) -> Vec<&Reservation> {
        self.answers
            .iter()
            .map(|answer| match answer {
                Some(Ok(reservation)) => reservation,
                _ => panic!("cart {cart_id} is paid for before every line was reserved"),
            })
            .collect()
    }
}

/// Back on the cart's home: line `line` answered. Once every line has,
/// the buyer is charged, or the cart is refused and its serials released.
pub(super) fn line_reserved(
    out: &mut Out<'_>,
    cart_id: &PurchaseId,
    line: u8,
    result: &Result<Reservation, Rejection>,
) {
    let key = keys::purchase(cart_id);
    let cart: Carting = saga::stage(out.state, &key);
    let index = usize::from(line);
    assert!(
        cart.answers.get(index).is_some_and(Option::is_none),
        "line {line} of cart {cart_id} answers once"
    );
    let mut answers = cart.answers.to_vec();
    answers[index] = Some(result.clone());
    let refused = answers
        .iter()
        .enumerate()
        .find_map(|(index, answer)| match answer {
            Some(Err(rejection)) => Some((index, rejection.clone())),
            _ => None,
        });
    if answers.iter().any(Option::is_none) {
        out.push(Event::CommandProgressed {
            key,
            progress: Progress::Cart { answers },
            position: None,
        });
        return;
    }
    if let Some((index, rejection)) = refused {
        let held: Vec<(usize, &Reservation)> = answers
            .iter()
            .enumerate()
            .filter_map(|(index, answer)| match answer {
                Some(Ok(reservation)) => Some((index, reservation)),
                _ => None,
            })
            .collect();
        release_serials(out, cart_id, held);
        let rejection = reject(
            rejection.code,
            format!("line {}: {}", index + 1, rejection.detail),
        );
        return out.complete_compact(&key, Err(rejection), Vec::new());
    }
    let lines: Vec<Reservation> = answers
        .iter()
        .map(|answer| match answer {
            Some(Ok(reservation)) => reservation.clone(),
            _ => unreachable!("every line is reserved"),
        })
        .collect();
    let at_ms = cart.record.meta.at_ms;
    let buyer_id = cart.buyer_id.clone();
    out.push(Event::CommandProgressed {
        key,
        progress: Progress::Cart { answers },
        position: None,
    });
    let to = out.shard_of(&keys::user(&buyer_id));
    out.send(
        to,
        Message::ChargeCart {
            cart_id: cart_id.clone(),
            buyer_id,
            lines,
            at_ms,
        },
    );
}

/// Releases the serials held for the cart's lines `held` (line index and
/// reservation).
fn release_serials<'r>(
    out: &mut Out<'_>,
    cart_id: &PurchaseId,
    held: impl IntoIterator<Item = (usize, &'r Reservation)>,
) {
    for (index, reservation) in held {
        if let Some(item_id) = purchase::item_with_held_serial(&reservation.sale) {
            let to = out.shard_of(&keys::item(item_id));
            out.send(
                to,
                Message::CancelReservation {
                    purchase_id: cart_line_id(cart_id, index),
                    item_id: item_id.clone(),
                },
            );
        }
    }
}

/// On the buyer's shard: pays for every line in one debit and answers the
/// cart's home.
pub(super) fn charge_cart(
    out: &mut Out<'_>,
    cart_id: &PurchaseId,
    buyer_id: &UserId,
    lines: &[Reservation],
    at_ms: TimestampMs,
    home: ShardId,
) {
    let result = debit_cart(out, cart_id, buyer_id, lines, at_ms);
    let position = out.next_position();
    out.send(
        home,
        Message::CartPaid {
            cart_id: cart_id.clone(),
            result,
            position,
        },
    );
}

/// Takes the sum of the lines' prices from the buyer's wallet and grants
/// each line's items: an item line's item unless owned (then the cart is
/// refused), a bundle line's items not owned nor granted by an earlier
/// line (refused if that leaves none). Returns the balance after and the
/// items granted per line.
fn debit_cart(
    out: &mut Out<'_>,
    cart_id: &PurchaseId,
    buyer_id: &UserId,
    lines: &[Reservation],
    at_ms: TimestampMs,
) -> Result<(i64, Vec<Vec<ItemId>>), Rejection> {
    let owned = &out.state.owned_items;
    let mut granted: BTreeSet<ItemId> = BTreeSet::new();
    let mut per_line: Vec<Vec<ItemId>> = Vec::with_capacity(lines.len());
    for (index, reservation) in lines.iter().enumerate() {
        let (items, all_or_nothing) = purchase::items_granted_by(&reservation.sale);
        let mut to_grant: Vec<ItemId> = Vec::new();
        for item_id in &items {
            if !owned.owns(buyer_id, item_id)
                && !granted.contains(item_id)
                && !to_grant.contains(item_id)
            {
                to_grant.push(item_id.clone());
            }
        }
        if !items.is_empty()
            && (to_grant.is_empty() || (all_or_nothing && to_grant.len() != items.len()))
        {
            return Err(reject(
                RejectionCode::AlreadyOwned,
                format!(
                    "line {}: {buyer_id} already owns what {} sells",
                    index + 1,
                    describe_sale(&reservation.sale)
                ),
            ));
        }
        granted.extend(to_grant.iter().cloned());
        per_line.push(to_grant);
    }
    let total = lines
        .iter()
        .try_fold(0i64, |total, line| total.checked_add(line.price))
        .expect("a cart's total fits in 64 bits");
    let wallet = out.state.balance(&Account::Wallet(buyer_id.clone()));
    if wallet < total {
        return Err(reject(
            RejectionCode::InsufficientFunds,
            format!("{buyer_id} has {wallet}, cart {cart_id} costs {total}"),
        ));
    }
    let balance_after = wallet - total;
    out.push(Event::BuyerDebited {
        purchase_id: cart_id.clone(),
        buyer_id: buyer_id.clone(),
        amount: total,
        granted_items: per_line.iter().flatten().cloned().collect(),
        balance_after,
        at_ms,
        postings: vec![
            Posting::new(Account::Wallet(buyer_id.clone()), -total),
            Posting::new(Account::Clearing, total),
        ],
    });
    Ok((balance_after, per_line))
}

fn describe_sale(sale: &SaleKind) -> String {
    match sale {
        SaleKind::Item { item_id, .. } | SaleKind::Resale { item_id, .. } => {
            format!("item {item_id}")
        }
        SaleKind::Bundle { bundle_id, .. } => format!("bundle {bundle_id}"),
    }
}

/// Back on the cart's home: the buyer paid (at `position`) or refused.
/// Paid: each line's serial is confirmed, each line settled to its creator
/// and sent to its own home as a completed purchase; the cart completes
/// with every line. Refused: the serials are released.
pub(super) fn cart_paid(
    out: &mut Out<'_>,
    cart_id: &PurchaseId,
    result: &Result<(i64, Vec<Vec<ItemId>>), Rejection>,
    position: ShardPosition,
) {
    let key = keys::purchase(cart_id);
    let cart: Carting = saga::stage(out.state, &key);
    let reservations = cart.reservations(cart_id);
    let (balance_after, granted) = match result {
        Err(rejection) => {
            release_serials(out, cart_id, reservations.into_iter().enumerate());
            return out.complete_compact(&key, Err(rejection.clone()), Vec::new());
        }
        Ok((balance_after, granted)) => (*balance_after, granted),
    };
    assert_eq!(
        granted.len(),
        reservations.len(),
        "cart {cart_id} is granted line by line"
    );
    let meta = &cart.record.meta;
    let mut lines = Vec::with_capacity(reservations.len());
    for (index, ((reservation, granted_items), line)) in
        reservations.iter().zip(granted).zip(cart.lines).enumerate()
    {
        let line_id = cart_line_id(cart_id, index);
        if let Some(item_id) = purchase::item_with_held_serial(&reservation.sale) {
            let to = out.shard_of(&keys::item(item_id));
            out.send(
                to,
                Message::ConfirmReservation {
                    purchase_id: line_id.clone(),
                    item_id: item_id.clone(),
                    at_ms: meta.at_ms,
                    buyer_id: cart.buyer_id.clone(),
                },
            );
        }
        purchase::settle_primary(out, &line_id, reservation, meta.at_ms);
        super::price_tests::report_sale(out, &line_id, reservation);
        let success = purchase::purchased(reservation, balance_after, granted_items.clone());
        let Success::Purchased { target, serial, .. } = &success else {
            panic!("cart {cart_id} holds a resale");
        };
        lines.push(CartLinePurchased {
            purchase_id: line_id.clone(),
            target: target.clone(),
            price: reservation.price,
            serial: *serial,
            granted_items: granted_items.clone(),
        });
        let command = Command::Purchase {
            purchase_id: line_id.clone(),
            buyer_id: cart.buyer_id.clone(),
            target: line.target.clone(),
            expected_price: line.expected_price,
            region: cart.region.cloned(),
        };
        let to = out.shard_of(&keys::purchase(&line_id));
        out.send(
            to,
            Message::RecordCartLine {
                cart_id: cart_id.clone(),
                command: Box::new(command),
                meta: meta.clone(),
                success,
                reservation: (*reservation).clone(),
            },
        );
    }
    let total = lines.iter().map(|line| line.price).sum();
    out.complete_compact(
        &key,
        Ok(Success::CartPurchased {
            lines,
            total,
            balance_after,
        }),
        vec![position],
    );
}

/// On a line's home shard: the paid line is remembered as a completed
/// purchase under its own id, which a refund of the line reads. (An id
/// already taken, possible only for a purchase of a log older than carts
/// that used the line's id, keeps what it had.)
pub(super) fn record_line(
    out: &mut Out<'_>,
    command: &Command,
    meta: &CommandMeta,
    success: &Success,
    reservation: &Reservation,
) {
    let Command::Purchase { purchase_id, .. } = command else {
        panic!("a cart line is recorded as a purchase, not {command:?}");
    };
    let key = keys::purchase(purchase_id);
    if out.state.commands.contains_key(key.as_str()) || out.state.retention.is_forgotten(&key) {
        return;
    }
    out.push(Event::CommandAccepted {
        key: key.clone(),
        fingerprint: crate::codec::fingerprint(command),
        command: command.clone(),
        meta: meta.clone(),
    });
    out.complete_purchase(&key, success.clone(), Vec::new(), reservation);
    if let SaleKind::Item { item_id, .. } = &reservation.sale {
        super::takedown::line_recorded(out, purchase_id, item_id);
    }
}

/// On the cart's home: the buyer's shard refused the cart under its rate
/// limits before anything was reserved. Answered, then forgotten.
pub(super) fn rate_limited(
    out: &mut Out<'_>,
    cart_id: &PurchaseId,
    rejection: &Rejection,
    retry_after_ms: u64,
) {
    let key = keys::purchase(cart_id);
    let cart: Carting = saga::stage(out.state, &key);
    assert!(
        cart.answers.iter().all(Option::is_none),
        "a rate-limited cart reserved nothing"
    );
    out.withdraw(&key, rejection.clone(), retry_after_ms);
}
