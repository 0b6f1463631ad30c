//! Paced UDP flows between two namespaces, counted at the receiver: what
//! arrived tells what the XDP program let through. Every flow is bounded in
//! packets and time.

use std::{
    collections::HashMap,
    net::{SocketAddr, UdpSocket},
    os::fd::AsRawFd,
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc,
    },
    time::{Duration, Instant},
};

use crate::netns::NetNs;

/// One stream of datagrams.
#[derive(Debug, Clone)]
pub struct Flow {
    pub from: SocketAddr,
    pub to: SocketAddr,
    pub count: usize,
    /// Packets per second; 0 sends as fast as possible.
    pub pps: u64,
    /// Pin the sending thread to this CPU (the veth receive path runs on the
    /// sender's CPU, so this chooses which CPU the XDP program runs on).
    pub cpu: Option<usize>,
}

#[derive(Debug, Clone, Copy)]
pub struct FlowResult {
    pub sent: usize,
    pub received: usize,
    /// From the first to the last datagram sent.
    pub elapsed: Duration,
}

/// Runs every flow at once (client → server), calls `during` while they
/// run, and returns per-flow results in order. Flows to the same address
/// share a receiver; the payload's first byte tells them apart.
pub fn run_flows(
    client: &NetNs,
    server: &NetNs,
    flows: &[Flow],
    during: impl FnOnce(),
) -> Vec<FlowResult> {
    assert!(flows.len() < 256);
    let done = Arc::new(AtomicBool::new(false));
    let mut receivers = Vec::new();
    let mut destinations: Vec<SocketAddr> = flows.iter().map(|f| f.to).collect();
    destinations.sort();
    destinations.dedup();
    for to in destinations {
        let (ready_tx, ready_rx) = mpsc::channel();
        let done = done.clone();
        receivers.push(server.spawn(move || {
            let socket = bind_receiver(to);
            grow_receive_buffer(&socket);
            socket
                .set_read_timeout(Some(Duration::from_millis(300)))
                .unwrap();
            ready_tx.send(()).unwrap();
            let mut counts: HashMap<u8, usize> = HashMap::new();
            let mut buf = [0u8; 64];
            loop {
                match socket.recv(&mut buf) {
                    Ok(n) if n > 0 => *counts.entry(buf[0]).or_default() += 1,
                    Ok(_) => {}
                    // Quiet for 300 ms after every sender finished: done.
                    Err(_) if done.load(Ordering::Acquire) => return counts,
                    Err(_) => {}
                }
            }
        }));
        ready_rx.recv().expect("receiver ready");
    }
    let senders: Vec<_> = flows
        .iter()
        .enumerate()
        .map(|(tag, flow)| {
            let flow = flow.clone();
            client.spawn(move || send(&flow, tag as u8))
        })
        .collect();
    during();
    let sent: Vec<(usize, Duration)> = senders
        .into_iter()
        .map(|s| s.join().expect("sender"))
        .collect();
    done.store(true, Ordering::Release);
    let mut counts: HashMap<u8, usize> = HashMap::new();
    for receiver in receivers {
        for (tag, n) in receiver.join().expect("receiver") {
            *counts.entry(tag).or_default() += n;
        }
    }
    sent.iter()
        .enumerate()
        .map(|(tag, (sent, elapsed))| FlowResult {
            sent: *sent,
            received: counts.get(&(tag as u8)).copied().unwrap_or(0),
            elapsed: *elapsed,
        })
        .collect()
}

/// Binds a flow's receiver. One CI run saw EADDRINUSE here once, for an
/// address:port whose previous receiver (same test, joined) had just closed;
/// it never reproduced. Retried for up to a second, then it fails loudly.
fn bind_receiver(to: SocketAddr) -> UdpSocket {
    let mut tries = 0;
    loop {
        match UdpSocket::bind(to) {
            Ok(socket) => return socket,
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && tries < 20 => {
                eprintln!("receiver {to}: {e}; retrying");
                tries += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("bind receiver {to}: {e}"),
        }
    }
}

fn send(flow: &Flow, tag: u8) -> (usize, Duration) {
    if let Some(cpu) = flow.cpu {
        pin_to_cpu(cpu);
    }
    let socket = UdpSocket::bind(flow.from).expect("bind sender");
    let payload = [tag, b'x', b'g', b'a', b't', b'e'];
    let start = Instant::now();
    let mut sent = 0;
    for i in 0..flow.count {
        if let Some(offset) = (i as u64 * 1_000_000_000).checked_div(flow.pps) {
            let due = start + Duration::from_nanos(offset);
            let now = Instant::now();
            if due > now + Duration::from_micros(500) {
                std::thread::sleep(due - now);
            }
        }
        // ENOBUFS under load is a send-side drop, not XDP's: count only
        // what left.
        if socket.send_to(&payload, flow.to).is_ok() {
            sent += 1;
        }
    }
    (sent, start.elapsed())
}

#[allow(unsafe_code)]
fn grow_receive_buffer(socket: &UdpSocket) {
    let size: libc::c_int = 16 << 20;
    // SAFETY: valid socket fd and a c_int option value of the right size.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

#[allow(unsafe_code)]
fn pin_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET writes inside it; the
    // call affects only this thread (pid 0).
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        let rc = libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
        assert_eq!(
            rc,
            0,
            "sched_setaffinity: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Sends `frame` `count` times out of `ifname` inside `ns` through an
/// AF_PACKET socket: for frames the namespace's own stack cannot make (VLAN
/// tags on a kernel without 802.1Q support, crafted headers).
#[allow(unsafe_code)]
pub fn send_raw(ns: &NetNs, ifname: &str, frame: &[u8], count: usize) -> usize {
    let ifname = std::ffi::CString::new(ifname).unwrap();
    let frame = frame.to_vec();
    ns.run(move || {
        // SAFETY: plain socket/bind/send calls on a socket this closure owns
        // and closes; every pointer passed is to a live local of the right size.
        unsafe {
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
            assert!(
                fd >= 0,
                "AF_PACKET socket: {}",
                std::io::Error::last_os_error()
            );
            let index = libc::if_nametoindex(ifname.as_ptr());
            assert!(index != 0, "no interface {ifname:?}");
            let mut addr: libc::sockaddr_ll = std::mem::zeroed();
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_ifindex = index as i32;
            let rc = libc::bind(
                fd,
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            );
            assert_eq!(rc, 0, "bind AF_PACKET: {}", std::io::Error::last_os_error());
            let mut sent = 0;
            for i in 0..count {
                if libc::send(fd, frame.as_ptr().cast(), frame.len(), 0) == frame.len() as isize {
                    sent += 1;
                }
                if i % 50 == 49 {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            libc::close(fd);
            sent
        }
    })
}
