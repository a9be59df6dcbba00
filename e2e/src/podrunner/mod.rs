//! The pod runner: the kubelet's part on the local test bed.
//!
//! kwok moves pods bound to fake GPU nodes to `Running` with a loopback pod IP
//! (see `e2e/kwok/pod-start.yaml`) but leaves them unready. The pod runner
//! watches those pods and, for each one whose container is a vLLM engine,
//! starts an engine on the pod's IP with the pod's own arguments (the vLLM
//! stand-in, or real `vllm serve` on the generated models: [`RunnerConfig::
//! default_engine`], or per pod the `kinfer.dev/test-engine` annotation); it
//! then probes the engine's readiness endpoint and writes the pod's `Ready`
//! condition, as a kubelet does. A crashed engine is restarted with back-off
//! and reported as `CrashLoopBackOff`; a pod that goes away has its engine
//! stopped. Pods without an engine container are marked ready at once.
//!
//! The decisions (is this an engine, with which arguments, which status) are
//! plain functions in [`plan`], unit-tested; this module is the glue.

pub mod plan;

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{Node, Pod, ServiceAccount};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use tokio::sync::{watch, Mutex};
use tokio::task::JoinHandle;

use plan::{EngineKind, Launch, LocalModels, ProbeState, Program};

/// Annotation kwok uses to pick the nodes it manages.
pub const FAKE_NODE_ANNOTATION: &str = "kwok.x-k8s.io/node";

#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    #[error("kubernetes API error: {0}")]
    Kube(#[from] kube::Error),
    #[error("watch error: {0}")]
    Watch(#[from] watcher::Error),
}

/// Settings for [`run`].
#[derive(Clone, Debug)]
pub struct RunnerConfig {
    /// The engine stand-in binary (`vllm-sim`).
    pub engine_bin: PathBuf,
    /// The engine of pods without a `kinfer.dev/test-engine` annotation.
    pub default_engine: EngineKind,
    /// Real vLLM's `vllm` executable and the models it serves, for engine
    /// pods that run real vLLM.
    pub vllm: Option<(PathBuf, LocalModels)>,
    /// One log file per engine process goes here.
    pub log_dir: PathBuf,
    /// How often readiness is probed.
    pub probe_period: Duration,
    /// Host binaries standing in for container images: (repository suffix,
    /// binary), e.g. `("kinfer/gateway", target/debug/kinfer-gateway)`.
    pub images: Vec<(String, PathBuf)>,
    /// API server URL and CA file written into the kubeconfig that processes
    /// of pods with API access get (token of the pod's service account).
    pub api_server: Option<String>,
    pub api_ca: Option<PathBuf>,
}

/// One process the runner supervises, keyed by pod UID.
struct Supervised {
    task: JoinHandle<()>,
    /// Set once when the pod starts terminating.
    terminate: watch::Sender<Option<Termination>>,
}

pub use plan::Termination;

struct Runner {
    client: Client,
    config: RunnerConfig,
    fake_nodes: Mutex<Vec<String>>,
    running: Mutex<HashMap<String, Supervised>>,
}

/// Watches every pod and plays the kubelet for those on fake nodes. Returns
/// only on a fatal error; dropping the future stops every engine process
/// (they are spawned with `kill_on_drop`).
pub async fn run(client: Client, config: RunnerConfig) -> Result<(), RunnerError> {
    tokio::fs::create_dir_all(&config.log_dir).await.ok();
    let runner = Arc::new(Runner {
        client: client.clone(),
        config,
        fake_nodes: Mutex::new(Vec::new()),
        running: Mutex::new(HashMap::new()),
    });
    runner.refresh_nodes().await?;
    let pods: Api<Pod> = Api::all(client);
    let mut stream = watcher(pods, watcher::Config::default()).boxed();
    tracing::info!("watching pods");
    let mut seen_in_init: Vec<String> = Vec::new();
    while let Some(event) = stream.next().await {
        match event {
            Ok(watcher::Event::Init) => seen_in_init.clear(),
            Ok(watcher::Event::InitApply(pod)) => {
                seen_in_init.push(pod.uid().unwrap_or_default());
                runner.on_pod(pod).await;
            }
            Ok(watcher::Event::InitDone) => {
                // Pods deleted while the watch was down: stop their engines.
                let mut running = runner.running.lock().await;
                running.retain(|uid, sup| {
                    let keep = seen_in_init.contains(uid);
                    if !keep {
                        sup.task.abort();
                    }
                    keep
                });
            }
            Ok(watcher::Event::Apply(pod)) => runner.on_pod(pod).await,
            Ok(watcher::Event::Delete(pod)) => runner.stop(&pod.uid().unwrap_or_default()).await,
            Err(error) => {
                // The watcher retries by itself; say so and go on.
                tracing::warn!(%error, "pod watch error");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
    Ok(())
}

impl Runner {
    async fn refresh_nodes(&self) -> Result<(), RunnerError> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        let list = nodes.list(&ListParams::default()).await?;
        let names = list
            .items
            .iter()
            .filter(|n| n.annotations().contains_key(FAKE_NODE_ANNOTATION))
            .map(|n| n.name_any())
            .collect();
        *self.fake_nodes.lock().await = names;
        Ok(())
    }

    async fn on_fake_node(&self, node: &str) -> bool {
        if self.fake_nodes.lock().await.iter().any(|n| n == node) {
            return true;
        }
        // A node added after start-up: look again once.
        if let Err(error) = self.refresh_nodes().await {
            tracing::warn!(%error, "listing nodes failed");
        }
        self.fake_nodes.lock().await.iter().any(|n| n == node)
    }

    async fn on_pod(self: &Arc<Self>, pod: Pod) {
        let uid = pod.uid().unwrap_or_default();
        let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) else {
            return;
        };
        if !self.on_fake_node(&node).await {
            return;
        }
        if pod.metadata.deletion_timestamp.is_some() {
            self.terminate(&pod).await;
            return;
        }
        let status = pod.status.clone().unwrap_or_default();
        if status.phase.as_deref() != Some("Running") {
            return;
        }
        let Some(ip) = status
            .pod_ip
            .as_deref()
            .and_then(|ip| ip.parse::<IpAddr>().ok())
        else {
            return;
        };
        if self.running.lock().await.contains_key(&uid) {
            return;
        }
        match plan::launch_plan(&pod, ip, &self.config.images, self.config.default_engine) {
            Some(launch) => {
                let runner = Arc::clone(self);
                let pod_name = pod.name_any();
                let namespace = pod.namespace().unwrap_or_default();
                let service_account = pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.service_account_name.clone())
                    .unwrap_or_else(|| "default".to_string());
                tracing::info!(pod = %pod_name, %namespace, program = ?launch.program, "starting");
                let (terminate, terminated) = watch::channel(None);
                let uid_for_task = uid.clone();
                let task = tokio::spawn(async move {
                    runner
                        .supervise(
                            namespace,
                            pod_name,
                            service_account,
                            uid_for_task,
                            launch,
                            terminated,
                        )
                        .await;
                });
                self.running
                    .lock()
                    .await
                    .insert(uid, Supervised { task, terminate });
            }
            None => {
                // Not an engine: nothing to run, ready as soon as it runs.
                if !plan::is_ready(&pod) {
                    let patch =
                        plan::status_patch(&plan::container_refs(&pod), ProbeState::Ready, 0);
                    self.patch_status(&pod.namespace().unwrap_or_default(), &pod.name_any(), patch)
                        .await;
                }
            }
        }
    }

    /// A pod was deleted (its deletion timestamp is set): as a kubelet, run
    /// its preStop hook, send SIGTERM, wait for the process up to the grace
    /// period, then remove the pod object. Pods without a process go at once.
    async fn terminate(self: &Arc<Self>, pod: &Pod) {
        let uid = pod.uid().unwrap_or_default();
        let termination = plan::termination(pod);
        let running = self.running.lock().await;
        match running.get(&uid) {
            Some(sup) => {
                // Once: later updates of the terminating pod change nothing.
                sup.terminate.send_if_modified(|current| {
                    let first = current.is_none();
                    if first {
                        *current = Some(termination);
                    }
                    first
                });
            }
            None => {
                drop(running);
                self.remove_pod(pod.namespace().unwrap_or_default(), pod.name_any(), uid)
                    .await;
            }
        }
    }

    /// Deletes the pod object for good (grace period 0), as a kubelet does
    /// once the pod's containers are gone.
    async fn remove_pod(&self, namespace: String, name: String, uid: String) {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &namespace);
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(uid),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match pods.delete(&name, &params).await {
            Ok(_) => {}
            // Gone already, or a new pod of the same name (uid precondition).
            Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => {}
            Err(error) => tracing::warn!(%error, pod = name, "removing the terminated pod failed"),
        }
    }

    async fn stop(&self, uid: &str) {
        if let Some(sup) = self.running.lock().await.remove(uid) {
            // Aborting drops the child, which kills it (kill_on_drop).
            sup.task.abort();
        }
    }

    async fn patch_status(&self, namespace: &str, name: &str, patch: serde_json::Value) {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let params = PatchParams::default();
        if let Err(error) = pods
            .patch_status(name, &params, &Patch::Strategic(patch))
            .await
        {
            tracing::debug!(%error, pod = name, "status patch failed");
        }
    }

    /// A kubeconfig holding a token of `namespace/service_account`, as the
    /// token a kubelet mounts into a pod; the path is returned.
    async fn service_account_kubeconfig(
        &self,
        namespace: &str,
        pod: &str,
        service_account: &str,
    ) -> Result<PathBuf, String> {
        let (Some(server), Some(ca)) = (&self.config.api_server, &self.config.api_ca) else {
            return Err("the pod runner was started without --api-server/--api-ca".into());
        };
        let accounts: Api<ServiceAccount> = Api::namespaced(self.client.clone(), namespace);
        let request: TokenRequest = serde_json::from_value(serde_json::json!({
            "spec": {"audiences": [], "expirationSeconds": 86400}
        }))
        .map_err(|e| e.to_string())?;
        let token = accounts
            .create_token_request(service_account, &PostParams::default(), &request)
            .await
            .map_err(|e| format!("token for service account {namespace}/{service_account}: {e}"))?
            .status
            .map(|s| s.token)
            .ok_or("the token request returned no token")?;
        let path = self
            .config
            .log_dir
            .join(format!("{namespace}_{pod}.kubeconfig"));
        let kubeconfig = serde_json::json!({
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "local", "cluster": {"server": server, "certificate-authority": ca}}],
            "users": [{"name": service_account, "user": {"token": token}}],
            "contexts": [{"name": "local", "context": {"cluster": "local", "user": service_account, "namespace": namespace}}],
            "current-context": "local",
        });
        tokio::fs::write(&path, kubeconfig.to_string())
            .await
            .map_err(|e| e.to_string())?;
        Ok(path)
    }

    /// Runs the process of one pod until the task is aborted: start, probe
    /// readiness, restart with back-off when it exits.
    async fn supervise(
        &self,
        namespace: String,
        pod: String,
        service_account: String,
        uid: String,
        launch: Launch,
        mut terminated: watch::Receiver<Option<Termination>>,
    ) {
        let http = match reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .no_proxy()
            .build()
        {
            Ok(client) => client,
            Err(error) => {
                tracing::error!(%error, "building the probe client failed");
                return;
            }
        };
        let log_path = self.config.log_dir.join(format!("{namespace}_{pod}.log"));
        let mut env = launch.env.clone();
        if launch.api_access {
            match self
                .service_account_kubeconfig(&namespace, &pod, &service_account)
                .await
            {
                Ok(path) => {
                    env.push(("KUBECONFIG".into(), path.display().to_string()));
                    env.push(("POD_NAMESPACE".into(), namespace.clone()));
                }
                Err(error) => tracing::warn!(pod, %error, "no API credentials for the pod"),
            }
        }
        let mut args = launch.args.clone();
        let program = match &launch.program {
            Program::Engine(EngineKind::Sim) => self.config.engine_bin.clone(),
            Program::Engine(EngineKind::Vllm) => {
                let Some((bin, models)) = &self.config.vllm else {
                    tracing::error!(
                        pod,
                        "the pod asks for real vLLM, but the runner has no --vllm-bin"
                    );
                    return;
                };
                let (vllm_args, notes) = plan::vllm_args(&launch.args, models);
                let home = self.config.log_dir.join(format!("{namespace}_{pod}.home"));
                if let Err(error) = std::fs::create_dir_all(&home) {
                    tracing::error!(%error, pod, "cannot create the engine's home");
                    return;
                }
                tracing::info!(
                    pod,
                    ?notes,
                    "real vLLM: the operator's arguments, adapted to this machine"
                );
                args = std::iter::once("serve".to_string())
                    .chain(vllm_args)
                    .collect();
                env = plan::vllm_env(&env, &home);
                bin.clone()
            }
            Program::Binary(path) => path.clone(),
        };
        let mut restarts: u32 = 0;
        loop {
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log_path);
            let (stdout, stderr) = match log.and_then(|f| Ok((f.try_clone()?, f))) {
                Ok((out, err)) => (Stdio::from(out), Stdio::from(err)),
                Err(_) => (Stdio::null(), Stdio::null()),
            };
            let mut command = tokio::process::Command::new(&program);
            command
                .args(&args)
                // Its own process group, like a container: real vLLM's engine
                // core and workers go with it at SIGKILL.
                .process_group(0)
                .env_remove("KUBECONFIG")
                .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                .stdin(Stdio::null())
                .stdout(stdout)
                .stderr(stderr)
                .kill_on_drop(true);
            let mut child = match command.spawn() {
                Ok(child) => GroupGuard::new(child),
                Err(error) => {
                    tracing::error!(%error, pod, program = %program.display(), "cannot start the process");
                    return;
                }
            };
            let mut last = ProbeState::Starting;
            let mut ticker = tokio::time::interval(self.config.probe_period);
            let exit = loop {
                tokio::select! {
                    status = child.wait() => break Some(status),
                    _ = terminated.changed() => break None,
                    _ = ticker.tick() => {
                        let ok = match &launch.readiness {
                            Some((addr, path)) => {
                                let url = format!("http://{addr}{path}");
                                matches!(http.get(&url).send().await, Ok(r) if r.status().is_success())
                            }
                            None => true,
                        };
                        let now = if ok { ProbeState::Ready } else { ProbeState::Starting };
                        if now != last {
                            let patch = plan::status_patch(&launch.containers, now, restarts);
                            self.patch_status(&namespace, &pod, patch).await;
                            last = now;
                        }
                    }
                }
            };
            let Some(exit) = exit else {
                let termination = (*terminated.borrow()).unwrap_or_default();
                self.stop_gracefully(&pod, &mut child, termination).await;
                self.remove_pod(namespace, pod, uid).await;
                return;
            };
            let code = exit.ok().and_then(|s| s.code()).unwrap_or(-1);
            restarts += 1;
            tracing::warn!(
                pod,
                code,
                restarts,
                "process exited; restarting with back-off"
            );
            let crashed = ProbeState::Crashed { exit_code: code };
            let patch = plan::status_patch(&launch.containers, crashed, restarts);
            self.patch_status(&namespace, &pod, patch).await;
            tokio::select! {
                _ = tokio::time::sleep(plan::crash_backoff(restarts)) => {}
                _ = terminated.changed() => {
                    self.remove_pod(namespace, pod, uid).await;
                    return;
                }
            }
        }
    }

    /// preStop, SIGTERM, wait for the process up to the grace period, SIGKILL.
    async fn stop_gracefully(&self, pod: &str, child: &mut GroupGuard, t: Termination) {
        let started = tokio::time::Instant::now();
        let deadline = started + t.grace_period;
        tracing::info!(pod, pre_stop = ?t.pre_stop, grace = ?t.grace_period, "terminating");
        tokio::select! {
            _ = tokio::time::sleep_until((started + t.pre_stop).min(deadline)) => {}
            _ = child.wait() => return,
        }
        if let Some(pid) = child.id() {
            // SIGTERM through kill(1): the workspace forbids unsafe code.
            let _ = tokio::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await;
        }
        if tokio::time::timeout_at(deadline, child.wait())
            .await
            .is_err()
        {
            tracing::warn!(pod, "grace period over; killing");
            child.kill_group();
            let _ = child.wait().await;
        }
    }
}

/// A process started in its own process group; the whole group is killed
/// when the guard goes (the pod is gone, the runner stops), as a container's
/// processes are. Real vLLM forks an engine core and workers that would
/// otherwise outlive their leader.
struct GroupGuard {
    child: tokio::process::Child,
    pgid: Option<u32>,
}

impl GroupGuard {
    fn new(child: tokio::process::Child) -> Self {
        let pgid = child.id();
        GroupGuard { child, pgid }
    }

    /// SIGKILL to every process of the group.
    fn kill_group(&self) {
        if let Some(pgid) = self.pgid {
            // kill(1): the workspace forbids unsafe code.
            let _ = std::process::Command::new("kill")
                .args(["-KILL", "--", &format!("-{pgid}")])
                .stderr(Stdio::null())
                .status();
        }
    }
}

impl std::ops::Deref for GroupGuard {
    type Target = tokio::process::Child;
    fn deref(&self) -> &Self::Target {
        &self.child
    }
}

impl std::ops::DerefMut for GroupGuard {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.child
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.kill_group();
    }
}
