//! `virtctl vmexport create|delete|download NAME`: upstream's flags, flow and messages.
//! `create` makes a VirtualMachineExport of a claim (`--pvc`), a VM (`--vm`) or a VM
//! snapshot (`--snapshot`) with its own token Secret `secret-NAME`; `download` (creating the
//! export first, and deleting it after, when given a source) waits for it to be Ready, reads
//! the token and streams a volume from the export's external link to `--output` with a
//! progress bar, verifying the server with the CA in the export's status.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::{Secret, TypedLocalObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::ByteString;
use kube::api::{Api, DeleteParams, PostParams};
use kube::ResourceExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use kubevirt_api::export::{VirtualMachineExport, VirtualMachineExportSpec};

use crate::client::Session;

/// The flags of `vmexport`, as upstream names them.
#[derive(clap::Args, Debug)]
pub struct VmExportArgs {
    /// `create`, `delete` or `download`.
    #[arg(value_parser = ["create", "delete", "download"])]
    pub function: String,
    /// The VirtualMachineExport.
    pub name: String,
    /// Sets VirtualMachine as vmexport kind and specifies the vm name.
    #[arg(long)]
    pub vm: Option<String>,
    /// Sets VirtualMachineSnapshot as vmexport kind and specifies the snapshot name.
    #[arg(long)]
    pub snapshot: Option<String>,
    /// Sets PersistentVolumeClaim as vmexport kind and specifies the PVC name.
    #[arg(long)]
    pub pvc: Option<String>,
    /// Specifies the output path of the volume to be downloaded.
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Specifies the volume to be downloaded.
    #[arg(long)]
    pub volume: Option<String>,
    /// Used to specify the format of the downloaded image. There's two options: gzip
    /// (default) and raw.
    #[arg(long)]
    pub format: Option<String>,
    /// When used with the 'download' option, specifies that the http request should be
    /// insecure.
    #[arg(long)]
    pub insecure: bool,
    /// When used with the 'download' option, specifies that the vmexport object should
    /// always be retained after the download finishes.
    #[arg(long)]
    pub keep_vme: bool,
    /// When used with the 'download' option, specifies that the vmexport object should
    /// always be deleted after the download finishes.
    #[arg(long)]
    pub delete_vme: bool,
    /// The time after the export was created that it is eligible to be automatically
    /// deleted, defaults to 2 hours by the server side if not specified.
    #[arg(long)]
    pub ttl: Option<String>,
    /// Specify maximum wait for VM export object to be ready.
    #[arg(long)]
    pub readiness_timeout: Option<String>,
    /// When export server returns a transient error, we retry this number of times before
    /// giving up.
    #[arg(long, default_value_t = 0)]
    pub retry: u32,
    /// Instead of downloading a volume, retrieve the VM manifest.
    #[arg(long)]
    pub manifest: bool,
    /// Manifest output format, defaults to Yaml. Valid options are yaml or json.
    #[arg(long)]
    pub manifest_output_format: Option<String>,
}

const TOKEN_HEADER: &str = kubevirt_api::export::TOKEN_HEADER;

fn incompatible(flag: &str, function: &str) -> anyhow::Error {
    anyhow!("the '{flag}' flag is incompatible with '{function}'")
}

impl VmExportArgs {
    fn source(&self) -> Option<TypedLocalObjectReference> {
        let r = |group: Option<&str>, kind: &str, name: &str| TypedLocalObjectReference {
            api_group: group.map(str::to_string),
            kind: kind.into(),
            name: name.into(),
        };
        if let Some(vm) = &self.vm {
            return Some(r(Some("kubevirt.io"), "VirtualMachine", vm));
        }
        if let Some(s) = &self.snapshot {
            return Some(r(Some("snapshot.kubevirt.io"), "VirtualMachineSnapshot", s));
        }
        self.pvc
            .as_ref()
            .map(|p| r(Some(""), "PersistentVolumeClaim", p))
    }

    /// Upstream's flag checks, with its words.
    fn check(&self) -> Result<()> {
        let f = self.function.as_str();
        let download_only = [
            ("--output", self.output.is_some()),
            ("--volume", self.volume.is_some()),
            ("--insecure", self.insecure),
            ("--keep-vme", self.keep_vme),
            ("--delete-vme", self.delete_vme),
            ("--format", self.format.is_some()),
            ("--retry", self.retry != 0),
        ];
        match f {
            "create" => {
                if self.source().is_none() {
                    bail!("need to specify export kind when attempting to create a VirtualMachineExport [--pvc|--vm|--snapshot|--vmtemplate]");
                }
                if let Some((flag, _)) = download_only.iter().find(|(_, set)| *set) {
                    return Err(incompatible(flag, f));
                }
            }
            "delete" => {
                if self.source().is_some() {
                    bail!("should not specify export kind");
                }
                if let Some((flag, _)) = download_only.iter().find(|(_, set)| *set) {
                    return Err(incompatible(flag, f));
                }
                if self.readiness_timeout.is_some() {
                    return Err(incompatible("--readiness-timeout", f));
                }
            }
            _ => {
                if let Some(fmt) = &self.format {
                    if fmt != "gzip" && fmt != "raw" {
                        bail!("--format is not a valid value, acceptable values are gzip/raw");
                    }
                }
                if self.manifest {
                    if self.volume.is_some() {
                        return Err(incompatible("--volume", "--manifest"));
                    }
                    if self.pvc.is_some() {
                        bail!("cannot get manifest for PVC export");
                    }
                }
                if self.keep_vme && self.delete_vme {
                    return Err(incompatible("--keep-vme", "--delete-vme"));
                }
            }
        }
        Ok(())
    }
}

fn exports(s: &Session) -> Api<VirtualMachineExport> {
    Api::namespaced(s.client.clone(), &s.namespace)
}

/// Prints to standard error when the volume goes to standard output.
struct Out {
    to_stderr: bool,
}

impl Out {
    fn say(&self, msg: &str) {
        if self.to_stderr {
            eprintln!("{msg}");
        } else {
            println!("{msg}");
        }
    }
}

fn random_token() -> String {
    use rand::Rng;
    const ALPHANUMS: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut rng = rand::rng();
    (0..20)
        .map(|_| ALPHANUMS[rng.random_range(0..ALPHANUMS.len())] as char)
        .collect()
}

fn secret_name(export: &str) -> String {
    format!("secret-{export}")
}

/// Creates the export with its token Secret (owned by it). `Ok(false)`: it existed.
async fn create(s: &Session, a: &VmExportArgs, out: &Out) -> Result<bool> {
    let api = exports(s);
    if api.get_opt(&a.name).await?.is_some() {
        return Ok(false);
    }
    let source = a
        .source()
        .ok_or_else(|| anyhow!("need to specify export kind"))?;
    if let Some(ttl) = &a.ttl {
        kubevirt_api::snapshot::parse_go_duration(ttl).map_err(|e| anyhow!(e))?;
    }
    let mut export = VirtualMachineExport::new(
        &a.name,
        VirtualMachineExportSpec {
            source,
            token_secret_ref: Some(secret_name(&a.name)),
            ttl_duration: a.ttl.clone(),
        },
    );
    export.metadata.namespace = Some(s.namespace.clone());
    let export = api
        .create(&PostParams::default(), &export)
        .await
        .map_err(describe)?;
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(secret_name(&a.name)),
            namespace: Some(s.namespace.clone()),
            owner_references: Some(vec![OwnerReference {
                api_version: kubevirt_api::export::API_VERSION.into(),
                kind: "VirtualMachineExport".into(),
                name: a.name.clone(),
                uid: export.uid().unwrap_or_default(),
                controller: Some(true),
                block_owner_deletion: Some(false),
            }]),
            ..Default::default()
        },
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([(
            kubevirt_api::export::TOKEN_KEY.to_string(),
            ByteString(random_token().into_bytes()),
        )])),
        ..Default::default()
    };
    let secrets: Api<Secret> = Api::namespaced(s.client.clone(), &s.namespace);
    match secrets.create(&PostParams::default(), &secret).await {
        Ok(_) => {}
        Err(kube::Error::Api(st)) if st.code == 409 => {}
        Err(e) => return Err(describe(e)),
    }
    out.say(&format!(
        "VirtualMachineExport '{}/{}' created successfully",
        s.namespace, a.name
    ));
    Ok(true)
}

fn describe(e: kube::Error) -> anyhow::Error {
    match e {
        kube::Error::Api(s) => anyhow!("{}", s.message),
        other => anyhow!(other),
    }
}

async fn delete(s: &Session, name: &str, out: &Out) -> Result<()> {
    match exports(s).delete(name, &DeleteParams::background()).await {
        Ok(_) => out.say(&format!(
            "VirtualMachineExport '{}/{name}' deleted successfully",
            s.namespace
        )),
        Err(kube::Error::Api(st)) if st.code == 404 => out.say(&format!(
            "VirtualMachineExport '{}/{name}' does not exist",
            s.namespace
        )),
        Err(e) => return Err(describe(e)),
    }
    Ok(())
}

/// Waits for the export to be Ready with external links.
async fn wait_ready(
    s: &Session,
    name: &str,
    timeout: Duration,
    out: &Out,
) -> Result<VirtualMachineExport> {
    let deadline = Instant::now() + timeout;
    loop {
        match exports(s).get_opt(name).await? {
            None => out.say(&format!(
                "couldn't get VM Export {name}, waiting for it to be created..."
            )),
            Some(e) if e.phase() != Some(kubevirt_api::export::PHASE_READY) => out.say(&format!(
                "waiting for VM Export {name} status to be ready..."
            )),
            Some(e) => {
                let linked = e
                    .status
                    .as_ref()
                    .and_then(|s| s.links.as_ref())
                    .and_then(|l| l.external.as_ref())
                    .is_some();
                if linked {
                    return Ok(e);
                }
                out.say(&format!(
                    "waiting for VM Export {name} external links to be available..."
                ));
            }
        }
        if Instant::now() > deadline {
            bail!("timed out waiting for the condition");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The URL of the volume in the requested format (gzip unless `raw`), and whether it is the
/// compressed one.
fn volume_url(e: &VirtualMachineExport, volume: Option<&str>, raw: bool) -> Result<String> {
    let ns = e.namespace().unwrap_or_default();
    let name = e.name_any();
    let volumes = e
        .status
        .as_ref()
        .and_then(|s| s.links.as_ref())
        .and_then(|l| l.external.as_ref())
        .and_then(|l| l.volumes.clone())
        .filter(|v| !v.is_empty())
        .ok_or_else(|| {
            anyhow!("unable to access the volume info from '{ns}/{name}' VirtualMachineExport")
        })?;
    if volumes.len() > 1 && volume.is_none() {
        bail!("detected more than one downloadable volume in '{ns}/{name}' VirtualMachineExport: Select the expected volume using the --volume flag");
    }
    let want = if raw { "raw" } else { "gzip" };
    volumes
        .iter()
        .filter(|v| volumes.len() == 1 || Some(v.name.as_str()) == volume)
        .flat_map(|v| v.formats.iter().flatten())
        .find(|f| f.format == want)
        .map(|f| f.url.clone())
        .ok_or_else(|| anyhow!("unable to get a valid URL from '{ns}/{name}' VirtualMachineExport"))
}

async fn token(s: &Session, e: &VirtualMachineExport) -> Result<String> {
    let name = e
        .status
        .as_ref()
        .and_then(|s| s.token_secret_ref.clone())
        .unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(s.client.clone(), &s.namespace);
    let secret = secrets.get(&name).await.map_err(describe)?;
    let token = secret
        .data
        .and_then(|d| d.get(kubevirt_api::export::TOKEN_KEY).cloned())
        .unwrap_or_default();
    Ok(String::from_utf8_lossy(&token.0).into_owned())
}

/// The TLS setup: the export's CA (`links.external.cert`), or none with `--insecure`.
fn tls(cert: &str, insecure: bool) -> Result<tokio_rustls::TlsConnector> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let config = if insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(crate::upload::AnyCert(provider)))
            .with_no_client_auth()
    } else {
        let mut roots = rustls::RootCertStore::empty();
        for der in rustls_pemfile::certs(&mut cert.as_bytes()) {
            roots.add(der.context("reading the export's certificate")?)?;
        }
        if roots.is_empty() {
            bail!("the VirtualMachineExport has no certificate to verify its server with");
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// `GET url` with the export token.
async fn get(
    url: &str,
    cert: &str,
    insecure: bool,
    token: &str,
    accept: Option<&str>,
) -> Result<hyper::Response<hyper::body::Incoming>> {
    let uri: http::Uri = url.parse().with_context(|| format!("export URL {url}"))?;
    let host = uri
        .host()
        .ok_or_else(|| anyhow!("export URL {url} has no host"))?
        .trim_matches(|c| c == '[' || c == ']')
        .to_string();
    let port = uri.port_u16().unwrap_or(443);
    let tcp = TcpStream::connect((host.as_str(), port))
        .await
        .with_context(|| format!("connecting to {host}:{port}"))?;
    let name = rustls::pki_types::ServerName::try_from(host.clone())?;
    let stream = tls(cert, insecure)?
        .connect(name, tcp)
        .await
        .context("TLS handshake with the export server")?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let path = uri
        .path_and_query()
        .map_or("/".to_string(), |p| p.to_string());
    let mut req = hyper::Request::get(path)
        .header(hyper::header::HOST, format!("{host}:{port}"))
        .header(TOKEN_HEADER, token);
    if let Some(a) = accept {
        req = req.header(hyper::header::ACCEPT, a);
    }
    let req = req.body(http_body_util::Empty::<hyper::body::Bytes>::new())?;
    Ok(sender.send_request(req).await?)
}

/// One download attempt; `Ok(false)`: the server said no (retried with `--retry`).
async fn download_once(
    s: &Session,
    a: &VmExportArgs,
    out: &Out,
    timeout: Duration,
) -> Result<bool> {
    let export = wait_ready(s, &a.name, timeout, out).await?;
    let token = token(s, &export).await?;
    let cert = export
        .status
        .as_ref()
        .and_then(|s| s.links.as_ref())
        .and_then(|l| l.external.as_ref())
        .map(|l| l.cert.clone())
        .unwrap_or_default();
    if a.manifest {
        let ns = export.namespace().unwrap_or_default();
        let url = export
            .status
            .as_ref()
            .and_then(|s| s.links.as_ref())
            .and_then(|l| l.external.as_ref())
            .and_then(|l| l.manifests.as_ref())
            .and_then(|m| m.iter().find(|m| m.type_ == "all"))
            .map(|m| m.url.clone())
            .ok_or_else(|| {
                anyhow!(
                    "unable to access the manifest info from '{ns}/{}' VirtualMachineExport",
                    a.name
                )
            })?;
        let accept = match a.manifest_output_format.as_deref() {
            Some("json") => "application/json",
            _ => "application/yaml",
        };
        let resp = get(&url, &cert, a.insecure, &token, Some(accept)).await?;
        if resp.status() != hyper::StatusCode::OK {
            out.say(&format!("Bad status: {}", resp.status()));
            return Ok(false);
        }
        let body = resp.into_body().collect().await?.to_bytes();
        print!("{}", String::from_utf8_lossy(&body));
        return Ok(true);
    }
    let raw = a.format.as_deref() == Some("raw");
    let url = volume_url(&export, a.volume.as_deref(), raw)?;
    let resp = get(&url, &cert, a.insecure, &token, None).await?;
    if resp.status() != hyper::StatusCode::OK {
        out.say(&format!("Bad status: {}", resp.status()));
        return Ok(false);
    }
    let total = resp
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut sink: Box<dyn tokio::io::AsyncWrite + Unpin> = match a.output.as_deref() {
        Some(p) if p.as_os_str() != "-" => Box::new(
            tokio::fs::File::create(p)
                .await
                .with_context(|| format!("creating {}", p.display()))?,
        ),
        _ => Box::new(tokio::io::stdout()),
    };
    let bar = match total {
        Some(n) => indicatif::ProgressBar::new(n),
        None => indicatif::ProgressBar::no_length(),
    };
    bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
    bar.set_style(
        indicatif::ProgressStyle::with_template(if total.is_some() {
            "Downloading file: {bytes} / {total_bytes} [{wide_bar}] {percent}% {bytes_per_sec}"
        } else {
            "Downloading file: {bytes} {spinner} {bytes_per_sec}"
        })?
        .progress_chars("=> "),
    );
    let mut body = resp.into_body();
    while let Some(frame) = body.frame().await {
        let frame = frame.context("reading the download")?;
        if let Some(data) = frame.data_ref() {
            sink.write_all(data).await.context("writing the download")?;
            bar.inc(data.len() as u64);
        }
    }
    sink.flush().await?;
    bar.finish();
    if let Some(n) = total {
        if bar.position() != n {
            bail!("the download ended after {} of {n} bytes", bar.position());
        }
    }
    out.say("Download finished successfully");
    Ok(true)
}

pub async fn run(s: &Session, a: &VmExportArgs) -> Result<()> {
    a.check()?;
    let stdout_volume = a.function == "download"
        && !a.manifest
        && a.output.as_deref().is_none_or(|p| p.as_os_str() == "-");
    let out = Out {
        to_stderr: stdout_volume || a.manifest,
    };
    match a.function.as_str() {
        "create" => {
            if !create(s, a, &out).await? {
                bail!(
                    "VirtualMachineExport '{}/{}' already exists",
                    s.namespace,
                    a.name
                );
            }
            Ok(())
        }
        "delete" => delete(s, &a.name, &out).await,
        _ => {
            let timeout = match &a.readiness_timeout {
                Some(t) => kubevirt_api::snapshot::parse_go_duration(t).map_err(|e| anyhow!(e))?,
                None => Duration::from_secs(120),
            };
            // An export that was there before is kept unless --delete-vme says otherwise.
            let created = match a.source() {
                Some(_) => create(s, a, &out).await?,
                None => false,
            };
            let remove = !a.manifest && (a.delete_vme || (created && !a.keep_vme));
            let mut result = Err(anyhow!("retry count reached, exiting unsuccessfully"));
            for attempt in 0..=a.retry {
                match download_once(s, a, &out, timeout).await {
                    Ok(true) => {
                        result = Ok(());
                        break;
                    }
                    Ok(false) if attempt < a.retry => {
                        out.say("Retrying...");
                        tokio::time::sleep(Duration::from_secs(2)).await;
                    }
                    Ok(false) => {}
                    Err(e) => {
                        result = Err(e);
                        break;
                    }
                }
            }
            if remove {
                delete(s, &a.name, &out).await?;
            }
            result
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        a: VmExportArgs,
    }

    fn check(args: &[&str]) -> Result<()> {
        let t = T::try_parse_from(std::iter::once("vmexport").chain(args.iter().copied()))?;
        t.a.check()
    }

    #[test]
    fn flags_as_upstream_checks_them() {
        assert!(check(&["create", "e", "--pvc=disk"]).is_ok());
        assert_eq!(
            check(&["create", "e"]).unwrap_err().to_string(),
            "need to specify export kind when attempting to create a VirtualMachineExport [--pvc|--vm|--snapshot|--vmtemplate]"
        );
        assert_eq!(
            check(&["create", "e", "--vm=v", "--output=x"])
                .unwrap_err()
                .to_string(),
            "the '--output' flag is incompatible with 'create'"
        );
        assert_eq!(
            check(&["delete", "e", "--pvc=x"]).unwrap_err().to_string(),
            "should not specify export kind"
        );
        assert!(check(&["download", "e", "--output=x", "--format=raw"]).is_ok());
        assert_eq!(
            check(&["download", "e", "--output=x", "--format=qcow2"])
                .unwrap_err()
                .to_string(),
            "--format is not a valid value, acceptable values are gzip/raw"
        );
        assert!(check(&["update", "e"]).is_err());
    }
}
