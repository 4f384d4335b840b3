//! State shared by every task of a run: the clock and phases, the plan, the loss and fan-out
//! books, counters and latency recorders.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hearth_client::{Accepted, ClientError};
use hearth_protocol::MessageId;

use crate::fanout::FanoutChecker;
use crate::plan::Plan;
use crate::scenario::Kind;
use crate::stats::{AtomicBitmap, Counters, ErrorCounts, Recorder};

/// One send, as scheduled.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SendReq {
    pub intended_ns: u64,
    pub seq: u64,
    pub kind: Kind,
    /// Recipient device (1:1, ephemeral, probe) or group index.
    pub target: u32,
    pub size: u32,
}

/// Latency recorders.
pub(crate) struct Recorders {
    /// Delivery latency to devices online at the intended send time (bulk kinds).
    pub delivery: Recorder,
    /// Per kind: 1:1, group, ephemeral.
    pub by_kind: [Recorder; 3],
    /// Intended send time to `ACCEPTED`.
    pub accept: Recorder,
    /// Delivery latency to devices that were offline at the intended send time.
    pub offline: Recorder,
    /// The latency probe's deliveries.
    pub probe: Recorder,
    /// How late the open-loop schedulers issued sends.
    pub sched_lag: Recorder,
    /// How late a 10 ms timer fires on the generator's runtime.
    pub runtime_lag: Recorder,
}

impl Recorders {
    fn new() -> Recorders {
        Recorders {
            delivery: Recorder::new(),
            by_kind: [Recorder::new(), Recorder::new(), Recorder::new()],
            accept: Recorder::new(),
            offline: Recorder::new(),
            probe: Recorder::new(),
            sched_lag: Recorder::new(),
            runtime_lag: Recorder::new(),
        }
    }
}

/// Phase boundaries, ns since the start of the warm-up.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PhaseTimes {
    pub warmup_end: u64,
    pub steady_start: u64,
    pub end: u64,
}

impl PhaseTimes {
    /// Name of the phase at `ns`.
    pub(crate) fn name_at(&self, ns: u64) -> &'static str {
        if ns < self.warmup_end {
            "warmup"
        } else if ns < self.steady_start {
            "ramp"
        } else if ns < self.end {
            "steady"
        } else {
            "settle"
        }
    }
}

pub(crate) struct Shared {
    pub epoch: Instant,
    /// The epoch as Unix time, seconds.
    pub started_unix_s: f64,
    pub phases: PhaseTimes,
    pub run_id: u64,
    pub plan: Arc<Plan>,
    pub ttl_secs: u32,
    /// Index of the probe's sending and receiving devices, when there is a probe.
    pub probe: Option<(u32, u32)>,
    pub next_seq: AtomicU64,
    /// 1:1 and probe sends that were accepted (a delivery is owed).
    pub accepted: AtomicBitmap,
    /// 1:1 and probe sends delivered.
    pub delivered: AtomicBitmap,
    /// Ephemeral sends the node pushed to the recipient (best effort: a push to a connection
    /// that is closing may be lost).
    pub eph_pushed: AtomicBitmap,
    /// Ephemeral sends delivered.
    pub eph_delivered: AtomicBitmap,
    pub fanout: FanoutChecker,
    pub c: Counters,
    pub errors: ErrorCounts,
    pub rec: Recorders,
    /// When each device came online (ns); `u64::MAX` while it is offline at first.
    pub online_since: Vec<AtomicU64>,
}

impl Shared {
    pub(crate) fn new(
        plan: Arc<Plan>,
        phases: PhaseTimes,
        run_id: u64,
        ttl_secs: u32,
        probe: bool,
    ) -> Shared {
        let total = plan.devices + if probe { 2 } else { 0 };
        let groups = plan
            .groups
            .iter()
            .map(|g| Arc::from(g.members.as_slice()))
            .collect();
        let online_since = (0..total)
            .map(|d| {
                let off = d < plan.devices && plan.is_offline_at_start(d);
                AtomicU64::new(if off { u64::MAX } else { 0 })
            })
            .collect();
        Shared {
            epoch: Instant::now(),
            started_unix_s: crate::hdrlog::unix_now(),
            phases,
            run_id,
            ttl_secs,
            probe: probe.then_some((plan.devices, plan.devices + 1)),
            plan,
            next_seq: AtomicU64::new(0),
            accepted: AtomicBitmap::new(),
            delivered: AtomicBitmap::new(),
            eph_pushed: AtomicBitmap::new(),
            eph_delivered: AtomicBitmap::new(),
            fanout: FanoutChecker::new(groups),
            c: Counters::default(),
            errors: ErrorCounts::default(),
            rec: Recorders::new(),
            online_since,
        }
    }

    pub(crate) fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    pub(crate) fn at(&self, ns: u64) -> Instant {
        self.epoch + Duration::from_nanos(ns)
    }

    /// In the measured (steady) window.
    pub(crate) fn measured(&self, ns: u64) -> bool {
        ns >= self.phases.steady_start && ns < self.phases.end
    }

    /// A fresh global sequence number for a send of `kind` due at `intended_ns`.
    pub(crate) fn allocate(&self, intended_ns: u64, kind: Kind) -> u64 {
        if self.measured(intended_ns) && kind != Kind::Probe {
            Counters::inc(&self.c.issued_measured);
            Counters::inc(&self.c.issued_by_kind[kind as usize]);
        }
        self.next_seq.fetch_add(1, Relaxed)
    }

    pub(crate) fn msg_id(&self, seq: u64) -> MessageId {
        MessageId::from_u128((u128::from(self.run_id) << 64) | u128::from(seq))
    }

    /// Books the node's answer to `req`, sent by device `sender`.
    pub(crate) fn record_answer(
        &self,
        sender: u32,
        req: SendReq,
        res: Result<Accepted, ClientError>,
    ) {
        let now = self.now_ns();
        Counters::inc(&self.c.answered);
        let acc = match res {
            Ok(acc) => acc,
            Err(e) => {
                if req.kind == Kind::Group {
                    self.fanout.refused(req.seq);
                }
                Counters::inc(&self.c.errors);
                self.errors.add(&error_name(&e));
                return;
            }
        };
        Counters::inc(&self.c.accepted);
        let measured = self.measured(req.intended_ns);
        if req.kind != Kind::Probe {
            if measured {
                Counters::inc(&self.c.accepted_measured);
            }
            if self.measured(now) {
                Counters::inc(&self.c.accepted_in_window);
            }
            let us = now.saturating_sub(req.intended_ns) / 1000;
            self.rec.accept.record(sender as usize, us, measured);
        }
        match req.kind {
            Kind::OneToOne | Kind::Probe => {
                self.accepted.set(req.seq);
                Counters::inc(&self.c.expected);
            }
            Kind::Ephemeral => {
                if acc.recipients > 0 {
                    self.eph_pushed.set(req.seq);
                } else {
                    Counters::inc(&self.c.ephemeral_unpushed);
                }
            }
            Kind::Group => {
                self.fanout.accepted(req.seq, acc.recipients);
                let n = self.plan.group_recipients(req.target, sender) as u64;
                Counters::add(&self.c.expected, n);
                if measured {
                    Counters::inc(&self.c.group_accepted_measured);
                }
            }
        }
    }
}

pub(crate) fn error_name(e: &ClientError) -> String {
    match e {
        ClientError::Refused { code, .. } => code.name().to_string(),
        ClientError::Closed {
            code: Some(code), ..
        } => format!("closed:{}", code.name()),
        ClientError::Closed { code: None, .. } => "closed".to_string(),
        other => format!("client:{other}"),
    }
}
