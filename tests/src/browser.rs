//! Headless Chromium (the Debian `chromium` package, installed by `cargo
//! xtask setup`) loading a page: the DOM after its scripts ran, and a
//! screenshot. Each run gets a private profile directory, and the browser
//! and every process it started are killed by process group on every path.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::{netns::NetNs, TempDir};

/// Long enough for a cold start on a busy 2-core machine.
const TIMEOUT: Duration = Duration::from_secs(120);

pub struct Browser {
    profile: TempDir,
}

/// A running browser process group, killed when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the group this child leads; no memory involved.
        #[allow(unsafe_code)]
        unsafe {
            libc::kill(-(self.0.id() as i32), libc::SIGKILL);
        }
        let _ = self.0.wait();
    }
}

/// Where the binary is, or None when it is not installed.
pub fn chromium() -> Option<PathBuf> {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

impl Browser {
    pub fn new() -> Self {
        Self {
            profile: TempDir::new("chromium"),
        }
    }

    /// The page's DOM after `virtual_ms` of virtual time (timers and
    /// fetches run; the clock does not wait for them).
    pub fn dump_dom(&self, netns: Option<&NetNs>, url: &str, virtual_ms: u32) -> String {
        let budget = format!("--virtual-time-budget={virtual_ms}");
        let out = self.run(netns, &[&budget, "--dump-dom", url]);
        String::from_utf8_lossy(&out).into_owned()
    }

    /// A PNG screenshot of `width` x `height` pixels written to `path`.
    pub fn screenshot(
        &self,
        netns: Option<&NetNs>,
        url: &str,
        virtual_ms: u32,
        (width, height): (u32, u32),
        path: &Path,
    ) {
        let budget = format!("--virtual-time-budget={virtual_ms}");
        let size = format!("--window-size={width},{height}");
        let shot = format!("--screenshot={}", path.display());
        self.run(netns, &[&budget, &size, &shot, "--hide-scrollbars", url]);
        assert!(path.exists(), "chromium wrote no screenshot");
    }

    fn run(&self, netns: Option<&NetNs>, args: &[&str]) -> Vec<u8> {
        use std::os::unix::process::CommandExt;
        let program = chromium().expect("chromium is installed (cargo xtask setup)");
        let mut command = match netns {
            Some(ns) => ns.command(&program),
            None => Command::new(&program),
        };
        let output = self.profile.path().join("stdout");
        let stdout = std::fs::File::create(&output).expect("create stdout file");
        command
            .args(["--headless", "--disable-gpu", "--no-first-run"])
            // Root cannot use the sandbox; tests run as root in CI.
            .arg("--no-sandbox")
            .arg(format!("--user-data-dir={}", self.profile.path().display()))
            .args(args)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(Stdio::null())
            .process_group(0);
        let running = Running(command.spawn().expect("spawn chromium"));
        let mut running = running;
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(status) = running.0.try_wait().expect("wait for chromium") {
                assert!(status.success(), "chromium failed: {status}");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "chromium did not finish in {TIMEOUT:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        drop(running);
        std::fs::read(&output).expect("read chromium's output")
    }
}

impl Default for Browser {
    fn default() -> Self {
        Self::new()
    }
}
