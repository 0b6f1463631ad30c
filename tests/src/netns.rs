//! Network namespaces and veth pairs that a test (or a benchmark) creates
//! and always removes (on drop, so also when it fails). All test traffic
//! stays inside them. The `try_` functions return errors instead of
//! panicking, for the benchmark harness.
#![allow(unsafe_code)]

use std::{
    ffi::OsStr,
    fs::File,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::Command,
};

pub struct NetNs {
    pub name: String,
}

/// `ip ARGS`: its standard output, or an error with its standard error.
fn try_ip(args: &[&str]) -> std::io::Result<String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| std::io::Error::new(e.kind(), format!("run ip: {e}")))?;
    if !out.status.success() {
        return Err(std::io::Error::other(format!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Prefix of the namespaces [`NetNs::create`] makes: `xgt-<tag>-<pid>`.
const NETNS_PREFIX: &str = "xgt-";
/// Prefix of the bpffs directories [`PinDir::new`] makes:
/// `/sys/fs/bpf/xgate-test-<tag>-<pid>`.
const PIN_PREFIX: &str = "xgate-test-";

/// The PID a name of the form `<prefix><tag>-<pid>` was made by.
fn creator(name: &str, prefix: &str) -> Option<u32> {
    let (_, pid) = name.strip_prefix(prefix)?.rsplit_once('-')?;
    pid.parse().ok()
}

fn alive(pid: u32) -> bool {
    Path::new("/proc").join(pid.to_string()).exists()
}

/// Removes the namespaces and bpffs pin directories that test processes
/// killed without a chance to clean up (SIGKILL, a timeout) left behind:
/// only names of the tests' own form whose creating process is gone, so a
/// suite running beside this one keeps its own. Each one found is said on
/// standard error. Returns how many were removed.
pub fn sweep_stale() -> usize {
    let mut removed = 0;
    if let Ok(out) = try_ip(&["netns", "list"]) {
        for line in out.lines().take(10_000) {
            let ns = line.split_whitespace().next().unwrap_or("");
            if creator(ns, NETNS_PREFIX).is_some_and(|pid| !alive(pid)) {
                eprintln!("xgate-tests: removing the stale network namespace {ns}");
                if try_ip(&["netns", "del", ns]).is_ok() {
                    removed += 1;
                }
            }
        }
    }
    if let Ok(entries) = std::fs::read_dir("/sys/fs/bpf") {
        for entry in entries.take(100_000).flatten() {
            let file_name = entry.file_name();
            let Some(name) = file_name.to_str() else {
                continue;
            };
            if creator(name, PIN_PREFIX).is_none_or(alive) {
                continue;
            }
            eprintln!(
                "xgate-tests: removing stale pins {}",
                entry.path().display()
            );
            if std::fs::remove_dir_all(entry.path()).is_ok() {
                removed += 1;
            }
        }
    }
    removed
}

/// [`sweep_stale`], once per test process, before its first namespace or
/// pin directory.
fn sweep_stale_once() {
    static SWEPT: std::sync::Once = std::sync::Once::new();
    SWEPT.call_once(|| {
        sweep_stale();
    });
}

impl NetNs {
    /// Creates `xgt-<tag>-<pid>` with loopback up (after removing what
    /// killed test processes left behind: [`sweep_stale`]).
    pub fn create(tag: &str) -> Self {
        sweep_stale_once();
        Self::named(format!("{NETNS_PREFIX}{tag}-{}", std::process::id()))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// The namespace `name` (which should hold the creator's PID), with
    /// loopback up.
    pub fn named(name: String) -> std::io::Result<Self> {
        // A leftover from a crashed run of the same PID would make `add` fail.
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        try_ip(&["netns", "add", &name])?;
        let ns = Self { name };
        ns.try_ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn path(&self) -> PathBuf {
        Path::new("/var/run/netns").join(&self.name)
    }

    /// `program` run inside the namespace. nsenter (unlike `ip netns exec`)
    /// keeps /sys/fs/bpf visible, which the daemon needs for pinning.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net={}", self.path().display()))
            .arg(program);
        command
    }

    /// `ip -n <ns> ARGS`.
    pub fn ip(&self, args: &[&str]) {
        self.try_ip(args).unwrap_or_else(|e| panic!("{e}"));
    }

    /// `ip -n <ns> ARGS`: its standard output, or why it failed.
    pub fn try_ip(&self, args: &[&str]) -> std::io::Result<String> {
        let mut full = vec!["-n", &self.name];
        full.extend_from_slice(args);
        try_ip(&full)
    }

    /// The MAC address of `ifname` in this namespace.
    pub fn mac(&self, ifname: &str) -> [u8; 6] {
        self.try_mac(ifname).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`NetNs::mac`], or why there is none.
    pub fn try_mac(&self, ifname: &str) -> std::io::Result<[u8; 6]> {
        let text = self.try_ip(&["-o", "link", "show", ifname])?;
        let invalid = || std::io::Error::other(format!("no MAC for {ifname} in {text:?}"));
        let hex = text
            .split_whitespace()
            .skip_while(|w| *w != "link/ether")
            .nth(1)
            .ok_or_else(invalid)?;
        let mut mac = [0u8; 6];
        let parts: Vec<&str> = hex.split(':').collect();
        if parts.len() != 6 {
            return Err(invalid());
        }
        for (byte, part) in mac.iter_mut().zip(parts) {
            *byte = u8::from_str_radix(part, 16).map_err(|_| invalid())?;
        }
        Ok(mac)
    }

    /// Runs `f` on a thread that has entered this namespace: sockets it
    /// creates live there.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        self.spawn(f).join().expect("netns thread panicked")
    }

    /// Like [`NetNs::run`], without waiting for the thread.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let file = File::open(self.path()).expect("open netns");
        std::thread::spawn(move || {
            // SAFETY: setns on a valid namespace fd affects only this thread.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Its veth ends and any XDP program on them go with it.
        if let Err(e) = try_ip(&["netns", "del", &self.name]) {
            eprintln!("cleanup: {e}");
        }
    }
}

/// Connects `a` and `b` with a veth pair and addresses each end
/// (`addrs` are `CIDR` strings; IPv6 ones get `nodad` so they work at once).
pub fn veth(a: &NetNs, a_if: &str, a_addrs: &[&str], b: &NetNs, b_if: &str, b_addrs: &[&str]) {
    try_veth(a, a_if, a_addrs, b, b_if, b_addrs).unwrap_or_else(|e| panic!("{e}"));
}

/// [`veth`], or why it failed. The interfaces are made inside the
/// namespaces, never in the host's, and go with them.
pub fn try_veth(
    a: &NetNs,
    a_if: &str,
    a_addrs: &[&str],
    b: &NetNs,
    b_if: &str,
    b_addrs: &[&str],
) -> std::io::Result<()> {
    try_ip(&[
        "link", "add", a_if, "netns", &a.name, "type", "veth", "peer", "name", b_if, "netns",
        &b.name,
    ])?;
    for (ns, ifname, addrs) in [(a, a_if, a_addrs), (b, b_if, b_addrs)] {
        for addr in addrs {
            if addr.contains(':') {
                ns.try_ip(&["addr", "add", addr, "dev", ifname, "nodad"])?;
            } else {
                ns.try_ip(&["addr", "add", addr, "dev", ifname])?;
            }
        }
        ns.try_ip(&["link", "set", ifname, "up"])?;
    }
    Ok(())
}

/// The two-namespace veth lab of the XDP tests: a gateway namespace whose
/// end [`Lab::GW_IF`] has 198.18.0.1/24 and 2001:db8:18::1/64, a client
/// namespace whose end [`Lab::CLIENT_IF`] has the given addresses, and a
/// bpffs directory for the daemon's pins. Everything is removed when the
/// lab is dropped: at the end of the test, and on every panic path (also a
/// panic half-way through [`Lab::new`], whose parts drop on their own).
pub struct Lab {
    pub gw: NetNs,
    pub client: NetNs,
    /// Where the gateway's daemon pins its maps (`xdp.pin_path`).
    pub pin: PinDir,
    /// The client end's own XDP program's pins ([`Lab::pass_xdp_on_client`]).
    client_pin: Option<PinDir>,
    tag: String,
}

impl Lab {
    /// The gateway's veth end (the daemon attaches XDP here).
    pub const GW_IF: &'static str = "xg0";
    /// The client's veth end.
    pub const CLIENT_IF: &'static str = "xc0";
    /// The gateway end's addresses.
    pub const GW_ADDRS: [&'static str; 2] = ["198.18.0.1/24", "2001:db8:18::1/64"];

    /// Namespaces `<tag>g` and `<tag>c` (see [`NetNs::create`]), the client
    /// end with 198.18.0.2/24 and 2001:db8:18::2/64.
    pub fn new(tag: &str) -> Self {
        Self::with_client_addrs(tag, &["198.18.0.2/24", "2001:db8:18::2/64"])
    }

    /// Like [`Lab::new`], with the client end's addresses given.
    pub fn with_client_addrs(tag: &str, client_addrs: &[&str]) -> Self {
        let gw = NetNs::create(&format!("{tag}g"));
        let client = NetNs::create(&format!("{tag}c"));
        veth(
            &gw,
            Self::GW_IF,
            &Self::GW_ADDRS,
            &client,
            Self::CLIENT_IF,
            client_addrs,
        );
        Self {
            gw,
            client,
            pin: PinDir::new(tag),
            client_pin: None,
            tag: tag.to_string(),
        }
    }

    /// A daemon config for the gateway: `listeners` (a YAML flow list),
    /// XDP on [`Lab::GW_IF`] with the lab's pin path and `xdp_extra`
    /// (lines indented by two spaces, each ending in a newline) inside the
    /// `xdp:` block, and `rest` (top-level YAML: upstreams, routes).
    pub fn config(&self, listeners: &str, xdp_extra: &str, rest: &str) -> String {
        format!(
            "listeners: {listeners}\n\
             xdp:\n  interfaces: [{}]\n  pin_path: {}\n{xdp_extra}{rest}",
            Self::GW_IF,
            self.pin.0.display()
        )
    }

    /// Attaches xgate's XDP program, with no rules (it passes everything),
    /// to the client's end. A veth end delivers the frames its peer's XDP
    /// program sends back (`XDP_TX`) only when it runs an XDP program
    /// itself (docs/xdp.md); a NIC has no such need. Detached with the
    /// namespace; its pins are removed with the lab.
    pub fn pass_xdp_on_client(&mut self) {
        let pin = PinDir::new(&format!("{}c", self.tag));
        let out = self
            .client
            .command(crate::process::xgate_bin())
            .args(["xdp", "attach", "--iface", Self::CLIENT_IF, "--pin-path"])
            .arg(&pin.0)
            .output()
            .expect("run xgate xdp attach");
        self.client_pin = Some(pin);
        assert!(
            out.status.success(),
            "xgate xdp attach on the client's end: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Switches the client end's transmit checksum offload off (`on:
    /// false`) or on. With it on (veth's default) the client's stack leaves
    /// TCP checksums for offload, and XDP on the gateway's end sees only the
    /// pseudo header's sum in them; off, every frame carries its full
    /// checksum, as frames from a NIC do.
    pub fn client_checksum_offload(&self, on: bool) {
        let out = self
            .client
            .command(Path::new("ethtool"))
            .args(["-K", Self::CLIENT_IF, "tx", if on { "on" } else { "off" }])
            .output()
            .expect("run ethtool (Debian package ethtool; `cargo xtask setup` installs it)");
        assert!(
            out.status.success(),
            "ethtool -K {} tx: {}",
            Self::CLIENT_IF,
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A directory on bpffs for one test's pinned maps, removed on drop.
pub struct PinDir(pub PathBuf);

impl PinDir {
    pub fn new(tag: &str) -> Self {
        sweep_stale_once();
        let path = PathBuf::from(format!(
            "/sys/fs/bpf/{PIN_PREFIX}{tag}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&path);
        Self(path)
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Sends `count` UDP datagrams from `from` (inside `client`) to `to` (inside
/// `server`) and returns how many arrived. With `warm_up`, that many
/// datagrams are sent first, 20 ms apart, so ARP/NDP has resolved before
/// counting starts; pass 0 when nothing is expected to arrive.
pub fn udp_delivery(
    client: &NetNs,
    from: std::net::SocketAddr,
    server: &NetNs,
    to: std::net::SocketAddr,
    count: usize,
    warm_up: usize,
) -> usize {
    use crate::traffic::{run_flows, Flow};
    if warm_up > 0 {
        run_flows(
            client,
            server,
            &[Flow {
                from,
                to,
                count: warm_up,
                pps: 50,
                cpu: None,
            }],
            || {},
        );
    }
    // Paced a little: a veth ring holds a few hundred frames.
    let flow = Flow {
        from,
        to,
        count,
        pps: 20_000,
        cpu: None,
    };
    run_flows(client, server, &[flow], || {})[0].received
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_give_their_creator() {
        assert_eq!(creator("xgt-gwup-4242", NETNS_PREFIX), Some(4242));
        assert_eq!(creator("xgt-two-parts-17", NETNS_PREFIX), Some(17));
        assert_eq!(creator("xgate-test-pins-99", PIN_PREFIX), Some(99));
        // Not ours, or no PID at the end: never swept.
        assert_eq!(creator("xgate-bench-gw-5", NETNS_PREFIX), None);
        assert_eq!(creator("xgt-nopid", NETNS_PREFIX), None);
        assert_eq!(creator("xgt-tag-12x", NETNS_PREFIX), None);
    }

    /// A namespace and a pin directory of a process that is gone are
    /// removed; those of this (live) process stay.
    #[test]
    fn leftovers_of_dead_processes_are_swept_and_live_ones_kept() {
        if !crate::require_root("netns::tests::leftovers_of_dead_processes_are_swept") {
            return;
        }
        // This process's own sweep first, so that it does not take the
        // leftovers made below before the sweep under test sees them.
        sweep_stale_once();
        // No process can have a PID above the kernel's maximum.
        let pid_max: u32 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let dead = pid_max + 1;
        let stale_ns = format!("{NETNS_PREFIX}sweep-{dead}");
        try_ip(&["netns", "add", &stale_ns]).unwrap();
        let stale_pins = PathBuf::from(format!("/sys/fs/bpf/{PIN_PREFIX}sweep-{dead}"));
        std::fs::create_dir_all(&stale_pins).unwrap();
        let live_ns = NetNs::create("sweep-live");
        let live_pins = PinDir::new("sweep-live");
        std::fs::create_dir_all(&live_pins.0).unwrap();

        assert!(sweep_stale() >= 2);
        let listed = try_ip(&["netns", "list"]).unwrap();
        let names: Vec<&str> = listed
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        assert!(!names.contains(&stale_ns.as_str()), "{stale_ns} was kept");
        assert!(!stale_pins.exists(), "{} was kept", stale_pins.display());
        assert!(
            names.contains(&live_ns.name.as_str()),
            "a live namespace was removed"
        );
        assert!(live_pins.0.exists(), "a live pin directory was removed");
    }
}
