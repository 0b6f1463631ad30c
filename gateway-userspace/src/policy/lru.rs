//! A small bounded least-recently-used map from byte strings to small
//! (cheaply cloned) values, sharded so that workers rarely meet on one lock. Each shard is
//! a hash map into a slab of nodes linked in recency order: lookups and
//! inserts are O(1), and a full shard drops its least recently used entry.

use std::{
    collections::HashMap,
    hash::BuildHasher,
    sync::{Arc, Mutex},
};

/// Shards at most; fewer when the capacity is smaller.
const SHARDS: usize = 16;
const NIL: usize = usize::MAX;

pub struct Lru<V> {
    shards: Box<[Mutex<Shard<V>>]>,
    hasher: foldhash::fast::RandomState,
}

struct Shard<V> {
    /// Key → slot in `nodes`; the key's bytes are shared with the node.
    map: HashMap<Arc<[u8]>, usize, foldhash::fast::RandomState>,
    nodes: Vec<Node<V>>,
    /// Most recently used.
    head: usize,
    /// Least recently used: the next to go.
    tail: usize,
    capacity: usize,
}

struct Node<V> {
    key: Arc<[u8]>,
    value: V,
    prev: usize,
    next: usize,
}

impl<V: Clone> Lru<V> {
    /// A map of at most `capacity` entries (rounded up to a multiple of
    /// the shard count); `capacity` must be at least 1.
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        let shards = SHARDS.min(capacity);
        let per_shard = capacity.div_ceil(shards);
        Self {
            shards: (0..shards)
                .map(|_| {
                    Mutex::new(Shard {
                        map: HashMap::default(),
                        nodes: Vec::new(),
                        head: NIL,
                        tail: NIL,
                        capacity: per_shard,
                    })
                })
                .collect(),
            hasher: foldhash::fast::RandomState::default(),
        }
    }

    fn shard(&self, key: &[u8]) -> std::sync::MutexGuard<'_, Shard<V>> {
        let i = self.hasher.hash_one(key) as usize % self.shards.len();
        self.shards[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The value for `key`, which becomes the most recently used.
    pub fn get(&self, key: &[u8]) -> Option<V> {
        let mut shard = self.shard(key);
        let slot = *shard.map.get(key)?;
        shard.touch(slot);
        Some(shard.nodes[slot].value.clone())
    }

    /// Sets `key`'s value, dropping the least recently used entry of its
    /// shard when that is full.
    pub fn insert(&self, key: &[u8], value: V) {
        let mut shard = self.shard(key);
        if let Some(&slot) = shard.map.get(key) {
            shard.nodes[slot].value = value;
            shard.touch(slot);
            return;
        }
        let key: Arc<[u8]> = Arc::from(key);
        let slot = if shard.nodes.len() < shard.capacity {
            shard.nodes.push(Node {
                key: key.clone(),
                value,
                prev: NIL,
                next: NIL,
            });
            shard.nodes.len() - 1
        } else {
            // Full: the tail's slot is reused for the new entry.
            let slot = shard.tail;
            shard.unlink(slot);
            let old = std::mem::replace(&mut shard.nodes[slot].key, key.clone());
            shard.map.remove(&old);
            shard.nodes[slot].value = value;
            slot
        };
        shard.map.insert(key, slot);
        shard.push_front(slot);
    }

    /// Entries held, all shards together.
    #[cfg(test)]
    pub fn entries(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).map.len())
            .sum()
    }
}

impl<V> Shard<V> {
    fn unlink(&mut self, slot: usize) {
        let (prev, next) = (self.nodes[slot].prev, self.nodes[slot].next);
        match prev {
            NIL => self.head = next,
            p => self.nodes[p].next = next,
        }
        match next {
            NIL => self.tail = prev,
            n => self.nodes[n].prev = prev,
        }
    }

    fn push_front(&mut self, slot: usize) {
        self.nodes[slot].prev = NIL;
        self.nodes[slot].next = self.head;
        match self.head {
            NIL => self.tail = slot,
            h => self.nodes[h].prev = slot,
        }
        self.head = slot;
    }

    fn touch(&mut self, slot: usize) {
        if self.head != slot {
            self.unlink(slot);
            self.push_front(slot);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn least_recently_used_goes_first() {
        // One shard (capacity below the shard count is one per shard, so
        // use a capacity that makes one shard of three).
        let lru = Lru {
            shards: vec![Mutex::new(Shard {
                map: HashMap::default(),
                nodes: Vec::new(),
                head: NIL,
                tail: NIL,
                capacity: 3,
            })]
            .into(),
            hasher: Default::default(),
        };
        lru.insert(b"a", 1);
        lru.insert(b"b", 2);
        lru.insert(b"c", 3);
        assert_eq!(lru.get(b"a"), Some(1), "a is now the most recent");
        lru.insert(b"d", 4);
        assert_eq!(lru.get(b"b"), None, "b was the least recent");
        assert_eq!(lru.get(b"a"), Some(1));
        assert_eq!(lru.get(b"c"), Some(3));
        assert_eq!(lru.get(b"d"), Some(4));
        lru.insert(b"c", 30);
        lru.insert(b"e", 5);
        assert_eq!(lru.get(b"a"), None, "a was the least recent after c, d");
        assert_eq!(lru.get(b"c"), Some(30));
        assert_eq!(lru.entries(), 3);
    }

    #[test]
    fn size_stays_bounded_under_many_keys() {
        let lru = Lru::new(100);
        for i in 0..10_000u32 {
            lru.insert(i.to_string().as_bytes(), i);
            assert!(
                lru.entries() <= 112,
                "at most 100 rounded up to 16 shards of 7"
            );
        }
        assert!(lru.entries() >= 50, "shards fill up: {}", lru.entries());
        // The most recent keys are still there.
        assert_eq!(lru.get(b"9999"), Some(9999));
        let single = Lru::new(1);
        single.insert(b"x", 1);
        single.insert(b"y", 2);
        assert_eq!(single.entries(), 1);
        assert_eq!(single.get(b"y"), Some(2));
    }
}
