//! What the HTTP listener shows, as plain data: the `Snapshot` every page is made from, the
//! status page's JSON model (sent on the live event stream), and the `/healthz` verdict.
//! Pure: `mod.rs` collects the snapshot and serves these.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Value as Json};

use crate::flow::{Reading, Value};
use crate::ops::stats::{DeviceView, PollTotals, Stats};

/// Everything one response is made from, taken at one moment.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub gateway: String,
    pub stats: Stats,
    /// Reachability, offline reason and last readings of every device.
    pub devices: BTreeMap<String, DeviceView>,
    /// Poll durations and failures of each Modbus device.
    pub polls: BTreeMap<String, PollTotals>,
    /// Commands by (device, result).
    pub commands: BTreeMap<(String, &'static str), u64>,
}

/// A disconnected upstream is a problem for monitoring once the oldest reading waiting for it
/// is this old: a reconnect after a broker restart or a short outage is not.
pub const UPSTREAM_BACKLOG_LIMIT: Duration = Duration::from_secs(300);

/// `/healthz`: `Ok` when the gateway is doing its job, or every reason it is not: a loop broke
/// its progress promise (the watchdog's rule, `ops::health`), no configured device answers, or
/// upstream is down with readings waiting longer than `UPSTREAM_BACKLOG_LIMIT`. A device that
/// has not been polled yet counts as neither online nor offline.
pub fn health(s: &Snapshot) -> Result<(), Vec<String>> {
    let mut reasons = Vec::new();
    if !s.stats.stalled.is_empty() {
        reasons.push(format!("no progress in {}", s.stats.stalled.join(", ")));
    }
    let offline: Vec<&str> = s
        .stats
        .devices
        .iter()
        .filter(|(_, v)| **v == Some(false))
        .map(|(k, _)| k.as_str())
        .collect();
    if !s.stats.devices.is_empty() && offline.len() == s.stats.devices.len() {
        reasons.push(format!("every device is offline ({})", offline.join(", ")));
    }
    let up = &s.stats.upstream;
    let waiting = s.stats.outbox.oldest_age_s.unwrap_or(0);
    if up.configured && !up.connected && waiting >= UPSTREAM_BACKLOG_LIMIT.as_secs() {
        reasons.push(format!(
            "upstream disconnected; the oldest queued reading is {waiting} s old"
        ));
    }
    if reasons.is_empty() {
        Ok(())
    } else {
        Err(reasons)
    }
}

fn value_json(v: &Value) -> Json {
    match v {
        Value::Bool(b) => json!(b),
        Value::Int(i) => json!(i),
        Value::UInt(u) => json!(u),
        Value::Float(f) => json!(f),
        Value::Text(t) => json!(t),
        Value::Null => Json::Null,
    }
}

fn reading_json(r: &Reading) -> Json {
    json!({
        "point": &*r.point,
        "value": value_json(&r.value),
        "unit": r.unit.as_deref(),
        "quality": r.quality.as_str(),
        "error": r.error,
        "ts": r.ts_ms,
    })
}

/// The status page's model: what the page's script renders, sent whole on every update (the
/// page keeps no state of its own, so a missed event costs nothing).
pub fn page(s: &Snapshot) -> Json {
    let devices: Vec<Json> = s
        .devices
        .iter()
        .map(|(name, d)| {
            let errors = s.polls.get(name).map(|p| &p.errors);
            json!({
                "name": name,
                "online": d.online,
                "reason": d.reason,
                "errors": errors,
                "values": d.values.iter().map(reading_json).collect::<Vec<_>>(),
            })
        })
        .collect();
    let lines: Vec<Json> = s
        .stats
        .lines
        .iter()
        .map(|(name, l)| {
            let t = &l.totals;
            json!({
                "name": name,
                "requests": t.requests,
                "timeouts": t.timeouts,
                "bad_crc": t.bad_crc,
                "wrong_unit": t.wrong_unit,
                "garbage": t.garbage,
                "exceptions": t.exceptions,
                "busy_pct": l.busy_pct,
            })
        })
        .collect();
    let health = health(s);
    json!({
        "gateway": s.gateway,
        "version": s.stats.version,
        "ts": s.stats.ts,
        "uptime_s": s.stats.uptime_s,
        "healthy": health.is_ok(),
        "problems": health.err().unwrap_or_default(),
        "devices": devices,
        "outbox": s.stats.outbox,
        "upstream": s.stats.upstream,
        "lines": lines,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::flow::Quality;
    use crate::ops::stats::{OutboxStats, UpstreamStats};
    use std::sync::Arc;

    pub(crate) fn snapshot() -> Snapshot {
        let reading = Reading {
            device: Arc::from("meter"),
            point: Arc::from("power"),
            value: Value::Float(21.5),
            unit: Some(Arc::from("W")),
            ts_ms: 7,
            quality: Quality::Good,
            error: None,
        };
        Snapshot {
            gateway: "gw".into(),
            stats: Stats {
                version: "0".into(),
                pid: 1,
                ts: 5,
                uptime_s: 3,
                devices: BTreeMap::from([("meter".into(), Some(true)), ("pump".into(), None)]),
                outbox: OutboxStats {
                    rows: 4,
                    bytes: 400,
                    dropped: 0,
                    oldest_age_s: Some(2),
                    commits: 9,
                    dead_letters: 0,
                },
                upstream: UpstreamStats {
                    configured: true,
                    connected: true,
                    sent: 10,
                    acked: 9,
                    reconnects: 1,
                    ack_timeouts: 0,
                    window: 64,
                },
                lines: BTreeMap::new(),
                serial: BTreeMap::new(),
                broker: None,
                stalled: vec![],
            },
            devices: BTreeMap::from([(
                "meter".into(),
                DeviceView {
                    online: Some(true),
                    reason: None,
                    values: vec![reading],
                },
            )]),
            polls: BTreeMap::new(),
            commands: BTreeMap::new(),
        }
    }

    #[test]
    fn healthz_names_every_reason_the_gateway_is_not_doing_its_job() {
        type Edit = fn(&mut Snapshot);
        let cases: [(&str, Edit, Option<&str>); 6] = [
            ("running", |_| {}, None),
            (
                "stalled loop",
                |s| s.stats.stalled.push("uplink".into()),
                Some("no progress in uplink"),
            ),
            (
                "one of two offline",
                |s| {
                    s.stats.devices.insert("pump".into(), Some(false));
                },
                None,
            ),
            (
                "all offline",
                |s| {
                    s.stats.devices.insert("pump".into(), Some(false));
                    s.stats.devices.insert("meter".into(), Some(false));
                },
                Some("every device is offline (meter, pump)"),
            ),
            (
                "upstream briefly down",
                |s| s.stats.upstream.connected = false,
                None,
            ),
            (
                "upstream down with an old backlog",
                |s| {
                    s.stats.upstream.connected = false;
                    s.stats.outbox.oldest_age_s = Some(301);
                },
                Some("upstream disconnected; the oldest queued reading is 301 s old"),
            ),
        ];
        for (what, edit, want) in cases {
            let mut s = snapshot();
            edit(&mut s);
            match (health(&s), want) {
                (Ok(()), None) => {}
                (Err(r), Some(w)) => assert_eq!(r, vec![w.to_string()], "{what}"),
                (got, want) => panic!("{what}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn the_page_model_carries_values_with_unit_and_quality_outbox_and_upstream() {
        let p = page(&snapshot());
        assert_eq!(p["devices"][0]["name"], "meter");
        assert_eq!(p["devices"][0]["online"], true);
        assert_eq!(
            p["devices"][0]["values"][0],
            json!({"point": "power", "value": 21.5, "unit": "W", "quality": "good",
                "error": null, "ts": 7})
        );
        assert_eq!(p["devices"][1]["online"], Json::Null);
        assert_eq!(p["outbox"]["rows"], 4);
        assert_eq!(p["outbox"]["oldest_age_s"], 2);
        assert_eq!(p["upstream"]["connected"], true);
        assert_eq!(p["healthy"], true);
    }
}
