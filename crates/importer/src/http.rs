//! The HTTP(S) client for `import_http`: reqwest over rustls with the ring provider, trusting
//! the system roots plus the DataVolume's certConfigMap CAs (as CDI's `createCertPool`
//! adds them to the system pool); basic auth from its secretRef; error wording and
//! classification as CDI's http-datasource.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use rustls::pki_types::CertificateDer;

use crate::error::{ImportError, ImportErrorKind, Result};
use crate::HttpSource;

/// CDI's importer user agent.
const USER_AGENT: &str = "cdi-golang-importer";

fn system_roots() -> &'static [CertificateDer<'static>] {
    static ROOTS: OnceLock<Vec<CertificateDer<'static>>> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let loaded = rustls_native_certs::load_native_certs();
        for e in &loaded.errors {
            tracing::warn!(error = %e, "loading system CA certificates");
        }
        loaded.certs
    })
}

fn tls_error(message: String) -> ImportError {
    ImportError::new(ImportErrorKind::Tls, message).retryable(false)
}

fn tls_config(ca_pem: Option<&[u8]>) -> Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    let (_added, _ignored) = roots.add_parsable_certificates(system_roots().iter().cloned());
    if let Some(pem) = ca_pem {
        let mut found = 0;
        for cert in rustls_pemfile::certs(&mut &pem[..]) {
            let cert = cert.map_err(|e| {
                tls_error(format!(
                    "Error loading CA certificates from certConfigMap: {e}"
                ))
            })?;
            roots.add(cert).map_err(|e| {
                tls_error(format!(
                    "Error loading CA certificates from certConfigMap: {e}"
                ))
            })?;
            found += 1;
        }
        if found == 0 {
            return Err(tls_error(
                "Error loading CA certificates from certConfigMap: no PEM certificate found".into(),
            ));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_error(format!("configuring TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Only http and https are fetched (reqwest would refuse others too, less clearly).
pub(crate) fn check_url(url: &str) -> Result<()> {
    let parsed = reqwest::Url::parse(url);
    match parsed {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.has_host() => Ok(()),
        Ok(u) => Err(ImportError::new(
            ImportErrorKind::Http,
            format!(
                "unable to parse endpoint {:?}: unsupported scheme {:?} (http or https expected)",
                redact(url),
                u.scheme()
            ),
        )
        .retryable(false)),
        Err(e) => Err(ImportError::new(
            ImportErrorKind::Http,
            format!("unable to parse endpoint {:?}: {e}", redact(url)),
        )
        .retryable(false)),
    }
}

/// A client for one source: its CAs, and its extra headers on every request.
pub(crate) fn client(src: &HttpSource) -> Result<reqwest::Client> {
    let mut headers = HeaderMap::new();
    for (name, value) in &src.extra_headers {
        let bad = |what: &str| {
            ImportError::new(
                ImportErrorKind::Http,
                format!(
                    "Error getting extra headers for HTTP client: invalid header {what} {name:?}"
                ),
            )
            .retryable(false)
        };
        let name = HeaderName::from_bytes(name.trim().as_bytes()).map_err(|_| bad("name"))?;
        let value = HeaderValue::from_str(value.trim()).map_err(|_| bad("value for"))?;
        headers.append(name, value);
    }
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls_config(src.ca_pem.as_deref())?)
        .user_agent(USER_AGENT)
        .default_headers(headers)
        .connect_timeout(Duration::from_secs(30))
        // CDI cancels a transfer that made no progress for a while; so does this.
        .read_timeout(Duration::from_secs(120))
        .build()
        .map_err(|e| {
            ImportError::new(
                ImportErrorKind::Http,
                format!("could not create HTTP client: {}", chain(&e)),
            )
            .retryable(false)
        })
}

/// The error and all its sources, joined as Go's wrapped errors print.
pub(crate) fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        let text = e.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        cur = e.source();
    }
    parts.join(": ")
}

/// The rustls error somewhere in `err`'s chain. hyper-rustls wraps it in an io::Error,
/// itself wrapped in another; `io::Error::source` skips the wrapped error, so io errors are
/// opened with `get_ref`.
fn rustls_error<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut cur: Option<&'a (dyn std::error::Error + 'static)> = Some(err);
    // Bounded: a chain is short, but nothing forbids a cycle.
    for _ in 0..32 {
        let e = cur?;
        if let Some(r) = e.downcast_ref::<rustls::Error>() {
            return Some(r);
        }
        cur = match e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => e.source(),
        };
    }
    None
}

/// A failed request or body read, worded as CDI's "HTTP request errored" and classified:
/// certificate problems are not retryable, every other network or TLS failure is.
pub(crate) fn request_error(err: &reqwest::Error, url: &str) -> ImportError {
    // reqwest's own text repeats the URL ("error sending request for url (...)"); Go names
    // the request once ("Get \"url\": ..."), and so does this.
    let detail = match std::error::Error::source(err) {
        Some(cause) if err.is_request() || err.is_connect() => chain(cause),
        _ => chain(err),
    };
    let message = format!("HTTP request errored: Get {:?}: {detail}", redact(url));
    match rustls_error(err) {
        Some(
            rustls::Error::InvalidCertificate(_)
            | rustls::Error::NoCertificatesPresented
            | rustls::Error::UnsupportedNameType,
        ) => ImportError::new(ImportErrorKind::Tls, message).retryable(false),
        Some(_) => ImportError::new(ImportErrorKind::Tls, message).retryable(true),
        None => ImportError::new(ImportErrorKind::Http, message).retryable(true),
    }
}

/// CDI's message for an unexpected status (pkg/importer/http-datasource.go,
/// `createHTTPReader`): "expected status code 200, got 404. Status: 404 Not Found".
pub(crate) fn status_error(status: reqwest::StatusCode, expected: u16) -> ImportError {
    let text = match status.canonical_reason() {
        Some(reason) => format!("{} {reason}", status.as_u16()),
        None => status.as_u16().to_string(),
    };
    let message = format!(
        "expected status code {expected}, got {}. Status: {text}",
        status.as_u16()
    );
    let code = status.as_u16();
    let (kind, retryable) = match code {
        404 | 410 => (ImportErrorKind::NotFound, false),
        408 | 429 => (ImportErrorKind::Http, true),
        500..=599 => (ImportErrorKind::Http, true),
        _ => (ImportErrorKind::Http, false),
    };
    ImportError::new(kind, message).retryable(retryable)
}

/// The URL without its user-info, for messages.
pub(crate) fn redact(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) if !u.username().is_empty() || u.password().is_some() => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.to_string()
        }
        _ => url.to_owned(),
    }
}

/// `start` and the complete length from a `Content-Range: bytes start-end/len` header.
pub(crate) fn content_range(headers: &HeaderMap) -> Option<(u64, Option<u64>)> {
    let v = headers.get(reqwest::header::CONTENT_RANGE)?.to_str().ok()?;
    let rest = v.trim().strip_prefix("bytes ")?;
    let (range, len) = rest.split_once('/')?;
    let (start, _end) = range.split_once('-')?;
    let start = start.trim().parse().ok()?;
    let len = match len.trim() {
        "*" => None,
        l => Some(l.parse().ok()?),
    };
    Some((start, len))
}

/// The validator to send in `If-Range`: a strong ETag, else Last-Modified.
pub(crate) fn if_range(etag: Option<&str>, last_modified: Option<&str>) -> Option<String> {
    match etag {
        Some(e) if !e.starts_with("W/") && !e.is_empty() => Some(e.to_owned()),
        _ => last_modified.filter(|l| !l.is_empty()).map(str::to_owned),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_messages_match_cdi() {
        let e = status_error(reqwest::StatusCode::INTERNAL_SERVER_ERROR, 200);
        assert_eq!(
            e.message,
            "expected status code 200, got 500. Status: 500 Internal Server Error"
        );
        assert!(e.retryable);
        let e = status_error(reqwest::StatusCode::NOT_FOUND, 200);
        assert_eq!(e.kind, ImportErrorKind::NotFound);
        assert!(!e.retryable);
        assert!(!status_error(reqwest::StatusCode::UNAUTHORIZED, 200).retryable);
    }

    #[test]
    fn ranges_and_validators() {
        let mut h = HeaderMap::new();
        h.insert(
            reqwest::header::CONTENT_RANGE,
            HeaderValue::from_static("bytes 100-199/1000"),
        );
        assert_eq!(content_range(&h), Some((100, Some(1000))));
        h.insert(
            reqwest::header::CONTENT_RANGE,
            HeaderValue::from_static("bytes 5-9/*"),
        );
        assert_eq!(content_range(&h), Some((5, None)));
        h.insert(
            reqwest::header::CONTENT_RANGE,
            HeaderValue::from_static("garbage"),
        );
        assert_eq!(content_range(&h), None);
        assert_eq!(
            if_range(Some("W/\"x\""), Some("Tue, 01 Jan 2030 00:00:00 GMT")).as_deref(),
            Some("Tue, 01 Jan 2030 00:00:00 GMT")
        );
        assert_eq!(if_range(Some("\"abc\""), None).as_deref(), Some("\"abc\""));
        assert_eq!(if_range(None, None), None);
        assert_eq!(
            redact("https://u:p@example.com/x.img"),
            "https://example.com/x.img"
        );
    }

    #[test]
    fn only_http_urls() {
        check_url("http://example.com/a.img").unwrap();
        check_url("https://example.com/a.img").unwrap();
        for bad in ["file:///etc/shadow", "ftp://x/y", "not a url", "http://"] {
            let e = check_url(bad).unwrap_err();
            assert!(
                e.message.starts_with("unable to parse endpoint"),
                "{}",
                e.message
            );
            assert!(!e.retryable);
        }
    }

    #[test]
    fn ca_bundle_must_hold_a_certificate() {
        let e = tls_config(Some(b"not a pem")).unwrap_err();
        assert_eq!(e.kind, ImportErrorKind::Tls);
        assert!(tls_config(None).is_ok());
    }
}
