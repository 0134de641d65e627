//! The HTTP API (`eventflowd --http-listen`) driven as a user drives it: real HTTP requests
//! against a real broker, records produced over HTTP read back with the client library and
//! the other way round, errors with their statuses, and every route of the OpenAPI document
//! walked with a valid request.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use common::http::{get, request, send_json};
use common::Broker;
use eventflow::client::consumer::{Consumer, ConsumerConfig, StartAt};
use eventflow::client::partitioner::partition_for_key;
use eventflow::client::producer::{Producer, ProducerConfig, Record};
use eventflow::client::queue::{ShareConsumer, ShareConsumerConfig};
use serde_json::{json, Value};

const DOCUMENT: &str = include_str!("../src/http_api/openapi.json");

fn http(broker: &Broker) -> SocketAddr {
    broker.http.expect("the broker serves HTTP")
}

fn topics(topic: &str) -> String {
    format!("/v3/clusters/eventflow/topics/{topic}")
}

/// Polls a consumer until it has returned `want` records (or 20 s passed).
fn poll_n(
    consumer: &mut Consumer,
    want: usize,
) -> Vec<eventflow::client::consumer::ConsumerRecord> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut out = Vec::new();
    while out.len() < want && Instant::now() < deadline {
        out.extend(consumer.poll(Duration::from_millis(200)).unwrap());
    }
    out
}

#[test]
fn records_produced_over_http_are_read_by_the_client_library() {
    let broker = Broker::start(&["--cores", "2"]);
    let h = http(&broker);
    let created = send_json(
        h,
        "POST",
        "/v3/clusters/eventflow/topics",
        &json!({ "topic_name": "orders", "partitions_count": 4 }),
    );
    assert_eq!(created.status, 201, "{}", created.text());
    assert_eq!(created.json()["partitions_count"], 4);

    // One record with a JSON value, a string key and a header; the key routes it.
    let one = send_json(
        h,
        "POST",
        &format!("{}/records", topics("orders")),
        &json!({
            "key": { "type": "STRING", "data": "alice" },
            "value": { "type": "JSON", "data": { "amount": 42 } },
            "headers": [{ "name": "source", "value": BASE64.encode("web") }],
        }),
    );
    assert_eq!(one.status, 200, "{}", one.text());
    let one = one.json();
    let partition = partition_for_key(b"alice", 4);
    assert_eq!(one["partition_id"], partition, "the key's partition");
    assert_eq!(one["offset"], 0);

    // Several at once: binary, explicit partition, a tombstone.
    let many = send_json(
        h,
        "POST",
        &format!("{}/records", topics("orders")),
        &json!({ "records": [
            { "partition_id": 3, "value": { "type": "BINARY", "data": BASE64.encode([0u8, 1, 2, 255]) } },
            { "partition_id": 3, "key": { "type": "STRING", "data": "gone" }, "value": null },
            { "partition_id": 3, "value": { "type": "STRING", "data": "third" } },
        ]}),
    );
    assert_eq!(many.status, 200, "{}", many.text());
    let offsets: Vec<i64> = many.json()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            assert_eq!(r["partition_id"], 3);
            r["offset"].as_i64().unwrap()
        })
        .collect();
    assert_eq!(offsets, [0, 1, 2], "offsets in request order");

    // The client library reads what HTTP stored, byte for byte.
    let mut consumer = Consumer::new(ConsumerConfig {
        bootstrap: broker.addr.to_string(),
        ..ConsumerConfig::default()
    })
    .unwrap();
    consumer
        .assign("orders", &[partition], StartAt::Earliest)
        .unwrap();
    let got = poll_n(&mut consumer, 1);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].key.as_deref(), Some(&b"alice"[..]));
    assert_eq!(got[0].value.as_deref(), Some(&br#"{"amount":42}"#[..]));
    assert_eq!(got[0].headers.len(), 1);
    assert_eq!(&got[0].headers[0].0[..], b"source");
    assert_eq!(got[0].headers[0].1.as_deref(), Some(&b"web"[..]));

    let mut consumer = Consumer::new(ConsumerConfig {
        bootstrap: broker.addr.to_string(),
        ..ConsumerConfig::default()
    })
    .unwrap();
    consumer.assign("orders", &[3], StartAt::Earliest).unwrap();
    let got = poll_n(&mut consumer, 3);
    let values: Vec<Option<&[u8]>> = got.iter().map(|r| r.value.as_deref()).collect();
    assert_eq!(
        values,
        [Some(&[0u8, 1, 2, 255][..]), None, Some(&b"third"[..])]
    );

    // And HTTP reads it back the same way.
    let read = get(
        h,
        &format!("{}/partitions/3/records?offset=0", topics("orders")),
    );
    assert_eq!(read.status, 200, "{}", read.text());
    let read = read.json();
    assert_eq!(read["high_watermark"], 3);
    assert_eq!(read["next_offset"], 3);
    let data = read["data"].as_array().unwrap();
    assert_eq!(
        data[0]["value"],
        json!({ "type": "BINARY", "data": "AAEC/w==" })
    );
    assert_eq!(data[1]["value"], Value::Null);
    assert_eq!(data[1]["key"], json!({ "type": "STRING", "data": "gone" }));
    assert_eq!(
        data[2]["value"],
        json!({ "type": "STRING", "data": "third" })
    );
}

#[test]
fn records_produced_by_the_client_library_are_read_over_http_in_bounded_pages() {
    let broker = Broker::start(&["--cores", "2"]);
    let h = http(&broker);
    broker.client().create_topic("events", 2, &[]).unwrap();
    let producer = Producer::new(ProducerConfig {
        bootstrap: broker.addr.to_string(),
        ..ProducerConfig::default()
    })
    .unwrap();
    let mut waits = Vec::new();
    for i in 0..250 {
        let value = format!("event-{i}");
        waits.push(
            producer
                .send(Record {
                    topic: "events",
                    partition: Some(1),
                    value: Some(value.as_bytes()),
                    headers: &[(b"n", Some(b"1"))],
                    ..Record::default()
                })
                .unwrap(),
        );
    }
    for w in waits {
        w.wait().unwrap();
    }

    // Pages of at most 100 records, each starting where the last one stopped.
    let mut offset = 0;
    let mut seen = Vec::new();
    loop {
        let page = get(
            h,
            &format!(
                "{}/partitions/1/records?offset={offset}&max_count=100",
                topics("events")
            ),
        );
        assert_eq!(page.status, 200, "{}", page.text());
        let page = page.json();
        let data = page["data"].as_array().unwrap().clone();
        assert!(data.len() <= 100);
        if data.is_empty() {
            break;
        }
        for r in &data {
            assert_eq!(r["offset"], seen.len() as i64);
            assert_eq!(r["headers"][0]["name"], "n");
            assert_eq!(r["headers"][0]["value"], BASE64.encode("1"));
            seen.push(r["value"]["data"].as_str().unwrap().to_string());
        }
        offset = page["next_offset"].as_i64().unwrap();
    }
    let expected: Vec<String> = (0..250).map(|i| format!("event-{i}")).collect();
    assert_eq!(seen, expected);

    // A byte bound smaller than one batch still returns that batch's records, no more
    // than max_count of them; format=binary gives base64.
    let page = get(
        h,
        &format!(
            "{}/partitions/1/records?offset=10&max_bytes=1&max_count=3&format=binary",
            topics("events")
        ),
    )
    .json();
    let data = page["data"].as_array().unwrap();
    assert_eq!(data.len(), 3);
    assert_eq!(data[0]["offset"], 10);
    assert_eq!(data[0]["value"]["type"], "BINARY");
    assert_eq!(data[0]["value"]["data"], BASE64.encode("event-10"));
    assert_eq!(page["next_offset"], 13);

    // The traffic counters: every record produced, and the bytes the pages fetched.
    let traffic = get(h, "/v3/clusters/eventflow/traffic");
    assert_eq!(traffic.status, 200, "{}", traffic.text());
    let traffic = traffic.json();
    let events = traffic["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["topic_name"] == "events")
        .expect("the topic's traffic")
        .clone();
    assert_eq!(events["produced_records_total"], 250);
    let produced = events["produced_bytes_total"].as_u64().unwrap();
    assert!(produced > 250 * 8, "{events}");
    assert!(
        events["fetched_bytes_total"].as_u64().unwrap() >= produced,
        "every batch was fetched at least once: {events}"
    );

    // Partitions show the offsets and sizes; the topic's config can be changed.
    let parts = get(h, &format!("{}/partitions", topics("events"))).json();
    assert_eq!(parts["data"][1]["log_end_offset"], 250);
    assert_eq!(parts["data"][0]["log_end_offset"], 0);
    assert!(parts["data"][1]["size_bytes"].as_u64().unwrap() > 0);
    let put = send_json(
        h,
        "PUT",
        &format!("{}/configs/retention.ms", topics("events")),
        &json!({ "value": "3600000" }),
    );
    assert_eq!(put.status, 204, "{}", put.text());
    let described = broker.client().describe_topic("events").unwrap();
    assert!(described
        .configs
        .contains(&("retention.ms".to_string(), "3600000".to_string())));
}

#[test]
fn consumer_group_lag_and_offset_reset() {
    let broker = Broker::start(&["--cores", "2"]);
    let h = http(&broker);
    let mut client = broker.client();
    client.create_topic("jobs", 2, &[]).unwrap();
    for p in 0..2 {
        client
            .produce(
                "jobs",
                p,
                common::batch("job", 10, 10, common::now_ms()),
                eventflow::protocol::api::Acks::All,
            )
            .unwrap();
    }
    client
        .commit_offsets("workers", None, &[("jobs", 0, 4), ("jobs", 1, 10)])
        .unwrap();
    let lags = get(h, "/v3/clusters/eventflow/consumer-groups/workers/lags").json();
    let rows: BTreeMap<i64, (i64, i64, i64)> = lags["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["partition_id"].as_i64().unwrap(),
                (
                    r["current_offset"].as_i64().unwrap(),
                    r["log_end_offset"].as_i64().unwrap(),
                    r["lag"].as_i64().unwrap(),
                ),
            )
        })
        .collect();
    assert_eq!(rows[&0], (4, 10, 6));
    assert_eq!(rows[&1], (10, 10, 0));
    let summary = get(
        h,
        "/v3/clusters/eventflow/consumer-groups/workers/lag-summary",
    )
    .json();
    assert_eq!(summary["total_lag"], 6);
    assert_eq!(summary["max_lag_partition_id"], 0);

    // Reset to the earliest offset: the client library sees the new commit.
    let reset = send_json(
        h,
        "POST",
        "/v3/clusters/eventflow/consumer-groups/workers/offsets:reset",
        &json!({ "topic_name": "jobs", "to": "earliest" }),
    );
    assert_eq!(reset.status, 200, "{}", reset.text());
    let committed = client.fetch_offsets("workers", &[]).unwrap();
    assert!(committed.iter().all(|(_, _, o)| *o == 0), "{committed:?}");
    let reset = send_json(
        h,
        "POST",
        "/v3/clusters/eventflow/consumer-groups/workers/offsets:reset",
        &json!({ "topic_name": "jobs", "to": "offset", "offset": 7, "partitions": [1] }),
    );
    assert_eq!(reset.status, 200, "{}", reset.text());
    assert_eq!(
        client.fetch_offsets("workers", &[("jobs", 1)]).unwrap(),
        [("jobs".to_string(), 1, 7)]
    );
    let listed = get(h, "/v3/clusters/eventflow/consumer-groups").json();
    assert_eq!(listed["data"][0]["consumer_group_id"], "workers");
    let deleted = request(
        h,
        "DELETE",
        "/v3/clusters/eventflow/consumer-groups/workers",
        None,
    );
    assert_eq!(deleted.status, 204, "{}", deleted.text());
    let gone = get(h, "/v3/clusters/eventflow/consumer-groups/workers");
    assert_eq!(gone.status, 404, "{}", gone.text());
}

/// Checks `status` and that the body is a JSON error with that status as `error_code`.
fn assert_error(answer: common::http::Answer, status: u16, what: &str) {
    assert_eq!(answer.status, status, "{what}: {}", answer.text());
    let body = answer.json();
    assert_eq!(body["error_code"], status, "{what}: {body}");
    assert!(
        !body["message"].as_str().unwrap_or_default().is_empty(),
        "{what}: {body}"
    );
}

#[test]
fn errors_are_json_with_the_right_status() {
    let broker = Broker::start(&["--cores", "1", "--http-max-body-bytes", "4096"]);
    let h = http(&broker);
    assert_eq!(get(h, "/health").status, 200);
    assert_eq!(get(h, "/ready").json()["status"], "ready");
    broker.client().create_topic("t", 1, &[]).unwrap();

    assert_error(get(h, &topics("missing")), 404, "unknown topic");
    assert_error(
        get(h, &format!("{}/partitions", topics("missing"))),
        404,
        "partitions of an unknown topic",
    );
    assert_error(
        send_json(
            h,
            "POST",
            &format!("{}/records", topics("missing")),
            &json!({ "value": { "data": 1 } }),
        ),
        404,
        "produce to an unknown topic",
    );
    assert_error(
        send_json(
            h,
            "POST",
            &format!("{}/records", topics("t")),
            &json!({ "partition_id": 5, "value": { "data": 1 } }),
        ),
        404,
        "produce to an unknown partition",
    );
    assert_error(
        get(h, &format!("{}/partitions/9", topics("t"))),
        404,
        "unknown partition",
    );
    assert_error(get(h, "/v3/clusters/other/topics"), 404, "unknown cluster");
    assert_error(
        get(h, "/v3/clusters/eventflow/consumer-groups/nobody"),
        404,
        "unknown group",
    );
    assert_error(get(h, "/v3/nothing-here"), 404, "unknown route");
    assert_error(
        send_json(
            h,
            "POST",
            "/v3/clusters/eventflow/topics",
            &json!({ "topic_name": "t" }),
        ),
        409,
        "topic exists",
    );
    assert_error(
        request(
            h,
            "POST",
            "/v3/clusters/eventflow/topics",
            Some(b"{not json"),
        ),
        400,
        "malformed JSON",
    );
    assert_error(
        send_json(
            h,
            "POST",
            "/v3/clusters/eventflow/topics",
            &json!({ "partitions_count": 1 }),
        ),
        400,
        "no topic name",
    );
    assert_error(
        send_json(
            h,
            "POST",
            &format!("{}/records", topics("t")),
            &json!({ "value": { "type": "BINARY", "data": "not base64!" } }),
        ),
        400,
        "bad base64",
    );
    assert_error(
        get(h, &format!("{}/partitions/zero/records", topics("t"))),
        400,
        "partition not a number",
    );
    assert_error(
        get(
            h,
            &format!("{}/partitions/0/records?max_count=0", topics("t")),
        ),
        400,
        "max_count out of range",
    );
    assert_error(
        get(
            h,
            &format!("{}/partitions/0/records?offset=99", topics("t")),
        ),
        400,
        "offset past the end",
    );
    assert_error(
        send_json(
            h,
            "POST",
            &format!("{}/configs:alter", topics("t")),
            &json!({ "data": [{ "name": "retention.ms", "value": "soon" }] }),
        ),
        400,
        "bad config value",
    );
    assert_error(
        request(h, "PATCH", &topics("t"), None),
        405,
        "method not allowed",
    );
    // A body over --http-max-body-bytes: 413, and nothing is stored.
    let big = json!({ "value": { "type": "STRING", "data": "x".repeat(8000) } });
    assert_error(
        send_json(h, "POST", &format!("{}/records", topics("t")), &big),
        413,
        "body over the bound",
    );
    assert_eq!(
        broker.client().describe_topic("t").unwrap().partitions[0].high_watermark,
        0
    );
    // A record batch over the broker's --max-batch-bytes is the broker's 413.
    let broker = Broker::start(&["--cores", "1", "--max-batch-bytes", "1024"]);
    let h = http(&broker);
    broker.client().create_topic("t", 1, &[]).unwrap();
    let big = json!({ "value": { "type": "STRING", "data": "x".repeat(4000) } });
    assert_error(
        send_json(h, "POST", &format!("{}/records", topics("t")), &big),
        413,
        "batch over --max-batch-bytes",
    );
}

#[test]
fn no_http_opens_no_listener() {
    let broker = Broker::start(&["--cores", "1", "--no-http"]);
    assert!(broker.http.is_none());
    assert!(broker.client().list_topics().is_ok());
}

/// `schema` with its `$ref` followed.
fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    match schema["$ref"].as_str() {
        Some(r) => {
            let name = r.rsplit('/').next().unwrap();
            let kind = if r.contains("/parameters/") {
                "parameters"
            } else {
                "schemas"
            };
            resolve(doc, &doc["components"][kind][name])
        }
        None => schema,
    }
}

/// Every field the schema requires is in `value`, recursively through properties and
/// array items.
fn check_fields(doc: &Value, schema: &Value, value: &Value, at: &str) {
    let schema = resolve(doc, schema);
    if value.is_null() {
        assert!(
            schema["nullable"] == true,
            "{at}: null where the document says no"
        );
        return;
    }
    if let Some(required) = schema["required"].as_array() {
        for field in required {
            let field = field.as_str().unwrap();
            assert!(value.get(field).is_some(), "{at}: no `{field}` in {value}");
        }
    }
    if let Some(items) = schema.get("items") {
        for (i, item) in value.as_array().expect("an array").iter().enumerate() {
            check_fields(doc, items, item, &format!("{at}[{i}]"));
        }
    }
    if let Some(props) = schema["properties"].as_object() {
        for (name, sub) in props {
            if let Some(v) = value.get(name) {
                if !v.is_null() || resolve(doc, sub)["nullable"] == true {
                    check_fields(doc, sub, v, &format!("{at}.{name}"));
                }
            }
        }
    }
}

#[test]
fn every_route_of_the_openapi_document_answers_as_documented() {
    let broker = Broker::start(&["--cores", "2"]);
    let h = http(&broker);
    let served = get(h, "/openapi.json");
    assert_eq!(served.status, 200);
    let doc = served.json();
    assert_eq!(doc, serde_json::from_str::<Value>(DOCUMENT).unwrap());
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));

    // Every operation, in an order that makes each valid: create and fill the topic
    // first, delete last.
    let mut ops: Vec<(u8, String, String, Value)> = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            if method == "parameters" {
                continue;
            }
            let rank = match op["operationId"].as_str().unwrap() {
                "createTopic" => 0,
                "produceRecords" => 1,
                "deleteConsumerGroup" => 8,
                "deleteTopic" => 9,
                _ => 5,
            };
            ops.push((rank, path.clone(), method.clone(), op.clone()));
        }
    }
    ops.sort_by(|a, b| (a.0, &a.1, &a.2).cmp(&(b.0, &b.1, &b.2)));
    assert!(ops.len() >= 29, "{} operations", ops.len());
    let mut share: Option<ShareConsumer> = None;
    let mut walked = 0;
    for (rank, path, method, op) in &ops {
        if *rank == 5 && share.is_none() {
            // The groups the examples name: `billing` with committed offsets, `workers`
            // a share group that has taken records.
            broker
                .client()
                .commit_offsets("billing", None, &[("orders", 0, 0)])
                .unwrap();
            let mut config = ShareConsumerConfig::new("workers");
            config.bootstrap = broker.addr.to_string();
            let mut consumer = ShareConsumer::new(config, &["orders"]).unwrap();
            let deadline = Instant::now() + Duration::from_secs(20);
            while consumer
                .poll(Duration::from_millis(200))
                .unwrap()
                .is_empty()
            {
                assert!(Instant::now() < deadline, "the share group took nothing");
            }
            share = Some(consumer);
        }
        // The path's parameters from their examples; query parameters too.
        let mut url = path.clone();
        let mut query = Vec::new();
        let params = doc["paths"][path]["parameters"]
            .as_array()
            .into_iter()
            .flatten()
            .chain(op["parameters"].as_array().into_iter().flatten());
        for p in params {
            let p = resolve(&doc, p);
            let example = match &p["example"] {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            let name = p["name"].as_str().unwrap();
            match p["in"].as_str().unwrap() {
                "path" => url = url.replace(&format!("{{{name}}}"), &example),
                "query" => query.push(format!("{name}={example}")),
                other => panic!("parameter in {other}"),
            }
        }
        assert!(
            !url.contains('{'),
            "{url}: a path parameter without example"
        );
        if !query.is_empty() {
            url = format!("{url}?{}", query.join("&"));
        }
        let body = op["requestBody"]["content"]["application/json"]["example"].clone();
        let answer = if body.is_null() {
            request(h, &method.to_uppercase(), &url, None)
        } else {
            send_json(h, &method.to_uppercase(), &url, &body)
        };
        let (status, response) = op["responses"]
            .as_object()
            .unwrap()
            .iter()
            .find(|(s, _)| s.starts_with('2'))
            .expect("a success response");
        assert_eq!(
            answer.status.to_string(),
            *status,
            "{} {url}: {}",
            method.to_uppercase(),
            answer.text()
        );
        match response["content"]
            .as_object()
            .and_then(|c| c.iter().next())
        {
            Some((kind, content)) if kind == "application/json" => {
                assert!(answer.content_type.starts_with("application/json"), "{url}");
                check_fields(&doc, &content["schema"], &answer.json(), &url);
            }
            Some((kind, _)) => {
                assert!(
                    answer.content_type.starts_with(kind.as_str()),
                    "{url}: {}",
                    answer.content_type
                );
                assert!(answer.text().contains("<canvas"), "{url}: the console page");
            }
            None => assert!(answer.body.is_empty(), "{url}: {}", answer.text()),
        }
        walked += 1;
    }
    assert_eq!(walked, ops.len());
    drop(share);
    // What the walk did is what the broker did: the topic it created is gone again.
    assert_eq!(get(h, &topics("orders")).status, 404);
}

#[test]
fn ready_says_503_until_the_broker_serves_and_again_once_it_stops() {
    // The listener as eventflowd runs it: bound before the shards recover, told when they
    // serve and when a stop signal arrives.
    let api =
        eventflow::http_api::HttpApi::start("127.0.0.1:0".parse().unwrap(), 1 << 20, None).unwrap();
    let h = api.addr();
    assert_eq!(
        get(h, "/health").status,
        200,
        "liveness does not wait for the shards"
    );
    assert_error(get(h, "/ready"), 503, "ready before the broker serves");
    assert_error(
        get(h, "/v3/clusters/eventflow/topics"),
        503,
        "the API before the broker serves",
    );
    assert_eq!(
        get(h, "/").status,
        200,
        "the console page loads all the same"
    );

    let broker = Broker::start(&["--cores", "1", "--no-http"]);
    broker.client().create_topic("t", 1, &[]).unwrap();
    api.set_broker(eventflow::http_api::BrokerView {
        native: broker.addr,
        kafka: None,
        direct: broker.direct.clone(),
        shards: 1,
        connections: Box::new(|| 0),
        settings: Vec::new(),
        traffic: std::sync::Arc::new(|| Box::pin(async { Err("no metrics here".to_string()) })),
        login_mechanism: None,
        login_required: false,
        native_tls: None,
    });
    assert_eq!(get(h, "/ready").json()["status"], "ready");
    assert_eq!(get(h, &topics("t")).json()["partitions_count"], 1);
    assert_error(
        get(h, "/v3/clusters/eventflow/traffic"),
        503,
        "traffic the broker cannot gather",
    );

    api.set_stopping();
    assert_error(get(h, "/ready"), 503, "ready while stopping");
    assert_error(get(h, &topics("t")), 503, "the API while stopping");
    assert_eq!(get(h, "/health").status, 200);
    drop(api);
    assert!(
        std::net::TcpStream::connect(h).is_err(),
        "the listener is closed once dropped"
    );
}

/// Runs the `eventflow` CLI against `broker` with `stdin`, and returns its stdout.
fn cli(broker: &Broker, args: &[&str], stdin: &str) -> String {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_eventflow"));
    command
        .args(args)
        .env("EVENTFLOW_BOOTSTRAP", broker.addr.to_string());
    let out = common::run_with_stdin(command, stdin);
    assert!(
        out.status.success(),
        "eventflow {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_cli_reads_what_http_wrote_and_http_reads_what_the_cli_wrote() {
    let broker = Broker::start(&["--cores", "1"]);
    let h = http(&broker);
    let created = send_json(
        h,
        "POST",
        "/v3/clusters/eventflow/topics",
        &json!({ "topic_name": "mixed" }),
    );
    assert_eq!(created.status, 201, "{}", created.text());
    let produced = send_json(
        h,
        "POST",
        &format!("{}/records", topics("mixed")),
        &json!({ "records": [
            { "key": { "type": "STRING", "data": "a" }, "value": { "type": "STRING", "data": "from http 1" } },
            { "key": { "type": "STRING", "data": "b" }, "value": { "type": "STRING", "data": "from http 2" } },
        ]}),
    );
    assert_eq!(produced.status, 200, "{}", produced.text());
    let consumed = cli(
        &broker,
        &[
            "consume",
            "mixed",
            "--from-beginning",
            "--max-messages",
            "2",
            "--timeout-ms",
            "10000",
            "--format",
            "%o %k=%v\n",
        ],
        "",
    );
    assert_eq!(consumed, "0 a=from http 1\n1 b=from http 2\n");

    cli(
        &broker,
        &["produce", "mixed", "--key-separator", ":"],
        "c:from the cli\n",
    );
    let read = get(
        h,
        &format!("{}/partitions/0/records?offset=2", topics("mixed")),
    )
    .json();
    let data = read["data"].as_array().unwrap();
    assert_eq!(data.len(), 1, "{read}");
    assert_eq!(data[0]["key"], json!({ "type": "STRING", "data": "c" }));
    assert_eq!(
        data[0]["value"],
        json!({ "type": "STRING", "data": "from the cli" })
    );
}
