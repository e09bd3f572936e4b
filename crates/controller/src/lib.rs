//! kubevirt-controller: the VirtualMachine and VirtualMachineInstance controllers
//! (upstream's virt-controller), the same code against the embedded API server and a real
//! cluster.
//!
//! Layers, bottom up:
//! - [`runstrategy`], [`vm_status`], [`vmi_status`]: pure decisions over `kubevirt-api`
//!   types (no client, no clock reads; `now` is an argument) with unit tests;
//! - [`vm_controller`], [`vmi_controller`]: kube-rs `Controller`s wiring those decisions to
//!   the API (events, finalizers and status patches from `kubevirt-reconcile`).

pub mod clone;
pub mod datavolumes;
pub mod error;
pub mod evacuation;
pub mod install;
pub mod migration;
pub mod operation;
pub mod restore;
pub mod runstrategy;
pub mod snapshot;
pub mod vm_controller;
pub mod vm_status;
pub mod vmi_controller;
pub mod vmi_status;

pub use error::{ControllerError, Result};
