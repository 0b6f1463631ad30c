//! Decisions kept for requests equal on a configured part of the input:
//! bounded in time (`ttl`) and size (`max_entries`).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::time::Instant;

use super::Decision;
use crate::config::opa::OpaCache;

pub struct DecisionCache {
    fields: Vec<String>,
    ttl: Duration,
    max_entries: usize,
    entries: Mutex<HashMap<String, (Instant, Arc<Decision>)>>,
}

impl DecisionCache {
    pub fn new(config: &OpaCache) -> Self {
        Self {
            fields: config.key.clone(),
            ttl: config.ttl,
            max_entries: config.max_entries,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The input fields the key is made of.
    pub fn fields(&self) -> &[String] {
        &self.fields
    }

    /// The decision kept for `key`, unless it expired.
    pub fn get(&self, key: &str) -> Option<Arc<Decision>> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let (expires, decision) = entries.get(key)?;
        (Instant::now() < *expires).then(|| decision.clone())
    }

    pub fn insert(&self, key: String, decision: Arc<Decision>) {
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= self.max_entries && !entries.contains_key(&key) {
            // Full: the expired ones go first; if none has, an arbitrary
            // eighth (a full sweep per insert would make a full cache slow).
            entries.retain(|_, (expires, _)| *expires > now);
            if entries.len() >= self.max_entries {
                let drop: Vec<String> = entries
                    .keys()
                    .take((self.max_entries / 8).max(1))
                    .cloned()
                    .collect();
                for key in drop {
                    entries.remove(&key);
                }
            }
        }
        entries.insert(key, (now + self.ttl, decision));
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.lock().unwrap().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(ttl: u64, max: usize) -> DecisionCache {
        DecisionCache::new(&OpaCache {
            key: vec!["path".into()],
            ttl: Duration::from_secs(ttl),
            max_entries: max,
        })
    }

    #[tokio::test(start_paused = true)]
    async fn entries_expire_after_ttl() {
        let cache = cache(10, 100);
        cache.insert("a".into(), Arc::new(Decision::Allow(Vec::new())));
        assert!(cache.get("a").is_some());
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(cache.get("a").is_some());
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(cache.get("a").is_none(), "expired");
    }

    #[tokio::test(start_paused = true)]
    async fn size_is_bounded() {
        let cache = cache(10, 16);
        for i in 0..100 {
            cache.insert(format!("k{i}"), Arc::new(Decision::Allow(Vec::new())));
            assert!(cache.len() <= 16, "{} entries", cache.len());
        }
        assert!(cache.get("k99").is_some(), "the newest is kept");
    }
}
