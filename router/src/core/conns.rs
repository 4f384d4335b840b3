//! Connections as the core sees them: their phase (HELLO, registration, open, closing), the
//! frames waiting to be written, the delivery window of the device, and the index of which
//! connection serves which device.

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use hearth_protocol::{ErrorCode, Frame, MessageId, Refusal};
use hearth_storage::DeviceKey;

use super::action::{ConnId, ConnOutput, QueueRead, Registration, Request, Wake};
use super::delivery::DeliveryState;

/// Ephemeral envelopes waiting to be written to one connection, at most; beyond, they are
/// dropped (they are never stored, and a reader that slow would see them late anyway).
const MAX_QUEUED_EPHEMERAL: usize = 1024;

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// Waiting for HELLO.
    AwaitingHello,
    /// HELLO accepted; the device's registration is being written.
    Registering,
    /// WELCOME sent: frames flow.
    Open,
    /// No more input is taken; the connection closes once its taken sends are answered.
    Closing,
}

/// The device a connection speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Authenticated {
    /// The device.
    pub key: DeviceKey,
    /// The network (app) its token names.
    pub network: Arc<str>,
}

/// One connection.
pub(super) struct Conn {
    waker: Arc<dyn Wake>,
    woken: bool,
    pub phase: Phase,
    /// The device, once HELLO was accepted.
    pub auth: Option<Authenticated>,
    out: Vec<Frame>,
    ephemeral_queued: usize,
    /// Frames that arrived while the registration was being written, handled after WELCOME.
    pub early: VecDeque<Frame>,
    register: Option<Registration>,
    requests: Vec<(MessageId, Request)>,
    /// The device's delivery window (meaningful once open).
    pub delivery: DeliveryState,
    /// A queue read is wanted (new entries may be readable).
    read_wanted: bool,
    /// A queue read was handed out and not answered yet.
    reading: bool,
    /// Sends and requests taken and not answered yet.
    pub unanswered: usize,
    /// Why it closes, once it must.
    close: Option<(ErrorCode, Cow<'static, str>)>,
    close_taken: bool,
}

impl Conn {
    fn new(waker: Arc<dyn Wake>, max_inflight: usize) -> Conn {
        Conn {
            waker,
            woken: false,
            phase: Phase::AwaitingHello,
            auth: None,
            out: Vec::new(),
            ephemeral_queued: 0,
            early: VecDeque::new(),
            register: None,
            requests: Vec::new(),
            delivery: DeliveryState::new(max_inflight),
            read_wanted: false,
            reading: false,
            unanswered: 0,
            close: None,
            close_taken: false,
        }
    }

    fn wake(&mut self) {
        if !self.woken {
            self.woken = true;
            self.waker.wake();
        }
    }

    /// Queue a frame for writing.
    pub(super) fn send(&mut self, frame: Frame) {
        self.out.push(frame);
        self.wake();
    }

    /// Queue an ephemeral delivery; false if too many are waiting already (it is dropped).
    pub(super) fn send_ephemeral(&mut self, frame: Frame) -> bool {
        if self.ephemeral_queued >= MAX_QUEUED_EPHEMERAL {
            return false;
        }
        self.ephemeral_queued += 1;
        self.send(frame);
        true
    }

    /// Hand a registration to the driver.
    pub(super) fn register(&mut self, r: Registration) {
        self.register = Some(r);
        self.wake();
    }

    /// Hand a store request to the driver.
    pub(super) fn request(&mut self, req_id: MessageId, r: Request) {
        self.unanswered += 1;
        self.requests.push((req_id, r));
        self.wake();
    }

    /// Note that the queue may hold entries to deliver.
    pub(super) fn want_read(&mut self) {
        self.read_wanted = true;
        self.wake();
    }

    /// A queue read came back.
    pub(super) fn read_done(&mut self, full_page: bool) {
        self.reading = false;
        if full_page {
            self.read_wanted = true;
        }
        self.wake();
    }

    /// Start closing with `code`: input stops at once; the close itself (an ERROR frame with
    /// the reason, unless the close is normal, then the close) waits until the taken sends are
    /// answered (see [`Conn::output`]). The first reason wins.
    pub(super) fn close(&mut self, code: ErrorCode, reason: impl Into<Cow<'static, str>>) {
        if self.close.is_none() {
            self.close = Some((code, reason.into()));
            self.phase = Phase::Closing;
            self.early.clear();
        }
        self.wake();
    }

    /// Stop waiting for the unanswered sends (the driver gave up on them).
    pub(super) fn force_close(&mut self) {
        self.unanswered = 0;
        self.wake();
    }

    /// Whether more input is welcome now.
    fn accepting(&self, max_unanswered: usize) -> bool {
        !matches!(self.phase, Phase::Closing) && self.unanswered + self.early.len() < max_unanswered
    }

    /// Everything waiting for the driver.
    fn output(&mut self, max_unanswered: usize) -> ConnOutput {
        self.woken = false;
        self.ephemeral_queued = 0;
        let read = match (&self.phase, &self.auth, self.read_wanted && !self.reading) {
            (Phase::Open, Some(a), true) => match self.delivery.want_read() {
                Some(r) => {
                    self.read_wanted = false;
                    self.reading = true;
                    Some(QueueRead {
                        device: a.key,
                        from_seq: r.from_seq,
                        max: r.max,
                    })
                }
                None => {
                    self.read_wanted = false;
                    None
                }
            },
            _ => None,
        };
        let close = match &self.close {
            Some((code, reason)) if self.unanswered == 0 && !self.close_taken => {
                self.close_taken = true;
                // The last frame says why (a normal close needs no reason).
                if *code != ErrorCode::Normal {
                    let why = Refusal::new(*code, reason.clone());
                    self.out.push(why.answer(MessageId::NONE));
                }
                Some((*code, reason.clone()))
            }
            _ => None,
        };
        ConnOutput {
            frames: std::mem::take(&mut self.out),
            register: self.register.take(),
            read,
            requests: std::mem::take(&mut self.requests),
            closing: self.close.is_some(),
            close,
            accepting: self.accepting(max_unanswered),
        }
    }
}

/// Every connection, and which one serves each device.
pub(super) struct Conns {
    next: ConnId,
    by_id: HashMap<ConnId, Conn>,
    online: HashMap<DeviceKey, ConnId>,
    max_inflight: usize,
    max_unanswered: usize,
}

impl Conns {
    pub(super) fn new(max_inflight: usize, max_unanswered: usize) -> Conns {
        Conns {
            next: 1,
            by_id: HashMap::new(),
            online: HashMap::new(),
            max_inflight,
            max_unanswered: max_unanswered.max(1),
        }
    }

    /// A new connection, waiting for HELLO.
    pub(super) fn add(&mut self, waker: Arc<dyn Wake>) -> ConnId {
        let id = self.next;
        self.next += 1;
        self.by_id.insert(id, Conn::new(waker, self.max_inflight));
        id
    }

    pub(super) fn get_mut(&mut self, id: ConnId) -> Option<&mut Conn> {
        self.by_id.get_mut(&id)
    }

    /// The connection serving `key`, if it is open.
    pub(super) fn online(&mut self, key: DeviceKey) -> Option<&mut Conn> {
        let id = *self.online.get(&key)?;
        self.by_id.get_mut(&id)
    }

    pub(super) fn is_online(&self, key: DeviceKey) -> bool {
        self.online.contains_key(&key)
    }

    /// Make `id` the connection of `key`; returns the one it replaces.
    pub(super) fn attach(&mut self, key: DeviceKey, id: ConnId) -> Option<ConnId> {
        self.online.insert(key, id).filter(|old| *old != id)
    }

    /// Forget a connection that ended.
    pub(super) fn remove(&mut self, id: ConnId) {
        if let Some(conn) = self.by_id.remove(&id) {
            if let Some(a) = conn.auth {
                self.forget_device(a.key, id);
            }
        }
    }

    /// Unlink `key` from connection `id` (when it still is its connection).
    pub(super) fn forget_device(&mut self, key: DeviceKey, id: ConnId) {
        if self.online.get(&key) == Some(&id) {
            self.online.remove(&key);
        }
    }

    /// Every connection id.
    pub(super) fn ids(&self) -> Vec<ConnId> {
        self.by_id.keys().copied().collect()
    }

    /// What the driver must do for `id` now (nothing for an unknown connection).
    pub(super) fn output(&mut self, id: ConnId) -> ConnOutput {
        let max = self.max_unanswered;
        match self.by_id.get_mut(&id) {
            Some(c) => c.output(max),
            None => ConnOutput::default(),
        }
    }
}
