//! What the gateway reads from a request: the `model` field of the JSON body and the API family
//! of the path. The body itself is forwarded untouched; parsing only borrows from it.

use std::borrow::Cow;

use kinfer_crds::Feature;
use serde::Deserialize;

use crate::error::ApiError;

mod json;

/// Longest request id accepted from a client; longer ones are replaced by a generated id.
const MAX_REQUEST_ID_LENGTH: usize = 128;

/// The fields routing needs. Unknown fields are skipped by serde without being built, so the
/// cost is one validating pass over the bytes and no allocation unless `model` has escapes.
struct RoutingFields<'a> {
    model: Option<BorrowedStr<'a>>,
}

/// Written out rather than derived: a derived struct also reads a JSON array as its fields in
/// order, so `["m"]` would be a request for model `m`. A request is an object.
impl<'de: 'a, 'a> Deserialize<'de> for RoutingFields<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = RoutingFields<'de>;
            fn expecting(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                formatter.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut members: A,
            ) -> Result<Self::Value, A::Error> {
                let mut model = None;
                while let Some(BorrowedStr(name)) = members.next_key()? {
                    if name != "model" {
                        members.next_value::<serde::de::IgnoredAny>()?;
                    } else if model.is_some() {
                        return Err(serde::de::Error::duplicate_field("model"));
                    } else {
                        model = Some(members.next_value::<Option<BorrowedStr<'de>>>()?);
                    }
                }
                Ok(RoutingFields {
                    model: model.flatten(),
                })
            }
        }
        deserializer.deserialize_map(Visitor)
    }
}

/// A string borrowed from the body when it has no escapes. (serde's `Cow<str>` always
/// allocates when nested in an `Option`.)
struct BorrowedStr<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for BorrowedStr<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = BorrowedStr<'de>;
            fn expecting(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                formatter.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, value: &'de str) -> Result<Self::Value, E> {
                Ok(BorrowedStr(Cow::Borrowed(value)))
            }
            fn visit_str<E>(self, value: &str) -> Result<Self::Value, E> {
                Ok(BorrowedStr(Cow::Owned(value.to_string())))
            }
            fn visit_string<E>(self, value: String) -> Result<Self::Value, E> {
                Ok(BorrowedStr(Cow::Owned(value)))
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

/// Read the model id of a JSON request body.
///
/// A validating scan answers for the usual bodies; serde_json for the rest (and for every
/// error, so the messages are serde_json's).
///
/// serde_json's recursion limit (128) bounds the cost of deeply nested bodies, and invalid
/// UTF-8 is rejected as a syntax error.
pub fn model_of(body: &[u8]) -> Result<Cow<'_, str>, ApiError> {
    // The usual request: one validating scan, no allocation (see `json`).
    if let Some(model) = json::top_level_model(body).filter(|model| !model.trim().is_empty()) {
        return Ok(Cow::Borrowed(model));
    }
    let fields: RoutingFields<'_> = serde_json::from_slice(body).map_err(|error| {
        if error.is_data() {
            ApiError::InvalidBody(error)
        } else {
            ApiError::InvalidJson(error)
        }
    })?;
    match fields.model {
        Some(BorrowedStr(model)) if !model.trim().is_empty() => Ok(model),
        _ => Err(ApiError::MissingModel),
    }
}

/// The feature a model must have to serve `path`, `None` for paths any model may serve.
pub fn required_feature(path: &str) -> Option<Feature> {
    match path {
        "/v1/chat/completions" | "/v1/completions" => Some(Feature::TextGeneration),
        "/v1/embeddings" => Some(Feature::TextEmbedding),
        _ => None,
    }
}

/// The client's request id if it is usable in a header and a log line, else a new one.
pub fn request_id(incoming: Option<&[u8]>) -> http::HeaderValue {
    incoming
        .filter(|bytes| {
            !bytes.is_empty()
                && bytes.len() <= MAX_REQUEST_ID_LENGTH
                && bytes.iter().all(|byte| byte.is_ascii_graphic())
        })
        .and_then(|bytes| http::HeaderValue::from_bytes(bytes).ok())
        .unwrap_or_else(|| {
            // A hyphenated UUID is always a valid header value (formatted on the stack).
            let mut text = [0; uuid::fmt::Hyphenated::LENGTH];
            let text = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut text);
            http::HeaderValue::from_str(text)
                .unwrap_or_else(|_| http::HeaderValue::from_static("invalid"))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn label(result: Result<Cow<'_, str>, ApiError>) -> String {
        match result {
            Ok(model) => format!("ok:{model}"),
            Err(error) => error.metric_label().to_string(),
        }
    }

    #[test]
    fn reads_only_the_model() {
        let body = br#"{"messages":[{"role":"user","content":"hi"}],"model":"Qwen/Qwen2.5-7B-Instruct","stream":true,"tools":[{"type":"function"}]}"#;
        let model = model_of(body).unwrap();
        assert_eq!(model, "Qwen/Qwen2.5-7B-Instruct");
        assert!(matches!(model, Cow::Borrowed(_)), "plain ids are borrowed");
    }

    #[test]
    fn escaped_model_is_decoded() {
        assert_eq!(label(model_of(br#"{"model":"a\/b\u0041"}"#)), "ok:a/bA");
    }

    #[test]
    fn missing_or_empty_model() {
        for body in [
            &br#"{}"#[..],
            br#"{"messages":[]}"#,
            br#"{"model":null}"#,
            br#"{"model":""}"#,
            br#"{"model":"  "}"#,
        ] {
            assert_eq!(label(model_of(body)), "missing_model", "{body:?}");
        }
    }

    #[test]
    fn wrong_types_are_data_errors() {
        for body in [
            &br#"{"model":42}"#[..],
            br#"{"model":["a"]}"#,
            br#"[{"model":"a"}]"#,
            br#"["a"]"#,
            br#"[]"#,
            br#""model""#,
            br#"17"#,
        ] {
            assert_eq!(label(model_of(body)), "invalid_body", "{body:?}");
        }
    }

    #[test]
    fn hostile_syntax() {
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        let deep_object = format!(
            r#"{{"model":"m","x":{}{}}}"#,
            r#"{"a":"#.repeat(10_000),
            "}".repeat(10_000)
        );
        let cases: Vec<Vec<u8>> = vec![
            b"".to_vec(),
            b"{".to_vec(),
            b"{\"model\":\"m\"".to_vec(),
            b"{\"model\":\"m\"} trailing".to_vec(),
            b"{\"model\":\"\xff\xfe\"}".to_vec(),
            b"\xff\xfe\x00{}".to_vec(),
            b"{\"model\":\"m\",\"model\":\"n\"}".to_vec(),
            deep.into_bytes(),
            deep_object.into_bytes(),
        ];
        for body in cases {
            let result = label(model_of(&body));
            assert!(
                result == "invalid_json" || result == "invalid_body",
                "{result} for {:?}",
                String::from_utf8_lossy(&body[..body.len().min(40)])
            );
        }
    }

    #[test]
    fn large_body_is_fine() {
        let prompt = "x".repeat(4 << 20);
        let body = format!(r#"{{"prompt":"{prompt}","model":"m"}}"#);
        assert_eq!(label(model_of(body.as_bytes())), "ok:m");
    }

    #[test]
    fn features_by_path() {
        assert_eq!(
            required_feature("/v1/chat/completions"),
            Some(Feature::TextGeneration)
        );
        assert_eq!(
            required_feature("/v1/embeddings"),
            Some(Feature::TextEmbedding)
        );
        assert_eq!(required_feature("/v1/tokenize"), None);
    }

    #[test]
    fn request_ids() {
        let kept = http::HeaderValue::from_static("abc-123");
        assert_eq!(request_id(Some(kept.as_bytes())), kept);
        let spaced = http::HeaderValue::from_static("a b");
        assert_ne!(request_id(Some(spaced.as_bytes())), spaced);
        let long = http::HeaderValue::from_str(&"x".repeat(200)).unwrap();
        assert_eq!(request_id(Some(long.as_bytes())).len(), 36);
        assert_eq!(request_id(None).len(), 36);
    }
}
