//! The CLI never reports success for a change that does nothing: list
//! entries overruled by the other list, IPv4-mapped addresses, whole
//! address families; it keeps working while the config file is mid-edit;
//! `validate` and `run` warn about settings that switch protection off;
//! `xdp.required`; `xgate xdp cleanup`.

use std::{net::SocketAddr, path::Path, process::Command};

use xgate_tests::{
    http::send,
    netns::{veth, NetNs, PinDir},
    ports::free_port,
    process::{stderr, stdout, xgate, xgate_bin, Daemon},
    require_root, TempDir,
};

fn ok(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        stdout(out),
        stderr(out)
    );
    stdout(out)
}

fn failed(out: &std::process::Output) -> String {
    assert_eq!(
        out.status.code(),
        Some(1),
        "stdout: {}\nstderr: {}",
        stdout(out),
        stderr(out)
    );
    stderr(out)
}

fn daemon(extra: &str) -> (Daemon, SocketAddr) {
    let listen = free_port();
    let yaml = format!("listeners: [{{address: '{listen}'}}]\n{extra}");
    (Daemon::start(&yaml, None), listen)
}

/// Whether the gateway answers a request sent from `source` (127.0.0.0/8
/// all reaches loopback).
async fn answered_from(gw: SocketAddr, source: &str) -> bool {
    let source = SocketAddr::new(source.parse().unwrap(), 0);
    send(
        gw,
        Some(source),
        "GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .await
    .is_ok()
}

#[test]
fn a_block_overruled_by_an_allow_entry_says_so() {
    let (daemon, _) = daemon("xdp: {allow: ['192.0.2.0/24']}\n");

    ok(&daemon.cli(&["allowlist", "add", "127.0.0.3"]));
    let out = daemon.cli(&["blocklist", "add", "127.0.0.3"]);
    assert_eq!(ok(&out), "blocked 127.0.0.3/32\n");
    let warning = stderr(&out);
    assert!(
        warning.contains("warning: 127.0.0.3/32 is inside allowlist entry 127.0.0.3/32 (added at runtime); allow wins, so these sources are NOT blocked"),
        "{warning}"
    );

    // Overruled by the config file's allow list: named as such.
    let out = daemon.cli(&["blocklist", "add", "192.0.2.9"]);
    ok(&out);
    assert!(
        stderr(&out).contains("allowlist entry 192.0.2.0/24 (from the config file, xdp.allow)"),
        "{}",
        stderr(&out)
    );

    // A wider block that contains an allowed range.
    let out = daemon.cli(&["blocklist", "add", "192.0.0.0/16"]);
    ok(&out);
    assert!(
        stderr(&out).contains("allowlist entry 192.0.2.0/24 (from the config file, xdp.allow) lies inside 192.0.0.0/16"),
        "{}",
        stderr(&out)
    );

    // The reverse: an allow entry that un-blocks part of a block.
    ok(&daemon.cli(&["blocklist", "add", "198.51.100.0/24"]));
    let out = daemon.cli(&["allowlist", "add", "198.51.100.7"]);
    assert_eq!(ok(&out), "allowed 198.51.100.7/32\n");
    assert!(
        stderr(&out).contains(
            "warning: this un-blocks 198.51.100.7/32 of blocklist entry 198.51.100.0/24 (added at runtime)"
        ),
        "{}",
        stderr(&out)
    );

    // No overlap, no warning.
    let out = daemon.cli(&["blocklist", "add", "203.0.113.0/24"]);
    ok(&out);
    assert_eq!(stderr(&out), "");
}

#[tokio::test]
async fn an_ipv4_mapped_address_is_blocked_as_ipv4() {
    let (daemon, gw) = daemon("");
    assert!(answered_from(gw, "127.0.0.5").await, "served before");

    let out = daemon.cli(&["blocklist", "add", "::ffff:127.0.0.5"]);
    assert_eq!(ok(&out), "blocked 127.0.0.5/32\n");
    assert!(
        stderr(&out).contains("::ffff:127.0.0.5 is an IPv4-mapped IPv6 address; IPv4 clients are matched as IPv4, so it is stored as 127.0.0.5/32"),
        "{}",
        stderr(&out)
    );
    assert!(
        !answered_from(gw, "127.0.0.5").await,
        "a blocked client was served"
    );
    assert!(
        answered_from(gw, "127.0.0.6").await,
        "a neighbour was refused"
    );
    let list: serde_json::Value =
        serde_json::from_str(&ok(&daemon.cli(&["blocklist", "ls", "--json"]))).unwrap();
    assert_eq!(list[0]["cidr"], "127.0.0.5/32", "{list}");

    // A mapped prefix, and removal by the mapped form.
    let out = daemon.cli(&["blocklist", "add", "::ffff:10.0.0.0/104"]);
    assert_eq!(ok(&out), "blocked 10.0.0.0/8\n");
    ok(&daemon.cli(&["blocklist", "rm", "::ffff:127.0.0.5"]));
    assert!(answered_from(gw, "127.0.0.5").await, "unblocked again");
}

#[test]
fn a_whole_address_family_needs_force() {
    let (daemon, _) = daemon("");
    for (list, cidr) in [
        ("blocklist", "0.0.0.0/0"),
        ("blocklist", "::/0"),
        ("allowlist", "0.0.0.0/0"),
    ] {
        let e = failed(&daemon.cli(&[list, "add", cidr]));
        assert!(e.contains(&format!("{cidr} would ")), "{e}");
        assert!(
            e.contains("add it with --force (admin API: \"force\": true)"),
            "{e}"
        );
    }
    assert_eq!(
        ok(&daemon.cli(&["blocklist", "ls"])),
        "blocklist is empty\n"
    );
    assert_eq!(
        ok(&daemon.cli(&["blocklist", "add", "::/0", "--force"])),
        "blocked ::/0\n"
    );
    ok(&daemon.cli(&["blocklist", "rm", "::/0"]));

    // The config file: refused unless confirmed.
    let dir = TempDir::new("deny-all");
    let path = dir.path().join("x.yaml");
    let base = "listeners: [{address: '127.0.0.1:18300'}]\nxdp:\n  allow: [10.0.0.0/8]\n  deny: ['0.0.0.0/0']\n";
    std::fs::write(&path, base).unwrap();
    let e = failed(&xgate(&["validate", "-c", path.to_str().unwrap()]));
    assert!(
        e.contains("xdp.deny[0]: 0.0.0.0/0 blocks every IPv4 source; if you mean it (only the xdp.allow entries get through), also set xdp.confirm_deny_all: true (line 4, column"),
        "{e}"
    );
    std::fs::write(&path, format!("{base}  confirm_deny_all: true\n")).unwrap();
    ok(&xgate(&["validate", "-c", path.to_str().unwrap()]));
}

#[test]
fn validate_and_run_warn_about_protection_that_is_off() {
    let extra = "xdp:\n  rate_limit: {rate: 1000}\n  deny: [203.0.113.0/24]\n";
    let listen = free_port();
    let yaml = format!("listeners: [{{address: '{listen}', proxy_protocol: true}}]\n{extra}");
    let dir = TempDir::new("warn");
    let path = dir.path().join("x.yaml");
    std::fs::write(&path, &yaml).unwrap();
    let out = xgate(&["validate", "-c", path.to_str().unwrap()]);
    ok(&out);
    let warnings = stderr(&out);
    for expected in [
        "WARNING: xdp.rate_limit: no xdp.interfaces are configured, so nothing enforces this packet rate limit (it exists only in the kernel); add xdp.interfaces (line 3, column 3)",
        "WARNING: xdp.deny: no xdp.interfaces are configured, so these entries are enforced at L7 only",
        "WARNING: listeners[0].proxy_protocol: true, but trusted_proxies is empty: every connection on this listener will be refused",
    ] {
        assert!(warnings.contains(expected), "{expected}\nnot in:\n{warnings}");
    }
    // `run` logs the same.
    let daemon = Daemon::start(&yaml, None);
    let log = daemon.log();
    assert!(
        log.contains("xdp.rate_limit") && log.contains("nothing enforces this packet rate limit"),
        "{log}"
    );
    assert!(log.contains("listeners[0].proxy_protocol"), "{log}");
}

#[test]
fn xdp_required_refuses_to_start_without_the_privilege() {
    if !require_root("cli_safety::xdp_required_refuses_to_start_without_the_privilege") {
        return;
    }
    let dir = TempDir::new("required");
    let path = dir.path().join("x.yaml");
    let listen = free_port();
    std::fs::write(
        &path,
        format!(
            "listeners: [{{address: '{listen}'}}]\nxdp: {{interfaces: [lo], required: true}}\nadmin: {{socket: {}/a.sock, metrics_address: 'off'}}\nstate_dir: {}/state\n",
            dir.path().display(),
            dir.path().display()
        ),
    )
    .unwrap();
    // Readable by the unprivileged user the daemon runs as.
    for p in [dir.path(), &path] {
        let mode = std::os::unix::fs::PermissionsExt::from_mode(0o755);
        std::fs::set_permissions(p, mode).unwrap();
    }
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(xgate_bin())
        .args(["run", "-c", path.to_str().unwrap()])
        .output()
        .expect("run setpriv");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(
        stderr(&out).lines().last(),
        Some("xgate: XDP cannot be attached: missing capability CAP_BPF (needed for loading the XDP program and creating its maps); run as root or grant it (systemd: AmbientCapabilities=, see docs/operations.md) (xdp.required is true)"),
        "{}",
        stderr(&out)
    );

    // `required` without interfaces is a config error.
    std::fs::write(
        &path,
        "listeners: [{address: '127.0.0.1:18301'}]\nxdp: {required: true}\n",
    )
    .unwrap();
    let e = failed(&xgate(&["validate", "-c", path.to_str().unwrap()]));
    assert!(
        e.contains("xdp.required: true needs xdp.interfaces (there is nothing to attach)"),
        "{e}"
    );
}

#[test]
fn commands_work_while_the_config_file_is_mid_edit() {
    let (daemon, _) = daemon("");
    let config = daemon.config.to_str().unwrap().to_string();
    let original = std::fs::read_to_string(&daemon.config).unwrap();
    // A route half typed at the top: not YAML any more.
    std::fs::write(
        &daemon.config,
        format!("routes:\n  - match: {{path_prefix: /api\n{original}"),
    )
    .unwrap();
    assert_eq!(
        failed(&xgate(&["validate", "-c", &config])).lines().count(),
        2
    );
    let cli = |args: &[&str]| {
        Command::new(xgate_bin())
            .args(["-c", &config])
            .args(args)
            .env_remove("XGATE_ADMIN_SOCKET")
            .output()
            .unwrap()
    };
    let out = cli(&["status"]);
    assert!(ok(&out).contains("listeners:"), "{}", stdout(&out));
    assert_eq!(stderr(&out), "");
    assert_eq!(
        ok(&cli(&["blocklist", "add", "203.0.113.7"])),
        "blocked 203.0.113.7/32\n"
    );
    assert!(ok(&cli(&["blocklist", "ls"])).contains("203.0.113.7/32"));
    ok(&cli(&["allowlist", "ls"]));

    // Nothing usable at all: the default socket, and a note saying why.
    std::fs::write(&daemon.config, "admin: {socket: [\n").unwrap();
    let out = cli(&["status"]);
    let e = failed(&out);
    assert!(
        e.contains("note: ") && e.contains("is not usable") && e.contains("/run/xgate/admin.sock"),
        "{e}"
    );
}

#[test]
fn xdp_detach_uses_the_pin_path_of_the_config() {
    let dir = TempDir::new("pin");
    let path = dir.path().join("x.yaml");
    std::fs::write(
        &path,
        "xdp: {pin_path: /sys/fs/bpf/xgate-nowhere-test}\nroutes: [broken\n",
    )
    .unwrap();
    let e = failed(&xgate(&[
        "-c",
        path.to_str().unwrap(),
        "xdp",
        "detach",
        "--iface",
        "lo",
    ]));
    assert!(
        e.contains("no pinned attachment for lo under /sys/fs/bpf/xgate-nowhere-test/links"),
        "{e}"
    );
    let out = xgate(&[
        "xdp",
        "cleanup",
        "--pin-path",
        "/sys/fs/bpf/xgate-nowhere-test",
    ]);
    assert_eq!(
        ok(&out),
        "nothing pinned under /sys/fs/bpf/xgate-nowhere-test\n"
    );
}

fn pinned_maps(pin: &Path) -> usize {
    std::fs::read_dir(pin)
        .map(|dirs| {
            dirs.flatten()
                .filter(|d| d.file_name().to_string_lossy().starts_with('v'))
                .map(|d| std::fs::read_dir(d.path()).map_or(0, |m| m.count()))
                .sum()
        })
        .unwrap_or(0)
}

#[test]
fn xdp_cleanup_removes_the_maps_a_clean_exit_leaves() {
    if !require_root("cli_safety::xdp_cleanup_removes_the_maps_a_clean_exit_leaves") {
        return;
    }
    let gw = NetNs::create("cleangw");
    let peer = NetNs::create("cleanpeer");
    veth(
        &gw,
        "xq0",
        &["198.18.7.1/24"],
        &peer,
        "xq1",
        &["198.18.7.2/24"],
    );
    let pin = PinDir::new("cleanup");
    let yaml = format!(
        "listeners: [{{address: '127.0.0.1:18302'}}]\n\
         xdp:\n  interfaces: [xq0]\n  pin_path: {}\n  on_exit: detach\n",
        pin.0.display()
    );
    let daemon = Daemon::start(&yaml, Some(&gw));
    assert_eq!(daemon.status()["xdp"]["attached"][0]["interface"], "xq0");
    let pin_arg = pin.0.to_str().unwrap();

    // While the daemon runs: refused, nothing removed.
    let e = failed(&daemon.cli(&["xdp", "cleanup", "--pin-path", pin_arg]));
    assert!(e.contains("uses the maps under"), "{e}");
    let e = failed(&xgate(&["xdp", "cleanup", "--pin-path", pin_arg]));
    assert!(
        e.contains("XDP is still attached with these maps (xq0@"),
        "{e}"
    );
    let before = pinned_maps(&pin.0);
    assert!(before > 0, "no maps pinned under {}", pin.0.display());

    // A clean exit detaches but leaves the maps pinned...
    drop(daemon.stop());
    assert_eq!(pinned_maps(&pin.0), before);
    // ...until cleanup.
    let out = xgate(&["xdp", "cleanup", "--pin-path", pin_arg]);
    assert!(
        ok(&out).starts_with(&format!("removed {before} pinned map(s)")),
        "{}",
        stdout(&out)
    );
    assert!(!pin.0.exists(), "{} still there", pin.0.display());
}
