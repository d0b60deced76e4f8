//! Price floors: `SetPriceFloor` on the floors' home shard, replicated to
//! every shard (`ReplicatePriceFloor` / `PriceFloorHeld`); publishes and
//! reprices under the floor in force are refused (`below_price_floor`); a
//! primary sale under a floor settles by fee policy 2.

use crate::decide::testing::*;
use crate::decide::Answer;
use crate::model::*;
use crate::pricing::{ItemKind, PriceRule, SaleTerms};
use crate::state::Config;
use crate::ShardId;

const LATER: TimestampMs = NOW + 60_000;

fn admin() -> Actor {
    Actor {
        role: Role::Admin,
        user_id: user_id("ops"),
    }
}

fn set_floor(kind: ItemKind, price: i64, effective_from_ms: TimestampMs) -> Command {
    Command::SetPriceFloor {
        kind,
        price,
        effective_from_ms,
    }
}

fn floor_set(kind: ItemKind, version: u32, price: i64, effective_from_ms: TimestampMs) -> Event {
    Event::PriceFloorSet {
        kind,
        version,
        price,
        effective_from_ms,
    }
}

fn floor_key(kind: ItemKind, effective_from_ms: TimestampMs) -> String {
    keys::price_floor(kind, effective_from_ms)
}

fn admin_accepted(command: Command) -> Event {
    match accepted(command) {
        Event::CommandAccepted {
            key,
            fingerprint,
            command,
            meta,
        } => Event::CommandAccepted {
            key,
            fingerprint,
            command,
            meta: CommandMeta {
                actor: admin(),
                ..meta
            },
        },
        _ => unreachable!("accepted makes command_accepted"),
    }
}

/// A ledger of `shards` shards whose floors' home is the shard under test.
fn config_with_shards(shards: u16) -> Config {
    let mut config = config();
    config.shard_count = shards;
    config
}

/// The smallest shard count above one whose floors' home is [`HOME`].
fn shards_homing_floors_here() -> u16 {
    (2..64)
        .find(|shards| shard_for(crate::pricing::FLOORS_KEY, *shards) == HOME)
        .expect("some shard count homes the floors on shard 0")
}

fn hat_of(kind: ItemKind, price: i64) -> ItemDefinition {
    ItemDefinition {
        kind,
        ..item("hat", "carol", price)
    }
}

#[test]
fn in_a_one_shard_ledger_a_floor_is_set_at_once() {
    let command = set_floor(ItemKind::ClassicClothing, 5, NOW);
    let key = floor_key(ItemKind::ClassicClothing, NOW);
    given([])
        .when_command_by(admin(), command.clone())
        .then_answers(
            Answer::OnCompletion(key.clone()),
            vec![
                admin_accepted(command),
                floor_set(ItemKind::ClassicClothing, 1, 5, NOW),
                completed(
                    &key,
                    Ok(Success::PriceFloorSet {
                        kind: ItemKind::ClassicClothing,
                        version: 1,
                        price: 5,
                        effective_from_ms: NOW,
                    }),
                    vec![position(2), position(3)],
                    vec![],
                ),
            ],
        );
}

#[test]
fn a_later_floor_of_a_kind_is_its_next_version() {
    given([floor_set(ItemKind::Emote, 1, 5, NOW)])
        .when_command_by(admin(), set_floor(ItemKind::Emote, 9, LATER))
        .then_answers(
            Answer::OnCompletion(floor_key(ItemKind::Emote, LATER)),
            vec![
                admin_accepted(set_floor(ItemKind::Emote, 9, LATER)),
                floor_set(ItemKind::Emote, 2, 9, LATER),
                completed(
                    &floor_key(ItemKind::Emote, LATER),
                    Ok(Success::PriceFloorSet {
                        kind: ItemKind::Emote,
                        version: 2,
                        price: 9,
                        effective_from_ms: LATER,
                    }),
                    vec![position(3), position(4)],
                    vec![],
                ),
            ],
        );
}

#[test]
fn only_an_admin_sets_a_floor() {
    given([])
        .when_command(set_floor(ItemKind::Body, 5, NOW))
        .then_refused(RejectionCode::Forbidden, "only an admin sets price floors");
}

#[test]
fn a_floor_is_replicated_to_every_other_shard_before_it_is_answered() {
    let shards = shards_homing_floors_here();
    let command = set_floor(ItemKind::Body, 40, NOW);
    let key = floor_key(ItemKind::Body, NOW);
    let replicate = Message::ReplicatePriceFloor {
        key: key.clone(),
        kind: ItemKind::Body,
        version: 1,
        price: 40,
        effective_from_ms: NOW,
    };
    let mut expected = vec![
        admin_accepted(command.clone()),
        floor_set(ItemKind::Body, 1, 40, NOW),
    ];
    for shard in 1..shards {
        expected.push(sent(ShardId(shard), 1, replicate.clone()));
    }
    given_with(config_with_shards(shards), [])
        .when_command_by(admin(), command)
        .then_answers(Answer::OnCompletion(key), expected);
}

#[test]
fn a_shard_holds_a_replicated_floor_and_says_so() {
    let key = floor_key(ItemKind::Body, NOW);
    given([])
        .when_message(Message::ReplicatePriceFloor {
            key: key.clone(),
            kind: ItemKind::Body,
            version: 3,
            price: 40,
            effective_from_ms: NOW,
        })
        .then(vec![
            Event::PriceFloorReplicated {
                kind: ItemKind::Body,
                version: 3,
                price: 40,
                effective_from_ms: NOW,
            },
            sent(
                PEER,
                1,
                Message::PriceFloorHeld {
                    key,
                    version: 3,
                    position: position(1),
                },
            ),
            received(1),
        ]);
}

#[test]
fn the_floor_change_completes_when_the_last_shard_holds_it() {
    // Two shards: one acknowledgement completes it.
    let shards = shards_homing_floors_here();
    let command = set_floor(ItemKind::Body, 40, NOW);
    let key = floor_key(ItemKind::Body, NOW);
    let peer_at = ShardPosition {
        shard: PEER,
        sequence: 4,
    };
    let mut given_events = vec![
        admin_accepted(command),
        floor_set(ItemKind::Body, 1, 40, NOW),
    ];
    // Every acknowledgement but the last one is already in.
    for acknowledged in 1..u32::from(shards) - 1 {
        given_events.push(Event::CommandProgressed {
            key: key.clone(),
            progress: Progress::ReplicatingFloor { acknowledged },
            position: Some(peer_at),
        });
    }
    let next = given_events.len() as u64 + 1;
    given_with(config_with_shards(shards), given_events)
        .when_message(Message::PriceFloorHeld {
            key: key.clone(),
            version: 1,
            position: peer_at,
        })
        .then(vec![
            completed(
                &key,
                Ok(Success::PriceFloorSet {
                    kind: ItemKind::Body,
                    version: 1,
                    price: 40,
                    effective_from_ms: NOW,
                }),
                vec![position(next), peer_at],
                vec![],
            ),
            received(1),
        ]);
}

#[test]
fn a_publish_under_the_floor_in_force_is_refused_and_remembered() {
    let hat = hat_of(ItemKind::ClassicClothing, 4);
    let command = Command::PublishItem(hat);
    let refusal = rejection(
        RejectionCode::BelowPriceFloor,
        "item hat would cost 4, under the floor of 5 for classic_clothing (version 1)",
    );
    given([floor_set(ItemKind::ClassicClothing, 1, 5, NOW)])
        .when_command(command.clone())
        .then_answers(
            Answer::OnCompletion("item:hat".into()),
            vec![
                accepted(command),
                completed("item:hat", Err(refusal), vec![position(3)], vec![]),
            ],
        );
}

#[test]
fn a_floor_of_another_kind_or_not_yet_in_force_does_not_apply() {
    for floors in [
        [floor_set(ItemKind::Emote, 1, 500, NOW)],
        [floor_set(ItemKind::ClassicClothing, 1, 500, NOW + 1)],
    ] {
        let command = Command::PublishItem(hat_of(ItemKind::ClassicClothing, 4));
        given(floors).when_command(command.clone()).then_answers(
            Answer::OnCompletion("item:hat".into()),
            vec![
                accepted(command),
                published(hat_of(ItemKind::ClassicClothing, 4)),
                completed(
                    "item:hat",
                    Ok(Success::ItemPublished),
                    vec![position(3), position(4)],
                    vec![],
                ),
            ],
        );
    }
}

#[test]
fn a_reprice_under_the_floor_is_refused_and_one_at_the_floor_is_not() {
    let floors = || {
        [
            floor_set(ItemKind::Accessory, 1, 50, 0),
            // Raised from now on: items keep selling at their price.
            floor_set(ItemKind::Accessory, 2, 80, NOW),
        ]
    };
    let [first, second] = floors();
    given([first, second, published(hat_of(ItemKind::Accessory, 60))])
        .when_command(Command::Reprice {
            item_id: item_id("hat"),
            price: 79,
        })
        .then_refused(
            RejectionCode::BelowPriceFloor,
            "item hat would cost 79, under the floor of 80 for accessory (version 2)",
        );
    let [first, second] = floors();
    given([first, second, published(hat_of(ItemKind::Accessory, 60))])
        .when_command(Command::Reprice {
            item_id: item_id("hat"),
            price: 80,
        })
        .then_answers(
            Answer::Now(Completion::new(
                Ok(Success::ItemUpdated {
                    price: 80,
                    on_sale: true,
                }),
                vec![position(4)],
                vec![],
            )),
            vec![Event::ItemRepriced {
                item_id: item_id("hat"),
                price: 80,
            }],
        );
}

#[test]
fn a_sale_under_a_floor_is_reserved_with_its_terms_and_settled_by_policy_two() {
    let floor = floor_set(ItemKind::Accessory, 1, 50, 0);
    let terms = SaleTerms {
        rule: PriceRule::Base,
        kind: ItemKind::Accessory,
        floor: Some(50),
        fee_policy_version: 2,
    };
    let reservation = Reservation {
        price: 175,
        creator_id: user_id("carol"),
        sale: SaleKind::Item {
            item_id: item_id("hat"),
            serial: None,
        },
        terms: Some(terms),
    };
    // On the item's shard: reserved with the floor in force.
    given([floor.clone(), published(hat_of(ItemKind::Accessory, 175))])
        .when_message(Message::ReserveSale {
            purchase_id: purchase_id("p-1"),
            buyer_id: user_id("alice"),
            request: SaleRequest::Item(item_id("hat")),
            expected_price: 175,
            at_ms: NOW,
            home: PEER,
        })
        .then(vec![
            sent(
                HOME,
                1,
                Message::ChargeBuyer {
                    purchase_id: purchase_id("p-1"),
                    buyer_id: user_id("alice"),
                    reservation: reservation.clone(),
                    at_ms: NOW,
                    home: PEER,
                },
            ),
            received(1),
        ]);
    // On the purchase's shard: 175 is 3.5× the floor, so the creator's
    // share is 30% + 2.5/5 × 40% = 50%.
    let purchase = Command::Purchase {
        purchase_id: purchase_id("p-1"),
        buyer_id: user_id("alice"),
        target: PurchaseTarget::Item(item_id("hat")),
        expected_price: 175,
        region: None,
    };
    given([accepted(purchase)])
        .when_message(Message::PurchasePaid {
            purchase_id: purchase_id("p-1"),
            reservation: reservation.clone(),
            result: Ok((25, vec![item_id("hat")])),
            position: ShardPosition {
                shard: PEER,
                sequence: 8,
            },
        })
        .then(vec![
            sent(
                HOME,
                1,
                Message::SettleSale {
                    purchase_id: purchase_id("p-1"),
                    creator_id: user_id("carol"),
                    cleared: 175,
                    creator_share: 87,
                    platform_fee: 88,
                    policy_version: 2,
                    resale: false,
                    at_ms: NOW,
                },
            ),
            purchase_completed(
                "purchase:p-1",
                Success::Purchased {
                    target: PurchaseTarget::Item(item_id("hat")),
                    price: 175,
                    serial: None,
                    granted_items: vec![item_id("hat")],
                    balance_after: 25,
                },
                vec![
                    position(3),
                    ShardPosition {
                        shard: PEER,
                        sequence: 8,
                    },
                ],
                vec![delivery(HOME, 1)],
                reservation,
            ),
            received(1),
        ]);
}

#[test]
fn a_reservation_keeps_its_terms_through_the_stored_encoding_and_reads_older_ones() {
    let plain = Reservation {
        price: 100,
        creator_id: user_id("carol"),
        sale: SaleKind::Item {
            item_id: item_id("hat"),
            serial: Some(3),
        },
        terms: None,
    };
    let priced = Reservation {
        terms: Some(SaleTerms {
            rule: PriceRule::Base,
            kind: ItemKind::Body,
            floor: Some(20),
            fee_policy_version: 2,
        }),
        ..plain.clone()
    };
    for reservation in [&plain, &priced] {
        let bytes = crate::codec::encode(reservation);
        let decoded: Reservation = crate::codec::decode("reservation", &bytes).unwrap();
        assert_eq!(&decoded, reservation);
    }
    // A reservation without terms is stored exactly as before terms existed.
    #[derive(bincode::Encode)]
    struct Before {
        price: i64,
        creator_id: crate::ids::UserId,
        sale: SaleKind,
    }
    let before = Before {
        price: plain.price,
        creator_id: plain.creator_id.clone(),
        sale: plain.sale.clone(),
    };
    assert_eq!(crate::codec::encode(&before), crate::codec::encode(&plain));
}

#[test]
fn an_accessory_is_stored_as_before_kinds_existed_and_other_kinds_round_trip() {
    #[derive(bincode::Encode)]
    struct Before {
        item_id: crate::ids::ItemId,
        creator_id: crate::ids::UserId,
        name: String,
        price: i64,
        supply: Option<u32>,
        max_per_user: Option<u32>,
        starts_at_ms: Option<TimestampMs>,
        ends_at_ms: Option<TimestampMs>,
        resellable: bool,
    }
    let crown = limited("crown", "carol", 100, 5);
    let before = Before {
        item_id: crown.item_id.clone(),
        creator_id: crown.creator_id.clone(),
        name: crown.name.clone(),
        price: crown.price,
        supply: crown.supply,
        max_per_user: crown.max_per_user,
        starts_at_ms: crown.starts_at_ms,
        ends_at_ms: crown.ends_at_ms,
        resellable: crown.resellable,
    };
    assert_eq!(crate::codec::encode(&before), crate::codec::encode(&crown));
    assert_eq!(
        crate::codec::fingerprint(&Command::PublishItem(crown.clone())),
        crate::codec::fingerprint(&Command::PublishItem(crown.clone())),
    );
    for kind in ItemKind::all() {
        for resellable in [false, true] {
            let definition = ItemDefinition {
                kind,
                resellable,
                ..crown.clone()
            };
            let decoded: ItemDefinition =
                crate::codec::decode("definition", &crate::codec::encode(&definition)).unwrap();
            assert_eq!(decoded, definition);
        }
    }
    // An unknown kind index is refused, not guessed.
    let mut bytes = crate::codec::encode(&crown);
    *bytes.last_mut().unwrap() = 0x7F << 1;
    assert!(crate::codec::decode::<ItemDefinition>("definition", &bytes).is_err());
}
