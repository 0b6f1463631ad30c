//! The parts of the benchmark harness that the integration tests use too:
//! the live-frames flood generator, and the sink for a spoofed flood's
//! answers (the `xgate-bench` binary is the rest).

pub mod livegen;
pub mod sink;
