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

/// Decodes an id's text (bincode's `str`: a length, then UTF-8) straight
/// into its shared allocation. bincode's own `Arc<str>` decodes a `String`
/// and copies it: two allocations for every id of every decoded message,
/// record and snapshot.
fn decode_shared_text<D: bincode::de::Decoder>(
    decoder: &mut D,
) -> Result<Arc<str>, bincode::error::DecodeError> {
    use bincode::de::read::Reader;
    use bincode::error::DecodeError;
    let length = u64::decode(decoder)?;
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
    Ok(Arc::from(text))
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $field:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Encode)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(Arc<str>);

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
}
