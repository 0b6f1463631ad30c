//! Typed access to the program's maps, and the double-buffered rule sets.

use std::net::IpAddr;

use aya::{
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, Map, MapData, MapError},
    Ebpf,
};
use gateway_common::{
    flags, map_names, next_generation, Bucket, BucketKey, RateLimit, Rule, XdpConfig, DENIED_STAMP,
    PORT_WORDS,
};
use ipnet::IpNet;

use super::{
    list_maps::{clear_hash, clear_trie, ListMaps},
    XdpError,
};

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
    deny: ListMaps,
    allow: ListMaps,
    rate_v4: LpmTrie<MapData, [u8; 4], RateLimit>,
    rate_v6: LpmTrie<MapData, [u8; 16], RateLimit>,
    ports: Array<MapData, u64>,
    split: HashMap<MapData, BucketKey, u32>,
}

/// Where the program keeps a source's "on no list" verdict (see
/// docs/xdp.md, "The verdict cache").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CachedIn {
    /// The source's token bucket (policed, and no list entry of its family
    /// is longer than the aggregation).
    Bucket,
    /// The per-source cache (`PASSED_V4` / `PASSED_V6`).
    Source,
    /// The per-source cache, as denied by a deny entry without expiry.
    SourceDenied,
}

pub(super) struct Maps {
    active: Array<MapData, u32>,
    config: Array<MapData, XdpConfig>,
    buckets_v4: HashMap<MapData, [u8; 4], Bucket>,
    buckets_v6: HashMap<MapData, [u8; 16], Bucket>,
    passed_v4: HashMap<MapData, [u8; 4], u64>,
    passed_v6: HashMap<MapData, [u8; 16], u64>,
    slots: [SlotMaps; 2],
}

fn take(ebpf: &mut Ebpf, name: &'static str) -> Result<Map, XdpError> {
    ebpf.take_map(name).ok_or(XdpError::Missing(name))
}

impl Maps {
    pub(super) fn take(ebpf: &mut Ebpf) -> Result<Self, XdpError> {
        let mut slot = |i: usize| -> Result<SlotMaps, XdpError> {
            Ok(SlotMaps {
                deny: ListMaps::take(ebpf, ListKind::Deny, i)?,
                allow: ListMaps::take(ebpf, ListKind::Allow, i)?,
                rate_v4: LpmTrie::try_from(take(ebpf, map_names::RATE_V4[i])?)?,
                rate_v6: LpmTrie::try_from(take(ebpf, map_names::RATE_V6[i])?)?,
                ports: Array::try_from(take(ebpf, map_names::PORTS[i])?)?,
                split: HashMap::try_from(take(ebpf, map_names::SPLIT[i])?)?,
            })
        };
        let slots = [slot(0)?, slot(1)?];
        Ok(Self {
            active: Array::try_from(take(ebpf, map_names::ACTIVE)?)?,
            config: Array::try_from(take(ebpf, map_names::CONFIG)?)?,
            buckets_v4: HashMap::try_from(take(ebpf, map_names::BUCKETS_V4)?)?,
            buckets_v6: HashMap::try_from(take(ebpf, map_names::BUCKETS_V6)?)?,
            passed_v4: HashMap::try_from(take(ebpf, map_names::PASSED_V4)?)?,
            passed_v6: HashMap::try_from(take(ebpf, map_names::PASSED_V6)?)?,
            slots,
        })
    }

    pub(super) fn active(&self) -> Result<u32, XdpError> {
        Ok(self.active.get(&0, 0)? & 1)
    }

    pub(super) fn drop_sample(&self) -> Result<u32, XdpError> {
        Ok(self.config.get(&self.active()?, 0)?.drop_sample)
    }

    pub(super) fn bucket_count(&self) -> usize {
        self.buckets_v4.keys().filter(Result::is_ok).count()
            + self.buckets_v6.keys().filter(Result::is_ok).count()
    }

    /// Where the program holds a current "on no list" verdict for `src`, if
    /// anywhere: a bucket stamped with the active generation (the program
    /// stamps only buckets without longer entries inside), else a
    /// per-source entry stamped with it. Which
    /// one a packet consults depends on whether it is policed; a source is
    /// reported as cached when either is current.
    pub(super) fn verdict_cached(&self, src: IpAddr) -> Result<Option<CachedIn>, XdpError> {
        let config = self.config.get(&self.active()?, 0)?;
        if config.generation == 0 {
            return Ok(None);
        }
        let key = bucket_key(&config, IpNet::from(src));
        let bucket = if key.family == 4 {
            let [a, b, c, d, ..] = key.addr;
            found(self.buckets_v4.get(&[a, b, c, d], 0))?
        } else {
            found(self.buckets_v6.get(&key.addr, 0))?
        };
        if let Some(bucket) = bucket {
            if bucket.list_gen == config.generation {
                return Ok(Some(CachedIn::Bucket));
            }
        }
        let stamp = match src {
            IpAddr::V4(a) => found(self.passed_v4.get(&a.octets(), 0))?,
            IpAddr::V6(a) => found(self.passed_v6.get(&a.octets(), 0))?,
        };
        Ok(match stamp {
            Some(s) if s == config.generation => Some(CachedIn::Source),
            Some(s) if s == config.generation | DENIED_STAMP => Some(CachedIn::SourceDenied),
            _ => None,
        })
    }

    pub(super) fn replace(&mut self, rules: &KernelRules) -> Result<(), XdpError> {
        let target = 1 - self.active()?;
        let slot = &mut self.slots[target as usize];
        slot.deny.clear()?;
        slot.allow.clear()?;
        clear_trie(&mut slot.rate_v4)?;
        clear_trie(&mut slot.rate_v6)?;
        clear_hash(&mut slot.split)?;
        let mut bitmap = vec![0u64; PORT_WORDS as usize];
        for port in rules.ports.iter().flatten() {
            bitmap[usize::from(*port >> 6)] |= 1 << (port & 63);
        }
        for (index, word) in bitmap.iter().enumerate() {
            slot.ports.set(index as u32, word, 0)?;
        }
        for (net, rule) in &rules.deny {
            slot.deny.insert(*net, *rule)?;
        }
        for (net, rule) in &rules.allow {
            slot.allow.insert(*net, *rule)?;
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
            config.present |= ListMaps::present_bit(ListKind::Deny, *net);
        }
        for (net, _) in &rules.allow {
            config.present |= ListMaps::present_bit(ListKind::Allow, *net);
        }
        let lists = || rules.deny.iter().chain(&rules.allow).map(|(net, _)| *net);
        for net in lists() {
            if let Some(key) = split_key(&rules.config, net) {
                slot.split.insert(key, 1, 0)?;
            }
        }
        for (flag, on) in [
            (flags::PROTECTED_PORTS, rules.ports.is_some()),
            (flags::SPLIT_LISTED, true),
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
        // The active slot holds the newest generation: every change writes
        // it there or flips to a slot holding a newer one.
        let current = self.config.get(&(1 - target), 0)?.generation;
        config.generation = next_generation(current);
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
        config.present |= ListMaps::present_bit(kind, net);
        if kind == ListKind::Allow {
            // The program skips the allow lookup until this flag is set.
            config.flags |= flags::HAS_ALLOW;
        }
        for (family, flag) in [(4, flags::CACHE_V4), (6, flags::CACHE_V6)] {
            if net_defeats_cache(&config, net, family) {
                config.flags &= !flag;
            }
        }
        // The bucket's split mark and the entry go in first, then the new
        // generation invalidates every "on no list" stamp: the other order
        // would let a packet stamp its bucket (or its own cache entry) with
        // the new generation before the entry exists.
        let slot = &mut self.slots[active as usize];
        if let Some(key) = split_key(&config, net) {
            slot.split.insert(key, 1, 0)?;
        }
        slot.list(kind).insert(net, rule)?;
        config.generation = next_generation(config.generation);
        self.config.set(active, config, 0)?;
        Ok(())
    }

    pub(super) fn remove_active(&mut self, kind: ListKind, net: IpNet) -> Result<(), XdpError> {
        let active = self.active()?;
        self.slots[active as usize].list(kind).remove(net)?;
        if kind == ListKind::Deny {
            // The program caches "denied" for sources matched by entries
            // without expiry: the entry goes first, then the new generation
            // ends those stamps (the other order would let a packet stamp
            // "denied" at the new generation from the entry still there).
            // Removing an allow entry ends nothing: allow-listed sources are
            // never cached.
            let mut config = self.config.get(&active, 0)?;
            config.generation = next_generation(config.generation);
            self.config.set(active, config, 0)?;
        }
        Ok(())
    }

    pub(super) fn prefixes_active(&self, kind: ListKind) -> Result<Vec<IpNet>, XdpError> {
        let slot = &self.slots[self.active()? as usize];
        match kind {
            ListKind::Deny => slot.deny.prefixes(),
            ListKind::Allow => slot.allow.prefixes(),
        }
    }
}

impl SlotMaps {
    fn list(&mut self, kind: ListKind) -> &mut ListMaps {
        match kind {
            ListKind::Deny => &mut self.deny,
            ListKind::Allow => &mut self.allow,
        }
    }
}

/// A map lookup's value, `None` when the key is absent.
fn found<V>(result: Result<V, MapError>) -> Result<Option<V>, XdpError> {
    match result {
        Ok(value) => Ok(Some(value)),
        Err(MapError::KeyNotFound) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The bucket that aggregates `net`'s first address.
fn bucket_key(config: &XdpConfig, net: IpNet) -> BucketKey {
    match net {
        IpNet::V4(n) => {
            let len = config.v4_prefix_len.min(32) as u8;
            let masked = ipnet::Ipv4Net::new(n.network(), len).expect("prefix length clamped");
            let mut addr = [0u8; 16];
            addr[..4].copy_from_slice(&masked.network().octets());
            BucketKey { addr, family: 4 }
        }
        IpNet::V6(n) => {
            let len = config.v6_prefix_len.min(128) as u8;
            let masked = ipnet::Ipv6Net::new(n.network(), len).expect("prefix length clamped");
            BucketKey {
                addr: masked.network().octets(),
                family: 6,
            }
        }
    }
}

/// The bucket an entry longer than the aggregation lies inside (the one
/// bucket whose sources it splits), or `None` for other entries.
fn split_key(config: &XdpConfig, net: IpNet) -> Option<BucketKey> {
    let family = match net {
        IpNet::V4(_) => 4,
        IpNet::V6(_) => 6,
    };
    net_defeats_cache(config, net, family).then(|| bucket_key(config, net))
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
