//! The data directory's credentials: a self-signed CA (its key kept to sign client
//! certificates), a serving certificate for 127.0.0.1/localhost/::1, the service-account
//! token signing key, two bearer tokens, and the kubeconfig files.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine;

/// Credential setup failures.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("generating certificates: {source}")]
    Generate { source: rcgen::Error },
    #[error("loading TLS material from {path}: {detail}")]
    Load { path: PathBuf, detail: String },
}

pub struct Credentials {
    pub ca_pem: String,
    pub server_config: Arc<rustls::ServerConfig>,
    pub admin_token: String,
    pub readonly_token: String,
    /// PKCS#8 PEM of the ECDSA P-256 key that signs service-account tokens.
    pub sa_key_pem: String,
}

/// Files of the data directory holding credentials (all 0600).
const CA_CERT: &str = "ca.crt";
const CA_KEY: &str = "ca.key";
const SERVING_CERT: &str = "tls.crt";
const SERVING_KEY: &str = "tls.key";
const SA_KEY: &str = "sa.key";
const TOKENS: &str = "tokens";

/// The file of the static tokens (`admin=...`, `readonly=...`).
pub fn tokens_file(dir: &Path) -> PathBuf {
    dir.join(TOKENS)
}

fn write_private(path: &Path, contents: &str) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let tmp = path.with_extension("tmp");
    let res = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        // `mode` applies only when the file is created; a leftover temp file may be wider.
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        f.write_all(contents.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    res.map_err(|source| TlsError::Write {
        path: path.to_path_buf(),
        source,
    })
}

fn read(path: &Path) -> Result<String, TlsError> {
    std::fs::read_to_string(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn token() -> String {
    use rand::RngCore;
    let mut b = [0u8; 24];
    rand::rng().fill_bytes(&mut b);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

fn generate(dir: &Path) -> Result<(), TlsError> {
    use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, Issuer, KeyPair, SanType};
    let gen = |source| TlsError::Generate { source };
    let ca_key = KeyPair::generate().map_err(gen)?;
    let ca_params = ca_params().map_err(gen)?;
    let ca_cert = ca_params.self_signed(&ca_key).map_err(gen)?;
    let issuer = Issuer::new(ca_params, ca_key);

    let srv_key = KeyPair::generate().map_err(gen)?;
    let mut srv = CertificateParams::new(vec!["localhost".to_string(), "kubevirt-rs".to_string()])
        .map_err(gen)?;
    srv.subject_alt_names
        .push(SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()));
    srv.subject_alt_names
        .push(SanType::IpAddress(std::net::Ipv6Addr::LOCALHOST.into()));
    srv.distinguished_name
        .push(DnType::CommonName, "kubevirt-rs-apiserver");
    srv.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    srv.not_after = rcgen::date_time_ymd(2046, 1, 1);
    let srv_cert = srv.signed_by(&srv_key, &issuer).map_err(gen)?;

    write_private(&dir.join(CA_KEY), &issuer.key().serialize_pem())?;
    write_private(&dir.join(CA_CERT), &ca_cert.pem())?;
    write_private(&dir.join(SERVING_CERT), &srv_cert.pem())?;
    write_private(&dir.join(SERVING_KEY), &srv_key.serialize_pem())?;
    Ok(())
}

fn ca_params() -> Result<rcgen::CertificateParams, rcgen::Error> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyUsagePurpose};
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "kubevirt-rs-ca");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca_params.not_after = rcgen::date_time_ymd(2046, 1, 1);
    Ok(ca_params)
}

/// A client certificate and its key (PEM), signed by the data directory's CA, for user
/// `user` in `groups`: kube-apiserver's x509 authenticator reads the subject's CommonName
/// as the user name and each Organization as a group.
pub fn issue_client_cert(
    dir: &Path,
    user: &str,
    groups: &[String],
    valid_for: std::time::Duration,
) -> Result<(String, String), TlsError> {
    use rcgen::{DnType, ExtendedKeyUsagePurpose, Issuer, KeyPair, KeyUsagePurpose};
    let gen = |source| TlsError::Generate { source };
    let ca_key_pem = read(&dir.join(CA_KEY))?;
    let ca_key = KeyPair::from_pem(&ca_key_pem).map_err(gen)?;
    let issuer = Issuer::new(ca_params().map_err(gen)?, ca_key);
    let key = KeyPair::generate().map_err(gen)?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(gen)?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    for g in groups {
        params
            .distinguished_name
            .push(DnType::OrganizationName, g.as_str());
    }
    params.distinguished_name.push(DnType::CommonName, user);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    // Valid from the start of today (UTC): a client clock a little behind still accepts it.
    let today = {
        use chrono::Datelike;
        let d = chrono::Utc::now().date_naive();
        rcgen::date_time_ymd(d.year(), d.month() as u8, d.day() as u8)
    };
    params.not_before = today;
    params.not_after = today + valid_for + std::time::Duration::from_secs(86_400);
    let cert = params.signed_by(&key, &issuer).map_err(gen)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Loads the credentials in `dir`, creating whatever is missing.
pub fn load_or_create(dir: &Path) -> Result<Credentials, TlsError> {
    // Data dirs of older versions lack the CA key (client certificates need it): their CA
    // is replaced, and the kubeconfig files, rewritten at every start, follow.
    if ![CA_CERT, CA_KEY, SERVING_CERT, SERVING_KEY]
        .iter()
        .all(|f| dir.join(f).exists())
    {
        generate(dir)?;
    }
    if !dir.join(SA_KEY).exists() {
        let key = rcgen::KeyPair::generate().map_err(|source| TlsError::Generate { source })?;
        write_private(&dir.join(SA_KEY), &key.serialize_pem())?;
    }
    let tokens = dir.join(TOKENS);
    if !tokens.exists() {
        write_private(
            &tokens,
            &format!("admin={}\nreadonly={}\n", token(), token()),
        )?;
    }
    // Secrets written by older versions (or copied in) may be readable by others.
    for secret in [
        &tokens,
        &dir.join(SERVING_KEY),
        &dir.join(CA_KEY),
        &dir.join(SA_KEY),
    ] {
        crate::files::tighten(secret, 0o600).map_err(|source| TlsError::Write {
            path: secret.to_path_buf(),
            source,
        })?;
    }
    let text = read(&tokens)?;
    let get = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .map(str::to_string)
            .ok_or_else(|| TlsError::Load {
                path: tokens.clone(),
                detail: format!("no {name} token"),
            })
    };
    let admin_token = get("admin")?;
    let readonly_token = get("readonly")?;
    let ca_pem = read(&dir.join(CA_CERT))?;
    let sa_key_pem = read(&dir.join(SA_KEY))?;
    let load_err = |detail: String| TlsError::Load {
        path: dir.to_path_buf(),
        detail,
    };
    let (certs, key) = serving_identity(dir)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    // Client certificates are optional (tokens are the other way in); one that is
    // presented must chain to our CA.
    let mut roots = rustls::RootCertStore::empty();
    for ca in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
        let ca = ca.map_err(|e| load_err(e.to_string()))?;
        roots.add(ca).map_err(|e| load_err(e.to_string()))?;
    }
    let client_verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()
    .map_err(|e| load_err(e.to_string()))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| load_err(e.to_string()))?
        .with_client_cert_verifier(client_verifier)
        .with_single_cert(certs, key)
        .map_err(|e| load_err(e.to_string()))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Credentials {
        ca_pem,
        server_config: Arc::new(cfg),
        admin_token,
        readonly_token,
        sa_key_pem,
    })
}

/// How a kubeconfig's user proves who it is.
pub enum ClientAuth<'a> {
    Token(&'a str),
    /// PEM certificate and key.
    Certificate {
        cert: &'a str,
        key: &'a str,
    },
}

/// A kubeconfig for `https://addr` with a bearer token.
pub fn kubeconfig(server: &str, ca_pem: &str, user: &str, token: &str) -> String {
    kubeconfig_with(server, ca_pem, user, ClientAuth::Token(token))
}

/// The API server address a data directory's admin kubeconfig points at.
pub fn kubeconfig_server(dir: &Path) -> Result<String, TlsError> {
    let path = dir.join("kubeconfig");
    let text = read(&path)?;
    text.lines()
        .find_map(|l| l.trim().strip_prefix("server: "))
        .map(str::to_string)
        .ok_or_else(|| TlsError::Load {
            path,
            detail: "no server address".into(),
        })
}

/// The data directory's CA certificate (PEM).
pub fn ca_pem(dir: &Path) -> Result<String, TlsError> {
    read(&dir.join(CA_CERT))
}

/// A kubeconfig for `https://addr` with the given client credentials.
pub fn kubeconfig_with(server: &str, ca_pem: &str, user: &str, auth: ClientAuth) -> String {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let ca = b64(ca_pem);
    let credentials = match auth {
        ClientAuth::Token(token) => format!("token: {token}"),
        ClientAuth::Certificate { cert, key } => format!(
            "client-certificate-data: {}\n    client-key-data: {}",
            b64(cert),
            b64(key)
        ),
    };
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: kubevirt-rs
  cluster:
    server: {server}
    certificate-authority-data: {ca}
users:
- name: {user}
  user:
    {credentials}
contexts:
- name: kubevirt-rs
  context:
    cluster: kubevirt-rs
    user: {user}
    namespace: default
current-context: kubevirt-rs
preferences: {{}}
"
    )
}

pub fn write_kubeconfig(path: &Path, contents: &str) -> Result<(), TlsError> {
    write_private(path, contents)
}

/// A kubeconfig for `user` in `groups` with a client certificate from the data
/// directory's CA, pointing at the server the admin kubeconfig names. The server need
/// not run; the certificate is valid for `valid_for`.
pub fn user_kubeconfig(
    dir: &Path,
    user: &str,
    groups: &[String],
    valid_for: std::time::Duration,
) -> Result<String, TlsError> {
    let server = kubeconfig_server(dir)?;
    let ca = ca_pem(dir)?;
    let (cert, key) = issue_client_cert(dir, user, groups, valid_for)?;
    Ok(kubeconfig_with(
        &server,
        &ca,
        user,
        ClientAuth::Certificate {
            cert: &cert,
            key: &key,
        },
    ))
}

/// The API server's serving certificate chain and key, from the data directory.
fn serving_identity(
    dir: &Path,
) -> Result<
    (
        Vec<rustls::pki_types::CertificateDer<'static>>,
        rustls::pki_types::PrivateKeyDer<'static>,
    ),
    TlsError,
> {
    let cert_pem = read(&dir.join(SERVING_CERT))?;
    let key_pem = read(&dir.join(SERVING_KEY))?;
    let load_err = |detail: String| TlsError::Load {
        path: dir.to_path_buf(),
        detail,
    };
    let certs: Vec<_> = rustls_pemfile::certs(&mut cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| load_err(e.to_string()))?;
    let key = rustls_pemfile::private_key(&mut key_pem.as_bytes())
        .map_err(|e| load_err(e.to_string()))?
        .ok_or_else(|| load_err("no private key in tls.key".into()))?;
    Ok((certs, key))
}

/// A TLS configuration for another listener of this server (the web console) with the
/// API server's own certificate: same names, same CA, and no client certificate asked for
/// (a browser would offer the user's certificates).
pub fn serving_config_without_client_auth(
    dir: &Path,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let (certs, key) = serving_identity(dir)?;
    let load_err = |detail: String| TlsError::Load {
        path: dir.to_path_buf(),
        detail,
    };
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| load_err(e.to_string()))?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| load_err(e.to_string()))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}
