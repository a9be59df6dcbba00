//! The one error type of the request path, rendered in the OpenAI error envelope
//! `{"error":{"message","type","param","code"}}` so OpenAI SDKs decode it into their own
//! exception classes.

use std::time::Duration;

use axum::response::{IntoResponse, Response};
use http::{header, HeaderValue, StatusCode};
use serde::Serialize;

/// Everything the gateway itself can answer with instead of the engine's response.
/// Engine errors are not here: they pass through with the engine's status and body.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("request body is not valid JSON: {0}. Send a JSON object such as {{\"model\": \"...\", ...}}")]
    InvalidJson(#[source] serde_json::Error),

    #[error("invalid request body: {0}")]
    InvalidBody(#[source] serde_json::Error),

    #[error("you must provide a model parameter: the request body has no \"model\" field (or it is empty)")]
    MissingModel,

    #[error("request body is larger than the gateway's limit of {limit} bytes")]
    BodyTooLarge { limit: usize },

    #[error("could not read the request body: {0}")]
    BodyRead(#[source] axum::Error),

    #[error(
        "the model `{model}` does not exist. GET /v1/models lists the models this gateway serves"
    )]
    ModelNotFound { model: String },

    #[error("the model `{model}` does not serve {path} (it serves: {features}); pick a model with the {required} feature")]
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

    #[error("unknown endpoint {method} {path}")]
    RouteNotFound { method: String, path: String },

    #[error("method {method} is not allowed on {path}")]
    MethodNotAllowed { method: String, path: String },
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
            ApiError::ModelNotFound { .. } => "model_not_found",
            ApiError::UnsupportedEndpoint { .. } => "unsupported_endpoint",
            ApiError::NoReadyReplica { .. } => "no_ready_replica",
            ApiError::HoldQueueFull { .. } => "hold_queue_full",
            ApiError::BackendUnreachable { .. } => "backend_unreachable",
            ApiError::BackendTimeout { .. } => "backend_timeout",
            ApiError::RouteNotFound { .. } => "unknown_url",
            ApiError::MethodNotAllowed { .. } => "method_not_allowed",
        }
    }

    fn kind(&self) -> &'static str {
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
            | ApiError::UnsupportedEndpoint { .. } => Some("model"),
            _ => None,
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            ApiError::NoReadyReplica { retry_after, .. }
            | ApiError::HoldQueueFull { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let envelope = Envelope {
            error: Body {
                message: self.to_string(),
                kind: self.kind(),
                param: self.param(),
                code: Some(self.metric_label()),
            },
        };
        // Serializing a struct of strings cannot fail.
        let body = serde_json::to_vec(&envelope).unwrap_or_default();
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
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(retry_after.as_secs().max(1)),
            );
        }
        response
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
