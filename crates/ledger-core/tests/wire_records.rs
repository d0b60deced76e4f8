//! The records of the distributed mode's commands and replies topics
//! round-trip through the codec, and garbage is refused, not misread.

use ledger_core::codec::{CommandRecord, ReplyRecord};
use ledger_core::*;

fn record() -> CommandRecord {
    CommandRecord {
        request_id: "00ff00ff00ff00ff-7".into(),
        reply_partition: 3,
        command: Command::Grant {
            grant_id: GrantId::parse("g-1").unwrap(),
            user_id: UserId::parse("alice").unwrap(),
            amount: 500,
        },
        meta: CommandMeta {
            at_ms: 1_764_000_000_000,
            actor: Actor {
                role: Role::Admin,
                user_id: UserId::parse("operator").unwrap(),
            },
        },
    }
}

#[test]
fn command_records_round_trip() {
    let original = record();
    let decoded = CommandRecord::from_bytes(&original.to_bytes()).unwrap();
    assert_eq!(decoded, original);
}

#[test]
fn reply_records_round_trip_successes_and_refusals() {
    for result in [
        Ok(Success::Granted { balance_after: 500 }),
        Err(Rejection::new(
            RejectionCode::SoldOut,
            "item crown is sold out",
        )),
    ] {
        let original = ReplyRecord {
            request_id: "abc-1".into(),
            completion: Completion {
                result,
                positions: vec![ShardPosition {
                    shard: ShardId(2),
                    sequence: 41,
                }],
                deliveries: vec![DeliveryMark {
                    from: ShardId(2),
                    to: ShardId(0),
                    sequence: 9,
                }],
                retry_after_ms: None,
            },
        };
        let decoded = ReplyRecord::from_bytes(&original.to_bytes()).unwrap();
        assert_eq!(decoded, original);
    }
}

#[test]
fn truncated_records_are_refused() {
    let bytes = record().to_bytes();
    assert!(CommandRecord::from_bytes(&bytes[..bytes.len() - 1]).is_err());
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(
        CommandRecord::from_bytes(&longer).is_err(),
        "trailing bytes are an error"
    );
}
