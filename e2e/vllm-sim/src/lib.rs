//! `vllm-sim`: a fast, faithful stand-in for `vllm serve`, for tests and
//! benchmarks on machines without a GPU.
//!
//! It accepts `vllm serve`'s command line (unknown flags are ignored), serves
//! the OpenAI-compatible API with vLLM's exact response and error shapes,
//! exposes vLLM's Prometheus metrics, and simulates what a gateway or an
//! autoscaler can observe of a real engine: time to first token growing with
//! uncached prompt tokens, an LRU prefix cache with vLLM's block hashing,
//! paced token streaming, a bounded number of running sequences with a FIFO
//! waiting queue, cancellation on client disconnect, a startup delay, and
//! injected errors and dropped streams.
//!
//! From another crate's tests:
//!
//! ```no_run
//! # async fn example() -> Result<(), kinfer_vllm_sim::SimError> {
//! let mut config = kinfer_vllm_sim::Config::for_tests("my-model");
//! config.sim.itl_ms = 2.0;
//! let (addr, handle) = kinfer_vllm_sim::spawn(config).await?;
//! // ... send requests to http://{addr}/v1/chat/completions ...
//! assert_eq!(handle.stats().running, 0);
//! handle.shutdown().await?;
//! # Ok(()) }
//! ```
//!
//! Modules: [`config`] and [`argv`] (command line), [`protocol`] (OpenAI types),
//! [`tokenizer`] (token approximation, output text), [`prefix_cache`],
//! [`scheduler`], [`engine`] (request lifecycle), [`metrics`], [`faults`],
//! [`sse`] (response frames), [`server`] (routes), [`error`], [`lifecycle`]
//! (what SIGTERM does).

pub mod argv;
pub mod config;
pub mod engine;
pub mod error;
pub mod faults;
pub mod lifecycle;
pub mod metrics;
pub mod prefix_cache;
pub mod protocol;
pub mod scheduler;
pub mod server;
pub mod sse;
pub mod tokenizer;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::serve::ListenerExt;
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use config::{Config, ConfigError, LoraModule, ModelKind, SimArgs, VllmArgs};
pub use server::{build_router, SimState, SimStats};

/// Errors starting or running the server.
#[derive(Debug, Error)]
pub enum SimError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// `--host` could not be resolved.
    #[error("cannot resolve --host {host}: {source}")]
    Resolve {
        /// The host as given.
        host: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The address could not be bound (in use, no permission).
    #[error("cannot listen on {addr}: {source}; pick another --port or stop what holds it")]
    Bind {
        /// Address tried.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The server failed while running.
    #[error("server error: {0}")]
    Serve(#[source] std::io::Error),
}

impl SimError {
    /// Low-cardinality label for metrics and logs.
    pub fn metric_label(&self) -> &'static str {
        match self {
            SimError::Config(err) => err.metric_label(),
            SimError::Resolve { .. } => "resolve",
            SimError::Bind { .. } => "bind",
            SimError::Serve(_) => "serve",
        }
    }
}

/// A simulator running in the background; see [`spawn`].
#[derive(Debug)]
pub struct SimHandle {
    addr: SocketAddr,
    state: Arc<SimState>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), SimError>>>,
}

impl SimHandle {
    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR`, for building request URLs.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Running/waiting counts and token counters, without scraping /metrics.
    pub fn stats(&self) -> SimStats {
        self.state.stats()
    }

    /// The shared state (engine, scheduler, metrics).
    pub fn state(&self) -> &Arc<SimState> {
        &self.state
    }

    /// Stops accepting connections and waits for open ones to finish.
    pub async fn shutdown(mut self) -> Result<(), SimError> {
        self.state.engine().scheduler.close();
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        match self.task.take() {
            Some(task) => match task.await {
                Ok(result) => result,
                Err(join) => Err(SimError::Serve(std::io::Error::other(join))),
            },
            None => Ok(()),
        }
    }
}

impl Drop for SimHandle {
    /// A handle dropped without [`SimHandle::shutdown`] stops the server at once.
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Binds `config`'s `--host`/`--port` (port 0 picks a free one), starts the
/// server on the current tokio runtime and returns the bound address.
pub async fn spawn(config: Config) -> Result<(SocketAddr, SimHandle), SimError> {
    let listener = bind(&config).await?;
    spawn_on(listener, &config)
}

/// Like [`spawn`], on a listener the caller already bound.
pub fn spawn_on(
    listener: TcpListener,
    config: &Config,
) -> Result<(SocketAddr, SimHandle), SimError> {
    let addr = listener.local_addr().map_err(SimError::Serve)?;
    let state = SimState::new(config)?;
    let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
    let router = build_router(Arc::clone(&state));
    let task = tokio::spawn(async move {
        run(listener, router, async {
            let _ = shutdown_rx.await;
        })
        .await
    });
    Ok((
        addr,
        SimHandle {
            addr,
            state,
            shutdown: Some(shutdown_tx),
            task: Some(task),
        },
    ))
}

/// Serves until `shutdown` completes (what `main` runs).
pub async fn serve(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), SimError> {
    let listener = bind(&config).await?;
    let addr = listener.local_addr().map_err(SimError::Serve)?;
    let state = SimState::new(&config)?;
    tracing::info!(
        %addr,
        model = config.model_path(),
        served_model_names = ?config.served_model_names(),
        max_num_seqs = config.vllm.max_num_seqs,
        "vllm-sim listening"
    );
    let router = build_router(Arc::clone(&state));
    let engine = Arc::clone(state.engine());
    let on_sigterm = config.sim.on_sigterm;
    let timeout = std::time::Duration::from_secs(config.vllm.shutdown_timeout);
    run(listener, router, async move {
        shutdown.await;
        tracing::info!(
            ?on_sigterm,
            shutdown_timeout_s = timeout.as_secs(),
            "shutting down"
        );
        let scheduler = &engine.scheduler;
        engine
            .lifecycle
            .shut_down(on_sigterm, timeout, || {
                scheduler.running() + scheduler.waiting()
            })
            .await;
        scheduler.close();
    })
    .await
}

async fn bind(config: &Config) -> Result<TcpListener, SimError> {
    let addr = config
        .resolve_listen_addr()
        .await
        .map_err(|source| SimError::Resolve {
            host: config.vllm.host.clone(),
            source,
        })?;
    TcpListener::bind(addr)
        .await
        .map_err(|source| SimError::Bind { addr, source })
}

async fn run(
    listener: TcpListener,
    router: axum::Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), SimError> {
    // Small SSE frames must not wait for Nagle's algorithm.
    let listener = listener.tap_io(|stream| {
        let _ = stream.set_nodelay(true);
    });
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(SimError::Serve)
}
