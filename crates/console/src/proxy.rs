//! The console's way to the Kubernetes API: requests under the API's paths go to the API
//! server unchanged, with the browser's own `Authorization` header (or, on a websocket,
//! its token subprotocol) and nothing else. The proxy holds no credential of its own, so
//! the console can do nothing its user could not do with `kubectl`.
//!
//! Websocket upgrades (serial console, VNC) are passed through: the API server's `101`
//! goes back to the browser and the two connections are joined byte for byte.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use http::{header, HeaderMap, StatusCode, Uri, Version};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};

/// How long a connection to the API server may sit idle in the pool.
const POOL_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("the API server URL {url:?} is not an https URL with a host")]
    Url { url: String },
    #[error("the API server's CA bundle: {0}")]
    Ca(String),
}

/// The API server: its base URL and a client that trusts its CA.
pub struct Upstream {
    base: String,
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Body>,
}

impl Upstream {
    /// `url`: `https://host:port`; `ca_pem`: the certificates its serving certificate
    /// chains to.
    pub fn new(url: &str, ca_pem: &str) -> Result<Arc<Upstream>, UpstreamError> {
        let parsed: Uri = url
            .parse()
            .map_err(|_| UpstreamError::Url { url: url.into() })?;
        if parsed.scheme_str() != Some("https") || parsed.authority().is_none() {
            return Err(UpstreamError::Url { url: url.into() });
        }
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
            let cert = cert.map_err(|e| UpstreamError::Ca(e.to_string()))?;
            roots
                .add(cert)
                .map_err(|e| UpstreamError::Ca(e.to_string()))?;
        }
        if roots.is_empty() {
            return Err(UpstreamError::Ca("no certificate in it".into()));
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| UpstreamError::Ca(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        // No Nagle delay: a watch event or a keystroke is one small write.
        let mut tcp = HttpConnector::new();
        tcp.set_nodelay(true);
        tcp.enforce_http(false);
        // HTTP/1.1 to the API server: websockets upgrade only there.
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .wrap_connector(tcp);
        // Idle connections are dropped before the API server would close them (ours
        // after 32 s, kube-apiserver's after 90 s): a request with a streamed body, such
        // as an upload, cannot be retried on a connection the server closed under it.
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_timer(hyper_util::rt::TokioTimer::new())
            .build(connector);
        Ok(Arc::new(Upstream {
            base: format!(
                "https://{}",
                parsed.authority().map(|a| a.as_str()).unwrap_or_default()
            ),
            client,
        }))
    }
}

/// Headers that belong to one connection, not to the request (RFC 9110 7.6.1), plus the
/// browser's cookies (the console uses none; nothing ambient may reach the API).
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "cookie",
];

fn strip(headers: &mut HeaderMap, keep_upgrade: bool) {
    // Headers named by Connection are hop-by-hop too.
    let mut names: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|n| n.trim().to_ascii_lowercase())
        .collect();
    names.extend(HOP_BY_HOP.iter().map(|n| n.to_string()));
    for name in names {
        if keep_upgrade && (name == "connection" || name == "upgrade") {
            continue;
        }
        headers.remove(name.as_str());
    }
}

fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// A kube-style Status for failures of the proxy itself (the API's own answers pass
/// through untouched).
fn unavailable(message: String) -> Response {
    let body = serde_json::json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": "ServiceUnavailable",
        "code": 503,
    });
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// Forwards one request (and, for a websocket, the connection) to the API server.
pub async fn forward(State(up): State<Arc<Upstream>>, mut req: Request) -> Response {
    let upgrade = is_upgrade(req.headers());
    let browser_side = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let uri: Uri = match format!("{}{path}", up.base).parse() {
        Ok(u) => u,
        Err(_) => return StatusCode::BAD_REQUEST.into_response(),
    };
    strip(&mut parts.headers, upgrade);
    let mut outgoing = http::Request::new(body);
    *outgoing.method_mut() = parts.method;
    *outgoing.uri_mut() = uri;
    *outgoing.version_mut() = Version::HTTP_11;
    *outgoing.headers_mut() = parts.headers;

    let mut response = match up.client.request(outgoing).await {
        Ok(r) => r,
        Err(error) => {
            tracing::warn!(%error, "console: the API server cannot be reached");
            return unavailable(format!("the API server cannot be reached: {error}"));
        }
    };
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(browser_side) = browser_side else {
            return unavailable("the API server switched protocols unasked".into());
        };
        let api_side = hyper::upgrade::on(&mut response);
        tokio::spawn(async move {
            let (browser, api) = match tokio::try_join!(browser_side, api_side) {
                Ok(pair) => pair,
                Err(error) => {
                    tracing::debug!(%error, "console: websocket upgrade failed");
                    return;
                }
            };
            let mut browser = TokioIo::new(browser);
            let mut api = TokioIo::new(api);
            let _ = tokio::io::copy_bidirectional(&mut browser, &mut api).await;
        });
        let (parts, _) = response.into_parts();
        return Response::from_parts(parts, Body::empty());
    }
    let (mut parts, body) = response.into_parts();
    strip(&mut parts.headers, false);
    Response::from_parts(parts, Body::new(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_headers_and_cookies_do_not_pass() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "keep-alive, x-private".parse().unwrap());
        h.insert("x-private", "1".parse().unwrap());
        h.insert(header::COOKIE, "a=b".parse().unwrap());
        h.insert(header::HOST, "console".parse().unwrap());
        h.insert(header::AUTHORIZATION, "Bearer t".parse().unwrap());
        strip(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h[header::AUTHORIZATION], "Bearer t");
    }

    #[test]
    fn a_websocket_keeps_its_upgrade_headers() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "Upgrade".parse().unwrap());
        h.insert(header::UPGRADE, "websocket".parse().unwrap());
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            "plain.kubevirt.io".parse().unwrap(),
        );
        assert!(is_upgrade(&h));
        strip(&mut h, true);
        assert_eq!(h.len(), 3, "{h:?}");
    }

    #[test]
    fn only_https_upstreams_with_a_ca() {
        assert!(Upstream::new("http://127.0.0.1:6443", "").is_err());
        assert!(Upstream::new("https://127.0.0.1:6443", "not a certificate").is_err());
    }
}
