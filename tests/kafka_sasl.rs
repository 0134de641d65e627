//! Authentication on the Kafka listener the way users meet it: confluent-kafka
//! (`tests/kafka_clients/sasl.py`) and kcat log in with SCRAM and PLAIN, manage users with
//! Kafka's SCRAM credential APIs, and are refused for every wrong credential; raw sockets
//! show what an unauthenticated peer gets. Without python3 and confluent-kafka (or kcat)
//! those parts are skipped with a line saying so, or fail when
//! EVENTFLOW_REQUIRE_KAFKA_CLIENTS=1 (as in CI).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use common::Broker;

use common::ADMIN_PASSWORD;

/// A broker whose Kafka listener requires authentication (SCRAM and PLAIN), with `admin` as
/// its bootstrap superuser, and the temporary directory of the password file.
fn secured_broker(extra: &[&str]) -> (Broker, tempfile::TempDir) {
    let mut args = vec![
        "--kafka-require-auth",
        "--kafka-sasl-mechanisms",
        "SCRAM-SHA-256,SCRAM-SHA-512,PLAIN",
    ];
    args.extend_from_slice(extra);
    common::start_secured(&args)
}

#[test]
fn confluent_kafka_logs_in_manages_users_and_is_refused_for_every_bad_credential() {
    if !common::confluent_kafka_available() {
        return;
    }
    let (mut broker, _secrets) = secured_broker(&[]);
    let kafka = broker.kafka.expect("the broker serves Kafka").to_string();
    let steps = common::run_client_script(
        &broker.data_dir,
        "sasl.py",
        &[&kafka, "admin", ADMIN_PASSWORD, "sasl-orders"],
        Duration::from_secs(90),
        |_| None,
    );
    assert_eq!(
        steps,
        [
            "unauthenticated-refused",
            "alice-added",
            "alice-produced-and-consumed",
            "wrong-password",
            "unknown-user",
            "wrong-plain-password",
            "no-sha512-credential",
            "unknown-mechanism",
            "alice-may-not-manage-users",
            "alice-removed",
        ]
    );
    // Every failure is in the log with the peer's address and the user it named.
    assert!(
        broker.log_count("kafka authentication failed") >= 5,
        "{}",
        broker.log()
    );
    assert!(broker.log().contains("mallory"), "{}", broker.log());

    // The users file holds no password, and users outlive a restart.
    let users = std::fs::read_to_string(broker.store_dir().join("meta/users.json")).unwrap();
    assert!(!users.contains(ADMIN_PASSWORD) && !users.contains("alice-secret"));
    let created = broker.log_count("created the bootstrap user");
    broker.kill9();
    broker.restart();
    let kafka = broker.kafka.unwrap().to_string();
    let steps = common::run_client_script(
        &broker.data_dir,
        "sasl.py",
        &[&kafka, "admin", ADMIN_PASSWORD, "sasl-orders-2"],
        Duration::from_secs(90),
        |_| None,
    );
    assert_eq!(steps.len(), 10, "{steps:?}");
    // The bootstrap superuser was created once, at the first start.
    assert_eq!(
        broker.log_count("created the bootstrap user"),
        created,
        "{}",
        broker.log()
    );
}

#[test]
fn kcat_logs_in_with_scram_and_plain() {
    let ran = Command::new("kcat")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    if !common::kafka_client_available("kcat", ran, "apt-get install kcat") {
        return;
    }
    let (broker, _secrets) = secured_broker(&[]);
    let kafka = broker.kafka.unwrap().to_string();
    let kcat = |mechanism: &str, password: &str, args: &[&str], stdin: &str| {
        let mut child = Command::new("kcat")
            .args(["-b", &kafka, "-X", "security.protocol=SASL_PLAINTEXT"])
            .args(["-X", &format!("sasl.mechanisms={mechanism}")])
            .args(["-X", "sasl.username=admin"])
            .args(["-X", &format!("sasl.password={password}")])
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "kcat {args:?} hangs");
            std::thread::sleep(Duration::from_millis(20));
        }
        child.wait_with_output().unwrap()
    };
    broker.client().create_topic("kcat-sasl", 1, &[]).unwrap();
    let out = kcat(
        "SCRAM-SHA-256",
        ADMIN_PASSWORD,
        &["-P", "-t", "kcat-sasl"],
        "a\nb\n",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = kcat(
        "PLAIN",
        ADMIN_PASSWORD,
        &["-C", "-t", "kcat-sasl", "-o", "beginning", "-e", "-q"],
        "",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "a\nb\n");
    let out = kcat("SCRAM-SHA-512", "wrong", &["-L", "-m", "3"], "");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Authentication failed"), "{stderr}");
}

/// ApiVersions v0 on its own: what a client sends before SaslHandshake.
fn api_versions_frame() -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&18i16.to_be_bytes()); // ApiVersions
    body.extend_from_slice(&0i16.to_be_bytes());
    body.extend_from_slice(&7i32.to_be_bytes()); // correlation id
    body.extend_from_slice(&(-1i16).to_be_bytes()); // no client id
    let mut frame = (body.len() as i32).to_be_bytes().to_vec();
    frame.extend_from_slice(&body);
    frame
}

/// Metadata v0 for every topic.
fn metadata_frame() -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&3i16.to_be_bytes());
    body.extend_from_slice(&0i16.to_be_bytes());
    body.extend_from_slice(&8i32.to_be_bytes());
    body.extend_from_slice(&(-1i16).to_be_bytes());
    body.extend_from_slice(&0i32.to_be_bytes()); // no topics: all
    let mut frame = (body.len() as i32).to_be_bytes().to_vec();
    frame.extend_from_slice(&body);
    frame
}

/// Reads until the broker closes the connection (or `limit` passes: a failure).
fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> (Vec<u8>, Duration) {
    let started = Instant::now();
    stream.set_read_timeout(Some(limit)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return (got, started.elapsed()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return (got, started.elapsed())
            }
            Err(e) => panic!("the broker did not close the connection within {limit:?}: {e}"),
        }
    }
}

#[test]
fn unauthenticated_peers_get_nothing_and_are_bounded_in_time_and_number() {
    let (broker, _secrets) = secured_broker(&[
        "--sasl-timeout-ms",
        "1500",
        "--max-unauthenticated-connections",
        "3",
    ]);
    let kafka = broker.kafka.unwrap();

    // ApiVersions is answered before authentication; Metadata closes the connection
    // without an answer.
    let mut stream = TcpStream::connect(kafka).unwrap();
    stream.write_all(&api_versions_frame()).unwrap();
    stream.write_all(&metadata_frame()).unwrap();
    let (got, _) = read_until_closed(&mut stream, Duration::from_secs(5));
    let first_len = i32::from_be_bytes(got[..4].try_into().unwrap()) as usize;
    assert_eq!(got.len(), 4 + first_len, "only ApiVersions was answered");
    assert_eq!(&got[4..8], &7i32.to_be_bytes());
    broker.wait_for_log("a request before authenticating", 1);

    // A silent connection is closed once --sasl-timeout-ms has passed.
    let mut silent = TcpStream::connect(kafka).unwrap();
    let (got, waited) = read_until_closed(&mut silent, Duration::from_secs(5));
    assert!(got.is_empty());
    assert!(
        waited >= Duration::from_millis(1200),
        "closed after {waited:?}"
    );
    broker.wait_for_log("not authenticated within --sasl-timeout-ms", 1);

    // Only three may wait to authenticate at once; the fourth is closed at once. (Each of
    // the three is answered an ApiVersions first: then the broker has counted it.)
    let held: Vec<TcpStream> = (0..3)
        .map(|_| {
            let mut stream = TcpStream::connect(kafka).unwrap();
            stream.write_all(&api_versions_frame()).unwrap();
            let mut len = [0u8; 4];
            stream.read_exact(&mut len).unwrap();
            let mut body = vec![0u8; i32::from_be_bytes(len) as usize];
            stream.read_exact(&mut body).unwrap();
            stream
        })
        .collect();
    let mut extra = TcpStream::connect(kafka).unwrap();
    let (got, waited) = read_until_closed(&mut extra, Duration::from_secs(5));
    assert!(got.is_empty());
    assert!(
        waited < Duration::from_millis(1000),
        "closed after {waited:?}"
    );
    broker.wait_for_log("have not authenticated yet", 1);
    drop(held);
    // The native listener does not require authentication here: it serves as before.
    broker.client().create_topic("still-open", 1, &[]).unwrap();
}

#[test]
fn confluent_kafka_manages_acls_and_is_held_to_them() {
    if !common::confluent_kafka_available() {
        return;
    }
    let (broker, _secrets) = secured_broker(&["--authorizer", "on"]);
    let kafka = broker.kafka.unwrap().to_string();
    let steps = common::run_client_script(
        &broker.data_dir,
        "acls.py",
        &[&kafka, ADMIN_PASSWORD],
        Duration::from_secs(90),
        |_| None,
    );
    assert_eq!(
        steps,
        [
            "acls-created",
            "alice-writes-orders-only",
            "alice-reads-in-her-groups-only",
            "alice-may-not-manage-acls",
            "write-revoked",
        ]
    );
    assert!(broker
        .log()
        .contains("ACL added: Allow User:alice on Topic:orders"));
    broker.wait_for_log(
        "User:alice may not write to orders: an acks=0 produce refused",
        1,
    );
}

#[test]
fn kafka_python_logs_in_with_every_mechanism() {
    if !common::python_module_available("kafka", "kafka-python") {
        return;
    }
    let (broker, _secrets) = secured_broker(&[]);
    broker.client().create_topic("kp-sasl", 1, &[]).unwrap();
    let kafka = broker.kafka.unwrap().to_string();
    let steps = common::run_client_script(
        &broker.data_dir,
        "kafka_python_sasl.py",
        &[&kafka, "admin", ADMIN_PASSWORD, "kp-sasl"],
        Duration::from_secs(60),
        |_| None,
    );
    assert_eq!(
        steps,
        [
            "produced",
            "produced",
            "produced",
            "consumed",
            "wrong-password-refused"
        ]
    );
    assert!(
        broker.log_count("kafka authentication failed") >= 1,
        "{}",
        broker.log()
    );
}
