//! Traces and metrics leave the process over OTLP when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set: a fake collector on port 0 receives
//! them, and they name RPCs, never personal data or keys.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use meridian_proto::v1::*;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use tonic::{Request, Response, Status};

use crate::harness::{Backend, Environment, authorized};

#[derive(Default, Clone)]
struct Collected {
    span_names: Arc<Mutex<Vec<String>>>,
    metric_names: Arc<Mutex<Vec<String>>>,
    raw: Arc<Mutex<String>>,
}

#[tonic::async_trait]
impl TraceService for Collected {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let request = request.into_inner();
        self.raw.lock().unwrap().push_str(&format!("{request:?}"));
        let mut names = self.span_names.lock().unwrap();
        for resource in request.resource_spans {
            for scope in resource.scope_spans {
                names.extend(scope.spans.into_iter().map(|span| span.name));
            }
        }
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for Collected {
    async fn export(
        &self,
        request: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        let request = request.into_inner();
        self.raw.lock().unwrap().push_str(&format!("{request:?}"));
        let mut names = self.metric_names.lock().unwrap();
        for resource in request.resource_metrics {
            for scope in resource.scope_metrics {
                names.extend(scope.metrics.into_iter().map(|metric| metric.name));
            }
        }
        Ok(Response::new(ExportMetricsServiceResponse::default()))
    }
}

#[tokio::test]
async fn rpc_spans_and_metrics_are_exported_over_otlp() {
    let collected = Collected::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector_addr = listener.local_addr().unwrap();
    let collector = tonic::transport::Server::builder()
        .add_service(TraceServiceServer::new(collected.clone()))
        .add_service(MetricsServiceServer::new(collected.clone()))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
    tokio::spawn(collector);

    let env = Environment::new(Backend::Sqlite).await;
    let key = env.api_key("acme", "consent").await;
    let server = env
        .serve_with_env(&[(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            &format!("http://{collector_addr}"),
        )])
        .await;
    let mut consent = consent_service_client::ConsentServiceClient::new(server.channel.clone());
    for _ in 0..3 {
        let response = consent
            .verify_ledger(authorized(VerifyLedgerRequest::default(), Some(&key)))
            .await
            .unwrap()
            .into_inner();
        assert!(response.valid);
    }
    // Shutdown flushes both exporters.
    assert!(server.terminate().await.success());

    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let spans = collected.span_names.lock().unwrap().clone();
        let metrics = collected.metric_names.lock().unwrap().clone();
        let has_span = spans
            .iter()
            .any(|name| name == "meridian.v1.ConsentService/VerifyLedger");
        let has_metrics = metrics.iter().any(|n| n == "meridian_rpc_requests_total")
            && metrics.iter().any(|n| n == "meridian_rpc_duration_seconds");
        if has_span && has_metrics {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "collector got spans {spans:?} and metrics {metrics:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // `mk_<id>_<secret>`: the secret is base64url and may itself contain '_'.
    let secret = key.splitn(3, '_').nth(2).unwrap();
    assert!(secret.len() >= 40, "{secret}");
    assert!(
        !collected.raw.lock().unwrap().contains(secret),
        "an API key reached the telemetry"
    );
}
