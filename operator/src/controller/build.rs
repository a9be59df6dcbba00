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
//! - **Draining** (docs/operations.md, "Draining"): a `preStop` sleep keeps the old engine
//!   serving while the gateway and load balancers notice the pod is terminating and stop sending
//!   it requests. vLLM does not drain by itself: without `--shutdown-timeout` a SIGTERM stops
//!   generation mid-stream and usually leaves clients hanging (docs/engines.md). So the operator passes
//!   `--shutdown-timeout` = grace period - preStop sleep - margin
//!   ([`kinfer_crds::spec::shutdown_timeout_seconds`]); vLLM then finishes in-flight requests
//!   and answers new ones with 500 until they are done or the timeout ends.
//! - **No BestEffort engines**: without `spec.resources.cpu`/`memory` the engine requests CPU
//!   and memory scaled by its GPU count ([`DEFAULT_CPU_PER_GPU`], [`DEFAULT_MEMORY_GIB_PER_GPU`]),
//!   with a memory limit equal to the request and no CPU limit, plus ephemeral storage for its
//!   emptyDirs, which have size limits. Under node pressure a BestEffort pod is evicted first,
//!   and a GPU engine is the most expensive thing to restart.
//! - **Pod Security "restricted"**: the engine runs as uid/gid [`ENGINE_USER_ID`] (vLLM's images
//!   run as root by default) with RuntimeDefault seccomp, no privilege escalation and no
//!   capabilities. `HOME` and the compile caches point into the `home` emptyDir, the Hugging Face
//!   cache into the cache volume (`fsGroup` makes both writable).
//! - **s3:// sources** are copied into the cache volume by an init container per source running
//!   `aws s3 sync` (image: the operator's `--s3-sync-image`), then served from that path. It
//!   works for adapters too (vLLM's `runai_streamer` load format only covers the base model),
//!   and with a PVC cache a restart only syncs what changed. Credentials come from the pod's
//!   ServiceAccount (IRSA, workload identity) or from `spec.engine.env`
//!   (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_ENDPOINT_URL`, ...), which the init
//!   containers receive too.
//! - **pvc:// sources** are mounted read-only at `/models/<claim>`.
//! - **Cache PVC** (`spec.cache.size`): every replica of the Deployment mounts the same claim.
//!   Its access mode is `spec.cache.accessMode`, by default ReadWriteOnce when at most one
//!   replica runs (every StorageClass supports it) and ReadWriteMany otherwise (replicas may sit
//!   on different nodes; needs NFS, EFS, Filestore, CephFS, ...).
//! - **`HF_HUB_OFFLINE=1`** when no source is `hf://`: the weights are on a volume or synced
//!   before the engine starts, so a call to the Hub could only slow the start or fail it in a
//!   cluster without Internet access.
//! - **PodDisruptionBudget** (`maxUnavailable: 1`, `unhealthyPodEvictionPolicy: AlwaysAllow`):
//!   a node drain takes the replicas of a model down one at a time, while replicas that are not
//!   ready (crash looping, still loading) never block it.
//! - **`enableServiceLinks: false`**: Kubernetes would otherwise inject `<SERVICE>_PORT`
//!   variables, and a Service named `vllm` yields `VLLM_PORT=tcp://...`, which vLLM reads as
//!   its own setting and fails on.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource,
    HTTPGetAction, Lifecycle, LifecycleHandler, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PersistentVolumeClaimVolumeSource, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    ResourceRequirements, SeccompProfile, SecretKeySelector, SecurityContext, Service, ServicePort,
    ServiceSpec, SleepAction, Toleration, Volume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kinfer_crds::labels::{engine_annotations, engine_labels, selector_labels};
use kinfer_crds::spec::{GPU_PRODUCT_NODE_LABEL, PRE_STOP_SLEEP_SECONDS};
use kinfer_crds::{Feature, InferenceModel, InferenceModelSpec, ModelSource, ModelSourceError};
use kube::{Resource, ResourceExt};

/// The vLLM release of the default engine images: the behaviour suite
/// (e2e/vllm-sim/tests/conformance.rs) last passed against vLLM 0.32.0, and the arguments the
/// builders write (`--runner pooling`, `--shutdown-timeout`) follow its `vllm serve --help`.
macro_rules! vllm_release {
    () => {
        "v0.32.0"
    };
}

/// Default engine image for `engine.kind: VLLM` on GPUs.
pub const DEFAULT_ENGINE_IMAGE: &str = concat!("vllm/vllm-openai:", vllm_release!());
/// Default engine image for `engine.kind: VLLM` with `resources.gpus: 0`: vLLM's CPU build. The
/// name is the one vLLM's release notes list for the CPU image (`vllm/vllm-openai-cpu:v<version>`);
/// the installation docs also document architecture-suffixed tags (`v<version>-x86_64`). Not
/// pulled from here: a cluster whose CPU nodes lack the tag sets `--default-cpu-engine-image`.
pub const DEFAULT_CPU_ENGINE_IMAGE: &str = concat!("vllm/vllm-openai-cpu:", vllm_release!());
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
/// Where the `home` emptyDir is mounted: `HOME`, `XDG_CACHE_HOME` and vLLM's cache root (torch
/// compile, Triton and FlashInfer caches), writable by [`ENGINE_USER_ID`].
pub const HOME_MOUNT_PATH: &str = "/home/engine";
/// User and group the engine pods run as. vLLM's images run as root unless told otherwise, which
/// Pod Security "restricted" forbids; any non-root uid works because every directory the engine
/// writes is a volume made group-writable through `fsGroup`.
pub const ENGINE_USER_ID: i64 = 1000;
/// CPUs requested per GPU when spec.resources.cpu is unset. vLLM runs one busy engine-core
/// process per GPU besides its API server and tokenizers; 2 per GPU still fits the common
/// 4-vCPU, 1-GPU nodes (AWS g4dn/g6.xlarge, GCP g2-standard-4) next to their daemons. No CPU
/// limit goes with it: a throttled engine stalls every stream it is generating.
pub const DEFAULT_CPU_PER_GPU: i32 = 2;
/// CPUs requested by a CPU-only model (gpus 0) when spec.resources.cpu is unset: the CPU does
/// the model's arithmetic.
pub const DEFAULT_CPU_WITHOUT_GPU: i32 = 4;
/// Memory (GiB) requested, and its limit, per GPU when spec.resources.memory is unset: vLLM's
/// processes hold a few GiB each (API server, engine core, one worker per GPU); the weights are
/// memory-mapped, so their page cache is reclaimable and does not cause an OOM kill. Fits 1-GPU
/// nodes with 16 GiB.
pub const DEFAULT_MEMORY_GIB_PER_GPU: i32 = 12;
/// Memory (GiB) requested, and its limit, by a CPU-only model when spec.resources.memory is
/// unset: the weights and the KV cache live in it.
pub const DEFAULT_MEMORY_GIB_WITHOUT_GPU: i32 = 16;
/// Size limit (GiB) of the emptyDir weight cache (no spec.cache.size) per GPU, a CPU-only model
/// counting as one: a model sharded over N GPUs weighs at most about N GPUs' memory, and 50 GiB
/// holds a 24B bf16 model per GPU. Bigger models need a cache claim (spec.cache.size).
pub const CACHE_EMPTY_DIR_GIB_PER_GPU: i32 = 50;
/// Size limit (GiB) of the `home` emptyDir: compile caches are hundreds of MiB.
pub const HOME_SIZE_LIMIT_GIB: i32 = 10;
/// Added to the startup timeout to get the Deployment's progressDeadlineSeconds, so a slow but
/// healthy download is not reported as a failed rollout.
pub const PROGRESS_DEADLINE_MARGIN_SECONDS: i32 = 600;
/// Longest Kubernetes label value, and so the longest InferenceModel name the operator accepts
/// (the name is the `kinfer.dev/model` label value).
pub const MAX_MODEL_NAME_LENGTH: usize = 63;

/// Operator settings the builders need.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuildConfig {
    /// Engine image when `spec.engine.image` is not set and the model has GPUs.
    pub default_engine_image: String,
    /// Engine image when `spec.engine.image` is not set and `resources.gpus` is 0.
    pub default_cpu_engine_image: String,
    /// Image of the `s3://` sync init containers; must provide `aws`.
    pub s3_sync_image: String,
}

impl Default for BuildConfig {
    fn default() -> Self {
        Self {
            default_engine_image: DEFAULT_ENGINE_IMAGE.to_string(),
            default_cpu_engine_image: DEFAULT_CPU_ENGINE_IMAGE.to_string(),
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
    /// Keeps voluntary disruptions (node drains) to one engine replica at a time.
    pub disruption_budget: PodDisruptionBudget,
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

/// Name of the engine PodDisruptionBudget: the InferenceModel's name, like its Deployment.
pub fn disruption_budget_name(model_name: &str) -> String {
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
                access_modes: spec
                    .cache_access_mode()
                    .map(|mode| vec![mode.as_str().to_string()]),
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

    let disruption_budget = PodDisruptionBudget {
        metadata: metadata(disruption_budget_name(&name)),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(selector_labels(&name)),
                match_expressions: None,
            }),
            // A replica that is not ready serves nothing; keeping it must not block a drain.
            unhealthy_pod_eviction_policy: Some("AlwaysAllow".to_string()),
            min_available: None,
        }),
        status: None,
    };

    Ok(Children {
        deployment,
        service,
        cache_claim,
        disruption_budget,
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
    /// Whether any source is on the Hugging Face Hub (downloaded by the engine itself).
    uses_hub: bool,
}

impl Sources {
    fn resolve(spec: &InferenceModelSpec) -> Result<Self, ModelSourceError> {
        let mut sources = Sources {
            model: String::new(),
            adapters: Vec::new(),
            claims: Vec::new(),
            s3_syncs: Vec::new(),
            uses_hub: false,
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
            ModelSource::HuggingFace { repo } => {
                self.uses_hub = true;
                repo
            }
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
            empty_dir: Some(EmptyDirVolumeSource {
                medium: None,
                size_limit: Some(gibibytes(cache_empty_dir_gib(spec))),
            }),
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
        Volume {
            name: "home".to_string(),
            empty_dir: Some(EmptyDirVolumeSource {
                medium: None,
                size_limit: Some(gibibytes(HOME_SIZE_LIMIT_GIB)),
            }),
            ..Volume::default()
        },
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
            // HOME: the AWS CLI keeps its credential cache there.
            env: Some(with_user_env(
                vec![plain_env("HOME", HOME_MOUNT_PATH)],
                &spec.engine.env,
            )),
            volume_mounts: Some(vec![
                mount("cache", CACHE_MOUNT_PATH),
                mount("home", HOME_MOUNT_PATH),
            ]),
            security_context: Some(container_security_context()),
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
            termination_grace_period_seconds: Some(i64::from(
                spec.engine.termination_grace_period_seconds,
            )),
            enable_service_links: Some(false),
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                run_as_user: Some(ENGINE_USER_ID),
                run_as_group: Some(ENGINE_USER_ID),
                fs_group: Some(ENGINE_USER_ID),
                // Without it the kubelet re-owns every file of a cache claim on each mount:
                // minutes for a large model's weights.
                fs_group_change_policy: Some("OnRootMismatch".to_string()),
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".to_string(),
                    localhost_profile: None,
                }),
                ..PodSecurityContext::default()
            }),
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
        mount("shm", "/dev/shm"),
        mount("cache", CACHE_MOUNT_PATH),
        mount("home", HOME_MOUNT_PATH),
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
        image: Some(engine_image(spec, config)),
        args: Some(engine_args(spec, sources)),
        env: Some(engine_env(spec, sources)),
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
                    seconds: i64::from(PRE_STOP_SLEEP_SECONDS),
                }),
                ..LifecycleHandler::default()
            }),
            ..Lifecycle::default()
        }),
        security_context: Some(container_security_context()),
        ..Container::default()
    }
}

/// A read-write mount of the pod volume `name` at `path`.
fn mount(name: &str, path: &str) -> VolumeMount {
    VolumeMount {
        name: name.to_string(),
        mount_path: path.to_string(),
        ..VolumeMount::default()
    }
}

/// What Pod Security "restricted" asks of every container (the pod-level part is in
/// [`pod_template`]).
fn container_security_context() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_string()]),
            add: None,
        }),
        ..SecurityContext::default()
    }
}

/// spec.engine.image, else the operator's default for GPU or CPU-only models.
fn engine_image(spec: &InferenceModelSpec, config: &BuildConfig) -> String {
    match &spec.engine.image {
        Some(image) => image.clone(),
        None if spec.gpus() > 0 => config.default_engine_image.clone(),
        None => config.default_cpu_engine_image.clone(),
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
        // Only when asked: vLLM decides per model otherwise, and forcing it on crashes some
        // pooling models.
        match vllm.enable_prefix_caching {
            Some(true) => args.push("--enable-prefix-caching".to_string()),
            Some(false) => args.push("--no-enable-prefix-caching".to_string()),
            None => {}
        }
    }
    if let Some(revision) = &spec.model.revision {
        args.extend(["--revision".to_string(), revision.clone()]);
    }
    // vLLM 0.32 has no `--task` (removed in favour of `--runner`, which 0.10 introduced). A
    // model generates or embeds, never both (spec.features rule).
    if spec.serves(Feature::TextEmbedding) {
        args.extend(["--runner".to_string(), "pooling".to_string()]);
    }
    // vLLM's default of 0 aborts in-flight requests on SIGTERM; with a timeout it finishes them
    // and refuses new ones (docs/operations.md, "Draining").
    args.extend([
        "--shutdown-timeout".to_string(),
        spec.engine.shutdown_timeout_seconds().to_string(),
    ]);
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

fn plain_env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value: Some(value.to_string()),
        value_from: None,
    }
}

fn engine_env(spec: &InferenceModelSpec, sources: &Sources) -> Vec<EnvVar> {
    let cache_home = format!("{HOME_MOUNT_PATH}/.cache");
    let mut env = vec![
        plain_env("HF_HOME", HF_HOME),
        // A non-root uid without a passwd entry: HOME is otherwise "/", and Python's
        // getpass.getuser() (torch's compile cache) fails unless USER is set.
        plain_env("HOME", HOME_MOUNT_PATH),
        plain_env("USER", "engine"),
        plain_env("XDG_CACHE_HOME", &cache_home),
        plain_env("VLLM_CACHE_ROOT", &format!("{cache_home}/vllm")),
        plain_env("NUMBA_CACHE_DIR", &format!("{cache_home}/numba")),
    ];
    if !sources.uses_hub {
        env.push(plain_env("HF_HUB_OFFLINE", "1"));
    }
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
    with_user_env(env, &spec.engine.env)
}

/// `env` with the user's variables (spec.engine.env) added; they override the operator's of the
/// same name. Server-side apply keys env by name and rejects duplicates, so an override replaces
/// rather than repeats.
fn with_user_env(mut env: Vec<EnvVar>, user_env: &[EnvVar]) -> Vec<EnvVar> {
    for user in user_env {
        match env.iter_mut().find(|existing| existing.name == user.name) {
            Some(existing) => *existing = user.clone(),
            None => env.push(user.clone()),
        }
    }
    env
}

fn gibibytes(amount: i32) -> Quantity {
    Quantity(format!("{amount}Gi"))
}

/// Size limit (GiB) of the emptyDir weight cache.
fn cache_empty_dir_gib(spec: &InferenceModelSpec) -> i32 {
    CACHE_EMPTY_DIR_GIB_PER_GPU.saturating_mul(spec.gpus().max(1))
}

fn resources(spec: &InferenceModelSpec) -> ResourceRequirements {
    let gpus = spec.gpus();
    let mut requests = BTreeMap::new();
    let mut limits = BTreeMap::new();
    // Extended resources need request = limit.
    if gpus > 0 {
        let amount = Quantity(gpus.to_string());
        requests.insert(spec.resources.gpu_resource_name.clone(), amount.clone());
        limits.insert(spec.resources.gpu_resource_name.clone(), amount);
    }
    // Set by the user: request = limit, as the field promises.
    match &spec.resources.cpu {
        Some(cpu) => {
            requests.insert("cpu".to_string(), cpu.clone());
            limits.insert("cpu".to_string(), cpu.clone());
        }
        None => {
            let cpus = if gpus > 0 {
                DEFAULT_CPU_PER_GPU.saturating_mul(gpus)
            } else {
                DEFAULT_CPU_WITHOUT_GPU
            };
            requests.insert("cpu".to_string(), Quantity(cpus.to_string()));
        }
    }
    let memory = spec.resources.memory.clone().unwrap_or_else(|| {
        gibibytes(if gpus > 0 {
            DEFAULT_MEMORY_GIB_PER_GPU.saturating_mul(gpus)
        } else {
            DEFAULT_MEMORY_GIB_WITHOUT_GPU
        })
    });
    requests.insert("memory".to_string(), memory.clone());
    limits.insert("memory".to_string(), memory);
    // What the emptyDirs may fill (no limit: their sizeLimits bound them). Memory-backed
    // /dev/shm is memory, not ephemeral storage.
    let mut scratch_gib = HOME_SIZE_LIMIT_GIB;
    if spec
        .cache
        .as_ref()
        .and_then(|cache| cache.size.as_ref())
        .is_none()
    {
        scratch_gib = scratch_gib.saturating_add(cache_empty_dir_gib(spec));
    }
    requests.insert("ephemeral-storage".to_string(), gibibytes(scratch_gib));
    ResourceRequirements {
        requests: Some(requests),
        limits: Some(limits),
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
                "1",
                "--shutdown-timeout",
                "165"
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

    fn pod(model: &InferenceModel) -> k8s_openapi::api::core::v1::PodSpec {
        let children = build(model, 1, &BuildConfig::default()).unwrap();
        children.deployment.spec.unwrap().template.spec.unwrap()
    }

    fn env_value<'a>(env: &'a [EnvVar], name: &str) -> Option<&'a str> {
        env.iter()
            .find(|var| var.name == name)
            .and_then(|var| var.value.as_deref())
    }

    fn flag_value<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
        let position = args.iter().position(|arg| arg == flag)?;
        args.get(position + 1).map(String::as_str)
    }

    #[test]
    fn embedding_models_run_the_pooling_runner() {
        let args =
            args("metadata: {name: m}\nspec: {model: {name: e5}, features: [TextEmbedding]}");
        assert_eq!(flag_value(&args, "--runner"), Some("pooling"));
        assert!(
            !args.contains(&"--task".to_string()),
            "vLLM 0.32 has no --task"
        );
        let generation = super::tests::args("metadata: {name: m}\nspec: {model: {name: m}}");
        assert!(!generation.contains(&"--runner".to_string()));
    }

    #[test]
    fn prefix_caching_is_passed_only_when_set() {
        let flags = |vllm: &str| {
            args(&format!(
                "metadata: {{name: m}}\nspec: {{model: {{name: m}}, engine: {{vllm: {vllm}}}}}"
            ))
            .into_iter()
            .filter(|arg| arg.contains("prefix-caching"))
            .collect::<Vec<_>>()
        };
        assert!(
            flags("{maxModelLen: 4096}").is_empty(),
            "the engine decides"
        );
        assert_eq!(
            flags("{enablePrefixCaching: true}"),
            ["--enable-prefix-caching"]
        );
        assert_eq!(
            flags("{enablePrefixCaching: false}"),
            ["--no-enable-prefix-caching"]
        );
    }

    #[test]
    fn grace_period_sets_the_pod_and_the_shutdown_timeout() {
        let model = model(
            "metadata: {name: m}\nspec: {model: {name: m}, engine: {terminationGracePeriodSeconds: 900}}",
        );
        let pod = pod(&model);
        assert_eq!(pod.termination_grace_period_seconds, Some(900));
        let engine = &pod.containers[0];
        let args = engine.args.as_deref().unwrap();
        assert_eq!(flag_value(args, "--shutdown-timeout"), Some("885"));
        let pre_stop = engine
            .lifecycle
            .as_ref()
            .and_then(|lifecycle| lifecycle.pre_stop.as_ref())
            .and_then(|handler| handler.sleep.as_ref())
            .map(|sleep| sleep.seconds);
        assert_eq!(pre_stop, Some(10));
        // Default: 180 s, so 165 s for in-flight requests.
        let pod = super::tests::pod(&super::tests::model(
            "metadata: {name: m}\nspec: {model: {name: m}}",
        ));
        assert_eq!(pod.termination_grace_period_seconds, Some(180));
        let args = pod.containers[0].args.clone().unwrap();
        assert_eq!(flag_value(&args, "--shutdown-timeout"), Some("165"));
    }

    #[test]
    fn default_image_depends_on_gpus() {
        let config = BuildConfig::default();
        let image = |yaml: &str| pod(&model(yaml)).containers[0].image.clone().unwrap();
        assert_eq!(
            image("metadata: {name: m}\nspec: {model: {name: m}}"),
            DEFAULT_ENGINE_IMAGE
        );
        assert_eq!(
            image("metadata: {name: m}\nspec: {model: {name: m}, resources: {gpus: 0}}"),
            config.default_cpu_engine_image
        );
        // Both defaults come from the same vLLM release.
        assert_eq!(
            DEFAULT_CPU_ENGINE_IMAGE
                .rsplit_once(':')
                .map(|(_, tag)| tag),
            DEFAULT_ENGINE_IMAGE.rsplit_once(':').map(|(_, tag)| tag)
        );
        assert_eq!(
            image("metadata: {name: m}\nspec: {model: {name: m}, resources: {gpus: 0}, engine: {image: mine:1}}"),
            "mine:1"
        );
    }

    #[test]
    fn pods_meet_the_restricted_pod_security_standard() {
        let model = model(
            "metadata: {name: m}\nspec: {model: {name: m}, adapters: [{name: a, source: s3://bucket/a}]}",
        );
        let pod = pod(&model);
        let security = pod.security_context.unwrap();
        assert_eq!(security.run_as_non_root, Some(true));
        assert_eq!(security.run_as_user, Some(ENGINE_USER_ID));
        assert_ne!(security.run_as_user, Some(0));
        assert_eq!(security.fs_group, Some(ENGINE_USER_ID));
        assert_eq!(
            security.seccomp_profile.map(|profile| profile.type_),
            Some("RuntimeDefault".to_string())
        );
        let containers = pod
            .containers
            .iter()
            .chain(pod.init_containers.iter().flatten());
        let mut count = 0;
        for container in containers {
            count += 1;
            let security = container.security_context.clone().unwrap();
            assert_eq!(
                security.allow_privilege_escalation,
                Some(false),
                "{}",
                container.name
            );
            assert_eq!(
                security
                    .capabilities
                    .and_then(|capabilities| capabilities.drop),
                Some(vec!["ALL".to_string()])
            );
            assert_eq!(security.privileged, None);
            // Every container has a writable HOME on a volume.
            let env = container.env.clone().unwrap();
            assert_eq!(env_value(&env, "HOME"), Some(HOME_MOUNT_PATH));
            assert!(container
                .volume_mounts
                .iter()
                .flatten()
                .any(|mount| mount.name == "home" && mount.mount_path == HOME_MOUNT_PATH));
        }
        assert_eq!(count, 2, "the engine and the s3 sync");
        let env = pod.containers[0].env.clone().unwrap();
        for name in ["XDG_CACHE_HOME", "VLLM_CACHE_ROOT", "NUMBA_CACHE_DIR"] {
            assert!(
                env_value(&env, name).is_some_and(|value| value.starts_with(HOME_MOUNT_PATH)),
                "{name}"
            );
        }
        assert_eq!(env_value(&env, "HF_HOME"), Some(HF_HOME));
        // /dev/shm stays.
        let volumes = pod.volumes.unwrap();
        assert!(volumes.iter().any(|volume| volume.name == "shm"
            && volume
                .empty_dir
                .as_ref()
                .and_then(|dir| dir.medium.as_deref())
                == Some("Memory")));
    }

    #[test]
    fn hub_goes_offline_when_no_source_is_on_the_hub() {
        let offline = |yaml: &str| {
            let model = model(yaml);
            let sources = Sources::resolve(&model.spec).unwrap();
            env_value(&engine_env(&model.spec, &sources), "HF_HUB_OFFLINE").map(str::to_string)
        };
        assert_eq!(
            offline("metadata: {name: m}\nspec: {model: {name: m}}"),
            None
        );
        assert_eq!(
            offline("metadata: {name: m}\nspec: {model: {name: m, source: pvc://weights/m}}"),
            Some("1".to_string())
        );
        assert_eq!(
            offline("metadata: {name: m}\nspec: {model: {name: m, source: s3://bucket/m}}"),
            Some("1".to_string())
        );
        assert_eq!(
            offline(
                "metadata: {name: m}\nspec: {model: {name: m, source: pvc://weights/m}, adapters: [{name: a, source: hf://org/a}]}"
            ),
            None,
            "an adapter still comes from the Hub"
        );
        assert_eq!(
            offline(
                "metadata: {name: m}\nspec: {model: {name: m, source: pvc://weights/m}, engine: {env: [{name: HF_HUB_OFFLINE, value: \"0\"}]}}"
            ),
            Some("0".to_string()),
            "the user's variable wins"
        );
    }

    #[test]
    fn default_resources_scale_with_gpus() {
        let resources = |yaml: &str| pod(&model(yaml)).containers[0].resources.clone().unwrap();
        let amount = |map: &Option<BTreeMap<String, Quantity>>, key: &str| {
            map.as_ref()
                .and_then(|map| map.get(key))
                .map(|quantity| quantity.0.clone())
        };
        let four = resources("metadata: {name: m}\nspec: {model: {name: m}, resources: {gpus: 4}}");
        assert_eq!(
            amount(&four.requests, "nvidia.com/gpu").as_deref(),
            Some("4")
        );
        assert_eq!(amount(&four.limits, "nvidia.com/gpu").as_deref(), Some("4"));
        assert_eq!(amount(&four.requests, "cpu").as_deref(), Some("8"));
        assert_eq!(amount(&four.limits, "cpu"), None, "no CPU limit");
        assert_eq!(amount(&four.requests, "memory").as_deref(), Some("48Gi"));
        assert_eq!(amount(&four.limits, "memory").as_deref(), Some("48Gi"));
        // The emptyDir cache (4 x 50Gi) plus home (10Gi).
        assert_eq!(
            amount(&four.requests, "ephemeral-storage").as_deref(),
            Some("210Gi")
        );
        assert_eq!(amount(&four.limits, "ephemeral-storage"), None);

        let cpu_only =
            resources("metadata: {name: m}\nspec: {model: {name: m}, resources: {gpus: 0}}");
        assert_eq!(amount(&cpu_only.requests, "cpu").as_deref(), Some("4"));
        assert_eq!(
            amount(&cpu_only.requests, "memory").as_deref(),
            Some("16Gi")
        );
        assert_eq!(
            cpu_only.requests.as_ref().map(|requests| requests.len()),
            Some(3),
            "no GPU"
        );

        // The user's amounts win (request = limit, as documented); a cache claim takes the
        // weights off ephemeral storage.
        let set = resources(
            "metadata: {name: m}\nspec: {model: {name: m}, resources: {cpu: 500m, memory: 8Gi}, cache: {size: 20Gi}}",
        );
        assert_eq!(amount(&set.requests, "cpu").as_deref(), Some("500m"));
        assert_eq!(amount(&set.limits, "cpu").as_deref(), Some("500m"));
        assert_eq!(amount(&set.limits, "memory").as_deref(), Some("8Gi"));
        assert_eq!(
            amount(&set.requests, "ephemeral-storage").as_deref(),
            Some("10Gi")
        );
    }

    #[test]
    fn empty_dirs_have_size_limits() {
        let pod = pod(&model(
            "metadata: {name: m}\nspec: {model: {name: m}, resources: {gpus: 2}}",
        ));
        let limit = |name: &str| {
            pod.volumes
                .iter()
                .flatten()
                .find(|volume| volume.name == name)
                .and_then(|volume| volume.empty_dir.as_ref())
                .and_then(|dir| dir.size_limit.as_ref())
                .map(|quantity| quantity.0.clone())
        };
        assert_eq!(limit("cache").as_deref(), Some("100Gi"));
        assert_eq!(limit("home").as_deref(), Some("10Gi"));
    }

    #[test]
    fn cache_claim_access_mode() {
        let modes = |yaml: &str| {
            build(&model(yaml), 1, &BuildConfig::default())
                .unwrap()
                .cache_claim
                .and_then(|claim| claim.spec)
                .and_then(|spec| spec.access_modes)
        };
        assert_eq!(
            modes("metadata: {name: m}\nspec: {model: {name: m}, cache: {size: 20Gi}}"),
            Some(vec!["ReadWriteOnce".to_string()])
        );
        assert_eq!(
            modes(
                "metadata: {name: m}\nspec: {model: {name: m}, replicas: 2, cache: {size: 20Gi}}"
            ),
            Some(vec!["ReadWriteMany".to_string()])
        );
        assert_eq!(
            modes("metadata: {name: m}\nspec: {model: {name: m}, replicas: 2, cache: {size: 20Gi, accessMode: ReadWriteOnce}}"),
            Some(vec!["ReadWriteOnce".to_string()])
        );
    }

    #[test]
    fn disruption_budget_takes_one_replica_at_a_time() {
        let model = model("metadata: {name: m}\nspec: {model: {name: m}}");
        let children = build(&model, 3, &BuildConfig::default()).unwrap();
        let budget = children.disruption_budget;
        assert_eq!(budget.metadata.name.as_deref(), Some("m"));
        assert_eq!(
            budget.metadata.owner_references,
            children.deployment.metadata.owner_references
        );
        let spec = budget.spec.unwrap();
        assert_eq!(spec.max_unavailable, Some(IntOrString::Int(1)));
        assert_eq!(spec.min_available, None);
        assert_eq!(
            spec.selector.and_then(|selector| selector.match_labels),
            children
                .deployment
                .spec
                .map(|spec| spec.selector)
                .and_then(|selector| selector.match_labels)
        );
        assert_eq!(
            spec.unhealthy_pod_eviction_policy.as_deref(),
            Some("AlwaysAllow")
        );
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
        let sources = Sources::resolve(&model.spec).unwrap();
        let env = engine_env(&model.spec, &sources);
        let names: Vec<_> = env.iter().map(|var| var.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "HF_HOME",
                "HOME",
                "USER",
                "XDG_CACHE_HOME",
                "VLLM_CACHE_ROOT",
                "NUMBA_CACHE_DIR",
                "X"
            ]
        );
        assert_eq!(env[0].value.as_deref(), Some("/data"));
    }

    #[test]
    fn cpu_only_models_request_no_gpu_and_tolerate_no_taint() {
        let model = model("metadata: {name: m}\nspec: {model: {name: m}, resources: {gpus: 0}}");
        let children = build(&model, 1, &BuildConfig::default()).unwrap();
        let pod = children.deployment.spec.unwrap().template.spec.unwrap();
        assert_eq!(pod.tolerations, None);
        let resources = pod.containers[0].resources.clone().unwrap();
        assert!(resources
            .requests
            .iter()
            .chain(resources.limits.iter())
            .all(|amounts| !amounts.contains_key("nvidia.com/gpu")));
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
