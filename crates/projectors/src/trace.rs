//! A purchase's story across shards, for support ("I paid and didn't get
//! my item"): one [`Change::PurchaseStep`] per event that moved the
//! purchase on, on whichever shard it was logged (the purchase's home, the
//! item's, the buyer's, the creator's, the seller's).

use ledger_core::codec::Logged;
use ledger_core::{Command, Event, PurchaseId, PurchaseTarget};

use crate::project::{position_text, Change, PurchaseStep};

/// The steps `event` adds to a purchase's story.
pub fn purchase_steps(logged: &Logged<'_>, event: &Event) -> Vec<Change> {
    let at_ms = logged.timestamp_ms;
    let position = position_text(logged);
    let step = |purchase_id: &PurchaseId, kind: &'static str| PurchaseStep {
        purchase_id: purchase_id.clone(),
        position: position.clone(),
        step: kind,
        user_id: String::new(),
        subject: String::new(),
        serial: None,
        amount: None,
        detail: String::new(),
        at_ms,
    };
    let mut steps: Vec<PurchaseStep> = Vec::new();
    match event {
        Event::CommandAccepted { command, .. } => match command {
            Command::Purchase {
                purchase_id,
                buyer_id,
                target,
                expected_price,
                region,
            } => steps.push(PurchaseStep {
                user_id: buyer_id.to_string(),
                subject: match target {
                    PurchaseTarget::Item(item_id) => item_id.to_string(),
                    PurchaseTarget::Bundle(bundle_id) => bundle_id.to_string(),
                },
                amount: Some(*expected_price),
                detail: region
                    .as_ref()
                    .map(|region| format!("in region {region}"))
                    .unwrap_or_default(),
                ..step(purchase_id, "accepted")
            }),
            // A cart: its lines' stories are told under their own ids.
            Command::PurchaseCart {
                purchase_id,
                buyer_id,
                lines,
                region,
            } => steps.push(PurchaseStep {
                user_id: buyer_id.to_string(),
                amount: Some(lines.iter().map(|line| line.expected_price).sum()),
                detail: format!(
                    "cart of {} lines ({}.line-1 to .line-{}){}",
                    lines.len(),
                    purchase_id,
                    lines.len(),
                    region
                        .as_ref()
                        .map(|region| format!(" in region {region}"))
                        .unwrap_or_default()
                ),
                ..step(purchase_id, "accepted")
            }),
            Command::ResalePurchase {
                purchase_id,
                buyer_id,
                listing_id,
                expected_price,
            } => steps.push(PurchaseStep {
                user_id: buyer_id.to_string(),
                subject: listing_id.to_string(),
                amount: Some(*expected_price),
                ..step(purchase_id, "accepted")
            }),
            _ => {}
        },
        Event::SerialReserved {
            item_id,
            serial,
            purchase_id,
            buyer_id,
        } => steps.push(PurchaseStep {
            user_id: buyer_id.to_string(),
            subject: item_id.to_string(),
            serial: Some(*serial),
            ..step(purchase_id, "reserved")
        }),
        Event::ListingReserved {
            listing_id,
            purchase_id,
            ..
        } => steps.push(PurchaseStep {
            subject: listing_id.to_string(),
            ..step(purchase_id, "reserved")
        }),
        Event::ReservationCancelled {
            item_id,
            serial,
            purchase_id,
        } => steps.push(PurchaseStep {
            subject: item_id.to_string(),
            serial: Some(*serial),
            ..step(purchase_id, "reservation_released")
        }),
        Event::ListingReservationCancelled {
            listing_id,
            purchase_id,
            ..
        } => steps.push(PurchaseStep {
            subject: listing_id.to_string(),
            ..step(purchase_id, "reservation_released")
        }),
        Event::BuyerDebited {
            purchase_id,
            buyer_id,
            amount,
            granted_items,
            ..
        } => {
            steps.push(PurchaseStep {
                user_id: buyer_id.to_string(),
                amount: Some(-amount),
                ..step(purchase_id, "paid")
            });
            for item_id in granted_items {
                steps.push(PurchaseStep {
                    user_id: buyer_id.to_string(),
                    subject: item_id.to_string(),
                    ..step(purchase_id, "granted")
                });
            }
        }
        Event::SerialSold {
            item_id,
            serial,
            purchase_id,
            buyer_id,
            ..
        } => steps.push(PurchaseStep {
            user_id: buyer_id.to_string(),
            subject: item_id.to_string(),
            serial: Some(*serial),
            ..step(purchase_id, "granted")
        }),
        Event::SerialTransferred {
            item_id,
            serial,
            purchase_id,
            to_user_id,
            ..
        } => steps.push(PurchaseStep {
            user_id: to_user_id.to_string(),
            subject: item_id.to_string(),
            serial: Some(*serial),
            ..step(purchase_id, "granted")
        }),
        Event::SaleSettled {
            purchase_id,
            creator_id,
            creator_share,
            platform_fee,
            ..
        } => steps.push(PurchaseStep {
            user_id: creator_id.to_string(),
            amount: Some(*creator_share),
            detail: format!("platform fee {platform_fee}"),
            ..step(purchase_id, "settled")
        }),
        Event::SellerCredited {
            purchase_id,
            seller_id,
            amount,
            ..
        } => steps.push(PurchaseStep {
            user_id: seller_id.to_string(),
            amount: Some(*amount),
            ..step(purchase_id, "seller_paid")
        }),
        Event::EscrowReleased {
            purchase_id,
            creator_id,
            amount,
            ..
        } => steps.push(PurchaseStep {
            user_id: creator_id.to_string(),
            amount: Some(*amount),
            ..step(purchase_id, "released")
        }),
        Event::EscrowFrozen { purchase_id } => steps.push(step(purchase_id, "escrow_frozen")),
        Event::EscrowUnfrozen { purchase_id } => steps.push(step(purchase_id, "escrow_unfrozen")),
        Event::EscrowReversed {
            purchase_id,
            refund_id,
            creator_id,
            creator_share,
            ..
        } => steps.push(PurchaseStep {
            user_id: creator_id.to_string(),
            amount: Some(-creator_share),
            detail: format!("refund {refund_id}"),
            ..step(purchase_id, "escrow_reversed")
        }),
        Event::SerialRevoked {
            item_id,
            serial,
            purchase_id,
            owner_id,
        } => steps.push(PurchaseStep {
            user_id: owner_id.to_string(),
            subject: item_id.to_string(),
            serial: Some(*serial),
            ..step(purchase_id, "serial_revoked")
        }),
        Event::BuyerRefunded {
            purchase_id,
            refund_id,
            buyer_id,
            amount,
            ..
        } => steps.push(PurchaseStep {
            user_id: buyer_id.to_string(),
            amount: Some(*amount),
            detail: format!("refund {refund_id}"),
            ..step(purchase_id, "refunded")
        }),
        Event::CommandCompleted { .. }
        | Event::PurchaseCompleted { .. }
        | Event::CommandWithdrawn { .. } => {
            let Some((key, completion)) = event.completion() else {
                return Vec::new();
            };
            let Some(purchase_id) = ledger_core::keys::purchase_id(key) else {
                return Vec::new();
            };
            steps.push(match &completion.result {
                Ok(_) => step(&purchase_id, "completed"),
                Err(rejection) => PurchaseStep {
                    detail: format!("{}: {}", rejection.code.as_str(), rejection.detail),
                    ..step(&purchase_id, "refused")
                },
            });
        }
        _ => {}
    }
    steps.into_iter().map(Change::PurchaseStep).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ledger_core::codec::Entry;
    use ledger_core::{
        Account, Completion, ItemId, Posting, Rejection, RejectionCode, ShardId, Success, UserId,
    };

    fn steps_of(event: Event) -> Vec<PurchaseStep> {
        let entry = Entry::from_event(&event);
        let logged = Logged {
            shard: ShardId(2),
            sequence: 17,
            cause: "test",
            timestamp_ms: 1_000,
            entry: &entry,
        };
        purchase_steps(&logged, &event)
            .into_iter()
            .map(|change| match change {
                Change::PurchaseStep(step) => step,
                other => panic!("a trace change: {other:?}"),
            })
            .collect()
    }

    fn purchase() -> PurchaseId {
        PurchaseId::parse("p-1").unwrap()
    }

    #[test]
    fn a_debit_is_a_payment_and_a_grant_per_item() {
        let buyer = UserId::parse("alice").unwrap();
        let steps = steps_of(Event::BuyerDebited {
            purchase_id: purchase(),
            buyer_id: buyer.clone(),
            amount: 150,
            granted_items: vec![
                ItemId::parse("hat").unwrap(),
                ItemId::parse("scarf").unwrap(),
            ],
            balance_after: 50,
            at_ms: 900,
            postings: vec![
                Posting::new(Account::Wallet(buyer), -150),
                Posting::new(Account::Clearing, 150),
            ],
        });
        let summary: Vec<(&str, &str, Option<i64>, &str)> = steps
            .iter()
            .map(|step| {
                (
                    step.step,
                    step.subject.as_str(),
                    step.amount,
                    step.position.as_str(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("paid", "", Some(-150), "2.17"),
                ("granted", "hat", None, "2.17"),
                ("granted", "scarf", None, "2.17"),
            ]
        );
        assert!(steps
            .iter()
            .all(|step| step.user_id == "alice" && step.at_ms == 1_000));
    }

    #[test]
    fn completions_of_purchases_are_completed_or_refused_and_others_are_not_steps() {
        let completion = |result| Completion {
            result,
            positions: Vec::new(),
            deliveries: Vec::new(),
            retry_after_ms: None,
        };
        let refused = steps_of(Event::CommandCompleted {
            key: "purchase:p-1".into(),
            completion: completion(Err(Rejection::new(
                RejectionCode::SoldOut,
                "item hat is sold out",
            ))),
        });
        assert_eq!(refused.len(), 1);
        assert_eq!(refused[0].step, "refused");
        assert_eq!(refused[0].detail, "sold_out: item hat is sold out");
        let grant = steps_of(Event::CommandCompleted {
            key: "grant:g-1".into(),
            completion: completion(Ok(Success::Granted { balance_after: 5 })),
        });
        assert!(grant.is_empty(), "a grant is not a purchase");
        let frozen = steps_of(Event::EscrowFrozen {
            purchase_id: purchase(),
        });
        assert_eq!(frozen[0].step, "escrow_frozen");
        assert!(steps_of(Event::ItemRepriced {
            item_id: ItemId::parse("hat").unwrap(),
            price: 3
        })
        .is_empty());
    }
}
