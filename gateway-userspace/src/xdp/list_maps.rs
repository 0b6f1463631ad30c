//! One source list (deny or allow) of one rule-set slot, as the kernel holds
//! it: IPv4 /24 and /32 entries in two hash maps (by /24 network, and by
//! host), IPv6 entries of the lengths in `EXACT_V6_LENS` in a hash map, and
//! every other length in an LPM trie per family. See docs/xdp.md.

use std::net::IpAddr;

use aya::{
    maps::{lpm_trie::Key, HashMap, IterableMap, LpmTrie, Map, MapData, MapError},
    Ebpf, Pod,
};
use gateway_common::{map_names, present, ExactKey6, Net24, Rule, EXACT_V6_LENS};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::{maps::ListKind, XdpError};

pub(super) struct ListMaps {
    kind: ListKind,
    v4: LpmTrie<MapData, [u8; 4], Rule>,
    v6: LpmTrie<MapData, [u8; 16], Rule>,
    v4_nets: HashMap<MapData, [u8; 4], Net24>,
    v4_hosts: HashMap<MapData, [u8; 4], Rule>,
    v6_exact: HashMap<MapData, ExactKey6, Rule>,
}

/// Where one entry lives.
enum Place {
    V4Net([u8; 4]),
    V4Host([u8; 4]),
    V6Exact(ExactKey6),
    V4Trie(Key<[u8; 4]>),
    V6Trie(Key<[u8; 16]>),
}

fn place(net: IpNet) -> Place {
    match net.trunc() {
        IpNet::V4(n) if n.prefix_len() == 32 => Place::V4Host(n.addr().octets()),
        IpNet::V4(n) if n.prefix_len() == 24 => Place::V4Net(n.network().octets()),
        IpNet::V4(n) => Place::V4Trie(Key::new(n.prefix_len().into(), n.network().octets())),
        IpNet::V6(n) if EXACT_V6_LENS.contains(&u32::from(n.prefix_len())) => {
            Place::V6Exact(ExactKey6 {
                prefix_len: n.prefix_len().into(),
                addr: n.network().octets(),
            })
        }
        IpNet::V6(n) => Place::V6Trie(Key::new(n.prefix_len().into(), n.network().octets())),
    }
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
        let (v4, v6, nets, hosts, exact) = match kind {
            ListKind::Deny => (DENY_V4, DENY_V6, DENY_V4_NETS, DENY_V4_HOSTS, DENY_V6_EXACT),
            ListKind::Allow => (
                ALLOW_V4,
                ALLOW_V6,
                ALLOW_V4_NETS,
                ALLOW_V4_HOSTS,
                ALLOW_V6_EXACT,
            ),
        };
        Ok(Self {
            kind,
            v4: take(ebpf, v4, slot)?,
            v6: take(ebpf, v6, slot)?,
            v4_nets: take(ebpf, nets, slot)?,
            v4_hosts: take(ebpf, hosts, slot)?,
            v6_exact: take(ebpf, exact, slot)?,
        })
    }

    /// The [`gateway_common::XdpConfig::present`] bit of the structure
    /// that holds `net` in a list of `kind`.
    pub(super) fn present_bit(kind: ListKind, net: IpNet) -> u32 {
        let list = match kind {
            ListKind::Deny => present::DENY,
            ListKind::Allow => present::ALLOW,
        };
        match place(net) {
            Place::V4Net(_) | Place::V4Host(_) => present::bit(list, 4, present::V4_HASH),
            Place::V4Trie(_) => present::bit(list, 4, present::TRIE),
            Place::V6Exact(key) => {
                let which = EXACT_V6_LENS
                    .iter()
                    .position(|l| *l == key.prefix_len)
                    .expect("placed by its length") as u32;
                present::bit(list, 6, which)
            }
            Place::V6Trie(_) => present::bit(list, 6, present::TRIE),
        }
    }

    /// Adds or replaces an entry. Either the entry is in place and
    /// matchable, or nothing changed (a full map is reported as such).
    pub(super) fn insert(&mut self, net: IpNet, rule: Rule) -> Result<(), XdpError> {
        let result = match place(net) {
            Place::V4Trie(key) => self.v4.insert(&key, rule, 0),
            Place::V6Trie(key) => self.v6.insert(&key, rule, 0),
            Place::V6Exact(key) => self.v6_exact.insert(key, rule, 0),
            Place::V4Net(key) => {
                let flags = self.v4_net(&key)?.map_or(0, |n| n.flags);
                let entry = Net24 {
                    rule,
                    flags: flags | Net24::RULE,
                    _pad: 0,
                };
                self.v4_nets.insert(key, entry, 0)
            }
            Place::V4Host(addr) => {
                // The host first, then the flag on its /24 that makes the
                // program look for it.
                let net24 = [addr[0], addr[1], addr[2], 0];
                let existing = self.v4_net(&net24)?;
                let had_host = self.v4_hosts.get(&addr, 0).is_ok();
                self.v4_hosts
                    .insert(addr, rule, 0)
                    .map_err(|e| self.full_or(e, net))?;
                match existing {
                    Some(n) if n.flags & Net24::HOSTS != 0 => Ok(()),
                    _ => {
                        let mut entry = existing.unwrap_or_default();
                        entry.flags |= Net24::HOSTS;
                        let result = self.v4_nets.insert(net24, entry, 0);
                        if result.is_err() && !had_host {
                            // Nothing half-applied: the host goes again.
                            let _ = self.v4_hosts.remove(&addr);
                        }
                        result
                    }
                }
            }
        };
        result.map_err(|e| self.full_or(e, net))
    }

    /// Removes an entry; absent is not an error.
    pub(super) fn remove(&mut self, net: IpNet) -> Result<(), XdpError> {
        let result = match place(net) {
            Place::V4Trie(key) => self.v4.remove(&key),
            Place::V6Trie(key) => self.v6.remove(&key),
            Place::V6Exact(key) => self.v6_exact.remove(&key),
            // The /24's HOSTS flag stays until the slot is rebuilt: other
            // hosts of the /24 may remain, and a stale flag costs one lookup.
            Place::V4Host(addr) => self.v4_hosts.remove(&addr),
            Place::V4Net(key) => match self.v4_net(&key)? {
                None => Ok(()),
                Some(n) if n.flags & Net24::HOSTS != 0 => self.v4_nets.insert(
                    key,
                    Net24 {
                        flags: Net24::HOSTS,
                        ..Net24::default()
                    },
                    0,
                ),
                Some(_) => self.v4_nets.remove(&key),
            },
        };
        match result {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Every entry's prefix.
    pub(super) fn prefixes(&self) -> Result<Vec<IpNet>, XdpError> {
        let mut out = Vec::new();
        for key in self.v4.keys() {
            out.push(net_of(key?));
        }
        for item in self.v4_nets.iter() {
            let (key, entry) = item?;
            if entry.flags & Net24::RULE != 0 {
                out.push(net_of_place(Place::V4Net(key)));
            }
        }
        for key in self.v4_hosts.keys() {
            out.push(net_of_place(Place::V4Host(key?)));
        }
        for key in self.v6.keys() {
            out.push(net_of(key?));
        }
        for key in self.v6_exact.keys() {
            out.push(net_of_place(Place::V6Exact(key?)));
        }
        Ok(out)
    }

    /// Empties every structure (keys are collected first: removing while
    /// iterating would skip entries).
    pub(super) fn clear(&mut self) -> Result<(), XdpError> {
        clear_trie(&mut self.v4)?;
        clear_trie(&mut self.v6)?;
        clear_hash(&mut self.v4_nets)?;
        clear_hash(&mut self.v4_hosts)?;
        clear_hash(&mut self.v6_exact)
    }

    fn v4_net(&self, key: &[u8; 4]) -> Result<Option<Net24>, XdpError> {
        match self.v4_nets.get(key, 0) {
            Ok(entry) => Ok(Some(entry)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(e.into()),
        }
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
        let (family, info) = match place(net) {
            // A host needs room in both maps; name the smaller.
            Place::V4Net(_) | Place::V4Host(_) => {
                let nets = self.v4_nets.map().info();
                let hosts = self.v4_hosts.map().info();
                let capacity = |i: Result<aya::maps::MapInfo, MapError>| {
                    i.map(|i| i.max_entries()).unwrap_or(0)
                };
                return XdpError::Full {
                    list: self.kind.name(),
                    family: "IPv4",
                    capacity: capacity(nets).min(capacity(hosts)),
                };
            }
            Place::V4Trie(_) => ("IPv4", self.v4.map().info()),
            Place::V6Exact(_) => ("IPv6", self.v6_exact.map().info()),
            Place::V6Trie(_) => ("IPv6", self.v6.map().info()),
        };
        XdpError::Full {
            list: self.kind.name(),
            family,
            capacity: info.map(|i| i.max_entries()).unwrap_or(0),
        }
    }
}

fn net_of_place(place: Place) -> IpNet {
    match place {
        Place::V4Net(addr) => Ipv4Net::new(addr.into(), 24).expect("valid").into(),
        Place::V4Host(addr) => Ipv4Net::new(addr.into(), 32).expect("valid").into(),
        Place::V6Exact(key) => Ipv6Net::new(key.addr.into(), key.prefix_len as u8)
            .expect("kernel keys have valid prefix lengths")
            .into(),
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
            Ok(()) | Err(MapError::KeyNotFound) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

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
