//! Replica selection. A [`RoutingPolicy`] picks one endpoint out of the candidates the proxy
//! hands it (ready, not ejected, not already tried for this request); it never does I/O.
//!
//! Adding a policy (for example PrefixCache, which will read [`RequestInfo::prefix_hash`]) is a
//! new implementation plus a line in [`for_strategy`]; the proxy does not change.

mod least_load;
mod round_robin;

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use kinfer_crds::RoutingStrategy;

use crate::index::Endpoint;

pub use least_load::LeastLoad;
pub use round_robin::RoundRobin;

/// What a policy may know about the request being routed.
#[derive(Clone, Copy, Debug)]
pub struct RequestInfo<'a> {
    /// The model id the client asked for.
    pub model: &'a str,
    /// The request path, for example `/v1/chat/completions`.
    pub path: &'a str,
    /// Hash of the prompt's first tokens, for cache-aware routing. Not computed yet: the
    /// gateway parses only `model` today.
    pub prefix_hash: Option<u64>,
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
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            engine_metrics_max_age: Duration::from_secs(10),
        }
    }
}

/// The policy implementing `strategy`. PrefixCache is not implemented yet and falls back to
/// LeastLoad (which is also what PrefixCache does when its preferred replica is overloaded).
pub fn for_strategy(strategy: RoutingStrategy, config: PolicyConfig) -> Arc<dyn RoutingPolicy> {
    match strategy {
        RoutingStrategy::RoundRobin => Arc::new(RoundRobin::default()),
        RoutingStrategy::LeastLoad | RoutingStrategy::PrefixCache => {
            Arc::new(LeastLoad::new(config))
        }
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
        prefix_hash: None,
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
            "LeastLoad"
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
        for strategy in [RoutingStrategy::LeastLoad, RoutingStrategy::RoundRobin] {
            assert_eq!(for_strategy(strategy, config).pick(&[], &REQUEST), None);
        }
    }
}
