//! `hearth-compare`: the same workloads against an embedded Hearth node, NATS core and NATS
//! JetStream, on one machine, through one driver (see `benches/compare/README.md`).
//!
//! Normally started by `benches/compare/run.sh`, which installs nats-server and builds this.

mod bench;
mod driver;
mod hearth;
mod nats;
mod natsd;
mod payload;
mod report;
mod seen;
mod stats;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::Parser;

use crate::bench::{Settings, Systems};
use crate::natsd::{JetStream, NatsServer};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Compare Hearth with NATS (core and JetStream) on this machine, loopback only.
#[derive(Parser, Debug)]
#[command(name = "hearth-compare")]
struct Args {
    /// nats-server for core NATS (1:1 and fan-out).
    #[arg(long, env = "NATS_CORE_BIN", default_value = "/usr/sbin/nats-server")]
    nats_core: PathBuf,
    /// nats-server for JetStream; must support `sync_interval: always` (2.10 or later).
    #[arg(long, env = "NATS_JS_BIN", default_value = "/usr/sbin/nats-server")]
    nats_js: PathBuf,
    /// Skip the reference row: JetStream with its default sync interval (no fsync per write).
    #[arg(long)]
    no_js_reference: bool,
    /// Skip the Hearth ephemeral rows.
    #[arg(long)]
    no_ephemeral: bool,
    /// Output directory (results.json, server logs and configs, TLS files).
    #[arg(long, default_value = "out")]
    out: PathBuf,
    /// Where Hearth's RocksDB and JetStream's store live (same disk for both); default OUT/data.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Workloads to run: letters of a (1:1 saturation), b (fixed rate), c (fan-out), d (durable).
    #[arg(long, default_value = "abcd")]
    only: String,
    /// Payload bytes per message.
    #[arg(long, default_value_t = 512)]
    payload: usize,
    /// 1:1 sender/receiver connection pairs.
    #[arg(long, default_value_t = 8)]
    pairs: usize,
    /// Closed loop, 1:1: messages outstanding per sender.
    #[arg(long, default_value_t = 256)]
    window: usize,
    /// Fan-out: groups (one sender each).
    #[arg(long, default_value_t = 2)]
    groups: usize,
    /// Fan-out: receivers per group.
    #[arg(long, default_value_t = 100)]
    group_size: usize,
    /// Closed loop, fan-out: messages outstanding per sender.
    #[arg(long, default_value_t = 16)]
    fanout_window: usize,
    /// Durable acceptance: sender connections.
    #[arg(long, default_value_t = 8)]
    durable_conns: usize,
    /// Closed loop, durable: unacknowledged messages per sender.
    #[arg(long, default_value_t = 64)]
    durable_window: usize,
    /// Open-loop rate (msgs/s) of workload b, repeatable; default: a quarter and a half of the
    /// lowest 1:1 saturation figure of workload a.
    #[arg(long)]
    rate: Vec<f64>,
    /// Warm-up seconds per run (sent and checked, not measured).
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Measured seconds per run.
    #[arg(long, default_value_t = 8.0)]
    secs: f64,
    /// Longest wait for stragglers after a run before declaring them lost, seconds.
    #[arg(long, default_value_t = 5.0)]
    settle: f64,
    /// Worker threads of the embedded node's runtime.
    #[arg(long, default_value_t = 2)]
    node_threads: usize,
    /// QUIC endpoints of the embedded node (SO_REUSEPORT).
    #[arg(long, default_value_t = 2)]
    quic_endpoints: usize,
    /// Worker threads of the load generator's runtime.
    #[arg(long, default_value_t = 2)]
    gen_threads: usize,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .with_writer(std::io::stderr)
        .init();
    std::fs::create_dir_all(&args.out)?;
    let out = args.out.canonicalize()?;
    let data = args.data_dir.clone().unwrap_or_else(|| out.join("data"));
    if data.exists() {
        std::fs::remove_dir_all(&data).with_context(|| format!("clearing {}", data.display()))?;
    }
    std::fs::create_dir_all(&data)?;
    let data = data.canonicalize()?;
    let tls = natsd::generate_tls(&out.join("tls"))?;

    let core = NatsServer::start(&args.nats_core, "nats-core", &out, &tls, None)?;
    let js_sync = NatsServer::start(
        &args.nats_js,
        "jetstream-sync",
        &out,
        &tls,
        Some(JetStream {
            store_dir: data.join("js-sync"),
            sync_always: true,
        }),
    )?;
    let js_default = if args.no_js_reference {
        None
    } else {
        Some(NatsServer::start(
            &args.nats_js,
            "jetstream-default",
            &out,
            &tls,
            Some(JetStream {
                store_dir: data.join("js-default"),
                sync_always: false,
            }),
        )?)
    };

    // The node gets a runtime of its own (its own threads), like a separate server process.
    let node_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.node_threads)
        .thread_name("hearth-node")
        .enable_all()
        .build()?;
    let node_cfg = node_config(&args, &data, &tls);
    let node = node_rt
        .block_on(hearth_router::Node::start(node_cfg))
        .context("starting Hearth")?;
    let target = hearth::Target {
        addr: node.quic_addr(),
        admin: node.admin_addr(),
        admin_token: node.admin_token().to_owned(),
        server_name: "localhost".into(),
        ca_pem: tls.ca_pem.clone(),
        key: Arc::new(
            hearth_protocol::SigningKey::from_pkcs8(node.signing_key().to_pkcs8())
                .map_err(|e| anyhow::anyhow!("copying the token key: {e}"))?,
        ),
    };

    let settings = Settings {
        payload: args.payload,
        pairs: args.pairs,
        window: args.window,
        groups: args.groups,
        group_size: args.group_size,
        fanout_window: args.fanout_window,
        durable_conns: args.durable_conns,
        durable_window: args.durable_window,
        rates: args.rate.clone(),
        warmup_secs: args.warmup,
        measure_secs: args.secs,
        settle_secs: args.settle,
        workloads: args.only.chars().collect(),
        hearth_ephemeral: !args.no_ephemeral,
    };
    let systems = Systems {
        hearth: target,
        ca: tls.ca.clone(),
        core: &core,
        js_sync: &js_sync,
        js_default: js_default.as_ref(),
    };
    let gen_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.gen_threads)
        .thread_name(format!("{}rt", stats::GEN_THREAD))
        .enable_all()
        .build()?;
    let started = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let rows = gen_rt.block_on(bench::run_all(&settings, &systems));
    drop(gen_rt);
    node_rt.block_on(node.shutdown());

    let ratios = report::ratios(&rows);
    let machine = machine();
    let header = format!(
        "Hearth vs NATS on {} ({} CPUs, kernel {}); payload {} B; {} s measured per run after {} s warm-up; \
         nats-server core {}, JetStream {}",
        machine["cpu_model"].as_str().unwrap_or("?"),
        machine["cpus"],
        machine["kernel"].as_str().unwrap_or("?"),
        args.payload,
        args.secs,
        args.warmup,
        core.version,
        js_sync.version
    );
    let header = match std::env::var("HEARTH_COMPARE_COMMAND") {
        Ok(cmd) => format!("{header}\ncommand: {cmd}"),
        Err(_) => header,
    };
    print!("{}", report::table(&rows, &ratios, &header));
    let json = serde_json::json!({
        "command": std::env::var("HEARTH_COMPARE_COMMAND").ok(),
        "tool_command": std::env::args().collect::<Vec<_>>().join(" "),
        "started_unix": started,
        "machine": machine,
        "versions": {
            "hearth": env!("CARGO_PKG_VERSION"),
            "nats_core": core.version,
            "nats_jetstream": js_sync.version,
            "nats_core_bin": args.nats_core,
            "nats_jetstream_bin": args.nats_js,
        },
        "nats_configs": {
            "core": core.config,
            "jetstream_sync": js_sync.config,
            "jetstream_default": js_default.as_ref().map(|s| s.config.clone()),
        },
        "settings": settings,
        "hearth_node": {
            "runtime_threads": args.node_threads,
            "quic_endpoints": args.quic_endpoints,
            "durability": "sync",
            "rate_limits": "off",
        },
        "generator_threads": args.gen_threads,
        "rows": rows,
        "ratios": ratios,
    });
    let path = out.join("results.json");
    std::fs::write(&path, serde_json::to_string_pretty(&json)?)?;
    println!("\nwrote {}", path.display());
    drop((core, js_sync, js_default));
    let _ = std::fs::remove_dir_all(&data);
    Ok(())
}

/// The embedded node: durability sync, our certificate, queues large enough for the durable
/// run (its recipients stay offline, as JetStream's stream has no consumer).
fn node_config(
    args: &Args,
    data: &std::path::Path,
    tls: &natsd::TlsFiles,
) -> hearth_router::Config {
    let mut cfg = hearth_router::Config {
        listen: "127.0.0.1:0".parse().expect("valid address"),
        admin_listen: "127.0.0.1:0".parse().expect("valid address"),
        data_dir: data.join("hearth"),
        tls_cert: Some(tls.cert.clone()),
        tls_key: Some(tls.key.clone()),
        durability: hearth_router::DurabilityMode::Sync,
        quic_endpoints: args.quic_endpoints,
        ..hearth_router::Config::default()
    };
    cfg.limits.max_queue_len = 100_000_000;
    cfg.limits.max_queue_bytes = 64 << 30;
    // Anti-abuse rate limits and signals are policy, not capacity (NATS has none): 0 = off.
    let s = &mut cfg.safety;
    s.per_device_per_sec = 0;
    s.per_pair_per_sec = 0;
    s.recipient_bytes_per_sec = 0;
    s.new_connections_per_ip_per_sec = 0;
    s.group_fanout_per_sender_per_sec = 0;
    s.new_recipients_per_hour = 0;
    s.fanout_per_hour = 0;
    cfg
}

/// What the results were measured on.
fn machine() -> serde_json::Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    let mem_kb: u64 = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0);
    serde_json::json!({
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu_model": model,
        "memory_gib": mem_kb / (1 << 20),
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
    })
}
