//! `kinfer-podrunner`: plays the kubelet for pods on the test bed's fake GPU
//! nodes (see `kinfer_e2e::podrunner`).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;

#[derive(Parser, Debug)]
#[command(
    name = "kinfer-podrunner",
    about = "Runs engine stand-ins at the pod IPs of kwok's fake nodes"
)]
struct Args {
    /// Kubeconfig to use (the in-cluster or default config when absent).
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// The vLLM stand-in binary started for engine pods that run the stand-in.
    #[arg(long, env = "KINFER_ENGINE_BIN")]
    engine_bin: PathBuf,
    /// The engine of pods without a `kinfer.dev/test-engine` annotation: `sim`
    /// or `vllm`.
    #[arg(long, env = "KINFER_ENGINE", default_value = "sim")]
    engine: kinfer_e2e::podrunner::plan::EngineKind,
    /// Real vLLM's `vllm` executable (from `e2e/tools/install.sh vllm`), for
    /// pods that run real vLLM.
    #[arg(long, env = "KINFER_VLLM_BIN")]
    vllm_bin: Option<PathBuf>,
    /// The generated models real vLLM serves (decoder/, encoder/, lora/).
    #[arg(long, env = "KINFER_MODELS")]
    models: Option<PathBuf>,
    /// One log file per engine process is written here.
    #[arg(long, env = "KINFER_POD_LOG_DIR", default_value = "pod-logs")]
    log_dir: PathBuf,
    /// A host binary standing in for a container image, as
    /// `REPOSITORY=PATH` (e.g. `kinfer/gateway=target/debug/kinfer-gateway`);
    /// repeatable. Pods with such an image run the binary at their pod IP.
    #[arg(long = "image-bin", value_parser = parse_image_bin)]
    image_bins: Vec<(String, PathBuf)>,
    /// API server URL for the kubeconfig given to processes of pods that
    /// mount a service account token.
    #[arg(long, env = "KINFER_API_SERVER")]
    api_server: Option<String>,
    /// CA certificate file of the API server, for that kubeconfig.
    #[arg(long, env = "KINFER_API_CA")]
    api_ca: Option<PathBuf>,
    /// Readiness probe period in milliseconds.
    #[arg(long, env = "KINFER_PROBE_PERIOD_MS", default_value_t = 500)]
    probe_period_ms: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    kinfer_e2e::init_tracing();
    let args = Args::parse();
    let client = kinfer_e2e::client_from(args.kubeconfig.as_deref())
        .await
        .context("connecting to the API server")?;
    let config = kinfer_e2e::podrunner::RunnerConfig {
        engine_bin: args.engine_bin,
        default_engine: args.engine,
        vllm: match (args.vllm_bin, args.models) {
            (Some(bin), Some(models)) => Some((
                bin,
                kinfer_e2e::podrunner::plan::LocalModels::under(&models),
            )),
            (None, None) => None,
            _ => anyhow::bail!("--vllm-bin and --models go together"),
        },
        log_dir: args.log_dir,
        probe_period: Duration::from_millis(args.probe_period_ms),
        images: args.image_bins,
        api_server: args.api_server,
        api_ca: args.api_ca,
    };
    tokio::select! {
        result = kinfer_e2e::podrunner::run(client, config) => result.context("pod runner stopped")?,
        _ = shutdown_signal() => tracing::info!("shutting down: stopping every engine"),
    }
    Ok(())
}

fn parse_image_bin(value: &str) -> Result<(String, PathBuf), String> {
    match value.split_once('=') {
        Some((image, path)) if !image.is_empty() && !path.is_empty() => {
            Ok((image.to_string(), PathBuf::from(path)))
        }
        _ => Err(format!("expected REPOSITORY=PATH, got {value:?}")),
    }
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
