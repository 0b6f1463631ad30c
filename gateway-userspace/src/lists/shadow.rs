//! Allow entries win over deny entries. A change that one of the lists
//! quietly overrules (a block inside an allowed range, an allow that
//! un-blocks a blocked range) is applied, and the caller is told which
//! entry overrules it, so that "blocked" is never printed for sources that
//! are still served.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::SystemTime,
};

use ipnet::IpNet;

use super::{config_key, Entry};
use crate::xdp::ListKind;

/// One entry of the other list that overlaps a new one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Overlap {
    pub cidr: IpNet,
    pub from_config: bool,
}

/// Unexpired entries of a list (config first) that overlap `cidr`: one
/// contains the other.
pub(super) fn overlapping(
    cidr: IpNet,
    config: &BTreeSet<IpNet>,
    runtime: &BTreeMap<IpNet, Entry>,
    now: SystemTime,
) -> Vec<Overlap> {
    let overlaps = |other: &IpNet| other.contains(&cidr) || cidr.contains(other);
    let from_config = config.iter().filter(|c| overlaps(c)).map(|c| Overlap {
        cidr: *c,
        from_config: true,
    });
    let from_runtime = runtime
        .values()
        .filter(|e| !e.expired(now) && overlaps(&e.cidr))
        .map(|e| Overlap {
            cidr: e.cidr,
            from_config: false,
        });
    from_config.chain(from_runtime).collect()
}

/// The warning for adding `cidr` to `kind` while `other` (an entry of the
/// opposite list) overlaps it.
pub(super) fn warning(kind: ListKind, cidr: IpNet, other: &Overlap) -> String {
    let origin = if other.from_config {
        format!("from the config file, xdp.{}", config_key(other_list(kind)))
    } else {
        "added at runtime".to_string()
    };
    match kind {
        ListKind::Deny if other.cidr.contains(&cidr) => format!(
            "{cidr} is inside allowlist entry {} ({origin}); allow wins, so these sources are NOT blocked \
             until that entry is removed",
            other.cidr
        ),
        ListKind::Deny => format!(
            "allowlist entry {} ({origin}) lies inside {cidr}; allow wins, so those sources stay allowed",
            other.cidr
        ),
        ListKind::Allow => {
            let unblocked = if cidr.contains(&other.cidr) {
                other.cidr
            } else {
                cidr
            };
            format!(
                "this un-blocks {unblocked} of blocklist entry {} ({origin}); allow wins over deny",
                other.cidr
            )
        }
    }
}

fn other_list(kind: ListKind) -> ListKind {
    match kind {
        ListKind::Deny => ListKind::Allow,
        ListKind::Allow => ListKind::Deny,
    }
}
