//! Command-line flags and the binary's entry point.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args as ClapArgs, Parser, ValueEnum};

use crate::config::{EmbeddedDurability, RunConfig, Target};
use crate::scenario::{Arrivals, Dist, Scenario};
use crate::slo::Slo;

/// Exit code of a setup failure.
pub const EXIT_SETUP: u8 = 1;
/// Exit code of a breached objective or failed check.
pub const EXIT_BREACH: u8 = 2;

/// Flags of `hearth-loadgen` (a load run).
#[derive(Debug, Parser)]
#[command(
    name = "hearth-loadgen",
    version,
    about = "Load generator for Hearth: open-loop scenarios (1:1, groups, ephemeral, offline \
             devices), latency from the intended send time (HdrHistogram), loss, duplicate, \
             reorder and fan-out checks, SLOs with exit codes, HTML reports.",
    after_help = "Exit codes: 0 all objectives and checks held, 1 setup failure, 2 breach.\n\
                  Other modes: `hearth-loadgen connections --help`, `hearth-loadgen agent --help`, \
                  `hearth-loadgen coordinate --help`."
)]
pub struct Args {
    /// Where the load goes.
    #[command(flatten)]
    pub target: TargetArgs,
    /// Scenario file (TOML, see loadgen/scenarios/); flags below override its values.
    #[arg(long, value_name = "FILE")]
    pub scenario: Option<PathBuf>,
    /// Simulated devices; each is its own account.
    #[arg(long)]
    pub devices: Option<u32>,
    /// Offered sends per second in the steady phase (open loop).
    #[arg(long, value_name = "R", conflicts_with = "closed_loop")]
    pub rate: Option<f64>,
    /// Saturation instead of a rate: W outstanding sends per connection (CLOSED LOOP).
    #[arg(long, value_name = "W")]
    pub closed_loop: Option<u32>,
    /// Open-loop arrival process.
    #[arg(long, value_enum)]
    pub arrivals: Option<Arrivals>,
    /// Measured (steady) period, e.g. 10s, 500ms, 2m.
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Warm-up at the steady rate before measuring; not counted.
    #[arg(long, value_parser = parse_duration)]
    pub warmup: Option<Duration>,
    /// Linear ramp from --ramp-from to the rate before the steady phase.
    #[arg(long, value_parser = parse_duration)]
    pub ramp: Option<Duration>,
    /// Rate at the start of the ramp.
    #[arg(long)]
    pub ramp_from: Option<f64>,
    /// Longest wait for outstanding answers and deliveries before counting losses.
    #[arg(long, value_parser = parse_duration)]
    pub settle: Option<Duration>,
    /// Payload bytes per envelope.
    #[arg(long)]
    pub size: Option<u64>,
    /// Handshakes per second while connecting (0 = unlimited).
    #[arg(long, value_name = "N/s", value_parser = parse_rate)]
    pub connect_rate: Option<f64>,
    /// Share of the online devices reconnecting each second (e.g. 0.01).
    #[arg(long)]
    pub churn: Option<f64>,
    /// Spread client sockets over 127.0.0.1..=127.0.0.N (loopback targets).
    #[arg(long, value_name = "N")]
    pub source_ips: Option<u8>,
    /// Low-rate latency probe beside the load: two extra devices, own histogram.
    #[arg(long, value_name = "R")]
    pub probe_rate: Option<f64>,
    /// Account id of the first simulated device (device i is account base + i).
    #[arg(long, default_value_t = 1_000_000)]
    pub account_base: u64,
    /// Objective, e.g. 'p99<5ms', 'lost==0', 'delivered_per_s>=1000' (repeatable).
    #[arg(long = "slo", value_name = "EXPR", value_parser = parse_slo)]
    pub slos: Vec<Slo>,
    /// Skip the default integrity checks (lost, unanswered, reordered, fan-out == 0).
    #[arg(long)]
    pub no_checks: bool,
    /// Timeline interval (progress line, HTML charts, interval log).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub interval: Duration,
    /// Print one JSON summary object instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Also write the JSON summary to FILE.
    #[arg(long, value_name = "FILE")]
    pub json_file: Option<PathBuf>,
    /// Write a self-contained HTML report (charts, percentile spectrum) to FILE.
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,
    /// Write an HdrHistogram interval log (tags delivery, accept, probe; µs) to FILE.
    #[arg(long, value_name = "FILE")]
    pub hdr_log: Option<PathBuf>,
    /// Capacity search: the highest rate (starting from --rate) at which every --slo and
    /// check holds, over short runs (--duration per step).
    #[arg(long)]
    pub find_max: bool,
    /// Most runs of the capacity search.
    #[arg(long, default_value_t = 10)]
    pub max_steps: u32,
    /// The capacity search stops when the passing and failing rates are this close (relative).
    #[arg(long, default_value_t = 0.05)]
    pub precision: f64,
    /// Never draw the live progress line (it is drawn when stderr is a terminal).
    #[arg(long, conflicts_with = "progress")]
    pub no_progress: bool,
    /// Show progress even when stderr is not a terminal (then one line per interval, for logs).
    #[arg(long)]
    pub progress: bool,
}

/// Target flags, shared by the load run and the other modes.
#[derive(Debug, Clone, ClapArgs)]
pub struct TargetArgs {
    /// Address of a running node's QUIC port (needs --ca and --key).
    #[arg(long, value_name = "HOST:PORT", requires_all = ["ca", "key"], conflicts_with = "embedded")]
    pub addr: Option<String>,
    /// PEM certificate (or CA) the node's certificate is verified against.
    #[arg(long, value_name = "PATH")]
    pub ca: Option<PathBuf>,
    /// TLS server name to verify.
    #[arg(long, default_value = "localhost")]
    pub server_name: String,
    /// The node's token signing key (PKCS#8 DER, e.g. data_dir/token.key), to mint tokens.
    #[arg(long, value_name = "PATH")]
    pub key: Option<PathBuf>,
    /// The node's admin HTTP address, to read connections and RSS from /v1/status.
    #[arg(long, value_name = "HOST:PORT")]
    pub admin: Option<SocketAddr>,
    /// Start a node in-process on a temporary data dir (127.0.0.1, ephemeral port).
    #[arg(long)]
    pub embedded: bool,
    /// Durability of the embedded node; `none` skips fsync and is UNSAFE (benchmarks only).
    #[arg(long, value_enum, default_value = "sync")]
    pub durability: DurabilityArg,
    /// hearthd TOML for the embedded node (e.g. its [limits]).
    #[arg(long, value_name = "FILE")]
    pub node_config: Option<PathBuf>,
}

/// `--durability` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DurabilityArg {
    /// fsync before ACCEPTED.
    Sync,
    /// No fsync (UNSAFE).
    None,
}

impl TargetArgs {
    /// The target these flags name; reads the CA, key and node config files.
    pub fn to_target(&self) -> anyhow::Result<Target> {
        match &self.addr {
            Some(addr) => {
                anyhow::ensure!(
                    self.durability == DurabilityArg::Sync && self.node_config.is_none(),
                    "--durability and --node-config apply to --embedded only"
                );
                let addr = addr
                    .to_socket_addrs()
                    .with_context(|| format!("resolving {addr}"))?
                    .next()
                    .with_context(|| format!("{addr} resolves to no address"))?;
                let ca = self.ca.as_ref().context("--addr needs --ca")?;
                let key = self.key.as_ref().context("--addr needs --key")?;
                Ok(Target::Remote {
                    addr,
                    ca_pem: std::fs::read(ca)
                        .with_context(|| format!("reading {}", ca.display()))?,
                    server_name: self.server_name.clone(),
                    key_pkcs8: std::fs::read(key)
                        .with_context(|| format!("reading {}", key.display()))?,
                    admin: self.admin,
                })
            }
            None => {
                anyhow::ensure!(
                    self.embedded,
                    "give --embedded or --addr (with --ca, --key)"
                );
                let node_config = match &self.node_config {
                    Some(p) => Some(
                        std::fs::read_to_string(p)
                            .with_context(|| format!("reading {}", p.display()))?,
                    ),
                    None => None,
                };
                Ok(Target::Embedded {
                    durability: match self.durability {
                        DurabilityArg::Sync => EmbeddedDurability::Sync,
                        DurabilityArg::None => EmbeddedDurability::None,
                    },
                    node_config,
                })
            }
        }
    }
}

impl Args {
    /// The scenario: the file (or the default 1:1 one) with the flags applied.
    pub fn to_scenario(&self) -> anyhow::Result<Scenario> {
        let mut s = match &self.scenario {
            Some(p) => Scenario::load(p)?,
            None => Scenario::default(),
        };
        if let Some(v) = self.devices {
            s.devices = v;
        }
        if let Some(v) = self.rate {
            s.load.rate = Some(v);
            s.load.closed_loop = None;
        }
        if let Some(v) = self.closed_loop {
            s.load.closed_loop = Some(v);
            s.load.rate = None;
        }
        if let Some(v) = self.arrivals {
            s.load.arrivals = v;
        }
        if let Some(v) = self.duration {
            s.phases.steady = v;
        }
        if let Some(v) = self.warmup {
            s.phases.warmup = v;
        }
        if let Some(v) = self.ramp {
            s.phases.ramp = v;
        }
        if let Some(v) = self.ramp_from {
            s.load.ramp_from = v;
        }
        if let Some(v) = self.settle {
            s.phases.settle = v;
        }
        if let Some(v) = self.size {
            s.envelope.size = Dist::Fixed(v);
        }
        if let Some(v) = self.connect_rate {
            s.connections.connect_rate = v;
        }
        if let Some(v) = self.churn {
            s.connections.churn = v;
        }
        if let Some(v) = self.source_ips {
            s.connections.source_ips = v;
        }
        if let Some(v) = self.probe_rate {
            s.load.probe_rate = Some(v);
        }
        s.validate()?;
        Ok(s)
    }

    /// Whether to show the progress line: asked for, or a terminal and not told otherwise.
    fn shows_progress(&self) -> bool {
        let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
        self.progress || (!self.no_progress && !self.json && terminal)
    }

    /// The run these flags describe; reads the files they name.
    pub fn to_config(&self) -> anyhow::Result<RunConfig> {
        let cfg = RunConfig {
            target: self.target.to_target()?,
            scenario: self.to_scenario()?,
            account_base: self.account_base,
            interval: self.interval,
            progress: self.shows_progress(),
            slos: self.slos.clone(),
            checks: !self.no_checks,
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

/// `hearth-loadgen --find-max ...`: the search, its table or JSON, the report files of the run
/// at the maximum.
fn find_max_main(args: &Args) -> ExitCode {
    let opts = crate::search::SearchOpts {
        max_steps: args.max_steps,
        precision: args.precision,
    };
    let result = args.to_config().and_then(|mut cfg| {
        cfg.progress = args.shows_progress();
        let rt = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
        rt.block_on(crate::search::find_max(cfg, opts))
    });
    match result {
        Ok(r) => {
            if args.json {
                println!("{}", r.to_json());
            } else {
                print!("{}", r.to_table());
            }
            if let Some(best) = &r.best {
                if let Err(e) = write_outputs(best, &args.outputs()) {
                    eprintln!("hearth-loadgen: {e:#}");
                    return ExitCode::from(EXIT_SETUP);
                }
            }
            ExitCode::from(r.exit_code())
        }
        Err(e) => {
            eprintln!("hearth-loadgen: {e:#}");
            ExitCode::from(EXIT_SETUP)
        }
    }
}

/// `hearth-loadgen connections ...`.
fn connections_main(argv: &[std::ffi::OsString]) -> ExitCode {
    let args = match parse_or_exit::<crate::idle::IdleArgs>(argv.iter().cloned()) {
        Ok(a) => a,
        Err(code) => return code,
    };
    let result = args.to_config().and_then(|cfg| {
        let rt = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
        rt.block_on(crate::idle::run_connections(cfg))
    });
    match result {
        Ok(r) => {
            if args.json {
                println!("{}", r.to_json());
            } else {
                print!("{}", r.to_table());
            }
            ExitCode::from(r.exit_code())
        }
        Err(e) => {
            eprintln!("hearth-loadgen connections: {e:#}");
            ExitCode::from(EXIT_SETUP)
        }
    }
}

/// Files to write a report to.
#[derive(Debug, Clone, Default)]
pub(crate) struct Outputs {
    pub json: Option<PathBuf>,
    pub html: Option<PathBuf>,
    pub hdr_log: Option<PathBuf>,
}

impl Args {
    pub(crate) fn outputs(&self) -> Outputs {
        Outputs {
            json: self.json_file.clone(),
            html: self.html.clone(),
            hdr_log: self.hdr_log.clone(),
        }
    }
}

/// Writes the report files asked for.
pub(crate) fn write_outputs(r: &crate::Report, o: &Outputs) -> anyhow::Result<()> {
    let write = |p: &PathBuf, text: String| {
        std::fs::write(p, text).with_context(|| format!("writing {}", p.display()))
    };
    if let Some(p) = &o.json {
        write(p, r.to_json())?;
    }
    if let Some(p) = &o.html {
        write(p, r.to_html())?;
    }
    if let Some(p) = &o.hdr_log {
        write(p, r.to_interval_log()?)?;
    }
    Ok(())
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

/// Parses `2000`, `2000/s` or `2k/s`.
pub(crate) fn parse_rate(s: &str) -> Result<f64, String> {
    let t = s.trim().trim_end_matches("/s");
    let (num, mult) = match t.strip_suffix('k') {
        Some(n) => (n, 1e3),
        None => (t, 1.0),
    };
    num.parse::<f64>()
        .map(|v| v * mult)
        .map_err(|_| format!("bad rate {s:?} (try 2000/s or 2k/s)"))
}

/// Parses flags; usage errors exit 1 (a setup failure, not a breach), help and version 0.
pub(crate) fn parse_or_exit<P: Parser>(
    args: impl IntoIterator<Item = std::ffi::OsString>,
) -> Result<P, ExitCode> {
    P::try_parse_from(args).map_err(|e| {
        let _ = e.print();
        if e.use_stderr() {
            ExitCode::from(EXIT_SETUP)
        } else {
            ExitCode::SUCCESS
        }
    })
}

pub(crate) fn parse_slo(s: &str) -> Result<Slo, String> {
    Slo::parse(s)
}

/// Logging to stderr (RUST_LOG, default warn).
fn init_tracing() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
}

/// The binary: parse flags, run, print the report. Exit code 0 when every objective held, 2
/// on a breach, 1 on a setup failure.
pub fn cli_main() -> ExitCode {
    init_tracing();
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    match argv.get(1).and_then(|a| a.to_str()) {
        Some("connections") => return connections_main(&argv[1..]),
        Some("agent") => return crate::dist::agent_main(&argv[1..]),
        Some("coordinate") => return crate::dist::coordinate_main(&argv[1..]),
        _ => {}
    }
    let args = match parse_or_exit::<Args>(argv) {
        Ok(a) => a,
        Err(code) => return code,
    };
    if args.find_max {
        return find_max_main(&args);
    }
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
            if let Err(e) = write_outputs(&report, &args.outputs()) {
                eprintln!("hearth-loadgen: {e:#}");
                return ExitCode::from(EXIT_SETUP);
            }
            ExitCode::from(report.exit_code())
        }
        Err(e) => {
            eprintln!("hearth-loadgen: {e:#}");
            ExitCode::from(EXIT_SETUP)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_rates_parse() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5parsecs").is_err());
        assert_eq!(parse_rate("2000/s"), Ok(2000.0));
        assert_eq!(parse_rate("2k/s"), Ok(2000.0));
        assert_eq!(parse_rate("150"), Ok(150.0));
        assert!(parse_rate("fast").is_err());
    }

    #[test]
    fn flags_build_a_config_and_bad_combinations_fail() {
        let a = Args::parse_from(["x", "--embedded", "--devices", "4", "--rate", "100"]);
        let c = a.to_config().unwrap();
        assert_eq!(c.scenario.devices, 4);
        assert_eq!(c.scenario.load.rate, Some(100.0));
        assert_eq!(c.scenario.envelope.size, Dist::Fixed(512));
        assert!(c.checks);
        let a = Args::parse_from([
            "x",
            "--embedded",
            "--rate",
            "1",
            "--slo",
            "p99<5ms",
            "--slo",
            "lost==0",
        ]);
        assert_eq!(a.to_config().unwrap().slos.len(), 2);
        assert!(Args::try_parse_from(["x", "--embedded", "--slo", "p99<<"]).is_err());
        assert!(Args::parse_from(["x", "--embedded"]).to_config().is_err()); // no load
        assert!(Args::parse_from(["x", "--rate", "1"]).to_config().is_err()); // no target
        assert!(
            Args::try_parse_from(["x", "--embedded", "--rate", "1", "--closed-loop", "2"]).is_err()
        );
        assert!(Args::try_parse_from(["x", "--addr", "127.0.0.1:1", "--rate", "1"]).is_err());
    }

    #[test]
    fn flags_override_a_scenario_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.toml");
        std::fs::write(
            &path,
            "devices = 20\n[load]\nrate = 50\n[phases]\nsteady = \"3s\"\n",
        )
        .unwrap();
        let p = path.to_str().unwrap();
        let s = Args::parse_from(["x", "--embedded", "--scenario", p])
            .to_scenario()
            .unwrap();
        assert_eq!((s.devices, s.load.rate), (20, Some(50.0)));
        let s = Args::parse_from(["x", "--embedded", "--scenario", p, "--closed-loop", "4"])
            .to_scenario()
            .unwrap();
        assert_eq!((s.load.rate, s.load.closed_loop), (None, Some(4)));
        assert_eq!(s.phases.steady, Duration::from_secs(3));
    }
}
