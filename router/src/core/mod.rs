//! The routing core: a state machine with no I/O. It takes inputs with an explicit `now_ms`
//! (frames of a connection, registrations, queue reads, write results) and yields what to do:
//! node-wide [`Action`]s from [`Router::poll_action`] and, per connection, a [`ConnOutput`]
//! from [`Router::poll_conn`] (frames to write, a queue read, store requests, a close). The
//! QUIC driver (`session.rs`), the store and the committer only perform them, like quinn under
//! quinn-proto.
//!
//! Every send goes through two stages joined by one value: **ingress** (`ingress.rs`, at the
//! node the sender is connected to: envelope checks, the sender's rate limit and abuse
//! counters) produces a [`Routed`], which the [`SlotMap`] sends to the **owner** of its
//! target's slot (`owner.rs`: addressing, reachability and blocks, pair and recipient limits,
//! dedup, seqs, live push, group commit). A group send goes first to the owner of the group's
//! slot, which resolves the members and yields one `Routed` per owner of their slots.

mod action;
mod conns;
mod delivery;
mod forward;
mod ingress;
mod owner;
mod parts;
mod policy;
mod requests;
mod routed;
mod slots;
mod view;

// The simulation harness; the `fuzzing` feature exposes it to router/fuzz.
#[cfg(any(test, feature = "fuzzing"))]
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) mod testing;

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use hearth_protocol::{
    Accepted, ErrorCode, Frame, Hello, MessageId, Pong, Redirect, Refusal, VerifyingKey, Welcome,
    PROTOCOL_VERSION,
};
use hearth_storage::{DeviceKey, QueueEntry, StorageError, WriteOutcome};

pub(crate) use action::{
    Action, ConnId, ConnOutput, JobId, QueueRead, Registration, Request, RequestOutcome, Wake,
};
#[allow(unused_imports)] // WireError: for the cluster tests
pub(crate) use forward::{Forwarded, Returned, WireError};
pub(crate) use routed::{Origin, Routed, Target};
pub(crate) use slots::{Fence, NodeId, SlotMap};
pub(crate) use view::{Loaded, View};

use crate::config::{Limits, Privacy, Residency};
use crate::metrics::Metrics;
use crate::safety::{self, Safety};
use conns::{Authenticated, Conns, Phase};
use owner::{deliver_frame, Owner};
use requests::Reports;

/// What the core needs to know of the node's configuration.
#[derive(Debug, Clone)]
pub(crate) struct CoreConfig {
    /// Envelope, queue and connection limits.
    pub limits: Limits,
    /// Known networks and the default one.
    pub privacy: Privacy,
    /// Zones and the regions they allow.
    pub residency: Residency,
    /// This node's region.
    pub region: String,
    /// The idle timeout clients are told in WELCOME.
    pub idle_timeout_ms: u32,
    /// How long abuse metadata is kept.
    pub retention_ms: u64,
}

/// Where an answer goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReplyTo {
    /// A connection of this node.
    Conn(ConnId),
    /// One part of a send split between owners; the whole answers once every part has.
    FanIn(u64),
    /// A send forwarded by another node, answered with `token`.
    Remote { node: NodeId, token: u64 },
}

/// An answer to a send or request: now, or later through [`Router`]'s answer queue.
#[derive(Debug)]
enum Answer {
    /// Answered at once (a refusal, an ephemeral send...).
    Now(Frame),
    /// Answered once its write is durable (or its group is loaded...).
    Later,
}

/// A send split between owners, collecting their answers.
#[derive(Debug)]
struct FanIn {
    reply: ReplyTo,
    msg_id: MessageId,
    left: usize,
    accepted_at_ms: u64,
    recipients: u32,
    refusal: Option<Frame>,
}

/// What the stages share while one input is handled.
struct Cx<'a> {
    view: &'a dyn View,
    conns: &'a mut Conns,
    safety: &'a Safety,
    metrics: &'a Metrics,
    limits: &'a Limits,
    slots: &'a SlotMap,
    actions: &'a mut VecDeque<Action>,
    /// Later answers produced while handling this input.
    answers: &'a mut Vec<(ReplyTo, Frame)>,
}

impl Cx<'_> {
    /// The refusal of a request a rate limit stopped.
    fn limited(&self, r: safety::Refusal) -> Refusal {
        let message = format!("rate limited ({})", r.limit.as_str().replace('_', " "));
        Refusal::new(ErrorCode::RateLimited, message).retry_after(r.retry_after_ms.max(1))
    }
}

/// One node's routing state machine.
pub(crate) struct Router {
    cfg: CoreConfig,
    view: Arc<dyn View>,
    verifier: VerifyingKey,
    slots: SlotMap,
    /// Whether this node may accept writes for the slots it owns (cluster: lease live and
    /// map current; always on a single node).
    serving: bool,
    safety: Arc<Safety>,
    metrics: Arc<Metrics>,
    conns: Conns,
    owner: Owner,
    reports: Reports,
    actions: VecDeque<Action>,
    answers: Vec<(ReplyTo, Frame)>,
    fan_ins: HashMap<u64, FanIn>,
    next_fan_in: u64,
    /// Sends waiting for their group's members to be loaded.
    parked: HashMap<u64, Vec<(ReplyTo, Routed)>>,
    /// Sends forwarded to other nodes, by token: the node and where the answer goes.
    remote: HashMap<u64, (NodeId, ReplyTo, MessageId)>,
    next_token: u64,
    /// Forwards and returns of the input being handled, one batch per node.
    forwards: HashMap<NodeId, Vec<Forwarded>>,
    returns: HashMap<NodeId, Vec<Returned>>,
    /// PONGs waiting for the write that makes the acks before their PING durable.
    pongs: Vec<(ConnId, JobId, u64)>,
    /// The latest `now_ms` seen (the rate limiters' clock never goes back).
    now_ms: u64,
}

impl Router {
    /// A core for `cfg`, reading through `view`, verifying tokens with `verifier`.
    pub(crate) fn new(
        cfg: CoreConfig,
        view: Arc<dyn View>,
        verifier: VerifyingKey,
        slots: SlotMap,
        safety: Arc<Safety>,
        metrics: Arc<Metrics>,
    ) -> Router {
        let conns = Conns::new(
            cfg.limits.max_inflight as usize,
            cfg.limits.max_pending_sends,
        );
        let owner = Owner::new(cfg.limits.write_hold_ms, cfg.limits.max_held_bytes);
        Router {
            reports: Reports::new(cfg.retention_ms),
            cfg,
            view,
            verifier,
            slots,
            serving: true,
            safety,
            metrics,
            conns,
            owner,
            actions: VecDeque::new(),
            answers: Vec::new(),
            fan_ins: HashMap::new(),
            next_fan_in: 1,
            parked: HashMap::new(),
            remote: HashMap::new(),
            next_token: 1,
            forwards: HashMap::new(),
            returns: HashMap::new(),
            pongs: Vec::new(),
            now_ms: 0,
        }
    }

    fn cx(&mut self) -> (&mut Owner, Cx<'_>) {
        (
            &mut self.owner,
            Cx {
                view: &*self.view,
                conns: &mut self.conns,
                safety: &self.safety,
                metrics: &self.metrics,
                limits: &self.cfg.limits,
                slots: &self.slots,
                actions: &mut self.actions,
                answers: &mut self.answers,
            },
        )
    }

    /// Move the clock to `now_ms` (never back).
    fn tick_clock(&mut self, now_ms: u64) -> u64 {
        self.now_ms = self.now_ms.max(now_ms);
        self.safety.set_now_ms(self.now_ms);
        now_ms
    }

    // ---- inputs ----

    /// A new connection; `waker` is called when it has output.
    pub(crate) fn connect(&mut self, waker: Arc<dyn Wake>) -> ConnId {
        self.conns.add(waker)
    }

    /// A frame from connection `conn`, in arrival order.
    pub(crate) fn handle_frame(&mut self, conn: ConnId, frame: Frame, now_ms: u64) {
        let now_ms = self.tick_clock(now_ms);
        let Some(c) = self.conns.get_mut(conn) else {
            return;
        };
        match c.phase {
            Phase::AwaitingHello => match frame {
                Frame::Hello(h) => self.hello(conn, h, now_ms),
                _ => c.close(ErrorCode::ProtocolViolation, "first frame must be HELLO"),
            },
            Phase::Registering => c.early.push_back(frame),
            Phase::Open => {
                let auth = c.auth.clone().expect("an open connection is authenticated");
                self.open_frame(conn, &auth, frame, now_ms);
            }
            Phase::Closing => {}
        }
        self.flush_answers();
    }

    /// A `SEND`-family frame too large to read: answered without reading its payload.
    pub(crate) fn handle_oversized(&mut self, conn: ConnId, msg_id: MessageId, len: usize) {
        Metrics::inc(&self.metrics.refused);
        let message = format!(
            "frame of {len} bytes exceeds the envelope limit of {} bytes",
            self.cfg.limits.max_envelope_bytes
        );
        if let Some(c) = self.conns.get_mut(conn) {
            c.send(Refusal::new(ErrorCode::EnvelopeTooLarge, message).answer(msg_id));
        }
    }

    /// The connection's input is unusable (a malformed frame, or the stream finished inside a
    /// frame): tell the client why and close.
    pub(crate) fn handle_input_error(
        &mut self,
        conn: ConnId,
        code: ErrorCode,
        message: impl Into<Cow<'static, str>>,
    ) {
        self.fail(conn, code, message.into());
    }

    /// The client finished its stream (cleanly, between frames): close once answered.
    pub(crate) fn handle_finished(&mut self, conn: ConnId) {
        if let Some(c) = self.conns.get_mut(conn) {
            c.close(ErrorCode::Normal, "stream finished");
        }
    }

    /// The registration asked for at HELLO was written (or failed).
    pub(crate) fn handle_registered(
        &mut self,
        conn: ConnId,
        result: Result<(), StorageError>,
        now_ms: u64,
    ) {
        let now_ms = self.tick_clock(now_ms);
        if let Err(e) = result {
            tracing::error!(error = %e, "device registration failed");
            self.fail(conn, ErrorCode::Internal, "storage failure".into());
            return;
        }
        let l = &self.cfg.limits;
        let welcome = Frame::Welcome(Welcome {
            account: 0,
            device: 0,
            server_time_ms: now_ms,
            max_envelope: l.max_envelope_bytes as u32,
            max_inflight: l.max_inflight,
            idle_timeout_ms: self.cfg.idle_timeout_ms,
            max_pending_sends: l.max_pending_sends as u32,
        });
        let Some(c) = self.conns.get_mut(conn) else {
            return;
        };
        if c.phase != Phase::Registering {
            return;
        }
        let auth = c
            .auth
            .clone()
            .expect("registering connections are authenticated");
        c.phase = Phase::Open;
        c.send(match welcome {
            Frame::Welcome(w) => Frame::Welcome(Welcome {
                account: auth.key.account,
                device: auth.key.device,
                ..w
            }),
            other => other,
        });
        c.want_read();
        let early = std::mem::take(&mut c.early);
        if let Some(old) = self.conns.attach(auth.key, conn) {
            if let Some(o) = self.conns.get_mut(old) {
                o.close(
                    ErrorCode::Replaced,
                    "replaced by a newer connection of the same device",
                );
            }
            let (owner, mut cx) = self.cx();
            owner.device_offline(&mut cx, auth.key, now_ms);
        }
        for frame in early {
            match self.conns.get_mut(conn).map(|c| c.phase) {
                Some(Phase::Open) => self.open_frame(conn, &auth, frame, now_ms),
                _ => break,
            }
        }
        self.flush_answers();
    }

    /// A queue read asked for by [`ConnOutput::read`] came back.
    pub(crate) fn handle_queue_read(
        &mut self,
        conn: ConnId,
        read: QueueRead,
        result: Result<Vec<QueueEntry>, StorageError>,
        now_ms: u64,
    ) {
        let now_ms = self.tick_clock(now_ms);
        let entries = match result {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(error = %e, "queue read failed");
                self.fail(conn, ErrorCode::Internal, "storage failure".into());
                return;
            }
        };
        let Some(c) = self.conns.get_mut(conn) else {
            return;
        };
        // Neither expired entries nor acknowledged ones whose delete is not written yet.
        let seqs: Vec<(u64, bool)> = entries
            .iter()
            .map(|e| {
                let live =
                    e.envelope.expires_at_ms > now_ms && !self.owner.deleting(read.device, e.seq);
                (e.seq, live)
            })
            .collect();
        let send = c.delivery.on_read(read.max, &seqs);
        let mut next = send.iter().peekable();
        for e in &entries {
            if next.peek() == Some(&&e.seq) {
                next.next();
                Metrics::inc(&self.metrics.delivered);
                c.send(deliver_frame(e.seq, &e.envelope, e.group, e.header.clone()));
            }
        }
        c.read_done(entries.len() >= read.max && read.max > 0);
    }

    /// A store request handed out by [`ConnOutput::requests`] was performed.
    pub(crate) fn handle_request_done(
        &mut self,
        conn: ConnId,
        req_id: MessageId,
        request: Request,
        outcome: RequestOutcome,
        now_ms: u64,
    ) {
        let now_ms = self.tick_clock(now_ms);
        let frame = requests::answer(&self.safety, req_id, request, outcome, now_ms);
        self.answers.push((ReplyTo::Conn(conn), frame));
        self.flush_answers();
    }

    /// The write of `job` completed.
    pub(crate) fn handle_committed(
        &mut self,
        job: JobId,
        result: Result<WriteOutcome, StorageError>,
        now_ms: u64,
    ) {
        let now_ms = self.tick_clock(now_ms);
        let (owner, mut cx) = self.cx();
        owner.committed(&mut cx, job, result, now_ms);
        let poisoned = self.owner.poisoned();
        let (due, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.pongs)
            .into_iter()
            .partition(|(_, barrier, _)| *barrier <= job || poisoned);
        self.pongs = waiting;
        for (conn, _, nonce) in due {
            if let Some(c) = self.conns.get_mut(conn) {
                c.send(Frame::Pong(Pong { nonce }));
            }
        }
        self.flush_answers();
    }

    /// When the core wants [`Router::handle_timeout`] called (None: not until another input).
    pub(crate) fn poll_timeout(&self) -> Option<u64> {
        self.owner.timeout()
    }

    /// Time passed: write what waited long enough for acks.
    pub(crate) fn handle_timeout(&mut self, now_ms: u64) {
        let now_ms = self.tick_clock(now_ms);
        let (owner, mut cx) = self.cx();
        owner.flush(&mut cx, now_ms);
    }

    /// A group asked for with [`Action::LoadGroup`] was read (None: no such group).
    pub(crate) fn handle_group_loaded(
        &mut self,
        group: u64,
        result: Result<Option<Arc<Vec<u64>>>, StorageError>,
        now_ms: u64,
    ) {
        let now_ms = self.tick_clock(now_ms);
        for (reply, r) in self.parked.remove(&group).unwrap_or_default() {
            let answer = match &result {
                Ok(members) => self.resolve_group(reply, r, members.clone(), now_ms),
                Err(e) => {
                    tracing::error!(error = %e, "loading a group failed");
                    Metrics::inc(&self.metrics.refused);
                    Answer::Now(Refusal::internal().answer(r.msg_id()))
                }
            };
            if let Answer::Now(frame) = answer {
                self.answers.push((reply, frame));
            }
        }
        self.flush_answers();
    }

    /// Sends another node forwarded here, for slots it believes this node owns.
    pub(crate) fn handle_forwarded(&mut self, from: NodeId, batch: Vec<Forwarded>, now_ms: u64) {
        let now_ms = self.tick_clock(now_ms);
        for Forwarded { token, routed } in batch {
            let reply = ReplyTo::Remote { node: from, token };
            let msg_id = routed.msg_id();
            let refusal = match self.slots.fence(routed.slot_key(), routed.epoch) {
                Fence::Accept => None,
                Fence::Moved { owner } => Some(
                    Refusal::new(
                        ErrorCode::Moved,
                        format!("the slot moved to node {owner}; route again"),
                    )
                    .retry_after(10),
                ),
                Fence::Sealed => Some(
                    Refusal::new(ErrorCode::Moved, "the slot is moving; retry shortly")
                        .retry_after(100),
                ),
                Fence::Behind => Some(
                    Refusal::new(
                        ErrorCode::Moved,
                        "the owner is catching up with the slot map",
                    )
                    .retry_after(50),
                ),
            };
            let answer = match refusal {
                Some(r) => {
                    Metrics::inc(&self.metrics.refused);
                    Answer::Now(r.answer(msg_id))
                }
                None => self.route_one(reply, routed, now_ms),
            };
            if let Answer::Now(frame) = answer {
                self.answer(reply, frame);
            }
        }
        self.flush_answers();
    }

    /// Answers to sends this node forwarded.
    pub(crate) fn handle_returned(&mut self, batch: Vec<Returned>) {
        for Returned { token, frame } in batch {
            if let Some((_, reply, _)) = self.remote.remove(&token) {
                self.answer(reply, frame);
            }
        }
        self.flush_answers();
    }

    /// The link to `node` failed with forwarded sends unanswered: answer them with a refusal
    /// to retry (a retry with the same message id is deduplicated where it was stored).
    pub(crate) fn node_lost(&mut self, node: NodeId) {
        let lost: Vec<u64> = self
            .remote
            .iter()
            .filter(|(_, (n, _, _))| *n == node)
            .map(|(t, _)| *t)
            .collect();
        for token in lost {
            if let Some((_, reply, msg_id)) = self.remote.remove(&token) {
                let r = Refusal::new(ErrorCode::Overloaded, "the owner node is unreachable")
                    .retry_after(200);
                self.answer(reply, r.answer(msg_id));
            }
        }
        self.flush_answers();
    }

    /// The slot map changed.
    pub(crate) fn set_slot_map(&mut self, map: SlotMap) {
        self.slots = map;
    }

    /// Whether this node may accept writes for its slots (cluster: its lease is live and its
    /// map current). While not, sends to its slots are refused with a retry and new devices
    /// are turned away with `GOING_AWAY`.
    pub(crate) fn set_serving(&mut self, serving: bool) {
        self.serving = serving;
    }

    /// The connection is gone (closed by either side, or lost).
    pub(crate) fn handle_disconnected(&mut self, conn: ConnId) {
        let key = self
            .conns
            .get_mut(conn)
            .and_then(|c| c.auth.as_ref().map(|a| a.key));
        self.conns.remove(conn);
        if let Some(key) = key {
            let now_ms = self.now_ms;
            let (owner, mut cx) = self.cx();
            owner.device_offline(&mut cx, key, now_ms);
        }
    }

    /// The driver stopped waiting for the answers of a closing connection.
    pub(crate) fn handle_close_timeout(&mut self, conn: ConnId) {
        if let Some(c) = self.conns.get_mut(conn) {
            c.force_close();
        }
    }

    /// An operator removed a device: close its connection and forget it.
    pub(crate) fn device_removed(&mut self, key: DeviceKey) {
        if let Some(c) = self.conns.online(key) {
            c.close(ErrorCode::DeviceRemoved, "the device was removed");
        }
        self.owner.forget_device(key);
    }

    /// An account was erased: forget everything held in memory about it.
    pub(crate) fn account_purged(&mut self, account: u64) {
        self.safety.forget(account);
        self.reports.forget(account);
    }

    /// Close every connection with `code` (shutdown), once its taken sends are answered.
    pub(crate) fn close_all(&mut self, code: ErrorCode, reason: &'static str) {
        for id in self.conns.ids() {
            if let Some(c) = self.conns.get_mut(id) {
                c.close(code, reason);
            }
        }
    }

    /// A new connection from `ip` is being accepted (before the handshake work): the per-source
    /// rate limit.
    pub(crate) fn check_new_connection(
        &mut self,
        ip: std::net::IpAddr,
        now_ms: u64,
    ) -> Result<(), safety::Refusal> {
        self.tick_clock(now_ms);
        self.safety.check_connection(ip)
    }

    /// Housekeeping, every second or so: drop metadata older than the retention window.
    pub(crate) fn tick(&mut self, now_ms: u64) {
        let now_ms = self.tick_clock(now_ms);
        self.safety.expire(now_ms);
        self.reports.expire(now_ms);
    }

    // ---- outputs ----

    /// The next node-wide action.
    pub(crate) fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// What the driver must do for `conn` now.
    pub(crate) fn poll_conn(&mut self, conn: ConnId) -> ConnOutput {
        self.conns.output(conn)
    }

    /// Whether `key` has an open connection.
    pub(crate) fn is_online(&self, key: DeviceKey) -> bool {
        self.conns.is_online(key)
    }

    /// Whether a write failed (the node stores nothing more and is not ready).
    pub(crate) fn poisoned(&self) -> bool {
        self.owner.poisoned()
    }

    // ---- stages ----

    /// Close with `code`: the client is told why in an ERROR frame, then the connection closes.
    fn fail(&mut self, conn: ConnId, code: ErrorCode, message: Cow<'static, str>) {
        if let Some(c) = self.conns.get_mut(conn) {
            c.close(code, message);
        }
    }

    fn hello(&mut self, conn: ConnId, h: Hello, now_ms: u64) {
        match self.admit(h, now_ms) {
            Ok((auth, _)) if !self.slots.is_local(auth.key.account) => {
                // Another node serves the account: tell the device where, then close.
                let owner = self.slots.owner_of(auth.key.account);
                let epoch = self.slots.epoch();
                let addr = self.slots.addr(owner).map(str::to_owned);
                let c = self.conns.get_mut(conn).expect("checked by the caller");
                match addr {
                    Some(addr) => {
                        c.send(Frame::Redirect(Redirect { epoch, addr }));
                        c.close(
                            ErrorCode::Redirected,
                            format!("the account is served by node {owner}"),
                        );
                    }
                    None => c.close(
                        ErrorCode::GoingAway,
                        "the node serving the account is unavailable; retry later",
                    ),
                }
            }
            Ok(_) if !self.serving => self.fail(
                conn,
                ErrorCode::GoingAway,
                "this node is not serving yet (cluster map or lease not current)".into(),
            ),
            Ok((auth, registration)) => {
                let c = self.conns.get_mut(conn).expect("checked by the caller");
                c.auth = Some(auth);
                c.phase = Phase::Registering;
                c.register(registration);
            }
            Err(r) => self.fail(conn, r.code, r.message),
        }
    }

    /// Check a HELLO: version, token, network, residency, slot ownership.
    fn admit(&self, h: Hello, now_ms: u64) -> Result<(Authenticated, Registration), Refusal> {
        if h.version != PROTOCOL_VERSION {
            let why = format!(
                "protocol version {} is not supported ({PROTOCOL_VERSION} is)",
                h.version
            );
            return Err(Refusal::new(ErrorCode::UnsupportedVersion, why));
        }
        let (claims, scope) = self
            .verifier
            .verify_scoped(&h.token, now_ms / 1000)
            .map_err(|e| {
                let code = match e {
                    hearth_protocol::TokenError::Expired => ErrorCode::TokenExpired,
                    _ => ErrorCode::BadToken,
                };
                Refusal::new(code, e.to_string())
            })?;
        let privacy = &self.cfg.privacy;
        let network = match scope.network.as_str() {
            "" => privacy.default_network.clone(),
            n if privacy.networks.iter().any(|k| k == n) => n.to_string(),
            _ => return Err(Refusal::new(ErrorCode::BadToken, "unknown network")),
        };
        let zone = match scope.zone.as_str() {
            "" => self.cfg.residency.default_zone.clone(),
            z => z.to_string(),
        };
        if !self.cfg.residency.allows(&zone, &self.cfg.region) {
            let why = format!(
                "zone {zone:?} may not be stored in region {:?}",
                self.cfg.region
            );
            return Err(Refusal::new(ErrorCode::Residency, why));
        }
        let key = DeviceKey::new(claims.account, claims.device);
        let auth = Authenticated {
            key,
            network: network.as_str().into(),
        };
        Ok((auth, Registration { key, network, zone }))
    }

    /// A frame of an open connection.
    fn open_frame(&mut self, conn: ConnId, auth: &Authenticated, frame: Frame, now_ms: u64) {
        let origin = Origin {
            node: self.slots.local(),
            conn,
            device: auth.key,
            network: auth.network.clone(),
        };
        match frame {
            Frame::Send(s) => {
                let id = s.msg_id;
                let r = self
                    .cx()
                    .1
                    .ingress_send(&origin, s, now_ms)
                    .map(|r| vec![r]);
                self.dispatch(conn, id, r, now_ms);
            }
            Frame::SendSealed(s) => {
                let id = s.msg_id;
                let r = self
                    .cx()
                    .1
                    .ingress_sealed(&origin, s, now_ms)
                    .map(|r| vec![r]);
                self.dispatch(conn, id, r, now_ms);
            }
            Frame::SendGroup(s) => {
                let id = s.msg_id;
                let r = self
                    .cx()
                    .1
                    .ingress_group(&origin, s, now_ms)
                    .map(|r| vec![r]);
                self.dispatch(conn, id, r, now_ms);
            }
            Frame::SendMulti(s) => {
                let id = s.msg_id;
                let r = self.cx().1.ingress_multi(&origin, s, now_ms);
                self.dispatch(conn, id, r, now_ms);
            }
            Frame::Ack(a) => {
                let c = self.conns.get_mut(conn).expect("open");
                c.delivery.on_ack(&a.seqs);
                if c.delivery.behind() {
                    c.want_read();
                }
                let (owner, mut cx) = self.cx();
                owner.ack(&mut cx, auth.key, a.seqs, now_ms);
            }
            Frame::Ping(p) => {
                // PONG promises that every earlier frame was applied, acks included: it waits
                // for the write that deletes what this device acknowledged.
                match self.owner.ack_barrier(auth.key) {
                    Some(job) => self.pongs.push((conn, job, p.nonce)),
                    None => {
                        let c = self.conns.get_mut(conn).expect("open");
                        c.send(Frame::Pong(Pong { nonce: p.nonce }));
                    }
                }
            }
            Frame::Report(r) => {
                let frame = self
                    .reports
                    .report(&self.safety, auth.key.account, r, now_ms);
                self.conns.get_mut(conn).expect("open").send(frame);
            }
            f @ (Frame::GroupCreate(_)
            | Frame::GroupUpdate(_)
            | Frame::GroupGet(_)
            | Frame::PolicySet(_)) => {
                let checked = requests::check(
                    &*self.view,
                    &self.cfg.limits,
                    &self.cfg.privacy,
                    auth.key,
                    f,
                );
                let c = self.conns.get_mut(conn).expect("open");
                match checked {
                    Ok((req_id, request)) => c.request(req_id, request),
                    Err((req_id, refusal)) => {
                        Metrics::inc(&self.metrics.refused);
                        c.send(refusal.answer(req_id));
                    }
                }
            }
            other => {
                let why = format!("frame type 0x{:02x} is not allowed here", other.type_byte());
                self.fail(conn, ErrorCode::ProtocolViolation, why.into());
            }
        }
    }

    /// Route the parts of a send that passed ingress, and answer it now or count it as taken.
    fn dispatch(
        &mut self,
        conn: ConnId,
        msg_id: MessageId,
        parts: Result<Vec<Routed>, Refusal>,
        now_ms: u64,
    ) {
        let answer = match parts {
            Ok(parts) => self.route(ReplyTo::Conn(conn), parts, now_ms),
            Err(refusal) => {
                Metrics::inc(&self.metrics.refused);
                Answer::Now(refusal.answer(msg_id))
            }
        };
        if let Some(c) = self.conns.get_mut(conn) {
            match answer {
                Answer::Now(frame) => c.send(frame),
                Answer::Later => c.unanswered += 1,
            }
        }
    }

    /// Hand each part to the owner of its slot; several parts answer as one.
    fn route(&mut self, reply: ReplyTo, mut parts: Vec<Routed>, now_ms: u64) -> Answer {
        if parts.len() == 1 {
            let part = parts.pop().expect("one part");
            return self.route_one(reply, part, now_ms);
        }
        let id = self.next_fan_in;
        self.next_fan_in += 1;
        let msg_id = parts.first().map_or(MessageId::NONE, |p| p.msg_id());
        self.fan_ins.insert(
            id,
            FanIn {
                reply,
                msg_id,
                left: parts.len(),
                accepted_at_ms: u64::MAX,
                recipients: 0,
                refusal: None,
            },
        );
        for part in parts {
            if let Answer::Now(frame) = self.route_one(ReplyTo::FanIn(id), part, now_ms) {
                self.fan_in(id, frame);
            }
        }
        match self.fan_ins.get(&id) {
            Some(f) if f.left == 0 => Answer::Now(self.finish_fan_in(id)),
            _ => Answer::Later,
        }
    }

    /// One part, at its owner: here, or on another node.
    fn route_one(&mut self, reply: ReplyTo, r: Routed, now_ms: u64) -> Answer {
        let node = self.slots.owner_of(r.slot_key());
        if node != self.slots.local() {
            // The cluster's links carry it, and its answer, between nodes.
            let token = self.next_token;
            self.next_token += 1;
            self.remote.insert(token, (node, reply, r.msg_id()));
            self.forwards
                .entry(node)
                .or_default()
                .push(Forwarded { token, routed: r });
            return Answer::Later;
        }
        if !self.serving {
            Metrics::inc(&self.metrics.refused);
            let why = "this node is not serving its slots now (cluster lease or map)";
            let refusal = Refusal::new(ErrorCode::Overloaded, why).retry_after(200);
            return Answer::Now(refusal.answer(r.msg_id()));
        }
        match r.target {
            Target::Group { group } => match self.view.group_members(group) {
                Loaded::Ready(members) => self.resolve_group(reply, r, members, now_ms),
                Loaded::NotLoaded => {
                    let waiting = self.parked.entry(group).or_default();
                    if waiting.is_empty() {
                        self.actions.push_back(Action::LoadGroup { group });
                    }
                    waiting.push((reply, r));
                    Answer::Later
                }
            },
            _ => {
                let (owner, mut cx) = self.cx();
                owner.handle(&mut cx, r, reply, now_ms)
            }
        }
    }

    /// The group owner's part of a group send: check the sender is a member, then one part
    /// per owner of the members' slots.
    fn resolve_group(
        &mut self,
        reply: ReplyTo,
        r: Routed,
        members: Option<Arc<Vec<u64>>>,
        now_ms: u64,
    ) -> Answer {
        let msg_id = r.msg_id();
        let Target::Group { group } = r.target else {
            unreachable!("only group sends are resolved");
        };
        let refuse = |code, msg: &'static str| Answer::Now(Refusal::new(code, msg).answer(msg_id));
        let Some(members) = members else {
            Metrics::inc(&self.metrics.refused);
            return refuse(ErrorCode::NoSuchGroup, "no such group");
        };
        if members.binary_search(&r.origin.device.account).is_err() {
            Metrics::inc(&self.metrics.refused);
            return refuse(ErrorCode::NotAMember, "only members may send to a group");
        }
        let mut by_owner: Vec<(NodeId, Vec<u64>)> = Vec::new();
        for &m in members.iter() {
            let node = self.slots.owner_of(m);
            match by_owner.iter_mut().find(|(n, _)| *n == node) {
                Some((_, accounts)) => accounts.push(m),
                None => by_owner.push((node, vec![m])),
            }
        }
        let parts = by_owner
            .into_iter()
            .map(|(_, accounts)| Routed {
                origin: r.origin.clone(),
                epoch: r.epoch,
                env: r.env.clone(),
                target: Target::Members { group, accounts },
            })
            .collect();
        self.route(reply, parts, now_ms)
    }

    /// One part of a fan-in answered.
    fn fan_in(&mut self, id: u64, frame: Frame) {
        let Some(f) = self.fan_ins.get_mut(&id) else {
            return;
        };
        f.left -= 1;
        match frame {
            Frame::Accepted(a) => {
                f.accepted_at_ms = f.accepted_at_ms.min(a.accepted_at_ms);
                f.recipients += a.recipients;
            }
            other => {
                f.refusal.get_or_insert(other);
            }
        }
    }

    /// The whole answer of a fan-in whose parts all answered.
    fn finish_fan_in(&mut self, id: u64) -> Frame {
        let f = self.fan_ins.remove(&id).expect("a finished fan-in");
        f.refusal.unwrap_or(Frame::Accepted(Accepted {
            msg_id: f.msg_id,
            accepted_at_ms: f.accepted_at_ms,
            recipients: f.recipients,
        }))
    }

    /// Deliver the later answers collected while handling an input, and hand the driver the
    /// batches for other nodes.
    fn flush_answers(&mut self) {
        while !self.answers.is_empty() {
            for (reply, frame) in std::mem::take(&mut self.answers) {
                self.answer(reply, frame);
            }
        }
        for (node, batch) in self.forwards.drain() {
            self.actions.push_back(Action::Forward { node, batch });
        }
        for (node, batch) in self.returns.drain() {
            self.actions.push_back(Action::Return { node, batch });
        }
    }

    fn answer(&mut self, reply: ReplyTo, frame: Frame) {
        match reply {
            ReplyTo::Conn(id) => {
                if let Some(c) = self.conns.get_mut(id) {
                    c.unanswered = c.unanswered.saturating_sub(1);
                    c.send(frame);
                }
            }
            ReplyTo::Remote { node, token } => {
                self.returns
                    .entry(node)
                    .or_default()
                    .push(Returned { token, frame });
            }
            ReplyTo::FanIn(id) => {
                self.fan_in(id, frame);
                if self.fan_ins.get(&id).is_some_and(|f| f.left == 0) {
                    let reply = self.fan_ins[&id].reply;
                    let whole = self.finish_fan_in(id);
                    self.answer(reply, whole);
                }
            }
        }
    }
}
