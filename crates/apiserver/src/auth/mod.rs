//! Who is asking and what they may do, as kube-apiserver decides it, for every route
//! (including `extra_routes`) before any handler runs:
//! - authentication (`authn`): client certificates from our CA (CN = user, O = groups),
//!   service-account tokens (`sa_tokens`), the data directory's static tokens, else
//!   `system:anonymous`; a browser's websocket may carry its token as a subprotocol;
//! - impersonation (`Impersonate-*` headers), itself authorized;
//! - authorization by RBAC (`authz`), subresources included;
//! - the review APIs (`review`): TokenRequest, TokenReview, SelfSubjectReview,
//!   (Self|Local)SubjectAccessReview, SelfSubjectRulesReview.

pub mod authn;
pub mod authz;
pub mod controllers;
pub mod review;
pub mod sa_tokens;

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::Method;

pub use authn::{Authenticator, PeerCertificate};
pub use authz::Authorizer;
pub use kubevirt_rbac::UserInfo;

use crate::http::{request_info, AppState};

/// The group kube-apiserver lets do anything, whatever RBAC holds.
pub const MASTERS: &str = "system:masters";
pub const AUTHENTICATED: &str = "system:authenticated";
pub const UNAUTHENTICATED: &str = "system:unauthenticated";
pub const ANONYMOUS: &str = "system:anonymous";

/// The authenticated (or impersonated) user of a request, in its extensions.
#[derive(Debug, Clone)]
pub struct RequestUser(pub Arc<UserInfo>);

/// Authentication, impersonation and authorization of one request.
pub async fn middleware(
    State(app): State<Arc<AppState>>,
    mut req: Request,
    next: Next,
) -> Response {
    let peer = req.extensions().get::<PeerCertificate>().cloned();
    if let Err(e) = authn::take_websocket_protocol_token(req.headers_mut()) {
        return e.into_response();
    }
    let user = match app.auth.authenticate(req.headers(), peer.as_ref()) {
        Ok(u) => u,
        Err(e) => return e.into_response(),
    };
    let user = match app.authz.impersonate(&user, req.headers()) {
        Ok(Some(impersonated)) => impersonated,
        Ok(None) => user,
        Err(e) => return e.into_response(),
    };
    let method = req.method().clone();
    let watch = crate::http::query_map(req.uri())
        .get("watch")
        .is_some_and(|w| w == "true" || w == "1");
    let path = req.uri().path().to_string();
    let decision = match request_info(&method, &path, watch) {
        Some(info) => app.authz.check_resource(&user, &info).and_then(|()| {
            // kube-apiserver authorizes the first segment after the name (`vnc`); virt-api
            // then asks again for the whole subresource (`vnc/screenshot`), which KubeVirt's
            // roles grant separately.
            match info
                .subresource_path
                .clone()
                .filter(|_| info.group == "subresources.kubevirt.io")
            {
                Some(full) => {
                    let mut deeper = info.clone();
                    deeper.subresource = Some(full);
                    app.authz.check_resource(&user, &deeper)
                }
                None => Ok(()),
            }
        }),
        None => {
            let verb = match method {
                Method::GET | Method::HEAD => "get".to_string(),
                ref m => m.as_str().to_lowercase(),
            };
            app.authz.check_path(&user, &verb, &path)
        }
    };
    if let Err(e) = decision {
        return e.into_response();
    }
    // As kube-apiserver: what follows sees the impersonated user, not the headers.
    let impersonation: Vec<_> = req
        .headers()
        .keys()
        .filter(|k| k.as_str().starts_with("impersonate-"))
        .cloned()
        .collect();
    for name in impersonation {
        req.headers_mut().remove(name);
    }
    req.extensions_mut().insert(RequestUser(Arc::new(user)));
    next.run(req).await
}
