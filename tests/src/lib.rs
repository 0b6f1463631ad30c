//! Support for xgate's integration tests, and the one support library of the
//! benchmark harness (bench/) too: the real `xgate` binary as a child
//! process, a real echo upstream, real OpenID providers (npm packages under
//! `tests/idp`), a real DNS server (dnsmasq), network namespaces with veth
//! pairs, raw HTTP, crafted Ethernet frames and the XDP program run on them,
//! certificates, free ports, temporary directories and /proc readers.
//!
//! Tests that need root (BPF, namespaces) call [`require_root`]: under CI
//! (which runs as root) a missing privilege is a failure, never a skip;
//! elsewhere the skip is announced loudly.

pub mod bad_upstream;
pub mod browser;
pub mod dns;
pub mod doc_server;
pub mod frames;
pub mod http;
pub mod idp;
pub mod jwt;
pub mod netns;
pub mod policy_server;
pub mod ports;
pub mod process;
pub mod procfs;
pub mod recording;
pub mod redis;
pub mod test_run;
pub mod tls;
pub mod traffic;
pub mod upstream;

use std::path::{Path, PathBuf};

/// True when the test may go on. Panics under CI without root; prints a loud
/// banner and returns false elsewhere.
pub fn require_root(test: &str) -> bool {
    if gateway_userspace::sys::is_root() {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("{test} needs root (BPF, network namespaces) and CI runs as root: refusing to skip");
    }
    eprintln!(
        "\n*** SKIPPED {test}: needs root for BPF and network namespaces. \
         Run the suite as root (`cargo xtask test` as root; CI does). ***\n"
    );
    false
}

/// A directory removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "xgate-test-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        Self::at(path).expect("create temp dir")
    }

    /// The directory `path`, emptied first if it was there (a leftover of a
    /// crashed run).
    pub fn at(path: PathBuf) -> std::io::Result<Self> {
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path)?;
        Ok(Self(path))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
