//! HTTP errors with vLLM's status codes and bodies.
//!
//! vLLM answers errors as `{"error": {"message", "type", "param", "code"}}`
//! with `code` equal to the HTTP status; request validation failures use the
//! status phrase `Bad Request` as type, semantic errors `BadRequestError`,
//! unknown models `NotFoundError` with `param: "model"`. Two routes answer
//! differently, as in vLLM: a missing or wrong API key gets
//! `{"error": "Unauthorized"}`, and an unknown path gets FastAPI's
//! `{"detail": "Not Found"}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use thiserror::Error;

use crate::protocol::{ErrorInfo, ErrorResponse};
use crate::scheduler::SchedulerError;

/// Everything a request handler can fail with.
#[derive(Debug, Error)]
pub enum ApiError {
    /// The body is not JSON, or not the expected shape.
    #[error("{0}")]
    InvalidRequest(String),
    /// The body parsed but asks for something impossible.
    #[error("{message}")]
    BadRequest {
        /// What is wrong and how to fix it.
        message: String,
        /// The offending field.
        param: Option<&'static str>,
    },
    /// The requested model is neither a served name nor an adapter.
    #[error("The model `{0}` does not exist.")]
    ModelNotFound(String),
    /// A bug in the simulator.
    #[error("{0}")]
    Internal(String),
    /// Injected by `--sim-error-rate`.
    #[error("Simulated engine failure (--sim-error-rate); retry the request")]
    InjectedFailure,
    /// The scheduler refused the request.
    #[error(transparent)]
    Scheduler(#[from] SchedulerError),
    /// Still inside `--sim-startup-delay-ms`.
    #[error("The server is starting up; retry shortly")]
    Starting,
    /// Missing or wrong `Authorization: Bearer` header.
    #[error("Unauthorized")]
    Unauthorized,
    /// No such route.
    #[error("Not Found")]
    RouteNotFound,
    /// The engine aborted the request (SIGTERM without `--shutdown-timeout`,
    /// or the drain deadline passed); vLLM's words.
    #[error("EngineCore encountered an issue. See stack trace (above) for the root cause.")]
    EngineDead,
    /// A new request after SIGTERM; vLLM's words (its executor is shut down).
    #[error("cannot schedule new futures after shutdown")]
    ShuttingDown,
}

impl ApiError {
    /// HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::InvalidRequest(_) | ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::ModelNotFound(_) | ApiError::RouteNotFound => StatusCode::NOT_FOUND,
            ApiError::InjectedFailure
            | ApiError::Scheduler(_)
            | ApiError::Internal(_)
            | ApiError::EngineDead
            | ApiError::ShuttingDown => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Starting => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
        }
    }

    /// The `type` field of the error body.
    pub fn error_type(&self) -> &'static str {
        match self {
            ApiError::InvalidRequest(_) => "Bad Request",
            ApiError::BadRequest { .. } => "BadRequestError",
            ApiError::ModelNotFound(_) | ApiError::RouteNotFound => "NotFoundError",
            ApiError::InjectedFailure
            | ApiError::Scheduler(_)
            | ApiError::Internal(_)
            | ApiError::EngineDead
            | ApiError::ShuttingDown => "InternalServerError",
            ApiError::Starting => "ServiceUnavailableError",
            ApiError::Unauthorized => "UnauthorizedError",
        }
    }

    /// Low-cardinality label for metrics and logs.
    pub fn metric_label(&self) -> &'static str {
        match self {
            ApiError::InvalidRequest(_) => "invalid_request",
            ApiError::BadRequest { .. } => "bad_request",
            ApiError::ModelNotFound(_) => "model_not_found",
            ApiError::InjectedFailure => "injected_failure",
            ApiError::Internal(_) => "internal",
            ApiError::Scheduler(err) => err.metric_label(),
            ApiError::Starting => "starting",
            ApiError::Unauthorized => "unauthorized",
            ApiError::RouteNotFound => "route_not_found",
            ApiError::EngineDead => "engine_dead",
            ApiError::ShuttingDown => "shutting_down",
        }
    }

    /// vLLM's error body for this error.
    pub fn body(&self) -> ErrorResponse {
        let param = match self {
            ApiError::ModelNotFound(_) => Some("model".to_owned()),
            ApiError::BadRequest { param, .. } => param.map(str::to_owned),
            _ => None,
        };
        ErrorResponse {
            error: ErrorInfo {
                message: self.to_string(),
                error_type: self.error_type().to_owned(),
                param,
                code: self.status().as_u16(),
            },
        }
    }

    /// Shorthand for [`ApiError::BadRequest`].
    pub fn bad_request(message: impl Into<String>, param: Option<&'static str>) -> Self {
        ApiError::BadRequest {
            message: message.into(),
            param,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        tracing::debug!(error = %self, kind = self.metric_label(), "request failed");
        match self {
            ApiError::Unauthorized => {
                (status, Json(serde_json::json!({"error": "Unauthorized"}))).into_response()
            }
            ApiError::RouteNotFound => {
                (status, Json(serde_json::json!({"detail": "Not Found"}))).into_response()
            }
            other => (status, Json(other.body())).into_response(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_found_body_matches_vllm() {
        let body = serde_json::to_value(ApiError::ModelNotFound("x".into()).body()).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"error": {
                "message": "The model `x` does not exist.",
                "type": "NotFoundError",
                "param": "model",
                "code": 404
            }})
        );
    }
}
