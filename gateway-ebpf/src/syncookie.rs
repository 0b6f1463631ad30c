//! SYN cookies from XDP for the protected listener ports (see
//! `docs/xdp.md#syn-cookies`).
//!
//! While active, a SYN to a protected port is answered here with a SYN-ACK
//! whose sequence number is a SYN cookie made by the kernel's own cookie
//! function (`bpf_tcp_raw_gen_syncookie_ipv4/6`), sent back out of the
//! interface (`XDP_TX`): the flood never reaches the stack. An ACK to a
//! protected *listener* (no connection the kernel knows yet, found with
//! `bpf_skc_lookup_tcp`) passes only with a valid cookie
//! (`bpf_tcp_raw_check_syncookie_ipv4/6`); the kernel then creates the
//! connection from it, as it does for its own cookies.
//!
//! The kernel contract: it accepts a cookie ACK only with
//! `net.ipv4.tcp_syncookies = 2`, or `1` after a SYN queue overflow, and in
//! both cases only within two minutes of the last SYN it answered with a
//! cookie itself (`tcp_synq_no_recent_overflow`). The daemon sets the sysctl
//! to 2; this program hands one SYN per (family, port) to the kernel every
//! [`REFRESH_NS`], which keeps that window open.
//!
//! By default the SYN-ACK carries the MSS option only: no window scaling,
//! SACK or timestamps (with no timestamp in the ACK the kernel takes the
//! connection without them). With `tcp_options` configured, a SYN that
//! carries a timestamp is answered with one that encodes the client's window
//! scale and SACK permission in its low six bits, as the kernel's own
//! cookies do; the kernel reads them back from the ACK's echo
//! (`cookie_timestamp_decode`, with `net.ipv4.tcp_timestamps = 2`: no
//! per-connection offset to undo), and the SYN-ACK advertises the window
//! scale the kernel will pick. Frames the program does not answer itself
//! (VLAN-tagged, IPv4 options, IPv6 extension headers, fragments) go to
//! the kernel, which answers them with its own cookies under
//! `tcp_syncookies = 2`.

use core::{mem, ptr};

use aya_ebpf::{
    bindings::{bpf_sock, bpf_sock_tuple, iphdr, ipv6hdr, tcphdr, BPF_F_CURRENT_NETNS},
    helpers::{
        bpf_ktime_get_ns,
        generated::{
            bpf_csum_diff, bpf_loop, bpf_sk_release, bpf_skc_lookup_tcp,
            bpf_tcp_raw_check_syncookie_ipv4, bpf_tcp_raw_check_syncookie_ipv6,
            bpf_tcp_raw_gen_syncookie_ipv4, bpf_tcp_raw_gen_syncookie_ipv6, bpf_xdp_adjust_tail,
            bpf_xdp_load_bytes,
        },
    },
    macros::map,
    maps::{Array, PerCpuArray},
    programs::XdpContext,
};
use gateway_common::{Stat, SynCookieConfig, PORT_WORDS, SYNCOOKIE_REFRESH_SLOTS};

/// Element 0: the settings (configured, active, MSS to advertise).
#[map(name = "SYNCOOKIE")]
static SYNCOOKIE: Array<SynCookieConfig> = Array::with_max_entries(1, 0);

/// Protected ports: bit `p % 64` of word `p / 64`.
#[map(name = "SYNCOOKIE_PORTS")]
static SYNCOOKIE_PORTS: Array<u64> = Array::with_max_entries(PORT_WORDS, 0);

/// Element 0: SYNs seen to protected ports, per CPU (the auto mode's rate).
#[map(name = "SYNCOOKIE_SYNS")]
static SYNCOOKIE_SYNS: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Index `port` (IPv4) or `65536 + port` (IPv6): when a SYN to it was last
/// handed to the kernel (coarse monotonic ns).
#[map(name = "SYNCOOKIE_REFRESH")]
static SYNCOOKIE_REFRESH: Array<u64> = Array::with_max_entries(SYNCOOKIE_REFRESH_SLOTS, 0);

/// A SYN per (family, port) goes to the kernel this often while cookies are
/// active, well inside the two minutes its listener accepts cookies after
/// answering one itself.
const REFRESH_NS: u64 = 30_000_000_000;

const ETH_LEN: usize = 14;
const IPV4_LEN: usize = 20;
const IPV6_LEN: usize = 40;
const TCP_LEN: usize = 20;
/// Header plus the MSS option.
const SYNACK_TCP_LEN: usize = 24;
/// Header plus MSS, SACK-permitted (or two NOPs), timestamps and window
/// scale (or four NOPs): the layout of the kernel's own SYN-ACKs.
const SYNACK_TS_TCP_LEN: usize = 40;
/// The low bits of a cookie timestamp that carry the options (the kernel's
/// `TSBITS`): the client's window scale (0xF: none), then SACK.
const TS_OPTION_BITS: u32 = 6;
const TS_WSCALE_NONE: u32 = 0xF;
const TS_SACK: u32 = 1 << 4;
/// The kernel's largest window scale (RFC 7323).
const MAX_WSCALE: u32 = 14;

const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const IPPROTO_TCP: u8 = 6;
const TTL: u8 = 64;
/// The SYN-ACK's window (unscaled): the client may send this much before
/// the connection's own window reaches it.
const WINDOW: u16 = 64_240;
const TCP_LISTEN: u32 = 10;

const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const ACK: u8 = 0x10;

/// Whether SYN cookies are configured at all: checked before the
/// [`guard`] subprogram is called, so that a host without them pays an
/// inlined array read instead of a call (a call and its return cost a few
/// nanoseconds where the kernel guards returns against speculation).
#[inline(always)]
pub fn configured() -> bool {
    SYNCOOKIE
        .get(0)
        .is_some_and(|c| c.flags & SynCookieConfig::CONFIGURED != 0)
}

/// What happens to a frame the lists and rate limits let through:
/// [`Stat::Passed`] unless it is a SYN or a handshake ACK to a protected
/// port while cookies are configured.
#[inline(always)]
pub fn guard(ctx: &XdpContext) -> Stat {
    let Some(config) = SYNCOOKIE.get(0) else {
        return Stat::Passed;
    };
    if config.flags & SynCookieConfig::CONFIGURED == 0 {
        return Stat::Passed;
    }
    let active = config.flags & SynCookieConfig::ACTIVE != 0;
    let data = ctx.data();
    if data + ETH_LEN + IPV4_LEN > ctx.data_end() {
        return Stat::Passed;
    }
    // SAFETY: the Ethernet header and 20 bytes after it are inside the frame.
    let (ether_type, first) = unsafe {
        (
            u16::from_be_bytes(*((data + 12) as *const [u8; 2])),
            *((data + ETH_LEN) as *const [u8; 10]),
        )
    };
    match ether_type {
        // Version 4, no options, TCP, not a fragment (MF clear, offset 0).
        ETH_P_IPV4
            if first[0] == 0x45
                && first[9] == IPPROTO_TCP
                && first[6] & 0x3F == 0
                && first[7] == 0 =>
        {
            tcp::<IPV4_LEN>(ctx, active, config)
        }
        ETH_P_IPV6 if first[0] >> 4 == 6 && first[6] == IPPROTO_TCP => {
            tcp::<IPV6_LEN>(ctx, active, config)
        }
        _ => Stat::Passed,
    }
}

/// A TCP segment behind an IP header of `L3` bytes (20: IPv4, 40: IPv6).
#[inline(always)]
fn tcp<const L3: usize>(ctx: &XdpContext, active: bool, config: &SynCookieConfig) -> Stat {
    let data = ctx.data();
    let l4 = ETH_LEN + L3;
    if data + l4 + TCP_LEN > ctx.data_end() {
        return Stat::Passed;
    }
    // SAFETY: the TCP header is inside the frame.
    let (port, tcp_flags) = unsafe {
        let th = (data + l4) as *const [u8; TCP_LEN];
        (u16::from_be_bytes([(*th)[2], (*th)[3]]), (*th)[13])
    };
    if !protected(port) {
        return Stat::Passed;
    }
    if tcp_flags & (SYN | ACK | RST | FIN) == SYN {
        count_syn();
        if !active {
            return Stat::SynPassed;
        }
        // Before the SYN can cost anything (a SYN-ACK toward its source,
        // the refresh slot): the kernel would discard it with a bad
        // checksum, so it is not answered or handed over either.
        match syn_checksum::<L3>(ctx) {
            Checksum::Good => {}
            Checksum::Bad => return Stat::SynBadChecksum,
            Checksum::Unchecked => return Stat::SynPassed,
        }
        if refresh_due(L3 == IPV6_LEN, port) {
            return Stat::SynPassed;
        }
        return answer_syn::<L3>(ctx, config);
    }
    if active && tcp_flags & (SYN | ACK | RST) == ACK {
        return check_ack::<L3>(ctx);
    }
    Stat::Passed
}

#[inline(always)]
fn protected(port: u16) -> bool {
    let word = SYNCOOKIE_PORTS
        .get(u32::from(port >> 6))
        .copied()
        .unwrap_or(0);
    word & (1u64 << (port & 63)) != 0
}

#[inline(always)]
fn count_syn() {
    if let Some(counter) = SYNCOOKIE_SYNS.get_ptr_mut(0) {
        // SAFETY: this CPU's slot; XDP runs with migration disabled.
        unsafe { *counter += 1 };
    }
}

/// Whether this SYN should go to the kernel so that its listener keeps
/// accepting cookies; records it when so. Two CPUs racing both pass one.
#[inline(always)]
fn refresh_due(v6: bool, port: u16) -> bool {
    let index = u32::from(port) + if v6 { 65_536 } else { 0 };
    let Some(stamp) = SYNCOOKIE_REFRESH.get_ptr_mut(index) else {
        return false;
    };
    let now = crate::clock::coarse_ns();
    // SAFETY: `stamp` points into the map value, valid for this run.
    unsafe {
        if *stamp != 0 && now.wrapping_sub(*stamp) < REFRESH_NS {
            return false;
        }
        *stamp = now;
    }
    true
}

/// Turns the SYN into a SYN-ACK carrying a cookie, in place: with
/// timestamps (and the options they encode) when configured and the SYN
/// carries one, else with the MSS option only.
#[inline(always)]
fn answer_syn<const L3: usize>(ctx: &XdpContext, config: &SynCookieConfig) -> Stat {
    let mss = if L3 == IPV4_LEN {
        config.mss_v4
    } else {
        config.mss_v6
    };
    if config.flags & SynCookieConfig::TCP_OPTIONS != 0 {
        if let Some(options) = syn_options::<L3>(ctx, config) {
            return write_synack::<L3, SYNACK_TS_TCP_LEN>(ctx, mss, Some(options));
        }
    }
    write_synack::<L3, SYNACK_TCP_LEN>(ctx, mss, None)
}

/// What the SYN-ACK's options say beyond the MSS.
#[derive(Clone, Copy)]
struct Options {
    /// The cookie timestamp: the clock in ms, its low bits the options.
    tsval: u32,
    /// The SYN's own timestamp, echoed.
    tsecr: u32,
    sack: bool,
    /// The window scale advertised, when the SYN asked for scaling.
    wscale: Option<u8>,
}

/// The SYN's timestamp, SACK-permitted and window scale options, read
/// into [`Options`] when it carries a timestamp (without one the ACK cannot
/// bring the options back to the kernel).
#[inline(always)]
fn syn_options<const L3: usize>(ctx: &XdpContext, config: &SynCookieConfig) -> Option<Options> {
    let data = ctx.data();
    let end = ctx.data_end();
    let l4 = ETH_LEN + L3;
    if data + l4 + TCP_LEN > end {
        return None;
    }
    // SAFETY: the fixed TCP header is inside the frame (checked above).
    let th_len = usize::from(unsafe { *((data + l4 + 12) as *const u8) } >> 4) * 4;
    if th_len <= TCP_LEN {
        return None;
    }
    let len = th_len - TCP_LEN;
    // The options, copied to the stack where the parser may index them
    // freely (masked to the buffer); zeros (end of options) after them. One
    // helper call whatever their length.
    let mut parse = OptionParse {
        buf: [0u8; 64],
        len: len as u32,
        off: 0,
        tsval: 0,
        has_ts: 0,
        sack: 0,
        wscale: TS_WSCALE_NONE,
    };
    // SAFETY: the context is the program's own; `buf` holds 64 bytes and
    // at most 40 are written.
    let loaded = unsafe {
        bpf_xdp_load_bytes(
            ctx.ctx,
            (l4 + TCP_LEN) as u32,
            parse.buf.as_mut_ptr() as *mut _,
            (len & 63) as u32,
        )
    };
    if loaded != 0 {
        return None;
    }
    // One option per step, 40 at most (all NOPs). With `bpf_loop` the
    // verifier checks the step once, not once per step and path.
    // SAFETY: the callback is a static function taking this context.
    unsafe {
        bpf_loop(
            40,
            parse_option as *const () as *mut _,
            &mut parse as *mut OptionParse as *mut _,
            0,
        )
    };
    if parse.has_ts == 0 {
        return None;
    }
    let tsecr = parse.tsval;
    let sack = parse.sack != 0;
    let mut client_wscale = parse.wscale;
    let sack = sack && config.flags & SynCookieConfig::SACK != 0;
    if config.flags & SynCookieConfig::WINDOW_SCALING == 0 {
        client_wscale = TS_WSCALE_NONE;
    }
    let mut bits = client_wscale;
    if sack {
        bits |= TS_SACK;
    }
    // SAFETY: helper without arguments.
    let now_ms = (unsafe { bpf_ktime_get_ns() } / 1_000_000) as u32;
    let mask = (1u32 << TS_OPTION_BITS) - 1;
    let mut stamp = (now_ms & !mask) | bits;
    // Never ahead of the clock the kernel stamps the connection's later
    // segments with (the client's PAWS check).
    if stamp > now_ms {
        stamp = stamp.wrapping_sub(1 << TS_OPTION_BITS);
    }
    Some(Options {
        tsval: stamp,
        tsecr,
        sack,
        wscale: if client_wscale == TS_WSCALE_NONE {
            None
        } else {
            Some(config.wscale())
        },
    })
}

/// The state of the SYN option parser, handed to [`parse_option`].
#[repr(C)]
struct OptionParse {
    buf: [u8; 64],
    /// Bytes of options in `buf`.
    len: u32,
    /// The next option's offset in `buf`.
    off: u32,
    tsval: u32,
    has_ts: u32,
    sack: u32,
    /// The client's window scale, or [`TS_WSCALE_NONE`].
    wscale: u32,
}

/// One step of the option parser (a `bpf_loop` callback): reads the option
/// at `off`; returns 1 to stop (end of options, or one that is cut short),
/// 0 to go on.
#[inline(never)]
extern "C" fn parse_option(_index: u32, ctx: *mut core::ffi::c_void) -> i64 {
    // SAFETY: `syn_options` passes its OptionParse, alive for the loop.
    let p = unsafe { &mut *(ctx as *mut OptionParse) };
    let off = p.off as usize & 63;
    if off >= p.len as usize {
        return 1;
    }
    let kind = p.buf[off];
    if kind == 0 {
        return 1;
    }
    if kind == 1 {
        p.off += 1;
        return 0;
    }
    let size = usize::from(p.buf[(off + 1) & 63]);
    if size < 2 || off + size > p.len as usize {
        return 1;
    }
    match (kind, size) {
        (3, 3) => {
            let w = u32::from(p.buf[(off + 2) & 63]);
            p.wscale = if w > MAX_WSCALE { MAX_WSCALE } else { w };
        }
        (4, 2) => p.sack = 1,
        (8, 10) => {
            p.has_ts = 1;
            p.tsval = u32::from_be_bytes([
                p.buf[(off + 2) & 63],
                p.buf[(off + 3) & 63],
                p.buf[(off + 4) & 63],
                p.buf[(off + 5) & 63],
            ]);
        }
        _ => {}
    }
    p.off = (off + size) as u32;
    0
}

/// Rewrites the SYN into a SYN-ACK with a `T`-byte TCP header: the MSS
/// option, and with `options` the timestamps, SACK and window scale.
#[inline(always)]
fn write_synack<const L3: usize, const T: usize>(
    ctx: &XdpContext,
    mss: u16,
    options: Option<Options>,
) -> Stat {
    let l4 = ETH_LEN + L3;
    let len = ctx.data_end() - ctx.data();
    // A SYN shorter than the SYN-ACK grows (into the frame's tailroom).
    if len < l4 + T {
        // SAFETY: the context is the program's own.
        if unsafe { bpf_xdp_adjust_tail(ctx.ctx, (l4 + T - len) as i32) } != 0 {
            return Stat::SynPassed;
        }
    }
    let data = ctx.data();
    let end = ctx.data_end();
    if data + l4 + T > end {
        return Stat::SynPassed;
    }
    let ip = (data + ETH_LEN) as *mut u8;
    let th = (data + l4) as *mut u8;
    // SAFETY (this block and the writes below): every byte touched is in
    // data .. data + l4 + T, checked above.
    let th_len = u32::from(unsafe { *th.add(12) } >> 4) * 4;
    let value = cookie::<L3>(data, end, th_len);
    if value < 0 {
        // A header that is not all there, or cookies unavailable
        // (CONFIG_SYN_COOKIES off): the kernel decides.
        return Stat::SynPassed;
    }
    // The low 32 bits; the MSS the cookie encodes is in the high ones.
    let cookie = value as u32;

    // Ethernet: back to the sender.
    unsafe {
        let dst = ptr::read_unaligned(data as *const [u8; 6]);
        let src = ptr::read_unaligned((data + 6) as *const [u8; 6]);
        ptr::write_unaligned(data as *mut [u8; 6], src);
        ptr::write_unaligned((data + 6) as *mut [u8; 6], dst);
    }
    // The one's complement sum of the pseudo header's addresses.
    let mut sum: u32 = 0;
    unsafe {
        if L3 == IPV4_LEN {
            let src = ptr::read_unaligned(ip.add(12) as *const [u8; 4]);
            let dst = ptr::read_unaligned(ip.add(16) as *const [u8; 4]);
            sum += words(&src) + words(&dst);
            let header: [u8; 12] = [
                0x45,
                0,
                0,
                (IPV4_LEN + T) as u8,
                0,
                0,
                0x40, // don't fragment
                0,
                TTL,
                IPPROTO_TCP,
                0,
                0,
            ];
            let ip_sum = words(&header) + words(&src) + words(&dst);
            let check = fold(ip_sum).to_be_bytes();
            let mut out = header;
            out[10] = check[0];
            out[11] = check[1];
            ptr::write_unaligned(ip as *mut [u8; 12], out);
            ptr::write_unaligned(ip.add(12) as *mut [u8; 4], dst);
            ptr::write_unaligned(ip.add(16) as *mut [u8; 4], src);
        } else {
            let src = ptr::read_unaligned(ip.add(8) as *const [u8; 16]);
            let dst = ptr::read_unaligned(ip.add(24) as *const [u8; 16]);
            sum += words(&src) + words(&dst);
            let header: [u8; 8] = [0x60, 0, 0, 0, 0, T as u8, IPPROTO_TCP, TTL];
            ptr::write_unaligned(ip as *mut [u8; 8], header);
            ptr::write_unaligned(ip.add(8) as *mut [u8; 16], dst);
            ptr::write_unaligned(ip.add(24) as *mut [u8; 16], src);
        }
    }
    sum += u32::from(IPPROTO_TCP) + T as u32;
    unsafe {
        let old = ptr::read_unaligned(th as *const [u8; 8]);
        let seq = u32::from_be_bytes([old[4], old[5], old[6], old[7]]);
        let ack = seq.wrapping_add(1).to_be_bytes();
        let cookie = cookie.to_be_bytes();
        let window = WINDOW.to_be_bytes();
        let mss = mss.to_be_bytes();
        let mut out = [0u8; T];
        out[..20].copy_from_slice(&[
            old[2],
            old[3],
            old[0],
            old[1], // ports swapped
            cookie[0],
            cookie[1],
            cookie[2],
            cookie[3],
            ack[0],
            ack[1],
            ack[2],
            ack[3],
            (T as u8 / 4) << 4,
            SYN | ACK,
            window[0],
            window[1],
            0,
            0, // checksum
            0,
            0, // urgent pointer
        ]);
        out[20..24].copy_from_slice(&[2, 4, mss[0], mss[1]]);
        if let Some(o) = options {
            if T >= SYNACK_TS_TCP_LEN {
                let sack = if o.sack { [4, 2] } else { [1, 1] };
                let tsval = o.tsval.to_be_bytes();
                let tsecr = o.tsecr.to_be_bytes();
                let wscale = match o.wscale {
                    Some(w) => [1, 3, 3, w],
                    None => [1, 1, 1, 1],
                };
                out[24..40].copy_from_slice(&[
                    sack[0], sack[1], 8, 10, tsval[0], tsval[1], tsval[2], tsval[3], tsecr[0],
                    tsecr[1], tsecr[2], tsecr[3], wscale[0], wscale[1], wscale[2], wscale[3],
                ]);
            }
        }
        let check = fold(sum + words(&out)).to_be_bytes();
        out[16] = check[0];
        out[17] = check[1];
        ptr::write_unaligned(th as *mut [u8; T], out);
    }
    let delta = (l4 + T) as i32 - (end - data) as i32;
    // SAFETY: the context is the program's own; shrinking.
    if unsafe { bpf_xdp_adjust_tail(ctx.ctx, delta) } != 0 {
        return Stat::Malformed;
    }
    Stat::SynCookieSent
}

/// The kernel's cookie for the SYN whose TCP header (`th_len` bytes) is at
/// `data + ETH_LEN + L3`, or a negative errno. The helper reads the whole
/// header, so the verifier must see all of it inside the frame: one branch
/// per header length, each with its constant, rather than growing every
/// frame to the longest header (a copied frame may have only a few bytes
/// of tailroom).
#[inline(always)]
fn cookie<const L3: usize>(data: usize, end: usize, th_len: u32) -> i64 {
    macro_rules! by_length {
        ($($n:literal)*) => {
            match th_len {
                $($n => cookie_sized::<L3, $n>(data, end),)*
                _ => -1,
            }
        };
    }
    by_length!(20 24 28 32 36 40 44 48 52 56 60)
}

#[inline(always)]
fn cookie_sized<const L3: usize, const N: usize>(data: usize, end: usize) -> i64 {
    let l4 = ETH_LEN + L3;
    if data + l4 + N > end {
        return -1;
    }
    let ip = (data + ETH_LEN) as *mut u8;
    let th = (data + l4) as *mut tcphdr;
    // SAFETY: the IP header and the N-byte TCP header are inside the frame.
    unsafe {
        if L3 == IPV4_LEN {
            bpf_tcp_raw_gen_syncookie_ipv4(ip as *mut iphdr, th, N as u32)
        } else {
            bpf_tcp_raw_gen_syncookie_ipv6(ip as *mut ipv6hdr, th, N as u32)
        }
    }
}

/// What the TCP checksum of a SYN says.
enum Checksum {
    Good,
    Bad,
    /// Not verifiable here: a SYN carrying data (TCP Fast Open), with
    /// inconsistent lengths, or with a checksum left to offload. The kernel
    /// decides: it verifies the checksum itself and answers with its own
    /// cookie under `tcp_syncookies = 2`.
    Unchecked,
}

/// Verifies the TCP checksum of the SYN at `ETH_LEN + L3`: the one's
/// complement sum of the pseudo header and the whole segment must be
/// `0xFFFF`. Only SYNs without data are checked here, so the segment is
/// the header (20 to 60 bytes), summed by `bpf_csum_diff` in one call.
/// The segment's length comes from the IP header, not from the frame (a
/// short frame is padded to Ethernet's 60 bytes).
#[inline(always)]
fn syn_checksum<const L3: usize>(ctx: &XdpContext) -> Checksum {
    let data = ctx.data();
    let end = ctx.data_end();
    let l4 = ETH_LEN + L3;
    if data + l4 + TCP_LEN > end {
        return Checksum::Unchecked;
    }
    let ip = (data + ETH_LEN) as *const u8;
    // SAFETY: the IP header and the fixed TCP header are inside the frame.
    let (segment_len, th_len, check, mut sum) = unsafe {
        let th = (data + l4) as *const u8;
        let th_len = u32::from(*th.add(12) >> 4) * 4;
        let check = u16::from_be_bytes(ptr::read_unaligned(th.add(16) as *const [u8; 2]));
        if L3 == IPV4_LEN {
            let total = u32::from(u16::from_be_bytes(ptr::read_unaligned(
                ip.add(2) as *const [u8; 2]
            )));
            let addrs = ptr::read_unaligned(ip.add(12) as *const [u8; 8]);
            (
                total.wrapping_sub(IPV4_LEN as u32),
                th_len,
                check,
                words(&addrs),
            )
        } else {
            let payload = u32::from(u16::from_be_bytes(ptr::read_unaligned(
                ip.add(4) as *const [u8; 2]
            )));
            let addrs = ptr::read_unaligned(ip.add(8) as *const [u8; 32]);
            (payload, th_len, check, words(&addrs))
        }
    };
    if segment_len != th_len {
        return Checksum::Unchecked;
    }
    sum += u32::from(IPPROTO_TCP) + segment_len;
    let pseudo = sum;
    macro_rules! by_length {
        ($($n:literal)*) => {
            match th_len {
                $($n => segment_sum::<L3, $n>(data, end),)*
                _ => -1,
            }
        };
    }
    let segment = by_length!(20 24 28 32 36 40 44 48 52 56 60);
    if segment < 0 {
        return Checksum::Unchecked;
    }
    // The helper sums 32-bit words as loaded (little-endian): folded to
    // 16 bits and byte-swapped it is the sum of the big-endian 16-bit words
    // (one's complement addition commutes with the byte swap).
    let segment = segment as u32;
    let segment = (segment & 0xFFFF) + (segment >> 16);
    let segment = (segment & 0xFFFF) + (segment >> 16);
    sum += u32::from((segment as u16).swap_bytes());
    if fold(sum) == 0 {
        Checksum::Good
    } else if check == !fold(pseudo) {
        // The field holds only the pseudo header's sum: what a sender's
        // stack leaves for checksum offload (CHECKSUM_PARTIAL), seen by XDP
        // on veth when the sender is a local namespace or container (never
        // from a NIC). Only the kernel knows whether the frame is such a
        // local one (it then accepts it) or came off the wire (it then drops
        // it): it decides, without the refresh slot.
        Checksum::Unchecked
    } else {
        Checksum::Bad
    }
}

/// `bpf_csum_diff` over the `N`-byte TCP header at `data + ETH_LEN + L3`
/// (the verifier needs the size constant and the bytes inside the frame),
/// or a negative errno.
#[inline(always)]
fn segment_sum<const L3: usize, const N: usize>(data: usize, end: usize) -> i64 {
    let th = data + ETH_LEN + L3;
    if th + N > end {
        return -1;
    }
    // SAFETY: the N bytes are inside the frame (checked above); the helper
    // only reads them.
    unsafe { bpf_csum_diff(ptr::null_mut(), 0, th as *mut u32, N as u32, 0) }
}

/// An ACK to a protected port: a connection the kernel knows passes; one
/// that would reach the listener needs a valid cookie.
#[inline(always)]
fn check_ack<const L3: usize>(ctx: &XdpContext) -> Stat {
    let data = ctx.data();
    let l4 = ETH_LEN + L3;
    if data + l4 + TCP_LEN > ctx.data_end() {
        return Stat::Passed;
    }
    let ip = (data + ETH_LEN) as *mut u8;
    let th = (data + l4) as *mut u8;
    // SAFETY: the tuple is plain data; zero is a valid value.
    let mut tuple: bpf_sock_tuple = unsafe { mem::zeroed() };
    // SAFETY: every byte read is inside the frame (checked above).
    let size = unsafe {
        let ports = ptr::read_unaligned(th as *const [u8; 4]);
        let sport = u16::from_ne_bytes([ports[0], ports[1]]);
        let dport = u16::from_ne_bytes([ports[2], ports[3]]);
        if L3 == IPV4_LEN {
            let v4 = &mut tuple.__bindgen_anon_1.ipv4;
            v4.saddr = u32::from_ne_bytes(ptr::read_unaligned(ip.add(12) as *const [u8; 4]));
            v4.daddr = u32::from_ne_bytes(ptr::read_unaligned(ip.add(16) as *const [u8; 4]));
            v4.sport = sport;
            v4.dport = dport;
            mem::size_of_val(v4)
        } else {
            let v6 = &mut tuple.__bindgen_anon_1.ipv6;
            v6.saddr = addr_words(ptr::read_unaligned(ip.add(8) as *const [u8; 16]));
            v6.daddr = addr_words(ptr::read_unaligned(ip.add(24) as *const [u8; 16]));
            v6.sport = sport;
            v6.dport = dport;
            mem::size_of_val(v6)
        }
    };
    // SAFETY: the tuple lives on the stack for the call; a socket found is
    // released before the next helper call.
    let sk = unsafe {
        bpf_skc_lookup_tcp(
            ctx.ctx as *mut _,
            &mut tuple,
            size as u32,
            BPF_F_CURRENT_NETNS as u64,
            0,
        )
    };
    if sk.is_null() {
        // No socket: the kernel answers with a reset.
        return Stat::Passed;
    }
    // SAFETY: `sk` is a referenced socket until released.
    let state = unsafe { (*(sk as *const bpf_sock)).state };
    unsafe { bpf_sk_release(sk as *mut _) };
    if state != TCP_LISTEN {
        return Stat::Passed;
    }
    // SAFETY: both headers are inside the frame (checked above).
    let result = unsafe {
        if L3 == IPV4_LEN {
            bpf_tcp_raw_check_syncookie_ipv4(ip as *mut iphdr, th as *mut tcphdr)
        } else {
            bpf_tcp_raw_check_syncookie_ipv6(ip as *mut ipv6hdr, th as *mut tcphdr)
        }
    };
    if result == 0 {
        Stat::SynCookieValid
    } else {
        Stat::SynCookieInvalid
    }
}

/// Sum of the big-endian 16-bit words of `bytes` (even length).
#[inline(always)]
fn words<const N: usize>(bytes: &[u8; N]) -> u32 {
    let mut sum = 0u32;
    let mut i = 0;
    while i + 1 < N {
        sum += u32::from(u16::from_be_bytes([bytes[i], bytes[i + 1]]));
        i += 2;
    }
    sum
}

/// The one's complement checksum of a sum of 16-bit words.
#[inline(always)]
fn fold(sum: u32) -> u16 {
    let sum = (sum & 0xFFFF) + (sum >> 16);
    let sum = (sum & 0xFFFF) + (sum >> 16);
    !(sum as u16)
}

#[inline(always)]
fn addr_words(a: [u8; 16]) -> [u32; 4] {
    [
        u32::from_ne_bytes([a[0], a[1], a[2], a[3]]),
        u32::from_ne_bytes([a[4], a[5], a[6], a[7]]),
        u32::from_ne_bytes([a[8], a[9], a[10], a[11]]),
        u32::from_ne_bytes([a[12], a[13], a[14], a[15]]),
    ]
}
