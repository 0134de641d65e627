//! Consumer-group rebalance time: how long until every member works in the new generation
//! with a complete, non-overlapping assignment, after a member joins, after one leaves
//! (closes), and after one dies (stops heartbeating without leaving).
//!
//! Start a broker, then:
//! `cargo run --release --example rebalance_time -- [ADDR] [MEMBERS] [PARTITIONS] [HEARTBEAT_MS] [SESSION_MS] [ROUNDS]`
//! Defaults: 127.0.0.1:9292, 3 members, 12 partitions, 100 ms heartbeats, 2 s sessions,
//! 5 rounds. Each member runs on its own thread, polling every 20 ms; the main thread
//! watches their reported generations and partitions.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eventflow::client::consumer::{Consumer, ConsumerConfig};
use eventflow::client::group::{GroupConfig, OffsetReset};
use eventflow::client::Client;
use eventflow::protocol::api::{JoinGroupRequest, Request};

type Report = Arc<Mutex<(u32, Vec<(String, u32)>)>>;

struct Member {
    stop: Arc<AtomicBool>,
    report: Report,
    thread: std::thread::JoinHandle<()>,
}

fn start(addr: &str, group: &str, topic: &str, config: &GroupConfig) -> Member {
    let mut c = Consumer::new(ConsumerConfig {
        bootstrap: addr.to_string(),
        max_wait: Duration::from_millis(20),
        ..ConsumerConfig::default()
    })
    .expect("connect");
    c.subscribe(group, &[topic], config.clone())
        .expect("subscribe");
    let stop = Arc::new(AtomicBool::new(false));
    let report: Report = Arc::default();
    let (s, r) = (stop.clone(), report.clone());
    let thread = std::thread::spawn(move || {
        while !s.load(Ordering::SeqCst) {
            c.poll(Duration::from_millis(20)).expect("poll");
            *r.lock().unwrap() = c.group_assignment().unwrap();
        }
        c.close().expect("close");
    });
    Member {
        stop,
        report,
        thread,
    }
}

/// Waits until every member reports one generation (above `after`) and the partitions
/// 0..n exactly once; returns the time taken.
fn settle(members: &[Member], n: u32, after: u32, since: Instant) -> (Duration, u32) {
    loop {
        let reports: Vec<(u32, Vec<(String, u32)>)> = members
            .iter()
            .map(|m| m.report.lock().unwrap().clone())
            .collect();
        let generations: BTreeSet<u32> = reports.iter().map(|r| r.0).collect();
        let mut all: Vec<u32> = reports
            .iter()
            .flat_map(|r| r.1.iter().map(|p| p.1))
            .collect();
        all.sort_unstable();
        if generations.len() == 1
            && generations.iter().all(|g| *g > after)
            && all == (0..n).collect::<Vec<u32>>()
        {
            return (since.elapsed(), *generations.iter().next().unwrap());
        }
        assert!(
            since.elapsed() < Duration::from_secs(60),
            "no settled assignment"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, default: &str| args.get(i).cloned().unwrap_or_else(|| default.into());
    let addr = arg(0, "127.0.0.1:9292");
    let members: usize = arg(1, "3").parse()?;
    let partitions: u32 = arg(2, "12").parse()?;
    let heartbeat = Duration::from_millis(arg(3, "100").parse()?);
    let session = Duration::from_millis(arg(4, "2000").parse()?);
    let rounds: usize = arg(5, "5").parse()?;
    let topic = format!("rebalance-{}", std::process::id());
    Client::connect(addr.as_str())?.create_topic(&topic, partitions, &[])?;
    let config = GroupConfig {
        session_timeout: session,
        heartbeat_interval: heartbeat,
        reset: OffsetReset::Earliest,
        ..GroupConfig::default()
    };
    let (mut joins, mut leaves, mut deaths) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let group = format!("{topic}-{round}");
        let mut group_members: Vec<Member> = (0..members)
            .map(|_| start(&addr, &group, &topic, &config))
            .collect();
        let (_, generation) = settle(&group_members, partitions, 0, Instant::now());

        let joined_at = Instant::now();
        group_members.push(start(&addr, &group, &topic, &config));
        let (took, generation) = settle(&group_members, partitions, generation, joined_at);
        joins.push(took);

        let leaver = group_members.pop().unwrap();
        let left_at = Instant::now();
        leaver.stop.store(true, Ordering::SeqCst);
        leaver.thread.join().unwrap();
        let (took, generation) = settle(&group_members, partitions, generation, left_at);
        leaves.push(took);

        // A member that joins and then never heartbeats: it dies holding partitions.
        let mut ghost = Client::connect(addr.as_str())?;
        ghost.call(Request::JoinGroup(JoinGroupRequest {
            group: group.clone(),
            member_id: String::new(),
            client_id: "ghost".into(),
            topics: vec![topic.clone()],
            session_timeout_ms: session.as_millis() as u32,
            strategy: config.strategy.clone(),
        }))?;
        let died_at = Instant::now();
        let (took, _) = settle(&group_members, partitions, generation + 1, died_at);
        deaths.push(took);
        for m in group_members {
            m.stop.store(true, Ordering::SeqCst);
            m.thread.join().unwrap();
        }
    }
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    println!(
        "{members} members, {partitions} partitions, heartbeat {heartbeat:?}, session {session:?}, {rounds} rounds (medians):"
    );
    println!(
        "  member joins:  every member in the new generation after {:?}",
        median(&mut joins)
    );
    println!(
        "  member leaves: every member in the new generation after {:?}",
        median(&mut leaves)
    );
    println!(
        "  member dies:   its partitions owned again after {:?}",
        median(&mut deaths)
    );
    Ok(())
}
