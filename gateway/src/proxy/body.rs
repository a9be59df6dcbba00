//! The response body handed to the client: the engine's body (hyper's `Incoming`), frame by
//! frame, unchanged.
//!
//! The wrapper adds what a pass-through needs and nothing else: an idle timeout between
//! frames, the time-to-first-byte measurement, and guards whose `Drop` ends the in-flight count
//! and writes the access log. When the client goes away, the server drops this body, which
//! drops the upstream body, and hyper's client closes that connection: the engine sees the
//! cancel. A body read to the end leaves its connection in the client's pool.
//!
//! When the engine's body fails or falls silent past the idle timeout, the status line went
//! out long ago. A server-sent event stream then ends with one SSE error event and a clean end
//! of the body (see [`stream_error_event`]): an OpenAI SDK raises it as an `APIError`, where a
//! cut connection leaves some clients waiting or retrying blindly. Any other body is cut, so
//! the client sees an incomplete response rather than a complete-looking one.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use prometheus_client::metrics::gauge::Gauge;
use tokio::time::{Instant, Sleep};

use crate::index::Endpoint;
use crate::metrics::{Metrics, ModelMetrics, UNKNOWN_MODEL};
use hyper::body::Incoming;

/// Counts one request in flight on an endpoint and on its model's gauge, until dropped.
#[derive(Debug)]
pub struct InflightGuard {
    endpoint: Arc<Endpoint>,
    gauge: Gauge,
}

impl InflightGuard {
    pub fn new(endpoint: Arc<Endpoint>, gauge: Gauge) -> Self {
        endpoint.begin_request();
        gauge.inc();
        Self { endpoint, gauge }
    }

    pub fn endpoint(&self) -> &Arc<Endpoint> {
        &self.endpoint
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.endpoint.end_request();
        self.gauge.dec();
    }
}

/// How a request ended, for the access log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Still running (the log has not been finished yet).
    Pending,
    /// The whole response was sent.
    Complete,
    /// The upstream body failed or went idle too long mid-stream.
    UpstreamError,
    /// The client went away (or the server shut down) before the end.
    Cancelled,
}

/// One access log line and the request's duration, written when dropped, whatever happened.
///
/// Boxed: the log goes with the request through every layer (route, dispatch, forward, the
/// response body), and each layer's future takes it by value. A move of the record was a
/// 224-byte copy, about fifteen per request; a move of the box is a pointer (see
/// docs/benchmarks.md, "Bytes moved per request").
pub struct RequestLog(Box<LogRecord>);

/// The fields of a [`RequestLog`], read and written through it.
pub struct LogRecord {
    metrics: Arc<Metrics>,
    pub request_id: http::HeaderValue,
    pub path: http::uri::PathAndQuery,
    pub model: Option<ModelMetrics>,
    pub replica: Option<Arc<Endpoint>>,
    pub status: Option<u16>,
    pub error: Option<&'static str>,
    pub retries: u32,
    pub started: Instant,
    pub outcome: Outcome,
}

impl RequestLog {
    pub fn new(
        metrics: Arc<Metrics>,
        request_id: http::HeaderValue,
        path: http::uri::PathAndQuery,
    ) -> Self {
        Self(Box::new(LogRecord {
            metrics,
            request_id,
            path,
            model: None,
            replica: None,
            status: None,
            error: None,
            retries: 0,
            started: Instant::now(),
            outcome: Outcome::Pending,
        }))
    }
}

impl std::ops::Deref for RequestLog {
    type Target = LogRecord;
    fn deref(&self) -> &LogRecord {
        &self.0
    }
}

impl std::ops::DerefMut for RequestLog {
    fn deref_mut(&mut self) -> &mut LogRecord {
        &mut self.0
    }
}

impl Drop for LogRecord {
    fn drop(&mut self) {
        let elapsed = self.started.elapsed();
        let outcome = match self.outcome {
            Outcome::Pending if self.status.is_some() && self.replica.is_none() => {
                Outcome::Complete
            }
            Outcome::Pending => Outcome::Cancelled,
            other => other,
        };
        // 499: the client closed the request before the response head (nginx's convention).
        let code = self.status.unwrap_or(499);
        match &self.model {
            Some(model) => {
                self.metrics.count_request(model, code);
                if self.replica.is_some() {
                    model.request_duration.observe(elapsed.as_secs_f64());
                }
            }
            None => self.metrics.count_request_by_name(UNKNOWN_MODEL, code),
        }
        tracing::info!(
            request_id = ?self.request_id,
            path = %self.path.path(),
            model = self.model.as_ref().map_or(UNKNOWN_MODEL, |model| model.model.as_str()),
            replica = self.replica.as_ref().map_or("", |endpoint| endpoint.name()),
            status = code,
            error = self.error.unwrap_or(""),
            retries = self.retries,
            duration_ms = elapsed.as_secs_f64() * 1000.0,
            outcome = ?outcome,
            "request"
        );
    }
}

/// Errors of the body stream as the client's connection sees them (it is cut).
#[derive(Debug)]
pub enum BodyError {
    Upstream(hyper::Error),
    Idle(Duration),
}

impl fmt::Display for BodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BodyError::Upstream(error) => write!(f, "engine response body failed: {error}"),
            BodyError::Idle(after) => write!(f, "engine sent nothing for {after:?}"),
        }
    }
}

impl std::error::Error for BodyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            BodyError::Upstream(error) => Some(error),
            BodyError::Idle(_) => None,
        }
    }
}

pub struct ProxyBody {
    inner: Incoming,
    /// Some for a server-sent event stream without a content-length: its failure is told to
    /// the client as an error event (see the module documentation).
    events: Option<EventBoundary>,
    /// The error event has been sent: the body ends.
    ended_with_error_event: bool,
    idle_timeout: Duration,
    /// Fires at most once per `idle_timeout`; frames only move `last_frame`, so a stream of
    /// many small chunks does not touch the timer wheel per chunk. Armed the first time the
    /// engine makes the body wait: a body that is already there needs no timer.
    idle: Option<Pin<Box<Sleep>>>,
    last_frame: Instant,
    first_frame_seen: bool,
    /// Held until the body ends: the replica's in-flight count.
    _inflight: InflightGuard,
    log: RequestLog,
    /// The start of the body, read before the response head was handed to the server (see
    /// [`Self::with_read`]).
    prefetched: Option<Frame<Bytes>>,
}

/// The code and message of the SSE error event that ends a failed stream.
fn describe(error: &BodyError) -> (&'static str, String) {
    match error {
        BodyError::Idle(after) => (
            "upstream_idle_timeout",
            format!(
                "the engine sent nothing for {}s and the gateway ended the stream; the response is incomplete, retry the request",
                after.as_secs_f64()
            ),
        ),
        BodyError::Upstream(error) => (
            "upstream_error",
            format!("the engine's stream failed ({error}); the response is incomplete, retry the request"),
        ),
    }
}

/// `data: {"error":{...}}` and the blank line that ends the event, in the OpenAI error
/// envelope. `type` is `server_error`, as OpenAI's own streams say for their failures.
/// `separate`: the stream stopped inside an event, which is ended first so the error event is
/// one of its own (the cut event reaches the client incomplete either way).
pub fn stream_error_event(code: &str, message: &str, separate: bool) -> Bytes {
    let envelope = serde_json::json!({
        "error": { "message": message, "type": "server_error", "param": null, "code": code }
    });
    // serde_json writes no raw newline: the event's data is one line.
    let json = envelope.to_string();
    let mut event = Vec::with_capacity(json.len() + 10);
    if separate {
        event.extend_from_slice(b"\n\n");
    }
    event.extend_from_slice(b"data: ");
    event.extend_from_slice(json.as_bytes());
    event.extend_from_slice(b"\n\n");
    Bytes::from(event)
}

/// Whether the bytes sent so far end between two events (after a blank line), from the last
/// four of them: an error event appended anywhere else would join the cut event.
#[derive(Clone, Copy, Debug)]
struct EventBoundary {
    /// The last bytes sent, oldest first; starts as a blank line (nothing sent is a boundary).
    tail: [u8; 4],
}

impl EventBoundary {
    fn new() -> Self {
        Self { tail: *b"\n\n\n\n" }
    }

    fn sent(&mut self, data: &[u8]) {
        if data.len() >= 4 {
            self.tail.copy_from_slice(&data[data.len() - 4..]);
        } else {
            self.tail.rotate_left(data.len());
            self.tail[4 - data.len()..].copy_from_slice(data);
        }
    }

    fn is_between_events(&self) -> bool {
        // An event ends with two line ends in a row (LF, CRLF or CR).
        self.tail.ends_with(b"\n\n") || self.tail.ends_with(b"\r\r") || self.tail == *b"\r\n\r\n"
    }
}

/// Whether a `content-type` value is `text/event-stream` (any case, any parameters).
pub fn is_event_stream(content_type: &[u8]) -> bool {
    const NAME: &[u8] = b"text/event-stream";
    content_type.len() >= NAME.len()
        && content_type[..NAME.len()].eq_ignore_ascii_case(NAME)
        && content_type[NAME.len()..]
            .first()
            .is_none_or(|&next| next == b';' || next == b' ' || next == b'\t')
}

impl ProxyBody {
    pub fn new(
        inner: Incoming,
        idle_timeout: Duration,
        inflight: InflightGuard,
        log: RequestLog,
    ) -> Self {
        let now = Instant::now();
        Self {
            inner,
            events: None,
            ended_with_error_event: false,
            idle_timeout,
            idle: None,
            last_frame: now,
            first_frame_seen: false,
            _inflight: inflight,
            log,
            prefetched: None,
        }
    }

    /// End a failure of this body with an SSE error event instead of cutting it (the body is
    /// a server-sent event stream whose length the engine did not announce).
    pub fn with_error_events(mut self) -> Self {
        self.events = Some(EventBoundary::new());
        self
    }

    /// The start of the body, already read from the engine (to look at an error answer before
    /// deciding to pass it on): sent first.
    pub fn with_read(mut self, read: Bytes) -> Self {
        if !read.is_empty() {
            self.prefetched = Some(Frame::data(read));
        }
        self
    }

    fn count_error(&self, kind: &'static str) {
        let model = self
            .log
            .model
            .as_ref()
            .map_or(UNKNOWN_MODEL, |model| model.model.as_str());
        self.log.metrics.count_upstream_error(model, kind);
    }

    /// The body failed: cut it, or end a server-sent event stream with an error event.
    fn fail(&mut self, error: BodyError) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let Some(events) = self.events else {
            return Poll::Ready(Some(Err(error)));
        };
        let (code, message) = describe(&error);
        let model = self
            .log
            .model
            .as_ref()
            .map_or(UNKNOWN_MODEL, |model| model.model.as_str());
        self.log.metrics.count_stream_error_event(model, code);
        self.ended_with_error_event = true;
        let event = stream_error_event(code, &message, !events.is_between_events());
        Poll::Ready(Some(Ok(Frame::data(event))))
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        if this.ended_with_error_event {
            return Poll::Ready(None);
        }
        let polled = match this.prefetched.take() {
            Some(frame) => Poll::Ready(Some(Ok(frame))),
            None => Pin::new(&mut this.inner).poll_frame(cx),
        };
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                this.last_frame = Instant::now();
                if !this.first_frame_seen {
                    this.first_frame_seen = true;
                    if let Some(model) = &this.log.model {
                        let elapsed = this.last_frame.saturating_duration_since(this.log.started);
                        model.time_to_first_byte.observe(elapsed.as_secs_f64());
                    }
                }
                if let (Some(events), Some(data)) = (&mut this.events, frame.data_ref()) {
                    events.sent(data);
                }
                // A body with a content-length ends with its last byte: hyper does not poll
                // again for the end.
                if this.inner.is_end_stream() && this.log.outcome == Outcome::Pending {
                    this.log.outcome = Outcome::Complete;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => {
                this.log.outcome = Outcome::UpstreamError;
                this.log.error = Some("upstream_body");
                this.count_error("body");
                this.fail(BodyError::Upstream(error))
            }
            Poll::Ready(None) => {
                if this.log.outcome == Outcome::Pending {
                    this.log.outcome = Outcome::Complete;
                }
                Poll::Ready(None)
            }
            Poll::Pending => loop {
                let deadline = this.last_frame + this.idle_timeout;
                let idle = this
                    .idle
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                match idle.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(()) => {
                        let deadline = this.last_frame + this.idle_timeout;
                        if Instant::now() >= deadline {
                            this.log.outcome = Outcome::UpstreamError;
                            this.log.error = Some("idle_timeout");
                            this.count_error("idle_timeout");
                            return this.fail(BodyError::Idle(this.idle_timeout));
                        }
                        idle.as_mut().reset(deadline);
                    }
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended_with_error_event || (self.prefetched.is_none() && self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        let pending = self
            .prefetched
            .as_ref()
            .and_then(Frame::data_ref)
            .map_or(0, |data| data.len() as u64);
        let inner = self.inner.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(inner.lower() + pending);
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper + pending);
        }
        hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_event_is_one_data_line_in_the_openai_envelope() {
        let event = stream_error_event("upstream_error", "it \"broke\"\nbadly", false);
        let text = std::str::from_utf8(&event).unwrap();
        let json = text
            .strip_prefix("data: ")
            .and_then(|rest| rest.strip_suffix("\n\n"))
            .expect("one event");
        assert!(!json.contains('\n'), "{text}");
        let value: serde_json::Value = serde_json::from_str(json).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"error": {
                "message": "it \"broke\"\nbadly",
                "type": "server_error",
                "param": null,
                "code": "upstream_error",
            }})
        );
        let separated = stream_error_event("upstream_error", "m", true);
        assert!(separated.starts_with(b"\n\ndata: {"));
    }

    #[test]
    fn event_boundaries_across_frames_of_any_size() {
        let cases: [(&[&[u8]], bool); 9] = [
            (&[], true),
            (&[b"data: 1\n\n"], true),
            (&[b"data: 1\n", b"\n"], true),
            (&[b"data: 1\r\n\r\n"], true),
            (&[b"data: 1\r", b"\n", b"\r", b"\n"], true),
            (&[b"data: 1\r\r"], true),
            (&[b"data: 1\n"], false),
            (&[b"data: 1\n\n", b"data: 2"], false),
            (&[b"data: 1\n\n", b"d", b"a"], false),
        ];
        for (frames, between) in cases {
            let mut boundary = EventBoundary::new();
            for frame in frames {
                boundary.sent(frame);
            }
            assert_eq!(boundary.is_between_events(), between, "{frames:?}");
        }
    }

    #[test]
    fn event_stream_content_types() {
        for yes in [
            &b"text/event-stream"[..],
            b"Text/Event-Stream; charset=utf-8",
            b"text/event-stream;charset=utf-8",
        ] {
            assert!(is_event_stream(yes), "{yes:?}");
        }
        for no in [
            &b"application/json"[..],
            b"text/event-streams",
            b"text/event",
            b"",
        ] {
            assert!(!is_event_stream(no), "{no:?}");
        }
    }
}
