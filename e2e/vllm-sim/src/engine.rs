//! The simulated engine: one request's life from arrival to its last token.
//!
//! A [`Run`] is created on arrival, queued by the [`Scheduler`], prefilled
//! (prefix cache lookup, then a delay of `ttft + uncached_tokens *
//! prefill_per_token`), then decoded at one token per choice every
//! inter-token latency. It records vLLM's metrics as it goes. A run dropped
//! before [`Run::finish`] (the client went away, the stream was cut) is
//! recorded as `abort` and frees its slot at once.
//!
//! Nothing here sleeps when the matching latency is zero, so a benchmark with
//! all latencies at 0 costs a few atomic operations per request.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use crate::faults::Faults;
use crate::lifecycle::Lifecycle;
use crate::metrics::{FinishReason, FinishedRequest, Metrics};
use crate::prefix_cache::{block_hashes, PrefixCache};
use crate::scheduler::{RunningSlot, Scheduler, SchedulerError};

/// Latency model.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Base time to first token once scheduled.
    pub ttft: Duration,
    /// Extra prefill time per prompt token missing from the prefix cache.
    pub prefill_per_token: Duration,
    /// Time between two tokens of a sequence.
    pub itl: Duration,
}

impl Timing {
    /// Prefill time for `uncached` prompt tokens.
    pub fn prefill(&self, uncached: u64) -> Duration {
        let per_token = self.prefill_per_token.as_secs_f64() * uncached as f64;
        self.ttft + Duration::from_secs_f64(per_token)
    }
}

/// Shared engine state: scheduler, prefix cache, metrics, faults.
#[derive(Debug)]
pub struct Engine {
    /// Latency model.
    pub timing: Timing,
    /// Admission control.
    pub scheduler: Arc<Scheduler>,
    /// vLLM metrics.
    pub metrics: Metrics,
    /// Fault injection.
    pub faults: Faults,
    /// Shutdown phase (SIGTERM).
    pub lifecycle: Lifecycle,
    block_size: usize,
    prefix_cache: Option<Mutex<PrefixCache>>,
}

impl Engine {
    /// An engine; `prefix_cache_blocks` of `None` disables prefix caching.
    pub fn new(
        timing: Timing,
        max_num_seqs: usize,
        block_size: usize,
        prefix_cache_blocks: Option<usize>,
        metrics: Metrics,
        faults: Faults,
    ) -> Self {
        Engine {
            timing,
            scheduler: Arc::new(Scheduler::new(max_num_seqs)),
            metrics,
            faults,
            lifecycle: Lifecycle::default(),
            block_size,
            prefix_cache: prefix_cache_blocks
                .map(|blocks| Mutex::new(PrefixCache::new(block_size, blocks))),
        }
    }

    /// Looks `prompts` up in the prefix cache (then caches them) and returns
    /// the cached token count. Records the prefix cache counters.
    fn lookup_prefixes(&self, prompts: &[Vec<u32>], adapter: Option<&str>) -> u64 {
        let queried: u64 = prompts.iter().map(|p| p.len() as u64).sum();
        let Some(cache) = &self.prefix_cache else {
            return 0;
        };
        self.metrics.prefix_cache_queries.add(queried);
        // Hash outside the lock; prompts shorter than a block skip the lock.
        let hashed: Vec<(Vec<u64>, usize)> = prompts
            .iter()
            .map(|p| (block_hashes(p, self.block_size, adapter), p.len()))
            .filter(|(hashes, _)| !hashes.is_empty())
            .collect();
        if hashed.is_empty() {
            return 0;
        }
        let mut cache = cache.lock().unwrap_or_else(PoisonError::into_inner);
        let hits: u64 = hashed
            .iter()
            .map(|(hashes, len)| cache.lookup_and_insert(hashes, *len).hit_tokens)
            .sum();
        drop(cache);
        self.metrics.prefix_cache_hits.add(hits);
        hits
    }
}

/// One request going through the engine.
#[derive(Debug)]
pub struct Run {
    engine: Arc<Engine>,
    arrival: Instant,
    prompt_tokens: u64,
    choices: u64,
    slot: Option<RunningSlot>,
    scheduled_at: Option<Instant>,
    first_token_at: Option<Instant>,
    generated: u64,
    cached_tokens: u64,
    finished: bool,
}

impl Run {
    /// A request that arrived now with `prompt_tokens` tokens and `choices`
    /// sequences to generate.
    pub fn new(engine: Arc<Engine>, prompt_tokens: u64, choices: u64) -> Self {
        Run {
            engine,
            arrival: Instant::now(),
            prompt_tokens,
            choices: choices.max(1),
            slot: None,
            scheduled_at: None,
            first_token_at: None,
            generated: 0,
            cached_tokens: 0,
            finished: false,
        }
    }

    /// Waits for a running slot (FIFO).
    pub async fn schedule(&mut self, adapter: Option<Arc<str>>) -> Result<(), SchedulerError> {
        let slot = self.engine.scheduler.admit(adapter).await?;
        self.slot = Some(slot);
        self.scheduled_at = Some(Instant::now());
        Ok(())
    }

    /// Prefills: prefix cache lookup (when `use_prefix_cache`), then the
    /// prefill delay. Returns the prompt tokens found in the cache. The first
    /// token is ready when this returns.
    pub async fn prefill(
        &mut self,
        prompts: &[Vec<u32>],
        adapter: Option<&str>,
        use_prefix_cache: bool,
    ) -> u64 {
        let cached = if use_prefix_cache {
            self.engine.lookup_prefixes(prompts, adapter)
        } else {
            0
        };
        self.cached_tokens = cached;
        self.hold_kv_for(0);
        let delay = self
            .engine
            .timing
            .prefill(self.prompt_tokens - cached.min(self.prompt_tokens));
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let now = Instant::now();
        self.first_token_at = Some(now);
        self.engine.metrics.prompt_tokens.add(self.prompt_tokens);
        self.engine
            .metrics
            .time_to_first_token
            .observe((now - self.arrival).as_secs_f64());
        cached
    }

    /// Prompt tokens served from the prefix cache.
    pub fn cached_tokens(&self) -> u64 {
        self.cached_tokens
    }

    /// Whether tokens are paced (inter-token latency above zero).
    pub fn paced(&self) -> bool {
        !self.engine.timing.itl.is_zero()
    }

    /// Waits until token `position` (0-based, per sequence) is due: the first
    /// token is due at the end of prefill, each next one an inter-token latency
    /// later. Deadlines are absolute, so pacing does not drift.
    pub async fn wait_for_token(&self, position: u64) {
        let itl = self.engine.timing.itl;
        if itl.is_zero() || position == 0 {
            return;
        }
        let Some(first) = self.first_token_at else {
            return;
        };
        let due = first + itl.saturating_mul(u32::try_from(position).unwrap_or(u32::MAX));
        tokio::time::sleep_until(due).await;
    }

    /// Counts `tokens` more generated tokens (all choices together).
    pub fn emit(&mut self, tokens: u64) {
        self.generated += tokens;
        self.engine.metrics.generation_tokens.add(tokens);
        self.hold_kv_for(self.generated);
    }

    fn hold_kv_for(&mut self, generated: u64) {
        let block_size = self.engine.block_size.max(1) as u64;
        let per_choice = generated / self.choices;
        let blocks = (self.prompt_tokens + per_choice).div_ceil(block_size);
        if let Some(slot) = &mut self.slot {
            slot.hold_kv_blocks(blocks);
        }
    }

    /// Ends the request: records its metrics and frees its slot.
    pub fn finish(&mut self, reason: FinishReason) {
        if self.finished {
            return;
        }
        self.finished = true;
        self.record(reason);
        self.slot = None;
    }

    fn record(&self, reason: FinishReason) {
        let now = Instant::now();
        let metrics = &self.engine.metrics;
        let decode = self.first_token_at.map(|first| now - first);
        // One latency per gap between consecutive tokens of a sequence.
        let gaps = self.generated.saturating_sub(self.choices);
        if let Some(decode) = decode {
            if gaps > 0 {
                let per_sequence_gaps = (gaps / self.choices).max(1);
                metrics
                    .inter_token_latency
                    .observe_many(decode.as_secs_f64() / per_sequence_gaps as f64, gaps);
            }
        }
        metrics.record_finished(&FinishedRequest {
            reason,
            e2e: now - self.arrival,
            queued: self.scheduled_at.map(|at| at - self.arrival),
            prefill: match (self.scheduled_at, self.first_token_at) {
                (Some(scheduled), Some(first)) => Some(first - scheduled),
                _ => None,
            },
            decode,
            prompt_tokens: self.prompt_tokens,
            generation_tokens: self.generated,
        });
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        if !self.finished {
            self.finished = true;
            self.record(FinishReason::Abort);
            tracing::debug!(
                generated = self.generated,
                "request aborted before completion"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::MetricsSpec;

    fn engine(timing: Timing, max_num_seqs: usize) -> Arc<Engine> {
        let metrics = Metrics::new(&MetricsSpec {
            model_name: "m".into(),
            max_lora: None,
            max_model_len: 1024,
            kv_cache_blocks: 100,
            block_size: 16,
            prefix_caching: true,
        });
        Arc::new(Engine::new(
            timing,
            max_num_seqs,
            16,
            Some(100),
            metrics,
            Faults::default(),
        ))
    }

    fn zero() -> Timing {
        Timing {
            ttft: Duration::ZERO,
            prefill_per_token: Duration::ZERO,
            itl: Duration::ZERO,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn prefill_time_grows_with_uncached_tokens() {
        let engine = engine(
            Timing {
                ttft: Duration::from_millis(10),
                prefill_per_token: Duration::from_millis(1),
                itl: Duration::ZERO,
            },
            4,
        );
        let prompt: Vec<u32> = (0..65).collect();
        let started = Instant::now();
        let mut run = Run::new(Arc::clone(&engine), 65, 1);
        run.schedule(None).await.unwrap();
        assert_eq!(
            run.prefill(std::slice::from_ref(&prompt), None, true).await,
            0
        );
        assert_eq!(started.elapsed(), Duration::from_millis(10 + 65));
        run.finish(FinishReason::Stop);

        let started = Instant::now();
        let mut run = Run::new(Arc::clone(&engine), 65, 1);
        run.schedule(None).await.unwrap();
        assert_eq!(run.prefill(&[prompt], None, true).await, 64);
        assert_eq!(started.elapsed(), Duration::from_millis(10 + 1));
        run.finish(FinishReason::Stop);
        assert_eq!(engine.metrics.prefix_cache_queries.get(), 130);
        assert_eq!(engine.metrics.prefix_cache_hits.get(), 64);
    }

    #[tokio::test(start_paused = true)]
    async fn tokens_are_paced_without_drift() {
        let engine = engine(
            Timing {
                itl: Duration::from_millis(5),
                ..zero()
            },
            1,
        );
        let started = Instant::now();
        let mut run = Run::new(Arc::clone(&engine), 4, 1);
        run.schedule(None).await.unwrap();
        run.prefill(&[vec![1, 2, 3, 4]], None, true).await;
        for position in 0..4 {
            run.wait_for_token(position).await;
            run.emit(1);
        }
        assert_eq!(started.elapsed(), Duration::from_millis(15));
        run.finish(FinishReason::Length);
        assert_eq!(engine.metrics.inter_token_latency.count(), 3);
        assert_eq!(engine.metrics.request_success(FinishReason::Length), 1);
        assert_eq!(engine.scheduler.running(), 0);
        assert_eq!(engine.scheduler.kv_blocks_in_use(), 0);
    }

    #[tokio::test]
    async fn dropped_run_counts_as_abort_and_frees_its_slot() {
        let engine = engine(zero(), 1);
        let mut run = Run::new(Arc::clone(&engine), 4, 1);
        run.schedule(None).await.unwrap();
        assert_eq!(engine.scheduler.running(), 1);
        drop(run);
        assert_eq!(engine.scheduler.running(), 0);
        assert_eq!(engine.metrics.request_success(FinishReason::Abort), 1);
    }
}
