//! Kubernetes discovery: engine Pods (label `kinfer.dev/model`) and InferenceModels, watched
//! with reflectors, turned into [`ModelConfig`]s by the pure [`desired_models`].
//!
//! - A pod is routable while it is Running, Ready, has an IP and no deletion timestamp: a pod
//!   that turns terminating or unready leaves the table on the next event, and requests already
//!   sent to it finish (they hold their own reference to the endpoint).
//! - InferenceModels make models known even with no pod (scaled to zero, starting), so
//!   requests for them are held instead of answered 404, and /v1/models lists them.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{BoxStream, SelectAll};
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::{Node, Pod};
use kinfer_crds::labels::{self, annotations};
use kinfer_crds::spec::DEFAULT_PORT;
use kinfer_crds::{InferenceModel, InferenceModelSpec};
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, ResourceExt};

use super::{EndpointConfig, Index, ModelConfig};
use crate::endpoint::{Placement, GPU_PRODUCT_LABEL, REGION_LABEL, ZONE_LABEL};
use crate::index::HoldSettings;
pub use crate::pods::is_routable;

fn pod_address(ip: &str, port: u16) -> String {
    if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    }
}

/// Zone, region and GPU product of each node, from its labels.
pub fn node_placements<'a>(
    nodes: impl IntoIterator<Item = (&'a str, &'a BTreeMap<String, String>)>,
) -> HashMap<String, Placement> {
    nodes
        .into_iter()
        .map(|(name, labels)| {
            let label = |key: &str| labels.get(key).cloned();
            let placement = Placement {
                node: Some(name.to_string()),
                zone: label(ZONE_LABEL),
                region: label(REGION_LABEL),
                gpu_product: label(GPU_PRODUCT_LABEL),
            };
            (name.to_string(), placement)
        })
        .collect()
}

/// A model's hold limits, and the figures held requests are released by: the autoscaling target
/// per replica and the replicas it wants (`spec.replicas` as the operator bounds it, which the
/// autoscaler or `kubectl scale` writes).
pub fn hold_settings(spec: &InferenceModelSpec) -> HoldSettings {
    HoldSettings {
        timeout: spec
            .routing
            .hold_timeout_seconds
            .and_then(|seconds| u64::try_from(seconds).ok())
            .map(Duration::from_secs),
        queue_limit: spec
            .routing
            .hold_queue_limit
            .and_then(|limit| usize::try_from(limit).ok()),
        target_per_replica: spec
            .autoscaling
            .as_ref()
            .and_then(|autoscaling| u32::try_from(autoscaling.target_requests_per_replica).ok()),
        desired_replicas: u32::try_from(spec.bounded_replicas()).ok(),
    }
}

/// The models and their ready endpoints, from the current InferenceModels and engine pods.
/// Ids are served by the union of the pods that list them, across namespaces.
pub fn desired_models(models: &[Arc<InferenceModel>], pods: &[Arc<Pod>]) -> Vec<ModelConfig> {
    desired_models_on_nodes(models, pods, &HashMap::new())
}

/// [`desired_models`], with each endpoint placed on its pod's node (`nodes`: by node name; a
/// node not there gives only the node name).
pub fn desired_models_on_nodes(
    models: &[Arc<InferenceModel>],
    pods: &[Arc<Pod>],
    nodes: &HashMap<String, Placement>,
) -> Vec<ModelConfig> {
    let mut by_id: BTreeMap<String, ModelConfig> = BTreeMap::new();
    // Sorted so that when two namespaces declare the same id, the winner does not depend on
    // watch event order.
    let mut sorted_models: Vec<&Arc<InferenceModel>> = models.iter().collect();
    sorted_models.sort_by_key(|model| (model.namespace(), model.name_any()));
    let mut owners: BTreeMap<(String, String), &InferenceModel> = BTreeMap::new();
    for model in sorted_models {
        if model.metadata.deletion_timestamp.is_some() {
            continue;
        }
        owners.insert(
            (model.namespace().unwrap_or_default(), model.name_any()),
            model,
        );
        let spec = &model.spec;
        for (index, id) in spec.served_model_ids().into_iter().enumerate() {
            by_id.entry(id.clone()).or_insert_with(|| ModelConfig {
                id,
                parent: (index > 0).then(|| spec.model.name.clone()),
                features: spec.features().to_vec(),
                strategy: Some(spec.routing.strategy),
                endpoints: Vec::new(),
                hold: hold_settings(spec),
            });
        }
    }
    let mut sorted_pods: Vec<&Arc<Pod>> = pods.iter().collect();
    sorted_pods.sort_by_key(|pod| (pod.namespace(), pod.name_any()));
    for pod in sorted_pods {
        let Some(model_name) = pod.labels().get(labels::MODEL) else {
            continue;
        };
        let owner = owners
            .get(&(pod.namespace().unwrap_or_default(), model_name.clone()))
            .copied();
        let pod_annotations = pod.annotations();
        let served = pod_annotations
            .get(annotations::SERVED_MODELS)
            .map(|value| labels::parse_served_models(value))
            .filter(|ids| !ids.is_empty())
            .or_else(|| owner.map(|model| model.spec.served_model_ids()))
            .unwrap_or_else(|| vec![model_name.clone()]);
        let features = pod_annotations
            .get(annotations::FEATURES)
            .map(|value| labels::parse_features(value))
            .filter(|features| !features.is_empty())
            .or_else(|| owner.map(|model| model.spec.features().to_vec()))
            .unwrap_or_default();
        let port = pod_annotations
            .get(annotations::PORT)
            .and_then(|value| labels::parse_port(value))
            .or_else(|| owner.and_then(|model| u16::try_from(model.spec.engine.port).ok()))
            .unwrap_or(DEFAULT_PORT as u16);
        let base = served.first().cloned();
        for (index, id) in served.iter().enumerate() {
            // A pod of a known model is listed even while not ready, so the model exists.
            let config = by_id.entry(id.clone()).or_insert_with(|| ModelConfig {
                id: id.clone(),
                parent: if index > 0 { base.clone() } else { None },
                features: features.clone(),
                strategy: None,
                endpoints: Vec::new(),
                hold: HoldSettings::default(),
            });
            if !is_routable(pod) {
                continue;
            }
            let Some(ip) = pod
                .status
                .as_ref()
                .and_then(|status| status.pod_ip.as_deref())
            else {
                continue;
            };
            let node = pod.spec.as_ref().and_then(|spec| spec.node_name.as_deref());
            let placement = match node {
                Some(node) => nodes.get(node).cloned().unwrap_or_else(|| Placement {
                    node: Some(node.to_string()),
                    ..Placement::default()
                }),
                None => Placement::default(),
            };
            config.endpoints.push(EndpointConfig {
                name: format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any()),
                address: pod_address(ip, port),
                placement,
            });
        }
    }
    by_id.into_values().collect()
}

/// Which objects the gateway watches.
#[derive(Clone, Debug)]
pub struct WatchScope {
    /// Empty: every namespace.
    pub namespaces: Vec<String>,
    /// Watch InferenceModels (needs the CRD and RBAC); without it only pods are known.
    pub inference_models: bool,
    /// Watch Nodes' metadata (cluster-scoped RBAC) for replicas' zone, region and GPU.
    pub nodes: bool,
}

enum Update {
    Changed,
    /// A watch (stream number) finished its initial list.
    Listed(usize),
}

fn to_update<K>(stream: usize, event: &watcher::Event<K>) -> Update {
    match event {
        watcher::Event::InitDone => Update::Listed(stream),
        _ => Update::Changed,
    }
}

/// Watch pods and InferenceModels and publish the index on every change, until the process
/// ends. Watch errors are logged and retried with backoff by the watcher.
pub async fn run(client: Client, scope: WatchScope, index: Arc<Index>) {
    let pod_config = watcher::Config::default().labels(labels::MODEL);
    let mut pod_stores: Vec<Store<Pod>> = Vec::new();
    let mut model_stores: Vec<Store<InferenceModel>> = Vec::new();
    let mut streams: SelectAll<BoxStream<'static, Result<Update, watcher::Error>>> =
        SelectAll::new();
    let namespaces: Vec<Option<&str>> = if scope.namespaces.is_empty() {
        vec![None]
    } else {
        scope
            .namespaces
            .iter()
            .map(|namespace| Some(namespace.as_str()))
            .collect()
    };
    for namespace in namespaces {
        let pods: Api<Pod> = match namespace {
            Some(namespace) => Api::namespaced(client.clone(), namespace),
            None => Api::all(client.clone()),
        };
        let (store, writer) = reflector::store();
        pod_stores.push(store);
        let number = streams.len();
        streams.push(
            reflector::reflector(
                writer,
                watcher(pods, pod_config.clone())
                    .default_backoff()
                    .modify(|pod| pod.managed_fields_mut().clear()),
            )
            .map(move |event| event.map(|event| to_update(number, &event)))
            .boxed(),
        );
        if scope.inference_models {
            let models: Api<InferenceModel> = match namespace {
                Some(namespace) => Api::namespaced(client.clone(), namespace),
                None => Api::all(client.clone()),
            };
            let (store, writer) = reflector::store();
            model_stores.push(store);
            let number = streams.len();
            streams.push(
                reflector::reflector(
                    writer,
                    watcher(models, watcher::Config::default())
                        .default_backoff()
                        .modify(|model| model.managed_fields_mut().clear()),
                )
                .map(move |event| event.map(|event| to_update(number, &event)))
                .boxed(),
            );
        }
    }
    let mut node_store: Option<Store<PartialObjectMeta<Node>>> = None;
    if scope.nodes {
        // Metadata only: labels are all the gateway needs of a Node.
        let nodes: Api<PartialObjectMeta<Node>> = Api::all(client.clone());
        let (store, writer) = reflector::store();
        node_store = Some(store);
        let number = streams.len();
        streams.push(
            reflector::reflector(
                writer,
                watcher(nodes, watcher::Config::default())
                    .default_backoff()
                    .modify(|node| node.managed_fields_mut().clear()),
            )
            .map(move |event| event.map(|event| to_update(number, &event)))
            .boxed(),
        );
    }
    let total = streams.len();
    let mut listed = HashSet::new();
    while let Some(first) = streams.next().await {
        // Coalesce a burst of events (the initial list, a rollout) into one publication.
        let mut batch = vec![first];
        while let Some(Some(next)) = streams.next().now_or_never() {
            batch.push(next);
        }
        for update in batch {
            match update {
                Ok(Update::Listed(number)) => {
                    listed.insert(number);
                }
                Ok(Update::Changed) => {}
                Err(error) => tracing::warn!(%error, "Kubernetes watch failed; retrying"),
            }
        }
        if listed.len() < total {
            continue;
        }
        let models: Vec<_> = model_stores.iter().flat_map(Store::state).collect();
        let pods: Vec<_> = pod_stores.iter().flat_map(Store::state).collect();
        let nodes = node_store.as_ref().map(Store::state).unwrap_or_default();
        let placements = node_placements(
            nodes
                .iter()
                .map(|node| (node.metadata.name.as_deref().unwrap_or(""), node.labels())),
        );
        let configs = desired_models_on_nodes(&models, &pods, &placements);
        if index.publish(configs) {
            let table = index.snapshot();
            tracing::info!(
                version = table.version,
                models = table.models().len(),
                endpoints = table.endpoints().len(),
                "routing table updated from Kubernetes"
            );
        }
        index.mark_synced();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kinfer_crds::{Feature, RoutingStrategy};

    fn model(namespace: &str, name: &str, yaml_spec: &str) -> Arc<InferenceModel> {
        let spec = serde_yaml::from_str(yaml_spec).unwrap();
        let mut model = InferenceModel::new(name, spec);
        model.metadata.namespace = Some(namespace.into());
        Arc::new(model)
    }

    fn pod(namespace: &str, name: &str, model: &str, ip: &str, ready: bool) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": {"kinfer.dev/model": model},
                "annotations": {
                    "kinfer.dev/served-models": "Qwen/Qwen2.5-7B-Instruct,sql",
                    "kinfer.dev/port": "8000",
                    "kinfer.dev/features": "TextGeneration"
                }
            },
            "status": {
                "phase": "Running",
                "podIP": ip,
                "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]
            }
        }))
        .unwrap()
    }

    const QWEN: &str = "model: {name: Qwen/Qwen2.5-7B-Instruct}\nadapters: [{name: sql, source: hf://o/sql}]\nrouting: {strategy: RoundRobin}\n";

    fn addresses(configs: &[ModelConfig], id: &str) -> Vec<String> {
        configs
            .iter()
            .find(|config| config.id == id)
            .unwrap_or_else(|| panic!("{id} missing"))
            .endpoints
            .iter()
            .map(|endpoint| endpoint.address.clone())
            .collect()
    }

    #[test]
    fn ready_pods_serve_base_and_adapters() {
        let models = [model("ml", "qwen", QWEN)];
        let pods = [
            Arc::new(pod("ml", "qwen-a", "qwen", "10.0.0.1", true)),
            Arc::new(pod("ml", "qwen-b", "qwen", "10.0.0.2", true)),
        ];
        let configs = desired_models(&models, &pods);
        assert_eq!(configs.len(), 2);
        let base = &configs[0];
        assert_eq!(base.id, "Qwen/Qwen2.5-7B-Instruct");
        assert_eq!(base.strategy, Some(RoutingStrategy::RoundRobin));
        assert_eq!(base.features, vec![Feature::TextGeneration]);
        assert_eq!(base.endpoints[0].name, "ml/qwen-a");
        assert_eq!(
            addresses(&configs, "sql"),
            ["10.0.0.1:8000", "10.0.0.2:8000"]
        );
        assert_eq!(
            configs[1].parent.as_deref(),
            Some("Qwen/Qwen2.5-7B-Instruct")
        );
    }

    #[test]
    fn hold_settings_come_from_the_spec() {
        let configs = desired_models(&[model("ml", "qwen", QWEN)], &[]);
        assert_eq!(
            configs[0].hold,
            HoldSettings {
                desired_replicas: Some(1),
                ..HoldSettings::default()
            }
        );
        let autoscaled = "model: {name: m}\nreplicas: 3\nautoscaling: {minReplicas: 0, maxReplicas: 8, targetRequestsPerReplica: 4}\nrouting: {holdTimeoutSeconds: 20, holdQueueLimit: 50}\n";
        let configs = desired_models(&[model("ml", "m", autoscaled)], &[]);
        assert_eq!(
            configs[0].hold,
            HoldSettings {
                timeout: Some(Duration::from_secs(20)),
                queue_limit: Some(50),
                target_per_replica: Some(4),
                desired_replicas: Some(3),
            }
        );
    }

    #[test]
    fn scaled_to_zero_model_is_known_without_endpoints() {
        let configs = desired_models(&[model("ml", "qwen", QWEN)], &[]);
        assert_eq!(
            addresses(&configs, "Qwen/Qwen2.5-7B-Instruct"),
            Vec::<String>::new()
        );
        assert_eq!(addresses(&configs, "sql"), Vec::<String>::new());
    }

    #[test]
    fn unready_terminating_or_ipless_pods_get_no_traffic() {
        let models = [model("ml", "qwen", QWEN)];
        let unready = pod("ml", "a", "qwen", "10.0.0.1", false);
        let mut terminating = pod("ml", "b", "qwen", "10.0.0.2", true);
        terminating.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            ));
        let mut pending = pod("ml", "c", "qwen", "10.0.0.3", true);
        pending.status.as_mut().unwrap().phase = Some("Pending".into());
        let mut no_ip = pod("ml", "d", "qwen", "", true);
        no_ip.status.as_mut().unwrap().pod_ip = None;
        let ready = pod("ml", "e", "qwen", "10.0.0.5", true);
        let pods: Vec<_> = [unready, terminating, pending, no_ip, ready]
            .into_iter()
            .map(Arc::new)
            .collect();
        assert_eq!(
            addresses(&desired_models(&models, &pods), "Qwen/Qwen2.5-7B-Instruct"),
            ["10.0.0.5:8000"]
        );
    }

    #[test]
    fn pods_without_a_known_model_still_route_from_annotations() {
        let mut bare = pod("other", "x", "qwen", "fd00::7", true);
        bare.metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(annotations::PORT.into(), "9000".into());
        let configs = desired_models(&[], &[Arc::new(bare)]);
        assert_eq!(addresses(&configs, "sql"), ["[fd00::7]:9000"]);
        assert_eq!(configs[0].strategy, None);
        // No annotations at all: the label names the model, port 8000, features unknown.
        let mut minimal = pod("other", "y", "plain", "10.1.1.1", true);
        minimal.metadata.annotations = None;
        let configs = desired_models(&[], &[Arc::new(minimal)]);
        assert_eq!(addresses(&configs, "plain"), ["10.1.1.1:8000"]);
        assert!(configs[0].features.is_empty());
    }

    #[test]
    fn endpoints_carry_their_node_placement() {
        let mut on_node = pod("ml", "a", "qwen", "10.0.0.1", true);
        on_node.spec = Some(k8s_openapi::api::core::v1::PodSpec {
            node_name: Some("gpu-node-1".into()),
            ..Default::default()
        });
        let labels: BTreeMap<String, String> = [
            (ZONE_LABEL, "zone-b"),
            (REGION_LABEL, "local"),
            (GPU_PRODUCT_LABEL, "NVIDIA-A100-SXM4-80GB"),
        ]
        .into_iter()
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .collect();
        let nodes = node_placements([("gpu-node-1", &labels)]);
        let configs = desired_models_on_nodes(&[], &[Arc::new(on_node)], &nodes);
        let placement = &configs[0].endpoints[0].placement;
        assert_eq!(placement.node.as_deref(), Some("gpu-node-1"));
        assert_eq!(placement.zone.as_deref(), Some("zone-b"));
        assert_eq!(placement.region.as_deref(), Some("local"));
        assert_eq!(
            placement.gpu_product.as_deref(),
            Some("NVIDIA-A100-SXM4-80GB")
        );
    }

    #[test]
    fn same_id_in_two_namespaces_merges_endpoints() {
        let models = [model("b", "qwen", QWEN), model("a", "qwen", QWEN)];
        let pods = [
            Arc::new(pod("a", "p1", "qwen", "10.0.0.1", true)),
            Arc::new(pod("b", "p2", "qwen", "10.0.0.2", true)),
        ];
        let configs = desired_models(&models, &pods);
        assert_eq!(
            addresses(&configs, "Qwen/Qwen2.5-7B-Instruct"),
            ["10.0.0.1:8000", "10.0.0.2:8000"]
        );
    }

    #[test]
    fn drain_through_the_index_keeps_inflight_endpoint_alive() {
        let index = crate::index::tests::index();
        let models = [model("ml", "qwen", QWEN)];
        let ready = Arc::new(pod("ml", "a", "qwen", "10.0.0.1", true));
        index.publish(desired_models(&models, &[ready]));
        let serving = index.snapshot().get("sql").unwrap().endpoints[0].clone();
        serving.begin_request();
        let draining = Arc::new(pod("ml", "a", "qwen", "10.0.0.1", false));
        index.publish(desired_models(&models, &[draining]));
        assert!(index.snapshot().get("sql").unwrap().endpoints.is_empty());
        assert_eq!(
            serving.inflight(),
            1,
            "the in-flight request still holds its endpoint"
        );
    }
}
