//! Runs the volume work a translation asks for, through `kubevirt-diskprep`.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use kubevirt_diskprep as diskprep;
use kubevirt_hypervisor::{BackingImage, DiskFormat, Firmware};

use crate::translate::{Translation, VolumePrep};

/// Why a volume could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    /// diskprep refused or failed (its message names the volume and field).
    #[error(transparent)]
    DiskPrep(#[from] diskprep::DiskPrepError),
    /// Something the translation asked for is not available on this node.
    #[error("volume {volume}: {reason}")]
    Unavailable { volume: String, reason: String },
}

/// Where containerDisks come from.
#[derive(Debug, Clone, Default)]
pub struct ContainerDiskConfig {
    /// Cache directory (blobs by digest, extracted bases).
    pub cache_dir: PathBuf,
    /// Registry host as written in images -> registry to contact (`http://` = plain HTTP).
    pub mirrors: std::collections::HashMap<String, String>,
    /// Registries reached over plain HTTP.
    pub insecure: Vec<String>,
}

/// A live-migration target on this node takes over the files its source made in its run
/// directory (empty disks, overlays, cloud-init ISOs, UEFI variables) instead of making
/// them anew, so its QEMU runs on what the guest wrote. Until the guest arrived the target
/// QEMU does not write them (its disks are inactive), the source's afterwards.
#[derive(Debug, Clone, Copy)]
pub struct TakeOver<'a> {
    /// This launcher's run directory.
    pub run_dir: &'a Path,
    /// The source launcher's, beside it.
    pub source_run_dir: &'a Path,
}

impl TakeOver<'_> {
    /// Hard-links the source's file at `target`'s place in its run directory to `target`.
    /// The inode stays root's and 0600, right for any VM's QEMU: each gets descriptors
    /// from its launcher, never the path; the source's QEMU keeps its own.
    pub fn link(&self, volume: &str, target: &Path) -> Result<(), PrepareError> {
        let unavailable = |reason: String| PrepareError::Unavailable {
            volume: volume.to_string(),
            reason,
        };
        let relative = target.strip_prefix(self.run_dir).map_err(|_| {
            unavailable(format!(
                "{} is not in the run directory, so not the migration source's",
                target.display()
            ))
        })?;
        let source = self.source_run_dir.join(relative);
        let _ = std::fs::remove_file(target);
        std::fs::hard_link(&source, target).map_err(|e| {
            unavailable(format!(
                "taking over {} from the migration source: {e}",
                source.display()
            ))
        })
    }
}

fn new_cache(c: &ContainerDiskConfig) -> diskprep::ContainerDiskCache {
    diskprep::ContainerDiskCache::new(
        c.cache_dir.clone(),
        diskprep::RegistryConfig {
            mirrors: c.mirrors.clone(),
            insecure: c.insecure.clone(),
        },
    )
}

async fn pull(
    cache: &diskprep::ContainerDiskCache,
    volume: &str,
    image: &str,
    path: Option<&str>,
    pull_policy: Option<&str>,
) -> Result<diskprep::PulledDisk, PrepareError> {
    let policy = match pull_policy {
        Some(p) => p.parse().map_err(|reason| PrepareError::Unavailable {
            volume: volume.to_string(),
            reason,
        })?,
        None => diskprep::PullPolicy::default_for(image),
    };
    let vol = volume.to_string();
    let progress = move |p: diskprep::PullProgress| {
        tracing::debug!(volume = %vol, done = p.bytes_done, total = p.bytes_total, "image pull");
    };
    Ok(cache
        .pull_disk(volume, image, path, policy, &progress)
        .await?)
}

fn to_hv(f: diskprep::DiskFormat) -> DiskFormat {
    match f {
        diskprep::DiskFormat::Raw => DiskFormat::Raw,
        diskprep::DiskFormat::Qcow2 => DiskFormat::Qcow2,
    }
}

fn set_format(t: &mut Translation, path: &Path, format: DiskFormat) {
    for d in t
        .domain
        .disks
        .iter_mut()
        .filter(|d| d.path.as_deref() == Some(path))
    {
        d.format = format;
    }
}

/// The disk at `overlay` is a qcow2 over `base`: QEMU gets exactly this chain.
fn set_overlay(t: &mut Translation, overlay: &Path, base: &Path, base_format: DiskFormat) {
    for d in t
        .domain
        .disks
        .iter_mut()
        .filter(|d| d.path.as_deref() == Some(overlay))
    {
        d.format = DiskFormat::Qcow2;
        d.backing = Some(BackingImage {
            path: base.to_path_buf(),
            format: base_format,
        });
    }
}

/// Prepares every volume of `t` (creating overlays, empty disks, ISOs, pulling images) and
/// fixes up the disk formats in `t.domain`. Files created in the run dir are removed with it.
/// With `take_over` (a migration target), those files are the source's instead.
/// Returns the files opened for QEMU (hostDisks, named `/proc/self/fd/N` in `t.domain`):
/// keep them open until QEMU has started.
pub async fn prepare_volumes(
    t: &mut Translation,
    containerdisks: &ContainerDiskConfig,
    take_over: Option<TakeOver<'_>>,
) -> Result<Vec<std::fs::File>, PrepareError> {
    let mut held = Vec::new();
    let mut cache: Option<diskprep::ContainerDiskCache> = None;
    for prep in t.volumes.clone() {
        match prep {
            VolumePrep::Existing { volume, path } => {
                diskprep::inspect::inspect_path(&volume, &path)?.accept(
                    &volume,
                    &path,
                    diskprep::inspect::ImagePolicy::OpenedAsRaw,
                )?;
                set_format(t, &path, DiskFormat::Raw);
            }
            VolumePrep::HostDisk {
                volume,
                path,
                dirs,
                capacity,
            } => {
                let kind = match capacity {
                    Some(_) => diskprep::HostDiskType::DiskOrCreate,
                    None => diskprep::HostDiskType::Disk,
                };
                let d = diskprep::open_host_disk(&volume, &dirs, &path, kind, capacity.as_deref())?;
                // QEMU gets this very file: nothing resolves the path again.
                let opened = PathBuf::from(format!("/proc/self/fd/{}", d.file.as_raw_fd()));
                for disk in t
                    .domain
                    .disks
                    .iter_mut()
                    .filter(|x| x.path.as_ref() == Some(&path))
                {
                    disk.path = Some(opened.clone());
                    disk.format = DiskFormat::Raw;
                }
                held.push(d.file);
            }
            VolumePrep::EmptyDisk {
                volume,
                target,
                capacity,
            } => {
                match take_over {
                    Some(from) => from.link(&volume, &target)?,
                    None => {
                        let _ = std::fs::remove_file(&target);
                        diskprep::create_empty_disk(
                            &volume,
                            &target,
                            &capacity,
                            diskprep::DiskFormat::Raw,
                        )?;
                    }
                }
                set_format(t, &target, DiskFormat::Raw);
            }
            VolumePrep::Ephemeral {
                volume,
                base,
                target,
            } => {
                // A claim's disk image is raw, whatever a guest wrote into it.
                diskprep::inspect::inspect_path(&volume, &base)?.accept(
                    &volume,
                    &base,
                    diskprep::inspect::ImagePolicy::OpenedAsRaw,
                )?;
                match take_over {
                    Some(from) => from.link(&volume, &target)?,
                    None => {
                        let _ = std::fs::remove_file(&target);
                        diskprep::create_overlay(
                            &volume,
                            &base,
                            diskprep::DiskFormat::Raw,
                            &target,
                        )?;
                    }
                }
                set_overlay(t, &target, &base, DiskFormat::Raw);
            }
            VolumePrep::KernelBoot {
                volume,
                image,
                kernel_path,
                initrd_path,
                pull_policy,
            } => {
                let cache = cache.get_or_insert_with(|| new_cache(containerdisks));
                let kernel = pull(
                    cache,
                    &volume,
                    &image,
                    Some(&kernel_path),
                    pull_policy.as_deref(),
                )
                .await?;
                let initrd = match &initrd_path {
                    Some(p) => Some(
                        pull(cache, &volume, &image, Some(p), pull_policy.as_deref())
                            .await?
                            .path,
                    ),
                    None => None,
                };
                if let Some(kb) = t.domain.kernel_boot.as_mut() {
                    // Read-only cache files: QEMU only reads the kernel and initrd.
                    kb.kernel = kernel.path;
                    kb.initrd = initrd;
                }
            }
            VolumePrep::ContainerDisk {
                volume,
                image,
                path,
                pull_policy,
                target,
            } => {
                let cache = cache.get_or_insert_with(|| new_cache(containerdisks));
                let pulled = pull(
                    cache,
                    &volume,
                    &image,
                    path.as_deref(),
                    pull_policy.as_deref(),
                )
                .await?;
                tracing::info!(volume, image, digest = %pulled.manifest_digest, from_cache = pulled.from_cache, "containerDisk ready");
                // Pulled even when taken over: the overlay's backing is the cached base.
                match take_over {
                    Some(from) => from.link(&volume, &target)?,
                    None => {
                        let _ = std::fs::remove_file(&target);
                        diskprep::create_overlay(&volume, &pulled.path, pulled.format, &target)?;
                    }
                }
                set_overlay(t, &target, &pulled.path, to_hv(pulled.format));
            }
            VolumePrep::CloudInit {
                volume,
                config_drive,
                user_data,
                user_data_base64,
                user_data_secret,
                network_data,
                network_data_base64,
                network_data_secret,
                namespace,
                name,
                uid,
                hostname,
                public_keys,
                target,
            } => {
                let kind = if config_drive {
                    diskprep::CloudInitKind::ConfigDrive
                } else {
                    diskprep::CloudInitKind::NoCloud
                };
                let source = diskprep::CloudInitSource {
                    user_data,
                    user_data_base64,
                    user_data_secret,
                    network_data,
                    network_data_base64,
                    network_data_secret,
                };
                let identity = diskprep::InstanceIdentity {
                    namespace,
                    name,
                    uid,
                    hostname: Some(hostname),
                    public_keys,
                };
                match take_over {
                    Some(from) => from.link(&volume, &target)?,
                    None => {
                        let _ = std::fs::remove_file(&target);
                        diskprep::cloudinit::write_seed_iso(
                            &volume, kind, &source, &identity, &target,
                        )?;
                    }
                }
                set_format(t, &target, DiskFormat::Raw);
            }
        }
    }
    // Non-persistent UEFI variables live in the run dir too: the guest's, so taken over.
    if let (Some(from), Firmware::Uefi { vars_path, .. }) = (take_over, &t.domain.firmware) {
        if vars_path.starts_with(from.run_dir) {
            from.link("UEFI variables", vars_path)?;
        }
    }
    Ok(held)
}
