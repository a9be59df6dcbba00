//! Pure decisions of the pod runner: which pods run an engine, with which
//! command line, and the pod status a kubelet would report.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use serde_json::{json, Value};

/// vLLM's default HTTP port (`vllm serve --port`).
pub const DEFAULT_ENGINE_PORT: u16 = 8000;

/// How to start the stand-in for one pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EngineLaunch {
    /// Arguments for the stand-in: the pod's `vllm serve` arguments with
    /// `--host`/`--port` set to the pod's address.
    pub args: Vec<String>,
    /// Literal environment values of the engine container (`valueFrom` entries
    /// need the API server and a kubelet; they are skipped).
    pub env: Vec<(String, String)>,
    /// Where the engine listens: pod IP and port.
    pub addr: SocketAddr,
    /// The HTTP path of the readiness probe (vLLM: `/health`).
    pub readiness_path: String,
    /// Every container of the pod (name, image), for status reporting.
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

/// The launch plan for a pod, or `None` when it has no engine container.
pub fn engine_launch(pod: &Pod, ip: IpAddr) -> Option<EngineLaunch> {
    let spec = pod.spec.as_ref()?;
    let container = spec.containers.iter().find(|c| is_engine(c))?;
    let mut args = engine_args(container);
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
    let env = container
        .env
        .as_deref()
        .unwrap_or_default()
        .iter()
        .filter_map(|e| e.value.clone().map(|v| (e.name.clone(), v)))
        .collect();
    let readiness_path = container
        .readiness_probe
        .as_ref()
        .and_then(|p| p.http_get.as_ref())
        .and_then(|h| h.path.clone())
        .unwrap_or_else(|| "/health".to_string());
    Some(EngineLaunch {
        args,
        env,
        addr: SocketAddr::new(ip, port),
        readiness_path,
        containers: container_refs(pod),
    })
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
        let launch = engine_launch(&p, IP).unwrap();
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
        assert_eq!(launch.addr, "127.1.0.7:8001".parse().unwrap());
        assert_eq!(
            launch.env,
            vec![("VLLM_SIM_ITL_MS".to_string(), "3".to_string())]
        );
        assert_eq!(launch.readiness_path, "/health");
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
        let launch = engine_launch(&p, IP).unwrap();
        assert_eq!(
            launch.args,
            ["--model=m", "--host", "127.1.0.7", "--port", "9000"]
        );
        assert_eq!(launch.readiness_path, "/ready");
        let names: Vec<_> = launch.containers.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["engine", "sidecar"]);

        let p = pod("spec: {containers: [{name: e, image: vllm/vllm-openai, ports: [{containerPort: 8123}]}]}");
        assert_eq!(engine_launch(&p, IP).unwrap().addr.port(), 8123);
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
        let launch = engine_launch(&p, IP).unwrap();
        assert_eq!(
            launch.args,
            ["--model", "m", "--host", "127.1.0.7", "--port", "8000"]
        );
    }

    #[test]
    fn pods_without_engine_have_no_launch() {
        let p = pod("spec: {containers: [{name: web, image: nginx, command: [nginx]}]}");
        assert!(engine_launch(&p, IP).is_none());
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
    fn crash_backoff_doubles_and_caps() {
        assert_eq!(crash_backoff(1), Duration::from_secs(1));
        assert_eq!(crash_backoff(2), Duration::from_secs(2));
        assert_eq!(crash_backoff(4), Duration::from_secs(8));
        assert_eq!(crash_backoff(40), Duration::from_secs(30));
    }
}
