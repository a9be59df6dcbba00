//! The command line of `kinfer-operator`: `run` with its flags (each with an environment
//! variable), and `crd`. A library module so that `tests/flags_doc.rs` renders the flag table of
//! `docs/flags.md` from the same definition `main` parses.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{ArgAction, Args, Parser, Subcommand, ValueEnum};
use kinfer_crds::duration::parse_nonzero_duration;

use crate::autoscaler::AutoscalerConfig;
use crate::controller::build::{
    DEFAULT_CPU_ENGINE_IMAGE, DEFAULT_ENGINE_IMAGE, DEFAULT_S3_SYNC_IMAGE,
};

/// kinfer operator: serves InferenceModels as GPU-scheduled vLLM Deployments.
#[derive(Parser, Debug)]
#[command(name = "kinfer-operator", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the operator against the cluster of the current kubeconfig (or in-cluster config).
    Run(Box<RunArgs>),
    /// Print the InferenceModel CustomResourceDefinition as YAML.
    Crd,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub controller: ControllerArgs,
    #[command(flatten)]
    pub autoscaler: AutoscalerArgs,
    #[command(flatten)]
    pub leader: LeaderArgs,
    #[command(flatten)]
    pub admin: AdminArgs,
    #[command(flatten)]
    pub log: LogArgs,
}

#[derive(Args, Debug)]
#[command(next_help_heading = "Controller")]
pub struct ControllerArgs {
    /// Watch InferenceModels in this namespace only. Empty or unset: all namespaces.
    #[arg(long, env = "KINFER_NAMESPACE")]
    pub namespace: Option<String>,

    /// Engine image of InferenceModels with GPUs that do not set spec.engine.image.
    #[arg(long, env = "KINFER_DEFAULT_ENGINE_IMAGE", default_value = DEFAULT_ENGINE_IMAGE)]
    pub default_engine_image: String,

    /// Engine image of CPU-only InferenceModels (resources.gpus 0) that do not set spec.engine.image.
    #[arg(long, env = "KINFER_DEFAULT_CPU_ENGINE_IMAGE", default_value = DEFAULT_CPU_ENGINE_IMAGE)]
    pub default_cpu_engine_image: String,

    /// Image of the init containers that copy s3:// sources into the weight cache (runs `aws s3 sync`).
    #[arg(long, env = "KINFER_S3_SYNC_IMAGE", default_value = DEFAULT_S3_SYNC_IMAGE)]
    pub s3_sync_image: String,
}

#[derive(Args, Debug)]
#[command(next_help_heading = "Built-in autoscaler")]
pub struct AutoscalerArgs {
    /// Run the built-in autoscaler (models with autoscaling.mode Builtin); on the leader only.
    #[arg(long = "autoscaler", env = "KINFER_AUTOSCALER", default_value_t = true, action = ArgAction::Set)]
    pub enabled: bool,

    /// Period of the scrape-and-decide loop (e.g. 1s, 500ms).
    #[arg(long = "autoscaler-interval", env = "KINFER_AUTOSCALER_INTERVAL", default_value = "1s", value_parser = parse_nonzero_duration)]
    pub interval: Duration,

    /// A gateway or engine whose last successful scrape is older than this is ignored.
    #[arg(long = "autoscaler-stale-after", env = "KINFER_AUTOSCALER_STALE_AFTER", default_value = "5s", value_parser = parse_nonzero_duration)]
    pub stale_after: Duration,

    /// Limit of one /metrics scrape, connect included.
    #[arg(long = "autoscaler-scrape-timeout", env = "KINFER_AUTOSCALER_SCRAPE_TIMEOUT", default_value = "800ms", value_parser = parse_nonzero_duration)]
    pub scrape_timeout: Duration,

    /// Scrapes running at once.
    #[arg(long = "autoscaler-scrape-concurrency", env = "KINFER_AUTOSCALER_SCRAPE_CONCURRENCY", default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..))]
    pub scrape_concurrency: u16,

    /// Label selector of the kinfer gateway pods whose /metrics (in-flight and queued requests
    /// per model) the autoscaler reads. Empty: no gateway pod is scraped.
    #[arg(
        long,
        env = "KINFER_GATEWAY_SELECTOR",
        default_value = "app.kubernetes.io/name=kinfer,app.kubernetes.io/component=gateway"
    )]
    pub gateway_selector: String,

    /// Namespace of the gateway pods. Empty: all namespaces.
    #[arg(long, env = "KINFER_GATEWAY_NAMESPACE", default_value = "")]
    pub gateway_namespace: String,

    /// Admin port of gateway pods without the kinfer.dev/metrics-port annotation.
    #[arg(long, env = "KINFER_GATEWAY_METRICS_PORT", default_value_t = 9090)]
    pub gateway_metrics_port: u16,

    /// More gateway /metrics URLs, scraped as given (gateways outside the cluster); repeat or
    /// separate with commas.
    #[arg(
        long = "gateway-metrics-url",
        env = "KINFER_GATEWAY_METRICS_URLS",
        value_delimiter = ','
    )]
    pub gateway_metrics_urls: Vec<String>,
}

impl AutoscalerArgs {
    /// The built-in autoscaler's settings; `None` when it is off.
    pub fn config(self) -> Option<AutoscalerConfig> {
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
pub struct LeaderArgs {
    /// Run the controller only while holding the leader Lease, so several replicas are safe.
    #[arg(long, env = "KINFER_LEADER_ELECTION", default_value_t = true, action = ArgAction::Set)]
    pub leader_election: bool,

    /// Name of the leader Lease.
    #[arg(long, env = "KINFER_LEASE_NAME", default_value = "kinfer-operator")]
    pub lease_name: String,

    /// Namespace of the leader Lease (defaults to the operator's own namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub lease_namespace: String,

    /// Identity written in the Lease (defaults to the pod name, else the host name plus a random suffix).
    #[arg(long, env = "POD_NAME")]
    pub leader_identity: Option<String>,
}

#[derive(Args, Debug)]
#[command(next_help_heading = "Admin server")]
pub struct AdminArgs {
    /// Address of the /metrics, /healthz and /readyz server.
    #[arg(long, env = "KINFER_ADMIN_ADDR", default_value = "0.0.0.0:9090")]
    pub admin_addr: SocketAddr,
}

#[derive(Args, Debug)]
#[command(next_help_heading = "Logging")]
pub struct LogArgs {
    /// Log format. Levels come from RUST_LOG (default info).
    #[arg(long, env = "KINFER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
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
