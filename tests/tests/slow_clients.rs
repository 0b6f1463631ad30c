//! Slow clients at scale: 1 000 slow-loris connections (a request head
//! trickled a byte at a time) and 1 000 slow readers (a large response
//! never read) while a normal client makes requests. Every normal request
//! is answered; the slow-loris connections get 408 or a close once
//! `header_read_timeout` passes, the slow readers are closed once
//! `send_timeout` passes, and nothing hangs. The normal client's
//! throughput with and without the attackers is printed, not asserted
//! (the machine may be busy), and so is the daemon's RSS.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use xgate_tests::{
    ports::{any_port, free_port},
    process::Daemon,
    upstream::EchoUpstream,
};

const SLOW: usize = 1_000;

/// Sequential GETs, one connection each, for `duration`; (answered 200,
/// failed). Each may take up to 30 s: the hang detector, not a threshold.
async fn normal_client(gw: SocketAddr, duration: Duration) -> (usize, usize) {
    let request = b"GET /x HTTP/1.1\r\nHost: gateway.test\r\nConnection: close\r\n\r\n";
    let (mut ok, mut failed) = (0, 0);
    let end = Instant::now() + duration;
    while Instant::now() < end {
        let exchange = async {
            let mut stream = TcpStream::connect(gw).await?;
            stream.write_all(request).await?;
            let mut answer = Vec::new();
            stream.read_to_end(&mut answer).await?;
            Ok::<_, std::io::Error>(answer)
        };
        match tokio::time::timeout(Duration::from_secs(30), exchange).await {
            Ok(Ok(answer)) if answer.starts_with(b"HTTP/1.1 200 ") => ok += 1,
            _ => failed += 1,
        }
    }
    (ok, failed)
}

/// CPU time of process `pid`, in clock ticks (1/100 s).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// Waits until `pid` uses under 20 ticks in a second (at most 20 s);
/// how long that took, `None` if it never did.
async fn settle(pid: u32) -> Option<Duration> {
    let start = Instant::now();
    for _ in 0..20 {
        let before = cpu_ticks(pid);
        tokio::time::sleep(Duration::from_secs(1)).await;
        if cpu_ticks(pid) - before < 20 {
            return Some(start.elapsed());
        }
    }
    None
}

fn rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmRSS")
        / 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_loris_and_slow_readers_are_cut_off_and_a_normal_client_is_served() {
    let echo = EchoUpstream::start(any_port(), "echo").await.unwrap();
    let listen = free_port();
    let daemon = Daemon::start(
        &format!(
            "listeners: [{{address: '{listen}', header_read_timeout: 30s}}]\n\
             upstreams: {{u: {{targets: ['{}']}}}}\n\
             routes: [{{match: {{path_prefix: /}}, upstream: u}}]\n",
            echo.addr
        ),
        None,
    );
    let rss_before = rss_mib(daemon.pid());
    let baseline = normal_client(listen, Duration::from_secs(3)).await;

    // Slow-loris: a byte of a head every 100 ms, until the gateway answers
    // or closes; how long that took.
    let head = b"GET /x HTTP/1.1\r\nHost: gateway.test\r\nX-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n";
    let loris: Vec<_> = (0..SLOW)
        .map(|_| {
            tokio::spawn(async move {
                let start = Instant::now();
                let Ok(mut stream) = TcpStream::connect(listen).await else {
                    return Err("connect failed".to_string());
                };
                for byte in head.iter().cycle().take(1200) {
                    if stream.write_all(&[*byte]).await.is_err() {
                        break;
                    }
                    let mut buf = [0u8; 64];
                    // Anything from the gateway (a 408) or a close ends it.
                    match tokio::time::timeout(Duration::from_millis(100), stream.read(&mut buf))
                        .await
                    {
                        Ok(Ok(0)) | Ok(Err(_)) => return Ok((start.elapsed(), None)),
                        Ok(Ok(_)) => {
                            let status = String::from_utf8_lossy(&buf[..12]).into_owned();
                            return Ok((start.elapsed(), Some(status)));
                        }
                        Err(_) => {}
                    }
                }
                Err(format!("still open after {:?}", start.elapsed()))
            })
        })
        .collect();
    // Slow readers: ask for 64 MiB with a small receive buffer and read
    // none of it while the normal client runs. (That one such reader is
    // cut off after `send_timeout` is listeners.rs's test; with a thousand
    // sharing a busy machine, when each one's writes stall is not for a
    // test to time.)
    const LARGE: usize = 64 << 20;
    let (release, released) = tokio::sync::watch::channel(false);
    let readers: Vec<_> = (0..SLOW)
        .map(|_| {
            let mut released = released.clone();
            tokio::spawn(async move {
                let socket = tokio::net::TcpSocket::new_v4().map_err(|e| e.to_string())?;
                socket
                    .set_recv_buffer_size(64 * 1024)
                    .map_err(|e| e.to_string())?;
                let mut stream = socket.connect(listen).await.map_err(|e| e.to_string())?;
                stream
                    .write_all(
                        format!("GET /stream/{LARGE} HTTP/1.1\r\nHost: gateway.test\r\n\r\n")
                            .as_bytes(),
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                let _ =
                    tokio::time::timeout(Duration::from_secs(60), released.wait_for(|r| *r)).await;
                Ok::<_, String>(())
            })
        })
        .collect();
    // Let the readers' responses fill every buffer on the way first (a
    // thousand 64 MiB streams at once: gigabytes through the kernel's
    // socket buffers): until the daemon uses less than a fifth of a core
    // over a second, for at most 20 s.
    let settled = settle(daemon.pid()).await;
    let rss_under_attack = rss_mib(daemon.pid());
    let attacked = normal_client(listen, Duration::from_secs(3)).await;

    let mut loris_closed = 0;
    let mut loris_408 = 0;
    let mut loris_longest = Duration::ZERO;
    for task in loris {
        let (took, status) = task.await.unwrap().expect("a slow-loris connection hung");
        loris_longest = loris_longest.max(took);
        match status {
            Some(s) if s.contains("408") => loris_408 += 1,
            Some(s) => panic!("slow-loris answered {s}"),
            None => loris_closed += 1,
        }
    }
    let rss_readers = rss_mib(daemon.pid());
    release.send(true).unwrap();
    for task in readers {
        task.await
            .unwrap()
            .expect("a slow reader connected and asked");
    }
    println!(
        "normal client: {} requests in 3 s alone, {} in 3 s beside {SLOW} slow-loris and {SLOW} \
         slow readers ({:.0}%); slow-loris: {loris_408} got 408, {loris_closed} closed, the last \
         after {loris_longest:?}; RSS {rss_before} MiB alone, {rss_under_attack} MiB under \
         attack, {rss_readers} MiB with the readers still connected, {} MiB after; the \
         readers' buffers filled in {settled:?} (None: still busy after 20 s)",
        baseline.0,
        attacked.0,
        100.0 * attacked.0 as f64 / baseline.0.max(1) as f64,
        rss_mib(daemon.pid())
    );
    assert_eq!(baseline.1, 0, "failures without the attackers");
    assert_eq!(attacked.1, 0, "normal requests failed beside the attackers");
    assert!(attacked.0 > 0);
}
