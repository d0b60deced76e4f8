//! Identifiers. Every id validates on construction (`parse`), so a value of
//! these types is always well formed: `^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$`.
//!
//! An id is immutable and shared: its text is reference-counted (`Arc<str>`),
//! so the copies a purchase makes of its ids (into its events, messages,
//! records and indexes) cost a counter increment, not an allocation. Encoded,
//! it is the same length-prefixed UTF-8 as a `String`.

use std::sync::Arc;

use bincode::{Decode, Encode};
use serde::{Deserialize, Serialize};

/// Longest id accepted, in bytes.
pub const ID_LENGTH_MAX: usize = 128;

/// Why an id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("{field} must not be empty")]
    Empty { field: &'static str },
    #[error("{field} is longer than {ID_LENGTH_MAX} characters")]
    TooLong { field: &'static str },
    #[error("{field} must start with a letter or digit and contain only letters, digits, '_', '.', ':' or '-'")]
    BadCharacter { field: &'static str },
}

/// Checks the id grammar shared by every identifier.
pub fn validate_id(field: &'static str, value: &str) -> Result<(), IdError> {
    let bytes = value.as_bytes();
    let Some(first) = bytes.first() else {
        return Err(IdError::Empty { field });
    };
    if bytes.len() > ID_LENGTH_MAX {
        return Err(IdError::TooLong { field });
    }
    if !first.is_ascii_alphanumeric() {
        return Err(IdError::BadCharacter { field });
    }
    let allowed = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-');
    if !bytes.iter().all(allowed) {
        return Err(IdError::BadCharacter { field });
    }
    Ok(())
}

/// Most distinct ids one value encoded with [`with_id_table`] may hold
/// (a command record names a handful; a cart at most a few hundred).
pub const ID_TABLE_ENTRIES_MAX: usize = 4_096;

thread_local! {
    /// The ids met so far by the encode or decode running in
    /// [`with_id_table`] on this thread, in order; `None` outside one.
    static ID_TABLE: std::cell::RefCell<Option<Vec<Arc<str>>>> =
        const { std::cell::RefCell::new(None) };
}

/// Runs `run` (one encode or one decode) with ids written once: the first
/// time an id's text appears it is written as usual (a length, then the
/// text); each later time, as a `0` and its 1-based place among the ids
/// written before it. No id is empty (`parse` refuses it), so a length of
/// `0` never starts a text; an empty text is written `0, 0`. Decoded
/// repeats share the first one's allocation.
///
/// A completed purchase names its item up to four times (the command, the
/// reservation, the answer and its granted items): a remembered command
/// encoded this way is a third smaller.
pub fn with_id_table<T>(run: impl FnOnce() -> T) -> T {
    with_seeded_id_table(None, run)
}

/// As [`with_id_table`], with `seed` as the table's first id, written
/// nowhere: a value stored under a key that names its own id (a
/// remembered command under `purchase:<id>`) refers to that id as `0, 1`
/// without writing its text. Decode it with the same seed.
pub fn with_seeded_id_table<T>(seed: Option<&str>, run: impl FnOnce() -> T) -> T {
    struct Restore(Option<Vec<Arc<str>>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let outer = self.0.take();
            ID_TABLE.with_borrow_mut(|table| *table = outer);
        }
    }
    let table = seed.map(|seed| vec![Arc::from(seed)]).unwrap_or_default();
    let outer = ID_TABLE.with_borrow_mut(|outer| outer.replace(table));
    let _restore = Restore(outer);
    run()
}

/// Encodes an id's text: as a `str`, or, inside [`with_id_table`], as a
/// reference to its first occurrence.
fn encode_shared_text<E: bincode::enc::Encoder>(
    text: &Arc<str>,
    encoder: &mut E,
) -> Result<(), bincode::error::EncodeError> {
    let reference = ID_TABLE.with_borrow_mut(|table| {
        let table = table.as_mut()?;
        if text.is_empty() {
            return Some(0);
        }
        match table.iter().position(|known| **known == **text) {
            Some(place) => Some(place as u64 + 1),
            None => {
                assert!(
                    table.len() < ID_TABLE_ENTRIES_MAX,
                    "a value encoded with an id table names at most {ID_TABLE_ENTRIES_MAX} ids"
                );
                table.push(Arc::clone(text));
                None
            }
        }
    });
    match reference {
        Some(reference) => {
            0_u64.encode(encoder)?;
            reference.encode(encoder)
        }
        None => (**text).encode(encoder),
    }
}

/// Decodes an id's text (bincode's `str`: a length, then UTF-8) straight
/// into its shared allocation. bincode's own `Arc<str>` decodes a `String`
/// and copies it: two allocations for every id of every decoded message,
/// record and snapshot. Inside [`with_id_table`], a `0` length is a
/// reference to an id decoded before.
fn decode_shared_text<D: bincode::de::Decoder>(
    decoder: &mut D,
) -> Result<Arc<str>, bincode::error::DecodeError> {
    use bincode::de::read::Reader;
    use bincode::error::DecodeError;
    let length = u64::decode(decoder)?;
    if length == 0 {
        let in_table = ID_TABLE.with_borrow(Option::is_some);
        if in_table {
            let reference = u64::decode(decoder)?;
            if reference == 0 {
                return Ok(Arc::from(""));
            }
            return ID_TABLE.with_borrow(|table| {
                table
                    .as_ref()
                    .and_then(|table| table.get(usize::try_from(reference - 1).ok()?))
                    .cloned()
                    .ok_or(DecodeError::Other(
                        "an id refers to an id not decoded before it",
                    ))
            });
        }
    }
    let length = usize::try_from(length).map_err(|_| DecodeError::OutsideUsizeRange(length))?;
    decoder.claim_container_read::<u8>(length)?;
    let mut inline = [0_u8; ID_LENGTH_MAX];
    let mut spilled = Vec::new();
    let bytes = if length <= ID_LENGTH_MAX {
        &mut inline[..length]
    } else {
        // Longer than any id parses to; still read as it was written.
        spilled.resize(length, 0);
        &mut spilled[..]
    };
    decoder.reader().read(bytes)?;
    let text = std::str::from_utf8(bytes).map_err(|inner| DecodeError::Utf8 { inner })?;
    let text: Arc<str> = Arc::from(text);
    ID_TABLE.with_borrow_mut(|table| {
        if let Some(table) = table.as_mut() {
            if table.len() >= ID_TABLE_ENTRIES_MAX {
                return Err(DecodeError::Other(
                    "a value decoded with an id table names too many ids",
                ));
            }
            table.push(Arc::clone(&text));
        }
        Ok(())
    })?;
    Ok(text)
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $field:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(Arc<str>);

        impl Encode for $name {
            fn encode<E: bincode::enc::Encoder>(
                &self,
                encoder: &mut E,
            ) -> Result<(), bincode::error::EncodeError> {
                encode_shared_text(&self.0, encoder)
            }
        }

        impl<Context> Decode<Context> for $name {
            fn decode<D: bincode::de::Decoder<Context = Context>>(
                decoder: &mut D,
            ) -> Result<Self, bincode::error::DecodeError> {
                decode_shared_text(decoder).map(Self)
            }
        }

        bincode::impl_borrow_decode!($name);

        impl $name {
            /// Validates and wraps an id.
            pub fn parse(value: impl Into<String>) -> Result<Self, IdError> {
                let value = value.into();
                validate_id($field, &value)?;
                Ok(Self(Arc::from(value)))
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(value: String) -> Result<Self, IdError> {
                Self::parse(value)
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> String {
                value.0.to_string()
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                formatter.write_str(&self.0)
            }
        }
    };
}

id_type!(/// A user of the marketplace: buyer, seller or creator.
    UserId, "user_id");
id_type!(/// A catalogue item.
    ItemId, "item_id");
id_type!(/// A bundle of a creator's items.
    BundleId, "bundle_id");
id_type!(/// A primary or resale purchase (one namespace for both).
    PurchaseId, "purchase_id");
id_type!(/// A currency grant.
    GrantId, "grant_id");
id_type!(/// A resale listing.
    ListingId, "listing_id");
id_type!(/// A refund.
    RefundId, "refund_id");
id_type!(/// A price test of an item.
    PriceTestId, "test_id");
id_type!(/// A batch of exposures the storefront reports for a price test.
    ExposureBatchId, "batch_id");

/// Index of a shard, `0..shard_count`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Encode, Decode,
)]
pub struct ShardId(pub u16);

impl std::fmt::Display for ShardId {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_decodes_as_the_string_it_was_encoded_as() {
        use crate::codec::{decode, decode_record_part, encode, encode_record_part};
        for text in ["a", &"x".repeat(ID_LENGTH_MAX), &"y".repeat(300)] {
            // Written as a string, in both integer encodings.
            let id: UserId = decode("id", &encode(&text.to_string())).expect("decodes");
            assert_eq!(id.as_str(), text);
            let id: UserId =
                decode_record_part("id", &encode_record_part(&text.to_string())).expect("decodes");
            assert_eq!(id.as_str(), text);
            assert_eq!(encode(&id), encode(&text.to_string()));
        }
        let mut not_utf8 = encode(&"ab".to_string());
        let last = not_utf8.len() - 1;
        not_utf8[last] = 0xff;
        assert!(decode::<UserId>("id", &not_utf8).is_err());
        let mut truncated = encode(&"abc".to_string());
        truncated.pop();
        assert!(decode::<UserId>("id", &truncated).is_err());
    }

    #[test]
    fn ids_follow_the_grammar() {
        assert!(UserId::parse("alice").is_ok());
        assert!(UserId::parse("a.b:c-d_e9").is_ok());
        assert!(UserId::parse("x".repeat(128)).is_ok());
        assert_eq!(UserId::parse(""), Err(IdError::Empty { field: "user_id" }));
        assert_eq!(
            UserId::parse("x".repeat(129)),
            Err(IdError::TooLong { field: "user_id" })
        );
        assert_eq!(
            UserId::parse("-a"),
            Err(IdError::BadCharacter { field: "user_id" })
        );
        assert_eq!(
            UserId::parse("a b"),
            Err(IdError::BadCharacter { field: "user_id" })
        );
        assert_eq!(
            UserId::parse("é"),
            Err(IdError::BadCharacter { field: "user_id" })
        );
    }

    #[test]
    fn ids_refuse_bad_values_when_deserialized() {
        assert!(serde_json::from_str::<ItemId>("\"ok\"").is_ok());
        assert!(serde_json::from_str::<ItemId>("\"not ok\"").is_err());
    }

    /// Inside an id table, a repeated id is a reference to its first
    /// occurrence; outside one, ids encode as text (as a `String` would).
    #[test]
    fn an_id_table_writes_each_id_once() {
        use crate::codec::{decode_record_part, encode_record_part};
        let alice = UserId::parse("alice").expect("valid id");
        let bob = UserId::parse("bob").expect("valid id");
        let ids = vec![alice.clone(), bob.clone(), alice.clone(), alice.clone()];
        assert_eq!(
            encode_record_part(&ids),
            encode_record_part(&vec!["alice", "bob", "alice", "alice"])
        );
        let shared = with_id_table(|| encode_record_part(&ids));
        // Four ids: "alice" and "bob" as text, then two references to the
        // first (a zero, then its place from 1).
        let expected: Vec<u8> = [&[4, 5][..], b"alice", &[3], b"bob", &[0, 1, 0, 1]].concat();
        assert_eq!(shared, expected);
        let decoded: Vec<UserId> =
            with_id_table(|| decode_record_part("ids", &shared)).expect("the ids decode");
        assert_eq!(decoded, ids);
        assert_eq!(decoded[0].as_str().as_ptr(), decoded[3].as_str().as_ptr());
        // Outside a table the same bytes do not decode: a zero is an empty
        // text there, and the trailing references are left over.
        assert!(decode_record_part::<Vec<UserId>>("ids", &shared).is_err());
        // A reference to an id not decoded yet is refused, not a panic.
        let dangling: Vec<u8> = [&[2, 5][..], b"alice", &[0, 2]].concat();
        assert!(with_id_table(|| decode_record_part::<Vec<UserId>>("ids", &dangling)).is_err());
        // The table is this encode's own: the next one starts empty.
        assert_eq!(with_id_table(|| encode_record_part(&ids)), shared);
    }

    /// A table is restored when its encode panics or nests another.
    #[test]
    fn an_id_table_ends_with_its_encode() {
        let alice = UserId::parse("alice").expect("valid id");
        let nested = with_id_table(|| {
            let inner = with_id_table(|| crate::codec::encode_record_part(&alice));
            let outer = crate::codec::encode_record_part(&vec![alice.clone(), alice.clone()]);
            (inner, outer)
        });
        assert_eq!(nested.0, [&[5][..], b"alice"].concat());
        assert_eq!(nested.1, [&[2, 5][..], b"alice", &[0, 1]].concat());
        let unwound = std::panic::catch_unwind(|| with_id_table(|| panic!("an encode failed")));
        assert!(unwound.is_err());
        assert!(
            ID_TABLE.with_borrow(Option::is_none),
            "no table is left behind"
        );
    }
}
