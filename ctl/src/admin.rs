//! Commands that talk to a node's admin HTTP API.

use std::io::Write;
use std::time::Duration;

use anyhow::{anyhow, bail};
use serde_json::Value;

use crate::render;

/// `GET /v1/status`, rendered.
pub fn status(admin: &str, json: bool, out: &mut dyn Write) -> anyhow::Result<()> {
    let v = Admin::new(admin)?.call("GET", "/v1/status", "status")?;
    emit(&v, json, out, render::render_status)
}

/// `GET /v1/queues/{account}[/{device}]`, rendered.
pub fn queue_stats(
    admin: &str,
    account: u64,
    device: Option<u32>,
    json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let (path, subject) = match device {
        Some(d) => (
            format!("/v1/queues/{account}/{d}"),
            format!("device {d} of account {account}"),
        ),
        None => (
            format!("/v1/queues/{account}"),
            format!("account {account}"),
        ),
    };
    let v = Admin::new(admin)?.call("GET", &path, &subject)?;
    if !json && v.as_array().is_some_and(|a| a.is_empty()) {
        writeln!(out, "account {account} has no registered devices")?;
        return Ok(());
    }
    emit(&v, json, out, render::render_queue_stats)
}

/// `DELETE /v1/devices/{account}/{device}`: unregister the device, delete its queue and close
/// its connection; rendered.
pub fn device_remove(
    admin: &str,
    account: u64,
    device: u32,
    json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let path = format!("/v1/devices/{account}/{device}");
    let v = Admin::new(admin)?.call(
        "DELETE",
        &path,
        &format!("device {device} of account {account}"),
    )?;
    emit(&v, json, out, render::render_device_removed)
}

fn emit(
    v: &Value,
    json: bool,
    out: &mut dyn Write,
    table: fn(&Value, &mut dyn Write) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    if json {
        serde_json::to_writer_pretty(&mut *out, v)?;
        writeln!(out)?;
        Ok(())
    } else {
        table(v, out)
    }
}

/// A blocking client for one node's admin API.
struct Admin {
    base: String,
    agent: ureq::Agent,
}

impl Admin {
    fn new(base: &str) -> anyhow::Result<Admin> {
        let base = base.trim().trim_end_matches('/');
        if !base.starts_with("http://") {
            bail!(
                "admin URL {base:?} must start with http:// (the admin API is plain HTTP; keep it \
                 on loopback or a private network)"
            );
        }
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(5))
            .timeout(Duration::from_secs(60))
            .build();
        Ok(Admin {
            base: base.to_owned(),
            agent,
        })
    }

    /// `method path`, answered with JSON. A 404 becomes "`subject`: the node's message".
    fn call(&self, method: &str, path: &str, subject: &str) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        match self.agent.request(method, &url).call() {
            Ok(resp) => {
                let body = resp
                    .into_string()
                    .map_err(|e| self.unreachable(&e.to_string()))?;
                serde_json::from_str(&body).map_err(|e| {
                    anyhow!(
                        "unexpected answer from node admin at {} ({path}): {e}",
                        self.base
                    )
                })
            }
            Err(ureq::Error::Status(code, resp)) => {
                let body = resp.into_string().unwrap_or_default();
                let message = serde_json::from_str::<Value>(&body)
                    .ok()
                    .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_owned))
                    .unwrap_or_else(|| body.trim().to_owned());
                match code {
                    404 if !message.is_empty() => Err(anyhow!("{subject}: {message}")),
                    _ if message.is_empty() => {
                        Err(anyhow!("node admin at {} answered HTTP {code}", self.base))
                    }
                    _ => Err(anyhow!(
                        "node admin at {} answered HTTP {code}: {message}",
                        self.base
                    )),
                }
            }
            Err(ureq::Error::Transport(t)) => {
                let mut detail = t.kind().to_string();
                if let Some(m) = t.message() {
                    detail = format!("{detail}: {m}");
                }
                if let Some(src) = std::error::Error::source(&t) {
                    detail = format!("{detail}: {src}");
                }
                Err(self.unreachable(&detail))
            }
        }
    }

    fn unreachable(&self, detail: &str) -> anyhow::Error {
        anyhow!("cannot reach node admin at {}: {detail}", self.base)
    }
}
