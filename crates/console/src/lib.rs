//! The web console: the browser app built from `web/` (embedded, see [`assets`]) and,
//! on the same origin, a proxy to the Kubernetes API that adds no credential of its own
//! ([`proxy`]). `kubevirt-rs server` runs it beside its API server; in cluster mode
//! `kubevirt-rs virt-console` runs it as a Deployment in front of kube-apiserver.

pub mod assets;
pub mod proxy;

use std::sync::Arc;

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::any;
use axum::Router;
use http::{header, HeaderValue};

pub use proxy::Upstream;

/// The API paths the app uses: the core and group APIs, `/version`, and CDI's upload
/// proxy (served beside the embedded API; absent on a cluster without it).
const PROXIED: &[&str] = &[
    "/api",
    "/api/{*rest}",
    "/apis",
    "/apis/{*rest}",
    "/version",
    "/v1beta1/upload",
    "/v1beta1/upload-async",
];

/// The page may load and connect only to its own origin: no third-party script, style,
/// font or request, and it may not be framed (clickjacking).
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; connect-src 'self'; \
     font-src 'self' data:; object-src 'none'; base-uri 'none'; form-action 'self'; \
     frame-ancestors 'none'";

async fn security_headers(req: Request, next: Next) -> Response {
    let mut response = next.run(req).await;
    let h = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::STRICT_TRANSPORT_SECURITY, "max-age=31536000"),
    ] {
        h.entry(name).or_insert(HeaderValue::from_static(value));
    }
    response
}

/// The console's routes: the API paths to `upstream`, everything else the app.
pub fn router(upstream: Arc<Upstream>) -> Router {
    let mut api = Router::new();
    for path in PROXIED {
        api = api.route(path, any(proxy::forward));
    }
    api.with_state(upstream)
        .fallback(assets::serve)
        .layer(axum::middleware::from_fn(security_headers))
}

/// Serves the console over TLS on `listener` until `shutdown`, under the API server's
/// connection limits.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    upstream: Arc<Upstream>,
    shutdown: tokio::sync::watch::Receiver<bool>,
) {
    kubevirt_apiserver::conn::serve(
        listener,
        tokio_rustls::TlsAcceptor::from(tls),
        router(upstream),
        kubevirt_apiserver::Limits::default(),
        shutdown,
    )
    .await;
}
