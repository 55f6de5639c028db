//! One upstream MQTT connection after CONNACK, written in batches. rumqttc keeps the protocol
//! state (packet ids, what awaits an ack, pings) and the codec; this module owns the socket's
//! rhythm: every packet the uplink queues in one turn goes out in one flush, and every packet
//! that has arrived is read in one go.
//!
//! rumqttc's own `EventLoop::poll` writes and flushes each request on its own, one syscall per
//! PUBLISH, and hands each packet over through a channel and a wake-up; during a drain that was
//! a third of the gateway's CPU and made the upstream broker read one PUBLISH per `read`.
//!
//! The uplink decides what to send and what a PUBACK means (`uplink`, `plan`,
//! `outbox::inflight`); this module only moves packets. rumqttc's connection errors are put in
//! our words here (`LinkError`).

use std::time::Duration;

use futures_util::FutureExt;
use rumqttc::{
    ConnectionError, Disconnect, Event, EventLoop, Incoming, Packet, PingReq, Publish, QoS,
    Request, StateError, Subscribe,
};
use tokio::time::timeout;

/// Why a connection failed or ended without a stop: logged by the uplink (as
/// `upstream_connect_failed` or `upstream_disconnected`), which then reconnects.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("no CONNACK within {}", humantime::format_duration(*wait))]
    NoConnAck { wait: Duration },
    /// Something answered the CONNECT, but not in MQTT (an HTTP server, a TLS port spoken to
    /// in plain TCP, another protocol): `addr` is `host:port`.
    #[error("{addr} does not answer as an MQTT broker ({reply})")]
    NotMqtt { addr: String, reply: &'static str },
    /// The broker answered the CONNECT with a refusal (`code`: the MQTT return code's name).
    #[error("broker refused the connection: {code}")]
    Refused { code: String },
    /// The connection could not be set up (DNS, TCP, TLS, or the broker closed it).
    #[error("{0}")]
    Connect(Cause),
    /// The connection was up and broke.
    #[error("{0}")]
    Lost(Cause),
}

/// What broke a connection, in our words.
#[derive(Debug, thiserror::Error)]
pub enum Cause {
    #[error("no answer to keep-alive ping (link dead or broker hung)")]
    PingTimeout,
    #[error("the broker took nothing we wrote for {} (link stalled)", humantime::format_duration(*.0))]
    WriteStalled(Duration),
    /// rumqttc would have to reuse a packet id the broker has not acknowledged yet: the broker
    /// acknowledges far out of order, or lost a PUBACK.
    #[error("packet id {0} is due for reuse but the broker never acknowledged it")]
    PacketIdInUse(u16),
    /// Anything else, as rumqttc describes it (I/O, TLS, protocol).
    #[error("{0}")]
    Other(String),
}

/// What the broker said that the uplink acts on.
#[derive(Debug)]
pub enum Heard {
    /// A PUBACK for the publish that went out with this packet id.
    Acked(u16),
    /// A message for one of our subscriptions.
    Publish(Publish),
}

/// At most this many packets are taken per `read`: enough that a burst of PUBACKs is one turn
/// of the uplink, few enough that a flood of incoming publishes still lets it send.
const READ_BATCH: usize = 256;

pub struct Link {
    ev: EventLoop,
    /// Packets for the next `flush`, in order.
    queue: Vec<Packet>,
    write_timeout: Duration,
}

impl Link {
    /// Connects with rumqttc's `ev` and waits at most `wait` for the broker's CONNACK;
    /// `addr` (`host:port`) names the broker in errors. `write_timeout`: how long a flush may
    /// find no room in the socket before the link counts as stalled.
    pub async fn connect(
        mut ev: EventLoop,
        addr: String,
        wait: Duration,
        write_timeout: Duration,
    ) -> Result<Link, LinkError> {
        let connack = timeout(wait, async {
            loop {
                match ev.poll().await {
                    Ok(Event::Incoming(Incoming::ConnAck(a))) => return Ok(a),
                    Ok(_) => {}
                    Err(e) => {
                        return Err(not_mqtt(&e, addr.clone())
                            .unwrap_or_else(|| describe(e, LinkError::Connect)))
                    }
                }
            }
        })
        .await
        .map_err(|_| LinkError::NoConnAck { wait })??;
        if connack.code != rumqttc::ConnectReturnCode::Success {
            return Err(LinkError::Refused {
                code: format!("{:?}", connack.code),
            });
        }
        // From here on, `poll` is never called again: it would write on its own.
        ev.state.events.clear();
        Ok(Link {
            ev,
            queue: Vec::with_capacity(64),
            write_timeout,
        })
    }

    /// Queues a QoS 1 PUBLISH and returns its packet id.
    pub fn publish(
        &mut self,
        topic: String,
        payload: Vec<u8>,
        retain: bool,
    ) -> Result<u16, LinkError> {
        let mut p = Publish::new(topic, QoS::AtLeastOnce, payload);
        p.retain = retain;
        if self.request(Request::Publish(p))? {
            if let Some(Packet::Publish(p)) = self.queue.last() {
                return Ok(p.pkid);
            }
        }
        // rumqttc holds a publish back when its packet id is still unacknowledged, and would
        // hold back every later one behind it; we end the connection instead and send again
        // from the outbox.
        Err(LinkError::Lost(Cause::PacketIdInUse(
            self.ev.state.collision.take().map_or(0, |p| p.pkid),
        )))
    }

    /// Queues a QoS 1 SUBSCRIBE to `filter`.
    pub fn subscribe(&mut self, filter: String) -> Result<(), LinkError> {
        self.request(Request::Subscribe(Subscribe::new(filter, QoS::AtLeastOnce)))
            .map(drop)
    }

    /// Queues a PINGREQ; fails when the last one is still unanswered.
    pub fn ping(&mut self) -> Result<(), LinkError> {
        self.request(Request::PingReq(PingReq)).map(drop)
    }

    /// Queues a DISCONNECT.
    pub fn disconnect(&mut self) -> Result<(), LinkError> {
        self.request(Request::Disconnect(Disconnect)).map(drop)
    }

    /// Passes `r` through rumqttc's state and queues the packet it yields; `false` when it
    /// yields none (it held a publish back).
    fn request(&mut self, r: Request) -> Result<bool, LinkError> {
        match self.ev.state.handle_outgoing_packet(r).map_err(lost)? {
            Some(packet) => {
                self.queue.push(packet);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    pub fn has_queued(&self) -> bool {
        !self.queue.is_empty()
    }

    /// How long a flush may find no room in the socket before the link counts as stalled.
    pub fn write_timeout(&self) -> Duration {
        self.write_timeout
    }

    /// Writes everything queued and flushes it: one write for many packets. Waits while the
    /// socket has no room, without a limit of its own (the caller puts `write_timeout` on the
    /// slow case only, so the fast one arms no timer).
    ///
    /// Not cancel-safe: a flush dropped half-way leaves packets unsent that rumqttc's state
    /// counts as sent; the caller must then drop the link (the outbox sends them again on the
    /// next connection).
    pub async fn flush(&mut self) -> Result<(), LinkError> {
        let Some(net) = self.ev.network.as_mut() else {
            return Err(LinkError::Lost(Cause::Other("not connected".into())));
        };
        for p in self.queue.drain(..) {
            net.write(p).await.map_err(lost)?;
        }
        net.flush().await.map_err(lost)
    }

    /// Waits for at least one packet from the broker and takes every other one already here
    /// (at most `READ_BATCH`); what they say is then available from `heard`, and their replies
    /// (a PUBACK for a publish we received) are queued for the next flush. Paced (`Some(d)`, see
    /// `plan::read_pace`): waits `d` instead, then takes what has arrived, possibly nothing.
    /// Returns how many packets it took. Cancel-safe: a packet half-read stays buffered for the
    /// next call.
    pub async fn read(&mut self, pace: Option<Duration>) -> Result<usize, LinkError> {
        let Some(net) = self.ev.network.as_mut() else {
            return std::future::pending().await;
        };
        let mut got = Vec::new();
        match pace {
            Some(d) => tokio::time::sleep(d).await,
            None => got.push(net.read().await.map_err(lost)?),
        }
        while got.len() < READ_BATCH {
            match net.read().now_or_never() {
                Some(p) => got.push(p.map_err(lost)?),
                None => break,
            }
        }
        let n = got.len();
        for p in got {
            if let Some(reply) = self.ev.state.handle_incoming_packet(p).map_err(lost)? {
                self.queue.push(reply);
            }
        }
        Ok(n)
    }

    /// The next thing the broker said that matters to the uplink, in order.
    pub fn heard(&mut self) -> Option<Heard> {
        while let Some(e) = self.ev.state.events.pop_front() {
            match e {
                Event::Incoming(Incoming::PubAck(a)) => return Some(Heard::Acked(a.pkid)),
                Event::Incoming(Incoming::Publish(p)) => return Some(Heard::Publish(p)),
                _ => {}
            }
        }
        None
    }
}

fn lost(e: StateError) -> LinkError {
    describe(ConnectionError::MqttState(e), LinkError::Lost)
}

/// rumqttc's connection error in our words; `broke` says whether it hit a connection being set
/// up (`LinkError::Connect`) or one that was up (`LinkError::Lost`).
fn describe(e: ConnectionError, broke: fn(Cause) -> LinkError) -> LinkError {
    match e {
        ConnectionError::MqttState(StateError::AwaitPingResp) => broke(Cause::PingTimeout),
        ConnectionError::ConnectionRefused(code) => LinkError::Refused {
            code: format!("{code:?}"),
        },
        other => broke(Cause::Other(other.to_string())),
    }
}

/// `Some` when the error says the peer's answer to our CONNECT was not MQTT: rumqttc's own
/// words for that ("Promised boundary crossed: 39268", "Invalid Connect return code: 170") name
/// its parser's internals, not the problem, which is the address.
fn not_mqtt(e: &ConnectionError, addr: String) -> Option<LinkError> {
    let reply = match e {
        ConnectionError::NotConnAck(_) => "its first packet is not a CONNACK",
        ConnectionError::MqttState(StateError::Deserialization(_)) => {
            "its reply is not a valid MQTT packet"
        }
        ConnectionError::MqttState(StateError::WrongPacket) => "its reply is not a CONNACK",
        _ => return None,
    };
    Some(LinkError::NotMqtt { addr, reply })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_that_does_not_speak_mqtt_is_named_by_its_address_not_by_parser_internals() {
        use rumqttc::mqttbytes::Error as Parse;
        let addr = || "plc.local:1883".to_string();
        let cases: Vec<(ConnectionError, Option<&str>)> = vec![
            (
                ConnectionError::MqttState(StateError::Deserialization(
                    Parse::BoundaryCrossed(39268),
                )),
                Some("plc.local:1883 does not answer as an MQTT broker (its reply is not a valid MQTT packet)"),
            ),
            (
                ConnectionError::MqttState(StateError::Deserialization(
                    Parse::InvalidConnectReturnCode(170),
                )),
                Some("plc.local:1883 does not answer as an MQTT broker (its reply is not a valid MQTT packet)"),
            ),
            (
                ConnectionError::NotConnAck(rumqttc::Packet::PingResp),
                Some("plc.local:1883 does not answer as an MQTT broker (its first packet is not a CONNACK)"),
            ),
            (ConnectionError::NetworkTimeout, None),
            (
                ConnectionError::Io(std::io::ErrorKind::ConnectionRefused.into()),
                None,
            ),
        ];
        for (e, want) in cases {
            let what = e.to_string();
            assert_eq!(
                not_mqtt(&e, addr()).map(|l| l.to_string()).as_deref(),
                want,
                "{what}"
            );
        }
    }
}
