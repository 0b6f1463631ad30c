//! The `xgate` binary: daemon and CLI in one.
fn main() -> std::process::ExitCode {
    gateway_userspace::cli::main()
}
