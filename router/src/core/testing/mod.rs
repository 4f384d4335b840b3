//! The core in simulation: an in-memory store model, simulated connections and a virtual
//! clock drive it with no sockets (`sim.rs`); the routing rules (`rules.rs`) and random
//! interleavings against the delivery invariants (`props.rs`) run on it. The harness (`mem.rs`,
//! `sim.rs`) is also compiled with the `fuzzing` feature, for the fuzz crate in router/fuzz.

#[cfg(test)]
mod cluster;
pub(crate) mod mem;
#[cfg(test)]
mod props;
#[cfg(test)]
mod rules;
pub(crate) mod sim;
