//! The gateway process. Serving follows nginx's model: one single-threaded tokio runtime per
//! core, each accepting on its own SO_REUSEPORT socket with its own upstream connection pool,
//! so a request is handled start to end on one thread (no work-stealing, no cross-thread
//! wake-ups; measured at about two thirds of the CPU per request of one multi-threaded
//! runtime). The routing index and the metrics are shared. Discovery, the engine metrics
//! scraper and the admin server run on the main thread's runtime.

use std::net::SocketAddr;

use anyhow::Context as _;
use clap::Parser;
use kinfer_gateway::config::{Cli, DiscoveryMode, LogFormat};
use kinfer_gateway::index::{kubernetes, static_file};
use kinfer_gateway::proxy::{self, scraper};
use kinfer_gateway::{build_admin_router, server, Gateway, GatewayConfig};
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
    let limits = cli.limits.to_limits();
    let control = Gateway::new(GatewayConfig {
        default_strategy: cli.routing.default_strategy,
        policy: cli.routing.policy_config(),
        proxy: proxy_config.clone(),
        limits: limits.clone(),
        access: cli.access_config(),
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
            control.index.publish(configs);
            control.index.mark_synced();
            tokio::spawn(static_file::watch(
                path,
                cli.discovery.static_poll_interval,
                control.index.clone(),
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
            tokio::spawn(kubernetes::run(client, scope, control.index.clone()));
        }
    }

    kinfer_gateway::auth::start(
        &cli.auth,
        &control.access,
        cli.discovery.static_poll_interval,
    )
    .await?;

    if !cli.routing.engine_metrics_interval.is_zero() {
        tokio::spawn(scraper::run(
            proxy::http_client(&proxy_config),
            control.index.clone(),
            cli.routing.engine_metrics_interval,
            control.metrics.clone(),
        ));
    }

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
    let first = reuseport_listener(cli.server.listen)?;
    let listen = first.local_addr()?;
    let mut listeners = vec![first];
    for _ in 1..threads {
        listeners.push(reuseport_listener(listen)?);
    }
    tracing::info!(
        %listen,
        admin = %admin_listener.local_addr()?,
        threads,
        discovery = ?cli.discovery.discovery,
        "kinfer-gateway started"
    );

    let (stop_sender, stop) = watch::channel(false);
    let admin = tokio::spawn(server::serve(
        admin_listener,
        build_admin_router(control.clone()),
        stopped(stop.clone()),
    ));
    let mut workers = Vec::with_capacity(threads);
    for (number, listener) in listeners.into_iter().enumerate() {
        let gateway = Gateway::worker(&control, proxy_config.clone(), limits.clone());
        let stop = stop.clone();
        let light_load_slice = cli.server.light_load_slice;
        let worker = std::thread::Builder::new()
            .name(format!("kinfer-serve-{number}"))
            .spawn(move || -> anyhow::Result<()> {
                kinfer_gateway::slice::install(light_load_slice);
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                runtime.block_on(async move {
                    let listener = listener.listen(4096)?;
                    server::serve_api(listener, gateway, stopped(stop)).await
                })?;
                Ok(())
            })
            .context("cannot start a serving thread")?;
        workers.push(worker);
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
        _ = shutdown_signal() => {}
        _ = stopped(stop.clone()) => {}
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

fn reuseport_listener(address: SocketAddr) -> anyhow::Result<TcpSocket> {
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
