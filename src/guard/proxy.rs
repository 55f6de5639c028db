//! One client connection: read and check the CONNECT, then relay packets between the client and
//! rumqttd, applying the topic ACLs to what the client sends.
//!
//! A refused PUBLISH is acknowledged as its QoS requires and dropped, and a refused SUBSCRIBE
//! filter gets return code 0x80 in the SUBACK, as mosquitto does: the client's session goes on
//! and only the refused part has no effect. Both are logged at warn (`event=broker_acl_denied`),
//! at most a few times per connection so a looping client cannot flood the journal.
//! The client side is written by one task only (the relay of broker packets), so packets the
//! guard answers itself are never interleaved inside a broker packet.

use crate::config::spec::access::Access;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::auth;
use super::codec::{self, CodecError, Connect, Frame};
use super::forward::Pending;
use super::session::{self, Close, Rules, Session, Step};
use super::shared::{Rights, Shared, Who};
use crate::flow::Message;
use crate::outbox::Receipt;
use std::sync::atomic::{AtomicBool, Ordering};

/// The broker's frames are not limited by the client's limit (the gateway's own messages pass
/// there too) but by the largest packet MQTT can express.
const BACKEND_MAX_BODY: usize = 268_435_455;

/// The keep-alive rumqttd is told for a client that asked for none (keep-alive 0, which MQTT
/// 3.1.1 allows and rumqttd refuses). rumqttd drops a link silent for 1.5 × this, so the guard
/// sends it a PINGREQ of its own after `BACKEND_KEEP_ALIVE / 2` of client silence and swallows
/// the PINGRESP: the client's link lives as long as its TCP connection, as MQTT says.
const BACKEND_KEEP_ALIVE: u16 = 600;

/// Where a connection came from, for log fields and the anonymous policy.
#[derive(Clone, Copy)]
pub struct Origin {
    pub listener: &'static str,
    pub peer: SocketAddr,
    /// The listener is bound to a loopback address (anonymous clients are allowed there unless
    /// `allow_anonymous` says otherwise).
    pub loopback: bool,
}

#[derive(Debug, thiserror::Error)]
enum SessionEnd {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Protocol(#[from] CodecError),
    #[error("{0}")]
    Refused(&'static str),
}

/// Serves one client until either side closes. Never panics on client input.
pub async fn serve<S>(client: S, origin: Origin, shared: Arc<Shared>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(client);
    let mut buf = Vec::new();
    // Subscribed before the rights are read: a reload in between is seen as a change.
    let mut rights_watch = shared.rights.subscribe();
    let rights = shared.rights();
    let first = match tokio::time::timeout(
        rights.connect_timeout,
        read_frame(&mut rd, &mut buf, shared.max_body),
    )
    .await
    {
        Ok(Ok(Some(f))) => f,
        Ok(Ok(None)) => return,
        Ok(Err(e)) => {
            if let Some(suppressed) =
                shared.may_log(origin.peer.ip(), &format!("bad first packet: {e}"))
            {
                tracing::warn!(event = "broker_connect_refused", listener = origin.listener, peer = %origin.peer, error = %e, suppressed, "broker client sent a bad first packet");
            }
            return;
        }
        Err(_) => {
            if let Some(suppressed) =
                shared.may_log(origin.peer.ip(), "broker client sent no CONNECT in time")
            {
                tracing::warn!(event = "broker_connect_refused", listener = origin.listener, peer = %origin.peer, timeout = ?rights.connect_timeout, suppressed, "broker client sent no CONNECT in time");
            }
            return;
        }
    };
    let (connect, access, who) = match admit(&first, origin, &shared, &rights).await {
        Ok(admitted) => admitted,
        Err(answer) => {
            if let Some(bytes) = answer {
                let _ = wr.write_all(&bytes).await;
                let _ = wr.flush().await;
            }
            let _ = wr.shutdown().await;
            return;
        }
    };
    let user = connect.username.clone().unwrap_or_default();
    let client_id = connect.client_id.clone();
    let backend = match connect_backend(&shared, &connect).await {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(listener = origin.listener, peer = %origin.peer, error = %e, "cannot reach the embedded broker behind the guard");
            let _ = wr
                .write_all(&codec::connack(codec::RC_SERVER_UNAVAILABLE))
                .await;
            return;
        }
    };
    tracing::debug!(listener = origin.listener, peer = %origin.peer, user = %user, client_id = %client_id, "broker client connected");
    let (mut brd, bwr) = backend.into_split();
    let (out_tx, mut out_rx) = mpsc::channel::<Vec<u8>>(64);
    let pending: Arc<Mutex<HashMap<u16, Vec<Option<u8>>>>> = Arc::default();
    // PINGREQs the guard sent for a keep-alive 0 client: their PINGRESPs are not the client's.
    let own_pings = Arc::new(std::sync::atomic::AtomicU32::new(0));

    let writer = async move {
        while let Some(bytes) = out_rx.recv().await {
            wr.write_all(&bytes).await?;
            wr.flush().await?;
        }
        let _ = wr.shutdown().await;
        Ok::<(), std::io::Error>(())
    };
    let from_broker = {
        let (out_tx, pending, own_pings) = (out_tx.clone(), pending.clone(), own_pings.clone());
        async move {
            use std::sync::atomic::Ordering::SeqCst;
            let mut bbuf = Vec::new();
            while let Some(f) = read_frame(&mut brd, &mut bbuf, BACKEND_MAX_BODY).await? {
                let bytes = match f.kind() {
                    codec::SUBACK => rewrite_suback(&f, &pending),
                    codec::PINGRESP
                        if own_pings
                            .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
                            .is_ok() =>
                    {
                        continue
                    }
                    _ => f.encode(),
                };
                if out_tx.send(bytes).await.is_err() {
                    break;
                }
            }
            Ok::<(), SessionEnd>(())
        }
    };
    let ctx = Ctx {
        origin,
        user: &user,
        client_id: &client_id,
        access: &access,
        shared: &shared,
        denied: 0,
        ping_backend: (connect.keep_alive == 0)
            .then(|| std::time::Duration::from_secs(u64::from(BACKEND_KEEP_ALIVE / 2))),
        own_pings,
    };
    // Everything the client sends goes to rumqttd through one queue, in order; forwarded
    // publishes wait there for their commit (see `forward`).
    let (btx, brx) = mpsc::channel::<ToBroker>(TO_BROKER_QUEUE);
    let disconnected = AtomicBool::new(false);
    let from_client = client_loop(ctx, rd, buf, btx, out_tx, pending, &disconnected);
    let to_rumqttd = to_broker(brx, bwr, &shared, origin, &client_id);
    // The client's side ends when it closed and the queue behind it is written out.
    let upward = async { tokio::try_join!(from_client, to_rumqttd).map(|_| ()) };
    // A reload that changes this client's own rights ends its session (see `shared`).
    let revoked = async {
        loop {
            if rights_watch.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
            let now = rights_watch.borrow_and_update().clone();
            if !now.still_grants(&who, &access) {
                tracing::info!(event = "broker_client_rights_changed", listener = origin.listener, peer = %origin.peer, user = %user, client_id = %client_id, "a reload changed this client's rights; disconnecting it so it logs in again under the new ones");
                return;
            }
        }
    };
    let result: Result<(), SessionEnd> = tokio::select! {
        r = upward => r,
        r = from_broker => r,
        r = writer => r.map_err(SessionEnd::from),
        () = revoked => Err(SessionEnd::Refused("its rights changed in a reload")),
    };
    if !disconnected.load(Ordering::Relaxed) {
        forward_will(&connect, &shared, origin).await;
    }
    match result {
        Ok(()) => {
            tracing::debug!(listener = origin.listener, peer = %origin.peer, client_id = %client_id, "broker client disconnected")
        }
        Err(e) => {
            tracing::info!(listener = origin.listener, peer = %origin.peer, user = %user, client_id = %client_id, reason = %e, "broker client connection closed")
        }
    }
}

/// Checks the CONNECT. A refusal carries the CONNACK to send, if the client gets one.
async fn admit(
    first: &Frame,
    origin: Origin,
    shared: &Shared,
    rights: &Rights,
) -> Result<(Connect, Access, Who), Option<Vec<u8>>> {
    let refuse = |code: u8, reason: &str, user: &str, client_id: &str| {
        if let Some(suppressed) = shared.may_log(origin.peer.ip(), reason) {
            tracing::warn!(
                event = "broker_connect_refused",
                listener = origin.listener,
                peer = %origin.peer,
                user = %user,
                client_id = %client_id,
                reason = %reason,
                suppressed,
                "broker client refused"
            );
        }
        codec::connack(code)
    };
    if let Some(problem) = codec::client_frame_problem(first) {
        if let Some(suppressed) = shared.may_log(origin.peer.ip(), problem) {
            tracing::warn!(event = "broker_connect_refused", listener = origin.listener, peer = %origin.peer, problem, suppressed, "broker client broke the protocol in its first packet");
        }
        return Err(None);
    }
    if first.kind() != codec::CONNECT {
        if let Some(suppressed) =
            shared.may_log(origin.peer.ip(), "broker client did not start with CONNECT")
        {
            tracing::warn!(event = "broker_connect_refused", listener = origin.listener, peer = %origin.peer, packet_type = first.kind(), suppressed, "broker client did not start with CONNECT");
        }
        return Err(None);
    }
    let c = match codec::parse_connect(&first.body) {
        Ok(c) => c,
        Err(e) => {
            if let Some(suppressed) =
                shared.may_log(origin.peer.ip(), &format!("malformed CONNECT: {e}"))
            {
                tracing::warn!(event = "broker_connect_refused", listener = origin.listener, peer = %origin.peer, error = %e, suppressed, "broker client sent a malformed CONNECT");
            }
            return Err(None);
        }
    };
    let user = c.username.clone().unwrap_or_default();
    let answer = |bytes: Vec<u8>| Err(Some(bytes));
    if c.level != 4 {
        let reason = format!("protocol level {} (only MQTT 3.1.1 is served)", c.level);
        return answer(refuse(codec::RC_BAD_PROTOCOL, &reason, &user, ""));
    }
    if c.client_id.len() > codec::MAX_CLIENT_ID {
        let reason = format!(
            "client id of {} bytes (at most {} accepted)",
            c.client_id.len(),
            codec::MAX_CLIENT_ID
        );
        return answer(refuse(codec::RC_IDENTIFIER_REJECTED, &reason, &user, ""));
    }
    let (lo, hi) = rights.keep_alive;
    let zero_ok = c.keep_alive == 0 && rights.keep_alive_zero;
    if !zero_ok && (c.keep_alive < lo || c.keep_alive > hi) {
        let reason = match c.keep_alive {
            0 => format!(
                "keep-alive 0 (no keep-alive) refused by broker.allow_keep_alive_zero = false; allowed: {lo}..{hi} s"
            ),
            n => format!("keep-alive {n} s outside the allowed {lo}..{hi} s"),
        };
        return answer(refuse(
            codec::RC_IDENTIFIER_REJECTED,
            &reason,
            &user,
            &c.client_id,
        ));
    }
    let (access, who) = match &c.username {
        None => {
            if !rights.anonymous_allowed(origin.loopback) {
                let r = refuse(
                    codec::RC_NOT_AUTHORIZED,
                    "anonymous clients are not allowed on this listener",
                    "",
                    &c.client_id,
                );
                return answer(r);
            }
            let who = Who::Anonymous {
                loopback_listener: origin.loopback,
            };
            (rights.anonymous.clone(), who)
        }
        Some(name) => {
            let ip = origin.peer.ip();
            let locked = shared
                .throttle
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .locked(ip, std::time::Instant::now());
            if let Some(left) = locked {
                let reason = format!(
                    "too many failed logins from this address; locked for another {} ms",
                    left.as_millis()
                );
                let r = refuse(codec::RC_BAD_CREDENTIALS, &reason, name, &c.client_id);
                return answer(r);
            }
            let known = rights.users.get(name);
            let ok = if rights.users.is_empty() {
                // No user could match: nothing to hash (a storm of logins costs no Argon2).
                false
            } else {
                // An unknown user is checked against a dummy hash, so the answer takes as long
                // as for a known one and does not tell which names exist.
                let hash = known
                    .map(|(h, _)| h.clone())
                    .unwrap_or_else(|| shared.dummy_hash.clone());
                let password = c.password.clone().unwrap_or_default();
                match shared.verifier().verify(hash, password).await {
                    auth::Verdict::Match => true,
                    auth::Verdict::NoMatch => false,
                    auth::Verdict::Busy => {
                        let r = refuse(
                            codec::RC_SERVER_UNAVAILABLE,
                            "too many logins being checked at once; try again shortly",
                            name,
                            &c.client_id,
                        );
                        return answer(r);
                    }
                }
            };
            {
                let mut t = shared.throttle.lock().unwrap_or_else(|e| e.into_inner());
                if ok && known.is_some() && c.password.is_some() {
                    t.succeeded(ip);
                } else {
                    t.failed(ip, std::time::Instant::now());
                }
            }
            match known {
                Some((hash, access)) if ok && c.password.is_some() => {
                    let who = Who::User {
                        name: name.clone(),
                        hash: hash.clone(),
                    };
                    (access.clone(), who)
                }
                Some(_) => {
                    let r = refuse(
                        codec::RC_BAD_CREDENTIALS,
                        "wrong password",
                        name,
                        &c.client_id,
                    );
                    return answer(r);
                }
                None => {
                    let r = refuse(
                        codec::RC_BAD_CREDENTIALS,
                        "unknown user",
                        name,
                        &c.client_id,
                    );
                    return answer(r);
                }
            }
        }
    };
    if let Some(w) = &c.will {
        // The same size rule as a PUBLISH: the Will is published (and forwarded) like one.
        if w.message.len() > shared.max_payload {
            let reason = format!(
                "Last Will message of {} bytes is over max_payload_bytes ({})",
                w.message.len(),
                shared.max_payload
            );
            return answer(refuse(
                codec::RC_NOT_AUTHORIZED,
                &reason,
                &user,
                &c.client_id,
            ));
        }
        if let Err(d) = shared.policy.publish(&access, &w.topic, w.retain) {
            let reason = format!("Last Will topic {:?} refused: {}", w.topic, d.as_str());
            return answer(refuse(
                codec::RC_NOT_AUTHORIZED,
                &reason,
                &user,
                &c.client_id,
            ));
        }
    }
    Ok((c, access, who))
}

async fn connect_backend(shared: &Shared, c: &Connect) -> std::io::Result<TcpStream> {
    let mut s = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        TcpStream::connect(shared.backend),
    )
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    s.set_nodelay(true)?;
    let rewritten = Connect {
        client_id: backend_client_id(c),
        username: Some(shared.login.user.clone()),
        password: Some(shared.login.password.clone().into_bytes()),
        // rumqttd refuses keep-alive 0; the guard keeps such a link alive for it (`client_loop`).
        keep_alive: match c.keep_alive {
            0 => BACKEND_KEEP_ALIVE,
            n => n,
        },
        ..c.clone()
    };
    s.write_all(&codec::encode_connect(&rewritten)).await?;
    Ok(s)
}

/// rumqttd keys sessions by client id alone. Prefixing the user name keeps one user from taking
/// over another user's persistent session (and the subscriptions and queued messages in it) by
/// reusing its client id. An empty id stays empty: rumqttd then makes up a unique one.
fn backend_client_id(c: &Connect) -> String {
    if c.client_id.is_empty() {
        return String::new();
    }
    match &c.username {
        Some(u) => format!("u:{u}:{}", c.client_id),
        None => format!("anon:{}", c.client_id),
    }
}

struct Ctx<'a> {
    origin: Origin,
    user: &'a str,
    client_id: &'a str,
    access: &'a Access,
    shared: &'a Shared,
    denied: u64,
    /// Keep-alive 0: ping rumqttd after this long without a packet from the client.
    ping_backend: Option<std::time::Duration>,
    own_pings: Arc<std::sync::atomic::AtomicU32>,
}

impl Ctx<'_> {
    fn log_denied(&mut self, action: &str, topic: &str, reason: &str) {
        self.denied += 1;
        // The first few, then every power of two: a looping client cannot flood the log.
        if self.denied <= 5 || self.denied.is_power_of_two() {
            tracing::warn!(
                event = "broker_acl_denied",
                action = action,
                topic = %topic,
                reason = reason,
                user = %self.user,
                client_id = %self.client_id,
                listener = self.origin.listener,
                peer = %self.origin.peer,
                denied_so_far = self.denied,
                "broker client refused by the topic ACL"
            );
        }
    }
}

/// What the client loop hands to rumqttd, in the client's order.
enum ToBroker {
    Frame(Vec<u8>),
    /// Forwarded publishes: relayed once their commit is done.
    AfterCommit {
        receipt: Receipt,
        frames: Vec<u8>,
        count: usize,
        acked: usize,
    },
}

/// Items (frames, or batches waiting for a commit) queued towards rumqttd per connection; when
/// full the guard stops reading the client (TCP back-pressure).
const TO_BROKER_QUEUE: usize = 64;

/// Writes the client's packets to rumqttd in order, each forwarded batch after its commit.
async fn to_broker<W: AsyncWrite + Unpin>(
    mut rx: mpsc::Receiver<ToBroker>,
    mut bwr: W,
    shared: &Shared,
    origin: Origin,
    client_id: &str,
) -> Result<(), SessionEnd> {
    while let Some(item) = rx.recv().await {
        match item {
            ToBroker::Frame(bytes) => bwr.write_all(&bytes).await?,
            ToBroker::AfterCommit {
                receipt,
                frames,
                count,
                acked,
            } => {
                let committed = receipt.committed().await;
                if let Some(f) = &shared.forward {
                    let c = f.counters();
                    match &committed {
                        Ok(()) => {
                            c.forwarded.fetch_add(count as u64, Ordering::Relaxed);
                        }
                        Err(e) if acked > 0 => {
                            let total =
                                c.forward_refused.fetch_add(acked as u64, Ordering::Relaxed);
                            c.forward_lost
                                .fetch_add((count - acked) as u64, Ordering::Relaxed);
                            // MQTT 3.1.1 has no negative PUBACK: without an ack, the client
                            // sends these again after it reconnects.
                            tracing::error!(event = "forward_refused", refused = acked, refused_total = total + acked as u64, client_id = %client_id, peer = %origin.peer, error = %e, "forwarded messages could not be stored; not acknowledged, closing the client's connection so it sends them again");
                            return Err(SessionEnd::Refused(
                                "outbox could not store forwarded messages",
                            ));
                        }
                        Err(e) => {
                            let total = c.forward_lost.fetch_add(count as u64, Ordering::Relaxed);
                            tracing::error!(event = "forward_lost", lost = count, lost_total = total + count as u64, client_id = %client_id, peer = %origin.peer, error = %e, "forwarded QoS 0 messages could not be stored: delivered locally, not upstream");
                        }
                    }
                }
                bwr.write_all(&frames).await?;
            }
        }
    }
    Ok(())
}

/// A client gone without DISCONNECT: rumqttd publishes its Will locally; one on a forwarded
/// topic is stored for upstream too.
async fn forward_will(connect: &Connect, shared: &Shared, origin: Origin) {
    let (Some(w), Some(f)) = (&connect.will, &shared.forward) else {
        return;
    };
    let Some(remote) = f.remote_topic(&w.topic) else {
        return;
    };
    let message = Message {
        topic: remote,
        payload: w.message.clone(),
        retain: w.retain,
    };
    if let Err(e) = f.store_will(message).await {
        f.counters().forward_lost.fetch_add(1, Ordering::Relaxed);
        tracing::error!(event = "forward_lost", lost = 1, client_id = %connect.client_id, peer = %origin.peer, topic = %w.topic, error = %e, "a client's Last Will could not be stored for upstream");
    }
}

#[allow(clippy::too_many_arguments)]
async fn client_loop<R>(
    mut ctx: Ctx<'_>,
    mut rd: R,
    mut buf: Vec<u8>,
    to_rumqttd: mpsc::Sender<ToBroker>,
    out: mpsc::Sender<Vec<u8>>,
    pending: Arc<Mutex<HashMap<u16, Vec<Option<u8>>>>>,
    disconnected: &AtomicBool,
) -> Result<(), SessionEnd>
where
    R: AsyncRead + Unpin,
{
    let relay = |item: ToBroker| {
        let to_rumqttd = to_rumqttd.clone();
        async move {
            to_rumqttd
                .send(item)
                .await
                .map_err(|_| SessionEnd::Refused("embedded broker connection gone"))
        }
    };
    let mut held = Pending::default();
    // Submits the publishes held so far; they reach rumqttd after their commit.
    macro_rules! release {
        () => {
            if !held.is_empty() {
                let batch = std::mem::take(&mut held);
                let count = batch.messages.len();
                let receipt = match &ctx.shared.forward {
                    Some(f) => f.submit(batch.messages).await.map_err(|_| {
                        SessionEnd::Refused("outbox closed: forwarded messages not accepted")
                    })?,
                    None => return Err(SessionEnd::Refused("no forwarding configured")),
                };
                relay(ToBroker::AfterCommit {
                    receipt,
                    frames: batch.frames,
                    count,
                    acked: batch.acked,
                })
                .await?;
            }
        };
    }
    // Relays one frame to rumqttd, after the publishes held before it.
    macro_rules! pass {
        ($bytes:expr) => {{
            release!();
            relay(ToBroker::Frame($bytes)).await?;
        }};
    }
    let mut session = Session::default();
    let reply = |bytes: Vec<u8>| {
        let out = out.clone();
        async move {
            out.send(bytes)
                .await
                .map_err(|_| SessionEnd::Refused("client writer gone"))
        }
    };
    let mut chunk = vec![0u8; 8192];
    loop {
        let f = match codec::take_frame(&mut buf, ctx.shared.max_body)? {
            Some(f) => f,
            None => {
                // Everything this read brought is handled: one submit for its publishes.
                release!();
                let n = match ctx.ping_backend {
                    None => rd.read(&mut chunk).await?,
                    Some(idle) => match tokio::time::timeout(idle, rd.read(&mut chunk)).await {
                        Ok(r) => r?,
                        Err(_) => {
                            // A keep-alive 0 client is silent: keep its rumqttd session alive.
                            ctx.own_pings
                                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            relay(ToBroker::Frame(codec::encode_frame(
                                codec::PINGREQ << 4,
                                &[],
                            )))
                            .await?;
                            continue;
                        }
                    },
                };
                if n == 0 {
                    return if buf.is_empty() {
                        Ok(())
                    } else {
                        Err(SessionEnd::Refused("connection closed inside a packet"))
                    };
                }
                buf.extend_from_slice(&chunk[..n]);
                continue;
            }
        };
        let rules = Rules {
            policy: &ctx.shared.policy,
            access: ctx.access,
            max_payload: ctx.shared.max_payload,
            forward: ctx.shared.forward.as_ref().map_or(&[], |fw| fw.rules()),
        };
        let outcome = session.on_client_frame(&rules, &f)?;
        for d in &outcome.denied {
            ctx.log_denied(d.action, &d.topic, d.reason);
        }
        match outcome.step {
            Step::Relay => pass!(f.encode()),
            Step::Narrowed { pkid, mask, frame } => {
                pending
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(pkid, mask);
                pass!(frame);
            }
            Step::Answer(bytes) => reply(bytes).await?,
            Step::Drop => {}
            Step::Forward { message, acked } => {
                held.messages.push(message);
                f.encode_into(&mut held.frames);
                if acked {
                    held.acked += 1;
                }
                if held.is_full() {
                    release!();
                }
            }
            Step::Disconnect => {
                disconnected.store(true, Ordering::Relaxed);
                pass!(f.encode());
            }
            Step::Close(Close::Violation(problem)) => {
                if let Some(suppressed) = ctx.shared.may_log(ctx.origin.peer.ip(), problem) {
                    tracing::warn!(event = "broker_protocol_violation", packet_type = f.kind(), problem, client_id = %ctx.client_id, peer = %ctx.origin.peer, suppressed, "broker client broke the protocol; disconnecting it");
                }
                return Err(SessionEnd::Refused(problem));
            }
            Step::Close(Close::TooLarge { topic, bytes }) => {
                if let Some(suppressed) = ctx.shared.may_log(
                    ctx.origin.peer.ip(),
                    "broker client published over max_payload_bytes; disconnecting it",
                ) {
                    tracing::warn!(event = "broker_payload_too_large", topic = %topic, bytes, max = ctx.shared.max_payload, client_id = %ctx.client_id, peer = %ctx.origin.peer, suppressed, "broker client published over max_payload_bytes; disconnecting it");
                }
                return Err(SessionEnd::Refused("payload over max_payload_bytes"));
            }
            Step::Close(Close::SecondConnect) => return Err(SessionEnd::Refused("second CONNECT")),
        }
    }
}

/// Puts the refused filters' 0x80 back into a SUBACK for a narrowed SUBSCRIBE.
fn rewrite_suback(f: &Frame, pending: &Mutex<HashMap<u16, Vec<Option<u8>>>>) -> Vec<u8> {
    let Ok((pkid, codes)) = codec::parse_suback(&f.body) else {
        return f.encode();
    };
    match pending
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&pkid)
    {
        Some(mask) => session::merge_suback(pkid, &codes, &mask),
        None => f.encode(),
    }
}

/// Reads until one complete frame is buffered; `None` at a clean end of stream.
async fn read_frame<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut Vec<u8>,
    max_body: usize,
) -> Result<Option<Frame>, SessionEnd> {
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(f) = codec::take_frame(buf, max_body)? {
            return Ok(Some(f));
        }
        let n = rd.read(&mut chunk).await?;
        if n == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(SessionEnd::Refused("connection closed inside a packet"))
            };
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ids_are_namespaced_per_user_so_sessions_cannot_be_taken_over() {
        let c = |user: Option<&str>, id: &str| Connect {
            level: 4,
            clean_session: false,
            keep_alive: 60,
            client_id: id.into(),
            will: None,
            username: user.map(String::from),
            password: None,
        };
        assert_eq!(backend_client_id(&c(Some("alice"), "dash")), "u:alice:dash");
        assert_eq!(backend_client_id(&c(None, "dash")), "anon:dash");
        // Only configured users get this far, and their names cannot contain ':'.
        assert_eq!(backend_client_id(&c(Some("anon"), "x")), "u:anon:x");
        assert_eq!(backend_client_id(&c(Some("alice"), "")), "");
    }

    #[test]
    fn a_narrowed_suback_gets_the_refused_filters_back_in_their_places() {
        let pending = Mutex::new(HashMap::from([(
            7u16,
            vec![Some(0x80), None, Some(0x80), None],
        )]));
        let mut from_broker = codec::encode_suback(7, &[1, 2]);
        let f = codec::take_frame(&mut from_broker, 100).unwrap().unwrap();
        let mut out = rewrite_suback(&f, &pending);
        let g = codec::take_frame(&mut out, 100).unwrap().unwrap();
        assert_eq!(
            codec::parse_suback(&g.body).unwrap(),
            (7, vec![0x80, 1, 0x80, 2])
        );
        // A SUBACK nobody narrowed passes unchanged.
        let mut other = codec::encode_suback(8, &[0]);
        let f = codec::take_frame(&mut other, 100).unwrap().unwrap();
        assert_eq!(rewrite_suback(&f, &pending), f.encode());
    }
}
