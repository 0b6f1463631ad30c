//! Changes to and from other nodes (cluster mode, see [`super::cluster`]):
//! local changes are announced on a channel; remote ones are applied
//! without being announced again.

use std::time::SystemTime;

use super::{rule_for, Change, Entry, ListError, SourceLists};
use crate::xdp::ListKind;

impl SourceLists {
    /// Sends local changes to `sender` from now on (the cluster sync; set
    /// once).
    pub fn announce_to(&self, sender: tokio::sync::mpsc::UnboundedSender<Change>) {
        let _ = self.changes.set(sender);
    }

    pub(super) fn announce(&self, change: Change) {
        if let Some(sender) = self.changes.get() {
            let _ = sender.send(change);
        }
    }

    /// Applies a change another node made (the cluster sync): not announced
    /// again. An entry the config file lists already is left to the config.
    /// Whether anything changed.
    pub fn apply_remote(&self, change: &Change) -> Result<bool, ListError> {
        self.apply_remote_batch(std::slice::from_ref(change))
            .map(|n| n > 0)
    }

    /// Applies many remote changes (a resync) with one state-file write;
    /// all or nothing: on a failure the kernel gets the previous rule set
    /// back in one swap. Returns how many changed something.
    pub fn apply_remote_batch(&self, changes: &[Change]) -> Result<usize, ListError> {
        let now = SystemTime::now();
        let mut inner = self.inner.lock().unwrap();
        let before = inner.runtime.clone();
        let mut applied = Vec::new();
        let mut failure = None;
        for change in changes {
            let result = match change {
                Change::Put(kind, entry) => {
                    let unchanged = inner.runtime[kind].get(&entry.cidr) == Some(entry);
                    if inner.config[kind].contains(&entry.cidr) || entry.expired(now) || unchanged {
                        continue;
                    }
                    let written = match inner.xdp.as_mut() {
                        Some(xdp) => xdp.insert(*kind, entry.cidr, rule_for(entry, now)),
                        None => Ok(()),
                    };
                    inner
                        .runtime
                        .get_mut(kind)
                        .unwrap()
                        .insert(entry.cidr, entry.clone());
                    written
                }
                Change::Remove(kind, cidr) => {
                    if inner.runtime.get_mut(kind).unwrap().remove(cidr).is_none() {
                        continue;
                    }
                    match inner.xdp.as_mut() {
                        Some(xdp) => xdp.remove(*kind, *cidr),
                        None => Ok(()),
                    }
                }
            };
            if let Err(e) = result {
                failure = Some(ListError::Kernel(e.to_string()));
                break;
            }
            applied.push(change);
        }
        let failure = failure.or_else(|| {
            (!applied.is_empty())
                .then(|| inner.persist().err().map(ListError::Persist))
                .flatten()
        });
        if let Some(error) = failure {
            inner.runtime = before;
            if let Err(e) = inner.load_kernel(now) {
                tracing::error!(error = %e, "could not restore the kernel rule set");
            }
            return Err(error);
        }
        if !applied.is_empty() {
            self.rebuild_guard(&inner);
        }
        for change in &applied {
            match change {
                Change::Put(kind, entry) => {
                    tracing::info!(list = kind.name(), cidr = %entry.cidr, "entry added by another node")
                }
                Change::Remove(kind, cidr) => {
                    tracing::info!(list = kind.name(), cidr = %cidr, "entry removed by another node")
                }
            }
        }
        Ok(applied.len())
    }

    /// The runtime entries of a list (not the config file's).
    pub fn runtime_entries(&self, kind: ListKind) -> Vec<Entry> {
        self.inner.lock().unwrap().runtime[&kind]
            .values()
            .cloned()
            .collect()
    }
}
