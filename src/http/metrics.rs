//! `/metrics`: the snapshot in the Prometheus text format (0.0.4), written by prometheus-client's
//! encoder from a collector that reads the snapshot (the counters themselves live in the loops
//! that bump them, `ops::stats`; nothing is counted twice). Pure.
//!
//! Names follow Prometheus conventions: `fieldbridge_` prefix, counters end in `_total`,
//! durations in `_seconds`; labels are `device`, `bus` (a `[[buses]]` name, or a Modbus TCP
//! device's own line), `reason`, `kind`, `result`.

use std::fmt;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    prometheus_text, DescriptorEncoder, EncodeCounterValue, EncodeGaugeValue, NoLabelSet,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use super::model::Snapshot;

/// The `Content-Type` of `/metrics`.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// The exposition text of `s`.
pub fn render(s: Snapshot) -> Result<String, fmt::Error> {
    let mut registry = Registry::with_prefix("fieldbridge");
    registry.register_collector(Box::new(Exposition(s)));
    let mut out = String::with_capacity(8 * 1024);
    prometheus_text::encode(&mut out, &registry)?;
    Ok(out)
}

#[derive(Debug)]
struct Exposition(Snapshot);

type Labels<'a> = Vec<(&'static str, &'a str)>;

fn counter<'a, V: EncodeCounterValue>(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    rows: impl IntoIterator<Item = (Labels<'a>, V)>,
) -> fmt::Result {
    let mut m = e.encode_descriptor(name, help, unit, MetricType::Counter)?;
    for (labels, v) in rows {
        m.encode_family(&labels)?
            .encode_counter::<NoLabelSet, V, u64>(&v, None)?;
    }
    Ok(())
}

fn gauge<'a, V: EncodeGaugeValue>(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    rows: impl IntoIterator<Item = (Labels<'a>, V)>,
) -> fmt::Result {
    let mut m = e.encode_descriptor(name, help, unit, MetricType::Gauge)?;
    for (labels, v) in rows {
        m.encode_family(&labels)?.encode_gauge(&v)?;
    }
    Ok(())
}

fn one<'a, V>(v: V) -> [(Labels<'a>, V); 1] {
    [(Vec::new(), v)]
}

impl Collector for Exposition {
    fn encode(&self, mut e: DescriptorEncoder) -> fmt::Result {
        let s = &self.0;
        let st = &s.stats;
        let e = &mut e;
        gauge(
            e,
            "build_info",
            "The running version (value 1).",
            None,
            [(vec![("version", st.version.as_str())], 1u64)],
        )?;
        gauge(
            e,
            "uptime",
            "Time since the gateway started.",
            Some(&Unit::Seconds),
            one(st.uptime_s),
        )?;

        // Devices.
        gauge(
            e,
            "device_up",
            "1 while the device answers, 0 while it is offline or not polled yet.",
            None,
            st.devices
                .iter()
                .map(|(d, up)| (vec![("device", d.as_str())], u64::from(*up == Some(true)))),
        )?;
        {
            let mut m = e.encode_descriptor(
                "poll_duration",
                "Time one poll of every point of a Modbus device took, answered or not.",
                Some(&Unit::Seconds),
                MetricType::Histogram,
            )?;
            for (d, p) in &s.polls {
                let labels: Labels = vec![("device", d.as_str())];
                m.encode_family(&labels)?
                    .encode_histogram::<NoLabelSet>(p.sum_s, p.count, &p.buckets, None)?;
            }
        }
        counter(
            e,
            "poll_errors",
            "Polls that got no usable answer, by reason.",
            None,
            s.polls.iter().flat_map(|(d, p)| {
                p.errors
                    .iter()
                    .map(move |(r, n)| (vec![("device", d.as_str()), ("reason", *r)], *n))
            }),
        )?;

        // Modbus lines.
        let lines = || st.lines.iter().map(|(b, l)| (b.as_str(), &l.totals));
        counter(
            e,
            "line_requests",
            "Modbus requests put on the line, retries included.",
            None,
            lines().map(|(b, t)| (vec![("bus", b)], t.requests)),
        )?;
        counter(
            e,
            "line_timeouts",
            "Modbus requests that got no answer in time.",
            None,
            lines().map(|(b, t)| (vec![("bus", b)], t.timeouts)),
        )?;
        counter(
            e,
            "line_bad_answers",
            "Replies that were not the answer, by kind (other: what the Modbus TCP decoder refused).",
            None,
            lines().flat_map(|(b, t)| {
                let other = t
                    .bad_answers
                    .saturating_sub(t.bad_crc + t.wrong_unit + t.garbage);
                [
                    ("bad_crc", t.bad_crc),
                    ("wrong_unit", t.wrong_unit),
                    ("garbage", t.garbage),
                    ("other", other),
                ]
                .into_iter()
                .map(move |(k, n)| (vec![("bus", b), ("kind", k)], n))
            }),
        )?;
        counter(
            e,
            "line_exceptions",
            "Modbus exception answers.",
            None,
            lines().map(|(b, t)| (vec![("bus", b)], t.exceptions)),
        )?;
        counter(
            e,
            "line_link_errors",
            "Times the port or connection failed to open, or broke.",
            None,
            lines().map(|(b, t)| (vec![("bus", b)], t.link_errors)),
        )?;
        counter(
            e,
            "line_busy",
            "Time the line was busy with exchanges.",
            Some(&Unit::Seconds),
            lines().map(|(b, t)| (vec![("bus", b)], t.busy_ms as f64 / 1000.0)),
        )?;

        // serial_line devices.
        counter(
            e,
            "serial_frames",
            "Frames a serial device delivered that decoded.",
            None,
            st.serial
                .iter()
                .map(|(d, t)| (vec![("device", d.as_str())], t.frames)),
        )?;
        counter(
            e,
            "serial_rejected",
            "Input a serial device delivered that was rejected, by kind.",
            None,
            st.serial.iter().flat_map(|(d, t)| {
                [
                    ("noise_bytes", t.noise_bytes),
                    ("bad_checksum", t.bad_checksums),
                    ("overlong", t.overlong),
                    ("unparsable", t.unparsable),
                    ("timeout", t.timeouts),
                ]
                .into_iter()
                .map(move |(k, n)| (vec![("device", d.as_str()), ("kind", k)], n))
            }),
        )?;

        // Outbox.
        let o = &st.outbox;
        gauge(
            e,
            "outbox_rows",
            "Messages stored, not yet acknowledged upstream.",
            None,
            one(o.rows),
        )?;
        gauge(
            e,
            "outbox_size",
            "Size of the stored messages.",
            Some(&Unit::Bytes),
            one(o.bytes),
        )?;
        gauge(
            e,
            "outbox_oldest_age",
            "Age of the oldest stored message (0 when empty).",
            Some(&Unit::Seconds),
            one(o.oldest_age_s.unwrap_or(0)),
        )?;
        counter(
            e,
            "outbox_dropped",
            "Messages dropped by the outbox bounds or a failed commit.",
            None,
            one(o.dropped),
        )?;
        counter(
            e,
            "outbox_dead_letters",
            "Stored messages no broker would take, set aside.",
            None,
            one(o.dead_letters),
        )?;
        counter(
            e,
            "outbox_commits",
            "Group commits of the outbox.",
            None,
            one(o.commits),
        )?;

        // Upstream.
        let u = &st.upstream;
        if u.configured {
            gauge(
                e,
                "upstream_connected",
                "1 while connected to the upstream broker.",
                None,
                one(u64::from(u.connected)),
            )?;
            counter(
                e,
                "upstream_sent",
                "Messages published upstream.",
                None,
                one(u.sent),
            )?;
            counter(
                e,
                "upstream_acked",
                "Messages the upstream broker acknowledged.",
                None,
                one(u.acked),
            )?;
            counter(
                e,
                "upstream_reconnects",
                "Connections to the upstream broker after the first.",
                None,
                one(u.reconnects),
            )?;
            counter(
                e,
                "upstream_ack_timeouts",
                "Publishes the upstream broker left unacknowledged past upstream.ack_timeout while answering others; each halves the window.",
                None,
                one(u.ack_timeouts),
            )?;
            gauge(
                e,
                "upstream_window",
                "Publishes allowed in flight upstream: upstream.inflight until an ack timeout halved it.",
                None,
                one(u.window),
            )?;
        }

        // Commands.
        counter(
            e,
            "commands",
            "Commands (…/set) by device and result; device \"\" for a device not configured.",
            None,
            s.commands
                .iter()
                .map(|((d, r), n)| (vec![("device", d.as_str()), ("result", *r)], *n)),
        )?;

        // Embedded broker.
        if let Some(b) = &st.broker {
            counter(
                e,
                "broker_forwarded",
                "Local publishes forwarded upstream through the outbox.",
                None,
                one(b.forwarded),
            )?;
            counter(
                e,
                "broker_forward_refused",
                "Forwarded QoS 1/2 publishes whose commit failed.",
                None,
                one(b.forward_refused),
            )?;
            counter(
                e,
                "broker_forward_lost",
                "Forwarded QoS 0 publishes whose commit failed.",
                None,
                one(b.forward_lost),
            )?;
            counter(
                e,
                "broker_subscriber_skipped",
                "Messages a lagging local subscriber never received.",
                None,
                one(b.subscriber_skipped),
            )?;
            gauge(
                e,
                "broker_connections",
                "Client connections of the embedded broker open now.",
                None,
                one(b.connections_accepted.saturating_sub(b.connections_closed) as i64),
            )?;
            counter(
                e,
                "broker_connections_accepted",
                "Client connections the embedded broker accepted.",
                None,
                one(b.connections_accepted),
            )?;
            counter(
                e,
                "broker_connections_refused",
                "Client connections closed at once for want of a slot.",
                None,
                one(b.connections_refused),
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::model::tests::snapshot;
    use crate::ops::stats::{LineReport, PollCounters};
    use std::collections::BTreeMap;
    use std::time::Duration;

    #[test]
    fn the_exposition_has_conventional_names_labels_and_a_cumulative_histogram() {
        let mut s = snapshot();
        let p = PollCounters::default();
        p.observe(Duration::from_millis(3), None);
        p.observe(Duration::from_millis(30), Some("timeout"));
        p.observe(Duration::from_secs(9), Some("timeout"));
        s.polls.insert("meter".into(), p.snapshot());
        let mut line = LineReport::default();
        line.totals.requests = 12;
        line.totals.bad_answers = 3;
        line.totals.bad_crc = 2;
        s.stats.lines.insert("rs485".into(), line);
        s.commands = BTreeMap::from([(("meter".into(), "ok"), 2), (("".into(), "refused"), 1)]);
        let text = render(s).unwrap();
        for want in [
            "# TYPE fieldbridge_device_up gauge",
            "fieldbridge_device_up{device=\"meter\"} 1",
            "fieldbridge_device_up{device=\"pump\"} 0",
            "# TYPE fieldbridge_poll_duration_seconds histogram",
            "fieldbridge_poll_duration_seconds_bucket{device=\"meter\",le=\"0.005\"} 1",
            "fieldbridge_poll_duration_seconds_bucket{device=\"meter\",le=\"0.05\"} 2",
            "fieldbridge_poll_duration_seconds_bucket{device=\"meter\",le=\"5\"} 2",
            "fieldbridge_poll_duration_seconds_bucket{device=\"meter\",le=\"+Inf\"} 3",
            "fieldbridge_poll_duration_seconds_count{device=\"meter\"} 3",
            "fieldbridge_poll_errors_total{device=\"meter\",reason=\"timeout\"} 2",
            "fieldbridge_line_requests_total{bus=\"rs485\"} 12",
            "fieldbridge_line_bad_answers_total{bus=\"rs485\",kind=\"bad_crc\"} 2",
            "fieldbridge_line_bad_answers_total{bus=\"rs485\",kind=\"other\"} 1",
            "fieldbridge_outbox_rows 4",
            "fieldbridge_outbox_size_bytes 400",
            "fieldbridge_outbox_oldest_age_seconds 2",
            "fieldbridge_upstream_connected 1",
            "fieldbridge_upstream_acked_total 9",
            "fieldbridge_commands_total{device=\"meter\",result=\"ok\"} 2",
            "fieldbridge_commands_total{device=\"\",result=\"refused\"} 1",
        ] {
            assert!(
                text.lines().any(|l| l == want),
                "missing {want:?} in\n{text}"
            );
        }
    }
}
