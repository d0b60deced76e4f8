//! How a shard keeps the commands it ran (for idempotent answers, refunds
//! and takedowns): a running command as a value, since each step changes
//! it; a completed one, which never changes again, as its encoding.
//!
//! A completed primary purchase as a value is a dozen allocations (its
//! ids, its reservation, its completion's positions and deliveries), about
//! 800 bytes of heap; encoded, it is one allocation of about 250 bytes.
//! Completed records are read rarely (a retry, a refund, a takedown's
//! scan, the forgetting of old commands), and each read decodes them.

use std::borrow::Cow;
use std::sync::Arc;

use bincode::config::{Endianness, IntEncoding};
use bincode::{Decode, Encode};
use serde::{Deserialize, Serialize};

use crate::state::CommandRecord;

/// A command a shard remembers.
#[derive(Clone)]
pub enum Remembered {
    /// Not yet completed: the record as it is now.
    Running(Arc<CommandRecord>),
    /// Completed: the record in the record encoding (variable-length
    /// integers), exactly as a snapshot holds it.
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
                crate::codec::decode_record_part("remembered command", bytes)
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
        crate::codec::encode_record_part_into(record, scratch);
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

impl Encode for Remembered {
    fn encode<E: bincode::enc::Encoder>(
        &self,
        encoder: &mut E,
    ) -> Result<(), bincode::error::EncodeError> {
        use bincode::config::Config;
        use bincode::enc::write::Writer;
        match self {
            Remembered::Running(record) => record.encode(encoder),
            // The snapshot's own encoding: the bytes are the record's.
            Remembered::Completed(bytes)
                if encoder.config().int_encoding() == IntEncoding::Variable
                    && encoder.config().endianness() == Endianness::Little =>
            {
                encoder.writer().write(bytes)
            }
            Remembered::Completed(_) => self.record().encode(encoder),
        }
    }
}

impl<Context> Decode<Context> for Remembered {
    fn decode<D: bincode::de::Decoder<Context = Context>>(
        decoder: &mut D,
    ) -> Result<Self, bincode::error::DecodeError> {
        let record: CommandRecord = Decode::decode(decoder)?;
        Ok(Remembered::new(record))
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
    fn encodings_are_those_of_the_record_in_both_configurations() {
        for completed in [false, true] {
            let remembered = Remembered::new(grant(completed));
            // The snapshot's encoding: a completed record's bytes as kept.
            assert_eq!(
                encode_record_part(&remembered),
                encode_record_part(&grant(completed))
            );
            // The wire encoding (fixed-width integers) re-encodes.
            assert_eq!(encode(&remembered), encode(&grant(completed)));
            let decoded: Remembered =
                decode_record_part("remembered", &encode_record_part(&grant(completed)))
                    .expect("decodes");
            assert_eq!(decoded.is_completed(), completed);
            assert_eq!(decoded.record().into_owned(), grant(completed));
        }
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
