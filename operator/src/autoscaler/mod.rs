//! How many engine replicas a model should run, and the built-in autoscaler that decides it for
//! models with `autoscaling.mode: Builtin`.
//!
//! - [`desired_replicas`]: the pure rule the reconcile applies (spec, last status, the
//!   autoscaler's latest decision).
//! - [`decision`]: the pure autoscaling maths (load history, policy, now -> replicas + reason).
//! - [`signals`]: the Prometheus text of the gateways and engines -> one load per model.
//! - [`scrape`]: HTTP scraping with short timeouts and bounded concurrency.
//! - [`run`] (this module): the loop, on the leader only. Every `--autoscaler-interval` (1 s)
//!   it scrapes every gateway replica and every ready engine pod of the Builtin models, decides
//!   each model, and when a decision changes, stores it in [`Decisions`] and asks the
//!   controller to reconcile that model. The reconcile is the only writer of the Deployment and
//!   of the status: it applies the decision as the Deployment's replicas and reports it as
//!   `status.desiredReplicas` and the `Autoscaling` condition. A new leader starts from
//!   `status.desiredReplicas`.

pub mod decision;
pub mod scrape;
pub mod signals;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kinfer_crds::labels::{self, annotations, parse_port};
use kinfer_crds::spec::DEFAULT_PORT;
use kinfer_crds::{AutoscalingMode, InferenceModel, InferenceModelSpec, InferenceModelStatus};
use kube::api::{Patch, PatchParams};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Resource, ResourceExt};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::controller::{self, Context};
use crate::metrics::{DirectionLabels, ModelLabels, ScrapeErrorLabels};
use decision::{Decision, ModelScaler, Policy, Reason};
use scrape::{ScrapeError, Scraper};
use signals::{ModelKey, SignalError, Sources};

/// How often a decision that only explains a hold (same replica count, another reason) may
/// be republished, so a load hovering around a boundary does not rewrite the status every
/// second.
const REPUBLISH_HOLD_AFTER: Duration = Duration::from_secs(15);
/// Longest wait for the pod deletion-cost hint before a scale-down goes ahead without it.
const DELETION_COST_TIMEOUT: Duration = Duration::from_secs(2);

/// Settings of the built-in autoscaler.
#[derive(Clone, Debug)]
pub struct AutoscalerConfig {
    /// Period of the scrape-and-decide loop.
    pub interval: Duration,
    /// A source whose last successful scrape is older is ignored.
    pub stale_after: Duration,
    /// Limit of one scrape, connect included.
    pub scrape_timeout: Duration,
    /// Scrapes run at once.
    pub scrape_concurrency: usize,
    /// Label selector of the gateway pods; `None` scrapes no gateway pod.
    pub gateway_selector: Option<String>,
    /// Namespace of the gateway pods; `None`: all namespaces.
    pub gateway_namespace: Option<String>,
    /// Admin port of gateway pods without the `kinfer.dev/metrics-port` annotation.
    pub gateway_metrics_port: u16,
    /// More gateway `/metrics` URLs, scraped as they are (gateways outside the cluster, tests).
    pub gateway_metrics_urls: Vec<String>,
}

impl Default for AutoscalerConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(1),
            stale_after: Duration::from_secs(5),
            scrape_timeout: Duration::from_millis(800),
            scrape_concurrency: 32,
            gateway_selector: None,
            gateway_namespace: None,
            gateway_metrics_port: 9090,
            gateway_metrics_urls: Vec::new(),
        }
    }
}

/// A decision as the reconcile applies and reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Published {
    pub replicas: i32,
    pub reason: Reason,
    pub message: String,
}

impl From<&Decision> for Published {
    fn from(decision: &Decision) -> Self {
        Self {
            replicas: i32::try_from(decision.to).unwrap_or(i32::MAX),
            reason: decision.reason,
            message: decision.message.clone(),
        }
    }
}

/// The autoscaler's latest decision per model, shared with the reconcile.
#[derive(Clone, Debug, Default)]
pub struct Decisions(Arc<RwLock<HashMap<ObjectRef<InferenceModel>, Published>>>);

impl Decisions {
    pub fn get(&self, model: &ObjectRef<InferenceModel>) -> Option<Published> {
        let map = self.0.read().unwrap_or_else(PoisonError::into_inner);
        map.get(model).cloned()
    }

    fn set(&self, model: ObjectRef<InferenceModel>, published: Published) {
        let mut map = self.0.write().unwrap_or_else(PoisonError::into_inner);
        map.insert(model, published);
    }

    fn retain(&self, keep: impl Fn(&ObjectRef<InferenceModel>) -> bool) {
        let mut map = self.0.write().unwrap_or_else(PoisonError::into_inner);
        map.retain(|model, _| keep(model));
    }

    fn clear(&self) {
        self.retain(|_| false);
    }
}

/// The replica count the Deployment should have.
///
/// - no `spec.autoscaling`: `spec.replicas`;
/// - mode `External`: `spec.replicas` (written by a HorizontalPodAutoscaler or KEDA through
///   the scale subresource), clamped to `[minReplicas, maxReplicas]`;
/// - mode `Builtin`: the autoscaler's latest `decision`, else the count last chosen
///   (`status.desiredReplicas`, so a restarted or new leader keeps the count), clamped to the
///   bounds; before any status was written, `spec.replicas` clamped, so a new model starts with
///   what the user asked for.
pub fn desired_replicas(
    spec: &InferenceModelSpec,
    status: Option<&InferenceModelStatus>,
    decision: Option<&Published>,
) -> i32 {
    let Some(autoscaling) = &spec.autoscaling else {
        return spec.replicas.max(0);
    };
    match autoscaling.mode {
        AutoscalingMode::External => spec.bounded_replicas(),
        AutoscalingMode::Builtin => {
            let last = decision.map(|decision| decision.replicas).or_else(|| {
                status
                    .filter(|status| status.observed_generation.is_some())
                    .map(|status| status.desired_replicas)
            });
            match last {
                Some(replicas) => {
                    clamp(replicas, autoscaling.min_replicas, autoscaling.max_replicas)
                }
                None => spec.bounded_replicas(),
            }
        }
    }
}

/// `value` within `[min, max]`, tolerating an inverted range (min wins) and negative bounds.
fn clamp(value: i32, min: i32, max: i32) -> i32 {
    let min = min.max(0);
    value.max(min).min(max.max(min))
}

fn is_builtin(model: &InferenceModel) -> bool {
    model.metadata.deletion_timestamp.is_none()
        && model
            .spec
            .autoscaling
            .as_ref()
            .is_some_and(|autoscaling| autoscaling.mode == AutoscalingMode::Builtin)
}

/// Errors reading one source.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    Scrape(#[from] ScrapeError),
    #[error(transparent)]
    Signal(#[from] SignalError),
}

impl SourceError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            SourceError::Scrape(error) => error.metric_label(),
            SourceError::Signal(error) => error.metric_label(),
        }
    }
}

/// A `/metrics` endpoint to scrape.
#[derive(Clone, Debug)]
enum Target {
    /// `pod:<namespace>/<name>` or `url:<url>`.
    Gateway(String),
    /// An engine pod, `<namespace>/<name>`, of a model.
    Engine { key: String, model: ModelKey },
}

impl Target {
    fn source(&self) -> &'static str {
        match self {
            Target::Gateway(_) => "gateway",
            Target::Engine { .. } => "engine",
        }
    }

    fn key(&self) -> &str {
        match self {
            Target::Gateway(key) | Target::Engine { key, .. } => key,
        }
    }
}

fn metrics_url(ip: &str, port: u16) -> String {
    if ip.contains(':') {
        format!("http://[{ip}]:{port}/metrics")
    } else {
        format!("http://{ip}:{port}/metrics")
    }
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|status| status.conditions.as_ref())
        .is_some_and(|conditions| {
            conditions
                .iter()
                .any(|condition| condition.type_ == "Ready" && condition.status == "True")
        })
}

fn pod_ip(pod: &Pod) -> Option<&str> {
    let status = pod.status.as_ref()?;
    if status.phase.as_deref() != Some("Running") {
        return None;
    }
    status.pod_ip.as_deref().filter(|ip| !ip.is_empty())
}

/// `/metrics` of a gateway pod: running, with an IP. A terminating gateway is still scraped:
/// its in-flight requests are load until they finish.
fn gateway_url(pod: &Pod, default_port: u16) -> Option<String> {
    let port = pod
        .annotations()
        .get(annotations::METRICS_PORT)
        .and_then(|port| parse_port(port))
        .unwrap_or(default_port);
    Some(metrics_url(pod_ip(pod)?, port))
}

/// `/metrics` of an engine pod that serves: ready, not terminating. Terminating pods drain;
/// their requests are not new load.
fn engine_url(pod: &Pod) -> Option<String> {
    if pod.metadata.deletion_timestamp.is_some() || !is_ready(pod) {
        return None;
    }
    let port = pod
        .annotations()
        .get(annotations::PORT)
        .and_then(|port| parse_port(port))
        .or_else(|| u16::try_from(DEFAULT_PORT).ok())
        .unwrap_or(8000);
    Some(metrics_url(pod_ip(pod)?, port))
}

fn pod_key(pod: &Pod) -> String {
    format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any())
}

/// Starts a reflector on `api` and returns its store; the watch ends with `shutdown`.
fn spawn_reflector<K>(api: Api<K>, config: watcher::Config, shutdown: CancellationToken) -> Store<K>
where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    let (reader, writer) = reflector::store();
    let kind = K::kind(&K::DynamicType::default()).to_string();
    let stream = reflector::reflector(
        writer,
        watcher(api, config)
            .default_backoff()
            .modify(|object| object.meta_mut().managed_fields = None),
    );
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                event = stream.next() => match event {
                    None => break,
                    Some(Err(error)) => warn!(%error, kind, "autoscaler watch failed; retrying"),
                    Some(Ok(_)) => {}
                },
            }
        }
    });
    reader
}

/// What the loop keeps from one round to the next.
#[derive(Default)]
struct State {
    sources: Sources,
    scalers: HashMap<ObjectRef<InferenceModel>, ModelScaler>,
    /// Last decision handed to the reconcile, and when.
    published: HashMap<ObjectRef<InferenceModel>, (Published, Instant)>,
    /// Sources whose last scrape failed, so a failure is logged when it starts, not every second.
    failing: HashSet<String>,
    /// Model series of the per-model gauges, to remove them with the model.
    gauges: HashSet<ModelKey>,
}

struct Stores {
    models: Store<InferenceModel>,
    engine_pods: Store<Pod>,
    gateway_pods: Option<Store<Pod>>,
}

/// Runs the autoscaler until `shutdown`: every `config.interval`, one [`round`]. Decisions
/// that change go to `context.decisions`, and the model to `reconcile` so the controller
/// applies them.
pub async fn run(
    context: Arc<Context>,
    config: AutoscalerConfig,
    reconcile: mpsc::UnboundedSender<ObjectRef<InferenceModel>>,
    shutdown: CancellationToken,
) {
    let scraper = match Scraper::new(config.scrape_timeout, config.scrape_concurrency) {
        Ok(scraper) => scraper,
        Err(error) => {
            warn!(%error, "cannot build the HTTP client; the built-in autoscaler does not run");
            return;
        }
    };
    context.decisions.clear();
    let client = &context.client;
    let namespace = context.config.namespace.as_deref();
    let stores = Stores {
        models: spawn_reflector(
            controller::api(client, namespace),
            watcher::Config::default(),
            shutdown.clone(),
        ),
        engine_pods: spawn_reflector(
            controller::api(client, namespace),
            watcher::Config::default().labels(labels::MODEL),
            shutdown.clone(),
        ),
        gateway_pods: config.gateway_selector.as_ref().map(|selector| {
            spawn_reflector(
                controller::api(client, config.gateway_namespace.as_deref()),
                watcher::Config::default().labels(selector),
                shutdown.clone(),
            )
        }),
    };
    info!(
        interval = ?config.interval,
        gateway_selector = config.gateway_selector.as_deref().unwrap_or("(none)"),
        gateway_namespace = config.gateway_namespace.as_deref().unwrap_or("(all)"),
        gateway_urls = config.gateway_metrics_urls.len(),
        "starting the built-in autoscaler"
    );
    // Deciding before the first lists would read "no gateway, no pod" as a known zero.
    let ready = async {
        let _ = stores.models.wait_until_ready().await;
        let _ = stores.engine_pods.wait_until_ready().await;
        if let Some(gateways) = &stores.gateway_pods {
            let _ = gateways.wait_until_ready().await;
        }
    };
    tokio::select! {
        _ = shutdown.cancelled() => return,
        _ = ready => {}
    }

    let mut state = State::default();
    let mut ticks = tokio::time::interval(config.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = ticks.tick() => {}
        }
        let started = Instant::now();
        round(&context, &config, &scraper, &stores, &mut state, &reconcile).await;
        context
            .metrics
            .autoscaler_round_duration
            .observe(started.elapsed().as_secs_f64());
    }
    context.decisions.clear();
    info!("the built-in autoscaler stopped");
}

/// One round: scrape every source, then decide every Builtin model.
async fn round(
    context: &Arc<Context>,
    config: &AutoscalerConfig,
    scraper: &Scraper,
    stores: &Stores,
    state: &mut State,
    reconcile: &mpsc::UnboundedSender<ObjectRef<InferenceModel>>,
) {
    let models: Vec<Arc<InferenceModel>> = stores
        .models
        .state()
        .into_iter()
        .filter(|model| is_builtin(model))
        .collect();
    let model_keys: HashSet<ModelKey> = models
        .iter()
        .map(|model| (model.namespace().unwrap_or_default(), model.name_any()))
        .collect();

    let mut targets: Vec<(Target, String)> = config
        .gateway_metrics_urls
        .iter()
        .map(|url| (Target::Gateway(format!("url:{url}")), url.clone()))
        .collect();
    for pod in stores.gateway_pods.iter().flat_map(Store::state) {
        if let Some(url) = gateway_url(&pod, config.gateway_metrics_port) {
            targets.push((Target::Gateway(format!("pod:{}", pod_key(&pod))), url));
        }
    }
    let mut engine_pods: HashMap<ModelKey, Vec<Arc<Pod>>> = HashMap::new();
    for pod in stores.engine_pods.state() {
        let Some(model) = pod.labels().get(labels::MODEL) else {
            continue;
        };
        let model = (pod.namespace().unwrap_or_default(), model.clone());
        if !model_keys.contains(&model) {
            continue;
        }
        engine_pods
            .entry(model.clone())
            .or_default()
            .push(pod.clone());
        if let Some(url) = engine_url(&pod) {
            let key = pod_key(&pod);
            targets.push((Target::Engine { key, model }, url));
        }
    }
    let listed: HashSet<String> = targets
        .iter()
        .map(|(target, _)| target.key().to_string())
        .collect();

    let results = scraper.scrape_all(targets).await;
    let now = Instant::now();
    for (target, result) in results {
        let parsed = result
            .map_err(SourceError::from)
            .and_then(|text| match &target {
                Target::Gateway(key) => {
                    let report = signals::parse_gateway(&text)?;
                    state.sources.record_gateway(key, report, now);
                    Ok(())
                }
                Target::Engine { key, model } => {
                    let report = signals::parse_engine(&text)?;
                    state.sources.record_engine(key, model.clone(), report, now);
                    Ok(())
                }
            });
        let key = target.key().to_string();
        match parsed {
            Ok(()) => {
                if state.failing.remove(&key) {
                    info!(source = %key, "metrics source answers again");
                }
            }
            Err(error) => {
                context
                    .metrics
                    .autoscaler_scrape_errors
                    .get_or_create(&ScrapeErrorLabels {
                        source: target.source(),
                        error: error.metric_label(),
                    })
                    .inc();
                if state.failing.insert(key.clone()) {
                    warn!(source = %key, %error, "cannot read a metrics source; ignored once stale");
                } else {
                    debug!(source = %key, %error, "metrics source still failing");
                }
            }
        }
    }
    state
        .sources
        .retain(&|key| listed.contains(key), &|key| listed.contains(key));
    state.failing.retain(|key| listed.contains(key));

    let mut current = HashSet::new();
    for model in &models {
        let Some(autoscaling) = &model.spec.autoscaling else {
            continue;
        };
        let reference = ObjectRef::from_obj(model.as_ref());
        current.insert(reference.clone());
        let model_key = (model.namespace().unwrap_or_default(), model.name_any());
        let policy = Policy::from_spec(autoscaling);
        let scaler = state.scalers.entry(reference.clone()).or_insert_with(|| {
            let replicas = desired_replicas(&model.spec, model.status.as_ref(), None);
            ModelScaler::new(u32::try_from(replicas).unwrap_or(0), now)
        });
        let pods = engine_pods
            .get(&model_key)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let ready = pods.iter().filter(|pod| engine_url(pod).is_some()).count();
        let load = state.sources.load(
            &model_key,
            &model.spec.served_model_ids(),
            ready,
            now,
            config.stale_after,
        );
        let decision = scaler.decide(&policy, &load, now);

        let labels = ModelLabels {
            namespace: model_key.0.clone(),
            model: model_key.1.clone(),
        };
        if let Some(total) = decision.load {
            let total = i64::try_from(total).unwrap_or(i64::MAX);
            context
                .metrics
                .autoscaler_load
                .get_or_create(&labels)
                .set(total);
        }
        context
            .metrics
            .autoscaler_desired_replicas
            .get_or_create(&labels)
            .set(i64::from(decision.to));
        state.gauges.insert(model_key.clone());

        if decision.reason.is_change() {
            info!(
                model = %reference,
                reason = %decision.reason,
                message = %decision.message,
                "autoscaling decision"
            );
            let direction = match decision.reason {
                Reason::ScaledUp => "up",
                Reason::ScaledToZero => "to_zero",
                _ => "down",
            };
            context
                .metrics
                .autoscaler_decisions
                .get_or_create(&DirectionLabels { direction })
                .inc();
            if decision.to < decision.from && decision.to > 0 {
                prefer_for_removal(context, pods, &state.sources, now, config.stale_after).await;
            }
        }

        let published = Published::from(&decision);
        let republish = match state.published.get(&reference) {
            None => true,
            Some((last, at)) => {
                last.replicas != published.replicas
                    || (last.reason != published.reason
                        && now.saturating_duration_since(*at) >= REPUBLISH_HOLD_AFTER)
            }
        };
        if republish {
            context.decisions.set(reference.clone(), published.clone());
            state.published.insert(reference.clone(), (published, now));
            // The controller stops with the autoscaler: a closed channel is a shutdown.
            let _ = reconcile.send(reference.clone());
        }
        if decision.reason.is_change() {
            let context = context.clone();
            let model = model.clone();
            tokio::spawn(async move {
                context
                    .publish_distinct_event(
                        &model,
                        decision.reason.as_str(),
                        decision.message,
                        "Autoscale",
                    )
                    .await;
            });
        }
    }

    state.scalers.retain(|model, _| current.contains(model));
    state.published.retain(|model, _| current.contains(model));
    context.decisions.retain(|model| current.contains(model));
    state.gauges.retain(|model| {
        if model_keys.contains(model) {
            return true;
        }
        let labels = ModelLabels {
            namespace: model.0.clone(),
            model: model.1.clone(),
        };
        context.metrics.autoscaler_load.remove(&labels);
        context.metrics.autoscaler_desired_replicas.remove(&labels);
        false
    });
}

/// Before a scale-down: lowers `controller.kubernetes.io/pod-deletion-cost` on the ready pod
/// with the fewest running and waiting requests, below every other pod's, so the ReplicaSet
/// removes it rather than a busy one. Skipped when a pod is not ready (the ReplicaSet removes
/// those first anyway) or the loads are unknown. Best effort: a failure only costs the hint.
async fn prefer_for_removal(
    context: &Context,
    pods: &[Arc<Pod>],
    sources: &Sources,
    now: Instant,
    stale_after: Duration,
) {
    let live: Vec<&Arc<Pod>> = pods
        .iter()
        .filter(|pod| pod.metadata.deletion_timestamp.is_none())
        .collect();
    if live.iter().any(|pod| engine_url(pod).is_none()) {
        return;
    }
    let Some((pod, _)) = live
        .iter()
        .filter_map(|pod| Some((pod, sources.engine_load(&pod_key(pod), now, stale_after)?)))
        .min_by_key(|(_, load)| *load)
    else {
        return;
    };
    let cost = |pod: &Pod| {
        pod.annotations()
            .get(annotations::POD_DELETION_COST)
            .and_then(|cost| cost.parse::<i32>().ok())
            .unwrap_or(0)
    };
    let lowest = live.iter().map(|pod| cost(pod)).min().unwrap_or(0).min(0);
    let chosen_cost =
        if cost(pod) <= lowest && live.iter().filter(|other| cost(other) == lowest).count() == 1 {
            return;
        } else {
            lowest.saturating_sub(1)
        };
    let api: Api<Pod> =
        Api::namespaced(context.client.clone(), &pod.namespace().unwrap_or_default());
    let patch = json!({"metadata": {"annotations": {annotations::POD_DELETION_COST: chosen_cost.to_string()}}});
    let result = tokio::time::timeout(
        DELETION_COST_TIMEOUT,
        api.patch(
            &pod.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        ),
    )
    .await;
    match result {
        Ok(Ok(_)) => debug!(pod = %pod_key(pod), cost = chosen_cost, "least loaded pod goes first"),
        Ok(Err(error)) => warn!(pod = %pod_key(pod), %error, "cannot set the pod deletion cost"),
        Err(_) => warn!(pod = %pod_key(pod), "setting the pod deletion cost timed out"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> InferenceModelSpec {
        serde_yaml::from_str(yaml).unwrap()
    }

    fn status(desired: i32) -> InferenceModelStatus {
        InferenceModelStatus {
            observed_generation: Some(1),
            desired_replicas: desired,
            ..InferenceModelStatus::default()
        }
    }

    #[test]
    fn without_autoscaling_spec_replicas_rule() {
        let spec = spec("model: {name: m}\nreplicas: 3");
        assert_eq!(desired_replicas(&spec, None, None), 3);
        assert_eq!(desired_replicas(&spec, Some(&status(7)), None), 3);
        let zero = super::tests::spec("model: {name: m}\nreplicas: 0");
        assert_eq!(desired_replicas(&zero, None, None), 0);
    }

    #[test]
    fn external_mode_follows_spec_replicas_within_bounds() {
        let spec = spec("model: {name: m}\nreplicas: 9\nautoscaling: {mode: External, minReplicas: 1, maxReplicas: 4}");
        assert_eq!(desired_replicas(&spec, Some(&status(2)), None), 4);
        let spec = super::tests::spec("model: {name: m}\nreplicas: 2\nautoscaling: {mode: External, minReplicas: 1, maxReplicas: 4}");
        assert_eq!(desired_replicas(&spec, Some(&status(3)), None), 2);
    }

    #[test]
    fn builtin_mode_keeps_its_last_choice_within_bounds() {
        let spec =
            spec("model: {name: m}\nreplicas: 1\nautoscaling: {minReplicas: 0, maxReplicas: 4}");
        assert_eq!(
            desired_replicas(&spec, None, None),
            1,
            "starts from spec.replicas"
        );
        assert_eq!(
            desired_replicas(&spec, Some(&InferenceModelStatus::default()), None),
            1
        );
        assert_eq!(
            desired_replicas(&spec, Some(&status(0)), None),
            0,
            "stays scaled to zero"
        );
        assert_eq!(desired_replicas(&spec, Some(&status(3)), None), 3);
        assert_eq!(
            desired_replicas(&spec, Some(&status(9)), None),
            4,
            "clamped to max"
        );
        let raised =
            super::tests::spec("model: {name: m}\nautoscaling: {minReplicas: 2, maxReplicas: 4}");
        assert_eq!(
            desired_replicas(&raised, Some(&status(0)), None),
            2,
            "clamped to min"
        );
    }

    #[test]
    fn builtin_mode_applies_the_autoscaler_decision_within_bounds() {
        let spec =
            spec("model: {name: m}\nreplicas: 1\nautoscaling: {minReplicas: 0, maxReplicas: 4}");
        let decision = |replicas| Published {
            replicas,
            reason: Reason::ScaledUp,
            message: String::new(),
        };
        assert_eq!(
            desired_replicas(&spec, Some(&status(1)), Some(&decision(3))),
            3
        );
        assert_eq!(desired_replicas(&spec, None, Some(&decision(0))), 0);
        assert_eq!(
            desired_replicas(&spec, Some(&status(1)), Some(&decision(7))),
            4
        );
        let external = super::tests::spec(
            "model: {name: m}\nreplicas: 2\nautoscaling: {mode: External, maxReplicas: 4}",
        );
        assert_eq!(
            desired_replicas(&external, None, Some(&decision(3))),
            2,
            "External mode ignores the built-in autoscaler"
        );
    }

    #[test]
    fn metrics_urls_and_pod_readiness() {
        assert_eq!(
            metrics_url("127.1.0.5", 8000),
            "http://127.1.0.5:8000/metrics"
        );
        assert_eq!(
            metrics_url("fd00::1", 9090),
            "http://[fd00::1]:9090/metrics"
        );
        let pod: Pod = serde_yaml::from_str(
            r#"
metadata: {name: gw-1, namespace: kinfer, annotations: {kinfer.dev/metrics-port: "9191"}}
status: {phase: Running, podIP: 127.1.0.9, conditions: [{type: Ready, status: "False"}]}
"#,
        )
        .unwrap();
        assert_eq!(
            gateway_url(&pod, 9090).as_deref(),
            Some("http://127.1.0.9:9191/metrics"),
            "a gateway is scraped ready or not: its held requests are load"
        );
        assert_eq!(engine_url(&pod), None, "an engine only once ready");
        let engine: Pod = serde_yaml::from_str(
            r#"
metadata: {name: m-1, namespace: ml}
status: {phase: Running, podIP: 127.1.0.7, conditions: [{type: Ready, status: "True"}]}
"#,
        )
        .unwrap();
        assert_eq!(
            engine_url(&engine).as_deref(),
            Some("http://127.1.0.7:8000/metrics")
        );
        let pending: Pod =
            serde_yaml::from_str("metadata: {name: p}\nstatus: {phase: Pending}").unwrap();
        assert_eq!(gateway_url(&pending, 9090), None);
    }

    #[test]
    fn clamp_tolerates_bad_bounds() {
        assert_eq!(clamp(3, 5, 2), 5);
        assert_eq!(clamp(-1, -3, 2), 0);
    }
}
