//! SYN cookies from XDP end to end over a veth pair in namespaces the tests
//! create (and remove, pass or fail): a legitimate client is served while a
//! spoofed-source SYN flood is answered with cookies, forged ACKs are
//! dropped, auto mode switches on and off with the SYN rate, and mode off
//! leaves SYNs to the kernel.

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use xgate_tests::{
    frames,
    netns::{self, NetNs},
    process::Daemon,
    require_root,
    traffic::send_raw,
};

const GW: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const GW6: &str = "2001:db8:18::1";
const PORT: u16 = 18080;
/// The IPv6 listener's port.
const PORT6: u16 = 18443;
/// Legitimate connections per test.
const CLIENTS: usize = 10;
/// Upper bound of one flood, whatever else happens.
const FLOOD_MAX: usize = 200_000;
const FLOOD_MAX_TIME: Duration = Duration::from_secs(30);

macro_rules! root_only {
    () => {
        if !require_root(module_path!()) {
            return;
        }
    };
}

/// The shared lab ([`netns::Lab`]) set up for SYN cookies.
struct Lab {
    lab: netns::Lab,
    gw_mac: [u8; 6],
}

impl std::ops::Deref for Lab {
    type Target = netns::Lab;
    fn deref(&self) -> &netns::Lab {
        &self.lab
    }
}

impl Lab {
    fn new(tag: &str) -> Self {
        let mut lab = netns::Lab::new(tag);
        // The spoofed sources are routable, as on the Internet: the kernel
        // drops a SYN it has no route back for before it marks its
        // listener as answering with cookies.
        lab.gw.ip(&["route", "add", "default", "via", "198.18.0.2"]);
        // The client's frames carry full checksums, as a NIC's do (the
        // program verifies them; see `a_local_client_leaving_checksums_to_offload_is_served_by_the_kernel`).
        lab.client_checksum_offload(false);
        lab.pass_xdp_on_client();
        let gw_mac = lab.gw.mac(netns::Lab::GW_IF);
        Self { lab, gw_mac }
    }

    fn start(&self, syn_cookies: &str) -> Daemon {
        let config = self.config(
            &format!("[{{address: '0.0.0.0:{PORT}'}}, {{address: '[::]:{PORT6}'}}]"),
            &format!("  syn_cookies: {syn_cookies}\n"),
            "routes: [{match: {path_prefix: /}, respond: {status: 200, body: served}}]\n",
        );
        Daemon::start(&config, Some(&self.gw))
    }

    /// One request on a new connection from the client's own address.
    fn get_from(&self, to: SocketAddr) -> String {
        self.client.run(move || exchange(to, true).1)
    }

    /// A new connection from the client with one request answered on it,
    /// kept open (to look at its TCP state).
    fn open_served(&self, to: SocketAddr) -> TcpStream {
        let (stream, response) = self.client.run(move || exchange(to, false));
        assert!(response.starts_with("HTTP/1.1 200"), "{response:?}");
        stream
    }

    /// `net.ipv4.<name>` in the gateway's namespace.
    fn gw_sysctl(&self, name: &'static str) -> String {
        self.gw.run(move || {
            let path = format!("/proc/sys/net/ipv4/{name}");
            std::fs::read_to_string(path).unwrap().trim().to_string()
        })
    }

    fn assert_served(&self, times: usize) {
        self.assert_served_at(SocketAddr::from((GW, PORT)), times);
    }

    fn assert_served_at(&self, to: SocketAddr, times: usize) {
        for i in 0..times {
            let response = self.get_from(to);
            assert!(
                response.starts_with("HTTP/1.1 200") && response.ends_with("served"),
                "request {i}: {response:?}"
            );
        }
    }

    /// Spoofed SYNs (sources 203.0.113.0/24, random ports) at the listener
    /// until `stop`, or FLOOD_MAX frames, or FLOOD_MAX_TIME; returns the
    /// number sent.
    fn flood(&self, stop: Arc<AtomicBool>, sent: Arc<AtomicUsize>) -> std::thread::JoinHandle<()> {
        let client = NetNs {
            name: self.client.name.clone(),
        };
        let mac = self.gw_mac;
        std::thread::spawn(move || {
            let started = Instant::now();
            let mut round = 0u32;
            while !stop.load(Ordering::Relaxed)
                && sent.load(Ordering::Relaxed) < FLOOD_MAX
                && started.elapsed() < FLOOD_MAX_TIME
            {
                round += 1;
                let src = Ipv4Addr::new(203, 0, 113, (round % 250) as u8 + 1);
                let frame = frames::tcp_segment(
                    mac,
                    (src, 1024 + (round % 60_000) as u16),
                    (GW, PORT),
                    frames::TCP_SYN,
                    round.wrapping_mul(2_654_435_761),
                    0,
                );
                sent.fetch_add(
                    send_raw(&client, netns::Lab::CLIENT_IF, &frame, 100),
                    Ordering::Relaxed,
                );
            }
            // The namespace belongs to the lab: never delete it from here.
            std::mem::forget(client);
        })
    }

    fn status(daemon: &Daemon) -> serde_json::Value {
        daemon.status()["xdp"]["syn_cookies"].clone()
    }
}

/// Connects to `to` (from the calling thread's namespace) and sends one
/// request: with `close`, reads the whole response; else its first read.
fn exchange(to: SocketAddr, close: bool) -> (TcpStream, String) {
    let mut stream = TcpStream::connect_timeout(&to, Duration::from_secs(10)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let connection = if close { "Connection: close\r\n" } else { "" };
    stream
        .write_all(format!("GET / HTTP/1.1\r\nHost: gw\r\n{connection}\r\n").as_bytes())
        .unwrap();
    let mut response = String::new();
    if close {
        let _ = stream.read_to_string(&mut response);
    } else {
        let mut buf = [0u8; 512];
        let n = stream.read(&mut buf).unwrap();
        response = String::from_utf8_lossy(&buf[..n]).into_owned();
    }
    (stream, response)
}

fn counters(daemon: &Daemon) -> serde_json::Value {
    daemon.status()["xdp"]["counters"].clone()
}

fn delta(before: &serde_json::Value, after: &serde_json::Value, name: &str) -> u64 {
    after[name].as_u64().unwrap() - before[name].as_u64().unwrap()
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn clients_are_served_through_cookies_while_a_spoofed_syn_flood_runs() {
    root_only!();
    let lab = Lab::new("sc");
    let daemon = lab.start("{mode: on}");
    assert_eq!(
        lab.gw_sysctl("tcp_syncookies"),
        "2",
        "the daemon sets the kernel's half"
    );
    let status = Lab::status(&daemon);
    assert_eq!(status["mode"], "on", "{status}");
    assert_eq!(status["active"], true, "{status}");
    assert_eq!(
        status["ports"],
        serde_json::json!([PORT, PORT6]),
        "{status}"
    );

    let before = counters(&daemon);
    let (stop, sent) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicUsize::new(0)),
    );
    let flood = lab.flood(stop.clone(), sent.clone());
    wait_for("the flood to start", || {
        sent.load(Ordering::Relaxed) >= 2_000
    });
    lab.assert_served(CLIENTS);
    stop.store(true, Ordering::Relaxed);
    flood.join().unwrap();
    let flood_syns = sent.load(Ordering::Relaxed) as u64;
    let after = counters(&daemon);

    let cookies = delta(&before, &after, "syn_cookie_sent");
    let handed = delta(&before, &after, "syn_passed");
    eprintln!(
        "{flood_syns} spoofed SYNs: {cookies} cookies sent, {handed} SYNs handed to the kernel"
    );
    // Every SYN (flood and clients) was answered from XDP, except the one
    // per 30 s (per CPU racing at most) that keeps the listener accepting
    // cookies.
    assert_eq!(cookies + handed, flood_syns + CLIENTS as u64, "{after}");
    assert!(handed <= 4, "{handed} SYNs reached the kernel");
    // Each client's handshake ACK carried a valid cookie (or, for the one
    // SYN the kernel answered itself, a kernel cookie: the same check).
    assert!(
        delta(&before, &after, "syn_cookie_valid") >= CLIENTS as u64,
        "{after}"
    );
    assert_eq!(delta(&before, &after, "syn_cookie_invalid"), 0, "{after}");

    // Forged handshake ACKs from spoofed sources: dropped in XDP.
    let before = counters(&daemon);
    let forged = frames::tcp_segment(
        lab.gw_mac,
        (Ipv4Addr::new(203, 0, 113, 77), 5555),
        (GW, PORT),
        frames::TCP_ACK,
        0x1234_5678,
        0x9abc_def0,
    );
    assert_eq!(
        send_raw(&lab.client, netns::Lab::CLIENT_IF, &forged, 200),
        200
    );
    wait_for("the forged ACKs to be counted", || {
        delta(&before, &counters(&daemon), "syn_cookie_invalid") >= 200
    });
    let after = counters(&daemon);
    assert_eq!(delta(&before, &after, "syn_cookie_invalid"), 200, "{after}");
    assert_eq!(delta(&before, &after, "syn_cookie_valid"), 0, "{after}");

    // An established connection's ACKs are not cookie-checked.
    let before = counters(&daemon);
    let response = lab.client.run(|| {
        let mut stream = TcpStream::connect(SocketAddr::from((GW, PORT))).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut response = Vec::new();
        for i in 1..=5 {
            stream
                .write_all(b"GET / HTTP/1.1\r\nHost: gw\r\n\r\n")
                .unwrap();
            let mut buf = [0u8; 4096];
            while String::from_utf8_lossy(&response).matches("served").count() < i {
                let n = stream.read(&mut buf).unwrap();
                assert!(n > 0, "closed early");
                response.extend_from_slice(&buf[..n]);
            }
        }
        String::from_utf8_lossy(&response).into_owned()
    });
    assert_eq!(response.matches("HTTP/1.1 200").count(), 5, "{response}");
    let after = counters(&daemon);
    assert_eq!(delta(&before, &after, "syn_cookie_invalid"), 0, "{after}");
    assert_eq!(
        delta(&before, &after, "syn_cookie_valid"),
        1,
        "one handshake: {after}"
    );

    // IPv6: the same, through bpf_tcp_raw_gen/check_syncookie_ipv6.
    let before = counters(&daemon);
    let v6: SocketAddr = format!("[{GW6}]:{PORT6}").parse().unwrap();
    lab.assert_served_at(v6, CLIENTS);
    let after = counters(&daemon);
    let (cookies, handed) = (
        delta(&before, &after, "syn_cookie_sent"),
        delta(&before, &after, "syn_passed"),
    );
    assert_eq!(cookies + handed, CLIENTS as u64, "{after}");
    assert!(
        handed <= 1,
        "the first IPv6 SYN to the port at most: {after}"
    );
    assert_eq!(
        delta(&before, &after, "syn_cookie_valid"),
        CLIENTS as u64,
        "{after}"
    );

    let metrics = daemon.admin_get("/metrics");
    assert!(
        metrics.contains("verdict=\"tx\",reason=\"syn_cookie_sent\"")
            && metrics.contains("verdict=\"drop\",reason=\"syn_cookie_invalid\""),
        "{metrics}"
    );
}

/// A SYN whose TCP checksum is wrong is dropped before it costs anything:
/// no SYN-ACK toward its (spoofed) source, no hand-over to the kernel (the
/// refresh slot stays free for a good one). IPv4 and IPv6. A local client
/// whose stack leaves checksums to offload (veth's default) is served by
/// the kernel's own cookies instead.
#[test]
fn syns_with_bad_checksums_are_dropped_and_counted() {
    root_only!();
    const N: usize = 100;
    let lab = Lab::new("sk");
    let daemon = lab.start("{mode: on}");
    let gw6: Ipv6Addr = GW6.parse().unwrap();
    let spoofed6: Ipv6Addr = "2001:db8:77::9".parse().unwrap();
    let syns = [
        frames::tcp_segment(
            lab.gw_mac,
            (Ipv4Addr::new(203, 0, 113, 9), 4000),
            (GW, PORT),
            frames::TCP_SYN,
            7,
            0,
        ),
        frames::tcp_segment(
            lab.gw_mac,
            (spoofed6, 4000),
            (gw6, PORT6),
            frames::TCP_SYN,
            7,
            0,
        ),
    ];
    for good in syns {
        let mut bad = good.clone();
        bad[frames::tcp_checksum_at(&good).start] ^= 0x5a;

        let before = counters(&daemon);
        assert_eq!(send_raw(&lab.client, netns::Lab::CLIENT_IF, &bad, N), N);
        wait_for("the bad SYNs to be counted", || {
            delta(&before, &counters(&daemon), "syn_bad_checksum") >= N as u64
        });
        let after = counters(&daemon);
        assert_eq!(
            delta(&before, &after, "syn_bad_checksum"),
            N as u64,
            "{after}"
        );
        for name in ["syn_cookie_sent", "syn_passed"] {
            assert_eq!(delta(&before, &after, name), 0, "{name}: {after}");
        }

        let before = counters(&daemon);
        assert_eq!(send_raw(&lab.client, netns::Lab::CLIENT_IF, &good, N), N);
        wait_for("the good SYNs to be counted", || {
            let now = counters(&daemon);
            delta(&before, &now, "syn_cookie_sent") + delta(&before, &now, "syn_passed") >= N as u64
        });
        let after = counters(&daemon);
        let (cookies, handed) = (
            delta(&before, &after, "syn_cookie_sent"),
            delta(&before, &after, "syn_passed"),
        );
        assert_eq!(cookies + handed, N as u64, "{after}");
        // The first good SYN to the port is the refresh one: the bad
        // ones before it did not take the slot.
        assert!((1..=2).contains(&handed), "{after}");
        assert_eq!(delta(&before, &after, "syn_bad_checksum"), 0, "{after}");
    }

    let metrics = daemon.admin_get("/metrics");
    assert!(
        metrics.contains("verdict=\"drop\",reason=\"syn_bad_checksum\"} 200"),
        "{metrics}"
    );

    // Checksum offload on: the client's SYNs carry only the pseudo header's
    // sum; the program hands them to the kernel, which knows they are
    // local and answers with its own cookie.
    lab.client_checksum_offload(true);
    let before = counters(&daemon);
    lab.assert_served(3);
    let after = counters(&daemon);
    assert_eq!(delta(&before, &after, "syn_passed"), 3, "{after}");
    assert_eq!(delta(&before, &after, "syn_bad_checksum"), 0, "{after}");
    assert_eq!(delta(&before, &after, "syn_cookie_sent"), 0, "{after}");
    assert!(delta(&before, &after, "syn_cookie_valid") >= 3, "{after}");
}

#[test]
fn auto_mode_switches_cookies_on_under_a_flood_and_off_after_it() {
    root_only!();
    let lab = Lab::new("sa");
    let daemon = lab.start(
        "{mode: auto, auto_above_syn_per_second: 300, auto_below_syn_per_second: 100, \
         auto_quiet_seconds: 2}",
    );
    let before = counters(&daemon);
    lab.assert_served(CLIENTS);
    let after = counters(&daemon);
    assert_eq!(Lab::status(&daemon)["active"], false);
    assert_eq!(delta(&before, &after, "syn_cookie_sent"), 0, "{after}");
    assert_eq!(
        delta(&before, &after, "syn_passed"),
        CLIENTS as u64,
        "{after}"
    );

    let (stop, sent) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicUsize::new(0)),
    );
    let flood = lab.flood(stop.clone(), sent.clone());
    wait_for("auto mode to switch cookies on", || {
        Lab::status(&daemon)["active"] == true
    });
    let before = counters(&daemon);
    lab.assert_served(CLIENTS);
    stop.store(true, Ordering::Relaxed);
    flood.join().unwrap();
    let after = counters(&daemon);
    assert!(delta(&before, &after, "syn_cookie_sent") > 0, "{after}");
    assert!(
        delta(&before, &after, "syn_cookie_valid") >= CLIENTS as u64,
        "{after}"
    );
    wait_for("auto mode to switch cookies off", || {
        Lab::status(&daemon)["active"] == false
    });
    assert!(daemon.log().contains("SYN flood"), "{}", daemon.log());
    let before = counters(&daemon);
    lab.assert_served(1);
    let after = counters(&daemon);
    assert_eq!(delta(&before, &after, "syn_cookie_sent"), 0, "{after}");
    assert_eq!(delta(&before, &after, "syn_passed"), 1, "{after}");
}

#[test]
fn mode_off_leaves_syns_to_the_kernel() {
    root_only!();
    let lab = Lab::new("so");
    let daemon = lab.start("{mode: off}");
    let before = counters(&daemon);
    let (stop, sent) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicUsize::new(0)),
    );
    let flood = lab.flood(stop.clone(), sent.clone());
    wait_for("the flood to start", || {
        sent.load(Ordering::Relaxed) >= 1_000
    });
    lab.assert_served(CLIENTS);
    stop.store(true, Ordering::Relaxed);
    flood.join().unwrap();
    let after = counters(&daemon);
    for name in [
        "syn_cookie_sent",
        "syn_cookie_valid",
        "syn_cookie_invalid",
        "syn_passed",
    ] {
        assert_eq!(delta(&before, &after, name), 0, "{name}: {after}");
    }
    assert!(
        delta(&before, &after, "passed") >= sent.load(Ordering::Relaxed) as u64,
        "{after}"
    );
    assert_eq!(Lab::status(&daemon)["mode"], "off");
}

/// `TCP_INFO` of a connected socket: its options (`TCPI_OPT_*`) and its
/// send and receive window scales.
fn tcp_info(stream: &TcpStream) -> (u8, u8, u8) {
    use std::os::fd::AsRawFd;
    // SAFETY: plain data, zero is valid; the kernel fills at most `len`.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: a valid socket and a buffer of `len` bytes.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            &mut info as *mut _ as *mut libc::c_void,
            &mut len,
        )
    };
    assert_eq!(rc, 0, "TCP_INFO: {}", std::io::Error::last_os_error());
    let scales = info.tcpi_snd_rcv_wscale;
    (info.tcpi_options, scales & 0xF, scales >> 4)
}

const TCPI_OPT_TIMESTAMPS: u8 = 1;
const TCPI_OPT_SACK: u8 = 2;
const TCPI_OPT_WSCALE: u8 = 4;

/// The gateway's side of its established connections to `port`: `ss`'s
/// `wscale:<snd>,<rcv>` and, with `-o`, `ts` and `sack` when on.
fn gateway_side(lab: &Lab, port: u16) -> String {
    let out = lab
        .gw
        .command("ss")
        .args([
            "-Htnio",
            "state",
            "established",
            "sport",
            "=",
            &format!(":{port}"),
        ])
        .output()
        .expect("run ss (Debian package iproute2)");
    assert!(out.status.success(), "ss: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// With `tcp_options`, a connection made through an XDP cookie keeps
/// window scaling, SACK and timestamps: the client sees them granted, the
/// gateway's kernel decoded the same ones from the echoed timestamp, and
/// the scale the SYN-ACK advertised is the one the kernel applies.
#[test]
fn with_tcp_options_cookie_connections_keep_window_scaling_sack_and_timestamps() {
    root_only!();
    let lab = Lab::new("st");
    let daemon = lab.start("{mode: on, tcp_options: true}");
    assert_eq!(
        lab.gw_sysctl("tcp_timestamps"),
        "2",
        "the daemon sets the kernel's half"
    );
    assert!(
        daemon
            .log()
            .contains("keep window scaling, SACK and timestamps"),
        "{}",
        daemon.log()
    );
    assert_eq!(Lab::status(&daemon)["tcp_options"], true);
    // What the kernel itself picks for this host's connections: a listener
    // of the test's own on a port the program does not protect.
    let plain = lab
        .gw
        .run(|| std::net::TcpListener::bind("0.0.0.0:18099").unwrap());
    let (_, plain_snd, _) = lab.client.run(|| {
        let stream = TcpStream::connect("198.18.0.1:18099").unwrap();
        tcp_info(&stream)
    });

    let v4 = SocketAddr::from((GW, PORT));
    let v6 = SocketAddr::new(GW6.parse().unwrap(), PORT6);
    // The first SYN to each port is handed to the kernel (the refresh that
    // keeps its listener accepting cookies): use it up.
    lab.assert_served_at(v4, 1);
    lab.assert_served_at(v6, 1);
    for (to, port) in [(v4, PORT), (v6, PORT6)] {
        let before = counters(&daemon);
        let stream = lab.open_served(to);
        let after = counters(&daemon);
        assert_eq!(delta(&before, &after, "syn_cookie_sent"), 1, "{after}");
        assert_eq!(delta(&before, &after, "syn_passed"), 0, "{after}");
        assert_eq!(delta(&before, &after, "syn_cookie_valid"), 1, "{after}");

        let (options, snd_wscale, rcv_wscale) = tcp_info(&stream);
        let all = TCPI_OPT_TIMESTAMPS | TCPI_OPT_SACK | TCPI_OPT_WSCALE;
        assert_eq!(options & all, all, "{to}: granted options {options:#x}");
        assert_eq!(
            snd_wscale, plain_snd,
            "{to}: the SYN-ACK advertised the scale the kernel picks"
        );
        // The gateway's kernel: the client's scale as the client sent it,
        // its own as advertised, SACK and timestamps on.
        let side = gateway_side(&lab, port);
        let want = format!("wscale:{rcv_wscale},{snd_wscale}");
        assert!(
            side.contains(&want) && side.contains(" ts ") && side.contains(" sack "),
            "{to}: want {want}, ts and sack in {side:?}"
        );
        drop(stream);
    }

    // A client that does not scale windows gets timestamps and SACK, no
    // scale; one that sends no timestamp gets the MSS only (its ACK could
    // not carry the options back).
    let client_sysctl = |name: &'static str, value: &'static str| {
        lab.client
            .run(move || std::fs::write(format!("/proc/sys/net/ipv4/{name}"), value).unwrap())
    };
    for (name, granted) in [
        ("tcp_window_scaling", TCPI_OPT_TIMESTAMPS | TCPI_OPT_SACK),
        ("tcp_timestamps", 0),
    ] {
        client_sysctl(name, "0");
        let before = counters(&daemon);
        let stream = lab.open_served(v4);
        client_sysctl(name, "1");
        let after = counters(&daemon);
        assert_eq!(delta(&before, &after, "syn_cookie_sent"), 1, "{after}");
        let all = TCPI_OPT_TIMESTAMPS | TCPI_OPT_SACK | TCPI_OPT_WSCALE;
        assert_eq!(tcp_info(&stream).0 & all, granted, "client without {name}");
        let side = gateway_side(&lab, PORT);
        assert!(!side.contains("wscale"), "{name}: {side:?}");
        assert_eq!(side.contains(" ts "), granted != 0, "{name}: {side:?}");
    }

    // Someone sets timestamps back to per-connection offsets: the options
    // would be misread, so the daemon stops encoding them (connections
    // still work, with the MSS only) until the setting is back.
    let set = |value: &'static str| {
        lab.gw
            .run(move || std::fs::write("/proc/sys/net/ipv4/tcp_timestamps", value).unwrap())
    };
    set("1");
    wait_for("tcp_options to go off", || {
        Lab::status(&daemon)["tcp_options"] == false
    });
    assert!(
        daemon
            .log()
            .contains("set net.ipv4.tcp_timestamps = 2 again"),
        "{}",
        daemon.log()
    );
    let before = counters(&daemon);
    let options = lab.client.run(move || {
        let stream = TcpStream::connect_timeout(&v4, Duration::from_secs(10)).unwrap();
        tcp_info(&stream).0
    });
    assert_eq!(options & (TCPI_OPT_TIMESTAMPS | TCPI_OPT_WSCALE), 0);
    let after = counters(&daemon);
    assert_eq!(delta(&before, &after, "syn_cookie_sent"), 1, "{after}");
    set("2");
    wait_for("tcp_options to come back", || {
        Lab::status(&daemon)["tcp_options"] == true
    });
    drop(plain);
}
