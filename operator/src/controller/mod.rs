//! The InferenceModel controller: fetch -> validate -> build (pure) -> apply -> status.
//!
//! Only [`apply`] and the status write touch the API server; [`build`] and [`status`] are pure
//! and unit-tested. An invalid spec gets an `InvalidSpec` status and a Warning event and waits
//! for the next change (`Action::await_change`); its existing children are left serving the
//! last valid spec. Transient errors are retried with a per-object exponential backoff.

pub mod apply;
pub mod build;
pub mod status;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kinfer_crds::labels;
use kinfer_crds::{condition_types, reasons, InferenceModel, InferenceModelStatus};
use kube::api::ListParams;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{watcher, Controller};
use kube::{Api, Client, Resource, ResourceExt};
use tracing::{debug, info, instrument, warn};

use crate::autoscaler::{desired_replicas, Decisions};
use crate::metrics::Metrics;
use build::BuildConfig;
use status::Observed;

/// Name of the CRD the operator needs.
pub const CRD_NAME: &str = "inferencemodels.kinfer.dev";

/// How often a healthy model is reconciled without any event, to repair drift a missed watch
/// event would hide.
const RESYNC_INTERVAL: Duration = Duration::from_secs(300);
/// First retry delay after a failed reconciliation; doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_secs(2);
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// Errors of one reconciliation. All are retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot apply {kind} {name}: {source}")]
    Apply {
        kind: &'static str,
        name: String,
        #[source]
        source: kube::Error,
    },

    #[error("cannot delete {kind} {name}: {source}")]
    Delete {
        kind: &'static str,
        name: String,
        #[source]
        source: kube::Error,
    },

    #[error("cannot list {kind}s: {source}")]
    List {
        kind: &'static str,
        #[source]
        source: kube::Error,
    },

    #[error("cannot write the InferenceModel status: {source}")]
    Status {
        #[source]
        source: kube::Error,
    },

    #[error(
        "the cache claim {name} is {existing} and a claim's access mode cannot change, but the \
         spec now asks for {desired} (spec.cache.accessMode, or its default, which follows the \
         most replicas the model may run). Set spec.cache.accessMode: {existing} to keep the \
         claim, or delete it (kubectl delete pvc {name}) to have it recreated empty"
    )]
    CacheAccessModeChanged {
        name: String,
        existing: String,
        desired: String,
    },

    #[error(transparent)]
    Build(#[from] build::BuildError),
}

impl Error {
    /// Low-cardinality label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Apply { .. } => "apply",
            Error::Delete { .. } => "delete",
            Error::List { .. } => "list",
            Error::Status { .. } => "status",
            Error::CacheAccessModeChanged { .. } => "cache_access_mode_changed",
            Error::Build(error) => error.metric_label(),
        }
    }
}

/// Errors that stop the operator from starting.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(
        "the InferenceModel CRD ({CRD_NAME}) is not installed in this cluster. Install it with \
         `kinfer-operator crd | kubectl apply --server-side -f -`, or with the Helm chart \
         (charts/kinfer, crds.install=true), then start the operator again"
    )]
    CrdMissing,

    #[error("cannot reach the API server to check for the {CRD_NAME} CRD: {0}")]
    Api(#[source] kube::Error),
}

/// Settings of the controller.
#[derive(Clone, Debug, Default)]
pub struct ControllerConfig {
    /// Watch this namespace only; `None` watches all namespaces.
    pub namespace: Option<String>,
    /// What the builders need.
    pub build: BuildConfig,
}

/// Shared state of the reconciliations.
pub struct Context {
    pub client: Client,
    pub config: ControllerConfig,
    pub metrics: Arc<Metrics>,
    pub recorder: Recorder,
    /// Who writes the events (the Recorder's reporter), for events written without it.
    reporter: Reporter,
    /// The built-in autoscaler's latest choice per model (empty when it does not run).
    pub decisions: Decisions,
    /// Consecutive failures per object, for the backoff.
    failures: Mutex<HashMap<ObjectRef<InferenceModel>, u32>>,
}

impl Context {
    pub fn new(
        client: Client,
        config: ControllerConfig,
        metrics: Arc<Metrics>,
        reporter: Reporter,
    ) -> Self {
        Self {
            recorder: Recorder::new(client.clone(), reporter.clone()),
            reporter,
            client,
            config,
            metrics,
            decisions: Decisions::default(),
            failures: Mutex::new(HashMap::new()),
        }
    }

    async fn publish(&self, model: &InferenceModel, type_: EventType, reason: &str, note: String) {
        self.publish_event(model, type_, reason, note, "Reconcile")
            .await
    }

    /// Publishes a Kubernetes Event about `model`; a failure is logged, never returned.
    pub async fn publish_event(
        &self,
        model: &InferenceModel,
        type_: EventType,
        reason: &str,
        note: String,
        action: &str,
    ) {
        let event = Event {
            type_,
            reason: reason.to_string(),
            note: Some(note),
            action: action.to_string(),
            secondary: None,
        };
        if let Err(error) = self.recorder.publish(&event, &model.object_ref(&())).await {
            // Events are a courtesy; failing to write one must not fail the reconciliation.
            warn!(%error, "cannot publish event");
        }
    }

    /// Publishes a Kubernetes Event about `model` that is never merged into an earlier one.
    /// The Recorder folds events of the same reason into a series that keeps the first note,
    /// which would hide every autoscaling decision but the first; each decision gets its own
    /// event, as the HorizontalPodAutoscaler does. A failure is logged, never returned.
    pub async fn publish_distinct_event(
        &self,
        model: &InferenceModel,
        reason: &str,
        note: String,
        action: &str,
    ) {
        let now = Timestamp::now();
        let namespace = model.namespace().unwrap_or_default();
        let event = k8s_openapi::api::events::v1::Event {
            metadata: kube::api::ObjectMeta {
                name: Some(format!("{}.{:x}", model.name_any(), now.as_nanosecond())),
                namespace: Some(namespace.clone()),
                ..Default::default()
            },
            action: Some(action.to_string()),
            reason: Some(reason.to_string()),
            note: Some(note),
            type_: Some("Normal".to_string()),
            event_time: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(
                now,
            )),
            regarding: Some(model.object_ref(&())),
            reporting_controller: Some(self.reporter.controller.clone()),
            reporting_instance: Some(
                self.reporter
                    .instance
                    .clone()
                    .unwrap_or_else(|| self.reporter.controller.clone()),
            ),
            ..Default::default()
        };
        let events: Api<k8s_openapi::api::events::v1::Event> =
            Api::namespaced(self.client.clone(), &namespace);
        if let Err(error) = events.create(&Default::default(), &event).await {
            warn!(%error, "cannot publish event");
        }
    }

    fn reset_failures(&self, object: &ObjectRef<InferenceModel>) {
        if let Ok(mut failures) = self.failures.lock() {
            failures.remove(object);
        }
    }

    fn next_backoff(&self, object: ObjectRef<InferenceModel>) -> Duration {
        let Ok(mut failures) = self.failures.lock() else {
            return MAX_BACKOFF;
        };
        let count = failures.entry(object).or_insert(0);
        *count = count.saturating_add(1);
        backoff(*count)
    }
}

/// Delay before retry number `failures` (1-based): 2 s doubling to 5 min.
pub fn backoff(failures: u32) -> Duration {
    MIN_BACKOFF
        .saturating_mul(1u32 << failures.saturating_sub(1).min(16))
        .min(MAX_BACKOFF)
}

fn now() -> Time {
    Time(Timestamp::now())
}

/// An API of namespaced `K` in `namespace`, or in all namespaces.
pub fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    }
}

/// Checks that the InferenceModel CRD is served, with the permissions the operator runs with.
pub async fn check_crd_installed(
    client: &Client,
    namespace: Option<&str>,
) -> Result<(), StartupError> {
    let models: Api<InferenceModel> = api(client, namespace);
    match models.list_metadata(&ListParams::default().limit(1)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.is_not_found() => Err(StartupError::CrdMissing),
        Err(error) => Err(StartupError::Api(error)),
    }
}

/// Runs the controller until `shutdown` completes; in-flight reconciliations finish first.
pub async fn run(
    context: Arc<Context>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    run_with_triggers(context, futures::stream::pending(), shutdown).await
}

/// [`run`], also reconciling every model `triggers` yields (the autoscaler's decisions).
pub async fn run_with_triggers(
    context: Arc<Context>,
    triggers: impl futures::Stream<Item = ObjectRef<InferenceModel>> + Send + 'static,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let client = context.client.clone();
    let namespace = context.config.namespace.clone();
    let namespace = namespace.as_deref();
    let owned = watcher::Config::default().labels(&format!(
        "{}={}",
        labels::MANAGED_BY,
        labels::MANAGED_BY_OPERATOR
    ));
    info!(
        namespace = namespace.unwrap_or("(all)"),
        "starting the InferenceModel controller"
    );
    Controller::new(
        api::<InferenceModel>(&client, namespace),
        watcher::Config::default(),
    )
    .owns(api::<Deployment>(&client, namespace), owned.clone())
    .owns(api::<Service>(&client, namespace), owned.clone())
    .owns(
        api::<PodDisruptionBudget>(&client, namespace),
        owned.clone(),
    )
    .owns(api::<PersistentVolumeClaim>(&client, namespace), owned)
    // Pod status (scheduling, image pulls, crash loops, readiness) feeds the model's
    // status; pods are mapped to their model through the kinfer.dev/model label.
    .watches(
        api::<Pod>(&client, namespace),
        watcher::Config::default().labels(labels::MODEL),
        |pod: Pod| {
            let model = pod.labels().get(labels::MODEL)?.clone();
            let namespace = pod.namespace()?;
            Some(ObjectRef::<InferenceModel>::new(&model).within(&namespace))
        },
    )
    .reconcile_on(triggers)
    .graceful_shutdown_on(shutdown)
    .run(reconcile, error_policy, context)
    .for_each(|result| async move {
        match result {
            Ok((object, _)) => debug!(%object, "reconciled"),
            Err(kube::runtime::controller::Error::ReconcilerFailed(error, object)) => {
                warn!(%object, %error, "reconciliation failed")
            }
            // A child's event arriving after its InferenceModel was deleted.
            Err(kube::runtime::controller::Error::ObjectNotFound(object)) => {
                debug!(%object, "InferenceModel gone")
            }
            Err(error) => warn!(%error, "controller error"),
        }
    })
    .await;
    info!("the InferenceModel controller stopped");
}

/// One reconciliation of `model`.
#[instrument(skip_all, fields(model = %model.name_any(), namespace = model.namespace().unwrap_or_default()))]
pub async fn reconcile(model: Arc<InferenceModel>, context: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    context.metrics.reconciliations.inc();
    let result = reconcile_model(&model, &context).await;
    context
        .metrics
        .reconcile_duration
        .observe(started.elapsed().as_secs_f64());
    match &result {
        Ok(_) => context.reset_failures(&ObjectRef::from_obj(model.as_ref())),
        Err(error) => {
            context
                .publish(
                    &model,
                    EventType::Warning,
                    "ReconcileFailed",
                    error.to_string(),
                )
                .await
        }
    }
    result
}

async fn reconcile_model(model: &InferenceModel, context: &Context) -> Result<Action, Error> {
    if model.metadata.deletion_timestamp.is_some() {
        // The garbage collector removes the children through their owner references.
        return Ok(Action::await_change());
    }
    let client = &context.client;
    let namespace = model.namespace().unwrap_or_default();

    // validate
    let invalid = build::validate_metadata(model)
        .err()
        .or_else(|| model.spec.validate().err().map(|error| error.to_string()));
    if let Some(error) = invalid {
        context.metrics.invalid_specs.inc();
        let status = status::invalid_spec_status(model, &error, now());
        if model.status.as_ref() != Some(&status) {
            warn!(%error, "invalid spec");
            apply::write_status(client, model, &status).await?;
            if ready_reason(model.status.as_ref()) != Some(reasons::INVALID_SPEC) {
                context
                    .publish(model, EventType::Warning, reasons::INVALID_SPEC, error)
                    .await;
            }
        }
        return Ok(Action::await_change());
    }

    // build
    let decision = context.decisions.get(&ObjectRef::from_obj(model));
    let desired = desired_replicas(&model.spec, model.status.as_ref(), decision.as_ref());
    let children = build::build(model, desired, &context.config.build)?;

    // apply
    let deployment = apply::apply_children(client, &namespace, &children).await?;
    let deleted = apply::prune_children(client, model, &children).await?;
    for object in deleted {
        info!(%object, "deleted a child the spec no longer produces");
        context
            .publish(
                model,
                EventType::Normal,
                "Deleted",
                format!("deleted {object}"),
            )
            .await;
    }

    // status
    let pods = apply::list_pods(client, model).await?;
    let mut status = status::compute_status(
        model,
        desired,
        Observed {
            deployment: Some(&deployment),
            pods: &pods,
        },
        now(),
    );
    status::set_autoscaling_condition(&mut status, model, decision.as_ref(), now());
    if model.status.as_ref() != Some(&status) {
        apply::write_status(client, model, &status).await?;
        let before = ready_reason(model.status.as_ref());
        let after = ready_reason(Some(&status));
        if before != after {
            if let Some(ready) = status.condition(condition_types::READY) {
                info!(reason = %ready.reason, message = %ready.message, "ready condition changed");
                let type_ = if is_warning(&ready.reason) {
                    EventType::Warning
                } else {
                    EventType::Normal
                };
                context
                    .publish(model, type_, &ready.reason, ready.message.clone())
                    .await;
            }
        }
    }
    Ok(Action::requeue(RESYNC_INTERVAL))
}

fn ready_reason(status: Option<&InferenceModelStatus>) -> Option<&str> {
    status?
        .condition(condition_types::READY)
        .map(|condition| condition.reason.as_str())
}

fn is_warning(reason: &str) -> bool {
    [
        reasons::UNSCHEDULABLE,
        reasons::IMAGE_PULL_FAILED,
        reasons::CRASH_LOOPING,
        reasons::CONTAINER_CONFIG_ERROR,
        reasons::PODS_NOT_CREATED,
        reasons::INVALID_SPEC,
    ]
    .contains(&reason)
}

/// Counts the failure and retries with a per-object exponential backoff.
pub fn error_policy(model: Arc<InferenceModel>, error: &Error, context: Arc<Context>) -> Action {
    context.metrics.reconcile_failed(error.metric_label());
    let delay = context.next_backoff(ObjectRef::from_obj(model.as_ref()));
    warn!(model = %model.name_any(), %error, retry_in = ?delay, "reconciliation failed");
    Action::requeue(delay)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_a_cap() {
        assert_eq!(backoff(1), Duration::from_secs(2));
        assert_eq!(backoff(2), Duration::from_secs(4));
        assert_eq!(backoff(5), Duration::from_secs(32));
        assert_eq!(backoff(9), MAX_BACKOFF);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }

    #[test]
    fn cache_access_mode_message_says_what_to_do() {
        let message = Error::CacheAccessModeChanged {
            name: "m-cache".into(),
            existing: "ReadWriteOnce".into(),
            desired: "ReadWriteMany".into(),
        }
        .to_string();
        assert!(
            message.contains("spec.cache.accessMode: ReadWriteOnce"),
            "{message}"
        );
        assert!(message.contains("kubectl delete pvc m-cache"), "{message}");
    }

    #[test]
    fn crd_missing_message_says_how_to_install() {
        let message = StartupError::CrdMissing.to_string();
        assert!(message.contains("inferencemodels.kinfer.dev"));
        assert!(message.contains("kinfer-operator crd | kubectl apply --server-side -f -"));
    }
}
