//! Consumer groups against a real broker: the broker's assignment spreads partitions over
//! members, moves a partition only once its old owner has committed and let go (or died),
//! fences stale generations, and keeps committed offsets through kill -9.

mod common;

use std::collections::HashSet;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::{eventually, Broker};
use eventflow::client::consumer::{Consumer, ConsumerConfig};
use eventflow::client::group::{GroupConfig, OffsetReset, RebalanceListener};
use eventflow::client::producer::{Producer, ProducerConfig, Record};
use eventflow::client::{Client, ClientError};
use eventflow::protocol::api::*;
use eventflow::protocol::ErrorCode;

fn group_config() -> GroupConfig {
    GroupConfig {
        session_timeout: Duration::from_secs(2),
        heartbeat_interval: Duration::from_millis(100),
        auto_commit: Some(Duration::from_millis(200)),
        reset: OffsetReset::Earliest,
        ..GroupConfig::default()
    }
}

fn consumer(broker: &Broker) -> Consumer {
    Consumer::new(ConsumerConfig {
        bootstrap: broker.addr.to_string(),
        max_wait: Duration::from_millis(100),
        ..ConsumerConfig::default()
    })
    .unwrap()
}

fn produce(broker: &Broker, topic: &str, n: usize) {
    let producer = Producer::new(ProducerConfig {
        bootstrap: broker.addr.to_string(),
        ..ProducerConfig::default()
    })
    .unwrap();
    for i in 0..n {
        let key = format!("k{i}");
        let value = format!("v{i}");
        producer
            .send(Record {
                topic,
                key: Some(key.as_bytes()),
                value: Some(value.as_bytes()),
                ..Record::default()
            })
            .unwrap();
    }
    producer.flush().unwrap();
}

/// A generation and the partitions held in it.
type Assignment = (u32, Vec<(String, u32)>);

/// A group member on its own thread, recording what it receives.
struct Member {
    stop: Arc<AtomicBool>,
    /// (partition, offset, value) of every record received.
    received: Arc<Mutex<Vec<(u32, i64, String)>>>,
    /// Current (generation, partitions).
    assignment: Arc<Mutex<Assignment>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Member {
    fn start(broker: &Broker, group: &str, topic: &str) -> Member {
        let stop = Arc::new(AtomicBool::new(false));
        let received = Arc::new(Mutex::new(Vec::new()));
        let assignment = Arc::new(Mutex::new((0, Vec::new())));
        let mut c = consumer(broker);
        c.subscribe(group, &[topic], group_config()).unwrap();
        let (s, r, a) = (stop.clone(), received.clone(), assignment.clone());
        let thread = thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                let records = c.poll(Duration::from_millis(50)).unwrap();
                r.lock().unwrap().extend(records.into_iter().map(|rec| {
                    let value = String::from_utf8(rec.value.unwrap().to_vec()).unwrap();
                    (rec.partition, rec.offset, value)
                }));
                *a.lock().unwrap() = c.group_assignment().unwrap();
            }
            c.close().unwrap();
        });
        Member {
            stop,
            received,
            assignment,
            thread: Some(thread),
        }
    }

    fn partitions(&self) -> Vec<u32> {
        self.assignment
            .lock()
            .unwrap()
            .1
            .iter()
            .map(|(_, p)| *p)
            .collect()
    }

    fn generation(&self) -> u32 {
        self.assignment.lock().unwrap().0
    }

    fn stop(mut self) -> Vec<(u32, i64, String)> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.take().unwrap().join().unwrap();
        self.received.lock().unwrap().clone()
    }
}

#[test]
fn members_split_a_topic_and_every_record_arrives_once() {
    let broker = Broker::start(&["--cores", "2"]);
    broker.client().create_topic("orders", 6, &[]).unwrap();
    let members: Vec<Member> = (0..3)
        .map(|_| Member::start(&broker, "billing", "orders"))
        .collect();
    // Stable: one generation everywhere, two partitions each, all six covered.
    let split = eventually(Duration::from_secs(10), || {
        let generations: HashSet<u32> = members.iter().map(Member::generation).collect();
        let mut all: Vec<u32> = members.iter().flat_map(Member::partitions).collect();
        all.sort_unstable();
        generations.len() == 1
            && members.iter().all(|m| m.partitions().len() == 2)
            && all == (0..6).collect::<Vec<u32>>()
    });
    assert!(split, "the members never split the topic");
    produce(&broker, "orders", 3000);
    let total = || {
        members
            .iter()
            .map(|m| m.received.lock().unwrap().len())
            .sum::<usize>()
    };
    assert!(eventually(Duration::from_secs(10), || total() >= 3000));
    thread::sleep(Duration::from_millis(300));
    let mut values: Vec<String> = Vec::new();
    for m in members {
        let partitions = m.partitions();
        for (p, _, v) in m.stop() {
            assert!(
                partitions.contains(&p),
                "record of partition {p} at a non-owner"
            );
            values.push(v);
        }
    }
    assert_eq!(values.len(), 3000, "duplicates or losses");
    let unique: HashSet<String> = values.into_iter().collect();
    assert_eq!(unique.len(), 3000);
}

#[test]
fn a_dead_members_partitions_move_and_resume_from_its_commits() {
    let broker = Broker::start(&["--cores", "2"]);
    broker.client().create_topic("jobs", 4, &[]).unwrap();
    produce(&broker, "jobs", 400);
    // A member that joins, commits, and then dies (never heartbeats again).
    let mut dead = broker.client();
    let joined = match dead
        .call(Request::JoinGroup(JoinGroupRequest {
            group: "workers".into(),
            member_id: String::new(),
            client_id: "doomed".into(),
            topics: vec!["jobs".into()],
            session_timeout_ms: 1500,
            strategy: "sticky".into(),
        }))
        .unwrap()
    {
        Response::JoinGroup(m) => m,
        other => panic!("{other:?}"),
    };
    assert_eq!(joined.assignment[0].partitions, vec![0, 1, 2, 3]);
    let committed: Vec<(&str, u32, i64)> = (0..4).map(|p| ("jobs", p, 10 + i64::from(p))).collect();
    dead.commit_offsets(
        "workers",
        Some((&joined.member_id, joined.generation)),
        &committed,
    )
    .unwrap();

    // The survivor joins; once the dead member's session ends it holds all four partitions
    // and starts each at the dead member's commit.
    let survivor = Member::start(&broker, "workers", "jobs");
    // Only the end of the dead member's 1.5 s session can move its partitions.
    assert!(eventually(Duration::from_secs(10), || {
        survivor.partitions().len() == 4
    }));
    assert!(eventually(Duration::from_secs(10), || {
        survivor.received.lock().unwrap().len() >= 400 - 46
    }));
    let received = survivor.stop();
    for p in 0..4u32 {
        let first = received
            .iter()
            .filter(|(q, _, _)| *q == p)
            .map(|(_, o, _)| *o)
            .min();
        if let Some(first) = first {
            assert_eq!(
                first,
                10 + i64::from(p),
                "partition {p} did not resume at its commit"
            );
        }
    }
    // The dead member's late commit is fenced.
    let err = dead
        .commit_offsets(
            "workers",
            Some((&joined.member_id, joined.generation)),
            &committed,
        )
        .unwrap_err();
    assert!(
        matches!(
            err.code(),
            Some(ErrorCode::UnknownMember | ErrorCode::StaleGeneration)
        ),
        "{err}"
    );
}

#[test]
fn every_group_gets_every_record() {
    let broker = Broker::start(&["--cores", "2"]);
    broker.client().create_topic("events", 3, &[]).unwrap();
    produce(&broker, "events", 500);
    let a = Member::start(&broker, "audit", "events");
    let b = Member::start(&broker, "search", "events");
    assert!(eventually(Duration::from_secs(10), || {
        a.received.lock().unwrap().len() >= 500 && b.received.lock().unwrap().len() >= 500
    }));
    for m in [a, b] {
        let values: HashSet<String> = m.stop().into_iter().map(|(_, _, v)| v).collect();
        assert_eq!(values.len(), 500);
    }
}

#[test]
fn committed_offsets_survive_kill_9_and_describe_shows_them() {
    let mut broker = Broker::start(&["--cores", "2", "--fsync", "always"]);
    broker.client().create_topic("ledger", 2, &[]).unwrap();
    produce(&broker, "ledger", 100);
    let mut c = broker.client();
    c.commit_offsets("reporting", None, &[("ledger", 0, 17), ("ledger", 1, 29)])
        .unwrap();
    broker.kill9();
    broker.restart();
    let mut c = broker.client();
    let mut offsets = c.fetch_offsets("reporting", &[]).unwrap();
    offsets.sort();
    assert_eq!(
        offsets,
        vec![("ledger".into(), 0, 17), ("ledger".into(), 1, 29)]
    );
    let d = c.describe_group("reporting").unwrap();
    assert_eq!(d.state, "empty");
    assert_eq!(d.offsets.len(), 1);
    let groups = c.list_groups().unwrap();
    assert!(groups
        .iter()
        .any(|g| g.group == "reporting" && g.kind == "consumer"));
    // Delete forgets the offsets, also across a restart.
    c.delete_group("reporting").unwrap();
    broker.kill9();
    broker.restart();
    let mut c = broker.client();
    assert_eq!(
        c.fetch_offsets("reporting", &[("ledger", 0)]).unwrap()[0].2,
        -1
    );
    assert_eq!(
        c.describe_group("reporting").unwrap_err().code(),
        Some(ErrorCode::UnknownGroup)
    );
}

#[test]
fn bad_group_requests_get_clear_errors() {
    let broker = Broker::start(&[]);
    broker.client().create_topic("t", 2, &[]).unwrap();
    let mut c = broker.client();
    let code = |r: Result<Response, ClientError>| r.unwrap_err().code();
    // Unknown group and member.
    let beat = |c: &mut Client, group: &str, member: &str, generation| {
        c.call(Request::Heartbeat(HeartbeatRequest {
            group: group.into(),
            member_id: member.into(),
            generation,
        }))
    };
    assert_eq!(
        code(beat(&mut c, "nobody", "m", 1)),
        Some(ErrorCode::UnknownMember)
    );
    assert_eq!(
        c.describe_group("nobody").unwrap_err().code(),
        Some(ErrorCode::UnknownGroup)
    );
    let join = |c: &mut Client, timeout_ms, strategy: &str| {
        c.call(Request::JoinGroup(JoinGroupRequest {
            group: "g".into(),
            member_id: String::new(),
            client_id: "test".into(),
            topics: vec!["t".into()],
            session_timeout_ms: timeout_ms,
            strategy: strategy.into(),
        }))
    };
    assert_eq!(
        code(join(&mut c, 10, "sticky")),
        Some(ErrorCode::InvalidSessionTimeout)
    );
    let long = "g".repeat(250);
    assert_eq!(
        c.describe_group(&long).unwrap_err().code(),
        Some(ErrorCode::InvalidRequest)
    );
    assert_eq!(
        code(join(&mut c, 10_000, "fastest")),
        Some(ErrorCode::InvalidRequest)
    );
    let first = match join(&mut c, 10_000, "range").unwrap() {
        Response::JoinGroup(m) => m,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        code(join(&mut c, 10_000, "sticky")),
        Some(ErrorCode::InconsistentGroup)
    );
    assert_eq!(
        code(beat(&mut c, "g", "stranger", 1)),
        Some(ErrorCode::UnknownMember)
    );
    // A second member moves the group on. Partition 1 is its target, but the first member
    // holds it until it acknowledges letting go: it may still commit it, the second may not.
    let second = match join(&mut c, 10_000, "range").unwrap() {
        Response::JoinGroup(m) => m,
        other => panic!("{other:?}"),
    };
    assert_eq!(second.generation, first.generation + 1);
    assert!(second.assignment.is_empty(), "{second:?}");
    c.commit_offsets(
        "g",
        Some((&first.member_id, first.generation)),
        &[("t", 0, 5), ("t", 1, 5)],
    )
    .unwrap();
    let early = c
        .commit_offsets(
            "g",
            Some((&second.member_id, second.generation)),
            &[("t", 1, 6)],
        )
        .unwrap_err();
    assert_eq!(early.code(), Some(ErrorCode::StaleGeneration), "{early}");
    assert!(early.to_string().contains("not held"), "{early}");
    // The first member hears it keeps partition 0 and acknowledges: partition 1 goes to
    // the second member, and the first member's old generation is stale for commits.
    let told = match beat(&mut c, "g", &first.member_id, first.generation).unwrap() {
        Response::Heartbeat(m) => m,
        other => panic!("{other:?}"),
    };
    assert_eq!(told.assignment[0].partitions, [0]);
    beat(&mut c, "g", &first.member_id, told.generation).unwrap();
    let second = match beat(&mut c, "g", &second.member_id, second.generation).unwrap() {
        Response::Heartbeat(m) => m,
        other => panic!("{other:?}"),
    };
    assert_eq!(second.assignment[0].partitions, [1]);
    let err = c
        .commit_offsets(
            "g",
            Some((&first.member_id, first.generation)),
            &[("t", 0, 5)],
        )
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::StaleGeneration), "{err}");
    assert!(err.to_string().contains("stale"), "{err}");
    let moved = c
        .commit_offsets(
            "g",
            Some((&first.member_id, told.generation)),
            &[("t", 1, 7)],
        )
        .unwrap_err();
    assert_eq!(moved.code(), Some(ErrorCode::StaleGeneration), "{moved}");
    // A standalone commit needs an empty group; delete too.
    assert_eq!(
        c.commit_offsets("g", None, &[("t", 0, 5)])
            .unwrap_err()
            .code(),
        Some(ErrorCode::GroupNotEmpty)
    );
    assert_eq!(
        c.delete_group("g").unwrap_err().code(),
        Some(ErrorCode::GroupNotEmpty)
    );
    // A commit for a partition the member does not hold is refused for that partition.
    assert_eq!(second.assignment[0].partitions.len(), 1, "{second:?}");
    let not_held = 1 - second.assignment[0].partitions[0];
    let err = c
        .commit_offsets(
            "g",
            Some((&second.member_id, second.generation)),
            &[("t", not_held, 3)],
        )
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::StaleGeneration), "{err}");
}

/// Revocations and assignments reach the listener.
#[test]
fn the_rebalance_listener_hears_both_sides() {
    #[derive(Clone, Default)]
    struct Log(Arc<Mutex<Vec<String>>>);
    impl RebalanceListener for Log {
        fn on_revoked(&mut self, partitions: &[(String, u32)]) {
            self.0
                .lock()
                .unwrap()
                .push(format!("revoked {}", partitions.len()));
        }
        fn on_assigned(&mut self, partitions: &[(String, u32)]) {
            self.0
                .lock()
                .unwrap()
                .push(format!("assigned {}", partitions.len()));
        }
    }
    let broker = Broker::start(&[]);
    broker.client().create_topic("t", 4, &[]).unwrap();
    let log = Log::default();
    let mut first = consumer(&broker);
    first.set_rebalance_listener(log.clone());
    first.subscribe("g", &["t"], group_config()).unwrap();
    assert_eq!(log.0.lock().unwrap().clone(), vec!["assigned 4"]);
    let second = Member::start(&broker, "g", "t");
    let deadline = Instant::now() + Duration::from_secs(10);
    while log.0.lock().unwrap().len() < 2 && Instant::now() < deadline {
        first.poll(Duration::from_millis(50)).unwrap();
    }
    assert_eq!(
        log.0.lock().unwrap().clone(),
        vec!["assigned 4", "revoked 2"]
    );
    assert_eq!(first.group_assignment().unwrap().1.len(), 2);
    second.stop();
}

/// The reproduction: 2,000 records on 2 partitions, `eventflow consume --group
/// billing --from-beginning` started twice 0.3 s apart. The second member may take over a
/// partition only once the first has committed its progress there and let go, so every
/// record is printed once over both consumers.
#[test]
fn a_second_cli_member_resumes_where_the_first_committed() {
    let broker = Broker::start(&["--cores", "2"]);
    broker.client().create_topic("orders", 2, &[]).unwrap();
    produce(&broker, "orders", 2000);
    let consume = || {
        Command::new(env!("CARGO_BIN_EXE_eventflow"))
            .args([
                "consume",
                "orders",
                "--group",
                "billing",
                "--from-beginning",
            ])
            .args(["--timeout-ms", "10000", "--format", "%p %o\\n"])
            .env("EVENTFLOW_BOOTSTRAP", broker.addr.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run eventflow")
    };
    let first = consume();
    thread::sleep(Duration::from_millis(300));
    let second = consume();
    // The partition changes owner while both run: each member ends up with one.
    let mut c = broker.client();
    let split = eventually(Duration::from_secs(9), || {
        let d = c.describe_group("billing").unwrap();
        d.members.len() == 2
            && d.members.iter().all(|m| {
                m.assignment
                    .iter()
                    .map(|a| a.partitions.len())
                    .sum::<usize>()
                    == 1
            })
    });
    assert!(split, "{:?}", c.describe_group("billing"));
    let mut printed: Vec<(u32, i64)> = Vec::new();
    for child in [first, second] {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{out:?}");
        for line in String::from_utf8(out.stdout).unwrap().lines() {
            let (p, o) = line.split_once(' ').unwrap();
            printed.push((p.parse().unwrap(), o.parse().unwrap()));
        }
    }
    let unique: HashSet<(u32, i64)> = printed.iter().copied().collect();
    assert_eq!(unique.len(), 2000, "records missing");
    assert_eq!(printed.len(), 2000, "records printed twice");
    let committed: i64 = c
        .fetch_offsets("billing", &[])
        .unwrap()
        .iter()
        .map(|o| o.2)
        .sum();
    assert_eq!(committed, 2000);
}

/// Members join and leave (closing as they go) while a producer writes to six partitions;
/// each commits as it goes (auto-commit) and as it leaves. Every record is delivered, and
/// none twice: a partition changes owner only once its old owner has committed and let go,
/// so the new owner resumes exactly where the old one stopped.
#[test]
fn members_join_and_leave_while_records_flow_and_no_record_is_delivered_twice() {
    let broker = Broker::start(&["--cores", "2"]);
    broker.client().create_topic("flow", 6, &[]).unwrap();
    let stop_producing = Arc::new(AtomicBool::new(false));
    let producer = {
        let (stop, addr) = (stop_producing.clone(), broker.addr.to_string());
        thread::spawn(move || {
            let producer = Producer::new(ProducerConfig {
                bootstrap: addr,
                ..ProducerConfig::default()
            })
            .unwrap();
            let mut sent = 0usize;
            while !stop.load(Ordering::SeqCst) {
                for _ in 0..50 {
                    let key = format!("k{sent}");
                    producer
                        .send(Record {
                            topic: "flow",
                            key: Some(key.as_bytes()),
                            value: Some(b"v"),
                            ..Record::default()
                        })
                        .unwrap();
                    sent += 1;
                }
                producer.flush().unwrap();
                thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let mut c = broker.client();
    let mut settled = |members: usize| {
        let stable = eventually(Duration::from_secs(10), || {
            let d = c.describe_group("flow-readers").unwrap();
            d.state == "stable" && d.members.len() == members
        });
        assert!(stable, "{:?}", c.describe_group("flow-readers"));
    };
    let total = |members: &[Member]| -> usize {
        members
            .iter()
            .map(|m| m.received.lock().unwrap().len())
            .sum()
    };
    let join = |members: &mut Vec<Member>| {
        members.push(Member::start(&broker, "flow-readers", "flow"));
    };
    let mut members: Vec<Member> = Vec::new();
    let mut delivered: Vec<Vec<(u32, i64, String)>> = Vec::new();
    // Join, join, leave, join, join, leave, leave, join, leave: from one to three members,
    // each step once the group is stable again and more records have arrived.
    for step in "+ + - + + - - + -".split(' ') {
        let before = total(&members) + delivered.iter().map(Vec::len).sum::<usize>();
        let more = eventually(Duration::from_secs(10), || {
            total(&members) + delivered.iter().map(Vec::len).sum::<usize>() > before
        });
        assert!(members.is_empty() || more, "no records arrive");
        match step {
            "+" => join(&mut members),
            _ => delivered.push(members.remove(0).stop()),
        }
        settled(members.len());
    }
    stop_producing.store(true, Ordering::SeqCst);
    producer.join().unwrap();
    let ends: Vec<i64> = (0..6)
        .map(|p| c.list_offset("flow", p, offset_spec::LATEST).unwrap())
        .collect();
    let produced: i64 = ends.iter().sum();
    let all_arrived = eventually(Duration::from_secs(20), || {
        let mut seen: HashSet<(u32, i64)> = HashSet::new();
        for m in &members {
            seen.extend(m.received.lock().unwrap().iter().map(|(p, o, _)| (*p, *o)));
        }
        for d in &delivered {
            seen.extend(d.iter().map(|(p, o, _)| (*p, *o)));
        }
        seen.len() as i64 == produced
    });
    assert!(all_arrived, "records missing");
    delivered.extend(members.into_iter().map(Member::stop));

    let mut seen: HashSet<(u32, i64)> = HashSet::new();
    let mut readers: Vec<HashSet<usize>> = vec![HashSet::new(); 6];
    for (member, records) in delivered.iter().enumerate() {
        for (p, o, _) in records {
            assert!(seen.insert((*p, *o)), "{p}/{o} delivered twice");
            readers[*p as usize].insert(member);
        }
    }
    for (p, end) in ends.iter().enumerate() {
        let missing = (0..*end).find(|o| !seen.contains(&(p as u32, *o)));
        assert_eq!(missing, None, "partition {p}");
    }
    // Partitions did change owner mid-stream.
    assert!(readers.iter().any(|r| r.len() > 1), "{readers:?}");
    let mut committed = c.fetch_offsets("flow-readers", &[]).unwrap();
    committed.sort();
    let expected: Vec<(String, u32, i64)> = (0..6)
        .map(|p| ("flow".to_string(), p, ends[p as usize]))
        .collect();
    assert_eq!(committed, expected);
}
