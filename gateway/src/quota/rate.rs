//! Per-key limits (requests/min, tokens/min, concurrent requests), enforced by each gateway
//! replica on its own, with no shared datastore.
//!
//! **The approximation.** A key's limit `L` is divided by the number `N` of ready gateway
//! replicas ([`Peers`]): each replica admits `L / N` (at least 1) per minute, from a token bucket
//! that refills continuously and holds at most one minute's share. The sum over replicas never
//! exceeds `L` (plus rounding: at most `N - 1` requests, as each share is at least 1), so the
//! limit is never overshot by more than that while `N` is accurate. The error is on the other
//! side: a client whose traffic reaches the replicas unevenly is throttled early. With one
//! keep-alive connection, all of its requests reach one replica and it gets `L / N`; spread
//! over many connections (the usual case behind a Service), the shares fill evenly and it gets
//! close to `L`. While `N` changes (a rollout, a scale-up) the shares lag by the time the
//! replicas take to see the change (a watch event, about a second).
//!
//! Tokens are counted after the fact, from the engine's `usage`: a request is admitted while
//! the key's token bucket is positive, and its tokens are charged when its response ends, so
//! a key can overshoot by the tokens of the requests it had in flight when the bucket ran out.
//! The bucket then goes negative and the key waits until it refills.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// Optional limits of a key; each is for the whole gateway Deployment (see
/// this module for how replicas share them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KeyLimits {
    pub requests_per_minute: Option<u64>,
    /// Prompt plus completion tokens, from the engine's `usage`.
    pub tokens_per_minute: Option<u64>,
    pub max_concurrent: Option<u64>,
}

impl KeyLimits {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// How many ready gateway replicas share each key's limits (at least 1).
#[derive(Debug)]
pub struct Peers(AtomicUsize);

impl Default for Peers {
    fn default() -> Self {
        Self(AtomicUsize::new(1))
    }
}

impl Peers {
    pub fn new(count: usize) -> Self {
        Self(AtomicUsize::new(count.max(1)))
    }

    pub fn get(&self) -> usize {
        self.0.load(Ordering::Relaxed).max(1)
    }

    pub fn set(&self, count: usize) {
        let previous = self.0.swap(count.max(1), Ordering::Relaxed);
        if previous != count.max(1) {
            tracing::info!(
                replicas = count.max(1),
                "gateway replicas sharing the key limits"
            );
        }
    }
}

/// A bucket holding at most one minute's share; refills continuously.
#[derive(Debug, Default)]
struct Bucket {
    level: f64,
    /// `None`: never used, full.
    updated: Option<Instant>,
}

impl Bucket {
    fn refill(&mut self, capacity: f64, now: Instant) {
        self.level = match self.updated {
            None => capacity,
            Some(then) => {
                let elapsed = now.saturating_duration_since(then).as_secs_f64();
                (self.level + elapsed * capacity / 60.0).min(capacity)
            }
        };
        self.updated = Some(now);
    }

    /// Time until the level reaches `wanted`.
    fn time_to(&self, wanted: f64, capacity: f64) -> Duration {
        if self.level >= wanted || capacity <= 0.0 {
            return Duration::ZERO;
        }
        Duration::from_secs_f64((wanted - self.level) * 60.0 / capacity)
    }
}

/// A key's limiter state on this replica.
#[derive(Debug, Default)]
pub struct KeyState {
    requests: Mutex<Bucket>,
    tokens: Mutex<Bucket>,
    inflight: AtomicU64,
}

/// This replica's share of a per-minute limit.
fn share(limit: u64, peers: usize) -> f64 {
    (limit as f64 / peers as f64).max(1.0)
}

/// The `x-ratelimit-*` figures OpenAI sends, for the whole Deployment: the configured limit,
/// and this replica's remaining share scaled by the number of replicas (an estimate).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RateStatus {
    pub requests: Option<LimitStatus>,
    pub tokens: Option<LimitStatus>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LimitStatus {
    pub limit: u64,
    pub remaining: u64,
    /// Until the bucket is full again.
    pub reset: Duration,
}

/// Which limit refused a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitKind {
    Requests,
    Tokens,
    Concurrency,
}

impl LimitKind {
    pub fn as_str(self) -> &'static str {
        match self {
            LimitKind::Requests => "requests",
            LimitKind::Tokens => "tokens",
            LimitKind::Concurrency => "concurrency",
        }
    }
}

#[derive(Debug)]
pub struct Rejection {
    pub kind: LimitKind,
    pub limit: u64,
    pub retry_after: Duration,
    pub status: RateStatus,
}

/// Holds one of the key's concurrent-request slots until dropped.
#[derive(Debug)]
pub struct ConcurrencySlot(Option<Arc<KeyState>>);

impl Drop for ConcurrencySlot {
    fn drop(&mut self) {
        if let Some(state) = self.0.take() {
            state.inflight.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl KeyState {
    /// Admit one request of a key with `limits`, or say which limit refuses it and for how
    /// long. Admission takes one request from the request bucket and a concurrency slot.
    pub fn admit(
        self: &Arc<Self>,
        limits: &KeyLimits,
        peers: usize,
        now: Instant,
    ) -> Result<(ConcurrencySlot, RateStatus), Rejection> {
        let mut slot = ConcurrencySlot(None);
        if let Some(max) = limits.max_concurrent {
            let local = (max / peers as u64).max(1);
            let before = self.inflight.fetch_add(1, Ordering::Relaxed);
            slot = ConcurrencySlot(Some(self.clone()));
            if before >= local {
                return Err(Rejection {
                    kind: LimitKind::Concurrency,
                    limit: max,
                    retry_after: Duration::from_secs(1),
                    status: self.status(limits, peers, now),
                });
            }
        }
        let mut status = RateStatus::default();
        if let Some(limit) = limits.tokens_per_minute {
            let capacity = share(limit, peers);
            let mut tokens = lock(&self.tokens);
            tokens.refill(capacity, now);
            if tokens.level <= 0.0 {
                let retry_after = tokens.time_to(f64::MIN_POSITIVE, capacity);
                drop(tokens);
                return Err(Rejection {
                    kind: LimitKind::Tokens,
                    limit,
                    retry_after,
                    status: self.status(limits, peers, now),
                });
            }
            status.tokens = Some(figure(&tokens, limit, peers, capacity));
        }
        if let Some(limit) = limits.requests_per_minute {
            let capacity = share(limit, peers);
            let mut requests = lock(&self.requests);
            requests.refill(capacity, now);
            if requests.level < 1.0 {
                let retry_after = requests.time_to(1.0, capacity);
                drop(requests);
                return Err(Rejection {
                    kind: LimitKind::Requests,
                    limit,
                    retry_after,
                    status: self.status(limits, peers, now),
                });
            }
            requests.level -= 1.0;
            status.requests = Some(figure(&requests, limit, peers, capacity));
        }
        Ok((slot, status))
    }

    /// Charge the tokens a response used.
    pub fn charge_tokens(&self, limits: &KeyLimits, peers: usize, tokens: u64, now: Instant) {
        if let Some(limit) = limits.tokens_per_minute {
            let mut bucket = lock(&self.tokens);
            bucket.refill(share(limit, peers), now);
            bucket.level -= tokens as f64;
        }
    }

    pub fn status(&self, limits: &KeyLimits, peers: usize, now: Instant) -> RateStatus {
        let current = |bucket: &Mutex<Bucket>, limit: u64| {
            let capacity = share(limit, peers);
            let mut bucket = lock(bucket);
            bucket.refill(capacity, now);
            figure(&bucket, limit, peers, capacity)
        };
        RateStatus {
            requests: limits
                .requests_per_minute
                .map(|limit| current(&self.requests, limit)),
            tokens: limits
                .tokens_per_minute
                .map(|limit| current(&self.tokens, limit)),
        }
    }

    pub fn inflight(&self) -> u64 {
        self.inflight.load(Ordering::Relaxed)
    }
}

/// The Deployment-wide figures of a refilled bucket.
fn figure(bucket: &Bucket, limit: u64, peers: usize, capacity: f64) -> LimitStatus {
    LimitStatus {
        limit,
        remaining: ((bucket.level.max(0.0) * peers as f64).floor() as u64).min(limit),
        reset: bucket.time_to(capacity, capacity),
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}

/// A duration the way OpenAI writes `x-ratelimit-reset-*`: `120ms`, `1.5s`, `6m0s`.
pub fn format_reset(duration: Duration) -> String {
    let millis = duration.as_millis();
    if millis < 1000 {
        return format!("{millis}ms");
    }
    let seconds = duration.as_secs_f64();
    if seconds < 60.0 {
        let text = format!("{seconds:.3}");
        let text = text.trim_end_matches('0').trim_end_matches('.');
        return format!("{text}s");
    }
    let whole = duration.as_secs();
    format!("{}m{}s", whole / 60, whole % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(rpm: Option<u64>, tpm: Option<u64>, concurrent: Option<u64>) -> KeyLimits {
        KeyLimits {
            requests_per_minute: rpm,
            tokens_per_minute: tpm,
            max_concurrent: concurrent,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn requests_per_minute_refill_continuously() {
        let state = Arc::new(KeyState::default());
        let limits = limits(Some(60), None, None);
        let now = Instant::now();
        for _ in 0..60 {
            state.admit(&limits, 1, now).unwrap();
        }
        let rejected = state.admit(&limits, 1, now).unwrap_err();
        assert_eq!(rejected.kind, LimitKind::Requests);
        assert_eq!(rejected.retry_after, Duration::from_secs(1));
        let status = rejected.status.requests.unwrap();
        assert_eq!((status.limit, status.remaining), (60, 0));
        assert_eq!(status.reset, Duration::from_secs(60));
        tokio::time::advance(Duration::from_secs(1)).await;
        let (_, status) = state.admit(&limits, 1, Instant::now()).unwrap();
        assert_eq!(status.requests.unwrap().remaining, 0);
        assert!(state.admit(&limits, 1, Instant::now()).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn limits_are_divided_between_gateway_replicas() {
        let state = Arc::new(KeyState::default());
        let limits = limits(Some(60), None, Some(4));
        let now = Instant::now();
        let mut slots = Vec::new();
        for _ in 0..2 {
            slots.push(state.admit(&limits, 2, now).unwrap().0);
        }
        // 4 concurrent over 2 replicas: 2 here.
        let rejected = state.admit(&limits, 2, now).unwrap_err();
        assert_eq!(rejected.kind, LimitKind::Concurrency);
        slots.clear();
        assert_eq!(state.inflight(), 0);
        // 60/min over 2 replicas: 30 here (2 already spent), reported as the Deployment's.
        for _ in 0..28 {
            drop(state.admit(&limits, 2, now).unwrap());
        }
        let rejected = state.admit(&limits, 2, now).unwrap_err();
        assert_eq!(rejected.kind, LimitKind::Requests);
        assert_eq!(rejected.retry_after, Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn tokens_are_charged_after_the_fact() {
        let state = Arc::new(KeyState::default());
        let limits = limits(None, Some(600), None);
        let now = Instant::now();
        let (_, status) = state.admit(&limits, 1, now).unwrap();
        assert_eq!(status.tokens.unwrap().remaining, 600);
        state.charge_tokens(&limits, 1, 900, now);
        let rejected = state.admit(&limits, 1, now).unwrap_err();
        assert_eq!(rejected.kind, LimitKind::Tokens);
        // 300 tokens in debt at 10 tokens/s.
        assert!(rejected.retry_after >= Duration::from_secs(30));
        assert!(rejected.retry_after < Duration::from_millis(30_100));
        assert_eq!(rejected.status.tokens.unwrap().remaining, 0);
        tokio::time::advance(Duration::from_secs(31)).await;
        let (_, status) = state.admit(&limits, 1, Instant::now()).unwrap();
        assert_eq!(status.tokens.unwrap().remaining, 10);
    }

    #[test]
    fn tiny_shares_still_admit_one() {
        assert_eq!(share(1, 3), 1.0);
        assert_eq!(share(90, 3), 30.0);
    }

    #[test]
    fn reset_format() {
        assert_eq!(format_reset(Duration::from_millis(120)), "120ms");
        assert_eq!(format_reset(Duration::from_millis(1500)), "1.5s");
        assert_eq!(format_reset(Duration::from_secs(2)), "2s");
        assert_eq!(format_reset(Duration::from_secs(360)), "6m0s");
    }
}
