//! The kernel's per-source drop counts (map `DROPS`, see
//! `gateway-ebpf/src/drops.rs`), read for "the top dropped sources".

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::{Duration, SystemTime},
};

use aya::maps::{HashMap, MapData};
use gateway_common::{BucketKey, DropCounts, DropReason};

use super::XdpError;

/// One source's packets dropped in XDP, estimated from samples.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DroppedSource {
    pub source: IpAddr,
    /// By [`DropReason`] index.
    pub packets: [u64; DropReason::COUNT],
    /// When a drop of it was last sampled.
    pub last_seen: SystemTime,
}

impl DroppedSource {
    pub fn total(&self) -> u64 {
        self.packets.iter().sum()
    }
}

/// The map, as userspace holds it.
pub(super) struct Drops {
    map: HashMap<MapData, BucketKey, DropCounts>,
}

impl Drops {
    pub(super) fn new(map: HashMap<MapData, BucketKey, DropCounts>) -> Self {
        Self { map }
    }

    /// The `n` sources with the most dropped packets, most first (ties by
    /// address). Walks the whole map (at most
    /// [`gateway_common::DROPS_MAX_ENTRIES`] entries, two syscalls each).
    pub(super) fn top(&self, n: usize) -> Result<Vec<DroppedSource>, XdpError> {
        let mono_now = crate::sys::monotonic_now();
        let wall_now = SystemTime::now();
        let mut rows = Vec::new();
        for entry in self.map.iter() {
            let (key, counts) = match entry {
                Ok(entry) => entry,
                // Evicted between the key walk and the lookup.
                Err(aya::maps::MapError::KeyNotFound) => continue,
                Err(e) => return Err(e.into()),
            };
            let Some(source) = address(&key) else {
                continue;
            };
            let ago = mono_now.saturating_sub(Duration::from_nanos(counts.last_ns));
            rows.push(DroppedSource {
                source,
                packets: counts.packets,
                last_seen: wall_now.checked_sub(ago).unwrap_or(wall_now),
            });
        }
        rows.sort_by(|a, b| b.total().cmp(&a.total()).then(a.source.cmp(&b.source)));
        rows.truncate(n);
        Ok(rows)
    }
}

/// The source a key names (`None` for a family the program never writes).
fn address(key: &BucketKey) -> Option<IpAddr> {
    match key.family {
        4 => {
            let a = &key.addr;
            Some(IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3])))
        }
        6 => Some(IpAddr::V6(Ipv6Addr::from(key.addr))),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_name_their_source() {
        let mut addr = [0u8; 16];
        addr[..4].copy_from_slice(&[203, 0, 113, 7]);
        assert_eq!(
            address(&BucketKey { addr, family: 4 }),
            Some("203.0.113.7".parse().unwrap())
        );
        let v6: Ipv6Addr = "2001:db8:bad::1".parse().unwrap();
        assert_eq!(
            address(&BucketKey {
                addr: v6.octets(),
                family: 6
            }),
            Some(IpAddr::V6(v6))
        );
        assert_eq!(address(&BucketKey { addr, family: 0 }), None);
    }
}
