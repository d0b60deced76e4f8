//! Snapshots written beside the shard that owns the state.
//!
//! Only the copy of the state happens on the shard's task (measured as
//! `ledger_engine_snapshot_copy_duration_seconds`: the one pause a snapshot
//! costs the shard); encoding, checksumming and the write run on a blocking
//! thread. The copy is the one the shard goes on with, its growing maps
//! rebuilt with full B-tree nodes; the snapshot takes the state as it was
//! ([`crate::shard::ShardRunner::snapshot_and_compact`]). At most one snapshot per shard is in flight, and at most
//! [`SNAPSHOTS_IN_FLIGHT_MAX`] across the shards of a process: a shard that
//! is due while its previous one, or another shard's, is being saved tries
//! again after its next batch.
//!
//! A snapshot in flight holds a copy of its state's maps, the state
//! encoded and that encoding compressed: about 1.2 times the state's own
//! heap. Shards that share a load reach their snapshot threshold together;
//! saved together, their copies would double the process's memory for a
//! moment (and size its container for that moment).

use std::sync::Arc;
use std::time::Instant;

use ledger_core::ShardId;
use tokio::sync::Semaphore;

use crate::metrics as names;
use crate::ports::EventStore;
use crate::shard::ShardRunner;

/// Most snapshots a process saves at once.
pub const SNAPSHOTS_IN_FLIGHT_MAX: usize = 1;

/// The snapshots a process may save at once, shared by its shards' writers.
#[derive(Debug, Clone)]
pub struct SnapshotPermits(Arc<Semaphore>);

impl Default for SnapshotPermits {
    fn default() -> Self {
        Self(Arc::new(Semaphore::new(SNAPSHOTS_IN_FLIGHT_MAX)))
    }
}

/// One shard's snapshot writer.
#[derive(Debug)]
pub struct SnapshotWriter {
    permits: SnapshotPermits,
    in_flight: Option<tokio::task::JoinHandle<()>>,
}

impl SnapshotWriter {
    /// A writer that saves only while it holds one of `permits`.
    pub fn new(permits: SnapshotPermits) -> Self {
        Self {
            permits,
            in_flight: None,
        }
    }

    /// Whether no snapshot of this shard is being saved.
    pub fn is_idle(&self) -> bool {
        self.in_flight
            .as_ref()
            .is_none_or(tokio::task::JoinHandle::is_finished)
    }

    /// Takes `runner`'s state (the shard goes on with a compacted copy, see
    /// [`ShardRunner::snapshot_and_compact`]) and saves it beside the shard, unless the
    /// previous snapshot is still being saved or the process saves as many
    /// as it may (then returns false). Call it right after an append: a
    /// store that orders its writes saves the snapshot after the records it
    /// covers.
    pub fn start<W>(&mut self, runner: &mut ShardRunner<W>, store: &Arc<dyn EventStore>) -> bool {
        if !self.is_idle() {
            return false;
        }
        let Ok(permit) = Arc::clone(&self.permits.0).try_acquire_owned() else {
            metrics::counter!(names::SNAPSHOTS_DEFERRED_TOTAL).increment(1);
            return false;
        };
        let copying = Instant::now();
        let snapshot = runner.snapshot_and_compact();
        metrics::histogram!(names::SNAPSHOT_COPY_DURATION_SECONDS)
            .record(copying.elapsed().as_secs_f64());
        let store = Arc::clone(store);
        let shard: ShardId = runner.shard();
        let runtime = tokio::runtime::Handle::current();
        self.in_flight = Some(tokio::task::spawn_blocking(move || {
            // Released once this snapshot is saved (or failed).
            let _permit = permit;
            let saving = Instant::now();
            match runtime.block_on(store.save_snapshot(shard, &snapshot)) {
                Ok(()) => {
                    metrics::counter!(names::SNAPSHOTS_TOTAL).increment(1);
                    metrics::histogram!(names::SNAPSHOT_SAVE_DURATION_SECONDS)
                        .record(saving.elapsed().as_secs_f64());
                }
                Err(error) => {
                    tracing::warn!(%shard, %error, "snapshot failed; the log still has everything")
                }
            }
        }));
        true
    }

    /// Waits for the snapshot in flight, if any (a snapshot is an
    /// optimisation: whatever its outcome).
    pub async fn finish(&mut self) {
        if let Some(in_flight) = self.in_flight.take() {
            let _ = in_flight.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    use async_trait::async_trait;
    use ledger_core::codec::{BatchRecord, MessageEnvelope, Snapshot};
    use ledger_core::Config;

    use super::*;
    use crate::ports::{Recovery, ShardBatch, StoreError};

    /// A store whose snapshot saves wait until the test lets them finish.
    struct GatedSnapshots {
        saving: Mutex<Vec<ShardId>>,
        saved: Mutex<Vec<ShardId>>,
        gate: tokio::sync::Semaphore,
    }

    #[async_trait]
    impl EventStore for GatedSnapshots {
        async fn append(&self, _batches: Vec<ShardBatch>) -> Result<(), StoreError> {
            unreachable!("the test appends nothing")
        }
        async fn recover(&self, _shard: ShardId) -> Result<Recovery, StoreError> {
            unreachable!("the test recovers nothing")
        }
        async fn pending_messages(
            &self,
            _to: ShardId,
            _next_expected: &BTreeMap<ShardId, u64>,
        ) -> Result<Vec<MessageEnvelope>, StoreError> {
            unreachable!("the test reads no messages")
        }
        async fn save_snapshot(
            &self,
            shard: ShardId,
            _snapshot: &Snapshot,
        ) -> Result<(), StoreError> {
            self.saving.lock().expect("not poisoned").push(shard);
            // Bounded, so a failed assertion ends the test instead of
            // leaving this save waiting.
            let opened =
                tokio::time::timeout(std::time::Duration::from_secs(10), self.gate.acquire());
            opened
                .await
                .expect("the test opens the gate")
                .expect("open")
                .forget();
            self.saved.lock().expect("not poisoned").push(shard);
            Ok(())
        }
        async fn read_shard(
            &self,
            _shard: ShardId,
            _after: u64,
            _limit: usize,
        ) -> Result<Vec<BatchRecord>, StoreError> {
            unreachable!("the test reads no records")
        }
    }

    /// Two shards due at once: the second waits for the first's snapshot to
    /// be saved, then saves its own.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_snapshot_is_saved_at_a_time_across_shards() {
        let gated = Arc::new(GatedSnapshots {
            saving: Mutex::new(Vec::new()),
            saved: Mutex::new(Vec::new()),
            gate: tokio::sync::Semaphore::new(0),
        });
        let store: Arc<dyn EventStore> = gated.clone();
        let config = Arc::new(Config::new(2));
        let mut first: ShardRunner<()> = ShardRunner::new(ShardId(0), config.clone());
        let mut second: ShardRunner<()> = ShardRunner::new(ShardId(1), config);
        let permits = SnapshotPermits::default();
        let mut first_writer = SnapshotWriter::new(permits.clone());
        let mut second_writer = SnapshotWriter::new(permits);
        assert!(first_writer.start(&mut first, &store));
        assert!(
            !second_writer.start(&mut second, &store),
            "the other shard's snapshot is being saved"
        );
        assert!(!first_writer.start(&mut first, &store), "one per shard");
        gated.gate.add_permits(1);
        first_writer.finish().await;
        assert_eq!(*gated.saved.lock().expect("not poisoned"), [ShardId(0)]);
        assert!(
            second_writer.start(&mut second, &store),
            "saved: the next may start"
        );
        gated.gate.add_permits(1);
        second_writer.finish().await;
        assert_eq!(
            *gated.saved.lock().expect("not poisoned"),
            [ShardId(0), ShardId(1)]
        );
        assert_eq!(
            *gated.saving.lock().expect("not poisoned"),
            [ShardId(0), ShardId(1)]
        );
    }
}
