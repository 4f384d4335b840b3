//! Runs the load generator against an embedded node (real QUIC, real RocksDB in a temp dir)
//! and checks that everything sent arrives once, in order, with sane latency figures.

use std::time::Duration;

use hearth_loadgen::{run, Dist, RunConfig, Scenario};

fn scenario_file(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scenarios")
        .join(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_run_delivers_everything_once() {
    let mut cfg = RunConfig::embedded(10, 200.0, Duration::from_secs(2));
    cfg.scenario.phases.warmup = Duration::from_millis(300);
    cfg.scenario.phases.settle = Duration::from_secs(30);
    let r = run(cfg).await.expect("run completes");
    eprintln!("{}", r.to_table());

    // 200/s over 2 s: 400 sends in the measured window (the constant schedule is exact).
    assert_eq!(r.sent, 400);
    assert_eq!(r.accepted, r.sent, "errors: {:?}", r.errors);
    assert_eq!(r.delivered, r.sent);
    assert!(r.total_sent > r.sent, "warm-up sends happen too");
    assert_eq!(r.lost, 0);
    assert_eq!(r.duplicated, 0);
    assert_eq!(r.reordered, 0);
    assert_eq!(r.unanswered, 0);
    assert!(r.errors.is_empty(), "errors: {:?}", r.errors);
    assert!(r.passed, "{:?}", r.slo);
    assert_eq!(r.exit_code(), 0);

    let l = r.latency_us;
    assert_eq!(l.count, r.delivered);
    assert!(l.p50 > 0);
    assert!(
        l.p50 <= l.p90 && l.p90 <= l.p99 && l.p99 <= l.p999 && l.p999 <= l.max,
        "{l:?}"
    );
    assert_eq!(r.accept_latency_us.count, r.accepted);
    assert!(r.delivered_per_s > 0.0 && r.accepted_per_s > 0.0);
    // One timeline row per second at least, in order, covering warm-up and steady.
    assert!(r.timeline.len() >= 2, "{:?}", r.timeline);
    assert!(r.timeline.windows(2).all(|w| w[0].start_s < w[1].start_s));
    assert!(r
        .timeline
        .iter()
        .any(|i| i.phase == "steady" && i.count > 0));
    let node = r.node.expect("embedded node status");
    assert!(node.includes_generator);
    assert!(node.connections >= 10 && node.rss_bytes > 0, "{node:?}");

    let json: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
    assert_eq!(json["mode"], "open-loop");
    assert_eq!(json["lost"], 0);
    assert_eq!(json["latency_us"]["p99"], l.p99);
    assert_eq!(json["passed"], true);
    for k in [
        "offered_per_s",
        "delivered_per_s",
        "accepted_per_s",
        "late_sends",
        "errors",
        "slo",
        "self_check",
        "timeline",
    ] {
        assert!(json.get(k).is_some(), "missing {k}");
    }
    assert!(json["self_check"]["generator_saturated"].is_boolean());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_loop_run_is_labelled_and_loses_nothing() {
    let mut cfg = RunConfig::embedded(4, 1.0, Duration::from_millis(500));
    cfg.scenario.load.rate = None;
    cfg.scenario.load.closed_loop = Some(4);
    cfg.scenario.phases.settle = Duration::from_secs(30);
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

/// The smoke scenario: 1:1, group and ephemeral sends with Poisson arrivals and a ramp, group
/// fan-out, devices that come back and drain their queues, churn, and the latency probe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smoke_scenario_fans_out_completely_and_drains_offline_queues() {
    let scenario = Scenario::load(&scenario_file("smoke.toml")).expect("smoke.toml parses");
    let mut cfg = RunConfig::embedded(2, 1.0, Duration::from_secs(1));
    cfg.scenario = scenario;
    let r = run(cfg).await.expect("run completes");
    eprintln!("{}", r.to_table());

    assert!(r.total_sent > 0);
    assert_eq!(
        (r.lost, r.unanswered, r.reordered),
        (0, 0, 0),
        "{:?}",
        r.errors
    );
    let f = r.fanout.expect("group traffic");
    assert!(f.messages > 0);
    assert_eq!(f.complete, f.messages, "{f:?}");
    assert_eq!(
        (f.missing, f.unexpected, f.recipient_mismatch),
        (0, 0, 0),
        "{f:?}"
    );
    assert!(r.group_deliveries_per_s > 0.0);
    assert!(r.latency_by_kind.contains_key("group"));
    assert!(r.latency_by_kind.contains_key("one_to_one"));
    let off = r.offline.expect("offline devices");
    assert_eq!(off.devices, 6);
    assert!(off.delivered > 0, "offline devices drained their queues");
    let probe = r.probe_latency_us.expect("probe ran");
    assert!(probe.count > 0);
    let g = r.groups.expect("groups");
    assert_eq!(g.count, 4);
    assert!(g.min_size >= 3 && g.max_size <= 12);
    assert!(r.passed, "{:?}", r.slo);
}

#[test]
fn ready_made_scenarios_parse() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
    let mut names = Vec::new();
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "toml") {
            let s = Scenario::load(&p).unwrap_or_else(|e| panic!("{}: {e:#}", p.display()));
            names.push(s.name.clone());
        }
    }
    for want in ["smoke", "one_to_one", "groups", "mixed"] {
        assert!(names.iter().any(|n| n == want), "{want} missing: {names:?}");
    }
    let g = Scenario::load(&scenario_file("groups.toml")).unwrap();
    assert!(matches!(g.groups.size, Dist::Zipf { .. }));
}
