//! Pure status computation: (InferenceModel, Deployment, Pods, desired replicas, now) in,
//! InferenceModelStatus out.
//!
//! Conditions:
//! - **Ready**: True when a replica serves (`Available`) or the model is autoscaled to zero on
//!   purpose (`ScaledToZero`); otherwise False with what stops it (`Unschedulable`,
//!   `ImagePullFailed`, `CrashLooping`, `ContainerConfigError`, `PodsNotCreated`) or `Loading`.
//! - **Progressing**: True while replicas move towards the spec (`RollingOut`, `Loading`);
//!   False once they are there (`Available`, `ScaledToZero`) or when a problem stalls them (the
//!   problem's reason).
//! - **Degraded**: True when a problem affects any replica, even if others serve; False
//!   otherwise, with the Ready reason.
//!
//! When several pods have different problems, the first in the order unschedulable, image
//! pull, container configuration, crash loop is reported: the earliest stage of a pod's life
//! that fails is the one to fix first.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kinfer_crds::labels::selector_string;
use kinfer_crds::status::new_condition;
use kinfer_crds::{
    condition_types, reasons, AutoscalingMode, InferenceModel, InferenceModelStatus,
};
use kube::ResourceExt;

use crate::autoscaler::decision::Reason;
use crate::autoscaler::Published;

/// Container waiting reasons meaning the image cannot be pulled.
const IMAGE_PULL_REASONS: &[&str] = &[
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "ErrImageNeverPull",
    "RegistryUnavailable",
];

/// Container waiting reasons meaning the container cannot be created from its spec.
const CONFIG_ERROR_REASONS: &[&str] = &["CreateContainerConfigError", "CreateContainerError"];

/// What the operator observed of the model's children.
#[derive(Clone, Copy, Debug, Default)]
pub struct Observed<'a> {
    /// The engine Deployment, as last read (or returned by the apply).
    pub deployment: Option<&'a Deployment>,
    /// The engine pods: every pod matching the model's selector, old revisions included.
    pub pods: &'a [Pod],
}

/// A problem that stops replicas from serving, in reporting order.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Problem {
    PodsNotCreated(String),
    Unschedulable(String),
    ImagePullFailed(String),
    ContainerConfigError(String),
    CrashLooping(String),
}

impl Problem {
    fn reason(&self) -> &'static str {
        match self {
            Problem::PodsNotCreated(_) => reasons::PODS_NOT_CREATED,
            Problem::Unschedulable(_) => reasons::UNSCHEDULABLE,
            Problem::ImagePullFailed(_) => reasons::IMAGE_PULL_FAILED,
            Problem::ContainerConfigError(_) => reasons::CONTAINER_CONFIG_ERROR,
            Problem::CrashLooping(_) => reasons::CRASH_LOOPING,
        }
    }

    fn message(&self) -> &str {
        match self {
            Problem::PodsNotCreated(message)
            | Problem::Unschedulable(message)
            | Problem::ImagePullFailed(message)
            | Problem::ContainerConfigError(message)
            | Problem::CrashLooping(message) => message,
        }
    }
}

/// What one pod is doing.
#[derive(Clone, Debug, PartialEq, Eq)]
enum PodState {
    /// Being deleted, or finished: not counted.
    Gone,
    Ready,
    Problem(Problem),
    /// Scheduled, starting or loading the model.
    Starting,
}

fn pod_state(pod: &Pod) -> PodState {
    if pod.metadata.deletion_timestamp.is_some() {
        return PodState::Gone;
    }
    let Some(status) = pod.status.as_ref() else {
        return PodState::Starting;
    };
    if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return PodState::Gone;
    }
    let conditions = status.conditions.as_deref().unwrap_or_default();
    if conditions
        .iter()
        .any(|condition| condition.type_ == "Ready" && condition.status == "True")
    {
        return PodState::Ready;
    }
    if let Some(unschedulable) = conditions.iter().find(|condition| {
        condition.type_ == "PodScheduled"
            && condition.status == "False"
            && condition.reason.as_deref() == Some("Unschedulable")
    }) {
        return PodState::Problem(Problem::Unschedulable(
            unschedulable
                .message
                .clone()
                .unwrap_or_else(|| "the scheduler found no node for the pod".to_string()),
        ));
    }
    let containers = status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten());
    let mut problems: Vec<Problem> = containers
        .filter_map(|container| container_problem(&pod.name_any(), container))
        .collect();
    problems.sort();
    match problems.into_iter().next() {
        Some(problem) => PodState::Problem(problem),
        None => PodState::Starting,
    }
}

fn container_problem(pod_name: &str, container: &ContainerStatus) -> Option<Problem> {
    let waiting = container.state.as_ref()?.waiting.as_ref()?;
    let reason = waiting.reason.as_deref().unwrap_or_default();
    let detail = waiting
        .message
        .as_deref()
        .filter(|message| !message.is_empty())
        .map(|message| format!(": {message}"))
        .unwrap_or_default();
    let name = &container.name;
    if IMAGE_PULL_REASONS.contains(&reason) {
        return Some(Problem::ImagePullFailed(format!(
            "cannot pull image {:?} of container {name} ({reason}){detail}",
            container.image
        )));
    }
    if CONFIG_ERROR_REASONS.contains(&reason) {
        return Some(Problem::ContainerConfigError(format!(
            "cannot create container {name} ({reason}){detail}"
        )));
    }
    if reason == "CrashLoopBackOff" {
        let last_exit = container
            .last_state
            .as_ref()
            .and_then(|state| state.terminated.as_ref())
            .map(|terminated| {
                let why = terminated.reason.as_deref().unwrap_or("Error");
                format!(" (last exit code {}, {why})", terminated.exit_code)
            })
            .unwrap_or_default();
        return Some(Problem::CrashLooping(format!(
            "container {name} keeps exiting{last_exit}; see `kubectl logs {pod_name} -c {name} --previous`"
        )));
    }
    None
}

/// Deployment's ReplicaFailure condition: its ReplicaSet cannot create pods.
fn replica_failure(deployment: Option<&Deployment>) -> Option<Problem> {
    deployment?
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|condition| condition.type_ == "ReplicaFailure" && condition.status == "True")
        .map(|condition| {
            Problem::PodsNotCreated(format!(
                "pods cannot be created: {}",
                condition
                    .message
                    .as_deref()
                    .unwrap_or("see the ReplicaSet's events")
            ))
        })
}

/// Whether the Deployment is replacing pods of an older revision.
fn rolling_out(deployment: Option<&Deployment>) -> Option<(i32, i32)> {
    let deployment = deployment?;
    let status = deployment.status.as_ref()?;
    let replicas = status.replicas.unwrap_or(0);
    let updated = status.updated_replicas.unwrap_or(0);
    let stale =
        status.observed_generation.unwrap_or(0) < deployment.metadata.generation.unwrap_or(0);
    (replicas > updated || (stale && replicas > 0)).then_some((updated, replicas))
}

fn plural(count: i32, one: &str, many: &str) -> String {
    if count == 1 {
        format!("{count} {one}")
    } else {
        format!("{count} {many}")
    }
}

/// The status of `model` given its desired replica count and what was observed.
/// Conditions keep their lastTransitionTime while their status holds.
pub fn compute_status(
    model: &InferenceModel,
    desired: i32,
    observed: Observed<'_>,
    now: Time,
) -> InferenceModelStatus {
    let generation = model.metadata.generation;
    let mut status = base_status(model);
    status.desired_replicas = desired;

    let states: Vec<PodState> = observed.pods.iter().map(pod_state).collect();
    let replicas = states
        .iter()
        .filter(|state| **state != PodState::Gone)
        .count();
    let ready = states
        .iter()
        .filter(|state| **state == PodState::Ready)
        .count();
    let replicas = i32::try_from(replicas).unwrap_or(i32::MAX);
    let ready = i32::try_from(ready).unwrap_or(i32::MAX);
    status.replicas = replicas;
    status.ready_replicas = ready;

    let mut problems: Vec<(Problem, usize)> = Vec::new();
    let pod_problems = states.iter().filter_map(|state| match state {
        PodState::Problem(problem) => Some(problem.clone()),
        _ => None,
    });
    for problem in replica_failure(observed.deployment)
        .into_iter()
        .chain(pod_problems)
    {
        match problems
            .iter_mut()
            .find(|(known, _)| known.reason() == problem.reason())
        {
            Some((_, count)) => *count += 1,
            None => problems.push((problem, 1)),
        }
    }
    problems.sort();
    let problem = problems.first().map(|(problem, count)| {
        let affected = match problem {
            Problem::PodsNotCreated(_) => String::new(),
            _ => format!("{}: ", plural(*count as i32, "replica", "replicas")),
        };
        (problem.reason(), format!("{affected}{}", problem.message()))
    });

    let autoscaled_to_zero = model
        .spec
        .autoscaling
        .as_ref()
        .is_some_and(|autoscaling| autoscaling.min_replicas == 0);
    let starting = replicas - ready;

    // Ready
    let (ready_status, ready_reason, ready_message) = if ready > 0 {
        (
            true,
            reasons::AVAILABLE,
            format!("{ready}/{desired} replicas ready"),
        )
    } else if desired == 0 {
        if autoscaled_to_zero {
            (
                true,
                reasons::SCALED_TO_ZERO,
                "scaled to zero while idle; the next request starts a replica".to_string(),
            )
        } else {
            (
                false,
                reasons::SCALED_TO_ZERO,
                "spec.replicas is 0; scale up with `kubectl scale inferencemodel --replicas=1`"
                    .to_string(),
            )
        }
    } else if let Some((reason, message)) = &problem {
        (false, *reason, message.clone())
    } else if replicas == 0 {
        (
            false,
            reasons::LOADING,
            format!("0/{desired} replicas ready; waiting for pods to be created"),
        )
    } else {
        (
            false,
            reasons::LOADING,
            format!(
                "0/{desired} replicas ready; {} starting (pulling the image, downloading or loading the weights)",
                plural(starting, "replica", "replicas")
            ),
        )
    };

    // Progressing
    let (progressing, progressing_reason, progressing_message) =
        if let Some((updated, total)) = rolling_out(observed.deployment) {
            (
                true,
                reasons::ROLLING_OUT,
                format!("rolling out a new revision: {updated}/{total} replicas updated"),
            )
        } else if let Some((reason, message)) = problem.as_ref().filter(|_| ready < desired) {
            (false, *reason, message.clone())
        } else if ready < desired {
            (
                true,
                reasons::LOADING,
                format!("{ready}/{desired} replicas ready"),
            )
        } else if replicas > desired {
            (
                true,
                reasons::ROLLING_OUT,
                format!("scaling down from {replicas} to {desired} replicas"),
            )
        } else if desired == 0 {
            (
                false,
                reasons::SCALED_TO_ZERO,
                "no replicas wanted".to_string(),
            )
        } else {
            (
                false,
                reasons::AVAILABLE,
                format!("all {desired} replicas ready"),
            )
        };

    // Degraded
    let (degraded, degraded_reason, degraded_message) = match &problem {
        Some((reason, message)) => (true, *reason, message.clone()),
        None => (false, ready_reason, "no problem observed".to_string()),
    };

    for (type_, value, reason, message) in [
        (
            condition_types::READY,
            ready_status,
            ready_reason,
            ready_message,
        ),
        (
            condition_types::PROGRESSING,
            progressing,
            progressing_reason,
            progressing_message,
        ),
        (
            condition_types::DEGRADED,
            degraded,
            degraded_reason,
            degraded_message,
        ),
    ] {
        status.set_condition(new_condition(
            type_,
            value,
            reason,
            message,
            generation,
            now.clone(),
        ));
    }
    status
}

/// Sets the `Autoscaling` condition from the built-in autoscaler's `decision` on a model with
/// `autoscaling.mode: Builtin`: True with the decision's reason while it decides from fresh
/// signals, False with `NoMetrics` otherwise. Without a decision yet (the autoscaler has just
/// started) the condition keeps its last value; on other models it is removed.
pub fn set_autoscaling_condition(
    status: &mut InferenceModelStatus,
    model: &InferenceModel,
    decision: Option<&Published>,
    now: Time,
) {
    let builtin = model
        .spec
        .autoscaling
        .as_ref()
        .is_some_and(|autoscaling| autoscaling.mode == AutoscalingMode::Builtin);
    if !builtin {
        status
            .conditions
            .retain(|condition| condition.type_ != condition_types::AUTOSCALING);
        return;
    }
    if let Some(decision) = decision {
        status.set_condition(new_condition(
            condition_types::AUTOSCALING,
            decision.reason != Reason::NoMetrics,
            decision.reason.as_str(),
            decision.message.clone(),
            model.metadata.generation,
            now,
        ));
    }
}

/// The status of a model whose spec the operator refuses. Its children are left as they are
/// (the last valid spec keeps serving), so the replica counts stay as last observed.
pub fn invalid_spec_status(model: &InferenceModel, error: &str, now: Time) -> InferenceModelStatus {
    let generation = model.metadata.generation;
    let previous = model.status.clone().unwrap_or_default();
    let mut status = base_status(model);
    status.replicas = previous.replicas;
    status.ready_replicas = previous.ready_replicas;
    status.desired_replicas = previous.desired_replicas;
    let message = format!("{error}; fix the spec, the operator retries when it changes");
    for (type_, value) in [
        (condition_types::READY, false),
        (condition_types::PROGRESSING, false),
        (condition_types::DEGRADED, true),
    ] {
        status.set_condition(new_condition(
            type_,
            value,
            reasons::INVALID_SPEC,
            message.clone(),
            generation,
            now.clone(),
        ));
    }
    status
}

/// The fields that only depend on the object, with the previous conditions kept so their
/// transition times survive.
fn base_status(model: &InferenceModel) -> InferenceModelStatus {
    InferenceModelStatus {
        observed_generation: model.metadata.generation,
        replicas: 0,
        ready_replicas: 0,
        desired_replicas: 0,
        selector: Some(selector_string(&model.name_any())),
        served_models: model.spec.served_model_ids(),
        conditions: model
            .status
            .as_ref()
            .map(|status| status.conditions.clone())
            .unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;
    use kinfer_crds::condition_status;

    fn at(seconds: i64) -> Time {
        Time(Timestamp::from_second(seconds).unwrap())
    }

    fn model(extra_spec: &str) -> InferenceModel {
        serde_yaml::from_str(&format!(
            "metadata: {{name: qwen, namespace: ml, generation: 3}}\nspec:\n  model: {{name: Qwen/Qwen2.5-7B-Instruct}}\n  adapters: [{{name: sql, source: hf://org/sql}}]\n{extra_spec}"
        ))
        .unwrap()
    }

    fn pod(yaml: &str) -> Pod {
        serde_yaml::from_str(yaml).unwrap()
    }

    fn deployment(yaml: &str) -> Deployment {
        serde_yaml::from_str(yaml).unwrap()
    }

    const READY_POD: &str = r#"
metadata: {name: qwen-1}
status:
  phase: Running
  conditions: [{type: PodScheduled, status: "True"}, {type: Ready, status: "True"}]
"#;

    const LOADING_POD: &str = r#"
metadata: {name: qwen-2}
status:
  phase: Running
  conditions: [{type: PodScheduled, status: "True"}, {type: Ready, status: "False", reason: ContainersNotReady}]
  containerStatuses: [{name: engine, image: vllm, imageID: "", ready: false, restartCount: 0, started: true, state: {running: {}}}]
"#;

    const UNSCHEDULABLE_POD: &str = r#"
metadata: {name: qwen-3}
status:
  phase: Pending
  conditions:
    - type: PodScheduled
      status: "False"
      reason: Unschedulable
      message: "0/4 nodes are available: 4 Insufficient nvidia.com/gpu. preemption: 0/4 nodes are available: 4 No preemption victims found for incoming pod."
"#;

    const CRASHING_POD: &str = r#"
metadata: {name: qwen-4}
status:
  phase: Running
  conditions: [{type: PodScheduled, status: "True"}, {type: Ready, status: "False"}]
  containerStatuses:
    - name: engine
      image: vllm
      imageID: ""
      ready: false
      restartCount: 4
      state: {waiting: {reason: CrashLoopBackOff, message: back-off 40s restarting failed container}}
      lastState: {terminated: {exitCode: 1, reason: Error}}
"#;

    const IMAGE_PULL_POD: &str = r#"
metadata: {name: qwen-5}
status:
  phase: Pending
  conditions: [{type: PodScheduled, status: "True"}]
  containerStatuses:
    - name: engine
      image: vllm/vllm-openai:v9
      imageID: ""
      ready: false
      restartCount: 0
      state: {waiting: {reason: ImagePullBackOff, message: "Back-off pulling image \"vllm/vllm-openai:v9\""}}
"#;

    fn condition<'a>(status: &'a InferenceModelStatus, type_: &str) -> (&'a str, &'a str, &'a str) {
        let condition = status.condition(type_).unwrap();
        (
            condition.status.as_str(),
            condition.reason.as_str(),
            condition.message.as_str(),
        )
    }

    fn compute(
        model: &InferenceModel,
        desired: i32,
        deployment: Option<&Deployment>,
        pods: &[&str],
    ) -> InferenceModelStatus {
        let pods: Vec<Pod> = pods.iter().map(|yaml| pod(yaml)).collect();
        compute_status(
            model,
            desired,
            Observed {
                deployment,
                pods: &pods,
            },
            at(100),
        )
    }

    #[test]
    fn ready_replicas_make_the_model_available() {
        let status = compute(&model(""), 2, None, &[READY_POD, READY_POD]);
        assert_eq!(status.observed_generation, Some(3));
        assert_eq!(
            (
                status.replicas,
                status.ready_replicas,
                status.desired_replicas
            ),
            (2, 2, 2)
        );
        assert_eq!(
            status.selector.as_deref(),
            Some("app.kubernetes.io/component=engine,kinfer.dev/model=qwen")
        );
        assert_eq!(status.served_models, ["Qwen/Qwen2.5-7B-Instruct", "sql"]);
        assert_eq!(
            condition(&status, "Ready"),
            ("True", "Available", "2/2 replicas ready")
        );
        assert_eq!(condition(&status, "Progressing").0, "False");
        assert_eq!(condition(&status, "Degraded").0, "False");
        assert!(status.is_ready());
    }

    #[test]
    fn started_but_unhealthy_pods_are_loading() {
        let status = compute(&model(""), 1, None, &[LOADING_POD]);
        let (value, reason, message) = condition(&status, "Ready");
        assert_eq!((value, reason), ("False", "Loading"));
        assert!(message.contains("1 replica starting"), "{message}");
        assert_eq!(condition(&status, "Progressing").0, "True");
        assert_eq!(condition(&status, "Degraded").0, "False");
    }

    #[test]
    fn no_pods_yet_is_loading() {
        let status = compute(&model(""), 1, None, &[]);
        assert_eq!(condition(&status, "Ready").1, "Loading");
        assert_eq!(status.replicas, 0);
    }

    #[test]
    fn unschedulable_pods_report_the_scheduler_message() {
        let status = compute(&model(""), 1, None, &[UNSCHEDULABLE_POD]);
        let (value, reason, message) = condition(&status, "Ready");
        assert_eq!((value, reason), ("False", "Unschedulable"));
        assert!(
            message
                .starts_with("1 replica: 0/4 nodes are available: 4 Insufficient nvidia.com/gpu"),
            "{message}"
        );
        assert_eq!(condition(&status, "Degraded").0, "True");
        assert_eq!(
            condition(&status, "Progressing"),
            ("False", "Unschedulable", message)
        );
    }

    #[test]
    fn one_stuck_replica_degrades_an_available_model() {
        let status = compute(&model(""), 2, None, &[READY_POD, UNSCHEDULABLE_POD]);
        assert_eq!(
            condition(&status, "Ready"),
            ("True", "Available", "1/2 replicas ready")
        );
        assert_eq!(condition(&status, "Degraded").1, "Unschedulable");
        assert_eq!(condition(&status, "Progressing").1, "Unschedulable");
    }

    #[test]
    fn crash_loops_name_the_container_and_exit_code() {
        let status = compute(&model(""), 1, None, &[CRASHING_POD]);
        let (value, reason, message) = condition(&status, "Ready");
        assert_eq!((value, reason), ("False", "CrashLooping"));
        assert_eq!(
            message,
            "1 replica: container engine keeps exiting (last exit code 1, Error); see `kubectl logs qwen-4 -c engine --previous`"
        );
    }

    #[test]
    fn image_pull_failures_name_the_image() {
        let status = compute(&model(""), 1, None, &[IMAGE_PULL_POD]);
        let (_, reason, message) = condition(&status, "Ready");
        assert_eq!(reason, "ImagePullFailed");
        assert!(message.contains("vllm/vllm-openai:v9"), "{message}");
    }

    #[test]
    fn missing_secret_is_a_config_error() {
        let status = compute(
            &model(""),
            1,
            None,
            &[r#"
metadata: {name: qwen-6}
status:
  phase: Pending
  containerStatuses:
    - {name: engine, image: vllm, imageID: "", ready: false, restartCount: 0,
       state: {waiting: {reason: CreateContainerConfigError, message: "secret \"hf-token\" not found"}}}
"#],
        );
        let (_, reason, message) = condition(&status, "Ready");
        assert_eq!(reason, "ContainerConfigError");
        assert!(
            message.contains("secret \"hf-token\" not found"),
            "{message}"
        );
    }

    #[test]
    fn earliest_stage_problem_wins_and_counts_replicas() {
        let status = compute(
            &model(""),
            3,
            None,
            &[CRASHING_POD, UNSCHEDULABLE_POD, UNSCHEDULABLE_POD],
        );
        let (_, reason, message) = condition(&status, "Ready");
        assert_eq!(reason, "Unschedulable");
        assert!(message.starts_with("2 replicas: "), "{message}");
    }

    #[test]
    fn terminating_and_finished_pods_are_not_counted() {
        let terminating = r#"
metadata: {name: old, deletionTimestamp: "2025-01-01T00:00:00Z"}
status: {phase: Running, conditions: [{type: Ready, status: "True"}]}
"#;
        let failed = "metadata: {name: evicted}\nstatus: {phase: Failed}";
        let status = compute(&model(""), 1, None, &[terminating, failed, LOADING_POD]);
        assert_eq!((status.replicas, status.ready_replicas), (1, 0));
    }

    #[test]
    fn autoscaled_to_zero_is_ready() {
        let model = model("  autoscaling: {minReplicas: 0, maxReplicas: 2}");
        let status = compute(&model, 0, None, &[]);
        let (value, reason, _) = condition(&status, "Ready");
        assert_eq!((value, reason), ("True", "ScaledToZero"));
        assert_eq!(
            condition(&status, "Progressing"),
            ("False", "ScaledToZero", "no replicas wanted")
        );
    }

    #[test]
    fn manually_scaled_to_zero_is_not_ready() {
        let status = compute(&model("  replicas: 0"), 0, None, &[]);
        let (value, reason, _) = condition(&status, "Ready");
        assert_eq!((value, reason), ("False", "ScaledToZero"));
    }

    #[test]
    fn rollout_in_progress_is_progressing() {
        let deployment = deployment(
            "metadata: {name: qwen, generation: 4}\nstatus: {observedGeneration: 4, replicas: 2, updatedReplicas: 1, readyReplicas: 2}",
        );
        let status = compute(&model(""), 2, Some(&deployment), &[READY_POD, READY_POD]);
        assert_eq!(
            condition(&status, "Progressing"),
            (
                "True",
                "RollingOut",
                "rolling out a new revision: 1/2 replicas updated"
            )
        );
        assert_eq!(condition(&status, "Ready").1, "Available");
    }

    #[test]
    fn replica_failure_is_reported() {
        let deployment = deployment(
            r#"
metadata: {name: qwen, generation: 1}
status:
  observedGeneration: 1
  conditions:
    - type: ReplicaFailure
      status: "True"
      reason: FailedCreate
      message: 'pods "qwen-abc" is forbidden: exceeded quota: gpus'
"#,
        );
        let status = compute(&model(""), 1, Some(&deployment), &[]);
        assert_eq!(
            condition(&status, "Ready"),
            (
                "False",
                "PodsNotCreated",
                "pods cannot be created: pods \"qwen-abc\" is forbidden: exceeded quota: gpus"
            )
        );
    }

    #[test]
    fn transition_time_moves_only_on_status_change() {
        let mut model = model("");
        let loading = compute(&model, 1, None, &[LOADING_POD]);
        model.status = Some(loading.clone());
        let pods = [pod(LOADING_POD)];
        let still_loading = compute_status(
            &model,
            1,
            Observed {
                deployment: None,
                pods: &pods,
            },
            at(500),
        );
        assert_eq!(still_loading, loading, "nothing changed, nothing to write");
        let pods = [pod(READY_POD)];
        let ready = compute_status(
            &model,
            1,
            Observed {
                deployment: None,
                pods: &pods,
            },
            at(900),
        );
        let time = |status: &InferenceModelStatus, type_: &str| {
            status
                .condition(type_)
                .unwrap()
                .last_transition_time
                .clone()
        };
        assert_eq!(time(&ready, "Ready"), at(900));
        assert_eq!(time(&ready, "Degraded"), at(100), "Degraded stayed False");
    }

    #[test]
    fn invalid_spec_sets_every_condition() {
        let mut model = model("");
        model.status = Some(InferenceModelStatus {
            replicas: 2,
            ready_replicas: 2,
            desired_replicas: 2,
            ..InferenceModelStatus::default()
        });
        let status = invalid_spec_status(&model, "spec.parallelism.tensor * ... must equal", at(5));
        assert_eq!(status.ready_replicas, 2);
        for type_ in ["Ready", "Progressing", "Degraded"] {
            assert_eq!(condition(&status, type_).1, "InvalidSpec");
        }
        assert_eq!(
            status.condition("Degraded").unwrap().status,
            condition_status::TRUE
        );
    }

    #[test]
    fn autoscaling_condition_follows_the_decision_on_builtin_models_only() {
        let builtin = model("  autoscaling: {minReplicas: 0, maxReplicas: 4}");
        let mut status = InferenceModelStatus::default();
        set_autoscaling_condition(&mut status, &builtin, None, at(10));
        assert!(status.condition(condition_types::AUTOSCALING).is_none());
        let decision = Published {
            replicas: 5,
            reason: Reason::ScaledUp,
            message: "2→5: load 37 / target 8 per replica".to_string(),
        };
        set_autoscaling_condition(&mut status, &builtin, Some(&decision), at(20));
        let condition = status.condition(condition_types::AUTOSCALING).unwrap();
        assert_eq!(
            (condition.status.as_str(), condition.reason.as_str()),
            (condition_status::TRUE, "ScaledUp")
        );
        assert_eq!(condition.message, "2→5: load 37 / target 8 per replica");

        let blind = Published {
            reason: Reason::NoMetrics,
            ..decision
        };
        set_autoscaling_condition(&mut status, &builtin, Some(&blind), at(30));
        let condition = status.condition(condition_types::AUTOSCALING).unwrap();
        assert_eq!(condition.status, condition_status::FALSE);
        set_autoscaling_condition(&mut status, &builtin, None, at(40));
        assert_eq!(
            status
                .condition(condition_types::AUTOSCALING)
                .unwrap()
                .reason,
            "NoMetrics",
            "kept until the autoscaler decides again"
        );

        let external = model("  autoscaling: {mode: External, maxReplicas: 4}");
        set_autoscaling_condition(&mut status, &external, Some(&blind), at(50));
        assert!(status.condition(condition_types::AUTOSCALING).is_none());
    }
}
