//! One engine replica as the request path sees it: where it is, how loaded it is, and whether
//! it is currently ejected for failing (or for shutting down).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::uri::{Authority, PathAndQuery, Scheme};
use tokio::time::Instant;

use http::{HeaderName, HeaderValue};

pub const REGION_HEADER: HeaderName = HeaderName::from_static("x-kinfer-region");
pub const ZONE_HEADER: HeaderName = HeaderName::from_static("x-kinfer-zone");
pub const SERVED_BY_HEADER: HeaderName = HeaderName::from_static("x-kinfer-served-by");
pub const NODE_HEADER: HeaderName = HeaderName::from_static("x-kinfer-node");
pub const GPU_PRODUCT_HEADER: HeaderName = HeaderName::from_static("x-kinfer-gpu-product");

/// Node labels read by Kubernetes discovery.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
pub const REGION_LABEL: &str = "topology.kubernetes.io/region";
pub const GPU_PRODUCT_LABEL: &str = "nvidia.com/gpu.product";

/// Where a replica runs; every field is optional (static endpoints, nodes without labels).
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Placement {
    pub node: Option<String>,
    pub zone: Option<String>,
    pub region: Option<String>,
    pub gpu_product: Option<String>,
}

impl Placement {
    /// The response headers of a replica named `replica` placed here.
    pub fn headers(&self, replica: &HeaderValue) -> Vec<(HeaderName, HeaderValue)> {
        let mut headers = vec![(SERVED_BY_HEADER, replica.clone())];
        for (name, value) in [
            (NODE_HEADER, &self.node),
            (GPU_PRODUCT_HEADER, &self.gpu_product),
            (ZONE_HEADER, &self.zone),
        ] {
            if let Some(value) = value
                .as_deref()
                .and_then(|value| HeaderValue::from_str(value).ok())
            {
                headers.push((name, value));
            }
        }
        headers
    }
}

/// Wakes held requests when an in-flight request ends anywhere in the gateway. Ending a request
/// costs one relaxed load while nothing is held.
#[derive(Debug, Default)]
pub struct RoomSignal {
    /// Requests held over every model.
    pub(crate) held: AtomicUsize,
    pub(crate) freed: tokio::sync::Notify,
}

impl RoomSignal {
    /// An in-flight request ended: a slot may be free.
    pub(crate) fn freed(&self) {
        if self.held.load(Ordering::Relaxed) > 0 {
            self.freed.notify_waiters();
        }
    }
}

/// Load figures scraped from the engine's /metrics.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EngineLoad {
    /// `vllm:num_requests_waiting`: requests queued in the engine's scheduler.
    pub waiting: f64,
    /// `vllm:kv_cache_usage_perc`: fraction of KV cache blocks in use (0 to 1).
    pub kv_cache_usage: f64,
    pub scraped_at: Instant,
}

/// When a replica that keeps failing is taken out of rotation, and for how long.
#[derive(Clone, Copy, Debug)]
pub struct EjectionPolicy {
    /// Consecutive failures (connect errors, resets, 502/503, timeouts) that eject a replica.
    pub consecutive_failures: u32,
    /// First ejection time; doubled for every further ejection without a success in between.
    pub base: Duration,
    /// Longest ejection time.
    pub max: Duration,
}

impl Default for EjectionPolicy {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            base: Duration::from_secs(10),
            max: Duration::from_secs(300),
        }
    }
}

#[derive(Debug, Default)]
struct OutlierState {
    consecutive_failures: AtomicU32,
    /// Ejections since the last success, for the doubling.
    ejections_in_a_row: AtomicU32,
    /// Fast path: `false` means available without taking the lock.
    ejected: AtomicBool,
    ejected_until: Mutex<Option<Instant>>,
}

#[derive(Debug)]
pub struct Endpoint {
    name: String,
    /// `name` as the `x-kinfer-replica` value, built once.
    replica_header: http::HeaderValue,
    address: String,
    scheme: Scheme,
    authority: Authority,
    inflight: AtomicUsize,
    outlier: OutlierState,
    load: Mutex<Option<EngineLoad>>,
    /// A stable hash of the address: the replica's identity for consistent hashing.
    id: u64,
    placement: Placement,
    /// `x-kinfer-served-by`, `-node`, `-gpu-product`, `-zone`, built once.
    placement_headers: Vec<(http::HeaderName, http::HeaderValue)>,
    /// LoRA adapters the engine reported running or waiting (`vllm:lora_requests_info`).
    adapters: Mutex<Option<(Vec<String>, Instant)>>,
    /// Told when a request ends, so held requests waiting for room wake up.
    room: Option<Arc<RoomSignal>>,
}

/// An endpoint address that is not `host:port` or `http://host:port`.
#[derive(Debug, thiserror::Error)]
#[error("invalid endpoint address `{address}`: expected host:port or http://host:port")]
pub struct InvalidAddress {
    pub address: String,
}

impl Endpoint {
    /// `address` is `host:port` or `http://host:port` (a trailing slash is ignored). `name` is
    /// what the `x-kinfer-replica` header and logs show: a pod name, or the address.
    pub fn new(name: impl Into<String>, address: &str) -> Result<Self, InvalidAddress> {
        let invalid = || InvalidAddress {
            address: address.to_string(),
        };
        let trimmed = address.trim().trim_end_matches('/');
        let host_port = match trimmed.split_once("://") {
            Some(("http", rest)) => rest,
            Some(_) => return Err(invalid()),
            None => trimmed,
        };
        if host_port.contains('/') || !host_port.contains(':') {
            return Err(invalid());
        }
        let authority: Authority = host_port.parse().map_err(|_| invalid())?;
        if authority.port_u16().is_none() {
            return Err(invalid());
        }
        let name = name.into();
        let replica_header = http::HeaderValue::from_str(&name)
            .or_else(|_| http::HeaderValue::from_str(authority.as_str()))
            .map_err(|_| invalid())?;
        let address = authority.to_string();
        let id = {
            use std::hash::Hasher;
            let mut hasher = std::hash::DefaultHasher::new();
            hasher.write(address.as_bytes());
            hasher.finish()
        };
        let placement_headers = Placement::default().headers(&replica_header);
        Ok(Self {
            name,
            replica_header,
            address,
            scheme: Scheme::HTTP,
            authority,
            inflight: AtomicUsize::new(0),
            outlier: OutlierState::default(),
            load: Mutex::new(None),
            id,
            placement: Placement::default(),
            placement_headers,
            adapters: Mutex::new(None),
            room: None,
        })
    }

    /// The node, zone, region and GPU the replica runs on.
    pub fn with_placement(mut self, placement: Placement) -> Self {
        self.placement_headers = placement.headers(&self.replica_header);
        self.placement = placement;
        self
    }

    /// Signal `room` whenever a request on this replica ends.
    pub(crate) fn with_room_signal(mut self, room: Arc<RoomSignal>) -> Self {
        self.room = Some(room);
        self
    }

    pub fn placement(&self) -> &Placement {
        &self.placement
    }

    /// The response headers naming the replica and where it runs.
    pub fn placement_headers(&self) -> &[(http::HeaderName, http::HeaderValue)] {
        &self.placement_headers
    }

    /// A hash of the address, stable across publications and gateway replicas.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Whether the engine has `adapter` loaded, if it told us recently (`None`: unknown).
    pub fn has_adapter(&self, adapter: &str, now: Instant, max_age: Duration) -> Option<bool> {
        let adapters = self
            .adapters
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        adapters
            .as_ref()
            .filter(|(_, at)| now.saturating_duration_since(*at) <= max_age)
            .map(|(names, _)| names.iter().any(|name| name == adapter))
    }

    pub fn set_adapters(&self, adapters: Option<Vec<String>>, now: Instant) {
        *self
            .adapters
            .lock()
            .unwrap_or_else(|poison| poison.into_inner()) = adapters.map(|names| (names, now));
    }

    /// Whether the engine's queue is deeper than `threshold` (fresh metrics only).
    pub fn is_saturated(&self, now: Instant, max_age: Duration, threshold: f64) -> bool {
        self.engine_load(now, max_age)
            .is_some_and(|load| load.waiting > threshold)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn replica_header(&self) -> &http::HeaderValue {
        &self.replica_header
    }

    /// `host:port`.
    pub fn address(&self) -> &str {
        &self.address
    }

    pub fn uri(&self, path_and_query: PathAndQuery) -> http::Uri {
        http::Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(path_and_query)
            .build()
            // Scheme, authority and path were each validated already.
            .unwrap_or_default()
    }

    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::Relaxed)
    }

    pub(crate) fn begin_request(&self) {
        self.inflight.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn end_request(&self) {
        self.inflight.fetch_sub(1, Ordering::Relaxed);
        if let Some(room) = &self.room {
            room.freed();
        }
    }

    /// The last scraped load, if it is younger than `max_age`.
    pub fn engine_load(&self, now: Instant, max_age: Duration) -> Option<EngineLoad> {
        let load = *self
            .load
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        load.filter(|load| now.saturating_duration_since(load.scraped_at) <= max_age)
    }

    pub fn set_engine_load(&self, load: Option<EngineLoad>) {
        *self
            .load
            .lock()
            .unwrap_or_else(|poison| poison.into_inner()) = load;
    }

    /// Whether the replica may receive requests (it is not ejected, or its ejection is over).
    pub fn is_available(&self, now: Instant) -> bool {
        if !self.outlier.ejected.load(Ordering::Relaxed) {
            return true;
        }
        let mut until = self
            .outlier
            .ejected_until
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        match *until {
            Some(deadline) if now < deadline => false,
            _ => {
                *until = None;
                self.outlier.ejected.store(false, Ordering::Relaxed);
                true
            }
        }
    }

    pub(crate) fn record_success(&self) {
        // Loads before stores: the common case touches no shared cache line for writing.
        if self.outlier.consecutive_failures.load(Ordering::Relaxed) != 0 {
            self.outlier
                .consecutive_failures
                .store(0, Ordering::Relaxed);
        }
        if self.outlier.ejections_in_a_row.load(Ordering::Relaxed) != 0 {
            self.outlier.ejections_in_a_row.store(0, Ordering::Relaxed);
        }
    }

    /// Count a failure; returns the ejection time if this failure ejected the replica.
    pub(crate) fn record_failure(&self, now: Instant, policy: &EjectionPolicy) -> Option<Duration> {
        let failures = self
            .outlier
            .consecutive_failures
            .fetch_add(1, Ordering::Relaxed)
            + 1;
        if policy.consecutive_failures == 0 || failures < policy.consecutive_failures {
            return None;
        }
        let mut until = self
            .outlier
            .ejected_until
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if until.is_some_and(|deadline| now < deadline) {
            return None;
        }
        self.outlier
            .consecutive_failures
            .store(0, Ordering::Relaxed);
        let previous = self
            .outlier
            .ejections_in_a_row
            .fetch_add(1, Ordering::Relaxed);
        let duration = policy
            .base
            .saturating_mul(1 << previous.min(16))
            .min(policy.max);
        *until = Some(now + duration);
        self.outlier.ejected.store(true, Ordering::Relaxed);
        Some(duration)
    }

    /// Take the replica out of rotation for `duration` at once: the engine said it is shutting
    /// down, so the next request would be refused too. Unlike [`Self::record_failure`] this
    /// does not count towards the doubling: a draining pod is gone soon, not failing. Returns
    /// whether the replica was in rotation until now.
    pub(crate) fn eject_draining(&self, now: Instant, duration: Duration) -> bool {
        let mut until = self
            .outlier
            .ejected_until
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        let was_available = !until.is_some_and(|deadline| now < deadline);
        let deadline = now + duration;
        if until.is_none_or(|current| current < deadline) {
            *until = Some(deadline);
        }
        self.outlier.ejected.store(true, Ordering::Relaxed);
        was_available
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        let endpoint = Endpoint::new("a", "http://127.0.0.1:8000/").unwrap();
        assert_eq!(endpoint.address(), "127.0.0.1:8000");
        assert_eq!(
            endpoint
                .uri(PathAndQuery::from_static("/v1/models?x=1"))
                .to_string(),
            "http://127.0.0.1:8000/v1/models?x=1"
        );
        assert_eq!(
            Endpoint::new("b", "10.0.0.7:8000").unwrap().address(),
            "10.0.0.7:8000"
        );
        assert!(Endpoint::new("c", "[::1]:8000").is_ok());
        for bad in [
            "https://x:1",
            "x",
            "http://x",
            "http://x:1/path",
            "",
            "x:notaport",
        ] {
            assert!(Endpoint::new("bad", bad).is_err(), "{bad}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn ejection_doubles_and_expires() {
        let policy = EjectionPolicy {
            consecutive_failures: 2,
            base: Duration::from_secs(10),
            max: Duration::from_secs(25),
        };
        let endpoint = Endpoint::new("a", "127.0.0.1:1").unwrap();
        let now = Instant::now();
        assert_eq!(endpoint.record_failure(now, &policy), None);
        assert_eq!(
            endpoint.record_failure(now, &policy),
            Some(Duration::from_secs(10))
        );
        assert!(!endpoint.is_available(now));
        assert!(!endpoint.is_available(now + Duration::from_secs(9)));
        let later = now + Duration::from_secs(10);
        assert!(endpoint.is_available(later));
        // Failing again right after coming back doubles the ejection, up to the cap.
        endpoint.record_failure(later, &policy);
        assert_eq!(
            endpoint.record_failure(later, &policy),
            Some(Duration::from_secs(20))
        );
        let later = later + Duration::from_secs(20);
        assert!(endpoint.is_available(later));
        endpoint.record_failure(later, &policy);
        assert_eq!(
            endpoint.record_failure(later, &policy),
            Some(Duration::from_secs(25))
        );
        // A success resets both the failure count and the doubling.
        let later = later + Duration::from_secs(25);
        assert!(endpoint.is_available(later));
        endpoint.record_success();
        endpoint.record_failure(later, &policy);
        assert_eq!(
            endpoint.record_failure(later, &policy),
            Some(Duration::from_secs(10))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_draining_replica_is_out_for_a_while_without_doubling() {
        let policy = EjectionPolicy {
            consecutive_failures: 1,
            base: Duration::from_secs(10),
            max: Duration::from_secs(300),
        };
        let endpoint = Endpoint::new("a", "127.0.0.1:1").unwrap();
        let now = Instant::now();
        assert!(endpoint.eject_draining(now, Duration::from_secs(5)));
        assert!(!endpoint.is_available(now + Duration::from_secs(4)));
        assert!(
            !endpoint.eject_draining(now + Duration::from_secs(1), Duration::from_secs(1)),
            "already out"
        );
        assert!(
            !endpoint.is_available(now + Duration::from_secs(4)),
            "a shorter ejection does not shorten the current one"
        );
        let later = now + Duration::from_secs(5);
        assert!(endpoint.is_available(later));
        // The next failure ejection starts from the base time: draining did not double it.
        assert_eq!(
            endpoint.record_failure(later, &policy),
            Some(Duration::from_secs(10))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn stale_load_is_ignored() {
        let endpoint = Endpoint::new("a", "127.0.0.1:1").unwrap();
        let now = Instant::now();
        endpoint.set_engine_load(Some(EngineLoad {
            waiting: 3.0,
            kv_cache_usage: 0.5,
            scraped_at: now,
        }));
        let max_age = Duration::from_secs(5);
        assert_eq!(endpoint.engine_load(now, max_age).unwrap().waiting, 3.0);
        assert!(endpoint
            .engine_load(now + Duration::from_secs(6), max_age)
            .is_none());
    }
}
