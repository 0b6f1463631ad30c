//! Source lists: the deny list (blocklist) and the allow list, enforced in
//! the kernel (XDP maps) when attached and always at L7 (connection guard),
//! plus the kernel rate-limit policy compiled from config. Entries come from
//! the config file (`xdp.deny`, `xdp.allow`) or at runtime from the CLI /
//! admin API; runtime entries are persisted and re-applied on start.
//!
//! Every change is all-or-nothing: validated first, then written to the
//! kernel, then persisted; a failure at any step undoes the earlier ones.
//! A reload replaces the whole kernel rule set atomically (double buffering).

mod bans;
pub mod cluster;
mod matcher;
mod policy;
mod remote;
mod shadow;
mod state;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Mutex, OnceLock, RwLock,
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use gateway_common::{Rule, RuleSource};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

pub use self::{matcher::PrefixSet, policy::KernelPolicy, state::StateStore};
pub use crate::config::parse_cidr;
use crate::{
    config::{host_bits_error, Config},
    sys,
    xdp::{Attachment, Counters, KernelRules, ListKind, XdpDataPlane},
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
    /// The auto-ban rule that made this entry (a ban), if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
}

/// A runtime change, as the cluster sync hears of it (see [`cluster`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Put(ListKind, Entry),
    Remove(ListKind, IpNet),
}

impl Entry {
    fn expiry(&self) -> Option<SystemTime> {
        self.expires_at.map(|s| UNIX_EPOCH + Duration::from_secs(s))
    }

    fn expired(&self, now: SystemTime) -> bool {
        self.expiry().is_some_and(|e| e <= now)
    }
}

/// An entry just added, and what the user must know about it.
#[derive(Debug, Clone, Serialize)]
pub struct Added {
    #[serde(flatten)]
    pub entry: Entry,
    /// E.g. an allow entry that overrules this deny entry.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// One row of `xgate blocklist ls` / `xgate allowlist ls`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Listed {
    pub cidr: IpNet,
    /// `config`, `cli` (added at runtime: CLI, admin API, another node) or
    /// `ban` (an auto-ban rule).
    pub source: String,
    /// The auto-ban rule, for a ban.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ListError {
    #[error("{0}")]
    Invalid(String),
    #[error("{cidr} is already in the {list} ({origin})")]
    Duplicate {
        cidr: IpNet,
        list: &'static str,
        origin: &'static str,
    },
    #[error("{cidr} is not in the {list}")]
    NotFound { cidr: IpNet, list: &'static str },
    #[error("no ban covers {0} (see `xgate bans ls`)")]
    NoBan(IpNet),
    #[error("{cidr} comes from the config file (xdp.{key}); remove it there and reload")]
    FromConfig { cidr: IpNet, key: &'static str },
    #[error("the kernel rejected the change: {0}")]
    Kernel(String),
    #[error("could not persist the change: {0}")]
    Persist(String),
}

impl ListError {
    /// Whether the caller sent something wrong (as opposed to the daemon
    /// failing to apply something right).
    pub fn is_client_error(&self) -> bool {
        !matches!(self, ListError::Kernel(_) | ListError::Persist(_))
    }
}

/// The XDP part of `xgate status`.
#[derive(Debug, Clone, Serialize)]
pub struct XdpStatus {
    pub attached: Vec<Attachment>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pin_path: Option<String>,
    pub active_slot: u32,
    pub rate_buckets: usize,
    /// Summed over every interface.
    pub counters: Counters,
    /// Each attached interface's own counters.
    pub interface_counters: BTreeMap<String, Counters>,
    /// SYN cookies from XDP (`xdp.syn_cookies`).
    pub syn_cookies: crate::xdp::SynCookieStatus,
    /// Per-source drop counting: one drop in this many is sampled (1:
    /// every drop, 0: off).
    pub drop_sample: u32,
}

pub struct SourceLists {
    inner: Mutex<Inner>,
    /// Read on every accepted connection; rebuilt after each change.
    guard: RwLock<Guard>,
    /// Where local runtime changes are announced (the cluster sync), once
    /// something listens.
    changes: OnceLock<tokio::sync::mpsc::UnboundedSender<Change>>,
    /// Whether runtime deny entries exist: then requests on connections
    /// accepted before one was added are checked too.
    runtime_denies: AtomicBool,
}

#[derive(Default)]
struct Guard {
    deny: PrefixSet,
    allow: PrefixSet,
}

struct Inner {
    config: BTreeMap<ListKind, BTreeSet<IpNet>>,
    runtime: BTreeMap<ListKind, BTreeMap<IpNet, Entry>>,
    policy: KernelPolicy,
    store: StateStore,
    xdp: Option<XdpDataPlane>,
}

fn config_key(kind: ListKind) -> &'static str {
    match kind {
        ListKind::Deny => "deny",
        ListKind::Allow => "allow",
    }
}

impl SourceLists {
    /// Loads persisted entries, drops expired ones, and loads the complete
    /// rule set (config + runtime entries + rate policy) into the kernel.
    pub fn open(config: &Config, xdp: Option<XdpDataPlane>) -> Result<Self, String> {
        let store = StateStore::new(&config.state_dir);
        let stored = store.load()?;
        let now = SystemTime::now();
        let keep = |entries: Vec<Entry>| -> BTreeMap<IpNet, Entry> {
            entries
                .into_iter()
                .filter(|e| !e.expired(now))
                .map(|e| (e.cidr, e))
                .collect()
        };
        let mut inner = Inner {
            config: BTreeMap::new(),
            runtime: BTreeMap::from([
                (ListKind::Deny, keep(stored.deny)),
                (ListKind::Allow, keep(stored.allow)),
            ]),
            policy: KernelPolicy::from_config(config),
            store,
            xdp,
        };
        inner.set_config_lists(config);
        inner.load_kernel(now)?;
        let this = Self {
            guard: RwLock::new(Guard::default()),
            inner: Mutex::new(inner),
            changes: OnceLock::new(),
            runtime_denies: AtomicBool::new(false),
        };
        this.rebuild_guard(&this.inner.lock().unwrap());
        Ok(this)
    }

    /// Applies a reloaded config's lists and rate policy: the kernel gets the
    /// whole new rule set in one atomic swap; runtime entries are kept.
    pub fn reload(&self, config: &Config) -> Result<(), String> {
        let mut inner = self.inner.lock().unwrap();
        let old_config = inner.config.clone();
        let old_policy = inner.policy.clone();
        inner.set_config_lists(config);
        inner.policy = KernelPolicy::from_config(config);
        if let Err(e) = inner.load_kernel(SystemTime::now()) {
            inner.config = old_config;
            inner.policy = old_policy;
            return Err(e);
        }
        self.rebuild_guard(&inner);
        Ok(())
    }

    /// Adds a runtime entry. `ttl` makes it expire (in the kernel at once;
    /// it is reaped from the lists within a second). A whole address family
    /// (`0.0.0.0/0`, `::/0`) is refused: see [`SourceLists::add_reporting`].
    pub fn add(
        &self,
        kind: ListKind,
        cidr: IpNet,
        reason: Option<String>,
        ttl: Option<Duration>,
    ) -> Result<Entry, ListError> {
        self.add_reporting(kind, cidr, reason, ttl, false)
            .map(|added| added.entry)
    }

    /// [`SourceLists::add`] that also says what overrules the new entry (an
    /// allow entry over a new deny entry, and the deny entries a new allow
    /// entry un-blocks). `force` is needed for a prefix of length 0, which
    /// would block (or exempt) every source of its address family.
    pub fn add_reporting(
        &self,
        kind: ListKind,
        cidr: IpNet,
        reason: Option<String>,
        ttl: Option<Duration>,
        force: bool,
    ) -> Result<Added, ListError> {
        self.add_entry(kind, cidr, reason, ttl, None, force)
    }

    /// Adds a runtime entry, made by an auto-ban `rule` or not.
    fn add_entry(
        &self,
        kind: ListKind,
        cidr: IpNet,
        reason: Option<String>,
        ttl: Option<Duration>,
        rule: Option<String>,
        force: bool,
    ) -> Result<Added, ListError> {
        let cidr = crate::config::unmap_ipv4(cidr).unwrap_or(cidr);
        if let Some(message) = host_bits_error(&cidr) {
            return Err(ListError::Invalid(message));
        }
        if crate::config::is_everything(&cidr) && !force {
            return Err(ListError::Invalid(everything_message(kind, cidr)));
        }
        if ttl.is_some_and(|t| t.is_zero()) {
            return Err(ListError::Invalid("ttl must be greater than zero".into()));
        }
        let now = SystemTime::now();
        let mut inner = self.inner.lock().unwrap();
        let list = kind.name();
        if inner.config[&kind].contains(&cidr) {
            return Err(ListError::Duplicate {
                cidr,
                list,
                origin: "config file",
            });
        }
        if inner.runtime[&kind].contains_key(&cidr) {
            return Err(ListError::Duplicate {
                cidr,
                list,
                origin: "added at runtime",
            });
        }
        let added_at = unix_secs(now);
        let entry = Entry {
            cidr,
            reason,
            added_at,
            expires_at: ttl.map(|t| added_at + t.as_secs().max(1)),
            rule,
        };
        self.put(&mut inner, kind, entry.clone(), None, now)?;
        let other = match kind {
            ListKind::Deny => ListKind::Allow,
            ListKind::Allow => ListKind::Deny,
        };
        let warnings: Vec<String> =
            shadow::overlapping(cidr, &inner.config[&other], &inner.runtime[&other], now)
                .iter()
                .map(|overlap| shadow::warning(kind, cidr, overlap))
                .collect();
        drop(inner);
        tracing::info!(list, cidr = %cidr, reason = entry.reason.as_deref().unwrap_or(""), rule = entry.rule.as_deref().unwrap_or(""), "entry added");
        for warning in &warnings {
            tracing::warn!(list, cidr = %cidr, "{warning}");
        }
        self.announce(Change::Put(kind, entry.clone()));
        Ok(Added { entry, warnings })
    }

    /// Writes `entry` to the kernel, the lists and the state file, all or
    /// nothing (`previous`: the entry it replaces, restored on failure).
    fn put(
        &self,
        inner: &mut Inner,
        kind: ListKind,
        entry: Entry,
        previous: Option<Entry>,
        now: SystemTime,
    ) -> Result<(), ListError> {
        let cidr = entry.cidr;
        if let Some(xdp) = inner.xdp.as_mut() {
            xdp.insert(kind, cidr, rule_for(&entry, now))
                .map_err(|e| ListError::Kernel(e.to_string()))?;
        }
        inner.runtime.get_mut(&kind).unwrap().insert(cidr, entry);
        if let Err(e) = inner.persist() {
            let runtime = inner.runtime.get_mut(&kind).unwrap();
            match previous {
                Some(previous) => {
                    if let Some(xdp) = inner.xdp.as_mut() {
                        let _ = xdp.insert(kind, cidr, rule_for(&previous, now));
                    }
                    runtime.insert(cidr, previous);
                }
                None => {
                    runtime.remove(&cidr);
                    if let Some(xdp) = inner.xdp.as_mut() {
                        let _ = xdp.remove(kind, cidr);
                    }
                }
            }
            return Err(ListError::Persist(e));
        }
        self.rebuild_guard(inner);
        Ok(())
    }

    /// Removes a runtime entry.
    pub fn remove(&self, kind: ListKind, cidr: IpNet) -> Result<Entry, ListError> {
        let entry = self.remove_quietly(kind, cidr)?;
        tracing::info!(list = kind.name(), cidr = %cidr, "entry removed");
        self.announce(Change::Remove(kind, cidr));
        Ok(entry)
    }

    fn remove_quietly(&self, kind: ListKind, cidr: IpNet) -> Result<Entry, ListError> {
        let mut inner = self.inner.lock().unwrap();
        let list = kind.name();
        if inner.config[&kind].contains(&cidr) {
            return Err(ListError::FromConfig {
                cidr,
                key: config_key(kind),
            });
        }
        let Some(entry) = inner.runtime.get_mut(&kind).unwrap().remove(&cidr) else {
            return Err(ListError::NotFound { cidr, list });
        };
        if let Some(xdp) = inner.xdp.as_mut() {
            if let Err(e) = xdp.remove(kind, cidr) {
                inner.runtime.get_mut(&kind).unwrap().insert(cidr, entry);
                return Err(ListError::Kernel(e.to_string()));
            }
        }
        if let Err(e) = inner.persist() {
            let now = SystemTime::now();
            if let Some(xdp) = inner.xdp.as_mut() {
                let _ = xdp.insert(kind, cidr, rule_for(&entry, now));
            }
            inner.runtime.get_mut(&kind).unwrap().insert(cidr, entry);
            return Err(ListError::Persist(e));
        }
        self.rebuild_guard(&inner);
        Ok(entry)
    }

    pub fn list(&self, kind: ListKind) -> Vec<Listed> {
        let inner = self.inner.lock().unwrap();
        let config = inner.config[&kind].iter().map(|cidr| Listed {
            cidr: *cidr,
            source: "config".into(),
            rule: None,
            reason: None,
            expires_at: None,
        });
        let runtime = inner.runtime[&kind].values().map(|e| Listed {
            cidr: e.cidr,
            source: if e.rule.is_some() { "ban" } else { "cli" }.into(),
            rule: e.rule.clone(),
            reason: e.reason.clone(),
            expires_at: e.expires_at,
        });
        config.chain(runtime).collect()
    }

    /// Removes expired runtime entries; returns how many.
    pub fn reap_expired(&self) -> usize {
        let now = SystemTime::now();
        let mut inner = self.inner.lock().unwrap();
        let mut reaped = 0;
        for kind in [ListKind::Deny, ListKind::Allow] {
            let expired: Vec<IpNet> = inner.runtime[&kind]
                .values()
                .filter(|e| e.expired(now))
                .map(|e| e.cidr)
                .collect();
            for cidr in expired {
                inner.runtime.get_mut(&kind).unwrap().remove(&cidr);
                if let Some(xdp) = inner.xdp.as_mut() {
                    if let Err(e) = xdp.remove(kind, cidr) {
                        tracing::warn!(cidr = %cidr, error = %e, "could not reap expired kernel entry");
                    }
                }
                reaped += 1;
            }
        }
        if reaped == 0 {
            return 0;
        }
        if let Err(e) = inner.persist() {
            tracing::warn!(error = %e, "could not persist reaped lists");
        }
        self.rebuild_guard(&inner);
        tracing::info!(count = reaped, "expired list entries reaped");
        reaped
    }

    /// The deny prefix `ip` falls in, unless an allow entry covers it: the
    /// L7 guard's question.
    pub fn denies(&self, ip: IpAddr) -> Option<IpNet> {
        let now = SystemTime::now();
        let guard = self.guard.read().unwrap();
        if guard.allow.matching(ip, now).is_some() {
            return None;
        }
        guard.deny.matching(ip, now)
    }

    /// Whether runtime deny entries (CLI, admin API, bans, other nodes)
    /// exist. While they do, the proxy checks every request's client, so a
    /// kept-alive connection opened before a ban is refused at its next
    /// request; without them (the common case) that costs one atomic load.
    pub fn has_runtime_denies(&self) -> bool {
        self.runtime_denies.load(Ordering::Relaxed)
    }

    pub fn xdp_status(&self) -> Option<Result<XdpStatus, String>> {
        let inner = self.inner.lock().unwrap();
        let xdp = inner.xdp.as_ref()?;
        let status = || -> Result<XdpStatus, crate::xdp::XdpError> {
            Ok(XdpStatus {
                attached: xdp.attachments().to_vec(),
                pin_path: xdp.pin_root().map(|p| p.display().to_string()),
                active_slot: xdp.active_slot()?,
                rate_buckets: xdp.bucket_count(),
                counters: xdp.counters()?,
                interface_counters: xdp.interface_counters()?.into_iter().collect(),
                syn_cookies: xdp.syn_cookie_status()?,
                drop_sample: xdp.drop_sample()?,
            })
        };
        Some(status().map_err(|e| e.to_string()))
    }

    /// The `n` sources with the most packets dropped in XDP (None without
    /// XDP).
    pub fn xdp_top_dropped(
        &self,
        n: usize,
    ) -> Option<Result<Vec<crate::xdp::DroppedSource>, String>> {
        let inner = self.inner.lock().unwrap();
        let xdp = inner.xdp.as_ref()?;
        Some(xdp.top_dropped(n).map_err(|e| e.to_string()))
    }

    /// Auto mode's once-a-second look at the SYN rate (see
    /// `xdp::syncookie`).
    pub fn syn_cookie_tick(&self) {
        let mut inner = self.inner.lock().unwrap();
        if let Some(xdp) = inner.xdp.as_mut() {
            if let Err(e) = xdp.syn_cookie_tick(std::time::Instant::now()) {
                tracing::warn!(error = %e, "cannot read or switch the XDP SYN cookies");
            }
        }
    }

    /// Hands the data plane back (at shutdown).
    pub fn take_xdp(&self) -> Option<XdpDataPlane> {
        self.inner.lock().unwrap().xdp.take()
    }

    fn rebuild_guard(&self, inner: &Inner) {
        let mut guard = Guard::default();
        for (kind, set) in [
            (ListKind::Deny, &mut guard.deny),
            (ListKind::Allow, &mut guard.allow),
        ] {
            for cidr in &inner.config[&kind] {
                set.insert(*cidr, None);
            }
            for entry in inner.runtime[&kind].values() {
                set.insert(entry.cidr, entry.expiry());
            }
        }
        *self.guard.write().unwrap() = guard;
        self.runtime_denies.store(
            !inner.runtime[&ListKind::Deny].is_empty(),
            Ordering::Relaxed,
        );
    }
}

impl Inner {
    fn set_config_lists(&mut self, config: &Config) {
        self.config = BTreeMap::from([
            (ListKind::Deny, config.xdp.deny.iter().copied().collect()),
            (ListKind::Allow, config.xdp.allow.iter().copied().collect()),
        ]);
    }

    fn persist(&self) -> Result<(), String> {
        self.store.save(&state::Stored {
            deny: self.runtime[&ListKind::Deny].values().cloned().collect(),
            allow: self.runtime[&ListKind::Allow].values().cloned().collect(),
        })
    }

    /// Builds the complete rule set and swaps it into the kernel.
    fn load_kernel(&mut self, now: SystemTime) -> Result<(), String> {
        let Some(xdp) = self.xdp.as_mut() else {
            return Ok(());
        };
        let config_rule = Rule {
            expires_at_ns: 0,
            source: RuleSource::Config as u32,
            _pad: 0,
        };
        let entries = |kind: ListKind| -> Vec<(IpNet, Rule)> {
            // Runtime entries first, so a config entry for the same prefix
            // (it wins) is written last.
            self.runtime[&kind]
                .values()
                .map(|e| (e.cidr, rule_for(e, now)))
                .chain(self.config[&kind].iter().map(|c| (*c, config_rule)))
                .collect()
        };
        let rules = KernelRules {
            config: self.policy.config,
            ports: self.policy.ports.clone(),
            deny: entries(ListKind::Deny),
            allow: entries(ListKind::Allow),
            rate_overrides: self.policy.overrides.clone(),
        };
        xdp.replace_rules(&rules)
            .map_err(|e| format!("cannot load the rule set into the kernel: {e}"))?;
        xdp.set_syn_cookies(&self.policy.syn_cookies)
            .map_err(|e| format!("cannot apply xdp.syn_cookies: {e}"))
    }
}

/// Why a prefix of length 0 needs `--force`.
fn everything_message(kind: ListKind, cidr: IpNet) -> String {
    let family = if cidr.addr().is_ipv4() {
        "IPv4"
    } else {
        "IPv6"
    };
    match kind {
        ListKind::Deny => format!(
            "{cidr} would block every {family} source, including you; if that is what you want \
             (say, with an allowlist of the sources that may connect), add it with --force \
             (admin API: \"force\": true)"
        ),
        ListKind::Allow => format!(
            "{cidr} would exempt every {family} source from the blocklist and the XDP rate limit; \
             if that is what you want, add it with --force (admin API: \"force\": true)"
        ),
    }
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
mod tests;
