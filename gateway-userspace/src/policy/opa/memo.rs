//! Decisions of an embedded policy remembered by their exact input: for a
//! pure policy (see `reads`: no clock, randomness, network or output, no
//! `with`) the decision is a function of the input it can read and of
//! `data`, and `data` is fixed for a compiled policy (a changed policy or
//! data file is a new compiled policy, with a new memo). So a request
//! whose readable input equals an earlier one's gets that decision without
//! an evaluation, and no request can get another decision than an
//! evaluation would give.
//!
//! Nothing expires (nothing could make an entry wrong); the size is
//! bounded (`memo_entries`, least recently used out), and an input larger
//! than [`MAX_KEY_BYTES`] is not remembered. Failed evaluations (timeouts,
//! errors) are never remembered.

use std::sync::Arc;

use regorus::Value;

use super::Decision;
use crate::policy::lru::Lru;

/// Inputs longer than this (as JSON) are evaluated every time: a policy
/// that reads whole header maps or bodies would fill the memo with keys
/// that rarely repeat.
pub const MAX_KEY_BYTES: usize = 2048;

pub struct Memo {
    entries: Lru<Arc<Decision>>,
    /// Lookups that found a decision (tests: a shared counter would cost
    /// the workers a contended cache line per request).
    #[cfg(test)]
    pub hits: std::sync::atomic::AtomicU64,
}

impl Memo {
    pub fn new(max_entries: usize) -> Self {
        Self {
            entries: Lru::new(max_entries),
            #[cfg(test)]
            hits: Default::default(),
        }
    }

    /// The key of an input document (the part the policy reads): its JSON,
    /// whose objects are ordered (`Value`'s are B-tree maps), so equal
    /// documents have equal keys. `None` when it is too long to keep.
    pub fn key(document: &Value) -> Option<Vec<u8>> {
        let key = serde_json::to_vec(document).ok()?;
        (key.len() <= MAX_KEY_BYTES).then_some(key)
    }

    pub fn get(&self, key: &[u8]) -> Option<Arc<Decision>> {
        let found = self.entries.get(key);
        #[cfg(test)]
        if found.is_some() {
            self.hits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        found
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.entries()
    }

    pub fn insert(&self, key: &[u8], decision: Arc<Decision>) {
        self.entries.insert(key, decision);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_documents_share_a_key_and_large_ones_have_none() {
        let a = Value::from_json_str(r#"{"b": 1, "a": {"y": "2", "x": [true]}}"#).unwrap();
        let b = Value::from_json_str(r#"{"a": {"x": [true], "y": "2"}, "b": 1}"#).unwrap();
        let c = Value::from_json_str(r#"{"a": {"x": [true], "y": "3"}, "b": 1}"#).unwrap();
        assert_eq!(Memo::key(&a), Memo::key(&b));
        assert_ne!(Memo::key(&a), Memo::key(&c));
        let large = Value::from("x".repeat(MAX_KEY_BYTES));
        assert_eq!(Memo::key(&large), None);
        let memo = Memo::new(10);
        let key = Memo::key(&a).unwrap();
        assert!(memo.get(&key).is_none());
        memo.insert(&key, Arc::new(Decision::Allow(Vec::new())));
        assert_eq!(
            memo.get(&key).as_deref(),
            Some(&Decision::Allow(Vec::new()))
        );
        assert!(memo.get(&Memo::key(&c).unwrap()).is_none());
    }
}
