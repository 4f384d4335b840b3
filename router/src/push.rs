//! Push wake-ups (issue 5): content-free webhook calls for offline devices.
//!
//! [`Pusher::wake`] queues a device's push token and an urgency flag; a batcher task POSTs them to
//! the configured webhook as `{"wakeups":[{"token":"<base64>","urgent":true}, ...]}`. The body
//! carries nothing else: no sender, no content, no account or device ids. Wake-ups are best effort
//! (the envelope itself is durable): a full queue or a failing webhook only bumps counters, and
//! tokens are never logged.

use std::collections::HashMap;
use std::mem;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{bail, ensure};
use base64::Engine as _;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// Push wake-up settings (`[push]` in the node configuration).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PushConfig {
    /// Webhook receiving wake-ups, `https://` (`http://` only with `allow_http`).
    /// Absent: push is disabled and wake-ups are ignored.
    pub webhook_url: Option<String>,
    /// Accept an `http://` webhook (wake-ups then cross the network in the clear): for a relay
    /// on loopback or a private network.
    pub allow_http: bool,
    /// PEM file of the CA certificate(s) that `https://` webhooks must chain to; absent: the
    /// Mozilla root set compiled into the node (webpki-roots).
    pub ca_file: Option<std::path::PathBuf>,
    /// Longest wait, in milliseconds, between a batch's first wake-up and its POST.
    pub batch_interval_ms: u64,
    /// Most wake-ups in one POST; a full batch is sent at once.
    pub max_batch: usize,
    /// A token woken within this many seconds gets no further non-urgent wake-up (0: no limit).
    pub min_interval_secs: u64,
    /// Wake-ups waiting for the batcher; more are dropped and counted.
    pub queue_capacity: usize,
    /// Timeout of one webhook request, in milliseconds.
    pub timeout_ms: u64,
}

impl Default for PushConfig {
    fn default() -> PushConfig {
        PushConfig {
            webhook_url: None,
            allow_http: false,
            ca_file: None,
            batch_interval_ms: 500,
            max_batch: 500,
            min_interval_secs: 60,
            queue_capacity: 10_000,
            timeout_ms: 5_000,
        }
    }
}

impl PushConfig {
    /// Check the settings; `http://` webhooks are refused unless `allow_http`.
    pub fn validate(&self) -> anyhow::Result<()> {
        if let Some(url) = &self.webhook_url {
            check_webhook_url(url, self.allow_http)?;
        }
        ensure!(self.max_batch >= 1, "push.max_batch must be >= 1");
        ensure!(self.queue_capacity >= 1, "push.queue_capacity must be >= 1");
        ensure!(self.timeout_ms >= 1, "push.timeout_ms must be >= 1");
        Ok(())
    }
}

fn check_webhook_url(url: &str, allow_http: bool) -> anyhow::Result<()> {
    let lower = url.to_ascii_lowercase();
    let rest = if let Some(rest) = lower.strip_prefix("https://") {
        rest
    } else if let Some(rest) = lower.strip_prefix("http://") {
        ensure!(
            allow_http,
            "push.webhook_url is http://: wake-ups would cross the network in the clear; use \
             https://, or set push.allow_http = true for a relay on loopback or a private network"
        );
        rest
    } else {
        bail!("push.webhook_url must start with https:// (or http:// with push.allow_http)");
    };
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    ensure!(!host.is_empty(), "push.webhook_url has no host");
    ensure!(
        !url.chars().any(char::is_whitespace),
        "push.webhook_url contains whitespace"
    );
    Ok(())
}

/// Counters of a [`Pusher`], all monotonic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct PushStats {
    /// Wake-ups accepted into the queue.
    pub wakeups: u64,
    /// Non-urgent wake-ups skipped because the token was woken within `min_interval_secs`.
    pub suppressed: u64,
    /// Wake-ups dropped because the queue was full or the pusher was shut down.
    pub dropped: u64,
    /// Wake-ups merged into an entry for the same token already in the batch.
    pub coalesced: u64,
    /// Webhook requests answered with a 2xx status.
    pub requests: u64,
    /// Wake-ups carried by those requests.
    pub sent: u64,
    /// Webhook requests that failed (error status, timeout, unreachable).
    pub failures: u64,
}

#[derive(Default)]
struct Counters {
    wakeups: AtomicU64,
    suppressed: AtomicU64,
    dropped: AtomicU64,
    coalesced: AtomicU64,
    requests: AtomicU64,
    sent: AtomicU64,
    failures: AtomicU64,
}

enum Msg {
    Wake(Bytes, bool),
    Shutdown(oneshot::Sender<()>),
}

struct Inner {
    /// None when push is disabled.
    tx: Option<mpsc::Sender<Msg>>,
    suppressor: Mutex<Suppressor>,
    counters: Arc<Counters>,
}

/// Sends wake-ups to the webhook. Cheap to clone; every clone feeds the same batcher.
#[derive(Clone)]
pub(crate) struct Pusher {
    inner: Arc<Inner>,
}

impl Pusher {
    /// Validate `cfg` and start the batcher task (needs a tokio runtime). Without a
    /// `webhook_url` the pusher is disabled: no task, and [`Pusher::wake`] does nothing.
    pub(crate) fn spawn(cfg: PushConfig) -> anyhow::Result<Pusher> {
        cfg.validate()?;
        let counters = Arc::new(Counters::default());
        let suppressor = Mutex::new(Suppressor::new(
            Duration::from_secs(cfg.min_interval_secs),
            Instant::now(),
        ));
        let tls = match &cfg.webhook_url {
            Some(_) => Some(client_tls(cfg.ca_file.as_deref())?),
            None => None,
        };
        let tx = cfg.webhook_url.clone().zip(tls).map(|(url, tls)| {
            let (tx, rx) = mpsc::channel(cfg.queue_capacity);
            let agent = ureq::AgentBuilder::new()
                .timeout(Duration::from_millis(cfg.timeout_ms))
                .redirects(0)
                .user_agent("hearth-push")
                .tls_config(tls)
                .build();
            let batcher = Batcher {
                url,
                agent,
                interval: Duration::from_millis(cfg.batch_interval_ms),
                max_batch: cfg.max_batch,
                counters: counters.clone(),
                batch: Batch::default(),
            };
            tokio::spawn(batcher.run(rx));
            tx
        });
        Ok(Pusher {
            inner: Arc::new(Inner {
                tx,
                suppressor,
                counters,
            }),
        })
    }

    /// Queue a wake-up for an offline device's push token. Non-urgent ones are dropped if the
    /// same token was woken within `min_interval_secs`; urgent ones always go. Never blocks
    /// (bounded queue; overflow is counted and dropped: a wake-up is best effort).
    pub(crate) fn wake(&self, token: Bytes, urgent: bool) {
        let Some(tx) = &self.inner.tx else { return };
        let c = &self.inner.counters;
        let now = Instant::now();
        let mut s = self
            .inner
            .suppressor
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let stale = s.rotate(now);
        if !s.admit(&token, urgent, now) {
            c.suppressed.fetch_add(1, Relaxed);
        } else if tx.try_send(Msg::Wake(token.clone(), urgent)).is_ok() {
            s.record(token, now);
            c.wakeups.fetch_add(1, Relaxed);
        } else {
            c.dropped.fetch_add(1, Relaxed);
        }
        drop(s);
        drop(stale); // freed outside the lock
    }

    /// A snapshot of the counters.
    pub(crate) fn stats(&self) -> PushStats {
        let c = &self.inner.counters;
        PushStats {
            wakeups: c.wakeups.load(Relaxed),
            suppressed: c.suppressed.load(Relaxed),
            dropped: c.dropped.load(Relaxed),
            coalesced: c.coalesced.load(Relaxed),
            requests: c.requests.load(Relaxed),
            sent: c.sent.load(Relaxed),
            failures: c.failures.load(Relaxed),
        }
    }

    /// Stop the batcher after POSTing everything queued; later wake-ups (from other clones)
    /// are counted as dropped. Returns when the last request has finished.
    pub(crate) async fn shutdown(self) {
        let Some(tx) = &self.inner.tx else { return };
        let (done, finished) = oneshot::channel();
        if tx.send(Msg::Shutdown(done)).await.is_ok() {
            let _ = finished.await;
        }
    }
}

/// Per-token "last woken" times for the non-urgent rate limit, in two generations so expiry
/// costs nothing per call: every `min_interval` the older generation (all of whose entries are
/// then at least `min_interval` old) is discarded. Memory is bounded by the distinct tokens
/// woken within the last two intervals.
struct Suppressor {
    min_interval: Duration,
    current: HashMap<Bytes, Instant>,
    previous: HashMap<Bytes, Instant>,
    rotated_at: Instant,
}

impl Suppressor {
    fn new(min_interval: Duration, now: Instant) -> Suppressor {
        Suppressor {
            min_interval,
            current: HashMap::new(),
            previous: HashMap::new(),
            rotated_at: now,
        }
    }

    /// Start a new generation when one interval has passed; returns the discarded one.
    fn rotate(&mut self, now: Instant) -> Option<HashMap<Bytes, Instant>> {
        if now.saturating_duration_since(self.rotated_at) < self.min_interval {
            return None;
        }
        self.rotated_at = now;
        Some(mem::replace(
            &mut self.previous,
            mem::take(&mut self.current),
        ))
    }

    /// Whether a wake-up for `token` may go now.
    fn admit(&self, token: &Bytes, urgent: bool, now: Instant) -> bool {
        if urgent || self.min_interval.is_zero() {
            return true;
        }
        let last = self.current.get(token).or_else(|| self.previous.get(token));
        last.is_none_or(|t| now.saturating_duration_since(*t) >= self.min_interval)
    }

    /// Note that `token` was woken at `now`.
    fn record(&mut self, token: Bytes, now: Instant) {
        if !self.min_interval.is_zero() {
            self.current.insert(token, now);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.current.len() + self.previous.len()
    }
}

/// The wake-ups of the next request, one entry per token (urgent if any wake-up was).
#[derive(Default)]
struct Batch {
    entries: Vec<(Bytes, bool)>,
    index: HashMap<Bytes, usize>,
}

impl Batch {
    /// Add a wake-up; returns false when it was merged into an existing entry.
    fn push(&mut self, token: Bytes, urgent: bool) -> bool {
        if let Some(&i) = self.index.get(&token) {
            self.entries[i].1 |= urgent;
            return false;
        }
        self.index.insert(token.clone(), self.entries.len());
        self.entries.push((token, urgent));
        true
    }

    fn len(&self) -> usize {
        self.entries.len()
    }

    fn take(&mut self) -> Vec<(Bytes, bool)> {
        self.index.clear();
        mem::take(&mut self.entries)
    }
}

/// The webhook body: only tokens and urgency.
#[derive(Serialize)]
struct Body {
    wakeups: Vec<Entry>,
}

#[derive(Serialize)]
struct Entry {
    token: String,
    urgent: bool,
}

fn encode_body(entries: &[(Bytes, bool)]) -> Vec<u8> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let body = Body {
        wakeups: entries
            .iter()
            .map(|(token, urgent)| Entry {
                token: b64.encode(token),
                urgent: *urgent,
            })
            .collect(),
    };
    serde_json::to_vec(&body).expect("serializing strings and bools cannot fail")
}

struct Batcher {
    url: String,
    agent: ureq::Agent,
    interval: Duration,
    max_batch: usize,
    counters: Arc<Counters>,
    batch: Batch,
}

impl Batcher {
    async fn run(mut self, mut rx: mpsc::Receiver<Msg>) {
        let mut deadline = Instant::now();
        loop {
            let msg = if self.batch.len() == 0 {
                rx.recv().await
            } else {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(msg) => msg,
                    Err(_elapsed) => {
                        self.flush().await;
                        continue;
                    }
                }
            };
            match msg {
                Some(Msg::Wake(token, urgent)) => {
                    if self.batch.len() == 0 {
                        deadline = Instant::now() + self.interval;
                    }
                    self.add(token, urgent).await;
                }
                Some(Msg::Shutdown(done)) => {
                    let mut waiting = vec![done];
                    rx.close();
                    while let Some(msg) = rx.recv().await {
                        match msg {
                            Msg::Wake(token, urgent) => self.add(token, urgent).await,
                            Msg::Shutdown(done) => waiting.push(done),
                        }
                    }
                    self.flush().await;
                    for done in waiting {
                        let _ = done.send(());
                    }
                    return;
                }
                None => {
                    // Every Pusher was dropped without shutdown: still deliver what is queued.
                    self.flush().await;
                    return;
                }
            }
        }
    }

    async fn add(&mut self, token: Bytes, urgent: bool) {
        if !self.batch.push(token, urgent) {
            self.counters.coalesced.fetch_add(1, Relaxed);
        }
        if self.batch.len() >= self.max_batch {
            self.flush().await;
        }
    }

    /// POST the current batch (if any) and count the outcome.
    async fn flush(&mut self) {
        let entries = self.batch.take();
        if entries.is_empty() {
            return;
        }
        let n = entries.len() as u64;
        let body = encode_body(&entries);
        drop(entries);
        let (agent, url) = (self.agent.clone(), self.url.clone());
        let result = tokio::task::spawn_blocking(move || post(&agent, &url, &body)).await;
        let c = &self.counters;
        match result {
            Ok(Ok(())) => {
                c.requests.fetch_add(1, Relaxed);
                c.sent.fetch_add(n, Relaxed);
            }
            Ok(Err(reason)) => {
                c.failures.fetch_add(1, Relaxed);
                tracing::warn!(wakeups = n, %reason, "push webhook request failed");
            }
            Err(e) => {
                c.failures.fetch_add(1, Relaxed);
                tracing::error!(wakeups = n, error = %e, "push webhook task failed");
            }
        }
    }
}

/// The webhook client's TLS: roots from `ca_file`, or the compiled-in Mozilla set (no system
/// store to find, nothing fetched at build or run time).
fn client_tls(ca_file: Option<&std::path::Path>) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    use anyhow::Context;
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let pem = std::fs::read(path)
                .with_context(|| format!("reading push.ca_file {}", path.display()))?;
            for cert in rustls_pemfile::certs(&mut &pem[..]) {
                let cert = cert.with_context(|| format!("parsing {}", path.display()))?;
                roots
                    .add(cert)
                    .with_context(|| format!("a certificate in {}", path.display()))?;
            }
            ensure!(
                !roots.is_empty(),
                "no certificate in push.ca_file {}",
                path.display()
            );
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let tls = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(tls))
}

/// One blocking POST. The error says why without echoing the body (tokens) or the URL.
fn post(agent: &ureq::Agent, url: &str, body: &[u8]) -> Result<(), String> {
    let resp = match agent
        .post(url)
        .set("Content-Type", "application/json")
        .send_bytes(body)
    {
        Ok(resp) => resp,
        Err(ureq::Error::Status(code, _)) => return Err(format!("status {code}")),
        Err(ureq::Error::Transport(t)) => return Err(t.kind().to_string()),
    };
    let status = resp.status();
    // Read the (small) answer so the connection can be reused.
    let _ = std::io::copy(
        &mut std::io::Read::take(resp.into_reader(), 64 * 1024),
        &mut std::io::sink(),
    );
    if (200..300).contains(&status) {
        Ok(())
    } else {
        Err(format!("status {status}"))
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;

    use serde_json::Value;

    use super::*;

    /// One request as the test webhook saw it.
    struct Request {
        method: String,
        path: String,
        content_type: String,
        body: Vec<u8>,
    }

    impl Request {
        /// The wake-ups in the body, checking that it holds nothing but tokens and urgency.
        fn wakeups(&self) -> Vec<(Vec<u8>, bool)> {
            let v: Value = serde_json::from_slice(&self.body).expect("JSON body");
            let obj = v.as_object().expect("body is an object");
            assert_eq!(
                obj.keys().collect::<Vec<_>>(),
                ["wakeups"],
                "only `wakeups` at top level"
            );
            obj["wakeups"]
                .as_array()
                .expect("wakeups is an array")
                .iter()
                .map(|e| {
                    let e = e.as_object().expect("entry is an object");
                    let mut keys: Vec<_> = e.keys().map(String::as_str).collect();
                    keys.sort_unstable();
                    assert_eq!(
                        keys,
                        ["token", "urgent"],
                        "an entry has only token and urgent"
                    );
                    let token = base64::engine::general_purpose::STANDARD
                        .decode(e["token"].as_str().expect("token is a string"))
                        .expect("token is base64");
                    (token, e["urgent"].as_bool().expect("urgent is a bool"))
                })
                .collect()
        }
    }

    /// A minimal HTTP/1.1 webhook on 127.0.0.1: answers every request with `status` (after one
    /// message on `gate`, when given) and reports each request on the returned channel.
    struct Webhook {
        url: String,
        requests: tokio::sync::mpsc::UnboundedReceiver<Request>,
    }

    impl Webhook {
        fn start(status: u16, gate: Option<std::sync::mpsc::Receiver<()>>) -> Webhook {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let url = format!("http://{}/wake", listener.local_addr().unwrap());
            let (tx, requests) = tokio::sync::mpsc::unbounded_channel();
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    let Ok(stream) = stream else { return };
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    let Some(req) = read_request(&mut reader) else {
                        continue;
                    };
                    if tx.send(req).is_err() {
                        return; // test finished
                    }
                    if let Some(gate) = &gate {
                        let _ = gate.recv();
                    }
                    let mut stream = stream;
                    let _ = write!(
                        stream,
                        "HTTP/1.1 {status} X\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
                    );
                }
            });
            Webhook { url, requests }
        }

        /// The next request, waiting with a generous deadline.
        async fn next(&mut self) -> Request {
            tokio::time::timeout(Duration::from_secs(20), self.requests.recv())
                .await
                .expect("webhook request within 20 s")
                .expect("webhook thread alive")
        }
    }

    /// An HTTPS webhook on 127.0.0.1 with a fresh self-signed certificate (written to
    /// `dir/ca.pem`): answers 200 and reports each request that got through TLS.
    fn https_webhook(dir: &std::path::Path) -> (String, std::path::PathBuf, Webhook) {
        let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, ck.cert.pem()).unwrap();
        let key = rustls::pki_types::PrivateKeyDer::try_from(ck.key_pair.serialize_der()).unwrap();
        let tls = Arc::new(
            rustls::ServerConfig::builder_with_provider(crate::tls::provider())
                .with_protocol_versions(&[&rustls::version::TLS13])
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(vec![ck.cert.der().clone()], key)
                .unwrap(),
        );
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("https://{}/wake", listener.local_addr().unwrap());
        let (tx, requests) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let conn = rustls::ServerConnection::new(tls.clone()).unwrap();
                let mut tls_stream = BufReader::new(rustls::StreamOwned::new(conn, stream));
                // A client that refuses the certificate ends here: no request.
                let Some(req) = read_request(&mut tls_stream) else {
                    continue;
                };
                if tx.send(req).is_err() {
                    return;
                }
                let s = tls_stream.get_mut();
                let _ = s.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                );
                s.conn.send_close_notify();
                let _ = s.flush();
            }
        });
        (url.clone(), ca, Webhook { url, requests })
    }

    fn read_request(r: &mut impl BufRead) -> Option<Request> {
        let mut line = String::new();
        r.read_line(&mut line).ok()?;
        let mut parts = line.split_whitespace();
        let (method, path) = (parts.next()?.to_string(), parts.next()?.to_string());
        let (mut len, mut content_type) = (0usize, String::new());
        loop {
            let mut h = String::new();
            r.read_line(&mut h).ok()?;
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let (name, value) = h.split_once(':')?;
            match name.trim().to_ascii_lowercase().as_str() {
                "content-length" => len = value.trim().parse().ok()?,
                "content-type" => content_type = value.trim().to_string(),
                _ => {}
            }
        }
        let mut body = vec![0; len];
        r.read_exact(&mut body).ok()?;
        Some(Request {
            method,
            path,
            content_type,
            body,
        })
    }

    fn cfg(url: &str) -> PushConfig {
        PushConfig {
            webhook_url: Some(url.to_string()),
            allow_http: true,
            ca_file: None,
            batch_interval_ms: 50,
            max_batch: 500,
            min_interval_secs: 3600,
            queue_capacity: 1000,
            timeout_ms: 5000,
        }
    }

    fn tok(i: u32) -> Bytes {
        Bytes::from(format!("device-token-{i}").into_bytes())
    }

    /// Wait until the batcher has taken every queued wake-up.
    async fn taken(pusher: &Pusher) {
        let tx = pusher.inner.tx.as_ref().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while tx.capacity() < tx.max_capacity() {
            assert!(Instant::now() < deadline, "batcher idle for 20 s");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    async fn finish(pusher: Pusher) -> PushStats {
        let handle = pusher.clone();
        tokio::time::timeout(Duration::from_secs(20), pusher.shutdown())
            .await
            .expect("shutdown within 20 s");
        handle.stats()
    }

    #[tokio::test]
    async fn wakes_within_one_interval_make_one_request() {
        let mut hook = Webhook::start(200, None);
        let pusher = Pusher::spawn(PushConfig {
            batch_interval_ms: 1000,
            ..cfg(&hook.url)
        })
        .unwrap();
        // Each wake-up reaches the batcher on its own, spread over the interval.
        for i in 0..20 {
            pusher.wake(tok(i), i % 3 == 0);
            taken(&pusher).await;
        }
        let req = hook.next().await;
        assert_eq!(req.method, "POST");
        assert_eq!(req.path, "/wake");
        assert_eq!(req.content_type, "application/json");
        let expected: Vec<_> = (0..20).map(|i| (tok(i).to_vec(), i % 3 == 0)).collect();
        assert_eq!(req.wakeups(), expected);
        let stats = finish(pusher).await;
        assert!(hook.requests.try_recv().is_err(), "exactly one request");
        assert_eq!(
            stats,
            PushStats {
                wakeups: 20,
                requests: 1,
                sent: 20,
                ..PushStats::default()
            }
        );
    }

    #[tokio::test]
    async fn https_webhook_signed_by_the_configured_ca_gets_the_wakeups() {
        let dir = tempfile::tempdir().unwrap();
        let (url, ca, mut hook) = https_webhook(dir.path());
        let pusher = Pusher::spawn(PushConfig {
            allow_http: false,
            ca_file: Some(ca),
            ..cfg(&url)
        })
        .unwrap();
        pusher.wake(tok(1), true);
        let req = hook.next().await;
        assert_eq!((req.method.as_str(), req.path.as_str()), ("POST", "/wake"));
        assert_eq!(req.wakeups(), vec![(tok(1).to_vec(), true)]);
        let stats = finish(pusher).await;
        assert_eq!((stats.requests, stats.failures), (1, 0));
    }

    #[tokio::test]
    async fn https_webhook_with_an_untrusted_certificate_fails_and_is_counted() {
        let dir = tempfile::tempdir().unwrap();
        let (url, _ca, mut hook) = https_webhook(dir.path());
        // Default roots (webpki-roots): a self-signed certificate is not trusted.
        let pusher = Pusher::spawn(PushConfig {
            allow_http: false,
            ..cfg(&url)
        })
        .unwrap();
        pusher.wake(tok(1), true);
        let deadline = Instant::now() + Duration::from_secs(20);
        while pusher.stats().failures == 0 {
            assert!(Instant::now() < deadline, "no failure counted within 20 s");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let stats = finish(pusher).await;
        assert_eq!((stats.requests, stats.failures), (0, 1));
        assert!(hook.requests.try_recv().is_err(), "nothing got through TLS");
    }

    #[tokio::test]
    async fn a_full_batch_is_split_at_max_batch() {
        let mut hook = Webhook::start(200, None);
        let pusher = Pusher::spawn(PushConfig {
            max_batch: 4,
            ..cfg(&hook.url)
        })
        .unwrap();
        for i in 0..11 {
            pusher.wake(tok(i), false);
        }
        let mut got = Vec::new();
        for want in [4, 4, 3] {
            let w = hook.next().await.wakeups();
            assert_eq!(w.len(), want);
            got.extend(w);
        }
        let expected: Vec<_> = (0..11).map(|i| (tok(i).to_vec(), false)).collect();
        assert_eq!(got, expected);
        let stats = finish(pusher).await;
        assert!(hook.requests.try_recv().is_err());
        assert_eq!((stats.requests, stats.sent), (3, 11));
    }

    #[tokio::test]
    async fn non_urgent_wakes_of_a_token_are_suppressed_within_min_interval() {
        let mut hook = Webhook::start(200, None);
        let pusher = Pusher::spawn(cfg(&hook.url)).unwrap();
        for _ in 0..3 {
            pusher.wake(tok(1), false);
        }
        pusher.wake(tok(2), false);
        assert_eq!(
            hook.next().await.wakeups(),
            [(tok(1).to_vec(), false), (tok(2).to_vec(), false)]
        );
        // Still within the interval after the request went out.
        pusher.wake(tok(1), false);
        pusher.wake(tok(2), false);
        pusher.wake(tok(3), false);
        assert_eq!(hook.next().await.wakeups(), [(tok(3).to_vec(), false)]);
        let stats = finish(pusher).await;
        assert!(hook.requests.try_recv().is_err());
        assert_eq!((stats.wakeups, stats.suppressed, stats.sent), (3, 4, 3));
    }

    #[tokio::test]
    async fn urgent_wakes_bypass_suppression_and_count_as_wakes() {
        let mut hook = Webhook::start(200, None);
        let pusher = Pusher::spawn(cfg(&hook.url)).unwrap();
        pusher.wake(tok(1), false);
        assert_eq!(hook.next().await.wakeups(), [(tok(1).to_vec(), false)]);
        pusher.wake(tok(1), true);
        assert_eq!(hook.next().await.wakeups(), [(tok(1).to_vec(), true)]);
        pusher.wake(tok(1), true);
        assert_eq!(hook.next().await.wakeups(), [(tok(1).to_vec(), true)]);
        pusher.wake(tok(1), false); // suppressed: just woken
                                    // Two urgent wakes in one batch are merged into one urgent entry.
        pusher.wake(tok(2), false);
        pusher.wake(tok(2), true);
        assert_eq!(hook.next().await.wakeups(), [(tok(2).to_vec(), true)]);
        let stats = finish(pusher).await;
        assert!(hook.requests.try_recv().is_err());
        assert_eq!(
            stats,
            PushStats {
                wakeups: 5,
                suppressed: 1,
                coalesced: 1,
                requests: 4,
                sent: 4,
                ..PushStats::default()
            }
        );
    }

    #[tokio::test]
    async fn body_holds_only_base64_tokens_and_urgency() {
        let mut hook = Webhook::start(200, None);
        let pusher = Pusher::spawn(cfg(&hook.url)).unwrap();
        let binary = Bytes::from_static(&[0, 255, 1, 254, b'"', b'\\', b'\n', 0x80]);
        let long = Bytes::from(vec![0xAB; 512]);
        pusher.wake(binary.clone(), true);
        pusher.wake(long.clone(), false);
        let req = hook.next().await;
        assert_eq!(
            req.wakeups(),
            [(binary.to_vec(), true), (long.to_vec(), false)]
        );
        let text = String::from_utf8(req.body).unwrap();
        let b64 = base64::engine::general_purpose::STANDARD;
        assert_eq!(
            text,
            format!(
                r#"{{"wakeups":[{{"token":"{}","urgent":true}},{{"token":"{}","urgent":false}}]}}"#,
                b64.encode(&binary),
                b64.encode(&long)
            )
        );
        finish(pusher).await;
    }

    #[tokio::test]
    async fn error_status_is_counted_as_a_failure() {
        let mut hook = Webhook::start(500, None);
        let pusher = Pusher::spawn(cfg(&hook.url)).unwrap();
        pusher.wake(tok(1), true);
        pusher.wake(tok(2), false);
        assert_eq!(hook.next().await.wakeups().len(), 2);
        let stats = finish(pusher).await;
        assert_eq!(
            stats,
            PushStats {
                wakeups: 2,
                failures: 1,
                ..PushStats::default()
            }
        );
    }

    #[tokio::test]
    async fn unreachable_webhook_is_counted_and_wake_keeps_working() {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let pusher = Pusher::spawn(cfg(&format!("http://127.0.0.1:{port}/wake"))).unwrap();
        pusher.wake(tok(1), true);
        let deadline = Instant::now() + Duration::from_secs(20);
        while pusher.stats().failures == 0 {
            assert!(Instant::now() < deadline, "no failure counted within 20 s");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        pusher.wake(tok(2), true);
        let stats = finish(pusher).await;
        assert_eq!(
            stats,
            PushStats {
                wakeups: 2,
                failures: 2,
                ..PushStats::default()
            }
        );
    }

    #[tokio::test]
    async fn a_stuck_webhook_never_blocks_wake_and_overflow_is_dropped() {
        let (open, gate) = std::sync::mpsc::channel();
        let mut hook = Webhook::start(200, Some(gate));
        let pusher = Pusher::spawn(PushConfig {
            queue_capacity: 8,
            ..cfg(&hook.url)
        })
        .unwrap();
        // The batcher has not run yet (current-thread runtime): 8 fit the queue.
        for i in 0..100 {
            pusher.wake(tok(i), true);
        }
        assert_eq!((pusher.stats().wakeups, pusher.stats().dropped), (8, 92));
        // The first request is now held by the webhook; the queue is empty again.
        assert_eq!(hook.next().await.wakeups().len(), 8);
        for i in 100..120 {
            pusher.wake(tok(i), true);
        }
        assert_eq!((pusher.stats().wakeups, pusher.stats().dropped), (16, 104));
        open.send(()).unwrap();
        open.send(()).unwrap();
        let stats = finish(pusher).await;
        let second = hook.next().await.wakeups();
        let expected: Vec<_> = (100..108).map(|i| (tok(i).to_vec(), true)).collect();
        assert_eq!(second, expected);
        assert_eq!((stats.requests, stats.sent, stats.failures), (2, 16, 0));
    }

    #[tokio::test]
    async fn shutdown_flushes_the_pending_batch() {
        let mut hook = Webhook::start(200, None);
        let pusher = Pusher::spawn(PushConfig {
            batch_interval_ms: 3_600_000,
            ..cfg(&hook.url)
        })
        .unwrap();
        let other = pusher.clone();
        for i in 0..3 {
            pusher.wake(tok(i), false);
        }
        let stats = finish(pusher).await;
        assert_eq!(hook.next().await.wakeups().len(), 3);
        assert_eq!((stats.requests, stats.sent), (1, 3));
        // A clone outliving shutdown only counts drops.
        other.wake(tok(9), true);
        assert_eq!(other.stats().dropped, 1);
        other.shutdown().await;
        assert!(hook.requests.try_recv().is_err());
    }

    #[tokio::test]
    async fn without_webhook_push_is_disabled() {
        let pusher = Pusher::spawn(PushConfig::default()).unwrap();
        assert!(pusher.inner.tx.is_none());
        pusher.wake(tok(1), true);
        assert_eq!(pusher.stats(), PushStats::default());
        pusher.shutdown().await;
    }

    #[test]
    fn config_defaults_toml_and_validation() {
        let d = PushConfig::default();
        assert_eq!(
            (
                d.webhook_url.as_deref(),
                d.batch_interval_ms,
                d.max_batch,
                d.min_interval_secs
            ),
            (None, 500, 500, 60)
        );
        assert_eq!(d.timeout_ms, 5000);
        d.validate().unwrap();
        let c: PushConfig = toml::from_str(
            "webhook_url = \"http://127.0.0.1:8080/wake\"\nallow_http = true\nmax_batch = 7\n",
        )
        .unwrap();
        assert_eq!(c.max_batch, 7);
        assert_eq!(c.batch_interval_ms, 500);
        c.validate().unwrap();
        assert!(toml::from_str::<PushConfig>("webhook = \"http://x\"\n").is_err());
        let round: PushConfig = toml::from_str(&toml::to_string(&c).unwrap()).unwrap();
        assert_eq!(round, c);

        let with = |url: &str| PushConfig {
            webhook_url: Some(url.into()),
            ..PushConfig::default()
        };
        with("HTTPS://push.example/wake").validate().unwrap();
        let plain = with("http://push.example/wake")
            .validate()
            .unwrap_err()
            .to_string();
        assert!(plain.contains("allow_http"), "{plain}");
        assert!(Pusher::spawn(with("http://push.example/wake")).is_err());
        PushConfig {
            allow_http: true,
            ..with("http://push.example/wake")
        }
        .validate()
        .unwrap();
        let missing_ca = PushConfig {
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..with("https://push.example/wake")
        };
        missing_ca.validate().unwrap();
        let err = Pusher::spawn(missing_ca).err().expect("unreadable ca_file");
        assert!(format!("{err:#}").contains("push.ca_file"), "{err:#}");
        assert!(with("ftp://push.example/").validate().is_err());
        assert!(with("https:///wake").validate().is_err());
        assert!(with("https://push.example/a b").validate().is_err());
        assert!(PushConfig {
            max_batch: 0,
            ..PushConfig::default()
        }
        .validate()
        .is_err());
        assert!(PushConfig {
            queue_capacity: 0,
            ..PushConfig::default()
        }
        .validate()
        .is_err());
        assert!(PushConfig {
            timeout_ms: 0,
            ..PushConfig::default()
        }
        .validate()
        .is_err());
    }

    #[test]
    fn suppressor_expires_entries_after_the_interval() {
        let t0 = Instant::now();
        let min = Duration::from_secs(60);
        let mut s = Suppressor::new(min, t0);
        let (a, b) = (tok(1), tok(2));
        assert!(s.admit(&a, false, t0));
        s.record(a.clone(), t0);
        assert!(!s.admit(&a, false, t0 + Duration::from_secs(59)));
        assert!(s.admit(&a, true, t0 + Duration::from_secs(59)));
        assert!(s.admit(&b, false, t0 + Duration::from_secs(59)));
        s.record(b.clone(), t0 + Duration::from_secs(59));
        // First rotation: both entries move to the previous generation and still count.
        let t1 = t0 + Duration::from_secs(60);
        assert!(s.rotate(t0 + Duration::from_secs(30)).is_none());
        assert_eq!(s.rotate(t1).map(|m| m.len()), Some(0));
        assert!(s.admit(&a, false, t1), "a was woken 60 s ago");
        assert!(
            !s.admit(&b, false, t1 + Duration::from_secs(58)),
            "b was woken 59 s before"
        );
        assert!(s.admit(&b, false, t1 + Duration::from_secs(59)));
        assert_eq!(s.len(), 2);
        // Second rotation drops them: memory is bounded by two intervals of tokens.
        assert_eq!(s.rotate(t1 + min).map(|m| m.len()), Some(2));
        assert_eq!(s.len(), 0);
        // No interval: nothing is suppressed and nothing remembered.
        let mut none = Suppressor::new(Duration::ZERO, t0);
        none.record(a.clone(), t0);
        assert!(none.admit(&a, false, t0));
        assert_eq!(none.len(), 0);
    }
}
