//! The tower layer in front of every gRPC service.

use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;

use futures::future::BoxFuture;
use meridian_access::{AuthenticationError, Authenticator};
use meridian_domain::Scope;
use meridian_telemetry::opentelemetry::KeyValue;
use meridian_telemetry::opentelemetry::metrics::{Counter, Histogram};
use tonic::Status;
use tower::{Layer, Service};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

const PACKAGE_PREFIX: &str = "meridian.v1.";

/// The scope an API key needs to call a service of `meridian.v1`.
pub fn scope_for_service(service: &str) -> Option<Scope> {
    match service.strip_prefix(PACKAGE_PREFIX)? {
        "IngestService" => Some(Scope::Ingest),
        "ConsentService" => Some(Scope::Consent),
        "DsrService" => Some(Scope::Dsr),
        "AudienceService" => Some(Scope::Audience),
        // Profiles hold everything known about a person: admin only.
        "IdentityService" => Some(Scope::Admin),
        _ => None,
    }
}

#[derive(Clone)]
pub struct EdgeLayer {
    authenticator: Arc<Authenticator>,
}

impl EdgeLayer {
    pub fn new(authenticator: Arc<Authenticator>) -> Self {
        Self { authenticator }
    }
}

impl<S> Layer<S> for EdgeLayer {
    type Service = EdgeService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        EdgeService {
            inner,
            authenticator: self.authenticator.clone(),
        }
    }
}

#[derive(Clone)]
pub struct EdgeService<S> {
    inner: S,
    authenticator: Arc<Authenticator>,
}

struct RpcMetrics {
    requests: Counter<u64>,
    duration: Histogram<f64>,
}

fn metrics() -> &'static RpcMetrics {
    static METRICS: OnceLock<RpcMetrics> = OnceLock::new();
    METRICS.get_or_init(|| {
        let meter = meridian_telemetry::opentelemetry::global::meter("meridian");
        RpcMetrics {
            requests: meter
                .u64_counter("meridian_rpc_requests_total")
                .with_description("gRPC requests by service, method and status code")
                .build(),
            duration: meter
                .f64_histogram("meridian_rpc_duration_seconds")
                .with_description("gRPC request latency until response headers")
                .with_unit("s")
                .build(),
        }
    })
}

/// The gRPC status of a response: tonic puts an error's status in the
/// headers (trailers-only response); a success sends headers without one.
fn status_code<B>(response: &http::Response<B>) -> &str {
    response
        .headers()
        .get("grpc-status")
        .and_then(|value| value.to_str().ok())
        .unwrap_or("0")
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for EdgeService<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = http::Response<ResBody>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<ReqBody>) -> Self::Future {
        // The ready service is the one polled; keep a fresh clone for next time.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let authenticator = self.authenticator.clone();

        let path = request.uri().path().to_owned();
        let (service, method) = path
            .trim_start_matches('/')
            .split_once('/')
            .map(|(service, method)| (service.to_owned(), method.to_owned()))
            .unwrap_or_else(|| (path.clone(), String::new()));
        let scope = scope_for_service(&service);

        let span = tracing::info_span!(
            "rpc",
            otel.name = %path.trim_start_matches('/'),
            otel.kind = "server",
            rpc.system = "grpc",
            rpc.service = %service,
            rpc.method = %method,
            rpc.grpc.status_code = tracing::field::Empty,
            workspace = tracing::field::Empty,
        );
        if let Err(err) = span.set_parent(meridian_telemetry::remote_context(request.headers())) {
            tracing::debug!(error = %err, "ignoring unusable trace parent");
        }

        Box::pin(
            async move {
                let started = Instant::now();
                let response = match scope {
                    // Health, reflection and unknown paths pass through unauthenticated;
                    // tonic answers unknown paths with UNIMPLEMENTED.
                    None => inner.call(request).await?,
                    Some(scope) => {
                        let header = request
                            .headers()
                            .get(http::header::AUTHORIZATION)
                            .and_then(|value| value.to_str().ok());
                        match authenticator.authenticate_bearer(header).await {
                            Err(AuthenticationError::Unavailable) => {
                                Status::unavailable("cannot verify API keys right now; retry")
                                    .into_http()
                            }
                            Err(err) => {
                                tracing::info!(reason = %err, "unauthenticated");
                                Status::unauthenticated("missing or invalid API key").into_http()
                            }
                            Ok(principal) => match principal.authorize_scope(scope) {
                                Err(denied) => {
                                    tracing::info!(key_id = %principal.key_id, reason = %denied, "permission denied");
                                    Status::permission_denied(denied.to_string()).into_http()
                                }
                                Ok(()) => {
                                    request.extensions_mut().insert(principal);
                                    inner.call(request).await?
                                }
                            },
                        }
                    }
                };
                let code = status_code(&response).to_owned();
                tracing::Span::current().record("rpc.grpc.status_code", code.as_str());
                let attributes = [
                    KeyValue::new("service", service),
                    KeyValue::new("method", method),
                    KeyValue::new("code", code),
                ];
                let metrics = metrics();
                metrics.requests.add(1, &attributes);
                metrics
                    .duration
                    .record(started.elapsed().as_secs_f64(), &attributes);
                Ok(response)
            }
            .instrument(span),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_contract_service_needs_a_scope_and_others_do_not() {
        for service in meridian_proto::SERVICE_NAMES {
            assert!(scope_for_service(service).is_some(), "{service}");
        }
        assert_eq!(scope_for_service("grpc.health.v1.Health"), None);
        assert_eq!(
            scope_for_service("grpc.reflection.v1.ServerReflection"),
            None
        );
        assert_eq!(
            scope_for_service("meridian.v1.IdentityService"),
            Some(Scope::Admin)
        );
    }
}
