//! The HTTP/1.1 client side of the proxy: one keep-alive connection to an engine, driven by the
//! request that uses it.
//!
//! hyper's client connection runs as its own task behind a channel: every request crossed two
//! channels and woke two tasks, and that side alone was about a quarter of the gateway's
//! instructions per request (callgrind, docs/benchmarks.md). Here the request task writes the
//! request and reads the response itself, the response head is parsed with httparse (as hyper
//! does), header values are slices of the read buffer, and body frames are slices of it too
//! (no copy). Only what an engine answers is supported: a content-length, chunked or
//! read-until-close body, with 1xx interim responses skipped.

use std::future::{poll_fn, Future};
use std::pin::{pin, Pin};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::uri::PathAndQuery;
use http::{HeaderValue, Method, StatusCode};
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use crate::http1::fields::is_named;
use crate::http1::{add_content_length, header_spans, Decoded, Decoder, Fields};

/// Read buffer growth step.
const READ_CHUNK: usize = 8 * 1024;
/// Largest response head accepted.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Most response headers accepted.
const MAX_HEADERS: usize = 100;
/// Request bodies up to this size are copied behind the head and sent in one write.
const COALESCE_BODY_BYTES: usize = 64 * 1024;

/// What went wrong on an engine connection.
#[derive(Debug, thiserror::Error)]
pub enum H1Error {
    #[error("the engine closed the connection before answering")]
    ClosedBeforeResponse,
    #[error("the engine closed the connection in the middle of the response body")]
    ClosedMidBody,
    #[error("invalid response from the engine: {0}")]
    Invalid(String),
    #[error("no response head before the deadline")]
    Timeout,
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// A keep-alive connection to one engine address.
pub struct Connection {
    stream: TcpStream,
    buffer: BytesMut,
    /// The first-byte deadline, one timer for the connection's life: moving a registered
    /// timer later is an atomic store, while a new timer per request is registered in and
    /// removed from the timer wheel.
    timer: Option<Pin<Box<Sleep>>>,
}

impl Connection {
    pub fn new(stream: TcpStream) -> Self {
        Self {
            stream,
            buffer: BytesMut::new(),
            timer: None,
        }
    }

    /// Whether an idle connection can no longer take a request: the engine closed it (or sent
    /// bytes nobody asked for). Costs no system call while nothing arrived on it.
    pub fn is_stale(&self) -> bool {
        if !self.buffer.is_empty() {
            return true;
        }
        let mut context = Context::from_waker(std::task::Waker::noop());
        match self.stream.poll_read_ready(&mut context) {
            Poll::Pending => false,
            Poll::Ready(Err(_)) => true,
            // Readable: end of stream or stray bytes, unless the readiness is an old one.
            Poll::Ready(Ok(())) => {
                let mut byte = [0_u8; 1];
                !matches!(
                    self.stream.try_read(&mut byte),
                    Err(error) if error.kind() == std::io::ErrorKind::WouldBlock
                )
            }
        }
    }

    /// Send a request and read the response head, all before `deadline`. The connection
    /// travels on in the body, which gives it back (see [`ResponseBody::take_reusable`]) once
    /// read to the end.
    pub async fn send(
        mut self,
        request: &RequestHead<'_>,
        body: &Bytes,
        deadline: Instant,
    ) -> Result<(ResponseHead, ResponseBody), H1Error> {
        let mut timer = match self.timer.take() {
            Some(mut timer) => {
                timer.as_mut().reset(deadline);
                timer
            }
            None => Box::pin(tokio::time::sleep_until(deadline)),
        };
        let head = {
            let mut exchange = pin!(self.exchange(request, body));
            poll_fn(|context| {
                if let Poll::Ready(head) = exchange.as_mut().poll(context) {
                    return Poll::Ready(head);
                }
                timer.as_mut().poll(context).map(|()| Err(H1Error::Timeout))
            })
            .await
        };
        self.timer = Some(timer);
        let (parts, state, keeps_alive) = head?;
        let reusable = keeps_alive && state != Decoder::UntilClose;
        let body = ResponseBody {
            connection: Some(self),
            state,
            reusable,
        };
        Ok((parts, body))
    }

    /// Write the request and read the response head.
    async fn exchange(
        &mut self,
        request: &RequestHead<'_>,
        body: &Bytes,
    ) -> Result<(ResponseHead, Decoder, bool), H1Error> {
        let mut head = encode_head(request, body.len());
        if body.len() <= COALESCE_BODY_BYTES {
            head.extend_from_slice(body);
            self.stream.write_all(&head).await?;
        } else {
            self.stream.write_all(&head).await?;
            self.stream.write_all(body).await?;
        }
        loop {
            if let Some(head) = self.parse_head(request.method)? {
                return Ok(head);
            }
            if self.buffer.len() > MAX_HEAD_BYTES {
                return Err(H1Error::Invalid(format!(
                    "response head larger than {MAX_HEAD_BYTES} bytes"
                )));
            }
            if poll_fn(|context| self.poll_read(context)).await? == 0 {
                return Err(if self.buffer.is_empty() {
                    H1Error::ClosedBeforeResponse
                } else {
                    H1Error::Invalid("the connection closed inside the response head".into())
                });
            }
        }
    }

    fn poll_read(&mut self, context: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        if self.buffer.capacity() - self.buffer.len() < READ_CHUNK / 4 {
            self.buffer.reserve(READ_CHUNK);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.stream), context, &mut self.buffer)
    }

    /// The response head, once the buffer holds all of it (1xx interim responses skipped).
    fn parse_head(
        &mut self,
        method: &Method,
    ) -> Result<Option<(ResponseHead, Decoder, bool)>, H1Error> {
        loop {
            // Parse, then keep only offsets, so the head can become shared `Bytes` that the
            // header values slice. Neither array is initialized: a response has a few headers.
            let (length, code, minor, spans) = {
                let mut headers = [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() };
                    MAX_HEADERS];
                let mut response = httparse::Response::new(&mut []);
                let base = self.buffer.as_ptr() as usize;
                match httparse::ParserConfig::default().parse_response_with_uninit_headers(
                    &mut response,
                    &self.buffer,
                    &mut headers,
                ) {
                    Ok(httparse::Status::Complete(length)) => {
                        let spans = header_spans(response.headers, base);
                        let code = response.code.unwrap_or(0);
                        (length, code, response.version.unwrap_or(1), spans)
                    }
                    Ok(httparse::Status::Partial) => return Ok(None),
                    Err(error) => return Err(H1Error::Invalid(error.to_string())),
                }
            };
            let head = self.buffer.split_to(length).freeze();
            let status = StatusCode::from_u16(code)
                .map_err(|_| H1Error::Invalid(format!("status code {code}")))?;
            if status.is_informational() {
                if status == StatusCode::SWITCHING_PROTOCOLS {
                    return Err(H1Error::Invalid(
                        "unexpected 101 Switching Protocols".into(),
                    ));
                }
                continue;
            }
            // What delimits the body and whether the connection stays open, noted in the one
            // pass. The fields stay offsets into the head (see `crate::http1::fields`).
            // Some when there is a transfer-encoding: whether its last coding is chunked.
            let mut chunked = None;
            let mut length = None;
            let mut close = false;
            let mut keep_alive = false;
            for &(name_start, name_end, value_start, value_end) in &spans {
                let name = &head[name_start..name_end];
                let value = &head[value_start..value_end];
                if is_named(name, "transfer-encoding") {
                    // The last coding of the last header decides.
                    let last = value.rsplit(|&byte| byte == b',').next();
                    chunked =
                        Some(last.is_some_and(|last| {
                            last.trim_ascii().eq_ignore_ascii_case(b"chunked")
                        }));
                } else if is_named(name, "content-length") {
                    length = add_content_length(length, value)
                        .map_err(|reason| H1Error::Invalid(reason.into()))?;
                } else if is_named(name, "connection") {
                    for token in value.split(|&byte| byte == b',') {
                        let token = token.trim_ascii();
                        close |= token.eq_ignore_ascii_case(b"close");
                        keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
                    }
                }
            }
            // HTTP/1.0 keeps the connection only on request.
            let reusable = if minor == 0 {
                keep_alive && !close
            } else {
                !close
            };
            // RFC 9112 section 6.3: a transfer coding overrides any length, and a coding other
            // than chunked last means the body ends with the connection.
            let body = if method == Method::HEAD
                || status == StatusCode::NO_CONTENT
                || status == StatusCode::NOT_MODIFIED
            {
                Decoder::Done
            } else {
                match (chunked, length) {
                    (Some(true), _) => Decoder::chunked(),
                    (None, Some(length)) => Decoder::length(length),
                    (Some(false), _) | (None, None) => Decoder::UntilClose,
                }
            };
            let head = ResponseHead {
                status,
                headers: Fields::new(head, spans),
            };
            return Ok(Some((head, body, reusable)));
        }
    }
}

/// An engine's response head: its status and header fields as received (the version only
/// decides whether the connection is reused).
#[derive(Debug)]
pub struct ResponseHead {
    pub status: StatusCode,
    pub headers: Fields,
}

/// The parts of a request written upstream.
pub struct RequestHead<'a> {
    pub method: &'a Method,
    pub path_and_query: &'a PathAndQuery,
    pub host: &'a HeaderValue,
    /// Sent as they are, except `host`, `content-length` and `transfer-encoding`, which the
    /// connection writes itself, and `expect` (the body goes with the head).
    pub headers: &'a Fields,
    /// Sent as `x-request-id`, instead of any the fields have.
    pub request_id: Option<&'a HeaderValue>,
}

/// The request line and headers, with a content-length for the body.
fn encode_head(request: &RequestHead<'_>, body_length: usize) -> Vec<u8> {
    let mut head = Vec::with_capacity(256 + request.headers.len() * 48 + body_length);
    head.extend_from_slice(request.method.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(request.path_and_query.as_str().as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    head.extend_from_slice(request.host.as_bytes());
    head.extend_from_slice(b"\r\n");
    if let Some(id) = request.request_id {
        head.extend_from_slice(b"x-request-id: ");
        head.extend_from_slice(id.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    for (name, value) in request.headers.iter() {
        let written_here = match name.len() {
            4 => is_named(name, "host"),
            6 => is_named(name, "expect"),
            12 => request.request_id.is_some() && is_named(name, "x-request-id"),
            14 => is_named(name, "content-length"),
            17 => is_named(name, "transfer-encoding"),
            _ => false,
        };
        if written_here {
            continue;
        }
        head.extend_from_slice(name);
        head.extend_from_slice(b": ");
        head.extend_from_slice(value);
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"content-length: ");
    head.extend_from_slice(itoa::Buffer::new().format(body_length).as_bytes());
    head.extend_from_slice(b"\r\n\r\n");
    head
}

/// A response body read from its connection as the client reads it.
pub struct ResponseBody {
    connection: Option<Connection>,
    state: Decoder,
    reusable: bool,
}

impl ResponseBody {
    /// Whether the body has a content-length (and bytes still to read).
    pub fn is_sized(&self) -> bool {
        matches!(self.state, Decoder::Length(_))
    }

    /// The connection, if the body was read to its end and the engine keeps it alive.
    pub fn take_reusable(&mut self) -> Option<Connection> {
        let connection = self.connection.take()?;
        (self.state == Decoder::Done && self.reusable && connection.buffer.is_empty())
            .then_some(connection)
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = H1Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, H1Error>>> {
        let this = self.get_mut();
        loop {
            let Some(connection) = this.connection.as_mut() else {
                return Poll::Ready(None);
            };
            match this.state.decode(&mut connection.buffer) {
                Ok(Decoded::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                Ok(Decoded::End) => return Poll::Ready(None),
                Ok(Decoded::More) => {}
                Err(error) => {
                    this.connection = None;
                    return Poll::Ready(Some(Err(H1Error::Invalid(error.to_string()))));
                }
            }
            match connection.poll_read(context) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) => {
                    if this.state == Decoder::UntilClose {
                        this.state = Decoder::Done;
                        this.reusable = false;
                        return Poll::Ready(None);
                    }
                    this.connection = None;
                    return Poll::Ready(Some(Err(H1Error::ClosedMidBody)));
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(error)) => {
                    this.connection = None;
                    return Poll::Ready(Some(Err(H1Error::Io(error))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.state == Decoder::Done
    }

    fn size_hint(&self) -> SizeHint {
        self.state
            .remaining()
            .map_or_else(SizeHint::default, SizeHint::with_exact)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{header, HeaderMap};
    use http_body_util::BodyExt;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    /// A server that answers each request on one connection with the next of `responses`, in
    /// pieces of `piece` bytes, and hands back what it read.
    async fn scripted(
        responses: Vec<&'static [u8]>,
        piece: usize,
    ) -> (String, tokio::task::JoinHandle<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let server = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut seen = Vec::new();
            for response in responses {
                let mut chunk = vec![0; 65536];
                let read = stream.read(&mut chunk).await.unwrap();
                seen.extend_from_slice(&chunk[..read]);
                for part in response.chunks(piece.max(1)) {
                    stream.write_all(part).await.unwrap();
                    stream.flush().await.unwrap();
                    tokio::task::yield_now().await;
                }
            }
            seen
        });
        (address, server)
    }

    fn later() -> Instant {
        Instant::now() + std::time::Duration::from_secs(10)
    }

    async fn connect(address: &str) -> Connection {
        Connection::new(TcpStream::connect(address).await.unwrap())
    }

    fn head<'a>(
        method: &'a Method,
        path: &'a PathAndQuery,
        host: &'a HeaderValue,
        headers: &'a Fields,
    ) -> RequestHead<'a> {
        RequestHead {
            method,
            path_and_query: path,
            host,
            headers,
            request_id: None,
        }
    }

    #[tokio::test]
    async fn writes_the_request_and_reads_length_and_chunked_bodies_in_any_pieces() {
        let chunked: &[u8] = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-type: text/event-stream\r\n\r\n5;x=y\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\ntrailer: t\r\n\r\n";
        let sized: &[u8] =
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 2\r\nx-a: 1\r\nx-a: 2\r\n\r\nok";
        for piece in [1, 3, 7, 1000] {
            let (address, server) = scripted(vec![chunked, sized], piece).await;
            let mut map = HeaderMap::new();
            // Replaced by the request's own id.
            map.insert("x-request-id", HeaderValue::from_static("from-the-client"));
            map.insert(header::CONTENT_LENGTH, HeaderValue::from_static("999"));
            map.insert(header::HOST, HeaderValue::from_static("gateway"));
            map.insert(header::EXPECT, HeaderValue::from_static("100-continue"));
            let headers = Fields::from_map(&map);
            let host = HeaderValue::from_static("engine:8000");
            let method = Method::POST;
            let path = PathAndQuery::from_static("/v1/chat/completions?a=1");
            let id = HeaderValue::from_static("r1");
            let request = RequestHead {
                request_id: Some(&id),
                ..head(&method, &path, &host, &headers)
            };

            let (parts, mut body) = connect(&address)
                .await
                .send(&request, &Bytes::from_static(b"{}"), later())
                .await
                .unwrap();
            assert_eq!(parts.status, 200);
            assert_eq!(
                parts.headers.get("content-type"),
                Some(&b"text/event-stream"[..])
            );
            let mut frames = Vec::new();
            while let Some(frame) = body.frame().await {
                frames.push(frame.unwrap().into_data().unwrap());
            }
            assert_eq!(frames.concat(), b"hello world", "pieces of {piece}");
            assert!(body.is_end_stream());
            let connection = body.take_reusable().expect("kept alive");

            let (parts, mut body) = connection
                .send(&request, &Bytes::from_static(b"{\"b\":1}"), later())
                .await
                .unwrap();
            assert_eq!(parts.status, 201, "1xx skipped");
            let values: Vec<_> = parts.headers.get_all("x-a").collect();
            assert_eq!(values, [b"1", b"2"]);
            let data = body.frame().await.unwrap().unwrap().into_data().unwrap();
            assert_eq!(data, "ok");
            assert!(body.is_end_stream(), "ends with its last byte");
            assert!(body.take_reusable().is_some());

            let seen = String::from_utf8(server.await.unwrap()).unwrap();
            assert!(
                seen.starts_with(
                    "POST /v1/chat/completions?a=1 HTTP/1.1\r\nhost: engine:8000\r\nx-request-id: r1\r\ncontent-length: 2\r\n\r\n{}"
                ),
                "{seen}"
            );
            assert!(
                !seen.contains("999"),
                "the client's content-length is replaced"
            );
            assert!(!seen.contains("gateway"), "the client's host is replaced");
            assert!(!seen.contains("100-continue"), "no expect");
            assert!(
                seen.ends_with("content-length: 7\r\n\r\n{\"b\":1}"),
                "{seen}"
            );
        }
    }

    #[tokio::test]
    async fn closes_and_malformed_responses_are_errors() {
        let cases: [(&[u8], &str); 5] = [
            (b"", "closed the connection before answering"),
            (b"HTTP/1.1 200 OK\r\ncontent-le", "inside the response head"),
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort",
                "middle of the response body",
            ),
            (
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
                "invalid chunk size",
            ),
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nab",
                "conflicting",
            ),
        ];
        for (response, expected) in cases {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let address = listener.local_addr().unwrap().to_string();
            tokio::spawn(async move {
                let (mut stream, _) = listener.accept().await.unwrap();
                let mut buffer = vec![0; 4096];
                let _ = stream.read(&mut buffer).await;
                stream.write_all(response).await.unwrap();
                // Dropping the stream closes the connection.
            });
            let headers = Fields::default();
            let host = HeaderValue::from_static("h");
            let method = Method::POST;
            let path = PathAndQuery::from_static("/");
            let request = head(&method, &path, &host, &headers);
            let error = match connect(&address)
                .await
                .send(&request, &Bytes::new(), later())
                .await
            {
                Err(error) => error,
                Ok((_parts, body)) => match body.collect().await {
                    Err(error) => error,
                    Ok(_) => panic!("the body should fail: {expected}"),
                },
            };
            assert!(error.to_string().contains(expected), "{error} / {expected}");
        }
    }

    #[tokio::test]
    async fn a_body_until_close_is_not_reusable_and_close_is_seen_when_idle() {
        let (address, server) = scripted(
            vec![b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok"],
            1000,
        )
        .await;
        let headers = Fields::default();
        let host = HeaderValue::from_static("h");
        let method = Method::GET;
        let path = PathAndQuery::from_static("/");
        let request = head(&method, &path, &host, &headers);
        let (_parts, mut body) = connect(&address)
            .await
            .send(&request, &Bytes::new(), later())
            .await
            .unwrap();
        while body.frame().await.is_some() {}
        assert!(body.take_reusable().is_none(), "connection: close");
        server.await.unwrap();

        // An idle connection the engine closed is stale.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let accept = tokio::spawn(async move { listener.accept().await.unwrap() });
        let connection = connect(&address).await;
        assert!(!connection.is_stale());
        drop(accept.await.unwrap());
        let mut stale = false;
        for _ in 0..100 {
            if connection.is_stale() {
                stale = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(stale, "the engine's close is noticed");
    }

    #[tokio::test]
    async fn no_response_head_before_the_deadline_is_a_timeout() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let server = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut buffer = vec![0; 4096];
            let _ = stream.read(&mut buffer).await;
            // Answers only after the client's deadline.
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                .await;
        });
        let headers = Fields::default();
        let host = HeaderValue::from_static("h");
        let method = Method::POST;
        let path = PathAndQuery::from_static("/");
        let request = head(&method, &path, &host, &headers);
        let started = Instant::now();
        let deadline = started + std::time::Duration::from_millis(100);
        let result = connect(&address)
            .await
            .send(&request, &Bytes::new(), deadline)
            .await;
        assert!(matches!(result, Err(H1Error::Timeout)), "a timeout");
        let waited = started.elapsed();
        assert!(
            waited >= std::time::Duration::from_millis(100)
                && waited < std::time::Duration::from_millis(450),
            "{waited:?}"
        );
        server.abort();
    }
}
