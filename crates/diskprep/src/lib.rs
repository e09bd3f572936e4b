//! kubevirt-diskprep: turns KubeVirt volumes into files QEMU opens (see README.md).
//!
//! - [`cloudinit`]: NoCloud (`cidata`) and ConfigDrive (`config-2`) seed ISOs, pure Rust.
//! - [`containerdisk`]: OCI pull with registry mapping, digest-verified blob cache,
//!   extracted read-only base per manifest digest.
//! - [`overlay`]: qcow2 copy-on-write overlays over containerDisk / ephemeral bases.
//! - [`emptydisk`], [`hostdisk`]: blank and host-path disks.

pub mod cloudinit;
pub mod containerdisk;
pub mod emptydisk;
pub mod error;
pub mod format;
mod fsutil;
pub mod hostdisk;
pub mod iso9660;
pub mod overlay;
mod qemu_img;
pub mod quantity;

pub use cloudinit::{CloudInitKind, CloudInitSource, InstanceIdentity};
pub use containerdisk::{
    ContainerDiskCache, PruneStats, PullPolicy, PullProgress, PullRequest, PulledDisk,
    RegistryConfig, RegistryCredentials,
};
pub use emptydisk::create_empty_disk;
pub use error::{DiskPrepError, Result};
pub use format::DiskFormat;
pub use hostdisk::{prepare_host_disk, HostDisk, HostDiskType};
pub use overlay::create_overlay;
