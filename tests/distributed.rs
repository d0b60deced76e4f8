//! Failure and scaling scenarios of the distributed ledger, against the real
//! Kafka and CQL database (`scripts/infra`). Run by `scripts/test` with
//! `LEDGER_TEST_BACKEND=distributed`; skipped (with a message) otherwise.
//!
//! The API scenario suite itself (`tests/api.rs`) runs unchanged against
//! this backend too; what is here needs more than one engine or a projector
//! that dies.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use distributed::projector::{Projector, ProjectorSettings};
use ledger_cli::Settings;
use log_kafka::{KafkaConfig, Topics};
use marketplace_ledger::distributed::{cluster_settings, spawn_cluster, unique_name};
use marketplace_ledger::{distributed_backend, TempDir, TestApp, SECRET};
use projectors::ReadModels;
use read_models_cql::{CqlReadModels, ReadModelSettings};
use serde_json::json;
use tokio::task::JoinSet;

fn enabled(test: &str) -> bool {
    if distributed_backend() {
        return true;
    }
    eprintln!("{test}: skipped; set LEDGER_TEST_BACKEND=distributed (scripts/test does)");
    false
}

fn test_settings() -> (TempDir, Settings) {
    let directory = TempDir::new("ledger-distributed");
    let settings = Settings::for_tests(&directory.0, SECRET);
    (directory, settings)
}

async fn grant_all(app: &Arc<TestApp>, prefix: &str, count: usize, amount: i64) {
    let mut tasks = JoinSet::new();
    for index in 0..count {
        let app = app.clone();
        let prefix = prefix.to_string();
        tasks.spawn(async move {
            let answer = app
                .grant(
                    &format!("grant-{prefix}-{index}"),
                    &format!("{prefix}-{index}"),
                    amount,
                )
                .await;
            assert_eq!(answer.status, 201, "grant: {}", answer.text);
        });
    }
    while let Some(result) = tasks.join_next().await {
        result.expect("grant task");
    }
}

/// Two engine workers share the shards (the group gives each half); buyers
/// race through both command APIs for a Limited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limited_drop_with_two_engines_sells_exactly_the_supply() {
    if !enabled("limited_drop_with_two_engines_sells_exactly_the_supply") {
        return;
    }
    let (_directory, settings) = test_settings();
    let cluster = cluster_settings(&settings);
    let (app, command_urls) = spawn_cluster(&cluster, 2, true).await;
    assert_eq!(command_urls.len(), 2);
    let app = Arc::new(app);
    let second = Arc::new(TestApp::connect(
        command_urls[1].clone(),
        app.query_url.clone(),
        None,
        None,
        None,
    ));
    let answer = app
        .publish(json!({"item_id": "halo", "creator_id": "studio", "name": "Halo", "price": 40, "supply": 60, "resellable": true}))
        .await;
    assert_eq!(answer.status, 201, "{}", answer.text);
    grant_all(&app, "racer", 200, 100).await;

    let mut tasks = JoinSet::new();
    for request in 0..400 {
        let through = if request % 2 == 0 {
            app.clone()
        } else {
            second.clone()
        };
        tasks.spawn(async move {
            let buyer = format!("racer-{}", request % 200);
            through
                .purchase(&format!("race-{request}"), &buyer, "halo", 40)
                .await
        });
    }
    let mut serials = Vec::new();
    let mut sold_out = 0;
    while let Some(result) = tasks.join_next().await {
        let answer = result.expect("purchase task");
        match answer.status {
            201 => serials.push(answer.body["serial"].as_u64().expect("serial")),
            409 if answer.code() == "sold_out" => sold_out += 1,
            other => panic!("unexpected answer {other}: {}", answer.text),
        }
    }
    assert_eq!(serials.len(), 60, "exactly the supply is sold");
    assert_eq!(sold_out, 340);
    let unique: BTreeSet<u64> = serials.iter().copied().collect();
    assert_eq!(
        unique,
        (1..=60).collect::<BTreeSet<u64>>(),
        "serials 1..60, once each"
    );

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let owners = app.all_pages("/v1/items/halo/owners", "owners", None).await;
        if owners.len() == 60 {
            let holders: BTreeSet<u64> = owners
                .iter()
                .map(|owner| owner["serial"].as_u64().expect("serial"))
                .collect();
            assert_eq!(
                holders, unique,
                "the owners list has every sold serial once"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "owners never reached 60: {}",
            owners.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(second);
    Arc::try_unwrap(app)
        .ok()
        .expect("single owner")
        .stop()
        .await;
}

/// Every read the query API serves for these ids, as comparable text.
async fn read_everything(read_models: &dyn ReadModels, users: &[String], items: &[&str]) -> String {
    let mut out = String::new();
    for user in users {
        out.push_str(&format!(
            "{:?}\n",
            read_models.balance(user).await.expect("balance")
        ));
        out.push_str(&format!(
            "{:?}\n",
            read_models.earnings(user).await.expect("earnings")
        ));
        let inventory = read_models
            .inventory(user, 1_000, None)
            .await
            .expect("inventory");
        out.push_str(&format!("{:?}\n", inventory.entries));
        let transactions = read_models
            .transactions(user, 1_000, None)
            .await
            .expect("transactions");
        out.push_str(&format!("{:?}\n", transactions.entries));
    }
    for item in items {
        out.push_str(&format!(
            "{:?}\n",
            read_models.item(item).await.expect("item")
        ));
        let owners = read_models.owners(item, 1_000, None).await.expect("owners");
        out.push_str(&format!("{:?}\n", owners.entries));
        let listings = read_models
            .resale_listings(item, 1_000, None)
            .await
            .expect("listings");
        out.push_str(&format!("{:?}\n", listings.entries));
    }
    out
}

async fn wait_caught_up(read_models: &CqlReadModels, target: &[u64]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut done = true;
        for (shard, wanted) in target.iter().enumerate() {
            let next = read_models
                .next_sequence(ledger_core::ShardId(shard as u16))
                .await
                .expect("checkpoint");
            if next < *wanted {
                done = false;
            }
        }
        if done {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "projection never caught up with {target:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A projector killed mid-stream (no graceful stop: its batch may be half
/// written, its offsets uncommitted) and started again ends with read models
/// equal to a projection rebuilt from zero into a fresh keyspace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projector_killed_mid_stream_converges_to_a_rebuild() {
    if !enabled("projector_killed_mid_stream_converges_to_a_rebuild") {
        return;
    }
    let (_directory, settings) = test_settings();
    let cluster = cluster_settings(&settings);
    let kafka = KafkaConfig::new(cluster.kafka_bootstrap.clone());
    let topics = Topics::with_prefix(&cluster.topic_prefix);
    let contact: Vec<String> = cluster.cql_contact.split(',').map(String::from).collect();
    let (app, _) = spawn_cluster(&cluster, 1, false).await;
    let app = Arc::new(app);
    let live = CqlReadModels::connect(
        &contact,
        &cluster.cql_keyspace,
        ReadModelSettings::default(),
    )
    .await
    .expect("live read models");
    let projector_settings = ProjectorSettings::new(&cluster.topic_prefix);

    let answer = app
        .publish(json!({"item_id": "wing", "creator_id": "maker", "name": "Wing", "price": 30, "supply": 40, "resellable": true}))
        .await;
    assert_eq!(answer.status, 201, "{}", answer.text);
    let answer = app
        .publish(json!({"item_id": "cape", "creator_id": "maker", "name": "Cape", "price": 7}))
        .await;
    assert_eq!(answer.status, 201, "{}", answer.text);
    grant_all(&app, "flyer", 40, 200).await;

    // Purchases keep coming while the projector is killed and restarted.
    let buying = {
        let app = app.clone();
        tokio::spawn(async move {
            for round in 0..3 {
                let mut tasks = JoinSet::new();
                for buyer in 0..40 {
                    let app = app.clone();
                    tasks.spawn(async move {
                        let item = if (buyer + round) % 2 == 0 {
                            "wing"
                        } else {
                            "cape"
                        };
                        let price = if item == "wing" { 30 } else { 7 };
                        app.purchase(
                            &format!("p-{round}-{buyer}"),
                            &format!("flyer-{buyer}"),
                            item,
                            price,
                        )
                        .await
                    });
                }
                while let Some(result) = tasks.join_next().await {
                    let answer = result.expect("purchase task");
                    assert!(
                        answer.status == 201
                            || answer.code() == "sold_out"
                            || answer.code() == "already_owned",
                        "purchase: {} {}",
                        answer.status,
                        answer.text
                    );
                }
            }
        })
    };
    for _ in 0..3 {
        let projector = Projector::start(
            kafka.clone(),
            topics.clone(),
            live.clone(),
            projector_settings.clone(),
        )
        .await
        .expect("projector starts");
        tokio::time::sleep(Duration::from_millis(700)).await;
        projector.kill();
    }
    buying.await.expect("buyers finish");
    let projector = Projector::start(
        kafka.clone(),
        topics.clone(),
        live.clone(),
        projector_settings.clone(),
    )
    .await
    .expect("projector starts");

    // The log's end per shard: what both projections must reach.
    let mut ends = Vec::new();
    for shard in 0..cluster.shards {
        let last = log_kafka::last_record(
            &kafka,
            &topics,
            ledger_core::ShardId(shard),
            Duration::from_secs(30),
        )
        .await
        .expect("last record");
        ends.push(last.map_or(1, |record| record.next_sequence()));
    }
    wait_caught_up(&live, &ends).await;

    let rebuild_keyspace = unique_name();
    let rebuilt = CqlReadModels::connect(&contact, &rebuild_keyspace, ReadModelSettings::default())
        .await
        .expect("rebuild read models");
    let mut rebuild_settings = projector_settings.clone();
    rebuild_settings.group_id = format!("{}-rebuild", cluster.topic_prefix);
    let rebuilder = Projector::start(
        kafka.clone(),
        topics.clone(),
        rebuilt.clone(),
        rebuild_settings,
    )
    .await
    .expect("rebuild projector starts");
    wait_caught_up(&rebuilt, &ends).await;

    let mut users: Vec<String> = (0..40).map(|index| format!("flyer-{index}")).collect();
    users.push("maker".into());
    let items = ["wing", "cape"];
    let live_view = read_everything(live.as_ref(), &users, &items).await;
    let rebuilt_view = read_everything(rebuilt.as_ref(), &users, &items).await;
    assert!(
        live_view.contains("maker"),
        "the scenario produced read models"
    );
    assert_eq!(
        live_view, rebuilt_view,
        "killed-and-restarted projection equals a rebuild"
    );

    projector.shutdown().await;
    rebuilder.shutdown().await;
    marketplace_ledger::distributed::drop_keyspace(&cluster.cql_contact, &rebuild_keyspace).await;
    Arc::try_unwrap(app)
        .ok()
        .expect("single owner")
        .stop()
        .await;
}

/// A second engine joins while grants are in flight. The rebalance takes
/// every shard away and gives them back restored from CQL, where reply
/// addresses are not kept; grants the first owner started are finished by
/// the next one. Every caller must still get its answer (the command bus
/// sends a late command again, and the engine answers the repeat from the
/// stored outcome), and nothing may apply twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_are_answered_across_a_rebalance() {
    if !enabled("callers_are_answered_across_a_rebalance") {
        return;
    }
    let (_directory, settings) = test_settings();
    let cluster = cluster_settings(&settings);
    let (app, _) = spawn_cluster(&cluster, 1, true).await;
    let app = Arc::new(app);

    let senders = 24;
    let sending_for = Duration::from_secs(8);
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for sender in 0..senders {
        let app = app.clone();
        tasks.spawn(async move {
            let mut granted = Vec::new();
            let mut index = 0;
            while started.elapsed() < sending_for {
                let grant_id = format!("rebalance-{sender}-{index}");
                let user = format!("rebalancer-{sender}");
                let answer = app.grant(&grant_id, &user, 7).await;
                assert_eq!(answer.status, 201, "grant {grant_id}: {}", answer.text);
                granted.push((grant_id, answer.text));
                index += 1;
            }
            granted
        });
    }
    // Join while the grants flow: the group rebalances under them.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let joiner =
        ledger_cli::cluster::Service::build(ledger_cli::cluster::Role::CommandApi, cluster.clone())
            .await
            .expect("second command API starts");
    let stop_joiner = joiner.stopper();
    let joiner = tokio::spawn(joiner.run_until_stopped());

    let mut granted = Vec::new();
    while let Some(result) = tasks.join_next().await {
        granted.extend(result.expect("grant sender"));
    }
    assert!(
        granted.len() >= senders,
        "every sender granted at least once"
    );

    // Nothing applied twice: each wallet holds exactly its grants, and a
    // retry of any grant is answered with the first answer.
    let mut per_user = std::collections::BTreeMap::<String, i64>::new();
    for (grant_id, _) in &granted {
        let sender = grant_id.split('-').nth(1).expect("sender in the id");
        *per_user.entry(format!("rebalancer-{sender}")).or_default() += 7;
    }
    for (grant_id, text) in granted.iter().step_by(7) {
        let sender = grant_id.split('-').nth(1).expect("sender in the id");
        let again = app
            .grant(grant_id, &format!("rebalancer-{sender}"), 7)
            .await;
        assert_eq!(
            &again.text, text,
            "a retried grant returns the first answer"
        );
    }
    for (user, expected) in &per_user {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (balance, _) = app.balance(user, None).await;
            if balance == *expected {
                break;
            }
            assert!(
                balance <= *expected,
                "{user} holds {balance}, more than its grants {expected}"
            );
            assert!(
                Instant::now() < deadline,
                "{user} holds {balance}, expected {expected}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    let _ = stop_joiner.send(true);
    let _ = joiner.await;
    Arc::try_unwrap(app)
        .ok()
        .expect("single owner")
        .stop()
        .await;
}

/// The public stream is written exactly once across crashes: a second
/// publisher (its own transactional id, group and topic) is killed three
/// times under load, each time mid-stream, and started again; what
/// `read_committed` readers see of its topic has every event once (unique
/// `ce_id`s, one purchase event per purchase) and adds up to the balances.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_public_stream_is_exactly_once_across_publisher_crashes() {
    if !enabled("the_public_stream_is_exactly_once_across_publisher_crashes") {
        return;
    }
    use distributed::public::{PublicStreamPublisher, PublicStreamSettings};
    let (_directory, settings) = test_settings();
    let cluster = cluster_settings(&settings);
    let (app, _) = spawn_cluster(&cluster, 1, true).await;
    let app = Arc::new(app);
    let kafka = KafkaConfig::new(cluster.kafka_bootstrap.clone());
    let mut topics = Topics::with_prefix(&cluster.topic_prefix);
    topics.public = format!("{}.public-crash.v1", cluster.topic_prefix);
    log_kafka::TopicAdmin::connect(&kafka)
        .expect("admin client")
        .ensure_topics(
            &topics,
            log_kafka::TopicLayout {
                reply_partitions: cluster.reply_partitions,
                ..log_kafka::TopicLayout::single_node(cluster.shards)
            },
        )
        .await
        .expect("the crash test's public topic");
    let mut publisher_settings =
        PublicStreamSettings::new(&format!("{}-crash", cluster.topic_prefix));
    publisher_settings.batch_records_max = 7;
    let start = || {
        PublicStreamPublisher::start(
            kafka.clone(),
            topics.clone(),
            cluster.shards,
            publisher_settings.clone(),
        )
    };

    assert_eq!(
        app.publish(json!({"item_id": "mug", "creator_id": "potter", "name": "Mug", "price": 3}))
            .await
            .status,
        201
    );
    let buyers = 12;
    let rounds = 10;
    grant_all(&app, "drinker", buyers, 1_000).await;
    let mut publisher = start();
    let mut tasks = JoinSet::new();
    for buyer in 0..buyers {
        let app = app.clone();
        tasks.spawn(async move {
            for round in 0..rounds {
                let grant = app
                    .grant(
                        &format!("top-up-{buyer}-{round}"),
                        &format!("drinker-{buyer}"),
                        2,
                    )
                    .await;
                assert_eq!(grant.status, 201, "{}", grant.text);
            }
            let bought = app
                .purchase(
                    &format!("mug-{buyer}"),
                    &format!("drinker-{buyer}"),
                    "mug",
                    3,
                )
                .await;
            assert_eq!(bought.status, 201, "{}", bought.text);
        });
    }
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        publisher.kill();
        publisher = start();
    }
    while let Some(result) = tasks.join_next().await {
        result.expect("a buyer");
    }

    let mut users: Vec<String> = (0..buyers)
        .map(|buyer| format!("drinker-{buyer}"))
        .collect();
    users.push("potter".into());
    let deadline = Instant::now() + Duration::from_secs(60);
    let (events, balances) = loop {
        let mut balances = std::collections::BTreeMap::new();
        for user in &users {
            balances.insert(user.clone(), app.balance(user, None).await);
        }
        let (bootstrap, topic) = (cluster.kafka_bootstrap.clone(), topics.public.clone());
        let events = tokio::task::spawn_blocking(move || {
            marketplace_ledger::distributed::read_public_topic(&bootstrap, &topic)
        })
        .await
        .expect("the reader");
        let mut sums = std::collections::BTreeMap::<String, (i64, i64)>::new();
        for event in &events {
            for (field, wallet) in [("wallet_changes", true), ("pending_changes", false)] {
                for change in event.data[field].as_array().into_iter().flatten() {
                    let sum = sums
                        .entry(change["user_id"].as_str().unwrap().to_string())
                        .or_default();
                    let amount = change["amount"].as_i64().unwrap();
                    if wallet {
                        sum.0 += amount
                    } else {
                        sum.1 += amount
                    }
                }
            }
        }
        let purchases = events
            .iter()
            .filter(|event| event.event_type == "ledger.purchase_completed.v1")
            .count();
        if purchases >= buyers
            && users
                .iter()
                .all(|user| sums.get(user).copied().unwrap_or_default() == balances[user])
        {
            break (events, balances);
        }
        assert!(
            Instant::now() < deadline,
            "the restarted publisher never caught up: {purchases} purchases, sums {sums:?}, balances {balances:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    publisher.shutdown().await;
    let ids: BTreeSet<&str> = events.iter().map(|event| event.id.as_str()).collect();
    assert_eq!(ids.len(), events.len(), "no event published twice");
    let purchases = events
        .iter()
        .filter(|event| event.event_type == "ledger.purchase_completed.v1")
        .count();
    assert_eq!(purchases, buyers, "one event per completed purchase");
    let grants = events
        .iter()
        .filter(|event| event.event_type == "ledger.currency_granted.v1")
        .count();
    assert_eq!(grants, buyers * (rounds + 1), "every grant, once");
    assert_eq!(balances["drinker-0"].0, 1_000 + 2 * rounds as i64 - 3);

    let _ = log_kafka::TopicAdmin::connect(&kafka)
        .expect("admin client")
        .delete_topics(&topics)
        .await;
    Arc::try_unwrap(app)
        .ok()
        .expect("single owner")
        .stop()
        .await;
}
