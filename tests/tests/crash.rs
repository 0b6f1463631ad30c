//! `kill -9` of the daemon under traffic, then a restart, in network
//! namespaces the test creates (and removes, pass or fail): XDP keeps
//! enforcing the blocklist while no daemon runs (the program and maps are
//! pinned), the runtime blocklist is intact after the restart, the
//! listeners come back, and the gap in L7 service is measured and printed
//! (not asserted: the machine may be busy).

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use xgate_tests::{
    netns::Lab,
    process::{stderr, stdout, Daemon},
    require_root,
    traffic::{run_flows, Flow},
};

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// One `GET /` from `from` to `to` with blocking sockets (the caller's
/// thread is in the client namespace); whether a 200 came back.
fn http_ok(from: SocketAddr, to: SocketAddr) -> bool {
    let attempt = || -> std::io::Result<bool> {
        let socket = connect_from(from, to)?;
        let mut stream = socket;
        stream.set_read_timeout(Some(Duration::from_secs(2)))?;
        stream.write_all(b"GET /x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer)?;
        Ok(answer.starts_with(b"HTTP/1.1 200 "))
    };
    attempt().unwrap_or(false)
}

/// A TCP connection from a chosen source address (std has no bind before
/// connect; tokio's TcpSocket does, driven here on a small runtime).
fn connect_from(from: SocketAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(from)?;
        let stream = tokio::time::timeout(Duration::from_secs(2), socket.connect(to))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect"))??;
        let stream = stream.into_std()?;
        stream.set_nonblocking(false)?;
        Ok(stream)
    })
}

#[test]
fn kill_9_under_traffic_keeps_xdp_enforcing_the_blocklist_and_the_listeners_come_back() {
    if !require_root("crash::kill_9_under_traffic") {
        return;
    }
    // The gateway's end xg0 is 198.18.0.1, the client's xc0 .2 and .3.
    let Lab {
        gw, client, pin, ..
    } = Lab::with_client_addrs("k9", &["198.18.0.2/24", "198.18.0.3/24"]);

    // The upstream lives in the gateway's namespace, on its loopback.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let listener = gw.run(|| std::net::TcpListener::bind("127.0.0.1:0").unwrap());
    let upstream = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    runtime.spawn(async move {
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        xgate_tests::upstream::serve(listener, "u".into()).await;
    });

    let listen = addr("198.18.0.1:18080");
    let config = format!(
        "listeners: [{{address: '{listen}'}}]\n\
         xdp:\n  interfaces: [xg0]\n  pin_path: {}\n\
         upstreams: {{u: {{targets: ['{upstream}']}}}}\n\
         routes: [{{match: {{path_prefix: /}}, upstream: u}}]\n",
        pin.0.display()
    );
    let daemon = Daemon::start(&config, Some(&gw));
    let out = daemon.cli(&["blocklist", "add", "198.18.0.2", "--reason", "attacker"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (legit, attacker) = (addr("198.18.0.3:0"), addr("198.18.0.2:0"));
    assert!(
        client.run(move || http_ok(legit, listen)),
        "{}",
        daemon.log()
    );
    assert!(!client.run(move || http_ok(attacker, listen)), "blocked");

    // Steady HTTP from the legitimate address: one request every 20 ms,
    // for at most a minute.
    let stop = Arc::new(AtomicBool::new(false));
    let http = {
        let stop = stop.clone();
        client.spawn(move || {
            let mut outcomes = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(60);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                outcomes.push((Instant::now(), http_ok(legit, listen)));
                std::thread::sleep(Duration::from_millis(20));
            }
            outcomes
        })
    };
    // And UDP from the blocked address, 3 000/s for 4 s, across the crash.
    let flood = [Flow {
        from: addr("198.18.0.2:40000"),
        to: addr("198.18.0.1:9998"),
        count: 12_000,
        pps: 3_000,
        cpu: None,
    }];
    let mut daemon = Some(daemon);
    let mut killed_at = None;
    let results = run_flows(&client, &gw, &flood, || {
        std::thread::sleep(Duration::from_millis(700));
        let dir = daemon.take().unwrap().kill9();
        killed_at = Some(Instant::now());
        std::thread::sleep(Duration::from_millis(500));
        daemon = Some(Daemon::start_in_dir(dir, &config, Some(&gw)));
    });
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let outcomes = http.join().unwrap();
    let daemon = daemon.unwrap();
    let killed_at = killed_at.unwrap();

    assert_eq!(
        results[0].received, 0,
        "blocked traffic got through while the daemon was down or restarting"
    );
    let listed = stdout(&daemon.cli(&["blocklist", "ls"]));
    assert!(
        listed.contains("198.18.0.2/32") && listed.contains("attacker"),
        "{listed}"
    );
    assert!(
        daemon.status()["xdp"]["attached"][0]["adopted"] == true,
        "the restarted daemon took the pinned program over: {}",
        daemon.log()
    );
    let last_before = outcomes
        .iter()
        .filter(|(t, ok)| *ok && *t < killed_at)
        .map(|(t, _)| *t)
        .max()
        .expect("served before the crash");
    let first_after = outcomes
        .iter()
        .filter(|(t, ok)| *ok && *t > killed_at)
        .map(|(t, _)| *t)
        .min()
        .expect("the listener is back after the restart");
    let failed = outcomes.iter().filter(|(_, ok)| !ok).count();
    println!(
        "kill -9 and restart: L7 gap {:?} (last answer before the kill to the first after; \
         of which 500 ms is the test's pause before restarting), {failed} of {} requests failed, \
         {} blocked datagrams sent and 0 delivered",
        first_after - last_before,
        outcomes.len(),
        results[0].sent
    );
    assert!(client.run(move || http_ok(legit, listen)));
    assert!(!client.run(move || http_ok(attacker, listen)));
    drop(runtime);
}
