//! The serial task against socat pty pairs: each built-in driver fed frames the test builds
//! (with noise, bad checksums and frames split across writes), a polled device with a peer that
//! answers requests, silence, missing ports and unplug/replug. The task runs in-process so the
//! tests can read its counters; `serial_e2e.rs` runs the real binary.

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fieldbridge::config::serial::SerialDevice;
use fieldbridge::device::serial::sensors::MHZ19B_READ;
use fieldbridge::device::serial::task;
use fieldbridge::flow::{DeviceEvent, Quality, Value};
use fieldbridge::ops::health::Health;
use fieldbridge::ops::stats::SerialCounters as SerialStats;
use support::serial::{mhz19b_answer, nmea_line, sds011_frame, PtyPair};
use support::{wait_until, wait_until_async};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const LONG: Duration = Duration::from_secs(20);

fn device(toml: &str) -> SerialDevice {
    let src = format!("[gateway]\nid = \"gw\"\n\n{toml}");
    let cfg = fieldbridge::config::parse_str(&src).unwrap_or_else(|e| panic!("{e:#?}"));
    cfg.serial_devices[0].clone()
}

/// The serial task under test, with every event it sent.
struct Harness {
    events: Arc<Mutex<Vec<DeviceEvent>>>,
    stats: Arc<SerialStats>,
    stop: CancellationToken,
}

impl Harness {
    fn start(dev: SerialDevice) -> Harness {
        let (tx, mut rx) = mpsc::channel(64);
        let stats = Arc::new(SerialStats::default());
        let stop = CancellationToken::new();
        let beat = Health::new().register_device(&dev.name, task::first_beat_within(&dev));
        tokio::spawn(task::run(dev, tx, stop.clone(), stats.clone(), beat));
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = events.clone();
        tokio::spawn(async move {
            while let Some(ev) = rx.recv().await {
                sink.lock().unwrap().push(ev);
            }
        });
        Harness {
            events,
            stats,
            stop,
        }
    }

    fn values(&self, point: &str) -> Vec<Value> {
        let mut out = Vec::new();
        for ev in self.events.lock().unwrap().iter() {
            if let DeviceEvent::Readings(rs) = ev {
                for r in rs.iter().filter(|r| &*r.point == point) {
                    assert_eq!(r.quality, Quality::Good, "{r:?}");
                    out.push(r.value.clone());
                }
            }
        }
        out
    }

    /// Status changes in order, with their reasons.
    fn statuses(&self) -> Vec<(bool, String)> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter_map(|ev| match ev {
                DeviceEvent::Status { online, reason, .. } => {
                    Some((*online, reason.clone().unwrap_or_default()))
                }
                _ => None,
            })
            .collect()
    }

    fn online(&self) -> Option<bool> {
        self.statuses().last().map(|(o, _)| *o)
    }

    fn opens(&self) -> u64 {
        self.stats.opens.load(std::sync::atomic::Ordering::Relaxed)
    }

    async fn wait_opened(&self, n: u64) {
        wait_until_async(LONG, "the serial task to open the port", || {
            self.opens() >= n
        })
        .await;
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn count(c: &std::sync::atomic::AtomicU64) -> u64 {
    c.load(std::sync::atomic::Ordering::Relaxed)
}

fn floats(v: &[f64]) -> Vec<Value> {
    v.iter().map(|f| Value::Float(*f)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sds011_values_are_exact_despite_noise_split_frames_and_bad_checksums() {
    let pty = PtyPair::start();
    let h = Harness::start(device(&format!(
        "[[devices]]\nname = \"air\"\nkind = \"serial_line\"\npath = \"{}\"\ndriver = \"sds011\"\n",
        pty.device().display()
    )));
    h.wait_opened(1).await;
    let mut peer = pty.open_peer();

    let f1 = sds011_frame(123, 456);
    let mut bad = sds011_frame(999, 999);
    bad[8] ^= 0x5A;
    peer.send(&[0x01, 0x02, 0xAA, 0x00]).unwrap(); // noise, with a false start byte
    peer.send(&f1[..3]).unwrap(); // split across three writes
    peer.send(&f1[3..7]).unwrap();
    peer.send(&f1[7..]).unwrap();
    peer.send(&bad).unwrap();
    let mut lone_start = vec![0xAA];
    lone_start.extend_from_slice(&sds011_frame(57, 1001));
    peer.send(&lone_start).unwrap();
    peer.send(&sds011_frame(0, 65535)).unwrap();

    wait_until_async(LONG, "three SDS011 readings", || {
        h.values("pm10").len() >= 3
    })
    .await;
    assert_eq!(h.values("pm2_5"), floats(&[12.3, 5.7, 0.0]));
    assert_eq!(h.values("pm10"), floats(&[45.6, 100.1, 6553.5]));
    assert_eq!(count(&h.stats.frames), 3);
    assert_eq!(count(&h.stats.bad_checksums), 1);
    // 4 bytes before f1, 8 left of the bad frame after its start, 1 lone start byte
    assert_eq!(count(&h.stats.noise_bytes), 4 + 8 + 1);
    assert_eq!(h.statuses(), vec![(true, String::new())]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mhz19b_is_polled_with_its_command_and_answers_decode_exactly() {
    let pty = PtyPair::start();
    let h = Harness::start(device(&format!(
        "[[devices]]\nname = \"co2\"\nkind = \"serial_line\"\npath = \"{}\"\ndriver = \"mhz19b\"\ninterval = \"100ms\"\ntimeout = \"1s\"\n",
        pty.device().display()
    )));
    let mut peer = pty.open_peer();
    let requests = Arc::new(Mutex::new(Vec::new()));
    let seen = requests.clone();
    // The sensor: answers each command; the first answer has a bad checksum, the second comes
    // after noise and split in two writes.
    std::thread::spawn(move || {
        for n in 0u16.. {
            let Ok(req) = peer.read_exact(9) else { return };
            seen.lock().unwrap().push(req);
            let answer = mhz19b_answer(400 + n.saturating_sub(1));
            let r = match n {
                0 => {
                    let mut bad = answer;
                    bad[8] ^= 1;
                    peer.send(&bad)
                }
                1 => peer
                    .send(&[0x00, 0xFF, 0x13])
                    .and_then(|_| peer.send(&answer[..4]))
                    .and_then(|_| peer.send(&answer[4..])),
                _ => peer.send(&answer),
            };
            if r.is_err() {
                return;
            }
        }
    });

    wait_until_async(LONG, "three CO2 readings", || h.values("co2").len() >= 3).await;
    assert_eq!(
        h.values("co2")[..3],
        [Value::UInt(400), Value::UInt(401), Value::UInt(402)]
    );
    assert!(requests
        .lock()
        .unwrap()
        .iter()
        .all(|r| r[..] == MHZ19B_READ[..]));
    assert_eq!(count(&h.stats.bad_checksums), 1);
    assert_eq!(count(&h.stats.timeouts), 1);
    let st: Vec<bool> = h.statuses().iter().map(|s| s.0).collect();
    assert_eq!(st, vec![false, true], "{:?}", h.statuses());
    assert!(h.statuses()[0].1.contains("no valid answer within 1s"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nmea_gps_position_altitude_fix_and_satellites_are_exact() {
    let pty = PtyPair::start();
    let h = Harness::start(device(&format!(
        "[[devices]]\nname = \"gps\"\nkind = \"serial_line\"\npath = \"{}\"\ndriver = \"nmea\"\n",
        pty.device().display()
    )));
    h.wait_opened(1).await;
    let mut peer = pty.open_peer();
    let gga = nmea_line("GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,");
    let bad = nmea_line("GPGGA,123520,4807.040,N,01131.000,E,1,09,0.9,545.4,M,46.9,M,,")
        .replace("*", "0*");
    let rmc = nmea_line("GNRMC,123521,A,3356.5000,S,15112.0000,W,022.4,084.4,230394,003.1,W");
    peer.send(b"\x00\xff\xfejunk\r\n").unwrap();
    peer.send(&gga.as_bytes()[..20]).unwrap();
    peer.send(&gga.as_bytes()[20..]).unwrap();
    peer.send(bad.as_bytes()).unwrap();
    peer.send(&[b'x'; 300]).unwrap();
    peer.send(b"\r\n").unwrap();
    peer.send(nmea_line("GPGSV,3,1,11,03,03,111,00").as_bytes())
        .unwrap();
    peer.send(rmc.as_bytes()).unwrap();

    wait_until_async(LONG, "the RMC position", || h.values("speed").len() == 1).await;
    assert_eq!(
        h.values("latitude"),
        floats(&[48.0 + 7.038 / 60.0, -(33.0 + 56.5 / 60.0)])
    );
    assert_eq!(
        h.values("longitude"),
        floats(&[11.0 + 31.0 / 60.0, -(151.0 + 12.0 / 60.0)])
    );
    assert_eq!(h.values("altitude"), floats(&[545.4]));
    assert_eq!(h.values("fix"), vec![Value::UInt(1)]);
    assert_eq!(h.values("satellites"), vec![Value::UInt(8)]);
    assert_eq!(h.values("speed"), floats(&[22.4]));
    assert_eq!(h.values("course"), floats(&[84.4]));
    assert_eq!(count(&h.stats.bad_checksums), 1);
    assert_eq!(count(&h.stats.overlong), 1);
    // The junk line has no sentence start: it is noise, not a sentence that failed to parse.
    assert_eq!(count(&h.stats.unparsable), 0);
    assert_eq!(count(&h.stats.noise_bytes), 7);
    // GGA, GSV (valid, nothing we read) and RMC
    assert_eq!(count(&h.stats.frames), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_nmea_sentence_after_noise_or_a_cut_off_sentence_on_the_same_line_is_not_lost() {
    let pty = PtyPair::start();
    let h = Harness::start(device(&format!(
        "[[devices]]\nname = \"gps\"\nkind = \"serial_line\"\npath = \"{}\"\ndriver = \"nmea\"\n",
        pty.device().display()
    )));
    h.wait_opened(1).await;
    let mut peer = pty.open_peer();
    let gga = nmea_line("GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,");
    // Line noise before the sentence, on the same line.
    peer.send(b"\x7f\x7fXYZ").unwrap();
    peer.send(gga.as_bytes()).unwrap();
    // A sentence cut off by a glitch (no line ending), then a whole one.
    let gga2 = nmea_line("GPGGA,123520,4807.040,N,01131.000,E,1,09,0.9,545.4,M,46.9,M,,");
    peer.send(&gga2.as_bytes()[..25]).unwrap();
    peer.send(gga2.as_bytes()).unwrap();

    wait_until_async(LONG, "both sentences", || h.values("fix").len() == 2).await;
    assert_eq!(h.values("satellites"), vec![Value::UInt(8), Value::UInt(9)]);
    assert_eq!(count(&h.stats.frames), 2);
    // What was skipped is counted: 5 bytes of noise and the 25 bytes of the cut-off sentence.
    assert_eq!(count(&h.stats.noise_bytes), 5 + 25);
    assert_eq!(count(&h.stats.unparsable), 0);
    assert_eq!(count(&h.stats.bad_checksums), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_polled_text_device_gets_its_request_and_its_answer_is_parsed_by_regex() {
    let pty = PtyPair::start();
    let h = Harness::start(device(&format!(
        r#"[[devices]]
name = "probe"
kind = "serial_line"
path = "{}"
request = "READ\r\n"
interval = "50ms"
timeout = "3s"

[devices.framing]
type = "line"
delimiter = "\n"
max_length = 64

[devices.parse]
format = "regex"
regex = '^T=(?P<temp>-?[0-9.]+)C H=(?P<hum>[0-9]+)%$'

[[devices.points]]
name = "temperature"
field = "temp"
type = "f64"
unit = "°C"

[[devices.points]]
name = "humidity"
field = "hum"
type = "u8"
"#,
        pty.device().display()
    )));
    let mut peer = pty.open_peer();
    let requests = Arc::new(Mutex::new(Vec::new()));
    let seen = requests.clone();
    std::thread::spawn(move || {
        let answers = ["T=21.5C H=40%\r\n", "T=-3.25C H=41%\r\n", "T=0C H=0%\r\n"];
        for n in 0usize.. {
            let Ok(req) = peer.read_exact(6) else { return };
            seen.lock().unwrap().push(req);
            if peer.send(answers[n % 3].as_bytes()).is_err() {
                return;
            }
        }
    });
    wait_until_async(LONG, "three answers", || h.values("humidity").len() >= 3).await;
    assert_eq!(
        h.values("temperature")[..3],
        floats(&[21.5, -3.25, 0.0])[..]
    );
    assert_eq!(
        h.values("humidity")[..3],
        [Value::UInt(40), Value::UInt(41), Value::UInt(0)]
    );
    assert!(requests.lock().unwrap().iter().all(|r| r == b"READ\r\n"));
    assert_eq!(h.online(), Some(true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sensor_silent_past_its_timeout_is_offline_until_it_sends_valid_data_again() {
    let pty = PtyPair::start();
    let h = Harness::start(device(&format!(
        "[[devices]]\nname = \"air\"\nkind = \"serial_line\"\npath = \"{}\"\ndriver = \"sds011\"\ntimeout = \"300ms\"\n",
        pty.device().display()
    )));
    h.wait_opened(1).await;
    let mut peer = pty.open_peer();
    peer.send(&sds011_frame(10, 20)).unwrap();
    wait_until_async(LONG, "online", || h.online() == Some(true)).await;
    // On a slow machine the first frame may come after the timeout: look from here on.
    let before = h.statuses().len();
    wait_until_async(LONG, "offline after silence", || h.online() == Some(false)).await;
    // Garbage is not a sign of life.
    peer.send(&[0x55; 64]).unwrap();
    wait_until_async(LONG, "the garbage to be counted", || {
        count(&h.stats.noise_bytes) >= 64
    })
    .await;
    assert_eq!(h.online(), Some(false));
    peer.send(&sds011_frame(11, 21)).unwrap();
    wait_until_async(LONG, "online again", || h.online() == Some(true)).await;
    let st = h.statuses()[before..].to_vec();
    assert_eq!(
        st,
        vec![
            (false, "no valid data for 300ms".to_string()),
            (true, String::new())
        ]
    );
    assert_eq!(h.values("pm2_5"), floats(&[1.0, 1.1]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_port_is_offline_with_a_clear_reason_and_is_picked_up_when_it_appears() {
    let mut pty = PtyPair::start();
    pty.unplug();
    let h = Harness::start(device(&format!(
        "[[devices]]\nname = \"air\"\nkind = \"serial_line\"\npath = \"{}\"\ndriver = \"sds011\"\nbackoff_max = \"500ms\"\n",
        pty.device().display()
    )));
    wait_until_async(LONG, "offline", || h.online() == Some(false)).await;
    let reason = h.statuses()[0].1.clone();
    assert!(
        reason.contains(&format!("{}: no such device", pty.device().display())),
        "{reason}"
    );
    pty.plug();
    h.wait_opened(1).await;
    let mut peer = pty.open_peer();
    peer.send(&sds011_frame(5, 6)).unwrap();
    wait_until_async(LONG, "online", || h.online() == Some(true)).await;
    assert_eq!(h.values("pm10"), floats(&[0.6]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unplugging_and_replugging_20_times_recovers_within_5_s_each_time() {
    let mut pty = PtyPair::start();
    let h = Harness::start(device(&format!(
        "[[devices]]\nname = \"air\"\nkind = \"serial_line\"\npath = \"{}\"\ndriver = \"sds011\"\ntimeout = \"30s\"\nbackoff_max = \"1s\"\n",
        pty.device().display()
    )));
    let mut slowest = Duration::ZERO;
    for cycle in 1..=20u16 {
        let plugged_at = Instant::now();
        let mut peer = pty.open_peer();
        // Like a streaming sensor: send a frame now and then until one is read.
        let mut polls = 0u32;
        wait_until_async(LONG, &format!("the reading of cycle {cycle}"), || {
            if polls.is_multiple_of(5) {
                let _ = peer.send(&sds011_frame(cycle, 0));
            }
            polls += 1;
            h.values("pm2_5")
                .contains(&Value::Float(f64::from(cycle) / 10.0))
        })
        .await;
        let took = plugged_at.elapsed();
        assert!(took < Duration::from_secs(5), "cycle {cycle} took {took:?}");
        slowest = slowest.max(took);
        drop(peer);
        pty.unplug();
        wait_until_async(LONG, "offline after the unplug", || {
            h.online() == Some(false)
        })
        .await;
        pty.plug();
    }
    eprintln!("slowest recovery after replug: {slowest:?}");
    let st: Vec<bool> = h.statuses().iter().map(|s| s.0).collect();
    let mut want = vec![true];
    for _ in 1..20 {
        want.extend([false, true]);
    }
    want.push(false);
    assert_eq!(st, want);
    assert!(h.opens() >= 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_answer_is_discarded_and_never_taken_for_the_next_request() {
    let pty = PtyPair::start();
    let h = Harness::start(device(&format!(
        "[[devices]]\nname = \"co2\"\nkind = \"serial_line\"\npath = \"{}\"\ndriver = \"mhz19b\"\ninterval = \"1s\"\ntimeout = \"200ms\"\n",
        pty.device().display()
    )));
    let mut peer = pty.open_peer();
    let events = h.events.clone();
    let offline = move || {
        events
            .lock()
            .unwrap()
            .iter()
            .any(|e| matches!(e, DeviceEvent::Status { online: false, .. }))
    };
    // The sensor answers the first command only after the gateway gave up on it (it is offline
    // then), and every later command at once.
    std::thread::spawn(move || {
        if peer.read_exact(9).is_err() {
            return;
        }
        wait_until(LONG, "the gateway to give up on the first command", offline);
        if peer.send(&mhz19b_answer(999)).is_err() {
            return;
        }
        while peer.read_exact(9).is_ok() {
            if peer.send(&mhz19b_answer(401)).is_err() {
                return;
            }
        }
    });
    wait_until_async(LONG, "an answer to a later request", || {
        !h.values("co2").is_empty()
    })
    .await;
    assert_eq!(h.values("co2")[0], Value::UInt(401));
    assert!(!h.values("co2").contains(&Value::UInt(999)));
    assert!(count(&h.stats.timeouts) >= 1);
}
