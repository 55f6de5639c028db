//! Harness self-check, not a product test: proves the test peers of tests/support/
//! (mosquitto, the Modbus TCP simulator, the relay, the MQTT watcher, `wait_until`) behave as
//! the gateway's tests assume, using independent clients (mosquitto_pub, mbpoll, raw sockets)
//! rather than the gateway itself.

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;
use support::modbus::{mbpoll, ModbusSim, Target};
use support::mosquitto::Mosquitto;
use support::mqtt::{publish, MqttWatcher};
use support::relay::{Mode, Relay};
use support::{wait_until, wait_until_async};

const DEADLINE: Duration = Duration::from_secs(10);
/// How long "nothing arrives" is watched for. Absence can't be observed any other way; a
/// broken peer would answer within microseconds on loopback.
const QUIET: Duration = Duration::from_millis(300);

/// A QoS 1 publish with mosquitto_pub that must succeed.
fn mosquitto_pub(port: u16, args: &[&str]) {
    publish(port, &[&["-q", "1"], args].concat());
}

/// One mbpoll read against the simulator (unit 1, 0-based addresses): the values it printed,
/// or its error text.
fn mbpoll_tcp(port: u16, args: &[&str]) -> Result<Vec<String>, String> {
    mbpoll(Target::Tcp(port), args, &[]).result()
}

fn read_holding_request(transaction: u16, unit: u8, addr: u16) -> Vec<u8> {
    let mut frame = Vec::with_capacity(12);
    frame.extend(transaction.to_be_bytes());
    frame.extend([0, 0, 0, 6, unit, 3]);
    frame.extend(addr.to_be_bytes());
    frame.extend(1u16.to_be_bytes());
    frame
}

/// Reads one read-holding-registers reply for a single register: (transaction, unit, value).
fn read_holding_reply(stream: &mut TcpStream) -> (u16, u8, u16) {
    let mut reply = [0u8; 11];
    stream.read_exact(&mut reply).expect("read reply");
    assert_eq!(reply[7], 3, "function code in {reply:02x?}");
    (
        u16::from_be_bytes([reply[0], reply[1]]),
        reply[6],
        u16::from_be_bytes([reply[9], reply[10]]),
    )
}

fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    stream
}

/// True if nothing arrives on `stream` within [`QUIET`] and it stays open.
fn stays_silent(stream: &mut TcpStream) -> bool {
    stream.set_read_timeout(Some(QUIET)).unwrap();
    let mut byte = [0u8; 1];
    let silent = matches!(
        stream.read(&mut byte),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
    );
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    silent
}

/// True once the peer has closed or reset the connection.
fn is_closed(stream: &mut TcpStream) -> bool {
    let mut byte = [0u8; 1];
    match stream.read(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != ErrorKind::WouldBlock && e.kind() != ErrorKind::TimedOut,
    }
}

/// A minimal echo server, so that relay tests depend on nothing else.
fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        for mut stream in listener.incoming().map_while(Result::ok) {
            thread::spawn(move || {
                let mut buf = [0u8; 1024];
                while let Ok(n @ 1..) = stream.read(&mut buf) {
                    if stream.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

fn echo(stream: &mut TcpStream, text: &[u8]) {
    stream.write_all(text).unwrap();
    let mut back = vec![0u8; text.len()];
    stream.read_exact(&mut back).expect("echo");
    assert_eq!(back, text);
}

#[test]
fn mosquitto_starts_on_a_free_port_and_delivers_a_publish() {
    let broker = Mosquitto::start();
    let watcher = MqttWatcher::connect(broker.port, "smoke/#");
    mosquitto_pub(broker.port, &["-t", "smoke/live", "-m", "hello"]);
    let message = watcher.wait_for_sync(|m| m.topic == "smoke/live", DEADLINE);
    assert_eq!(message.text(), "hello");
    assert!(!message.retain);

    mosquitto_pub(broker.port, &["-t", "smoke/kept", "-m", "{\"v\":1}", "-r"]);
    let late = MqttWatcher::connect(broker.port, "smoke/kept");
    let retained = late.wait_for_sync(|m| m.topic == "smoke/kept", DEADLINE);
    assert!(retained.retain);
    assert_eq!(retained.json(), json!({"v": 1}));
    assert!(
        broker.log().contains("Received PUBLISH"),
        "{}",
        broker.log()
    );
}

#[test]
fn mqtt_watcher_resubscribes_after_the_broker_restarts_on_the_same_port() {
    let mut broker = Mosquitto::start();
    let port = broker.port;
    let watcher = MqttWatcher::connect(port, "smoke/#");
    broker.kill();
    assert!(
        TcpStream::connect(broker.addr()).is_err(),
        "killed broker still accepts"
    );
    broker.restart();
    assert_eq!(broker.port, port);
    wait_until(DEADLINE, "the watcher to subscribe again", || {
        watcher.subscriptions() >= 2
    });
    mosquitto_pub(port, &["-t", "smoke/again", "-m", "back"]);
    watcher.wait_for_sync(|m| m.topic == "smoke/again" && m.text() == "back", DEADLINE);
}

#[test]
fn sigstopped_mosquitto_accepts_tcp_but_answers_only_after_sigcont() {
    // MQTT 3.1.1 CONNECT, clean session, keep-alive 60 s, client id "x".
    const CONNECT: [u8; 15] = [
        0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60, 0, 1, b'x',
    ];
    let broker = Mosquitto::start();
    broker.sigstop();
    let mut stream = connect(broker.addr());
    stream.write_all(&CONNECT).unwrap();
    assert!(stays_silent(&mut stream), "a stopped broker answered");
    broker.sigcont();
    let mut connack = [0u8; 4];
    stream
        .read_exact(&mut connack)
        .expect("CONNACK after SIGCONT");
    assert_eq!(connack, [0x20, 2, 0, 0]);
}

#[test]
fn modbus_sim_serves_the_default_map_to_mbpoll() {
    let sim = ModbusSim::start(1);
    let read =
        |args: &[&str]| mbpoll_tcp(sim.port, args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
    let holding_float_abcd = read(&["-r", "0", "-c", "1", "-t", "4:float", "-B"]);
    assert_eq!(holding_float_abcd, ["21.5"]);
    assert_eq!(
        read(&["-r", "2", "-c", "1", "-t", "4:int", "-B"]),
        ["-123456"]
    );
    assert_eq!(read(&["-r", "4", "-c", "1", "-t", "4"]), ["2345"]);
    // mbpoll's own default word order is CDAB.
    assert_eq!(read(&["-r", "10", "-c", "1", "-t", "4:float"]), ["21.5"]);
    assert_eq!(read(&["-r", "12", "-c", "1", "-t", "4"]), ["65494 (-42)"]);
    assert_eq!(
        read(&["-r", "13", "-c", "2", "-t", "4:hex"]),
        ["0xEE6B", "0x2800"]
    );
    assert_eq!(read(&["-r", "99", "-c", "1", "-t", "4"]), ["0"]);
    let first: u16 = read(&["-r", "20", "-c", "1", "-t", "4"])[0]
        .parse()
        .unwrap();
    let second: u16 = read(&["-r", "18", "-c", "3", "-t", "4"])[2]
        .parse()
        .unwrap();
    assert_eq!(
        second,
        first + 1,
        "counter at 20 counts the reads covering it"
    );

    assert_eq!(read(&["-r", "0", "-c", "1", "-t", "3"]), ["777"]);
    assert_eq!(
        read(&["-r", "1", "-c", "1", "-t", "3:float", "-B"]),
        ["-3.25"]
    );
    assert_eq!(read(&["-r", "0", "-c", "3", "-t", "0"]), ["1", "0", "1"]);
    assert_eq!(read(&["-r", "0", "-c", "2", "-t", "1"]), ["0", "1"]);

    for table in ["4", "3", "0", "1"] {
        let error = mbpoll_tcp(sim.port, &["-r", "100", "-c", "1", "-t", table]).unwrap_err();
        assert!(
            error.contains("Illegal data address"),
            "table {table}: {error}"
        );
    }
    let error = mbpoll_tcp(sim.port, &["-r", "99", "-c", "2", "-t", "0"]).unwrap_err();
    assert!(
        error.contains("Illegal data address"),
        "coils 99..100: {error}"
    );
}

#[test]
fn modbus_sim_serves_a_spec_map_and_takes_register_changes() {
    let spec = json!({
        "holding": {"0": 0x41AC, "1": 0, "7": 9},
        "input": {"3": 65535},
        "coils": {"5": true},
        "discrete": {"99": true},
    });
    let mut sim = ModbusSim::start_with_spec(1, &spec);
    let read = |args: &[&str]| mbpoll_tcp(sim.port, args).unwrap();
    assert_eq!(
        read(&["-r", "0", "-c", "1", "-t", "4:float", "-B"]),
        ["21.5"]
    );
    assert_eq!(read(&["-r", "7", "-c", "1", "-t", "4"]), ["9"]);
    assert_eq!(
        read(&["-r", "20", "-c", "1", "-t", "4"]),
        ["0"],
        "no counter in a spec"
    );
    assert_eq!(read(&["-r", "20", "-c", "1", "-t", "4"]), ["0"]);
    assert_eq!(read(&["-r", "3", "-c", "1", "-t", "3"]), ["65535 (-1)"]);
    assert_eq!(read(&["-r", "4", "-c", "2", "-t", "0"]), ["0", "1"]);
    assert_eq!(read(&["-r", "99", "-c", "1", "-t", "1"]), ["1"]);

    sim.set_holding(7, 1234);
    assert_eq!(
        mbpoll_tcp(sim.port, &["-r", "7", "-c", "1", "-t", "4"]).unwrap(),
        ["1234"]
    );
}

#[test]
fn muted_modbus_sim_does_not_answer() {
    let mut sim = ModbusSim::start(1);
    let before = sim.requests();
    sim.mute();
    let error = mbpoll_tcp(sim.port, &["-r", "0", "-c", "1", "-t", "4"]).unwrap_err();
    assert!(error.contains("timed out"), "{error}");
    assert_eq!(sim.requests(), before + 1, "the muted request was received");
    sim.unmute();
    assert_eq!(
        mbpoll_tcp(sim.port, &["-r", "4", "-c", "1", "-t", "4"]).unwrap(),
        ["2345"]
    );
}

/// Sends a request and waits until the simulator has taken it in: pymodbus 3.16.1 handles one
/// request per TCP read and discards the rest, so requests must not share a segment.
fn send_request(sim: &mut ModbusSim, stream: &mut TcpStream, request: &[u8]) {
    let before = sim.requests();
    stream.write_all(request).unwrap();
    wait_until(DEADLINE, "the simulator to receive the request", || {
        sim.requests() > before
    });
}

#[test]
fn modbus_sim_ignores_other_unit_ids() {
    let mut sim = ModbusSim::start(1);
    let mut stream = connect(sim.addr());
    send_request(&mut sim, &mut stream, &read_holding_request(7, 2, 4));
    send_request(&mut sim, &mut stream, &read_holding_request(8, 1, 4));
    // Requests are answered in order, so a reply to unit 2 would have come first.
    assert_eq!(read_holding_reply(&mut stream), (8, 1, 2345));
}

#[test]
fn delayed_modbus_sim_reply_arrives_late_on_the_same_connection() {
    let delay = Duration::from_millis(500);
    let mut sim = ModbusSim::start(1);
    sim.set_delay(delay);
    let mut stream = connect(sim.addr());
    let sent = Instant::now();
    send_request(&mut sim, &mut stream, &read_holding_request(1, 1, 0));
    // As a client that gave up on request 1 but kept the connection would.
    send_request(&mut sim, &mut stream, &read_holding_request(2, 1, 4));
    assert_eq!(read_holding_reply(&mut stream), (1, 1, 0x41AC));
    assert!(sent.elapsed() >= delay, "reply after {:?}", sent.elapsed());
    assert_eq!(read_holding_reply(&mut stream), (2, 1, 2345));

    sim.set_delay(Duration::ZERO);
    let sent = Instant::now();
    stream.write_all(&read_holding_request(3, 1, 4)).unwrap();
    assert_eq!(read_holding_reply(&mut stream), (3, 1, 2345));
    assert!(sent.elapsed() < delay, "reply after {:?}", sent.elapsed());
}

#[test]
fn relay_black_hole_stops_forwarding_and_pass_resumes() {
    let relay = Relay::start(echo_server());
    let mut stream = connect(relay.addr());
    echo(&mut stream, b"one");
    assert_eq!(relay.connections(), 1);

    relay.set_mode(Mode::BlackHole);
    stream.write_all(b"two").unwrap();
    assert!(stays_silent(&mut stream), "black hole forwarded");
    let mut newcomer = connect(relay.addr());
    newcomer.write_all(b"three").unwrap();
    assert!(
        stays_silent(&mut newcomer),
        "black hole forwarded a new connection"
    );
    assert_eq!(relay.connections(), 2);

    relay.set_mode(Mode::Pass);
    let mut held = [0u8; 3];
    stream.read_exact(&mut held).unwrap();
    assert_eq!(
        &held, b"two",
        "held bytes are delivered once the link passes again"
    );
    let mut held = [0u8; 5];
    newcomer.read_exact(&mut held).unwrap();
    assert_eq!(&held, b"three");
    echo(&mut stream, b"four");
}

#[test]
fn relay_reset_cuts_current_connections_and_then_passes() {
    let relay = Relay::start(echo_server());
    let mut first = connect(relay.addr());
    let mut second = connect(relay.addr());
    echo(&mut first, b"a");
    echo(&mut second, b"b");
    relay.set_mode(Mode::Reset);
    assert!(is_closed(&mut first));
    assert!(is_closed(&mut second));
    wait_until(DEADLINE, "the relay to drop both connections", || {
        relay.connections() == 0
    });
    let mut third = connect(relay.addr());
    echo(&mut third, b"c");
}

#[test]
fn relay_refuse_cuts_connections_until_pass() {
    let relay = Relay::start(echo_server());
    let mut existing = connect(relay.addr());
    echo(&mut existing, b"a");
    relay.set_mode(Mode::Refuse);
    assert!(is_closed(&mut existing));
    let mut refused = connect(relay.addr());
    let _ = refused.write_all(b"b");
    assert!(is_closed(&mut refused));
    relay.set_mode(Mode::Pass);
    echo(&mut connect(relay.addr()), b"c");
}

#[tokio::test]
async fn mqtt_through_a_relay_survives_a_reset_in_an_async_test() {
    let broker = Mosquitto::start();
    let relay = Relay::start(broker.addr());
    let watcher = MqttWatcher::connect(relay.port(), "smoke/#");
    relay.set_mode(Mode::Reset);
    wait_until_async(DEADLINE, "the watcher to subscribe again", || {
        watcher.subscriptions() >= 2
    })
    .await;
    mosquitto_pub(broker.port, &["-t", "smoke/relayed", "-m", "ok"]);
    watcher
        .wait_for(|m| m.topic == "smoke/relayed", DEADLINE)
        .await;
}

#[test]
#[should_panic(expected = "waiting for the impossible")]
fn wait_until_names_what_it_waited_for() {
    wait_until(Duration::from_millis(50), "the impossible", || false);
}
