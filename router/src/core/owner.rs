//! The owner stage: what the node that owns the recipients' slots decides about a `Routed`
//! send (addressing, reachability and blocks, pair and recipient limits, dedup of retries,
//! per-device seqs and queue limits), then the live push to online devices and the group
//! commit: one write is outstanding at a time, the next group collects while it commits, and
//! `ACCEPTED` goes out once the write that holds an envelope is durable.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;

use bytes::Bytes;
use hearth_protocol::{
    flags, Accepted, Deliver, DeliverMeta, DeliverShared, ErrorCode, Frame, MessageId,
    MultiRecipient, Refusal,
};
use hearth_storage::{
    DeviceKey, EntryWrite, Reach, SendOutcome, SendWrite, StorageError, StoredEnvelope,
    WriteOutcome, WriteSet,
};

use super::action::{Action, JobId};
use super::parts::{Part, Parts, MAX_ENTRIES_PER_WRITE};
use super::policy::{self, Admit};
use super::routed::{Origin, Routed, Target};
use super::{Answer, Cx, ReplyTo};
use crate::metrics::Metrics;

/// The dedup identity of sealed sends: no sender is recorded with them.
pub(super) const SEALED: DeviceKey = DeviceKey {
    account: 0,
    device: 0,
};

/// A send's identity for idempotent retries: the sending device and its message id.
type SendId = (DeviceKey, MessageId);

/// Who a durable envelope goes to: device queues holding it inline (1:1), or pointers to one
/// shared copy (groups and multi-recipient sends).
enum Recipients {
    Inline(Vec<DeviceKey>),
    /// `hidden` devices were skipped because their account blocked the sender; they are
    /// counted in `ACCEPTED` as if stored, so the sender cannot tell.
    Shared {
        group: u64,
        list: Vec<(DeviceKey, Bytes)>,
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

    fn hidden(&self) -> u32 {
        match self {
            Recipients::Inline(_) => 0,
            Recipients::Shared { hidden, .. } => *hidden,
        }
    }

    fn device(&self, i: usize) -> DeviceKey {
        match self {
            Recipients::Inline(v) => v[i],
            Recipients::Shared { list, .. } => list[i].0,
        }
    }

    fn group(&self) -> Option<u64> {
        match self {
            Recipients::Inline(_) => None,
            Recipients::Shared { group, .. } => Some(*group),
        }
    }

    fn header(&self, i: usize) -> Bytes {
        match self {
            Recipients::Inline(_) => Bytes::new(),
            Recipients::Shared { list, .. } => list[i].1.clone(),
        }
    }

    /// Queue bytes the envelope costs while it waits for its write.
    fn cost(&self, payload: usize) -> u64 {
        let p = payload as u64;
        match self {
            Recipients::Inline(d) => (p + 64) * d.len() as u64,
            Recipients::Shared { list, .. } => p + 64 * list.len() as u64,
        }
    }
}

/// The frame that delivers `env` with `seq` (0: ephemeral): `DELIVER_SHARED` when it has a
/// group or a header, else `DELIVER`.
pub(super) fn deliver_frame(seq: u64, env: &StoredEnvelope, group: u64, header: Bytes) -> Frame {
    let meta = DeliverMeta {
        seq,
        msg_id: env.msg_id,
        from_account: env.from_account,
        from_device: env.from_device,
        accepted_at_ms: env.accepted_at_ms,
        expires_at_ms: env.expires_at_ms,
        flags: env.flags,
    };
    let payload = env.payload.clone();
    if group != 0 || !header.is_empty() {
        Frame::DeliverShared(DeliverShared {
            meta,
            group,
            header,
            payload,
        })
    } else {
        Frame::Deliver(Deliver { meta, payload })
    }
}

/// `ACCEPTED` for `msg_id`.
fn accepted(msg_id: MessageId, accepted_at_ms: u64, recipients: u32) -> Frame {
    Frame::Accepted(Accepted {
        msg_id,
        accepted_at_ms,
        recipients,
    })
}

/// A durable send (or a part of one, `parts.rs`) waiting for its write, or for the acks that
/// make the write unnecessary.
#[derive(Debug)]
pub(super) struct Waiting {
    id: SendId,
    msg_id: MessageId,
    accepted_at_ms: u64,
    /// Reported in `ACCEPTED` (stored entries plus hidden ones).
    recipients: u32,
    urgent: bool,
    /// Its entries: device and seq.
    pub entries: Vec<(DeviceKey, u64)>,
    cost: u64,
    /// Entries not acknowledged yet.
    left: usize,
    /// Every entry was acknowledged before the write: nothing of it is written.
    avoided: bool,
    /// Its commit answers the send (false for every part of a big send but the last).
    answers: bool,
}

/// Changes collected for one write, and the sends they answer.
#[derive(Debug, Default)]
struct Batch {
    set: WriteSet,
    sends: Vec<Waiting>,
    /// Entries and bytes per device in this batch (counted against queue limits until the
    /// store has them).
    counts: HashMap<DeviceKey, (u64, u64)>,
    /// Which send each entry belongs to, while collecting.
    index: HashMap<(DeviceKey, u64), usize>,
    /// Entries acknowledged while collecting (left out of the write).
    acked: HashSet<(DeviceKey, u64)>,
    /// Entries per device that its open connection received live (their write may be avoided).
    live: HashMap<DeviceKey, usize>,
    /// Something collected must be written now: an entry no connection received live (an
    /// offline device, a full window), a device that went away, a send with nothing to wait for.
    must_write: bool,
    /// When the oldest change was collected.
    since_ms: Option<u64>,
    /// Payload bytes collected.
    held_bytes: u64,
    /// The acks a write carries (kept while it is written).
    acks_sent: Vec<(DeviceKey, Vec<u64>)>,
}

impl Batch {
    fn count(&self, key: &DeviceKey) -> (u64, u64) {
        self.counts.get(key).copied().unwrap_or((0, 0))
    }
}

/// The owner stage of one node.
#[derive(Debug)]
pub(super) struct Owner {
    /// How long collected envelopes may wait for acks before they are written.
    hold_ms: u64,
    /// Most payload bytes collected before they are written at once.
    max_held_bytes: u64,
    /// The next seq of each device this owner gave seqs to since it started.
    next_seq: HashMap<DeviceKey, u64>,
    /// The group being collected.
    collecting: Batch,
    /// Parts of big sends, and sends queued behind them, each waiting for a write of its own.
    parts: Parts,
    /// The group being written: its job, and what it answers.
    writing: Option<(JobId, Batch)>,
    next_job: JobId,
    /// Durable sends not answered yet, with the retries waiting for the same answer.
    in_flight: HashMap<SendId, Vec<ReplyTo>>,
    /// Bytes of envelopes waiting for their write.
    pending_bytes: u64,
    /// Set once a write failed: the store refuses every change from then on.
    poisoned: bool,
    /// Acknowledged entries whose delete is collected or being written: a queue read must not
    /// hand them out again.
    deleting: HashSet<(DeviceKey, u64)>,
}

impl Owner {
    /// An owner that holds envelopes for online devices up to `hold_ms` (and `max_held_bytes`)
    /// before writing them, so that the acks of their devices can make the write unnecessary.
    pub(super) fn new(hold_ms: u64, max_held_bytes: u64) -> Owner {
        Owner {
            hold_ms,
            max_held_bytes,
            next_seq: HashMap::new(),
            collecting: Batch::default(),
            parts: Parts::default(),
            writing: None,
            next_job: 0,
            in_flight: HashMap::new(),
            pending_bytes: 0,
            poisoned: false,
            deleting: HashSet::new(),
        }
    }

    /// Whether a write failed (the node can no longer store anything).
    pub(super) fn poisoned(&self) -> bool {
        self.poisoned
    }

    /// Handle a routed send whose target's slot this node owns (not `Target::Group`: the
    /// router resolves groups into `Target::Members` first).
    pub(super) fn handle(
        &mut self,
        cx: &mut Cx<'_>,
        r: Routed,
        reply: ReplyTo,
        now_ms: u64,
    ) -> Answer {
        let msg_id = r.msg_id();
        let to = match r.target {
            Target::Account { account, device } => {
                self.account_recipients(cx, &r.origin, &r.env, account, device)
            }
            Target::Sealed {
                account,
                device,
                ref access_key,
            } => self.sealed_recipients(cx, &r.origin, account, device, access_key),
            Target::Members {
                group,
                ref accounts,
            } => self.member_recipients(cx, &r.origin, &r.env, group, accounts, now_ms),
            Target::Multi { ref recipients } => {
                self.multi_recipients(cx, &r.origin, &r.env, recipients)
            }
            Target::Group { .. } => Err(Refusal::internal()),
        };
        match to {
            Ok(to) => {
                let id = match r.target {
                    Target::Sealed { .. } => (SEALED, msg_id),
                    _ => (r.origin.device, msg_id),
                };
                self.deliver(cx, id, r.env, to, reply, now_ms)
            }
            Err(refusal) => {
                Metrics::inc(&cx.metrics.refused);
                Answer::Now(refusal.answer(msg_id))
            }
        }
    }

    /// The devices a `SEND` or `SEND_SEALED` addresses: `device`, or every device of `account`
    /// when it is 0, never the sending device.
    fn addressed(
        cx: &Cx<'_>,
        account: u64,
        device: u32,
        from: DeviceKey,
    ) -> Result<Vec<DeviceKey>, Refusal> {
        let devices: Vec<DeviceKey> = cx
            .view
            .devices(account)
            .into_iter()
            .filter(|d| device == 0 || *d == device)
            .map(|d| DeviceKey::new(account, d))
            .filter(|k| *k != from)
            .collect();
        if devices.is_empty() {
            let msg = if device == 0 {
                "the account has no other registered device"
            } else {
                "no such device"
            };
            return Err(Refusal::new(ErrorCode::NoSuchRecipient, msg));
        }
        Ok(devices)
    }

    fn account_recipients(
        &mut self,
        cx: &mut Cx<'_>,
        origin: &Origin,
        env: &StoredEnvelope,
        account: u64,
        device: u32,
    ) -> Result<Recipients, Refusal> {
        let devices = Self::addressed(cx, account, device, origin.device)?;
        cx.safety
            .check_recipients(origin.device.account, &[account], env.payload.len() as u64)
            .map_err(|r| cx.limited(r))?;
        match policy::admits(cx.view, origin.device.account, &origin.network, account) {
            Admit::Yes => Ok(Recipients::Inline(devices)),
            Admit::Blocked => Ok(Recipients::Shared {
                group: 0,
                list: Vec::new(),
                hidden: hidden_count(cx, env, &devices),
            }),
            Admit::Unreachable => Err(Refusal::new(
                ErrorCode::RecipientUnreachable,
                "the recipient does not accept envelopes from this sender",
            )),
        }
    }

    fn sealed_recipients(
        &mut self,
        cx: &mut Cx<'_>,
        origin: &Origin,
        account: u64,
        device: u32,
        access_key: &[u8],
    ) -> Result<Recipients, Refusal> {
        let devices = Self::addressed(cx, account, device, origin.device)?;
        let record = cx.view.account(account);
        if record.as_ref().is_some_and(|r| r.reach == Reach::Nobody) {
            return Err(Refusal::new(
                ErrorCode::RecipientUnreachable,
                "the recipient accepts no envelopes",
            ));
        }
        // Every attempt that gets this far counts, whether or not its key matches.
        cx.safety.check_sealed(account).map_err(|r| cx.limited(r))?;
        let hash = record.and_then(|r| r.access_key_hash);
        if !hash.is_some_and(|h| constant_time_eq(&h, &sha256(access_key))) {
            return Err(Refusal::new(
                ErrorCode::BadAccessKey,
                "the delivery access key does not match",
            ));
        }
        Ok(Recipients::Inline(devices))
    }

    fn member_recipients(
        &mut self,
        cx: &mut Cx<'_>,
        origin: &Origin,
        env: &StoredEnvelope,
        group: u64,
        accounts: &[u64],
        now_ms: u64,
    ) -> Result<Recipients, Refusal> {
        let sender = origin.device.account;
        // Members who blocked the sender, or do not accept its network, are skipped.
        let mut reachable = Vec::with_capacity(accounts.len());
        let mut blocked = Vec::new();
        for &m in accounts {
            match policy::admits(cx.view, sender, &origin.network, m) {
                Admit::Yes => reachable.push(m),
                Admit::Blocked => blocked.push(m),
                Admit::Unreachable => {}
            }
        }
        let mut devices = Vec::with_capacity(reachable.len());
        cx.view.devices_of_many(&reachable, &mut devices);
        let mut hidden_devices = Vec::new();
        cx.view.devices_of_many(&blocked, &mut hidden_devices);
        let list: Vec<(DeviceKey, Bytes)> = devices
            .into_iter()
            .filter(|k| *k != origin.device)
            .map(|k| (k, Bytes::new()))
            .collect();
        cx.safety
            .check_group_fanout(sender, list.len() as u64)
            .map_err(|r| cx.limited(r))?;
        cx.safety.note_fanout(sender, list.len() as u64, now_ms);
        let hidden = hidden_count(cx, env, &hidden_devices);
        Ok(Recipients::Shared {
            group,
            list,
            hidden,
        })
    }

    fn multi_recipients(
        &mut self,
        cx: &mut Cx<'_>,
        origin: &Origin,
        env: &StoredEnvelope,
        recipients: &[MultiRecipient],
    ) -> Result<Recipients, Refusal> {
        let sender = origin.device.account;
        let accounts: Vec<u64> = recipients.iter().map(|r| r.account).collect();
        cx.safety
            .check_recipients(sender, &accounts, env.payload.len() as u64)
            .map_err(|r| cx.limited(r))?;
        let mut list = Vec::with_capacity(recipients.len());
        let mut seen = HashSet::with_capacity(recipients.len());
        let mut hidden = 0u32;
        for r in recipients {
            let admit = policy::admits(cx.view, sender, &origin.network, r.account);
            if admit == Admit::Unreachable {
                return Err(Refusal::new(
                    ErrorCode::RecipientUnreachable,
                    "a recipient does not accept envelopes from this sender",
                ));
            }
            let registered = cx.view.devices(r.account);
            if r.device != 0 && !registered.contains(&r.device) {
                let msg = format!("account {} has no device {}", r.account, r.device);
                return Err(Refusal::new(ErrorCode::NoSuchRecipient, msg));
            }
            for &device in registered
                .iter()
                .filter(|d| r.device == 0 || **d == r.device)
            {
                let key = DeviceKey::new(r.account, device);
                if key != origin.device && seen.insert(key) {
                    if admit == Admit::Blocked {
                        hidden += 1;
                    } else {
                        list.push((key, r.header.clone()));
                    }
                }
            }
        }
        if list.is_empty() && hidden == 0 {
            return Err(Refusal::new(
                ErrorCode::NoSuchRecipient,
                "no recipient device",
            ));
        }
        Ok(Recipients::Shared {
            group: 0,
            list,
            hidden,
        })
    }

    /// Store (or, if ephemeral, push) an envelope for its recipients.
    fn deliver(
        &mut self,
        cx: &mut Cx<'_>,
        id: SendId,
        env: StoredEnvelope,
        to: Recipients,
        reply: ReplyTo,
        now_ms: u64,
    ) -> Answer {
        if env.flags & flags::EPHEMERAL != 0 {
            return Answer::Now(self.push_ephemeral(cx, &env, &to));
        }
        if to.len() == 0 && to.hidden() == 0 {
            // A group whose only member is the sender: nothing to store.
            Metrics::inc(&cx.metrics.accepted);
            return Answer::Now(accepted(env.msg_id, env.accepted_at_ms, 0));
        }
        self.deliver_durable(cx, id, env, to, reply, now_ms)
    }

    fn push_ephemeral(&mut self, cx: &mut Cx<'_>, env: &StoredEnvelope, to: &Recipients) -> Frame {
        let mut pushed = 0u32;
        let group = to.group().unwrap_or(0);
        for i in 0..to.len() {
            if let Some(conn) = cx.conns.online(to.device(i)) {
                if conn.send_ephemeral(deliver_frame(0, env, group, to.header(i))) {
                    pushed += 1;
                    Metrics::inc(&cx.metrics.ephemeral_delivered);
                }
            }
        }
        Metrics::inc(&cx.metrics.accepted);
        accepted(env.msg_id, env.accepted_at_ms, pushed + to.hidden())
    }

    fn deliver_durable(
        &mut self,
        cx: &mut Cx<'_>,
        id: SendId,
        env: StoredEnvelope,
        to: Recipients,
        reply: ReplyTo,
        now_ms: u64,
    ) -> Answer {
        let msg_id = env.msg_id;
        if let Some(waiters) = self.in_flight.get_mut(&id) {
            waiters.push(reply);
            Metrics::inc(&cx.metrics.duplicates);
            return Answer::Later;
        }
        if self.poisoned {
            Metrics::inc(&cx.metrics.refused);
            return Answer::Now(Refusal::internal().answer(msg_id));
        }
        let cost = to.cost(env.payload.len());
        if self.pending_bytes + cost > cx.limits.max_pending_bytes {
            Metrics::inc(&cx.metrics.refused);
            let r = Refusal::new(
                ErrorCode::Overloaded,
                "node saturated: too many envelopes awaiting fsync",
            )
            .retry_after(50);
            return Answer::Now(r.answer(msg_id));
        }
        let seqs = match self.allocate(cx, &env, &to) {
            Ok(seqs) => seqs,
            Err(r) => {
                Metrics::inc(&cx.metrics.refused);
                return Answer::Now(r.answer(msg_id));
            }
        };
        self.in_flight.insert(id, vec![reply]);
        self.pending_bytes += cost;
        cx.metrics
            .pending_bytes
            .store(self.pending_bytes, Ordering::Relaxed);
        // Push at once to the devices that are online; the rest read their queue later.
        let group = to.group().unwrap_or(0);
        let mut live = Vec::with_capacity(seqs.len());
        for (i, &seq) in seqs.iter().enumerate() {
            let key = to.device(i);
            let mut pushed = false;
            if let Some(conn) = cx.conns.online(key) {
                if conn.delivery.on_live(seq) {
                    Metrics::inc(&cx.metrics.delivered);
                    conn.send(deliver_frame(seq, &env, group, to.header(i)));
                    pushed = true;
                }
            }
            live.push(pushed);
        }
        let hidden = to.hidden();
        let n = to.len() as u32 + hidden;
        let entries: Vec<EntryWrite> = seqs
            .iter()
            .enumerate()
            .map(|(i, &seq)| EntryWrite {
                device: to.device(i),
                seq,
                header: to.header(i),
            })
            .collect();
        let waiting = Waiting {
            id,
            msg_id,
            accepted_at_ms: env.accepted_at_ms,
            recipients: n,
            urgent: env.flags & flags::URGENT != 0,
            entries: Vec::new(),
            cost,
            left: entries.len(),
            avoided: false,
            answers: true,
        };
        let write = SendWrite {
            env,
            shared: to.group(),
            entries,
            dedup: Some((id.0, n)),
        };
        if write.entries.len() > MAX_ENTRIES_PER_WRITE
            || write.entries.iter().any(|e| self.parts.holds(&e.device))
        {
            self.split(write, waiting);
        } else {
            self.collect(write, waiting, &live, now_ms);
        }
        self.flush(cx, now_ms);
        Answer::Later
    }

    /// Collect a send into the next group (where acks may make its write unnecessary).
    fn collect(&mut self, write: SendWrite, mut waiting: Waiting, live: &[bool], now_ms: u64) {
        let b = &mut self.collecting;
        let index = b.sends.len();
        let entries = &write.entries;
        let env = &write.env;
        for (e, live) in entries.iter().zip(live) {
            let c = b.counts.entry(e.device).or_default();
            c.0 += 1;
            c.1 += env.payload.len() as u64 + e.header.len() as u64;
            b.index.insert((e.device, e.seq), index);
            if *live {
                *b.live.entry(e.device).or_default() += 1;
            } else {
                b.must_write = true;
            }
        }
        // Nothing to wait for (only blocked recipients): its dedup record is written at once.
        b.must_write |= entries.is_empty();
        b.since_ms.get_or_insert(now_ms);
        b.held_bytes += waiting.cost;
        waiting.entries = entries.iter().map(|e| (e.device, e.seq)).collect();
        b.sends.push(waiting);
        b.set.sends.push(write);
    }

    /// Queue a send as parts of at most `MAX_ENTRIES_PER_WRITE` entries, each written by a
    /// write of its own; the last part carries its dedup identity, its cost and its answer.
    fn split(&mut self, mut write: SendWrite, waiting: Waiting) {
        let dedup = write.dedup.take();
        let mut rest = std::mem::take(&mut write.entries);
        loop {
            let tail = rest.split_off(rest.len().min(MAX_ENTRIES_PER_WRITE));
            let entries = std::mem::replace(&mut rest, tail);
            let last = rest.is_empty();
            let part = Waiting {
                entries: entries.iter().map(|e| (e.device, e.seq)).collect(),
                left: entries.len(),
                cost: if last { waiting.cost } else { 0 },
                answers: last,
                ..waiting
            };
            let write = SendWrite {
                env: write.env.clone(),
                shared: write.shared,
                entries,
                dedup: if last { dedup } else { None },
            };
            self.parts.push(Part {
                write,
                waiting: part,
            });
            if last {
                return;
            }
        }
    }

    /// Give each recipient device its next seq, all or nothing: refused if a device is gone or
    /// its queue (what the store holds, is writing and what is collected) is at its limits.
    fn allocate(
        &mut self,
        cx: &Cx<'_>,
        env: &StoredEnvelope,
        to: &Recipients,
    ) -> Result<Vec<u64>, Refusal> {
        let len = env.payload.len() as u64;
        let mut planned: HashMap<DeviceKey, (u64, u64, u64)> = HashMap::new();
        let mut seqs = Vec::with_capacity(to.len());
        for i in 0..to.len() {
            let key = to.device(i);
            let bytes = len + to.header(i).len() as u64;
            let Some(q) = cx.view.queue(key) else {
                return Err(Refusal::new(
                    ErrorCode::NoSuchRecipient,
                    "the device was removed",
                ));
            };
            // The store counts what it wrote; what it was handed and what is collected here
            // count too. (Between the store's write and `committed` a batch counts twice:
            // briefly strict, never loose.)
            let p = planned.entry(key).or_insert_with(|| {
                let (mut n, mut b) = self.collecting.count(&key);
                let (pn, pb) = self.parts.count(&key);
                n += pn;
                b += pb;
                if let Some((_, w)) = &self.writing {
                    let (wn, wb) = w.count(&key);
                    n += wn;
                    b += wb;
                }
                let next = self.next_seq.get(&key).copied().unwrap_or(0);
                (q.queued + n, q.bytes + b, next.max(q.next_seq))
            });
            if p.0 >= cx.limits.max_queue_len
                || p.1.saturating_add(bytes) > cx.limits.max_queue_bytes
            {
                let msg = format!("the queue of device {} is full", key.device);
                return Err(Refusal::new(ErrorCode::QueueFull, msg));
            }
            p.0 += 1;
            p.1 += bytes;
            seqs.push(p.2);
            p.2 += 1;
        }
        for (key, (_, _, next)) in planned {
            self.next_seq.insert(key, next);
        }
        Ok(seqs)
    }

    /// Acknowledged entries: those still collected are left out of the write (a send whose
    /// every entry is acknowledged is answered now and never written); the others are deleted
    /// by the next write (a lost ack only means a redelivery).
    pub(super) fn ack(&mut self, cx: &mut Cx<'_>, key: DeviceKey, seqs: Vec<u64>, now_ms: u64) {
        let mut deletes = Vec::with_capacity(seqs.len());
        for seq in seqs {
            let b = &mut self.collecting;
            let Some(i) = b.index.remove(&(key, seq)) else {
                if self.parts.ack(key, seq) {
                    Metrics::inc(&cx.metrics.avoided);
                } else {
                    deletes.push(seq);
                }
                continue;
            };
            b.acked.insert((key, seq));
            if let Some(n) = b.live.get_mut(&key) {
                *n = n.saturating_sub(1);
            }
            let send = &b.set.sends[i];
            let header = send
                .entries
                .iter()
                .find(|e| e.device == key && e.seq == seq)
                .map_or(0, |e| e.header.len() as u64);
            let bytes = send.env.payload.len() as u64 + header;
            if let Some(c) = b.counts.get_mut(&key) {
                c.0 -= 1;
                c.1 -= bytes;
            }
            Metrics::inc(&cx.metrics.avoided);
            let w = &mut b.sends[i];
            w.left -= 1;
            if w.left == 0 {
                w.avoided = true;
                b.held_bytes -= w.cost;
                self.pending_bytes -= w.cost;
                cx.metrics
                    .pending_bytes
                    .store(self.pending_bytes, Ordering::Relaxed);
                Metrics::inc(&cx.metrics.accepted);
                let frame = accepted(w.msg_id, w.accepted_at_ms, w.recipients);
                for reply in self.in_flight.remove(&w.id).into_iter().flatten() {
                    cx.answers.push((reply, frame.clone()));
                }
            }
        }
        if !deletes.is_empty() {
            self.deleting.extend(deletes.iter().map(|&s| (key, s)));
            let b = &mut self.collecting;
            b.since_ms.get_or_insert(now_ms);
            b.set.acks.push((key, deletes));
        }
        self.flush(cx, now_ms);
    }

    /// A device's connection went away (or was replaced): what it received live and did not
    /// acknowledge must be written now, so that its next connection reads it.
    pub(super) fn device_offline(&mut self, cx: &mut Cx<'_>, key: DeviceKey, now_ms: u64) {
        if self.collecting.live.get(&key).is_some_and(|n| *n > 0) {
            self.collecting.must_write = true;
            self.flush(cx, now_ms);
        }
    }

    /// When the collected group is due to be written if nothing else happens (None: nothing
    /// is collected, it is due already, or it waits for the outstanding write).
    pub(super) fn timeout(&self) -> Option<u64> {
        let b = &self.collecting;
        if self.writing.is_some() || self.poisoned || b.must_write || !self.parts.is_empty() {
            return None;
        }
        b.since_ms.map(|t| t + self.hold_ms)
    }

    /// Hand the collected group to the store when it is due and no write is outstanding: at
    /// once if something in it must be written or it holds too much, else once the oldest
    /// change has waited `hold_ms` for acks. While parts of big sends wait, every write takes
    /// the oldest one, with everything collected so far (which must not be written after it).
    pub(super) fn flush(&mut self, cx: &mut Cx<'_>, now_ms: u64) {
        let b = &self.collecting;
        if self.writing.is_some() || self.poisoned {
            return;
        }
        let due = b.must_write
            || b.held_bytes >= self.max_held_bytes
            || b.since_ms.is_some_and(|t| now_ms >= t + self.hold_ms);
        if !due && self.parts.is_empty() {
            return;
        }
        let Batch {
            set,
            sends,
            mut counts,
            acked,
            ..
        } = std::mem::take(&mut self.collecting);
        let part = self.parts.take();
        // The highest seq of each device that is not written: the store must not give it again.
        let mut seen: HashMap<DeviceKey, u64> = HashMap::new();
        let part_unwritten = part.iter().flat_map(|t| t.unwritten.iter());
        for &(key, seq) in acked.iter().chain(part_unwritten) {
            let top = seen.entry(key).or_default();
            *top = (*top).max(seq);
        }
        let mut write = WriteSet {
            sends: Vec::with_capacity(set.sends.len()),
            acks: set.acks,
            seen: seen.into_iter().collect(),
        };
        let mut waiting = Vec::with_capacity(sends.len());
        for (mut send, w) in set.sends.into_iter().zip(sends) {
            if w.avoided {
                continue;
            }
            if !acked.is_empty() {
                send.entries.retain(|e| !acked.contains(&(e.device, e.seq)));
            }
            write.sends.push(send);
            waiting.push(w);
        }
        if let Some(taken) = part {
            for (key, (n, b)) in taken.counts {
                let c = counts.entry(key).or_default();
                c.0 += n;
                c.1 += b;
            }
            write.sends.push(taken.part.write);
            waiting.push(taken.part.waiting);
        }
        if write.is_empty() {
            return;
        }
        let job = self.next_job;
        self.next_job += 1;
        let acks_sent = write.acks.clone();
        cx.actions.push_back(Action::Enqueue { job, write });
        self.writing = Some((
            job,
            Batch {
                sends: waiting,
                counts,
                acks_sent,
                ..Batch::default()
            },
        ));
    }

    /// The store wrote (or failed to write) job `job`: answer its sends, let the devices read
    /// what became durable, wake offline devices, and hand over the next group.
    pub(super) fn committed(
        &mut self,
        cx: &mut Cx<'_>,
        job: JobId,
        result: Result<WriteOutcome, StorageError>,
        now_ms: u64,
    ) {
        let Some((id, batch)) = self.writing.take() else {
            return;
        };
        for (key, seqs) in &batch.acks_sent {
            for seq in seqs {
                self.deleting.remove(&(*key, *seq));
            }
        }
        debug_assert_eq!(id, job, "writes complete in order");
        let outcomes = match result {
            Ok(o) => {
                Metrics::add(&cx.metrics.acked, o.acked);
                o.sends
            }
            Err(e) => {
                tracing::error!(error = %e, "a write failed: the node stops storing");
                self.poisoned = true;
                // Nothing collected will be written either: answer it now.
                let collected = std::mem::take(&mut self.collecting);
                let parts = self.parts.drain().into_iter().map(|p| p.waiting);
                for w in collected.sends.into_iter().chain(parts) {
                    self.pending_bytes -= w.cost;
                    let frame = Refusal::internal().answer(w.msg_id);
                    for reply in self.in_flight.remove(&w.id).into_iter().flatten() {
                        cx.answers.push((reply, frame.clone()));
                    }
                }
                Vec::new()
            }
        };
        for (i, w) in batch.sends.into_iter().enumerate() {
            self.pending_bytes -= w.cost;
            cx.metrics
                .pending_bytes
                .store(self.pending_bytes, Ordering::Relaxed);
            let frame = match outcomes.get(i) {
                Some(SendOutcome::Written { skipped }) => {
                    let stored = (w.entries.len() as u64).saturating_sub(u64::from(*skipped));
                    Metrics::add(&cx.metrics.stored, stored);
                    for &(key, seq) in &w.entries {
                        match cx.conns.online(key) {
                            Some(conn) => {
                                // Its connection may not know of it (it connected since).
                                conn.delivery.saw(seq);
                                if conn.delivery.behind() {
                                    conn.want_read();
                                }
                            }
                            None => {
                                if let Some(token) = cx.view.push_token(key) {
                                    cx.actions.push_back(Action::Wake {
                                        token,
                                        urgent: w.urgent,
                                    });
                                }
                            }
                        }
                    }
                    if !w.answers {
                        continue;
                    }
                    Metrics::inc(&cx.metrics.accepted);
                    accepted(w.msg_id, w.accepted_at_ms, w.recipients)
                }
                Some(SendOutcome::Duplicate(rec)) => {
                    Metrics::inc(&cx.metrics.duplicates);
                    accepted(w.msg_id, rec.accepted_at_ms, rec.recipients)
                }
                None => {
                    Metrics::inc(&cx.metrics.refused);
                    Refusal::internal().answer(w.msg_id)
                }
            };
            for reply in self.in_flight.remove(&w.id).into_iter().flatten() {
                cx.answers.push((reply, frame.clone()));
            }
        }
        // Seqs the store now knows need no copy here.
        for (key, _) in batch.counts {
            if let (Some(q), Some(next)) = (cx.view.queue(key), self.next_seq.get(&key)) {
                if q.next_seq >= *next
                    && self.collecting.count(&key).0 == 0
                    && self.parts.count(&key).0 == 0
                {
                    self.next_seq.remove(&key);
                }
            }
        }
        self.flush(cx, now_ms);
    }

    /// Whether the delete of `(key, seq)` is collected or being written.
    pub(super) fn deleting(&self, key: DeviceKey, seq: u64) -> bool {
        self.deleting.contains(&(key, seq))
    }

    /// The job whose commit makes every ack of `key` taken so far durable (None: none waits).
    pub(super) fn ack_barrier(&self, key: DeviceKey) -> Option<JobId> {
        if self.collecting.set.acks.iter().any(|(k, _)| *k == key) {
            return Some(self.next_job);
        }
        match &self.writing {
            Some((job, b)) if b.acks_sent.iter().any(|(k, _)| *k == key) => Some(*job),
            _ => None,
        }
    }

    /// Forget a device that was removed.
    pub(super) fn forget_device(&mut self, key: DeviceKey) {
        self.next_seq.remove(&key);
    }
}

/// How many devices a blocked sender is told it reached: the queues the envelope would have
/// been stored in or, if ephemeral, the connected devices it would have been pushed to.
fn hidden_count(cx: &Cx<'_>, env: &StoredEnvelope, devices: &[DeviceKey]) -> u32 {
    if env.flags & flags::EPHEMERAL == 0 {
        return devices.len() as u32;
    }
    devices.iter().filter(|k| cx.conns.is_online(**k)).count() as u32
}

/// SHA-256 of `data`.
pub(super) fn sha256(data: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Constant-time comparison of two hashes.
fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
