//! Pure decisions of the pod runner: which pods run an engine, with which
//! command line, and the pod status a kubelet would report.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;
use serde_json::{json, Value};

/// vLLM's default HTTP port (`vllm serve --port`).
pub const DEFAULT_ENGINE_PORT: u16 = 8000;

/// What runs for a pod: the vLLM stand-in, or a host binary standing in for
/// a container image (kinfer's own operator and gateway images).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Program {
    Engine,
    Binary(PathBuf),
}

/// How to start the process for one pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Launch {
    pub program: Program,
    /// Command-line arguments, `$(VAR)` references expanded as a kubelet does.
    /// Engines get `--host`/`--port` set to the pod's address.
    pub args: Vec<String>,
    /// The container's environment: literal values and the downward-API
    /// fields a kubelet resolves (`status.podIP`, `metadata.name`, ...).
    /// Secret and ConfigMap references are skipped.
    pub env: Vec<(String, String)>,
    /// The HTTP readiness probe target, if the container has one (engines
    /// always do: vLLM's `/health`). Without one the pod is ready once started.
    pub readiness: Option<(SocketAddr, String)>,
    /// Whether the process gets API credentials (a kubeconfig with a token of
    /// the pod's service account), like a pod's mounted token.
    pub api_access: bool,
    /// Every container of the pod, for status reporting.
    pub containers: Vec<ContainerRef>,
}

/// A container's name and image, as its status repeats them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerRef {
    pub name: String,
    pub image: String,
}

/// The containers of `pod`, for [`status_patch`].
pub fn container_refs(pod: &Pod) -> Vec<ContainerRef> {
    pod.spec
        .as_ref()
        .map(|s| {
            s.containers
                .iter()
                .map(|c| ContainerRef {
                    name: c.name.clone(),
                    image: c.image.clone().unwrap_or_default(),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// What the runner currently knows of a pod's engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeState {
    /// Running, readiness probe not (yet) passing.
    Starting,
    /// Readiness probe passes.
    Ready,
    /// The process exited; it will be restarted after a back-off.
    Crashed { exit_code: i32 },
}

/// Whether a container runs a vLLM engine: its image is a vLLM (or the
/// stand-in's) image, or its command is `vllm ...` / vLLM's OpenAI server module.
pub fn is_engine(container: &Container) -> bool {
    let image = container
        .image
        .as_deref()
        .unwrap_or_default()
        .to_ascii_lowercase();
    if image.contains("vllm") {
        return true;
    }
    let command = container.command.as_deref().unwrap_or_default();
    command.first().is_some_and(|c| {
        let base = c.rsplit('/').next().unwrap_or(c);
        base == "vllm" || base == "vllm-sim"
    }) || command
        .iter()
        .any(|c| c == "vllm.entrypoints.openai.api_server")
}

/// The engine's own arguments: what follows `vllm serve`, the API server
/// module or the stand-in binary in the command, then the container's args.
/// vLLM images have `vllm serve` as entrypoint, so a container without a
/// command passes its args straight to it.
fn engine_args(container: &Container) -> Vec<String> {
    let command = container.command.clone().unwrap_or_default();
    let skip = if let Some(pos) = command.iter().position(|c| c == "serve") {
        pos + 1
    } else if let Some(pos) = command
        .iter()
        .position(|c| c == "vllm.entrypoints.openai.api_server")
    {
        pos + 1
    } else if command.is_empty() {
        0
    } else {
        1
    };
    let mut args: Vec<String> = command.into_iter().skip(skip).collect();
    args.extend(container.args.clone().unwrap_or_default());
    args
}

/// Removes `--flag value` and `--flag=value` from `args`, returning the value.
fn take_flag(args: &mut Vec<String>, flag: &str) -> Option<String> {
    let prefix = format!("{flag}=");
    let mut value = None;
    let mut i = 0;
    while i < args.len() {
        if args[i] == flag {
            args.remove(i);
            if i < args.len() && !args[i].starts_with("--") {
                value = Some(args.remove(i));
            }
        } else if let Some(v) = args[i].strip_prefix(&prefix) {
            value = Some(v.to_string());
            args.remove(i);
        } else {
            i += 1;
        }
    }
    value
}

/// The value of a downward-API field path of `pod` running at `ip`.
fn field_value(pod: &Pod, ip: IpAddr, path: &str) -> Option<String> {
    let spec = pod.spec.as_ref();
    match path {
        "status.podIP" => Some(ip.to_string()),
        "metadata.name" => pod.metadata.name.clone(),
        "metadata.namespace" => pod.metadata.namespace.clone(),
        "metadata.uid" => pod.metadata.uid.clone(),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()),
        "spec.serviceAccountName" => spec.and_then(|s| s.service_account_name.clone()),
        _ => None,
    }
}

/// The container's environment as a kubelet resolves it.
fn resolve_env(pod: &Pod, ip: IpAddr, container: &Container) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = Vec::new();
    for var in container.env.as_deref().unwrap_or_default() {
        let value = match (&var.value, &var.value_from) {
            (Some(v), _) => Some(expand(v, &env)),
            (None, Some(from)) => from
                .field_ref
                .as_ref()
                .and_then(|f| field_value(pod, ip, &f.field_path)),
            (None, None) => Some(String::new()),
        };
        if let Some(value) = value {
            env.push((var.name.clone(), value));
        }
    }
    env
}

/// Expands `$(VAR)` from `env` as Kubernetes does for command, args and env
/// values: `$$(VAR)` escapes, unknown references stay as written.
pub fn expand(input: &str, env: &[(String, String)]) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(escaped) = after.strip_prefix("$(") {
            out.push_str("$(");
            rest = escaped;
        } else if let Some(body) = after.strip_prefix('(') {
            match body.find(')') {
                Some(close) => {
                    let name = &body[..close];
                    match env.iter().rev().find(|(k, _)| k == name) {
                        Some((_, v)) => out.push_str(v),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &body[close + 1..];
                }
                None => {
                    out.push_str("$(");
                    rest = body;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// The readiness probe target of `container`, if it has an HTTP probe.
fn http_probe(container: &Container, ip: IpAddr) -> Option<(SocketAddr, String)> {
    let get = container.readiness_probe.as_ref()?.http_get.as_ref()?;
    let port = match &get.port {
        IntOrString::Int(p) => u16::try_from(*p).ok()?,
        IntOrString::String(name) => container
            .ports
            .as_deref()
            .unwrap_or_default()
            .iter()
            .find(|p| p.name.as_deref() == Some(name))
            .and_then(|p| u16::try_from(p.container_port).ok())?,
    };
    Some((
        SocketAddr::new(ip, port),
        get.path.clone().unwrap_or_else(|| "/".to_string()),
    ))
}

/// Which host binary stands in for `image`, from `images` (pattern, binary):
/// the pattern matches the image's repository, without tag or digest, as a
/// suffix (`kinfer/gateway` matches `ghcr.io/kinfer/gateway:v1`).
pub fn binary_for<'a>(image: &str, images: &'a [(String, PathBuf)]) -> Option<&'a PathBuf> {
    let repository = image.split('@').next().unwrap_or(image);
    let repository = match repository.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => repo,
        _ => repository,
    };
    images
        .iter()
        .find(|(pattern, _)| repository == pattern || repository.ends_with(&format!("/{pattern}")))
        .map(|(_, bin)| bin)
}

/// The launch plan for a pod at `ip`, or `None` when none of its containers
/// is an engine or an image in `images`. Kinfer's own images are checked
/// first, so a stand-in image named like vLLM is still an engine.
pub fn launch_plan(pod: &Pod, ip: IpAddr, images: &[(String, PathBuf)]) -> Option<Launch> {
    let spec = pod.spec.as_ref()?;
    let containers = container_refs(pod);
    for container in &spec.containers {
        let image = container.image.as_deref().unwrap_or_default();
        if let Some(bin) = binary_for(image, images) {
            let env = resolve_env(pod, ip, container);
            let command = container.command.clone().unwrap_or_default();
            let args = command
                .into_iter()
                .skip(1)
                .chain(container.args.clone().unwrap_or_default())
                .map(|a| expand(&a, &env))
                .collect();
            return Some(Launch {
                program: Program::Binary(bin.clone()),
                args,
                readiness: http_probe(container, ip),
                env,
                api_access: pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.automount_service_account_token)
                    .unwrap_or(true),
                containers,
            });
        }
    }
    let container = spec.containers.iter().find(|c| is_engine(c))?;
    let env = resolve_env(pod, ip, container);
    let mut args: Vec<String> = engine_args(container)
        .iter()
        .map(|a| expand(a, &env))
        .collect();
    take_flag(&mut args, "--host");
    let port = take_flag(&mut args, "--port")
        .and_then(|p| p.parse::<u16>().ok())
        .or_else(|| {
            container
                .ports
                .as_ref()
                .and_then(|ports| ports.first())
                .and_then(|p| u16::try_from(p.container_port).ok())
        })
        .unwrap_or(DEFAULT_ENGINE_PORT);
    args.extend([
        "--host".to_string(),
        ip.to_string(),
        "--port".to_string(),
        port.to_string(),
    ]);
    let path = container
        .readiness_probe
        .as_ref()
        .and_then(|p| p.http_get.as_ref())
        .and_then(|h| h.path.clone())
        .unwrap_or_else(|| "/health".to_string());
    Some(Launch {
        program: Program::Engine,
        args,
        env,
        readiness: Some((SocketAddr::new(ip, port), path)),
        api_access: false,
        containers,
    })
}

/// How a kubelet stops a deleted pod's containers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Termination {
    /// The first container's preStop hook, when it is a sleep (`sleep` action
    /// or `exec: [sleep, N]`): the time endpoints get to drop the pod.
    pub pre_stop: Duration,
    /// `metadata.deletionGracePeriodSeconds` (else the pod's
    /// `terminationGracePeriodSeconds`, else 30 s): preStop and SIGTERM
    /// together get this long before SIGKILL.
    pub grace_period: Duration,
}

impl Default for Termination {
    fn default() -> Self {
        Self {
            pre_stop: Duration::ZERO,
            grace_period: Duration::from_secs(30),
        }
    }
}

/// The termination a kubelet would carry out for `pod`.
pub fn termination(pod: &Pod) -> Termination {
    let spec = pod.spec.as_ref();
    let grace = pod
        .metadata
        .deletion_grace_period_seconds
        .or_else(|| spec.and_then(|s| s.termination_grace_period_seconds))
        .unwrap_or(30)
        .max(0);
    let pre_stop = spec
        .and_then(|s| s.containers.first())
        .and_then(|c| c.lifecycle.as_ref())
        .and_then(|l| l.pre_stop.as_ref())
        .and_then(|h| {
            if let Some(sleep) = &h.sleep {
                return Some(sleep.seconds);
            }
            let command = h.exec.as_ref()?.command.as_ref()?;
            match command.as_slice() {
                [sleep, n] if sleep.rsplit('/').next() == Some("sleep") => n.parse().ok(),
                _ => None,
            }
        })
        .unwrap_or(0)
        .max(0);
    Termination {
        pre_stop: Duration::from_secs(pre_stop.unsigned_abs()),
        grace_period: Duration::from_secs(grace.unsigned_abs()),
    }
}

/// Whether the pod's `Ready` condition is already true.
pub fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Back-off before restarting a crashed engine: 1 s doubling to 30 s (a
/// kubelet uses 10 s to 5 min; shorter here so tests see recovery quickly).
pub fn crash_backoff(restarts: u32) -> Duration {
    Duration::from_secs(1u64 << restarts.saturating_sub(1).min(5)).min(Duration::from_secs(30))
}

fn now() -> Value {
    serde_json::to_value(Time(Timestamp::now())).unwrap_or(Value::Null)
}

/// The strategic-merge patch of `pods/status` a kubelet would write for
/// `state` after `restarts` restarts. `containerStatuses` has no merge key,
/// so the patch replaces the list and repeats every field a kubelet reports.
pub fn status_patch(containers: &[ContainerRef], state: ProbeState, restarts: u32) -> Value {
    let now = now();
    let ready = state == ProbeState::Ready;
    let (reason, message) = match state {
        ProbeState::Ready => (Value::Null, Value::Null),
        ProbeState::Starting => (
            json!("ContainersNotReady"),
            json!("readiness probe not passing yet"),
        ),
        ProbeState::Crashed { .. } => (
            json!("ContainersNotReady"),
            json!("containers with unready status: engine crashed"),
        ),
    };
    let condition = |type_: &str| {
        json!({"type": type_, "status": if ready {"True"} else {"False"},
               "reason": reason, "message": message, "lastTransitionTime": now})
    };
    let statuses: Vec<Value> = containers
        .iter()
        .map(|c| match state {
            ProbeState::Crashed { exit_code } => json!({
                "name": c.name,
                "image": c.image,
                "imageID": "",
                "ready": false,
                "started": false,
                "restartCount": restarts,
                "state": {"waiting": {
                    "reason": "CrashLoopBackOff",
                    "message": format!("back-off restarting failed container {}", c.name),
                }},
                "lastState": {"terminated": {
                    "exitCode": exit_code,
                    "reason": if exit_code == 0 { "Completed" } else { "Error" },
                    "startedAt": now, "finishedAt": now,
                }},
            }),
            _ => json!({
                "name": c.name,
                "image": c.image,
                "imageID": "",
                "ready": ready,
                "started": true,
                "restartCount": restarts,
                "state": {"running": {"startedAt": now}},
            }),
        })
        .collect();
    json!({"status": {
        "conditions": [condition("Ready"), condition("ContainersReady")],
        "containerStatuses": statuses,
    }})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(yaml: &str) -> Pod {
        serde_yaml::from_str(yaml).unwrap()
    }

    const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 1, 0, 7));

    #[test]
    fn vllm_serve_command_is_rewritten_to_the_pod_address() {
        let p = pod(r#"
spec:
  containers:
  - name: engine
    image: vllm/vllm-openai:v0.11.0
    command: [vllm, serve]
    args: [Qwen/Qwen2.5-7B, --served-model-name, qwen, --host, 0.0.0.0, --port, "8001", --tensor-parallel-size, "2"]
    env: [{name: VLLM_SIM_ITL_MS, value: "3"}, {name: HF_TOKEN, valueFrom: {secretKeyRef: {name: s, key: k}}}]
"#);
        let launch = launch_plan(&p, IP, &[]).unwrap();
        assert_eq!(
            launch.args,
            [
                "Qwen/Qwen2.5-7B",
                "--served-model-name",
                "qwen",
                "--tensor-parallel-size",
                "2",
                "--host",
                "127.1.0.7",
                "--port",
                "8001"
            ]
        );
        let (addr, path) = launch.readiness.clone().unwrap();
        assert_eq!(addr, "127.1.0.7:8001".parse().unwrap());
        assert_eq!(path, "/health");
        assert_eq!(
            launch.env,
            vec![("VLLM_SIM_ITL_MS".to_string(), "3".to_string())]
        );
        assert_eq!(launch.program, Program::Engine);
    }

    #[test]
    fn image_entrypoint_and_container_port_are_used_without_command() {
        let p = pod(r#"
spec:
  containers:
  - name: engine
    image: ghcr.io/kinfer/vllm-sim:dev
    args: [--model=m, --port=9000]
    ports: [{containerPort: 8000}]
    readinessProbe: {httpGet: {path: /ready, port: 9000}}
  - name: sidecar
    image: busybox
"#);
        let launch = launch_plan(&p, IP, &[]).unwrap();
        assert_eq!(
            launch.args,
            ["--model=m", "--host", "127.1.0.7", "--port", "9000"]
        );
        assert_eq!(launch.readiness.as_ref().unwrap().1, "/ready");
        let names: Vec<_> = launch.containers.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["engine", "sidecar"]);

        let p = pod("spec: {containers: [{name: e, image: vllm/vllm-openai, ports: [{containerPort: 8123}]}]}");
        assert_eq!(
            launch_plan(&p, IP, &[])
                .unwrap()
                .readiness
                .unwrap()
                .0
                .port(),
            8123
        );
    }

    #[test]
    fn python_module_entrypoint_is_recognised() {
        let p = pod(r#"
spec:
  containers:
  - name: e
    image: registry.local/my-engine
    command: [python3, -m, vllm.entrypoints.openai.api_server]
    args: [--model, m]
"#);
        let launch = launch_plan(&p, IP, &[]).unwrap();
        assert_eq!(
            launch.args,
            ["--model", "m", "--host", "127.1.0.7", "--port", "8000"]
        );
    }

    #[test]
    fn kinfer_images_run_their_host_binary_with_expanded_args() {
        let p = pod(r#"
metadata: {name: gw-1, namespace: kinfer-system}
spec:
  serviceAccountName: kinfer-gateway
  containers:
  - name: gateway
    image: ghcr.io/kinfer/gateway:v0.1.0
    args: [--listen, "$(POD_IP):8080", --name=$(POD_NAME), "$$(literal)", $(MISSING)]
    env:
    - {name: POD_IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}
    - {name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
    - {name: TOKEN, valueFrom: {secretKeyRef: {name: s, key: k}}}
    ports: [{name: admin, containerPort: 9090}]
    readinessProbe: {httpGet: {path: /readyz, port: admin}}
"#);
        let images = vec![(
            "kinfer/gateway".to_string(),
            PathBuf::from("/bin/kinfer-gateway"),
        )];
        let launch = launch_plan(&p, IP, &images).unwrap();
        assert_eq!(
            launch.program,
            Program::Binary(PathBuf::from("/bin/kinfer-gateway"))
        );
        assert_eq!(
            launch.args,
            [
                "--listen",
                "127.1.0.7:8080",
                "--name=gw-1",
                "$(literal)",
                "$(MISSING)"
            ]
        );
        assert_eq!(
            launch.readiness,
            Some(("127.1.0.7:9090".parse().unwrap(), "/readyz".to_string()))
        );
        assert!(launch.api_access);
        let names: Vec<_> = launch.env.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["POD_IP", "POD_NAME"]);
    }

    #[test]
    fn image_patterns_match_the_repository_suffix_only() {
        let images = vec![("kinfer/operator".to_string(), PathBuf::from("/op"))];
        assert!(binary_for("kinfer/operator", &images).is_some());
        assert!(binary_for("localhost:5000/kinfer/operator:dev", &images).is_some());
        assert!(binary_for("ghcr.io/kinfer/operator@sha256:abc", &images).is_some());
        assert!(binary_for("ghcr.io/notkinfer/operator:v1", &images).is_none());
        assert!(binary_for("kinfer/operator-extra:v1", &images).is_none());
    }

    #[test]
    fn pods_without_engine_have_no_launch() {
        let p = pod("spec: {containers: [{name: web, image: nginx, command: [nginx]}]}");
        assert!(launch_plan(&p, IP, &[]).is_none());
    }

    #[test]
    fn status_patches_carry_the_states_a_kubelet_reports() {
        let names = vec![ContainerRef {
            name: "engine".into(),
            image: "vllm/vllm-openai".into(),
        }];
        let ready = status_patch(&names, ProbeState::Ready, 0);
        assert_eq!(
            ready["status"]["containerStatuses"][0]["image"],
            "vllm/vllm-openai"
        );
        assert_eq!(ready["status"]["conditions"][0]["status"], "True");
        assert_eq!(ready["status"]["containerStatuses"][0]["ready"], true);
        assert!(
            ready["status"]["containerStatuses"][0]["state"]["running"]["startedAt"].is_string()
        );

        let starting = status_patch(&names, ProbeState::Starting, 1);
        assert_eq!(
            starting["status"]["conditions"][1]["type"],
            "ContainersReady"
        );
        assert_eq!(starting["status"]["conditions"][1]["status"], "False");

        let crashed = status_patch(&names, ProbeState::Crashed { exit_code: 3 }, 2);
        let status = &crashed["status"]["containerStatuses"][0];
        assert_eq!(status["state"]["waiting"]["reason"], "CrashLoopBackOff");
        assert!(status["state"]["running"].is_null());
        assert_eq!(status["lastState"]["terminated"]["exitCode"], 3);
        assert_eq!(status["restartCount"], 2);
    }

    #[test]
    fn termination_follows_prestop_and_grace_period() {
        let p = pod(r#"
metadata: {deletionGracePeriodSeconds: 45}
spec:
  terminationGracePeriodSeconds: 180
  containers: [{name: e, lifecycle: {preStop: {sleep: {seconds: 10}}}}]
"#);
        let t = termination(&p);
        assert_eq!(
            (t.pre_stop, t.grace_period),
            (Duration::from_secs(10), Duration::from_secs(45))
        );
        let p = pod(r#"
spec:
  containers: [{name: e, lifecycle: {preStop: {exec: {command: [/bin/sleep, "5"]}}}}]
"#);
        let t = termination(&p);
        assert_eq!(
            (t.pre_stop, t.grace_period),
            (Duration::from_secs(5), Duration::from_secs(30))
        );
        let p = pod("spec: {terminationGracePeriodSeconds: 0, containers: [{name: e}]}");
        assert_eq!(
            termination(&p),
            Termination {
                pre_stop: Duration::ZERO,
                grace_period: Duration::ZERO
            }
        );
    }

    #[test]
    fn crash_backoff_doubles_and_caps() {
        assert_eq!(crash_backoff(1), Duration::from_secs(1));
        assert_eq!(crash_backoff(2), Duration::from_secs(2));
        assert_eq!(crash_backoff(4), Duration::from_secs(8));
        assert_eq!(crash_backoff(40), Duration::from_secs(30));
    }
}
