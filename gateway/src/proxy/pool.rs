//! Upstream connections of one serving thread: HTTP/1.1 keep-alive connections per replica
//! address, on hyper's connection API.
//!
//! hyper-util's legacy `Client` spawns a task per request to wait until the connection can
//! take the next one, and goes through its generic pool, connector and URI rewriting on every
//! request. Here a connection is given back by the response body when the engine's answer has
//! been read to the end (see `ProxyBody`), and checked out with a lock that only its own thread
//! takes: a request costs no task, no allocation and no cross-thread wake-up of its own.
//!
//! A connection whose response was not read to the end (client gone, stream cut, timeout) is
//! dropped, which closes it: the engine sees the cancel.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

type Sender = http1::SendRequest<Full<Bytes>>;

/// Why no response came back from a replica.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot connect: {0}")]
    Connect(#[source] std::io::Error),
    #[error("cannot connect: no answer within {0:?}")]
    ConnectTimeout(Duration),
    #[error("HTTP/1.1 handshake failed: {0}")]
    Handshake(#[source] hyper::Error),
    #[error("{0}")]
    Request(#[source] hyper::Error),
}

impl UpstreamError {
    /// Failed before the request could be sent (the `connect` kind of the upstream error
    /// metric), as opposed to a connection that broke while the request was in flight.
    pub fn is_connect(&self) -> bool {
        !matches!(self, UpstreamError::Request(_))
    }
}

#[derive(Clone, Debug)]
pub struct PoolConfig {
    pub connect_timeout: Duration,
    /// Idle connections older than this are closed.
    pub idle_timeout: Duration,
    pub max_idle_per_host: usize,
    /// TCP keep-alive probes on upstream connections after this much silence.
    pub tcp_keepalive: Duration,
}

/// The connection pool of one serving thread (see main: one gateway per thread).
pub struct Pool {
    shared: Arc<Shared>,
}

struct Shared {
    config: PoolConfig,
    hosts: Mutex<Hosts>,
}

#[derive(Default)]
struct Hosts {
    by_address: HashMap<Box<str>, Host, BuildHasherDefault<Fnv>>,
    sweeper_started: bool,
}

impl Hosts {
    fn host(&mut self, address: &str) -> &mut Host {
        // Two lookups on the first request to an address, one afterwards (no key allocation).
        if !self.by_address.contains_key(address) {
            let header = HeaderValue::from_str(address)
                .unwrap_or_else(|_| HeaderValue::from_static("localhost"));
            self.by_address.insert(
                address.into(),
                Host {
                    header,
                    idle: Vec::new(),
                },
            );
        }
        self.by_address
            .get_mut(address)
            .expect("inserted above when missing")
    }
}

struct Host {
    /// The `Host` header for this address, built once.
    header: HeaderValue,
    /// Most recently used last.
    idle: Vec<Idle>,
}

struct Idle {
    sender: Sender,
    since: Instant,
}

/// A connection lent to one request. Give it back with [`PooledConnection::release`] once the
/// response has been read to the end; dropping it closes the connection.
pub struct PooledConnection {
    sender: Sender,
    shared: Arc<Shared>,
}

impl PooledConnection {
    /// Back to the pool of `address`, to be reused by the next request to it.
    pub fn release(self, address: &str) {
        self.shared.release(address, self.sender);
    }
}

impl Pool {
    pub fn new(config: PoolConfig) -> Self {
        Self {
            shared: Arc::new(Shared {
                config,
                hosts: Mutex::new(Hosts::default()),
            }),
        }
    }

    /// Send `request` (origin-form URI, without `Host`) to `address` (`host:port`) on an idle
    /// connection, or a new one. A request that a reused connection closed before sending (the
    /// engine timed the idle connection out) is sent again on another one, as hyper's client
    /// does.
    pub async fn send(
        &self,
        address: &str,
        mut request: Request<Full<Bytes>>,
    ) -> Result<(Response<Incoming>, PooledConnection), UpstreamError> {
        loop {
            let (idle, host) = self.shared.checkout(address);
            request.headers_mut().insert(http::header::HOST, host);
            let (mut sender, reused) = match idle {
                Some(mut sender) => {
                    if !sender.is_ready() && sender.ready().await.is_err() {
                        continue;
                    }
                    (sender, true)
                }
                None => (self.shared.connect(address).await?, false),
            };
            match sender.try_send_request(request).await {
                Ok(response) => {
                    let connection = PooledConnection {
                        sender,
                        shared: self.shared.clone(),
                    };
                    return Ok((response, connection));
                }
                Err(mut error) => match error.take_message() {
                    Some(unsent) if reused => request = unsent,
                    _ => return Err(UpstreamError::Request(error.into_error())),
                },
            }
        }
    }

    /// Idle connections held, over all addresses (tests and debugging).
    pub fn idle_connections(&self) -> usize {
        self.shared
            .lock()
            .by_address
            .values()
            .map(|host| host.idle.len())
            .sum()
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Hosts> {
        // The critical sections cannot panic half-way; a poisoned lock is still consistent.
        self.hosts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A live idle connection to `address` if there is one, and the `Host` header for it.
    fn checkout(self: &Arc<Self>, address: &str) -> (Option<Sender>, HeaderValue) {
        let now = Instant::now();
        let mut hosts = self.lock();
        if !hosts.sweeper_started {
            hosts.sweeper_started = true;
            tokio::spawn(sweep(Arc::downgrade(self), self.config.idle_timeout));
        }
        let host = hosts.host(address);
        while let Some(idle) = host.idle.pop() {
            if !idle.sender.is_closed()
                && now.saturating_duration_since(idle.since) < self.config.idle_timeout
            {
                return (Some(idle.sender), host.header.clone());
            }
        }
        (None, host.header.clone())
    }

    fn release(&self, address: &str, sender: Sender) {
        if sender.is_closed() {
            return;
        }
        let mut hosts = self.lock();
        let host = hosts.host(address);
        if host.idle.len() < self.config.max_idle_per_host {
            host.idle.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }

    async fn connect(&self, address: &str) -> Result<Sender, UpstreamError> {
        let timeout = self.config.connect_timeout;
        let stream = tokio::time::timeout(timeout, TcpStream::connect(address))
            .await
            .map_err(|_elapsed| UpstreamError::ConnectTimeout(timeout))?
            .map_err(UpstreamError::Connect)?;
        // Without TCP_NODELAY a small request waits for the engine's delayed ACK.
        stream.set_nodelay(true).map_err(UpstreamError::Connect)?;
        let keepalive = socket2::TcpKeepalive::new().with_time(self.config.tcp_keepalive);
        if let Err(error) = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive) {
            tracing::debug!(%error, "cannot set TCP keep-alive on an upstream connection");
        }
        let (sender, connection) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(UpstreamError::Handshake)?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "upstream connection closed");
            }
        });
        Ok(sender)
    }
}

/// Closes idle connections older than `idle_timeout` and forgets closed ones, until the pool is
/// dropped. Checkout also skips them; this is for addresses that get no more requests.
async fn sweep(shared: Weak<Shared>, idle_timeout: Duration) {
    let period = (idle_timeout / 2).max(Duration::from_secs(1));
    let mut interval = tokio::time::interval_at(Instant::now() + period, period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let now = Instant::now();
        let mut hosts = shared.lock();
        hosts.by_address.retain(|_, host| {
            host.idle.retain(|idle| {
                !idle.sender.is_closed() && now.saturating_duration_since(idle.since) < idle_timeout
            });
            !host.idle.is_empty()
        });
    }
}

/// FNV-1a: the keys are short `host:port` strings chosen by discovery, not by clients, so
/// SipHash's flooding resistance buys nothing and costs a tenth of a request's instructions.
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv {
    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = (self.0 ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::BodyExt;
    use tokio::net::TcpListener;

    use super::*;

    /// An HTTP/1.1 server on port 0 answering "ok" and counting the connections it accepted.
    async fn counting_server() -> (String, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                counter.fetch_add(1, Ordering::SeqCst);
                let service = hyper::service::service_fn(|_request| async {
                    Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from("ok"))))
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        (address, accepted)
    }

    fn pool() -> Pool {
        Pool::new(PoolConfig {
            connect_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(60),
            max_idle_per_host: 8,
            tcp_keepalive: Duration::from_secs(60),
        })
    }

    fn request() -> Request<Full<Bytes>> {
        let mut request = Request::new(Full::new(Bytes::new()));
        *request.uri_mut() = http::Uri::from_static("/");
        request
    }

    #[tokio::test]
    async fn released_connections_are_reused_and_dropped_ones_closed() {
        let (address, accepted) = counting_server().await;
        let pool = pool();
        for _ in 0..3 {
            let (response, connection) = pool.send(&address, request()).await.unwrap();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(body, "ok");
            connection.release(&address);
        }
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            1,
            "one keep-alive connection"
        );
        assert_eq!(pool.idle_connections(), 1);

        // Not given back (as when the client leaves mid-response): the next request connects.
        let (_response, connection) = pool.send(&address, request()).await.unwrap();
        drop(connection);
        assert_eq!(pool.idle_connections(), 0);
        let (_response, _connection) = pool.send(&address, request()).await.unwrap();
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn refused_connection_is_a_connect_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        drop(listener);
        let error = pool().send(&address, request()).await.err().unwrap();
        assert!(error.is_connect(), "{error}");
    }
}
