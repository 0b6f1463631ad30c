//! Least privilege, end to end: the daemon runs as an unprivileged user
//! (`nobody`) with exactly CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN (setpriv),
//! attaches XDP to a veth in a namespace the test creates, and list changes
//! reach the kernel map; with any one of them taken away it names the
//! missing one in one line. And the admin socket lets in only root and its
//! group, by file mode and by peer credentials. Needs root (CI runs as
//! root and drops privileges here).

use std::{
    net::SocketAddr,
    os::unix::fs::{MetadataExt, PermissionsExt},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use xgate_tests::{
    netns::{udp_delivery, veth, NetNs, PinDir},
    ports::free_port,
    process::{stderr, xgate_bin, Daemon},
    require_root, TempDir,
};

/// The unprivileged account the daemon and the refused peers run as.
const USER: &str = "nobody";
const NO_GROUP: &str = "nogroup";
/// What XDP needs, as setpriv spells it.
const XDP_CAPS: [&str; 3] = ["bpf", "perfmon", "net_admin"];

/// `setpriv` as `USER` with exactly `caps` (inheritable, ambient and
/// bounding: nothing else can be regained).
fn setpriv(caps: &[&str]) -> Vec<String> {
    let set = std::iter::once("-all".to_string())
        .chain(caps.iter().map(|c| format!("+{c}")))
        .collect::<Vec<_>>()
        .join(",");
    vec![
        "setpriv".into(),
        format!("--reuid={USER}"),
        format!("--regid={NO_GROUP}"),
        "--init-groups".into(),
        format!("--inh-caps={set}"),
        format!("--ambient-caps={set}"),
        format!("--bounding-set={set}"),
    ]
}

fn chown_to_user(path: &std::path::Path) {
    let status = Command::new("chown")
        .arg(format!("{USER}:{NO_GROUP}"))
        .arg(path)
        .status()
        .expect("chown");
    assert!(status.success(), "chown {}", path.display());
}

fn config(pin: &PinDir, required: bool) -> String {
    format!(
        "listeners: [{{address: '127.0.0.1:18080'}}]\n\
         xdp:\n  interfaces: [xg0]\n  pin_path: {}\n  required: {required}\n\
         upstreams: {{u: {{targets: ['127.0.0.1:18081']}}}}\n\
         routes: [{{match: {{path_prefix: /}}, upstream: u}}]\n",
        pin.0.display()
    )
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// The effective uid and capability mask of a running process.
fn uid_and_caps(pid: u32) -> (u32, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let value = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap()
            .trim()
            .to_string()
    };
    let uid = value("Uid:")
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let caps = u64::from_str_radix(&value("CapEff:"), 16).unwrap();
    (uid, caps)
}

#[test]
fn xdp_attaches_as_an_unprivileged_user_with_three_capabilities() {
    if !require_root("privileges::xdp_attaches_as_an_unprivileged_user_with_three_capabilities") {
        return;
    }
    let gw = NetNs::create("pgw");
    let client = NetNs::create("pcl");
    veth(
        &gw,
        "xg0",
        &["198.18.5.1/24"],
        &client,
        "xc0",
        &["198.18.5.2/24"],
    );
    // Root makes the pin directory and the daemon's directory for the
    // service user, as the unit's ExecStartPre=+ and StateDirectory= do.
    let pin = PinDir::new("unpriv");
    std::fs::create_dir_all(&pin.0).unwrap();
    chown_to_user(&pin.0);
    let dir = TempDir::new("unpriv");
    chown_to_user(dir.path());
    let wrapper = setpriv(&XDP_CAPS);
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let daemon = Daemon::start_wrapped(dir, &config(&pin, true), Some(&gw), &[], &wrapper);

    let (uid, caps) = uid_and_caps(daemon.pid());
    assert_eq!(uid, 65534, "the daemon runs as {USER}");
    use gateway_userspace::service::capabilities::XDP;
    let expected: u64 = XDP.iter().map(|c| 1u64 << c.bit).sum();
    assert_eq!(
        caps, expected,
        "exactly CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN"
    );

    let status = daemon.status();
    assert_eq!(status["xdp"]["attached"][0]["interface"], "xg0", "{status}");
    // The admin socket: owned by the daemon's user, not world-accessible.
    let meta = std::fs::metadata(&daemon.admin_socket).unwrap();
    assert_eq!(meta.uid(), 65534);
    assert_eq!(meta.permissions().mode() & 0o007, 0, "no access for others");

    // A list change made through the CLI reaches the kernel map.
    let (from, to) = (addr("198.18.5.2:40000"), addr("198.18.5.1:9999"));
    assert_eq!(udp_delivery(&client, from, &gw, to, 100, 20), 100);
    let out = daemon.cli(&[
        "blocklist",
        "add",
        "198.18.5.2/32",
        "--reason",
        "unprivileged",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let denied = daemon.xdp_counter("denied_v4");
    assert_eq!(udp_delivery(&client, from, &gw, to, 100, 0), 0);
    assert_eq!(daemon.xdp_counter("denied_v4") - denied, 100);
    let out = daemon.cli(&["blocklist", "rm", "198.18.5.2/32"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(udp_delivery(&client, from, &gw, to, 100, 20), 100);
    daemon.stop();
}

/// Runs `xgate run` as the unprivileged user with `caps` until it exits
/// (it must: each run here lacks something it needs); its stderr.
fn run_to_failure(netns: &NetNs, caps: &[&str], yaml: &str) -> String {
    let dir = TempDir::new("missing-cap");
    chown_to_user(dir.path());
    let config = dir.path().join("xgate.yaml");
    std::fs::write(
        &config,
        format!(
            "{yaml}admin: {{socket: {}, metrics_address: 'off'}}\nstate_dir: {}\n",
            dir.path().join("admin.sock").display(),
            dir.path().join("state").display()
        ),
    )
    .unwrap();
    let wrapper = setpriv(caps);
    let mut child = netns
        .command(std::path::Path::new(&wrapper[0]))
        .args(&wrapper[1..])
        .arg(xgate_bin())
        .args(["run", "--config"])
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("xgate kept running without {caps:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success(), "exited cleanly without a capability");
    stderr(&out)
}

#[test]
fn a_missing_capability_is_named_in_one_line() {
    if !require_root("privileges::a_missing_capability_is_named_in_one_line") {
        return;
    }
    let gw = NetNs::create("pcap");
    let other = NetNs::create("pcap2");
    veth(
        &gw,
        "xg0",
        &["198.18.6.1/24"],
        &other,
        "xc0",
        &["198.18.6.2/24"],
    );
    let pin = PinDir::new("missing-cap");
    std::fs::create_dir_all(&pin.0).unwrap();
    chown_to_user(&pin.0);
    for missing in XDP_CAPS {
        let caps: Vec<&str> = XDP_CAPS.iter().copied().filter(|c| *c != missing).collect();
        let err = run_to_failure(&gw, &caps, &config(&pin, true));
        let name = format!("missing capability CAP_{}", missing.to_uppercase());
        let lines: Vec<&str> = err.lines().filter(|l| l.contains(&name)).collect();
        assert_eq!(lines.len(), 1, "without {missing}: {err}");
        assert!(lines[0].starts_with("xgate: "), "{err}");
    }
    // Port 80 without CAP_NET_BIND_SERVICE.
    let err = run_to_failure(
        &gw,
        &XDP_CAPS,
        "listeners: [{address: '127.0.0.1:80'}]\n\
         upstreams: {u: {targets: ['127.0.0.1:18081']}}\n\
         routes: [{match: {path_prefix: /}, upstream: u}]\n",
    );
    assert!(
        err.lines()
            .any(|l| l.contains("missing capability CAP_NET_BIND_SERVICE")),
        "{err}"
    );
}

/// `xgate status` as `USER` with primary group `group` and no other.
fn status_as(daemon: &Daemon, group: &str) -> std::process::Output {
    Command::new("setpriv")
        .arg(format!("--reuid={USER}"))
        .arg(format!("--regid={group}"))
        .arg("--clear-groups")
        .arg(xgate_bin())
        .arg("--admin-socket")
        .arg(&daemon.admin_socket)
        .args(["status", "--json"])
        .output()
        .expect("setpriv")
}

#[test]
fn the_admin_socket_admits_root_and_its_group_only() {
    if !require_root("privileges::the_admin_socket_admits_root_and_its_group_only") {
        return;
    }
    let dir = TempDir::new("admin-group");
    // The socket's directory must be reachable by the group's members.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let yaml = format!(
        "listeners: [{{address: '{}'}}]\nupstreams: {{u: {{targets: ['127.0.0.1:9']}}}}\n\
         routes: [{{match: {{path_prefix: /}}, upstream: u}}]\n\
         admin:\n  socket: {}\n  group: {NO_GROUP}\n  metrics_address: 'off'\n",
        free_port(),
        dir.path().join("admin.sock").display()
    );
    let daemon = Daemon::start_in_dir(dir, &yaml, None);
    let meta = std::fs::metadata(&daemon.admin_socket).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert_eq!((meta.uid(), meta.gid()), (0, 65534), "root:{NO_GROUP}");

    // A member of the group (here: its primary group) gets in.
    let out = status_as(&daemon, NO_GROUP);
    assert!(
        out.status.success(),
        "group member refused: {}",
        stderr(&out)
    );

    // Anyone else: refused by the file mode at connect()...
    let out = status_as(&daemon, "daemon");
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("permission denied on the admin socket"),
        "{}",
        stderr(&out)
    );
    // ...and by peer credentials when the mode was widened by hand.
    std::fs::set_permissions(&daemon.admin_socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = status_as(&daemon, "daemon");
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("admin API refused: uid 65534 is not root and not in group nogroup"),
        "{}",
        stderr(&out)
    );
    assert!(
        daemon.log().contains("admin API refused: uid 65534"),
        "the refusal is logged:\n{}",
        daemon.log()
    );
    // Root always.
    assert!(daemon.status()["version"].is_string());
    daemon.stop();
}

#[test]
fn without_a_group_only_root_gets_in() {
    if !require_root("privileges::without_a_group_only_root_gets_in") {
        return;
    }
    if gateway_userspace::sys::group_by_name("xgate")
        .unwrap()
        .is_some()
    {
        eprintln!("a group xgate exists here: it is the default admin group; see the test above");
        return;
    }
    let dir = TempDir::new("admin-nogroup");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let daemon = Daemon::start_in_dir(
        dir,
        &format!(
            "listeners: [{{address: '{}'}}]\nupstreams: {{u: {{targets: ['127.0.0.1:9']}}}}\n\
             routes: [{{match: {{path_prefix: /}}, upstream: u}}]\n",
            free_port()
        ),
        None,
    );
    let meta = std::fs::metadata(&daemon.admin_socket).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    std::fs::set_permissions(&daemon.admin_socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = status_as(&daemon, NO_GROUP);
    assert!(
        stderr(&out).contains("admin API refused: uid 65534 is not root, and no admin.group"),
        "{}",
        stderr(&out)
    );
    daemon.stop();
}
