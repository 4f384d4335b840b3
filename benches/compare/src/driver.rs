//! The one driver both sides run through: the same scheduling (closed-loop window or open-loop
//! constant rate), the same clock, the same histograms and the same delivery checks.
//!
//! A run has phases measured from its epoch: warm-up (sent and checked, not measured), the
//! measured window, then settle (nothing new is sent; the driver waits for the stragglers
//! before it declares the rest lost). Latency is taken from the *intended* send time (for the
//! open loop, the slot of the schedule; for the closed loop, the moment the window allowed the
//! send), so a stalled server cannot hide its stall (coordinated omission).

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::{BoxFuture, FutureExt};
use futures_util::stream::{FuturesUnordered, StreamExt};
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::payload;
use crate::seen::{Arrival, Seen};
use crate::stats::{self, CpuSample, CpuUse, Latency, ServerCpu, GEN_THREAD};

/// What the server answered to one sent message.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ack {
    /// Deliveries the server says it will make (Hearth's `recipients`); `None` when unknown.
    pub recipients: Option<u32>,
}

/// The sending half of one connection.
pub(crate) trait Tx: Send + Sync + 'static {
    /// Whether [`Tx::send`] resolves on a server acknowledgement (rather than locally).
    fn acknowledged(&self) -> bool;

    /// Sends one message. The future puts it on the connection at its first poll and resolves
    /// when the server acknowledged it (or at once, for fire-and-forget transports).
    fn send(&self, payload: Bytes) -> BoxFuture<'static, Result<Ack, String>>;
}

/// The receiving half of one connection.
pub(crate) trait Rx: Send + 'static {
    /// Waits for at least one delivery and appends the payloads received so far to `out`
    /// (acknowledging them where the transport wants it); `false` once the connection ended.
    fn recv(&mut self, out: &mut Vec<Bytes>) -> impl Future<Output = bool> + Send;
}

/// Connections ready for a run.
pub(crate) struct Topology<T, R> {
    pub senders: Vec<T>,
    pub receivers: Vec<R>,
    /// Deliveries each message of sender `i` must produce; 0 = none (the acknowledgement is
    /// the result, as for durable acceptance).
    pub fanout: Vec<u32>,
}

/// A system under test: builds the connections of each workload.
pub(crate) trait Transport {
    type Tx: Tx;
    type Rx: Rx;
    /// `pairs` senders, each sending to its own receiver (1:1).
    async fn one_to_one(&mut self, pairs: usize) -> anyhow::Result<Topology<Self::Tx, Self::Rx>>;
    /// `groups` senders, each sending to its own group of `size` receivers.
    async fn fan_out(
        &mut self,
        groups: usize,
        size: usize,
    ) -> anyhow::Result<Topology<Self::Tx, Self::Rx>>;
    /// `conns` senders whose acknowledgements mean "stored durably"; nobody receives.
    async fn durable(&mut self, conns: usize) -> anyhow::Result<Topology<Self::Tx, Self::Rx>>;
    /// Messages the server holds for the last [`Transport::durable`] topology.
    async fn stored(&mut self) -> anyhow::Result<u64>;
    /// Closes what the last topology left open.
    async fn teardown(&mut self);
    /// Where the server runs, for CPU accounting.
    fn server_cpu(&self) -> ServerCpu;
    /// The server's own counters, where it exposes them (read before and after a run).
    async fn server_status(&mut self) -> Option<serde_json::Value> {
        None
    }
}

/// How sends are scheduled.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Pace {
    /// Saturation: each sender keeps `window` messages outstanding (sent, not yet fully
    /// delivered, or for durable runs not yet acknowledged) and sends the next as one completes.
    Closed { window: usize },
    /// Open loop at `rate` messages/s in all, spread evenly over the senders.
    Open { rate: f64 },
}

/// One run's parameters.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Plan {
    pub pace: Pace,
    pub warmup: Duration,
    pub measure: Duration,
    pub settle: Duration,
    pub payload: usize,
}

/// Everything a run measured and checked.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Outcome {
    pub pace: String,
    pub offered_per_sec: Option<f64>,
    pub measure_secs: f64,
    pub senders: usize,
    pub receivers: usize,
    pub payload_bytes: usize,
    /// Messages sent, all phases.
    pub sent: u64,
    /// Messages whose intended send time fell in the measured window.
    pub sent_in_window: u64,
    /// Sends the server acknowledged (locally completed for fire-and-forget transports).
    pub acked: u64,
    /// Sends the server refused or that failed.
    pub errors: u64,
    pub first_error: Option<String>,
    /// Sends still unanswered when the settle phase ended.
    pub unanswered: u64,
    /// Open loop: sends issued more than 1 ms after their intended time (generator lag).
    pub late_sends: u64,
    /// Deliveries owed: acknowledged sends × fan-out.
    pub expected_deliveries: u64,
    /// Distinct deliveries received (all phases).
    pub delivered: u64,
    /// `expected_deliveries - delivered` (never negative).
    pub lost: u64,
    pub duplicates: u64,
    pub reordered: u64,
    pub malformed: u64,
    /// Distinct deliveries received inside the measured window, per second.
    pub deliveries_per_sec: f64,
    /// Messages sent inside the measured window, per second.
    pub messages_per_sec: f64,
    /// Acknowledgements received inside the measured window, per second.
    pub acks_per_sec: f64,
    /// Delivery latency (intended send → received), messages intended in the window.
    pub delivery_latency: Latency,
    /// Acknowledgement latency (intended send → acknowledged), when the server acknowledges.
    pub ack_latency: Option<Latency>,
    /// Average cores used during the measured window.
    pub cpu: CpuUse,
    /// Durable runs: messages the server holds afterwards (must equal `acked`).
    pub stored: Option<u64>,
    /// What the server's own counters say about the run (Hearth: fsync group commits).
    pub server: Option<serde_json::Value>,
}

/// Timing and completion state shared by a run's tasks.
struct Run {
    epoch: Instant,
    m_start: u64,
    m_end: u64,
    settle_end: u64,
    /// Closed loop only (empty otherwise): per sender, the window and what is outstanding.
    windows: Vec<Window>,
    /// Distinct deliveries so far.
    unique: AtomicU64,
}

struct Window {
    permits: Semaphore,
    /// seq → completions still owed.
    owed: Mutex<HashMap<u64, u32>>,
}

impl Run {
    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    fn at(&self, ns: u64) -> tokio::time::Instant {
        tokio::time::Instant::from_std(self.epoch + Duration::from_nanos(ns))
    }

    fn in_window(&self, ns: u64) -> bool {
        (self.m_start..self.m_end).contains(&ns)
    }

    /// Closed loop: `seq` of `sender` now owes `n` completions.
    fn arm(&self, sender: usize, seq: u64, n: u32) {
        if let Some(w) = self.windows.get(sender) {
            w.owed.lock().expect("not poisoned").insert(seq, n);
        }
    }

    /// Closed loop: `n` completions of `seq` arrived; a fully completed message frees a slot.
    fn complete(&self, sender: usize, seq: u64, n: u32) {
        let Some(w) = self.windows.get(sender) else {
            return;
        };
        let done = {
            let mut owed = w.owed.lock().expect("not poisoned");
            match owed.get_mut(&seq) {
                Some(left) if *left <= n => {
                    owed.remove(&seq);
                    true
                }
                Some(left) => {
                    *left -= n;
                    false
                }
                None => false,
            }
        };
        if done {
            w.permits.add_permits(1);
        }
    }
}

/// What one sender saw.
struct SendStats {
    sent: u64,
    sent_in_window: u64,
    acked: u64,
    acks_in_window: u64,
    errors: u64,
    first_error: Option<String>,
    unanswered: u64,
    late: u64,
    ack_hist: Histogram<u64>,
}

/// A send's result: (seq, intended ns, result, completion ns).
type Done = (u64, u64, Result<Ack, String>, u64);

impl SendStats {
    fn new() -> SendStats {
        SendStats {
            sent: 0,
            sent_in_window: 0,
            acked: 0,
            acks_in_window: 0,
            errors: 0,
            first_error: None,
            unanswered: 0,
            late: 0,
            ack_hist: stats::histogram(),
        }
    }

    /// Starts sending `seq`; the returned future resolves with its result.
    fn send<T: Tx>(
        &mut self,
        tx: &T,
        run: &Arc<Run>,
        me: usize,
        seq: u64,
        intended: u64,
        size: usize,
    ) -> impl Future<Output = Done> + Send + 'static {
        self.sent += 1;
        if run.in_window(intended) {
            self.sent_in_window += 1;
        }
        let fut = tx.send(payload::make(size, me as u32, seq, intended));
        let run = run.clone();
        async move {
            let r = fut.await;
            (seq, intended, r, run.now_ns())
        }
    }

    fn on_done(&mut self, done: Done, run: &Run, me: usize, need: u32, acknowledged: bool) {
        let (seq, intended, result, at) = done;
        match result {
            Ok(ack) => {
                self.acked += 1;
                if acknowledged {
                    if run.in_window(intended) {
                        stats::record_ns(&mut self.ack_hist, at.saturating_sub(intended));
                    }
                    if run.in_window(at) {
                        self.acks_in_window += 1;
                    }
                }
                if need == 0 {
                    run.complete(me, seq, 1);
                } else if let Some(r) = ack.recipients {
                    // The server says some deliveries will never come: stop waiting for them
                    // (they still count as lost).
                    if r < need {
                        run.complete(me, seq, need - r);
                    }
                }
            }
            Err(e) => {
                self.errors += 1;
                self.first_error.get_or_insert(e);
                run.complete(me, seq, need.max(1));
            }
        }
    }
}

/// What one receiver saw.
struct RecvStats {
    unique: u64,
    in_window: u64,
    duplicates: u64,
    reordered: u64,
    malformed: u64,
    hist: Histogram<u64>,
}

/// Runs `topo` under `plan` and checks every delivery.
pub(crate) async fn run<T: Tx, R: Rx>(
    topo: Topology<T, R>,
    plan: &Plan,
    server: ServerCpu,
) -> Outcome {
    let n = topo.senders.len();
    let receivers = topo.receivers.len();
    // Give the tasks a moment to start before the first scheduled send.
    let start = Duration::from_millis(20);
    let m_start = start + plan.warmup;
    let m_end = m_start + plan.measure;
    let settle_end = m_end + plan.settle;
    let ns = |d: Duration| d.as_nanos() as u64;
    let windows = match plan.pace {
        Pace::Closed { window } => (0..n)
            .map(|_| Window {
                permits: Semaphore::new(window),
                owed: Mutex::new(HashMap::new()),
            })
            .collect(),
        Pace::Open { .. } => Vec::new(),
    };
    let run = Arc::new(Run {
        epoch: Instant::now(),
        m_start: ns(m_start),
        m_end: ns(m_end),
        settle_end: ns(settle_end),
        windows,
        unique: AtomicU64::new(0),
    });

    let stop_receivers = CancellationToken::new();
    let recv_tasks: Vec<_> = topo
        .receivers
        .into_iter()
        .map(|rx| tokio::spawn(receive(rx, run.clone(), n, stop_receivers.clone())))
        .collect();

    let acknowledged = topo
        .senders
        .first()
        .map(|t| t.acknowledged())
        .unwrap_or(false);
    let mut pacer = None;
    let send_tasks: Vec<_> = match plan.pace {
        Pace::Closed { .. } => topo
            .senders
            .into_iter()
            .enumerate()
            .map(|(i, tx)| {
                let need = topo.fanout[i];
                tokio::spawn(send_closed(tx, i, need, run.clone(), plan.payload))
            })
            .collect(),
        Pace::Open { rate } => {
            let (txs, rxs): (Vec<_>, Vec<_>) = (0..n).map(|_| mpsc::unbounded_channel()).unzip();
            pacer = Some(spawn_pacer(run.clone(), txs, rate, ns(start)));
            topo.senders
                .into_iter()
                .zip(rxs)
                .enumerate()
                .map(|(i, (tx, sched))| {
                    let need = topo.fanout[i];
                    tokio::spawn(send_open(tx, i, need, run.clone(), sched, plan.payload))
                })
                .collect()
        }
    };

    // CPU use over the measured window.
    let cpu_task = {
        let run = run.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(run.at(run.m_start)).await;
            let (a, t0) = (CpuSample::take(server), Instant::now());
            tokio::time::sleep_until(run.at(run.m_end)).await;
            let b = CpuSample::take(server);
            a.usage_until(&b, t0.elapsed().as_secs_f64())
        })
    };

    let mut sends = Vec::with_capacity(n);
    for t in send_tasks {
        sends.push(t.await.expect("sender task"));
    }
    if let Some(p) = pacer {
        let _ = tokio::task::spawn_blocking(move || p.join()).await;
    }
    let expected: u64 = sends
        .iter()
        .zip(&topo.fanout)
        .map(|(s, &f)| s.acked * u64::from(f))
        .sum();
    // Settle: wait for the stragglers, then declare the rest lost.
    while run.unique.load(Ordering::Acquire) < expected && run.now_ns() < run.settle_end {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop_receivers.cancel();
    let mut recvs = Vec::with_capacity(receivers);
    for t in recv_tasks {
        recvs.push(t.await.expect("receiver task"));
    }
    let cpu = cpu_task.await.unwrap_or_default();

    let secs = plan.measure.as_secs_f64();
    let sum = |f: &dyn Fn(&SendStats) -> u64| sends.iter().map(f).sum::<u64>();
    let rsum = |f: &dyn Fn(&RecvStats) -> u64| recvs.iter().map(f).sum::<u64>();
    let mut hist = stats::histogram();
    for r in &recvs {
        hist.add(&r.hist).expect("same bounds");
    }
    let mut ack_hist = stats::histogram();
    for s in &sends {
        ack_hist.add(&s.ack_hist).expect("same bounds");
    }
    let delivered = rsum(&|r| r.unique);
    let rate = match plan.pace {
        Pace::Open { rate } => Some(rate),
        Pace::Closed { .. } => None,
    };
    Outcome {
        pace: match plan.pace {
            Pace::Closed { window } => format!("closed loop (saturation), window {window}/sender"),
            Pace::Open { rate } => format!("open loop, {rate:.0} msg/s constant"),
        },
        offered_per_sec: rate,
        measure_secs: secs,
        senders: n,
        receivers,
        payload_bytes: plan.payload,
        sent: sum(&|s| s.sent),
        sent_in_window: sum(&|s| s.sent_in_window),
        acked: sum(&|s| s.acked),
        errors: sum(&|s| s.errors),
        first_error: sends.iter().find_map(|s| s.first_error.clone()),
        unanswered: sum(&|s| s.unanswered),
        late_sends: sum(&|s| s.late),
        expected_deliveries: expected,
        delivered,
        lost: expected.saturating_sub(delivered),
        duplicates: rsum(&|r| r.duplicates),
        reordered: rsum(&|r| r.reordered),
        malformed: rsum(&|r| r.malformed),
        deliveries_per_sec: rsum(&|r| r.in_window) as f64 / secs,
        messages_per_sec: sum(&|s| s.sent_in_window) as f64 / secs,
        acks_per_sec: if acknowledged {
            sum(&|s| s.acks_in_window) as f64 / secs
        } else {
            0.0
        },
        delivery_latency: Latency::of(&hist),
        ack_latency: acknowledged.then(|| Latency::of(&ack_hist)),
        cpu,
        stored: None,
        server: None,
    }
}

/// Closed loop: send whenever the window has room, until the measured window ends.
async fn send_closed<T: Tx>(tx: T, me: usize, need: u32, run: Arc<Run>, size: usize) -> SendStats {
    let mut st = SendStats::new();
    let acknowledged = tx.acknowledged();
    let mut pending = FuturesUnordered::new();
    let stop = tokio::time::sleep_until(run.at(run.m_end));
    let deadline = tokio::time::sleep_until(run.at(run.settle_end));
    tokio::pin!(stop, deadline);
    let window = &run.windows[me];
    let (mut sending, mut seq) = (true, 0u64);
    loop {
        tokio::select! {
            biased;
            Some(done) = pending.next(), if !pending.is_empty() => {
                st.on_done(done, &run, me, need, acknowledged);
            }
            _ = &mut stop, if sending => sending = false,
            permit = window.permits.acquire(), if sending => {
                permit.expect("the semaphore is never closed").forget();
                seq += 1;
                let now = run.now_ns();
                run.arm(me, seq, need.max(1));
                pending.push(st.send(&tx, &run, me, seq, now, size));
            }
            _ = &mut deadline => {
                st.unanswered = pending.len() as u64;
                break;
            }
        }
        if !sending && pending.is_empty() {
            break;
        }
    }
    st
}

/// Open loop: send each message the pacer hands over, at once, whatever is outstanding.
async fn send_open<T: Tx>(
    tx: T,
    me: usize,
    need: u32,
    run: Arc<Run>,
    mut sched: mpsc::UnboundedReceiver<u64>,
    size: usize,
) -> SendStats {
    let mut st = SendStats::new();
    let acknowledged = tx.acknowledged();
    let mut pending = FuturesUnordered::new();
    let deadline = tokio::time::sleep_until(run.at(run.settle_end));
    tokio::pin!(deadline);
    let (mut open, mut seq) = (true, 0u64);
    let mut due = Vec::with_capacity(256);
    loop {
        // The schedule comes first, so that completions arriving in bursts cannot hold back
        // sends that are due.
        tokio::select! {
            biased;
            got = sched.recv_many(&mut due, 256), if open => {
                if got == 0 {
                    open = false;
                }
                let now = run.now_ns();
                for intended in due.drain(..) {
                    seq += 1;
                    if now.saturating_sub(intended) > 1_000_000 {
                        st.late += 1;
                    }
                    pending.push(st.send(&tx, &run, me, seq, intended, size));
                }
                // A send goes out at its first poll: poll the new ones now.
                while let Some(Some(done)) = pending.next().now_or_never() {
                    st.on_done(done, &run, me, need, acknowledged);
                }
            }
            Some(done) = pending.next(), if !pending.is_empty() => {
                st.on_done(done, &run, me, need, acknowledged);
            }
            _ = &mut deadline => {
                st.unanswered = pending.len() as u64;
                break;
            }
        }
        if !open && pending.is_empty() {
            break;
        }
    }
    st
}

/// The open-loop schedule: one thread hands every sender its intended send times (message
/// `k` goes to sender `k % n` at `start + k / rate`) until the measured window ends. It sleeps
/// with the OS timer (tens of µs of slack) rather than tokio's 1 ms wheel.
fn spawn_pacer(
    run: Arc<Run>,
    txs: Vec<mpsc::UnboundedSender<u64>>,
    rate: f64,
    start_ns: u64,
) -> std::thread::JoinHandle<()> {
    std::thread::Builder::new()
        .name(format!("{GEN_THREAD}pacer"))
        .spawn(move || {
            let n = txs.len() as u64;
            let interval = 1e9 / rate.max(1e-3);
            let mut k: u64 = 0;
            loop {
                let now = run.now_ns();
                let mut t = start_ns + (k as f64 * interval) as u64;
                while t <= now {
                    if t >= run.m_end {
                        return;
                    }
                    let _ = txs[(k % n) as usize].send(t);
                    k += 1;
                    t = start_ns + (k as f64 * interval) as u64;
                }
                std::thread::sleep(Duration::from_nanos(t - now));
            }
        })
        .expect("spawning the pacer thread")
}

/// Receive until told to stop: check each delivery, measure the ones intended in the window,
/// and report completions to the closed-loop windows.
async fn receive<R: Rx>(
    mut rx: R,
    run: Arc<Run>,
    senders: usize,
    stop: CancellationToken,
) -> RecvStats {
    let mut st = RecvStats {
        unique: 0,
        in_window: 0,
        duplicates: 0,
        reordered: 0,
        malformed: 0,
        hist: stats::histogram(),
    };
    let mut seen = Seen::new(senders);
    let mut buf = Vec::with_capacity(1024);
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            more = rx.recv(&mut buf) => {
                if !more {
                    break;
                }
            }
        }
        let now = run.now_ns();
        let mut fresh = 0;
        for p in buf.drain(..) {
            let Some(h) = payload::parse(&p).filter(|h| (h.sender as usize) < senders) else {
                st.malformed += 1;
                continue;
            };
            match seen.record(h.sender as usize, h.seq) {
                Arrival::Duplicate => {
                    st.duplicates += 1;
                    continue;
                }
                Arrival::Reordered => st.reordered += 1,
                Arrival::New => {}
            }
            fresh += 1;
            if run.in_window(h.intended_ns) {
                stats::record_ns(&mut st.hist, now.saturating_sub(h.intended_ns));
            }
            if run.in_window(now) {
                st.in_window += 1;
            }
            run.complete(h.sender as usize, h.seq, 1);
        }
        st.unique += fresh;
        run.unique.fetch_add(fresh, Ordering::AcqRel);
    }
    st
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU64;

    use super::*;

    /// An in-memory transport: every receiver gets every message; message `drop` is never
    /// delivered, message `dup` is delivered twice (numbered from 1, over all sends).
    struct MemTx {
        to: Vec<mpsc::UnboundedSender<Bytes>>,
        count: Arc<AtomicU64>,
        drop: u64,
        dup: u64,
    }

    struct MemRx(mpsc::UnboundedReceiver<Bytes>);

    impl Tx for MemTx {
        fn acknowledged(&self) -> bool {
            false
        }

        fn send(&self, payload: Bytes) -> BoxFuture<'static, Result<Ack, String>> {
            let n = self.count.fetch_add(1, Ordering::Relaxed) + 1;
            for to in &self.to {
                if n != self.drop {
                    let _ = to.send(payload.clone());
                }
                if n == self.dup {
                    let _ = to.send(payload.clone());
                }
            }
            Box::pin(async { Ok(Ack { recipients: None }) })
        }
    }

    impl Rx for MemRx {
        async fn recv(&mut self, out: &mut Vec<Bytes>) -> bool {
            self.0.recv_many(out, 64).await > 0
        }
    }

    fn topology(receivers: usize, drop: u64, dup: u64) -> Topology<MemTx, MemRx> {
        let (txs, rxs): (Vec<_>, Vec<_>) =
            (0..receivers).map(|_| mpsc::unbounded_channel()).unzip();
        let tx = MemTx {
            to: txs,
            count: Arc::new(AtomicU64::new(0)),
            drop,
            dup,
        };
        Topology {
            senders: vec![tx],
            receivers: rxs.into_iter().map(MemRx).collect(),
            fanout: vec![receivers as u32],
        }
    }

    fn plan(pace: Pace) -> Plan {
        Plan {
            pace,
            warmup: Duration::from_millis(50),
            measure: Duration::from_millis(200),
            settle: Duration::from_millis(300),
            payload: 64,
        }
    }

    #[tokio::test]
    async fn closed_loop_counts_losses_and_duplicates() {
        let o = run(
            topology(1, 5, 7),
            &plan(Pace::Closed { window: 8 }),
            ServerCpu::Embedded,
        )
        .await;
        assert!(o.sent > 10, "sent {}", o.sent);
        assert_eq!(o.expected_deliveries, o.sent);
        assert_eq!(o.lost, 1);
        assert_eq!(o.delivered, o.sent - 1);
        assert_eq!(o.duplicates, 1);
        assert_eq!(o.malformed, 0);
        assert!(o.delivery_latency.count > 0);
        assert!(o.ack_latency.is_none());
    }

    #[tokio::test]
    async fn open_loop_fan_out_checks_every_receiver() {
        let o = run(
            topology(3, 0, 0),
            &plan(Pace::Open { rate: 1000.0 }),
            ServerCpu::Embedded,
        )
        .await;
        assert!(o.sent > 0);
        assert_eq!(o.expected_deliveries, 3 * o.sent);
        assert_eq!(o.delivered, 3 * o.sent);
        assert_eq!((o.lost, o.duplicates, o.reordered), (0, 0, 0));
        assert_eq!(o.offered_per_sec, Some(1000.0));
    }

    #[tokio::test]
    async fn a_lost_fan_out_copy_is_counted_once_per_receiver() {
        let o = run(
            topology(2, 3, 0),
            &plan(Pace::Closed { window: 4 }),
            ServerCpu::Embedded,
        )
        .await;
        assert_eq!(o.expected_deliveries, 2 * o.sent);
        assert_eq!(o.lost, 2);
    }
}
