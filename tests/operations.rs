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

