//! Held stream requests: SSE keep-alives while the hold lasts.
//!
//! A replica started from zero can take minutes to turn ready, and a load balancer in front of
//! the gateway cuts a connection that stays silent longer than its idle timeout (60 s on the
//! usual cloud ones). So a stream request (`"stream": true`) still held after one keep-alive
//! interval is answered at once: 200, `content-type: text/event-stream`, and a body that sends
//! the SSE comment `: keep-alive` every interval. Once the request is released and the engine
//! answers, the engine's stream follows in the same body. When the request fails instead (the
//! hold ended without a replica, the model was deleted, the engine answered an error), the
//! error goes out as one SSE event, `data: {"error":{...}}`, and the stream ends: the status
//! line has been sent, and OpenAI SDKs raise such an event as an `APIError`.
//!
//! Holds shorter than one interval are answered exactly as before (status codes, headers).
//! The request's metrics and access log keep the real outcome: the engine's status, or the
//! status the error would have had (503 `no_ready_replica`, 404 `model_not_found`, ...), not
//! the 200 of the keep-alive answer.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;

use bytes::{Bytes, BytesMut};
use http::{header, HeaderValue, StatusCode};
use hyper::body::{Frame, SizeHint};
use serde::Deserialize;
use tokio::time::{Instant, Sleep};

use crate::error::ApiError;
use crate::proxy::RequestLog;

/// The SSE comment sent while the request is held.
pub const KEEP_ALIVE: &[u8] = b": keep-alive\n\n";

/// An engine error body is read up to this many bytes for the error event.
const MAX_ENGINE_ERROR_BYTES: usize = 64 << 10;

/// The rest of a held request: the hold, then the forward to the engine.
pub type Continuation =
    Pin<Box<dyn Future<Output = Result<Response, (ApiError, RequestLog)>> + Send>>;

#[derive(Deserialize)]
struct StreamField {
    #[serde(default)]
    stream: Option<bool>,
}

/// Whether a JSON request body asks for a stream: a top-level `"stream": true`. Anything else
/// (absent, `null`, not a boolean, a body that is not a JSON object) is not a stream; the engine
/// rejects what it cannot read. No allocation: unknown fields are skipped.
pub fn is_stream(body: &[u8]) -> bool {
    // A derived struct also reads a JSON array (`[true]`): only an object counts.
    if body.trim_ascii_start().first() != Some(&b'{') {
        return false;
    }
    serde_json::from_slice::<StreamField>(body)
        .ok()
        .and_then(|fields| fields.stream)
        .unwrap_or(false)
}

/// One SSE event whose data is `json` (which must be on one line).
fn data_event(json: &[u8]) -> Bytes {
    let mut event = BytesMut::with_capacity(json.len() + 8);
    event.extend_from_slice(b"data: ");
    event.extend_from_slice(json);
    event.extend_from_slice(b"\n\n");
    event.freeze()
}

/// The gateway's error as an SSE event: the same envelope the error response carries.
pub fn error_event(error: &ApiError) -> Bytes {
    // serde_json writes no raw newline (newlines in strings are escaped).
    data_event(&error.to_json())
}

/// An engine's error answer as an SSE event: its JSON body when it is the OpenAI envelope
/// (`{"error": ...}`), on one line; anything else wrapped in the envelope, the body's text as
/// the message.
pub fn engine_error_event(status: StatusCode, body: &[u8]) -> Bytes {
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) {
        if value.get("error").is_some_and(|error| !error.is_null()) {
            // Re-serialized: compact, so a pretty-printed body does not break the event.
            return data_event(value.to_string().as_bytes());
        }
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    let message = if text.is_empty() {
        format!("the engine answered {status}")
    } else {
        format!("the engine answered {status}: {text}")
    };
    let kind = if status.is_server_error() {
        "api_error"
    } else {
        "invalid_request_error"
    };
    let envelope = serde_json::json!({
        "error": { "message": message, "type": kind, "param": null, "code": null }
    });
    data_event(envelope.to_string().as_bytes())
}

/// The 200 answer of a held stream request whose hold outlasted one keep-alive interval: SSE
/// keep-alives every `interval` (the first at once), then the engine's stream or an error
/// event. Dropping the body (the client went away) drops `rest`, which leaves the hold.
pub fn keepalive_response(rest: Continuation, interval: Duration) -> Response {
    let body = HeldStreamBody {
        state: State::Holding {
            rest,
            tick: Box::pin(tokio::time::sleep(Duration::ZERO)),
        },
        interval,
    };
    let mut response = Response::new(Body::new(body));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

struct HeldStreamBody {
    state: State,
    interval: Duration,
}

enum State {
    /// Held, or released and waiting for the engine's response head.
    Holding {
        rest: Continuation,
        tick: Pin<Box<Sleep>>,
    },
    /// The engine answered 2xx: its body, as it comes.
    Splicing(Body),
    /// The engine answered an error: its body, read for the error event.
    ReadingError {
        status: StatusCode,
        body: Body,
        read: BytesMut,
    },
    Done,
}

impl hyper::body::Body for HeldStreamBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        loop {
            match &mut this.state {
                State::Holding { rest, tick } => {
                    match rest.as_mut().poll(context) {
                        Poll::Ready(Ok(reply)) => {
                            // The engine's headers are not for the client: its 200 went out.
                            let (head, body) = reply.into_parts();
                            this.state = if head.status.is_success() {
                                State::Splicing(body)
                            } else {
                                State::ReadingError {
                                    status: head.status,
                                    body,
                                    read: BytesMut::new(),
                                }
                            };
                            continue;
                        }
                        Poll::Ready(Err((error, mut log))) => {
                            // As `proxy_request` records an error answer.
                            log.status = Some(error.status().as_u16());
                            log.error = Some(error.metric_label());
                            drop(log);
                            this.state = State::Done;
                            return Poll::Ready(Some(Ok(Frame::data(error_event(&error)))));
                        }
                        Poll::Pending => {}
                    }
                    return match tick.as_mut().poll(context) {
                        Poll::Ready(()) => {
                            tick.as_mut().reset(Instant::now() + this.interval);
                            Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(KEEP_ALIVE)))))
                        }
                        Poll::Pending => Poll::Pending,
                    };
                }
                State::Splicing(body) => {
                    let polled = Pin::new(body).poll_frame(context);
                    if let Poll::Ready(None) = polled {
                        this.state = State::Done;
                    }
                    return polled;
                }
                State::ReadingError { status, body, read } => {
                    let end = match Pin::new(body).poll_frame(context) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Some(Ok(frame))) => {
                            if let Some(data) = frame.data_ref() {
                                let room = MAX_ENGINE_ERROR_BYTES.saturating_sub(read.len());
                                read.extend_from_slice(&data[..data.len().min(room)]);
                            }
                            read.len() >= MAX_ENGINE_ERROR_BYTES
                        }
                        // A cut error body: what was read is the message.
                        Poll::Ready(Some(Err(_))) | Poll::Ready(None) => true,
                    };
                    if end {
                        let event = engine_error_event(*status, read);
                        this.state = State::Done;
                        return Poll::Ready(Some(Ok(Frame::data(event))));
                    }
                }
                State::Done => return Poll::Ready(None),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, State::Done)
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use http_body_util::BodyExt;
    use std::sync::Arc;

    #[test]
    fn only_a_top_level_true_stream_is_a_stream() {
        assert!(is_stream(br#"{"model":"m","stream":true}"#));
        assert!(is_stream(
            br#"{"messages":[{"stream":false}],"stream" : true,"x":{"stream":false}}"#
        ));
        for body in [
            &br#"{"model":"m"}"#[..],
            br#"{"model":"m","stream":false}"#,
            br#"{"model":"m","stream":null}"#,
            br#"{"model":"m","stream":"true"}"#,
            br#"{"model":"m","stream":1}"#,
            br#"{"model":"m","options":{"stream":true}}"#,
            br#"[{"stream":true}]"#,
            b"[true]",
            br#"{"stream":true"#,
            b"",
        ] {
            assert!(!is_stream(body), "{}", String::from_utf8_lossy(body));
        }
    }

    fn event_json(event: &[u8]) -> serde_json::Value {
        let text = std::str::from_utf8(event).unwrap();
        let data = text
            .strip_prefix("data: ")
            .and_then(|rest| rest.strip_suffix("\n\n"))
            .unwrap();
        assert!(!data.contains('\n'), "{text:?}");
        serde_json::from_str(data).unwrap()
    }

    #[test]
    fn gateway_errors_are_the_response_envelope() {
        let error = ApiError::NoReadyReplica {
            model: "m".into(),
            retry_after: Duration::from_secs(10),
        };
        let event = error_event(&error);
        let expected: serde_json::Value = serde_json::from_slice(&error.to_json()).unwrap();
        assert_eq!(event_json(&event), expected);
        assert_eq!(expected["error"]["code"], "no_ready_replica");
        assert_eq!(expected["error"]["type"], "api_error");
    }

    #[test]
    fn engine_envelopes_pass_through_on_one_line() {
        let body = b"{\n  \"error\": {\"message\": \"too long\\nreally\", \"type\": \"BadRequestError\", \"param\": null, \"code\": 400}\n}";
        let event = event_json(&engine_error_event(StatusCode::BAD_REQUEST, body));
        assert_eq!(event["error"]["message"], "too long\nreally");
        assert_eq!(event["error"]["code"], 400);
    }

    #[test]
    fn other_engine_errors_are_wrapped() {
        let event = event_json(&engine_error_event(
            StatusCode::INTERNAL_SERVER_ERROR,
            b"Internal Server Error\n",
        ));
        assert_eq!(
            event["error"]["message"],
            "the engine answered 500 Internal Server Error: Internal Server Error"
        );
        assert_eq!(event["error"]["type"], "api_error");
        let legacy = br#"{"object":"error","message":"bad","type":"BadRequestError","code":400}"#;
        let event = event_json(&engine_error_event(StatusCode::BAD_REQUEST, legacy));
        assert_eq!(event["error"]["type"], "invalid_request_error");
        assert!(event["error"]["message"]
            .as_str()
            .unwrap()
            .ends_with(std::str::from_utf8(legacy).unwrap()));
        let empty = event_json(&engine_error_event(StatusCode::BAD_GATEWAY, b""));
        assert_eq!(
            empty["error"]["message"],
            "the engine answered 502 Bad Gateway"
        );
    }

    fn log() -> RequestLog {
        RequestLog::new(
            Arc::new(Metrics::new()),
            HeaderValue::from_static("r"),
            http::uri::PathAndQuery::from_static("/v1/chat/completions"),
        )
    }

    /// The frames of `body` with the time each came at, from `started`.
    async fn frames(body: Body, started: Instant) -> Vec<(Duration, Bytes)> {
        let mut body = body;
        let mut frames = Vec::new();
        while let Some(frame) = body.frame().await {
            let data = frame.unwrap().into_data().unwrap();
            frames.push((started.elapsed(), data));
        }
        frames
    }

    #[tokio::test(start_paused = true)]
    async fn keep_alives_until_the_engine_stream() {
        let started = Instant::now();
        let rest: Continuation = Box::pin(async {
            tokio::time::sleep(Duration::from_millis(2500)).await;
            Ok(Response::new(Body::from("data: [DONE]\n\n")))
        });
        let response = keepalive_response(rest, Duration::from_secs(1));
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "text/event-stream"
        );
        assert_eq!(response.headers()[header::CACHE_CONTROL], "no-cache");
        let frames = frames(response.into_body(), started).await;
        let keep_alive = Bytes::from_static(KEEP_ALIVE);
        let expected = [
            (Duration::ZERO, keep_alive.clone()),
            (Duration::from_secs(1), keep_alive.clone()),
            (Duration::from_secs(2), keep_alive),
            (
                Duration::from_millis(2500),
                Bytes::from_static(b"data: [DONE]\n\n"),
            ),
        ];
        assert_eq!(frames, expected);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_hold_ends_with_an_error_event() {
        let started = Instant::now();
        let rest: Continuation = Box::pin(async {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            let error = ApiError::ModelNotFound { model: "m".into() };
            Err((error, log()))
        });
        let response = keepalive_response(rest, Duration::from_secs(1));
        let frames = frames(response.into_body(), started).await;
        assert_eq!(frames.len(), 3, "{frames:?}");
        let (at, event) = &frames[2];
        assert_eq!(*at, Duration::from_millis(1500));
        assert_eq!(event_json(event)["error"]["code"], "model_not_found");
    }

    #[tokio::test(start_paused = true)]
    async fn an_engine_error_ends_with_its_body_as_an_event() {
        let rest: Continuation = Box::pin(async {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let mut response = Response::new(Body::from(
                r#"{"error":{"message":"context too long","type":"BadRequestError","param":null,"code":400}}"#,
            ));
            *response.status_mut() = StatusCode::BAD_REQUEST;
            Ok(response)
        });
        let response = keepalive_response(rest, Duration::from_secs(1));
        let frames = frames(response.into_body(), Instant::now()).await;
        assert_eq!(frames.len(), 2, "{frames:?}");
        let event = event_json(&frames[1].1);
        assert_eq!(event["error"]["message"], "context too long");
    }
}
