//! `vllm-sim`: run the simulator with a `vllm serve` command line.

use anyhow::Context as _;
use kinfer_vllm_sim::config::{Config, ConfigError, LogFormat};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = match Config::from_vllm_args(std::env::args_os()) {
        Ok(config) => config,
        // Help, version and usage errors print themselves with clap's exit code.
        Err(ConfigError::Clap(err)) => err.exit(),
        Err(err) => return Err(err).context("invalid configuration"),
    };
    init_tracing(config.sim.log_format);
    if !config.ignored_args.is_empty() {
        tracing::info!(ignored = ?config.ignored_args, "ignoring vllm arguments the simulator does not model");
    }
    kinfer_vllm_sim::serve(config, shutdown_signal())
        .await
        .context("vllm-sim stopped")
}

fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// Resolves on Ctrl-C or SIGTERM (what Kubernetes sends).
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::warn!(%err, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                tracing::warn!(%err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}
