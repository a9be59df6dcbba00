//! API keys without Kubernetes: a YAML file (re-read when it changes) and one key from the
//! environment.
//!
//! ```yaml
//! keys:
//!   - name: team-a                 # shown in logs and metrics instead of the key
//!     key: sk-team-a-...           # or keySha256: <64 hex digits> (sha256sum of the key)
//!     models: ["Qwen/*"]           # globs; default: every model
//!     requestsPerMinute: 600       # each limit is optional, for the whole Deployment
//!     tokensPerMinute: 200000
//!     maxConcurrent: 16
//! ```

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Deserialize;

use super::keys::{KeyHash, KeyLimits, KeySpec};
use super::Auth;

#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("cannot read the API key file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid API key file {path}: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_yaml::Error,
    },
    #[error("invalid API key file {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    #[serde(default)]
    keys: Vec<FileKey>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct FileKey {
    name: String,
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    key_sha256: Option<String>,
    #[serde(default)]
    models: Vec<String>,
    #[serde(default)]
    requests_per_minute: Option<u64>,
    #[serde(default)]
    tokens_per_minute: Option<u64>,
    #[serde(default)]
    max_concurrent: Option<u64>,
}

/// Parse a key file. Errors name the entry, never the key.
pub fn parse(text: &str) -> Result<Vec<KeySpec>, String> {
    let file: KeyFile = serde_yaml::from_str(text).map_err(|error| {
        // serde_yaml may quote the offending value: keep only where it is.
        match error.location() {
            Some(location) => format!("line {}: {}", location.line(), kind_of(&error)),
            None => kind_of(&error),
        }
    })?;
    let mut names = HashSet::new();
    let mut specs = Vec::with_capacity(file.keys.len());
    for entry in file.keys {
        if entry.name.trim().is_empty() {
            return Err("a key has an empty name".into());
        }
        if !names.insert(entry.name.clone()) {
            return Err(format!(
                "the key name `{}` appears more than once",
                entry.name
            ));
        }
        let hash = match (&entry.key, &entry.key_sha256) {
            (Some(key), None) if !key.trim().is_empty() => KeyHash::of(key.trim()),
            (None, Some(hex)) => KeyHash::from_hex(hex).ok_or_else(|| {
                format!(
                    "key `{}`: keySha256 must be 64 hexadecimal digits",
                    entry.name
                )
            })?,
            _ => {
                return Err(format!(
                    "key `{}`: set exactly one of `key` and `keySha256`",
                    entry.name
                ))
            }
        };
        specs.push(KeySpec {
            name: entry.name,
            hash,
            models: entry.models,
            limits: KeyLimits {
                requests_per_minute: entry.requests_per_minute,
                tokens_per_minute: entry.tokens_per_minute,
                max_concurrent: entry.max_concurrent,
            },
        });
    }
    Ok(specs)
}

fn kind_of(error: &serde_yaml::Error) -> String {
    let text = error.to_string();
    // "invalid type: string \"sk-...\", expected u64": drop the quoted value.
    match text.find('"') {
        Some(start) => format!(
            "{}<value>{}",
            &text[..start],
            text[start..]
                .rfind('"')
                .map_or("", |end| &text[start + end + 1..])
        ),
        None => text,
    }
}

pub fn load(path: &Path) -> Result<Vec<KeySpec>, KeyFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| KeyFileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text).map_err(|message| KeyFileError::Invalid {
        path: path.to_path_buf(),
        message,
    })
}

/// A single key from the environment (`KINFER_GATEWAY_API_KEY`), named `env`, for every model
/// and without limits.
pub fn env_key(key: &str) -> KeySpec {
    KeySpec {
        name: "env".into(),
        hash: KeyHash::of(key.trim()),
        models: Vec::new(),
        limits: KeyLimits::default(),
    }
}

fn fingerprint(path: &Path) -> Option<(SystemTime, u64)> {
    let metadata = std::fs::metadata(path).ok()?;
    Some((metadata.modified().ok()?, metadata.len()))
}

/// Re-load the file whenever its modification time or size changes; a file that turns
/// invalid is reported and the last good keys stay.
pub async fn watch(path: PathBuf, poll_interval: Duration, auth: Arc<Auth>) {
    let mut last_seen = fingerprint(&path);
    let mut ticker = tokio::time::interval(poll_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let current = fingerprint(&path);
        if current.is_none() || current == last_seen {
            continue;
        }
        last_seen = current;
        match load(&path) {
            Ok(specs) => auth.publish_keys("file", specs),
            Err(error) => tracing::error!(%error, "keeping the last API keys"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_parses() {
        let specs = parse(
            r#"
keys:
  - name: team-a
    key: sk-a
    models: ["Qwen/*"]
    requestsPerMinute: 600
    tokensPerMinute: 200000
    maxConcurrent: 16
  - name: team-b
    keySha256: 0000000000000000000000000000000000000000000000000000000000000000
"#,
        )
        .unwrap();
        assert_eq!(specs.len(), 2);
        assert_eq!(specs[0].hash, KeyHash::of("sk-a"));
        assert_eq!(specs[0].limits.requests_per_minute, Some(600));
        assert_eq!(specs[0].limits.max_concurrent, Some(16));
        assert!(specs[1].limits.is_empty());
    }

    #[test]
    fn mistakes_are_named_without_the_key() {
        for (text, expected) in [
            ("keys: [{name: a}]", "exactly one"),
            ("keys: [{name: a, key: x, keySha256: ab}]", "exactly one"),
            ("keys: [{name: a, keySha256: xyz}]", "64 hexadecimal"),
            (
                "keys: [{name: a, key: x}, {name: a, key: y}]",
                "more than once",
            ),
            ("keys: [{name: a, key: x, rpm: 1}]", "unknown field"),
        ] {
            let error = parse(text).unwrap_err();
            assert!(error.contains(expected), "{error}");
        }
        let error =
            parse("keys: [{name: a, key: sk-secret, maxConcurrent: sk-secret}]").unwrap_err();
        assert!(!error.contains("sk-secret"), "{error}");
    }
}
