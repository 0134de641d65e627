//! Idempotent producers on the Kafka listener: InitProducerId, the sequence and epoch
//! checks of Produce (raw requests built with the `kafka-protocol` crate's client side),
//! the producer state surviving a kill -9 and a power loss under `--fsync always`, and
//! Python's confluent-kafka producing with `enable.idempotence=True`
//! (`tests/kafka_clients/idempotent.py`; skipped with a line saying so without python3
//! and confluent-kafka, or failing when EVENTFLOW_REQUIRE_KAFKA_CLIENTS=1, as in CI).

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{simulate_power_loss, Broker};
use eventflow::protocol::batch::{BatchBuilder, BatchHeader};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, InitProducerIdRequest, InitProducerIdResponse,
    ProduceRequest, ProduceResponse, ProducerId, TopicName, TransactionalId,
};
use kafka_protocol::protocol::StrBytes;

use common::kafka_wire::KafkaConn as Conn;

/// InitProducerId without a transactional id, carrying `current` (id, epoch) if any.
fn init_producer_id(c: &mut Conn, version: i16, current: Option<(i64, i16)>) -> (i16, i64, i16) {
    let (id, epoch) = current.unwrap_or((-1, -1));
    let r: InitProducerIdResponse = c.call(
        ApiKey::InitProducerId,
        version,
        &InitProducerIdRequest::default()
            .with_transactional_id(None)
            .with_transaction_timeout_ms(-1)
            .with_producer_id(ProducerId(id))
            .with_producer_epoch(epoch),
    );
    (r.error_code, r.producer_id.0, r.producer_epoch)
}

/// A batch of `records` records of producer `pid` at `epoch`, first sequence `seq`; the
/// values say where they come from.
fn idempotent_batch(pid: i64, epoch: i16, seq: i32, records: i32) -> Bytes {
    let mut b = BatchBuilder::new();
    b.set_producer(pid, epoch, seq);
    for i in 0..records {
        let value = format!("{pid}/{epoch}/{}", seq + i);
        b.push(common::now_ms(), None, Some(value.as_bytes()), &[]);
    }
    b.finish().freeze()
}

/// A produce request (acks = all) of one batch per `(partition, records)`.
fn produce(topic: &str, parts: &[(i32, Bytes)]) -> ProduceRequest {
    ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(10_000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(TopicName(StrBytes::from_string(topic.to_string())))
            .with_partition_data(
                parts
                    .iter()
                    .map(|(p, records)| {
                        PartitionProduceData::default()
                            .with_index(*p)
                            .with_records(Some(records.clone()))
                    })
                    .collect(),
            )])
}

/// (partition, error code, base offset) of each partition of a produce response.
fn answers(r: &ProduceResponse) -> Vec<(i32, i16, i64)> {
    r.responses
        .iter()
        .flat_map(|t| t.partition_responses.iter())
        .map(|p| (p.index, p.error_code, p.base_offset))
        .collect()
}

/// Sends one batch to `partition` at Produce `version`; returns (error code, base offset).
fn send_batch(c: &mut Conn, version: i16, topic: &str, partition: i32, b: Bytes) -> (i16, i64) {
    let r: ProduceResponse = c.call(ApiKey::Produce, version, &produce(topic, &[(partition, b)]));
    let [(p, error, base)] = answers(&r)[..] else {
        panic!("one partition expected: {r:?}");
    };
    assert_eq!(p, partition);
    (error, base)
}

/// The stored batches of a partition: (base offset, producer id, epoch, first sequence,
/// records).
fn stored(broker: &Broker, topic: &str, partition: u32) -> Vec<(i64, i64, i16, i32, i32)> {
    let mut c = broker.client();
    common::read_all(&mut c, topic, partition, 0)
        .iter()
        .map(|b| {
            let h = BatchHeader::parse(b).unwrap();
            (
                h.base_offset,
                h.producer_id,
                h.producer_epoch,
                h.base_sequence,
                h.records_count,
            )
        })
        .collect()
}

const OUT_OF_ORDER_SEQUENCE_NUMBER: i16 = 45;
const INVALID_PRODUCER_EPOCH: i16 = 47;

#[test]
fn init_producer_id_gives_distinct_ids_bumps_epochs_and_refuses_transactions() {
    let broker = Broker::start(&["--cores", "2"]);
    let kafka = broker.kafka.unwrap();
    let mut c = Conn::open(kafka);
    let versions: ApiVersionsResponse =
        c.call(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default());
    let advertised = versions
        .api_keys
        .iter()
        .find(|k| k.api_key == ApiKey::InitProducerId as i16)
        .expect("InitProducerId advertised");
    assert_eq!((advertised.min_version, advertised.max_version), (0, 5));

    // Every version, over several connections (the kernel spreads them over both shards).
    let mut ids = HashSet::new();
    for round in 0..4 {
        let mut c = Conn::open(kafka);
        for version in 0..=5 {
            let (error, id, epoch) = init_producer_id(&mut c, version, None);
            assert_eq!((error, epoch), (0, 0), "v{version} round {round}");
            assert!(id >= 0);
            assert!(ids.insert(id), "id {id} issued twice");
        }
    }
    // The producer's current id and epoch (v3+): the same id at the next epoch.
    let (_, id, _) = init_producer_id(&mut c, 5, None);
    for version in 3..=5 {
        let (error, again, epoch) = init_producer_id(&mut c, version, Some((id, version - 3)));
        assert_eq!((error, again, epoch), (0, id, version - 2), "v{version}");
    }
    // An exhausted epoch, or an id never issued: a new id.
    let (error, other, epoch) = init_producer_id(&mut c, 4, Some((id, i16::MAX - 1)));
    assert_eq!((error, epoch), (0, 0));
    assert!(other != id && !ids.contains(&other));
    // An id without an epoch: INVALID_REQUEST.
    assert_eq!(init_producer_id(&mut c, 4, Some((id, -1))).0, 42);
    // Transactions: COORDINATOR_NOT_AVAILABLE (as FindCoordinator says for their keys);
    // an empty transactional id: INVALID_REQUEST.
    for (transactional_id, code) in [("orders-tx", 15), ("", 42)] {
        for version in 0..=5 {
            let r: InitProducerIdResponse = c.call(
                ApiKey::InitProducerId,
                version,
                &InitProducerIdRequest::default()
                    .with_transactional_id(Some(TransactionalId(StrBytes::from_static_str(
                        transactional_id,
                    ))))
                    .with_transaction_timeout_ms(60_000),
            );
            assert_eq!(
                (r.error_code, r.producer_id.0),
                (code, -1),
                "{transactional_id:?} v{version}"
            );
        }
    }

    // Ids stay unique across a restart: the block reserved before it is not reused.
    let mut broker = broker;
    broker.kill9();
    broker.restart();
    let mut c = Conn::open(broker.kafka.unwrap());
    let (error, after, _) = init_producer_id(&mut c, 5, None);
    assert_eq!(error, 0);
    assert!(ids.iter().all(|&id| id < after), "{after} after a restart");
}

#[test]
fn produce_deduplicates_retries_and_enforces_sequences_and_epochs() {
    let broker = Broker::start(&["--cores", "2"]);
    broker.client().create_topic("idem", 2, &[]).unwrap();
    let mut c = Conn::open(broker.kafka.unwrap());
    let (_, pid, _) = init_producer_id(&mut c, 4, None);

    for version in [3, 9, 12] {
        // Each version on a fresh producer id against partition 0.
        let (_, pid, _) = init_producer_id(&mut c, 4, None);
        let before = stored(&broker, "idem", 0).len();
        let first = send_batch(&mut c, version, "idem", 0, idempotent_batch(pid, 0, 0, 3));
        assert_eq!(first.0, 0, "v{version}");
        // The same batch again: no error, the original offset, stored once.
        let retry = send_batch(&mut c, version, "idem", 0, idempotent_batch(pid, 0, 0, 3));
        assert_eq!(retry, first, "v{version}");
        assert_eq!(stored(&broker, "idem", 0).len(), before + 1, "v{version}");
    }

    let p = 1;
    let b0 = send_batch(&mut c, 9, "idem", p, idempotent_batch(pid, 0, 0, 3));
    let b1 = send_batch(&mut c, 9, "idem", p, idempotent_batch(pid, 0, 3, 2));
    assert_eq!((b0, b1), ((0, 0), (0, 3)));
    // A retry of a batch before the last one: its own offset.
    assert_eq!(
        send_batch(&mut c, 9, "idem", p, idempotent_batch(pid, 0, 0, 3)),
        (0, 0)
    );
    // A gap (5 is next, 7 is sent): OUT_OF_ORDER_SEQUENCE_NUMBER, nothing stored.
    let (error, base) = send_batch(&mut c, 9, "idem", p, idempotent_batch(pid, 0, 7, 1));
    assert_eq!((error, base), (OUT_OF_ORDER_SEQUENCE_NUMBER, -1));
    assert_eq!(
        send_batch(&mut c, 9, "idem", p, idempotent_batch(pid, 0, 5, 1)),
        (0, 5)
    );
    // A new epoch (InitProducerId with the current one): it must start at sequence 0.
    let (_, same, epoch) = init_producer_id(&mut c, 4, Some((pid, 0)));
    assert_eq!((same, epoch), (pid, 1));
    let (error, _) = send_batch(&mut c, 9, "idem", p, idempotent_batch(pid, 1, 6, 1));
    assert_eq!(error, OUT_OF_ORDER_SEQUENCE_NUMBER);
    assert_eq!(
        send_batch(&mut c, 9, "idem", p, idempotent_batch(pid, 1, 0, 2)),
        (0, 6)
    );
    // The old epoch is fenced: INVALID_PRODUCER_EPOCH.
    let (error, base) = send_batch(&mut c, 9, "idem", p, idempotent_batch(pid, 0, 6, 1));
    assert_eq!((error, base), (INVALID_PRODUCER_EPOCH, -1));

    // One request to both partitions: a retry on 1, a new batch on 0 (each checked alone).
    let other = init_producer_id(&mut c, 4, None).1;
    let r: ProduceResponse = c.call(
        ApiKey::Produce,
        9,
        &produce(
            "idem",
            &[
                (1, idempotent_batch(pid, 1, 0, 2)),
                (0, idempotent_batch(other, 0, 0, 4)),
            ],
        ),
    );
    let end0 = stored(&broker, "idem", 0)
        .last()
        .map(|&(base, _, _, _, n)| base + i64::from(n))
        .unwrap();
    assert_eq!(answers(&r), [(1, 0, 6), (0, 0, end0 - 4)]);

    // Five requests in flight at once (as clients pipeline), then all five again: the
    // retries get the offsets of the first five, in order.
    let fresh = init_producer_id(&mut c, 4, None).1;
    let mut first = Vec::new();
    for round in 0..2 {
        let ids: Vec<i32> = (0..5)
            .map(|i| {
                let b = idempotent_batch(fresh, 0, i * 10, 10);
                c.send(ApiKey::Produce, 9, &produce("idem", &[(1, b)]))
            })
            .collect();
        let got: Vec<(i32, i16, i64)> = ids
            .into_iter()
            .flat_map(|id| answers(&c.response::<ProduceResponse>(ApiKey::Produce, 9, id)))
            .collect();
        if round == 0 {
            first = got;
            let bases: Vec<i64> = first.iter().map(|a| a.2).collect();
            assert_eq!(bases, [8, 18, 28, 38, 48]);
        } else {
            assert_eq!(got, first, "retries get the original offsets");
        }
    }

    // What partition 1 holds: every batch once.
    assert_eq!(
        stored(&broker, "idem", 1),
        [
            (0, pid, 0, 0, 3),
            (3, pid, 0, 3, 2),
            (5, pid, 0, 5, 1),
            (6, pid, 1, 0, 2),
            (8, fresh, 0, 0, 10),
            (18, fresh, 0, 10, 10),
            (28, fresh, 0, 20, 10),
            (38, fresh, 0, 30, 10),
            (48, fresh, 0, 40, 10),
        ]
    );
}

/// Produces batch `i` (sequence `3 * i`, 3 records) of `pid` for `i` in `range` to
/// partitions 0 and 1, each acknowledged; returns the base offsets per partition.
fn produce_acked(c: &mut Conn, pid: i64, range: std::ops::Range<i32>) -> [Vec<i64>; 2] {
    let mut bases = [Vec::new(), Vec::new()];
    for i in range {
        for (p, bases) in bases.iter_mut().enumerate() {
            let (error, base) = send_batch(
                c,
                9,
                "durable",
                p as i32,
                idempotent_batch(pid, 0, 3 * i, 3),
            );
            assert_eq!(error, 0);
            bases.push(base);
        }
    }
    bases
}

/// After the broker came back: the last acknowledged batch (`last`) sent again is answered
/// with its original offset and not stored again, and the next sequence is accepted.
fn resend_after_restart(broker: &Broker, pid: i64, last: i32, bases: &[Vec<i64>; 2]) {
    let mut c = Conn::open(broker.kafka.unwrap());
    for (p, bases) in bases.iter().enumerate() {
        let stored_before = stored(broker, "durable", p as u32);
        let end = stored_before
            .last()
            .map(|&(base, _, _, _, n)| base + i64::from(n))
            .unwrap();
        for back in 0..3 {
            let i = last - back;
            assert_eq!(
                send_batch(
                    &mut c,
                    9,
                    "durable",
                    p as i32,
                    idempotent_batch(pid, 0, 3 * i, 3)
                ),
                (0, bases[i as usize]),
                "partition {p}: the retry of batch {i}"
            );
        }
        assert_eq!(stored(broker, "durable", p as u32), stored_before);
        let next = idempotent_batch(pid, 0, 3 * (last + 1), 3);
        assert_eq!(
            send_batch(&mut c, 9, "durable", p as i32, next),
            (0, end),
            "partition {p}: the next sequence"
        );
        // And a gap is still refused: the sequence state came back, not a blank one.
        let gap = idempotent_batch(pid, 0, 3 * (last + 5), 3);
        assert_eq!(
            send_batch(&mut c, 9, "durable", p as i32, gap).0,
            OUT_OF_ORDER_SEQUENCE_NUMBER
        );
    }
}

#[test]
fn producer_state_survives_kill_9_under_fsync_always() {
    // Small segments, so the state comes from a snapshot taken at a roll plus the batch
    // headers after it.
    let mut broker = Broker::start(&[
        "--cores",
        "2",
        "--fsync",
        "always",
        "--segment-bytes",
        "2048",
    ]);
    broker.client().create_topic("durable", 2, &[]).unwrap();
    let mut c = Conn::open(broker.kafka.unwrap());
    let (_, pid, _) = init_producer_id(&mut c, 5, None);
    let bases = produce_acked(&mut c, pid, 0..60);
    let dir = broker.store_dir().join("durable").join("0");
    let segments = std::fs::read_dir(&dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "log")
        })
        .count();
    assert!(segments > 3, "{segments} segments");
    broker.kill9();
    broker.restart();
    resend_after_restart(&broker, pid, 59, &bases);

    // A clean stop and start keeps it too (the snapshot at the log end).
    let mut c = Conn::open(broker.kafka.unwrap());
    let more = produce_acked(&mut c, pid, 61..64);
    assert!(broker.terminate().success());
    broker.restart();
    let bases = [
        [bases[0].clone(), vec![-1], more[0].clone()].concat(),
        [bases[1].clone(), vec![-1], more[1].clone()].concat(),
    ];
    resend_after_restart(&broker, pid, 63, &bases);
}

#[test]
fn producer_state_survives_a_power_loss_under_fsync_always() {
    let mut broker = Broker::start_journaled(&["--cores", "2", "--fsync", "always"]);
    broker.client().create_topic("durable", 2, &[]).unwrap();
    let mut c = Conn::open(broker.kafka.unwrap());
    let (_, pid, _) = init_producer_id(&mut c, 5, None);
    let bases = produce_acked(&mut c, pid, 0..20);
    broker.kill9();
    let journal = broker.journal.clone().unwrap();
    let loss = simulate_power_loss(&broker.store_dir(), &journal);
    assert!(loss.files >= 2, "{loss:?}");
    broker.restart();
    resend_after_restart(&broker, pid, 19, &bases);
}

/// Whether python3 with confluent_kafka can run (see [`common::kafka_client_available`]).
fn confluent_kafka_available() -> bool {
    let ran = Command::new("python3")
        .args(["-c", "import confluent_kafka"])
        .output()
        .is_ok_and(|out| out.status.success());
    common::kafka_client_available(
        "python3 with confluent-kafka",
        ran,
        "python3 -m pip install confluent-kafka",
    )
}

#[test]
fn confluent_idempotent_producer_stores_every_record_once() {
    if !confluent_kafka_available() {
        return;
    }
    const PARTITIONS: u32 = 4;
    const RECORDS: usize = 3000;
    let broker = Broker::start(&["--cores", "2"]);
    broker
        .client()
        .create_topic("idem-py", PARTITIONS, &[])
        .unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/kafka_clients/idempotent.py");
    let mut child = Command::new("python3")
        .arg(&script)
        .arg(broker.kafka.unwrap().to_string())
        .arg("idem-py")
        .arg(PARTITIONS.to_string())
        .arg(RECORDS.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn python3");
    let deadline = Instant::now() + Duration::from_secs(90);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "idempotent.py failed ({:?}); stdout:\n{stdout}\nstderr:\n{}\nbroker log:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        broker.log()
    );
    let steps: Vec<String> = stdout
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("a JSON line");
            v["step"].as_str().unwrap_or_default().to_string()
        })
        .collect();
    assert_eq!(steps, ["produced", "consumed"]);

    // On the broker: every batch came from one idempotent producer, whose sequences run
    // on without a gap or a repeat in each partition, and the records add up.
    let mut total = 0;
    let mut producers = HashSet::new();
    for p in 0..PARTITIONS {
        let mut next_seq = 0;
        for (_, pid, epoch, seq, n) in stored(&broker, "idem-py", p) {
            assert!(pid >= 0, "partition {p}: a batch without a producer id");
            producers.insert((pid, epoch));
            assert_eq!(seq, next_seq, "partition {p}");
            next_seq += n;
            total += n as usize;
        }
    }
    assert_eq!(total, RECORDS);
    assert_eq!(producers.len(), 1, "{producers:?}");
}
