//! The embedded broker on a LAN (issue 7): authentication, topic ACLs, limits, TLS without the
//! accept stall, WebSocket. Every client is independent of fieldbridge: mosquitto_pub /
//! mosquitto_sub, and paho-mqtt for WebSocket. "LAN-style" listeners bind 0.0.0.0, where
//! anonymous clients are refused unless the config allows them.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use support::certs::{make_certs, LOCALHOST_SAN};
use support::gateway::{broker_gateway, hash_of, passwd_line, GatewayConfig, BIN};
use support::mosquitto::Mosquitto;
use support::mqtt::{
    mosquitto_pub, mosquitto_pub_lines, mosquitto_sub, paho, MqttWatcher, DEADLINE,
};
use support::process::{text, Proc};
use support::{eventually, free_port, wait_until, LONG};

/// alice: sensors only, no commands; bob: commands; admin: everything.
fn users() -> String {
    format!(
        r#"
[[broker.users]]
name = "alice"
password_hash = "{a}"
publish = ["sensors/#"]
subscribe = ["sensors/#", "fieldbridge/#"]

[[broker.users]]
name = "bob"
password_hash = "{b}"
commands = true

[[broker.users]]
name = "admin"
password_hash = "{c}"
"#,
        a = hash_of("alice-pw"),
        b = hash_of("bob-pw"),
        c = hash_of("admin-pw"),
    )
}

fn creds<'a>(user: &'a str, pw: &'a str) -> [&'a str; 4] {
    ["-u", user, "-P", pw]
}

#[test]
fn lan_listener_refuses_anonymous_clients_unknown_users_and_wrong_passwords() {
    let b = broker_gateway("0.0.0.0", &users());
    let refused: [(&str, Vec<&str>, &str); 4] = [
        ("anonymous", vec![], "not authorised"),
        (
            "unknown user",
            creds("mallory", "alice-pw").to_vec(),
            "bad user name or password",
        ),
        (
            "wrong password",
            creds("alice", "bob-pw").to_vec(),
            "bad user name or password",
        ),
        (
            "user without password",
            vec!["-u", "alice"],
            "bad user name or password",
        ),
    ];
    for (case, cred, why) in refused {
        let mut args = vec!["-t", "sensors/x", "-m", "1", "-q", "1"];
        args.extend(cred);
        let out = mosquitto_pub(b.broker_port, &args);
        assert!(!out.status.success(), "{case}: accepted: {}", text(&out));
        assert!(
            text(&out).to_lowercase().contains(why),
            "{case}: {}",
            text(&out)
        );
    }
    b.wait_log(&[
        "broker_connect_refused",
        "reason=unknown user",
        "user=mallory",
    ]);
    b.wait_log(&[
        "broker_connect_refused",
        "reason=wrong password",
        "user=alice",
    ]);
    b.wait_log(&[
        "broker_connect_refused",
        "anonymous clients are not allowed",
    ]);
    assert!(!b.log().contains("bob-pw"), "a password reached the log");

    // The right password works, end to end through the broker.
    let sub = mosquitto_sub(
        b.broker_port,
        &[&creds("admin", "admin-pw")[..], &["-t", "sensors/#"]].concat(),
    );
    assert_eq!(sub.subscribed(), vec![0]);
    let out = mosquitto_pub(
        b.broker_port,
        &[
            &creds("alice", "alice-pw")[..],
            &["-t", "sensors/t1", "-m", "21.5", "-q", "1"],
        ]
        .concat(),
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(sub.wait_message("sensors/t1", DEADLINE).text(), "21.5");
}

#[test]
fn repeated_wrong_passwords_lock_the_address_out_for_a_while_even_for_the_right_password() {
    let b = broker_gateway("0.0.0.0", &users());
    for _ in 0..5 {
        let out = mosquitto_pub(
            b.broker_port,
            &[
                &creds("alice", "guess")[..],
                &["-t", "sensors/x", "-m", "1"],
            ]
            .concat(),
        );
        assert!(!out.status.success());
    }
    let right = || {
        mosquitto_pub(
            b.broker_port,
            &[
                &creds("alice", "alice-pw")[..],
                &["-t", "sensors/x", "-m", "1"],
            ]
            .concat(),
        )
    };
    assert!(
        !right().status.success(),
        "the right password got through the lockout"
    );
    b.wait_log(&["broker_connect_refused", "too many failed logins"]);
    // The first lockout lasts 1 s; then the right password works again.
    let ok = eventually(DEADLINE, || right().status.success());
    assert!(ok, "still locked out:\n{}", b.log());
}

#[test]
fn loopback_listener_serves_anonymous_clients_by_default() {
    let b = broker_gateway("127.0.0.1", "");
    let sub = mosquitto_sub(b.broker_port, &["-t", "fieldbridge/gw/status"]);
    assert_eq!(
        sub.wait_message("fieldbridge/gw/status", DEADLINE).text(),
        "online"
    );
}

#[test]
fn a_publish_outside_the_users_acl_is_acknowledged_but_never_delivered() {
    let b = broker_gateway("0.0.0.0", &users());
    let admin = creds("admin", "admin-pw");
    let sub = mosquitto_sub(
        b.broker_port,
        &[&admin[..], &["-t", "#", "-q", "1"]].concat(),
    );
    assert_eq!(sub.subscribed(), vec![1]);
    let alice = creds("alice", "alice-pw");
    for qos in ["0", "1", "2"] {
        // mosquitto_pub waits for PUBACK / PUBCOMP and fails without them.
        let out = mosquitto_pub(
            b.broker_port,
            &[&alice[..], &["-t", "other/topic", "-m", "x", "-q", qos]].concat(),
        );
        assert!(out.status.success(), "qos {qos}: {}", text(&out));
    }
    let out = mosquitto_pub(
        b.broker_port,
        &[&alice[..], &["-t", "sensors/after", "-m", "y", "-q", "1"]].concat(),
    );
    assert!(out.status.success(), "{}", text(&out));
    // The allowed publish came after the refused ones and is here; the refused ones are not.
    sub.wait_message("sensors/after", DEADLINE);
    assert!(
        sub.messages().iter().all(|m| m.topic != "other/topic"),
        "{:?}",
        sub.messages()
    );
    b.wait_log(&[
        "broker_acl_denied",
        "action=\"publish\"",
        "topic=other/topic",
        "user=alice",
        "reason=\"no_matching_filter\"",
    ]);
}

#[test]
fn gateway_topics_are_read_only_and_command_topics_writable_only_by_command_users() {
    let b = broker_gateway("0.0.0.0", &users());
    let admin = creds("admin", "admin-pw");
    let sub = mosquitto_sub(
        b.broker_port,
        &[&admin[..], &["-t", "fieldbridge/#", "-q", "1"]].concat(),
    );
    assert_eq!(sub.subscribed(), vec![1]);
    assert_eq!(
        sub.wait_message("fieldbridge/gw/status", DEADLINE).text(),
        "online"
    );
    // Nobody can overwrite the gateway's status or forge a reading, not even admin.
    for (user, pw) in [
        ("alice", "alice-pw"),
        ("admin", "admin-pw"),
        ("bob", "bob-pw"),
    ] {
        for topic in ["fieldbridge/gw/status", "fieldbridge/gw/dev/temp"] {
            let out = mosquitto_pub(
                b.broker_port,
                &[
                    &creds(user, pw)[..],
                    &["-t", topic, "-m", "forged", "-r", "-q", "1"],
                ]
                .concat(),
            );
            assert!(out.status.success(), "{}", text(&out));
        }
    }
    // Commands: alice and admin are refused, bob (commands = true) gets through.
    for (user, pw) in [
        ("alice", "alice-pw"),
        ("admin", "admin-pw"),
        ("bob", "bob-pw"),
    ] {
        let out = mosquitto_pub(
            b.broker_port,
            &[
                &creds(user, pw)[..],
                &[
                    "-t",
                    "fieldbridge/gw/dev/setpoint/set",
                    "-m",
                    user,
                    "-q",
                    "1",
                ],
            ]
            .concat(),
        );
        assert!(out.status.success(), "{}", text(&out));
    }
    let cmd = sub.wait_message("fieldbridge/gw/dev/setpoint/set", DEADLINE);
    assert_eq!(cmd.text(), "bob");
    let msgs = sub.messages();
    assert_eq!(
        msgs.iter()
            .filter(|m| m.topic == "fieldbridge/gw/dev/setpoint/set")
            .count(),
        1,
        "{msgs:?}"
    );
    assert!(msgs.iter().all(|m| m.text() != "forged"), "{msgs:?}");
    // A new subscriber still gets the gateway's own retained status.
    let fresh = mosquitto_sub(
        b.broker_port,
        &[&admin[..], &["-t", "fieldbridge/gw/status", "-C", "1"]].concat(),
    );
    assert_eq!(
        fresh.wait_message("fieldbridge/gw/status", DEADLINE).text(),
        "online"
    );
    b.wait_log(&[
        "broker_acl_denied",
        "reason=\"gateway_topic_read_only\"",
        "user=admin",
    ]);
    b.wait_log(&[
        "broker_acl_denied",
        "reason=\"not_a_command_user\"",
        "user=alice",
    ]);
}

#[test]
fn a_last_will_on_a_topic_the_user_may_not_publish_refuses_the_connect() {
    let b = broker_gateway("0.0.0.0", &users());
    let alice = creds("alice", "alice-pw");
    let forged_status = [
        "-t",
        "sensors/x",
        "-m",
        "1",
        "--will-topic",
        "fieldbridge/gw/status",
        "--will-payload",
        "offline",
        "--will-retain",
    ];
    let out = mosquitto_pub(b.broker_port, &[&alice[..], &forged_status[..]].concat());
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("not authorised"), "{}", text(&out));
    b.wait_log(&["broker_connect_refused", "Last Will topic", "user=alice"]);
    let own = [
        "-t",
        "sensors/x",
        "-m",
        "1",
        "--will-topic",
        "sensors/alice/will",
        "--will-payload",
        "bye",
    ];
    let out = mosquitto_pub(b.broker_port, &[&alice[..], &own[..]].concat());
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn reusing_another_users_client_id_does_not_give_access_to_its_persistent_session() {
    let b = broker_gateway("0.0.0.0", &users());
    let admin = creds("admin", "admin-pw");
    let session = ["-i", "dashboard-1", "-c", "-q", "1"];
    let mut setup = mosquitto_sub(
        b.broker_port,
        &[&admin[..], &session[..], &["-t", "#", "-E"]].concat(),
    );
    assert!(setup.wait_exit(DEADLINE));
    publish_as(b.broker_port, &admin, "secret/queued");
    let alice = creds("alice", "alice-pw");
    let thief = mosquitto_sub(
        b.broker_port,
        &[&alice[..], &session[..], &["-t", "sensors/#"]].concat(),
    );
    assert_eq!(thief.subscribed(), vec![1]);
    publish_as(b.broker_port, &admin, "sensors/after");
    thief.wait_message("sensors/after", DEADLINE);
    assert!(
        thief.messages().iter().all(|m| m.topic != "secret/queued"),
        "{:?}",
        thief.messages()
    );
    drop(thief);
    // The admin's own session still has it (not necessarily first: the session's `#` also
    // queued what the gateway published meanwhile, e.g. its stats).
    let owner = mosquitto_sub(
        b.broker_port,
        &[&admin[..], &session[..], &["-t", "unrelated/x"]].concat(),
    );
    assert_eq!(owner.wait_message("secret/queued", DEADLINE).text(), "m");
}

fn publish_as(port: u16, who: &[&str], topic: &str) {
    let out = mosquitto_pub(port, &[who, &["-t", topic, "-m", "m", "-q", "1"]].concat());
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn a_subscription_outside_the_users_acl_gets_return_code_0x80_and_no_messages() {
    let b = broker_gateway("0.0.0.0", &users());
    let alice = creds("alice", "alice-pw");
    let sub = mosquitto_sub(
        b.broker_port,
        &[
            &alice[..],
            &["-t", "secret/#", "-t", "sensors/#", "-t", "#", "-q", "1"],
        ]
        .concat(),
    );
    assert_eq!(sub.subscribed(), vec![128, 1, 128]);
    let admin = creds("admin", "admin-pw");
    for topic in ["secret/a", "sensors/b"] {
        let out = mosquitto_pub(
            b.broker_port,
            &[&admin[..], &["-t", topic, "-m", "m", "-q", "1"]].concat(),
        );
        assert!(out.status.success(), "{}", text(&out));
    }
    sub.wait_message("sensors/b", DEADLINE);
    assert!(
        sub.messages().iter().all(|m| m.topic != "secret/a"),
        "{:?}",
        sub.messages()
    );
    // All filters refused: a SUBACK of failures, answered by the guard.
    let none = mosquitto_sub(b.broker_port, &[&alice[..], &["-t", "secret/#"]].concat());
    assert_eq!(none.subscribed(), vec![128]);
    none.wait_for("all subscriptions denied", DEADLINE, |l| {
        l.contains("denied")
    });
    b.wait_log(&[
        "broker_acl_denied",
        "action=\"subscribe\"",
        "topic=secret/#",
        "user=alice",
    ]);
}

#[test]
fn an_idle_tcp_connection_to_the_tls_port_does_not_keep_a_tls_client_from_its_retained_message_within_a_second(
) {
    let certs = tempfile::tempdir().unwrap();
    make_certs(certs.path(), "test-ca", LOCALHOST_SAN);
    let tls_port = free_port();
    let d = certs.path().display();
    let b = broker_gateway(
        "127.0.0.1",
        &format!(
            "[broker.tls]\nlisten = \"127.0.0.1:{tls_port}\"\ncert_file = \"{d}/server.pem\"\nkey_file = \"{d}/server.key\"\nhandshake_timeout = \"5s\"\n"
        ),
    );
    let out = mosquitto_pub(
        b.broker_port,
        &["-t", "lan/retained", "-m", "kept", "-r", "-q", "1"],
    );
    assert!(out.status.success(), "{}", text(&out));

    // Idle sockets: one silent, one stuck in the middle of a TLS ClientHello.
    let idle = TcpStream::connect(("127.0.0.1", tls_port)).unwrap();
    let mut half = TcpStream::connect(("127.0.0.1", tls_port)).unwrap();
    half.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .unwrap();

    let started = Instant::now();
    let mut sub = mosquitto_sub(
        tls_port,
        &[
            "--cafile",
            &format!("{d}/ca.pem"),
            "-t",
            "lan/retained",
            "-C",
            "1",
        ],
    );
    let got = sub.wait_message("lan/retained", Duration::from_secs(10));
    let took = started.elapsed();
    eprintln!("TLS client with 2 idle sockets open got its retained message after {took:?}");
    assert_eq!(got.text(), "kept");
    assert!(got.retain, "retained flag");
    assert!(
        took < Duration::from_secs(1),
        "the TLS client needed {took:?} while idle sockets were open"
    );
    assert!(sub.wait_exit(DEADLINE));
    drop((idle, half));
}

#[test]
fn a_tls_handshake_that_never_completes_is_closed_after_the_handshake_timeout() {
    let certs = tempfile::tempdir().unwrap();
    make_certs(certs.path(), "test-ca", LOCALHOST_SAN);
    let tls_port = free_port();
    let d = certs.path().display();
    let b = broker_gateway(
        "127.0.0.1",
        &format!(
            "[broker.tls]\nlisten = \"127.0.0.1:{tls_port}\"\ncert_file = \"{d}/server.pem\"\nkey_file = \"{d}/server.key\"\nhandshake_timeout = \"300ms\"\n"
        ),
    );
    let mut idle = TcpStream::connect(("127.0.0.1", tls_port)).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 16];
    let n = idle.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "closed without data");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(5),
        "closed after {took:?}"
    );
    b.wait_log(&["TLS handshake timed out"]);
}

#[test]
fn a_tls_listener_on_the_lan_authenticates_like_the_plain_one() {
    let certs = tempfile::tempdir().unwrap();
    make_certs(certs.path(), "test-ca", LOCALHOST_SAN);
    let tls_port = free_port();
    let d = certs.path().display();
    let b = broker_gateway(
        "127.0.0.1",
        &format!(
            "{}\n[broker.tls]\nlisten = \"0.0.0.0:{tls_port}\"\ncert_file = \"{d}/server.pem\"\nkey_file = \"{d}/server.key\"\n",
            users()
        ),
    );
    let ca = format!("{d}/ca.pem");
    let anon = mosquitto_pub(tls_port, &["--cafile", &ca, "-t", "sensors/x", "-m", "1"]);
    assert!(!anon.status.success(), "{}", text(&anon));
    assert!(text(&anon).contains("not authorised"), "{}", text(&anon));
    let sub = mosquitto_sub(
        tls_port,
        &[
            &creds("alice", "alice-pw")[..],
            &["--cafile", &ca, "-t", "sensors/#"],
        ]
        .concat(),
    );
    assert_eq!(sub.subscribed(), vec![0]);
    // Anonymous clients on the loopback plain listener are still fine (and ACL'd).
    let out = mosquitto_pub(b.broker_port, &["-t", "sensors/y", "-m", "2"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(sub.wait_message("sensors/y", DEADLINE).text(), "2");
}

#[test]
fn a_websocket_client_authenticates_subscribes_and_receives() {
    let ws_port = free_port();
    let b = broker_gateway(
        "127.0.0.1",
        &format!(
            "{}\n[broker.websocket]\nlisten = \"0.0.0.0:{ws_port}\"\n",
            users()
        ),
    );
    let port = ws_port.to_string();
    let anon = paho(&["--port", &port, "--subscribe", "sensors/#"]);
    anon.wait_for("the refusal", DEADLINE, |l| l == "CONNACK 135");
    let wrong = paho(&[
        "--port",
        &port,
        "--user",
        "alice",
        "--password",
        "nope",
        "--subscribe",
        "sensors/#",
    ]);
    wrong.wait_for("the refusal", DEADLINE, |l| l == "CONNACK 134");

    let ws = paho(&[
        "--port",
        &port,
        "--user",
        "alice",
        "--password",
        "alice-pw",
        "--subscribe",
        "sensors/#",
        "--subscribe",
        "secret/#",
        "--count",
        "1",
    ]);
    ws.wait_for("CONNACK", DEADLINE, |l| l == "CONNACK 0");
    ws.wait_for("SUBACK", DEADLINE, |l| l == "SUBACK 1,128");
    let out = mosquitto_pub(
        b.broker_port,
        &["-t", "sensors/ws", "-m", "over websocket", "-q", "1"],
    );
    assert!(out.status.success(), "{}", text(&out));
    let m = ws.wait_message("sensors/ws", DEADLINE);
    assert_eq!((m.qos, m.text().as_str()), (1, "over websocket"));

    // And publishing over WebSocket reaches a TCP subscriber.
    let sub = mosquitto_sub(b.broker_port, &["-t", "sensors/#"]);
    assert_eq!(sub.subscribed(), vec![0]);
    let mut pubber = paho(&[
        "--port",
        &port,
        "--user",
        "alice",
        "--password",
        "alice-pw",
        "--publish",
        "sensors/from-ws=hello",
    ]);
    pubber.wait_for("PUBACK", DEADLINE, |l| l.starts_with("PUBLISHED"));
    assert_eq!(
        sub.wait_message("sensors/from-ws", DEADLINE).text(),
        "hello"
    );
    pubber.kill9();
}

#[test]
fn passwd_writes_a_password_file_that_the_broker_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let pwfile = dir.path().join("broker.passwd");
    for (user, pw) in [("carol", "first"), ("dave", "d-pw"), ("carol", "carol-pw")] {
        let out = Proc::run_with_input(
            "fieldbridge passwd",
            Command::new(BIN)
                .args(["passwd", "--file"])
                .arg(&pwfile)
                .arg(user),
            &format!("{pw}\n"),
            DEADLINE,
        );
        assert!(out.status.success(), "{}", text(&out));
    }
    let content = std::fs::read_to_string(&pwfile).unwrap();
    assert_eq!(
        content.lines().count(),
        2,
        "carol updated in place:\n{content}"
    );
    assert!(content.starts_with("carol:$argon2id$"), "{content}");
    assert!(passwd_line("eve", "x").starts_with("eve:$argon2id$v=19$m=19456,t=2,p=1$"));

    let b = GatewayConfig::broker_only(
        "0.0.0.0",
        "password_file = \"broker.passwd\"\n[[broker.users]]\nname = \"dave\"\nsubscribe = [\"only/#\"]\n",
    )
    .start_owning(dir);
    let old = mosquitto_pub(
        b.broker_port,
        &[&creds("carol", "first")[..], &["-t", "a", "-m", "1"]].concat(),
    );
    assert!(!old.status.success(), "the replaced password still works");
    let ok = mosquitto_pub(
        b.broker_port,
        &[&creds("carol", "carol-pw")[..], &["-t", "a", "-m", "1"]].concat(),
    );
    assert!(ok.status.success(), "{}", text(&ok));
    // dave's ACL comes from [[broker.users]], his hash from the file.
    let sub = mosquitto_sub(
        b.broker_port,
        &[&creds("dave", "d-pw")[..], &["-t", "a/#", "-t", "only/x"]].concat(),
    );
    assert_eq!(sub.subscribed(), vec![128, 0]);
}

#[test]
fn a_plain_text_password_in_the_config_is_refused_with_file_line_key_and_the_passwd_hint() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("fb.toml");
    std::fs::write(
        &cfg,
        "[gateway]\nid = \"gw\"\n\n[broker]\nlisten = \"0.0.0.0:1883\"\n\n[[broker.users]]\nname = \"alice\"\npassword = \"secret\"\n",
    )
    .unwrap();
    let check = || {
        Proc::run(
            "fieldbridge check",
            Command::new(BIN).args(["check", "--config"]).arg(&cfg),
            DEADLINE,
        )
    };
    let out = check();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = text(&out);
    assert!(
        err.contains(&format!(
            "{}:9: key 'broker.users[0].password'",
            cfg.display()
        )),
        "{err}"
    );
    assert!(err.contains("fieldbridge passwd alice"), "{err}");
    assert!(!err.contains("secret"), "the password is echoed: {err}");

    std::fs::write(
        &cfg,
        "[gateway]\nid = \"gw\"\n\n[broker]\nlisten = \"0.0.0.0:1883\"\n",
    )
    .unwrap();
    let out = check();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains(":5: key 'broker.listen'"),
        "{}",
        text(&out)
    );
    assert!(
        text(&out).contains("allow_anonymous = true"),
        "{}",
        text(&out)
    );
}

#[test]
fn explicit_allow_anonymous_opens_a_lan_listener_and_warns_at_every_start() {
    let b = broker_gateway("0.0.0.0", "allow_anonymous = true\n");
    let out = mosquitto_pub(b.broker_port, &["-t", "x/y", "-m", "1", "-q", "1"]);
    assert!(out.status.success(), "{}", text(&out));
    b.wait_log(&["WARN", "allow_anonymous = true"]);
}

#[test]
fn limits_refuse_extra_connections_large_payloads_and_keep_alive_out_of_bounds() {
    let b = broker_gateway(
        "127.0.0.1",
        "max_connections = 2\nmax_payload_bytes = 128\nkeep_alive_max = \"60s\"\nconnect_timeout = \"30s\"\n",
    );
    let sub = mosquitto_sub(b.broker_port, &["-t", "big/#", "-q", "1"]);
    assert_eq!(sub.subscribed(), vec![1]);

    let big = "x".repeat(129);
    let out = mosquitto_pub(b.broker_port, &["-t", "big/one", "-m", &big, "-q", "1"]);
    assert!(!out.status.success(), "a 129-byte payload was accepted");
    b.wait_log(&["broker_payload_too_large", "bytes=129", "max=128"]);
    let ok = "y".repeat(128);
    let out = mosquitto_pub(b.broker_port, &["-t", "big/two", "-m", &ok, "-q", "1"]);
    assert!(out.status.success(), "{}", text(&out));
    sub.wait_message("big/two", DEADLINE);
    assert!(sub.messages().iter().all(|m| m.topic != "big/one"));

    let out = mosquitto_pub(b.broker_port, &["-t", "k/a", "-m", "1", "-k", "120"]);
    assert!(!out.status.success(), "keep-alive 120 s accepted");
    assert!(text(&out).contains("identifier rejected"), "{}", text(&out));

    // The subscriber holds one slot, this idle socket the second: the third is closed.
    let idle = TcpStream::connect(("127.0.0.1", b.broker_port)).unwrap();
    let out = mosquitto_pub(b.broker_port, &["-t", "k/b", "-m", "1"]);
    assert!(!out.status.success(), "a third connection was served");
    b.wait_log(&["broker_connection_limit"]);
    drop(idle);
    // The slot comes back when the idle socket goes.
    let ok = eventually(DEADLINE, || {
        mosquitto_pub(b.broker_port, &["-t", "big/three", "-m", "1", "-q", "1"])
            .status
            .success()
    });
    assert!(ok, "no slot came back:\n{}", b.log());
    sub.wait_message("big/three", DEADLINE);
}

#[test]
fn one_address_cannot_take_more_than_its_share_of_connections() {
    let b = broker_gateway(
        "127.0.0.1",
        "max_connections = 10\nmax_connections_per_address = 2\nconnect_timeout = \"30s\"\n",
    );
    // Two idle sockets (a host that connects and says nothing) use up 127.0.0.1's share. The
    // harness's readiness probe may still hold a slot for a moment: a socket the guard closed
    // (read gives EOF) is opened again until both are held. A socket still waiting in the
    // accept queue of a loaded machine also looks held, so the probe's slot may come free
    // between that check and the third connection: then the round is tried again. Without the
    // per-address cap the third connection is served every time and the test fails.
    let held = |s: &TcpStream| {
        use std::io::ErrorKind::{TimedOut, WouldBlock};
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        matches!((&*s).read(&mut [0u8; 1]), Err(e) if matches!(e.kind(), WouldBlock | TimedOut))
    };
    let connect = || TcpStream::connect(("127.0.0.1", b.broker_port)).unwrap();
    let (mut idle1, mut idle2) = (connect(), connect());
    let refused = eventually(DEADLINE, || {
        if !held(&idle1) {
            idle1 = connect();
            return false;
        }
        if !held(&idle2) {
            idle2 = connect();
            return false;
        }
        !mosquitto_pub(b.broker_port, &["-t", "k/a", "-m", "1"])
            .status
            .success()
    });
    assert!(
        refused,
        "a third connection from one address was served:\n{}",
        b.log()
    );
    b.wait_log(&["broker_connection_limit", "max_connections_per_address"]);
    drop(idle1);
    let ok = eventually(DEADLINE, || {
        mosquitto_pub(b.broker_port, &["-t", "k/b", "-m", "1"])
            .status
            .success()
    });
    assert!(ok, "no slot came back to the address:\n{}", b.log());
    drop(idle2);
}

#[test]
fn rumqttd_behind_the_guard_refuses_clients_that_bypass_it() {
    let b = broker_gateway("127.0.0.1", "");
    let line = b.wait_log(&["embedded MQTT broker listening", "backend="]);
    let backend = line
        .split("backend=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap();
    let port: u16 = backend.rsplit(':').next().unwrap().parse().unwrap();
    assert_ne!(port, b.broker_port);
    let out = mosquitto_pub(port, &["-t", "sensors/x", "-m", "1", "-q", "1"]);
    assert!(
        !out.status.success(),
        "direct anonymous access to rumqttd: {}",
        text(&out)
    );
}

/// The CONNECT from the field report: client id "poison", Last Will QoS 1 on `lan/#`.
const WILDCARD_WILL_CONNECT: [u8; 35] = [
    0x10, 0x21, 0x00, 0x04, 0x4d, 0x51, 0x54, 0x54, 0x04, 0x0e, 0x00, 0x1e, 0x00, 0x06, 0x70, 0x6f,
    0x69, 0x73, 0x6f, 0x6e, 0x00, 0x05, 0x6c, 0x61, 0x6e, 0x2f, 0x23, 0x00, 0x06, 0x70, 0x6f, 0x69,
    0x73, 0x6f, 0x6e,
];

#[test]
fn a_last_will_with_a_wildcard_topic_is_refused_at_connect_and_forwarding_goes_on() {
    let mosq = Mosquitto::start();
    let up = MqttWatcher::connect(mosq.port, "site/#");
    let gw = GatewayConfig::standard()
        .upstream(mosq.port)
        .with("[[forward]]\nfilter = \"lan/#\"\nlocal_prefix = \"lan\"\nremote_prefix = \"site/lan\"\n")
        .start_in_temp();
    let mut s = TcpStream::connect(("127.0.0.1", gw.broker_port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(&WILDCARD_WILL_CONNECT).unwrap();
    let mut connack = [0u8; 4];
    let got = s.read(&mut connack).unwrap_or(0);
    assert_eq!(
        got,
        0,
        "no CONNACK for a wildcard Will: {:02x?}",
        &connack[..got]
    );
    // Gone without a DISCONNECT: a broker that had accepted it would publish the Will now.
    drop(s);
    gw.wait_log(&["broker_connect_refused", "Last Will topic"]);
    // The queue is not jammed: forwarded messages keep reaching upstream, in order.
    let lines: String = (0..20).map(|i| format!("{i}\n")).collect();
    mosquitto_pub_lines(gw.broker_port, &["-q", "1", "-t", "lan/ok", "-l"], &lines);
    wait_until(LONG, "20 forwarded messages upstream", || {
        up.count(|m| m.topic == "site/lan/ok") >= 20
    });
    assert!(up.count(|m| m.topic.contains('#')) == 0);
    assert!(!gw.log().contains("upstream_disconnected"), "{}", gw.log());
}

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// 16 clients at once, `rounds` CONNECTs each with a wrong password, each from its own source
/// address on 127/8 (so the per-address lockout does not stop them first); returns the CONNACK
/// return codes seen (255: closed without one).
fn login_storm(port: u16, user: &str, rounds: usize) -> Vec<u8> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let tasks = (0..16u32).map(|t| {
            let user = user.to_string();
            tokio::spawn(async move {
                let mut codes = Vec::new();
                for r in 0..rounds as u32 {
                    let n = t * rounds as u32 + r;
                    let src =
                        std::net::Ipv4Addr::new(127, 1 + (n / 250) as u8, 0, 2 + (n % 250) as u8);
                    let sock = tokio::net::TcpSocket::new_v4().unwrap();
                    sock.bind((src, 0).into()).unwrap();
                    let Ok(mut s) = sock.connect(([127, 0, 0, 1], port).into()).await else {
                        codes.push(255);
                        continue;
                    };
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let pkt = support::mqtt::connect_packet(&format!("storm-{n}"), &user, "wrong");
                    let _ = s.write_all(&pkt).await;
                    let mut ack = [0u8; 4];
                    let got =
                        tokio::time::timeout(Duration::from_secs(20), s.read_exact(&mut ack)).await;
                    codes.push(match got {
                        Ok(Ok(_)) => ack[3],
                        _ => 255,
                    });
                }
                codes
            })
        });
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        all
    })
}

#[test]
fn a_login_storm_from_many_addresses_keeps_memory_within_two_argon2_costs() {
    const ARGON2_KIB: u64 = 19 * 1024;
    let b = broker_gateway("0.0.0.0", &users());
    let pid = b.pid().as_raw() as u32;
    // Idle: the broker has answered one client.
    let out = mosquitto_pub(
        b.broker_port,
        &[
            &creds("alice", "alice-pw")[..],
            &["-t", "sensors/x", "-m", "1"],
        ]
        .concat(),
    );
    assert!(out.status.success(), "{}", text(&out));
    let idle = rss_kib(pid);
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(idle));
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (peak, done) = (peak.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                peak.fetch_max(rss_kib(pid), std::sync::atomic::Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    // Known and unknown users alike cost an Argon2 check (an unknown one against a dummy hash).
    let mut codes = login_storm(b.broker_port, "alice", 4);
    codes.extend(login_storm(b.broker_port, "someone", 4));
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    sampler.join().unwrap();
    let peak = peak.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        !codes.contains(&0),
        "a wrong password was accepted: {codes:?}"
    );
    assert!(
        codes.iter().filter(|c| **c == 4).count() >= 16,
        "the storm was checked: {codes:?}"
    );
    let bound = idle + 2 * ARGON2_KIB + 8 * 1024;
    assert!(
        peak <= bound,
        "RSS rose from {idle} KiB to {peak} KiB during the storm (bound {bound} KiB)"
    );
    // Afterwards the workers have given their memory back.
    assert!(
        eventually(Duration::from_secs(10), || rss_kib(pid) <= idle + 4 * 1024),
        "RSS after the storm: {} KiB, idle was {idle} KiB",
        rss_kib(pid)
    );
    // The broker still serves the right password.
    let out = mosquitto_pub(
        b.broker_port,
        &[
            &creds("alice", "alice-pw")[..],
            &["-t", "sensors/x", "-m", "1"],
        ]
        .concat(),
    );
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn with_no_users_configured_a_login_storm_costs_no_password_hashing() {
    let b = broker_gateway("0.0.0.0", "allow_anonymous = true\n");
    let pid = b.pid().as_raw() as u32;
    let idle = rss_kib(pid);
    let codes = login_storm(b.broker_port, "someone", 8);
    assert!(codes.iter().all(|c| *c == 4 || *c == 255), "{codes:?}");
    let after = rss_kib(pid);
    assert!(
        after <= idle + 8 * 1024,
        "RSS {idle} KiB → {after} KiB with no users to check"
    );
}

#[test]
fn a_websocket_upgrade_without_the_mqtt_subprotocol_is_refused() {
    let ws_port = free_port();
    let _b = broker_gateway(
        "127.0.0.1",
        &format!(
            "{}\n[broker.websocket]\nlisten = \"127.0.0.1:{ws_port}\"\n",
            users()
        ),
    );
    let upgrade = |protocol: &str| {
        let mut s = TcpStream::connect(("127.0.0.1", ws_port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(
            s,
            "GET /mqtt HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{protocol}\r\n"
        )
        .unwrap();
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && s.read(&mut b).unwrap_or(0) == 1 {
            head.push(b[0]);
        }
        String::from_utf8_lossy(&head).to_string()
    };
    let refused = upgrade("");
    assert!(refused.starts_with("HTTP/1.1 400"), "{refused}");
    let accepted = upgrade("Sec-WebSocket-Protocol: mqtt\r\n");
    assert!(accepted.starts_with("HTTP/1.1 101"), "{accepted}");
    assert!(
        accepted
            .to_ascii_lowercase()
            .contains("sec-websocket-protocol: mqtt"),
        "{accepted}"
    );
}
