//! VirtualMachineInstance -> hypervisor `DomainConfig` (+ the volume and network work the
//! launcher must do before QEMU starts). Pure: no IO, so every rule is unit-tested.
//!
//! Anything the launcher cannot honour is an error naming the field path; nothing is
//! silently dropped. What kubevirt-rs cannot run at all is decided by
//! [`kubevirt_api::support`] (reported first); this module adds only what depends on the
//! launcher's environment (claims and secrets not resolved, kernel boot needs) and what makes
//! a VMI impossible to translate (missing names and sources, invalid values).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kubevirt_api::access_credentials::{cloud_init_key_secrets, CloudInitSeed};
use kubevirt_api::support::{unsupported_vmi_features, UnsupportedFeature};
use kubevirt_api::v1::{
    CloudInitSource, Disk, VirtualMachineInstance, VirtualMachineInstanceSpec, Volume, VolumeSource,
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

impl From<UnsupportedFeature> for FieldIssue {
    fn from(f: UnsupportedFeature) -> Self {
        FieldIssue {
            reason: f.message(),
            field: f.field,
        }
    }
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
    #[error("cannot run this VirtualMachineInstance: {}", join_issues(issues))]
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

pub(crate) fn join_issues(issues: &[FieldIssue]) -> String {
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
    /// Where hostDisks may live on this node (none: hostDisk is off).
    pub host_disks: kubevirt_api::host_disk::HostDiskPolicy,
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
            host_disks: Default::default(),
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
    /// A claim's disk image, used as is (raw; refused if its content names other files).
    Existing { volume: String, path: PathBuf },
    /// A hostDisk: opened beneath one of `dirs` without leaving it; `Some(capacity)`
    /// (`DiskOrCreate`) creates a sparse raw file of that size when missing.
    HostDisk {
        volume: String,
        path: PathBuf,
        dirs: Vec<PathBuf>,
        /// Kubernetes quantity, e.g. `1Gi`.
        capacity: Option<String>,
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
        /// SSH keys from `accessCredentials` propagated through this seed's metadata.
        public_keys: Vec<String>,
        target: PathBuf,
    },
}

impl VolumePrep {
    /// The volume name.
    pub fn volume(&self) -> &str {
        match self {
            VolumePrep::Existing { volume, .. }
            | VolumePrep::HostDisk { volume, .. }
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
}

/// The domain name for a VMI: `<namespace>_<name>`.
pub fn domain_name(vmi: &VirtualMachineInstance) -> String {
    format!(
        "{}_{}",
        vmi.metadata.namespace.as_deref().unwrap_or("default"),
        vmi.metadata.name.as_deref().unwrap_or("")
    )
}

/// Translates a (defaulted) VMI. Everything [`kubevirt_api::support`] reports comes first;
/// the translation itself then assumes it has nothing unsupported to deal with.
pub fn translate(
    vmi: &VirtualMachineInstance,
    env: &LauncherEnv,
) -> Result<Translation, TranslateError> {
    let mut is = Issues(
        unsupported_vmi_features(vmi)
            .into_iter()
            .map(FieldIssue::from)
            .collect(),
    );
    let spec = &vmi.spec;
    let rd = &env.run_dir;
    let name = vmi.metadata.name.clone().unwrap_or_default();
    if name.is_empty() {
        is.add("metadata.name", "Required value");
    }
    let mut dom = DomainConfig::new(domain_name(vmi), 128, rd.qmp_socket());
    dom.log_file = Some(rd.qemu_log());

    machine(spec, &mut dom);
    cpu(spec, &mut dom);
    // The guest's CPU weight follows its pod's CPU request, as a kubelet sets cpu.shares.
    let millis = kubevirt_api::launcher_pod::cpu_request_millis(
        vmi,
        kubevirt_api::launcher_pod::DEFAULT_CPU_ALLOCATION_RATIO,
    );
    dom.cpu_shares = Some((millis * 1024 / 1000).max(2));
    memory(spec, &mut dom, &mut is);
    let kernel_boot = firmware(spec, env, &mut dom, &mut is);
    devices(spec, env, &mut dom);
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

fn machine(spec: &VirtualMachineInstanceSpec, dom: &mut DomainConfig) {
    let m = spec
        .domain
        .machine
        .as_ref()
        .and_then(|m| m.machine_type.as_deref())
        .unwrap_or_default();
    dom.machine = match m {
        "" => "q35".into(),
        // Downstream (RHEL) machine types do not exist in upstream QEMU; q35 is their base.
        t if t.starts_with("pc-q35-rhel") => "q35".into(),
        t => t.into(),
    };
}

fn cpu(spec: &VirtualMachineInstanceSpec, dom: &mut DomainConfig) {
    let cpu = spec.domain.cpu.clone().unwrap_or_default();
    dom.cpu = CpuConfig {
        sockets: kubevirt_api::support::guest_sockets(spec),
        cores: cpu.cores.unwrap_or(1).max(1),
        threads: cpu.threads.unwrap_or(1).max(1),
        model: match cpu.model.as_deref() {
            None | Some("") | Some("host-model") => CpuModel::HostModel,
            Some("host-passthrough") => CpuModel::HostPassthrough,
            Some(m) => CpuModel::Named(m.to_string()),
        },
    };
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
    if let Some(bl) = &fw.bootloader {
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

fn devices(spec: &VirtualMachineInstanceSpec, env: &LauncherEnv, dom: &mut DomainConfig) {
    let d = &spec.domain.devices;
    if d.autoattach_serial_console.unwrap_or(true) {
        dom.serial = Some(SerialConfig {
            socket: env.run_dir.serial_socket(),
            log_file: Some(env.run_dir.serial_log()),
        });
    }
    if d.autoattach_graphics_device.unwrap_or(true) {
        dom.vnc_socket = Some(env.run_dir.vnc_socket());
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
}

/// A disk's serial goes onto the QEMU command line as is.
fn disk_serial(d: &Disk, f: &str, is: &mut Issues) {
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

/// The bus of a disk or CD-ROM target, `default` when unset. `support` reports buses not in
/// `SUPPORTED_DISK_BUSES`; each of those maps to its own bus here.
fn bus(value: Option<&str>, default: DiskBus) -> DiskBus {
    match value {
        Some("virtio") => DiskBus::Virtio,
        Some("sata") => DiskBus::Sata,
        Some("scsi") => DiskBus::Scsi,
        _ => default,
    }
}

/// The keys of the `accessCredentials` propagated through the `seed` metadata: each value
/// of each named Secret is one key entry, as upstream reads the mounted Secret's files.
fn seed_public_keys(
    spec: &kubevirt_api::v1::VirtualMachineInstanceSpec,
    seed: CloudInitSeed,
    env: &LauncherEnv,
    is: &mut Issues,
) -> Vec<String> {
    let mut keys = Vec::new();
    for name in cloud_init_key_secrets(spec, seed) {
        match env.secrets.get(&name) {
            None => is.add(
                "spec.accessCredentials",
                format!("Not found: secret {name:?} was not resolved for the launcher"),
            ),
            Some(data) => keys.extend(
                data.values()
                    .map(|v| String::from_utf8_lossy(v).trim().to_string())
                    .filter(|k| !k.is_empty()),
            ),
        }
    }
    keys
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
    let rd = env.run_dir.path();
    for (i, d) in disks.iter().enumerate() {
        let f = format!("spec.domain.devices.disks[{i}]");
        disk_serial(d, &f, is);
        let volume = volumes.iter().enumerate().find(|(_, v)| v.name == d.name);
        let (device, bus_v, readonly) = if let Some(c) = &d.cdrom {
            let b = bus(c.bus.as_deref(), DiskBus::Sata);
            if b == DiskBus::Virtio {
                is.add(
                    format!("{f}.cdrom.bus"),
                    "Invalid value: \"virtio\": a cdrom cannot use the virtio bus",
                );
            }
            (DiskDevice::Cdrom, b, c.readonly.unwrap_or(true))
        } else {
            let t = d.disk.clone().unwrap_or_default();
            let b = bus(t.bus.as_deref(), DiskBus::Virtio);
            (DiskDevice::Disk, b, t.readonly.unwrap_or(false))
        };
        let disk = |path, format| DiskConfig {
            name: d.name.clone(),
            path,
            format,
            backing: None,
            bus: bus_v,
            device,
            readonly,
            boot_order: d.boot_order,
            serial: d.serial.clone(),
        };
        // A cdrom with no volume, or with one the node agent inserts once the VM runs, starts
        // with an empty tray (upstream's declarative CD-ROM inject and eject).
        if d.cdrom.is_some() && volume.is_none_or(|(_, v)| v.hotpluggable()) {
            dom.disks.push(disk(None, DiskFormat::Raw));
            continue;
        }
        let (vi, vol) = match volume {
            None => {
                is.add(
                    format!("{f}.name"),
                    format!("Not found: {:?}: no volume of that name", d.name),
                );
                continue;
            }
            // Attached by the node agent once the VM runs, never at boot.
            Some((_, v)) if v.hotpluggable() => continue,
            Some(found) => found,
        };
        let vf = format!("spec.volumes[{vi}]");
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
                for e in env
                    .host_disks
                    .check("spec.volumes", std::slice::from_ref(vol))
                {
                    // `check` numbers the one volume it was given 0.
                    let field = e.field.replacen("spec.volumes[0]", &vf, 1);
                    is.add(field, e.body());
                }
                let host_disk = |capacity| VolumePrep::HostDisk {
                    volume: vol.name.clone(),
                    path: path.clone(),
                    dirs: env.host_disks.dirs.clone(),
                    capacity,
                };
                let prep = match h.disk_type.as_str() {
                    "Disk" => host_disk(None),
                    "DiskOrCreate" => match &h.capacity {
                        Some(c) if c.to_bytes() > 0 => host_disk(Some(c.as_str())),
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
                let seed = if config_drive {
                    CloudInitSeed::ConfigDrive
                } else {
                    CloudInitSeed::NoCloud
                };
                let public_keys = seed_public_keys(spec, seed, env, is);
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
                        public_keys,
                        target,
                    },
                )
            }
            // Sources that cannot back a disk are reported by `support`.
            Some(_) => continue,
        };
        dom.disks.push(disk(Some(path), format));
        preps.push(prep);
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

/// The QEMU model of an interface model; `None` for models `support` reports (every one in
/// `SUPPORTED_NIC_MODELS` has one).
fn nic_model(model: Option<&str>) -> Option<NicModel> {
    match model {
        None | Some("") | Some("virtio") => Some(NicModel::Virtio),
        Some("e1000") => Some(NicModel::E1000),
        Some("e1000e") => Some(NicModel::E1000e),
        Some("rtl8139") => Some(NicModel::Rtl8139),
        Some(_) => None,
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
        if net.pod.is_none() {
            // Multus networks are reported by `support`; a network without a source is invalid.
            if net.multus.is_none() {
                is.add(
                    format!("{f}.name"),
                    "Invalid value: the network has no source",
                );
            }
            continue;
        }
        let model = nic_model(iface.model.as_deref()).unwrap_or(NicModel::Virtio);
        let mac = iface.mac_address.clone().filter(|m| !m.is_empty());
        let mut ports = Vec::new();
        for (pi, p) in iface.ports.iter().flatten().enumerate() {
            match u16::try_from(p.port) {
                Ok(port) if port > 0 => ports.push(port),
                _ => is.add(
                    format!("{f}.ports[{pi}].port"),
                    format!("Invalid value: {}", p.port),
                ),
            }
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
            // The other binding methods are reported by `support`.
            _ => continue,
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
