//! `spec.domain`: the virtual hardware (CPU, memory, firmware, features, devices).

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_with::skip_serializing_none;

use crate::quantity::Quantity;

/// The virtual machine's hardware.
#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DomainSpec {
    /// Resources requested/limited for the VMI's pod (and guest memory when `memory` is unset).
    pub resources: Option<ResourceRequirements>,
    /// CPU topology, model and placement.
    pub cpu: Option<Cpu>,
    /// Guest memory size and backing.
    pub memory: Option<Memory>,
    /// Emulated machine type (default q35).
    pub machine: Option<Machine>,
    /// Firmware: BIOS/EFI, SMBIOS UUID and serial, kernel boot.
    pub firmware: Option<Firmware>,
    /// Guest clock offset and timers.
    pub clock: Option<Clock>,
    /// Platform features: ACPI, APIC, Hyper-V, SMM, ...
    pub features: Option<Features>,
    /// Devices attached to the guest. Required upstream; an empty object is fine.
    pub devices: Devices,
    /// `auto` or `shared`.
    pub io_threads_policy: Option<String>,
    #[serde(default)]
    #[schemars(schema_with = "super::preserved_object")]
    pub io_threads: Option<serde_json::Value>,
    /// SMBIOS chassis information.
    pub chassis: Option<Chassis>,
    #[serde(default)]
    #[schemars(schema_with = "super::preserved_object")]
    pub launch_security: Option<serde_json::Value>,
    /// `Reboot` (default) or `Terminate`.
    pub reboot_policy: Option<String>,
}

/// Requests, limits and the guest-overhead switch.
#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourceRequirements {
    pub requests: Option<BTreeMap<String, Quantity>>,
    pub limits: Option<BTreeMap<String, Quantity>>,
    pub overcommit_guest_overhead: Option<bool>,
}

/// Guest CPU topology and placement.
#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Cpu {
    pub cores: Option<u32>,
    pub sockets: Option<u32>,
    pub threads: Option<u32>,
    pub max_sockets: Option<u32>,
    /// `host-model`, `host-passthrough` or a named model.
    pub model: Option<String>,
    pub features: Option<Vec<CpuFeature>>,
    pub dedicated_cpu_placement: Option<bool>,
    pub isolate_emulator_thread: Option<bool>,
    pub numa: Option<Numa>,
    pub realtime: Option<Realtime>,
}

/// A CPU flag and what to do with it (`force`, `require`, `optional`, `disable`, `forbid`).
#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CpuFeature {
    pub name: String,
    pub policy: Option<String>,
}

#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Numa {
    #[serde(rename = "guestMappingPassthrough")]
    pub guest_mapping_passthrough: Option<EmptyObject>,
}

#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Realtime {
    pub mask: Option<String>,
}

/// Guest memory.
#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Memory {
    pub guest: Option<Quantity>,
    pub max_guest: Option<Quantity>,
    pub hugepages: Option<Hugepages>,
}

#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Hugepages {
    pub page_size: Option<String>,
}

/// Emulated machine type, e.g. `q35` or `pc-q35-rhel9.4.0`.
#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Machine {
    #[serde(rename = "type")]
    pub machine_type: Option<String>,
}

#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Firmware {
    /// SMBIOS system UUID; defaulted from the VMI name when empty.
    pub uuid: Option<String>,
    pub bootloader: Option<Bootloader>,
    pub serial: Option<String>,
    pub kernel_boot: Option<KernelBoot>,
    #[serde(default)]
    #[schemars(schema_with = "super::preserved_object")]
    pub acpi: Option<serde_json::Value>,
}

#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Bootloader {
    pub bios: Option<Bios>,
    pub efi: Option<Efi>,
}

#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Bios {
    pub use_serial: Option<bool>,
}

#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Efi {
    pub secure_boot: Option<bool>,
    pub persistent: Option<bool>,
}

#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KernelBoot {
    pub kernel_args: Option<String>,
    pub container: Option<KernelBootContainer>,
}

#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KernelBootContainer {
    pub image: String,
    pub image_pull_secret: Option<String>,
    pub kernel_path: Option<String>,
    pub initrd_path: Option<String>,
    pub image_pull_policy: Option<String>,
}

/// Guest clock: offset (`utc` or `timezone`) and timers.
#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Clock {
    pub utc: Option<ClockOffsetUtc>,
    pub timezone: Option<String>,
    pub timer: Option<Timer>,
}

#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClockOffsetUtc {
    pub offset_seconds: Option<i32>,
}

#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Timer {
    pub hpet: Option<TimerSpec>,
    pub kvm: Option<TimerSpec>,
    pub pit: Option<TimerSpec>,
    pub rtc: Option<RtcTimer>,
    pub hyperv: Option<TimerSpec>,
}

#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TimerSpec {
    pub present: Option<bool>,
    pub tick_policy: Option<String>,
}

#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RtcTimer {
    pub present: Option<bool>,
    pub tick_policy: Option<String>,
    pub track: Option<String>,
}

/// A feature that is on unless `enabled: false`.
#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FeatureState {
    pub enabled: Option<bool>,
}

#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Features {
    pub acpi: Option<FeatureState>,
    pub apic: Option<FeatureApic>,
    pub hyperv: Option<FeatureHyperv>,
    pub hyperv_passthrough: Option<FeatureState>,
    pub smm: Option<FeatureState>,
    pub kvm: Option<FeatureKvm>,
    pub pvspinlock: Option<FeatureState>,
}

#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FeatureApic {
    pub enabled: Option<bool>,
    pub end_of_interrupt: Option<bool>,
}

#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FeatureKvm {
    pub hidden: Option<bool>,
}

/// Hyper-V enlightenments (names as upstream, all lower case).
#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct FeatureHyperv {
    pub relaxed: Option<FeatureState>,
    pub vapic: Option<FeatureState>,
    pub spinlocks: Option<FeatureSpinlocks>,
    pub vpindex: Option<FeatureState>,
    pub runtime: Option<FeatureState>,
    pub synic: Option<FeatureState>,
    pub synictimer: Option<SyNICTimer>,
    pub reset: Option<FeatureState>,
    pub vendorid: Option<FeatureVendorId>,
    pub frequencies: Option<FeatureState>,
    pub reenlightenment: Option<FeatureState>,
    pub tlbflush: Option<TlbFlush>,
    pub ipi: Option<FeatureState>,
    pub evmcs: Option<FeatureState>,
}

#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct FeatureSpinlocks {
    pub enabled: Option<bool>,
    pub spinlocks: Option<u32>,
}

#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SyNICTimer {
    pub enabled: Option<bool>,
    pub direct: Option<FeatureState>,
}

#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct FeatureVendorId {
    pub enabled: Option<bool>,
    pub vendorid: Option<String>,
}

#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TlbFlush {
    pub enabled: Option<bool>,
    pub direct: Option<FeatureState>,
    pub extended: Option<FeatureState>,
}

#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Chassis {
    pub manufacturer: Option<String>,
    pub version: Option<String>,
    pub serial: Option<String>,
    pub asset: Option<String>,
    pub sku: Option<String>,
}

/// An object with no fields (`{}`) used as a presence marker, e.g. `masquerade: {}`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct EmptyObject {}

/// The guest's devices.
#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Devices {
    pub use_virtio_transitional: Option<bool>,
    pub disable_hotplug: Option<bool>,
    /// Disks, CD-ROMs and LUNs attached to the guest.
    pub disks: Option<Vec<Disk>>,
    pub watchdog: Option<Watchdog>,
    /// Network interfaces of the guest.
    pub interfaces: Option<Vec<super::Interface>>,
    /// Input devices (tablet, keyboard).
    pub inputs: Option<Vec<Input>>,
    /// Attach the pod network when no interfaces are given (default true).
    pub autoattach_pod_interface: Option<bool>,
    /// Attach a graphics device; VNC needs it (default true).
    pub autoattach_graphics_device: Option<bool>,
    /// Attach a serial console (default true).
    pub autoattach_serial_console: Option<bool>,
    pub autoattach_mem_balloon: Option<bool>,
    pub autoattach_input_device: Option<bool>,
    #[serde(rename = "autoattachVSOCK")]
    pub autoattach_vsock: Option<bool>,
    /// Attach a virtio RNG fed from the host.
    pub rng: Option<EmptyObject>,
    pub block_multi_queue: Option<bool>,
    pub network_interface_multiqueue: Option<bool>,
    /// GPUs passed through to the guest.
    pub gpus: Option<Vec<Gpu>>,
    pub downward_metrics: Option<EmptyObject>,
    pub panic_devices: Option<Vec<PanicDevice>>,
    pub filesystems: Option<Vec<Filesystem>>,
    /// Host devices passed through to the guest.
    pub host_devices: Option<Vec<HostDevice>>,
    pub client_passthrough: Option<EmptyObject>,
    pub sound: Option<SoundDevice>,
    /// Emulated TPM 2.0.
    pub tpm: Option<Tpm>,
    pub log_serial_console: Option<bool>,
    pub video: Option<Video>,
}

/// A disk attached to the guest; `name` refers to a volume.
#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Disk {
    pub name: String,
    /// Attach the volume as a disk (default).
    pub disk: Option<DiskTarget>,
    /// Attach the volume as a SCSI LUN.
    pub lun: Option<LunTarget>,
    /// Attach the volume as a CD-ROM.
    pub cdrom: Option<CdRomTarget>,
    /// Boot priority (lower first); unique across disks and interfaces.
    pub boot_order: Option<u32>,
    pub serial: Option<String>,
    #[serde(rename = "dedicatedIOThread")]
    pub dedicated_io_thread: Option<bool>,
    /// `none`, `writethrough` or `writeback`.
    pub cache: Option<String>,
    /// `native` or `threads`.
    pub io: Option<String>,
    pub tag: Option<String>,
    pub block_size: Option<BlockSize>,
    pub shareable: Option<bool>,
    /// `stop`, `ignore`, `report` or `enospace`.
    pub error_policy: Option<String>,
    pub changed_block_tracking: Option<bool>,
}

/// Disk bus (`virtio`, `sata`, `scsi`, `usb`); kept as text so invalid values get a
/// `NotSupported` field error from validation rather than a decode error.
pub type DiskBus = String;

#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DiskTarget {
    /// Bus to emulate: virtio, sata, scsi or usb.
    pub bus: Option<DiskBus>,
    pub readonly: Option<bool>,
    pub pci_address: Option<String>,
}

#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LunTarget {
    /// Bus to emulate: virtio, sata, scsi or usb.
    pub bus: Option<DiskBus>,
    pub readonly: Option<bool>,
    pub reservation: Option<bool>,
}

#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CdRomTarget {
    /// Bus to emulate: virtio, sata, scsi or usb.
    pub bus: Option<DiskBus>,
    pub readonly: Option<bool>,
    /// `open` or `closed`.
    pub tray: Option<String>,
}

#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BlockSize {
    pub custom: Option<CustomBlockSize>,
    pub match_volume: Option<FeatureState>,
}

#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CustomBlockSize {
    pub logical: Option<u32>,
    pub physical: Option<u32>,
    pub discard_granularity: Option<u32>,
}

#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Watchdog {
    pub name: String,
    pub i6300esb: Option<I6300Esb>,
    /// s390x only.
    pub diag288: Option<I6300Esb>,
}

#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct I6300Esb {
    /// `poweroff`, `reset` or `shutdown`.
    pub action: Option<String>,
}

#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Input {
    pub name: String,
    /// `usb` or `virtio`.
    pub bus: Option<String>,
    /// `tablet` or `keyboard`.
    #[serde(rename = "type")]
    pub input_type: String,
}

/// A GPU passed through by device-plugin name or by DRA claim.
#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Gpu {
    pub name: String,
    pub device_name: Option<String>,
    pub claim_name: Option<String>,
    pub request_name: Option<String>,
    #[serde(default)]
    #[schemars(schema_with = "super::preserved_object")]
    pub virtual_gpu_options: Option<serde_json::Value>,
    pub tag: Option<String>,
}

/// A host device (PCI/USB/mediated) passed through by device-plugin name or DRA claim.
#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HostDevice {
    pub name: String,
    pub device_name: Option<String>,
    pub claim_name: Option<String>,
    pub request_name: Option<String>,
    pub tag: Option<String>,
}

#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PanicDevice {
    /// `hyperv`, `isa` or `pvpanic`.
    pub model: Option<String>,
}

#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Filesystem {
    pub name: String,
    pub virtiofs: Option<EmptyObject>,
}

#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SoundDevice {
    pub name: String,
    pub model: Option<String>,
}

/// Virtual TPM; `persistent` keeps its state across restarts.
#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Tpm {
    pub enabled: Option<bool>,
    pub persistent: Option<bool>,
}

#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Video {
    #[serde(rename = "type")]
    pub video_type: Option<String>,
}
