//! `fieldbridge check`: bad configs exit 2 with the file, line and key named; good ones exit 0.

use std::path::Path;
use std::process::Command;

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

fn check(src: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("fb.toml");
    std::fs::write(&file, src).unwrap();
    check_file(&file)
}

fn check_file(file: &Path) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_fieldbridge"))
        .args(["check", "--config"])
        .arg(file)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn a_valid_config_checks_with_exit_code_0() {
    let (code, text) = check(GOOD);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("valid"), "{text}");
}

#[test]
fn the_shipped_example_configs_parse_and_validate() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    for entry in std::fs::read_dir(&root).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let src = std::fs::read_to_string(&path).unwrap();
            if let Err(issues) = fieldbridge::config::parse_str(&src) {
                panic!("{}: {issues:?}", path.display());
            }
        }
    }
}

#[test]
fn each_bad_config_exits_2_naming_the_file_line_and_key() {
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
    for (what, from, to, key, line) in cases {
        assert!(GOOD.contains(from), "{what}: fixture lacks {from:?}");
        let (code, text) = check(&GOOD.replacen(from, to, 1));
        assert_eq!(code, 2, "{what}: exit code\n{text}");
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
fn a_duplicate_device_is_named_at_its_second_definition() {
    let dup = format!("{GOOD}\n{}", &GOOD[GOOD.find("[[devices]]").unwrap()..]);
    let (code, text) = check(&dup);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("'devices[1].name'"), "{text}");
    assert!(text.contains("duplicate device name"), "{text}");
}

#[test]
fn every_problem_of_a_file_is_reported_at_once() {
    let bad = GOOD
        .replace("unit_id = 1", "unit_id = 999")
        .replace("address = 0", "address = 70000")
        .replace("type = \"f32\"", "type = \"float\"");
    let (code, text) = check(&bad);
    assert_eq!(code, 2, "{text}");
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
fn a_missing_config_file_exits_2_with_the_path() {
    let (code, text) = check_file(Path::new("/nonexistent/fieldbridge.toml"));
    assert_eq!(code, 2);
    assert!(text.contains("/nonexistent/fieldbridge.toml"), "{text}");
}
