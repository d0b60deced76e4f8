//! `ledger export`: an embedded data directory's postings (one row per
//! posting, NDJSON or CSV) and a manifest of each shard's head hash, or a
//! creator's sales report, for an auditor's spreadsheet or `sqlite3`.
//! Read-only; the server may be running (the export covers the log as of
//! the start of its read).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use audit::export::{Exporter, Manifest, POSTING_COLUMNS, SALE_COLUMNS};
use ledger_core::codec::BatchRecord;
use ledger_core::{ShardId, UserId};
use serde::Serialize;

/// How rows are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One JSON object per line.
    Ndjson,
    /// Comma-separated, with a header line.
    Csv,
}

/// What to export.
#[derive(Debug, Clone)]
pub struct ExportRequest {
    pub data_dir: PathBuf,
    pub format: Format,
    /// The rows' file; `None` for standard output.
    pub output: Option<PathBuf>,
    /// The manifest's file; by default `<output>.manifest.json` when rows go
    /// to a file, and none when they go to standard output.
    pub manifest: Option<PathBuf>,
    /// Export this creator's sales instead of the postings.
    pub creator_sales: Option<UserId>,
}

/// What was exported.
#[derive(Debug)]
pub struct Exported {
    pub manifest: Manifest,
    pub manifest_path: Option<PathBuf>,
    /// Rows written: postings, or sales.
    pub rows: u64,
}

/// Writes rows in one format.
enum RowWriter {
    Ndjson(Box<dyn Write>),
    Csv(Box<csv::Writer<Box<dyn Write>>>),
}

impl RowWriter {
    fn new(format: Format, sink: Box<dyn Write>, columns: &[&str]) -> Result<Self, String> {
        Ok(match format {
            Format::Ndjson => RowWriter::Ndjson(sink),
            Format::Csv => {
                let mut writer = csv::WriterBuilder::new()
                    .has_headers(false)
                    .from_writer(sink);
                writer
                    .write_record(columns)
                    .map_err(|error| format!("cannot write the csv header: {error}"))?;
                RowWriter::Csv(Box::new(writer))
            }
        })
    }

    fn write<T: Serialize>(&mut self, row: &T) -> Result<(), String> {
        match self {
            RowWriter::Ndjson(sink) => {
                serde_json::to_writer(&mut *sink, row)
                    .map_err(|error| format!("cannot write a row: {error}"))?;
                sink.write_all(b"\n")
                    .map_err(|error| format!("cannot write a row: {error}"))
            }
            RowWriter::Csv(writer) => writer
                .serialize(row)
                .map_err(|error| format!("cannot write a row: {error}")),
        }
    }

    fn finish(self) -> Result<(), String> {
        match self {
            RowWriter::Ndjson(mut sink) => sink.flush(),
            RowWriter::Csv(mut writer) => writer.flush(),
        }
        .map_err(|error| format!("cannot write the rows: {error}"))
    }
}

/// Exports `request.data_dir` as asked.
pub fn export(request: &ExportRequest) -> Result<Exported, String> {
    let sink: Box<dyn Write> = match &request.output {
        Some(path) => {
            Box::new(BufWriter::new(File::create(path).map_err(|error| {
                format!("cannot create {}: {error}", path.display())
            })?))
        }
        None => Box::new(BufWriter::new(std::io::stdout().lock())),
    };
    let columns: &[&str] = if request.creator_sales.is_some() {
        &SALE_COLUMNS
    } else {
        &POSTING_COLUMNS
    };
    let mut writer = RowWriter::new(request.format, sink, columns)?;
    let postings = request.creator_sales.is_none();
    let mut exporter = Exporter::new(request.creator_sales.clone());
    if let Some(count) = shard_count(&request.data_dir) {
        for shard in 0..count {
            exporter.expect_shard(ShardId(shard));
        }
    }
    // The first failure stops the export (a broken record, a full disk).
    let mut failure: Option<String> = None;
    let mut posting_rows: u64 = 0;
    let mut visit = |shard: u16, last_sequence: u64, bytes: &[u8]| {
        if failure.is_some() {
            return;
        }
        let record = match BatchRecord::from_bytes(bytes) {
            Ok(record) => record,
            Err(error) => {
                failure = Some(format!(
                    "the record of shard {shard} ending at {last_sequence} is unreadable \
                     ({error}); run `ledger verify`"
                ));
                return;
            }
        };
        exporter.record(&record, &mut |row| {
            if postings && failure.is_none() {
                posting_rows += 1;
                if let Err(error) = writer.write(&row) {
                    failure = Some(error);
                }
            }
        });
    };
    store_sqlite::log::read_log(
        &request.data_dir,
        store_sqlite::log::LogVisitor { record: &mut visit },
    )
    .map_err(|error| error.to_string())?;
    if let Some(failure) = failure {
        return Err(failure);
    }
    let (manifest, sales) = exporter.finish();
    let rows = if postings {
        posting_rows
    } else {
        for sale in &sales {
            writer.write(sale)?;
        }
        sales.len() as u64
    };
    writer.finish()?;
    let manifest_path = request.manifest.clone().or_else(|| {
        request
            .output
            .as_ref()
            .map(|output| manifest_beside(output))
    });
    if let Some(path) = &manifest_path {
        let text = serde_json::to_string_pretty(&manifest).expect("a manifest serializes");
        std::fs::write(path, text + "\n")
            .map_err(|error| format!("cannot write {}: {error}", path.display()))?;
    }
    Ok(Exported {
        manifest,
        manifest_path,
        rows,
    })
}

/// `<output>.manifest.json`.
fn manifest_beside(output: &Path) -> PathBuf {
    let mut name = output.as_os_str().to_owned();
    name.push(".manifest.json");
    PathBuf::from(name)
}

/// The directory's shard count, written by `serve`.
fn shard_count(data_dir: &Path) -> Option<u16> {
    std::fs::read_to_string(data_dir.join("shard-count"))
        .ok()
        .and_then(|text| text.trim().parse().ok())
}
