//! containerDisk: pull an OCI image holding one disk file under `/disk/`, keep the extracted
//! disk per manifest digest in a cache, and hand out its path (read-only; VMs get overlays).
//!
//! Cache layout (all renames stay inside `root`, so they are atomic):
//! ```text
//! root/blobs/sha256/<hex>          verified layer blobs
//! root/disks/sha256/<hex>/disk.<fmt>  extracted disk of manifest <hex>, mode 0444
//! root/refs/<sha256 of reference>.json  tag -> manifest digest, for pulls without network
//! root/locks/<hex>.lock            flock held while one puller fills an entry
//! root/tmp/                        partial downloads and extractions
//! ```
//! Concurrent pulls (threads or processes) of one image serialise on the lock; whoever comes
//! second finds the finished entry. A crash leaves only files in `tmp/`.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::StreamExt as _;
use nix::fcntl::FlockArg;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::{OciDescriptor, OciImageManifest};
use oci_client::secrets::RegistryAuth;
use oci_client::Reference;
use sha2::{Digest as _, Sha256};

use crate::error::{DiskPrepError, Result};
use crate::format::DiskFormat;

/// How registries are reached.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegistryConfig {
    /// Registry host (as written in the image reference, e.g. `registry:5000`) -> registry
    /// to contact instead (`127.0.0.1:5000`). A value starting with `http://` also marks the
    /// target as plain HTTP; `https://` is stripped.
    pub mirrors: HashMap<String, String>,
    /// Registries (after mapping) spoken to over plain HTTP.
    pub insecure: Vec<String>,
}

/// `imagePullPolicy` of the containerDisk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullPolicy {
    /// Ask the registry for the tag's manifest every time (blobs still come from the cache).
    Always,
    /// Use the cached tag -> digest mapping when present; no network then.
    IfNotPresent,
    /// Only the cache; fail if the image is not there.
    Never,
}

impl PullPolicy {
    /// Kubernetes' default: `Always` for `:latest` or untagged images, else `IfNotPresent`.
    pub fn default_for(image: &str) -> PullPolicy {
        match image.parse::<Reference>() {
            Ok(r) if r.digest().is_some() => PullPolicy::IfNotPresent,
            Ok(r) if r.tag().is_none_or(|t| t == "latest") => PullPolicy::Always,
            _ => PullPolicy::IfNotPresent,
        }
    }
}

impl std::str::FromStr for PullPolicy {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "Always" => Ok(PullPolicy::Always),
            "IfNotPresent" => Ok(PullPolicy::IfNotPresent),
            "Never" => Ok(PullPolicy::Never),
            other => Err(format!(
                "unknown imagePullPolicy {other:?} (expected Always, IfNotPresent or Never)"
            )),
        }
    }
}

/// Download progress over all layers of one pull.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PullProgress {
    pub bytes_done: u64,
    pub bytes_total: u64,
}

/// Callback receiving progress; called from the pulling task, keep it cheap.
pub type ProgressFn = dyn Fn(PullProgress) + Send + Sync;

/// An extracted containerDisk, ready to be used as an overlay base.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PulledDisk {
    /// Read-only base image in the cache. Never hand this to QEMU writable.
    pub path: PathBuf,
    pub format: DiskFormat,
    /// `sha256:...` of the image manifest.
    pub manifest_digest: String,
    /// The reference actually contacted (after registry mapping).
    pub resolved_reference: String,
    /// True when nothing had to be downloaded.
    pub from_cache: bool,
}

/// A containerDisk cache directory plus a registry client.
pub struct ContainerDiskCache {
    root: PathBuf,
    config: RegistryConfig,
    /// `config.insecure` plus mirror targets given as `http://`.
    insecure: Vec<String>,
    extra_roots_pem: Vec<Vec<u8>>,
    /// Shared by anonymous pulls; pulls with credentials get their own client, because the
    /// client remembers the first credentials it saw per registry.
    client: oci_client::Client,
}

fn new_client(insecure: Vec<String>, extra_roots_pem: &[Vec<u8>]) -> oci_client::Client {
    oci_client::Client::new(ClientConfig {
        protocol: ClientProtocol::HttpsExcept(insecure),
        platform_resolver: Some(Box::new(oci_client::client::linux_amd64_resolver)),
        extra_root_certificates: extra_roots_pem
            .iter()
            .map(|pem| oci_client::client::Certificate {
                encoding: oci_client::client::CertificateEncoding::Pem,
                data: pem.clone(),
            })
            .collect(),
        ..ClientConfig::default()
    })
}

/// Registry credentials from an `imagePullSecret` (resolved by the caller).
#[derive(Clone, PartialEq, Eq)]
pub struct RegistryCredentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for RegistryCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryCredentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl RegistryCredentials {
    /// Picks the entry for `image`'s registry (as written, before mapping) out of a
    /// `kubernetes.io/dockerconfigjson` secret's `.dockerconfigjson` (or the older
    /// `.dockercfg` shape without `auths`). `Ok(None)` when the secret has no entry for it.
    pub fn from_docker_config(
        volume: &str,
        image: &str,
        config_json: &[u8],
    ) -> Result<Option<RegistryCredentials>> {
        let field = "containerDisk.imagePullSecret";
        let bad = |reason: String| DiskPrepError::invalid(volume, field, reason);
        let reference: Reference =
            image
                .parse()
                .map_err(|e| DiskPrepError::InvalidImageReference {
                    volume: volume.to_owned(),
                    image: image.to_owned(),
                    reason: format!("{e}"),
                })?;
        let doc: serde_json::Value = serde_json::from_slice(config_json)
            .map_err(|e| bad(format!("secret is not docker config JSON: {e}")))?;
        let auths = doc.get("auths").unwrap_or(&doc);
        let Some(auths) = auths.as_object() else {
            return Err(bad("secret has no \"auths\" object".into()));
        };
        let wanted = normalize_registry_host(reference.registry());
        for (key, entry) in auths {
            if normalize_registry_host(key) != wanted {
                continue;
            }
            let user = entry.get("username").and_then(|v| v.as_str());
            let pass = entry.get("password").and_then(|v| v.as_str());
            if let (Some(u), Some(p)) = (user, pass) {
                return Ok(Some(RegistryCredentials {
                    username: u.to_owned(),
                    password: p.to_owned(),
                }));
            }
            let auth = entry.get("auth").and_then(|v| v.as_str()).ok_or_else(|| {
                bad(format!(
                    "entry {key:?} has neither username/password nor auth"
                ))
            })?;
            use base64::Engine as _;
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(auth.trim())
                .map_err(|e| bad(format!("entry {key:?}: auth is not base64: {e}")))?;
            let text = String::from_utf8(decoded)
                .map_err(|_| bad(format!("entry {key:?}: auth is not UTF-8")))?;
            let (u, p) = text
                .split_once(':')
                .ok_or_else(|| bad(format!("entry {key:?}: auth is not user:password")))?;
            return Ok(Some(RegistryCredentials {
                username: u.to_owned(),
                password: p.to_owned(),
            }));
        }
        Ok(None)
    }
}

/// `https://index.docker.io/v1/`, `docker.io`, `registry-1.docker.io` all mean Docker Hub;
/// otherwise the host[:port] without scheme or path.
fn normalize_registry_host(key: &str) -> String {
    let host = key
        .trim()
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "docker.io" => "docker.io".to_owned(),
        _ => host,
    }
}

/// Everything about one containerDisk pull.
#[derive(Debug, Clone, Copy)]
pub struct PullRequest<'a> {
    /// Volume name, for messages.
    pub volume: &'a str,
    /// `containerDisk.image` as written in the manifest (mapping is applied here).
    pub image: &'a str,
    /// `containerDisk.path`.
    pub path: Option<&'a str>,
    pub policy: PullPolicy,
    /// From `containerDisk.imagePullSecret`. Note: like a kubelet with `IfNotPresent`, a
    /// cached image is served without asking the registry again.
    pub credentials: Option<&'a RegistryCredentials>,
}

impl std::fmt::Debug for ContainerDiskCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContainerDiskCache")
            .field("root", &self.root)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct RefRecord {
    reference: String,
    manifest_digest: String,
}

impl ContainerDiskCache {
    /// Directories are created on first pull.
    pub fn new(root: impl Into<PathBuf>, config: RegistryConfig) -> Self {
        // reqwest is built without a bundled crypto provider; use ring like the rest of the
        // workspace. Failing means another provider is installed already, which is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut insecure = config.insecure.clone();
        for target in config.mirrors.values() {
            if let Some(host) = target.strip_prefix("http://") {
                insecure.push(host.trim_end_matches('/').to_owned());
            }
        }
        let client = new_client(insecure.clone(), &[]);
        ContainerDiskCache {
            root: root.into(),
            config,
            insecure,
            extra_roots_pem: Vec::new(),
            client,
        }
    }

    /// Trusts these PEM CA certificates for HTTPS registries, besides the system's
    /// (a registry with a private CA).
    pub fn with_extra_root_certificates(mut self, pems: Vec<Vec<u8>>) -> Self {
        self.client = new_client(self.insecure.clone(), &pems);
        self.extra_roots_pem = pems;
        self
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Applies the registry mapping to an image reference.
    pub fn resolve_reference(&self, volume: &str, image: &str) -> Result<Reference> {
        let bad = |reason: String| DiskPrepError::InvalidImageReference {
            volume: volume.to_owned(),
            image: image.to_owned(),
            reason,
        };
        if image.trim().is_empty() {
            return Err(bad("empty".into()));
        }
        let parsed: Reference = image.parse().map_err(|e| bad(format!("{e}")))?;
        let registry = match self.config.mirrors.get(parsed.registry()) {
            Some(target) => target
                .trim_start_matches("http://")
                .trim_start_matches("https://")
                .trim_end_matches('/')
                .to_owned(),
            None => parsed.registry().to_owned(),
        };
        let repository = parsed.repository().to_owned();
        Ok(match (parsed.tag(), parsed.digest()) {
            (Some(tag), Some(digest)) => Reference::with_tag_and_digest(
                registry,
                repository,
                tag.to_owned(),
                digest.to_owned(),
            ),
            (None, Some(digest)) => Reference::with_digest(registry, repository, digest.to_owned()),
            (tag, None) => {
                Reference::with_tag(registry, repository, tag.unwrap_or("latest").to_owned())
            }
        })
    }

    /// Pulls (or finds in the cache) the containerDisk `image` for `volume`, following the
    /// KubeVirt convention: exactly one file under `/disk/`.
    pub async fn pull(
        &self,
        volume: &str,
        image: &str,
        policy: PullPolicy,
        progress: &ProgressFn,
    ) -> Result<PulledDisk> {
        self.pull_disk(volume, image, None, policy, progress).await
    }

    /// Like [`Self::pull`], with `containerDisk.path`: when set, the disk is the regular
    /// file at that path in the image instead of the single file under `/disk/`.
    pub async fn pull_disk(
        &self,
        volume: &str,
        image: &str,
        disk_path: Option<&str>,
        policy: PullPolicy,
        progress: &ProgressFn,
    ) -> Result<PulledDisk> {
        self.pull_with(
            PullRequest {
                volume,
                image,
                path: disk_path,
                policy,
                credentials: None,
            },
            progress,
        )
        .await
    }

    /// The general form of [`Self::pull`].
    pub async fn pull_with(
        &self,
        request: PullRequest<'_>,
        progress: &ProgressFn,
    ) -> Result<PulledDisk> {
        let PullRequest {
            volume,
            image,
            path: disk_path,
            policy,
            credentials,
        } = request;
        let selector = Selector::new(volume, disk_path)?;
        let reference = self.resolve_reference(volume, image)?;
        let own_client;
        let (client, auth) = match credentials {
            Some(c) => {
                own_client = new_client(self.insecure.clone(), &self.extra_roots_pem);
                (
                    &own_client,
                    RegistryAuth::Basic(c.username.clone(), c.password.clone()),
                )
            }
            None => (&self.client, RegistryAuth::Anonymous),
        };
        let ctx = PullCtx {
            volume,
            image,
            reference: &reference,
            client,
            auth,
        };
        let ref_record = self.root.join("refs").join(format!(
            "{}.json",
            hex::encode(Sha256::digest(reference.whole().as_bytes()))
        ));

        let mut manifest: Option<OciImageManifest> = None;
        let digest = match reference.digest() {
            Some(d) => Some(d.to_owned()),
            None if policy != PullPolicy::Always => read_ref_record(&ref_record),
            None => None,
        };
        let digest = match digest {
            Some(d) => d,
            None if policy == PullPolicy::Never => return Err(ctx.not_cached()),
            None => {
                let (m, d) = self.fetch_manifest(&ctx).await?;
                manifest = Some(m);
                d
            }
        };
        let hex_digest = ctx.sha256_hex(&digest)?.to_owned();
        let disk_dir = self
            .root
            .join("disks/sha256")
            .join(format!("{hex_digest}{}", selector.cache_suffix()));
        if let Some(found) = cached_disk(volume, image, &disk_dir)? {
            if reference.digest().is_none() {
                write_ref_record(volume, &ref_record, &reference, &digest)?;
            }
            tracing::debug!(volume, image, digest, "containerDisk found in cache");
            return Ok(PulledDisk {
                path: found.0,
                format: found.1,
                manifest_digest: digest,
                resolved_reference: reference.whole(),
                from_cache: true,
            });
        }
        if policy == PullPolicy::Never {
            return Err(ctx.not_cached());
        }

        for dir in ["blobs/sha256", "disks/sha256", "refs", "locks", "tmp"] {
            let p = self.root.join(dir);
            std::fs::create_dir_all(&p)
                .map_err(|e| DiskPrepError::io(volume, "creating cache directory", &p, e))?;
        }
        // Shared: many pulls at once; `prune` takes it exclusively.
        let _global = self.lock(volume, GLOBAL_LOCK, FlockArg::LockShared).await?;
        let _lock = self
            .lock(
                volume,
                &format!("{hex_digest}.lock"),
                FlockArg::LockExclusive,
            )
            .await?;
        // Someone else may have finished while we waited for the lock.
        if let Some(found) = cached_disk(volume, image, &disk_dir)? {
            if reference.digest().is_none() {
                write_ref_record(volume, &ref_record, &reference, &digest)?;
            }
            return Ok(PulledDisk {
                path: found.0,
                format: found.1,
                manifest_digest: digest,
                resolved_reference: reference.whole(),
                from_cache: true,
            });
        }

        let manifest = match manifest {
            Some(m) => m,
            None => {
                let (m, d) = self.fetch_manifest(&ctx).await?;
                if d != digest {
                    return Err(DiskPrepError::DigestMismatch {
                        volume: volume.to_owned(),
                        image: image.to_owned(),
                        expected: digest,
                        actual: d,
                    });
                }
                m
            }
        };
        let layers = manifest.layers.clone();
        if layers.is_empty() {
            return Err(ctx.not_a_container_disk("the image has no layers".into()));
        }
        let total: u64 = layers.iter().map(|l| l.size.max(0) as u64).sum();
        let mut done = 0u64;
        progress(PullProgress {
            bytes_done: 0,
            bytes_total: total,
        });
        let mut blob_paths = Vec::with_capacity(layers.len());
        for layer in &layers {
            check_layer_media_type(&ctx, layer)?;
            let path = self
                .fetch_blob(&ctx, layer, &mut done, total, progress)
                .await?;
            blob_paths.push((path, layer.clone()));
        }

        let tmp_root = self.root.join("tmp");
        let volume_owned = volume.to_owned();
        let image_owned = image.to_owned();
        let disk_dir_owned = disk_dir.clone();
        let (path, format) = tokio::task::spawn_blocking(move || {
            extract_disk(
                &volume_owned,
                &image_owned,
                &selector,
                &blob_paths,
                &tmp_root,
                &disk_dir_owned,
            )
        })
        .await
        .map_err(|e| DiskPrepError::Task {
            volume: volume.to_owned(),
            reason: e.to_string(),
        })??;
        if reference.digest().is_none() {
            write_ref_record(volume, &ref_record, &reference, &digest)?;
        }
        tracing::info!(volume, image, digest, path = %path.display(), %format, bytes = total, "containerDisk pulled");
        Ok(PulledDisk {
            path,
            format,
            manifest_digest: digest,
            resolved_reference: reference.whole(),
            from_cache: false,
        })
    }

    async fn fetch_manifest(&self, ctx: &PullCtx<'_>) -> Result<(OciImageManifest, String)> {
        ctx.client
            .pull_image_manifest(ctx.reference, &ctx.auth)
            .await
            .map_err(|e| ctx.registry_error(e))
    }

    async fn lock(
        &self,
        volume: &str,
        name: &str,
        mode: FlockArg,
    ) -> Result<nix::fcntl::Flock<std::fs::File>> {
        let path = self.root.join("locks").join(name);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| DiskPrepError::io(volume, "opening lock file", &path, e))?;
        let volume_owned = volume.to_owned();
        tokio::task::spawn_blocking(move || {
            nix::fcntl::Flock::lock(file, mode).map_err(|(_, errno)| {
                DiskPrepError::io(&volume_owned, "locking", &path, std::io::Error::from(errno))
            })
        })
        .await
        .map_err(|e| DiskPrepError::Task {
            volume: volume.to_owned(),
            reason: e.to_string(),
        })?
    }

    /// Returns the path of the verified blob, downloading it unless cached.
    async fn fetch_blob(
        &self,
        ctx: &PullCtx<'_>,
        layer: &OciDescriptor,
        done: &mut u64,
        total: u64,
        progress: &ProgressFn,
    ) -> Result<PathBuf> {
        let volume = ctx.volume;
        let hex_digest = ctx.sha256_hex(&layer.digest)?;
        let final_path = self.root.join("blobs/sha256").join(hex_digest);
        if let Ok(md) = std::fs::metadata(&final_path) {
            if layer.size < 0 || md.len() == layer.size as u64 {
                *done += md.len();
                progress(PullProgress {
                    bytes_done: *done,
                    bytes_total: total,
                });
                return Ok(final_path);
            }
        }
        let mut tmp = crate::fsutil::tempfile_in(volume, &self.root.join("tmp"))?;
        let mut stream = ctx
            .client
            .pull_blob_stream(ctx.reference, layer)
            .await
            .map_err(|e| ctx.registry_error(e))?;
        let mut hasher = Sha256::new();
        let mut received = 0u64;
        let mut stream_error = None;
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(bytes) => {
                    hasher.update(&bytes);
                    received += bytes.len() as u64;
                    tmp.write_all(&bytes)
                        .map_err(|e| DiskPrepError::io(volume, "writing", tmp.path(), e))?;
                    *done += bytes.len() as u64;
                    progress(PullProgress {
                        bytes_done: *done,
                        bytes_total: total,
                    });
                }
                Err(e) => {
                    // The client's own verification ends the stream with an error; our hash
                    // tells whether that was corruption or a transport failure.
                    stream_error = Some(e);
                    break;
                }
            }
        }
        let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
        if actual != layer.digest && (stream_error.is_none() || layer.size == received as i64) {
            return Err(DiskPrepError::DigestMismatch {
                volume: volume.to_owned(),
                image: ctx.image.to_owned(),
                expected: layer.digest.clone(),
                actual,
            });
        }
        if let Some(e) = stream_error {
            return Err(ctx.registry_error(OciDistributionError::IoError(e)));
        }
        if layer.size >= 0 && received != layer.size as u64 {
            return Err(ctx.not_a_container_disk(format!(
                "layer {} is {received} bytes, manifest says {}",
                layer.digest, layer.size
            )));
        }
        tmp.as_file()
            .sync_all()
            .map_err(|e| DiskPrepError::io(volume, "syncing", tmp.path(), e))?;
        tmp.persist(&final_path)
            .map_err(|e| DiskPrepError::io(volume, "renaming into", &final_path, e.error))?;
        tracing::debug!(volume, digest = %layer.digest, bytes = received, "blob downloaded");
        Ok(final_path)
    }
}

struct PullCtx<'a> {
    volume: &'a str,
    image: &'a str,
    reference: &'a Reference,
    client: &'a oci_client::Client,
    auth: RegistryAuth,
}

impl PullCtx<'_> {
    fn not_cached(&self) -> DiskPrepError {
        DiskPrepError::NotCached {
            volume: self.volume.to_owned(),
            image: self.image.to_owned(),
        }
    }

    fn not_a_container_disk(&self, reason: String) -> DiskPrepError {
        DiskPrepError::NotAContainerDisk {
            volume: self.volume.to_owned(),
            image: self.image.to_owned(),
            reason,
        }
    }

    /// Digests come from the registry: only well-formed sha256 ones become file names.
    fn sha256_hex<'d>(&self, digest: &'d str) -> Result<&'d str> {
        match digest.strip_prefix("sha256:") {
            Some(h)
                if h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) =>
            {
                Ok(h)
            }
            _ => {
                Err(self.not_a_container_disk(format!("digest {digest:?} is not a sha256 digest")))
            }
        }
    }

    fn registry_error(&self, e: OciDistributionError) -> DiskPrepError {
        let registry = self.reference.registry().to_owned();
        let not_found = match &e {
            OciDistributionError::ImageManifestNotFoundError(_) => true,
            OciDistributionError::RegistryError { envelope, .. } => {
                envelope.errors.iter().any(|err| {
                    matches!(
                        err.code,
                        OciErrorCode::ManifestUnknown | OciErrorCode::NameUnknown
                    )
                })
            }
            OciDistributionError::ServerError { code, .. } => *code == 404,
            _ => false,
        };
        if let OciDistributionError::UnauthorizedError { .. } = &e {
            return DiskPrepError::Unauthorized {
                volume: self.volume.to_owned(),
                image: self.image.to_owned(),
                registry,
                with_credentials: !matches!(self.auth, RegistryAuth::Anonymous),
            };
        }
        if not_found {
            return DiskPrepError::ImageNotFound {
                volume: self.volume.to_owned(),
                image: self.image.to_owned(),
                registry,
            };
        }
        DiskPrepError::Registry {
            volume: self.volume.to_owned(),
            image: self.image.to_owned(),
            registry,
            source: Box::new(e),
        }
    }
}

fn check_layer_media_type(ctx: &PullCtx<'_>, layer: &OciDescriptor) -> Result<()> {
    let mt = layer.media_type.as_str();
    let reason = if mt.contains("zstd") {
        "zstd layers are not supported; push the image with gzip or uncompressed layers"
    } else if mt.contains("tar") {
        return Ok(());
    } else {
        "containerDisk layers must be tar archives (optionally gzip-compressed)"
    };
    Err(DiskPrepError::UnsupportedLayer {
        volume: ctx.volume.to_owned(),
        image: ctx.image.to_owned(),
        digest: layer.digest.clone(),
        media_type: mt.to_owned(),
        reason: reason.to_owned(),
    })
}

fn read_ref_record(path: &Path) -> Option<String> {
    let bytes = std::fs::read(path).ok()?;
    let rec: RefRecord = serde_json::from_slice(&bytes).ok()?;
    Some(rec.manifest_digest)
}

fn write_ref_record(volume: &str, path: &Path, reference: &Reference, digest: &str) -> Result<()> {
    if read_ref_record(path).as_deref() == Some(digest) {
        return Ok(());
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| DiskPrepError::io(volume, "creating cache directory", dir, e))?;
    }
    let rec = RefRecord {
        reference: reference.whole(),
        manifest_digest: digest.to_owned(),
    };
    let body = serde_json::to_vec(&rec).unwrap_or_default();
    crate::fsutil::write_atomic(volume, path, &body)
}

/// The extracted disk of a cache entry, with the format recorded at pull time. A qcow2
/// extracted by an older version (which only refused backing files) is checked again against
/// the current policy: the format is not re-decided, but an external data file is refused.
fn cached_disk(volume: &str, image: &str, dir: &Path) -> Result<Option<(PathBuf, DiskFormat)>> {
    let Some((path, format)) = find_disk(dir) else {
        return Ok(None);
    };
    if format == DiskFormat::Qcow2 {
        let info = crate::inspect::inspect_path(volume, &path)?;
        if let Some(reason) = info.refusal(crate::inspect::ImagePolicy::Imported) {
            return Err(DiskPrepError::UnsafeContainerDisk {
                volume: volume.to_owned(),
                image: image.to_owned(),
                path: format!("cached {}", path.display()),
                reason,
            });
        }
    }
    Ok(Some((path, format)))
}

fn find_disk(dir: &Path) -> Option<(PathBuf, DiskFormat)> {
    for format in [DiskFormat::Qcow2, DiskFormat::Raw] {
        let p = dir.join(format!("disk.{format}"));
        if p.is_file() {
            return Some((p, format));
        }
    }
    None
}

/// Which file of the image is the disk.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Selector {
    /// The single file under `/disk/`.
    Convention,
    /// `containerDisk.path`, normalised to a relative path without `.`/`..`.
    Exact(String),
}

impl Selector {
    fn new(volume: &str, path: Option<&str>) -> Result<Selector> {
        let Some(raw) = path.filter(|p| !p.is_empty()) else {
            return Ok(Selector::Convention);
        };
        let bad = |reason: &str| DiskPrepError::invalid(volume, "containerDisk.path", reason);
        let rel = raw.trim_start_matches('/');
        if rel.is_empty() || rel.ends_with('/') {
            return Err(bad("must name a file, not a directory"));
        }
        if rel
            .split('/')
            .any(|seg| seg.is_empty() || seg == "." || seg == "..")
        {
            return Err(bad("must not contain empty, '.' or '..' segments"));
        }
        if rel.contains('\0') {
            return Err(bad("contains a NUL byte"));
        }
        Ok(Selector::Exact(rel.to_owned()))
    }

    /// Distinguishes extracted entries of one manifest picked by different paths.
    fn cache_suffix(&self) -> String {
        match self {
            Selector::Convention => String::new(),
            Selector::Exact(p) => format!("-{}", &hex::encode(Sha256::digest(p.as_bytes()))[..16]),
        }
    }

    /// The key under which an entry is collected, or None if the entry is not a candidate.
    fn matches(&self, path: &Path) -> Option<String> {
        match self {
            Selector::Convention => disk_entry_name(path),
            Selector::Exact(want) => {
                let text = path.to_str()?;
                let text = text.trim_start_matches("./").trim_start_matches('/');
                (text == want).then(|| want.clone())
            }
        }
    }

    fn describe(&self) -> String {
        match self {
            Selector::Convention => "/disk/".to_owned(),
            Selector::Exact(p) => format!("/{p}"),
        }
    }
}

/// Layer paths are untrusted: only `disk/<name>` regular files are considered and the
/// output name is ours, so nothing in a tar can write outside the temporary directory.
fn disk_entry_name(path: &Path) -> Option<String> {
    let text = path.to_str()?;
    let text = text.trim_start_matches("./").trim_start_matches('/');
    let name = text.strip_prefix("disk/")?;
    if name.is_empty() || name.contains('/') || name.starts_with(".wh.") {
        return None;
    }
    Some(name.to_owned())
}

fn open_layer(path: &Path) -> std::io::Result<Box<dyn Read>> {
    let mut file = std::fs::File::open(path)?;
    let mut magic = [0u8; 2];
    let n = file.read(&mut magic)?;
    let file = std::fs::File::open(path)?;
    let reader = std::io::BufReader::new(file);
    if n == 2 && magic == [0x1f, 0x8b] {
        Ok(Box::new(flate2::read::MultiGzDecoder::new(reader)))
    } else {
        Ok(Box::new(reader))
    }
}

fn extract_disk(
    volume: &str,
    image: &str,
    selector: &Selector,
    layers: &[(PathBuf, OciDescriptor)],
    tmp_root: &Path,
    disk_dir: &Path,
) -> Result<(PathBuf, DiskFormat)> {
    let not_cd = |reason: String| DiskPrepError::NotAContainerDisk {
        volume: volume.to_owned(),
        image: image.to_owned(),
        reason,
    };
    let work = tempfile::Builder::new()
        .prefix(".extract-")
        .tempdir_in(tmp_root)
        .map_err(|e| DiskPrepError::io(volume, "creating a temporary directory in", tmp_root, e))?;
    // Later layers replace files of earlier ones with the same name.
    let mut files: BTreeMap<String, PathBuf> = BTreeMap::new();
    let mut counter = 0usize;
    for (blob, desc) in layers {
        let reader =
            open_layer(blob).map_err(|e| DiskPrepError::io(volume, "opening layer", blob, e))?;
        let mut archive = tar::Archive::new(reader);
        let entries = archive.entries().map_err(|e| {
            not_cd(format!(
                "layer {} is not a readable tar archive: {e}",
                desc.digest
            ))
        })?;
        for entry in entries {
            let mut entry = entry.map_err(|e| {
                not_cd(format!(
                    "layer {} is not a readable tar archive: {e}",
                    desc.digest
                ))
            })?;
            let path = match entry.path() {
                Ok(p) => p.into_owned(),
                Err(_) => continue,
            };
            let Some(name) = selector.matches(&path) else {
                continue;
            };
            if !entry.header().entry_type().is_file() {
                continue;
            }
            counter += 1;
            let out_path = work.path().join(format!("part-{counter}"));
            let mut out = std::fs::File::create(&out_path)
                .map_err(|e| DiskPrepError::io(volume, "creating", &out_path, e))?;
            std::io::copy(&mut entry, &mut out).map_err(|e| {
                not_cd(format!(
                    "reading disk/{name} from layer {}: {e}",
                    desc.digest
                ))
            })?;
            out.sync_all()
                .map_err(|e| DiskPrepError::io(volume, "syncing", &out_path, e))?;
            files.insert(name, out_path);
        }
    }
    let (name, extracted) = match files.len() {
        0 => {
            return Err(not_cd(match selector {
                Selector::Convention => "no file under /disk/ in any layer".into(),
                Selector::Exact(_) => format!(
                    "no regular file at {} (containerDisk.path) in any layer",
                    selector.describe()
                ),
            }))
        }
        1 => files
            .into_iter()
            .next()
            .ok_or_else(|| not_cd("no file under /disk/".into()))?,
        _ => {
            let names: Vec<String> = files.keys().map(|n| format!("/disk/{n}")).collect();
            return Err(not_cd(format!(
                "more than one file under /disk/ ({}); exactly one is expected",
                names.join(", ")
            )));
        }
    };
    // The format is decided here, once, from the pulled bytes, and recorded as the cached
    // file's name (`disk.raw` / `disk.qcow2`): nothing re-probes a cached disk.
    let info = crate::inspect::inspect_path(volume, &extracted)?;
    if let Some(reason) = info.refusal(crate::inspect::ImagePolicy::Imported) {
        return Err(DiskPrepError::UnsafeContainerDisk {
            volume: volume.to_owned(),
            image: image.to_owned(),
            path: match selector {
                Selector::Convention => format!("/disk/{name}"),
                Selector::Exact(_) => format!("/{name}"),
            },
            reason,
        });
    }
    let format = info.format.disk_format().unwrap_or(DiskFormat::Raw);
    let staged = work.path().join("entry");
    std::fs::create_dir(&staged).map_err(|e| DiskPrepError::io(volume, "creating", &staged, e))?;
    let layer_digests: Vec<&str> = layers.iter().map(|(_, d)| d.digest.as_str()).collect();
    let layers_file = staged.join(LAYERS_FILE);
    std::fs::write(
        &layers_file,
        serde_json::to_vec(&layer_digests).unwrap_or_default(),
    )
    .map_err(|e| DiskPrepError::io(volume, "writing", &layers_file, e))?;
    let disk_path = staged.join(format!("disk.{format}"));
    std::fs::rename(&extracted, &disk_path)
        .map_err(|e| DiskPrepError::io(volume, "renaming", &extracted, e))?;
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&disk_path, std::fs::Permissions::from_mode(0o444))
        .map_err(|e| DiskPrepError::io(volume, "making read-only", &disk_path, e))?;
    std::fs::rename(&staged, disk_dir)
        .map_err(|e| DiskPrepError::io(volume, "moving into the cache", disk_dir, e))?;
    tracing::debug!(volume, image, file = %name, "extracted containerDisk");
    Ok((disk_dir.join(format!("disk.{format}")), format))
}

/// Lock file held shared by every downloading pull and exclusively by [`ContainerDiskCache::prune`].
const GLOBAL_LOCK: &str = "cache.lock";
/// Written beside each extracted disk: the layer digests it came from (for pruning blobs).
const LAYERS_FILE: &str = "layers.json";
/// Stands in for a volume name in errors of cache-wide operations.
const CACHE_SUBJECT: &str = "<containerDisk cache>";

/// What [`ContainerDiskCache::prune`] removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PruneStats {
    pub disks_removed: usize,
    pub blobs_removed: usize,
    pub bytes_freed: u64,
}

impl ContainerDiskCache {
    /// Removes every extracted disk whose manifest digest is not in `keep` (the images of
    /// VMs that exist on this node), the blobs no remaining disk came from, and tag records
    /// pointing at removed digests. Waits for running downloads to finish first.
    pub async fn prune(&self, keep: &std::collections::HashSet<String>) -> Result<PruneStats> {
        let v = CACHE_SUBJECT;
        let mut stats = PruneStats::default();
        if !self.root.join("disks/sha256").is_dir() {
            return Ok(stats);
        }
        std::fs::create_dir_all(self.root.join("locks")).map_err(|e| {
            DiskPrepError::io(v, "creating cache directory", self.root.join("locks"), e)
        })?;
        let _global = self.lock(v, GLOBAL_LOCK, FlockArg::LockExclusive).await?;
        let mut referenced = std::collections::HashSet::new();
        for (dir, digest) in list_dir(v, &self.root.join("disks/sha256"))?
            .into_iter()
            .filter_map(|p| {
                let name = p.file_name()?.to_str()?.to_owned();
                Some((p, format!("sha256:{}", name.get(..64)?)))
            })
        {
            if keep.contains(&digest) {
                let layers: Vec<String> = std::fs::read(dir.join(LAYERS_FILE))
                    .ok()
                    .and_then(|b| serde_json::from_slice(&b).ok())
                    .unwrap_or_default();
                referenced.extend(layers);
                continue;
            }
            stats.bytes_freed += dir_size(&dir);
            std::fs::remove_dir_all(&dir).map_err(|e| DiskPrepError::io(v, "removing", &dir, e))?;
            stats.disks_removed += 1;
        }
        for blob in list_dir(v, &self.root.join("blobs/sha256"))? {
            let name = blob
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            if referenced.contains(&format!("sha256:{name}")) {
                continue;
            }
            stats.bytes_freed += std::fs::metadata(&blob).map(|m| m.len()).unwrap_or(0);
            std::fs::remove_file(&blob).map_err(|e| DiskPrepError::io(v, "removing", &blob, e))?;
            stats.blobs_removed += 1;
        }
        for rec in list_dir(v, &self.root.join("refs"))? {
            if read_ref_record(&rec).is_some_and(|d| !keep.contains(&d)) {
                std::fs::remove_file(&rec)
                    .map_err(|e| DiskPrepError::io(v, "removing", &rec, e))?;
            }
        }
        tracing::info!(?stats, "pruned containerDisk cache");
        Ok(stats)
    }
}

fn list_dir(volume: &str, dir: &Path) -> Result<Vec<PathBuf>> {
    match std::fs::read_dir(dir) {
        Ok(rd) => Ok(rd.flatten().map(|e| e.path()).collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(DiskPrepError::io(volume, "listing", dir, e)),
    }
}

fn dir_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// Shared handle type for callers that keep one cache per node agent.
pub type SharedCache = Arc<ContainerDiskCache>;

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn extract_bytes(layer: &[u8]) -> Result<(PathBuf, DiskFormat)> {
        let dir = tempfile::tempdir().unwrap();
        let blob = dir.path().join("blob");
        std::fs::write(&blob, layer).unwrap();
        std::fs::create_dir(dir.path().join("tmp")).unwrap();
        let desc = OciDescriptor {
            digest: "sha256:00".into(),
            ..Default::default()
        };
        extract_disk(
            "v",
            "img",
            &Selector::Convention,
            &[(blob, desc)],
            &dir.path().join("tmp"),
            &dir.path().join("out"),
        )
        .map(|(p, f)| (p.file_name().map(PathBuf::from).unwrap_or_default(), f))
    }

    #[test]
    fn whole_tar_extracts() {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(2048);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, "disk/disk.img", &[7u8; 2048][..])
            .unwrap();
        let full = b.into_inner().unwrap();
        let r = extract_bytes(&full);
        assert!(r.is_ok(), "{r:?}");
        // Without the end-of-archive blocks the entry is still complete (GNU tar agrees).
        assert!(extract_bytes(&full[..2560]).is_ok());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Layers are untrusted bytes: garbage, truncated tars and gzip never panic.
        #[test]
        fn arbitrary_layers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096), gz in any::<bool>()) {
            let mut data = bytes;
            if gz {
                data.splice(0..0, [0x1f, 0x8b]);
            }
            let _ = extract_bytes(&data);
        }

        #[test]
        fn truncated_tar_is_an_error_not_a_panic(cut in 0usize..2560) {
            let mut b = tar::Builder::new(Vec::new());
            let mut h = tar::Header::new_gnu();
            h.set_size(2048);
            h.set_entry_type(tar::EntryType::Regular);
            b.append_data(&mut h, "disk/disk.img", &[7u8; 2048][..]).unwrap();
            let full = b.into_inner().unwrap();
            let res = extract_bytes(&full[..cut]);
            prop_assert!(res.is_err());
        }
    }

    #[test]
    fn mapping_and_defaults() {
        let mut mirrors = HashMap::new();
        mirrors.insert(
            "registry:5000".to_owned(),
            "http://127.0.0.1:5001".to_owned(),
        );
        let cache = ContainerDiskCache::new(
            "/nonexistent",
            RegistryConfig {
                mirrors,
                insecure: vec![],
            },
        );
        let r = cache
            .resolve_reference(
                "d",
                "registry:5000/kubevirt/cirros-container-disk-demo:devel",
            )
            .unwrap();
        assert_eq!(
            r.whole(),
            "127.0.0.1:5001/kubevirt/cirros-container-disk-demo:devel"
        );
        let r = cache
            .resolve_reference("d", "quay.io/containerdisks/fedora")
            .unwrap();
        assert_eq!(r.whole(), "quay.io/containerdisks/fedora:latest");
        let err = cache.resolve_reference("d", "Not A Ref!").unwrap_err();
        assert!(matches!(err, DiskPrepError::InvalidImageReference { .. }));
        assert_eq!(PullPolicy::default_for("quay.io/x/y"), PullPolicy::Always);
        assert_eq!(
            PullPolicy::default_for("quay.io/x/y:latest"),
            PullPolicy::Always
        );
        assert_eq!(
            PullPolicy::default_for("quay.io/x/y:1.0"),
            PullPolicy::IfNotPresent
        );
    }

    #[test]
    fn path_selector() {
        assert_eq!(Selector::new("v", None).unwrap(), Selector::Convention);
        assert_eq!(Selector::new("v", Some("")).unwrap(), Selector::Convention);
        let s = Selector::new("v", Some("/custom/disk.img")).unwrap();
        assert_eq!(s, Selector::Exact("custom/disk.img".into()));
        assert_eq!(
            s.matches(Path::new("./custom/disk.img")).as_deref(),
            Some("custom/disk.img")
        );
        assert_eq!(s.matches(Path::new("custom/disk.img2")), None);
        assert_ne!(
            s.cache_suffix(),
            Selector::new("v", Some("/other")).unwrap().cache_suffix()
        );
        for bad in ["/", "/a/../b", "/a//b", "/dir/", "./a"] {
            let err = Selector::new("v", Some(bad)).unwrap_err();
            assert!(
                err.to_string().contains("containerDisk.path"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn docker_config_credentials() {
        let cfg = br#"{"auths":{"registry:5000":{"auth":"dXNlcjpwYTpzcw=="},
            "https://index.docker.io/v1/":{"username":"hub","password":"secret"}}}"#;
        let c = RegistryCredentials::from_docker_config("v", "registry:5000/a/b:c", cfg)
            .unwrap()
            .unwrap();
        assert_eq!(
            (c.username.as_str(), c.password.as_str()),
            ("user", "pa:ss")
        );
        assert!(!format!("{c:?}").contains("pa:ss"));
        let c = RegistryCredentials::from_docker_config("v", "library/busybox", cfg)
            .unwrap()
            .unwrap();
        assert_eq!(c.username, "hub");
        assert_eq!(
            RegistryCredentials::from_docker_config("v", "quay.io/x/y", cfg).unwrap(),
            None
        );
        let err = RegistryCredentials::from_docker_config("v", "quay.io/x/y", b"[1]").unwrap_err();
        assert!(
            err.to_string().contains("containerDisk.imagePullSecret"),
            "{err}"
        );
    }

    #[test]
    fn tar_paths() {
        assert_eq!(
            disk_entry_name(Path::new("disk/disk.qcow2")).as_deref(),
            Some("disk.qcow2")
        );
        assert_eq!(
            disk_entry_name(Path::new("./disk/x.img")).as_deref(),
            Some("x.img")
        );
        assert_eq!(
            disk_entry_name(Path::new("/disk/x.img")).as_deref(),
            Some("x.img")
        );
        assert_eq!(disk_entry_name(Path::new("disk/")), None);
        assert_eq!(disk_entry_name(Path::new("disk/a/b")), None);
        assert_eq!(disk_entry_name(Path::new("disk/.wh.x")), None);
        assert_eq!(disk_entry_name(Path::new("etc/passwd")), None);
    }
}
