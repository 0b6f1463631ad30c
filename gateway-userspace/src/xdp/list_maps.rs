//! One source list (deny or allow) of one rule-set slot, as the kernel holds
//! it: IPv4 /24 and /32 entries and IPv6 /48, /64 and /128 entries in hash
//! maps (a network map whose entries say which longer entries exist inside
//! them, see [`NetEntry`]), every other length in an LPM trie per family.
//! See docs/xdp.md.

use std::net::IpAddr;

use aya::{
    maps::{lpm_trie::Key, HashMap, IterableMap, LpmTrie, Map, MapData, MapError},
    Ebpf, Pod,
};
use gateway_common::{map_names, present, NetEntry, Rule};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::{maps::ListKind, XdpError};

pub(super) struct ListMaps {
    kind: ListKind,
    v4: LpmTrie<MapData, [u8; 4], Rule>,
    v6: LpmTrie<MapData, [u8; 16], Rule>,
    v4_nets: HashMap<MapData, [u8; 4], NetEntry>,
    v4_hosts: HashMap<MapData, [u8; 4], Rule>,
    v6_nets: HashMap<MapData, [u8; 8], NetEntry>,
    v6_subnets: HashMap<MapData, [u8; 8], Rule>,
    v6_hosts: HashMap<MapData, [u8; 16], Rule>,
}

/// Where one entry lives.
#[derive(Clone, Copy)]
enum Place {
    V4Net([u8; 4]),
    V4Host([u8; 4]),
    V6Net([u8; 8]),
    V6Subnet([u8; 8]),
    V6Host([u8; 16]),
    V4Trie(Key<[u8; 4]>),
    V6Trie(Key<[u8; 16]>),
}

fn place(net: IpNet) -> Place {
    match net.trunc() {
        IpNet::V4(n) => {
            let a = n.network().octets();
            match n.prefix_len() {
                32 => Place::V4Host(a),
                24 => Place::V4Net(a),
                len => Place::V4Trie(Key::new(len.into(), a)),
            }
        }
        IpNet::V6(n) => {
            let a = n.network().octets();
            let first8 = [a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]];
            match n.prefix_len() {
                128 => Place::V6Host(a),
                64 => Place::V6Subnet(first8),
                48 => Place::V6Net(first8),
                len => Place::V6Trie(Key::new(len.into(), a)),
            }
        }
    }
}

fn v4_net_of(addr: [u8; 4]) -> [u8; 4] {
    [addr[0], addr[1], addr[2], 0]
}

fn v6_net_of(addr: &[u8]) -> [u8; 8] {
    [addr[0], addr[1], addr[2], addr[3], addr[4], addr[5], 0, 0]
}

fn take<T: TryFrom<Map, Error = MapError>>(
    ebpf: &mut Ebpf,
    names: [&'static str; 2],
    slot: usize,
) -> Result<T, XdpError> {
    let name = names[slot];
    let map = ebpf.take_map(name).ok_or(XdpError::Missing(name))?;
    Ok(T::try_from(map)?)
}

impl ListMaps {
    pub(super) fn take(ebpf: &mut Ebpf, kind: ListKind, slot: usize) -> Result<Self, XdpError> {
        use map_names::*;
        let names = match kind {
            ListKind::Deny => [
                DENY_V4,
                DENY_V6,
                DENY_V4_NETS,
                DENY_V4_HOSTS,
                DENY_V6_NETS,
                DENY_V6_SUBNETS,
                DENY_V6_HOSTS,
            ],
            ListKind::Allow => [
                ALLOW_V4,
                ALLOW_V6,
                ALLOW_V4_NETS,
                ALLOW_V4_HOSTS,
                ALLOW_V6_NETS,
                ALLOW_V6_SUBNETS,
                ALLOW_V6_HOSTS,
            ],
        };
        Ok(Self {
            kind,
            v4: take(ebpf, names[0], slot)?,
            v6: take(ebpf, names[1], slot)?,
            v4_nets: take(ebpf, names[2], slot)?,
            v4_hosts: take(ebpf, names[3], slot)?,
            v6_nets: take(ebpf, names[4], slot)?,
            v6_subnets: take(ebpf, names[5], slot)?,
            v6_hosts: take(ebpf, names[6], slot)?,
        })
    }

    /// The [`gateway_common::XdpConfig::present`] bit of the structure
    /// that holds `net` in a list of `kind`.
    pub(super) fn present_bit(kind: ListKind, net: IpNet) -> u32 {
        let list = match kind {
            ListKind::Deny => present::DENY,
            ListKind::Allow => present::ALLOW,
        };
        let (family, which) = match place(net) {
            Place::V4Net(_) | Place::V4Host(_) => (4, present::HASH),
            Place::V4Trie(_) => (4, present::TRIE),
            Place::V6Net(_) | Place::V6Subnet(_) | Place::V6Host(_) => (6, present::HASH),
            Place::V6Trie(_) => (6, present::TRIE),
        };
        present::bit(list, family, which)
    }

    /// Adds or replaces an entry. Either the entry is in place and
    /// matchable, or nothing changed (a full map is reported as such).
    pub(super) fn insert(&mut self, net: IpNet, rule: Rule) -> Result<(), XdpError> {
        let result = match place(net) {
            Place::V4Trie(key) => self.v4.insert(&key, rule, 0),
            Place::V6Trie(key) => self.v6.insert(&key, rule, 0),
            Place::V4Net(key) => set_rule(&mut self.v4_nets, key, Some(rule)),
            Place::V6Net(key) => set_rule(&mut self.v6_nets, key, Some(rule)),
            Place::V4Host(addr) => insert_child(
                &mut self.v4_nets,
                v4_net_of(addr),
                NetEntry::HOSTS,
                &mut self.v4_hosts,
                addr,
                rule,
            ),
            Place::V6Subnet(key) => insert_child(
                &mut self.v6_nets,
                v6_net_of(&key),
                NetEntry::SUBNETS,
                &mut self.v6_subnets,
                key,
                rule,
            ),
            Place::V6Host(addr) => insert_child(
                &mut self.v6_nets,
                v6_net_of(&addr),
                NetEntry::HOSTS,
                &mut self.v6_hosts,
                addr,
                rule,
            ),
        };
        result.map_err(|e| self.full_or(e, net))
    }

    /// Removes an entry; absent is not an error. A network's flag saying it
    /// holds longer entries stays until the slot is rebuilt: others may
    /// remain, and a stale flag costs one lookup.
    pub(super) fn remove(&mut self, net: IpNet) -> Result<(), XdpError> {
        let result = match place(net) {
            Place::V4Trie(key) => self.v4.remove(&key),
            Place::V6Trie(key) => self.v6.remove(&key),
            Place::V4Host(addr) => self.v4_hosts.remove(&addr),
            Place::V6Subnet(key) => self.v6_subnets.remove(&key),
            Place::V6Host(addr) => self.v6_hosts.remove(&addr),
            Place::V4Net(key) => set_rule(&mut self.v4_nets, key, None),
            Place::V6Net(key) => set_rule(&mut self.v6_nets, key, None),
        };
        match result {
            Ok(()) => Ok(()),
            Err(e) if not_found(&e) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Every entry's prefix.
    pub(super) fn prefixes(&self) -> Result<Vec<IpNet>, XdpError> {
        let mut out = Vec::new();
        for key in self.v4.keys() {
            out.push(net_of(key?));
        }
        push_rule_nets(&self.v4_nets, Place::V4Net, &mut out)?;
        for key in self.v4_hosts.keys() {
            out.push(net_of_place(Place::V4Host(key?)));
        }
        for key in self.v6.keys() {
            out.push(net_of(key?));
        }
        push_rule_nets(&self.v6_nets, Place::V6Net, &mut out)?;
        for key in self.v6_subnets.keys() {
            out.push(net_of_place(Place::V6Subnet(key?)));
        }
        for key in self.v6_hosts.keys() {
            out.push(net_of_place(Place::V6Host(key?)));
        }
        Ok(out)
    }

    /// Empties every structure.
    pub(super) fn clear(&mut self) -> Result<(), XdpError> {
        clear_trie(&mut self.v4)?;
        clear_trie(&mut self.v6)?;
        clear_hash(&mut self.v4_nets)?;
        clear_hash(&mut self.v4_hosts)?;
        clear_hash(&mut self.v6_nets)?;
        clear_hash(&mut self.v6_subnets)?;
        clear_hash(&mut self.v6_hosts)
    }

    /// A trie refuses a new key with ENOSPC when it holds `max_entries`, a
    /// hash map without preallocation with E2BIG: say so plainly instead of
    /// passing the errno on.
    fn full_or(&self, error: MapError, net: IpNet) -> XdpError {
        let full = matches!(&error, MapError::SyscallError(e)
            if matches!(e.io_error.raw_os_error(), Some(libc::ENOSPC | libc::E2BIG)));
        if !full {
            return error.into();
        }
        let capacity =
            |info: Result<aya::maps::MapInfo, MapError>| info.map(|i| i.max_entries()).unwrap_or(0);
        // A longer entry needs room in its network's map too: name the
        // smaller of the two.
        let (family, capacity) = match place(net) {
            Place::V4Trie(_) => ("IPv4", capacity(self.v4.map().info())),
            Place::V4Net(_) => ("IPv4", capacity(self.v4_nets.map().info())),
            Place::V4Host(_) => (
                "IPv4",
                capacity(self.v4_hosts.map().info()).min(capacity(self.v4_nets.map().info())),
            ),
            Place::V6Trie(_) => ("IPv6", capacity(self.v6.map().info())),
            Place::V6Net(_) => ("IPv6", capacity(self.v6_nets.map().info())),
            Place::V6Subnet(_) => (
                "IPv6",
                capacity(self.v6_subnets.map().info()).min(capacity(self.v6_nets.map().info())),
            ),
            Place::V6Host(_) => (
                "IPv6",
                capacity(self.v6_hosts.map().info()).min(capacity(self.v6_nets.map().info())),
            ),
        };
        XdpError::Full {
            list: self.kind.name(),
            family,
            capacity,
        }
    }
}

/// A trie says KeyNotFound for a missing key; a hash map's delete passes
/// ENOENT on.
fn not_found(error: &MapError) -> bool {
    match error {
        MapError::KeyNotFound => true,
        MapError::SyscallError(e) => e.io_error.raw_os_error() == Some(libc::ENOENT),
        _ => false,
    }
}

fn get<K: Pod, V: Pod>(map: &HashMap<MapData, K, V>, key: &K) -> Result<Option<V>, MapError> {
    match map.get(key, 0) {
        Ok(value) => Ok(Some(value)),
        Err(MapError::KeyNotFound) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Sets (`Some`) or clears (`None`) a network's own entry, keeping its
/// flags for longer entries; a network left with nothing is removed.
/// The networks of a network map that carry a rule of their own (the
/// others are there only for the longer entries inside them).
fn push_rule_nets<K: Pod>(
    nets: &HashMap<MapData, K, NetEntry>,
    place: fn(K) -> Place,
    out: &mut Vec<IpNet>,
) -> Result<(), XdpError> {
    for item in nets.iter() {
        let (key, entry) = item?;
        if entry.flags & NetEntry::RULE != 0 {
            out.push(net_of_place(place(key)));
        }
    }
    Ok(())
}

fn set_rule<K: Pod>(
    nets: &mut HashMap<MapData, K, NetEntry>,
    key: K,
    rule: Option<Rule>,
) -> Result<(), MapError> {
    let existing = get(nets, &key)?;
    let children = existing.map_or(0, |e| e.flags & !NetEntry::RULE);
    match rule {
        Some(rule) => nets.insert(
            key,
            NetEntry {
                rule,
                flags: children | NetEntry::RULE,
                _pad: 0,
            },
            0,
        ),
        None if children != 0 => nets.insert(
            key,
            NetEntry {
                flags: children,
                ..NetEntry::default()
            },
            0,
        ),
        None if existing.is_none() => Ok(()),
        None => nets.remove(&key),
    }
}

/// Adds a longer entry: first the flag on its network that makes the
/// program look for such entries (a flag without the entry costs a lookup,
/// nothing else), then the entry. When the entry finds no room, a network
/// entry made just for it is taken out again.
fn insert_child<K: Pod, C: Pod>(
    nets: &mut HashMap<MapData, K, NetEntry>,
    net: K,
    flag: u32,
    children: &mut HashMap<MapData, C, Rule>,
    child: C,
    rule: Rule,
) -> Result<(), MapError> {
    let existing = get(nets, &net)?;
    if existing.is_none_or(|e| e.flags & flag == 0) {
        let mut entry = existing.unwrap_or_default();
        entry.flags |= flag;
        nets.insert(net, entry, 0)?;
    }
    let result = children.insert(child, rule, 0);
    if result.is_err() && existing.is_none() {
        let _ = nets.remove(&net);
    }
    result
}

fn net_of_place(place: Place) -> IpNet {
    let v6 = |first8: [u8; 8], len: u8| {
        let mut a = [0u8; 16];
        a[..8].copy_from_slice(&first8);
        IpNet::from(Ipv6Net::new(a.into(), len).expect("valid"))
    };
    match place {
        Place::V4Net(addr) => Ipv4Net::new(addr.into(), 24).expect("valid").into(),
        Place::V4Host(addr) => Ipv4Net::new(addr.into(), 32).expect("valid").into(),
        Place::V6Net(first8) => v6(first8, 48),
        Place::V6Subnet(first8) => v6(first8, 64),
        Place::V6Host(addr) => Ipv6Net::new(addr.into(), 128).expect("valid").into(),
        Place::V4Trie(key) => net_of(key),
        Place::V6Trie(key) => net_of(key),
    }
}

pub(super) fn net_of<K: Pod + Into<IpAddr>>(key: Key<K>) -> IpNet {
    IpNet::new(key.data().into(), key.prefix_len() as u8)
        .expect("kernel keys have valid prefix lengths")
}

pub(super) fn clear_trie<K: Pod, V: Pod>(
    trie: &mut LpmTrie<MapData, K, V>,
) -> Result<(), XdpError> {
    let keys: Vec<Key<K>> = trie.keys().collect::<Result<_, MapError>>()?;
    for key in keys {
        match trie.remove(&key) {
            Ok(()) => {}
            Err(e) if not_found(&e) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

pub(super) fn clear_hash<K: Pod, V: Pod>(map: &mut HashMap<MapData, K, V>) -> Result<(), XdpError> {
    let keys: Vec<K> = map.keys().collect::<Result<_, MapError>>()?;
    for key in keys {
        match map.remove(&key) {
            Ok(()) => {}
            Err(e) if not_found(&e) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}
