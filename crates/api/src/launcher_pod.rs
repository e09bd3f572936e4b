//! The virt-launcher Pod of a VMI, rendered as upstream's virt-controller renders it: the
//! object a kubelet (or, on one machine, the embedded node agent) runs, and what clients
//! written for KubeVirt look up (`kubevirt.io/created-by=<vmi uid>`).
//!
//! Upstream's shape is kept: `generateName: virt-launcher-<vmi>-`, the labels
//! (`kubevirt.io=virt-launcher`, `kubevirt.io/created-by`, `vm.kubevirt.io/name`, the VMI's
//! own), annotations, the VMI as controlling owner, grace period G+30, readiness gate, node
//! selector, affinity, tolerations, the `compute` container with requests = guest memory +
//! overhead and CPU = vCPUs / allocation ratio, device resources as limits, and one pod
//! volume per claim, host disk, ConfigMap, Secret and cloud-init Secret.
//!
//! Deliberate differences (README): the memory overhead uses upstream's terms with the
//! costs of kubevirt-rs's processes instead of libvirt's ([`memory_overhead`]); the pod
//! runs as root (the launcher builds the pod network itself) until the hardening work
//! lands; containerDisks are pulled by the launcher, not by extra containers; no
//! `guest-console-log` sidecar (the launcher keeps the serial log).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, ContainerPort, DownwardAPIVolumeSource,
    EmptyDirVolumeSource, EnvVar, EnvVarSource, ExecAction, HostPathVolumeSource,
    ObjectFieldSelector, PersistentVolumeClaimVolumeSource, Pod, PodReadinessGate,
    PodSecurityContext, PodSpec, Probe as PodProbe, ResourceRequirements, SecretVolumeSource,
    SecurityContext, Volume as PodVolume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity as K8sQuantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use crate::quantity::Quantity;
use crate::v1::well_known::*;
use crate::v1::{VirtualMachineInstance, VolumeSource};

const MI: u64 = 1 << 20;

/// Cluster-wide settings the pod depends on (upstream's KubeVirt CR configuration).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LauncherPodSettings {
    /// Image of the `compute` container.
    pub image: String,
    /// Command of the `compute` container.
    pub command: Vec<String>,
    /// `useEmulation`: no KVM device is requested (the node runs guests under TCG).
    pub emulation: bool,
    /// `cpuAllocationRatio`: one vCPU requests 1/ratio of a CPU.
    pub cpu_allocation_ratio: u32,
    /// A migration target pod must land on another node than the VMI's other pods (upstream's
    /// anti-affinity; cluster mode). Embedded mode has one node: migrations stay on it.
    pub migrate_to_other_nodes: bool,
}

/// Upstream's default `cpuAllocationRatio`.
pub const DEFAULT_CPU_ALLOCATION_RATIO: u32 = 10;

impl LauncherPodSettings {
    /// Upstream's defaults with the given image and command.
    pub fn new(image: impl Into<String>, command: Vec<String>) -> Self {
        LauncherPodSettings {
            image: image.into(),
            command,
            emulation: false,
            cpu_allocation_ratio: DEFAULT_CPU_ALLOCATION_RATIO,
            migrate_to_other_nodes: false,
        }
    }
}

/// The CPU the launcher pod requests, in thousandths of a CPU: the VMI's own request, else
/// vCPUs / `ratio`.
pub fn cpu_request_millis(vmi: &VirtualMachineInstance, ratio: u32) -> u64 {
    let requested = vmi
        .spec
        .domain
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("cpu"))
        .map(|q| q.milli_value().max(0) as u64);
    requested.unwrap_or_else(|| u64::from(vcpus(vmi)) * 1000 / u64::from(ratio.max(1)))
}

/// Memory the launcher pod needs besides guest RAM, in bytes. Upstream's terms
/// (`GetMemoryOverhead`): page tables (requested memory / 512), a fixed cost for the
/// processes around QEMU, QEMU itself, 8 MiB per vCPU and for the IO thread, video RAM when
/// a graphics device is attached, and swtpm for a TPM. The fixed cost is kubevirt-rs's
/// launcher (8 MiB, measured under 7 MiB RSS) instead of upstream's 220 MiB for
/// virt-launcher, its monitor, virtlogd and virtqemud; QEMU's 30 MiB is upstream's figure.
pub fn memory_overhead(vmi: &VirtualMachineInstance) -> u64 {
    let domain = &vmi.spec.domain;
    let requested = domain
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("memory"))
        .map_or(0, Quantity::to_bytes);
    let mut overhead = requested.div_ceil(1000) * 1000 / 512;
    overhead += 8 * MI; // kubevirt-rs launcher
    overhead += 30 * MI; // QEMU
    overhead += 8 * MI * u64::from(vcpus(vmi));
    overhead += 8 * MI; // IO thread
    if domain.devices.autoattach_graphics_device != Some(false) {
        overhead += 32 * MI;
    }
    if domain
        .devices
        .tpm
        .as_ref()
        .is_some_and(|t| t.enabled != Some(false))
    {
        overhead += 53 * MI;
    }
    overhead
}

/// vCPUs of the guest: the topology's product, else the CPU limit or request, at least 1.
pub fn vcpus(vmi: &VirtualMachineInstance) -> u32 {
    if let Some(cpu) = &vmi.spec.domain.cpu {
        let n = [cpu.cores, cpu.sockets, cpu.threads]
            .into_iter()
            .flatten()
            .filter(|&f| f > 0)
            .fold(1u32, |a, f| a.saturating_mul(f));
        return n.max(1);
    }
    let res = vmi.spec.domain.resources.as_ref();
    let from =
        |m: Option<&BTreeMap<String, Quantity>>| m.and_then(|m| m.get("cpu")).map(Quantity::value);
    from(res.and_then(|r| r.limits.as_ref()))
        .or_else(|| from(res.and_then(|r| r.requests.as_ref())))
        .unwrap_or(1)
        .clamp(1, i64::from(u32::MAX)) as u32
}

/// The VMI's host name as the pod's: `spec.hostname`, else the name up to its first dot,
/// at most 63 characters.
pub fn sanitized_hostname(vmi: &VirtualMachineInstance) -> String {
    if let Some(h) = vmi.spec.hostname.as_ref().filter(|h| !h.is_empty()) {
        return h.clone();
    }
    let name = vmi.metadata.name.as_deref().unwrap_or("");
    let host = name.split('.').next().unwrap_or("");
    host.chars().take(63).collect()
}

/// `%g`-style CPU amount for `vcpus / ratio`: `100m`, `400m`, `1.5`.
fn cpu_request(vcpus: u32, ratio: u32) -> String {
    let milli = u64::from(vcpus) * 1000 / u64::from(ratio.max(1));
    if milli < 1000 {
        format!("{milli}m")
    } else if milli % 1000 == 0 {
        (milli / 1000).to_string()
    } else {
        let s = format!("{:.3}", milli as f64 / 1000.0);
        s.trim_end_matches('0').to_string()
    }
}

fn q(s: impl Into<String>) -> K8sQuantity {
    K8sQuantity(s.into())
}

/// The launcher pod's memory request and limit in bytes: the guest's plus the overhead
/// (the request without it when `overcommitGuestOverhead`), as upstream.
fn pod_memory(vmi: &VirtualMachineInstance) -> (Option<u64>, Option<u64>) {
    let domain = &vmi.spec.domain;
    let res = domain.resources.clone().unwrap_or_default();
    let user_requests = res.requests.unwrap_or_default();
    let user_limits = res.limits.unwrap_or_default();
    let overhead = memory_overhead(vmi);
    let memory = user_requests
        .get("memory")
        .or(user_limits.get("memory"))
        .map(Quantity::to_bytes)
        .or_else(|| {
            domain
                .memory
                .as_ref()?
                .guest
                .as_ref()
                .map(Quantity::to_bytes)
        });
    let request = memory.map(|m| {
        if res.overcommit_guest_overhead == Some(true) {
            m
        } else {
            m + overhead
        }
    });
    let limit = user_limits.get("memory").map(|l| l.to_bytes() + overhead);
    (request, limit)
}

/// What bounds a VM's processes on the node (its cgroup), from the pod's resources: the
/// memory limit when the VMI sets one, else the memory request (a VM without a limit still
/// cannot take the node's memory); the CPU limit in thousandths of a CPU, when set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmmBounds {
    pub memory_bytes: Option<u64>,
    pub cpu_millis: Option<u64>,
}

pub fn vmm_bounds(vmi: &VirtualMachineInstance) -> VmmBounds {
    let (request, limit) = pod_memory(vmi);
    let cpu_millis = vmi
        .spec
        .domain
        .resources
        .as_ref()
        .and_then(|r| r.limits.as_ref())
        .and_then(|l| l.get("cpu"))
        .map(|c| c.milli_value().max(0) as u64);
    VmmBounds {
        memory_bytes: limit.or(request),
        cpu_millis,
    }
}

fn resources(vmi: &VirtualMachineInstance, s: &LauncherPodSettings) -> ResourceRequirements {
    let domain = &vmi.spec.domain;
    let res = domain.resources.clone().unwrap_or_default();
    let user_requests = res.requests.clone().unwrap_or_default();
    let user_limits = res.limits.clone().unwrap_or_default();
    let mut requests: BTreeMap<String, K8sQuantity> = BTreeMap::new();
    let mut limits: BTreeMap<String, K8sQuantity> = BTreeMap::new();

    let (memory_request, memory_limit) = pod_memory(vmi);
    if let Some(m) = memory_request {
        requests.insert("memory".into(), q(Quantity::from_bytes(m).canonical()));
    }
    if let Some(limit) = memory_limit {
        limits.insert("memory".into(), q(Quantity::from_bytes(limit).canonical()));
    }
    match user_requests.get("cpu") {
        Some(c) => requests.insert("cpu".into(), q(c.canonical())),
        None => requests.insert(
            "cpu".into(),
            q(cpu_request(vcpus(vmi), s.cpu_allocation_ratio)),
        ),
    };
    if let Some(c) = user_limits.get("cpu") {
        limits.insert("cpu".into(), q(c.canonical()));
    }
    let ephemeral = user_requests
        .get("ephemeral-storage")
        .map_or(0, Quantity::to_bytes)
        + 50_000_000;
    requests.insert(
        "ephemeral-storage".into(),
        q(if ephemeral == 50_000_000 {
            "50M".to_string()
        } else {
            ephemeral.to_string()
        }),
    );
    let devices = &domain.devices;
    let interfaces = devices.interfaces.as_deref().unwrap_or_default();
    if !interfaces.is_empty() || devices.autoattach_pod_interface != Some(false) {
        limits.insert("devices.kubevirt.io/tun".into(), q("1"));
    }
    if !s.emulation {
        let virtio_nic = interfaces
            .iter()
            .any(|i| matches!(i.model.as_deref(), None | Some("") | Some("virtio")));
        if virtio_nic {
            limits.insert("devices.kubevirt.io/vhost-net".into(), q("1"));
        }
        limits.insert("devices.kubevirt.io/kvm".into(), q("1"));
    }
    if devices.autoattach_vsock == Some(true) {
        limits.insert("devices.kubevirt.io/vhost-vsock".into(), q("1"));
    }
    ResourceRequirements {
        requests: Some(requests),
        limits: Some(limits).filter(|l| !l.is_empty()),
        ..Default::default()
    }
}

fn empty_dir(name: &str) -> PodVolume {
    PodVolume {
        name: name.into(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Default::default()
    }
}

fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: read_only.then_some(true),
        ..Default::default()
    }
}

/// Pod volumes and `compute` mounts: upstream's fixed emptyDirs, then one per claim, host
/// disk, ConfigMap/Secret/downwardAPI volume and cloud-init Secret reference.
fn volumes(vmi: &VirtualMachineInstance) -> (Vec<PodVolume>, Vec<VolumeMount>) {
    let mut vols: Vec<PodVolume> = [
        "private",
        "public",
        "sockets",
        "virt-bin-share-dir",
        "libvirt-runtime",
        "ephemeral-disks",
        "container-disks",
    ]
    .into_iter()
    .map(empty_dir)
    .collect();
    let mut mounts = vec![
        mount("private", "/var/run/kubevirt-private", false),
        mount("public", "/var/run/kubevirt", false),
        mount(
            "ephemeral-disks",
            "/var/run/kubevirt-ephemeral-disks",
            false,
        ),
        mount("libvirt-runtime", "/var/run/libvirt", false),
        mount("sockets", "/var/run/kubevirt/sockets", false),
        VolumeMount {
            mount_propagation: Some("HostToContainer".into()),
            ..mount(
                "container-disks",
                "/var/run/kubevirt/container-disks",
                false,
            )
        },
    ];
    let disks: Vec<&str> = vmi
        .spec
        .domain
        .devices
        .disks
        .iter()
        .flatten()
        .map(|d| d.name.as_str())
        .collect();
    let claim = |name: &str, claim: &str, read_only: Option<bool>| PodVolume {
        name: name.into(),
        persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
            claim_name: claim.into(),
            read_only,
        }),
        ..Default::default()
    };
    let disk_mount = |name: &str| {
        mount(
            name,
            &format!("/var/run/kubevirt-private/vmi-disks/{name}"),
            false,
        )
    };
    for v in vmi.spec.volumes.iter().flatten() {
        let name = v.name.as_str();
        let Some(source) = v.source() else { continue };
        match source {
            VolumeSource::PersistentVolumeClaim(p) if p.hotpluggable != Some(true) => {
                vols.push(claim(name, &p.claim_name, p.read_only));
                mounts.push(disk_mount(name));
            }
            VolumeSource::Ephemeral(e) => {
                if let Some(c) = &e.persistent_volume_claim {
                    vols.push(claim(name, &c.claim_name, Some(true)));
                    mounts.push(disk_mount(name));
                }
            }
            VolumeSource::DataVolume(d) if d.hotpluggable != Some(true) => {
                vols.push(claim(name, &d.name, None));
                mounts.push(disk_mount(name));
            }
            VolumeSource::HostDisk(h) => {
                let dir = std::path::Path::new(&h.path)
                    .parent()
                    .map_or("/".to_string(), |p| p.display().to_string());
                let type_ = if h.disk_type == "DiskOrCreate" {
                    "DirectoryOrCreate"
                } else {
                    "Directory"
                };
                vols.push(PodVolume {
                    name: name.into(),
                    host_path: Some(HostPathVolumeSource {
                        path: dir,
                        type_: Some(type_.into()),
                    }),
                    ..Default::default()
                });
                mounts.push(disk_mount(name));
            }
            VolumeSource::ConfigMap(c) => {
                vols.push(PodVolume {
                    name: name.into(),
                    config_map: Some(ConfigMapVolumeSource {
                        name: c.name.clone().unwrap_or_default(),
                        optional: c.optional,
                        ..Default::default()
                    }),
                    ..Default::default()
                });
                if disks.contains(&name) {
                    mounts.push(mount(
                        name,
                        &format!("/var/run/kubevirt-private/config-map/{name}"),
                        true,
                    ));
                }
            }
            VolumeSource::Secret(sec) => {
                vols.push(secret_volume(
                    name,
                    sec.secret_name.clone().unwrap_or_default(),
                    sec.optional,
                ));
                if disks.contains(&name) {
                    mounts.push(mount(
                        name,
                        &format!("/var/run/kubevirt-private/secret/{name}"),
                        true,
                    ));
                }
            }
            VolumeSource::DownwardApi(d) => {
                vols.push(PodVolume {
                    name: name.into(),
                    downward_api: Some(DownwardAPIVolumeSource {
                        items: d.fields.clone().filter(|i| !i.is_empty()),
                        ..Default::default()
                    }),
                    ..Default::default()
                });
                if disks.contains(&name) {
                    mounts.push(mount(
                        name,
                        &format!("/var/run/kubevirt-private/downwardapi/{name}"),
                        true,
                    ));
                }
            }
            VolumeSource::CloudInitNoCloud(c) | VolumeSource::CloudInitConfigDrive(c) => {
                for (suffix, reference, keys) in [
                    ("udata", &c.secret_ref, ["userdata", "userData"]),
                    (
                        "ndata",
                        &c.network_data_secret_ref,
                        ["networkdata", "networkData"],
                    ),
                ] {
                    let Some(secret) = reference.as_ref().map(|r| r.name.clone()) else {
                        continue;
                    };
                    let vol = format!("{name}-{suffix}");
                    vols.push(secret_volume(&vol, secret, None));
                    for key in keys {
                        mounts.push(VolumeMount {
                            sub_path: Some(key.into()),
                            ..mount(
                                &vol,
                                &format!("/var/run/kubevirt-private/secret/{name}/{key}"),
                                true,
                            )
                        });
                    }
                }
            }
            _ => {}
        }
    }
    vols.push(empty_dir("hotplug-disks"));
    mounts.push(VolumeMount {
        mount_propagation: Some("HostToContainer".into()),
        ..mount("hotplug-disks", "/var/run/kubevirt/hotplug-disks", false)
    });
    (vols, mounts)
}

fn secret_volume(name: &str, secret: String, optional: Option<bool>) -> PodVolume {
    PodVolume {
        name: name.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret),
            optional,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn labels(vmi: &VirtualMachineInstance) -> BTreeMap<String, String> {
    let mut labels = vmi.metadata.labels.clone().unwrap_or_default();
    labels.insert(APP_LABEL.into(), APP_LAUNCHER.into());
    labels.insert(
        CREATED_BY_LABEL.into(),
        vmi.metadata.uid.clone().unwrap_or_default(),
    );
    labels.insert(VM_NAME_LABEL.into(), sanitized_hostname(vmi));
    labels
}

fn annotations(vmi: &VirtualMachineInstance) -> BTreeMap<String, String> {
    let mut a = BTreeMap::new();
    a.insert(
        DOMAIN_ANNOTATION.into(),
        vmi.metadata.name.clone().unwrap_or_default(),
    );
    for (k, v) in vmi.metadata.annotations.iter().flatten() {
        let skip = k.starts_with("kubectl.kubernetes.io")
            || k.starts_with("kubevirt.io/storage-observed-api-version")
            || k.starts_with("kubevirt.io/latest-observed-api-version");
        if !skip {
            a.insert(k.clone(), v.clone());
        }
    }
    a.insert(
        DEFAULT_CONTAINER_ANNOTATION.into(),
        COMPUTE_CONTAINER.into(),
    );
    a.insert("kubevirt.io/migrationTransportUnix".into(), "true".into());
    a.insert(
        "descheduler.alpha.kubernetes.io/request-evict-only".into(),
        String::new(),
    );
    let masquerade = vmi
        .spec
        .domain
        .devices
        .interfaces
        .iter()
        .flatten()
        .any(|i| i.masquerade.is_some());
    if masquerade {
        a.insert(
            "traffic.sidecar.istio.io/kubevirtInterfaces".into(),
            "k6t-eth0".into(),
        );
        a.insert(
            "istio.io/reroute-virtual-interfaces".into(),
            "k6t-eth0".into(),
        );
    }
    a
}

fn node_selector(vmi: &VirtualMachineInstance) -> BTreeMap<String, String> {
    let mut sel = BTreeMap::new();
    sel.insert(NODE_SCHEDULABLE_LABEL.into(), "true".into());
    if let Some(arch) = vmi.spec.architecture.as_ref().filter(|a| !a.is_empty()) {
        sel.insert("kubernetes.io/arch".into(), arch.to_lowercase());
    }
    sel.extend(vmi.spec.node_selector.clone().unwrap_or_default());
    let cpu = vmi.spec.domain.cpu.as_ref();
    let mut flag = |label: String| {
        sel.insert(label, "true".into());
    };
    if cpu.is_some_and(|c| c.dedicated_cpu_placement == Some(true)) {
        flag("cpumanager".into());
    }
    if let Some(model) = cpu
        .and_then(|c| c.model.as_deref())
        .filter(|m| !m.is_empty() && *m != "host-model" && *m != "host-passthrough")
    {
        flag(format!("cpu-model.node.kubevirt.io/{model}"));
        for f in cpu.and_then(|c| c.features.as_ref()).into_iter().flatten() {
            if matches!(f.policy.as_deref(), None | Some("") | Some("require")) {
                flag(format!("cpu-feature.node.kubevirt.io/{}", f.name));
            }
        }
    }
    if cpu.is_some_and(|c| c.realtime.is_some()) {
        flag("kubevirt.io/realtime".into());
    }
    sel
}

/// Seconds a VMI's probe waits beyond its own initial delay: the guest needs its VMM
/// first (upstream's `LibvirtStartupDelay`).
pub const PROBE_STARTUP_DELAY_SECONDS: i32 = 10;

/// The program a probe the guest agent answers runs as (upstream's `virt-probe`): the
/// node's kubelet reads its arguments.
pub const VIRT_PROBE: &str = "virt-probe";

/// A VMI probe as the compute container's, as upstream renders it: defaults filled in
/// (timeout 1 s, period 10 s, thresholds 1 and 3), the startup delay added, and `exec` and
/// `guestAgentPing` turned into a `virt-probe` command (one more second of timeout for
/// its extra step).
pub fn container_probe(vmi: &VirtualMachineInstance, probe: &crate::v1::Probe) -> PodProbe {
    let positive = |v: Option<i32>, default: i32| v.filter(|v| *v >= 1).unwrap_or(default);
    let timeout = positive(probe.timeout_seconds, 1);
    let domain = format!(
        "{}_{}",
        vmi.metadata.namespace.as_deref().unwrap_or_default(),
        vmi.metadata.name.as_deref().unwrap_or_default()
    );
    let virt_probe = |tail: Vec<String>| {
        let mut command = vec![
            VIRT_PROBE.to_string(),
            "--domainName".into(),
            domain.clone(),
            "--timeoutSeconds".into(),
            timeout.to_string(),
        ];
        command.extend(tail);
        Some(ExecAction {
            command: Some(command),
        })
    };
    let exec = if probe.guest_agent_ping.is_some() {
        virt_probe(vec!["--guestAgentPing".into()])
    } else {
        match probe.exec.as_ref().and_then(|e| e.command.as_deref()) {
            Some([first, ..]) if first == VIRT_PROBE => probe.exec.clone(),
            Some([first, rest @ ..]) => {
                let mut tail = vec!["--command".to_string(), first.clone(), "--".into()];
                tail.extend(rest.iter().cloned());
                virt_probe(tail)
            }
            _ => probe.exec.clone(),
        }
    };
    let wrapped = exec.as_ref().is_some_and(|e| {
        e.command
            .as_ref()
            .and_then(|c| c.first())
            .map(String::as_str)
            == Some(VIRT_PROBE)
    });
    PodProbe {
        initial_delay_seconds: Some(
            probe.initial_delay_seconds.unwrap_or(0).max(0) + PROBE_STARTUP_DELAY_SECONDS,
        ),
        timeout_seconds: Some(timeout + i32::from(wrapped)),
        period_seconds: Some(positive(probe.period_seconds, 10)),
        success_threshold: Some(positive(probe.success_threshold, 1)),
        failure_threshold: Some(positive(probe.failure_threshold, 3)),
        exec,
        http_get: if probe.guest_agent_ping.is_some() {
            None
        } else {
            probe.http_get.clone()
        },
        tcp_socket: if probe.guest_agent_ping.is_some() {
            None
        } else {
            probe.tcp_socket.clone()
        },
        ..Default::default()
    }
}

/// The virt-launcher Pod for `vmi` (no name: the API server completes `generateName`).
pub fn launcher_pod(vmi: &VirtualMachineInstance, s: &LauncherPodSettings) -> Pod {
    let name = vmi.metadata.name.clone().unwrap_or_default();
    let grace = vmi
        .spec
        .termination_grace_period_seconds
        .unwrap_or(crate::defaults::DEFAULT_GRACE_PERIOD_SECONDS);
    let (volumes, mounts) = volumes(vmi);
    let ports: Vec<ContainerPort> = vmi
        .spec
        .domain
        .devices
        .interfaces
        .iter()
        .flatten()
        .flat_map(|i| i.ports.iter().flatten())
        .map(|p| ContainerPort {
            name: p.name.clone(),
            container_port: p.port,
            protocol: Some(p.protocol.clone().unwrap_or_else(|| "TCP".into())),
            ..Default::default()
        })
        .collect();
    let compute = Container {
        name: COMPUTE_CONTAINER.into(),
        image: Some(s.image.clone()),
        image_pull_policy: Some("IfNotPresent".into()),
        command: Some(s.command.clone()),
        args: Some(vec![
            "--namespace".into(),
            vmi.metadata.namespace.clone().unwrap_or_default(),
            "--name".into(),
            name.clone(),
            "--uid".into(),
            vmi.metadata.uid.clone().unwrap_or_default(),
            "--grace-period-seconds".into(),
            (grace + 15).to_string(),
        ]),
        env: Some(vec![EnvVar {
            name: "POD_NAME".into(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: "metadata.name".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }]),
        ports: Some(ports).filter(|p| !p.is_empty()),
        resources: Some(resources(vmi, s)),
        security_context: Some(SecurityContext {
            run_as_user: Some(0),
            run_as_non_root: Some(false),
            privileged: Some(false),
            capabilities: Some(Capabilities {
                add: Some(vec!["NET_BIND_SERVICE".into(), "SYS_NICE".into()]),
                ..Default::default()
            }),
            ..Default::default()
        }),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        readiness_probe: vmi
            .spec
            .readiness_probe
            .as_ref()
            .map(|p| container_probe(vmi, p)),
        liveness_probe: vmi
            .spec
            .liveness_probe
            .as_ref()
            .map(|p| container_probe(vmi, p)),
        volume_mounts: Some(mounts),
        ..Default::default()
    };
    let owner = OwnerReference {
        api_version: crate::v1::API_VERSION.into(),
        kind: "VirtualMachineInstance".into(),
        name: name.clone(),
        uid: vmi.metadata.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    };
    let service_account = vmi.spec.volumes.iter().flatten().find_map(|v| {
        v.service_account
            .as_ref()
            .and_then(|sa| sa.service_account_name.clone())
    });
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!("virt-launcher-{name}-")),
            namespace: vmi.metadata.namespace.clone(),
            labels: Some(labels(vmi)),
            annotations: Some(annotations(vmi)),
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        spec: Some(PodSpec {
            hostname: Some(sanitized_hostname(vmi)),
            subdomain: vmi.spec.subdomain.clone(),
            restart_policy: Some("Never".into()),
            enable_service_links: Some(false),
            termination_grace_period_seconds: Some(grace + 30),
            scheduler_name: vmi.spec.scheduler_name.clone(),
            priority_class_name: vmi
                .spec
                .priority_class_name
                .clone()
                .filter(|p| !p.is_empty()),
            node_selector: Some(node_selector(vmi)),
            affinity: vmi.spec.affinity.clone(),
            tolerations: vmi.spec.tolerations.clone(),
            topology_spread_constraints: vmi.spec.topology_spread_constraints.clone(),
            dns_policy: vmi.spec.dns_policy.clone(),
            dns_config: vmi.spec.dns_config.clone(),
            readiness_gates: Some(vec![PodReadinessGate {
                condition_type: UNPAUSED_POD_CONDITION.into(),
            }]),
            automount_service_account_token: Some(service_account.is_some()),
            service_account_name: service_account,
            security_context: Some(PodSecurityContext {
                fs_group: Some(107),
                run_as_user: Some(0),
                ..Default::default()
            }),
            containers: vec![compute],
            volumes: Some(volumes),
            ..Default::default()
        }),
        status: None,
    }
}

/// The UID of the VMI a pod runs, if it is a launcher pod: labelled
/// `kubevirt.io=virt-launcher`, controlled by a VirtualMachineInstance whose UID its
/// `kubevirt.io/created-by` label repeats.
pub fn launcher_pod_vmi(pod: &Pod) -> Option<(String, String)> {
    let labels = pod.metadata.labels.as_ref()?;
    if labels.get(APP_LABEL).map(String::as_str) != Some(APP_LAUNCHER) {
        return None;
    }
    let owner = pod
        .metadata
        .owner_references
        .as_ref()?
        .iter()
        .find(|o| o.controller == Some(true))?;
    let created_by = labels.get(CREATED_BY_LABEL)?;
    (owner.kind == "VirtualMachineInstance"
        && owner.api_version == crate::v1::API_VERSION
        && &owner.uid == created_by)
        .then(|| (owner.name.clone(), owner.uid.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::{
        CloudInitSource, Cpu, DataVolumeSource, PersistentVolumeClaimVolumeSource as VmiClaim,
        ResourceRequirements as VmiResources, Volume,
    };
    use k8s_openapi::api::core::v1::LocalObjectReference;

    fn settings() -> LauncherPodSettings {
        LauncherPodSettings::new(
            "launcher:1",
            vec!["/usr/bin/kubevirt-rs".into(), "launcher".into()],
        )
    }

    #[test]
    fn probes_are_rendered_as_upstream() {
        let mut v = vmi();
        v.spec.readiness_probe = Some(
            serde_json::from_value(serde_json::json!({
                "httpGet": {"port": 1500, "path": "/healthz"}, "initialDelaySeconds": 5,
                "periodSeconds": 2, "failureThreshold": 1
            }))
            .unwrap(),
        );
        v.spec.liveness_probe = Some(
            serde_json::from_value(serde_json::json!({
                "exec": {"command": ["cat", "/tmp/healthy"]}, "timeoutSeconds": 3
            }))
            .unwrap(),
        );
        let pod = launcher_pod(&v, &settings());
        let c = &pod.spec.unwrap().containers[0];
        let r = c.readiness_probe.as_ref().unwrap();
        assert_eq!(r.initial_delay_seconds, Some(15));
        assert_eq!((r.period_seconds, r.timeout_seconds), (Some(2), Some(1)));
        assert_eq!(
            (r.success_threshold, r.failure_threshold),
            (Some(1), Some(1))
        );
        assert_eq!(
            r.http_get.as_ref().unwrap().path.as_deref(),
            Some("/healthz")
        );
        let l = c.liveness_probe.as_ref().unwrap();
        let ns_name = format!(
            "{}_{}",
            v.metadata.namespace.clone().unwrap(),
            v.metadata.name.clone().unwrap()
        );
        assert_eq!(
            l.exec.as_ref().unwrap().command.as_deref().unwrap(),
            [
                "virt-probe",
                "--domainName",
                ns_name.as_str(),
                "--timeoutSeconds",
                "3",
                "--command",
                "cat",
                "--",
                "/tmp/healthy"
            ]
        );
        assert_eq!(
            (l.timeout_seconds, l.period_seconds, l.failure_threshold),
            (Some(4), Some(10), Some(3))
        );
        v.spec.liveness_probe =
            Some(serde_json::from_value(serde_json::json!({"guestAgentPing": {}})).unwrap());
        let pod = launcher_pod(&v, &settings());
        let l = pod.spec.unwrap().containers[0]
            .liveness_probe
            .clone()
            .unwrap();
        assert_eq!(
            l.exec.unwrap().command.unwrap(),
            [
                "virt-probe",
                "--domainName",
                ns_name.as_str(),
                "--timeoutSeconds",
                "1",
                "--guestAgentPing"
            ]
        );
    }

    fn vmi() -> VirtualMachineInstance {
        let mut vmi = VirtualMachineInstance::test("db01.example");
        vmi.metadata.labels = Some([("app".to_string(), "db".to_string())].into());
        vmi.metadata.annotations = Some(
            [
                ("note".to_string(), "x".to_string()),
                (
                    "kubectl.kubernetes.io/last-applied-configuration".to_string(),
                    "{}".to_string(),
                ),
            ]
            .into(),
        );
        crate::defaults::set_vmi_defaults(&mut vmi);
        vmi
    }

    #[test]
    fn metadata_as_upstream() {
        let vmi = vmi();
        let pod = launcher_pod(&vmi, &settings());
        let m = &pod.metadata;
        assert_eq!(
            m.generate_name.as_deref(),
            Some("virt-launcher-db01.example-")
        );
        let labels = m.labels.as_ref().unwrap();
        assert_eq!(labels["kubevirt.io"], "virt-launcher");
        assert_eq!(
            labels["kubevirt.io/created-by"],
            vmi.metadata.uid.clone().unwrap()
        );
        assert_eq!(labels["vm.kubevirt.io/name"], "db01");
        assert_eq!(labels["app"], "db");
        let ann = m.annotations.as_ref().unwrap();
        assert_eq!(ann["kubevirt.io/domain"], "db01.example");
        assert_eq!(ann["kubectl.kubernetes.io/default-container"], "compute");
        assert_eq!(ann["note"], "x");
        assert!(!ann.contains_key("kubectl.kubernetes.io/last-applied-configuration"));
        let owner = &m.owner_references.as_ref().unwrap()[0];
        assert_eq!(owner.kind, "VirtualMachineInstance");
        assert_eq!(
            (owner.controller, owner.block_owner_deletion),
            (Some(true), Some(true))
        );
        assert_eq!(
            launcher_pod_vmi(&pod),
            Some(("db01.example".into(), owner.uid.clone()))
        );
        let spec = pod.spec.unwrap();
        assert_eq!(spec.termination_grace_period_seconds, Some(60));
        assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
        assert_eq!(spec.hostname.as_deref(), Some("db01"));
        assert_eq!(
            spec.node_selector.unwrap()["kubevirt.io/schedulable"],
            "true"
        );
        assert_eq!(spec.containers[0].name, "compute");
    }

    #[test]
    fn resources_are_guest_memory_plus_overhead() {
        let mut vmi = vmi();
        vmi.spec.domain.resources = Some(VmiResources {
            requests: Some([("memory".to_string(), Quantity::parse("1Gi").unwrap())].into()),
            ..Default::default()
        });
        vmi.spec.domain.cpu = Some(Cpu {
            cores: Some(1),
            sockets: Some(1),
            threads: Some(1),
            ..Default::default()
        });
        // 2 MiB page tables + 8 launcher + 30 QEMU + 8 vCPU + 8 IO thread + 32 video.
        assert_eq!(memory_overhead(&vmi), 88 * MI);
        let pod = launcher_pod(&vmi, &settings());
        let r = pod.spec.unwrap().containers[0].resources.clone().unwrap();
        let req = r.requests.unwrap();
        assert_eq!(req["memory"].0, "1112Mi");
        assert_eq!(req["cpu"].0, "100m");
        assert_eq!(req["ephemeral-storage"].0, "50M");
        let lim = r.limits.unwrap();
        assert_eq!(lim["devices.kubevirt.io/kvm"].0, "1");
        assert_eq!(lim["devices.kubevirt.io/tun"].0, "1");

        let mut s = settings();
        s.emulation = true;
        let lim = launcher_pod(&vmi, &s).spec.unwrap().containers[0]
            .resources
            .clone()
            .unwrap()
            .limits
            .unwrap();
        assert!(!lim.contains_key("devices.kubevirt.io/kvm"));
        assert!(!lim.contains_key("devices.kubevirt.io/vhost-net"));
    }

    #[test]
    fn cpu_requests_follow_the_allocation_ratio() {
        assert_eq!(cpu_request(1, 10), "100m");
        assert_eq!(cpu_request(4, 10), "400m");
        assert_eq!(cpu_request(15, 10), "1.5");
        assert_eq!(cpu_request(20, 10), "2");
    }

    #[test]
    fn claims_and_cloud_init_secrets_become_pod_volumes() {
        let mut vmi = vmi();
        vmi.spec.volumes = Some(vec![
            Volume {
                name: "root".into(),
                persistent_volume_claim: Some(VmiClaim {
                    claim_name: "db-root".into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
            Volume {
                name: "data".into(),
                data_volume: Some(DataVolumeSource {
                    name: "db-data".into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
            Volume {
                name: "ci".into(),
                cloud_init_no_cloud: Some(CloudInitSource {
                    secret_ref: Some(LocalObjectReference {
                        name: "ci-secret".into(),
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ]);
        let spec = launcher_pod(&vmi, &settings()).spec.unwrap();
        let vols = spec.volumes.unwrap();
        let find = |n: &str| vols.iter().find(|v| v.name == n).unwrap().clone();
        assert_eq!(
            find("root").persistent_volume_claim.unwrap().claim_name,
            "db-root"
        );
        assert_eq!(
            find("data").persistent_volume_claim.unwrap().claim_name,
            "db-data"
        );
        assert_eq!(
            find("ci-udata").secret.unwrap().secret_name.as_deref(),
            Some("ci-secret")
        );
        let mounts = spec.containers[0].volume_mounts.clone().unwrap();
        assert!(mounts
            .iter()
            .any(|m| m.mount_path == "/var/run/kubevirt-private/vmi-disks/root"));
    }

    #[test]
    fn a_pod_is_a_launcher_pod_only_with_matching_owner_and_label() {
        let vmi = vmi();
        let mut pod = launcher_pod(&vmi, &settings());
        pod.metadata
            .labels
            .as_mut()
            .unwrap()
            .insert(CREATED_BY_LABEL.into(), "other".into());
        assert_eq!(launcher_pod_vmi(&pod), None);
        assert_eq!(launcher_pod_vmi(&Pod::default()), None);
    }
}
