//! Token accounting from the engine's `usage`, for keys with a tokens-per-minute limit.
//!
//! - Non-streaming responses: `usage` is read from the JSON body (copied aside while it passes
//!   through, up to [`MAX_JSON_BYTES`]).
//! - Streams: the engine sends usage only in a final chunk (`"choices":[]`) when the request
//!   asks for it. When the client did not, [`prepare_request`] injects
//!   `stream_options.include_usage` (the one place the gateway changes a request body) and
//!   [`SseUsage`] removes that extra chunk from what the client receives, so its stream is
//!   byte-identical to the one it would have got. A client that asked for usage gets it
//!   untouched.
//!
//! - A response that ends, or is dropped (client gone, engine failure), before its `usage` was
//!   read is charged [`Usage::estimate`] instead: without it, a client could stream a long
//!   completion, hang up just before the usage chunk, and pay nothing.
//!
//! Only requests of keys with token limits come here: the pass-through path is not touched.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Body as AxumBody;
use bytes::{Bytes, BytesMut};
use hyper::body::{Body, Frame, SizeHint};
use serde::Deserialize;
use serde_json::{Map, Value};

/// Largest non-streaming body copied aside to read `usage` (larger: not counted).
pub const MAX_JSON_BYTES: usize = 8 << 20;
/// Largest SSE event held back while looking for its end (larger: passed on as it is).
const MAX_EVENT_BYTES: usize = 1 << 20;
/// Request body bytes per prompt token in [`Usage::estimate`]: a common rough ratio for English
/// text with BPE tokenizers. The body also holds JSON syntax and field names, so the estimate
/// is high, which is the safe side for a limit.
const BYTES_PER_TOKEN: usize = 4;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct Usage {
    #[serde(default)]
    pub prompt_tokens: u64,
    #[serde(default)]
    pub completion_tokens: Option<u64>,
    #[serde(default)]
    pub total_tokens: Option<u64>,
}

impl Usage {
    /// Prompt plus completion tokens.
    pub fn tokens(&self) -> u64 {
        self.total_tokens.unwrap_or_else(|| {
            self.prompt_tokens
                .saturating_add(self.completion_tokens.unwrap_or(0))
        })
    }

    /// A stand-in for the usage of a response that ended or was cut before the engine's
    /// `usage` was read: prompt tokens from the request body's length, one completion token
    /// per choice event the stream carried (vLLM sends about one token per event; 0 for a
    /// non-streaming response).
    pub fn estimate(request_bytes: usize, choice_events: u64) -> Self {
        let prompt_tokens =
            u64::try_from(request_bytes.div_ceil(BYTES_PER_TOKEN)).unwrap_or(u64::MAX);
        Self {
            prompt_tokens,
            completion_tokens: Some(choice_events),
            total_tokens: Some(prompt_tokens.saturating_add(choice_events)),
        }
    }
}

/// Where the tokens charged for a response come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Charged {
    /// The engine's `usage`.
    Reported,
    /// [`Usage::estimate`]: the response ended or was dropped without `usage`.
    Estimated,
}

/// Charges a response's tokens to its key, once, when [`AccountedBody`] ends or is dropped.
pub struct Charger {
    /// Length of the request body the client sent, for [`Usage::estimate`].
    pub request_bytes: usize,
    pub charge: Box<dyn FnOnce(Usage, Charged) + Send>,
}

/// How the response of a request is accounted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accounting {
    /// `usage` from the JSON body.
    Json,
    /// `usage` from the stream's chunks; `strip`: remove the usage chunk the gateway asked for.
    Stream { strip: bool },
}

#[derive(Deserialize)]
struct StreamFields {
    #[serde(default)]
    stream: Option<bool>,
    /// `Some(Value::Null)` for `"stream_options": null`, `None` when the member is absent (as
    /// serde reads member names, escapes included).
    #[serde(default, deserialize_with = "present")]
    stream_options: Option<Value>,
}

fn present<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(deserializer).map(Some)
}

/// Decide how to account the request, and add `stream_options.include_usage` to a streaming
/// request that does not ask for usage. vLLM sends usage whenever `stream_options` is present
/// and `include_usage` is not false (its default is true there), so only a request without
/// `stream_options`, or with `include_usage: false`, is changed.
pub fn prepare_request(body: Bytes) -> (Bytes, Accounting) {
    let Ok(fields) = serde_json::from_slice::<StreamFields>(&body) else {
        return (body, Accounting::Json);
    };
    if fields.stream != Some(true) {
        return (body, Accounting::Json);
    }
    match fields.stream_options {
        None => match inject_without_stream_options(&body) {
            Some(changed) => (changed, Accounting::Stream { strip: true }),
            None => (body, Accounting::Stream { strip: false }),
        },
        // A member added in front would lose to the null one: most parsers keep the last.
        Some(Value::Null) => match rewrite_stream_options(&body) {
            Some(changed) => (changed, Accounting::Stream { strip: true }),
            None => (body, Accounting::Stream { strip: false }),
        },
        Some(Value::Object(options)) => {
            if options.get("include_usage") != Some(&Value::Bool(false)) {
                return (body, Accounting::Stream { strip: false });
            }
            match rewrite_stream_options(&body) {
                Some(changed) => (changed, Accounting::Stream { strip: true }),
                None => (body, Accounting::Stream { strip: false }),
            }
        }
        // The engine rejects it; nothing to count.
        Some(_) => (body, Accounting::Stream { strip: false }),
    }
}

/// `{` + `"stream_options":{"include_usage":true},` + the rest, for a body without a
/// `stream_options` member: no re-serialization of the (possibly large) prompt.
fn inject_without_stream_options(body: &[u8]) -> Option<Bytes> {
    let open = body.iter().position(|byte| !byte.is_ascii_whitespace())?;
    if body[open] != b'{' {
        return None;
    }
    let rest = &body[open + 1..];
    let empty = rest
        .iter()
        .find(|byte| !byte.is_ascii_whitespace())
        .is_some_and(|byte| *byte == b'}');
    let member: &[u8] = if empty {
        br#""stream_options":{"include_usage":true}"#
    } else {
        br#""stream_options":{"include_usage":true},"#
    };
    let mut out = BytesMut::with_capacity(body.len() + member.len());
    out.extend_from_slice(&body[..=open]);
    out.extend_from_slice(member);
    out.extend_from_slice(rest);
    Some(out.freeze())
}

/// Set `include_usage: true` in a parsed copy. `continuous_usage_stats` is dropped: without
/// `include_usage` it had no effect, with it every chunk would change.
fn rewrite_stream_options(body: &[u8]) -> Option<Bytes> {
    let mut object: Map<String, Value> = serde_json::from_slice(body).ok()?;
    let mut options = match object.remove("stream_options") {
        Some(Value::Object(options)) => options,
        _ => Map::new(),
    };
    options.insert("include_usage".into(), Value::Bool(true));
    options.remove("continuous_usage_stats");
    object.insert("stream_options".into(), Value::Object(options));
    serde_json::to_vec(&object).ok().map(Bytes::from)
}

#[derive(Deserialize)]
struct UsageOnly {
    #[serde(default)]
    usage: Option<Usage>,
}

#[derive(Deserialize)]
struct Chunk {
    #[serde(default)]
    choices: Option<Vec<serde::de::IgnoredAny>>,
    #[serde(default)]
    usage: Option<Usage>,
}

/// Reads `usage` out of an SSE stream (`data: {json}\n\n` events), counts the events that
/// carry a choice (for [`Usage::estimate`]), and removes the final usage chunk when `strip`.
/// Bytes are handed on event by event: an event split across reads is held
/// until its end (a client cannot use half an event anyway), so the output is the input minus
/// the stripped event, however the input was cut.
#[derive(Debug)]
pub struct SseUsage {
    strip: bool,
    pending: BytesMut,
    usage: Option<Usage>,
    choice_events: u64,
}

/// The end of an SSE event; the searcher is built once.
static EVENT_END: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\n\n"));

impl SseUsage {
    pub fn new(strip: bool) -> Self {
        Self {
            strip,
            pending: BytesMut::new(),
            usage: None,
            choice_events: 0,
        }
    }

    pub fn usage(&self) -> Option<Usage> {
        self.usage
    }

    /// Complete `data:` events seen so far that carry a choice (all but the final usage chunk).
    pub fn choice_events(&self) -> u64 {
        self.choice_events
    }

    /// Feed one chunk of the body; what the client gets is pushed to `out`.
    pub fn push(&mut self, data: Bytes, out: &mut VecDeque<Bytes>) {
        let work = if self.pending.is_empty() {
            data
        } else {
            self.pending.extend_from_slice(&data);
            self.pending.split().freeze()
        };
        let mut emit_from = 0;
        let mut event_start = 0;
        for boundary in EVENT_END.find_iter(&work) {
            let event_end = boundary + 2;
            if event_end <= event_start {
                continue;
            }
            let event = &work[event_start..event_end];
            if self.inspect(event) && self.strip {
                if event_start > emit_from {
                    out.push_back(work.slice(emit_from..event_start));
                }
                emit_from = event_end;
            }
            event_start = event_end;
        }
        if event_start > emit_from {
            out.push_back(work.slice(emit_from..event_start));
        }
        let tail = &work[event_start..];
        if tail.len() > MAX_EVENT_BYTES {
            out.push_back(work.slice(event_start..));
        } else if !tail.is_empty() {
            self.pending.extend_from_slice(tail);
        }
    }

    /// The end of the body: whatever is held goes out as it is.
    pub fn finish(&mut self, out: &mut VecDeque<Bytes>) {
        if !self.pending.is_empty() {
            out.push_back(self.pending.split().freeze());
        }
    }

    /// Record the usage an event carries, and count it if it carries a choice; true if it is
    /// the final usage chunk.
    fn inspect(&mut self, event: &[u8]) -> bool {
        let Some(json) = event
            .strip_prefix(b"data:")
            .map(|rest| rest.trim_ascii())
            .filter(|json| json.starts_with(b"{"))
        else {
            return false;
        };
        let final_usage =
            memchr::memmem::find(json, b"\"usage\"").is_some() && self.read_usage(json);
        if !final_usage && memchr::memmem::find(json, b"\"choices\"").is_some() {
            self.choice_events += 1;
        }
        final_usage
    }

    /// Record the usage of a chunk that has one; true if it is the final usage chunk.
    fn read_usage(&mut self, json: &[u8]) -> bool {
        let Ok(chunk) = serde_json::from_slice::<Chunk>(json) else {
            return false;
        };
        if let Some(usage) = chunk.usage {
            self.usage = Some(usage);
            return chunk.choices.is_some_and(|choices| choices.is_empty());
        }
        false
    }
}

/// The usage of a whole JSON response body.
pub fn usage_of_json(body: &[u8]) -> Option<Usage> {
    serde_json::from_slice::<UsageOnly>(body).ok()?.usage
}

enum Reader {
    Json(Option<BytesMut>),
    Stream(SseUsage),
}

/// The response body with the usage read on the way (and the stream's extra usage chunk
/// removed), charging `charger` once: the engine's usage when it was read, else, when the body
/// ends or is dropped first, [`Usage::estimate`]. `attached` (limit slots) lives as long as the
/// body: until the client has the whole response or goes away.
pub struct AccountedBody<T> {
    inner: AxumBody,
    reader: Option<Reader>,
    out: VecDeque<Bytes>,
    done: bool,
    charger: Option<Charger>,
    _attached: T,
}

impl<T: Send + Unpin + 'static> AccountedBody<T> {
    /// `accounting: None` only holds `attached`.
    pub fn new(
        inner: AxumBody,
        accounting: Option<Accounting>,
        charger: Option<Charger>,
        attached: T,
    ) -> Self {
        let reader = accounting.map(|accounting| match accounting {
            Accounting::Json => Reader::Json(Some(BytesMut::new())),
            Accounting::Stream { strip } => Reader::Stream(SseUsage::new(strip)),
        });
        Self {
            inner,
            reader,
            out: VecDeque::new(),
            done: false,
            charger,
            _attached: attached,
        }
    }
}

impl<T> AccountedBody<T> {
    /// Charge the usage read, or the estimate; only the first call charges.
    fn charge(&mut self) {
        let Some(charger) = self.charger.take() else {
            return;
        };
        let (usage, choice_events) = match &self.reader {
            // A body cut before its end does not parse.
            Some(Reader::Json(Some(buffer))) => (usage_of_json(buffer), 0),
            Some(Reader::Stream(parser)) => (parser.usage(), parser.choice_events()),
            _ => (None, 0),
        };
        match usage {
            Some(usage) => (charger.charge)(usage, Charged::Reported),
            None => (charger.charge)(
                Usage::estimate(charger.request_bytes, choice_events),
                Charged::Estimated,
            ),
        }
    }
}

impl<T> Drop for AccountedBody<T> {
    fn drop(&mut self) {
        self.charge();
    }
}

impl<T: Send + Unpin + 'static> Body for AccountedBody<T> {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        loop {
            if let Some(data) = this.out.pop_front() {
                return Poll::Ready(Some(Ok(Frame::data(data))));
            }
            if this.done {
                return Poll::Ready(None);
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(error))) => return Poll::Ready(Some(Err(error))),
                Poll::Ready(Some(Ok(frame))) => {
                    let frame = match frame.into_data() {
                        Ok(data) => data,
                        Err(frame) => return Poll::Ready(Some(Ok(frame))),
                    };
                    match &mut this.reader {
                        None => return Poll::Ready(Some(Ok(Frame::data(frame)))),
                        Some(Reader::Json(buffer)) => {
                            if let Some(copy) = buffer {
                                if copy.len() + frame.len() > MAX_JSON_BYTES {
                                    *buffer = None;
                                } else {
                                    copy.extend_from_slice(&frame);
                                }
                            }
                            if Pin::new(&this.inner).is_end_stream() {
                                this.done = true;
                                this.charge();
                            }
                            return Poll::Ready(Some(Ok(Frame::data(frame))));
                        }
                        Some(Reader::Stream(parser)) => parser.push(frame, &mut this.out),
                    }
                }
                Poll::Ready(None) => {
                    if let Some(Reader::Stream(parser)) = &mut this.reader {
                        parser.finish(&mut this.out);
                    }
                    this.done = true;
                    this.charge();
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.out.is_empty() && (self.done || self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        match self.reader {
            // Stripping changes the length: no hint.
            Some(Reader::Stream(_)) => SizeHint::default(),
            _ => self.inner.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use http_body_util::BodyExt;

    const CHUNK: &str = "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"},\"logprobs\":null,\"finish_reason\":null}]}\n\n";
    const LAST: &str = "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"!\"},\"logprobs\":null,\"finish_reason\":\"length\",\"stop_reason\":null}]}\n\n";
    const USAGE: &str = "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"total_tokens\":14,\"completion_tokens\":2}}\n\n";
    const DONE: &str = "data: [DONE]\n\n";

    fn run(strip: bool, input: &[u8], cuts: &[usize]) -> (Vec<u8>, Option<Usage>) {
        let mut parser = SseUsage::new(strip);
        let mut out = VecDeque::new();
        let mut start = 0;
        for &cut in cuts.iter().chain(std::iter::once(&input.len())) {
            parser.push(Bytes::copy_from_slice(&input[start..cut]), &mut out);
            start = cut;
        }
        parser.finish(&mut out);
        (out.into_iter().flatten().collect(), parser.usage())
    }

    #[test]
    fn strips_the_usage_chunk_however_the_stream_is_cut() {
        let with_usage = format!("{CHUNK}{LAST}{USAGE}{DONE}");
        let without = format!("{CHUNK}{LAST}{DONE}");
        let expected_usage = Usage {
            prompt_tokens: 12,
            completion_tokens: Some(2),
            total_tokens: Some(14),
        };
        // Every single cut point, and every pair around the usage chunk.
        for cut in 0..=with_usage.len() {
            let (out, usage) = run(true, with_usage.as_bytes(), &[cut]);
            assert_eq!(String::from_utf8(out).unwrap(), without, "cut at {cut}");
            assert_eq!(usage, Some(expected_usage));
        }
        let usage_start = CHUNK.len() + LAST.len();
        for first in usage_start - 3..usage_start + USAGE.len() {
            for second in first..usage_start + USAGE.len() + 3 {
                let (out, _) = run(true, with_usage.as_bytes(), &[first, second]);
                assert_eq!(String::from_utf8(out).unwrap(), without);
            }
        }
        // Byte by byte.
        let cuts: Vec<usize> = (1..with_usage.len()).collect();
        let (out, usage) = run(true, with_usage.as_bytes(), &cuts);
        assert_eq!(String::from_utf8(out).unwrap(), without);
        assert_eq!(usage.unwrap().tokens(), 14);
    }

    #[test]
    fn a_client_that_asked_gets_usage_untouched() {
        let with_usage = format!("{CHUNK}{LAST}{USAGE}{DONE}");
        for cut in [0, 10, CHUNK.len() + LAST.len() + 40, with_usage.len()] {
            let (out, usage) = run(false, with_usage.as_bytes(), &[cut]);
            assert_eq!(out, with_usage.as_bytes());
            assert_eq!(usage.unwrap().prompt_tokens, 12);
        }
    }

    #[test]
    fn a_cut_stream_is_passed_on_as_it_is() {
        let cut_stream = format!("{CHUNK}data: {{\"id\":\"chatcm");
        let (out, usage) = run(true, cut_stream.as_bytes(), &[5]);
        assert_eq!(out, cut_stream.as_bytes());
        assert_eq!(usage, None);
    }

    #[test]
    fn injection_only_where_usage_was_not_asked_for() {
        let check = |body: &str| {
            let (changed, accounting) = prepare_request(Bytes::copy_from_slice(body.as_bytes()));
            let value: Value = serde_json::from_slice(&changed).unwrap();
            (value, accounting)
        };
        let (value, accounting) = check(r#"{"model":"m","stream":true,"messages":[]}"#);
        assert_eq!(accounting, Accounting::Stream { strip: true });
        assert_eq!(value["stream_options"]["include_usage"], true);
        assert_eq!(value["model"], "m");
        let (_, accounting) = check(r#"{"model":"m","stream":true,"stream_options":{}}"#);
        assert_eq!(accounting, Accounting::Stream { strip: false });
        let (_, accounting) =
            check(r#"{"model":"m","stream":true,"stream_options":{"include_usage":true}}"#);
        assert_eq!(accounting, Accounting::Stream { strip: false });
        let (value, accounting) = check(
            r#"{"model":"m","stream":true,"stream_options":{"include_usage":false,"continuous_usage_stats":true}}"#,
        );
        assert_eq!(accounting, Accounting::Stream { strip: true });
        assert_eq!(
            value["stream_options"],
            serde_json::json!({"include_usage": true})
        );
        let (value, accounting) = check(r#"{"model":"m","stream":true,"stream_options":null}"#);
        assert_eq!(accounting, Accounting::Stream { strip: true });
        assert_eq!(value["stream_options"]["include_usage"], true);
        // The same member with an escape in its name.
        let (value, accounting) =
            check(r#"{"model":"m","stream":true,"stream\u005foptions":null}"#);
        assert_eq!(accounting, Accounting::Stream { strip: true });
        assert_eq!(value["stream_options"]["include_usage"], true);
        // Non-streaming bodies are forwarded as they are.
        let body = Bytes::from_static(br#"{"model":"m","stream":false}"#);
        let (same, accounting) = prepare_request(body.clone());
        assert_eq!((same, accounting), (body, Accounting::Json));
    }

    #[test]
    fn json_usage() {
        let body = br#"{"id":"x","choices":[{"message":{"content":"usage"}}],"usage":{"prompt_tokens":5,"completion_tokens":3,"total_tokens":8}}"#;
        assert_eq!(usage_of_json(body).unwrap().tokens(), 8);
        assert_eq!(
            usage_of_json(br#"{"usage":{"prompt_tokens":5}}"#)
                .unwrap()
                .tokens(),
            5
        );
        assert_eq!(usage_of_json(b"not json"), None);
    }

    /// A charger that sends what it charges.
    fn test_charger(
        request_bytes: usize,
    ) -> (Charger, std::sync::mpsc::Receiver<(Usage, Charged)>) {
        let (sender, receiver) = std::sync::mpsc::channel();
        let charger = Charger {
            request_bytes,
            charge: Box::new(move |usage, charged| sender.send((usage, charged)).unwrap()),
        };
        (charger, receiver)
    }

    /// A body of these frames, then an engine that has not sent the rest yet.
    fn unfinished(frames: &[&str]) -> AxumBody {
        let frames: Vec<Result<Bytes, std::io::Error>> = frames
            .iter()
            .map(|frame| Ok(Bytes::copy_from_slice(frame.as_bytes())))
            .collect();
        AxumBody::from_stream(futures::stream::iter(frames).chain(futures::stream::pending()))
    }

    #[tokio::test]
    async fn body_reports_once_and_strips() {
        let stream = format!("{CHUNK}{LAST}{USAGE}{DONE}");
        let frames: Vec<Result<Bytes, std::io::Error>> = stream
            .as_bytes()
            .chunks(7)
            .map(|chunk| Ok(Bytes::copy_from_slice(chunk)))
            .collect();
        let inner = AxumBody::from_stream(futures::stream::iter(frames));
        let (charger, charged) = test_charger(100);
        let body = AccountedBody::new(
            inner,
            Some(Accounting::Stream { strip: true }),
            Some(charger),
            (),
        );
        let collected = body.collect().await.unwrap().to_bytes();
        assert_eq!(collected, format!("{CHUNK}{LAST}{DONE}").as_bytes());
        let (usage, source) = charged.try_recv().unwrap();
        assert_eq!((usage.tokens(), source), (14, Charged::Reported));
        assert!(charged.try_recv().is_err());
    }

    #[test]
    fn estimate_from_request_bytes_and_choice_events() {
        let usage = Usage::estimate(101, 7);
        assert_eq!(usage.prompt_tokens, 26);
        assert_eq!(usage.completion_tokens, Some(7));
        assert_eq!(usage.tokens(), 33);
        assert_eq!(Usage::estimate(0, 0).tokens(), 0);
        assert_eq!(Usage::estimate(4, 0).tokens(), 1);
        assert_eq!(Usage::estimate(usize::MAX, u64::MAX).tokens(), u64::MAX);
    }

    #[test]
    fn counts_choice_events_not_the_usage_chunk() {
        let completion = "data: {\"id\":\"cmpl-1\",\"object\":\"text_completion\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"text\":\" hi\",\"logprobs\":null,\"finish_reason\":null}]}\n\n";
        let stream = format!("{CHUNK}{CHUNK}{completion}{LAST}{USAGE}{DONE}");
        for strip in [true, false] {
            let mut parser = SseUsage::new(strip);
            let mut out = VecDeque::new();
            for piece in stream.as_bytes().chunks(5) {
                parser.push(Bytes::copy_from_slice(piece), &mut out);
            }
            assert_eq!(parser.choice_events(), 4);
        }
        // Half an event is not counted.
        let mut parser = SseUsage::new(true);
        parser.push(
            Bytes::from(format!("{CHUNK}{}", &CHUNK[..30])),
            &mut VecDeque::new(),
        );
        assert_eq!(parser.choice_events(), 1);
    }

    #[tokio::test]
    async fn a_stream_dropped_before_its_usage_is_charged_the_estimate_once() {
        let (charger, charged) = test_charger(100);
        let mut body = AccountedBody::new(
            unfinished(&[CHUNK, CHUNK, CHUNK]),
            Some(Accounting::Stream { strip: true }),
            Some(charger),
            (),
        );
        for _ in 0..3 {
            body.frame().await.unwrap().unwrap();
        }
        assert!(charged.try_recv().is_err(), "nothing charged while it runs");
        drop(body);
        let (usage, source) = charged.try_recv().unwrap();
        assert_eq!(source, Charged::Estimated);
        assert_eq!(usage, Usage::estimate(100, 3));
        assert_eq!(usage.tokens(), 25 + 3);
        assert!(charged.try_recv().is_err());
    }

    #[tokio::test]
    async fn a_stream_cut_by_the_engine_is_charged_the_estimate() {
        let frames: Vec<Result<Bytes, std::io::Error>> = vec![
            Ok(Bytes::from_static(CHUNK.as_bytes())),
            Err(std::io::Error::other("engine gone")),
        ];
        let (charger, charged) = test_charger(40);
        let body = AccountedBody::new(
            AxumBody::from_stream(futures::stream::iter(frames)),
            Some(Accounting::Stream { strip: false }),
            Some(charger),
            (),
        );
        assert!(body.collect().await.is_err());
        let (usage, source) = charged.try_recv().unwrap();
        assert_eq!((usage.tokens(), source), (10 + 1, Charged::Estimated));
        assert!(charged.try_recv().is_err());
    }

    #[tokio::test]
    async fn usage_read_then_dropped_charges_the_reported_usage_only() {
        let (charger, charged) = test_charger(100);
        let mut body = AccountedBody::new(
            unfinished(&[CHUNK, LAST, USAGE]),
            Some(Accounting::Stream { strip: false }),
            Some(charger),
            (),
        );
        for _ in 0..3 {
            body.frame().await.unwrap().unwrap();
        }
        // Gone before `[DONE]`.
        drop(body);
        let (usage, source) = charged.try_recv().unwrap();
        assert_eq!((usage.tokens(), source), (14, Charged::Reported));
        assert!(charged.try_recv().is_err());
    }

    #[tokio::test]
    async fn json_cut_before_its_end_is_charged_the_prompt_estimate() {
        let answer = br#"{"id":"x","choices":[],"usage":{"prompt_tokens":5,"completion_tokens":3,"total_tokens":8}}"#;
        let (charger, charged) = test_charger(100);
        let mut body = AccountedBody::new(
            unfinished(&[std::str::from_utf8(&answer[..20]).unwrap()]),
            Some(Accounting::Json),
            Some(charger),
            (),
        );
        body.frame().await.unwrap().unwrap();
        drop(body);
        let (usage, source) = charged.try_recv().unwrap();
        assert_eq!(
            (usage, source),
            (Usage::estimate(100, 0), Charged::Estimated)
        );

        let (charger, charged) = test_charger(100);
        let body = AccountedBody::new(
            AxumBody::from(&answer[..]),
            Some(Accounting::Json),
            Some(charger),
            (),
        );
        body.collect().await.unwrap();
        let (usage, source) = charged.try_recv().unwrap();
        assert_eq!((usage.tokens(), source), (8, Charged::Reported));
        assert!(charged.try_recv().is_err());
    }
}
