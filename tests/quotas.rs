//! Client quotas the way users meet them: set with Kafka's AlterClientQuotas (raw frames:
//! neither confluent-kafka nor kafka-python has the quota APIs), the native API and the
//! `eventflow quota` CLI; listed with DescribeClientQuotas; kept across a kill -9; guarded
//! by the authorizer; and a greedy confluent-kafka producer held to its quota while another
//! producer on the same broker is not throttled at all.

mod common;

use std::process::{Command, Output};
use std::time::Duration;

use common::kafka_wire::KafkaConn;
use common::{ok, refused, Broker, ADMIN_PASSWORD};
use kafka_protocol::messages::alter_client_quotas_request::{EntityData, EntryData, OpData};
use kafka_protocol::messages::describe_client_quotas_request::ComponentData;
use kafka_protocol::messages::{
    AlterClientQuotasRequest, AlterClientQuotasResponse, ApiKey, DescribeClientQuotasRequest,
    DescribeClientQuotasResponse,
};
use kafka_protocol::protocol::StrBytes;

const INVALID_REQUEST: i16 = 42;
const CLUSTER_AUTHORIZATION_FAILED: i16 = 31;

fn entity(parts: &[(&str, Option<&str>)]) -> Vec<EntityData> {
    parts
        .iter()
        .map(|(kind, name)| {
            EntityData::default()
                .with_entity_type(StrBytes::from_string((*kind).into()))
                .with_entity_name(name.map(|n| StrBytes::from_string(n.into())))
        })
        .collect()
}

fn op(key: &str, value: f64, remove: bool) -> OpData {
    OpData::default()
        .with_key(StrBytes::from_string(key.into()))
        .with_value(value)
        .with_remove(remove)
}

/// Alters quotas with `entries` at `version`; returns each entry's error code.
fn alter(
    conn: &mut KafkaConn,
    version: i16,
    entries: Vec<EntryData>,
    validate_only: bool,
) -> Vec<i16> {
    let request = AlterClientQuotasRequest::default()
        .with_entries(entries)
        .with_validate_only(validate_only);
    let response: AlterClientQuotasResponse =
        conn.call(ApiKey::AlterClientQuotas, version, &request);
    response.entries.iter().map(|e| e.error_code).collect()
}

fn entry(parts: &[(&str, Option<&str>)], ops: Vec<OpData>) -> EntryData {
    EntryData::default()
        .with_entity(entity(parts))
        .with_ops(ops)
}

/// Describes with `components` (type, match type, name); returns the error code and the
/// entries as `type=name,…: key=value …` lines, sorted.
fn describe(
    conn: &mut KafkaConn,
    version: i16,
    components: &[(&str, i8, Option<&str>)],
    strict: bool,
) -> (i16, Vec<String>) {
    let request = DescribeClientQuotasRequest::default()
        .with_components(
            components
                .iter()
                .map(|(kind, match_type, name)| {
                    ComponentData::default()
                        .with_entity_type(StrBytes::from_string((*kind).into()))
                        .with_match_type(*match_type)
                        .with_match(name.map(|n| StrBytes::from_string(n.into())))
                })
                .collect(),
        )
        .with_strict(strict);
    let response: DescribeClientQuotasResponse =
        conn.call(ApiKey::DescribeClientQuotas, version, &request);
    let mut lines: Vec<String> = response
        .entries
        .unwrap_or_default()
        .iter()
        .map(|e| {
            let entity: Vec<String> = e
                .entity
                .iter()
                .map(|p| {
                    format!(
                        "{}={}",
                        p.entity_type.as_str(),
                        p.entity_name.as_ref().map_or("<default>", |n| n.as_str())
                    )
                })
                .collect();
            let values: Vec<String> = e
                .values
                .iter()
                .map(|v| format!("{}={}", v.key.as_str(), v.value))
                .collect();
            format!("{}: {}", entity.join(","), values.join(" "))
        })
        .collect();
    lines.sort();
    (response.error_code, lines)
}

/// Runs `eventflow ARGS` against `broker`, logged in as `login` (user, password) if given.
fn eventflow(broker: &Broker, login: Option<(&str, &str)>, args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_eventflow"));
    command
        .args(args)
        .env("EVENTFLOW_BOOTSTRAP", broker.addr.to_string())
        .env_remove("EVENTFLOW_SASL_USER")
        .env_remove("EVENTFLOW_SASL_PASSWORD");
    if let Some((user, password)) = login {
        command
            .env("EVENTFLOW_SASL_USER", user)
            .env("EVENTFLOW_SASL_PASSWORD", password);
    }
    common::run_with_stdin(command, "")
}

#[test]
fn kafka_quota_apis_and_the_cli_manage_one_durable_set() {
    let mut broker = Broker::start(&["--cores", "2"]);
    let mut conn = KafkaConn::open(broker.kafka.expect("kafka listener"));
    let errors = alter(
        &mut conn,
        1,
        vec![
            entry(
                &[("user", Some("alice"))],
                vec![op("producer_byte_rate", 1_048_576.0, false)],
            ),
            entry(
                &[("user", None), ("client-id", Some("etl"))],
                vec![
                    op("consumer_byte_rate", 2000.0, false),
                    op("request_percentage", 12.5, false),
                ],
            ),
            entry(
                &[("ip", Some("127.0.0.1"))],
                vec![op("producer_byte_rate", 1.0, false)],
            ),
            entry(&[("user", Some("bob"))], vec![op("bogus_rate", 1.0, false)]),
            entry(
                &[("user", Some("bob"))],
                vec![op("producer_byte_rate", -5.0, false)],
            ),
            entry(
                &[("user", Some("bob")), ("user", Some("carol"))],
                vec![op("producer_byte_rate", 1.0, false)],
            ),
        ],
        false,
    );
    assert_eq!(
        errors,
        [
            0,
            0,
            INVALID_REQUEST,
            INVALID_REQUEST,
            INVALID_REQUEST,
            INVALID_REQUEST
        ]
    );
    // validate_only checks and stores nothing.
    let errors = alter(
        &mut conn,
        0,
        vec![entry(
            &[("client-id", None)],
            vec![op("producer_byte_rate", 10.0, false)],
        )],
        true,
    );
    assert_eq!(errors, [0]);

    // Sorted, as `describe` sorts them; entity parts come user first.
    let everything = [
        "user=<default>,client-id=etl: consumer_byte_rate=2000 request_percentage=12.5".to_string(),
        "user=alice: producer_byte_rate=1048576".to_string(),
    ];
    for version in [0, 1] {
        assert_eq!(
            describe(&mut conn, version, &[], false),
            (0, everything.to_vec())
        );
    }
    // Exact user, strict: alice only. Any client id: the default user's etl entity.
    assert_eq!(
        describe(&mut conn, 1, &[("user", 0, Some("alice"))], true),
        (0, vec![everything[1].clone()])
    );
    assert_eq!(
        describe(&mut conn, 1, &[("client-id", 2, None)], false),
        (0, vec![everything[0].clone()])
    );
    assert_eq!(
        describe(&mut conn, 1, &[("user", 1, None)], true),
        (0, vec![])
    );
    assert_eq!(
        describe(&mut conn, 1, &[("user", 7, None)], false).0,
        INVALID_REQUEST
    );
    assert_eq!(
        describe(&mut conn, 1, &[("ip", 2, None)], false).0,
        INVALID_REQUEST
    );

    // The CLI sees and changes the same set.
    let listed = ok(eventflow(&broker, None, &["quota", "list"]));
    assert!(
        listed.contains("user=alice: producer_byte_rate=1048576"),
        "{listed}"
    );
    assert!(
        listed.contains(
            "user=<default>,client-id=etl: consumer_byte_rate=2000 request_percentage=12.5"
        ),
        "{listed}"
    );
    ok(eventflow(
        &broker,
        None,
        &[
            "quota",
            "set",
            "--client-id",
            "<default>",
            "--consumer-byte-rate",
            "4096",
        ],
    ));
    ok(eventflow(
        &broker,
        None,
        &[
            "quota",
            "remove",
            "--user",
            "alice",
            "--key",
            "producer_byte_rate",
        ],
    ));
    refused(
        eventflow(&broker, None, &["quota", "set", "--user", "bob"]),
        "name at least one limit",
    );
    refused(
        eventflow(
            &broker,
            None,
            &["quota", "set", "--producer-byte-rate", "5"],
        ),
        "give --user and/or --client-id",
    );
    refused(
        eventflow(
            &broker,
            None,
            &["quota", "remove", "--user", "bob", "--key", "nope"],
        ),
        "unknown or unsupported quota key",
    );
    let listed = ok(eventflow(
        &broker,
        None,
        &["quota", "list", "--client-id", "<default>"],
    ));
    assert_eq!(
        listed.trim(),
        "client-id=<default>: consumer_byte_rate=4096"
    );

    // A kill -9 keeps every acknowledged change.
    broker.kill9();
    broker.restart();
    let mut conn = KafkaConn::open(broker.kafka.expect("kafka listener"));
    let (error, lines) = describe(&mut conn, 1, &[], false);
    assert_eq!(error, 0);
    let mut expected = vec![
        "client-id=<default>: consumer_byte_rate=4096".to_string(),
        everything[0].clone(),
    ];
    expected.sort();
    assert_eq!(lines, expected);
    // Removing the last keys removes the entities.
    let errors = alter(
        &mut conn,
        1,
        vec![
            entry(
                &[("client-id", None)],
                vec![op("consumer_byte_rate", 0.0, true)],
            ),
            entry(
                &[("user", None), ("client-id", Some("etl"))],
                vec![
                    op("consumer_byte_rate", 0.0, true),
                    op("request_percentage", 0.0, true),
                ],
            ),
        ],
        false,
    );
    assert_eq!(errors, [0, 0]);
    assert_eq!(describe(&mut conn, 1, &[], false), (0, vec![]));
}

#[test]
fn managing_quotas_needs_alter_configs_and_listing_them_describe_configs() {
    let (broker, _secrets) =
        common::start_secured(&["--native-require-auth", "--authorizer", "on"]);
    let admin = Some(("admin", ADMIN_PASSWORD));
    let alice = Some(("alice", "alice-password"));
    let mut add_user = Command::new(env!("CARGO_BIN_EXE_eventflow"));
    add_user
        .args(["user", "add", "alice"])
        .env("EVENTFLOW_BOOTSTRAP", broker.addr.to_string())
        .env("EVENTFLOW_SASL_USER", "admin")
        .env("EVENTFLOW_SASL_PASSWORD", ADMIN_PASSWORD);
    ok(common::run_with_stdin(add_user, "alice-password\n"));
    ok(eventflow(
        &broker,
        admin,
        &[
            "quota",
            "set",
            "--user",
            "alice",
            "--producer-byte-rate",
            "1000",
        ],
    ));
    refused(
        eventflow(&broker, alice, &["quota", "list"]),
        "may not DescribeConfigs",
    );
    refused(
        eventflow(
            &broker,
            alice,
            &[
                "quota",
                "set",
                "--user",
                "alice",
                "--producer-byte-rate",
                "1e9",
            ],
        ),
        "may not AlterConfigs",
    );
    ok(eventflow(
        &broker,
        admin,
        &[
            "acl",
            "add",
            "--principal",
            "alice",
            "--cluster",
            "--operation",
            "DescribeConfigs",
        ],
    ));
    let listed = ok(eventflow(&broker, alice, &["quota", "list"]));
    assert_eq!(listed.trim(), "user=alice: producer_byte_rate=1000");
    refused(
        eventflow(&broker, alice, &["quota", "remove", "--user", "alice"]),
        "may not AlterConfigs",
    );
    ok(eventflow(
        &broker,
        admin,
        &[
            "acl",
            "add",
            "--principal",
            "alice",
            "--cluster",
            "--operation",
            "AlterConfigs",
        ],
    ));
    ok(eventflow(
        &broker,
        alice,
        &["quota", "remove", "--user", "alice"],
    ));
    assert_eq!(ok(eventflow(&broker, admin, &["quota", "list"])).trim(), "");

    // The Kafka listener (no authentication required there): the anonymous user has no ACL.
    let mut conn = KafkaConn::open(broker.kafka.expect("kafka listener"));
    let errors = alter(
        &mut conn,
        1,
        vec![entry(
            &[("user", None)],
            vec![op("producer_byte_rate", 1.0, false)],
        )],
        false,
    );
    assert_eq!(errors, [CLUSTER_AUTHORIZATION_FAILED]);
    assert_eq!(
        describe(&mut conn, 1, &[], false).0,
        CLUSTER_AUTHORIZATION_FAILED
    );
    assert_eq!(ok(eventflow(&broker, admin, &["quota", "list"])).trim(), "");
}

#[test]
fn a_greedy_producer_is_held_to_its_quota_while_another_keeps_its_rate() {
    if !common::confluent_kafka_available() {
        return;
    }
    // One shard: quotas are metered per shard, and both producers land on this one.
    let broker = Broker::start(&["--cores", "1"]);
    broker
        .client()
        .create_topic("quota-orders", 1, &[])
        .unwrap();
    const QUOTA: f64 = 256.0 * 1024.0;
    let mut conn = KafkaConn::open(broker.kafka.expect("kafka listener"));
    let errors = alter(
        &mut conn,
        1,
        vec![entry(
            &[("client-id", Some("greedy"))],
            vec![op("producer_byte_rate", QUOTA, false)],
        )],
        false,
    );
    assert_eq!(errors, [0]);

    let greedy_bytes = 1536 * 1024;
    let polite_bytes = 512 * 1024;
    let mut reports = Vec::new();
    let steps = common::run_client_script(
        &broker.data_dir,
        "quotas.py",
        &[
            &broker.kafka.unwrap().to_string(),
            "quota-orders",
            &greedy_bytes.to_string(),
            &polite_bytes.to_string(),
        ],
        Duration::from_secs(150),
        |step| {
            reports.push(step.clone());
            None
        },
    );
    assert_eq!(steps, ["greedy", "polite", "done"]);
    let (greedy, polite) = (&reports[0], &reports[1]);
    for r in [greedy, polite] {
        assert_eq!(r["errors"].as_array().unwrap().len(), 0, "{r}");
    }
    assert_eq!(greedy["bytes"].as_u64().unwrap(), greedy_bytes);
    assert_eq!(polite["bytes"].as_u64().unwrap(), polite_bytes);
    // The greedy producer was told (throttle_time_ms > 0 in its produce responses) and
    // held back: its rate over the run is at most twice its quota. Bounds from below only:
    // a loaded machine can make a run slower, never faster.
    assert!(greedy["throttles"].as_u64().unwrap() > 0, "{greedy}");
    let rate = greedy_bytes as f64 / greedy["seconds"].as_f64().unwrap();
    assert!(
        rate <= 2.0 * QUOTA,
        "greedy producer ran at {rate:.0} B/s: {greedy}"
    );
    // The other producer, on the same broker and shard at the same time, was never
    // throttled.
    assert_eq!(polite["throttles"].as_u64().unwrap(), 0, "{polite}");
    assert_eq!(polite["max_throttle_s"].as_f64().unwrap(), 0.0, "{polite}");
    // The metrics count the throttled responses.
    let metrics = common::http::get(broker.metrics.expect("metrics listener"), "/metrics").text();
    let count: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("eventflow_quota_throttle_seconds_count "))
        .unwrap_or_else(|| panic!("no throttle count in:\n{metrics}"))
        .trim()
        .parse()
        .unwrap();
    assert!(count >= 1.0, "{count}");
}

#[test]
fn a_native_producer_over_its_user_quota_is_held_back_and_others_are_not() {
    use eventflow::client::{Client, Credentials};
    use eventflow::protocol::api::Acks;
    let (broker, _secrets) = common::start_secured(&["--native-require-auth"]);
    let admin = Some(("admin", ADMIN_PASSWORD));
    for user in ["alice", "bob"] {
        let mut add = Command::new(env!("CARGO_BIN_EXE_eventflow"));
        add.args(["user", "add", user])
            .env("EVENTFLOW_BOOTSTRAP", broker.addr.to_string())
            .env("EVENTFLOW_SASL_USER", "admin")
            .env("EVENTFLOW_SASL_PASSWORD", ADMIN_PASSWORD);
        ok(common::run_with_stdin(add, &format!("{user}-password\n")));
    }
    ok(eventflow(
        &broker,
        admin,
        &["topic", "create", "native-orders"],
    ));
    const QUOTA: f64 = 128.0 * 1024.0;
    ok(eventflow(
        &broker,
        admin,
        &[
            "quota",
            "set",
            "--user",
            "alice",
            "--producer-byte-rate",
            &QUOTA.to_string(),
        ],
    ));
    let produce = |user: &str, total: usize| {
        let mut client = Client::connect(broker.addr).unwrap();
        client
            .authenticate(&Credentials::scram(user, &format!("{user}-password")))
            .unwrap();
        let started = std::time::Instant::now();
        let mut sent = 0;
        while sent < total {
            let batch = common::batch(user, 16, 1024, common::now_ms());
            sent += batch.len();
            client
                .produce("native-orders", 0, batch, Acks::Leader)
                .unwrap();
        }
        (sent, started.elapsed())
    };
    let bob = std::thread::scope(|s| {
        let bob = s.spawn(|| produce("bob", 256 * 1024));
        let (sent, took) = produce("alice", 640 * 1024);
        // Held back: at most twice the quota over the run (a bound from below on time).
        let rate = sent as f64 / took.as_secs_f64();
        assert!(rate <= 2.0 * QUOTA, "alice produced at {rate:.0} B/s");
        bob.join().unwrap()
    });
    assert!(bob.0 >= 256 * 1024);
    let metrics = common::http::get(broker.metrics.expect("metrics listener"), "/metrics").text();
    assert!(
        metrics.contains("eventflow_quota_throttle_seconds_count "),
        "{metrics}"
    );
}

fn fetch_request(topic: &str) -> kafka_protocol::messages::FetchRequest {
    use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
    use kafka_protocol::messages::{FetchRequest, TopicName};
    FetchRequest::default()
        .with_max_wait_ms(0)
        .with_min_bytes(1)
        .with_max_bytes(1 << 20)
        .with_session_epoch(-1)
        .with_topics(vec![FetchTopic::default()
            .with_topic(TopicName(StrBytes::from_string(topic.to_string())))
            .with_partitions(vec![FetchPartition::default()
                .with_partition(0)
                .with_fetch_offset(0)
                .with_partition_max_bytes(1 << 20)])])
}

#[test]
fn fetch_and_request_quotas_put_a_throttle_time_in_kafka_responses() {
    use eventflow::protocol::api::Acks;
    use kafka_protocol::messages::{FetchResponse, MetadataRequest, MetadataResponse};
    let broker = Broker::start(&["--cores", "1"]);
    let mut client = broker.client();
    client.create_topic("fetched", 1, &[]).unwrap();
    let batch = common::batch("f", 64, 1024, common::now_ms());
    let stored = batch.len();
    client.produce("fetched", 0, batch, Acks::Leader).unwrap();
    let mut conn = KafkaConn::open(broker.kafka.expect("kafka listener"));
    let fetch_bytes = |r: &FetchResponse| -> usize {
        r.responses
            .iter()
            .flat_map(|t| &t.partitions)
            .map(|p| p.records.as_ref().map_or(0, bytes::Bytes::len))
            .sum()
    };
    // A quota on another client id: not this one's.
    let set = |conn: &mut KafkaConn, client_id: &str, key: &str, value: f64| {
        let errors = alter(
            conn,
            1,
            vec![entry(
                &[("client-id", Some(client_id))],
                vec![op(key, value, false)],
            )],
            false,
        );
        assert_eq!(errors, [0]);
    };
    set(&mut conn, "someone-else", "consumer_byte_rate", 1024.0);
    let r: FetchResponse = conn.call(ApiKey::Fetch, 12, &fetch_request("fetched"));
    assert_eq!((r.throttle_time_ms, fetch_bytes(&r)), (0, stored));
    // This client's (the test connection's client id): 64 KiB against 32 KiB/s is about
    // two seconds too fast, at every version.
    set(
        &mut conn,
        "eventflow-test",
        "consumer_byte_rate",
        32.0 * 1024.0,
    );
    for version in [12, 4] {
        let r: FetchResponse = conn.call(ApiKey::Fetch, version, &fetch_request("fetched"));
        assert_eq!(fetch_bytes(&r), stored);
        assert!(r.throttle_time_ms > 0, "v{version}: {}", r.throttle_time_ms);
        assert!(
            r.throttle_time_ms <= 11_000,
            "v{version}: {}",
            r.throttle_time_ms
        );
    }

    // A request quota far below what one request takes: the next answer says so.
    let broker = Broker::start(&["--cores", "1"]);
    let mut conn = KafkaConn::open(broker.kafka.expect("kafka listener"));
    set(&mut conn, "eventflow-test", "request_percentage", 0.0001);
    let r: MetadataResponse = conn.call(ApiKey::Metadata, 9, &MetadataRequest::default());
    assert!(r.throttle_time_ms > 0, "{}", r.throttle_time_ms);
}
