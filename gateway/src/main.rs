//! The gateway process. The API is served (hyper, see [`kinfer_gateway::server`]) by one
//! single-threaded tokio runtime per core, each accepting on its own `SO_REUSEPORT` socket with
//! its own engine connection pool, so a request is handled start to end on one thread: no
//! work-stealing, no cross-thread wake-ups (measured against one multi-threaded runtime in
//! docs/benchmarks.md). The routing index, holds, keys, quotas and metrics are shared.
//! Discovery, the engine metrics scraper and the admin port run on the main thread's runtime.

use std::net::SocketAddr;

use anyhow::Context as _;
use clap::Parser;
use kinfer_gateway::config::{Cli, DiscoveryMode, LogFormat};
use kinfer_gateway::index::{kubernetes, static_file};
use kinfer_gateway::proxy::{self, scraper};
use kinfer_gateway::server::{self, ServeConfig};
use kinfer_gateway::tls::{self, TlsAcceptor};
use kinfer_gateway::{build_admin_router, build_router, Gateway, GatewayConfig};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;
use tracing_subscriber::EnvFilter;

/// mimalloc, built without transparent huge pages (the `no_thp` feature): fewer instructions per
/// request than glibc's malloc at the same resident size (docs/gateway.md, "Allocator").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_tracing(cli.log.log_format, &cli.log.log_filter)?;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?
        .block_on(run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let proxy_config = cli.proxy.to_config();
    let key_sources = cli.auth.key_sources();
    let gateway = Gateway::new(GatewayConfig {
        default_strategy: cli.routing.default_strategy,
        policy: cli.routing.policy_config(),
        proxy: proxy_config.clone(),
        settings: cli.settings(),
        auth: key_sources.enabled()?,
        model_queues: cli.auth.model_queue_config(),
    });

    match cli.discovery.discovery {
        DiscoveryMode::Static => {
            let path = cli
                .discovery
                .static_file
                .clone()
                .context("--static-file is required with --discovery static")?;
            // Fail at start on a bad file; later mistakes keep the last good table.
            let configs = static_file::load(&path)?;
            gateway.index.publish(configs);
            gateway.index.mark_synced();
            tokio::spawn(static_file::watch(
                path,
                cli.discovery.static_poll_interval,
                gateway.index.clone(),
            ));
        }
        DiscoveryMode::Kubernetes => {
            let client = kube::Client::try_default()
                .await
                .context("cannot build a Kubernetes client (in-cluster config or KUBECONFIG)")?;
            let scope = kubernetes::WatchScope {
                namespaces: cli.discovery.namespaces.clone(),
                inference_models: cli.discovery.watch_inference_models,
                nodes: cli.discovery.watch_nodes,
            };
            tokio::spawn(kubernetes::run(client, scope, gateway.index.clone()));
        }
    }

    kinfer_gateway::auth::start(
        &key_sources,
        &gateway.auth,
        &gateway.peers,
        cli.discovery.static_poll_interval,
    )
    .await?;

    if !cli.routing.engine_metrics_interval.is_zero() {
        tokio::spawn(scraper::run(
            proxy::http_client(&proxy_config),
            gateway.index.clone(),
            cli.routing.engine_metrics_interval,
            gateway.metrics.clone(),
        ));
    }

    let tls = match cli.server.tls_files() {
        Some(files) => Some(
            TlsAcceptor::start(files, tls::RELOAD_INTERVAL)
                .context("cannot load the TLS certificate")?,
        ),
        None => None,
    };
    let serve_config = ServeConfig {
        header_timeout: cli.server.client_header_timeout,
        send_timeout: cli.server.client_send_timeout,
        tls,
    };
    let admin_listener = TcpListener::bind(cli.server.admin_listen)
        .await
        .with_context(|| format!("cannot listen on {}", cli.server.admin_listen))?;
    let threads = cli
        .server
        .worker_threads
        .or_else(|| std::thread::available_parallelism().ok().map(usize::from))
        .unwrap_or(1)
        .max(1);
    // The first socket resolves port 0; the others bind the same address.
    let first = reuseport_socket(cli.server.listen)?;
    let listen = first.local_addr()?;
    let mut sockets = vec![first];
    for _ in 1..threads {
        sockets.push(reuseport_socket(listen)?);
    }
    tracing::info!(
        %listen,
        admin = %admin_listener.local_addr()?,
        threads,
        tls = serve_config.tls.is_some(),
        discovery = ?cli.discovery.discovery,
        "kinfer-gateway started"
    );

    let (stop_sender, stop) = watch::channel(false);
    let admin = tokio::spawn(server::serve(
        admin_listener,
        build_admin_router(gateway.clone()),
        ServeConfig::default(),
        stopped(stop.clone()),
    ));
    let mut workers = Vec::with_capacity(threads);
    for (number, socket) in sockets.into_iter().enumerate() {
        let worker = gateway.worker();
        let config = serve_config.clone();
        let stop = stop.clone();
        let thread = std::thread::Builder::new()
            .name(format!("kinfer-serve-{number}"))
            .spawn(move || -> anyhow::Result<()> {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                runtime.block_on(async move {
                    let listener = socket.listen(4096)?;
                    server::serve(listener, build_router(worker), config, stopped(stop)).await
                })?;
                Ok(())
            })
            .context("cannot start a serving thread")?;
        workers.push(thread);
    }
    let all_done = tokio::task::spawn_blocking(move || {
        for worker in workers {
            match worker.join() {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::error!(%error, "serving thread failed"),
                Err(_) => tracing::error!("serving thread panicked"),
            }
        }
    });

    let grace = cli.server.shutdown_grace;
    tokio::select! {
        () = shutdown_signal() => {}
        () = stopped(stop.clone()) => {}
    }
    tracing::info!("shutting down: no new connections, waiting for in-flight requests");
    let _ = stop_sender.send(true);
    if tokio::time::timeout(grace, all_done).await.is_err() {
        tracing::warn!(
            ?grace,
            "shutdown grace period over; cutting the remaining requests"
        );
    }
    admin.abort();
    Ok(())
}

/// A socket bound to `address` with `SO_REUSEPORT`, so each serving thread accepts on its own.
fn reuseport_socket(address: SocketAddr) -> anyhow::Result<TcpSocket> {
    let socket = if address.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }?;
    socket.set_reuseaddr(true)?;
    #[cfg(unix)]
    socket.set_reuseport(true)?;
    socket
        .bind(address)
        .with_context(|| format!("cannot listen on {address}"))?;
    Ok(socket)
}

async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopped| *stopped).await;
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = interrupt => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(_) => {
                let _ = interrupt.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}

fn init_tracing(format: LogFormat, filter: &str) -> anyhow::Result<()> {
    let filter =
        EnvFilter::try_new(filter).with_context(|| format!("invalid log filter `{filter}`"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
    Ok(())
}
