//! Network namespaces and veth pairs that a test creates and always removes
//! (on drop, so also when the test fails). All test traffic stays inside them.
#![allow(unsafe_code)]

use std::{
    fs::File,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::Command,
};

pub struct NetNs {
    pub name: String,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl NetNs {
    /// Creates `xgt-<tag>-<pid>` with loopback up.
    pub fn create(tag: &str) -> Self {
        let name = format!("xgt-{tag}-{}", std::process::id());
        // A leftover from a crashed run of the same PID would make `add` fail.
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        ip(&["netns", "add", &name]);
        let ns = Self { name };
        ip(&["-n", &ns.name, "link", "set", "lo", "up"]);
        ns
    }

    pub fn path(&self) -> PathBuf {
        Path::new("/var/run/netns").join(&self.name)
    }

    /// `program` run inside the namespace. nsenter (unlike `ip netns exec`)
    /// keeps /sys/fs/bpf visible, which the daemon needs for pinning.
    pub fn command(&self, program: &Path) -> Command {
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net={}", self.path().display()))
            .arg(program);
        command
    }

    /// `ip -n <ns> ARGS`.
    pub fn ip(&self, args: &[&str]) {
        let mut full = vec!["-n", &self.name];
        full.extend_from_slice(args);
        ip(&full);
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
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Connects `a` and `b` with a veth pair and addresses each end
/// (`addrs` are `CIDR` strings; IPv6 ones get `nodad` so they work at once).
pub fn veth(a: &NetNs, a_if: &str, a_addrs: &[&str], b: &NetNs, b_if: &str, b_addrs: &[&str]) {
    ip(&[
        "link", "add", a_if, "netns", &a.name, "type", "veth", "peer", "name", b_if, "netns",
        &b.name,
    ]);
    for (ns, ifname, addrs) in [(a, a_if, a_addrs), (b, b_if, b_addrs)] {
        for addr in addrs {
            if addr.contains(':') {
                ns.ip(&["addr", "add", addr, "dev", ifname, "nodad"]);
            } else {
                ns.ip(&["addr", "add", addr, "dev", ifname]);
            }
        }
        ns.ip(&["link", "set", ifname, "up"]);
    }
}

/// A directory on bpffs for one test's pinned maps, removed on drop.
pub struct PinDir(pub PathBuf);

impl PinDir {
    pub fn new(tag: &str) -> Self {
        let path = PathBuf::from(format!(
            "/sys/fs/bpf/xgate-test-{tag}-{}",
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
