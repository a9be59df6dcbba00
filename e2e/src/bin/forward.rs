//! `kinfer-forward`: loopback port forwards to Services' ready pods on the
//! test bed (see `kinfer_e2e::forward`).

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use kinfer_e2e::forward::ForwardSpec;

#[derive(Parser, Debug)]
#[command(
    name = "kinfer-forward",
    about = "Forwards loopback ports to a Service's ready pods"
)]
struct Args {
    /// Kubeconfig to use (default: KUBECONFIG / in-cluster).
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// `LISTEN_ADDR=NAMESPACE/SERVICE:PORT`, e.g.
    /// `127.0.0.1:8080=kinfer-system/kinfer-gateway:80`; repeatable.
    #[arg(required = true)]
    forwards: Vec<ForwardSpec>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    kinfer_e2e::init_tracing();
    let args = Args::parse();
    let client = kinfer_e2e::client_from(args.kubeconfig.as_deref())
        .await
        .context("connecting to the API server")?;
    let tasks: Vec<_> = args
        .forwards
        .into_iter()
        .map(|spec| tokio::spawn(kinfer_e2e::forward::run(client.clone(), spec)))
        .collect();
    for task in tasks {
        task.await.context("forward task")?.context("forward")?;
    }
    Ok(())
}
