//! Helpers of the cluster tests: a client for the test cluster (or a skip), the CRD, one
//! namespace per test, polling.

// Test code: a panic with the failing value is the report.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kinfer_crds::InferenceModel;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, CustomResourceExt, ResourceExt};
use serde_json::json;

pub const TIMEOUT: Duration = Duration::from_secs(60);
pub const TEST_MANAGER: &str = "kinfer-operator-it";

pub fn kubeconfig_path() -> Option<PathBuf> {
    ["KINFER_IT_KUBECONFIG", "KUBECONFIG"]
        .iter()
        .find_map(|name| std::env::var_os(name).filter(|value| !value.is_empty()))
        .map(PathBuf::from)
}

/// A client for the test cluster, or `None` (with a message) when there is none.
pub async fn test_client(test: &str) -> Option<Client> {
    let Some(path) = kubeconfig_path() else {
        eprintln!(
            "skipping {test}: set KINFER_IT_KUBECONFIG (or KUBECONFIG) to a test cluster's \
             kubeconfig to run the operator integration tests"
        );
        return None;
    };
    let kubeconfig = Kubeconfig::read_from(&path)
        .unwrap_or_else(|error| panic!("cannot read kubeconfig {}: {error}", path.display()));
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("a usable kubeconfig");
    let client = Client::try_from(config).expect("a Kubernetes client");
    install_crd(&client).await;
    Some(client)
}

pub async fn install_crd(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = InferenceModel::crd();
    let name = crd.name_any();
    crds.patch(
        &name,
        &PatchParams::apply(TEST_MANAGER).force(),
        &Patch::Apply(&crd),
    )
    .await
    .expect("the CRD applies");
    wait_for("the CRD to be established", || async {
        let crd = crds.get(&name).await.ok()?;
        crd.status?
            .conditions?
            .iter()
            .any(|condition| condition.type_ == "Established" && condition.status == "True")
            .then_some(())
    })
    .await;
}

/// Polls `check` until it returns `Some`, panicking after [`TIMEOUT`].
pub async fn wait_for<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            started.elapsed() < TIMEOUT,
            "timed out after {TIMEOUT:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A namespace deleted when the test ends, pass or fail.
pub struct TestNamespace {
    pub name: String,
    pub client: Client,
}

impl TestNamespace {
    pub async fn create(client: &Client, test: &str) -> Self {
        let name = format!("kinfer-op-it-{test}-{}", &uuid_suffix());
        let namespaces: Api<Namespace> = Api::all(client.clone());
        namespaces
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": name}})).unwrap(),
            )
            .await
            .expect("the test namespace is created");
        Self {
            name,
            client: client.clone(),
        }
    }

    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.name)
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        let client = self.client.clone();
        let name = self.name.clone();
        // Drop cannot await; a helper thread with its own runtime deletes the namespace.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            runtime.block_on(async move {
                let namespaces: Api<Namespace> = Api::all(client);
                let _ = namespaces.delete(&name, &DeleteParams::background()).await;
            });
        })
        .join();
    }
}

pub fn uuid_suffix() -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    id[..6].to_string()
}

/// A controller context watching only `namespace`, with its own metrics, as the tests'
/// in-process operators use it.
pub fn controller_context(
    client: &Client,
    namespace: &str,
) -> (
    std::sync::Arc<kinfer_operator::controller::Context>,
    std::sync::Arc<kinfer_operator::metrics::Metrics>,
) {
    use kinfer_operator::controller::{Context, ControllerConfig};
    let metrics = std::sync::Arc::new(kinfer_operator::metrics::Metrics::new());
    let context = std::sync::Arc::new(Context::new(
        client.clone(),
        ControllerConfig {
            namespace: Some(namespace.to_string()),
            ..ControllerConfig::default()
        },
        metrics.clone(),
        kube::runtime::events::Reporter {
            controller: "kinfer-operator".into(),
            instance: Some(format!("it-{}", uuid_suffix())),
        },
    ));
    (context, metrics)
}
