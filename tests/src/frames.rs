//! Crafted Ethernet frames for BPF_PROG_TEST_RUN tests and benchmarks.
//! Checksums are left zero: the XDP program does not read them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub const ETH_P_IPV4: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86DD;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88A8;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;

const DST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

/// Ethernet header with `vlans` (TPID, VLAN id) tags, then `payload`.
pub fn ethernet(vlans: &[(u16, u16)], ether_type: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(64 + payload.len());
    f.extend_from_slice(&DST_MAC);
    f.extend_from_slice(&SRC_MAC);
    for (tpid, vid) in vlans {
        f.extend_from_slice(&tpid.to_be_bytes());
        f.extend_from_slice(&(vid & 0x0FFF).to_be_bytes());
    }
    f.extend_from_slice(&ether_type.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// IPv4 header (with `options`, so IHL = 5 + options/4) and payload.
pub fn ipv4_with_options(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: u8,
    options: &[u8],
    payload: &[u8],
) -> Vec<u8> {
    assert_eq!(options.len() % 4, 0, "IPv4 options are whole words");
    let header_len = 20 + options.len();
    let total = (header_len + payload.len()) as u16;
    let mut p = Vec::with_capacity(total as usize);
    p.push(0x40 | (header_len / 4) as u8);
    p.push(0);
    p.extend_from_slice(&total.to_be_bytes());
    p.extend_from_slice(&[0, 1, 0x40, 0]); // id 1, DF
    p.push(64);
    p.push(proto);
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(options);
    p.extend_from_slice(payload);
    p
}

pub fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, payload: &[u8]) -> Vec<u8> {
    ipv4_with_options(src, dst, proto, &[], payload)
}

pub fn ipv6(src: Ipv6Addr, dst: Ipv6Addr, next_header: u8, payload: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(40 + payload.len());
    p.extend_from_slice(&[0x60, 0, 0, 0]);
    p.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    p.push(next_header);
    p.push(64);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(payload);
    p
}

pub fn udp(src_port: u16, dst_port: u16, payload: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(8 + payload.len());
    p.extend_from_slice(&src_port.to_be_bytes());
    p.extend_from_slice(&dst_port.to_be_bytes());
    p.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(payload);
    p
}

/// A UDP datagram from `src` to `dst` in an untagged frame.
pub fn udp4_frame(src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    ethernet(
        &[],
        ETH_P_IPV4,
        &ipv4(src, dst, IPPROTO_UDP, &udp(40000, 8080, b"xgate")),
    )
}

pub fn udp6_frame(src: Ipv6Addr, dst: Ipv6Addr) -> Vec<u8> {
    ethernet(
        &[],
        ETH_P_IPV6,
        &ipv6(src, dst, IPPROTO_UDP, &udp(40000, 8080, b"xgate")),
    )
}

/// ICMPv6 message of `icmp_type` (135 = neighbour solicitation).
pub fn icmpv6_frame(src: Ipv6Addr, dst: Ipv6Addr, icmp_type: u8) -> Vec<u8> {
    let mut icmp = vec![icmp_type, 0, 0, 0];
    icmp.extend_from_slice(&[0; 20]);
    ethernet(&[], ETH_P_IPV6, &ipv6(src, dst, IPPROTO_ICMPV6, &icmp))
}

/// An ARP request (who-has `target` tell `sender`).
pub fn arp_frame(sender: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let mut p = vec![0, 1, 0x08, 0x00, 6, 4, 0, 1];
    p.extend_from_slice(&SRC_MAC);
    p.extend_from_slice(&sender.octets());
    p.extend_from_slice(&[0; 6]);
    p.extend_from_slice(&target.octets());
    ethernet(&[], ETH_P_ARP, &p)
}

pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_HOPOPTS: u8 = 0;
pub const IPPROTO_ROUTING: u8 = 43;
pub const IPPROTO_FRAGMENT: u8 = 44;
pub const IPPROTO_AH: u8 = 51;
pub const IPPROTO_DSTOPTS: u8 = 60;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_ACK: u8 = 0x10;

/// A 20-byte TCP header with `flags`.
pub fn tcp(src_port: u16, dst_port: u16, flags: u8) -> Vec<u8> {
    let mut p = Vec::with_capacity(20);
    p.extend_from_slice(&src_port.to_be_bytes());
    p.extend_from_slice(&dst_port.to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0]);
    p.push(5 << 4);
    p.push(flags);
    p.extend_from_slice(&[0xff, 0xff, 0, 0, 0, 0]);
    p
}

pub fn tcp4_frame(src: Ipv4Addr, dst: Ipv4Addr, dst_port: u16, flags: u8) -> Vec<u8> {
    ethernet(
        &[],
        ETH_P_IPV4,
        &ipv4(src, dst, IPPROTO_TCP, &tcp(40000, dst_port, flags)),
    )
}

pub fn udp4_to(src: Ipv4Addr, dst: Ipv4Addr, dst_port: u16) -> Vec<u8> {
    ethernet(
        &[],
        ETH_P_IPV4,
        &ipv4(src, dst, IPPROTO_UDP, &udp(40000, dst_port, b"xgate")),
    )
}

/// An IPv4 fragment: `offset` in 8-byte units, `more` = MF flag.
pub fn ipv4_fragment(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: u8,
    offset: u16,
    more: bool,
    payload: &[u8],
) -> Vec<u8> {
    let mut p = ipv4(src, dst, proto, payload);
    let field = offset & 0x1FFF | if more { 0x2000 } else { 0 };
    p[6..8].copy_from_slice(&field.to_be_bytes());
    ethernet(&[], ETH_P_IPV4, &p)
}

/// One IPv6 extension header of `kind` whose next header is `next`, with
/// `payload` (the rest of the packet) behind it. Fragment headers take
/// `frag_offset` (8-byte units).
pub fn ipv6_ext(kind: u8, next: u8, frag_offset: u16, payload: &[u8]) -> Vec<u8> {
    let mut h = match kind {
        IPPROTO_AH => {
            let mut h = vec![next, 1];
            h.resize(12, 0);
            h
        }
        IPPROTO_FRAGMENT => {
            let mut h = vec![next, 0];
            h.extend_from_slice(&(frag_offset << 3).to_be_bytes());
            h.extend_from_slice(&[0, 0, 0, 7]);
            h
        }
        _ => {
            let mut h = vec![next, 0];
            h.resize(8, 0);
            h
        }
    };
    h.extend_from_slice(payload);
    h
}

/// The Internet checksum (RFC 1071) of `bytes`.
pub fn internet_checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xFFFF) + (sum >> 16);
    }
    !(sum as u16)
}

/// A TCP header (an MSS option on SYNs) with its checksum over
/// `pseudo_addrs` (source then destination address) filled in.
fn tcp_header(pseudo_addrs: &[u8], ports: (u16, u16), flags: u8, seq: u32, ack: u32) -> Vec<u8> {
    let syn = flags & TCP_SYN != 0;
    let mut t = Vec::with_capacity(24);
    t.extend_from_slice(&ports.0.to_be_bytes());
    t.extend_from_slice(&ports.1.to_be_bytes());
    t.extend_from_slice(&seq.to_be_bytes());
    t.extend_from_slice(&ack.to_be_bytes());
    t.push(if syn { 6 << 4 } else { 5 << 4 });
    t.push(flags);
    t.extend_from_slice(&[0xFA, 0xF0, 0, 0, 0, 0]);
    if syn {
        t.extend_from_slice(&[2, 4, 0x05, 0xB4]);
    }
    let mut pseudo = Vec::with_capacity(pseudo_addrs.len() + 4 + t.len());
    pseudo.extend_from_slice(pseudo_addrs);
    pseudo.extend_from_slice(&[0, IPPROTO_TCP, 0, t.len() as u8]);
    pseudo.extend_from_slice(&t);
    let check = internet_checksum(&pseudo);
    t[16..18].copy_from_slice(&check.to_be_bytes());
    t
}

/// A TCP segment over IPv4 or IPv6 that a real stack accepts: addressed to
/// `dst_mac`, IP (v4) and TCP checksums filled in, an MSS option on SYNs.
pub fn tcp_segment<A: Into<IpAddr>>(
    dst_mac: [u8; 6],
    src: (A, u16),
    dst: (A, u16),
    flags: u8,
    seq: u32,
    ack: u32,
) -> Vec<u8> {
    let ports = (src.1, dst.1);
    let mut frame = match (src.0.into(), dst.0.into()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let t = tcp_header(&[s.octets(), d.octets()].concat(), ports, flags, seq, ack);
            let mut ip = ipv4(s, d, IPPROTO_TCP, &t);
            let check = internet_checksum(&ip[..20]);
            ip[10..12].copy_from_slice(&check.to_be_bytes());
            ethernet(&[], ETH_P_IPV4, &ip)
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let t = tcp_header(&[s.octets(), d.octets()].concat(), ports, flags, seq, ack);
            ethernet(&[], ETH_P_IPV6, &ipv6(s, d, IPPROTO_TCP, &t))
        }
        (s, d) => panic!("a TCP segment from {s} to {d}: mixed address families"),
    };
    frame[..6].copy_from_slice(&dst_mac);
    frame
}

/// The options a Linux client's SYN carries: MSS 1460, SACK permitted,
/// timestamps (value 0x01020304, echo 0), NOP, window scale 7.
pub const LINUX_SYN_OPTIONS: [u8; 20] = [
    2, 4, 0x05, 0xB4, 4, 2, 8, 10, 1, 2, 3, 4, 0, 0, 0, 0, 1, 3, 3, 7,
];

/// An IPv4 TCP frame made by [`tcp_segment`] with its options replaced by
/// `options` (a multiple of 4 bytes, at most 40): the data offset, the IP
/// length and both checksums follow.
pub fn with_tcp_options(frame: &[u8], options: &[u8]) -> Vec<u8> {
    assert_eq!(frame[12..14], ETH_P_IPV4.to_be_bytes(), "an IPv4 frame");
    assert!(
        options.len().is_multiple_of(4) && options.len() <= 40,
        "{options:?}"
    );
    let ip = 14;
    let l4 = ip + usize::from(frame[ip] & 0x0F) * 4;
    let mut out = frame[..l4 + 20].to_vec();
    out.extend_from_slice(options);
    out[l4 + 12] = ((20 + options.len()) as u8 / 4) << 4;
    let total = (out.len() - ip) as u16;
    out[ip + 2..ip + 4].copy_from_slice(&total.to_be_bytes());
    out[ip + 10..ip + 12].fill(0);
    let check = internet_checksum(&out[ip..l4]);
    out[ip + 10..ip + 12].copy_from_slice(&check.to_be_bytes());
    out[l4 + 16..l4 + 18].fill(0);
    let segment = &out[l4..];
    let mut pseudo = Vec::with_capacity(12 + segment.len());
    pseudo.extend_from_slice(&out[ip + 12..ip + 20]);
    pseudo.extend_from_slice(&[0, IPPROTO_TCP]);
    pseudo.extend_from_slice(&(segment.len() as u16).to_be_bytes());
    pseudo.extend_from_slice(segment);
    let check = internet_checksum(&pseudo);
    out[l4 + 16..l4 + 18].copy_from_slice(&check.to_be_bytes());
    out
}

/// Where the TCP checksum of a frame made by [`tcp_segment`] is (IPv4
/// without options, or IPv6 without extension headers).
pub fn tcp_checksum_at(frame: &[u8]) -> std::ops::Range<usize> {
    let l4 = if frame[12..14] == ETH_P_IPV6.to_be_bytes() {
        14 + 40
    } else {
        14 + 20
    };
    l4 + 16..l4 + 18
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replacing_a_syn_s_options_with_its_own_changes_nothing() {
        let syn = tcp_segment(
            [2, 0, 0, 0, 0, 1],
            (Ipv4Addr::new(203, 0, 113, 9), 4000),
            (Ipv4Addr::new(198, 18, 0, 1), 443),
            TCP_SYN,
            7,
            0,
        );
        assert_eq!(with_tcp_options(&syn, &[2, 4, 0x05, 0xB4]), syn);
        let linux = with_tcp_options(&syn, &LINUX_SYN_OPTIONS);
        assert_eq!(linux.len(), syn.len() + 16);
        // Both checksums hold: the one's complement sums come out zero.
        assert_eq!(internet_checksum(&linux[14..34]), 0);
        let mut pseudo = linux[26..34].to_vec();
        pseudo.extend_from_slice(&[0, IPPROTO_TCP, 0, 40]);
        pseudo.extend_from_slice(&linux[34..]);
        assert_eq!(internet_checksum(&pseudo), 0);
    }
}
