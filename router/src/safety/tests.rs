//! Unit tests of the limiters and abuse signals, on a manual clock.

use super::*;

const H: u64 = HOUR_MS;

/// Every limit and signal off; each test turns on what it checks.
fn quiet() -> SafetyConfig {
    SafetyConfig {
        per_device_per_sec: 0,
        per_device_burst: 0,
        per_pair_per_sec: 0,
        per_pair_burst: 0,
        recipient_bytes_per_sec: 0,
        recipient_bytes_burst: 0,
        new_connections_per_ip_per_sec: 0,
        new_connections_per_ip_burst: 0,
        group_fanout_per_sender_per_sec: 0,
        group_fanout_burst: 0,
        sealed_per_recipient_per_sec: 0,
        sealed_per_recipient_burst: 0,
        retention_secs: 86_400,
        new_recipients_per_hour: 0,
        blocks_received_per_window: 0,
        reports_received_per_window: 0,
        fanout_per_hour: 0,
        throttled_per_sec: 0,
    }
}

fn safety(cfg: SafetyConfig) -> (Safety, SafetyClock) {
    let clock = SafetyClock::manual();
    (Safety::with_clock(cfg, clock.clone()), clock)
}

fn refused(r: Result<(), Refusal>, limit: Limit) -> u32 {
    let r = r.expect_err("should be refused");
    assert_eq!(r.limit, limit);
    assert!(r.retry_after_ms >= 1);
    r.retry_after_ms
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn is_flagged(s: &Safety, account: u64, now: u64) -> bool {
    s.flagged(now).iter().any(|f| f.account == account)
}

#[test]
fn device_limit_refuses_with_retry_after_and_recovers() {
    let (s, clock) = safety(SafetyConfig {
        per_device_per_sec: 10,
        per_device_burst: 3,
        ..quiet()
    });
    for _ in 0..3 {
        s.check_send((1, 1), &[2], 10, 0).unwrap();
    }
    assert_eq!(
        refused(s.check_send((1, 1), &[2], 10, 0), Limit::Device),
        100
    );
    // Other devices, of the same account or not, have their own buckets.
    s.check_send((1, 2), &[2], 10, 0).unwrap();
    s.check_send((7, 1), &[2], 10, 0).unwrap();
    // One millisecond short of the retry-after is still too early; at it, one send passes.
    clock.advance_ms(99);
    assert_eq!(refused(s.check_send((1, 1), &[2], 10, 0), Limit::Device), 1);
    clock.advance_ms(1);
    s.check_send((1, 1), &[2], 10, 0).unwrap();
    refused(s.check_send((1, 1), &[2], 10, 0), Limit::Device);
    // After a full refill the whole burst is back.
    clock.advance_ms(1_000);
    for _ in 0..3 {
        s.check_send((1, 1), &[2], 10, 0).unwrap();
    }
    refused(s.check_send((1, 1), &[2], 10, 0), Limit::Device);
}

#[test]
fn pair_limit_is_per_account_pair() {
    let (s, clock) = safety(SafetyConfig {
        per_pair_per_sec: 1,
        per_pair_burst: 2,
        ..quiet()
    });
    s.check_send((1, 1), &[2], 0, 0).unwrap();
    s.check_send((1, 2), &[2], 0, 0).unwrap();
    // The pair is (account, account): the sender's other device shares it.
    assert_eq!(refused(s.check_send((1, 1), &[2], 0, 0), Limit::Pair), 1000);
    refused(s.check_send((1, 3), &[2], 0, 0), Limit::Pair);
    // A multi send refused on one pair is refused as a whole.
    refused(s.check_send((1, 1), &[3, 2], 0, 0), Limit::Pair);
    s.check_send((1, 1), &[4], 0, 0).unwrap();
    s.check_send((5, 1), &[2], 0, 0).unwrap();
    clock.advance_ms(1_000);
    s.check_send((1, 1), &[2], 0, 0).unwrap();
    refused(s.check_send((1, 1), &[2], 0, 0), Limit::Pair);
}

#[test]
fn duplicate_recipients_count_once_and_self_is_not_a_pair() {
    let (s, _clock) = safety(SafetyConfig {
        per_pair_per_sec: 1,
        per_pair_burst: 2,
        ..quiet()
    });
    s.check_send((1, 1), &[2, 2, 2], 0, 0).unwrap();
    s.check_send((1, 1), &[2], 0, 0).unwrap();
    refused(s.check_send((1, 1), &[2], 0, 0), Limit::Pair);
    // A long list (sorted copy path) with duplicates.
    let mut long: Vec<u64> = (100..140).collect();
    long.extend(100..140);
    s.check_send((1, 1), &long, 0, 0).unwrap();
    s.check_send((1, 1), &long, 0, 0).unwrap();
    refused(s.check_send((1, 1), &long, 0, 0), Limit::Pair);
    // Sends to the sender's own account are limited per device only.
    for _ in 0..100 {
        s.check_send((1, 1), &[1, 1], 0, 0).unwrap();
    }
}

#[test]
fn recipient_bytes_limit_is_shared_by_senders_and_recovers() {
    let cfg = SafetyConfig {
        recipient_bytes_per_sec: 1_000,
        recipient_bytes_burst: 3_000,
        ..quiet()
    };
    let (s, clock) = safety(cfg);
    s.check_send((1, 1), &[9], 2_000, 0).unwrap();
    // 1000 bytes left: 1500 more must wait 500 ms, whoever sends them.
    assert_eq!(
        refused(s.check_send((2, 1), &[9], 1_500, 0), Limit::RecipientBytes),
        500
    );
    s.check_send((2, 1), &[8], 1_500, 0).unwrap();
    clock.advance_ms(499);
    refused(s.check_send((2, 1), &[9], 1_500, 0), Limit::RecipientBytes);
    clock.advance_ms(1);
    s.check_send((2, 1), &[9], 1_500, 0).unwrap();
    // An envelope larger than the burst passes on a full bucket and empties it.
    clock.advance_ms(10_000);
    s.check_send((3, 1), &[9], 1_000_000, 0).unwrap();
    refused(s.check_send((3, 1), &[9], 1, 0), Limit::RecipientBytes);
    // Empty payloads never touch the byte budget.
    s.check_send((3, 1), &[9], 0, 0).unwrap();
}

#[test]
fn a_sender_refused_by_its_own_limits_spends_no_recipient_bytes() {
    let cfg = SafetyConfig {
        per_pair_per_sec: 1,
        per_pair_burst: 1,
        recipient_bytes_per_sec: 1,
        recipient_bytes_burst: 1_000,
        ..quiet()
    };
    let (s, _clock) = safety(cfg);
    s.check_send((1, 1), &[9], 500, 0).unwrap();
    for _ in 0..10 {
        refused(s.check_send((1, 1), &[9], 500, 0), Limit::Pair);
    }
    s.check_send((2, 1), &[9], 500, 0).unwrap();
    refused(s.check_send((3, 1), &[9], 1, 0), Limit::RecipientBytes);
}

#[test]
fn new_connection_limit_per_address_and_ipv6_prefix() {
    let cfg = SafetyConfig {
        new_connections_per_ip_per_sec: 1,
        new_connections_per_ip_burst: 2,
        ..quiet()
    };
    let (s, clock) = safety(cfg);
    s.check_connection(ip("10.0.0.1")).unwrap();
    s.check_connection(ip("10.0.0.1")).unwrap();
    assert_eq!(
        refused(s.check_connection(ip("10.0.0.1")), Limit::NewConnection),
        1000
    );
    // IPv4-mapped IPv6 is the same source.
    refused(
        s.check_connection(ip("::ffff:10.0.0.1")),
        Limit::NewConnection,
    );
    s.check_connection(ip("10.0.0.2")).unwrap();
    // One IPv6 /64 is one source.
    s.check_connection(ip("2001:db8::1")).unwrap();
    s.check_connection(ip("2001:db8::2")).unwrap();
    refused(
        s.check_connection(ip("2001:db8::ffff:3")),
        Limit::NewConnection,
    );
    s.check_connection(ip("2001:db8:0:1::1")).unwrap();
    clock.advance_ms(1_000);
    s.check_connection(ip("10.0.0.1")).unwrap();
    s.check_connection(ip("2001:db8::9")).unwrap();
}

#[test]
fn group_fanout_limit_counts_deliveries() {
    let cfg = SafetyConfig {
        group_fanout_per_sender_per_sec: 100,
        group_fanout_burst: 500,
        ..quiet()
    };
    let (s, clock) = safety(cfg);
    s.check_group_fanout(7, 400).unwrap();
    assert_eq!(
        refused(s.check_group_fanout(7, 200), Limit::GroupFanout),
        1000
    );
    s.check_group_fanout(7, 100).unwrap();
    s.check_group_fanout(7, 0).unwrap();
    s.check_group_fanout(8, 500).unwrap();
    clock.advance_ms(1_000);
    s.check_group_fanout(7, 100).unwrap();
    refused(s.check_group_fanout(7, 1), Limit::GroupFanout);
    // A group bigger than the burst passes on a full bucket.
    clock.advance_ms(5_000);
    s.check_group_fanout(7, 100_000).unwrap();
    refused(s.check_group_fanout(7, 1), Limit::GroupFanout);
}

#[test]
fn sealed_limit_is_per_recipient() {
    let cfg = SafetyConfig {
        sealed_per_recipient_per_sec: 2,
        sealed_per_recipient_burst: 2,
        ..quiet()
    };
    let (s, clock) = safety(cfg);
    s.check_sealed(9).unwrap();
    s.check_sealed(9).unwrap();
    assert_eq!(refused(s.check_sealed(9), Limit::SealedRecipient), 500);
    s.check_sealed(10).unwrap();
    clock.advance_ms(500);
    s.check_sealed(9).unwrap();
    refused(s.check_sealed(9), Limit::SealedRecipient);
}

#[test]
fn zero_rates_turn_limits_off() {
    let (s, _clock) = safety(quiet());
    for i in 0..2_000u64 {
        s.check_send((1, 1), &[2, 3], 1 << 20, i).unwrap();
        s.check_connection(ip("10.0.0.1")).unwrap();
        s.check_group_fanout(1, 1 << 30).unwrap();
        s.check_sealed(2).unwrap();
        s.note_sent(1, &[i + 10], i);
        s.note_block(1, i);
        s.note_report(1, i);
        s.note_fanout(1, 1 << 20, i);
    }
    assert!(s.flagged(2_000).is_empty());
    assert_eq!(s.abuse.tracked(), 0, "disabled signals keep no records");
    assert!(s.refusals().iter().all(|&(_, n)| n == 0));
}

#[test]
fn burst_zero_means_the_rate() {
    let (s, _clock) = safety(SafetyConfig {
        per_device_per_sec: 3,
        ..quiet()
    });
    for _ in 0..3 {
        s.check_send((1, 1), &[], 0, 0).unwrap();
    }
    refused(s.check_send((1, 1), &[], 0, 0), Limit::Device);
}

#[test]
fn refusals_are_counted_per_limit() {
    let cfg = SafetyConfig {
        per_device_per_sec: 1,
        per_device_burst: 1,
        sealed_per_recipient_per_sec: 1,
        sealed_per_recipient_burst: 1,
        ..quiet()
    };
    let (s, _clock) = safety(cfg);
    s.check_send((1, 1), &[], 0, 0).unwrap();
    for _ in 0..3 {
        s.check_send((1, 1), &[], 0, 0).unwrap_err();
    }
    s.check_sealed(5).unwrap();
    s.check_sealed(5).unwrap_err();
    let counts = s.refusals();
    assert_eq!(
        counts.iter().map(|c| c.0).collect::<Vec<_>>(),
        Limit::ALL.to_vec()
    );
    for (limit, n) in counts {
        let want = match limit {
            Limit::Device => 3,
            Limit::SealedRecipient => 1,
            _ => 0,
        };
        assert_eq!(n, want, "{limit:?}");
    }
    let names: Vec<_> = Limit::ALL.iter().map(|l| l.as_str()).collect();
    assert_eq!(names[2], "recipient_bytes");
    assert_eq!(
        serde_json::to_value(Limit::RecipientBytes).unwrap(),
        "recipient_bytes"
    );
}

#[test]
fn concurrent_callers_share_one_bucket() {
    let (s, _clock) = safety(SafetyConfig {
        per_device_per_sec: 1,
        per_device_burst: 50,
        ..quiet()
    });
    let passed = AtomicU64::new(0);
    std::thread::scope(|scope| {
        for _ in 0..8 {
            scope.spawn(|| {
                for _ in 0..100 {
                    if s.check_send((1, 1), &[], 0, 0).is_ok() {
                        passed.fetch_add(1, Relaxed);
                    }
                }
            });
        }
    });
    assert_eq!(passed.load(Relaxed), 50);
    assert_eq!(s.refusals()[0], (Limit::Device, 750));
}

#[test]
fn new_recipients_past_threshold_flag_and_throttle_the_sender() {
    let cfg = SafetyConfig {
        per_device_per_sec: 1_000,
        per_device_burst: 1_000,
        new_recipients_per_hour: 3,
        throttled_per_sec: 1,
        ..quiet()
    };
    let (s, clock) = safety(cfg);
    let t0 = 1_700_000_000_000;
    s.note_sent(1, &[10, 11, 12], t0);
    assert!(s.flagged(t0).is_empty());
    for _ in 0..5 {
        s.check_send((1, 1), &[10], 0, t0).unwrap();
    }
    s.note_sent(1, &[13], t0 + 1_000);
    let flagged = s.flagged(t0 + 1_000);
    assert_eq!(flagged.len(), 1);
    let f = &flagged[0];
    assert_eq!(
        (f.account, f.new_recipients, f.since_ms),
        (1, 4, t0 + 1_000)
    );
    assert_eq!(f.reasons.len(), 1);
    assert!(
        f.reasons[0].contains("4 distinct new recipients"),
        "{:?}",
        f.reasons
    );
    // Throttled: one send per second for all the account's devices together.
    s.check_send((1, 1), &[10], 0, t0 + 1_000).unwrap();
    assert_eq!(
        refused(s.check_send((1, 1), &[10], 0, t0 + 1_000), Limit::Throttled),
        1000
    );
    refused(s.check_send((1, 2), &[10], 0, t0 + 1_000), Limit::Throttled);
    // Others are not throttled.
    for _ in 0..5 {
        s.check_send((2, 1), &[10], 0, t0 + 1_000).unwrap();
    }
    clock.advance_ms(1_000);
    s.check_send((1, 2), &[10], 0, t0 + 2_000).unwrap();
    refused(s.check_send((1, 1), &[10], 0, t0 + 2_000), Limit::Throttled);
    // An hour after those first contacts, the flag (and the throttle) are gone.
    let later = t0 + H;
    assert!(s.flagged(later).is_empty());
    for _ in 0..5 {
        s.check_send((1, 1), &[10], 0, later).unwrap();
    }
}

#[test]
fn without_a_throttled_rate_flagged_senders_keep_the_device_limit() {
    let cfg = SafetyConfig {
        per_device_per_sec: 1_000,
        per_device_burst: 1_000,
        new_recipients_per_hour: 1,
        ..quiet()
    };
    let (s, _clock) = safety(cfg);
    s.note_sent(1, &[10, 11], 0);
    assert!(is_flagged(&s, 1, 0));
    for _ in 0..100 {
        s.check_send((1, 1), &[10], 0, 0).unwrap();
    }
}

#[test]
fn ongoing_conversations_and_self_are_not_new_recipients() {
    let (s, _clock) = safety(SafetyConfig {
        new_recipients_per_hour: 3,
        ..quiet()
    });
    for i in 0..100 {
        s.note_sent(1, &[10, 11, 12], i * 1_000);
    }
    s.note_sent(1, &[1, 1, 1], 200_000);
    assert!(!is_flagged(&s, 1, 200_000));
    // Talked to within the last hour and begun over an hour ago: not new any more.
    let t = 30 * 60_000;
    s.note_sent(1, &[10, 11, 12], t);
    let t = 80 * 60_000;
    s.note_sent(1, &[10, 11, 12, 13, 14, 15], t);
    assert!(!is_flagged(&s, 1, t), "three new recipients is not past 3");
    s.note_sent(1, &[16], t);
    assert!(is_flagged(&s, 1, t));
    assert_eq!(s.flagged(t)[0].new_recipients, 4);
}

#[test]
fn recipient_memory_is_capped_and_holds_no_account_ids() {
    let (s, _clock) = safety(SafetyConfig {
        new_recipients_per_hour: 5,
        ..quiet()
    });
    let many: Vec<u64> = (1_000..11_000).collect();
    s.note_sent(1, &many, 0);
    for chunk in many.chunks(7) {
        s.note_sent(1, chunk, 1);
    }
    let len = s.abuse.record(1, |r| r.unwrap().contacts.len());
    assert_eq!(len, 11, "capped at 2 * threshold + 1");
    let f = &s.flagged(1)[0];
    assert_eq!(f.new_recipients, 11);
    assert!(f.reasons[0].starts_with("at least 11 "), "{:?}", f.reasons);
    // Fingerprints are 32-bit keyed hashes, not the low bits of the ids.
    let fps: Vec<u32> = s
        .abuse
        .record(1, |r| r.unwrap().contacts.iter().map(|c| c.fp).collect());
    assert!(fps
        .iter()
        .any(|&fp| !(1_000..11_000).contains(&u64::from(fp))));
}

#[test]
fn blocks_and_reports_flag_sorted_by_severity() {
    let cfg = SafetyConfig {
        blocks_received_per_window: 2,
        reports_received_per_window: 1,
        ..quiet()
    };
    let (s, _clock) = safety(cfg);
    for t in [10, 20, 30] {
        s.note_block(5, t);
    }
    s.note_report(6, 40);
    assert!(!is_flagged(&s, 6, 40));
    s.note_report(6, 50);
    for t in [60, 61, 62, 63] {
        s.note_block(7, t);
        s.note_report(7, t);
    }
    let f = s.flagged(100);
    let order: Vec<u64> = f.iter().map(|f| f.account).collect();
    // 7: 3/2 + 2/1 (counts capped at threshold + 1), 6: 2/1, 5: 3/2.
    assert_eq!(order, vec![7, 6, 5]);
    assert_eq!((f[2].blocks, f[2].reports, f[2].since_ms), (3, 0, 30));
    assert_eq!((f[1].blocks, f[1].reports, f[1].since_ms), (0, 2, 50));
    assert_eq!((f[0].blocks, f[0].reports, f[0].reasons.len()), (3, 2, 2));
    assert!(
        f[2].reasons[0].contains("blocked 3 times in the last 24 h"),
        "{:?}",
        f[2].reasons
    );
    assert!(
        f[1].reasons[0].contains("reported 2 times"),
        "{:?}",
        f[1].reasons
    );
}

#[test]
fn fanout_volume_flags_within_the_hour() {
    let (s, _clock) = safety(SafetyConfig {
        fanout_per_hour: 1_000,
        ..quiet()
    });
    s.note_fanout(3, 600, 0);
    s.note_fanout(3, 500, 1_000);
    let f = s.flagged(1_000);
    assert_eq!((f[0].account, f[0].fanout), (3, 1_100));
    assert!(
        f[0].reasons[0].contains("1100 deliveries in the last 1 h"),
        "{:?}",
        f[0].reasons
    );
    // Counted until the hour is over, not a millisecond longer.
    assert!(is_flagged(&s, 3, H - 1));
    assert!(!is_flagged(&s, 3, H));
    s.note_fanout(3, 1_000, H);
    assert_eq!(s.flagged(H + 1).len(), 0, "the old hour no longer counts");
    s.note_fanout(3, 1, H + H / 2);
    assert_eq!(s.flagged(H + H / 2)[0].fanout, 1_001);
    // Direct sends count one delivery per distinct other recipient.
    let many: Vec<u64> = (10..1_011).collect();
    s.note_sent(4, &many, 0);
    s.note_sent(4, &[4, 4], 0);
    assert_eq!(
        s.flagged(0).iter().find(|f| f.account == 4).unwrap().fanout,
        1_001
    );
}

#[test]
fn counters_expire_after_the_retention_window() {
    let cfg = SafetyConfig {
        retention_secs: 100,
        blocks_received_per_window: 2,
        reports_received_per_window: 2,
        new_recipients_per_hour: 2,
        fanout_per_hour: 2,
        ..quiet()
    };
    let (s, _clock) = safety(cfg);
    for t in [0, 50_000, 90_000] {
        s.note_block(5, t);
    }
    assert_eq!(s.flagged(90_000)[0].since_ms, 90_000);
    // The block at 0 leaves the window at 100 s.
    assert!(is_flagged(&s, 5, 99_999));
    assert!(!is_flagged(&s, 5, 100_000));
    // A new episode starts with a new since.
    s.note_block(5, 120_000);
    assert_eq!(s.flagged(120_000)[0].since_ms, 120_000);
    // The "hour" is capped at the retention window.
    s.note_sent(6, &[1, 2, 3], 0);
    let f = s.flagged(0);
    let f6 = f.iter().find(|f| f.account == 6).unwrap();
    assert!(
        f6.reasons.iter().any(|r| r.contains("in the last 100 s")),
        "{:?}",
        f6.reasons
    );
    assert!(!is_flagged(&s, 6, 100_000));
    // expire() keeps what is recent and drops the rest.
    s.expire(120_000);
    assert_eq!(s.abuse.tracked(), 1);
    s.expire(120_000 + 100_000);
    assert_eq!(s.abuse.tracked(), 0);
    assert!(s.flagged(220_000).is_empty());
}

#[test]
fn default_retention_drops_every_counter_after_24_hours() {
    let (s, _clock) = safety(SafetyConfig::default());
    for a in 0..100u64 {
        s.note_sent(a, &[a + 1_000, a + 2_000], 0);
        s.note_block(a + 5_000, 0);
        s.note_report(a + 6_000, 0);
        s.note_fanout(a, 10, 0);
    }
    s.expire(H);
    assert_eq!(
        s.abuse.tracked(),
        200,
        "blocks and reports outlive the hour"
    );
    s.expire(86_400_000 - 1);
    assert_eq!(s.abuse.tracked(), 200);
    s.expire(86_400_000);
    assert_eq!(s.abuse.tracked(), 0);
}

#[test]
fn expire_drops_limiter_states_once_their_bucket_is_full() {
    let cfg = SafetyConfig {
        per_device_per_sec: 10,
        per_device_burst: 10,
        per_pair_per_sec: 10,
        per_pair_burst: 10,
        new_connections_per_ip_per_sec: 10,
        new_connections_per_ip_burst: 10,
        ..quiet()
    };
    let (s, clock) = safety(cfg);
    for a in 0..50u64 {
        s.check_send((a, 1), &[a + 100], 0, 0).unwrap();
        s.check_connection(IpAddr::V4(std::net::Ipv4Addr::from(a as u32)))
            .unwrap();
    }
    s.expire(0);
    assert_eq!(
        (s.device.keys(), s.pair.keys(), s.connection.keys()),
        (50, 50, 50)
    );
    clock.advance_ms(1_000);
    s.expire(1_000);
    assert_eq!(
        (s.device.keys(), s.pair.keys(), s.connection.keys()),
        (0, 0, 0)
    );
}

#[test]
fn forget_erases_counters_and_limiter_states_of_an_account() {
    let cfg = SafetyConfig {
        per_device_per_sec: 1,
        per_device_burst: 1,
        per_pair_per_sec: 1,
        per_pair_burst: 1,
        recipient_bytes_per_sec: 1,
        recipient_bytes_burst: 10,
        sealed_per_recipient_per_sec: 1,
        sealed_per_recipient_burst: 1,
        group_fanout_per_sender_per_sec: 1,
        group_fanout_burst: 1,
        blocks_received_per_window: 1,
        new_recipients_per_hour: 1,
        ..quiet()
    };
    let (s, _clock) = safety(cfg);
    s.check_send((1, 1), &[2], 10, 0).unwrap();
    s.check_send((3, 1), &[1], 10, 0).unwrap();
    s.check_sealed(1).unwrap();
    s.check_group_fanout(1, 1).unwrap();
    s.note_sent(1, &[2, 3], 0);
    s.note_block(1, 0);
    s.note_block(1, 0);
    s.note_sent(3, &[1], 0);
    assert!(is_flagged(&s, 1, 0));
    refused(s.check_send((1, 1), &[2], 10, 0), Limit::Device);

    s.forget(1);
    assert!(s.flagged(0).is_empty());
    s.abuse.record(1, |r| assert!(r.is_none()));
    let fp = s.abuse.fingerprint(1);
    s.abuse.record(3, |r| {
        assert!(r.unwrap().contacts.iter().all(|c| c.fp != fp))
    });
    // Every bucket of account 1, as sender or recipient, starts full again.
    s.check_send((1, 1), &[2], 0, 0).unwrap();
    s.check_send((4, 1), &[1], 10, 0).unwrap();
    s.check_sealed(1).unwrap();
    s.check_group_fanout(1, 1).unwrap();
    // Others keep theirs.
    refused(s.check_send((3, 1), &[5], 0, 0), Limit::Device);
}

#[test]
fn tracked_accounts_are_bounded_and_flagged_ones_survive() {
    let cfg = SafetyConfig {
        reports_received_per_window: 1,
        blocks_received_per_window: 100,
        ..quiet()
    };
    let clock = SafetyClock::manual();
    let s = Safety::build(cfg, clock, 2 * SHARDS);
    s.note_report(42, 0);
    s.note_report(42, 0);
    for a in 1_000..11_000u64 {
        s.note_block(a, a);
    }
    assert!(s.abuse.tracked() <= 2 * SHARDS);
    assert_eq!(
        s.flagged(20_000)
            .iter()
            .map(|f| f.account)
            .collect::<Vec<_>>(),
        vec![42]
    );
}

#[test]
fn config_defaults_and_toml() {
    let d = SafetyConfig::default();
    assert_eq!(d.retention_secs, 86_400);
    assert!(d.recipient_bytes_burst as usize >= hearth_protocol::DEFAULT_MAX_ENVELOPE);
    assert!(d.throttled_per_sec > 0 && d.throttled_per_sec < d.per_device_per_sec);
    let text = toml::to_string(&d).unwrap();
    assert_eq!(toml::from_str::<SafetyConfig>(&text).unwrap(), d);
    let c: SafetyConfig = toml::from_str("per_device_per_sec = 5\nretention_secs = 60").unwrap();
    assert_eq!((c.per_device_per_sec, c.retention_secs), (5, 60));
    assert_eq!(c.per_pair_burst, d.per_pair_burst);
    assert!(toml::from_str::<SafetyConfig>("per_device_per_second = 5").is_err());
}

#[test]
fn safety_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Safety>();
}
