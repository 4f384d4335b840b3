//! The other modes at small scale: agents and a coordinator on loopback, the capacity search,
//! idle connections with churn.

use std::time::Duration;

use hearth_loadgen::{
    agent, coordinate, find_max, run_connections, AgentSecret, IdleConfig, RunConfig, SearchOpts,
    Slo, Target,
};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

fn embedded() -> Target {
    RunConfig::embedded(2, 1.0, Duration::from_secs(1)).target
}

fn secret() -> AgentSecret {
    AgentSecret::new(b"test secret, not for production").unwrap()
}

/// An agent on a loopback port that exits after one authenticated run.
async fn spawn_agent(
    secret: AgentSecret,
) -> (
    std::net::SocketAddr,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    (addr, tokio::spawn(agent(l, secret, true)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_merges_two_agents_and_runs_a_probe() {
    let mut addrs = Vec::new();
    let mut agents = Vec::new();
    for _ in 0..2 {
        let (addr, task) = spawn_agent(secret()).await;
        addrs.push(addr);
        agents.push(task);
    }
    let mut cfg = RunConfig::embedded(10, 200.0, Duration::from_secs(2));
    cfg.scenario.mix.group = 1.0;
    cfg.scenario.groups.count = 2;
    cfg.scenario.load.probe_rate = Some(20.0);
    cfg.scenario.phases.settle = Duration::from_secs(30);
    cfg.slos = vec![Slo::parse("p99<60s").unwrap()];
    let r = coordinate(cfg, &addrs, &secret())
        .await
        .expect("coordinated run");
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
async fn an_agent_refuses_a_coordinator_with_another_secret_and_keeps_serving() {
    let (addr, task) = spawn_agent(secret()).await;
    let cfg = RunConfig::embedded(2, 10.0, Duration::from_secs(1));
    let wrong = AgentSecret::new(b"another secret, also 16+ bytes").unwrap();
    let e = coordinate(cfg.clone(), &[addr], &wrong)
        .await
        .expect_err("wrong secret");
    let e = format!("{e:#}");
    assert!(
        e.contains("authentication") && e.contains(&addr.to_string()),
        "{e}"
    );
    // Not counted as its one run: the agent still serves, and a right-secret run succeeds.
    let r = coordinate(cfg, &[addr], &secret())
        .await
        .expect("right secret");
    assert_eq!(r.sent, 10);
    task.await.unwrap().expect("the agent served one run");
}

/// Reads one JSON line.
async fn json_line(r: &mut BufReader<tokio::net::tcp::OwnedReadHalf>) -> Option<serde_json::Value> {
    let mut line = String::new();
    let n = tokio::time::timeout(Duration::from_secs(20), r.read_line(&mut line))
        .await
        .expect("an answer in time")
        .unwrap();
    (n > 0).then(|| serde_json::from_str(&line).expect("a JSON line"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_and_version_1_peers_get_an_error_and_nothing_runs() {
    let (addr, task) = spawn_agent(secret()).await;
    let v1 = serde_json::json!({
        "type": "run",
        "version": 1,
        "config": RunConfig::embedded(2, 10.0, Duration::from_secs(1)),
    });
    for (msg, expect) in [(v1.to_string(), "version 1"), ("garbage".into(), "not a")] {
        let (rd, mut wr) = tokio::net::TcpStream::connect(addr)
            .await
            .unwrap()
            .into_split();
        let mut rd = BufReader::new(rd);
        let hello = json_line(&mut rd).await.expect("hello");
        assert_eq!(hello["type"], "hello");
        assert_eq!(hello["version"], 2);
        assert_eq!(hello["nonce"].as_str().map(str::len), Some(64));
        wr.write_all(format!("{msg}\n").as_bytes()).await.unwrap();
        let answer = json_line(&mut rd).await.expect("an error line");
        assert_eq!(answer["type"], "error", "{answer}");
        let m = answer["message"].as_str().unwrap();
        assert!(m.contains(expect), "{m}");
        assert!(json_line(&mut rd).await.is_none(), "the agent closes");
    }
    // A proof that does not check: the same refusal a wrong secret gets.
    let (rd, mut wr) = tokio::net::TcpStream::connect(addr)
        .await
        .unwrap()
        .into_split();
    let mut rd = BufReader::new(rd);
    json_line(&mut rd).await.expect("hello");
    let forged = serde_json::json!({
        "type": "run", "version": 2, "nonce": "00".repeat(32), "proof": "00".repeat(32),
        "config": "{}",
    });
    wr.write_all(format!("{forged}\n").as_bytes())
        .await
        .unwrap();
    let answer = json_line(&mut rd).await.expect("an error line");
    assert_eq!(answer["message"], "authentication failed", "{answer}");
    // Still serving (with --once, a run would have ended it).
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!task.is_finished());
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_detects_an_impostor_agent_before_go() {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    // Says hello, takes the run message, and claims to be ready without the secret.
    let impostor = tokio::spawn(async move {
        let (s, _) = l.accept().await.unwrap();
        let (rd, mut wr) = s.into_split();
        let mut rd = BufReader::new(rd);
        let hello = serde_json::json!({"type": "hello", "version": 2, "nonce": "ab".repeat(32)});
        wr.write_all(format!("{hello}\n").as_bytes()).await.unwrap();
        let run = json_line(&mut rd).await.expect("run");
        let ready = serde_json::json!({"type": "ready", "proof": "00".repeat(32)});
        wr.write_all(format!("{ready}\n").as_bytes()).await.unwrap();
        let next = json_line(&mut rd).await;
        (run, next)
    });
    let cfg = RunConfig::embedded(2, 10.0, Duration::from_secs(1));
    let e = coordinate(cfg, &[addr], &secret())
        .await
        .expect_err("impostor");
    let e = format!("{e:#}");
    assert!(
        e.contains("authentication") && e.contains(&addr.to_string()),
        "{e}"
    );
    let (run, next) = impostor.await.unwrap();
    assert!(next.is_none(), "no go for an impostor: {next:?}");
    // What it saw: the config without the token key, and the key sealed.
    let config: serde_json::Value = serde_json::from_str(run["config"].as_str().unwrap()).unwrap();
    assert_eq!(
        config["target"]["Remote"]["key_pkcs8"],
        serde_json::json!([])
    );
    assert!(run["sealed_key"].as_str().is_some_and(|k| !k.is_empty()));
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
        resumption: true,
        reconnect_all: true,
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
    // The reconnect storm: every connection back, every handshake resumed from a ticket.
    let storm = r.storm.expect("--reconnect-all ran");
    assert_eq!((storm.reconnected, storm.failed), (60, 0));
    assert_eq!(storm.node_resumed, Some(60));
}
