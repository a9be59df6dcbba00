//! Helpers shared by the in-process tests: a gateway on 127.0.0.1:0, vllm-sim replicas, and
//! small axum upstreams for behaviours the simulator does not have (slow headers, echo).

#![allow(dead_code, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use kinfer_crds::{Feature, RoutingStrategy};
use kinfer_gateway::hold::HoldSettings;
use kinfer_gateway::index::{EndpointConfig, ModelConfig};
use kinfer_gateway::{AppState, Gateway, GatewayConfig};
use kinfer_vllm_sim::{Config, SimHandle};
use tokio::net::TcpListener;

pub struct TestGateway {
    pub state: AppState,
    pub addr: SocketAddr,
    pub client: reqwest::Client,
}

impl TestGateway {
    pub async fn start(config: GatewayConfig) -> Self {
        let state = Gateway::new(config);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // The API exactly as the binary serves it.
        tokio::spawn(kinfer_gateway::server::serve(
            listener,
            kinfer_gateway::build_router(state.clone()),
            kinfer_gateway::server::ServeConfig::default(),
            std::future::pending(),
        ));
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap();
        Self {
            state,
            addr,
            client,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn publish(&self, models: Vec<ModelConfig>) {
        self.state.index.publish(models);
    }

    pub async fn post(&self, path: &str, body: serde_json::Value) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    /// POST `body` as JSON with chunked transfer coding, `size` bytes per chunk.
    pub async fn post_in_chunks(&self, path: &str, body: &str, size: usize) -> reqwest::Response {
        let chunks: Vec<Result<Vec<u8>, std::io::Error>> = body
            .as_bytes()
            .chunks(size)
            .map(|chunk| Ok(chunk.to_vec()))
            .collect();
        self.client
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
            .send()
            .await
            .unwrap()
    }

    pub async fn chat(&self, model: &str) -> reqwest::Response {
        self.post("/v1/chat/completions", chat_body(model, false))
            .await
    }

    pub fn metrics(&self) -> String {
        self.state.metrics.encode()
    }
}

pub fn chat_body(model: &str, stream: bool) -> serde_json::Value {
    serde_json::json!({
        "model": model,
        "messages": [{"role": "user", "content": "Say hello"}],
        "max_tokens": 4,
        "stream": stream,
    })
}

pub fn model(id: &str, addresses: &[String]) -> ModelConfig {
    ModelConfig {
        id: id.to_string(),
        parent: None,
        features: vec![Feature::TextGeneration],
        strategy: Some(RoutingStrategy::RoundRobin),
        endpoints: addresses
            .iter()
            .map(|address| EndpointConfig::new(address.clone(), address.clone()))
            .collect(),
        hold: HoldSettings::default(),
    }
}

pub async fn sim(model: &str, tweak: impl FnOnce(&mut Config)) -> SimHandle {
    let mut config = Config::for_tests(model);
    tweak(&mut config);
    let (_, handle) = kinfer_vllm_sim::spawn(config).await.unwrap();
    handle
}

pub fn address(handle: &SimHandle) -> String {
    handle.addr().to_string()
}

/// An address nothing listens on (connections are refused).
pub async fn dead_address() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    addr.to_string()
}

/// Serve `router` on 127.0.0.1:0.
pub async fn upstream(router: axum::Router) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    addr.to_string()
}

/// Poll `condition` every 10 ms for up to `within`.
pub async fn eventually(within: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        if condition() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    condition()
}

pub async fn error_of(response: reqwest::Response) -> (u16, serde_json::Value) {
    let status = response.status().as_u16();
    let body: serde_json::Value = response.json().await.unwrap();
    (status, body["error"].clone())
}

/// A raw HTTP/1.1 upstream on 127.0.0.1:0, for behaviours a framework server will not produce
/// (a stream that falls silent with the connection open, a reset in the middle of a body):
/// each connection's first request is read whole, then `answer` gets the connection.
pub async fn raw_upstream<F, Answer>(answer: F) -> String
where
    F: Fn(tokio::net::TcpStream) -> Answer + Send + Sync + 'static,
    Answer: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let answer = std::sync::Arc::new(answer);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let answer = answer.clone();
            tokio::spawn(async move {
                if read_request(&mut stream).await {
                    answer(stream).await;
                }
            });
        }
    });
    addr.to_string()
}

/// Read one request (head and content-length body); false if the connection closed first.
async fn read_request(stream: &mut tokio::net::TcpStream) -> bool {
    use tokio::io::AsyncReadExt;
    let mut read = Vec::new();
    let mut buffer = [0_u8; 4096];
    loop {
        if let Some(end) = read.windows(4).position(|window| window == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&read[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|line| line.strip_prefix("content-length:"))
                .map_or(0, |value| value.trim().parse().unwrap());
            if read.len() >= end + 4 + length {
                return true;
            }
        }
        match stream.read(&mut buffer).await {
            Ok(0) | Err(_) => return false,
            Ok(count) => read.extend_from_slice(&buffer[..count]),
        }
    }
}

/// The head of a chunked server-sent event stream.
pub const SSE_HEAD: &[u8] =
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";

/// `data` as one chunk of a chunked body.
pub fn chunk(data: &str) -> Vec<u8> {
    format!("{:x}\r\n{data}\r\n", data.len()).into_bytes()
}
