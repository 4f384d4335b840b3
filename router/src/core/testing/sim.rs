//! The simulation harness: the routing core driven by simulated connections, the in-memory
//! store model and a virtual clock, with no sockets and no threads (as quinn-proto's tests
//! drive a connection pair through in-memory queues). Writes commit when the test says so, or
//! whenever nothing else is left to do (`run`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use hearth_protocol::{
    Ack, ErrorCode, Frame, Hello, MessageId, Scope, Send, SigningKey, TokenClaims, PROTOCOL_VERSION,
};
use hearth_storage::DeviceKey;

use super::mem::MemStore;
use crate::config::{Limits, Privacy, Residency};
use crate::core::{Action, ConnId, CoreConfig, NodeId, Router, SlotMap, Wake};
use crate::metrics::Metrics;
use crate::safety::{Safety, SafetyConfig};

/// The start of virtual time (a plausible wall clock, in ms).
pub(crate) const T0: u64 = 1_700_000_000_000;

struct Flag(Arc<AtomicBool>);

impl Wake for Flag {
    fn wake(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// One simulated connection.
pub(crate) struct Client {
    woken: Arc<AtomicBool>,
    /// Frames the node wrote to it, not yet taken.
    pub frames: Vec<Frame>,
    /// How the node closed it, once it did.
    pub closed: Option<(ErrorCode, String)>,
    /// Whether the node takes more input from it.
    pub accepting: bool,
}

/// Knobs of a simulation.
#[derive(Clone)]
pub(crate) struct Setup {
    pub limits: Limits,
    pub safety: SafetyConfig,
    pub privacy: Privacy,
    pub residency: Residency,
    pub region: String,
}

impl Default for Setup {
    fn default() -> Setup {
        Setup {
            limits: Limits::default(),
            safety: SafetyConfig::permissive(),
            privacy: Privacy::default(),
            residency: Residency::default(),
            region: "local".into(),
        }
    }
}

/// The core under simulation.
pub(crate) struct Sim {
    pub core: Router,
    pub store: Arc<MemStore>,
    pub now_ms: u64,
    signing: SigningKey,
    pub clients: BTreeMap<ConnId, Client>,
    /// Push wake-ups asked for: (token, urgent).
    pub wakeups: Vec<(Bytes, bool)>,
    /// Commit writes whenever the simulation is otherwise idle.
    pub auto_commit: bool,
    /// Let virtual time pass to the core's next timeout whenever the simulation is idle.
    pub auto_advance: bool,
    /// Bytes for other nodes (a cluster of simulations passes them on).
    pub outbox: Vec<(NodeId, Wire)>,
}

/// Bytes between two simulated nodes.
pub(crate) enum Wire {
    /// An encoded `Forwarded`.
    Forward(Bytes),
    /// An encoded `Returned`.
    Return(Bytes),
}

impl Sim {
    pub(crate) fn new() -> Sim {
        Sim::with(Setup::default())
    }

    pub(crate) fn with(setup: Setup) -> Sim {
        Sim::node(setup, SlotMap::single(0), SigningKey::generate())
    }

    /// Node `map.local()` of a cluster whose devices hold tokens of `signing`.
    pub(crate) fn node(setup: Setup, map: SlotMap, signing: SigningKey) -> Sim {
        let store = Arc::new(MemStore::new(setup.limits.dedup_window_secs * 1000));
        let core = Router::new(
            CoreConfig {
                retention_ms: setup.safety.retention_secs * 1000,
                limits: setup.limits,
                privacy: setup.privacy,
                residency: setup.residency,
                region: setup.region,
                idle_timeout_ms: 30_000,
            },
            store.clone(),
            signing.verifying_key(),
            map,
            Arc::new(Safety::new(setup.safety)),
            Arc::new(Metrics::default()),
        );
        let mut sim = Sim {
            core,
            store,
            now_ms: T0,
            signing,
            clients: BTreeMap::new(),
            wakeups: Vec::new(),
            auto_commit: true,
            auto_advance: true,
            outbox: Vec::new(),
        };
        sim.core.tick(T0);
        sim
    }

    /// A token for `key` in `network`/`zone` (empty: the defaults), valid for a day.
    pub(crate) fn token(&self, key: DeviceKey, network: &str, zone: &str) -> String {
        let claims = TokenClaims {
            account: key.account,
            device: key.device,
            expires_at: self.now_ms / 1000 + 86_400,
        };
        let scope = Scope {
            network: network.into(),
            zone: zone.into(),
        };
        self.signing
            .issue_scoped(&claims, &scope)
            .expect("valid scope")
    }

    /// A new connection that has sent nothing yet.
    pub(crate) fn open(&mut self, key: DeviceKey) -> ConnId {
        let woken = Arc::new(AtomicBool::new(false));
        let id = self.core.connect(Arc::new(Flag(woken.clone())));
        let _ = key;
        self.clients.insert(
            id,
            Client {
                woken,
                frames: Vec::new(),
                closed: None,
                accepting: true,
            },
        );
        id
    }

    /// Connect `key` (default network and zone) and run until WELCOME; panics if refused.
    pub(crate) fn connect(&mut self, key: DeviceKey) -> ConnId {
        self.connect_in(key, "")
    }

    /// Connect `key` with a token of `network`.
    pub(crate) fn connect_in(&mut self, key: DeviceKey, network: &str) -> ConnId {
        let id = self.open(key);
        let token = self.token(key, network, "");
        self.input(
            id,
            Frame::Hello(Hello {
                version: PROTOCOL_VERSION,
                token,
            }),
        );
        self.run();
        let frames = self.take(id);
        assert!(
            matches!(frames.first(), Some(Frame::Welcome(_))),
            "no WELCOME for {key:?}: {frames:?}"
        );
        // Whatever came after WELCOME (a drained queue) stays for the test to take.
        self.clients.get_mut(&id).expect("open").frames = frames[1..].to_vec();
        id
    }

    /// Feed one frame from connection `id`.
    pub(crate) fn input(&mut self, id: ConnId, frame: Frame) {
        self.core.handle_frame(id, frame, self.now_ms);
    }

    /// `SEND` from `id` to `to`, message id `msg`.
    pub(crate) fn send(&mut self, id: ConnId, to: DeviceKey, msg: u128, payload: &'static [u8]) {
        self.send_with(id, to, msg, 0, 0, payload);
    }

    /// `SEND` with flags and TTL.
    pub(crate) fn send_with(
        &mut self,
        id: ConnId,
        to: DeviceKey,
        msg: u128,
        flags: u8,
        ttl_secs: u32,
        payload: &'static [u8],
    ) {
        self.input(
            id,
            Frame::Send(Send {
                msg_id: MessageId::from_u128(msg),
                to_account: to.account,
                to_device: to.device,
                ttl_secs,
                flags,
                payload: Bytes::from_static(payload),
            }),
        );
    }

    /// `ACK` of `seqs` from `id`.
    pub(crate) fn ack(&mut self, id: ConnId, seqs: Vec<u64>) {
        self.input(id, Frame::Ack(Ack { seqs }));
    }

    /// The connection went away.
    pub(crate) fn disconnect(&mut self, id: ConnId) {
        self.core.handle_disconnected(id);
        self.clients.remove(&id);
    }

    /// Move the virtual clock (firing the core's timeout if it comes due).
    pub(crate) fn advance(&mut self, ms: u64) {
        self.now_ms += ms;
        self.core.tick(self.now_ms);
        if self.core.poll_timeout().is_some_and(|t| t <= self.now_ms) {
            self.core.handle_timeout(self.now_ms);
        }
    }

    /// Commit the oldest submitted write; false if none.
    pub(crate) fn commit(&mut self) -> bool {
        match self.store.commit_one() {
            Some((job, outcomes)) => {
                self.core.handle_committed(job, Ok(outcomes), self.now_ms);
                true
            }
            None => false,
        }
    }

    /// Move virtual time to the core's next timeout and fire it; false if it has none.
    pub(crate) fn fire_timeout(&mut self) -> bool {
        let Some(due) = self.core.poll_timeout() else {
            return false;
        };
        self.now_ms = self.now_ms.max(due);
        self.core.handle_timeout(self.now_ms);
        true
    }

    /// Perform what the core asks until nothing is left (committing writes when idle if
    /// `auto_commit`).
    pub(crate) fn run(&mut self) {
        loop {
            if self.step() {
                continue;
            }
            if self.auto_commit && self.commit() {
                continue;
            }
            if self.auto_advance && self.fire_timeout() {
                continue;
            }
            return;
        }
    }

    /// Perform one round of actions and connection outputs; false if there was nothing.
    pub(crate) fn step(&mut self) -> bool {
        let mut progress = false;
        while let Some(a) = self.core.poll_action() {
            progress = true;
            match a {
                Action::Enqueue { job, write } => self.store.submit(job, write),
                Action::LoadGroup { group } => {
                    let members = self.store.load_group(group);
                    self.core
                        .handle_group_loaded(group, Ok(members), self.now_ms);
                }
                Action::Wake { token, urgent } => self.wakeups.push((token, urgent)),
                Action::Forward { node, batch } => {
                    for f in batch {
                        let mut b = BytesMut::new();
                        f.encode(&mut b);
                        self.outbox.push((node, Wire::Forward(b.freeze())));
                    }
                }
                Action::Return { node, batch } => {
                    for r in batch {
                        let mut b = BytesMut::new();
                        r.encode(&mut b);
                        self.outbox.push((node, Wire::Return(b.freeze())));
                    }
                }
            }
        }
        let woken: Vec<ConnId> = self
            .clients
            .iter()
            .filter(|(_, c)| c.woken.swap(false, Ordering::SeqCst))
            .map(|(id, _)| *id)
            .collect();
        for id in woken {
            progress = true;
            let out = self.core.poll_conn(id);
            let now = self.now_ms;
            let client = self.clients.get_mut(&id).expect("woken clients exist");
            client.frames.extend(out.frames);
            client.accepting = out.accepting;
            if let Some(r) = out.register {
                self.store.register(&r, now);
                self.core.handle_registered(id, Ok(()), now);
            }
            if let Some(read) = out.read {
                let entries = self.store.read_queue(read.device, read.from_seq, read.max);
                self.core.handle_queue_read(id, read, Ok(entries), now);
            }
            for (req_id, request) in out.requests {
                let outcome = self.store.request(&request);
                self.core
                    .handle_request_done(id, req_id, request, outcome, now);
            }
            if let Some((code, reason)) = out.close {
                let client = self.clients.get_mut(&id).expect("woken clients exist");
                client.closed = Some((code, reason.into_owned()));
                self.core.handle_disconnected(id);
            }
        }
        progress
    }

    /// Frames written to `id` since the last take.
    pub(crate) fn take(&mut self, id: ConnId) -> Vec<Frame> {
        match self.clients.get_mut(&id) {
            Some(c) => std::mem::take(&mut c.frames),
            None => Vec::new(),
        }
    }

    /// How the node closed `id`, if it did.
    pub(crate) fn closed(&self, id: ConnId) -> Option<(ErrorCode, String)> {
        self.clients.get(&id).and_then(|c| c.closed.clone())
    }
}
