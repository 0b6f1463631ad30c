//! Faults under a steady load: an upstream killed, hung or answering
//! garbage; a broken config reloaded; a state directory that refuses the
//! write of a blocklist change. The load is bounded (a few workers, each
//! one request at a time, paced, for at most a minute); every request must
//! be answered (the client's own timeout is the hang detector, not a
//! performance threshold), with a status the fault explains. Latencies are
//! printed, not asserted: the machine may be busy.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use xgate_tests::{
    bad_upstream::{BadUpstream, Misbehaviour},
    http::send,
    ports::any_port,
    process::{catch_all_config, stderr, stdout, Daemon},
    upstream::EchoUpstream,
};

/// Requests `path` from `workers` tasks, one request at a time each, every
/// 20 ms, until stopped (or a minute passes).
struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<Vec<Outcome>>>,
}

#[derive(Debug, Clone, Copy)]
struct Outcome {
    /// `None`: no answer (the client gave up after 10 s, or the connection
    /// failed).
    status: Option<u16>,
    took: Duration,
}

#[derive(Debug, Default)]
struct Report {
    statuses: BTreeMap<String, usize>,
    unanswered: usize,
    max: Duration,
    p50: Duration,
    p99: Duration,
}

impl Report {
    fn count(&self, status: u16) -> usize {
        self.statuses.get(&status.to_string()).copied().unwrap_or(0)
    }

    fn total(&self) -> usize {
        self.statuses.values().sum::<usize>() + self.unanswered
    }

    /// Every request answered, each with one of `allowed`.
    fn assert_only(&self, allowed: &[u16], what: &str) {
        assert_eq!(
            self.unanswered, 0,
            "{what}: requests hung or failed: {self:?}"
        );
        for status in self.statuses.keys() {
            assert!(
                allowed.iter().any(|a| a.to_string() == *status),
                "{what}: {status} not in {allowed:?}: {self:?}"
            );
        }
    }
}

impl Load {
    fn start(gw: SocketAddr, path: &str, workers: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: gateway.test\r\nConnection: close\r\n\r\n");
        let tasks = (0..workers)
            .map(|_| {
                let stop = stop.clone();
                let request = request.clone();
                tokio::spawn(async move {
                    let mut outcomes = Vec::new();
                    let deadline = Instant::now() + Duration::from_secs(60);
                    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                        let start = Instant::now();
                        let status = send(gw, None, &request).await.ok().map(|r| r.status);
                        outcomes.push(Outcome {
                            status,
                            took: start.elapsed(),
                        });
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    outcomes
                })
            })
            .collect();
        Self { stop, tasks }
    }

    async fn stop(self, what: &str) -> Report {
        self.stop.store(true, Ordering::Relaxed);
        let mut outcomes = Vec::new();
        for task in self.tasks {
            outcomes.extend(task.await.unwrap());
        }
        let mut report = Report::default();
        let mut took: Vec<Duration> = outcomes.iter().map(|o| o.took).collect();
        took.sort();
        for o in &outcomes {
            match o.status {
                Some(s) => *report.statuses.entry(s.to_string()).or_default() += 1,
                None => report.unanswered += 1,
            }
        }
        if !took.is_empty() {
            report.max = *took.last().unwrap();
            report.p50 = took[took.len() / 2];
            report.p99 = took[(took.len() * 99 / 100).min(took.len() - 1)];
        }
        println!(
            "{what}: {} requests, statuses {:?}, unanswered {}, p50 {:?}, p99 {:?}, max {:?}",
            report.total(),
            report.statuses,
            report.unanswered,
            report.p50,
            report.p99,
            report.max
        );
        report
    }
}

/// Lets the load run for `duration`.
async fn run_for(duration: Duration) {
    tokio::time::sleep(duration).await;
}

#[tokio::test]
async fn upstreams_killed_hung_or_answering_garbage_under_load_give_5xx_and_nothing_hangs() {
    let live = EchoUpstream::start(any_port(), "live").await.unwrap();
    let silent = BadUpstream::start(Misbehaviour::Silent).await.unwrap();
    let garbage = BadUpstream::start(Misbehaviour::Garbage).await.unwrap();
    let (daemon, gw) = Daemon::with_upstreams(&[
        (
            "killed",
            format!("{{targets: ['{}'], timeout: 2s}}", live.addr),
        ),
        (
            "hung",
            format!("{{targets: ['{}'], timeout: 1s}}", silent.addr),
        ),
        (
            "garbage",
            format!("{{targets: ['{}'], timeout: 2s}}", garbage.addr),
        ),
    ]);

    // Killed mid-load: 200 before, then 502 (refused) or 503 (ejected by
    // passive health), never a hang.
    let load = Load::start(gw, "/killed/x", 4);
    run_for(Duration::from_secs(2)).await;
    live.stop().await;
    run_for(Duration::from_secs(3)).await;
    let killed = load.stop("killed").await;
    killed.assert_only(&[200, 502, 503], "killed");
    assert!(killed.count(200) > 0, "{killed:?}");
    assert!(killed.count(502) + killed.count(503) > 0, "{killed:?}");

    // Hung: accepts, never answers. 504 after the upstream timeout.
    let load = Load::start(gw, "/hung/x", 4);
    run_for(Duration::from_secs(4)).await;
    let hung = load.stop("hung").await;
    hung.assert_only(&[503, 504], "hung");
    assert!(hung.count(504) > 0, "{hung:?}");

    // Garbage: 502 (or 503 once ejected).
    let load = Load::start(gw, "/garbage/x", 4);
    run_for(Duration::from_secs(3)).await;
    let bad = load.stop("garbage").await;
    bad.assert_only(&[502, 503], "garbage");
    assert!(bad.count(502) > 0, "{bad:?}");

    // The gateway itself is fine.
    let status = daemon.status();
    assert!(status.is_object(), "{status}");
}

#[tokio::test]
async fn a_broken_config_reloaded_under_load_leaves_the_old_one_serving() {
    let echo = EchoUpstream::start(any_port(), "echo").await.unwrap();
    let listen = xgate_tests::ports::free_port();
    let good = catch_all_config(listen, echo.addr);
    let daemon = Daemon::start(&good, None);
    let load = Load::start(listen, "/x", 4);
    run_for(Duration::from_secs(1)).await;
    let broken = [
        // A YAML syntax error, an unknown upstream, a bad duration.
        format!("{good}routes: [\n"),
        good.replace("upstream: u}", "upstream: missing}"),
        good.replace("targets: [", "timeout: '10', targets: ["),
    ];
    let expected = [
        "line",
        "routes[0].upstream: unknown upstream 'missing'",
        "upstreams.u.timeout: '10' has no unit",
    ];
    for (yaml, error) in broken.iter().zip(expected) {
        let out = daemon.reload_with(yaml);
        assert!(!out.status.success(), "a broken config was applied: {yaml}");
        let err = stderr(&out);
        assert!(err.contains(error), "`{error}` in: {err}");
        assert!(
            err.contains(&daemon.config.display().to_string()),
            "the error names the file: {err}"
        );
        run_for(Duration::from_millis(500)).await;
    }
    let report = load.stop("broken reloads").await;
    report.assert_only(&[200], "broken reloads");
    // And a good reload still works afterwards.
    let out = daemon.reload_with(&good);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
}

/// A directory with a file system mounted on it for one test (a tiny
/// tmpfs, or a read-only bind mount of itself), unmounted and removed when
/// dropped, also when the test fails.
struct Mount {
    dir: xgate_tests::TempDir,
    /// Mounts stacked on the directory.
    mounts: usize,
}

impl Mount {
    fn tmpfs(size: &str) -> Self {
        let mut mount = Self {
            dir: xgate_tests::TempDir::new("tmpfs"),
            mounts: 0,
        };
        let path = mount.path().display().to_string();
        mount.mount(&["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs", &path]);
        mount
    }

    fn path(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Makes the directory read-only: a read-only bind mount of itself
    /// (root ignores permission bits, not a read-only mount).
    fn read_only(&mut self) {
        let path = self.path().display().to_string();
        self.mount(&["--bind", &path, &path]);
        self.mount(&["-o", "remount,ro,bind", &path]);
        self.mounts -= 1; // a remount stacks nothing
    }

    /// Takes the read-only bind mount off again.
    fn writable(&mut self) {
        self.unmount_one();
    }

    fn mount(&mut self, args: &[&str]) {
        let out = std::process::Command::new("mount")
            .args(args)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "mount {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.mounts += 1;
    }

    fn unmount_one(&mut self) {
        let out = std::process::Command::new("umount")
            .arg(self.path())
            .output()
            .expect("run umount");
        assert!(
            out.status.success(),
            "umount: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.mounts -= 1;
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        while self.mounts > 0 {
            let _ = std::process::Command::new("umount")
                .arg(self.path())
                .status();
            self.mounts -= 1;
        }
    }
}

/// Whether a request from `source` (in 127.0.0.0/8) is served.
async fn served_from(gw: SocketAddr, source: &str) -> bool {
    let source = SocketAddr::new(source.parse().unwrap(), 0);
    send(
        gw,
        Some(source),
        "GET /u/x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .await
    .is_ok_and(|r| r.status == 200)
}

/// A blocklist change whose state file cannot be written (the state
/// directory read-only, then full) is refused with the reason, and
/// memory (what `ls` shows and what the proxy enforces) and disk stay as
/// they were; once the directory takes writes again, changes persist.
#[tokio::test]
async fn a_read_only_or_full_state_directory_refuses_a_change_and_changes_nothing() {
    if !xgate_tests::require_root("a_read_only_or_full_state_directory_refuses_a_change") {
        return;
    }
    let echo = EchoUpstream::start(any_port(), "u").await.unwrap();
    // 64 KiB: room for the state file, and little enough to fill.
    let mut state = Mount::tmpfs("64k");
    let listen = xgate_tests::ports::free_port();
    let yaml = format!(
        "{}state_dir: {}\n",
        xgate_tests::process::upstreams_config(
            listen,
            &[("u", format!("{{targets: ['{}']}}", echo.addr))]
        ),
        state.path().display()
    );
    let daemon = Daemon::start(&yaml, None);
    let ok = |args: &[&str]| {
        let out = daemon.cli(args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    };
    ok(&["blocklist", "add", "127.0.0.20", "--reason", "before"]);
    let file = state.path().join("lists.json");
    let on_disk = || std::fs::read_to_string(&file).unwrap_or_default();
    let before = on_disk();
    assert!(before.contains("127.0.0.20/32"), "{before}");
    let listed = || stdout(&daemon.cli(&["blocklist", "ls"]));
    let listed_before = listed();

    let refused = |args: &[&str], why: &str| {
        let out = daemon.cli(args);
        assert!(
            !out.status.success(),
            "{args:?} succeeded with the state dir {why}"
        );
        assert!(
            stderr(&out).contains(&file.display().to_string()),
            "{args:?}: the error names the file: {}",
            stderr(&out)
        );
        stderr(&out)
    };

    for why in ["read-only", "full"] {
        let filler = state.path().join("filler");
        if why == "read-only" {
            state.read_only();
        } else {
            // Fill the tmpfs to the last block.
            use std::io::Write;
            let mut f = std::fs::File::create(&filler).unwrap();
            while f.write_all(&[0u8; 4096]).is_ok() {}
            let _ = f.sync_all();
        }
        let err = refused(&["blocklist", "add", "127.0.0.21"], why);
        println!("{why}: add refused: {}", err.trim());
        let err = refused(&["blocklist", "rm", "127.0.0.20/32"], why);
        println!("{why}: rm refused: {}", err.trim());
        refused(&["allowlist", "add", "127.0.0.20"], why);

        assert_eq!(listed(), listed_before, "{why}: memory changed");
        assert_eq!(on_disk(), before, "{why}: disk changed");
        assert!(
            served_from(listen, "127.0.0.21").await,
            "{why}: a refused block is enforced"
        );
        assert!(
            !served_from(listen, "127.0.0.20").await,
            "{why}: a refused removal is enforced"
        );

        if why == "read-only" {
            state.writable();
        } else {
            std::fs::remove_file(&filler).unwrap();
        }
    }

    // Writable again: changes go through and persist.
    ok(&["blocklist", "add", "127.0.0.21"]);
    ok(&["blocklist", "rm", "127.0.0.20/32"]);
    assert!(on_disk().contains("127.0.0.21/32") && !on_disk().contains("127.0.0.20/32"));
    assert!(served_from(listen, "127.0.0.20").await);
    assert!(!served_from(listen, "127.0.0.21").await);
    drop(daemon);
}
