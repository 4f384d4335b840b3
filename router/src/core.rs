//! The routing core: validates sends, stores them, pushes them to online devices, and keeps the
//! registry of live sessions. The QUIC driver (`session.rs`) only moves bytes to and from it.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use hearth_protocol::{
    self as wire, flags, group_op, role, ErrorCode, Frame, MessageId, MultiRecipient, Refusal,
    VerifyingKey,
};
use hearth_storage::{
    DeviceKey, EnqueueError, GroupError, GroupOp, GroupState, Role, SharedRecipient, Store,
    StoredEnvelope,
};
use tokio::sync::{mpsc, oneshot, Notify};

use crate::config::{Config, Limits, Privacy};
use crate::metrics::Metrics;
use crate::policy::{self, Admit, Origin};
use crate::push::Pusher;
use crate::safety::{self, Safety};

/// Capacity of a session's live-push channel; overflow falls back to reading the queue.
pub(crate) const LIVE_CHANNEL: usize = 512;

/// An envelope pushed to a connected device: `seq` 0 means ephemeral. Small on purpose: every
/// session's channel preallocates a block of slots, and a group message shares one `LiveMessage`.
#[derive(Debug, Clone)]
pub(crate) struct Live {
    pub seq: u64,
    pub msg: Arc<LiveMessage>,
}

/// What a live push carries besides its seq.
#[derive(Debug)]
pub(crate) struct LiveMessage {
    pub env: StoredEnvelope,
    /// Group of a group envelope, else 0.
    pub group: u64,
    /// Per-recipient header of a multi-recipient envelope, else empty.
    pub header: Bytes,
}

impl LiveMessage {
    /// The message for recipient `i` of `to`: one shared copy unless it has its own header.
    fn for_recipient(
        shared: &mut Option<Arc<Self>>,
        env: &StoredEnvelope,
        to: &Recipients,
        i: usize,
    ) -> Arc<Self> {
        let header = to.header_of(i);
        let make = |header| {
            Arc::new(Self {
                env: env.clone(),
                group: to.group(),
                header,
            })
        };
        if !header.is_empty() {
            return make(header);
        }
        shared.get_or_insert_with(|| make(Bytes::new())).clone()
    }
}

/// Who a durable envelope goes to: device queues holding it inline (1:1), or pointers to one
/// shared copy (groups and multi-recipient sends).
pub(crate) enum Recipients {
    Inline(Vec<DeviceKey>),
    /// `hidden` devices were skipped because their account blocked the sender; they are
    /// counted in `ACCEPTED` as if stored, so the sender cannot tell.
    Shared {
        group: u64,
        list: Vec<SharedRecipient>,
        hidden: u32,
    },
}

impl Recipients {
    fn len(&self) -> usize {
        match self {
            Recipients::Inline(v) => v.len(),
            Recipients::Shared { list, .. } => list.len(),
        }
    }

    fn group(&self) -> u64 {
        match self {
            Recipients::Inline(_) => 0,
            Recipients::Shared { group, .. } => *group,
        }
    }

    fn header_of(&self, i: usize) -> Bytes {
        match self {
            Recipients::Inline(_) => Bytes::new(),
            Recipients::Shared { list, .. } => list[i].header.clone(),
        }
    }

    /// Devices skipped for a block but reported as reached.
    fn hidden(&self) -> u32 {
        match self {
            Recipients::Inline(_) => 0,
            Recipients::Shared { hidden, .. } => *hidden,
        }
    }

    fn device(&self, i: usize) -> DeviceKey {
        match self {
            Recipients::Inline(v) => v[i],
            Recipients::Shared { list, .. } => list[i].device,
        }
    }
}

/// The core's handle on one connected device.
#[derive(Debug)]
pub(crate) struct SessionHandle {
    pub id: u64,
    pub key: DeviceKey,
    live_tx: mpsc::Sender<Live>,
    /// Highest queue seq known to exist for this device (committed or about to be).
    pub max_seen: AtomicU64,
    /// Woken when envelopes for this device became durable (readable from the queue).
    pub wake: Notify,
    close: Mutex<Option<(ErrorCode, &'static str)>>,
    /// Woken when the session must close; see [`SessionHandle::close_reason`].
    pub close_signal: Notify,
}

impl SessionHandle {
    /// Ask the session to close with `code`.
    pub fn close(&self, code: ErrorCode, reason: &'static str) {
        let mut c = self.close.lock().expect("not poisoned");
        if c.is_none() {
            *c = Some((code, reason));
        }
        drop(c);
        self.close_signal.notify_one();
    }

    /// Why the session must close, if it must.
    pub fn close_reason(&self) -> Option<(ErrorCode, &'static str)> {
        *self.close.lock().expect("not poisoned")
    }
}

/// A send's identity for idempotent retries: the sending device and its message id.
type SendId = (DeviceKey, MessageId);

/// The answer to a `SEND`: at once, or when the envelope is durable.
pub(crate) enum SendReply {
    Now(Frame),
    Later(oneshot::Receiver<Frame>),
}

/// One node's routing state.
pub(crate) struct Router {
    pub store: Store,
    pub limits: Limits,
    pub verifying_key: VerifyingKey,
    pub metrics: Metrics,
    pub safety: Safety,
    safety_retention_secs: u64,
    pub pusher: Pusher,
    /// Known networks (apps) and the default one.
    pub privacy: Privacy,
    sessions: Mutex<BTreeMap<DeviceKey, Arc<SessionHandle>>>,
    sends_in_flight: Mutex<HashMap<SendId, Vec<oneshot::Sender<Frame>>>>,
    next_session: AtomicU64,
    /// (reporter, reported) → when, so one reporter counts once per retention window.
    reports: Mutex<HashMap<(u64, u64), u64>>,
}

/// Most (reporter, reported) pairs remembered; past it the oldest half is forgotten.
const MAX_REPORT_PAIRS: usize = 100_000;

impl Router {
    pub fn new(store: Store, cfg: &Config, verifying_key: VerifyingKey, pusher: Pusher) -> Router {
        Router {
            store,
            limits: cfg.limits.clone(),
            verifying_key,
            metrics: Metrics::default(),
            safety: Safety::new(cfg.safety.clone()),
            safety_retention_secs: cfg.safety.retention_secs,
            pusher,
            privacy: cfg.privacy.clone(),
            sessions: Mutex::new(BTreeMap::new()),
            sends_in_flight: Mutex::new(HashMap::new()),
            next_session: AtomicU64::new(1),
            reports: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `reporter` reports `reported` for the first time within the retention window.
    pub(crate) fn first_report(&self, reporter: u64, reported: u64, now_ms: u64) -> bool {
        let window = self.safety_retention_ms();
        let mut seen = self.reports.lock().expect("not poisoned");
        if seen.len() >= MAX_REPORT_PAIRS {
            let mut ages: Vec<u64> = seen.values().copied().collect();
            let (_, median, _) = ages.select_nth_unstable(seen.len() / 2);
            let cut = *median;
            seen.retain(|_, at| *at > cut);
        }
        match seen.get(&(reporter, reported)) {
            Some(at) if now_ms.saturating_sub(*at) < window => false,
            _ => {
                seen.insert((reporter, reported), now_ms);
                true
            }
        }
    }

    /// Drop what is older than the metadata retention window (reports, limiter state, counters).
    pub(crate) fn expire_metadata(&self, now_ms: u64) {
        self.safety.expire(now_ms);
        let window = self.safety_retention_ms();
        self.reports
            .lock()
            .expect("not poisoned")
            .retain(|_, at| now_ms.saturating_sub(*at) < window);
    }

    /// Forget everything held in memory about `account` (erasure).
    pub(crate) fn forget_account(&self, account: u64) {
        self.safety.forget(account);
        self.reports
            .lock()
            .expect("not poisoned")
            .retain(|(a, b), _| *a != account && *b != account);
    }

    fn safety_retention_ms(&self) -> u64 {
        self.safety_retention_secs * 1000
    }

    /// Register a connected device, closing the connection it replaces.
    pub fn attach(&self, key: DeviceKey) -> (Arc<SessionHandle>, mpsc::Receiver<Live>) {
        let (live_tx, live_rx) = mpsc::channel(LIVE_CHANNEL);
        let handle = Arc::new(SessionHandle {
            id: self.next_session.fetch_add(1, Ordering::Relaxed),
            key,
            live_tx,
            max_seen: AtomicU64::new(0),
            wake: Notify::new(),
            close: Mutex::new(None),
            close_signal: Notify::new(),
        });
        let old = self.sessions().insert(key, handle.clone());
        if let Some(old) = old {
            old.close(
                ErrorCode::Replaced,
                "replaced by a newer connection of the same device",
            );
        }
        (handle, live_rx)
    }

    /// Forget a session that ended (unless a newer one already replaced it).
    pub fn detach(&self, handle: &SessionHandle) {
        let mut s = self.sessions();
        if s.get(&handle.key).is_some_and(|h| h.id == handle.id) {
            s.remove(&handle.key);
        }
    }

    /// Whether a device has a live session.
    pub fn is_online(&self, key: DeviceKey) -> bool {
        self.sessions().contains_key(&key)
    }

    /// Ask every session to close with `code` (shutdown).
    pub fn close_all(&self, code: ErrorCode, reason: &'static str) {
        for h in self.sessions().values() {
            h.close(code, reason);
        }
    }

    /// Close a device's live session, if any.
    pub fn close_device(&self, key: DeviceKey, code: ErrorCode, reason: &'static str) {
        if let Some(h) = self.sessions().get(&key) {
            h.close(code, reason);
        }
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, BTreeMap<DeviceKey, Arc<SessionHandle>>> {
        self.sessions.lock().expect("not poisoned")
    }

    /// Refuse the request `msg_id` (a send's `msg_id` or a request's `req_id`).
    pub(crate) fn refuse(&self, msg_id: MessageId, refusal: Refusal) -> SendReply {
        Metrics::inc(&self.metrics.refused);
        SendReply::Now(refusal.answer(msg_id))
    }

    /// Refuse a request because storage failed; the error is logged, not sent.
    pub(crate) fn storage_failure(
        &self,
        msg_id: MessageId,
        e: &hearth_storage::StorageError,
    ) -> SendReply {
        tracing::error!(error = %e, ?msg_id, "storage failure");
        self.refuse(msg_id, Refusal::internal())
    }

    /// Refuse a request that a rate limit stopped.
    pub(crate) fn limited(&self, msg_id: MessageId, r: safety::Refusal) -> SendReply {
        let message = format!("rate limited ({:?})", r.limit).to_lowercase();
        let refusal = Refusal::new(ErrorCode::RateLimited, message);
        self.refuse(msg_id, refusal.retry_after(r.retry_after_ms.max(1)))
    }

    /// How many devices a blocked sender is told it reached: the queues the envelope would
    /// have been stored in or, if ephemeral, the connected devices it would have been pushed to.
    fn hidden_count(&self, env: &StoredEnvelope, devices: &[DeviceKey]) -> u32 {
        if env.flags & flags::EPHEMERAL == 0 {
            return devices.len() as u32;
        }
        let sessions = self.sessions();
        devices.iter().filter(|k| sessions.contains_key(k)).count() as u32
    }

    /// Check the parts every kind of send shares and build the envelope to store.
    pub(crate) fn envelope(
        &self,
        from: DeviceKey,
        msg_id: MessageId,
        ttl_secs: u32,
        flags: u8,
        payload: Bytes,
        now_ms: u64,
    ) -> Result<StoredEnvelope, Refusal> {
        if payload.len() > self.limits.max_envelope_bytes {
            let msg = format!(
                "envelope of {} bytes exceeds the {}-byte limit",
                payload.len(),
                self.limits.max_envelope_bytes
            );
            return Err(Refusal::new(ErrorCode::EnvelopeTooLarge, msg));
        }
        if flags & !flags::KNOWN != 0 {
            let msg = format!("unknown flag bits 0x{flags:02x}");
            return Err(Refusal::new(ErrorCode::InvalidSend, msg));
        }
        let ttl = match ttl_secs {
            0 => self.limits.default_ttl_secs,
            t => t.min(self.limits.max_ttl_secs),
        };
        Ok(StoredEnvelope {
            msg_id,
            from_account: from.account,
            from_device: from.device,
            accepted_at_ms: now_ms,
            expires_at_ms: now_ms + u64::from(ttl) * 1000,
            flags,
            payload,
        })
    }

    /// The devices a `SEND` or `SEND_SEALED` addresses: `to_device`, or every device of
    /// `to_account` when it is 0, never the sending device `from`.
    pub(crate) fn addressed(
        &self,
        to_account: u64,
        to_device: u32,
        from: DeviceKey,
    ) -> Result<Vec<DeviceKey>, Refusal> {
        let registered = self.store.devices(to_account).map_err(|e| {
            tracing::error!(error = %e, "storage failure");
            Refusal::internal()
        })?;
        let devices: Vec<DeviceKey> = registered
            .iter()
            .filter(|d| to_device == 0 || **d == to_device)
            .map(|&device| DeviceKey {
                account: to_account,
                device,
            })
            .filter(|k| *k != from)
            .collect();
        if devices.is_empty() {
            let msg = if to_device == 0 {
                "the account has no other registered device"
            } else {
                "no such device"
            };
            return Err(Refusal::new(ErrorCode::NoSuchRecipient, msg));
        }
        Ok(devices)
    }

    /// Handle a `SEND` from the authenticated device `origin` at time `now_ms`.
    #[allow(clippy::too_many_arguments)]
    pub fn send(
        self: &Arc<Self>,
        origin: &Origin,
        msg_id: MessageId,
        to_account: u64,
        to_device: u32,
        ttl_secs: u32,
        flags: u8,
        payload: Bytes,
        now_ms: u64,
    ) -> SendReply {
        let from = origin.key;
        let env = match self.envelope(from, msg_id, ttl_secs, flags, payload, now_ms) {
            Ok(env) => env,
            Err(r) => return self.refuse(msg_id, r),
        };
        let devices = match self.addressed(to_account, to_device, from) {
            Ok(d) => d,
            Err(r) => return self.refuse(msg_id, r),
        };
        let sender = (from.account, from.device);
        let bytes = env.payload.len() as u64;
        if let Err(r) = self.safety.check_send(sender, &[to_account], bytes, now_ms) {
            return self.limited(msg_id, r);
        }
        match policy::admits(&self.store, origin, to_account) {
            Admit::Yes => {}
            Admit::Blocked => {
                let hidden = self.hidden_count(&env, &devices);
                let to = Recipients::Shared {
                    group: 0,
                    list: Vec::new(),
                    hidden,
                };
                return self.deliver(from, env, to);
            }
            Admit::Unreachable => {
                let msg = "the recipient does not accept envelopes from this sender".to_string();
                return self.refuse(msg_id, Refusal::new(ErrorCode::RecipientUnreachable, msg));
            }
        }
        self.safety.note_sent(from.account, &[to_account], now_ms);
        self.deliver(from, env, Recipients::Inline(devices))
    }

    /// Handle a `SEND_GROUP`: every device of every member but the sending device, except
    /// members whose settings refuse the sender.
    #[allow(clippy::too_many_arguments)]
    pub fn send_group(
        self: &Arc<Self>,
        origin: &Origin,
        msg_id: MessageId,
        group: u64,
        ttl_secs: u32,
        flags: u8,
        payload: Bytes,
        now_ms: u64,
    ) -> SendReply {
        let from = origin.key;
        let env = match self.envelope(from, msg_id, ttl_secs, flags, payload, now_ms) {
            Ok(env) => env,
            Err(r) => return self.refuse(msg_id, r),
        };
        let members = match self.store.group_members(group) {
            Ok(Some(m)) => m,
            Ok(None) => {
                return self.refuse(
                    msg_id,
                    Refusal::new(ErrorCode::NoSuchGroup, "no such group"),
                )
            }
            Err(e) => return self.storage_failure(msg_id, &e),
        };
        if members.binary_search(&from.account).is_err() {
            let msg = "only members may send to a group".to_string();
            return self.refuse(msg_id, Refusal::new(ErrorCode::NotAMember, msg));
        }
        let sender = (from.account, from.device);
        if let Err(r) = self
            .safety
            .check_send(sender, &[], env.payload.len() as u64, now_ms)
        {
            return self.limited(msg_id, r);
        }
        // Members who blocked the sender, or do not accept its network, are skipped.
        let mut reachable = Vec::with_capacity(members.len());
        let mut blocked = Vec::new();
        for &m in members.iter() {
            match policy::admits(&self.store, origin, m) {
                Admit::Yes => reachable.push(m),
                Admit::Blocked => blocked.push(m),
                Admit::Unreachable => {}
            }
        }
        let (devices, hidden) = match (
            self.store.devices_of_many(&reachable),
            self.store.devices_of_many(&blocked),
        ) {
            (Ok(d), Ok(b)) => (d, b.len() as u32),
            (Err(e), _) | (_, Err(e)) => return self.storage_failure(msg_id, &e),
        };
        let list: Vec<SharedRecipient> = devices
            .into_iter()
            .filter(|k| *k != from)
            .map(|device| SharedRecipient {
                device,
                header: Bytes::new(),
            })
            .collect();
        if let Err(r) = self
            .safety
            .check_group_fanout(from.account, list.len() as u64)
        {
            return self.limited(msg_id, r);
        }
        self.safety
            .note_fanout(from.account, list.len() as u64, now_ms);
        self.deliver(
            from,
            env,
            Recipients::Shared {
                group,
                list,
                hidden,
            },
        )
    }

    /// Handle a `SEND_MULTI`: the listed recipients, each with its opaque header.
    #[allow(clippy::too_many_arguments)]
    pub fn send_multi(
        self: &Arc<Self>,
        origin: &Origin,
        msg_id: MessageId,
        ttl_secs: u32,
        flags: u8,
        recipients: Vec<MultiRecipient>,
        payload: Bytes,
        now_ms: u64,
    ) -> SendReply {
        let from = origin.key;
        let l = &self.limits;
        if recipients.len() > l.max_multi_recipients {
            let msg = format!(
                "{} recipients exceed the limit of {}",
                recipients.len(),
                l.max_multi_recipients
            );
            return self.refuse(msg_id, Refusal::new(ErrorCode::TooManyRecipients, msg));
        }
        if recipients
            .iter()
            .any(|r| r.header.len() > l.max_header_bytes)
        {
            let msg = format!("a recipient header exceeds {} bytes", l.max_header_bytes);
            return self.refuse(msg_id, Refusal::new(ErrorCode::TooManyRecipients, msg));
        }
        let env = match self.envelope(from, msg_id, ttl_secs, flags, payload, now_ms) {
            Ok(env) => env,
            Err(r) => return self.refuse(msg_id, r),
        };
        let accounts: Vec<u64> = recipients.iter().map(|r| r.account).collect();
        let sender = (from.account, from.device);
        if let Err(r) = self
            .safety
            .check_send(sender, &accounts, env.payload.len() as u64, now_ms)
        {
            return self.limited(msg_id, r);
        }
        let mut list = Vec::with_capacity(recipients.len());
        let mut seen = std::collections::HashSet::with_capacity(recipients.len());
        let mut hidden = 0u32;
        for r in recipients {
            let admit = policy::admits(&self.store, origin, r.account);
            if admit == Admit::Unreachable {
                let msg = "a recipient does not accept envelopes from this sender".to_string();
                return self.refuse(msg_id, Refusal::new(ErrorCode::RecipientUnreachable, msg));
            }
            let registered = match self.store.devices(r.account) {
                Ok(d) => d,
                Err(e) => return self.storage_failure(msg_id, &e),
            };
            if r.device != 0 && !registered.contains(&r.device) {
                let msg = format!("account {} has no device {}", r.account, r.device);
                return self.refuse(msg_id, Refusal::new(ErrorCode::NoSuchRecipient, msg));
            }
            for &device in registered
                .iter()
                .filter(|d| r.device == 0 || **d == r.device)
            {
                let key = DeviceKey {
                    account: r.account,
                    device,
                };
                if key != from && seen.insert(key) {
                    if admit == Admit::Blocked {
                        hidden += 1;
                    } else {
                        list.push(SharedRecipient {
                            device: key,
                            header: r.header.clone(),
                        });
                    }
                }
            }
        }
        if list.is_empty() && hidden == 0 {
            return self.refuse(
                msg_id,
                Refusal::new(ErrorCode::NoSuchRecipient, "no recipient device"),
            );
        }
        self.safety.note_sent(from.account, &accounts, now_ms);
        self.deliver(
            from,
            env,
            Recipients::Shared {
                group: 0,
                list,
                hidden,
            },
        )
    }

    /// Store (or, if ephemeral, push) an envelope for its recipients.
    pub(crate) fn deliver(
        self: &Arc<Self>,
        from: DeviceKey,
        env: StoredEnvelope,
        to: Recipients,
    ) -> SendReply {
        if env.flags & flags::EPHEMERAL != 0 {
            return SendReply::Now(self.push_ephemeral(&to, env));
        }
        if to.len() == 0 && to.hidden() == 0 {
            // A group whose only member is the sender: nothing to store.
            Metrics::inc(&self.metrics.accepted);
            let (msg_id, accepted_at_ms) = (env.msg_id, env.accepted_at_ms);
            return SendReply::Now(Frame::Accepted(wire::Accepted {
                msg_id,
                accepted_at_ms,
                recipients: 0,
            }));
        }
        self.send_durable(from, to, env)
    }

    fn push_ephemeral(&self, to: &Recipients, env: StoredEnvelope) -> Frame {
        let mut pushed = 0u32;
        {
            let sessions = self.sessions();
            let mut shared = None;
            for i in 0..to.len() {
                if let Some(h) = sessions.get(&to.device(i)) {
                    let live = Live {
                        seq: 0,
                        msg: LiveMessage::for_recipient(&mut shared, &env, to, i),
                    };
                    if h.live_tx.try_send(live).is_ok() {
                        pushed += 1;
                    }
                }
            }
        }
        Metrics::inc(&self.metrics.accepted);
        let recipients = pushed + to.hidden();
        Frame::Accepted(wire::Accepted {
            msg_id: env.msg_id,
            accepted_at_ms: env.accepted_at_ms,
            recipients,
        })
    }

    fn send_durable(
        self: &Arc<Self>,
        from: DeviceKey,
        to: Recipients,
        env: StoredEnvelope,
    ) -> SendReply {
        let msg_id = env.msg_id;
        let dkey = (from, msg_id);
        let cost = match &to {
            Recipients::Inline(d) => (env.payload.len() as u64 + 64) * d.len() as u64,
            Recipients::Shared { list, .. } => env.payload.len() as u64 + 64 * list.len() as u64,
        };
        {
            let mut inflight = self.sends_in_flight.lock().expect("not poisoned");
            if let Some(waiters) = inflight.get_mut(&dkey) {
                let (tx, rx) = oneshot::channel();
                waiters.push(tx);
                Metrics::inc(&self.metrics.duplicates);
                return SendReply::Later(rx);
            }
            match self.store.dedup_lookup(from, msg_id) {
                Ok(Some(rec)) => {
                    Metrics::inc(&self.metrics.duplicates);
                    return SendReply::Now(Frame::Accepted(wire::Accepted {
                        msg_id,
                        accepted_at_ms: rec.accepted_at_ms,
                        recipients: rec.recipients,
                    }));
                }
                Ok(None) => {}
                Err(e) => return self.storage_failure(msg_id, &e),
            }
            let pending = Metrics::get(&self.metrics.pending_bytes);
            if pending + cost > self.limits.max_pending_bytes {
                let msg = "node saturated: too many envelopes awaiting fsync";
                return self.refuse(
                    msg_id,
                    Refusal::new(ErrorCode::Overloaded, msg).retry_after(50),
                );
            }
            inflight.insert(dkey, Vec::new());
        }
        let hidden = to.hidden();
        let n = to.len() as u32 + hidden;
        let dedup = Some((from, u64::from(n)));
        let result = match &to {
            Recipients::Inline(devices) => self.store.enqueue(devices, &env, dedup),
            Recipients::Shared { group, list, .. } => {
                self.store.enqueue_shared(list, &env, *group, dedup)
            }
        };
        let enqueued = match result {
            Ok(e) => e,
            Err(err) => {
                let refusal = match err {
                    EnqueueError::QueueFull { device } => Refusal::new(
                        ErrorCode::QueueFull,
                        format!("the queue of device {} is full", device.device),
                    ),
                    EnqueueError::UnknownDevice { .. } => {
                        Refusal::new(ErrorCode::NoSuchRecipient, "the device was removed")
                    }
                    EnqueueError::Storage(e) => {
                        tracing::error!(error = %e, ?msg_id, "enqueue failed");
                        Refusal::internal()
                    }
                };
                let frame = refusal.answer(msg_id);
                Metrics::inc(&self.metrics.refused);
                self.finish_send(dkey, &frame);
                return SendReply::Now(frame);
            }
        };
        Metrics::add(&self.metrics.pending_bytes, cost);
        {
            let sessions = self.sessions();
            let mut shared = None;
            for (i, (key, seq)) in enqueued.seqs.iter().enumerate() {
                if let Some(h) = sessions.get(key) {
                    h.max_seen.fetch_max(*seq, Ordering::AcqRel);
                    // Seqs come in recipient order; the header travels with its device.
                    debug_assert_eq!(to.device(i), *key);
                    let live = Live {
                        seq: *seq,
                        msg: LiveMessage::for_recipient(&mut shared, &env, &to, i),
                    };
                    // A full channel is fine: the session reads the queue once this is durable.
                    let _ = h.live_tx.try_send(live);
                }
            }
        }
        let (tx, rx) = oneshot::channel();
        let router = self.clone();
        let (accepted_at_ms, flags) = (env.accepted_at_ms, env.flags);
        tokio::spawn(async move {
            let result = enqueued.commit.await;
            let durable = result.is_ok();
            router
                .metrics
                .pending_bytes
                .fetch_sub(cost, Ordering::Relaxed);
            let frame = match result {
                Ok(()) => {
                    Metrics::inc(&router.metrics.accepted);
                    Metrics::add(&router.metrics.stored, u64::from(n - hidden));
                    Frame::Accepted(wire::Accepted {
                        msg_id,
                        accepted_at_ms,
                        recipients: n,
                    })
                }
                Err(e) => {
                    tracing::error!(error = %e, "commit failed");
                    Metrics::inc(&router.metrics.refused);
                    Refusal::internal().answer(msg_id)
                }
            };
            let urgent = flags & flags::URGENT != 0;
            {
                let sessions = router.sessions();
                for (key, _) in &enqueued.seqs {
                    match sessions.get(key) {
                        Some(h) => h.wake.notify_one(),
                        None if durable => {
                            if let Some(token) = router.store.push_token(*key) {
                                router.pusher.wake(token, urgent);
                            }
                        }
                        None => {}
                    }
                }
            }
            router.finish_send(dkey, &frame);
            let _ = tx.send(frame);
        });
        SendReply::Later(rx)
    }

    /// Answer the retries that waited on a send, and forget it.
    fn finish_send(&self, dkey: SendId, frame: &Frame) {
        let waiters = self
            .sends_in_flight
            .lock()
            .expect("not poisoned")
            .remove(&dkey);
        for w in waiters.into_iter().flatten() {
            let _ = w.send(frame.clone());
        }
    }

    /// Handle `GROUP_CREATE`, `GROUP_UPDATE` and `GROUP_GET` from the account of `from`.
    pub fn group_request(
        self: &Arc<Self>,
        from: DeviceKey,
        frame: Frame,
        now_ms: u64,
    ) -> SendReply {
        let actor = from.account;
        let max = self.limits.max_group_size;
        let (req_id, group) = match &frame {
            Frame::GroupCreate(wire::GroupCreate { req_id, group, .. })
            | Frame::GroupUpdate(wire::GroupUpdate { req_id, group, .. })
            | Frame::GroupGet(wire::GroupGet { req_id, group, .. }) => (*req_id, *group),
            _ => unreachable!("only group requests are routed here"),
        };
        if group == 0 {
            let msg = "group 0 is reserved";
            return self.refuse(req_id, Refusal::new(ErrorCode::InvalidRequest, msg));
        }
        let (tx, rx) = oneshot::channel();
        let store = self.store.clone();
        match frame {
            Frame::GroupGet(wire::GroupGet { offset, limit, .. }) => {
                let cap = (self.limits.max_envelope_bytes / 16).clamp(1, 16384) as u32;
                let members = match self.store.group_members(group) {
                    Ok(m) => m,
                    Err(e) => return self.storage_failure(req_id, &e),
                };
                match members {
                    None => {
                        let msg = "no such group";
                        return self.refuse(req_id, Refusal::new(ErrorCode::NoSuchGroup, msg));
                    }
                    Some(m) if m.binary_search(&actor).is_err() => {
                        let msg = "only members may read a group".to_string();
                        return self.refuse(req_id, Refusal::new(ErrorCode::NotAMember, msg));
                    }
                    Some(_) => {}
                }
                return match self.store.group_info(group, offset, limit.min(cap)) {
                    Ok(Some((st, page))) => SendReply::Now(Frame::GroupInfo(wire::GroupInfo {
                        req_id,
                        group,
                        version: st.version,
                        creator: st.creator,
                        total: st.members,
                        offset,
                        members: page
                            .into_iter()
                            .map(|(a, r)| {
                                let role = match r {
                                    Role::Admin => role::ADMIN,
                                    Role::Member => role::MEMBER,
                                };
                                (a, role)
                            })
                            .collect(),
                    })),
                    Ok(None) => self.refuse(
                        req_id,
                        Refusal::new(ErrorCode::NoSuchGroup, "no such group"),
                    ),
                    Err(e) => self.storage_failure(req_id, &e),
                };
            }
            Frame::GroupCreate(wire::GroupCreate { members, .. }) => {
                tokio::spawn(async move {
                    let r = store
                        .create_group(group, actor, &members, max, now_ms)
                        .await;
                    let _ = tx.send(group_answer(req_id, r));
                });
            }
            Frame::GroupUpdate(wire::GroupUpdate { op, accounts, .. }) => {
                let op = match op {
                    group_op::ADD_MEMBERS => GroupOp::AddMembers(accounts),
                    group_op::REMOVE_MEMBERS => GroupOp::RemoveMembers(accounts),
                    group_op::ADD_ADMINS => GroupOp::AddAdmins(accounts),
                    group_op::REMOVE_ADMINS => GroupOp::RemoveAdmins(accounts),
                    group_op::DELETE if accounts.is_empty() => GroupOp::Delete,
                    group_op::DELETE => {
                        let msg = "DELETE lists no accounts".to_string();
                        return self.refuse(req_id, Refusal::new(ErrorCode::InvalidRequest, msg));
                    }
                    other => {
                        let msg = format!("unknown group operation {other}");
                        return self.refuse(req_id, Refusal::new(ErrorCode::InvalidRequest, msg));
                    }
                };
                tokio::spawn(async move {
                    let r = store.update_group(group, actor, op, max).await;
                    let _ = tx.send(group_answer(req_id, r));
                });
            }
            _ => unreachable!("matched above"),
        }
        SendReply::Later(rx)
    }

    /// Delete acknowledged entries (not waiting for them to be durable: a lost ack only
    /// means a redelivery). The task ends once the store has applied them.
    pub fn ack(self: &Arc<Self>, key: DeviceKey, seqs: Vec<u64>) -> tokio::task::JoinHandle<()> {
        let router = self.clone();
        tokio::spawn(async move {
            match router.store.ack(key, &seqs).await {
                Ok(n) => Metrics::add(&router.metrics.acked, n),
                Err(e) => tracing::error!(error = %e, "ack failed"),
            }
        })
    }
}

/// The frame answering a group create or update.
fn group_answer(req_id: MessageId, r: Result<GroupState, GroupError>) -> Frame {
    let refusal = match r {
        Ok(st) => {
            return Frame::GroupOk(wire::GroupOk {
                req_id,
                group: st.group,
                version: st.version,
                members: st.members,
            })
        }
        Err(GroupError::NoSuchGroup) => Refusal::new(ErrorCode::NoSuchGroup, "no such group"),
        Err(GroupError::Exists) => Refusal::new(ErrorCode::GroupExists, "the group already exists"),
        Err(GroupError::NotMember) => {
            Refusal::new(ErrorCode::NotAMember, "not a member of the group")
        }
        Err(GroupError::NotAdmin) => Refusal::new(ErrorCode::NotAdmin, "only admins may do that"),
        Err(GroupError::TooLarge) => {
            Refusal::new(ErrorCode::GroupTooLarge, "the group would be too large")
        }
        Err(GroupError::Invalid(why)) => Refusal::new(ErrorCode::InvalidRequest, why),
        Err(GroupError::Storage(e)) => {
            tracing::error!(error = %e, "group update failed");
            Refusal::internal()
        }
    };
    refusal.answer(req_id)
}
