//! virt-api's self-managed PKI, kept in Secrets of its namespace as upstream's operator
//! keeps it: a CA (`kubevirt-ca`, 7 days) and virt-api's serving certificate
//! (`kubevirt-virt-api-certs`, 24 hours) for its Service's DNS names, each renewed when 80 %
//! of its life has passed. The CA Secret also holds the bundle clients must trust: the
//! current CA and, until it expires, the one before it, so that certificates signed by the
//! old CA stay valid while every replica and every webhook configuration catches up.
//!
//! Any virt-api replica may renew; writes carry the resourceVersion they read, so two
//! replicas racing cannot both win, and the loser reads what the winner wrote.

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use base64::Engine;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use kube::api::{Api, ObjectMeta, PostParams};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

pub const CA_SECRET: &str = "kubevirt-ca";
pub const CERT_SECRET: &str = "kubevirt-virt-api-certs";
/// virt-handler's serving certificate and the bundle it checks virt-api's client
/// certificate against (virt-handler reads only this Secret, never the CA's key).
pub const HANDLER_CERT_SECRET: &str = "kubevirt-virt-handler-certs";
/// The name virt-handler's certificate is issued for; virt-api connects with it as the
/// TLS server name whatever the node's address.
pub const HANDLER_SERVER_NAME: &str = "virt-handler";
const TLS_CRT: &str = "tls.crt";
const TLS_KEY: &str = "tls.key";
/// In the CA Secret: every CA certificate clients should trust (PEM, newest first).
const CA_BUNDLE: &str = "ca-bundle";
/// In a certificate Secret: the CA certificate that signed it.
const SIGNED_BY: &str = "ca.crt";

/// How long certificates live (upstream KubeVirt's defaults: CA 168 h, certificates 24 h).
#[derive(Debug, Clone, Copy)]
pub struct Lifetimes {
    pub ca: Duration,
    pub cert: Duration,
}

impl Default for Lifetimes {
    fn default() -> Self {
        Lifetimes {
            ca: Duration::from_secs(7 * 24 * 3600),
            cert: Duration::from_secs(24 * 3600),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("Secret {name}: {source}")]
    Api {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("generating a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("Secret {name} holds an unreadable {key}: {why}")]
    Malformed {
        name: String,
        key: &'static str,
        why: String,
    },
    #[error("loading the serving certificate: {0}")]
    Tls(String),
}

/// The PKI as read from (or written to) the Secrets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pki {
    /// PEM: the CA certificates clients trust (the webhooks' and APIService's `caBundle`).
    pub ca_bundle: String,
    pub cert_pem: String,
    pub key_pem: String,
}

fn data(secret: &Secret, key: &'static str) -> Option<String> {
    secret
        .data
        .as_ref()?
        .get(key)
        .and_then(|b| String::from_utf8(b.0.clone()).ok())
}

/// `not_before` and `not_after` of the first certificate in `pem`.
fn validity(pem: &str) -> Option<(SystemTime, SystemTime)> {
    let (_, parsed) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).ok()?;
    let cert = parsed.parse_x509().ok()?;
    let v = cert.validity();
    let at = |t: x509_parser::time::ASN1Time| -> Option<SystemTime> {
        Some(SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(t.timestamp()).ok()?))
    };
    Some((at(v.not_before)?, at(v.not_after)?))
}

/// Whether a certificate is missing, unreadable, expired, or past 80 % of its life.
pub fn needs_renewal(pem: Option<&str>, now: SystemTime) -> bool {
    let Some((from, until)) = pem.and_then(validity) else {
        return true;
    };
    let life = until.duration_since(from).unwrap_or_default();
    let renew_at = from + life.mul_f64(0.8);
    now >= renew_at || now >= until
}

fn params_valid_for(life: Duration) -> Result<CertificateParams, rcgen::Error> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    // A minute of slack for clocks a little behind ours.
    let now = SystemTime::now() - Duration::from_secs(60);
    p.not_before = now.into();
    p.not_after = (now + life).into();
    Ok(p)
}

fn new_ca(life: Duration) -> Result<(String, String), rcgen::Error> {
    let key = KeyPair::generate()?;
    let mut p = params_valid_for(life)?;
    p.distinguished_name = rcgen::DistinguishedName::new();
    let stamp = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    p.distinguished_name
        .push(DnType::CommonName, format!("kubevirt.io@{stamp}"));
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = p.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn new_leaf_cert(
    ca_pem: &str,
    ca_key_pem: &str,
    dns_names: &[String],
    usages: &[ExtendedKeyUsagePurpose],
    life: Duration,
) -> Result<(String, String), rcgen::Error> {
    let issuer = Issuer::from_ca_cert_pem(ca_pem, KeyPair::from_pem(ca_key_pem)?)?;
    let key = KeyPair::generate()?;
    let mut p = params_valid_for(life)?;
    p.subject_alt_names = CertificateParams::new(dns_names.to_vec())?.subject_alt_names;
    p.distinguished_name = rcgen::DistinguishedName::new();
    if let Some(first) = dns_names.first() {
        p.distinguished_name
            .push(DnType::CommonName, first.as_str());
    }
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    p.extended_key_usages = usages.to_vec();
    let cert = p.signed_by(&key, &issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Splits a PEM bundle into its certificates (each as PEM).
fn pem_certs(bundle: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in bundle.lines() {
        cur.push_str(line);
        cur.push('\n');
        if line.starts_with("-----END") {
            out.push(std::mem::take(&mut cur));
        }
    }
    out
}

fn secret(name: &str, ns: &str, entries: &[(&str, &str)]) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(ns.into()),
            labels: Some(
                [(
                    crate::manifests::PART_OF.0.to_string(),
                    crate::manifests::PART_OF.1.to_string(),
                )]
                .into(),
            ),
            ..Default::default()
        },
        type_: Some("kubernetes.io/tls".into()),
        data: Some(
            entries
                .iter()
                .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                .collect(),
        ),
        ..Default::default()
    }
}

/// Writes `new` over `old` (same resourceVersion) or creates it. `Ok(false)` when another
/// writer got there first.
async fn write(
    api: &Api<Secret>,
    old: Option<&Secret>,
    mut new: Secret,
) -> Result<bool, CertError> {
    let name = new.metadata.name.clone().unwrap_or_default();
    let result = match old {
        Some(old) => {
            new.metadata.resource_version = old.metadata.resource_version.clone();
            api.replace(&name, &PostParams::default(), &new).await
        }
        None => api.create(&PostParams::default(), &new).await,
    };
    match result {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(source) => Err(CertError::Api { name, source }),
    }
}

/// Reads the PKI, creating or renewing what needs it, and returns it. Renewal of the CA
/// keeps the previous CA in the bundle until it expires.
pub async fn reconcile(
    client: &kube::Client,
    ns: &str,
    dns_names: &[String],
    life: Lifetimes,
) -> Result<Pki, CertError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let get = |name: &'static str| {
        let api = api.clone();
        async move {
            api.get_opt(name).await.map_err(|source| CertError::Api {
                name: name.into(),
                source,
            })
        }
    };
    // A lost race is retried with what the winner wrote; a handful of rounds is plenty.
    for _ in 0..5 {
        let now = SystemTime::now();
        let ca_secret = get(CA_SECRET).await?;
        let ca_cert = ca_secret.as_ref().and_then(|s| data(s, TLS_CRT));
        if needs_renewal(ca_cert.as_deref(), now) {
            let (cert, key) = new_ca(life.ca)?;
            // The old CA stays trusted while it is valid: certificates it signed are still
            // being served by replicas that have not yet reloaded.
            let mut bundle = cert.clone();
            if let Some(old) = ca_secret.as_ref().and_then(|s| data(s, CA_BUNDLE)) {
                for c in pem_certs(&old) {
                    if validity(&c).is_some_and(|(_, until)| until > now) {
                        bundle.push_str(&c);
                    }
                }
            }
            let new = secret(
                CA_SECRET,
                ns,
                &[(TLS_CRT, &cert), (TLS_KEY, &key), (CA_BUNDLE, &bundle)],
            );
            write(&api, ca_secret.as_ref(), new).await?;
            tracing::info!(ns, "issued a new CA");
            continue;
        }
        let ca_secret = ca_secret.unwrap_or_default();
        let (Some(ca_cert), Some(ca_key)) = (ca_cert, data(&ca_secret, TLS_KEY)) else {
            return Err(CertError::Malformed {
                name: CA_SECRET.into(),
                key: TLS_KEY,
                why: "missing".into(),
            });
        };
        let bundle = data(&ca_secret, CA_BUNDLE).unwrap_or_else(|| ca_cert.clone());

        let issuing = Issuing {
            ca_cert: &ca_cert,
            ca_key: &ca_key,
            bundle: &bundle,
            life: life.cert,
            now,
        };
        // virt-api's certificate serves its webhooks and API, and is its client
        // certificate towards virt-handler.
        let Some((cert_pem, key_pem)) = ensure_leaf(
            &api,
            ns,
            CERT_SECRET,
            dns_names,
            &[
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            &issuing,
        )
        .await?
        else {
            continue;
        };
        // virt-handler's certificate serves its node endpoint, and is its client
        // certificate towards another node's virt-handler (a live migration's streams).
        if ensure_leaf(
            &api,
            ns,
            HANDLER_CERT_SECRET,
            &[HANDLER_SERVER_NAME.to_string()],
            &[
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            &issuing,
        )
        .await?
        .is_none()
        {
            continue;
        }
        return Ok(Pki {
            ca_bundle: bundle,
            cert_pem,
            key_pem,
        });
    }
    Err(CertError::Tls(
        "the certificate Secrets kept changing under us; retrying later".into(),
    ))
}

/// What a leaf certificate is issued with.
struct Issuing<'a> {
    ca_cert: &'a str,
    ca_key: &'a str,
    bundle: &'a str,
    life: Duration,
    now: SystemTime,
}

/// The certificate and key in Secret `name` when they are current (signed by the current
/// CA, for `names`, not due for renewal) and the Secret holds the current bundle; else
/// writes a fresh Secret and returns `None` (the caller reads again).
async fn ensure_leaf(
    api: &Api<Secret>,
    ns: &str,
    name: &'static str,
    names: &[String],
    usages: &[ExtendedKeyUsagePurpose],
    how: &Issuing<'_>,
) -> Result<Option<(String, String)>, CertError> {
    let current = api.get_opt(name).await.map_err(|source| CertError::Api {
        name: name.into(),
        source,
    })?;
    let field = |k| current.as_ref().and_then(|s| data(s, k));
    let (cert, key) = (field(TLS_CRT), field(TLS_KEY));
    let fresh = !needs_renewal(cert.as_deref(), how.now)
        && field(SIGNED_BY).as_deref() == Some(how.ca_cert)
        && cert
            .as_deref()
            .is_some_and(|c| covers_names(c, names) && has_usages(c, usages))
        && key.is_some();
    let (cert, key) = match (fresh, cert, key) {
        (true, Some(cert), Some(key)) => {
            if field(CA_BUNDLE).as_deref() == Some(how.bundle) {
                return Ok(Some((cert, key)));
            }
            (cert, key)
        }
        _ => {
            tracing::info!(ns, secret = name, "issuing a new certificate");
            new_leaf_cert(how.ca_cert, how.ca_key, names, usages, how.life)?
        }
    };
    let new = secret(
        name,
        ns,
        &[
            (TLS_CRT, &cert),
            (TLS_KEY, &key),
            (SIGNED_BY, how.ca_cert),
            (CA_BUNDLE, how.bundle),
        ],
    );
    write(api, current.as_ref(), new).await?;
    Ok(None)
}

/// Whether the certificate's DNS names include every one of `names`.
fn covers_names(pem: &str, names: &[String]) -> bool {
    let Ok((_, parsed)) = x509_parser::pem::parse_x509_pem(pem.as_bytes()) else {
        return false;
    };
    let Ok(cert) = parsed.parse_x509() else {
        return false;
    };
    let have: Vec<String> = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|g| match g {
                    x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    names.iter().all(|n| have.contains(n))
}

/// Whether the certificate allows every one of `usages` (a certificate of an older version
/// may lack one it needs now).
fn has_usages(pem: &str, usages: &[ExtendedKeyUsagePurpose]) -> bool {
    let Ok((_, parsed)) = x509_parser::pem::parse_x509_pem(pem.as_bytes()) else {
        return false;
    };
    let Ok(cert) = parsed.parse_x509() else {
        return false;
    };
    let Ok(Some(eku)) = cert.extended_key_usage() else {
        return usages.is_empty();
    };
    usages.iter().all(|u| match u {
        ExtendedKeyUsagePurpose::ServerAuth => eku.value.server_auth,
        ExtendedKeyUsagePurpose::ClientAuth => eku.value.client_auth,
        _ => false,
    })
}

/// The serving certificate rustls hands out, swapped in place when it is renewed.
#[derive(Debug)]
pub struct ServingCert {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ServingCert {
    pub fn new(pki: &Pki) -> Result<Self, CertError> {
        Ok(ServingCert {
            current: RwLock::new(certified_key(pki)?),
        })
    }

    pub fn update(&self, pki: &Pki) -> Result<(), CertError> {
        let key = certified_key(pki)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = key;
        Ok(())
    }
}

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }
}

fn certified_key(pki: &Pki) -> Result<Arc<CertifiedKey>, CertError> {
    let tls = |e: &dyn std::fmt::Display| CertError::Tls(e.to_string());
    let certs = rustls_pemfile::certs(&mut pki.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls(&e))?;
    let key = rustls_pemfile::private_key(&mut pki.key_pem.as_bytes())
        .map_err(|e| tls(&e))?
        .ok_or_else(|| CertError::Tls("no private key".into()))?;
    let provider = rustls::crypto::ring::default_provider();
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| tls(&e))?;
    Ok(Arc::new(CertifiedKey::new(certs, signing)))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_err(e: impl std::fmt::Display) -> CertError {
    CertError::Tls(e.to_string())
}

/// The certificates of a PEM bundle as a root store.
fn root_store(bundle: &str) -> Result<Arc<rustls::RootCertStore>, CertError> {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut bundle.as_bytes()) {
        roots.add(c.map_err(tls_err)?).map_err(tls_err)?;
    }
    Ok(Arc::new(roots))
}

/// virt-api's server configuration (HTTP/2 and HTTP/1.1) serving `cert`. With
/// `client_roots` (the cluster's front-proxy CA), a client certificate is verified when
/// one is offered: kube-apiserver's aggregator proxies with one.
pub fn server_config(
    cert: Arc<ServingCert>,
    client_roots: Option<&str>,
) -> Result<Arc<rustls::ServerConfig>, CertError> {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(tls_err)?;
    let mut cfg = match client_roots {
        Some(pem) => {
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                root_store(pem)?,
                provider(),
            )
            .allow_unauthenticated()
            .build()
            .map_err(tls_err)?;
            builder
                .with_client_cert_verifier(verifier)
                .with_cert_resolver(cert)
        }
        None => builder.with_no_client_auth().with_cert_resolver(cert),
    };
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// A server configuration with a fresh self-signed certificate for `name` (upstream's
/// components serve their metrics so; Prometheus is told to skip the check).
pub fn self_signed_server_config(name: &str) -> Result<Arc<rustls::ServerConfig>, CertError> {
    let life = Lifetimes::default();
    let (ca_pem, ca_key) = new_ca(life.ca)?;
    let (cert_pem, key_pem) = new_leaf_cert(
        &ca_pem,
        &ca_key,
        &[name.to_string()],
        &[ExtendedKeyUsagePurpose::ServerAuth],
        life.ca,
    )?;
    let pki = Pki {
        ca_bundle: ca_pem,
        cert_pem,
        key_pem,
    };
    let mut cfg = server_config(Arc::new(ServingCert::new(&pki)?), None)?;
    // HTTP/1.1 only: scrapers need nothing more.
    if let Some(c) = Arc::get_mut(&mut cfg) {
        c.alpn_protocols = vec![b"http/1.1".to_vec()];
    }
    Ok(cfg)
}

/// virt-handler's server configuration: its certificate, and a client certificate
/// signed by the bundle is required (only virt-api holds one).
pub fn handler_server_config(pki: &Pki) -> Result<Arc<rustls::ServerConfig>, CertError> {
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        root_store(&pki.ca_bundle)?,
        provider(),
    )
    .build()
    .map_err(tls_err)?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(tls_err)?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(ServingCert::new(pki)?));
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// A client configuration towards virt-handler: trusts the bundle, presents `pki`'s
/// certificate (virt-api's, or another node's virt-handler's).
pub fn handler_client_config(pki: &Pki) -> Result<Arc<rustls::ClientConfig>, CertError> {
    let certs = rustls_pemfile::certs(&mut pki.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(tls_err)?;
    let key = rustls_pemfile::private_key(&mut pki.key_pem.as_bytes())
        .map_err(tls_err)?
        .ok_or_else(|| CertError::Tls("no private key".into()))?;
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(tls_err)?
        .with_root_certificates(root_store(&pki.ca_bundle)?)
        .with_client_auth_cert(certs, key)
        .map_err(tls_err)?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// virt-handler's certificate, key and the bundle, as virt-api last wrote them.
pub async fn read_handler_pki(client: &kube::Client, ns: &str) -> Result<Option<Pki>, CertError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let Some(s) = api
        .get_opt(HANDLER_CERT_SECRET)
        .await
        .map_err(|source| CertError::Api {
            name: HANDLER_CERT_SECRET.into(),
            source,
        })?
    else {
        return Ok(None);
    };
    Ok(
        match (data(&s, TLS_CRT), data(&s, TLS_KEY), data(&s, CA_BUNDLE)) {
            (Some(cert_pem), Some(key_pem), Some(ca_bundle)) => Some(Pki {
                ca_bundle,
                cert_pem,
                key_pem,
            }),
            _ => None,
        },
    )
}

/// The `caBundle` value of a webhook or APIService: the bundle, base64.
pub fn ca_bundle_field(pki: &Pki) -> String {
    base64::engine::general_purpose::STANDARD.encode(pki.ca_bundle.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_at_eighty_percent_of_life() {
        let (ca, key) = new_ca(Duration::from_secs(1000)).unwrap();
        let (from, until) = validity(&ca).unwrap();
        assert!(!needs_renewal(Some(&ca), from + Duration::from_secs(100)));
        // params_valid_for starts a minute early: 80 % of 1000 s after that.
        assert!(needs_renewal(Some(&ca), from + Duration::from_secs(801)));
        assert!(needs_renewal(Some(&ca), until));
        assert!(needs_renewal(None, from));
        assert!(needs_renewal(Some("not a certificate"), from));

        let names = vec!["virt-api.kubevirt.svc".to_string()];
        let (cert, _) = new_leaf_cert(
            &ca,
            &key,
            &names,
            &[ExtendedKeyUsagePurpose::ServerAuth],
            Duration::from_secs(100),
        )
        .unwrap();
        assert!(covers_names(&cert, &names));
        assert!(!covers_names(&cert, &["other.svc".to_string()]));
        // A server-only certificate is re-issued where it must be a client's too.
        assert!(has_usages(&cert, &[ExtendedKeyUsagePurpose::ServerAuth]));
        let both = [
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        assert!(!has_usages(&cert, &both));
        let (cert2, _) = new_leaf_cert(&ca, &key, &names, &both, Duration::from_secs(100)).unwrap();
        assert!(has_usages(&cert2, &both));
        assert_eq!(pem_certs(&format!("{ca}{cert}")).len(), 2);
    }
}
