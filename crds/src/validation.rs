//! Admission rules of the CRD and their Rust mirror.
//!
//! Each [`CelRule`] is injected into the generated schema as an `x-kubernetes-validations` entry
//! (through the crate-private `CelRules` schemars transform), so the API server rejects invalid objects at
//! admission. [`InferenceModelSpec::validate`] checks the same rules in Rust, for the operator
//! (objects stored before a rule existed, or a CRD installed without them) and for unit tests.
//! Every error message starts with the CEL rule's message, so a user sees the same words from
//! `kubectl apply` and from the operator's `InvalidSpec` condition.
//!
//! Rules that read an optional field guard it with `has()`, and strings and lists they read
//! have a `maxLength`/`maxItems` so the API server's cost estimate stays within its budget.

use schemars::transform::Transform;
use serde::Serialize;

use crate::source::{ModelSource, ModelSourceError};
use crate::spec::{
    Feature, InferenceModelSpec, MAX_ADAPTERS, MAX_NAME_LENGTH, MAX_SOURCE_LENGTH,
    MIN_TERMINATION_GRACE_PERIOD_SECONDS,
};

/// One `x-kubernetes-validations` entry.
#[derive(Serialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CelRule {
    /// Where the rule sits in the object, `[]` standing for "each item": `spec.adapters[].name`.
    #[serde(skip)]
    pub location: &'static str,
    /// The CEL expression; `self` is the value at `location`.
    pub rule: &'static str,
    /// What the API server reports when the rule is false. Names the offending field.
    pub message: &'static str,
    /// Field the error is reported on, relative to `location`, when it is not `location` itself.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field_path: Option<&'static str>,
    // No `reason`: with FieldValueDuplicate the API server prints `Duplicate value: "array"`
    // and drops the message, so every rule keeps the default FieldValueInvalid.
}

/// A schemars transform appending CEL rules to a schema's `x-kubernetes-validations`.
pub(crate) struct CelRules(pub &'static [&'static CelRule]);

impl Transform for CelRules {
    fn transform(&mut self, schema: &mut schemars::Schema) {
        let entries = schema
            .ensure_object()
            .entry("x-kubernetes-validations")
            .or_insert_with(|| serde_json::Value::Array(Vec::new()));
        if let serde_json::Value::Array(entries) = entries {
            for rule in self.0 {
                entries.push(serde_json::json!(rule));
            }
        }
    }
}

/// The CEL rules of the CRD.
pub mod rules {
    use super::CelRule;

    // A macro rather than only a const so `concat!` can splice it into the rules.
    macro_rules! source_pattern {
        () => {
            "^(hf|pvc|s3)://[^/[:space:]]+(/[^[:space:]]*)?$"
        };
    }

    /// Regular expression (RE2 syntax) of a model or adapter source URI: a known scheme, a
    /// non-empty first segment, no whitespace. [`crate::ModelSource`] parses the same language.
    pub const SOURCE_PATTERN: &str = source_pattern!();

    /// `spec.model.name` must not be empty.
    pub const MODEL_NAME_NOT_EMPTY: CelRule = CelRule {
        location: "spec.model.name",
        rule: "self.size() > 0",
        message: "spec.model.name must not be empty",
        field_path: None,
    };

    /// Model IDs are joined with commas in the `kinfer.dev/served-models` annotation.
    pub const MODEL_NAME_NO_SEPARATORS: CelRule = CelRule {
        location: "spec.model.name",
        rule: "!self.matches('[,[:space:]]')",
        message: "spec.model.name must not contain commas or whitespace",
        field_path: None,
    };

    /// `spec.model.source` must use a scheme the operator can download from.
    pub const MODEL_SOURCE_SCHEME: CelRule = CelRule {
        location: "spec.model.source",
        rule: concat!("self.matches('", source_pattern!(), "')"),
        message: "spec.model.source must be hf://org/repo, pvc://claim/path or s3://bucket/prefix",
        field_path: None,
    };

    /// A revision only means something on the Hugging Face Hub. A missing source defaults to
    /// `hf://<name>`, so the rule only fires on an explicit non-hf source.
    pub const MODEL_REVISION_HF_ONLY: CelRule = CelRule {
        location: "spec.model",
        rule: "!has(self.revision) || !has(self.source) || self.source.startsWith('hf://')",
        message: "spec.model.revision is only supported with an hf:// spec.model.source",
        field_path: Some(".revision"),
    };

    /// `spec.engine.port` must be a TCP port.
    pub const ENGINE_PORT_RANGE: CelRule = CelRule {
        location: "spec.engine.port",
        rule: "self >= 1 && self <= 65535",
        message: "spec.engine.port must be between 1 and 65535",
        field_path: None,
    };

    /// The grace period must leave vLLM at least one second of `--shutdown-timeout` after the
    /// preStop sleep and the exit margin
    /// ([`MIN_TERMINATION_GRACE_PERIOD_SECONDS`](crate::spec::MIN_TERMINATION_GRACE_PERIOD_SECONDS);
    /// a test checks the literal against it).
    pub const TERMINATION_GRACE_PERIOD_MINIMUM: CelRule = CelRule {
        location: "spec.engine.terminationGracePeriodSeconds",
        rule: "self >= 16",
        message: "spec.engine.terminationGracePeriodSeconds must be >= 16 (10 s preStop sleep, then at least 1 s for in-flight requests, then a 5 s margin)",
        field_path: None,
    };

    /// vLLM runs a model either as a generator or as a pooling (embedding) model, never both.
    pub const FEATURES_GENERATION_OR_EMBEDDING: CelRule = CelRule {
        location: "spec.features",
        rule: "!(self.exists(f, f == 'TextGeneration') && self.exists(f, f == 'TextEmbedding'))",
        message: "spec.features must not contain both TextGeneration and TextEmbedding: vLLM serves a model either for generation or for embeddings; use a second InferenceModel for the other",
        field_path: None,
    };

    /// `spec.resources.gpus` must not be negative (0 is CPU only).
    pub const GPUS_NOT_NEGATIVE: CelRule = CelRule {
        location: "spec.resources.gpus",
        rule: "self >= 0",
        message: "spec.resources.gpus must be >= 0",
        field_path: None,
    };

    /// vLLM's --gpu-memory-utilization is a fraction.
    pub const GPU_MEMORY_UTILIZATION_RANGE: CelRule = CelRule {
        location: "spec.engine.vllm.gpuMemoryUtilization",
        rule: "self > 0.0 && self <= 1.0",
        message: "spec.engine.vllm.gpuMemoryUtilization must be > 0 and <= 1",
        field_path: None,
    };

    /// Every GPU of a replica holds one shard: tensor x pipeline = gpus, with tensor defaulting
    /// to gpus / pipeline (so an unset tensor only needs pipeline to divide gpus). The values
    /// are resolved the way the API server's defaults and the operator resolve them; CPU-only
    /// models (gpus 0) are not checked, and out-of-range values are left to their own rules.
    pub const PARALLELISM_MATCHES_GPUS: CelRule = CelRule {
        location: "spec",
        rule: "!has(self.parallelism) \
               || (has(self.resources) && has(self.resources.gpus) ? self.resources.gpus : 1) <= 0 \
               || (has(self.parallelism.pipeline) ? self.parallelism.pipeline : 1) < 1 \
               || (has(self.parallelism.tensor) \
                   ? self.parallelism.tensor * (has(self.parallelism.pipeline) ? self.parallelism.pipeline : 1) \
                     == (has(self.resources) && has(self.resources.gpus) ? self.resources.gpus : 1) \
                   : (has(self.resources) && has(self.resources.gpus) ? self.resources.gpus : 1) \
                     % (has(self.parallelism.pipeline) ? self.parallelism.pipeline : 1) == 0)",
        message: "spec.parallelism.tensor * spec.parallelism.pipeline must equal spec.resources.gpus (tensor defaults to gpus / pipeline)",
        field_path: Some(".parallelism"),
    };

    /// Adapter names are model IDs, so they must be unique.
    pub const ADAPTER_NAMES_UNIQUE: CelRule = CelRule {
        location: "spec.adapters",
        rule: "self.all(a, self.exists_one(b, b.name == a.name))",
        message: "spec.adapters[].name must be unique",
        field_path: None,
    };

    /// An adapter name must not shadow the base model's ID.
    pub const ADAPTER_NAME_NOT_MODEL_NAME: CelRule = CelRule {
        location: "spec",
        rule: "!has(self.adapters) || self.adapters.all(a, a.name != self.model.name)",
        message: "spec.adapters[].name must differ from spec.model.name",
        field_path: Some(".adapters"),
    };

    /// `spec.adapters[].name` must not be empty.
    pub const ADAPTER_NAME_NOT_EMPTY: CelRule = CelRule {
        location: "spec.adapters[].name",
        rule: "self.size() > 0",
        message: "spec.adapters[].name must not be empty",
        field_path: None,
    };

    /// Adapter names are joined with commas in the `kinfer.dev/served-models` annotation.
    pub const ADAPTER_NAME_NO_SEPARATORS: CelRule = CelRule {
        location: "spec.adapters[].name",
        rule: "!self.matches('[,[:space:]]')",
        message: "spec.adapters[].name must not contain commas or whitespace",
        field_path: None,
    };

    /// `spec.adapters[].source` must use a scheme the operator can download from.
    pub const ADAPTER_SOURCE_SCHEME: CelRule = CelRule {
        location: "spec.adapters[].source",
        rule: concat!("self.matches('", source_pattern!(), "')"),
        message:
            "spec.adapters[].source must be hf://org/repo, pvc://claim/path or s3://bucket/prefix",
        field_path: None,
    };

    /// The autoscaling bounds must form a range.
    pub const AUTOSCALING_MIN_LE_MAX: CelRule = CelRule {
        location: "spec.autoscaling",
        rule: "!has(self.minReplicas) || !has(self.maxReplicas) || self.minReplicas <= self.maxReplicas",
        message: "spec.autoscaling.minReplicas must be <= spec.autoscaling.maxReplicas",
        field_path: Some(".minReplicas"),
    };

    /// Every rule, in the order [`InferenceModelSpec::validate`](crate::InferenceModelSpec::validate) checks them.
    pub const ALL: &[&CelRule] = &[
        &MODEL_NAME_NOT_EMPTY,
        &MODEL_NAME_NO_SEPARATORS,
        &MODEL_SOURCE_SCHEME,
        &MODEL_REVISION_HF_ONLY,
        &ENGINE_PORT_RANGE,
        &GPU_MEMORY_UTILIZATION_RANGE,
        &TERMINATION_GRACE_PERIOD_MINIMUM,
        &GPUS_NOT_NEGATIVE,
        &PARALLELISM_MATCHES_GPUS,
        &FEATURES_GENERATION_OR_EMBEDDING,
        &ADAPTER_NAME_NOT_EMPTY,
        &ADAPTER_NAME_NO_SEPARATORS,
        &ADAPTER_SOURCE_SCHEME,
        &ADAPTER_NAMES_UNIQUE,
        &ADAPTER_NAME_NOT_MODEL_NAME,
        &AUTOSCALING_MIN_LE_MAX,
    ];
}

/// Why an InferenceModel spec is invalid. The message names the field and starts with the
/// message of the matching CEL rule, when there is one.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum SpecError {
    /// See [`rules::MODEL_NAME_NOT_EMPTY`].
    #[error("{}", rules::MODEL_NAME_NOT_EMPTY.message)]
    ModelNameEmpty,

    /// See [`rules::MODEL_NAME_NO_SEPARATORS`].
    #[error("{} (got {name:?})", rules::MODEL_NAME_NO_SEPARATORS.message)]
    ModelNameSeparators { name: String },

    /// See [`rules::MODEL_SOURCE_SCHEME`].
    #[error("{}: {source}", rules::MODEL_SOURCE_SCHEME.message)]
    ModelSource {
        #[source]
        source: ModelSourceError,
    },

    /// See [`rules::MODEL_REVISION_HF_ONLY`].
    #[error("{} (source is {source_uri:?})", rules::MODEL_REVISION_HF_ONLY.message)]
    RevisionWithoutHuggingFace { source_uri: String },

    /// See [`rules::ENGINE_PORT_RANGE`].
    #[error("{} (got {port})", rules::ENGINE_PORT_RANGE.message)]
    PortOutOfRange { port: i32 },

    /// See [`rules::GPU_MEMORY_UTILIZATION_RANGE`].
    #[error("{} (got {value})", rules::GPU_MEMORY_UTILIZATION_RANGE.message)]
    GpuMemoryUtilizationOutOfRange { value: f64 },

    /// See [`rules::TERMINATION_GRACE_PERIOD_MINIMUM`].
    #[error("{} (got {seconds})", rules::TERMINATION_GRACE_PERIOD_MINIMUM.message)]
    TerminationGracePeriodTooShort { seconds: i32 },

    /// See [`rules::GPUS_NOT_NEGATIVE`].
    #[error("{} (got {gpus})", rules::GPUS_NOT_NEGATIVE.message)]
    NegativeGpus { gpus: i32 },

    /// See [`rules::PARALLELISM_MATCHES_GPUS`].
    #[error(
        "{} (got tensor={}, pipeline={pipeline}, gpus={gpus})",
        rules::PARALLELISM_MATCHES_GPUS.message,
        tensor.map_or_else(|| "unset".to_string(), |tensor| tensor.to_string())
    )]
    ParallelismMismatch {
        tensor: Option<i32>,
        pipeline: i32,
        gpus: i32,
    },

    /// See [`rules::ADAPTER_NAME_NOT_EMPTY`].
    #[error("{} (spec.adapters[{index}])", rules::ADAPTER_NAME_NOT_EMPTY.message)]
    AdapterNameEmpty { index: usize },

    /// See [`rules::ADAPTER_NAME_NO_SEPARATORS`].
    #[error("{} (got {name:?})", rules::ADAPTER_NAME_NO_SEPARATORS.message)]
    AdapterNameSeparators { index: usize, name: String },

    /// See [`rules::ADAPTER_SOURCE_SCHEME`].
    #[error("{} (adapter {name:?}): {source}", rules::ADAPTER_SOURCE_SCHEME.message)]
    AdapterSource {
        index: usize,
        name: String,
        #[source]
        source: ModelSourceError,
    },

    /// See [`rules::ADAPTER_NAMES_UNIQUE`].
    #[error("{} ({name:?} appears more than once)", rules::ADAPTER_NAMES_UNIQUE.message)]
    DuplicateAdapterName { index: usize, name: String },

    /// See [`rules::ADAPTER_NAME_NOT_MODEL_NAME`].
    #[error("{} (both are {name:?})", rules::ADAPTER_NAME_NOT_MODEL_NAME.message)]
    AdapterNameIsModelName { index: usize, name: String },

    /// See [`rules::AUTOSCALING_MIN_LE_MAX`].
    #[error("{} (got minReplicas={min}, maxReplicas={max})", rules::AUTOSCALING_MIN_LE_MAX.message)]
    AutoscalingMinAboveMax { min: i32, max: i32 },

    /// An OpenAPI `minimum` of the schema.
    #[error("{field} must be >= {minimum} (got {value})")]
    BelowMinimum {
        field: &'static str,
        minimum: i32,
        value: i32,
    },

    /// An OpenAPI `maxLength` of the schema.
    #[error("{field} must be at most {max} characters (got {length})")]
    TooLong {
        field: String,
        max: usize,
        length: usize,
    },

    /// The OpenAPI `maxItems` of spec.adapters.
    #[error("spec.adapters must have at most {max} items (got {count})", max = MAX_ADAPTERS)]
    TooManyAdapters { count: usize },

    /// The OpenAPI `minItems` of spec.features.
    #[error("spec.features must list at least one feature")]
    NoFeatures,

    /// spec.features is a set.
    #[error("spec.features must not repeat {feature}")]
    DuplicateFeature { feature: &'static str },

    /// See [`rules::FEATURES_GENERATION_OR_EMBEDDING`].
    #[error("{}", rules::FEATURES_GENERATION_OR_EMBEDDING.message)]
    GenerationAndEmbedding,
}

impl SpecError {
    /// Path of the offending field, for example `spec.adapters[1].source`.
    pub fn field(&self) -> String {
        match self {
            SpecError::ModelNameEmpty | SpecError::ModelNameSeparators { .. } => {
                "spec.model.name".into()
            }
            SpecError::ModelSource { .. } => "spec.model.source".into(),
            SpecError::RevisionWithoutHuggingFace { .. } => "spec.model.revision".into(),
            SpecError::PortOutOfRange { .. } => "spec.engine.port".into(),
            SpecError::GpuMemoryUtilizationOutOfRange { .. } => {
                "spec.engine.vllm.gpuMemoryUtilization".into()
            }
            SpecError::TerminationGracePeriodTooShort { .. } => {
                "spec.engine.terminationGracePeriodSeconds".into()
            }
            SpecError::NegativeGpus { .. } => "spec.resources.gpus".into(),
            SpecError::ParallelismMismatch { .. } => "spec.parallelism".into(),
            SpecError::AdapterNameEmpty { index }
            | SpecError::AdapterNameSeparators { index, .. }
            | SpecError::DuplicateAdapterName { index, .. }
            | SpecError::AdapterNameIsModelName { index, .. } => {
                format!("spec.adapters[{index}].name")
            }
            SpecError::AdapterSource { index, .. } => format!("spec.adapters[{index}].source"),
            SpecError::AutoscalingMinAboveMax { .. } => "spec.autoscaling.minReplicas".into(),
            SpecError::BelowMinimum { field, .. } => (*field).into(),
            SpecError::TooLong { field, .. } => field.clone(),
            SpecError::TooManyAdapters { .. } => "spec.adapters".into(),
            SpecError::NoFeatures
            | SpecError::DuplicateFeature { .. }
            | SpecError::GenerationAndEmbedding => "spec.features".into(),
        }
    }

    /// The CEL rule this error mirrors, if it mirrors one (the others mirror OpenAPI keywords).
    pub fn rule(&self) -> Option<&'static CelRule> {
        Some(match self {
            SpecError::ModelNameEmpty => &rules::MODEL_NAME_NOT_EMPTY,
            SpecError::ModelNameSeparators { .. } => &rules::MODEL_NAME_NO_SEPARATORS,
            SpecError::ModelSource { .. } => &rules::MODEL_SOURCE_SCHEME,
            SpecError::RevisionWithoutHuggingFace { .. } => &rules::MODEL_REVISION_HF_ONLY,
            SpecError::PortOutOfRange { .. } => &rules::ENGINE_PORT_RANGE,
            SpecError::GpuMemoryUtilizationOutOfRange { .. } => {
                &rules::GPU_MEMORY_UTILIZATION_RANGE
            }
            SpecError::TerminationGracePeriodTooShort { .. } => {
                &rules::TERMINATION_GRACE_PERIOD_MINIMUM
            }
            SpecError::NegativeGpus { .. } => &rules::GPUS_NOT_NEGATIVE,
            SpecError::ParallelismMismatch { .. } => &rules::PARALLELISM_MATCHES_GPUS,
            SpecError::AdapterNameEmpty { .. } => &rules::ADAPTER_NAME_NOT_EMPTY,
            SpecError::AdapterNameSeparators { .. } => &rules::ADAPTER_NAME_NO_SEPARATORS,
            SpecError::AdapterSource { .. } => &rules::ADAPTER_SOURCE_SCHEME,
            SpecError::DuplicateAdapterName { .. } => &rules::ADAPTER_NAMES_UNIQUE,
            SpecError::AdapterNameIsModelName { .. } => &rules::ADAPTER_NAME_NOT_MODEL_NAME,
            SpecError::AutoscalingMinAboveMax { .. } => &rules::AUTOSCALING_MIN_LE_MAX,
            SpecError::GenerationAndEmbedding => &rules::FEATURES_GENERATION_OR_EMBEDDING,
            SpecError::BelowMinimum { .. }
            | SpecError::TooLong { .. }
            | SpecError::TooManyAdapters { .. }
            | SpecError::NoFeatures
            | SpecError::DuplicateFeature { .. } => return None,
        })
    }

    /// Low-cardinality label for metrics and logs.
    pub fn metric_label(&self) -> &'static str {
        match self {
            SpecError::ModelNameEmpty => "model_name_empty",
            SpecError::ModelNameSeparators { .. } => "model_name_separators",
            SpecError::ModelSource { .. } => "model_source",
            SpecError::RevisionWithoutHuggingFace { .. } => "revision_without_hf",
            SpecError::PortOutOfRange { .. } => "port_out_of_range",
            SpecError::GpuMemoryUtilizationOutOfRange { .. } => "gpu_memory_utilization",
            SpecError::TerminationGracePeriodTooShort { .. } => "termination_grace_period",
            SpecError::NegativeGpus { .. } => "negative_gpus",
            SpecError::ParallelismMismatch { .. } => "parallelism_mismatch",
            SpecError::AdapterNameEmpty { .. } => "adapter_name_empty",
            SpecError::AdapterNameSeparators { .. } => "adapter_name_separators",
            SpecError::AdapterSource { .. } => "adapter_source",
            SpecError::DuplicateAdapterName { .. } => "duplicate_adapter_name",
            SpecError::AdapterNameIsModelName { .. } => "adapter_name_is_model_name",
            SpecError::AutoscalingMinAboveMax { .. } => "autoscaling_min_above_max",
            SpecError::BelowMinimum { .. } => "below_minimum",
            SpecError::TooLong { .. } => "too_long",
            SpecError::TooManyAdapters { .. } => "too_many_adapters",
            SpecError::NoFeatures => "no_features",
            SpecError::DuplicateFeature { .. } => "duplicate_feature",
            SpecError::GenerationAndEmbedding => "generation_and_embedding",
        }
    }
}

impl InferenceModelSpec {
    /// Check the spec against the CRD's admission rules (CEL rules and the OpenAPI bounds);
    /// the first violation found, walking the spec top to bottom.
    pub fn validate(&self) -> Result<(), SpecError> {
        match self.validation_errors().into_iter().next() {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    /// Every violation of the CRD's admission rules, so a user can fix them in one go.
    pub fn validation_errors(&self) -> Vec<SpecError> {
        let mut errors = Vec::new();
        self.check_model(&mut errors);
        self.check_engine(&mut errors);
        self.check_resources(&mut errors);
        self.check_features(&mut errors);
        self.check_adapters(&mut errors);
        self.check_replicas(&mut errors);
        errors
    }

    fn check_model(&self, errors: &mut Vec<SpecError>) {
        let name = &self.model.name;
        check_length(errors, "spec.model.name", name, MAX_NAME_LENGTH);
        if name.is_empty() {
            errors.push(SpecError::ModelNameEmpty);
        }
        if name.chars().any(is_separator) {
            errors.push(SpecError::ModelNameSeparators { name: name.clone() });
        }
        if let Some(source) = &self.model.source {
            check_length(errors, "spec.model.source", source, MAX_SOURCE_LENGTH);
            if let Err(source) = source.parse::<ModelSource>() {
                errors.push(SpecError::ModelSource { source });
            }
            if self.model.revision.is_some() && !source.starts_with("hf://") {
                errors.push(SpecError::RevisionWithoutHuggingFace {
                    source_uri: source.clone(),
                });
            }
        }
        if let Some(revision) = &self.model.revision {
            check_length(errors, "spec.model.revision", revision, MAX_NAME_LENGTH);
        }
    }

    fn check_engine(&self, errors: &mut Vec<SpecError>) {
        let port = self.engine.port;
        if !(1..=65535).contains(&port) {
            errors.push(SpecError::PortOutOfRange { port });
        }
        if let Some(vllm) = &self.engine.vllm {
            if let Some(value) = vllm.gpu_memory_utilization {
                // Written so that NaN fails too.
                if !(value > 0.0 && value <= 1.0) {
                    errors.push(SpecError::GpuMemoryUtilizationOutOfRange { value });
                }
            }
            if let Some(max_model_len) = vllm.max_model_len {
                check_minimum(errors, "spec.engine.vllm.maxModelLen", 1, max_model_len);
            }
        }
        let seconds = self.engine.termination_grace_period_seconds;
        if seconds < MIN_TERMINATION_GRACE_PERIOD_SECONDS {
            errors.push(SpecError::TerminationGracePeriodTooShort { seconds });
        }
    }

    fn check_resources(&self, errors: &mut Vec<SpecError>) {
        let gpus = self.resources.gpus;
        if gpus < 0 {
            errors.push(SpecError::NegativeGpus { gpus });
        }
        let pipeline = self.parallelism.pipeline;
        check_minimum(errors, "spec.parallelism.pipeline", 1, pipeline);
        if let Some(tensor) = self.parallelism.tensor {
            check_minimum(errors, "spec.parallelism.tensor", 1, tensor);
        }
        // Mirrors PARALLELISM_MATCHES_GPUS: skipped where other rules already report.
        if gpus > 0 && pipeline >= 1 {
            let matches = match self.parallelism.tensor {
                Some(tensor) => i64::from(tensor) * i64::from(pipeline) == i64::from(gpus),
                None => gpus % pipeline == 0,
            };
            if !matches {
                errors.push(SpecError::ParallelismMismatch {
                    tensor: self.parallelism.tensor,
                    pipeline,
                    gpus,
                });
            }
        }
    }

    fn check_features(&self, errors: &mut Vec<SpecError>) {
        if self.features.is_empty() {
            errors.push(SpecError::NoFeatures);
        }
        for (index, feature) in self.features.iter().enumerate() {
            if self.features[..index].contains(feature) {
                errors.push(SpecError::DuplicateFeature {
                    feature: feature.as_str(),
                });
            }
        }
        if self.serves(Feature::TextGeneration) && self.serves(Feature::TextEmbedding) {
            errors.push(SpecError::GenerationAndEmbedding);
        }
    }

    fn check_adapters(&self, errors: &mut Vec<SpecError>) {
        if self.adapters.len() > MAX_ADAPTERS {
            errors.push(SpecError::TooManyAdapters {
                count: self.adapters.len(),
            });
        }
        for (index, adapter) in self.adapters.iter().enumerate() {
            let name = &adapter.name;
            check_length(
                errors,
                &format!("spec.adapters[{index}].name"),
                name,
                MAX_NAME_LENGTH,
            );
            if name.is_empty() {
                errors.push(SpecError::AdapterNameEmpty { index });
            }
            if name.chars().any(is_separator) {
                errors.push(SpecError::AdapterNameSeparators {
                    index,
                    name: name.clone(),
                });
            }
            check_length(
                errors,
                &format!("spec.adapters[{index}].source"),
                &adapter.source,
                MAX_SOURCE_LENGTH,
            );
            if let Err(source) = adapter.source.parse::<ModelSource>() {
                errors.push(SpecError::AdapterSource {
                    index,
                    name: name.clone(),
                    source,
                });
            }
        }
        // Report each repeated name once, at its second occurrence.
        for (index, adapter) in self.adapters.iter().enumerate() {
            let earlier = &self.adapters[..index];
            let first_repeat = earlier.iter().filter(|a| a.name == adapter.name).count() == 1;
            if first_repeat {
                errors.push(SpecError::DuplicateAdapterName {
                    index,
                    name: adapter.name.clone(),
                });
            }
        }
        for (index, adapter) in self.adapters.iter().enumerate() {
            if adapter.name == self.model.name {
                errors.push(SpecError::AdapterNameIsModelName {
                    index,
                    name: adapter.name.clone(),
                });
            }
        }
    }

    fn check_replicas(&self, errors: &mut Vec<SpecError>) {
        check_minimum(errors, "spec.replicas", 0, self.replicas);
        if let Some(autoscaling) = &self.autoscaling {
            check_minimum(
                errors,
                "spec.autoscaling.minReplicas",
                0,
                autoscaling.min_replicas,
            );
            check_minimum(
                errors,
                "spec.autoscaling.maxReplicas",
                1,
                autoscaling.max_replicas,
            );
            check_minimum(
                errors,
                "spec.autoscaling.targetRequestsPerReplica",
                1,
                autoscaling.target_requests_per_replica,
            );
            check_minimum(
                errors,
                "spec.autoscaling.scaleDownDelaySeconds",
                0,
                autoscaling.scale_down_delay_seconds,
            );
            check_minimum(
                errors,
                "spec.autoscaling.idleSecondsBeforeScaleToZero",
                0,
                autoscaling.idle_seconds_before_scale_to_zero,
            );
            if autoscaling.min_replicas > autoscaling.max_replicas {
                errors.push(SpecError::AutoscalingMinAboveMax {
                    min: autoscaling.min_replicas,
                    max: autoscaling.max_replicas,
                });
            }
        }
        if let Some(probe) = &self.startup_probe {
            check_minimum(
                errors,
                "spec.startupProbe.startupTimeoutSeconds",
                1,
                probe.startup_timeout_seconds,
            );
            check_minimum(
                errors,
                "spec.startupProbe.periodSeconds",
                1,
                probe.period_seconds,
            );
        }
    }
}

/// The characters `[,[:space:]]` of the CEL rules: a comma or ASCII whitespace.
pub(crate) fn is_separator(c: char) -> bool {
    c == ',' || is_posix_space(c)
}

/// RE2's `[:space:]`: ASCII whitespace including vertical tab (unlike `char::is_ascii_whitespace`).
pub(crate) fn is_posix_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0B' | '\x0C')
}

fn check_minimum(errors: &mut Vec<SpecError>, field: &'static str, minimum: i32, value: i32) {
    if value < minimum {
        errors.push(SpecError::BelowMinimum {
            field,
            minimum,
            value,
        });
    }
}

/// OpenAPI's maxLength counts Unicode code points.
fn check_length(errors: &mut Vec<SpecError>, field: &str, value: &str, max: usize) {
    let length = value.chars().count();
    if length > max {
        errors.push(SpecError::TooLong {
            field: field.to_string(),
            max,
            length,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{
        AdapterSpec, AutoscalingSpec, StartupProbeSpec, VllmOptions, PRE_STOP_SLEEP_SECONDS,
        SHUTDOWN_MARGIN_SECONDS,
    };

    fn valid() -> InferenceModelSpec {
        serde_yaml::from_str(
            r#"
model:
  name: Qwen/Qwen2.5-7B-Instruct
resources:
  gpus: 2
adapters:
  - name: sql
    source: hf://org/sql-lora
"#,
        )
        .unwrap()
    }

    fn adapter(name: &str, source: &str) -> AdapterSpec {
        AdapterSpec {
            name: name.into(),
            source: source.into(),
        }
    }

    fn autoscaling(min: i32, max: i32) -> AutoscalingSpec {
        serde_json::from_value(serde_json::json!({"minReplicas": min, "maxReplicas": max})).unwrap()
    }

    /// The only error of `spec`, checked to name `field` and, for CEL mirrors, to start with
    /// the rule's message.
    fn only_error(spec: &InferenceModelSpec, field: &str) -> SpecError {
        let errors = spec.validation_errors();
        assert_eq!(errors.len(), 1, "{errors:?}");
        let error = errors.into_iter().next().unwrap();
        assert_eq!(error.field(), field, "{error}");
        if let Some(rule) = error.rule() {
            assert!(error.to_string().starts_with(rule.message), "{error}");
        }
        assert!(error.to_string().contains(field.split('[').next().unwrap()));
        // Compared as text: NaN (a possible value) is not equal to itself.
        assert_eq!(spec.validate().unwrap_err().to_string(), error.to_string());
        error
    }

    #[test]
    fn valid_spec_passes() {
        assert_eq!(valid().validate(), Ok(()));
        assert!(valid().validation_errors().is_empty());
    }

    #[test]
    fn model_name_must_not_be_empty() {
        let mut spec = valid();
        spec.model.name = String::new();
        let error = only_error(&spec, "spec.model.name");
        assert_eq!(error, SpecError::ModelNameEmpty);
        assert_eq!(error.rule(), Some(&rules::MODEL_NAME_NOT_EMPTY));
    }

    #[test]
    fn model_name_must_not_contain_separators() {
        for name in ["a,b", "a b", "a\tb", "a\x0Bb"] {
            let mut spec = valid();
            spec.model.name = name.into();
            assert!(matches!(
                only_error(&spec, "spec.model.name"),
                SpecError::ModelNameSeparators { .. }
            ));
        }
    }

    #[test]
    fn model_source_needs_a_known_scheme() {
        for source in [
            "gs://bucket/model",
            "Qwen/Qwen2.5",
            "hf://",
            "s3://bucket/my model",
        ] {
            let mut spec = valid();
            spec.model.source = Some(source.into());
            let error = only_error(&spec, "spec.model.source");
            assert!(matches!(error, SpecError::ModelSource { .. }), "{source}");
            assert!(std::error::Error::source(&error).is_some());
        }
    }

    #[test]
    fn revision_needs_an_hf_source() {
        let mut spec = valid();
        spec.model.revision = Some("main".into());
        assert_eq!(spec.validate(), Ok(()), "the default source is hf://");
        spec.model.source = Some("s3://bucket/qwen".into());
        assert!(matches!(
            only_error(&spec, "spec.model.revision"),
            SpecError::RevisionWithoutHuggingFace { .. }
        ));
    }

    #[test]
    fn port_must_be_a_tcp_port() {
        for port in [0, -1, 65536] {
            let mut spec = valid();
            spec.engine.port = port;
            assert_eq!(
                only_error(&spec, "spec.engine.port"),
                SpecError::PortOutOfRange { port }
            );
        }
        let mut spec = valid();
        spec.engine.port = 65535;
        assert_eq!(spec.validate(), Ok(()));
    }

    #[test]
    fn gpu_memory_utilization_is_a_fraction() {
        for value in [0.0, -0.5, 1.01, f64::NAN] {
            let mut spec = valid();
            spec.engine.vllm = Some(VllmOptions {
                gpu_memory_utilization: Some(value),
                ..VllmOptions::default()
            });
            assert!(matches!(
                only_error(&spec, "spec.engine.vllm.gpuMemoryUtilization"),
                SpecError::GpuMemoryUtilizationOutOfRange { .. }
            ));
        }
        let mut spec = valid();
        spec.engine.vllm = Some(VllmOptions {
            gpu_memory_utilization: Some(1.0),
            ..VllmOptions::default()
        });
        assert_eq!(spec.validate(), Ok(()));
    }

    #[test]
    fn gpus_must_not_be_negative() {
        let mut spec = valid();
        spec.resources.gpus = -1;
        assert_eq!(
            only_error(&spec, "spec.resources.gpus"),
            SpecError::NegativeGpus { gpus: -1 }
        );
    }

    #[test]
    fn parallelism_must_use_every_gpu() {
        let mut spec = valid();
        spec.resources.gpus = 4;
        spec.parallelism.tensor = Some(2);
        assert_eq!(
            only_error(&spec, "spec.parallelism"),
            SpecError::ParallelismMismatch {
                tensor: Some(2),
                pipeline: 1,
                gpus: 4
            }
        );
        spec.parallelism.pipeline = 2;
        assert_eq!(spec.validate(), Ok(()));

        // tensor unset: pipeline must divide gpus.
        spec.parallelism.tensor = None;
        spec.parallelism.pipeline = 3;
        let error = only_error(&spec, "spec.parallelism");
        assert!(error.to_string().contains("tensor=unset"), "{error}");
        spec.parallelism.pipeline = 4;
        assert_eq!(spec.validate(), Ok(()));
    }

    #[test]
    fn parallelism_is_not_checked_for_cpu_only_models() {
        let mut spec = valid();
        spec.resources.gpus = 0;
        spec.parallelism.tensor = Some(2);
        assert_eq!(spec.validate(), Ok(()));
    }

    #[test]
    fn parallelism_minimums_are_reported_once() {
        let mut spec = valid();
        spec.parallelism.pipeline = 0;
        assert_eq!(
            only_error(&spec, "spec.parallelism.pipeline"),
            SpecError::BelowMinimum {
                field: "spec.parallelism.pipeline",
                minimum: 1,
                value: 0
            }
        );
    }

    #[test]
    fn adapter_names_must_be_unique() {
        let mut spec = valid();
        spec.adapters.push(adapter("chat", "hf://org/chat-lora"));
        spec.adapters.push(adapter("sql", "pvc://loras/sql"));
        spec.adapters.push(adapter("sql", "s3://loras/sql"));
        assert_eq!(
            only_error(&spec, "spec.adapters[2].name"),
            SpecError::DuplicateAdapterName {
                index: 2,
                name: "sql".into()
            }
        );
    }

    #[test]
    fn adapter_name_must_differ_from_model_name() {
        let mut spec = valid();
        spec.adapters[0].name = spec.model.name.clone();
        assert!(matches!(
            only_error(&spec, "spec.adapters[0].name"),
            SpecError::AdapterNameIsModelName { index: 0, .. }
        ));
    }

    #[test]
    fn adapter_name_must_not_be_empty_or_contain_separators() {
        let mut spec = valid();
        spec.adapters[0].name = String::new();
        assert_eq!(
            only_error(&spec, "spec.adapters[0].name"),
            SpecError::AdapterNameEmpty { index: 0 }
        );
        spec.adapters[0].name = "sql,chat".into();
        assert!(matches!(
            only_error(&spec, "spec.adapters[0].name"),
            SpecError::AdapterNameSeparators { index: 0, .. }
        ));
    }

    #[test]
    fn adapter_source_needs_a_known_scheme() {
        let mut spec = valid();
        spec.adapters[0].source = "https://example.com/lora".into();
        let error = only_error(&spec, "spec.adapters[0].source");
        assert!(matches!(error, SpecError::AdapterSource { index: 0, .. }));
        assert!(
            error.to_string().contains("unknown scheme \"https\""),
            "{error}"
        );
    }

    #[test]
    fn adapters_are_bounded() {
        let mut spec = valid();
        spec.adapters = (0..=MAX_ADAPTERS)
            .map(|index| adapter(&format!("lora-{index}"), "hf://org/lora"))
            .collect();
        assert_eq!(
            only_error(&spec, "spec.adapters"),
            SpecError::TooManyAdapters { count: 65 }
        );
    }

    #[test]
    fn names_and_sources_are_bounded() {
        let mut spec = valid();
        spec.model.name = "m".repeat(MAX_NAME_LENGTH + 1);
        assert!(matches!(
            only_error(&spec, "spec.model.name"),
            SpecError::TooLong { max: 253, .. }
        ));
        let mut spec = valid();
        spec.adapters[0].source = format!("hf://{}", "a".repeat(MAX_SOURCE_LENGTH));
        assert!(matches!(
            only_error(&spec, "spec.adapters[0].source"),
            SpecError::TooLong { max: 1024, .. }
        ));
    }

    #[test]
    fn autoscaling_min_must_not_exceed_max() {
        let mut spec = valid();
        spec.autoscaling = Some(autoscaling(3, 2));
        assert_eq!(
            only_error(&spec, "spec.autoscaling.minReplicas"),
            SpecError::AutoscalingMinAboveMax { min: 3, max: 2 }
        );
        spec.autoscaling = Some(autoscaling(0, 2));
        assert_eq!(spec.validate(), Ok(()), "scale to zero is allowed");
        spec.autoscaling = Some(autoscaling(2, 2));
        assert_eq!(spec.validate(), Ok(()));
    }

    #[test]
    fn openapi_minimums_are_mirrored() {
        let mut spec = valid();
        spec.replicas = -1;
        only_error(&spec, "spec.replicas");

        let mut spec = valid();
        spec.autoscaling = Some(AutoscalingSpec {
            target_requests_per_replica: 0,
            ..autoscaling(1, 2)
        });
        only_error(&spec, "spec.autoscaling.targetRequestsPerReplica");

        let mut spec = valid();
        spec.startup_probe = Some(StartupProbeSpec {
            period_seconds: 0,
            ..StartupProbeSpec::default()
        });
        only_error(&spec, "spec.startupProbe.periodSeconds");
    }

    #[test]
    fn features_are_a_non_empty_set() {
        let mut spec = valid();
        spec.features = Vec::new();
        assert_eq!(only_error(&spec, "spec.features"), SpecError::NoFeatures);
        spec.features = vec![Feature::TextEmbedding, Feature::TextEmbedding];
        assert_eq!(
            only_error(&spec, "spec.features"),
            SpecError::DuplicateFeature {
                feature: "TextEmbedding"
            }
        );
    }

    #[test]
    fn a_model_generates_or_embeds_not_both() {
        let mut spec = valid();
        spec.features = vec![Feature::TextGeneration, Feature::TextEmbedding];
        let error = only_error(&spec, "spec.features");
        assert_eq!(error, SpecError::GenerationAndEmbedding);
        assert!(error
            .to_string()
            .contains("TextGeneration and TextEmbedding"));
        spec.features = vec![Feature::TextEmbedding];
        assert_eq!(spec.validate(), Ok(()));
    }

    #[test]
    fn termination_grace_period_leaves_a_shutdown_timeout() {
        let mut spec = valid();
        spec.engine.termination_grace_period_seconds = MIN_TERMINATION_GRACE_PERIOD_SECONDS - 1;
        assert_eq!(
            only_error(&spec, "spec.engine.terminationGracePeriodSeconds"),
            SpecError::TerminationGracePeriodTooShort { seconds: 15 }
        );
        spec.engine.termination_grace_period_seconds = MIN_TERMINATION_GRACE_PERIOD_SECONDS;
        assert_eq!(spec.validate(), Ok(()));
        assert_eq!(spec.engine.shutdown_timeout_seconds(), 1);
    }

    #[test]
    fn termination_grace_period_rule_uses_the_rust_minimum() {
        assert_eq!(
            rules::TERMINATION_GRACE_PERIOD_MINIMUM.rule,
            format!("self >= {MIN_TERMINATION_GRACE_PERIOD_SECONDS}")
        );
        assert!(rules::TERMINATION_GRACE_PERIOD_MINIMUM
            .message
            .contains(&format!(">= {MIN_TERMINATION_GRACE_PERIOD_SECONDS} ")));
        for part in [
            format!("{PRE_STOP_SLEEP_SECONDS} s preStop sleep"),
            format!("{SHUTDOWN_MARGIN_SECONDS} s margin"),
        ] {
            assert!(
                rules::TERMINATION_GRACE_PERIOD_MINIMUM
                    .message
                    .contains(&part),
                "{part}"
            );
        }
    }

    #[test]
    fn all_errors_are_reported_together() {
        let mut spec = valid();
        spec.model.name = String::new();
        spec.engine.port = 0;
        spec.autoscaling = Some(autoscaling(3, 2));
        let labels: Vec<&str> = spec
            .validation_errors()
            .iter()
            .map(SpecError::metric_label)
            .collect();
        assert_eq!(
            labels,
            vec![
                "model_name_empty",
                "port_out_of_range",
                "autoscaling_min_above_max"
            ]
        );
        assert_eq!(spec.validate(), Err(SpecError::ModelNameEmpty));
    }

    #[test]
    fn rule_messages_are_unique() {
        for (index, rule) in rules::ALL.iter().enumerate() {
            assert!(
                rules::ALL[..index]
                    .iter()
                    .all(|other| other.message != rule.message),
                "{}",
                rule.message
            );
        }
    }

    #[test]
    fn source_rules_use_the_shared_pattern() {
        for rule in [&rules::MODEL_SOURCE_SCHEME, &rules::ADAPTER_SOURCE_SCHEME] {
            assert_eq!(
                rule.rule,
                format!("self.matches('{}')", rules::SOURCE_PATTERN)
            );
        }
    }
}
