//! The `xgate` binary: daemon and CLI in one.
/// mimalloc: the proxy allocates and frees small buffers on every request
/// on several threads; glibc's malloc took about 8% of its CPU under load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    gateway_userspace::cli::main()
}
