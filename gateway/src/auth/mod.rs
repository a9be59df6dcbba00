//! Authentication and per-key limits of the API.
//!
//! - [`keys`]: API keys (hashed), the store the request path reads, model globs.
//! - [`file`]: keys from a YAML file (standalone mode) or one key from the environment.
//! - [`secrets`]: keys from Kubernetes Secrets with the label [`secrets::KEY_LABEL`], watched,
//!   so keys are created, rotated and revoked without a restart.
//!
//! [`Access`] is shared by every serving thread: limits are per gateway replica, not per
//! thread.

pub mod file;
pub mod keys;
pub mod secrets;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use crate::quota::{FairQueue, Peers};

/// Settings of authentication, limits and placement.
#[derive(Clone, Debug)]
pub struct AccessConfig {
    /// Require an API key on `/v1/*`. Off: every request is anonymous and unlimited.
    pub enabled: bool,
    /// The gateway's own zone: replicas there are preferred while not saturated.
    pub own_zone: Option<String>,
    /// Requests of one model sent to its engines at once, per gateway replica (0: no limit).
    pub model_max_concurrency: usize,
    /// Requests that may wait for a slot of a model; more get 503.
    pub model_queue_limit: usize,
    /// How long a request waits for a slot of its model.
    pub model_queue_timeout: Duration,
}

impl Default for AccessConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            own_zone: None,
            model_max_concurrency: 0,
            model_queue_limit: 1000,
            model_queue_timeout: Duration::from_secs(60),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabels {
    pub key: String,
    pub limit: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KeyLabels {
    pub key: String,
}

/// Metrics of authentication and limits (registered by [`crate::metrics::Metrics`]). Keys
/// appear by name (the Secret's name, the file's `name`), never by value.
#[derive(Clone, Debug, Default)]
pub struct AccessMetrics {
    /// Requests refused 401, by reason (`missing`, `invalid`).
    pub auth_failures: Family<ReasonLabels, Counter>,
    /// Requests refused 429, by key name and limit (`requests`, `tokens`, `concurrency`).
    pub rate_limited: Family<LimitLabels, Counter>,
    /// Prompt plus completion tokens counted from `usage` (keys with a token limit only).
    pub tokens: Family<KeyLabels, Counter>,
    /// Tokens charged by estimate, for responses that ended or were cut before their `usage`
    /// (not in `tokens`).
    pub tokens_estimated: Family<KeyLabels, Counter>,
    /// API keys loaded.
    pub keys: Gauge,
}

/// Shared state of authentication and limits.
pub struct Access {
    pub config: AccessConfig,
    pub keys: keys::KeyStore,
    pub peers: Arc<Peers>,
    pub metrics: AccessMetrics,
    queues: Mutex<HashMap<String, Arc<FairQueue>>>,
    /// False while a key source that must list first (Kubernetes Secrets) has not: /readyz
    /// waits, so a starting replica does not answer 401 to valid keys.
    synced: AtomicBool,
}

impl Access {
    pub fn new(config: AccessConfig, metrics: AccessMetrics) -> Self {
        Self {
            config,
            keys: keys::KeyStore::default(),
            peers: Arc::new(Peers::default()),
            metrics,
            queues: Mutex::default(),
            synced: AtomicBool::new(true),
        }
    }

    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Relaxed)
    }

    /// A source that must list before serving starts (see [`Self::is_synced`]).
    pub fn expect_sync(&self) {
        self.synced.store(false, Ordering::Relaxed);
    }

    pub fn mark_synced(&self) {
        self.synced.store(true, Ordering::Relaxed);
    }

    /// The fair queue of `model`, if models have a concurrency limit.
    pub fn queue(&self, model: &str) -> Option<Arc<FairQueue>> {
        if self.config.model_max_concurrency == 0 {
            return None;
        }
        let mut queues = self
            .queues
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if let Some(queue) = queues.get(model) {
            return Some(queue.clone());
        }
        let queue = FairQueue::new(
            self.config.model_max_concurrency,
            self.config.model_queue_limit,
        );
        queues.insert(model.to_string(), queue.clone());
        Some(queue)
    }

    pub fn publish_keys(&self, source: &'static str, specs: Vec<keys::KeySpec>) {
        self.keys.publish(source, specs);
        self.metrics
            .keys
            .set(i64::try_from(self.keys.len()).unwrap_or(i64::MAX));
    }
}

/// Why the key sources could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    KeyFile(#[from] file::KeyFileError),
    #[error("cannot build a Kubernetes client (for the API key Secrets or the gateway replica count): {0}")]
    Client(#[source] kube::Error),
    #[error("--auth is on but no API key source is set: give --api-key-namespace (Kubernetes Secrets), --api-keys-file, or KINFER_GATEWAY_API_KEY")]
    NoKeySource,
    #[error("API keys are configured (--api-key, --api-keys-file or --api-key-namespace) but --auth=false: the gateway would serve every request without a key. Remove the keys, or drop --auth=false")]
    KeysWithoutAuth,
}

/// Load the API keys and start watching their sources and the gateway replica count, as
/// `args` says. A bad key file stops the start; later mistakes keep the last good keys.
pub async fn start(
    args: &crate::config::AuthArgs,
    access: &Arc<Access>,
    file_poll_interval: Duration,
) -> Result<(), StartError> {
    access.peers.set(args.gateway_replicas);
    let needs_client = args.peer_selector.is_some() || args.api_key_namespace.is_some();
    let client = if needs_client {
        Some(
            kube::Client::try_default()
                .await
                .map_err(StartError::Client)?,
        )
    } else {
        None
    };
    if let (Some(selector), Some(namespace), Some(client)) =
        (&args.peer_selector, &args.peer_namespace, &client)
    {
        tokio::spawn(crate::quota::peers::watch(
            client.clone(),
            namespace.clone(),
            selector.clone(),
            access.peers.clone(),
        ));
    }
    if !args.enabled()? {
        return Ok(());
    }
    let mut sources = 0;
    if let Some(key) = args.api_key.as_deref().filter(|key| !key.trim().is_empty()) {
        access.publish_keys("env", vec![file::env_key(key)]);
        sources += 1;
    }
    if let Some(path) = &args.api_keys_file {
        access.publish_keys("file", file::load(path)?);
        tokio::spawn(file::watch(
            path.clone(),
            file_poll_interval,
            access.clone(),
        ));
        sources += 1;
    }
    if let (Some(namespace), Some(client)) = (&args.api_key_namespace, client) {
        access.expect_sync();
        tokio::spawn(secrets::watch(client, namespace.clone(), access.clone()));
        sources += 1;
    }
    if sources == 0 {
        return Err(StartError::NoKeySource);
    }
    tracing::info!(keys = access.keys.len(), "authentication on");
    Ok(())
}
