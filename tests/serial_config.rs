//! Configuration of `kind = "serial_line"` devices: every mistake is reported with its line,
//! key and what would be valid, all at once; `fieldbridge check` prints them and exits 2.

mod support;

use fieldbridge::config::parse_str;
use support::gateway::fieldbridge;

const HEAD: &str = "[gateway]\nid = \"gw\"\n\n[[devices]]\nname = \"s\"\nkind = \"serial_line\"\n";
const PORT: &str = "path = \"/dev/ttyUSB0\"\n";

fn problems(body: &str) -> Vec<(Option<usize>, String, String)> {
    match parse_str(&format!("{HEAD}{body}")) {
        Ok(_) => Vec::new(),
        Err(issues) => issues
            .into_iter()
            .map(|i| (i.line, i.key, i.message))
            .collect(),
    }
}

#[test]
fn each_serial_mistake_names_its_key_and_what_would_be_valid() {
    let sds = format!("{PORT}driver = \"sds011\"\n");
    let line_json = format!("{PORT}[devices.framing]\ntype = \"line\"\n[devices.parse]\nformat = \"json\"\n[[devices.points]]\nname = \"t\"\nfield = \"t\"\ntype = \"f64\"\n");
    let cases: Vec<(String, &str, &str)> = vec![
        (
            "driver = \"sds011\"\n".into(),
            "devices[0].path",
            "missing: a serial_line device needs path",
        ),
        (
            format!("{sds}baud = 0\n"),
            "devices[0].baud",
            "0 is out of range; valid: 50 to 4000000",
        ),
        (
            format!("{sds}data_bits = 9\n"),
            "devices[0].data_bits",
            "valid: 5 to 8",
        ),
        (
            format!("{sds}parity = \"mark\"\n"),
            "devices[0].parity",
            "unknown parity \"mark\"; valid: none, even, odd",
        ),
        (
            format!("{sds}stop_bits = 3\n"),
            "devices[0].stop_bits",
            "3 is not valid; valid: 1, 2",
        ),
        (
            format!("{PORT}driver = \"sds012\"\n"),
            "devices[0].driver",
            "unknown driver \"sds012\"; valid: sds011, mhz19b, nmea",
        ),
        (
            format!("{sds}mode = \"sometimes\"\n"),
            "devices[0].mode",
            "unknown mode \"sometimes\"; valid: stream, polled",
        ),
        (
            format!("{sds}timeout = \"5 parsecs\"\n"),
            "devices[0].timeout",
            "is not a duration",
        ),
        (
            format!("{sds}host = \"10.0.0.1\"\n"),
            "devices[0].host",
            "not used by a serial_line device",
        ),
        (
            format!("{sds}request = \"x\"\n"),
            "devices[0].request",
            "comes from the driver",
        ),
        (
            format!("{sds}[devices.framing]\ntype = \"line\"\n"),
            "devices[0].framing",
            "comes from the driver",
        ),
        (
            format!("{sds}[[devices.points]]\nname = \"x\"\ntype = \"f64\"\n"),
            "devices[0].points",
            "the sds011 driver defines its points (pm2_5, pm10)",
        ),
        (
            PORT.into(),
            "devices[0].framing",
            "missing: set driver = one of sds011, mhz19b, nmea or describe the protocol",
        ),
        (
            PORT.into(),
            "devices[0].parse",
            "missing: [devices.parse] with format = one of regex, kv, json, csv, binary",
        ),
        (
            line_json.replace("\"line\"", "\"slip\""),
            "devices[0].framing.type",
            "unknown framing \"slip\"; valid: line, binary",
        ),
        (
            line_json.replace("type = \"line\"\n", "type = \"line\"\nstart = \"AA\"\n"),
            "devices[0].framing.start",
            "not used by type = \"line\" framing",
        ),
        (
            line_json.replace("type = \"line\"\n", "type = \"line\"\ndelimiter = \"\"\n"),
            "devices[0].framing.delimiter",
            "must be 1 to 8 bytes",
        ),
        (
            line_json.replace("type = \"line\"\n", "type = \"line\"\nmax_length = 0\n"),
            "devices[0].framing.max_length",
            "valid: 1 to 65536",
        ),
        (
            line_json.replace("type = \"line\"\n", "type = \"line\"\nbogus = 1\n"),
            "devices[0].framing.bogus",
            "unknown field `bogus`",
        ),
        (
            line_json.replace("\"json\"", "\"xml\""),
            "devices[0].parse.format",
            "unknown format \"xml\"",
        ),
        (
            line_json.replace("\"json\"", "\"json\"\nregex = 'x'"),
            "devices[0].parse.regex",
            "not used by format = \"json\"",
        ),
        (
            line_json.replace("\"json\"", "\"regex\"\nregex = '('"),
            "devices[0].parse.regex",
            "is not a valid regex",
        ),
        (
            line_json.replace("\"json\"", "\"regex\"\nregex = '[0-9]+'"),
            "devices[0].parse.regex",
            "has no named capture group",
        ),
        (
            line_json.replace("\"json\"", "\"regex\"\nregex = '(?P<temp>[0-9]+)'"),
            "devices[0].points[0].field",
            "\"t\" is not a named capture of the regex; valid: temp",
        ),
        (
            line_json.replace("\"json\"", "\"csv\""),
            "devices[0].points[0].column",
            "missing: a csv point needs column",
        ),
        (
            line_json.replace("\"json\"", "\"binary\""),
            "devices[0].parse.format",
            "format = \"binary\" needs [devices.framing] type = \"binary\"",
        ),
        (
            line_json.replace("field = \"t\"\n", ""),
            "devices[0].points[0].field",
            "missing: this point needs field",
        ),
        (
            line_json.replace("\"f64\"", "\"float\""),
            "devices[0].points[0].type",
            "unknown type \"float\"; valid: bool, u8",
        ),
        (
            line_json.replace("field = \"t\"\n", "field = \"t\"\ntable = \"holding\"\n"),
            "devices[0].points[0].table",
            "a Modbus key, not used by a serial_line point",
        ),
        (
            line_json.replace("name = \"t\"", "name = \"status\""),
            "devices[0].points[0].name",
            "reserved",
        ),
        (
            line_json.replace(
                "[[devices.points]]\nname = \"t\"\nfield = \"t\"\ntype = \"f64\"\n",
                "",
            ),
            "devices[0].points",
            "at least one",
        ),
        (line_json.clone(), "", ""),
        (
            line_json.replace(PORT, &format!("{PORT}mode = \"polled\"\n")),
            "devices[0].mode",
            "polled mode needs request",
        ),
        (
            line_json.replace(PORT, &format!("{PORT}request = \"R\"\nmode = \"stream\"\n")),
            "devices[0].request",
            "only sent in polled mode",
        ),
        (
            line_json.replace(PORT, &format!("{PORT}request_hex = \"F\"\n")),
            "devices[0].request_hex",
            "is not a sequence of hex bytes",
        ),
        (
            line_json.replace(
                PORT,
                &format!("{PORT}request_hex = \"FF\"\nrequest = \"x\"\n"),
            ),
            "devices[0].request_hex",
            "either request or request_hex",
        ),
    ];
    let binary = format!("{PORT}[devices.framing]\ntype = \"binary\"\nstart = \"AA C0\"\nlength = 10\nend = \"AB\"\nchecksum = \"sum8\"\n[devices.parse]\nformat = \"binary\"\n[[devices.points]]\nname = \"v\"\nbyte_offset = 2\ntype = \"u16\"\nbyte_order = \"little\"\n");
    let mut cases = cases;
    cases.extend([
        (
            format!("{PORT}driver = \"sds011\"\nmode = \"polled\"\n"),
            "devices[0].mode",
            "the sds011 driver streams by itself; remove mode (or set mode = \"stream\")",
        ),
        (
            format!("{PORT}driver = \"mhz19b\"\nmode = \"stream\"\n"),
            "devices[0].mode",
            "the mhz19b driver is polled; remove mode",
        ),
        (
            format!("{PORT}driver = \"mhz19b\"\nmode = \"polled\"\n"),
            "",
            "",
        ),
        (binary.clone(), "", ""),
        (
            binary.replace("start = \"AA C0\"\n", ""),
            "devices[0].framing.start",
            "missing: binary frames need start",
        ),
        (
            binary.replace("start = \"AA C0\"", "start = \"AZ\""),
            "devices[0].framing.start",
            "is not a sequence of hex bytes",
        ),
        (
            binary.replace("length = 10\n", ""),
            "devices[0].framing.length",
            "missing: set length",
        ),
        (
            binary.replace("length = 10\n", "length = 10\nlength_at = 2\n"),
            "devices[0].framing.length_at",
            "not both",
        ),
        (
            binary.replace("length = 10", "length = 2"),
            "devices[0].framing.length",
            "valid: 3 to 4096",
        ),
        (
            binary.replace("\"sum8\"", "\"crc99\""),
            "devices[0].framing.checksum",
            "unknown checksum \"crc99\"; valid: none, sum8, sum8_neg, xor8",
        ),
        (
            binary.replace(
                "checksum = \"sum8\"\n",
                "checksum = \"sum8\"\nchecksum_at = 12\n",
            ),
            "devices[0].framing.checksum_at",
            "do not fit a 10-byte frame",
        ),
        (
            binary.replace("checksum = \"sum8\"\n", "checksum_at = 3\n"),
            "devices[0].framing.checksum_at",
            "only used with a checksum",
        ),
        (
            binary.replace("byte_offset = 2", "byte_offset = 9"),
            "devices[0].points[0].byte_offset",
            "a u16 at byte 9 ends past the longest frame (10 bytes)",
        ),
        (
            binary.replace("\"little\"", "\"middle\""),
            "devices[0].points[0].byte_order",
            "unknown byte order \"middle\"; valid: big, little",
        ),
        (
            binary.replace("byte_offset = 2\n", "field = \"x\"\n"),
            "devices[0].points[0].byte_offset",
            "missing: a binary point needs byte_offset",
        ),
        (
            binary.replace("\"binary\"\n[[", "\"kv\"\n[["),
            "devices[0].parse.format",
            "text formats (regex, kv, json, csv) need [devices.framing] type = \"line\"",
        ),
    ]);
    for (body, key, want) in &cases {
        let got = problems(body);
        if key.is_empty() {
            assert!(
                got.is_empty(),
                "expected a valid config:\n{body}\ngot {got:#?}"
            );
            continue;
        }
        assert!(
            got.iter()
                .any(|(line, k, m)| k == key && m.contains(want) && line.is_some()),
            "expected {key}: {want}\nfor:\n{body}\ngot {got:#?}"
        );
    }
}

#[test]
fn every_serial_problem_of_a_file_is_reported_at_once_and_check_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("fb.toml");
    std::fs::write(
        &file,
        format!("{HEAD}baud = -1\nparity = \"mark\"\ndriver = \"nope\"\nmode = \"polled\"\n"),
    )
    .unwrap();
    // The one test of the binary's side of config errors: `fieldbridge check` prints them as
    // `file:line: key '…': message` and exits 2 (tests/config_check.rs checks the cases in
    // process).
    let out = fieldbridge(["check".as_ref(), "--config".as_ref(), file.as_os_str()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    let f = file.display();
    for want in [
        format!("{f}:7: key 'devices[0].baud': -1 is out of range"),
        format!("{f}:8: key 'devices[0].parity': unknown parity"),
        format!("{f}:9: key 'devices[0].driver': unknown driver \"nope\""),
        format!("{f}:4: key 'devices[0].path': missing"),
    ] {
        assert!(err.contains(&want), "missing {want:?} in:\n{err}");
    }
}
