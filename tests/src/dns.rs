//! A real DNS server (dnsmasq, installed by `cargo xtask setup`) on a
//! loopback port, answering only for the records a test writes: for the
//! tests of upstream targets by DNS name. Records are a hosts file; a
//! change is re-read on SIGHUP and answered with a TTL of 1 s (or the
//! test's).

use std::{
    net::{IpAddr, SocketAddr, UdpSocket},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::TempDir;

pub struct Dnsmasq {
    pub addr: SocketAddr,
    hosts: PathBuf,
    child: Child,
    _dir: TempDir,
}

impl Dnsmasq {
    /// Starts dnsmasq on a free loopback UDP/TCP port serving `records`
    /// (name, addresses) with a TTL of 1 s, and waits until it answers.
    pub fn start(records: &[(&str, &[IpAddr])]) -> Self {
        Self::start_with_ttl(records, 1)
    }

    /// Like [`Dnsmasq::start`], with answers valid for `ttl_secs`.
    pub fn start_with_ttl(records: &[(&str, &[IpAddr])], ttl_secs: u32) -> Self {
        let dir = TempDir::new("dnsmasq");
        let hosts = dir.path().join("hosts");
        write_records(&hosts, records);
        // dnsmasq drops to `nobody` when started as root: it must be able
        // to read the records after that.
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755));
        let port = free_udp_and_tcp_port();
        let child = Command::new("dnsmasq")
            .args([
                "--keep-in-foreground",
                "--no-resolv",
                "--no-hosts",
                "--no-poll",
                "--listen-address=127.0.0.1",
                "--bind-interfaces",
                "--pid-file=",
                "--log-facility=-",
                "--conf-file=/dev/null",
            ])
            .arg(format!("--port={port}"))
            .arg(format!("--local-ttl={ttl_secs}"))
            .arg(format!("--addn-hosts={}", hosts.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dnsmasq runs (installed by `cargo xtask setup`)");
        let server = Self {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            hosts,
            child,
            _dir: dir,
        };
        server.wait_answering();
        server
    }

    /// Replaces the records and makes dnsmasq read them (SIGHUP).
    pub fn set_records(&self, records: &[(&str, &[IpAddr])]) {
        write_records(&self.hosts, records);
        let status = Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status()
            .expect("kill -HUP");
        assert!(status.success());
    }

    /// Waits until the server answers a query (for any name).
    fn wait_answering(&self) {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        // A query for `probe.` (id 0x1234, recursion desired, one question,
        // type A, class IN): any answer, NXDOMAIN included, will do.
        let query = [
            0x12, 0x34, 0x01, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 5, b'p', b'r',
            b'o', b'b', b'e', 0, 0x00, 0x01, 0x00, 0x01,
        ];
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut buf = [0u8; 512];
        loop {
            let _ = socket.send_to(&query, self.addr);
            if matches!(socket.recv_from(&mut buf), Ok((n, _)) if n >= 2 && buf[..2] == [0x12, 0x34])
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "dnsmasq does not answer on {}",
                self.addr
            );
        }
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn write_records(path: &std::path::Path, records: &[(&str, &[IpAddr])]) {
    let mut text = String::new();
    for (name, addresses) in records {
        for address in *addresses {
            text.push_str(&format!("{address} {name}\n"));
        }
    }
    std::fs::write(path, text).expect("write the records");
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644));
}

/// A loopback port free for both UDP and TCP right now.
fn free_udp_and_tcp_port() -> u16 {
    loop {
        let udp = UdpSocket::bind("127.0.0.1:0").expect("a UDP port");
        let port = udp.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}
