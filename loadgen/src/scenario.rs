//! Scenario files: what traffic a run offers, in TOML. Flags build the simple 1:1 case; a file
//! (`--scenario FILE`) describes mixes, groups, offline devices, phases and connection behaviour.
//! Every key is optional; `loadgen/scenarios/*.toml` are worked examples.
//!
//! ```toml
//! name = "mixed"
//! devices = 1000                 # simulated devices, each its own account
//! seed = 7                       # optional: same population (groups, offline set) every run
//! [load]
//! rate = 2000                    # sends/s in the steady phase (open loop) ...
//! # closed_loop = 8              # ... or W outstanding sends per connection (saturation)
//! arrivals = "poisson"           # constant | poisson
//! ramp_from = 0                  # rate at the start of the ramp
//! probe_rate = 10                # optional low-rate latency probe on its own connections
//! [phases]
//! warmup = "2s"                  # at the steady rate, not counted
//! ramp = "5s"                    # linear from ramp_from to rate; loss-checked, not in latency
//! steady = "30s"                 # the measured window
//! settle = "10s"                 # longest wait for stragglers before declaring loss
//! [mix]                          # relative weights of the send kinds
//! one_to_one = 70
//! group = 20
//! ephemeral = 10
//! [groups]
//! count = 50
//! size = { dist = "zipf", min = 3, max = 1000, exponent = 1.1 }
//! [envelope]
//! size = { dist = "uniform", min = 200, max = 4000 }   # or a number, or choice / zipf
//! [offline]
//! share = 0.1                    # of the devices: registered, then offline
//! reconnect_after = "15s"        # since the start of the warm-up ...
//! reconnect_over = "2s"          # ... spread over this long; they drain their queues
//! [connections]
//! connect_rate = 2000            # handshakes/s while connecting (0 = unlimited)
//! churn = 0.01                   # share of online devices reconnecting each second
//! source_ips = 4                 # spread sockets over 127.0.0.1..=127.0.0.4
//! ```

use std::time::Duration;

use anyhow::Context;
use rand::Rng;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::payload::HEADER_LEN;

/// A whole scenario. `Default` is 100 devices, 1:1 traffic at 1000/s, 10 s steady.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Scenario {
    /// Shown in reports.
    pub name: String,
    /// Simulated devices; device `i` is account `account_base + i`, device id 1.
    pub devices: u32,
    /// Seed of the population (group membership, offline set); random when absent.
    pub seed: Option<u64>,
    /// Rate, arrivals, closed loop, probe.
    pub load: Load,
    /// Warm-up, ramp, steady, settle.
    pub phases: Phases,
    /// Weights of the send kinds.
    pub mix: Mix,
    /// Groups (used when `mix.group > 0`).
    pub groups: Groups,
    /// Envelopes.
    pub envelope: Envelope,
    /// Devices that are offline at first and reconnect later.
    pub offline: Offline,
    /// Connection ramp, churn, source addresses.
    pub connections: Connections,
}

/// How sends are generated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Load {
    /// Open loop: sends per second in the steady phase (all senders together).
    pub rate: Option<f64>,
    /// Closed loop (saturation) instead: outstanding sends per connection.
    pub closed_loop: Option<u32>,
    /// Arrival process of the open loop.
    pub arrivals: Arrivals,
    /// Rate at the start of the ramp phase.
    pub ramp_from: f64,
    /// Sends/s of the latency probe (two extra devices, own connections, own histogram).
    pub probe_rate: Option<f64>,
}

/// Open-loop arrival process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Arrivals {
    /// Evenly spaced sends (wrk2 style).
    #[default]
    Constant,
    /// Exponentially distributed gaps (a Poisson process), bursts included.
    Poisson,
}

impl Arrivals {
    /// How reports name it.
    pub fn label(self) -> &'static str {
        match self {
            Arrivals::Constant => "constant",
            Arrivals::Poisson => "poisson",
        }
    }
}

/// Phase lengths.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Phases {
    /// Sends at the steady rate, counted nowhere.
    #[serde(with = "duration_text")]
    pub warmup: Duration,
    /// Rate rises linearly from `load.ramp_from`; checked for loss, not in the latency summary.
    #[serde(with = "duration_text")]
    pub ramp: Duration,
    /// The measured window.
    #[serde(with = "duration_text")]
    pub steady: Duration,
    /// Longest wait after the last send for answers and deliveries before counting losses.
    #[serde(with = "duration_text")]
    pub settle: Duration,
}

/// Relative weights of the send kinds (any non-negative numbers, not all zero).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Mix {
    /// `SEND` to one other device (stored).
    pub one_to_one: f64,
    /// `SEND_GROUP` to a group the sender belongs to (stored, fanned out).
    pub group: f64,
    /// Ephemeral `SEND` to one online device (pushed, never stored).
    pub ephemeral: f64,
}

/// Groups of the population.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Groups {
    /// How many groups (G).
    pub count: u32,
    /// Members per group (capped at the number of devices; at least 2).
    pub size: Dist,
}

/// Envelope shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Envelope {
    /// Payload bytes (at least the 29-byte load header).
    pub size: Dist,
    /// TTL of stored envelopes.
    pub ttl_secs: u32,
}

/// Devices offline at first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Offline {
    /// Share of the devices (0..1): they register, disconnect before the load, and reconnect.
    pub share: f64,
    /// When they start reconnecting, since the start of the warm-up.
    #[serde(with = "duration_text")]
    pub reconnect_after: Duration,
    /// Reconnects are spread evenly over this long.
    #[serde(with = "duration_text")]
    pub reconnect_over: Duration,
}

/// Connection behaviour.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Connections {
    /// Handshakes per second while connecting and reconnecting; 0 = as fast as possible.
    pub connect_rate: f64,
    /// Share of the online devices that reconnect each second (graceful close, new handshake).
    pub churn: f64,
    /// Spread client sockets over 127.0.0.1..=127.0.0.N (loopback targets only).
    pub source_ips: u8,
}

impl Default for Scenario {
    fn default() -> Scenario {
        Scenario {
            name: "1:1".into(),
            devices: 100,
            seed: None,
            load: Load::default(),
            phases: Phases::default(),
            mix: Mix::default(),
            groups: Groups::default(),
            envelope: Envelope::default(),
            offline: Offline::default(),
            connections: Connections::default(),
        }
    }
}

impl Default for Load {
    fn default() -> Load {
        Load {
            rate: None,
            closed_loop: None,
            arrivals: Arrivals::Constant,
            ramp_from: 0.0,
            probe_rate: None,
        }
    }
}

impl Default for Phases {
    fn default() -> Phases {
        Phases {
            warmup: Duration::from_secs(2),
            ramp: Duration::ZERO,
            steady: Duration::from_secs(10),
            settle: Duration::from_secs(5),
        }
    }
}

impl Default for Mix {
    fn default() -> Mix {
        Mix {
            one_to_one: 1.0,
            group: 0.0,
            ephemeral: 0.0,
        }
    }
}

impl Default for Groups {
    fn default() -> Groups {
        Groups {
            count: 0,
            size: Dist::Fixed(10),
        }
    }
}

impl Default for Envelope {
    fn default() -> Envelope {
        Envelope {
            size: Dist::Fixed(512),
            ttl_secs: 3600,
        }
    }
}

impl Default for Offline {
    fn default() -> Offline {
        Offline {
            share: 0.0,
            reconnect_after: Duration::from_secs(5),
            reconnect_over: Duration::from_secs(1),
        }
    }
}

impl Default for Connections {
    fn default() -> Connections {
        Connections {
            connect_rate: 0.0,
            churn: 0.0,
            source_ips: 1,
        }
    }
}

/// The kind of one send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Kind {
    OneToOne = 0,
    Group = 1,
    Ephemeral = 2,
    Probe = 3,
}

impl Kind {
    pub(crate) fn from_u8(v: u8) -> Option<Kind> {
        Some(match v {
            0 => Kind::OneToOne,
            1 => Kind::Group,
            2 => Kind::Ephemeral,
            3 => Kind::Probe,
            _ => return None,
        })
    }

    /// Stored (and so delivered in order, checked for reordering).
    pub(crate) fn stored(self) -> bool {
        !matches!(self, Kind::Ephemeral)
    }
}

impl Scenario {
    /// Parses a scenario file's text and checks it.
    pub fn from_toml(text: &str) -> anyhow::Result<Scenario> {
        let s: Scenario = toml::from_str(text)?;
        s.validate()?;
        Ok(s)
    }

    /// Reads and parses a scenario file.
    pub fn load(path: &std::path::Path) -> anyhow::Result<Scenario> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Scenario::from_toml(&text).with_context(|| format!("in scenario {}", path.display()))
    }

    /// Whether the load is closed loop (saturation).
    pub fn is_closed_loop(&self) -> bool {
        self.load.closed_loop.is_some()
    }

    /// Devices that are offline at first.
    pub fn offline_devices(&self) -> u32 {
        (f64::from(self.devices) * self.offline.share).round() as u32
    }

    /// Checks the combination; errors say what to change.
    pub fn validate(&self) -> anyhow::Result<()> {
        let l = &self.load;
        match (l.rate, l.closed_loop) {
            (Some(r), None) => anyhow::ensure!(r.is_finite() && r > 0.0, "load.rate must be > 0"),
            (None, Some(w)) => anyhow::ensure!(
                (1..=crate::device::PIPELINE as u32).contains(&w),
                "load.closed_loop must be in 1..={}",
                crate::device::PIPELINE
            ),
            (None, None) => anyhow::bail!("give a rate (load.rate / --rate) or load.closed_loop"),
            (Some(_), Some(_)) => anyhow::bail!("give load.rate or load.closed_loop, not both"),
        }
        anyhow::ensure!(
            l.ramp_from.is_finite() && l.ramp_from >= 0.0,
            "load.ramp_from must be >= 0"
        );
        if let Some(p) = l.probe_rate {
            anyhow::ensure!(p.is_finite() && p > 0.0, "load.probe_rate must be > 0");
        }
        anyhow::ensure!(
            !self.is_closed_loop() || self.phases.ramp.is_zero(),
            "a ramp needs an open-loop rate (closed loop has no rate to ramp)"
        );
        anyhow::ensure!(
            !self.phases.steady.is_zero(),
            "phases.steady must be positive"
        );
        let online = self.devices - self.offline_devices().min(self.devices);
        anyhow::ensure!(self.devices >= 2, "devices must be at least 2");
        anyhow::ensure!(
            online >= 2,
            "at least 2 devices must be online (lower offline.share)"
        );
        let m = &self.mix;
        for (k, v) in [
            ("one_to_one", m.one_to_one),
            ("group", m.group),
            ("ephemeral", m.ephemeral),
        ] {
            anyhow::ensure!(v.is_finite() && v >= 0.0, "mix.{k} must be >= 0");
        }
        anyhow::ensure!(
            m.one_to_one + m.group + m.ephemeral > 0.0,
            "mix: at least one weight must be > 0"
        );
        if m.group > 0.0 {
            anyhow::ensure!(
                self.groups.count >= 1,
                "mix.group > 0 needs groups.count >= 1"
            );
        }
        self.groups.size.validate("groups.size")?;
        anyhow::ensure!(
            self.groups.size.min() >= 2,
            "groups.size must be at least 2 (a sender and a recipient)"
        );
        anyhow::ensure!(
            self.groups.size.max() <= 1_000_000,
            "groups.size is capped at 1,000,000"
        );
        self.envelope.size.validate("envelope.size")?;
        anyhow::ensure!(
            self.envelope.size.min() >= HEADER_LEN as u64,
            "envelope.size must be at least {HEADER_LEN} bytes (the load header)"
        );
        let o = &self.offline;
        anyhow::ensure!(
            (0.0..1.0).contains(&o.share),
            "offline.share must be in [0, 1)"
        );
        if o.share > 0.0 {
            anyhow::ensure!(
                !self.is_closed_loop(),
                "offline devices need an open-loop rate (closed loop has no schedule)"
            );
            let sends_end = self.phases.warmup + self.phases.ramp + self.phases.steady;
            anyhow::ensure!(
                o.reconnect_after < sends_end,
                "offline.reconnect_after ({:?}) must fall before the end of the steady phase \
                 ({sends_end:?}) so the drain overlaps the load",
                o.reconnect_after
            );
        }
        let c = &self.connections;
        anyhow::ensure!(
            c.connect_rate.is_finite() && c.connect_rate >= 0.0,
            "connections.connect_rate must be >= 0"
        );
        anyhow::ensure!(
            (0.0..=1.0).contains(&c.churn),
            "connections.churn must be in [0, 1]"
        );
        anyhow::ensure!(c.source_ips >= 1, "connections.source_ips must be >= 1");
        Ok(())
    }
}

/// A distribution of positive integers: a number (fixed), or a table with `dist` = `fixed`
/// (`value`), `uniform` (`min`, `max`, inclusive), `zipf` (`min`, `max`, `exponent`: P(k) ∝
/// k^-exponent) or `choice` (`values`, `weights`).
#[derive(Debug, Clone, PartialEq)]
pub enum Dist {
    /// Always `value`.
    Fixed(u64),
    /// Uniform in `min..=max`.
    Uniform {
        /// Smallest.
        min: u64,
        /// Largest.
        max: u64,
    },
    /// Zipf over `min..=max`: P(k) ∝ k^-exponent (small values common, large ones rare).
    Zipf {
        /// Smallest.
        min: u64,
        /// Largest.
        max: u64,
        /// Exponent (> 0).
        exponent: f64,
    },
    /// One of `values`, with the given relative weights.
    Choice {
        /// The values.
        values: Vec<u64>,
        /// Their relative weights (same length).
        weights: Vec<f64>,
    },
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "dist", rename_all = "lowercase", deny_unknown_fields)]
enum DistTable {
    Fixed {
        value: u64,
    },
    Uniform {
        min: u64,
        max: u64,
    },
    Zipf {
        min: u64,
        max: u64,
        #[serde(default = "one")]
        exponent: f64,
    },
    Choice {
        values: Vec<u64>,
        #[serde(default)]
        weights: Vec<f64>,
    },
}

fn one() -> f64 {
    1.0
}

#[derive(Deserialize)]
#[serde(untagged)]
enum DistInput {
    Number(u64),
    Table(toml::Value),
}

impl<'de> Deserialize<'de> for Dist {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Dist, D::Error> {
        use serde::de::Error;
        match DistInput::deserialize(d)? {
            DistInput::Number(v) => Ok(Dist::Fixed(v)),
            DistInput::Table(v) => {
                let t: DistTable = v.try_into().map_err(D::Error::custom)?;
                Ok(match t {
                    DistTable::Fixed { value } => Dist::Fixed(value),
                    DistTable::Uniform { min, max } => Dist::Uniform { min, max },
                    DistTable::Zipf { min, max, exponent } => Dist::Zipf { min, max, exponent },
                    DistTable::Choice { values, weights } => {
                        let weights = if weights.is_empty() {
                            vec![1.0; values.len()]
                        } else {
                            weights
                        };
                        Dist::Choice { values, weights }
                    }
                })
            }
        }
    }
}

impl Serialize for Dist {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let t = match self.clone() {
            Dist::Fixed(value) => DistTable::Fixed { value },
            Dist::Uniform { min, max } => DistTable::Uniform { min, max },
            Dist::Zipf { min, max, exponent } => DistTable::Zipf { min, max, exponent },
            Dist::Choice { values, weights } => DistTable::Choice { values, weights },
        };
        t.serialize(s)
    }
}

impl Dist {
    /// Smallest value it can produce.
    pub fn min(&self) -> u64 {
        match self {
            Dist::Fixed(v) => *v,
            Dist::Uniform { min, .. } | Dist::Zipf { min, .. } => *min,
            Dist::Choice { values, .. } => values.iter().copied().min().unwrap_or(0),
        }
    }

    /// Largest value it can produce.
    pub fn max(&self) -> u64 {
        match self {
            Dist::Fixed(v) => *v,
            Dist::Uniform { max, .. } | Dist::Zipf { max, .. } => *max,
            Dist::Choice { values, .. } => values.iter().copied().max().unwrap_or(0),
        }
    }

    /// Checks the parameters; `what` names the key in errors.
    pub fn validate(&self, what: &str) -> anyhow::Result<()> {
        match self {
            Dist::Fixed(_) => {}
            Dist::Uniform { min, max } => {
                anyhow::ensure!(min <= max, "{what}: min must be <= max")
            }
            Dist::Zipf { min, max, exponent } => {
                anyhow::ensure!(*min >= 1 && min <= max, "{what}: need 1 <= min <= max");
                anyhow::ensure!(
                    exponent.is_finite() && *exponent > 0.0,
                    "{what}: exponent must be > 0"
                );
                anyhow::ensure!(
                    max - min <= 10_000_000,
                    "{what}: zipf range is capped at 10,000,000 values"
                );
            }
            Dist::Choice { values, weights } => {
                anyhow::ensure!(!values.is_empty(), "{what}: values must not be empty");
                anyhow::ensure!(
                    values.len() == weights.len(),
                    "{what}: values and weights must have the same length"
                );
                anyhow::ensure!(
                    weights.iter().all(|w| w.is_finite() && *w >= 0.0)
                        && weights.iter().sum::<f64>() > 0.0,
                    "{what}: weights must be >= 0 and not all 0"
                );
            }
        }
        Ok(())
    }

    /// A sampler (precomputes the table of a Zipf or choice distribution).
    pub(crate) fn sampler(&self) -> Sampler {
        match self {
            Dist::Fixed(v) => Sampler::Fixed(*v),
            Dist::Uniform { min, max } => Sampler::Uniform(*min, *max),
            Dist::Zipf { min, max, exponent } => {
                let cdf = cumulative((*min..=*max).map(|k| (k as f64).powf(-exponent)));
                Sampler::Table {
                    values: (*min..=*max).collect(),
                    cdf,
                }
            }
            Dist::Choice { values, weights } => Sampler::Table {
                values: values.clone(),
                cdf: cumulative(weights.iter().copied()),
            },
        }
    }

    /// A short description for reports.
    pub fn describe(&self) -> String {
        match self {
            Dist::Fixed(v) => v.to_string(),
            Dist::Uniform { min, max } => format!("uniform {min}..={max}"),
            Dist::Zipf { min, max, exponent } => format!("zipf {min}..={max} s={exponent}"),
            Dist::Choice { values, weights } => {
                let parts: Vec<String> = values
                    .iter()
                    .zip(weights)
                    .map(|(v, w)| format!("{v}:{w}"))
                    .collect();
                format!("choice {}", parts.join(","))
            }
        }
    }
}

/// Normalised cumulative weights (last = 1).
fn cumulative(weights: impl Iterator<Item = f64>) -> Vec<f64> {
    let mut acc = 0.0;
    let mut cdf: Vec<f64> = weights
        .map(|w| {
            acc += w;
            acc
        })
        .collect();
    for c in &mut cdf {
        *c /= acc;
    }
    cdf
}

/// Draws values of a [`Dist`].
#[derive(Debug, Clone)]
pub(crate) enum Sampler {
    Fixed(u64),
    Uniform(u64, u64),
    Table { values: Vec<u64>, cdf: Vec<f64> },
}

impl Sampler {
    pub(crate) fn sample(&self, rng: &mut impl Rng) -> u64 {
        match self {
            Sampler::Fixed(v) => *v,
            Sampler::Uniform(a, b) => rng.gen_range(*a..=*b),
            Sampler::Table { values, cdf } => {
                let u: f64 = rng.gen();
                let i = cdf.partition_point(|&c| c < u).min(values.len() - 1);
                values[i]
            }
        }
    }
}

/// Durations as text (`"2s"`, `"500ms"`) in scenario files and JSON.
mod duration_text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{}ms", d.as_secs_f64() * 1e3))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        crate::cli::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::SmallRng, SeedableRng};

    #[test]
    fn a_full_scenario_parses_and_round_trips() {
        let s = Scenario::from_toml(
            r#"
            name = "mixed"
            devices = 50
            seed = 3
            [load]
            rate = 500
            arrivals = "poisson"
            [phases]
            warmup = "1s"
            ramp = "2s"
            steady = "5s"
            settle = "3s"
            [mix]
            one_to_one = 6
            group = 3
            ephemeral = 1
            [groups]
            count = 4
            size = { dist = "zipf", min = 2, max = 20, exponent = 1.2 }
            [envelope]
            size = { dist = "choice", values = [64, 1024], weights = [9, 1] }
            [offline]
            share = 0.2
            reconnect_after = "4s"
            [connections]
            churn = 0.01
            source_ips = 2
            "#,
        )
        .unwrap();
        assert_eq!(s.load.arrivals, Arrivals::Poisson);
        assert_eq!(s.phases.ramp, Duration::from_secs(2));
        assert_eq!(s.offline_devices(), 10);
        assert_eq!(
            s.envelope.size,
            Dist::Choice {
                values: vec![64, 1024],
                weights: vec![9.0, 1.0]
            }
        );
        // JSON (the distributed mode's wire format) and TOML round trips.
        let back: Scenario = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);
        let back = Scenario::from_toml(&toml::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn mistakes_are_reported() {
        let bad = [
            ("devices = 5", "rate"),
            ("[load]\nrate = 1\nclosed_loop = 2", "not both"),
            ("[load]\nrate = 1\n[mix]\ngroup = 1", "groups.count"),
            (
                "[load]\nrate = 1\n[groups]\nsize = { dist = \"zipff\", min = 1, max = 2 }",
                "zipff",
            ),
            ("[load]\nrate = 1\n[envelope]\nsize = 10", "at least 29"),
            ("[load]\nrate = 1\n[phases]\nsteady = \"ten\"", "duration"),
            ("[load]\nrate = 1\nbogus = 1", "bogus"),
            ("[load]\nclosed_loop = 4\n[phases]\nramp = \"1s\"", "ramp"),
            (
                "[load]\nrate = 1\n[offline]\nshare = 0.5\nreconnect_after = \"1h\"",
                "reconnect_after",
            ),
        ];
        for (text, needle) in bad {
            let err = format!("{:#}", Scenario::from_toml(text).unwrap_err());
            assert!(err.contains(needle), "{text:?}: {err}");
        }
    }

    #[test]
    fn samplers_stay_in_range_and_follow_the_shape() {
        let mut rng = SmallRng::seed_from_u64(9);
        let z = Dist::Zipf {
            min: 1,
            max: 1000,
            exponent: 1.2,
        }
        .sampler();
        let draws: Vec<u64> = (0..20_000).map(|_| z.sample(&mut rng)).collect();
        assert!(draws.iter().all(|&v| (1..=1000).contains(&v)));
        let ones = draws.iter().filter(|&&v| v == 1).count();
        let big = draws.iter().filter(|&&v| v > 500).count();
        assert!(ones > big * 5, "zipf favours small values: {ones} vs {big}");
        let u = Dist::Uniform { min: 5, max: 7 }.sampler();
        let mut seen = [false; 3];
        for _ in 0..100 {
            seen[(u.sample(&mut rng) - 5) as usize] = true;
        }
        assert_eq!(seen, [true; 3]);
        let c = Dist::Choice {
            values: vec![1, 2],
            weights: vec![0.0, 1.0],
        }
        .sampler();
        assert!((0..100).all(|_| c.sample(&mut rng) == 2));
    }
}
