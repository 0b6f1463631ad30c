//! Bans: runtime deny entries made by an auto-ban rule (see
//! [`crate::autoban`]), listed and lifted by `xgate bans`.

use std::{
    net::IpAddr,
    time::{Duration, SystemTime},
};

use ipnet::IpNet;

use super::{Entry, ListError, SourceLists};
use crate::xdp::ListKind;

impl SourceLists {
    /// Adds a runtime entry made by the auto-ban `rule` (shown by
    /// `xgate bans ls`); otherwise exactly like [`Self::add`].
    pub fn add_ban(
        &self,
        cidr: IpNet,
        reason: String,
        ttl: Duration,
        rule: &str,
    ) -> Result<Entry, ListError> {
        self.add_entry(
            ListKind::Deny,
            cidr,
            Some(reason),
            Some(ttl),
            Some(rule.to_string()),
            false,
        )
        .map(|added| added.entry)
    }

    /// Whether an allow entry covers `ip` (such a source is never banned).
    pub fn allows(&self, ip: IpAddr) -> bool {
        self.guard
            .read()
            .unwrap()
            .allow
            .matching(ip, SystemTime::now())
            .is_some()
    }

    /// The bans: runtime deny entries an auto-ban rule made.
    pub fn bans(&self) -> Vec<Entry> {
        self.runtime_entries(ListKind::Deny)
            .into_iter()
            .filter(|e| e.rule.is_some())
            .collect()
    }

    /// Lifts a ban: the one on exactly `net`, or for a single address the
    /// narrowest ban that covers it (a /24 ban lifted by one of its
    /// addresses).
    pub fn lift_ban(&self, net: IpNet) -> Result<Entry, ListError> {
        let host = net.prefix_len() == net.max_prefix_len();
        let ban = self
            .bans()
            .into_iter()
            .filter(|e| e.cidr == net || (host && e.cidr.contains(&net.addr())))
            .max_by_key(|e| e.cidr.prefix_len());
        match ban {
            Some(ban) => self.remove(ListKind::Deny, ban.cidr),
            None => Err(ListError::NoBan(net)),
        }
    }
}
