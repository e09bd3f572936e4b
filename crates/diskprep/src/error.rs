//! The one error type of this crate. Every variant names the volume it is about, so the
//! launcher can put the message into the VMI's status as is.

use std::path::PathBuf;

/// Result alias for this crate.
pub type Result<T, E = DiskPrepError> = std::result::Result<T, E>;

/// Why a volume could not be turned into a file QEMU can open.
#[derive(Debug, thiserror::Error)]
pub enum DiskPrepError {
    /// A field of the volume source is set to something we reject (bad value, conflicting fields).
    #[error("volume {volume}: {field}: {reason}")]
    InvalidField {
        volume: String,
        field: String,
        reason: String,
    },

    /// A field is valid for KubeVirt but not implemented here; never silently ignored.
    #[error("volume {volume}: {field} is not supported: {reason}")]
    Unsupported {
        volume: String,
        field: String,
        reason: String,
    },

    /// A Kubernetes quantity (capacity) could not be understood.
    #[error("volume {volume}: {field}: invalid quantity {value:?}")]
    InvalidQuantity {
        volume: String,
        field: String,
        value: String,
        #[source]
        source: crate::quantity::QuantityError,
    },

    /// A path given for the volume is unacceptable (relative, contains `..`, wrong file type).
    #[error("volume {volume}: path {path}: {reason}")]
    InvalidPath {
        volume: String,
        path: PathBuf,
        reason: String,
    },

    /// A hostDisk of type `Disk` points at a file that does not exist.
    #[error("volume {volume}: hostDisk {path} does not exist (type Disk requires an existing file; use DiskOrCreate to create it)")]
    HostDiskMissing { volume: String, path: PathBuf },

    /// A hostDisk path lies outside every directory the node allows host disks in.
    #[error("volume {volume}: {}", host_disk_not_allowed(path, allowed))]
    HostDiskNotAllowed {
        volume: String,
        path: PathBuf,
        /// The allowed directories; empty when hostDisk is disabled on the node.
        allowed: Vec<PathBuf>,
    },

    /// A disk image's content names other files (backing or data file, extents) or is in a
    /// format not accepted from where it came; QEMU must not follow it.
    #[error("volume {volume}: disk image {path} refused: {reason}")]
    UnsafeImage {
        volume: String,
        path: PathBuf,
        reason: String,
    },

    /// The disk of a containerDisk image names other files or is not raw or qcow2.
    #[error("volume {volume}: image {image}: {path} refused: {reason}")]
    UnsafeContainerDisk {
        volume: String,
        image: String,
        /// The disk's path inside the image (`/disk/disk.qcow2`).
        path: String,
        reason: String,
    },

    /// A file operation failed.
    #[error("volume {volume}: {action} {path}")]
    Io {
        volume: String,
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The target file exists already and we refuse to overwrite it.
    #[error("volume {volume}: {path} already exists")]
    AlreadyExists { volume: String, path: PathBuf },

    /// `qemu-img` could not be started or failed.
    #[error("volume {volume}: qemu-img {args} failed ({status}): {stderr}")]
    QemuImg {
        volume: String,
        args: String,
        status: String,
        stderr: String,
    },

    /// The ISO image could not be built.
    #[error("volume {volume}: building the {label} ISO")]
    Iso {
        volume: String,
        label: String,
        #[source]
        source: crate::iso9660::IsoError,
    },

    /// The containerDisk image reference cannot be parsed.
    #[error(
        "volume {volume}: containerDisk.image {image:?} is not a valid image reference: {reason}"
    )]
    InvalidImageReference {
        volume: String,
        image: String,
        reason: String,
    },

    /// The registry says the image (or tag) does not exist.
    #[error("volume {volume}: image {image} not found in registry {registry}")]
    ImageNotFound {
        volume: String,
        image: String,
        registry: String,
    },

    /// The registry wants (other) credentials.
    #[error("volume {volume}: registry {registry} refused access to {image} ({})", if *with_credentials { "the imagePullSecret credentials were rejected" } else { "it needs credentials: set containerDisk.imagePullSecret" })]
    Unauthorized {
        volume: String,
        image: String,
        registry: String,
        with_credentials: bool,
    },

    /// Talking to the registry failed (network, HTTP status, protocol).
    #[error("volume {volume}: pulling {image} from registry {registry}")]
    Registry {
        volume: String,
        image: String,
        registry: String,
        #[source]
        source: Box<oci_client::errors::OciDistributionError>,
    },

    /// A blob's content does not match the digest the manifest promised.
    #[error("volume {volume}: image {image}: blob {expected} has digest {actual}; refusing corrupted content")]
    DigestMismatch {
        volume: String,
        image: String,
        expected: String,
        actual: String,
    },

    /// `imagePullPolicy: Never` and the image is not in the cache.
    #[error(
        "volume {volume}: image {image} is not in the local cache and imagePullPolicy is Never"
    )]
    NotCached { volume: String, image: String },

    /// The image does not follow the containerDisk convention.
    #[error("volume {volume}: image {image} is not a containerDisk: {reason}")]
    NotAContainerDisk {
        volume: String,
        image: String,
        reason: String,
    },

    /// A layer uses a media type or compression we do not read.
    #[error("volume {volume}: image {image}: layer {digest} has unsupported media type {media_type:?} ({reason})")]
    UnsupportedLayer {
        volume: String,
        image: String,
        digest: String,
        media_type: String,
        reason: String,
    },

    /// A background task died (panicked or was cancelled).
    #[error("volume {volume}: internal task failed: {reason}")]
    Task { volume: String, reason: String },
}

fn host_disk_not_allowed(path: &std::path::Path, allowed: &[PathBuf]) -> String {
    if allowed.is_empty() {
        format!("hostDisk.path {path:?} cannot be used: hostDisk is disabled on this node (no host disk directory is allowed)")
    } else {
        let dirs: Vec<String> = allowed.iter().map(|d| format!("{d:?}")).collect();
        format!(
            "hostDisk.path {path:?} is not beneath an allowed host disk directory ({})",
            dirs.join(", ")
        )
    }
}

impl DiskPrepError {
    pub(crate) fn io(
        volume: &str,
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        DiskPrepError::Io {
            volume: volume.to_owned(),
            action,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn invalid(volume: &str, field: &str, reason: impl Into<String>) -> Self {
        DiskPrepError::InvalidField {
            volume: volume.to_owned(),
            field: field.to_owned(),
            reason: reason.into(),
        }
    }
}
