//! Benchmark harness (issue: benchmark suite). Scenarios are added here and
//! run through `cargo xtask bench`; none is implemented yet.
fn main() {
    eprintln!("xgate-bench: no benchmark scenarios are implemented yet");
    std::process::exit(2);
}
