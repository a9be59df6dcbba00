//! `kinfer-operator run` runs the operator; `kinfer-operator crd` prints the CRD.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{ArgAction, Args, Parser, Subcommand, ValueEnum};
use kinfer_crds::duration::parse_nonzero_duration;
use kinfer_operator::admin::{self, AdminState};
use kinfer_operator::autoscaler::AutoscalerConfig;
use kinfer_operator::controller::build::{
    BuildConfig, DEFAULT_CPU_ENGINE_IMAGE, DEFAULT_ENGINE_IMAGE, DEFAULT_S3_SYNC_IMAGE,
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
    Run(Box<RunArgs>),
    /// Print the InferenceModel CustomResourceDefinition as YAML.
    Crd,
}

#[derive(Args, Debug)]
struct RunArgs {
    #[command(flatten)]
    controller: ControllerArgs,
    #[command(flatten)]
    autoscaler: AutoscalerArgs,
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

    /// Engine image of InferenceModels with GPUs that do not set spec.engine.image.
    #[arg(long, env = "KINFER_DEFAULT_ENGINE_IMAGE", default_value = DEFAULT_ENGINE_IMAGE)]
    default_engine_image: String,

    /// Engine image of CPU-only InferenceModels (resources.gpus 0) that do not set spec.engine.image.
    #[arg(long, env = "KINFER_DEFAULT_CPU_ENGINE_IMAGE", default_value = DEFAULT_CPU_ENGINE_IMAGE)]
    default_cpu_engine_image: String,

    /// Image of the init containers that copy s3:// sources into the weight cache (runs `aws s3 sync`).
    #[arg(long, env = "KINFER_S3_SYNC_IMAGE", default_value = DEFAULT_S3_SYNC_IMAGE)]
    s3_sync_image: String,
}

#[derive(Args, Debug)]
#[command(next_help_heading = "Built-in autoscaler")]
struct AutoscalerArgs {
    /// Run the built-in autoscaler (models with autoscaling.mode Builtin); on the leader only.
    #[arg(long = "autoscaler", env = "KINFER_AUTOSCALER", default_value_t = true, action = ArgAction::Set)]
    enabled: bool,

    /// Period of the scrape-and-decide loop (e.g. 1s, 500ms).
    #[arg(long = "autoscaler-interval", env = "KINFER_AUTOSCALER_INTERVAL", default_value = "1s", value_parser = parse_nonzero_duration)]
    interval: Duration,

    /// A gateway or engine whose last successful scrape is older than this is ignored.
    #[arg(long = "autoscaler-stale-after", env = "KINFER_AUTOSCALER_STALE_AFTER", default_value = "5s", value_parser = parse_nonzero_duration)]
    stale_after: Duration,

    /// Limit of one /metrics scrape, connect included.
    #[arg(long = "autoscaler-scrape-timeout", env = "KINFER_AUTOSCALER_SCRAPE_TIMEOUT", default_value = "800ms", value_parser = parse_nonzero_duration)]
    scrape_timeout: Duration,

    /// Scrapes running at once.
    #[arg(long = "autoscaler-scrape-concurrency", env = "KINFER_AUTOSCALER_SCRAPE_CONCURRENCY", default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..))]
    scrape_concurrency: u16,

    /// Label selector of the kinfer gateway pods whose /metrics (in-flight and queued requests
    /// per model) the autoscaler reads. Empty: no gateway pod is scraped.
    #[arg(
        long,
        env = "KINFER_GATEWAY_SELECTOR",
        default_value = "app.kubernetes.io/name=kinfer,app.kubernetes.io/component=gateway"
    )]
    gateway_selector: String,

    /// Namespace of the gateway pods. Empty: all namespaces.
    #[arg(long, env = "KINFER_GATEWAY_NAMESPACE", default_value = "")]
    gateway_namespace: String,

    /// Admin port of gateway pods without the kinfer.dev/metrics-port annotation.
    #[arg(long, env = "KINFER_GATEWAY_METRICS_PORT", default_value_t = 9090)]
    gateway_metrics_port: u16,

    /// More gateway /metrics URLs, scraped as given (gateways outside the cluster); repeat or
    /// separate with commas.
    #[arg(
        long = "gateway-metrics-url",
        env = "KINFER_GATEWAY_METRICS_URLS",
        value_delimiter = ','
    )]
    gateway_metrics_urls: Vec<String>,
}

impl AutoscalerArgs {
    fn config(self) -> Option<AutoscalerConfig> {
        let non_empty = |value: String| Some(value).filter(|value| !value.trim().is_empty());
        self.enabled.then(|| AutoscalerConfig {
            interval: self.interval,
            stale_after: self.stale_after,
            scrape_timeout: self.scrape_timeout,
            scrape_concurrency: usize::from(self.scrape_concurrency),
            gateway_selector: non_empty(self.gateway_selector),
            gateway_namespace: non_empty(self.gateway_namespace),
            gateway_metrics_port: self.gateway_metrics_port,
            gateway_metrics_urls: self
                .gateway_metrics_urls
                .into_iter()
                .filter(|url| !url.trim().is_empty())
                .collect(),
        })
    }
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

    let autoscaler = args.autoscaler.config();
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
                default_cpu_engine_image: args.controller.default_cpu_engine_image,
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
                kinfer_operator::run_leader(context.clone(), autoscaler.clone(), leading)
            },
        )
        .await;
    } else {
        metrics.leader.set(1);
        kinfer_operator::run_leader(context, autoscaler, shutdown.clone()).await;
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
        Command::Run(args) => run(*args).await,
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
        assert_eq!(args.controller.default_engine_image, DEFAULT_ENGINE_IMAGE);
        assert_eq!(
            args.controller.default_cpu_engine_image,
            DEFAULT_CPU_ENGINE_IMAGE
        );
        assert_eq!(args.admin.admin_addr, "0.0.0.0:9090".parse().unwrap());
        assert_eq!(args.log.log_format, LogFormat::Text);
        let autoscaler = args.autoscaler.config().unwrap();
        assert_eq!(autoscaler.interval, Duration::from_secs(1));
        assert_eq!(
            autoscaler.gateway_selector.as_deref(),
            Some("app.kubernetes.io/name=kinfer,app.kubernetes.io/component=gateway")
        );
        assert_eq!(autoscaler.gateway_namespace, None);
        assert!(autoscaler.gateway_metrics_urls.is_empty());
    }

    #[test]
    fn autoscaler_flags() {
        let cli = Cli::try_parse_from([
            "kinfer-operator",
            "run",
            "--autoscaler-interval=500ms",
            "--gateway-selector=",
            "--gateway-metrics-url=http://127.0.0.1:9091/metrics,http://127.0.0.1:9092/metrics",
            "--gateway-metrics-url=http://127.0.0.1:9093/metrics",
        ])
        .unwrap();
        let Command::Run(args) = cli.command else {
            panic!("run expected")
        };
        let autoscaler = args.autoscaler.config().unwrap();
        assert_eq!(autoscaler.interval, Duration::from_millis(500));
        assert_eq!(autoscaler.gateway_selector, None);
        assert_eq!(autoscaler.gateway_metrics_urls.len(), 3);
        let off = Cli::try_parse_from(["kinfer-operator", "run", "--autoscaler=false"]).unwrap();
        let Command::Run(args) = off.command else {
            panic!("run expected")
        };
        assert!(args.autoscaler.config().is_none());
    }

    #[test]
    fn durations_are_positive() {
        let interval = |value: &str| {
            Cli::try_parse_from([
                "kinfer-operator",
                "run",
                &format!("--autoscaler-interval={value}"),
            ])
            .map(|cli| match cli.command {
                Command::Run(args) => args.autoscaler.interval,
                _ => panic!("run expected"),
            })
        };
        assert_eq!(interval("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(interval("1h 30m").unwrap(), Duration::from_secs(5400));
        assert!(interval("0s").is_err());
        assert!(interval("3").is_err(), "a unit is required");
    }
}
