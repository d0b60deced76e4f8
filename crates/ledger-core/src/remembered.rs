//! How a shard keeps the commands it ran (for idempotent answers, refunds
//! and takedowns): a running command as a value, since each step changes
//! it; a completed one, which never changes again, as its encoding.
//!
//! A completed primary purchase as a value is a dozen allocations (its
//! ids, its reservation, its completion's positions and deliveries), about
//! 800 bytes of heap; encoded, it is one allocation of about 250 bytes,
//! about 170 with each id's text written once (a purchase names its item
//! up to four times; see [`crate::ids::with_id_table`]), and the length
//! of the command's own id less again without it, since its key already
//! holds it (format 9 on; a catalogue purchase: 184 → 158 bytes). Completed records are read rarely (a retry, a refund, a takedown's
//! scan, the forgetting of old commands), and each read decodes them. A
//! snapshot holds these bytes as they are (format 8 on).

use std::borrow::Cow;
use std::sync::Arc;

use bincode::{Decode, Encode};

use crate::codec::CodecError;
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
    /// Keeps `record`, remembered under `key`: encoded if completed.
    pub fn new(key: &str, record: CommandRecord) -> Remembered {
        if record.completion.is_some() {
            Remembered::Completed(encode_once(key, &record))
        } else {
            Remembered::Running(Arc::new(record))
        }
    }

    /// The record remembered under `key` (decoded if completed).
    pub fn record(&self, key: &str) -> Cow<'_, CommandRecord> {
        match self {
            Remembered::Running(record) => Cow::Borrowed(record),
            Remembered::Completed(bytes) => Cow::Owned(
                decode_kept(key, bytes)
                    .expect("a remembered command decodes: its bytes were encoded by this shard"),
            ),
        }
    }

    /// A completed command kept in format 8's way (its own id written in
    /// its bytes), kept as format 9 keeps it; a running one as it is.
    pub(crate) fn upgrade_format_eight(self, key: &str) -> Result<Remembered, CodecError> {
        match self {
            Remembered::Running(record) => Ok(Remembered::Running(record)),
            Remembered::Completed(bytes) => Ok(Remembered::new(key, decode_seeded(None, &bytes)?)),
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

    /// Encodes a running record (remembered under `key`) that has just
    /// completed.
    pub fn seal_if_completed(&mut self, key: &str) {
        if let Remembered::Running(record) = self {
            if record.completion.is_some() {
                *self = Remembered::Completed(encode_once(key, record));
            }
        }
    }

    pub fn is_completed(&self) -> bool {
        matches!(self, Remembered::Completed(_))
    }
}

/// The id a command's key names (`purchase:<id>` names `<id>`): the first
/// id of the table its kept bytes are written with and read back with. A
/// key whose rest is not one id (`exposures:<test>:<batch>`) seeds a text
/// no id equals: nothing is saved, and nothing is read wrong.
fn own_id(key: &str) -> Option<&str> {
    key.split_once(':').map(|(_, id)| id)
}

/// `record` (remembered under `key`) in the record encoding with its own
/// id's text left to the key, written once into a scratch buffer and
/// copied into its one allocation (`encode_to_vec` would measure it
/// first, then write it, then `Arc<[u8]>` would copy it again).
fn encode_once(key: &str, record: &CommandRecord) -> Arc<[u8]> {
    thread_local! {
        static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    SCRATCH.with_borrow_mut(|scratch| {
        scratch.clear();
        crate::ids::with_seeded_id_table(own_id(key), || {
            crate::codec::encode_record_part_into(record, scratch)
        });
        Arc::from(scratch.as_slice())
    })
}

/// The record kept as `bytes` under `key` (which must be the key it was
/// kept under: its own id is read from the key).
fn decode_kept(key: &str, bytes: &[u8]) -> Result<CommandRecord, CodecError> {
    decode_seeded(own_id(key), bytes)
}

/// Kept bytes decoded with `seed` as the id table's first id (`None`:
/// format 8's bytes, which write every id).
fn decode_seeded(seed: Option<&str>, bytes: &[u8]) -> Result<CommandRecord, CodecError> {
    crate::ids::with_seeded_id_table(seed, || {
        crate::codec::decode_record_part("remembered command", bytes)
    })
}

impl PartialEq for Remembered {
    fn eq(&self, other: &Remembered) -> bool {
        match (self, other) {
            // One encoding per value: a record holds no floats and no hash
            // maps (its ordered maps encode in order).
            (Remembered::Completed(left), Remembered::Completed(right)) => left == right,
            (Remembered::Running(left), Remembered::Running(right)) => left == right,
            // A keyed command's record names the key it is kept under. A
            // listing cancel (kept under `cancel:<listing>` while it runs)
            // has none: it equals only a record in the same form, which is
            // all a state holds between events, since a shard seals a
            // command as it completes.
            (Remembered::Running(running), Remembered::Completed(bytes))
            | (Remembered::Completed(bytes), Remembered::Running(running)) => running
                .command
                .idempotency_key()
                .and_then(|key| decode_kept(&key, bytes).ok())
                .is_some_and(|completed| completed == **running),
        }
    }
}

impl Eq for Remembered {}

impl std::fmt::Debug for Remembered {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Remembered::Running(record) => formatter.debug_tuple("Running").field(record).finish(),
            Remembered::Completed(bytes) => formatter
                .debug_tuple("Completed")
                .field(&format_args!("{} bytes", bytes.len()))
                .finish(),
        }
    }
}

/// Remembered commands as a snapshot holds them (format 8 on; in format 9
/// the kept bytes leave the command's own id to its key): a running
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
                if record.completion.is_some() {
                    // A shard keeps a command encoded as soon as it completes.
                    return Err(DecodeError::Other("a running command is completed"));
                }
                Ok(Remembered::Running(Arc::new(record)))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{decode_record_part, encode, encode_record_part};
    use crate::model::*;
    use crate::{GrantId, ShardId, UserId};

    /// The key a grant `g-1` is remembered under.
    const GRANT_KEY: &str = "grant:g-1";

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
        let completed = Remembered::new(GRANT_KEY, grant(true));
        assert!(completed.is_completed());
        assert_eq!(completed.running(), None);
        assert_eq!(completed.record(GRANT_KEY).into_owned(), grant(true));
        let running = Remembered::new(GRANT_KEY, grant(false));
        assert_eq!(running.running(), Some(&grant(false)));
    }

    #[test]
    fn a_snapshot_holds_a_completed_command_as_kept_and_a_running_one_as_its_record() {
        for completed in [false, true] {
            let remembered = Remembered::new(GRANT_KEY, grant(completed));
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
            assert_eq!(decoded.record(GRANT_KEY).into_owned(), grant(completed));
            let wire: Remembered =
                crate::codec::decode("remembered", &encode(&remembered)).expect("decodes");
            assert_eq!(wire, remembered);
        }
        // Any other tag is refused.
        let mut other = encode_record_part(&Remembered::new(GRANT_KEY, grant(true)));
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
        let key = "purchase:purchase-0001";
        let Remembered::Completed(kept) = Remembered::new(key, record.clone()) else {
            panic!("a completed record is kept encoded")
        };
        // Three repeats of the item (19 bytes of text and a length each)
        // and one of the buyer (10 and a length) become two bytes each,
        // and so does the purchase's own id (13 and a length), which the
        // key holds.
        assert_eq!(kept.len(), plain - 3 * (20 - 2) - (11 - 2) - (14 - 2));
        let decoded = Remembered::Completed(Arc::clone(&kept))
            .record(key)
            .into_owned();
        let elsewhere = Remembered::Completed(kept);
        let elsewhere = elsewhere.record("purchase:purchase-0002");
        assert!(
            matches!(&elsewhere.command, Command::Purchase { purchase_id, .. }
                if purchase_id.as_str() == "purchase-0002"),
            "the own id is the key's: {:?}",
            elsewhere.command
        );
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
        let mut sealed = Remembered::new(GRANT_KEY, grant(false));
        sealed.running_mut().completion = grant(true).completion;
        assert!(!sealed.is_completed(), "sealed only when asked");
        assert_eq!(sealed, Remembered::new(GRANT_KEY, grant(true)));
        sealed.seal_if_completed(GRANT_KEY);
        assert!(sealed.is_completed());
        assert_eq!(sealed, Remembered::new(GRANT_KEY, grant(true)));
        assert_ne!(sealed, Remembered::new(GRANT_KEY, grant(false)));
    }

    #[test]
    #[should_panic(expected = "a completed command does not change")]
    fn a_completed_command_cannot_be_changed() {
        Remembered::new(GRANT_KEY, grant(true)).running_mut();
    }
}
