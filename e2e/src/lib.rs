//! kinfer's end-to-end harness and the local test bed's pod runner.
//!
//! Tests run against whatever `KUBECONFIG` points at: the local control plane
//! from `e2e/cluster.sh`, or a kind cluster (`e2e/kind/`). Each test gets its
//! own namespace ([`TestNamespace`]), deleted when the test ends unless
//! `KINFER_E2E_KEEP=1` (or `on-failure`, the default keeps it only when the
//! test panicked).

pub mod forward;
pub mod podrunner;

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{DeleteParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};

#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error("kubeconfig {path}: {source}")]
    Kubeconfig {
        path: String,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("kubernetes client config: {0}")]
    Config(#[from] kube::config::InferConfigError),
    #[error("kubernetes API error: {0}")]
    Kube(#[from] kube::Error),
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout { what: String, after: Duration },
}

/// Logs of the test bed's binaries: `RUST_LOG` (default `info,kube=warn`),
/// colours only on a terminal (their logs usually go to files).
pub fn init_tracing() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,kube=warn".into()),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// A client for `kubeconfig`, or the inferred config (KUBECONFIG, in-cluster).
pub async fn client_from(kubeconfig: Option<&Path>) -> Result<Client, HarnessError> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path).map_err(|source| HarnessError::Kubeconfig {
                path: path.display().to_string(),
                source,
            })?;
            Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .map_err(|source| HarnessError::Kubeconfig {
                    path: path.display().to_string(),
                    source,
                })?
        }
        None => Config::infer().await?,
    };
    Ok(Client::try_from(config)?)
}

/// Polls `check` every 200 ms until it yields `Some`, or fails after `timeout`
/// naming `what` was awaited.
pub async fn wait_for<T, F, Fut>(
    what: &str,
    timeout: Duration,
    mut check: F,
) -> Result<T, HarnessError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return Ok(value);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(HarnessError::Timeout {
                what: what.to_string(),
                after: timeout,
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A namespace of its own for one test, deleted on drop (kept on failure, or
/// always with `KINFER_E2E_KEEP=1`).
pub struct TestNamespace {
    pub client: Client,
    pub name: String,
}

impl TestNamespace {
    /// Creates `kinfer-e2e-<prefix>-<random>` with the current `KUBECONFIG`.
    pub async fn new(prefix: &str) -> Result<Self, HarnessError> {
        let client = client_from(None).await?;
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        let name = format!("kinfer-e2e-{prefix}-{}", &suffix[..6]);
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "labels": {"kinfer.dev/e2e": "true"}}
        }))
        .map_err(|e| HarnessError::Kube(kube::Error::SerdeError(e)))?;
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await?;
        Ok(Self { client, name })
    }

    /// A namespaced API for `K` in this test's namespace.
    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.name)
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        let keep = std::env::var("KINFER_E2E_KEEP").unwrap_or_default();
        if keep == "1" || (std::thread::panicking() && keep != "0") {
            eprintln!(
                "keeping namespace {} for inspection (KINFER_E2E_KEEP)",
                self.name
            );
            return;
        }
        let name = self.name.clone();
        // Drop cannot be async, and the test's client is bound to the test's
        // runtime (blocked here): delete with a fresh client on a helper thread.
        let handle = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                rt.block_on(async {
                    if let Ok(client) = client_from(None).await {
                        let api = Api::<Namespace>::all(client);
                        let _ = api.delete(&name, &DeleteParams::background()).await;
                    }
                });
            }
        });
        let _ = handle.join();
    }
}

/// Creates the InferenceModel CRD when it is not installed yet (the chart
/// normally installs it) and waits until the API server serves it.
pub async fn ensure_crd(client: &Client) -> Result<(), HarnessError> {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::CustomResourceExt;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = kinfer_crds::InferenceModel::crd();
    let name = crd.metadata.name.clone().unwrap_or_default();
    match crds.create(&PostParams::default(), &crd).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => return Err(e.into()),
    }
    wait_for(
        &format!("CRD {name} to be established"),
        Duration::from_secs(30),
        || async {
            let crd = crds.get(&name).await.ok()?;
            let established = crd
                .status?
                .conditions?
                .into_iter()
                .any(|c| c.type_ == "Established" && c.status == "True");
            established.then_some(())
        },
    )
    .await
}

/// The folder of the test bed's tools (kubectl, helm), `$KINFER_CACHE/bin`.
pub fn tools_bin() -> std::path::PathBuf {
    cache_dir().join("bin")
}

/// The tool cache (`KINFER_CACHE`, default `~/.cache/kinfer`).
pub fn cache_dir() -> std::path::PathBuf {
    std::env::var_os("KINFER_CACHE")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".cache/kinfer"))
        })
        .unwrap_or_default()
}

/// The repository root (the e2e crate's parent folder).
pub fn repo_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(|p| p.to_path_buf())
        .unwrap_or_default()
}

/// Namespace of the kinfer release under test (`KINFER_E2E_NAMESPACE`,
/// default `kinfer-system`, as `e2e/install-kinfer.sh` installs it).
pub fn release_namespace() -> String {
    std::env::var("KINFER_E2E_NAMESPACE").unwrap_or_else(|_| "kinfer-system".to_string())
}

/// Base URLs (`http://podIP:port`) of the ready gateway pods of the release.
/// Pods are reached at their IPs: loopback on the local test bed, the Docker
/// network on kind.
pub async fn gateway_urls(client: &Client) -> Result<Vec<String>, HarnessError> {
    use k8s_openapi::api::core::v1::Pod;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &release_namespace());
    let list = pods
        .list(&kube::api::ListParams::default().labels("app.kubernetes.io/component=gateway"))
        .await?;
    Ok(list
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| {
            let status = p.status?;
            let ready = status
                .conditions?
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            let port = p
                .spec?
                .containers
                .iter()
                .flat_map(|c| c.ports.clone().unwrap_or_default())
                .find(|port| port.name.as_deref() == Some("http"))
                .map(|port| port.container_port)?;
            ready.then(|| format!("http://{}:{port}", status.pod_ip.unwrap_or_default()))
        })
        .collect())
}

/// The first ready gateway's base URL, waiting up to a minute for one.
pub async fn gateway_url(client: &Client) -> Result<String, HarnessError> {
    wait_for(
        "a ready kinfer gateway pod",
        Duration::from_secs(60),
        || async { gateway_urls(client).await.ok()?.into_iter().next() },
    )
    .await
}

/// The API key `e2e/install-kinfer.sh` creates as a labelled Secret (`KINFER_E2E_API_KEY`,
/// default `sk-kinfer-local`): the chart turns gateway authentication on.
pub fn api_key() -> String {
    std::env::var("KINFER_E2E_API_KEY").unwrap_or_else(|_| "sk-kinfer-local".to_string())
}

/// An HTTP client for test traffic: no proxy (every target is a local pod IP), and the test
/// API key on every request (`Authorization: Bearer`).
pub fn http() -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Ok(value) = reqwest::header::HeaderValue::from_str(&format!("Bearer {}", api_key())) {
        headers.insert(reqwest::header::AUTHORIZATION, value);
    }
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(60))
        .default_headers(headers)
        .build()
        .unwrap_or_default()
}

/// [`http`] without the API key.
pub fn http_without_key() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap_or_default()
}

/// Create (or replace) an API key Secret in the release namespace: `data` holds `key` and
/// optional limit fields (`models`, `requests-per-minute`, ...).
pub async fn create_api_key(
    client: &Client,
    name: &str,
    data: &[(&str, &str)],
) -> Result<(), HarnessError> {
    use k8s_openapi::api::core::v1::Secret;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &release_namespace());
    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.to_string()),
            labels: Some([("kinfer.dev/api-key".to_string(), "true".to_string())].into()),
            ..Default::default()
        },
        string_data: Some(
            data.iter()
                .map(|(field, value)| (field.to_string(), value.to_string()))
                .collect(),
        ),
        ..Default::default()
    };
    secrets
        .patch(
            name,
            &kube::api::PatchParams::apply("kinfer-e2e").force(),
            &kube::api::Patch::Apply(&secret),
        )
        .await?;
    Ok(())
}

/// Delete an API key Secret created by [`create_api_key`].
pub async fn delete_api_key(client: &Client, name: &str) -> Result<(), HarnessError> {
    use k8s_openapi::api::core::v1::Secret;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &release_namespace());
    secrets
        .delete(name, &kube::api::DeleteParams::default())
        .await?;
    Ok(())
}

/// Loads an example manifest from `examples/` as a typed InferenceModel.
pub fn example(file: &str) -> Result<kinfer_crds::InferenceModel, String> {
    let path = repo_root().join("examples").join(file);
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_yaml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Waits until the InferenceModel `name` reports `Ready=True`.
pub async fn wait_model_ready(
    api: &Api<kinfer_crds::InferenceModel>,
    name: &str,
    timeout: Duration,
) -> Result<kinfer_crds::InferenceModel, HarnessError> {
    wait_for(
        &format!("InferenceModel {name} to be Ready"),
        timeout,
        || async {
            let im = api.get(name).await.ok()?;
            im.status
                .as_ref()
                .is_some_and(|s| s.is_ready())
                .then_some(im)
        },
    )
    .await
}

/// An example manifest whose served model ID is made unique to the test's
/// namespace (`<namespace>/<model>`), so tests running at the same time never
/// share replicas behind one ID. The weights source stays the original model.
pub fn unique_example(
    file: &str,
    ns: &TestNamespace,
) -> Result<(kinfer_crds::InferenceModel, String), String> {
    let im = example(file)?;
    let id = format!("{}/{}", ns.name, im.spec.model.name.replace('/', "-"));
    Ok(serve_as(im, id))
}

/// `im` serving the model ID `id` instead of its own; the weights source stays
/// the original model.
pub fn serve_as(
    mut im: kinfer_crds::InferenceModel,
    id: String,
) -> (kinfer_crds::InferenceModel, String) {
    if im.spec.model.source.is_none() {
        im.spec.model.source = Some(format!("hf://{}", im.spec.model.name));
    }
    im.spec.model.name = id.clone();
    (im, id)
}

/// Waits until the gateway at `gateway` lists `id` with `replicas` ready replicas.
pub async fn wait_served(gateway: &str, id: &str, replicas: u64) -> Result<(), HarnessError> {
    wait_served_within(gateway, id, replicas, Duration::from_secs(60)).await
}

/// [`wait_served`] with its own time budget (real engines start in minutes).
pub async fn wait_served_within(
    gateway: &str,
    id: &str,
    replicas: u64,
    timeout: Duration,
) -> Result<(), HarnessError> {
    let url = format!("{gateway}/v1/models");
    wait_for(
        &format!("the gateway to route {id} to {replicas} replica(s)"),
        timeout,
        || async {
            let body: serde_json::Value = http().get(&url).send().await.ok()?.json().await.ok()?;
            body["data"]
                .as_array()?
                .iter()
                .any(|m| m["id"] == id && m["ready_replicas"].as_u64() == Some(replicas))
                .then_some(())
        },
    )
    .await
}
