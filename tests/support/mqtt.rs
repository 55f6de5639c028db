//! MQTT on the test's side: a subscriber that records what arrives ([`MqttWatcher`], in
//! process), and independent clients run as processes: `mosquitto_pub`, `mosquitto_sub` and the
//! paho-mqtt script tests/peers/mqtt_ws_client.py ([`MqttClient`]).

use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS, SubscribeReasonCode};
use tokio::sync::oneshot;

use super::process::Proc;
use super::wait::{manifest_dir, poll, venv_python, wait_until, LOCALHOST, POLL_INTERVAL};

/// Generous: a loaded machine can take seconds to connect and subscribe.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// rumqttc retries as fast as it is polled; this keeps a watcher from spinning on a dead broker.
const RECONNECT_BACKOFF: Duration = Duration::from_millis(100);
/// How long a mosquitto_pub may take.
pub const DEADLINE: Duration = Duration::from_secs(20);

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
    pub qos: u8,
}

impl Message {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.payload).unwrap_or_else(|e| {
            panic!(
                "payload on {} is not JSON ({e}): {}",
                self.topic,
                self.text()
            )
        })
    }
}

/// An MQTT subscriber (QoS 1, clean session) recording every publish it receives. It runs on
/// its own thread, reconnects by itself when the broker goes away and subscribes again on every
/// connection.
pub struct MqttWatcher {
    messages: Arc<Mutex<Vec<Message>>>,
    subscriptions: Arc<AtomicUsize>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl MqttWatcher {
    /// Returns once the broker has acknowledged the subscription, so nothing published after
    /// this returns is missed.
    pub fn connect(port: u16, filter: &str) -> MqttWatcher {
        static NEXT_ID: AtomicUsize = AtomicUsize::new(0);
        let client_id = format!(
            "test-watcher-{}-{}",
            std::process::id(),
            NEXT_ID.fetch_add(1, Ordering::SeqCst)
        );
        let mut options = MqttOptions::new(client_id, LOCALHOST.to_string(), port);
        options.set_keep_alive(Duration::from_secs(5));
        options.set_max_packet_size(1 << 20, 1 << 20);
        let (client, events) = AsyncClient::new(options, 16);

        let messages = Arc::new(Mutex::new(Vec::new()));
        let subscriptions = Arc::new(AtomicUsize::new(0));
        let (stop, stop_rx) = oneshot::channel();
        let thread = {
            let (messages, subscriptions) = (messages.clone(), subscriptions.clone());
            let filter = filter.to_owned();
            thread::Builder::new()
                .name(format!("mqtt-watcher-{port}"))
                .spawn(move || {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("watcher runtime");
                    runtime.block_on(async move {
                        let watch = watch_events(client, events, filter, messages, subscriptions);
                        tokio::select! {
                            _ = stop_rx => {}
                            () = watch => {}
                        }
                    });
                })
                .expect("spawn watcher thread")
        };
        let watcher = MqttWatcher {
            messages,
            subscriptions,
            stop: Some(stop),
            thread: Some(thread),
        };
        wait_until(
            START_TIMEOUT,
            &format!("the watcher's subscription to {filter} on port {port}"),
            || watcher.subscriptions() > 0,
        );
        watcher
    }

    /// Subscriptions acknowledged so far: one per (re)connection.
    pub fn subscriptions(&self) -> usize {
        self.subscriptions.load(Ordering::SeqCst)
    }

    pub fn messages(&self) -> Vec<Message> {
        self.messages.lock().unwrap().clone()
    }

    pub fn count(&self, mut pred: impl FnMut(&Message) -> bool) -> usize {
        self.messages
            .lock()
            .unwrap()
            .iter()
            .filter(|m| pred(m))
            .count()
    }

    /// Forgets what was received so far.
    pub fn clear(&self) {
        self.messages.lock().unwrap().clear();
    }

    /// The first message received (before or after the call) that matches `pred`.
    pub async fn wait_for(
        &self,
        mut pred: impl FnMut(&Message) -> bool,
        deadline: Duration,
    ) -> Message {
        let end = Instant::now() + deadline;
        loop {
            if let Some(message) = self.find(&mut pred) {
                return message;
            }
            if Instant::now() >= end {
                self.no_match(deadline)
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    pub fn wait_for_sync(
        &self,
        mut pred: impl FnMut(&Message) -> bool,
        deadline: Duration,
    ) -> Message {
        poll(deadline, || self.find(&mut pred)).unwrap_or_else(|| self.no_match(deadline))
    }

    fn find(&self, pred: &mut impl FnMut(&Message) -> bool) -> Option<Message> {
        self.messages
            .lock()
            .unwrap()
            .iter()
            .find(|m| pred(m))
            .cloned()
    }

    fn no_match(&self, deadline: Duration) -> ! {
        let received: Vec<String> = self
            .messages()
            .iter()
            .map(|m| format!("  {} retain={} {:?}", m.topic, m.retain, m.text()))
            .collect();
        panic!(
            "no MQTT message matched within {deadline:?}; received {}:\n{}",
            received.len(),
            received.join("\n")
        )
    }
}

impl Drop for MqttWatcher {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn watch_events(
    client: AsyncClient,
    mut events: EventLoop,
    filter: String,
    messages: Arc<Mutex<Vec<Message>>>,
    subscriptions: Arc<AtomicUsize>,
) {
    loop {
        match events.poll().await {
            // A clean session forgets subscriptions, so every new connection needs one.
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                client
                    .try_subscribe(filter.clone(), QoS::AtLeastOnce)
                    .expect("queue subscribe");
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                let granted = ack
                    .return_codes
                    .iter()
                    .all(|c| matches!(c, SubscribeReasonCode::Success(_)));
                if granted {
                    subscriptions.fetch_add(1, Ordering::SeqCst);
                }
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                messages.lock().unwrap().push(Message {
                    topic: publish.topic,
                    payload: publish.payload.to_vec(),
                    retain: publish.retain,
                    qos: publish.qos as u8,
                });
            }
            Ok(_) => {}
            Err(_) => tokio::time::sleep(RECONNECT_BACKOFF).await,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Client processes

/// `mosquitto_pub -h 127.0.0.1 -p PORT ARGS…`, to completion. With `-l` it publishes the
/// lines of [`mosquitto_pub_lines`]'s input instead.
pub fn mosquitto_pub(port: u16, args: &[&str]) -> Output {
    mosquitto_pub_lines(port, args, "")
}

/// [`mosquitto_pub`] with `input` on its stdin (one message per line with `-l`).
pub fn mosquitto_pub_lines(port: u16, args: &[&str], input: &str) -> Output {
    Proc::run_with_input(
        "mosquitto_pub",
        Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(args),
        input,
        DEADLINE,
    )
}

/// [`mosquitto_pub`] that must succeed.
pub fn publish(port: u16, args: &[&str]) {
    let out = mosquitto_pub(port, args);
    assert!(
        out.status.success(),
        "mosquitto_pub {args:?}: {}",
        super::process::text(&out)
    );
}

/// An MQTT client process printing what it receives as `MSG <retain> <qos> <topic> <payload>`
/// lines: `mosquitto_sub` ([`mosquitto_sub`]) or the paho script ([`paho`]).
pub struct MqttClient {
    proc: Proc,
}

/// `mosquitto_sub -d` printing each message as `MSG <retain> <qos> <topic> <payload>`; debug
/// lines show CONNACK and SUBACK ("Subscribed (mid: 1): 0, 128").
pub fn mosquitto_sub(port: u16, args: &[&str]) -> MqttClient {
    // stdbuf: its debug lines (the SUBACK) are block-buffered when stdout is a pipe.
    MqttClient {
        proc: Proc::spawn(
            "mosquitto_sub",
            Command::new("stdbuf")
                .args(["-oL", "-eL", "mosquitto_sub"])
                .args(["-d", "-h", "127.0.0.1", "-p", &port.to_string()])
                .args(["-F", "MSG %r %q %t %p"])
                .args(args),
        ),
    }
}

/// The paho-mqtt client of tests/peers/mqtt_ws_client.py (see its --help).
pub fn paho(args: &[&str]) -> MqttClient {
    let script = manifest_dir().join("tests/peers/mqtt_ws_client.py");
    MqttClient {
        proc: Proc::spawn(
            "mqtt_ws_client.py",
            Command::new(venv_python()).arg("-u").arg(script).args(args),
        ),
    }
}

/// tests/peers/qos_burst.py: `count` numbered messages (`{"seq": i, "pad": …}`, `pad` bytes of
/// padding) published on `topic` at `qos` as fast as they are acknowledged; prints
/// `ACKED <n> <seconds>` when all were.
pub fn burst(port: u16, topic: &str, count: usize, qos: u8, pad: usize) -> MqttClient {
    let script = manifest_dir().join("tests/peers/qos_burst.py");
    MqttClient {
        proc: Proc::spawn(
            "qos_burst.py",
            Command::new(venv_python())
                .arg("-u")
                .arg(script)
                .args(["--port", &port.to_string(), "--topic", topic])
                .args(["--count", &count.to_string(), "--qos", &qos.to_string()])
                .args(["--pad", &pad.to_string()]),
        ),
    }
}

impl MqttClient {
    pub fn lines(&self) -> Vec<String> {
        self.proc.lines()
    }

    /// The first output line (already printed or coming) that satisfies `pred`.
    pub fn wait_for(&self, what: &str, deadline: Duration, pred: impl Fn(&str) -> bool) -> String {
        self.proc.wait_for_line(deadline, what, pred)
    }

    /// The messages received so far.
    pub fn messages(&self) -> Vec<Message> {
        self.lines().iter().filter_map(|l| parse_msg(l)).collect()
    }

    /// The first message on `topic` (already received or coming).
    pub fn wait_message(&self, topic: &str, deadline: Duration) -> Message {
        let line = self
            .proc
            .wait_for_line(deadline, &format!("a message on {topic}"), |l| {
                parse_msg(l).is_some_and(|m| m.topic == topic)
            });
        parse_msg(&line).expect("a MSG line")
    }

    /// Waits until a `mosquitto_sub -d` has its SUBACK and returns the granted codes.
    pub fn subscribed(&self) -> Vec<u8> {
        let line = self.wait_for("the SUBACK", DEADLINE, |l| {
            // Not "…were denied.": it goes to stderr and may be read before the SUBACK line.
            l.starts_with("Subscribed (mid:") || l.contains("Connection error")
        });
        let Some((_, codes)) = line.split_once("):") else {
            return Vec::new();
        };
        codes
            .split(',')
            .filter_map(|c| c.trim().parse().ok())
            .collect()
    }

    /// Waits for the process to exit by itself and returns whether it succeeded.
    pub fn wait_exit(&mut self, deadline: Duration) -> bool {
        self.proc.wait_exit(deadline).success()
    }

    pub fn pid(&self) -> u32 {
        self.proc.id()
    }

    pub fn kill9(&mut self) {
        self.proc.kill();
    }
}

fn parse_msg(line: &str) -> Option<Message> {
    let rest = line.strip_prefix("MSG ")?;
    let mut it = rest.splitn(4, ' ');
    let retain = it.next()? == "1";
    let qos = it.next()?.parse().ok()?;
    let topic = it.next()?.to_string();
    let payload = it.next().unwrap_or("").as_bytes().to_vec();
    Some(Message {
        topic,
        payload,
        retain,
        qos,
    })
}

/// An MQTT 3.1.1 CONNECT (clean session, keep-alive 30 s) with a user name and password, as raw
/// bytes, for tests that speak to a listener below any client library.
pub fn connect_packet(client_id: &str, user: &str, password: &str) -> Vec<u8> {
    let s = |b: &mut Vec<u8>, x: &[u8]| {
        b.extend_from_slice(&(x.len() as u16).to_be_bytes());
        b.extend_from_slice(x);
    };
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0x80 | 0x40 | 0x02, 0, 30];
    s(&mut body, client_id.as_bytes());
    s(&mut body, user.as_bytes());
    s(&mut body, password.as_bytes());
    let mut p = vec![0x10];
    let mut n = body.len();
    loop {
        let byte = (n % 128) as u8;
        n /= 128;
        p.push(if n > 0 { byte | 0x80 } else { byte });
        if n == 0 {
            break;
        }
    }
    p.extend_from_slice(&body);
    p
}
