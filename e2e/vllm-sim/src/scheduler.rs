//! Admission control: at most `--max-num-seqs` sequences run, the rest wait in
//! FIFO order.
//!
//! A fair `tokio::sync::Semaphore` gives FIFO admission; guards keep the
//! running and waiting counts exact under cancellation (a client that goes
//! away while queued or running drops its guard, and the counts drop with it).
//! The hot path is one `try_acquire` and two atomic increments; the adapter
//! table behind a mutex is only touched by LoRA requests.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use thiserror::Error;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Scheduler failures.
#[derive(Debug, Error)]
pub enum SchedulerError {
    /// The scheduler was shut down while the request waited.
    #[error("the engine is shutting down; retry on another replica")]
    Closed(#[source] tokio::sync::AcquireError),
}

impl SchedulerError {
    /// Low-cardinality label for metrics and logs.
    pub fn metric_label(&self) -> &'static str {
        match self {
            SchedulerError::Closed(_) => "closed",
        }
    }
}

/// Running and waiting requests of one adapter.
#[derive(Debug, Default, Clone, Copy)]
struct AdapterCounts {
    running: usize,
    waiting: usize,
}

/// FIFO admission with exact running/waiting counts and KV-block accounting.
#[derive(Debug)]
pub struct Scheduler {
    slots: Arc<Semaphore>,
    running: AtomicUsize,
    waiting: AtomicUsize,
    kv_blocks_in_use: AtomicU64,
    adapters: Mutex<BTreeMap<Arc<str>, AdapterCounts>>,
}

impl Scheduler {
    /// A scheduler running at most `max_num_seqs` sequences.
    pub fn new(max_num_seqs: usize) -> Self {
        Scheduler {
            slots: Arc::new(Semaphore::new(max_num_seqs)),
            running: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            kv_blocks_in_use: AtomicU64::new(0),
            adapters: Mutex::new(BTreeMap::new()),
        }
    }

    /// Requests holding a slot (`vllm:num_requests_running`).
    pub fn running(&self) -> usize {
        self.running.load(Ordering::Relaxed)
    }

    /// Requests queued for a slot (`vllm:num_requests_waiting`).
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// KV blocks held by running sequences.
    pub fn kv_blocks_in_use(&self) -> u64 {
        self.kv_blocks_in_use.load(Ordering::Relaxed)
    }

    /// Adapters with running and with waiting requests, each comma-joined in
    /// name order (the `vllm:lora_requests_info` labels).
    pub fn adapter_labels(&self) -> (String, String) {
        let adapters = self.adapters.lock().unwrap_or_else(PoisonError::into_inner);
        let join = |pick: fn(&AdapterCounts) -> usize| {
            adapters
                .iter()
                .filter(|(_, counts)| pick(counts) > 0)
                .map(|(name, _)| name.as_ref())
                .collect::<Vec<_>>()
                .join(",")
        };
        (join(|c| c.running), join(|c| c.waiting))
    }

    /// Waits for a slot in FIFO order. Dropping the future leaves the queue.
    pub async fn admit(
        self: &Arc<Self>,
        adapter: Option<Arc<str>>,
    ) -> Result<RunningSlot, SchedulerError> {
        let permit = match Arc::clone(&self.slots).try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                let waiting = WaitingGuard::new(Arc::clone(self), adapter.clone());
                let acquired = Arc::clone(&self.slots).acquire_owned().await;
                drop(waiting);
                acquired.map_err(SchedulerError::Closed)?
            }
        };
        Ok(RunningSlot::new(Arc::clone(self), permit, adapter))
    }

    /// Stops admitting: queued and future requests fail with [`SchedulerError::Closed`].
    pub fn close(&self) {
        self.slots.close();
    }

    fn adjust_adapter(&self, adapter: &Arc<str>, change: impl FnOnce(&mut AdapterCounts)) {
        let mut adapters = self.adapters.lock().unwrap_or_else(PoisonError::into_inner);
        let counts = adapters.entry(Arc::clone(adapter)).or_default();
        change(counts);
        if counts.running == 0 && counts.waiting == 0 {
            adapters.remove(adapter);
        }
    }
}

/// Counts one queued request until dropped.
struct WaitingGuard {
    scheduler: Arc<Scheduler>,
    adapter: Option<Arc<str>>,
}

impl WaitingGuard {
    fn new(scheduler: Arc<Scheduler>, adapter: Option<Arc<str>>) -> Self {
        scheduler.waiting.fetch_add(1, Ordering::Relaxed);
        if let Some(adapter) = &adapter {
            scheduler.adjust_adapter(adapter, |c| c.waiting += 1);
        }
        WaitingGuard { scheduler, adapter }
    }
}

impl Drop for WaitingGuard {
    fn drop(&mut self) {
        self.scheduler.waiting.fetch_sub(1, Ordering::Relaxed);
        if let Some(adapter) = &self.adapter {
            self.scheduler
                .adjust_adapter(adapter, |c| c.waiting = c.waiting.saturating_sub(1));
        }
    }
}

/// A running sequence: holds its slot and KV blocks until dropped.
#[derive(Debug)]
pub struct RunningSlot {
    scheduler: Arc<Scheduler>,
    _permit: OwnedSemaphorePermit,
    adapter: Option<Arc<str>>,
    kv_blocks: u64,
}

impl RunningSlot {
    fn new(
        scheduler: Arc<Scheduler>,
        permit: OwnedSemaphorePermit,
        adapter: Option<Arc<str>>,
    ) -> Self {
        scheduler.running.fetch_add(1, Ordering::Relaxed);
        if let Some(adapter) = &adapter {
            scheduler.adjust_adapter(adapter, |c| c.running += 1);
        }
        RunningSlot {
            scheduler,
            _permit: permit,
            adapter,
            kv_blocks: 0,
        }
    }

    /// Grows the KV blocks this sequence holds to `blocks` (never shrinks).
    pub fn hold_kv_blocks(&mut self, blocks: u64) {
        if blocks > self.kv_blocks {
            self.scheduler
                .kv_blocks_in_use
                .fetch_add(blocks - self.kv_blocks, Ordering::Relaxed);
            self.kv_blocks = blocks;
        }
    }
}

impl Drop for RunningSlot {
    fn drop(&mut self) {
        self.scheduler.running.fetch_sub(1, Ordering::Relaxed);
        self.scheduler
            .kv_blocks_in_use
            .fetch_sub(self.kv_blocks, Ordering::Relaxed);
        if let Some(adapter) = &self.adapter {
            self.scheduler
                .adjust_adapter(adapter, |c| c.running = c.running.saturating_sub(1));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn fifo_queue_with_exact_counts() {
        let scheduler = Arc::new(Scheduler::new(1));
        let mut first = scheduler.admit(None).await.unwrap();
        first.hold_kv_blocks(3);
        assert_eq!((scheduler.running(), scheduler.waiting()), (1, 0));
        assert_eq!(scheduler.kv_blocks_in_use(), 3);

        let s2 = Arc::clone(&scheduler);
        let second = tokio::spawn(async move { s2.admit(Some("a".into())).await.map(|_| ()) });
        let s3 = Arc::clone(&scheduler);
        let third = tokio::spawn(async move { s3.admit(None).await.map(|_| ()) });
        while scheduler.waiting() < 2 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(scheduler.adapter_labels(), (String::new(), "a".to_owned()));

        // Cancelling a queued request removes it from the queue.
        third.abort();
        let _ = third.await;
        assert_eq!(scheduler.waiting(), 1);

        drop(first);
        second.await.unwrap().unwrap();
        assert_eq!((scheduler.running(), scheduler.waiting()), (0, 0));
        assert_eq!(scheduler.kv_blocks_in_use(), 0);
        assert_eq!(scheduler.adapter_labels(), (String::new(), String::new()));
    }

    #[tokio::test]
    async fn closed_scheduler_rejects() {
        let scheduler = Arc::new(Scheduler::new(1));
        let _held = scheduler.admit(None).await.unwrap();
        scheduler.close();
        let err = scheduler.admit(None).await.unwrap_err();
        assert_eq!(err.metric_label(), "closed");
    }
}
