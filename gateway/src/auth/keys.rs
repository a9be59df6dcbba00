//! API keys: hashing, the constant-time check, model globs, and the store the request path
//! reads (one `ArcSwap` load, one hash lookup).
//!
//! Keys are never kept in clear: a source hands over the SHA-256 of each key, and a presented
//! key is hashed before the lookup. The map is keyed by that hash, whose final comparison is
//! constant-time ([`KeyHash`]'s `PartialEq`); the hash table's probing only learns bits of a
//! SHA-256 digest, which says nothing usable about the key.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use http::header::{HeaderName, AUTHORIZATION};
use sha2::{Digest, Sha256};

use crate::quota::rate::KeyState;
use http::HeaderMap;

/// Header carrying a key the Anthropic/Azure way; `Authorization: Bearer` is the OpenAI way.
pub const API_KEY_HEADER: HeaderName = HeaderName::from_static("x-api-key");

/// SHA-256 of an API key.
#[derive(Clone, Copy)]
pub struct KeyHash([u8; 32]);

impl KeyHash {
    pub fn of(key: &str) -> Self {
        Self(Sha256::digest(key.as_bytes()).into())
    }

    /// From 64 hexadecimal digits (what `sha256sum` prints).
    pub fn from_hex(text: &str) -> Option<Self> {
        let text = text.trim().as_bytes();
        if text.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (index, pair) in text.chunks_exact(2).enumerate() {
            let digit = |byte: u8| (byte as char).to_digit(16);
            out[index] = u8::try_from(digit(pair[0])? * 16 + digit(pair[1])?).ok()?;
        }
        Some(Self(out))
    }
}

/// Constant time: every byte is compared whatever the first difference.
impl PartialEq for KeyHash {
    fn eq(&self, other: &Self) -> bool {
        constant_time_eq(&self.0, &other.0)
    }
}

impl Eq for KeyHash {}

impl Hash for KeyHash {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // A digest is uniformly distributed already: its first 8 bytes are a fine hash.
        state.write(&self.0[..8]);
    }
}

/// Never prints the digest either: a log line shows only that a key is there.
impl fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyHash(..)")
    }
}

/// Equality of two byte strings in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let difference = a
        .iter()
        .zip(b)
        .fold(0u8, |acc, (x, y)| acc | std::hint::black_box(x ^ y));
    std::hint::black_box(difference) == 0
}

pub use crate::quota::rate::KeyLimits;

/// One key as a source describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeySpec {
    /// Shown in logs and metric labels instead of the key: the Secret's name, or the file's
    /// `name` field.
    pub name: String,
    pub hash: KeyHash,
    /// Model id globs (`*`, `?`); empty allows every model.
    pub models: Vec<String>,
    pub limits: KeyLimits,
}

/// A key in the store, with its limiter state (kept while the key's hash stays).
#[derive(Debug)]
pub struct ApiKey {
    pub spec: KeySpec,
    pub state: Arc<KeyState>,
    /// This key's `kinfer_gateway_key_tokens_total`, looked up once.
    pub tokens_counter: std::sync::OnceLock<prometheus_client::metrics::counter::Counter>,
}

impl ApiKey {
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// Whether the key may use `model`.
    pub fn allows(&self, model: &str) -> bool {
        self.spec.models.is_empty()
            || self
                .spec
                .models
                .iter()
                .any(|pattern| glob_match(pattern, model))
    }
}

/// `*` matches any run of characters (slashes included), `?` one character.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let pattern: Vec<char> = pattern.chars().collect();
    let text: Vec<char> = text.chars().collect();
    let (mut p, mut t) = (0, 0);
    let mut backtrack: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some('*') => {
                backtrack = Some((p, t));
                p += 1;
            }
            Some(&c) if c == '?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match backtrack {
                Some((star, matched)) => {
                    p = star + 1;
                    t = matched + 1;
                    backtrack = Some((star, matched + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == '*')
}

/// Why a request was not authenticated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthFailure {
    Missing,
    Invalid,
}

impl AuthFailure {
    pub fn metric_label(self) -> &'static str {
        match self {
            AuthFailure::Missing => "missing",
            AuthFailure::Invalid => "invalid",
        }
    }
}

/// The key a request presents: `Authorization: Bearer <key>` or `x-api-key: <key>`.
pub fn presented_key(headers: &HeaderMap) -> Option<&str> {
    if let Some(value) = headers.get(AUTHORIZATION).map(http::HeaderValue::as_bytes) {
        let value = std::str::from_utf8(value).ok()?.trim();
        let (scheme, key) = value.split_once(' ')?;
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| key.trim())
            .filter(|key| !key.is_empty());
    }
    headers
        .get(API_KEY_HEADER)
        .and_then(|value| value.to_str().ok())
        .map(str::trim)
        .filter(|key| !key.is_empty())
}

/// Every source's keys, merged; read on every request.
#[derive(Default)]
pub struct KeyStore {
    keys: ArcSwap<HashMap<KeyHash, Arc<ApiKey>>>,
    /// The last list of each source (`file`, `env`, `kubernetes`), merged on every change.
    sources: Mutex<BTreeMap<&'static str, Vec<KeySpec>>>,
}

impl KeyStore {
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Arc<ApiKey>, AuthFailure> {
        let presented = presented_key(headers).ok_or(AuthFailure::Missing)?;
        self.keys
            .load()
            .get(&KeyHash::of(presented))
            .cloned()
            .ok_or(AuthFailure::Invalid)
    }

    pub fn len(&self) -> usize {
        self.keys.load().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Replace the keys of `source`. Keys whose hash stays keep their limiter state, so
    /// editing a key's limits does not hand it a fresh allowance.
    pub fn publish(&self, source: &'static str, specs: Vec<KeySpec>) {
        let mut sources = self
            .sources
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if sources.get(source) == Some(&specs) {
            return;
        }
        sources.insert(source, specs);
        let previous = self.keys.load_full();
        let mut keys = HashMap::new();
        for (source, specs) in sources.iter() {
            for spec in specs {
                if let Some(existing) = keys.get(&spec.hash) {
                    let existing: &Arc<ApiKey> = existing;
                    tracing::warn!(
                        key = %spec.name,
                        source,
                        same_as = existing.name(),
                        "the same API key is configured twice; the first one is used"
                    );
                    continue;
                }
                let state = previous
                    .get(&spec.hash)
                    .map(|key| key.state.clone())
                    .unwrap_or_default();
                keys.insert(
                    spec.hash,
                    Arc::new(ApiKey {
                        spec: spec.clone(),
                        state,
                        tokens_counter: std::sync::OnceLock::new(),
                    }),
                );
            }
        }
        tracing::info!(keys = keys.len(), source, "API keys updated");
        self.keys.store(Arc::new(keys));
    }
}

/// A comma- or newline-separated list, blanks dropped.
pub fn split_list(text: &str) -> Vec<String> {
    text.split([',', '\n'])
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(String::from)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderMap;
    use http::HeaderValue;

    fn spec(name: &str, key: &str, models: &[&str]) -> KeySpec {
        KeySpec {
            name: name.into(),
            hash: KeyHash::of(key),
            models: models.iter().map(|model| model.to_string()).collect(),
            limits: KeyLimits::default(),
        }
    }

    fn headers(name: &'static str, value: &'static str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(name, HeaderValue::from_static(value));
        headers
    }

    #[test]
    fn keys_from_both_headers() {
        assert_eq!(
            presented_key(&headers("authorization", "Bearer sk-1")),
            Some("sk-1")
        );
        assert_eq!(
            presented_key(&headers("authorization", "bearer   sk-1 ")),
            Some("sk-1")
        );
        assert_eq!(presented_key(&headers("x-api-key", "sk-2")), Some("sk-2"));
        assert_eq!(presented_key(&headers("authorization", "Basic abc")), None);
        assert_eq!(presented_key(&headers("authorization", "Bearer ")), None);
        assert_eq!(presented_key(&HeaderMap::new()), None);
    }

    #[test]
    fn hashes_and_constant_time_equality() {
        let real = format!("{:x}", Sha256::digest(b"sk-test"));
        assert_eq!(KeyHash::from_hex(&real), Some(KeyHash::of("sk-test")));
        assert_eq!(
            KeyHash::from_hex(&real.to_uppercase()),
            Some(KeyHash::of("sk-test"))
        );
        assert!(KeyHash::from_hex("abc").is_none());
        assert!(KeyHash::from_hex(&"g".repeat(64)).is_none());
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert_eq!(format!("{:?}", KeyHash::of("secret")), "KeyHash(..)");
    }

    #[test]
    fn globs() {
        assert!(glob_match("*", "Qwen/Qwen2.5-7B"));
        assert!(glob_match("Qwen/*", "Qwen/Qwen2.5-7B"));
        assert!(glob_match("*-7B*", "Qwen/Qwen2.5-7B-Instruct"));
        assert!(glob_match("a?c", "abc"));
        assert!(!glob_match("Qwen/*", "meta/llama"));
        assert!(!glob_match("abc", "abcd"));
        assert!(glob_match("a*b*c", "aXbYbZc"));
        assert!(!glob_match("a*b*c", "aXbYbZ"));
    }

    #[test]
    fn store_authenticates_and_keeps_state_across_updates() {
        let store = KeyStore::default();
        store.publish("file", vec![spec("team-a", "sk-a", &["Qwen/*"])]);
        let key = store
            .authenticate(&headers("authorization", "Bearer sk-a"))
            .unwrap();
        assert_eq!(key.name(), "team-a");
        assert!(key.allows("Qwen/Qwen2.5-7B"));
        assert!(!key.allows("meta/llama"));
        assert_eq!(
            store
                .authenticate(&headers("x-api-key", "sk-b"))
                .unwrap_err(),
            AuthFailure::Invalid
        );
        assert_eq!(
            store.authenticate(&HeaderMap::new()).unwrap_err(),
            AuthFailure::Missing
        );
        // Another source adds a key; the first key keeps its limiter state.
        store.publish("kubernetes", vec![spec("team-b", "sk-b", &[])]);
        let again = store
            .authenticate(&headers("authorization", "Bearer sk-a"))
            .unwrap();
        assert!(Arc::ptr_eq(&key.state, &again.state));
        assert!(store.authenticate(&headers("x-api-key", "sk-b")).is_ok());
        // Revoked.
        store.publish("kubernetes", vec![]);
        assert!(store.authenticate(&headers("x-api-key", "sk-b")).is_err());
        assert_eq!(store.len(), 1);
    }
}
