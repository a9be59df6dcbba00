//! kinfer-operator: turns InferenceModels into GPU-scheduled vLLM Deployments.
//!
//! - [`controller`]: the reconcile pipeline (fetch -> validate -> build -> apply -> status).
//! - [`autoscaler`]: the replica count ([`autoscaler::desired_replicas`]) and the built-in
//!   autoscaler's loop.
//! - [`leader`]: Lease-based leader election.
//! - [`metrics`], [`admin`]: Prometheus metrics and the `/metrics`, `/healthz`, `/readyz` server.
//! - [`cli`]: the command line.

pub mod admin;
pub mod autoscaler;
pub mod cli;
pub mod controller;
pub mod leader;
pub mod metrics;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

/// What the leader runs until `shutdown`: the controller and, when `autoscaler` is set, the
/// built-in autoscaler, whose decisions trigger reconciliations.
pub async fn run_leader(
    context: Arc<controller::Context>,
    autoscaler: Option<autoscaler::AutoscalerConfig>,
    shutdown: CancellationToken,
) {
    let stopped = {
        let shutdown = shutdown.clone();
        async move { shutdown.cancelled().await }
    };
    let Some(config) = autoscaler else {
        controller::run(context, stopped).await;
        return;
    };
    let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
    let scaler_shutdown = shutdown.child_token();
    let scaler = tokio::spawn(autoscaler::run(
        context.clone(),
        config,
        sender,
        scaler_shutdown.clone(),
    ));
    let triggers = futures::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|model| (model, receiver))
    });
    controller::run_with_triggers(context, triggers, stopped).await;
    // The controller also stops when its watches end; the autoscaler must not outlive it.
    scaler_shutdown.cancel();
    let _ = scaler.await;
}
