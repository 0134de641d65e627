//! Bad input gets its error code, loses nothing, and never hurts other connections.

mod common;

use std::io::Read;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use common::{batch, now_ms, read_all, values, Broker};
use eventflow::client::{produce_request, Client};
use eventflow::protocol::api::{Acks, Response};
use eventflow::protocol::ErrorCode;

/// A healthy producer on its own connection, running until stopped; returns how many
/// batches it had acknowledged.
fn healthy_producer(broker: &Broker, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<usize> {
    let mut c = broker.client();
    c.create_topic("healthy", 1, &[]).unwrap();
    std::thread::spawn(move || {
        let mut n = 0;
        while !stop.load(Ordering::SeqCst) || n == 0 {
            let (base, _) = c
                .produce(
                    "healthy",
                    0,
                    batch(&format!("h{n}"), 5, 20, now_ms()),
                    Acks::All,
                )
                .expect("the healthy client is unaffected");
            assert_eq!(base, n as i64 * 5);
            n += 1;
        }
        n
    })
}

/// Reads one response frame from a raw socket, then expects the broker to close it.
fn error_then_close(mut raw: TcpStream) -> (u32, ErrorCode, String) {
    raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut all = Vec::new();
    raw.read_to_end(&mut all)
        .expect("the broker closes the connection");
    assert!(
        all.len() >= 10,
        "an error response came before the close: {all:?}"
    );
    let len = u32::from_be_bytes(all[0..4].try_into().unwrap()) as usize;
    assert_eq!(all.len(), 4 + len, "exactly one frame, then EOF");
    let correlation = u32::from_be_bytes(all[4..8].try_into().unwrap());
    let code = ErrorCode::from_u16(u16::from_be_bytes(all[8..10].try_into().unwrap()));
    let msg_len = u16::from_be_bytes(all[10..12].try_into().unwrap()) as usize;
    let message = String::from_utf8_lossy(&all[12..12 + msg_len]).into_owned();
    (correlation, code, message)
}

#[test]
fn malformed_frames_are_answered_then_closed_and_others_carry_on() {
    let broker = Broker::start(&["--cores", "2", "--max-request-bytes", "65536"]);
    let stop = Arc::new(AtomicBool::new(false));
    let healthy = healthy_producer(&broker, stop.clone());

    // A frame over --max-request-bytes: refused before its body is read.
    let mut raw = TcpStream::connect(broker.addr).unwrap();
    let mut frame = BytesMut::new();
    frame.put_u32(10_000_000);
    frame.put_u16(7);
    frame.put_u16(0);
    frame.put_u32(77);
    std::io::Write::write_all(&mut raw, &frame).unwrap();
    let (correlation, code, message) = error_then_close(raw);
    assert_eq!(code, ErrorCode::RequestTooLarge, "{message}");
    assert_eq!(correlation, 77);

    // Garbage bytes: a plausible length with a body that is not a request.
    let mut raw = TcpStream::connect(broker.addr).unwrap();
    let mut frame = BytesMut::new();
    frame.put_u32(12);
    frame.put_u16(7); // produce
    frame.put_u16(0);
    frame.put_u32(5);
    frame.put_slice(b"\xff\xff\xff\xff");
    std::io::Write::write_all(&mut raw, &frame).unwrap();
    let (correlation, code, message) = error_then_close(raw);
    assert_eq!(code, ErrorCode::CorruptFrame, "{message}");
    assert_eq!(correlation, 5);

    // Pure noise: read as an absurd length.
    let mut raw = TcpStream::connect(broker.addr).unwrap();
    std::io::Write::write_all(&mut raw, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let (_, code, _) = error_then_close(raw);
    assert_eq!(code, ErrorCode::RequestTooLarge);

    // A frame too short to hold a request header.
    let mut raw = TcpStream::connect(broker.addr).unwrap();
    std::io::Write::write_all(&mut raw, &[0, 0, 0, 2, 0, 1]).unwrap();
    let (_, code, _) = error_then_close(raw);
    assert_eq!(code, ErrorCode::CorruptFrame);

    stop.store(true, Ordering::SeqCst);
    let acked = healthy.join().unwrap();
    let mut c = broker.client();
    let got: Vec<String> = read_all(&mut c, "healthy", 0, 0)
        .iter()
        .flat_map(values)
        .collect();
    assert_eq!(
        got.len(),
        acked * 5,
        "nothing the healthy client was acked for is lost"
    );
}

#[test]
fn unknown_api_and_version_get_errors_and_the_connection_goes_on() {
    let broker = Broker::start(&["--cores", "2"]);
    let mut c = broker.client();
    for (api, version, expected) in [
        (999u16, 0u16, ErrorCode::UnsupportedApi),
        (1, 9, ErrorCode::UnsupportedVersion),
    ] {
        let mut frame = BytesMut::new();
        frame.put_u32(8);
        frame.put_u16(api);
        frame.put_u16(version);
        frame.put_u32(4242);
        c.send_raw(&frame).unwrap();
        let (id, result) = c.receive().unwrap();
        assert_eq!(id, 4242);
        assert_eq!(result.unwrap_err().code, expected);
    }
    // A well-formed produce with acks = 5: invalid request, the connection goes on.
    let mut frame = BytesMut::new();
    frame.put_u32(8 + 2 + 4 + 4);
    frame.put_u16(7);
    frame.put_u16(0);
    frame.put_u32(4343);
    frame.put_i16(5);
    frame.put_u32(1000);
    frame.put_u32(0);
    c.send_raw(&frame).unwrap();
    let (id, result) = c.receive().unwrap();
    assert_eq!(id, 4343);
    assert_eq!(result.unwrap_err().code, ErrorCode::InvalidRequest);
    // Same connection still works.
    assert_eq!(c.api_versions().unwrap().shard_count, 2);
}

#[test]
fn bad_batches_and_unknown_topics_get_partition_errors() {
    let broker = Broker::start(&["--cores", "2", "--max-batch-bytes", "4096"]);
    let mut c = broker.client();
    c.create_topic("t", 2, &[]).unwrap();

    // Bad CRC: one flipped byte in the records.
    let mut bad = batch("crc", 3, 10, now_ms());
    let at = bad.len() - 3;
    bad[at] ^= 0x01;
    let err = c.produce("t", 0, bad, Acks::All).unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::CorruptBatch), "{err}");

    // A good batch followed by a torn one: the whole partition entry is refused.
    let mut two = batch("ok", 2, 10, now_ms());
    let torn = batch("torn", 2, 10, now_ms());
    two.extend_from_slice(&torn[..torn.len() - 5]);
    let err = c.produce("t", 0, two, Acks::All).unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::CorruptBatch), "{err}");

    // Over --max-batch-bytes.
    let err = c
        .produce("t", 0, batch("big", 10, 1000, now_ms()), Acks::All)
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::BatchTooLarge), "{err}");

    // Empty records.
    let err = c.produce("t", 0, BytesMut::new(), Acks::All).unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::InvalidRequest), "{err}");

    // Unknown topic and partition.
    let err = c
        .produce("nope", 0, batch("x", 1, 1, now_ms()), Acks::All)
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::UnknownTopicOrPartition));
    let err = c
        .produce("t", 7, batch("x", 1, 1, now_ms()), Acks::All)
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::UnknownTopicOrPartition));
    let err = c.fetch("nope", 0, 0, 1024, Duration::ZERO, 0).unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::UnknownTopicOrPartition));
    let err = c.fetch("t", 0, 5, 1024, Duration::ZERO, 0).unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::OffsetOutOfRange));

    // One request, one good and one bad partition: each gets its own outcome, and nothing
    // of the bad one was written.
    let mut request = produce_request("t", 0, batch("good", 1, 10, now_ms()), Acks::All);
    if let eventflow::protocol::api::Request::Produce(p) = &mut request {
        let mut bad = batch("bad", 1, 10, now_ms());
        let n = bad.len();
        bad[n - 1] ^= 0xff;
        p.topics[0]
            .partitions
            .push(eventflow::protocol::api::ProducePartition {
                partition: 1,
                records: bad,
            });
    }
    let Response::Produce(r) = c.call(request).unwrap() else {
        panic!("not a produce response")
    };
    let parts = &r.topics[0].partitions;
    assert_eq!(parts[0].error, ErrorCode::None);
    assert_eq!(parts[0].base_offset, 0);
    assert_eq!(parts[1].error, ErrorCode::CorruptBatch);
    assert!(read_all(&mut c, "t", 1, 0).is_empty());
    assert_eq!(values(&read_all(&mut c, "t", 0, 0)[0]), vec!["good-0"]);
}

#[test]
fn connections_over_the_limit_are_refused_with_a_reason() {
    let broker = Broker::start(&["--cores", "2", "--max-connections", "2"]);
    let mut a = broker.client();
    let mut b = broker.client();
    a.api_versions().unwrap();
    b.api_versions().unwrap();
    let raw = TcpStream::connect(broker.addr).unwrap();
    let (correlation, code, _) = error_then_close(raw);
    assert_eq!((correlation, code), (0, ErrorCode::TooManyConnections));
    drop(a);
    // The freed slot is usable again.
    assert!(common::eventually(Duration::from_secs(10), || {
        Client::connect(broker.addr)
            .ok()
            .and_then(|mut c| c.api_versions().ok())
            .is_some()
    }));
    b.api_versions().unwrap();
}

#[test]
fn random_bytes_on_many_connections_never_take_the_broker_down() {
    let broker = Broker::start(&["--cores", "2", "--max-request-bytes", "65536"]);
    let mut c = broker.client();
    c.create_topic("survivor", 2, &[]).unwrap();
    // A fixed-seed generator: the same inputs on every run.
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for round in 0..60 {
        let mut raw = TcpStream::connect(broker.addr).unwrap();
        raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut bytes = BytesMut::new();
        // Half the rounds start with a plausible frame header so the body decoders see it.
        if round % 2 == 0 {
            let body_len = (next() % 200) as u32;
            bytes.put_u32(8 + body_len);
            bytes.put_u16((next() % 12) as u16);
            bytes.put_u16(0);
            bytes.put_u32(round);
            for _ in 0..body_len {
                bytes.put_u8(next() as u8);
            }
        } else {
            for _ in 0..(next() % 300) {
                bytes.put_u8(next() as u8);
            }
        }
        let _ = std::io::Write::write_all(&mut raw, &bytes);
        let _ = std::io::Write::flush(&mut raw);
        // Whatever the broker answers, it answers or closes; it does not hang or die.
        let mut sink = Vec::new();
        let _ = raw.shutdown(std::net::Shutdown::Write);
        let _ = raw.read_to_end(&mut sink);
    }
    let (base, _) = c
        .produce("survivor", 1, batch("alive", 1, 10, now_ms()), Acks::All)
        .expect("the broker still serves");
    assert_eq!(base, 0);
    assert_eq!(c.list_topics().unwrap().len(), 1);
}

#[test]
fn a_request_budget_below_the_largest_request_is_refused_at_start() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_eventflowd"))
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(tempfile::tempdir().unwrap().path())
        .args(["--max-request-bytes", "65536", "--max-queued-bytes", "4096"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--max-queued-bytes (4096) must be at least --max-request-bytes (65536)"),
        "{stderr}"
    );
}

#[test]
fn producers_share_a_request_budget_that_fits_one_request_and_lose_nothing() {
    // About 40 KB per request against a 64 KiB budget: one request at a time per shard, so
    // the four connections take turns.
    let broker = Broker::start(&[
        "--cores",
        "1",
        "--max-request-bytes",
        "65536",
        "--max-queued-bytes",
        "65536",
    ]);
    broker.client().create_topic("budget", 1, &[]).unwrap();
    let producers: Vec<_> = (0..4)
        .map(|p| {
            let mut c = broker.client();
            std::thread::spawn(move || {
                for i in 0..25 {
                    c.produce(
                        "budget",
                        0,
                        batch(&format!("p{p}-{i}"), 40, 1000, now_ms()),
                        Acks::All,
                    )
                    .expect("a request that fits the budget is served");
                }
            })
        })
        .collect();
    for p in producers {
        p.join().unwrap();
    }
    let mut c = broker.client();
    let got: Vec<String> = read_all(&mut c, "budget", 0, 0)
        .iter()
        .flat_map(values)
        .collect();
    assert_eq!(got.len(), 4 * 25 * 40);
    for p in 0..4 {
        for i in 0..25 {
            let tag = format!("p{p}-{i}-");
            assert_eq!(got.iter().filter(|v| v.starts_with(&tag)).count(), 40);
        }
    }
}

#[test]
fn a_second_broker_on_a_port_in_use_is_refused_at_start() {
    // SO_REUSEPORT would let a second process share the first one's ports (and its
    // connections): the start must fail instead, for the native and the Kafka listener,
    // and for the metrics listener (no SO_REUSEPORT: a plain bind fails).
    let first = Broker::start(&["--cores", "2"]);
    let kafka = first.kafka.unwrap().to_string();
    let metrics = first.metrics.unwrap().to_string();
    for args in [
        vec![
            "--listen".to_string(),
            "127.0.0.1:0".to_string(),
            "--metrics-listen".to_string(),
            metrics.clone(),
        ],
        vec!["--listen".to_string(), first.addr.to_string()],
        vec![
            "--listen".to_string(),
            "127.0.0.1:0".to_string(),
            "--kafka-listen".to_string(),
            kafka.clone(),
        ],
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_eventflowd"))
            .args(&args)
            .arg("--data-dir")
            .arg(tempfile::tempdir().unwrap().path())
            .arg("--no-direct-ports")
            .arg("--no-http")
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} started");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("in use"), "{args:?}: {stderr}");
    }
    // The first broker is untouched.
    assert!(first.client().list_topics().is_ok());
}
