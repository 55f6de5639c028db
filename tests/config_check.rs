//! Config validation, in process through the real loader (`config::load`, what `fieldbridge
//! check` and `fieldbridge run` call): bad configs are refused with the file, line and key named
//! in the text `fieldbridge check` prints; good ones load. That the binary prints that text and
//! exits 2 is checked once, in tests/serial_config.rs.

use std::path::Path;

use fieldbridge::config::{load, load_to_run, parse_str, Config};

const GOOD: &str = r#"[gateway]
id = "gw"
data_dir = "data"

[[devices]]
name = "plc"
kind = "modbus_tcp"
host = "127.0.0.1"
unit_id = 1

[[devices.points]]
name = "temp"
table = "holding"
address = 0
type = "f32"
"#;

/// Loads `src` as the file `fb.toml`; an error is the text `fieldbridge check` prints.
fn check(src: &str) -> Result<Config, String> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("fb.toml");
    std::fs::write(&file, src).unwrap();
    check_file(&file)
}

fn check_file(file: &Path) -> Result<Config, String> {
    load_to_run(file).map_err(|e| e.to_string())
}

/// The line numbers of the problems in `text`, in the order they are listed.
fn listed_lines(text: &str) -> Vec<usize> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("/"))
        .filter_map(|l| l.split(".toml:").nth(1)?.split(':').next()?.parse().ok())
        .collect()
}

/// Each case (what is wrong, replace this, with this, key that must be named, line it is on)
/// applied to `fixture` is refused naming the file, the line and the key.
fn assert_each_refused(fixture: &str, cases: &[(&str, &str, &str, &str, usize)]) {
    for (what, from, to, key, line) in cases {
        assert!(fixture.contains(from), "{what}: fixture lacks {from:?}");
        let text = check(&fixture.replacen(from, to, 1))
            .err()
            .unwrap_or_else(|| panic!("{what}: accepted"));
        assert!(
            text.contains(&format!("'{key}'")),
            "{what}: key {key} not named in\n{text}"
        );
        assert!(
            text.contains(&format!("fb.toml:{line}:")),
            "{what}: line {line} not named in\n{text}"
        );
    }
}

#[test]
fn a_valid_config_loads_without_problems() {
    let cfg = check(GOOD).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cfg.devices.len(), 1);
}

#[test]
fn each_bad_config_is_refused_naming_the_file_line_and_key() {
    // (what is wrong, replace this, with this, key that must be named, line it is on)
    let cases: &[(&str, &str, &str, &str, usize)] = &[
        (
            "misspelt key",
            "unit_id = 1",
            "unitid = 1",
            "devices[0].unitid",
            9,
        ),
        (
            "wrong type",
            "unit_id = 1",
            "unit_id = \"one\"",
            "devices[0].unit_id",
            9,
        ),
        (
            "unit id out of range",
            "unit_id = 1",
            "unit_id = 300",
            "devices[0].unit_id",
            9,
        ),
        (
            "bad address",
            "address = 0",
            "address = 70000",
            "devices[0].points[0].address",
            14,
        ),
        (
            "negative address",
            "address = 0",
            "address = -1",
            "devices[0].points[0].address",
            14,
        ),
        (
            "unknown data type",
            "type = \"f32\"",
            "type = \"float\"",
            "devices[0].points[0].type",
            15,
        ),
        (
            "wildcard in topic prefix",
            "id = \"gw\"",
            "id = \"gw\"\ntopic_prefix = \"plant/#\"",
            "gateway.topic_prefix",
            3,
        ),
        (
            "wildcard in gateway id",
            "id = \"gw\"",
            "id = \"g+w\"",
            "gateway.id",
            2,
        ),
        ("missing required key", "id = \"gw\"\n", "", "gateway.id", 1),
        (
            "missing host",
            "host = \"127.0.0.1\"\n",
            "",
            "devices[0].host",
            5,
        ),
        (
            "unknown table",
            "table = \"holding\"",
            "table = \"holdings\"",
            "devices[0].points[0].table",
            13,
        ),
        (
            "unknown kind",
            "kind = \"modbus_tcp\"",
            "kind = \"modbus\"",
            "devices[0].kind",
            7,
        ),
        (
            "bad duration",
            "unit_id = 1",
            "interval = \"5 parsecs\"",
            "devices[0].interval",
            9,
        ),
        (
            "bad broker listen address",
            "[[devices]]",
            "[broker]\nlisten = \"localhost\"\n\n[[devices]]",
            "broker.listen",
            6,
        ),
        (
            "coil typed as a number",
            "table = \"holding\"",
            "table = \"coil\"",
            "devices[0].points[0].type",
            15,
        ),
        (
            "point named status",
            "name = \"temp\"",
            "name = \"status\"",
            "devices[0].points[0].name",
            12,
        ),
    ];
    assert_each_refused(GOOD, cases);
}

#[test]
fn each_bad_report_or_payload_key_is_refused_naming_the_file_line_and_key() {
    // GOOD with a bool point added (lines 17-21)
    let fixture = format!(
        "{GOOD}\n[[devices.points]]\nname = \"run\"\ntable = \"coil\"\naddress = 0\ntype = \"bool\"\n"
    );
    let pt = "type = \"f32\"";
    let cases: &[(&str, &str, &str, &str, usize)] = &[
        ("unknown payload shape", "unit_id = 1", "unit_id = 1\npayload = \"rows\"", "devices[0].payload", 10),
        ("unknown strategy", "unit_id = 1", "unit_id = 1\nreport = \"sometimes\"", "devices[0].report", 10),
        ("deadband on a bool point", "type = \"bool\"", "type = \"bool\"\nreport = \"on_change\"\ndeadband = 1.0", "devices[0].points[1].deadband", 23),
        ("decimals on a bool point", "type = \"bool\"", "type = \"bool\"\ndecimals = 1", "devices[0].points[1].decimals", 22),
        ("negative deadband", pt, "type = \"f32\"\nreport = \"on_change\"\ndeadband = -0.5", "devices[0].points[0].deadband", 17),
        ("both deadband kinds", pt, "type = \"f32\"\nreport = \"on_change\"\ndeadband = 0.5\ndeadband_percent = 2.0", "devices[0].points[0].deadband_percent", 18),
        ("deadband without on_change", pt, "type = \"f32\"\ndeadband = 0.5", "devices[0].points[0].deadband", 16),
        ("max_interval with every_poll", pt, "type = \"f32\"\nmax_interval = \"1m\"", "devices[0].points[0].max_interval", 16),
        ("min_interval over max_interval", pt, "type = \"f32\"\nreport = \"on_change\"\nmax_interval = \"1m\"\nmin_interval = \"2m\"", "devices[0].points[0].min_interval", 18),
        ("min_interval over the device's max_interval", "unit_id = 1", "unit_id = 1\nreport = \"on_change\"\nmax_interval = \"1m\"\n[[devices.points]]\nname = \"x\"\ntable = \"holding\"\naddress = 9\ntype = \"u16\"\nmin_interval = \"5m\"", "devices[0].points[0].min_interval", 17),
        ("decimals out of range", pt, "type = \"f32\"\ndecimals = 16", "devices[0].points[0].decimals", 16),
    ];
    assert_each_refused(&fixture, cases);
    let ok = fixture.replacen(
        pt,
        "type = \"f32\"\nreport = \"on_change\"\ndeadband_percent = 2.0\nmax_interval = \"1m\"\nmin_interval = \"5s\"\ndecimals = 2",
        1,
    );
    let cfg = check(&ok.replacen("unit_id = 1", "unit_id = 1\npayload = \"device\"", 1))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        cfg.devices[0].points[0].report.to_string(),
        "on_change (deadband 2%, min_interval 5s, max_interval 1m)"
    );
    assert_eq!(cfg.devices[0].payload.as_str(), "device");
}

#[test]
fn a_duplicate_device_is_named_at_its_second_definition() {
    let dup = format!("{GOOD}\n{}", &GOOD[GOOD.find("[[devices]]").unwrap()..]);
    let Err(text) = check(&dup) else {
        panic!("a duplicate device was accepted")
    };
    assert!(text.contains("'devices[1].name'"), "{text}");
    assert!(text.contains("duplicate device name"), "{text}");
}

#[test]
fn every_problem_of_a_file_is_reported_at_once() {
    let bad = GOOD
        .replace("unit_id = 1", "unit_id = 999")
        .replace("address = 0", "address = 70000")
        .replace("type = \"f32\"", "type = \"float\"");
    let Err(text) = check(&bad) else {
        panic!("accepted")
    };
    assert!(text.contains("3 problems"), "{text}");
    for key in [
        "devices[0].unit_id",
        "devices[0].points[0].address",
        "devices[0].points[0].type",
    ] {
        assert!(text.contains(key), "{key} missing from\n{text}");
    }
    // the message says what would be valid
    assert!(text.contains("valid: bool, u16"), "{text}");
}

#[test]
fn a_type_error_or_an_unknown_key_does_not_hide_the_other_problems() {
    let bad = GOOD
        .replace("id = \"gw\"", "id = \"gw\"\ncolour = \"red\"")
        .replace("unit_id = 1", "unit_id = \"one\"")
        .replace("address = 0", "address = 70000")
        .replace("type = \"f32\"", "type = \"float\"\nscale = \"x\"");
    let Err(text) = check(&bad) else {
        panic!("accepted")
    };
    assert!(text.contains("5 problems"), "{text}");
    for key in [
        "'gateway.colour'",
        "'devices[0].unit_id'",
        "'devices[0].points[0].address'",
        "'devices[0].points[0].type'",
        "'devices[0].points[0].scale'",
    ] {
        assert!(text.contains(key), "{key} missing from\n{text}");
    }
    // a key of the wrong type is reported once, not again as missing or out of range
    assert_eq!(text.matches("unit_id").count(), 1, "{text}");
}

#[test]
fn problems_are_listed_in_line_order() {
    let bad = format!(
        "{}\n[outbox]\nmax_rows = 0\n",
        GOOD.replace("unit_id = 1", "unit_id = 999")
            .replace("id = \"gw\"", "id = \"g+w\"\ncolour = 1")
            .replace("address = 0", "address = \"zero\"")
    );
    let Err(text) = check(&bad) else {
        panic!("accepted")
    };
    let lines = listed_lines(&text);
    assert_eq!(lines.len(), 5, "{text}");
    assert!(lines.is_sorted(), "{lines:?} in\n{text}");
}

#[test]
fn a_write_range_beyond_the_point_type_is_refused() {
    let bad = GOOD.replace(
        "type = \"f32\"",
        "type = \"u16\"\nwritable = true\nmin = -5\nmax = 70000",
    );
    let Err(text) = check(&bad) else {
        panic!("accepted")
    };
    assert!(text.contains("2 problems"), "{text}");
    assert!(
        text.contains("fb.toml:17: key 'devices[0].points[0].min'"),
        "{text}"
    );
    assert!(
        text.contains("fb.toml:18: key 'devices[0].points[0].max'"),
        "{text}"
    );
    assert!(text.contains("0 to 65535"), "{text}");
    // the whole range of the type, after scaling, is fine
    let good = GOOD.replace(
        "type = \"f32\"",
        "type = \"u16\"\nwritable = true\nscale = 0.1\nmin = 0\nmax = 6553.5",
    );
    check(&good).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn a_data_dir_that_cannot_be_created_is_refused_by_check() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("blocker"), "a file, not a directory").unwrap();
    let file = dir.path().join("fb.toml");
    std::fs::write(
        &file,
        GOOD.replace("data_dir = \"data\"", "data_dir = \"blocker/outbox\""),
    )
    .unwrap();
    let Err(text) = check_file(&file) else {
        panic!("accepted")
    };
    assert!(text.contains("fb.toml:3: key 'gateway.data_dir'"), "{text}");
    assert!(text.contains("blocker is not a directory"), "{text}");
    // reported with the other problems, not instead of them
    std::fs::write(
        &file,
        GOOD.replace("data_dir = \"data\"", "data_dir = \"blocker\"")
            .replace("unit_id = 1", "unit_id = 999"),
    )
    .unwrap();
    let Err(text) = check_file(&file) else {
        panic!("accepted")
    };
    assert!(text.contains("2 problems"), "{text}");
    assert_eq!(listed_lines(&text), [3, 9], "{text}");
    // a directory that does not exist yet but can be created is fine
    std::fs::write(
        &file,
        GOOD.replace("data_dir = \"data\"", "data_dir = \"new/deeper\""),
    )
    .unwrap();
    check_file(&file).unwrap_or_else(|e| panic!("{e}"));
    assert!(!dir.path().join("new").exists(), "check creates nothing");
}

#[test]
fn a_missing_config_file_is_refused_with_the_path() {
    let Err(text) = check_file(Path::new("/nonexistent/fieldbridge.toml")) else {
        panic!("accepted")
    };
    assert!(text.contains("/nonexistent/fieldbridge.toml"), "{text}");
}

const GOOD_RTU: &str = r#"[gateway]
id = "gw"
data_dir = "data"

[[buses]]
name = "rs485"
kind = "serial"
path = "/dev/ttyUSB0"
baud = 9600

[[devices]]
name = "meter"
kind = "modbus_rtu"
bus = "rs485"
unit_id = 1
profile = "eastron-sdm120"

[[devices]]
name = "valve"
kind = "modbus_rtu"
bus = "rs485"
unit_id = 2

[[devices.points]]
name = "position"
table = "holding"
address = 0
type = "u16"
writable = true
"#;

#[test]
fn a_valid_rtu_config_with_a_profile_loads_both_devices() {
    let cfg = check(GOOD_RTU).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cfg.devices.len() + cfg.serial_devices.len(), 2);
}

#[test]
fn each_bad_rtu_config_is_refused_naming_the_file_line_and_key() {
    // (what is wrong, replace this, with this, key that must be named, line it is on)
    let cases: &[(&str, &str, &str, &str, usize)] = &[
        (
            "unknown bus",
            "bus = \"rs485\"\nunit_id = 2",
            "bus = \"rs458\"\nunit_id = 2",
            "devices[1].bus",
            21,
        ),
        (
            "two devices with one unit id on one bus",
            "unit_id = 2",
            "unit_id = 1",
            "devices[1].unit_id",
            22,
        ),
        (
            "broadcast id on a serial line",
            "unit_id = 2",
            "unit_id = 0",
            "devices[1].unit_id",
            22,
        ),
        ("unknown bus kind", "kind = \"serial\"", "kind = \"rs485\"", "buses[0].kind", 7),
        ("bad parity", "baud = 9600", "parity = \"mark\"", "buses[0].parity", 9),
        (
            "line settings on the device",
            "unit_id = 2",
            "unit_id = 2\nbaud = 19200",
            "devices[1].baud",
            23,
        ),
        (
            "a second bus on the same port",
            "[[devices]]\nname = \"meter\"",
            "[[buses]]\nname = \"other\"\nkind = \"serial\"\npath = \"/dev/ttyUSB0\"\n\n[[devices]]\nname = \"meter\"",
            "buses[1].path",
            14,
        ),
        (
            "a second bus on the same device server",
            "[[devices]]\nname = \"meter\"",
            "[[buses]]\nname = \"a\"\nkind = \"rtu_over_tcp\"\nhost = \"10.0.0.9\"\n\n[[buses]]\nname = \"b\"\nkind = \"rtu_over_tcp\"\nhost = \"10.0.0.9\"\nport = 502\n\n[[devices]]\nname = \"meter\"",
            "buses[2].host",
            19,
        ),
        (
            "unknown profile",
            "profile = \"eastron-sdm120\"",
            "profile = \"eastron-sdm999\"",
            "devices[0].profile",
            16,
        ),
        (
            "writable input register",
            "table = \"holding\"",
            "table = \"input\"",
            "devices[1].points[0].writable",
            29,
        ),
        (
            "string without length",
            "type = \"u16\"",
            "type = \"string\"",
            "devices[1].points[0].length",
            24,
        ),
        (
            "bit of a non-bool point",
            "type = \"u16\"",
            "type = \"u16\"\nbit = 3",
            "devices[1].points[0].bit",
            29,
        ),
        (
            "range above the type's meaning",
            "writable = true",
            "writable = true\nmin = 10\nmax = 5",
            "devices[1].points[0].min",
            30,
        ),
        (
            "planner cap above the protocol limit",
            "unit_id = 2",
            "unit_id = 2\nmax_registers = 200",
            "devices[1].max_registers",
            23,
        ),
        (
            "skipping a point the profile lacks",
            "profile = \"eastron-sdm120\"",
            "profile = \"eastron-sdm120\"\nskip_points = [\"nope\"]",
            "devices[0].skip_points[0]",
            17,
        ),
    ];
    assert_each_refused(GOOD_RTU, cases);
}

#[test]
fn a_problem_inside_a_profile_file_is_named_in_that_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("profiles")).unwrap();
    std::fs::write(
        dir.path().join("profiles/my-meter.toml"),
        "[profile]\nname = \"my-meter\"\n\n[[points]]\nname = \"v\"\ntable = \"input\"\naddress = 0\ntype = \"float\"\n",
    )
    .unwrap();
    let file = dir.path().join("fb.toml");
    std::fs::write(&file, GOOD_RTU.replace("eastron-sdm120", "my-meter")).unwrap();
    let Err(text) = check_file(&file) else {
        panic!("accepted")
    };
    assert!(
        text.contains("profiles/my-meter.toml:8: key 'points[0].type'"),
        "{text}"
    );
    assert!(
        text.contains("fb.toml:16: key 'devices[0].profile'"),
        "{text}"
    );
}

#[test]
fn a_device_point_overrides_the_profile_point_of_the_same_name() {
    let src = GOOD_RTU.replace(
        "profile = \"eastron-sdm120\"\n",
        "profile = \"eastron-sdm120\"\nskip_points = [\"frequency\"]\n\n[[devices.points]]\nname = \"voltage\"\ntable = \"input\"\naddress = 0\ntype = \"f32\"\nscale = 1000\nunit = \"mV\"\n",
    );
    let cfg = parse_str(&src).unwrap_or_else(|e| panic!("{e:#?}"));
    let meter = &cfg.devices[0];
    let voltage: Vec<_> = meter
        .points
        .iter()
        .filter(|p| &*p.name == "voltage")
        .collect();
    assert_eq!(voltage.len(), 1, "one voltage point, the device's");
    assert_eq!(voltage[0].scale, 1000.0);
    assert!(meter.points.iter().all(|p| &*p.name != "frequency"));
    assert!(meter.points.len() > 10, "the rest of the profile is kept");
}

#[test]
fn every_example_config_validates_and_the_packaged_ones_load_as_shipped() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let src = std::fs::read_to_string(&path).unwrap();
            if let Err(issues) = parse_str(&src) {
                panic!("{}: {issues:?}", path.display());
            }
        }
    }
    // Every example loads as shipped, with the files it names, as `fieldbridge check` runs.
    for name in [
        "fieldbridge.example.toml",
        "minimal.toml",
        "broker-lan.toml",
    ] {
        if let Err(e) = load(&dir.join(name)) {
            panic!("{name} as shipped: {e}");
        }
    }
    // broker-lan.toml's LAN part, uncommented as its header says, is valid and names the
    // password file, certificate and key the operator makes first.
    let src = std::fs::read_to_string(dir.join("broker-lan.toml")).unwrap();
    let (shipped, lan) = src.split_once("# ---- LAN part ----\n").unwrap();
    let uncommented: String = lan
        .lines()
        .map(|l| l.strip_prefix("# ").unwrap_or(l))
        .map(|l| format!("{l}\n"))
        .collect();
    let full = format!("{shipped}{uncommented}");
    if let Err(issues) = fieldbridge::config::parse_in(&full, Some(&dir)) {
        panic!("broker-lan.toml uncommented: {issues:#?}");
    }
    let cfg = fieldbridge::config::parse_in(&full, Some(&dir)).unwrap();
    assert_eq!(cfg.broker.map(|b| b.users.len()), Some(3), "{full}");
    let lan_file = tempfile::tempdir().unwrap();
    let path = lan_file.path().join("broker-lan.toml");
    std::fs::write(&path, &full).unwrap();
    let e = load(&path).unwrap_err().to_string();
    for file in ["broker.passwd", "broker.pem", "broker.key"] {
        assert!(e.contains(file), "{e}");
    }
}
