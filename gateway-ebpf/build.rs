//! Rebuild the XDP program when bpf-linker changes, as the aya template does.
fn main() {
    if let Ok(path) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}
