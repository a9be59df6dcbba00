//! API keys from Kubernetes Secrets carrying the label `kinfer.dev/api-key`, watched: a key is
//! usable, rotated or revoked within about a second of the Secret's change, without a restart.
//!
//! ```sh
//! kubectl -n kinfer-system create secret generic team-a \
//!   --from-literal=key=sk-team-a-... \
//!   --from-literal=models='Qwen/*' --from-literal=requests-per-minute=600
//! kubectl -n kinfer-system label secret team-a kinfer.dev/api-key=true
//! ```
//!
//! Data fields: `key` (the key) or `key-sha256` (its SHA-256 in hex, so the key itself need not
//! be stored in the cluster), and optionally `models` (comma- or newline-separated globs),
//! `requests-per-minute`, `tokens-per-minute`, `max-concurrent`. The key is known by the
//! Secret's name in logs and metrics.

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::{reflector, watcher, WatchStreamExt};
use kube::{Api, Client, ResourceExt};

use super::keys::{split_list, KeyHash, KeyLimits, KeySpec};
use super::Auth;

/// The label that makes a Secret an API key (any value).
pub const KEY_LABEL: &str = "kinfer.dev/api-key";

/// The key a Secret describes, or why it is skipped (the reason never contains the key).
pub fn spec_of(secret: &Secret) -> Result<KeySpec, String> {
    let data = secret.data.as_ref();
    let field = |name: &str| -> Result<Option<String>, String> {
        match data.and_then(|data| data.get(name)) {
            None => Ok(None),
            Some(bytes) => String::from_utf8(bytes.0.clone())
                .map(|text| Some(text.trim().to_string()))
                .map_err(|_| format!("`{name}` is not UTF-8")),
        }
    };
    let number = |name: &str| -> Result<Option<u64>, String> {
        field(name)?
            .map(|text| {
                text.parse::<u64>()
                    .map_err(|_| format!("`{name}` is not a whole number"))
            })
            .transpose()
    };
    let hash = match (field("key")?, field("key-sha256")?) {
        (Some(key), None) if !key.is_empty() => KeyHash::of(&key),
        (None, Some(hex)) => KeyHash::from_hex(&hex)
            .ok_or_else(|| "`key-sha256` must be 64 hexadecimal digits".to_string())?,
        _ => return Err("set exactly one of the data fields `key` and `key-sha256`".into()),
    };
    Ok(KeySpec {
        name: secret.name_any(),
        hash,
        models: field("models")?
            .map(|text| split_list(&text))
            .unwrap_or_default(),
        limits: KeyLimits {
            requests_per_minute: number("requests-per-minute")?,
            tokens_per_minute: number("tokens-per-minute")?,
            max_concurrent: number("max-concurrent")?,
        },
    })
}

/// Every valid key among `secrets`, sorted by namespace and name; invalid ones are logged.
pub fn specs_of(secrets: &[Arc<Secret>]) -> Vec<KeySpec> {
    let mut sorted: Vec<&Arc<Secret>> = secrets.iter().collect();
    sorted.sort_by_key(|secret| (secret.namespace(), secret.name_any()));
    sorted
        .into_iter()
        .filter(|secret| secret.metadata.deletion_timestamp.is_none())
        .filter_map(|secret| match spec_of(secret) {
            Ok(spec) => Some(spec),
            Err(reason) => {
                tracing::warn!(
                    secret = %secret.name_any(),
                    namespace = secret.namespace().unwrap_or_default(),
                    %reason,
                    "skipping API key Secret"
                );
                None
            }
        })
        .collect()
}

/// Watch labelled Secrets in `namespace` and publish their keys on every change, until the
/// process ends. The access state is marked synced after the first complete list.
pub async fn watch(client: Client, namespace: String, auth: Arc<Auth>) {
    let secrets: Api<Secret> = Api::namespaced(client, &namespace);
    let (store, writer) = reflector::store();
    let mut events = reflector::reflector(
        writer,
        watcher(secrets, watcher::Config::default().labels(KEY_LABEL))
            .default_backoff()
            .modify(|secret| secret.managed_fields_mut().clear()),
    )
    .boxed();
    let mut listed = false;
    while let Some(event) = events.next().await {
        match event {
            Ok(watcher::Event::InitDone) => listed = true,
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(%error, "API key Secret watch failed; retrying");
                continue;
            }
        }
        if !listed {
            continue;
        }
        auth.publish_keys("kubernetes", specs_of(&store.state()));
        auth.mark_synced();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(name: &str, data: serde_json::Value) -> Arc<Secret> {
        let mut encoded = serde_json::Map::new();
        for (field, value) in data.as_object().unwrap() {
            use std::fmt::Write;
            // base64 of the value, as the API server sends `data`.
            let bytes = value.as_str().unwrap().as_bytes();
            let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
            let mut out = String::new();
            for chunk in bytes.chunks(3) {
                let b = [
                    chunk[0],
                    *chunk.get(1).unwrap_or(&0),
                    *chunk.get(2).unwrap_or(&0),
                ];
                let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
                for i in 0..4 {
                    if i <= chunk.len() {
                        let _ =
                            out.write_char(alphabet[((n >> (18 - 6 * i)) & 63) as usize] as char);
                    } else {
                        out.push('=');
                    }
                }
            }
            encoded.insert(field.clone(), serde_json::Value::String(out));
        }
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": name, "namespace": "kinfer-system", "labels": {KEY_LABEL: "true"}},
                "data": encoded,
            }))
            .unwrap(),
        )
    }

    #[test]
    fn secrets_become_keys() {
        let specs = specs_of(&[
            secret(
                "team-a",
                serde_json::json!({"key": "sk-a\n", "models": "Qwen/*, meta/*", "requests-per-minute": "60"}),
            ),
            secret("broken", serde_json::json!({"models": "x"})),
            secret(
                "bad-number",
                serde_json::json!({"key": "sk-c", "max-concurrent": "many"}),
            ),
        ]);
        assert_eq!(specs.len(), 1);
        assert_eq!(specs[0].name, "team-a");
        assert_eq!(specs[0].hash, KeyHash::of("sk-a"));
        assert_eq!(specs[0].models, ["Qwen/*", "meta/*"]);
        assert_eq!(specs[0].limits.requests_per_minute, Some(60));
    }
}
