//! What the gateway reads from a Pod, shared by discovery ([`crate::index::kubernetes`]) and the
//! count of gateway replicas sharing quotas ([`crate::quota::peers`]).

use k8s_openapi::api::core::v1::Pod;

/// Whether a pod may receive new requests.
pub fn is_routable(pod: &Pod) -> bool {
    if pod.metadata.deletion_timestamp.is_some() {
        return false;
    }
    let Some(status) = &pod.status else {
        return false;
    };
    let has_ip = status.pod_ip.as_deref().is_some_and(|ip| !ip.is_empty());
    let running = status.phase.as_deref() == Some("Running");
    let ready = status
        .conditions
        .iter()
        .flatten()
        .any(|condition| condition.type_ == "Ready" && condition.status == "True");
    has_ip && running && ready
}
