//! Command-line flags and the binary's entry point.

use std::net::ToSocketAddrs;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{ArgGroup, Parser, ValueEnum};

use crate::config::{EmbeddedDurability, Mode, RunConfig, Target};

/// Flags of `hearth-loadgen`.
#[derive(Debug, Parser)]
#[command(
    name = "hearth-loadgen",
    version,
    about = "Open-loop load generator for Hearth: 1:1 traffic between simulated devices, \
             latency from the intended send time (HdrHistogram), loss/duplicate/reorder counts.",
    group(ArgGroup::new("target").required(true).args(["addr", "embedded"])),
    group(ArgGroup::new("load").required(true).args(["rate", "closed_loop"]))
)]
pub struct Args {
    /// Address of a running node's QUIC port (needs --ca and --key).
    #[arg(long, value_name = "HOST:PORT", requires_all = ["ca", "key"])]
    pub addr: Option<String>,
    /// PEM certificate (or CA) the node's certificate is verified against.
    #[arg(long, value_name = "PATH")]
    pub ca: Option<PathBuf>,
    /// TLS server name to verify.
    #[arg(long, default_value = "localhost")]
    pub server_name: String,
    /// The node's token signing key (PKCS#8 DER, e.g. data_dir/token.key), to mint device tokens.
    #[arg(long, value_name = "PATH")]
    pub key: Option<PathBuf>,
    /// Start a node in-process on a temporary data dir (127.0.0.1, ephemeral port).
    #[arg(long)]
    pub embedded: bool,
    /// Durability of the embedded node; `none` skips fsync and is UNSAFE (benchmarks only).
    #[arg(long, value_enum, default_value = "sync")]
    pub durability: DurabilityArg,
    /// Simulated devices; each is its own account.
    #[arg(long, default_value_t = 100)]
    pub devices: u32,
    /// Connections; for now one per device, so it must equal --devices (the default).
    #[arg(long)]
    pub connections: Option<u32>,
    /// Offered envelopes per second, open loop, constant arrivals.
    #[arg(long, value_name = "R")]
    pub rate: Option<f64>,
    /// Saturation instead of a rate: W outstanding sends per connection (CLOSED LOOP).
    #[arg(long, value_name = "W")]
    pub closed_loop: Option<u32>,
    /// Measured period (e.g. 10s, 500ms, 2m).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Warm-up before measuring; sends happen but are not counted in rates or latency.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Longest wait for outstanding answers and deliveries before counting losses.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub settle: Duration,
    /// Payload bytes per envelope.
    #[arg(long, default_value_t = 512)]
    pub size: usize,
    /// Account id of the first simulated device (device i is account base + i).
    #[arg(long, default_value_t = 1_000_000)]
    pub account_base: u64,
    /// Print one JSON summary object instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Spread client sockets over 127.0.0.1..=127.0.0.N (loopback targets).
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub source_ips: u8,
}

/// `--durability` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DurabilityArg {
    /// fsync before ACCEPTED.
    Sync,
    /// No fsync (UNSAFE).
    None,
}

impl Args {
    /// The run these flags describe; reads the CA and key files.
    pub fn to_config(&self) -> anyhow::Result<RunConfig> {
        let target = match &self.addr {
            Some(addr) => {
                anyhow::ensure!(
                    self.durability == DurabilityArg::Sync,
                    "--durability applies to --embedded only"
                );
                let addr = addr
                    .to_socket_addrs()
                    .with_context(|| format!("resolving {addr}"))?
                    .next()
                    .with_context(|| format!("{addr} resolves to no address"))?;
                let ca = self.ca.as_ref().context("--addr needs --ca")?;
                let key = self.key.as_ref().context("--addr needs --key")?;
                Target::Remote {
                    addr,
                    ca_pem: std::fs::read(ca)
                        .with_context(|| format!("reading {}", ca.display()))?,
                    server_name: self.server_name.clone(),
                    key_pkcs8: std::fs::read(key)
                        .with_context(|| format!("reading {}", key.display()))?,
                }
            }
            None => Target::Embedded {
                durability: match self.durability {
                    DurabilityArg::Sync => EmbeddedDurability::Sync,
                    DurabilityArg::None => EmbeddedDurability::None,
                },
            },
        };
        let mode = match (self.rate, self.closed_loop) {
            (Some(rate), None) => Mode::OpenLoop { rate },
            (None, Some(window)) => Mode::ClosedLoop { window },
            _ => anyhow::bail!("give exactly one of --rate and --closed-loop"),
        };
        let cfg = RunConfig {
            target,
            devices: self.devices,
            connections: self.connections.unwrap_or(self.devices),
            mode,
            warmup: self.warmup,
            duration: self.duration,
            settle: self.settle,
            size: self.size,
            account_base: self.account_base,
            source_ips: self.source_ips,
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

/// Parses `10s`, `500ms`, `2m`, `1.5s`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let v: f64 = num
        .parse()
        .map_err(|_| format!("bad duration {s:?} (try 10s, 500ms, 2m)"))?;
    let secs = match unit.trim() {
        "" | "s" => v,
        "ms" => v / 1e3,
        "us" | "µs" => v / 1e6,
        "m" | "min" => v * 60.0,
        "h" => v * 3600.0,
        u => return Err(format!("unknown duration unit {u:?} (use ms, s, m, h)")),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("bad duration {s:?}: {e}"))
}

/// The binary: parse flags, run, print the report. Exit code 0 normally, 1 on setup failure.
pub fn cli_main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let result = args.to_config().and_then(|cfg| {
        let rt = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
        rt.block_on(crate::run(cfg))
    });
    match result {
        Ok(report) => {
            if args.json {
                println!("{}", report.to_json());
            } else {
                print!("{}", report.to_table());
            }
            ExitCode::from(report.exit_code())
        }
        Err(e) => {
            eprintln!("hearth-loadgen: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5parsecs").is_err());
    }

    #[test]
    fn flags_build_a_config_and_bad_combinations_fail() {
        let a = Args::parse_from(["x", "--embedded", "--devices", "4", "--rate", "100"]);
        let c = a.to_config().unwrap();
        assert_eq!((c.devices, c.connections, c.size), (4, 4, 512));
        assert_eq!(c.mode, Mode::OpenLoop { rate: 100.0 });
        let bad = Args::parse_from([
            "x",
            "--embedded",
            "--devices",
            "4",
            "--connections",
            "2",
            "--rate",
            "1",
        ]);
        assert!(bad.to_config().is_err());
        assert!(Args::try_parse_from(["x", "--embedded"]).is_err()); // no load
        assert!(Args::try_parse_from(["x", "--rate", "1"]).is_err()); // no target
        assert!(
            Args::try_parse_from(["x", "--embedded", "--rate", "1", "--closed-loop", "2"]).is_err()
        );
        assert!(Args::try_parse_from(["x", "--addr", "127.0.0.1:1", "--rate", "1"]).is_err());
    }
}
