//! Given-when-then for `decide`, on one shard.
//!
//! `given(events)` folds events into a fresh shard with `evolve`; a `when_…`
//! call decides one input; `then…` checks the decision exactly (every event,
//! in order, or the exact refusal) and applies the events with `evolve`, so
//! they must also be valid for the shard.
//!
//! The shard under test is [`HOME`] in a one-shard ledger: every key lives
//! there, so what it sends to other flows goes to itself. Messages under
//! test come from [`PEER`], so answers to their sender go there.

use crate::codec::fingerprint;
use crate::ids::*;
use crate::model::*;
use crate::money::{Account, Posting};
use crate::state::{evolve, Config, ShardState};

use super::{decide, Answer, Decision, Input};

/// The shard under test.
pub(super) const HOME: ShardId = ShardId(0);
/// Another shard, the sender of the messages under test.
pub(super) const PEER: ShardId = ShardId(7);
/// When commands are issued.
pub(super) const NOW: TimestampMs = 1_000_000;
/// How long escrow is held in tests.
pub(super) const ESCROW_HOLD_MS: u64 = 1_000;
/// How long a bought serial is held before it may be listed, in tests.
pub(super) const RESALE_HOLD_MS: u64 = 500;

pub(super) fn config() -> Config {
    let mut config = Config::new(1);
    config.escrow_hold_ms = ESCROW_HOLD_MS;
    config.resale_hold_ms = RESALE_HOLD_MS;
    config
}

/// A shard that has logged `events`.
pub(super) fn given(events: impl IntoIterator<Item = Event>) -> Scenario {
    given_with(config(), events)
}

/// A shard with `config` that has logged `events`.
pub(super) fn given_with(config: Config, events: impl IntoIterator<Item = Event>) -> Scenario {
    let mut state = ShardState::new(HOME);
    for event in events {
        evolve(&mut state, &event);
    }
    Scenario { state, config }
}

pub(super) struct Scenario {
    state: ShardState,
    config: Config,
}

impl Scenario {
    pub(super) fn when(self, input: Input) -> Outcome {
        let decision = decide(&self.state, &self.config, &input);
        Outcome {
            state: self.state,
            decision,
        }
    }

    /// `command`, issued at [`NOW`] by the purchase flow service.
    pub(super) fn when_command(self, command: Command) -> Outcome {
        self.when_command_by(service(), command)
    }

    /// `command`, issued at [`NOW`] by `actor`.
    pub(super) fn when_command_by(self, actor: Actor, command: Command) -> Outcome {
        self.when(Input::Command {
            command,
            meta: meta_by(actor),
        })
    }

    /// `message` from [`PEER`], the next one this shard expects from it.
    pub(super) fn when_message(self, message: Message) -> Outcome {
        let sequence = self.state.next_inbound(PEER);
        self.when(Input::Message {
            from: PEER,
            sequence,
            message: message.into(),
        })
    }

    pub(super) fn when_tick(self, now_ms: TimestampMs) -> Outcome {
        self.when(Input::Tick { now_ms })
    }
}

pub(super) struct Outcome {
    state: ShardState,
    decision: Decision,
}

impl Outcome {
    /// The decision appends exactly `expected` and nobody waits for an answer.
    pub(super) fn then(self, expected: Vec<Event>) {
        self.then_answers(Answer::None, expected);
    }

    /// The decision appends exactly `expected` and answers the caller with `answer`.
    pub(super) fn then_answers(self, answer: Answer, expected: Vec<Event>) {
        let Outcome {
            mut state,
            decision,
        } = self;
        assert_eq!(
            decision,
            Decision::Apply {
                events: expected,
                answer,
            }
        );
        if let Decision::Apply { events, .. } = decision {
            for event in &events {
                evolve(&mut state, event);
            }
        }
    }

    /// The command is refused at once with `code` and `detail`.
    pub(super) fn then_refused(self, code: RejectionCode, detail: &str) {
        assert_eq!(self.decision, Decision::Refuse(rejection(code, detail)));
    }

    /// The decision is exactly `expected` (a duplicate or early message).
    pub(super) fn then_decides(self, expected: Decision) {
        assert_eq!(self.decision, expected);
    }
}

// ------------------------------------------------------------------ ids

pub(super) fn user_id(name: &str) -> UserId {
    UserId::parse(name).expect("test user id is valid")
}
pub(super) fn item_id(name: &str) -> ItemId {
    ItemId::parse(name).expect("test item id is valid")
}
pub(super) fn bundle_id(name: &str) -> BundleId {
    BundleId::parse(name).expect("test bundle id is valid")
}
pub(super) fn purchase_id(name: &str) -> PurchaseId {
    PurchaseId::parse(name).expect("test purchase id is valid")
}
pub(super) fn grant_id(name: &str) -> GrantId {
    GrantId::parse(name).expect("test grant id is valid")
}
pub(super) fn listing_id(name: &str) -> ListingId {
    ListingId::parse(name).expect("test listing id is valid")
}
pub(super) fn refund_id(name: &str) -> RefundId {
    RefundId::parse(name).expect("test refund id is valid")
}

// ------------------------------------------------------------------ actors and outcomes

/// The purchase flow service, which may act for anyone.
pub(super) fn service() -> Actor {
    Actor {
        role: Role::Service,
        user_id: user_id("purchase-flow"),
    }
}

/// A user acting for themselves.
pub(super) fn acting_user(name: &str) -> Actor {
    Actor {
        role: Role::User,
        user_id: user_id(name),
    }
}

fn meta_by(actor: Actor) -> CommandMeta {
    CommandMeta { at_ms: NOW, actor }
}

pub(super) fn rejection(code: RejectionCode, detail: &str) -> Rejection {
    Rejection::new(code, detail)
}

/// Position `sequence` of the shard under test.
pub(super) fn position(sequence: u64) -> ShardPosition {
    ShardPosition {
        shard: HOME,
        sequence,
    }
}

/// Message `sequence` from the shard under test to `to`.
pub(super) fn delivery(to: ShardId, sequence: u64) -> DeliveryMark {
    DeliveryMark {
        from: HOME,
        to,
        sequence,
    }
}

// ------------------------------------------------------------------ catalogue

/// A plain item on sale: no serials, no limits, no sale window.
pub(super) fn item(id: &str, creator: &str, price: i64) -> ItemDefinition {
    ItemDefinition {
        item_id: item_id(id),
        creator_id: user_id(creator),
        name: format!("{id} name"),
        price,
        supply: None,
        max_per_user: None,
        starts_at_ms: None,
        ends_at_ms: None,
        resellable: false,
        kind: crate::pricing::ItemKind::Accessory,
    }
}

/// A resellable Limited with serials `1..=supply`.
pub(super) fn limited(id: &str, creator: &str, price: i64, supply: u32) -> ItemDefinition {
    ItemDefinition {
        supply: Some(supply),
        resellable: true,
        ..item(id, creator, price)
    }
}

// ------------------------------------------------------------------ events

pub(super) fn published(definition: ItemDefinition) -> Event {
    Event::ItemPublished { definition }
}

/// `user` receives `amount` into a wallet holding `balance_before`.
pub(super) fn granted(grant: &str, user: &str, amount: i64, balance_before: i64) -> Event {
    Event::CurrencyGranted {
        grant_id: grant_id(grant),
        user_id: user_id(user),
        amount,
        balance_after: balance_before + amount,
        postings: vec![
            Posting::new(Account::Issuance, -amount),
            Posting::new(Account::Wallet(user_id(user)), amount),
        ],
    }
}

/// `command` accepted on its home shard at [`NOW`], issued by the service.
pub(super) fn accepted(command: Command) -> Event {
    let key = command
        .idempotency_key()
        .expect("keyed command in an accepted test event");
    Event::CommandAccepted {
        key,
        fingerprint: fingerprint(&command),
        command,
        meta: meta_by(service()),
    }
}

pub(super) fn progressed(key: &str, progress: Progress) -> Event {
    Event::CommandProgressed {
        key: key.to_string(),
        progress,
        position: None,
    }
}

pub(super) fn completed(
    key: &str,
    result: Result<Success, Rejection>,
    positions: Vec<ShardPosition>,
    deliveries: Vec<DeliveryMark>,
) -> Event {
    Event::CommandCompleted {
        key: key.to_string(),
        completion: Completion {
            result,
            positions,
            deliveries,
            retry_after_ms: None,
        },
    }
}

/// A paid purchase completed with what it sold.
pub(super) fn purchase_completed(
    key: &str,
    success: Success,
    positions: Vec<ShardPosition>,
    deliveries: Vec<DeliveryMark>,
    reservation: Reservation,
) -> Event {
    Event::PurchaseCompleted {
        key: key.to_string(),
        completion: Completion {
            result: Ok(success),
            positions,
            deliveries,
            retry_after_ms: None,
        },
        reservation,
    }
}

pub(super) fn sent(to: ShardId, sequence: u64, message: Message) -> Event {
    Event::MessageSent {
        to,
        sequence,
        message: message.into(),
    }
}

/// Message `sequence` from [`PEER`] consumed.
pub(super) fn received(sequence: u64) -> Event {
    Event::MessageReceived {
        from: PEER,
        sequence,
    }
}

/// Serial `serial` of `item` reserved then sold to `buyer` by `purchase` at `at_ms`.
pub(super) fn serial_sold(
    item: &str,
    serial: u32,
    purchase: &str,
    buyer: &str,
    at_ms: TimestampMs,
) -> [Event; 2] {
    [
        Event::SerialReserved {
            item_id: item_id(item),
            serial,
            purchase_id: purchase_id(purchase),
            buyer_id: user_id(buyer),
        },
        Event::SerialSold {
            item_id: item_id(item),
            serial,
            purchase_id: purchase_id(purchase),
            buyer_id: user_id(buyer),
            at_ms,
        },
    ]
}

/// `creator`'s escrow for `purchase` (a primary sale), released at `release_at_ms`.
pub(super) fn sale_settled(
    purchase: &str,
    creator: &str,
    creator_share: i64,
    platform_fee: i64,
    release_at_ms: TimestampMs,
) -> Event {
    let cleared = creator_share + platform_fee;
    Event::SaleSettled {
        purchase_id: purchase_id(purchase),
        creator_id: user_id(creator),
        resale: false,
        cleared,
        creator_share,
        platform_fee,
        policy_version: 1,
        release_at_ms,
        postings: vec![
            Posting::new(Account::Clearing, -cleared),
            Posting::new(Account::Pending(user_id(creator)), creator_share),
            Posting::new(Account::Fees, platform_fee),
        ],
    }
}
