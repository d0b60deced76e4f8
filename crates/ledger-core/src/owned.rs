//! Which non-limited items each user of a shard owns.
//!
//! One ordered set of `(user, item)` pairs rather than a set per user: most
//! users own a handful of items, and a set of its own costs each of them a
//! whole B-tree leaf (eleven slots, about 190 bytes) for one or two ids.
//! Encoded, it is exactly the map of sets it replaced (user → items), so
//! no snapshot changed.

use std::collections::{BTreeMap, BTreeSet};

use bincode::{Decode, Encode};
use serde::{Deserialize, Serialize};

use crate::ids::{ItemId, UserId};

/// The non-limited items each user owns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OwnedItems {
    pairs: BTreeSet<(UserId, ItemId)>,
}

impl OwnedItems {
    pub fn owns(&self, user_id: &UserId, item_id: &ItemId) -> bool {
        self.pairs.contains(&(user_id.clone(), item_id.clone()))
    }

    /// Records that `user_id` owns `item_id`; false if they already did.
    pub fn insert(&mut self, user_id: &UserId, item_id: &ItemId) -> bool {
        self.pairs.insert((user_id.clone(), item_id.clone()))
    }

    /// Records that `user_id` no longer owns `item_id`; false if they did
    /// not.
    pub fn remove(&mut self, user_id: &UserId, item_id: &ItemId) -> bool {
        self.pairs.remove(&(user_id.clone(), item_id.clone()))
    }

    /// Items owned, all users together.
    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// Each user with the items they own, by user.
    pub fn by_user(&self) -> BTreeMap<UserId, BTreeSet<ItemId>> {
        let mut nested: BTreeMap<UserId, BTreeSet<ItemId>> = BTreeMap::new();
        for (user_id, item_id) in &self.pairs {
            nested
                .entry(user_id.clone())
                .or_default()
                .insert(item_id.clone());
        }
        nested
    }

    /// Users owning at least one item.
    fn users(&self) -> usize {
        let mut users = 0;
        let mut last: Option<&UserId> = None;
        for (user_id, _) in &self.pairs {
            if last != Some(user_id) {
                users += 1;
                last = Some(user_id);
            }
        }
        users
    }
}

impl From<BTreeMap<UserId, BTreeSet<ItemId>>> for OwnedItems {
    fn from(nested: BTreeMap<UserId, BTreeSet<ItemId>>) -> OwnedItems {
        let pairs = nested
            .into_iter()
            .flat_map(|(user_id, items)| {
                items
                    .into_iter()
                    .map(move |item_id| (user_id.clone(), item_id))
            })
            .collect();
        OwnedItems { pairs }
    }
}

/// As `BTreeMap<UserId, BTreeSet<ItemId>>` encodes: the number of users,
/// then each user, the number of their items and the items, in order.
/// A user owning nothing is not kept, so never written.
impl Encode for OwnedItems {
    fn encode<E: bincode::enc::Encoder>(
        &self,
        encoder: &mut E,
    ) -> Result<(), bincode::error::EncodeError> {
        (self.users() as u64).encode(encoder)?;
        let mut group: Vec<&ItemId> = Vec::new();
        let mut owner: Option<&UserId> = None;
        for (user_id, item_id) in &self.pairs {
            if owner != Some(user_id) {
                if let Some(owner) = owner {
                    encode_group(encoder, owner, &group)?;
                }
                group.clear();
                owner = Some(user_id);
            }
            group.push(item_id);
        }
        if let Some(owner) = owner {
            encode_group(encoder, owner, &group)?;
        }
        Ok(())
    }
}

/// One user's entry of the map of sets: the user, then the set.
fn encode_group<E: bincode::enc::Encoder>(
    encoder: &mut E,
    user_id: &UserId,
    items: &[&ItemId],
) -> Result<(), bincode::error::EncodeError> {
    user_id.encode(encoder)?;
    (items.len() as u64).encode(encoder)?;
    for item_id in items {
        item_id.encode(encoder)?;
    }
    Ok(())
}

impl<Context> Decode<Context> for OwnedItems {
    fn decode<D: bincode::de::Decoder<Context = Context>>(
        decoder: &mut D,
    ) -> Result<Self, bincode::error::DecodeError> {
        let nested: BTreeMap<UserId, BTreeSet<ItemId>> = Decode::decode(decoder)?;
        Ok(OwnedItems::from(nested))
    }
}

bincode::impl_borrow_decode!(OwnedItems);

impl Serialize for OwnedItems {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.by_user().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for OwnedItems {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        BTreeMap::<UserId, BTreeSet<ItemId>>::deserialize(deserializer).map(OwnedItems::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{decode, decode_record_part, encode, encode_record_part};

    fn user(id: &str) -> UserId {
        UserId::parse(id).expect("valid id")
    }

    fn item(id: &str) -> ItemId {
        ItemId::parse(id).expect("valid id")
    }

    fn nested() -> BTreeMap<UserId, BTreeSet<ItemId>> {
        BTreeMap::from([
            (user("alice"), BTreeSet::from([item("hat"), item("cape")])),
            (user("bob"), BTreeSet::from([item("hat")])),
            (
                user("carol"),
                BTreeSet::from([item("boots"), item("hat"), item("wand")]),
            ),
        ])
    }

    #[test]
    fn it_encodes_as_the_map_of_sets_it_replaced() {
        let owned = OwnedItems::from(nested());
        assert_eq!(owned.len(), 6);
        assert_eq!(encode(&owned), encode(&nested()));
        assert_eq!(encode_record_part(&owned), encode_record_part(&nested()));
        let decoded: OwnedItems = decode("owned", &encode(&nested())).expect("decodes");
        assert_eq!(decoded, owned);
        let decoded: OwnedItems =
            decode_record_part("owned", &encode_record_part(&nested())).expect("decodes");
        assert_eq!(decoded.by_user(), nested());
        let empty = OwnedItems::default();
        assert_eq!(
            encode(&empty),
            encode(&BTreeMap::<UserId, BTreeSet<ItemId>>::new())
        );
    }

    #[test]
    fn ownership_is_per_user_and_item() {
        let mut owned = OwnedItems::from(nested());
        assert!(owned.owns(&user("bob"), &item("hat")));
        assert!(!owned.owns(&user("bob"), &item("cape")));
        assert!(!owned.insert(&user("bob"), &item("hat")), "owned once");
        assert!(owned.insert(&user("bob"), &item("cape")));
        assert!(owned.remove(&user("alice"), &item("hat")));
        assert!(!owned.remove(&user("alice"), &item("hat")), "removed once");
        assert!(owned.owns(&user("carol"), &item("hat")));
        let mut expected = nested();
        expected
            .get_mut(&user("bob"))
            .expect("bob")
            .insert(item("cape"));
        expected
            .get_mut(&user("alice"))
            .expect("alice")
            .remove(&item("hat"));
        assert_eq!(owned.by_user(), expected);
        assert!(owned.remove(&user("alice"), &item("cape")));
        // A user owning nothing is not written.
        expected.remove(&user("alice"));
        assert_eq!(encode(&owned), encode(&expected));
    }
}
