//! `kinfer-operator run` runs the operator; `kinfer-operator crd` prints the CRD.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;
use kinfer_operator::admin::{self, AdminState};
use kinfer_operator::cli::{Cli, Command, LogFormat, RunArgs};
use kinfer_operator::controller::build::BuildConfig;
use kinfer_operator::controller::{self, Context, ControllerConfig};
use kinfer_operator::leader::{self, LeaderElector, LeaseSettings};
use kinfer_operator::metrics::Metrics;
use kube::runtime::events::Reporter;
use kube::Client;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

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
