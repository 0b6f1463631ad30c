//! The real `xgate` binary, run as a daemon or as a CLI command.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use crate::{netns::NetNs, TempDir};

/// Path of the built `xgate` binary: $XGATE_BIN, else next to the test
/// executable's target directory (`cargo xtask test` builds it first).
pub fn xgate_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("XGATE_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test> → target/<profile>/xgate
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>");
    let bin = profile_dir.join("xgate");
    assert!(
        bin.exists(),
        "{} does not exist: build it first with `cargo build -p gateway-userspace --bins` \
         (`cargo xtask test` does this)",
        bin.display()
    );
    bin
}

/// Runs `xgate ARGS` to completion.
pub fn xgate(args: &[&str]) -> Output {
    Command::new(xgate_bin())
        .args(args)
        .output()
        .expect("run xgate")
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A config listening on `listen` with one upstream per `(name,
/// definition)` (YAML flow style), each behind the route `/<name>/` (prefix
/// stripped).
pub fn upstreams_config(listen: std::net::SocketAddr, upstreams: &[(&str, String)]) -> String {
    let mut yaml = format!("listeners: [{{address: '{listen}'}}]\nupstreams:\n");
    for (name, definition) in upstreams {
        yaml.push_str(&format!("  {name}: {definition}\n"));
    }
    yaml.push_str("routes:\n");
    for (name, _) in upstreams {
        yaml.push_str(&format!(
            "  - {{name: {name}, match: {{path_prefix: /{name}/}}, upstream: {name}, strip_prefix: true}}\n"
        ));
    }
    yaml
}

/// A config listening on `listen` that sends every request to `upstream`
/// (one upstream `u`, one route for `/`).
pub fn catch_all_config(listen: std::net::SocketAddr, upstream: std::net::SocketAddr) -> String {
    format!(
        "listeners: [{{address: '{listen}'}}]\n\
         upstreams: {{u: {{targets: ['{upstream}']}}}}\n\
         routes: [{{match: {{path_prefix: /}}, upstream: u}}]\n"
    )
}

/// A running `xgate run` daemon with its own config, state dir and admin
/// socket. Stopped with SIGTERM (then SIGKILL) when dropped.
pub struct Daemon {
    child: Option<Child>,
    pub dir: TempDir,
    pub config: PathBuf,
    pub admin_socket: PathBuf,
    log: PathBuf,
}

impl Daemon {
    /// Writes `config_yaml` and starts the daemon, optionally inside a
    /// network namespace. `{dir}` in the YAML is replaced by the daemon's
    /// private directory. Waits until the admin API answers.
    pub fn start(config_yaml: &str, netns: Option<&NetNs>) -> Self {
        Self::start_in_dir(TempDir::new("daemon"), config_yaml, netns)
    }

    /// A daemon with [`upstreams_config`] on a free port, and that port.
    pub fn with_upstreams(upstreams: &[(&str, String)]) -> (Self, std::net::SocketAddr) {
        let listen = crate::ports::free_port();
        (
            Self::start(&upstreams_config(listen, upstreams), None),
            listen,
        )
    }

    /// Like [`Daemon::start`], reusing a directory (restart with the same state).
    pub fn start_in_dir(dir: TempDir, config_yaml: &str, netns: Option<&NetNs>) -> Self {
        Self::start_with_env(dir, config_yaml, netns, &[])
    }

    /// Like [`Daemon::start_in_dir`], with `env` set for the daemon
    /// (`RUST_LOG`, ...).
    pub fn start_with_env(
        dir: TempDir,
        config_yaml: &str,
        netns: Option<&NetNs>,
        env: &[(&str, &str)],
    ) -> Self {
        Self::start_wrapped(dir, config_yaml, netns, env, &[])
    }

    /// Like [`Daemon::start_with_env`], with `xgate` run by `wrapper`
    /// (a command and its arguments, e.g. `setpriv --reuid ...`), inside
    /// the namespace when there is one.
    pub fn start_wrapped(
        dir: TempDir,
        config_yaml: &str,
        netns: Option<&NetNs>,
        env: &[(&str, &str)],
        wrapper: &[&str],
    ) -> Self {
        let config = dir.path().join("xgate.yaml");
        let admin_socket = dir.path().join("admin.sock");
        let yaml = config_yaml.replace("{dir}", &dir.path().display().to_string());
        // An admin section of its own (a top-level key, not a comment).
        let yaml = if yaml
            .lines()
            .any(|line| line.trim_start().starts_with("admin:"))
        {
            yaml
        } else {
            // No metrics listener: the default port is one per host, and
            // the suite runs many daemons at once.
            format!(
                "{yaml}\nadmin:\n  socket: {}\n  metrics_address: 'off'\n",
                admin_socket.display()
            )
        };
        let yaml = if yaml.contains("state_dir:") {
            yaml
        } else {
            format!(
                "{yaml}\nstate_dir: {}\n",
                dir.path().join("state").display()
            )
        };
        std::fs::write(&config, yaml).expect("write config");
        let log = dir.path().join("xgate.log");
        let child = spawn_run(&config, &log, netns, &[], env, wrapper);
        let mut daemon = Self {
            child: Some(child),
            dir,
            config,
            admin_socket,
            log,
        };
        daemon.wait_ready();
        daemon
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().expect("try_wait") {
                panic!("xgate exited during start-up ({status}):\n{}", self.log());
            }
            if std::os::unix::net::UnixStream::connect(&self.admin_socket).is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "xgate not ready after 30s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A zero-downtime upgrade: starts `xgate run --takeover` on this
    /// daemon's config, which takes the listening sockets over; waits until
    /// the new process is ready and the old one has drained and exited
    /// (cleanly: asserted). From then on this handle is the new process
    /// (its own log). `netns`: the namespace the daemon runs in.
    pub fn upgrade(&mut self, netns: Option<&NetNs>) {
        let log = self
            .dir
            .path()
            .join(format!("xgate-upgraded-{}.log", self.pid()));
        let new = spawn_run(&self.config, &log, netns, &["--takeover"], &[], &[]);
        let mut old = std::mem::replace(self.child.as_mut().unwrap(), new);
        let old_log = std::mem::replace(&mut self.log, log);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.log().contains("xgate ready") {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().expect("try_wait") {
                panic!("xgate --takeover exited ({status}):\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "takeover not ready:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let status = loop {
            if let Some(status) = old.try_wait().expect("try_wait") {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "the old daemon did not exit after the takeover:\n{}",
                std::fs::read_to_string(&old_log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(
            status.success(),
            "the old daemon exited with {status}:\n{}",
            std::fs::read_to_string(&old_log).unwrap_or_default()
        );
    }

    /// Everything the daemon has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Runs `xgate --admin-socket <this daemon's> ARGS`.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(xgate_bin())
            .arg("--admin-socket")
            .arg(&self.admin_socket)
            .args(args)
            .output()
            .expect("run xgate cli")
    }

    /// The body of `GET path` on the admin socket.
    pub fn admin_get(&self, path: &str) -> String {
        use std::io::{Read, Write};
        let mut stream =
            std::os::unix::net::UnixStream::connect(&self.admin_socket).expect("admin socket");
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n"
        )
        .expect("write");
        let mut response = String::new();
        stream.read_to_string(&mut response).expect("read");
        let (head, body) = response.split_once("\r\n\r\n").expect("a response");
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        body.to_string()
    }

    /// `xgate status --json`, parsed.
    pub fn status(&self) -> serde_json::Value {
        let out = self.cli(&["status", "--json"]);
        assert!(out.status.success(), "status failed: {}", stderr(&out));
        serde_json::from_slice(&out.stdout).expect("status is JSON")
    }

    /// An XDP counter from `status`.
    pub fn xdp_counter(&self, name: &str) -> u64 {
        let status = self.status();
        status["xdp"]["counters"][name]
            .as_u64()
            .unwrap_or_else(|| panic!("no XDP counter {name} in {status}"))
    }

    /// SIGTERM, wait for a clean exit; returns the daemon's directory so a
    /// test can restart on the same state.
    pub fn stop(mut self) -> TempDir {
        let status = self.terminate();
        assert!(
            status.is_some_and(|s| s.success()),
            "xgate did not exit cleanly ({status:?}):\n{}",
            self.log()
        );
        std::mem::replace(&mut self.dir, TempDir::new("spent"))
    }

    /// SIGKILL: the daemon gets no chance to clean up (a crash).
    pub fn kill9(mut self) -> TempDir {
        let mut child = self.child.take().expect("running daemon");
        let _ = child.kill();
        let _ = child.wait();
        std::mem::replace(&mut self.dir, TempDir::new("spent"))
    }

    /// Rewrites the config file (same `{dir}` substitution as start-up) and
    /// runs `xgate reload`.
    pub fn reload_with(&self, config_yaml: &str) -> Output {
        let current = std::fs::read_to_string(&self.config).expect("read config");
        let yaml = config_yaml.replace("{dir}", &self.dir.path().display().to_string());
        // Keep the admin socket and state dir the daemon was started with.
        let tail: String = current
            .split("\nadmin:\n")
            .nth(1)
            .map(|rest| format!("\nadmin:\n{rest}"))
            .unwrap_or_default();
        std::fs::write(&self.config, format!("{yaml}{tail}")).expect("write config");
        self.cli(&["reload"])
    }

    fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        child.wait().ok();
        None
    }
}

/// Spawns `xgate run --config CONFIG EXTRA...`, logging to `log`.
fn spawn_run(
    config: &Path,
    log: &Path,
    netns: Option<&NetNs>,
    extra: &[&str],
    env: &[(&str, &str)],
    wrapper: &[&str],
) -> Child {
    let log_file = std::fs::File::create(log).expect("create log");
    let program = match wrapper.first() {
        Some(program) => PathBuf::from(program),
        None => xgate_bin(),
    };
    let mut command = match netns {
        Some(ns) => ns.command(&program),
        None => Command::new(&program),
    };
    if !wrapper.is_empty() {
        command.args(&wrapper[1..]).arg(xgate_bin());
    }
    command
        .envs(env.iter().copied())
        .args(["run", "--config"])
        .arg(config)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().unwrap())
        .stderr(log_file);
    command.spawn().expect("spawn xgate run")
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.terminate();
    }
}
