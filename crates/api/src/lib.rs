//! kubevirt-api: the `kubevirt.io/v1` API in Rust — types, defaulting, validation and CRDs.
//!
//! Pure types and functions: no IO, no clients. See README.md.
//!
//! - [`v1`]: `VirtualMachine`, `VirtualMachineInstance`, `VirtualMachineInstanceMigration`,
//!   `VirtualMachineInstanceReplicaSet` and their parts (kube-rs `CustomResource`s).
//! - [`cdi`]: CDI's `DataVolume` (`cdi.kubevirt.io/v1beta1`).
//! - [`snapshot`]: volume snapshots (`snapshot.storage.k8s.io/v1`) and VM snapshots and
//!   restores (`snapshot.kubevirt.io/v1beta1`).
//! - [`export`]: VM exports (`export.kubevirt.io/v1beta1`).
//! - [`access_credentials`]: `spec.accessCredentials` (SSH keys, passwords) parsed and validated.
//! - [`admission`]: decode + default + validate with field-path errors; unknown-field listing.
//! - [`defaults`], [`validation`]: the typed building blocks of admission.
//! - [`statechange`]: the VM `start`/`stop`/`restart` subresources' rules (virt-api's).
//! - [`launcher_pod`]: the virt-launcher Pod of a VMI, as virt-controller renders it.
//! - [`support`]: valid API features this project cannot run yet.
//! - [`host_disk`]: which hostDisk paths the operator allows on this host.
//! - [`crds`]: CRDs generated from the types.
//! - [`install`]: the install's `KubeVirt` object (its configuration and status).
//! - [`quantity`]: Kubernetes quantities.

pub mod access_credentials;
pub mod admission;
pub mod cdi;
pub mod clone;
pub mod crds;
pub mod defaults;
pub mod export;
pub mod host_disk;
pub mod hotplug;
pub mod install;
pub mod launcher_pod;
pub mod migration;
pub mod quantity;
pub mod snapshot;
pub mod statechange;
pub mod subresources;
pub mod support;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod v1;
pub mod validation;

pub use quantity::Quantity;
