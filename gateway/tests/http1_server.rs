//! The gateway's own HTTP/1.1 server (`kinfer_gateway::http1::server`) seen from raw TCP
//! clients on 127.0.0.1: the tests write exact bytes and read exact responses, so framing
//! (content-length, chunked, until close), keep-alive and connection closes are visible.
//! The gateway's behaviour behind the server is covered by the other suites through
//! `server::serve_api`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use futures::StreamExt;
use http::{header, HeaderValue, Request, StatusCode};
use http_body_util::BodyExt;
use kinfer_gateway::http1::server::{serve, Reply, RequestHead, ServerConfig};
use kinfer_gateway::http1::Fields;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::task::JoinHandle;
use tokio::time::timeout;

/// Longest wait for anything the server should do promptly: a bug fails instead of hanging.
const WAIT: Duration = Duration::from_secs(5);
/// The timeouts of the tests that exercise them.
const SHORT: Duration = Duration::from_millis(300);
/// Body size above which `/limited` answers 413 without reading the body.
const LIMIT: usize = 1024;

// ---------------------------------------------------------------------------------------
// The service behind the server: what it does is chosen by the request path.

/// Sends an event when dropped: shows that the server dropped a request's future or body.
struct DropGuard {
    events: mpsc::UnboundedSender<&'static str>,
    event: &'static str,
}

impl Drop for DropGuard {
    fn drop(&mut self) {
        let _ = self.events.send(self.event);
    }
}

#[derive(Clone)]
struct TestService {
    events: mpsc::UnboundedSender<&'static str>,
    release: Arc<Notify>,
}

impl TestService {
    async fn handle(self, request: Request<Body>) -> Response {
        let path = request.uri().path().to_owned();
        match path.as_str() {
            // A body of known size.
            "/sized" => Response::new(Body::from("hello, world")),
            "/empty" => Response::new(Body::empty()),
            "/no-content" => status_response(StatusCode::NO_CONTENT, Body::empty()),
            // A body of unknown size, in delayed frames.
            "/stream" => {
                let frames = futures::stream::iter(["first ", "second ", "third"]).then(
                    |frame| async move {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        Ok::<_, Infallible>(Bytes::from_static(frame.as_bytes()))
                    },
                );
                Response::new(Body::from_stream(frames))
            }
            "/stream-forever" => {
                let guard = DropGuard {
                    events: self.events.clone(),
                    event: "stream dropped",
                };
                let frames = futures::stream::unfold(guard, |guard| async move {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Some((Ok::<_, Infallible>(Bytes::from_static(b"tick\n")), guard))
                });
                Response::new(Body::from_stream(frames))
            }
            // 1 MB in 10,000 frames that are all ready at once.
            "/many" => {
                let frames =
                    futures::stream::iter((0..10_000).map(|index: u32| {
                        Ok::<_, Infallible>(Bytes::from(format!("{index:099}\n")))
                    }));
                Response::new(Body::from_stream(frames))
            }
            // As fast as the connection takes it, forever.
            "/flood" => {
                let guard = DropGuard {
                    events: self.events.clone(),
                    event: "flood dropped",
                };
                let frames = futures::stream::unfold(guard, |guard| async move {
                    let frame = Bytes::from(vec![b'x'; 64 << 10]);
                    Some((Ok::<_, Infallible>(frame), guard))
                });
                Response::new(Body::from_stream(frames))
            }
            // Reads the whole body, then waits forever (a long generation after an upload).
            "/read-then-wait" => {
                let _guard = DropGuard {
                    events: self.events.clone(),
                    event: "read-then-wait dropped",
                };
                let body = request.into_body().collect().await;
                let _ = self.events.send(if body.is_ok() {
                    "body read"
                } else {
                    "body failed"
                });
                std::future::pending().await
            }
            "/wait" => {
                let _guard = DropGuard {
                    events: self.events.clone(),
                    event: "wait dropped",
                };
                let _ = self.events.send("wait started");
                std::future::pending().await
            }
            "/hold" => {
                let _ = self.events.send("hold started");
                self.release.notified().await;
                Response::new(Body::from("released"))
            }
            // Refuses a large body from its content-length alone, as the gateway does.
            "/limited" => {
                let length = request
                    .headers()
                    .get(header::CONTENT_LENGTH)
                    .and_then(|value| value.to_str().ok()?.parse::<usize>().ok());
                if length.is_some_and(|length| length > LIMIT) {
                    status_response(StatusCode::PAYLOAD_TOO_LARGE, Body::from("too large"))
                } else {
                    echo(request).await
                }
            }
            _ => echo(request).await,
        }
    }
}

/// A reply as the proxy makes one: an engine's fields forwarded (connection-level ones among
/// them, which the server must not send), the gateway's own headers and a map, which
/// replace the engine's of the same names.
fn forwarded_reply() -> Reply {
    let mut engine = http::HeaderMap::new();
    for (name, value) in [
        ("x-engine", "1"),
        ("connection", "close"),
        ("keep-alive", "timeout=5"),
        ("transfer-encoding", "chunked"),
        ("x-replaced", "by the engine"),
        ("x-request-id", "from the engine"),
        ("content-length", "5"),
        ("date", "Mon, 01 Jan 2024 00:00:00 GMT"),
    ] {
        engine.insert(name, HeaderValue::from_static(value));
    }
    let mut response = Response::new(Body::from("hello"));
    response
        .headers_mut()
        .insert("x-replaced", HeaderValue::from_static("by the gateway"));
    Reply {
        response,
        headers: vec![(
            http::HeaderName::from_static("x-request-id"),
            HeaderValue::from_static("the gateway's"),
        )],
        forwarded: Fields::from_map(&engine),
    }
}

fn status_response(status: StatusCode, body: Body) -> Response {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response
}

/// The request body as the response body, and the request line and framing headers as
/// `x-` headers; a failed body read is answered 400 with the error.
async fn echo(request: Request<Body>) -> Response {
    let (parts, body) = request.into_parts();
    let mut response = match body.collect().await {
        Ok(collected) => Response::new(Body::from(collected.to_bytes())),
        Err(error) => status_response(
            StatusCode::BAD_REQUEST,
            Body::from(format!("body error: {error}")),
        ),
    };
    let headers = response.headers_mut();
    let text = |text: String| HeaderValue::try_from(text).expect("header value");
    headers.insert("x-method", text(parts.method.to_string()));
    headers.insert("x-uri", text(parts.uri.to_string()));
    headers.insert("x-version", text(format!("{:?}", parts.version)));
    for (name, echoed) in [
        (header::CONTENT_LENGTH, "x-request-content-length"),
        (header::TRANSFER_ENCODING, "x-request-transfer-encoding"),
    ] {
        if let Some(value) = parts.headers.get(name) {
            headers.insert(echoed, value.clone());
        }
    }
    response
}

// ---------------------------------------------------------------------------------------
// The server and a raw client.

struct TestServer {
    addr: SocketAddr,
    /// What the service saw: requests started, futures and bodies dropped.
    events: mpsc::UnboundedReceiver<&'static str>,
    /// Lets `/hold` answer.
    release: Arc<Notify>,
    shutdown: Option<oneshot::Sender<()>>,
    served: JoinHandle<std::io::Result<()>>,
}

/// `serve` on 127.0.0.1:0 with the test service; it stops when `shutdown` is sent or the
/// `TestServer` is dropped.
async fn start(config: ServerConfig) -> TestServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local address");
    let (events_sender, events) = mpsc::unbounded_channel();
    let release = Arc::new(Notify::new());
    let service = TestService {
        events: events_sender,
        release: release.clone(),
    };
    // The service sees an `http::Request`, as the router does (`RequestHead::into_request`).
    let service = move |head: Box<RequestHead>, body: Body| {
        let service = service.clone();
        async move {
            if head.uri.path() == "/forwarded" {
                return forwarded_reply();
            }
            let request = head.into_request(body).expect("fields a HeaderMap accepts");
            Reply::from(service.handle(request).await)
        }
    };
    let (shutdown, stop) = oneshot::channel::<()>();
    let served = tokio::spawn(serve(listener, service, config, async move {
        let _ = stop.await;
    }));
    TestServer {
        addr,
        events,
        release,
        shutdown: Some(shutdown),
        served,
    }
}

impl TestServer {
    async fn connect(&self) -> Client {
        Client::connect(self.addr).await
    }

    async fn next_event(&mut self) -> &'static str {
        timeout(WAIT, self.events.recv())
            .await
            .expect("no event from the service in time")
            .expect("the service's event channel closed")
    }
}

fn config(
    header_timeout: Duration,
    keep_alive_timeout: Duration,
    max_body_bytes: usize,
) -> ServerConfig {
    ServerConfig {
        header_timeout,
        keep_alive_timeout,
        send_timeout: keep_alive_timeout,
        max_body_bytes,
    }
}

/// Long timeouts: for tests where they must not fire.
fn relaxed() -> ServerConfig {
    config(Duration::from_secs(30), Duration::from_secs(30), 1 << 20)
}

#[derive(Debug)]
struct RawResponse {
    status: u16,
    /// Names lowercased, in the order received.
    headers: Vec<(String, String)>,
    /// The body after framing is removed.
    body: Vec<u8>,
    /// The body as it was on the wire (chunk sizes, trailers and all).
    wire_body: Vec<u8>,
}

impl RawResponse {
    /// The value of a header sent at most once.
    fn header(&self, name: &str) -> Option<&str> {
        let mut values = self
            .headers
            .iter()
            .filter(|(header, _)| header == name)
            .map(|(_, value)| value.as_str());
        let value = values.next();
        assert!(
            values.next().is_none(),
            "header {name} sent more than once: {:?}",
            self.headers
        );
        value
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn assert_date(&self) {
        let date = self
            .header("date")
            .unwrap_or_else(|| panic!("no date header: {:?}", self.headers));
        assert!(
            httpdate::parse_http_date(date).is_ok(),
            "date header is not an HTTP date: {date:?}"
        );
    }

    /// The OpenAI error envelope's `code`, after checking the envelope's shape.
    fn error_code(&self) -> String {
        assert_eq!(
            self.header("content-type"),
            Some("application/json"),
            "content type of an error"
        );
        let json: serde_json::Value = serde_json::from_slice(&self.body)
            .unwrap_or_else(|error| panic!("error body is not JSON ({error}): {}", self.text()));
        let error = json
            .get("error")
            .and_then(|error| error.as_object())
            .unwrap_or_else(|| panic!("no error object in {json}"));
        for field in ["message", "type", "param", "code"] {
            assert!(error.contains_key(field), "no {field} in {json}");
        }
        assert!(
            error["message"]
                .as_str()
                .is_some_and(|text| !text.is_empty()),
            "no message in {json}"
        );
        error["code"]
            .as_str()
            .unwrap_or_else(|| panic!("code is not a string in {json}"))
            .to_owned()
    }
}

/// A raw TCP client that keeps the bytes read beyond one response (the next ones).
struct Client {
    stream: TcpStream,
    buffer: Vec<u8>,
}

impl Client {
    async fn connect(addr: SocketAddr) -> Self {
        let stream = timeout(WAIT, TcpStream::connect(addr))
            .await
            .expect("connect timed out")
            .expect("connect");
        Self {
            stream,
            buffer: Vec::new(),
        }
    }

    async fn send(&mut self, bytes: impl AsRef<[u8]>) {
        timeout(WAIT, self.stream.write_all(bytes.as_ref()))
            .await
            .expect("write timed out")
            .expect("write");
    }

    /// Read more bytes into the buffer; 0 at end of stream.
    async fn fill(&mut self) -> usize {
        timeout(WAIT, self.stream.read_buf(&mut self.buffer))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "nothing from the server for {WAIT:?}; so far {:?}",
                    String::from_utf8_lossy(&self.buffer)
                )
            })
            .expect("read")
    }

    async fn take(&mut self, count: usize) -> Vec<u8> {
        while self.buffer.len() < count {
            if self.fill().await == 0 {
                panic!(
                    "the connection closed {} bytes before the end of a body",
                    count - self.buffer.len()
                );
            }
        }
        self.buffer.drain(..count).collect()
    }

    /// One CRLF-terminated line, without the CRLF.
    async fn line(&mut self) -> Vec<u8> {
        loop {
            if let Some(end) = find(&self.buffer, b"\r\n") {
                let mut line: Vec<u8> = self.buffer.drain(..end + 2).collect();
                line.truncate(end);
                return line;
            }
            if self.fill().await == 0 {
                panic!("the connection closed in the middle of a line");
            }
        }
    }

    async fn read_response(&mut self) -> RawResponse {
        self.read_response_to(false).await
    }

    /// Exactly one response: the head, then the body framed by `transfer-encoding:
    /// chunked`, `content-length` or the close of the connection (none for `HEAD`, 1xx, 204
    /// and 304).
    async fn read_response_to(&mut self, head_request: bool) -> RawResponse {
        let head_end = loop {
            if let Some(end) = find(&self.buffer, b"\r\n\r\n") {
                break end + 4;
            }
            if self.fill().await == 0 {
                panic!(
                    "the connection closed before a complete response head; got {:?}",
                    String::from_utf8_lossy(&self.buffer)
                );
            }
        };
        let head: Vec<u8> = self.buffer.drain(..head_end).collect();
        let head = String::from_utf8(head).expect("the response head is not UTF-8");
        let mut lines = head.split("\r\n").filter(|line| !line.is_empty());
        let status_line = lines.next().expect("status line");
        let mut parts = status_line.splitn(3, ' ');
        assert_eq!(
            parts.next(),
            Some("HTTP/1.1"),
            "status line {status_line:?}"
        );
        let status = parts
            .next()
            .and_then(|status| status.parse().ok())
            .unwrap_or_else(|| panic!("no status in {status_line:?}"));
        let headers = lines
            .map(|line| {
                let (name, value) = line
                    .split_once(':')
                    .unwrap_or_else(|| panic!("malformed header line {line:?}"));
                (name.to_ascii_lowercase(), value.trim().to_owned())
            })
            .collect();
        let mut response = RawResponse {
            status,
            headers,
            body: Vec::new(),
            wire_body: Vec::new(),
        };
        if head_request || status / 100 == 1 || status == 204 || status == 304 {
            return response;
        }
        if let Some(coding) = response.header("transfer-encoding") {
            assert_eq!(coding, "chunked", "response transfer-encoding");
            assert_eq!(
                response.header("content-length"),
                None,
                "a chunked response also has a content-length"
            );
            self.read_chunked(&mut response).await;
        } else if let Some(length) = response.header("content-length") {
            let length: usize = length
                .parse()
                .unwrap_or_else(|_| panic!("bad content-length {length:?}"));
            response.body = self.take(length).await;
            response.wire_body = response.body.clone();
        } else {
            response.body = self.read_until_closed().await;
            response.wire_body = response.body.clone();
        }
        response
    }

    async fn read_chunked(&mut self, response: &mut RawResponse) {
        loop {
            let line = self.line().await;
            response.wire_body.extend_from_slice(&line);
            response.wire_body.extend_from_slice(b"\r\n");
            let text = String::from_utf8_lossy(&line);
            let digits = text.split(';').next().unwrap_or_default().trim();
            let size = usize::from_str_radix(digits, 16)
                .unwrap_or_else(|_| panic!("bad chunk-size line {text:?}"));
            if size == 0 {
                loop {
                    let trailer = self.line().await;
                    response.wire_body.extend_from_slice(&trailer);
                    response.wire_body.extend_from_slice(b"\r\n");
                    if trailer.is_empty() {
                        return;
                    }
                }
            }
            let data = self.take(size).await;
            response.body.extend_from_slice(&data);
            response.wire_body.extend_from_slice(&data);
            let end = self.take(2).await;
            assert_eq!(end, b"\r\n", "chunk data not followed by CRLF");
            response.wire_body.extend_from_slice(&end);
        }
    }

    /// Everything until the server closes the connection.
    async fn read_until_closed(&mut self) -> Vec<u8> {
        while self.fill().await > 0 {}
        std::mem::take(&mut self.buffer)
    }

    /// The server closes the connection without sending anything more.
    async fn assert_closed(&mut self) {
        let rest = self.read_until_closed().await;
        assert!(
            rest.is_empty(),
            "bytes after the last response instead of a close: {:?}",
            String::from_utf8_lossy(&rest)
        );
    }

    /// Nothing arrives (and the connection stays open) for `wait`.
    async fn assert_silent(&mut self, wait: Duration) {
        if let Ok(read) = timeout(wait, self.stream.read_buf(&mut self.buffer)).await {
            panic!(
                "expected silence, got {read:?}: {:?}",
                String::from_utf8_lossy(&self.buffer)
            );
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nhost: test\r\n\r\n")
}

fn post(path: &str, body: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nhost: test\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
}

// ---------------------------------------------------------------------------------------
// Keep-alive and response framing.

#[tokio::test]
async fn keep_alive_connection_frames_sized_streamed_and_empty_responses() {
    let server = start(relaxed()).await;
    let mut client = server.connect().await;

    client.send(get("/sized")).await;
    let sized = client.read_response().await;
    assert_eq!(sized.status, 200);
    assert_eq!(sized.header("content-length"), Some("12"), "known size");
    assert_eq!(sized.header("transfer-encoding"), None);
    assert_eq!(sized.header("connection"), None, "HTTP/1.1 keeps alive");
    assert_eq!(sized.text(), "hello, world");
    sized.assert_date();

    client.send(get("/stream")).await;
    let streamed = client.read_response().await;
    assert_eq!(streamed.status, 200);
    assert_eq!(
        streamed.header("transfer-encoding"),
        Some("chunked"),
        "unknown size: {:?}",
        streamed.headers
    );
    assert_eq!(
        String::from_utf8_lossy(&streamed.wire_body),
        "6\r\nfirst \r\n7\r\nsecond \r\n5\r\nthird\r\n0\r\n\r\n",
        "one chunk per frame, then the last chunk"
    );
    assert_eq!(streamed.text(), "first second third");
    streamed.assert_date();

    client.send(get("/empty")).await;
    let empty = client.read_response().await;
    assert_eq!(empty.status, 200);
    assert_eq!(empty.header("content-length"), Some("0"), "empty body");
    assert_eq!(empty.header("transfer-encoding"), None);
    empty.assert_date();

    client.send(get("/no-content")).await;
    let no_content = client.read_response().await;
    assert_eq!(no_content.status, 204);
    assert_eq!(
        no_content.header("content-length"),
        None,
        "a 204 has no content-length"
    );
    assert_eq!(no_content.header("transfer-encoding"), None);
    no_content.assert_date();

    // Still usable after all of them, and nothing stray was sent (a stray byte would break
    // this response's status line).
    client.send(get("/sized")).await;
    assert_eq!(client.read_response().await.text(), "hello, world");
}

#[tokio::test]
async fn forwarded_fields_are_written_without_connection_level_ones() {
    let server = start(relaxed()).await;
    let mut client = server.connect().await;
    for _ in 0..2 {
        client.send(get("/forwarded")).await;
        let response = client.read_response().await;
        assert_eq!(response.status, 200);
        let values = |name: &str| -> Vec<&str> {
            response
                .headers
                .iter()
                .filter(|(header, _)| header == name)
                .map(|(_, value)| value.as_str())
                .collect()
        };
        assert_eq!(values("x-engine"), ["1"]);
        assert_eq!(values("x-replaced"), ["by the gateway"]);
        assert_eq!(values("x-request-id"), ["the gateway's"]);
        assert_eq!(values("content-length"), ["5"]);
        assert_eq!(
            values("date"),
            ["Mon, 01 Jan 2024 00:00:00 GMT"],
            "not a second date"
        );
        // The connection's own: the engine's `close` is not the client's.
        assert!(values("connection").is_empty(), "{:?}", response.headers);
        assert!(values("keep-alive").is_empty());
        assert!(values("transfer-encoding").is_empty());
        assert_eq!(response.text(), "hello");
    }
}

#[tokio::test]
async fn a_large_body_of_ready_frames_arrives_whole() {
    let server = start(relaxed()).await;
    let mut client = server.connect().await;
    client.send(get("/many")).await;
    let response = client.read_response().await;
    assert_eq!(response.status, 200);
    assert_eq!(response.header("transfer-encoding"), Some("chunked"));
    let text = response.text();
    assert_eq!(text.len(), 1_000_000);
    assert!(text.starts_with(&format!("{:099}\n", 0)));
    assert!(text.ends_with(&format!("{:099}\n", 9_999)));
    client.send(get("/sized")).await;
    assert_eq!(client.read_response().await.status, 200, "still usable");
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let server = start(relaxed()).await;
    let mut client = server.connect().await;
    let requests = [
        get("/echo?n=1"),
        post("/echo?n=2", "body of two"),
        get("/stream?n=3"),
        get("/echo?n=4"),
    ]
    .concat();
    client.send(requests).await;

    let first = client.read_response().await;
    assert_eq!(first.header("x-uri"), Some("/echo?n=1"));
    let second = client.read_response().await;
    assert_eq!(second.header("x-uri"), Some("/echo?n=2"));
    assert_eq!(second.text(), "body of two", "the body ends at its length");
    let third = client.read_response().await;
    assert_eq!(third.text(), "first second third", "the stream, third");
    let fourth = client.read_response().await;
    assert_eq!(fourth.header("x-uri"), Some("/echo?n=4"));
    for response in [&first, &second, &third, &fourth] {
        assert_eq!(response.status, 200);
        assert_eq!(response.header("connection"), None, "{response:?}");
    }
}

// ---------------------------------------------------------------------------------------
// Request bodies.

#[tokio::test]
async fn content_length_body_arriving_in_pieces_is_echoed() {
    let server = start(relaxed()).await;
    let mut client = server.connect().await;
    client
        .send("POST /echo HTTP/1.1\r\nhost: test\r\ncontent-length: 11\r\n\r\n")
        .await;
    for piece in ["hel", "lo wo", "rld"] {
        tokio::time::sleep(Duration::from_millis(50)).await;
        client.send(piece).await;
    }
    let response = client.read_response().await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.text(), "hello world");
    assert_eq!(response.header("x-request-content-length"), Some("11"));
    assert_eq!(response.header("connection"), None, "kept alive");

    client.send(get("/sized")).await;
    assert_eq!(
        client.read_response().await.text(),
        "hello, world",
        "the next request on the connection"
    );
}

#[tokio::test]
async fn chunked_body_with_extension_and_trailer_arriving_in_pieces_is_echoed() {
    let server = start(relaxed()).await;
    let mut client = server.connect().await;
    client
        .send("POST /echo HTTP/1.1\r\nhost: test\r\ntransfer-encoding: chunked\r\n\r\n")
        .await;
    for piece in [
        "5;name=value\r\nhel",
        "lo\r\n6\r\n wo",
        "rld\r\n0\r\nx-trailer: t",
        "\r\n\r\n",
    ] {
        tokio::time::sleep(Duration::from_millis(50)).await;
        client.send(piece).await;
    }
    let response = client.read_response().await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.text(), "hello world", "chunk data only");
    assert_eq!(
        response.header("x-request-transfer-encoding"),
        Some("chunked")
    );
    assert_eq!(response.header("connection"), None, "kept alive");

    client.send(get("/sized")).await;
    assert_eq!(
        client.read_response().await.text(),
        "hello, world",
        "the next request on the connection (the trailer was consumed)"
    );
}

#[tokio::test]
async fn expect_continue_is_answered_before_the_body_is_sent() {
    let server = start(relaxed()).await;
    let mut client = server.connect().await;
    client
        .send(
            "POST /limited HTTP/1.1\r\nhost: test\r\ncontent-length: 5\r\n\
             expect: 100-continue\r\n\r\n",
        )
        .await;
    let interim = client.read_response().await;
    assert_eq!(interim.status, 100, "{interim:?}");
    assert!(
        client.buffer.is_empty(),
        "only the 100 before the body: {:?}",
        String::from_utf8_lossy(&client.buffer)
    );

    client.send("hello").await;
    let response = client.read_response().await;
    assert_eq!(response.status, 200);
    assert_eq!(response.text(), "hello");

    client.send(get("/sized")).await;
    assert_eq!(client.read_response().await.status, 200, "still usable");
}

#[tokio::test]
async fn oversized_body_with_expect_continue_gets_no_100_and_the_connection_closes() {
    let server = start(config(WAIT, WAIT, LIMIT)).await;
    let mut client = server.connect().await;
    client
        .send(format!(
            "POST /limited HTTP/1.1\r\nhost: test\r\ncontent-length: {}\r\n\
             expect: 100-continue\r\n\r\n",
            LIMIT * 4
        ))
        .await;
    let response = client.read_response().await;
    assert_eq!(
        response.status, 413,
        "the final answer, without a 100 Continue first: {response:?}"
    );
    assert_eq!(
        response.header("connection"),
        Some("close"),
        "the unread body is still on the connection"
    );
    client.assert_closed().await;
}

/// A client that sends a large body without `Expect`, slowly, and reads only when it is done
/// still gets the 413: the server stops writing and discards what arrives for a while before
/// closing (a lingering close), instead of resetting the connection under the client's writes
/// and the unread answer.
#[tokio::test]
async fn a_refused_body_still_arriving_does_not_reset_the_answer() {
    let server = start(config(WAIT, WAIT, LIMIT)).await;
    let stream = timeout(WAIT, TcpStream::connect(server.addr))
        .await
        .expect("connect timed out")
        .expect("connect");
    let (mut read, mut write) = stream.into_split();
    let chunk = vec![b'x'; 128 << 10];
    let chunks = 8;
    let sender = tokio::spawn(async move {
        let length = chunk.len() * chunks;
        let head =
            format!("POST /limited HTTP/1.1\r\nhost: test\r\ncontent-length: {length}\r\n\r\n");
        write.write_all(head.as_bytes()).await?;
        for _ in 0..chunks {
            // The server has answered and closed its side by the later chunks.
            tokio::time::sleep(Duration::from_millis(50)).await;
            write.write_all(&chunk).await?;
        }
        Ok::<_, std::io::Error>(())
    });
    let sent = timeout(WAIT, sender)
        .await
        .expect("the body was neither taken nor refused")
        .expect("sender task");
    assert!(sent.is_ok(), "the body's sending was reset: {sent:?}");
    let mut answer = Vec::new();
    let read_all = timeout(WAIT, read.read_to_end(&mut answer))
        .await
        .expect("the server did not close");
    assert!(read_all.is_ok(), "the answer was reset: {read_all:?}");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 413 "), "{text}");
    assert!(text.contains("connection: close"), "{text}");
}

// ---------------------------------------------------------------------------------------
// HTTP/1.0 and connection closes.

#[tokio::test]
async fn http10_without_keep_alive_is_closed_after_the_response() {
    let server = start(relaxed()).await;
    let mut client = server.connect().await;
    client.send("GET /sized HTTP/1.0\r\n\r\n").await;
    let response = client.read_response().await;
    assert_eq!(response.status, 200);
    assert_eq!(response.text(), "hello, world");
    assert_eq!(response.header("connection"), Some("close"));
    client.assert_closed().await;
}

#[tokio::test]
async fn http10_with_keep_alive_is_kept_alive() {
    let server = start(relaxed()).await;
    let mut client = server.connect().await;
    for round in 1..=2 {
        client
            .send("GET /sized HTTP/1.0\r\nconnection: keep-alive\r\n\r\n")
            .await;
        let response = client.read_response().await;
        assert_eq!(response.status, 200, "request {round}");
        assert_eq!(response.text(), "hello, world", "request {round}");
        assert_eq!(
            response.header("connection"),
            Some("keep-alive"),
            "an HTTP/1.0 client must be told (request {round})"
        );
    }
}

#[tokio::test]
async fn http10_streamed_response_is_delimited_by_the_close() {
    let server = start(relaxed()).await;
    let mut client = server.connect().await;
    client
        .send("GET /stream HTTP/1.0\r\nconnection: keep-alive\r\n\r\n")
        .await;
    let response = client.read_response().await;
    assert_eq!(response.status, 200);
    assert_eq!(
        response.header("transfer-encoding"),
        None,
        "no chunked to HTTP/1.0"
    );
    assert_eq!(response.header("content-length"), None);
    assert_eq!(
        response.header("connection"),
        Some("close"),
        "the close ends the body"
    );
    assert_eq!(response.text(), "first second third", "read until close");
}

#[tokio::test]
async fn http11_connection_close_is_honoured() {
    let server = start(relaxed()).await;
    let mut client = server.connect().await;
    client
        .send("GET /sized HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n")
        .await;
    let response = client.read_response().await;
    assert_eq!(response.status, 200);
    assert_eq!(response.text(), "hello, world");
    assert_eq!(response.header("connection"), Some("close"));
    client.assert_closed().await;
}

#[tokio::test]
async fn head_response_has_headers_but_no_body() {
    let server = start(relaxed()).await;
    let mut client = server.connect().await;
    for path in ["/sized", "/stream"] {
        client
            .send(format!("HEAD {path} HTTP/1.1\r\nhost: test\r\n\r\n"))
            .await;
        let response = client.read_response_to(true).await;
        assert_eq!(response.status, 200, "HEAD {path}");
        response.assert_date();
        assert_eq!(
            response.header("transfer-encoding"),
            None,
            "HEAD {path}: no chunked framing without a body"
        );
        assert_eq!(response.header("connection"), None, "HEAD {path}");
    }
    // A body byte after either head would break this status line.
    client.send(get("/sized")).await;
    let response = client.read_response().await;
    assert_eq!(response.status, 200);
    assert_eq!(response.text(), "hello, world");
}

// ---------------------------------------------------------------------------------------
// Rejected requests.

#[tokio::test]
async fn malformed_requests_are_rejected_with_an_error_envelope_and_closed() {
    let too_many_headers = (0..101)
        .map(|index| format!("x-header-{index}: value\r\n"))
        .collect::<String>();
    let cases: Vec<(&str, String, u16, &str)> = vec![
        (
            "malformed request line",
            "NOT A REQUEST\r\n\r\n".into(),
            400,
            "malformed_request",
        ),
        (
            "both transfer-encoding and content-length",
            "POST / HTTP/1.1\r\nhost: test\r\ntransfer-encoding: chunked\r\n\
             content-length: 5\r\n\r\n"
                .into(),
            400,
            "malformed_request",
        ),
        (
            "a transfer coding other than chunked",
            "POST / HTTP/1.1\r\nhost: test\r\ntransfer-encoding: gzip, chunked\r\n\r\n".into(),
            501,
            "unsupported_transfer_encoding",
        ),
        (
            "chunked not last",
            "POST / HTTP/1.1\r\nhost: test\r\ntransfer-encoding: chunked, gzip\r\n\r\n".into(),
            400,
            "malformed_request",
        ),
        (
            "transfer-encoding in HTTP/1.0",
            "POST / HTTP/1.0\r\ntransfer-encoding: chunked\r\n\r\n".into(),
            400,
            "malformed_request",
        ),
        (
            "content-length not a number",
            "POST / HTTP/1.1\r\nhost: test\r\ncontent-length: abc\r\n\r\n".into(),
            400,
            "malformed_request",
        ),
        (
            "two different content-lengths",
            "POST / HTTP/1.1\r\nhost: test\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n"
                .into(),
            400,
            "malformed_request",
        ),
        (
            "an incomplete head over 64 KiB",
            format!(
                "GET / HTTP/1.1\r\nhost: test\r\nx-big: {}",
                "a".repeat(70 * 1024)
            ),
            431,
            "request_head_too_large",
        ),
        (
            "more than 100 headers",
            format!("GET / HTTP/1.1\r\n{too_many_headers}\r\n"),
            431,
            "request_head_too_large",
        ),
    ];
    let server = start(relaxed()).await;
    for (case, request, status, code) in cases {
        let mut client = server.connect().await;
        client.send(&request).await;
        let response = client.read_response().await;
        assert_eq!(response.status, status, "{case}: {}", response.text());
        assert_eq!(response.error_code(), code, "{case}");
        assert_eq!(response.header("connection"), Some("close"), "{case}");
        response.assert_date();
        client.assert_closed().await;
    }
}

#[tokio::test]
async fn heads_at_the_limits_are_accepted() {
    let server = start(relaxed()).await;
    let mut client = server.connect().await;
    let hundred_headers = (0..99)
        .map(|index| format!("x-header-{index}: value\r\n"))
        .collect::<String>();
    client
        .send(format!(
            "GET /echo HTTP/1.1\r\nhost: test\r\n{hundred_headers}\r\n"
        ))
        .await;
    assert_eq!(client.read_response().await.status, 200, "100 headers");

    let big = "a".repeat(60 * 1024);
    client
        .send(format!(
            "GET /echo HTTP/1.1\r\nhost: test\r\nx-big: {big}\r\n\r\n"
        ))
        .await;
    assert_eq!(client.read_response().await.status, 200, "a 60 KiB head");
}

#[tokio::test]
async fn complete_head_over_64_kib_is_rejected() {
    let server = start(relaxed()).await;
    let mut client = server.connect().await;
    client
        .send(format!(
            "GET /echo HTTP/1.1\r\nhost: test\r\nx-big: {}\r\n\r\n",
            "a".repeat(70 * 1024)
        ))
        .await;
    let response = client.read_response().await;
    assert_eq!(response.status, 431, "a 70 KiB head: {}", response.text());
    assert_eq!(response.error_code(), "request_head_too_large");
    client.assert_closed().await;
}

// ---------------------------------------------------------------------------------------
// Client disconnects.

#[tokio::test]
async fn client_disconnect_drops_the_request_in_progress() {
    let mut server = start(relaxed()).await;
    let mut client = server.connect().await;
    client.send(get("/wait")).await;
    assert_eq!(server.next_event().await, "wait started");
    drop(client);
    let dropped = timeout(Duration::from_secs(2), server.events.recv()).await;
    assert_eq!(
        dropped.ok().flatten(),
        Some("wait dropped"),
        "the service future is dropped when the client goes away"
    );
}

#[tokio::test]
async fn client_disconnect_after_a_body_in_pieces_drops_the_request() {
    let mut server = start(relaxed()).await;
    let mut client = server.connect().await;
    client
        .send("POST /read-then-wait HTTP/1.1\r\nhost: test\r\ncontent-length: 10\r\n\r\nhello")
        .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    client.send("world").await;
    assert_eq!(server.next_event().await, "body read");
    drop(client);
    let dropped = timeout(Duration::from_secs(2), server.events.recv()).await;
    assert_eq!(
        dropped.ok().flatten(),
        Some("read-then-wait dropped"),
        "the connection is watched again once the body that came in pieces is read"
    );
}

#[tokio::test]
async fn client_disconnect_drops_a_streamed_response() {
    let mut server = start(relaxed()).await;
    let mut client = server.connect().await;
    client.send(get("/stream-forever")).await;
    while find(&client.buffer, b"tick").is_none() {
        assert!(client.fill().await > 0, "the stream ended");
    }
    drop(client);
    let dropped = timeout(Duration::from_secs(2), server.events.recv()).await;
    assert_eq!(
        dropped.ok().flatten(),
        Some("stream dropped"),
        "the response body is dropped when the client goes away"
    );
}

// ---------------------------------------------------------------------------------------
// Timeouts.

#[tokio::test]
async fn a_client_that_stops_reading_is_disconnected_after_the_send_timeout() {
    let mut server = start(ServerConfig {
        send_timeout: SHORT,
        ..relaxed()
    })
    .await;
    let mut client = server.connect().await;
    client.send(get("/flood")).await;
    // The client reads nothing more: the socket buffers fill and the writes stall.
    let dropped = timeout(WAIT, server.events.recv()).await;
    assert_eq!(
        dropped.ok().flatten(),
        Some("flood dropped"),
        "the response (and with it the engine request) is dropped"
    );
    drop(client);
}

#[tokio::test]
async fn idle_connections_close_after_the_keep_alive_timeout() {
    let server = start(config(WAIT, SHORT, LIMIT)).await;

    let started = Instant::now();
    let mut fresh = server.connect().await;
    fresh.assert_closed().await;
    let elapsed = started.elapsed();
    assert!(
        elapsed >= SHORT - Duration::from_millis(50) && elapsed < Duration::from_secs(3),
        "a connection without a request closed after {elapsed:?}"
    );

    let mut used = server.connect().await;
    used.send(get("/sized")).await;
    assert_eq!(used.read_response().await.status, 200);
    let started = Instant::now();
    used.assert_closed().await;
    let elapsed = started.elapsed();
    assert!(
        elapsed >= SHORT - Duration::from_millis(50) && elapsed < Duration::from_secs(3),
        "an idle keep-alive connection closed after {elapsed:?}"
    );
}

#[tokio::test]
async fn half_a_head_is_closed_after_the_header_timeout() {
    let server = start(config(SHORT, WAIT, LIMIT)).await;
    let mut client = server.connect().await;
    client.send("GET /sized HTTP/1.1\r\nhost: te").await;
    let started = Instant::now();
    client.assert_closed().await;
    let elapsed = started.elapsed();
    assert!(
        elapsed >= SHORT - Duration::from_millis(50) && elapsed < Duration::from_secs(3),
        "closed after {elapsed:?}, not after the header timeout (the keep-alive one is {WAIT:?})"
    );
}

#[tokio::test]
async fn head_trickling_in_must_complete_within_the_header_timeout() {
    // The deadline runs from the head's first byte (ServerConfig::header_timeout): a client
    // sending a header line every 100 ms forever does not keep the connection.
    let server = start(config(SHORT, WAIT, LIMIT)).await;
    let mut client = server.connect().await;
    let started = Instant::now();
    client.send("GET /sized HTTP/1.1\r\n").await;
    loop {
        match timeout(
            Duration::from_millis(100),
            client.stream.read_buf(&mut client.buffer),
        )
        .await
        {
            Ok(Ok(0) | Err(_)) => break,
            Ok(Ok(_)) => panic!(
                "a response to an incomplete head: {:?}",
                String::from_utf8_lossy(&client.buffer)
            ),
            Err(_) => {}
        }
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "a head trickling in is still open after {:?}",
            started.elapsed()
        );
        // The server may have closed already: a failed write is seen by the next read.
        let _ = client.stream.write_all(b"x-slow: header\r\n").await;
    }
    let elapsed = started.elapsed();
    assert!(
        elapsed >= SHORT - Duration::from_millis(50),
        "closed after {elapsed:?}, before the header timeout"
    );
}

#[tokio::test]
async fn stalled_request_body_fails_the_service_read_and_closes() {
    let server = start(config(SHORT, WAIT, LIMIT)).await;
    let mut client = server.connect().await;
    client
        .send("POST /echo HTTP/1.1\r\nhost: test\r\ncontent-length: 10\r\n\r\nhalf")
        .await;
    let started = Instant::now();
    let response = client.read_response().await;
    let elapsed = started.elapsed();
    assert_eq!(response.status, 400, "{}", response.text());
    assert!(
        response
            .text()
            .contains("no part of the request body arrived"),
        "the service saw the body timeout: {}",
        response.text()
    );
    assert!(
        elapsed >= SHORT - Duration::from_millis(50) && elapsed < Duration::from_secs(3),
        "the body read failed after {elapsed:?}"
    );
    assert_eq!(
        response.header("connection"),
        Some("close"),
        "the rest of the body is unknown"
    );
    client.assert_closed().await;
}

// ---------------------------------------------------------------------------------------
// Graceful shutdown.

#[tokio::test]
async fn shutdown_closes_idle_connections_and_finishes_requests_in_progress() {
    let mut server = start(relaxed()).await;
    let mut idle = server.connect().await;
    idle.send(get("/sized")).await;
    assert_eq!(idle.read_response().await.status, 200);
    let mut busy = server.connect().await;
    busy.send(get("/hold")).await;
    assert_eq!(server.next_event().await, "hold started");

    server
        .shutdown
        .take()
        .expect("shutdown sender")
        .send(())
        .expect("the server is running");
    let started = Instant::now();
    idle.assert_closed().await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "the idle connection closed after {:?}",
        started.elapsed()
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !server.served.is_finished(),
        "serve returned while a request was in progress"
    );

    server.release.notify_one();
    let response = busy.read_response().await;
    assert_eq!(response.status, 200);
    assert_eq!(response.text(), "released", "answered completely");
    assert_eq!(response.header("connection"), Some("close"));
    busy.assert_closed().await;

    let served = timeout(WAIT, &mut server.served)
        .await
        .expect("serve returns once the last connection closed")
        .expect("serve task");
    assert!(served.is_ok(), "serve: {served:?}");
    assert!(
        TcpStream::connect(server.addr).await.is_err(),
        "the listener is closed"
    );
}

#[tokio::test]
async fn http10_expect_continue_is_ignored() {
    let server = start(relaxed()).await;
    let mut client = server.connect().await;
    client
        .send("POST /echo HTTP/1.0\r\ncontent-length: 5\r\nexpect: 100-continue\r\n\r\n")
        .await;
    client.assert_silent(Duration::from_millis(300)).await;
    client.send("hello").await;
    let response = client.read_response().await;
    assert_eq!(
        response.status, 200,
        "the final response only: {response:?}"
    );
    assert_eq!(response.text(), "hello");
}
