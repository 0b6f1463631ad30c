//! A sink for the answers a spoofed flood provokes: an XDP program on the
//! attacker's veth end that drops every IPv4 frame addressed to the spoofed
//! sources' network and passes everything else.
//!
//! On the Internet the SYN-ACKs (or resets) a gateway sends to spoofed
//! sources go to hosts that do not exist or are far away; on a veth pair
//! they land on the attacker's end, and the attacker's namespace would pay
//! for each one on the same two CPUs the gateway runs on (an skb and a trip
//! into its IP stack, which discards a frame for an address it does not
//! have). Dropping them in XDP on arrival costs a few instructions, the same
//! for every answer whoever sent it (the gateway's stack or its XDP
//! program), so a comparison measures the gateway, not the testbed. The
//! program also gives the veth end the NAPI context it needs to receive the
//! frames its peer's XDP program transmits (`XDP_TX`).
//!
//! Assembled with [`crate::livegen`]'s instruction encoder and loaded with
//! the raw `bpf(2)` syscall; attached through a BPF link whose fd the
//! [`Sink`] owns, so the program leaves the interface when it is dropped
//! (also on error paths and panics) or when the namespace goes.
#![allow(unsafe_code)]

use std::{
    fs::File,
    net::Ipv4Addr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use anyhow::{bail, Context, Result};

use crate::livegen::{
    bpf, load_xdp, Asm, BPF_ADD, BPF_AND, BPF_H, BPF_JGT, BPF_JNE, BPF_K, BPF_MOV, BPF_W, R0, R1,
    R2, R3, R6, XDP_MD_DATA, XDP_MD_DATA_END,
};

const BPF_JMP32: u8 = 0x06;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_XDP: u32 = 37;
const XDP_DROP: i32 = 1;
const XDP_PASS: i32 = 2;
/// Ethernet header + the IPv4 header up to the destination address.
const DST_END: i32 = 14 + 20;
const DST_AT: i16 = 14 + 16;

/// The `BPF_LINK_CREATE` part of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_ifindex: u32,
    attach_type: u32,
    flags: u32,
}

/// The program, attached to one interface while this lives.
pub struct Sink {
    _link: OwnedFd,
    _prog: OwnedFd,
}

impl Sink {
    /// Attaches a program that drops IPv4 frames to `network/prefix` to
    /// `ifname` in the namespace `ns` (native mode: veth supports it).
    pub fn attach(ns: &File, ifname: &str, network: Ipv4Addr, prefix: u8) -> Result<Self> {
        let prog =
            load_xdp("xgb_sink", &program(network, prefix)?).context("the spoofed-answers sink")?;
        let ifname = ifname.to_string();
        let prog_fd = prog.as_raw_fd();
        // The kernel looks the interface up in the calling thread's
        // namespace: a thread of its own enters it.
        let link = std::thread::scope(|scope| {
            scope
                .spawn(|| -> Result<OwnedFd> {
                    // SAFETY: setns on a valid namespace fd changes only this thread.
                    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                        bail!("setns: {}", std::io::Error::last_os_error());
                    }
                    let index = crate::livegen::ifindex(&ifname)?;
                    let mut attr = LinkCreateAttr {
                        prog_fd: prog_fd as u32,
                        target_ifindex: index,
                        attach_type: BPF_XDP,
                        flags: 0,
                    };
                    let fd = bpf(BPF_LINK_CREATE, &mut attr);
                    if fd < 0 {
                        bail!(
                            "BPF_LINK_CREATE (XDP on {ifname}): {}",
                            std::io::Error::last_os_error()
                        );
                    }
                    // SAFETY: a new fd the kernel just returned, owned by nobody else.
                    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
                })
                .join()
                .expect("sink attach thread")
        })?;
        Ok(Self {
            _link: link,
            _prog: prog,
        })
    }
}

/// `XDP_DROP` for IPv4 frames whose destination is inside
/// `network/prefix`, `XDP_PASS` for everything else.
fn program(network: Ipv4Addr, prefix: u8) -> Result<Vec<u64>> {
    if prefix > 32 {
        bail!("prefix /{prefix} is longer than 32 bits");
    }
    let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
    // Compared as loaded: 4 bytes in memory order on a little-endian host.
    let mask_le = u32::from_le_bytes(mask.to_be_bytes());
    let net_le = u32::from_le_bytes((u32::from(network) & mask).to_be_bytes());
    let mut a = Asm::default();
    a.ldx(BPF_W, R2, R1, XDP_MD_DATA);
    a.ldx(BPF_W, R3, R1, XDP_MD_DATA_END);
    a.alu64_x(BPF_MOV, R6, R2);
    a.alu64_k(BPF_ADD, R6, DST_END);
    let short = a.jump(BPF_JGT, R6, Some(R3), 0);
    a.ldx(BPF_H, R6, R2, 12);
    // EtherType 0x0800 as loaded.
    let not_ipv4 = a.jump(BPF_JNE, R6, None, 0x0008);
    a.ldx(BPF_W, R6, R2, DST_AT);
    a.alu32_k(BPF_AND, R6, mask_le);
    a.emit(BPF_JMP32 | BPF_JNE | BPF_K, R6, 0, 0, net_le as i32);
    let outside = a.insns.len() - 1;
    a.alu64_k(BPF_MOV, R0, XDP_DROP);
    a.exit();
    for at in [short, not_ipv4, outside] {
        a.land(at);
    }
    a.alu64_k(BPF_MOV, R0, XDP_PASS);
    a.exit();
    Ok(a.insns)
}
