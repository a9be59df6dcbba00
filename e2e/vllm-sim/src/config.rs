//! Command line and environment configuration.
//!
//! Two groups of flags:
//! - [`VllmArgs`]: the names `vllm serve` uses, so an operator-written container
//!   command runs unchanged against the simulator. They deliberately have no
//!   environment variable: vLLM reads none for them, and Kubernetes injects
//!   service-link variables such as `VLLM_PORT=tcp://10.0.0.1:8000` into every
//!   pod, which would break a `VLLM_PORT`-style binding.
//! - [`SimArgs`]: simulation knobs, each prefixed `--sim-` and settable through a
//!   `VLLM_SIM_*` variable. None of them is named like a service-link variable
//!   (`*_PORT`, `*_SERVICE_HOST`), so a Service called `vllm-sim` cannot clash.
//!
//! Unknown flags are tolerated: [`Config::from_vllm_args`] first runs argv
//! through [`crate::argv::filter`], which keeps only what this parser knows.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, CommandFactory, FromArgMatches, Parser, ValueEnum};
use thiserror::Error;

use crate::argv;

/// Model served when neither a positional MODEL nor `--model` is given
/// (the default of recent vLLM releases).
pub const DEFAULT_MODEL: &str = "Qwen/Qwen3-0.6B";

/// Errors found while reading or validating the configuration.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// clap rejected the (already filtered) arguments, or help/version was asked for.
    #[error(transparent)]
    Clap(#[from] clap::Error),
    /// A value parsed but makes no sense for the simulator.
    #[error("invalid value for {flag}: {reason}")]
    Invalid {
        /// The flag, as written on the command line.
        flag: &'static str,
        /// What is wrong and what to do instead.
        reason: String,
    },
}

impl ConfigError {
    /// Low-cardinality label for metrics and logs.
    pub fn metric_label(&self) -> &'static str {
        match self {
            ConfigError::Clap(_) => "parse",
            ConfigError::Invalid { .. } => "invalid",
        }
    }
}

/// Full configuration of one simulated `vllm serve` process.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "vllm-sim",
    version,
    about = "A fast stand-in for `vllm serve`: OpenAI-compatible API, vLLM metrics, \
             simulated latency, prefix cache, queueing and faults. No GPU needed.",
    after_help = "Unknown flags (any other `vllm serve` option) are accepted and ignored."
)]
pub struct Config {
    /// Flags with the names `vllm serve` uses.
    #[command(flatten)]
    pub vllm: VllmArgs,
    /// Simulation knobs (`--sim-*`, `VLLM_SIM_*`).
    #[command(flatten)]
    pub sim: SimArgs,
    /// Arguments dropped by the lenient pre-filter, for logging.
    #[arg(skip)]
    pub ignored_args: Vec<String>,
}

/// The subset of `vllm serve` arguments the simulator understands.
#[derive(Debug, Clone, Args)]
pub struct VllmArgs {
    /// Model to serve, as in `vllm serve MODEL`; wins over `--model`, like vLLM.
    #[arg(value_name = "MODEL")]
    pub model_tag: Option<String>,

    /// Model to serve (name or path); reported as `root` in /v1/models.
    #[arg(long)]
    pub model: Option<String>,

    /// Names the API accepts for the base model; the first one is reported in
    /// responses and in the `model_name` metric label. Defaults to the model.
    #[arg(long, num_args = 1.., value_name = "NAME")]
    pub served_model_name: Vec<String>,

    /// Address to listen on (a host name or an IP address).
    #[arg(long, default_value = "0.0.0.0")]
    pub host: String,

    /// Port to listen on; 0 picks a free port.
    #[arg(long, default_value_t = 8000)]
    pub port: u16,

    /// LoRA adapters served as extra models: `name=path` or
    /// `{"name": .., "path": .., "base_model_name": ..}`; repeatable, space-separated.
    #[arg(long, num_args = 1.., value_name = "NAME=PATH", value_parser = parse_lora_module)]
    pub lora_modules: Vec<LoraModule>,

    /// Enable LoRA support (implied by `--lora-modules`); turns on `vllm:lora_requests_info`.
    #[arg(long)]
    pub enable_lora: bool,

    /// Reported as the `max_lora` label of `vllm:lora_requests_info`.
    #[arg(long, default_value_t = 1)]
    pub max_loras: u32,

    /// Context length: prompt plus completion tokens; accepts `4096`, `32k`, `1K`.
    #[arg(long, default_value = "4096", value_parser = parse_human_count)]
    pub max_model_len: u64,

    /// Sequences processed at once; further requests wait in a FIFO queue.
    #[arg(long, default_value_t = 256)]
    pub max_num_seqs: usize,

    /// Tokens per KV-cache block (prefix cache granularity).
    #[arg(long, default_value_t = 16)]
    pub block_size: usize,

    /// Prefix caching is on by default, as in vLLM V1; this flag is accepted for symmetry.
    #[arg(long, overrides_with = "no_enable_prefix_caching")]
    pub enable_prefix_caching: bool,

    /// Turn prefix caching off.
    #[arg(long, overrides_with = "enable_prefix_caching")]
    pub no_enable_prefix_caching: bool,

    /// KV-cache size in blocks; an alias of `--sim-kv-cache-blocks`.
    #[arg(long)]
    pub num_gpu_blocks_override: Option<u64>,

    /// Refused, as by vLLM >= 0.11 (`--runner pooling` replaced `--task embed`):
    /// parsed only so the error can say what to use instead.
    #[arg(long)]
    pub task: Option<String>,

    /// `pooling` serves an embedding model (vLLM >= 0.10 spelling of `--task embed`).
    #[arg(long)]
    pub runner: Option<String>,

    /// `embed` serves an embedding model.
    #[arg(long)]
    pub convert: Option<String>,

    /// Report `usage.prompt_tokens_details.cached_tokens` (prefix cache hits).
    #[arg(long)]
    pub enable_prompt_tokens_details: bool,

    /// Send the usage chunk on every stream, as if `include_usage` were always set.
    #[arg(long)]
    pub enable_force_include_usage: bool,

    /// Seconds SIGTERM lets in-flight requests finish (new ones get 500);
    /// 0, vLLM's default, aborts them at once. See [`crate::lifecycle`].
    #[arg(long, default_value_t = 0)]
    pub shutdown_timeout: u64,

    /// Require `Authorization: Bearer KEY` on /v1 routes (vLLM also reads `VLLM_API_KEY`).
    #[arg(long, num_args = 1.., env = "VLLM_API_KEY", value_name = "KEY")]
    pub api_key: Vec<String>,
}

/// Simulation knobs. Latencies are floats in milliseconds; 0 disables a delay
/// entirely (no timer is armed), which is what proxy benchmarks should use.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Simulation")]
pub struct SimArgs {
    /// Base time to first token, paid by every request once it is scheduled.
    #[arg(long = "sim-ttft-ms", env = "VLLM_SIM_TTFT_MS", default_value_t = 20.0)]
    pub ttft_ms: f64,

    /// Extra prefill time per prompt token not found in the prefix cache.
    #[arg(
        long = "sim-prefill-ms-per-token",
        env = "VLLM_SIM_PREFILL_MS_PER_TOKEN",
        default_value_t = 0.1
    )]
    pub prefill_ms_per_token: f64,

    /// Inter-token latency: time between two output tokens of one sequence.
    #[arg(long = "sim-itl-ms", env = "VLLM_SIM_ITL_MS", default_value_t = 5.0)]
    pub itl_ms: f64,

    /// Output tokens when a request sets no `max_tokens`; such a request ends
    /// with finish_reason `stop` (as if the model emitted EOS), otherwise `length`.
    #[arg(
        long = "sim-default-max-tokens",
        env = "VLLM_SIM_DEFAULT_MAX_TOKENS",
        default_value_t = 16
    )]
    pub default_max_tokens: u64,

    /// Startup time during which every endpoint, /health included, answers 503.
    #[arg(
        long = "sim-startup-delay-ms",
        env = "VLLM_SIM_STARTUP_DELAY_MS",
        default_value_t = 0
    )]
    pub startup_delay_ms: u64,

    /// Fraction (0..=1) of inference requests answered 500 with vLLM's error body.
    #[arg(
        long = "sim-error-rate",
        env = "VLLM_SIM_ERROR_RATE",
        default_value_t = 0.0
    )]
    pub error_rate: f64,

    /// Fraction (0..=1) of streams whose connection is cut halfway, before `[DONE]`.
    #[arg(
        long = "sim-drop-rate",
        env = "VLLM_SIM_DROP_RATE",
        default_value_t = 0.0
    )]
    pub drop_rate: f64,

    /// KV-cache capacity in blocks: bounds the prefix cache (LRU) and is the
    /// denominator of `vllm:kv_cache_usage_perc`.
    #[arg(
        long = "sim-kv-cache-blocks",
        env = "VLLM_SIM_KV_CACHE_BLOCKS",
        default_value_t = 4096
    )]
    pub kv_cache_blocks: u64,

    /// Length of the vectors /v1/embeddings returns.
    #[arg(
        long = "sim-embedding-dim",
        env = "VLLM_SIM_EMBEDDING_DIM",
        default_value_t = 384
    )]
    pub embedding_dim: usize,

    /// What SIGTERM does to requests still open when the engine stops (at
    /// once, or after `--shutdown-timeout`): `stall` (no more output, the
    /// connection stays open: vLLM's usual outcome) or `abort` (vLLM's
    /// engine-error frame and `[DONE]`).
    #[arg(
        long = "sim-on-sigterm",
        env = "VLLM_SIM_ON_SIGTERM",
        value_enum,
        default_value_t = crate::lifecycle::OnSigterm::Stall
    )]
    pub on_sigterm: crate::lifecycle::OnSigterm,

    /// Log format.
    #[arg(
        long = "sim-log-format",
        env = "VLLM_SIM_LOG_FORMAT",
        value_enum,
        default_value_t = LogFormat::Text
    )]
    pub log_format: LogFormat,
}

/// How `main` writes logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// A LoRA adapter served under its own model name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoraModule {
    /// Model name clients use to select the adapter.
    pub name: String,
    /// Adapter path; reported as `root` in /v1/models, never read.
    pub path: String,
    /// Parent reported in /v1/models; the first served model name when absent.
    pub base_model_name: Option<String>,
}

/// What the served model does, from `--task`, `--runner` and `--convert`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelKind {
    /// Text generation: chat and completions.
    Generate,
    /// Embeddings.
    Embed,
}

impl Config {
    /// Parses a `vllm serve`-style argv (`args[0]` is the program name) leniently:
    /// an optional leading `serve` word and unknown flags are dropped, then clap
    /// parses the rest, reading `VLLM_SIM_*` variables for unset knobs.
    pub fn from_vllm_args<I, T>(args: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString>,
    {
        let mut command = Config::command();
        let filtered = argv::filter(args, &mut command);
        let matches = command.try_get_matches_from(filtered.kept)?;
        let mut config = Config::from_arg_matches(&matches)?;
        config.ignored_args = filtered.ignored;
        config.validate()?;
        Ok(config)
    }

    /// A configuration for tests: `model` served on 127.0.0.1 with an ephemeral
    /// port, every latency zero, no faults, no startup delay. Environment
    /// variables cannot change it; adjust the public fields afterwards.
    pub fn for_tests(model: &str) -> Self {
        let vllm = VllmArgs {
            model_tag: Some(model.to_owned()),
            model: None,
            served_model_name: Vec::new(),
            host: "127.0.0.1".to_owned(),
            port: 0,
            lora_modules: Vec::new(),
            enable_lora: false,
            max_loras: 1,
            max_model_len: 4096,
            max_num_seqs: 256,
            block_size: 16,
            enable_prefix_caching: false,
            no_enable_prefix_caching: false,
            num_gpu_blocks_override: None,
            task: None,
            runner: None,
            convert: None,
            enable_prompt_tokens_details: false,
            enable_force_include_usage: false,
            api_key: Vec::new(),
            shutdown_timeout: 0,
        };
        let sim = SimArgs {
            ttft_ms: 0.0,
            prefill_ms_per_token: 0.0,
            itl_ms: 0.0,
            default_max_tokens: 16,
            startup_delay_ms: 0,
            error_rate: 0.0,
            drop_rate: 0.0,
            kv_cache_blocks: 4096,
            embedding_dim: 384,
            on_sigterm: crate::lifecycle::OnSigterm::Stall,
            log_format: LogFormat::Text,
        };
        Config {
            vllm,
            sim,
            ignored_args: Vec::new(),
        }
    }

    /// Checks the values clap cannot check by type.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fraction = |flag: &'static str, value: f64| {
            if (0.0..=1.0).contains(&value) {
                Ok(())
            } else {
                Err(ConfigError::Invalid {
                    flag,
                    reason: format!("{value} is not a fraction; use a number from 0 to 1"),
                })
            }
        };
        if self.vllm.task.is_some() {
            // vLLM 0.32's words.
            return Err(ConfigError::Invalid {
                flag: "--task",
                reason: "--task is not a vllm serve option. For embedding, reranking, or reward \
                         models, use --runner pooling. To adapt a generative model for pooling, \
                         also use --convert embed, --convert classify, or --convert reward."
                    .to_owned(),
            });
        }
        fraction("--sim-error-rate", self.sim.error_rate)?;
        fraction("--sim-drop-rate", self.sim.drop_rate)?;
        let latency = |flag: &'static str, value: f64| {
            if value.is_finite() && value >= 0.0 {
                Ok(())
            } else {
                Err(ConfigError::Invalid {
                    flag,
                    reason: format!("{value} is not a duration; use milliseconds >= 0"),
                })
            }
        };
        latency("--sim-ttft-ms", self.sim.ttft_ms)?;
        latency("--sim-prefill-ms-per-token", self.sim.prefill_ms_per_token)?;
        latency("--sim-itl-ms", self.sim.itl_ms)?;
        let positive = |flag: &'static str, value: u64| {
            if value > 0 {
                Ok(())
            } else {
                Err(ConfigError::Invalid {
                    flag,
                    reason: "must be at least 1".to_owned(),
                })
            }
        };
        positive("--max-num-seqs", self.vllm.max_num_seqs as u64)?;
        positive("--block-size", self.vllm.block_size as u64)?;
        positive("--max-model-len", self.vllm.max_model_len)?;
        positive("--sim-embedding-dim", self.sim.embedding_dim as u64)?;
        if self.vllm.max_num_seqs > tokio::sync::Semaphore::MAX_PERMITS {
            return Err(ConfigError::Invalid {
                flag: "--max-num-seqs",
                reason: format!(
                    "at most {} is supported",
                    tokio::sync::Semaphore::MAX_PERMITS
                ),
            });
        }
        Ok(())
    }

    /// The model path or name: positional MODEL, else `--model`, else [`DEFAULT_MODEL`].
    pub fn model_path(&self) -> &str {
        self.vllm
            .model_tag
            .as_deref()
            .or(self.vllm.model.as_deref())
            .unwrap_or(DEFAULT_MODEL)
    }

    /// Names the base model answers to; the first is the canonical one.
    pub fn served_model_names(&self) -> Vec<String> {
        if self.vllm.served_model_name.is_empty() {
            vec![self.model_path().to_owned()]
        } else {
            self.vllm.served_model_name.clone()
        }
    }

    /// Generation or embeddings.
    pub fn model_kind(&self) -> ModelKind {
        let is = |value: &Option<String>, wanted: &[&str]| {
            value
                .as_deref()
                .is_some_and(|v| wanted.iter().any(|w| v.eq_ignore_ascii_case(w)))
        };
        if is(&self.vllm.runner, &["pooling"]) || is(&self.vllm.convert, &["embed"]) {
            ModelKind::Embed
        } else {
            ModelKind::Generate
        }
    }

    /// Whether LoRA metrics and adapters are on (`--enable-lora` or any `--lora-modules`).
    pub fn lora_enabled(&self) -> bool {
        self.vllm.enable_lora || !self.vllm.lora_modules.is_empty()
    }

    /// Whether the prefix cache is used.
    pub fn prefix_caching(&self) -> bool {
        !self.vllm.no_enable_prefix_caching
    }

    /// KV-cache blocks: `--num-gpu-blocks-override` if given, else `--sim-kv-cache-blocks`.
    pub fn kv_cache_blocks(&self) -> u64 {
        self.vllm
            .num_gpu_blocks_override
            .unwrap_or(self.sim.kv_cache_blocks)
    }

    /// `host:port` to bind, resolved (host names allowed).
    pub async fn resolve_listen_addr(&self) -> std::io::Result<SocketAddr> {
        let host = self.vllm.host.trim_start_matches('[').trim_end_matches(']');
        tokio::net::lookup_host((host, self.vllm.port))
            .await?
            .next()
            .ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("--host {host} resolves to no address"),
                )
            })
    }

    /// Base time to first token.
    pub fn ttft(&self) -> Duration {
        millis(self.sim.ttft_ms)
    }

    /// Inter-token latency.
    pub fn itl(&self) -> Duration {
        millis(self.sim.itl_ms)
    }
}

/// Converts validated, non-negative milliseconds to a duration.
pub(crate) fn millis(ms: f64) -> Duration {
    if ms.is_finite() && ms > 0.0 {
        Duration::from_secs_f64(ms / 1000.0)
    } else {
        Duration::ZERO
    }
}

/// Parses one `--lora-modules` value: `name=path` or a JSON object.
pub fn parse_lora_module(value: &str) -> Result<LoraModule, String> {
    #[derive(serde::Deserialize)]
    struct JsonForm {
        name: String,
        path: String,
        #[serde(default)]
        base_model_name: Option<String>,
    }
    let trimmed = value.trim();
    if trimmed.starts_with('{') {
        let parsed: JsonForm = serde_json::from_str(trimmed).map_err(|err| {
            format!("invalid JSON LoRA module {trimmed:?}: {err}; expected {{\"name\": .., \"path\": ..}}")
        })?;
        return Ok(LoraModule {
            name: parsed.name,
            path: parsed.path,
            base_model_name: parsed.base_model_name,
        });
    }
    match trimmed.split_once('=') {
        Some((name, path)) if !name.is_empty() && !path.is_empty() => Ok(LoraModule {
            name: name.to_owned(),
            path: path.to_owned(),
            base_model_name: None,
        }),
        _ => Err(format!(
            "invalid LoRA module {trimmed:?}; expected name=path or a JSON object"
        )),
    }
}

/// Parses a count the way recent vLLM does for `--max-model-len`: plain digits,
/// or a suffix `k`/`m`/`g` (powers of 1000) or `K`/`M`/`G` (powers of 1024).
pub fn parse_human_count(value: &str) -> Result<u64, String> {
    let value = value.trim();
    let (digits, multiplier) = match value.chars().last() {
        Some('k') => (&value[..value.len() - 1], 1_000),
        Some('m') => (&value[..value.len() - 1], 1_000_000),
        Some('g') => (&value[..value.len() - 1], 1_000_000_000),
        Some('K') => (&value[..value.len() - 1], 1 << 10),
        Some('M') => (&value[..value.len() - 1], 1 << 20),
        Some('G') => (&value[..value.len() - 1], 1 << 30),
        _ => (value, 1),
    };
    let number: f64 = digits
        .parse()
        .map_err(|_| format!("{value:?} is not a count; use e.g. 4096 or 32k"))?;
    if !number.is_finite() || number <= 0.0 {
        return Err(format!("{value:?} must be positive"));
    }
    Ok((number * multiplier as f64) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lora_module_forms() {
        assert_eq!(
            parse_lora_module("sql=/adapters/sql").unwrap(),
            LoraModule {
                name: "sql".into(),
                path: "/adapters/sql".into(),
                base_model_name: None
            }
        );
        let json = parse_lora_module(r#"{"name":"a","path":"/p","base_model_name":"b"}"#).unwrap();
        assert_eq!(json.base_model_name.as_deref(), Some("b"));
        assert!(parse_lora_module("no-equals").is_err());
        assert!(parse_lora_module("{bad json").is_err());
    }

    #[test]
    fn human_counts() {
        assert_eq!(parse_human_count("4096").unwrap(), 4096);
        assert_eq!(parse_human_count("32k").unwrap(), 32_000);
        assert_eq!(parse_human_count("1K").unwrap(), 1024);
        assert_eq!(parse_human_count("1.5k").unwrap(), 1500);
        assert!(parse_human_count("-1").is_err());
        assert!(parse_human_count("lots").is_err());
    }

    #[test]
    fn vllm_command_line_parses_and_ignores_unknown_flags() {
        let config = Config::from_vllm_args([
            "vllm",
            "serve",
            "meta-llama/Llama-3.1-8B-Instruct",
            "--tensor-parallel-size",
            "2",
            "--dtype=bfloat16",
            "--trust-remote-code",
            "--served-model-name",
            "llama",
            "llama-8b",
            "--enable-lora",
            "--lora-modules",
            "sql=/a/sql",
            r#"{"name":"chat","path":"/a/chat"}"#,
            "--max_model_len",
            "8k",
            "--gpu-memory-utilization",
            "0.9",
            "--port",
            "9000",
            "-tp",
            "2",
            "--sim-itl-ms",
            "0",
        ])
        .unwrap();
        assert_eq!(config.model_path(), "meta-llama/Llama-3.1-8B-Instruct");
        assert_eq!(config.served_model_names(), vec!["llama", "llama-8b"]);
        assert_eq!(config.vllm.lora_modules.len(), 2);
        assert_eq!(config.vllm.max_model_len, 8000);
        assert_eq!(config.vllm.port, 9000);
        assert_eq!(config.sim.itl_ms, 0.0);
        assert!(config.lora_enabled());
        assert_eq!(config.model_kind(), ModelKind::Generate);
    }

    #[test]
    fn task_is_refused_as_by_vllm() {
        let err = Config::from_vllm_args(["vllm-sim", "m", "--task", "embed"]).unwrap_err();
        assert!(err.to_string().contains("--runner pooling"), "{err}");
    }

    #[test]
    fn embedding_task_spellings() {
        for args in [
            vec!["vllm-sim", "m", "--runner", "pooling"],
            vec!["vllm-sim", "m", "--convert", "embed"],
        ] {
            let config = Config::from_vllm_args(args).unwrap();
            assert_eq!(config.model_kind(), ModelKind::Embed);
        }
    }

    #[test]
    fn rates_are_validated() {
        let err = Config::from_vllm_args(["vllm-sim", "--sim-error-rate", "1.5"]).unwrap_err();
        assert_eq!(err.metric_label(), "invalid");
    }

    #[test]
    fn model_flag_and_default() {
        let config = Config::from_vllm_args(["vllm-sim", "--model", "opt"]).unwrap();
        assert_eq!(config.model_path(), "opt");
        let config = Config::from_vllm_args(["vllm-sim"]).unwrap();
        assert_eq!(config.model_path(), DEFAULT_MODEL);
        assert!(config.prefix_caching());
        let config = Config::from_vllm_args(["vllm-sim", "--no-enable-prefix-caching"]).unwrap();
        assert!(!config.prefix_caching());
    }
}
