//! The core in simulation: an in-memory store model, simulated connections and a virtual
//! clock drive it with no sockets (`sim.rs`); the routing rules (`rules.rs`) and random
//! interleavings against the delivery invariants (`props.rs`) run on it. The harness and the
//! interleavings are also compiled with the `fuzzing` feature, for the fuzz crate in router/fuzz.

#[cfg(test)]
mod cluster;
pub(crate) mod mem;
pub(crate) mod props;
#[cfg(test)]
mod rules;
pub(crate) mod sim;
