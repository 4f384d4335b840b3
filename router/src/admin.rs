//! Admin HTTP(S): health, readiness, Prometheus metrics, JSON status and operator actions.
//!
//! Every request carries `Authorization: Bearer <token>` (the node's admin token, compared in
//! constant time), except `/healthz`, `/readyz`, `/metrics` and `/v1/status` while
//! `admin_open_metrics` is on: those name no account, device or group.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::Json;
use hearth_storage::{DeviceKey, DeviceStats, Role};
use serde_json::{json, Value};

use crate::metrics::{rss_bytes, Metrics};
use crate::Shared;

type S = State<Arc<Shared>>;

/// Who may use the admin API.
pub(crate) struct AdminAuth {
    /// The bearer token.
    pub token: String,
    /// Health, readiness, metrics and status need no token.
    pub open_metrics: bool,
}

/// Paths that name no account, device or group and change nothing.
const AGGREGATE_PATHS: [&str; 4] = ["/healthz", "/readyz", "/metrics", "/v1/status"];

/// Refuse a request without the right bearer token (401, nothing done).
async fn authorize(State(s): S, req: Request, next: Next) -> Response {
    let auth = &s.admin;
    if auth.open_metrics && AGGREGATE_PATHS.contains(&req.uri().path()) {
        return next.run(req).await;
    }
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let refusal = match presented {
        None => {
            "missing admin token: send `Authorization: Bearer <token>` (hearthctl: \
                 --token-file FILE or HEARTH_ADMIN_TOKEN; the node's token is in \
                 admin_token_file, default data_dir/admin.token)"
        }
        Some(t) if token_matches(t, &auth.token) => return next.run(req).await,
        Some(_) => "wrong admin token",
    };
    let mut resp = error(StatusCode::UNAUTHORIZED, refusal);
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer"),
    );
    resp
}

/// Constant-time comparison (of SHA-256 digests, so that the length leaks nothing either).
fn token_matches(presented: &str, token: &str) -> bool {
    use subtle::ConstantTimeEq;
    let a = ring::digest::digest(&ring::digest::SHA256, presented.as_bytes());
    let b = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    a.as_ref().ct_eq(b.as_ref()).into()
}

/// Serve the admin API until shutdown, over TLS when `tls` is given.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    let mut shutdown = shared.shutdown.subscribe();
    let app = axum::Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/status", get(status))
        .route("/v1/queues/{account}", get(account_queues))
        .route("/v1/queues/{account}/{device}", get(device_queue))
        .route("/v1/devices/{account}/{device}", delete(remove_device))
        .route("/v1/accounts/{account}", delete(purge_account))
        .route("/v1/abuse", get(abuse))
        .route("/v1/groups/{group}", get(group_show))
        .route("/v1/groups/{group}/members", get(group_members))
        .layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            authorize,
        ))
        .with_state(shared.clone());
    let stop = async move {
        crate::stopped(&mut shutdown).await;
    };
    let result = match tls {
        None => {
            axum::serve(listener, app)
                .with_graceful_shutdown(stop)
                .await
        }
        Some(acceptor) => {
            let tls_listener = TlsListener::spawn(listener, acceptor, shared.shutdown.subscribe());
            axum::serve(tls_listener, app)
                .with_graceful_shutdown(stop)
                .await
        }
    };
    if let Err(e) = result {
        tracing::error!(error = %e, "admin server failed");
    }
}

/// TLS handshakes of the admin port run on their own tasks (a slow client holds up no one);
/// finished streams are handed to axum.
struct TlsListener {
    local: SocketAddr,
    ready: tokio::sync::mpsc::Receiver<(
        tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
        SocketAddr,
    )>,
}

impl TlsListener {
    fn spawn(
        listener: tokio::net::TcpListener,
        acceptor: tokio_rustls::TlsAcceptor,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> TlsListener {
        let local = listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let (tx, ready) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let (tcp, peer) = tokio::select! {
                    r = listener.accept() => match r {
                        Ok(c) => c,
                        Err(e) => {
                            tracing::warn!(error = %e, "admin accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                    _ = crate::stopped(&mut shutdown) => return,
                };
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await
                    {
                        Ok(Ok(stream)) => {
                            let _ = tx.send((stream, peer)).await;
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "admin TLS handshake failed")
                        }
                        Err(_) => tracing::debug!(%peer, "admin TLS handshake timed out"),
                    }
                });
            }
        });
        TlsListener { local, ready }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(c) => c,
            // The accept task stopped (shutdown): nothing more will come.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local)
    }
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

async fn readyz(State(s): S) -> Response {
    if !s.ready.load(Ordering::SeqCst) {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response()
    } else if !s.serving.load(Ordering::SeqCst) {
        let why = "not serving: no current cluster map under a live lease";
        (StatusCode::SERVICE_UNAVAILABLE, why).into_response()
    } else if s.driver.poisoned() {
        let why = "a storage write failed: the node stores nothing more; restart it";
        (StatusCode::SERVICE_UNAVAILABLE, why).into_response()
    } else {
        "ready".into_response()
    }
}

async fn status(State(s): S) -> Json<Value> {
    let m = &s.driver.metrics();
    let st = s.driver.store().stats();
    let p = s.driver.pusher().stats();
    Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_secs": s.started.elapsed().as_secs(),
        "quic_addr": s.quic_addr.to_string(),
        "durability": s.durability,
        "connections": Metrics::get(&m.connections),
        "devices_registered": st.devices,
        "envelopes": {
            "accepted": Metrics::get(&m.accepted),
            "delivered": Metrics::get(&m.delivered),
            "ephemeral_delivered": Metrics::get(&m.ephemeral_delivered),
            "acked": Metrics::get(&m.acked),
            "expired": Metrics::get(&m.expired),
            "refused": Metrics::get(&m.refused),
            "duplicates": Metrics::get(&m.duplicates),
        },
        "queue": { "envelopes": st.queued, "bytes": st.queued_bytes },
        "fsync": {
            "commits": st.commits,
            "p50_us": st.fsync_p50_us,
            "p99_us": st.fsync_p99_us,
            "max_us": st.fsync_max_us,
        },
        "rss_bytes": rss_bytes(),
        "quic": {
            "handshakes": Metrics::get(&s.front.handshakes),
            "retries": Metrics::get(&s.front.retries),
            "tls_resumed": Metrics::get(&s.front.resumed),
        },
        "rate_limited": s.driver.safety().refusals().into_iter()
            .map(|(l, n)| (l.as_str().to_string(), json!(n)))
            .collect::<serde_json::Map<_, _>>(),
        "push": {
            "wakeups": p.wakeups,
            "suppressed": p.suppressed,
            "dropped": p.dropped,
            "requests": p.requests,
            "failures": p.failures,
        },
    }))
}

async fn metrics(State(s): S) -> Response {
    let m = &s.driver.metrics();
    let st = s.driver.store().stats();
    let mut out = String::with_capacity(2048);
    let mut put = |name: &str, kind: &str, help: &str, value: String| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    };
    let c = |a: &std::sync::atomic::AtomicU64| Metrics::get(a).to_string();
    put(
        "hearth_connections",
        "gauge",
        "Open device connections.",
        c(&m.connections),
    );
    put(
        "hearth_connections_total",
        "counter",
        "Connections accepted.",
        c(&m.connections_total),
    );
    put(
        "hearth_devices_registered",
        "gauge",
        "Registered devices.",
        st.devices.to_string(),
    );
    put(
        "hearth_envelopes_accepted_total",
        "counter",
        "SENDs answered ACCEPTED.",
        c(&m.accepted),
    );
    put(
        "hearth_envelopes_stored_total",
        "counter",
        "Envelopes written to device queues.",
        c(&m.stored),
    );
    put(
        "hearth_envelopes_delivered_total",
        "counter",
        "Stored envelopes pushed to devices.",
        c(&m.delivered),
    );
    put(
        "hearth_envelopes_ephemeral_delivered_total",
        "counter",
        "Ephemeral envelopes pushed to devices.",
        c(&m.ephemeral_delivered),
    );
    put(
        "hearth_envelopes_acked_total",
        "counter",
        "Queue entries acknowledged.",
        c(&m.acked),
    );
    put(
        "hearth_envelopes_expired_total",
        "counter",
        "Queue entries removed at expiry.",
        c(&m.expired),
    );
    put(
        "hearth_sends_refused_total",
        "counter",
        "SENDs answered with an ERROR.",
        c(&m.refused),
    );
    put(
        "hearth_sends_duplicate_total",
        "counter",
        "Retried SENDs answered from dedup.",
        c(&m.duplicates),
    );
    put(
        "hearth_queue_envelopes",
        "gauge",
        "Envelopes in device queues.",
        st.queued.to_string(),
    );
    put(
        "hearth_queue_bytes",
        "gauge",
        "Bytes in device queues.",
        st.queued_bytes.to_string(),
    );
    put(
        "hearth_pending_bytes",
        "gauge",
        "Bytes awaiting fsync.",
        c(&m.pending_bytes),
    );
    put(
        "hearth_fsync_total",
        "counter",
        "Group commits written.",
        st.commits.to_string(),
    );
    put(
        "hearth_resident_memory_bytes",
        "gauge",
        "Resident set size.",
        rss_bytes().to_string(),
    );
    let f = &s.front;
    put(
        "hearth_quic_handshakes_total",
        "counter",
        "New QUIC handshakes seen (one sent a Retry counts again when it comes back).",
        c(&f.handshakes),
    );
    put(
        "hearth_quic_retries_total",
        "counter",
        "Handshakes sent a Retry to validate the client's address (handshake flood).",
        c(&f.retries),
    );
    put(
        "hearth_tls_resumed_total",
        "counter",
        "Handshakes resumed from a TLS session ticket.",
        c(&f.resumed),
    );
    let p = s.driver.pusher().stats();
    put(
        "hearth_push_wakeups_total",
        "counter",
        "Wake-ups queued.",
        p.wakeups.to_string(),
    );
    put(
        "hearth_push_suppressed_total",
        "counter",
        "Non-urgent wake-ups skipped within the interval.",
        p.suppressed.to_string(),
    );
    put(
        "hearth_push_dropped_total",
        "counter",
        "Wake-ups dropped (queue full).",
        p.dropped.to_string(),
    );
    put(
        "hearth_push_requests_total",
        "counter",
        "Webhook requests answered 2xx.",
        p.requests.to_string(),
    );
    put(
        "hearth_push_failures_total",
        "counter",
        "Webhook requests that failed.",
        p.failures.to_string(),
    );
    let _ = writeln!(
        out,
        "# HELP hearth_rate_limited_total Requests refused by a rate limit.\n\
         # TYPE hearth_rate_limited_total counter"
    );
    for (limit, n) in s.driver.safety().refusals() {
        let _ = writeln!(
            out,
            "hearth_rate_limited_total{{limit=\"{}\"}} {n}",
            limit.as_str()
        );
    }
    let _ = writeln!(
        out,
        "# HELP hearth_fsync_seconds Group-commit write+fsync latency.\n\
         # TYPE hearth_fsync_seconds summary\n\
         hearth_fsync_seconds{{quantile=\"0.5\"}} {}\n\
         hearth_fsync_seconds{{quantile=\"0.99\"}} {}\n\
         hearth_fsync_seconds{{quantile=\"1\"}} {}\n\
         hearth_fsync_seconds_count {}",
        st.fsync_p50_us as f64 / 1e6,
        st.fsync_p99_us as f64 / 1e6,
        st.fsync_max_us as f64 / 1e6,
        st.commits,
    );
    ([("content-type", "text/plain; version=0.0.4")], out).into_response()
}

fn device_json(s: &Shared, d: &DeviceStats) -> Value {
    json!({
        "account": d.key.account,
        "device": d.key.device,
        "slot": d.slot,
        "queued": d.queued,
        "bytes": d.bytes,
        "next_seq": d.next_seq,
        "registered_at_ms": d.registered_at_ms,
        "online": s.driver.with(|c| c.is_online(d.key)),
    })
}

async fn account_queues(State(s): S, Path(account): Path<u64>) -> Response {
    match s.driver.store().account_stats(account) {
        Ok(list) => {
            Json(list.iter().map(|d| device_json(&s, d)).collect::<Vec<_>>()).into_response()
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn device_queue(State(s): S, Path((account, device)): Path<(u64, u32)>) -> Response {
    match s.driver.store().device_stats(DeviceKey { account, device }) {
        Ok(Some(d)) => Json(device_json(&s, &d)).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, "no such device"),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// Paging of `GET /v1/groups/{group}/members`.
#[derive(serde::Deserialize)]
struct Page {
    #[serde(default)]
    offset: u32,
    #[serde(default = "default_page")]
    limit: u32,
}

fn default_page() -> u32 {
    100
}

async fn group_show(State(s): S, Path(group): Path<u64>) -> Response {
    match s.driver.store().group_info(group, 0, 0) {
        Ok(Some((st, _))) => Json(json!({
            "group": st.group,
            "creator": st.creator,
            "version": st.version,
            "members": st.members,
        }))
        .into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, "no such group"),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn group_members(
    State(s): S,
    Path(group): Path<u64>,
    axum::extract::Query(p): axum::extract::Query<Page>,
) -> Response {
    match s
        .driver
        .store()
        .group_info(group, p.offset, p.limit.min(10_000))
    {
        Ok(Some((st, page))) => Json(json!({
            "group": st.group,
            "total": st.members,
            "offset": p.offset,
            "members": page.iter().map(|(account, role)| json!({
                "account": account,
                "role": match role { Role::Admin => "admin", Role::Member => "member" },
            })).collect::<Vec<_>>(),
        }))
        .into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, "no such group"),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn abuse(State(s): S) -> Json<Value> {
    let flagged = s.driver.safety().flagged(crate::now_ms());
    Json(json!({
        "flagged": flagged.iter().map(|f| json!({
            "account": f.account,
            "reasons": f.reasons,
            "new_recipients": f.new_recipients,
            "blocks": f.blocks,
            "reports": f.reports,
            "fanout": f.fanout,
            "since_ms": f.since_ms,
        })).collect::<Vec<_>>(),
    }))
}

async fn purge_account(State(s): S, Path(account): Path<u64>) -> Response {
    for device in s.driver.store().devices(account).unwrap_or_default() {
        let key = DeviceKey { account, device };
        s.driver.with(|c| c.device_removed(key));
    }
    s.driver.with(|c| c.account_purged(account));
    match s.driver.store().purge_account(account).await {
        Ok(r) => Json(json!({
            "account": account,
            "devices": r.devices,
            "envelopes": r.envelopes,
            "groups_left": r.groups_left,
            "groups_deleted": r.groups_deleted,
            "list_entries": r.list_entries,
            "dedup_records": r.dedup_records,
            "push_tokens": r.push_tokens,
            "account_record": r.account_record,
        }))
        .into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn remove_device(State(s): S, Path((account, device)): Path<(u64, u32)>) -> Response {
    let key = DeviceKey { account, device };
    match s.driver.store().remove_device(key).await {
        Ok(Some(d)) => {
            s.driver.with(|c| c.device_removed(key));
            Json(json!({
                "account": account,
                "device": device,
                "removed": true,
                "envelopes": d.queued,
                "bytes": d.bytes,
            }))
            .into_response()
        }
        Ok(None) => error(StatusCode::NOT_FOUND, "no such device"),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}
