//! `ledger export --public [--follow]`: an embedded data directory's public
//! event stream for analysts (`crates/public-events`), one CloudEvents JSON
//! object per line (structured mode: the attributes, then `data`), in the
//! order the ledger decided them. With `--follow`, keeps reading as the
//! ledger writes, like `tail -f`. Read-only; the server may be running.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use ledger_core::codec::BatchRecord;
use public_events::{PublicEvent, PublicStream};

/// `ce_source` of the embedded ledger's events.
pub const EMBEDDED_SOURCE: &str = "/ledger";

/// Records read per query.
const RECORDS_PER_READ: usize = 1_000;

/// Reads the records committed after `*after`, advancing it, and returns
/// the public events they complete.
fn read_more(
    data_dir: &Path,
    stream: &mut PublicStream,
    after: &mut i64,
) -> Result<(usize, Vec<PublicEvent>), String> {
    let mut failure: Option<String> = None;
    let mut last = *after;
    let visited = store_sqlite::log::read_records_after(
        data_dir,
        *after,
        RECORDS_PER_READ,
        &mut |position, bytes| {
            last = position;
            if failure.is_some() {
                return;
            }
            let pushed = BatchRecord::from_bytes(bytes)
                .map_err(|error| error.to_string())
                .and_then(|record| {
                    stream
                        .push(position, record)
                        .map_err(|error| error.to_string())
                });
            if let Err(error) = pushed {
                failure = Some(format!(
                    "the record at position {position} cannot be published ({error}); \
                     run `ledger verify`"
                ));
            }
        },
    )
    .map_err(|error| error.to_string())?;
    if let Some(failure) = failure {
        return Err(failure);
    }
    *after = last;
    let events = stream.drain().map_err(|error| error.to_string())?;
    Ok((visited, events))
}

/// Every public event of `data_dir` so far, in order.
pub fn public_events(data_dir: &Path) -> Result<Vec<PublicEvent>, String> {
    let mut stream = PublicStream::new(EMBEDDED_SOURCE);
    let mut after = 0;
    let mut all = Vec::new();
    loop {
        let (visited, events) = read_more(data_dir, &mut stream, &mut after)?;
        all.extend(events);
        if visited == 0 {
            return Ok(all);
        }
    }
}

/// Writes the public events of `data_dir` to `sink` as NDJSON; with
/// `follow`, then waits `poll_interval` and writes what was committed since,
/// until writing fails (the reader went away). Answers the events written.
pub fn export_public(
    data_dir: &Path,
    sink: &mut dyn Write,
    follow: bool,
    poll_interval: Duration,
) -> Result<u64, String> {
    let mut stream = PublicStream::new(EMBEDDED_SOURCE);
    let mut after = 0;
    let mut written: u64 = 0;
    loop {
        let (visited, events) = read_more(data_dir, &mut stream, &mut after)?;
        for event in &events {
            serde_json::to_writer(&mut *sink, &event.structured())
                .map_err(|error| format!("cannot write an event: {error}"))?;
            sink.write_all(b"\n")
                .map_err(|error| format!("cannot write an event: {error}"))?;
            written += 1;
        }
        if visited == 0 {
            sink.flush()
                .map_err(|error| format!("cannot write the events: {error}"))?;
            if !follow {
                return Ok(written);
            }
            std::thread::sleep(poll_interval);
        }
    }
}
