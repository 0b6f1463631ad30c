//! Typed access to the program's maps, and the double-buffered rule sets.

use std::net::IpAddr;

use aya::{
    maps::{
        lpm_trie::Key, Array, HashMap, IterableMap, LpmTrie, Map, MapData, MapError, PerCpuArray,
    },
    Ebpf, Pod,
};
use gateway_common::{
    flags, map_names, Bucket, BucketKey, RateLimit, Rule, Stat, XdpConfig, PORT_WORDS,
};
use ipnet::IpNet;

use super::XdpError;

/// Which source list.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum ListKind {
    Deny,
    Allow,
}

impl ListKind {
    pub fn name(self) -> &'static str {
        match self {
            ListKind::Deny => "blocklist",
            ListKind::Allow => "allowlist",
        }
    }
}

/// A complete kernel rule set: what one slot holds.
#[derive(Debug, Clone, Default)]
pub struct KernelRules {
    /// Flags, aggregation and default budget. `PROTECTED_PORTS` is set from
    /// `ports` by [`Maps::replace`].
    pub config: XdpConfig,
    /// Destination ports that are policed; `None` polices every packet.
    pub ports: Option<Vec<u16>>,
    pub deny: Vec<(IpNet, Rule)>,
    pub allow: Vec<(IpNet, Rule)>,
    pub rate_overrides: Vec<(IpNet, RateLimit)>,
}

struct SlotMaps {
    deny_v4: LpmTrie<MapData, [u8; 4], Rule>,
    deny_v6: LpmTrie<MapData, [u8; 16], Rule>,
    allow_v4: LpmTrie<MapData, [u8; 4], Rule>,
    allow_v6: LpmTrie<MapData, [u8; 16], Rule>,
    rate_v4: LpmTrie<MapData, [u8; 4], RateLimit>,
    rate_v6: LpmTrie<MapData, [u8; 16], RateLimit>,
    ports: Array<MapData, u64>,
}

pub(super) struct Maps {
    active: Array<MapData, u32>,
    config: Array<MapData, XdpConfig>,
    stats: PerCpuArray<MapData, u64>,
    buckets: HashMap<MapData, BucketKey, Bucket>,
    slots: [SlotMaps; 2],
}

fn take(ebpf: &mut Ebpf, name: &'static str) -> Result<Map, XdpError> {
    ebpf.take_map(name).ok_or(XdpError::Missing(name))
}

impl Maps {
    pub(super) fn take(ebpf: &mut Ebpf) -> Result<Self, XdpError> {
        let mut slot = |i: usize| -> Result<SlotMaps, XdpError> {
            Ok(SlotMaps {
                deny_v4: LpmTrie::try_from(take(ebpf, map_names::DENY_V4[i])?)?,
                deny_v6: LpmTrie::try_from(take(ebpf, map_names::DENY_V6[i])?)?,
                allow_v4: LpmTrie::try_from(take(ebpf, map_names::ALLOW_V4[i])?)?,
                allow_v6: LpmTrie::try_from(take(ebpf, map_names::ALLOW_V6[i])?)?,
                rate_v4: LpmTrie::try_from(take(ebpf, map_names::RATE_V4[i])?)?,
                rate_v6: LpmTrie::try_from(take(ebpf, map_names::RATE_V6[i])?)?,
                ports: Array::try_from(take(ebpf, map_names::PORTS[i])?)?,
            })
        };
        let slots = [slot(0)?, slot(1)?];
        Ok(Self {
            active: Array::try_from(take(ebpf, map_names::ACTIVE)?)?,
            config: Array::try_from(take(ebpf, map_names::CONFIG)?)?,
            stats: PerCpuArray::try_from(take(ebpf, map_names::STATS)?)?,
            buckets: HashMap::try_from(take(ebpf, map_names::BUCKETS)?)?,
            slots,
        })
    }

    pub(super) fn active(&self) -> Result<u32, XdpError> {
        Ok(self.active.get(&0, 0)? & 1)
    }

    pub(super) fn stat(&self, stat: Stat) -> Result<u64, XdpError> {
        Ok(self.stats.get(&(stat as u32), 0)?.iter().sum())
    }

    pub(super) fn bucket_count(&self) -> usize {
        self.buckets.keys().filter(Result::is_ok).count()
    }

    pub(super) fn replace(&mut self, rules: &KernelRules) -> Result<(), XdpError> {
        let target = 1 - self.active()?;
        let slot = &mut self.slots[target as usize];
        clear(&mut slot.deny_v4)?;
        clear(&mut slot.deny_v6)?;
        clear(&mut slot.allow_v4)?;
        clear(&mut slot.allow_v6)?;
        clear(&mut slot.rate_v4)?;
        clear(&mut slot.rate_v6)?;
        let mut bitmap = vec![0u64; PORT_WORDS as usize];
        for port in rules.ports.iter().flatten() {
            bitmap[usize::from(*port >> 6)] |= 1 << (port & 63);
        }
        for (index, word) in bitmap.iter().enumerate() {
            slot.ports.set(index as u32, word, 0)?;
        }
        for (net, rule) in &rules.deny {
            insert_list(slot, ListKind::Deny, *net, *rule)?;
        }
        for (net, rule) in &rules.allow {
            insert_list(slot, ListKind::Allow, *net, *rule)?;
        }
        for (net, limit) in &rules.rate_overrides {
            match net {
                IpNet::V4(n) => slot.rate_v4.insert(&key4(*n), limit, 0)?,
                IpNet::V6(n) => slot.rate_v6.insert(&key6(*n), limit, 0)?,
            }
        }
        let mut config = rules.config;
        for (flag, on) in [
            (flags::PROTECTED_PORTS, rules.ports.is_some()),
            (flags::HAS_ALLOW, !rules.allow.is_empty()),
            (flags::HAS_OVERRIDES, !rules.rate_overrides.is_empty()),
        ] {
            if on {
                config.flags |= flag;
            } else {
                config.flags &= !flag;
            }
        }
        self.config.set(target, config, 0)?;
        // The one write that switches every packet to the new set.
        self.active.set(0, target, 0)?;
        Ok(())
    }

    pub(super) fn insert_active(
        &mut self,
        kind: ListKind,
        net: IpNet,
        rule: Rule,
    ) -> Result<(), XdpError> {
        let active = self.active()?;
        if kind == ListKind::Allow {
            // The program skips the allow lookup until this flag is set.
            let mut config = self.config.get(&active, 0)?;
            if config.flags & flags::HAS_ALLOW == 0 {
                config.flags |= flags::HAS_ALLOW;
                self.config.set(active, config, 0)?;
            }
        }
        insert_list(&mut self.slots[active as usize], kind, net, rule)
    }

    pub(super) fn remove_active(&mut self, kind: ListKind, net: IpNet) -> Result<(), XdpError> {
        let active = self.active()? as usize;
        let slot = &mut self.slots[active];
        let result = match (kind, net) {
            (ListKind::Deny, IpNet::V4(n)) => slot.deny_v4.remove(&key4(n)),
            (ListKind::Deny, IpNet::V6(n)) => slot.deny_v6.remove(&key6(n)),
            (ListKind::Allow, IpNet::V4(n)) => slot.allow_v4.remove(&key4(n)),
            (ListKind::Allow, IpNet::V6(n)) => slot.allow_v6.remove(&key6(n)),
        };
        match result {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    pub(super) fn prefixes_active(&self, kind: ListKind) -> Result<Vec<IpNet>, XdpError> {
        let slot = &self.slots[self.active()? as usize];
        let (v4, v6) = match kind {
            ListKind::Deny => (&slot.deny_v4, &slot.deny_v6),
            ListKind::Allow => (&slot.allow_v4, &slot.allow_v6),
        };
        let mut out = Vec::new();
        for key in v4.keys() {
            out.push(net_of(key?));
        }
        for key in v6.keys() {
            out.push(net_of(key?));
        }
        Ok(out)
    }
}

fn insert_list(
    slot: &mut SlotMaps,
    kind: ListKind,
    net: IpNet,
    rule: Rule,
) -> Result<(), XdpError> {
    let result = match (kind, net) {
        (ListKind::Deny, IpNet::V4(n)) => slot.deny_v4.insert(&key4(n), rule, 0),
        (ListKind::Deny, IpNet::V6(n)) => slot.deny_v6.insert(&key6(n), rule, 0),
        (ListKind::Allow, IpNet::V4(n)) => slot.allow_v4.insert(&key4(n), rule, 0),
        (ListKind::Allow, IpNet::V6(n)) => slot.allow_v6.insert(&key6(n), rule, 0),
    };
    result.map_err(|e| full_or(e, slot, kind, net))
}

fn key4(net: ipnet::Ipv4Net) -> Key<[u8; 4]> {
    Key::new(net.prefix_len().into(), net.network().octets())
}

fn key6(net: ipnet::Ipv6Net) -> Key<[u8; 16]> {
    Key::new(net.prefix_len().into(), net.network().octets())
}

/// A trie refuses a new key with ENOSPC when it holds `max_entries`: say
/// so plainly instead of passing the errno on.
fn full_or(error: MapError, slot: &SlotMaps, kind: ListKind, net: IpNet) -> XdpError {
    let full = matches!(&error, MapError::SyscallError(e) if e.io_error.raw_os_error() == Some(libc::ENOSPC));
    if !full {
        return error.into();
    }
    let (family, info) = match (kind, net) {
        (ListKind::Deny, IpNet::V4(_)) => ("IPv4", slot.deny_v4.map().info()),
        (ListKind::Deny, IpNet::V6(_)) => ("IPv6", slot.deny_v6.map().info()),
        (ListKind::Allow, IpNet::V4(_)) => ("IPv4", slot.allow_v4.map().info()),
        (ListKind::Allow, IpNet::V6(_)) => ("IPv6", slot.allow_v6.map().info()),
    };
    XdpError::Full {
        list: kind.name(),
        family,
        capacity: info.map(|i| i.max_entries()).unwrap_or(0),
    }
}

fn net_of<K: Pod + Into<IpAddr>>(key: Key<K>) -> IpNet {
    IpNet::new(key.data().into(), key.prefix_len() as u8)
        .expect("kernel keys have valid prefix lengths")
}

/// Empties one trie (keys are collected first: removing while iterating
/// would skip entries).
fn clear<K: Pod, V: Pod>(trie: &mut LpmTrie<MapData, K, V>) -> Result<(), XdpError> {
    let keys: Vec<Key<K>> = trie.keys().collect::<Result<_, MapError>>()?;
    for key in keys {
        match trie.remove(&key) {
            Ok(()) | Err(MapError::KeyNotFound) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}
