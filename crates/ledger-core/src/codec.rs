//! The one place that knows the byte format: bincode 2.0.1 inside a
//! versioned, hash-chained envelope. Old event versions are upcast on read.

use bincode::{Decode, Encode};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::ids::ShardId;
use crate::model::{Command, Event, Message, TimestampMs};
use crate::state::ShardState;

/// Fixed-width integers, little-endian: stable and fast to decode.
fn config() -> impl bincode::config::Config {
    bincode::config::standard()
        .with_fixed_int_encoding()
        .with_little_endian()
}

/// Bytes that could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("cannot decode {what}: {source}")]
    Decode {
        what: &'static str,
        source: bincode::error::DecodeError,
    },
    #[error("unknown event type {event_type} version {schema_version}")]
    UnknownVersion {
        event_type: String,
        schema_version: u16,
    },
    #[error("event type {declared} in the envelope does not match payload type {actual}")]
    TypeMismatch {
        declared: String,
        actual: &'static str,
    },
    #[error("hash of event {sequence} on shard {shard} does not match its content")]
    HashMismatch { shard: ShardId, sequence: u64 },
    #[error("{trailing} trailing bytes after {what}")]
    Trailing { what: &'static str, trailing: usize },
}

pub fn encode<T: Encode>(value: &T) -> Vec<u8> {
    bincode::encode_to_vec(value, config()).expect("encoding into a vector cannot fail")
}

pub fn decode<T: Decode<()>>(what: &'static str, bytes: &[u8]) -> Result<T, CodecError> {
    let (value, read) = bincode::decode_from_slice(bytes, config())
        .map_err(|source| CodecError::Decode { what, source })?;
    if read != bytes.len() {
        return Err(CodecError::Trailing {
            what,
            trailing: bytes.len() - read,
        });
    }
    Ok(value)
}

/// Idempotency fingerprint of a command's fields.
pub fn fingerprint(command: &Command) -> u64 {
    let digest = Sha256::digest(encode(command));
    u64::from_le_bytes(digest[..8].try_into().expect("8 bytes"))
}

pub type Hash = [u8; 32];
pub const GENESIS_HASH: Hash = [0; 32];

/// Current schema version of each event type. Bump one when its fields change
/// and teach `upcast` to read the old version.
pub fn schema_version(event_type: &str) -> u16 {
    match event_type {
        "item_published" => 2,
        "command_completed" => 2,
        _ => 1,
    }
}

/// An event as stored and published: header, payload and hash chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
pub struct Envelope {
    pub event_type: String,
    pub schema_version: u16,
    pub shard: ShardId,
    pub sequence: u64,
    /// What caused the event: `command:<key>`, `message:<from>:<sequence>` or `tick`.
    pub cause: String,
    pub timestamp_ms: TimestampMs,
    pub previous_hash: Hash,
    pub hash: Hash,
    pub payload: Vec<u8>,
}

fn envelope_hash(envelope: &Envelope) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update(envelope.previous_hash);
    hasher.update(envelope.event_type.as_bytes());
    hasher.update(envelope.schema_version.to_le_bytes());
    hasher.update(envelope.shard.0.to_le_bytes());
    hasher.update(envelope.sequence.to_le_bytes());
    hasher.update((envelope.cause.len() as u64).to_le_bytes());
    hasher.update(envelope.cause.as_bytes());
    hasher.update(envelope.timestamp_ms.to_le_bytes());
    hasher.update(&envelope.payload);
    hasher.finalize().into()
}

impl Envelope {
    /// Wraps an event at `sequence` of `shard`, chained to `previous_hash`.
    pub fn seal(
        event: &Event,
        shard: ShardId,
        sequence: u64,
        cause: &str,
        timestamp_ms: TimestampMs,
        previous_hash: Hash,
    ) -> Self {
        let event_type = event.type_name();
        let mut envelope = Envelope {
            event_type: event_type.to_string(),
            schema_version: schema_version(event_type),
            shard,
            sequence,
            cause: cause.to_string(),
            timestamp_ms,
            previous_hash,
            hash: GENESIS_HASH,
            payload: encode(event),
        };
        envelope.hash = envelope_hash(&envelope);
        envelope
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        encode(self)
    }

    /// Recomputes `hash` over the current header and payload (for writing
    /// fixtures of older schema versions).
    pub fn reseal(mut self) -> Self {
        self.hash = envelope_hash(&self);
        self
    }

    /// Decodes an envelope and checks its hash.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CodecError> {
        let envelope: Envelope = decode("envelope", bytes)?;
        if envelope_hash(&envelope) != envelope.hash {
            return Err(CodecError::HashMismatch {
                shard: envelope.shard,
                sequence: envelope.sequence,
            });
        }
        Ok(envelope)
    }

    /// The event, upcast to the current schema if it was written by an older one.
    pub fn event(&self) -> Result<Event, CodecError> {
        let current = schema_version(&self.event_type);
        if self.schema_version == current {
            let event: Event = decode("event", &self.payload)?;
            if event.type_name() != self.event_type {
                return Err(CodecError::TypeMismatch {
                    declared: self.event_type.clone(),
                    actual: event.type_name(),
                });
            }
            return Ok(event);
        }
        legacy::upcast(&self.event_type, self.schema_version, &self.payload)
    }
}

/// Readers of older event versions.
pub mod legacy {
    use super::*;
    use crate::ids::{ItemId, UserId};
    use crate::model::ItemDefinition;

    /// `item_published` version 1: before per-user caps and resale existed.
    #[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
    pub struct ItemPublishedV1 {
        pub item_id: ItemId,
        pub creator_id: UserId,
        pub name: String,
        pub price: i64,
        pub supply: Option<u32>,
        pub starts_at_ms: Option<TimestampMs>,
        pub ends_at_ms: Option<TimestampMs>,
    }

    /// `command_completed` version 1: a completion without delivery marks.
    #[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
    pub struct CompletionV1 {
        pub result: Result<crate::model::Success, crate::model::Rejection>,
        pub positions: Vec<crate::model::ShardPosition>,
    }

    /// Variant index of `Event::CommandCompleted` in every version.
    pub const COMMAND_COMPLETED_VARIANT: u32 = 4;

    pub fn upcast(
        event_type: &str,
        schema_version: u16,
        payload: &[u8],
    ) -> Result<Event, CodecError> {
        match (event_type, schema_version) {
            ("command_completed", 1) => {
                // Version 1 payloads are the whole event enum: variant index, then fields.
                let unknown = || CodecError::UnknownVersion {
                    event_type: event_type.to_string(),
                    schema_version,
                };
                let (variant, fields) = payload.split_at_checked(4).ok_or_else(unknown)?;
                if variant != COMMAND_COMPLETED_VARIANT.to_le_bytes() {
                    return Err(unknown());
                }
                let (key, v1): (String, CompletionV1) = decode("command_completed v1", fields)?;
                Ok(Event::CommandCompleted {
                    key,
                    completion: crate::model::Completion {
                        result: v1.result,
                        positions: v1.positions,
                        deliveries: Vec::new(),
                    },
                })
            }
            ("item_published", 1) => {
                let v1: ItemPublishedV1 = decode("item_published v1", payload)?;
                Ok(Event::ItemPublished {
                    definition: ItemDefinition {
                        item_id: v1.item_id,
                        creator_id: v1.creator_id,
                        name: v1.name,
                        price: v1.price,
                        supply: v1.supply,
                        max_per_user: None,
                        starts_at_ms: v1.starts_at_ms,
                        ends_at_ms: v1.ends_at_ms,
                        resellable: false,
                    },
                })
            }
            _ => Err(CodecError::UnknownVersion {
                event_type: event_type.to_string(),
                schema_version,
            }),
        }
    }
}

/// A shard message on the wire: sender, receiver, sequence and body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
pub struct MessageEnvelope {
    pub from: ShardId,
    pub to: ShardId,
    pub sequence: u64,
    pub message: Message,
}

/// A command on the commands topic of the distributed mode: what the command
/// API stamped, and where its answer goes.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct CommandRecord {
    /// Unique per request of one command-api instance; the reply carries it back.
    pub request_id: String,
    /// Partition of the replies topic the asking instance reads.
    pub reply_partition: i32,
    pub command: crate::Command,
    pub meta: crate::CommandMeta,
}

impl CommandRecord {
    pub fn to_bytes(&self) -> Vec<u8> {
        encode(self)
    }
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CodecError> {
        decode("command record", bytes)
    }
}

/// The answer to a [`CommandRecord`], published in the same transaction as
/// the events that decided it (so it is only seen once they are durable).
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct ReplyRecord {
    pub request_id: String,
    pub completion: crate::Completion,
}

impl ReplyRecord {
    pub fn to_bytes(&self) -> Vec<u8> {
        encode(self)
    }
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CodecError> {
        decode("reply record", bytes)
    }
}

/// A shard's state at a sequence, with the head of its hash chain.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct Snapshot {
    pub state: ShardState,
    pub last_hash: Hash,
}

impl Snapshot {
    pub fn to_bytes(&self) -> Vec<u8> {
        encode(self)
    }
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CodecError> {
        decode("snapshot", bytes)
    }
}
