//! VirtualMachineInstance -> hypervisor `DomainConfig` (+ the volume and network work the
//! launcher must do before QEMU starts). Pure: no IO, so every rule is unit-tested.
//!
//! Anything the launcher cannot honour is an error naming the field path; nothing is
//! silently dropped.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use kubevirt_api::v1::{
    CloudInitSource, Disk, Interface, VirtualMachineInstance, VirtualMachineInstanceSpec, Volume,
    VolumeSource,
};
use kubevirt_hypervisor::{
    Accelerator, CpuConfig, CpuModel, DiskBus, DiskConfig, DiskDevice, DiskFormat, DomainConfig,
    Firmware, KernelBoot, NicBackend, NicConfig, NicModel, SerialConfig, TpmConfig,
};
use serde::{Deserialize, Serialize};

use crate::rundir::RunDir;

/// One reason a VMI cannot be translated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldIssue {
    /// JSON path, e.g. `spec.domain.devices.disks[1].lun`.
    pub field: String,
    pub reason: String,
}

impl std::fmt::Display for FieldIssue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

/// Why a VMI cannot be turned into a domain.
#[derive(Debug, thiserror::Error)]
pub enum TranslateError {
    /// Fields this launcher does not support or that are inconsistent.
    #[error("cannot run this VirtualMachineInstance: {}", join(issues))]
    Unsupported { issues: Vec<FieldIssue> },
}

impl TranslateError {
    /// The individual issues.
    pub fn issues(&self) -> &[FieldIssue] {
        match self {
            TranslateError::Unsupported { issues } => issues,
        }
    }
}

fn join(issues: &[FieldIssue]) -> String {
    issues
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Host facts and resolved references the translation needs.
#[derive(Debug, Clone)]
pub struct LauncherEnv {
    pub run_dir: RunDir,
    pub accelerator: Accelerator,
    /// Directory for state that survives the VMI (persistent EFI vars, persistent TPM).
    pub persistent_dir: PathBuf,
    /// OVMF firmware files.
    pub ovmf: OvmfPaths,
    /// PVC / DataVolume name -> disk image file on this node.
    pub claims: BTreeMap<String, PathBuf>,
    /// Secret name -> key -> bytes, resolved by the node agent (cloud-init secretRefs).
    pub secrets: BTreeMap<String, BTreeMap<String, Vec<u8>>>,
}

impl LauncherEnv {
    /// Defaults for this host: Debian's OVMF paths, no claims or secrets.
    pub fn new(run_dir: RunDir, accelerator: Accelerator, persistent_dir: PathBuf) -> Self {
        LauncherEnv {
            run_dir,
            accelerator,
            persistent_dir,
            ovmf: OvmfPaths::default(),
            claims: BTreeMap::new(),
            secrets: BTreeMap::new(),
        }
    }
}

/// UEFI firmware images.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OvmfPaths {
    pub code: PathBuf,
    pub vars: PathBuf,
    pub secure_code: PathBuf,
    pub secure_vars: PathBuf,
}

impl Default for OvmfPaths {
    fn default() -> Self {
        let d = Path::new("/usr/share/OVMF");
        OvmfPaths {
            code: d.join("OVMF_CODE_4M.fd"),
            vars: d.join("OVMF_VARS_4M.fd"),
            secure_code: d.join("OVMF_CODE_4M.secboot.fd"),
            secure_vars: d.join("OVMF_VARS_4M.ms.fd"),
        }
    }
}

/// Work to do on a volume before QEMU opens `target`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum VolumePrep {
    /// Use an existing file as is (format detected from its header).
    Existing { volume: String, path: PathBuf },
    /// hostDisk `DiskOrCreate`: create a sparse raw file of `capacity` bytes if missing.
    CreateIfMissing {
        volume: String,
        path: PathBuf,
        /// Kubernetes quantity, e.g. `1Gi`.
        capacity: String,
    },
    /// A blank sparse disk of `capacity` at `target`, deleted with the VM.
    EmptyDisk {
        volume: String,
        target: PathBuf,
        /// Kubernetes quantity, e.g. `1Gi`.
        capacity: String,
    },
    /// A qcow2 overlay at `target` over the read-only `base`; the overlay is discarded.
    Ephemeral {
        volume: String,
        base: PathBuf,
        target: PathBuf,
    },
    /// Pull `image`, then an overlay at `target` over its disk.
    ContainerDisk {
        volume: String,
        image: String,
        /// `containerDisk.path`: the disk file in the image (default: the one under /disk/).
        path: Option<String>,
        pull_policy: Option<String>,
        target: PathBuf,
    },
    /// kernelBoot: pull `image` and use the files at `kernel_path` / `initrd_path` in it.
    KernelBoot {
        volume: String,
        image: String,
        kernel_path: String,
        initrd_path: Option<String>,
        pull_policy: Option<String>,
    },
    /// Generate a NoCloud (`cidata`) or ConfigDrive (`config-2`) ISO at `target`.
    /// Secret references are already resolved to their content.
    CloudInit {
        volume: String,
        config_drive: bool,
        user_data: Option<String>,
        user_data_base64: Option<String>,
        user_data_secret: Option<Vec<u8>>,
        network_data: Option<String>,
        network_data_base64: Option<String>,
        network_data_secret: Option<Vec<u8>>,
        namespace: String,
        name: String,
        uid: Option<String>,
        hostname: String,
        target: PathBuf,
    },
}

impl VolumePrep {
    /// The volume name.
    pub fn volume(&self) -> &str {
        match self {
            VolumePrep::Existing { volume, .. }
            | VolumePrep::CreateIfMissing { volume, .. }
            | VolumePrep::EmptyDisk { volume, .. }
            | VolumePrep::Ephemeral { volume, .. }
            | VolumePrep::ContainerDisk { volume, .. }
            | VolumePrep::KernelBoot { volume, .. }
            | VolumePrep::CloudInit { volume, .. } => volume,
        }
    }
}

/// How an interface reaches the network; the launcher sets it up and fills in the NIC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum NetPrep {
    /// Pod network, masquerade binding: a per-VM netns with tap0, NAT and DHCP.
    Masquerade {
        nic: String,
        mac: Option<String>,
        ports: Vec<u16>,
    },
    /// Pod network, passt binding.
    Passt { nic: String, mac: Option<String> },
}

/// The result of translating a VMI.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Translation {
    /// Domain config; disk formats of prepared volumes and NIC backends are filled in by
    /// the launcher after `volumes` and `networks` are done.
    pub domain: DomainConfig,
    pub volumes: Vec<VolumePrep>,
    pub networks: Vec<NetPrep>,
}

struct Issues(Vec<FieldIssue>);

impl Issues {
    fn add(&mut self, field: impl Into<String>, reason: impl Into<String>) {
        self.0.push(FieldIssue {
            field: field.into(),
            reason: reason.into(),
        });
    }
    fn unsupported<T>(&mut self, field: &str, value: &Option<T>, reason: &str) {
        if value.is_some() {
            self.add(field, format!("not supported by kubevirt-rs: {reason}"));
        }
    }
    fn unsupported_true(&mut self, field: &str, value: Option<bool>, reason: &str) {
        if value == Some(true) {
            self.add(field, format!("not supported by kubevirt-rs: {reason}"));
        }
    }
}

/// The domain name for a VMI: `<namespace>_<name>`.
pub fn domain_name(vmi: &VirtualMachineInstance) -> String {
    format!(
        "{}_{}",
        vmi.metadata.namespace.as_deref().unwrap_or("default"),
        vmi.metadata.name.as_deref().unwrap_or("")
    )
}

/// Translates a (defaulted) VMI.
pub fn translate(
    vmi: &VirtualMachineInstance,
    env: &LauncherEnv,
) -> Result<Translation, TranslateError> {
    let mut is = Issues(Vec::new());
    let spec = &vmi.spec;
    let rd = &env.run_dir;
    let name = vmi.metadata.name.clone().unwrap_or_default();
    if name.is_empty() {
        is.add("metadata.name", "Required value");
    }
    let mut dom = DomainConfig::new(domain_name(vmi), 128, rd.qmp_socket());
    dom.log_file = Some(rd.qemu_log());

    top_level(spec, &mut is);
    machine(spec, &mut dom, &mut is);
    cpu(spec, &mut dom, &mut is);
    memory(spec, &mut dom, &mut is);
    features(spec, &mut is);
    let kernel_boot = firmware(spec, env, &mut dom, &mut is);
    devices(spec, env, &mut dom, &mut is);
    let mut volumes = disks_and_volumes(vmi, env, &mut dom, &mut is);
    volumes.extend(kernel_boot);
    let networks = interfaces(spec, &mut dom, &mut is);

    if is.0.is_empty() {
        Ok(Translation {
            domain: dom,
            volumes,
            networks,
        })
    } else {
        Err(TranslateError::Unsupported { issues: is.0 })
    }
}

fn top_level(spec: &VirtualMachineInstanceSpec, is: &mut Issues) {
    if let Some(arch) = spec.architecture.as_deref() {
        if !arch.is_empty() && arch != "amd64" {
            is.add(
                "spec.architecture",
                format!("Unsupported value: {arch:?}: supported values: \"amd64\""),
            );
        }
    }
    match spec.start_strategy.as_deref() {
        None | Some("") | Some("Paused") => {}
        Some(other) => is.add(
            "spec.startStrategy",
            format!("Unsupported value: {other:?}: supported values: \"Paused\""),
        ),
    }
    if spec
        .access_credentials
        .as_ref()
        .is_some_and(|v| !v.is_empty())
    {
        is.add(
            "spec.accessCredentials",
            "not supported by kubevirt-rs: credential propagation through the guest agent is not implemented",
        );
    }
    if spec.resource_claims.as_ref().is_some_and(|v| !v.is_empty()) {
        is.add(
            "spec.resourceClaims",
            "not supported by kubevirt-rs: dynamic resource allocation needs device plugins",
        );
    }
    let d = &spec.domain;
    is.unsupported(
        "spec.domain.ioThreadsPolicy",
        &d.io_threads_policy,
        "IO thread pinning",
    );
    is.unsupported("spec.domain.ioThreads", &d.io_threads, "IO thread pinning");
    is.unsupported(
        "spec.domain.launchSecurity",
        &d.launch_security,
        "confidential computing (SEV/TDX) needs hardware support",
    );
    is.unsupported("spec.domain.chassis", &d.chassis, "SMBIOS chassis data");
    if let Some(clock) = &d.clock {
        if clock.timezone.is_some() {
            is.add(
                "spec.domain.clock.timezone",
                "not supported by kubevirt-rs: the guest clock runs in UTC",
            );
        }
        if clock
            .utc
            .as_ref()
            .and_then(|u| u.offset_seconds)
            .unwrap_or(0)
            != 0
        {
            is.add(
                "spec.domain.clock.utc.offsetSeconds",
                "not supported by kubevirt-rs: the guest clock runs in UTC without offset",
            );
        }
        is.unsupported(
            "spec.domain.clock.timer",
            &clock.timer,
            "timer tuning (hpet/pit/rtc/hyperv) is not configurable",
        );
    }
}

fn machine(spec: &VirtualMachineInstanceSpec, dom: &mut DomainConfig, is: &mut Issues) {
    let m = spec
        .domain
        .machine
        .as_ref()
        .and_then(|m| m.machine_type.clone())
        .unwrap_or_default();
    dom.machine = match m.as_str() {
        "" | "q35" => "q35".into(),
        // Downstream (RHEL) machine types do not exist in upstream QEMU; q35 is their base.
        t if t.starts_with("pc-q35-rhel") => "q35".into(),
        t if t.starts_with("pc-q35-") || t == "pc" || t.starts_with("pc-i440fx-") => t.into(),
        other => {
            is.add(
                "spec.domain.machine.type",
                format!("Unsupported value: {other:?}: supported values: \"q35\", \"pc-q35-*\", \"pc\", \"pc-i440fx-*\""),
            );
            "q35".into()
        }
    };
}

fn cpu(spec: &VirtualMachineInstanceSpec, dom: &mut DomainConfig, is: &mut Issues) {
    let mut topo = CpuConfig::default();
    let cpu = spec.domain.cpu.clone().unwrap_or_default();
    let explicit = cpu.sockets.is_some() || cpu.cores.is_some() || cpu.threads.is_some();
    topo.sockets = cpu.sockets.unwrap_or(1).max(1);
    topo.cores = cpu.cores.unwrap_or(1).max(1);
    topo.threads = cpu.threads.unwrap_or(1).max(1);
    if !explicit {
        // Upstream: without a topology, the CPU request/limit gives the vCPU count (as sockets).
        let res = spec.domain.resources.as_ref();
        let q = res
            .and_then(|r| r.limits.as_ref())
            .and_then(|l| l.get("cpu"))
            .or_else(|| {
                res.and_then(|r| r.requests.as_ref())
                    .and_then(|l| l.get("cpu"))
            });
        if let Some(q) = q {
            topo.sockets = (q.as_f64().ceil() as u32).max(1);
        }
    }
    topo.model = match cpu.model.as_deref() {
        None | Some("") | Some("host-model") => CpuModel::HostModel,
        Some("host-passthrough") => CpuModel::HostPassthrough,
        Some(m) => CpuModel::Named(m.to_string()),
    };
    if cpu.features.as_ref().is_some_and(|f| !f.is_empty()) {
        is.add(
            "spec.domain.cpu.features",
            "not supported by kubevirt-rs: CPU feature policies are not applied",
        );
    }
    is.unsupported_true(
        "spec.domain.cpu.dedicatedCpuPlacement",
        cpu.dedicated_cpu_placement,
        "CPU pinning needs the CPU manager",
    );
    is.unsupported_true(
        "spec.domain.cpu.isolateEmulatorThread",
        cpu.isolate_emulator_thread,
        "CPU pinning needs the CPU manager",
    );
    is.unsupported("spec.domain.cpu.numa", &cpu.numa, "guest NUMA mapping");
    is.unsupported("spec.domain.cpu.realtime", &cpu.realtime, "realtime vCPUs");
    if let Some(max) = cpu.max_sockets {
        if max != topo.sockets {
            is.add(
                "spec.domain.cpu.maxSockets",
                "not supported by kubevirt-rs: CPU hotplug",
            );
        }
    }
    dom.cpu = topo;
}

fn memory(spec: &VirtualMachineInstanceSpec, dom: &mut DomainConfig, is: &mut Issues) {
    match kubevirt_api::defaults::guest_memory(spec) {
        Some(q) if !q.is_negative() && !q.is_zero() => {
            let mib = q.to_bytes().div_ceil(1024 * 1024);
            dom.memory_mib = mib;
        }
        _ => is.add(
            "spec.domain.memory.guest",
            "Required value: guest memory (memory.guest or resources.requests.memory) must be positive",
        ),
    }
    if let Some(m) = &spec.domain.memory {
        is.unsupported(
            "spec.domain.memory.hugepages",
            &m.hugepages,
            "hugepages backing",
        );
        is.unsupported(
            "spec.domain.memory.maxGuest",
            &m.max_guest,
            "memory hotplug",
        );
    }
}

fn features(spec: &VirtualMachineInstanceSpec, is: &mut Issues) {
    let Some(f) = &spec.domain.features else {
        return;
    };
    if f.acpi.as_ref().and_then(|a| a.enabled) == Some(false) {
        is.add(
            "spec.domain.features.acpi.enabled",
            "not supported by kubevirt-rs: ACPI is always on (shutdown relies on it)",
        );
    }
    if f.apic.as_ref().and_then(|a| a.enabled) == Some(false) {
        is.add(
            "spec.domain.features.apic.enabled",
            "not supported by kubevirt-rs: the APIC is always on",
        );
    }
    is.unsupported(
        "spec.domain.features.hyperv",
        &f.hyperv,
        "Hyper-V enlightenments",
    );
    is.unsupported(
        "spec.domain.features.hypervPassthrough",
        &f.hyperv_passthrough,
        "Hyper-V enlightenments",
    );
    is.unsupported(
        "spec.domain.features.kvm",
        &f.kvm,
        "hiding KVM from the guest",
    );
    is.unsupported(
        "spec.domain.features.pvspinlock",
        &f.pvspinlock,
        "paravirtual spinlock tuning",
    );
}

fn firmware(
    spec: &VirtualMachineInstanceSpec,
    env: &LauncherEnv,
    dom: &mut DomainConfig,
    is: &mut Issues,
) -> Option<VolumePrep> {
    let Some(fw) = &spec.domain.firmware else {
        return None;
    };
    dom.uuid = fw.uuid.clone().filter(|u| !u.is_empty());
    is.unsupported(
        "spec.domain.firmware.serial",
        &fw.serial,
        "SMBIOS serial number",
    );
    is.unsupported("spec.domain.firmware.acpi", &fw.acpi, "custom ACPI tables");
    if let Some(bl) = &fw.bootloader {
        if let Some(bios) = &bl.bios {
            is.unsupported_true(
                "spec.domain.firmware.bootloader.bios.useSerial",
                bios.use_serial,
                "SeaBIOS output on the serial console",
            );
        }
        if let Some(efi) = &bl.efi {
            let secure = efi.secure_boot.unwrap_or(true);
            let persistent = efi.persistent.unwrap_or(false);
            if secure {
                let smm = spec
                    .domain
                    .features
                    .as_ref()
                    .and_then(|f| f.smm.as_ref())
                    .map(|s| s.enabled.unwrap_or(true))
                    .unwrap_or(false);
                if !smm {
                    is.add(
                        "spec.domain.features.smm",
                        "Required value: secure boot needs SMM (features.smm)",
                    );
                }
            }
            let (code, vars) = if secure {
                (env.ovmf.secure_code.clone(), env.ovmf.secure_vars.clone())
            } else {
                (env.ovmf.code.clone(), env.ovmf.vars.clone())
            };
            let vars_path = if persistent {
                env.persistent_dir.join("efi-vars.fd")
            } else {
                env.run_dir.path().join("efi-vars.fd")
            };
            dom.firmware = Firmware::Uefi {
                code,
                vars_template: vars,
                vars_path,
                secure_boot: secure,
            };
        }
    }
    if let Some(kb) = &fw.kernel_boot {
        let field = "spec.domain.firmware.kernelBoot";
        match &kb.container {
            None => is.add(
                format!("{field}.container"),
                "Required value: kernel boot needs a container with the kernel",
            ),
            Some(c) => {
                let kernel = c.kernel_path.clone().unwrap_or_default();
                if kernel.is_empty() {
                    is.add(
                        format!("{field}.container.kernelPath"),
                        "Required value: path of the kernel inside the image",
                    );
                }
                if c.image.trim().is_empty() {
                    is.add(format!("{field}.container.image"), "Required value");
                }
                is.unsupported(
                    &format!("{field}.container.imagePullSecret"),
                    &c.image_pull_secret,
                    "registry credentials",
                );
                // Placeholders: `prepare` pulls the image and points these at the files.
                let initrd_path = c.initrd_path.clone().filter(|p| !p.is_empty());
                dom.kernel_boot = Some(KernelBoot {
                    kernel: PathBuf::from(&kernel),
                    initrd: initrd_path.as_ref().map(PathBuf::from),
                    cmdline: kb.kernel_args.clone().unwrap_or_default(),
                });
                return Some(VolumePrep::KernelBoot {
                    volume: "kernelBoot".into(),
                    image: c.image.clone(),
                    kernel_path: kernel,
                    initrd_path,
                    pull_policy: c.image_pull_policy.clone(),
                });
            }
        }
    }
    None
}

fn devices(
    spec: &VirtualMachineInstanceSpec,
    env: &LauncherEnv,
    dom: &mut DomainConfig,
    is: &mut Issues,
) {
    let d = &spec.domain.devices;
    let f = "spec.domain.devices";
    if d.autoattach_serial_console.unwrap_or(true) {
        dom.serial = Some(SerialConfig {
            socket: env.run_dir.serial_socket(),
            log_file: Some(env.run_dir.serial_log()),
        });
    }
    if d.autoattach_graphics_device.unwrap_or(true) {
        dom.vnc_socket = Some(env.run_dir.vnc_socket());
    }
    if let Some(v) = &d.video {
        match v.video_type.as_deref() {
            None | Some("vga") => {}
            Some(other) => is.add(
                format!("{f}.video.type"),
                format!("Unsupported value: {other:?}: supported values: \"vga\""),
            ),
        }
    }
    dom.balloon = d.autoattach_mem_balloon.unwrap_or(true);
    // Every VM gets the agent channel, as upstream does.
    dom.qga_socket = Some(env.run_dir.qga_socket());
    dom.rng = d.rng.is_some();
    if let Some(tpm) = &d.tpm {
        if tpm.enabled.unwrap_or(true) {
            let state_dir = if tpm.persistent.unwrap_or(false) {
                env.persistent_dir.join("tpm")
            } else {
                env.run_dir.path().join("tpm")
            };
            dom.tpm = Some(TpmConfig {
                state_dir,
                socket: env.run_dir.path().join("swtpm.sock"),
                pid_file: env.run_dir.path().join("swtpm.pid"),
            });
        }
    }
    dom.start_paused = spec.start_strategy.as_deref() == Some("Paused");
    is.unsupported_true(
        &format!("{f}.useVirtioTransitional"),
        d.use_virtio_transitional,
        "virtio transitional devices",
    );
    is.unsupported_true(
        &format!("{f}.blockMultiQueue"),
        d.block_multi_queue,
        "block multi-queue",
    );
    is.unsupported_true(
        &format!("{f}.networkInterfaceMultiqueue"),
        d.network_interface_multiqueue,
        "network multi-queue (needs vhost)",
    );
    is.unsupported_true(
        &format!("{f}.autoattachVSOCK"),
        d.autoattach_vsock,
        "VSOCK needs /dev/vhost-vsock",
    );
    is.unsupported_true(
        &format!("{f}.autoattachInputDevice"),
        d.autoattach_input_device,
        "input devices",
    );
    if d.inputs.as_ref().is_some_and(|v| !v.is_empty()) {
        is.add(
            format!("{f}.inputs"),
            "not supported by kubevirt-rs: input devices",
        );
    }
    is.unsupported(&format!("{f}.watchdog"), &d.watchdog, "watchdog devices");
    for (field, present, what) in [
        (
            "gpus",
            d.gpus.as_ref().is_some_and(|v| !v.is_empty()),
            "GPU passthrough",
        ),
        (
            "hostDevices",
            d.host_devices.as_ref().is_some_and(|v| !v.is_empty()),
            "host device passthrough",
        ),
        (
            "filesystems",
            d.filesystems.as_ref().is_some_and(|v| !v.is_empty()),
            "virtiofs filesystems",
        ),
        (
            "panicDevices",
            d.panic_devices.as_ref().is_some_and(|v| !v.is_empty()),
            "panic devices",
        ),
        ("sound", d.sound.is_some(), "sound devices"),
        (
            "downwardMetrics",
            d.downward_metrics.is_some(),
            "downward metrics",
        ),
        (
            "clientPassthrough",
            d.client_passthrough.is_some(),
            "USB client passthrough",
        ),
    ] {
        if present {
            is.add(
                format!("{f}.{field}"),
                format!("not supported by kubevirt-rs: {what}"),
            );
        }
    }
}

fn disk_issue_fields(d: &Disk, f: &str, is: &mut Issues) {
    is.unsupported(&format!("{f}.lun"), &d.lun, "LUN passthrough");
    is.unsupported_true(
        &format!("{f}.dedicatedIOThread"),
        d.dedicated_io_thread,
        "dedicated IO threads",
    );
    is.unsupported(&format!("{f}.io"), &d.io, "IO mode selection");
    is.unsupported(
        &format!("{f}.blockSize"),
        &d.block_size,
        "custom block sizes",
    );
    is.unsupported_true(&format!("{f}.shareable"), d.shareable, "shared disks");
    is.unsupported(
        &format!("{f}.errorPolicy"),
        &d.error_policy,
        "disk error policies",
    );
    is.unsupported(
        &format!("{f}.tag"),
        &d.tag,
        "device role tags (no metadata service)",
    );
    if let Some(c) = d.cache.as_deref() {
        if c != "none" && c != "writeback" && c != "writethrough" {
            is.add(format!("{f}.cache"), format!("Unsupported value: {c:?}"));
        } else {
            is.add(
                format!("{f}.cache"),
                "not supported by kubevirt-rs: cache mode selection",
            );
        }
    }
    if let Some(s) = d.serial.as_deref() {
        if s.is_empty()
            || s.len() > 20
            || !s
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            is.add(
                format!("{f}.serial"),
                format!("Invalid value: {s:?}: up to 20 characters of [A-Za-z0-9_-]"),
            );
        }
    }
}

fn bus(value: Option<&str>, default: DiskBus, field: String, is: &mut Issues) -> DiskBus {
    match value {
        None | Some("") => default,
        Some("virtio") => DiskBus::Virtio,
        Some("sata") => DiskBus::Sata,
        Some("scsi") => DiskBus::Scsi,
        Some(other) => {
            is.add(
                field,
                format!("Unsupported value: {other:?}: supported values: \"virtio\", \"sata\", \"scsi\""),
            );
            default
        }
    }
}

/// Resolves the secret references of a cloud-init source from `env.secrets`.
fn cloud_init_secrets(
    src: &CloudInitSource,
    env: &LauncherEnv,
    field: &str,
    is: &mut Issues,
) -> (Option<Vec<u8>>, Option<Vec<u8>>) {
    let mut lookup = |name: &str, keys: &[&str], f: String| -> Option<Vec<u8>> {
        match env.secrets.get(name) {
            None => {
                is.add(
                    f,
                    format!("Not found: secret {name:?} was not resolved for the launcher"),
                );
                None
            }
            Some(data) => {
                let v = keys.iter().find_map(|k| data.get(*k).cloned());
                if v.is_none() {
                    is.add(
                        f,
                        format!("Invalid value: secret {name:?} has none of the keys {keys:?}"),
                    );
                }
                v
            }
        }
    };
    let user = src.secret_ref.as_ref().and_then(|r| {
        lookup(
            &r.name,
            &["userdata", "userData"],
            format!("{field}.secretRef"),
        )
    });
    let network = src.network_data_secret_ref.as_ref().and_then(|r| {
        lookup(
            &r.name,
            &["networkdata", "networkData"],
            format!("{field}.networkDataSecretRef"),
        )
    });
    (user, network)
}

fn disks_and_volumes(
    vmi: &VirtualMachineInstance,
    env: &LauncherEnv,
    dom: &mut DomainConfig,
    is: &mut Issues,
) -> Vec<VolumePrep> {
    let spec = &vmi.spec;
    let volumes: Vec<Volume> = spec.volumes.clone().unwrap_or_default();
    let disks: Vec<Disk> = spec.domain.devices.disks.clone().unwrap_or_default();
    let mut preps = Vec::new();
    let mut used = HashSet::new();
    let rd = env.run_dir.path();
    for (i, d) in disks.iter().enumerate() {
        let f = format!("spec.domain.devices.disks[{i}]");
        disk_issue_fields(d, &f, is);
        let Some((vi, vol)) = volumes.iter().enumerate().find(|(_, v)| v.name == d.name) else {
            is.add(
                format!("{f}.name"),
                format!("Not found: {:?}: no volume of that name", d.name),
            );
            continue;
        };
        used.insert(vol.name.clone());
        let vf = format!("spec.volumes[{vi}]");
        let (device, bus_v, readonly) = if let Some(c) = &d.cdrom {
            if c.tray.as_deref() == Some("open") {
                is.add(
                    format!("{f}.cdrom.tray"),
                    "not supported by kubevirt-rs: an open tray",
                );
            }
            let b = bus(
                c.bus.as_deref(),
                DiskBus::Sata,
                format!("{f}.cdrom.bus"),
                is,
            );
            if b == DiskBus::Virtio {
                is.add(
                    format!("{f}.cdrom.bus"),
                    "Invalid value: \"virtio\": a cdrom cannot use the virtio bus",
                );
            }
            (DiskDevice::Cdrom, b, c.readonly.unwrap_or(true))
        } else {
            let t = d.disk.clone().unwrap_or_default();
            let b = bus(
                t.bus.as_deref(),
                DiskBus::Virtio,
                format!("{f}.disk.bus"),
                is,
            );
            is.unsupported(
                &format!("{f}.disk.pciAddress"),
                &t.pci_address,
                "fixed PCI addresses",
            );
            (DiskDevice::Disk, b, t.readonly.unwrap_or(false))
        };
        let safe = sanitize(&vol.name);
        let (path, format, prep) = match vol.source() {
            None => {
                is.add(
                    vf.clone(),
                    "Invalid value: a volume needs exactly one source",
                );
                continue;
            }
            Some(VolumeSource::HostDisk(h)) => {
                let path = PathBuf::from(&h.path);
                if !path.is_absolute() {
                    is.add(
                        format!("{vf}.hostDisk.path"),
                        "Invalid value: must be an absolute path",
                    );
                }
                let prep = match h.disk_type.as_str() {
                    "Disk" => VolumePrep::Existing {
                        volume: vol.name.clone(),
                        path: path.clone(),
                    },
                    "DiskOrCreate" => match &h.capacity {
                        Some(c) if c.to_bytes() > 0 => VolumePrep::CreateIfMissing {
                            volume: vol.name.clone(),
                            path: path.clone(),
                            capacity: c.as_str(),
                        },
                        _ => {
                            is.add(
                                format!("{vf}.hostDisk.capacity"),
                                "Required value: DiskOrCreate needs a capacity",
                            );
                            continue;
                        }
                    },
                    other => {
                        is.add(
                            format!("{vf}.hostDisk.type"),
                            format!("Unsupported value: {other:?}: supported values: \"Disk\", \"DiskOrCreate\""),
                        );
                        continue;
                    }
                };
                is.unsupported_true(
                    &format!("{vf}.hostDisk.shared"),
                    h.shared,
                    "shared host disks",
                );
                (path, DiskFormat::Raw, prep)
            }
            Some(VolumeSource::EmptyDisk(e)) => {
                let target = rd.join(format!("empty-{safe}.img"));
                if e.capacity.is_zero() || e.capacity.is_negative() {
                    is.add(
                        format!("{vf}.emptyDisk.capacity"),
                        "Invalid value: must be positive",
                    );
                }
                (
                    target.clone(),
                    DiskFormat::Raw,
                    VolumePrep::EmptyDisk {
                        volume: vol.name.clone(),
                        target,
                        capacity: e.capacity.as_str(),
                    },
                )
            }
            Some(VolumeSource::Ephemeral(e)) => {
                let Some(claim) = &e.persistent_volume_claim else {
                    is.add(
                        format!("{vf}.ephemeral.persistentVolumeClaim"),
                        "Required value",
                    );
                    continue;
                };
                let Some(base) = env.claims.get(&claim.claim_name) else {
                    is.add(
                        format!("{vf}.ephemeral.persistentVolumeClaim.claimName"),
                        format!(
                            "Not found: {:?}: no local disk image for this claim on the node",
                            claim.claim_name
                        ),
                    );
                    continue;
                };
                let target = rd.join(format!("overlay-{safe}.qcow2"));
                (
                    target.clone(),
                    DiskFormat::Qcow2,
                    VolumePrep::Ephemeral {
                        volume: vol.name.clone(),
                        base: base.clone(),
                        target,
                    },
                )
            }
            Some(VolumeSource::PersistentVolumeClaim(c)) => {
                let Some(p) = env.claims.get(&c.claim_name) else {
                    is.add(
                        format!("{vf}.persistentVolumeClaim.claimName"),
                        format!(
                            "Not found: {:?}: no local disk image for this claim on the node",
                            c.claim_name
                        ),
                    );
                    continue;
                };
                is.unsupported_true(
                    &format!("{vf}.persistentVolumeClaim.hotpluggable"),
                    c.hotpluggable,
                    "hotplug",
                );
                (
                    p.clone(),
                    DiskFormat::Raw,
                    VolumePrep::Existing {
                        volume: vol.name.clone(),
                        path: p.clone(),
                    },
                )
            }
            Some(VolumeSource::DataVolume(dv)) => {
                let Some(p) = env.claims.get(&dv.name) else {
                    is.add(
                        format!("{vf}.dataVolume.name"),
                        format!(
                            "Not found: {:?}: no local disk image for this DataVolume on the node",
                            dv.name
                        ),
                    );
                    continue;
                };
                is.unsupported_true(
                    &format!("{vf}.dataVolume.hotpluggable"),
                    dv.hotpluggable,
                    "hotplug",
                );
                (
                    p.clone(),
                    DiskFormat::Raw,
                    VolumePrep::Existing {
                        volume: vol.name.clone(),
                        path: p.clone(),
                    },
                )
            }
            Some(VolumeSource::ContainerDisk(c)) => {
                if let Some(p) = c.image_pull_policy.as_deref() {
                    if !matches!(p, "Always" | "IfNotPresent" | "Never") {
                        is.add(
                            format!("{vf}.containerDisk.imagePullPolicy"),
                            format!("Unsupported value: {p:?}: supported values: \"Always\", \"IfNotPresent\", \"Never\""),
                        );
                    }
                }
                if c.image.trim().is_empty() {
                    is.add(format!("{vf}.containerDisk.image"), "Required value");
                }
                is.unsupported(
                    &format!("{vf}.containerDisk.imagePullSecret"),
                    &c.image_pull_secret,
                    "registry credentials",
                );
                let target = rd.join(format!("overlay-{safe}.qcow2"));
                (
                    target.clone(),
                    DiskFormat::Qcow2,
                    VolumePrep::ContainerDisk {
                        volume: vol.name.clone(),
                        image: c.image.clone(),
                        path: c.path.clone().filter(|p| !p.is_empty()),
                        pull_policy: c.image_pull_policy.clone(),
                        target,
                    },
                )
            }
            Some(VolumeSource::CloudInitNoCloud(src))
            | Some(VolumeSource::CloudInitConfigDrive(src)) => {
                let config_drive = vol.cloud_init_config_drive.is_some();
                let key = if config_drive {
                    "cloudInitConfigDrive"
                } else {
                    "cloudInitNoCloud"
                };
                let (user_secret, network_secret) =
                    cloud_init_secrets(src, env, &format!("{vf}.{key}"), is);
                let target = rd.join(format!("cloudinit-{safe}.iso"));
                let hostname = spec
                    .hostname
                    .clone()
                    .filter(|h| !h.is_empty())
                    .unwrap_or_else(|| vmi.metadata.name.clone().unwrap_or_default());
                (
                    target.clone(),
                    DiskFormat::Raw,
                    VolumePrep::CloudInit {
                        volume: vol.name.clone(),
                        config_drive,
                        user_data: src.user_data.clone(),
                        user_data_base64: src.user_data_base64.clone(),
                        user_data_secret: user_secret,
                        network_data: src.network_data.clone(),
                        network_data_base64: src.network_data_base64.clone(),
                        network_data_secret: network_secret,
                        namespace: vmi.metadata.namespace.clone().unwrap_or_default(),
                        name: vmi.metadata.name.clone().unwrap_or_default(),
                        uid: vmi.metadata.uid.clone(),
                        hostname,
                        target,
                    },
                )
            }
            Some(other) => {
                is.add(
                    format!("{vf}.{}", other.field_name()),
                    "not supported by kubevirt-rs: this volume source cannot be attached as a disk yet",
                );
                continue;
            }
        };
        dom.disks.push(DiskConfig {
            name: d.name.clone(),
            path,
            format,
            bus: bus_v,
            device,
            readonly,
            boot_order: d.boot_order,
            serial: d.serial.clone(),
        });
        preps.push(prep);
    }
    for (vi, vol) in volumes.iter().enumerate() {
        if !used.contains(&vol.name) {
            is.add(
                format!("spec.volumes[{vi}]"),
                format!(
                    "not supported by kubevirt-rs: volume {:?} is not attached to any disk",
                    vol.name
                ),
            );
        }
    }
    preps
}

fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn nic_model(iface: &Interface, f: &str, is: &mut Issues) -> NicModel {
    match iface.model.as_deref() {
        None | Some("") | Some("virtio") => NicModel::Virtio,
        Some("e1000") => NicModel::E1000,
        Some("e1000e") => NicModel::E1000e,
        Some("rtl8139") => NicModel::Rtl8139,
        Some(other) => {
            is.add(
                format!("{f}.model"),
                format!("Unsupported value: {other:?}: supported values: \"virtio\", \"e1000\", \"e1000e\", \"rtl8139\""),
            );
            NicModel::Virtio
        }
    }
}

fn interfaces(
    spec: &VirtualMachineInstanceSpec,
    dom: &mut DomainConfig,
    is: &mut Issues,
) -> Vec<NetPrep> {
    let mut out = Vec::new();
    let networks = spec.networks.clone().unwrap_or_default();
    let ifaces = spec.domain.devices.interfaces.clone().unwrap_or_default();
    for (i, iface) in ifaces.iter().enumerate() {
        let f = format!("spec.domain.devices.interfaces[{i}]");
        let Some(net) = networks.iter().find(|n| n.name == iface.name) else {
            is.add(
                format!("{f}.name"),
                format!("Not found: {:?}: no network of that name", iface.name),
            );
            continue;
        };
        if net.multus.is_some() {
            is.add(
                format!("{f}.name"),
                "not supported by kubevirt-rs: Multus secondary networks",
            );
            continue;
        }
        if net.pod.is_none() {
            is.add(
                format!("{f}.name"),
                "Invalid value: the network has no source",
            );
            continue;
        }
        let model = nic_model(iface, &f, is);
        for (field, present, what) in [
            (
                "dhcpOptions",
                iface.dhcp_options.is_some(),
                "custom DHCP options",
            ),
            (
                "pciAddress",
                iface.pci_address.is_some(),
                "fixed PCI addresses",
            ),
            ("tag", iface.tag.is_some(), "device role tags"),
            ("acpiIndex", iface.acpi_index.is_some(), "ACPI indexes"),
        ] {
            if present {
                is.add(
                    format!("{f}.{field}"),
                    format!("not supported by kubevirt-rs: {what}"),
                );
            }
        }
        if let Some(state) = iface.state.as_deref() {
            if state != "up" {
                is.add(
                    format!("{f}.state"),
                    format!("not supported by kubevirt-rs: link state {state:?}"),
                );
            }
        }
        let mac = iface.mac_address.clone().filter(|m| !m.is_empty());
        let mut ports = Vec::new();
        for (pi, p) in iface.ports.iter().flatten().enumerate() {
            if !(1..=65535).contains(&p.port) {
                is.add(
                    format!("{f}.ports[{pi}].port"),
                    format!("Invalid value: {}", p.port),
                );
                continue;
            }
            if p.protocol.as_deref().is_some_and(|pr| pr != "TCP") {
                is.add(
                    format!("{f}.ports[{pi}].protocol"),
                    "not supported by kubevirt-rs: only TCP ports are forwarded",
                );
            }
            ports.push(p.port as u16);
        }
        let binding = iface.binding_methods();
        let method = match binding.as_slice() {
            [one] => *one,
            [] => "masquerade",
            _ => {
                is.add(f.clone(), "Invalid value: more than one binding method");
                continue;
            }
        };
        let nic = iface.name.clone();
        let placeholder = NicBackend::User {
            tcp_forwards: vec![],
        };
        match method {
            "masquerade" => out.push(NetPrep::Masquerade {
                nic: nic.clone(),
                mac: mac.clone(),
                ports,
            }),
            "passt" => out.push(NetPrep::Passt {
                nic: nic.clone(),
                mac: mac.clone(),
            }),
            other => {
                let why = match other {
                    "bridge" => "the bridge binding on the pod network would hand the pod IP to the guest; use masquerade",
                    "slirp" => "slirp was removed upstream; use masquerade or passt",
                    "sriov" => "SR-IOV needs SR-IOV hardware and a device plugin",
                    "macvtap" => "macvtap needs a macvtap device plugin",
                    _ => "network binding plugins",
                };
                is.add(
                    format!("{f}.{other}"),
                    format!("not supported by kubevirt-rs: {why}"),
                );
                continue;
            }
        }
        dom.nics.push(NicConfig {
            name: nic,
            model,
            mac,
            backend: placeholder,
            boot_order: iface.boot_order,
        });
    }
    out
}

#[cfg(test)]
mod tests;
