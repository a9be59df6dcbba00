//! Held requests released as replicas turn ready, through a real gateway socket to vllm-sim
//! replicas that answer slowly (so released requests stay in flight while the next replica
//! turns ready).

#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{address, chat_body, eventually, model, sim, TestGateway};
use kinfer_crds::RoutingStrategy;
use kinfer_gateway::hold::HoldSettings;
use kinfer_gateway::index::ModelConfig;
use kinfer_gateway::GatewayConfig;
use tokio::task::JoinHandle;

fn autoscaled(endpoints: &[String], target: u32, desired: u32) -> ModelConfig {
    let mut config = model("m", endpoints);
    config.strategy = Some(RoutingStrategy::LeastLoad);
    config.hold = HoldSettings {
        target_per_replica: Some(target),
        desired_replicas: Some(desired),
        ..HoldSettings::default()
    };
    config
}

/// Send request `number` (its request id) and return (status, replica).
fn send(gateway: &TestGateway, number: usize) -> JoinHandle<(u16, String)> {
    let client = gateway.client.clone();
    let url = gateway.url("/v1/chat/completions");
    tokio::spawn(async move {
        let response = client
            .post(url)
            .header("x-request-id", format!("r{number}"))
            .json(&chat_body("m", false))
            .send()
            .await
            .unwrap();
        let replica = response
            .headers()
            .get("x-kinfer-replica")
            .map(|value| value.to_str().unwrap().to_string())
            .unwrap_or_default();
        (response.status().as_u16(), replica)
    })
}

fn inflight(gateway: &TestGateway, replica: &str) -> usize {
    gateway
        .state
        .index
        .snapshot()
        .get("m")
        .unwrap()
        .endpoints
        .iter()
        .find(|endpoint| endpoint.name() == replica)
        .map_or(0, |endpoint| endpoint.inflight())
}

#[tokio::test]
async fn held_burst_leaves_in_arrival_order_over_the_replicas_that_turn_ready() {
    let slow = |config: &mut kinfer_vllm_sim::Config| config.sim.ttft_ms = 1500.0;
    let replicas = [
        sim("m", slow).await,
        sim("m", slow).await,
        sim("m", slow).await,
    ];
    let addresses: Vec<String> = replicas.iter().map(address).collect();
    let gateway = TestGateway::start(GatewayConfig::default()).await;
    // Target 2 per replica, the autoscaler asked for 3 replicas, none is ready yet.
    gateway.publish(vec![autoscaled(&[], 2, 3)]);
    let mut requests = Vec::new();
    for number in 0..6 {
        requests.push(send(&gateway, number));
        let held = number + 1;
        assert!(
            eventually(Duration::from_secs(5), || gateway.state.holds.held("m")
                == held)
            .await
        );
    }
    assert!(gateway
        .metrics()
        .contains(r#"kinfer_gateway_queued_requests{model="m"} 6"#));

    // The first replica turns ready: it takes two (its target), not the whole burst.
    gateway.publish(vec![autoscaled(&addresses[..1], 2, 3)]);
    assert!(
        eventually(Duration::from_secs(5), || inflight(&gateway, &addresses[0])
            == 2)
        .await
    );
    assert_eq!(gateway.state.holds.held("m"), 4);
    // The second: two more, on it.
    gateway.publish(vec![autoscaled(&addresses[..2], 2, 3)]);
    assert!(
        eventually(Duration::from_secs(5), || inflight(&gateway, &addresses[1])
            == 2)
        .await
    );
    assert_eq!(gateway.state.holds.held("m"), 2);
    assert_eq!(inflight(&gateway, &addresses[0]), 2);
    // Every wanted replica is ready: the rest leave.
    gateway.publish(vec![autoscaled(&addresses, 2, 3)]);

    let mut served_by: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (number, request) in requests.into_iter().enumerate() {
        let (status, replica) = request.await.unwrap();
        assert_eq!(status, 200, "request {number}");
        served_by.entry(replica).or_default().push(number);
    }
    // Arrival order: the first two went to the first replica, the next two to the second.
    assert_eq!(served_by[&addresses[0]][..2], [0, 1], "{served_by:?}");
    assert_eq!(served_by[&addresses[1]][..2], [2, 3], "{served_by:?}");
    assert_eq!(gateway.state.holds.held("m"), 0);
    assert!(gateway
        .metrics()
        .contains(r#"kinfer_gateway_queued_requests{model="m"} 0"#));
}

#[tokio::test]
async fn at_the_hold_deadline_a_busy_replica_serves_the_request() {
    let slow = sim("m", |config| config.sim.ttft_ms = 1500.0).await;
    let gateway = TestGateway::start(GatewayConfig::default()).await;
    let mut config = autoscaled(&[], 1, 2);
    config.hold.timeout = Some(Duration::from_millis(500));
    gateway.publish(vec![config.clone()]);
    let first = send(&gateway, 0);
    let second = send(&gateway, 1);
    assert!(
        eventually(Duration::from_secs(5), || gateway.state.holds.held("m")
            == 2)
        .await
    );
    // One replica of two wanted, room for one: the second request stays held until its
    // deadline, then goes to the busy replica instead of a 503.
    config.endpoints = model("m", &[address(&slow)]).endpoints;
    gateway.publish(vec![config]);
    assert_eq!(first.await.unwrap().0, 200);
    assert_eq!(second.await.unwrap().0, 200);
}
