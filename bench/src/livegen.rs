//! A flood that arrives as a NIC's frames do: a packet generator that runs a
//! tiny XDP program with BPF_PROG_TEST_RUN in live-frames mode
//! (`BPF_F_TEST_XDP_LIVE_FRAMES`, kernel >= 5.18), bound to the attacker's
//! veth end, and transmits every frame with `XDP_TX`.
//!
//! In live-frames mode the kernel builds each frame in a page of its own
//! page pool from the template (`data_in`), runs the program on it, and
//! turns `XDP_TX` into a redirect out of `ctx_in.ingress_ifindex`. On veth
//! that is `ndo_xdp_xmit`: the frame goes into the peer's ring as an
//! `xdp_frame`, never as an skb. The peer's XDP program (native mode) then
//! runs on it as a NIC driver's would, before anything is allocated; a frame
//! it passes (or one that meets nftables or the stack when no XDP program is
//! attached) is turned into an skb on the peer's side, as a driver does. The
//! peer's veth end needs NAPI for that (an XDP program attached, or GRO on);
//! without it veth refuses `xdp_frame`s (`tx_queue_0_xdp_xmit_errors`).
//!
//! The program rewrites each frame's source address and source port
//! (`bpf_get_prandom_u32`) and fixes the checksums by incremental update
//! (RFC 1624: `HC' = ~(~HC + ~m + m')`, with `HC` and `m` the template's,
//! folded into one constant when the program is built), so every frame is
//! a valid UDP datagram or TCP SYN the peer's stack accepts. What varies is
//! decided when the program is assembled: offsets and constants are
//! immediates, there is no map and no per-run state, and a page the kernel
//! reuses is simply overwritten again.
//!
//! Why bytecode assembled here rather than a program compiled with the
//! eBPF crate: the program is ~60 instructions specialised per flood
//! (offsets, ranges, checksum constants), which an instruction list states
//! directly, while a compiled program would need maps or global data to be
//! told them and would put a second program into the production object's
//! build. aya loads only ELF objects, so the bytecode is loaded with the raw
//! `bpf(BPF_PROG_LOAD)` syscall; the fd is then ours, and the test run is the
//! same raw syscall (aya's `TestRunAttrs::xdp_live_frames` sets the same
//! attribute fields, but needs an aya `Program`, which only an ELF gives).
//!
//! Everything is bounded: [`send`] stops at its frame count or its time
//! limit, whichever comes first, and checks a stop flag between batches.
//! The test run must be made by a thread inside the attacker's namespace
//! (the kernel looks `ingress_ifindex` up in the caller's namespace).
#![allow(unsafe_code)]

use std::{
    net::{IpAddr, Ipv6Addr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use ipnet::IpNet;

/// The transport of the flood's frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Proto {
    /// A UDP datagram with a 16-byte payload.
    Udp,
    /// A TCP SYN (20-byte header, no options).
    Syn,
}

/// Where each frame's source address comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sources {
    /// A random address of this network, drawn per frame.
    Random(IpNet),
    /// One of `count` consecutive addresses from `first`, drawn per frame
    /// (each gets its 1/`count` share; only the last 32 bits vary).
    Some { first: IpAddr, count: u32 },
}

impl Sources {
    fn is_ipv4(&self) -> bool {
        match self {
            Sources::Random(net) => matches!(net, IpNet::V4(_)),
            Sources::Some { first, .. } => first.is_ipv4(),
        }
    }

    fn first(&self) -> IpAddr {
        match self {
            Sources::Random(net) => net.network(),
            Sources::Some { first, .. } => *first,
        }
    }
}

/// One kind of flood frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flow {
    pub proto: Proto,
    pub sources: Sources,
    pub dst: IpAddr,
    pub dst_port: u16,
    /// The attacker's MAC (the frame's source).
    pub src_mac: [u8; 6],
    /// The gateway's MAC (the frame's destination).
    pub dst_mac: [u8; 6],
}

/// Source ports are drawn from this range.
const SRC_PORT_MIN: u32 = 1024;
const SRC_PORT_COUNT: u32 = 65536 - SRC_PORT_MIN;
const UDP_PAYLOAD: &[u8; 16] = b"xgate-bench-live";
const ETH_HLEN: usize = 14;

/// The frame the kernel copies into every page, with valid checksums.
pub fn template(flow: &Flow) -> Result<Vec<u8>> {
    let src = flow.sources.first();
    ensure!(
        src.is_ipv4() == flow.dst.is_ipv4(),
        "source {src} and destination {} are not of one IP version",
        flow.dst
    );
    let l4 = match flow.proto {
        Proto::Udp => {
            let mut p = Vec::new();
            p.extend_from_slice(&40000u16.to_be_bytes());
            p.extend_from_slice(&flow.dst_port.to_be_bytes());
            p.extend_from_slice(&((8 + UDP_PAYLOAD.len()) as u16).to_be_bytes());
            p.extend_from_slice(&[0, 0]);
            p.extend_from_slice(UDP_PAYLOAD);
            p
        }
        Proto::Syn => {
            let mut p = Vec::new();
            p.extend_from_slice(&40000u16.to_be_bytes());
            p.extend_from_slice(&flow.dst_port.to_be_bytes());
            p.extend_from_slice(&0x1234_5678u32.to_be_bytes()); // sequence
            p.extend_from_slice(&[0; 4]); // ack
            p.extend_from_slice(&[5 << 4, 0x02]); // 20 bytes, SYN
            p.extend_from_slice(&64240u16.to_be_bytes()); // window
            p.extend_from_slice(&[0; 4]); // checksum, urgent
            p
        }
    };
    let proto = match flow.proto {
        Proto::Udp => 17u8,
        Proto::Syn => 6,
    };
    let mut f = Vec::with_capacity(128);
    f.extend_from_slice(&flow.dst_mac);
    f.extend_from_slice(&flow.src_mac);
    let l4_csum_at = match flow.proto {
        Proto::Udp => 6,
        Proto::Syn => 16,
    };
    let mut pseudo = Vec::new();
    match (src, flow.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            f.extend_from_slice(&0x0800u16.to_be_bytes());
            let mut ip = vec![0x45, 0];
            ip.extend_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
            ip.extend_from_slice(&[0, 0, 0x40, 0, 64, proto, 0, 0]);
            ip.extend_from_slice(&s.octets());
            ip.extend_from_slice(&d.octets());
            let c = checksum(&ip);
            ip[10..12].copy_from_slice(&c.to_be_bytes());
            f.extend_from_slice(&ip);
            pseudo.extend_from_slice(&s.octets());
            pseudo.extend_from_slice(&d.octets());
            pseudo.extend_from_slice(&[0, proto]);
            pseudo.extend_from_slice(&(l4.len() as u16).to_be_bytes());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            f.extend_from_slice(&0x86DDu16.to_be_bytes());
            f.extend_from_slice(&[0x60, 0, 0, 0]);
            f.extend_from_slice(&(l4.len() as u16).to_be_bytes());
            f.extend_from_slice(&[proto, 64]);
            f.extend_from_slice(&s.octets());
            f.extend_from_slice(&d.octets());
            pseudo.extend_from_slice(&s.octets());
            pseudo.extend_from_slice(&d.octets());
            pseudo.extend_from_slice(&(l4.len() as u32).to_be_bytes());
            pseudo.extend_from_slice(&[0, 0, 0, proto]);
        }
        _ => unreachable!("checked above"),
    }
    pseudo.extend_from_slice(&l4);
    let mut c = checksum(&pseudo);
    if c == 0 && flow.proto == Proto::Udp {
        c = 0xffff;
    }
    let at = f.len() + l4_csum_at;
    f.extend_from_slice(&l4);
    f[at..at + 2].copy_from_slice(&c.to_be_bytes());
    Ok(f)
}

/// The Internet checksum (RFC 1071) of `data`, as a big-endian value.
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum: u64 = data
        .chunks(2)
        .map(|c| u64::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Offsets in the template of what the program rewrites.
struct Layout {
    /// The source address.
    src: usize,
    /// The IPv4 header checksum (none for IPv6).
    ip_csum: Option<usize>,
    src_port: usize,
    l4_csum: usize,
    udp: bool,
}

fn layout(flow: &Flow) -> Layout {
    let (src, ip_csum, l4) = if flow.sources.is_ipv4() {
        (ETH_HLEN + 12, Some(ETH_HLEN + 10), ETH_HLEN + 20)
    } else {
        (ETH_HLEN + 8, None, ETH_HLEN + 40)
    };
    Layout {
        src,
        ip_csum,
        src_port: l4,
        l4_csum: l4
            + match flow.proto {
                Proto::Udp => 6,
                Proto::Syn => 16,
            },
        udp: flow.proto == Proto::Udp,
    }
}

/// How one 32-bit word of the source address is made, in host order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Word {
    /// `fixed | (random & mask)`.
    Masked { fixed: u32, mask: u32 },
    /// `base + random % count`.
    Counted { base: u32, count: u32 },
}

/// The address words that vary, by index (0 = the first 4 bytes).
fn varied_words(sources: &Sources) -> Result<Vec<(usize, Word)>> {
    match *sources {
        Sources::Random(net) => {
            let (addr, mask): (Vec<u32>, Vec<u32>) = match net {
                IpNet::V4(n) => (vec![u32::from(n.network())], vec![u32::from(n.hostmask())]),
                IpNet::V6(n) => {
                    let w = |a: Ipv6Addr| {
                        a.octets()
                            .chunks(4)
                            .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
                            .collect::<Vec<_>>()
                    };
                    (w(n.network()), w(n.hostmask()))
                }
            };
            let words: Vec<(usize, Word)> = addr
                .iter()
                .zip(&mask)
                .enumerate()
                .filter(|(_, (_, m))| **m != 0)
                .map(|(i, (a, m))| {
                    (
                        i,
                        Word::Masked {
                            fixed: *a,
                            mask: *m,
                        },
                    )
                })
                .collect();
            ensure!(
                !words.is_empty(),
                "{net} is one address: use Sources::Some with count 1"
            );
            Ok(words)
        }
        Sources::Some { first, count } => {
            ensure!(count >= 1, "Sources::Some needs at least one address");
            let (index, base) = match first {
                IpAddr::V4(a) => (0, u32::from(a)),
                IpAddr::V6(a) => {
                    let o = a.octets();
                    (3, u32::from_be_bytes([o[12], o[13], o[14], o[15]]))
                }
            };
            ensure!(
                u64::from(base) + u64::from(count) - 1 <= u64::from(u32::MAX),
                "{count} addresses from {first} leave its last 32 bits"
            );
            Ok(vec![(index, Word::Counted { base, count })])
        }
    }
}

/// A 16-bit word of the frame as the program's little-endian loads and
/// stores see it. The ones' complement sum does not depend on byte order
/// (RFC 1071), so sums of these words, stored the same way, are the
/// big-endian checksum's bytes.
fn le16(frame: &[u8], at: usize) -> u64 {
    u64::from(u16::from_le_bytes([frame[at], frame[at + 1]]))
}

/// `~HC + ~m` of RFC 1624 for the checksum at `csum_at` and the old words
/// at `words` (byte offsets).
fn csum_base(frame: &[u8], csum_at: usize, words: &[usize]) -> u64 {
    let not = |v: u64| 0xffff - v;
    not(le16(frame, csum_at)) + words.iter().map(|&w| not(le16(frame, w))).sum::<u64>()
}

// ---- a small eBPF assembler: only the instructions the program uses ----

/// Registers: r0 return value and helper results, r1-r5 arguments
/// (clobbered by calls), r6-r9 kept across calls, r10 the frame pointer.
pub(crate) const R0: u8 = 0;
pub(crate) const R1: u8 = 1;
pub(crate) const R2: u8 = 2;
pub(crate) const R3: u8 = 3;
pub(crate) const R6: u8 = 6;
pub(crate) const R7: u8 = 7;
pub(crate) const R8: u8 = 8;
pub(crate) const R9: u8 = 9;

// Instruction classes, sources, operations and sizes (linux/bpf_common.h).
pub(crate) const BPF_LDX: u8 = 0x01;
pub(crate) const BPF_STX: u8 = 0x03;
pub(crate) const BPF_ALU: u8 = 0x04;
pub(crate) const BPF_JMP: u8 = 0x05;
pub(crate) const BPF_ALU64: u8 = 0x07;
pub(crate) const BPF_MEM: u8 = 0x60;
pub(crate) const BPF_W: u8 = 0x00;
pub(crate) const BPF_H: u8 = 0x08;
pub(crate) const BPF_K: u8 = 0x00;
pub(crate) const BPF_X: u8 = 0x08;
pub(crate) const BPF_ADD: u8 = 0x00;
pub(crate) const BPF_OR: u8 = 0x40;
pub(crate) const BPF_AND: u8 = 0x50;
pub(crate) const BPF_RSH: u8 = 0x70;
pub(crate) const BPF_MOD: u8 = 0x90;
pub(crate) const BPF_XOR: u8 = 0xa0;
pub(crate) const BPF_MOV: u8 = 0xb0;
pub(crate) const BPF_END: u8 = 0xd0;
pub(crate) const BPF_TO_BE: u8 = 0x08;
pub(crate) const BPF_JGT: u8 = 0x20;
pub(crate) const BPF_JNE: u8 = 0x50;
pub(crate) const BPF_CALL: u8 = 0x80;
pub(crate) const BPF_EXIT: u8 = 0x90;
/// `bpf_get_prandom_u32()`.
pub(crate) const HELPER_PRANDOM: i32 = 7;
pub(crate) const XDP_TX: i32 = 3;
/// Offsets in `struct xdp_md`.
pub(crate) const XDP_MD_DATA: i16 = 0;
pub(crate) const XDP_MD_DATA_END: i16 = 4;

/// Instructions, 8 bytes each: opcode, dst/src registers, offset, immediate.
#[derive(Default)]
pub(crate) struct Asm {
    pub(crate) insns: Vec<u64>,
}

impl Asm {
    pub(crate) fn emit(&mut self, code: u8, dst: u8, src: u8, off: i16, imm: i32) {
        let regs = (src << 4) | dst;
        let bytes = [
            code,
            regs,
            off.to_le_bytes()[0],
            off.to_le_bytes()[1],
            imm.to_le_bytes()[0],
            imm.to_le_bytes()[1],
            imm.to_le_bytes()[2],
            imm.to_le_bytes()[3],
        ];
        self.insns.push(u64::from_le_bytes(bytes));
    }
    /// 64-bit `dst op= imm`.
    pub(crate) fn alu64_k(&mut self, op: u8, dst: u8, imm: i32) {
        self.emit(BPF_ALU64 | op | BPF_K, dst, 0, 0, imm);
    }
    /// 64-bit `dst op= src`.
    pub(crate) fn alu64_x(&mut self, op: u8, dst: u8, src: u8) {
        self.emit(BPF_ALU64 | op | BPF_X, dst, src, 0, 0);
    }
    /// 32-bit `dst op= imm` (the upper half of dst is cleared).
    pub(crate) fn alu32_k(&mut self, op: u8, dst: u8, imm: u32) {
        self.emit(BPF_ALU | op | BPF_K, dst, 0, 0, imm as i32);
    }
    /// `dst = 64-bit immediate` (two slots).
    pub(crate) fn ld_imm64(&mut self, dst: u8, imm: u64) {
        self.emit(0x18, dst, 0, 0, imm as u32 as i32);
        self.emit(0, 0, 0, 0, (imm >> 32) as u32 as i32);
    }
    /// Byte swap of the low `bits` into network order (on a little-endian
    /// host; the upper bits are cleared).
    pub(crate) fn be(&mut self, dst: u8, bits: i32) {
        self.emit(BPF_ALU | BPF_END | BPF_TO_BE, dst, 0, 0, bits);
    }
    pub(crate) fn ldx(&mut self, size: u8, dst: u8, src: u8, off: i16) {
        self.emit(BPF_LDX | BPF_MEM | size, dst, src, off, 0);
    }
    pub(crate) fn stx(&mut self, size: u8, dst: u8, off: usize, src: u8) {
        self.emit(BPF_STX | BPF_MEM | size, dst, src, off as i16, 0);
    }
    /// A forward jump whose offset is set later by [`Asm::land`].
    pub(crate) fn jump(&mut self, op: u8, dst: u8, src: Option<u8>, imm: i32) -> usize {
        match src {
            Some(s) => self.emit(BPF_JMP | op | BPF_X, dst, s, 0, imm),
            None => self.emit(BPF_JMP | op | BPF_K, dst, 0, 0, imm),
        }
        self.insns.len() - 1
    }
    /// Points the jump at `at` to the next instruction.
    pub(crate) fn land(&mut self, at: usize) {
        let off = (self.insns.len() - at - 1) as i16;
        let mut b = self.insns[at].to_le_bytes();
        b[2..4].copy_from_slice(&off.to_le_bytes());
        self.insns[at] = u64::from_le_bytes(b);
    }
    pub(crate) fn call(&mut self, helper: i32) {
        self.emit(BPF_JMP | BPF_CALL, 0, 0, 0, helper);
    }
    pub(crate) fn exit(&mut self) {
        self.emit(BPF_JMP | BPF_EXIT, 0, 0, 0, 0);
    }
    /// `dst = ~fold(dst)` in 16 bits: the ones' complement sum's carries
    /// folded back in (three times is enough for any sum below 2^48).
    pub(crate) fn fold_not(&mut self, dst: u8, tmp: u8) {
        for _ in 0..3 {
            self.alu64_x(BPF_MOV, tmp, dst);
            self.alu64_k(BPF_RSH, tmp, 16);
            self.alu64_k(BPF_AND, dst, 0xffff);
            self.alu64_x(BPF_ADD, dst, tmp);
        }
        self.alu32_k(BPF_XOR, dst, 0xffff);
    }
}

/// The program for `flow`'s template: rewrite, fix checksums, `XDP_TX`.
fn assemble(flow: &Flow, frame: &[u8]) -> Result<Vec<u64>> {
    let l = layout(flow);
    let words = varied_words(&flow.sources)?;
    // The old 16-bit words the rewrite replaces, for RFC 1624's ~m.
    let mut old: Vec<usize> = words
        .iter()
        .flat_map(|(i, _)| [l.src + 4 * i, l.src + 4 * i + 2])
        .collect();
    let ip_base = l.ip_csum.map(|at| csum_base(frame, at, &old));
    old.push(l.src_port);
    let l4_base = csum_base(frame, l.l4_csum, &old);

    let mut a = Asm::default();
    // r6 = data; the whole template must lie before data_end (the
    // verifier's bound for every access below).
    a.ldx(BPF_W, R6, R1, XDP_MD_DATA);
    a.ldx(BPF_W, R3, R1, XDP_MD_DATA_END);
    a.alu64_x(BPF_MOV, R2, R6);
    a.alu64_k(BPF_ADD, R2, frame.len() as i32);
    let short = a.jump(BPF_JGT, R2, Some(R3), 0);
    // r8 = the sum of the new address words.
    a.alu64_k(BPF_MOV, R8, 0);
    for (i, word) in &words {
        a.call(HELPER_PRANDOM);
        match *word {
            Word::Masked { fixed, mask } => {
                a.alu32_k(BPF_AND, R0, mask);
                a.alu32_k(BPF_OR, R0, fixed);
            }
            Word::Counted { base, count } => {
                a.alu32_k(BPF_MOD, R0, count);
                a.alu32_k(BPF_ADD, R0, base);
            }
        }
        a.be(R0, 32);
        a.stx(BPF_W, R6, l.src + 4 * i, R0);
        a.alu64_x(BPF_MOV, R1, R0);
        a.alu64_k(BPF_AND, R1, 0xffff);
        a.alu64_x(BPF_ADD, R8, R1);
        a.alu64_k(BPF_RSH, R0, 16);
        a.alu64_x(BPF_ADD, R8, R0);
    }
    // r9 = the new source port.
    a.call(HELPER_PRANDOM);
    a.alu32_k(BPF_MOD, R0, SRC_PORT_COUNT);
    a.alu32_k(BPF_ADD, R0, SRC_PORT_MIN);
    a.be(R0, 16);
    a.stx(BPF_H, R6, l.src_port, R0);
    a.alu64_x(BPF_MOV, R9, R0);
    if let (Some(at), Some(base)) = (l.ip_csum, ip_base) {
        a.ld_imm64(R7, base);
        a.alu64_x(BPF_ADD, R7, R8);
        a.fold_not(R7, R1);
        a.stx(BPF_H, R6, at, R7);
    }
    a.ld_imm64(R7, l4_base);
    a.alu64_x(BPF_ADD, R7, R8);
    a.alu64_x(BPF_ADD, R7, R9);
    a.fold_not(R7, R1);
    if l.udp {
        // 0 means "no checksum" in UDP: send its other form.
        let nonzero = a.jump(BPF_JNE, R7, None, 0);
        a.alu64_k(BPF_MOV, R7, 0xffff);
        a.land(nonzero);
    }
    a.stx(BPF_H, R6, l.l4_csum, R7);
    a.land(short);
    a.alu64_k(BPF_MOV, R0, XDP_TX);
    a.exit();
    Ok(a.insns)
}

/// The number of instructions in `flow`'s program.
pub fn program_len(flow: &Flow) -> Result<usize> {
    Ok(assemble(flow, &template(flow)?)?.len())
}

// ---- the two bpf(2) commands ----

pub(crate) const BPF_PROG_LOAD: libc::c_long = 5;
pub(crate) const BPF_PROG_TEST_RUN: libc::c_long = 10;
pub(crate) const BPF_PROG_TYPE_XDP: u32 = 6;
pub(crate) const BPF_F_TEST_XDP_LIVE_FRAMES: u32 = 1 << 1;

/// The `BPF_PROG_LOAD` part of `union bpf_attr` (the kernel zero-fills
/// what a shorter attribute leaves out).
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
}

/// The `BPF_PROG_TEST_RUN` part of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

/// `struct xdp_md` as `ctx_in`: the frame's bounds and the device it
/// pretends to have arrived on (and leaves by, with XDP_TX).
#[repr(C)]
struct XdpMd {
    data: u32,
    data_end: u32,
    data_meta: u32,
    ingress_ifindex: u32,
    rx_queue_index: u32,
    egress_ifindex: u32,
}

pub(crate) fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> libc::c_long {
    // SAFETY: `attr` is a live, properly sized `bpf_attr` prefix; the
    // pointers inside it point to buffers that outlive the call.
    unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T as *mut libc::c_void,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    }
}

/// Loads `insns` as an XDP program named `name` (at most 15 bytes) with
/// the raw `bpf(BPF_PROG_LOAD)` syscall; the error carries the verifier's
/// log.
pub(crate) fn load_xdp(name: &str, insns: &[u64]) -> Result<OwnedFd> {
    let license = c"GPL";
    let mut log = vec![0u8; 64 * 1024];
    let mut prog_name = [0u8; 16];
    let len = name.len().min(15);
    prog_name[..len].copy_from_slice(&name.as_bytes()[..len]);
    let mut attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_XDP,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 1,
        log_size: log.len() as u32,
        log_buf: log.as_mut_ptr() as u64,
        prog_name,
        ..ProgLoadAttr::default()
    };
    let fd = bpf(BPF_PROG_LOAD, &mut attr);
    if fd < 0 {
        let err = std::io::Error::last_os_error();
        let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
        bail!(
            "BPF_PROG_LOAD: {err}; verifier log:\n{}",
            String::from_utf8_lossy(&log[..end])
        );
    }
    // SAFETY: a new fd the kernel just returned, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Frames per batch of the kernel's live-frames loop (its default; at most
/// 256): each batch is flushed to the device before the next.
const BATCH: u32 = 64;

/// A loaded generator program with its template frame.
pub struct Generator {
    fd: OwnedFd,
    frame: Vec<u8>,
    ifindex: u32,
    pub flow: Flow,
    /// Instructions in the program.
    pub insns: usize,
}

impl Generator {
    /// Loads the program for `flow`, to send out of the interface with
    /// index `ifindex` (in the namespace of the thread that will send).
    pub fn load(flow: Flow, ifindex: u32) -> Result<Self> {
        let frame = template(&flow)?;
        let insns = assemble(&flow, &frame)?;
        let fd = load_xdp("xgb_livegen", &insns).context("the generator's program")?;
        Ok(Self {
            fd,
            frame,
            ifindex,
            flow,
            insns: insns.len(),
        })
    }

    /// The template frame (what the program rewrites per frame).
    pub fn frame(&self) -> &[u8] {
        &self.frame
    }

    /// Sends `count` frames now (one BPF_PROG_TEST_RUN in live-frames
    /// mode); the calling thread must be in the device's namespace.
    pub fn send_now(&self, count: u32) -> Result<()> {
        self.run(count)
            .with_context(|| format!("BPF_PROG_TEST_RUN (live frames, ifindex {})", self.ifindex))
    }

    /// The test run itself. The kernel stops it with EINTR when a signal
    /// is pending for the thread, without saying how many frames went out.
    fn run(&self, count: u32) -> std::io::Result<()> {
        let mut ctx = XdpMd {
            data: 0,
            data_end: self.frame.len() as u32,
            data_meta: 0,
            ingress_ifindex: self.ifindex,
            rx_queue_index: 0,
            egress_ifindex: 0,
        };
        let mut attr = TestRunAttr {
            prog_fd: self.fd.as_raw_fd() as u32,
            data_size_in: self.frame.len() as u32,
            data_in: self.frame.as_ptr() as u64,
            repeat: count,
            ctx_size_in: std::mem::size_of::<XdpMd>() as u32,
            ctx_in: &mut ctx as *mut XdpMd as u64,
            flags: BPF_F_TEST_XDP_LIVE_FRAMES,
            batch_size: BATCH,
            ..TestRunAttr::default()
        };
        if bpf(BPF_PROG_TEST_RUN, &mut attr) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // The kernel leaves `retval` at 0 in live-frames mode: what was
        // sent shows in the device's counters (`tx_queue_0_xdp_xmit`).
        Ok(())
    }
}

/// How much and how fast to send.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// Frames in all (the flows take turns, a batch each).
    pub count: u64,
    /// Frames per second; `None`: as fast as one CPU sends.
    pub rate_pps: Option<u64>,
    /// Stop after this long even if `count` is not reached.
    pub max_time: Duration,
    /// Paced, after the sender fell behind (its thread was descheduled):
    /// what it catches up with.
    pub catch_up: CatchUp,
}

/// What a paced sender does with the frames it owes after a stall.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CatchUp {
    /// Sends them all at once, as an attacker on a machine of its own would
    /// have sent them meanwhile: the receiver's ring takes what it can and
    /// refuses the rest (its `xdp_xmit_errors`), as a NIC's full rx ring
    /// drops. The flood benchmark's rates: the attacker shares a CPU with
    /// the client and is descheduled often, and forgiving what it owes
    /// would send a small part of the rate asked for.
    All,
    /// Sends at most a tick's worth or [`PACED_BURST`] and forgives the
    /// rest: a test that requires every frame it sends to arrive.
    Burst,
}

/// What [`send`] did.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sent {
    /// Frames the program transmitted (`XDP_TX`); the device may still
    /// have refused some (a full ring: see its `xdp_xmit_errors`).
    pub frames: u64,
    pub seconds: f64,
    /// Whether it stopped before `count` (time limit or `stop`).
    pub cut_short: bool,
    /// Test runs a signal interrupted; the frames they sent before it are
    /// not in `frames` (the kernel does not say how many there were).
    pub interrupted: u64,
}

/// Frames per test run at full speed: about 30 ms at 9 Mpps, so the time
/// limit and `stop` are checked often.
const FULL_SPEED_CHUNK: u64 = 256 * 1024;
/// Paced: frames are sent in ticks of this length.
const TICK: Duration = Duration::from_millis(1);
/// Paced: the most frames one test run sends when the sender has fallen
/// behind (its thread was descheduled): half of veth's 256-frame ring. A
/// catch-up burst of everything owed would overflow the receiver's ring
/// (refused frames, `xdp_xmit_errors`) although the rate asked for is far
/// below what it drains; the frames owed beyond this are forgiven instead,
/// so the rate achieved (in [`Sent`]) falls short of the one asked for.
const PACED_BURST: u64 = 128;

/// The schedule of a paced send: `rate` frames per second from the start,
/// minus what was forgiven after a stall.
#[derive(Debug, Clone, Copy)]
struct Pace {
    rate: u64,
    forgiven: u64,
    catch_up: CatchUp,
}

impl Pace {
    fn new(rate: u64, catch_up: CatchUp) -> Self {
        Self {
            rate: rate.max(1),
            forgiven: 0,
            catch_up,
        }
    }

    /// How many frames to send now, `elapsed` after the start with `sent`
    /// sent: zero when the next one is not due yet; with [`CatchUp::Burst`]
    /// at most a tick's worth or [`PACED_BURST`], whichever is more.
    fn owed(&mut self, elapsed: Duration, sent: u64) -> u64 {
        let due = ((self.rate as f64 * elapsed.as_secs_f64()) as u64).saturating_sub(self.forgiven);
        let owed = due.saturating_sub(sent);
        if self.catch_up == CatchUp::All {
            return owed;
        }
        let burst = ((self.rate as f64 * TICK.as_secs_f64()) as u64).max(PACED_BURST);
        if owed > burst {
            self.forgiven += owed - burst;
            return burst;
        }
        owed
    }

    /// When the next frame is due, counted from the start.
    fn next_due(&self, sent: u64) -> Duration {
        Duration::from_secs_f64((sent + self.forgiven + 1) as f64 / self.rate as f64)
    }
}

/// Sends `plan.count` frames from `generators` in turns (one test run
/// each), paced or at full speed, until the count, the time limit, or
/// `stop()` returning true. The calling thread must be in the namespace of
/// the generators' device.
pub fn send(generators: &[Generator], plan: Plan, mut stop: impl FnMut() -> bool) -> Result<Sent> {
    ensure!(!generators.is_empty(), "no flow to send");
    let started = Instant::now();
    let mut sent: u64 = 0;
    let mut interrupted: u64 = 0;
    let mut turn = 0;
    let mut pace = plan.rate_pps.map(|rate| Pace::new(rate, plan.catch_up));
    while sent < plan.count {
        let elapsed = started.elapsed();
        if elapsed >= plan.max_time || stop() {
            break;
        }
        let chunk = match &mut pace {
            None => FULL_SPEED_CHUNK,
            Some(pace) => match pace.owed(elapsed, sent) {
                0 => {
                    let next = pace.next_due(sent);
                    std::thread::sleep(next.saturating_sub(elapsed).min(TICK));
                    continue;
                }
                owed => owed,
            },
        };
        let n = chunk.min(plan.count - sent).min(u64::from(u32::MAX)) as u32;
        let generator = &generators[turn % generators.len()];
        turn += 1;
        match generator.run(n) {
            Ok(()) => sent += u64::from(n),
            // A signal (the harness's child exiting, ...) cut the run short
            // after an unknown part of it: not counted, the loop goes on
            // (and checks `stop` and the time limit first).
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => interrupted += 1,
            Err(e) => {
                return Err(e).with_context(|| {
                    format!(
                        "BPF_PROG_TEST_RUN (live frames, ifindex {})",
                        generator.ifindex
                    )
                })
            }
        }
    }
    Ok(Sent {
        frames: sent,
        seconds: started.elapsed().as_secs_f64(),
        cut_short: sent < plan.count,
        interrupted,
    })
}

/// The interface index of `ifname` in the calling thread's namespace.
pub fn ifindex(ifname: &str) -> Result<u32> {
    let name = std::ffi::CString::new(ifname).context("interface name")?;
    // SAFETY: a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        bail!(
            "no interface {ifname} here: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(index)
}

/// A MAC address from `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(text: &str) -> Result<[u8; 6]> {
    let parts: Vec<u8> = text
        .trim()
        .split(':')
        .map(|p| u8::from_str_radix(p, 16))
        .collect::<Result<_, _>>()
        .with_context(|| format!("not a MAC address: {text}"))?;
    parts
        .try_into()
        .map_err(|_| anyhow::anyhow!("not a MAC address: {text}"))
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    #[test]
    fn a_stalled_paced_sender_catches_up_by_at_most_a_burst() {
        let ms = Duration::from_millis;
        let mut pace = Pace::new(50_000, CatchUp::Burst);
        // On schedule: a tick's worth after a tick, nothing before the
        // next frame is due.
        assert_eq!(pace.owed(ms(1), 0), 50);
        assert_eq!(pace.owed(ms(1), 50), 0);
        assert_eq!(pace.next_due(50), Duration::from_micros(1020));
        // Descheduled for 10 ms: 500 frames owed, one burst sent, the rest
        // forgiven; the schedule goes on from there without a second burst.
        assert_eq!(pace.owed(ms(11), 50), PACED_BURST);
        let sent = 50 + PACED_BURST;
        assert_eq!(pace.owed(ms(11), sent), 0);
        assert_eq!(pace.owed(ms(12), sent), 50);
        assert!(pace.next_due(sent) > ms(11) && pace.next_due(sent) < ms(12));
        // Fast enough that a tick's worth is more than a burst: a tick's
        // worth.
        let mut fast = Pace::new(1_000_000, CatchUp::Burst);
        assert_eq!(fast.owed(ms(20), 0), 1_000);
    }

    #[test]
    fn a_stalled_sender_that_catches_up_with_all_owes_everything_due() {
        let ms = Duration::from_millis;
        let mut pace = Pace::new(50_000, CatchUp::All);
        assert_eq!(pace.owed(ms(1), 0), 50);
        // Descheduled for 10 ms: all 500 frames due since are sent.
        assert_eq!(pace.owed(ms(11), 50), 500);
        assert_eq!(pace.owed(ms(11), 550), 0);
        assert_eq!(pace.next_due(550), Duration::from_micros(11_020));
    }

    fn flow(proto: Proto, sources: Sources, dst: IpAddr) -> Flow {
        Flow {
            proto,
            sources,
            dst,
            dst_port: 8080,
            src_mac: [2, 0, 0, 0, 0, 1],
            dst_mac: [2, 0, 0, 0, 0, 2],
        }
    }

    /// What the program computes, in userspace: the frame after one run
    /// with the given random words.
    fn rewrite(flow: &Flow, frame: &[u8], randoms: &[u32]) -> Vec<u8> {
        let l = layout(flow);
        let words = varied_words(&flow.sources).unwrap();
        let mut out = frame.to_vec();
        for ((i, w), r) in words.iter().zip(randoms) {
            let v = match *w {
                Word::Masked { fixed, mask } => fixed | (r & mask),
                Word::Counted { base, count } => base + r % count,
            };
            out[l.src + 4 * i..l.src + 4 * i + 4].copy_from_slice(&v.to_be_bytes());
        }
        let port = (SRC_PORT_MIN + randoms[words.len()] % SRC_PORT_COUNT) as u16;
        out[l.src_port..l.src_port + 2].copy_from_slice(&port.to_be_bytes());
        // The program's incremental update, in the same arithmetic.
        let mut old: Vec<usize> = words
            .iter()
            .flat_map(|(i, _)| [l.src + 4 * i, l.src + 4 * i + 2])
            .collect();
        let new_addr: u64 = old.iter().map(|&at| le16(&out, at)).sum();
        let fold_not = |mut s: u64| {
            for _ in 0..3 {
                s = (s & 0xffff) + (s >> 16);
            }
            (s as u16) ^ 0xffff
        };
        if let Some(at) = l.ip_csum {
            let c = fold_not(csum_base(frame, at, &old) + new_addr);
            out[at..at + 2].copy_from_slice(&c.to_le_bytes());
        }
        old.push(l.src_port);
        let mut c = fold_not(csum_base(frame, l.l4_csum, &old) + new_addr + le16(&out, l.src_port));
        if l.udp && c == 0 {
            c = 0xffff;
        }
        out[l.l4_csum..l.l4_csum + 2].copy_from_slice(&c.to_le_bytes());
        out
    }

    /// A full checksum of the rewritten frame, as the receiver checks it.
    fn valid(flow: &Flow, f: &[u8]) -> bool {
        let l = layout(flow);
        let ip_ok = l
            .ip_csum
            .is_none_or(|_| checksum(&f[ETH_HLEN..ETH_HLEN + 20]) == 0);
        let (pseudo_src, l4) = if flow.sources.is_ipv4() {
            (&f[ETH_HLEN + 12..ETH_HLEN + 20], &f[ETH_HLEN + 20..])
        } else {
            (&f[ETH_HLEN + 8..ETH_HLEN + 40], &f[ETH_HLEN + 40..])
        };
        let mut p = pseudo_src.to_vec();
        let proto = if l.udp { 17 } else { 6 };
        if flow.sources.is_ipv4() {
            p.extend_from_slice(&[0, proto]);
            p.extend_from_slice(&(l4.len() as u16).to_be_bytes());
        } else {
            p.extend_from_slice(&(l4.len() as u32).to_be_bytes());
            p.extend_from_slice(&[0, 0, 0, proto]);
        }
        p.extend_from_slice(l4);
        ip_ok && checksum(&p) == 0
    }

    #[test]
    fn incremental_checksums_stay_valid() {
        let v4 = IpAddr::V4(Ipv4Addr::new(198, 18, 1, 1));
        let v6: IpAddr = "2001:db8:18::1".parse().unwrap();
        let flows = [
            flow(
                Proto::Udp,
                Sources::Random("198.19.0.0/16".parse().unwrap()),
                v4,
            ),
            flow(
                Proto::Syn,
                Sources::Random("10.0.0.0/8".parse().unwrap()),
                v4,
            ),
            flow(
                Proto::Syn,
                Sources::Some {
                    first: "198.18.64.1".parse().unwrap(),
                    count: 16,
                },
                v4,
            ),
            flow(
                Proto::Udp,
                Sources::Random("2001:db8:dead::/48".parse().unwrap()),
                v6,
            ),
            flow(
                Proto::Syn,
                Sources::Some {
                    first: "2001:db8:64::1".parse().unwrap(),
                    count: 1000,
                },
                v6,
            ),
        ];
        let mut seed = 0x9e37_79b9u32;
        for f in &flows {
            let frame = template(f).unwrap();
            assert!(valid(f, &frame), "template of {f:?}");
            assert!(assemble(f, &frame).unwrap().len() < 100);
            for _ in 0..2000 {
                let randoms: Vec<u32> = (0..5)
                    .map(|_| {
                        seed ^= seed << 13;
                        seed ^= seed >> 17;
                        seed ^= seed << 5;
                        seed
                    })
                    .collect();
                let out = rewrite(f, &frame, &randoms);
                assert!(valid(f, &out), "{f:?} with {randoms:?}");
            }
        }
    }

    #[test]
    fn sources_stay_in_their_range() {
        let words = varied_words(&Sources::Random("198.19.0.0/16".parse().unwrap())).unwrap();
        assert_eq!(
            words,
            vec![(
                0,
                Word::Masked {
                    fixed: 0xc613_0000,
                    mask: 0xffff
                }
            )]
        );
        let words = varied_words(&Sources::Random("2001:db8:dead::/48".parse().unwrap())).unwrap();
        assert_eq!(words.iter().map(|w| w.0).collect::<Vec<_>>(), [1, 2, 3]);
        assert!(varied_words(&Sources::Random("198.19.0.1/32".parse().unwrap())).is_err());
        assert!(varied_words(&Sources::Some {
            first: "255.255.255.250".parse().unwrap(),
            count: 10
        })
        .is_err());
    }

    #[test]
    fn mac_parsing() {
        assert_eq!(
            parse_mac("aa:bb:cc:dd:ee:0f").unwrap(),
            [0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0x0f]
        );
        assert!(parse_mac("aa:bb").is_err());
    }
}
