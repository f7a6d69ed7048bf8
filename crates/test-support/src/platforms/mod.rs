//! Local fakes of the ad platforms and storefront Meridian syncs audiences to: Meta Custom
//! Audiences, Google Ads Customer Match, TikTok audience segments and Shopify customer tags.
//!
//! Each is an axum server on `127.0.0.1:0` that checks what the real one checks (paths,
//! auth header, field names, hash format, batch limits) and answers with the real error
//! bodies, keeps the resulting audience so tests can assert on it, and fails on demand
//! ([`Failure`]): 429 with `Retry-After`, 5xx, or the platform's own error.

pub mod google;
pub mod meta;
pub mod shopify;
pub mod tiktok;
pub mod webhook;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

/// A failure to answer the next request(s) with, instead of handling them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// HTTP 429 with `Retry-After: seconds` and the platform's throttling body.
    Throttle { retry_after_seconds: u64 },
    /// HTTP 503 with the platform's transient error body.
    Unavailable,
}

/// The failures queued for the next requests, first one first, then an outage's failure
/// for every request until it ends.
#[derive(Debug, Default, Clone)]
pub(crate) struct FailureQueue(Arc<Mutex<Failures>>);

#[derive(Debug, Default)]
struct Failures {
    queued: VecDeque<Failure>,
    outage: Option<Failure>,
}

impl FailureQueue {
    pub(crate) fn push(&self, failure: Failure, times: usize) {
        let mut failures = lock(&self.0);
        failures.queued.extend(std::iter::repeat_n(failure, times));
    }

    /// Every request fails with `failure` (`None`: the outage is over). An outage lasts
    /// until the test ends it, however many retries the client makes meanwhile.
    pub(crate) fn set_outage(&self, failure: Option<Failure>) {
        lock(&self.0).outage = failure;
    }

    pub(crate) fn next(&self) -> Option<Failure> {
        let mut failures = lock(&self.0);
        failures
            .queued
            .pop_front()
            .or_else(|| failures.outage.clone())
    }
}

/// Whether `value` is what the platforms accept as a SHA-256: 64 lowercase hex digits.
pub fn is_sha256_hex(value: &str) -> bool {
    value.len() == 64
        && value
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A running fake: its base URL (`http://127.0.0.1:PORT`) and the task serving it, stopped
/// on drop.
#[derive(Debug)]
pub struct Running {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub(crate) async fn serve(router: axum::Router) -> std::io::Result<Running> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    Ok(Running { addr, task })
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub(crate) fn json_response(
    status: axum::http::StatusCode,
    value: &serde_json::Value,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    (
        status,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        value.to_string(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queued_failures_come_first_then_the_outage_until_it_ends() {
        let failures = FailureQueue::default();
        assert_eq!(failures.next(), None);
        failures.set_outage(Some(Failure::Unavailable));
        failures.push(
            Failure::Throttle {
                retry_after_seconds: 1,
            },
            1,
        );
        assert_eq!(
            failures.next(),
            Some(Failure::Throttle {
                retry_after_seconds: 1
            })
        );
        for _ in 0..3 {
            assert_eq!(failures.next(), Some(Failure::Unavailable));
        }
        failures.set_outage(None);
        assert_eq!(failures.next(), None);
    }
}
