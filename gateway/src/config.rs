//! Command line and environment configuration. Every flag has a `KINFER_GATEWAY_*` variable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, ValueEnum};
use kinfer_crds::RoutingStrategy;

use crate::auth::KeySources;
use crate::index::EjectionPolicy;
use crate::pipeline::Settings;
use crate::policy::{self, PolicyConfig};
use crate::proxy::ProxyConfig;
use crate::quota::ModelQueueConfig;
use crate::tls::TlsFiles;

#[derive(Debug, Parser)]
#[command(
    name = "kinfer-gateway",
    version,
    about = "OpenAI-compatible gateway routing requests to kinfer InferenceModel replicas"
)]
pub struct Cli {
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(flatten)]
    pub discovery: DiscoveryArgs,
    #[command(flatten)]
    pub routing: RoutingArgs,
    #[command(flatten)]
    pub proxy: ProxyArgs,
    #[command(flatten)]
    pub requests: RequestArgs,
    #[command(flatten)]
    pub auth: AuthArgs,
    #[command(flatten)]
    pub log: LogArgs,
}

#[derive(Debug, Args)]
#[command(next_help_heading = "Server")]
pub struct ServerArgs {
    /// Address of the OpenAI-compatible API.
    #[arg(long, env = "KINFER_GATEWAY_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(
        long,
        env = "KINFER_GATEWAY_ADMIN_LISTEN",
        default_value = "0.0.0.0:9090"
    )]
    pub admin_listen: SocketAddr,
    /// On SIGTERM, how long in-flight requests (streams included) may take to finish.
    #[arg(long, env = "KINFER_GATEWAY_SHUTDOWN_GRACE", default_value = "30s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
    /// Serving threads, each with its own single-threaded runtime, `SO_REUSEPORT` socket and
    /// engine connection pool; default: one per CPU core.
    #[arg(long, env = "KINFER_GATEWAY_WORKER_THREADS")]
    pub worker_threads: Option<usize>,
    /// PEM certificate chain of the API port: with --tls-key-file, the API is served over TLS
    /// (HTTP/2 and HTTP/1.1 by ALPN) instead of plain TCP (HTTP/1.1 and h2c). Both files are
    /// read again when they change (a renewed certificate needs no restart).
    #[arg(long, env = "KINFER_GATEWAY_TLS_CERT_FILE", requires = "tls_key_file")]
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of --tls-cert-file.
    #[arg(long, env = "KINFER_GATEWAY_TLS_KEY_FILE", requires = "tls_cert_file")]
    pub tls_key_file: Option<PathBuf>,
    /// A request head must arrive whole within this, and each next part of a request body
    /// within this of the one before (408 after); an idle keep-alive connection is closed
    /// after it too.
    #[arg(long, env = "KINFER_GATEWAY_CLIENT_HEADER_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub client_header_timeout: Duration,
    /// A client that takes no byte of its response for this long (it stopped reading) is
    /// disconnected, which cancels the engine's request.
    #[arg(long, env = "KINFER_GATEWAY_CLIENT_SEND_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub client_send_timeout: Duration,
}

impl ServerArgs {
    /// The TLS files, when both are given.
    pub fn tls_files(&self) -> Option<TlsFiles> {
        match (&self.tls_cert_file, &self.tls_key_file) {
            (Some(cert), Some(key)) => Some(TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
            }),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DiscoveryMode {
    /// Watch engine Pods and InferenceModels (in-cluster config, or KUBECONFIG).
    Kubernetes,
    /// Read models and endpoints from --static-file, re-read when it changes.
    Static,
}

#[derive(Debug, Args)]
#[command(next_help_heading = "Discovery")]
pub struct DiscoveryArgs {
    #[arg(
        long,
        env = "KINFER_GATEWAY_DISCOVERY",
        value_enum,
        default_value = "kubernetes"
    )]
    pub discovery: DiscoveryMode,
    /// YAML file of models and endpoints (static discovery).
    #[arg(
        long,
        env = "KINFER_GATEWAY_STATIC_FILE",
        required_if_eq("discovery", "static")
    )]
    pub static_file: Option<PathBuf>,
    /// How often the static file's modification time is checked.
    #[arg(long, env = "KINFER_GATEWAY_STATIC_POLL_INTERVAL", default_value = "2s", value_parser = parse_duration)]
    pub static_poll_interval: Duration,
    /// Namespaces to watch, comma-separated; empty watches every namespace.
    #[arg(long, env = "KINFER_GATEWAY_NAMESPACES", value_delimiter = ',')]
    pub namespaces: Vec<String>,
    /// Watch InferenceModels, so models scaled to zero are listed and their requests held.
    /// Turn off where the CRD or the RBAC to read it is missing.
    #[arg(long, env = "KINFER_GATEWAY_WATCH_INFERENCE_MODELS", default_value_t = true, action = clap::ArgAction::Set)]
    pub watch_inference_models: bool,
    /// Watch Nodes (metadata) for each replica's zone, region and GPU product (placement
    /// pinning, x-kinfer-* response headers). Needs cluster-wide read access to nodes.
    #[arg(long, env = "KINFER_GATEWAY_WATCH_NODES", default_value_t = true, action = clap::ArgAction::Set)]
    pub watch_nodes: bool,
}

#[derive(Debug, Args)]
#[command(next_help_heading = "Routing")]
pub struct RoutingArgs {
    /// Strategy of models that do not set one: LeastLoad, RoundRobin or PrefixCache.
    #[arg(long, env = "KINFER_GATEWAY_DEFAULT_STRATEGY", default_value = "LeastLoad", value_parser = policy::parse_strategy)]
    pub default_strategy: RoutingStrategy,
    /// How often each engine's /metrics is scraped for queue depth; 0s turns scraping off.
    #[arg(long, env = "KINFER_GATEWAY_ENGINE_METRICS_INTERVAL", default_value = "2s", value_parser = parse_duration)]
    pub engine_metrics_interval: Duration,
    /// Scraped engine metrics older than this are ignored.
    #[arg(long, env = "KINFER_GATEWAY_ENGINE_METRICS_MAX_AGE", default_value = "10s", value_parser = parse_duration)]
    pub engine_metrics_max_age: Duration,
    /// PrefixCache: no replica takes more than this factor times the mean in-flight load of
    /// the model's replicas (consistent hashing with bounded loads).
    #[arg(long, env = "KINFER_GATEWAY_PREFIX_LOAD_FACTOR", default_value_t = 1.5)]
    pub prefix_load_factor: f64,
    /// A replica whose engine queue (vllm:num_requests_waiting) is deeper than this is
    /// saturated: PrefixCache falls back to LeastLoad, zone preference looks elsewhere.
    #[arg(
        long,
        env = "KINFER_GATEWAY_SATURATED_QUEUE_DEPTH",
        default_value_t = 8.0
    )]
    pub saturated_queue_depth: f64,
    /// The gateway's own zone (e.g. its node's topology.kubernetes.io/zone, which the
    /// downward API cannot expose): replicas there are preferred while not saturated.
    #[arg(long, env = "KINFER_GATEWAY_ZONE")]
    pub zone: Option<String>,
}

#[derive(Debug, Args)]
#[command(next_help_heading = "Upstream")]
pub struct ProxyArgs {
    /// TCP connect timeout to a replica.
    #[arg(long, env = "KINFER_GATEWAY_CONNECT_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub connect_timeout: Duration,
    /// Time to the engine's response headers (504 after). Non-streaming requests get their
    /// headers only when generation ends, so keep it above the longest generation.
    #[arg(long, env = "KINFER_GATEWAY_FIRST_BYTE_TIMEOUT", default_value = "600s", value_parser = parse_duration)]
    pub first_byte_timeout: Duration,
    /// Longest silence between two chunks of a response body; the response is cut after it.
    #[arg(long, env = "KINFER_GATEWAY_IDLE_TIMEOUT", default_value = "120s", value_parser = parse_duration)]
    pub idle_timeout: Duration,
    /// Further attempts on other replicas when a failure happens before any response byte.
    #[arg(long, env = "KINFER_GATEWAY_MAX_RETRIES", default_value_t = 2)]
    pub max_retries: u32,
    /// Retries allowed as a fraction of requests, on top of --retry-budget-burst.
    #[arg(long, env = "KINFER_GATEWAY_RETRY_BUDGET_RATIO", default_value_t = 0.2)]
    pub retry_budget_ratio: f64,
    /// Retries that may be spent at once.
    #[arg(long, env = "KINFER_GATEWAY_RETRY_BUDGET_BURST", default_value_t = 100)]
    pub retry_budget_burst: u32,
    /// Consecutive failures that eject a replica for a while; 0 turns ejection off.
    #[arg(long, env = "KINFER_GATEWAY_EJECT_AFTER_FAILURES", default_value_t = 5)]
    pub eject_after_failures: u32,
    /// First ejection time, doubled on each further ejection without a success between.
    #[arg(long, env = "KINFER_GATEWAY_EJECTION_TIME", default_value = "10s", value_parser = parse_duration)]
    pub ejection_time: Duration,
    /// Longest ejection time, however many ejections came before.
    #[arg(long, env = "KINFER_GATEWAY_MAX_EJECTION_TIME", default_value = "300s", value_parser = parse_duration)]
    pub max_ejection_time: Duration,
    /// Idle upstream connections are closed after this.
    #[arg(long, env = "KINFER_GATEWAY_POOL_IDLE_TIMEOUT", default_value = "90s", value_parser = parse_duration)]
    pub pool_idle_timeout: Duration,
    /// Idle upstream connections kept per replica address.
    #[arg(
        long,
        env = "KINFER_GATEWAY_POOL_MAX_IDLE_PER_HOST",
        default_value_t = 1024
    )]
    pub pool_max_idle_per_host: usize,
}

#[derive(Debug, Args)]
#[command(next_help_heading = "Requests")]
pub struct RequestArgs {
    /// Largest request body (bytes, or with a KiB/MiB/GiB suffix); 413 above.
    #[arg(long, env = "KINFER_GATEWAY_MAX_BODY_SIZE", default_value = "32MiB", value_parser = parse_bytes)]
    pub max_body_size: usize,
    /// How long a request for a model with no ready replica (scaled to zero, starting)
    /// waits for one before a 503; a model's spec.routing.holdTimeoutSeconds overrides it.
    #[arg(long, env = "KINFER_GATEWAY_HOLD_TIMEOUT", default_value = "180s", value_parser = parse_duration)]
    pub hold_timeout: Duration,
    /// Requests that may wait per model; more get a 503 at once. A model's
    /// spec.routing.holdQueueLimit overrides it.
    #[arg(long, env = "KINFER_GATEWAY_HOLD_QUEUE_LIMIT", default_value_t = 1000)]
    pub hold_queue_limit: usize,
    /// While a stream request (`"stream": true`) is held, the client gets a 200 with SSE
    /// comment keep-alives at this interval, so load balancers with an idle timeout do not cut
    /// it; holds shorter than one interval are answered as usual. 0 turns keep-alives off.
    #[arg(long, env = "KINFER_GATEWAY_HOLD_KEEPALIVE_INTERVAL", default_value = "15s", value_parser = parse_duration)]
    pub hold_keepalive_interval: Duration,
    /// Retry-After of 503 answers.
    #[arg(long, env = "KINFER_GATEWAY_RETRY_AFTER", default_value = "10s", value_parser = parse_duration)]
    pub retry_after: Duration,
}

#[derive(Debug, Args)]
#[command(next_help_heading = "Authentication and quotas")]
pub struct AuthArgs {
    /// Require an API key (`Authorization: Bearer` or `x-api-key`) on /v1/*. Default: on
    /// when a key source is given (--api-key, --api-keys-file, --api-key-namespace), off
    /// otherwise; `false` with a key source is refused at start, so a configured key always
    /// means authentication is on.
    #[arg(long, env = "KINFER_GATEWAY_AUTH", action = clap::ArgAction::Set)]
    pub auth: Option<bool>,
    /// Namespace of the API key Secrets (label kinfer.dev/api-key) to watch; empty: none.
    #[arg(long, env = "KINFER_GATEWAY_API_KEY_NAMESPACE")]
    pub api_key_namespace: Option<String>,
    /// YAML file of API keys, re-read when it changes (see the README).
    #[arg(long, env = "KINFER_GATEWAY_API_KEYS_FILE")]
    pub api_keys_file: Option<PathBuf>,
    /// One API key for every model, without limits (named `env`). Prefer the variable to the
    /// flag: a command line is visible to every user of the machine.
    #[arg(long, env = "KINFER_GATEWAY_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Ready gateway replicas sharing each key's limits, when not counted by --peer-selector.
    #[arg(long, env = "KINFER_GATEWAY_REPLICAS", default_value_t = 1)]
    pub gateway_replicas: usize,
    /// Label selector of this gateway's own pods, watched in --peer-namespace to count the
    /// ready replicas sharing each key's limits (the chart sets both).
    #[arg(long, env = "KINFER_GATEWAY_PEER_SELECTOR")]
    pub peer_selector: Option<String>,
    /// Namespace of the gateway's own pods (--peer-selector).
    #[arg(long, env = "KINFER_GATEWAY_PEER_NAMESPACE")]
    pub peer_namespace: Option<String>,
    /// Requests of one model sent to its engines at once by this gateway replica; more wait
    /// in a queue fair across keys. 0: no limit.
    #[arg(
        long,
        env = "KINFER_GATEWAY_MODEL_MAX_CONCURRENCY",
        default_value_t = 0
    )]
    pub model_max_concurrency: usize,
    /// Requests that may wait per model when its concurrency limit is reached.
    #[arg(long, env = "KINFER_GATEWAY_MODEL_QUEUE_LIMIT", default_value_t = 1000)]
    pub model_queue_limit: usize,
    /// How long a request waits for a slot of its model before a 503.
    #[arg(long, env = "KINFER_GATEWAY_MODEL_QUEUE_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub model_queue_timeout: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Args)]
#[command(next_help_heading = "Logging")]
pub struct LogArgs {
    /// Access and event log lines as human-readable text or as JSON objects.
    #[arg(
        long,
        env = "KINFER_GATEWAY_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: LogFormat,
    /// tracing filter, for example `info` or `kinfer_gateway=debug,warn`. `warn` drops the
    /// per-request access log.
    #[arg(long, env = "KINFER_GATEWAY_LOG", default_value = "info")]
    pub log_filter: String,
}

impl ProxyArgs {
    pub fn to_config(&self) -> ProxyConfig {
        ProxyConfig {
            connect_timeout: self.connect_timeout,
            first_byte_timeout: self.first_byte_timeout,
            idle_timeout: self.idle_timeout,
            max_retries: self.max_retries,
            retry_budget_ratio: self.retry_budget_ratio,
            retry_budget_burst: self.retry_budget_burst,
            ejection: EjectionPolicy {
                consecutive_failures: self.eject_after_failures,
                base: self.ejection_time,
                max: self.max_ejection_time,
            },
            pool_idle_timeout: self.pool_idle_timeout,
            pool_max_idle_per_host: self.pool_max_idle_per_host,
        }
    }
}

impl Cli {
    pub fn settings(&self) -> Settings {
        let requests = &self.requests;
        Settings {
            max_body_bytes: requests.max_body_size,
            body_timeout: self.server.client_header_timeout,
            hold_timeout: requests.hold_timeout,
            hold_queue_limit: requests.hold_queue_limit,
            hold_keepalive_interval: requests.hold_keepalive_interval,
            retry_after: requests.retry_after,
            own_zone: self.routing.zone.clone().filter(|zone| !zone.is_empty()),
        }
    }
}

impl AuthArgs {
    pub fn key_sources(&self) -> KeySources {
        KeySources {
            auth: self.auth,
            api_key: self.api_key.clone(),
            api_keys_file: self.api_keys_file.clone(),
            api_key_namespace: self.api_key_namespace.clone(),
            gateway_replicas: self.gateway_replicas,
            peer_selector: self.peer_selector.clone(),
            peer_namespace: self.peer_namespace.clone(),
        }
    }

    pub fn model_queue_config(&self) -> ModelQueueConfig {
        ModelQueueConfig {
            max_concurrency: self.model_max_concurrency,
            queue_limit: self.model_queue_limit,
            timeout: self.model_queue_timeout,
        }
    }
}

impl RoutingArgs {
    pub fn policy_config(&self) -> PolicyConfig {
        PolicyConfig {
            engine_metrics_max_age: self.engine_metrics_max_age,
            prefix_load_factor: self.prefix_load_factor.max(1.0),
            saturated_queue_depth: self.saturated_queue_depth,
        }
    }
}

/// `500ms`, `30s`, `5m`, `1h 30m`: the grammar the operator's flags share (humantime's).
pub use kinfer_crds::duration::parse_duration;

/// `1048576`, `512KiB`, `32MiB`, `1GiB` (also KB/MB/GB, read as powers of 1024).
pub fn parse_bytes(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let split = text
        .find(|character: char| !character.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: usize = number
        .parse()
        .map_err(|_| format!("invalid size `{text}`: expected for example 1048576 or 32MiB"))?;
    let multiplier: usize = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        other => return Err(format!("invalid size unit `{other}` in `{text}`")),
    };
    value
        .checked_mul(multiplier)
        .ok_or_else(|| format!("size `{text}` is too large"))
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
    fn every_flag_has_an_env_variable() {
        let command = Cli::command();
        for argument in command.get_arguments() {
            let id = argument.get_id().as_str();
            if id == "help" || id == "version" {
                continue;
            }
            assert!(argument.get_env().is_some(), "--{id} has no env variable");
        }
    }

    #[test]
    fn defaults_parse() {
        let cli = Cli::try_parse_from([
            "kinfer-gateway",
            "--discovery",
            "static",
            "--static-file",
            "m.yaml",
            "--namespaces",
            "a,b",
        ])
        .unwrap();
        assert_eq!(cli.discovery.namespaces, ["a", "b"]);
        assert_eq!(cli.requests.max_body_size, 32 << 20);
        assert_eq!(cli.proxy.first_byte_timeout, Duration::from_secs(600));
        assert_eq!(
            cli.requests.hold_keepalive_interval,
            Duration::from_secs(15)
        );
        assert!(Cli::try_parse_from(["kinfer-gateway", "--discovery", "static"]).is_err());
        // A TLS certificate without its key (or the reverse) is refused.
        assert!(Cli::try_parse_from(["kinfer-gateway", "--tls-cert-file", "c.pem"]).is_err());
    }

    fn auth_of(args: &[&str]) -> Result<bool, crate::auth::StartError> {
        let mut argv = vec!["kinfer-gateway"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv)
            .unwrap()
            .auth
            .key_sources()
            .enabled()
    }

    #[test]
    fn a_key_turns_authentication_on() {
        assert!(!auth_of(&[]).unwrap());
        assert!(auth_of(&["--api-key", "K"]).unwrap());
        assert!(auth_of(&["--api-keys-file", "keys.yaml"]).unwrap());
        assert!(auth_of(&["--api-key-namespace", "kinfer"]).unwrap());
        assert!(auth_of(&["--auth", "true"]).unwrap());
        // Keys with authentication off: refused, not served without a key.
        let error = auth_of(&["--api-key", "K", "--auth", "false"]).unwrap_err();
        assert!(error.to_string().contains("--auth=false"), "{error}");
        assert!(!auth_of(&["--auth", "false"]).unwrap());
    }

    #[test]
    fn durations_and_sizes() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("1.5").is_err(), "a unit is required");
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("-1s").is_err());
        assert_eq!(parse_bytes("1KiB"), Ok(1024));
        assert_eq!(parse_bytes("32MiB"), Ok(32 << 20));
        assert!(parse_bytes("1XB").is_err());
    }
}
