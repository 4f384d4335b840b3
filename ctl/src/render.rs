//! Human-friendly output: aligned tables, byte sizes, durations, timestamps.

use std::io::{self, Write};

use anyhow::Context;
use serde::Deserialize;
use serde_json::Value;

/// A text table: a header row, then rows; columns padded to their widest cell, two spaces
/// apart, numeric columns right-aligned. No trailing spaces.
#[derive(Debug, Clone, Default)]
pub struct Table {
    header: Vec<String>,
    right: Vec<bool>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column titles, every column left-aligned.
    pub fn new(header: &[&str]) -> Table {
        Table {
            header: header.iter().map(|s| s.to_string()).collect(),
            right: vec![false; header.len()],
            rows: Vec::new(),
        }
    }

    /// Right-align column `col` (for numbers).
    pub fn align_right(mut self, col: usize) -> Table {
        self.right[col] = true;
        self
    }

    /// Append a row; missing cells are blank, extra cells are dropped.
    pub fn push(&mut self, mut row: Vec<String>) {
        row.resize(self.header.len(), String::new());
        self.rows.push(row);
    }

    /// Write the header and rows.
    pub fn write_to(&self, out: &mut dyn Write) -> io::Result<()> {
        let width = |s: &str| s.chars().count();
        let mut widths: Vec<usize> = self.header.iter().map(|h| width(h)).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(width(cell));
            }
        }
        for row in std::iter::once(&self.header).chain(&self.rows) {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                if i > 0 {
                    line.push_str("  ");
                }
                let pad = " ".repeat(widths[i] - width(cell));
                if self.right[i] {
                    line.push_str(&pad);
                    line.push_str(cell);
                } else {
                    line.push_str(cell);
                    line.push_str(&pad);
                }
            }
            writeln!(out, "{}", line.trim_end())?;
        }
        Ok(())
    }
}

/// Bytes with binary units: `512 B`, `1.5 KiB`, `12.0 MiB`.
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut v = bytes as f64 / 1024.0;
    let mut unit = 0;
    // 1023.95 would print as "1024.0": move to the next unit instead.
    while v >= 1023.95 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// A count with thousands separators: `1,234,567`.
pub fn format_count(n: u64) -> String {
    let digits = n.to_string();
    let mut s = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            s.push(',');
        }
        s.push(c);
    }
    s
}

/// A duration in whole seconds as its two largest units: `45s`, `15m 3s`, `2h 3m`, `3d 4h`.
pub fn format_duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match secs {
        0..60 => format!("{s}s"),
        60..3600 => format!("{m}m {s}s"),
        3600..86_400 => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

/// A short latency in microseconds: `850 µs`, `3.4 ms`, `1.25 s`.
pub fn format_micros(us: u64) -> String {
    match us {
        0..1000 => format!("{us} µs"),
        1000..1_000_000 => format!("{:.1} ms", us as f64 / 1e3),
        _ => format!("{:.2} s", us as f64 / 1e6),
    }
}

/// Milliseconds since the Unix epoch as a UTC date and time: `2025-01-02 03:04:05 UTC`.
pub fn format_timestamp_ms(ms: u64) -> String {
    let secs = ms / 1000;
    let (y, mo, d) = civil_from_days(secs / 86_400);
    let t = secs % 86_400;
    format!(
        "{y:04}-{mo:02}-{d:02} {:02}:{:02}:{:02} UTC",
        t / 3600,
        t / 60 % 60,
        t % 60
    )
}

/// Howard Hinnant's `civil_from_days` for days since 1970-01-01 (non-negative).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

#[derive(Deserialize)]
struct Status {
    version: String,
    uptime_secs: u64,
    quic_addr: String,
    durability: String,
    connections: u64,
    devices_registered: u64,
    envelopes: EnvelopeCounts,
    queue: QueueTotals,
    fsync: FsyncStats,
    #[serde(default)]
    rss_bytes: Option<u64>,
}

#[derive(Deserialize)]
struct EnvelopeCounts {
    accepted: u64,
    delivered: u64,
    acked: u64,
    expired: u64,
    refused: u64,
    #[serde(default)]
    ephemeral_delivered: Option<u64>,
    #[serde(default)]
    duplicates: Option<u64>,
}

#[derive(Deserialize)]
struct QueueTotals {
    envelopes: u64,
    bytes: u64,
}

#[derive(Deserialize)]
struct FsyncStats {
    commits: u64,
    p50_us: u64,
    p99_us: u64,
    max_us: u64,
}

#[derive(Deserialize)]
struct DeviceQueue {
    account: u64,
    device: u32,
    slot: u16,
    queued: u64,
    bytes: u64,
    next_seq: u64,
    registered_at_ms: u64,
    online: bool,
}

#[derive(Deserialize)]
struct Removed {
    account: u64,
    device: u32,
    envelopes: u64,
    bytes: u64,
}

fn parse<T: for<'de> Deserialize<'de>>(v: &Value, what: &str) -> anyhow::Result<T> {
    T::deserialize(v).with_context(|| format!("unexpected {what} from the node"))
}

/// `1 envelope`, `2 envelopes`, `1,500 envelopes`.
fn plural(n: u64, noun: &str) -> String {
    let s = if n == 1 { "" } else { "s" };
    format!("{} {noun}{s}", format_count(n))
}

fn write_fields(out: &mut dyn Write, fields: &[(&str, String)]) -> io::Result<()> {
    let w = fields.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, v) in fields {
        writeln!(out, "{k:<w$}  {v}")?;
    }
    Ok(())
}

/// Render a `GET /v1/status` answer as labelled lines.
pub fn render_status(v: &Value, out: &mut dyn Write) -> anyhow::Result<()> {
    let s: Status = parse(v, "status")?;
    let durability = if s.durability == "none" {
        "none (UNSAFE: no fsync, accepted envelopes can be lost in a crash)".to_owned()
    } else {
        s.durability
    };
    let e = &s.envelopes;
    let mut envelopes = format!(
        "{} accepted, {} delivered, {} acked, {} expired, {} refused",
        format_count(e.accepted),
        format_count(e.delivered),
        format_count(e.acked),
        format_count(e.expired),
        format_count(e.refused)
    );
    if let Some(n) = e.duplicates {
        envelopes.push_str(&format!(", {} duplicate sends", format_count(n)));
    }
    if let Some(n) = e.ephemeral_delivered {
        envelopes.push_str(&format!(", {} ephemeral pushed", format_count(n)));
    }
    let mut fields = vec![
        ("version", s.version),
        ("uptime", format_duration(s.uptime_secs)),
        ("quic address", s.quic_addr),
        ("durability", durability),
        ("connections", format_count(s.connections)),
        (
            "devices",
            format!("{} registered", format_count(s.devices_registered)),
        ),
        ("envelopes", envelopes),
        (
            "queued",
            format!(
                "{}, {}",
                plural(s.queue.envelopes, "envelope"),
                format_bytes(s.queue.bytes)
            ),
        ),
        (
            "fsync",
            format!(
                "{}, p50 {}, p99 {}, max {}",
                plural(s.fsync.commits, "commit"),
                format_micros(s.fsync.p50_us),
                format_micros(s.fsync.p99_us),
                format_micros(s.fsync.max_us)
            ),
        ),
    ];
    // The node reports 0 when it cannot tell.
    if let Some(rss) = s.rss_bytes.filter(|&b| b > 0) {
        fields.push(("memory", format!("{} resident", format_bytes(rss))));
    }
    write_fields(out, &fields)?;
    Ok(())
}

/// Render a `GET /v1/queues/...` answer (one device object or an array of them) as a table,
/// with a total line when there are several devices.
pub fn render_queue_stats(v: &Value, out: &mut dyn Write) -> anyhow::Result<()> {
    let mut queues: Vec<DeviceQueue> = match v {
        Value::Array(_) => parse(v, "queue stats")?,
        _ => vec![parse(v, "queue stats")?],
    };
    queues.sort_by_key(|q| (q.account, q.device));
    let mut t = Table::new(&[
        "ACCOUNT",
        "DEVICE",
        "ONLINE",
        "QUEUED",
        "BYTES",
        "NEXT SEQ",
        "SLOT",
        "REGISTERED",
    ]);
    for col in [0, 1, 3, 4, 5, 6] {
        t = t.align_right(col);
    }
    for q in &queues {
        t.push(vec![
            q.account.to_string(),
            q.device.to_string(),
            if q.online { "yes" } else { "no" }.to_owned(),
            format_count(q.queued),
            format_bytes(q.bytes),
            q.next_seq.to_string(),
            q.slot.to_string(),
            format_timestamp_ms(q.registered_at_ms),
        ]);
    }
    t.write_to(out)?;
    if queues.len() > 1 {
        let online = queues.iter().filter(|q| q.online).count();
        let queued: u64 = queues.iter().map(|q| q.queued).sum();
        let bytes: u64 = queues.iter().map(|q| q.bytes).sum();
        writeln!(
            out,
            "{} ({online} online), {} queued, {}",
            plural(queues.len() as u64, "device"),
            plural(queued, "envelope"),
            format_bytes(bytes)
        )?;
    }
    Ok(())
}

/// Render a `DELETE /v1/devices/...` answer as one sentence.
pub fn render_device_removed(v: &Value, out: &mut dyn Write) -> anyhow::Result<()> {
    let r: Removed = parse(v, "device removal answer")?;
    writeln!(
        out,
        "removed device {} of account {}: deleted {} ({})",
        r.device,
        r.account,
        plural(r.envelopes, "queued envelope"),
        format_bytes(r.bytes)
    )?;
    Ok(())
}

#[derive(Deserialize)]
struct AbuseReport {
    flagged: Vec<FlaggedAccount>,
}

#[derive(Deserialize)]
struct FlaggedAccount {
    account: u64,
    reasons: Vec<String>,
    new_recipients: u64,
    blocks: u64,
    reports: u64,
    fanout: u64,
    since_ms: u64,
}

/// Render a `GET /v1/abuse` answer as a table, in the node's order (most severe first), the
/// reasons of each account joined with `; `.
pub fn render_abuse_top(v: &Value, out: &mut dyn Write) -> anyhow::Result<()> {
    let report: AbuseReport = parse(v, "abuse report")?;
    if report.flagged.is_empty() {
        writeln!(out, "no flagged accounts")?;
        return Ok(());
    }
    // The reasons (long sentences) go last, so the counters stay in compact columns.
    let mut t = Table::new(&[
        "ACCOUNT",
        "NEW RECIPIENTS",
        "BLOCKS",
        "REPORTS",
        "FAN-OUT",
        "FLAGGED SINCE",
        "REASONS",
    ]);
    for col in [0, 1, 2, 3, 4] {
        t = t.align_right(col);
    }
    for f in &report.flagged {
        t.push(vec![
            f.account.to_string(),
            format_count(f.new_recipients),
            format_count(f.blocks),
            format_count(f.reports),
            format_count(f.fanout),
            format_timestamp_ms(f.since_ms),
            f.reasons.join("; "),
        ]);
    }
    t.write_to(out)?;
    Ok(())
}

#[derive(Deserialize)]
struct Purged {
    account: u64,
    devices: u64,
    envelopes: u64,
    groups_left: u64,
    groups_deleted: u64,
    list_entries: u64,
    dedup_records: u64,
    push_tokens: u64,
    account_record: bool,
}

/// Render a `DELETE /v1/accounts/...` answer: a sentence, then a table of what was removed.
pub fn render_account_purged(v: &Value, out: &mut dyn Write) -> anyhow::Result<()> {
    let p: Purged = parse(v, "account purge answer")?;
    let counts = [
        ("devices", p.devices),
        ("queued envelopes", p.envelopes),
        ("groups left", p.groups_left),
        ("groups deleted (it created them)", p.groups_deleted),
        ("allow and block list entries", p.list_entries),
        ("dedup records", p.dedup_records),
        ("push tokens", p.push_tokens),
    ];
    if !p.account_record && counts.iter().all(|&(_, n)| n == 0) {
        writeln!(
            out,
            "account {}: the node held no stored data about it; nothing to erase",
            p.account
        )?;
        return Ok(());
    }
    writeln!(out, "erased account {}:", p.account)?;
    let mut t = Table::new(&["REMOVED", "COUNT"]).align_right(1);
    for (what, n) in counts {
        t.push(vec![what.to_owned(), format_count(n)]);
    }
    let record = if p.account_record { "yes" } else { "no" };
    t.push(vec!["account record".to_owned(), record.to_owned()]);
    t.write_to(out)?;
    Ok(())
}

#[derive(Deserialize)]
struct GroupInfo {
    group: u64,
    creator: u64,
    version: u64,
    members: u64,
}

/// Render a `GET /v1/groups/{group}` answer as labelled lines.
pub fn render_group_show(v: &Value, out: &mut dyn Write) -> anyhow::Result<()> {
    let g: GroupInfo = parse(v, "group")?;
    write_fields(
        out,
        &[
            ("group", g.group.to_string()),
            ("creator", format!("account {}", g.creator)),
            ("version", g.version.to_string()),
            ("members", format_count(g.members)),
        ],
    )?;
    Ok(())
}

#[derive(Deserialize)]
struct MembersPage {
    group: u64,
    total: u64,
    offset: u64,
    members: Vec<Member>,
}

#[derive(Deserialize)]
struct Member {
    account: u64,
    role: String,
}

/// Render a `GET /v1/groups/{group}/members` answer: a table of the page in the node's order
/// (ACCOUNT, ROLE), then `showing a–b of N members`, with the next `--offset` when more follow.
pub fn render_group_members(v: &Value, out: &mut dyn Write) -> anyhow::Result<()> {
    let p: MembersPage = parse(v, "group members page")?;
    if p.members.is_empty() {
        writeln!(
            out,
            "no members at offset {} (group {} has {})",
            p.offset,
            p.group,
            plural(p.total, "member")
        )?;
        return Ok(());
    }
    let mut t = Table::new(&["ACCOUNT", "ROLE"]).align_right(0);
    for m in &p.members {
        t.push(vec![m.account.to_string(), m.role.clone()]);
    }
    t.write_to(out)?;
    let end = p.offset + p.members.len() as u64;
    write!(
        out,
        "showing {}–{} of {}",
        format_count(p.offset + 1),
        format_count(end),
        plural(p.total, "member")
    )?;
    if end < p.total {
        write!(out, " (next page: --offset {end})")?;
    }
    writeln!(out)?;
    Ok(())
}
