//! HTTP/2 abuse over raw frames (h2c, prior knowledge): rapid reset
//! (CVE-2023-44487), a CONTINUATION flood (CVE-2024-27316 style), PING and
//! SETTINGS floods from a client that never reads. Each abusive connection
//! is closed or limited, the daemon keeps serving other clients, and its
//! memory stays bounded (RSS measured before and after; printed, and
//! bounded by a generous ceiling that only a leak or an unbounded queue
//! would pass).

use std::{net::SocketAddr, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use xgate_tests::{
    http::{get, h2},
    ports::any_port,
    process::Daemon,
    upstream::EchoUpstream,
};

const CONTINUATION: u8 = 0x9;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;

/// The daemon's resident memory, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// What became of an abusive connection: whether the server sent GOAWAY
/// and whether it closed the connection, within `wait`.
#[derive(Debug)]
struct Fate {
    goaway: Option<u32>,
    closed: bool,
    /// Bytes the client could not write because the server stopped reading
    /// or closed.
    write_failed: bool,
}

/// Writes `frames` (after the preface and an empty SETTINGS) without
/// reading, then reads for up to `wait`, looking for GOAWAY and a close.
async fn abuse(gw: SocketAddr, frames: impl Iterator<Item = Vec<u8>>, wait: Duration) -> Fate {
    let stream = TcpStream::connect(gw).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let mut start = h2::PREFACE.to_vec();
    start.extend(h2::frame(h2::SETTINGS, 0, 0, &[]));
    writer.write_all(&start).await.unwrap();
    let mut write_failed = false;
    let mut batch = Vec::new();
    for frame in frames {
        batch.extend(frame);
        if batch.len() >= 64 * 1024 {
            let write = tokio::time::timeout(Duration::from_secs(5), writer.write_all(&batch));
            if !matches!(write.await, Ok(Ok(()))) {
                write_failed = true;
                break;
            }
            batch.clear();
        }
    }
    if !write_failed && !batch.is_empty() {
        let write = tokio::time::timeout(Duration::from_secs(5), writer.write_all(&batch));
        write_failed = !matches!(write.await, Ok(Ok(())));
    }
    let mut received = Vec::new();
    let mut closed = false;
    let _ = tokio::time::timeout(wait, async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => {
                    closed = true;
                    return;
                }
                Ok(n) => received.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    Fate {
        goaway: goaway_code(&received),
        closed,
        write_failed,
    }
}

/// The error code of the first GOAWAY among `frames` (server to client).
fn goaway_code(mut frames: &[u8]) -> Option<u32> {
    while frames.len() >= 9 {
        let len = u32::from_be_bytes([0, frames[0], frames[1], frames[2]]) as usize;
        if frames.len() < 9 + len {
            return None;
        }
        if frames[3] == GOAWAY && len >= 8 {
            let p = &frames[9..];
            return Some(u32::from_be_bytes([p[4], p[5], p[6], p[7]]));
        }
        frames = &frames[9 + len..];
    }
    None
}

struct Setup {
    _echo: EchoUpstream,
    daemon: Daemon,
    gw: SocketAddr,
}

async fn setup() -> Setup {
    let echo = EchoUpstream::start(any_port(), "echo").await.unwrap();
    let (daemon, gw) = Daemon::with_upstreams(&[("u", format!("{{targets: ['{}']}}", echo.addr))]);
    Setup {
        _echo: echo,
        daemon,
        gw,
    }
}

/// After an attack: a normal client is served, RSS grew by less than
/// `ceiling_mib`.
async fn still_healthy(s: &Setup, what: &str, rss_before: u64, fate: &Fate, ceiling_mib: u64) {
    let r = get(s.gw, "/u/after", &[]).await;
    assert_eq!(
        r.status, 200,
        "{what}: a normal client is not served: {r:?}"
    );
    let rss_after = rss_kib(s.daemon.pid());
    println!(
        "{what}: {fate:?}; RSS {} MiB -> {} MiB",
        rss_before / 1024,
        rss_after / 1024
    );
    assert!(
        rss_after < rss_before + ceiling_mib * 1024,
        "{what}: RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
}

#[tokio::test]
async fn rapid_reset_is_cut_off_and_the_server_stays_healthy() {
    let s = setup().await;
    let before = rss_kib(s.daemon.pid());
    let block = h2::request_block("GET", "/u/x", "gateway.test");
    let cancel = h2::CANCEL.to_be_bytes();
    // 20 000 streams opened and reset at once.
    let frames = (0..20_000u32).flat_map(|i| {
        let id = 2 * i + 1;
        [
            h2::frame(h2::HEADERS, h2::END_HEADERS | h2::END_STREAM, id, &block),
            h2::frame(h2::RST_STREAM, 0, id, &cancel),
        ]
    });
    let fate = abuse(s.gw, frames, Duration::from_secs(10)).await;
    assert!(
        fate.goaway.is_some() || fate.closed,
        "a rapid-reset connection went on: {fate:?}"
    );
    still_healthy(&s, "rapid reset", before, &fate, 200).await;
}

#[tokio::test]
async fn a_continuation_flood_is_refused_before_it_costs_memory() {
    let s = setup().await;
    let before = rss_kib(s.daemon.pid());
    // HEADERS without END_HEADERS, then CONTINUATION frames of one 1000-byte
    // literal field each, never ending: 10 000 frames, 10 MB.
    let mut field = vec![0x00, 0x03, b'x', b'-', b'a', 0x7f, 0xe9, 0x06];
    field.extend(std::iter::repeat_n(b'v', 1000));
    let block = h2::request_block("GET", "/u/x", "gateway.test");
    let first = std::iter::once(h2::frame(h2::HEADERS, h2::END_STREAM, 1, &block));
    let rest = (0..10_000).map(|_| h2::frame(CONTINUATION, 0, 1, &field));
    let fate = abuse(s.gw, first.chain(rest), Duration::from_secs(10)).await;
    assert!(
        fate.goaway.is_some() || fate.closed || fate.write_failed,
        "the server kept reading an endless header block: {fate:?}"
    );
    still_healthy(&s, "CONTINUATION flood", before, &fate, 100).await;
}

#[tokio::test]
async fn ping_and_settings_floods_from_a_client_that_never_reads_stay_bounded() {
    let s = setup().await;
    let before = rss_kib(s.daemon.pid());
    // 200 000 PINGs (each owes a PONG) without reading one answer.
    let pings = (0..200_000u64).map(|i| h2::frame(PING, 0, 0, &i.to_be_bytes()));
    let fate = abuse(s.gw, pings, Duration::from_secs(3)).await;
    still_healthy(&s, "PING flood", before, &fate, 100).await;

    let before = rss_kib(s.daemon.pid());
    // 200 000 SETTINGS frames (each owes an ACK), never read.
    let settings = (0..200_000).map(|_| h2::frame(h2::SETTINGS, 0, 0, &[0, 4, 0, 0, 0xff, 0xff]));
    let fate = abuse(s.gw, settings, Duration::from_secs(3)).await;
    still_healthy(&s, "SETTINGS flood", before, &fate, 100).await;
}
