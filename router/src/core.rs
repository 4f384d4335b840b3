//! The routing core: validates sends, stores them, pushes them to online devices, and keeps the
//! registry of live sessions. The QUIC driver (`session.rs`) only moves bytes to and from it.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use hearth_protocol::{flags, ErrorCode, Frame, MessageId, VerifyingKey};
use hearth_storage::{DeviceKey, EnqueueError, Store, StoredEnvelope};
use tokio::sync::{mpsc, oneshot, Notify};

use crate::config::Limits;
use crate::metrics::Metrics;

/// Capacity of a session's live-push channel; overflow falls back to reading the queue.
pub(crate) const LIVE_CHANNEL: usize = 512;

/// An envelope pushed to a connected device: `seq` 0 means ephemeral.
#[derive(Debug, Clone)]
pub(crate) struct Live {
    pub seq: u64,
    pub env: StoredEnvelope,
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
    sessions: Mutex<BTreeMap<DeviceKey, Arc<SessionHandle>>>,
    sends_in_flight: Mutex<HashMap<(DeviceKey, MessageId), Vec<oneshot::Sender<Frame>>>>,
    next_session: AtomicU64,
}

impl Router {
    pub fn new(store: Store, limits: Limits, verifying_key: VerifyingKey) -> Router {
        Router {
            store,
            limits,
            verifying_key,
            metrics: Metrics::default(),
            sessions: Mutex::new(BTreeMap::new()),
            sends_in_flight: Mutex::new(HashMap::new()),
            next_session: AtomicU64::new(1),
        }
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
            old.close(ErrorCode::Replaced, "replaced by a newer connection of the same device");
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

    /// Handle a `SEND` from the authenticated device `from` at time `now_ms`.
    #[allow(clippy::too_many_arguments)]
    pub fn send(
        self: &Arc<Self>,
        from: DeviceKey,
        msg_id: MessageId,
        to_account: u64,
        to_device: u32,
        ttl_secs: u32,
        flags: u8,
        payload: Bytes,
        now_ms: u64,
    ) -> SendReply {
        let refuse = |code: ErrorCode, retry_after_ms: u32, message: String| {
            Metrics::inc(&self.metrics.refused);
            SendReply::Now(Frame::Error { msg_id, code, retry_after_ms, message })
        };
        if payload.len() > self.limits.max_envelope_bytes {
            let msg = format!(
                "envelope of {} bytes exceeds the {}-byte limit",
                payload.len(),
                self.limits.max_envelope_bytes
            );
            return refuse(ErrorCode::EnvelopeTooLarge, 0, msg);
        }
        if flags & !flags::KNOWN != 0 {
            return refuse(ErrorCode::InvalidSend, 0, format!("unknown flag bits 0x{flags:02x}"));
        }
        let registered = match self.store.devices(to_account) {
            Ok(d) => d,
            Err(e) => return refuse(ErrorCode::Internal, 100, format!("storage: {e}")),
        };
        let devices: Vec<DeviceKey> = registered
            .iter()
            .filter(|d| to_device == 0 || **d == to_device)
            .map(|&device| DeviceKey { account: to_account, device })
            .filter(|k| *k != from)
            .collect();
        if devices.is_empty() {
            let msg = if to_device == 0 {
                "the account has no other registered device".to_string()
            } else {
                "no such device".to_string()
            };
            return refuse(ErrorCode::NoSuchRecipient, 0, msg);
        }
        let ttl = match ttl_secs {
            0 => self.limits.default_ttl_secs,
            t => t.min(self.limits.max_ttl_secs),
        };
        let env = StoredEnvelope {
            msg_id,
            from_account: from.account,
            from_device: from.device,
            accepted_at_ms: now_ms,
            expires_at_ms: now_ms + u64::from(ttl) * 1000,
            flags,
            payload,
        };
        if flags & flags::EPHEMERAL != 0 {
            return SendReply::Now(self.push_ephemeral(&devices, env));
        }
        self.send_durable(from, devices, env)
    }

    fn push_ephemeral(&self, devices: &[DeviceKey], env: StoredEnvelope) -> Frame {
        let mut pushed = 0u32;
        {
            let sessions = self.sessions();
            for k in devices {
                if let Some(h) = sessions.get(k) {
                    if h.live_tx.try_send(Live { seq: 0, env: env.clone() }).is_ok() {
                        pushed += 1;
                    }
                }
            }
        }
        Metrics::inc(&self.metrics.accepted);
        Frame::Accepted { msg_id: env.msg_id, accepted_at_ms: env.accepted_at_ms, recipients: pushed }
    }

    fn send_durable(
        self: &Arc<Self>,
        from: DeviceKey,
        devices: Vec<DeviceKey>,
        env: StoredEnvelope,
    ) -> SendReply {
        let msg_id = env.msg_id;
        let dkey = (from, msg_id);
        let cost = (env.payload.len() as u64 + 64) * devices.len() as u64;
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
                    return SendReply::Now(Frame::Accepted {
                        msg_id,
                        accepted_at_ms: rec.accepted_at_ms,
                        recipients: rec.recipients,
                    });
                }
                Ok(None) => {}
                Err(e) => {
                    Metrics::inc(&self.metrics.refused);
                    return SendReply::Now(Frame::Error {
                        msg_id,
                        code: ErrorCode::Internal,
                        retry_after_ms: 100,
                        message: format!("storage: {e}"),
                    });
                }
            }
            let pending = Metrics::get(&self.metrics.pending_bytes);
            if pending + cost > self.limits.max_pending_bytes {
                Metrics::inc(&self.metrics.refused);
                return SendReply::Now(Frame::Error {
                    msg_id,
                    code: ErrorCode::Overloaded,
                    retry_after_ms: 50,
                    message: "node saturated: too many envelopes awaiting fsync".into(),
                });
            }
            inflight.insert(dkey, Vec::new());
        }
        let n = devices.len() as u32;
        let enqueued = match self.store.enqueue(&devices, &env, Some((from, u64::from(n)))) {
            Ok(e) => e,
            Err(err) => {
                let (code, message) = match err {
                    EnqueueError::QueueFull { device } => (
                        ErrorCode::QueueFull,
                        format!("the queue of device {} is full", device.device),
                    ),
                    EnqueueError::UnknownDevice { .. } => {
                        (ErrorCode::NoSuchRecipient, "the device was removed".to_string())
                    }
                    EnqueueError::Storage(e) => (ErrorCode::Internal, format!("storage: {e}")),
                };
                let frame = Frame::Error { msg_id, code, retry_after_ms: 0, message };
                Metrics::inc(&self.metrics.refused);
                self.finish_send(dkey, &frame);
                return SendReply::Now(frame);
            }
        };
        Metrics::add(&self.metrics.pending_bytes, cost);
        {
            let sessions = self.sessions();
            for (key, seq) in &enqueued.seqs {
                if let Some(h) = sessions.get(key) {
                    h.max_seen.fetch_max(*seq, Ordering::AcqRel);
                    // A full channel is fine: the session reads the queue once this is durable.
                    let _ = h.live_tx.try_send(Live { seq: *seq, env: env.clone() });
                }
            }
        }
        let (tx, rx) = oneshot::channel();
        let router = self.clone();
        let accepted_at_ms = env.accepted_at_ms;
        tokio::spawn(async move {
            let result = enqueued.commit.await;
            router.metrics.pending_bytes.fetch_sub(cost, Ordering::Relaxed);
            let frame = match result {
                Ok(()) => {
                    Metrics::inc(&router.metrics.accepted);
                    Metrics::add(&router.metrics.stored, u64::from(n));
                    Frame::Accepted { msg_id, accepted_at_ms, recipients: n }
                }
                Err(e) => {
                    tracing::error!(error = %e, "commit failed");
                    Metrics::inc(&router.metrics.refused);
                    Frame::Error {
                        msg_id,
                        code: ErrorCode::Internal,
                        retry_after_ms: 100,
                        message: "storage write failed".into(),
                    }
                }
            };
            {
                let sessions = router.sessions();
                for (key, _) in &enqueued.seqs {
                    if let Some(h) = sessions.get(key) {
                        h.wake.notify_one();
                    }
                }
            }
            router.finish_send(dkey, &frame);
            let _ = tx.send(frame);
        });
        SendReply::Later(rx)
    }

    /// Answer the retries that waited on a send, and forget it.
    fn finish_send(&self, dkey: (DeviceKey, MessageId), frame: &Frame) {
        let waiters = self.sends_in_flight.lock().expect("not poisoned").remove(&dkey);
        for w in waiters.into_iter().flatten() {
            let _ = w.send(frame.clone());
        }
    }

    /// Delete acknowledged entries (not waiting for them to be durable: a lost ack only
    /// means a redelivery).
    pub fn ack(self: &Arc<Self>, key: DeviceKey, seqs: Vec<u64>) {
        let router = self.clone();
        tokio::spawn(async move {
            match router.store.ack(key, &seqs).await {
                Ok(n) => Metrics::add(&router.metrics.acked, n),
                Err(e) => tracing::error!(error = %e, "ack failed"),
            }
        });
    }
}
