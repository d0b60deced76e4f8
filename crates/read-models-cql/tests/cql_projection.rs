//! The CQL read models against a real CQL database, compared query by query
//! with the embedded SQLite read models on a real event stream. Off by
//! default; run with
//!
//! ```sh
//! scripts/infra up cassandra && scripts/infra wait cassandra
//! env $(scripts/infra env) cargo test -p ledger-read-models-cql --features cql-tests
//! ```
//!
//! Every test uses its own fresh keyspace (so tests run in parallel against
//! one node) and drops it at the end, pass or fail. A failing interleaving
//! prints its seed; `READ_MODELS_SEED=<seed>` replays it.
#![cfg(feature = "cql-tests")]

#[allow(dead_code)]
mod scenario;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use ledger_core::codec::{BatchRecord, Entry, InputEntries, GENESIS_HASH};
use ledger_core::{DeliveryMark, Event, ReadPosition, ShardId, ShardPosition};
use ledger_read_models_cql::{CqlReadModelError, CqlReadModels, ReadModelSettings};
use projectors::{ReadError, ReadModels};

use scenario::{Scenario, SHARD_COUNT};

/// The contact points from `LEDGER_CQL_CONTACT` (comma-separated); fails
/// the test with instructions when it is unset.
fn contact_points() -> Vec<String> {
    match std::env::var("LEDGER_CQL_CONTACT") {
        Ok(value) if !value.trim().is_empty() => value
            .split(',')
            .map(|contact| contact.trim().to_string())
            .filter(|contact| !contact.is_empty())
            .collect(),
        _ => panic!(
            "LEDGER_CQL_CONTACT is not set: these tests need a real CQL database. Run \
             `scripts/infra up cassandra && scripts/infra wait cassandra`, then \
             `export $(scripts/infra env)` (or prefix the command with `env $(scripts/infra env)`)"
        ),
    }
}

/// A keyspace name no other test (or test run) uses.
fn unique_keyspace() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|duration| duration.subsec_nanos())
        .unwrap_or(0);
    format!(
        "read_models_test_{}_{}_{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

fn settings() -> ReadModelSettings {
    ReadModelSettings {
        shard_count: Some(SHARD_COUNT),
        ..ReadModelSettings::default()
    }
}

/// Runs `check` against read models in a fresh keyspace, then drops the
/// keyspace, pass or fail.
async fn with_read_models<Check, Checked>(check: Check)
where
    Check: FnOnce(Arc<CqlReadModels>) -> Checked,
    Checked: Future<Output = ()> + Send + 'static,
{
    let keyspace = unique_keyspace();
    let models = CqlReadModels::connect(&contact_points(), &keyspace, settings())
        .await
        .unwrap_or_else(|error| panic!("cql read models connect to keyspace {keyspace}: {error}"));
    let outcome = tokio::spawn(check(Arc::clone(&models))).await;
    let drop_keyspace = format!("DROP KEYSPACE IF EXISTS {keyspace}");
    if let Err(error) = models
        .session()
        .query_unpaged(drop_keyspace.as_str(), &[])
        .await
    {
        eprintln!("cannot drop test keyspace {keyspace}: {error}");
    }
    if let Err(error) = outcome {
        match error.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(error) => panic!("the check did not finish: {error}"),
        }
    }
}

/// Page sizes every listing is read with (0 is clamped to 1).
const PAGE_LIMITS: [usize; 5] = [0, 1, 2, 3, 1_000];

/// Every page of a listing, one report line per page.
macro_rules! all_pages {
    ($lines:expr, $label:expr, |$cursor:ident| $fetch:expr) => {{
        let label = $label;
        let mut $cursor: Option<String> = None;
        let mut page_number = 0;
        loop {
            let page = $fetch
                .await
                .unwrap_or_else(|error| panic!("{label} page {page_number}: {error}"));
            $lines.push(format!(
                "{label} page {page_number}: {:?} more={}",
                page.entries,
                page.next_cursor.is_some()
            ));
            page_number += 1;
            assert!(page_number < 10_000, "{label} never ends");
            match page.next_cursor {
                Some(next) => $cursor = Some(next),
                None => break,
            }
        }
    }};
}

/// Every query of the port, for every user, item and bundle of the
/// scenario (and unknown ones), every listing page by page with several page
/// sizes, and the coverage of every completion: one line per answer.
async fn report(read_models: &dyn ReadModels, scenario: &Scenario) -> Vec<String> {
    let mut lines = Vec::new();
    for user in &scenario.users {
        let user = user.as_str();
        let balance = read_models.balance(user).await.expect("balance read");
        lines.push(format!("balance {user}: {balance:?}"));
        let earnings = read_models.earnings(user).await.expect("earnings read");
        lines.push(format!("earnings {user}: {earnings:?}"));
        for limit in PAGE_LIMITS {
            all_pages!(lines, format!("inventory {user} limit {limit}"), |cursor| {
                read_models.inventory(user, limit, cursor.as_deref())
            });
            all_pages!(
                lines,
                format!("transactions {user} limit {limit}"),
                |cursor| read_models.transactions(user, limit, cursor.as_deref())
            );
        }
    }
    for item in &scenario.items {
        let item = item.as_str();
        let view = read_models.item(item).await.expect("item read");
        lines.push(format!("item {item}: {view:?}"));
        // The sales history: the days of the scenario, and days after them
        // (figures carried from before the range).
        let today = projectors::day_of(scenario_now_ms());
        for (from_day, to_day) in [(today - 2, today + 2), (today + 1, today + 3)] {
            let days = read_models
                .item_days(item, from_day, to_day)
                .await
                .expect("item history read");
            lines.push(format!("history {item} {from_day}..{to_day}: {days:?}"));
        }
        for limit in PAGE_LIMITS {
            all_pages!(lines, format!("listings {item} limit {limit}"), |cursor| {
                read_models.resale_listings(item, limit, cursor.as_deref())
            });
            all_pages!(lines, format!("owners {item} limit {limit}"), |cursor| {
                read_models.owners(item, limit, cursor.as_deref())
            });
        }
    }
    for bundle in &scenario.bundles {
        let view = read_models.bundle(bundle).await.expect("bundle read");
        lines.push(format!("bundle {bundle}: {view:?}"));
    }
    for (index, completion) in scenario.completions.iter().enumerate() {
        let covered = read_models
            .covers(&completion.read_position())
            .await
            .expect("coverage read");
        lines.push(format!("covers completion {index}: {covered}"));
    }
    lines
}

/// Now, in milliseconds since the epoch (the scenario's events are stamped
/// with the clock).
fn scenario_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_millis() as u64
}

fn assert_same_report(expected: &[String], actual: &[String], context: &str) {
    for (index, (expected, actual)) in expected.iter().zip(actual).enumerate() {
        assert_eq!(
            expected, actual,
            "{context}: line {index} differs (left: sqlite, right: cql)"
        );
    }
    assert_eq!(
        expected.len(),
        actual.len(),
        "{context}: the reports have different lengths"
    );
}

/// Applies each shard's whole log, shard after shard, in chunks of `chunk` records.
async fn apply_shard_by_shard(models: &CqlReadModels, scenario: &Scenario, chunk: usize) {
    for (shard, log) in scenario.records.iter().enumerate() {
        let shard = ShardId(shard as u16);
        for records in log.chunks(chunk) {
            models
                .apply(shard, records)
                .await
                .unwrap_or_else(|error| panic!("shard {shard} applies: {error}"));
        }
    }
}

async fn assert_fully_projected(models: &CqlReadModels, scenario: &Scenario) {
    for (shard, log) in scenario.records.iter().enumerate() {
        let last = log.last().map_or(0, BatchRecord::last_sequence);
        let next = models
            .next_sequence(ShardId(shard as u16))
            .await
            .expect("checkpoint read");
        assert_eq!(next, last + 1, "checkpoint of shard {shard}");
    }
}

/// SplitMix64: tiny, seedable and stable.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, bound: usize) -> usize {
        (self.next() % bound as u64) as usize
    }
    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
}

/// What `covers` must answer after a given projection progress: positions
/// need the checkpoint, delivery marks the `message_received` rows written
/// (also by a chunk that crashed before its checkpoint).
struct Progress {
    checkpoint_next: Vec<u64>,
    /// Index in its shard's log of the record the checkpoint expects next.
    next_record: Vec<usize>,
    written_through: Vec<u64>,
    /// (sender, receiver) → (receiver's event sequence, message sequence).
    receipts: BTreeMap<(u16, u16), Vec<(u64, u64)>>,
}

impl Progress {
    fn new(scenario: &Scenario) -> Self {
        let mut receipts: BTreeMap<(u16, u16), Vec<(u64, u64)>> = BTreeMap::new();
        for logged in scenario
            .records
            .iter()
            .flatten()
            .flat_map(BatchRecord::logged)
        {
            if let Event::MessageReceived { from, sequence } =
                logged.event().expect("stored events decode")
            {
                receipts
                    .entry((from.0, logged.shard.0))
                    .or_default()
                    .push((logged.sequence, sequence));
            }
        }
        Progress {
            checkpoint_next: vec![1; scenario.records.len()],
            next_record: vec![0; scenario.records.len()],
            written_through: vec![0; scenario.records.len()],
            receipts,
        }
    }

    fn expected_covers(&self, position: &ReadPosition) -> bool {
        let positions = position.positions.iter().all(|wanted| {
            wanted.sequence == 0 || wanted.sequence < self.checkpoint_next[wanted.shard.0 as usize]
        });
        let deliveries = position.deliveries.iter().all(|mark| {
            let consumed = self
                .receipts
                .get(&(mark.from.0, mark.to.0))
                .into_iter()
                .flatten()
                .filter(|(event, _)| *event <= self.written_through[mark.to.0 as usize])
                .map(|(_, message)| *message)
                .max()
                .unwrap_or(0);
            consumed >= mark.sequence
        });
        positions && deliveries
    }
}

/// Applies the shards' logs interleaved at random, in chunks of a random
/// number of records, redelivering earlier records now and then and
/// simulating crashes (the rows of part of a chunk written, its checkpoint
/// not); checks `covers` against the progress along the way.
async fn apply_interleaved(models: &CqlReadModels, scenario: &Scenario, seed: u64) {
    let mut random = Random(seed);
    let mut progress = Progress::new(scenario);
    let (mut redeliveries, mut crashes, mut steps) = (0, 0, 0);
    loop {
        let open: Vec<usize> = (0..scenario.records.len())
            .filter(|&shard| progress.next_record[shard] < scenario.records[shard].len())
            .collect();
        if open.is_empty() {
            break;
        }
        let shard = open[random.below(open.len())];
        let log = &scenario.records[shard];
        let next_index = progress.next_record[shard];
        assert_eq!(
            log[next_index].first_sequence, progress.checkpoint_next[shard],
            "seed {seed}: the checkpoint of shard {shard} ends a record"
        );
        let start = if random.chance(25) {
            redeliveries += 1;
            random.below(next_index + 1)
        } else {
            next_index
        };
        let end = (next_index + 1 + random.below(20)).min(log.len());
        let shard_id = ShardId(shard as u16);
        if random.chance(15) {
            crashes += 1;
            let crashed_end = next_index + 1 + random.below(end - next_index);
            models
                .apply_without_checkpoint(shard_id, &log[start..crashed_end])
                .await
                .unwrap_or_else(|error| panic!("seed {seed}: shard {shard} applies: {error}"));
            let through = log[crashed_end - 1].last_sequence();
            progress.written_through[shard] = progress.written_through[shard].max(through);
        } else {
            let mut delivery = log[start..end].to_vec();
            if random.chance(10) {
                // The same records twice in one delivery.
                delivery.extend_from_slice(&log[start..end]);
            }
            models
                .apply(shard_id, &delivery)
                .await
                .unwrap_or_else(|error| panic!("seed {seed}: shard {shard} applies: {error}"));
            let through = log[end - 1].last_sequence();
            progress.checkpoint_next[shard] = through + 1;
            progress.next_record[shard] = end;
            progress.written_through[shard] = progress.written_through[shard].max(through);
        }
        steps += 1;
        if steps % 7 == 0 {
            for (index, completion) in scenario.completions.iter().enumerate() {
                let position = completion.read_position();
                let covered = models.covers(&position).await.expect("coverage read");
                assert_eq!(
                    covered,
                    progress.expected_covers(&position),
                    "seed {seed}, step {steps}: coverage of completion {index} ({position:?})"
                );
            }
        }
    }
    assert!(steps > 10, "seed {seed}: only {steps} steps");
    eprintln!("seed {seed}: {steps} chunks, {redeliveries} redeliveries, {crashes} crashes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projections_in_any_shard_order_with_replays_answer_like_the_embedded_read_models() {
    let scenario = Arc::new(scenario::run().await);
    for (shard, log) in scenario.records.iter().enumerate() {
        let mut next = 1;
        for record in log {
            assert_eq!(record.first_sequence, next, "shard {shard} log");
            next = record.next_sequence();
        }
    }
    assert!(
        scenario
            .records
            .iter()
            .flatten()
            .any(|record| record.len() > 1),
        "some records hold several events"
    );
    let expected = Arc::new(report(scenario.read_models.as_ref(), &scenario).await);

    // Anchors: the comparison is only as good as what SQLite says.
    let hat = scenario
        .read_models
        .item("hat")
        .await
        .expect("item read")
        .expect("hat exists");
    assert_eq!((hat.sales_count, hat.sold), (4, 5));
    assert_eq!(hat.recent_average_price, Some(103));
    let crown = scenario
        .read_models
        .item("crown")
        .await
        .expect("item read")
        .expect("crown exists");
    assert_eq!(
        (crown.sold, crown.remaining, crown.sales_count),
        (4, Some(1), 6)
    );
    assert_eq!(crown.recent_average_price, Some(306));
    assert_eq!(crown.lowest_resale_price, Some(380));
    assert!(expected
        .iter()
        .all(|line| !line.starts_with("covers") || line.ends_with("true")));

    // (a) Shard by shard, then everything redelivered from the start.
    {
        let (scenario, expected) = (Arc::clone(&scenario), Arc::clone(&expected));
        with_read_models(|models| async move {
            let first = scenario
                .completions
                .iter()
                .find(|completion| !completion.positions.is_empty())
                .expect("a completion with positions");
            assert!(!models
                .covers(&first.read_position())
                .await
                .expect("coverage read"));
            apply_shard_by_shard(&models, &scenario, 25).await;
            assert_fully_projected(&models, &scenario).await;
            let actual = report(models.as_ref(), &scenario).await;
            assert_same_report(&expected, &actual, "shard by shard");
            apply_shard_by_shard(&models, &scenario, 40).await;
            let replayed = report(models.as_ref(), &scenario).await;
            assert_same_report(&expected, &replayed, "after a full redelivery");
        })
        .await;
    }

    // (b) Random interleavings, random chunks, redeliveries and crashes.
    let seed = std::env::var("READ_MODELS_SEED")
        .ok()
        .and_then(|seed| seed.parse::<u64>().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|duration| duration.as_nanos() as u64)
                .unwrap_or(7)
        });
    for seed in [seed, seed.wrapping_add(1)] {
        eprintln!("interleaving with READ_MODELS_SEED={seed}");
        let (scenario, expected) = (Arc::clone(&scenario), Arc::clone(&expected));
        with_read_models(move |models| async move {
            apply_interleaved(&models, &scenario, seed).await;
            assert_fully_projected(&models, &scenario).await;
            let actual = report(models.as_ref(), &scenario).await;
            assert_same_report(&expected, &actual, &format!("interleaving seed {seed}"));
        })
        .await;
    }
}

/// A record of `events` of `shard` from `sequence` (not chained: the read
/// models do not check the chain).
fn sealed_many(events: &[Event], shard: u16, sequence: u64) -> BatchRecord {
    let input = InputEntries {
        cause: "test".to_string(),
        timestamp_ms: 1_000,
        entries: events.iter().map(Entry::from_event).collect(),
    };
    BatchRecord::seal(ShardId(shard), sequence, GENESIS_HASH, vec![input])
}

fn sealed(event: &Event, shard: u16, sequence: u64) -> BatchRecord {
    sealed_many(std::slice::from_ref(event), shard, sequence)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_read_models_answer_zero_views_refuse_bad_cursors_and_gaps() {
    with_read_models(|models| async move {
        let balance = models.balance("nobody").await.expect("balance read");
        assert_eq!(
            (balance.user_id.as_str(), balance.balance, balance.pending),
            ("nobody", 0, 0)
        );
        let earnings = models.earnings("nobody").await.expect("earnings read");
        assert_eq!(
            (
                earnings.pending,
                earnings.released,
                earnings.lifetime,
                earnings.sales_count
            ),
            (0, 0, 0, 0)
        );
        assert_eq!(models.item("nothing").await, Ok(None));
        assert_eq!(models.bundle("nothing").await, Ok(None));
        let inventory = models
            .inventory("nobody", 10, None)
            .await
            .expect("inventory read");
        assert!(inventory.entries.is_empty() && inventory.next_cursor.is_none());
        let history = models
            .transactions("nobody", 10, None)
            .await
            .expect("transaction read");
        assert!(history.entries.is_empty() && history.next_cursor.is_none());
        let listings = models
            .resale_listings("nothing", 10, None)
            .await
            .expect("listing read");
        assert!(listings.entries.is_empty() && listings.next_cursor.is_none());
        let owners = models
            .owners("nothing", 10, None)
            .await
            .expect("owner read");
        assert!(owners.entries.is_empty() && owners.next_cursor.is_none());

        // Garbage, and cursors of another listing.
        let owners_cursor = ledger_read_models_cql::layout::encode_cursor("owners", &["3"]);
        let inventory_cursor =
            ledger_read_models_cql::layout::encode_cursor("inventory", &["hat", "0"]);
        for cursor in ["zz", "abc", "", owners_cursor.as_str()] {
            assert_eq!(
                models.inventory("nobody", 10, Some(cursor)).await,
                Err(ReadError::BadCursor),
                "{cursor}"
            );
            assert_eq!(
                models.transactions("nobody", 10, Some(cursor)).await,
                Err(ReadError::BadCursor),
                "{cursor}"
            );
            assert_eq!(
                models.resale_listings("nothing", 10, Some(cursor)).await,
                Err(ReadError::BadCursor),
                "{cursor}"
            );
        }
        assert_eq!(
            models
                .owners("nothing", 10, Some(inventory_cursor.as_str()))
                .await,
            Err(ReadError::BadCursor)
        );
        assert!(models
            .owners("nothing", 10, Some(owners_cursor.as_str()))
            .await
            .is_ok());

        // Coverage: sequence 0 and empty positions are always covered.
        assert_eq!(
            models.next_sequence(ShardId(0)).await.expect("checkpoint"),
            1
        );
        let at = |shard: u16, sequence: u64| ShardPosition {
            shard: ShardId(shard),
            sequence,
        };
        let mark = |sequence: u64| DeliveryMark {
            from: ShardId(1),
            to: ShardId(0),
            sequence,
        };
        let covers = |positions: Vec<ShardPosition>, deliveries: Vec<DeliveryMark>| {
            let models = Arc::clone(&models);
            async move {
                models
                    .covers(&ReadPosition {
                        positions,
                        deliveries,
                    })
                    .await
                    .expect("coverage read")
            }
        };
        assert!(covers(vec![], vec![]).await);
        assert!(covers(vec![at(0, 0)], vec![mark(0)]).await);
        assert!(!covers(vec![at(0, 1)], vec![]).await);
        assert!(!covers(vec![], vec![mark(1)]).await);

        // A gap before the first new event is refused, nothing is written.
        let received = |sequence| Event::MessageReceived {
            from: ShardId(1),
            sequence,
        };
        let second = sealed(&received(2), 0, 2);
        match models
            .apply(ShardId(0), std::slice::from_ref(&second))
            .await
        {
            Err(CqlReadModelError::SequenceGap {
                shard,
                expected,
                found,
            }) => {
                assert_eq!((shard, expected, found), (ShardId(0), 1, 2));
            }
            other => panic!("a gap is refused, got {other:?}"),
        }
        assert_eq!(
            models.next_sequence(ShardId(0)).await.expect("checkpoint"),
            1
        );

        let first = sealed(&received(1), 0, 1);
        let third = sealed(&received(3), 0, 3);
        // A gap after good events: refused as a whole.
        match models
            .apply(ShardId(0), &[first.clone(), third.clone()])
            .await
        {
            Err(CqlReadModelError::SequenceGap {
                shard,
                expected,
                found,
            }) => {
                assert_eq!((shard, expected, found), (ShardId(0), 2, 3));
            }
            other => panic!("a gap is refused, got {other:?}"),
        }
        assert_eq!(
            models.next_sequence(ShardId(0)).await.expect("checkpoint"),
            1
        );
        assert!(!covers(vec![], vec![mark(1)]).await);
        // Repeats inside one delivery are skipped.
        models
            .apply(
                ShardId(0),
                &[first.clone(), first.clone(), second.clone(), first.clone()],
            )
            .await
            .expect("consecutive events apply");
        assert_eq!(
            models.next_sequence(ShardId(0)).await.expect("checkpoint"),
            3
        );
        assert!(covers(vec![at(0, 2)], vec![mark(2)]).await);
        assert!(!covers(vec![at(0, 3)], vec![]).await);
        assert!(!covers(vec![], vec![mark(3)]).await);
        // Everything at or below the checkpoint is skipped.
        models
            .apply(ShardId(0), &[first, second])
            .await
            .expect("a redelivery applies");
        assert_eq!(
            models.next_sequence(ShardId(0)).await.expect("checkpoint"),
            3
        );
        // An older delivery mark never lowers the recorded one.
        assert!(covers(vec![], vec![mark(2)]).await);

        // A record starting below the checkpoint: only its events from the
        // checkpoint on are new; the checkpoint moves to its end.
        let straddling = sealed_many(&[received(2), received(3), received(4)], 0, 2);
        models
            .apply(ShardId(0), std::slice::from_ref(&straddling))
            .await
            .expect("a record across the checkpoint applies");
        assert_eq!(
            models.next_sequence(ShardId(0)).await.expect("checkpoint"),
            5
        );
        assert!(covers(vec![at(0, 4)], vec![mark(4)]).await);
        // A gap after a record of several events names where it should start.
        let late = sealed_many(&[received(7), received(8)], 0, 7);
        match models.apply(ShardId(0), &[straddling, late]).await {
            Err(CqlReadModelError::SequenceGap {
                shard,
                expected,
                found,
            }) => {
                assert_eq!((shard, expected, found), (ShardId(0), 5, 7));
            }
            other => panic!("a gap is refused, got {other:?}"),
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[should_panic(expected = "handed to the projection of shard 0")]
async fn records_of_another_shard_are_refused() {
    with_read_models(|models| async move {
        let record = sealed(
            &Event::MessageReceived {
                from: ShardId(0),
                sequence: 1,
            },
            1,
            1,
        );
        let _ = models.apply(ShardId(0), &[record]).await;
    })
    .await;
}
