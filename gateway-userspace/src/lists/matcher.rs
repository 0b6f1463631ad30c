//! Longest-prefix source matching for the L7 connection guard: the same lists
//! the XDP program enforces, applied at accept time so they hold when XDP is
//! not attached (no privilege) or the traffic arrives on another interface.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    time::SystemTime,
};

use ipnet::IpNet;

/// Prefixes bucketed by prefix length, so a lookup costs one hash probe
/// per distinct length in use (at most 33 for IPv4, 129 for IPv6).
#[derive(Debug, Default, Clone)]
pub struct PrefixSet {
    /// prefix length (longest first) → network → expiry.
    v4: BTreeMap<std::cmp::Reverse<u8>, HashMap<IpNet, Option<SystemTime>>>,
    v6: BTreeMap<std::cmp::Reverse<u8>, HashMap<IpNet, Option<SystemTime>>>,
}

impl PrefixSet {
    pub fn insert(&mut self, net: IpNet, expires_at: Option<SystemTime>) {
        let buckets = match net {
            IpNet::V4(_) => &mut self.v4,
            IpNet::V6(_) => &mut self.v6,
        };
        buckets
            .entry(std::cmp::Reverse(net.prefix_len()))
            .or_default()
            .insert(net, expires_at);
    }

    /// The longest unexpired prefix that contains `ip`, if any.
    pub fn matching(&self, ip: IpAddr, now: SystemTime) -> Option<IpNet> {
        // An IPv4-mapped IPv6 peer (dual-stack listener) is an IPv4 client.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        let buckets = match ip {
            IpAddr::V4(_) => &self.v4,
            IpAddr::V6(_) => &self.v6,
        };
        buckets.iter().find_map(|(std::cmp::Reverse(len), nets)| {
            let net = IpNet::new(ip, *len).ok()?.trunc();
            match nets.get(&net) {
                Some(None) => Some(net),
                Some(Some(expiry)) if *expiry > now => Some(net),
                _ => None,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn longest_prefix_and_families() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let mut set = PrefixSet::default();
        set.insert(net("203.0.113.0/24"), None);
        set.insert(net("203.0.113.7/32"), None);
        set.insert(net("2001:db8::/32"), None);
        assert_eq!(
            set.matching("203.0.113.7".parse().unwrap(), now),
            Some(net("203.0.113.7/32"))
        );
        assert_eq!(
            set.matching("203.0.113.8".parse().unwrap(), now),
            Some(net("203.0.113.0/24"))
        );
        assert_eq!(set.matching("203.0.114.1".parse().unwrap(), now), None);
        assert_eq!(
            set.matching("2001:db8::1".parse().unwrap(), now),
            Some(net("2001:db8::/32"))
        );
        assert_eq!(
            set.matching("::ffff:203.0.113.9".parse().unwrap(), now),
            Some(net("203.0.113.0/24"))
        );
    }

    #[test]
    fn expired_entries_do_not_match_but_broader_ones_still_do() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let mut set = PrefixSet::default();
        set.insert(net("198.51.100.0/24"), None);
        set.insert(net("198.51.100.1/32"), Some(now - Duration::from_secs(1)));
        set.insert(net("192.0.2.0/24"), Some(now + Duration::from_secs(1)));
        assert_eq!(
            set.matching("198.51.100.1".parse().unwrap(), now),
            Some(net("198.51.100.0/24"))
        );
        assert_eq!(
            set.matching("192.0.2.1".parse().unwrap(), now),
            Some(net("192.0.2.0/24"))
        );
        assert_eq!(
            set.matching("192.0.2.1".parse().unwrap(), now + Duration::from_secs(2)),
            None
        );
    }

    #[test]
    fn an_entry_stops_matching_at_its_expiry_as_the_lists_reap_it() {
        // The same instant `Entry::expired` calls expired: the L7 guard
        // and the reaper agree to the second.
        let expiry = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let mut set = PrefixSet::default();
        set.insert(net("192.0.2.0/24"), Some(expiry));
        let ip = "192.0.2.1".parse().unwrap();
        assert_eq!(
            set.matching(ip, expiry - Duration::from_nanos(1)),
            Some(net("192.0.2.0/24"))
        );
        assert_eq!(set.matching(ip, expiry), None);
    }
}
