//! Node-wide counters, exported as Prometheus text and JSON.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Monotonic counters and gauges of one node. Cheap to bump from any task.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    pub connections: AtomicU64,
    pub connections_total: AtomicU64,
    pub accepted: AtomicU64,
    pub stored: AtomicU64,
    /// Queue entries never written: every addressed device acknowledged them first.
    pub avoided: AtomicU64,
    pub delivered: AtomicU64,
    pub ephemeral_delivered: AtomicU64,
    pub acked: AtomicU64,
    pub expired: AtomicU64,
    pub refused: AtomicU64,
    pub duplicates: AtomicU64,
    pub pending_bytes: AtomicU64,
}

impl Metrics {
    pub(crate) fn inc(c: &AtomicU64) {
        c.fetch_add(1, Relaxed);
    }

    pub(crate) fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Relaxed);
    }

    pub(crate) fn get(c: &AtomicU64) -> u64 {
        c.load(Relaxed)
    }
}

/// Resident set size of this process in bytes (Linux), 0 when unknown.
pub(crate) fn rss_bytes() -> u64 {
    let Ok(s) = std::fs::read_to_string("/proc/self/statm") else {
        return 0;
    };
    let pages: u64 = s
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    // Linux on x86_64 and aarch64 as deployed here uses 4 KiB pages.
    pages * 4096
}
