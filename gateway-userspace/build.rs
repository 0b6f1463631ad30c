//! Builds the XDP program (gateway-ebpf) with the nightly toolchain for
//! bpfel-unknown-none and places it in OUT_DIR, where `xdp::loader` embeds it.
//! `cargo xtask setup` installs what this needs (rust-src, bpf-linker).
fn main() -> anyhow::Result<()> {
    // aya-build runs `cargo build --release` for the eBPF crate: keep the
    // workspace's release LTO (meant for the userspace binary) out of the
    // BPF object, which is linked by bpf-linker as before.
    std::env::set_var("CARGO_PROFILE_RELEASE_LTO", "false");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "gateway-ebpf",
            root_dir: "../gateway-ebpf",
            ..Default::default()
        }],
        aya_build::Toolchain::Nightly,
    )
}
