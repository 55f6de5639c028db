//! The public listeners: plain TCP, TLS (tokio-rustls) and WebSocket (tokio-tungstenite), each
//! feeding the same per-connection proxy.
//!
//! Every accepted socket first takes a connection slot, then gets its own task; a TLS or
//! WebSocket handshake runs in that task under `handshake_timeout`, so a socket that never
//! completes its handshake only ever costs its own slot for that long, never another client's
//! turn (the stall of rumqttd's inline TLS accept).
//! Listeners are bound synchronously by `bind` so that a busy port is a startup error, and run
//! on the caller's runtime.

use std::net::{SocketAddr, TcpListener as StdListener};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::OwnedSemaphorePermit;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

use super::proxy::{serve, Origin};
use super::shared::{AddressSlot, GuardError, Shared};
use crate::config::Broker as BrokerConfig;

/// The listeners, bound but not yet accepting.
pub struct Bound {
    plain: StdListener,
    tls: Option<(StdListener, Arc<rustls::ServerConfig>)>,
    websocket: Option<StdListener>,
}

fn bind_one(listener: &'static str, addr: SocketAddr) -> Result<StdListener, GuardError> {
    let l = StdListener::bind(addr).map_err(|source| GuardError::Bind {
        listener,
        addr,
        source,
    })?;
    l.set_nonblocking(true)
        .map_err(|e| GuardError::Internal(e.to_string()))?;
    Ok(l)
}

/// Binds every configured listener and loads the TLS certificate.
pub fn bind(cfg: &BrokerConfig) -> Result<Bound, GuardError> {
    let tls = match &cfg.tls {
        Some(t) => Some((
            bind_one("tls", t.listen)?,
            server_config(&t.cert_file, &t.key_file)?,
        )),
        None => None,
    };
    Ok(Bound {
        plain: bind_one("plain", cfg.listen)?,
        tls,
        websocket: match &cfg.websocket {
            Some(w) => Some(bind_one("websocket", w.listen)?),
            None => None,
        },
    })
}

fn server_config(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<Arc<rustls::ServerConfig>, GuardError> {
    let err = |file: &std::path::Path, message: String| GuardError::Tls {
        file: file.display().to_string(),
        message,
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| err(cert, format!("cannot read the certificate chain: {e}")))?;
    if chain.is_empty() {
        return Err(err(cert, "no PEM certificate in the file".into()));
    }
    let key_der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| err(key, format!("cannot read the private key: {e}")))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| err(cert, e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|e| {
            err(
                cert,
                format!("certificate and key do not fit together: {e}"),
            )
        })?;
    Ok(Arc::new(config))
}

/// Starts accepting on every bound listener, on `rt`; each connection gets its own task.
pub fn spawn(
    bound: Bound,
    cfg: &BrokerConfig,
    shared: Arc<Shared>,
    rt: &tokio::runtime::Handle,
) -> Result<(), GuardError> {
    let _enter = rt.enter();
    let tokio_listener =
        |l: StdListener| TcpListener::from_std(l).map_err(|e| GuardError::Internal(e.to_string()));
    let plain = tokio_listener(bound.plain)?;
    let origin = |listener, a: SocketAddr| (listener, a.ip().is_loopback());
    rt.spawn(accept_loop(
        plain,
        origin("plain", cfg.listen),
        shared.clone(),
        Kind::Plain,
    ));
    if let (Some((l, config)), Some(t)) = (bound.tls, &cfg.tls) {
        let kind = Kind::Tls(tokio_rustls::TlsAcceptor::from(config), t.handshake_timeout);
        rt.spawn(accept_loop(
            tokio_listener(l)?,
            origin("tls", t.listen),
            shared.clone(),
            kind,
        ));
    }
    if let (Some(l), Some(w)) = (bound.websocket, &cfg.websocket) {
        rt.spawn(accept_loop(
            tokio_listener(l)?,
            origin("websocket", w.listen),
            shared.clone(),
            Kind::WebSocket(w.handshake_timeout),
        ));
    }
    for (name, addr) in cfg.listeners() {
        if !addr.ip().is_loopback() && cfg.allow_anonymous == Some(true) {
            tracing::warn!(listener = name, listen = %addr, "allow_anonymous = true: anyone who can reach this address may use the broker without a password");
        }
    }
    Ok(())
}

#[derive(Clone)]
enum Kind {
    Plain,
    Tls(tokio_rustls::TlsAcceptor, Duration),
    WebSocket(Duration),
}

async fn accept_loop(
    listener: TcpListener,
    (name, loopback): (&'static str, bool),
    shared: Arc<Shared>,
    kind: Kind,
) {
    let mut refused: u64 = 0;
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning on the error.
                tracing::error!(listener = name, error = %e, "broker listener cannot accept");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = shared.connections.clone().try_acquire_owned() else {
            shared
                .counters
                .connections_refused
                .fetch_add(1, Ordering::Relaxed);
            refused += 1;
            if refused <= 5 || refused.is_power_of_two() {
                tracing::warn!(event = "broker_connection_limit", listener = name, peer = %peer, refused_so_far = refused, "max_connections reached; closing a new connection");
            }
            drop(stream);
            continue;
        };
        let Some(address_slot) = shared.per_address.try_take(peer.ip()) else {
            shared
                .counters
                .connections_refused
                .fetch_add(1, Ordering::Relaxed);
            refused += 1;
            if refused <= 5 || refused.is_power_of_two() {
                tracing::warn!(event = "broker_connection_limit", listener = name, peer = %peer, refused_so_far = refused, "max_connections_per_address reached for this address; closing a new connection");
            }
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        shared
            .counters
            .connections_accepted
            .fetch_add(1, Ordering::Relaxed);
        let origin = Origin {
            listener: name,
            peer,
            loopback,
        };
        tokio::spawn(connection(
            stream,
            origin,
            shared.clone(),
            kind.clone(),
            (permit, address_slot),
        ));
    }
}

async fn connection(
    stream: TcpStream,
    origin: Origin,
    shared: Arc<Shared>,
    kind: Kind,
    _slots: (OwnedSemaphorePermit, AddressSlot),
) {
    let counters = shared.counters.clone();
    match kind {
        Kind::Plain => serve(stream, origin, shared).await,
        Kind::Tls(acceptor, limit) => {
            match tokio::time::timeout(limit, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => serve(tls, origin, shared).await,
                Ok(Err(e)) => {
                    tracing::info!(listener = origin.listener, peer = %origin.peer, error = %e, "TLS handshake failed")
                }
                Err(_) => {
                    tracing::info!(listener = origin.listener, peer = %origin.peer, timeout = ?limit, "TLS handshake timed out; connection closed")
                }
            }
        }
        Kind::WebSocket(limit) => {
            let config = WebSocketConfig::default()
                .max_message_size(Some(shared.max_body + 5))
                .max_frame_size(Some(shared.max_body + 5));
            let accept = tokio_tungstenite::accept_hdr_async_with_config(
                stream,
                choose_mqtt_subprotocol,
                Some(config),
            );
            match tokio::time::timeout(limit, accept).await {
                Ok(Ok(ws)) => websocket(ws, origin, shared).await,
                Ok(Err(e)) => {
                    tracing::info!(listener = origin.listener, peer = %origin.peer, error = %e, "WebSocket handshake failed")
                }
                Err(_) => {
                    tracing::info!(listener = origin.listener, peer = %origin.peer, timeout = ?limit, "WebSocket handshake timed out; connection closed")
                }
            }
        }
    }
    // Each arm above returns only once the connection is closed.
    counters.connections_closed.fetch_add(1, Ordering::Relaxed);
}

/// MQTT over WebSocket uses the subprotocol `mqtt` (MQTT 3.1.1 §6); clients such as paho
/// refuse a handshake answer that does not name it, and a client that does not offer it is not
/// speaking MQTT: its upgrade is refused (400) instead of opening a socket nobody can use.
#[allow(clippy::result_large_err)] // the signature is tungstenite's callback type
fn choose_mqtt_subprotocol(req: &Request, mut resp: Response) -> Result<Response, ErrorResponse> {
    let offered = req
        .headers()
        .get_all("Sec-WebSocket-Protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim() == "mqtt");
    if !offered {
        let mut refusal = ErrorResponse::new(Some(
            "MQTT over WebSocket needs the subprotocol \"mqtt\" (Sec-WebSocket-Protocol)".into(),
        ));
        *refusal.status_mut() = tokio_tungstenite::tungstenite::http::StatusCode::BAD_REQUEST;
        return Err(refusal);
    }
    resp.headers_mut()
        .insert("Sec-WebSocket-Protocol", HeaderValue::from_static("mqtt"));
    Ok(resp)
}

/// Binary WebSocket messages carry the MQTT byte stream (not necessarily one packet per
/// message); they are pumped through an in-memory pipe so the proxy sees a plain stream.
async fn websocket(
    ws: tokio_tungstenite::WebSocketStream<TcpStream>,
    origin: Origin,
    shared: Arc<Shared>,
) {
    let (proxy_side, pump_side) = tokio::io::duplex(64 * 1024);
    let (mut from_pipe, mut to_pipe) = tokio::io::split(pump_side);
    let (mut ws_tx, mut ws_rx) = ws.split();
    let inbound = async move {
        while let Some(Ok(msg)) = ws_rx.next().await {
            match msg {
                Message::Binary(b) if to_pipe.write_all(&b).await.is_err() => break,
                Message::Close(_) | Message::Text(_) => break,
                _ => {}
            }
        }
    };
    let outbound = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match from_pipe.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if ws_tx
                        .send(Message::Binary(buf[..n].to_vec().into()))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
        let _ = ws_tx.close().await;
    };
    let pump = async move {
        tokio::select! {
            () = inbound => {}
            () = outbound => {}
        }
    };
    tokio::join!(serve(proxy_side, origin, shared), pump);
}
