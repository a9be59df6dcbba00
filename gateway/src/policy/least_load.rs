use std::cmp::Ordering;
use std::sync::Arc;

use rand::Rng;
use tokio::time::Instant;

use super::{PolicyConfig, RequestInfo, RoutingPolicy};
use crate::endpoint::Endpoint;

/// Power of two choices: two random candidates, the one with fewer in-flight requests wins;
/// ties go to the one whose engine reports the shorter queue (when its metrics are fresh).
///
/// Two random choices instead of a global minimum: no scan of every replica per request, and
/// no herd onto the replica that happened to look least loaded a moment ago.
#[derive(Debug)]
pub struct LeastLoad {
    config: PolicyConfig,
}

impl LeastLoad {
    pub fn new(config: PolicyConfig) -> Self {
        Self { config }
    }

    fn compare(&self, a: &Endpoint, b: &Endpoint) -> Ordering {
        a.inflight().cmp(&b.inflight()).then_with(|| {
            let now = Instant::now();
            let max_age = self.config.engine_metrics_max_age;
            match (a.engine_load(now, max_age), b.engine_load(now, max_age)) {
                (Some(a), Some(b)) => a
                    .waiting
                    .total_cmp(&b.waiting)
                    .then(a.kv_cache_usage.total_cmp(&b.kv_cache_usage)),
                _ => Ordering::Equal,
            }
        })
    }
}

impl RoutingPolicy for LeastLoad {
    fn name(&self) -> &'static str {
        "LeastLoad"
    }

    fn pick(&self, endpoints: &[Arc<Endpoint>], _request: &RequestInfo<'_>) -> Option<usize> {
        match endpoints.len() {
            0 => None,
            1 => Some(0),
            count => {
                let mut rng = rand::rng();
                let first = rng.random_range(0..count);
                let second = (first + rng.random_range(1..count)) % count;
                match self.compare(&endpoints[first], &endpoints[second]) {
                    Ordering::Greater => Some(second),
                    _ => Some(first),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::EngineLoad;
    use crate::policy::tests::{endpoints, REQUEST};

    #[test]
    fn two_candidates_fewer_inflight_wins() {
        let policy = LeastLoad::new(PolicyConfig::default());
        let endpoints = endpoints(2);
        endpoints[0].begin_request();
        for _ in 0..50 {
            assert_eq!(policy.pick(&endpoints, &REQUEST), Some(1));
        }
    }

    #[test]
    fn never_picks_the_most_loaded_of_many() {
        let policy = LeastLoad::new(PolicyConfig::default());
        let endpoints = endpoints(4);
        for _ in 0..10 {
            endpoints[2].begin_request();
        }
        let mut counts = [0; 4];
        for _ in 0..400 {
            counts[policy.pick(&endpoints, &REQUEST).unwrap()] += 1;
        }
        assert_eq!(counts[2], 0, "{counts:?}");
        assert!(
            counts
                .iter()
                .enumerate()
                .all(|(index, count)| index == 2 || *count > 50),
            "{counts:?}"
        );
    }

    #[test]
    fn spreads_when_idle() {
        let policy = LeastLoad::new(PolicyConfig::default());
        let endpoints = endpoints(2);
        let picks_of_first = (0..200)
            .filter(|_| policy.pick(&endpoints, &REQUEST) == Some(0))
            .count();
        assert!((50..150).contains(&picks_of_first), "{picks_of_first}");
    }

    #[tokio::test(start_paused = true)]
    async fn ties_broken_by_fresh_engine_queue() {
        let config = PolicyConfig::default();
        let policy = LeastLoad::new(config);
        let endpoints = endpoints(2);
        let now = Instant::now();
        let load = |waiting| EngineLoad {
            waiting,
            kv_cache_usage: 0.1,
            scraped_at: now,
        };
        endpoints[0].set_engine_load(Some(load(8.0)));
        endpoints[1].set_engine_load(Some(load(0.0)));
        for _ in 0..50 {
            assert_eq!(policy.pick(&endpoints, &REQUEST), Some(1));
        }
        // In-flight counts come first.
        endpoints[1].begin_request();
        assert_eq!(policy.pick(&endpoints, &REQUEST), Some(0));
        endpoints[1].end_request();
        // Stale metrics are ignored: back to a coin toss.
        tokio::time::advance(config.engine_metrics_max_age * 2).await;
        let picks_of_first = (0..200)
            .filter(|_| policy.pick(&endpoints, &REQUEST) == Some(0))
            .count();
        assert!((50..150).contains(&picks_of_first), "{picks_of_first}");
    }
}
