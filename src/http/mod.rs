//! The opt-in HTTP listener (`[http]`): `/metrics` (Prometheus text format), `/` (a live
//! status page: one inline HTML file, updated by server-sent events on `/events`),
//! `/status.json` (the page's model) and `/healthz` (200, or 503 with the reasons).
//!
//! This file owns the I/O (axum on the gateway's tokio runtime); what is shown is pure
//! (`model`: snapshot, page model, health verdict; `metrics`: the exposition). Every response
//! is made from one `Snapshot` of the counters the loops already keep (`ops::stats::Sources`);
//! nothing here counts anything itself. Off the loopback interface every path asks for one of
//! the broker's users (`auth`).

pub mod auth;
pub mod metrics;
pub mod model;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio_util::sync::CancellationToken;

use crate::config::model::Http;
use crate::ops::stats::Sources;
use auth::Users;
use model::Snapshot;

/// The status page: no build step, no external assets (the board may have no Internet).
const PAGE: &str = include_str!("status.html");

/// How often an open status page gets a new model.
const UPDATE_EVERY: Duration = Duration::from_secs(1);

/// How far past its promise a loop must be to count as stalled (the stats topic's slack).
const STALL_SLACK: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot listen for HTTP on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

#[derive(Clone)]
struct Shared {
    sources: Sources,
    gateway: Arc<str>,
    /// `None` on loopback: no login asked.
    users: Option<Arc<Users>>,
    stop: CancellationToken,
}

/// Binds `cfg.listen` (an error here stops the start, like the broker's) and serves until
/// `stop` is cancelled. `users` are (name, hash) pairs, asked for off the loopback interface.
pub async fn start(
    cfg: &Http,
    users: Vec<(String, String)>,
    sources: Sources,
    gateway: Arc<str>,
    stop: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, HttpError> {
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| HttpError::Bind {
            addr: cfg.listen,
            source,
        })?;
    let shared = Shared {
        sources,
        gateway,
        users: (!cfg.listen.ip().is_loopback()).then(|| Users::new(users)),
        stop: stop.clone(),
    };
    let app = Router::new()
        .route("/", get(page))
        .route("/events", get(events))
        .route("/status.json", get(status_json))
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(healthz))
        .layer(middleware::from_fn_with_state(shared.clone(), login))
        .with_state(shared);
    tracing::info!(listen = %cfg.listen, "HTTP listener: status page, /metrics, /healthz");
    Ok(tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::error!(event = "http_failed", error = %e, "HTTP listener stopped");
        }
    }))
}

async fn snapshot(s: &Shared) -> Snapshot {
    Snapshot {
        gateway: s.gateway.to_string(),
        stats: s.sources.collect(STALL_SLACK).await,
        devices: s.sources.board.view(),
        polls: s
            .sources
            .polls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(d, p)| (d.to_string(), p.snapshot()))
            .collect(),
        commands: s.sources.commands.snapshot(),
    }
}

async fn login(State(s): State<Shared>, req: Request, next: Next) -> Response {
    if let Some(users) = &s.users {
        let header = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        if !users.check(header).await {
            return (
                StatusCode::UNAUTHORIZED,
                [(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Basic realm=\"fieldbridge\", charset=\"UTF-8\""),
                )],
                "log in with a user of the embedded broker\n",
            )
                .into_response();
        }
    }
    next.run(req).await
}

async fn page() -> Html<&'static str> {
    Html(PAGE)
}

async fn status_json(State(s): State<Shared>) -> Response {
    let body = model::page(&snapshot(&s).await).to_string();
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn metrics_text(State(s): State<Shared>) -> Response {
    match metrics::render(snapshot(&s).await) {
        Ok(text) => ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text).into_response(),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "cannot encode metrics\n").into_response(),
    }
}

async fn healthz(State(s): State<Shared>) -> Response {
    match model::health(&snapshot(&s).await) {
        Ok(()) => (StatusCode::OK, "ok\n".to_string()).into_response(),
        Err(reasons) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{}\n", reasons.join("\n")),
        )
            .into_response(),
    }
}

/// The page's model at once, then every `UPDATE_EVERY`, until the client goes or the gateway
/// stops (an open stream would otherwise hold up the graceful shutdown).
async fn events(State(s): State<Shared>) -> impl IntoResponse {
    let stream = futures_util::stream::unfold((s, true), |(s, first)| async move {
        if !first {
            tokio::select! {
                _ = s.stop.cancelled() => return None,
                _ = tokio::time::sleep(UPDATE_EVERY) => {}
            }
        }
        if s.stop.is_cancelled() {
            return None;
        }
        let data = model::page(&snapshot(&s).await).to_string();
        Some((Ok::<_, Infallible>(Event::default().data(data)), (s, false)))
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}
