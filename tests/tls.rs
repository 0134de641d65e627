//! TLS on every listener, the way users meet it: the CLI and the client library (producer,
//! consumer) over TLS with SCRAM, Kafka clients (confluent-kafka, kcat, kafka-python) with
//! SASL_SSL and SSL, the HTTP API and /metrics over HTTPS, client certificates naming
//! users for the ACLs, a certificate reloaded on SIGHUP, and every refusal: plaintext bytes
//! on a TLS port, an untrusted or expired certificate, a missing client certificate.
//!
//! Certificates are made by the test (rcgen): a CA, the broker's certificate for
//! `localhost` and 127.0.0.1, client certificates, and an expired one.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{ok, Broker, ADMIN_PASSWORD};

use eventflow::client::consumer::{Consumer, ConsumerConfig, StartAt};
use eventflow::client::producer::{Producer, ProducerConfig, Record};
use eventflow::client::{Client, ClientTls, Credentials};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

/// A CA that signs certificates into a folder.
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
    dir: PathBuf,
    name: String,
}

impl Ca {
    fn new(dir: &Path, name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("Eventflow test CA {name}"));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).unwrap();
        std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
        Ca {
            cert,
            key,
            dir: dir.to_path_buf(),
            name: name.to_string(),
        }
    }

    /// The CA's certificate file.
    fn pem(&self) -> PathBuf {
        self.dir.join(format!("{}.pem", self.name))
    }

    /// Signs a certificate for `common_name`: a server's (for localhost and 127.0.0.1) or a
    /// client's. Writes `<file>.pem` and `<file>.key`; returns their paths.
    fn issue(
        &self,
        file: &str,
        common_name: &str,
        server: bool,
        expired: bool,
    ) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().unwrap();
        let names = if server {
            vec!["localhost".to_string(), "127.0.0.1".to_string()]
        } else {
            Vec::new()
        };
        let mut params = CertificateParams::new(names).unwrap();
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Eventflow tests");
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.extended_key_usages = vec![if server {
            ExtendedKeyUsagePurpose::ServerAuth
        } else {
            ExtendedKeyUsagePurpose::ClientAuth
        }];
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        let (pem, key_path) = (
            self.dir.join(format!("{file}.pem")),
            self.dir.join(format!("{file}.key")),
        );
        std::fs::write(&pem, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        (pem, key_path)
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A broker with TLS on every listener, its bootstrap superuser `admin` (SCRAM), and `args`.
/// Returns the broker, the CA that signed its certificate, and the folder of the files.
fn tls_broker(args: &[&str]) -> (Broker, Ca, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "ca");
    let (cert, key) = ca.issue("broker", "localhost", true, false);
    let mut all = vec!["--tls-cert", s(&cert), "--tls-key", s(&key)];
    all.extend_from_slice(args);
    let all: Vec<String> = all.into_iter().map(String::from).collect();
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    let (broker, secrets) = common::start_secured(&all);
    // The password file's folder must outlive the broker's start only.
    drop(secrets);
    (broker, ca, dir)
}

fn admin() -> Credentials {
    Credentials::scram("admin", ADMIN_PASSWORD)
}

fn cli(broker: &Broker, ca: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_eventflow"));
    command
        .args(["--bootstrap", &broker.addr.to_string(), "--tls-ca", s(ca)])
        .args(["--request-timeout-ms", "10000"]);
    command
}

#[test]
fn native_clients_produce_and_consume_over_tls_with_scram() {
    let (broker, ca, _dir) = tls_broker(&["--native-require-auth"]);
    let tls = ClientTls::new(&ca.pem(), None).unwrap();
    // The CLI: create, produce, consume, as the admin.
    let out = cli(&broker, &ca.pem())
        .args([
            "--sasl-user",
            "admin",
            "topic",
            "create",
            "secret",
            "--partitions",
            "2",
        ])
        .env("EVENTFLOW_SASL_PASSWORD", ADMIN_PASSWORD)
        .output()
        .unwrap();
    ok(out);
    let mut produce = cli(&broker, &ca.pem());
    produce
        .args(["--sasl-user", "admin", "produce", "secret"])
        .env("EVENTFLOW_SASL_PASSWORD", ADMIN_PASSWORD);
    let out = common::run_with_stdin(produce, "one\ntwo\nthree\n");
    ok(out);

    // The library: a producer (a reader and a writer thread on each TLS connection) sends
    // enough to span many TLS records and fetches; a consumer reads everything back.
    let producer = Producer::new(ProducerConfig {
        bootstrap: broker.addr.to_string(),
        credentials: Some(admin()),
        tls: Some(tls.clone()),
        ..ProducerConfig::default()
    })
    .unwrap();
    let value = vec![b'x'; 1000];
    let n = 20_000;
    for i in 0..n {
        let key = format!("k{i}");
        producer
            .send(Record {
                topic: "secret",
                partition: None,
                key: Some(key.as_bytes()),
                value: Some(&value),
                headers: &[],
                timestamp: None,
            })
            .unwrap();
    }
    producer.flush().unwrap();
    drop(producer);
    let mut consumer = Consumer::new(ConsumerConfig {
        bootstrap: broker.addr.to_string(),
        credentials: Some(admin()),
        tls: Some(tls),
        ..ConsumerConfig::default()
    })
    .unwrap();
    consumer
        .assign("secret", &[0, 1], StartAt::Earliest)
        .unwrap();
    let mut seen = 0;
    let mut cli_values = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while seen + cli_values < n + 3 && std::time::Instant::now() < deadline {
        for record in consumer.poll(Duration::from_millis(500)).unwrap() {
            let value = record.value.unwrap_or_default();
            if value.len() == 1000 {
                assert!(value.iter().all(|&b| b == b'x'));
                seen += 1;
            } else {
                cli_values += 1;
            }
        }
    }
    assert_eq!((seen, cli_values), (n, 3));
}

#[test]
fn plaintext_on_a_tls_port_is_refused_clearly_and_hurts_no_one() {
    let (broker, ca, _dir) = tls_broker(&[]);
    // The CLI without --tls-ca says what is wrong.
    let out = Command::new(env!("CARGO_BIN_EXE_eventflow"))
        .args(["--bootstrap", &broker.addr.to_string(), "topic", "list"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("speaks TLS"), "{err}");
    // Raw plaintext Kafka bytes (an ApiVersions request) to the Kafka port: closed, after a
    // TLS alert at most; never a Kafka answer.
    let kafka = broker.kafka.unwrap();
    let mut raw = TcpStream::connect(kafka).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let request = [
        0, 0, 0, 14, 0, 18, 0, 0, 0, 0, 0, 7, 0, 4, b't', b'e', b's', b't',
    ];
    raw.write_all(&request).unwrap();
    let mut answer = Vec::new();
    let _ = raw.read_to_end(&mut answer);
    assert!(
        answer.is_empty() || answer[0] == 0x15,
        "a plaintext request got {answer:?}"
    );
    // A TLS client is served meanwhile.
    let tls = ClientTls::new(&ca.pem(), None).unwrap();
    let mut client = Client::connect_secure(
        broker.addr,
        Duration::from_secs(10),
        Some(&admin()),
        Some(&tls),
    )
    .unwrap();
    client.api_versions().unwrap();
    assert!(broker.log().contains("TLS handshake failed"));
}

#[test]
fn untrusted_and_expired_certificates_are_refused() {
    let (broker, _ca, dir) = tls_broker(&[]);
    // A CA that did not sign the broker's certificate.
    let other = Ca::new(dir.path(), "other");
    let untrusted = ClientTls::new(&other.pem(), None).unwrap();
    let err = Client::connect_secure(broker.addr, Duration::from_secs(10), None, Some(&untrusted))
        .err()
        .expect("an untrusted certificate is refused")
        .to_string();
    assert!(
        err.contains("UnknownIssuer") || err.contains("certificate"),
        "{err}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_eventflow"))
        .args([
            "--bootstrap",
            &broker.addr.to_string(),
            "--tls-ca",
            s(&other.pem()),
        ])
        .args(["topic", "list"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("certificate"));

    // A broker whose certificate expired.
    let ca = Ca::new(dir.path(), "ca2");
    let (cert, key) = ca.issue("stale", "localhost", true, true);
    let stale = Broker::start(&["--tls-cert", s(&cert), "--tls-key", s(&key)]);
    let trusting = ClientTls::new(&ca.pem(), None).unwrap();
    let err = Client::connect_secure(stale.addr, Duration::from_secs(10), None, Some(&trusting))
        .err()
        .expect("an expired certificate is refused")
        .to_string();
    assert!(err.contains("Expired") || err.contains("expired"), "{err}");
}

#[test]
fn client_certificates_name_users_for_the_acls() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "ca");
    let (cert, key) = ca.issue("broker", "localhost", true, false);
    let (alice_cert, alice_key) = ca.issue("alice", "alice", false, false);
    let (root_cert, root_key) = ca.issue("root", "root", false, false);
    let broker = Broker::start(&[
        "--tls-cert",
        s(&cert),
        "--tls-key",
        s(&key),
        "--tls-client-ca",
        s(&ca.pem()),
        "--tls-client-auth",
        "required",
        "--authorizer",
        "on",
        "--superuser",
        "root",
    ]);
    let as_user = |cert: &Path, key: &Path| {
        let tls = ClientTls::new(&ca.pem(), Some((cert, key))).unwrap();
        Client::connect_secure(broker.addr, Duration::from_secs(10), None, Some(&tls)).unwrap()
    };
    let mut root = as_user(&root_cert, &root_key);
    root.create_topic("certified", 1, &[]).unwrap();
    // alice has no ACL: denied.
    let mut alice = as_user(&alice_cert, &alice_key);
    let denied = alice
        .create_topic("alices", 1, &[])
        .unwrap_err()
        .to_string();
    assert!(denied.to_lowercase().contains("authoriz"), "{denied}");
    // The CLI with alice's certificate, after root allows her.
    let out = cli(&broker, &ca.pem())
        .args(["--tls-cert", s(&root_cert), "--tls-key", s(&root_key)])
        .args([
            "acl",
            "add",
            "--principal",
            "alice",
            "--operation",
            "All",
            "--topic",
            "alices",
        ])
        .output()
        .unwrap();
    ok(out);
    let out = cli(&broker, &ca.pem())
        .args(["--tls-cert", s(&alice_cert), "--tls-key", s(&alice_key)])
        .args(["topic", "create", "alices"])
        .output()
        .unwrap();
    ok(out);

    // Without a certificate, or with one another CA signed: no connection.
    let bare = ClientTls::new(&ca.pem(), None).unwrap();
    let refused = Client::connect_secure(broker.addr, Duration::from_secs(10), None, Some(&bare))
        .and_then(|mut c| c.api_versions().map(|_| ()));
    assert!(
        refused.is_err(),
        "a client without a certificate was served"
    );
    let other = Ca::new(dir.path(), "other");
    let (mallory_cert, mallory_key) = other.issue("mallory", "root", false, false);
    let forged = ClientTls::new(&ca.pem(), Some((&mallory_cert, &mallory_key))).unwrap();
    let refused = Client::connect_secure(broker.addr, Duration::from_secs(10), None, Some(&forged))
        .and_then(|mut c| c.api_versions().map(|_| ()));
    assert!(
        refused.is_err(),
        "a certificate from an unknown CA was served"
    );
}

#[test]
fn sighup_reloads_the_certificate_and_keeps_open_connections() {
    let dir = tempfile::tempdir().unwrap();
    let first_ca = Ca::new(dir.path(), "first");
    let (cert, key) = first_ca.issue("broker", "localhost", true, false);
    let broker = Broker::start(&["--tls-cert", s(&cert), "--tls-key", s(&key)]);
    let first = ClientTls::new(&first_ca.pem(), None).unwrap();
    let mut open =
        Client::connect_secure(broker.addr, Duration::from_secs(10), None, Some(&first)).unwrap();
    open.create_topic("before", 1, &[]).unwrap();

    // New files (another CA's) in place, then SIGHUP.
    let second_ca = Ca::new(dir.path(), "second");
    let (new_cert, new_key) = second_ca.issue("renewed", "localhost", true, false);
    std::fs::copy(&new_cert, &cert).unwrap();
    std::fs::copy(&new_key, &key).unwrap();
    broker.signal(libc::SIGHUP);
    broker.wait_for_log("TLS certificate reloaded", 1);

    let second = ClientTls::new(&second_ca.pem(), None).unwrap();
    let mut fresh =
        Client::connect_secure(broker.addr, Duration::from_secs(10), None, Some(&second))
            .expect("the new certificate is served");
    fresh.create_topic("after", 1, &[]).unwrap();
    // A client that trusts only the first CA (a new one: `first` could resume its TLS
    // session, which skips the certificate, as resumption does) is refused now.
    let first_only = ClientTls::new(&first_ca.pem(), None).unwrap();
    assert!(
        Client::connect_secure(
            broker.addr,
            Duration::from_secs(10),
            None,
            Some(&first_only)
        )
        .is_err(),
        "the old certificate is still served to new connections"
    );
    // The connection opened before the reload goes on.
    let topics = open.metadata(&[]).unwrap();
    assert_eq!(topics.topics.len(), 2);

    // A broken file: the reload fails, loudly, and the certificate in use stays.
    std::fs::write(&cert, "not a certificate").unwrap();
    broker.signal(libc::SIGHUP);
    broker.wait_for_log("TLS certificate not reloaded", 1);
    Client::connect_secure(broker.addr, Duration::from_secs(10), None, Some(&second))
        .expect("the certificate in use stays after a failed reload");
}

#[test]
fn http_api_and_metrics_over_https() {
    let (broker, ca, _dir) = tls_broker(&["--native-require-auth"]);
    let http = broker.http.unwrap();
    let metrics = broker.metrics.unwrap();
    let curl = |url: String, user: Option<&str>| {
        let mut command = Command::new("curl");
        command.args(["-sS", "--max-time", "10", "--cacert", s(&ca.pem())]);
        if let Some(user) = user {
            command.args(["-u", user]);
        }
        command.arg(url).output().expect("curl")
    };
    let out = curl(
        format!(
            "https://localhost:{}/v3/clusters/eventflow/topics",
            http.port()
        ),
        Some(&format!("admin:{ADMIN_PASSWORD}")),
    );
    assert!(ok(out).contains("\"data\""));
    let out = curl(
        format!("https://127.0.0.1:{}/metrics", metrics.port()),
        None,
    );
    assert!(ok(out).contains("eventflow_build_info"));
    // Plain HTTP to the HTTPS port gets no page.
    let out = curl(format!("http://127.0.0.1:{}/metrics", metrics.port()), None);
    assert!(!String::from_utf8_lossy(&out.stdout).contains("eventflow_build_info"));
}

#[test]
fn kafka_clients_use_sasl_ssl_and_ssl() {
    let (broker, ca, dir) = tls_broker(&["--kafka-require-auth"]);
    let kafka = broker.kafka.unwrap().to_string();
    let ca_pem = ca.pem();
    let other = Ca::new(dir.path(), "other");
    if common::confluent_kafka_available() {
        let steps = common::run_client_script(
            &broker.data_dir,
            "tls.py",
            &[
                &kafka,
                s(&ca_pem),
                s(&other.pem()),
                "admin",
                ADMIN_PASSWORD,
                "tls-orders",
            ],
            Duration::from_secs(90),
            |_| None,
        );
        assert_eq!(
            steps,
            [
                "sasl-ssl-produced",
                "sasl-ssl-consumed",
                "untrusted-refused",
                "plaintext-refused"
            ]
        );
    }
    if common::python_module_available("kafka", "kafka-python") {
        let steps = common::run_client_script(
            &broker.data_dir,
            "kafka_python_tls.py",
            &[&kafka, s(&ca_pem), "admin", ADMIN_PASSWORD, "tls-orders"],
            Duration::from_secs(90),
            |_| None,
        );
        assert_eq!(steps, ["produced", "consumed"]);
    }
    let kcat_ran = Command::new("kcat").arg("-V").output().is_ok();
    if common::kafka_client_available("kcat", kcat_ran, "apt-get install kcat") {
        let kcat = |extra: &[&str]| {
            let mut command = Command::new("kcat");
            command
                .args(["-b", &kafka, "-X", "security.protocol=SASL_SSL"])
                .args(["-X", &format!("ssl.ca.location={}", s(&ca_pem))])
                .args([
                    "-X",
                    "sasl.mechanisms=SCRAM-SHA-256",
                    "-X",
                    "sasl.username=admin",
                ])
                .args(["-X", &format!("sasl.password={ADMIN_PASSWORD}")])
                .args(extra);
            command
        };
        let tls = ClientTls::new(&ca_pem, None).unwrap();
        Client::connect_secure(
            broker.addr,
            Duration::from_secs(10),
            Some(&admin()),
            Some(&tls),
        )
        .unwrap()
        .create_topic("tls-kcat", 1, &[])
        .unwrap();
        let out = common::run_with_stdin(kcat(&["-P", "-t", "tls-kcat"]), "k1\nk2\n");
        ok(out);
        let out = kcat(&["-C", "-t", "tls-kcat", "-o", "beginning", "-e", "-q"])
            .output()
            .unwrap();
        let mut got: Vec<String> = ok(out).lines().map(String::from).collect();
        got.sort();
        assert_eq!(got, ["k1", "k2"]);
    }
}
