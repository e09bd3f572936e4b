//! `virtctl image-upload dv|pvc NAME --size --image-path`: upstream's flow. Create the
//! DataVolume (or a claim annotated for upload), wait until it is ready for the upload, ask
//! for an upload token (`upload.cdi.kubevirt.io` UploadTokenRequest), then stream the file to
//! the upload proxy with a progress bar; the proxy answers once the image is in the volume.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use futures::StreamExt;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::api::{Api, PostParams};
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use serde_json::{json, Value};
use tokio::net::TcpStream;

use crate::client::Session;

/// The flags of `image-upload`, as upstream names them.
#[derive(clap::Args, Debug)]
pub struct UploadArgs {
    /// `dv` (a DataVolume, the default) or `pvc`.
    #[arg(value_parser = ["dv", "pvc"])]
    pub kind: String,
    pub name: String,
    /// Size of the volume to create (e.g. 2Gi).
    #[arg(long)]
    pub size: Option<String>,
    /// The local image to upload.
    #[arg(long)]
    pub image_path: PathBuf,
    /// Do not verify the upload proxy's certificate.
    #[arg(long)]
    pub insecure: bool,
    /// The upload proxy; by default the API server of the kubeconfig, which serves it.
    #[arg(long)]
    pub uploadproxy_url: Option<String>,
    #[arg(long)]
    pub storage_class: Option<String>,
    #[arg(long)]
    pub access_mode: Option<String>,
    /// `block` or `filesystem`.
    #[arg(long)]
    pub volume_mode: Option<String>,
    /// Upload into an existing DataVolume or claim instead of creating one.
    #[arg(long)]
    pub no_create: bool,
    /// Seconds to wait for the volume to be ready for the upload.
    #[arg(long, default_value_t = 300)]
    pub wait_secs: u64,
}

fn data_volumes(s: &Session) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("cdi.kubevirt.io", "v1beta1", "DataVolume");
    Api::namespaced_with(s.client.clone(), &s.namespace, &ApiResource::from_gvk(&gvk))
}

fn storage_spec(a: &UploadArgs, size: &str) -> Value {
    let mut spec = json!({"resources": {"requests": {"storage": size}}});
    if let Some(c) = &a.storage_class {
        spec["storageClassName"] = json!(c);
    }
    if let Some(m) = &a.access_mode {
        spec["accessModes"] = json!([m]);
    }
    if let Some(m) = &a.volume_mode {
        spec["volumeMode"] = json!(match m.as_str() {
            "block" => "Block",
            _ => "Filesystem",
        });
    }
    spec
}

async fn create(s: &Session, a: &UploadArgs) -> Result<()> {
    let size = a
        .size
        .as_deref()
        .ok_or_else(|| anyhow!("when creating a resource, the size must be specified"))?;
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(s.client.clone(), &s.namespace);
    if claims.get_opt(&a.name).await?.is_some() {
        bail!("PVC {}/{} already exists", s.namespace, a.name);
    }
    println!("PVC {}/{} not found ", s.namespace, a.name);
    if a.kind == "dv" {
        let dv: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume",
            "metadata": {"name": a.name, "namespace": s.namespace},
            "spec": {"source": {"upload": {}}, "storage": storage_spec(a, size)},
        }))?;
        data_volumes(s).create(&PostParams::default(), &dv).await?;
        println!("DataVolume {}/{} created", s.namespace, a.name);
    } else {
        let mut spec = storage_spec(a, size);
        spec["accessModes"]
            .as_array()
            .is_none()
            .then(|| spec["accessModes"] = json!(["ReadWriteOnce"]));
        let pvc: PersistentVolumeClaim = serde_json::from_value(json!({
            "metadata": {"name": a.name, "namespace": s.namespace,
                "annotations": {"cdi.kubevirt.io/storage.upload.target": ""}},
            "spec": spec,
        }))?;
        claims.create(&PostParams::default(), &pvc).await?;
        println!("PVC {}/{} created", s.namespace, a.name);
    }
    Ok(())
}

/// Waits until the claim is bound and (for a DataVolume) the DataVolume is `UploadReady`.
async fn wait_ready(s: &Session, a: &UploadArgs) -> Result<()> {
    println!("Waiting for PVC {} upload pod to be ready...", a.name);
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(s.client.clone(), &s.namespace);
    let deadline = Instant::now() + Duration::from_secs(a.wait_secs);
    loop {
        let bound = claims
            .get_opt(&a.name)
            .await?
            .and_then(|c| c.status?.phase)
            .is_some_and(|p| p == "Bound");
        let ready = match a.kind.as_str() {
            "dv" => data_volumes(s)
                .get_opt(&a.name)
                .await?
                .and_then(|d| {
                    d.data
                        .pointer("/status/phase")
                        .and_then(Value::as_str)
                        .map(str::to_string)
                })
                .is_some_and(|p| p == "UploadReady"),
            _ => true,
        };
        if bound && ready {
            println!("Pod now ready");
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "timed out waiting for {} to be ready for the upload",
                a.name
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn token(s: &Session, name: &str) -> Result<String> {
    let body = json!({
        "apiVersion": "upload.cdi.kubevirt.io/v1beta1", "kind": "UploadTokenRequest",
        "metadata": {"name": name, "namespace": s.namespace},
        "spec": {"pvcName": name},
    });
    let req = http::Request::post(format!(
        "/apis/upload.cdi.kubevirt.io/v1beta1/namespaces/{}/uploadtokenrequests",
        s.namespace
    ))
    .header("content-type", "application/json")
    .body(serde_json::to_vec(&body)?)?;
    let answer: Value = s.client.request(req).await.map_err(|e| match e {
        kube::Error::Api(st) => anyhow!("{}", st.message),
        other => anyhow!(other),
    })?;
    answer
        .pointer("/status/token")
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| anyhow!("the upload token request returned no token"))
}

/// Accepts any certificate (`--insecure`).
#[derive(Debug)]
pub(crate) struct AnyCert(pub(crate) Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> std::result::Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn tls(s: &Session, insecure: bool) -> Result<tokio_rustls::TlsConnector> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let config = if insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
            .with_no_client_auth()
    } else {
        let mut roots = rustls::RootCertStore::empty();
        for der in s.config.root_cert.iter().flatten() {
            roots.add(rustls::pki_types::CertificateDer::from(der.clone()))?;
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// Streams the file to `<proxy>/v1beta1/upload` with the token, showing progress.
async fn send(s: &Session, a: &UploadArgs, token: &str) -> Result<()> {
    let proxy = match &a.uploadproxy_url {
        Some(u) => u.clone(),
        None => s.config.cluster_url.to_string(),
    };
    let url: http::Uri = proxy
        .parse()
        .with_context(|| format!("upload proxy URL {proxy}"))?;
    let host = url
        .host()
        .ok_or_else(|| anyhow!("upload proxy URL {proxy} has no host"))?
        .trim_matches(|c| c == '[' || c == ']')
        .to_string();
    let port = url.port_u16().unwrap_or(443);
    let target = format!("https://{host}:{port}/v1beta1/upload");
    println!("Uploading data to {target}\n");
    let file = tokio::fs::File::open(&a.image_path)
        .await
        .with_context(|| format!("opening {}", a.image_path.display()))?;
    let total = file.metadata().await?.len();
    let tcp = TcpStream::connect((host.as_str(), port))
        .await
        .with_context(|| format!("connecting to {host}:{port}"))?;
    let name = rustls::pki_types::ServerName::try_from(
        s.config
            .tls_server_name
            .clone()
            .filter(|_| a.uploadproxy_url.is_none())
            .unwrap_or(host.clone()),
    )?;
    let stream = tls(s, a.insecure)?
        .connect(name, tcp)
        .await
        .context("TLS handshake with the upload proxy")?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);

    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            " {bytes} / {total_bytes} [{wide_bar}] {percent}% {elapsed}",
        )?
        .progress_chars("=> "),
    );
    let progress = bar.clone();
    let chunks = tokio_util::io::ReaderStream::with_capacity(file, 1 << 20).map(move |chunk| {
        if let Ok(c) = &chunk {
            progress.inc(c.len() as u64);
        }
        chunk.map(hyper::body::Frame::data)
    });
    let body = http_body_util::StreamBody::new(chunks);
    let req = hyper::Request::post("/v1beta1/upload")
        .header(hyper::header::HOST, format!("{host}:{port}"))
        .header(hyper::header::AUTHORIZATION, format!("Bearer {token}"))
        .header(hyper::header::CONTENT_TYPE, "application/octet-stream")
        .header(hyper::header::CONTENT_LENGTH, total)
        .body(body)?;
    let resp = sender.send_request(req).await.context("uploading")?;
    bar.finish();
    println!("\nUploading data completed successfully, waiting for processing to complete, you can hit ctrl-c without interrupting the progress");
    let code = resp.status();
    let text = resp.into_body().collect().await?.to_bytes();
    if !code.is_success() {
        bail!(
            "unexpected return value {}, {}",
            code.as_u16(),
            String::from_utf8_lossy(&text).trim()
        );
    }
    Ok(())
}

/// Waits for the DataVolume to succeed after the upload.
async fn wait_processed(s: &Session, a: &UploadArgs) -> Result<()> {
    if a.kind != "dv" {
        return Ok(());
    }
    let deadline = Instant::now() + Duration::from_secs(a.wait_secs);
    loop {
        let phase = data_volumes(s).get_opt(&a.name).await?.and_then(|d| {
            d.data
                .pointer("/status/phase")
                .and_then(Value::as_str)
                .map(str::to_string)
        });
        if phase.as_deref() == Some("Succeeded") {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("timed out waiting for DataVolume {} to succeed", a.name);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

pub async fn run(s: &Session, a: &UploadArgs) -> Result<()> {
    if !a.no_create {
        create(s, a).await?;
    }
    wait_ready(s, a).await?;
    let token = token(s, &a.name).await?;
    send(s, a, &token).await?;
    wait_processed(s, a).await?;
    println!("Processing completed successfully");
    println!(
        "Uploading {} completed successfully",
        a.image_path.display()
    );
    Ok(())
}
