//! The postgres-sink against a real PostgreSQL server that the test starts itself
//! (`initdb` into a temporary directory, `postgres` on a loopback port, run as the
//! `postgres` user when the test runs as root, since PostgreSQL refuses root), with a real
//! broker and the runner as a process: upserts, tombstones, bad records, PostgreSQL
//! restarted mid-stream and the runner killed with kill -9.
//!
//! Without PostgreSQL's server binaries (Debian's `postgresql` package) the tests are
//! skipped with a line saying so, unless `EVENTFLOW_REQUIRE_POSTGRES=1` (CI) makes that a
//! failure.

#[allow(dead_code)] // Each test binary uses a part of the harness.
mod common;

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use eventflow::client::producer::{Producer, ProducerConfig, Record};

use common::{eventually, Broker, Runner};

const WAIT: Duration = Duration::from_secs(60);

/// The newest PostgreSQL's server binaries, as Debian installs them; `None` (after a
/// line saying the test is skipped) when there are none, a failure when
/// `EVENTFLOW_REQUIRE_POSTGRES=1`.
fn postgres_bin() -> Option<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    found.sort();
    if let Some((_, bin)) = found.pop() {
        return Some(bin);
    }
    if std::env::var("EVENTFLOW_REQUIRE_POSTGRES").as_deref() == Ok("1") {
        panic!("EVENTFLOW_REQUIRE_POSTGRES=1 but PostgreSQL is not installed (apt-get install postgresql)");
    }
    let line = "skipped: PostgreSQL is not installed (apt-get install postgresql; \
                EVENTFLOW_REQUIRE_POSTGRES=1 makes this a failure)\n";
    let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
    None
}

/// The uid and gid of the `postgres` user.
fn postgres_user() -> (u32, u32) {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    let fields: Vec<&str> = passwd
        .lines()
        .map(|line| line.split(':').collect::<Vec<_>>())
        .find(|f| f[0] == "postgres")
        .expect("no postgres user (Debian's postgresql package creates it)");
    (fields[2].parse().unwrap(), fields[3].parse().unwrap())
}

/// A PostgreSQL server of its own: a cluster in a temporary directory, on a loopback
/// port; stopped when dropped.
struct Postgres {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    /// Who the server runs as (`None`: this process's user).
    user: Option<(u32, u32)>,
    child: Option<Child>,
}

impl Postgres {
    fn start(bin: PathBuf) -> Postgres {
        let dir = tempfile::tempdir().unwrap();
        // SAFETY: geteuid has no preconditions.
        let user = (unsafe { libc::geteuid() } == 0).then(postgres_user);
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut pg = Postgres {
            bin,
            dir,
            port,
            user,
            child: None,
        };
        let status = pg
            .command("initdb")
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
                "-D",
            ])
            .arg(pg.data())
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "initdb failed: {status}");
        pg.run();
        pg
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// One of PostgreSQL's programs, as the server's user.
    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(self.bin.join(program));
        if let Some((uid, gid)) = self.user {
            command.uid(uid).gid(gid);
        }
        command.stderr(Stdio::null());
        command
    }

    /// Starts the server and waits until it takes connections.
    fn run(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("server.log"))
            .unwrap();
        let child = self
            .command("postgres")
            .arg("-D")
            .arg(self.data())
            .args(["-p", &self.port.to_string(), "-k"])
            .arg(self.dir.path())
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        assert!(
            eventually(WAIT, || postgres::Client::connect(
                &self.connection(),
                postgres::NoTls
            )
            .is_ok()),
            "PostgreSQL did not start: {}",
            std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
        );
    }

    /// Fast shutdown (SIGINT: open transactions are aborted, clients disconnected).
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: a plain kill(2) of our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
            child.wait().unwrap();
        }
    }

    fn connection(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres",
            self.port
        )
    }

    fn client(&self) -> postgres::Client {
        postgres::Client::connect(&self.connection(), postgres::NoTls).unwrap()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Sends `records` (key, value) to `topic` and waits for every acknowledgement.
fn produce(broker: &Broker, topic: &str, records: &[(Option<String>, Option<String>)]) {
    let producer = Producer::new(ProducerConfig {
        bootstrap: broker.addr.clone(),
        ..ProducerConfig::default()
    })
    .unwrap();
    let deliveries: Vec<_> = records
        .iter()
        .map(|(key, value)| {
            producer
                .send(Record {
                    topic,
                    key: key.as_deref().map(str::as_bytes),
                    value: value.as_deref().map(str::as_bytes),
                    ..Record::default()
                })
                .unwrap()
        })
        .collect();
    for delivery in deliveries {
        delivery.wait().unwrap();
    }
}

/// An account record: key `id`, value a JSON object.
fn account(id: u32, balance: u32) -> (Option<String>, Option<String>) {
    (
        Some(id.to_string()),
        Some(format!(
            r#"{{"owner": "owner-{id}", "balance": {balance}, "tags": {{"n": {balance}}}}}"#
        )),
    )
}

/// The table's rows: id → (owner, balance, tags).
fn rows(pg: &Postgres) -> std::collections::BTreeMap<i32, (String, i64, serde_json::Value)> {
    pg.client()
        .query(
            "SELECT id, owner, balance::bigint, tags::text FROM accounts",
            &[],
        )
        .unwrap()
        .iter()
        .map(|row| {
            let tags: Option<String> = row.get(3);
            let tags = tags.map_or(serde_json::Value::Null, |t| {
                serde_json::from_str(&t).unwrap()
            });
            (row.get(0), (row.get(1), row.get(2), tags))
        })
        .collect()
}

/// The runner's config: one postgres-sink from `accounts` into table `accounts`.
fn config(broker: &Broker, pg: &Postgres, dir: &Path, extra: &str) -> PathBuf {
    let path = dir.join("connect.toml");
    std::fs::write(
        &path,
        format!(
            r#"
bootstrap = "{addr}"
state_dir = "{state}"

[[connector]]
name = "pg"
kind = "postgres-sink"
connection = "{connection}"
table = "accounts"
topics = ["accounts"]
session_timeout_ms = 1000
batch_size = 100
{extra}
"#,
            addr = broker.addr,
            state = dir.join("state").display(),
            connection = pg.connection(),
        ),
    )
    .unwrap();
    path
}

/// Runs the runner until it exits by itself (its only connector failed), for at most
/// [`WAIT`].
fn run_to_exit(config: &Path, log: &Path) -> std::process::ExitStatus {
    let out = std::fs::File::create(log).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_eventflow-connect"))
        .arg(config)
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    let mut status = None;
    let exited = eventually(WAIT, || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    if !exited {
        child.kill().unwrap();
        child.wait().unwrap();
        panic!(
            "the runner did not exit: {}",
            std::fs::read_to_string(log).unwrap()
        );
    }
    status.unwrap()
}

fn create_table(pg: &Postgres) {
    pg.client()
        .batch_execute(
            "CREATE TABLE accounts (id integer PRIMARY KEY, owner text NOT NULL, \
             balance numeric, tags jsonb)",
        )
        .unwrap();
}

/// Overwrites end as the last record of each key, a tombstone deletes its row, bad records
/// are skipped and counted (`errors_tolerance = "all"`); PostgreSQL restarted while records
/// flow and the runner killed with kill -9 lose nothing.
#[test]
fn upserts_deletes_and_loses_nothing_across_restarts() {
    let Some(bin) = postgres_bin() else { return };
    let mut pg = Postgres::start(bin);
    create_table(&pg);
    let broker = Broker::start();
    broker.create_topic("accounts", 2);
    let dir = tempfile::tempdir().unwrap();
    let config = config(&broker, &pg, dir.path(), r#"errors_tolerance = "all""#);
    let log = dir.path().join("connect.log");

    // 50 accounts written 4 times each, one deleted, and five bad records.
    let mut records: Vec<_> = (0..200).map(|i| account(i % 50, i)).collect();
    records.push((Some("7".into()), None));
    records.push((Some("900".into()), Some("not json".into())));
    records.push((Some("901".into()), Some("[1, 2]".into())));
    records.push((
        Some("902".into()),
        Some(r#"{"owner": "x", "nope": 1}"#.into()),
    ));
    records.push((None, Some(r#"{"owner": "x"}"#.into())));
    records.push((
        Some("903".into()),
        Some(r#"{"owner": "x", "balance": "lots"}"#.into()),
    ));
    produce(&broker, "accounts", &records);

    let mut expected = std::collections::BTreeMap::new();
    for k in (0..50).filter(|k| *k != 7) {
        let balance = 150 + k;
        expected.insert(
            k,
            (
                format!("owner-{k}"),
                i64::from(balance),
                serde_json::json!({ "n": balance }),
            ),
        );
    }
    let runner = Runner::start(&config, &log);
    assert!(
        eventually(WAIT, || rows(&pg) == expected),
        "{}",
        runner.log()
    );
    assert!(
        eventually(WAIT, || runner.log().matches("skipped record").count() == 5),
        "{}",
        runner.log()
    );
    let log_text = runner.log();
    assert!(log_text.contains("the value is not JSON"), "{log_text}");
    assert!(
        log_text.contains("the value is not a JSON object"),
        "{log_text}"
    );
    assert!(
        log_text.contains("the table has no column `nope`"),
        "{log_text}"
    );
    assert!(log_text.contains("the record has no key"), "{log_text}");
    assert!(log_text.contains("PostgreSQL refused it"), "{log_text}");

    // PostgreSQL restarted while 2000 new accounts flow in.
    std::thread::scope(|scope| {
        let producer = scope.spawn(|| {
            for chunk in 0..20u32 {
                let records: Vec<_> = (0..100)
                    .map(|i| account(1000 + chunk * 100 + i, i))
                    .collect();
                produce(&broker, "accounts", &records);
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        std::thread::sleep(Duration::from_millis(300));
        pg.stop();
        std::thread::sleep(Duration::from_secs(1));
        pg.run();
        producer.join().unwrap();
    });
    for id in 1000..3000u32 {
        let i = (id - 1000) % 100;
        expected.insert(
            id as i32,
            (
                format!("owner-{id}"),
                i64::from(i),
                serde_json::json!({ "n": i }),
            ),
        );
    }
    assert!(
        eventually(WAIT, || rows(&pg).len() == expected.len()),
        "{} of {} rows\n{}",
        rows(&pg).len(),
        expected.len(),
        runner.log()
    );
    assert_eq!(rows(&pg), expected);
    assert!(
        runner.log().contains("trying again"),
        "the restart went unnoticed: {}",
        runner.log()
    );

    // kill -9 while 1000 more flow in, then a new runner takes over.
    std::thread::scope(|scope| {
        let producer = scope.spawn(|| {
            for chunk in 0..10u32 {
                let records: Vec<_> = (0..100)
                    .map(|i| account(5000 + chunk * 100 + i, i))
                    .collect();
                produce(&broker, "accounts", &records);
                std::thread::sleep(Duration::from_millis(30));
            }
        });
        std::thread::sleep(Duration::from_millis(150));
        runner.kill9();
        producer.join().unwrap();
    });
    for id in 5000..6000u32 {
        let i = (id - 5000) % 100;
        expected.insert(
            id as i32,
            (
                format!("owner-{id}"),
                i64::from(i),
                serde_json::json!({ "n": i }),
            ),
        );
    }
    let runner = Runner::start(&config, &log);
    assert!(
        eventually(WAIT, || rows(&pg).len() == expected.len()),
        "{} of {} rows\n{}",
        rows(&pg).len(),
        expected.len(),
        runner.log()
    );
    assert_eq!(rows(&pg), expected);
    let status = runner.terminate();
    assert!(status.success(), "exit {status}");
}

/// A missing table stops the connector. With `errors_tolerance = none` (the default) a
/// record that lacks a configured column stops the connector, naming the record, and
/// nothing of its batch is written; run again with `all`, the batch's good records are
/// written and the bad one skipped.
#[test]
fn a_bad_record_stops_the_sink_by_default() {
    let Some(bin) = postgres_bin() else { return };
    let pg = Postgres::start(bin);
    create_table(&pg);
    let broker = Broker::start();
    broker.create_topic("accounts", 1);
    let dir = tempfile::tempdir().unwrap();
    produce(
        &broker,
        "accounts",
        &[
            account(1, 10),
            (Some("2".into()), Some(r#"{"owner": "two"}"#.into())),
            account(3, 30),
        ],
    );
    let columns = r#"columns = ["owner", "balance"]"#;
    let config_path = config(&broker, &pg, dir.path(), columns);
    let log = dir.path().join("connect.log");

    // A table that does not exist stops the connector at once, with PostgreSQL's word.
    let text = std::fs::read_to_string(&config_path).unwrap();
    std::fs::write(
        &config_path,
        text.replace("\"accounts\"\ntopics", "\"ledger\"\ntopics"),
    )
    .unwrap();
    assert!(!run_to_exit(&config_path, &log).success());
    let log_text = std::fs::read_to_string(&log).unwrap();
    assert!(
        log_text.contains("connector pg FAILED") && log_text.contains("\"ledger\" does not exist"),
        "{log_text}"
    );
    std::fs::write(&config_path, text).unwrap();
    let status = run_to_exit(&config_path, &log);
    assert!(!status.success());
    let log_text = std::fs::read_to_string(&log).unwrap();
    assert!(log_text.contains("connector pg FAILED"), "{log_text}");
    assert!(
        log_text.contains("record accounts/0 offset 1: the object has no field `balance`"),
        "{log_text}"
    );
    assert!(log_text.contains("errors_tolerance"), "{log_text}");
    assert!(rows(&pg).is_empty());

    let config_path = config(
        &broker,
        &pg,
        dir.path(),
        &format!("{columns}\nerrors_tolerance = \"all\""),
    );
    let runner = Runner::start(&config_path, &log);
    assert!(
        eventually(WAIT, || rows(&pg).keys().copied().collect::<Vec<_>>()
            == [1, 3]),
        "{}",
        runner.log()
    );
    // Only the configured columns are written.
    assert_eq!(
        rows(&pg)[&1],
        ("owner-1".into(), 10, serde_json::Value::Null)
    );
    assert!(runner.terminate().success());
}
