//! `hearth-loadgen`: drives a Hearth node with simulated devices and reports what it achieved.
//!
//! Open loop by default: sends are scheduled at a constant rate in advance, and latency is
//! measured from each send's *intended* time (wrk2's correction for coordinated omission), into
//! an HdrHistogram. Every payload carries its intended send time and sequence numbers so the
//! receiver can measure latency and count lost, duplicated and reordered envelopes. A closed
//! loop (`--closed-loop W`) finds saturation throughput and is labelled as such everywhere.
//!
//! Devices: N devices, each its own account (`account_base + i`, device id 1) on its own
//! connection (so `connections == devices` for now). Traffic is 1:1: a random sender to a
//! random other device (`to_device` = 1).
//!
//! Layout: `config` (what to run), `scenario` (who sends to whom), `target` (embedded or remote
//! node, tokens), `runner` (connections, schedulers, pumps, receivers), `report` (table, JSON).

mod cli;
mod config;
mod payload;
mod report;
mod runner;
mod scenario;
mod stats;
mod target;

pub use cli::{cli_main, parse_duration, Args, DurabilityArg};
pub use config::{EmbeddedDurability, Mode, RunConfig, Target, MIN_SIZE};
pub use report::{Latency, Report, CLOSED_LOOP_LABEL};
pub use runner::run;
