//! The `xgate` command line: config validation with paths, blocklist
//! commands and their errors, and the admin socket.

use std::{
    os::unix::fs::PermissionsExt,
    time::{Duration, Instant},
};

use xgate_tests::{
    process::{stderr, stdout, xgate, Daemon},
    TempDir,
};

const VALID: &str = "listeners: [{address: '127.0.0.1:18200'}]\n\
upstreams: {u: {targets: ['127.0.0.1:18201']}}\n\
routes: [{match: {path_prefix: /}, upstream: u}]\n";

/// [`VALID`] on a free port, for tests that start a daemon (they run in
/// parallel).
fn valid_on_free_port() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    VALID.replace("18200", &port.to_string())
}

/// Runs `xgate validate` on `yaml`; returns (exit code, stderr).
fn validate(yaml: &str) -> (i32, String) {
    let dir = TempDir::new("validate");
    let path = dir.path().join("x.yaml");
    std::fs::write(&path, yaml).unwrap();
    let out = xgate(&["validate", "--config", path.to_str().unwrap()]);
    (out.status.code().unwrap(), stderr(&out))
}

#[test]
fn valid_config_and_the_quickstart_pass_validation() {
    assert_eq!(validate(VALID).0, 0);
    let quickstart = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/quickstart.yaml");
    let out = xgate(&["validate", "-c", quickstart]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("ok (1 listener(s), 1 upstream(s), 2 route(s)"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn broken_configs_report_the_path_of_each_error() {
    let cases: &[(&str, String, &[&str])] = &[
        (
            "unknown field",
            VALID.replace("address: '127.0.0.1:18200'", "address: '127.0.0.1:18200', colour: red"),
            &["listeners[0].colour: unknown field `colour`"],
        ),
        (
            "invalid CIDR",
            format!("{VALID}xdp: {{deny: ['203.0.113.0/24', '300.1.2.3/33']}}\n"),
            &["xdp.deny[1]: invalid CIDR '300.1.2.3/33': '300.1.2.3' is not an IPv4 or IPv6 address"],
        ),
        (
            "host bits set",
            format!("{VALID}xdp: {{deny: ['10.1.2.3/8']}}\n"),
            &["xdp.deny[0]: 10.1.2.3/8 has host bits set; did you mean 10.0.0.0/8 or 10.1.2.3/32?"],
        ),
        (
            "unknown upstream",
            VALID.replace("upstream: u}", "upstream: u}, {match: {path_prefix: /b}, upstream: missing}"),
            &["routes[1].upstream: unknown upstream 'missing' (defined: u)"],
        ),
        (
            "bad duration",
            VALID.replace("targets: ['127.0.0.1:18201']", "targets: ['127.0.0.1:18201'], timeout: '10'"),
            &["upstreams.u.timeout: '10' has no unit"],
        ),
        (
            "several errors at once",
            "listeners: [{address: '127.0.0.1:1'}, {address: '127.0.0.1:1'}]\n\
             upstreams: {u: {targets: []}}\n\
             routes: [{match: {path_prefix: api}, upstream: u}]\n\
             xdp: {interfaces: [this-name-is-far-too-long]}\n"
                .to_string(),
            &[
                "listeners[1].address: 127.0.0.1:1 is already used by listeners[0]",
                "xdp.interfaces[0]: 'this-name-is-far-too-long' is not a valid interface name",
                "upstreams.u.targets: at least one target is required",
                "routes[0].match.path_prefix: 'api' must start with '/'",
                "4 errors",
            ],
        ),
        ("YAML syntax", "listeners: [\n".to_string(), &["line 2"]),
        ("missing section", "upstreams: {}\n".to_string(), &["missing field `listeners`"]),
    ];
    for (name, yaml, expected) in cases {
        let (code, err) = validate(yaml);
        assert_eq!(code, 1, "{name}: exit code; stderr: {err}");
        for line in *expected {
            assert!(err.contains(line), "{name}: expected `{line}` in:\n{err}");
        }
    }
    let out = xgate(&["validate", "-c", "/nonexistent/xgate.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("cannot read file"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn blocklist_commands_validate_input_and_change_nothing_on_error() {
    let daemon = Daemon::start(
        &format!("{}xdp: {{deny: ['192.0.2.0/24']}}\n", valid_on_free_port()),
        None,
    );
    let state = daemon.dir.path().join("state/lists.json");

    let out = daemon.cli(&["blocklist", "add", "203.0.113.0/24", "--reason", "scanner"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "blocked 203.0.113.0/24");
    let before_state = std::fs::read_to_string(&state).unwrap();
    let before_ls = stdout(&daemon.cli(&["blocklist", "ls", "--json"]));

    let refused: &[(&[&str], i32, &str)] = &[
        (
            &["blocklist", "add", "300.1.2.3/33"],
            2,
            "'300.1.2.3' is not an IPv4 or IPv6 address",
        ),
        (
            &["blocklist", "add", "10.0.0.0/33"],
            2,
            "prefix length 33 is more than 32 for IPv4",
        ),
        (
            &["blocklist", "add", "10.0.0.0/8", "--ttl", "soon"],
            2,
            "'soon' does not start with a whole number",
        ),
        (&["blocklist", "add", "10.1.0.0/8"], 1, "has host bits set"),
        (
            &["blocklist", "add", "203.0.113.0/24"],
            1,
            "203.0.113.0/24 is already in the blocklist (added at runtime)",
        ),
        (
            &["blocklist", "add", "192.0.2.0/24"],
            1,
            "192.0.2.0/24 is already in the blocklist (config file)",
        ),
        (
            &["blocklist", "rm", "192.0.2.0/24"],
            1,
            "comes from the config file",
        ),
        (
            &["blocklist", "rm", "198.51.100.0/24"],
            1,
            "198.51.100.0/24 is not in the blocklist",
        ),
    ];
    for (args, code, message) in refused {
        let out = daemon.cli(args);
        assert_eq!(out.status.code(), Some(*code), "{args:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains(message),
            "{args:?}: expected `{message}` in {}",
            stderr(&out)
        );
    }
    assert_eq!(
        std::fs::read_to_string(&state).unwrap(),
        before_state,
        "state file changed"
    );
    assert_eq!(
        stdout(&daemon.cli(&["blocklist", "ls", "--json"])),
        before_ls,
        "list changed"
    );

    let table = stdout(&daemon.cli(&["blocklist", "ls"]));
    assert!(
        table.contains("192.0.2.0/24") && table.contains("config"),
        "{table}"
    );
    assert!(
        table.contains("203.0.113.0/24") && table.contains("scanner"),
        "{table}"
    );
}

#[test]
fn ttl_entries_expire_and_are_reaped() {
    let daemon = Daemon::start(&valid_on_free_port(), None);
    let out = daemon.cli(&["blocklist", "add", "2001:db8::/32", "--ttl", "1s"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&daemon.cli(&["blocklist", "ls"])).contains("2001:db8::/32"));
    let deadline = Instant::now() + Duration::from_secs(15);
    while stdout(&daemon.cli(&["blocklist", "ls"])).contains("2001:db8::/32") {
        assert!(
            Instant::now() < deadline,
            "entry with a 1s TTL never reaped"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let state = std::fs::read_to_string(daemon.dir.path().join("state/lists.json")).unwrap();
    assert!(
        !state.contains("2001:db8::"),
        "reaped entry still persisted: {state}"
    );
}

#[test]
fn admin_socket_is_private_and_a_missing_daemon_is_explained() {
    let daemon = Daemon::start(&valid_on_free_port(), None);
    let mode = std::fs::metadata(&daemon.admin_socket)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let status = daemon.status();
    assert_eq!(status["routes"], 1);
    assert_eq!(status["xdp_off_reason"], "no xdp.interfaces configured");

    let out = xgate(&["--admin-socket", "/nonexistent/admin.sock", "status"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("cannot reach the xgate daemon at /nonexistent/admin.sock"),
        "{}",
        stderr(&out)
    );

    // A second daemon on the same socket refuses to start.
    let mut config = std::fs::read_to_string(&daemon.config).unwrap();
    let listen = daemon.status()["listeners"][0]
        .as_str()
        .unwrap()
        .to_string();
    config = config.replace(&listen, "127.0.0.1:0");
    let dir = TempDir::new("second");
    let path = dir.path().join("x.yaml");
    std::fs::write(&path, config).unwrap();
    let out = xgate(&["run", "-c", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("another xgate daemon is already serving"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn help_explains_every_command() {
    let out = xgate(&["--help"]);
    assert!(out.status.success());
    let help = stdout(&out);
    for command in ["run", "validate", "status", "blocklist"] {
        assert!(
            help.contains(command),
            "{command} missing from --help:\n{help}"
        );
    }
    let out = xgate(&["blocklist", "add", "--help"]);
    assert!(stdout(&out).contains("--ttl"), "{}", stdout(&out));
}

#[test]
fn allowlist_commands_mirror_the_blocklist() {
    let daemon = Daemon::start(
        &format!("{}xdp: {{allow: ['192.0.2.0/24']}}\n", valid_on_free_port()),
        None,
    );
    let out = daemon.cli(&["allowlist", "add", "198.51.100.0/24", "--reason", "partner"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "allowed 198.51.100.0/24");
    let out = daemon.cli(&["allowlist", "add", "198.51.100.0/24"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("198.51.100.0/24 is already in the allowlist (added at runtime)"),
        "{}",
        stderr(&out)
    );
    let out = daemon.cli(&["allowlist", "rm", "192.0.2.0/24"]);
    assert!(
        stderr(&out).contains("comes from the config file (xdp.allow)"),
        "{}",
        stderr(&out)
    );
    let table = stdout(&daemon.cli(&["allowlist", "ls"]));
    assert!(
        table.contains("192.0.2.0/24")
            && table.contains("198.51.100.0/24")
            && table.contains("partner"),
        "{table}"
    );
    // The same prefix may be in both lists: the allow entry wins.
    assert!(daemon
        .cli(&["blocklist", "add", "198.51.100.0/24"])
        .status
        .success());
    let status = daemon.status();
    assert_eq!(
        (
            status["blocklist_entries"].as_u64(),
            status["allowlist_entries"].as_u64()
        ),
        (Some(1), Some(2))
    );
    let out = daemon.cli(&["allowlist", "rm", "198.51.100.0/24"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stdout(&daemon.cli(&["allowlist", "ls"])).contains("198.51.100.0/24"));
}

#[test]
fn reload_applies_a_valid_config_and_refuses_a_broken_one() {
    let base = valid_on_free_port();
    let daemon = Daemon::start(&base, None);
    assert_eq!(daemon.status()["routes"], 1);

    let two_routes = base.replace(
        "routes: [{match: {path_prefix: /}, upstream: u}]",
        "routes: [{match: {path_prefix: /}, upstream: u}, {match: {path_prefix: /b}, upstream: u}]",
    );
    let out = daemon.reload_with(&two_routes);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out).trim(),
        format!(
            "reloaded {}",
            daemon.config.canonicalize().unwrap().display()
        )
    );
    let status = daemon.status();
    assert_eq!(
        (status["routes"].as_u64(), status["reloads"].as_u64()),
        (Some(2), Some(1))
    );

    // Broken: every error reported, nothing applied.
    let broken = two_routes
        .replace("upstream: u}]", "upstream: nope}]")
        .replace("path_prefix: /b", "path_prefix: b");
    let out = daemon.reload_with(&broken);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("routes[1].match.path_prefix: 'b' must start with '/'"),
        "{err}"
    );
    assert!(
        err.contains("routes[1].upstream: unknown upstream 'nope'"),
        "{err}"
    );
    let status = daemon.status();
    assert_eq!(
        (status["routes"].as_u64(), status["reloads"].as_u64()),
        (Some(2), Some(1))
    );

    // A change only a restart applies is reported, and again on the next
    // reload (it is still not running), until a restart.
    let moved = format!("{two_routes}xdp: {{pin_path: /sys/fs/bpf/xgate-moved}}\n");
    for _ in 0..2 {
        let out = daemon.reload_with(&moved);
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(
            stdout(&out).contains("applied only after a restart: xdp.pin_path"),
            "{}",
            stdout(&out)
        );
    }

    // SIGHUP reloads too.
    daemon.reload_with(&base);
    std::fs::write(
        &daemon.config,
        std::fs::read_to_string(&daemon.config)
            .unwrap()
            .replace(&base, &two_routes),
    )
    .unwrap();
    let before = daemon.status()["reloads"].as_u64().unwrap();
    let _ = std::process::Command::new("kill")
        .args(["-HUP", &daemon.pid().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while daemon.status()["reloads"].as_u64().unwrap() == before {
        assert!(Instant::now() < deadline, "SIGHUP did not reload");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(daemon.status()["routes"], 2);
}

#[test]
fn xdp_stats_without_xdp_says_why() {
    let daemon = Daemon::start(&valid_on_free_port(), None);
    let out = daemon.cli(&["xdp", "stats"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("XDP is not attached: no xdp.interfaces configured"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn rate_limit_settings_are_validated() {
    let (code, err) = validate(&format!(
        "{VALID}xdp:\n  allow: ['203.0.113.0/24', '203.0.113.0/24']\n  rate_limit:\n    rate: 0\n    burst: 0\n    source_prefix_v4: 33\n    ports: [0]\n    overrides: [{{cidr: '10.0.0.1/8', rate: 5}}]\n"
    ));
    assert_eq!(code, 1);
    for line in [
        "xdp.allow[1]: 203.0.113.0/24 is already listed at xdp.allow[0]",
        "xdp.rate_limit.rate: must be at least 1 packet per second",
        "xdp.rate_limit.burst: must be at least 1",
        "xdp.rate_limit.source_prefix_v4: must be 1 to 32",
        "xdp.rate_limit.ports[0]: port 0 is not a valid port",
        "xdp.rate_limit.overrides[0].cidr: 10.0.0.1/8 has host bits set",
    ] {
        assert!(err.contains(line), "expected `{line}` in:\n{err}");
    }
    let (code, err) = validate(&format!("{VALID}xdp: {{on_exit: sometimes}}\n"));
    assert_eq!(code, 1);
    assert!(
        err.contains("xdp.on_exit: unknown variant `sometimes`, expected `detach` or `keep`"),
        "{err}"
    );
}

#[test]
fn run_takes_a_worker_count_and_refuses_nonsense() {
    let out = xgate(&["run", "--workers", "0", "-c", "/nonexistent.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("invalid value '0' for '--workers <WORKERS>'"),
        "{}",
        stderr(&out)
    );
    let out = xgate(&["run", "--cpu-affinity", "pinned", "-c", "/nonexistent.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("invalid value 'pinned' for '--cpu-affinity <CPU_AFFINITY>'")
            && err.contains("[possible values: auto, off]"),
        "{err}"
    );
    // One worker thread serves as well.
    let dir = TempDir::new("workers");
    let config = dir.path().join("x.yaml");
    let admin = dir.path().join("admin.sock");
    std::fs::write(
        &config,
        format!(
            "{}admin: {{socket: {}, metrics_address: 'off'}}\nstate_dir: {}\n",
            valid_on_free_port(),
            admin.display(),
            dir.path().join("state").display()
        ),
    )
    .unwrap();
    let mut child = std::process::Command::new(xgate_tests::process::xgate_bin())
        .args(["run", "--workers", "1", "-c", config.to_str().unwrap()])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::os::unix::net::UnixStream::connect(&admin).is_err() {
        assert!(Instant::now() < deadline, "xgate --workers 1 did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = xgate(&[
        "--admin-socket",
        admin.to_str().unwrap(),
        "status",
        "--json",
    ]);
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    assert!(child.wait().unwrap().success());
    assert!(out.status.success(), "{}", stderr(&out));
}
