//! Automatic prefix caching, modelled on vLLM V1's KV-cache manager.
//!
//! A prompt is cut into full blocks of `block_size` tokens (a trailing partial
//! block is never cached). Each block is identified by a chain hash
//! `hash(parent_hash, block_tokens)`, seeded with the LoRA adapter name (vLLM's
//! "extra keys"), so a block hash stands for the whole prefix up to it and an
//! adapter never reuses the base model's blocks. A lookup walks the chain until
//! the first miss; like vLLM, the last prompt token is always recomputed, so at
//! most `(prompt_tokens - 1) / block_size` blocks can hit. After the lookup the
//! prompt's blocks are inserted and the whole chain is marked recently used,
//! head last, so eviction takes chain tails first (vLLM frees in reverse order).
//!
//! Capacity is bounded by an LRU over block hashes. vLLM only evicts blocks no
//! running request references; the simulator evicts in plain LRU order, which
//! matches whenever the cache is larger than the running working set.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hash, Hasher};

/// Chain hashes of the full blocks of `tokens`.
pub fn block_hashes(tokens: &[u32], block_size: usize, adapter: Option<&str>) -> Vec<u64> {
    if block_size == 0 {
        return Vec::new();
    }
    let mut parent = {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        "vllm-sim-root".hash(&mut hasher);
        adapter.hash(&mut hasher);
        hasher.finish()
    };
    tokens
        .chunks_exact(block_size)
        .map(|block| {
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            parent.hash(&mut hasher);
            block.hash(&mut hasher);
            parent = hasher.finish();
            parent
        })
        .collect()
}

/// Outcome of one lookup, in tokens (vLLM counts prefix cache metrics in tokens).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lookup {
    /// Prompt tokens looked up (`vllm:prefix_cache_queries`).
    pub queried_tokens: u64,
    /// Prompt tokens found (`vllm:prefix_cache_hits`).
    pub hit_tokens: u64,
}

/// LRU set of block hashes.
#[derive(Debug)]
pub struct PrefixCache {
    block_size: usize,
    lru: Lru,
}

impl PrefixCache {
    /// A cache of at most `capacity_blocks` blocks of `block_size` tokens.
    pub fn new(block_size: usize, capacity_blocks: usize) -> Self {
        PrefixCache {
            block_size,
            lru: Lru::with_capacity(capacity_blocks),
        }
    }

    /// Tokens per block.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Blocks currently cached.
    pub fn len(&self) -> usize {
        self.lru.len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.lru.len() == 0
    }

    /// Looks up a prompt of `prompt_tokens` tokens whose full blocks hash to
    /// `hashes`, then caches those blocks.
    pub fn lookup_and_insert(&mut self, hashes: &[u64], prompt_tokens: usize) -> Lookup {
        let max_hit_blocks = prompt_tokens.saturating_sub(1) / self.block_size.max(1);
        let hit_blocks = hashes
            .iter()
            .take(max_hit_blocks)
            .take_while(|hash| self.lru.contains(**hash))
            .count();
        // Touch the chain tail first so the head ends up most recently used:
        // under pressure the tail blocks are evicted first, as vLLM frees
        // blocks in reverse order, and the shared prefix survives.
        for hash in hashes.iter().rev() {
            self.lru.touch(*hash);
        }
        Lookup {
            queried_tokens: prompt_tokens as u64,
            hit_tokens: (hit_blocks * self.block_size) as u64,
        }
    }
}

/// Hasher for keys that already are hashes.
#[derive(Default)]
struct IdentityHasher(u64);

impl Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*byte);
        }
    }
    fn write_u64(&mut self, value: u64) {
        self.0 = value;
    }
}

const NIL: usize = usize::MAX;

#[derive(Debug)]
struct Node {
    key: u64,
    prev: usize,
    next: usize,
}

/// Fixed-capacity LRU set: a hash map into a slab of doubly linked nodes.
/// `head` is the most recently used entry, `tail` the next to evict.
#[derive(Debug)]
struct Lru {
    capacity: usize,
    index: HashMap<u64, usize, BuildHasherDefault<IdentityHasher>>,
    nodes: Vec<Node>,
    head: usize,
    tail: usize,
}

impl Lru {
    fn with_capacity(capacity: usize) -> Self {
        Lru {
            capacity,
            index: HashMap::default(),
            nodes: Vec::new(),
            head: NIL,
            tail: NIL,
        }
    }

    fn len(&self) -> usize {
        self.index.len()
    }

    fn contains(&self, key: u64) -> bool {
        self.index.contains_key(&key)
    }

    /// Inserts `key` or marks it most recently used, evicting the least
    /// recently used entry when full.
    fn touch(&mut self, key: u64) {
        if self.capacity == 0 {
            return;
        }
        if let Some(&slot) = self.index.get(&key) {
            self.unlink(slot);
            self.push_front(slot);
            return;
        }
        let slot = if self.nodes.len() < self.capacity {
            self.nodes.push(Node {
                key,
                prev: NIL,
                next: NIL,
            });
            self.nodes.len() - 1
        } else {
            // Full: reuse the least recently used node.
            let slot = self.tail;
            self.unlink(slot);
            let evicted = self.nodes[slot].key;
            self.index.remove(&evicted);
            self.nodes[slot].key = key;
            slot
        };
        self.index.insert(key, slot);
        self.push_front(slot);
    }

    fn unlink(&mut self, slot: usize) {
        let (prev, next) = (self.nodes[slot].prev, self.nodes[slot].next);
        if prev == NIL {
            self.head = next;
        } else {
            self.nodes[prev].next = next;
        }
        if next == NIL {
            self.tail = prev;
        } else {
            self.nodes[next].prev = prev;
        }
        self.nodes[slot].prev = NIL;
        self.nodes[slot].next = NIL;
    }

    fn push_front(&mut self, slot: usize) {
        self.nodes[slot].prev = NIL;
        self.nodes[slot].next = self.head;
        if self.head != NIL {
            self.nodes[self.head].prev = slot;
        }
        self.head = slot;
        if self.tail == NIL {
            self.tail = slot;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(n: u32) -> Vec<u32> {
        (0..n).collect()
    }

    #[test]
    fn chain_hashes_cover_full_blocks_only() {
        assert_eq!(block_hashes(&tokens(15), 16, None).len(), 0);
        assert_eq!(block_hashes(&tokens(33), 16, None).len(), 2);
        let a = block_hashes(&tokens(48), 16, None);
        let mut other = tokens(48);
        other[0] = 99;
        let b = block_hashes(&other, 16, None);
        // A change in block 0 changes every later hash (chain).
        assert!(a.iter().zip(&b).all(|(x, y)| x != y));
        assert_ne!(a, block_hashes(&tokens(48), 16, Some("adapter")));
    }

    #[test]
    fn second_identical_prompt_hits_all_but_last_token() {
        let mut cache = PrefixCache::new(16, 100);
        let prompt = tokens(64);
        let hashes = block_hashes(&prompt, 16, None);
        assert_eq!(cache.lookup_and_insert(&hashes, 64).hit_tokens, 0);
        // 64 tokens: the last token is recomputed, so only 3 of 4 blocks hit.
        let second = cache.lookup_and_insert(&hashes, 64);
        assert_eq!(second.hit_tokens, 48);
        assert_eq!(second.queried_tokens, 64);
        // A longer prompt sharing the prefix hits the 4 shared blocks.
        let longer = block_hashes(&tokens(70), 16, None);
        assert_eq!(cache.lookup_and_insert(&longer, 70).hit_tokens, 64);
    }

    #[test]
    fn lru_evicts_least_recently_used() {
        let mut lru = Lru::with_capacity(2);
        lru.touch(1);
        lru.touch(2);
        lru.touch(1);
        lru.touch(3);
        assert!(lru.contains(1));
        assert!(!lru.contains(2));
        assert!(lru.contains(3));
        assert_eq!(lru.len(), 2);
        let mut empty = Lru::with_capacity(0);
        empty.touch(1);
        assert!(!empty.contains(1));
    }

    #[test]
    fn capacity_bounds_the_cache() {
        let mut cache = PrefixCache::new(16, 4);
        let hashes = block_hashes(&tokens(160), 16, None);
        cache.lookup_and_insert(&hashes, 160);
        assert_eq!(cache.len(), 4);
        // The tail blocks were evicted; the first four still hit.
        assert_eq!(cache.lookup_and_insert(&hashes, 160).hit_tokens, 64);
    }
}
