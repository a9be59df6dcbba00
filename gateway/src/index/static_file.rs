//! Static discovery: models and endpoint URLs from a YAML file, re-read when it changes.
//!
//! ```yaml
//! models:
//!   - id: Qwen/Qwen2.5-7B-Instruct
//!     aliases: [qwen]                # more ids the same engines serve (--served-model-name)
//!     adapters: [sql-lora]           # LoRA adapters, listed with parent = id
//!     features: [TextGeneration]     # default [TextGeneration]
//!     strategy: RoundRobin           # LeastLoad | RoundRobin | PrefixCache; default: the flag
//!     endpoints:
//!       - http://127.0.0.1:8001
//!       - url: http://127.0.0.1:8002
//!         name: replica-b            # shown in x-kinfer-replica; default: host:port
//!         zone: zone-a               # optional placement: zone, region, node, gpuProduct
//!   - id: scaled-to-zero-model       # no endpoints: requests are held, then 503
//!     holdTimeoutSeconds: 30         # default: --hold-timeout
//!     holdQueueLimit: 100            # default: --hold-queue-limit
//! ```

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use kinfer_crds::{Feature, RoutingStrategy};
use serde::Deserialize;

use super::{Endpoint, EndpointConfig, Index, ModelConfig};
use crate::endpoint::Placement;
use crate::index::HoldSettings;

#[derive(Debug, thiserror::Error)]
pub enum StaticFileError {
    #[error("cannot read the static discovery file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid static discovery file {path}: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_yaml::Error,
    },
    #[error("invalid static discovery file {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticFile {
    #[serde(default)]
    pub models: Vec<StaticModel>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticModel {
    pub id: String,
    #[serde(default)]
    pub aliases: Vec<String>,
    #[serde(default)]
    pub adapters: Vec<String>,
    #[serde(default = "default_features")]
    pub features: Vec<Feature>,
    #[serde(default)]
    pub strategy: Option<RoutingStrategy>,
    #[serde(default)]
    pub endpoints: Vec<StaticEndpoint>,
    /// How long a request is held while the model has no ready replica; default: the flag.
    #[serde(default, rename = "holdTimeoutSeconds")]
    pub hold_timeout_seconds: Option<u64>,
    /// Requests held at once; default: the flag.
    #[serde(default, rename = "holdQueueLimit")]
    pub hold_queue_limit: Option<usize>,
}

fn default_features() -> Vec<Feature> {
    vec![Feature::TextGeneration]
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum StaticEndpoint {
    Url(String),
    Named {
        url: String,
        #[serde(default)]
        name: Option<String>,
        /// Where the replica runs, for placement requests and the `x-kinfer-*` headers.
        #[serde(default)]
        zone: Option<String>,
        #[serde(default)]
        region: Option<String>,
        #[serde(default)]
        node: Option<String>,
        #[serde(default, rename = "gpuProduct")]
        gpu_product: Option<String>,
    },
}

impl StaticFile {
    /// The model configs this file describes (aliases and adapters expanded to their own ids).
    pub fn to_configs(&self) -> Result<Vec<ModelConfig>, String> {
        let mut seen = HashSet::new();
        let mut configs = Vec::new();
        for model in &self.models {
            if model.id.trim().is_empty() {
                return Err("a model has an empty id".into());
            }
            let mut endpoints = Vec::with_capacity(model.endpoints.len());
            for endpoint in &model.endpoints {
                let (url, name, placement) = match endpoint {
                    StaticEndpoint::Url(url) => (url, None, Placement::default()),
                    StaticEndpoint::Named {
                        url,
                        name,
                        zone,
                        region,
                        node,
                        gpu_product,
                    } => (
                        url,
                        name.as_ref(),
                        Placement {
                            node: node.clone(),
                            zone: zone.clone(),
                            region: region.clone(),
                            gpu_product: gpu_product.clone(),
                        },
                    ),
                };
                let parsed = Endpoint::new("", url)
                    .map_err(|error| format!("model `{}`: {error}", model.id))?;
                endpoints.push(EndpointConfig {
                    name: name
                        .cloned()
                        .unwrap_or_else(|| parsed.address().to_string()),
                    address: parsed.address().to_string(),
                    placement,
                });
            }
            let ids = std::iter::once((&model.id, None))
                .chain(model.aliases.iter().map(|alias| (alias, None)))
                .chain(
                    model
                        .adapters
                        .iter()
                        .map(|adapter| (adapter, Some(model.id.clone()))),
                );
            for (id, parent) in ids {
                if !seen.insert(id.clone()) {
                    return Err(format!("model id `{id}` appears more than once"));
                }
                configs.push(ModelConfig {
                    id: id.clone(),
                    parent,
                    features: model.features.clone(),
                    strategy: model.strategy,
                    endpoints: endpoints.clone(),
                    hold: HoldSettings {
                        timeout: model.hold_timeout_seconds.map(Duration::from_secs),
                        queue_limit: model.hold_queue_limit,
                        ..HoldSettings::default()
                    },
                });
            }
        }
        Ok(configs)
    }
}

/// Read and validate the file.
pub fn load(path: &Path) -> Result<Vec<ModelConfig>, StaticFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| StaticFileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(path, &text)
}

pub fn parse(path: &Path, text: &str) -> Result<Vec<ModelConfig>, StaticFileError> {
    let file: StaticFile = serde_yaml::from_str(text).map_err(|source| StaticFileError::Parse {
        path: path.to_path_buf(),
        source,
    })?;
    file.to_configs()
        .map_err(|message| StaticFileError::Invalid {
            path: path.to_path_buf(),
            message,
        })
}

fn fingerprint(path: &Path) -> Option<(SystemTime, u64)> {
    let metadata = std::fs::metadata(path).ok()?;
    Some((metadata.modified().ok()?, metadata.len()))
}

/// Load the file into the index, then re-load it whenever its modification time or size
/// changes. A file that becomes invalid is reported and the last good table is kept.
pub async fn watch(path: PathBuf, poll_interval: Duration, index: Arc<Index>) {
    let mut last_seen = None;
    let mut ticker = tokio::time::interval(poll_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let current = fingerprint(&path);
        if current.is_none() || current == last_seen {
            if current.is_none() && last_seen.is_some() {
                tracing::warn!(path = %path.display(), "static discovery file is gone; keeping the last table");
                last_seen = None;
            }
            continue;
        }
        last_seen = current;
        let loaded = tokio::task::spawn_blocking({
            let path = path.clone();
            move || load(&path)
        })
        .await;
        match loaded {
            Ok(Ok(configs)) => {
                let models = configs.len();
                if index.publish(configs) {
                    tracing::info!(path = %path.display(), models, "static discovery file loaded");
                }
                index.mark_synced();
            }
            Ok(Err(error)) => tracing::error!(%error, "keeping the last routing table"),
            Err(error) => tracing::error!(%error, "static discovery reload task failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
models:
  - id: Qwen/Qwen2.5-7B-Instruct
    aliases: [qwen]
    adapters: [sql-lora]
    strategy: RoundRobin
    endpoints:
      - http://127.0.0.1:8001
      - url: 127.0.0.1:8002
        name: replica-b
        zone: zone-a
        gpuProduct: NVIDIA-L4
  - id: bge
    features: [TextEmbedding]
  - id: cold
    holdTimeoutSeconds: 30
    holdQueueLimit: 7
"#;

    #[test]
    fn example_expands() {
        let configs = parse(Path::new("x.yaml"), EXAMPLE).unwrap();
        let ids: Vec<_> = configs.iter().map(|config| config.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "Qwen/Qwen2.5-7B-Instruct",
                "qwen",
                "sql-lora",
                "bge",
                "cold"
            ]
        );
        assert_eq!(
            configs[2].parent.as_deref(),
            Some("Qwen/Qwen2.5-7B-Instruct")
        );
        assert_eq!(configs[1].parent, None);
        assert_eq!(configs[0].strategy, Some(RoutingStrategy::RoundRobin));
        assert_eq!(
            configs[0].endpoints,
            vec![
                EndpointConfig::new("127.0.0.1:8001", "127.0.0.1:8001"),
                EndpointConfig {
                    name: "replica-b".into(),
                    address: "127.0.0.1:8002".into(),
                    placement: Placement {
                        zone: Some("zone-a".into()),
                        gpu_product: Some("NVIDIA-L4".into()),
                        ..Placement::default()
                    },
                },
            ]
        );
        assert_eq!(configs[3].features, vec![Feature::TextEmbedding]);
        assert_eq!(configs[4].features, vec![Feature::TextGeneration]);
        assert!(configs[4].endpoints.is_empty());
        assert_eq!(configs[4].hold.timeout, Some(Duration::from_secs(30)));
        assert_eq!(configs[4].hold.queue_limit, Some(7));
        assert_eq!(configs[0].hold, HoldSettings::default());
    }

    #[test]
    fn mistakes_are_reported() {
        for (text, needle) in [
            ("models:\n  - id: a\n  - id: a\n", "more than once"),
            ("models:\n  - id: a\n    aliases: [a]\n", "more than once"),
            (
                "models:\n  - id: a\n    endpoints: [\"https://x:1\"]\n",
                "invalid endpoint",
            ),
            (
                "models:\n  - id: a\n    strategy: Fastest\n",
                "unknown variant",
            ),
            ("models:\n  - id: a\n    endpoint: []\n", "unknown field"),
            ("models:\n  - id: \"\"\n", "empty id"),
        ] {
            let error = parse(Path::new("f.yaml"), text).unwrap_err().to_string();
            assert!(error.contains(needle), "{error}");
            assert!(error.contains("f.yaml"), "{error}");
        }
    }

    #[tokio::test]
    async fn reloads_on_change() {
        let directory =
            std::env::temp_dir().join(format!("kinfer-static-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&directory).unwrap();
        let path = directory.join("models.yaml");
        std::fs::write(&path, "models:\n  - id: a\n").unwrap();
        let index = Arc::new(crate::index::tests::index());
        let mut changes = index.subscribe();
        let task = tokio::spawn(watch(
            path.clone(),
            Duration::from_millis(20),
            index.clone(),
        ));
        tokio::time::timeout(Duration::from_secs(5), changes.changed())
            .await
            .unwrap()
            .unwrap();
        assert!(index.is_synced());
        assert!(index.snapshot().get("a").is_some());
        // Invalid content keeps the last table.
        std::fs::write(&path, "models: [[[\n").unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(index.snapshot().get("a").is_some());
        std::fs::write(&path, "models:\n  - id: b\n    endpoints: [127.0.0.1:9]\n").unwrap();
        tokio::time::timeout(Duration::from_secs(5), changes.changed())
            .await
            .unwrap()
            .unwrap();
        let table = index.snapshot();
        assert!(table.get("a").is_none());
        assert_eq!(table.get("b").unwrap().endpoints.len(), 1);
        task.abort();
        std::fs::remove_dir_all(&directory).unwrap();
    }
}
