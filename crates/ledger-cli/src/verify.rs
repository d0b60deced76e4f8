//! `ledger verify`: an auditor's check of an embedded data directory, from
//! its log alone (`ledger-audit`), then against its read models. Read-only;
//! the server may be running.

use std::collections::BTreeSet;
use std::io::IsTerminal;
use std::path::Path;

use audit::{Finding, Report, Verifier};
use ledger_core::{shard_for, ShardId, UserId};

/// A progress line on a terminal every this many records.
const PROGRESS_EVERY_RECORDS: u64 = 10_000;

/// The outcome: the report, with read-model comparisons added.
pub struct Verification {
    pub report: Report,
    pub records: u64,
    /// Whether the read models had caught up with the log, so their balances
    /// were compared (else they are behind and only the log was checked).
    pub read_models_compared: bool,
    pub balances_compared: u64,
    /// The comparison with a second copy of the log (the CQL tables), if made.
    pub copies: Option<CopiesCompared>,
}

/// How the Kafka and CQL copies of the log compared.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct CopiesCompared {
    /// Records present in both copies with the same checksum.
    pub identical_records: u64,
    /// Records in CQL beyond a shard's last published record: durable and
    /// not yet on Kafka (normal while an engine runs; a takeover publishes
    /// them).
    pub unpublished_records: u64,
}

/// Verifies the data directory `data_dir`.
pub fn verify(data_dir: &Path) -> Result<Verification, String> {
    let mut verifier = Verifier::new();
    // The directory's shard count (written by `serve`), so shards with an
    // empty log are listed and users are attributed to their shard.
    let shard_count: Option<u16> = std::fs::read_to_string(data_dir.join("shard-count"))
        .ok()
        .and_then(|text| text.trim().parse().ok());
    if let Some(count) = shard_count {
        verifier.expect_shards(count);
    }
    let progress = std::io::stderr().is_terminal();
    let mut visited: u64 = 0;
    let mut visit = |shard: u16, last_sequence: u64, bytes: &[u8]| {
        verifier.record_bytes(ShardId(shard), last_sequence, bytes);
        visited += 1;
        if progress && visited.is_multiple_of(PROGRESS_EVERY_RECORDS) {
            eprint!("\rverifying: {visited} records, shard {shard}");
        }
    };
    let (records, totals) = store_sqlite::log::read_log(
        data_dir,
        store_sqlite::log::LogVisitor { record: &mut visit },
    )
    .map_err(|error| error.to_string())?;
    if progress && records >= PROGRESS_EVERY_RECORDS {
        eprintln!();
    }
    let mut report = verifier.finish();
    let caught_up = report.shards.iter().all(|shard| {
        totals.checkpoints.get(&shard.shard).copied().unwrap_or(0) >= shard.last_sequence
    });
    let mut compared = 0;
    if caught_up {
        let shard_count = report
            .shards
            .iter()
            .map(|shard| shard.shard + 1)
            .max()
            .unwrap_or(1);
        let users: BTreeSet<String> = report
            .balances
            .keys()
            .map(|user| user.as_str().to_string())
            .chain(totals.balances.keys().cloned())
            .collect();
        for user in users {
            let from_log = UserId::parse(user.clone())
                .ok()
                .and_then(|id| report.balances.get(&id).copied())
                .unwrap_or((0, 0));
            let from_read_models = totals.balances.get(&user).copied().unwrap_or((0, 0));
            compared += 1;
            if from_log != from_read_models {
                report.add_finding(Finding {
                    shard: shard_for(&format!("user:{user}"), shard_count).0,
                    sequence: 0,
                    code: "read_model_mismatch",
                    detail: format!(
                        "user {user}: the log gives balance {} and pending {}, the read models {} and {}",
                        from_log.0, from_log.1, from_read_models.0, from_read_models.1
                    ),
                });
            }
        }
    }
    Ok(Verification {
        report,
        records,
        read_models_compared: caught_up,
        balances_compared: compared,
        copies: None,
    })
}

/// Longest wait for one partition of the events topic to be read to its end.
#[cfg(feature = "distributed")]
const KAFKA_PARTITION_READ_MAX: std::time::Duration = std::time::Duration::from_secs(300);

/// Verifies the `events` topic of a distributed ledger, every partition
/// (shard) from its first record, `read_committed`. The read models are not
/// compared here (`--balances` lists the log's balances for that).
#[cfg(feature = "distributed")]
pub fn verify_kafka(
    config: &log_kafka::KafkaConfig,
    topics: &log_kafka::Topics,
    cql: Option<&CqlCopy>,
) -> Result<Verification, String> {
    let topic = &topics.events;
    let partitions = log_kafka::partition_count(config, topic, std::time::Duration::from_secs(30))
        .map_err(|error| error.to_string())?;
    if partitions == 0 {
        return Err(format!("topic {topic} does not exist or has no partition"));
    }
    let mut verifier = Verifier::new();
    verifier.expect_shards(partitions as u16);
    let progress = std::io::stderr().is_terminal();
    let mut records: u64 = 0;
    let mut published = PublishedHeads::new();
    for partition in 0..partitions {
        let shard = ShardId(partition as u16);
        let mut visit = |offset: i64, bytes: &[u8]| {
            if let Some((last_sequence, hash)) =
                verifier.published_record_bytes(shard, offset, bytes)
            {
                published
                    .entry(shard)
                    .or_default()
                    .insert(last_sequence, hash);
            }
            records += 1;
            if progress && records.is_multiple_of(PROGRESS_EVERY_RECORDS) {
                eprint!("\rverifying: {records} records, shard {partition} offset {offset}");
            }
        };
        log_kafka::read_partition_bytes(
            config,
            topic,
            partition,
            KAFKA_PARTITION_READ_MAX,
            &mut visit,
        )
        .map_err(|error| error.to_string())?;
    }
    if progress && records >= PROGRESS_EVERY_RECORDS {
        eprintln!();
    }
    let mut findings = Vec::new();
    let copies = match cql {
        None => None,
        Some(cql) => Some(compare_with_cql(
            &mut verifier,
            &mut findings,
            &published,
            partitions as u16,
            cql,
        )?),
    };
    let mut report = verifier.finish();
    for finding in findings {
        report.add_finding(finding);
    }
    Ok(Verification {
        report,
        records,
        read_models_compared: false,
        balances_compared: 0,
        copies,
    })
}

/// Each shard's published records: last sequence → checksum.
#[cfg(feature = "distributed")]
type PublishedHeads =
    std::collections::BTreeMap<ShardId, std::collections::BTreeMap<u64, [u8; 32]>>;

/// Where the CQL copy of the log is (`ledger verify --kafka --cql`).
#[cfg(feature = "distributed")]
pub struct CqlCopy {
    pub contact_points: Vec<String>,
    pub keyspace: String,
}

/// Records read from CQL per request.
#[cfg(feature = "distributed")]
const CQL_PAGE_RECORDS: usize = 1_000;

/// Compares every shard's CQL records with the published ones: the same
/// record (by last sequence) must have the same checksum, and every
/// published record must be in CQL (the shard's source of truth). CQL may
/// hold records beyond the last published one (counted, not a finding):
/// they continue the shard's chain, so `verifier` checks them too — and
/// the messages they sent count as sent (a receiver may already have
/// consumed them: an engine answers and delivers locally before Kafka
/// publishes, and a killed engine's last batches wait in CQL for the
/// takeover to publish them).
#[cfg(feature = "distributed")]
fn compare_with_cql(
    verifier: &mut Verifier,
    findings: &mut Vec<Finding>,
    published: &PublishedHeads,
    shards: u16,
    cql: &CqlCopy,
) -> Result<CopiesCompared, String> {
    use engine::ports::EventStore;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| format!("cannot start a runtime for cql: {error}"))?;
    runtime.block_on(async {
        let store = store_cql::CqlStore::connect(
            &cql.contact_points,
            &cql.keyspace,
            store_cql::CqlSettings::default(),
        )
        .await
        .map_err(|error| format!("cannot open cql keyspace {}: {error}", cql.keyspace))?;
        let mut compared = CopiesCompared::default();
        let empty = std::collections::BTreeMap::new();
        for shard in (0..shards).map(ShardId) {
            let on_kafka = published.get(&shard).unwrap_or(&empty);
            let kafka_head = on_kafka.keys().next_back().copied().unwrap_or(0);
            let mut in_cql = std::collections::BTreeSet::new();
            let mut after = 0;
            loop {
                let page = store
                    .read_shard(shard, after, CQL_PAGE_RECORDS)
                    .await
                    .map_err(|error| format!("cannot read shard {shard} from cql: {error}"))?;
                let Some(last) = page.last() else {
                    break;
                };
                after = last.last_sequence();
                for record in &page {
                    let sequence = record.last_sequence();
                    in_cql.insert(sequence);
                    match on_kafka.get(&sequence) {
                        Some(hash) if *hash == record.hash => compared.identical_records += 1,
                        Some(hash) => findings.push(Finding {
                            shard: shard.0,
                            sequence,
                            code: "copies_differ",
                            detail: format!(
                                "the record ending at {sequence} has checksum {} in cql and {} on kafka",
                                audit::hex(&record.hash),
                                audit::hex(hash)
                            ),
                        }),
                        None if sequence > kafka_head => {
                            compared.unpublished_records += 1;
                            verifier.record(record);
                        }
                        None => findings.push(Finding {
                            shard: shard.0,
                            sequence,
                            code: "missing_on_kafka",
                            detail: format!(
                                "the record ending at {sequence} is in cql but not among the published records (up to {kafka_head})"
                            ),
                        }),
                    }
                }
            }
            for sequence in on_kafka.keys().filter(|sequence| !in_cql.contains(sequence)) {
                findings.push(Finding {
                    shard: shard.0,
                    sequence: *sequence,
                    code: "missing_in_cql",
                    detail: format!("the published record ending at {sequence} is not in cql"),
                });
            }
        }
        Ok(compared)
    })
}

/// The human summary.
pub fn summary(verification: &Verification) -> String {
    let report = &verification.report;
    let mut text = String::new();
    for shard in &report.shards {
        text.push_str(&format!(
            "shard {}: {} records, {} entries ({} events), last sequence {}, head {}\n",
            shard.shard,
            shard.records,
            shard.entries,
            shard.events,
            shard.last_sequence,
            shard.head_hash
        ));
    }
    let trial = &report.trial_balance;
    text.push_str(&format!(
        "messages: {} sent, {} consumed, {} in flight\n\
         trial balance: granted {} = wallets {} + pending {} + fees {} + clearing {} (sum of all accounts {})\n",
        report.messages_sent,
        report.messages_consumed,
        report.messages_in_flight,
        trial.granted,
        trial.wallets,
        trial.pending,
        trial.fees,
        trial.clearing,
        trial.total
    ));
    if verification.read_models_compared {
        text.push_str(&format!(
            "read models: {} users' balances compared with the log\n",
            verification.balances_compared
        ));
    } else {
        text.push_str(
            "read models: behind the log (the projector has not caught up); not compared\n",
        );
    }
    if let Some(copies) = &verification.copies {
        text.push_str(&format!(
            "cql copy: {} records identical to kafka's, {} not yet published\n",
            copies.identical_records, copies.unpublished_records
        ));
    }
    for finding in &report.findings {
        text.push_str(&format!(
            "finding: shard {} sequence {}: {}: {}\n",
            finding.shard, finding.sequence, finding.code, finding.detail
        ));
    }
    if report.is_clean() {
        text.push_str(&format!(
            "verified: {} records, no finding\n",
            verification.records
        ));
    } else {
        text.push_str(&format!(
            "NOT verified: {} finding(s) in {} records\n",
            report.finding_count, verification.records
        ));
    }
    text
}

/// The `--json` output; with `balances`, every user's balance and pending
/// amount as the log proves them.
pub fn json(verification: &Verification, balances: bool) -> serde_json::Value {
    let mut value = serde_json::json!({
        "verified": verification.report.is_clean(),
        "records": verification.records,
        "read_models_compared": verification.read_models_compared,
        "balances_compared": verification.balances_compared,
        "copies": verification.copies,
        "report": verification.report,
    });
    if balances {
        let users: serde_json::Map<String, serde_json::Value> = verification
            .report
            .balances
            .iter()
            .map(|(user, (balance, pending))| {
                (
                    user.to_string(),
                    serde_json::json!({"balance": balance, "pending": pending}),
                )
            })
            .collect();
        value["balances"] = serde_json::Value::Object(users);
    }
    value
}
