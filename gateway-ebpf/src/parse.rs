//! Header parsing with every access bounds-checked. What the policy needs
//! from a frame: source address, destination port, TCP SYN, fragment status.
//!
//! The same source is compiled for the host (gateway-userspace's `fuzzing`
//! module) and fuzzed there over byte slices, so the bounds logic is
//! exercised outside the verifier too: it reads the frame only through
//! [`Frame`], and imports nothing from aya-ebpf.

use core::mem;

use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
};

const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;
const VLAN_HDR_LEN: usize = 4;

const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_AH: u8 = 51;
const IPPROTO_ICMPV6: u8 = 58;
const IPPROTO_DSTOPTS: u8 = 60;

/// Extension headers walked before giving up (RFC 8200 recommends at most
/// one of each kind; six covers every legitimate chain).
const MAX_EXT_HEADERS: usize = 6;
/// No legitimate L3 header chain is longer; it also keeps offsets small
/// enough for the verifier to bound.
const MAX_L3_OFFSET: usize = 512;

/// ICMPv6 router solicitation .. redirect (RFC 4861 types 133-137).
const ND_FIRST: u8 = 133;
const ND_LAST: u8 = 137;

const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

/// A truncated or inconsistent header.
pub struct Malformed;

/// A source address: IPv6, or IPv4 in the first four bytes of `addr` and
/// zeros after them. A struct whose every byte is written, not an enum: an
/// enum's IPv4 variant leaves twelve bytes undefined, LLVM copies them
/// anyway (in registers), and the verifier refuses any read of a register
/// never written ("R8 !read_ok"), so that unrelated changes elsewhere made
/// the program fail to load.
#[derive(Clone, Copy)]
pub struct Src {
    pub addr: [u8; 16],
    pub v6: bool,
}

impl Src {
    #[inline(always)]
    pub fn v4(addr: [u8; 4]) -> Self {
        let mut full = [0u8; 16];
        full[0] = addr[0];
        full[1] = addr[1];
        full[2] = addr[2];
        full[3] = addr[3];
        Self {
            addr: full,
            v6: false,
        }
    }

    #[inline(always)]
    pub fn v6(addr: [u8; 16]) -> Self {
        Self { addr, v6: true }
    }

    /// The IPv4 address (meaningful when `!self.v6`).
    #[inline(always)]
    pub fn v4_addr(&self) -> [u8; 4] {
        [self.addr[0], self.addr[1], self.addr[2], self.addr[3]]
    }
}

pub struct Packet {
    pub src: Src,
    /// Destination port of TCP/UDP in a first (or only) fragment, when
    /// `has_port`; else 0. An integer and a flag rather than an
    /// `Option<u16>`, for the reason given at [`Src`]. Read it through
    /// [`Packet::port`].
    pub dst_port: u16,
    pub has_port: bool,
    /// A TCP segment with SYN set and ACK clear: a new connection.
    pub tcp_syn: bool,
    /// A non-first fragment: no L4 header to read.
    pub fragment: bool,
    /// ICMPv6 neighbour discovery.
    pub neighbor_discovery: bool,
}

impl Packet {
    /// The TCP/UDP destination port, if the packet has one.
    #[inline(always)]
    pub fn port(&self) -> Option<u16> {
        if self.has_port {
            Some(self.dst_port)
        } else {
            None
        }
    }
}

/// Where a frame lies in memory: all the parser asks of its context. The
/// XDP program passes its `XdpContext` (main.rs); the host build a byte
/// slice.
pub trait Frame {
    /// Address of the first byte.
    fn data(&self) -> usize;
    /// Address one past the last byte.
    fn data_end(&self) -> usize;
}

/// `Ok(None)` for frames that are not IP.
#[inline(always)]
pub fn parse<C: Frame>(ctx: &C) -> Result<Option<Packet>, Malformed> {
    let mut ether_type = read_be16(ctx, mem::offset_of!(EthHdr, ether_type))?;
    let mut offset = EthHdr::LEN;
    // Two explicit steps rather than a loop: at most an outer (802.1ad) and
    // an inner (802.1Q) tag.
    if is_vlan(ether_type) {
        ether_type = read_be16(ctx, offset + 2)?;
        offset += VLAN_HDR_LEN;
    }
    if is_vlan(ether_type) {
        ether_type = read_be16(ctx, offset + 2)?;
        offset += VLAN_HDR_LEN;
    }
    match ether_type {
        ETH_P_IPV4 => parse_v4(ctx, offset).map(Some),
        ETH_P_IPV6 => parse_v6(ctx, offset).map(Some),
        _ => Ok(None),
    }
}

#[inline(always)]
fn parse_v4<C: Frame>(ctx: &C, offset: usize) -> Result<Packet, Malformed> {
    let ip = ptr_at::<Ipv4Hdr, C>(ctx, offset)?;
    // SAFETY: `ptr_at` checked that the whole header lies inside the frame.
    let (vihl, frags, proto, src) =
        unsafe { ((*ip).vihl, (*ip).frags, (*ip).proto, (*ip).src_addr) };
    let header_len = usize::from(vihl & 0x0F) * 4;
    if vihl >> 4 != 4 || header_len < Ipv4Hdr::LEN {
        return Err(Malformed);
    }
    // The options must be inside the frame too. (Checked as the header's
    // last word: a one-byte check compiles to a comparison the verifier
    // does not accept as a bound.)
    ptr_at::<[u8; 4], C>(ctx, offset + header_len - 4)?;
    let mut packet = Packet {
        src: Src::v4(src),
        dst_port: 0,
        has_port: false,
        tcp_syn: false,
        fragment: u16::from_be_bytes(frags) & 0x1FFF != 0,
        neighbor_discovery: false,
    };
    if !packet.fragment {
        transport(ctx, offset + header_len, proto, &mut packet)?;
    }
    Ok(packet)
}

#[inline(always)]
fn parse_v6<C: Frame>(ctx: &C, offset: usize) -> Result<Packet, Malformed> {
    let ip = ptr_at::<Ipv6Hdr, C>(ctx, offset)?;
    // SAFETY: `ptr_at` checked that the whole header lies inside the frame.
    let (version, mut next, src) = unsafe { ((*ip).vcf[0] >> 4, (*ip).next_hdr, (*ip).src_addr) };
    if version != 6 {
        return Err(Malformed);
    }
    let mut packet = Packet {
        src: Src::v6(src),
        dst_port: 0,
        has_port: false,
        tcp_syn: false,
        fragment: false,
        neighbor_discovery: false,
    };
    let mut offset = offset + Ipv6Hdr::LEN;
    for _ in 0..MAX_EXT_HEADERS {
        if offset > MAX_L3_OFFSET {
            return Err(Malformed);
        }
        match next {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => {
                let header = read_pair(ctx, offset)?;
                next = header[0];
                offset += (usize::from(header[1]) + 1) * 8;
            }
            IPPROTO_AH => {
                let header = read_pair(ctx, offset)?;
                next = header[0];
                offset += (usize::from(header[1]) + 2) * 4;
            }
            IPPROTO_FRAGMENT => {
                let header = ptr_at::<[u8; 4], C>(ctx, offset)?;
                // SAFETY: bounds checked by `ptr_at`.
                let header = unsafe { *header };
                next = header[0];
                offset += 8;
                if u16::from_be_bytes([header[2], header[3]]) >> 3 != 0 {
                    packet.fragment = true;
                    return Ok(packet);
                }
            }
            _ => {
                transport(ctx, offset, next, &mut packet)?;
                return Ok(packet);
            }
        }
    }
    // Still inside an extension header chain after the bound.
    Err(Malformed)
}

/// Reads what the policy needs from the L4 header at `offset`.
#[inline(always)]
fn transport<C: Frame>(
    ctx: &C,
    offset: usize,
    proto: u8,
    packet: &mut Packet,
) -> Result<(), Malformed> {
    if offset > MAX_L3_OFFSET + 64 {
        return Err(Malformed);
    }
    match proto {
        IPPROTO_TCP => {
            // Ports (4) + sequence (4) + acknowledgement (4) + offset/flags (2).
            let header = ptr_at::<[u8; 14], C>(ctx, offset)?;
            // SAFETY: bounds checked by `ptr_at`.
            let header = unsafe { *header };
            packet.dst_port = u16::from_be_bytes([header[2], header[3]]);
            packet.has_port = true;
            packet.tcp_syn = header[13] & (TCP_SYN | TCP_ACK) == TCP_SYN;
        }
        IPPROTO_UDP => {
            let header = ptr_at::<[u8; 8], C>(ctx, offset)?;
            // SAFETY: bounds checked by `ptr_at`.
            let header = unsafe { *header };
            packet.dst_port = u16::from_be_bytes([header[2], header[3]]);
            packet.has_port = true;
        }
        IPPROTO_ICMPV6 => {
            // Type, code, checksum: the 4 bytes every ICMPv6 message has.
            let header = ptr_at::<[u8; 4], C>(ctx, offset)?;
            // SAFETY: bounds checked by `ptr_at`.
            let icmp_type = unsafe { (*header)[0] };
            packet.neighbor_discovery = (ND_FIRST..=ND_LAST).contains(&icmp_type);
        }
        _ => {}
    }
    Ok(())
}

#[inline(always)]
fn is_vlan(ether_type: u16) -> bool {
    ether_type == ETH_P_8021Q || ether_type == ETH_P_8021AD
}

/// A pointer to a `T` at `offset` in the frame, if the whole `T` is inside it.
#[inline(always)]
fn ptr_at<T, C: Frame>(ctx: &C, offset: usize) -> Result<*const T, Malformed> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + mem::size_of::<T>() > end {
        return Err(Malformed);
    }
    Ok((start + offset) as *const T)
}

#[inline(always)]
fn read_be16<C: Frame>(ctx: &C, offset: usize) -> Result<u16, Malformed> {
    let bytes = ptr_at::<[u8; 2], C>(ctx, offset)?;
    // SAFETY: bounds checked by `ptr_at`.
    Ok(u16::from_be_bytes(unsafe { *bytes }))
}

#[inline(always)]
fn read_pair<C: Frame>(ctx: &C, offset: usize) -> Result<[u8; 2], Malformed> {
    let bytes = ptr_at::<[u8; 2], C>(ctx, offset)?;
    // SAFETY: bounds checked by `ptr_at`.
    Ok(unsafe { *bytes })
}
