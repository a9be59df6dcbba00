//! Per-model concurrency limit with a bounded queue, fair across API keys.
//!
//! At most `max_concurrent` requests of a model are sent to its engines at once (per gateway
//! replica); more wait in a queue of at most `queue_limit`. When a slot frees, it goes to the
//! waiting key that currently holds the fewest running slots of the model (first come first
//! served within a key, and between keys with equal shares). So one key that floods a model
//! keeps its running requests but cannot take the freed slots while others wait: the slots
//! converge to an equal share per waiting key, without preempting anything.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;

#[derive(Debug, PartialEq, Eq)]
pub enum QueueError {
    /// `queue_limit` requests already wait.
    Full,
    /// Waited `timeout` without a slot.
    Timeout,
}

#[derive(Debug, Default)]
struct State {
    running: usize,
    running_by_key: HashMap<Arc<str>, usize>,
    /// Per key, waiters in arrival order; each carries its arrival number.
    waiting: HashMap<Arc<str>, VecDeque<(u64, oneshot::Sender<()>)>>,
    waiting_count: usize,
    arrivals: u64,
}

#[derive(Debug)]
pub struct FairQueue {
    max_concurrent: usize,
    queue_limit: usize,
    state: Mutex<State>,
}

/// A running slot of a model, released (and handed to the next waiter) on drop.
#[derive(Debug)]
pub struct ModelSlot {
    queue: Arc<FairQueue>,
    key: Arc<str>,
}

impl Drop for ModelSlot {
    fn drop(&mut self) {
        let mut state = self.queue.lock();
        state.running -= 1;
        if let Some(count) = state.running_by_key.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                state.running_by_key.remove(&self.key);
            }
        }
        self.queue.dispatch(&mut state);
    }
}

impl FairQueue {
    pub fn new(max_concurrent: usize, queue_limit: usize) -> Arc<Self> {
        Arc::new(Self {
            max_concurrent: max_concurrent.max(1),
            queue_limit,
            state: Mutex::default(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Wait for a slot for a request of `key` (the key's name, or one name for every request
    /// when authentication is off).
    pub async fn acquire(
        self: &Arc<Self>,
        key: &Arc<str>,
        timeout: Duration,
    ) -> Result<ModelSlot, QueueError> {
        let receiver = {
            let mut state = self.lock();
            if state.running < self.max_concurrent && state.waiting_count == 0 {
                Self::grant(&mut state, key);
                return Ok(self.slot(key));
            }
            if state.waiting_count >= self.queue_limit {
                return Err(QueueError::Full);
            }
            let (sender, receiver) = oneshot::channel();
            state.arrivals += 1;
            let arrival = state.arrivals;
            state
                .waiting
                .entry(key.clone())
                .or_default()
                .push_back((arrival, sender));
            state.waiting_count += 1;
            receiver
        };
        // The slot was counted for us by `dispatch` before it sent; if we gave up at the same
        // moment, `Waiter` hands it on.
        let mut waiter = Waiter {
            queue: self.clone(),
            key: key.clone(),
            receiver: Some(receiver),
        };
        let granted = tokio::time::timeout(timeout, async {
            match waiter.receiver.as_mut() {
                Some(receiver) => receiver.await.is_ok(),
                None => false,
            }
        })
        .await;
        match granted {
            Ok(true) => {
                waiter.receiver = None;
                Ok(self.slot(key))
            }
            _ => Err(QueueError::Timeout),
        }
    }

    fn slot(self: &Arc<Self>, key: &Arc<str>) -> ModelSlot {
        ModelSlot {
            queue: self.clone(),
            key: key.clone(),
        }
    }

    fn grant(state: &mut State, key: &Arc<str>) {
        state.running += 1;
        *state.running_by_key.entry(key.clone()).or_default() += 1;
    }

    /// Hand free slots to waiters: the key with the fewest running slots first, then the
    /// earliest arrival.
    fn dispatch(&self, state: &mut State) {
        while state.running < self.max_concurrent && state.waiting_count > 0 {
            let next = state
                .waiting
                .iter()
                .filter_map(|(key, queue)| queue.front().map(|(arrival, _)| (key, *arrival)))
                .min_by_key(|(key, arrival)| {
                    (
                        state.running_by_key.get(*key).copied().unwrap_or(0),
                        *arrival,
                    )
                })
                .map(|(key, _)| key.clone());
            let Some(key) = next else { break };
            let Some(queue) = state.waiting.get_mut(&key) else {
                break;
            };
            let Some((_, sender)) = queue.pop_front() else {
                break;
            };
            if queue.is_empty() {
                state.waiting.remove(&key);
            }
            state.waiting_count -= 1;
            if sender.is_closed() {
                continue;
            }
            Self::grant(state, &key);
            if sender.send(()).is_err() {
                // The waiter left between the check and the send: undo.
                state.running -= 1;
                if let Some(count) = state.running_by_key.get_mut(&key) {
                    *count -= 1;
                    if *count == 0 {
                        state.running_by_key.remove(&key);
                    }
                }
            }
        }
    }

    pub fn running(&self) -> usize {
        self.lock().running
    }

    pub fn waiting(&self) -> usize {
        self.lock().waiting_count
    }
}

/// A queued request; if it goes away (timeout, client gone) its place is removed, and a slot
/// granted to it in the meantime is released.
struct Waiter {
    queue: Arc<FairQueue>,
    key: Arc<str>,
    receiver: Option<oneshot::Receiver<()>>,
}

impl Drop for Waiter {
    fn drop(&mut self) {
        let Some(mut receiver) = self.receiver.take() else {
            return;
        };
        receiver.close();
        if receiver.try_recv().is_ok() {
            // Granted just as we left: release the slot for the next waiter.
            drop(ModelSlot {
                queue: self.queue.clone(),
                key: self.key.clone(),
            });
            return;
        }
        let mut state = self.queue.lock();
        if let Some(queue) = state.waiting.get_mut(&self.key) {
            let before = queue.len();
            queue.retain(|(_, sender)| !sender.is_closed());
            let removed = before - queue.len();
            if queue.is_empty() {
                state.waiting.remove(&self.key);
            }
            state.waiting_count -= removed;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> Arc<str> {
        Arc::from(name)
    }

    #[tokio::test(start_paused = true)]
    async fn slots_go_to_the_key_with_the_smallest_share() {
        let queue = FairQueue::new(2, 100);
        let (a, b) = (key("a"), key("b"));
        // Key a takes both slots and queues three more; then key b queues one.
        let first = queue.acquire(&a, Duration::from_secs(60)).await.unwrap();
        let second = queue.acquire(&a, Duration::from_secs(60)).await.unwrap();
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for (index, who) in [a.clone(), a.clone(), a.clone(), b.clone()]
            .into_iter()
            .enumerate()
        {
            let queue = queue.clone();
            let order = order.clone();
            tasks.push(tokio::spawn(async move {
                let slot = queue.acquire(&who, Duration::from_secs(60)).await.unwrap();
                order.lock().unwrap().push(who.to_string());
                tokio::time::sleep(Duration::from_secs(1)).await;
                drop(slot);
                index
            }));
            tokio::task::yield_now().await;
        }
        assert_eq!(queue.waiting(), 4);
        // One slot frees: b (0 running) goes before a's earlier arrivals (a has 1 running).
        drop(first);
        tokio::task::yield_now().await;
        assert_eq!(order.lock().unwrap().as_slice(), ["b"]);
        drop(second);
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(order.lock().unwrap().as_slice(), ["b", "a", "a", "a"]);
        assert_eq!((queue.running(), queue.waiting()), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn bounded_queue_and_timeout() {
        let queue = FairQueue::new(1, 1);
        let a = key("a");
        let held = queue.acquire(&a, Duration::from_secs(1)).await.unwrap();
        let waiting = {
            let queue = queue.clone();
            let a = a.clone();
            tokio::spawn(async move { queue.acquire(&a, Duration::from_secs(5)).await.map(drop) })
        };
        tokio::task::yield_now().await;
        assert_eq!(
            queue.acquire(&a, Duration::from_secs(1)).await.unwrap_err(),
            QueueError::Full
        );
        assert_eq!(waiting.await.unwrap(), Err(QueueError::Timeout));
        assert_eq!(queue.waiting(), 0);
        drop(held);
        assert_eq!(queue.running(), 0);
        // The slot is free again at once.
        drop(queue.acquire(&a, Duration::from_secs(1)).await.unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn cancelled_waiters_do_not_leak_slots() {
        let queue = FairQueue::new(1, 10);
        let a = key("a");
        let held = queue.acquire(&a, Duration::from_secs(60)).await.unwrap();
        let waiter = {
            let queue = queue.clone();
            let a = a.clone();
            tokio::spawn(async move { queue.acquire(&a, Duration::from_secs(60)).await.map(drop) })
        };
        tokio::task::yield_now().await;
        waiter.abort();
        let _ = waiter.await;
        drop(held);
        assert_eq!((queue.running(), queue.waiting()), (0, 0));
    }
}
