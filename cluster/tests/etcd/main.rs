//! Integration tests of hearth-cluster against a real etcd server started by the harness.
//! One test binary: each test starts its own etcd (own ports, own data dir).

mod contract;
mod controller;
mod harness;
mod membership;
