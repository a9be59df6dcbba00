//! kinfer-operator: turns InferenceModels into GPU-scheduled vLLM Deployments.
//!
//! - [`controller`]: the reconcile pipeline (fetch -> validate -> build -> apply -> status).
//! - [`autoscaler`]: the replica count ([`autoscaler::desired_replicas`]).
//! - [`leader`]: Lease-based leader election.
//! - [`metrics`], [`admin`]: Prometheus metrics and the `/metrics`, `/healthz`, `/readyz` server.

pub mod admin;
pub mod autoscaler;
pub mod controller;
pub mod leader;
pub mod metrics;
