//! HTTP scraping of `/metrics` endpoints: short timeouts, a bounded answer size and a limit on
//! how many scrapes run at once, so a slow or hung pod delays one source, never the loop.

use std::time::Duration;

use futures::StreamExt;

/// Largest `/metrics` answer read (vLLM's is ~30 KiB, the gateway's grows with its models).
const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;

/// Errors of one scrape.
#[derive(Debug, thiserror::Error)]
pub enum ScrapeError {
    #[error("cannot scrape {url}: {source}")]
    Request {
        url: String,
        #[source]
        source: reqwest::Error,
    },

    #[error("cannot scrape {url}: HTTP {status}")]
    Status { url: String, status: u16 },

    #[error("cannot scrape {url}: the answer is larger than {MAX_BODY_BYTES} bytes")]
    TooLarge { url: String },

    #[error("cannot scrape {url}: the answer is not UTF-8")]
    NotUtf8 { url: String },
}

impl ScrapeError {
    /// Low-cardinality label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            ScrapeError::Request { source, .. } if source.is_timeout() => "timeout",
            ScrapeError::Request { source, .. } if source.is_connect() => "connect",
            ScrapeError::Request { .. } => "request",
            ScrapeError::Status { .. } => "status",
            ScrapeError::TooLarge { .. } => "too_large",
            ScrapeError::NotUtf8 { .. } => "not_utf8",
        }
    }
}

/// Scrapes `/metrics` URLs.
#[derive(Clone, Debug)]
pub struct Scraper {
    client: reqwest::Client,
    concurrency: usize,
}

impl Scraper {
    /// `timeout` bounds each whole scrape (connect included); at most `concurrency` run at once.
    pub fn new(timeout: Duration, concurrency: usize) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            // Pod IPs are reached directly: an HTTP_PROXY of the operator's environment would
            // send every scrape through the proxy.
            .no_proxy()
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(1)
            .build()?;
        Ok(Self {
            client,
            concurrency: concurrency.max(1),
        })
    }

    /// Scrapes one URL.
    pub async fn scrape(&self, url: &str) -> Result<String, ScrapeError> {
        let request_error = |source| ScrapeError::Request {
            url: url.to_string(),
            source,
        };
        let mut response = self
            .client
            .get(url)
            .header("accept", "text/plain")
            .send()
            .await
            .map_err(request_error)?;
        if !response.status().is_success() {
            return Err(ScrapeError::Status {
                url: url.to_string(),
                status: response.status().as_u16(),
            });
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(request_error)? {
            if body.len() + chunk.len() > MAX_BODY_BYTES {
                return Err(ScrapeError::TooLarge {
                    url: url.to_string(),
                });
            }
            body.extend_from_slice(&chunk);
        }
        String::from_utf8(body).map_err(|_| ScrapeError::NotUtf8 {
            url: url.to_string(),
        })
    }

    /// Scrapes every target, at most `concurrency` at once; answers come back in any order,
    /// each with its target.
    pub async fn scrape_all<T: Send>(
        &self,
        targets: Vec<(T, String)>,
    ) -> Vec<(T, Result<String, ScrapeError>)> {
        futures::stream::iter(targets)
            .map(|(target, url)| async move {
                let result = self.scrape(&url).await;
                (target, result)
            })
            .buffer_unordered(self.concurrency)
            .collect()
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Instant;

    /// A /metrics server on port 0 that answers after `delay`, counting concurrent requests.
    async fn server(delay: Duration, peak: Arc<AtomicUsize>) -> String {
        let current = Arc::new(AtomicUsize::new(0));
        let app = axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || {
                let current = current.clone();
                let peak = peak.clone();
                async move {
                    let now = current.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    tokio::time::sleep(delay).await;
                    current.fetch_sub(1, Ordering::SeqCst);
                    "vllm:num_requests_running 1\n"
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{address}/metrics")
    }

    #[tokio::test]
    async fn scrapes_with_a_concurrency_limit() {
        let peak = Arc::new(AtomicUsize::new(0));
        let url = server(Duration::from_millis(50), peak.clone()).await;
        let scraper = Scraper::new(Duration::from_secs(2), 3).unwrap();
        let targets = (0..9).map(|index| (index, url.clone())).collect();
        let results = scraper.scrape_all(targets).await;
        assert_eq!(results.len(), 9);
        assert!(results
            .iter()
            .all(|(_, result)| result.as_deref().unwrap() == "vllm:num_requests_running 1\n"));
        assert_eq!(peak.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn slow_and_missing_sources_fail_fast() {
        let url = server(Duration::from_secs(5), Arc::default()).await;
        let scraper = Scraper::new(Duration::from_millis(200), 4).unwrap();
        let started = Instant::now();
        let results = scraper
            .scrape_all(vec![
                ("slow", url.clone()),
                ("closed", "http://127.0.0.1:1/metrics".to_string()),
                ("not found", url.replace("/metrics", "/nothing")),
            ])
            .await;
        assert!(started.elapsed() < Duration::from_secs(2));
        for (target, result) in results {
            let error = result.unwrap_err();
            let expected = match target {
                "slow" => "timeout",
                "closed" => "connect",
                _ => "status",
            };
            assert_eq!(error.metric_label(), expected, "{target}: {error}");
        }
    }
}
