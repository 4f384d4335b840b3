//! Commands that talk to a node's admin HTTP(S) API, with its bearer token.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail};
use serde_json::Value;

use crate::render;

/// Where a node's admin API is and how to authenticate to it.
#[derive(Debug, Clone, Default)]
pub struct AdminTarget {
    /// Base URL, `http://` or `https://`.
    pub url: String,
    /// The admin bearer token (`None`: requests carry none, and the node answers 401 where one
    /// is needed).
    pub token: Option<String>,
    /// PEM of the CA to trust for `https://` (default: the Mozilla roots built in).
    pub ca_file: Option<PathBuf>,
}

impl AdminTarget {
    /// A target without token or CA.
    pub fn new(url: impl Into<String>) -> AdminTarget {
        AdminTarget {
            url: url.into(),
            ..AdminTarget::default()
        }
    }

    /// The same target, authenticating with `token`.
    pub fn with_token(mut self, token: impl Into<String>) -> AdminTarget {
        self.token = Some(token.into());
        self
    }
}

/// The admin token in a file: its text, trimmed (the node writes it with a newline).
pub fn read_token_file(path: &std::path::Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow!("reading admin token file {}: {e}", path.display()))?;
    let token = text.trim();
    if token.is_empty() {
        bail!("admin token file {} is empty", path.display());
    }
    Ok(token.to_owned())
}

/// `GET /v1/status`, rendered.
pub fn status(admin: &AdminTarget, json: bool, out: &mut dyn Write) -> anyhow::Result<()> {
    let v = Admin::new(admin)?.call("GET", "/v1/status", "status")?;
    emit(&v, json, out, render::render_status)
}

/// `GET /v1/queues/{account}[/{device}]`, rendered.
pub fn queue_stats(
    admin: &AdminTarget,
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
    admin: &AdminTarget,
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

/// `GET /v1/abuse`: the accounts the node flagged, most severe first (the node's order), at
/// most `limit` of them; rendered as a table.
pub fn abuse_top(
    admin: &AdminTarget,
    limit: Option<u64>,
    json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let mut v = Admin::new(admin)?.call("GET", "/v1/abuse", "abuse signals")?;
    let Some(flagged) = v.get_mut("flagged").and_then(Value::as_array_mut) else {
        bail!("unexpected abuse report from the node: no \"flagged\" list");
    };
    let total = flagged.len();
    if let Some(limit) = limit {
        flagged.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    }
    let shown = flagged.len();
    emit(&v, json, out, render::render_abuse_top)?;
    if !json && shown < total {
        writeln!(
            out,
            "showing {shown} of {total} flagged accounts (raise --limit to see more)"
        )?;
    }
    Ok(())
}

/// `DELETE /v1/accounts/{account}`: erase everything the node holds about the account and
/// print what was removed. Refuses unless `confirmed` (`--yes`): an erasure cannot be undone.
pub fn account_purge(
    admin: &AdminTarget,
    account: u64,
    confirmed: bool,
    json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    if !confirmed {
        bail!(
            "account purge erases everything the node holds about account {account} (devices \
             and their queued envelopes, settings, allow and block lists, push tokens, group \
             memberships, abuse counters) and cannot be undone; run it again with --yes to \
             confirm"
        );
    }
    let admin = Admin::new(admin)?;
    let path = format!("/v1/accounts/{account}");
    let v = admin.call("DELETE", &path, &format!("account {account}"))?;
    emit(&v, json, out, render::render_account_purged)
}

/// `GET /v1/groups/{group}`: the group's creator, membership version and member count;
/// rendered as labelled lines.
pub fn group_show(
    admin: &AdminTarget,
    group: u64,
    json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let path = format!("/v1/groups/{group}");
    let v = Admin::new(admin)?.call("GET", &path, &format!("group {group}"))?;
    emit(&v, json, out, render::render_group_show)
}

/// `GET /v1/groups/{group}/members?offset=O&limit=L`: one page of the group's members (account
/// order) with their roles; rendered as a table and a "showing a–b of total" line.
pub fn group_members(
    admin: &AdminTarget,
    group: u64,
    offset: u32,
    limit: u32,
    json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let path = format!("/v1/groups/{group}/members?offset={offset}&limit={limit}");
    let v = Admin::new(admin)?.call("GET", &path, &format!("group {group}"))?;
    emit(&v, json, out, render::render_group_members)
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
    token: Option<String>,
    agent: ureq::Agent,
}

impl Admin {
    fn new(target: &AdminTarget) -> anyhow::Result<Admin> {
        let base = target.url.trim().trim_end_matches('/');
        let https = base.starts_with("https://");
        if !https && !base.starts_with("http://") {
            bail!("admin URL {base:?} must start with http:// or https://");
        }
        let mut agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(5))
            .timeout(Duration::from_secs(60));
        if https {
            agent = agent.tls_config(tls_config(target.ca_file.as_deref())?);
        } else if target.ca_file.is_some() {
            bail!("--admin-ca is for an https:// admin URL; {base} is plain HTTP");
        }
        Ok(Admin {
            base: base.to_owned(),
            token: target.token.clone(),
            agent: agent.build(),
        })
    }

    /// `method path`, answered with JSON. A 404 becomes "`subject`: the node's message".
    fn call(&self, method: &str, path: &str, subject: &str) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        let mut request = self.agent.request(method, &url);
        if let Some(t) = &self.token {
            request = request.set("Authorization", &format!("Bearer {t}"));
        }
        match request.call() {
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
                    401 if self.token.is_none() => Err(anyhow!(
                        "node admin at {} needs its admin token: pass --token-file FILE (the \
                         node's admin_token_file, default <data_dir>/admin.token) or set \
                         HEARTH_ADMIN_TOKEN",
                        self.base
                    )),
                    401 => Err(anyhow!(
                        "node admin at {} refused the admin token ({message}): check \
                         --token-file / HEARTH_ADMIN_TOKEN against the node's admin_token_file",
                        self.base
                    )),
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

/// TLS for an `https://` admin URL: trust `ca_file`, or the Mozilla roots built in.
fn tls_config(ca_file: Option<&std::path::Path>) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let pem = std::fs::read(path)
                .map_err(|e| anyhow!("reading --admin-ca {}: {e}", path.display()))?;
            for cert in rustls_pemfile::certs(&mut &pem[..]) {
                let cert = cert.map_err(|e| anyhow!("parsing {}: {e}", path.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| anyhow!("a certificate in {}: {e}", path.display()))?;
            }
            if roots.is_empty() {
                bail!("no certificate in --admin-ca {}", path.display());
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(tls))
}
