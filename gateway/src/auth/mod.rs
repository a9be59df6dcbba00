//! Authentication of the API: API keys and where they come from.
//!
//! - [`keys`]: API keys (hashed), the store the request path reads, model globs.
//! - [`file`]: keys from a YAML file (standalone mode) or one key from the environment.
//! - [`secrets`]: keys from Kubernetes Secrets with the label [`secrets::KEY_LABEL`], watched,
//!   so keys are created, rotated and revoked without a restart.
//!
//! A key's quotas are enforced by [`crate::quota`]; [`Auth`] only says who is asking.

pub mod file;
pub mod keys;
pub mod secrets;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub use crate::metrics::{AccessMetrics, KeyLabels, LimitLabels, ReasonLabels};
use crate::quota::Peers;
use keys::{ApiKey, AuthFailure, KeyStore};

/// Authentication state: whether it is on, the keys, and whether the key sources have listed.
pub struct Auth {
    /// Require an API key on `/v1/*`. Off: every request is anonymous.
    pub enabled: bool,
    pub keys: KeyStore,
    pub metrics: AccessMetrics,
    /// False while a key source that must list first (Kubernetes Secrets) has not: /readyz
    /// waits, so a starting replica does not answer 401 to valid keys.
    synced: AtomicBool,
}

impl Auth {
    pub fn new(enabled: bool, metrics: AccessMetrics) -> Self {
        Self {
            enabled,
            keys: KeyStore::default(),
            metrics,
            synced: AtomicBool::new(true),
        }
    }

    /// The request's key when authentication is on; `None` when it is off.
    pub fn authenticate(
        &self,
        headers: &http::HeaderMap,
    ) -> Result<Option<Arc<ApiKey>>, AuthFailure> {
        if !self.enabled {
            return Ok(None);
        }
        match self.keys.authenticate(headers) {
            Ok(key) => Ok(Some(key)),
            Err(reason) => {
                self.metrics
                    .auth_failures
                    .get_or_create(&ReasonLabels {
                        reason: reason.metric_label(),
                    })
                    .inc();
                Err(reason)
            }
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

    pub fn publish_keys(&self, source: &'static str, specs: Vec<keys::KeySpec>) {
        self.keys.publish(source, specs);
        self.metrics
            .keys
            .set(i64::try_from(self.keys.len()).unwrap_or(i64::MAX));
    }
}

/// Where keys come from, and the gateway replicas sharing their quotas (from the command line).
#[derive(Clone, Debug, Default)]
pub struct KeySources {
    /// `Some(false)`: authentication explicitly off; `None`: on when a key source is given.
    pub auth: Option<bool>,
    /// One key for every model, without quotas (named `env`).
    pub api_key: Option<String>,
    pub api_keys_file: Option<PathBuf>,
    pub api_key_namespace: Option<String>,
    pub gateway_replicas: usize,
    pub peer_selector: Option<String>,
    pub peer_namespace: Option<String>,
}

impl KeySources {
    /// Whether authentication is on: as `auth` says, else whether a key source is given. Keys
    /// with authentication explicitly off are refused: a configured key means authentication.
    pub fn enabled(&self) -> Result<bool, StartError> {
        let has_source = self.has_key_source();
        match self.auth {
            Some(false) if has_source => Err(StartError::KeysWithoutAuth),
            Some(enabled) => Ok(enabled),
            None => Ok(has_source),
        }
    }

    /// Whether any API key source is given.
    pub fn has_key_source(&self) -> bool {
        self.api_key
            .as_deref()
            .is_some_and(|key| !key.trim().is_empty())
            || self.api_keys_file.is_some()
            || self
                .api_key_namespace
                .as_deref()
                .is_some_and(|namespace| !namespace.is_empty())
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
/// `sources` says. A bad key file stops the start; later mistakes keep the last good keys.
pub async fn start(
    sources: &KeySources,
    auth: &Arc<Auth>,
    peers: &Arc<Peers>,
    file_poll_interval: Duration,
) -> Result<(), StartError> {
    peers.set(sources.gateway_replicas);
    let needs_client = sources.peer_selector.is_some() || sources.api_key_namespace.is_some();
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
        (&sources.peer_selector, &sources.peer_namespace, &client)
    {
        tokio::spawn(crate::quota::peers::watch(
            client.clone(),
            namespace.clone(),
            selector.clone(),
            peers.clone(),
        ));
    }
    if !sources.enabled()? {
        return Ok(());
    }
    let mut count = 0;
    if let Some(key) = sources
        .api_key
        .as_deref()
        .filter(|key| !key.trim().is_empty())
    {
        auth.publish_keys("env", vec![file::env_key(key)]);
        count += 1;
    }
    if let Some(path) = &sources.api_keys_file {
        auth.publish_keys("file", file::load(path)?);
        tokio::spawn(file::watch(path.clone(), file_poll_interval, auth.clone()));
        count += 1;
    }
    if let (Some(namespace), Some(client)) = (&sources.api_key_namespace, client) {
        auth.expect_sync();
        tokio::spawn(secrets::watch(client, namespace.clone(), auth.clone()));
        count += 1;
    }
    if count == 0 {
        return Err(StartError::NoKeySource);
    }
    tracing::info!(keys = auth.keys.len(), "authentication on");
    Ok(())
}
