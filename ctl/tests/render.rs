//! Table rendering and human-friendly formats, on canned node answers.

use hearth_ctl::{
    format_bytes, format_count, format_duration, format_micros, format_timestamp_ms,
    render_abuse_top, render_account_purged, render_device_removed, render_group_members,
    render_group_show, render_queue_stats, render_status, Table,
};
use serde_json::json;

fn text(f: impl FnOnce(&mut Vec<u8>)) -> String {
    let mut out = Vec::new();
    f(&mut out);
    String::from_utf8(out).unwrap()
}

#[test]
fn table_aligns_columns_without_trailing_spaces() {
    let mut t = Table::new(&["NAME", "COUNT", "NOTE"]).align_right(1);
    t.push(vec!["a".into(), "1".into(), "first".into()]);
    t.push(vec!["longer name".into(), "12345".into(), String::new()]);
    t.push(vec!["µ".into()]);
    let s = text(|o| t.write_to(o).unwrap());
    let expected = "\
NAME         COUNT  NOTE
a                1  first
longer name  12345
µ
";
    assert_eq!(s, expected);
}

#[test]
fn bytes_counts_durations_latencies_timestamps() {
    let bytes = [
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (1536, "1.5 KiB"),
        (1024 * 1024 - 1, "1.0 MiB"),
        (5 * 1024 * 1024 * 1024, "5.0 GiB"),
        (u64::MAX, "16.0 EiB"),
    ];
    for (n, s) in bytes {
        assert_eq!(format_bytes(n), s, "{n}");
    }
    for (n, s) in [
        (0, "0"),
        (999, "999"),
        (1000, "1,000"),
        (1_234_567, "1,234,567"),
    ] {
        assert_eq!(format_count(n), s);
    }
    assert_eq!(format_count(u64::MAX), "18,446,744,073,709,551,615");
    let durations = [
        (0, "0s"),
        (59, "59s"),
        (60, "1m 0s"),
        (903, "15m 3s"),
        (7380, "2h 3m"),
        (86_399, "23h 59m"),
        (3 * 86_400 + 4 * 3600 + 59, "3d 4h"),
    ];
    for (n, s) in durations {
        assert_eq!(format_duration(n), s, "{n}");
    }
    for (n, s) in [
        (0, "0 µs"),
        (850, "850 µs"),
        (3400, "3.4 ms"),
        (1_250_000, "1.25 s"),
    ] {
        assert_eq!(format_micros(n), s);
    }
    assert_eq!(format_timestamp_ms(0), "1970-01-01 00:00:00 UTC");
    assert_eq!(
        format_timestamp_ms(951_782_400_000),
        "2000-02-29 00:00:00 UTC"
    );
    assert_eq!(
        format_timestamp_ms(1_735_787_045_999),
        "2025-01-02 03:04:05 UTC"
    );
    assert_eq!(
        format_timestamp_ms(4_107_542_399_000),
        "2100-02-28 23:59:59 UTC"
    );
}

fn status_json() -> serde_json::Value {
    json!({
        "version": "0.1.0",
        "uptime_secs": 7390,
        "quic_addr": "127.0.0.1:4433",
        "durability": "sync",
        "connections": 12,
        "devices_registered": 40,
        "envelopes": {"accepted": 1234, "delivered": 1200, "acked": 1100, "expired": 0,
                      "refused": 3},
        "queue": {"envelopes": 134, "bytes": 1_258_291},
        "fsync": {"commits": 100, "p50_us": 3400, "p99_us": 8100, "max_us": 12_000},
        "rss_bytes": 47_395_635
    })
}

#[test]
fn status_renders_labelled_lines() {
    let s = text(|o| render_status(&status_json(), o).unwrap());
    let expected = "\
version       0.1.0
uptime        2h 3m
quic address  127.0.0.1:4433
durability    sync
connections   12
devices       40 registered
envelopes     1,234 accepted, 1,200 delivered, 1,100 acked, 0 expired, 3 refused
queued        134 envelopes, 1.2 MiB
fsync         100 commits, p50 3.4 ms, p99 8.1 ms, max 12.0 ms
memory        45.2 MiB resident
";
    assert_eq!(s, expected);
}

#[test]
fn status_flags_unsafe_durability_and_tolerates_missing_rss() {
    let mut v = status_json();
    v["durability"] = json!("none");
    v.as_object_mut().unwrap().remove("rss_bytes");
    let s = text(|o| render_status(&v, o).unwrap());
    assert!(s.contains("durability    none (UNSAFE"), "{s}");
    assert!(!s.contains("memory"), "{s}");

    v["rss_bytes"] = json!(0);
    v["envelopes"]["duplicates"] = json!(2);
    v["envelopes"]["ephemeral_delivered"] = json!(5000);
    v["queue"] = json!({"envelopes": 1, "bytes": 100});
    v["fsync"]["commits"] = json!(1);
    let s = text(|o| render_status(&v, o).unwrap());
    assert!(!s.contains("memory"), "rss 0 means unknown: {s}");
    assert!(
        s.contains(", 3 refused, 2 duplicate sends, 5,000 ephemeral pushed\n"),
        "{s}"
    );
    assert!(s.contains("queued        1 envelope, 100 B\n"), "{s}");
    assert!(s.contains("fsync         1 commit, p50"), "{s}");

    v.as_object_mut().unwrap().remove("connections");
    let err = render_status(&v, &mut Vec::new()).unwrap_err();
    assert!(format!("{err:#}").contains("connections"), "{err:#}");
}

fn queue(device: u32, queued: u64, bytes: u64, online: bool) -> serde_json::Value {
    json!({"account": 42, "device": device, "slot": 9321, "queued": queued, "bytes": bytes,
           "next_seq": queued + 1, "registered_at_ms": 1_735_787_045_000u64, "online": online})
}

#[test]
fn queue_stats_table_for_an_account_and_a_device() {
    let v = json!([queue(12, 0, 0, true), queue(3, 1500, 768_000, false)]);
    let s = text(|o| render_queue_stats(&v, o).unwrap());
    let expected = "\
ACCOUNT  DEVICE  ONLINE  QUEUED      BYTES  NEXT SEQ  SLOT  REGISTERED
     42       3  no       1,500  750.0 KiB      1501  9321  2025-01-02 03:04:05 UTC
     42      12  yes          0        0 B         1  9321  2025-01-02 03:04:05 UTC
2 devices (1 online), 1,500 envelopes queued, 750.0 KiB
";
    assert_eq!(s, expected);

    let s = text(|o| render_queue_stats(&queue(3, 1, 512, false), o).unwrap());
    let expected = "\
ACCOUNT  DEVICE  ONLINE  QUEUED  BYTES  NEXT SEQ  SLOT  REGISTERED
     42       3  no           1  512 B         2  9321  2025-01-02 03:04:05 UTC
";
    assert_eq!(s, expected);

    let v = json!([queue(1, 1, 512, false), queue(2, 0, 0, false)]);
    let s = text(|o| render_queue_stats(&v, o).unwrap());
    assert!(
        s.ends_with("\n2 devices (0 online), 1 envelope queued, 512 B\n"),
        "{s}"
    );

    assert!(render_queue_stats(&json!({"account": 1}), &mut Vec::new()).is_err());
}

#[test]
fn device_removed_sentence() {
    let v = json!({"account": 42, "device": 3, "removed": true, "envelopes": 1500,
                   "bytes": 768_000});
    let s = text(|o| render_device_removed(&v, o).unwrap());
    assert_eq!(
        s,
        "removed device 3 of account 42: deleted 1,500 queued envelopes (750.0 KiB)\n"
    );
}

fn flagged(account: u64, reasons: &[&str], new_recipients: u64, fanout: u64) -> serde_json::Value {
    json!({"account": account, "reasons": reasons, "new_recipients": new_recipients,
           "blocks": 3, "reports": 12, "fanout": fanout, "since_ms": 1_735_787_045_000u64})
}

#[test]
fn abuse_top_table_keeps_the_nodes_order() {
    let v = json!({"flagged": [
        flagged(901, &["reported 12 times (threshold 5)", "1500 new recipients"], 1500, 20_000),
        flagged(7, &["blocked 3 times (threshold 2)"], 2, 0),
    ]});
    let s = text(|o| render_abuse_top(&v, o).unwrap());
    let expected = "\
ACCOUNT  NEW RECIPIENTS  BLOCKS  REPORTS  FAN-OUT  FLAGGED SINCE            REASONS
    901           1,500       3       12   20,000  2025-01-02 03:04:05 UTC  reported 12 times (threshold 5); 1500 new recipients
      7               2       3       12        0  2025-01-02 03:04:05 UTC  blocked 3 times (threshold 2)
";
    assert_eq!(s, expected);

    let s = text(|o| render_abuse_top(&json!({"flagged": []}), o).unwrap());
    assert_eq!(s, "no flagged accounts\n");

    let err = render_abuse_top(&json!({"flagged": [{"account": 1}]}), &mut Vec::new());
    assert!(format!("{:#}", err.unwrap_err()).contains("reasons"));
    assert!(render_abuse_top(&json!([]), &mut Vec::new()).is_err());
}

fn purged(devices: u64, envelopes: u64, account_record: bool) -> serde_json::Value {
    json!({"account": 42, "devices": devices, "envelopes": envelopes, "groups_left": 2,
           "groups_deleted": 1, "list_entries": 5, "dedup_records": 1234, "push_tokens": 1,
           "account_record": account_record})
}

#[test]
fn account_purged_table() {
    let s = text(|o| render_account_purged(&purged(2, 1500, true), o).unwrap());
    let expected = "\
erased account 42:
REMOVED                           COUNT
devices                               2
queued envelopes                  1,500
groups left                           2
groups deleted (it created them)      1
allow and block list entries          5
dedup records                     1,234
push tokens                           1
account record                      yes
";
    assert_eq!(s, expected);

    let mut v = purged(0, 0, false);
    for k in [
        "groups_left",
        "groups_deleted",
        "list_entries",
        "dedup_records",
        "push_tokens",
    ] {
        v[k] = json!(0);
    }
    let s = text(|o| render_account_purged(&v, o).unwrap());
    assert_eq!(
        s,
        "account 42: the node held no stored data about it; nothing to erase\n"
    );
    // Any one count makes it an erasure.
    v["dedup_records"] = json!(1);
    let s = text(|o| render_account_purged(&v, o).unwrap());
    assert!(s.starts_with("erased account 42:\n"), "{s}");
    assert!(
        s.ends_with("\naccount record                       no\n"),
        "{s}"
    );

    v.as_object_mut().unwrap().remove("push_tokens");
    let err = render_account_purged(&v, &mut Vec::new()).unwrap_err();
    assert!(format!("{err:#}").contains("push_tokens"), "{err:#}");
}

#[test]
fn group_show_fields() {
    let v = json!({"group": 7, "creator": 1, "version": 12, "members": 1500});
    let s = text(|o| render_group_show(&v, o).unwrap());
    let expected = "\
group    7
creator  account 1
version  12
members  1,500
";
    assert_eq!(s, expected);

    let err = render_group_show(&json!({"group": 7, "creator": 1}), &mut Vec::new()).unwrap_err();
    assert!(format!("{err:#}").contains("version"), "{err:#}");
}

fn members_page(total: u64, offset: u64, members: &[(u64, &str)]) -> serde_json::Value {
    let members: Vec<_> = members
        .iter()
        .map(|&(account, role)| json!({"account": account, "role": role}))
        .collect();
    json!({"group": 7, "total": total, "offset": offset, "members": members})
}

#[test]
fn group_members_table_and_paging_line() {
    let v = members_page(3, 0, &[(1, "admin"), (2, "member"), (30000, "member")]);
    let s = text(|o| render_group_members(&v, o).unwrap());
    let expected = "\
ACCOUNT  ROLE
      1  admin
      2  member
  30000  member
showing 1–3 of 3 members
";
    assert_eq!(s, expected);

    // A middle page names the next offset.
    let v = members_page(2500, 1000, &[(1001, "member"), (1002, "admin")]);
    let s = text(|o| render_group_members(&v, o).unwrap());
    let expected = "\
ACCOUNT  ROLE
   1001  member
   1002  admin
showing 1,001–1,002 of 2,500 members (next page: --offset 1002)
";
    assert_eq!(s, expected);

    let s = text(|o| render_group_members(&members_page(1, 0, &[(5, "admin")]), o).unwrap());
    assert!(s.ends_with("\nshowing 1–1 of 1 member\n"), "{s}");

    // Past the end: no table.
    let s = text(|o| render_group_members(&members_page(3, 10, &[]), o).unwrap());
    assert_eq!(s, "no members at offset 10 (group 7 has 3 members)\n");

    let bad = json!({"group": 7, "total": 1, "offset": 0, "members": [{"account": 1}]});
    let err = render_group_members(&bad, &mut Vec::new()).unwrap_err();
    assert!(format!("{err:#}").contains("role"), "{err:#}");
}
