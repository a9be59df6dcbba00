//! How many engine replicas a model should run.
//!
//! Today this is the seam the built-in autoscaler will plug into: [`desired_replicas`] is a
//! pure function of the spec and the last status. For `autoscaling.mode: Builtin` it keeps the
//! replica count the operator last chose (status.desiredReplicas), clamped to the bounds; the
//! autoscaler will replace "last chosen" with a decision from the gateway's load reports.

use kinfer_crds::{AutoscalingMode, InferenceModelSpec, InferenceModelStatus};

/// The replica count the Deployment should have.
///
/// - no `spec.autoscaling`: `spec.replicas`;
/// - mode `External`: `spec.replicas` (written by a HorizontalPodAutoscaler or KEDA through
///   the scale subresource), clamped to `[minReplicas, maxReplicas]`;
/// - mode `Builtin`: the count last chosen (`status.desiredReplicas`) clamped to the bounds;
///   before any status was written, `spec.replicas` clamped, so a new model starts with what
///   the user asked for.
pub fn desired_replicas(spec: &InferenceModelSpec, status: Option<&InferenceModelStatus>) -> i32 {
    let Some(autoscaling) = &spec.autoscaling else {
        return spec.replicas.max(0);
    };
    match autoscaling.mode {
        AutoscalingMode::External => spec.bounded_replicas(),
        AutoscalingMode::Builtin => {
            match status.filter(|status| status.observed_generation.is_some()) {
                Some(status) => clamp(
                    status.desired_replicas,
                    autoscaling.min_replicas,
                    autoscaling.max_replicas,
                ),
                None => spec.bounded_replicas(),
            }
        }
    }
}

/// `value` within `[min, max]`, tolerating an inverted range (min wins) and negative bounds.
fn clamp(value: i32, min: i32, max: i32) -> i32 {
    let min = min.max(0);
    value.max(min).min(max.max(min))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> InferenceModelSpec {
        serde_yaml::from_str(yaml).unwrap()
    }

    fn status(desired: i32) -> InferenceModelStatus {
        InferenceModelStatus {
            observed_generation: Some(1),
            desired_replicas: desired,
            ..InferenceModelStatus::default()
        }
    }

    #[test]
    fn without_autoscaling_spec_replicas_rule() {
        let spec = spec("model: {name: m}\nreplicas: 3");
        assert_eq!(desired_replicas(&spec, None), 3);
        assert_eq!(desired_replicas(&spec, Some(&status(7))), 3);
        let zero = super::tests::spec("model: {name: m}\nreplicas: 0");
        assert_eq!(desired_replicas(&zero, None), 0);
    }

    #[test]
    fn external_mode_follows_spec_replicas_within_bounds() {
        let spec = spec("model: {name: m}\nreplicas: 9\nautoscaling: {mode: External, minReplicas: 1, maxReplicas: 4}");
        assert_eq!(desired_replicas(&spec, Some(&status(2))), 4);
        let spec = super::tests::spec("model: {name: m}\nreplicas: 2\nautoscaling: {mode: External, minReplicas: 1, maxReplicas: 4}");
        assert_eq!(desired_replicas(&spec, Some(&status(3))), 2);
    }

    #[test]
    fn builtin_mode_keeps_its_last_choice_within_bounds() {
        let spec =
            spec("model: {name: m}\nreplicas: 1\nautoscaling: {minReplicas: 0, maxReplicas: 4}");
        assert_eq!(
            desired_replicas(&spec, None),
            1,
            "starts from spec.replicas"
        );
        assert_eq!(
            desired_replicas(&spec, Some(&InferenceModelStatus::default())),
            1
        );
        assert_eq!(
            desired_replicas(&spec, Some(&status(0))),
            0,
            "stays scaled to zero"
        );
        assert_eq!(desired_replicas(&spec, Some(&status(3))), 3);
        assert_eq!(
            desired_replicas(&spec, Some(&status(9))),
            4,
            "clamped to max"
        );
        let raised =
            super::tests::spec("model: {name: m}\nautoscaling: {minReplicas: 2, maxReplicas: 4}");
        assert_eq!(
            desired_replicas(&raised, Some(&status(0))),
            2,
            "clamped to min"
        );
    }

    #[test]
    fn clamp_tolerates_bad_bounds() {
        assert_eq!(clamp(3, 5, 2), 5);
        assert_eq!(clamp(-1, -3, 2), 0);
    }
}
