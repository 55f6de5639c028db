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

#[test]
fn the_demo_prints_scaled_values_with_the_decimals_their_scale_implies() {
    let port = free_port();
    let out = fieldbridge([
        "demo",
        "--duration",
        "7s",
        "--broker",
        &format!("127.0.0.1:{port}"),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    // (point, scale's decimal places): i16 × 0.1, u16 × 0.01, u32 × 0.001
    for (point, places) in [
        ("meter/cabinet_temperature", 1),
        ("boiler/pressure", 2),
        ("meter/energy", 3),
    ] {
        let topic = format!("fieldbridge/demo/{point} ");
        let values: Vec<&str> = stdout
            .lines()
            .filter_map(|l| l.strip_prefix(topic.as_str()))
            .filter_map(|json| json.split_once("\"value\":"))
            .map(|(_, rest)| rest.trim_end_matches('}'))
            .collect();
        assert!(values.len() >= 2, "few {point} readings in\n{stdout}");
        for v in values {
            let decimals = v.split_once('.').map_or(0, |(_, f)| f.len());
            assert!(
                decimals <= places && v.parse::<f64>().is_ok(),
                "{point} = {v}: more than {places} decimals"
            );
        }
    }
}
