//! `hearthd`: the Hearth node.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use hearth_router::{Config, DurabilityMode, Node};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Run a Hearth node. With no configuration it runs the embedded default: one node, data in
/// ./hearth-data, a self-signed development certificate.
#[derive(Parser, Debug)]
#[command(name = "hearthd", version)]
struct Args {
    /// TOML configuration file (see deploy/hearthd.toml).
    #[arg(long, short, env = "HEARTH_CONFIG")]
    config: Option<PathBuf>,
    /// QUIC (UDP) listen address.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Admin HTTP listen address.
    #[arg(long)]
    admin_listen: Option<SocketAddr>,
    /// Data directory.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// TLS certificate chain (PEM).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Token signing key (PKCS#8 DER; written as v1, v1 and v2 read).
    #[arg(long)]
    token_key: Option<PathBuf>,
    /// `sync` (default) or `none` (no fsync: benchmarks only, unsafe).
    #[arg(long, value_parser = parse_durability)]
    durability: Option<DurabilityMode>,
    /// Log filter, e.g. `info` or `hearth_router=debug` (env RUST_LOG also works).
    #[arg(long, default_value = "info", env = "RUST_LOG")]
    log: String,
}

fn parse_durability(s: &str) -> Result<DurabilityMode, String> {
    match s {
        "sync" => Ok(DurabilityMode::Sync),
        "none" => Ok(DurabilityMode::None),
        _ => Err("expected `sync` or `none`".into()),
    }
}

fn main() -> anyhow::Result<()> {
    // A panic anywhere in the node is fatal: state a panic interrupted cannot be trusted (see
    // the lock policy in driver.rs), and a supervisor restarts the node, which recovers from
    // disk.
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        std::process::abort();
    }));
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&args.log))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let mut cfg = match &args.config {
        Some(p) => Config::from_toml(
            &std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
        )
        .with_context(|| format!("in {}", p.display()))?,
        None => Config::default(),
    };
    if let Some(v) = args.listen {
        cfg.listen = v;
    }
    if let Some(v) = args.admin_listen {
        cfg.admin_listen = v;
    }
    if let Some(v) = args.data_dir {
        cfg.data_dir = v;
    }
    if let Some(v) = args.tls_cert {
        cfg.tls_cert = Some(v);
    }
    if let Some(v) = args.tls_key {
        cfg.tls_key = Some(v);
    }
    if let Some(v) = args.token_key {
        cfg.token_key = Some(v);
    }
    if let Some(v) = args.durability {
        cfg.durability = v;
    }
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let node = Node::start(cfg).await?;
        println!(
            "hearthd listening: quic={} admin={}",
            node.quic_addr(),
            node.admin_url()
        );
        wait_for_signal().await?;
        tracing::info!("shutting down");
        node.shutdown().await;
        Ok(())
    })
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}
