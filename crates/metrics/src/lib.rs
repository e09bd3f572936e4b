//! kubevirt-metrics: KubeVirt's Prometheus metrics under upstream's names, types and
//! labels, built at scrape time from snapshots (see README.md):
//!
//! - [`families`]: the samples of one scrape, encoded through `prometheus-client`;
//! - [`domain`]: a running VMI's `kubevirt_vmi_*` families from its launcher's counters
//!   (what upstream's virt-handler serves);
//! - [`objects`]: the `kubevirt_vm_*` and `kubevirt_vmi_*` families read from VM and VMI
//!   objects (what upstream's virt-controller serves).

pub mod domain;
pub mod families;
pub mod objects;

pub use families::{Families, Labels};
