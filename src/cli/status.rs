//! `fieldbridge status`: asks the running daemon how it is doing, by reading the retained stats
//! snapshot it keeps on its own embedded broker (`ops::stats::Reporter` publishes it), and renders
//! it for a person. It never opens the outbox database: that belongs to the daemon.

use std::time::Duration;

use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS};

use crate::config::Config;
use crate::mqtt::topics::Topics;
use crate::ops::stats::{LineReport, Stats};

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("the embedded broker is disabled in the config; status is read from it")]
    NoBroker,
    #[error("cannot reach the gateway's broker at {addr}: {reason} (is fieldbridge running?)")]
    Unreachable { addr: String, reason: String },
    #[error(
        "no stats on {topic} within {wait:?} (is fieldbridge running, and is this its config?)"
    )]
    NoStats { topic: String, wait: Duration },
    #[error("unreadable stats on {topic}: {reason}")]
    Bad { topic: String, reason: String },
}

/// Reads the daemon's latest stats snapshot from its broker, waiting at most `wait`.
pub async fn fetch(cfg: &Config, wait: Duration) -> Result<Stats, StatusError> {
    let broker = cfg.broker.as_ref().ok_or(StatusError::NoBroker)?;
    let host = if broker.listen.ip().is_unspecified() {
        "127.0.0.1".to_string()
    } else {
        broker.listen.ip().to_string()
    };
    let addr = format!("{host}:{}", broker.listen.port());
    let topic = Topics::new(&cfg.gateway.topic_prefix, &cfg.gateway.id).stats();
    let client_id = format!("fieldbridge-status-{}", std::process::id());
    let mut o = MqttOptions::new(client_id, host, broker.listen.port());
    o.set_keep_alive(Duration::from_secs(10));
    let (client, mut ev) = AsyncClient::new(o, 4);
    let result = tokio::time::timeout(wait, async {
        loop {
            match ev.poll().await {
                Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                    if let Err(e) = client.try_subscribe(&topic, QoS::AtLeastOnce) {
                        return Err(StatusError::Unreachable {
                            addr: addr.clone(),
                            reason: e.to_string(),
                        });
                    }
                }
                Ok(Event::Incoming(Incoming::Publish(p))) if p.topic == topic => {
                    return serde_json::from_slice::<Stats>(&p.payload).map_err(|e| {
                        StatusError::Bad {
                            topic: topic.clone(),
                            reason: e.to_string(),
                        }
                    });
                }
                Ok(_) => {}
                Err(e) => {
                    return Err(StatusError::Unreachable {
                        addr: addr.clone(),
                        reason: e.to_string(),
                    })
                }
            }
        }
    })
    .await;
    let _ = client.try_disconnect();
    match result {
        Ok(r) => r,
        Err(_) => Err(StatusError::NoStats {
            topic: topic.clone(),
            wait,
        }),
    }
}

/// A human-readable report; `now_ms` is the current time in ms since the Unix epoch.
pub fn render(s: &Stats, now_ms: u64) -> String {
    let mut out = String::new();
    let age = now_ms.saturating_sub(s.ts) / 1000;
    out.push_str(&format!(
        "fieldbridge {} (pid {}), up {}, snapshot {}s old\n",
        s.version,
        s.pid,
        humantime::format_duration(Duration::from_secs(s.uptime_s)),
        age
    ));
    let online = s.devices.values().filter(|v| **v == Some(true)).count();
    out.push_str(&format!("devices: {online}/{} online\n", s.devices.len()));
    for (name, state) in &s.devices {
        let st = match state {
            Some(true) => "online",
            Some(false) => "offline",
            None => "not polled yet",
        };
        out.push_str(&format!("  {name:<24} {st}\n"));
    }
    let oldest = s
        .outbox
        .oldest_age_s
        .map(|a| {
            format!(
                ", oldest {}",
                humantime::format_duration(Duration::from_secs(a))
            )
        })
        .unwrap_or_default();
    out.push_str(&format!(
        "outbox: {} messages queued ({} bytes){oldest}, {} dropped\n",
        s.outbox.rows, s.outbox.bytes, s.outbox.dropped
    ));
    if s.outbox.dead_letters > 0 {
        out.push_str(&format!(
            "dead letters: {} stored messages cannot be sent upstream (invalid topic or too \
             large); see EVENT=outbox_dead_letter in the journal\n",
            s.outbox.dead_letters
        ));
    }
    let up = if !s.upstream.configured {
        "not configured".to_string()
    } else {
        format!(
            "{} (sent {}, acked {}, reconnects {})",
            if s.upstream.connected {
                "connected"
            } else {
                "disconnected"
            },
            s.upstream.sent,
            s.upstream.acked,
            s.upstream.reconnects
        )
    };
    out.push_str(&format!("upstream: {up}\n"));
    if s.upstream.ack_timeouts > 0 {
        out.push_str(&format!(
            "upstream window: {} in flight after {} ack timeouts (the broker left publishes \
             unacknowledged; it may cap them below upstream.inflight); see \
             EVENT=upstream_ack_timeout in the journal\n",
            s.upstream.window, s.upstream.ack_timeouts
        ));
    }
    if let Some(b) = &s.broker {
        out.push_str(&format!(
            "local broker: {} clients connected ({} connections refused); {} forwarded upstream, {} refused, {} lost; {} messages skipped for lagging subscribers ({} cursor jumps)\n",
            b.connections_accepted.saturating_sub(b.connections_closed),
            b.connections_refused,
            b.forwarded, b.forward_refused, b.forward_lost, b.subscriber_skipped, b.cursor_jumps
        ));
    }
    if !s.lines.is_empty() {
        out.push_str("modbus lines:\n");
        for (name, l) in &s.lines {
            out.push_str(&line_report(name, l));
        }
    }
    if !s.serial.is_empty() {
        out.push_str("serial devices:\n");
        for (name, c) in &s.serial {
            out.push_str(&format!(
                "  {name:<24} {} frames, {} noise bytes, {} bad checksums, {} unparsable, {} overlong, {} timeouts, {} opens\n",
                c.frames, c.noise_bytes, c.bad_checksums, c.unparsable, c.overlong, c.timeouts, c.opens
            ));
        }
    }
    if !s.stalled.is_empty() {
        out.push_str(&format!(
            "WATCHDOG: no progress in {}\n",
            s.stalled.join(", ")
        ));
    }
    out
}

/// One Modbus line and its units: what a field engineer reads to tell a wiring fault from a
/// dead device, and a slow unit from a busy line.
fn line_report(name: &str, l: &LineReport) -> String {
    let t = &l.totals;
    let busy = l
        .busy_pct
        .map(|p| format!("; busy {p:.0}% of the time"))
        .unwrap_or_default();
    let overruns = if t.overruns > 0 {
        format!(", overrun in {} windows (EVENT=line_overrun)", t.overruns)
    } else {
        String::new()
    };
    let mut out = format!(
        "  {name:<24} {} requests, {} timeouts, {} bad answers ({} bad CRC, {} wrong unit, {} garbage), {} exceptions, {} link errors{busy}{overruns}\n",
        t.requests, t.timeouts, t.bad_answers, t.bad_crc, t.wrong_unit, t.garbage, t.exceptions, t.link_errors
    );
    for (id, u) in &l.units {
        let u_t = &u.totals;
        let who = if u.devices.is_empty() {
            format!("unit {id}")
        } else {
            format!("unit {id} ({})", u.devices.join(", "))
        };
        let response = u
            .response
            .map(|r| format!("; {:.0} ms per answer (max {:.0} ms)", r.mean_ms, r.max_ms))
            .unwrap_or_default();
        let late = if u_t.late_polls > 0 {
            format!(", {} polls late", u_t.late_polls)
        } else {
            String::new()
        };
        let hint = if u_t.bad_crc > 0 || u_t.garbage > 0 {
            " - check baud, parity, termination"
        } else if u_t.wrong_unit > 0 {
            " - another device answers: check unit ids"
        } else {
            ""
        };
        out.push_str(&format!(
            "    {who:<26} {} requests, {} answers, {} timeouts, {} bad CRC, {} wrong unit, {} garbage, {} exceptions{late}{response}{hint}\n",
            u_t.requests, u_t.answers, u_t.timeouts, u_t.bad_crc, u_t.wrong_unit, u_t.garbage, u_t.exceptions
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::stats::{OutboxStats, UpstreamStats};
    use std::collections::BTreeMap;

    #[test]
    fn report_lists_every_device_the_outbox_the_upstream_state_and_the_line_counters() {
        let s = Stats {
            broker: Some(crate::ops::stats::BrokerTotals {
                forwarded: 9,
                forward_refused: 1,
                forward_lost: 0,
                cursor_jumps: 2,
                subscriber_skipped: 3000,
                connections_accepted: 5,
                connections_refused: 1,
                connections_closed: 3,
            }),
            serial: [(
                "air".to_string(),
                crate::ops::stats::SerialTotals {
                    opens: 1,
                    frames: 40,
                    noise_bytes: 7,
                    bad_checksums: 2,
                    overlong: 0,
                    unparsable: 1,
                    timeouts: 0,
                },
            )]
            .into(),
            lines: [(
                "rs485".to_string(),
                LineReport {
                    totals: crate::ops::stats::LineTotals {
                        requests: 120,
                        timeouts: 3,
                        bad_answers: 12,
                        bad_crc: 12,
                        exceptions: 0,
                        link_errors: 0,
                        busy_ms: 9000,
                        overruns: 2,
                        ..Default::default()
                    },
                    busy_pct: Some(97.4),
                    units: [(
                        "3".to_string(),
                        crate::ops::stats::UnitReport {
                            devices: vec!["meter".into()],
                            totals: crate::ops::stats::UnitTotals {
                                requests: 40,
                                answers: 28,
                                bad_crc: 12,
                                late_polls: 7,
                                ..Default::default()
                            },
                            response: Some(crate::ops::stats::ResponseTimes {
                                mean_ms: 251.4,
                                max_ms: 262.0,
                            }),
                        },
                    )]
                    .into(),
                },
            )]
            .into(),
            version: "0.1.0".into(),
            pid: 42,
            ts: 10_000,
            uptime_s: 61,
            devices: BTreeMap::from([
                ("meter".into(), Some(false)),
                ("plc".into(), Some(true)),
                ("new".into(), None),
            ]),
            outbox: OutboxStats {
                rows: 12,
                bytes: 3400,
                dropped: 1,
                oldest_age_s: Some(90),
                commits: 0,
                dead_letters: 2,
            },
            upstream: UpstreamStats {
                configured: true,
                connected: true,
                sent: 5,
                acked: 4,
                reconnects: 2,
                ack_timeouts: 2,
                window: 16,
            },
            stalled: vec![],
        };
        let r = render(&s, 12_000);
        assert!(
            r.contains("fieldbridge 0.1.0 (pid 42), up 1m 1s, snapshot 2s old"),
            "{r}"
        );
        assert!(r.contains("devices: 1/3 online"), "{r}");
        assert!(r.contains("meter") && r.contains("offline"), "{r}");
        assert!(r.contains("not polled yet"), "{r}");
        assert!(
            r.contains("outbox: 12 messages queued (3400 bytes), oldest 1m 30s, 1 dropped"),
            "{r}"
        );
        assert!(
            r.contains("dead letters: 2 stored messages cannot be sent upstream"),
            "{r}"
        );
        assert!(
            r.contains("upstream: connected (sent 5, acked 4, reconnects 2)"),
            "{r}"
        );
        assert!(
            r.contains("upstream window: 16 in flight after 2 ack timeouts"),
            "{r}"
        );
        assert!(
            r.contains("rs485                    120 requests, 3 timeouts, 12 bad answers (12 bad CRC, 0 wrong unit, 0 garbage), 0 exceptions, 0 link errors; busy 97% of the time, overrun in 2 windows (EVENT=line_overrun)"),
            "{r}"
        );
        assert!(
            r.contains("    unit 3 (meter)             40 requests, 28 answers, 0 timeouts, 12 bad CRC, 0 wrong unit, 0 garbage, 0 exceptions, 7 polls late; 251 ms per answer (max 262 ms) - check baud, parity, termination"),
            "{r}"
        );
        assert!(
            r.contains("air                      40 frames, 7 noise bytes, 2 bad checksums, 1 unparsable, 0 overlong, 0 timeouts, 1 opens"),
            "{r}"
        );
        assert!(
            r.contains("local broker: 2 clients connected (1 connections refused); 9 forwarded upstream, 1 refused, 0 lost; 3000 messages skipped for lagging subscribers (2 cursor jumps)"),
            "{r}"
        );
        assert!(!r.contains("WATCHDOG"), "{r}");
    }
}
