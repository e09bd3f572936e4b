//! Volumes of a running VM: hot-plug and unplug, online growth, CD-ROM media.
//!
//! The launcher (root) checks and opens every image itself: the request's path must be a
//! regular file or a block device, its content must not name another file (the check
//! every disk from outside gets before boot, `kubevirt-diskprep`), and QEMU receives the
//! open descriptors over QMP, never the path. The hypervisor layer owns the QMP sequences
//! and knows which block node each disk reads; this module owns the volume names, the
//! checks and the status.

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use kubevirt_diskprep::inspect::{self, ImagePolicy};
use kubevirt_hypervisor::{DiskBus, DiskDevice, DiskFormat, DiskImage, HotplugDisk};

use crate::protocol::{
    HotplugBus, HotplugVolumeRequest, HotplugVolumeStatus, InsertMediumRequest, InsertedMedium,
};
use crate::vm::{Vm, VmError};

/// How long an unplug waits for the guest to release the device.
pub const UNPLUG_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a volume request was refused.
#[derive(Debug, thiserror::Error)]
pub enum HotplugError {
    /// The request itself is wrong.
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    /// No volume of that name.
    #[error("volume {name} is not attached")]
    NotFound { name: String },
    /// Not possible in the volume's or the VM's current state.
    #[error("volume {name}: {reason}")]
    Conflict { name: String, reason: String },
    /// The image's content is not acceptable (it names another file, or has the wrong
    /// format).
    #[error(transparent)]
    Image(#[from] kubevirt_diskprep::DiskPrepError),
    /// The image cannot be read.
    #[error("volume {name}: {path}: {source}")]
    Io {
        name: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A hot-plugged volume and the image it reads (kept open: its size is read on resize).
struct Attached {
    status: HotplugVolumeStatus,
    /// The image's path, for messages.
    path: PathBuf,
    format: DiskFormat,
    image: Option<DiskImage>,
}

/// The hot-plugged volumes of one VM and the media inserted into its boot cdroms, in the
/// order they came.
#[derive(Default)]
pub(crate) struct Volumes {
    attached: Vec<Attached>,
    inserted: Vec<InsertedMedium>,
}

impl Volumes {
    fn get(&self, name: &str) -> Option<&Attached> {
        self.attached.iter().find(|a| a.status.name == name)
    }

    fn statuses(&self) -> Vec<HotplugVolumeStatus> {
        self.attached.iter().map(|a| a.status.clone()).collect()
    }
}

/// A VMI volume name: a DNS label (`[a-z0-9-]`, at most 63, alphanumeric at both ends).
pub fn validate_name(name: &str) -> Result<(), HotplugError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(HotplugError::Invalid {
            field: "name",
            reason: format!(
                "{name:?} is not a volume name (up to 63 of [a-z0-9-], alphanumeric at both ends)"
            ),
        })
    }
}

/// The serial rule of disks at boot (`translate`).
pub fn validate_serial(serial: &str) -> Result<(), HotplugError> {
    let ok = !serial.is_empty()
        && serial.len() <= 20
        && serial
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(HotplugError::Invalid {
            field: "serial",
            reason: format!("{serial:?}: up to 20 characters of [A-Za-z0-9_-]"),
        })
    }
}

/// `raw` (the default) or `qcow2`.
pub fn parse_format(format: Option<&str>) -> Result<DiskFormat, HotplugError> {
    match format {
        None | Some("raw") => Ok(DiskFormat::Raw),
        Some("qcow2") => Ok(DiskFormat::Qcow2),
        Some(other) => Err(HotplugError::Invalid {
            field: "format",
            reason: format!("{other:?}: raw or qcow2 expected"),
        }),
    }
}

/// Checks a hot-plug request that needs no file system.
pub fn validate_request(req: &HotplugVolumeRequest) -> Result<DiskFormat, HotplugError> {
    validate_name(&req.name)?;
    if let Some(s) = &req.serial {
        validate_serial(s)?;
    }
    if req.cdrom && req.bus == HotplugBus::Virtio {
        return Err(HotplugError::Invalid {
            field: "bus",
            reason: "a cdrom cannot use the virtio bus (use scsi)".into(),
        });
    }
    if !req.path.is_absolute() {
        return Err(HotplugError::Invalid {
            field: "path",
            reason: format!("{} is not an absolute path", req.path.display()),
        });
    }
    parse_format(req.format.as_deref())
}

/// Opens the image at `path` for QEMU and checks it: a regular file or a block device
/// whose content names no other file and matches `format`. Returns it with its size.
fn open_image(
    name: &str,
    path: &Path,
    format: DiskFormat,
    writable: bool,
) -> Result<(DiskImage, u64), HotplugError> {
    let io = |source| HotplugError::Io {
        name: name.to_string(),
        path: path.to_path_buf(),
        source,
    };
    let kind_ok = |t: std::fs::FileType| t.is_file() || t.is_block_device();
    // Checked before opening, so a FIFO or a device never blocks or reacts to an open...
    let meta = std::fs::metadata(path).map_err(io)?;
    if !kind_ok(meta.file_type()) {
        return Err(HotplugError::Invalid {
            field: "path",
            reason: format!("{} is not a regular file or a block device", path.display()),
        });
    }
    let image = DiskImage::open(path, format, writable).map_err(|e| match e {
        kubevirt_hypervisor::HypervisorError::Io { source, .. } => io(source),
        other => io(std::io::Error::other(other.to_string())),
    })?;
    // ...and again after, on what was opened.
    let mut file = std::fs::File::from(image.read_only.try_clone().map_err(io)?);
    if !kind_ok(file.metadata().map_err(io)?.file_type()) {
        return Err(HotplugError::Invalid {
            field: "path",
            reason: format!("{} changed while it was opened", path.display()),
        });
    }
    let info = inspect::inspect_image(&mut file).map_err(io)?;
    match format {
        DiskFormat::Raw => {
            info.accept(name, path, ImagePolicy::OpenedAsRaw)?;
        }
        DiskFormat::Qcow2 => {
            let found = info.accept(name, path, ImagePolicy::Imported)?;
            if found != kubevirt_diskprep::DiskFormat::Qcow2 {
                return Err(HotplugError::Invalid {
                    field: "format",
                    reason: format!("{} is not a qcow2 image", path.display()),
                });
            }
        }
    }
    let size = image.size().map_err(io)?;
    Ok((image, size))
}

/// The size of a boot disk's image file now.
fn file_size(name: &str, path: &Path) -> Result<u64, HotplugError> {
    let io = |source| HotplugError::Io {
        name: name.to_string(),
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    if meta.file_type().is_block_device() {
        let image = DiskImage::open(path, DiskFormat::Raw, false)
            .map_err(|e| io(std::io::Error::other(e.to_string())))?;
        return image.size().map_err(io);
    }
    Ok(meta.len())
}

impl Vm {
    /// Runs `f` on a blocking thread with the volumes locked, then publishes them.
    async fn with_volumes<T: Send + 'static>(
        self: &Arc<Self>,
        operation: &str,
        f: impl FnOnce(&Vm, &mut Volumes) -> Result<T, VmError> + Send + 'static,
    ) -> Result<T, VmError> {
        self.require_live(operation)?;
        let vm = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut volumes = vm.volumes.lock().unwrap_or_else(|p| p.into_inner());
            let out = f(&vm, &mut volumes);
            let list = volumes.statuses();
            let inserted = volumes.inserted.clone();
            vm.status.update(|s| {
                s.hotplug_volumes = list;
                s.inserted_media = inserted;
            });
            out
        })
        .await
        .map_err(|e| VmError::Task {
            reason: e.to_string(),
        })?
    }

    /// Hot-plugs a volume; returns its status once QEMU accepted the device.
    pub async fn hotplug_volume(
        self: &Arc<Self>,
        req: HotplugVolumeRequest,
    ) -> Result<HotplugVolumeStatus, VmError> {
        let format = validate_request(&req)?;
        self.with_volumes("hot-plug", move |vm, volumes| {
            if volumes.get(&req.name).is_some() {
                return Err(HotplugError::Conflict {
                    name: req.name.clone(),
                    reason: "a volume of that name is attached already".into(),
                }
                .into());
            }
            let read_only = req.read_only || req.cdrom;
            let (image, size_bytes) = open_image(&req.name, &req.path, format, !read_only)?;
            let disk = HotplugDisk {
                name: req.name.clone(),
                bus: match req.bus {
                    HotplugBus::Scsi => DiskBus::Scsi,
                    HotplugBus::Virtio => DiskBus::Virtio,
                },
                device: if req.cdrom {
                    DiskDevice::Cdrom
                } else {
                    DiskDevice::Disk
                },
                readonly: read_only,
                serial: req.serial.clone(),
            };
            let attached = vm.domain.attach_disk(&disk, &image)?;
            let status = HotplugVolumeStatus {
                name: req.name.clone(),
                bus: req.bus,
                serial: req.serial.clone(),
                target: attached.device_id,
                read_only,
                cdrom: req.cdrom,
                size_bytes,
            };
            volumes.attached.push(Attached {
                status: status.clone(),
                path: req.path.clone(),
                format,
                image: Some(image),
            });
            Ok(status)
        })
        .await
    }

    /// Unplugs a hot-plugged volume once the guest released it.
    pub async fn unplug_volume(self: &Arc<Self>, name: String) -> Result<(), VmError> {
        validate_name(&name)?;
        self.with_volumes("unplug", move |vm, volumes| {
            if volumes.get(&name).is_none() {
                return Err(HotplugError::NotFound { name }.into());
            }
            vm.domain.detach_disk(&name, UNPLUG_TIMEOUT)?;
            volumes.attached.retain(|a| a.status.name != name);
            Ok(())
        })
        .await
    }

    /// Tells the guest that the raw image of volume `name` (a boot disk or a hot-plugged
    /// one) has grown: the disk takes the file's current size.
    pub async fn resize_volume(self: &Arc<Self>, name: String) -> Result<(), VmError> {
        validate_name(&name)?;
        self.with_volumes("resize", move |vm, volumes| {
            let conflict = |reason: &str| HotplugError::Conflict {
                name: name.clone(),
                reason: reason.to_string(),
            };
            let size = match volumes.attached.iter_mut().find(|a| a.status.name == name) {
                Some(a) => {
                    if a.status.read_only || a.status.cdrom {
                        return Err(conflict("a read-only volume cannot grow").into());
                    }
                    if a.format != DiskFormat::Raw {
                        return Err(conflict("only raw images grow with their file").into());
                    }
                    let image = a.image.as_ref().ok_or_else(|| conflict("no medium"))?;
                    let size = image.size().map_err(|source| HotplugError::Io {
                        name: name.clone(),
                        path: a.path.clone(),
                        source,
                    })?;
                    vm.domain.resize_disk(&name, size)?;
                    a.status.size_bytes = size;
                    tracing::info!(volume = %name, size, "disk resized");
                    return Ok(());
                }
                None => {
                    let cfg = vm.domain.config();
                    let d = cfg
                        .disks
                        .iter()
                        .find(|d| d.name == name)
                        .ok_or_else(|| HotplugError::NotFound { name: name.clone() })?;
                    if d.readonly || d.device == DiskDevice::Cdrom {
                        return Err(conflict("a read-only disk cannot grow").into());
                    }
                    if d.format != DiskFormat::Raw || d.backing.is_some() {
                        return Err(conflict(
                            "only disks on a raw image (a claim's, a hostDisk) grow with their file",
                        )
                        .into());
                    }
                    let path = d.path.as_ref().ok_or_else(|| conflict("no medium"))?;
                    file_size(&name, path)?
                }
            };
            vm.domain.resize_disk(&name, size)?;
            tracing::info!(volume = %name, size, "disk resized");
            Ok(())
        })
        .await
    }

    /// Ejects the medium of cdrom `name` and inserts `medium` instead, if any.
    pub async fn change_medium(
        self: &Arc<Self>,
        name: String,
        medium: Option<InsertMediumRequest>,
    ) -> Result<(), VmError> {
        validate_name(&name)?;
        let format = match &medium {
            Some(m) => {
                if !m.path.is_absolute() {
                    return Err(HotplugError::Invalid {
                        field: "path",
                        reason: format!("{} is not an absolute path", m.path.display()),
                    }
                    .into());
                }
                parse_format(m.format.as_deref())?
            }
            None => DiskFormat::Raw,
        };
        self.with_volumes("change medium", move |vm, volumes| {
            let plugged = volumes.get(&name).is_some();
            let boot = vm.domain.config().disks.iter().any(|d| d.name == name);
            if !plugged && !boot {
                return Err(HotplugError::NotFound { name }.into());
            }
            let opened = match &medium {
                Some(m) => Some(open_image(&name, &m.path, format, false)?),
                None => None,
            };
            vm.domain
                .change_medium(&name, opened.as_ref().map(|(image, _)| image))?;
            let size_bytes = opened.as_ref().map(|(_, s)| *s).unwrap_or(0);
            if let Some(a) = volumes.attached.iter_mut().find(|a| a.status.name == name) {
                a.status.size_bytes = size_bytes;
                if let Some(m) = &medium {
                    a.path = m.path.clone();
                }
                a.format = format;
                a.image = opened.map(|(image, _)| image);
            } else {
                volumes.inserted.retain(|m| m.name != name);
                if let Some(m) = &medium {
                    volumes.inserted.push(InsertedMedium {
                        target: format!("ua-{name}"),
                        name: name.clone(),
                        path: m.path.clone(),
                        size_bytes,
                    });
                }
            }
            tracing::info!(volume = %name, inserted = medium.is_some(), "cdrom medium changed");
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(name: &str) -> HotplugVolumeRequest {
        HotplugVolumeRequest {
            name: name.into(),
            path: "/images/data.img".into(),
            bus: HotplugBus::Scsi,
            serial: None,
            read_only: false,
            cdrom: false,
            format: None,
        }
    }

    #[test]
    fn names_serials_formats_and_buses_are_checked() {
        assert_eq!(validate_request(&req("data-1")).unwrap(), DiskFormat::Raw);
        for bad in ["", "Data", "a_b", "-a", "a-", "a/b", &"a".repeat(64)] {
            assert!(
                matches!(
                    validate_request(&req(bad)),
                    Err(HotplugError::Invalid { field: "name", .. })
                ),
                "{bad:?}"
            );
        }
        let mut r = req("d");
        r.serial = Some("bad serial".into());
        assert!(matches!(
            validate_request(&r),
            Err(HotplugError::Invalid {
                field: "serial",
                ..
            })
        ));
        r.serial = Some("SER_1-x".into());
        assert!(validate_request(&r).is_ok());
        r.format = Some("vmdk".into());
        assert!(matches!(
            validate_request(&r),
            Err(HotplugError::Invalid {
                field: "format",
                ..
            })
        ));
        r.format = Some("qcow2".into());
        assert_eq!(validate_request(&r).unwrap(), DiskFormat::Qcow2);
        r.cdrom = true;
        r.bus = HotplugBus::Virtio;
        assert!(matches!(
            validate_request(&r),
            Err(HotplugError::Invalid { field: "bus", .. })
        ));
        let mut r = req("d");
        r.path = "relative.img".into();
        assert!(matches!(
            validate_request(&r),
            Err(HotplugError::Invalid { field: "path", .. })
        ));
    }

    #[test]
    fn images_must_be_files_that_name_no_other_file() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("raw.img");
        std::fs::write(&raw, vec![0u8; 1 << 20]).unwrap();
        let (_, size) = open_image("d", &raw, DiskFormat::Raw, true).unwrap();
        assert_eq!(size, 1 << 20);
        // A directory is no image.
        let err = open_image("d", dir.path(), DiskFormat::Raw, false).unwrap_err();
        assert!(
            matches!(err, HotplugError::Invalid { field: "path", .. }),
            "{err}"
        );
        // Missing.
        let err = open_image("d", &dir.path().join("nope"), DiskFormat::Raw, false).unwrap_err();
        assert!(matches!(err, HotplugError::Io { .. }), "{err}");
        // A raw file asked for as qcow2.
        let err = open_image("d", &raw, DiskFormat::Qcow2, false).unwrap_err();
        assert!(err.to_string().contains("qcow2"), "{err}");
        // A qcow2 whose header names a backing file is refused, even as raw.
        let base = dir.path().join("base.img");
        std::fs::write(&base, vec![0u8; 65536]).unwrap();
        let top = dir.path().join("top.qcow2");
        let st = std::process::Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
            .arg(&base)
            .arg(&top)
            .status()
            .unwrap();
        assert!(st.success());
        for format in [DiskFormat::Raw, DiskFormat::Qcow2] {
            let err = open_image("d", &top, format, false).unwrap_err();
            assert!(matches!(err, HotplugError::Image(_)), "{err}");
        }
    }
}
