//! Deterministic deny lists for the XDP benchmark: a realistic mix of prefix
//! lengths, the same on every run, never covering the sources that must pass.

use std::{
    collections::HashSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use anyhow::{ensure, Context, Result};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// splitmix64: small, fast, and good enough to spread prefixes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// `count` distinct IPv4 prefixes: `first` plus random unicast ones (60 %
/// /32, 25 % /24, 15 % /16-/31), none containing any of `keep_out`.
pub fn deny_v4(count: usize, first: Ipv4Net, keep_out: &[Ipv4Addr]) -> Result<Vec<IpNet>> {
    let keep_out: Vec<IpAddr> = keep_out.iter().map(|a| IpAddr::V4(*a)).collect();
    distinct(
        count,
        first.into(),
        &keep_out,
        0x0058_6761_7465_0004,
        |rng| {
            let r = rng.next();
            let len = match r % 100 {
                0..=59 => 32,
                60..=84 => 24,
                _ => 16 + ((r >> 8) % 16) as u8,
            };
            // 1.0.0.0 - 223.255.255.255: unicast, not 0/8.
            let addr = 0x0100_0000 + ((r >> 32) as u32) % (0xE000_0000 - 0x0100_0000);
            Ipv4Net::new(Ipv4Addr::from(addr), len).ok().map(IpNet::V4)
        },
    )
    .context("IPv4 prefixes")
}

/// `count` distinct IPv6 prefixes in 2000::/3: `first` plus random ones (40 %
/// /48, 30 % /64, 15 % /56, 10 % /128, 5 % /32), none containing `keep_out`.
pub fn deny_v6(count: usize, first: Ipv6Net, keep_out: &[Ipv6Addr]) -> Result<Vec<IpNet>> {
    let keep_out: Vec<IpAddr> = keep_out.iter().map(|a| IpAddr::V6(*a)).collect();
    distinct(
        count,
        first.into(),
        &keep_out,
        0x0058_6761_7465_0006,
        |rng| {
            let r = rng.next();
            let len = match r % 100 {
                0..=39 => 48,
                40..=69 => 64,
                70..=84 => 56,
                85..=94 => 128,
                _ => 32,
            };
            let hi = (rng.next() & !(0b111 << 61)) | (0b001 << 61);
            let lo = rng.next();
            let addr = Ipv6Addr::from((u128::from(hi) << 64) | u128::from(lo));
            Ipv6Net::new(addr, len).ok().map(IpNet::V6)
        },
    )
    .context("IPv6 prefixes")
}

/// `first` and then what `draw` makes (truncated), until `count` distinct
/// prefixes none of which contains an address of `keep_out`. Bounded: each
/// try succeeds with high probability.
fn distinct(
    count: usize,
    first: IpNet,
    keep_out: &[IpAddr],
    seed: u64,
    mut draw: impl FnMut(&mut Rng) -> Option<IpNet>,
) -> Result<Vec<IpNet>> {
    let mut rng = Rng(seed);
    let mut seen = HashSet::from([first]);
    let mut out = vec![first];
    for _ in 0..count.saturating_mul(100) {
        if out.len() >= count {
            break;
        }
        let Some(net) = draw(&mut rng).map(|n| n.trunc()) else {
            continue;
        };
        if keep_out.iter().any(|a| net.contains(a)) || !seen.insert(net) {
            continue;
        }
        out.push(net);
    }
    ensure!(out.len() == count, "could not generate {count} of them");
    Ok(out)
}

/// Counts of each prefix length, e.g. `/32: 5998, /24: 2507, ...`.
pub fn length_mix(nets: &[IpNet]) -> String {
    let mut counts = std::collections::BTreeMap::new();
    for net in nets {
        *counts
            .entry(std::cmp::Reverse(net.prefix_len()))
            .or_insert(0usize) += 1;
    }
    counts
        .iter()
        .map(|(len, n)| format!("/{}: {n}", len.0))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `count` distinct addresses for an exact-match filter: the first address
/// of each prefix in `nets` (all one family), topped up with random
/// addresses of that family; none of them in `keep_out`.
pub fn exact_addresses(nets: &[IpNet], count: usize, keep_out: &[IpAddr]) -> Result<Vec<IpAddr>> {
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(count);
    for addr in nets.iter().map(IpNet::network) {
        if out.len() < count && !keep_out.contains(&addr) && seen.insert(addr) {
            out.push(addr);
        }
    }
    let v4 = nets.first().is_none_or(|n| matches!(n, IpNet::V4(_)));
    let mut rng = Rng(0x0058_6761_7465_00EA);
    for _ in 0..count.saturating_mul(100) {
        if out.len() >= count {
            break;
        }
        let addr = if v4 {
            let r = rng.next() as u32;
            IpAddr::V4(Ipv4Addr::from(
                0x0100_0000 + r % (0xE000_0000 - 0x0100_0000),
            ))
        } else {
            let hi = (rng.next() & !(0b111 << 61)) | (0b001 << 61);
            IpAddr::V6(Ipv6Addr::from(
                (u128::from(hi) << 64) | u128::from(rng.next()),
            ))
        };
        if !keep_out.contains(&addr) && seen.insert(addr) {
            out.push(addr);
        }
    }
    ensure!(out.len() == count, "could not pick {count} addresses");
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_are_distinct_deterministic_and_keep_out_the_passing_sources() {
        let keep4 = [Ipv4Addr::new(198, 51, 100, 1)];
        let a = deny_v4(10_000, "203.0.113.0/24".parse().unwrap(), &keep4).unwrap();
        let b = deny_v4(10_000, "203.0.113.0/24".parse().unwrap(), &keep4).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.iter().collect::<HashSet<_>>().len(), 10_000);
        assert!(a.iter().all(|n| !n.contains(&IpAddr::V4(keep4[0]))));
        let keep6: [Ipv6Addr; 1] = ["2001:db8:900d::1".parse().unwrap()];
        let v6 = deny_v6(10_000, "2001:db8:bad::/48".parse().unwrap(), &keep6).unwrap();
        assert_eq!(v6.iter().collect::<HashSet<_>>().len(), 10_000);
        assert!(v6.iter().all(|n| !n.contains(&IpAddr::V6(keep6[0]))));
        let keep = [IpAddr::V4(keep4[0])];
        let exact = exact_addresses(&a, 10_000, &keep).unwrap();
        assert_eq!(exact.iter().collect::<HashSet<_>>().len(), 10_000);
        assert!(exact.iter().all(|x| x.is_ipv4() && !keep.contains(x)));
        let exact6 = exact_addresses(&v6, 10_000, &[]).unwrap();
        assert!(exact6.iter().all(IpAddr::is_ipv6));
    }
}
