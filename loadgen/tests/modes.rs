//! The other modes at small scale: agents and a coordinator on loopback, the capacity search,
//! idle connections with churn.

use std::time::Duration;

use hearth_loadgen::{
    agent, coordinate, find_max, run_connections, IdleConfig, RunConfig, SearchOpts, Slo, Target,
};

fn embedded() -> Target {
    RunConfig::embedded(2, 1.0, Duration::from_secs(1)).target
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_merges_two_agents_and_runs_a_probe() {
    let mut addrs = Vec::new();
    let mut agents = Vec::new();
    for _ in 0..2 {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        addrs.push(l.local_addr().unwrap());
        agents.push(tokio::spawn(agent(l, true)));
    }
    let mut cfg = RunConfig::embedded(10, 200.0, Duration::from_secs(2));
    cfg.scenario.mix.group = 1.0;
    cfg.scenario.groups.count = 2;
    cfg.scenario.load.probe_rate = Some(20.0);
    cfg.scenario.phases.settle = Duration::from_secs(30);
    cfg.slos = vec![Slo::parse("p99<60s").unwrap()];
    let r = coordinate(cfg, &addrs).await.expect("coordinated run");
    eprintln!("{}", r.to_table());
    for a in agents {
        a.await.unwrap().expect("agent served one run");
    }

    assert!(r.target.contains("via 2 agents"), "{}", r.target);
    // 200/s split in two over 2 s: each agent's constant schedule gives 200 measured sends.
    assert_eq!(r.sent, 400);
    assert_eq!(r.offered_per_s, Some(200.0));
    assert_eq!(r.accepted, r.sent, "{:?}", r.errors);
    // The merged histogram holds both agents' deliveries.
    assert_eq!(r.latency_us.count, r.delivered);
    assert!(r.delivered > r.sent, "group sends fan out");
    assert_eq!((r.lost, r.unanswered, r.reordered), (0, 0, 0));
    let g = r.groups.expect("groups");
    assert_eq!(g.count, 4, "two groups per agent");
    let f = r.fanout.expect("fan-out");
    assert!(f.messages > 0 && f.complete == f.messages, "{f:?}");
    assert_eq!(r.connections.online, 10);
    // The coordinator's probe: 20/s over the 2 s window, on its own histogram.
    let probe = r.probe_latency_us.expect("probe");
    assert_eq!(probe.count, 40);
    assert!(r.passed, "{:?}", r.slo);
    assert!(r.timeline.iter().any(|i| i.count > 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capacity_search_doubles_while_passing_and_reports_the_highest_pass() {
    let mut cfg = RunConfig::embedded(4, 50.0, Duration::from_millis(500));
    cfg.scenario.phases.settle = Duration::from_secs(30);
    cfg.slos = vec![Slo::parse("p99<60s").unwrap()];
    let opts = SearchOpts {
        max_steps: 2,
        precision: 0.05,
    };
    let r = find_max(cfg.clone(), opts).await.expect("search runs");
    assert_eq!(r.steps.len(), 2);
    assert_eq!(
        r.steps.iter().map(|s| s.rate).collect::<Vec<_>>(),
        [50.0, 100.0]
    );
    assert!(r.steps.iter().all(|s| s.passed));
    assert_eq!(r.max_rate, Some(100.0));
    assert_eq!(r.exit_code(), 0);
    assert_eq!(r.best.as_ref().unwrap().offered_per_s, Some(100.0));

    // An objective nothing meets: the rate halves, and nothing passes.
    cfg.slos = vec![Slo::parse("p99<1us").unwrap()];
    let r = find_max(cfg, opts).await.expect("search runs");
    assert_eq!(
        r.steps.iter().map(|s| s.rate).collect::<Vec<_>>(),
        [50.0, 25.0]
    );
    assert_eq!(r.max_rate, None);
    assert_eq!(r.lowest_failing_rate, Some(25.0));
    assert_eq!(r.exit_code(), 2);
    assert!(r.steps[0].failed.contains(&"p99<1us".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_held_churned_and_measured() {
    let cfg = IdleConfig {
        target: embedded(),
        connections: 60,
        connect_rate: 0.0,
        source_ips: 2,
        hold: Duration::from_secs(2),
        churn: 0.1,
        account_base: 9_000_000,
        slos: vec![
            Slo::parse("connect_failures==0").unwrap(),
            Slo::parse("rss_per_connection<1GiB").unwrap(),
        ],
        progress: false,
    };
    let r = run_connections(cfg).await.expect("connections run");
    eprintln!("{}", r.to_table());
    assert_eq!((r.requested, r.connected, r.failed), (60, 60, 0));
    // 10% of 60 per second for 2 s.
    assert!(r.reconnects >= 6, "{}", r.reconnects);
    let held = r.node_held.expect("embedded node status");
    assert_eq!(held.connections, 60);
    assert!(r.node_rss_per_connection_bytes.is_some());
    assert!(r.node_includes_generator);
    assert!(r.passed, "{:?}", r.slo);
}
