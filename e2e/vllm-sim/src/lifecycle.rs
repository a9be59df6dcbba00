//! What the engine does once told to stop (SIGTERM), as vLLM 0.32 does.
//!
//! Observed with `vllm serve` 0.32.0 on CPU, signalling the API server's pid
//! only, as a kubelet signals a container's PID 1:
//! - without `--shutdown-timeout` (0, vLLM's default: "abort"), the listener
//!   closes at once and open streams either stall (no more tokens, no error,
//!   no `[DONE]`, the connection open until the client leaves: most runs) or
//!   end with an error frame ("EngineCore encountered an issue ...", code 500)
//!   and `[DONE]`, or with a `finish_reason: "abort"` chunk and `[DONE]`
//!   (other runs: races in vLLM's shutdown);
//! - with `--shutdown-timeout N`, in-flight requests run on for up to N seconds
//!   while new ones are refused with HTTP 500 "cannot schedule new futures after
//!   shutdown" and `/health` still answers 200; then the process exits.
//!
//! Signalling the whole process group (a terminal's Ctrl-C, `kill -- -PGID`)
//! gives the same outcomes, the stall most often.
//!
//! The simulator stalls by default (the common and the harder case for a
//! gateway); `--sim-on-sigterm abort` gives the error frame instead.

use std::time::Duration;

use clap::ValueEnum;
use tokio::sync::watch;
use tokio::time::Instant;

/// Where the engine is in its shutdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Serving normally.
    Serving,
    /// SIGTERM with a shutdown timeout: finishing in-flight requests, refusing new ones.
    Draining,
    /// In-flight requests end with an engine error; new ones are refused.
    Aborted,
    /// In-flight requests stop producing output and never end.
    Stalled,
}

/// What SIGTERM does to requests still open when the engine stops (at once
/// without `--shutdown-timeout`, at its deadline with it): `--sim-on-sigterm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum OnSigterm {
    /// They stall: no more output, no end (vLLM's usual outcome).
    #[default]
    Stall,
    /// They end with vLLM's engine-error frame and `[DONE]` (or a 500).
    Abort,
}

/// Why a request's wait was cut short.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Aborted;

/// The engine's shutdown phase, observable by every request.
#[derive(Debug)]
pub struct Lifecycle {
    phase: watch::Sender<Phase>,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Lifecycle {
            phase: watch::Sender::new(Phase::Serving),
        }
    }
}

impl Lifecycle {
    /// The current phase.
    pub fn phase(&self) -> Phase {
        *self.phase.borrow()
    }

    /// Whether new requests are still scheduled.
    pub fn accepts_requests(&self) -> bool {
        self.phase() == Phase::Serving
    }

    /// Moves to `phase` and wakes every request waiting in [`Lifecycle::guard`].
    pub fn set(&self, phase: Phase) {
        self.phase.send_replace(phase);
    }

    /// Runs `work` unless the engine aborts first (`Err(Aborted)`). When the
    /// engine stalls, never returns: the request hangs as vLLM's does.
    pub async fn guard<F: std::future::Future>(&self, work: F) -> Result<F::Output, Aborted> {
        let mut phase = self.phase.subscribe();
        let interrupted = async {
            loop {
                let current = *phase.borrow_and_update();
                if matches!(current, Phase::Aborted | Phase::Stalled) {
                    return current;
                }
                if phase.changed().await.is_err() {
                    // The engine is gone: nothing will ever interrupt.
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::select! {
            biased;
            phase = interrupted => {
                if phase == Phase::Stalled {
                    std::future::pending::<()>().await;
                }
                Err(Aborted)
            }
            output = work => Ok(output),
        }
    }

    /// Runs the shutdown SIGTERM asks for; returns when the HTTP server should
    /// stop accepting connections. `in_flight` counts running plus waiting requests.
    pub async fn shut_down(
        &self,
        on_sigterm: OnSigterm,
        shutdown_timeout: Duration,
        in_flight: impl Fn() -> usize,
    ) {
        if !shutdown_timeout.is_zero() {
            self.set(Phase::Draining);
            let deadline = Instant::now() + shutdown_timeout;
            // Polled: the scheduler has no completion signal, and a few
            // milliseconds of lag on a shutdown path cost nothing.
            while in_flight() > 0 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        self.set(match on_sigterm {
            OnSigterm::Stall => Phase::Stalled,
            OnSigterm::Abort => Phase::Aborted,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[tokio::test]
    async fn abort_interrupts_a_waiting_request() {
        let lifecycle = Arc::new(Lifecycle::default());
        let waiting = {
            let lifecycle = Arc::clone(&lifecycle);
            tokio::spawn(async move { lifecycle.guard(std::future::pending::<()>()).await })
        };
        lifecycle.set(Phase::Draining);
        assert!(!lifecycle.accepts_requests());
        lifecycle.set(Phase::Aborted);
        assert_eq!(waiting.await.unwrap(), Err(Aborted));
    }

    #[tokio::test]
    async fn finished_work_wins_while_serving_or_draining() {
        let lifecycle = Lifecycle::default();
        assert_eq!(lifecycle.guard(async { 7 }).await, Ok(7));
        lifecycle.set(Phase::Draining);
        assert_eq!(lifecycle.guard(async { 8 }).await, Ok(8));
    }

    #[tokio::test(start_paused = true)]
    async fn stalled_requests_never_end() {
        let lifecycle = Lifecycle::default();
        lifecycle.set(Phase::Stalled);
        let outcome = tokio::time::timeout(
            Duration::from_secs(3600),
            lifecycle.guard(std::future::pending::<()>()),
        )
        .await;
        assert!(outcome.is_err(), "a stalled request must hang");
    }

    #[tokio::test(start_paused = true)]
    async fn zero_timeout_aborts_at_once() {
        let lifecycle = Lifecycle::default();
        lifecycle
            .shut_down(OnSigterm::Abort, Duration::ZERO, || 3)
            .await;
        assert_eq!(lifecycle.phase(), Phase::Aborted);
        let lifecycle = Lifecycle::default();
        lifecycle
            .shut_down(OnSigterm::Stall, Duration::ZERO, || 3)
            .await;
        assert_eq!(lifecycle.phase(), Phase::Stalled);
    }

    #[tokio::test(start_paused = true)]
    async fn drain_ends_when_idle_or_at_the_deadline() {
        let lifecycle = Lifecycle::default();
        let left = AtomicUsize::new(3);
        let started = Instant::now();
        lifecycle
            .shut_down(OnSigterm::Abort, Duration::from_secs(30), || {
                left.fetch_sub(1, Ordering::Relaxed).saturating_sub(1)
            })
            .await;
        assert!(started.elapsed() < Duration::from_secs(1));
        assert_eq!(lifecycle.phase(), Phase::Aborted);

        let lifecycle = Lifecycle::default();
        let started = Instant::now();
        lifecycle
            .shut_down(OnSigterm::Abort, Duration::from_secs(30), || 1)
            .await;
        assert!(started.elapsed() >= Duration::from_secs(30));
        assert_eq!(lifecycle.phase(), Phase::Aborted);
    }
}
