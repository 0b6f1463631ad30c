//! Builds the XDP program (gateway-ebpf) with the nightly toolchain for
//! bpfel-unknown-none and places it in OUT_DIR, where `xdp::loader` embeds it.
//! `cargo xtask setup` installs what this needs (rust-src, bpf-linker).
fn main() -> anyhow::Result<()> {
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "gateway-ebpf",
            root_dir: "../gateway-ebpf",
            ..Default::default()
        }],
        aya_build::Toolchain::Nightly,
    )
}
