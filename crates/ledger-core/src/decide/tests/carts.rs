//! Carts, end to end on a ledger of several shards (every message delivered
//! in order until none is left): `PurchaseCart` on the cart's shard,
//! `ReserveCartLine` on each line's item or bundle shard, `CartLineReserved`
//! back, `ChargeCart` on the buyer's shard (one `buyer_debited`), `CartPaid`
//! back, then `ConfirmReservation` / `CancelReservation`, `SettleSale` per
//! line and `RecordCartLine` on each line's own shard.
//! Rejections: validation_failed (no line, more than 20, a target twice, an
//! id of a line's form), any line's refusal naming the line (not_found,
//! not_on_sale, purchaser_is_seller, price_changed, quantity_limit_reached,
//! sold_out, already_owned), insufficient_funds, rate_limited.

use std::collections::{BTreeMap, VecDeque};

use crate::decide::testing::*;
use crate::decide::{decide, Answer, Decision, Input};
use crate::ids::{PurchaseId, ShardId, UserId};
use crate::model::*;
use crate::money::Account;
use crate::state::{evolve, Config, ShardState};

const SHARDS: u16 = 5;

/// A ledger of [`SHARDS`] shards whose messages are delivered in order.
struct Ledger {
    config: Config,
    shards: Vec<ShardState>,
    network: VecDeque<(ShardId, ShardId, u64, Message)>,
    events: Vec<(ShardId, Event)>,
}

impl Ledger {
    fn new() -> Self {
        Self::with(Config {
            escrow_hold_ms: ESCROW_HOLD_MS,
            ..Config::new(SHARDS)
        })
    }

    fn with(config: Config) -> Self {
        let shards = (0..config.shard_count)
            .map(|shard| ShardState::new(ShardId(shard)))
            .collect();
        Self {
            config,
            shards,
            network: VecDeque::new(),
            events: Vec::new(),
        }
    }

    fn apply(&mut self, shard: ShardId, events: Vec<Event>) {
        for event in events {
            if let Event::MessageSent {
                to,
                sequence,
                message,
            } = &event
            {
                self.network
                    .push_back((shard, *to, *sequence, message.as_ref().clone()));
            }
            evolve(&mut self.shards[usize::from(shard.0)], &event);
            self.events.push((shard, event));
        }
    }

    /// Runs `command` to its end; returns the decision on its home shard.
    fn run(&mut self, command: Command) -> Decision {
        let home = self.config.shard_of(&command.home_key());
        let input = Input::Command {
            command,
            meta: CommandMeta {
                at_ms: NOW,
                actor: service(),
            },
        };
        let decision = decide(&self.shards[usize::from(home.0)], &self.config, &input);
        if let Decision::Apply { events, .. } = &decision {
            self.apply(home, events.clone());
        }
        while let Some((from, to, sequence, message)) = self.network.pop_front() {
            let input = Input::Message {
                from,
                sequence,
                message: message.into(),
            };
            match decide(&self.shards[usize::from(to.0)], &self.config, &input) {
                Decision::Apply { events, .. } => self.apply(to, events),
                other => panic!("a message in order is applied, not {other:?}"),
            }
        }
        decision
    }

    /// Runs `command` and returns how it completed.
    fn answer(&mut self, command: Command) -> Result<Success, Rejection> {
        let key = command.idempotency_key().expect("a keyed command");
        match self.run(command) {
            Decision::Apply { .. } => self.completion(&key).result,
            Decision::Refuse(rejection) => Err(rejection),
            other => panic!("{other:?}"),
        }
    }

    fn completion(&self, key: &str) -> Completion {
        let home = self.config.shard_of(key);
        self.shards[usize::from(home.0)].commands[key]
            .record(key)
            .completion
            .clone()
            .expect("the command completed")
    }

    fn shard_of(&self, key: &str) -> &ShardState {
        &self.shards[usize::from(self.config.shard_of(key).0)]
    }

    fn wallet(&self, user: &str) -> i64 {
        self.shard_of(&keys::user(&user_id(user)))
            .balance(&Account::Wallet(user_id(user)))
    }

    fn pending(&self, user: &str) -> i64 {
        self.shard_of(&keys::user(&user_id(user)))
            .balance(&Account::Pending(user_id(user)))
    }

    fn owns(&self, user: &str, item: &str) -> bool {
        self.shard_of(&keys::user(&user_id(user)))
            .owned_items
            .owns(&user_id(user), &item_id(item))
    }

    fn item(&self, item: &str) -> &crate::state::ItemState {
        &self.shard_of(&keys::item(&item_id(item))).items[&item_id(item)]
    }

    /// Every account's total over all shards; clearing holds nothing.
    fn assert_conserved(&self) {
        let mut totals: BTreeMap<Account, i64> = BTreeMap::new();
        for shard in &self.shards {
            for (account, balance) in &shard.balances {
                *totals.entry(account.clone()).or_insert(0) += balance;
            }
        }
        assert_eq!(totals.values().sum::<i64>(), 0, "postings balance");
        assert_eq!(totals.get(&Account::Clearing).copied().unwrap_or(0), 0);
    }

    /// Events of the given type logged since `from` (an index of `events`).
    fn count_since(&self, from: usize, type_name: &str) -> usize {
        self.events[from..]
            .iter()
            .filter(|(_, event)| event.type_name() == type_name)
            .count()
    }

    fn grant(&mut self, user: &str, amount: i64) {
        let grant = format!("g-{user}-{}", self.events.len());
        self.answer(Command::Grant {
            grant_id: grant_id(&grant),
            user_id: user_id(user),
            amount,
        })
        .expect("granted");
    }

    fn publish(&mut self, definition: ItemDefinition) {
        self.answer(Command::PublishItem(definition))
            .expect("published");
    }
}

fn line(item: &str, price: i64) -> CartLine {
    CartLine {
        target: PurchaseTarget::Item(item_id(item)),
        expected_price: price,
    }
}

fn cart(id: &str, buyer: &str, lines: Vec<CartLine>) -> Command {
    Command::PurchaseCart {
        purchase_id: purchase_id(id),
        buyer_id: user_id(buyer),
        lines,
        region: None,
    }
}

/// A ledger with 18 plain items of six creators (`i-0`..`i-17`, priced
/// 10 + index, by `c-<index % 6>`), a Limited `drop` of dave (price 50,
/// supply 1), a Limited `crown` of erin (price 40, supply 3), and a bundle
/// `pack` of frank (scarf and boots, 150); alice holds 5,000.
fn twenty_line_ledger() -> (Ledger, Vec<CartLine>) {
    let mut ledger = Ledger::new();
    let mut lines = Vec::new();
    for index in 0..18 {
        let id = format!("i-{index}");
        ledger.publish(item(&id, &format!("c-{}", index % 6), 10 + index));
        lines.push(line(&id, 10 + index));
    }
    ledger.publish(limited("drop", "dave", 50, 1));
    ledger.publish(limited("crown", "erin", 40, 3));
    ledger.publish(item("scarf", "frank", 30));
    ledger.publish(item("boots", "frank", 30));
    ledger
        .answer(Command::CreateBundle {
            bundle_id: bundle_id("pack"),
            creator_id: user_id("frank"),
            name: "pack".into(),
            item_ids: vec![item_id("scarf"), item_id("boots")],
            price: 150,
        })
        .expect("bundle created");
    // Line 3 is the crown, line 7 the drop, line 20 the bundle.
    lines.insert(2, line("crown", 40));
    lines.insert(6, line("drop", 50));
    lines.truncate(19);
    lines.push(CartLine {
        target: PurchaseTarget::Bundle(bundle_id("pack")),
        expected_price: 150,
    });
    assert_eq!(lines.len(), 20);
    ledger.grant("alice", 5_000);
    (ledger, lines)
}

fn total(lines: &[CartLine]) -> i64 {
    lines.iter().map(|line| line.expected_price).sum()
}

#[test]
fn a_paid_cart_debits_once_grants_every_line_and_settles_each_creator() {
    let (mut ledger, lines) = twenty_line_ledger();
    let cost = total(&lines);
    let from = ledger.events.len();
    let Ok(Success::CartPurchased {
        lines: paid,
        total,
        balance_after,
    }) = ledger.answer(cart("cart-1", "alice", lines.clone()))
    else {
        panic!("the cart is paid");
    };
    assert_eq!(total, cost);
    assert_eq!(balance_after, 5_000 - cost);
    assert_eq!(ledger.wallet("alice"), 5_000 - cost);
    assert_eq!(paid.len(), 20);
    // One debit for the whole cart, under the cart's id.
    let debits: Vec<&Event> = ledger.events[from..]
        .iter()
        .map(|(_, event)| event)
        .filter(|event| matches!(event, Event::BuyerDebited { .. }))
        .collect();
    assert_eq!(debits.len(), 1);
    let Event::BuyerDebited {
        purchase_id: debited,
        amount,
        ..
    } = debits[0]
    else {
        unreachable!()
    };
    assert_eq!((debited, *amount), (&purchase_id("cart-1"), cost));
    // Each line settled on its own, under its own id, to its creator.
    let settled: BTreeMap<PurchaseId, (UserId, i64)> = ledger.events[from..]
        .iter()
        .filter_map(|(_, event)| match event {
            Event::SaleSettled {
                purchase_id,
                creator_id,
                cleared,
                ..
            } => Some((purchase_id.clone(), (creator_id.clone(), *cleared))),
            _ => None,
        })
        .collect();
    assert_eq!(settled.len(), 20);
    for (index, (line, paid)) in lines.iter().zip(&paid).enumerate() {
        let line_id = cart_line_id(&purchase_id("cart-1"), index);
        assert_eq!(paid.purchase_id, line_id);
        assert_eq!(paid.target, line.target);
        assert_eq!(paid.price, line.expected_price);
        assert_eq!(settled[&line_id].1, line.expected_price, "line {index}");
        // Each line is a completed purchase on its own shard.
        let record = ledger.shard_of(&keys::purchase(&line_id)).commands
            [keys::purchase(&line_id).as_str()]
        .record(&keys::purchase(&line_id));
        assert!(matches!(record.progress, Progress::Paid { .. }));
        assert!(matches!(
            record.completion.as_ref().map(|c| &c.result),
            Some(Ok(Success::Purchased { price, .. })) if *price == line.expected_price
        ));
    }
    assert_eq!(settled[&purchase_id("cart-1.line-7")].0, user_id("dave"));
    // Its read position: one part per shard and per pair of shards (a
    // 20-line cart sends some 40 messages in its last step).
    let completion = ledger.completion("purchase:cart-1");
    let pairs: std::collections::BTreeSet<(ShardId, ShardId)> = completion
        .deliveries
        .iter()
        .map(|mark| (mark.from, mark.to))
        .collect();
    assert_eq!(pairs.len(), completion.deliveries.len());
    assert!(completion.deliveries.len() <= usize::from(SHARDS));
    let shards: std::collections::BTreeSet<ShardId> =
        completion.positions.iter().map(|p| p.shard).collect();
    assert_eq!(shards.len(), completion.positions.len());
    let buyer_shard = ledger.config.shard_of(&keys::user(&user_id("alice")));
    assert!(shards.contains(&buyer_shard), "the debit is covered");
    assert_eq!(settled[&purchase_id("cart-1.line-20")].0, user_id("frank"));
    // Every line granted: plain items, the bundle's items, the serials.
    for index in 0..17 {
        assert!(ledger.owns("alice", &format!("i-{index}")), "i-{index}");
    }
    assert!(ledger.owns("alice", "scarf") && ledger.owns("alice", "boots"));
    assert_eq!(paid[6].serial, Some(1));
    assert_eq!(paid[2].serial, Some(1));
    assert_eq!(
        paid[19].granted_items,
        vec![item_id("scarf"), item_id("boots")]
    );
    assert_eq!(ledger.item("drop").holders[&1].user_id, user_id("alice"));
    assert_eq!(
        ledger.item("drop").holders[&1].purchase_id,
        purchase_id("cart-1.line-7")
    );
    assert!(ledger.item("crown").reservations.is_empty());
    // Creators' escrow: the default split (70 %) of each of their lines.
    assert_eq!(ledger.pending("dave"), 35);
    assert_eq!(ledger.pending("frank"), 105);
    assert_eq!(
        ledger.pending("c-0"),
        [10, 16, 22]
            .iter()
            .map(|price| price * 70 / 100)
            .sum::<i64>()
    );
    ledger.assert_conserved();
}

#[test]
fn a_cart_with_one_sold_out_limited_leaves_no_trace_and_names_the_line() {
    let (mut ledger, lines) = twenty_line_ledger();
    ledger.grant("bob", 100);
    ledger
        .answer(Command::Purchase {
            purchase_id: purchase_id("p-bob"),
            buyer_id: user_id("bob"),
            target: PurchaseTarget::Item(item_id("drop")),
            expected_price: 50,
            region: None,
        })
        .expect("bob buys the only drop");
    let shards_before = ledger.shards.clone();
    let from = ledger.events.len();
    let answer = ledger.answer(cart("cart-1", "alice", lines));
    assert_eq!(
        answer,
        Err(rejection(
            RejectionCode::SoldOut,
            "line 7: item drop is sold out"
        ))
    );
    // No money moved, nothing granted, nothing settled, no serial held.
    assert_eq!(ledger.wallet("alice"), 5_000);
    for type_name in ["buyer_debited", "sale_settled", "serial_sold"] {
        assert_eq!(ledger.count_since(from, type_name), 0, "{type_name}");
    }
    assert_eq!(ledger.count_since(from, "serial_reserved"), 1, "the crown");
    assert_eq!(ledger.count_since(from, "reservation_cancelled"), 1);
    for (before, after) in shards_before.iter().zip(&ledger.shards) {
        assert_eq!(before.balances, after.balances);
        assert_eq!(before.owned_items, after.owned_items);
        assert_eq!(before.escrow, after.escrow);
        for (item_id, item) in &after.items {
            assert!(item.reservations.is_empty());
            assert_eq!(item.holders, before.items[item_id].holders);
            assert_eq!(
                item.next_free_serial(),
                before.items[item_id].next_free_serial()
            );
        }
    }
    // No line was recorded as a purchase.
    for index in 0..20 {
        let key = keys::purchase(&cart_line_id(&purchase_id("cart-1"), index));
        assert!(!ledger.shard_of(&key).commands.contains_key(key.as_str()));
    }
    ledger.assert_conserved();
}

#[test]
fn a_retried_cart_gets_the_first_answer_even_after_the_world_changed() {
    let (mut ledger, lines) = twenty_line_ledger();
    let command = cart("cart-1", "alice", lines.clone());
    let first = ledger.completion_of(command.clone());
    assert!(first.result.is_ok());
    ledger.grant("alice", 7);
    let from = ledger.events.len();
    let decision = ledger.run(command.clone());
    assert_eq!(
        decision,
        Decision::Apply {
            events: Vec::new(),
            answer: Answer::OnCompletion("purchase:cart-1".into()),
        }
    );
    assert_eq!(ledger.events.len(), from, "a retry changes nothing");
    assert_eq!(ledger.completion("purchase:cart-1"), first);
    // The same id with other lines is a conflict.
    let mut other = lines;
    other.pop();
    assert_eq!(
        ledger
            .answer(cart("cart-1", "alice", other))
            .unwrap_err()
            .code,
        RejectionCode::IdempotencyConflict
    );
}

impl Ledger {
    fn completion_of(&mut self, command: Command) -> Completion {
        let key = command.idempotency_key().expect("keyed");
        self.run(command);
        self.completion(&key)
    }
}

#[test]
fn a_cart_of_no_line_more_than_twenty_or_a_line_twice_is_refused() {
    let (mut ledger, lines) = twenty_line_ledger();
    let mut too_many = lines.clone();
    too_many.push(line("scarf", 30));
    let refusals = [
        (
            cart("c", "alice", Vec::new()),
            "a cart holds 1 to 20 lines, not 0",
        ),
        (
            cart("c", "alice", too_many),
            "a cart holds 1 to 20 lines, not 21",
        ),
        (
            cart(
                "c",
                "alice",
                vec![line("i-1", 11), line("i-2", 12), line("i-1", 11)],
            ),
            "line 3: item i-1 is already in the cart",
        ),
        (
            cart("c.line-2", "alice", vec![line("i-1", 11)]),
            "purchase_id c.line-2 has the form of a cart line's id (<id>.line-<n>), which is \
             reserved",
        ),
        (
            cart(&"c".repeat(121), "alice", vec![line("i-1", 11)]),
            "a cart's purchase_id is at most 120 characters (its lines' ids append .line-<n>)",
        ),
    ];
    for (command, detail) in refusals {
        assert_eq!(
            ledger.run(command),
            Decision::Refuse(rejection(RejectionCode::ValidationFailed, detail))
        );
    }
    // A client may not use a line's id for a purchase of its own.
    assert_eq!(
        ledger
            .answer(Command::Purchase {
                purchase_id: purchase_id("cart-9.line-1"),
                buyer_id: user_id("alice"),
                target: PurchaseTarget::Item(item_id("i-1")),
                expected_price: 11,
                region: None,
            })
            .unwrap_err()
            .code,
        RejectionCode::ValidationFailed
    );
    assert!(is_cart_line_id(&purchase_id("a.b.line-12")));
    assert!(!is_cart_line_id(&purchase_id("a.line-")));
    assert!(!is_cart_line_id(&purchase_id("a.line-1x")));
}

#[test]
fn a_cart_the_buyer_cannot_pay_releases_its_serials() {
    let (mut ledger, lines) = twenty_line_ledger();
    ledger.grant("poor", 100);
    let from = ledger.events.len();
    let cost = total(&lines);
    assert_eq!(
        ledger.answer(cart("cart-1", "poor", lines)),
        Err(rejection(
            RejectionCode::InsufficientFunds,
            &format!("poor has 100, cart cart-1 costs {cost}")
        ))
    );
    assert_eq!(ledger.wallet("poor"), 100);
    assert_eq!(ledger.count_since(from, "reservation_cancelled"), 2);
    assert_eq!(ledger.item("drop").next_free_serial(), Some(1));
    assert_eq!(ledger.count_since(from, "sale_settled"), 0);
    ledger.assert_conserved();
}

#[test]
fn a_cart_with_an_item_the_buyer_owns_is_refused_naming_the_line() {
    let (mut ledger, lines) = twenty_line_ledger();
    ledger
        .answer(Command::Purchase {
            purchase_id: purchase_id("p-1"),
            buyer_id: user_id("alice"),
            target: PurchaseTarget::Item(item_id("i-3")),
            expected_price: 13,
            region: None,
        })
        .expect("bought");
    let wallet = ledger.wallet("alice");
    // i-3 is the cart's fifth line (after the crown at line 3).
    assert_eq!(
        ledger.answer(cart("cart-1", "alice", lines)),
        Err(rejection(
            RejectionCode::AlreadyOwned,
            "line 5: alice already owns what item i-3 sells"
        ))
    );
    assert_eq!(ledger.wallet("alice"), wallet);
    assert!(ledger.item("drop").reservations.is_empty());
    ledger.assert_conserved();
}

#[test]
fn a_refused_line_reports_its_own_code_and_the_first_refused_line_wins() {
    let (mut ledger, mut lines) = twenty_line_ledger();
    lines[1].expected_price += 1; // line 2: price changed
    lines[9] = line("ghost", 1); // line 10: not found
    let answer = ledger.answer(cart("cart-1", "alice", lines));
    assert_eq!(
        answer,
        Err(rejection(
            RejectionCode::PriceChanged,
            "line 2: item i-1 costs 11, not 12"
        ))
    );
    ledger.assert_conserved();
}

#[test]
fn one_line_of_a_paid_cart_is_refunded_on_its_own() {
    let (mut ledger, lines) = twenty_line_ledger();
    ledger
        .answer(cart("cart-1", "alice", lines.clone()))
        .expect("paid");
    let wallet = ledger.wallet("alice");
    let dave = ledger.pending("dave");
    let frank = ledger.pending("frank");
    // The drop (line 7, a serial) and the bundle (line 20).
    for (line, price) in [(7, 50), (20, 150)] {
        let refunded = ledger.answer(Command::Refund {
            refund_id: refund_id(&format!("r-{line}")),
            purchase_id: purchase_id(&format!("cart-1.line-{line}")),
        });
        assert_eq!(
            refunded,
            Ok(Success::Refunded {
                purchase_id: purchase_id(&format!("cart-1.line-{line}")),
                amount: price,
            })
        );
    }
    assert_eq!(ledger.wallet("alice"), wallet + 200);
    assert_eq!(ledger.pending("dave"), dave - 35);
    assert_eq!(ledger.pending("frank"), frank - 105);
    assert!(ledger.item("drop").holders.is_empty());
    assert_eq!(ledger.item("drop").next_free_serial(), Some(1));
    assert!(!ledger.owns("alice", "scarf") && !ledger.owns("alice", "boots"));
    // The other lines stay bought.
    assert!(ledger.owns("alice", "i-0"));
    assert_eq!(ledger.item("crown").holders[&1].user_id, user_id("alice"));
    // Refunding a line again, or the cart itself, is refused.
    assert_eq!(
        ledger
            .answer(Command::Refund {
                refund_id: refund_id("r-again"),
                purchase_id: purchase_id("cart-1.line-7"),
            })
            .unwrap_err()
            .code,
        RejectionCode::AlreadyRefunded
    );
    assert_eq!(
        ledger.answer(Command::Refund {
            refund_id: refund_id("r-cart"),
            purchase_id: purchase_id("cart-1"),
        }),
        Err(rejection(
            RejectionCode::NotFound,
            "cart-1 is a cart, not a purchase: its lines are refunded one by one, as purchases \
             cart-1.line-1 to cart-1.line-20"
        ))
    );
    ledger.assert_conserved();
}

#[test]
fn with_rate_limits_on_a_cart_counts_as_one_purchase_request() {
    let mut config = Config {
        escrow_hold_ms: ESCROW_HOLD_MS,
        ..Config::new(SHARDS)
    };
    config.purchase_limits = crate::limits::PurchaseLimits {
        purchases_per_window: 2,
        purchase_window_ms: 60_000,
        item_request_interval_ms: 0,
    };
    let mut ledger = Ledger::with(config);
    for index in 0..8 {
        ledger.publish(item(&format!("i-{index}"), "carol", 10));
    }
    ledger.grant("alice", 1_000);
    // Cart ids homed on alice's shard (admitted in the accepting step) and
    // elsewhere (`AdmitCart` to her shard first).
    let buyer_shard = ledger.config.shard_of(&keys::user(&user_id("alice")));
    let homed = |local: bool, nth: usize| {
        (0..)
            .map(|n| format!("cart-{local}-{n}"))
            .filter(|id| {
                (ledger.config.shard_of(&keys::purchase(&purchase_id(id))) == buyer_shard) == local
            })
            .nth(nth)
            .expect("some id lands on each side")
    };
    let (local, remote) = (homed(true, 0), homed(false, 0));
    let (local_again, remote_again) = (homed(true, 1), homed(false, 1));
    let lines = |from: usize| {
        (from..from + 2)
            .map(|i| line(&format!("i-{i}"), 10))
            .collect()
    };
    assert!(ledger.answer(cart(&local, "alice", lines(0))).is_ok());
    assert!(ledger.answer(cart(&remote, "alice", lines(2))).is_ok());
    // Two carts of two lines each are two purchase requests: the window is full.
    for id in [local_again, remote_again] {
        let from = ledger.events.len();
        let refused = ledger.run(cart(&id, "alice", lines(4)));
        assert!(matches!(refused, Decision::Apply { .. }));
        // Answered rate_limited and forgotten: nothing reserved.
        let withdrawn: Vec<&Event> = ledger.events[from..]
            .iter()
            .map(|(_, event)| event)
            .filter(|event| matches!(event, Event::CommandWithdrawn { .. }))
            .collect();
        assert_eq!(withdrawn.len(), 1, "{id}");
        let key = keys::purchase(&purchase_id(&id));
        assert!(!ledger.shard_of(&key).commands.contains_key(key.as_str()));
        assert_eq!(ledger.count_since(from, "serial_reserved"), 0);
        assert_eq!(ledger.count_since(from, "buyer_debited"), 0);
    }
    let admitted = ledger
        .events
        .iter()
        .filter(|(_, event)| matches!(event, Event::PurchaseAdmitted { .. }))
        .count();
    assert_eq!(admitted, 2, "one admission per cart");
    assert_eq!(ledger.wallet("alice"), 960);
    ledger.assert_conserved();
}
