//! HTTP conformance and request smuggling: the gateway's server (hyper, [`serve`]) driven from
//! raw TCP with exact bytes, in front of an engine that records every request it reads off its
//! socket, so each case states what the client got *and* what reached the engine.
//!
//! What the gateway does (hyper's parser decides framing, the gateway's middleware `Host`, its
//! pipeline the errors of a body):
//! - Content-Length with Transfer-Encoding: chunked (either order, or CL.TE / TE.CL smuggling
//!   shapes): chunked wins and the connection closes after the answer, so nothing pipelined
//!   behind it is served.
//! - Content-Length is digits only (whitespace around them is fine): `+5`, `-1`, `5,5`, `1 5`,
//!   `0x10`, past u64, or two differing values: 400 and close. Identical duplicates are served.
//!   u64::MAX: 431 (hyper counts it as too large). A valid length over the body limit: 413 and
//!   close.
//! - Transfer-Encoding whose final coding is not chunked (`gzip`, `chunked, gzip`, `xchunked`,
//!   a second line `gzip`), or any on HTTP/1.0: 400 and close (hyper). `gzip, chunked`: 501
//!   `unsupported_transfer_coding` (the gateway; hyper would apply chunked only).
//! - Chunked framing is strict: a bare LF in a size line, a size past u64, data longer than its
//!   size: 400 `body_read_failed` and close.
//! - The head may end its lines in a bare LF (RFC 9112 2.2 allows it); a bare CR, obs-fold, a
//!   space before the colon, NUL in a value, HTTP/1.2: 400 and close.
//! - HTTP/1.1 without `Host` or with two: 400 `invalid_host` in the OpenAI error envelope, and
//!   the connection stays; HTTP/1.0 without `Host` is served (closed unless keep-alive).
//! - Header fields over 64 KiB: 431 `request_header_fields_too_large` (the gateway's exact
//!   limit); a head past hyper's buffer (~400 KB): 431 and close; more than 100 fields: 431
//!   and close.
//! - Trailers or chunk extensions over 16 KiB: 400 `body_read_failed` and close; a normal
//!   trailer and extension are dropped.
//! - Pipelined requests are answered in order.
//! - `Expect: 100-continue`: `100 Continue` before the body is sent; a request refused before
//!   its body is read gets its final answer without one.
//! - Whatever the client sent, a request that reaches the engine has exactly one Content-Length
//!   equal to its body, one `Host`, and no Transfer-Encoding, `Expect`, `Trailer`, `TE` or
//!   trailer fields.
//! - HTTP/2 with prior knowledge (h2c) and over TLS (ALPN h2): completions, streams with their
//!   usage chunk, the model list. ALPN http/1.1 or none: HTTP/1.1. A client that does not
//!   trust the CA, or asks for another name, fails the handshake. New certificate files are
//!   served by the next handshakes, without a restart.
//! - A head not whole within the header timeout (half a head, or one dribbled a byte at a time)
//!   and an idle keep-alive connection are closed without an answer. A client that stops
//!   reading a stream is cut after the send timeout, and the engine's connection is closed.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::{chunk, model, SSE_HEAD};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use kinfer_gateway::server::{serve, ServeConfig};
use kinfer_gateway::tls::{TlsAcceptor, TlsFiles};
use kinfer_gateway::{build_router, Gateway, GatewayConfig};
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

/// How long any one answer may take.
const DEADLINE: Duration = Duration::from_secs(3);
/// The one model, served by the recording engine.
const MODEL: &str = "m";

// ---------------------------------------------------------------------------------------------
// The table
// ---------------------------------------------------------------------------------------------

/// What became of the connection after the answers.
#[derive(Clone, Debug, PartialEq, Eq)]
enum After {
    /// A further request on it was answered.
    Open,
    /// It was closed (FIN or reset) with nothing more sent.
    Closed,
    /// Something else: an answer nobody asked for, a timeout, garbage.
    Other(String),
}

impl std::fmt::Display for After {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            After::Open => formatter.write_str("open"),
            After::Closed => formatter.write_str("closed"),
            After::Other(other) => formatter.write_str(other),
        }
    }
}

/// One row: bytes written in one go, and what must come of them.
struct Case {
    name: &'static str,
    send: Vec<u8>,
    /// Each answer in order, as `"<status>"` or `"<status> <error code>"` when the body is the
    /// OpenAI error envelope.
    answers: Vec<&'static str>,
    then: After,
    /// The bodies the engine received, in order.
    engine: Vec<String>,
    /// The `x-request-id` of each answer, when the case is about their order.
    ids: Vec<&'static str>,
}

fn case(
    name: &'static str,
    send: impl Into<Vec<u8>>,
    answers: &[&'static str],
    then: After,
    engine: &[&str],
) -> Case {
    Case {
        name,
        send: send.into(),
        answers: answers.to_vec(),
        then,
        engine: engine.iter().map(|body| body.to_string()).collect(),
        ids: Vec::new(),
    }
}

/// A chat completion request body whose message is `content` (each case's bodies differ, so
/// the engine's view tells them apart).
fn completion(content: &str) -> String {
    json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": 4,
    })
    .to_string()
}

/// `POST /v1/chat/completions` over HTTP/1.1 with `Host`, the `fields` (each line ending in
/// CRLF) and `body` as it is (framing is the fields' business).
fn post(fields: &str, body: &str) -> String {
    format!("POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\n{fields}\r\n{body}")
}

/// `post` with a correct Content-Length and the `fields`.
fn post_sized(fields: &str, body: &str) -> String {
    post(&format!("{fields}Content-Length: {}\r\n", body.len()), body)
}

/// `body` in the chunked coding, in two chunks, with the `trailer` fields (lines ending CRLF).
fn chunked_with(body: &str, trailer: &str) -> String {
    let (first, second) = body.split_at(body.len() / 2);
    format!(
        "{:x}\r\n{first}\r\n{:x}\r\n{second}\r\n0\r\n{trailer}\r\n",
        first.len(),
        second.len()
    )
}

fn chunked(body: &str) -> String {
    chunked_with(body, "")
}

/// The HTTP/1.1 framing table. Names say what is sent; the answers, connection state and
/// engine view are what the gateway does (hyper decides the framing; the gateway's own code
/// decides `Host` and the body errors).
fn cases() -> Vec<Case> {
    use After::{Closed, Open};
    let b = completion("plain");
    let b = b.as_str();
    let smuggled = post_sized("", &completion("smuggled"));
    let mut table = vec![
        case("Content-Length, exact", post_sized("", b), &["200"], Open, &[b]),
        case("Connection: close", post_sized("Connection: close\r\n", b), &["200"], Closed, &[b]),
        // RFC 9112 6.1: chunked wins over Content-Length, and the connection closes after.
        case(
            "Content-Length then Transfer-Encoding: chunked",
            post("Content-Length: 3\r\nTransfer-Encoding: chunked\r\n", &chunked(b)),
            &["200"],
            Closed,
            &[b],
        ),
        case(
            "Transfer-Encoding: chunked then Content-Length",
            post("Transfer-Encoding: chunked\r\nContent-Length: 3\r\n", &chunked(b)),
            &["200"],
            Closed,
            &[b],
        ),
        // CL.TE: a front that reads Content-Length forwards the chunked body and the request
        // after it as one body; a back end reading chunked would see a second request.
        {
            let body = format!("{}{smuggled}", chunked(b));
            case(
                "CL.TE: Content-Length covers a request after the chunked end",
                post(
                    &format!("Content-Length: {}\r\nTransfer-Encoding: chunked\r\n", body.len()),
                    &body,
                ),
                &["200"],
                Closed,
                &[b],
            )
        },
        // TE.CL: a front that reads Content-Length stops after 4 bytes; the chunk's data (a
        // request to a reader of Content-Length) is body here.
        case(
            "TE.CL: a chunk whose data is a request, Content-Length 4",
            post(
                "Transfer-Encoding: chunked\r\nContent-Length: 4\r\n",
                &format!("{:x}\r\n{smuggled}\r\n0\r\n\r\n", smuggled.len()),
            ),
            &["400 invalid_json"],
            Closed,
            &[],
        ),
        case(
            "Transfer-Encoding with a space before the colon, and Content-Length",
            post("Transfer-Encoding : chunked\r\nContent-Length: 3\r\n", &chunked(b)),
            &["400"],
            Closed,
            &[],
        ),
        case(
            "two differing Content-Lengths",
            post(&format!("Content-Length: {}\r\nContent-Length: 3\r\n", b.len()), b),
            &["400"],
            Closed,
            &[],
        ),
        case(
            "two identical Content-Lengths",
            post(&format!("Content-Length: {0}\r\nContent-Length: {0}\r\n", b.len()), b),
            &["200"],
            Open,
            &[b],
        ),
        case(
            "Content-Length: +N",
            post(&format!("Content-Length: +{}\r\n", b.len()), b),
            &["400"],
            Closed,
            &[],
        ),
        case(
            "Content-Length with whitespace around the digits (OWS)",
            post(&format!("Content-Length:   {}  \r\n", b.len()), b),
            &["200"],
            Open,
            &[b],
        ),
        case(
            "Content-Length with whitespace inside the digits",
            post(&format!("Content-Length: 1 {}\r\n", b.len()), b),
            &["400"],
            Closed,
            &[],
        ),
        case(
            "Content-Length: N,N (a list of one value)",
            post(&format!("Content-Length: {0},{0}\r\n", b.len()), b),
            &["400"],
            Closed,
            &[],
        ),
        case("Content-Length negative", post("Content-Length: -1\r\n", b), &["400"], Closed, &[]),
        case(
            "Content-Length: 0x10 (hex)",
            post("Content-Length: 0x10\r\n", b),
            &["400"],
            Closed,
            &[],
        ),
        case(
            "Content-Length past u64",
            post("Content-Length: 99999999999999999999999\r\n", b),
            &["400"],
            Closed,
            &[],
        ),
        case(
            "Content-Length u64::MAX",
            post("Content-Length: 18446744073709551615\r\n", b),
            &["431"],
            Closed,
            &[],
        ),
        case(
            "Content-Length 1 TB (valid, over the body limit)",
            post("Content-Length: 1000000000000\r\n", b),
            &["413 body_too_large"],
            Closed,
            &[],
        ),
        case(
            "Transfer-Encoding: gzip (not chunked)",
            post("Transfer-Encoding: gzip\r\n", b),
            &["400"],
            Closed,
            &[],
        ),
        case(
            "Transfer-Encoding: chunked, gzip (chunked not final)",
            post("Transfer-Encoding: chunked, gzip\r\n", &chunked(b)),
            &["400"],
            Closed,
            &[],
        ),
        case(
            "Transfer-Encoding: chunked then a second line gzip",
            post("Transfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n", &chunked(b)),
            &["400"],
            Closed,
            &[],
        ),
        case(
            "Transfer-Encoding: xchunked",
            post("Transfer-Encoding: xchunked\r\n", &chunked(b)),
            &["400"],
            Closed,
            &[],
        ),
        // hyper frames by the final chunked and ignores other codings; the gateway refuses
        // them (RFC 9112 6.1).
        case(
            "Transfer-Encoding: gzip, chunked",
            post("Transfer-Encoding: gzip, chunked\r\n", &chunked(b)),
            &["501 unsupported_transfer_coding"],
            Closed,
            &[],
        ),
        case(
            "Transfer-Encoding: Chunked (case-insensitive)",
            post("Transfer-Encoding: Chunked\r\n", &chunked(b)),
            &["200"],
            Open,
            &[b],
        ),
        case(
            "Transfer-Encoding: chunked on HTTP/1.0",
            format!(
                "POST /v1/chat/completions HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n{}",
                chunked(b)
            ),
            &["400"],
            Closed,
            &[],
        ),
        case(
            "chunk size lines ending in a bare LF",
            post(
                "Transfer-Encoding: chunked\r\n",
                &format!("{:x}\n{b}\n0\n\n", b.len()),
            ),
            &["400 body_read_failed"],
            Closed,
            &[],
        ),
        case(
            "chunk size past u64",
            post(
                "Transfer-Encoding: chunked\r\n",
                &format!("1{:x}\r\n{b}\r\n0\r\n\r\n", u64::MAX),
            ),
            &["400 body_read_failed"],
            Closed,
            &[],
        ),
        case(
            "chunk data longer than its size",
            post(
                "Transfer-Encoding: chunked\r\n",
                &format!("{:x}\r\n{b}xx\r\n0\r\n\r\n", b.len()),
            ),
            &["400 body_read_failed"],
            Closed,
            &[],
        ),
        // RFC 9112 2.2: a recipient MAY take a bare LF as a line terminator; hyper (httparse)
        // does in the head.
        case(
            "head lines ending in a bare LF",
            format!(
                "POST /v1/chat/completions HTTP/1.1\nHost: gateway\nContent-Length: {}\n\n{b}",
                b.len()
            ),
            &["200"],
            Open,
            &[b],
        ),
        case(
            "head line ending in a bare CR",
            format!(
                "POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\rContent-Length: {}\r\n\r\n{b}",
                b.len()
            ),
            &["400"],
            Closed,
            &[],
        ),
        case(
            "obs-fold (a field continued on the next line)",
            post_sized("X-Folded: a\r\n b\r\n", b),
            &["400"],
            Closed,
            &[],
        ),
        case(
            "obs-fold hiding Transfer-Encoding",
            post_sized("X-Folded: a\r\n Transfer-Encoding: chunked\r\n", b),
            &["400"],
            Closed,
            &[],
        ),
        case(
            "field name with a space before the colon",
            post_sized("X-Custom : 1\r\n", b),
            &["400"],
            Closed,
            &[],
        ),
        case(
            "control character (NUL) in a field value",
            post_sized("X-Custom: a\0b\r\n", b),
            &["400"],
            Closed,
            &[],
        ),
        case(
            "HTTP/1.2",
            format!(
                "POST /v1/chat/completions HTTP/1.2\r\nHost: gateway\r\nContent-Length: {}\r\n\r\n{b}",
                b.len()
            ),
            &["400"],
            Closed,
            &[],
        ),
        case(
            "HTTP/1.1 without Host",
            format!(
                "POST /v1/chat/completions HTTP/1.1\r\nContent-Length: {}\r\n\r\n{b}",
                b.len()
            ),
            &["400 invalid_host"],
            Open,
            &[],
        ),
        case(
            "two Host fields",
            post_sized("Host: other\r\n", b),
            &["400 invalid_host"],
            Open,
            &[],
        ),
        case(
            "HTTP/1.0 without Host",
            format!(
                "POST /v1/chat/completions HTTP/1.0\r\nContent-Length: {}\r\n\r\n{b}",
                b.len()
            ),
            &["200"],
            Closed,
            &[b],
        ),
        case(
            "HTTP/1.0 with Connection: keep-alive",
            format!(
                "POST /v1/chat/completions HTTP/1.0\r\nConnection: keep-alive\r\nContent-Length: {}\r\n\r\n{b}",
                b.len()
            ),
            &["200"],
            Open,
            &[b],
        ),
        // hyper's limit (max_buf_size, ~400 KB) is checked between reads, and a read may fill
        // a buffer grown past it; the gateway's own limit (64 KiB of fields) is exact.
        case(
            "head of 65 KiB (one field)",
            post_sized(&format!("X-Big: {}\r\n", "a".repeat(65 << 10)), b),
            &["431 request_header_fields_too_large"],
            Open,
            &[],
        ),
        case(
            "head of 60 KiB (one field)",
            post_sized(&format!("X-Big: {}\r\n", "a".repeat(60 << 10)), b),
            &["200"],
            Open,
            &[b],
        ),
        case(
            "head of 1 MiB (one field)",
            post_sized(&format!("X-Big: {}\r\n", "a".repeat(1 << 20)), b),
            &["431"],
            Closed,
            &[],
        ),
        case(
            "101 fields (hyper's limit is 100)",
            post_sized(&"X-Many: 1\r\n".repeat(99), b),
            &["431"],
            Closed,
            &[],
        ),
        case(
            "100 fields",
            post_sized(&"X-Many: 1\r\n".repeat(98), b),
            &["200"],
            Open,
            &[b],
        ),
        case(
            "trailer fields over 16 KiB",
            post(
                "Transfer-Encoding: chunked\r\n",
                &chunked_with(b, &format!("X-Flood: {}\r\n", "t".repeat(1000)).repeat(20)),
            ),
            &["400 body_read_failed"],
            Closed,
            &[],
        ),
        case(
            "chunk extensions over 16 KiB",
            post(
                "Transfer-Encoding: chunked\r\n",
                &format!("{:x}{}\r\n{b}\r\n0\r\n\r\n", b.len(), ";e=x".repeat(5000)),
            ),
            &["400 body_read_failed"],
            Closed,
            &[],
        ),
        case(
            "a chunk extension and a trailer field (neither forwarded)",
            post(
                "Transfer-Encoding: chunked\r\nTrailer: X-Checksum\r\n",
                &format!("{:x};name=value\r\n{b}\r\n0\r\nX-Checksum: 1\r\n\r\n", b.len()),
            ),
            &["200"],
            Open,
            &[b],
        ),
        case(
            "Expect: 100-continue with the body sent at once",
            post_sized("Expect: 100-continue\r\n", b),
            &["100", "200"],
            Open,
            &[b],
        ),
    ];
    let first = completion("first");
    let second = completion("second");
    let mut pipelined = case(
        "two requests in one write (pipelining)",
        post_sized("X-Request-Id: first\r\n", &first)
            + &post_sized("X-Request-Id: second\r\n", &second),
        &["200", "200"],
        Open,
        &[&first, &second],
    );
    pipelined.ids = vec!["first", "second"];
    table.push(pipelined);
    table.push(case(
        "a request pipelined behind one with Content-Length and Transfer-Encoding",
        post(
            "Content-Length: 3\r\nTransfer-Encoding: chunked\r\n",
            &chunked(&first),
        ) + &post_sized("", &second),
        &["200"],
        Closed,
        &[&first],
    ));
    table.push(case(
        "a request pipelined behind a refused one",
        post("Content-Length: 1\r\nContent-Length: 2\r\n", "xx") + &post_sized("", &second),
        &["400"],
        Closed,
        &[],
    ));
    table.push(case(
        "a request pipelined behind one without Host",
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nContent-Length: {}\r\n\r\n{first}",
            first.len()
        ) + &post_sized("", &second),
        &["400 invalid_host", "200"],
        Open,
        &[&second],
    ));
    table
}

/// What a case produced.
#[derive(Debug, PartialEq, Eq)]
struct Observed {
    answers: Vec<String>,
    then: After,
    engine: Vec<String>,
    ids: Vec<String>,
}

impl Observed {
    fn expected(case: &Case) -> Self {
        Self {
            answers: case
                .answers
                .iter()
                .map(|answer| answer.to_string())
                .collect(),
            then: case.then.clone(),
            engine: case.engine.clone(),
            ids: case.ids.iter().map(|id| id.to_string()).collect(),
        }
    }
}

/// Run one case against a gateway and an engine of its own: what it produced, and what went
/// wrong besides (forwarding faults, reading stopped short).
async fn run(case: &Case) -> (Observed, Vec<String>) {
    let engine = Engine::start(Answering::Completion).await;
    let gateway = start_gateway(&engine.addr, ServeConfig::default()).await;
    let mut client = Client::connect(gateway).await;
    let (answers, stopped) = client.exchange(&case.send, case.answers.len()).await;
    let then = client.after().await;
    let received = engine.received();
    let mut faults: Vec<String> = stopped
        .map(|end| format!("reading answers stopped: {end:?}"))
        .into_iter()
        .collect();
    for request in &received {
        faults.extend(forwarding_faults(request));
    }
    let observed = Observed {
        answers: answers.iter().map(Message::answer).collect(),
        then,
        engine: received
            .iter()
            .map(|request| String::from_utf8_lossy(&request.body).into_owned())
            .collect(),
        ids: if case.ids.is_empty() {
            Vec::new()
        } else {
            answers
                .iter()
                .map(|answer| answer.header("x-request-id").unwrap_or("none").to_string())
                .collect()
        },
    };
    (observed, faults)
}

/// What must hold of every request the gateway forwards, whatever the client sent: one
/// Content-Length equal to the body, one Host, and none of the fields of the client's hop.
fn forwarding_faults(request: &Message) -> Vec<String> {
    let mut faults = Vec::new();
    let lengths = request.values("content-length");
    if lengths != [request.body.len().to_string().as_str()] {
        faults.push(format!(
            "Content-Length {lengths:?} for a body of {} bytes",
            request.body.len()
        ));
    }
    if request.chunked {
        faults.push("the body came chunked".to_string());
    }
    // `x-checksum`: the trailer field of the trailer case.
    for name in ["transfer-encoding", "expect", "trailer", "te", "x-checksum"] {
        if !request.values(name).is_empty() {
            faults.push(format!("the engine got `{name}`"));
        }
    }
    if request.values("host").len() != 1 {
        faults.push(format!("Host {:?}", request.values("host")));
    }
    if !request.trailers.is_empty() {
        faults.push(format!("trailers {:?}", request.trailers));
    }
    faults
}

#[tokio::test]
async fn http1_framing_table() {
    let mut failures = Vec::new();
    let mut report = String::from("| case | answers | then | engine saw |\n|---|---|---|---|\n");
    for case in cases() {
        let (observed, faults) = tokio::time::timeout(Duration::from_secs(10), run(&case))
            .await
            .unwrap_or_else(|_| panic!("case {:?} did not finish", case.name));
        report.push_str(&format!(
            "| {} | {} | {} | {} request(s) |\n",
            case.name,
            observed.answers.join(", "),
            observed.then,
            observed.engine.len()
        ));
        let expected = Observed::expected(&case);
        if observed != expected || !faults.is_empty() {
            failures.push(format!(
                "case {:?}:\n  expected {expected:?}\n  observed {observed:?}\n  faults {faults:?}",
                case.name
            ));
        }
    }
    println!("{report}");
    assert!(
        failures.is_empty(),
        "{} case(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// Multi-step HTTP/1.1: Expect, timeouts
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn expect_100_continue_comes_before_the_body_is_sent() {
    let engine = Engine::start(Answering::Completion).await;
    let gateway = start_gateway(&engine.addr, ServeConfig::default()).await;
    let body = completion("expect");
    let mut client = Client::connect(gateway).await;
    client
        .send(
            format!(
                "POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        )
        .await;
    let interim = client.response().await.unwrap();
    assert_eq!(interim.status(), 100, "{interim:?}");
    assert!(engine.received().is_empty());
    client.send(body.as_bytes()).await;
    let answer = client.response().await.unwrap();
    assert_eq!(answer.status(), 200, "{answer:?}");
    let received = engine.received();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].body, body.as_bytes());
    assert_eq!(forwarding_faults(&received[0]), Vec::<String>::new());

    // Refused before the body is read (no Host): the final answer, and no 100.
    let mut client = Client::connect(gateway).await;
    client
        .send(
            format!(
                "POST /v1/chat/completions HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        )
        .await;
    let answer = client.response().await.unwrap();
    assert_eq!(answer.answer(), "400 invalid_host");
    assert_eq!(engine.received().len(), 1);
}

#[tokio::test]
async fn a_head_that_does_not_arrive_within_the_header_timeout_is_closed() {
    let header_timeout = Duration::from_millis(300);
    let engine = Engine::start(Answering::Completion).await;
    let config = ServeConfig {
        header_timeout,
        ..ServeConfig::default()
    };
    let gateway = start_gateway(&engine.addr, config).await;

    // Half a head, then nothing.
    let started = Instant::now();
    let mut client = Client::connect(gateway).await;
    client
        .send(b"POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\n")
        .await;
    let ended = client.response().await;
    let took = started.elapsed();
    assert!(
        matches!(ended, Err(End::Closed | End::Reset(_))),
        "{ended:?}"
    );
    let margin = Duration::from_millis(1500);
    assert!(
        took >= header_timeout && took < header_timeout + margin,
        "{took:?}"
    );

    // A head dribbled a byte at a time: the timeout is for the whole head, not between reads.
    let started = Instant::now();
    let mut client = Client::connect(gateway).await;
    let head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n";
    let mut pace = tokio::time::interval(Duration::from_millis(20));
    let ended = 'dribble: {
        for byte in head {
            tokio::select! {
                _ = pace.tick() => {}
                ended = client.response() => break 'dribble ended,
            }
            if client.writer.write_all(&[*byte]).await.is_err() {
                break 'dribble client.response().await;
            }
        }
        client.response().await
    };
    let took = started.elapsed();
    assert!(
        matches!(ended, Err(End::Closed | End::Reset(_))),
        "{ended:?}"
    );
    assert!(took < header_timeout + margin, "{took:?}");

    // A keep-alive connection idle for the header timeout after its answer.
    let mut client = Client::connect(gateway).await;
    let (answers, _) = client
        .exchange(post_sized("", &completion("idle")).as_bytes(), 1)
        .await;
    assert_eq!(answers[0].status(), 200);
    let idle = Instant::now();
    let ended = client.response().await;
    assert!(
        matches!(ended, Err(End::Closed | End::Reset(_))),
        "{ended:?}"
    );
    assert!(idle.elapsed() < header_timeout + margin);
    assert_eq!(engine.received().len(), 1);
}

#[tokio::test]
async fn a_client_that_stops_reading_a_stream_is_cut_and_so_is_the_engine() {
    let mut engine = Engine::start(Answering::Endless).await;
    let config = ServeConfig {
        send_timeout: Duration::from_millis(300),
        ..ServeConfig::default()
    };
    let gateway = start_gateway(&engine.addr, config).await;
    // A small receive buffer, so the gateway's writes block soon.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(gateway).await.unwrap();
    let mut client = Client::from(stream);
    let body =
        json!({"model": MODEL, "messages": [{"role": "user", "content": "long"}], "stream": true})
            .to_string();
    client.send(post_sized("", &body).as_bytes()).await;
    // The client reads nothing until the engine's connection is gone.
    tokio::time::timeout(Duration::from_secs(4), engine.closed.recv())
        .await
        .expect("the engine's connection is closed within the send timeout and some")
        .unwrap();
    assert_eq!(engine.received().len(), 1);
    // What was buffered, then the end (not a clean end of the chunked body).
    let mut rest = Vec::new();
    let ended = tokio::time::timeout(DEADLINE, async {
        let mut buffer = [0_u8; 65536];
        loop {
            match client.wire.io.read(&mut buffer).await {
                Ok(0) => return "closed".to_string(),
                Ok(read) => rest.extend_from_slice(&buffer[..read]),
                Err(error) => return format!("{:?}", error.kind()),
            }
        }
    })
    .await
    .expect("the client's connection is closed");
    assert!(rest.starts_with(b"HTTP/1.1 200 OK"), "{ended}");
    assert!(!rest.ends_with(b"0\r\n\r\n"), "the stream ended cleanly");
}

// ---------------------------------------------------------------------------------------------
// HTTP/2 with prior knowledge, and TLS
// ---------------------------------------------------------------------------------------------

type Sender2 = hyper::client::conn::http2::SendRequest<Full<Bytes>>;
type Sender1 = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn http2<IO>(io: IO) -> Sender2
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
            .await
            .unwrap();
    tokio::spawn(connection);
    sender
}

async fn http1<IO>(io: IO) -> Sender1
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .unwrap();
    tokio::spawn(connection);
    sender
}

/// A request to `authority` (`http://127.0.0.1:port`): HTTP/2 takes the absolute URI's
/// authority, HTTP/1.1 the `Host` field.
fn request(
    method: &str,
    authority: &str,
    path: &str,
    body: Option<Value>,
) -> http::Request<Full<Bytes>> {
    let host = authority.split("://").nth(1).unwrap().to_string();
    let builder = http::Request::builder()
        .method(method)
        .uri(format!("{authority}{path}"))
        .header("host", host);
    match body {
        Some(body) => builder
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string()))),
        None => builder.body(Full::new(Bytes::new())),
    }
    .unwrap()
}

/// Status, content type and whole body.
async fn answer_of(response: http::Response<hyper::body::Incoming>) -> (u16, String, String) {
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .map_or(String::new(), |value| value.to_str().unwrap().to_string());
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        content_type,
        String::from_utf8(body.to_vec()).unwrap(),
    )
}

fn chat(stream: bool) -> Value {
    let mut body = json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": "Say hello"}],
        "max_tokens": 4,
        "stream": stream,
    });
    if stream {
        body["stream_options"] = json!({"include_usage": true});
    }
    body
}

/// Completions (whole and streamed) and the model list over an HTTP/2 connection.
async fn exercise_http2(mut sender: Sender2, authority: &str, engine: &Engine) {
    let before = engine.received().len();
    let response = sender
        .send_request(request(
            "POST",
            authority,
            "/v1/chat/completions",
            Some(chat(false)),
        ))
        .await
        .unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    let (status, _, body) = answer_of(response).await;
    assert_eq!(status, 200, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["object"], "chat.completion");

    let response = sender
        .send_request(request(
            "POST",
            authority,
            "/v1/chat/completions",
            Some(chat(true)),
        ))
        .await
        .unwrap();
    let (status, content_type, text) = answer_of(response).await;
    assert_eq!(status, 200, "{text}");
    assert!(
        content_type.starts_with("text/event-stream"),
        "{content_type}"
    );
    let events: Vec<&str> = text
        .split("\n\n")
        .filter(|event| !event.is_empty())
        .collect();
    assert_eq!(events.last(), Some(&"data: [DONE]"), "{text}");
    let usage = events
        .iter()
        .filter_map(|event| event.strip_prefix("data: "))
        .filter_map(|data| serde_json::from_str::<Value>(data).ok())
        .find(|chunk| chunk["usage"].is_object())
        .unwrap_or_else(|| panic!("no usage chunk in {text}"));
    assert_eq!(usage["usage"]["total_tokens"], 4);
    assert!(events.len() >= 4, "{text}");

    let response = sender
        .send_request(request("GET", authority, "/v1/models", None))
        .await
        .unwrap();
    let (status, _, body) = answer_of(response).await;
    assert_eq!(status, 200, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["data"][0]["id"], MODEL);

    // HTTP/2 to the gateway, HTTP/1.1 with a Content-Length to the engine.
    let received = engine.received();
    assert_eq!(received.len(), before + 2);
    for request in &received[before..] {
        assert!(request.start.ends_with("HTTP/1.1"), "{}", request.start);
        assert_eq!(forwarding_faults(request), Vec::<String>::new());
    }
}

#[tokio::test]
async fn h2c_with_prior_knowledge() {
    let engine = Engine::start(Answering::Completion).await;
    let gateway = start_gateway(&engine.addr, ServeConfig::default()).await;
    let stream = TcpStream::connect(gateway).await.unwrap();
    exercise_http2(http2(stream).await, &format!("http://{gateway}"), &engine).await;
}

/// A test certificate authority.
struct TestCa {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    der: CertificateDer<'static>,
}

impl TestCa {
    fn new(name: &str) -> Self {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        let certificate = params.self_signed(&key).unwrap();
        Self {
            der: certificate.der().clone(),
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// A new leaf for localhost and 127.0.0.1 (with a new key) written to `files`; its DER.
    fn write_leaf(&self, files: &TlsFiles) -> CertificateDer<'static> {
        use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, KeyPair};
        let mut params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().unwrap();
        let certificate = params.signed_by(&key, &self.issuer).unwrap();
        // Each file replaced whole (a rename), as the kubelet swaps a Secret's files.
        for (path, text) in [
            (&files.key, key.serialize_pem()),
            (&files.cert, certificate.pem()),
        ] {
            let partial = path.with_extension("partial");
            std::fs::write(&partial, text).unwrap();
            std::fs::rename(&partial, path).unwrap();
        }
        certificate.der().clone()
    }
}

/// A TLS client trusting `roots`, offering `alpn`.
fn tls_client(roots: &[&CertificateDer<'static>], alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
    let mut store = rustls::RootCertStore::empty();
    for root in roots {
        store.add((*root).clone()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(store)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|protocol| protocol.to_vec()).collect();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

async fn tls_connect(
    client: &tokio_rustls::TlsConnector,
    addr: SocketAddr,
    name: &'static str,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    client
        .connect(ServerName::try_from(name).unwrap(), tcp)
        .await
}

/// A gateway serving TLS with a leaf of `ca` (files reread every 100 ms).
async fn start_tls_gateway(
    ca: &TestCa,
    engine: &Engine,
) -> (
    SocketAddr,
    TlsFiles,
    CertificateDer<'static>,
    tempfile::TempDir,
) {
    let directory = tempfile::tempdir().unwrap();
    let files = TlsFiles {
        cert: directory.path().join("tls.crt"),
        key: directory.path().join("tls.key"),
    };
    let leaf = ca.write_leaf(&files);
    let tls = TlsAcceptor::start(files.clone(), Duration::from_millis(100)).unwrap();
    let config = ServeConfig {
        tls: Some(tls),
        ..ServeConfig::default()
    };
    let addr = start_gateway(&engine.addr, config).await;
    (addr, files, leaf, directory)
}

/// Why the client refused the server's certificate, if it did.
fn certificate_error(error: &std::io::Error) -> Option<&rustls::CertificateError> {
    match error.get_ref()?.downcast_ref::<rustls::Error>()? {
        rustls::Error::InvalidCertificate(reason) => Some(reason),
        _ => None,
    }
}

fn peer_certificate(
    stream: &tokio_rustls::client::TlsStream<TcpStream>,
) -> CertificateDer<'static> {
    stream.get_ref().1.peer_certificates().unwrap()[0]
        .clone()
        .into_owned()
}

#[tokio::test]
async fn tls_with_alpn_h2_http1_and_none() {
    let engine = Engine::start(Answering::Completion).await;
    let ca = TestCa::new("kinfer test CA");
    let (gateway, _files, leaf, _directory) = start_tls_gateway(&ca, &engine).await;
    let authority = format!("https://localhost:{}", gateway.port());

    // ALPN h2 and http/1.1: h2.
    let client = tls_client(&[&ca.der], &[b"h2", b"http/1.1"]);
    let stream = tls_connect(&client, gateway, "localhost").await.unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    assert_eq!(peer_certificate(&stream), leaf);
    exercise_http2(http2(stream).await, &authority, &engine).await;

    // The certificate names the address too.
    let stream = tls_connect(&client, gateway, "127.0.0.1").await.unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));

    // ALPN http/1.1 only, and no ALPN: HTTP/1.1.
    for (alpn, negotiated) in [
        (&[&b"http/1.1"[..]][..], Some(&b"http/1.1"[..])),
        (&[][..], None),
    ] {
        let client = tls_client(&[&ca.der], alpn);
        let stream = tls_connect(&client, gateway, "localhost").await.unwrap();
        assert_eq!(
            stream.get_ref().1.alpn_protocol(),
            negotiated,
            "ALPN {alpn:?}"
        );
        let mut sender = http1(stream).await;
        let response = sender
            .send_request(request(
                "POST",
                &authority,
                "/v1/chat/completions",
                Some(chat(false)),
            ))
            .await
            .unwrap();
        assert_eq!(response.version(), http::Version::HTTP_11);
        let (status, _, body) = answer_of(response).await;
        assert_eq!(status, 200, "ALPN {alpn:?}: {body}");
    }
    for request in engine.received() {
        assert_eq!(forwarding_faults(&request), Vec::<String>::new());
    }

    // A client that does not trust the CA.
    let stranger = TestCa::new("another CA");
    let client = tls_client(&[&stranger.der], &[b"h2", b"http/1.1"]);
    let error = tls_connect(&client, gateway, "localhost")
        .await
        .expect_err("an untrusted certificate");
    assert!(
        matches!(
            certificate_error(&error),
            Some(rustls::CertificateError::UnknownIssuer)
        ),
        "{error}"
    );
    // A name the certificate does not hold.
    let client = tls_client(&[&ca.der], &[b"h2"]);
    let error = tls_connect(&client, gateway, "elsewhere.test")
        .await
        .expect_err("a wrong name");
    assert!(
        matches!(
            certificate_error(&error),
            Some(rustls::CertificateError::NotValidForNameContext { .. })
        ),
        "{error}"
    );
}

#[tokio::test]
async fn a_renewed_certificate_is_served_without_a_restart() {
    let engine = Engine::start(Answering::Completion).await;
    let ca = TestCa::new("kinfer test CA");
    let (gateway, files, first, _directory) = start_tls_gateway(&ca, &engine).await;
    let client = tls_client(&[&ca.der], &[b"h2"]);
    let stream = tls_connect(&client, gateway, "localhost").await.unwrap();
    assert_eq!(peer_certificate(&stream), first);

    let second = ca.write_leaf(&files);
    assert_ne!(first, second);
    let deadline = Instant::now() + Duration::from_secs(3);
    let stream = loop {
        let stream = tls_connect(&client, gateway, "localhost").await.unwrap();
        if peer_certificate(&stream) == second {
            break stream;
        }
        assert_eq!(peer_certificate(&stream), first, "neither certificate");
        assert!(
            Instant::now() < deadline,
            "the new certificate is not served after 3s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut sender = http2(stream).await;
    let authority = format!("https://localhost:{}", gateway.port());
    let response = sender
        .send_request(request("GET", &authority, "/v1/models", None))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

// ---------------------------------------------------------------------------------------------
// The gateway, the recording engine, and a raw HTTP/1.1 reader
// ---------------------------------------------------------------------------------------------

/// The API as the binary serves it, with the one model on `engine`.
async fn start_gateway(engine: &str, config: ServeConfig) -> SocketAddr {
    let state = Gateway::new(GatewayConfig::default());
    state
        .index
        .publish(vec![model(MODEL, &[engine.to_string()])]);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve(
        listener,
        build_router(state),
        config,
        std::future::pending(),
    ));
    addr
}

#[derive(Clone, Copy)]
enum Answering {
    /// A fixed chat completion; a stream of chunks ending with usage and `[DONE]` when the
    /// request asks for a stream.
    Completion,
    /// An event stream that never ends, until the connection does.
    Endless,
}

/// An engine on 127.0.0.1:0 that keeps every request as it came off the socket.
struct Engine {
    addr: String,
    received: Arc<Mutex<Vec<Message>>>,
    /// One message per connection the engine saw end.
    closed: tokio::sync::mpsc::UnboundedReceiver<()>,
}

impl Engine {
    async fn start(answering: Answering) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let received = Arc::new(Mutex::new(Vec::new()));
        let (closed, closed_receiver) = tokio::sync::mpsc::unbounded_channel();
        let log = received.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let log = log.clone();
                let closed = closed.clone();
                tokio::spawn(async move {
                    engine_connection(stream, log, answering).await;
                    let _ = closed.send(());
                });
            }
        });
        Self {
            addr,
            received,
            closed: closed_receiver,
        }
    }

    fn received(&self) -> Vec<Message> {
        self.received.lock().unwrap().clone()
    }
}

const COMPLETION: &str = r#"{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"hello"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}"#;

fn stream_events() -> Vec<u8> {
    let delta = |delta: Value, finish: Value| {
        json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": MODEL,
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    };
    let mut events = vec![
        delta(json!({"role": "assistant"}), Value::Null),
        delta(json!({"content": "hello"}), Value::Null),
        delta(json!({}), json!("stop")),
        json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": MODEL,
               "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}),
    ]
    .into_iter()
    .map(|event| format!("data: {event}\n\n"))
    .collect::<Vec<_>>();
    events.push("data: [DONE]\n\n".to_string());
    let mut answer = SSE_HEAD.to_vec();
    for event in events {
        answer.extend(chunk(&event));
    }
    answer.extend_from_slice(b"0\r\n\r\n");
    answer
}

async fn engine_connection(stream: TcpStream, log: Arc<Mutex<Vec<Message>>>, answering: Answering) {
    let mut client = Client::from(stream);
    while let Ok(request) = client.wire.read_message(Framing::Request, None).await {
        let streaming =
            serde_json::from_slice::<Value>(&request.body).is_ok_and(|body| body["stream"] == true);
        log.lock().unwrap().push(request);
        let answer = match answering {
            Answering::Endless => return endless(&mut client).await,
            Answering::Completion if streaming => stream_events(),
            Answering::Completion => format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{COMPLETION}",
                COMPLETION.len()
            )
            .into_bytes(),
        };
        if client.writer.write_all(&answer).await.is_err() {
            return;
        }
    }
}

/// Stream events until the gateway closes the connection (a read sees its end) or a write
/// fails.
async fn endless(client: &mut Client) {
    if client.writer.write_all(SSE_HEAD).await.is_err() {
        return;
    }
    let event = chunk(&format!(
        "data: {}\n\n",
        json!({"choices": [{"delta": {"content": "x".repeat(16 << 10)}}]})
    ));
    let mut byte = [0_u8; 1];
    loop {
        tokio::select! {
            written = client.writer.write_all(&event) => if written.is_err() { return },
            _ = client.wire.io.read(&mut byte) => return,
        }
    }
}

/// How a message's body is delimited.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// Content-Length, chunked, or none.
    Request,
    /// Also none for 1xx, 204 and 304; to the connection's end without a length.
    Response,
}

/// One HTTP/1 message as read off a socket.
#[derive(Clone, Debug)]
struct Message {
    /// The request or status line.
    start: String,
    /// Names in lower case, values trimmed, in order.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    chunked: bool,
    trailers: Vec<(String, String)>,
}

impl Message {
    fn values(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(field, _)| field == name)
            .map(|(_, value)| value.as_str())
            .collect()
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.values(name).first().copied()
    }

    fn status(&self) -> u16 {
        self.start
            .split(' ')
            .nth(1)
            .and_then(|status| status.parse().ok())
            .unwrap_or(0)
    }

    /// As the table writes it: the status, and the error envelope's code if there is one.
    fn answer(&self) -> String {
        let code = serde_json::from_slice::<Value>(&self.body)
            .ok()
            .and_then(|body| body["error"]["code"].as_str().map(str::to_string));
        match code {
            Some(code) => format!("{} {code}", self.status()),
            None => self.status().to_string(),
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

/// One message from the start of `buffer` and the bytes it took; `None` while incomplete.
/// `eof`: nothing more will come (the end of a response without a length).
fn parse(buffer: &[u8], framing: Framing, eof: bool) -> Result<Option<(Message, usize)>, String> {
    let Some(end) = find(buffer, b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = std::str::from_utf8(&buffer[..end]).map_err(|error| error.to_string())?;
    let mut lines = head.split("\r\n");
    let start = lines.next().unwrap_or_default().to_string();
    let headers = lines
        .map(|line| {
            line.split_once(':')
                .map(|(name, value)| (name.to_ascii_lowercase(), value.trim().to_string()))
                .ok_or_else(|| format!("a field line without a colon: {line:?}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut message = Message {
        start,
        headers,
        body: Vec::new(),
        chunked: false,
        trailers: Vec::new(),
    };
    let body_start = end + 4;
    let rest = &buffer[body_start..];
    let status = message.status();
    if framing == Framing::Response && (status / 100 == 1 || status == 204 || status == 304) {
        return Ok(Some((message, body_start)));
    }
    if message
        .values("transfer-encoding")
        .iter()
        .any(|value| value.to_ascii_lowercase().contains("chunked"))
    {
        message.chunked = true;
        let Some((body, trailers, used)) = dechunk(rest)? else {
            return Ok(None);
        };
        message.body = body;
        message.trailers = trailers;
        return Ok(Some((message, body_start + used)));
    }
    let length = match message.header("content-length") {
        Some(value) => Some(
            value
                .parse::<usize>()
                .map_err(|_| format!("Content-Length {value:?}"))?,
        ),
        None => None,
    };
    match (length, framing) {
        (Some(length), _) if rest.len() >= length => {
            message.body = rest[..length].to_vec();
            Ok(Some((message, body_start + length)))
        }
        (Some(_), _) => Ok(None),
        (None, Framing::Request) => Ok(Some((message, body_start))),
        (None, Framing::Response) if eof => {
            message.body = rest.to_vec();
            Ok(Some((message, buffer.len())))
        }
        (None, Framing::Response) => Ok(None),
    }
}

type Fields = Vec<(String, String)>;

/// A chunked body from the start of `bytes`: the data, the trailer fields, the bytes taken.
fn dechunk(bytes: &[u8]) -> Result<Option<(Vec<u8>, Fields, usize)>, String> {
    let mut position = 0;
    let mut body = Vec::new();
    loop {
        let Some(line_end) = find(&bytes[position..], b"\r\n") else {
            return Ok(None);
        };
        let line = String::from_utf8_lossy(&bytes[position..position + line_end]).into_owned();
        let size_text = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| format!("chunk size line {line:?}"))?;
        position += line_end + 2;
        if size == 0 {
            let mut trailers = Vec::new();
            loop {
                let Some(line_end) = find(&bytes[position..], b"\r\n") else {
                    return Ok(None);
                };
                let line =
                    String::from_utf8_lossy(&bytes[position..position + line_end]).into_owned();
                position += line_end + 2;
                if line.is_empty() {
                    return Ok(Some((body, trailers, position)));
                }
                let (name, value) = line.split_once(':').unwrap_or((&line, ""));
                trailers.push((name.to_ascii_lowercase(), value.trim().to_string()));
            }
        }
        if bytes.len() < position + size + 2 {
            return Ok(None);
        }
        body.extend_from_slice(&bytes[position..position + size]);
        if &bytes[position + size..position + size + 2] != b"\r\n" {
            return Err("chunk data not followed by CRLF".to_string());
        }
        position += size + 2;
    }
}

/// How reading a message ended without one.
#[derive(Debug)]
#[allow(dead_code)] // The fields are read through Debug, in failure messages.
enum End {
    /// The peer closed the connection between messages.
    Closed,
    /// The peer closed it inside a message, after this many bytes of it.
    Truncated(usize),
    Reset(std::io::ErrorKind),
    TimedOut,
    Malformed(String),
}

/// The reading side of a connection, with what was read and not yet parsed.
struct Wire<R> {
    io: R,
    buffer: Vec<u8>,
    eof: bool,
}

impl<R: AsyncRead + Unpin> Wire<R> {
    async fn read_message(
        &mut self,
        framing: Framing,
        deadline: Option<Instant>,
    ) -> Result<Message, End> {
        loop {
            match parse(&self.buffer, framing, self.eof) {
                Err(reason) => return Err(End::Malformed(reason)),
                Ok(Some((message, used))) => {
                    self.buffer.drain(..used);
                    return Ok(message);
                }
                Ok(None) if self.eof => {
                    return Err(if self.buffer.is_empty() {
                        End::Closed
                    } else {
                        End::Truncated(self.buffer.len())
                    });
                }
                Ok(None) => {}
            }
            let mut chunk = [0_u8; 16 << 10];
            let read = match deadline {
                Some(deadline) => {
                    match tokio::time::timeout_at(deadline, self.io.read(&mut chunk)).await {
                        Ok(read) => read,
                        Err(_) => return Err(End::TimedOut),
                    }
                }
                None => self.io.read(&mut chunk).await,
            };
            match read {
                Ok(0) => self.eof = true,
                Ok(count) => self.buffer.extend_from_slice(&chunk[..count]),
                Err(error) => return Err(End::Reset(error.kind())),
            }
        }
    }
}

/// A raw HTTP/1.1 connection (the client's, and the engine's side of the gateway's).
struct Client {
    wire: Wire<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

impl From<TcpStream> for Client {
    fn from(stream: TcpStream) -> Self {
        let (reader, writer) = stream.into_split();
        Self {
            wire: Wire {
                io: reader,
                buffer: Vec::new(),
                eof: false,
            },
            writer,
        }
    }
}

/// A request answered by the gateway itself: does the connection still serve?
const PROBE: &[u8] = b"GET /health HTTP/1.1\r\nHost: gateway\r\n\r\n";

/// Whether `body` is the answer to [`PROBE`].
fn is_health(body: &[u8]) -> bool {
    serde_json::from_slice::<Value>(body).is_ok_and(|health| health["status"] == "ok")
}

impl Client {
    async fn connect(addr: SocketAddr) -> Self {
        Self::from(TcpStream::connect(addr).await.unwrap())
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).await.unwrap();
    }

    /// The next response, within [`DEADLINE`].
    async fn response(&mut self) -> Result<Message, End> {
        self.wire
            .read_message(Framing::Response, Some(Instant::now() + DEADLINE))
            .await
    }

    /// Write `bytes` while reading up to `count` responses (a server may answer and close
    /// before it read everything); the responses, and how reading stopped short if it did.
    async fn exchange(&mut self, bytes: &[u8], count: usize) -> (Vec<Message>, Option<End>) {
        let Self { wire, writer } = self;
        let write = async {
            // A server that refused the head may close before taking the rest.
            let _ = writer.write_all(bytes).await;
        };
        let read = async {
            let mut responses = Vec::new();
            while responses.len() < count {
                match wire
                    .read_message(Framing::Response, Some(Instant::now() + DEADLINE))
                    .await
                {
                    Ok(response) => responses.push(response),
                    Err(end) => return (responses, Some(end)),
                }
            }
            (responses, None)
        };
        tokio::join!(write, read).1
    }

    /// After the expected answers: open (a probe is answered), closed, or something else.
    async fn after(&mut self) -> After {
        let _ = self.writer.write_all(PROBE).await;
        match self.response().await {
            Ok(response) if response.status() == 200 && is_health(&response.body) => After::Open,
            Ok(response) => After::Other(format!(
                "another answer: {} {}",
                response.start,
                String::from_utf8_lossy(&response.body)
            )),
            Err(End::Closed | End::Reset(_)) => After::Closed,
            Err(end) => After::Other(format!("{end:?}")),
        }
    }
}
