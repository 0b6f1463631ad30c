//! Reloads that tell the truth: the file the daemon loaded, settings only a
//! restart applies (reported until they run), listeners added and removed
//! with their connections drained, and `shutdown.drain_timeout`.

use std::time::{Duration, Instant};

use xgate_tests::{
    bad_upstream::ScriptedUpstream,
    http,
    ports::free_port,
    process::{stderr, stdout, upstreams_config, xgate_bin, Daemon},
    upstream::EchoUpstream,
};

/// Polls `check` every 50 ms until it holds, for up to 30 s.
async fn eventually<F: std::future::Future<Output = bool>>(
    what: &str,
    mut check: impl FnMut() -> F,
) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check().await {
        assert!(Instant::now() < deadline, "not within 30 s: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether a TCP connection to `addr` is refused.
async fn refused(addr: std::net::SocketAddr) -> bool {
    matches!(
        tokio::net::TcpStream::connect(addr).await,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused
    )
}

#[test]
fn reload_names_the_file_it_loaded_and_says_when_c_names_another() {
    let listen = free_port();
    let config = format!("listeners: [{{address: '{listen}'}}]\n");
    let daemon = Daemon::start(&config, None);
    let own = daemon.config.canonicalize().unwrap();

    let out = daemon.cli(&["reload"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), format!("reloaded {}", own.display()));

    // The same file by another path is the same file.
    let dir = own.parent().unwrap();
    let relative = std::process::Command::new(xgate_bin())
        .current_dir(dir)
        .args(["-c", "./xgate.yaml", "reload"])
        .output()
        .unwrap();
    assert!(relative.status.success(), "{}", stderr(&relative));
    assert!(stderr(&relative).is_empty(), "{}", stderr(&relative));

    // Another file, reaching the same daemon: the daemon re-reads its own,
    // and the CLI says so and fails.
    let other = dir.join("other.yaml");
    std::fs::write(&other, std::fs::read_to_string(&own).unwrap()).unwrap();
    let out = std::process::Command::new(xgate_bin())
        .arg("-c")
        .arg(&other)
        .arg("reload")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), format!("reloaded {}", own.display()));
    assert!(
        stderr(&out).contains(&format!(
            "the daemon re-read ITS OWN file {}, not {}",
            own.display(),
            other.display()
        )),
        "{}",
        stderr(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_are_added_and_removed_by_reload_and_removed_ones_drain() {
    let upstream = EchoUpstream::start("127.0.0.1:0".parse().unwrap(), "echo")
        .await
        .unwrap();
    let mut held = ScriptedUpstream::start("held", 200, Duration::ZERO)
        .await
        .unwrap();
    let (first, second) = (free_port(), free_port());
    let config = |listeners: &[std::net::SocketAddr]| {
        let mut yaml = upstreams_config(
            listeners[0],
            &[
                ("echo", format!("{{targets: ['{}']}}", upstream.addr)),
                ("held", format!("{{targets: ['{}']}}", held.addr)),
            ],
        );
        let all: Vec<String> = listeners
            .iter()
            .map(|l| format!("{{address: '{l}'}}"))
            .collect();
        yaml = yaml.replacen(
            &format!("listeners: [{{address: '{}'}}]", listeners[0]),
            &format!("listeners: [{}]", all.join(", ")),
            1,
        );
        yaml
    };
    let daemon = Daemon::start(&config(&[first]), None);
    assert!(refused(second).await);

    // Added: bound by the reload, and answering.
    let out = daemon.reload_with(&config(&[first, second]));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        !stdout(&out).contains("restart"),
        "a listener change applies at once: {}",
        stdout(&out)
    );
    assert_eq!(http::get(second, "/echo/", &[]).await.status, 200);
    let listed: Vec<String> = daemon.status()["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap().to_string())
        .collect();
    assert_eq!(listed, [first.to_string(), second.to_string()]);

    // A request in flight on `first` while a reload removes it.
    let in_flight = tokio::spawn(http::send(
        first,
        None,
        "GET /held/hold HTTP/1.1\r\nHost: gateway.test\r\nConnection: close\r\n\r\n",
    ));
    tokio::time::timeout(Duration::from_secs(30), held.arrivals.recv())
        .await
        .expect("the held request reached the upstream");
    let out = daemon.reload_with(&config(&[second]));
    assert!(out.status.success(), "{}", stderr(&out));
    // New connections are refused at once; the unchanged listener serves on.
    eventually("the removed listener refuses connections", || {
        refused(first)
    })
    .await;
    assert_eq!(http::get(second, "/echo/", &[]).await.status, 200);
    // ...and the request in flight on the removed one completes.
    held.release();
    let response = in_flight
        .await
        .unwrap()
        .expect("the in-flight request completes");
    assert_eq!(response.status, 200);
    assert!(
        daemon.log().contains("listener removed"),
        "{}",
        daemon.log()
    );

    // A listener the reload cannot bind fails the whole reload: nothing
    // applied.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap();
    let out = daemon.reload_with(&config(&[second, taken_addr]));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(&format!("listeners[1]: cannot listen on {taken_addr}")),
        "{}",
        stderr(&out)
    );
    assert_eq!(daemon.status()["listeners"].as_array().unwrap().len(), 1);
    daemon.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_timeout_bounds_how_long_a_removed_listener_waits() {
    let mut held = ScriptedUpstream::start("held", 200, Duration::ZERO)
        .await
        .unwrap();
    let (first, second) = (free_port(), free_port());
    let config = |listeners: &str, drain: &str| {
        upstreams_config(
            first,
            &[("held", format!("{{targets: ['{}']}}", held.addr))],
        )
        .replacen(
            &format!("listeners: [{{address: '{first}'}}]"),
            listeners,
            1,
        ) + &format!("shutdown: {{drain_timeout: {drain}}}\n")
    };
    let both = format!("listeners: [{{address: '{first}'}}, {{address: '{second}'}}]");
    let daemon = Daemon::start(&config(&both, "1h"), None);

    let in_flight = tokio::spawn(http::send(
        first,
        None,
        "GET /held/hold HTTP/1.1\r\nHost: gateway.test\r\nConnection: close\r\n\r\n",
    ));
    tokio::time::timeout(Duration::from_secs(30), held.arrivals.recv())
        .await
        .expect("the held request reached the upstream");
    // The reload that removes the listener also sets a short drain: the
    // held request is cut when it runs out, long before the upstream
    // answers (never, until released) or its 30 s timeout.
    let out = daemon.reload_with(&config(
        &format!("listeners: [{{address: '{second}'}}]"),
        "300ms",
    ));
    assert!(out.status.success(), "{}", stderr(&out));
    let cut = tokio::time::timeout(Duration::from_secs(20), in_flight)
        .await
        .expect("the drain deadline cut the connection")
        .unwrap();
    assert!(cut.is_err(), "cut without a response: {cut:?}");
    assert!(
        daemon.log().contains("drain deadline passed"),
        "{}",
        daemon.log()
    );
    held.release();

    // Out of range: refused with the rule, nothing applied.
    let out = daemon.reload_with(&config(
        &format!("listeners: [{{address: '{second}'}}]"),
        "2h",
    ));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("shutdown.drain_timeout: 2h is out of range: 0s (cut at once) to 1h"),
        "{}",
        stderr(&out)
    );
    daemon.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binary_upgrade_takes_the_listeners_over_without_refusing_a_connection() {
    use std::sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    };

    let upstream = EchoUpstream::start("127.0.0.1:0".parse().unwrap(), "echo")
        .await
        .unwrap();
    let listen = free_port();
    let mut daemon = Daemon::start(
        &upstreams_config(
            listen,
            &[("echo", format!("{{targets: ['{}']}}", upstream.addr))],
        ),
        None,
    );
    let old_pid = daemon.pid();

    // Two clients, each a new connection per request, until told to stop
    // (bounded: at most 20,000 requests each).
    let stop = Arc::new(AtomicBool::new(false));
    let (served, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let clients: Vec<_> = (0..2)
        .map(|_| {
            let (stop, served, failed) = (stop.clone(), served.clone(), failed.clone());
            tokio::spawn(async move {
                let mut errors = Vec::new();
                for _ in 0..20_000 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let request =
                        "GET /echo/ HTTP/1.1\r\nHost: gateway.test\r\nConnection: close\r\n\r\n";
                    match http::send(listen, None, request).await {
                        Ok(response) if response.status == 200 => {
                            served.fetch_add(1, Ordering::Relaxed);
                        }
                        other => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            errors.push(format!("{other:?}"));
                        }
                    }
                }
                errors
            })
        })
        .collect();
    eventually("the load is running", || {
        let served = served.clone();
        async move { served.load(Ordering::Relaxed) >= 20 }
    })
    .await;

    let daemon = tokio::task::spawn_blocking(move || {
        daemon.upgrade(None);
        daemon
    })
    .await
    .unwrap();
    assert_ne!(daemon.pid(), old_pid);
    let at_upgrade = served.load(Ordering::Relaxed);
    eventually("the new process serves", || {
        let served = served.clone();
        async move { served.load(Ordering::Relaxed) >= at_upgrade + 50 }
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let mut errors = Vec::new();
    for client in clients {
        errors.extend(client.await.unwrap());
    }
    assert!(
        errors.is_empty(),
        "{} failed: {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );
    assert_eq!(failed.load(Ordering::Relaxed), 0);

    // The new process has the admin socket, and the listeners.
    assert!(
        daemon.log().contains("took the listening sockets over"),
        "{}",
        daemon.log()
    );
    let status = daemon.status();
    assert_eq!(status["listeners"][0], listen.to_string());
    assert_eq!(http::get(listen, "/echo/", &[]).await.status, 200);
    daemon.stop();
}
