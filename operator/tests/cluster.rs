//! Integration tests against a real cluster: the controller runs in-process, watching one
//! fresh namespace per test, against the API server of `KINFER_IT_KUBECONFIG` (or, failing
//! that, `KUBECONFIG`). Without either they print a message and pass, so `cargo test` works
//! anywhere.
//!
//! They expect what the local test bed provides (`bash e2e/cluster.sh up`): a scheduler, a
//! garbage collector, nodes with `nvidia.com/gpu` (at most 8 per node) and something that
//! makes engine pods ready (the pod runner). The InferenceModel CRD is applied (server-side,
//! field manager `kinfer-operator-it`) from the kinfer-crds types before the tests use it.
//!
//!     KINFER_IT_KUBECONFIG=~/.cache/kinfer/cluster/kubeconfig \
//!         cargo test -p kinfer-operator --test cluster -- --nocapture

// Test code: a panic with the failing value is the report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::events::v1::Event;
use kinfer_crds::{labels, InferenceModel};
use kinfer_operator::controller;
use kinfer_operator::leader::{LeaderElector, LeaseSettings};
use kinfer_operator::metrics::Metrics;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

mod common;

use common::{test_client, wait_for, TestNamespace, TEST_MANAGER, TIMEOUT};

/// The controller, running in-process on one namespace.
struct Operator {
    shutdown: CancellationToken,
    task: JoinHandle<()>,
    metrics: Arc<Metrics>,
}

impl Operator {
    async fn start(client: &Client, namespace: &str) -> Self {
        controller::check_crd_installed(client, Some(namespace))
            .await
            .expect("the CRD is installed");
        let (context, metrics) = common::controller_context(client, namespace);
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let task = tokio::spawn(controller::run(
            context,
            async move { token.cancelled().await },
        ));
        Self {
            shutdown,
            task,
            metrics,
        }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(20), self.task)
            .await
            .expect("the controller stops")
            .expect("the controller task ends cleanly");
    }
}

/// Reads an example manifest.
fn example(file: &str) -> InferenceModel {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(file);
    serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

async fn apply_model(
    ns: &TestNamespace,
    model: &InferenceModel,
) -> Result<InferenceModel, kube::Error> {
    let api: Api<InferenceModel> = ns.api();
    let mut model = model.clone();
    model.metadata.namespace = Some(ns.name.clone());
    api.patch(
        &model.name_any(),
        &PatchParams::apply(TEST_MANAGER).force(),
        &Patch::Apply(&model),
    )
    .await
}

fn condition(model: &InferenceModel, type_: &str) -> Option<(String, String, String)> {
    model.status.as_ref()?.condition(type_).map(|condition| {
        (
            condition.status.clone(),
            condition.reason.clone(),
            condition.message.clone(),
        )
    })
}

fn condition_is(status: &kinfer_crds::InferenceModelStatus, type_: &str, value: &str) -> bool {
    status
        .condition(type_)
        .is_some_and(|condition| condition.status == value)
}

/// Waits until the model's Ready condition is True for its current generation.
async fn wait_ready(ns: &TestNamespace, name: &str) -> InferenceModel {
    let api: Api<InferenceModel> = ns.api();
    wait_for(&format!("{name} to be Ready"), || async {
        let model = api.get(name).await.ok()?;
        let status = model.status.as_ref()?;
        (status.is_ready() && status.observed_generation == model.metadata.generation)
            .then_some(model)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_lifecycle_apply_ready_scale_edit_delete() {
    let Some(client) = test_client("example_lifecycle_apply_ready_scale_edit_delete").await else {
        return;
    };
    let ns = TestNamespace::create(&client, "lifecycle").await;
    let operator = Operator::start(&client, &ns.name).await;
    let models: Api<InferenceModel> = ns.api();
    let deployments: Api<Deployment> = ns.api();
    let pods: Api<Pod> = ns.api();

    // apply -> Deployment with the GPU request -> pods on GPU nodes -> Ready
    let model = example("chat-7b.yaml");
    let name = model.name_any();
    let started = Instant::now();
    apply_model(&ns, &model)
        .await
        .expect("the example is accepted");
    let deployment = wait_for("the Deployment", || async {
        deployments.get(&name).await.ok()
    })
    .await;
    let to_deployment = started.elapsed();
    let ready = wait_ready(&ns, &name).await;
    let to_ready = started.elapsed();
    eprintln!("TIMING kubectl-apply -> Deployment created: {to_deployment:?}; -> InferenceModel Ready: {to_ready:?}");

    let container = &deployment
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers[0];
    let limits = container
        .resources
        .as_ref()
        .unwrap()
        .limits
        .as_ref()
        .unwrap();
    assert_eq!(limits["nvidia.com/gpu"].0, "1");
    assert!(
        container.command.is_none(),
        "the image's `vllm serve` entrypoint is kept"
    );
    let status = ready.status.as_ref().unwrap();
    assert_eq!((status.ready_replicas, status.desired_replicas), (1, 1));
    assert_eq!(status.served_models, ["Qwen/Qwen2.5-7B-Instruct"]);
    assert_eq!(
        status.selector.as_deref(),
        Some(labels::selector_string(&name).as_str())
    );
    let selector = labels::selector_string(&name);
    let engine_pods = pods
        .list(&ListParams::default().labels(&selector))
        .await
        .unwrap();
    for pod in &engine_pods.items {
        let node = pod
            .spec
            .as_ref()
            .and_then(|spec| spec.node_name.clone())
            .expect("scheduled");
        let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
        let node = nodes.get(&node).await.unwrap();
        let allocatable = node.status.unwrap().allocatable.unwrap();
        assert!(
            allocatable.contains_key("nvidia.com/gpu"),
            "pod on a GPU node"
        );
        let annotations = pod.annotations();
        assert_eq!(
            annotations[labels::annotations::SERVED_MODELS],
            "Qwen/Qwen2.5-7B-Instruct"
        );
        assert_eq!(annotations[labels::annotations::PORT], "8000");
    }

    // kubectl scale im/x --replicas=2 (the scale subresource)
    models
        .patch_scale(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 2}})),
        )
        .await
        .expect("the scale subresource accepts replicas");
    wait_for("2 ready replicas", || async {
        let model = models.get(&name).await.ok()?;
        let deployment = deployments.get(&name).await.ok()?;
        let status = model.status?;
        (deployment.spec?.replicas == Some(2) && status.ready_replicas == 2 && status.replicas == 2)
            .then_some(())
    })
    .await;
    let scale = models.get_scale(&name).await.unwrap();
    assert_eq!(scale.status.unwrap().replicas, 2);

    // edit the spec -> rolled out
    let mut edited = example("chat-7b.yaml");
    edited.spec.replicas = 2;
    edited.spec.engine.vllm.as_mut().unwrap().max_model_len = Some(8192);
    apply_model(&ns, &edited).await.unwrap();
    wait_for("the new revision to roll out", || async {
        let deployment = deployments.get(&name).await.ok()?;
        let args = deployment.spec?.template.spec?.containers[0].args.clone()?;
        let status = deployment.status?;
        (args
            .windows(2)
            .any(|pair| pair == ["--max-model-len", "8192"])
            && status.updated_replicas == Some(2)
            && status.replicas == Some(2)
            && status.ready_replicas == Some(2))
        .then_some(())
    })
    .await;
    wait_for("the status to show the new revision ready", || async {
        let model = models.get(&name).await.ok()?;
        let status = model.status?;
        (status.observed_generation == model.metadata.generation
            && status.ready_replicas == 2
            && status.is_ready()
            && condition_is(&status, "Progressing", "False"))
        .then_some(())
    })
    .await;

    // delete -> children garbage-collected
    models
        .delete(&name, &DeleteParams::default())
        .await
        .unwrap();
    let services: Api<Service> = ns.api();
    wait_for("the children to be garbage-collected", || async {
        let deployment_gone = deployments.get_opt(&name).await.ok()?.is_none();
        let service_gone = services.get_opt(&name).await.ok()?.is_none();
        (deployment_gone && service_gone).then_some(())
    })
    .await;
    let text = operator.metrics.encode();
    assert!(
        text.contains("kinfer_operator_reconciliations_total"),
        "{text}"
    );
    operator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_gpus_is_unschedulable_with_the_scheduler_message() {
    let Some(client) =
        test_client("too_many_gpus_is_unschedulable_with_the_scheduler_message").await
    else {
        return;
    };
    let ns = TestNamespace::create(&client, "unschedulable").await;
    let operator = Operator::start(&client, &ns.name).await;
    let model: InferenceModel = serde_yaml::from_str(
        "apiVersion: kinfer.dev/v1alpha1\nkind: InferenceModel\nmetadata: {name: huge}\nspec:\n  model: {name: big/model}\n  resources: {gpus: 16}",
    )
    .unwrap();
    apply_model(&ns, &model).await.unwrap();
    let models: Api<InferenceModel> = ns.api();
    let (status, reason, message) = wait_for("the Unschedulable condition", || async {
        let model = models.get("huge").await.ok()?;
        condition(&model, "Ready").filter(|(_, reason, _)| reason == "Unschedulable")
    })
    .await;
    assert_eq!(status, "False");
    assert_eq!(reason, "Unschedulable");
    assert!(message.contains("Insufficient nvidia.com/gpu"), "{message}");
    let model = models.get("huge").await.unwrap();
    assert_eq!(condition(&model, "Degraded").unwrap().1, "Unschedulable");

    // and a Warning event says so
    let events: Api<Event> = ns.api();
    wait_for("a Warning Unschedulable event", || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items
            .iter()
            .any(|event| {
                event.reason.as_deref() == Some("Unschedulable")
                    && event.type_.as_deref() == Some("Warning")
            })
            .then_some(())
    })
    .await;
    operator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_specs_are_rejected_or_reported() {
    let Some(client) = test_client("invalid_specs_are_rejected_or_reported").await else {
        return;
    };
    let ns = TestNamespace::create(&client, "invalid").await;
    let operator = Operator::start(&client, &ns.name).await;

    // The API server enforces the CEL rules.
    let invalid: InferenceModel = serde_yaml::from_str(
        "apiVersion: kinfer.dev/v1alpha1\nkind: InferenceModel\nmetadata: {name: bad}\nspec:\n  model: {name: m}\n  resources: {gpus: 4}\n  parallelism: {tensor: 3}",
    )
    .unwrap();
    let error = apply_model(&ns, &invalid)
        .await
        .expect_err("the API server rejects it");
    let kube::Error::Api(status) = error else {
        panic!("an API error expected, got {error}")
    };
    assert_eq!(status.code, 422);
    assert!(
        status
            .message
            .contains(kinfer_crds::rules::PARALLELISM_MATCHES_GPUS.message),
        "{}",
        status.message
    );

    // What only the operator can check becomes an InvalidSpec condition and a Warning event.
    let long_name = "m".repeat(70);
    let too_long: InferenceModel = serde_yaml::from_str(&format!(
        "apiVersion: kinfer.dev/v1alpha1\nkind: InferenceModel\nmetadata: {{name: {long_name}}}\nspec:\n  model: {{name: m}}"
    ))
    .unwrap();
    apply_model(&ns, &too_long).await.unwrap();
    let models: Api<InferenceModel> = ns.api();
    let (status, reason, message) = wait_for("the InvalidSpec condition", || async {
        condition(&models.get(&long_name).await.ok()?, "Ready")
    })
    .await;
    assert_eq!((status.as_str(), reason.as_str()), ("False", "InvalidSpec"));
    assert!(message.contains("at most 63 characters"), "{message}");
    let deployments: Api<Deployment> = ns.api();
    assert!(deployments
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .is_empty());
    operator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_operator_converges_without_duplicates() {
    let Some(client) = test_client("restarted_operator_converges_without_duplicates").await else {
        return;
    };
    let ns = TestNamespace::create(&client, "restart").await;
    let deployments: Api<Deployment> = ns.api();
    let services: Api<Service> = ns.api();

    let operator = Operator::start(&client, &ns.name).await;
    let mut model = example("embedding.yaml");
    let name = model.name_any();
    apply_model(&ns, &model).await.unwrap();
    wait_for("the Deployment", || async {
        deployments.get(&name).await.ok()
    })
    .await;
    operator.stop().await;

    // Changed while no operator runs.
    model.spec.replicas = 2;
    apply_model(&ns, &model).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        deployments.get(&name).await.unwrap().spec.unwrap().replicas,
        Some(1)
    );

    let operator = Operator::start(&client, &ns.name).await;
    wait_for("2 ready replicas after the restart", || async {
        let status = ns.api::<InferenceModel>().get(&name).await.ok()?.status?;
        (status.ready_replicas == 2 && status.is_ready()).then_some(())
    })
    .await;
    let managed = ListParams::default().labels(&format!("{}={name}", labels::MODEL));
    assert_eq!(deployments.list(&managed).await.unwrap().items.len(), 1);
    assert_eq!(services.list(&managed).await.unwrap().items.len(), 1);
    operator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leader_at_a_time_and_release_hands_over() {
    let Some(client) = test_client("one_leader_at_a_time_and_release_hands_over").await else {
        return;
    };
    let ns = TestNamespace::create(&client, "lease").await;
    let settings = |identity: &str| {
        let mut settings = LeaseSettings::new("kinfer-operator", ns.name.clone(), identity);
        settings.lease_duration = Duration::from_secs(3);
        settings
    };
    let mut first = LeaderElector::new(client.clone(), settings("first"));
    let mut second = LeaderElector::new(client.clone(), settings("second"));
    assert!(first.try_acquire_or_renew().await.unwrap());
    assert!(!second.try_acquire_or_renew().await.unwrap());
    assert!(
        first.try_acquire_or_renew().await.unwrap(),
        "the holder renews"
    );
    assert!(!second.try_acquire_or_renew().await.unwrap());

    // A clean stop hands over at once.
    first.release().await.unwrap();
    assert!(second.try_acquire_or_renew().await.unwrap());
    assert!(!first.try_acquire_or_renew().await.unwrap());

    // A holder that stops renewing loses the lease once it expires.
    let started = Instant::now();
    while !first.try_acquire_or_renew().await.unwrap() {
        assert!(
            started.elapsed() < TIMEOUT,
            "the expired lease is never taken over"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "not before expiry"
    );
    assert!(!second.try_acquire_or_renew().await.unwrap());
}
