//! PrefixCache: send requests that share a prompt prefix to the replica that has it cached,
//! within a bound on load.
//!
//! 1. **Longest matching chain.** A table remembers, per block hash of recent prefixes
//!    ([`crate::prefix`]), the replica that served it. The deepest block of the request found
//!    there names the replica most likely to hold the longest part of its prefix in its KV
//!    cache (a conversation continues where its earlier turns were computed).
//! 2. **Consistent hashing with bounded loads** for prefixes never seen (or whose replica is
//!    gone or full): rendezvous hashing of an anchor block (the first [`ANCHOR_BLOCKS`] blocks:
//!    a shared system prompt) ranks the replicas; the first one whose load stays within
//!    `load_factor x mean load` gets it. Adding or removing a replica moves only the prefixes
//!    that must move: those it takes, or those it had. A prefix never seen goes to whichever
//!    of the two best-ranked replicas owns fewer prefixes (two choices: a handful of hot system
//!    prompts does not pile up on one replica); once assigned, the table keeps it there, so
//!    adding a replica moves no known prefix at all. Gateway replicas keep their own tables:
//!    they agree on the ranking, and may differ only between its top two.
//! 3. **LeastLoad** when the request has no useful prefix, or the chosen replica is
//!    saturated (engine queue deeper than the threshold).
//!
//! LoRA adapters: when some replicas report the adapter loaded (`vllm:lora_requests_info`) and
//! one of them is not saturated, only those are considered.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use kinfer_crds::metric_names::vllm;
use kinfer_crds::metrics_text;
use tokio::time::Instant;

use super::{LeastLoad, PolicyConfig, RequestInfo, RoutingPolicy};
use crate::endpoint::Endpoint;

/// Blocks (of 256 bytes) hashed into the consistent-hashing key: 1 KiB of prompt start.
pub const ANCHOR_BLOCKS: usize = 4;
/// Entries per generation of the prefix table (two generations: at most twice this).
const TABLE_GENERATION: usize = 64 * 1024;

/// Block hash -> replica id, in two generations: when the young one is full it becomes the
/// old one and the old one is dropped, so entries unused for a generation disappear.
#[derive(Debug, Default)]
struct PrefixTable {
    young: HashMap<u64, u64>,
    old: HashMap<u64, u64>,
    /// Anchors assigned by hashing (new prefixes), and how many each replica owns, in the
    /// same two generations.
    anchors_young: HashMap<u64, u64>,
    anchors_old: HashMap<u64, u64>,
    owned: HashMap<u64, usize>,
}

impl PrefixTable {
    fn get(&self, block: u64) -> Option<u64> {
        self.young
            .get(&block)
            .or_else(|| self.old.get(&block))
            .copied()
    }

    /// Prefixes (anchors) assigned to `replica` in the last two generations.
    fn owned(&self, replica: u64) -> usize {
        self.owned.get(&replica).copied().unwrap_or(0)
    }

    fn own(&mut self, anchor: u64, replica: u64) {
        if self.anchors_young.len() >= TABLE_GENERATION {
            self.anchors_old = std::mem::take(&mut self.anchors_young);
            self.owned.clear();
            for owner in self.anchors_old.values() {
                *self.owned.entry(*owner).or_default() += 1;
            }
        }
        let previous = self
            .anchors_young
            .insert(anchor, replica)
            .or_else(|| self.anchors_old.remove(&anchor));
        if let Some(previous) = previous {
            if let Some(count) = self.owned.get_mut(&previous) {
                *count = count.saturating_sub(1);
            }
        }
        *self.owned.entry(replica).or_default() += 1;
    }

    /// Keep a block used in the young generation.
    fn refresh(&mut self, block: u64, replica: u64) {
        if !self.young.contains_key(&block) {
            self.insert(block, replica);
        }
    }

    fn insert(&mut self, block: u64, replica: u64) {
        if self.young.len() >= TABLE_GENERATION {
            self.old = std::mem::take(&mut self.young);
        }
        self.young.insert(block, replica);
    }
}

/// Counters of how requests were routed, for tests and the benchmark.
#[derive(Debug, Default)]
pub struct PrefixStats {
    pub table_hits: AtomicU64,
    pub hashed: AtomicU64,
    pub fallbacks: AtomicU64,
}

#[derive(Debug)]
pub struct PrefixCache {
    config: PolicyConfig,
    fallback: LeastLoad,
    table: Mutex<PrefixTable>,
    pub stats: PrefixStats,
}

/// Rendezvous score of a replica for a key (splitmix64 of both).
fn score(key: u64, replica: u64) -> u64 {
    let mut z = key ^ replica.rotate_left(32) ^ 0x9E37_79B9_7F4A_7C15;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Largest load a replica may have to take one more request: `ceil(factor x (total + 1) / n)`.
pub fn load_bound(total_load: usize, replicas: usize, factor: f64) -> usize {
    ((factor * (total_load + 1) as f64) / replicas.max(1) as f64).ceil() as usize
}

/// Replicas ranked for `key` by rendezvous hashing; the first one within the load bound wins.
/// Pure, for tests: `loads[i]` is replica `i`'s current load.
pub fn bounded_rendezvous(key: u64, ids: &[u64], loads: &[usize], factor: f64) -> Option<usize> {
    let total: usize = loads.iter().sum();
    let bound = load_bound(total, ids.len(), factor);
    let mut ranked: Vec<usize> = (0..ids.len()).collect();
    ranked.sort_unstable_by_key(|&index| std::cmp::Reverse(score(key, ids[index])));
    ranked.into_iter().find(|&index| loads[index] < bound)
}

/// The adapters of the latest `vllm:lora_requests_info` sample (its value is a timestamp; old
/// label sets linger with older values): running and waiting ones, which the engine holds.
/// `None` when the engine does not export it (no LoRA, or not vLLM).
pub fn loaded_adapters(text: &str) -> Option<Vec<String>> {
    let mut latest: Option<(f64, Vec<String>)> = None;
    for sample in metrics_text::samples(text).flatten() {
        if sample.name != vllm::LORA_REQUESTS_INFO
            || latest
                .as_ref()
                .is_some_and(|(best, _)| *best > sample.value)
        {
            continue;
        }
        let mut adapters = Vec::new();
        for label in ["running_lora_adapters", "waiting_lora_adapters"] {
            if let Some(list) = sample.label(label) {
                adapters.extend(
                    list.split(',')
                        .map(str::trim)
                        .filter(|name| !name.is_empty())
                        .map(String::from),
                );
            }
        }
        latest = Some((sample.value, adapters));
    }
    latest.map(|(_, adapters)| adapters)
}

impl PrefixCache {
    pub fn new(config: PolicyConfig) -> Self {
        Self {
            config,
            fallback: LeastLoad::new(config),
            table: Mutex::new(PrefixTable::default()),
            stats: PrefixStats::default(),
        }
    }

    fn least_load(
        &self,
        endpoints: &[Arc<Endpoint>],
        subset: &[usize],
        request: &RequestInfo<'_>,
    ) -> Option<usize> {
        self.stats.fallbacks.fetch_add(1, Ordering::Relaxed);
        if subset.len() == endpoints.len() {
            return self.fallback.pick(endpoints, request);
        }
        let candidates: Vec<Arc<Endpoint>> = subset
            .iter()
            .map(|&index| endpoints[index].clone())
            .collect();
        self.fallback
            .pick(&candidates, request)
            .map(|picked| subset[picked])
    }
}

impl RoutingPolicy for PrefixCache {
    fn name(&self) -> &'static str {
        "PrefixCache"
    }

    fn pick(&self, endpoints: &[Arc<Endpoint>], request: &RequestInfo<'_>) -> Option<usize> {
        if endpoints.len() <= 1 {
            return (!endpoints.is_empty()).then_some(0);
        }
        let now = Instant::now();
        let max_age = self.config.engine_metrics_max_age;
        let threshold = self.config.saturated_queue_depth;
        let saturated = |index: usize| endpoints[index].is_saturated(now, max_age, threshold);
        let mut subset: Vec<usize> = (0..endpoints.len()).collect();
        if let Some(adapter) = request.adapter {
            let loaded: Vec<usize> = subset
                .iter()
                .copied()
                .filter(|&index| endpoints[index].has_adapter(adapter, now, max_age) == Some(true))
                .collect();
            if loaded.iter().any(|&index| !saturated(index)) {
                subset = loaded;
            }
        }
        let blocks = request.prefix_blocks;
        if blocks.is_empty() {
            return self.least_load(endpoints, &subset, request);
        }
        let loads: Vec<usize> = subset
            .iter()
            .map(|&index| endpoints[index].inflight())
            .collect();
        let bound = load_bound(
            loads.iter().sum(),
            subset.len(),
            self.config.prefix_load_factor,
        );
        let fits = |position: usize| loads[position] < bound && !saturated(subset[position]);
        let mut table = self
            .table
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        // 1. The replica holding the deepest known block.
        let mut matched = None;
        for block in blocks.iter().rev() {
            let Some(owner) = table.get(*block) else {
                continue;
            };
            if let Some(position) = subset
                .iter()
                .position(|&index| endpoints[index].id() == owner)
            {
                if fits(position) {
                    matched = Some(position);
                }
            }
            break;
        }
        let position = match matched {
            Some(position) => {
                self.stats.table_hits.fetch_add(1, Ordering::Relaxed);
                position
            }
            None => {
                // 2. Consistent hashing of the anchor, bounded load.
                let anchor = blocks[blocks.len().min(ANCHOR_BLOCKS) - 1];
                let ids: Vec<u64> = subset.iter().map(|&index| endpoints[index].id()).collect();
                let mut ranked: Vec<usize> = (0..subset.len()).collect();
                ranked.sort_unstable_by_key(|&position| {
                    std::cmp::Reverse(score(anchor, ids[position]))
                });
                let mut fitting = ranked.into_iter().filter(|&position| fits(position));
                let first = fitting.next();
                // A prefix never seen: of the two best-ranked replicas, the one that owns
                // fewer prefixes (two choices keep a few hot prefixes from piling up on one
                // replica, as plain hashing of 8 prompts over 4 replicas easily does).
                let known = table.get(anchor).is_some();
                let choice = match (first, fitting.next()) {
                    (Some(first), Some(second))
                        if !known && table.owned(ids[second]) < table.owned(ids[first]) =>
                    {
                        Some(second)
                    }
                    (first, _) => first,
                };
                match choice {
                    Some(position) => {
                        self.stats.hashed.fetch_add(1, Ordering::Relaxed);
                        if !known {
                            table.own(anchor, ids[position]);
                        }
                        position
                    }
                    None => {
                        drop(table);
                        // 3. Everything is full or saturated.
                        return self.least_load(endpoints, &subset, request);
                    }
                }
            }
        };
        let chosen = endpoints[subset[position]].id();
        // Blocks not known yet (past the matched depth), or owned by a replica that is no
        // longer a candidate, are now cached on the chosen replica; the others keep their
        // owner and are refreshed.
        let is_candidate = |owner: u64| subset.iter().any(|&index| endpoints[index].id() == owner);
        for block in blocks {
            match table.get(*block) {
                Some(owner) if is_candidate(owner) => table.refresh(*block, owner),
                _ => table.insert(*block, chosen),
            }
        }
        Some(subset[position])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::EngineLoad;
    use crate::policy::tests::endpoints;

    fn request<'a>(blocks: &'a [u64]) -> RequestInfo<'a> {
        RequestInfo {
            model: "m",
            path: "/v1/chat/completions",
            prefix_blocks: blocks,
            adapter: None,
        }
    }

    #[test]
    fn same_prefix_same_replica_until_the_bound() {
        let policy = PrefixCache::new(PolicyConfig::default());
        let endpoints = endpoints(4);
        let blocks = [11, 12, 13];
        let first = policy.pick(&endpoints, &request(&blocks)).unwrap();
        for _ in 0..20 {
            assert_eq!(policy.pick(&endpoints, &request(&blocks)), Some(first));
        }
        // Load it up: with factor f and 4 replicas, it takes at most ceil(f (t + 1) / 4).
        let mut placed = vec![0usize; 4];
        let mut guards = Vec::new();
        for _ in 0..40 {
            let picked = policy.pick(&endpoints, &request(&blocks)).unwrap();
            endpoints[picked].begin_request();
            guards.push(picked);
            placed[picked] += 1;
            let total: usize = endpoints.iter().map(|endpoint| endpoint.inflight()).sum();
            let max = endpoints
                .iter()
                .map(|endpoint| endpoint.inflight())
                .max()
                .unwrap();
            let factor = PolicyConfig::default().prefix_load_factor;
            assert!(max <= load_bound(total - 1, 4, factor), "{placed:?}");
        }
        assert!(placed[first] >= 10, "{placed:?}");
        for picked in guards {
            endpoints[picked].end_request();
        }
    }

    #[test]
    fn a_conversation_follows_its_deepest_block() {
        let policy = PrefixCache::new(PolicyConfig::default());
        let endpoints = endpoints(4);
        // Two conversations on the same system prompt (blocks 1, 2), diverging after.
        let a = policy.pick(&endpoints, &request(&[1, 2, 30, 31])).unwrap();
        // The first replica is made busy; a second conversation lands elsewhere.
        for _ in 0..3 {
            endpoints[a].begin_request();
        }
        let b = policy.pick(&endpoints, &request(&[1, 2, 40, 41])).unwrap();
        assert_ne!(a, b);
        for _ in 0..3 {
            endpoints[a].end_request();
        }
        // Each continues on its own replica, though both share blocks 1 and 2.
        assert_eq!(
            policy.pick(&endpoints, &request(&[1, 2, 40, 41, 42])),
            Some(b)
        );
        assert_eq!(
            policy.pick(&endpoints, &request(&[1, 2, 30, 31, 32])),
            Some(a)
        );
        assert!(policy.stats.table_hits.load(Ordering::Relaxed) >= 2);
    }

    #[tokio::test(start_paused = true)]
    async fn saturated_target_falls_back_to_least_load() {
        let policy = PrefixCache::new(PolicyConfig::default());
        let endpoints = endpoints(2);
        let blocks = [5, 6];
        let first = policy.pick(&endpoints, &request(&blocks)).unwrap();
        endpoints[first].set_engine_load(Some(EngineLoad {
            waiting: 100.0,
            kv_cache_usage: 0.9,
            scraped_at: Instant::now(),
        }));
        for _ in 0..10 {
            assert_eq!(policy.pick(&endpoints, &request(&blocks)), Some(1 - first));
        }
        // No prefix: LeastLoad.
        assert!(policy.pick(&endpoints, &request(&[])).is_some());
        assert!(policy.stats.fallbacks.load(Ordering::Relaxed) >= 1);
    }

    #[tokio::test(start_paused = true)]
    async fn adapters_prefer_replicas_that_have_them() {
        let policy = PrefixCache::new(PolicyConfig::default());
        let endpoints = endpoints(4);
        endpoints[2].set_adapters(Some(vec!["sql-lora".into()]), Instant::now());
        let mut info = request(&[]);
        info.adapter = Some("sql-lora");
        for _ in 0..20 {
            assert_eq!(policy.pick(&endpoints, &info), Some(2));
        }
        let blocks = [7, 8, 9];
        info.prefix_blocks = &blocks;
        assert_eq!(policy.pick(&endpoints, &info), Some(2));
    }

    #[test]
    fn adapters_from_engine_metrics() {
        let text = "# HELP vllm:lora_requests_info Running stats on lora requests.\n\
vllm:lora_requests_info{max_lora=\"2\",running_lora_adapters=\"old\",waiting_lora_adapters=\"\"} 1.0e9\n\
vllm:lora_requests_info{max_lora=\"2\",running_lora_adapters=\"sql-lora,chat\",waiting_lora_adapters=\"x\"} 1.7e9\n";
        assert_eq!(
            loaded_adapters(text),
            Some(vec!["sql-lora".into(), "chat".into(), "x".into()])
        );
        assert_eq!(loaded_adapters("vllm:num_requests_waiting 0\n"), None);
    }

    #[test]
    fn policy_churn_moves_only_the_prefixes_of_a_removed_replica() {
        let policy = PrefixCache::new(PolicyConfig::default());
        let five = endpoints(5);
        let four = &five[..4];
        let chains: Vec<Vec<u64>> = (0..200u64)
            .map(|key| vec![key * 3 + 1, key * 3 + 2])
            .collect();
        let route = |endpoints: &[Arc<Endpoint>], chain: &Vec<u64>| {
            endpoints[policy.pick(endpoints, &request(chain)).unwrap()].id()
        };
        let before: Vec<u64> = chains.iter().map(|chain| route(four, chain)).collect();
        // Spread over the four.
        for endpoint in four {
            let owned = before.iter().filter(|id| **id == endpoint.id()).count();
            assert!((30..70).contains(&owned), "{owned}");
        }
        // A fifth replica: known prefixes stay where their cache is.
        let with_fifth: Vec<u64> = chains.iter().map(|chain| route(&five, chain)).collect();
        assert_eq!(before, with_fifth);
        // One removed: only its prefixes move.
        let without_second: Vec<Arc<Endpoint>> = [&five[0], &five[2], &five[3]]
            .into_iter()
            .cloned()
            .collect();
        let after: Vec<u64> = chains
            .iter()
            .map(|chain| route(&without_second, chain))
            .collect();
        for (old, new) in before.iter().zip(&after) {
            if *old != five[1].id() {
                assert_eq!(old, new);
            }
        }
    }

    fn assignment(keys: &[u64], ids: &[u64]) -> Vec<u64> {
        let loads = vec![0; ids.len()];
        keys.iter()
            .map(|&key| ids[bounded_rendezvous(key, ids, &loads, 1.25).unwrap()])
            .collect()
    }

    #[test]
    fn churn_moves_only_the_keys_that_must_move() {
        let keys: Vec<u64> = (0..10_000u64)
            .map(|key| key.wrapping_mul(0x2545_F491_4F6C_DD1D))
            .collect();
        let four = [101, 202, 303, 404];
        let five = [101, 202, 303, 404, 505];
        let before = assignment(&keys, &four);
        let after = assignment(&keys, &five);
        let mut moved = 0;
        for (old, new) in before.iter().zip(&after) {
            if old != new {
                moved += 1;
                assert_eq!(
                    *new, 505,
                    "a key moved between two replicas that both stayed"
                );
            }
        }
        // About 1/5 of the keys move, all to the new replica.
        assert!((1500..2500).contains(&moved), "{moved}");
        // Removing a replica moves only its keys.
        let three = [101, 303, 404];
        let removed = assignment(&keys, &three);
        for (old, new) in before.iter().zip(&removed) {
            if *old != 202 {
                assert_eq!(old, new);
            }
        }
    }

    #[test]
    fn distribution_is_even_and_load_is_bounded() {
        let ids = [1u64, 2, 3, 4];
        let keys: Vec<u64> = (0..20_000u64)
            .map(|key| key.wrapping_mul(0x9E37_79B9_7F4A_7C15))
            .collect();
        let mut counts = [0usize; 4];
        for index in assignment(&keys, &ids) {
            counts[(index - 1) as usize] += 1;
        }
        for count in counts {
            assert!((4000..6000).contains(&count), "{counts:?}");
        }
        // One hot key, many requests held at once: no replica above the bound.
        let mut loads = vec![0usize; 4];
        for _ in 0..1000 {
            let picked = bounded_rendezvous(42, &ids, &loads, 1.25).unwrap();
            loads[picked] += 1;
            let total: usize = loads.iter().sum();
            let max = *loads.iter().max().unwrap();
            assert!(
                max as f64 <= (1.25 * total as f64 / 4.0).ceil() + 1.0,
                "{loads:?}"
            );
        }
    }
}
