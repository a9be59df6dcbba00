//! The autoscaling decision: (policy, load history, now) -> replicas + reason. Pure: time is
//! an argument, so every rule is tested with explicit instants.
//!
//! Rules, per model:
//! - `wanted = ceil(load / targetRequestsPerReplica)` clamped to `[minReplicas, maxReplicas]`,
//!   and at least 1 while there is any load (a request held by the gateway for a model at zero
//!   is load: it wakes the model).
//! - Up: at once, straight to `wanted` (0 -> 8 is one decision).
//! - Down: one replica per step, only when every load sample of the last
//!   `scaleDownDelaySeconds` wanted fewer replicas than now run, and the last change is at
//!   least that old. Taking the maximum over the window is the hysteresis: load oscillating
//!   faster than the delay holds the replica count at the peak.
//! - To zero: only with `minReplicas: 0`, from 1 replica, when no request was seen (no load, no
//!   counter increase) for `idleSecondsBeforeScaleToZero`.
//! - No fresh signal: hold the count (never scale on missing data), and restart the observation
//!   window, so a scale-down needs a full window of real samples.
//! - Bounds changed: the count is brought into `[minReplicas, maxReplicas]` at once.

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

use kinfer_crds::AutoscalingSpec;

use super::signals::Load;

/// Rounds run about once a second with a few milliseconds of jitter: a window or a delay that
/// is this much short of its length counts as complete, so a 3 s delay is not read as 4 s
/// because one tick came 2 ms early.
const TICK_JITTER: Duration = Duration::from_millis(200);

/// `elapsed` covers `length`, up to [`TICK_JITTER`].
fn covers(elapsed: Duration, length: Duration) -> bool {
    elapsed + TICK_JITTER >= length
}

/// An InferenceModel's `spec.autoscaling`, sanitised.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    pub min_replicas: u32,
    /// At least `max(min_replicas, 1)`.
    pub max_replicas: u32,
    /// At least 1.
    pub target_per_replica: u32,
    pub scale_down_delay: Duration,
    pub idle_before_zero: Duration,
}

impl Policy {
    pub fn from_spec(spec: &AutoscalingSpec) -> Self {
        let min_replicas = u32::try_from(spec.min_replicas).unwrap_or(0);
        let max_replicas = u32::try_from(spec.max_replicas)
            .unwrap_or(0)
            .max(min_replicas)
            .max(1);
        let seconds = |value: i32| Duration::from_secs(u64::try_from(value).unwrap_or(0));
        Self {
            min_replicas,
            max_replicas,
            target_per_replica: u32::try_from(spec.target_requests_per_replica)
                .unwrap_or(1)
                .max(1),
            scale_down_delay: seconds(spec.scale_down_delay_seconds),
            idle_before_zero: seconds(spec.idle_seconds_before_scale_to_zero),
        }
    }

    /// Replicas `load` calls for, within the bounds; at least 1 while there is any load.
    pub fn wanted(&self, load: u64) -> u32 {
        let raw = load.div_ceil(u64::from(self.target_per_replica));
        let raw = u32::try_from(raw).unwrap_or(u32::MAX);
        let floor = if load > 0 {
            self.min_replicas.max(1)
        } else {
            self.min_replicas
        };
        raw.clamp(floor, self.max_replicas)
    }
}

/// Why the count is what it is. Scaled* reasons are changes; the others explain a hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    ScaledUp,
    ScaledDown,
    ScaledToZero,
    /// The load fits the current replicas.
    WithinTarget,
    /// The load calls for more than maxReplicas.
    LimitedByMaxReplicas,
    /// The load is low, but not for long enough (scaleDownDelaySeconds).
    ScaleDownDelayed,
    /// One replica, no load, waiting for idleSecondsBeforeScaleToZero.
    WaitingForIdle,
    /// Scaled to zero; the next request (held by the gateway) wakes the model.
    Idle,
    /// No gateway replica nor engine answered recently: the count is held.
    NoMetrics,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::ScaledUp => "ScaledUp",
            Reason::ScaledDown => "ScaledDown",
            Reason::ScaledToZero => "ScaledToZero",
            Reason::WithinTarget => "WithinTarget",
            Reason::LimitedByMaxReplicas => "LimitedByMaxReplicas",
            Reason::ScaleDownDelayed => "ScaleDownDelayed",
            Reason::WaitingForIdle => "WaitingForIdle",
            Reason::Idle => "Idle",
            Reason::NoMetrics => "NoMetrics",
        }
    }

    /// Whether the replica count changed.
    pub fn is_change(self) -> bool {
        matches!(
            self,
            Reason::ScaledUp | Reason::ScaledDown | Reason::ScaledToZero
        )
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// One decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub from: u32,
    pub to: u32,
    pub reason: Reason,
    /// The load it was made on (`None`: no fresh signal).
    pub load: Option<u64>,
    /// For a person: `2→5: load 37 / target 8 per replica`.
    pub message: String,
}

/// The state the decisions of one model carry from one tick to the next.
#[derive(Clone, Debug)]
pub struct ModelScaler {
    replicas: u32,
    /// (when, replicas wanted then), oldest first, within (now - scale-down delay, now].
    history: VecDeque<(Instant, u32)>,
    /// Start of the current run of ticks with a fresh signal.
    observed_since: Option<Instant>,
    last_change: Option<Instant>,
    /// Last tick with any request seen. Starts at creation, so an operator that (re)starts
    /// waits a whole idle period before scaling anything to zero.
    last_active: Instant,
}

impl ModelScaler {
    /// Starts from `replicas` (what runs now, e.g. status.desiredReplicas).
    pub fn new(replicas: u32, now: Instant) -> Self {
        Self {
            replicas,
            history: VecDeque::new(),
            observed_since: None,
            last_change: None,
            last_active: now,
        }
    }

    pub fn replicas(&self) -> u32 {
        self.replicas
    }

    /// Records `load` observed at `now` and decides the replica count.
    pub fn decide(&mut self, policy: &Policy, load: &Load, now: Instant) -> Decision {
        let from = self.replicas;
        let Some(total) = load.total() else {
            self.observed_since = None;
            self.history.clear();
            let to = from.clamp(policy.min_replicas, policy.max_replicas);
            if to != from {
                return self.change(now, to, None, "bounds changed".to_string());
            }
            return self.hold(
                Reason::NoMetrics,
                None,
                "no gateway replica nor engine answered recently; holding the replica count"
                    .to_string(),
            );
        };
        let observed_since = *self.observed_since.get_or_insert(now);
        if total > 0 || load.queued > 0 || load.activity {
            self.last_active = now;
        }
        let wanted = policy.wanted(total.max(load.queued));
        self.history.push_back((now, wanted));
        while self.history.front().is_some_and(|(at, _)| {
            covers(now.saturating_duration_since(*at), policy.scale_down_delay)
        }) {
            self.history.pop_front();
        }
        let target = policy.target_per_replica;
        let load_text = format!("load {total} / target {target} per replica");

        if from < policy.min_replicas || wanted > from {
            let to = wanted.max(policy.min_replicas);
            let why = if load.queued > 0 && from == 0 {
                format!("{load_text}, {} held by the gateway", load.queued)
            } else {
                load_text
            };
            return self.change(now, to, Some(total), why);
        }
        if from > policy.max_replicas {
            return self.change(
                now,
                policy.max_replicas,
                Some(total),
                format!("{load_text}; maxReplicas is {}", policy.max_replicas),
            );
        }
        if wanted == from {
            let raw = total.div_ceil(u64::from(target));
            if raw > u64::from(policy.max_replicas) {
                return self.hold(
                    Reason::LimitedByMaxReplicas,
                    Some(total),
                    format!(
                        "{load_text} calls for {raw} replicas; maxReplicas is {}",
                        policy.max_replicas
                    ),
                );
            }
            if from == 0 {
                return self.hold(
                    Reason::Idle,
                    Some(total),
                    "scaled to zero; the next request held by the gateway starts a replica"
                        .to_string(),
                );
            }
            return self.hold(Reason::WithinTarget, Some(total), load_text);
        }

        // wanted < from: scale down, one step, after the delays.
        if from == 1 {
            // wanted is 0, so minReplicas is 0 and there is no load.
            let idle_for = now.saturating_duration_since(self.last_active.max(observed_since));
            if covers(idle_for, policy.idle_before_zero) {
                return self.change(
                    now,
                    0,
                    Some(total),
                    format!("no request for {}s", idle_for.as_secs()),
                );
            }
            return self.hold(
                Reason::WaitingForIdle,
                Some(total),
                format!(
                    "no request for {}s; scales to zero after {}s",
                    idle_for.as_secs(),
                    policy.idle_before_zero.as_secs()
                ),
            );
        }
        let delay = policy.scale_down_delay;
        let low_since = self
            .history
            .iter()
            .rev()
            .take_while(|(_, wanted)| *wanted < from)
            .last()
            .map(|(at, _)| *at)
            .unwrap_or(now);
        let observed_long_enough = covers(now.saturating_duration_since(observed_since), delay);
        let window_low = self.history.iter().all(|(_, wanted)| *wanted < from);
        let settled = self
            .last_change
            .is_none_or(|at| covers(now.saturating_duration_since(at), delay));
        if observed_long_enough && window_low && settled {
            return self.change(
                now,
                from - 1,
                Some(total),
                format!("{load_text}, low for {}s", delay.as_secs()),
            );
        }
        let low_for = now.saturating_duration_since(low_since);
        self.hold(
            Reason::ScaleDownDelayed,
            Some(total),
            format!(
                "{load_text} fits {} replicas; low for {}s of the {}s scale-down delay",
                wanted.max(1),
                low_for.as_secs(),
                delay.as_secs()
            ),
        )
    }

    fn hold(&self, reason: Reason, load: Option<u64>, message: String) -> Decision {
        Decision {
            from: self.replicas,
            to: self.replicas,
            reason,
            load,
            message,
        }
    }

    fn change(&mut self, now: Instant, to: u32, load: Option<u64>, why: String) -> Decision {
        let from = self.replicas;
        let reason = if to > from {
            Reason::ScaledUp
        } else if to == 0 {
            Reason::ScaledToZero
        } else {
            Reason::ScaledDown
        };
        self.replicas = to;
        self.last_change = Some(now);
        Decision {
            from,
            to,
            reason,
            load,
            message: format!("{from}→{to}: {why}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(min: u32, max: u32, target: u32, delay: u64, idle: u64) -> Policy {
        Policy {
            min_replicas: min,
            max_replicas: max,
            target_per_replica: target,
            scale_down_delay: Duration::from_secs(delay),
            idle_before_zero: Duration::from_secs(idle),
        }
    }

    fn gateway(load: u64) -> Load {
        Load {
            gateway: Some(load),
            engines: Some(0),
            ..Load::default()
        }
    }

    fn held(queued: u64) -> Load {
        Load {
            gateway: Some(queued),
            queued,
            engines: Some(0),
            activity: false,
        }
    }

    const NO_METRICS: Load = Load {
        gateway: None,
        queued: 0,
        engines: None,
        activity: false,
    };

    /// Feeds one load per second from `start + from_second`, returning every decision.
    fn run(
        scaler: &mut ModelScaler,
        policy: &Policy,
        start: Instant,
        from_second: u64,
        loads: &[Load],
    ) -> Vec<Decision> {
        loads
            .iter()
            .enumerate()
            .map(|(index, load)| {
                let at = start + Duration::from_secs(from_second + index as u64);
                scaler.decide(policy, load, at)
            })
            .collect()
    }

    fn replicas(decisions: &[Decision]) -> Vec<u32> {
        decisions.iter().map(|decision| decision.to).collect()
    }

    #[test]
    fn from_spec_sanitises() {
        let spec: AutoscalingSpec = serde_yaml::from_str(
            "{minReplicas: 3, maxReplicas: 1, targetRequestsPerReplica: 0, scaleDownDelaySeconds: -5}",
        )
        .unwrap();
        let policy = Policy::from_spec(&spec);
        assert_eq!((policy.min_replicas, policy.max_replicas), (3, 3));
        assert_eq!(policy.target_per_replica, 1);
        assert_eq!(policy.scale_down_delay, Duration::ZERO);
        assert_eq!(
            policy.idle_before_zero,
            Duration::from_secs(900),
            "the default"
        );
    }

    #[test]
    fn wanted_is_the_ceiling_within_bounds() {
        let policy = policy(0, 10, 8, 300, 900);
        assert_eq!(policy.wanted(0), 0);
        assert_eq!(policy.wanted(1), 1);
        assert_eq!(policy.wanted(8), 1);
        assert_eq!(policy.wanted(9), 2);
        assert_eq!(policy.wanted(37), 5);
        assert_eq!(policy.wanted(10_000), 10);
        assert_eq!(super::tests::policy(2, 10, 8, 0, 0).wanted(0), 2);
    }

    #[test]
    fn a_burst_scales_up_at_once_in_one_step() {
        let start = Instant::now();
        let policy = policy(0, 8, 8, 300, 900);
        let mut scaler = ModelScaler::new(0, start);
        let decision = scaler.decide(&policy, &gateway(64), start);
        assert_eq!((decision.from, decision.to), (0, 8));
        assert_eq!(decision.reason, Reason::ScaledUp);
        assert_eq!(decision.message, "0→8: load 64 / target 8 per replica");

        let mut scaler = ModelScaler::new(2, start);
        let decision = scaler.decide(&policy, &gateway(37), start);
        assert_eq!(decision.message, "2→5: load 37 / target 8 per replica");
    }

    #[test]
    fn wakes_from_zero_on_a_held_request() {
        let start = Instant::now();
        let policy = policy(0, 4, 16, 300, 900);
        let mut scaler = ModelScaler::new(0, start);
        let idle = scaler.decide(&policy, &gateway(0), start);
        assert_eq!((idle.to, idle.reason), (0, Reason::Idle));
        let decision = scaler.decide(&policy, &held(1), start + Duration::from_secs(1));
        assert_eq!((decision.from, decision.to), (0, 1));
        assert_eq!(decision.reason, Reason::ScaledUp);
        assert!(
            decision.message.contains("1 held by the gateway"),
            "{}",
            decision.message
        );
    }

    #[test]
    fn scale_down_waits_for_the_delay_then_goes_one_step_at_a_time() {
        let start = Instant::now();
        let policy = policy(1, 10, 10, 3, 900);
        let mut scaler = ModelScaler::new(1, start);
        assert_eq!(scaler.decide(&policy, &gateway(45), start).to, 5);
        let quiet = vec![gateway(5); 14];
        let decisions = run(&mut scaler, &policy, start, 1, &quiet);
        // a change at t=0; low from t=1; first step when the last change is 3 s old and the
        // window (t-3, t] was low and observed: t=3, then every 3 s.
        assert_eq!(
            replicas(&decisions),
            [5, 5, 4, 4, 4, 3, 3, 3, 2, 2, 2, 1, 1, 1]
        );
        assert_eq!(decisions[0].reason, Reason::ScaleDownDelayed);
        assert_eq!(decisions[2].reason, Reason::ScaledDown);
        assert_eq!(
            decisions[2].message,
            "5→4: load 5 / target 10 per replica, low for 3s"
        );
        assert_eq!(
            decisions[13].reason,
            Reason::WithinTarget,
            "never below min"
        );
    }

    #[test]
    fn oscillating_load_does_not_flap() {
        let start = Instant::now();
        let policy = policy(1, 10, 8, 5, 900);
        let mut scaler = ModelScaler::new(1, start);
        // 30 and 10 in turn, every second, for a minute: 4 replicas then nothing else.
        let loads: Vec<Load> = (0..60)
            .map(|second| gateway(if second % 2 == 0 { 30 } else { 10 }))
            .collect();
        let decisions = run(&mut scaler, &policy, start, 0, &loads);
        assert_eq!(decisions[0].to, 4);
        assert!(decisions.iter().all(|decision| decision.to == 4));
        let changes = decisions
            .iter()
            .filter(|decision| decision.reason.is_change());
        assert_eq!(changes.count(), 1);

        // A load hovering on a boundary (16 = 2 replicas, 17 = 3) stays at 3 too.
        let loads: Vec<Load> = (0..30).map(|second| gateway(16 + second % 2)).collect();
        let mut scaler = ModelScaler::new(3, start);
        let decisions = run(&mut scaler, &policy, start, 0, &loads);
        assert!(decisions.iter().all(|decision| decision.to == 3));
    }

    #[test]
    fn a_short_spike_inside_the_window_restarts_the_delay() {
        let start = Instant::now();
        let policy = policy(1, 10, 10, 5, 900);
        let mut scaler = ModelScaler::new(3, start);
        let mut loads = vec![gateway(5); 4];
        loads.push(gateway(25)); // wants 3 = current: not an increase, but not low either
        loads.extend(vec![gateway(5); 8]);
        let decisions = run(&mut scaler, &policy, start, 0, &loads);
        // t=0..3 low, t=4 spike, low again from t=5: first step down at t=9, when the window
        // (4, 9] holds only low samples.
        assert_eq!(
            replicas(&decisions),
            [3, 3, 3, 3, 3, 3, 3, 3, 3, 2, 2, 2, 2]
        );
    }

    #[test]
    fn scales_to_zero_only_after_the_idle_time_and_only_with_min_zero() {
        let start = Instant::now();
        let policy = policy(0, 4, 8, 2, 10);
        let mut scaler = ModelScaler::new(2, start);
        let mut loads = vec![gateway(4)];
        loads.extend(vec![gateway(0); 20]);
        let decisions = run(&mut scaler, &policy, start, 0, &loads);
        // 2 -> 1 after the scale-down delay; 1 -> 0 once 10 s passed since the last request (t=0)
        let zero_at = decisions
            .iter()
            .position(|decision| decision.reason == Reason::ScaledToZero)
            .unwrap();
        assert_eq!(zero_at, 10);
        assert_eq!(decisions[zero_at].message, "1→0: no request for 10s");
        assert_eq!(decisions[2].to, 1);
        assert_eq!(decisions[5].reason, Reason::WaitingForIdle);
        assert_eq!(decisions[20].reason, Reason::Idle);

        // A short request between two scrapes (only a counter moved) keeps the model awake.
        let mut scaler = ModelScaler::new(1, start);
        let mut loads = vec![gateway(0); 8];
        loads.push(Load {
            activity: true,
            ..gateway(0)
        });
        loads.extend(vec![gateway(0); 12]);
        let decisions = run(&mut scaler, &policy, start, 0, &loads);
        let zero_at = decisions
            .iter()
            .position(|decision| decision.to == 0)
            .unwrap();
        assert_eq!(zero_at, 18);

        // minReplicas 1: never to zero.
        let policy = super::tests::policy(1, 4, 8, 2, 10);
        let mut scaler = ModelScaler::new(1, start);
        let decisions = run(&mut scaler, &policy, start, 0, &[gateway(0); 30]);
        assert!(decisions.iter().all(|decision| decision.to == 1));
    }

    #[test]
    fn a_restarted_operator_waits_a_whole_idle_period() {
        let start = Instant::now();
        let policy = policy(0, 4, 8, 2, 10);
        let mut scaler = ModelScaler::new(1, start);
        let decisions = run(&mut scaler, &policy, start, 0, &[gateway(0); 12]);
        assert_eq!(decisions[9].to, 1);
        assert_eq!(decisions[10].to, 0);
    }

    #[test]
    fn stale_metrics_hold_the_count_and_restart_the_window() {
        let start = Instant::now();
        let policy = policy(0, 8, 8, 3, 5);
        let mut scaler = ModelScaler::new(4, start);
        // no signal at all: hold, whatever the time
        let decisions = run(&mut scaler, &policy, start, 0, &[NO_METRICS; 20]);
        assert!(decisions
            .iter()
            .all(|decision| decision.to == 4 && decision.reason == Reason::NoMetrics));
        // signal back with low load: a full window of samples is needed again
        let decisions = run(&mut scaler, &policy, start, 20, &[gateway(1); 4]);
        assert_eq!(replicas(&decisions), [4, 4, 4, 3]);
        // a gap in the middle of a low period restarts the count
        let mut loads = vec![gateway(1); 2];
        loads.push(NO_METRICS);
        loads.extend(vec![gateway(1); 4]);
        let decisions = run(&mut scaler, &policy, start, 24, &loads);
        assert_eq!(replicas(&decisions), [3, 3, 3, 3, 3, 3, 2]);
        // and the engine view alone is a signal
        let engines_only = Load {
            gateway: None,
            engines: Some(30),
            ..Load::default()
        };
        assert_eq!(
            scaler
                .decide(&policy, &engines_only, start + Duration::from_secs(40))
                .to,
            4
        );
    }

    #[test]
    fn bounds_are_enforced_at_once() {
        let start = Instant::now();
        let mut scaler = ModelScaler::new(6, start);
        let lowered = policy(1, 4, 8, 300, 900);
        let decision = scaler.decide(&lowered, &gateway(100), start);
        assert_eq!((decision.to, decision.reason), (4, Reason::ScaledDown));
        let decision = scaler.decide(&lowered, &gateway(100), start + Duration::from_secs(1));
        assert_eq!(
            (decision.to, decision.reason),
            (4, Reason::LimitedByMaxReplicas)
        );
        assert!(
            decision.message.contains("calls for 13 replicas"),
            "{}",
            decision.message
        );

        let raised = policy(5, 8, 8, 300, 900);
        let decision = scaler.decide(&raised, &gateway(0), start + Duration::from_secs(2));
        assert_eq!((decision.to, decision.reason), (5, Reason::ScaledUp));
        let decision = scaler.decide(&raised, &NO_METRICS, start + Duration::from_secs(3));
        assert_eq!(decision.to, 5);
        let mut scaler = ModelScaler::new(9, start);
        let decision = scaler.decide(&raised, &NO_METRICS, start);
        assert_eq!((decision.to, decision.reason), (8, Reason::ScaledDown));
    }

    #[test]
    fn a_gateway_replica_disappearing_is_a_drop_not_a_cliff() {
        // Two gateways report 20 each; one goes away (its pod is deleted): the load halves,
        // which is a scale-down candidate like any other, after the delay.
        let start = Instant::now();
        let policy = policy(1, 10, 8, 4, 900);
        let mut scaler = ModelScaler::new(1, start);
        let mut loads = vec![gateway(40); 3];
        loads.extend(vec![gateway(20); 8]);
        let decisions = run(&mut scaler, &policy, start, 0, &loads);
        assert_eq!(replicas(&decisions), [5, 5, 5, 5, 5, 5, 4, 4, 4, 4, 3]);
    }
}
