//! One simulated device: a task that owns its connection, sends what the schedulers hand it (or,
//! closed loop, keeps a window of sends outstanding), receives, checks and acknowledges
//! deliveries, goes offline and comes back, and reconnects when churned.
//!
//! Sends are given to the client in order, each polled once so its frame is queued before the
//! next one, and their answers are collected concurrently, so a slow `ACCEPTED` never delays a
//! later send. At most [`PIPELINE`] sends are outstanding per connection; later ones wait in the
//! backlog (a saturated node), and that wait is part of their latency (from the intended time).

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;

use futures_util::stream::{FuturesUnordered, StreamExt};
use hearth_client::{
    Accepted, ClientError, Connection, Deliveries, Delivery, Outgoing, OutgoingGroup,
};
use rand::rngs::SmallRng;
use rand::SeedableRng;
use tokio::sync::{mpsc, watch};

use crate::connect::Connector;
use crate::payload::Header;
use crate::plan::DEVICE_ID;
use crate::scenario::Kind;
use crate::shared::{error_name, SendReq, Shared};
use crate::stats::Counters;

/// Most outstanding sends per connection. It keeps the client's outgoing queue (1024 frames)
/// from ever being full, so each send's frame is queued on its first poll: sends reach the wire
/// in the order they are started, which the receivers' reorder check relies on. (The node reads
/// up to 1024 unanswered sends per connection by default.)
pub(crate) const PIPELINE: usize = 512;
/// Most deliveries handled (and acknowledged) at once.
const ACK_BATCH: usize = 256;
/// Longest wait for outstanding answers before a churn reconnect.
const CHURN_ANSWER_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// What a device is told to do.
#[derive(Debug)]
pub(crate) enum Cmd {
    Send(SendReq),
    /// Close gracefully and connect again (churn).
    Reconnect,
}

type SendFuture = Pin<Box<dyn Future<Output = (SendReq, Result<Accepted, ClientError>)> + Send>>;

pub(crate) struct Device {
    pub me: u32,
    pub sh: Arc<Shared>,
    pub connector: Arc<Connector>,
    pub conn: Option<(Connection, Deliveries)>,
    pub rx: mpsc::UnboundedReceiver<Cmd>,
    /// Closed loop: sends to keep outstanding.
    pub window: Option<u32>,
    pub stop: watch::Receiver<bool>,
}

struct State {
    conn: Option<Connection>,
    deliveries: Option<Deliveries>,
    inflight: FuturesUnordered<SendFuture>,
    backlog: VecDeque<SendReq>,
    sender_seq: u64,
    /// Highest sender sequence of a stored envelope seen from each sender.
    last_from: HashMap<u32, u64>,
    batch: Vec<Delivery>,
    acks: Vec<u64>,
    /// Connections made so far. After the first one (churn or a lost connection) an envelope
    /// can rightly arrive twice: its acknowledgement may not have reached the node.
    connections: u32,
}

impl Device {
    pub(crate) async fn run(mut self) {
        let sh = self.sh.clone();
        let me = self.me;
        let (conn, deliveries) = match self.conn.take() {
            Some((c, d)) => (Some(c), Some(d)),
            None => (None, None),
        };
        let connections = u32::from(conn.is_some());
        let mut st = State {
            conn,
            deliveries,
            inflight: FuturesUnordered::new(),
            backlog: VecDeque::new(),
            sender_seq: 0,
            last_from: HashMap::new(),
            batch: Vec::with_capacity(ACK_BATCH),
            acks: Vec::with_capacity(ACK_BATCH),
            connections,
        };
        let mut connect_at = match st.conn {
            None => sh
                .plan
                .reconnect_at
                .get(me as usize)
                .copied()
                .flatten()
                .map(|ns| sh.at(ns)),
            Some(_) => None,
        };
        let mut rng = SmallRng::from_entropy();
        let mut open = true;
        loop {
            // `changed()` below fires once per change, and a nested wait (connect, churn) may
            // have taken it: the flag itself decides.
            if *self.stop.borrow() {
                break;
            }
            if let Some(conn) = st.conn.clone() {
                while st.inflight.len() < PIPELINE {
                    let Some(req) = st.backlog.pop_front() else {
                        break;
                    };
                    self.start(&conn, &mut st, req).await;
                }
                if let Some(w) = self.window {
                    while st.inflight.len() < w as usize {
                        let now = sh.now_ns();
                        if now >= sh.phases.end {
                            break;
                        }
                        let pick = sh.plan.pick_closed(me, &mut rng);
                        let req = SendReq {
                            intended_ns: now,
                            seq: sh.allocate(now, pick.kind),
                            kind: pick.kind,
                            target: pick.target,
                            size: pick.size,
                        };
                        self.start(&conn, &mut st, req).await;
                    }
                }
            }
            let deliveries = st.deliveries.as_mut();
            tokio::select! {
                biased;
                _ = self.stop.changed() => break,
                cmd = self.rx.recv(), if open => match cmd {
                    Some(Cmd::Send(req)) => st.backlog.push_back(req),
                    Some(Cmd::Reconnect) => self.churn(&mut st).await,
                    None => open = false,
                },
                Some((req, res)) = st.inflight.next(), if !st.inflight.is_empty() => {
                    sh.record_answer(me, req, res);
                }
                n = next_batch(deliveries, &mut st.batch) => {
                    if n == 0 {
                        // The connection ended under us: book it and connect again.
                        let why = st.conn.take().and_then(|c| c.close_reason());
                        st.deliveries = None;
                        if *self.stop.borrow() {
                            break;
                        }
                        let name = why.map_or("ended".to_string(), |e| error_name(&e));
                        sh.errors.add(&format!("connection_lost:{name}"));
                        connect_at = Some(std::time::Instant::now());
                    } else {
                        self.handle_batch(&mut st);
                    }
                }
                _ = sleep_until_opt(connect_at), if st.conn.is_none() && connect_at.is_some() => {
                    connect_at = None;
                    if !self.connect(&mut st).await {
                        break;
                    }
                    // First connection of a device that was offline: it is online from now.
                    let since = &sh.online_since[me as usize];
                    if since.load(std::sync::atomic::Ordering::Relaxed) == u64::MAX {
                        since.store(sh.now_ns(), std::sync::atomic::Ordering::Relaxed);
                    }
                }
            }
        }
        // Stopping: account for what already arrived, flush the acknowledgements, close.
        if let Some(d) = st.deliveries.as_mut() {
            while let Some(x) = d.try_next() {
                st.batch.push(x);
            }
        }
        self.handle_batch(&mut st);
        if let Some(conn) = st.conn.take() {
            conn.shutdown().await;
        }
    }

    /// Hands `req` to the client and polls it once so its frame is queued now, in order (see
    /// [`PIPELINE`]); keeps the future to finish later, or books the answer if it came already.
    async fn start(&self, conn: &Connection, st: &mut State, req: SendReq) {
        let sh = &self.sh;
        st.sender_seq += 1;
        let payload = Header {
            intended_ns: req.intended_ns,
            seq: req.seq,
            sender: self.me,
            sender_seq: st.sender_seq,
            kind: req.kind,
        }
        .encode(req.size as usize);
        let msg_id = sh.msg_id(req.seq);
        let conn = conn.clone();
        let send: SendFuture = match req.kind {
            Kind::Group => {
                sh.fanout
                    .sent(req.seq, req.target, self.me, req.intended_ns);
                let out = OutgoingGroup {
                    msg_id,
                    group: sh.plan.groups[req.target as usize].id,
                    ttl_secs: sh.ttl_secs,
                    ephemeral: false,
                    payload,
                };
                Box::pin(tokio::task::unconstrained(async move {
                    (req, conn.send_group(out).await)
                }))
            }
            kind => {
                let out = Outgoing {
                    msg_id,
                    to_account: sh.plan.account(req.target),
                    to_device: DEVICE_ID,
                    ttl_secs: sh.ttl_secs,
                    ephemeral: kind == Kind::Ephemeral,
                    payload,
                };
                // Unconstrained: tokio's cooperative budget could make the first poll return
                // Pending without queueing the frame, and a later send could then overtake it.
                Box::pin(tokio::task::unconstrained(async move {
                    (req, conn.send(out).await)
                }))
            }
        };
        let mut fut = send;
        match std::future::poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await {
            Poll::Ready((req, res)) => sh.record_answer(self.me, req, res),
            Poll::Pending => st.inflight.push(fut),
        }
    }

    /// Connects (retrying until it works or the run stops); false if the run stopped.
    async fn connect(&mut self, st: &mut State) -> bool {
        let account = self.sh.plan.account(self.me);
        loop {
            if *self.stop.borrow() {
                return false;
            }
            let attempt = self.connector.connect_retry(
                self.me as usize,
                account,
                5,
                &self.sh.c.connect_failures,
            );
            tokio::select! {
                _ = self.stop.changed() => return false,
                res = attempt => match res {
                    Ok((c, d)) => {
                        st.conn = Some(c);
                        st.deliveries = Some(d);
                        st.connections += 1;
                        return true;
                    }
                    Err(e) => {
                        self.sh.errors.add(&format!("connect:{}", error_name(&e)));
                        if e.is_permanent() {
                            return false;
                        }
                    }
                }
            }
        }
    }

    /// Churn: finish the outstanding sends, handle what arrived, close gracefully (acks
    /// flushed), connect again.
    async fn churn(&mut self, st: &mut State) {
        let Some(conn) = st.conn.clone() else { return };
        // Wait for the answers, but not past the end of the run nor forever: what is still
        // unanswered then counts as unanswered.
        let mut stop = self.stop.clone();
        let deadline = tokio::time::Instant::now() + CHURN_ANSWER_WAIT;
        loop {
            tokio::select! {
                biased;
                _ = stop.changed() => return,
                _ = tokio::time::sleep_until(deadline) => {
                    self.sh.errors.add("churn_answers_timed_out");
                    st.inflight.clear();
                    break;
                }
                next = st.inflight.next() => match next {
                    Some((req, res)) => self.sh.record_answer(self.me, req, res),
                    None => break,
                },
            }
        }
        if let Some(d) = st.deliveries.as_mut() {
            while let Some(x) = d.try_next() {
                st.batch.push(x);
            }
        }
        self.handle_batch(st);
        conn.shutdown().await;
        st.conn = None;
        // What arrived during the close still counts (stored ones come again, unacknowledged).
        if let Some(mut d) = st.deliveries.take() {
            while let Some(x) = d.try_next() {
                st.batch.push(x);
            }
        }
        self.handle_batch(st);
        Counters::inc(&self.sh.c.reconnects);
        self.connect(st).await;
    }

    fn handle_batch(&self, st: &mut State) {
        for d in std::mem::take(&mut st.batch) {
            self.handle(st, d);
        }
        if !st.acks.is_empty() {
            if let Some(conn) = &st.conn {
                if let Err(e) = conn.ack(&st.acks) {
                    self.sh.errors.add(&format!("ack:{}", error_name(&e)));
                }
            }
            st.acks.clear();
        }
    }

    fn handle(&self, st: &mut State, d: Delivery) {
        let sh = &*self.sh;
        let now = sh.now_ns();
        if d.seq > 0 {
            st.acks.push(d.seq);
        }
        let ours = (d.msg_id.as_u128() >> 64) as u64 == sh.run_id;
        let Some(h) = Header::decode(&d.payload).filter(|_| ours) else {
            Counters::inc(&sh.c.stale);
            return;
        };
        let first = match h.kind {
            Kind::Group => {
                sh.fanout.delivered(h.seq, self.me, now) == crate::fanout::Outcome::First
            }
            Kind::Ephemeral => sh.eph_delivered.set(h.seq),
            Kind::OneToOne | Kind::Probe => sh.delivered.set(h.seq),
        };
        if !first {
            Counters::inc(&sh.c.duplicated);
            if st.connections <= 1 {
                Counters::inc(&sh.c.unexpected_duplicates);
            }
            return;
        }
        Counters::inc(&sh.c.delivered);
        if h.kind.stored() {
            Counters::inc(&sh.c.owed_delivered);
        }
        let in_window = sh.measured(now);
        if in_window {
            Counters::inc(&sh.c.delivered_in_window);
        }
        if h.kind == Kind::Group {
            Counters::inc(&sh.c.group_delivered);
            if in_window {
                Counters::inc(&sh.c.group_delivered_in_window);
            }
        }
        let us = now.saturating_sub(h.intended_ns) / 1000;
        let measured = sh.measured(h.intended_ns);
        let hint = self.me as usize;
        let was_offline = sh.online_since[self.me as usize]
            .load(std::sync::atomic::Ordering::Relaxed)
            > h.intended_ns;
        if h.kind == Kind::Probe {
            sh.rec.probe.record(hint, us, measured);
        } else if was_offline {
            Counters::inc(&sh.c.offline_delivered);
            sh.rec.offline.record(hint, us, true);
        } else {
            if measured {
                Counters::inc(&sh.c.delivered_measured);
            }
            sh.rec.delivery.record(hint, us, measured);
            sh.rec.by_kind[h.kind as usize].record(hint, us, measured);
        }
        if h.kind.stored() {
            let last = st.last_from.entry(h.sender).or_insert(0);
            if h.sender_seq < *last {
                Counters::inc(&sh.c.reordered);
            } else {
                *last = h.sender_seq;
            }
        }
    }
}

/// The next batch of deliveries, or never when there is no connection.
async fn next_batch(d: Option<&mut Deliveries>, out: &mut Vec<Delivery>) -> usize {
    match d {
        Some(d) => d.next_batch(out, ACK_BATCH).await,
        None => std::future::pending().await,
    }
}

async fn sleep_until_opt(at: Option<std::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}
