//! vLLM's Prometheus metrics, with vLLM's names, labels and buckets
//! (`vllm/v1/metrics/loggers.py`), rendered by hand.
//!
//! The text is written here rather than through the `prometheus-client` crate:
//! vLLM's names contain a colon (`vllm:num_requests_running`) and its labels
//! come in a fixed order (`model_name`, then `engine`), and consumers such as
//! inference gateways match these exact strings. Values are plain atomics, so
//! recording is lock-free; rendering reads the scheduler's live counts.
//!
//! Every metric carries `model_name` (the first served model name) and
//! `engine="0"`. Counters follow vLLM 0.32's exposition: `# TYPE name_total
//! counter` with its sample, then `# TYPE name_created gauge` with its own.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::scheduler::Scheduler;

/// Why a request ended (the `finished_reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// The model stopped by itself (EOS or stop string).
    Stop,
    /// `max_tokens` reached.
    Length,
    /// Cancelled, usually because the client went away.
    Abort,
}

impl FinishReason {
    /// The OpenAI / vLLM spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Abort => "abort",
        }
    }

    const ALL: [FinishReason; 3] = [
        FinishReason::Stop,
        FinishReason::Length,
        FinishReason::Abort,
    ];

    fn index(self) -> usize {
        match self {
            FinishReason::Stop => 0,
            FinishReason::Length => 1,
            FinishReason::Abort => 2,
        }
    }
}

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds `n`.
    pub fn add(&self, n: u64) {
        if n > 0 {
            self.0.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A histogram with fixed upper bounds.
#[derive(Debug)]
pub struct Histogram {
    bounds: Box<[f64]>,
    buckets: Box<[AtomicU64]>,
    count: AtomicU64,
    sum_bits: AtomicU64,
}

impl Histogram {
    /// A histogram with the given (sorted) upper bounds; `+Inf` is implicit.
    pub fn new(bounds: &[f64]) -> Self {
        Histogram {
            bounds: bounds.into(),
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_bits: AtomicU64::new(0f64.to_bits()),
        }
    }

    /// Records one value.
    pub fn observe(&self, value: f64) {
        self.observe_many(value, 1);
    }

    /// Records `n` observations of the same value with one update.
    pub fn observe_many(&self, value: f64, n: u64) {
        if n == 0 || !value.is_finite() {
            return;
        }
        let bucket = self.bounds.partition_point(|bound| *bound < value);
        self.buckets[bucket].fetch_add(n, Ordering::Relaxed);
        self.count.fetch_add(n, Ordering::Relaxed);
        let added = value * n as f64;
        let _ = self
            .sum_bits
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + added).to_bits())
            });
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Sum of observations.
    pub fn sum(&self) -> f64 {
        f64::from_bits(self.sum_bits.load(Ordering::Relaxed))
    }
}

const TTFT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
];
const TOKEN_LATENCY_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
    40.0, 80.0,
];
const REQUEST_LATENCY_BUCKETS: &[f64] = &[
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
    480.0, 960.0, 1920.0, 7680.0,
];

/// vLLM's `build_1_2_5_buckets(max_model_len)`: 1, 2, 5, 10, 20, 50, ... up to the limit.
fn one_two_five_buckets(max_value: u64) -> Vec<f64> {
    let mut buckets = Vec::new();
    let mut scale = 1u64;
    'outer: loop {
        for mantissa in [1u64, 2, 5] {
            let Some(value) = mantissa.checked_mul(scale) else {
                break 'outer;
            };
            if value > max_value {
                break 'outer;
            }
            buckets.push(value as f64);
        }
        match scale.checked_mul(10) {
            Some(next) => scale = next,
            None => break,
        }
    }
    buckets
}

/// One finished request, as the engine saw it.
#[derive(Debug, Clone, Copy)]
pub struct FinishedRequest {
    /// Why it ended.
    pub reason: FinishReason,
    /// Arrival to last token (or to abort).
    pub e2e: Duration,
    /// Time queued.
    pub queued: Option<Duration>,
    /// Scheduled to first token.
    pub prefill: Option<Duration>,
    /// First token to last token.
    pub decode: Option<Duration>,
    /// Prompt tokens.
    pub prompt_tokens: u64,
    /// Generated tokens (all choices).
    pub generation_tokens: u64,
}

/// All metrics of one simulated engine.
#[derive(Debug)]
pub struct Metrics {
    labels: String,
    created: f64,
    max_lora: Option<u32>,
    cache_config_labels: String,
    kv_cache_blocks: u64,
    /// Prompt tokens prefilled (`vllm:prompt_tokens`).
    pub prompt_tokens: Counter,
    /// Tokens generated (`vllm:generation_tokens`).
    pub generation_tokens: Counter,
    /// Prompt tokens looked up in the prefix cache (`vllm:prefix_cache_queries`).
    pub prefix_cache_queries: Counter,
    /// Prompt tokens found in the prefix cache (`vllm:prefix_cache_hits`).
    pub prefix_cache_hits: Counter,
    request_success: [Counter; 3],
    /// `vllm:time_to_first_token_seconds`.
    pub time_to_first_token: Histogram,
    /// `vllm:inter_token_latency_seconds` (and the older `time_per_output_token`).
    pub inter_token_latency: Histogram,
    e2e_latency: Histogram,
    queue_time: Histogram,
    prefill_time: Histogram,
    decode_time: Histogram,
    inference_time: Histogram,
    request_prompt_tokens: Histogram,
    request_generation_tokens: Histogram,
}

/// Static shape of the metrics, from the configuration.
#[derive(Debug, Clone)]
pub struct MetricsSpec {
    /// First served model name.
    pub model_name: String,
    /// `max_lora` label; `None` hides `vllm:lora_requests_info`, as vLLM does without LoRA.
    pub max_lora: Option<u32>,
    /// Context length (token-count histogram buckets).
    pub max_model_len: u64,
    /// KV-cache capacity in blocks.
    pub kv_cache_blocks: u64,
    /// Tokens per block.
    pub block_size: usize,
    /// Whether prefix caching is on.
    pub prefix_caching: bool,
}

impl Metrics {
    /// Empty metrics for the given model.
    pub fn new(spec: &MetricsSpec) -> Self {
        let created = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        let token_buckets = one_two_five_buckets(spec.max_model_len);
        Metrics {
            labels: format!(
                "model_name=\"{}\",engine=\"0\"",
                escape_label(&spec.model_name)
            ),
            created,
            max_lora: spec.max_lora,
            cache_config_labels: format!(
                "block_size=\"{}\",enable_prefix_caching=\"{}\",num_gpu_blocks=\"{}\",engine=\"0\"",
                spec.block_size,
                if spec.prefix_caching { "True" } else { "False" },
                spec.kv_cache_blocks
            ),
            kv_cache_blocks: spec.kv_cache_blocks,
            prompt_tokens: Counter::default(),
            generation_tokens: Counter::default(),
            prefix_cache_queries: Counter::default(),
            prefix_cache_hits: Counter::default(),
            request_success: Default::default(),
            time_to_first_token: Histogram::new(TTFT_BUCKETS),
            inter_token_latency: Histogram::new(TOKEN_LATENCY_BUCKETS),
            e2e_latency: Histogram::new(REQUEST_LATENCY_BUCKETS),
            queue_time: Histogram::new(REQUEST_LATENCY_BUCKETS),
            prefill_time: Histogram::new(REQUEST_LATENCY_BUCKETS),
            decode_time: Histogram::new(REQUEST_LATENCY_BUCKETS),
            inference_time: Histogram::new(REQUEST_LATENCY_BUCKETS),
            request_prompt_tokens: Histogram::new(&token_buckets),
            request_generation_tokens: Histogram::new(&token_buckets),
        }
    }

    /// Requests finished with `reason` (`vllm:request_success`).
    pub fn request_success(&self, reason: FinishReason) -> u64 {
        self.request_success[reason.index()].get()
    }

    /// Records the end of a request.
    pub fn record_finished(&self, request: &FinishedRequest) {
        self.request_success[request.reason.index()].add(1);
        self.e2e_latency.observe(request.e2e.as_secs_f64());
        if let Some(queued) = request.queued {
            self.queue_time.observe(queued.as_secs_f64());
        }
        if let Some(prefill) = request.prefill {
            self.prefill_time.observe(prefill.as_secs_f64());
        }
        if let Some(decode) = request.decode {
            self.decode_time.observe(decode.as_secs_f64());
        }
        if let (Some(prefill), Some(decode)) = (request.prefill, request.decode) {
            self.inference_time
                .observe((prefill + decode).as_secs_f64());
        }
        self.request_prompt_tokens
            .observe(request.prompt_tokens as f64);
        self.request_generation_tokens
            .observe(request.generation_tokens as f64);
    }

    /// Prometheus text exposition of everything, with live scheduler gauges.
    pub fn render(&self, scheduler: &Scheduler) -> String {
        let mut out = String::with_capacity(16 * 1024);
        let labels = &self.labels;

        self.gauge(
            &mut out,
            "vllm:num_requests_running",
            "Number of requests in model execution batches.",
            scheduler.running() as f64,
        );
        self.gauge(
            &mut out,
            "vllm:num_requests_waiting",
            "Number of requests waiting to be processed.",
            scheduler.waiting() as f64,
        );
        let usage = if self.kv_cache_blocks == 0 {
            0.0
        } else {
            (scheduler.kv_blocks_in_use() as f64 / self.kv_cache_blocks as f64).min(1.0)
        };
        self.gauge(
            &mut out,
            "vllm:gpu_cache_usage_perc",
            "GPU KV-cache usage. 1 means 100 percent usage.DEPRECATED: Use vllm:kv_cache_usage_perc instead.",
            usage,
        );
        self.gauge(
            &mut out,
            "vllm:kv_cache_usage_perc",
            "KV-cache usage. 1 means 100 percent usage.",
            usage,
        );

        self.counter(
            &mut out,
            "vllm:prefix_cache_queries",
            "Prefix cache queries, in terms of number of queried tokens.",
            &self.prefix_cache_queries,
        );
        self.counter(
            &mut out,
            "vllm:prefix_cache_hits",
            "Prefix cache hits, in terms of number of cached tokens.",
            &self.prefix_cache_hits,
        );
        self.counter(
            &mut out,
            "vllm:num_preemptions",
            "Cumulative number of preemption from the engine.",
            &Counter::default(),
        );
        self.counter(
            &mut out,
            "vllm:prompt_tokens",
            "Number of prefill tokens processed.",
            &self.prompt_tokens,
        );
        self.counter(
            &mut out,
            "vllm:generation_tokens",
            "Number of generation tokens processed.",
            &self.generation_tokens,
        );

        header(
            &mut out,
            "vllm:request_success",
            "Count of successfully processed requests.",
            "counter",
        );
        for reason in FinishReason::ALL {
            let value = self.request_success(reason);
            let _ = writeln!(
                out,
                "vllm:request_success_total{{{labels},finished_reason=\"{}\"}} {}",
                reason.as_str(),
                go_float(value as f64)
            );
        }
        created_header(
            &mut out,
            "vllm:request_success",
            "Count of successfully processed requests.",
        );
        for reason in FinishReason::ALL {
            let _ = writeln!(
                out,
                "vllm:request_success_created{{{labels},finished_reason=\"{}\"}} {}",
                reason.as_str(),
                go_float(self.created)
            );
        }

        self.histogram(
            &mut out,
            "vllm:request_prompt_tokens",
            "Number of prefill tokens processed.",
            &self.request_prompt_tokens,
        );
        self.histogram(
            &mut out,
            "vllm:request_generation_tokens",
            "Number of generation tokens processed.",
            &self.request_generation_tokens,
        );
        self.histogram(
            &mut out,
            "vllm:time_to_first_token_seconds",
            "Histogram of time to first token in seconds.",
            &self.time_to_first_token,
        );
        self.histogram(
            &mut out,
            "vllm:time_per_output_token_seconds",
            "Histogram of time per output token in seconds.",
            &self.inter_token_latency,
        );
        self.histogram(
            &mut out,
            "vllm:inter_token_latency_seconds",
            "Histogram of inter-token latency in seconds.",
            &self.inter_token_latency,
        );
        self.histogram(
            &mut out,
            "vllm:e2e_request_latency_seconds",
            "Histogram of e2e request latency in seconds.",
            &self.e2e_latency,
        );
        self.histogram(
            &mut out,
            "vllm:request_queue_time_seconds",
            "Histogram of time spent in WAITING phase for request.",
            &self.queue_time,
        );
        self.histogram(
            &mut out,
            "vllm:request_inference_time_seconds",
            "Histogram of time spent in RUNNING phase for request.",
            &self.inference_time,
        );
        self.histogram(
            &mut out,
            "vllm:request_prefill_time_seconds",
            "Histogram of time spent in PREFILL phase for request.",
            &self.prefill_time,
        );
        self.histogram(
            &mut out,
            "vllm:request_decode_time_seconds",
            "Histogram of time spent in DECODE phase for request.",
            &self.decode_time,
        );

        if let Some(max_lora) = self.max_lora {
            let (running, waiting) = scheduler.adapter_labels();
            header(
                &mut out,
                "vllm:lora_requests_info",
                "Running stats on lora requests.",
                "gauge",
            );
            // vLLM sets this gauge to the current time on every update.
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0);
            let _ = writeln!(
                out,
                "vllm:lora_requests_info{{max_lora=\"{max_lora}\",waiting_lora_adapters=\"{}\",running_lora_adapters=\"{}\"}} {}",
                escape_label(&waiting),
                escape_label(&running),
                go_float(now)
            );
        }

        header(
            &mut out,
            "vllm:cache_config_info",
            "Information of the LLMEngine CacheConfig",
            "gauge",
        );
        let _ = writeln!(
            out,
            "vllm:cache_config_info{{{}}} 1.0",
            self.cache_config_labels
        );
        out
    }

    fn gauge(&self, out: &mut String, name: &str, help: &str, value: f64) {
        header(out, name, help, "gauge");
        let _ = writeln!(out, "{name}{{{}}} {}", self.labels, go_float(value));
    }

    /// A counter as vLLM 0.32's client writes it: the family named with its
    /// `_total` suffix, and `_created` as a gauge family of its own.
    fn counter(&self, out: &mut String, name: &str, help: &str, counter: &Counter) {
        header(out, name, help, "counter");
        let _ = writeln!(
            out,
            "{name}_total{{{}}} {}",
            self.labels,
            go_float(counter.get() as f64)
        );
        created_header(out, name, help);
        let _ = writeln!(
            out,
            "{name}_created{{{}}} {}",
            self.labels,
            go_float(self.created)
        );
    }

    fn histogram(&self, out: &mut String, name: &str, help: &str, histogram: &Histogram) {
        header(out, name, help, "histogram");
        let labels = &self.labels;
        let mut cumulative = 0u64;
        for (bound, bucket) in histogram.bounds.iter().zip(histogram.buckets.iter()) {
            cumulative += bucket.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels},le=\"{}\"}} {}",
                go_float(*bound),
                go_float(cumulative as f64)
            );
        }
        if let Some(overflow) = histogram.buckets.last() {
            cumulative += overflow.load(Ordering::Relaxed);
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels},le=\"+Inf\"}} {}",
            go_float(cumulative as f64)
        );
        let _ = writeln!(
            out,
            "{name}_count{{{labels}}} {}",
            go_float(cumulative as f64)
        );
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", go_float(histogram.sum()));
        let _ = writeln!(out, "{name}_created{{{labels}}} {}", go_float(self.created));
    }
}

/// `# HELP` and `# TYPE` of a family; a counter's family is named with its
/// `_total` suffix, as vLLM 0.32's client writes it.
fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let suffix = if kind == "counter" { "_total" } else { "" };
    let _ = writeln!(out, "# HELP {name}{suffix} {help}");
    let _ = writeln!(out, "# TYPE {name}{suffix} {kind}");
}

/// The header of a counter's `_created` samples: a gauge family of its own.
fn created_header(out: &mut String, name: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name}_created {help}");
    let _ = writeln!(out, "# TYPE {name}_created gauge");
}

/// Formats a float like the Python client's `floatToGoString`: `1.0`, `0.25`,
/// `+Inf`, and Go-style exponents (`1.7e+09`) once the integer part has more
/// than six digits.
pub fn go_float(value: f64) -> String {
    if value.is_nan() {
        return "NaN".to_owned();
    }
    if value.is_infinite() {
        return if value > 0.0 { "+Inf" } else { "-Inf" }.to_owned();
    }
    let repr = format!("{value:?}");
    if value > 0.0 {
        if let Some(dot) = repr.find('.') {
            if dot > 6 && !repr.contains('e') {
                let digits = format!("{}{}", &repr[1..dot], &repr[dot + 1..]);
                let mantissa = format!("{}.{}", &repr[..1], digits);
                let mantissa = mantissa.trim_end_matches('0').trim_end_matches('.');
                // Python writes `e+0` then the exponent, whatever its width.
                return format!("{mantissa}e+0{}", dot - 1);
            }
        }
    }
    repr
}

/// Escapes a label value (backslash, double quote, newline).
fn escape_label(value: &str) -> String {
    let mut escaped = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => escaped.push_str("\\\\"),
            '"' => escaped.push_str("\\\""),
            '\n' => escaped.push_str("\\n"),
            c => escaped.push(c),
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> MetricsSpec {
        MetricsSpec {
            model_name: "m".into(),
            max_lora: Some(2),
            max_model_len: 100,
            kv_cache_blocks: 10,
            block_size: 16,
            prefix_caching: true,
        }
    }

    #[test]
    fn python_client_float_format() {
        assert_eq!(go_float(0.0), "0.0");
        assert_eq!(go_float(12.0), "12.0");
        assert_eq!(go_float(0.001), "0.001");
        assert_eq!(go_float(f64::INFINITY), "+Inf");
        assert_eq!(go_float(1_723_456_789.5), "1.7234567895e+09");
        assert_eq!(go_float(1_234_567.0), "1.234567e+06");
    }

    #[test]
    fn one_two_five() {
        assert_eq!(
            one_two_five_buckets(100),
            vec![1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0]
        );
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        let metrics = Metrics::new(&spec());
        metrics.time_to_first_token.observe(0.003);
        metrics.time_to_first_token.observe_many(0.5, 2);
        metrics.time_to_first_token.observe(10_000.0);
        let text = metrics.render(&Scheduler::new(1));
        let line = |prefix: &str| {
            text.lines()
                .find(|l| l.starts_with(prefix))
                .unwrap_or_else(|| panic!("missing {prefix}"))
                .to_owned()
        };
        assert!(line(
            "vllm:time_to_first_token_seconds_bucket{model_name=\"m\",engine=\"0\",le=\"0.001\"}"
        )
        .ends_with(" 0.0"));
        assert!(line(
            "vllm:time_to_first_token_seconds_bucket{model_name=\"m\",engine=\"0\",le=\"0.005\"}"
        )
        .ends_with(" 1.0"));
        assert!(line(
            "vllm:time_to_first_token_seconds_bucket{model_name=\"m\",engine=\"0\",le=\"0.5\"}"
        )
        .ends_with(" 3.0"));
        assert!(line(
            "vllm:time_to_first_token_seconds_bucket{model_name=\"m\",engine=\"0\",le=\"+Inf\"}"
        )
        .ends_with(" 4.0"));
        assert!(line("vllm:time_to_first_token_seconds_count").ends_with(" 4.0"));
    }

    #[test]
    fn names_labels_and_lora_info() {
        let metrics = Metrics::new(&spec());
        metrics.prompt_tokens.add(7);
        metrics.record_finished(&FinishedRequest {
            reason: FinishReason::Length,
            e2e: Duration::from_millis(5),
            queued: Some(Duration::ZERO),
            prefill: Some(Duration::from_millis(1)),
            decode: Some(Duration::from_millis(4)),
            prompt_tokens: 7,
            generation_tokens: 3,
        });
        let text = metrics.render(&Scheduler::new(1));
        for expected in [
            "# TYPE vllm:num_requests_running gauge",
            "vllm:num_requests_running{model_name=\"m\",engine=\"0\"} 0.0",
            "vllm:num_requests_waiting{model_name=\"m\",engine=\"0\"} 0.0",
            "vllm:kv_cache_usage_perc{model_name=\"m\",engine=\"0\"} 0.0",
            "# TYPE vllm:prompt_tokens_total counter",
            "vllm:prompt_tokens_total{model_name=\"m\",engine=\"0\"} 7.0",
            "vllm:request_success_total{model_name=\"m\",engine=\"0\",finished_reason=\"length\"} 1.0",
            "vllm:request_success_total{model_name=\"m\",engine=\"0\",finished_reason=\"abort\"} 0.0",
            "vllm:lora_requests_info{max_lora=\"2\",waiting_lora_adapters=\"\",running_lora_adapters=\"\"}",
            "vllm:cache_config_info{block_size=\"16\",enable_prefix_caching=\"True\",num_gpu_blocks=\"10\",engine=\"0\"} 1.0",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in\n{text}");
        }
    }
}
