//! The one decision of what kubevirt-rs cannot run: valid KubeVirt API (admission accepts it,
//! so a user's manifests apply as-is) that this project does not implement, or values outside
//! the ones it can run.
//!
//! Every rule here is host-independent: it looks at the VMI only. The launcher's `translate`
//! reports these first (one field error each) and then only adds what depends on its node
//! (claims and secrets that were not resolved, ...) or makes the VMI impossible to translate.
//!
//! Rules are grouped by area, in the order they are reported: metadata, top level, clock,
//! machine, CPU, memory, features, firmware, devices, each disk, each interface, volumes.

use std::collections::HashSet;

use crate::v1::{
    Disk, Interface, Network, VirtualMachineInstance, VirtualMachineInstanceSpec, Volume,
    VolumeSource,
};

/// Annotation upstream uses for hook sidecars.
pub const HOOK_SIDECARS_ANNOTATION: &str = "hooks.kubevirt.io/hookSidecars";
/// Prefix of the message of an unsupported feature, as users see it.
pub const NOT_SUPPORTED: &str = "not supported by kubevirt-rs";

/// Guest architectures kubevirt-rs runs.
pub const SUPPORTED_ARCHITECTURES: &[&str] = &["amd64"];
/// `spec.startStrategy` values kubevirt-rs runs (unset starts the guest).
pub const SUPPORTED_START_STRATEGIES: &[&str] = &["Paused"];
/// Machine types kubevirt-rs runs; a trailing `*` matches any suffix.
pub const SUPPORTED_MACHINE_TYPES: &[&str] = &["q35", "pc-q35-*", "pc", "pc-i440fx-*"];
/// Video device types kubevirt-rs runs.
pub const SUPPORTED_VIDEO_TYPES: &[&str] = &["vga"];
/// Disk and CD-ROM buses kubevirt-rs runs.
pub const SUPPORTED_DISK_BUSES: &[&str] = &["virtio", "sata", "scsi"];
/// Interface models kubevirt-rs runs.
pub const SUPPORTED_NIC_MODELS: &[&str] = &["virtio", "e1000", "e1000e", "rtl8139"];

/// What an [`UnsupportedFeature`] is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnsupportedKind {
    /// The field asks for something kubevirt-rs does not implement; users see
    /// `FIELD: not supported by kubevirt-rs: REASON`.
    Feature,
    /// The field has a value kubevirt-rs cannot run; `reason` is the whole field error,
    /// e.g. `Unsupported value: "arm64": supported values: "amd64"`.
    Value,
}

/// One thing a VMI asks for that cannot run here: the field path and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnsupportedFeature {
    /// Path of the field, e.g. `spec.domain.devices.disks[1].lun`.
    pub field: String,
    /// Why it cannot run (human readable, without the [`NOT_SUPPORTED`] prefix).
    pub reason: String,
    pub kind: UnsupportedKind,
}

impl UnsupportedFeature {
    /// The field error users see (without the field path).
    pub fn message(&self) -> String {
        match self.kind {
            UnsupportedKind::Feature => format!("{NOT_SUPPORTED}: {}", self.reason),
            UnsupportedKind::Value => self.reason.clone(),
        }
    }
}

impl std::fmt::Display for UnsupportedFeature {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message())
    }
}

/// Unsupported features of a whole VMI: metadata-driven ones (hook sidecars), then the spec's.
pub fn unsupported_vmi_features(vmi: &VirtualMachineInstance) -> Vec<UnsupportedFeature> {
    let mut out = Out::default();
    if vmi
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(HOOK_SIDECARS_ANNOTATION))
    {
        out.feature(
            format!("metadata.annotations[{HOOK_SIDECARS_ANNOTATION}]"),
            "hook sidecars",
        );
    }
    out.0.extend(unsupported_features(&vmi.spec));
    out.0
}

/// Unsupported features requested by a VMI spec (paths start at `spec`).
pub fn unsupported_features(spec: &VirtualMachineInstanceSpec) -> Vec<UnsupportedFeature> {
    let mut out = Out::default();
    top_level(spec, &mut out);
    clock(spec, &mut out);
    machine(spec, &mut out);
    cpu(spec, &mut out);
    memory(spec, &mut out);
    features(spec, &mut out);
    firmware(spec, &mut out);
    devices(spec, &mut out);
    for (i, d) in spec.domain.devices.disks.iter().flatten().enumerate() {
        disk(&format!("spec.domain.devices.disks[{i}]"), d, &mut out);
    }
    let networks = spec.networks.as_deref().unwrap_or_default();
    for (i, iface) in spec.domain.devices.interfaces.iter().flatten().enumerate() {
        let net = networks.iter().find(|n| n.name == iface.name);
        interface(
            &format!("spec.domain.devices.interfaces[{i}]"),
            iface,
            net,
            &mut out,
        );
    }
    volumes(spec, &mut out);
    out.0
}

/// Sockets the guest gets: `cpu.sockets` when a topology is given, else the CPU limit (or
/// request) rounded up, like upstream; at least 1. `maxSockets` other than this would mean
/// CPU hotplug.
pub fn guest_sockets(spec: &VirtualMachineInstanceSpec) -> u32 {
    let cpu = spec.domain.cpu.as_ref();
    if cpu.is_some_and(|c| c.sockets.is_some() || c.cores.is_some() || c.threads.is_some()) {
        return cpu.and_then(|c| c.sockets).unwrap_or(1).max(1);
    }
    let res = spec.domain.resources.as_ref();
    res.and_then(|r| r.limits.as_ref())
        .and_then(|l| l.get("cpu"))
        .or_else(|| {
            res.and_then(|r| r.requests.as_ref())
                .and_then(|l| l.get("cpu"))
        })
        .map_or(1, |q| (q.as_f64().ceil() as u32).max(1))
}

/// Whether `value` is one of `supported` (a trailing `*` there matches any suffix).
fn is_supported(value: &str, supported: &[&str]) -> bool {
    supported.iter().any(|s| match s.strip_suffix('*') {
        Some(prefix) => value.starts_with(prefix),
        None => value == *s,
    })
}

#[derive(Default)]
struct Out(Vec<UnsupportedFeature>);

impl Out {
    fn feature(&mut self, field: impl Into<String>, reason: impl Into<String>) {
        self.0.push(UnsupportedFeature {
            field: field.into(),
            reason: reason.into(),
            kind: UnsupportedKind::Feature,
        });
    }
    /// The field is set (to anything).
    fn if_set<T>(&mut self, field: impl Into<String>, value: &Option<T>, reason: &str) {
        if value.is_some() {
            self.feature(field, reason);
        }
    }
    /// The field is `true`.
    fn if_true(&mut self, field: impl Into<String>, value: Option<bool>, reason: &str) {
        if value == Some(true) {
            self.feature(field, reason);
        }
    }
    /// The list is set and not empty.
    fn if_any<T>(&mut self, field: impl Into<String>, value: &Option<Vec<T>>, reason: &str) {
        if value.as_ref().is_some_and(|v| !v.is_empty()) {
            self.feature(field, reason);
        }
    }
    /// `Unsupported value: "x": supported values: "a", "b"` (just the value without a list).
    fn value(&mut self, field: impl Into<String>, value: &str, supported: &[&str]) {
        let mut reason = format!("Unsupported value: {value:?}");
        if !supported.is_empty() {
            let list: Vec<String> = supported.iter().map(|s| format!("{s:?}")).collect();
            reason = format!("{reason}: supported values: {}", list.join(", "));
        }
        self.0.push(UnsupportedFeature {
            field: field.into(),
            reason,
            kind: UnsupportedKind::Value,
        });
    }
    /// An optional enumerated field: unset and empty are fine, anything else must be supported.
    fn one_of(&mut self, field: impl Into<String>, value: Option<&str>, supported: &[&str]) {
        if let Some(v) = value.filter(|v| !v.is_empty()) {
            if !is_supported(v, supported) {
                self.value(field, v, supported);
            }
        }
    }
}

fn top_level(spec: &VirtualMachineInstanceSpec, out: &mut Out) {
    out.one_of(
        "spec.architecture",
        spec.architecture.as_deref(),
        SUPPORTED_ARCHITECTURES,
    );
    out.one_of(
        "spec.startStrategy",
        spec.start_strategy.as_deref(),
        SUPPORTED_START_STRATEGIES,
    );
    out.if_any(
        "spec.resourceClaims",
        &spec.resource_claims,
        "dynamic resource allocation (DRA) claims need device plugins",
    );
    let d = &spec.domain;
    out.if_set(
        "spec.domain.ioThreadsPolicy",
        &d.io_threads_policy,
        "IO thread pinning",
    );
    out.if_set("spec.domain.ioThreads", &d.io_threads, "IO thread pinning");
    out.if_set(
        "spec.domain.launchSecurity",
        &d.launch_security,
        "confidential computing (SEV/TDX) needs hardware support",
    );
    out.if_set("spec.domain.chassis", &d.chassis, "SMBIOS chassis data");
}

fn clock(spec: &VirtualMachineInstanceSpec, out: &mut Out) {
    let Some(clock) = &spec.domain.clock else {
        return;
    };
    out.if_set(
        "spec.domain.clock.timezone",
        &clock.timezone,
        "the guest clock runs in UTC",
    );
    if clock
        .utc
        .as_ref()
        .and_then(|u| u.offset_seconds)
        .unwrap_or(0)
        != 0
    {
        out.feature(
            "spec.domain.clock.utc.offsetSeconds",
            "the guest clock runs in UTC without offset",
        );
    }
    out.if_set(
        "spec.domain.clock.timer",
        &clock.timer,
        "timer tuning (hpet/pit/rtc/hyperv) is not configurable",
    );
}

fn machine(spec: &VirtualMachineInstanceSpec, out: &mut Out) {
    let machine_type = spec.domain.machine.as_ref();
    out.one_of(
        "spec.domain.machine.type",
        machine_type.and_then(|m| m.machine_type.as_deref()),
        SUPPORTED_MACHINE_TYPES,
    );
}

fn cpu(spec: &VirtualMachineInstanceSpec, out: &mut Out) {
    let Some(cpu) = &spec.domain.cpu else {
        return;
    };
    let f = "spec.domain.cpu";
    out.if_any(
        format!("{f}.features"),
        &cpu.features,
        "CPU feature policies are not applied",
    );
    out.if_true(
        format!("{f}.dedicatedCpuPlacement"),
        cpu.dedicated_cpu_placement,
        "dedicated CPU placement needs the CPU manager's static policy, which this project does not manage",
    );
    out.if_true(
        format!("{f}.isolateEmulatorThread"),
        cpu.isolate_emulator_thread,
        "emulator thread isolation needs dedicated CPUs",
    );
    out.if_set(format!("{f}.numa"), &cpu.numa, "guest NUMA mapping");
    out.if_set(format!("{f}.realtime"), &cpu.realtime, "realtime vCPUs");
    if cpu
        .max_sockets
        .is_some_and(|max| max != guest_sockets(spec))
    {
        out.feature(format!("{f}.maxSockets"), "CPU hotplug");
    }
}

fn memory(spec: &VirtualMachineInstanceSpec, out: &mut Out) {
    let Some(m) = &spec.domain.memory else {
        return;
    };
    out.if_set(
        "spec.domain.memory.hugepages",
        &m.hugepages,
        "hugepages backing",
    );
    out.if_set(
        "spec.domain.memory.maxGuest",
        &m.max_guest,
        "memory hotplug",
    );
}

fn features(spec: &VirtualMachineInstanceSpec, out: &mut Out) {
    let Some(ft) = &spec.domain.features else {
        return;
    };
    let f = "spec.domain.features";
    if ft.acpi.as_ref().and_then(|a| a.enabled) == Some(false) {
        out.feature(
            format!("{f}.acpi.enabled"),
            "ACPI is always on (shutdown relies on it)",
        );
    }
    if ft.apic.as_ref().and_then(|a| a.enabled) == Some(false) {
        out.feature(format!("{f}.apic.enabled"), "the APIC is always on");
    }
    out.if_set(format!("{f}.hyperv"), &ft.hyperv, "Hyper-V enlightenments");
    out.if_set(
        format!("{f}.hypervPassthrough"),
        &ft.hyperv_passthrough,
        "Hyper-V enlightenments",
    );
    out.if_set(format!("{f}.kvm"), &ft.kvm, "hiding KVM from the guest");
    out.if_set(
        format!("{f}.pvspinlock"),
        &ft.pvspinlock,
        "paravirtual spinlock tuning",
    );
}

fn firmware(spec: &VirtualMachineInstanceSpec, out: &mut Out) {
    let Some(fw) = &spec.domain.firmware else {
        return;
    };
    let f = "spec.domain.firmware";
    // Empty is unset (a clone clears it).
    let serial = fw.serial.clone().filter(|s| !s.is_empty());
    out.if_set(format!("{f}.serial"), &serial, "SMBIOS serial number");
    out.if_set(format!("{f}.acpi"), &fw.acpi, "custom ACPI tables");
    if let Some(bios) = fw.bootloader.as_ref().and_then(|b| b.bios.as_ref()) {
        out.if_true(
            format!("{f}.bootloader.bios.useSerial"),
            bios.use_serial,
            "SeaBIOS output on the serial console",
        );
    }
    if let Some(c) = fw.kernel_boot.as_ref().and_then(|k| k.container.as_ref()) {
        out.if_set(
            format!("{f}.kernelBoot.container.imagePullSecret"),
            &c.image_pull_secret,
            "registry credentials",
        );
    }
}

fn devices(spec: &VirtualMachineInstanceSpec, out: &mut Out) {
    let d = &spec.domain.devices;
    let f = "spec.domain.devices";
    out.one_of(
        format!("{f}.video.type"),
        d.video.as_ref().and_then(|v| v.video_type.as_deref()),
        SUPPORTED_VIDEO_TYPES,
    );
    out.if_true(
        format!("{f}.useVirtioTransitional"),
        d.use_virtio_transitional,
        "virtio transitional devices",
    );
    out.if_true(
        format!("{f}.blockMultiQueue"),
        d.block_multi_queue,
        "block multi-queue",
    );
    out.if_true(
        format!("{f}.networkInterfaceMultiqueue"),
        d.network_interface_multiqueue,
        "network multi-queue (needs vhost)",
    );
    out.if_true(
        format!("{f}.autoattachVSOCK"),
        d.autoattach_vsock,
        "VSOCK needs /dev/vhost-vsock",
    );
    out.if_true(
        format!("{f}.autoattachInputDevice"),
        d.autoattach_input_device,
        "input devices",
    );
    out.if_any(format!("{f}.inputs"), &d.inputs, "input devices");
    out.if_set(format!("{f}.watchdog"), &d.watchdog, "watchdog devices");
    out.if_any(format!("{f}.gpus"), &d.gpus, "GPU passthrough");
    out.if_any(
        format!("{f}.hostDevices"),
        &d.host_devices,
        "host device (PCI/USB/mediated) passthrough",
    );
    out.if_any(
        format!("{f}.filesystems"),
        &d.filesystems,
        "virtiofs filesystems",
    );
    out.if_any(
        format!("{f}.panicDevices"),
        &d.panic_devices,
        "panic devices",
    );
    out.if_set(format!("{f}.sound"), &d.sound, "sound devices");
    out.if_set(
        format!("{f}.downwardMetrics"),
        &d.downward_metrics,
        "downward metrics",
    );
    out.if_set(
        format!("{f}.clientPassthrough"),
        &d.client_passthrough,
        "USB client passthrough",
    );
}

/// One disk at path `f`.
fn disk(f: &str, d: &Disk, out: &mut Out) {
    out.if_set(format!("{f}.lun"), &d.lun, "SCSI LUN passthrough");
    if let Some(t) = &d.disk {
        out.one_of(
            format!("{f}.disk.bus"),
            t.bus.as_deref(),
            SUPPORTED_DISK_BUSES,
        );
        out.if_set(
            format!("{f}.disk.pciAddress"),
            &t.pci_address,
            "fixed PCI addresses",
        );
    }
    if let Some(c) = &d.cdrom {
        out.one_of(
            format!("{f}.cdrom.bus"),
            c.bus.as_deref(),
            SUPPORTED_DISK_BUSES,
        );
        if c.tray.as_deref() == Some("open") {
            out.feature(format!("{f}.cdrom.tray"), "an open tray");
        }
    }
    out.if_true(
        format!("{f}.dedicatedIOThread"),
        d.dedicated_io_thread,
        "dedicated IO threads",
    );
    out.if_set(format!("{f}.io"), &d.io, "IO mode selection");
    out.if_set(
        format!("{f}.blockSize"),
        &d.block_size,
        "custom block sizes",
    );
    out.if_true(format!("{f}.shareable"), d.shareable, "shared disks");
    out.if_set(
        format!("{f}.errorPolicy"),
        &d.error_policy,
        "disk error policies",
    );
    out.if_set(
        format!("{f}.tag"),
        &d.tag,
        "device role tags (no metadata service)",
    );
    match d.cache.as_deref() {
        None => {}
        Some("none" | "writeback" | "writethrough") => {
            out.feature(format!("{f}.cache"), "cache mode selection")
        }
        Some(other) => out.value(format!("{f}.cache"), other, &[]),
    }
}

/// One interface at path `f`, attached to `net` (`None`: no network of that name).
fn interface(f: &str, iface: &Interface, net: Option<&Network>, out: &mut Out) {
    if net.is_some_and(|n| n.multus.is_some()) {
        out.feature(
            format!("{f}.name"),
            "Multus secondary networks (only the pod network is available)",
        );
    }
    out.one_of(
        format!("{f}.model"),
        iface.model.as_deref(),
        SUPPORTED_NIC_MODELS,
    );
    out.if_set(
        format!("{f}.dhcpOptions"),
        &iface.dhcp_options,
        "custom DHCP options",
    );
    out.if_set(
        format!("{f}.pciAddress"),
        &iface.pci_address,
        "fixed PCI addresses",
    );
    out.if_set(format!("{f}.tag"), &iface.tag, "device role tags");
    out.if_set(format!("{f}.acpiIndex"), &iface.acpi_index, "ACPI indexes");
    if let Some(state) = iface.state.as_deref().filter(|s| *s != "up") {
        out.feature(format!("{f}.state"), format!("link state {state:?}"));
    }
    for (pi, p) in iface.ports.iter().flatten().enumerate() {
        if p.protocol.as_deref().is_some_and(|pr| pr != "TCP") {
            out.feature(
                format!("{f}.ports[{pi}].protocol"),
                "only TCP ports are forwarded",
            );
        }
    }
    // Binding methods: masquerade and passt run. Bridge is what Multus networks use (and they
    // are reported above); on the pod network it is not implemented.
    if iface.bridge.is_some() && net.is_some_and(|n| n.pod.is_some()) {
        out.feature(
            format!("{f}.bridge"),
            "the bridge binding on the pod network would hand the pod IP to the guest; use masquerade",
        );
    }
    out.if_set(
        format!("{f}.slirp"),
        &iface.slirp,
        "slirp was removed upstream; use masquerade or passt",
    );
    out.if_set(
        format!("{f}.sriov"),
        &iface.sriov,
        "SR-IOV needs SR-IOV hardware and a device plugin",
    );
    out.if_set(
        format!("{f}.macvtap"),
        &iface.macvtap,
        "macvtap needs a macvtap device plugin",
    );
    out.if_set(
        format!("{f}.passtBinding"),
        &iface.passt_binding,
        "network binding plugins (use the passt binding)",
    );
    if let Some(b) = &iface.binding {
        out.feature(
            format!("{f}.binding"),
            format!("network binding plugins ({:?})", b.name),
        );
    }
}

fn volumes(spec: &VirtualMachineInstanceSpec, out: &mut Out) {
    let disks: HashSet<&str> = spec
        .domain
        .devices
        .disks
        .iter()
        .flatten()
        .map(|d| d.name.as_str())
        .collect();
    for (i, vol) in spec.volumes.iter().flatten().enumerate() {
        let f = format!("spec.volumes[{i}]");
        if !disks.contains(vol.name.as_str()) {
            out.feature(
                f,
                format!("volume {:?} is not attached to any disk", vol.name),
            );
            continue;
        }
        volume(&f, vol, out);
    }
}

/// The source of a volume at path `f` that a disk uses.
fn volume(f: &str, vol: &Volume, out: &mut Out) {
    match vol.source() {
        // A volume without exactly one source is invalid, not unsupported.
        None => {}
        // Claims, hot-pluggable ones too.
        Some(VolumeSource::PersistentVolumeClaim(_) | VolumeSource::DataVolume(_)) => {}
        Some(VolumeSource::HostDisk(h)) => {
            out.if_true(
                format!("{f}.hostDisk.shared"),
                h.shared,
                "shared host disks",
            );
        }
        Some(VolumeSource::ContainerDisk(c)) => {
            out.if_set(
                format!("{f}.containerDisk.imagePullSecret"),
                &c.image_pull_secret,
                "registry credentials",
            );
        }
        Some(
            VolumeSource::EmptyDisk(_)
            | VolumeSource::Ephemeral(_)
            | VolumeSource::CloudInitNoCloud(_)
            | VolumeSource::CloudInitConfigDrive(_),
        ) => {}
        Some(
            other @ (VolumeSource::ConfigMap(_)
            | VolumeSource::Secret(_)
            | VolumeSource::ServiceAccount(_)
            | VolumeSource::Sysprep(_)
            | VolumeSource::DownwardApi(_)
            | VolumeSource::DownwardMetrics
            | VolumeSource::MemoryDump(_)),
        ) => out.feature(
            format!("{f}.{}", other.field_name()),
            "this volume source cannot be attached as a disk yet",
        ),
    }
}
