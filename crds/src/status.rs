//! The observed state of an InferenceModel, written by the operator.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Condition types.
pub mod condition_types {
    /// At least one replica serves requests (or the model is scaled to zero on purpose and will
    /// start on demand).
    pub const READY: &str = "Ready";
    /// The operator is moving the replicas towards the spec: starting, loading, rolling out.
    pub const PROGRESSING: &str = "Progressing";
    /// Something stops replicas from serving and needs attention: unschedulable, image pull
    /// failures, crash loops, an invalid spec.
    pub const DEGRADED: &str = "Degraded";
    /// Set on models with `autoscaling.mode: Builtin`: the built-in autoscaler's last decision
    /// and why (True while it decides from fresh load signals, False with `NoMetrics`).
    pub const AUTOSCALING: &str = "Autoscaling";
}

/// Condition reasons. Each one tells a person what to look at.
pub mod reasons {
    /// Pods cannot be scheduled, for example for lack of the requested GPUs.
    pub const UNSCHEDULABLE: &str = "Unschedulable";
    /// The engine image cannot be pulled.
    pub const IMAGE_PULL_FAILED: &str = "ImagePullFailed";
    /// The engine container keeps exiting (out of GPU memory, bad arguments, ...).
    pub const CRASH_LOOPING: &str = "CrashLooping";
    /// Replicas are downloading or loading weights.
    pub const LOADING: &str = "Loading";
    /// The autoscaler removed every replica for lack of traffic; the next request starts one.
    pub const SCALED_TO_ZERO: &str = "ScaledToZero";
    /// Replicas serve requests.
    pub const AVAILABLE: &str = "Available";
    /// A new revision of the replicas is replacing the old one.
    pub const ROLLING_OUT: &str = "RollingOut";
    /// The spec breaks a rule the API server could not check; the message names the field.
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// The engine container cannot be created from its configuration, for example because the
    /// Secret named by spec.cache.hfTokenSecretRef does not exist.
    pub const CONTAINER_CONFIG_ERROR: &str = "ContainerConfigError";
    /// The Deployment cannot create pods: a ResourceQuota, a LimitRange, Pod Security admission
    /// or a webhook rejects them.
    pub const PODS_NOT_CREATED: &str = "PodsNotCreated";
}

/// Values of a condition's `status`.
pub mod condition_status {
    /// The condition holds.
    pub const TRUE: &str = "True";
    /// The condition does not hold.
    pub const FALSE: &str = "False";
    /// The operator cannot tell yet.
    pub const UNKNOWN: &str = "Unknown";

    /// `True` or `False`.
    pub fn from_bool(value: bool) -> &'static str {
        if value {
            TRUE
        } else {
            FALSE
        }
    }
}

/// The observed state of an InferenceModel.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InferenceModelStatus {
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Engine pods that exist, ready or not (the scale subresource's status.replicas).
    #[serde(default)]
    pub replicas: i32,

    /// Engine pods ready to serve requests.
    #[serde(default)]
    pub ready_replicas: i32,

    /// Replicas the operator is aiming for: spec.replicas, or the autoscaler's choice.
    #[serde(default)]
    pub desired_replicas: i32,

    /// Label selector of the engine pods, in string form (the scale subresource's selector, used by HorizontalPodAutoscalers and KEDA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,

    /// Model IDs served: spec.model.name followed by the adapter names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub served_models: Vec<String>,

    /// Latest observations: Ready, Progressing and Degraded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend(
        "x-kubernetes-list-type" = "map",
        "x-kubernetes-list-map-keys" = ["type"]
    ))]
    pub conditions: Vec<Condition>,
}

impl InferenceModelStatus {
    /// The condition of type `type_`, if present.
    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        self.conditions
            .iter()
            .find(|condition| condition.type_ == type_)
    }

    /// Whether the Ready condition is True.
    pub fn is_ready(&self) -> bool {
        self.condition(condition_types::READY)
            .is_some_and(|condition| condition.status == condition_status::TRUE)
    }

    /// Insert or update a condition; see [`set_condition`].
    pub fn set_condition(&mut self, condition: Condition) -> bool {
        set_condition(&mut self.conditions, condition)
    }
}

/// Build a condition observed at `now` for `generation`.
pub fn new_condition(
    type_: &str,
    status: bool,
    reason: &str,
    message: impl Into<String>,
    generation: Option<i64>,
    now: Time,
) -> Condition {
    Condition {
        type_: type_.to_string(),
        status: condition_status::from_bool(status).to_string(),
        reason: reason.to_string(),
        message: message.into(),
        observed_generation: generation,
        last_transition_time: now,
    }
}

/// Insert `condition`, or update the one of the same type. lastTransitionTime only moves when
/// the status changes, as the Kubernetes API conventions require. Returns whether anything
/// other than that timestamp changed, so a caller can skip a no-op status write.
pub fn set_condition(conditions: &mut Vec<Condition>, mut condition: Condition) -> bool {
    let Some(existing) = conditions
        .iter_mut()
        .find(|existing| existing.type_ == condition.type_)
    else {
        conditions.push(condition);
        return true;
    };
    if existing.status == condition.status {
        condition.last_transition_time = existing.last_transition_time.clone();
    }
    let changed = *existing != condition;
    *existing = condition;
    changed
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn at(seconds: i64) -> Time {
        Time(Timestamp::from_second(seconds).unwrap())
    }

    #[test]
    fn set_condition_inserts_new_types() {
        let mut conditions = Vec::new();
        let ready = new_condition(
            condition_types::READY,
            false,
            reasons::LOADING,
            "loading weights",
            Some(1),
            at(10),
        );
        assert!(set_condition(&mut conditions, ready.clone()));
        assert_eq!(conditions, vec![ready]);
    }

    #[test]
    fn set_condition_keeps_transition_time_while_status_holds() {
        let mut conditions = vec![new_condition(
            condition_types::READY,
            false,
            reasons::LOADING,
            "loading weights",
            Some(1),
            at(10),
        )];
        let same = new_condition(
            condition_types::READY,
            false,
            reasons::LOADING,
            "loading weights",
            Some(1),
            at(20),
        );
        assert!(!set_condition(&mut conditions, same));
        assert_eq!(conditions[0].last_transition_time, at(10));

        let new_reason = new_condition(
            condition_types::READY,
            false,
            reasons::CRASH_LOOPING,
            "engine exited with code 1",
            Some(1),
            at(30),
        );
        assert!(set_condition(&mut conditions, new_reason));
        assert_eq!(conditions[0].reason, reasons::CRASH_LOOPING);
        assert_eq!(conditions[0].last_transition_time, at(10));
    }

    #[test]
    fn set_condition_moves_transition_time_on_status_change() {
        let mut status = InferenceModelStatus::default();
        status.set_condition(new_condition(
            condition_types::READY,
            false,
            reasons::LOADING,
            "",
            Some(1),
            at(10),
        ));
        assert!(!status.is_ready());
        assert!(status.set_condition(new_condition(
            condition_types::READY,
            true,
            reasons::AVAILABLE,
            "2/2 replicas ready",
            Some(1),
            at(40),
        )));
        assert!(status.is_ready());
        let ready = status.condition(condition_types::READY).unwrap();
        assert_eq!(ready.last_transition_time, at(40));
        assert_eq!(status.conditions.len(), 1);
    }
}
