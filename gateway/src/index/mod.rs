//! The in-memory routing index: model id -> ready endpoints, features and policy.
//!
//! Discovery sources (a static file, or Kubernetes watches) compute the desired state as a list
//! of [`ModelConfig`] with pure functions and [`Index::publish`] it. The request path reads an
//! immutable [`RoutingTable`] snapshot through an `ArcSwap` (no lock, no API call) and waits on
//! [`Index::subscribe`] when it holds a request for a model that has no ready replica yet
//! (see [`crate::hold`]). The index is what exists; requests held for a model live in
//! [`crate::hold::Holds`].

pub mod kubernetes;
pub mod static_file;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use kinfer_crds::{Feature, RoutingStrategy};
use tokio::sync::watch;

pub use crate::endpoint::{EjectionPolicy, Endpoint, EngineLoad, InvalidAddress};

use crate::endpoint::{Placement, RoomSignal};
use crate::metrics::{Metrics, ModelMetrics};
use crate::policy::{self, PolicyConfig, RoutingPolicy};

/// A model's hold limits and the autoscaling figures releases follow (`None`: not set).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HoldSettings {
    /// How long a request may be held; default: the gateway's `--hold-timeout`.
    pub timeout: Option<Duration>,
    /// Requests that may be held at once; default: the gateway's `--hold-queue-limit`.
    pub queue_limit: Option<usize>,
    /// In-flight requests per replica the autoscaler aims for (`targetRequestsPerReplica`).
    pub target_per_replica: Option<u32>,
    /// Replicas the model wants (`spec.replicas`); more ready ones are not coming.
    pub desired_replicas: Option<u32>,
}

/// One model id as a discovery source sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelConfig {
    /// The id clients send in `model`.
    pub id: String,
    /// For a LoRA adapter, the base model id.
    pub parent: Option<String>,
    /// API families served; empty means unknown, and then every endpoint is allowed.
    pub features: Vec<Feature>,
    /// `None`: the gateway's default strategy.
    pub strategy: Option<RoutingStrategy>,
    /// Ready replicas serving this id.
    pub endpoints: Vec<EndpointConfig>,
    /// Hold limits and the autoscaling figures held requests are released by.
    pub hold: HoldSettings,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct EndpointConfig {
    /// Shown in `x-kinfer-replica` and logs: `namespace/pod`, or the address.
    pub name: String,
    /// `host:port` or `http://host:port`.
    pub address: String,
    /// Node, zone, region, GPU product (Kubernetes: from the pod's Node; static: the file).
    pub placement: Placement,
}

impl EndpointConfig {
    pub fn new(name: impl Into<String>, address: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            address: address.into(),
            placement: Placement::default(),
        }
    }
}

/// A routable model in a published [`RoutingTable`].
#[derive(Debug)]
pub struct ModelEntry {
    pub id: String,
    pub parent: Option<String>,
    pub features: Vec<Feature>,
    pub strategy: RoutingStrategy,
    pub policy: Arc<dyn RoutingPolicy>,
    /// Ready endpoints. Replicas that turn unready or terminating leave this list at once;
    /// requests already using them keep their own `Arc` and finish.
    pub endpoints: Vec<Arc<Endpoint>>,
    pub metrics: ModelMetrics,
    /// Hold limits and the autoscaling figures held requests are released by.
    pub hold: HoldSettings,
    /// Unix time this id first appeared, for the `created` field of /v1/models.
    pub created: u64,
}

impl ModelEntry {
    /// Whether the model serves `feature` (always true when its features are unknown).
    pub fn serves(&self, feature: Feature) -> bool {
        self.features.is_empty() || self.features.contains(&feature)
    }

    pub fn features_string(&self) -> String {
        if self.features.is_empty() {
            return "unknown".into();
        }
        kinfer_crds::labels::format_features(&self.features)
    }
}

/// An immutable snapshot of the index.
#[derive(Debug, Default)]
pub struct RoutingTable {
    models: HashMap<String, Arc<ModelEntry>>,
    /// Increases with every publication.
    pub version: u64,
}

impl RoutingTable {
    pub fn get(&self, model: &str) -> Option<&Arc<ModelEntry>> {
        self.models.get(model)
    }

    /// Models sorted by id.
    pub fn models(&self) -> Vec<&Arc<ModelEntry>> {
        let mut models: Vec<_> = self.models.values().collect();
        models.sort_by(|a, b| a.id.cmp(&b.id));
        models
    }

    /// Every distinct endpoint (an engine serving a base model and its adapters appears once).
    pub fn endpoints(&self) -> Vec<Arc<Endpoint>> {
        let mut by_address: BTreeMap<&str, &Arc<Endpoint>> = BTreeMap::new();
        for entry in self.models.values() {
            for endpoint in &entry.endpoints {
                by_address.entry(endpoint.address()).or_insert(endpoint);
            }
        }
        by_address.into_values().cloned().collect()
    }
}

pub struct Index {
    table: ArcSwap<RoutingTable>,
    changes: watch::Sender<u64>,
    /// The last published configs, to skip publications that change nothing.
    last: Mutex<Option<Vec<ModelConfig>>>,
    synced: AtomicBool,
    default_strategy: RoutingStrategy,
    policy_config: PolicyConfig,
    metrics: Arc<Metrics>,
    /// Shared with every endpoint built, which signals it when a request ends (held
    /// requests wait on it, see [`crate::hold::Holds`]).
    room: Arc<RoomSignal>,
}

impl Index {
    pub fn new(
        default_strategy: RoutingStrategy,
        policy_config: PolicyConfig,
        metrics: Arc<Metrics>,
        room: Arc<RoomSignal>,
    ) -> Self {
        Self {
            table: ArcSwap::from_pointee(RoutingTable::default()),
            changes: watch::channel(0).0,
            last: Mutex::new(None),
            synced: AtomicBool::new(false),
            default_strategy,
            policy_config,
            metrics,
            room,
        }
    }

    /// The current table. Cheap: one atomic reference count increment.
    pub fn snapshot(&self) -> Arc<RoutingTable> {
        self.table.load_full()
    }

    /// Notified with the new version after every publication.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Whether a discovery source has published its first complete view.
    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Relaxed)
    }

    pub fn mark_synced(&self) {
        self.synced.store(true, Ordering::Relaxed);
    }

    /// Replace the table with `configs`. Endpoints and policies that survive keep their state
    /// (in-flight counts, ejections, round-robin position). Invalid endpoint addresses are
    /// skipped with a warning. Returns whether anything changed.
    pub fn publish(&self, mut configs: Vec<ModelConfig>) -> bool {
        configs.sort_by(|a, b| a.id.cmp(&b.id));
        for config in &mut configs {
            config.endpoints.sort();
            config.endpoints.dedup_by(|a, b| a.address == b.address);
        }
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if last.as_ref() == Some(&configs) {
            return false;
        }
        let previous = self.table.load_full();
        let mut known_endpoints: HashMap<&str, &Arc<Endpoint>> = HashMap::new();
        for entry in previous.models.values() {
            for endpoint in &entry.endpoints {
                known_endpoints.insert(endpoint.address(), endpoint);
            }
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|since| since.as_secs())
            .unwrap_or_default();
        let mut models = HashMap::with_capacity(configs.len());
        // Endpoints built in this publication, shared by every id they serve.
        let mut fresh: HashMap<String, Arc<Endpoint>> = HashMap::new();
        for config in &configs {
            let strategy = config.strategy.unwrap_or(self.default_strategy);
            let previous_entry = previous.models.get(&config.id);
            let policy = match previous_entry {
                Some(entry) if entry.strategy == strategy => entry.policy.clone(),
                _ => policy::for_strategy(strategy, self.policy_config),
            };
            let mut endpoints = Vec::with_capacity(config.endpoints.len());
            for wanted in &config.endpoints {
                let endpoint = match Endpoint::new(wanted.name.clone(), &wanted.address) {
                    Ok(endpoint) => endpoint
                        .with_placement(wanted.placement.clone())
                        .with_room_signal(self.room.clone()),
                    Err(error) => {
                        tracing::warn!(model = %config.id, %error, "skipping endpoint");
                        continue;
                    }
                };
                let existing = known_endpoints
                    .get(endpoint.address())
                    .filter(|known| {
                        known.name() == endpoint.name() && known.placement() == endpoint.placement()
                    })
                    .map(|known| Arc::clone(known));
                let shared = existing.unwrap_or_else(|| {
                    fresh
                        .entry(endpoint.address().to_string())
                        .or_insert_with(|| Arc::new(endpoint))
                        .clone()
                });
                endpoints.push(shared);
            }
            self.metrics.set_ready_replicas(&config.id, endpoints.len());
            let entry = ModelEntry {
                id: config.id.clone(),
                parent: config.parent.clone(),
                features: config.features.clone(),
                strategy,
                policy,
                endpoints,
                metrics: self.metrics.model(&config.id),
                hold: config.hold,
                created: previous_entry.map_or(now, |entry| entry.created),
            };
            models.insert(config.id.clone(), Arc::new(entry));
        }
        for id in previous.models.keys() {
            if !models.contains_key(id) {
                self.metrics.forget_model(id);
            }
        }
        let version = previous.version + 1;
        self.table.store(Arc::new(RoutingTable { models, version }));
        *last = Some(configs);
        drop(last);
        self.metrics.index_updates.inc();
        self.changes.send_replace(version);
        tracing::debug!(version, "routing table published");
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn index() -> Index {
        Index::new(
            RoutingStrategy::LeastLoad,
            PolicyConfig::default(),
            Arc::new(Metrics::new()),
            Arc::default(),
        )
    }

    pub(crate) fn model(id: &str, addresses: &[&str]) -> ModelConfig {
        ModelConfig {
            id: id.into(),
            parent: None,
            features: vec![Feature::TextGeneration],
            strategy: None,
            endpoints: addresses
                .iter()
                .map(|address| EndpointConfig::new(*address, *address))
                .collect(),
            hold: HoldSettings::default(),
        }
    }

    #[test]
    fn endpoints_keep_state_across_publications() {
        let index = index();
        assert!(index.publish(vec![model("a", &["127.0.0.1:1", "127.0.0.1:2"])]));
        let first = index.snapshot().get("a").unwrap().endpoints[0].clone();
        first.begin_request();
        assert!(index.publish(vec![
            model("a", &["127.0.0.1:1"]),
            model("b", &["127.0.0.1:1"])
        ]));
        let table = index.snapshot();
        assert_eq!(table.get("a").unwrap().endpoints.len(), 1);
        assert!(Arc::ptr_eq(&table.get("a").unwrap().endpoints[0], &first));
        assert!(Arc::ptr_eq(&table.get("b").unwrap().endpoints[0], &first));
        assert_eq!(first.inflight(), 1);
        assert_eq!(table.endpoints().len(), 1);
    }

    #[test]
    fn unchanged_publication_is_skipped() {
        let index = index();
        let mut changes = index.subscribe();
        assert!(index.publish(vec![model("a", &["127.0.0.1:1"])]));
        assert!(changes.has_changed().unwrap());
        changes.mark_unchanged();
        assert!(!index.publish(vec![model("a", &["127.0.0.1:1"])]));
        assert!(!changes.has_changed().unwrap());
        assert_eq!(index.snapshot().version, 1);
    }

    #[test]
    fn bad_addresses_are_skipped() {
        let index = index();
        index.publish(vec![model("a", &["nonsense", "127.0.0.1:3"])]);
        assert_eq!(index.snapshot().get("a").unwrap().endpoints.len(), 1);
    }

    #[test]
    fn strategy_change_replaces_policy() {
        let index = index();
        index.publish(vec![model("a", &[])]);
        assert_eq!(
            index.snapshot().get("a").unwrap().policy.name(),
            "LeastLoad"
        );
        let mut config = model("a", &[]);
        config.strategy = Some(RoutingStrategy::RoundRobin);
        index.publish(vec![config]);
        assert_eq!(
            index.snapshot().get("a").unwrap().policy.name(),
            "RoundRobin"
        );
    }
}
