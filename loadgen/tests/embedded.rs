//! Runs the load generator against an embedded node (real QUIC, real RocksDB in a temp dir)
//! and checks that everything sent arrives once, in order, with sane latency figures.

use std::time::Duration;

use hearth_loadgen::{run, Mode, RunConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_run_delivers_everything_once() {
    let mut cfg = RunConfig::embedded(10, 200.0, Duration::from_secs(2));
    cfg.warmup = Duration::from_millis(300);
    cfg.settle = Duration::from_secs(30);
    let r = run(cfg).await.expect("run completes");
    eprintln!("{}", r.to_table());

    // 200/s over 2 s: 400 sends in the measured window (the schedule is exact).
    assert_eq!(r.sent, 400);
    assert_eq!(r.accepted, r.sent, "errors: {:?}", r.errors);
    assert_eq!(r.delivered, r.sent);
    assert!(r.total_sent > r.sent, "warm-up sends happen too");
    assert_eq!(r.lost, 0);
    assert_eq!(r.duplicated, 0);
    assert_eq!(r.reordered, 0);
    assert_eq!(r.unanswered, 0);
    assert!(r.errors.is_empty(), "errors: {:?}", r.errors);

    let l = r.latency_us;
    assert_eq!(l.count, r.delivered);
    assert!(l.p50 > 0);
    assert!(
        l.p50 <= l.p90 && l.p90 <= l.p99 && l.p99 <= l.p999 && l.p999 <= l.max,
        "{l:?}"
    );
    assert!(r.delivered_per_s > 0.0 && r.accepted_per_s > 0.0);

    let json: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
    assert_eq!(json["mode"], "open-loop");
    assert_eq!(json["lost"], 0);
    assert_eq!(json["latency_us"]["p99"], l.p99);
    for k in [
        "offered_per_s",
        "delivered_per_s",
        "accepted_per_s",
        "late_sends",
        "errors",
    ] {
        assert!(json.get(k).is_some(), "missing {k}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_loop_run_is_labelled_and_loses_nothing() {
    let mut cfg = RunConfig::embedded(4, 1.0, Duration::from_millis(500));
    cfg.mode = Mode::ClosedLoop { window: 4 };
    cfg.settle = Duration::from_secs(30);
    let r = run(cfg).await.expect("run completes");

    assert!(r.is_closed_loop());
    assert!(r.to_table().contains("CLOSED LOOP (saturation)"));
    assert!(r.to_json().contains("CLOSED LOOP (saturation)"));
    assert!(r.sent > 0);
    assert_eq!(r.delivered, r.accepted);
    assert_eq!(r.accepted, r.sent, "errors: {:?}", r.errors);
    assert_eq!(
        (r.lost, r.duplicated, r.reordered, r.unanswered),
        (0, 0, 0, 0)
    );
}
