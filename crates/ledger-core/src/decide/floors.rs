//! Price floors: an admin sets a floor version on the floors' home shard,
//! which replicates it to every other shard and answers once all of them
//! hold it (see [`crate::pricing`]).

use crate::ids::ShardId;
use crate::model::*;
use crate::money::AMOUNT_MAX;
use crate::pricing::{ItemKind, FLOOR_VERSIONS_MAX};
use crate::state::{CommandRecord, ItemState, ShardState};

use super::out::Out;
use super::reject;
use super::saga::{self, SagaStage};

/// `SetPriceFloor` accepted on the floors' home shard: records the next
/// version and sends it to every other shard.
pub(super) fn start(
    out: &mut Out<'_>,
    key: &str,
    kind: ItemKind,
    price: i64,
    effective_from_ms: TimestampMs,
) {
    if !(0..=AMOUNT_MAX).contains(&price) {
        let rejection = reject(
            RejectionCode::ValidationFailed,
            format!("a floor must be between 0 and {AMOUNT_MAX}, not {price}"),
        );
        return out.complete(key, Err(rejection), Vec::new());
    }
    if out.state.price_floors.version_count(kind) >= FLOOR_VERSIONS_MAX {
        let rejection = reject(
            RejectionCode::ValidationFailed,
            format!("the floor of {kind} already has {FLOOR_VERSIONS_MAX} versions"),
        );
        return out.complete(key, Err(rejection), Vec::new());
    }
    let version = out.state.price_floors.next_version(kind);
    let position = out.push(Event::PriceFloorSet {
        kind,
        version,
        price,
        effective_from_ms,
    });
    let own = out.state.shard;
    let others: Vec<ShardId> = (0..out.config.shard_count)
        .map(ShardId)
        .filter(|shard| *shard != own)
        .collect();
    if others.is_empty() {
        let success = Success::PriceFloorSet {
            kind,
            version,
            price,
            effective_from_ms,
        };
        return out.complete(key, Ok(success), vec![position]);
    }
    for to in others {
        out.send(
            to,
            Message::ReplicatePriceFloor {
                key: key.to_string(),
                kind,
                version,
                price,
                effective_from_ms,
            },
        );
    }
}

/// On every other shard: holds the floor version from now on.
pub(super) fn replicate(
    out: &mut Out<'_>,
    key: &str,
    kind: ItemKind,
    version: u32,
    price: i64,
    effective_from_ms: TimestampMs,
) -> Message {
    let position = out.push(Event::PriceFloorReplicated {
        kind,
        version,
        price,
        effective_from_ms,
    });
    Message::PriceFloorHeld {
        key: key.to_string(),
        version,
        position,
    }
}

/// A floor change waiting for the other shards.
struct Replicating<'a> {
    kind: ItemKind,
    price: i64,
    effective_from_ms: TimestampMs,
    acknowledged: u32,
    _record: &'a CommandRecord,
}

impl<'a> SagaStage<'a> for Replicating<'a> {
    const EXPECTED: &'static str = "a floor change waiting for its replicas";

    fn read(record: &'a CommandRecord) -> Option<Self> {
        match (&record.command, &record.progress) {
            (
                Command::SetPriceFloor {
                    kind,
                    price,
                    effective_from_ms,
                },
                Progress::ReplicatingFloor { acknowledged },
            ) => Some(Self {
                kind: *kind,
                price: *price,
                effective_from_ms: *effective_from_ms,
                acknowledged: *acknowledged,
                _record: record,
            }),
            _ => None,
        }
    }
}

/// Back on the floors' home shard: one more shard holds the floor; once
/// all do, the change is answered.
pub(super) fn held(out: &mut Out<'_>, key: &str, version: u32, position: ShardPosition) {
    let change: Replicating = saga::stage(out.state, key);
    let acknowledged = change.acknowledged + 1;
    let expected = u32::from(out.config.shard_count) - 1;
    assert!(
        acknowledged <= expected,
        "floor change {key} is acknowledged once per shard"
    );
    if acknowledged < expected {
        out.push(Event::CommandProgressed {
            key: key.to_string(),
            progress: Progress::ReplicatingFloor { acknowledged },
            position: Some(position),
        });
        return;
    }
    let success = Success::PriceFloorSet {
        kind: change.kind,
        version,
        price: change.price,
        effective_from_ms: change.effective_from_ms,
    };
    out.complete(key, Ok(success), vec![position]);
}

/// Refuses `price` for `item_id` of `kind` at `at_ms` if it is under the
/// floor in force for the kind then.
pub(super) fn check_floor(
    state: &ShardState,
    item_id: &crate::ids::ItemId,
    kind: ItemKind,
    price: i64,
    at_ms: TimestampMs,
) -> Result<(), Rejection> {
    match state.price_floors.in_force(kind, at_ms) {
        Some((version, floor)) if price < floor.price => Err(reject(
            RejectionCode::BelowPriceFloor,
            format!(
                "item {item_id} would cost {price}, under the floor of {} for {kind} \
                 (version {version})",
                floor.price
            ),
        )),
        _ => Ok(()),
    }
}

/// The floor check of a reprice of `item`.
pub(super) fn check_reprice(
    item: &ItemState,
    state: &ShardState,
    price: i64,
    at_ms: TimestampMs,
) -> Result<(), Rejection> {
    check_floor(
        state,
        &item.definition.item_id,
        item.definition.kind,
        price,
        at_ms,
    )
}
