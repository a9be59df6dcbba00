//! `kinfer-operator run` runs the operator; `kinfer-operator crd` prints the CRD.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{ArgAction, Args, Parser, Subcommand, ValueEnum};
use kinfer_operator::admin::{self, AdminState};
use kinfer_operator::controller::build::{
    BuildConfig, DEFAULT_ENGINE_IMAGE, DEFAULT_S3_SYNC_IMAGE,
};
use kinfer_operator::controller::{self, Context, ControllerConfig};
use kinfer_operator::leader::{self, LeaderElector, LeaseSettings};
use kinfer_operator::metrics::Metrics;
use kube::runtime::events::Reporter;
use kube::Client;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

/// kinfer operator: serves InferenceModels as GPU-scheduled vLLM Deployments.
#[derive(Parser, Debug)]
#[command(name = "kinfer-operator", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the operator against the cluster of the current kubeconfig (or in-cluster config).
    Run(RunArgs),
    /// Print the InferenceModel CustomResourceDefinition as YAML.
    Crd,
}

#[derive(Args, Debug)]
struct RunArgs {
    #[command(flatten)]
    controller: ControllerArgs,
    #[command(flatten)]
    leader: LeaderArgs,
    #[command(flatten)]
    admin: AdminArgs,
    #[command(flatten)]
    log: LogArgs,
}

#[derive(Args, Debug)]
#[command(next_help_heading = "Controller")]
struct ControllerArgs {
    /// Watch InferenceModels in this namespace only. Empty or unset: all namespaces.
    #[arg(long, env = "KINFER_NAMESPACE")]
    namespace: Option<String>,

    /// Engine image of InferenceModels that do not set spec.engine.image.
    #[arg(long, env = "KINFER_DEFAULT_ENGINE_IMAGE", default_value = DEFAULT_ENGINE_IMAGE)]
    default_engine_image: String,

    /// Image of the init containers that copy s3:// sources into the weight cache (runs `aws s3 sync`).
    #[arg(long, env = "KINFER_S3_SYNC_IMAGE", default_value = DEFAULT_S3_SYNC_IMAGE)]
    s3_sync_image: String,
}

#[derive(Args, Debug)]
#[command(next_help_heading = "Leader election")]
struct LeaderArgs {
    /// Run the controller only while holding the leader Lease, so several replicas are safe.
    #[arg(long, env = "KINFER_LEADER_ELECTION", default_value_t = true, action = ArgAction::Set)]
    leader_election: bool,

    /// Name of the leader Lease.
    #[arg(long, env = "KINFER_LEASE_NAME", default_value = "kinfer-operator")]
    lease_name: String,

    /// Namespace of the leader Lease (defaults to the operator's own namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,

    /// Identity written in the Lease (defaults to the pod name, else the host name plus a random suffix).
    #[arg(long, env = "POD_NAME")]
    leader_identity: Option<String>,
}

#[derive(Args, Debug)]
#[command(next_help_heading = "Admin server")]
struct AdminArgs {
    /// Address of the /metrics, /healthz and /readyz server.
    #[arg(long, env = "KINFER_ADMIN_ADDR", default_value = "0.0.0.0:9090")]
    admin_addr: SocketAddr,
}

#[derive(Args, Debug)]
#[command(next_help_heading = "Logging")]
struct LogArgs {
    /// Log format. Levels come from RUST_LOG (default info).
    #[arg(long, env = "KINFER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_string())
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "kinfer-operator".to_string());
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}-{}", &suffix[..8])
}

/// Cancels the token on SIGTERM or Ctrl-C.
fn cancel_on_signal(token: CancellationToken) {
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut terminate) => {
                    tokio::select! {
                        _ = ctrl_c => {}
                        _ = terminate.recv() => {}
                    }
                }
                Err(_) => {
                    let _ = ctrl_c.await;
                }
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        info!("shutdown requested");
        token.cancel();
    });
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    init_logging(args.log.log_format);
    let shutdown = CancellationToken::new();
    cancel_on_signal(shutdown.clone());

    let metrics = Arc::new(Metrics::new());
    let admin_state = AdminState {
        metrics: metrics.clone(),
        ready: Arc::default(),
    };
    let listener = tokio::net::TcpListener::bind(args.admin.admin_addr)
        .await
        .with_context(|| format!("cannot listen on --admin-addr {}", args.admin.admin_addr))?;
    let admin_server = tokio::spawn(admin::serve(
        listener,
        admin_state.clone(),
        shutdown.clone(),
    ));

    // Config::infer: KUBECONFIG / ~/.kube/config, else the in-cluster service account.
    let client = Client::try_default()
        .await
        .context("cannot build a Kubernetes client (KUBECONFIG or in-cluster config)")?;
    let namespace = args
        .controller
        .namespace
        .filter(|namespace| !namespace.is_empty());
    controller::check_crd_installed(&client, namespace.as_deref()).await?;
    admin_state.ready.store(true, Ordering::Relaxed);

    let identity = args
        .leader
        .leader_identity
        .filter(|identity| !identity.is_empty())
        .unwrap_or_else(default_identity);
    let context = Arc::new(Context::new(
        client.clone(),
        ControllerConfig {
            namespace,
            build: BuildConfig {
                default_engine_image: args.controller.default_engine_image,
                s3_sync_image: args.controller.s3_sync_image,
            },
        },
        metrics.clone(),
        Reporter {
            controller: "kinfer-operator".to_string(),
            instance: Some(identity.clone()),
        },
    ));

    if args.leader.leader_election {
        let elector = LeaderElector::new(
            client,
            LeaseSettings::new(
                args.leader.lease_name,
                args.leader.lease_namespace,
                identity,
            ),
        );
        let gauge = metrics.leader.clone();
        leader::run_elected(
            elector,
            shutdown.clone(),
            move |leading| {
                gauge.set(i64::from(leading));
            },
            |leading: CancellationToken| {
                let context = context.clone();
                async move {
                    controller::run(context, async move { leading.cancelled().await }).await
                }
            },
        )
        .await;
    } else {
        metrics.leader.set(1);
        let token = shutdown.clone();
        controller::run(context, async move { token.cancelled().await }).await;
    }

    shutdown.cancel();
    match admin_server.await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => error!(%error, "admin server failed"),
        Err(error) => error!(%error, "admin server task failed"),
    }
    info!("stopped");
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd => {
            print!("{}", kinfer_crds::crd_yaml());
            Ok(())
        }
        Command::Run(args) => run(args).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn defaults_and_boolean_flag() {
        let cli =
            Cli::try_parse_from(["kinfer-operator", "run", "--leader-election=false"]).unwrap();
        let Command::Run(args) = cli.command else {
            panic!("run expected")
        };
        assert!(!args.leader.leader_election);
        assert_eq!(
            args.controller.default_engine_image,
            "vllm/vllm-openai:v0.11.0"
        );
        assert_eq!(args.admin.admin_addr, "0.0.0.0:9090".parse().unwrap());
        assert_eq!(args.log.log_format, LogFormat::Text);
    }
}
