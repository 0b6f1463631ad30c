//! The parts of the benchmark harness that the integration tests use too:
//! the live-frames flood generator (the `xgate-bench` binary is the rest).

pub mod livegen;
