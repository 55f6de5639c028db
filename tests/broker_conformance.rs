//! What people expect of an MQTT 3.1.1 broker, checked on the embedded broker (rumqttd behind
//! the guard) with independent clients: mosquitto_pub / mosquitto_sub. Where rumqttd deviates
//! from the specification, the test pins the observed behaviour and README.md (Security →
//! rumqttd deviations) says so.

mod support;

use support::gateway::broker_gateway;
use support::mosquitto::Mosquitto;
use support::mqtt::{mosquitto_pub, mosquitto_sub, paho, publish, MqttClient, DEADLINE};
use support::process::text;

#[test]
fn qos_0_1_and_2_are_delivered_end_to_end_at_the_granted_qos() {
    let b = broker_gateway("127.0.0.1", "");
    for qos in [0u8, 1, 2] {
        let q = qos.to_string();
        let topic = format!("qos/{qos}");
        let sub = mosquitto_sub(b.broker_port, &["-t", &topic, "-q", &q]);
        assert_eq!(sub.subscribed(), vec![qos]);
        publish(
            b.broker_port,
            &["-t", &topic, "-m", &format!("at qos {qos}"), "-q", &q],
        );
        let m = sub.wait_message(&topic, DEADLINE);
        assert_eq!((m.qos, m.text().as_str()), (qos, &*format!("at qos {qos}")));
        assert!(!m.retain, "a live message is not flagged retained");
    }
    // Delivery QoS is the lower of the publish and the subscription QoS.
    let sub = mosquitto_sub(b.broker_port, &["-t", "down/#", "-q", "1"]);
    assert_eq!(sub.subscribed(), vec![1]);
    publish(b.broker_port, &["-t", "down/x", "-m", "m", "-q", "2"]);
    assert_eq!(sub.wait_message("down/x", DEADLINE).qos, 1);
}

#[test]
fn a_retained_message_reaches_later_subscribers_until_an_empty_retained_message_clears_it() {
    let b = broker_gateway("127.0.0.1", "");
    publish(
        b.broker_port,
        &["-t", "ret/a", "-m", "kept", "-r", "-q", "1"],
    );
    publish(
        b.broker_port,
        &["-t", "ret/b", "-m", "other", "-r", "-q", "1"],
    );
    let late = mosquitto_sub(b.broker_port, &["-t", "ret/a", "-C", "1"]);
    let m = late.wait_message("ret/a", DEADLINE);
    assert!(m.retain && m.text() == "kept", "{m:?}");

    publish(b.broker_port, &["-t", "ret/a", "-n", "-r", "-q", "1"]);
    let after = mosquitto_sub(b.broker_port, &["-t", "ret/#"]);
    assert_eq!(after.subscribed(), vec![0]);
    after.wait_message("ret/b", DEADLINE);
    // Retained messages are sent right after the SUBACK, together; ret/b is here, so a
    // remaining ret/a would be too.
    publish(b.broker_port, &["-t", "ret/sync", "-m", "s"]);
    after.wait_message("ret/sync", DEADLINE);
    assert!(
        after.messages().iter().all(|m| m.topic != "ret/a"),
        "{:?}",
        after.messages()
    );
}

#[test]
fn the_last_will_is_published_when_a_client_dies_and_not_after_a_clean_disconnect() {
    let b = broker_gateway("127.0.0.1", "");
    let watcher = mosquitto_sub(b.broker_port, &["-t", "will/#", "-q", "1"]);
    assert_eq!(watcher.subscribed(), vec![1]);

    // A clean DISCONNECT: no will (mosquitto_sub -E subscribes and disconnects).
    let mut clean = mosquitto_sub(
        b.broker_port,
        &[
            "-t",
            "x/y",
            "-E",
            "--will-topic",
            "will/clean",
            "--will-payload",
            "gone",
            "--will-qos",
            "1",
        ],
    );
    assert!(clean.wait_exit(DEADLINE));

    let mut dying = mosquitto_sub(
        b.broker_port,
        &[
            "-t",
            "x/y",
            "--will-topic",
            "will/dead",
            "--will-payload",
            "gone",
            "--will-qos",
            "1",
            "--will-retain",
        ],
    );
    assert_eq!(dying.subscribed(), vec![0]);
    dying.kill9();
    let m = watcher.wait_message("will/dead", DEADLINE);
    assert_eq!((m.qos, m.text().as_str()), (1, "gone"));
    assert!(
        watcher.messages().iter().all(|m| m.topic != "will/clean"),
        "{:?}",
        watcher.messages()
    );
    // A retained will stays for later subscribers.
    let late = mosquitto_sub(b.broker_port, &["-t", "will/dead", "-C", "1"]);
    assert!(late.wait_message("will/dead", DEADLINE).retain);
}

#[test]
fn a_client_that_falls_silent_is_dropped_after_one_and_a_half_keep_alives_and_its_will_sent() {
    let b = broker_gateway("127.0.0.1", "keep_alive_min = \"1s\"\n");
    let watcher = mosquitto_sub(b.broker_port, &["-t", "will/#", "-q", "1"]);
    assert_eq!(watcher.subscribed(), vec![1]);
    let port = b.broker_port.to_string();
    let silent = paho(&[
        "--transport",
        "tcp",
        "--port",
        &port,
        "--keepalive",
        "1",
        "--will",
        "will/silent=timed out",
        "--subscribe",
        "x/y",
    ]);
    silent.wait_for("SUBACK", DEADLINE, |l| l.starts_with("SUBACK"));
    // SIGSTOP: the TCP connection stays open, but no PINGREQ comes any more.
    let pid = nix::unistd::Pid::from_raw(silent.pid() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let stopped = std::time::Instant::now();
    let m = watcher.wait_message("will/silent", DEADLINE);
    let took = stopped.elapsed();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).unwrap();
    assert_eq!(m.text(), "timed out");
    eprintln!("will of a silent client (keep-alive 1 s) after {took:?}");
    assert!(took < std::time::Duration::from_secs(5), "{took:?}");
}

#[test]
fn plus_and_hash_wildcards_match_as_the_specification_says() {
    let b = broker_gateway("127.0.0.1", "");
    let plus = mosquitto_sub(b.broker_port, &["-t", "w/+/t"]);
    let hash = mosquitto_sub(b.broker_port, &["-t", "w/a/#"]);
    assert_eq!(plus.subscribed(), vec![0]);
    assert_eq!(hash.subscribed(), vec![0]);
    for topic in ["w/a/t", "w/b/t", "w/a/t/deeper", "w/a", "w/t", "w/end"] {
        publish(b.broker_port, &["-t", topic, "-m", topic, "-q", "1"]);
    }
    plus.wait_message("w/b/t", DEADLINE);
    hash.wait_message("w/a/t/deeper", DEADLINE);
    // Sync: "w/end" is matched by neither, so publish one that both see, last.
    publish(b.broker_port, &["-t", "w/a/t", "-m", "sync", "-q", "1"]);
    let seen = |s: &MqttClient| {
        s.wait_for("the sync message", DEADLINE, |l| l.ends_with(" sync"));
        let mut t: Vec<String> = s.messages().into_iter().map(|m| m.topic).collect();
        t.sort();
        t.dedup();
        t
    };
    assert_eq!(seen(&plus), vec!["w/a/t", "w/b/t"]);
    // `#` also matches the parent level itself.
    assert_eq!(seen(&hash), vec!["w/a", "w/a/t", "w/a/t/deeper"]);
}

#[test]
fn a_persistent_session_keeps_subscriptions_and_queues_qos1_messages_while_offline() {
    let b = broker_gateway("127.0.0.1", "");
    let id = ["-i", "persistent-1", "-c", "-q", "1"];
    let mut first = mosquitto_sub(
        b.broker_port,
        &[&id[..], &["-t", "sess/a", "-t", "sess/b", "-E"]].concat(),
    );
    assert!(first.wait_exit(DEADLINE));
    publish(
        b.broker_port,
        &["-t", "sess/a", "-m", "while away", "-q", "1"],
    );
    // mosquitto_sub needs a filter; an unrelated one, so sess/a can only come from the session.
    let back = mosquitto_sub(
        b.broker_port,
        &[&id[..], &["-t", "sess/unrelated", "-C", "1"]].concat(),
    );
    let m = back.wait_message("sess/a", DEADLINE);
    assert_eq!((m.qos, m.text().as_str()), (1, "while away"));
}

#[test]
fn unsubscribe_stops_delivery_for_that_filter_only() {
    let b = broker_gateway("127.0.0.1", "");
    // paho (TCP) subscribes to both, unsubscribes from u/a and reports the UNSUBACK.
    let port = b.broker_port.to_string();
    let client = paho(&[
        "--transport",
        "tcp",
        "--port",
        &port,
        "--subscribe",
        "u/a",
        "--subscribe",
        "u/b",
        "--unsubscribe",
        "u/a",
    ]);
    client.wait_for("the UNSUBACK", DEADLINE, |l| l == "UNSUBACK");
    publish(b.broker_port, &["-t", "u/a", "-m", "1", "-q", "1"]);
    publish(b.broker_port, &["-t", "u/b", "-m", "2", "-q", "1"]);
    assert_eq!(client.wait_message("u/b", DEADLINE).text(), "2");
    assert!(
        client.messages().iter().all(|m| m.topic != "u/a"),
        "{:?}",
        client.messages()
    );
}

/// Persistent session: subscribe u/a and u/b; then `mosquitto_sub -U u/a -E` (UNSUBSCRIBE, then
/// DISCONNECT without waiting for the UNSUBACK); publish u/a, then u/b; the first message the
/// session gets when it comes back.
fn first_after_unsubscribe_then_disconnect(port: u16) -> String {
    let id = ["-i", "unsub-1", "-c", "-q", "1"];
    let mut setup = mosquitto_sub(port, &[&id[..], &["-t", "u/a", "-t", "u/b", "-E"]].concat());
    assert!(setup.wait_exit(DEADLINE));
    let mut unsub = mosquitto_sub(port, &[&id[..], &["-U", "u/a", "-t", "u/c", "-E"]].concat());
    assert!(unsub.wait_exit(DEADLINE));
    publish(port, &["-t", "u/a", "-m", "1", "-q", "1"]);
    publish(port, &["-t", "u/b", "-m", "2", "-q", "1"]);
    let back = mosquitto_sub(port, &[&id[..], &["-t", "u/unrelated", "-C", "1"]].concat());
    back.wait_for("a message", DEADLINE, |l| l.starts_with("MSG "));
    back.messages()[0].topic.clone()
}

#[test]
fn an_unsubscribe_right_before_disconnect_is_lost_by_rumqttd_but_not_by_mosquitto() {
    // A deviation of rumqttd 0.20, pinned here and listed in README.md.
    let mosquitto = Mosquitto::start();
    assert_eq!(
        first_after_unsubscribe_then_disconnect(mosquitto.port),
        "u/b"
    );
    let b = broker_gateway("127.0.0.1", "");
    assert_eq!(
        first_after_unsubscribe_then_disconnect(b.broker_port),
        "u/a"
    );
}

#[test]
fn mqtt_5_clients_are_refused_with_unacceptable_protocol_version() {
    let b = broker_gateway("127.0.0.1", "");
    let out = mosquitto_pub(b.broker_port, &["-V", "mqttv5", "-t", "v5/x", "-m", "1"]);
    assert!(!out.status.success(), "{}", text(&out));
    b.wait_log(&["broker_connect_refused", "protocol level 5"]);
    let out = mosquitto_pub(
        b.broker_port,
        &["-V", "mqttv311", "-t", "v311/x", "-m", "1"],
    );
    assert!(out.status.success(), "{}", text(&out));
}

/// Opens a raw MQTT connection (CONNECT, CONNACK 0 checked) for sending packets no client
/// library would send.
fn raw_session(port: u16, client_id: &str) -> std::net::TcpStream {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    s.write_all(&raw_connect(client_id)).unwrap();
    let mut ack = [0u8; 4];
    s.read_exact(&mut ack).unwrap();
    assert_eq!(ack, [0x20, 2, 0, 0], "CONNACK for {client_id}");
    s
}

/// A CONNECT (MQTT 3.1.1, clean session, keep-alive 30 s, no credentials).
fn raw_connect(client_id: &str) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 30];
    body.extend_from_slice(&(client_id.len() as u16).to_be_bytes());
    body.extend_from_slice(client_id.as_bytes());
    frame(0x10, &body)
}

fn frame(first: u8, body: &[u8]) -> Vec<u8> {
    let mut p = vec![first];
    let mut n = body.len();
    loop {
        let b = (n % 128) as u8;
        n /= 128;
        p.push(if n > 0 { b | 0x80 } else { b });
        if n == 0 {
            break;
        }
    }
    p.extend_from_slice(body);
    p
}

/// What the broker sends back after `bytes` (up to `n` bytes), or fewer when it closes.
fn answer_to(s: &mut std::net::TcpStream, bytes: &[u8], n: usize) -> Vec<u8> {
    use std::io::{Read, Write};
    let _ = s.write_all(bytes);
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    while got.len() < n {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(k) => got.extend_from_slice(&buf[..k]),
        }
    }
    got
}

#[test]
fn packets_that_break_mqtt_3_1_1_close_the_connection_and_other_clients_go_on() {
    let b = broker_gateway("127.0.0.1", "");
    let port = b.broker_port;
    // In place of the CONNECT: MQTT 3.1's protocol name with level 4, and a reserved
    // fixed-header flag; neither gets a CONNACK.
    let mqisdp = vec![
        0, 6, b'M', b'Q', b'I', b's', b'd', b'p', 4, 0x02, 0, 30, 0, 1, b'x',
    ];
    for (name, packet) in [
        ("MQIsdp with level 4", frame(0x10, &mqisdp)),
        ("CONNECT with a reserved flag", {
            let mut p = raw_connect("flagged");
            p[0] |= 0x01;
            p
        }),
    ] {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        assert_eq!(answer_to(&mut s, &packet, 4), Vec::<u8>::new(), "{name}");
    }
    // A 65535-byte client id is refused with "identifier rejected".
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let long_id = "x".repeat(65_535);
    assert_eq!(
        answer_to(&mut s, &raw_connect(&long_id), 4),
        vec![0x20, 2, 0, 2]
    );
    // After a good CONNECT: packets only a server sends, or a PINGREQ with a body.
    for (name, packet) in [
        ("CONNACK", frame(0x20, &[0, 0])),
        ("SUBACK", frame(0x90, &[0, 1, 0])),
        ("PINGREQ with a body", frame(0xc0, &[0])),
    ] {
        let mut s = raw_session(port, "violator");
        assert_eq!(answer_to(&mut s, &packet, 2), Vec::<u8>::new(), "{name}");
    }
    b.wait_log(&["broker_protocol_violation", "only a server sends"]);
    // A well-behaved client is served as before, and a plain PINGREQ is answered.
    let mut s = raw_session(port, "polite");
    assert_eq!(answer_to(&mut s, &frame(0xc0, &[]), 2), vec![0xd0, 0]);
}

#[test]
fn invalid_subscribe_filters_get_0x80_and_valid_ones_are_granted() {
    let b = broker_gateway("127.0.0.1", "");
    let mut s = raw_session(b.broker_port, "subscriber");
    let mut body = vec![0, 7]; // packet id 7
    for f in ["a/#/b", "+a", "a/b#", "", "ok/+/x"] {
        body.extend_from_slice(&(f.len() as u16).to_be_bytes());
        body.extend_from_slice(f.as_bytes());
        body.push(1);
    }
    let suback = answer_to(&mut s, &frame(0x82, &body), 9);
    assert_eq!(suback, vec![0x90, 7, 0, 7, 0x80, 0x80, 0x80, 0x80, 1]);
}

#[test]
fn a_client_cannot_make_the_broker_write_error_lines_at_will() {
    let b = broker_gateway("127.0.0.1", "");
    // 20 clients, each acking a packet the broker never sent: rumqttd logs each at ERROR (and
    // drops the client).
    for i in 0..20u16 {
        let mut s = raw_session(b.broker_port, &format!("acker-{i}"));
        let id = (1000 + i).to_be_bytes();
        answer_to(&mut s, &frame(0x40, &id), 1);
    }
    b.wait_log(&["broker_internal", "Unsolicited"]);
    let log = b.log();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("Unsolicited")).collect();
    assert_eq!(
        lines.len(),
        1,
        "one rate-limited line:\n{}",
        lines.join("\n")
    );
    assert!(lines[0].contains("WARN"), "{}", lines[0]);
    // The level is the second word of a line.
    let errors: Vec<&str> = log
        .lines()
        .filter(|l| l.split_whitespace().nth(1) == Some("ERROR"))
        .collect();
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}

#[test]
fn a_client_looping_bad_connects_gets_one_refusal_line_per_ten_seconds() {
    let b = broker_gateway("127.0.0.1", "");
    let v5 = frame(
        0x10,
        &[0, 4, b'M', b'Q', b'T', b'T', 5, 0x02, 0, 30, 0, 0, 1, b'x'],
    );
    for _ in 0..100 {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", b.broker_port)).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        assert_eq!(answer_to(&mut s, &v5, 4), vec![0x20, 2, 0, 1]);
    }
    // Another kind of refusal from the same address still gets its own line.
    let mut s = std::net::TcpStream::connect(("127.0.0.1", b.broker_port)).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    assert_eq!(
        answer_to(&mut s, &frame(0x20, &[0, 0]), 4),
        Vec::<u8>::new()
    );
    b.wait_log(&[
        "broker_connect_refused",
        "a packet type only a server sends",
    ]);
    let log = b.log();
    assert_eq!(
        log.matches("protocol level 5").count(),
        1,
        "100 refusals, one line:\n{log}"
    );
}

/// A CONNECT like [`raw_connect`] asking for keep-alive `secs`.
fn raw_connect_keep_alive(client_id: &str, secs: u16) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0x02];
    body.extend_from_slice(&secs.to_be_bytes());
    body.extend_from_slice(&(client_id.len() as u16).to_be_bytes());
    body.extend_from_slice(client_id.as_bytes());
    frame(0x10, &body)
}

#[test]
fn a_client_with_keep_alive_0_is_served_by_default_and_refused_where_the_config_says_so() {
    // MQTT 3.1.1 allows keep-alive 0 ("never ping"); the Eclipse Paho interoperability suite
    // connects that way.
    let b = broker_gateway("127.0.0.1", "");
    let mut s = std::net::TcpStream::connect(("127.0.0.1", b.broker_port)).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    let ack = answer_to(&mut s, &raw_connect_keep_alive("ka0", 0), 4);
    assert_eq!(ack, [0x20, 2, 0, 0], "CONNACK to keep-alive 0\n{}", b.log());
    // SUBSCRIBE ka0/t at QoS 0, packet id 1: a SUBACK proves the session reached rumqttd.
    let mut sub = vec![0, 1, 0, 5];
    sub.extend_from_slice(b"ka0/t");
    sub.push(0);
    assert_eq!(answer_to(&mut s, &frame(0x82, &sub), 5), [0x90, 3, 0, 1, 0]);
    publish(b.broker_port, &["-t", "ka0/t", "-m", "hello"]);
    let got = answer_to(&mut s, &[], 2 + 2 + 5 + 5);
    assert!(
        got.first() == Some(&0x30) && got.ends_with(b"hello"),
        "the keep-alive 0 subscriber got {got:?}"
    );

    let strict = broker_gateway("127.0.0.1", "allow_keep_alive_zero = false\n");
    let mut s = std::net::TcpStream::connect(("127.0.0.1", strict.broker_port)).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    let ack = answer_to(&mut s, &raw_connect_keep_alive("ka0", 0), 4);
    assert_eq!(ack, [0x20, 2, 0, 2], "identifier rejected");
    strict.wait_log(&["allow_keep_alive_zero = false"]);
}
