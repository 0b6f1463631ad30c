//! Loopback addresses for servers the tests start.

use std::net::SocketAddr;

/// `127.0.0.1:0`: bind and let the kernel pick the port.
pub fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().expect("valid address")
}

/// A loopback port free right now, for a process that binds it itself (the
/// daemon's listeners). Another process could take it in between; on a test
/// machine that is rare enough.
pub fn free_port() -> SocketAddr {
    SocketAddr::from((
        [127, 0, 0, 1],
        free_tcp_port().expect("a free loopback port"),
    ))
}

/// The port of [`free_port`], or why there was none.
pub fn free_tcp_port() -> std::io::Result<u16> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
}
