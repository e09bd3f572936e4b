//! virt-api's `subresources.kubevirt.io` API, served to kube-apiserver's aggregator
//! (APIService `v1.subresources.kubevirt.io`), so `virtctl start/stop/console/vnc/...`
//! go through the cluster's own authentication and authorization:
//!
//! 1. the aggregator authenticated the user; it proxies with its front-proxy client
//!    certificate (checked against the cluster's request-header CA and allowed names) and
//!    names the user in the `X-Remote-User`/`X-Remote-Group`/`X-Remote-Extra-*` headers;
//! 2. virt-api asks the cluster whether that user may (a SubjectAccessReview for the
//!    subresource, as kube-apiserver words it) and refuses with kube-apiserver's 403 if not;
//! 3. a VM-level request (start, stop, restart, migrate, volumes) is served here; a
//!    VMI-level one goes to virt-handler on the node running the VMI (mutual TLS), which
//!    serves it as in embedded mode, websocket upgrades included.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::{Json, Router};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::{ConfigMap, Node};
use kube::api::{Api, ListParams, PostParams};
use kube::Client;
use serde_json::json;

use kubevirt_api::subresources::{GROUP, VERSION};
use kubevirt_apiserver::auth::PeerCertificate;

/// Largest request body forwarded (the subresources' bodies are small options).
const MAX_BODY: usize = 1 << 20;

/// How the cluster's front proxy identifies itself and its users
/// (ConfigMap `kube-system/extension-apiserver-authentication`).
#[derive(Debug, Clone, Default)]
pub struct RequestHeaderAuth {
    /// PEM: the CA of the front proxy's client certificate.
    pub client_ca: String,
    /// Common names the front proxy's certificate may have (any, when empty).
    pub allowed_names: Vec<String>,
    pub username_headers: Vec<String>,
    pub group_headers: Vec<String>,
    pub extra_prefixes: Vec<String>,
}

impl RequestHeaderAuth {
    /// Reads the cluster's settings; `None` when it has none (no aggregation layer).
    pub async fn from_cluster(client: &Client) -> kube::Result<Option<Self>> {
        let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "kube-system");
        let Some(cm) = cms.get_opt("extension-apiserver-authentication").await? else {
            return Ok(None);
        };
        let data = cm.data.unwrap_or_default();
        let list = |k: &str| -> Vec<String> {
            data.get(k)
                .and_then(|v| serde_json::from_str(v).ok())
                .unwrap_or_default()
        };
        let Some(client_ca) = data.get("requestheader-client-ca-file").cloned() else {
            return Ok(None);
        };
        Ok(Some(RequestHeaderAuth {
            client_ca,
            allowed_names: list("requestheader-allowed-names"),
            username_headers: list("requestheader-username-headers"),
            group_headers: list("requestheader-group-headers"),
            extra_prefixes: list("requestheader-extra-headers-prefix"),
        }))
    }
}

/// The user the front proxy vouches for.
#[derive(Debug, Clone, PartialEq)]
struct User {
    name: String,
    groups: Vec<String>,
    extra: BTreeMap<String, Vec<String>>,
}

#[derive(Clone)]
pub struct ProxyState {
    pub client: Client,
    pub auth: Arc<RequestHeaderAuth>,
    /// virt-api's client configuration towards virt-handler (renewed with the PKI).
    pub handler_tls: Arc<RwLock<Arc<rustls::ClientConfig>>>,
    pub handler_port: u16,
    /// Serves the VM-level subresources here (they write API objects, as upstream's
    /// virt-api does); the VMI-level ones go to the VMI's node.
    pub vm_subresources: Router,
}

pub fn router(state: ProxyState) -> Router {
    let prefix = format!("/apis/{GROUP}/{VERSION}");
    Router::new()
        .route(
            &prefix,
            get(|| async { Json(kubevirt_api::subresources::resource_list()) }),
        )
        .route(
            &format!("{prefix}/version"),
            get(|| async { Json(kubevirt_api::subresources::version()) }),
        )
        .route(
            &format!("{prefix}/namespaces/{{ns}}/{{resource}}/{{name}}/{{sub}}"),
            any(proxy),
        )
        // `portforward/{port}[/{protocol}]`.
        .route(
            &format!("{prefix}/namespaces/{{ns}}/{{resource}}/{{name}}/{{sub}}/{{*rest}}"),
            any(proxy),
        )
        .with_state(state)
}

fn status(code: StatusCode, reason: &str, message: String) -> Response {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code.as_u16(),
    });
    (code, Json(body)).into_response()
}

/// The front proxy's user, or why the request is not from it.
fn authenticate(auth: &RequestHeaderAuth, req: &Request) -> Result<User, &'static str> {
    let cert = req
        .extensions()
        .get::<PeerCertificate>()
        .ok_or("no client certificate from the front proxy")?;
    if !auth.allowed_names.is_empty() && !auth.allowed_names.contains(&cert.common_name) {
        return Err("the client certificate is not the front proxy's");
    }
    let headers = req.headers();
    let values = |names: &[String]| -> Vec<String> {
        names
            .iter()
            .flat_map(|n| headers.get_all(n.as_str()))
            .filter_map(|v| v.to_str().ok().map(str::to_string))
            .collect()
    };
    let name = values(&auth.username_headers)
        .into_iter()
        .next()
        .filter(|n| !n.is_empty())
        .ok_or("no user named by the front proxy")?;
    let mut extra = BTreeMap::<String, Vec<String>>::new();
    for (k, v) in headers {
        let key = k.as_str();
        for prefix in &auth.extra_prefixes {
            if let Some(rest) = key.strip_prefix(&prefix.to_ascii_lowercase()) {
                if let Ok(v) = v.to_str() {
                    extra
                        .entry(rest.to_string())
                        .or_default()
                        .push(v.to_string());
                }
            }
        }
    }
    Ok(User {
        name,
        groups: values(&auth.group_headers),
        extra,
    })
}

/// kube-apiserver's verb for a request's method.
fn verb(method: &axum::http::Method) -> &'static str {
    match *method {
        axum::http::Method::GET | axum::http::Method::HEAD => "get",
        axum::http::Method::POST => "create",
        axum::http::Method::PATCH => "patch",
        axum::http::Method::DELETE => "delete",
        _ => "update",
    }
}

async fn authorize(
    client: &Client,
    user: &User,
    verb: &str,
    ns: &str,
    resource: &str,
    name: &str,
    sub: &str,
) -> Result<bool, kube::Error> {
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(user.name.clone()),
            groups: Some(user.groups.clone()),
            extra: (!user.extra.is_empty()).then(|| user.extra.clone()),
            resource_attributes: Some(ResourceAttributes {
                group: Some(GROUP.into()),
                version: Some(VERSION.into()),
                resource: Some(resource.into()),
                subresource: Some(sub.into()),
                namespace: Some(ns.into()),
                name: Some(name.into()),
                verb: Some(verb.into()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let api: Api<SubjectAccessReview> = Api::all(client.clone());
    let answer = api.create(&PostParams::default(), &review).await?;
    Ok(answer.status.is_some_and(|s| s.allowed))
}

/// The address of the node whose virt-handler serves the request: the VMI's node (for a
/// VM, its VMI's), else any node with a virt-handler.
async fn handler_node(client: &Client, ns: &str, name: &str) -> Result<std::net::IpAddr, Response> {
    let vmis: Api<kubevirt_api::v1::VirtualMachineInstance> = Api::namespaced(client.clone(), ns);
    let vmi_node = vmis
        .get_opt(name)
        .await
        .ok()
        .flatten()
        .and_then(|v| v.status.and_then(|s| s.node_name))
        .filter(|n| !n.is_empty());
    let nodes: Api<Node> = Api::all(client.clone());
    let node = match vmi_node {
        Some(n) => nodes.get_opt(&n).await.ok().flatten(),
        None => nodes
            .list(&ListParams::default().labels(&format!(
                "{}=true",
                kubevirt_api::v1::well_known::NODE_SCHEDULABLE_LABEL
            )))
            .await
            .ok()
            .and_then(|l| l.items.into_iter().next()),
    };
    node.and_then(|n| n.status?.addresses)
        .and_then(|a| a.into_iter().find(|a| a.type_ == "InternalIP"))
        .and_then(|a| a.address.parse().ok())
        .ok_or_else(|| {
            status(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                format!("no node with a virt-handler serves {ns}/{name}"),
            )
        })
}

async fn proxy(
    State(st): State<ProxyState>,
    Path(mut params): Path<std::collections::HashMap<String, String>>,
    mut req: Request,
) -> Response {
    let mut param = |key: &str| params.remove(key).unwrap_or_default();
    let (ns, resource, name, sub) = (param("ns"), param("resource"), param("name"), param("sub"));
    let user = match authenticate(&st.auth, &req) {
        Ok(u) => u,
        Err(why) => return status(StatusCode::UNAUTHORIZED, "Unauthorized", why.into()),
    };
    let verb = verb(req.method());
    match authorize(&st.client, &user, verb, &ns, &resource, &name, &sub).await {
        Ok(true) => {}
        Ok(false) => {
            return status(
                StatusCode::FORBIDDEN,
                "Forbidden",
                format!(
                    "{resource}.{GROUP} \"{name}\" is forbidden: User \"{}\" cannot {verb} resource \"{resource}/{sub}\" in API group \"{GROUP}\" in the namespace \"{ns}\"",
                    user.name
                ),
            )
        }
        Err(e) => {
            return status(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                format!("authorizing the request: {e}"),
            )
        }
    }
    // A VM's port-forward reaches its VMI, on the VMI's node; the VM's other
    // subresources only write API objects.
    if resource == "virtualmachines" && sub != "portforward" {
        use tower::ServiceExt;
        // A fresh request: this route's matched path parameters must not reach the next
        // router's.
        let (parts, body) = req.into_parts();
        let mut local = Request::new(body);
        *local.method_mut() = parts.method;
        *local.uri_mut() = parts.uri;
        *local.headers_mut() = parts.headers;
        return match st.vm_subresources.clone().oneshot(local).await {
            Ok(r) => r,
            Err(never) => match never {},
        };
    }
    let addr = match handler_node(&st.client, &ns, &name).await {
        Ok(ip) => SocketAddr::new(ip, st.handler_port),
        Err(r) => return r,
    };
    let tls = st
        .handler_tls
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let client_upgrade = req
        .headers()
        .contains_key(axum::http::header::UPGRADE)
        .then(|| hyper::upgrade::on(&mut req));
    match forward(tls, addr, req, client_upgrade).await {
        Ok(r) => r,
        Err(e) => status(
            StatusCode::BAD_GATEWAY,
            "InternalError",
            format!("reaching virt-handler at {addr}: {e}"),
        ),
    }
}

/// Headers that describe the hop to virt-api, not the request.
fn forwarded_headers(from: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    for (k, v) in from {
        let name = k.as_str();
        if name.starts_with("x-remote-") || name == "authorization" || name == "host" {
            continue;
        }
        out.append(k.clone(), v.clone());
    }
    out
}

async fn forward(
    tls: Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    req: Request,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
) -> anyhow::Result<Response> {
    let (parts, body) = req.into_parts();
    let body = http_body_util::Limited::new(body, MAX_BODY)
        .collect()
        .await
        .map_err(|e| anyhow::anyhow!("reading the request body: {e}"))?
        .to_bytes();
    let tcp = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        tokio::net::TcpStream::connect(addr),
    )
    .await??;
    let server_name = rustls::pki_types::ServerName::try_from(crate::certs::HANDLER_SERVER_NAME)?;
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(server_name, tcp)
        .await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        if let Err(error) = conn.with_upgrades().await {
            tracing::debug!(%error, "connection to virt-handler ended");
        }
    });
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let mut out = hyper::Request::builder()
        .method(parts.method.clone())
        .uri(path)
        .body(http_body_util::Full::new(body))?;
    *out.headers_mut() = forwarded_headers(&parts.headers);
    out.headers_mut().insert(
        axum::http::header::HOST,
        axum::http::HeaderValue::from_static(crate::certs::HANDLER_SERVER_NAME),
    );
    let mut resp = sender.send_request(out).await?;
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let upstream = hyper::upgrade::on(&mut resp);
        let client = client_upgrade
            .ok_or_else(|| anyhow::anyhow!("virt-handler switched protocols unasked"))?;
        tokio::spawn(async move {
            match tokio::try_join!(client, upstream) {
                Ok((a, b)) => {
                    let (mut a, mut b) = (TokioIo::new(a), TokioIo::new(b));
                    let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
                }
                Err(error) => tracing::debug!(%error, "upgrade failed"),
            }
        });
        let (parts, _) = resp.into_parts();
        return Ok(Response::from_parts(parts, Body::empty()));
    }
    let (parts, body) = resp.into_parts();
    Ok(Response::from_parts(parts, Body::new(body)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> RequestHeaderAuth {
        RequestHeaderAuth {
            client_ca: String::new(),
            allowed_names: vec!["front-proxy-client".into()],
            username_headers: vec!["X-Remote-User".into()],
            group_headers: vec!["X-Remote-Group".into()],
            extra_prefixes: vec!["X-Remote-Extra-".into()],
        }
    }

    fn request(cn: Option<&str>) -> Request {
        let mut r = Request::builder()
            .uri("/x")
            .header("X-Remote-User", "alice")
            .header("X-Remote-Group", "team-a")
            .header("X-Remote-Group", "system:authenticated")
            .header("X-Remote-Extra-Scopes", "s1")
            .body(Body::empty())
            .unwrap();
        if let Some(cn) = cn {
            r.extensions_mut().insert(PeerCertificate {
                common_name: cn.into(),
                organizations: vec![],
            });
        }
        r
    }

    #[test]
    fn only_the_front_proxy_names_users() {
        let a = auth();
        let u = authenticate(&a, &request(Some("front-proxy-client"))).unwrap();
        assert_eq!(u.name, "alice");
        assert_eq!(u.groups, ["team-a", "system:authenticated"]);
        assert_eq!(u.extra["scopes"], ["s1"]);
        // Headers alone (no certificate), or another certificate, name nobody.
        assert!(authenticate(&a, &request(None)).is_err());
        assert!(authenticate(&a, &request(Some("mallory"))).is_err());
        let h = forwarded_headers(request(None).headers());
        assert!(h.get("x-remote-user").is_none());
    }
}
