//! Property tests of the parsers the gateway keeps as its own, against serde_json as the
//! reference reading of the same bytes:
//!
//! - [`model_of`]: the `model` of a request body (a hand-written scan for the usual body, serde_json
//!   for the rest) never panics, and answers what serde_json reads, for generated bodies (model
//!   present, absent, null, not a string, escaped, nested objects with their own `"model"`), for
//!   edits of them and for byte soup.
//! - [`SseUsage`]: the usage, the choice count and the bytes passed on are the same however the
//!   stream is cut into reads, and match what the stream's events say.
//! - [`is_stream`] and [`prepare_request`]: only a top-level `"stream": true` counts; the injected
//!   `stream_options.include_usage` changes nothing else in the body.
//!
//! Cases are few enough for a debug build to finish in a few seconds; set `PROPTEST_CASES` to
//! run more.

// Test code: a panic with the failing value is the report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::VecDeque;

use bytes::Bytes;
use kinfer_gateway::hold::stream::is_stream;
use kinfer_gateway::request::model_of;
use kinfer_gateway::usage::{prepare_request, usage_of_json, Accounting, SseUsage, Usage};
use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::{Map, Value};

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        // PROPTEST_CASES, when set, wins (`ProptestConfig::default` reads it).
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|cases| cases.parse().ok())
            .unwrap_or(cases),
        // A failure prints its smallest case; no regression files in the tree.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------------------------
// JSON documents

/// Strings that matter to the scanners (member names, quotes, escapes, blanks) and any other.
fn json_string() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-zA-Z0-9/._:-]{0,12}",
        3 => any::<String>(),
        1 => Just("model".to_string()),
        1 => Just("stream".to_string()),
        1 => Just(r#""model":"x""#.to_string()),
        1 => Just(" \t".to_string()),
        1 => Just("\\\"\u{0}\u{1f}\u{7f}é😀".to_string()),
    ]
}

/// Member names, often ones the gateway looks for, so nested objects carry them too.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => Just("model".to_string()),
        1 => Just("stream".to_string()),
        1 => Just("stream_options".to_string()),
        1 => Just("usage".to_string()),
        1 => Just("choices".to_string()),
        4 => json_string(),
    ]
}

/// Numbers that survive a parse-print-parse round trip exactly (serde_json's default float
/// parsing may be off by one unit in the last place for arbitrary decimals).
fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        prop::sample::select(vec![0.5, -0.0, 1.25e3, -3.5e-3, 1e300, 6.02e23])
            .prop_map(Value::from),
    ]
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        number(),
        json_string().prop_map(Value::String),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(4, 24, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((key(), inner), 0..6)
                .prop_map(|members| Value::Object(members.into_iter().collect())),
        ]
    })
}

/// A top-level object whose `name` member is `member` (absent when `None`), with other members
/// (nested ones may have their own `name`).
fn object_with(name: &'static str, member: BoxedStrategy<Option<Value>>) -> BoxedStrategy<Value> {
    (prop::collection::vec((key(), json_value()), 0..6), member)
        .prop_map(move |(members, member)| {
            let mut object: Map<String, Value> = members.into_iter().collect();
            object.remove(name);
            if let Some(member) = member {
                object.insert(name.to_string(), member);
            }
            Value::Object(object)
        })
        .boxed()
}

/// How a document is written: all of these are the same JSON value.
#[derive(Clone, Copy, Debug)]
struct Style {
    pretty: bool,
    /// Every non-ASCII character as `\uXXXX` (astral ones as surrogate pairs).
    ascii: bool,
    /// `model` and `stream` spelled with a `\u0065` escape wherever they occur (member names
    /// included: `"mod\u0065l"` is the member `model`).
    escaped_names: bool,
}

fn style() -> impl Strategy<Value = Style> {
    (any::<bool>(), any::<bool>(), prop::bool::weighted(0.2)).prop_map(
        |(pretty, ascii, escaped_names)| Style {
            pretty,
            ascii,
            escaped_names,
        },
    )
}

fn render(value: &Value, style: Style) -> Vec<u8> {
    let mut text = if style.pretty {
        serde_json::to_string_pretty(value).unwrap()
    } else {
        serde_json::to_string(value).unwrap()
    };
    if style.ascii {
        // Outside strings JSON is ASCII, so every non-ASCII character is inside a string.
        let mut escaped = String::with_capacity(text.len());
        for character in text.chars() {
            if character.is_ascii() {
                escaped.push(character);
            } else {
                for unit in character.encode_utf16(&mut [0; 2]) {
                    escaped.push_str(&format!("\\u{unit:04x}"));
                }
            }
        }
        text = escaped;
    }
    if style.escaped_names {
        // Neither word can be part of an escape (`m`, `s`, `t` are no hex digits), so the
        // replacement keeps every string's value.
        text = text
            .replace("model", "mod\\u0065l")
            .replace("stream", "str\\u0065am");
    }
    text.into_bytes()
}

// ---------------------------------------------------------------------------------------------
// model_of

/// What the gateway answers for a body: the model, or the error's metric label.
fn gateway_model(body: &[u8]) -> String {
    match model_of(body) {
        Ok(model) => format!("ok:{model}"),
        Err(error) => error.metric_label().to_string(),
    }
}

/// serde_json's reading of the same body, in the same terms.
fn serde_model(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Fields {
        #[serde(default)]
        model: Option<String>,
    }
    let error_label = |error: serde_json::Error| {
        if error.is_data() {
            "invalid_body".to_string()
        } else {
            "invalid_json".to_string()
        }
    };
    // A derived struct would also read an array as its fields in order; a request is an object,
    // and serde_json refuses an array where it wants one at its first byte.
    let first = body
        .iter()
        .find(|byte| !matches!(byte, b' ' | b'\t' | b'\n' | b'\r'));
    if first == Some(&b'[') {
        return "invalid_body".to_string();
    }
    match serde_json::from_slice::<Fields>(body) {
        Ok(Fields { model: Some(model) }) if !model.trim().is_empty() => format!("ok:{model}"),
        Ok(_) => "missing_model".to_string(),
        Err(error) => error_label(error),
    }
}

/// The answer the generated document calls for: only the top-level member counts.
fn expected_model(document: &Value) -> String {
    let Value::Object(object) = document else {
        return "invalid_body".to_string();
    };
    match object.get("model") {
        None | Some(Value::Null) => "missing_model".to_string(),
        Some(Value::String(model)) if model.trim().is_empty() => "missing_model".to_string(),
        Some(Value::String(model)) => format!("ok:{model}"),
        Some(_) => "invalid_body".to_string(),
    }
}

fn request_document() -> impl Strategy<Value = Value> {
    let model = prop_oneof![
        1 => Just(None),
        6 => json_string().prop_map(|model| Some(Value::String(model))),
        1 => leaf().prop_map(Some),
        1 => json_value().prop_map(Some),
    ]
    .boxed();
    prop_oneof![
        8 => object_with("model", model),
        // Arrays, strings, numbers at the top.
        1 => json_value(),
    ]
}

/// Bytes from JSON's own tokens, so byte soup often gets deep into the grammar.
fn json_token_soup() -> impl Strategy<Value = Vec<u8>> {
    let tokens: Vec<&'static [u8]> = vec![
        b"{",
        b"}",
        b"[",
        b"]",
        b":",
        b",",
        b" ",
        b"\n",
        b"\"model\"",
        b"\"stream\"",
        b"\"m\"",
        b"\"\"",
        b"\" \"",
        b"\"a\\\"b\"",
        b"\"\\u00e9\"",
        b"\"\\ud83d\\ude00\"",
        b"\"\\ud800\"",
        b"\"mod\\u0065l\"",
        b"0",
        b"-1.5e+3",
        b"01",
        b"1.",
        b"true",
        b"null",
        b"fals",
        b"\"",
        b"\\",
        b"\x00",
        b"\x1f",
        b"\xc3\xa9",
        b"\xff",
        b"\t",
    ];
    prop::collection::vec(prop::sample::select(tokens), 0..40).prop_map(|tokens| tokens.concat())
}

/// One edit of a body: replace, insert or delete a byte.
#[derive(Clone, Debug)]
enum Edit {
    Replace(Index, u8),
    Insert(Index, u8),
    Delete(Index),
}

fn edits() -> impl Strategy<Value = Vec<Edit>> {
    let byte = prop::sample::select(
        b"{}[]\":,\\/ 0123456789-+.eEtrufalsn\x00\x1f\x7f\xc3\xa9\xff".to_vec(),
    );
    let edit = prop_oneof![
        (any::<Index>(), byte.clone()).prop_map(|(at, byte)| Edit::Replace(at, byte)),
        (any::<Index>(), byte).prop_map(|(at, byte)| Edit::Insert(at, byte)),
        any::<Index>().prop_map(Edit::Delete),
    ];
    prop::collection::vec(edit, 1..4)
}

fn apply(body: &mut Vec<u8>, edits: &[Edit]) {
    for edit in edits {
        match edit {
            Edit::Replace(at, byte) if !body.is_empty() => {
                let at = at.index(body.len());
                body[at] = *byte;
            }
            Edit::Insert(at, byte) => body.insert(at.index(body.len() + 1), *byte),
            Edit::Delete(at) if !body.is_empty() => {
                body.remove(at.index(body.len()));
            }
            _ => {}
        }
    }
}

proptest! {
    #![proptest_config(config(2000))]

    #[test]
    fn model_of_never_panics_on_bytes(body in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = model_of(&body);
        let _ = is_stream(&body);
        let _ = usage_of_json(&body);
    }

    #[test]
    fn model_of_agrees_with_serde_on_token_soup(body in json_token_soup()) {
        prop_assert_eq!(gateway_model(&body), serde_model(&body), "{:?}", String::from_utf8_lossy(&body));
    }
}

proptest! {
    #![proptest_config(config(400))]

    #[test]
    fn model_of_reads_the_top_level_model(document in request_document(), style in style()) {
        let body = render(&document, style);
        let answer = gateway_model(&body);
        prop_assert_eq!(&answer, &expected_model(&document), "{}", String::from_utf8_lossy(&body));
        prop_assert_eq!(&answer, &serde_model(&body));
    }

    #[test]
    fn model_of_agrees_with_serde_on_edited_bodies(
        document in request_document(),
        style in style(),
        edits in edits(),
        cut in any::<Index>(),
    ) {
        let mut body = render(&document, style);
        apply(&mut body, &edits);
        prop_assert_eq!(gateway_model(&body), serde_model(&body), "{:?}", String::from_utf8_lossy(&body));
        // A body cut short (a client that sent less than it announced).
        let prefix = &body[..cut.index(body.len() + 1)];
        prop_assert_eq!(gateway_model(prefix), serde_model(prefix));
    }
}

// ---------------------------------------------------------------------------------------------
// is_stream, prepare_request

fn stream_member() -> BoxedStrategy<Option<Value>> {
    prop_oneof![
        1 => Just(None),
        3 => Just(Some(Value::Bool(true))),
        1 => Just(Some(Value::Bool(false))),
        1 => leaf().prop_map(Some),
    ]
    .boxed()
}

fn stream_options_member() -> BoxedStrategy<Option<Value>> {
    let include_usage = prop_oneof![
        Just(None),
        any::<bool>().prop_map(|include| Some(Value::Bool(include))),
        leaf().prop_map(Some),
    ];
    let options = (
        include_usage,
        prop::option::of(any::<bool>()),
        prop::collection::vec((json_string(), leaf()), 0..3),
    )
        .prop_map(|(include_usage, continuous, others)| {
            let mut options: Map<String, Value> = others.into_iter().collect();
            options.remove("include_usage");
            options.remove("continuous_usage_stats");
            if let Some(include_usage) = include_usage {
                options.insert("include_usage".into(), include_usage);
            }
            if let Some(continuous) = continuous {
                options.insert("continuous_usage_stats".into(), Value::Bool(continuous));
            }
            Value::Object(options)
        });
    prop_oneof![
        2 => Just(None),
        1 => Just(Some(Value::Null)),
        3 => options.prop_map(Some),
        1 => leaf().prop_map(Some),
    ]
    .boxed()
}

/// A request document with a chosen `stream` and `stream_options`.
fn stream_request() -> impl Strategy<Value = Value> {
    (
        object_with("stream", stream_member()),
        stream_options_member(),
    )
        .prop_map(|(mut document, options)| {
            if let Value::Object(object) = &mut document {
                object.remove("stream_options");
                if let Some(options) = options {
                    object.insert("stream_options".into(), options);
                }
            }
            document
        })
}

proptest! {
    #![proptest_config(config(400))]

    #[test]
    fn only_a_top_level_true_stream_is_a_stream(document in stream_request(), style in style()) {
        let body = render(&document, style);
        prop_assert_eq!(is_stream(&body), document["stream"] == Value::Bool(true));
    }

    /// A streaming request that did not ask for usage gets `include_usage: true` (and loses
    /// `continuous_usage_stats`, which would change every chunk) and nothing else; any other
    /// request is forwarded byte for byte.
    #[test]
    fn prepare_request_adds_include_usage_and_nothing_else(document in stream_request(), style in style()) {
        let body = Bytes::from(render(&document, style));
        let (prepared, accounting) = prepare_request(body.clone());
        let object = document.as_object().unwrap();
        if object.get("stream") != Some(&Value::Bool(true)) {
            prop_assert_eq!(accounting, Accounting::Json);
            prop_assert_eq!(prepared, body);
            return Ok(());
        }
        let asks_for_usage = match object.get("stream_options") {
            None | Some(Value::Null) => false,
            Some(Value::Object(options)) => options.get("include_usage") != Some(&Value::Bool(false)),
            // vLLM rejects it: there is no usage to ask for.
            Some(_) => true,
        };
        if asks_for_usage {
            prop_assert_eq!(accounting, Accounting::Stream { strip: false });
            prop_assert_eq!(prepared, body);
            return Ok(());
        }
        prop_assert_eq!(accounting, Accounting::Stream { strip: true });
        // Read as an engine reads it: with serde_json, the last of duplicate members wins.
        let sent: Value = serde_json::from_slice(&prepared).unwrap();
        let mut expected = object.clone();
        let mut options = match expected.remove("stream_options") {
            Some(Value::Object(options)) => options,
            _ => Map::new(),
        };
        options.insert("include_usage".into(), Value::Bool(true));
        options.remove("continuous_usage_stats");
        expected.insert("stream_options".into(), Value::Object(options));
        prop_assert_eq!(sent, Value::Object(expected), "{}", String::from_utf8_lossy(&prepared));
    }
}

// ---------------------------------------------------------------------------------------------
// SseUsage

/// Feeds `input` in reads cut at `cuts`; what the client gets, the usage, the choice events.
fn scan(strip: bool, input: &[u8], cuts: &[Index]) -> (Vec<u8>, Option<Usage>, u64) {
    let mut cuts: Vec<usize> = cuts.iter().map(|cut| cut.index(input.len() + 1)).collect();
    cuts.sort_unstable();
    let mut scanner = SseUsage::new(strip);
    let mut out = VecDeque::new();
    let mut start = 0;
    for cut in cuts.into_iter().chain(std::iter::once(input.len())) {
        scanner.push(Bytes::copy_from_slice(&input[start..cut]), &mut out);
        start = cut;
    }
    scanner.finish(&mut out);
    let passed: Vec<u8> = out.into_iter().flatten().collect();
    (passed, scanner.usage(), scanner.choice_events())
}

#[derive(Clone, Debug)]
enum Event {
    /// A chunk with one choice.
    Choice(String),
    /// A chunk with a choice and the usage so far (`continuous_usage_stats`).
    ChoiceWithUsage(String, Usage),
    /// The final chunk: no choice, the usage.
    FinalUsage(Usage),
    Done,
    /// An SSE comment (the gateway's own keep-alive is one).
    Comment,
    /// A `data:` line that is not JSON.
    Text(String),
}

fn usage() -> impl Strategy<Value = Usage> {
    (
        any::<u32>(),
        prop::option::of(any::<u32>()),
        prop::option::of(any::<u32>()),
    )
        .prop_map(|(prompt, completion, total)| Usage {
            prompt_tokens: u64::from(prompt),
            completion_tokens: completion.map(u64::from),
            total_tokens: total.map(u64::from),
        })
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        6 => json_string().prop_map(Event::Choice),
        1 => (json_string(), usage()).prop_map(|(text, usage)| Event::ChoiceWithUsage(text, usage)),
        1 => usage().prop_map(Event::FinalUsage),
        1 => Just(Event::Done),
        1 => Just(Event::Comment),
        1 => "[a-zA-Z \"{}:]{0,20}".prop_map(|text| Event::Text(format!("x{text}"))),
    ]
}

fn usage_json(usage: &Usage) -> Value {
    let mut object = Map::new();
    object.insert("prompt_tokens".into(), usage.prompt_tokens.into());
    if let Some(completion) = usage.completion_tokens {
        object.insert("completion_tokens".into(), completion.into());
    }
    if let Some(total) = usage.total_tokens {
        object.insert("total_tokens".into(), total.into());
    }
    Value::Object(object)
}

/// The event as an engine writes it (`data: ` or `data:`, then one line, then a blank line).
fn event_bytes(event: &Event, space: bool) -> Vec<u8> {
    let choice = |text: &str| serde_json::json!([{"index": 0, "delta": {"content": text}, "finish_reason": null}]);
    let data = match event {
        Event::Choice(text) => serde_json::json!({
            "id": "chatcmpl-1", "object": "chat.completion.chunk", "choices": choice(text),
        })
        .to_string(),
        Event::ChoiceWithUsage(text, usage) => serde_json::json!({
            "id": "chatcmpl-1", "choices": choice(text), "usage": usage_json(usage),
        })
        .to_string(),
        Event::FinalUsage(usage) => serde_json::json!({
            "id": "chatcmpl-1", "object": "chat.completion.chunk", "choices": [],
            "usage": usage_json(usage),
        })
        .to_string(),
        Event::Done => "[DONE]".to_string(),
        Event::Comment => return b": keep-alive\n\n".to_vec(),
        Event::Text(text) => text.clone(),
    };
    let prefix = if space { "data: " } else { "data:" };
    format!("{prefix}{data}\n\n").into_bytes()
}

/// Bytes in SSE's and the chunks' vocabulary, for streams that are not well formed.
fn sse_token_soup() -> impl Strategy<Value = Vec<u8>> {
    let tokens: Vec<&'static [u8]> = vec![
        b"data: ",
        b"data:",
        b"\n",
        b"\n\n",
        b"\r\n",
        b": ping",
        b"{",
        b"}",
        b"[",
        b"]",
        b"\"usage\":",
        b"\"choices\":",
        b"[]",
        b",",
        b"{\"prompt_tokens\":3,\"total_tokens\":5}",
        b"\"x\"",
        b"[DONE]",
        b"\xff",
        b" ",
    ];
    prop::collection::vec(prop::sample::select(tokens), 0..60).prop_map(|tokens| tokens.concat())
}

proptest! {
    #![proptest_config(config(600))]

    #[test]
    fn sse_scan_is_the_same_however_the_stream_is_cut(
        input in prop_oneof![sse_token_soup(), prop::collection::vec(any::<u8>(), 0..200)],
        cuts in prop::collection::vec(any::<Index>(), 0..10),
        strip in any::<bool>(),
    ) {
        let whole = scan(strip, &input, &[]);
        let cut = scan(strip, &input, &cuts);
        prop_assert_eq!(&whole, &cut);
        if !strip {
            prop_assert_eq!(&whole.0, &input);
        }
    }

    #[test]
    fn sse_scan_reads_what_the_events_say(
        events in prop::collection::vec((event(), any::<bool>()), 0..12),
        cuts in prop::collection::vec(any::<Index>(), 0..10),
        strip in any::<bool>(),
    ) {
        let input: Vec<u8> = events.iter().flat_map(|(event, space)| event_bytes(event, *space)).collect();
        let expected_passed: Vec<u8> = events
            .iter()
            .filter(|(event, _)| !(strip && matches!(event, Event::FinalUsage(_))))
            .flat_map(|(event, space)| event_bytes(event, *space))
            .collect();
        let expected_usage = events.iter().rev().find_map(|(event, _)| match event {
            Event::ChoiceWithUsage(_, usage) | Event::FinalUsage(usage) => Some(*usage),
            _ => None,
        });
        let expected_choices = events
            .iter()
            .filter(|(event, _)| matches!(event, Event::Choice(_) | Event::ChoiceWithUsage(..)))
            .count() as u64;
        let (passed, usage, choices) = scan(strip, &input, &cuts);
        prop_assert_eq!(
            String::from_utf8_lossy(&passed),
            String::from_utf8_lossy(&expected_passed)
        );
        prop_assert_eq!(usage, expected_usage);
        prop_assert_eq!(choices, expected_choices);
    }
}
