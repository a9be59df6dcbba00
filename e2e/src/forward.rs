//! A loopback port forward to a Service's ready pods: `kubectl port-forward
//! svc/...` for the test bed, whose fake nodes have no kubelet to stream
//! through and no kube-proxy. Each accepted TCP connection goes to one ready
//! pod of the Service (round robin), at the Service port's target port.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::ListParams;
use kube::{Api, Client};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::RwLock;

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("forward spec {0:?}: expected LISTEN_ADDR=NAMESPACE/SERVICE:PORT")]
    Spec(String),
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// `127.0.0.1:8080=kinfer-system/kinfer-gateway:8080`
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForwardSpec {
    pub listen: SocketAddr,
    pub namespace: String,
    pub service: String,
    pub port: i32,
}

impl std::str::FromStr for ForwardSpec {
    type Err = ForwardError;
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let bad = || ForwardError::Spec(value.to_string());
        let (listen, target) = value.split_once('=').ok_or_else(bad)?;
        let (namespace, rest) = target.split_once('/').ok_or_else(bad)?;
        let (service, port) = rest.rsplit_once(':').ok_or_else(bad)?;
        Ok(Self {
            listen: listen.parse().map_err(|_| bad())?,
            namespace: namespace.to_string(),
            service: service.to_string(),
            port: port.parse().map_err(|_| bad())?,
        })
    }
}

/// The ready pod addresses behind `service`'s `port` (pure: Service + Pods).
pub fn backends(service: &Service, port: i32, pods: &[Pod]) -> Vec<SocketAddr> {
    let Some(spec) = service.spec.as_ref() else {
        return Vec::new();
    };
    let Some(service_port) = spec
        .ports
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find(|p| p.port == port)
    else {
        return Vec::new();
    };
    let target = service_port
        .target_port
        .clone()
        .unwrap_or(IntOrString::Int(port));
    pods.iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .filter_map(|p| {
            let ip = p.status.as_ref()?.pod_ip.as_deref()?.parse().ok()?;
            let port = match &target {
                IntOrString::Int(n) => u16::try_from(*n).ok()?,
                IntOrString::String(name) => p
                    .spec
                    .as_ref()?
                    .containers
                    .iter()
                    .flat_map(|c| c.ports.as_deref().unwrap_or_default())
                    .find(|cp| cp.name.as_deref() == Some(name))
                    .and_then(|cp| u16::try_from(cp.container_port).ok())?,
            };
            Some(SocketAddr::new(ip, port))
        })
        .collect()
}

/// Serves the forward until the process ends. Backends are refreshed from
/// the API server every second, never on the connection path.
pub async fn run(client: Client, spec: ForwardSpec) -> Result<(), ForwardError> {
    let listener = TcpListener::bind(spec.listen)
        .await
        .map_err(|source| ForwardError::Bind {
            addr: spec.listen,
            source,
        })?;
    let targets: Arc<RwLock<Vec<SocketAddr>>> = Arc::default();
    let refresh = {
        let targets = Arc::clone(&targets);
        let spec = spec.clone();
        async move {
            let services: Api<Service> = Api::namespaced(client.clone(), &spec.namespace);
            let pods: Api<Pod> = Api::namespaced(client, &spec.namespace);
            loop {
                if let Ok(service) = services.get(&spec.service).await {
                    let selector = service
                        .spec
                        .as_ref()
                        .and_then(|s| s.selector.as_ref())
                        .map(|m| {
                            m.iter()
                                .map(|(k, v)| format!("{k}={v}"))
                                .collect::<Vec<_>>()
                                .join(",")
                        })
                        .unwrap_or_default();
                    if let Ok(list) = pods.list(&ListParams::default().labels(&selector)).await {
                        *targets.write().await = backends(&service, spec.port, &list.items);
                    }
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    tokio::spawn(refresh);
    tracing::info!(listen = %spec.listen, service = %format!("{}/{}:{}", spec.namespace, spec.service, spec.port), "forwarding");
    let next = AtomicUsize::new(0);
    loop {
        let Ok((mut inbound, _)) = listener.accept().await else {
            continue;
        };
        let candidates = targets.read().await.clone();
        if candidates.is_empty() {
            tracing::warn!(service = %spec.service, "no ready pod behind the service; closing the connection");
            continue;
        }
        let target = candidates[next.fetch_add(1, Ordering::Relaxed) % candidates.len()];
        tokio::spawn(async move {
            let _ = inbound.set_nodelay(true);
            match TcpStream::connect(target).await {
                Ok(mut outbound) => {
                    let _ = outbound.set_nodelay(true);
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
                Err(error) => tracing::warn!(%target, %error, "connecting to the pod failed"),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_parses_listen_namespace_service_and_port() {
        let spec: ForwardSpec = "127.0.0.1:8080=kinfer-system/kinfer-gateway:80"
            .parse()
            .unwrap();
        assert_eq!(spec.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(
            (spec.namespace.as_str(), spec.service.as_str(), spec.port),
            ("kinfer-system", "kinfer-gateway", 80)
        );
        assert!("127.0.0.1:8080=svc:80".parse::<ForwardSpec>().is_err());
        assert!("nonsense".parse::<ForwardSpec>().is_err());
    }

    #[test]
    fn backends_are_ready_pods_at_the_target_port() {
        let service: Service = serde_yaml::from_str(
            "spec: {selector: {app: gw}, ports: [{port: 80, targetPort: http}, {port: 9090, targetPort: 9091}]}",
        )
        .unwrap();
        let pods: Vec<Pod> = serde_yaml::from_str(
            r#"
- spec: {containers: [{name: gw, ports: [{name: http, containerPort: 8080}]}]}
  status: {podIP: 127.1.0.5, conditions: [{type: Ready, status: "True"}]}
- spec: {containers: [{name: gw, ports: [{name: http, containerPort: 8080}]}]}
  status: {podIP: 127.1.0.6, conditions: [{type: Ready, status: "False"}]}
- metadata: {deletionTimestamp: "2026-01-01T00:00:00Z"}
  spec: {containers: [{name: gw, ports: [{name: http, containerPort: 8080}]}]}
  status: {podIP: 127.1.0.7, conditions: [{type: Ready, status: "True"}]}
"#,
        )
        .unwrap();
        assert_eq!(
            backends(&service, 80, &pods),
            vec!["127.1.0.5:8080".parse().unwrap()]
        );
        assert_eq!(
            backends(&service, 9090, &pods),
            vec!["127.1.0.5:9091".parse().unwrap()]
        );
        assert!(backends(&service, 1234, &pods).is_empty());
    }
}
