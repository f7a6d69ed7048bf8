//! HTTP to the platforms: one pooled HTTP/1.1 client, a request-rate limit per connector,
//! and retries with exponential backoff that honour `Retry-After` on 429 and 503.
//!
//! Plain `http://` only for now (the fakes and a local egress proxy); TLS to the platforms
//! goes through the deployment's egress proxy until a rustls connector is added.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::Mutex;
use tokio::time::Instant;

/// How a connector retries and paces its requests.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts per request, the first included.
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// Longest `Retry-After` honoured; a longer one fails the request (it is retried by the
    /// next sync instead of blocking this one).
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(10),
            max_retry_after: Duration::from_secs(60),
        }
    }
}

/// What went wrong talking to a platform.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error("could not reach the platform: {0}")]
    Unreachable(String),
    /// The platform kept answering with a retryable status.
    #[error("the platform answered {status} after {attempts} attempts")]
    Exhausted { status: StatusCode, attempts: u32 },
}

/// An answer from a platform (any status: the connector reads the platform's error body).
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub body: Bytes,
    /// Attempts it took.
    pub attempts: u32,
}

/// A pooled HTTP client with pacing and retries.
#[derive(Debug)]
pub struct Transport {
    client: Client<HttpConnector, Full<Bytes>>,
    policy: RetryPolicy,
    /// Minimum spacing between requests (0 = unlimited).
    spacing: Duration,
    next_slot: Mutex<Instant>,
}

impl Transport {
    /// `requests_per_second` 0 means no pacing.
    pub fn new(policy: RetryPolicy, requests_per_second: u32) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        let spacing = if requests_per_second == 0 {
            Duration::ZERO
        } else {
            Duration::from_secs(1) / requests_per_second
        };
        Transport {
            client,
            policy,
            spacing,
            next_slot: Mutex::new(Instant::now()),
        }
    }

    async fn pace(&self) {
        if self.spacing.is_zero() {
            return;
        }
        let wait_until = {
            let mut next = self.next_slot.lock().await;
            let now = Instant::now();
            let slot = (*next).max(now);
            *next = slot + self.spacing;
            slot
        };
        tokio::time::sleep_until(wait_until).await;
    }

    /// Sends `body` to `url`, retrying 429, 5xx and connection failures with backoff (the
    /// platform's `Retry-After` when it gives one). Other statuses are returned as they are.
    pub async fn send(
        &self,
        method: Method,
        url: &str,
        headers: &[(HeaderName, HeaderValue)],
        content_type: &'static str,
        body: Bytes,
    ) -> Result<Answer, TransportError> {
        let uri: http::Uri = url.parse().map_err(|_| {
            TransportError::InvalidRequest("the platform URL does not parse".into())
        })?;
        let mut backoff = self.policy.initial_backoff;
        let mut attempt = 0;
        loop {
            attempt += 1;
            self.pace().await;
            let mut request = http::Request::builder()
                .method(method.clone())
                .uri(uri.clone())
                .header(header::CONTENT_TYPE, content_type);
            for (name, value) in headers {
                request = request.header(name, value);
            }
            let request = request
                .body(Full::new(body.clone()))
                .map_err(|e| TransportError::InvalidRequest(e.to_string()))?;
            let outcome = match self.client.request(request).await {
                Ok(response) => {
                    let status = response.status();
                    let retry_after = retry_after(response.headers());
                    let body = response
                        .into_body()
                        .collect()
                        .await
                        .map(|b| b.to_bytes())
                        .map_err(|e| TransportError::Unreachable(e.to_string()));
                    Ok((status, retry_after, body))
                }
                Err(error) => Err(TransportError::Unreachable(error.to_string())),
            };
            let retryable_wait = match &outcome {
                Ok((status, retry_after, _))
                    if *status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() =>
                {
                    Some(retry_after.unwrap_or(backoff))
                }
                Ok(_) => None,
                Err(_) => Some(backoff),
            };
            match (outcome, retryable_wait) {
                (Ok((status, _, body)), None) => {
                    return Ok(Answer {
                        status,
                        body: body?,
                        attempts: attempt,
                    });
                }
                (Err(error), None) => return Err(error),
                (outcome, Some(wait)) => {
                    let give_up =
                        attempt >= self.policy.max_attempts || wait > self.policy.max_retry_after;
                    if give_up {
                        return match outcome {
                            Ok((status, _, _)) => Err(TransportError::Exhausted {
                                status,
                                attempts: attempt,
                            }),
                            Err(error) => Err(error),
                        };
                    }
                    tracing::debug!(
                        attempt,
                        wait_ms = wait.as_millis() as u64,
                        "retrying a platform request"
                    );
                    tokio::time::sleep(wait).await;
                    backoff = (backoff * 2).min(self.policy.max_backoff);
                }
            }
        }
    }
}

/// `Retry-After` in seconds (the HTTP-date form is treated as "use the backoff").
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get(header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}
