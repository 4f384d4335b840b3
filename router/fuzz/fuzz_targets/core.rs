//! Fuzz the routing core: the input's bytes choose every step of a simulated node (sends,
//! retries, acks, disconnects, reconnects, commits, time, and raw frame bytes from a stranger in
//! another network), and every step is checked against the delivery invariants. See
//! router/src/core/testing/props.rs.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| hearth_router::fuzz_case(data));
