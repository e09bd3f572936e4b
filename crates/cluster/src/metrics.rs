//! `/metrics` of virt-handler and virt-controller on a cluster, over HTTPS (a self-signed
//! certificate, as upstream's components serve theirs) on their own port.
//!
//! Unlike upstream, a scrape must authenticate: the metrics name every VM, its labels and
//! its node, which a tenant should not read about another's. The bearer token is checked
//! with a TokenReview and the caller must be allowed `get` on the non-resource URL
//! `/metrics` (a SubjectAccessReview), as kube-apiserver's own `/metrics` asks; the
//! verdict is remembered for a minute per token (by its SHA-256), so a scraper costs the
//! API two calls a minute.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{
    NonResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::PostParams;
use kube::{Api, Client};
use serde_json::json;
use sha2::{Digest, Sha256};

/// How long a token's verdict is reused.
const VERDICT_TTL: Duration = Duration::from_secs(60);
/// Remembered verdicts at most (a flood of made-up tokens cannot grow the map further).
const MAX_VERDICTS: usize = 1024;

const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Produces the exposition text when scraped.
pub type Collect = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = String> + Send>> + Send + Sync>;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Verdict {
    Allowed,
    /// Not authenticated: 401.
    Unknown,
    /// Authenticated as this user, not allowed: 403.
    Denied(String),
}

struct Endpoint {
    client: Client,
    collect: Collect,
    verdicts: Mutex<HashMap<[u8; 32], (Verdict, Instant)>>,
}

fn status(code: StatusCode, reason: &str, message: String) -> Response {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code.as_u16(),
    });
    (code, axum::Json(body)).into_response()
}

impl Endpoint {
    async fn verdict(&self, token: &str) -> Result<Verdict, kube::Error> {
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        {
            let mut cache = self.verdicts.lock().unwrap_or_else(|p| p.into_inner());
            cache.retain(|_, (_, at)| at.elapsed() < VERDICT_TTL);
            if let Some((v, _)) = cache.get(&key) {
                return Ok(v.clone());
            }
        }
        let verdict = self.review(token).await?;
        let mut cache = self.verdicts.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() < MAX_VERDICTS {
            cache.insert(key, (verdict.clone(), Instant::now()));
        }
        Ok(verdict)
    }

    async fn review(&self, token: &str) -> Result<Verdict, kube::Error> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_string()),
                ..Default::default()
            },
            ..Default::default()
        };
        let reviewed = Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await?;
        let status = reviewed.status.unwrap_or_default();
        let Some(user) = status.user.filter(|_| status.authenticated == Some(true)) else {
            return Ok(Verdict::Unknown);
        };
        let access = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: user.username.clone(),
                groups: user.groups,
                uid: user.uid,
                extra: user.extra,
                non_resource_attributes: Some(NonResourceAttributes {
                    path: Some("/metrics".into()),
                    verb: Some("get".into()),
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let answer = Api::<SubjectAccessReview>::all(self.client.clone())
            .create(&PostParams::default(), &access)
            .await?;
        Ok(if answer.status.is_some_and(|s| s.allowed) {
            Verdict::Allowed
        } else {
            Verdict::Denied(user.username.unwrap_or_default())
        })
    }
}

async fn metrics(State(ep): State<Arc<Endpoint>>, headers: HeaderMap) -> Response {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty());
    let Some(token) = token else {
        return status(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "Unauthorized".into(),
        );
    };
    match ep.verdict(token).await {
        Ok(Verdict::Allowed) => {
            let body = (ep.collect)().await;
            ([(header::CONTENT_TYPE, CONTENT_TYPE)], body).into_response()
        }
        Ok(Verdict::Unknown) => status(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "Unauthorized".into(),
        ),
        Ok(Verdict::Denied(user)) => status(
            StatusCode::FORBIDDEN,
            "Forbidden",
            format!("forbidden: User \"{user}\" cannot get path \"/metrics\""),
        ),
        Err(e) => status(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            format!("checking the caller: {e}"),
        ),
    }
}

/// The `/metrics` router (and `/healthz`).
pub fn router(client: Client, collect: Collect) -> Router {
    let ep = Arc::new(Endpoint {
        client,
        collect,
        verdicts: Mutex::new(HashMap::new()),
    });
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(ep)
}

/// Serves [`router`] over HTTPS on `listen` (certificate for `name`) until `shutdown`; a
/// listener that cannot start is logged (the component runs on without metrics).
pub async fn serve(
    listen: SocketAddr,
    name: &'static str,
    router: Router,
    shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let started = async {
        let tls = crate::certs::self_signed_server_config(name)?;
        let listener = tokio::net::TcpListener::bind(listen).await?;
        anyhow::Ok((tls, listener))
    };
    let (tls, listener) = match started.await {
        Ok(s) => s,
        Err(error) => {
            tracing::warn!(%error, %listen, "cannot serve /metrics");
            return;
        }
    };
    tracing::info!(%listen, "serving /metrics");
    kubevirt_apiserver::conn::serve(
        listener,
        tokio_rustls::TlsAcceptor::from(tls),
        router,
        kubevirt_apiserver::Limits::default(),
        shutdown,
    )
    .await;
}
