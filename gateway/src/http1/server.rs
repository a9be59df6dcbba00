//! The HTTP/1.1 server of the API port: one task per client connection that reads each request
//! head, calls the service, and writes the response itself.
//!
//! hyper's server connection was about 14k of the gateway's ~37k instructions per proxied
//! request (callgrind, docs/benchmarks.md): a dispatcher state machine, a body channel, and
//! a header map encoded through several layers. Here the connection task parses the head
//! with httparse (as hyper does) into a [`RequestHead`] whose header fields are offsets into
//! the read buffer ([`super::fields`]; a [`Handler`] that needs an `http::Request` makes one),
//! hands a body that is already in the buffer over without a copy, and writes the response
//! head and the frames that are ready in one write.
//!
//! What a client gets (RFC 9112):
//! - keep-alive by default on HTTP/1.1, on request on HTTP/1.0; pipelined requests are
//!   answered in order;
//! - request bodies with a content-length or `transfer-encoding: chunked` (other codings:
//!   501; both headers, or a bad length: 400); `Expect: 100-continue` is answered before the
//!   body is read;
//! - responses with a content-length when the size is known, chunked otherwise (HTTP/1.0:
//!   until close), and a `date` header;
//! - a client that closes its connection, or resets it, while its request is being served
//!   drops the request (the proxy then aborts the engine request);
//! - limits: a head of at most 64 KiB and 100 headers (431 above); a head must be complete
//!   within [`ServerConfig::header_timeout`] of its first byte, and each next part of a body
//!   must arrive within it; an idle connection is closed after
//!   [`ServerConfig::keep_alive_timeout`];
//! - a client that reads nothing of its response for [`ServerConfig::send_timeout`] is
//!   disconnected;
//! - on shutdown, idle connections close at once and busy ones after their response.

use std::future::{poll_fn, Future};
use std::pin::{pin, Pin};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Uri, Version};
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use super::fields::is_named;
use super::{
    add_content_length, content_length, header_spans, Decoded, Decoder, Fields, FramingError,
};
use crate::error::ApiError;

/// Read buffer growth step.
const READ_CHUNK: usize = 8 * 1024;
/// Largest request head accepted.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Most request headers accepted.
const MAX_HEADERS: usize = 100;
/// Bytes of later (pipelined) requests read while a response is in progress; beyond this the
/// connection stops reading until the response is written.
const MAX_PIPELINED_BYTES: usize = 64 * 1024;
/// How long, and how many bytes, a connection closed before the client finished sending
/// still reads what arrives (see `Connection::linger`).
const LINGER_TIME: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 16 << 20;
/// Response bytes gathered before a write even when more frames are ready.
const FLUSH_BYTES: usize = 64 * 1024;
/// Response data frames up to this size are copied behind the head (one write for a whole
/// small response); bigger ones are written on their own.
const COPY_FRAME_BYTES: usize = 16 * 1024;

/// Limits of client connections.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Longest wait for the rest of a request head once its first byte arrived, and between
    /// two reads of a request body.
    pub header_timeout: Duration,
    /// Longest wait for the next request on an idle keep-alive connection.
    pub keep_alive_timeout: Duration,
    /// A client that takes no byte of a response for this long is disconnected (nginx's
    /// `send_timeout`): a stalled reader must not hold an engine's slot forever.
    pub send_timeout: Duration,
    /// `Expect: 100-continue` is answered only for bodies up to this size (the service
    /// answers 413 to larger ones without reading them).
    pub max_body_bytes: usize,
}

/// Serve `service` on `listener` until `shutdown` completes, then wait for open connections
/// (streams included) to finish their current response.
pub async fn serve<S>(
    listener: TcpListener,
    service: S,
    config: ServerConfig,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()>
where
    S: Handler,
{
    let config = Arc::new(config);
    let stopping = CancellationToken::new();
    // Every connection task holds a sender: `recv` returns `None` once all have ended.
    let (open, mut all_closed) = tokio::sync::mpsc::channel::<()>(1);
    let mut shutdown = pin!(shutdown);
    while let Some(stream) = accept(&listener, shutdown.as_mut()).await {
        let connection = Connection::new(stream, service.clone(), config.clone(), &stopping);
        let open = open.clone();
        // Boxed before spawning: the connection's future holds the service's, some 8 KB, and
        // tokio moves an unboxed future several times on the way into its task (with a new
        // connection per request, 98.6 KB copied per request before, 8.8 KB after:
        // docs/benchmarks.md "Bytes moved per request").
        tokio::spawn(Box::pin(async move {
            connection.run().await;
            drop(open);
        }));
    }
    drop(listener);
    stopping.cancel();
    drop(open);
    let _ = all_closed.recv().await;
    Ok(())
}

/// The next connection, or `None` once `shutdown` completes.
pub async fn accept(
    listener: &TcpListener,
    mut shutdown: Pin<&mut impl Future<Output = ()>>,
) -> Option<TcpStream> {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => return Some(stream),
                Err(error) => accept_failed(error).await,
            },
            () = shutdown.as_mut() => return None,
        }
    }
}

/// Like hyper 0.14's server: a reset before accept is the client's business; anything else
/// (out of file descriptors) is logged and accepting pauses for a second.
async fn accept_failed(error: std::io::Error) {
    use std::io::ErrorKind;
    if matches!(
        error.kind(),
        ErrorKind::ConnectionRefused | ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset
    ) {
        return;
    }
    tracing::error!(%error, "cannot accept a connection");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// The read side of a client connection and the bytes read but not yet used.
pub struct Reader {
    stream: OwnedReadHalf,
    buffer: BytesMut,
}

impl Reader {
    fn poll_read(&mut self, context: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        if self.buffer.capacity() - self.buffer.len() < READ_CHUNK / 4 {
            self.buffer.reserve(READ_CHUNK);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.stream), context, &mut self.buffer)
    }

    /// Read what arrives while a response is in progress (the next pipelined requests), and
    /// say whether the client closed or reset the connection.
    fn poll_client_gone(&mut self, context: &mut Context<'_>) -> bool {
        while self.buffer.len() < MAX_PIPELINED_BYTES {
            match self.poll_read(context) {
                Poll::Pending => return false,
                Poll::Ready(Ok(0) | Err(_)) => return true,
                Poll::Ready(Ok(_)) => {}
            }
        }
        false
    }
}

/// A request the connection cannot hand to the service.
#[derive(Debug, thiserror::Error)]
enum HeadError {
    #[error("{0}")]
    Malformed(String),
    #[error("the request head is larger than {MAX_HEAD_BYTES} bytes or has more than {MAX_HEADERS} headers")]
    TooLarge,
    #[error(
        "transfer-encoding `{0}` is not supported: send the body with a content-length or chunked"
    )]
    UnsupportedEncoding(String),
}

impl HeadError {
    fn response(&self) -> Response {
        let (status, code) = match self {
            HeadError::Malformed(_) => (StatusCode::BAD_REQUEST, "malformed_request"),
            HeadError::TooLarge => (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "request_head_too_large",
            ),
            HeadError::UnsupportedEncoding(_) => {
                (StatusCode::NOT_IMPLEMENTED, "unsupported_transfer_encoding")
            }
        };
        ApiError::Protocol {
            status,
            code,
            message: self.to_string(),
        }
        .into_response()
    }
}

/// What the service gets of a request besides its body: the request line and the header
/// fields as they arrived (see [`Fields`]).
pub struct RequestHead {
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    pub headers: Fields,
}

impl RequestHead {
    /// The head of a request that did not come through this server (the router's own proxy
    /// route, tests).
    pub fn from_parts(parts: http::request::Parts) -> Self {
        Self {
            headers: Fields::from_map(&parts.headers),
            method: parts.method,
            uri: parts.uri,
            version: parts.version,
        }
    }

    /// An `http::Request`, for services that need one (the router); `Err` is the 400 for a
    /// field a `HeaderMap` refuses (httparse accepts none such: a safety net).
    pub fn into_request<B>(self, body: B) -> Result<Request<B>, Box<Response>> {
        let headers = self
            .headers
            .to_map()
            .map_err(|invalid| Box::new(HeadError::Malformed(invalid.to_string()).response()))?;
        let (mut parts, ()) = Request::new(()).into_parts();
        parts.method = self.method;
        parts.uri = self.uri;
        parts.version = self.version;
        parts.headers = headers;
        Ok(Request::from_parts(parts, body))
    }
}

/// What a [`Handler`] answers: a response, the gateway's own headers for it, and header
/// fields forwarded as they came (an engine's, see [`super::fields`]). A proxied reply has
/// all three, without a `HeaderMap` built for any: the request id and replica in `headers`,
/// the engine's in `forwarded`, and an empty map. They are written in that order; a name in
/// `headers` replaces the fields and map entries of that name, and a name in the map
/// replaces the forwarded fields of that name.
pub struct Reply {
    pub response: Response,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub forwarded: Fields,
}

impl From<Response> for Reply {
    fn from(response: Response) -> Self {
        Self {
            response,
            headers: Vec::new(),
            forwarded: Fields::default(),
        }
    }
}

impl Reply {
    /// Set one of the gateway's headers (replacing an earlier value).
    pub fn set_header(&mut self, name: HeaderName, value: HeaderValue) {
        self.headers.retain(|(set, _)| *set != name);
        self.headers.push((name, value));
    }
}

impl IntoResponse for Reply {
    /// One response with every header (for services other than this server: the router's
    /// own proxy route, tests).
    fn into_response(self) -> Response {
        let Self {
            mut response,
            headers: own,
            forwarded,
        } = self;
        let forwarded = match forwarded.to_map() {
            Ok(map) => map,
            Err(invalid) => {
                return ApiError::Protocol {
                    status: StatusCode::BAD_GATEWAY,
                    code: "invalid_engine_response",
                    message: invalid.to_string(),
                }
                .into_response()
            }
        };
        let headers = response.headers_mut();
        let mut current = None;
        for (name, value) in forwarded {
            // `None`: another value of the name before.
            if let Some(name) = name {
                current = (!headers.contains_key(&name)).then_some(name);
            }
            if let Some(name) = &current {
                headers.append(name.clone(), value);
            }
        }
        for (name, value) in own {
            headers.insert(name, value);
        }
        response
    }
}

/// What the server calls for each request.
pub trait Handler: Clone + Send + 'static {
    type Future: Future<Output = Reply> + Send + 'static;
    fn call(&self, head: Box<RequestHead>, body: Body) -> Self::Future;
}

impl<F, R> Handler for F
where
    F: Fn(Box<RequestHead>, Body) -> R + Clone + Send + 'static,
    R: Future<Output = Reply> + Send + 'static,
{
    type Future = R;
    fn call(&self, head: Box<RequestHead>, body: Body) -> R {
        self(head, body)
    }
}

/// A parsed request head.
struct Head {
    /// Boxed: it goes by value through the service's layers, and a move of the head was a
    /// 176-byte copy (docs/benchmarks.md, "Bytes moved per request").
    request: Box<RequestHead>,
    body: Decoder,
    keep_alive: bool,
    expect_continue: bool,
}

/// How a response body is delimited on the wire.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Framing {
    None,
    Length(u64),
    Chunked,
    UntilClose,
}

struct Connection<S> {
    /// `None` while a request body that was not yet in the buffer has it.
    reader: Option<Reader>,
    writer: OwnedWriteHalf,
    /// The response bytes not yet written.
    output: Vec<u8>,
    service: S,
    config: Arc<ServerConfig>,
    stopping: CancellationToken,
    stopped: Pin<Box<WaitForCancellationFutureOwned>>,
    /// The head and idle timeouts; one timer per connection, moved for each wait.
    timer: Pin<Box<Sleep>>,
}

enum Wait {
    Read(std::io::Result<usize>),
    Stop,
    Timeout,
}

impl<S: Handler> Connection<S> {
    fn new(
        stream: TcpStream,
        service: S,
        config: Arc<ServerConfig>,
        stopping: &CancellationToken,
    ) -> Self {
        // Without TCP_NODELAY, small SSE frames wait for the client's delayed ACK (about 40 ms).
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY");
        }
        let (read, writer) = stream.into_split();
        Self {
            reader: Some(Reader {
                stream: read,
                buffer: BytesMut::with_capacity(READ_CHUNK),
            }),
            writer,
            output: Vec::with_capacity(READ_CHUNK),
            timer: Box::pin(tokio::time::sleep(config.keep_alive_timeout)),
            service,
            config,
            stopping: stopping.clone(),
            stopped: Box::pin(stopping.clone().cancelled_owned()),
        }
    }

    async fn run(mut self) {
        loop {
            let head = match self.read_head().await {
                Ok(Some(head)) => head,
                Ok(None) => return,
                Err(error) => {
                    tracing::debug!(%error, "rejected a client request");
                    let _ = self
                        .write_response(error.response().into(), Version::HTTP_11, false, false)
                        .await;
                    if let Some(reader) = self.reader.take() {
                        self.linger(reader).await;
                    }
                    return;
                }
            };
            let in_flight = crate::slice::InFlight::start();
            let more = self.exchange(head).await;
            drop(in_flight);
            if !more {
                return;
            }
        }
    }

    /// The next request head; `None` when the connection should close quietly (the client
    /// closed it, it stayed idle too long, the server is stopping).
    async fn read_head(&mut self) -> Result<Option<Head>, HeadError> {
        let Some(reader) = self.reader.as_mut() else {
            return Ok(None);
        };
        let mut idle = reader.buffer.is_empty();
        let mut armed = false;
        loop {
            if !reader.buffer.is_empty() {
                if let Some(head) = parse_head(&mut reader.buffer)? {
                    return Ok(Some(head));
                }
                if reader.buffer.len() > MAX_HEAD_BYTES {
                    return Err(HeadError::TooLarge);
                }
            }
            let config = &self.config;
            let timer = &mut self.timer;
            let stopped = &mut self.stopped;
            let event = poll_fn(|context| {
                if let Poll::Ready(read) = reader.poll_read(context) {
                    return Poll::Ready(Wait::Read(read));
                }
                if idle && stopped.as_mut().poll(context).is_ready() {
                    return Poll::Ready(Wait::Stop);
                }
                // The clock is read only when the connection has to wait.
                if !armed {
                    let wait = if idle {
                        config.keep_alive_timeout
                    } else {
                        config.header_timeout
                    };
                    timer.as_mut().reset(Instant::now() + wait);
                    armed = true;
                }
                match timer.as_mut().poll(context) {
                    Poll::Ready(()) => Poll::Ready(Wait::Timeout),
                    Poll::Pending => Poll::Pending,
                }
            })
            .await;
            match event {
                Wait::Read(Ok(0)) | Wait::Read(Err(_)) | Wait::Stop | Wait::Timeout => {
                    return Ok(None)
                }
                Wait::Read(Ok(_)) => {
                    if idle {
                        // The head's own deadline starts with its first bytes.
                        idle = false;
                        armed = false;
                    }
                }
            }
        }
    }

    /// Serve one request; whether the connection takes another.
    async fn exchange(&mut self, head: Head) -> bool {
        let Head {
            request,
            body: decoder,
            keep_alive,
            expect_continue,
        } = head;
        let version = request.version;
        let head_request = request.method == Method::HEAD;
        let Some(reader) = self.reader.as_mut() else {
            return false;
        };
        let mut lent: Option<Home> = None;
        let body = match decoder {
            Decoder::Done => RequestBody::Full(None),
            Decoder::Length(length) if reader.buffer.len() as u64 >= length => {
                // The usual case: the whole body came with the head.
                RequestBody::Full(Some(reader.buffer.split_to(length as usize).freeze()))
            }
            decoder => {
                let wanted = decoder
                    .remaining()
                    .is_none_or(|length| length <= self.config.max_body_bytes as u64);
                if expect_continue && wanted {
                    let interim = b"HTTP/1.1 100 Continue\r\n\r\n";
                    let timeout = self.config.send_timeout;
                    if send(&mut self.writer, interim, timeout).await.is_err() {
                        return false;
                    }
                }
                let home = Arc::new(Mutex::new(None));
                lent = Some(home.clone());
                RequestBody::Stream(Box::new(StreamingBody {
                    reader: self.reader.take(),
                    decoder,
                    home,
                    timeout: self.config.header_timeout,
                    timer: None,
                }))
            }
        };
        // Pinned where it is made: the service future is several KiB, and a move of it was a
        // copy per request.
        let future = pin!(self.service.call(request, Body::new(body)));
        let response = self.until_ready(future, lent.as_ref()).await;
        let Some(response) = response else {
            return false;
        };
        // The reader back from the body, if not taken back above. If the body was not read to
        // its end (413, 401), the rest of it may still be arriving: the connection closes
        // after the response.
        let mut unread = None;
        match lent.and_then(|home| home.lock().ok().and_then(|mut slot| slot.take())) {
            Some((reader, true)) => self.reader = Some(reader),
            Some((reader, false)) => unread = Some(reader),
            None => {}
        }
        let keep_alive = keep_alive && self.reader.is_some() && !self.stopping.is_cancelled();
        let kept = self
            .write_response(response, version, head_request, keep_alive)
            .await;
        if let Some(reader) = unread {
            self.linger(reader).await;
        }
        kept
    }

    /// Close while the client may still be sending (a body not read, a rejected head): stop
    /// writing, then read and discard for a while, so that the client gets to read the
    /// response instead of a connection reset (nginx's lingering close).
    async fn linger(&mut self, mut reader: Reader) {
        let _ = self.writer.shutdown().await;
        let drain = async {
            let mut discarded = 0;
            while discarded < LINGER_BYTES {
                reader.buffer.clear();
                match poll_fn(|context| reader.poll_read(context)).await {
                    Ok(0) | Err(_) => return,
                    Ok(read) => discarded += read,
                }
            }
        };
        let _ = tokio::time::timeout(LINGER_TIME, drain).await;
    }

    /// Wait for `future` while watching the client: `None` if it closed the connection. While
    /// a request body has the reader (`lent`), the watch starts when the body gives it back
    /// read to its end (a generation can outlast its upload by minutes).
    async fn until_ready<T>(
        &mut self,
        mut future: Pin<&mut impl Future<Output = T>>,
        lent: Option<&Home>,
    ) -> Option<T> {
        let reader = &mut self.reader;
        poll_fn(|context| {
            if let Poll::Ready(value) = future.as_mut().poll(context) {
                return Poll::Ready(Some(value));
            }
            if let (None, Some(home)) = (&reader, lent) {
                *reader = home
                    .lock()
                    .ok()
                    .and_then(|mut slot| slot.take_if(|(_, complete)| *complete))
                    .map(|(returned, _)| returned);
            }
            if reader
                .as_mut()
                .is_some_and(|reader| reader.poll_client_gone(context))
            {
                return Poll::Ready(None);
            }
            Poll::Pending
        })
        .await
    }

    /// Write `response`; whether the connection stays open for another request.
    async fn write_response(
        &mut self,
        reply: Reply,
        version: Version,
        head_request: bool,
        mut keep_alive: bool,
    ) -> bool {
        let Reply {
            response,
            headers: own,
            forwarded,
        } = reply;
        let (parts, mut body) = response.into_parts();
        let status = parts.status;
        let bodyless = head_request
            || status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED;
        let declared = if parts.headers.contains_key(header::CONTENT_LENGTH) {
            let values = parts.headers.get_all(header::CONTENT_LENGTH).iter();
            content_length(values.map(HeaderValue::as_bytes))
        } else {
            content_length(forwarded.get_all("content-length"))
        };
        let declared = match declared {
            Ok(declared) => declared,
            Err(_) => {
                tracing::warn!("a response with an invalid content-length was not sent");
                return false;
            }
        };
        let (framing, add_length) = if bodyless {
            (Framing::None, None)
        } else if let Some(length) = declared {
            (Framing::Length(length), None)
        } else if let Some(length) = body.size_hint().exact() {
            (Framing::Length(length), Some(length))
        } else if version == Version::HTTP_11 {
            (Framing::Chunked, None)
        } else {
            keep_alive = false;
            (Framing::UntilClose, None)
        };
        encode_head(
            &mut self.output,
            status,
            (&own, &forwarded, &parts.headers),
            add_length,
            framing == Framing::Chunked,
            if !keep_alive {
                Some("close")
            } else if version == Version::HTTP_10 {
                Some("keep-alive")
            } else {
                None
            },
        );
        if framing == Framing::None {
            let kept = self.flush().await.is_ok() && keep_alive;
            drop(body);
            return kept;
        }
        let mut written: u64 = 0;
        loop {
            // Frames that are ready go into the same write; the bytes so far are written
            // before waiting for more (so each streamed event leaves at once).
            let mut next =
                poll_fn(|context| Poll::Ready(Pin::new(&mut body).poll_frame(context))).await;
            if next.is_pending() {
                if self.flush().await.is_err() {
                    return false;
                }
                let frame = poll_fn(|context| Pin::new(&mut body).poll_frame(context));
                match self.until_ready(pin!(frame), None).await {
                    Some(frame) => next = Poll::Ready(frame),
                    None => return false,
                }
            }
            let data = match next {
                Poll::Ready(None) => break,
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) if !data.is_empty() => data,
                    // Empty frames and trailers.
                    _ => continue,
                },
                Poll::Ready(Some(Err(error))) => {
                    // The client sees a cut response (no final chunk, or fewer bytes than
                    // announced), never a complete-looking one.
                    tracing::debug!(%error, "response body failed; closing the connection");
                    let _ = self.flush().await;
                    return false;
                }
                Poll::Pending => continue,
            };
            written += data.len() as u64;
            if let Framing::Length(length) = framing {
                if written > length {
                    tracing::warn!("a response body was longer than its content-length");
                    let _ = self.flush().await;
                    return false;
                }
            }
            if framing == Framing::Chunked {
                write_chunk_size(&mut self.output, data.len());
            }
            if data.len() <= COPY_FRAME_BYTES {
                self.output.extend_from_slice(&data);
            } else if self.flush().await.is_err()
                || send(&mut self.writer, &data, self.config.send_timeout)
                    .await
                    .is_err()
            {
                return false;
            }
            if framing == Framing::Chunked {
                self.output.extend_from_slice(b"\r\n");
            }
            // A body whose frames are all ready (a large answer read quickly) is written as
            // it goes, not gathered whole.
            if self.output.len() >= FLUSH_BYTES && self.flush().await.is_err() {
                return false;
            }
        }
        match framing {
            Framing::Chunked => self.output.extend_from_slice(b"0\r\n\r\n"),
            Framing::Length(length) if written != length => {
                tracing::warn!("a response body was shorter than its content-length");
                keep_alive = false;
            }
            Framing::UntilClose => keep_alive = false,
            _ => {}
        }
        let kept = self.flush().await.is_ok() && keep_alive;
        // Dropped after the last write: what the body does when it ends (the engine connection
        // back to the pool, the access log line, the metrics) is then off the client's wait.
        drop(body);
        drop(parts);
        kept
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        if !self.output.is_empty() {
            let written = send(&mut self.writer, &self.output, self.config.send_timeout).await;
            self.output.clear();
            // An idle connection keeps a small buffer, whatever its largest answer was.
            self.output.shrink_to(READ_CHUNK);
            written?;
        }
        Ok(())
    }
}

/// Write all of `bytes`, unless the client takes none of them for `timeout`. The timer is armed
/// only when the write has to wait (the socket buffer is full): most writes complete at once.
async fn send(writer: &mut OwnedWriteHalf, bytes: &[u8], timeout: Duration) -> std::io::Result<()> {
    let mut written = 0;
    while written < bytes.len() {
        let mut write = pin!(writer.write(&bytes[written..]));
        let result = match poll_fn(|context| Poll::Ready(write.as_mut().poll(context))).await {
            Poll::Ready(result) => result,
            Poll::Pending => tokio::time::timeout(timeout, write)
                .await
                .unwrap_or_else(|_elapsed| Err(std::io::ErrorKind::TimedOut.into())),
        };
        match result? {
            0 => return Err(std::io::ErrorKind::WriteZero.into()),
            count => written += count,
        }
    }
    Ok(())
}

/// Parse a request head from `buffer`, taking it out of the buffer when complete.
fn parse_head(buffer: &mut BytesMut) -> Result<Option<Head>, HeadError> {
    // Parse, then keep only offsets, so the head can become shared `Bytes` that the header
    // values slice. The header array is not initialized: a request has a few headers.
    let (length, method, target, minor, spans) = {
        let mut headers =
            [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut []);
        let base = buffer.as_ptr() as usize;
        let parsed = httparse::ParserConfig::default().parse_request_with_uninit_headers(
            &mut request,
            buffer,
            &mut headers,
        );
        match parsed {
            Ok(httparse::Status::Complete(length)) if length > MAX_HEAD_BYTES => {
                return Err(HeadError::TooLarge)
            }
            Ok(httparse::Status::Complete(length)) => {
                let spans = header_spans(request.headers, base);
                let method = Method::from_bytes(request.method.unwrap_or("").as_bytes())
                    .map_err(|_| HeadError::Malformed("invalid method".into()))?;
                let path = request.path.unwrap_or("");
                let target = path.as_ptr() as usize - base;
                (
                    length,
                    method,
                    (target, target + path.len()),
                    request.version.unwrap_or(1),
                    spans,
                )
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
            Err(error) => {
                return Err(HeadError::Malformed(format!(
                    "malformed HTTP request: {error}"
                )))
            }
        }
    };
    let head = buffer.split_to(length).freeze();
    let uri = http::Uri::from_maybe_shared(head.slice(target.0..target.1))
        .map_err(|error| HeadError::Malformed(format!("invalid request target: {error}")))?;
    // The headers that change how the request is read, noted in the one pass (see
    // `super::fields` for why the fields are not put in a `HeaderMap`).
    let mut transfer_encoding = false;
    let mut length = None;
    let mut connection_header = false;
    let mut expect_header = false;
    for &(name_start, name_end, value_start, value_end) in &spans {
        let name = &head[name_start..name_end];
        let value = &head[value_start..value_end];
        if is_named(name, "content-length") {
            length = add_content_length(length, value)
                .map_err(|reason| HeadError::Malformed(reason.into()))?;
        } else if is_named(name, "transfer-encoding") {
            transfer_encoding = true;
        } else if is_named(name, "connection") {
            connection_header = true;
        } else if is_named(name, "expect") {
            expect_header = true;
        }
    }
    let headers = Fields::new(head, spans);
    let version = if minor == 0 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    let body = if transfer_encoding {
        transfer_coding(version, length.is_some(), &headers)?
    } else {
        Decoder::length(length.unwrap_or(0))
    };
    let keep_alive = match version {
        Version::HTTP_11 => !(connection_header && headers.has_token("connection", "close")),
        _ => connection_header && headers.has_token("connection", "keep-alive"),
    };
    // An HTTP/1.0 client cannot take an interim response (RFC 9110 section 10.1.1).
    let expect_continue =
        expect_header && version == Version::HTTP_11 && headers.has_token("expect", "100-continue");
    Ok(Some(Head {
        request: Box::new(RequestHead {
            method,
            uri,
            version,
            headers,
        }),
        body,
        keep_alive,
        expect_continue,
    }))
}

/// The body of a request with a transfer-encoding (RFC 9112 section 6.3): chunked is the
/// only coding accepted. A request that could be read two ways (with a content-length too)
/// is refused: it is how requests are smuggled past proxies.
fn transfer_coding(
    version: Version,
    has_length: bool,
    headers: &Fields,
) -> Result<Decoder, HeadError> {
    if version == Version::HTTP_10 {
        return Err(HeadError::Malformed(
            "transfer-encoding is not allowed in an HTTP/1.0 request".into(),
        ));
    }
    if has_length {
        return Err(HeadError::Malformed(
            "the request has both transfer-encoding and content-length".into(),
        ));
    }
    let codings: Vec<&[u8]> = headers
        .get_all("transfer-encoding")
        .flat_map(|value| value.split(|&byte| byte == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|coding| !coding.is_empty())
        .collect();
    match codings.as_slice() {
        [only] if only.eq_ignore_ascii_case(b"chunked") => Ok(Decoder::chunked()),
        [.., last] if !last.eq_ignore_ascii_case(b"chunked") => Err(HeadError::Malformed(
            "the last transfer-encoding of a request must be chunked".into(),
        )),
        [] => Err(HeadError::Malformed("empty transfer-encoding".into())),
        _ => Err(HeadError::UnsupportedEncoding(
            codings
                .iter()
                .map(|coding| String::from_utf8_lossy(coding))
                .collect::<Vec<_>>()
                .join(", "),
        )),
    }
}

/// The status line and headers. Connection-level headers are the connection's own:
/// `connection`, `keep-alive` and `transfer-encoding` of the response are not sent.
fn encode_head(
    output: &mut Vec<u8>,
    status: StatusCode,
    (own, forwarded, headers): (&[(HeaderName, HeaderValue)], &Fields, &HeaderMap),
    add_length: Option<u64>,
    chunked: bool,
    connection: Option<&str>,
) {
    output.extend_from_slice(b"HTTP/1.1 ");
    output.extend_from_slice(status.as_str().as_bytes());
    output.push(b' ');
    output.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    output.extend_from_slice(b"\r\n");
    let mut has_date = false;
    let is_own = |name: &[u8]| own.iter().any(|(own, _)| is_named(name, own.as_str()));
    for (name, value) in own {
        has_date |= name == header::DATE;
        output.extend_from_slice(name.as_str().as_bytes());
        output.extend_from_slice(b": ");
        output.extend_from_slice(value.as_bytes());
        output.extend_from_slice(b"\r\n");
    }
    for (name, value) in forwarded.iter() {
        let skipped = match name.len() {
            10 => is_named(name, "connection") || is_named(name, "keep-alive"),
            17 => is_named(name, "transfer-encoding"),
            _ => false,
        };
        if skipped || is_own(name) || headers.keys().any(|set| is_named(name, set.as_str())) {
            continue;
        }
        has_date |= is_named(name, "date");
        output.extend_from_slice(name);
        output.extend_from_slice(b": ");
        output.extend_from_slice(value);
        output.extend_from_slice(b"\r\n");
    }
    for (name, value) in headers {
        if name == header::CONNECTION
            || name == header::TRANSFER_ENCODING
            || name.as_str() == "keep-alive"
            || is_own(name.as_str().as_bytes())
        {
            continue;
        }
        has_date |= name == header::DATE;
        output.extend_from_slice(name.as_str().as_bytes());
        output.extend_from_slice(b": ");
        output.extend_from_slice(value.as_bytes());
        output.extend_from_slice(b"\r\n");
    }
    if !has_date {
        output.extend_from_slice(b"date: ");
        write_date(output);
        output.extend_from_slice(b"\r\n");
    }
    if let Some(length) = add_length {
        output.extend_from_slice(b"content-length: ");
        output.extend_from_slice(itoa::Buffer::new().format(length).as_bytes());
        output.extend_from_slice(b"\r\n");
    }
    if chunked {
        output.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    if let Some(connection) = connection {
        output.extend_from_slice(b"connection: ");
        output.extend_from_slice(connection.as_bytes());
        output.extend_from_slice(b"\r\n");
    }
    output.extend_from_slice(b"\r\n");
}

fn write_chunk_size(output: &mut Vec<u8>, size: usize) {
    use std::io::Write;
    // Writing to a Vec cannot fail.
    let _ = write!(output, "{size:x}\r\n");
}

/// The current time as an HTTP date, formatted once per second per thread.
fn write_date(output: &mut Vec<u8>) {
    use std::cell::RefCell;
    thread_local! {
        static DATE: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let now = SystemTime::now();
    let second = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    DATE.with_borrow_mut(|(cached, text)| {
        if *cached != second {
            *cached = second;
            *text = httpdate::fmt_http_date(now);
        }
        output.extend_from_slice(text.as_bytes());
    });
}

/// What went wrong reading a request body that was not all in the buffer with its head.
#[derive(Debug, thiserror::Error)]
pub enum RequestBodyError {
    #[error("the client closed the connection in the middle of the request body")]
    Closed,
    #[error("no part of the request body arrived for {}s", .0.as_secs_f64())]
    Timeout(Duration),
    #[error("the request body is not valid chunked encoding: {0}")]
    Framing(#[from] FramingError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// A request body as the service reads it.
pub enum RequestBody {
    /// All of it (or nothing left): it came with the head.
    Full(Option<Bytes>),
    /// Read from the connection as the service asks for it.
    Stream(Box<StreamingBody>),
}

/// Where a streamed request body leaves the connection's reader when dropped, with whether
/// the body was read to its end.
type Home = Arc<Mutex<Option<(Reader, bool)>>>;

/// A request body still on the connection. It holds the connection's reader, and gives it
/// back (to `home`) when dropped.
pub struct StreamingBody {
    reader: Option<Reader>,
    decoder: Decoder,
    /// Where the reader goes back to when the body is dropped, with whether the body was
    /// read to its end.
    home: Home,
    timeout: Duration,
    timer: Option<Pin<Box<Sleep>>>,
}

impl StreamingBody {
    fn poll_data(
        &mut self,
        context: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, RequestBodyError>>> {
        let Some(reader) = self.reader.as_mut() else {
            return Poll::Ready(None);
        };
        loop {
            match self.decoder.decode(&mut reader.buffer) {
                Ok(Decoded::Data(data)) => return Poll::Ready(Some(Ok(data))),
                Ok(Decoded::End) => return Poll::Ready(None),
                Ok(Decoded::More) => {}
                Err(error) => return Poll::Ready(Some(Err(error.into()))),
            }
            match reader.poll_read(context) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Some(Err(RequestBodyError::Closed))),
                Poll::Ready(Ok(_)) => {
                    self.timer = None;
                }
                Poll::Ready(Err(error)) => return Poll::Ready(Some(Err(error.into()))),
                Poll::Pending => {
                    let timeout = self.timeout;
                    let timer = self
                        .timer
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                    return match timer.as_mut().poll(context) {
                        Poll::Ready(()) => {
                            Poll::Ready(Some(Err(RequestBodyError::Timeout(timeout))))
                        }
                        Poll::Pending => Poll::Pending,
                    };
                }
            }
        }
    }
}

impl Drop for StreamingBody {
    fn drop(&mut self) {
        if let (Some(reader), Ok(mut home)) = (self.reader.take(), self.home.lock()) {
            *home = Some((reader, self.decoder == Decoder::Done));
        }
    }
}

impl HttpBody for RequestBody {
    type Data = Bytes;
    type Error = RequestBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, RequestBodyError>>> {
        match self.get_mut() {
            RequestBody::Full(data) => Poll::Ready(data.take().map(|data| Ok(Frame::data(data)))),
            RequestBody::Stream(body) => body
                .poll_data(context)
                .map(|data| data.map(|data| data.map(Frame::data))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Full(data) => data.is_none(),
            RequestBody::Stream(body) => body.decoder == Decoder::Done,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Full(data) => {
                SizeHint::with_exact(data.as_ref().map_or(0, |data| data.len() as u64))
            }
            RequestBody::Stream(body) => body
                .decoder
                .remaining()
                .map_or_else(SizeHint::default, SizeHint::with_exact),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine_fields(pairs: &[(&'static str, &'static str)]) -> Fields {
        let mut map = HeaderMap::new();
        for &(name, value) in pairs {
            map.append(name, HeaderValue::from_static(value));
        }
        Fields::from_map(&map)
    }

    #[test]
    fn a_reply_as_one_response_keeps_the_precedence_of_its_headers() {
        let mut response = Response::new(Body::empty());
        response
            .headers_mut()
            .insert("x-map", HeaderValue::from_static("map"));
        let mut reply = Reply {
            response,
            headers: Vec::new(),
            forwarded: engine_fields(&[
                ("x-engine", "1"),
                ("x-engine", "2"),
                ("x-map", "engine"),
                ("x-request-id", "engine"),
            ]),
        };
        reply.set_header(
            HeaderName::from_static("x-request-id"),
            HeaderValue::from_static("first"),
        );
        reply.set_header(
            HeaderName::from_static("x-request-id"),
            HeaderValue::from_static("gateway"),
        );
        assert_eq!(reply.headers.len(), 1, "set_header replaces");
        let response = reply.into_response();
        let values = |name: &str| -> Vec<&str> {
            response
                .headers()
                .get_all(name)
                .iter()
                .map(|value| value.to_str().unwrap_or(""))
                .collect()
        };
        assert_eq!(values("x-engine"), ["1", "2"]);
        assert_eq!(values("x-map"), ["map"]);
        assert_eq!(values("x-request-id"), ["gateway"]);
    }

    #[test]
    fn an_engine_field_a_header_map_refuses_is_a_502() {
        let reply = Reply {
            response: Response::new(Body::empty()),
            headers: Vec::new(),
            forwarded: Fields::new(Bytes::from_static(b"bad name: v\r\n"), vec![(0, 8, 10, 11)]),
        };
        assert_eq!(reply.into_response().status(), StatusCode::BAD_GATEWAY);
    }
}
