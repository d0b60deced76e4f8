//! Typed views of the commands a shard runs as sagas.
//!
//! A saga's state is stored as a [`CommandRecord`] (the command and its
//! [`Progress`](crate::model::Progress)) under the command's key. A reply
//! from another shard only ever reaches a saga in the stage that sent the
//! request, so each stage has its own type, read from the record by
//! [`stage`]: the one place where a record that does not match the reply is
//! recognised as the bug it is.

use crate::state::{CommandRecord, ShardState};

/// One stage of a saga, as a typed view of its stored record.
pub(super) trait SagaStage<'a>: Sized {
    /// What a reply expects to find, for the failure message.
    const EXPECTED: &'static str;

    /// The view, or `None` if `record` is in another stage or holds another
    /// kind of command.
    fn read(record: &'a CommandRecord) -> Option<Self>;
}

/// The saga under `key`, which must be running and in stage `S`.
///
/// Panics otherwise: a reply to a command this shard does not run, or to a
/// command that is not waiting for it, means a bug or a corrupt log.
pub(super) fn stage<'a, S: SagaStage<'a>>(state: &'a ShardState, key: &str) -> S {
    let remembered = state.commands.get(key).unwrap_or_else(|| {
        panic!("a reply refers to command {key}, which this shard never accepted")
    });
    let Some(record) = remembered.running() else {
        panic!(
            "command {key} should be {} but completed: {:?}",
            S::EXPECTED,
            remembered.record(key)
        )
    };
    stage_of(record, key)
}

/// The completed command under `key` (decoded: see
/// [`crate::remembered::Remembered`]), for [`stage_of`].
///
/// Panics if the shard never accepted it.
pub(super) fn completed(state: &ShardState, key: &str) -> CommandRecord {
    state
        .commands
        .get(key)
        .unwrap_or_else(|| panic!("command {key} was never accepted by this shard"))
        .record(key)
        .into_owned()
}

/// `record`, the command under `key`, in stage `S`; panics otherwise.
pub(super) fn stage_of<'a, S: SagaStage<'a>>(record: &'a CommandRecord, key: &str) -> S {
    S::read(record).unwrap_or_else(|| {
        panic!(
            "command {key} should be {} but holds {:?} in progress {:?}",
            S::EXPECTED,
            record.command,
            record.progress
        )
    })
}
