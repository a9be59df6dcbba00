//! Quotas of API keys and models: [`rate`] (requests/min, tokens/min, concurrency per key,
//! shared between gateway replicas by division), [`fair_queue`] (per-model concurrency with a
//! queue fair across keys, see [`ModelQueues`]) and [`peers`] (how many gateway replicas share
//! the key quotas).

pub mod fair_queue;
pub mod peers;
pub mod rate;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use fair_queue::{FairQueue, ModelSlot, QueueError};
pub use rate::{ConcurrencySlot, KeyLimits, LimitKind, Peers, RateStatus, Rejection};

/// Settings of the per-model concurrency limit.
#[derive(Clone, Debug)]
pub struct ModelQueueConfig {
    /// Requests of one model sent to its engines at once, per gateway replica (0: no limit).
    pub max_concurrency: usize,
    /// Requests that may wait for a slot of a model; more get 503.
    pub queue_limit: usize,
    /// How long a request waits for a slot of its model.
    pub timeout: Duration,
}

impl Default for ModelQueueConfig {
    fn default() -> Self {
        Self {
            max_concurrency: 0,
            queue_limit: 1000,
            timeout: Duration::from_secs(60),
        }
    }
}

/// The fair queue of each model, made on its first request when models have a limit.
#[derive(Default)]
pub struct ModelQueues {
    pub config: ModelQueueConfig,
    queues: Mutex<HashMap<String, Arc<FairQueue>>>,
}

impl ModelQueues {
    pub fn new(config: ModelQueueConfig) -> Self {
        Self {
            config,
            queues: Mutex::default(),
        }
    }

    /// The fair queue of `model`, if models have a concurrency limit.
    pub fn queue(&self, model: &str) -> Option<Arc<FairQueue>> {
        if self.config.max_concurrency == 0 {
            return None;
        }
        let mut queues = self
            .queues
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if let Some(queue) = queues.get(model) {
            return Some(queue.clone());
        }
        let queue = FairQueue::new(self.config.max_concurrency, self.config.queue_limit);
        queues.insert(model.to_string(), queue.clone());
        Some(queue)
    }
}
