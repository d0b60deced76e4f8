//! Removes what a benchmark's distributed deployment left on the shared
//! Kafka and Cassandra: the topics of prefix NAME and the keyspace NAME
//! (`scripts/distributed-probe` and `BACKEND=distributed scripts/bench-reads`
//! give each run its own). Without it, a few dozen runs in one sitting fill
//! the test Cassandra's heap.
//!
//! ```sh
//! env $(scripts/infra env) target/release/distributed-cleanup probe123456789
//! ```
//!
//! Loopback brokers and contact points only (the ones `scripts/infra env`
//! prints); refuses a name that is not a plain lowercase identifier
//! (`store_cql::is_valid_keyspace_name`).

use std::process::ExitCode;

const USAGE: &str = "usage: distributed-cleanup NAME\n  deletes the Kafka topics of prefix NAME \
(LEDGER_KAFKA_BOOTSTRAP) and drops the CQL keyspace NAME (LEDGER_CQL_CONTACT); NAME: \
[a-z][a-z0-9_]{0,47}";

fn loopback(endpoints: &str) -> bool {
    endpoints
        .split(',')
        .map(str::trim)
        .all(|endpoint| endpoint.starts_with("127.0.0.1:") || endpoint.starts_with("localhost:"))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let arguments: Vec<String> = std::env::args().skip(1).collect();
    let [name] = arguments.as_slice() else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    if !store_cql::is_valid_keyspace_name(name) {
        eprintln!("distributed-cleanup: refusing name {name:?}\n{USAGE}");
        return ExitCode::from(2);
    }
    let bootstrap = std::env::var("LEDGER_KAFKA_BOOTSTRAP").unwrap_or_default();
    let contact = std::env::var("LEDGER_CQL_CONTACT").unwrap_or_default();
    if !loopback(&bootstrap) || !loopback(&contact) {
        eprintln!(
            "distributed-cleanup: LEDGER_KAFKA_BOOTSTRAP ({bootstrap:?}) and LEDGER_CQL_CONTACT \
             ({contact:?}) must be loopback endpoints"
        );
        return ExitCode::from(2);
    }
    let mut failed = false;
    match log_kafka::TopicAdmin::connect(&log_kafka::KafkaConfig::new(bootstrap)) {
        Ok(admin) => {
            if let Err(error) = admin
                .delete_topics(&log_kafka::Topics::with_prefix(name))
                .await
            {
                eprintln!("distributed-cleanup: deleting the topics of {name} failed: {error}");
                failed = true;
            }
        }
        Err(error) => {
            eprintln!("distributed-cleanup: cannot reach kafka: {error}");
            failed = true;
        }
    }
    let contact_points: Vec<String> = contact
        .split(',')
        .map(|point| point.trim().to_string())
        .collect();
    if let Err(error) = store_cql::drop_keyspace(&contact_points, name).await {
        eprintln!("distributed-cleanup: dropping the keyspace {name} failed: {error}");
        failed = true;
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_endpoints_are_cleaned() {
        assert!(loopback("127.0.0.1:19092"));
        assert!(loopback("127.0.0.1:19042, localhost:9042"));
        assert!(!loopback("10.0.0.5:9092"));
        assert!(!loopback(""));
    }
}
