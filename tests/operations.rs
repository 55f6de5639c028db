//! What an operator sees from the command line and in the log: errors printed once and without
//! colour codes when redirected, tools that name what is wrong in the config, a non-MQTT
//! upstream named by its address, and a quiet shutdown.

mod support;

use std::process::Command;

use support::gateway::{fieldbridge, GatewayConfig, SimDevice, BIN};
use support::mosquitto::Mosquitto;
use support::mqtt::mosquitto_sub;
use support::process::Proc;
use support::relay::{Mode, Relay};
use support::{free_port, LONG};

/// A gateway config with one Modbus TCP device `dev` at `port` (nothing needs to listen there)
/// with a writable point `limit` (0 to 100) and a `serial_line` device `gps` when `gps`.
fn tool_config(dir: &std::path::Path, port: u16, gps: bool) -> std::path::PathBuf {
    let device = SimDevice::new(port).points(
        "[[devices.points]]\nname = \"limit\"\ntable = \"holding\"\naddress = 1\ntype = \"i16\"\nwritable = true\nmin = 0\nmax = 100\n",
    );
    let mut c = GatewayConfig::standard().with(device);
    if gps {
        c = c.with(
            "[[devices]]\nname = \"gps\"\nkind = \"serial_line\"\npath = \"/dev/ttyUSB9\"\ndriver = \"nmea\"\n",
        );
    }
    let cfg = dir.join("fieldbridge.toml");
    std::fs::write(&cfg, c.render(&dir.join("data"))).unwrap();
    cfg
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn a_failed_write_is_reported_once_and_redirected_stderr_gets_no_colour_codes() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens on the device's port: the write cannot be confirmed.
    let cfg = tool_config(dir.path(), free_port(), false);
    // Without NO_COLOR, as a user's shell runs it; stderr is a pipe, not a terminal.
    let out = Proc::run(
        "fieldbridge write",
        Command::new(BIN)
            .args(["write", "-c"])
            .arg(&cfg)
            .args(["--device", "dev", "--point", "limit", "7"])
            .env_remove("NO_COLOR"),
        LONG,
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(
        err.matches("did not confirm the write").count(),
        1,
        "the error once:\n{err}"
    );
    assert!(
        !err.contains('\u{1b}'),
        "ANSI escape codes in a pipe:\n{err:?}"
    );
}

#[test]
fn write_takes_a_negative_value_without_a_double_dash() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = tool_config(dir.path(), free_port(), false);
    let out = fieldbridge([
        "write",
        "-c",
        cfg.to_str().unwrap(),
        "--device",
        "dev",
        "--point",
        "limit",
        "-3",
    ]);
    let err = stderr(&out);
    // Parsed as the value -3, then refused by the point's min (no bus traffic needed).
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("-3 is out of range"), "{err}");
}

#[test]
fn read_names_a_serial_device_as_such_and_says_when_no_modbus_device_is_configured() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = tool_config(dir.path(), free_port(), true);
    let out = fieldbridge(["read", "-c", cfg.to_str().unwrap(), "--device", "gps"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("\"gps\" is a serial_line device; read works on Modbus devices only (configured Modbus devices: dev)"),
        "{err}"
    );

    let only_gps = dir.path().join("gps.toml");
    std::fs::write(
        &only_gps,
        GatewayConfig::minimal()
            .with("[[devices]]\nname = \"gps\"\nkind = \"serial_line\"\npath = \"/dev/ttyUSB9\"\ndriver = \"nmea\"\n")
            .render(&dir.path().join("data")),
    )
    .unwrap();
    let out = fieldbridge(["read", "-c", only_gps.to_str().unwrap(), "--device", "pump"]);
    let err = stderr(&out);
    assert!(
        err.contains(
            "no Modbus device named \"pump\" in the config; the config has no Modbus devices"
        ),
        "{err}"
    );
    assert!(!err.contains("configured: \n"), "{err}");
}

#[test]
fn scan_of_a_missing_port_names_the_path_once_and_speaks_of_the_device() {
    let out = fieldbridge(["scan", "--port", "/dev/fieldbridge-missing", "--to", "2"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.matches("/dev/fieldbridge-missing").count(), 1, "{err}");
    assert!(err.contains("no such device"), "{err}");
    assert!(!err.contains("sensor"), "{err}");
}

#[test]
fn an_upstream_that_does_not_speak_mqtt_is_named_by_its_address_not_by_library_internals() {
    // The relay never reaches mosquitto: it answers every connection itself.
    let mosq = Mosquitto::start();
    let relay = Relay::start(mosq.addr());
    relay.set_mode(Mode::Answer(
        b"HTTP/1.1 400 Bad Request\r\nServer: not-mqtt\r\nContent-Type: text/plain\r\nContent-Length: 40\r\nConnection: close\r\n\r\nThis port speaks HTTP, not MQTT at all.\n",
    ));
    let gw = GatewayConfig::standard()
        .upstream(relay.port())
        .start_in_temp();
    let addr = format!(
        "127.0.0.1:{} does not answer as an MQTT broker",
        relay.port()
    );
    gw.wait_log(&["upstream_connect_failed", &addr]);
    // A CONNACK-shaped reply with a return code no broker sends (rumqttc: "Invalid Connect
    // return code: 170").
    relay.set_mode(Mode::Answer(&[0x20, 0x02, 0x00, 0xAA]));
    gw.wait_log(&[&addr, "its reply is not a valid MQTT packet"]);
    let log = gw.log();
    for internal in [
        "Promised boundary",
        "Invalid Connect return code",
        "Mqtt state",
    ] {
        assert!(!log.contains(internal), "{internal}:\n{log}");
    }
}

#[test]
fn a_shutdown_with_a_local_client_connected_logs_no_broker_error() {
    let mut gw = GatewayConfig::standard().start_in_temp();
    let sub = mosquitto_sub(gw.broker_port, &["-t", "fieldbridge/#", "-q", "1"]);
    assert_eq!(sub.subscribed(), vec![1]);
    assert!(gw.terminate().success(), "{}", gw.log());
    let log = gw.log();
    assert!(!log.contains("already gone"), "{log}");
    assert!(!log.contains("ERROR"), "{log}");
}
