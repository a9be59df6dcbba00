//! Label and annotation keys shared by the operator (which writes them on engine pods) and the
//! gateway (which reads them to build its routing index), with their encoders and parsers.

use std::collections::BTreeMap;

use crate::spec::{Feature, InferenceModelSpec};

/// Name of the InferenceModel an object belongs to.
pub const MODEL: &str = "kinfer.dev/model";
/// Recommended label: the application, here the engine (`vllm`).
pub const NAME: &str = "app.kubernetes.io/name";
/// Recommended label: the instance, here the InferenceModel name.
pub const INSTANCE: &str = "app.kubernetes.io/instance";
/// Recommended label: the tool managing the object.
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// Recommended label: the role of the object.
pub const COMPONENT: &str = "app.kubernetes.io/component";

/// Value of [`MANAGED_BY`] on everything the operator creates.
pub const MANAGED_BY_OPERATOR: &str = "kinfer-operator";
/// Value of [`COMPONENT`] on engine pods and their Service.
pub const COMPONENT_ENGINE: &str = "engine";

/// Annotation keys.
pub mod annotations {
    /// Model IDs an engine pod serves, comma-separated: the base model, then the adapters.
    pub const SERVED_MODELS: &str = "kinfer.dev/served-models";
    /// Port of the engine's OpenAI-compatible server.
    pub const PORT: &str = "kinfer.dev/port";
    /// API families served, comma-separated: `TextGeneration`, `TextEmbedding`.
    pub const FEATURES: &str = "kinfer.dev/features";
    /// On gateway pods: port of the admin server whose `/metrics` the operator's autoscaler
    /// scrapes (in-flight and queued requests per model).
    pub const METRICS_PORT: &str = "kinfer.dev/metrics-port";
    /// Kubernetes' ReplicaSet hint: of the pods to remove, those with the lowest cost go first.
    /// The autoscaler lowers it on the least loaded engine pod before a scale-down.
    pub const POD_DELETION_COST: &str = "controller.kubernetes.io/pod-deletion-cost";
}

/// Labels selecting the engine pods of the InferenceModel `model_name`. Used as the Deployment
/// and Service selector and, in string form, as status.selector; keep it stable, since a
/// Deployment's selector cannot change.
pub fn selector_labels(model_name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MODEL.to_string(), model_name.to_string()),
        (COMPONENT.to_string(), COMPONENT_ENGINE.to_string()),
    ])
}

/// [`selector_labels`] as a label selector string, for status.selector.
pub fn selector_string(model_name: &str) -> String {
    to_selector_string(&selector_labels(model_name))
}

/// Labels of the engine pods (and the operator's other children) of `model_name`:
/// the selector labels plus the recommended `app.kubernetes.io` labels.
pub fn engine_labels(model_name: &str, spec: &InferenceModelSpec) -> BTreeMap<String, String> {
    let mut labels = selector_labels(model_name);
    labels.insert(NAME.to_string(), spec.engine.kind.app_name().to_string());
    labels.insert(INSTANCE.to_string(), model_name.to_string());
    labels.insert(MANAGED_BY.to_string(), MANAGED_BY_OPERATOR.to_string());
    labels
}

/// Annotations of the engine pods that the gateway routes on.
pub fn engine_annotations(spec: &InferenceModelSpec) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            annotations::SERVED_MODELS.to_string(),
            spec.served_model_ids().join(","),
        ),
        (annotations::PORT.to_string(), spec.engine.port.to_string()),
        (
            annotations::FEATURES.to_string(),
            format_features(spec.features()),
        ),
    ])
}

/// `key=value` pairs joined with commas, in key order.
pub fn to_selector_string(labels: &BTreeMap<String, String>) -> String {
    labels
        .iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Parse the [`annotations::SERVED_MODELS`] value. Empty items (stray commas) are dropped.
pub fn parse_served_models(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|id| !id.is_empty())
        .map(str::to_string)
        .collect()
}

/// Encode the [`annotations::FEATURES`] value.
pub fn format_features(features: &[Feature]) -> String {
    features
        .iter()
        .map(|feature| feature.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

/// Parse the [`annotations::FEATURES`] value. Names this version does not know are skipped, so
/// an older gateway keeps routing the features it understands.
pub fn parse_features(value: &str) -> Vec<Feature> {
    value
        .split(',')
        .filter_map(|name| Feature::parse(name.trim()))
        .collect()
}

/// Parse the [`annotations::PORT`] value.
pub fn parse_port(value: &str) -> Option<u16> {
    value.trim().parse().ok().filter(|port| *port != 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{AdapterSpec, InferenceModelSpec};

    fn spec() -> InferenceModelSpec {
        serde_yaml::from_str(
            r#"
model:
  name: Qwen/Qwen2.5-7B-Instruct
features: [TextGeneration, TextEmbedding]
adapters:
  - name: sql
    source: hf://org/sql-lora
"#,
        )
        .unwrap()
    }

    #[test]
    fn selector_is_model_and_component() {
        assert_eq!(
            selector_string("qwen"),
            "app.kubernetes.io/component=engine,kinfer.dev/model=qwen"
        );
    }

    #[test]
    fn engine_labels_include_selector_and_recommended_labels() {
        let labels = engine_labels("qwen", &spec());
        for (key, value) in selector_labels("qwen") {
            assert_eq!(labels.get(&key), Some(&value));
        }
        assert_eq!(labels[NAME], "vllm");
        assert_eq!(labels[INSTANCE], "qwen");
        assert_eq!(labels[MANAGED_BY], "kinfer-operator");
    }

    #[test]
    fn annotations_round_trip() {
        let mut spec = spec();
        spec.adapters.push(AdapterSpec {
            name: "chat".into(),
            source: "pvc://loras/chat".into(),
        });
        let annotations = engine_annotations(&spec);
        assert_eq!(
            annotations[annotations::SERVED_MODELS],
            "Qwen/Qwen2.5-7B-Instruct,sql,chat"
        );
        assert_eq!(
            parse_served_models(&annotations[annotations::SERVED_MODELS]),
            spec.served_model_ids()
        );
        assert_eq!(annotations[annotations::PORT], "8000");
        assert_eq!(parse_port(&annotations[annotations::PORT]), Some(8000));
        assert_eq!(
            annotations[annotations::FEATURES],
            "TextGeneration,TextEmbedding"
        );
        assert_eq!(
            parse_features(&annotations[annotations::FEATURES]),
            vec![Feature::TextGeneration, Feature::TextEmbedding]
        );
    }

    #[test]
    fn parsers_tolerate_noise() {
        assert_eq!(parse_served_models(" a, ,b,"), vec!["a", "b"]);
        assert_eq!(
            parse_features("TextEmbedding,SpeechToText"),
            vec![Feature::TextEmbedding]
        );
        assert_eq!(parse_port("0"), None);
        assert_eq!(parse_port("70000"), None);
        assert_eq!(parse_port("x"), None);
    }
}
