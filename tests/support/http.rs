//! The gateway's HTTP listener from outside: a plain HTTP/1.1 GET (std sockets, so the test
//! checks what goes over the wire), `promtool check metrics` (Debian `prometheus`), and a
//! headless Chromium driven through tests/peers/browser.py (DevTools protocol on a pipe).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use super::modbus::PythonPeer;
use super::process::Proc;
use super::wait::LOCALHOST;

const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// A response: status code, headers (lower-case names) and body.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// `GET path` on 127.0.0.1:`port`, with `authorization` as the header's value if given.
pub fn get(port: u16, path: &str, authorization: Option<&str>) -> Response {
    let mut s = TcpStream::connect((LOCALHOST, port)).expect("connect to the HTTP listener");
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let auth = authorization
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n{auth}\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read the response");
    let text = String::from_utf8(raw).expect("a UTF-8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("a header block");
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {head:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Response {
        status,
        headers,
        body: body.to_owned(),
    }
}

/// `promtool check metrics` on `text`: its output, and whether it accepted it.
pub fn promtool_check(text: &str) -> Output {
    Proc::run_with_input(
        "promtool",
        Command::new("promtool").args(["check", "metrics"]),
        text,
        Duration::from_secs(30),
    )
}

/// The value of the sample `series` (name and labels exactly as exposed) in `text`.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// A headless Chromium with one tab.
pub struct Browser {
    peer: PythonPeer,
}

impl Browser {
    pub fn start() -> Browser {
        let (peer, _ready) = PythonPeer::start("browser.py", &[], None);
        Browser { peer }
    }

    pub fn open(&mut self, url: &str) {
        self.peer.command(&format!("open {url}"));
    }

    /// Evaluates a one-line JavaScript expression in the tab and returns its JSON value.
    pub fn eval(&mut self, expression: &str) -> serde_json::Value {
        let lines = self.peer.command(&format!("eval {expression}"));
        let json = lines
            .iter()
            .find_map(|l| l.strip_prefix("RESULT "))
            .unwrap_or_else(|| panic!("browser: no RESULT for {expression:?}: {lines:?}"));
        serde_json::from_str(json).expect("a JSON result")
    }

    pub fn screenshot(&mut self, path: &Path) {
        self.peer.command(&format!("screenshot {}", path.display()));
    }
}
