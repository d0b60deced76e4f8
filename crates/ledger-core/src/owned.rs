//! Which non-limited items each user of a shard owns.
//!
//! One ordered set of `(user, item)` pairs rather than a set per user: most
//! users own a handful of items, and a set of its own costs each of them a
//! whole B-tree leaf (eleven slots, about 190 bytes) for one or two ids.
//! Encoded, it is exactly the map of sets it replaced (user → items), so
//! no snapshot changed.
//!
//! Each id's text is held once: a user's pairs share one allocation of the
//! user's id (the shard's wallet key, where the caller passes it), and every
//! pair of an item shares one allocation of the item's id, from a set of the
//! item ids owned on this shard. A purchase's ids arrive freshly parsed from
//! its request; kept as they came, each pair would hold two allocations of
//! its own.

use std::collections::{BTreeMap, BTreeSet};

use bincode::{Decode, Encode};
use serde::{Deserialize, Serialize};

use crate::ids::{ItemId, UserId};

/// The non-limited items each user owns.
#[derive(Debug, Clone, Default)]
pub struct OwnedItems {
    pairs: BTreeSet<(UserId, ItemId)>,
    /// One allocation of each item id the pairs name (never shrinks: it is
    /// bounded by the catalogue).
    item_ids: BTreeSet<ItemId>,
}

/// Two owned sets are equal when they pair the same users and items; how
/// their ids are shared is not part of their value.
impl PartialEq for OwnedItems {
    fn eq(&self, other: &OwnedItems) -> bool {
        self.pairs == other.pairs
    }
}

impl Eq for OwnedItems {}

impl OwnedItems {
    /// A copy whose set of pairs is built from its ordered pairs, so its
    /// nodes are full (see [`crate::state::ShardState::compacted`]); the
    /// copy shares every id's allocation with this one.
    pub fn compacted(&self) -> OwnedItems {
        OwnedItems {
            pairs: self.pairs.iter().cloned().collect(),
            item_ids: self.item_ids.clone(),
        }
    }

    pub fn owns(&self, user_id: &UserId, item_id: &ItemId) -> bool {
        self.pairs.contains(&(user_id.clone(), item_id.clone()))
    }

    /// Records that `user_id` owns `item_id`; false if they already did.
    /// The pair holds the user's id as this user's other pairs hold it (or
    /// `user_id` itself, for their first) and the item's as every pair of
    /// the item does.
    pub fn insert(&mut self, user_id: &UserId, item_id: &ItemId) -> bool {
        let pair = (user_id.clone(), item_id.clone());
        let user_id = self.shared_user(&pair);
        let item_id = self.shared_item(item_id);
        self.pairs.insert((user_id, item_id))
    }

    /// As [`OwnedItems::insert`], with the pair holding `user_id`'s
    /// allocation as it is: for a caller that holds the allocation the
    /// user's pairs share already (the wallet's key), which spares the
    /// search for a neighbour's.
    pub fn insert_shared_user(&mut self, user_id: &UserId, item_id: &ItemId) -> bool {
        let item_id = self.shared_item(item_id);
        self.pairs.insert((user_id.clone(), item_id))
    }

    /// The allocation of the user's id their pairs hold, if they own
    /// anything (`pair` itself or a neighbour of it in the set's order);
    /// else the pair's own.
    fn shared_user(&self, pair: &(UserId, ItemId)) -> UserId {
        let before = self.pairs.range(..pair).next_back();
        let after = self.pairs.range(pair..).next();
        before
            .into_iter()
            .chain(after)
            .find(|(owner, _)| *owner == pair.0)
            .map_or_else(|| pair.0.clone(), |(owner, _)| owner.clone())
    }

    /// The allocation of `item_id` every pair of the item holds.
    fn shared_item(&mut self, item_id: &ItemId) -> ItemId {
        if let Some(known) = self.item_ids.get(item_id) {
            return known.clone();
        }
        self.item_ids.insert(item_id.clone());
        item_id.clone()
    }

    /// Makes each user's pairs hold the allocation `known` gives for the
    /// user (a decoded state's pairs hold one per user, apart from the
    /// wallet that names the same user).
    pub fn share_users(&mut self, known: impl Fn(&UserId) -> Option<UserId>) {
        let mut last: Option<(UserId, UserId)> = None;
        self.pairs = std::mem::take(&mut self.pairs)
            .into_iter()
            .map(|(user_id, item_id)| {
                let shared = match &last {
                    Some((decoded, shared)) if *decoded == user_id => shared.clone(),
                    _ => {
                        let shared = known(&user_id).unwrap_or_else(|| user_id.clone());
                        last = Some((user_id, shared.clone()));
                        shared
                    }
                };
                (shared, item_id)
            })
            .collect();
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
        let mut owned = OwnedItems::default();
        for (user_id, items) in nested {
            for item_id in items {
                owned.insert(&user_id, &item_id);
            }
        }
        owned
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

    /// The allocation of an id's text that a pair holds.
    fn texts(owned: &OwnedItems) -> Vec<(*const u8, *const u8)> {
        owned
            .pairs
            .iter()
            .map(|(user_id, item_id)| (user_id.as_str().as_ptr(), item_id.as_str().as_ptr()))
            .collect()
    }

    #[test]
    fn each_id_is_held_once_however_it_arrives() {
        let mut owned = OwnedItems::default();
        // Each purchase parses its ids afresh.
        for (buyer, bought) in [
            ("carol", "hat"),
            ("alice", "hat"),
            ("carol", "wand"),
            ("carol", "boots"),
            ("alice", "cape"),
            ("bob", "hat"),
        ] {
            assert!(owned.insert(&user(buyer), &item(bought)));
        }
        assert!(!owned.insert(&user("carol"), &item("wand")), "owned once");
        assert_eq!(owned.by_user(), nested());
        let texts = texts(&owned);
        let pairs: Vec<_> = owned.pairs.iter().cloned().collect();
        for (left, left_text) in pairs.iter().zip(&texts) {
            for (right, right_text) in pairs.iter().zip(&texts) {
                assert_eq!(
                    left.0 == right.0,
                    left_text.0 == right_text.0,
                    "{left:?} {right:?}"
                );
                assert_eq!(
                    left.1 == right.1,
                    left_text.1 == right_text.1,
                    "{left:?} {right:?}"
                );
            }
        }
        // Decoded, too.
        let decoded: OwnedItems =
            decode_record_part("owned", &encode_record_part(&nested())).expect("decodes");
        let hats: BTreeSet<*const u8> = decoded
            .pairs
            .iter()
            .filter(|(_, item_id)| item_id.as_str() == "hat")
            .map(|(_, item_id)| item_id.as_str().as_ptr())
            .collect();
        assert_eq!(hats.len(), 1, "one allocation of hat across its owners");
    }

    #[test]
    fn a_pair_inserted_with_a_shared_user_holds_that_allocation() {
        let mut owned = OwnedItems::from(nested());
        let wallet = user("carol");
        assert!(owned.insert_shared_user(&wallet, &item("cape")));
        assert!(
            !owned.insert_shared_user(&wallet, &item("cape")),
            "owned once"
        );
        assert!(owned.owns(&user("carol"), &item("cape")));
        let (held, held_item) = owned
            .pairs
            .iter()
            .find(|(user_id, item_id)| user_id.as_str() == "carol" && item_id.as_str() == "cape")
            .expect("the pair");
        assert_eq!(held.as_str().as_ptr(), wallet.as_str().as_ptr());
        // The item's id is still the one every pair of the item holds.
        let (_, first) = owned
            .pairs
            .iter()
            .find(|(_, item_id)| item_id.as_str() == "cape")
            .expect("cape");
        assert_eq!(held_item.as_str().as_ptr(), first.as_str().as_ptr());
    }

    #[test]
    fn users_share_the_allocation_they_are_given() {
        let mut owned = OwnedItems::from(nested());
        let wallets = [user("alice"), user("carol")];
        owned.share_users(|user_id| wallets.iter().find(|known| *known == user_id).cloned());
        assert_eq!(owned.by_user(), nested(), "the same pairs");
        for (user_id, _) in &owned.pairs {
            let wallet = wallets.iter().find(|known| *known == user_id);
            match wallet {
                Some(wallet) => assert_eq!(user_id.as_str().as_ptr(), wallet.as_str().as_ptr()),
                None => assert_eq!(user_id.as_str(), "bob"),
            }
        }
        // A user's next item shares the allocation their pairs hold.
        assert!(owned.insert(&user("alice"), &item("wand")));
        let alice: BTreeSet<*const u8> = owned
            .pairs
            .iter()
            .filter(|(user_id, _)| user_id.as_str() == "alice")
            .map(|(user_id, _)| user_id.as_str().as_ptr())
            .collect();
        assert_eq!(alice, BTreeSet::from([wallets[0].as_str().as_ptr()]));
    }
}
