//! The bus owner's line hygiene against a scripted RTU-over-TCP device server that decides
//! exactly when which bytes arrive: timings pymodbus cannot produce (a unit answering each
//! request twice because it was asked twice, replies landing in another unit's window, noise
//! that makes the decoder give up). In-process and fine-grained; the same properties are
//! exercised against pymodbus in tests/rtu.rs.

use fieldbridge::config::spec::modbus::Table;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fieldbridge::device::modbus::bus::{self, Answer, BusHandle, Connector, Exchange};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;

/// Modbus CRC-16 (poly 0xA001, init 0xFFFF), low byte first on the wire.
fn with_crc(mut frame: Vec<u8>) -> Vec<u8> {
    let mut crc: u16 = 0xFFFF;
    for &b in &frame {
        crc ^= u16::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xA001
            } else {
                crc >> 1
            };
        }
    }
    frame.extend_from_slice(&crc.to_le_bytes());
    frame
}

/// FC03 answer of `unit` for `count` registers from `start`; register a of unit u = 1000u + a.
fn fc03(unit: u8, start: u16, count: u16) -> Vec<u8> {
    let mut f = vec![unit, 0x03, (count * 2) as u8];
    for a in start..start + count {
        f.extend_from_slice(&(1000 * u16::from(unit) + a).to_be_bytes());
    }
    with_crc(f)
}

type Script = dyn Fn(usize, u8, u16, u16) -> Option<(Vec<u8>, Duration)> + Send + Sync;

/// A device server: every request is an 8-byte FC03 frame; `script(n, unit, start, count)`
/// says what to send back and how late. One unit answers its requests in order, like a real
/// slave. Returns the port and the number of requests seen.
async fn device_server(script: Box<Script>) -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    let script: Arc<Script> = Arc::from(script);
    tokio::spawn(async move {
        let mut busy_until = [Instant::now(); 256];
        while let Ok((socket, _)) = listener.accept().await {
            let (mut rx, mut tx) = socket.into_split();
            let (out, mut outq) = mpsc::unbounded_channel::<Vec<u8>>();
            tokio::spawn(async move {
                while let Some(bytes) = outq.recv().await {
                    let _ = tx.write_all(&bytes).await;
                }
            });
            let mut req = [0u8; 8];
            while rx.read_exact(&mut req).await.is_ok() {
                let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
                let unit = req[0];
                let start = u16::from_be_bytes([req[2], req[3]]);
                let count = u16::from_be_bytes([req[4], req[5]]);
                if let Some((reply, delay)) = script(n, unit, start, count) {
                    let slot = &mut busy_until[usize::from(unit)];
                    let at = (Instant::now() + delay).max(*slot + Duration::from_millis(1));
                    *slot = at;
                    let out = out.clone();
                    tokio::spawn(async move {
                        sleep_until(at).await;
                        let _ = out.send(reply);
                    });
                }
            }
        }
    });
    (port, seen)
}

fn bus_to(port: u16, stop: &CancellationToken) -> BusHandle {
    let (handle, _task) = bus::spawn(
        "test".into(),
        Connector::RtuOverTcp {
            host: "127.0.0.1".into(),
            port,
        },
        Duration::from_millis(2),
        stop.clone(),
    );
    handle
}

fn read(start: u16, count: u16) -> Exchange {
    Exchange::Read {
        table: Table::Holding,
        start,
        count,
    }
}

const T: Duration = Duration::from_millis(200);

#[tokio::test]
async fn a_units_second_reply_to_a_resent_request_is_never_taken_for_its_next_request() {
    // Unit 1 answers after 1.5 timeouts; unit 2 within one. Unit 1's late reply lands in unit
    // 2's window (garbage for unit 2), and the request to unit 2 is sent again while unit 2's
    // own first answer is still coming: unit 2 answers twice.
    let (port, _) = device_server(Box::new(|_, unit, start, count| match unit {
        1 => Some((fc03(1, start, count), Duration::from_millis(300))),
        2 => Some((fc03(2, start, count), Duration::from_millis(150))),
        _ => None,
    }))
    .await;
    let stop = CancellationToken::new();
    let bus = bus_to(port, &stop);
    let _ = bus.call(1, read(0, 2), T, 0).await;
    let first = bus.call(2, read(0, 2), T, 0).await;
    let next = bus.call(2, read(10, 2), T, 0).await;
    stop.cancel();
    if let Ok(a) = &first {
        assert_eq!(
            a,
            &Answer::Words(vec![2000, 2001]),
            "registers 0..2 of unit 2"
        );
    }
    match next {
        Ok(a) => assert_eq!(
            a,
            Answer::Words(vec![2010, 2011]),
            "registers 10..12 of unit 2"
        ),
        Err(e) => panic!("the unit's next request failed: {e}"),
    }
}

#[tokio::test]
async fn after_the_decoder_gives_up_the_request_is_answered_on_a_fresh_connection() {
    // The first answer is 40 bytes of noise: tokio-modbus drops byte after byte, then gives
    // up (InvalidData) and its framed connection stays errored.
    let (port, seen) = device_server(Box::new(|n, unit, start, count| {
        if n == 1 {
            Some((vec![0x05; 40], Duration::from_millis(10)))
        } else {
            Some((fc03(unit, start, count), Duration::from_millis(10)))
        }
    }))
    .await;
    let stop = CancellationToken::new();
    let bus = bus_to(port, &stop);
    let r = bus.call(3, read(0, 1), T, 1).await;
    let stats = bus.stats().clone();
    stop.cancel();
    assert_eq!(r.ok(), Some(Answer::Words(vec![3000])));
    assert_eq!(seen.load(Ordering::SeqCst), 2, "one request, one resend");
    assert_eq!(stats.bad_answers.load(Ordering::Relaxed), 1);
    assert_eq!(stats.link_errors.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn a_unit_waiting_out_its_timeout_does_not_hold_up_the_other_units_on_the_line() {
    // Unit 1 is dead and, with a retry, would keep the line for two timeouts plus the wait
    // for its late reply. Unit 2's request, queued behind it, must not wait for all that.
    let (port, seen) = device_server(Box::new(|_, unit, start, count| match unit {
        1 => None,
        _ => Some((fc03(unit, start, count), Duration::from_millis(5))),
    }))
    .await;
    let stop = CancellationToken::new();
    let bus = bus_to(port, &stop);
    let slow = Duration::from_millis(500);
    let t0 = Instant::now();
    let dead = {
        let bus = bus.clone();
        tokio::spawn(async move { bus.call(1, read(0, 1), slow, 1).await })
    };
    // Queue unit 2 once unit 1's first request is on the wire.
    while seen.load(Ordering::SeqCst) == 0 {
        tokio::task::yield_now().await;
    }
    let alive = bus.call(2, read(0, 1), slow, 0).await;
    let waited = t0.elapsed();
    let dead = dead.await.unwrap();
    stop.cancel();
    assert_eq!(alive.ok(), Some(Answer::Words(vec![2000])));
    assert!(dead.is_err(), "unit 1 never answers");
    // At most the one timeout already running when unit 2 arrived (plus scheduling slack),
    // never the retry and the wait for unit 1's late reply (three timeouts).
    assert!(
        waited < slow * 2,
        "unit 2 waited {waited:?} behind a dead unit with a {slow:?} timeout"
    );
}
