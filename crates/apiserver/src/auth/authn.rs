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

fn constant_eq(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}
