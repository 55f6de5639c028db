//! The HTTP listener (issue 16): `/metrics` from a gateway polling the pymodbus simulator,
//! checked by `promtool` and against an exact workload; `/healthz`; and the live status page
//! in headless Chromium, updated by its event stream when a register changes.

mod support;

use std::path::PathBuf;

use support::gateway::{fieldbridge, hash_of, Gateway, GatewayConfig, SimDevice};
use support::http::{get, promtool_check, sample, Browser};
use support::modbus::ModbusSim;
use support::mqtt::publish;
use support::process::text;
use support::{free_port, wait_for, wait_until, LONG};

/// Two points of the simulator's default map: a read-only f32 (21.5 °C) and a writable u16
/// scaled by 0.1 (2345 → 234.5 V).
const POINTS: &str = r#"
[[devices.points]]
name = "temperature"
table = "holding"
address = 0
type = "f32"
unit = "°C"

[[devices.points]]
name = "voltage"
table = "holding"
address = 4
type = "u16"
scale = 0.1
unit = "V"
writable = true
"#;

/// The simulator as device `dev` polled every `interval`, `[http]` on a free port, and broker
/// user `op` (password `pw`) who may send commands.
fn gateway(sim: &ModbusSim, interval: &'static str) -> (Gateway, u16) {
    gateway_on(sim, interval, "127.0.0.1")
}

fn config(sim: &ModbusSim, interval: &'static str, ip: &str, http: u16) -> GatewayConfig {
    GatewayConfig::standard()
        .with(SimDevice::new(sim.port).interval(interval).points(POINTS))
        .with(format!("[http]\nlisten = \"{ip}:{http}\"\n"))
}

fn gateway_on(sim: &ModbusSim, interval: &'static str, ip: &str) -> (Gateway, u16) {
    let http = free_port();
    let gw = config(sim, interval, ip, http)
        .with(format!(
            "[[broker.users]]\nname = \"op\"\npassword_hash = \"{}\"\ncommands = true\n",
            hash_of("pw")
        ))
        .start_in_temp();
    wait_until(LONG, "the HTTP listener to answer", || {
        std::net::TcpStream::connect(("127.0.0.1", http)).is_ok()
    });
    (gw, http)
}

fn metrics(port: u16) -> String {
    let r = get(port, "/metrics", None);
    assert_eq!(r.status, 200, "{}", r.body);
    r.body
}

#[test]
fn metrics_pass_promtool_and_count_exactly_the_polls_requests_and_commands_of_a_known_workload() {
    let mut sim = ModbusSim::start(1);
    // One poll at start, then none for an hour: every request the simulator saw is known.
    let (gw, http) = gateway(&sim, "1h");
    wait_until(LONG, "dev to be polled once", || {
        sample(&metrics(http), "fieldbridge_device_up{device=\"dev\"}") == Some(1.0)
    });
    // One write (one request on the line) and one refused command (no bus traffic).
    publish(
        gw.broker_port,
        &[
            "-u",
            "op",
            "-P",
            "pw",
            "-t",
            "fieldbridge/gw/dev/voltage/set",
            "-m",
            "12.5",
        ],
    );
    publish(
        gw.broker_port,
        &[
            "-u",
            "op",
            "-P",
            "pw",
            "-t",
            "fieldbridge/gw/dev/temperature/set",
            "-m",
            "1",
        ],
    );
    let text = wait_for(LONG, "both command results to be counted", || {
        let m = metrics(http);
        let ok = sample(
            &m,
            "fieldbridge_commands_total{device=\"dev\",result=\"ok\"}",
        );
        let refused = sample(
            &m,
            "fieldbridge_commands_total{device=\"dev\",result=\"refused\"}",
        );
        (ok == Some(1.0) && refused == Some(1.0)).then_some(m)
    });
    let seen = sim.requests();
    // The poll reads two register ranges or one, as the planner merged them; both sides count
    // the same exchanges, plus the write.
    assert_eq!(
        sample(&text, "fieldbridge_line_requests_total{bus=\"dev\"}"),
        Some(seen as f64),
        "{text}"
    );
    assert!(
        seen >= 2,
        "the poll and the write reached the simulator: {seen}"
    );
    for (series, want) in [
        (
            "fieldbridge_poll_duration_seconds_count{device=\"dev\"}",
            1.0,
        ),
        (
            "fieldbridge_poll_duration_seconds_bucket{device=\"dev\",le=\"+Inf\"}",
            1.0,
        ),
        ("fieldbridge_line_timeouts_total{bus=\"dev\"}", 0.0),
        (
            "fieldbridge_line_bad_answers_total{bus=\"dev\",kind=\"garbage\"}",
            0.0,
        ),
        ("fieldbridge_device_up{device=\"dev\"}", 1.0),
        ("fieldbridge_outbox_dropped_total", 0.0),
    ] {
        assert_eq!(sample(&text, series), Some(want), "{series} in\n{text}");
    }
    assert!(
        !text.contains("fieldbridge_poll_errors_total{"),
        "no poll failed:\n{text}"
    );

    let out = promtool_check(&text);
    assert!(
        out.status.success(),
        "promtool check metrics refused /metrics:\n{}\n{text}",
        support::process::text(&out)
    );
    let r = get(http, "/metrics", None);
    assert_eq!(
        r.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );

    // Broker connections: an idle client socket is one open connection until it goes.
    let open =
        |want: f64| move || sample(&metrics(http), "fieldbridge_broker_connections") == Some(want);
    wait_until(LONG, "no broker connection to be open", open(0.0));
    let idle = std::net::TcpStream::connect(("127.0.0.1", gw.broker_port)).unwrap();
    wait_until(LONG, "the idle connection to be counted open", open(1.0));
    drop(idle);
    wait_until(LONG, "the idle connection to be counted closed", open(0.0));
    let m = metrics(http);
    // The harness's readiness probe, the two command publishes and the idle socket.
    assert!(
        sample(&m, "fieldbridge_broker_connections_accepted_total").is_some_and(|n| n >= 4.0),
        "{m}"
    );
    assert_eq!(
        sample(&m, "fieldbridge_broker_connections_refused_total"),
        Some(0.0)
    );
    drop(gw);
}

#[test]
fn healthz_is_200_while_the_device_answers_and_503_naming_it_when_every_device_is_offline() {
    let mut sim = ModbusSim::start(1);
    let (_gw, http) = gateway(&sim, "100ms");
    wait_until(LONG, "/healthz to say ok", || {
        let r = get(http, "/healthz", None);
        r.status == 200 && r.body == "ok\n"
    });
    sim.mute();
    let r = wait_for(LONG, "/healthz to report the offline device", || {
        let r = get(http, "/healthz", None);
        (r.status == 503).then_some(r)
    });
    assert_eq!(r.body, "every device is offline (dev)\n");
    sim.unmute();
    wait_until(LONG, "/healthz to recover", || {
        get(http, "/healthz", None).status == 200
    });
    assert_eq!(get(http, "/nothing", None).status, 404);
}

#[test]
fn the_status_page_in_chromium_shows_the_simulator_values_and_updates_live_without_a_reload() {
    let mut sim = ModbusSim::start(1);
    let (mut gw, http) = gateway(&sim, "100ms");
    let page = get(http, "/", None);
    assert_eq!(page.status, 200);
    assert!(
        !page.body.contains("http://") && !page.body.contains("https://"),
        "the page loads nothing from elsewhere"
    );

    let mut browser = Browser::start();
    browser.open(&format!("http://127.0.0.1:{http}/"));
    let cell = |b: &mut Browser, point: &str| {
        b.eval(&format!(
            "(document.querySelector('[data-point=\"dev/{point}\"]') || {{}}).textContent || null"
        ))
    };
    wait_until(LONG, "the page to show the simulator's values", || {
        cell(&mut browser, "voltage") == "234.5" && cell(&mut browser, "temperature") == "21.5"
    });
    let text = browser.eval("document.body.innerText").to_string();
    for want in ["online", "°C", "good", "healthy", "not configured"] {
        assert!(text.contains(want), "{want:?} not on the page: {text}");
    }
    // Marks this document: a reload would lose the mark.
    browser.eval("(window.fbMark = 'same document', true)");
    let updates_before = browser.eval("Number(document.getElementById('count').textContent)");

    sim.set_holding(4, 1234);
    wait_until(LONG, "the page to show the new value", || {
        cell(&mut browser, "voltage") == "123.4"
    });
    assert_eq!(browser.eval("window.fbMark || null"), "same document");
    let updates_after = browser.eval("Number(document.getElementById('count').textContent)");
    assert!(
        updates_after.as_f64() > updates_before.as_f64(),
        "the event stream delivered the change: {updates_before} → {updates_after}"
    );

    let shot: PathBuf = support::wait::manifest_dir().join("target/http-status-page.png");
    browser.screenshot(&shot);
    let png = std::fs::read(&shot).expect("the screenshot");
    assert!(png.starts_with(b"\x89PNG") && png.len() > 1000);
    eprintln!("screenshot of the status page: {}", shot.display());

    // An open page does not hold up a clean stop.
    let status = gw.terminate();
    assert!(status.success(), "{status}: {}", gw.log());
}

#[test]
fn an_http_listener_off_loopback_needs_broker_users_and_asks_every_request_for_one() {
    let sim = ModbusSim::start(1);
    // Without users, `check` refuses it with file, line and key, and exit code 2.
    let dir = tempfile::tempdir().unwrap();
    let file = config(&sim, "1h", "0.0.0.0", 8080).write(dir.path());
    let out = fieldbridge(["check".as_ref(), "--config".as_ref(), file.as_os_str()]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("key 'http.listen': 0.0.0.0:8080 is reachable from the network"),
        "{}",
        text(&out)
    );

    let (_gw, http) = gateway_on(&sim, "1h", "0.0.0.0");
    for path in ["/", "/metrics", "/healthz", "/events"] {
        let r = get(http, path, None);
        assert_eq!(r.status, 401, "{path}");
        assert_eq!(
            r.header("www-authenticate"),
            Some("Basic realm=\"fieldbridge\", charset=\"UTF-8\"")
        );
    }
    // op:wrong, then op:pw.
    assert_eq!(
        get(http, "/healthz", Some("Basic b3A6d3Jvbmc=")).status,
        401
    );
    assert_eq!(get(http, "/metrics", Some("Basic b3A6cHc=")).status, 200);
    assert_eq!(get(http, "/", Some("Basic b3A6cHc=")).status, 200);
}
