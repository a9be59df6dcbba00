//! kinfer's API: the `InferenceModel` custom resource (`inferencemodels.kinfer.dev/v1alpha1`).
//!
//! - [`spec`]: the types, with [`InferenceModelSpec`]'s resolved values (`gpus()`,
//!   `tensor_parallel()`, `source_uri()`, `served_model_ids()`, ...).
//! - [`status`]: status, condition types and reasons, and [`status::set_condition`].
//! - [`validation`]: the CEL rules the CRD carries and [`InferenceModelSpec::validate`], their
//!   Rust mirror.
//! - [`source`]: the `hf://`, `pvc://` and `s3://` source URIs.
//! - [`labels`]: label and annotation keys shared by the operator and the gateway.
//!
//! Also shared by the operator and the gateway, as the one crate both depend on:
//! - [`metrics_text`]: the reader of Prometheus and OpenMetrics text (vLLM's, the gateway's).
//! - [`metric_names`]: the metric names one of them exports and the other reads.
//! - [`duration`]: the duration grammar of their command-line flags.
//!
//! [`crd_yaml`] renders the CRD; `cargo run -p kinfer-crds --bin crdgen` prints it.
//! [`reference::reference_markdown`] renders `docs/inferencemodel.md` from it
//! (`cargo run -p kinfer-crds --bin crddoc`).

pub mod duration;
pub mod labels;
pub mod metric_names;
pub mod metrics_text;
pub mod reference;
pub mod source;
pub mod spec;
pub mod status;
pub mod validation;

pub use source::{ModelSource, ModelSourceError};
pub use spec::{
    AdapterSpec, AutoscalingMode, AutoscalingSpec, CacheAccessMode, CacheSpec, Dtype, EngineKind,
    EngineSpec, Feature, InferenceModel, InferenceModelSpec, ModelSpec, ParallelismSpec,
    PodTemplateSpec, ResourcesSpec, RoutingSpec, RoutingStrategy, SchedulingSpec, SecretKeyRef,
    StartupProbeSpec, VllmOptions,
};
pub use status::{condition_status, condition_types, reasons, InferenceModelStatus};
pub use validation::{rules, CelRule, SpecError};

use kube::CustomResourceExt;

/// Path of the committed CRD, relative to the workspace root.
pub const CRD_PATH: &str = "crds/yaml/inferencemodels.kinfer.dev.yaml";

/// Command that regenerates [`CRD_PATH`], run from the workspace root.
pub const REGENERATE_COMMAND: &str =
    "cargo run -p kinfer-crds --bin crdgen > crds/yaml/inferencemodels.kinfer.dev.yaml";

/// The InferenceModel CustomResourceDefinition as YAML, with a header saying how it was made.
pub fn crd_yaml() -> String {
    let crd = InferenceModel::crd();
    // Serializing a CRD built from plain data cannot fail; an error here is a bug in the types.
    let body = serde_yaml::to_string(&crd).expect("the CRD serializes to YAML");
    format!("# Generated from the kinfer-crds types; do not edit.\n# Regenerate: {REGENERATE_COMMAND}\n{body}")
}
