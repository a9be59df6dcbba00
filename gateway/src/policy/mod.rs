//! Replica selection. A [`RoutingPolicy`] picks one endpoint out of the candidates the proxy
//! hands it (ready, not ejected, not already tried for this request); it never does I/O.
//!
//! Adding a policy is a new implementation plus a line in [`for_strategy`]; the proxy does not
//! change. [`PrefixCache`] reads [`RequestInfo::prefix_blocks`], which the pipeline computes only
//! for models routed with it.

mod least_load;
pub mod prefix_cache;
mod round_robin;

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use kinfer_crds::RoutingStrategy;

use crate::endpoint::Endpoint;

pub use least_load::LeastLoad;
pub use prefix_cache::PrefixCache;
pub use round_robin::RoundRobin;

/// What a policy may know about the request being routed.
#[derive(Clone, Copy, Debug)]
pub struct RequestInfo<'a> {
    /// The model id the client asked for.
    pub model: &'a str,
    /// The request path, for example `/v1/chat/completions`.
    pub path: &'a str,
    /// Chain hashes of the prompt's cacheable prefix ([`crate::prefix`]); empty unless the
    /// model's strategy is PrefixCache.
    pub prefix_blocks: &'a [u64],
    /// The LoRA adapter requested, when `model` is one.
    pub adapter: Option<&'a str>,
}

pub trait RoutingPolicy: Send + Sync + Debug {
    /// The strategy name, as in `spec.routing.strategy`.
    fn name(&self) -> &'static str;

    /// Index into `endpoints` of the replica to use, `None` if `endpoints` is empty.
    fn pick(&self, endpoints: &[Arc<Endpoint>], request: &RequestInfo<'_>) -> Option<usize>;
}

/// Settings shared by the policies.
#[derive(Clone, Copy, Debug)]
pub struct PolicyConfig {
    /// Engine metrics older than this are ignored.
    pub engine_metrics_max_age: Duration,
    /// PrefixCache: no replica takes more than this factor times the mean load (in-flight
    /// requests) of the model's replicas.
    pub prefix_load_factor: f64,
    /// A replica whose engine queue (`vllm:num_requests_waiting`) is deeper than this is
    /// saturated: PrefixCache and zone preference look elsewhere.
    pub saturated_queue_depth: f64,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            engine_metrics_max_age: Duration::from_secs(10),
            prefix_load_factor: 1.5,
            saturated_queue_depth: 8.0,
        }
    }
}

/// The policy implementing `strategy`.
pub fn for_strategy(strategy: RoutingStrategy, config: PolicyConfig) -> Arc<dyn RoutingPolicy> {
    match strategy {
        RoutingStrategy::RoundRobin => Arc::new(RoundRobin::default()),
        RoutingStrategy::LeastLoad => Arc::new(LeastLoad::new(config)),
        RoutingStrategy::PrefixCache => Arc::new(PrefixCache::new(config)),
    }
}

/// Parse a strategy name as written in `spec.routing.strategy` (case-insensitive).
pub fn parse_strategy(name: &str) -> Result<RoutingStrategy, String> {
    match name.to_ascii_lowercase().as_str() {
        "leastload" | "least_load" | "least-load" => Ok(RoutingStrategy::LeastLoad),
        "roundrobin" | "round_robin" | "round-robin" => Ok(RoutingStrategy::RoundRobin),
        "prefixcache" | "prefix_cache" | "prefix-cache" => Ok(RoutingStrategy::PrefixCache),
        _ => Err(format!(
            "unknown routing strategy `{name}`: expected LeastLoad, RoundRobin or PrefixCache"
        )),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn endpoints(count: usize) -> Vec<Arc<Endpoint>> {
        (0..count)
            .map(|index| {
                Arc::new(
                    Endpoint::new(format!("e{index}"), &format!("127.0.0.1:{}", 1000 + index))
                        .unwrap(),
                )
            })
            .collect()
    }

    pub(crate) const REQUEST: RequestInfo<'static> = RequestInfo {
        model: "m",
        path: "/v1/completions",
        prefix_blocks: &[],
        adapter: None,
    };

    #[test]
    fn factory_names() {
        let config = PolicyConfig::default();
        assert_eq!(
            for_strategy(RoutingStrategy::LeastLoad, config).name(),
            "LeastLoad"
        );
        assert_eq!(
            for_strategy(RoutingStrategy::RoundRobin, config).name(),
            "RoundRobin"
        );
        assert_eq!(
            for_strategy(RoutingStrategy::PrefixCache, config).name(),
            "PrefixCache"
        );
    }

    #[test]
    fn strategies_parse() {
        assert_eq!(
            parse_strategy("RoundRobin"),
            Ok(RoutingStrategy::RoundRobin)
        );
        assert_eq!(parse_strategy("least-load"), Ok(RoutingStrategy::LeastLoad));
        assert!(parse_strategy("random").is_err());
    }

    #[test]
    fn empty_candidates() {
        let config = PolicyConfig::default();
        for strategy in [
            RoutingStrategy::LeastLoad,
            RoutingStrategy::RoundRobin,
            RoutingStrategy::PrefixCache,
        ] {
            assert_eq!(for_strategy(strategy, config).pick(&[], &REQUEST), None);
        }
    }
}
