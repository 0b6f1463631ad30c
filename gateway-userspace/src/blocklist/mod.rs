//! The source deny list: one set of rules, enforced in the kernel (XDP maps)
//! when attached and always at L7 (connection guard). Entries come from the
//! config file (`xdp.deny`) or at runtime from the CLI / admin API; runtime
//! entries are persisted and re-applied on start.
//!
//! Every change is all-or-nothing: validated first, then written to the
//! kernel, then persisted; a failure at any step undoes the earlier ones.

mod matcher;
mod state;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    path::Path,
    sync::{Mutex, RwLock},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use gateway_common::{Rule, RuleSource};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

pub use self::{matcher::DenySet, state::StateStore};
use crate::{
    config::host_bits_error,
    sys,
    xdp::{Attachment, Counters, XdpDataPlane},
};

/// A runtime (CLI) entry as stored and shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    pub cidr: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Unix seconds.
    pub added_at: u64,
    /// Unix seconds; absent means permanent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
}

impl Entry {
    fn expiry(&self) -> Option<SystemTime> {
        self.expires_at.map(|s| UNIX_EPOCH + Duration::from_secs(s))
    }

    fn expired(&self, now: SystemTime) -> bool {
        self.expiry().is_some_and(|e| e <= now)
    }
}

/// One row of `xgate blocklist ls`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Listed {
    pub cidr: IpNet,
    /// `config` or `cli`.
    pub source: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BlocklistError {
    #[error("{0}")]
    Invalid(String),
    #[error("{cidr} is already in the blocklist ({origin})")]
    Duplicate { cidr: IpNet, origin: &'static str },
    #[error("{0} is not in the blocklist")]
    NotFound(IpNet),
    #[error("{0} comes from the config file (xdp.deny); remove it there and restart")]
    FromConfig(IpNet),
    #[error("the kernel rejected the change: {0}")]
    Kernel(String),
    #[error("could not persist the change: {0}")]
    Persist(String),
}

impl BlocklistError {
    /// Whether the caller sent something wrong (as opposed to the daemon
    /// failing to apply something right).
    pub fn is_client_error(&self) -> bool {
        !matches!(self, BlocklistError::Kernel(_) | BlocklistError::Persist(_))
    }
}

/// Counters for `xgate status`.
#[derive(Debug, Clone, Serialize)]
pub struct XdpStatus {
    pub attached: Vec<Attachment>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pin_dir: Option<String>,
    pub counters: Counters,
}

pub struct Blocklist {
    inner: Mutex<Inner>,
    /// Read on every accepted connection; rebuilt after each change.
    guard: RwLock<DenySet>,
}

struct Inner {
    config: BTreeSet<IpNet>,
    runtime: BTreeMap<IpNet, Entry>,
    store: StateStore,
    xdp: Option<XdpDataPlane>,
}

impl Blocklist {
    /// Loads persisted entries, drops expired ones, and makes the kernel maps
    /// (if any) hold exactly config + runtime entries.
    pub fn open(
        config_entries: &[IpNet],
        state_dir: &Path,
        xdp: Option<XdpDataPlane>,
    ) -> Result<Self, String> {
        let store = StateStore::new(state_dir);
        let now = SystemTime::now();
        let mut runtime = BTreeMap::new();
        for entry in store.load()? {
            if !entry.expired(now) {
                runtime.insert(entry.cidr, entry);
            }
        }
        let mut inner = Inner {
            config: config_entries.iter().copied().collect(),
            runtime,
            store,
            xdp,
        };
        inner.sync_kernel(now)?;
        let this = Self {
            guard: RwLock::new(DenySet::default()),
            inner: Mutex::new(inner),
        };
        this.rebuild_guard(&this.inner.lock().unwrap());
        Ok(this)
    }

    /// Adds a runtime entry. `ttl` makes it expire (in the kernel at once,
    /// and it is reaped from the lists within a second).
    pub fn add(
        &self,
        cidr: IpNet,
        reason: Option<String>,
        ttl: Option<Duration>,
    ) -> Result<Entry, BlocklistError> {
        if let Some(message) = host_bits_error(&cidr) {
            return Err(BlocklistError::Invalid(message));
        }
        if ttl.is_some_and(|t| t.is_zero()) {
            return Err(BlocklistError::Invalid(
                "ttl must be greater than zero".into(),
            ));
        }
        let now = SystemTime::now();
        let mut inner = self.inner.lock().unwrap();
        if inner.config.contains(&cidr) {
            return Err(BlocklistError::Duplicate {
                cidr,
                origin: "config file",
            });
        }
        if inner.runtime.contains_key(&cidr) {
            return Err(BlocklistError::Duplicate {
                cidr,
                origin: "added at runtime",
            });
        }
        let added_at = unix_secs(now);
        let entry = Entry {
            cidr,
            reason,
            added_at,
            expires_at: ttl.map(|t| added_at + t.as_secs().max(1)),
        };
        if let Some(xdp) = inner.xdp.as_mut() {
            xdp.insert_deny(cidr, rule_for(&entry, now))
                .map_err(|e| BlocklistError::Kernel(e.to_string()))?;
        }
        inner.runtime.insert(cidr, entry.clone());
        if let Err(e) = inner.persist() {
            inner.runtime.remove(&cidr);
            if let Some(xdp) = inner.xdp.as_mut() {
                let _ = xdp.remove_deny(cidr);
            }
            return Err(BlocklistError::Persist(e));
        }
        self.rebuild_guard(&inner);
        tracing::info!(cidr = %cidr, reason = entry.reason.as_deref().unwrap_or(""), "blocklist entry added");
        Ok(entry)
    }

    /// Removes a runtime entry.
    pub fn remove(&self, cidr: IpNet) -> Result<Entry, BlocklistError> {
        let mut inner = self.inner.lock().unwrap();
        if inner.config.contains(&cidr) {
            return Err(BlocklistError::FromConfig(cidr));
        }
        let Some(entry) = inner.runtime.remove(&cidr) else {
            return Err(BlocklistError::NotFound(cidr));
        };
        if let Some(xdp) = inner.xdp.as_mut() {
            if let Err(e) = xdp.remove_deny(cidr) {
                inner.runtime.insert(cidr, entry);
                return Err(BlocklistError::Kernel(e.to_string()));
            }
        }
        if let Err(e) = inner.persist() {
            let now = SystemTime::now();
            if let Some(xdp) = inner.xdp.as_mut() {
                let _ = xdp.insert_deny(cidr, rule_for(&entry, now));
            }
            inner.runtime.insert(cidr, entry);
            return Err(BlocklistError::Persist(e));
        }
        self.rebuild_guard(&inner);
        tracing::info!(cidr = %cidr, "blocklist entry removed");
        Ok(entry)
    }

    pub fn list(&self) -> Vec<Listed> {
        let inner = self.inner.lock().unwrap();
        let config = inner.config.iter().map(|cidr| Listed {
            cidr: *cidr,
            source: "config".into(),
            reason: None,
            expires_at: None,
        });
        let runtime = inner.runtime.values().map(|e| Listed {
            cidr: e.cidr,
            source: "cli".into(),
            reason: e.reason.clone(),
            expires_at: e.expires_at,
        });
        config.chain(runtime).collect()
    }

    /// Removes expired runtime entries; returns how many.
    pub fn reap_expired(&self) -> usize {
        let now = SystemTime::now();
        let mut inner = self.inner.lock().unwrap();
        let expired: Vec<IpNet> = inner
            .runtime
            .values()
            .filter(|e| e.expired(now))
            .map(|e| e.cidr)
            .collect();
        if expired.is_empty() {
            return 0;
        }
        for cidr in &expired {
            inner.runtime.remove(cidr);
            if let Some(xdp) = inner.xdp.as_mut() {
                if let Err(e) = xdp.remove_deny(*cidr) {
                    tracing::warn!(cidr = %cidr, error = %e, "could not reap expired kernel entry");
                }
            }
        }
        if let Err(e) = inner.persist() {
            tracing::warn!(error = %e, "could not persist reaped blocklist");
        }
        self.rebuild_guard(&inner);
        tracing::info!(count = expired.len(), "expired blocklist entries reaped");
        expired.len()
    }

    /// The deny prefix `ip` falls in, for the L7 guard.
    pub fn denies(&self, ip: IpAddr) -> Option<IpNet> {
        self.guard.read().unwrap().matching(ip, SystemTime::now())
    }

    pub fn xdp_status(&self) -> Option<Result<XdpStatus, String>> {
        let inner = self.inner.lock().unwrap();
        let xdp = inner.xdp.as_ref()?;
        Some(
            xdp.counters()
                .map_err(|e| e.to_string())
                .map(|counters| XdpStatus {
                    attached: xdp.attachments().to_vec(),
                    pin_dir: xdp.pin_dir().map(|p| p.display().to_string()),
                    counters,
                }),
        )
    }

    /// Hands the data plane back (at shutdown: dropping it detaches).
    pub fn take_xdp(&self) -> Option<XdpDataPlane> {
        self.inner.lock().unwrap().xdp.take()
    }

    fn rebuild_guard(&self, inner: &Inner) {
        let mut set = DenySet::default();
        for cidr in &inner.config {
            set.insert(*cidr, None);
        }
        for entry in inner.runtime.values() {
            set.insert(entry.cidr, entry.expiry());
        }
        *self.guard.write().unwrap() = set;
    }
}

impl Inner {
    fn persist(&self) -> Result<(), String> {
        let entries: Vec<Entry> = self.runtime.values().cloned().collect();
        self.store.save(&entries)
    }

    /// Makes the kernel tries hold exactly the wanted entries: stale ones
    /// (from a previous run's pinned maps) are removed, wanted ones written.
    fn sync_kernel(&mut self, now: SystemTime) -> Result<(), String> {
        let Some(xdp) = self.xdp.as_mut() else {
            return Ok(());
        };
        let wanted: BTreeMap<IpNet, Rule> = self
            .config
            .iter()
            .map(|cidr| {
                (
                    *cidr,
                    Rule {
                        expires_at_ns: 0,
                        source: RuleSource::Config as u32,
                        _pad: 0,
                    },
                )
            })
            .chain(self.runtime.values().map(|e| (e.cidr, rule_for(e, now))))
            .collect();
        let present = xdp.deny_prefixes().map_err(|e| e.to_string())?;
        for cidr in present.into_iter().filter(|c| !wanted.contains_key(c)) {
            xdp.remove_deny(cidr).map_err(|e| e.to_string())?;
        }
        for (cidr, rule) in wanted {
            xdp.insert_deny(cidr, rule)
                .map_err(|e| format!("cannot load deny entry {cidr} into the kernel: {e}"))?;
        }
        Ok(())
    }
}

/// A CIDR or a bare address (a single host), as the CLI and admin API accept.
/// Errors say exactly which part is wrong.
pub fn parse_cidr(text: &str) -> Result<IpNet, String> {
    let text = text.trim();
    let (addr, len) = match text.split_once('/') {
        Some((addr, len)) => (addr, Some(len)),
        None => (text, None),
    };
    let ip: IpAddr = addr.parse().map_err(|_| {
        format!("invalid CIDR '{text}': '{addr}' is not an IPv4 or IPv6 address (examples: 203.0.113.0/24, 2001:db8::/32, 198.51.100.7)")
    })?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let prefix_len = match len {
        None => max,
        Some(len) => len
            .parse::<u8>()
            .ok()
            .filter(|l| *l <= max)
            .ok_or_else(|| format!("invalid CIDR '{text}': prefix length '{len}' must be 0 to {max} for this address"))?,
    };
    Ok(IpNet::new(ip, prefix_len).expect("prefix length checked"))
}

/// Converts an entry's wall-clock expiry to the kernel's monotonic clock.
fn rule_for(entry: &Entry, now: SystemTime) -> Rule {
    let expires_at_ns = match entry.expiry() {
        None => 0,
        Some(expiry) => {
            let remaining = expiry.duration_since(now).unwrap_or_default();
            // Never 0 (which means "permanent") for an entry that expires.
            (sys::monotonic_now() + remaining).as_nanos().max(1) as u64
        }
    };
    Rule {
        expires_at_ns,
        source: RuleSource::Cli as u32,
        _pad: 0,
    }
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn temp_dir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("xgate-bl-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn parse_cidr_explains_what_is_wrong() {
        assert_eq!(parse_cidr("203.0.113.0/24"), Ok(net("203.0.113.0/24")));
        assert_eq!(parse_cidr("198.51.100.7"), Ok(net("198.51.100.7/32")));
        assert_eq!(parse_cidr("2001:db8::/32"), Ok(net("2001:db8::/32")));
        let e = parse_cidr("300.1.2.3/33").unwrap_err();
        assert!(
            e.contains("'300.1.2.3' is not an IPv4 or IPv6 address"),
            "{e}"
        );
        let e = parse_cidr("10.0.0.0/33").unwrap_err();
        assert!(e.contains("prefix length '33' must be 0 to 32"), "{e}");
        let e = parse_cidr("2001:db8::/129").unwrap_err();
        assert!(e.contains("must be 0 to 128"), "{e}");
    }

    #[test]
    fn add_remove_persist_and_reload() {
        let dir = temp_dir("persist");
        let list = Blocklist::open(&[net("192.0.2.0/24")], &dir, None).unwrap();
        list.add(net("203.0.113.0/24"), Some("abuse".into()), None)
            .unwrap();
        list.add(net("2001:db8::/48"), None, Some(Duration::from_secs(3600)))
            .unwrap();
        assert_eq!(
            list.denies("203.0.113.9".parse().unwrap()),
            Some(net("203.0.113.0/24"))
        );
        assert_eq!(
            list.denies("192.0.2.1".parse().unwrap()),
            Some(net("192.0.2.0/24"))
        );

        let reopened = Blocklist::open(&[], &dir, None).unwrap();
        let cidrs: Vec<IpNet> = reopened.list().iter().map(|l| l.cidr).collect();
        assert_eq!(cidrs, vec![net("203.0.113.0/24"), net("2001:db8::/48")]);
        assert_eq!(reopened.list()[0].reason.as_deref(), Some("abuse"));

        reopened.remove(net("203.0.113.0/24")).unwrap();
        assert_eq!(reopened.denies("203.0.113.9".parse().unwrap()), None);
        let again = Blocklist::open(&[], &dir, None).unwrap();
        assert_eq!(again.list().len(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_changes_are_refused_and_change_nothing() {
        let dir = temp_dir("refuse");
        let list = Blocklist::open(&[net("192.0.2.0/24")], &dir, None).unwrap();
        list.add(net("203.0.113.0/24"), None, None).unwrap();
        let before = std::fs::read_to_string(dir.join("blocklist.json")).unwrap();

        assert!(matches!(
            list.add(net("10.0.0.1/8"), None, None),
            Err(BlocklistError::Invalid(_))
        ));
        assert!(matches!(
            list.add(net("203.0.113.0/24"), None, None),
            Err(BlocklistError::Duplicate { .. })
        ));
        assert!(matches!(
            list.add(net("192.0.2.0/24"), None, None),
            Err(BlocklistError::Duplicate { .. })
        ));
        assert_eq!(
            list.remove(net("192.0.2.0/24")),
            Err(BlocklistError::FromConfig(net("192.0.2.0/24")))
        );
        assert_eq!(
            list.remove(net("198.51.100.0/24")),
            Err(BlocklistError::NotFound(net("198.51.100.0/24")))
        );

        assert_eq!(
            std::fs::read_to_string(dir.join("blocklist.json")).unwrap(),
            before
        );
        assert_eq!(list.list().len(), 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn persist_failure_rolls_back() {
        let dir = temp_dir("rollback");
        let list = Blocklist::open(&[], &dir, None).unwrap();
        // A directory where the state file should be makes the rename fail.
        std::fs::create_dir_all(dir.join("blocklist.json").join("x")).unwrap();
        let err = list.add(net("203.0.113.0/24"), None, None).unwrap_err();
        assert!(matches!(err, BlocklistError::Persist(_)), "{err:?}");
        assert!(list.list().is_empty());
        assert_eq!(list.denies("203.0.113.1".parse().unwrap()), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn corrupt_state_file_is_an_error_not_an_empty_list() {
        let dir = temp_dir("corrupt");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("blocklist.json"), "{not json").unwrap();
        let err = Blocklist::open(&[], &dir, None).err().unwrap();
        assert!(err.contains("is not a valid state file"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn expired_entries_are_reaped() {
        let dir = temp_dir("reap");
        let list = Blocklist::open(&[], &dir, None).unwrap();
        list.add(net("203.0.113.0/24"), None, Some(Duration::from_secs(1)))
            .unwrap();
        // Rewind the stored expiry instead of sleeping.
        {
            let mut inner = list.inner.lock().unwrap();
            inner
                .runtime
                .get_mut(&net("203.0.113.0/24"))
                .unwrap()
                .expires_at = Some(1);
        }
        assert_eq!(list.reap_expired(), 1);
        assert!(list.list().is_empty());
        assert!(Blocklist::open(&[], &dir, None).unwrap().list().is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
