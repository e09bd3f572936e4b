//! kubevirt-controller: the VirtualMachine and VirtualMachineInstance controllers.
//!
//! Layers, bottom up:
//! - [`model`]: typed views of the VM/VMI fields the controllers read, parsed from the
//!   objects' JSON so fields this crate does not know pass through untouched;
//! - [`runstrategy`], [`status`], [`statechange`]: pure decisions (no client, no clock
//!   reads; `now` is an argument) with unit tests;
//! - [`vm_controller`], [`vmi_controller`]: kube-rs `Controller`s wiring those decisions to
//!   the API, with [`events`] and [`finalizer`] helpers.
//!
//! The controllers only speak the Kubernetes API through kube-rs, so the same code runs
//! against the embedded API server and against a real cluster.

pub mod error;
pub mod events;
pub mod finalizer;
pub mod model;
pub mod resources;
pub mod runstrategy;
pub mod statechange;
pub mod status;
pub mod vm_controller;
pub mod vmi_controller;

pub use error::{ControllerError, Result};
