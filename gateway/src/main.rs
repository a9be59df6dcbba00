use anyhow::Context as _;
use clap::Parser;
use kinfer_gateway::config::{Cli, DiscoveryMode, LogFormat};
use kinfer_gateway::index::{kubernetes, static_file};
use kinfer_gateway::proxy::scraper;
use kinfer_gateway::{build_admin_router, build_router, Gateway, GatewayConfig};
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_tracing(cli.log.log_format, &cli.log.log_filter)?;

    let gateway = Gateway::new(GatewayConfig {
        default_strategy: cli.routing.default_strategy,
        policy: cli.routing.policy_config(),
        proxy: cli.proxy.to_config(),
        limits: cli.limits.to_limits(),
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
            };
            tokio::spawn(kubernetes::run(client, scope, gateway.index.clone()));
        }
    }

    if !cli.routing.engine_metrics_interval.is_zero() {
        tokio::spawn(scraper::run(
            gateway.proxy.client().clone(),
            gateway.index.clone(),
            cli.routing.engine_metrics_interval,
            gateway.metrics.clone(),
        ));
    }

    let listener = TcpListener::bind(cli.server.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cli.server.listen))?;
    let admin_listener = TcpListener::bind(cli.server.admin_listen)
        .await
        .with_context(|| format!("cannot listen on {}", cli.server.admin_listen))?;
    tracing::info!(
        listen = %listener.local_addr()?,
        admin = %admin_listener.local_addr()?,
        discovery = ?cli.discovery.discovery,
        "kinfer-gateway started"
    );

    let (stop_sender, stop) = tokio::sync::watch::channel(false);
    let admin = tokio::spawn(serve(
        admin_listener,
        build_admin_router(gateway.clone()),
        stop.clone(),
    ));
    let mut stopping = stop.clone();
    let api = serve(listener, build_router(gateway.clone()), stop);
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down: no new connections, waiting for in-flight requests");
        let _ = stop_sender.send(true);
    });
    let grace = cli.server.shutdown_grace;
    let mut api = tokio::spawn(api);
    tokio::select! {
        result = &mut api => result??,
        _ = async {
            let _ = stopping.wait_for(|stopped| *stopped).await;
            tokio::time::sleep(grace).await;
        } => {
            tracing::warn!(?grace, "shutdown grace period over; cutting the remaining requests");
        }
    }
    admin.abort();
    Ok(())
}

async fn serve(
    listener: TcpListener,
    router: axum::Router,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            let _ = stop.wait_for(|stopped| *stopped).await;
        })
        .await?;
    Ok(())
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
