//! Against a REAL broker (`scripts/infra up kafka && scripts/infra wait kafka`), behind the
//! `kafka-tests` feature:
//!
//! ```sh
//! env $(scripts/infra env) cargo test -p ledger-log-kafka --features kafka-tests
//! ```
//!
//! Every test uses its own topics and transactional ids (random suffix), so they run in
//! parallel on one broker.
#![cfg(feature = "kafka-tests")]

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ledger_core::codec::{self, BatchRecord, Entry, InputEntries, MessageEnvelope};
use ledger_core::{Account, Event, GrantId, ItemId, Message, Posting, PurchaseId, ShardId, UserId};
use ledger_log_kafka::rdkafka::config::ClientConfig;
use ledger_log_kafka::rdkafka::consumer::{BaseConsumer, Consumer};
use ledger_log_kafka::rdkafka::error::KafkaError;
use ledger_log_kafka::rdkafka::message::Message as _;
use ledger_log_kafka::rdkafka::producer::{
    BaseRecord, DefaultProducerContext, Producer, ThreadedProducer,
};
use ledger_log_kafka::rdkafka::{Offset, TopicPartitionList};
use ledger_log_kafka::{
    ChainCursor, ConsumedOffsets, EventLogReader, KafkaConfig, ReadError, ShardTransactionalWriter,
    TopicAdmin, TopicLayout, Topics, WriteError, BOOTSTRAP_ENV,
};

const TEST_BOUND: Duration = Duration::from_secs(150);
const READ_BOUND: Duration = Duration::from_secs(30);

fn config() -> KafkaConfig {
    KafkaConfig::from_env().unwrap_or_else(|| {
        panic!(
            "{BOOTSTRAP_ENV} is not set: these tests need a real Kafka broker. Start one with \
             `scripts/infra up kafka && scripts/infra wait kafka`, then run \
             `env $(scripts/infra env) cargo test -p ledger-log-kafka --features kafka-tests`"
        )
    })
}

/// A name no other test (or earlier run) uses.
fn unique(name: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos();
    format!(
        "lt-{name}-{}-{nanos}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Fresh topics for one test, created (twice: creation is idempotent) with `shards`
/// partitions, plus the transactional prefix to use.
async fn setup(name: &str, shards: u16) -> (KafkaConfig, Topics, String) {
    let config = config();
    let prefix = unique(name);
    let topics = Topics::with_prefix(&prefix);
    let admin = TopicAdmin::connect(&config).expect("admin client");
    let layout = TopicLayout::single_node(shards);
    admin
        .ensure_topics(&topics, layout)
        .await
        .expect("create topics");
    admin
        .ensure_topics(&topics, layout)
        .await
        .expect("creating the same topics again is a no-op");
    assert_eq!(
        admin.partition_count(&topics.events).await.unwrap(),
        i32::from(shards)
    );
    (config, topics, prefix)
}

async fn bounded<F: Future<Output = ()>>(test: F) {
    tokio::time::timeout(TEST_BOUND, test)
        .await
        .expect("test did not finish within its bound");
}

fn user(name: String) -> UserId {
    UserId::parse(name).unwrap()
}

/// `count` real, hash-chained records of one event each of `shard` continuing `from`:
/// alternately a grant and a buyer debit. `tag` makes contents (and so hashes) distinct
/// between batches.
fn chain(shard: ShardId, from: ChainCursor, count: usize, tag: &str) -> Vec<BatchRecord> {
    chain_of(shard, from, &vec![1; count], tag)
}

/// Hash-chained records of `shard` continuing `from`, holding `sizes[i]` events each
/// (one input per event, like a step of several commands).
fn chain_of(shard: ShardId, from: ChainCursor, sizes: &[usize], tag: &str) -> Vec<BatchRecord> {
    let mut cursor = from;
    let mut out = Vec::with_capacity(sizes.len());
    for &size in sizes {
        let first = cursor.next_sequence;
        let inputs = (first..first + size as u64)
            .map(|sequence| InputEntries {
                cause: format!("command:purchase:{tag}-{sequence}"),
                timestamp_ms: 1_800_000_000_000 + sequence,
                entries: vec![Entry::from_event(&event_at(sequence, tag))],
            })
            .collect();
        let record = BatchRecord::seal(shard, first, cursor.previous_hash, inputs);
        cursor = ChainCursor::after(&record);
        out.push(record);
    }
    out
}

/// The event at `sequence`: a grant at odd sequences, a buyer debit at even ones.
fn event_at(sequence: u64, tag: &str) -> Event {
    let buyer = user(format!("buyer-{tag}-{sequence}"));
    if sequence % 2 == 1 {
        Event::CurrencyGranted {
            grant_id: GrantId::parse(format!("grant-{tag}-{sequence}")).unwrap(),
            user_id: buyer.clone(),
            amount: 1_000,
            balance_after: 1_000,
            postings: vec![
                Posting::new(Account::Issuance, -1_000),
                Posting::new(Account::Wallet(buyer), 1_000),
            ],
        }
    } else {
        Event::BuyerDebited {
            purchase_id: PurchaseId::parse(format!("purchase-{tag}-{sequence}")).unwrap(),
            buyer_id: buyer.clone(),
            amount: 100,
            granted_items: vec![ItemId::parse("item-000001").unwrap()],
            balance_after: 900,
            at_ms: 1_800_000_000_000 + sequence,
            postings: vec![
                Posting::new(Account::Wallet(buyer), -100),
                Posting::new(Account::Clearing, 100),
            ],
        }
    }
}

fn messages(from: ShardId, to: ShardId, first: u64, count: u64, tag: &str) -> Vec<MessageEnvelope> {
    (first..first + count)
        .map(|sequence| MessageEnvelope {
            from,
            to,
            sequence,
            message: std::sync::Arc::new(Message::ReserveItem {
                purchase_id: PurchaseId::parse(format!("purchase-{tag}-{sequence}")).unwrap(),
                buyer_id: user(format!("buyer-{tag}-{sequence}")),
                item_id: ItemId::parse("item-000001").unwrap(),
                expected_price: 100,
                at_ms: 1_800_000_000_000,
            }),
        })
        .collect()
}

/// Every committed record of `shard`, from offset 0, chain verified from genesis.
async fn read_records(config: &KafkaConfig, topics: &Topics, shard: ShardId) -> Vec<BatchRecord> {
    let mut reader =
        EventLogReader::open(config, topics, shard, 0, Some(ChainCursor::genesis())).unwrap();
    let records = reader
        .read_to_end(READ_BOUND)
        .await
        .expect("read the records");
    let offsets: Vec<i64> = records.iter().map(|published| published.offset).collect();
    assert!(
        offsets.windows(2).all(|pair| pair[0] < pair[1]),
        "offsets ascend"
    );
    records
        .into_iter()
        .map(|published| published.record)
        .collect()
}

fn read_committed_consumer(config: &KafkaConfig, group: &str, isolation: &str) -> BaseConsumer {
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", &config.bootstrap)
        .set("group.id", group)
        .set("isolation.level", isolation)
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("auto.offset.reset", "earliest");
    client.create().expect("consumer")
}

/// Every committed message addressed to `to` (read_committed, blocking helper).
async fn read_messages(config: &KafkaConfig, topics: &Topics, to: ShardId) -> Vec<MessageEnvelope> {
    let consumer = read_committed_consumer(config, &unique("messages-reader"), "read_committed");
    let topic = topics.shard_messages.clone();
    tokio::task::spawn_blocking(move || {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&topic, i32::from(to.0), Offset::Beginning)
            .unwrap();
        consumer.assign(&tpl).unwrap();
        let mut out = Vec::new();
        let deadline = std::time::Instant::now() + READ_BOUND;
        loop {
            assert!(
                std::time::Instant::now() < deadline,
                "end of {topic} not reached"
            );
            match consumer.poll(Duration::from_millis(500)) {
                None => continue,
                Some(Err(KafkaError::PartitionEOF(_))) => return out,
                Some(Err(error)) => panic!("consuming {topic}: {error}"),
                Some(Ok(message)) => {
                    assert_eq!(message.key(), Some(to.0.to_string().as_bytes()));
                    let value = message.payload().expect("a message value");
                    out.push(codec::decode::<MessageEnvelope>("message", value).unwrap());
                }
            }
        }
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_of_a_hash_chained_batch_and_its_messages() {
    bounded(async {
        let (config, topics, prefix) = setup("roundtrip", 2).await;
        let shard = ShardId(0);
        let mut writer = ShardTransactionalWriter::connect(&config, &topics, &prefix, shard)
            .await
            .unwrap();
        assert_eq!(writer.transactional_id(), format!("{prefix}-engine-0"));

        // Records of one and of several events.
        let first = chain_of(shard, ChainCursor::genesis(), &[1, 3, 2, 1, 4], "a");
        assert_eq!(first[4].last_sequence(), 11);
        let sent = messages(shard, ShardId(1), 1, 2, "a");
        writer.commit_batch(&first, &sent, None).await.unwrap();
        let second = chain(shard, ChainCursor::after(first.last().unwrap()), 3, "b");
        writer.commit_batch(&second, &[], None).await.unwrap();

        let expected: Vec<BatchRecord> = first.iter().chain(&second).cloned().collect();
        assert_eq!(read_records(&config, &topics, shard).await, expected);
        for record in &expected {
            // Real events, decodable from what was read.
            for logged in record.logged() {
                logged.event().unwrap();
            }
        }
        assert_eq!(read_messages(&config, &topics, ShardId(1)).await, sent);
        assert!(read_records(&config, &topics, ShardId(1)).await.is_empty());

        // Resuming mid-log from a known chain position.
        let mut reader =
            EventLogReader::open(&config, &topics, shard, 0, Some(ChainCursor::genesis())).unwrap();
        let batch = reader.next_batch(5, READ_BOUND).await.unwrap();
        assert_eq!(batch.records.len(), 5);
        let resume_at = reader.next_offset();
        let cursor = reader.cursor().unwrap();
        assert_eq!(cursor, ChainCursor::after(&first[4]));
        assert_eq!(cursor.next_sequence, 12);
        let mut resumed =
            EventLogReader::open(&config, &topics, shard, resume_at, Some(cursor)).unwrap();
        let rest: Vec<BatchRecord> = resumed
            .read_to_end(READ_BOUND)
            .await
            .unwrap()
            .into_iter()
            .map(|published| published.record)
            .collect();
        assert_eq!(rest, second);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aborted_transactions_are_invisible_to_read_committed() {
    bounded(async {
        let (config, topics, prefix) = setup("abort", 2).await;
        let shard = ShardId(1);
        let mut writer = ShardTransactionalWriter::connect(&config, &topics, &prefix, shard)
            .await
            .unwrap();
        let committed = chain(shard, ChainCursor::genesis(), 3, "kept");
        writer.commit_batch(&committed, &[], None).await.unwrap();

        let after = ChainCursor::after(committed.last().unwrap());
        let doomed = chain(shard, after, 3, "doomed");
        let doomed_messages = messages(shard, ShardId(0), 1, 2, "doomed");
        let mut pending = writer.begin(&doomed, &doomed_messages, &[]).await.unwrap();
        assert_eq!(pending.records(), 5);
        pending.flush().await.unwrap(); // on the broker, uncommitted
        pending.abort().await.unwrap();

        // A dropped transaction is aborted before the next one begins.
        {
            let _dropped = writer.begin(&doomed, &[], &[]).await.unwrap();
        }

        let replacement = chain(shard, after, 3, "replacement");
        let replacement_messages = messages(shard, ShardId(0), 1, 1, "replacement");
        writer
            .commit_batch(&replacement, &replacement_messages, None)
            .await
            .unwrap();

        let read = read_records(&config, &topics, shard).await;
        let expected: Vec<BatchRecord> = committed.iter().chain(&replacement).cloned().collect();
        assert_eq!(read, expected);
        assert!(read.iter().all(|record| !doomed.contains(record)));
        assert_eq!(
            read_messages(&config, &topics, ShardId(0)).await,
            replacement_messages
        );
    })
    .await;
}

/// The takeover's sweep (`end_hanging_transactions`): one aborted transaction
/// over the shard's events partition and every messages and replies
/// partition. Nothing of it is ever visible to `read_committed` readers (an
/// empty record would fail to decode), it leaves the shard's partition
/// stable, and the writer goes on committing after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_takeover_sweep_is_invisible_and_leaves_the_partition_stable() {
    bounded(async {
        let (config, topics, prefix) = setup("sweep", 2).await;
        let shard = ShardId(1);
        let mut previous = ShardTransactionalWriter::connect(&config, &topics, &prefix, shard)
            .await
            .unwrap();
        let committed = chain(shard, ChainCursor::genesis(), 3, "kept");
        let committed_messages = messages(shard, ShardId(0), 1, 2, "kept");
        previous
            .commit_batch(&committed, &committed_messages, None)
            .await
            .unwrap();
        // The previous owner dies with a transaction open on the broker.
        let after = ChainCursor::after(committed.last().unwrap());
        let doomed = chain(shard, after, 2, "doomed");
        {
            // Neither committed nor aborted: the transaction stays open on the broker.
            let mut pending = previous.begin(&doomed, &[], &[]).await.unwrap();
            pending.flush().await.unwrap();
        }

        let mut owner = ShardTransactionalWriter::connect(&config, &topics, &prefix, shard)
            .await
            .unwrap();
        let touched = owner.end_hanging_transactions(None).await.unwrap();
        let admin = TopicAdmin::connect(&config).unwrap();
        let expected_touched = 1
            + admin.partition_count(&topics.shard_messages).await.unwrap()
            + admin.partition_count(&topics.replies).await.unwrap();
        assert_eq!(touched as i32, expected_touched);
        let (_, end) = ledger_log_kafka::wait_until_stable(&config, &topics, shard, READ_BOUND)
            .await
            .expect("no transaction stays open on the shard's partition");
        assert!(
            end > 3,
            "the partition holds the sweep's record and markers"
        );
        assert_eq!(
            ledger_log_kafka::last_record(&config, &topics, shard, READ_BOUND)
                .await
                .unwrap(),
            committed.last().cloned()
        );

        let next = chain(shard, after, 2, "next");
        owner.commit_batch(&next, &[], None).await.unwrap();
        let read = read_records(&config, &topics, shard).await;
        let expected: Vec<BatchRecord> = committed.iter().chain(&next).cloned().collect();
        assert_eq!(read, expected);
        assert_eq!(
            read_messages(&config, &topics, ShardId(0)).await,
            committed_messages
        );
        assert!(read_messages(&config, &topics, ShardId(1)).await.is_empty());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zombie_fencing() {
    bounded(async {
        let (config, topics, prefix) = setup("zombie", 1).await;
        let shard = ShardId(0);
        let mut zombie = ShardTransactionalWriter::connect(&config, &topics, &prefix, shard)
            .await
            .unwrap();
        let before = chain(shard, ChainCursor::genesis(), 2, "before");
        zombie.commit_batch(&before, &[], None).await.unwrap();

        // A begins a transaction and its records reach the broker…
        let after = ChainCursor::after(before.last().unwrap());
        let zombie_events = chain(shard, after, 3, "zombie");
        let zombie_messages = messages(shard, shard, 1, 1, "zombie");
        let mut pending = zombie
            .begin(&zombie_events, &zombie_messages, &[])
            .await
            .unwrap();
        pending.flush().await.unwrap();

        // …then B, with the same transactional id, initialises (fencing A and aborting
        // A's open transaction).
        let mut successor = ShardTransactionalWriter::connect(&config, &topics, &prefix, shard)
            .await
            .unwrap();
        assert_eq!(
            successor.transactional_id(),
            zombie_transactional_id(&prefix)
        );

        let error = pending
            .commit(None)
            .await
            .expect_err("the zombie must not commit");
        assert!(
            matches!(error, WriteError::Fenced { .. }),
            "expected Fenced, got {error:?}"
        );
        assert!(error.is_fenced() && error.must_stop());
        // The zombie stays fenced.
        let again = zombie
            .commit_batch(&zombie_events, &[], None)
            .await
            .unwrap_err();
        assert!(again.is_fenced(), "expected Fenced, got {again:?}");

        let successor_events = chain(shard, after, 2, "successor");
        let successor_messages = messages(shard, shard, 1, 1, "successor");
        successor
            .commit_batch(&successor_events, &successor_messages, None)
            .await
            .unwrap();

        let read = read_records(&config, &topics, shard).await;
        let expected: Vec<BatchRecord> = before.iter().chain(&successor_events).cloned().collect();
        assert_eq!(read, expected);
        assert!(read.iter().all(|record| !zombie_events.contains(record)));
        assert_eq!(
            read_messages(&config, &topics, shard).await,
            successor_messages
        );
    })
    .await;
}

fn zombie_transactional_id(prefix: &str) -> String {
    ledger_log_kafka::transactional_id(prefix, ShardId(0))
}

/// The committed offset of `group` on `topic`/0, as a fresh consumer of the group sees it.
async fn committed_offset(config: &KafkaConfig, group: &str, topic: &str) -> Offset {
    // read_uncommitted: asks without `require_stable`, so a pending transactional
    // commit is not waited for; it simply is not there yet.
    let consumer = read_committed_consumer(config, group, "read_uncommitted");
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&topic, 0);
        let committed = consumer
            .committed_offsets(tpl, Duration::from_secs(20))
            .expect("fetch committed offsets");
        committed.find_partition(&topic, 0).unwrap().offset()
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_sent_to_a_transaction_are_visible_only_once_it_commits() {
    bounded(async {
        let (config, topics, prefix) = setup("offsets", 1).await;
        let shard = ShardId(0);

        // Five commands on the input topic (plain, non-transactional producer).
        let input: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
            .set("bootstrap.servers", &config.bootstrap)
            .create()
            .unwrap();
        for index in 0..5 {
            let payload = format!("command-{index}");
            input
                .send(
                    BaseRecord::to(&topics.commands)
                        .partition(0)
                        .key("purchase:x")
                        .payload(payload.as_str()),
                )
                .map_err(|(error, _)| error)
                .unwrap();
        }
        let flushing = tokio::task::spawn_blocking(move || input.flush(Duration::from_secs(20)));
        flushing.await.unwrap().unwrap();

        // The engine's input consumer: group G, reads the five commands.
        let group = unique("engine-group");
        let consumer = read_committed_consumer(&config, &group, "read_committed");
        let commands = topics.commands.clone();
        let consumer = tokio::task::spawn_blocking(move || {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(&commands, 0, Offset::Beginning)
                .unwrap();
            consumer.assign(&tpl).unwrap();
            let mut seen = 0;
            while seen < 5 {
                match consumer.poll(Duration::from_secs(20)) {
                    Some(Ok(_)) => seen += 1,
                    Some(Err(KafkaError::PartitionEOF(_))) => {}
                    other => panic!("reading the commands: {other:?}"),
                }
            }
            consumer
        })
        .await
        .unwrap();
        let consumed = |next: i64| {
            ConsumedOffsets::new(
                consumer.group_metadata().expect("group metadata"),
                &[(topics.commands.as_str(), 0, next)],
            )
            .expect("valid offsets")
        };
        assert_eq!(
            committed_offset(&config, &group, &topics.commands).await,
            Offset::Invalid
        );

        let mut writer = ShardTransactionalWriter::connect(&config, &topics, &prefix, shard)
            .await
            .unwrap();

        // Offsets sent, transaction open: not visible; aborted: never visible.
        let aborted = chain(shard, ChainCursor::genesis(), 2, "aborted");
        let mut pending = writer.begin(&aborted, &[], &[]).await.unwrap();
        pending.send_offsets(consumed(3)).await.unwrap();
        pending.flush().await.unwrap();
        assert_eq!(
            committed_offset(&config, &group, &topics.commands).await,
            Offset::Invalid
        );
        pending.abort().await.unwrap();
        assert_eq!(
            committed_offset(&config, &group, &topics.commands).await,
            Offset::Invalid
        );

        // Committed with the batch: visible, exactly.
        let events = chain(shard, ChainCursor::genesis(), 2, "committed");
        writer
            .commit_batch(&events, &[], Some(consumed(5)))
            .await
            .unwrap();
        assert_eq!(
            committed_offset(&config, &group, &topics.commands).await,
            Offset::Offset(5)
        );
        assert_eq!(read_records(&config, &topics, shard).await, events);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reader_refuses_a_gap_or_a_broken_chain() {
    bounded(async {
        let (config, topics, prefix) = setup("gaps", 2).await;

        // Shard 0: events 1, 2, then 4 — event 3 is missing.
        let gap_shard = ShardId(0);
        let mut writer = ShardTransactionalWriter::connect(&config, &topics, &prefix, gap_shard)
            .await
            .unwrap();
        let events = chain(gap_shard, ChainCursor::genesis(), 4, "gap");
        let with_gap = [events[0].clone(), events[1].clone(), events[3].clone()];
        writer.commit_batch(&with_gap, &[], None).await.unwrap();
        let mut reader =
            EventLogReader::open(&config, &topics, gap_shard, 0, Some(ChainCursor::genesis()))
                .unwrap();
        match reader.read_to_end(READ_BOUND).await {
            Err(ReadError::SequenceGap {
                expected: 3,
                found: 4,
                ..
            }) => {}
            other => panic!("expected a sequence gap, got {other:?}"),
        }

        // Shard 1: event 2 does not link to event 1 (sealed over another history).
        let broken_shard = ShardId(1);
        let mut writer = ShardTransactionalWriter::connect(&config, &topics, &prefix, broken_shard)
            .await
            .unwrap();
        let first = chain(broken_shard, ChainCursor::genesis(), 1, "one");
        let foreign = chain(broken_shard, ChainCursor::genesis(), 2, "other");
        writer
            .commit_batch(&[first[0].clone(), foreign[1].clone()], &[], None)
            .await
            .unwrap();
        let mut reader = EventLogReader::open(
            &config,
            &topics,
            broken_shard,
            0,
            Some(ChainCursor::genesis()),
        )
        .unwrap();
        match reader.read_to_end(READ_BOUND).await {
            Err(ReadError::BrokenChain { sequence: 2, .. }) => {}
            other => panic!("expected a broken chain, got {other:?}"),
        }

        // A writer refuses records of another shard.
        let foreign_shard = chain(ShardId(0), ChainCursor::genesis(), 1, "foreign");
        let refused = writer
            .commit_batch(&foreign_shard, &[], None)
            .await
            .unwrap_err();
        assert!(
            matches!(refused, WriteError::ForeignRecord { .. }),
            "{refused:?}"
        );
    })
    .await;
}

/// A record must start right after the previous one: one that starts inside it
/// (an overlap) or repeats it is refused like a gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reader_refuses_an_overlapping_or_repeated_record() {
    bounded(async {
        let (config, topics, prefix) = setup("overlaps", 2).await;

        // Shard 0: events 1-3, then a record of events 3-5 linked to the first.
        let overlap_shard = ShardId(0);
        let mut writer =
            ShardTransactionalWriter::connect(&config, &topics, &prefix, overlap_shard)
                .await
                .unwrap();
        let first = chain_of(overlap_shard, ChainCursor::genesis(), &[3], "one");
        let overlapping = chain_of(
            overlap_shard,
            ChainCursor {
                next_sequence: 3,
                previous_hash: first[0].hash,
            },
            &[3],
            "other",
        );
        writer
            .commit_batch(&[first[0].clone(), overlapping[0].clone()], &[], None)
            .await
            .unwrap();
        let mut reader = EventLogReader::open(
            &config,
            &topics,
            overlap_shard,
            0,
            Some(ChainCursor::genesis()),
        )
        .unwrap();
        match reader.read_to_end(READ_BOUND).await {
            Err(ReadError::SequenceGap {
                expected: 4,
                found: 3,
                ..
            }) => {}
            other => panic!("expected an overlap to be refused, got {other:?}"),
        }

        // Shard 1: the same record of events 1-2 twice.
        let repeat_shard = ShardId(1);
        let mut writer = ShardTransactionalWriter::connect(&config, &topics, &prefix, repeat_shard)
            .await
            .unwrap();
        let record = chain_of(repeat_shard, ChainCursor::genesis(), &[2], "twice");
        writer
            .commit_batch(&[record[0].clone(), record[0].clone()], &[], None)
            .await
            .unwrap();
        let mut reader = EventLogReader::open(
            &config,
            &topics,
            repeat_shard,
            0,
            Some(ChainCursor::genesis()),
        )
        .unwrap();
        match reader.read_to_end(READ_BOUND).await {
            Err(ReadError::SequenceGap {
                expected: 3,
                found: 1,
                ..
            }) => {}
            other => panic!("expected a repeat to be refused, got {other:?}"),
        }
    })
    .await;
}
