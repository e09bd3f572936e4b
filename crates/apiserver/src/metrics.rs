//! `/metrics`: the API server's request counter in Prometheus text format, under
//! kube-apiserver's name and labels (`apiserver_request_total{verb, group, version,
//! resource, subresource, scope, code}`), so the same dashboards and a benchmark's
//! "requests per second" read it.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use crate::http::{parse_path, Route};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    verb: String,
    group: String,
    version: String,
    resource: String,
    subresource: String,
    scope: String,
    code: String,
}

/// Metrics another component gathers when `/metrics` is scraped (the node's VMs, the
/// VM and VMI objects): a snapshot encoded after the server's own.
pub trait Source: Send + Sync {
    fn gather(&self) -> futures::future::BoxFuture<'_, Box<dyn Collector>>;
}

/// The server's metrics.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    sources: Vec<Arc<dyn Source>>,
}

impl Metrics {
    /// The server's own metrics, then those of `sources`.
    pub fn new(sources: Vec<Arc<dyn Source>>) -> Self {
        Metrics {
            sources,
            ..Metrics::default()
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "apiserver_request",
            "Counter of apiserver requests broken out for each verb, group, version, resource, scope, subresource and HTTP response code.",
            requests.clone(),
        );
        Metrics {
            registry,
            requests,
            sources: Vec::new(),
        }
    }
}

impl Metrics {
    /// The text exposition of every metric, the sources' gathered together.
    pub async fn render(&self) -> String {
        use prometheus_client::encoding::text;
        let gathered = futures::future::join_all(self.sources.iter().map(|s| s.gather())).await;
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = text::encode_registry(&mut out, &self.registry);
        for collector in gathered {
            let mut registry = Registry::default();
            registry.register_collector(collector);
            let _ = text::encode_registry(&mut out, &registry);
        }
        let _ = text::encode_eof(&mut out);
        out
    }
}

/// kube-apiserver's verb for a request.
fn verb(method: &http::Method, named: bool, watch: bool) -> &'static str {
    match (method.as_str(), named) {
        ("GET" | "HEAD", _) if watch => "watch",
        ("GET" | "HEAD", true) => "get",
        ("GET" | "HEAD", false) => "list",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        _ => "unknown",
    }
}

/// Middleware counting every request with its outcome.
pub async fn count(State(metrics): State<Arc<Metrics>>, req: Request, next: Next) -> Response {
    let watch = req
        .uri()
        .query()
        .is_some_and(|q| q.split('&').any(|kv| kv == "watch=true" || kv == "watch=1"));
    let mut labels = match parse_path(req.uri().path(), |_, _, _| true) {
        Route::Resource {
            group,
            version,
            plural,
            ns,
            name,
            sub,
        } => RequestLabels {
            verb: verb(req.method(), name.is_some(), watch).into(),
            group,
            version,
            resource: plural,
            subresource: sub.unwrap_or_default(),
            scope: if name.is_some() {
                "resource"
            } else if ns.is_some() {
                "namespace"
            } else {
                "cluster"
            }
            .into(),
            code: String::new(),
        },
        _ => RequestLabels {
            verb: req.method().as_str().to_string(),
            group: String::new(),
            version: String::new(),
            resource: String::new(),
            subresource: String::new(),
            scope: String::new(),
            code: String::new(),
        },
    };
    let resp = next.run(req).await;
    labels.code = resp.status().as_u16().to_string();
    metrics.requests.get_or_create(&labels).inc();
    resp
}

/// `GET /metrics`, in the OpenMetrics text format `prometheus-client` writes.
pub async fn response(metrics: &Metrics) -> Response {
    (
        [(
            http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics.render().await,
    )
        .into_response()
}
