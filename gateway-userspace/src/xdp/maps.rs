//! Typed access to the program's maps, and the double-buffered rule sets.

use std::net::IpAddr;

use aya::{
    maps::{
        lpm_trie::Key, Array, HashMap, IterableMap, LpmTrie, Map, MapData, MapError, PerCpuArray,
    },
    Ebpf, Pod,
};
use gateway_common::{
    flags, map_names, present, Bucket, BucketKey, ExactKey4, ExactKey6, RateLimit, Rule, Stat,
    XdpConfig, EXACT_V4_LENS, EXACT_V6_LENS, PORT_WORDS,
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
    deny_v4_exact: HashMap<MapData, ExactKey4, Rule>,
    deny_v6_exact: HashMap<MapData, ExactKey6, Rule>,
    allow_v4_exact: HashMap<MapData, ExactKey4, Rule>,
    allow_v6_exact: HashMap<MapData, ExactKey6, Rule>,
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
                deny_v4_exact: HashMap::try_from(take(ebpf, map_names::DENY_V4_EXACT[i])?)?,
                deny_v6_exact: HashMap::try_from(take(ebpf, map_names::DENY_V6_EXACT[i])?)?,
                allow_v4_exact: HashMap::try_from(take(ebpf, map_names::ALLOW_V4_EXACT[i])?)?,
                allow_v6_exact: HashMap::try_from(take(ebpf, map_names::ALLOW_V6_EXACT[i])?)?,
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

    /// Whether the program would skip the list lookups for `src` now: its
    /// bucket carries the active generation and the slot allows caching.
    pub(super) fn verdict_cached(&self, src: IpAddr) -> Result<bool, XdpError> {
        let config = self.config.get(&self.active()?, 0)?;
        let (key, flag) = match src {
            IpAddr::V4(a) => {
                let net = ipnet::Ipv4Net::new(a, config.v4_prefix_len.min(32) as u8)
                    .expect("prefix length clamped");
                let mut addr = [0u8; 16];
                addr[..4].copy_from_slice(&net.network().octets());
                (BucketKey { addr, family: 4 }, flags::CACHE_V4)
            }
            IpAddr::V6(a) => {
                let net = ipnet::Ipv6Net::new(a, config.v6_prefix_len.min(128) as u8)
                    .expect("prefix length clamped");
                let addr = net.network().octets();
                (BucketKey { addr, family: 6 }, flags::CACHE_V6)
            }
        };
        let bucket = match self.buckets.get(&key, 0) {
            Ok(bucket) => bucket,
            Err(MapError::KeyNotFound) => return Ok(false),
            Err(e) => return Err(e.into()),
        };
        Ok(config.flags & flag != 0
            && config.generation != 0
            && bucket.list_gen == config.generation)
    }

    pub(super) fn replace(&mut self, rules: &KernelRules) -> Result<(), XdpError> {
        let target = 1 - self.active()?;
        let slot = &mut self.slots[target as usize];
        clear(&mut slot.deny_v4)?;
        clear(&mut slot.deny_v6)?;
        clear(&mut slot.allow_v4)?;
        clear(&mut slot.allow_v6)?;
        clear_hash(&mut slot.deny_v4_exact)?;
        clear_hash(&mut slot.deny_v6_exact)?;
        clear_hash(&mut slot.allow_v4_exact)?;
        clear_hash(&mut slot.allow_v6_exact)?;
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
        config.present = 0;
        for (net, _) in &rules.deny {
            config.present |= present_bit(ListKind::Deny, *net);
        }
        for (net, _) in &rules.allow {
            config.present |= present_bit(ListKind::Allow, *net);
        }
        let lists = || rules.deny.iter().chain(&rules.allow).map(|(net, _)| *net);
        for (flag, on) in [
            (flags::PROTECTED_PORTS, rules.ports.is_some()),
            (flags::HAS_ALLOW, !rules.allow.is_empty()),
            (flags::HAS_OVERRIDES, !rules.rate_overrides.is_empty()),
            (
                flags::CACHE_V4,
                lists().all(|net| !net_defeats_cache(&config, net, 4)),
            ),
            (
                flags::CACHE_V6,
                lists().all(|net| !net_defeats_cache(&config, net, 6)),
            ),
        ] {
            if on {
                config.flags |= flag;
            } else {
                config.flags &= !flag;
            }
        }
        config.generation = self.next_generation()?;
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
        let mut config = self.config.get(&active, 0)?;
        config.present |= present_bit(kind, net);
        if kind == ListKind::Allow {
            // The program skips the allow lookup until this flag is set.
            config.flags |= flags::HAS_ALLOW;
        }
        for (family, flag) in [(4, flags::CACHE_V4), (6, flags::CACHE_V6)] {
            if net_defeats_cache(&config, net, family) {
                config.flags &= !flag;
            }
        }
        // The entry goes in first, then the new generation invalidates every
        // bucket's "on no list" stamp: the other order would let a packet
        // stamp its bucket with the new generation before the entry exists.
        insert_list(&mut self.slots[active as usize], kind, net, rule)?;
        config.generation = self.next_generation()?;
        self.config.set(active, config, 0)?;
        Ok(())
    }

    /// One more than the active slot's generation (the newest: every change
    /// writes it there or flips to a slot holding a newer one).
    fn next_generation(&self) -> Result<u64, XdpError> {
        let active = self.config.get(&self.active()?, 0)?;
        Ok(active.generation.wrapping_add(1).max(1))
    }

    pub(super) fn remove_active(&mut self, kind: ListKind, net: IpNet) -> Result<(), XdpError> {
        let active = self.active()? as usize;
        let slot = &mut self.slots[active];
        let result = match (kind, net, exact_key(net)) {
            (ListKind::Deny, _, Some(Exact::V4(k))) => slot.deny_v4_exact.remove(&k),
            (ListKind::Deny, _, Some(Exact::V6(k))) => slot.deny_v6_exact.remove(&k),
            (ListKind::Allow, _, Some(Exact::V4(k))) => slot.allow_v4_exact.remove(&k),
            (ListKind::Allow, _, Some(Exact::V6(k))) => slot.allow_v6_exact.remove(&k),
            (ListKind::Deny, IpNet::V4(n), None) => slot.deny_v4.remove(&key4(n)),
            (ListKind::Deny, IpNet::V6(n), None) => slot.deny_v6.remove(&key6(n)),
            (ListKind::Allow, IpNet::V4(n), None) => slot.allow_v4.remove(&key4(n)),
            (ListKind::Allow, IpNet::V6(n), None) => slot.allow_v6.remove(&key6(n)),
        };
        match result {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    pub(super) fn prefixes_active(&self, kind: ListKind) -> Result<Vec<IpNet>, XdpError> {
        let slot = &self.slots[self.active()? as usize];
        let (v4, v6, v4_exact, v6_exact) = match kind {
            ListKind::Deny => (
                &slot.deny_v4,
                &slot.deny_v6,
                &slot.deny_v4_exact,
                &slot.deny_v6_exact,
            ),
            ListKind::Allow => (
                &slot.allow_v4,
                &slot.allow_v6,
                &slot.allow_v4_exact,
                &slot.allow_v6_exact,
            ),
        };
        let mut out = Vec::new();
        for key in v4.keys() {
            out.push(net_of(key?));
        }
        for key in v4_exact.keys() {
            let key = key?;
            out.push(net_of(Key::new(key.prefix_len, key.addr)));
        }
        for key in v6.keys() {
            out.push(net_of(key?));
        }
        for key in v6_exact.keys() {
            let key = key?;
            out.push(net_of(Key::new(key.prefix_len, key.addr)));
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
    let result = match (kind, net, exact_key(net)) {
        (ListKind::Deny, _, Some(Exact::V4(k))) => slot.deny_v4_exact.insert(k, rule, 0),
        (ListKind::Deny, _, Some(Exact::V6(k))) => slot.deny_v6_exact.insert(k, rule, 0),
        (ListKind::Allow, _, Some(Exact::V4(k))) => slot.allow_v4_exact.insert(k, rule, 0),
        (ListKind::Allow, _, Some(Exact::V6(k))) => slot.allow_v6_exact.insert(k, rule, 0),
        (ListKind::Deny, IpNet::V4(n), None) => slot.deny_v4.insert(&key4(n), rule, 0),
        (ListKind::Deny, IpNet::V6(n), None) => slot.deny_v6.insert(&key6(n), rule, 0),
        (ListKind::Allow, IpNet::V4(n), None) => slot.allow_v4.insert(&key4(n), rule, 0),
        (ListKind::Allow, IpNet::V6(n), None) => slot.allow_v6.insert(&key6(n), rule, 0),
    };
    result.map_err(|e| full_or(e, slot, kind, net))
}

/// A list entry's key in the exact-length maps, if its length is one of
/// `EXACT_V4_LENS` / `EXACT_V6_LENS` (else it lives in the trie).
enum Exact {
    V4(ExactKey4),
    V6(ExactKey6),
}

fn exact_key(net: IpNet) -> Option<Exact> {
    let net = net.trunc();
    let prefix_len = u32::from(net.prefix_len());
    match net {
        IpNet::V4(n) if EXACT_V4_LENS.contains(&prefix_len) => Some(Exact::V4(ExactKey4 {
            prefix_len,
            addr: n.network().octets(),
        })),
        IpNet::V6(n) if EXACT_V6_LENS.contains(&prefix_len) => Some(Exact::V6(ExactKey6 {
            prefix_len,
            addr: n.network().octets(),
        })),
        _ => None,
    }
}

/// The [`XdpConfig::present`] bit of the structure holding `net`.
fn present_bit(kind: ListKind, net: IpNet) -> u32 {
    let list = match kind {
        ListKind::Deny => present::DENY,
        ListKind::Allow => present::ALLOW,
    };
    let prefix_len = u32::from(net.prefix_len());
    let (family, which) = match net {
        IpNet::V4(_) => (4, EXACT_V4_LENS.iter().position(|l| *l == prefix_len)),
        IpNet::V6(_) => (6, EXACT_V6_LENS.iter().position(|l| *l == prefix_len)),
    };
    let which = which.map_or(present::TRIE, |i| i as u32);
    present::bit(list, family, which)
}

/// Whether a list entry is longer than the rate-limit aggregation of its
/// family: then sources sharing a bucket can get different list verdicts and
/// the bucket must not cache one.
fn net_defeats_cache(config: &XdpConfig, net: IpNet, family: u8) -> bool {
    match net {
        IpNet::V4(n) => family == 4 && u32::from(n.prefix_len()) > config.v4_prefix_len,
        IpNet::V6(n) => family == 6 && u32::from(n.prefix_len()) > config.v6_prefix_len,
    }
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
    // A trie says ENOSPC, a hash map without preallocation E2BIG.
    let full = matches!(&error, MapError::SyscallError(e)
        if matches!(e.io_error.raw_os_error(), Some(libc::ENOSPC | libc::E2BIG)));
    if !full {
        return error.into();
    }
    let exact = exact_key(net).is_some();
    let (family, info) = match (kind, net, exact) {
        (ListKind::Deny, IpNet::V4(_), true) => ("IPv4", slot.deny_v4_exact.map().info()),
        (ListKind::Deny, IpNet::V6(_), true) => ("IPv6", slot.deny_v6_exact.map().info()),
        (ListKind::Allow, IpNet::V4(_), true) => ("IPv4", slot.allow_v4_exact.map().info()),
        (ListKind::Allow, IpNet::V6(_), true) => ("IPv6", slot.allow_v6_exact.map().info()),
        (ListKind::Deny, IpNet::V4(_), false) => ("IPv4", slot.deny_v4.map().info()),
        (ListKind::Deny, IpNet::V6(_), false) => ("IPv6", slot.deny_v6.map().info()),
        (ListKind::Allow, IpNet::V4(_), false) => ("IPv4", slot.allow_v4.map().info()),
        (ListKind::Allow, IpNet::V6(_), false) => ("IPv6", slot.allow_v6.map().info()),
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

/// Empties one hash map (keys collected first, as for [`clear`]).
fn clear_hash<K: Pod, V: Pod>(map: &mut HashMap<MapData, K, V>) -> Result<(), XdpError> {
    let keys: Vec<K> = map.keys().collect::<Result<_, MapError>>()?;
    for key in keys {
        match map.remove(&key) {
            Ok(()) | Err(MapError::KeyNotFound) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
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
