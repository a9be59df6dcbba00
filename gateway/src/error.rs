//! The one error type of the request path, rendered in the OpenAI error envelope
//! `{"error":{"message","type","param","code"}}` so OpenAI SDKs decode it into their own
//! exception classes.

use std::time::Duration;

use axum::response::{IntoResponse, Response};
use http::{header, HeaderValue, StatusCode};
use serde::Serialize;

use crate::auth::keys::AuthFailure;
use crate::quota::rate::{format_reset, LimitKind, RateStatus};

/// Everything the gateway itself can answer with instead of the engine's response.
/// Engine errors are not here: they pass through with the engine's status and body.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("request body is not valid JSON: {}. Send a JSON object such as {{\"model\": \"...\", ...}}", quote(&.0.to_string()))]
    InvalidJson(#[source] serde_json::Error),

    #[error("invalid request body: {}", quote(&.0.to_string()))]
    InvalidBody(#[source] serde_json::Error),

    #[error("you must provide a model parameter: the request body has no \"model\" field (or it is empty)")]
    MissingModel,

    #[error("request body is larger than the gateway's limit of {limit} bytes")]
    BodyTooLarge { limit: usize },

    #[error("could not read the request body: {0}")]
    BodyRead(#[source] axum::Error),

    #[error("the request body stopped arriving: nothing for {}s", after.as_secs_f64())]
    BodyTimeout { after: Duration },

    #[error(
        "the model `{}` does not exist. GET /v1/models lists the models this gateway serves",
        quote(model)
    )]
    ModelNotFound { model: String },

    #[error("the model `{model}` does not serve {} (it serves: {features}); pick a model with the {required} feature", quote(path))]
    UnsupportedEndpoint {
        model: String,
        path: String,
        features: String,
        required: &'static str,
    },

    #[error("the model `{model}` has no ready replica (scaled to zero or starting); retry after {}s", retry_after.as_secs())]
    NoReadyReplica {
        model: String,
        retry_after: Duration,
    },

    #[error("too many requests are waiting for a replica of the model `{model}`; retry after {}s", retry_after.as_secs())]
    HoldQueueFull {
        model: String,
        retry_after: Duration,
    },

    #[error("no replica of the model `{model}` could be reached: {reason}")]
    BackendUnreachable { model: String, reason: String },

    #[error("the replica serving the model `{model}` did not answer within {}s", after.as_secs_f64())]
    BackendTimeout { model: String, after: Duration },

    #[error("{}", match reason {
        AuthFailure::Missing => "you didn't provide an API key: send it as `Authorization: Bearer <key>` (or `x-api-key: <key>`)",
        AuthFailure::Invalid => "incorrect API key provided: check the key, or ask for a new one if it was rotated or revoked",
    })]
    Unauthorized { reason: AuthFailure },

    #[error("the API key `{key}` may not use the model `{model}`; GET /v1/models lists the models it may use")]
    ModelNotAllowed { model: String, key: String },

    #[error("rate limit reached for the API key `{key}` on {}: limit {limit}{}; retry after {}s", kind_text(*kind), if *kind == LimitKind::Concurrency { "" } else { " per minute" }, retry_after.as_secs_f64().ceil())]
    RateLimited {
        key: String,
        kind: LimitKind,
        limit: u64,
        retry_after: Duration,
        status: RateStatus,
    },

    #[error("no replica of the model `{model}` is ready in {}; remove the placement (x-kinfer-region, x-kinfer-zone, jurisdiction) or retry after {}s", quote(placement), retry_after.as_secs())]
    NoReplicaInPlacement {
        model: String,
        placement: String,
        retry_after: Duration,
    },

    #[error("too many requests wait for the model `{model}` (its concurrency limit is reached and its queue is full); retry after {}s", retry_after.as_secs())]
    ModelQueueFull {
        model: String,
        retry_after: Duration,
    },

    #[error("the request waited too long for a free slot of the model `{model}`; retry after {}s", retry_after.as_secs())]
    ModelQueueTimeout {
        model: String,
        retry_after: Duration,
    },

    #[error("unknown endpoint {} {}", quote(method), quote(path))]
    RouteNotFound { method: String, path: String },

    #[error("method {} is not allowed on {}", quote(method), quote(path))]
    MethodNotAllowed { method: String, path: String },

    /// A request refused for its HTTP framing rather than its content (no or two `Host`
    /// headers, a header the engine connection cannot carry).
    #[error("{message}")]
    Protocol {
        status: StatusCode,
        code: &'static str,
        message: String,
    },
}

/// Longest part of what a client sent that an error message quotes (model names, paths,
/// header values); longer text is cut, so a 1 MB model name is not echoed back whole.
pub const MAX_QUOTED_CHARS: usize = 200;

/// `text`, or its first [`MAX_QUOTED_CHARS`] characters and how much was left out.
pub fn quote(text: &str) -> std::borrow::Cow<'_, str> {
    match text.char_indices().nth(MAX_QUOTED_CHARS) {
        None => std::borrow::Cow::Borrowed(text),
        Some((end, _)) => std::borrow::Cow::Owned(format!(
            "{}... ({} more bytes)",
            &text[..end],
            text.len() - end
        )),
    }
}

fn kind_text(kind: LimitKind) -> &'static str {
    match kind {
        LimitKind::Requests => "requests per minute",
        LimitKind::Tokens => "tokens per minute",
        LimitKind::Concurrency => "concurrent requests",
    }
}

#[derive(Serialize)]
struct Envelope<'a> {
    error: Body<'a>,
}

#[derive(Serialize)]
struct Body<'a> {
    message: String,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a str>,
    code: Option<&'a str>,
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::InvalidJson(_)
            | ApiError::InvalidBody(_)
            | ApiError::MissingModel
            | ApiError::BodyRead(_) => StatusCode::BAD_REQUEST,
            ApiError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            ApiError::ModelNotFound { .. } | ApiError::RouteNotFound { .. } => {
                StatusCode::NOT_FOUND
            }
            ApiError::UnsupportedEndpoint { .. } => StatusCode::NOT_IMPLEMENTED,
            ApiError::NoReadyReplica { .. } | ApiError::HoldQueueFull { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::BackendUnreachable { .. } => StatusCode::BAD_GATEWAY,
            ApiError::BackendTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            ApiError::ModelNotAllowed { .. } => StatusCode::FORBIDDEN,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::NoReplicaInPlacement { .. }
            | ApiError::ModelQueueFull { .. }
            | ApiError::ModelQueueTimeout { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Protocol { status, .. } => *status,
        }
    }

    /// The envelope's `code`, also usable as a low-cardinality metric and log label.
    pub fn metric_label(&self) -> &'static str {
        match self {
            ApiError::InvalidJson(_) => "invalid_json",
            ApiError::InvalidBody(_) => "invalid_body",
            ApiError::MissingModel => "missing_model",
            ApiError::BodyTooLarge { .. } => "body_too_large",
            ApiError::BodyRead(_) => "body_read_failed",
            ApiError::BodyTimeout { .. } => "body_timeout",
            ApiError::ModelNotFound { .. } => "model_not_found",
            ApiError::UnsupportedEndpoint { .. } => "unsupported_endpoint",
            ApiError::NoReadyReplica { .. } => "no_ready_replica",
            ApiError::HoldQueueFull { .. } => "hold_queue_full",
            ApiError::BackendUnreachable { .. } => "backend_unreachable",
            ApiError::BackendTimeout { .. } => "backend_timeout",
            ApiError::RouteNotFound { .. } => "unknown_url",
            ApiError::MethodNotAllowed { .. } => "method_not_allowed",
            ApiError::Unauthorized { .. } => "invalid_api_key",
            ApiError::ModelNotAllowed { .. } => "model_not_allowed",
            ApiError::RateLimited { .. } => "rate_limit_exceeded",
            ApiError::NoReplicaInPlacement { .. } => "no_replica_in_placement",
            ApiError::ModelQueueFull { .. } => "model_queue_full",
            ApiError::ModelQueueTimeout { .. } => "model_queue_timeout",
            ApiError::Protocol { code, .. } => code,
        }
    }

    fn kind(&self) -> &'static str {
        // OpenAI names the exhausted limit in `type` of a 429.
        if let ApiError::RateLimited { kind, .. } = self {
            return match kind {
                LimitKind::Tokens => "tokens",
                LimitKind::Requests | LimitKind::Concurrency => "requests",
            };
        }
        if self.status().is_server_error() {
            "api_error"
        } else {
            "invalid_request_error"
        }
    }

    fn param(&self) -> Option<&'static str> {
        match self {
            ApiError::MissingModel
            | ApiError::ModelNotFound { .. }
            | ApiError::UnsupportedEndpoint { .. }
            | ApiError::ModelNotAllowed { .. } => Some("model"),
            _ => None,
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            ApiError::NoReadyReplica { retry_after, .. }
            | ApiError::HoldQueueFull { retry_after, .. }
            | ApiError::RateLimited { retry_after, .. }
            | ApiError::NoReplicaInPlacement { retry_after, .. }
            | ApiError::ModelQueueFull { retry_after, .. }
            | ApiError::ModelQueueTimeout { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }

    /// The OpenAI error envelope, `{"error":{"message","type","param","code"}}`, as JSON: the
    /// body of the error response, and the `data` of the SSE error event of a held stream.
    pub fn to_json(&self) -> Vec<u8> {
        let envelope = Envelope {
            error: Body {
                message: self.to_string(),
                kind: self.kind(),
                param: self.param(),
                code: Some(self.metric_label()),
            },
        };
        // Serializing a struct of strings cannot fail.
        serde_json::to_vec(&envelope).unwrap_or_default()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = self.to_json();
        let mut response = (
            self.status(),
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            body,
        )
            .into_response();
        if let Some(retry_after) = self.retry_after() {
            // Whole seconds, rounded up: a client retrying at once would be refused again.
            let seconds = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
        }
        if let ApiError::RateLimited { status, .. } = &self {
            insert_rate_headers(response.headers_mut(), status);
        }
        response
    }
}

/// `x-ratelimit-{limit,remaining,reset}-{requests,tokens}`, as OpenAI sends them.
pub fn insert_rate_headers(headers: &mut http::HeaderMap, status: &RateStatus) {
    for (figures, limit, remaining, reset) in [
        (
            &status.requests,
            "x-ratelimit-limit-requests",
            "x-ratelimit-remaining-requests",
            "x-ratelimit-reset-requests",
        ),
        (
            &status.tokens,
            "x-ratelimit-limit-tokens",
            "x-ratelimit-remaining-tokens",
            "x-ratelimit-reset-tokens",
        ),
    ] {
        if let Some(figures) = figures {
            headers.insert(limit, HeaderValue::from(figures.limit));
            headers.insert(remaining, HeaderValue::from(figures.remaining));
            if let Ok(value) = HeaderValue::from_str(&format_reset(figures.reset)) {
                headers.insert(reset, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn render(error: ApiError) -> (StatusCode, http::HeaderMap, serde_json::Value) {
        let response = error.into_response();
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, headers, serde_json::from_slice(&body).unwrap())
    }

    #[test]
    fn client_text_is_quoted_at_most_200_characters() {
        let long = "m".repeat(1 << 20);
        let message = ApiError::ModelNotFound { model: long }.to_string();
        assert!(message.len() < 400, "{} bytes", message.len());
        assert!(message.contains(&format!("{}... (", "m".repeat(MAX_QUOTED_CHARS))));
        let path = format!("/v1/{}", "é".repeat(300));
        let message = ApiError::RouteNotFound {
            method: "GET".into(),
            path,
        }
        .to_string();
        assert!(message.chars().count() < 300, "{message}");
        assert_eq!(quote("short"), "short");
    }

    #[tokio::test]
    async fn envelope_has_every_openai_field() {
        let (status, headers, body) = render(ApiError::ModelNotFound {
            model: "nope".into(),
        })
        .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(headers[header::CONTENT_TYPE], "application/json");
        let error = &body["error"];
        assert!(error["message"].as_str().unwrap().contains("`nope`"));
        assert_eq!(error["type"], "invalid_request_error");
        assert_eq!(error["param"], "model");
        assert_eq!(error["code"], "model_not_found");
    }

    #[tokio::test]
    async fn unavailable_carries_retry_after() {
        let (status, headers, body) = render(ApiError::NoReadyReplica {
            model: "m".into(),
            retry_after: Duration::from_secs(7),
        })
        .await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(headers[header::RETRY_AFTER], "7");
        assert_eq!(body["error"]["type"], "api_error");
        assert_eq!(body["error"]["param"], serde_json::Value::Null);
    }

    #[tokio::test]
    async fn auth_and_rate_limit_envelopes() {
        let (status, _, body) = render(ApiError::Unauthorized {
            reason: AuthFailure::Invalid,
        })
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(body["error"]["code"], "invalid_api_key");
        assert_eq!(body["error"]["type"], "invalid_request_error");
        let (status, _, body) = render(ApiError::ModelNotAllowed {
            model: "m".into(),
            key: "team-a".into(),
        })
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert_eq!(body["error"]["param"], "model");
        let (status, headers, body) = render(ApiError::RateLimited {
            key: "team-a".into(),
            kind: LimitKind::Requests,
            limit: 60,
            retry_after: Duration::from_millis(1500),
            status: RateStatus {
                requests: Some(crate::quota::rate::LimitStatus {
                    limit: 60,
                    remaining: 0,
                    reset: Duration::from_secs(60),
                }),
                tokens: None,
            },
        })
        .await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(headers[header::RETRY_AFTER], "2");
        assert_eq!(headers["x-ratelimit-limit-requests"], "60");
        assert_eq!(headers["x-ratelimit-remaining-requests"], "0");
        assert_eq!(headers["x-ratelimit-reset-requests"], "1m0s");
        assert!(!headers.contains_key("x-ratelimit-limit-tokens"));
        assert_eq!(body["error"]["code"], "rate_limit_exceeded");
        assert_eq!(body["error"]["type"], "requests");
        assert!(body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("requests per minute: limit 60"));
    }

    #[tokio::test]
    async fn statuses() {
        let cases = [
            (ApiError::MissingModel, 400),
            (ApiError::BodyTooLarge { limit: 1 }, 413),
            (
                ApiError::UnsupportedEndpoint {
                    model: "m".into(),
                    path: "/v1/embeddings".into(),
                    features: "TextGeneration".into(),
                    required: "TextEmbedding",
                },
                501,
            ),
            (
                ApiError::BackendUnreachable {
                    model: "m".into(),
                    reason: "refused".into(),
                },
                502,
            ),
            (
                ApiError::BackendTimeout {
                    model: "m".into(),
                    after: Duration::from_secs(1),
                },
                504,
            ),
        ];
        for (error, expected) in cases {
            let label = error.metric_label();
            let (status, _, body) = render(error).await;
            assert_eq!(status.as_u16(), expected, "{label}");
            assert_eq!(body["error"]["code"], label);
        }
    }
}
