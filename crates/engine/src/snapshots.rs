//! Snapshots written beside the shard that owns the state.
//!
//! Only the copy of the state happens on the shard's task (measured as
//! `ledger_engine_snapshot_copy_duration_seconds`: the one pause a snapshot
//! costs the shard); encoding, checksumming and the write run on a blocking
//! thread. At most one snapshot per shard is in flight: a shard that is due
//! again before the previous one is saved waits for its next batch.

use std::sync::Arc;
use std::time::Instant;

use ledger_core::ShardId;

use crate::metrics as names;
use crate::ports::EventStore;
use crate::shard::ShardRunner;

/// One shard's snapshot writer.
#[derive(Debug, Default)]
pub struct SnapshotWriter {
    in_flight: Option<tokio::task::JoinHandle<()>>,
}

impl SnapshotWriter {
    /// Whether no snapshot of this shard is being saved.
    pub fn is_idle(&self) -> bool {
        self.in_flight
            .as_ref()
            .is_none_or(tokio::task::JoinHandle::is_finished)
    }

    /// Copies `runner`'s state and saves it beside the shard, unless the
    /// previous snapshot is still being saved (then returns false). Call it
    /// right after an append: a store that orders its writes saves the
    /// snapshot after the records it covers.
    pub fn start<W>(&mut self, runner: &ShardRunner<W>, store: &Arc<dyn EventStore>) -> bool {
        if !self.is_idle() {
            return false;
        }
        let copying = Instant::now();
        let snapshot = runner.snapshot();
        metrics::histogram!(names::SNAPSHOT_COPY_DURATION_SECONDS)
            .record(copying.elapsed().as_secs_f64());
        let store = Arc::clone(store);
        let shard: ShardId = runner.shard();
        let runtime = tokio::runtime::Handle::current();
        self.in_flight = Some(tokio::task::spawn_blocking(move || {
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
