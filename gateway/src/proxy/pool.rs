//! Upstream connections of one serving thread: HTTP/1.1 keep-alive connections per replica
//! address (see `h1`).
//!
//! A connection is given back by the response body when the engine's answer has been read to
//! the end (see `ProxyBody`), and checked out with a lock that only its own thread takes: a
//! request costs no task, no channel and no cross-thread wake-up of its own.
//!
//! A connection whose response was not read to the end (client gone, stream cut, timeout) is
//! dropped, which closes it: the engine sees the cancel.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use http::HeaderValue;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::h1::{Connection, H1Error, RequestHead, ResponseBody, ResponseHead};
use super::UpstreamRequest;

/// Why no response came back from a replica.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot connect: {0}")]
    Connect(#[source] std::io::Error),
    #[error("cannot connect: no answer within {0:?}")]
    ConnectTimeout(Duration),
    #[error("no response within {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Request(#[source] H1Error),
}

impl UpstreamError {
    /// Failed before the request could be sent (the `connect` kind of the upstream error
    /// metric), as opposed to a connection that broke while the request was in flight.
    pub fn is_connect(&self) -> bool {
        !matches!(self, UpstreamError::Request(_) | UpstreamError::Timeout(_))
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
#[derive(Clone)]
pub struct Pool {
    shared: Arc<Shared>,
}

struct Shared {
    config: PoolConfig,
    hosts: Mutex<Hosts>,
}

#[derive(Default)]
struct Hosts {
    by_address: HashMap<Box<str>, Arc<Host>, BuildHasherDefault<Fnv>>,
    sweeper_started: bool,
}

impl Hosts {
    /// The host of `address`: one lookup (the handle is cloned out, so no second one is
    /// needed to return it), and an insert the first time.
    fn host(&mut self, address: &str, max_idle: usize) -> Arc<Host> {
        if let Some(host) = self.by_address.get(address) {
            return host.clone();
        }
        let host = Arc::new(Host {
            header: HeaderValue::from_str(address)
                .unwrap_or_else(|_| HeaderValue::from_static("localhost")),
            idle: Mutex::new(Vec::new()),
            max_idle,
        });
        self.by_address.insert(address.into(), host.clone());
        host
    }
}

struct Host {
    /// The `Host` header for this address, built once.
    header: HeaderValue,
    /// Most recently used last.
    idle: Mutex<Vec<Idle>>,
    /// Idle connections kept at most (the pool's `max_idle_per_host`).
    max_idle: usize,
}

impl Host {
    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        // The critical sections cannot panic half-way; a poisoned lock is still consistent.
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Where a connection checked out of the pool goes back: the response body holds it, so
/// giving the connection back looks nothing up.
pub struct Home(Arc<Host>);

impl Home {
    /// Give back a connection whose response was read to the end.
    pub fn release(&self, connection: Connection) {
        let mut idle = self.0.idle();
        if idle.len() < self.0.max_idle {
            idle.push(Idle {
                connection,
                since: Instant::now(),
            });
        }
    }
}

struct Idle {
    connection: Connection,
    since: Instant,
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

    /// Send a request (origin-form URI, without `Host`) to `address` (`host:port`) on an idle
    /// connection or a new one, and read the response head within `first_byte_timeout`
    /// (connecting included). A reused connection that the engine turns out to have closed
    /// before answering (its keep-alive ended as the request went out) is replaced by a new
    /// one once, as hyper's client does.
    pub async fn send(
        &self,
        address: &str,
        upstream: &UpstreamRequest,
        first_byte_timeout: Duration,
    ) -> Result<(ResponseHead, ResponseBody, Home), UpstreamError> {
        let deadline = Instant::now() + first_byte_timeout;
        let failed = |error| match error {
            H1Error::Timeout => UpstreamError::Timeout(first_byte_timeout),
            error => UpstreamError::Request(error),
        };
        let (idle, host) = self.shared.checkout(address);
        let request = RequestHead {
            method: &upstream.method,
            path_and_query: &upstream.path_and_query,
            host: &host.header,
            headers: &upstream.headers,
            request_id: Some(&upstream.request_id),
        };
        let body = &upstream.body;
        let home = |(parts, body)| (parts, body, Home(host.clone()));
        if let Some(connection) = idle {
            match connection.send(&request, body, deadline).await {
                Err(H1Error::ClosedBeforeResponse) => {}
                Err(H1Error::Io(error))
                    if matches!(
                        error.kind(),
                        std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
                    ) => {}
                result => return result.map(home).map_err(failed),
            }
        }
        // A new connection counts against the same deadline (only this path pays for a timer).
        let connection = tokio::time::timeout_at(deadline, self.shared.connect(address))
            .await
            .map_err(|_elapsed| UpstreamError::Timeout(first_byte_timeout))??;
        connection
            .send(&request, body, deadline)
            .await
            .map(home)
            .map_err(failed)
    }

    pub fn idle_connections(&self) -> usize {
        self.shared
            .lock()
            .by_address
            .values()
            .map(|host| host.idle().len())
            .sum()
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Hosts> {
        // The critical sections cannot panic half-way; a poisoned lock is still consistent.
        self.hosts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A live idle connection to `address` if there is one, and the address's host.
    fn checkout(self: &Arc<Self>, address: &str) -> (Option<Connection>, Arc<Host>) {
        let now = Instant::now();
        let host = {
            let mut hosts = self.lock();
            if !hosts.sweeper_started {
                hosts.sweeper_started = true;
                tokio::spawn(sweep(Arc::downgrade(self), self.config.idle_timeout));
            }
            hosts.host(address, self.config.max_idle_per_host)
        };
        let mut idle = host.idle();
        while let Some(candidate) = idle.pop() {
            if now.saturating_duration_since(candidate.since) < self.config.idle_timeout
                && !candidate.connection.is_stale()
            {
                drop(idle);
                return (Some(candidate.connection), host);
            }
        }
        drop(idle);
        (None, host)
    }

    async fn connect(&self, address: &str) -> Result<Connection, UpstreamError> {
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
        Ok(Connection::new(stream))
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
            let mut idle = host.idle();
            idle.retain(|idle| {
                now.saturating_duration_since(idle.since) < idle_timeout
                    && !idle.connection.is_stale()
            });
            // A host is forgotten only when no request holds it (its connection would be
            // given back to a host the pool no longer knows, and closed).
            !idle.is_empty() || Arc::strong_count(host) > 1
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

    use http_body_util::{BodyExt, Full};
    use hyper_util::rt::TokioIo;
    use tokio::net::TcpListener;

    use super::*;
    use crate::http1::Fields;
    use bytes::Bytes;
    use http::uri::PathAndQuery;
    use http::Method;

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
                    Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from(
                        "ok",
                    ))))
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

    async fn send(pool: &Pool, address: &str) -> Result<(ResponseBody, Home), UpstreamError> {
        let path = PathAndQuery::from_static("/");
        let request = UpstreamRequest {
            method: Method::GET,
            path_and_query: path,
            headers: Fields::default(),
            request_id: HeaderValue::from_static("r"),
            body: Bytes::new(),
        };
        let (_parts, body, home) = pool
            .send(address, &request, Duration::from_secs(10))
            .await?;
        Ok((body, home))
    }

    #[tokio::test]
    async fn released_connections_are_reused_and_dropped_ones_closed() {
        let (address, accepted) = counting_server().await;
        let pool = pool();
        for _ in 0..3 {
            let (mut body, home) = send(&pool, &address).await.unwrap();
            let data = body.frame().await.unwrap().unwrap().into_data().unwrap();
            assert_eq!(data, "ok");
            home.release(body.take_reusable().unwrap());
        }
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            1,
            "one keep-alive connection"
        );
        assert_eq!(pool.idle_connections(), 1);

        // Not given back (as when the client leaves mid-response): the next request connects.
        let (body, _home) = send(&pool, &address).await.unwrap();
        drop(body);
        assert_eq!(pool.idle_connections(), 0);
        let _body = send(&pool, &address).await.unwrap();
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn connection_close_answers_are_not_reused() {
        // Answers `connection: close`, then closes.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let service = hyper::service::service_fn(|_request| async {
                    Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from(
                        "ok",
                    ))))
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .keep_alive(false)
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        let pool = pool();
        for _ in 0..3 {
            let (mut body, _home) = send(&pool, &address).await.unwrap();
            let data = body.frame().await.unwrap().unwrap().into_data().unwrap();
            assert_eq!(data, "ok");
            assert!(body.frame().await.is_none());
            assert!(body.take_reusable().is_none(), "connection: close");
        }
    }

    #[tokio::test]
    async fn refused_connection_is_a_connect_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        drop(listener);
        let error = send(&pool(), &address).await.err().unwrap();
        assert!(error.is_connect(), "{error}");
    }
}
