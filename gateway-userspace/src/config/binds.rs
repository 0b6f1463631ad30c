//! Listener addresses that cannot all be bound: the same address twice, or
//! a wildcard beside a specific address on the same port. xgate binds its
//! IPv6 sockets dual-stack (the Linux default, `net.ipv6.bindv6only = 0`),
//! so `[::]:p` also takes every IPv4 address on port p.

use std::net::SocketAddr;

use super::Listener;

/// Why `listeners[index]` clashes with an earlier listener, if it does.
pub(super) fn clash(listeners: &[Listener], index: usize) -> Option<String> {
    let address = listeners[index].address;
    listeners[..index]
        .iter()
        .enumerate()
        .find_map(|(first, other)| {
            reason(other.address, address).map(|why| match why {
                Reason::Same => format!("{address} is already used by listeners[{first}]"),
                Reason::Wildcard => format!(
                    "{address} overlaps listeners[{first}] ({}): a wildcard address takes its \
                     port on every address of its family, and [::] on IPv4 too; use one or \
                     the other",
                    other.address
                ),
            })
        })
}

#[derive(Debug, PartialEq, Eq)]
enum Reason {
    Same,
    Wildcard,
}

/// How `b` overlaps `a` (same port, addresses that cover each other).
fn reason(a: SocketAddr, b: SocketAddr) -> Option<Reason> {
    if a.port() != b.port() {
        return None;
    }
    if a == b {
        return Some(Reason::Same);
    }
    (covers(a, b) || covers(b, a)).then_some(Reason::Wildcard)
}

/// Whether a socket bound to `wide` also receives connections for `narrow`.
fn covers(wide: SocketAddr, narrow: SocketAddr) -> bool {
    let ip = wide.ip();
    if !ip.is_unspecified() {
        return false;
    }
    // 0.0.0.0 covers IPv4; [::] (dual-stack) covers both families.
    ip.is_ipv6() || narrow.is_ipv4()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(a: &str, b: &str) -> Option<Reason> {
        reason(a.parse().unwrap(), b.parse().unwrap())
    }

    #[test]
    fn wildcards_overlap_specific_addresses_on_the_same_port() {
        assert!(r("0.0.0.0:80", "127.0.0.1:80").is_some());
        assert!(r("127.0.0.1:80", "0.0.0.0:80").is_some());
        assert!(r("[::]:80", "0.0.0.0:80").is_some());
        assert!(r("[::]:80", "127.0.0.1:80").is_some());
        assert!(r("[::]:80", "[::1]:80").is_some());
        assert!(r("127.0.0.1:80", "127.0.0.1:80").is_some());
        assert_eq!(r("0.0.0.0:80", "127.0.0.1:81"), None);
        assert_eq!(r("127.0.0.1:80", "127.0.0.2:80"), None);
        assert_eq!(r("0.0.0.0:80", "[::1]:80"), None);
        assert_eq!(r("[::1]:80", "127.0.0.1:80"), None);
    }
}
