//! Distributed mode: `hearth-loadgen agent --listen ADDR --secret-file F` processes run shares
//! of a load that `hearth-loadgen coordinate --agents A,B --agent-secret-file F ...` splits
//! among them; the coordinator merges their results (counters summed, HdrHistograms merged from
//! their V2 serialization) and runs a low-rate latency probe of its own beside the bulk load
//! (separate connections, separate histogram, like mutilate's).
//!
//! Wire (version 2): one TCP connection per run, newline-delimited JSON, authenticated both
//! ways by HMAC-SHA256 over fresh 32-byte nonces with a secret shared by the coordinator and
//! its agents (`S`, at least 16 bytes). Nonces and proofs are hex.
//!
//! 1. agent → coordinator `{"type":"hello","version":2,"nonce":NA}`.
//! 2. coordinator → agent `{"type":"run","version":2,"nonce":NC,"proof":P,"config":C,
//!    "sealed_key":K}`: `C` is the agent's `RunConfig` as a JSON *string* (so the proof covers
//!    its exact bytes), with the node's token signing key removed; `P = HMAC(S, "hearth-loadgen
//!    run" || NA || NC || C)`; `K` is that key sealed with AES-256-GCM under
//!    `HMAC(S, "hearth-loadgen seal" || NA || NC)`, as base64 of nonce (12 bytes) || ciphertext
//!    || tag. The agent checks `P` (in constant time) before it parses `C` or opens `K`; on a
//!    wrong proof it answers `{"type":"error","message":"authentication failed"}` and closes,
//!    and the connection does not count as a run (`--once`).
//! 3. The agent connects its devices and creates its groups, then answers
//!    `{"type":"ready","proof":HMAC(S, "hearth-loadgen ready" || NA || NC)}`, which the
//!    coordinator checks (an impostor agent fails the run before it starts).
//! 4. Once every agent is ready, the coordinator sends each `{"type":"go"}` (so the loads start
//!    together); the agent answers `{"type":"done","report":...,"hists":...}` or
//!    `{"type":"error","message":...}`.
//!
//! A peer speaking another version, or not this protocol, gets an `error` message saying so.
//! The key never travels in the clear; the scenario, the go signal and the results do (they
//! are not secret), and are not protected from an attacker on the path.
//!
//! Each agent has its own devices (a disjoint account range) and its own groups; 1:1 traffic
//! and groups stay within an agent, so latency is always measured on one clock.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use base64::Engine;
use hdrhistogram::Histogram;
use ring::rand::{SecureRandom, SystemRandom};
use ring::{aead, hmac};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

use crate::cli::{parse_or_exit, write_outputs, Args, EXIT_SETUP};
use crate::config::{RunConfig, Target};
use crate::report::{Latency, Report};
use crate::runner::{evaluate, run_on_after};
use crate::scenario::{Mix, Scenario};
use crate::stats::latency_histogram;
use crate::target;
use crate::timeline::{b64, deserialize, serialize, IntervalHists};

/// Version of the coordinator–agent messages.
const WIRE_VERSION: u64 = 2;
/// Accounts between two agents' ranges beyond their devices (room for the probe).
const ACCOUNT_GAP: u64 = 1000;
/// Length of the handshake nonces, bytes.
const NONCE_LEN: usize = 32;
/// Domain-separation labels of the MACs.
const RUN_LABEL: &[u8] = b"hearth-loadgen run";
const READY_LABEL: &[u8] = b"hearth-loadgen ready";
const SEAL_LABEL: &[u8] = b"hearth-loadgen seal";
/// What an agent answers a coordinator whose proof is wrong.
const AUTH_FAILED: &str = "authentication failed";
/// How long each side waits for the other's hello or run message.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest line accepted before authentication (and for small messages).
const MAX_SMALL_LINE: u64 = 1 << 20;
/// Longest `done` line (its histograms grow with the number of intervals).
const MAX_DONE_LINE: u64 = 1 << 30;

/// The secret a coordinator and its agents share, to authenticate each other (at least
/// [`AgentSecret::MIN_LEN`] bytes). Its bytes are kept only as an HMAC key.
#[derive(Clone)]
pub struct AgentSecret {
    key: hmac::Key,
}

impl std::fmt::Debug for AgentSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AgentSecret(..)")
    }
}

impl AgentSecret {
    /// Fewest bytes a secret may have.
    pub const MIN_LEN: usize = 16;

    /// A secret of these bytes; refuses fewer than [`AgentSecret::MIN_LEN`].
    pub fn new(bytes: &[u8]) -> anyhow::Result<AgentSecret> {
        anyhow::ensure!(
            bytes.len() >= Self::MIN_LEN,
            "the agent secret has {} bytes; it needs at least {}",
            bytes.len(),
            Self::MIN_LEN
        );
        Ok(AgentSecret {
            key: hmac::Key::new(hmac::HMAC_SHA256, bytes),
        })
    }

    /// Reads a secret file, without one trailing newline (so `openssl rand -hex 32 > FILE`
    /// works); refuses fewer than [`AgentSecret::MIN_LEN`] bytes.
    pub fn from_file(path: &Path) -> anyhow::Result<AgentSecret> {
        let bytes = std::fs::read(path)
            .with_context(|| format!("reading the secret file {}", path.display()))?;
        let mut b = bytes.as_slice();
        if let Some(rest) = b.strip_suffix(b"\n") {
            b = rest.strip_suffix(b"\r").unwrap_or(rest);
        }
        anyhow::ensure!(
            b.len() >= Self::MIN_LEN,
            "the secret file {} holds {} bytes; it needs at least {} (make one with \
             `head -c 32 /dev/urandom > {0}; chmod 600 {0}`)",
            path.display(),
            b.len(),
            Self::MIN_LEN
        );
        AgentSecret::new(b)
    }
}

/// One connection's handshake state: the secret and both nonces.
#[derive(Clone)]
struct Session {
    key: hmac::Key,
    agent_nonce: [u8; NONCE_LEN],
    coordinator_nonce: [u8; NONCE_LEN],
}

impl Session {
    /// `label || NA || NC || extra`, what a MAC covers.
    fn transcript(&self, label: &[u8], extra: &[u8]) -> Vec<u8> {
        let mut m = Vec::with_capacity(label.len() + 2 * NONCE_LEN + extra.len());
        m.extend_from_slice(label);
        m.extend_from_slice(&self.agent_nonce);
        m.extend_from_slice(&self.coordinator_nonce);
        m.extend_from_slice(extra);
        m
    }

    /// The coordinator's proof over the run message's config string.
    fn run_proof(&self, config: &str) -> hmac::Tag {
        hmac::sign(&self.key, &self.transcript(RUN_LABEL, config.as_bytes()))
    }

    /// Whether `proof` is the run proof of `config` (constant time).
    fn check_run(&self, config: &str, proof: &[u8]) -> bool {
        let m = self.transcript(RUN_LABEL, config.as_bytes());
        hmac::verify(&self.key, &m, proof).is_ok()
    }

    /// The agent's proof in its ready message.
    fn ready_proof(&self) -> hmac::Tag {
        hmac::sign(&self.key, &self.transcript(READY_LABEL, &[]))
    }

    /// Whether `proof` is the ready proof (constant time).
    fn check_ready(&self, proof: &[u8]) -> bool {
        hmac::verify(&self.key, &self.transcript(READY_LABEL, &[]), proof).is_ok()
    }

    /// The AES-256-GCM key that seals the token signing key for this connection.
    fn seal_key(&self) -> anyhow::Result<aead::LessSafeKey> {
        let k = hmac::sign(&self.key, &self.transcript(SEAL_LABEL, &[]));
        let k = aead::UnboundKey::new(&aead::AES_256_GCM, k.as_ref())
            .map_err(|_| anyhow::anyhow!("deriving the sealing key"))?;
        Ok(aead::LessSafeKey::new(k))
    }

    /// `plain` sealed: nonce (12 bytes) || ciphertext || tag.
    fn seal(&self, rng: &SystemRandom, plain: &[u8]) -> anyhow::Result<Vec<u8>> {
        let mut nonce = [0u8; aead::NONCE_LEN];
        rng.fill(&mut nonce)
            .map_err(|_| anyhow::anyhow!("the system random generator failed"))?;
        let mut in_out = plain.to_vec();
        self.seal_key()?
            .seal_in_place_append_tag(
                aead::Nonce::assume_unique_for_key(nonce),
                aead::Aad::empty(),
                &mut in_out,
            )
            .map_err(|_| anyhow::anyhow!("sealing the token key"))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&in_out);
        Ok(out)
    }

    /// Opens what [`Session::seal`] made; fails if it was made with another secret or nonces,
    /// or altered.
    fn open(&self, sealed: &[u8]) -> anyhow::Result<Vec<u8>> {
        anyhow::ensure!(
            sealed.len() >= aead::NONCE_LEN + aead::AES_256_GCM.tag_len(),
            "the sealed token key is too short"
        );
        let (nonce, ct) = sealed.split_at(aead::NONCE_LEN);
        let nonce = aead::Nonce::try_assume_unique_for_key(nonce)
            .map_err(|_| anyhow::anyhow!("the sealed token key has a bad nonce"))?;
        let mut in_out = ct.to_vec();
        let plain = self
            .seal_key()?
            .open_in_place(nonce, aead::Aad::empty(), &mut in_out)
            .map_err(|_| anyhow::anyhow!("the sealed token key does not open"))?;
        Ok(plain.to_vec())
    }
}

/// A fresh random nonce.
fn random_nonce(rng: &SystemRandom) -> anyhow::Result<[u8; NONCE_LEN]> {
    let mut n = [0u8; NONCE_LEN];
    rng.fill(&mut n)
        .map_err(|_| anyhow::anyhow!("the system random generator failed"))?;
    Ok(n)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    s.as_bytes()
        .chunks(2)
        .map(|c| {
            let hi = char::from(c[0]).to_digit(16)?;
            let lo = char::from(c[1]).to_digit(16)?;
            u8::try_from(hi * 16 + lo).ok()
        })
        .collect()
}

/// A hex nonce of exactly [`NONCE_LEN`] bytes.
fn parse_nonce(s: &str) -> Option<[u8; NONCE_LEN]> {
    unhex(s)?.try_into().ok()
}

/// At most 60 characters of a peer's string, for messages.
fn clip(s: &str) -> String {
    s.chars().take(60).collect()
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ToAgent {
    Run {
        version: u64,
        nonce: String,
        proof: String,
        /// The `RunConfig` as JSON, without the token signing key.
        config: String,
        /// The token signing key, sealed (base64); absent when the target has none.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sealed_key: Option<String>,
    },
    Go,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum FromAgent {
    Hello {
        version: u64,
        nonce: String,
    },
    Ready {
        proof: String,
    },
    Done {
        report: Box<Report>,
        hists: Box<WireHists>,
    },
    Error {
        message: String,
    },
}

/// The histograms behind a report, V2-serialized.
#[derive(Debug, Default, Serialize, Deserialize)]
struct WireHists {
    #[serde(with = "b64")]
    delivery: Vec<u8>,
    #[serde(with = "b64")]
    accept: Vec<u8>,
    #[serde(with = "b64")]
    probe: Vec<u8>,
    #[serde(with = "b64")]
    offline: Vec<u8>,
    by_kind: BTreeMap<String, String>,
    intervals: Vec<IntervalHists>,
}

impl WireHists {
    fn of(r: &Report) -> WireHists {
        let e = &r.extra;
        WireHists {
            delivery: serialize(&e.delivery),
            accept: serialize(&e.accept),
            probe: serialize(&e.probe),
            offline: serialize(&e.offline),
            by_kind: e
                .by_kind
                .iter()
                .map(|(k, h)| {
                    let b = base64::engine::general_purpose::STANDARD.encode(serialize(h));
                    (k.clone(), b)
                })
                .collect(),
            intervals: e.interval_hists.clone(),
        }
    }

    /// Puts the histograms back into `r.extra`.
    fn restore(self, r: &mut Report) -> anyhow::Result<()> {
        let e = &mut r.extra;
        e.delivery = deserialize(&self.delivery)?;
        e.accept = deserialize(&self.accept)?;
        e.probe = deserialize(&self.probe)?;
        e.offline = deserialize(&self.offline)?;
        e.by_kind = self
            .by_kind
            .into_iter()
            .map(|(k, b)| {
                let bytes = base64::engine::general_purpose::STANDARD.decode(b)?;
                Ok((k, deserialize(&bytes)?))
            })
            .collect::<anyhow::Result<_>>()?;
        e.interval_hists = self.intervals;
        Ok(())
    }
}

async fn send_line<T: Serialize>(
    w: &mut (impl AsyncWriteExt + Unpin),
    msg: &T,
) -> anyhow::Result<()> {
    let mut line = serde_json::to_vec(msg)?;
    line.push(b'\n');
    w.write_all(&line).await?;
    w.flush().await?;
    Ok(())
}

type Reader = BufReader<OwnedReadHalf>;

/// One line (without its newline) of at most `max` bytes.
async fn read_raw_line(r: &mut Reader, max: u64) -> anyhow::Result<String> {
    let mut buf = Vec::new();
    let n = (&mut *r).take(max).read_until(b'\n', &mut buf).await?;
    anyhow::ensure!(n > 0, "the peer closed the connection");
    if buf.pop() != Some(b'\n') {
        anyhow::ensure!(
            (n as u64) < max,
            "the peer sent a message longer than {max} bytes"
        );
        anyhow::bail!("the peer closed the connection mid-message");
    }
    if buf.last() == Some(&b'\r') {
        buf.pop();
    }
    String::from_utf8(buf).map_err(|_| anyhow::anyhow!("the peer sent a message that is not UTF-8"))
}

async fn read_line<T: for<'de> Deserialize<'de>>(r: &mut Reader, max: u64) -> anyhow::Result<T> {
    let line = read_raw_line(r, max).await?;
    serde_json::from_str(&line).with_context(|| format!("bad message: {}", clip(&line)))
}

/// The first message of a coordinator, checked as far as it can be without the secret.
struct RunRequest {
    coordinator_nonce: [u8; NONCE_LEN],
    proof: Vec<u8>,
    config: String,
    sealed_key: Option<String>,
}

/// Parses a coordinator's first line; the error is what the agent answers.
fn parse_run(line: &str) -> anyhow::Result<RunRequest> {
    const NOT_OURS: &str = "not a hearth-loadgen coordinator message (expected a wire \
                            version 2 run message)";
    let v: serde_json::Value = serde_json::from_str(line).map_err(|_| anyhow::anyhow!(NOT_OURS))?;
    match v.get("type").and_then(|t| t.as_str()) {
        Some("run") => {}
        Some(other) => anyhow::bail!("expected a run message, got {:?}", clip(other)),
        None => anyhow::bail!(NOT_OURS),
    }
    match v.get("version").and_then(|x| x.as_u64()) {
        Some(WIRE_VERSION) => {}
        Some(other) => anyhow::bail!(
            "unsupported wire version {other}: this agent speaks version {WIRE_VERSION}, \
             which is authenticated (upgrade the coordinator and give it --agent-secret-file)"
        ),
        None => anyhow::bail!("the run message has no version"),
    }
    let ToAgent::Run {
        nonce,
        proof,
        config,
        sealed_key,
        ..
    } = serde_json::from_value::<ToAgent>(v)
        .map_err(|e| anyhow::anyhow!("bad run message: {e}"))?
    else {
        anyhow::bail!(NOT_OURS);
    };
    Ok(RunRequest {
        coordinator_nonce: parse_nonce(&nonce)
            .with_context(|| format!("the run nonce is not {NONCE_LEN} hex bytes"))?,
        proof: unhex(&proof).context("the run proof is not hex")?,
        config,
        sealed_key,
    })
}

/// Parses an agent's hello; returns its nonce.
fn parse_hello(line: &str) -> anyhow::Result<[u8; NONCE_LEN]> {
    let v: serde_json::Value = serde_json::from_str(line)
        .map_err(|_| anyhow::anyhow!("not a hearth-loadgen agent: it sent {:?}", clip(line)))?;
    match v.get("type").and_then(|t| t.as_str()) {
        Some("hello") => {}
        Some("error") => anyhow::bail!(
            "{}",
            v.get("message").and_then(|m| m.as_str()).map_or_else(
                || "it answered an error".to_string(),
                |m| format!("it answered: {}", clip(m))
            )
        ),
        _ => anyhow::bail!("expected a hello, got {:?}", clip(line)),
    }
    match v.get("version").and_then(|x| x.as_u64()) {
        Some(WIRE_VERSION) => {}
        Some(other) => {
            anyhow::bail!("the agent speaks wire version {other}, this coordinator {WIRE_VERSION}")
        }
        None => anyhow::bail!("the hello has no version"),
    }
    v.get("nonce")
        .and_then(|n| n.as_str())
        .and_then(parse_nonce)
        .with_context(|| format!("the hello nonce is not {NONCE_LEN} hex bytes"))
}

/// The run message for `config` (the agent's share): the token signing key taken out of it
/// and sealed, the rest serialized and proven.
fn run_message(s: &Session, rng: &SystemRandom, mut config: RunConfig) -> anyhow::Result<ToAgent> {
    let sealed_key = match &mut config.target {
        Target::Remote { key_pkcs8, .. } => {
            let key = std::mem::take(key_pkcs8);
            let sealed = s.seal(rng, &key)?;
            Some(base64::engine::general_purpose::STANDARD.encode(sealed))
        }
        Target::Embedded { .. } => None,
    };
    let config = serde_json::to_string(&config).context("serializing the run config")?;
    Ok(ToAgent::Run {
        version: WIRE_VERSION,
        nonce: hex(&s.coordinator_nonce),
        proof: hex(s.run_proof(&config).as_ref()),
        config,
        sealed_key,
    })
}

/// The agent's config from an authenticated run request: parsed, with its key unsealed.
fn open_config(s: &Session, config: &str, sealed_key: Option<&str>) -> anyhow::Result<RunConfig> {
    let mut c: RunConfig = serde_json::from_str(config).context("bad run config")?;
    match (&mut c.target, sealed_key) {
        (Target::Remote { key_pkcs8, .. }, Some(sealed)) => {
            anyhow::ensure!(
                key_pkcs8.is_empty(),
                "the run config carries a token key in the clear"
            );
            let sealed = base64::engine::general_purpose::STANDARD
                .decode(sealed)
                .context("the sealed token key is not base64")?;
            *key_pkcs8 = s.open(&sealed)?;
        }
        (Target::Remote { .. }, None) => anyhow::bail!("the run message has no sealed token key"),
        (Target::Embedded { .. }, None) => {}
        (Target::Embedded { .. }, Some(_)) => {
            anyhow::bail!("the run message has a sealed key but an embedded target")
        }
    }
    Ok(c)
}

/// Serves coordinators on `listener`, one connection at a time, one run per connection;
/// refuses (and logs) connections that do not prove they hold `secret`. With `once`, returns
/// after the first authenticated run.
pub async fn agent(listener: TcpListener, secret: AgentSecret, once: bool) -> anyhow::Result<()> {
    let rng = SystemRandom::new();
    loop {
        let (stream, peer) = listener.accept().await?;
        tracing::info!(%peer, "connection");
        let (rd, mut wr) = stream.into_split();
        let mut rd = BufReader::new(rd);
        let handshake = tokio::time::timeout(
            HANDSHAKE_TIMEOUT,
            authenticate(&mut rd, &mut wr, &secret, &rng),
        )
        .await
        .unwrap_or_else(|_| {
            Err(anyhow::anyhow!(
                "no run message within {}s",
                HANDSHAKE_TIMEOUT.as_secs()
            ))
        });
        let (session, req) = match handshake {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(%peer, "refused a connection: {e:#}");
                let msg = FromAgent::Error {
                    message: format!("{e:#}"),
                };
                let _ = tokio::time::timeout(HANDSHAKE_TIMEOUT, send_line(&mut wr, &msg)).await;
                continue;
            }
        };
        tracing::info!(%peer, "coordinator authenticated");
        if let Err(e) = serve_run(rd, wr, &session, &req).await {
            tracing::warn!(%peer, "run failed: {e:#}");
        }
        if once {
            return Ok(());
        }
    }
}

/// Says hello and checks the coordinator's run message; errors are answered to the peer.
async fn authenticate(
    rd: &mut Reader,
    wr: &mut OwnedWriteHalf,
    secret: &AgentSecret,
    rng: &SystemRandom,
) -> anyhow::Result<(Session, RunRequest)> {
    let agent_nonce = random_nonce(rng)?;
    let hello = FromAgent::Hello {
        version: WIRE_VERSION,
        nonce: hex(&agent_nonce),
    };
    send_line(wr, &hello).await?;
    let line = read_raw_line(rd, MAX_SMALL_LINE).await?;
    let req = parse_run(&line)?;
    let session = Session {
        key: secret.key.clone(),
        agent_nonce,
        coordinator_nonce: req.coordinator_nonce,
    };
    anyhow::ensure!(session.check_run(&req.config, &req.proof), AUTH_FAILED);
    Ok((session, req))
}

/// One authenticated run: set up, say ready, wait for go, run, answer the report.
async fn serve_run(
    mut lines: Reader,
    mut wr: OwnedWriteHalf,
    session: &Session,
    req: &RunRequest,
) -> anyhow::Result<()> {
    let config = match open_config(session, &req.config, req.sealed_key.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            let msg = FromAgent::Error {
                message: format!("{e:#}"),
            };
            send_line(&mut wr, &msg).await?;
            return Err(e);
        }
    };
    let (ready_tx, ready_rx) = oneshot::channel::<()>();
    let (go_tx, go_rx) = oneshot::channel::<()>();
    let barrier = async move {
        let _ = ready_tx.send(());
        go_rx
            .await
            .map_err(|_| anyhow::anyhow!("the coordinator went away before go"))
    };
    let work = async {
        let p = target::prepare(&config.target).await?;
        let r = run_on_after(&config, &p, barrier).await;
        p.shutdown().await;
        r
    };
    tokio::pin!(work);
    // The run parks on the barrier once set up; meanwhile say ready and wait for go.
    let early = tokio::select! {
        r = &mut work => Some(r),
        _ = ready_rx => None,
    };
    let result = match early {
        Some(r) => r,
        None => {
            let ready = FromAgent::Ready {
                proof: hex(session.ready_proof().as_ref()),
            };
            send_line(&mut wr, &ready).await?;
            match read_line::<ToAgent>(&mut lines, MAX_SMALL_LINE).await? {
                ToAgent::Go => {
                    let _ = go_tx.send(());
                }
                ToAgent::Run { .. } => anyhow::bail!("expected go, got another run message"),
            }
            work.await
        }
    };
    let msg = match result {
        Ok(report) => FromAgent::Done {
            hists: Box::new(WireHists::of(&report)),
            report: Box::new(report),
        },
        Err(e) => FromAgent::Error {
            message: format!("{e:#}"),
        },
    };
    send_line(&mut wr, &msg).await
}

/// Splits `cfg` among `agents`, runs the coordinator's probe beside them (if
/// `cfg.scenario.load.probe_rate` is set), merges and evaluates. Agents must hold `secret`.
pub async fn coordinate(
    cfg: RunConfig,
    agents: &[SocketAddr],
    secret: &AgentSecret,
) -> anyhow::Result<Report> {
    cfg.validate()?;
    anyhow::ensure!(!agents.is_empty(), "--agents lists no agent");
    let p = target::prepare(&cfg.target).await?;
    let result = coordinate_on(&cfg, agents, secret, &p).await;
    p.shutdown().await;
    result
}

/// The share of agent `i` of `n`.
fn share(cfg: &RunConfig, i: usize, n: usize, target: &crate::config::Target) -> RunConfig {
    let mut c = cfg.clone();
    let s = &mut c.scenario;
    let devices = cfg.scenario.devices as usize;
    let per = devices / n + usize::from(i < devices % n);
    s.devices = per as u32;
    s.load.rate = cfg.scenario.load.rate.map(|r| r / n as f64);
    s.load.probe_rate = None;
    s.name = format!("{} (agent {} of {n})", cfg.scenario.name, i + 1);
    let stride = (devices / n + 1) as u64 + ACCOUNT_GAP;
    c.account_base = cfg.account_base + i as u64 * stride;
    c.target = target.clone();
    c.progress = false;
    c
}

/// The coordinator's probe: two devices, 1:1 at `rate`, same phases, after every agent's range.
fn probe_config(cfg: &RunConfig, n: usize, rate: f64) -> RunConfig {
    let mut c = cfg.clone();
    let devices = cfg.scenario.devices as usize;
    c.account_base = cfg.account_base + n as u64 * ((devices / n + 1) as u64 + ACCOUNT_GAP);
    c.scenario = Scenario {
        name: "probe".into(),
        devices: 2,
        seed: None,
        load: crate::scenario::Load {
            rate: Some(rate),
            closed_loop: None,
            arrivals: crate::scenario::Arrivals::Constant,
            ramp_from: rate,
            probe_rate: None,
        },
        phases: cfg.scenario.phases.clone(),
        mix: Mix::default(),
        ..Scenario::default()
    };
    c.progress = false;
    c.slos = Vec::new();
    c
}

/// Connects to agent `a`, checks its hello and sends it `config` (its share).
async fn start_agent(
    a: SocketAddr,
    secret: &AgentSecret,
    rng: &SystemRandom,
    config: RunConfig,
) -> anyhow::Result<(Reader, OwnedWriteHalf, Session)> {
    let stream = TcpStream::connect(a)
        .await
        .with_context(|| format!("connecting to agent {a}"))?;
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::new(rd);
    let handshake = async {
        let line = read_raw_line(&mut rd, MAX_SMALL_LINE).await?;
        let agent_nonce = parse_hello(&line)?;
        let session = Session {
            key: secret.key.clone(),
            agent_nonce,
            coordinator_nonce: random_nonce(rng)?,
        };
        send_line(&mut wr, &run_message(&session, rng, config)?).await?;
        anyhow::Ok(session)
    };
    let session = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "agent {a} sent no hello within {}s (busy with another run, or an older \
                 hearth-loadgen speaking wire version 1?)",
                HANDSHAKE_TIMEOUT.as_secs()
            )
        })?
        .with_context(|| format!("agent {a}"))?;
    Ok((rd, wr, session))
}

/// An agent's error message, with a hint when it refused our proof.
fn agent_error(a: SocketAddr, message: &str) -> anyhow::Error {
    if message == AUTH_FAILED {
        anyhow::anyhow!(
            "agent {a}: authentication failed: it refused this coordinator's proof (does \
             --agent-secret-file hold the same secret as the agent's --secret-file?)"
        )
    } else {
        anyhow::anyhow!("agent {a}: {message}")
    }
}

async fn coordinate_on(
    cfg: &RunConfig,
    agents: &[SocketAddr],
    secret: &AgentSecret,
    p: &target::Prepared,
) -> anyhow::Result<Report> {
    let n = agents.len();
    let remote = p.as_remote();
    let rng = SystemRandom::new();
    let mut conns = Vec::with_capacity(n);
    for (i, a) in agents.iter().enumerate() {
        let (rd, wr, session) = start_agent(*a, secret, &rng, share(cfg, i, n, &remote)).await?;
        conns.push((*a, rd, wr, session));
    }
    // The probe runs here, on its own connections, started with the agents.
    let (probe_ready_tx, probe_ready_rx) = oneshot::channel::<()>();
    let (probe_go_tx, probe_go_rx) = oneshot::channel::<()>();
    let probe = cfg.scenario.load.probe_rate.map(|rate| {
        let pc = probe_config(cfg, n, rate);
        async move {
            let barrier = async move {
                let _ = probe_ready_tx.send(());
                probe_go_rx
                    .await
                    .map_err(|_| anyhow::anyhow!("coordinator stopped"))
            };
            run_on_after(&pc, p, barrier).await
        }
    });
    let coordinate = async {
        for (a, rd, _, session) in &mut conns {
            let a = *a;
            match read_line::<FromAgent>(rd, MAX_SMALL_LINE)
                .await
                .with_context(|| format!("agent {a}"))?
            {
                FromAgent::Ready { proof } => anyhow::ensure!(
                    unhex(&proof).is_some_and(|p| session.check_ready(&p)),
                    "agent {a} failed authentication: its ready proof is wrong (not an agent \
                     holding this secret)"
                ),
                FromAgent::Error { message } => return Err(agent_error(a, &message)),
                FromAgent::Hello { .. } => anyhow::bail!("agent {a} said hello twice"),
                FromAgent::Done { .. } => anyhow::bail!("agent {a} finished before go"),
            }
        }
        if cfg.scenario.load.probe_rate.is_some() {
            probe_ready_rx.await.context("the probe failed to start")?;
        }
        for (_, _, wr, _) in &mut conns {
            send_line(wr, &ToAgent::Go).await?;
        }
        let _ = probe_go_tx.send(());
        if cfg.progress {
            eprintln!("coordinate: {n} agents started");
        }
        let mut results = Vec::with_capacity(n);
        for (a, rd, _, _) in &mut conns {
            let a = *a;
            match read_line::<FromAgent>(rd, MAX_DONE_LINE)
                .await
                .with_context(|| format!("agent {a}"))?
            {
                FromAgent::Done { mut report, hists } => {
                    hists.restore(&mut report)?;
                    results.push(*report);
                }
                FromAgent::Error { message } => return Err(agent_error(a, &message)),
                FromAgent::Ready { .. } => anyhow::bail!("agent {a} said ready twice"),
                FromAgent::Hello { .. } => anyhow::bail!("agent {a} said hello twice"),
            }
        }
        anyhow::Ok(results)
    };
    let (results, probe) = match probe {
        Some(probe) => {
            let (r, p) = tokio::join!(coordinate, probe);
            (r?, Some(p.context("the coordinator's probe")?))
        }
        None => (coordinate.await?, None),
    };
    let mut merged = merge(cfg, results, probe)?;
    merged.target = format!("{} via {n} agents", merged.target);
    evaluate(&mut merged, cfg);
    Ok(merged)
}

fn add(into: &mut Histogram<u64>, h: &Histogram<u64>) {
    into.add(h).expect("same histogram bounds");
}

/// Merges the agents' reports (and the probe's) into one.
fn merge(cfg: &RunConfig, mut rs: Vec<Report>, probe: Option<Report>) -> anyhow::Result<Report> {
    let mut m = rs.remove(0);
    m.scenario = cfg.scenario.name.clone();
    m.devices = cfg.scenario.devices;
    let mut reasons: Vec<String> = m
        .self_check
        .reasons
        .iter()
        .map(|r| format!("agent 1: {r}"))
        .collect();
    for (i, r) in rs.iter().enumerate() {
        m.offered_per_s = match (m.offered_per_s, r.offered_per_s) {
            (Some(a), Some(b)) => Some(a + b),
            (a, _) => a,
        };
        m.sent_per_s += r.sent_per_s;
        m.accepted_per_s += r.accepted_per_s;
        m.delivered_per_s += r.delivered_per_s;
        m.group_deliveries_per_s += r.group_deliveries_per_s;
        m.sent += r.sent;
        m.accepted += r.accepted;
        m.delivered += r.delivered;
        m.total_sent += r.total_sent;
        m.lost += r.lost;
        m.duplicated += r.duplicated;
        m.unexpected_duplicates += r.unexpected_duplicates;
        m.reordered += r.reordered;
        m.late_sends += r.late_sends;
        m.unanswered += r.unanswered;
        m.stale_deliveries += r.stale_deliveries;
        m.ephemeral_unpushed += r.ephemeral_unpushed;
        m.ephemeral_lost += r.ephemeral_lost;
        for (k, v) in &r.errors {
            *m.errors.entry(k.clone()).or_default() += v;
        }
        if let (Some(a), Some(b)) = (m.fanout.as_mut(), r.fanout.as_ref()) {
            a.merge(b);
        }
        if let (Some(a), Some(b)) = (m.groups.as_mut(), r.groups.as_ref()) {
            let total = a.mean_size * f64::from(a.count) + b.mean_size * f64::from(b.count);
            a.count += b.count;
            a.min_size = a.min_size.min(b.min_size);
            a.max_size = a.max_size.max(b.max_size);
            a.mean_size = total / f64::from(a.count.max(1));
            a.messages_accepted += b.messages_accepted;
        }
        if let (Some(a), Some(b)) = (m.offline.as_mut(), r.offline.as_ref()) {
            a.devices += b.devices;
            a.delivered += b.delivered;
        }
        let c = &mut m.connections;
        c.online += r.connections.online;
        c.setup_s = c.setup_s.max(r.connections.setup_s);
        c.reconnects += r.connections.reconnects;
        c.connect_failures += r.connections.connect_failures;
        if let Some(n) = &r.node {
            if m.node.is_none_or(|mn| n.connections > mn.connections) {
                m.node = Some(*n);
            }
        }
        let sc = &mut m.self_check;
        sc.generator_saturated |= r.self_check.generator_saturated;
        sc.scheduler_lag_p99_us = sc
            .scheduler_lag_p99_us
            .max(r.self_check.scheduler_lag_p99_us);
        sc.scheduler_lag_max_us = sc
            .scheduler_lag_max_us
            .max(r.self_check.scheduler_lag_max_us);
        sc.runtime_lag_p99_us = sc.runtime_lag_p99_us.max(r.self_check.runtime_lag_p99_us);
        sc.generator_cpu_cores += r.self_check.generator_cpu_cores;
        sc.machine_cpu_cores = sc.machine_cpu_cores.max(r.self_check.machine_cpu_cores);
        reasons.extend(
            r.self_check
                .reasons
                .iter()
                .map(|x| format!("agent {}: {x}", i + 2)),
        );
        m.settle_s = m.settle_s.max(r.settle_s);
        // Histograms.
        add(&mut m.extra.delivery, &r.extra.delivery);
        add(&mut m.extra.accept, &r.extra.accept);
        add(&mut m.extra.offline, &r.extra.offline);
        for (k, h) in &r.extra.by_kind {
            let e = m
                .extra
                .by_kind
                .entry(k.clone())
                .or_insert_with(latency_histogram);
            add(e, h);
        }
        merge_timeline(&mut m, r)?;
    }
    m.self_check.reasons = reasons;
    m.latency_us = Latency::from_histogram(&m.extra.delivery);
    m.accept_latency_us = Latency::from_histogram(&m.extra.accept);
    m.latency_by_kind = m
        .extra
        .by_kind
        .iter()
        .map(|(k, h)| (k.clone(), Latency::from_histogram(h)))
        .collect();
    if let Some(o) = m.offline.as_mut() {
        o.latency_us = Latency::from_histogram(&m.extra.offline);
    }
    if let Some(p) = probe {
        m.extra.probe = p.extra.delivery.clone();
        m.probe_latency_us = Some(p.latency_us);
        for (k, v) in &p.errors {
            *m.errors.entry(format!("probe:{k}")).or_default() += v;
        }
        m.lost += p.lost;
        m.unanswered += p.unanswered;
        m.reordered += p.reordered;
        for (mi, pi) in m
            .extra
            .interval_hists
            .iter_mut()
            .zip(&p.extra.interval_hists)
        {
            mi.probe = pi.delivery.clone();
        }
    }
    Ok(m)
}

/// Adds `r`'s timeline to `m`'s, interval by interval (the loads started together).
fn merge_timeline(m: &mut Report, r: &Report) -> anyhow::Result<()> {
    let n = m.timeline.len().min(r.timeline.len());
    m.timeline.truncate(n);
    m.extra.interval_hists.truncate(n);
    for i in 0..n {
        let (a, b) = (&mut m.timeline[i], &r.timeline[i]);
        a.offered_per_s = match (a.offered_per_s, b.offered_per_s) {
            (Some(x), Some(y)) => Some(x + y),
            (x, _) => x,
        };
        a.sent_per_s += b.sent_per_s;
        a.accepted_per_s += b.accepted_per_s;
        a.delivered_per_s += b.delivered_per_s;
        a.group_delivered_per_s += b.group_delivered_per_s;
        a.errors += b.errors;
        let (ha, hb) = (&mut m.extra.interval_hists[i], &r.extra.interval_hists[i]);
        let mut d = deserialize(&ha.delivery)?;
        add(&mut d, &deserialize(&hb.delivery)?);
        let mut acc = deserialize(&ha.accept)?;
        add(&mut acc, &deserialize(&hb.accept)?);
        let q = |h: &Histogram<u64>, x: f64| {
            if h.is_empty() {
                0
            } else {
                h.value_at_quantile(x)
            }
        };
        a.count = d.len();
        a.p50_us = q(&d, 0.5);
        a.p90_us = q(&d, 0.9);
        a.p99_us = q(&d, 0.99);
        a.max_us = if d.is_empty() { 0 } else { d.max() };
        a.accept_p99_us = q(&acc, 0.99);
        ha.delivery = serialize(&d);
        ha.accept = serialize(&acc);
    }
    Ok(())
}

/// Flags of `hearth-loadgen agent`.
#[derive(Debug, clap::Parser)]
#[command(
    name = "hearth-loadgen agent",
    about = "Run shares of a load for a coordinator (`hearth-loadgen coordinate`)."
)]
pub struct AgentArgs {
    /// TCP address to listen on for coordinators; port 0 picks one (printed on stdout).
    #[arg(long, default_value = "127.0.0.1:7450")]
    pub listen: SocketAddr,
    /// File holding the secret shared with coordinators (at least 16 bytes; one trailing
    /// newline is ignored). Make one with `head -c 32 /dev/urandom > FILE; chmod 600 FILE`.
    #[arg(long, value_name = "FILE")]
    pub secret_file: PathBuf,
    /// Exit after one (authenticated) run.
    #[arg(long)]
    pub once: bool,
}

/// Flags of `hearth-loadgen coordinate`: the agents, then the flags of a load run.
#[derive(Debug, clap::Parser)]
#[command(
    name = "hearth-loadgen coordinate",
    about = "Split a load among agents, merge their histograms, and run a latency probe \
             beside it. With --embedded the coordinator hosts the node."
)]
pub struct CoordinateArgs {
    /// Agents' addresses, comma-separated (HOST:PORT,HOST:PORT).
    #[arg(long, value_delimiter = ',', required = true)]
    pub agents: Vec<SocketAddr>,
    /// File holding the secret the agents were given with --secret-file.
    #[arg(long, value_name = "FILE")]
    pub agent_secret_file: PathBuf,
    /// The load, as for a plain run (rate and devices are split among the agents).
    #[command(flatten)]
    pub run: Args,
}

/// `hearth-loadgen agent ...`.
pub(crate) fn agent_main(argv: &[std::ffi::OsString]) -> ExitCode {
    let args = match parse_or_exit::<AgentArgs>(argv.iter().cloned()) {
        Ok(a) => a,
        Err(code) => return code,
    };
    let result = (|| {
        let secret = AgentSecret::from_file(&args.secret_file).context("--secret-file")?;
        let rt = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
        rt.block_on(async {
            let l = TcpListener::bind(args.listen)
                .await
                .with_context(|| format!("binding {}", args.listen))?;
            println!("hearth-loadgen agent listening on {}", l.local_addr()?);
            agent(l, secret, args.once).await
        })
    })();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hearth-loadgen agent: {e:#}");
            ExitCode::from(EXIT_SETUP)
        }
    }
}

/// `hearth-loadgen coordinate ...`.
pub(crate) fn coordinate_main(argv: &[std::ffi::OsString]) -> ExitCode {
    let args = match parse_or_exit::<CoordinateArgs>(argv.iter().cloned()) {
        Ok(a) => a,
        Err(code) => return code,
    };
    if args.run.find_max {
        eprintln!("hearth-loadgen coordinate: --find-max runs in one process only");
        return ExitCode::from(EXIT_SETUP);
    }
    let result = AgentSecret::from_file(&args.agent_secret_file)
        .context("--agent-secret-file")
        .and_then(|secret| {
            let cfg = args.run.to_config()?;
            let rt = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
            rt.block_on(coordinate(cfg, &args.agents, &secret))
        });
    match result {
        Ok(report) => {
            if args.run.json {
                println!("{}", report.to_json());
            } else {
                print!("{}", report.to_table());
            }
            if let Err(e) = write_outputs(&report, &args.run.outputs()) {
                eprintln!("hearth-loadgen: {e:#}");
                return ExitCode::from(EXIT_SETUP);
            }
            ExitCode::from(report.exit_code())
        }
        Err(e) => {
            eprintln!("hearth-loadgen coordinate: {e:#}");
            ExitCode::from(EXIT_SETUP)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(secret: &[u8]) -> Session {
        Session {
            key: AgentSecret::new(secret).unwrap().key,
            agent_nonce: [1; NONCE_LEN],
            coordinator_nonce: [2; NONCE_LEN],
        }
    }

    #[test]
    fn the_run_message_carries_the_key_only_sealed() {
        let s = session(b"0123456789abcdef0123");
        let rng = SystemRandom::new();
        let key: Vec<u8> = (0..83u8)
            .map(|i| i.wrapping_mul(37).wrapping_add(5))
            .collect();
        let mut cfg = RunConfig::embedded(4, 10.0, Duration::from_secs(1));
        cfg.target = Target::Remote {
            addr: "127.0.0.1:4433".parse().unwrap(),
            ca_pem: b"-----BEGIN CERTIFICATE-----".to_vec(),
            server_name: "localhost".into(),
            key_pkcs8: key.clone(),
            admin: None,
        };
        let msg = run_message(&s, &rng, cfg).unwrap();
        let line = serde_json::to_string(&msg).unwrap();
        let b64 = |e: &base64::engine::GeneralPurpose| e.encode(&key);
        let forms = [
            serde_json::to_string(&key).unwrap(),
            hex(&key),
            hex(&key).to_uppercase(),
            b64(&base64::engine::general_purpose::STANDARD),
            b64(&base64::engine::general_purpose::STANDARD_NO_PAD),
            b64(&base64::engine::general_purpose::URL_SAFE),
            b64(&base64::engine::general_purpose::URL_SAFE_NO_PAD),
        ];
        for f in &forms {
            assert!(!line.contains(f.as_str()), "the key leaks as {f}");
        }
        assert!(!line.as_bytes().windows(key.len()).any(|w| w == key));

        // The agent's side: the proof checks, the key comes back.
        let back: ToAgent = serde_json::from_str(&line).unwrap();
        let req = parse_run(&line).unwrap();
        assert!(matches!(back, ToAgent::Run { version: 2, .. }));
        assert!(s.check_run(&req.config, &req.proof));
        assert!(!session(b"another secret, 16+").check_run(&req.config, &req.proof));
        assert!(!s.check_run(&req.config.replace("4433", "4434"), &req.proof));
        let c = open_config(&s, &req.config, req.sealed_key.as_deref()).unwrap();
        match c.target {
            Target::Remote { key_pkcs8, .. } => assert_eq!(key_pkcs8, key),
            Target::Embedded { .. } => panic!("remote expected"),
        }
        let other = session(b"another secret, 16+");
        assert!(open_config(&other, &req.config, req.sealed_key.as_deref()).is_err());
    }

    #[test]
    fn sealing_round_trips_only_with_the_same_secret_and_nonces() {
        let rng = SystemRandom::new();
        let s = session(b"0123456789abcdef");
        let sealed = s.seal(&rng, b"token key").unwrap();
        assert_eq!(s.open(&sealed).unwrap(), b"token key");
        assert_ne!(s.seal(&rng, b"token key").unwrap(), sealed, "fresh nonce");
        assert!(session(b"0123456789abcdeF").open(&sealed).is_err());
        let mut other_nonce = s.clone();
        other_nonce.coordinator_nonce[0] ^= 1;
        assert!(other_nonce.open(&sealed).is_err());
        let mut tampered = sealed.clone();
        tampered[20] ^= 1;
        assert!(s.open(&tampered).is_err());
        assert!(s.open(&sealed[..20]).is_err());
        assert!(s.check_ready(s.ready_proof().as_ref()));
        assert!(!s.check_ready(other_nonce.ready_proof().as_ref()));
    }

    #[test]
    fn secrets_are_at_least_16_bytes_and_lose_one_trailing_newline() {
        assert!(AgentSecret::new(b"short").is_err());
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("agent.secret");
        std::fs::write(&f, b"0123456789abcde\n").unwrap();
        let e = AgentSecret::from_file(&f).unwrap_err().to_string();
        assert!(e.contains("agent.secret") && e.contains("15 bytes"), "{e}");
        std::fs::write(&f, b"0123456789abcdef\n").unwrap();
        let a = AgentSecret::from_file(&f).unwrap();
        let b = AgentSecret::new(b"0123456789abcdef").unwrap();
        assert_eq!(
            hmac::sign(&a.key, b"x").as_ref(),
            hmac::sign(&b.key, b"x").as_ref()
        );
        let missing = AgentSecret::from_file(&dir.path().join("nope")).unwrap_err();
        assert!(format!("{missing:#}").contains("nope"));
    }

    #[test]
    fn peers_speaking_another_version_or_garbage_get_a_clear_error() {
        let v1 = r#"{"type":"run","version":1,"config":{"target":"x"}}"#;
        let e = parse_run(v1).err().unwrap().to_string();
        assert!(e.contains("version 1"), "{e}");
        for junk in ["", "hello", "{}", "[1,2]", r#"{"type":"go"}"#] {
            assert!(parse_run(junk).is_err(), "{junk}");
        }
        let bad_nonce = r#"{"type":"run","version":2,"nonce":"zz","proof":"","config":""}"#;
        assert!(parse_run(bad_nonce).is_err());
        assert!(parse_hello(r#"{"type":"hello","version":1,"nonce":""}"#).is_err());
        assert!(parse_hello("garbage").is_err());
        assert_eq!(unhex("0aFf"), Some(vec![0x0a, 0xff]));
        assert_eq!(unhex("0g"), None);
        assert_eq!(unhex("abc"), None);
        assert_eq!(unhex("é0"), None);
    }
}
