//! The front door: `fieldbridge demo` shows readings from its simulated devices with nothing else
//! installed, and stops cleanly.

mod support;

use support::free_port;
use support::gateway::fieldbridge;

#[test]
fn the_demo_prints_readings_of_both_simulated_devices_and_exits_cleanly() {
    let port = free_port();
    let out = fieldbridge([
        "demo",
        "--duration",
        "5s",
        "--broker",
        &format!("127.0.0.1:{port}"),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for topic in [
        "fieldbridge/demo/boiler/water_temperature",
        "fieldbridge/demo/meter/power",
    ] {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(topic))
            .unwrap_or_else(|| panic!("no {topic} in\n{stdout}"));
        let json: serde_json::Value =
            serde_json::from_str(line.split_once(' ').unwrap().1).unwrap();
        assert!(json["value"].is_number(), "{line}");
        assert_eq!(json["quality"], "good", "{line}");
    }
    assert!(
        stdout.contains("fieldbridge/demo/boiler/status online"),
        "{stdout}"
    );
}
