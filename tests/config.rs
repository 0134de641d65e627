//! `eventflowd --config FILE`, `EVENTFLOW_<FLAG>` variables and `--print-config`, driven as
//! a user would: brokers started from a file and checked from outside, precedence (flag >
//! environment > file > default), the printed configuration read back, bad files refused
//! with their line and key, and config/eventflow.example.toml kept in step with `--help`.
//!
//! Every `eventflowd` here runs with an empty environment plus what the test sets, so a
//! developer's own `EVENTFLOW_*` variables cannot change what it sees.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{batch, now_ms, read_all, values};
use eventflow::client::Client;
use eventflow::protocol::api::Acks;

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/config/eventflow.example.toml");

/// `eventflowd` with exactly these arguments and variables (nothing inherited).
fn eventflowd(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_eventflowd"));
    command.env_clear().args(args).env("RUST_LOG", "info");
    for (name, value) in env {
        command.env(name, value);
    }
    command
}

/// What a process that should exit by itself printed.
struct Exited {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Runs `command` to its end; a process still running after 60 s (a broker that started
/// when it should not have) is killed and fails the test.
fn run(mut command: Command) -> Exited {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn eventflowd");
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            child.kill().ok();
            child.wait().ok();
            panic!("eventflowd did not exit within 60 s: {:?}", out.join());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Exited {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

/// `eventflowd --print-config` (plus `args`), which must succeed: its stdout.
fn print_config(args: &[&str], env: &[(&str, &str)]) -> String {
    let mut all = vec!["--print-config"];
    all.extend(args);
    let out = run(eventflowd(&all, env));
    assert!(
        out.status.success(),
        "--print-config failed: {}",
        out.stderr
    );
    assert!(!out.stdout.contains("eventflowd ready"), "{}", out.stdout);
    out.stdout
}

/// A broker started by a test, stopped (SIGTERM) when dropped.
struct Running {
    child: Child,
    listen: SocketAddr,
    direct: String,
    kafka: String,
    shards: String,
}

impl Running {
    fn start(command: Command, log: &Path) -> Running {
        let log_file = std::fs::File::create(log).unwrap();
        let mut command = command;
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file))
            .spawn()
            .expect("spawn eventflowd");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(line) if line.starts_with("eventflowd ready") => line,
            other => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "broker did not become ready ({other:?}); log:\n{}",
                    std::fs::read_to_string(log).unwrap_or_default()
                );
            }
        };
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(name))
                .unwrap_or("")
                .to_string()
        };
        Running {
            listen: field("listen=").parse().expect("listen addr"),
            direct: field("direct="),
            kafka: field("kafka="),
            shards: field("shards="),
            child,
        }
    }

    fn stop(mut self) -> ExitStatus {
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "broker did not stop within 30 s");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port free a moment ago (the kernel does not hand it out again right away).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// Creates a topic, produces to it and reads the records back: the broker at `addr` serves.
fn serves(addr: SocketAddr) {
    let mut client = Client::connect(addr).expect("connect to the configured port");
    client
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    client.create_topic("configured", 1, &[]).unwrap();
    client
        .produce("configured", 0, batch("v", 3, 10, now_ms()), Acks::All)
        .unwrap();
    let got: Vec<String> = read_all(&mut client, "configured", 0, 0)
        .iter()
        .flat_map(values)
        .collect();
    assert_eq!(got, ["v-0", "v-1", "v-2"]);
}

/// A file that keeps a broker off fixed ports other than `listen`'s.
fn broker_file(listen: u16, data_dir: &Path) -> String {
    format!(
        "listen = \"127.0.0.1:{listen}\"\ndata_dir = {:?}\nno_kafka = true\n\
         no_direct_ports = true\nno_metrics = true\nno_http = true\ncores = 1\nfsync = \"never\"\n",
        data_dir.to_str().unwrap()
    )
}

#[test]
fn a_broker_started_from_a_file_serves_where_the_file_says() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let port = free_port();
    let file = write(tmp.path(), "eventflow.toml", &broker_file(port, &data));
    let broker = Running::start(
        eventflowd(&["--config", file.to_str().unwrap()], &[]),
        &tmp.path().join("broker.log"),
    );
    assert_eq!(broker.listen, SocketAddr::from(([127, 0, 0, 1], port)));
    assert_eq!(broker.shards, "1", "cores = 1");
    assert_eq!(broker.kafka, "", "no_kafka = true");
    assert_eq!(broker.direct, "", "no_direct_ports = true");
    serves(broker.listen);
    assert!(
        data.join("configured").is_dir(),
        "the topic lives in the file's data_dir"
    );
    assert!(broker.stop().success());
}

#[test]
fn the_environment_beats_the_file_and_a_flag_beats_both() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let (in_file, in_env, in_flag) = (free_port(), free_port(), free_port());
    let file = write(tmp.path(), "eventflow.toml", &broker_file(in_file, &data));
    let file = file.to_str().unwrap();
    let env_listen = format!("127.0.0.1:{in_env}");
    let env = [("EVENTFLOW_LISTEN", env_listen.as_str())];

    let broker = Running::start(
        eventflowd(&["--config", file], &env),
        &tmp.path().join("env.log"),
    );
    assert_eq!(broker.listen.port(), in_env, "the variable beats the file");
    assert_eq!(broker.shards, "1", "the rest of the file still counts");
    serves(broker.listen);
    assert!(broker.stop().success());

    // The file's path from EVENTFLOW_CONFIG, the listener from the flag.
    let flag_listen = format!("127.0.0.1:{in_flag}");
    let env = [
        ("EVENTFLOW_LISTEN", env_listen.as_str()),
        ("EVENTFLOW_CONFIG", file),
    ];
    let broker = Running::start(
        eventflowd(&["--listen", &flag_listen], &env),
        &tmp.path().join("flag.log"),
    );
    assert_eq!(broker.listen.port(), in_flag, "the flag beats the variable");
    assert_eq!(broker.kafka, "", "the file from EVENTFLOW_CONFIG is read");
    let mut client = Client::connect(broker.listen).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    assert!(
        client.metadata(&["configured"]).is_ok(),
        "the same data_dir, from the file"
    );
    assert!(broker.stop().success());
}

#[test]
fn print_config_says_where_each_value_came_from_and_reads_back() {
    let tmp = tempfile::tempdir().unwrap();
    let file = write(
        tmp.path(),
        "eventflow.toml",
        "fsync = \"interval=5\"\nmax_in_flight = 64\nretention_ms = -1\nno_kafka = true\n",
    );
    let file = file.to_str().unwrap();
    let env = [
        ("EVENTFLOW_MAX_IN_FLIGHT", "32"),
        ("EVENTFLOW_NO_PIN", "true"),
    ];
    let printed = print_config(&["--config", file, "--group-commit-us", "50"], &env);
    let lines: Vec<&str> = printed.lines().collect();
    for expected in [
        format!("fsync = \"interval=5\"  # from {file} line 1"),
        "max_in_flight = 32  # from EVENTFLOW_MAX_IN_FLIGHT".to_string(),
        format!("retention_ms = -1  # from {file} line 3"),
        "no_pin = true  # from EVENTFLOW_NO_PIN".to_string(),
        "group_commit_us = 50  # from flag".to_string(),
        "listen = \"127.0.0.1:9292\"  # default".to_string(),
        "# kafka_listen is not set  # default".to_string(),
        "direct_port_base = 9293  # default".to_string(),
    ] {
        assert!(
            lines.contains(&expected.as_str()),
            "{expected:?} in\n{printed}"
        );
    }

    let table: toml::Table = toml::from_str(&printed).expect("--print-config prints TOML");
    assert_eq!(table["max_in_flight"].as_integer(), Some(32));
    assert_eq!(table["no_pin"].as_bool(), Some(true));
    assert_eq!(table["fsync"].as_str(), Some("interval=5"));
    assert!(!table.contains_key("kafka_listen"));

    // Fed back as the only source, it gives the same configuration, now all from the file.
    let again_path = write(tmp.path(), "printed.toml", &printed);
    let again_path = again_path.to_str().unwrap();
    let again = print_config(&["--config", again_path], &[]);
    let again_table: toml::Table = toml::from_str(&again).unwrap();
    assert_eq!(again_table, table);
    for line in again.lines().filter(|l| !l.starts_with('#')) {
        assert!(
            line.contains(&format!("# from {again_path} line ")),
            "{line:?} should come from the file"
        );
    }
}

/// Runs a broker (which would start and print its ready line) on a bad `text`: it must exit
/// with an error and no data directory. Returns its stderr.
fn refused(text: &str, env: &[(&str, &str)]) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let file = write(tmp.path(), "bad.toml", text);
    let data = tmp.path().join("data");
    let out = run(eventflowd(
        &[
            "--config",
            file.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().unwrap(),
        ],
        env,
    ));
    assert!(!out.status.success(), "{text:?} was accepted");
    assert!(!out.stdout.contains("ready"), "{}", out.stdout);
    assert!(
        !data.exists(),
        "a refused configuration touched the data dir"
    );
    // The message names the file as given: its path in the temporary directory.
    out.stderr.replace(file.to_str().unwrap(), "bad.toml")
}

/// The message a flag's bad value gets on the command line alone.
fn flag_error(args: &[&str]) -> String {
    let out = run(eventflowd(args, &[]));
    assert!(!out.status.success());
    let first = out.stderr.lines().next().unwrap().to_string();
    first
        .strip_prefix("error: ")
        .or_else(|| first.strip_prefix("Error: "))
        .unwrap_or(&first)
        .to_string()
}

#[test]
fn a_bad_file_names_the_line_and_the_key_and_the_broker_does_not_start() {
    let unknown = refused("fsync = \"never\"\n\nmax_queue_bytes = 1\n", &[]);
    assert!(
        unknown.contains(
            "bad.toml line 3: unknown key `max_queue_bytes` (did you mean `max_queued_bytes`?)"
        ),
        "{unknown}"
    );
    let wrong_type = refused("fsync = \"never\"\nno_pin = \"yes\"\n", &[]);
    assert!(
        wrong_type
            .contains("bad.toml line 2, key `no_pin`: expected true or false, found a string"),
        "{wrong_type}"
    );
    let syntax = refused(
        "fsync = \"never\"\nlisten = \"127.0.0.1:0\nno_pin = true\n",
        &[],
    );
    assert!(
        syntax.contains("bad.toml line 2, key `listen`: TOML syntax error"),
        "{syntax}"
    );

    // A bad value fails with the flag's own message, after its line and key.
    let clap_text = flag_error(&["--max-queued-bytes", "lots"]);
    let bad = refused("\nmax_queued_bytes = \"lots\"\n", &[]);
    assert!(
        bad.contains(&format!(
            "bad.toml line 2, key `max_queued_bytes`: {clap_text}"
        )),
        "{bad}\nvs the flag's: {clap_text}"
    );
    let fsync_text = flag_error(&["--fsync", "sometimes"]);
    let bad = refused("fsync = \"sometimes\"\n", &[]);
    assert!(
        bad.contains(&format!("bad.toml line 1, key `fsync`: {fsync_text}")),
        "{bad}\nvs the flag's: {fsync_text}"
    );
    let writes_text = flag_error(&["--log-writes", "sideways"]);
    assert!(
        writes_text.contains("`sideways` is not a write mode; use buffered or direct"),
        "{writes_text}"
    );
    let bad = refused("log_writes = \"sideways\"\n", &[]);
    assert!(
        bad.contains(&format!("bad.toml line 1, key `log_writes`: {writes_text}")),
        "{bad}\nvs the flag's: {writes_text}"
    );
    let bad = refused("max_batch_bytes = 10\n", &[]);
    assert!(
        bad.contains(
            "bad.toml line 1, key `max_batch_bytes`: --max-batch-bytes must be at least 61"
        ),
        "{bad}"
    );
    let too_big = flag_error(&["--tail-cache-mb", "2000000"]);
    assert!(
        too_big.contains("--tail-cache-mb must be at most 1048576 (1 TiB)"),
        "{too_big}"
    );
    let bad = refused("tail_cache_shard_mb = 2000000\n", &[]);
    assert!(
        bad.contains(
            "bad.toml line 1, key `tail_cache_shard_mb`: --tail-cache-shard-mb must be at \
             most 1048576 (1 TiB)"
        ),
        "{bad}"
    );

    // The same for a variable: its name, then the flag's message.
    let bad = refused("", &[("EVENTFLOW_MAX_QUEUED_BYTES", "lots")]);
    assert!(
        bad.contains(&format!("EVENTFLOW_MAX_QUEUED_BYTES: {clap_text}")),
        "{bad}"
    );
}

#[test]
fn unknown_variables_are_warned_about_and_the_projects_own_are_left_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let journal = tmp.path().join("sync.journal");
    let out = run(eventflowd(
        &["--print-config"],
        &[
            ("EVENTFLOW_MAX_QUEUE_BYTES", "1"),
            ("EVENTFLOW_SYNC_JOURNAL", journal.to_str().unwrap()),
            ("EVENTFLOW_REQUIRE_KAFKA_CLIENTS", "1"),
            ("EVENTFLOW_BENCH_REQUIRE_KAFKA", "1"),
            ("EVENTFLOW_BOOTSTRAP", "127.0.0.1:9292"),
        ],
    ));
    assert!(out.status.success(), "{}", out.stderr);
    assert!(
        out.stderr.contains(
            "ignored: EVENTFLOW_MAX_QUEUE_BYTES is not a setting (did you mean \
             EVENTFLOW_MAX_QUEUED_BYTES?)"
        ),
        "{}",
        out.stderr
    );
    for other in [
        "EVENTFLOW_SYNC_JOURNAL",
        "EVENTFLOW_REQUIRE_KAFKA_CLIENTS",
        "EVENTFLOW_BENCH_REQUIRE_KAFKA",
        "EVENTFLOW_BOOTSTRAP",
    ] {
        assert!(!out.stderr.contains(other), "{other} warned about");
    }
}

/// The flags `eventflowd --help` lists: name, whether it takes a value, its stated default.
fn help_flags() -> Vec<(String, bool, Option<String>)> {
    let out = run(eventflowd(&["--help"], &[]));
    assert!(out.status.success());
    let mut flags: Vec<(String, bool, Option<String>)> = Vec::new();
    for line in out.stdout.lines() {
        let trimmed = line.trim_start();
        if let Some(rest) = trimmed
            .strip_prefix("--")
            .filter(|_| line.starts_with("  "))
        {
            let name = rest.split_whitespace().next().unwrap().to_string();
            flags.push((name, rest.contains('<'), None));
        } else if let Some(default) = trimmed
            .strip_prefix("[default: ")
            .and_then(|d| d.strip_suffix(']'))
        {
            flags.last_mut().expect("a default after a flag").2 = Some(default.to_string());
        }
    }
    assert!(flags.len() > 20, "--help parsed: {flags:?}");
    flags
}

#[test]
fn the_example_file_has_every_flag_with_its_default() {
    let text = std::fs::read_to_string(EXAMPLE).unwrap();
    let table: toml::Table = toml::from_str(&text).expect("the example is TOML");
    // Keys without a fixed default are there commented out: `# key = value`.
    let commented: Vec<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# ")?.split_once(" = "))
        .map(|(k, _)| k.to_string())
        .filter(|k| k.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
        .collect();

    let flags = help_flags();
    let settings: Vec<_> = flags
        .iter()
        .filter(|(name, _, _)| !matches!(name.as_str(), "config" | "print-config"))
        .collect();
    for (name, takes_value, default) in &settings {
        let key = name.replace('-', "_");
        match (takes_value, default) {
            (false, _) => assert_eq!(
                table.get(&key).and_then(toml::Value::as_bool),
                Some(false),
                "switch --{name}: `{key} = false` in the example"
            ),
            (true, Some(default)) => {
                let value = table
                    .get(&key)
                    .unwrap_or_else(|| panic!("--{name}: `{key}` missing from the example"));
                let written = match value {
                    toml::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                assert_eq!(&written, default, "`{key}` in the example vs --help");
            }
            (true, None) => assert!(
                commented.contains(&key) && !table.contains_key(&key),
                "--{name} has no fixed default: `# {key} = …` in the example"
            ),
        }
    }
    let known: Vec<String> = settings
        .iter()
        .map(|(n, _, _)| n.replace('-', "_"))
        .collect();
    for key in table.keys().chain(&commented) {
        assert!(
            known.contains(key),
            "`{key}` in the example is no flag of --help"
        );
    }

    // eventflowd reads it, and it changes nothing: the same values as no file at all.
    let strip = |printed: &str| -> Vec<String> {
        printed
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| l.split("  # ").next().unwrap().to_string())
            .collect()
    };
    let with_example = print_config(&["--config", EXAMPLE], &[]);
    assert_eq!(strip(&with_example), strip(&print_config(&[], &[])));
}
