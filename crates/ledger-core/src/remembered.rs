//! How a shard keeps the commands it ran (for idempotent answers, refunds
//! and takedowns): a running command as a value, since each step changes
//! it; a completed one, which never changes again, as its encoding.
//!
//! A completed primary purchase as a value is a dozen allocations (its
//! ids, its reservation, its completion's positions and deliveries), about
//! 800 bytes of heap; encoded, it is one allocation of about 250 bytes,
//! and about 170 with each id's text written once (a purchase names its
//! item up to four times; see [`crate::ids::with_id_table`]). Completed
//! records are read rarely (a retry, a refund, a takedown's scan, the
//! forgetting of old commands), and each read decodes them. A snapshot
//! holds these bytes as they are (format 8 on).

use std::borrow::Cow;
use std::sync::Arc;

use bincode::{Decode, Encode};
use serde::{Deserialize, Serialize};

use crate::state::CommandRecord;

/// A command a shard remembers.
#[derive(Clone)]
pub enum Remembered {
    /// Not yet completed: the record as it is now.
    Running(Arc<CommandRecord>),
    /// Completed: the record in the record encoding (variable-length
    /// integers) with each id's text written once, as a snapshot holds it.
    Completed(Arc<[u8]>),
}

impl Remembered {
    /// Keeps `record`: encoded if completed.
    pub fn new(record: CommandRecord) -> Remembered {
        if record.completion.is_some() {
            Remembered::Completed(encode_once(&record))
        } else {
            Remembered::Running(Arc::new(record))
        }
    }

    /// The record (decoded if completed).
    pub fn record(&self) -> Cow<'_, CommandRecord> {
        match self {
            Remembered::Running(record) => Cow::Borrowed(record),
            Remembered::Completed(bytes) => Cow::Owned(
                crate::ids::with_id_table(|| {
                    crate::codec::decode_record_part("remembered command", bytes)
                })
                .expect("a remembered command decodes: its bytes were encoded by this shard"),
            ),
        }
    }

    /// The record of a command that has not completed.
    pub fn running(&self) -> Option<&CommandRecord> {
        match self {
            Remembered::Running(record) => Some(record),
            Remembered::Completed(_) => None,
        }
    }

    /// The running record, to change (copied if a snapshot shares it).
    ///
    /// Panics on a completed command: it never changes again.
    pub fn running_mut(&mut self) -> &mut CommandRecord {
        match self {
            Remembered::Running(record) => Arc::make_mut(record),
            Remembered::Completed(_) => panic!("a completed command does not change"),
        }
    }

    /// Encodes a running record that has just completed.
    pub fn seal_if_completed(&mut self) {
        if let Remembered::Running(record) = self {
            if record.completion.is_some() {
                *self = Remembered::Completed(encode_once(record));
            }
        }
    }

    pub fn is_completed(&self) -> bool {
        matches!(self, Remembered::Completed(_))
    }
}

/// `record` in the record encoding, written once into a scratch buffer
/// and copied into its one allocation (`encode_to_vec` would measure it
/// first, then write it, then `Arc<[u8]>` would copy it again).
fn encode_once(record: &CommandRecord) -> Arc<[u8]> {
    thread_local! {
        static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    SCRATCH.with_borrow_mut(|scratch| {
        scratch.clear();
        crate::ids::with_id_table(|| crate::codec::encode_record_part_into(record, scratch));
        Arc::from(scratch.as_slice())
    })
}

impl PartialEq for Remembered {
    fn eq(&self, other: &Remembered) -> bool {
        match (self, other) {
            // One encoding per value: a record holds no floats and no hash
            // maps (its ordered maps encode in order).
            (Remembered::Completed(left), Remembered::Completed(right)) => left == right,
            _ => self.record() == other.record(),
        }
    }
}

impl Eq for Remembered {}

impl std::fmt::Debug for Remembered {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.record().fmt(formatter)
    }
}

/// Remembered commands as a snapshot holds them (format 8 on): a running
/// command as `0` and its record; a completed one as `1` and its bytes as
/// kept (a length, then the bytes), so a snapshot copies them out and back
/// without decoding them.
const RUNNING_TAG: u8 = 0;
const COMPLETED_TAG: u8 = 1;

impl Encode for Remembered {
    fn encode<E: bincode::enc::Encoder>(
        &self,
        encoder: &mut E,
    ) -> Result<(), bincode::error::EncodeError> {
        use bincode::enc::write::Writer;
        match self {
            Remembered::Running(record) => {
                RUNNING_TAG.encode(encoder)?;
                record.encode(encoder)
            }
            Remembered::Completed(bytes) => {
                COMPLETED_TAG.encode(encoder)?;
                (bytes.len() as u64).encode(encoder)?;
                encoder.writer().write(bytes)
            }
        }
    }
}

impl<Context> Decode<Context> for Remembered {
    fn decode<D: bincode::de::Decoder<Context = Context>>(
        decoder: &mut D,
    ) -> Result<Self, bincode::error::DecodeError> {
        use bincode::de::read::Reader;
        use bincode::error::DecodeError;
        match u8::decode(decoder)? {
            RUNNING_TAG => {
                let record: CommandRecord = Decode::decode(decoder)?;
                Ok(Remembered::new(record))
            }
            COMPLETED_TAG => {
                let length = u64::decode(decoder)?;
                let length =
                    usize::try_from(length).map_err(|_| DecodeError::OutsideUsizeRange(length))?;
                decoder.claim_container_read::<u8>(length)?;
                let mut bytes = vec![0_u8; length];
                decoder.reader().read(&mut bytes)?;
                Ok(Remembered::Completed(Arc::from(bytes)))
            }
            found => Err(DecodeError::UnexpectedVariant {
                type_name: "Remembered",
                allowed: &bincode::error::AllowedEnumVariants::Range { min: 0, max: 1 },
                found: u32::from(found),
            }),
        }
    }
}

bincode::impl_borrow_decode!(Remembered);

impl Serialize for Remembered {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.record().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Remembered {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        CommandRecord::deserialize(deserializer).map(Remembered::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{decode_record_part, encode, encode_record_part};
    use crate::model::*;
    use crate::{GrantId, ShardId, UserId};

    fn grant(completed: bool) -> CommandRecord {
        let command = Command::Grant {
            grant_id: GrantId::parse("g-1").expect("valid id"),
            user_id: UserId::parse("alice").expect("valid id"),
            amount: 500,
        };
        CommandRecord {
            fingerprint: crate::codec::fingerprint(&command),
            command,
            meta: CommandMeta {
                at_ms: 42,
                actor: Actor {
                    role: Role::Service,
                    user_id: UserId::parse("flow").expect("valid id"),
                },
            },
            progress: Progress::Crediting,
            positions: vec![ShardPosition {
                shard: ShardId(1),
                sequence: 7,
            }],
            completion: completed.then(|| {
                Completion::new(
                    Ok(Success::Granted { balance_after: 500 }),
                    vec![ShardPosition {
                        shard: ShardId(0),
                        sequence: 9,
                    }],
                    Vec::new(),
                )
            }),
        }
    }

    #[test]
    fn a_completed_command_is_kept_encoded_and_a_running_one_as_a_value() {
        let completed = Remembered::new(grant(true));
        assert!(completed.is_completed());
        assert_eq!(completed.running(), None);
        assert_eq!(completed.record().into_owned(), grant(true));
        let running = Remembered::new(grant(false));
        assert_eq!(running.running(), Some(&grant(false)));
    }

    #[test]
    fn a_snapshot_holds_a_completed_command_as_kept_and_a_running_one_as_its_record() {
        for completed in [false, true] {
            let remembered = Remembered::new(grant(completed));
            let expected = match &remembered {
                Remembered::Running(record) => {
                    [vec![RUNNING_TAG], encode_record_part(&**record)].concat()
                }
                Remembered::Completed(bytes) => {
                    // One byte of length: the bytes kept are under 251.
                    assert!(bytes.len() < 251);
                    [vec![COMPLETED_TAG, bytes.len() as u8], bytes.to_vec()].concat()
                }
            };
            assert_eq!(encode_record_part(&remembered), expected);
            // Both encodings (variable- and fixed-width integers) read back.
            let decoded: Remembered = decode_record_part("remembered", &expected).expect("decodes");
            assert_eq!(decoded.is_completed(), completed);
            assert_eq!(decoded, remembered);
            assert_eq!(decoded.record().into_owned(), grant(completed));
            let wire: Remembered =
                crate::codec::decode("remembered", &encode(&remembered)).expect("decodes");
            assert_eq!(wire, remembered);
        }
        // Any other tag is refused.
        let mut other = encode_record_part(&Remembered::new(grant(true)));
        other[0] = 2;
        assert!(decode_record_part::<Remembered>("remembered", &other).is_err());
    }

    /// A completed purchase names its item four times and its buyer twice;
    /// kept, each id's text is written once, and decoded, the repeats share
    /// the first one's allocation.
    #[test]
    fn a_completed_purchase_keeps_each_id_once() {
        let item_id = crate::ItemId::parse("catalogue-item-0001").expect("valid id");
        let buyer_id = UserId::parse("buyer-0001").expect("valid id");
        let purchase_id = crate::PurchaseId::parse("purchase-0001").expect("valid id");
        let target = PurchaseTarget::Item(item_id.clone());
        let command = Command::Purchase {
            purchase_id,
            buyer_id: buyer_id.clone(),
            target: target.clone(),
            expected_price: 250,
            region: None,
        };
        let record = CommandRecord {
            fingerprint: crate::codec::fingerprint(&command),
            command,
            meta: CommandMeta {
                at_ms: 42,
                actor: Actor {
                    role: Role::User,
                    user_id: buyer_id,
                },
            },
            progress: Progress::Paid {
                reservation: Reservation {
                    price: 250,
                    creator_id: UserId::parse("creator-01").expect("valid id"),
                    sale: SaleKind::Item {
                        item_id: item_id.clone(),
                        serial: None,
                    },
                    terms: None,
                },
            },
            positions: Vec::new(),
            completion: Some(Completion::new(
                Ok(Success::Purchased {
                    target,
                    price: 250,
                    serial: None,
                    granted_items: vec![item_id.clone()],
                    balance_after: 750,
                }),
                Vec::new(),
                Vec::new(),
            )),
        };
        let plain = encode_record_part(&record).len();
        let Remembered::Completed(kept) = Remembered::new(record.clone()) else {
            panic!("a completed record is kept encoded")
        };
        // Three repeats of the item (19 bytes of text and a length each)
        // and one of the buyer (10 and a length) become two bytes each.
        assert_eq!(kept.len(), plain - 3 * (20 - 2) - (11 - 2));
        let decoded = Remembered::Completed(kept).record().into_owned();
        assert_eq!(decoded, record);
        let Command::Purchase {
            target: PurchaseTarget::Item(first),
            ..
        } = &decoded.command
        else {
            panic!("a purchase of an item")
        };
        let Some(Completion {
            result: Ok(Success::Purchased { granted_items, .. }),
            ..
        }) = &decoded.completion
        else {
            panic!("a completed purchase")
        };
        assert_eq!(
            first.as_str().as_ptr(),
            granted_items[0].as_str().as_ptr(),
            "the repeats share one allocation"
        );
    }

    #[test]
    fn a_record_sealed_on_completion_equals_one_kept_completed() {
        let mut sealed = Remembered::new(grant(false));
        sealed.running_mut().completion = grant(true).completion;
        assert!(!sealed.is_completed(), "sealed only when asked");
        assert_eq!(sealed, Remembered::new(grant(true)));
        sealed.seal_if_completed();
        assert!(sealed.is_completed());
        assert_eq!(sealed, Remembered::new(grant(true)));
        assert_ne!(sealed, Remembered::new(grant(false)));
    }

    #[test]
    #[should_panic(expected = "a completed command does not change")]
    fn a_completed_command_cannot_be_changed() {
        Remembered::new(grant(true)).running_mut();
    }
}
