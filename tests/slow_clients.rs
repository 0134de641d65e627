//! Slow and hostile clients cannot take the broker's memory or its connection slots: a
//! frame's bytes are taken from the shard's request budget (`--max-queued-bytes`) when its
//! length prefix arrives, a frame must arrive within `--request-read-timeout-ms`, a silent
//! connection is closed after `--idle-timeout-ms`, connections are bounded per client
//! address (`--max-connections-per-ip`), and a refused client is told "too many
//! connections".

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{batch, now_ms, read_all, values, Broker};
use eventflow::client::Client;
use eventflow::protocol::api::Acks;

const MIB: u64 = 1 << 20;

/// A length prefix announcing a frame of `len` bytes.
fn announce(len: u32) -> [u8; 4] {
    len.to_be_bytes()
}

/// Writes what the socket takes now, without blocking (the broker may not be reading).
fn write_some(s: &mut TcpStream, bytes: &[u8]) {
    let _ = s.write(bytes);
}

/// A produce and a consume of a few records through a normal client.
fn produce_and_consume(broker: &Broker, round: usize) {
    let mut c = broker.client();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let tag = format!("round{round}");
    c.produce("normal", 0, batch(&tag, 3, 100, now_ms()), Acks::All)
        .expect("a normal client's produce is served");
    let got: Vec<String> = read_all(&mut c, "normal", 0, 0)
        .iter()
        .flat_map(values)
        .collect();
    assert_eq!(
        got.len(),
        3 * (round + 1),
        "a normal client's consume is served"
    );
    assert_eq!(got[3 * round], format!("{tag}-0"));
}

/// Waits until the broker closes `s` (EOF or reset) within `within`.
fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    s.set_read_timeout(Some(within)).unwrap();
    let mut byte = [0u8; 64];
    loop {
        match s.read(&mut byte) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return false
            }
            Err(_) => return true,
        }
    }
}

#[test]
fn thousands_of_trickling_connections_keep_memory_bounded_and_others_served() {
    let broker = Broker::start(&[
        "--cores",
        "2",
        // The budget, not the timeout, is what this test measures.
        "--request-read-timeout-ms",
        "120000",
    ]);
    broker.client().create_topic("normal", 1, &[]).unwrap();
    produce_and_consume(&broker, 0);
    let baseline = broker.rss_bytes();
    // Each connection announces a 16 MiB frame (the default --max-request-bytes) and sends
    // 60 KiB of it at once, then trickles more.
    let body = vec![b'x'; 60 * 1024];
    let mut hogs: Vec<TcpStream> = (0..2_000)
        .map(|_| {
            let mut s = TcpStream::connect(broker.addr).unwrap();
            s.set_nonblocking(true).unwrap();
            write_some(&mut s, &announce(16 << 20));
            write_some(&mut s, &body);
            s
        })
        .collect();
    // The bound: each shard holds at most its request budget in frames, complete or partial
    // (--max-queued-bytes, 32 MiB by default: 64 MiB over 2 shards), plus per connection
    // one small read (4 KiB) and its task and state (a few KiB): 16 KiB each is generous.
    // Without the budget on partial frames, 2,000 × 64 KiB read were buffered (125 MiB).
    let bound = baseline + 2 * 32 * MIB + 2_000 * 16 * 1024;
    for round in 1..=3 {
        for s in &mut hogs {
            write_some(s, &[b'y'; 1024]);
        }
        produce_and_consume(&broker, round);
        let rss = broker.rss_bytes();
        eprintln!(
            "round {round}: RSS {} MiB, baseline {} MiB",
            rss / MIB,
            baseline / MIB
        );
        assert!(
            rss <= bound,
            "round {round}: RSS {} MiB over the bound {} MiB (baseline {} MiB)",
            rss / MIB,
            bound / MIB,
            baseline / MIB
        );
    }
    drop(hogs);
    produce_and_consume(&broker, 4);
}

#[test]
fn half_frames_are_bounded_and_freed_when_their_connections_close() {
    let broker = Broker::start(&["--cores", "2", "--request-read-timeout-ms", "120000"]);
    broker.client().create_topic("normal", 1, &[]).unwrap();
    produce_and_consume(&broker, 0);
    let baseline = broker.rss_bytes();
    // 48 connections each send half of a 16 MiB frame.
    let half = vec![b'h'; 8 << 20];
    let mut halves: Vec<TcpStream> = (0..48)
        .map(|_| {
            let mut s = TcpStream::connect(broker.addr).unwrap();
            s.set_nonblocking(true).unwrap();
            write_some(&mut s, &announce(16 << 20));
            s
        })
        .collect();
    // Push the halves from threads: a connection the broker does not read blocks its writer.
    let writers: Vec<_> = halves
        .iter_mut()
        .map(|s| {
            let mut s = s.try_clone().unwrap();
            let half = half.clone();
            std::thread::spawn(move || {
                s.set_nonblocking(false).unwrap();
                s.set_write_timeout(Some(Duration::from_secs(3))).unwrap();
                let _ = s.write_all(&half);
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    // While they are open: at most each shard's budget (32 MiB by default, 2 shards) in
    // frames, plus slack for the allocator; 48 × 8 MiB (384 MiB) before the budget counted
    // partial frames.
    let during = broker.rss_bytes();
    eprintln!(
        "48 half frames open: RSS {} MiB, baseline {} MiB",
        during / MIB,
        baseline / MIB
    );
    assert!(
        during <= baseline + 2 * 32 * MIB + 32 * MIB,
        "RSS {} MiB with 48 half frames open (baseline {} MiB)",
        during / MIB,
        baseline / MIB
    );
    produce_and_consume(&broker, 1);
    drop(halves);
    // Once they are closed their buffers are freed: RSS returns near the baseline. The
    // allocator may keep up to a freed buffer per shard (16 MiB each) in its arenas.
    let bound = baseline + 2 * 16 * MIB + 16 * MIB;
    let settled = common::eventually(Duration::from_secs(20), || {
        produce_and_consume_quiet(&broker);
        broker.rss_bytes() <= bound
    });
    eprintln!("after close: RSS {} MiB", broker.rss_bytes() / MIB);
    assert!(
        settled,
        "RSS {} MiB after the connections closed, over {} MiB (baseline {} MiB, {} MiB while open)",
        broker.rss_bytes() / MIB,
        bound / MIB,
        baseline / MIB,
        during / MIB
    );
}

/// A request that proves the broker serves, without counting records.
fn produce_and_consume_quiet(broker: &Broker) {
    let _ = broker.client().list_topics();
}

#[test]
fn a_silent_connection_is_closed_after_the_idle_timeout() {
    let broker = Broker::start(&["--cores", "1", "--idle-timeout-ms", "500"]);
    let mut silent = TcpStream::connect(broker.addr).unwrap();
    // The Kafka listener's connections are read by the same loop.
    let mut kafka_silent = broker.kafka.map(|k| TcpStream::connect(k).unwrap());
    // A client that keeps asking is not idle, though it lives longer than the timeout.
    let mut busy = broker.client();
    for _ in 0..10 {
        busy.api_versions().unwrap();
        std::thread::sleep(Duration::from_millis(150));
    }
    assert!(closed_within(&mut silent, Duration::from_secs(10)));
    if let Some(k) = &mut kafka_silent {
        assert!(closed_within(k, Duration::from_secs(10)));
    }
    let silent_ones = 1 + usize::from(kafka_silent.is_some());
    broker.wait_for_log("idle for --idle-timeout-ms (500 ms)", silent_ones);
    busy.api_versions().unwrap();
}

#[test]
fn a_frame_that_stops_arriving_is_closed_after_the_request_read_timeout() {
    let broker = Broker::start(&[
        "--cores",
        "1",
        "--request-read-timeout-ms",
        "500",
        "--idle-timeout-ms",
        "600000",
    ]);
    let mut stalled = TcpStream::connect(broker.addr).unwrap();
    stalled.write_all(&announce(100)).unwrap();
    stalled.write_all(&[0u8; 10]).unwrap();
    assert!(closed_within(&mut stalled, Duration::from_secs(10)));
    broker.wait_for_log(
        "a request did not arrive within --request-read-timeout-ms",
        1,
    );
    // A prefix cut short counts as a frame started, too.
    let mut cut = TcpStream::connect(broker.addr).unwrap();
    cut.write_all(&[0u8, 0]).unwrap();
    assert!(closed_within(&mut cut, Duration::from_secs(10)));
    broker.client().api_versions().unwrap();
}

/// Connects and makes one call; the error's text if it fails.
fn try_client(broker: &Broker) -> Result<Client, String> {
    let mut c = Client::connect(broker.addr).map_err(|e| e.to_string())?;
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.api_versions().map_err(|e| e.to_string())?;
    Ok(c)
}

#[test]
fn silent_sockets_lock_nobody_out_once_the_idle_timeout_passes() {
    let broker = Broker::start(&[
        "--cores",
        "2",
        "--max-connections",
        "100",
        // Long enough for all 100 to be accepted and a client refused on a loaded machine.
        "--idle-timeout-ms",
        "8000",
    ]);
    // A few more than the bound: with two shards accepting, a later connection can be
    // accepted before an earlier one, so which 100 hold the slots is not known.
    let silent: Vec<TcpStream> = (0..105)
        .map(|_| TcpStream::connect(broker.addr).unwrap())
        .collect();
    // Once the 5 over the bound are refused, the other 100 hold every slot.
    broker.wait_for_log("maximum of 100 connections: refusing a connection", 5);
    // A client is refused, and told why.
    let refused = try_client(&broker)
        .err()
        .expect("the 106th connection is refused");
    assert!(
        refused.contains("too many connections"),
        "the refusal says why: {refused}"
    );
    // The idle timeout frees the slots.
    assert!(
        common::eventually(Duration::from_secs(30), || try_client(&broker).is_ok()),
        "a client is served once the silent sockets timed out"
    );
    drop(silent);
}

#[test]
fn connections_over_the_per_ip_bound_are_refused_as_too_many() {
    let broker = Broker::start(&["--cores", "2", "--max-connections-per-ip", "2"]);
    let a = try_client(&broker).unwrap();
    let _b = try_client(&broker).unwrap();
    let err = try_client(&broker).err().expect("the third is refused");
    assert!(err.contains("too many connections"), "{err}");
    assert!(err.contains("from 127.0.0.1"), "{err}");
    // The Kafka listener counts the same connections: it is closed without an answer.
    if let Some(kafka) = broker.kafka {
        let mut k = TcpStream::connect(kafka).unwrap();
        assert!(closed_within(&mut k, Duration::from_secs(10)));
    }
    drop(a);
    assert!(common::eventually(Duration::from_secs(10), || try_client(
        &broker
    )
    .is_ok()));
}

#[test]
fn a_producer_refused_on_its_own_connection_says_too_many_connections() {
    let broker = Broker::start(&["--cores", "1", "--max-connections-per-ip", "2"]);
    let mut c = try_client(&broker).unwrap();
    c.create_topic("full", 1, &[]).unwrap();
    // `c` holds one slot and the producer's metadata connection the other: the connection
    // it produces on is refused, and that is the error its records fail with.
    let mut producer = std::process::Command::new(env!("CARGO_BIN_EXE_eventflow"))
        .args(["produce", "full", "--delivery-timeout-ms", "1500"])
        .env("EVENTFLOW_BOOTSTRAP", broker.addr.to_string())
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut input = producer.stdin.take().unwrap();
        writeln!(input, "one").unwrap();
    }
    let out = producer.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("error: 1 record failed; first: broker error: too many connections"),
        "{stderr}"
    );
    assert!(stderr.contains("too many connections"), "{stderr}");
    drop(c);
}
