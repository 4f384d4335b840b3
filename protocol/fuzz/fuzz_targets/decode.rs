//! Fuzz the frame decoder: arbitrary bytes, fed in two chunks, must never panic, and every frame
//! decoded must re-encode to its own bytes (growing frames: their known fields) and decode back
//! to itself. See `common/check.rs`.

#![no_main]

use libfuzzer_sys::fuzz_target;

include!("../common/check.rs");

fuzz_target!(|data: &[u8]| check(data));
