//! Metric names that one part of kinfer exports and another reads, defined once so a rename
//! breaks the build or a test instead of leaving the autoscaler blind.
//!
//! The gateway registers its families without prefix and suffix (`prometheus-client` adds the
//! registry's prefix, and `_total` to a counter's samples); readers match the names of the
//! samples as exposed. Both are here, checked against each other by a test, and the gateway's
//! tests check that its exposition has every sample name the operator reads.

/// The gateway's metrics (its admin port's `/metrics`).
pub mod gateway {
    /// The prefix of the gateway's registry.
    pub const PREFIX: &str = "kinfer_gateway";

    /// Gauge family, by `model`: requests sent to an engine and not finished yet.
    pub const INFLIGHT_REQUESTS_FAMILY: &str = "inflight_requests";
    /// Gauge family, by `model`: requests held while the model has no ready replica.
    pub const QUEUED_REQUESTS_FAMILY: &str = "queued_requests";
    /// Counter family, by `model` and `code`: requests answered.
    pub const REQUESTS_FAMILY: &str = "requests";

    /// The sample of [`INFLIGHT_REQUESTS_FAMILY`].
    pub const INFLIGHT_REQUESTS: &str = "kinfer_gateway_inflight_requests";
    /// The sample of [`QUEUED_REQUESTS_FAMILY`].
    pub const QUEUED_REQUESTS: &str = "kinfer_gateway_queued_requests";
    /// The sample of [`REQUESTS_FAMILY`].
    pub const REQUESTS_TOTAL: &str = "kinfer_gateway_requests_total";

    /// The label every sample above has: the model id the client sent.
    pub const MODEL_LABEL: &str = "model";

    /// Every sample name the operator's autoscaler reads from a gateway.
    pub const READ_BY_OPERATOR: [&str; 3] = [INFLIGHT_REQUESTS, QUEUED_REQUESTS, REQUESTS_TOTAL];
}

/// vLLM's metrics, which the gateway (routing) and the operator (autoscaling) read from each
/// engine. vLLM's names, so a change of vLLM's is made here once.
pub mod vllm {
    /// Gauge: requests the engine is running.
    pub const NUM_REQUESTS_RUNNING: &str = "vllm:num_requests_running";
    /// Gauge: requests waiting in the engine's scheduler.
    pub const NUM_REQUESTS_WAITING: &str = "vllm:num_requests_waiting";
    /// Counter, by `finished_reason`: requests finished.
    pub const REQUEST_SUCCESS_TOTAL: &str = "vllm:request_success_total";
    /// Gauge: fraction of KV cache blocks in use (0 to 1).
    pub const KV_CACHE_USAGE_PERC: &str = "vllm:kv_cache_usage_perc";
    /// [`KV_CACHE_USAGE_PERC`] before vLLM 0.10.
    pub const GPU_CACHE_USAGE_PERC: &str = "vllm:gpu_cache_usage_perc";
    /// Info gauge whose labels `running_lora_adapters` and `waiting_lora_adapters` list LoRA
    /// adapters (comma-separated) and whose value is when it was written.
    pub const LORA_REQUESTS_INFO: &str = "vllm:lora_requests_info";
}

#[cfg(test)]
mod tests {
    use super::gateway::*;

    #[test]
    fn gateway_sample_names_are_prefix_family_and_suffix() {
        assert_eq!(
            INFLIGHT_REQUESTS,
            format!("{PREFIX}_{INFLIGHT_REQUESTS_FAMILY}")
        );
        assert_eq!(
            QUEUED_REQUESTS,
            format!("{PREFIX}_{QUEUED_REQUESTS_FAMILY}")
        );
        assert_eq!(REQUESTS_TOTAL, format!("{PREFIX}_{REQUESTS_FAMILY}_total"));
    }
}
