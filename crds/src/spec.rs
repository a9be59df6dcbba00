//! The `InferenceModel` custom resource: spec types and their resolved values.
//!
//! Doc comments on fields become the `description` of the field in the generated CRD, so they
//! are written for the person reading `kubectl explain inferencemodel.spec`.
//!
//! Defaults live in two places that must agree: `#[serde(default = ...)]` (so Rust code that
//! deserializes a minimal manifest sees the same values) and the schema `default` that schemars
//! derives from it (so the API server fills them in at admission). Sections that are optional
//! features (`autoscaling`, `cache`, `engine.vllm`, `startupProbe`) have no schema default: their
//! absence means "off" or "use the built-in behaviour", resolved by the helpers below.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Affinity, EnvVar, LocalObjectReference, Toleration};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::status::InferenceModelStatus;
use crate::validation::{rules, CelRules};

/// Default container port of the engine's OpenAI-compatible HTTP server.
pub const DEFAULT_PORT: i32 = 8000;
/// Default extended resource name requested for GPUs.
pub const DEFAULT_GPU_RESOURCE_NAME: &str = "nvidia.com/gpu";
/// Node label set by NVIDIA GPU feature discovery; `resources.gpuProduct` selects on it.
pub const GPU_PRODUCT_NODE_LABEL: &str = "nvidia.com/gpu.product";
/// Default key looked up in the Secret named by `cache.hfTokenSecretRef`.
pub const DEFAULT_HF_TOKEN_KEY: &str = "token";
/// Default time a replica may take to download and load weights before it is restarted.
pub const DEFAULT_STARTUP_TIMEOUT_SECONDS: i32 = 1800;
/// Default interval between startup probe attempts.
pub const DEFAULT_STARTUP_PERIOD_SECONDS: i32 = 10;
/// Default time from the start of a replica's termination to SIGKILL
/// (`spec.engine.terminationGracePeriodSeconds`): room for long generations to finish.
pub const DEFAULT_TERMINATION_GRACE_PERIOD_SECONDS: i32 = 180;
/// Time an engine keeps serving after its pod is marked terminating (the `preStop` sleep), so
/// the gateway and load balancers stop routing to it before vLLM receives SIGTERM.
pub const PRE_STOP_SLEEP_SECONDS: i32 = 10;
/// Time kept between the end of vLLM's `--shutdown-timeout` and SIGKILL, for the engine to
/// exit once its in-flight requests are done.
pub const SHUTDOWN_MARGIN_SECONDS: i32 = 5;
/// Smallest `spec.engine.terminationGracePeriodSeconds`: the one that leaves vLLM one second
/// of `--shutdown-timeout` (0 would make vLLM abort in-flight requests on SIGTERM).
pub const MIN_TERMINATION_GRACE_PERIOD_SECONDS: i32 =
    PRE_STOP_SLEEP_SECONDS + SHUTDOWN_MARGIN_SECONDS + 1;
/// Default in-flight requests per replica the built-in autoscaler aims for.
pub const DEFAULT_TARGET_REQUESTS_PER_REPLICA: i32 = 16;
/// Default time load must stay low before the autoscaler removes a replica.
pub const DEFAULT_SCALE_DOWN_DELAY_SECONDS: i32 = 300;
/// Default idle time (no requests at all) before scaling to zero when `minReplicas` is 0.
pub const DEFAULT_IDLE_SECONDS_BEFORE_SCALE_TO_ZERO: i32 = 900;

/// Longest model ID or adapter name accepted (bounds the cost of the CEL rules that read them).
pub const MAX_NAME_LENGTH: usize = 253;
/// Longest `hf://`, `pvc://` or `s3://` URI accepted.
pub const MAX_SOURCE_LENGTH: usize = 1024;
/// Most LoRA adapters one InferenceModel may serve (bounds the CEL uniqueness rule's cost).
pub const MAX_ADAPTERS: usize = 64;

/// An LLM served through an OpenAI-compatible API by one or more engine replicas.
// Clippy reads the repeated `type_ = ...` of the printcolumn groups below as duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "kinfer.dev",
    version = "v1alpha1",
    kind = "InferenceModel",
    plural = "inferencemodels",
    namespaced,
    status = "InferenceModelStatus",
    derive = "PartialEq",
    shortname = "im",
    category = "kinfer",
    doc = "InferenceModel serves one LLM (plus optional LoRA adapters) through an OpenAI-compatible API. The kinfer operator runs it as engine replicas on GPU nodes; the kinfer gateway routes requests to them by model ID.",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(
        name = "Model",
        type_ = "string",
        description = "OpenAI model ID clients send",
        json_path = ".spec.model.name"
    ),
    printcolumn(
        name = "GPUs",
        type_ = "integer",
        description = "GPUs per replica",
        json_path = ".spec.resources.gpus"
    ),
    printcolumn(
        name = "Ready",
        type_ = "integer",
        description = "Replicas ready to serve",
        json_path = ".status.readyReplicas"
    ),
    printcolumn(
        name = "Desired",
        type_ = "integer",
        description = "Replicas the operator (or autoscaler) wants",
        json_path = ".status.desiredReplicas"
    ),
    printcolumn(
        name = "Status",
        type_ = "string",
        description = "Reason of the Ready condition (Available, Loading, ScaledToZero, Unschedulable, ...)",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    printcolumn(
        name = "Message",
        type_ = "string",
        description = "Message of the Ready condition",
        json_path = ".status.conditions[?(@.type==\"Ready\")].message",
        priority = 1
    )
)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = CelRules(&[
    &rules::PARALLELISM_MATCHES_GPUS,
    &rules::ADAPTER_NAME_NOT_MODEL_NAME,
]))]
pub struct InferenceModelSpec {
    /// The model to serve: its OpenAI model ID and where the weights come from.
    pub model: ModelSpec,

    /// The inference engine that serves the model.
    #[serde(default)]
    pub engine: EngineSpec,

    /// Compute requested by each replica.
    #[serde(default)]
    pub resources: ResourcesSpec,

    /// How the model is split across the GPUs of one replica.
    #[serde(default)]
    pub parallelism: ParallelismSpec,

    /// OpenAI API families this model serves: TextGeneration (/v1/chat/completions and /v1/completions) or TextEmbedding (/v1/embeddings, vLLM's pooling runner), not both: vLLM runs a model either way, so serve embeddings of the same weights from a second InferenceModel.
    #[serde(default = "default_features")]
    #[schemars(
        length(min = 1, max = 2),
        extend("x-kubernetes-list-type" = "set"),
        transform = CelRules(&[&rules::FEATURES_GENERATION_OR_EMBEDDING])
    )]
    pub features: Vec<Feature>,

    /// LoRA adapters loaded on top of the base model. Each is served as its own model ID (its name) next to spec.model.name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), transform = CelRules(&[&rules::ADAPTER_NAMES_UNIQUE]))]
    pub adapters: Vec<AdapterSpec>,

    /// Number of engine replicas when the operator's built-in autoscaler is not in charge. `kubectl scale`, a HorizontalPodAutoscaler or KEDA set this field through the scale subresource. Ignored while spec.autoscaling.mode is Builtin. Always clamped to [spec.autoscaling.minReplicas, spec.autoscaling.maxReplicas] when spec.autoscaling is set.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0))]
    pub replicas: i32,

    /// Autoscaling on request load, including scale to zero. When absent, spec.replicas replicas run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<AutoscalingSpec>,

    /// How the kinfer gateway spreads requests over the replicas.
    #[serde(default)]
    pub routing: RoutingSpec,

    /// Where the engine pods may run.
    #[serde(default, skip_serializing_if = "is_default")]
    pub scheduling: SchedulingSpec,

    /// Cache for downloaded weights. When absent, weights go to an emptyDir and are downloaded again by every new pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<CacheSpec>,

    /// Metadata and identity added to the engine pods.
    #[serde(default, skip_serializing_if = "is_default")]
    pub pod_template: PodTemplateSpec,

    /// How long a replica may take to start (download and load weights) before the kubelet restarts it. When absent, 1800 seconds checked every 10 seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub startup_probe: Option<StartupProbeSpec>,
}

/// The model to serve.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = CelRules(&[&rules::MODEL_REVISION_HF_ONLY]))]
pub struct ModelSpec {
    /// OpenAI model ID clients send in the "model" field, for example Qwen/Qwen2.5-7B-Instruct. Also the default Hugging Face repository. Must not contain commas or whitespace.
    #[schemars(
        length(max = 253),
        transform = CelRules(&[&rules::MODEL_NAME_NOT_EMPTY, &rules::MODEL_NAME_NO_SEPARATORS])
    )]
    pub name: String,

    /// Where the weights come from: hf://org/repo (Hugging Face Hub), pvc://claim/path (a directory on a PersistentVolumeClaim in this namespace) or s3://bucket/prefix. Defaults to hf://<spec.model.name>.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024), transform = CelRules(&[&rules::MODEL_SOURCE_SCHEME]))]
    pub source: Option<String>,

    /// Hugging Face revision (branch, tag or commit) of an hf:// source. Defaults to the repository's default branch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub revision: Option<String>,
}

/// The inference engine. `kind` selects the engine; the section named after it (for example `vllm`) holds its typed options, so new engines add a kind and a section without changing existing fields.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EngineSpec {
    /// Engine implementation. VLLM is the only kind today; SGLang and Custom (any OpenAI-compatible server image) are planned.
    #[serde(default)]
    pub kind: EngineKind,

    /// Container image of the engine. Defaults to the image the operator is configured with for this kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub image: Option<String>,

    /// Extra command-line arguments appended after the ones the operator derives from this spec.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,

    /// Extra environment variables for the engine container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,

    /// Port the engine's OpenAI-compatible HTTP server listens on (1-65535).
    #[serde(default = "default_port")]
    #[schemars(transform = CelRules(&[&rules::ENGINE_PORT_RANGE]))]
    pub port: i32,

    /// Typed vLLM options, used when kind is VLLM. When absent, vLLM's own defaults apply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vllm: Option<VllmOptions>,

    /// Time from the start of a replica's termination (scale-down, rollout, node drain) to SIGKILL. The engine first keeps serving for 10 seconds while routing stops, then finishes in-flight requests for the rest of this time minus 5 seconds (vLLM's --shutdown-timeout) while refusing new ones. Raise it above the longest generation you expect. At least 16.
    #[serde(default = "default_termination_grace_period_seconds")]
    #[schemars(transform = CelRules(&[&rules::TERMINATION_GRACE_PERIOD_MINIMUM]))]
    pub termination_grace_period_seconds: i32,
}

impl Default for EngineSpec {
    fn default() -> Self {
        Self {
            kind: EngineKind::default(),
            image: None,
            args: Vec::new(),
            env: Vec::new(),
            port: DEFAULT_PORT,
            vllm: None,
            termination_grace_period_seconds: DEFAULT_TERMINATION_GRACE_PERIOD_SECONDS,
        }
    }
}

impl EngineSpec {
    /// vLLM's `--shutdown-timeout`: how long the engine finishes in-flight requests after
    /// SIGTERM. See [`shutdown_timeout_seconds`].
    pub fn shutdown_timeout_seconds(&self) -> i32 {
        shutdown_timeout_seconds(self.termination_grace_period_seconds)
    }
}

/// The engine's share of a termination grace period: what is left after the `preStop` sleep
/// and the exit margin, at least 0 (which vLLM reads as "abort at once"; the CRD's minimum keeps
/// it at 1 or more).
///
/// ```text
/// 0 ........ preStop sleep ........ SIGTERM ..... shutdown timeout ..... margin ... SIGKILL
///            (still serving)                  (in-flight requests finish)          (grace)
/// ```
pub fn shutdown_timeout_seconds(termination_grace_period_seconds: i32) -> i32 {
    termination_grace_period_seconds
        .saturating_sub(PRE_STOP_SLEEP_SECONDS)
        .saturating_sub(SHUTDOWN_MARGIN_SECONDS)
        .max(0)
}

/// Which inference engine serves the model.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum EngineKind {
    /// vLLM, <https://github.com/vllm-project/vllm>.
    #[default]
    #[serde(rename = "VLLM")]
    Vllm,
}

impl EngineKind {
    /// Value of the `app.kubernetes.io/name` label on engine pods of this kind.
    pub fn app_name(self) -> &'static str {
        match self {
            EngineKind::Vllm => "vllm",
        }
    }
}

/// Common vLLM settings as typed fields; anything else goes in engine.args.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VllmOptions {
    /// Maximum context length (prompt plus output tokens), vLLM's --max-model-len. Defaults to the model's own limit; lower it to fit the KV cache on smaller GPUs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_model_len: Option<i32>,

    /// Fraction of each GPU's memory vLLM may use for weights and KV cache, greater than 0 and at most 1 (--gpu-memory-utilization). Defaults to vLLM's 0.9.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = CelRules(&[&rules::GPU_MEMORY_UTILIZATION_RANGE]))]
    pub gpu_memory_utilization: Option<f64>,

    /// Data type of weights and activations (--dtype). auto picks the model's own type.
    #[serde(default)]
    pub dtype: Dtype,

    /// Quantization method (--quantization), for example awq, gptq, fp8, bitsandbytes or compressed-tensors. Defaults to what the model's config declares.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub quantization: Option<String>,

    /// Reuse the KV cache of shared prompt prefixes across requests: true passes --enable-prefix-caching, false --no-enable-prefix-caching. Unset leaves the choice to the engine (vLLM turns it on for generation models and decides per model for pooling ones, where forcing it crashes some). Pairs well with routing.strategy PrefixCache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_prefix_caching: Option<bool>,
}

/// Data type of model weights and activations.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    /// The type declared by the model's config.
    #[default]
    Auto,
    /// Alias of float16.
    Half,
    /// 16-bit IEEE floating point.
    Float16,
    /// 16-bit brain floating point.
    Bfloat16,
    /// 32-bit floating point.
    Float32,
}

impl Dtype {
    /// The value vLLM's --dtype flag expects.
    pub fn as_str(self) -> &'static str {
        match self {
            Dtype::Auto => "auto",
            Dtype::Half => "half",
            Dtype::Float16 => "float16",
            Dtype::Bfloat16 => "bfloat16",
            Dtype::Float32 => "float32",
        }
    }
}

/// Compute requested by each replica.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourcesSpec {
    /// GPUs per replica. 0 runs on CPU only.
    #[serde(default = "default_gpus")]
    #[schemars(transform = CelRules(&[&rules::GPUS_NOT_NEGATIVE]))]
    pub gpus: i32,

    /// Extended resource name requested for the GPUs, for example nvidia.com/gpu or amd.com/gpu. The operator also tolerates a NoSchedule taint with this key.
    #[serde(default = "default_gpu_resource_name")]
    #[schemars(length(min = 1, max = 253))]
    pub gpu_resource_name: String,

    /// GPU model the replicas must run on, matched against the nvidia.com/gpu.product node label, for example NVIDIA-A100-SXM4-80GB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub gpu_product: Option<String>,

    /// CPU request and limit of the engine container. When unset, the operator requests 2 CPUs per GPU (4 for a CPU-only model) and sets no CPU limit, so the engine may use idle cores without being throttled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Quantity>,

    /// Memory request and limit of the engine container. When unset, the operator requests 12Gi per GPU (16Gi for a CPU-only model) with the same limit. /dev/shm counts against it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Quantity>,

    /// Size limit of the memory-backed /dev/shm volume. Tensor parallelism (NCCL) needs more than the container runtime's 64Mi default. Defaults to no explicit limit (bounded by the pod's memory limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared_memory: Option<Quantity>,
}

impl Default for ResourcesSpec {
    fn default() -> Self {
        Self {
            gpus: default_gpus(),
            gpu_resource_name: default_gpu_resource_name(),
            gpu_product: None,
            cpu: None,
            memory: None,
            shared_memory: None,
        }
    }
}

/// How the model is split across the GPUs of one replica. tensor x pipeline must equal resources.gpus.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ParallelismSpec {
    /// Tensor parallel size (--tensor-parallel-size). Defaults to resources.gpus / pipeline, that is to resources.gpus when pipeline is 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub tensor: Option<i32>,

    /// Pipeline parallel size (--pipeline-parallel-size).
    #[serde(default = "default_one")]
    #[schemars(range(min = 1))]
    pub pipeline: i32,
}

impl Default for ParallelismSpec {
    fn default() -> Self {
        Self {
            tensor: None,
            pipeline: default_one(),
        }
    }
}

/// An OpenAI API family a model serves.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema,
)]
pub enum Feature {
    /// /v1/chat/completions and /v1/completions.
    TextGeneration,
    /// /v1/embeddings.
    TextEmbedding,
}

impl Feature {
    /// The name used in the API and in the `kinfer.dev/features` annotation.
    pub fn as_str(self) -> &'static str {
        match self {
            Feature::TextGeneration => "TextGeneration",
            Feature::TextEmbedding => "TextEmbedding",
        }
    }

    /// Parse the name used in the API; `None` for names this version does not know.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "TextGeneration" => Some(Feature::TextGeneration),
            "TextEmbedding" => Some(Feature::TextEmbedding),
            _ => None,
        }
    }
}

/// A LoRA adapter served as its own model ID.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AdapterSpec {
    /// Model ID clients send to use this adapter. Unique within the InferenceModel, different from spec.model.name, no commas or whitespace.
    #[schemars(
        length(max = 253),
        transform = CelRules(&[&rules::ADAPTER_NAME_NOT_EMPTY, &rules::ADAPTER_NAME_NO_SEPARATORS])
    )]
    pub name: String,

    /// Where the adapter weights come from: hf://org/repo, pvc://claim/path or s3://bucket/prefix.
    #[schemars(length(max = 1024), transform = CelRules(&[&rules::ADAPTER_SOURCE_SCHEME]))]
    pub source: String,
}

/// Autoscaling on request load.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = CelRules(&[&rules::AUTOSCALING_MIN_LE_MAX]))]
pub struct AutoscalingSpec {
    /// Who decides the replica count. Builtin: the kinfer operator, from the in-flight request counts the gateway reports. External: a HorizontalPodAutoscaler or KEDA ScaledObject targeting this InferenceModel's scale subresource; the operator only enforces minReplicas and maxReplicas.
    #[serde(default)]
    pub mode: AutoscalingMode,

    /// Fewest replicas. 0 allows scaling to zero when the model is idle; the first request then waits for a replica to start.
    #[serde(default = "default_one")]
    #[schemars(range(min = 0))]
    pub min_replicas: i32,

    /// Most replicas, and so the most GPUs this model may hold (maxReplicas x resources.gpus).
    #[schemars(range(min = 1))]
    pub max_replicas: i32,

    /// In-flight requests (running plus queued) per ready replica the Builtin autoscaler aims for.
    #[serde(default = "default_target_requests_per_replica")]
    #[schemars(range(min = 1))]
    pub target_requests_per_replica: i32,

    /// How long load must stay below target before the Builtin autoscaler removes a replica. Long by default because a new replica takes minutes to load weights.
    #[serde(default = "default_scale_down_delay_seconds")]
    #[schemars(range(min = 0))]
    pub scale_down_delay_seconds: i32,

    /// How long the model must receive no requests before the Builtin autoscaler scales it to zero. Only used when minReplicas is 0.
    #[serde(default = "default_idle_seconds_before_scale_to_zero")]
    #[schemars(range(min = 0))]
    pub idle_seconds_before_scale_to_zero: i32,
}

/// Who decides the replica count of an autoscaled InferenceModel.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum AutoscalingMode {
    /// The kinfer operator's autoscaler.
    #[default]
    Builtin,
    /// A HorizontalPodAutoscaler or KEDA through the scale subresource.
    External,
}

/// How the kinfer gateway spreads requests over the replicas.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RoutingSpec {
    /// LeastLoad: the replica with the fewest in-flight requests. RoundRobin: each replica in turn. PrefixCache: the replica most likely to hold the prompt's prefix in its KV cache, falling back to LeastLoad when that replica is overloaded.
    #[serde(default)]
    pub strategy: RoutingStrategy,

    /// How long the gateway holds a request while this model has no ready replica (scaled to zero, starting) before answering 503 no_ready_replica. At the end of the hold a request is sent anyway if a replica is ready by then. Defaults to the gateway's --hold-timeout (180 seconds unless changed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3600))]
    pub hold_timeout_seconds: Option<i32>,

    /// Requests the gateway may hold at once for this model (per gateway replica); further ones get 503 hold_queue_full at once. 0 never holds. Defaults to the gateway's --hold-queue-limit (1000 unless changed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100000))]
    pub hold_queue_limit: Option<i32>,
}

/// Replica selection strategy of the gateway.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum RoutingStrategy {
    /// The replica with the fewest in-flight requests.
    #[default]
    LeastLoad,
    /// Each replica in turn.
    RoundRobin,
    /// The replica most likely to hold the prompt prefix in its KV cache.
    PrefixCache,
}

impl RoutingStrategy {
    /// The name used in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            RoutingStrategy::LeastLoad => "LeastLoad",
            RoutingStrategy::RoundRobin => "RoundRobin",
            RoutingStrategy::PrefixCache => "PrefixCache",
        }
    }
}

/// Where the engine pods may run.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SchedulingSpec {
    /// Node labels the engine pods require, merged with the nvidia.com/gpu.product label from resources.gpuProduct.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,

    /// Tolerations added to the engine pods. The operator always tolerates the NoSchedule taint named after resources.gpuResourceName (nvidia.com/gpu by default).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,

    /// Affinity of the engine pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,

    /// PriorityClass of the engine pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub priority_class_name: Option<String>,

    /// RuntimeClass of the engine pods, for example nvidia when the GPU runtime is not the node's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub runtime_class_name: Option<String>,
}

/// Cache for downloaded weights.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CacheSpec {
    /// Size of a PersistentVolumeClaim that keeps downloaded weights across pod restarts. When absent, the cache is an emptyDir.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<Quantity>,

    /// StorageClass of the cache PersistentVolumeClaim. Defaults to the cluster's default StorageClass. Only used with size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub storage_class_name: Option<String>,

    /// Access mode of the cache PersistentVolumeClaim. Only used with size. ReadWriteOnce works with any StorageClass but mounts on one node only; ReadWriteMany lets replicas on different nodes share the cache and needs a StorageClass that supports it (NFS, EFS, Filestore, CephFS, ...). Defaults to ReadWriteOnce when the model never runs more than one replica (autoscaling.maxReplicas 1, or replicas at most 1 without autoscaling), ReadWriteMany otherwise. A claim's access mode cannot change once it exists: delete the claim to change it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_mode: Option<CacheAccessMode>,

    /// Secret holding a Hugging Face access token, for gated or private hf:// models and adapters. Passed to the engine as HF_TOKEN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hf_token_secret_ref: Option<SecretKeyRef>,
}

// Access mode of the weight cache PersistentVolumeClaim (a plain comment: a doc comment here
// would replace the field's description in the CRD). ReadOnlyMany is not offered: the claim
// starts empty and the engine writes the weights into it; weights that already sit on a volume
// are a `pvc://` source.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum CacheAccessMode {
    /// Read-write by the pods of one node.
    ReadWriteOnce,
    /// Read-write by pods on any number of nodes.
    ReadWriteMany,
}

impl CacheAccessMode {
    /// The name Kubernetes uses in `accessModes`.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheAccessMode::ReadWriteOnce => "ReadWriteOnce",
            CacheAccessMode::ReadWriteMany => "ReadWriteMany",
        }
    }
}

/// A key of a Secret in the InferenceModel's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,

    /// Key within the Secret.
    #[serde(default = "default_hf_token_key")]
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// Metadata and identity added to the engine pods.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodTemplateSpec {
    /// Labels added to the engine pods. The operator's own labels (kinfer.dev/*, app.kubernetes.io/*) win on conflict.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,

    /// Annotations added to the engine pods. The operator's own annotations (kinfer.dev/*) win on conflict.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,

    /// ServiceAccount the engine pods run as, for example one bound to cloud credentials for s3:// sources. Defaults to the namespace's default ServiceAccount.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub service_account_name: Option<String>,

    /// Secrets used to pull the engine image.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_pull_secrets: Vec<LocalObjectReference>,
}

/// Startup probe tuning of the engine container.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StartupProbeSpec {
    /// Longest time a replica may take to become ready (download and load the weights) before the kubelet restarts it.
    #[serde(default = "default_startup_timeout_seconds")]
    #[schemars(range(min = 1))]
    pub startup_timeout_seconds: i32,

    /// Interval between startup probe attempts.
    #[serde(default = "default_startup_period_seconds")]
    #[schemars(range(min = 1))]
    pub period_seconds: i32,
}

impl Default for StartupProbeSpec {
    fn default() -> Self {
        Self {
            startup_timeout_seconds: DEFAULT_STARTUP_TIMEOUT_SECONDS,
            period_seconds: DEFAULT_STARTUP_PERIOD_SECONDS,
        }
    }
}

impl StartupProbeSpec {
    /// `failureThreshold` of the startup probe: enough attempts to cover the timeout.
    pub fn failure_threshold(&self) -> i32 {
        let period = self.period_seconds.max(1);
        (self.startup_timeout_seconds.max(1) + period - 1) / period
    }
}

/// Resolved values: what the operator and gateway act on after defaults.
impl InferenceModelSpec {
    /// GPUs per replica.
    pub fn gpus(&self) -> i32 {
        self.resources.gpus
    }

    /// Pipeline parallel size.
    pub fn pipeline_parallel(&self) -> i32 {
        self.parallelism.pipeline.max(1)
    }

    /// Tensor parallel size: the explicit value, else gpus / pipeline, and at least 1 (CPU-only
    /// models run one shard).
    pub fn tensor_parallel(&self) -> i32 {
        self.parallelism
            .tensor
            .unwrap_or_else(|| self.gpus() / self.pipeline_parallel())
            .max(1)
    }

    /// The source URI of the base model: spec.model.source, else `hf://<spec.model.name>`.
    pub fn source_uri(&self) -> String {
        self.model
            .source
            .clone()
            .unwrap_or_else(|| format!("hf://{}", self.model.name))
    }

    /// The parsed source of the base model.
    pub fn model_source(&self) -> Result<crate::ModelSource, crate::ModelSourceError> {
        self.source_uri().parse()
    }

    /// Every model ID this InferenceModel serves: the base model first, then the adapters in
    /// spec order.
    pub fn served_model_ids(&self) -> Vec<String> {
        std::iter::once(self.model.name.clone())
            .chain(self.adapters.iter().map(|adapter| adapter.name.clone()))
            .collect()
    }

    /// The API families served.
    pub fn features(&self) -> &[Feature] {
        &self.features
    }

    /// Whether this model serves `feature`.
    pub fn serves(&self, feature: Feature) -> bool {
        self.features.contains(&feature)
    }

    /// vLLM options with defaults filled in.
    pub fn vllm_options(&self) -> VllmOptions {
        self.engine.vllm.clone().unwrap_or_default()
    }

    /// Most replicas the spec lets run: autoscaling.maxReplicas, else spec.replicas. A scale
    /// subresource write (kubectl scale) changes the latter.
    pub fn max_replicas(&self) -> i32 {
        match &self.autoscaling {
            Some(autoscaling) => autoscaling
                .max_replicas
                .max(autoscaling.min_replicas)
                .max(0),
            None => self.replicas.max(0),
        }
    }

    /// Access mode of the cache claim, when there is one (spec.cache.size): the explicit one,
    /// else ReadWriteOnce where it is enough (at most one replica, so one node mounts it) and
    /// ReadWriteMany otherwise. ReadWriteOnce is the default where it works because it is what
    /// every StorageClass provides; a ReadWriteMany claim stays Pending without a class that
    /// supports it.
    pub fn cache_access_mode(&self) -> Option<CacheAccessMode> {
        let cache = self.cache.as_ref().filter(|cache| cache.size.is_some())?;
        Some(cache.access_mode.unwrap_or(if self.max_replicas() <= 1 {
            CacheAccessMode::ReadWriteOnce
        } else {
            CacheAccessMode::ReadWriteMany
        }))
    }

    /// Startup probe tuning with defaults filled in.
    pub fn startup_probe(&self) -> StartupProbeSpec {
        self.startup_probe.clone().unwrap_or_default()
    }

    /// Whether the operator's own autoscaler decides the replica count.
    pub fn builtin_autoscaling(&self) -> Option<&AutoscalingSpec> {
        self.autoscaling
            .as_ref()
            .filter(|autoscaling| autoscaling.mode == AutoscalingMode::Builtin)
    }

    /// spec.replicas clamped to the autoscaling bounds, if any. This is the replica count when
    /// no Builtin autoscaler is in charge (no autoscaling, or mode External).
    pub fn bounded_replicas(&self) -> i32 {
        let replicas = self.replicas.max(0);
        match &self.autoscaling {
            Some(autoscaling) => replicas.max(autoscaling.min_replicas.max(0)).min(
                autoscaling
                    .max_replicas
                    .max(autoscaling.min_replicas.max(0)),
            ),
            None => replicas,
        }
    }
}

fn default_features() -> Vec<Feature> {
    vec![Feature::TextGeneration]
}

fn default_replicas() -> i32 {
    1
}

fn default_one() -> i32 {
    1
}

fn default_gpus() -> i32 {
    1
}

fn default_port() -> i32 {
    DEFAULT_PORT
}

fn default_termination_grace_period_seconds() -> i32 {
    DEFAULT_TERMINATION_GRACE_PERIOD_SECONDS
}

fn default_gpu_resource_name() -> String {
    DEFAULT_GPU_RESOURCE_NAME.to_string()
}

fn default_hf_token_key() -> String {
    DEFAULT_HF_TOKEN_KEY.to_string()
}

fn default_target_requests_per_replica() -> i32 {
    DEFAULT_TARGET_REQUESTS_PER_REPLICA
}

fn default_scale_down_delay_seconds() -> i32 {
    DEFAULT_SCALE_DOWN_DELAY_SECONDS
}

fn default_idle_seconds_before_scale_to_zero() -> i32 {
    DEFAULT_IDLE_SECONDS_BEFORE_SCALE_TO_ZERO
}

fn default_startup_timeout_seconds() -> i32 {
    DEFAULT_STARTUP_TIMEOUT_SECONDS
}

fn default_startup_period_seconds() -> i32 {
    DEFAULT_STARTUP_PERIOD_SECONDS
}

fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = include_str!("../tests/fixtures/valid-full.yaml");
    const MINIMAL: &str = include_str!("../tests/fixtures/valid-minimal.yaml");

    fn spec_from(yaml: &str) -> InferenceModelSpec {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn full_example_round_trips_without_losing_fields() {
        let original: serde_json::Value = serde_yaml::from_str(FULL).unwrap();
        let model: InferenceModel = serde_json::from_value(original.clone()).unwrap();
        // Every field is set in the full example, so a field serde ignored (a misspelt
        // rename) or invented would show up as a difference.
        assert_eq!(serde_json::to_value(&model).unwrap(), original);

        let yaml = serde_yaml::to_string(&model).unwrap();
        let again: InferenceModel = serde_yaml::from_str(&yaml).unwrap();
        assert_eq!(again, model);
    }

    #[test]
    fn full_example_resolves() {
        let model: InferenceModel = serde_yaml::from_str(FULL).unwrap();
        let spec = &model.spec;
        assert_eq!(spec.gpus(), 2);
        assert_eq!(spec.tensor_parallel(), 2);
        assert_eq!(spec.pipeline_parallel(), 1);
        assert_eq!(spec.source_uri(), "hf://Qwen/Qwen2.5-7B-Instruct");
        assert_eq!(
            spec.served_model_ids(),
            vec![
                "Qwen/Qwen2.5-7B-Instruct",
                "qwen-sql",
                "qwen-support",
                "qwen-legal"
            ]
        );
        assert_eq!(spec.vllm_options().dtype, Dtype::Bfloat16);
        assert_eq!(spec.vllm_options().gpu_memory_utilization, Some(0.92));
        assert_eq!(spec.routing.strategy, RoutingStrategy::PrefixCache);
        assert_eq!(spec.startup_probe().failure_threshold(), 240);
        assert!(spec.builtin_autoscaling().is_some());
        assert_eq!(
            spec.cache
                .as_ref()
                .and_then(|cache| cache.hf_token_secret_ref.as_ref())
                .map(|secret| secret.key.as_str()),
            Some("token")
        );
    }

    #[test]
    fn minimal_example_gets_the_defaults() {
        let model: InferenceModel = serde_yaml::from_str(MINIMAL).unwrap();
        let spec = &model.spec;
        assert_eq!(spec.engine.kind, EngineKind::Vllm);
        assert_eq!(spec.engine.port, 8000);
        assert_eq!(spec.engine.image, None);
        assert_eq!(spec.gpus(), 1);
        assert_eq!(spec.resources.gpu_resource_name, "nvidia.com/gpu");
        assert_eq!(spec.tensor_parallel(), 1);
        assert_eq!(spec.pipeline_parallel(), 1);
        assert_eq!(spec.features(), &[Feature::TextGeneration]);
        assert!(spec.serves(Feature::TextGeneration));
        assert!(!spec.serves(Feature::TextEmbedding));
        assert_eq!(spec.replicas, 1);
        assert_eq!(spec.bounded_replicas(), 1);
        assert_eq!(spec.autoscaling, None);
        assert_eq!(spec.routing.strategy, RoutingStrategy::LeastLoad);
        assert_eq!(spec.source_uri(), "hf://Qwen/Qwen2.5-0.5B-Instruct");
        assert_eq!(
            spec.model_source().unwrap(),
            crate::ModelSource::HuggingFace {
                repo: "Qwen/Qwen2.5-0.5B-Instruct".into()
            }
        );
        assert_eq!(spec.served_model_ids(), vec!["Qwen/Qwen2.5-0.5B-Instruct"]);
        assert_eq!(spec.vllm_options().enable_prefix_caching, None);
        assert_eq!(spec.vllm_options().dtype, Dtype::Auto);
        assert_eq!(spec.engine.termination_grace_period_seconds, 180);
        assert_eq!(spec.engine.shutdown_timeout_seconds(), 165);
        assert_eq!(spec.max_replicas(), 1);
        assert_eq!(spec.cache_access_mode(), None);
        assert_eq!(spec.startup_probe().startup_timeout_seconds, 1800);
        assert_eq!(spec.startup_probe().failure_threshold(), 180);
        assert_eq!(spec.cache, None);
        assert_eq!(spec.scheduling, SchedulingSpec::default());
        assert_eq!(spec.pod_template, PodTemplateSpec::default());
    }

    #[test]
    fn minimal_example_serializes_compactly() {
        let model: InferenceModel = serde_yaml::from_str(MINIMAL).unwrap();
        let value = serde_json::to_value(&model.spec).unwrap();
        let keys: Vec<&str> = value
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        // Empty optional sections are left out rather than written as {} or [].
        assert_eq!(
            keys,
            vec![
                "engine",
                "features",
                "model",
                "parallelism",
                "replicas",
                "resources",
                "routing"
            ]
        );
    }

    #[test]
    fn section_defaults_apply_inside_a_present_section() {
        let spec = spec_from(
            r#"
model: {name: m}
engine: {vllm: {maxModelLen: 4096}}
autoscaling: {maxReplicas: 3}
cache: {hfTokenSecretRef: {name: hf}}
startupProbe: {periodSeconds: 30}
"#,
        );
        let vllm = spec.vllm_options();
        assert_eq!(vllm.max_model_len, Some(4096));
        assert_eq!(
            vllm.enable_prefix_caching, None,
            "unset leaves it to the engine"
        );
        let autoscaling = spec.autoscaling.as_ref().unwrap();
        assert_eq!(autoscaling.mode, AutoscalingMode::Builtin);
        assert_eq!(autoscaling.min_replicas, 1);
        assert_eq!(autoscaling.target_requests_per_replica, 16);
        assert_eq!(autoscaling.scale_down_delay_seconds, 300);
        assert_eq!(autoscaling.idle_seconds_before_scale_to_zero, 900);
        let secret = spec.cache.unwrap().hf_token_secret_ref.unwrap();
        assert_eq!(secret.key, "token");
        let probe = spec.startup_probe.unwrap();
        assert_eq!(probe.startup_timeout_seconds, 1800);
        assert_eq!(probe.failure_threshold(), 60);
    }

    #[test]
    fn shutdown_timeout_is_the_grace_period_minus_pre_stop_and_margin() {
        assert_eq!(shutdown_timeout_seconds(180), 165);
        assert_eq!(
            shutdown_timeout_seconds(MIN_TERMINATION_GRACE_PERIOD_SECONDS),
            1
        );
        assert_eq!(shutdown_timeout_seconds(3600), 3585);
        // Below the CRD's minimum (an object stored before the rule): never negative.
        assert_eq!(shutdown_timeout_seconds(10), 0);
        assert_eq!(shutdown_timeout_seconds(i32::MIN), 0);
        assert_eq!(shutdown_timeout_seconds(i32::MAX), i32::MAX - 15);
        let spec = spec_from("model: {name: m}\nengine: {terminationGracePeriodSeconds: 600}");
        assert_eq!(spec.engine.shutdown_timeout_seconds(), 585);
    }

    #[test]
    fn cache_access_mode_is_read_write_once_where_one_node_is_enough() {
        let mode =
            |yaml: &str| spec_from(&format!("model: {{name: m}}\n{yaml}")).cache_access_mode();
        assert_eq!(mode("replicas: 3"), None, "no cache claim");
        assert_eq!(mode("cache: {hfTokenSecretRef: {name: hf}}"), None);
        assert_eq!(
            mode("cache: {size: 50Gi}"),
            Some(CacheAccessMode::ReadWriteOnce)
        );
        assert_eq!(
            mode("replicas: 2\ncache: {size: 50Gi}"),
            Some(CacheAccessMode::ReadWriteMany)
        );
        assert_eq!(
            mode("replicas: 1\nautoscaling: {minReplicas: 0, maxReplicas: 1}\ncache: {size: 50Gi}"),
            Some(CacheAccessMode::ReadWriteOnce)
        );
        assert_eq!(
            mode("replicas: 1\nautoscaling: {maxReplicas: 4}\ncache: {size: 50Gi}"),
            Some(CacheAccessMode::ReadWriteMany)
        );
        assert_eq!(
            mode("replicas: 4\ncache: {size: 50Gi, accessMode: ReadWriteOnce}"),
            Some(CacheAccessMode::ReadWriteOnce),
            "an explicit mode wins"
        );
        assert_eq!(
            serde_json::to_value(CacheAccessMode::ReadWriteMany).unwrap(),
            CacheAccessMode::ReadWriteMany.as_str()
        );
    }

    #[test]
    fn tensor_parallel_defaults_to_gpus_over_pipeline() {
        let spec = spec_from("model: {name: m}\nresources: {gpus: 8}\nparallelism: {pipeline: 2}");
        assert_eq!(spec.tensor_parallel(), 4);
        assert_eq!(spec.pipeline_parallel(), 2);
        let spec = spec_from("model: {name: m}\nresources: {gpus: 4}");
        assert_eq!(spec.tensor_parallel(), 4);
        let spec = spec_from("model: {name: m}\nresources: {gpus: 0}");
        assert_eq!(spec.tensor_parallel(), 1, "CPU-only models run one shard");
        let spec = spec_from(
            "model: {name: m}\nresources: {gpus: 4}\nparallelism: {tensor: 2, pipeline: 2}",
        );
        assert_eq!(spec.tensor_parallel(), 2);
    }

    #[test]
    fn explicit_source_wins_over_name() {
        let spec = spec_from("model: {name: my-llama, source: pvc://models/llama}");
        assert_eq!(spec.source_uri(), "pvc://models/llama");
    }

    #[test]
    fn routing_hold_limits_are_optional() {
        let spec = spec_from("model: {name: m}");
        assert_eq!(spec.routing.hold_timeout_seconds, None);
        assert_eq!(spec.routing.hold_queue_limit, None);
        let spec =
            spec_from("model: {name: m}\nrouting: {holdTimeoutSeconds: 30, holdQueueLimit: 5}");
        assert_eq!(spec.routing.hold_timeout_seconds, Some(30));
        assert_eq!(spec.routing.hold_queue_limit, Some(5));
    }

    #[test]
    fn bounded_replicas_clamps_to_autoscaling_bounds() {
        let spec = spec_from("model: {name: m}\nreplicas: 9\nautoscaling: {mode: External, minReplicas: 0, maxReplicas: 4}");
        assert_eq!(spec.bounded_replicas(), 4);
        assert!(spec.builtin_autoscaling().is_none());
        let spec = spec_from("model: {name: m}\nreplicas: 0\nautoscaling: {mode: External, minReplicas: 2, maxReplicas: 4}");
        assert_eq!(spec.bounded_replicas(), 2);
        // An invalid range must not panic.
        let spec = spec_from(
            "model: {name: m}\nreplicas: 1\nautoscaling: {minReplicas: 5, maxReplicas: 2}",
        );
        assert_eq!(spec.bounded_replicas(), 5);
    }

    #[test]
    fn enum_names_match_the_api() {
        assert_eq!(serde_json::to_value(EngineKind::Vllm).unwrap(), "VLLM");
        assert_eq!(serde_json::to_value(Dtype::Bfloat16).unwrap(), "bfloat16");
        for dtype in [
            Dtype::Auto,
            Dtype::Half,
            Dtype::Float16,
            Dtype::Bfloat16,
            Dtype::Float32,
        ] {
            assert_eq!(serde_json::to_value(dtype).unwrap(), dtype.as_str());
        }
        for strategy in [
            RoutingStrategy::LeastLoad,
            RoutingStrategy::RoundRobin,
            RoutingStrategy::PrefixCache,
        ] {
            assert_eq!(serde_json::to_value(strategy).unwrap(), strategy.as_str());
        }
        for feature in [Feature::TextGeneration, Feature::TextEmbedding] {
            assert_eq!(serde_json::to_value(feature).unwrap(), feature.as_str());
            assert_eq!(Feature::parse(feature.as_str()), Some(feature));
        }
    }
}
