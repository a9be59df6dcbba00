//! The Helm chart: `helm lint`, the values schema and what the TLS values render (no cluster
//! needed), a server-side dry run of the rendering of every `charts/kinfer/ci/*.yaml` values
//! file, and a second release installed, upgraded and uninstalled next to the one the suite runs
//! against.
//!
//! The suite's cluster already has kinfer installed as release `kinfer` in `kinfer-system`
//! (`e2e/install-kinfer.sh`). The tests here never touch it: their release names are random
//! (cluster-scoped objects are named after the release), they render with
//! `crds.install=false` where they install (the CRD belongs to release `kinfer`), and their
//! operator watches only its own namespace, so it never reconciles the suite's models.
//!
//! Needs a cluster: `e2e/cluster.sh up`, `e2e/install-kinfer.sh`, then
//! `cargo test -p kinfer-e2e --test chart`.

#![allow(clippy::unwrap_used)] // test code: a panic is a test failure

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kinfer_e2e::{tools_bin, wait_for, TestNamespace};
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, Client};
use serde::Deserialize;

/// This checkout (not `kinfer_e2e::repo_root()`: the harness library may have been built from
/// another worktree sharing the cargo target folder).
fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn chart_dir() -> PathBuf {
    repo_root().join("charts/kinfer")
}

/// `bin args...` from the test bed's tools folder, with `stdin` when given.
fn run(bin: &str, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(tools_bin().join(bin))
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|error| panic!("{bin} from {}: {error}", tools_bin().display()));
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    child.wait_with_output().unwrap()
}

/// Runs and panics with the command's output unless it succeeded; returns stdout.
fn run_ok(bin: &str, args: &[&str], stdin: Option<&str>) -> String {
    let output = run(bin, args, stdin);
    assert!(
        output.status.success(),
        "{bin} {} failed ({}):\n{}\n{}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    String::from_utf8(output.stdout).unwrap()
}

/// The `*.yaml` files of a folder, sorted.
fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|error| panic!("{}: {error}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
        .collect();
    files.sort();
    files
}

fn ci_values_files() -> Vec<PathBuf> {
    let files = yaml_files(&chart_dir().join("ci"));
    assert!(
        files.len() >= 4,
        "charts/kinfer/ci has too few values files"
    );
    files
}

fn short_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..6].to_string()
}

#[test]
fn helm_lint_passes_with_every_ci_values_file() {
    let chart = chart_dir();
    let chart = chart.to_str().unwrap();
    run_ok("helm", &["lint", "--strict", chart], None);
    for values in ci_values_files() {
        run_ok(
            "helm",
            &["lint", "--strict", chart, "-f", values.to_str().unwrap()],
            None,
        );
    }
}

/// Each `ci/invalid/*.yaml` starts with `# expect: <line of helm's schema error>`.
#[test]
fn values_schema_rejects_each_invalid_file_with_a_clear_message() {
    let chart = chart_dir();
    let invalid = yaml_files(&chart.join("ci/invalid"));
    assert!(!invalid.is_empty());
    for values in invalid {
        let text = std::fs::read_to_string(&values).unwrap();
        let expect = text
            .lines()
            .next()
            .and_then(|line| line.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{}: first line must be `# expect: ...`", values.display()));
        let output = run(
            "helm",
            &[
                "template",
                "kinfer",
                chart.to_str().unwrap(),
                "-f",
                values.to_str().unwrap(),
            ],
            None,
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !output.status.success(),
            "{} rendered without error",
            values.display()
        );
        assert!(
            stderr.contains("values don't meet the specifications of the schema")
                && stderr.contains(expect),
            "{}: helm's error does not contain {expect:?}:\n{stderr}",
            values.display()
        );
    }
}

/// The objects of `helm template kinfer` with a values file.
fn render(values: &Path) -> Vec<serde_yaml::Value> {
    let chart = chart_dir();
    let rendered = run_ok(
        "helm",
        &[
            "template",
            "kinfer",
            chart.to_str().unwrap(),
            "-f",
            values.to_str().unwrap(),
        ],
        None,
    );
    serde_yaml::Deserializer::from_str(&rendered)
        .map(|document| serde_yaml::Value::deserialize(document).unwrap())
        .filter(|object| !object.is_null())
        .collect()
}

fn rendered_object<T: serde::de::DeserializeOwned>(
    objects: &[serde_yaml::Value],
    kind: &str,
    name: &str,
) -> T {
    let object = objects
        .iter()
        .find(|object| object["kind"] == kind && object["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} rendered"));
    serde_yaml::from_value(object.clone()).unwrap()
}

/// `ci/tls-values.yaml`: the gateway mounts the Secret read-only as a whole volume (the kubelet
/// never updates a subPath mount, and the gateway reloads renewed files), takes its files as
/// flags, and names its API port https; the probes stay on the plain admin port. The default
/// rendering has none of it.
#[test]
fn tls_values_mount_the_secret_and_pass_its_files() {
    use k8s_openapi::api::core::v1::Service;
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

    let objects = render(&chart_dir().join("ci/tls-values.yaml"));
    let deployment: Deployment = rendered_object(&objects, "Deployment", "kinfer-gateway");
    let pod = deployment.spec.unwrap().template.spec.unwrap();
    let volume = pod
        .volumes
        .unwrap_or_default()
        .into_iter()
        .find(|volume| volume.name == "tls")
        .expect("a volume named tls");
    assert_eq!(
        volume.secret.unwrap().secret_name.as_deref(),
        Some("kinfer-gateway-tls")
    );
    let container = &pod.containers[0];
    let mount = container
        .volume_mounts
        .iter()
        .flatten()
        .find(|mount| mount.name == "tls")
        .expect("the tls volume mounted");
    assert_eq!(mount.read_only, Some(true));
    assert_eq!(mount.sub_path, None);
    let args = container.args.clone().unwrap_or_default();
    for flag in [
        format!("--tls-cert-file={}/tls.crt", mount.mount_path),
        format!("--tls-key-file={}/tls.key", mount.mount_path),
    ] {
        assert!(args.contains(&flag), "{flag} not in {args:?}");
    }
    let ports = container.ports.clone().unwrap_or_default();
    assert!(
        ports
            .iter()
            .any(|port| port.name.as_deref() == Some("https")),
        "{ports:?}"
    );
    let admin = IntOrString::String("admin".to_string());
    for probe in [&container.liveness_probe, &container.readiness_probe] {
        let probe = probe.as_ref().unwrap().http_get.as_ref().unwrap();
        assert_eq!((&probe.port, probe.scheme.as_deref()), (&admin, None));
    }
    let service: Service = rendered_object(&objects, "Service", "kinfer-gateway");
    let api_port = &service.spec.unwrap().ports.unwrap()[0];
    assert_eq!(api_port.name.as_deref(), Some("https"));
    assert_eq!(api_port.app_protocol.as_deref(), Some("https"));
    assert_eq!(
        api_port.target_port,
        Some(IntOrString::String("https".to_string()))
    );

    let objects = render(&chart_dir().join("ci/default-values.yaml"));
    let deployment: Deployment = rendered_object(&objects, "Deployment", "kinfer-gateway");
    let pod = deployment.spec.unwrap().template.spec.unwrap();
    assert!(pod.volumes.is_none());
    let args = pod.containers[0].args.clone().unwrap_or_default();
    assert!(
        !args.iter().any(|arg| arg.starts_with("--tls-")),
        "{args:?}"
    );
}

/// Namespaces an object list names, besides the release namespace.
fn namespaces_of(rendered: &str) -> Vec<String> {
    let mut namespaces: Vec<String> = serde_yaml::Deserializer::from_str(rendered)
        .filter_map(|document| {
            let value = serde_yaml::Value::deserialize(document).ok()?;
            value["metadata"]["namespace"].as_str().map(str::to_string)
        })
        .collect();
    namespaces.sort();
    namespaces.dedup();
    namespaces
}

async fn create_namespace(client: &Client, name: &str) -> bool {
    let namespace: Namespace = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "labels": {"kinfer.dev/e2e": "true"}}
    }))
    .unwrap();
    match Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &namespace)
        .await
    {
        Ok(_) => true,
        Err(kube::Error::Api(error)) if error.code == 409 => false,
        Err(error) => panic!("namespace {name}: {error}"),
    }
}

/// Applies the minimal monitoring.coreos.com CRDs (e2e/fixtures/) unless the cluster has the
/// Prometheus Operator's; returns the names of the CRDs it created.
async fn ensure_monitoring_crds(client: &Client) -> Vec<String> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let fixture = repo_root().join("e2e/fixtures/monitoring.coreos.com-crds.yaml");
    let text = std::fs::read_to_string(&fixture).unwrap();
    let mut created = Vec::new();
    for document in serde_yaml::Deserializer::from_str(&text) {
        let crd = CustomResourceDefinition::deserialize(document).unwrap();
        let name = crd.metadata.name.clone().unwrap();
        if crds.get_opt(&name).await.unwrap().is_some() {
            continue;
        }
        crds.create(&PostParams::default(), &crd).await.unwrap();
        created.push(name);
    }
    for name in &created {
        wait_for(
            &format!("CRD {name} to be established"),
            Duration::from_secs(30),
            || async {
                let crd = crds.get(name).await.ok()?;
                crd.status?
                    .conditions?
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
                    .then_some(())
            },
        )
        .await
        .unwrap();
    }
    created
}

/// What the API server says of every object of every CI rendering, without storing anything:
/// schema, strict field validation, RBAC escalation checks, admission.
#[tokio::test]
async fn every_ci_rendering_passes_a_server_side_dry_run() {
    let release = TestNamespace::new("chart-dry-run").await.unwrap();
    let client = release.client.clone();
    let release_name = format!("kinfer-ci-{}", short_id());
    let chart = chart_dir();
    let mut created_namespaces = Vec::new();
    let mut created_crds = Vec::new();
    for values in ci_values_files() {
        let rendered = run_ok(
            "helm",
            &[
                "template",
                &release_name,
                chart.to_str().unwrap(),
                "--namespace",
                &release.name,
                "-f",
                values.to_str().unwrap(),
            ],
            None,
        );
        for namespace in namespaces_of(&rendered) {
            if create_namespace(&client, &namespace).await {
                created_namespaces.push(namespace);
            }
        }
        if rendered.contains("apiVersion: monitoring.coreos.com/v1") && created_crds.is_empty() {
            created_crds = ensure_monitoring_crds(&client).await;
        }
        let result = run_ok(
            "kubectl",
            &["apply", "--dry-run=server", "--validate=strict", "-f", "-"],
            Some(&rendered),
        );
        eprintln!("{}:\n{result}", values.display());
    }
    for namespace in created_namespaces {
        let _ = Api::<Namespace>::all(client.clone())
            .delete(&namespace, &DeleteParams::background())
            .await;
    }
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for name in created_crds {
        let _ = crds.delete(&name, &DeleteParams::background()).await;
    }
}

/// Uninstalls the release if the test stops half way, so a failed run leaves no ClusterRole.
struct ReleaseGuard {
    name: String,
    namespace: String,
}

impl Drop for ReleaseGuard {
    fn drop(&mut self) {
        let _ = run(
            "helm",
            &["uninstall", &self.name, "--namespace", &self.namespace],
            None,
        );
    }
}

async fn deployment_args(api: &Api<Deployment>, name: &str) -> Vec<String> {
    let deployment = api.get(name).await.unwrap();
    deployment.spec.unwrap().template.spec.unwrap().containers[0]
        .args
        .clone()
        .unwrap_or_default()
}

/// Names of the release's ClusterRoles and ClusterRoleBindings.
async fn cluster_scoped_objects(client: &Client, release: &str) -> Vec<String> {
    use kube::ResourceExt;
    let selector = ListParams::default().labels(&format!("app.kubernetes.io/instance={release}"));
    let roles = Api::<ClusterRole>::all(client.clone())
        .list(&selector)
        .await
        .unwrap();
    let bindings = Api::<ClusterRoleBinding>::all(client.clone())
        .list(&selector)
        .await
        .unwrap();
    roles
        .items
        .iter()
        .map(|role| format!("ClusterRole/{}", role.name_any()))
        .chain(
            bindings
                .items
                .iter()
                .map(|binding| format!("ClusterRoleBinding/{}", binding.name_any())),
        )
        .collect()
}

#[tokio::test]
async fn a_second_release_installs_upgrades_and_uninstalls_cleanly() {
    let namespace = TestNamespace::new("chart-release").await.unwrap();
    let client = namespace.client.clone();
    // The operator and gateway pods must pass Pod Security `restricted`, as the docs say.
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .patch(
            &namespace.name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(serde_json::json!({"metadata": {"labels": {
                "pod-security.kubernetes.io/enforce": "restricted",
                "pod-security.kubernetes.io/enforce-version": "latest",
            }}})),
        )
        .await
        .unwrap();
    let release = format!("kinfer-ci-{}", short_id());
    let guard = ReleaseGuard {
        name: release.clone(),
        namespace: namespace.name.clone(),
    };
    let chart = chart_dir();
    let local_values = repo_root().join("e2e/values-local.yaml");
    let watch = format!("operator.watchNamespace={}", namespace.name);
    let helm = |strategy: &str| {
        let strategy = format!("gateway.defaultStrategy={strategy}");
        run_ok(
            "helm",
            &[
                "upgrade",
                "--install",
                &release,
                chart.to_str().unwrap(),
                "--namespace",
                &namespace.name,
                "-f",
                local_values.to_str().unwrap(),
                // The CRD belongs to the suite's release `kinfer`.
                "--set",
                "crds.install=false",
                // Its own namespace only: never reconcile or autoscale the suite's models.
                "--set",
                &watch,
                "--set",
                "gateway.replicas=1",
                "--set",
                &strategy,
                "--wait",
                "--timeout",
                "120s",
            ],
            None,
        )
    };

    let started = std::time::Instant::now();
    helm("LeastLoad");
    eprintln!("install --wait: {:?}", started.elapsed());
    let deployments: Api<Deployment> = namespace.api();
    let gateway = format!("{release}-gateway");
    let operator = format!("{release}-operator");
    assert!(deployment_args(&deployments, &gateway)
        .await
        .contains(&"--default-strategy=LeastLoad".to_string()));
    // The gateway watches every namespace: ClusterRoles named after this release, next to
    // (not instead of) the suite's `kinfer-*` ones.
    let cluster_scoped = cluster_scoped_objects(&client, &release).await;
    assert!(
        cluster_scoped
            .iter()
            .any(|name| name == &format!("ClusterRole/{release}-gateway")),
        "{cluster_scoped:?}"
    );
    for name in &cluster_scoped {
        let object_name = name.split_once('/').unwrap().1;
        assert!(object_name.starts_with(&format!("{release}-")), "{name}");
    }

    let started = std::time::Instant::now();
    helm("RoundRobin");
    eprintln!("upgrade --wait: {:?}", started.elapsed());
    assert!(deployment_args(&deployments, &gateway)
        .await
        .contains(&"--default-strategy=RoundRobin".to_string()));
    for name in [&gateway, &operator] {
        let status = deployments.get(name).await.unwrap().status.unwrap();
        assert_eq!(
            status.ready_replicas,
            Some(1),
            "{name} not ready after upgrade"
        );
    }
    let history = run_ok(
        "helm",
        &["history", &release, "--namespace", &namespace.name],
        None,
    );
    assert!(history.lines().count() >= 3, "{history}");

    let started = std::time::Instant::now();
    run_ok(
        "helm",
        &[
            "uninstall",
            &release,
            "--namespace",
            &namespace.name,
            "--wait",
        ],
        None,
    );
    eprintln!("uninstall --wait: {:?}", started.elapsed());
    std::mem::forget(guard);
    let left = cluster_scoped_objects(&client, &release).await;
    assert!(left.is_empty(), "left after uninstall: {left:?}");
    assert!(deployments.get_opt(&gateway).await.unwrap().is_none());

    // The suite's release is untouched: its CRD and its ready operator and gateway.
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    assert!(crds
        .get_opt("inferencemodels.kinfer.dev")
        .await
        .unwrap()
        .is_some());
    let suite: Api<Deployment> = Api::namespaced(client.clone(), &kinfer_e2e::release_namespace());
    for name in ["kinfer-operator", "kinfer-gateway"] {
        let status = suite.get(name).await.unwrap().status.unwrap();
        assert!(
            status.ready_replicas.unwrap_or(0) >= 1,
            "the suite's {name} lost its replicas"
        );
    }
}
