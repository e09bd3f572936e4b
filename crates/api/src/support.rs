//! Features the API accepts (they are valid upstream API) but this project cannot run yet.
//!
//! The node agent reports them when a VMI is started, as upstream reports an unschedulable
//! VMI: condition `Synchronized=False` with reason [`REASON_UNSUPPORTED`] and a message naming
//! the fields, plus an event. Admission never rejects them, so a user's manifests apply as-is.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::v1::{
    vmi_condition, ConditionStatus, VirtualMachineInstance, VirtualMachineInstanceCondition,
    VirtualMachineInstanceSpec,
};

/// Condition reason used when a VMI asks for unsupported features.
pub const REASON_UNSUPPORTED: &str = "Unsupported";
/// Annotation upstream uses for hook sidecars.
pub const HOOK_SIDECARS_ANNOTATION: &str = "hooks.kubevirt.io/hookSidecars";

/// One unsupported feature: the field path that asks for it and why it cannot run here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnsupportedFeature {
    /// Path of the field, e.g. `spec.domain.devices.interfaces[1].sriov`.
    pub field: String,
    /// Why it cannot run (human readable).
    pub reason: String,
}

impl std::fmt::Display for UnsupportedFeature {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

fn push(out: &mut Vec<UnsupportedFeature>, field: String, reason: &str) {
    out.push(UnsupportedFeature {
        field,
        reason: reason.to_string(),
    });
}

/// Unsupported features requested by a VMI spec (paths start at `spec`).
pub fn unsupported_features(spec: &VirtualMachineInstanceSpec) -> Vec<UnsupportedFeature> {
    let mut out = Vec::new();
    let domain = &spec.domain;
    let devices = &domain.devices;
    let networks = spec.networks.as_deref().unwrap_or_default();

    for (i, iface) in devices.interfaces.iter().flatten().enumerate() {
        let p = format!("spec.domain.devices.interfaces[{i}]");
        let on_pod = networks
            .iter()
            .find(|n| n.name == iface.name)
            .is_some_and(|n| n.pod.is_some());
        if iface.sriov.is_some() {
            push(&mut out, format!("{p}.sriov"), "SR-IOV passthrough needs SR-IOV capable NICs and device plugins, which this project does not manage");
        }
        if iface.bridge.is_some() && on_pod {
            push(
                &mut out,
                format!("{p}.bridge"),
                "bridge binding on the pod network is not implemented; use masquerade",
            );
        }
        if iface.macvtap.is_some() {
            push(
                &mut out,
                format!("{p}.macvtap"),
                "macvtap binding is not implemented",
            );
        }
        if iface.passt.is_some() {
            push(
                &mut out,
                format!("{p}.passt"),
                "the deprecated passt binding is not implemented; use masquerade",
            );
        }
        if let Some(b) = iface.binding.as_ref() {
            push(
                &mut out,
                format!("{p}.binding"),
                &format!("network binding plugins ({:?}) are not implemented", b.name),
            );
        }
        if iface.passt_binding.is_some() {
            push(
                &mut out,
                format!("{p}.passtBinding"),
                "passt binding is not implemented; use masquerade",
            );
        }
        if iface.slirp.is_some() {
            push(
                &mut out,
                format!("{p}.slirp"),
                "the deprecated slirp binding is not implemented; use masquerade",
            );
        }
    }
    for (i, n) in networks.iter().enumerate() {
        if n.multus.is_some() {
            push(
                &mut out,
                format!("spec.networks[{i}].multus"),
                "Multus secondary networks are not implemented; only the pod network is",
            );
        }
    }
    for (i, _) in devices.gpus.iter().flatten().enumerate() {
        push(
            &mut out,
            format!("spec.domain.devices.gpus[{i}]"),
            "GPU passthrough is not implemented",
        );
    }
    for (i, _) in devices.host_devices.iter().flatten().enumerate() {
        push(
            &mut out,
            format!("spec.domain.devices.hostDevices[{i}]"),
            "host device (PCI/USB/mediated) passthrough is not implemented",
        );
    }
    for (i, _) in devices.filesystems.iter().flatten().enumerate() {
        push(
            &mut out,
            format!("spec.domain.devices.filesystems[{i}]"),
            "virtiofs filesystems are not implemented",
        );
    }
    if devices.client_passthrough.is_some() {
        push(
            &mut out,
            "spec.domain.devices.clientPassthrough".into(),
            "USB client passthrough is not implemented",
        );
    }
    if devices.downward_metrics.is_some() {
        push(
            &mut out,
            "spec.domain.devices.downwardMetrics".into(),
            "downward metrics are not implemented",
        );
    }
    for (i, d) in devices.disks.iter().flatten().enumerate() {
        if d.lun.is_some() {
            push(
                &mut out,
                format!("spec.domain.devices.disks[{i}].lun"),
                "SCSI LUN passthrough is not implemented",
            );
        }
    }
    if let Some(cpu) = domain.cpu.as_ref() {
        if cpu.dedicated_cpu_placement == Some(true) {
            push(&mut out, "spec.domain.cpu.dedicatedCpuPlacement".into(), "dedicated CPU placement needs the CPU manager's static policy, which this project does not manage");
        }
        if cpu.isolate_emulator_thread == Some(true) {
            push(
                &mut out,
                "spec.domain.cpu.isolateEmulatorThread".into(),
                "emulator thread isolation needs dedicated CPUs",
            );
        }
        if cpu.realtime.is_some() {
            push(
                &mut out,
                "spec.domain.cpu.realtime".into(),
                "realtime vCPUs are not implemented",
            );
        }
        if cpu.numa.is_some() {
            push(
                &mut out,
                "spec.domain.cpu.numa".into(),
                "guest NUMA mapping passthrough is not implemented",
            );
        }
    }
    if domain
        .memory
        .as_ref()
        .is_some_and(|m| m.hugepages.is_some())
    {
        push(
            &mut out,
            "spec.domain.memory.hugepages".into(),
            "hugepages-backed guest memory is not implemented",
        );
    }
    if domain.launch_security.is_some() {
        push(
            &mut out,
            "spec.domain.launchSecurity".into(),
            "confidential computing (SEV/TDX) is not implemented",
        );
    }
    if let Some(arch) = spec.architecture.as_deref() {
        if arch != "amd64" {
            push(
                &mut out,
                "spec.architecture".into(),
                &format!("only amd64 guests are supported, not {arch}"),
            );
        }
    }
    if spec.resource_claims.as_ref().is_some_and(|r| !r.is_empty()) {
        push(
            &mut out,
            "spec.resourceClaims".into(),
            "dynamic resource allocation (DRA) claims are not implemented",
        );
    }
    out
}

/// Unsupported features of a whole VMI: the spec's plus metadata-driven ones (hook sidecars).
pub fn unsupported_vmi_features(vmi: &VirtualMachineInstance) -> Vec<UnsupportedFeature> {
    let mut out = Vec::new();
    if vmi
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(HOOK_SIDECARS_ANNOTATION))
    {
        push(
            &mut out,
            format!("metadata.annotations[{HOOK_SIDECARS_ANNOTATION}]"),
            "hook sidecars are not implemented",
        );
    }
    out.extend(unsupported_features(&vmi.spec));
    out
}

/// One message naming every unsupported field, for a condition or event.
pub fn summary(features: &[UnsupportedFeature]) -> String {
    features
        .iter()
        .map(|f| f.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

/// The condition the node agent sets on a VMI that asks for unsupported features:
/// `Synchronized=False`, reason `Unsupported`, a message naming every field. `None` when the
/// VMI asks for nothing unsupported.
pub fn unsupported_condition(
    vmi: &VirtualMachineInstance,
    now: Time,
) -> Option<VirtualMachineInstanceCondition> {
    let features = unsupported_vmi_features(vmi);
    if features.is_empty() {
        return None;
    }
    Some(VirtualMachineInstanceCondition {
        type_: vmi_condition::SYNCHRONIZED.to_string(),
        status: ConditionStatus::False,
        reason: Some(REASON_UNSUPPORTED.to_string()),
        message: Some(format!(
            "this VMI asks for features kubevirt-rs cannot run: {}",
            summary(&features)
        )),
        last_probe_time: None,
        last_transition_time: Some(now),
    })
}
