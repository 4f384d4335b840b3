//! The core in simulation: an in-memory store model, simulated connections and a virtual
//! clock drive it with no sockets (`sim.rs`); the routing rules (`rules.rs`) and random
//! interleavings against the delivery invariants (`props.rs`) run on it.

mod cluster;
mod mem;
mod props;
mod rules;
mod sim;
