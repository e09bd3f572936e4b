//! Service-account tokens, as kube-apiserver issues and checks them: JWTs signed with the
//! data directory's `sa.key` (ES256). Bound tokens come from the TokenRequest API
//! (`serviceaccounts/NAME/token`, expiring, with an audience); legacy tokens live in
//! Secrets of type `kubernetes.io/service-account-token` and never expire. Either is
//! valid only while the ServiceAccount (and, for legacy ones, the Secret) it names exists
//! with the same UID.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{json, Value};

use super::UserInfo;

/// The issuer and default audience of bound tokens (kube-apiserver's
/// `--service-account-issuer` as clusters usually set it).
pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
/// The issuer of legacy Secret-based tokens.
pub const LEGACY_ISSUER: &str = "kubernetes/serviceaccount";

/// What a token claims to be, before the objects it names are checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Claims {
    pub namespace: String,
    pub service_account: String,
    /// UID of the ServiceAccount when the token was issued.
    pub service_account_uid: String,
    /// The Secret a legacy token was issued for, or the object a bound token is bound to
    /// (`Secret`/`Pod`) with its UID.
    pub bound_secret: Option<(String, String)>,
    /// `jti` of bound tokens.
    pub id: Option<String>,
}

pub struct Signer {
    encoding: EncodingKey,
    decoding: DecodingKey,
    key_id: String,
}

/// Why a token is refused (the 401 carries no detail, as kube-apiserver's does).
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("invalid signing key: {0}")]
    Key(String),
    #[error("{0}")]
    Invalid(String),
}

impl Signer {
    /// From the PKCS#8 PEM in the data directory.
    pub fn new(private_pem: &str) -> Result<Signer, TokenError> {
        let key =
            rcgen::KeyPair::from_pem(private_pem).map_err(|e| TokenError::Key(e.to_string()))?;
        let encoding = EncodingKey::from_ec_pem(private_pem.as_bytes())
            .map_err(|e| TokenError::Key(e.to_string()))?;
        let decoding = DecodingKey::from_ec_pem(key.public_key_pem().as_bytes())
            .map_err(|e| TokenError::Key(e.to_string()))?;
        // Like kube-apiserver: the key id is a digest of the public key.
        Ok(Signer {
            encoding,
            decoding,
            key_id: sha256_base64url(rcgen::PublicKeyData::der_bytes(&key)),
        })
    }

    fn sign(&self, claims: &Value) -> Result<String, TokenError> {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.key_id.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding)
            .map_err(|e| TokenError::Key(e.to_string()))
    }

    /// A bound token for `sa` (the ServiceAccount object), valid from `now` for
    /// `expiration_seconds`, for `audiences`, optionally bound to a Secret or Pod
    /// (`kind`, name, uid). Returns the token and its expiry (unix seconds).
    pub fn bound_token(
        &self,
        sa: &Value,
        audiences: &[String],
        expiration_seconds: i64,
        bound: Option<(&str, &str, &str)>,
        now: i64,
    ) -> Result<(String, i64), TokenError> {
        let (ns, name, uid) = identity(sa);
        let exp = now + expiration_seconds;
        let mut private = json!({
            "namespace": ns,
            "serviceaccount": {"name": name, "uid": uid},
        });
        if let Some((kind, bname, buid)) = bound {
            private[kind.to_lowercase()] = json!({"name": bname, "uid": buid});
        }
        let claims = json!({
            "aud": audiences,
            "exp": exp,
            "iat": now,
            "iss": ISSUER,
            "jti": uuid::Uuid::new_v4().to_string(),
            "kubernetes.io": private,
            "nbf": now,
            "sub": format!("system:serviceaccount:{ns}:{name}"),
        });
        Ok((self.sign(&claims)?, exp))
    }

    /// The never-expiring token kept in a `kubernetes.io/service-account-token` Secret.
    pub fn legacy_token(&self, sa: &Value, secret: &Value) -> Result<String, TokenError> {
        let (ns, name, uid) = identity(sa);
        let secret_name = secret
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let claims = json!({
            "iss": LEGACY_ISSUER,
            "kubernetes.io/serviceaccount/namespace": ns,
            "kubernetes.io/serviceaccount/secret.name": secret_name,
            "kubernetes.io/serviceaccount/service-account.name": name,
            "kubernetes.io/serviceaccount/service-account.uid": uid,
            "sub": format!("system:serviceaccount:{ns}:{name}"),
        });
        self.sign(&claims)
    }

    /// Checks the signature, issuer, audience and time of `token`; what it names is left
    /// to the caller (`Claims`).
    pub fn verify(&self, token: &str, now: i64) -> Result<Claims, TokenError> {
        let invalid = |m: &str| TokenError::Invalid(m.to_string());
        let mut validation = Validation::new(Algorithm::ES256);
        // Time and audience are checked below, after telling bound from legacy tokens.
        validation.validate_exp = false;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        let data = jsonwebtoken::decode::<Value>(token, &self.decoding, &validation)
            .map_err(|e| TokenError::Invalid(e.to_string()))?;
        let c = data.claims;
        let s = |p: &str| {
            c.pointer(p)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        match c["iss"].as_str() {
            Some(ISSUER) => {
                const LEEWAY: i64 = 60;
                let exp = c["exp"].as_i64().ok_or_else(|| invalid("no expiry"))?;
                if now > exp + LEEWAY {
                    return Err(invalid("Token has expired."));
                }
                if c["nbf"].as_i64().is_some_and(|nbf| now + LEEWAY < nbf) {
                    return Err(invalid("Token is not valid yet."));
                }
                let audiences: Vec<&str> = match &c["aud"] {
                    Value::String(a) => vec![a.as_str()],
                    Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
                    _ => Vec::new(),
                };
                if !audiences.contains(&ISSUER) {
                    return Err(invalid(
                        "token audiences is invalid for the target audiences",
                    ));
                }
                let private = &c["kubernetes.io"];
                let bound_secret = private["secret"]["name"].as_str().map(|n| {
                    (
                        n.to_string(),
                        private["secret"]["uid"]
                            .as_str()
                            .unwrap_or_default()
                            .to_string(),
                    )
                });
                Ok(Claims {
                    namespace: s("/kubernetes.io/namespace"),
                    service_account: s("/kubernetes.io/serviceaccount/name"),
                    service_account_uid: s("/kubernetes.io/serviceaccount/uid"),
                    bound_secret,
                    id: c["jti"].as_str().map(str::to_string),
                })
            }
            Some(LEGACY_ISSUER) => {
                let get = |k: &str| c[k].as_str().unwrap_or_default().to_string();
                Ok(Claims {
                    namespace: get("kubernetes.io/serviceaccount/namespace"),
                    service_account: get("kubernetes.io/serviceaccount/service-account.name"),
                    service_account_uid: get("kubernetes.io/serviceaccount/service-account.uid"),
                    bound_secret: Some((
                        get("kubernetes.io/serviceaccount/secret.name"),
                        String::new(),
                    )),
                    id: None,
                })
            }
            _ => Err(invalid("unknown issuer")),
        }
    }
}

/// A ServiceAccount's namespace, name and UID (empty when missing).
fn identity(sa: &Value) -> (&str, &str, &str) {
    let field = |f: &str| {
        sa.pointer(&format!("/metadata/{f}"))
            .and_then(Value::as_str)
            .unwrap_or_default()
    };
    (field("namespace"), field("name"), field("uid"))
}

/// The user a service-account token authenticates as.
pub fn user_of(claims: &Claims) -> UserInfo {
    let mut extra = std::collections::BTreeMap::new();
    if let Some(id) = &claims.id {
        extra.insert(
            "authentication.kubernetes.io/credential-id".to_string(),
            vec![format!("JTI={id}")],
        );
    }
    UserInfo {
        name: format!(
            "system:serviceaccount:{}:{}",
            claims.namespace, claims.service_account
        ),
        uid: claims.service_account_uid.clone(),
        groups: vec![
            "system:serviceaccounts".to_string(),
            format!("system:serviceaccounts:{}", claims.namespace),
            "system:authenticated".to_string(),
        ],
        extra,
    }
}

fn sha256_base64url(bytes: &[u8]) -> String {
    use base64::Engine;
    use sha2::Digest;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa() -> Value {
        json!({"metadata": {"namespace": "team-a", "name": "alice", "uid": "u-1"}})
    }

    #[test]
    fn bound_tokens_verify_until_they_expire() {
        let key = rcgen::KeyPair::generate().unwrap();
        let s = Signer::new(&key.serialize_pem()).unwrap();
        let (tok, exp) = s
            .bound_token(&sa(), &[ISSUER.to_string()], 600, None, 1_000)
            .unwrap();
        assert_eq!(exp, 1_600);
        let c = s.verify(&tok, 1_100).unwrap();
        assert_eq!(c.namespace, "team-a");
        assert_eq!(c.service_account, "alice");
        assert_eq!(user_of(&c).name, "system:serviceaccount:team-a:alice");
        assert!(s.verify(&tok, 1_600 + 61).is_err(), "expired");
        let (other_aud, _) = s
            .bound_token(&sa(), &["vault".to_string()], 600, None, 1_000)
            .unwrap();
        assert!(s.verify(&other_aud, 1_100).is_err(), "audience");
        // Another key's token is refused.
        let other = Signer::new(&rcgen::KeyPair::generate().unwrap().serialize_pem()).unwrap();
        assert!(other.verify(&tok, 1_100).is_err());
        // A tampered payload is refused.
        let mut parts: Vec<String> = tok.split('.').map(str::to_string).collect();
        parts[1] = parts[1].replace('A', "B");
        assert!(s.verify(&parts.join("."), 1_100).is_err());
    }

    #[test]
    fn legacy_tokens_name_their_secret() {
        let key = rcgen::KeyPair::generate().unwrap();
        let s = Signer::new(&key.serialize_pem()).unwrap();
        let secret = json!({"metadata": {"name": "alice-token"}});
        let tok = s.legacy_token(&sa(), &secret).unwrap();
        let c = s.verify(&tok, i64::MAX / 2).unwrap();
        assert_eq!(c.bound_secret.unwrap().0, "alice-token");
        assert_eq!(c.service_account_uid, "u-1");
    }
}
