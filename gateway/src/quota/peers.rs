//! Counting the ready replicas of the gateway's own Deployment, which share every key's limits
//! (see [`super::rate`]): a watch of the gateway's pods (by label, in its namespace).

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::{reflector, watcher, WatchStreamExt};
use kube::{Api, Client};

use super::Peers;
use crate::pods::is_routable;

/// Keep `peers` equal to the ready pods matching `selector` in `namespace`, until the process
/// ends. Watch errors are retried with backoff; the last count stays meanwhile.
pub async fn watch(client: Client, namespace: String, selector: String, peers: Arc<Peers>) {
    let pods: Api<Pod> = Api::namespaced(client, &namespace);
    let (store, writer) = reflector::store();
    let mut events = reflector::reflector(
        writer,
        watcher(pods, watcher::Config::default().labels(&selector))
            .default_backoff()
            .modify(|pod| {
                use kube::ResourceExt;
                pod.managed_fields_mut().clear();
            }),
    )
    .boxed();
    while let Some(event) = events.next().await {
        if let Err(error) = event {
            tracing::warn!(%error, "gateway peer watch failed; retrying");
            continue;
        }
        let ready = store.state().iter().filter(|pod| is_routable(pod)).count();
        // This replica counts itself even before its own pod turns Ready.
        peers.set(ready.max(1));
    }
}
