//! Authentication, in kube-apiserver's order: a verified client certificate, else a bearer
//! token (static token, else service-account JWT), else anonymous. A bearer token that is
//! presented but invalid is a 401, never anonymous.

use std::sync::Arc;

use http::{header, HeaderMap};
use serde_json::Value;

use super::sa_tokens::{self, Signer};
use super::{UserInfo, ANONYMOUS, AUTHENTICATED, MASTERS, UNAUTHENTICATED};
use crate::error::ApiError;
use crate::store::{self, Store};

/// The subject of a client certificate that chained to our CA (the TLS layer verified it),
/// put in every request's extensions by the connection.
#[derive(Debug, Clone)]
pub struct PeerCertificate {
    pub common_name: String,
    pub organizations: Vec<String>,
}

impl PeerCertificate {
    /// Reads CN and O from a DER certificate; `None` if it has no CommonName.
    pub fn from_der(der: &[u8]) -> Option<PeerCertificate> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let subject = cert.subject();
        let common_name = subject
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())?
            .to_string();
        let organizations = subject
            .iter_organization()
            .filter_map(|o| o.as_str().ok().map(str::to_string))
            .collect();
        Some(PeerCertificate {
            common_name,
            organizations,
        })
    }
}

/// The data directory's static tokens (kube-apiserver's `--token-auth-file`): the admin
/// token is in `system:masters`; the read-only one is a plain user bound to `view`.
pub struct StaticToken {
    pub token: String,
    pub user: UserInfo,
}

pub struct Authenticator {
    store: Arc<Store>,
    static_tokens: Vec<StaticToken>,
    pub signer: Signer,
}

/// The static users' names.
pub const ADMIN_USER: &str = "admin";
pub const READONLY_USER: &str = "readonly";

fn user(name: &str, groups: &[&str]) -> UserInfo {
    UserInfo {
        name: name.to_string(),
        uid: String::new(),
        groups: groups.iter().map(|g| g.to_string()).collect(),
        extra: Default::default(),
    }
}

pub fn unix_now() -> i64 {
    chrono::Utc::now().timestamp()
}

impl Authenticator {
    pub fn new(
        store: Arc<Store>,
        admin_token: &str,
        readonly_token: &str,
        signer: Signer,
    ) -> Authenticator {
        Authenticator {
            store,
            static_tokens: vec![
                StaticToken {
                    token: admin_token.to_string(),
                    user: user(ADMIN_USER, &[MASTERS, AUTHENTICATED]),
                },
                StaticToken {
                    token: readonly_token.to_string(),
                    user: user(READONLY_USER, &[AUTHENTICATED]),
                },
            ],
            signer,
        }
    }

    /// The user of a request, or 401.
    pub fn authenticate(
        &self,
        headers: &HeaderMap,
        peer: Option<&PeerCertificate>,
    ) -> Result<UserInfo, ApiError> {
        if let Some(cert) = peer {
            let mut groups = cert.organizations.clone();
            if !groups.iter().any(|g| g == AUTHENTICATED) {
                groups.push(AUTHENTICATED.to_string());
            }
            return Ok(UserInfo {
                name: cert.common_name.clone(),
                uid: String::new(),
                groups,
                extra: Default::default(),
            });
        }
        let Some(auth) = headers.get(header::AUTHORIZATION) else {
            return Ok(user(ANONYMOUS, &[UNAUTHENTICATED]));
        };
        let token = auth
            .to_str()
            .ok()
            .and_then(|h| {
                let (scheme, rest) = h.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
            })
            .filter(|t| !t.is_empty())
            .ok_or_else(ApiError::unauthorized)?;
        self.authenticate_token(token)
            .ok_or_else(ApiError::unauthorized)
    }

    /// The user a bearer token stands for, if it is valid now (TokenReview uses it too).
    pub fn authenticate_token(&self, token: &str) -> Option<UserInfo> {
        if let Some(s) = self
            .static_tokens
            .iter()
            .find(|s| constant_eq(token, &s.token))
        {
            return Some(s.user.clone());
        }
        // Only JWT-shaped tokens are worth a signature check.
        if token.matches('.').count() != 2 {
            return None;
        }
        let claims = self.signer.verify(token, unix_now()).ok()?;
        self.still_valid(&claims)
            .then(|| sa_tokens::user_of(&claims))
    }

    /// A token is valid only while its ServiceAccount (same UID) and, if it names one, its
    /// Secret exist, as kube-apiserver's service-account token validator checks.
    fn still_valid(&self, claims: &sa_tokens::Claims) -> bool {
        let sa = self.store.get(&store::key(
            "",
            "serviceaccounts",
            Some(&claims.namespace),
            &claims.service_account,
        ));
        let Some(sa) = sa else { return false };
        if sa.pointer("/metadata/uid").and_then(Value::as_str)
            != Some(claims.service_account_uid.as_str())
        {
            return false;
        }
        if sa.pointer("/metadata/deletionTimestamp").is_some() {
            return false;
        }
        if let Some((secret_name, secret_uid)) = &claims.bound_secret {
            let secret = self.store.get(&store::key(
                "",
                "secrets",
                Some(&claims.namespace),
                secret_name,
            ));
            let Some(secret) = secret else { return false };
            if !secret_uid.is_empty()
                && secret.pointer("/metadata/uid").and_then(Value::as_str)
                    != Some(secret_uid.as_str())
            {
                return false;
            }
            if secret.pointer("/metadata/deletionTimestamp").is_some() {
                return false;
            }
        }
        true
    }
}

/// The websocket subprotocol carrying a bearer token, for clients (browsers) that cannot
/// set headers on a websocket: `base64url.bearer.authorization.k8s.io.<base64url token>`.
pub const WEBSOCKET_TOKEN_PROTOCOL: &str = "base64url.bearer.authorization.k8s.io.";

/// As kube-apiserver's websocket protocol authenticator: on a websocket upgrade without an
/// `Authorization` header, a token in `Sec-WebSocket-Protocol` becomes the request's bearer
/// token, and that protocol is removed so the handler never sees (or echoes) it. More than
/// one such protocol, or one that does not decode to a non-empty UTF-8 token, is a 401.
pub fn take_websocket_protocol_token(headers: &mut HeaderMap) -> Result<(), ApiError> {
    use base64::Engine;
    let is_websocket = headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if !is_websocket || headers.contains_key(header::AUTHORIZATION) {
        return Ok(());
    }
    let offered: Vec<String> = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .collect();
    let (tokens, rest): (Vec<_>, Vec<_>) = offered
        .into_iter()
        .partition(|p| p.starts_with(WEBSOCKET_TOKEN_PROTOCOL));
    let token = match tokens.as_slice() {
        [] => return Ok(()),
        [one] => one[WEBSOCKET_TOKEN_PROTOCOL.len()..].to_string(),
        _ => return Err(ApiError::unauthorized()),
    };
    let token = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token.trim_end_matches('='))
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .filter(|t| !t.is_empty() && !t.chars().any(char::is_control))
        .ok_or_else(ApiError::unauthorized)?;
    headers.remove(header::SEC_WEBSOCKET_PROTOCOL);
    if !rest.is_empty() {
        let rest =
            http::HeaderValue::from_str(&rest.join(", ")).map_err(|_| ApiError::unauthorized())?;
        headers.insert(header::SEC_WEBSOCKET_PROTOCOL, rest);
    }
    let bearer = http::HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|_| ApiError::unauthorized())?;
    headers.insert(header::AUTHORIZATION, bearer);
    Ok(())
}

fn constant_eq(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    fn upgrade(protocols: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::UPGRADE, "websocket".parse().unwrap());
        h.insert(header::SEC_WEBSOCKET_PROTOCOL, protocols.parse().unwrap());
        h
    }

    fn encoded(token: &str) -> String {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token);
        format!("{WEBSOCKET_TOKEN_PROTOCOL}{b64}")
    }

    #[test]
    fn websocket_protocol_token_becomes_the_bearer_and_is_removed() {
        let mut h = upgrade(&format!("plain.kubevirt.io, {}", encoded("abc.def-_")));
        take_websocket_protocol_token(&mut h).unwrap();
        assert_eq!(h[header::AUTHORIZATION], "Bearer abc.def-_");
        assert_eq!(h[header::SEC_WEBSOCKET_PROTOCOL], "plain.kubevirt.io");

        let mut only = upgrade(&encoded("t"));
        take_websocket_protocol_token(&mut only).unwrap();
        assert!(!only.contains_key(header::SEC_WEBSOCKET_PROTOCOL));
    }

    #[test]
    fn websocket_protocol_token_is_ignored_outside_upgrades_and_beside_a_header() {
        let mut plain = upgrade(&encoded("t"));
        plain.remove(header::UPGRADE);
        take_websocket_protocol_token(&mut plain).unwrap();
        assert!(!plain.contains_key(header::AUTHORIZATION));

        let mut both = upgrade(&encoded("t"));
        both.insert(header::AUTHORIZATION, "Bearer other".parse().unwrap());
        take_websocket_protocol_token(&mut both).unwrap();
        assert_eq!(both[header::AUTHORIZATION], "Bearer other");
    }

    #[test]
    fn bad_websocket_protocol_tokens_are_refused() {
        for bad in [
            format!("{}, {}", encoded("a"), encoded("b")),
            format!("{WEBSOCKET_TOKEN_PROTOCOL}!!!"),
            WEBSOCKET_TOKEN_PROTOCOL.to_string(),
            encoded("a\nb"),
        ] {
            let err = take_websocket_protocol_token(&mut upgrade(&bad)).unwrap_err();
            assert_eq!(err.code, http::StatusCode::UNAUTHORIZED, "{bad}");
        }
    }
}
