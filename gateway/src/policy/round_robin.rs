use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::{RequestInfo, RoutingPolicy};
use crate::endpoint::Endpoint;

/// Each candidate in turn.
#[derive(Debug, Default)]
pub struct RoundRobin {
    next: AtomicUsize,
}

impl RoutingPolicy for RoundRobin {
    fn name(&self) -> &'static str {
        "RoundRobin"
    }

    fn pick(&self, endpoints: &[Arc<Endpoint>], _request: &RequestInfo<'_>) -> Option<usize> {
        if endpoints.is_empty() {
            return None;
        }
        Some(self.next.fetch_add(1, Ordering::Relaxed) % endpoints.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::tests::{endpoints, REQUEST};

    #[test]
    fn cycles() {
        let policy = RoundRobin::default();
        let endpoints = endpoints(3);
        let picks: Vec<_> = (0..6)
            .map(|_| policy.pick(&endpoints, &REQUEST).unwrap())
            .collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
    }
}
