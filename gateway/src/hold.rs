//! Held requests: a request for a model with no ready replica (scaled to zero, starting) waits
//! for one instead of failing, and held requests leave in arrival order, spread over the
//! replicas that turn ready.
//!
//! # The release rule
//!
//! Each model has one FIFO of held requests in [`Holds`] (`Gateway::holds`, apart from the
//! [`Index`], which only says what exists). A request is held when it arrives while the model has no ready replica, or while
//! requests of the model are already held (it then queues behind them, so arrival order is
//! kept). Held requests leave head first:
//!
//! - one per free slot, where the free slots are, over the model's ready replicas that are not
//!   ejected, the sum of `targetRequestsPerReplica - in-flight` (never below zero), minus
//!   requests released a moment ago that have not reached a replica yet;
//! - all of them once no more replicas are coming: the model has as many ready replicas as it
//!   wants (`spec.replicas`, which the autoscaler writes);
//! - all of them when the model has no autoscaling target (nothing to spread by).
//!
//! The rule is evaluated when the routing table changes (a replica turned ready, the autoscaler
//! changed `spec.replicas`) and when an in-flight request on one of the gateway's replicas ends
//! (a slot freed), plus once a second as a safety net. [`releasable`] is the pure decision.
//!
//! Released requests are routed one after another in arrival order: the releases are decided
//! under the model's lock, and a released request runs from the release to its replica's
//! in-flight increment without waiting on anything (unless a per-model concurrency queue is
//! configured), so a request picked after it sees the increment and LeastLoad sends it
//! elsewhere. The release reservation ([`Release`]) covers the request until it is counted in
//! flight on its replica ([`hand_over`]), so no other task sees its slot as free in between.
//!
//! When the hold ends (`holdTimeoutSeconds`, default `--hold-timeout`) a request that was not
//! released is sent anyway if the model has a ready replica by then (the engine queues it), and
//! answered 503 `no_ready_replica` with `Retry-After` only when it has none. At most
//! `holdQueueLimit` (default `--hold-queue-limit`) requests are held per model; further ones get
//! 503 `hold_queue_full` at once. The `kinfer_gateway_queued_requests{model}` gauge counts held
//! requests exactly; the operator's autoscaler reads it.
//!
//! A held stream request whose hold lasts is answered at once with SSE keep-alives: see
//! [`stream`].

pub mod stream;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::Notify;
use tokio::time::Instant;

pub use crate::endpoint::RoomSignal;
use crate::error::ApiError;
pub use crate::index::HoldSettings;
use crate::index::{Index, ModelEntry};

/// How often a waiting request re-evaluates the rule without any event: a released request that
/// failed before reaching a replica frees its reservation without waking anybody.
const RECHECK_INTERVAL: Duration = Duration::from_secs(1);

/// The gateway-wide hold settings (flags), used where a model sets none.
#[derive(Clone, Copy, Debug)]
pub struct HoldDefaults {
    pub timeout: Duration,
    pub queue_limit: usize,
    /// `Retry-After` of the 503 answers.
    pub retry_after: Duration,
}

/// How many held requests, from the head of the queue, may leave now.
///
/// `held`: requests in the queue; `inflight`: the in-flight count of each ready replica;
/// `in_transit`: requests already released that have not reached a replica yet.
pub fn releasable(
    held: usize,
    inflight: &[usize],
    in_transit: usize,
    settings: &HoldSettings,
) -> usize {
    if inflight.is_empty() {
        return 0;
    }
    let Some(target) = settings.target_per_replica.filter(|target| *target > 0) else {
        return held;
    };
    let more_coming = settings
        .desired_replicas
        .is_some_and(|desired| usize::try_from(desired).unwrap_or(usize::MAX) > inflight.len());
    if !more_coming {
        return held;
    }
    let target = usize::try_from(target).unwrap_or(usize::MAX);
    let free: usize = inflight
        .iter()
        .map(|count| target.saturating_sub(*count))
        .sum();
    held.min(free.saturating_sub(in_transit))
}

/// The held requests of every model.
/// No `Default`: a `Holds` must share the index's room signal, or nothing wakes it.
#[derive(Debug)]
pub struct Holds {
    models: Mutex<HashMap<String, Arc<ModelQueue>>>,
    room: Arc<RoomSignal>,
}

#[derive(Debug, Default)]
struct ModelQueue {
    state: Mutex<QueueState>,
}

#[derive(Debug, Default)]
struct QueueState {
    waiting: VecDeque<Arc<Ticket>>,
    /// Released, not yet on a replica.
    in_transit: usize,
}

#[derive(Debug, Default)]
struct Ticket {
    /// Set under the queue's lock when the request is released.
    released: AtomicBool,
    /// Released, or became the head of the queue.
    wake: Notify,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}

impl ModelQueue {
    fn lock(&self) -> MutexGuard<'_, QueueState> {
        lock(&self.state)
    }
}

impl Holds {
    /// Held requests woken by `room`, which the index shares with every endpoint it builds
    /// (an endpoint calls [`RoomSignal::freed`] when a request ends).
    pub fn new(room: Arc<RoomSignal>) -> Self {
        Self {
            models: Mutex::default(),
            room,
        }
    }

    /// Whether requests of `model` are being held: a new request then queues behind them.
    /// One relaxed load while nothing is held anywhere.
    pub fn is_holding(&self, model: &str) -> bool {
        if self.room.held.load(Ordering::Relaxed) == 0 {
            return false;
        }
        lock(&self.models)
            .get(model)
            .is_some_and(|queue| !queue.lock().waiting.is_empty())
    }

    /// Requests held for `model` right now.
    pub fn held(&self, model: &str) -> usize {
        lock(&self.models)
            .get(model)
            .map_or(0, |queue| queue.lock().waiting.len())
    }

    fn join(&self, model: &str) -> Seat<'_> {
        let mut models = lock(&self.models);
        let queue = models.entry(model.to_string()).or_default().clone();
        let ticket = Arc::new(Ticket::default());
        queue.lock().waiting.push_back(ticket.clone());
        self.room.held.fetch_add(1, Ordering::Relaxed);
        Seat {
            holds: self,
            model: model.to_string(),
            queue,
            ticket,
        }
    }

    /// Forget the model's queue once nobody waits in it or is in transit from it.
    fn prune(&self, model: &str) {
        let mut models = lock(&self.models);
        let idle = models.get(model).is_some_and(|queue| {
            let state = queue.lock();
            state.waiting.is_empty() && state.in_transit == 0
        });
        if idle {
            models.remove(model);
        }
    }
}

/// Where a held request stands after an evaluation of the rule.
enum Position {
    Released,
    Head,
    Behind,
}

/// A request's place in its model's queue. Dropped while waiting (the client went away, the
/// hold ended), it leaves the queue; dropped after its release, it ends the reservation.
struct Seat<'a> {
    holds: &'a Holds,
    model: String,
    queue: Arc<ModelQueue>,
    ticket: Arc<Ticket>,
}

impl Seat<'_> {
    /// Apply the rule to the whole queue (whichever held request evaluates it releases the
    /// heads that may go), then say where this request stands.
    fn evaluate(&self, entry: &ModelEntry) -> Position {
        let mut state = self.queue.lock();
        let now = Instant::now();
        // An ejected replica has no room: it counts as full (the proxy avoids it while another
        // replica is available). It still counts as ready: more replicas are not coming for it.
        let inflight: Vec<usize> = entry
            .endpoints
            .iter()
            .map(|endpoint| {
                if endpoint.is_available(now) {
                    endpoint.inflight()
                } else {
                    usize::MAX
                }
            })
            .collect();
        let count = releasable(
            state.waiting.len(),
            &inflight,
            state.in_transit,
            &entry.hold,
        );
        for _ in 0..count {
            let Some(ticket) = state.waiting.pop_front() else {
                break;
            };
            ticket.released.store(true, Ordering::Relaxed);
            ticket.wake.notify_one();
            state.in_transit += 1;
            self.holds.room.held.fetch_sub(1, Ordering::Relaxed);
        }
        if count > 0 {
            // The new head now watches for room.
            if let Some(head) = state.waiting.front() {
                head.wake.notify_one();
            }
        }
        if self.ticket.released.load(Ordering::Relaxed) {
            return Position::Released;
        }
        match state.waiting.front() {
            Some(head) if Arc::ptr_eq(head, &self.ticket) => Position::Head,
            _ => Position::Behind,
        }
    }
}

impl Drop for Seat<'_> {
    fn drop(&mut self) {
        {
            let mut state = self.queue.lock();
            if self.ticket.released.load(Ordering::Relaxed) {
                // On its replica now (or cancelled before): the head re-evaluates, since an
                // evaluation that counted this request both in flight and in transit may have
                // seen one slot too few.
                state.in_transit = state.in_transit.saturating_sub(1);
                if let Some(head) = state.waiting.front() {
                    head.wake.notify_one();
                }
            } else if let Some(position) = state
                .waiting
                .iter()
                .position(|ticket| Arc::ptr_eq(ticket, &self.ticket))
            {
                state.waiting.remove(position);
                self.holds.room.held.fetch_sub(1, Ordering::Relaxed);
                if position == 0 {
                    if let Some(head) = state.waiting.front() {
                        head.wake.notify_one();
                    }
                }
            }
        }
        self.holds.prune(&self.model);
    }
}

/// A released request's reservation of a slot: counted against the free slots until dropped.
/// Keep it until the request is counted in flight on its replica: pass it to [`hand_over`].
pub struct Release<'a> {
    _seat: Seat<'a>,
}

/// Await `forward` (the proxy's forward of a released request), ending `release` once the
/// request is counted in flight on its replica, so that no other thread sees its slot as free
/// in between.
///
/// `Proxy::forward` counts the request in flight (`InflightGuard::new`) before it first waits
/// (on the replica's answer), so the reservation ends after `forward`'s first poll. Not later:
/// a non-stream request gets the engine's response head only when its generation ends, and a
/// reservation kept until then would count the request twice for that long (in flight and in
/// transit), hiding a free slot from the held requests.
pub async fn hand_over<F: std::future::Future>(
    mut forward: std::pin::Pin<&mut F>,
    release: Release<'_>,
) -> F::Output {
    let mut release = Some(release);
    std::future::poll_fn(|context| {
        let polled = forward.as_mut().poll(context);
        drop(release.take());
        polled
    })
    .await
}

/// How a hold ended with a request to route.
pub struct Released<'a> {
    /// The model as the latest routing table has it.
    pub entry: Arc<ModelEntry>,
    /// `None` when the hold ended at its deadline and the request goes anyway.
    pub release: Option<Release<'a>>,
}

/// Decrements the held-requests gauge when a held request stops waiting, however it stops.
struct HeldGauge(Gauge);

impl Drop for HeldGauge {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Hold a request for `entry` until the release rule lets it go, the hold ends, or the model
/// disappears (404).
pub async fn hold<'a>(
    index: &'a Index,
    holds: &'a Holds,
    entry: Arc<ModelEntry>,
    defaults: &HoldDefaults,
) -> Result<Released<'a>, ApiError> {
    let model = entry.id.clone();
    let retry_after = defaults.retry_after;
    let timeout = entry.hold.timeout.unwrap_or(defaults.timeout);
    let limit = entry.hold.queue_limit.unwrap_or(defaults.queue_limit);
    let queued = entry.metrics.queued.clone();
    drop(entry);
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    // `inc` returns the previous value: the check and the increment are one atomic step.
    if queued.inc() >= limit {
        queued.dec();
        return Err(ApiError::HoldQueueFull { model, retry_after });
    }
    let _held = HeldGauge(queued);
    let deadline = Instant::now() + timeout;
    let mut changes = index.subscribe();
    changes.borrow_and_update();
    let seat = holds.join(&model);
    tracing::debug!(%model, "holding request until a replica has room");
    loop {
        let room = holds.room.freed.notified();
        let mut room = std::pin::pin!(room);
        // Registered before the evaluation, so a request ending right after it still wakes us.
        room.as_mut().enable();
        let table = index.snapshot();
        let Some(current) = table.get(&model) else {
            return Err(ApiError::ModelNotFound { model });
        };
        let position = seat.evaluate(current);
        if let Position::Released = position {
            return Ok(Released {
                entry: current.clone(),
                release: Some(Release { _seat: seat }),
            });
        }
        if Instant::now() >= deadline {
            drop(seat);
            if current.endpoints.is_empty() {
                return Err(ApiError::NoReadyReplica { model, retry_after });
            }
            tracing::debug!(%model, "hold ended; sending the request to a busy replica");
            return Ok(Released {
                entry: current.clone(),
                release: None,
            });
        }
        drop(table);
        let ticket = seat.ticket.wake.notified();
        match position {
            Position::Head => {
                tokio::select! {
                    () = ticket => {}
                    () = room => {}
                    changed = changes.changed() => {
                        if changed.is_err() {
                            return Err(ApiError::NoReadyReplica { model, retry_after });
                        }
                    }
                    () = tokio::time::sleep(RECHECK_INTERVAL) => {}
                    () = tokio::time::sleep_until(deadline) => {}
                }
            }
            Position::Behind | Position::Released => {
                // Only the head watches for room; the others wait to be released or to become
                // the head.
                tokio::select! {
                    () = ticket => {}
                    () = tokio::time::sleep_until(deadline) => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::{EndpointConfig, ModelConfig};
    use crate::metrics::Metrics;
    use crate::policy::PolicyConfig;
    use kinfer_crds::{Feature, RoutingStrategy};
    use std::sync::Mutex;

    const DEFAULTS: HoldDefaults = HoldDefaults {
        timeout: Duration::from_secs(60),
        queue_limit: 100,
        retry_after: Duration::from_secs(5),
    };

    /// An index and the holds it signals.
    struct Bed {
        index: Index,
        holds: Holds,
    }

    impl std::ops::Deref for Bed {
        type Target = Index;
        fn deref(&self) -> &Index {
            &self.index
        }
    }

    impl Bed {
        fn holds(&self) -> &Holds {
            &self.holds
        }
    }

    fn index() -> Arc<Bed> {
        let room = Arc::new(RoomSignal::default());
        Arc::new(Bed {
            index: Index::new(
                RoutingStrategy::LeastLoad,
                PolicyConfig::default(),
                Arc::new(Metrics::new()),
                room.clone(),
            ),
            holds: Holds::new(room),
        })
    }

    fn config(replicas: usize, hold: HoldSettings) -> ModelConfig {
        ModelConfig {
            id: "m".into(),
            parent: None,
            features: vec![Feature::TextGeneration],
            strategy: None,
            endpoints: (1..=replicas)
                .map(|port| {
                    let address = format!("127.0.0.1:{port}");
                    EndpointConfig::new(address.clone(), address)
                })
                .collect(),
            hold,
        }
    }

    /// Holds request `number`; once released, it takes the least loaded replica that is not
    /// ejected (as the proxy and LeastLoad would, deterministically), records where it went, and
    /// ends its reservation.
    fn request(
        index: &Arc<Bed>,
        number: usize,
        routed: &Arc<Mutex<Vec<(usize, String)>>>,
    ) -> tokio::task::JoinHandle<Result<(), ApiError>> {
        let index = index.clone();
        let routed = routed.clone();
        tokio::spawn(async move {
            let entry = index.snapshot().get("m").unwrap().clone();
            let released = hold(&index, index.holds(), entry, &DEFAULTS).await?;
            let endpoint = released
                .entry
                .endpoints
                .iter()
                .filter(|endpoint| endpoint.is_available(Instant::now()))
                .min_by_key(|endpoint| endpoint.inflight())
                .unwrap()
                .clone();
            endpoint.begin_request();
            drop(released.release);
            routed
                .lock()
                .unwrap()
                .push((number, endpoint.name().to_string()));
            Ok(())
        })
    }

    async fn settle() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn burst_leaves_in_arrival_order_over_the_new_replicas() {
        let index = index();
        let settings = autoscaled(2, 3);
        index.publish(vec![config(0, settings)]);
        let routed = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for number in 0..8 {
            tasks.push(request(&index, number, &routed));
            // Arrival order is join order.
            settle().await;
        }
        assert_eq!(index.holds().held("m"), 8);
        let queued = index.snapshot().get("m").unwrap().metrics.queued.get();
        assert_eq!(queued, 8);
        // One replica of the three wanted: two slots.
        index.publish(vec![config(1, settings)]);
        settle().await;
        let numbers = |routed: &Mutex<Vec<(usize, String)>>| -> Vec<usize> {
            routed
                .lock()
                .unwrap()
                .iter()
                .map(|(number, _)| *number)
                .collect()
        };
        assert_eq!(numbers(&routed), [0, 1]);
        // The second replica: two more, both on it.
        index.publish(vec![config(2, settings)]);
        settle().await;
        assert_eq!(numbers(&routed), [0, 1, 2, 3]);
        let on_second = routed.lock().unwrap()[2..]
            .iter()
            .all(|(_, replica)| replica == "127.0.0.1:2");
        assert!(on_second, "{routed:?}");
        // A request ends on the first replica: one slot.
        let first = index.snapshot().get("m").unwrap().endpoints[0].clone();
        first.end_request();
        settle().await;
        assert_eq!(numbers(&routed), [0, 1, 2, 3, 4]);
        assert_eq!(routed.lock().unwrap()[4].1, "127.0.0.1:1");
        // Every wanted replica is ready: the rest leave, still in order.
        index.publish(vec![config(3, settings)]);
        settle().await;
        assert_eq!(numbers(&routed), [0, 1, 2, 3, 4, 5, 6, 7]);
        for task in tasks {
            task.await.unwrap().unwrap();
        }
        assert_eq!(index.holds().held("m"), 0);
        assert_eq!(index.snapshot().get("m").unwrap().metrics.queued.get(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn newcomers_queue_behind_held_requests() {
        let index = index();
        let settings = autoscaled(1, 3);
        index.publish(vec![config(1, settings)]);
        index.snapshot().get("m").unwrap().endpoints[0].begin_request();
        let routed = Arc::new(Mutex::new(Vec::new()));
        let first = request(&index, 0, &routed);
        settle().await;
        assert!(index.holds().is_holding("m"));
        let second = request(&index, 1, &routed);
        settle().await;
        index.publish(vec![config(2, settings)]);
        settle().await;
        // One slot on the new replica: the first held request takes it, the second waits.
        assert_eq!(routed.lock().unwrap().len(), 1);
        assert_eq!(routed.lock().unwrap()[0].0, 0);
        assert!(index.holds().is_holding("m"));
        first.await.unwrap().unwrap();
        index.snapshot().get("m").unwrap().endpoints[1].end_request();
        second.await.unwrap().unwrap();
        assert!(!index.holds().is_holding("m"));
    }

    #[tokio::test(start_paused = true)]
    async fn at_the_deadline_a_busy_replica_beats_a_503() {
        let index = index();
        let settings = HoldSettings {
            timeout: Some(Duration::from_secs(20)),
            ..autoscaled(1, 2)
        };
        index.publish(vec![config(1, settings)]);
        index.snapshot().get("m").unwrap().endpoints[0].begin_request();
        let entry = index.snapshot().get("m").unwrap().clone();
        let started = Instant::now();
        let released = hold(&index, index.holds(), entry, &DEFAULTS).await.unwrap();
        assert_eq!(started.elapsed(), Duration::from_secs(20));
        assert!(released.release.is_none());
        assert_eq!(released.entry.endpoints.len(), 1);
        assert_eq!(index.holds().held("m"), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn at_the_deadline_without_a_replica_503() {
        let index = index();
        index.publish(vec![config(0, HoldSettings::default())]);
        let entry = index.snapshot().get("m").unwrap().clone();
        let started = Instant::now();
        let Err(error) = hold(&index, index.holds(), entry, &DEFAULTS).await else {
            panic!("released without a replica");
        };
        assert_eq!(started.elapsed(), DEFAULTS.timeout);
        assert_eq!(error.metric_label(), "no_ready_replica");
    }

    #[tokio::test(start_paused = true)]
    async fn per_model_queue_limit() {
        let index = index();
        let settings = HoldSettings {
            queue_limit: Some(1),
            ..HoldSettings::default()
        };
        index.publish(vec![config(0, settings)]);
        let routed = Arc::new(Mutex::new(Vec::new()));
        let held = request(&index, 0, &routed);
        settle().await;
        let entry = index.snapshot().get("m").unwrap().clone();
        let Err(error) = hold(&index, index.holds(), entry, &DEFAULTS).await else {
            panic!("held over the model's limit");
        };
        assert_eq!(error.metric_label(), "hold_queue_full");
        index.publish(vec![config(1, settings)]);
        held.await.unwrap().unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_hold_leaves_the_queue() {
        let index = index();
        index.publish(vec![config(0, HoldSettings::default())]);
        let routed = Arc::new(Mutex::new(Vec::new()));
        let first = request(&index, 0, &routed);
        let second = request(&index, 1, &routed);
        settle().await;
        assert_eq!(index.holds().held("m"), 2);
        // The head goes away; the next one becomes the head and is released on its own.
        first.abort();
        settle().await;
        assert_eq!(index.holds().held("m"), 1);
        assert_eq!(index.snapshot().get("m").unwrap().metrics.queued.get(), 1);
        index.publish(vec![config(1, HoldSettings::default())]);
        second.await.unwrap().unwrap();
        assert_eq!(routed.lock().unwrap().len(), 1);
        assert!(!index.holds().is_holding("m"));
    }

    #[tokio::test(start_paused = true)]
    async fn an_ejected_replica_takes_no_held_request() {
        let index = index();
        let settings = autoscaled(2, 3);
        index.publish(vec![config(1, settings)]);
        let ejection = crate::index::EjectionPolicy {
            consecutive_failures: 1,
            base: Duration::from_secs(600),
            max: Duration::from_secs(600),
        };
        let ejected = index.snapshot().get("m").unwrap().endpoints[0].clone();
        assert!(ejected.record_failure(Instant::now(), &ejection).is_some());
        let routed = Arc::new(Mutex::new(Vec::new()));
        let tasks: Vec<_> = (0..4)
            .map(|number| request(&index, number, &routed))
            .collect();
        settle().await;
        // The only ready replica is ejected and more are coming: no room.
        assert!(routed.lock().unwrap().is_empty());
        assert_eq!(index.holds().held("m"), 4);
        // A healthy second replica: its two slots.
        index.publish(vec![config(2, settings)]);
        settle().await;
        assert_eq!(routed.lock().unwrap().len(), 2);
        index.publish(vec![config(3, settings)]);
        for task in tasks {
            task.await.unwrap().unwrap();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_reservation_ends_once_the_request_is_in_flight() {
        let index = index();
        index.publish(vec![config(1, autoscaled(1, 2))]);
        let entry = index.snapshot().get("m").unwrap().clone();
        let released = hold(&index, index.holds(), entry, &DEFAULTS).await.unwrap();
        let in_transit = || {
            lock(&index.holds().models)
                .get("m")
                .map_or(0, |queue| queue.lock().in_transit)
        };
        assert_eq!(in_transit(), 1);
        let endpoint = released.entry.endpoints[0].clone();
        let (answer, answered) = tokio::sync::oneshot::channel::<()>();
        // Like `Proxy::forward`: counted in flight, then waits for the engine.
        let forward = async {
            assert_eq!(
                in_transit(),
                1,
                "the reservation ended before the increment"
            );
            endpoint.begin_request();
            answered.await.unwrap();
        };
        let forward = std::pin::pin!(forward);
        let handed_over = hand_over(forward, released.release.unwrap());
        let mut handed_over = std::pin::pin!(handed_over);
        assert!(futures::poll!(handed_over.as_mut()).is_pending());
        assert_eq!(in_transit(), 0);
        assert_eq!(endpoint.inflight(), 1);
        answer.send(()).unwrap();
        handed_over.await;
    }

    fn autoscaled(target: u32, desired: u32) -> HoldSettings {
        HoldSettings {
            target_per_replica: Some(target),
            desired_replicas: Some(desired),
            ..HoldSettings::default()
        }
    }

    #[test]
    fn nothing_leaves_without_a_ready_replica() {
        assert_eq!(releasable(5, &[], 0, &autoscaled(8, 8)), 0);
        assert_eq!(releasable(5, &[], 0, &HoldSettings::default()), 0);
    }

    #[test]
    fn without_a_target_everything_leaves() {
        assert_eq!(releasable(50, &[3], 0, &HoldSettings::default()), 50);
        let no_target = HoldSettings {
            desired_replicas: Some(8),
            ..HoldSettings::default()
        };
        assert_eq!(releasable(50, &[3], 0, &no_target), 50);
    }

    #[test]
    fn while_replicas_are_coming_only_free_slots_leave() {
        // A burst of 64 at zero, target 8, the autoscaler asked for 8: the first ready replica
        // takes 8, not 64.
        assert_eq!(releasable(64, &[0], 0, &autoscaled(8, 8)), 8);
        // Those 8 are on their way: nothing more until they land or more replicas turn ready.
        assert_eq!(releasable(56, &[0], 8, &autoscaled(8, 8)), 0);
        assert_eq!(releasable(56, &[8], 0, &autoscaled(8, 8)), 0);
        // A second replica: 8 more slots.
        assert_eq!(releasable(56, &[8, 0], 0, &autoscaled(8, 8)), 8);
        // A request ended on the first one: one slot.
        assert_eq!(releasable(48, &[7, 8], 0, &autoscaled(8, 8)), 1);
        // Over-full replicas do not count negative.
        assert_eq!(releasable(48, &[12, 5], 0, &autoscaled(8, 8)), 3);
        // Fewer held than free slots.
        assert_eq!(releasable(2, &[0, 0], 0, &autoscaled(8, 8)), 2);
    }

    #[test]
    fn once_every_wanted_replica_is_ready_everything_leaves() {
        assert_eq!(releasable(40, &[8, 8], 0, &autoscaled(8, 2)), 40);
        // More ready than wanted (scale-down under way).
        assert_eq!(releasable(40, &[8, 8, 8], 0, &autoscaled(8, 2)), 40);
        // Desired unknown: nothing says more are coming.
        let unknown = HoldSettings {
            target_per_replica: Some(8),
            ..HoldSettings::default()
        };
        assert_eq!(releasable(40, &[8], 0, &unknown), 40);
    }

    #[test]
    fn an_ejected_replica_has_no_room() {
        // Ejected replicas are passed as full (`usize::MAX`): no slot, but still ready.
        assert_eq!(releasable(8, &[usize::MAX, 6], 0, &autoscaled(8, 4)), 2);
        assert_eq!(releasable(8, &[usize::MAX], 0, &autoscaled(8, 4)), 0);
        // Every wanted replica is ready: the proxy picks among them as usual.
        assert_eq!(releasable(8, &[usize::MAX, 8], 0, &autoscaled(8, 2)), 8);
    }

    #[test]
    fn a_zero_target_counts_as_none() {
        assert_eq!(releasable(7, &[9], 0, &autoscaled(0, 4)), 7);
    }
}
