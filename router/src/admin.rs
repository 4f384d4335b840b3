//! Admin HTTP: health, readiness, Prometheus metrics, JSON status and operator actions.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::Json;
use hearth_storage::{DeviceKey, DeviceStats, Role};
use serde_json::{json, Value};

use crate::metrics::{rss_bytes, Metrics};
use crate::Shared;

type S = State<Arc<Shared>>;

/// Serve the admin API until shutdown.
pub(crate) async fn serve(listener: tokio::net::TcpListener, shared: Arc<Shared>) {
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
        .with_state(shared);
    let stop = async move {
        let _ = shutdown.changed().await;
    };
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(stop)
        .await
    {
        tracing::error!(error = %e, "admin server failed");
    }
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

async fn readyz(State(s): S) -> Response {
    if !s.ready.load(Ordering::SeqCst) {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response()
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
