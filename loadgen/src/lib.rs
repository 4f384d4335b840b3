//! `hearth-loadgen`: drives a Hearth node with simulated devices and reports what it achieved.
//!
//! Open loop by default: sends are scheduled in advance (constant or Poisson arrivals over
//! warm-up, ramp and steady phases) and latency is measured from each send's *intended* time
//! (wrk2's correction for coordinated omission), into HdrHistograms. Every payload carries its
//! intended send time and sequence numbers so receivers can measure latency and count lost,
//! duplicated and reordered envelopes, and check that every group message reached every member
//! device. A closed loop finds saturation throughput and is labelled as such everywhere.
//!
//! Devices: N devices, each its own account (`account_base + i`, device id 1) on its own
//! connection. A scenario file mixes 1:1, group and ephemeral sends, draws group sizes and
//! envelope sizes from distributions, and takes a share of the devices offline until later.
//!
//! Layout: `scenario` (the file format), `config` (a run), `plan` (the population and who
//! sends to whom), `arrivals` (open-loop schedules), `target` (embedded or remote node),
//! `connect` (endpoints, pacing), `device` (one device's task), `runner` (a run), `fanout`,
//! `stats`, `timeline`, `selfcheck` (measurement), `slo` and `report` (results).

mod arrivals;
mod cli;
mod config;
mod connect;
mod device;
mod dist;
mod fanout;
mod hdrlog;
mod html;
mod idle;
mod payload;
mod plan;
mod report;
mod runner;
mod scenario;
mod search;
mod selfcheck;
mod shared;
mod slo;
mod stats;
mod target;
mod timeline;

pub use cli::{cli_main, parse_duration, Args, DurabilityArg, TargetArgs, EXIT_BREACH, EXIT_SETUP};
pub use config::{EmbeddedDurability, RunConfig, Target, MIN_SIZE};
pub use dist::{agent, coordinate, AgentArgs, AgentSecret, CoordinateArgs};
pub use fanout::FanoutResult;
pub use idle::{run_connections, IdleArgs, IdleConfig, IdleReport};
pub use report::{
    ConnectionsReport, GroupsReport, Latency, NodeReport, OfflineReport, Report, CLOSED_LOOP_LABEL,
};
pub use runner::run;
pub use scenario::{
    Arrivals, Connections, Dist, Envelope, Groups, Load, Mix, Offline, Phases, Scenario,
};
pub use search::{find_max, SearchOpts, SearchReport, Step};
pub use selfcheck::SelfCheck;
pub use slo::{Op, Slo, SloResult};
pub use target::NodeStatus;
pub use timeline::Interval;
