//! The one place that knows the byte format: bincode 2.0.1 inside a
//! versioned, hash-chained envelope. Old event versions are upcast on read.

use bincode::{Decode, Encode};

use crate::remembered::Remembered;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::ids::{BundleId, ItemId, ListingId, PriceTestId, PurchaseId, ShardId, UserId};
use crate::limits::BuyerLimits;
use crate::model::{Command, Event, Message, RefundProgress, TimestampMs};
use crate::money::Account;
use crate::retention::Retention;
use crate::state::{BundleState, EscrowEntry, ItemState, ShardState};

/// Fixed-width integers, little-endian: stable and fast to decode.
fn config() -> bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Fixint,
    bincode::config::NoLimit,
> {
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
    #[error("checksum of the record of shard {shard} from event {first_sequence} does not match its content")]
    RecordChecksum { shard: ShardId, first_sequence: u64 },
    #[error("a record of {length} bytes is too short for its checksum")]
    RecordTooShort { length: usize },
    #[error("checksum of a snapshot of shard {shard} does not match its content")]
    SnapshotChecksum { shard: ShardId },
    #[error("compressed bytes do not unpack: {detail}")]
    Compression { detail: String },
}

/// Marks a compressed stored form (see [`compress_stored`]): these 8 bytes,
/// the unpacked length (u32, little-endian), then one LZ4 block.
pub const COMPRESSED_MAGIC: [u8; 8] = *b"LGRLZ4B1";

/// Most bytes a compressed record or snapshot may unpack to: a corrupted
/// length is refused before anything is allocated.
pub const UNPACKED_BYTES_MAX: usize = 1 << 30;

/// The compressed stored form of a record's or a snapshot's bytes, which
/// `BatchRecord::from_bytes` and `Snapshot::from_bytes` read as the bytes
/// themselves (their checksums cover the unpacked bytes, so the hash chain
/// does not depend on how a store keeps them). A store that keeps bytes at
/// rest compresses them (the embedded store does; Kafka and Cassandra
/// compress on their own); the bytes it is given stay the canonical form.
/// `bytes` itself when compression would not save space, or when they are
/// longer than a compressed form may unpack to.
pub fn compress_stored(bytes: &[u8]) -> Vec<u8> {
    if bytes.len() > UNPACKED_BYTES_MAX {
        return bytes.to_vec();
    }
    // Compressed straight behind the frame's header: one buffer, not a
    // block then a copy of it (a snapshot is hundreds of megabytes).
    let header = COMPRESSED_MAGIC.len() + 4;
    let mut framed = vec![0_u8; header + lz4_flex::block::get_maximum_output_size(bytes.len())];
    framed[..COMPRESSED_MAGIC.len()].copy_from_slice(&COMPRESSED_MAGIC);
    framed[COMPRESSED_MAGIC.len()..header].copy_from_slice(&(bytes.len() as u32).to_le_bytes());
    let block_length = lz4_flex::block::compress_into(bytes, &mut framed[header..])
        .expect("the output holds the largest block lz4 can produce");
    let framed_length = header + block_length;
    if framed_length >= bytes.len() {
        return bytes.to_vec();
    }
    framed.truncate(framed_length);
    framed.shrink_to_fit();
    framed
}

/// The bytes of a stored form: unpacked if compressed, else as they are.
fn unpack_stored(stored: &[u8]) -> Result<Cow<'_, [u8]>, CodecError> {
    let Some(rest) = stored.strip_prefix(&COMPRESSED_MAGIC) else {
        return Ok(Cow::Borrowed(stored));
    };
    let refuse = |detail: String| CodecError::Compression { detail };
    let (length, block) = rest
        .split_first_chunk::<4>()
        .ok_or_else(|| refuse("no unpacked length".to_string()))?;
    let length = u32::from_le_bytes(*length) as usize;
    if length > UNPACKED_BYTES_MAX {
        return Err(refuse(format!("an unpacked length of {length} bytes")));
    }
    let bytes =
        lz4_flex::block::decompress(block, length).map_err(|error| refuse(error.to_string()))?;
    if bytes.len() != length || bytes.starts_with(&COMPRESSED_MAGIC) {
        return Err(refuse(format!(
            "{} bytes unpacked where {length} were recorded",
            bytes.len()
        )));
    }
    Ok(Cow::Owned(bytes))
}

/// Format 2 records: variable-length integers (lengths, counts, variant
/// indexes and small amounts take one byte), little-endian.
fn record_config() -> bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::NoLimit,
> {
    bincode::config::standard()
        .with_variable_int_encoding()
        .with_little_endian()
}

/// [`encode_record_part`], appended to `buffer`.
pub(crate) fn encode_record_part_into<T: Encode>(value: &T, buffer: &mut Vec<u8>) {
    bincode::encode_into_std_write(value, buffer, record_config())
        .expect("encoding into a vector cannot fail");
}

/// Encodes in one pass into a growing vector (`bincode::encode_to_vec`
/// measures first, then writes: two passes over the value).
pub(crate) fn encode_record_part<T: Encode>(value: &T) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(128);
    encode_record_part_into(value, &mut bytes);
    bytes
}

/// Bytes of a `usize` or `u64` in the record encoding (bincode's varint:
/// one byte below 251, then a marker byte and 2, 4 or 8 bytes).
fn varint_size(value: u64) -> usize {
    match value {
        0..=250 => 1,
        251..=0xFFFF => 3,
        0x1_0000..=0xFFFF_FFFF => 5,
        _ => 9,
    }
}

pub(crate) fn decode_record_part<T: Decode<()>>(
    what: &'static str,
    bytes: &[u8],
) -> Result<T, CodecError> {
    decode_whole(what, bytes, record_config())
}

pub fn encode<T: Encode>(value: &T) -> Vec<u8> {
    bincode::encode_to_vec(value, config()).expect("encoding into a vector cannot fail")
}

/// Most bytes a decode of input without a checksum may claim (bincode's
/// limit): a corrupted length prefix is refused instead of allocating
/// whatever it says. Far above any message, command or old snapshot.
const UNCHECKED_DECODE_LIMIT_BYTES: usize = 256 << 20;

/// Decodes bytes in the wire encoding (fixed-width integers): messages,
/// command and reply records, format 1 envelopes, the oldest snapshots.
pub fn decode<T: Decode<()>>(what: &'static str, bytes: &[u8]) -> Result<T, CodecError> {
    decode_whole(
        what,
        bytes,
        config().with_limit::<UNCHECKED_DECODE_LIMIT_BYTES>(),
    )
}

/// Decodes bytes in the record encoding that no checksum vouches for.
fn decode_unchecked_record_part<T: Decode<()>>(
    what: &'static str,
    bytes: &[u8],
) -> Result<T, CodecError> {
    decode_whole(
        what,
        bytes,
        record_config().with_limit::<UNCHECKED_DECODE_LIMIT_BYTES>(),
    )
}

/// The first fields of a record-encoded body whose checksum failed (to
/// name the shard in the error; `u16::MAX` when even they are unreadable).
fn decode_unchecked_record_prefix<T: Decode<()>>(bytes: &[u8]) -> Option<T> {
    bincode::decode_from_slice(
        bytes,
        record_config().with_limit::<UNCHECKED_DECODE_LIMIT_BYTES>(),
    )
    .ok()
    .map(|(value, _)| value)
}

/// Decodes `bytes` with `configuration`, refusing trailing bytes.
fn decode_whole<T: Decode<()>>(
    what: &'static str,
    bytes: &[u8],
    configuration: impl bincode::config::Config,
) -> Result<T, CodecError> {
    let (value, read) = bincode::decode_from_slice(bytes, configuration)
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
        decode_event(&self.event_type, self.schema_version, &self.payload)
    }
}

/// Decodes an event payload, upcast to the current schema if it was written
/// by an older one.
fn decode_event(event_type: &str, version: u16, payload: &[u8]) -> Result<Event, CodecError> {
    if version == schema_version(event_type) {
        let event: Event = decode("event", payload)?;
        if event.type_name() != event_type {
            return Err(CodecError::TypeMismatch {
                declared: event_type.to_string(),
                actual: event.type_name(),
            });
        }
        return Ok(event);
    }
    legacy::upcast(event_type, version, payload)
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
                    completion: crate::model::Completion::new(v1.result, v1.positions, Vec::new()),
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
                        kind: crate::pricing::ItemKind::Accessory,
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

/// Marks a batch record (format 2). Format 1 bytes are one [`Envelope`],
/// which starts with the little-endian length of its event type: never this.
pub const RECORD_MAGIC: [u8; 8] = *b"LGRREC02";

/// Most entries in one record; a larger shard step becomes several records.
pub const RECORD_ENTRIES_MAX: usize = 8_190;

/// Most encoded bytes of one record's inputs (causes and entries): well
/// under the 1 MB a Kafka record may hold by default, whatever the entries.
pub const RECORD_BYTES_MAX: usize = 512 * 1024;

/// An entry's event type: borrowed from the event's type name when sealed
/// (no allocation per event), owned when read. Encoded as a string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventType(Cow<'static, str>);

impl std::ops::Deref for EventType {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl Encode for EventType {
    fn encode<E: bincode::enc::Encoder>(
        &self,
        encoder: &mut E,
    ) -> Result<(), bincode::error::EncodeError> {
        self.0.as_ref().encode(encoder)
    }
}

impl<Context> Decode<Context> for EventType {
    fn decode<D: bincode::de::Decoder<Context = Context>>(
        decoder: &mut D,
    ) -> Result<Self, bincode::error::DecodeError> {
        Ok(EventType(Cow::Owned(String::decode(decoder)?)))
    }
}

bincode::impl_borrow_decode!(EventType);

/// What one entry of a record is. Every entry takes one sequence number of
/// its shard, so the log stays dense and every event keeps its
/// `<shard>.<sequence>` address; plumbing is stored in a few bytes.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum Entry {
    /// A domain event; `payload` is the `Event` in the record encoding
    /// (variable-length integers).
    Event {
        event_type: EventType,
        schema_version: u16,
        payload: Vec<u8>,
    },
    /// `message_sent`: the message is the shard's outbox entry.
    Sent {
        to: ShardId,
        sequence: u64,
        /// Shared with the event and the envelope (encoded as the message
        /// itself).
        message: Arc<Message>,
    },
    /// `message_received`: the sender's message `sequence` was consumed
    /// (logged after its effects, in the same record).
    Received { from: ShardId, sequence: u64 },
    /// Any event read from a format 1 envelope: `payload` uses fixed-width
    /// integers and may be an older schema version (upcast on read).
    FormatOne {
        event_type: String,
        schema_version: u16,
        payload: Vec<u8>,
    },
}

impl Entry {
    /// Bytes the entry takes in a record.
    pub fn encoded_size(&self) -> usize {
        if let Entry::Event {
            event_type,
            schema_version,
            payload,
        } = self
        {
            // The variant, the type's length and bytes, the version, the
            // payload's length and bytes: no need to walk the payload again.
            return 1
                + varint_size(event_type.len() as u64)
                + event_type.len()
                + varint_size(u64::from(*schema_version))
                + varint_size(payload.len() as u64)
                + payload.len();
        }
        let mut size = bincode::enc::write::SizeWriter::default();
        bincode::encode_into_writer(self, &mut size, record_config())
            .expect("measuring an encoding cannot fail");
        size.bytes_written
    }

    pub fn from_event(event: &Event) -> Entry {
        match event {
            Event::MessageSent {
                to,
                sequence,
                message,
            } => Entry::Sent {
                to: *to,
                sequence: *sequence,
                message: message.clone(),
            },
            Event::MessageReceived { from, sequence } => Entry::Received {
                from: *from,
                sequence: *sequence,
            },
            event => {
                let event_type = event.type_name();
                Entry::Event {
                    event_type: EventType(Cow::Borrowed(event_type)),
                    schema_version: schema_version(event_type),
                    payload: encode_record_part(event),
                }
            }
        }
    }

    /// The event this entry records, upcast to the current schema.
    pub fn event(&self) -> Result<Event, CodecError> {
        match self {
            Entry::Event {
                event_type,
                schema_version: version,
                payload,
            } => {
                if *version != schema_version(event_type) {
                    return Err(CodecError::UnknownVersion {
                        event_type: event_type.to_string(),
                        schema_version: *version,
                    });
                }
                let event: Event = decode_record_part("event", payload)?;
                if event.type_name() != &**event_type {
                    return Err(CodecError::TypeMismatch {
                        declared: event_type.to_string(),
                        actual: event.type_name(),
                    });
                }
                Ok(event)
            }
            Entry::FormatOne {
                event_type,
                schema_version,
                payload,
            } => decode_event(event_type, *schema_version, payload),
            Entry::Sent {
                to,
                sequence,
                message,
            } => Ok(Event::MessageSent {
                to: *to,
                sequence: *sequence,
                message: message.clone(),
            }),
            Entry::Received { from, sequence } => Ok(Event::MessageReceived {
                from: *from,
                sequence: *sequence,
            }),
        }
    }

    pub fn event_type(&self) -> &str {
        match self {
            Entry::Event { event_type, .. } => event_type,
            Entry::FormatOne { event_type, .. } => event_type,
            Entry::Sent { .. } => "message_sent",
            Entry::Received { .. } => "message_received",
        }
    }
}

/// The entries one input (a command, a message or a tick) produced.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct InputEntries {
    /// What caused them: `command:<key>`, `message:<from>:<sequence>` or `tick`.
    pub cause: String,
    pub timestamp_ms: TimestampMs,
    pub entries: Vec<Entry>,
}

/// The fields of a record its checksum covers.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
struct RecordBody {
    shard: ShardId,
    first_sequence: u64,
    previous_hash: Hash,
    inputs: Vec<InputEntries>,
}

/// One durable unit of a shard's log: what one step of the shard decided,
/// entries `first_sequence ..` in order, sealed with one SHA-256 that chains
/// to the shard's previous record. Stored as one row (SQLite, CQL) and
/// published as one Kafka record.
///
/// A record is encoded once, when it is sealed or read; its fields are not
/// to be changed afterwards (seal a new record instead).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchRecord {
    pub shard: ShardId,
    pub first_sequence: u64,
    pub previous_hash: Hash,
    pub hash: Hash,
    pub inputs: Vec<InputEntries>,
    encoded: Encoded,
}

/// A record's stored bytes, shared by its clones (a vector, so that sealing
/// hands over the buffer it wrote instead of copying it).
#[derive(Clone, PartialEq, Eq)]
struct Encoded(Arc<Vec<u8>>);

impl std::fmt::Debug for Encoded {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "{} bytes", self.0.len())
    }
}

/// The fields of a record its checksum covers, borrowed for encoding (the
/// same bytes as [`RecordBody`]).
#[derive(Encode)]
struct RecordBodyRef<'a> {
    shard: ShardId,
    first_sequence: u64,
    previous_hash: Hash,
    inputs: &'a [InputEntries],
}

/// One logged entry with its address: what readers (projectors, exports)
/// iterate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logged<'a> {
    pub shard: ShardId,
    pub sequence: u64,
    pub cause: &'a str,
    pub timestamp_ms: TimestampMs,
    pub entry: &'a Entry,
}

impl Logged<'_> {
    /// The entry's event, upcast to the current schema.
    pub fn event(&self) -> Result<Event, CodecError> {
        self.entry.event()
    }
}

impl BatchRecord {
    /// Seals the entries `inputs` of `shard` from `first_sequence`, chained
    /// to `previous_hash`.
    pub fn seal(
        shard: ShardId,
        first_sequence: u64,
        previous_hash: Hash,
        inputs: Vec<InputEntries>,
    ) -> BatchRecord {
        let body = RecordBodyRef {
            shard,
            first_sequence,
            previous_hash,
            inputs: &inputs,
        };
        // Measured first (entries' payloads are bytes already, so this is
        // arithmetic), so that the buffer is allocated once, at its size.
        let mut size = bincode::enc::write::SizeWriter::default();
        bincode::encode_into_writer(&body, &mut size, record_config())
            .expect("measuring an encoding cannot fail");
        let length = RECORD_MAGIC.len() + size.bytes_written + std::mem::size_of::<Hash>();
        let mut bytes = Vec::with_capacity(length);
        bytes.extend_from_slice(&RECORD_MAGIC);
        bincode::encode_into_std_write(&body, &mut bytes, record_config())
            .expect("encoding into a vector cannot fail");
        let hash: Hash = Sha256::digest(&bytes[RECORD_MAGIC.len()..]).into();
        bytes.extend_from_slice(&hash);
        assert_eq!(bytes.len(), length, "a record is as long as measured");
        BatchRecord {
            shard,
            first_sequence,
            previous_hash,
            hash,
            inputs,
            encoded: Encoded(Arc::new(bytes)),
        }
    }

    /// Number of entries (sequence numbers) the record holds.
    pub fn len(&self) -> u64 {
        self.inputs
            .iter()
            .map(|input| input.entries.len() as u64)
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sequence of the last entry.
    pub fn last_sequence(&self) -> u64 {
        assert!(!self.is_empty(), "a record holds at least one entry");
        self.first_sequence + self.len() - 1
    }

    /// Sequence the shard's next record starts at.
    pub fn next_sequence(&self) -> u64 {
        self.first_sequence + self.len()
    }

    /// Every entry with its address, in sequence order.
    pub fn logged(&self) -> impl Iterator<Item = Logged<'_>> {
        let shard = self.shard;
        self.inputs
            .iter()
            .flat_map(|input| {
                input
                    .entries
                    .iter()
                    .map(move |entry| (input.cause.as_str(), input.timestamp_ms, entry))
            })
            .enumerate()
            .map(move |(index, (cause, timestamp_ms, entry))| Logged {
                shard,
                sequence: self.first_sequence + index as u64,
                cause,
                timestamp_ms,
                entry,
            })
    }

    /// The stored bytes. Format 2: magic, the body (variable-length
    /// integers), then its SHA-256; a record read from a format 1 envelope
    /// is that envelope, so a copy of an old log keeps its hashes.
    pub fn bytes(&self) -> &[u8] {
        &self.encoded.0
    }

    /// [`BatchRecord::bytes`], owned.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.bytes().to_vec()
    }

    /// Decodes a record of either format, or its compressed stored form (see
    /// [`compress_stored`]), and checks its checksum. A format 1 envelope
    /// reads as a record of one entry whose hash is the envelope's.
    pub fn from_bytes(stored: &[u8]) -> Result<BatchRecord, CodecError> {
        let bytes = &*unpack_stored(stored)?;
        let Some(rest) = bytes.strip_prefix(&RECORD_MAGIC) else {
            let envelope = Envelope::from_bytes(bytes)?;
            return Ok(BatchRecord::format_one(envelope, bytes.to_vec()));
        };
        let length = bytes.len();
        let split = rest
            .len()
            .checked_sub(32)
            .ok_or(CodecError::RecordTooShort { length })?;
        let (body_bytes, hash) = rest.split_at(split);
        // The checksum first: corrupted bytes are never decoded (a flipped
        // length prefix would claim any amount of memory).
        let computed: Hash = Sha256::digest(body_bytes).into();
        if computed.as_slice() != hash {
            let (shard, first_sequence) =
                decode_unchecked_record_prefix::<(ShardId, u64)>(body_bytes)
                    .unwrap_or((ShardId(u16::MAX), 0));
            return Err(CodecError::RecordChecksum {
                shard,
                first_sequence,
            });
        }
        let body: RecordBody = decode_record_part("record", body_bytes)?;
        Ok(BatchRecord {
            shard: body.shard,
            first_sequence: body.first_sequence,
            previous_hash: body.previous_hash,
            hash: computed,
            inputs: body.inputs,
            encoded: Encoded(Arc::new(bytes.to_vec())),
        })
    }

    /// A format 1 envelope as a record of one entry (same hash chain).
    pub fn from_envelope(envelope: Envelope) -> BatchRecord {
        let bytes = envelope.to_bytes();
        BatchRecord::format_one(envelope, bytes)
    }

    /// `envelope`, whose bytes are `bytes`, as a record.
    fn format_one(envelope: Envelope, bytes: Vec<u8>) -> BatchRecord {
        BatchRecord {
            encoded: Encoded(Arc::new(bytes)),
            shard: envelope.shard,
            first_sequence: envelope.sequence,
            previous_hash: envelope.previous_hash,
            hash: envelope.hash,
            inputs: vec![InputEntries {
                cause: envelope.cause,
                timestamp_ms: envelope.timestamp_ms,
                entries: vec![Entry::FormatOne {
                    event_type: envelope.event_type,
                    schema_version: envelope.schema_version,
                    payload: envelope.payload,
                }],
            }],
        }
    }
}

/// A shard message on the wire: sender, receiver, sequence and body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
pub struct MessageEnvelope {
    pub from: ShardId,
    pub to: ShardId,
    pub sequence: u64,
    pub message: Arc<Message>,
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

/// The answer to a [`CommandRecord`], sent once the events that decided it
/// are durable in the shard's log (CQL), before Kafka publishes them.
/// Encoded by hand (`to_bytes`): the wait of a rate-limited refusal
/// follows the completion, which never stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyRecord {
    pub request_id: String,
    pub completion: crate::Completion,
}

impl ReplyRecord {
    /// The request id, the completion, then the wait of a rate-limited
    /// refusal (which a stored completion never carries).
    pub fn to_bytes(&self) -> Vec<u8> {
        encode(&(
            &self.request_id,
            &self.completion,
            self.completion.retry_after_ms,
        ))
    }

    /// Reads a reply; one written before replies carried a wait has none.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CodecError> {
        let (request_id, mut completion, retry_after_ms) =
            match decode::<(String, crate::Completion, Option<u64>)>("reply record", bytes) {
                Ok(reply) => reply,
                Err(error) => match decode::<(String, crate::Completion)>("reply record", bytes) {
                    Ok((request_id, completion)) => (request_id, completion, None),
                    Err(_) => return Err(error),
                },
            };
        completion.retry_after_ms = retry_after_ms;
        Ok(Self {
            request_id,
            completion,
        })
    }
}

/// A shard's state at a sequence, with the head of its hash chain.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct Snapshot {
    pub state: ShardState,
    pub last_hash: Hash,
}

/// Marks a snapshot in the record encoding (variable-length integers)
/// followed by the SHA-256 of that body, so a corrupted read is refused
/// rather than restored. Format 9: completed commands are kept as their
/// shard keeps them in memory (see [`Remembered`]'s encoding), without the
/// text of their own id, which their key holds; the SHA-256 covers the
/// marker too (earlier formats: the body only).
pub const SNAPSHOT_MAGIC: [u8; 8] = *b"LGRSNP09";
/// Format 8: as format 9, with each completed command's own id written in
/// its bytes (still read).
pub const SNAPSHOT_MAGIC_V8: [u8; 8] = *b"LGRSNP08";
/// Format 7: as format 8, with every remembered command as a record
/// (written before completed ones were kept with their ids written once;
/// still read).
pub const SNAPSHOT_MAGIC_V7: [u8; 8] = *b"LGRSNP07";
/// Format 6: as format 7, of a state without takedowns (written before
/// they existed; still read).
pub const SNAPSHOT_MAGIC_V6: [u8; 8] = *b"LGRSNP06";
/// Format 5: as format 6, of a state without price floors (written before
/// they existed; still read).
pub const SNAPSHOT_MAGIC_V5: [u8; 8] = *b"LGRSNP05";
/// Format 4: as format 5, of a state without purchase rate limits (written
/// before they existed; still read).
pub const SNAPSHOT_MAGIC_V4: [u8; 8] = *b"LGRSNP04";
/// Format 3: as format 4, of a state without retention queues (written
/// before commands were forgotten; still read).
pub const SNAPSHOT_MAGIC_V3: [u8; 8] = *b"LGRSNP03";
/// Marks a snapshot in the record encoding without a checksum (written
/// before [`SNAPSHOT_MAGIC_V3`]; still read). Older snapshots still
/// (fixed-width integers) start with the shard id's two bytes and the
/// state's first fields, never with either marker.
pub const SNAPSHOT_MAGIC_UNCHECKED: [u8; 8] = *b"LGRSNP02";

/// A shard's state as snapshots before format 4 hold it: [`ShardState`]
/// without its retention queues, which start empty when read (every
/// command remembered then is kept; those completed later are forgotten).
#[derive(Decode)]
struct SnapshotBeforeRetention {
    shard: ShardId,
    next_sequence: u64,
    inbound_next: BTreeMap<ShardId, u64>,
    outbound_next: BTreeMap<ShardId, u64>,
    balances: BTreeMap<Account, i64>,
    owned_items: BTreeMap<UserId, BTreeSet<ItemId>>,
    escrow: BTreeMap<PurchaseId, EscrowEntry>,
    escrow_due: BTreeSet<(TimestampMs, PurchaseId)>,
    items: BTreeMap<ItemId, ItemState>,
    bundles: BTreeMap<BundleId, BundleState>,
    commands: BTreeMap<String, crate::state::CommandRecord>,
    listing_directory: BTreeMap<ListingId, ItemId>,
    refunds: BTreeMap<PurchaseId, RefundProgress>,
    last_hash: Hash,
}

impl From<SnapshotBeforeRetention> for Snapshot {
    fn from(old: SnapshotBeforeRetention) -> Self {
        SnapshotBeforeLimits {
            shard: old.shard,
            next_sequence: old.next_sequence,
            inbound_next: old.inbound_next,
            outbound_next: old.outbound_next,
            balances: old.balances,
            owned_items: old.owned_items,
            escrow: old.escrow,
            escrow_due: old.escrow_due,
            items: old.items,
            bundles: old.bundles,
            commands: old.commands,
            listing_directory: old.listing_directory,
            refunds: old.refunds,
            retention: Retention::default(),
            last_hash: old.last_hash,
        }
        .into()
    }
}

/// A shard's state as format 4 snapshots hold it: [`ShardState`] without
/// its purchase rate limits, which start empty when read (admissions of the
/// last window before the snapshot no longer count: at most one window of
/// extra requests, once, and only across an upgrade).
#[derive(Decode)]
struct SnapshotBeforeLimits {
    shard: ShardId,
    next_sequence: u64,
    inbound_next: BTreeMap<ShardId, u64>,
    outbound_next: BTreeMap<ShardId, u64>,
    balances: BTreeMap<Account, i64>,
    owned_items: BTreeMap<UserId, BTreeSet<ItemId>>,
    escrow: BTreeMap<PurchaseId, EscrowEntry>,
    escrow_due: BTreeSet<(TimestampMs, PurchaseId)>,
    items: BTreeMap<ItemId, ItemState>,
    bundles: BTreeMap<BundleId, BundleState>,
    commands: BTreeMap<String, crate::state::CommandRecord>,
    listing_directory: BTreeMap<ListingId, ItemId>,
    refunds: BTreeMap<PurchaseId, RefundProgress>,
    retention: Retention,
    last_hash: Hash,
}

impl From<SnapshotBeforeLimits> for Snapshot {
    fn from(old: SnapshotBeforeLimits) -> Self {
        SnapshotBeforeFloors {
            shard: old.shard,
            next_sequence: old.next_sequence,
            inbound_next: old.inbound_next,
            outbound_next: old.outbound_next,
            balances: old.balances,
            owned_items: old.owned_items,
            escrow: old.escrow,
            escrow_due: old.escrow_due,
            items: old.items,
            bundles: old.bundles,
            commands: old.commands,
            listing_directory: old.listing_directory,
            refunds: old.refunds,
            retention: old.retention,
            limits: BuyerLimits::default(),
            last_hash: old.last_hash,
        }
        .into()
    }
}

/// A shard's state as format 5 snapshots hold it: [`ShardState`] without
/// its copy of the price floors and its items' regional prices, which
/// start empty when read (none existed before them).
#[derive(Decode)]
struct SnapshotBeforeFloors {
    shard: ShardId,
    next_sequence: u64,
    inbound_next: BTreeMap<ShardId, u64>,
    outbound_next: BTreeMap<ShardId, u64>,
    balances: BTreeMap<Account, i64>,
    owned_items: BTreeMap<UserId, BTreeSet<ItemId>>,
    escrow: BTreeMap<PurchaseId, EscrowEntry>,
    escrow_due: BTreeSet<(TimestampMs, PurchaseId)>,
    items: BTreeMap<ItemId, ItemState>,
    bundles: BTreeMap<BundleId, BundleState>,
    commands: BTreeMap<String, crate::state::CommandRecord>,
    listing_directory: BTreeMap<ListingId, ItemId>,
    refunds: BTreeMap<PurchaseId, RefundProgress>,
    retention: Retention,
    limits: BuyerLimits,
    last_hash: Hash,
}

impl From<SnapshotBeforeFloors> for Snapshot {
    fn from(old: SnapshotBeforeFloors) -> Self {
        SnapshotBeforeTakedowns {
            state: StateBeforeTakedowns {
                shard: old.shard,
                next_sequence: old.next_sequence,
                inbound_next: old.inbound_next,
                outbound_next: old.outbound_next,
                balances: old.balances,
                owned_items: old.owned_items.into(),
                escrow: old.escrow,
                escrow_due: old.escrow_due,
                items: old.items,
                bundles: old.bundles,
                commands: old.commands,
                listing_directory: old.listing_directory,
                refunds: old.refunds,
                retention: old.retention,
                limits: old.limits,
                price_floors: crate::pricing::PriceFloors::default(),
                item_pricing: BTreeMap::new(),
                price_tests: BTreeMap::new(),
                tests_ending: BTreeSet::new(),
            },
            last_hash: old.last_hash,
        }
        .into()
    }
}

/// A shard's state as formats 6 and 7 hold it, up to their difference:
/// [`ShardState`] without its takedowns and with every remembered command
/// as a record in place. (Format 6's map of owned sets encodes exactly as
/// [`crate::owned::OwnedItems`].)
#[derive(Decode)]
#[cfg_attr(test, derive(Encode))]
struct StateBeforeTakedowns {
    shard: ShardId,
    next_sequence: u64,
    inbound_next: BTreeMap<ShardId, u64>,
    outbound_next: BTreeMap<ShardId, u64>,
    balances: BTreeMap<Account, i64>,
    owned_items: crate::owned::OwnedItems,
    escrow: BTreeMap<PurchaseId, EscrowEntry>,
    escrow_due: BTreeSet<(TimestampMs, PurchaseId)>,
    items: BTreeMap<ItemId, ItemState>,
    bundles: BTreeMap<BundleId, BundleState>,
    commands: BTreeMap<String, crate::state::CommandRecord>,
    listing_directory: BTreeMap<ListingId, ItemId>,
    refunds: BTreeMap<PurchaseId, RefundProgress>,
    retention: Retention,
    limits: BuyerLimits,
    price_floors: crate::pricing::PriceFloors,
    item_pricing: BTreeMap<ItemId, crate::pricing::ItemPricing>,
    price_tests: BTreeMap<PriceTestId, crate::pricing::PriceTest>,
    tests_ending: BTreeSet<(TimestampMs, PriceTestId)>,
}

/// A format 6 snapshot: no takedowns (they start empty when read: none
/// existed before them).
#[derive(Decode)]
struct SnapshotBeforeTakedowns {
    state: StateBeforeTakedowns,
    last_hash: Hash,
}

impl From<SnapshotBeforeTakedowns> for Snapshot {
    fn from(old: SnapshotBeforeTakedowns) -> Self {
        SnapshotBeforeCompactCommands {
            state: old.state,
            takedowns: crate::takedown::Takedowns::default(),
            last_hash: old.last_hash,
        }
        .into()
    }
}

/// A format 7 snapshot: the takedowns, each remembered command still a
/// record in place.
#[derive(Decode)]
#[cfg_attr(test, derive(Encode))]
struct SnapshotBeforeCompactCommands {
    state: StateBeforeTakedowns,
    takedowns: crate::takedown::Takedowns,
    last_hash: Hash,
}

impl From<SnapshotBeforeCompactCommands> for Snapshot {
    fn from(old: SnapshotBeforeCompactCommands) -> Self {
        let StateBeforeTakedowns {
            shard,
            next_sequence,
            inbound_next,
            outbound_next,
            balances,
            owned_items,
            escrow,
            escrow_due,
            items,
            bundles,
            commands,
            listing_directory,
            refunds,
            retention,
            limits,
            price_floors,
            item_pricing,
            price_tests,
            tests_ending,
        } = old.state;
        let state = ShardState {
            shard,
            next_sequence,
            inbound_next,
            outbound_next,
            balances,
            owned_items,
            escrow,
            escrow_due,
            items,
            bundles,
            commands: commands
                .into_iter()
                .map(|(key, record)| {
                    let remembered = Remembered::new(&key, record);
                    (Arc::from(key), remembered)
                })
                .collect(),
            listing_directory,
            refunds,
            retention,
            limits,
            price_floors,
            item_pricing,
            price_tests,
            tests_ending,
            takedowns: old.takedowns,
        };
        Snapshot {
            state,
            last_hash: old.last_hash,
        }
    }
}

/// The checksummed snapshot formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SnapshotFormat {
    V3,
    V4,
    V5,
    V6,
    V7,
    V8,
    Current,
}

/// The body of a checksummed snapshot (format 3 to 9) after its marker,
/// with its format, or `None` if it has none of their markers.
fn checksummed_snapshot_body(bytes: &[u8]) -> Option<Result<(&[u8], SnapshotFormat), CodecError>> {
    let (rest, format) = if let Some(rest) = bytes.strip_prefix(&SNAPSHOT_MAGIC) {
        (rest, SnapshotFormat::Current)
    } else if let Some(rest) = bytes.strip_prefix(&SNAPSHOT_MAGIC_V8) {
        (rest, SnapshotFormat::V8)
    } else if let Some(rest) = bytes.strip_prefix(&SNAPSHOT_MAGIC_V7) {
        (rest, SnapshotFormat::V7)
    } else if let Some(rest) = bytes.strip_prefix(&SNAPSHOT_MAGIC_V6) {
        (rest, SnapshotFormat::V6)
    } else if let Some(rest) = bytes.strip_prefix(&SNAPSHOT_MAGIC_V5) {
        (rest, SnapshotFormat::V5)
    } else if let Some(rest) = bytes.strip_prefix(&SNAPSHOT_MAGIC_V4) {
        (rest, SnapshotFormat::V4)
    } else {
        (bytes.strip_prefix(&SNAPSHOT_MAGIC_V3)?, SnapshotFormat::V3)
    };
    let length = bytes.len();
    let Some(split) = rest.len().checked_sub(32) else {
        return Some(Err(CodecError::RecordTooShort { length }));
    };
    let (body, checksum) = rest.split_at(split);
    // The checksum first, as for records. From format 9 on it covers the
    // marker too: format 8's marker is one bit away from format 9's.
    let computed: Hash = if format == SnapshotFormat::Current {
        Sha256::digest(&bytes[..bytes.len() - checksum.len()]).into()
    } else {
        Sha256::digest(body).into()
    };
    if computed.as_slice() != checksum {
        let shard = decode_unchecked_record_prefix::<ShardId>(body).unwrap_or(ShardId(u16::MAX));
        return Some(Err(CodecError::SnapshotChecksum { shard }));
    }
    Some(Ok((body, format)))
}

impl Snapshot {
    pub fn to_bytes(&self) -> Vec<u8> {
        // Measured first, so that a state of hundreds of megabytes is
        // written once into one allocation of its size, not copied through
        // a vector that doubles (which holds up to twice the state while it
        // grows). Measuring is cheap: a completed command is a length.
        let mut size = bincode::enc::write::SizeWriter::default();
        bincode::encode_into_writer(self, &mut size, record_config())
            .expect("measuring an encoding cannot fail");
        let length = SNAPSHOT_MAGIC.len() + size.bytes_written + std::mem::size_of::<Hash>();
        let mut bytes = Vec::with_capacity(length);
        bytes.extend_from_slice(&SNAPSHOT_MAGIC);
        bincode::encode_into_std_write(self, &mut bytes, record_config())
            .expect("encoding into a vector cannot fail");
        let checksum: Hash = Sha256::digest(&bytes).into();
        bytes.extend_from_slice(&checksum);
        assert_eq!(bytes.len(), length, "a snapshot is as long as measured");
        bytes
    }

    /// Decodes a snapshot of any format, checking its checksum when it has
    /// one; its copies of an id share one allocation (see
    /// [`ShardState::share_keys`]).
    pub fn from_bytes(stored: &[u8]) -> Result<Self, CodecError> {
        let mut snapshot = Self::decode_any_format(stored)?;
        snapshot.state.share_keys();
        Ok(snapshot)
    }

    fn decode_any_format(stored: &[u8]) -> Result<Self, CodecError> {
        let bytes = &*unpack_stored(stored)?;
        if let Some(checked) = checksummed_snapshot_body(bytes) {
            let (body, format) = checked?;
            return match format {
                SnapshotFormat::Current => decode_record_part("snapshot", body),
                SnapshotFormat::V8 => {
                    let mut snapshot: Snapshot = decode_record_part("snapshot", body)?;
                    let commands = std::mem::take(&mut snapshot.state.commands);
                    snapshot.state.commands = commands
                        .into_iter()
                        .map(|(key, kept)| {
                            let remembered = kept.upgrade_format_eight(&key)?;
                            Ok((key, remembered))
                        })
                        .collect::<Result<_, CodecError>>()?;
                    Ok(snapshot)
                }
                SnapshotFormat::V7 => {
                    decode_record_part::<SnapshotBeforeCompactCommands>("snapshot", body)
                        .map(Into::into)
                }
                SnapshotFormat::V6 => {
                    decode_record_part::<SnapshotBeforeTakedowns>("snapshot", body).map(Into::into)
                }
                SnapshotFormat::V5 => {
                    decode_record_part::<SnapshotBeforeFloors>("snapshot", body).map(Into::into)
                }
                SnapshotFormat::V4 => {
                    decode_record_part::<SnapshotBeforeLimits>("snapshot", body).map(Into::into)
                }
                SnapshotFormat::V3 => {
                    decode_record_part::<SnapshotBeforeRetention>("snapshot", body).map(Into::into)
                }
            };
        }
        match bytes.strip_prefix(&SNAPSHOT_MAGIC_UNCHECKED) {
            Some(rest) => decode_unchecked_record_part::<SnapshotBeforeRetention>("snapshot", rest)
                .map(Into::into),
            None => decode::<SnapshotBeforeRetention>("snapshot", bytes).map(Into::into),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Actor, CommandMeta, Completion, Progress, Role, Success};

    /// A state that remembers a running and a completed command, with the
    /// completed one queued for forgetting and a sale in escrow.
    fn state_remembering_commands() -> ShardState {
        let mut state = ShardState::new(ShardId(1));
        state.next_sequence = 12;
        let user = |id: &str| UserId::parse(id).expect("valid id");
        for (key, completed) in [("grant:g-1", true), ("grant:g-2", false)] {
            let command = Command::Grant {
                grant_id: crate::GrantId::parse(&key[6..]).expect("valid id"),
                user_id: user("alice"),
                amount: 500,
            };
            let record = crate::state::CommandRecord {
                fingerprint: fingerprint(&command),
                command,
                meta: CommandMeta {
                    at_ms: 42,
                    actor: Actor {
                        role: Role::Service,
                        user_id: user("flow"),
                    },
                },
                progress: Progress::Crediting,
                positions: Vec::new(),
                completion: completed.then(|| {
                    Completion::new(
                        Ok(Success::Granted { balance_after: 500 }),
                        Vec::new(),
                        Vec::new(),
                    )
                }),
            };
            let key: Arc<str> = Arc::from(key);
            if completed {
                state.retention.due.insert((42, Arc::clone(&key)), 42);
            }
            let remembered = Remembered::new(&key, record);
            state.commands.insert(key, remembered);
        }
        for purchase in ["p-1", "p-2"] {
            let purchase_id = PurchaseId::parse(purchase).expect("valid id");
            state.escrow.insert(
                purchase_id.clone(),
                EscrowEntry {
                    creator_id: user("carol"),
                    creator_share: 70,
                    platform_fee: 30,
                    release_at_ms: 99,
                    frozen: false,
                },
            );
            state.escrow_due.insert((99, purchase_id));
        }
        state.balances.insert(Account::Wallet(user("alice")), 500);
        for item in ["hat", "cape"] {
            let item_id = ItemId::parse(item).expect("valid id");
            state.owned_items.insert(&user("alice"), &item_id);
        }
        state
    }

    /// Formats 7 (every remembered command as a record in place) and 8
    /// (completed commands kept with their own id's text) still read, to
    /// the state format 9 holds; all come back with each id's copies
    /// sharing one allocation, as in a live shard.
    #[test]
    fn formats_seven_and_eight_snapshots_read_as_format_nine() {
        let state = state_remembering_commands();
        let snapshot = Snapshot {
            state: state.clone(),
            last_hash: [5; 32],
        };
        let old = SnapshotBeforeCompactCommands {
            state: StateBeforeTakedowns {
                shard: state.shard,
                next_sequence: state.next_sequence,
                inbound_next: state.inbound_next.clone(),
                outbound_next: state.outbound_next.clone(),
                balances: state.balances.clone(),
                owned_items: state.owned_items.clone(),
                escrow: state.escrow.clone(),
                escrow_due: state.escrow_due.clone(),
                items: state.items.clone(),
                bundles: state.bundles.clone(),
                commands: state
                    .commands
                    .iter()
                    .map(|(key, remembered)| (key.to_string(), remembered.record(key).into_owned()))
                    .collect(),
                listing_directory: state.listing_directory.clone(),
                refunds: state.refunds.clone(),
                retention: state.retention.clone(),
                limits: state.limits.clone(),
                price_floors: state.price_floors.clone(),
                item_pricing: state.item_pricing.clone(),
                price_tests: state.price_tests.clone(),
                tests_ending: state.tests_ending.clone(),
            },
            takedowns: state.takedowns.clone(),
            last_hash: [5; 32],
        };
        let body = encode_record_part(&old);
        let format_seven = [&SNAPSHOT_MAGIC_V7[..], &body, &Sha256::digest(&body)[..]].concat();
        let mut eight = snapshot.clone();
        for (key, kept) in eight.state.commands.iter_mut() {
            if kept.is_completed() {
                let record = kept.record(key).into_owned();
                let bytes = crate::ids::with_id_table(|| encode_record_part(&record));
                *kept = Remembered::Completed(Arc::from(bytes));
            }
        }
        let body = encode_record_part(&eight);
        let format_eight = [&SNAPSHOT_MAGIC_V8[..], &body, &Sha256::digest(&body)[..]].concat();
        let format_nine = snapshot.to_bytes();
        assert!(format_nine.starts_with(&SNAPSHOT_MAGIC));
        // The completed grant's own id (a length and 3 bytes of text) is
        // a reference to its key's (2 bytes) in format 9.
        assert_eq!(
            format_eight.len() - format_nine.len(),
            1 + "g-1".len() - 2,
            "format 9 leaves the completed grant's own id to its key"
        );
        assert_ne!(
            format_seven[8..],
            format_nine[8..],
            "the commands are kept differently"
        );
        for bytes in [&format_seven, &format_eight, &format_nine] {
            let read = Snapshot::from_bytes(bytes).expect("the snapshot reads");
            assert_eq!(read, snapshot);
            let (key, _) = read
                .state
                .commands
                .get_key_value("grant:g-1")
                .expect("remembered");
            let (_, queued) = read.state.retention.due.first().expect("queued");
            assert!(
                Arc::ptr_eq(key, queued),
                "the queue shares the command's key"
            );
            let (_, due) = read.state.escrow_due.first().expect("due");
            let (purchase, entry) = read.state.escrow.first_key_value().expect("in escrow");
            assert_eq!(purchase.as_str().as_ptr(), due.as_str().as_ptr());
            let (_, last) = read.state.escrow.last_key_value().expect("in escrow");
            assert_eq!(
                entry.creator_id.as_str().as_ptr(),
                last.creator_id.as_str().as_ptr()
            );
            let (wallet, _) = read.state.balances.first_key_value().expect("a wallet");
            let Account::Wallet(wallet) = wallet else {
                panic!("alice's wallet, found {wallet:?}")
            };
            for (owner, items) in read.state.owned_items.by_user() {
                assert_eq!(owner.as_str().as_ptr(), wallet.as_str().as_ptr());
                assert_eq!(items.len(), 2);
            }
        }
    }

    /// The arithmetic size of an event entry is what bincode writes, at
    /// every width of its length prefixes.
    #[test]
    fn an_event_entry_is_as_long_as_measured() {
        for payload_length in [0, 1, 250, 251, 65_535, 65_536, 70_000] {
            for (event_type, schema_version) in [("x", 1u16), ("item_published", 300)] {
                let entry = Entry::Event {
                    event_type: EventType(Cow::Borrowed(event_type)),
                    schema_version,
                    payload: vec![7; payload_length],
                };
                let mut size = bincode::enc::write::SizeWriter::default();
                bincode::encode_into_writer(&entry, &mut size, record_config()).unwrap();
                assert_eq!(
                    entry.encoded_size(),
                    size.bytes_written,
                    "{payload_length} bytes"
                );
                let written = encode_record_part(&entry);
                assert_eq!(written.len(), size.bytes_written);
                let read: Entry = decode_record_part("entry", &written).unwrap();
                assert_eq!(read, entry, "a borrowed type reads back as an owned one");
            }
        }
    }
}

#[cfg(test)]
mod stored_form_tests {
    use super::*;

    fn record() -> BatchRecord {
        // Inputs alike but for their cause, as a shard's inputs are.
        let input = |n: u64| InputEntries {
            cause: format!("command:purchase:purchase-{n:06}"),
            timestamp_ms: 1_800_000_000_000,
            entries: vec![Entry::Received {
                from: ShardId(1),
                sequence: 1_000_000,
            }],
        };
        BatchRecord::seal(ShardId(0), 1, GENESIS_HASH, (1..200).map(input).collect())
    }

    #[test]
    fn a_compressed_record_reads_as_the_record() {
        let record = record();
        let stored = compress_stored(record.bytes());
        assert!(stored.starts_with(&COMPRESSED_MAGIC));
        assert!(
            stored.len() < record.bytes().len() * 3 / 4,
            "{} of {} bytes",
            stored.len(),
            record.bytes().len()
        );
        let read = BatchRecord::from_bytes(&stored).unwrap();
        assert_eq!(
            read.bytes(),
            record.bytes(),
            "the canonical bytes, not the stored ones"
        );
        assert_eq!(read.hash, record.hash);
        assert_eq!(read.inputs, record.inputs);
    }

    #[test]
    fn bytes_that_do_not_shrink_are_stored_as_they_are() {
        let bytes = b"LGRREC02 short".to_vec();
        assert_eq!(compress_stored(&bytes), bytes);
    }

    #[test]
    fn a_damaged_compressed_record_is_refused() {
        let record = record();
        let stored = compress_stored(record.bytes());
        for position in COMPRESSED_MAGIC.len()..stored.len() {
            let mut damaged = stored.clone();
            damaged[position] ^= 0x40;
            assert!(
                BatchRecord::from_bytes(&damaged).is_err(),
                "a flipped byte at {position} went unnoticed"
            );
        }
        let mut huge = stored.clone();
        huge[COMPRESSED_MAGIC.len()..COMPRESSED_MAGIC.len() + 4]
            .copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            BatchRecord::from_bytes(&huge),
            Err(CodecError::Compression { .. })
        ));
        let nested = [COMPRESSED_MAGIC.as_slice(), &stored].concat();
        assert!(BatchRecord::from_bytes(&compress_stored(&nested)).is_err());
        assert!(BatchRecord::from_bytes(&stored[..COMPRESSED_MAGIC.len() + 2]).is_err());
    }
}
