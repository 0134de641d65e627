//! Authentication on the native listener and the HTTP API, the way users meet it: a broker
//! started with `--native-require-auth` and a bootstrap superuser, the `eventflow` CLI
//! logging in (`--sasl-user`, the password from the environment), managing users, producing
//! and consuming (alone, in a group, from a queue) as an ordinary user; the client library
//! refused for every bad credential; the HTTP API answering 401 without HTTP Basic
//! credentials and serving with them.

mod common;

use std::process::{Command, Output};

use base64::Engine as _;
use common::{ok, refused, Broker};
use eventflow::auth::Mechanism;
use eventflow::client::{Client, ClientError, Credentials};
use eventflow::protocol::ErrorCode;

use common::ADMIN_PASSWORD;

/// A broker whose native listener requires authentication (SCRAM and PLAIN).
fn secured_broker() -> (Broker, tempfile::TempDir) {
    common::start_secured(&[
        "--native-require-auth",
        "--native-sasl-mechanisms",
        "SCRAM-SHA-256,SCRAM-SHA-512,PLAIN",
    ])
}

/// Runs `eventflow ARGS` as `user` (none: anonymously) with `stdin`.
fn eventflow(
    broker: &Broker,
    login: Option<(&str, &str, &str)>,
    args: &[&str],
    stdin: &str,
) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_eventflow"));
    command
        .args(args)
        .env("EVENTFLOW_BOOTSTRAP", broker.addr.to_string())
        .env_remove("EVENTFLOW_SASL_USER")
        .env_remove("EVENTFLOW_SASL_PASSWORD");
    if let Some((user, password, mechanism)) = login {
        command
            .env("EVENTFLOW_SASL_USER", user)
            .env("EVENTFLOW_SASL_PASSWORD", password)
            .env("EVENTFLOW_SASL_MECHANISM", mechanism);
    }
    common::run_with_stdin(command, stdin)
}

#[test]
fn the_cli_logs_in_manages_users_and_works_as_an_ordinary_user() {
    let (broker, _secrets) = secured_broker();
    let admin = Some(("admin", ADMIN_PASSWORD, "SCRAM-SHA-512"));
    let alice = Some(("alice", "alice-password", "SCRAM-SHA-256"));

    refused(
        eventflow(&broker, None, &["topic", "list"], ""),
        "authentication required",
    );
    ok(eventflow(
        &broker,
        admin,
        &["topic", "create", "orders", "--partitions", "2"],
        "",
    ));
    let out = ok(eventflow(
        &broker,
        admin,
        &["user", "add", "alice"],
        "alice-password\n",
    ));
    assert_eq!(
        out,
        "user alice: SCRAM-SHA-256 set\nuser alice: SCRAM-SHA-512 set\n"
    );
    let out = ok(eventflow(&broker, admin, &["user", "list"], ""));
    assert!(out.contains("admin") && out.contains("alice"), "{out}");
    assert!(
        out.contains("SCRAM-SHA-256 (4096 iterations), SCRAM-SHA-512 (4096 iterations)"),
        "{out}"
    );

    // alice produces, consumes alone, in a group, and from a queue.
    ok(eventflow(
        &broker,
        alice,
        &["produce", "orders", "--key-separator", ":"],
        "a:1\nb:2\nc:3\n",
    ));
    let consume = |extra: &[&str]| {
        let mut args = vec![
            "consume",
            "orders",
            "--from-beginning",
            "--timeout-ms",
            "2000",
        ];
        args.extend_from_slice(extra);
        let out = ok(eventflow(&broker, alice, &args, ""));
        let mut lines: Vec<&str> = out.lines().collect();
        lines.sort_unstable();
        assert_eq!(lines, ["1", "2", "3"], "{extra:?}");
    };
    consume(&[]);
    consume(&["--group", "billing"]);
    let out = ok(eventflow(
        &broker,
        alice,
        &[
            "queue",
            "consume",
            "orders",
            "--group",
            "workers",
            "--max-messages",
            "3",
            "--timeout-ms",
            "3000",
        ],
        "",
    ));
    assert_eq!(out.lines().count(), 3, "{out}");
    let out = ok(eventflow(
        &broker,
        Some(("alice", "alice-password", "PLAIN")),
        &["topic", "list"],
        "",
    ));
    assert!(out.contains("orders"), "{out}");

    // What alice may not do, and what a wrong password gets.
    refused(
        eventflow(&broker, alice, &["user", "add", "bob"], "bob-password\n"),
        "superuser",
    );
    refused(
        eventflow(
            &broker,
            Some(("alice", "wrong-password", "SCRAM-SHA-512")),
            &["topic", "list"],
            "",
        ),
        "authentication failed",
    );
    refused(
        eventflow(&broker, admin, &["user", "add", "bob"], "short\n"),
        "at least 8 characters",
    );

    // Removed, alice cannot log in any more.
    ok(eventflow(&broker, admin, &["user", "remove", "alice"], ""));
    refused(
        eventflow(&broker, alice, &["topic", "list"], ""),
        "authentication failed",
    );
    assert!(broker.log_count("native authentication failed") >= 2);
}

#[test]
fn the_client_library_is_refused_for_every_bad_credential() {
    let (broker, _secrets) = secured_broker();
    let connect = |credentials: Option<Credentials>| {
        Client::connect_as(
            broker.addr,
            std::time::Duration::from_secs(10),
            credentials.as_ref(),
        )
    };
    let code = |result: Result<Client, ClientError>| match result {
        Err(e) => e.code(),
        Ok(_) => None,
    };
    let mut anonymous = connect(None).unwrap();
    assert_eq!(
        anonymous.list_topics().unwrap_err().code(),
        Some(ErrorCode::AuthenticationRequired)
    );
    for mechanism in [
        Mechanism::ScramSha256,
        Mechanism::ScramSha512,
        Mechanism::Plain,
    ] {
        let admin = Credentials {
            mechanism,
            user: "admin".into(),
            password: ADMIN_PASSWORD.into(),
        };
        connect(Some(admin.clone())).unwrap().list_topics().unwrap();
        let wrong = Credentials {
            password: "nope".into(),
            ..admin.clone()
        };
        assert_eq!(
            code(connect(Some(wrong))),
            Some(ErrorCode::AuthenticationFailed)
        );
        let unknown = Credentials {
            user: "mallory".into(),
            ..admin
        };
        assert_eq!(
            code(connect(Some(unknown))),
            Some(ErrorCode::AuthenticationFailed)
        );
    }
    // A mechanism this listener does not offer: the broker says which it does.
    let restricted = Broker::start(&[
        "--native-require-auth",
        "--native-sasl-mechanisms",
        "SCRAM-SHA-512",
    ]);
    let plain = Credentials {
        mechanism: Mechanism::Plain,
        user: "admin".into(),
        password: ADMIN_PASSWORD.into(),
    };
    let err = Client::connect_as(
        restricted.addr,
        std::time::Duration::from_secs(10),
        Some(&plain),
    )
    .err()
    .unwrap();
    assert_eq!(err.code(), Some(ErrorCode::UnsupportedSaslMechanism));
    assert!(err.to_string().contains("SCRAM-SHA-512"), "{err}");
}

#[test]
fn the_http_api_needs_basic_credentials_and_acts_as_that_user() {
    let (broker, _secrets) = secured_broker();
    let http = broker.http.expect("the broker serves HTTP");
    let basic = |user: &str, password: &str| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        )
    };
    let admin = basic("admin", ADMIN_PASSWORD);
    let topics = "/v3/clusters/eventflow/topics";

    assert_eq!(common::http::get(http, "/health").status, 200);
    let answer = common::http::get(http, topics);
    assert_eq!(answer.status, 401, "{}", answer.text());
    assert!(answer
        .headers
        .iter()
        .any(|(k, v)| k == "www-authenticate" && v.starts_with("Basic")));
    assert_eq!(common::http::get(http, "/").status, 401);

    let create = serde_json::json!({"topic_name": "web-orders", "partitions_count": 1});
    let answer = common::http::request_with(
        http,
        "POST",
        topics,
        Some(create.to_string().as_bytes()),
        &[
            ("Content-Type", "application/json"),
            ("Authorization", &admin),
        ],
    );
    assert!(answer.status < 300, "{} {}", answer.status, answer.text());
    let answer =
        common::http::request_with(http, "GET", topics, None, &[("Authorization", &admin)]);
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert!(answer.text().contains("web-orders"));

    let wrong = basic("admin", "wrong-password");
    let answer =
        common::http::request_with(http, "GET", topics, None, &[("Authorization", &wrong)]);
    assert_eq!(answer.status, 401, "{}", answer.text());
    assert_eq!(answer.json()["broker_error"], "authentication failed");
}

/// A broker that requires authentication on both listeners and checks every request
/// against its ACLs.
fn authorizing_broker() -> (Broker, tempfile::TempDir) {
    common::start_secured(&["--native-require-auth", "--authorizer", "on"])
}

#[test]
fn acls_decide_who_may_do_what_and_changes_apply_at_once_and_survive_a_restart() {
    let (mut broker, _secrets) = authorizing_broker();
    let admin = Some(("admin", ADMIN_PASSWORD, "SCRAM-SHA-512"));
    let alice = Some(("alice", "alice-password", "SCRAM-SHA-512"));
    let bob = Some(("bob", "bob-password1", "SCRAM-SHA-512"));
    let run = |login, args: &[&str], stdin: &str| eventflow(&broker, login, args, stdin);
    for (user, password) in [("alice", "alice-password"), ("bob", "bob-password1")] {
        ok(run(admin, &["user", "add", user], &format!("{password}\n")));
    }
    for topic in ["orders", "billing.eu", "billing.secret"] {
        ok(run(admin, &["topic", "create", topic], ""));
    }
    // alice: write and read orders, read in group "billing"; everyone: describe orders.
    // bob: everything on topics starting "billing.", but not reading billing.secret.
    let acls: &[&[&str]] = &[
        &[
            "--principal",
            "alice",
            "--topic",
            "orders",
            "--operation",
            "Write",
            "--operation",
            "Read",
        ],
        &[
            "--principal",
            "alice",
            "--group",
            "billing",
            "--operation",
            "Read",
        ],
        &[
            "--principal",
            "*",
            "--topic",
            "orders",
            "--operation",
            "Describe",
        ],
        &[
            "--principal",
            "bob",
            "--topic",
            "billing.",
            "--prefixed",
            "--operation",
            "All",
        ],
        &[
            "--principal",
            "bob",
            "--topic",
            "billing.secret",
            "--operation",
            "Read",
            "--deny",
        ],
    ];
    for args in acls {
        let mut full = vec!["acl", "add"];
        full.extend_from_slice(args);
        ok(run(admin, &full, ""));
    }
    let listed = ok(run(admin, &["acl", "list"], ""));
    assert_eq!(listed.lines().count(), 6, "{listed}");
    assert!(
        listed.contains("Deny User:bob on Topic:billing.secret from * (Read)"),
        "{listed}"
    );

    // alice works with orders, alone and in her group.
    ok(run(alice, &["produce", "orders"], "a\nb\n"));
    let consume = |login, extra: &[&str]| {
        let mut args = vec![
            "consume",
            "orders",
            "--from-beginning",
            "--timeout-ms",
            "1500",
        ];
        args.extend_from_slice(extra);
        run(login, &args, "")
    };
    assert_eq!(ok(consume(alice, &[])), "a\nb\n");
    assert_eq!(
        ok(consume(alice, &["--group", "billing"])).lines().count(),
        2
    );
    // A group she may not read, a topic she may not write, a listing she sees part of.
    refused(
        consume(alice, &["--group", "other"]),
        "may not Read Group other",
    );
    // (The producer asks for the topic's metadata first: without Describe it cannot.)
    refused(
        run(alice, &["produce", "billing.eu"], "x\n"),
        "User:alice may not Describe Topic billing.eu",
    );
    assert_eq!(ok(run(alice, &["topic", "list"], "")).trim(), "orders\t1");
    assert_eq!(ok(run(admin, &["topic", "list"], "")).lines().count(), 3);
    // bob: the prefix, and the deny that wins over it.
    ok(run(bob, &["produce", "billing.eu"], "eu\n"));
    ok(run(bob, &["produce", "billing.secret"], "s\n"));
    refused(
        run(
            bob,
            &[
                "consume",
                "billing.secret",
                "--from-beginning",
                "--timeout-ms",
                "1000",
            ],
            "",
        ),
        "may not Read Topic billing.secret",
    );
    refused(
        run(bob, &["produce", "orders"], "x\n"),
        "may not Write Topic orders",
    );
    // Neither may manage ACLs or users.
    refused(
        run(
            alice,
            &[
                "acl",
                "add",
                "--principal",
                "alice",
                "--topic",
                "*",
                "--operation",
                "All",
            ],
            "",
        ),
        "may not Alter",
    );
    refused(run(bob, &["user", "list"], ""), "may not Describe");

    // The HTTP API acts as the user of its Basic credentials: alice sees her topic only
    // and may not create one.
    let http = broker.http.expect("the broker serves HTTP");
    let alice_basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("alice:alice-password")
    );
    let topics = "/v3/clusters/eventflow/topics";
    let answer = common::http::request_with(
        http,
        "GET",
        topics,
        None,
        &[("Authorization", &alice_basic)],
    );
    assert_eq!(answer.status, 200, "{}", answer.text());
    let body = answer.json();
    let names: Vec<&str> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["topic_name"].as_str())
        .collect();
    assert_eq!(names, ["orders"]);
    let create = serde_json::json!({"topic_name": "alices-own", "partitions_count": 1});
    let answer = common::http::request_with(
        http,
        "POST",
        topics,
        Some(create.to_string().as_bytes()),
        &[
            ("Content-Type", "application/json"),
            ("Authorization", &alice_basic),
        ],
    );
    assert_eq!(answer.status, 403, "{}", answer.text());
    assert!(
        answer.text().contains("may not Create Topic alices-own"),
        "{}",
        answer.text()
    );

    // A removed ACL stops alice at once, without a restart.
    let out = ok(run(
        admin,
        &[
            "acl",
            "remove",
            "--principal",
            "alice",
            "--topic",
            "orders",
            "--operation",
            "Write",
        ],
        "",
    ));
    assert!(
        out.starts_with("removed: Allow User:alice on Topic:orders"),
        "{out}"
    );
    refused(
        run(alice, &["produce", "orders"], "c\n"),
        "may not Write Topic orders",
    );

    // The ACLs are durable.
    broker.kill9();
    broker.restart();
    let run = |login, args: &[&str], stdin: &str| eventflow(&broker, login, args, stdin);
    let listed = ok(run(admin, &["acl", "list"], ""));
    assert_eq!(listed.lines().count(), 5, "{listed}");
    assert_eq!(ok(run(alice, &["topic", "list"], "")).trim(), "orders\t1");
    refused(
        run(alice, &["produce", "orders"], "d\n"),
        "may not Write Topic orders",
    );
}
