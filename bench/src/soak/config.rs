//! The soak's xgate config: three routes (open, key-auth, rate-limited) in
//! front of a health-checked upstream of two targets, XDP on the flood veth
//! when the run has one; and a broken variant that a reload must refuse.

use std::{net::SocketAddr, path::Path};

/// The key the client sends on the key-auth route.
pub const API_KEY: &str = "soak-key-5f0c1d2e3a4b";
/// The source range the flood comes from, denied in XDP.
pub const DENY_CIDR: &str = "198.19.0.0/16";

pub struct Params<'a> {
    pub listen: SocketAddr,
    pub dir: &'a Path,
    pub targets: [SocketAddr; 2],
    /// The interface XDP is attached to (root runs only).
    pub xdp_iface: Option<&'a str>,
    /// Requests per second per client address on the limited route.
    pub limit: u32,
}

pub fn render(p: &Params) -> String {
    let dir = p.dir.display();
    let xdp = match p.xdp_iface {
        Some(iface) => format!(
            "xdp:\n  interfaces: [{iface}]\n  mode: auto\n  \
             pin_path: /sys/fs/bpf/xgate-soak\n  deny: [\"{DENY_CIDR}\"]\n"
        ),
        None => String::new(),
    };
    TEMPLATE
        .replace("{LISTEN}", &p.listen.to_string())
        .replace("{DIR}", &dir.to_string())
        .replace("{XDP}", &xdp)
        .replace("{API_KEY}", API_KEY)
        .replace("{A}", &p.targets[0].to_string())
        .replace("{B}", &p.targets[1].to_string())
        .replace("{LIMIT}", &p.limit.to_string())
}

const TEMPLATE: &str = r#"# written by `xgate-bench soak` (bench/src/soak/config.rs)
listeners:
  - name: public
    address: "{LISTEN}"
admin:
  socket: "{DIR}/admin.sock"
state_dir: "{DIR}/state"
access_log:
  format: "off"
{XDP}consumers:
  - { username: soak, keys: [{ key: '{API_KEY}' }] }
upstreams:
  pool:
    targets: ["{A}", "{B}"]
    connect_timeout: 1s
    timeout: 10s
    health_checks:
      active: { path: /small, interval: 1s, timeout: 500ms, healthy_threshold: 1, unhealthy_threshold: 1 }
routes:
  - { name: open, match: { path_prefix: /open/ }, upstream: pool, strip_prefix: true }
  - name: keyed
    match: { path_prefix: /keyed/ }
    upstream: pool
    strip_prefix: true
    policies: [{ type: key-auth }]
  - name: limited
    match: { path_prefix: /limited/ }
    upstream: pool
    strip_prefix: true
    policies:
      - { type: rate-limit, key: [ip], limits: [{ requests: {LIMIT}, per: 1s }] }
"#;

/// A config that validation refuses: a route names an upstream that does
/// not exist. A reload with it must fail and leave the running config.
pub fn broken(p: &Params) -> String {
    render(p).replace(
        "name: open, match: { path_prefix: /open/ }, upstream: pool",
        "name: open, match: { path_prefix: /open/ }, upstream: no-such-upstream",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_broken_variant_differs() {
        let p = Params {
            listen: "127.0.0.1:1".parse().unwrap(),
            dir: Path::new("/tmp/x"),
            targets: [
                "127.0.0.1:2".parse().unwrap(),
                "127.0.0.1:3".parse().unwrap(),
            ],
            xdp_iface: Some("veth0"),
            limit: 7,
        };
        let good = render(&p);
        assert!(good.contains("requests: 7, per: 1s") && good.contains("interfaces: [veth0]"));
        assert!(broken(&p).contains("no-such-upstream"));
    }
}
