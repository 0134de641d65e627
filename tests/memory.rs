//! The broker's memory follows its configuration, not its history: waits that end another
//! way than by their wake-up (a long-poll that times out, a connection that closes) leave
//! nothing behind in the notifiers they waited on. A leak here grows with every request:
//! each leaked waker keeps its task's whole allocation alive.

mod common;

use std::net::TcpStream;
use std::time::Duration;

use common::Broker;
use eventflow::client::Client;

/// Long-polls that time out on an idle partition, from several connections at once.
fn long_polls(broker: &Broker, threads: usize, each: usize) {
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let addr = broker.addr;
            std::thread::spawn(move || {
                let mut c = Client::connect(addr).unwrap();
                c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                for _ in 0..each {
                    // At the end of an empty log: the fetch parks on the owner, then its
                    // 1 ms deadline ends the wait.
                    let p = c
                        .fetch("idle", 0, 0, 1 << 20, Duration::from_millis(1), 1)
                        .unwrap();
                    assert!(p.records.is_empty());
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
}

/// Connections opened and closed without a request.
fn connection_cycles(broker: &Broker, n: usize) {
    for _ in 0..n {
        drop(TcpStream::connect(broker.addr).unwrap());
    }
    // Every closed connection has been noticed: a new one is served.
    broker.client().list_topics().unwrap();
}

#[test]
fn long_polls_and_connection_cycles_leave_memory_flat() {
    let broker = Broker::start(&["--cores", "2"]);
    broker.client().create_topic("idle", 1, &[]).unwrap();
    // Warm up allocator pools and buffers first.
    long_polls(&broker, 4, 500);
    connection_cycles(&broker, 2_000);
    let before = broker.rss_bytes();
    long_polls(&broker, 8, 2_500);
    connection_cycles(&broker, 20_000);
    let after = broker.rss_bytes();
    let grown = after.saturating_sub(before);
    // 20,000 of each: a waker leaked per wait would keep 20,000 task allocations (several
    // KiB each) alive, tens of MiB. Allocator slack stays well under the bound.
    assert!(
        grown < 8 << 20,
        "RSS grew by {} KiB over 20,000 long-polls and 20,000 connections ({} → {} KiB)",
        grown >> 10,
        before >> 10,
        after >> 10
    );
}
