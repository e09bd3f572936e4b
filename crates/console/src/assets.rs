//! The browser app's files, embedded at build time (see `build.rs`), served with their
//! ETag and, where the browser accepts it, gzip. The files under `assets/` are named after
//! their content hash, so browsers keep them; `index.html` is revalidated each time. Any
//! other path that is not a file is the app itself (`index.html`): the app routes by URL
//! fragment, so this only catches reloads of a typed path.

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};

pub struct Asset {
    pub path: &'static str,
    pub content_type: &'static str,
    pub etag: &'static str,
    pub body: &'static [u8],
    pub gzip: Option<&'static [u8]>,
}

pub static ASSETS: &[Asset] = include!(concat!(env!("OUT_DIR"), "/assets.rs"));

const INDEX: &str = "index.html";
/// The build's content-hashed files.
const HASHED_DIR: &str = "assets/";
/// How much of a refused request's body is read before the 405.
const MAX_REFUSED_BODY: usize = 64 * 1024;

fn find(path: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|a| a.path == path)
}

fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|coding| {
            let mut parts = coding.split(';');
            let name = parts.next().unwrap_or("").trim();
            let refused = parts.any(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    == Some(0.0)
            });
            name.eq_ignore_ascii_case("gzip") && !refused
        })
}

/// GET or HEAD of an app file; the app for any other path.
pub async fn serve(method: Method, uri: Uri, headers: HeaderMap, body: Body) -> Response {
    if method != Method::GET && method != Method::HEAD {
        // Read what the client sends (up to a bound) before the refusal: answering a
        // request still being sent ends its HTTP/2 stream early, and a client may see a
        // reset instead of the 405.
        let _ = axum::body::to_bytes(body, MAX_REFUSED_BODY).await;
        return (
            StatusCode::METHOD_NOT_ALLOWED,
            [(header::ALLOW, "GET, HEAD")],
        )
            .into_response();
    }
    let wanted = uri.path().trim_start_matches('/');
    let asset = match find(wanted) {
        Some(a) => a,
        // A script or style that is not there is a 404, not the page.
        None if wanted.starts_with(HASHED_DIR) => return StatusCode::NOT_FOUND.into_response(),
        None => match find(INDEX) {
            Some(a) => a,
            None => return StatusCode::NOT_FOUND.into_response(),
        },
    };
    let cache = if asset.path.starts_with(HASHED_DIR) {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    let etag = format!("\"{}\"", asset.etag);
    let mut response = Response::builder()
        .header(header::CONTENT_TYPE, asset.content_type)
        .header(header::ETAG, &etag)
        .header(header::CACHE_CONTROL, cache)
        .header(header::VARY, "Accept-Encoding");
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    if fresh {
        return response
            .status(StatusCode::NOT_MODIFIED)
            .body(Body::empty())
            .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response());
    }
    let body: &'static [u8] = match asset.gzip {
        Some(gz) if accepts_gzip(&headers) => {
            response = response.header(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
            gz
        }
        _ => asset.body,
    };
    response = response.header(header::CONTENT_LENGTH, body.len());
    let body = if method == Method::HEAD {
        Body::empty()
    } else {
        Body::from(body)
    };
    response
        .body(body)
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_app_is_embedded() {
        let index = find(INDEX).expect("index.html is embedded");
        assert!(index.content_type.starts_with("text/html"));
        let text = std::str::from_utf8(index.body).unwrap();
        assert!(text.contains("<script"), "index.html loads the app: {text}");
    }

    #[test]
    fn gzip_is_chosen_only_when_accepted() {
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::ACCEPT_ENCODING, v.parse().unwrap());
            accepts_gzip(&h)
        };
        assert!(with("gzip, deflate, br"));
        assert!(with("br;q=1.0, GZIP;q=0.5"));
        assert!(!with("gzip;q=0"));
        assert!(!with("br"));
        assert!(!accepts_gzip(&HeaderMap::new()));
    }
}
