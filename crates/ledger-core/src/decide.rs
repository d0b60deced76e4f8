//! `decide`: what an input means for a shard, as events (or a refusal).
//! Pure and deterministic: time and ids arrive on the input.

use std::collections::BTreeSet;

use crate::codec::fingerprint;
use crate::ids::{ItemId, PurchaseId, ShardId, UserId};
use crate::model::*;
use crate::money::{Account, Posting};
use crate::state::{Config, ShardState};

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
        message: Message,
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

/// Builds the events of one decision, predicting sequence numbers.
struct Out<'a> {
    state: &'a ShardState,
    config: &'a Config,
    events: Vec<Event>,
    sent: std::collections::BTreeMap<ShardId, u64>,
    /// Messages sent by this decision.
    deliveries: Vec<DeliveryMark>,
}

impl<'a> Out<'a> {
    fn new(state: &'a ShardState, config: &'a Config) -> Self {
        Self {
            state,
            config,
            events: Vec::new(),
            sent: Default::default(),
            deliveries: Vec::new(),
        }
    }

    /// Position the next pushed event will have.
    fn next_position(&self) -> ShardPosition {
        ShardPosition {
            shard: self.state.shard,
            sequence: self.state.next_sequence + self.events.len() as u64,
        }
    }

    fn push(&mut self, event: Event) -> ShardPosition {
        let position = self.next_position();
        self.events.push(event);
        position
    }

    /// Sends `message`; returns the mark a read can wait on for its effects.
    fn send(&mut self, to: ShardId, message: Message) -> DeliveryMark {
        let offset = self.sent.entry(to).or_insert(0);
        let sequence = self.state.next_outbound(to) + *offset;
        *offset += 1;
        let mark = DeliveryMark {
            from: self.state.shard,
            to,
            sequence,
        };
        self.deliveries.push(mark);
        self.events.push(Event::MessageSent {
            to,
            sequence,
            message,
        });
        mark
    }

    fn shard_of(&self, key: &str) -> ShardId {
        self.config.shard_of(key)
    }

    /// Completes the command `key`. The completion covers `positions`, the
    /// positions its participants reported, this event, and the consumption
    /// of every message this decision sent (effects that follow completion).
    fn complete(
        &mut self,
        key: &str,
        result: Result<Success, Rejection>,
        positions: Vec<ShardPosition>,
    ) {
        self.complete_with(key, result, positions, Vec::new());
    }

    fn complete_with(
        &mut self,
        key: &str,
        result: Result<Success, Rejection>,
        mut positions: Vec<ShardPosition>,
        mut deliveries: Vec<DeliveryMark>,
    ) {
        if let Some(record) = self.state.commands.get(key) {
            positions.extend(record.positions.iter().copied());
        }
        positions.push(self.next_position());
        positions.sort();
        positions.dedup();
        deliveries.extend(self.deliveries.iter().copied());
        deliveries.sort();
        deliveries.dedup();
        let completion = Completion {
            result,
            positions,
            deliveries,
        };
        self.push(Event::CommandCompleted {
            key: key.to_string(),
            completion,
        });
    }

    fn apply(self, answer: Answer) -> Decision {
        Decision::Apply {
            events: self.events,
            answer,
        }
    }
}

fn reject(code: RejectionCode, detail: impl Into<String>) -> Rejection {
    Rejection::new(code, detail)
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
            for (release_at_ms, purchase_id) in state.escrow_due.iter() {
                if *release_at_ms > *now_ms || out.events.len() >= config.releases_per_tick_max {
                    break;
                }
                let entry = &state.escrow[purchase_id];
                if entry.frozen {
                    continue;
                }
                let amount = entry.creator_share;
                let creator = entry.creator_id.clone();
                out.push(Event::EscrowReleased {
                    purchase_id: purchase_id.clone(),
                    creator_id: creator.clone(),
                    amount,
                    postings: vec![
                        Posting::new(Account::Pending(creator.clone()), -amount),
                        Posting::new(Account::Wallet(creator), amount),
                    ],
                });
            }
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
    let mut out = Out::new(state, config);
    match command {
        Command::Reprice { item_id, price } => {
            return match check_item_owner(state, item_id, &meta.actor) {
                Err(rejection) => Decision::Refuse(rejection),
                Ok(item) => {
                    let position = out.push(Event::ItemRepriced {
                        item_id: item_id.clone(),
                        price: *price,
                    });
                    let success = Success::ItemUpdated {
                        price: *price,
                        on_sale: item.on_sale,
                    };
                    out.apply(Answer::Now(Completion {
                        result: Ok(success),
                        positions: vec![position],
                        deliveries: Vec::new(),
                    }))
                }
            };
        }
        Command::SetOnSale { item_id, on_sale } => {
            return match check_item_owner(state, item_id, &meta.actor) {
                Err(rejection) => Decision::Refuse(rejection),
                Ok(item) => {
                    let position = out.push(Event::ItemSaleToggled {
                        item_id: item_id.clone(),
                        on_sale: *on_sale,
                    });
                    let success = Success::ItemUpdated {
                        price: item.price,
                        on_sale: *on_sale,
                    };
                    out.apply(Answer::Now(Completion {
                        result: Ok(success),
                        positions: vec![position],
                        deliveries: Vec::new(),
                    }))
                }
            };
        }
        Command::CancelListing { listing_id } => {
            let key = format!("cancel:{listing_id}");
            if let Some(record) = state.commands.get(&key) {
                if record.completion.is_none() {
                    return Decision::Apply {
                        events: Vec::new(),
                        answer: Answer::OnCompletion(key),
                    };
                }
            }
            let Some(item_id) = state.listing_directory.get(listing_id) else {
                return Decision::Refuse(reject(
                    RejectionCode::NotFound,
                    format!("listing {listing_id} does not exist"),
                ));
            };
            out.push(Event::CommandAccepted {
                key: key.clone(),
                fingerprint: 0,
                command: command.clone(),
                meta: meta.clone(),
            });
            let to = out.shard_of(&keys::item(item_id));
            out.send(
                to,
                Message::CancelListingOnItem {
                    listing_id: listing_id.clone(),
                    item_id: item_id.clone(),
                    actor: meta.actor.clone(),
                },
            );
            return out.apply(Answer::OnCompletion(key));
        }
        _ => {}
    }

    let key = command
        .idempotency_key()
        .expect("every other command carries its id");
    let command_fingerprint = fingerprint(command);
    if let Some(record) = state.commands.get(&key) {
        if record.fingerprint != command_fingerprint {
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
    out.push(Event::CommandAccepted {
        key: key.clone(),
        fingerprint: command_fingerprint,
        command: command.clone(),
        meta: meta.clone(),
    });
    match command {
        Command::Grant {
            grant_id,
            user_id,
            amount,
        } => {
            let to = out.shard_of(&keys::user(user_id));
            out.send(
                to,
                Message::CreditGrant {
                    grant_id: grant_id.clone(),
                    user_id: user_id.clone(),
                    amount: *amount,
                },
            );
        }
        Command::PublishItem(definition) => {
            let position = out.push(Event::ItemPublished {
                definition: definition.clone(),
            });
            out.complete(&key, Ok(Success::ItemPublished), vec![position]);
        }
        Command::CreateBundle {
            bundle_id,
            item_ids,
            ..
        } => {
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
        Command::Purchase {
            purchase_id,
            buyer_id,
            target,
            expected_price,
        } => match target {
            PurchaseTarget::Item(item_id) => {
                let to = out.shard_of(&keys::item(item_id));
                out.send(
                    to,
                    Message::ReserveItem {
                        purchase_id: purchase_id.clone(),
                        buyer_id: buyer_id.clone(),
                        item_id: item_id.clone(),
                        expected_price: *expected_price,
                        at_ms: meta.at_ms,
                    },
                );
            }
            PurchaseTarget::Bundle(bundle_id) => {
                let to = out.shard_of(&keys::bundle(bundle_id));
                out.send(
                    to,
                    Message::QuoteBundle {
                        purchase_id: purchase_id.clone(),
                        buyer_id: buyer_id.clone(),
                        bundle_id: bundle_id.clone(),
                        expected_price: *expected_price,
                    },
                );
            }
        },
        Command::ResalePurchase {
            purchase_id,
            buyer_id,
            listing_id,
            expected_price,
        } => {
            let to = out.shard_of(&keys::listing(listing_id));
            out.send(
                to,
                Message::ReserveListing {
                    purchase_id: purchase_id.clone(),
                    buyer_id: buyer_id.clone(),
                    listing_id: listing_id.clone(),
                    expected_price: *expected_price,
                    reply_to: state.shard,
                },
            );
        }
        Command::CreateListing {
            listing_id,
            seller_id,
            item_id,
            serial,
            price,
        } => {
            let to = out.shard_of(&keys::item(item_id));
            out.send(
                to,
                Message::CreateListingOnItem {
                    listing_id: listing_id.clone(),
                    seller_id: seller_id.clone(),
                    item_id: item_id.clone(),
                    serial: *serial,
                    price: *price,
                    at_ms: meta.at_ms,
                },
            );
        }
        Command::Refund {
            refund_id,
            purchase_id,
        } => {
            let to = out.shard_of(&keys::purchase(purchase_id));
            out.send(
                to,
                Message::RefundPurchase {
                    refund_id: refund_id.clone(),
                    purchase_id: purchase_id.clone(),
                },
            );
        }
        Command::Reprice { .. } | Command::SetOnSale { .. } | Command::CancelListing { .. } => {
            unreachable!()
        }
    }
    out.apply(Answer::OnCompletion(key))
}

fn check_item_owner<'a>(
    state: &'a ShardState,
    item_id: &ItemId,
    actor: &Actor,
) -> Result<&'a crate::state::ItemState, Rejection> {
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
    Ok(item)
}

fn record<'a>(out: &Out<'a>, key: &str) -> &'a crate::state::CommandRecord {
    out.state
        .commands
        .get(key)
        .expect("a reply refers to a command of this shard")
}

fn on_message(out: &mut Out<'_>, from: ShardId, message: &Message) {
    let state = out.state;
    let config = out.config;
    match message {
        // ------------------------------------------------------ grants
        Message::CreditGrant {
            grant_id,
            user_id,
            amount,
        } => {
            let wallet = state.balance(&Account::Wallet(user_id.clone()));
            let result = match wallet
                .checked_add(*amount)
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
                        amount: *amount,
                        balance_after,
                        postings: vec![
                            Posting::new(Account::Issuance, -amount),
                            Posting::new(Account::Wallet(user_id.clone()), *amount),
                        ],
                    });
                    Ok(balance_after)
                }
            };
            let position = out.next_position();
            out.send(
                from,
                Message::GrantCredited {
                    grant_id: grant_id.clone(),
                    result,
                    position,
                },
            );
        }
        Message::GrantCredited {
            grant_id,
            result,
            position,
        } => {
            let result = result
                .clone()
                .map(|balance_after| Success::Granted { balance_after });
            out.complete(&keys::grant(grant_id), result, vec![*position]);
        }

        // ------------------------------------------------------ bundles
        Message::DescribeItem { bundle_id, item_id } => {
            let answer = match state.items.get(item_id) {
                None => Err(item_id.clone()),
                Some(item) => Ok(ItemDescription {
                    item_id: item_id.clone(),
                    creator_id: item.definition.creator_id.clone(),
                    limited: item.is_limited(),
                }),
            };
            out.send(
                from,
                Message::ItemDescribed {
                    bundle_id: bundle_id.clone(),
                    answer,
                },
            );
        }
        Message::ItemDescribed { bundle_id, answer } => {
            let key = keys::bundle(bundle_id);
            let record = record(out, &key);
            let Progress::Describing { answers, expected } = &record.progress else {
                panic!("item description for a bundle that is not being described");
            };
            let mut answers = answers.clone();
            answers.push(answer.clone());
            if (answers.len() as u32) < *expected {
                out.push(Event::CommandProgressed {
                    key,
                    progress: Progress::Describing {
                        answers,
                        expected: *expected,
                    },
                    position: None,
                });
                return;
            }
            let Command::CreateBundle {
                bundle_id,
                creator_id,
                name,
                item_ids,
                price,
            } = &record.command
            else {
                panic!("bundle key holds a bundle command");
            };
            let mut result = Ok(());
            for answer in &answers {
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
            match result {
                Ok(()) => {
                    let position = out.push(Event::BundleCreated {
                        bundle_id: bundle_id.clone(),
                        creator_id: creator_id.clone(),
                        name: name.clone(),
                        item_ids: item_ids.clone(),
                        price: *price,
                    });
                    out.complete(&key, Ok(Success::BundleCreated), vec![position]);
                }
                Err(rejection) => out.complete(&key, Err(rejection), Vec::new()),
            }
        }

        // ------------------------------------------------------ reservations
        Message::ReserveItem {
            purchase_id,
            buyer_id,
            item_id,
            expected_price,
            at_ms,
        } => {
            let result = reserve_item(out, purchase_id, buyer_id, item_id, *expected_price, *at_ms);
            out.send(
                from,
                Message::Reserved {
                    purchase_id: purchase_id.clone(),
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
            let result = match state.bundles.get(bundle_id) {
                None => Err(reject(
                    RejectionCode::NotFound,
                    format!("bundle {bundle_id} does not exist"),
                )),
                Some(bundle) if &bundle.creator_id == buyer_id => Err(reject(
                    RejectionCode::PurchaserIsSeller,
                    format!("{buyer_id} created bundle {bundle_id}"),
                )),
                Some(bundle) if bundle.price != *expected_price => Err(reject(
                    RejectionCode::PriceChanged,
                    format!(
                        "bundle {bundle_id} costs {}, not {expected_price}",
                        bundle.price
                    ),
                )),
                Some(bundle) => Ok(Reservation {
                    price: bundle.price,
                    creator_id: bundle.creator_id.clone(),
                    sale: SaleKind::Bundle {
                        bundle_id: bundle_id.clone(),
                        item_ids: bundle.item_ids.clone(),
                    },
                }),
            };
            out.send(
                from,
                Message::Reserved {
                    purchase_id: purchase_id.clone(),
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
        } => match state.listing_directory.get(listing_id) {
            None => {
                let result = Err(reject(
                    RejectionCode::NotFound,
                    format!("listing {listing_id} does not exist"),
                ));
                out.send(
                    *reply_to,
                    Message::Reserved {
                        purchase_id: purchase_id.clone(),
                        result,
                    },
                );
            }
            Some(item_id) => {
                let to = out.shard_of(&keys::item(item_id));
                out.send(
                    to,
                    Message::ReserveListingOnItem {
                        purchase_id: purchase_id.clone(),
                        buyer_id: buyer_id.clone(),
                        listing_id: listing_id.clone(),
                        item_id: item_id.clone(),
                        expected_price: *expected_price,
                        reply_to: *reply_to,
                    },
                );
            }
        },
        Message::ReserveListingOnItem {
            purchase_id,
            buyer_id,
            listing_id,
            item_id,
            expected_price,
            reply_to,
        } => {
            let item = &state.items[item_id];
            let result = match item.listings.get(listing_id) {
                Some(listing) if listing.reserved_by.is_none() => {
                    if &listing.seller_id == buyer_id {
                        Err(reject(
                            RejectionCode::PurchaserIsSeller,
                            format!("{buyer_id} is the seller of listing {listing_id}"),
                        ))
                    } else if listing.price != *expected_price {
                        Err(reject(
                            RejectionCode::PriceChanged,
                            format!(
                                "listing {listing_id} costs {}, not {expected_price}",
                                listing.price
                            ),
                        ))
                    } else {
                        out.push(Event::ListingReserved {
                            listing_id: listing_id.clone(),
                            item_id: item_id.clone(),
                            purchase_id: purchase_id.clone(),
                        });
                        Ok(Reservation {
                            price: listing.price,
                            creator_id: item.definition.creator_id.clone(),
                            sale: SaleKind::Resale {
                                listing_id: listing_id.clone(),
                                item_id: item_id.clone(),
                                serial: listing.serial,
                                seller_id: listing.seller_id.clone(),
                            },
                        })
                    }
                }
                _ => Err(reject(
                    RejectionCode::ListingUnavailable,
                    format!("listing {listing_id} is no longer available"),
                )),
            };
            out.send(
                *reply_to,
                Message::Reserved {
                    purchase_id: purchase_id.clone(),
                    result,
                },
            );
        }
        Message::Reserved {
            purchase_id,
            result,
        } => {
            let key = keys::purchase(purchase_id);
            let record = record(out, &key);
            let buyer_id = match &record.command {
                Command::Purchase { buyer_id, .. } | Command::ResalePurchase { buyer_id, .. } => {
                    buyer_id.clone()
                }
                _ => panic!("purchase key holds a purchase command"),
            };
            match result {
                Err(rejection) => out.complete(&key, Err(rejection.clone()), Vec::new()),
                Ok(reservation) => {
                    let (grant_items, all_or_nothing) = match &reservation.sale {
                        SaleKind::Item {
                            item_id,
                            serial: None,
                        } => (vec![item_id.clone()], true),
                        SaleKind::Item {
                            serial: Some(_), ..
                        }
                        | SaleKind::Resale { .. } => (Vec::new(), true),
                        SaleKind::Bundle { item_ids, .. } => (item_ids.clone(), false),
                    };
                    out.push(Event::CommandProgressed {
                        key,
                        progress: Progress::Debiting {
                            reservation: reservation.clone(),
                        },
                        position: None,
                    });
                    let to = out.shard_of(&keys::user(&buyer_id));
                    out.send(
                        to,
                        Message::DebitBuyer {
                            purchase_id: purchase_id.clone(),
                            buyer_id,
                            amount: reservation.price,
                            grant_items,
                            all_or_nothing,
                            at_ms: record.meta.at_ms,
                        },
                    );
                }
            }
        }

        // ------------------------------------------------------ payment
        Message::DebitBuyer {
            purchase_id,
            buyer_id,
            amount,
            grant_items,
            all_or_nothing,
            at_ms,
        } => {
            let owned = state.owned_items.get(buyer_id);
            let mut to_grant: Vec<ItemId> = Vec::new();
            for item_id in grant_items {
                if !owned.is_some_and(|owned| owned.contains(item_id))
                    && !to_grant.contains(item_id)
                {
                    to_grant.push(item_id.clone());
                }
            }
            let wallet = state.balance(&Account::Wallet(buyer_id.clone()));
            let result = if !grant_items.is_empty()
                && (to_grant.is_empty() || (*all_or_nothing && to_grant.len() != grant_items.len()))
            {
                Err(reject(
                    RejectionCode::AlreadyOwned,
                    format!("{buyer_id} already owns what purchase {purchase_id} sells"),
                ))
            } else if wallet < *amount {
                Err(reject(
                    RejectionCode::InsufficientFunds,
                    format!("{buyer_id} has {wallet}, needs {amount}"),
                ))
            } else {
                let balance_after = wallet - amount;
                out.push(Event::BuyerDebited {
                    purchase_id: purchase_id.clone(),
                    buyer_id: buyer_id.clone(),
                    amount: *amount,
                    granted_items: to_grant.clone(),
                    balance_after,
                    at_ms: *at_ms,
                    postings: vec![
                        Posting::new(Account::Wallet(buyer_id.clone()), -amount),
                        Posting::new(Account::Clearing, *amount),
                    ],
                });
                Ok((balance_after, to_grant))
            };
            let position = out.next_position();
            out.send(
                from,
                Message::BuyerDebited {
                    purchase_id: purchase_id.clone(),
                    result,
                    position,
                },
            );
        }
        Message::BuyerDebited {
            purchase_id,
            result,
            position,
        } => on_buyer_debited(out, purchase_id, result, *position),

        // ------------------------------------------------------ item shard follow-ups
        Message::ConfirmReservation {
            purchase_id,
            item_id,
            buyer_id,
            at_ms,
        } => {
            let item = &state.items[item_id];
            if let Some((serial, buyer_id)) = item.reservations.get(purchase_id) {
                out.push(Event::SerialSold {
                    item_id: item_id.clone(),
                    serial: *serial,
                    purchase_id: purchase_id.clone(),
                    buyer_id: buyer_id.clone(),
                    at_ms: *at_ms,
                });
            } else {
                let (listing_id, listing) = item
                    .listings
                    .iter()
                    .find(|(_, listing)| listing.reserved_by.as_ref() == Some(purchase_id))
                    .expect("a confirmed purchase holds a reservation");
                out.push(Event::SerialTransferred {
                    item_id: item_id.clone(),
                    serial: listing.serial,
                    listing_id: listing_id.clone(),
                    purchase_id: purchase_id.clone(),
                    from_user_id: listing.seller_id.clone(),
                    to_user_id: buyer_id.clone(),
                    price: listing.price,
                    at_ms: *at_ms,
                });
            }
        }
        Message::CancelReservation {
            purchase_id,
            item_id,
        } => {
            let item = &state.items[item_id];
            if let Some((serial, _)) = item.reservations.get(purchase_id) {
                out.push(Event::ReservationCancelled {
                    item_id: item_id.clone(),
                    serial: *serial,
                    purchase_id: purchase_id.clone(),
                });
            } else {
                let (listing_id, _) = item
                    .listings
                    .iter()
                    .find(|(_, listing)| listing.reserved_by.as_ref() == Some(purchase_id))
                    .expect("a cancelled purchase holds a reservation");
                out.push(Event::ListingReservationCancelled {
                    listing_id: listing_id.clone(),
                    item_id: item_id.clone(),
                    purchase_id: purchase_id.clone(),
                });
            }
        }
        Message::SettleSale {
            purchase_id,
            creator_id,
            cleared,
            creator_share,
            platform_fee,
            policy_version,
            resale,
            at_ms,
        } => {
            assert_eq!(
                *cleared,
                creator_share + platform_fee,
                "a settlement clears what it splits"
            );
            out.push(Event::SaleSettled {
                purchase_id: purchase_id.clone(),
                creator_id: creator_id.clone(),
                resale: *resale,
                cleared: *cleared,
                creator_share: *creator_share,
                platform_fee: *platform_fee,
                policy_version: *policy_version,
                release_at_ms: at_ms.saturating_add(config.escrow_hold_ms),
                postings: vec![
                    Posting::new(Account::Clearing, -cleared),
                    Posting::new(Account::Pending(creator_id.clone()), *creator_share),
                    Posting::new(Account::Fees, *platform_fee),
                ],
            });
        }
        Message::CreditSeller {
            purchase_id,
            seller_id,
            amount,
        } => {
            let balance_after = state.balance(&Account::Wallet(seller_id.clone())) + amount;
            out.push(Event::SellerCredited {
                purchase_id: purchase_id.clone(),
                seller_id: seller_id.clone(),
                amount: *amount,
                balance_after,
                postings: vec![
                    Posting::new(Account::Clearing, -amount),
                    Posting::new(Account::Wallet(seller_id.clone()), *amount),
                ],
            });
        }

        // ------------------------------------------------------ listings
        Message::CreateListingOnItem {
            listing_id,
            seller_id,
            item_id,
            serial,
            price,
            at_ms,
        } => {
            let result =
                create_listing(out, listing_id, seller_id, item_id, *serial, *price, *at_ms);
            let position = out.next_position();
            out.send(
                from,
                Message::ListingResult {
                    listing_id: listing_id.clone(),
                    result,
                    position,
                },
            );
        }
        Message::ListingResult {
            listing_id,
            result,
            position,
        } => {
            let key = keys::listing(listing_id);
            match result {
                Ok(()) => {
                    let Command::CreateListing { item_id, .. } = &record(out, &key).command else {
                        panic!("listing key holds a listing command");
                    };
                    out.push(Event::ListingRegistered {
                        listing_id: listing_id.clone(),
                        item_id: item_id.clone(),
                    });
                    out.complete(&key, Ok(Success::ListingCreated), vec![*position]);
                }
                Err(rejection) => out.complete(&key, Err(rejection.clone()), Vec::new()),
            }
        }
        Message::CancelListingOnItem {
            listing_id,
            item_id,
            actor,
        } => {
            let item = &state.items[item_id];
            let result = match item.listings.get(listing_id) {
                Some(listing) if !actor.may_act_as(&listing.seller_id) => Err(reject(
                    RejectionCode::Forbidden,
                    format!("listing {listing_id} belongs to another seller"),
                )),
                Some(listing) if listing.reserved_by.is_some() => Err(reject(
                    RejectionCode::ListingUnavailable,
                    format!("listing {listing_id} is being bought"),
                )),
                Some(listing) => {
                    out.push(Event::ListingEnded {
                        listing_id: listing_id.clone(),
                        item_id: item_id.clone(),
                        serial: listing.serial,
                        reason: ListingEndReason::Cancelled,
                    });
                    Ok(())
                }
                None => match item.ended_listings.get(listing_id) {
                    Some(ListingEndReason::Cancelled) => Ok(()),
                    _ => Err(reject(
                        RejectionCode::ListingUnavailable,
                        format!("listing {listing_id} is no longer available"),
                    )),
                },
            };
            let position = out.next_position();
            out.send(
                from,
                Message::CancelResult {
                    listing_id: listing_id.clone(),
                    result,
                    position,
                },
            );
        }
        Message::CancelResult {
            listing_id,
            result,
            position,
        } => {
            let key = format!("cancel:{listing_id}");
            out.complete(
                &key,
                result.clone().map(|()| Success::ListingCancelled),
                vec![*position],
            );
        }

        // ------------------------------------------------------ refunds
        Message::RefundPurchase {
            refund_id,
            purchase_id,
        } => {
            let key = keys::purchase(purchase_id);
            let problem = match state.commands.get(&key) {
                None => Some(reject(
                    RejectionCode::NotFound,
                    format!("purchase {purchase_id} does not exist"),
                )),
                Some(record) => match (&record.completion, &record.progress) {
                    (
                        Some(Completion { result: Ok(_), .. }),
                        Progress::Debiting { reservation },
                    ) => match &reservation.sale {
                        SaleKind::Resale { .. } => Some(reject(
                            RejectionCode::NotRefundable,
                            format!("purchase {purchase_id} is a resale"),
                        )),
                        _ if state.refunds.contains_key(purchase_id) => Some(reject(
                            RejectionCode::AlreadyRefunded,
                            format!("purchase {purchase_id} was already refunded"),
                        )),
                        _ => {
                            out.push(Event::RefundProgressed {
                                purchase_id: purchase_id.clone(),
                                progress: RefundProgress::Freezing {
                                    refund_id: refund_id.clone(),
                                    reply_to: from,
                                },
                            });
                            let to = out.shard_of(&keys::user(&reservation.creator_id));
                            out.send(
                                to,
                                Message::FreezeEscrow {
                                    purchase_id: purchase_id.clone(),
                                    creator_id: reservation.creator_id.clone(),
                                },
                            );
                            None
                        }
                    },
                    _ => Some(reject(
                        RejectionCode::NotFound,
                        format!("purchase {purchase_id} did not complete"),
                    )),
                },
            };
            if let Some(rejection) = problem {
                out.send(
                    from,
                    Message::RefundResult {
                        refund_id: refund_id.clone(),
                        result: Err(rejection),
                    },
                );
            }
        }
        Message::FreezeEscrow { purchase_id, .. } => {
            let result = match state.escrow.get(purchase_id) {
                Some(entry) if !entry.frozen => {
                    out.push(Event::EscrowFrozen {
                        purchase_id: purchase_id.clone(),
                    });
                    Ok(())
                }
                _ => Err(reject(
                    RejectionCode::RefundWindowClosed,
                    format!("earnings of purchase {purchase_id} were already released"),
                )),
            };
            out.send(
                from,
                Message::FreezeResult {
                    purchase_id: purchase_id.clone(),
                    result,
                },
            );
        }
        Message::FreezeResult {
            purchase_id,
            result,
        } => {
            let (refund_id, reply_to) = match &state.refunds[purchase_id] {
                RefundProgress::Freezing {
                    refund_id,
                    reply_to,
                } => (refund_id.clone(), *reply_to),
                other => panic!("freeze result while refund is {other:?}"),
            };
            let reservation = purchase_reservation(state, purchase_id);
            match result {
                Err(rejection) => {
                    out.push(Event::RefundProgressed {
                        purchase_id: purchase_id.clone(),
                        progress: RefundProgress::Abandoned,
                    });
                    out.send(
                        reply_to,
                        Message::RefundResult {
                            refund_id,
                            result: Err(rejection.clone()),
                        },
                    );
                }
                Ok(()) => match &reservation.sale {
                    SaleKind::Item {
                        item_id,
                        serial: Some(serial),
                    } => {
                        out.push(Event::RefundProgressed {
                            purchase_id: purchase_id.clone(),
                            progress: RefundProgress::Revoking {
                                refund_id,
                                reply_to,
                            },
                        });
                        let to = out.shard_of(&keys::item(item_id));
                        let owner_id = purchase_buyer(state, purchase_id);
                        out.send(
                            to,
                            Message::RevokeSerial {
                                purchase_id: purchase_id.clone(),
                                item_id: item_id.clone(),
                                serial: *serial,
                                owner_id,
                            },
                        );
                    }
                    _ => finish_refund(out, purchase_id, refund_id, reply_to),
                },
            }
        }
        Message::RevokeSerial {
            purchase_id,
            item_id,
            serial,
            owner_id,
        } => {
            let item = &state.items[item_id];
            let listed_and_reserved = item
                .listing_by_serial
                .get(serial)
                .is_some_and(|listing_id| item.listings[listing_id].reserved_by.is_some());
            let result = match item.holders.get(serial) {
                Some(holder) if &holder.user_id == owner_id && &holder.purchase_id == purchase_id && !listed_and_reserved => {
                    out.push(Event::SerialRevoked { item_id: item_id.clone(), serial: *serial, purchase_id: purchase_id.clone(), owner_id: owner_id.clone() });
                    Ok(())
                }
                _ => Err(reject(RejectionCode::NotRefundable, format!("serial {serial} of item {item_id} has moved on since purchase {purchase_id}"))),
            };
            out.send(
                from,
                Message::RevokeResult {
                    purchase_id: purchase_id.clone(),
                    result,
                },
            );
        }
        Message::RevokeResult {
            purchase_id,
            result,
        } => {
            let (refund_id, reply_to) = match &state.refunds[purchase_id] {
                RefundProgress::Revoking {
                    refund_id,
                    reply_to,
                } => (refund_id.clone(), *reply_to),
                other => panic!("revoke result while refund is {other:?}"),
            };
            match result {
                Err(rejection) => {
                    let reservation = purchase_reservation(state, purchase_id);
                    out.push(Event::RefundProgressed {
                        purchase_id: purchase_id.clone(),
                        progress: RefundProgress::Abandoned,
                    });
                    let to = out.shard_of(&keys::user(&reservation.creator_id));
                    out.send(
                        to,
                        Message::UnfreezeEscrow {
                            purchase_id: purchase_id.clone(),
                            creator_id: reservation.creator_id.clone(),
                        },
                    );
                    out.send(
                        reply_to,
                        Message::RefundResult {
                            refund_id,
                            result: Err(rejection.clone()),
                        },
                    );
                }
                Ok(()) => finish_refund(out, purchase_id, refund_id, reply_to),
            }
        }
        Message::UnfreezeEscrow { purchase_id, .. } => {
            out.push(Event::EscrowUnfrozen {
                purchase_id: purchase_id.clone(),
            });
        }
        Message::ReverseEscrow {
            purchase_id,
            refund_id,
            creator_id,
        } => {
            let entry = &state.escrow[purchase_id];
            let cleared = entry.creator_share + entry.platform_fee;
            out.push(Event::EscrowReversed {
                purchase_id: purchase_id.clone(),
                refund_id: refund_id.clone(),
                creator_id: creator_id.clone(),
                creator_share: entry.creator_share,
                platform_fee: entry.platform_fee,
                postings: vec![
                    Posting::new(Account::Pending(creator_id.clone()), -entry.creator_share),
                    Posting::new(Account::Fees, -entry.platform_fee),
                    Posting::new(Account::Clearing, cleared),
                ],
            });
        }
        Message::RefundBuyer {
            purchase_id,
            refund_id,
            buyer_id,
            amount,
            revoke_items,
        } => {
            let balance_after = state.balance(&Account::Wallet(buyer_id.clone())) + amount;
            out.push(Event::BuyerRefunded {
                purchase_id: purchase_id.clone(),
                refund_id: refund_id.clone(),
                buyer_id: buyer_id.clone(),
                amount: *amount,
                revoked_items: revoke_items.clone(),
                balance_after,
                postings: vec![
                    Posting::new(Account::Clearing, -amount),
                    Posting::new(Account::Wallet(buyer_id.clone()), *amount),
                ],
            });
        }
        Message::RefundResult { refund_id, result } => {
            let key = keys::refund(refund_id);
            let Command::Refund { purchase_id, .. } = &record(out, &key).command else {
                panic!("refund key holds a refund command");
            };
            let result = result.clone().map(|amount| Success::Refunded {
                purchase_id: purchase_id.clone(),
                amount,
            });
            out.complete(&key, result, Vec::new());
        }
        Message::RefundSettled {
            refund_id,
            amount,
            deliveries,
        } => {
            let key = keys::refund(refund_id);
            let Command::Refund { purchase_id, .. } = &record(out, &key).command else {
                panic!("refund key holds a refund command");
            };
            let success = Success::Refunded {
                purchase_id: purchase_id.clone(),
                amount: *amount,
            };
            out.complete_with(&key, Ok(success), Vec::new(), deliveries.clone());
        }
    }
}

fn purchase_reservation<'a>(state: &'a ShardState, purchase_id: &PurchaseId) -> &'a Reservation {
    match &state.commands[&keys::purchase(purchase_id)].progress {
        Progress::Debiting { reservation } => reservation,
        other => panic!("purchase {purchase_id} has no reservation: {other:?}"),
    }
}

fn purchase_buyer(state: &ShardState, purchase_id: &PurchaseId) -> UserId {
    match &state.commands[&keys::purchase(purchase_id)].command {
        Command::Purchase { buyer_id, .. } | Command::ResalePurchase { buyer_id, .. } => {
            buyer_id.clone()
        }
        other => panic!("purchase key holds {other:?}"),
    }
}

fn finish_refund(
    out: &mut Out<'_>,
    purchase_id: &PurchaseId,
    refund_id: crate::ids::RefundId,
    reply_to: ShardId,
) {
    let state = out.state;
    let reservation = purchase_reservation(state, purchase_id).clone();
    let buyer_id = purchase_buyer(state, purchase_id);
    let completion = state.commands[&keys::purchase(purchase_id)]
        .completion
        .as_ref()
        .expect("refunded purchase completed");
    let revoke_items = match &completion.result {
        Ok(Success::Purchased { granted_items, .. }) => granted_items.clone(),
        other => panic!("refunded purchase succeeded: {other:?}"),
    };
    out.push(Event::RefundProgressed {
        purchase_id: purchase_id.clone(),
        progress: RefundProgress::Refunded {
            refund_id: refund_id.clone(),
        },
    });
    let creator_shard = out.shard_of(&keys::user(&reservation.creator_id));
    let reversal = out.send(
        creator_shard,
        Message::ReverseEscrow {
            purchase_id: purchase_id.clone(),
            refund_id: refund_id.clone(),
            creator_id: reservation.creator_id.clone(),
        },
    );
    let buyer_shard = out.shard_of(&keys::user(&buyer_id));
    let credit = out.send(
        buyer_shard,
        Message::RefundBuyer {
            purchase_id: purchase_id.clone(),
            refund_id: refund_id.clone(),
            buyer_id,
            amount: reservation.price,
            revoke_items,
        },
    );
    out.send(
        reply_to,
        Message::RefundSettled {
            refund_id,
            amount: reservation.price,
            deliveries: vec![reversal, credit],
        },
    );
}

fn reserve_item(
    out: &mut Out<'_>,
    purchase_id: &PurchaseId,
    buyer_id: &UserId,
    item_id: &ItemId,
    expected_price: i64,
    at_ms: TimestampMs,
) -> Result<Reservation, Rejection> {
    let item = out.state.items.get(item_id).ok_or_else(|| {
        reject(
            RejectionCode::NotFound,
            format!("item {item_id} does not exist"),
        )
    })?;
    let definition = &item.definition;
    let in_window = definition.starts_at_ms.is_none_or(|starts| at_ms >= starts)
        && definition.ends_at_ms.is_none_or(|ends| at_ms < ends);
    if !item.on_sale || !in_window {
        return Err(reject(
            RejectionCode::NotOnSale,
            format!("item {item_id} is not on sale"),
        ));
    }
    if &definition.creator_id == buyer_id {
        return Err(reject(
            RejectionCode::PurchaserIsSeller,
            format!("{buyer_id} created item {item_id}"),
        ));
    }
    if item.price != expected_price {
        return Err(reject(
            RejectionCode::PriceChanged,
            format!("item {item_id} costs {}, not {expected_price}", item.price),
        ));
    }
    let mut serial = None;
    if item.is_limited() {
        let held = item.held_per_user.get(buyer_id).copied().unwrap_or(0);
        if definition.max_per_user.is_some_and(|max| held >= max) {
            return Err(reject(
                RejectionCode::QuantityLimitReached,
                format!("{buyer_id} already holds {held} of item {item_id}"),
            ));
        }
        let free = item.next_free_serial().ok_or_else(|| {
            reject(
                RejectionCode::SoldOut,
                format!("item {item_id} is sold out"),
            )
        })?;
        out.push(Event::SerialReserved {
            item_id: item_id.clone(),
            serial: free,
            purchase_id: purchase_id.clone(),
            buyer_id: buyer_id.clone(),
        });
        serial = Some(free);
    }
    Ok(Reservation {
        price: item.price,
        creator_id: definition.creator_id.clone(),
        sale: SaleKind::Item {
            item_id: item_id.clone(),
            serial,
        },
    })
}

fn create_listing(
    out: &mut Out<'_>,
    listing_id: &crate::ids::ListingId,
    seller_id: &UserId,
    item_id: &ItemId,
    serial: u32,
    price: i64,
    at_ms: TimestampMs,
) -> Result<(), Rejection> {
    let item = out.state.items.get(item_id).ok_or_else(|| {
        reject(
            RejectionCode::NotFound,
            format!("item {item_id} does not exist"),
        )
    })?;
    if !item.is_limited() || !item.definition.resellable {
        return Err(reject(
            RejectionCode::NotResellable,
            format!("item {item_id} cannot be resold"),
        ));
    }
    let holder = item.holders.get(&serial).ok_or_else(|| {
        reject(
            RejectionCode::NotFound,
            format!("serial {serial} of item {item_id} has no owner"),
        )
    })?;
    if &holder.user_id != seller_id {
        return Err(reject(
            RejectionCode::NotOwner,
            format!("{seller_id} does not own serial {serial} of item {item_id}"),
        ));
    }
    let hold_ends_ms = holder
        .acquired_at_ms
        .saturating_add(out.config.resale_hold_ms);
    if at_ms < hold_ends_ms {
        return Err(reject(
            RejectionCode::ResaleHoldActive,
            format!("serial {serial} of item {item_id} can be listed from {hold_ends_ms} ms"),
        ));
    }
    if item.listing_by_serial.contains_key(&serial) {
        return Err(reject(
            RejectionCode::AlreadyListed,
            format!("serial {serial} of item {item_id} is already listed"),
        ));
    }
    out.push(Event::ListingCreated {
        listing_id: listing_id.clone(),
        item_id: item_id.clone(),
        serial,
        seller_id: seller_id.clone(),
        price,
    });
    Ok(())
}

fn on_buyer_debited(
    out: &mut Out<'_>,
    purchase_id: &PurchaseId,
    result: &Result<(i64, Vec<ItemId>), Rejection>,
    position: ShardPosition,
) {
    let state = out.state;
    let config = out.config;
    let key = keys::purchase(purchase_id);
    let record = record(out, &key);
    let Progress::Debiting { reservation } = &record.progress else {
        panic!("debit result for a purchase that is not debiting");
    };
    let reservation = reservation.clone();
    let at_ms = record.meta.at_ms;
    let buyer_id = purchase_buyer(state, purchase_id);
    let (balance_after, granted_items) = match result {
        Err(rejection) => {
            match &reservation.sale {
                SaleKind::Item {
                    item_id,
                    serial: Some(_),
                }
                | SaleKind::Resale { item_id, .. } => {
                    let to = out.shard_of(&keys::item(item_id));
                    out.send(
                        to,
                        Message::CancelReservation {
                            purchase_id: purchase_id.clone(),
                            item_id: item_id.clone(),
                        },
                    );
                }
                _ => {}
            }
            out.complete(&key, Err(rejection.clone()), vec![]);
            return;
        }
        Ok(debited) => debited.clone(),
    };
    let creator_shard = out.shard_of(&keys::user(&reservation.creator_id));
    let success = match &reservation.sale {
        SaleKind::Item { item_id, serial } => Success::Purchased {
            target: PurchaseTarget::Item(item_id.clone()),
            price: reservation.price,
            serial: *serial,
            granted_items,
            balance_after,
        },
        SaleKind::Bundle { bundle_id, .. } => Success::Purchased {
            target: PurchaseTarget::Bundle(bundle_id.clone()),
            price: reservation.price,
            serial: None,
            granted_items,
            balance_after,
        },
        SaleKind::Resale {
            item_id,
            serial,
            seller_id,
            ..
        } => Success::ResalePurchased {
            item_id: item_id.clone(),
            serial: *serial,
            price: reservation.price,
            seller_id: seller_id.clone(),
            balance_after,
        },
    };
    // A Limited serial or a resold serial now belongs to the buyer.
    if let SaleKind::Item {
        item_id,
        serial: Some(_),
    }
    | SaleKind::Resale { item_id, .. } = &reservation.sale
    {
        let to = out.shard_of(&keys::item(item_id));
        out.send(
            to,
            Message::ConfirmReservation {
                purchase_id: purchase_id.clone(),
                item_id: item_id.clone(),
                at_ms,
                buyer_id: buyer_id.clone(),
            },
        );
    }
    match &reservation.sale {
        SaleKind::Resale { seller_id, .. } => {
            let split = config.resale_fee_policy.split(reservation.price);
            let seller_shard = out.shard_of(&keys::user(seller_id));
            out.send(
                seller_shard,
                Message::CreditSeller {
                    purchase_id: purchase_id.clone(),
                    seller_id: seller_id.clone(),
                    amount: split.seller_share,
                },
            );
            out.send(
                creator_shard,
                Message::SettleSale {
                    purchase_id: purchase_id.clone(),
                    creator_id: reservation.creator_id.clone(),
                    cleared: split.royalty + split.platform_fee,
                    creator_share: split.royalty,
                    platform_fee: split.platform_fee,
                    policy_version: config.resale_fee_policy.version,
                    resale: true,
                    at_ms,
                },
            );
        }
        _ => {
            let split = config.primary_fee_policy.split(reservation.price);
            out.send(
                creator_shard,
                Message::SettleSale {
                    purchase_id: purchase_id.clone(),
                    creator_id: reservation.creator_id.clone(),
                    cleared: reservation.price,
                    creator_share: split.creator_share,
                    platform_fee: split.platform_fee,
                    policy_version: config.primary_fee_policy.version,
                    resale: false,
                    at_ms,
                },
            );
        }
    }
    out.complete(&key, Ok(success), vec![position]);
}
