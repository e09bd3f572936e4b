//! kubevirt-diskprep: turns KubeVirt volumes into files QEMU opens (see README.md).
//!
//! - [`cloudinit`]: NoCloud (`cidata`) and ConfigDrive (`config-2`) seed ISOs, pure Rust.
//! - [`containerdisk`]: OCI pull with registry mapping, digest-verified blob cache,
//!   extracted read-only base per manifest digest.
//! - [`overlay`]: qcow2 copy-on-write overlays over containerDisk / ephemeral bases.
//! - [`emptydisk`], [`hostdisk`]: blank and host-path disks; a hostDisk is always raw and
//!   opened beneath operator-allowed directories.
//! - [`inspect`]: image formats by content and everything a header names (backing and data
//!   files, VMDK extents), with the policies deciding what QEMU may be given.

pub mod cloudinit;
pub mod containerdisk;
pub mod emptydisk;
pub mod error;
pub mod format;
mod fsutil;
pub mod hostdisk;
pub mod inspect;
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
pub use hostdisk::{open_host_disk, HostDiskFile, HostDiskType};
pub use inspect::{inspect_image, ImageFormat, ImageInfo, ImagePolicy};
pub use overlay::create_overlay;
/// The `qemu-img` this crate runs (`KUBEVIRT_QEMU_IMG` overrides it), for crates that run it too.
pub use qemu_img::program as qemu_img_program;
