//! A broker crash under Kafka clients: confluent-kafka's idempotent producer (acks=all) and
//! a committing group consumer keep going while `eventflowd --fsync always` is killed with
//! SIGKILL and started again on the same address (`tests/kafka_clients/restart.py`).
//! Nothing acknowledged is lost, nothing is stored twice, and no record whose commit was
//! acknowledged is delivered again. Skipped with a line saying so without python3 and
//! confluent-kafka, or failing when EVENTFLOW_REQUIRE_KAFKA_CLIENTS=1 (as in CI).

mod common;

use std::net::TcpListener;
use std::time::Duration;

use common::Broker;

#[test]
fn idempotent_producer_and_group_consumer_survive_a_kill_9() {
    if !common::confluent_kafka_available() {
        return;
    }
    // A fixed Kafka address, so the clients find the restarted broker where they left it;
    // below the kernel's ephemeral range, so no other process's bind to port 0 takes it
    // while the broker is down.
    let seed = std::process::id() as u16;
    let port = (0..2000u16)
        .map(|i| 20_000 + (seed.wrapping_add(i * 7)) % 12_000)
        .find(|&p| TcpListener::bind(("127.0.0.1", p)).is_ok())
        .expect("a free port below the ephemeral range");
    let kafka = format!("127.0.0.1:{port}");
    let mut broker = Broker::start(&[
        "--cores",
        "2",
        "--fsync",
        "always",
        "--kafka-listen",
        &kafka,
        "--group-initial-rebalance-delay-ms",
        "0",
    ]);
    assert_eq!(broker.kafka.map(|a| a.to_string()), Some(kafka.clone()));
    let mut crashes = 0;
    let steps = common::run_client_script(
        &broker.data_dir.clone(),
        "restart.py",
        &[&kafka, "payments", "ledger", "20000"],
        // Generous: the consumer commits every record with an fdatasync behind it, so on a
        // disk another process keeps busy the script takes minutes (it fails sooner by
        // itself if the consumer stops making progress).
        Duration::from_secs(480),
        |step| {
            if step["step"] != "crash-now" {
                return None;
            }
            broker.kill9();
            broker.restart();
            crashes += 1;
            Some("go on".into())
        },
    );
    assert_eq!(crashes, 1);
    assert_eq!(steps, ["crash-now", "produced", "stored-once", "consumed"]);
}
