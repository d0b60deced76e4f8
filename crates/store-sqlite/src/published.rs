//! What the projector has committed, published in memory for the query
//! path: the shard checkpoints and delivery marks the read models cover,
//! and a bounded cache of the storefront's hottest point reads (an item, a
//! balance, the first page of an inventory).
//!
//! A read from SQLite costs a read transaction, whose lock and unlock were
//! the largest part of a read's time in the server (`perf`: about 15% of
//! the query server's CPU on item reads, against a few percent for the
//! query itself). A cached view costs a hash lookup.
//!
//! The projector thread is the only writer of the read models, and after
//! each commit it publishes, in one critical section: it empties the
//! cache, advances the epoch, and raises the marks to what it committed.
//! So:
//! * a read whose `?after=` position the published marks cover finds no
//!   cached view older than that position (the cache was emptied when the
//!   marks were raised), and a view it loads from SQLite is read after the
//!   commit that covers it;
//! * a view loaded from SQLite is kept only if no publication came between
//!   the start of its load and its keeping (same epoch): a load that raced
//!   a commit may have read the state from before it, and is dropped. A
//!   load that began after a publication reads at least what it published.
//!
//! Emptying the whole cache at each commit keeps the proof short; under a
//! steady write load a hot view is loaded again once per projection
//! transaction (about every `PROJECTOR_GATHER`), not once per read.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use ledger_core::ReadPosition;
use projectors::{BalanceView, InventoryEntry, ItemView, Page};
use rusqlite::Connection;

use crate::error::{from_sql, SqliteStoreError};
use crate::metrics as names;

/// Weight each kind may hold: items and balances weigh one per view, an
/// inventory page one per entry (a page holds up to `PAGE_SIZE_MAX`). A
/// full kind keeps no more until the next publication empties it: a few
/// tens of MB per kind at most (an item view and its key are a few hundred
/// bytes, an inventory entry about a hundred).
pub const CACHED_WEIGHT_PER_KIND_MAX: usize = 65_536;

/// The published marks and the cached views (see the module doc).
#[derive(Default)]
pub struct Published {
    state: RwLock<State>,
}

#[derive(Default)]
pub(crate) struct State {
    /// Publications so far; a load keeps its view only in the epoch it began.
    epoch: u64,
    /// Last sequence projected, per shard.
    checkpoints: HashMap<u16, u64>,
    /// Last message consumed and projected, per (sender, receiver).
    deliveries: HashMap<(u16, u16), u64>,
    items: Views<String, Option<ItemView>>,
    balances: Views<String, BalanceView>,
    /// First pages, per (user, page size).
    inventories: Views<(String, usize), Page<InventoryEntry>>,
}

impl State {
    fn empty_views(&mut self) {
        self.items.empty();
        self.balances.empty();
        self.inventories.empty();
    }
}

/// The cached views of one kind and their weight.
pub(crate) struct Views<K, V> {
    entries: HashMap<K, V>,
    weight: usize,
}

impl<K, V> Default for Views<K, V> {
    fn default() -> Self {
        Self {
            entries: HashMap::new(),
            weight: 0,
        }
    }
}

impl<K, V> Views<K, V> {
    fn empty(&mut self) {
        self.entries.clear();
        self.weight = 0;
    }
}

/// Which of the cached kinds a read uses.
pub(crate) trait CachedKind {
    type Key: Eq + Hash;
    type View: Clone;
    fn views(state: &State) -> &Views<Self::Key, Self::View>;
    fn views_mut(state: &mut State) -> &mut Views<Self::Key, Self::View>;
    /// What a view counts against [`CACHED_WEIGHT_PER_KIND_MAX`].
    fn weight(_view: &Self::View) -> usize {
        1
    }
}

pub(crate) struct Items;
pub(crate) struct Balances;
pub(crate) struct Inventories;

impl CachedKind for Items {
    type Key = String;
    type View = Option<ItemView>;
    fn views(state: &State) -> &Views<String, Option<ItemView>> {
        &state.items
    }
    fn views_mut(state: &mut State) -> &mut Views<String, Option<ItemView>> {
        &mut state.items
    }
}

impl CachedKind for Balances {
    type Key = String;
    type View = BalanceView;
    fn views(state: &State) -> &Views<String, BalanceView> {
        &state.balances
    }
    fn views_mut(state: &mut State) -> &mut Views<String, BalanceView> {
        &mut state.balances
    }
}

impl CachedKind for Inventories {
    type Key = (String, usize);
    type View = Page<InventoryEntry>;
    fn views(state: &State) -> &Views<(String, usize), Page<InventoryEntry>> {
        &state.inventories
    }
    fn views_mut(state: &mut State) -> &mut Views<(String, usize), Page<InventoryEntry>> {
        &mut state.inventories
    }
    fn weight(page: &Page<InventoryEntry>) -> usize {
        page.entries.len().max(1)
    }
}

/// A view not in the cache: where its load began.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Missed {
    epoch: u64,
}

impl Published {
    /// The marks the read models hold, read through the projector's
    /// connection before its thread starts.
    pub(crate) fn load(connection: &Connection) -> Result<Published, SqliteStoreError> {
        let mut state = State {
            checkpoints: crate::projector::projection_checkpoints(connection)?
                .into_iter()
                .collect(),
            ..State::default()
        };
        let mut deliveries = connection
            .prepare("SELECT sender, receiver, sequence FROM projection_deliveries")
            .map_err(SqliteStoreError::sqlite("prepare published delivery load"))?;
        let rows = deliveries
            .query_map([], |row| {
                Ok((
                    row.get::<_, u16>(0)?,
                    row.get::<_, u16>(1)?,
                    row.get::<_, i64>(2)?,
                ))
            })
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
            .map_err(SqliteStoreError::sqlite("load published delivery marks"))?;
        for (sender, receiver, sequence) in rows {
            state
                .deliveries
                .insert((sender, receiver), from_sql("delivery sequence", sequence)?);
        }
        Ok(Published {
            state: RwLock::new(state),
        })
    }

    fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Called by the projector after a commit: empties the cache and raises
    /// the marks to what the committed transaction projected.
    pub(crate) fn publish(
        &self,
        checkpoints: &BTreeMap<u16, u64>,
        deliveries: &BTreeMap<(u16, u16), u64>,
    ) {
        let mut state = self.write();
        state.epoch += 1;
        state.empty_views();
        for (shard, sequence) in checkpoints {
            let mark = state.checkpoints.entry(*shard).or_insert(0);
            *mark = (*mark).max(*sequence);
        }
        for (pair, sequence) in deliveries {
            let mark = state.deliveries.entry(*pair).or_insert(0);
            *mark = (*mark).max(*sequence);
        }
    }

    /// Called by the projector after it emptied the read models.
    pub(crate) fn reset(&self) {
        let mut state = self.write();
        state.epoch += 1;
        state.empty_views();
        state.checkpoints.clear();
        state.deliveries.clear();
    }

    /// Whether the published marks cover every part of `position` (as the
    /// `projection_checkpoint` and `projection_deliveries` rows committed
    /// with them do).
    pub(crate) fn covers(&self, position: &ReadPosition) -> bool {
        let state = self.read();
        let logs = position.positions.iter().all(|wanted| {
            wanted.sequence == 0
                || state
                    .checkpoints
                    .get(&wanted.shard.0)
                    .is_some_and(|checkpoint| *checkpoint >= wanted.sequence)
        });
        logs && position.deliveries.iter().all(|mark| {
            mark.sequence == 0
                || state
                    .deliveries
                    .get(&(mark.from.0, mark.to.0))
                    .is_some_and(|consumed| *consumed >= mark.sequence)
        })
    }

    /// The cached view under `key`, or where its load begins.
    pub(crate) fn lookup<K: CachedKind>(&self, key: &K::Key) -> Result<K::View, Missed> {
        let state = self.read();
        match K::views(&state).entries.get(key) {
            Some(view) => {
                metrics::counter!(names::READ_CACHE_HITS_TOTAL).increment(1);
                Ok(view.clone())
            }
            None => {
                metrics::counter!(names::READ_CACHE_MISSES_TOTAL).increment(1);
                Err(Missed { epoch: state.epoch })
            }
        }
    }

    /// Keeps a view loaded since `missed`, unless a publication came since
    /// (the load may have read the state from before it) or its kind is full.
    pub(crate) fn keep<K: CachedKind>(&self, missed: Missed, key: K::Key, view: K::View) {
        let mut state = self.write();
        if state.epoch != missed.epoch {
            return;
        }
        let views = K::views_mut(&mut state);
        let replaced = views.entries.get(&key).map_or(0, K::weight);
        let weight = views.weight - replaced + K::weight(&view);
        if weight <= CACHED_WEIGHT_PER_KIND_MAX {
            views.entries.insert(key, view);
            views.weight = weight;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn balance(user_id: &str, balance: i64) -> BalanceView {
        BalanceView {
            user_id: user_id.to_string(),
            balance,
            pending: 0,
        }
    }

    #[test]
    fn a_view_loaded_across_a_publication_is_not_kept() {
        let published = Published::default();
        let missed = published
            .lookup::<Balances>(&"alice".to_string())
            .expect_err("an empty cache misses");
        published.publish(&BTreeMap::from([(0, 3)]), &BTreeMap::new());
        published.keep::<Balances>(missed, "alice".to_string(), balance("alice", 10));
        assert!(published.lookup::<Balances>(&"alice".to_string()).is_err());
    }

    #[test]
    fn a_kept_view_is_served_until_the_next_publication_empties_the_cache() {
        let published = Published::default();
        let missed = published
            .lookup::<Balances>(&"alice".to_string())
            .expect_err("an empty cache misses");
        published.keep::<Balances>(missed, "alice".to_string(), balance("alice", 10));
        assert_eq!(
            published.lookup::<Balances>(&"alice".to_string()),
            Ok(balance("alice", 10))
        );
        published.publish(&BTreeMap::new(), &BTreeMap::new());
        assert!(published.lookup::<Balances>(&"alice".to_string()).is_err());
    }

    #[test]
    fn a_kind_keeps_views_up_to_its_weight_and_inventory_pages_weigh_their_entries() {
        let published = Published::default();
        let entry = InventoryEntry {
            item_id: "hat".to_string(),
            serial: None,
            purchase_id: "p".to_string(),
            acquired_at_ms: 0,
        };
        let page = |entries: usize| Page {
            entries: vec![entry.clone(); entries],
            next_cursor: None,
        };
        let key = |user: usize| (format!("user-{user}"), 1_000);
        let pages = CACHED_WEIGHT_PER_KIND_MAX / 1_000;
        for user in 0..pages {
            let missed = published
                .lookup::<Inventories>(&key(user))
                .expect_err("not cached yet");
            published.keep::<Inventories>(missed, key(user), page(1_000));
        }
        let missed = published
            .lookup::<Inventories>(&key(pages))
            .expect_err("not cached yet");
        published.keep::<Inventories>(missed, key(pages), page(1_000));
        assert!(published.lookup::<Inventories>(&key(pages)).is_err());
        assert!(published.lookup::<Inventories>(&key(0)).is_ok());
        // A page kept again under its key replaces the old one's weight:
        // what is left is exactly what 64 full pages and a half page leave.
        let missed = published
            .lookup::<Inventories>(&key(pages + 1))
            .expect_err("not cached yet");
        published.keep::<Inventories>(missed, key(0), page(500));
        let left = CACHED_WEIGHT_PER_KIND_MAX - (pages - 1) * 1_000 - 500;
        published.keep::<Inventories>(missed, key(pages + 1), page(left));
        assert!(published.lookup::<Inventories>(&key(pages + 1)).is_ok());
        published.keep::<Inventories>(missed, key(pages + 2), page(1));
        assert!(published.lookup::<Inventories>(&key(pages + 2)).is_err());
        // Balances have a weight of their own.
        let missed = published
            .lookup::<Balances>(&"alice".to_string())
            .expect_err("not cached yet");
        published.keep::<Balances>(missed, "alice".to_string(), balance("alice", 1));
        assert!(published.lookup::<Balances>(&"alice".to_string()).is_ok());
        published.publish(&BTreeMap::new(), &BTreeMap::new());
        let missed = published
            .lookup::<Inventories>(&key(pages))
            .expect_err("emptied by the publication");
        published.keep::<Inventories>(missed, key(pages), page(1_000));
        assert!(published.lookup::<Inventories>(&key(pages)).is_ok());
    }

    #[test]
    fn coverage_follows_the_published_marks_and_never_falls_back() {
        let published = Published::default();
        let position = |text: &str| ledger_core::parse_position(text).expect("the position parses");
        assert!(published.covers(&ReadPosition::default()));
        assert!(!published.covers(&position("p1.5")));
        published.publish(&BTreeMap::from([(1, 5)]), &BTreeMap::new());
        assert!(published.covers(&position("p1.5")));
        assert!(!published.covers(&position("p1.5_m0.1.2")));
        published.publish(&BTreeMap::from([(1, 4)]), &BTreeMap::from([((0, 1), 2)]));
        assert!(published.covers(&position("p1.5_m0.1.2")));
        assert!(!published.covers(&position("p1.6")));
        assert!(!published.covers(&position("p2.1")));
        published.reset();
        assert!(!published.covers(&position("p1.5")));
    }
}
