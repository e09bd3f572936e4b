//! The data directory's credentials: a self-signed CA, a serving certificate for
//! 127.0.0.1/localhost/::1, two bearer tokens, and the kubeconfig files.

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
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose, SanType,
    };
    let gen = |source| TlsError::Generate { source };
    let ca_key = KeyPair::generate().map_err(gen)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(gen)?;
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

    write_private(&dir.join("ca.crt"), &ca_cert.pem())?;
    write_private(&dir.join("tls.crt"), &srv_cert.pem())?;
    write_private(&dir.join("tls.key"), &srv_key.serialize_pem())?;
    Ok(())
}

/// Loads the credentials in `dir`, creating whatever is missing.
pub fn load_or_create(dir: &Path) -> Result<Credentials, TlsError> {
    if !(dir.join("ca.crt").exists()
        && dir.join("tls.crt").exists()
        && dir.join("tls.key").exists())
    {
        generate(dir)?;
    }
    let tokens = dir.join("tokens");
    if !tokens.exists() {
        write_private(
            &tokens,
            &format!("admin={}\nreadonly={}\n", token(), token()),
        )?;
    }
    // Secrets written by older versions (or copied in) may be readable by others.
    for secret in [&tokens, &dir.join("tls.key")] {
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
    let ca_pem = read(&dir.join("ca.crt"))?;
    let cert_pem = read(&dir.join("tls.crt"))?;
    let key_pem = read(&dir.join("tls.key"))?;
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
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| load_err(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| load_err(e.to_string()))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Credentials {
        ca_pem,
        server_config: Arc::new(cfg),
        admin_token,
        readonly_token,
    })
}

/// A kubeconfig for `https://addr` with a bearer token.
pub fn kubeconfig(server: &str, ca_pem: &str, user: &str, token: &str) -> String {
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
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
    token: {token}
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
