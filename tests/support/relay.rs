//! An in-process TCP relay that can pass, black-hole, delay, reset or refuse a link without
//! touching either end, or play a broker that caps the publishes it takes unacknowledged.

use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};

use super::wait::LOCALHOST;

/// What the relay does with traffic; see [`Relay`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Forward both ways.
    Pass,
    /// Keep every connection open and accept new ones, but move no byte in either direction.
    /// Nothing is read, so nothing is lost: after `Pass` the streams continue where they were.
    /// New connections reach the target only once the relay passes traffic again.
    BlackHole,
    /// Reset (RST) every current connection, both sides; new connections are accepted and reset
    /// at once, so a client's connect succeeds and its first read or write fails.
    Refuse,
    /// Reset every current connection, both sides, then behave as `Pass`.
    Reset,
    /// Forward both ways, holding every chunk this long first (a slow, high-latency link).
    Delay(Duration),
    /// Do not reach the target: answer each new connection's first bytes with these, then
    /// close (a host that speaks another protocol on that port).
    Answer(&'static [u8]),
    /// For connections made while set: forward MQTT both ways, but let at most this many QoS 1
    /// PUBLISHes from the client wait for the target's PUBACK; one beyond them is read and
    /// dropped, neither forwarded nor answered (AWS IoT Core past its 100). Counted in
    /// [`Relay::dropped`].
    Cap(usize),
}

#[derive(Clone, Copy, Debug)]
struct RelayState {
    /// Never `Reset`: that is a one-off action recorded as a new generation.
    mode: Mode,
    /// Connections from an older generation are cut. Bumped by `Reset` and `Refuse`, so that a
    /// quick `Refuse` then `Pass` still cuts them even if they only ever see the latest state.
    generation: u64,
}

/// An in-process TCP relay on 127.0.0.1, forwarding to `target`, that can cut the link at
/// runtime. It runs on its own thread and runtime so that sync and async tests can use it.
/// Mode changes take effect asynchronously: wait on [`Relay::connections`] or on what the peers
/// observe.
pub struct Relay {
    port: u16,
    state: watch::Sender<RelayState>,
    open: Arc<AtomicUsize>,
    dropped: Arc<AtomicUsize>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Relay {
    pub fn start(target: SocketAddr) -> Relay {
        let listener = StdTcpListener::bind((LOCALHOST, 0)).expect("bind relay");
        listener.set_nonblocking(true).expect("nonblocking relay");
        let port = listener.local_addr().expect("relay addr").port();
        let (state, state_rx) = watch::channel(RelayState {
            mode: Mode::Pass,
            generation: 0,
        });
        let open = Arc::new(AtomicUsize::new(0));
        let dropped = Arc::new(AtomicUsize::new(0));
        let (stop, stop_rx) = oneshot::channel();
        let thread = {
            let open = open.clone();
            let dropped = dropped.clone();
            thread::Builder::new()
                .name(format!("relay-{port}"))
                .spawn(move || {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("relay runtime");
                    runtime.block_on(async move {
                        let listener = TcpListener::from_std(listener).expect("relay listener");
                        tokio::select! {
                            _ = stop_rx => {}
                            () = accept_loop(listener, target, state_rx, open, dropped) => {}
                        }
                    });
                    // Dropping the runtime drops every connection task, closing its sockets.
                })
                .expect("spawn relay thread")
        };
        Relay {
            port,
            state,
            open,
            dropped,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> SocketAddr {
        (LOCALHOST, self.port).into()
    }

    pub fn set_mode(&self, mode: Mode) {
        self.state.send_modify(|s| match mode {
            Mode::Reset => {
                s.generation += 1;
                s.mode = Mode::Pass;
            }
            Mode::Refuse => {
                s.generation += 1;
                s.mode = Mode::Refuse;
            }
            Mode::Pass | Mode::BlackHole | Mode::Delay(_) | Mode::Answer(_) | Mode::Cap(_) => {
                s.mode = mode
            }
        });
    }

    /// Client connections currently open through the relay.
    pub fn connections(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    /// Publishes dropped by [`Mode::Cap`] so far.
    pub fn dropped(&self) -> usize {
        self.dropped.load(Ordering::SeqCst)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

struct OpenConnection(Arc<AtomicUsize>);

impl OpenConnection {
    fn new(open: &Arc<AtomicUsize>) -> OpenConnection {
        open.fetch_add(1, Ordering::SeqCst);
        OpenConnection(open.clone())
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn accept_loop(
    listener: TcpListener,
    target: SocketAddr,
    state: watch::Receiver<RelayState>,
    open: Arc<AtomicUsize>,
    dropped: Arc<AtomicUsize>,
) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        // Taken now, not in the task, so a reset issued right after this accept cuts it too.
        let current = *state.borrow();
        if current.mode == Mode::Refuse {
            abort(&client);
            continue;
        }
        if let Mode::Answer(bytes) = current.mode {
            tokio::spawn(answer(client, bytes));
            continue;
        }
        let guard = OpenConnection::new(&open);
        if let Mode::Cap(cap) = current.mode {
            let dropped = dropped.clone();
            tokio::spawn(async move {
                capped_connection(client, target, cap, &dropped).await;
                drop(guard);
            });
            continue;
        }
        let state = state.clone();
        tokio::spawn(async move {
            relay_connection(client, target, state, current.generation).await;
            drop(guard);
        });
    }
}

/// Reads what the client sends first, answers `bytes` and closes.
async fn answer(mut client: TcpStream, bytes: &'static [u8]) {
    let mut first = [0u8; 1024];
    if matches!(client.read(&mut first).await, Ok(n) if n > 0) {
        let _ = client.write_all(bytes).await;
        let _ = client.flush().await;
    }
    let _ = client.shutdown().await;
}

/// Closes with RST rather than FIN, as a reset link or a refusing host would.
fn abort(stream: &TcpStream) {
    let _ = stream.set_zero_linger();
}

enum PumpEnd {
    /// The source closed its side; the other direction may go on.
    Eof,
    /// The relay cut the connection.
    Cut,
    /// A socket failed; give up on the whole connection.
    Failed,
}

async fn relay_connection(
    mut client: TcpStream,
    target: SocketAddr,
    mut state: watch::Receiver<RelayState>,
    generation: u64,
) {
    if !wait_for_pass(&mut state, generation).await {
        return abort(&client);
    }
    let Ok(mut upstream) = TcpStream::connect(target).await else {
        return abort(&client);
    };
    let cut = {
        let (client_rx, client_tx) = client.split();
        let (upstream_rx, upstream_tx) = upstream.split();
        let up = pump(client_rx, upstream_tx, state.clone(), generation);
        let down = pump(upstream_rx, client_tx, state, generation);
        tokio::pin!(up, down);
        let (mut up_done, mut down_done) = (false, false);
        loop {
            let end = tokio::select! {
                end = &mut up, if !up_done => { up_done = true; end }
                end = &mut down, if !down_done => { down_done = true; end }
            };
            match end {
                PumpEnd::Eof if !(up_done && down_done) => {}
                PumpEnd::Eof | PumpEnd::Failed => break false,
                PumpEnd::Cut => break true,
            }
        }
    };
    if cut {
        abort(&client);
        abort(&upstream);
    }
}

/// Waits until the relay passes traffic; false if this connection's generation is cut.
async fn wait_for_pass(state: &mut watch::Receiver<RelayState>, generation: u64) -> bool {
    loop {
        let current = *state.borrow_and_update();
        if current.generation != generation || current.mode == Mode::Refuse {
            return false;
        }
        if matches!(current.mode, Mode::Pass | Mode::Delay(_)) {
            return true;
        }
        if state.changed().await.is_err() {
            return false;
        }
    }
}

/// Copies one direction, but only while the relay is in `Pass`; a read or write in progress
/// when the mode changes is abandoned (both are cancel-safe) and retried once it passes again.
async fn pump(
    mut from: ReadHalf<'_>,
    mut to: WriteHalf<'_>,
    mut state: watch::Receiver<RelayState>,
    generation: u64,
) -> PumpEnd {
    let mut buf = vec![0; 16 * 1024];
    loop {
        let n = loop {
            if !wait_for_pass(&mut state, generation).await {
                return PumpEnd::Cut;
            }
            tokio::select! {
                read = from.read(&mut buf) => match read {
                    Ok(n) => break n,
                    Err(_) => return PumpEnd::Failed,
                },
                _ = state.changed() => {}
            }
        };
        if n == 0 {
            let _ = to.shutdown().await;
            return PumpEnd::Eof;
        }
        let delay = match state.borrow().mode {
            Mode::Delay(d) => d,
            _ => Duration::ZERO,
        };
        if !delay.is_zero() {
            // The link's latency, not synchronisation.
            tokio::time::sleep(delay).await;
        }
        let mut sent = 0;
        while sent < n {
            if !wait_for_pass(&mut state, generation).await {
                return PumpEnd::Cut;
            }
            tokio::select! {
                written = to.write(&buf[sent..n]) => match written {
                    Ok(0) | Err(_) => return PumpEnd::Failed,
                    Ok(k) => sent += k,
                },
                _ = state.changed() => {}
            }
        }
    }
}

/// [`Mode::Cap`]: relays whole MQTT packets, keeping the packet ids of the client's QoS 1
/// publishes the target has not acknowledged yet.
async fn capped_connection(
    mut client: TcpStream,
    target: SocketAddr,
    cap: usize,
    dropped: &AtomicUsize,
) {
    let Ok(mut upstream) = TcpStream::connect(target).await else {
        return abort(&client);
    };
    let waiting = std::sync::Mutex::new(std::collections::HashSet::new());
    let (client_rx, client_tx) = client.split();
    let (upstream_rx, upstream_tx) = upstream.split();
    let up = pump_packets(client_rx, upstream_tx, |packet| {
        match qos1_publish_id(packet) {
            Some(id) => {
                let mut w = waiting.lock().unwrap();
                if w.len() >= cap && !w.contains(&id) {
                    dropped.fetch_add(1, Ordering::SeqCst);
                    return false;
                }
                w.insert(id);
                true
            }
            None => true,
        }
    });
    let down = pump_packets(upstream_rx, client_tx, |packet| {
        if let Some(id) = puback_id(packet) {
            waiting.lock().unwrap().remove(&id);
        }
        true
    });
    // Either side closing ends the connection, as a broker's would.
    tokio::select! {
        _ = up => {}
        _ = down => {}
    }
}

/// Copies whole MQTT packets from `from` to `to`, those `keep` accepts; returns when a side
/// closes or fails.
async fn pump_packets(
    mut from: ReadHalf<'_>,
    mut to: WriteHalf<'_>,
    mut keep: impl FnMut(&[u8]) -> bool,
) {
    let mut buf = Vec::new();
    let mut chunk = vec![0; 16 * 1024];
    loop {
        let n = match from.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut out = Vec::new();
        let mut start = 0;
        while let Some(len) = packet_len(&buf[start..]) {
            let packet = &buf[start..start + len];
            if keep(packet) {
                out.extend_from_slice(packet);
            }
            start += len;
        }
        buf.drain(..start);
        if to.write_all(&out).await.is_err() {
            return;
        }
    }
}

/// The length of the whole MQTT packet at the start of `b`, once all of it is there.
fn packet_len(b: &[u8]) -> Option<usize> {
    let mut remaining = 0usize;
    for i in 0..4 {
        let byte = *b.get(1 + i)?;
        remaining |= usize::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            let len = 2 + i + remaining;
            return (b.len() >= len).then_some(len);
        }
    }
    None
}

/// Where the variable header of a whole packet starts.
fn header_start(packet: &[u8]) -> usize {
    1 + packet[1..].iter().position(|b| b & 0x80 == 0).unwrap_or(0) + 1
}

/// The packet id of a QoS 1 PUBLISH.
fn qos1_publish_id(packet: &[u8]) -> Option<u16> {
    if packet[0] >> 4 != 3 || (packet[0] >> 1) & 3 != 1 {
        return None;
    }
    let h = header_start(packet);
    let topic = usize::from(u16::from_be_bytes([packet[h], packet[h + 1]]));
    let at = h + 2 + topic;
    Some(u16::from_be_bytes([packet[at], packet[at + 1]]))
}

/// The packet id of a PUBACK.
fn puback_id(packet: &[u8]) -> Option<u16> {
    let h = header_start(packet);
    (packet[0] >> 4 == 4).then(|| u16::from_be_bytes([packet[h], packet[h + 1]]))
}
