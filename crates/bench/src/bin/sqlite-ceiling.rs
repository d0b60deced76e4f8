//! Raw SQLite write ceiling of the rows our purchases produce, with the
//! store's own durability (WAL, `synchronous = FULL`, one writer).
//!
//! The rows are real: `--purchases` primary purchases run through the
//! unchanged engine (`ShardRunner`s, messages delivered in memory) on
//! `--shards` shards, and every record and message row they produce is kept
//! (one record per input here: the in-memory cluster seals each input alone,
//! where the server seals a whole group commit into one record per shard).
//! Then only the writing is timed: plain `INSERT`s of those rows into the
//! store's `records` and `messages` tables, `--batch` rows per transaction,
//! one fsync per commit. No conflict checks, no read models, no engine.
//! The result, in purchases/s, is what the disk and SQLite allow for our
//! rows: the durable embedded ledger is reported as a ratio to it.
//!
//! ```text
//! target/release/sqlite-ceiling --purchases 20000 --shards 4 --batch 4096 [--json FILE]
//! ```
//!
//! Bounded in count; writes to a fresh temporary directory it removes.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use engine::in_memory::InMemoryCluster;
use ledger_core::codec::{BatchRecord, MessageEnvelope};
use ledger_core::{Command, GrantId, ItemDefinition, ItemId, PurchaseId, PurchaseTarget, UserId};
use rusqlite::params;
use store_sqlite::{open_writer, Checkpointer, DATABASE_FILE_NAME, GROUP_COMMIT_ENTRIES_MAX};

const PURCHASES_MAX: usize = 1_000_000;
const BUYERS: usize = 2_000;
const PRICE: i64 = 10;

struct Parameters {
    purchases: usize,
    shards: u16,
    batch: usize,
    json: Option<PathBuf>,
}

const USAGE: &str =
    "usage: sqlite-ceiling [--purchases N] [--shards S] [--batch ROWS] [--json FILE]";

fn parse() -> Result<Parameters, String> {
    let mut parameters = Parameters {
        purchases: 20_000,
        shards: 4,
        batch: GROUP_COMMIT_ENTRIES_MAX,
        json: None,
    };
    let mut arguments = std::env::args().skip(1);
    while let Some(flag) = arguments.next() {
        let value = arguments
            .next()
            .ok_or_else(|| format!("{flag} needs a value"))?;
        let number = |value: &str| {
            value
                .parse::<usize>()
                .map_err(|_| format!("{flag} must be a positive integer"))
        };
        match flag.as_str() {
            "--purchases" => parameters.purchases = number(&value)?,
            "--batch" => parameters.batch = number(&value)?,
            "--shards" => {
                parameters.shards = u16::try_from(number(&value)?)
                    .map_err(|_| "--shards is too large".to_string())?
            }
            "--json" => parameters.json = Some(PathBuf::from(value)),
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if parameters.purchases == 0 || parameters.purchases > PURCHASES_MAX {
        return Err(format!("--purchases must be in 1..={PURCHASES_MAX}"));
    }
    if parameters.shards == 0 || parameters.shards > 64 {
        return Err("--shards must be in 1..=64".into());
    }
    if parameters.batch == 0 || parameters.batch > 100_000 {
        return Err("--batch must be in 1..=100000".into());
    }
    Ok(parameters)
}

/// The rows of `purchases` primary purchases (setup rows excluded).
fn purchase_rows(parameters: &Parameters) -> (Vec<BatchRecord>, Vec<MessageEnvelope>) {
    let mut cluster = InMemoryCluster::new(parameters.shards);
    let items = parameters.purchases.div_ceil(BUYERS);
    cluster.run((0..BUYERS).map(|buyer| Command::Grant {
        grant_id: GrantId::parse(format!("g-{buyer}")).expect("generated ids are valid"),
        user_id: UserId::parse(format!("b-{buyer}")).expect("generated ids are valid"),
        amount: PRICE * items as i64,
    }));
    cluster.run((0..items).map(|item| {
        Command::PublishItem(ItemDefinition {
            item_id: ItemId::parse(format!("i-{item}")).expect("generated ids are valid"),
            creator_id: UserId::parse(format!("c-{}", item % 5)).expect("generated ids are valid"),
            name: "thing".into(),
            price: PRICE,
            supply: None,
            max_per_user: None,
            starts_at_ms: None,
            ends_at_ms: None,
            resellable: false,
            kind: Default::default(),
        })
    }));
    cluster.expect_succeeded(BUYERS + items);
    cluster.record();
    cluster.run((0..parameters.purchases).map(|n| Command::Purchase {
        purchase_id: PurchaseId::parse(format!("p-{n}")).expect("generated ids are valid"),
        buyer_id: UserId::parse(format!("b-{}", n % BUYERS)).expect("generated ids are valid"),
        target: PurchaseTarget::Item(
            ItemId::parse(format!("i-{}", n / BUYERS)).expect("generated ids are valid"),
        ),
        expected_price: PRICE,
        region: None,
    }));
    // Every purchase succeeds, so the rows are those of successful purchases.
    cluster.expect_succeeded(parameters.purchases);
    let recorded = cluster.take_recorded();
    (recorded.records, recorded.messages)
}

struct Measured {
    rows: usize,
    transactions: usize,
    seconds: f64,
    row_bytes: usize,
}

fn write_rows(
    directory: &std::path::Path,
    events: &[BatchRecord],
    messages: &[MessageEnvelope],
    batch: usize,
) -> Result<Measured, rusqlite::Error> {
    let mut connection = open_writer(directory).map_err(|error| {
        rusqlite::Error::InvalidParameterName(format!("cannot open the store's writer: {error}"))
    })?;
    // The store checkpoints beside its writer; so does this ceiling.
    let checkpointer = Checkpointer::spawn(
        &directory.join(DATABASE_FILE_NAME),
        store_sqlite::CheckpointedDatabase::Log,
    )
    .map_err(|error| {
        rusqlite::Error::InvalidParameterName(format!("cannot start the checkpointer: {error}"))
    })?;
    // Serialise before the clock starts: the ledger's writer receives
    // encoded records too.
    let event_rows: Vec<(&BatchRecord, Vec<u8>)> = events
        .iter()
        .map(|envelope| (envelope, envelope.to_bytes()))
        .collect();
    let message_rows: Vec<(&MessageEnvelope, Vec<u8>)> = messages
        .iter()
        .map(|message| {
            let bytes = ledger_core::codec::encode(message);
            (message, bytes)
        })
        .collect();
    let row_bytes = event_rows
        .iter()
        .map(|(_, bytes)| bytes.len())
        .sum::<usize>()
        + message_rows
            .iter()
            .map(|(_, bytes)| bytes.len())
            .sum::<usize>();
    let rows = event_rows.len() + message_rows.len();
    let started = Instant::now();
    let mut transactions = 0;
    let mut events_left = event_rows.iter();
    let mut messages_left = message_rows.iter();
    let mut written = 0;
    while written < rows {
        let transaction = connection.transaction()?;
        {
            let mut insert_event = transaction.prepare_cached(
                "INSERT INTO records (shard, last_sequence, hash, record) VALUES (?1, ?2, ?3, ?4)",
            )?;
            let mut insert_message = transaction.prepare_cached(
                "INSERT INTO messages (sender, receiver, sequence, envelope) VALUES (?1, ?2, ?3, ?4)",
            )?;
            let mut in_batch = 0;
            while in_batch < batch {
                if let Some((envelope, bytes)) = events_left.next() {
                    insert_event.execute(params![
                        envelope.shard.0,
                        envelope.last_sequence() as i64,
                        envelope.hash.as_slice(),
                        bytes
                    ])?;
                } else if let Some((message, bytes)) = messages_left.next() {
                    insert_message.execute(params![
                        message.from.0,
                        message.to.0,
                        message.sequence as i64,
                        bytes
                    ])?;
                } else {
                    break;
                }
                in_batch += 1;
            }
            written += in_batch;
        }
        transaction.commit()?;
        checkpointer.nudge();
        transactions += 1;
    }
    let seconds = started.elapsed().as_secs_f64();
    let stored: i64 = connection.query_row("SELECT count(*) FROM records", [], |row| row.get(0))?;
    assert_eq!(stored as usize, events.len(), "every record row is stored");
    Ok(Measured {
        rows,
        transactions,
        seconds,
        row_bytes,
    })
}

fn main() -> ExitCode {
    let parameters = match parse() {
        Ok(parameters) => parameters,
        Err(message) => {
            eprintln!("sqlite-ceiling: {message}\n{USAGE}");
            return ExitCode::FAILURE;
        }
    };
    let (events, messages) = purchase_rows(&parameters);
    let directory = std::env::temp_dir().join(format!(
        "ledger-sqlite-ceiling-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|elapsed| elapsed.as_nanos())
            .unwrap_or(0)
    ));
    let measured = write_rows(&directory, &events, &messages, parameters.batch);
    let _ = std::fs::remove_dir_all(&directory);
    let measured = match measured {
        Ok(measured) => measured,
        Err(error) => {
            eprintln!("sqlite-ceiling: writing failed: {error}");
            return ExitCode::FAILURE;
        }
    };
    let purchases = parameters.purchases as f64;
    let rows_per_second = measured.rows as f64 / measured.seconds;
    let rows_per_purchase = measured.rows as f64 / purchases;
    let purchases_per_second = purchases / measured.seconds;
    let command: Vec<String> = std::env::args().collect();
    println!("command: {}", command.join(" "));
    println!(
        "rows of {} purchases on {} shards: {} records + {} messages = {:.2} rows per purchase, {} bytes",
        parameters.purchases,
        parameters.shards,
        events.len(),
        messages.len(),
        rows_per_purchase,
        measured.row_bytes
    );
    println!(
        "done: {} rows in {} transactions of up to {} rows in {:.3} s = {:.0} rows/s = {:.0} purchases/s (WAL, synchronous=FULL)",
        measured.rows,
        measured.transactions,
        parameters.batch,
        measured.seconds,
        rows_per_second,
        purchases_per_second
    );
    if let Some(path) = &parameters.json {
        let json = serde_json::json!({
            "rows_per_second": rows_per_second,
            "purchases_per_second": purchases_per_second,
            "rows_per_purchase": rows_per_purchase,
            "rows": measured.rows,
            "event_rows": events.len(),
            "message_rows": messages.len(),
            "purchases": parameters.purchases,
            "shards": parameters.shards,
            "transactions": measured.transactions,
            "seconds": measured.seconds,
            "batch_rows": parameters.batch,
            "row_bytes": measured.row_bytes,
            "journal_mode": "WAL",
            "synchronous": "FULL",
        });
        if let Err(error) = std::fs::write(path, format!("{json:#}\n")) {
            eprintln!("sqlite-ceiling: cannot write {}: {error}", path.display());
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
