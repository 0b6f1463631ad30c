//! Series that belong to a route or an upstream target live as long as the
//! route or target does: when the last handle of one is dropped (a reload
//! removed it and the last request on the old config ended), its series
//! are removed from the families, so /metrics never shows a route or a
//! target that is no longer configured.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
};

/// What series belong to.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub enum Owner {
    Route(String),
    Target { upstream: String, target: String },
}

type Remover = Box<dyn Fn() + Send + Sync>;

#[derive(Default)]
struct Entry {
    handles: usize,
    removers: Vec<Remover>,
}

/// Every owner with live handles, and how to remove its series.
#[derive(Default)]
pub struct Owners(Mutex<HashMap<Owner, Entry>>);

impl std::fmt::Debug for Owners {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Owners")
    }
}

impl Owners {
    /// A handle on `owner`'s series; they go when the last one is dropped.
    pub fn lease(self: &Arc<Self>, owner: Owner) -> Lease {
        self.lock().entry(owner.clone()).or_default().handles += 1;
        Lease {
            owners: self.clone(),
            owner,
        }
    }

    /// Notes a series of `owner`'s, removed with it by `remove`.
    pub fn add(&self, owner: &Owner, remove: impl Fn() + Send + Sync + 'static) {
        self.lock()
            .entry(owner.clone())
            .or_default()
            .removers
            .push(Box::new(remove));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Owner, Entry>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Keeps its owner's series; see [`Owners`].
pub struct Lease {
    owners: Arc<Owners>,
    owner: Owner,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.owner.fmt(f)
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut owners = self.owners.lock();
        let Some(entry) = owners.get_mut(&self.owner) else {
            return;
        };
        entry.handles -= 1;
        if entry.handles == 0 {
            if let Some(entry) = owners.remove(&self.owner) {
                for remove in entry.removers {
                    remove();
                }
            }
        }
    }
}
