//! Pure builders: an InferenceModel (plus the replica count and the operator's settings) in,
//! the children the operator applies out. No client, no clock: everything here is tested from
//! YAML fixtures against golden manifests (`operator/tests/golden/`).
//!
//! Choices a reviewer should know about:
//! - **No `command`**: `vllm/vllm-openai`'s entrypoint is `vllm serve`; the operator only writes
//!   `args`, so a custom image with its own entrypoint wrapper keeps working.
//! - **Rollout**: `RollingUpdate` with `maxSurge: 0, maxUnavailable: 1`. A surge pod would need
//!   GPUs that a fully used cluster does not have, and the rollout would wait for it forever;
//!   this way an old replica gives its GPUs back before the new one is scheduled. With one
//!   replica that means a short outage on every spec change, the price of never deadlocking.
//! - **Draining**: a `preStop` sleep keeps the old engine serving while the gateway notices the
//!   pod is terminating and stops sending it requests; vLLM (uvicorn) then finishes in-flight
//!   requests on SIGTERM within `terminationGracePeriodSeconds`.
//! - **s3:// sources** are copied into the cache volume by an init container per source running
//!   `aws s3 sync` (image: the operator's `--s3-sync-image`), then served from that path. It
//!   works for adapters too (vLLM's `runai_streamer` load format only covers the base model),
//!   and with a PVC cache a restart only syncs what changed. Credentials come from the pod's
//!   ServiceAccount (IRSA, workload identity) or from `spec.engine.env`
//!   (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_ENDPOINT_URL`, ...), which the init
//!   containers receive too.
//! - **pvc:// sources** are mounted read-only at `/models/<claim>`.
//! - **Cache PVC** (`spec.cache.size`) is `ReadWriteMany` because every replica of the
//!   Deployment mounts the same claim, possibly from different nodes; its StorageClass must
//!   support that (NFS, EFS, Filestore, CephFS, ...).
//! - **`enableServiceLinks: false`**: Kubernetes would otherwise inject `<SERVICE>_PORT`
//!   variables, and a Service named `vllm` yields `VLLM_PORT=tcp://...`, which vLLM reads as
//!   its own setting and fails on.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource, HTTPGetAction, Lifecycle,
    LifecycleHandler, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PersistentVolumeClaimVolumeSource, PodSpec, PodTemplateSpec, Probe, ResourceRequirements,
    SecretKeySelector, Service, ServicePort, ServiceSpec, SleepAction, Toleration, Volume,
    VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kinfer_crds::labels::{engine_annotations, engine_labels, selector_labels};
use kinfer_crds::spec::GPU_PRODUCT_NODE_LABEL;
use kinfer_crds::{Feature, InferenceModel, InferenceModelSpec, ModelSource, ModelSourceError};
use kube::{Resource, ResourceExt};

/// Default engine image for `engine.kind: VLLM`.
pub const DEFAULT_ENGINE_IMAGE: &str = "vllm/vllm-openai:v0.11.0";
/// Default image of the init containers that copy `s3://` sources into the cache.
pub const DEFAULT_S3_SYNC_IMAGE: &str = "amazon/aws-cli:2.22.0";

/// Name of the engine container.
pub const ENGINE_CONTAINER: &str = "engine";
/// Name of the engine's container and Service port.
pub const PORT_NAME: &str = "http";
/// vLLM's health endpoint: 200 once the model is loaded and the engine loop is alive.
pub const HEALTH_PATH: &str = "/health";
/// Where the weight cache volume is mounted.
pub const CACHE_MOUNT_PATH: &str = "/cache";
/// `HF_HOME`: the Hugging Face Hub cache, inside the cache volume.
pub const HF_HOME: &str = "/cache/huggingface";
/// Where `s3://bucket/prefix` sources are synced to: `<this>/bucket/prefix`.
pub const S3_CACHE_DIR: &str = "/cache/s3";
/// Where `pvc://claim/path` sources are mounted: `<this>/claim`.
pub const MODELS_MOUNT_ROOT: &str = "/models";
/// Time the engine keeps serving after the pod is marked terminating, so the gateway's watch
/// removes it from routing before vLLM receives SIGTERM.
pub const PRE_STOP_SLEEP_SECONDS: i64 = 10;
/// Time from the start of termination to SIGKILL: the preStop sleep plus room for long
/// generations to finish.
pub const TERMINATION_GRACE_PERIOD_SECONDS: i64 = 180;
/// Added to the startup timeout to get the Deployment's progressDeadlineSeconds, so a slow but
/// healthy download is not reported as a failed rollout.
pub const PROGRESS_DEADLINE_MARGIN_SECONDS: i32 = 600;
/// Longest Kubernetes label value, and so the longest InferenceModel name the operator accepts
/// (the name is the `kinfer.dev/model` label value).
pub const MAX_MODEL_NAME_LENGTH: usize = 63;

/// Operator settings the builders need.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuildConfig {
    /// Engine image when `spec.engine.image` is not set.
    pub default_engine_image: String,
    /// Image of the `s3://` sync init containers; must provide `aws`.
    pub s3_sync_image: String,
}

impl Default for BuildConfig {
    fn default() -> Self {
        Self {
            default_engine_image: DEFAULT_ENGINE_IMAGE.to_string(),
            s3_sync_image: DEFAULT_S3_SYNC_IMAGE.to_string(),
        }
    }
}

/// Everything the operator owns for one InferenceModel.
#[derive(Clone, Debug, PartialEq)]
pub struct Children {
    pub deployment: Deployment,
    pub service: Service,
    /// The weight cache claim, when `spec.cache.size` is set.
    pub cache_claim: Option<PersistentVolumeClaim>,
}

/// Why the children could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The object lacks metadata the API server always sets (name, namespace, uid).
    #[error("the InferenceModel has no metadata.{0}; it must come from the API server")]
    MissingMetadata(&'static str),

    /// A source URI the CRD rule should have rejected.
    #[error("invalid source: {0}")]
    Source(#[from] ModelSourceError),
}

impl BuildError {
    /// Low-cardinality label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            BuildError::MissingMetadata(_) => "missing_metadata",
            BuildError::Source(_) => "invalid_source",
        }
    }
}

/// Name of the engine Deployment: the InferenceModel's name.
pub fn deployment_name(model_name: &str) -> String {
    model_name.to_string()
}

/// Name of the weight cache PersistentVolumeClaim.
pub fn cache_claim_name(model_name: &str) -> String {
    format!("{model_name}-cache")
}

/// Name of the engine Service. Service names are DNS-1035 labels (no dots, start with a
/// letter, at most 63 characters) while InferenceModel names are DNS subdomains, so names
/// that do not fit are rewritten, with a hash suffix keeping rewritten names distinct.
pub fn service_name(model_name: &str) -> String {
    let is_label = !model_name.is_empty()
        && model_name.len() <= 63
        && model_name.starts_with(|c: char| c.is_ascii_lowercase())
        && model_name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !model_name.ends_with('-');
    if is_label {
        return model_name.to_string();
    }
    let mut name: String = model_name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        name.insert_str(0, "im-");
    }
    name.truncate(54);
    let name = name.trim_end_matches('-');
    format!("{name}-{:08x}", fnv1a(model_name.as_bytes()))
}

/// FNV-1a, 32 bits: a stable hash for name suffixes (std's hasher may change between releases).
fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5_u32, |hash, byte| {
        (hash ^ u32::from(*byte)).wrapping_mul(0x0100_0193)
    })
}

/// Checks the operator makes beyond the CRD's rules: things the API server cannot check
/// because they depend on metadata.
pub fn validate_metadata(model: &InferenceModel) -> Result<(), String> {
    let name = model.name_any();
    if name.len() > MAX_MODEL_NAME_LENGTH {
        return Err(format!(
            "metadata.name must be at most {MAX_MODEL_NAME_LENGTH} characters (it is used as the \
             kinfer.dev/model label value); {name:?} has {}",
            name.len()
        ));
    }
    Ok(())
}

/// Builds the children of `model` running `replicas` engine replicas.
pub fn build(
    model: &InferenceModel,
    replicas: i32,
    config: &BuildConfig,
) -> Result<Children, BuildError> {
    let name = model
        .metadata
        .name
        .clone()
        .ok_or(BuildError::MissingMetadata("name"))?;
    let namespace = model
        .metadata
        .namespace
        .clone()
        .ok_or(BuildError::MissingMetadata("namespace"))?;
    let mut owner = model
        .controller_owner_ref(&())
        .ok_or(BuildError::MissingMetadata("uid"))?;
    // Foreground deletion of the InferenceModel waits for its children.
    owner.block_owner_deletion = Some(true);
    let spec = &model.spec;
    let sources = Sources::resolve(spec)?;

    let labels = engine_labels(&name, spec);
    let metadata = |object_name: String| ObjectMeta {
        name: Some(object_name),
        namespace: Some(namespace.clone()),
        labels: Some(labels.clone()),
        owner_references: Some(vec![owner.clone()]),
        ..ObjectMeta::default()
    };

    let cache_claim = spec
        .cache
        .as_ref()
        .and_then(|cache| cache.size.clone().map(|size| (cache, size)))
        .map(|(cache, size)| PersistentVolumeClaim {
            metadata: metadata(cache_claim_name(&name)),
            spec: Some(PersistentVolumeClaimSpec {
                access_modes: Some(vec!["ReadWriteMany".to_string()]),
                resources: Some(VolumeResourceRequirements {
                    requests: Some(BTreeMap::from([("storage".to_string(), size)])),
                    ..VolumeResourceRequirements::default()
                }),
                storage_class_name: cache.storage_class_name.clone(),
                volume_mode: Some("Filesystem".to_string()),
                ..PersistentVolumeClaimSpec::default()
            }),
            status: None,
        });

    let deployment = Deployment {
        metadata: metadata(deployment_name(&name)),
        spec: Some(DeploymentSpec {
            replicas: Some(replicas.max(0)),
            selector: LabelSelector {
                match_labels: Some(selector_labels(&name)),
                match_expressions: None,
            },
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".to_string()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(IntOrString::Int(0)),
                    max_unavailable: Some(IntOrString::Int(1)),
                }),
            }),
            revision_history_limit: Some(3),
            progress_deadline_seconds: Some(
                spec.startup_probe()
                    .startup_timeout_seconds
                    .saturating_add(PROGRESS_DEADLINE_MARGIN_SECONDS),
            ),
            template: pod_template(&name, spec, &sources, config),
            ..DeploymentSpec::default()
        }),
        status: None,
    };

    let service = Service {
        metadata: metadata(service_name(&name)),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".to_string()),
            selector: Some(selector_labels(&name)),
            ports: Some(vec![ServicePort {
                name: Some(PORT_NAME.to_string()),
                port: spec.engine.port,
                target_port: Some(IntOrString::String(PORT_NAME.to_string())),
                protocol: Some("TCP".to_string()),
                app_protocol: Some("http".to_string()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        status: None,
    };

    Ok(Children {
        deployment,
        service,
        cache_claim,
    })
}

/// Where the base model and the adapters are read from inside the pod.
struct Sources {
    /// The positional MODEL argument of `vllm serve`.
    model: String,
    /// `(name, path or repo)` for `--lora-modules`.
    adapters: Vec<(String, String)>,
    /// PersistentVolumeClaims to mount read-only, in order of first use.
    claims: Vec<String>,
    /// `(container name, s3 URI, local directory)` to sync before the engine starts.
    s3_syncs: Vec<(String, String, String)>,
}

impl Sources {
    fn resolve(spec: &InferenceModelSpec) -> Result<Self, ModelSourceError> {
        let mut sources = Sources {
            model: String::new(),
            adapters: Vec::new(),
            claims: Vec::new(),
            s3_syncs: Vec::new(),
        };
        sources.model = sources.location(spec.model_source()?, "fetch-model".to_string());
        for (index, adapter) in spec.adapters.iter().enumerate() {
            let source: ModelSource = adapter.source.parse()?;
            let location = sources.location(source, format!("fetch-adapter-{index}"));
            sources.adapters.push((adapter.name.clone(), location));
        }
        Ok(sources)
    }

    /// What vLLM is given for `source`, recording the volumes and syncs it needs.
    fn location(&mut self, source: ModelSource, sync_container: String) -> String {
        match source {
            ModelSource::HuggingFace { repo } => repo,
            ModelSource::Pvc { claim, path } => {
                let root = format!("{MODELS_MOUNT_ROOT}/{claim}");
                if !self.claims.contains(&claim) {
                    self.claims.push(claim);
                }
                join_path(root, &path)
            }
            ModelSource::S3 { bucket, prefix } => {
                let uri = ModelSource::S3 {
                    bucket: bucket.clone(),
                    prefix: prefix.clone(),
                }
                .to_string();
                let directory = join_path(format!("{S3_CACHE_DIR}/{bucket}"), &prefix);
                self.s3_syncs.push((sync_container, uri, directory.clone()));
                directory
            }
        }
    }
}

fn join_path(root: String, path: &str) -> String {
    if path.is_empty() {
        root
    } else {
        format!("{root}/{path}")
    }
}

/// Name of the pod volume mounting `claim` (volume names are DNS labels, claim names need not be).
fn claim_volume_name(index: usize) -> String {
    format!("source-{index}")
}

fn pod_template(
    name: &str,
    spec: &InferenceModelSpec,
    sources: &Sources,
    config: &BuildConfig,
) -> PodTemplateSpec {
    // The operator's labels and annotations win over the user's (spec.podTemplate).
    let mut labels = spec.pod_template.labels.clone();
    labels.extend(engine_labels(name, spec));
    let mut annotations = spec.pod_template.annotations.clone();
    annotations.extend(engine_annotations(spec));

    let mut node_selector = spec.scheduling.node_selector.clone();
    if let Some(product) = &spec.resources.gpu_product {
        node_selector.insert(GPU_PRODUCT_NODE_LABEL.to_string(), product.clone());
    }

    // GPU nodes are commonly tainted so that only GPU workloads land there; a CPU-only model
    // must not take their room, so the toleration comes with GPU requests only.
    let mut tolerations = Vec::new();
    if spec.gpus() > 0 {
        tolerations.push(Toleration {
            key: Some(spec.resources.gpu_resource_name.clone()),
            operator: Some("Exists".to_string()),
            effect: Some("NoSchedule".to_string()),
            ..Toleration::default()
        });
    }
    tolerations.extend(spec.scheduling.tolerations.iter().cloned());

    let cache_volume = match spec.cache.as_ref().and_then(|cache| cache.size.as_ref()) {
        Some(_) => Volume {
            name: "cache".to_string(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: cache_claim_name(name),
                read_only: None,
            }),
            ..Volume::default()
        },
        None => Volume {
            name: "cache".to_string(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Volume::default()
        },
    };
    let mut volumes = vec![
        Volume {
            name: "shm".to_string(),
            empty_dir: Some(EmptyDirVolumeSource {
                medium: Some("Memory".to_string()),
                size_limit: spec.resources.shared_memory.clone(),
            }),
            ..Volume::default()
        },
        cache_volume,
    ];
    for (index, claim) in sources.claims.iter().enumerate() {
        volumes.push(Volume {
            name: claim_volume_name(index),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: claim.clone(),
                read_only: Some(true),
            }),
            ..Volume::default()
        });
    }

    let init_containers: Vec<Container> = sources
        .s3_syncs
        .iter()
        .map(|(container_name, uri, directory)| Container {
            name: container_name.clone(),
            image: Some(config.s3_sync_image.clone()),
            command: Some(vec!["aws".to_string()]),
            args: Some(vec![
                "s3".to_string(),
                "sync".to_string(),
                "--no-progress".to_string(),
                uri.clone(),
                directory.clone(),
            ]),
            env: (!spec.engine.env.is_empty()).then(|| spec.engine.env.clone()),
            volume_mounts: Some(vec![VolumeMount {
                name: "cache".to_string(),
                mount_path: CACHE_MOUNT_PATH.to_string(),
                ..VolumeMount::default()
            }]),
            ..Container::default()
        })
        .collect();

    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels),
            annotations: Some(annotations),
            ..ObjectMeta::default()
        }),
        spec: Some(PodSpec {
            init_containers: (!init_containers.is_empty()).then_some(init_containers),
            containers: vec![engine_container(spec, sources, config)],
            volumes: Some(volumes),
            node_selector: (!node_selector.is_empty()).then_some(node_selector),
            tolerations: (!tolerations.is_empty()).then_some(tolerations),
            affinity: spec.scheduling.affinity.clone(),
            priority_class_name: spec.scheduling.priority_class_name.clone(),
            runtime_class_name: spec.scheduling.runtime_class_name.clone(),
            service_account_name: spec.pod_template.service_account_name.clone(),
            image_pull_secrets: (!spec.pod_template.image_pull_secrets.is_empty())
                .then(|| spec.pod_template.image_pull_secrets.clone()),
            termination_grace_period_seconds: Some(TERMINATION_GRACE_PERIOD_SECONDS),
            enable_service_links: Some(false),
            ..PodSpec::default()
        }),
    }
}

fn engine_container(
    spec: &InferenceModelSpec,
    sources: &Sources,
    config: &BuildConfig,
) -> Container {
    let mut volume_mounts = vec![
        VolumeMount {
            name: "shm".to_string(),
            mount_path: "/dev/shm".to_string(),
            ..VolumeMount::default()
        },
        VolumeMount {
            name: "cache".to_string(),
            mount_path: CACHE_MOUNT_PATH.to_string(),
            ..VolumeMount::default()
        },
    ];
    for (index, claim) in sources.claims.iter().enumerate() {
        volume_mounts.push(VolumeMount {
            name: claim_volume_name(index),
            mount_path: format!("{MODELS_MOUNT_ROOT}/{claim}"),
            read_only: Some(true),
            ..VolumeMount::default()
        });
    }

    let health = |period_seconds: i32, timeout_seconds: i32, failure_threshold: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(HEALTH_PATH.to_string()),
            port: IntOrString::String(PORT_NAME.to_string()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period_seconds),
        timeout_seconds: Some(timeout_seconds),
        failure_threshold: Some(failure_threshold),
        ..Probe::default()
    };
    let startup = spec.startup_probe();

    Container {
        name: ENGINE_CONTAINER.to_string(),
        image: Some(
            spec.engine
                .image
                .clone()
                .unwrap_or_else(|| config.default_engine_image.clone()),
        ),
        args: Some(engine_args(spec, sources)),
        env: Some(engine_env(spec)),
        ports: Some(vec![ContainerPort {
            name: Some(PORT_NAME.to_string()),
            container_port: spec.engine.port,
            protocol: Some("TCP".to_string()),
            ..ContainerPort::default()
        }]),
        resources: Some(resources(spec)),
        volume_mounts: Some(volume_mounts),
        // Generous: covers downloading and loading the weights. The other probes only start
        // once this one has passed.
        startup_probe: Some(health(
            startup.period_seconds,
            5,
            startup.failure_threshold(),
        )),
        readiness_probe: Some(health(5, 5, 3)),
        // A minute of failed checks: a busy engine may answer /health slowly, a hung one not.
        liveness_probe: Some(health(15, 10, 4)),
        lifecycle: Some(Lifecycle {
            pre_stop: Some(LifecycleHandler {
                sleep: Some(SleepAction {
                    seconds: PRE_STOP_SLEEP_SECONDS,
                }),
                ..LifecycleHandler::default()
            }),
            ..Lifecycle::default()
        }),
        ..Container::default()
    }
}

/// The `vllm serve` arguments (the image's entrypoint supplies `vllm serve`).
pub fn engine_args_for(spec: &InferenceModelSpec) -> Result<Vec<String>, ModelSourceError> {
    Ok(engine_args(spec, &Sources::resolve(spec)?))
}

fn engine_args(spec: &InferenceModelSpec, sources: &Sources) -> Vec<String> {
    let mut args = vec![
        sources.model.clone(),
        "--served-model-name".to_string(),
        spec.model.name.clone(),
        "--port".to_string(),
        spec.engine.port.to_string(),
        "--tensor-parallel-size".to_string(),
        spec.tensor_parallel().to_string(),
    ];
    if spec.pipeline_parallel() > 1 {
        args.extend([
            "--pipeline-parallel-size".to_string(),
            spec.pipeline_parallel().to_string(),
        ]);
    }
    if let Some(vllm) = &spec.engine.vllm {
        if let Some(max_model_len) = vllm.max_model_len {
            args.extend(["--max-model-len".to_string(), max_model_len.to_string()]);
        }
        if let Some(utilization) = vllm.gpu_memory_utilization {
            args.extend([
                "--gpu-memory-utilization".to_string(),
                utilization.to_string(),
            ]);
        }
        if vllm.dtype != kinfer_crds::Dtype::Auto {
            args.extend(["--dtype".to_string(), vllm.dtype.as_str().to_string()]);
        }
        if let Some(quantization) = &vllm.quantization {
            args.extend(["--quantization".to_string(), quantization.clone()]);
        }
        args.push(
            if vllm.enable_prefix_caching {
                "--enable-prefix-caching"
            } else {
                "--no-enable-prefix-caching"
            }
            .to_string(),
        );
    }
    if let Some(revision) = &spec.model.revision {
        args.extend(["--revision".to_string(), revision.clone()]);
    }
    // `--task embed` is understood by every vLLM release up to 0.11 (where `--runner pooling`
    // is the new spelling), so it works with older pinned images too.
    if spec.serves(Feature::TextEmbedding) && !spec.serves(Feature::TextGeneration) {
        args.extend(["--task".to_string(), "embed".to_string()]);
    }
    if !sources.adapters.is_empty() {
        args.push("--enable-lora".to_string());
        args.push("--lora-modules".to_string());
        args.extend(
            sources
                .adapters
                .iter()
                .map(|(name, location)| format!("{name}={location}")),
        );
        // vLLM's default of 1 would make requests to different adapters take turns.
        args.extend([
            "--max-loras".to_string(),
            sources.adapters.len().to_string(),
        ]);
    }
    args.extend(spec.engine.args.iter().cloned());
    args
}

fn engine_env(spec: &InferenceModelSpec) -> Vec<EnvVar> {
    let mut env = vec![EnvVar {
        name: "HF_HOME".to_string(),
        value: Some(HF_HOME.to_string()),
        value_from: None,
    }];
    if let Some(secret) = spec
        .cache
        .as_ref()
        .and_then(|cache| cache.hf_token_secret_ref.as_ref())
    {
        env.push(EnvVar {
            name: "HF_TOKEN".to_string(),
            value: None,
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: secret.name.clone(),
                    key: secret.key.clone(),
                    optional: None,
                }),
                ..EnvVarSource::default()
            }),
        });
    }
    // The user's variables override the operator's of the same name. Server-side apply keys
    // env by name and rejects duplicates, so an override replaces rather than repeats.
    for user in &spec.engine.env {
        match env.iter_mut().find(|existing| existing.name == user.name) {
            Some(existing) => *existing = user.clone(),
            None => env.push(user.clone()),
        }
    }
    env
}

fn resources(spec: &InferenceModelSpec) -> ResourceRequirements {
    let mut amounts = BTreeMap::new();
    if spec.gpus() > 0 {
        amounts.insert(
            spec.resources.gpu_resource_name.clone(),
            Quantity(spec.gpus().to_string()),
        );
    }
    if let Some(cpu) = &spec.resources.cpu {
        amounts.insert("cpu".to_string(), cpu.clone());
    }
    if let Some(memory) = &spec.resources.memory {
        amounts.insert("memory".to_string(), memory.clone());
    }
    // Requests equal limits: extended resources require it, and an engine that holds its
    // whole GPU memory from the start gains nothing from burstable CPU or memory.
    ResourceRequirements {
        requests: (!amounts.is_empty()).then(|| amounts.clone()),
        limits: (!amounts.is_empty()).then_some(amounts),
        ..ResourceRequirements::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(yaml: &str) -> InferenceModel {
        let mut model: InferenceModel = serde_yaml::from_str(yaml).unwrap();
        model.metadata.namespace.get_or_insert_with(|| "ml".into());
        model.metadata.uid = Some("uid-1".into());
        model
    }

    fn args(yaml: &str) -> Vec<String> {
        let model = model(yaml);
        engine_args_for(&model.spec).unwrap()
    }

    #[test]
    fn minimal_model_args() {
        assert_eq!(
            args("metadata: {name: m}\nspec: {model: {name: Qwen/Qwen2.5-0.5B-Instruct}}"),
            [
                "Qwen/Qwen2.5-0.5B-Instruct",
                "--served-model-name",
                "Qwen/Qwen2.5-0.5B-Instruct",
                "--port",
                "8000",
                "--tensor-parallel-size",
                "1"
            ]
        );
    }

    #[test]
    fn pvc_and_s3_sources_become_paths() {
        let model = model(
            r#"
metadata: {name: m}
spec:
  model: {name: llama, source: pvc://weights/llama/8b}
  adapters:
    - {name: a, source: s3://bucket/loras/a}
    - {name: b, source: pvc://weights/loras/b}
    - {name: c, source: hf://org/c-lora}
"#,
        );
        let args = engine_args_for(&model.spec).unwrap();
        assert_eq!(args[0], "/models/weights/llama/8b");
        let lora = args.iter().position(|arg| arg == "--lora-modules").unwrap();
        assert_eq!(
            args[lora + 1..lora + 4],
            [
                "a=/cache/s3/bucket/loras/a",
                "b=/models/weights/loras/b",
                "c=org/c-lora"
            ]
        );
        let children = build(&model, 1, &BuildConfig::default()).unwrap();
        let pod = children.deployment.spec.unwrap().template.spec.unwrap();
        // One volume per claim, however many sources use it.
        let claims: Vec<_> = pod
            .volumes
            .unwrap()
            .into_iter()
            .filter_map(|volume| volume.persistent_volume_claim)
            .map(|claim| (claim.claim_name, claim.read_only))
            .collect();
        assert_eq!(claims, [("weights".to_string(), Some(true))]);
        let init = pod.init_containers.unwrap();
        assert_eq!(init.len(), 1);
        assert_eq!(init[0].name, "fetch-adapter-0");
        assert_eq!(
            init[0].args.as_deref().unwrap()[3..],
            ["s3://bucket/loras/a", "/cache/s3/bucket/loras/a"]
        );
    }

    #[test]
    fn embedding_only_models_run_the_embed_task() {
        let args =
            args("metadata: {name: m}\nspec: {model: {name: e5}, features: [TextEmbedding]}");
        assert!(args.ends_with(&["--task".to_string(), "embed".to_string()]));
        let both = super::tests::args(
            "metadata: {name: m}\nspec: {model: {name: e5}, features: [TextGeneration, TextEmbedding]}",
        );
        assert!(!both.contains(&"--task".to_string()));
    }

    #[test]
    fn user_env_overrides_operator_env() {
        let model = model(
            r#"
metadata: {name: m}
spec:
  model: {name: m}
  engine: {env: [{name: HF_HOME, value: /data}, {name: X, value: "1"}]}
"#,
        );
        let env = engine_env(&model.spec);
        let names: Vec<_> = env.iter().map(|var| var.name.as_str()).collect();
        assert_eq!(names, ["HF_HOME", "X"]);
        assert_eq!(env[0].value.as_deref(), Some("/data"));
    }

    #[test]
    fn cpu_only_models_request_no_gpu_and_tolerate_no_taint() {
        let model = model("metadata: {name: m}\nspec: {model: {name: m}, resources: {gpus: 0}}");
        let children = build(&model, 1, &BuildConfig::default()).unwrap();
        let pod = children.deployment.spec.unwrap().template.spec.unwrap();
        assert_eq!(pod.tolerations, None);
        assert_eq!(
            pod.containers[0].resources,
            Some(ResourceRequirements::default())
        );
    }

    #[test]
    fn service_names_are_dns_labels() {
        assert_eq!(service_name("qwen-7b"), "qwen-7b");
        let dotted = service_name("qwen2.5-7b");
        assert!(dotted.starts_with("qwen2-5-7b-"), "{dotted}");
        assert_ne!(dotted, service_name("qwen2-5-7b"));
        let digit = service_name("7b");
        assert!(digit.starts_with("im-7b-"), "{digit}");
        let long = service_name(&"a".repeat(100));
        assert!(long.len() <= 63, "{long}");
        for name in [dotted, digit, long] {
            assert!(name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'));
        }
    }

    #[test]
    fn missing_uid_is_an_error() {
        let mut model = model("metadata: {name: m}\nspec: {model: {name: m}}");
        model.metadata.uid = None;
        assert!(matches!(
            build(&model, 1, &BuildConfig::default()),
            Err(BuildError::MissingMetadata("uid"))
        ));
    }

    #[test]
    fn long_names_are_rejected() {
        let mut model = model("metadata: {name: m}\nspec: {model: {name: m}}");
        assert!(validate_metadata(&model).is_ok());
        model.metadata.name = Some("m".repeat(64));
        assert!(validate_metadata(&model)
            .unwrap_err()
            .contains("at most 63"));
    }
}
