//! Where model and adapter weights come from: `hf://`, `pvc://` and `s3://` URIs.

use std::fmt;
use std::str::FromStr;

use crate::validation::is_posix_space;

/// A parsed model or adapter source.
///
/// Accepts exactly what the CRD's source rule ([`crate::rules::SOURCE_PATTERN`]) accepts: a
/// known scheme, a non-empty first segment, and no whitespace.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ModelSource {
    /// A Hugging Face Hub repository, `hf://org/repo` (or `hf://repo`).
    HuggingFace {
        /// Repository ID, for example `Qwen/Qwen2.5-7B-Instruct`.
        repo: String,
    },
    /// A directory on a PersistentVolumeClaim in the InferenceModel's namespace,
    /// `pvc://claim/path`.
    Pvc {
        /// Name of the PersistentVolumeClaim.
        claim: String,
        /// Directory within the volume, without leading or trailing `/`; empty for its root.
        path: String,
    },
    /// An S3 (or S3-compatible) location, `s3://bucket/prefix`.
    S3 {
        /// Bucket name.
        bucket: String,
        /// Key prefix, without leading or trailing `/`; empty for the whole bucket.
        prefix: String,
    },
}

/// Why a source URI was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ModelSourceError {
    /// No `scheme://` prefix.
    #[error("{uri:?} has no scheme; use hf://org/repo, pvc://claim/path or s3://bucket/prefix")]
    MissingScheme { uri: String },

    /// A scheme other than `hf`, `pvc` and `s3`.
    #[error("{uri:?} uses unknown scheme {scheme:?}; use hf://, pvc:// or s3://")]
    UnknownScheme { uri: String, scheme: String },

    /// Nothing (or a `/`) right after `scheme://`.
    #[error("{uri:?} names no {what} after {scheme}://")]
    MissingName {
        uri: String,
        scheme: &'static str,
        what: &'static str,
    },

    /// Whitespace anywhere after the scheme.
    #[error("{uri:?} contains whitespace")]
    Whitespace { uri: String },
}

impl ModelSourceError {
    /// Low-cardinality label for metrics and logs.
    pub fn metric_label(&self) -> &'static str {
        match self {
            ModelSourceError::MissingScheme { .. } => "missing_scheme",
            ModelSourceError::UnknownScheme { .. } => "unknown_scheme",
            ModelSourceError::MissingName { .. } => "missing_name",
            ModelSourceError::Whitespace { .. } => "whitespace",
        }
    }
}

impl ModelSource {
    /// The URI scheme: `hf`, `pvc` or `s3`.
    pub fn scheme(&self) -> &'static str {
        match self {
            ModelSource::HuggingFace { .. } => "hf",
            ModelSource::Pvc { .. } => "pvc",
            ModelSource::S3 { .. } => "s3",
        }
    }
}

impl FromStr for ModelSource {
    type Err = ModelSourceError;

    fn from_str(uri: &str) -> Result<Self, Self::Err> {
        let Some((scheme, rest)) = uri.split_once("://") else {
            return Err(ModelSourceError::MissingScheme { uri: uri.into() });
        };
        let (scheme, what): (&'static str, &'static str) = match scheme {
            "hf" => ("hf", "repository"),
            "pvc" => ("pvc", "PersistentVolumeClaim"),
            "s3" => ("s3", "bucket"),
            other => {
                return Err(ModelSourceError::UnknownScheme {
                    uri: uri.into(),
                    scheme: other.into(),
                })
            }
        };
        if rest.chars().any(is_posix_space) {
            return Err(ModelSourceError::Whitespace { uri: uri.into() });
        }
        let (first, remainder) = rest.split_once('/').unwrap_or((rest, ""));
        if first.is_empty() {
            return Err(ModelSourceError::MissingName {
                uri: uri.into(),
                scheme,
                what,
            });
        }
        let remainder = remainder.trim_matches('/');
        Ok(match scheme {
            "hf" if remainder.is_empty() => ModelSource::HuggingFace { repo: first.into() },
            "hf" => ModelSource::HuggingFace {
                repo: format!("{first}/{remainder}"),
            },
            "pvc" => ModelSource::Pvc {
                claim: first.into(),
                path: remainder.into(),
            },
            _ => ModelSource::S3 {
                bucket: first.into(),
                prefix: remainder.into(),
            },
        })
    }
}

impl fmt::Display for ModelSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (scheme, first, rest) = match self {
            ModelSource::HuggingFace { repo } => return write!(f, "hf://{repo}"),
            ModelSource::Pvc { claim, path } => ("pvc", claim, path),
            ModelSource::S3 { bucket, prefix } => ("s3", bucket, prefix),
        };
        if rest.is_empty() {
            write!(f, "{scheme}://{first}")
        } else {
            write!(f, "{scheme}://{first}/{rest}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(uri: &str) -> Result<ModelSource, ModelSourceError> {
        uri.parse()
    }

    #[test]
    fn parses_hugging_face_repositories() {
        assert_eq!(
            parse("hf://Qwen/Qwen2.5-7B-Instruct").unwrap(),
            ModelSource::HuggingFace {
                repo: "Qwen/Qwen2.5-7B-Instruct".into()
            }
        );
        assert_eq!(
            parse("hf://gpt2").unwrap(),
            ModelSource::HuggingFace {
                repo: "gpt2".into()
            }
        );
        assert_eq!(
            parse("hf://org/repo/").unwrap(),
            ModelSource::HuggingFace {
                repo: "org/repo".into()
            }
        );
    }

    #[test]
    fn parses_pvc_with_and_without_path() {
        assert_eq!(
            parse("pvc://models/llama/8b").unwrap(),
            ModelSource::Pvc {
                claim: "models".into(),
                path: "llama/8b".into()
            }
        );
        assert_eq!(
            parse("pvc://models").unwrap(),
            ModelSource::Pvc {
                claim: "models".into(),
                path: String::new()
            }
        );
    }

    #[test]
    fn parses_s3_with_and_without_prefix() {
        assert_eq!(
            parse("s3://bucket/llama/8b/").unwrap(),
            ModelSource::S3 {
                bucket: "bucket".into(),
                prefix: "llama/8b".into()
            }
        );
        assert_eq!(
            parse("s3://bucket").unwrap(),
            ModelSource::S3 {
                bucket: "bucket".into(),
                prefix: String::new()
            }
        );
    }

    #[test]
    fn displays_canonical_uri() {
        for uri in [
            "hf://Qwen/Qwen2.5-7B-Instruct",
            "hf://gpt2",
            "pvc://models/llama/8b",
            "pvc://models",
            "s3://bucket/prefix",
            "s3://bucket",
        ] {
            assert_eq!(parse(uri).unwrap().to_string(), uri);
        }
        assert_eq!(
            parse("s3://bucket/a/").unwrap().to_string(),
            "s3://bucket/a"
        );
    }

    #[test]
    fn rejects_missing_scheme() {
        assert!(matches!(
            parse("Qwen/Qwen2.5-7B-Instruct"),
            Err(ModelSourceError::MissingScheme { .. })
        ));
    }

    #[test]
    fn rejects_unknown_scheme() {
        let error = parse("gs://bucket/model").unwrap_err();
        assert_eq!(
            error,
            ModelSourceError::UnknownScheme {
                uri: "gs://bucket/model".into(),
                scheme: "gs".into()
            }
        );
        assert!(error.to_string().contains("use hf://, pvc:// or s3://"));
        // Schemes are case-sensitive, as in the CEL rule.
        assert!(parse("HF://org/repo").is_err());
    }

    #[test]
    fn rejects_empty_first_segment() {
        for uri in ["hf://", "pvc://", "s3://", "pvc:///path", "hf:///org/repo"] {
            assert!(
                matches!(parse(uri), Err(ModelSourceError::MissingName { .. })),
                "{uri}"
            );
        }
        assert_eq!(
            parse("pvc://").unwrap_err().to_string(),
            "\"pvc://\" names no PersistentVolumeClaim after pvc://"
        );
    }

    #[test]
    fn rejects_whitespace() {
        for uri in [
            "hf://org/my repo",
            "pvc://claim/\tpath",
            "s3://bucket/prefix\n",
        ] {
            assert!(
                matches!(parse(uri), Err(ModelSourceError::Whitespace { .. })),
                "{uri:?}"
            );
        }
    }

    #[test]
    fn allows_commas_in_paths() {
        assert!(parse("s3://bucket/a,b").is_ok());
    }
}
