//! xgate as a systemd service: the unit file passes `systemd-analyze
//! verify`; the daemon speaks sd_notify (READY, RELOADING/READY around a
//! reload, STOPPING, WATCHDOG) to a socket the test binds, as systemd's; the
//! log level changes at run time; the log format follows `log.format`.

use std::{
    io::{Read, Write},
    os::unix::net::{UnixDatagram, UnixStream},
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use xgate_tests::{
    ports::free_port,
    process::{stderr, stdout, xgate_bin, Daemon},
    TempDir,
};

fn minimal_config() -> String {
    format!(
        "listeners: [{{address: '{}'}}]\nupstreams: {{u: {{targets: ['127.0.0.1:9']}}}}\n\
         routes: [{{match: {{path_prefix: /}}, upstream: u}}]\n",
        free_port()
    )
}

/// Reads notifications until one has the line `want`; returns it. Every
/// message read is kept in `seen` (for the failure message).
fn wait_for(socket: &UnixDatagram, want: &str, seen: &mut Vec<String>) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut buffer = [0u8; 4096];
    loop {
        assert!(
            Instant::now() < deadline,
            "no {want:?} from the daemon; got {seen:?}"
        );
        let n = match socket.recv(&mut buffer) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => continue,
            Err(e) => panic!("recv: {e}"),
        };
        let message = String::from_utf8_lossy(&buffer[..n]).into_owned();
        seen.push(message.clone());
        if message.lines().any(|line| line == want) {
            return message;
        }
    }
}

fn field<'a>(message: &'a str, key: &str) -> Option<&'a str> {
    message
        .lines()
        .find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
}

fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .expect("kill");
    assert!(status.success());
}

#[test]
fn sd_notify_ready_reloading_stopping_and_watchdog() {
    let dir = TempDir::new("notify");
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).expect("bind the notify socket");
    socket
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    let notify = socket_path.display().to_string();
    let daemon = Daemon::start_with_env(
        TempDir::new("notify-daemon"),
        &minimal_config(),
        None,
        &[("NOTIFY_SOCKET", &notify), ("WATCHDOG_USEC", "400000")],
    );
    let mut seen = Vec::new();

    let ready = wait_for(&socket, "READY=1", &mut seen);
    assert_eq!(
        field(&ready, "MAINPID"),
        Some(daemon.pid().to_string().as_str()),
        "{ready}"
    );
    wait_for(&socket, "WATCHDOG=1", &mut seen);
    wait_for(&socket, "WATCHDOG=1", &mut seen);

    // SIGHUP (ExecReload): RELOADING=1 with the monotonic clock, then READY=1.
    signal(daemon.pid(), "HUP");
    let reloading = wait_for(&socket, "RELOADING=1", &mut seen);
    let usec: u64 = field(&reloading, "MONOTONIC_USEC")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no MONOTONIC_USEC in {reloading:?}"));
    assert!(usec > 0);
    let ready = wait_for(&socket, "READY=1", &mut seen);
    assert_eq!(
        field(&ready, "STATUS"),
        Some("configuration reloaded"),
        "{ready}"
    );

    // A refused reload (through the admin API) still ends with READY=1,
    // and says why.
    let out = daemon.reload_with("listeners: [");
    assert!(!out.status.success(), "{}", stdout(&out));
    wait_for(&socket, "RELOADING=1", &mut seen);
    let ready = wait_for(&socket, "READY=1", &mut seen);
    assert!(
        field(&ready, "STATUS").is_some_and(|s| s.starts_with("reload refused")),
        "{ready}"
    );

    // SIGTERM: STOPPING=1 as the drain starts.
    daemon.stop();
    wait_for(&socket, "STOPPING=1", &mut seen);
}

#[test]
fn a_takeover_names_the_new_main_pid() {
    let dir = TempDir::new("notify-takeover");
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).expect("bind the notify socket");
    socket
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    let notify = socket_path.display().to_string();
    let mut daemon = Daemon::start_with_env(
        TempDir::new("notify-takeover-daemon"),
        &minimal_config(),
        None,
        &[("NOTIFY_SOCKET", &notify)],
    );
    let mut seen = Vec::new();
    wait_for(&socket, "READY=1", &mut seen);
    let old = daemon.pid();
    // The new process has no NOTIFY_SOCKET here: what arrives is the old
    // one handing the service over.
    daemon.upgrade(None);
    assert_ne!(daemon.pid(), old);
    let want = format!("MAINPID={}", daemon.pid());
    wait_for(&socket, &want, &mut seen);
    daemon.stop();
}

#[test]
fn abstract_notify_socket_and_a_watchdog_for_another_process() {
    use std::os::linux::net::SocketAddrExt;
    let name = format!("xgate-test-notify-{}", std::process::id());
    let address = std::os::unix::net::SocketAddr::from_abstract_name(&name).unwrap();
    let socket = UnixDatagram::bind_addr(&address).expect("bind an abstract socket");
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let notify = format!("@{name}");
    // WATCHDOG_PID names another process: the watchdog is not ours to feed.
    let daemon = Daemon::start_with_env(
        TempDir::new("notify-abstract"),
        &minimal_config(),
        None,
        &[
            ("NOTIFY_SOCKET", &notify),
            ("WATCHDOG_USEC", "100000"),
            ("WATCHDOG_PID", "1"),
        ],
    );
    let mut seen = Vec::new();
    wait_for(&socket, "READY=1", &mut seen);
    // 20 would-be feeding intervals.
    let quiet_until = Instant::now() + Duration::from_secs(1);
    let mut buffer = [0u8; 4096];
    while Instant::now() < quiet_until {
        if let Ok(n) = socket.recv(&mut buffer) {
            seen.push(String::from_utf8_lossy(&buffer[..n]).into_owned());
        }
    }
    assert!(
        !seen.iter().any(|m| m.contains("WATCHDOG=1")),
        "fed a watchdog that WATCHDOG_PID gives to another process: {seen:?}"
    );
    daemon.stop();
}

#[test]
fn unit_file_passes_systemd_analyze_verify() {
    let unit = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/xgate.service");
    let text = std::fs::read_to_string(&unit).expect("packaging/xgate.service");

    // The unit grants exactly the capabilities the daemon says it needs.
    use gateway_userspace::service::capabilities::{CAP_NET_BIND_SERVICE, XDP};
    let mut needed: Vec<&str> = XDP.iter().map(|c| c.name).collect();
    needed.push(CAP_NET_BIND_SERVICE.name);
    needed.sort();
    for key in ["AmbientCapabilities=", "CapabilityBoundingSet="] {
        let line = text
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key} in the unit"));
        let mut granted: Vec<&str> = line.split_whitespace().collect();
        granted.sort();
        assert_eq!(granted, needed, "{key}");
    }
    for line in [
        "Type=notify",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "RuntimeDirectory=xgate",
        "StateDirectory=xgate",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "User=xgate",
    ] {
        assert!(text.lines().any(|l| l == line), "no {line:?} in the unit");
    }

    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        assert!(
            std::env::var_os("CI").is_none(),
            "systemd-analyze is missing under CI: install systemd"
        );
        eprintln!("\n*** SKIPPED the unit check: systemd-analyze is not installed ***\n");
        return;
    }
    // Checked against the binary just built (verify wants ExecStart's
    // program to exist).
    let dir = TempDir::new("unit");
    let copy = dir.path().join("xgate.service");
    let bin = xgate_bin().display().to_string();
    std::fs::write(&copy, text.replace("/usr/bin/xgate", &bin)).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&copy)
        .output()
        .expect("run systemd-analyze");
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify: {}{}",
        stdout(&out),
        stderr(&out)
    );
    // And it is not a check that passes anything.
    std::fs::write(&copy, text.replace("NoNewPrivileges=", "NoNewPrivilege=")).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&copy)
        .output()
        .unwrap();
    assert!(
        stderr(&out).contains("Unknown key"),
        "a misspelt key went unnoticed: {}",
        stderr(&out)
    );
}

/// Sends bytes that are not HTTP to the admin socket: the daemon logs that
/// at debug level ("admin connection error").
fn garbage_to_admin(daemon: &Daemon) {
    let mut stream = UnixStream::connect(&daemon.admin_socket).unwrap();
    stream.write_all(b"\x01\x02 nonsense\r\n\r\n").unwrap();
    let mut sink = Vec::new();
    let _ = stream.read_to_end(&mut sink);
}

fn wait_for_log(daemon: &Daemon, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !daemon.log().contains(needle) {
        assert!(
            Instant::now() < deadline,
            "{needle:?} not logged:\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn log_level_changes_at_run_time() {
    let config = minimal_config();
    let daemon = Daemon::start_with_env(TempDir::new("loglevel"), &config, None, &[]);
    let out = daemon.cli(&["log-level"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "info");

    garbage_to_admin(&daemon);
    wait_for_log(&daemon, "xgate ready");
    let out = daemon.cli(&["log-level", "dbug"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("\"dbug\" is not a level"),
        "{}",
        stderr(&out)
    );
    assert_eq!(stdout(&daemon.cli(&["log-level"])).trim(), "info");
    assert!(
        !daemon.log().contains("admin connection error"),
        "a debug line at info:\n{}",
        daemon.log()
    );

    let out = daemon.cli(&["log-level", "debug"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("debug"), "{}", stdout(&out));
    garbage_to_admin(&daemon);
    wait_for_log(&daemon, "admin connection error");

    // A reload keeps the level set at run time, unless the file changes
    // log.level.
    let out = daemon.reload_with(&config);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&daemon.cli(&["log-level"])).trim(), "debug");
    let out = daemon.reload_with(&format!("{config}log: {{level: warn}}\n"));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&daemon.cli(&["log-level"])).trim(), "warn");
    daemon.stop();
}

#[test]
fn logs_without_a_terminal_are_plain_or_json() {
    // Standard error is a file here: no colour codes.
    let daemon = Daemon::start(&minimal_config(), None);
    wait_for_log(&daemon, "xgate ready");
    let log = daemon.log();
    assert!(!log.contains('\u{1b}'), "colour codes in a file:\n{log}");
    daemon.stop();

    let daemon = Daemon::start(
        &format!("{}log: {{format: json}}\n", minimal_config()),
        None,
    );
    wait_for_log(&daemon, "xgate ready");
    let log = daemon.log();
    let mut ready = false;
    for line in log.lines().filter(|l| !l.is_empty()) {
        let value: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}\n{log}"));
        assert!(value["level"].is_string(), "{line}");
        ready |= value["fields"]["message"] == "xgate ready";
    }
    assert!(ready, "no JSON 'xgate ready' line:\n{log}");
    daemon.stop();
}

/// Runs `xgate run` on a terminal (`script` gives it one) with a config that
/// logs a warning and then cannot listen (the port is taken): what the
/// terminal showed.
fn on_a_terminal(format: Option<&str>) -> String {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dir = TempDir::new("tty");
    let config = dir.path().join("xgate.yaml");
    let log = format
        .map(|f| format!("log: {{format: {f}}}\n"))
        .unwrap_or_default();
    std::fs::write(
        &config,
        format!(
            "listeners: [{{address: '{}'}}]\n\
             upstreams: {{u: {{targets: ['127.0.0.1:9'], tls: {{verify: false}}}}}}\n\
             routes: [{{match: {{path_prefix: /}}, upstream: u}}]\n\
             admin: {{socket: {}, metrics_address: 'off'}}\nstate_dir: {}\n{log}",
            taken.local_addr().unwrap(),
            dir.path().join("admin.sock").display(),
            dir.path().join("state").display()
        ),
    )
    .unwrap();
    let command = format!("{} run -c {}", xgate_bin().display(), config.display());
    let out = Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run script (util-linux)");
    let shown = stdout(&out);
    assert!(!out.status.success(), "started on a taken port: {shown}");
    assert!(shown.contains("UNSAFE SETTING"), "{shown}");
    shown
}

#[test]
fn logs_on_a_terminal_have_colours_unless_told_otherwise() {
    assert!(
        on_a_terminal(None).contains("\u{1b}["),
        "no colours on a terminal"
    );
    assert!(
        !on_a_terminal(Some("plain")).contains("\u{1b}["),
        "colours with log.format: plain"
    );
}

#[test]
fn under_journald_lines_have_no_timestamps() {
    use std::os::unix::fs::MetadataExt;
    // The daemon's standard error is this file (the helper truncates it,
    // keeping its inode): $JOURNAL_STREAM names it, as systemd does for
    // journald's stream.
    let dir = TempDir::new("journald");
    let log = dir.path().join("xgate.log");
    std::fs::write(&log, "").unwrap();
    let meta = std::fs::metadata(&log).unwrap();
    let stream = format!("{}:{}", meta.dev(), meta.ino());
    let daemon =
        Daemon::start_with_env(dir, &minimal_config(), None, &[("JOURNAL_STREAM", &stream)]);
    wait_for_log(&daemon, "xgate ready");
    let ready = daemon
        .log()
        .lines()
        .find(|l| l.contains("xgate ready"))
        .unwrap()
        .to_string();
    assert!(ready.trim_start().starts_with("INFO"), "{ready}");
    assert!(!ready.contains('\u{1b}'), "{ready}");
    daemon.stop();

    // Elsewhere, each line starts with its time.
    let daemon = Daemon::start(&minimal_config(), None);
    wait_for_log(&daemon, "xgate ready");
    let log = daemon.log();
    let ready = log.lines().find(|l| l.contains("xgate ready")).unwrap();
    assert!(ready.starts_with("20"), "{ready}");
    daemon.stop();
}
