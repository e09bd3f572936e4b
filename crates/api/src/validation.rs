//! Validation: what virt-api's validating webhooks check, as pure functions returning every
//! problem found with its field path. Call after defaulting (as [`crate::admission::admit`]
//! does): rules assume defaulted buses, bindings and networks.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde_json::Value;

use crate::admission::FieldError;
use crate::quantity::Quantity;
use crate::v1::*;

/// Disk buses for `disk` and `lun` targets.
pub const DISK_BUSES: [&str; 4] = ["virtio", "sata", "scsi", "usb"];
/// Buses a CD-ROM may use.
pub const CDROM_BUSES: [&str; 2] = ["sata", "scsi"];
/// Interface models upstream accepts.
pub const INTERFACE_MODELS: [&str; 7] = [
    "e1000", "e1000e", "igb", "ne2k_pci", "pcnet", "rtl8139", "virtio",
];
/// Architectures upstream accepts.
pub const ARCHITECTURES: [&str; 3] = ["amd64", "arm64", "s390x"];
/// Upstream's cap on list lengths (disks, volumes, interfaces...).
pub const MAX_LIST_LEN: usize = 256;
/// Upstream's cap on inline cloud-init user data (bytes).
pub const MAX_CLOUD_INIT_USER_DATA: usize = 2 << 10 << 10;

/// Validates a (defaulted) VirtualMachine.
pub fn validate_vm(vm: &VirtualMachine) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let spec = &vm.spec;
    if spec.running.is_some() && spec.run_strategy.is_some() {
        errs.push(FieldError::forbidden(
            "spec.running",
            "running and runStrategy are mutually exclusive",
        ));
    }
    if spec.run_strategy == Some(RunStrategy::WaitAsReceiver) {
        // Upstream accepts it only with the DecentralizedLiveMigration feature gate, which
        // kubevirt-rs does not implement.
        errs.push(FieldError::invalid(
            "spec.runStrategy",
            RunStrategy::WaitAsReceiver.as_str(),
            "Invalid RunStrategy (WaitAsReceiver), DecentralizedLiveMigration feature gate is not enabled in kubevirt resource",
        ));
    }
    match spec.template.spec.as_ref() {
        None => errs.push(FieldError::required("spec.template.spec", "")),
        Some(tspec) => {
            // With an instancetype, memory comes from it; otherwise the template needs some.
            let require_memory = spec.instancetype.is_none();
            errs.extend(validate_vmi_spec_at(
                "spec.template.spec",
                tspec,
                require_memory,
            ));
            validate_data_volume_templates(spec, tspec, &mut errs);
        }
    }
    errs
}

fn validate_data_volume_templates(
    spec: &VirtualMachineSpec,
    tspec: &VirtualMachineInstanceSpec,
    errs: &mut Vec<FieldError>,
) {
    let mut seen = HashSet::new();
    for (i, dvt) in spec.data_volume_templates.iter().flatten().enumerate() {
        let path = format!("spec.dataVolumeTemplates[{i}]");
        let name = dvt
            .metadata
            .as_ref()
            .and_then(|m| m.name.clone())
            .unwrap_or_default();
        if name.is_empty() {
            errs.push(FieldError::required(format!("{path}.metadata.name"), ""));
            continue;
        }
        if !seen.insert(name.clone()) {
            errs.push(FieldError::duplicate(format!("{path}.metadata.name"), name));
            continue;
        }
        let has_pvc = dvt.spec.get("pvc").is_some_and(|v| !v.is_null());
        let has_storage = dvt.spec.get("storage").is_some_and(|v| !v.is_null());
        if !has_pvc && !has_storage {
            errs.push(FieldError::required(
                format!("{path}.spec"),
                "one of pvc or storage must be set",
            ));
        } else if has_pvc && has_storage {
            errs.push(FieldError::forbidden(
                format!("{path}.spec"),
                "pvc and storage are mutually exclusive",
            ));
        }
        let has = |k: &str| dvt.spec.get(k).is_some_and(|v| !v.is_null());
        let externally_populated = ["pvc", "storage"].iter().any(|t| {
            let target = &dvt.spec[*t];
            ["dataSource", "dataSourceRef"]
                .iter()
                .any(|k| target.get(*k).is_some_and(|v| !v.is_null()))
        });
        if !has("source") && !has("sourceRef") && !externally_populated {
            errs.push(FieldError::required(
                format!("{path}.spec.source"),
                "a DataVolume needs a source, a sourceRef, or to be externally populated",
            ));
        }
        let referenced = tspec.volumes.iter().flatten().any(|v| {
            v.data_volume.as_ref().is_some_and(|d| d.name == name)
                || v.persistent_volume_claim
                    .as_ref()
                    .is_some_and(|p| p.claim_name == name)
        });
        if !referenced {
            errs.push(FieldError::invalid(
                format!("{path}.metadata.name"),
                name,
                "must be referenced by a dataVolume or persistentVolumeClaim volume in spec.template.spec.volumes",
            ));
        }
    }
}

/// Update rules for VMs: none beyond the create rules (the spec is mutable).
pub fn validate_vm_update(_new: &VirtualMachine, _old: &VirtualMachine) -> Vec<FieldError> {
    Vec::new()
}

/// Validates a (defaulted) VirtualMachineInstance.
pub fn validate_vmi(vmi: &VirtualMachineInstance) -> Vec<FieldError> {
    validate_vmi_spec_at("spec", &vmi.spec, true)
}

/// Validates a VMI spec found at `path` (`spec`, `spec.template.spec`).
pub fn validate_vmi_spec(path: &str, spec: &VirtualMachineInstanceSpec) -> Vec<FieldError> {
    validate_vmi_spec_at(path, spec, true)
}

/// A VMI's spec may not change after creation (upstream: "update of VMI object is
/// restricted"); status and metadata may.
pub fn validate_vmi_update(
    new: &VirtualMachineInstance,
    old: &VirtualMachineInstance,
) -> Vec<FieldError> {
    // Only hot-pluggable volumes (and their disks) may come and go while a VMI exists.
    if crate::hotplug::without_hotplug(&new.spec) != crate::hotplug::without_hotplug(&old.spec) {
        vec![FieldError::forbidden(
            "spec",
            "update of VMI object is restricted",
        )]
    } else {
        Vec::new()
    }
}

/// Validates a migration request.
pub fn validate_migration(m: &VirtualMachineInstanceMigration) -> Vec<FieldError> {
    let mut errs = Vec::new();
    if m.spec.vmi_name.as_deref().unwrap_or("").is_empty() && m.spec.receive.is_none() {
        errs.push(FieldError::required("spec.vmiName", "must specify a VMI"));
    }
    if let Some(name) = m.spec.vmi_name.as_deref().filter(|n| !n.is_empty()) {
        for msg in dns1123_subdomain(name) {
            errs.push(FieldError::invalid("spec.vmiName", name, msg));
        }
    }
    errs
}

/// A migration's spec is immutable.
pub fn validate_migration_update(
    new: &VirtualMachineInstanceMigration,
    old: &VirtualMachineInstanceMigration,
) -> Vec<FieldError> {
    if new.spec != old.spec {
        vec![FieldError::forbidden(
            "spec",
            "update of Migration object's spec is restricted",
        )]
    } else {
        Vec::new()
    }
}

/// Validates a replica set: its template, replica count and selector.
pub fn validate_replicaset(rs: &VirtualMachineInstanceReplicaSet) -> Vec<FieldError> {
    let mut errs = Vec::new();
    if let Some(r) = rs.spec.replicas {
        if r < 0 {
            errs.push(FieldError::invalid(
                "spec.replicas",
                r,
                "must be greater than or equal to 0",
            ));
        }
    }
    match rs.spec.template.spec.as_ref() {
        None => errs.push(FieldError::required("spec.template.spec", "")),
        Some(tspec) => errs.extend(validate_vmi_spec_at("spec.template.spec", tspec, true)),
    }
    let labels = rs
        .spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let selector = &rs.spec.selector;
    let empty = selector.match_labels.as_ref().is_none_or(|m| m.is_empty())
        && selector
            .match_expressions
            .as_ref()
            .is_none_or(|m| m.is_empty());
    if empty {
        errs.push(FieldError::required("spec.selector", ""));
    } else if !selector_matches(selector, &labels) {
        errs.push(FieldError::invalid(
            "spec.selector",
            serde_json::to_value(selector).unwrap_or(Value::Null),
            "selector does not match labels in spec.template.metadata.labels",
        ));
    }
    errs
}

/// Update rules for replica sets: none beyond the create rules.
pub fn validate_replicaset_update(
    _new: &VirtualMachineInstanceReplicaSet,
    _old: &VirtualMachineInstanceReplicaSet,
) -> Vec<FieldError> {
    Vec::new()
}

/// Whether `labels` satisfy a label selector (matchLabels and matchExpressions).
pub fn selector_matches(
    selector: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
    labels: &BTreeMap<String, String>,
) -> bool {
    for (k, v) in selector.match_labels.iter().flatten() {
        if labels.get(k) != Some(v) {
            return false;
        }
    }
    for expr in selector.match_expressions.iter().flatten() {
        let values = expr.values.clone().unwrap_or_default();
        let have = labels.get(&expr.key);
        let ok = match expr.operator.as_str() {
            "In" => have.is_some_and(|h| values.contains(h)),
            "NotIn" => have.is_none_or(|h| !values.contains(h)),
            "Exists" => have.is_some(),
            "DoesNotExist" => have.is_none(),
            _ => false,
        };
        if !ok {
            return false;
        }
    }
    true
}

fn validate_vmi_spec_at(
    path: &str,
    spec: &VirtualMachineInstanceSpec,
    require_memory: bool,
) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let domain = format!("{path}.domain");
    validate_memory(path, spec, require_memory, &mut errs);
    validate_resources(&domain, &spec.domain, &mut errs);
    validate_cpu(&domain, &spec.domain, &mut errs);
    validate_firmware(&domain, &spec.domain, &mut errs);
    check_enum(
        &format!("{domain}.rebootPolicy"),
        spec.domain.reboot_policy.as_deref(),
        &["Reboot", "Terminate"],
        &mut errs,
    );
    check_enum(
        &format!("{domain}.ioThreadsPolicy"),
        spec.domain.io_threads_policy.as_deref(),
        &["shared", "auto", "supplementalPool"],
        &mut errs,
    );
    let volumes = validate_volumes(path, spec, &mut errs);
    validate_disks(&domain, spec, &volumes, &mut errs);
    validate_networks(path, spec, &mut errs);
    validate_devices(&domain, &spec.domain.devices, &mut errs);
    crate::access_credentials::validate(path, spec, &mut errs);
    if let Some(arch) = spec.architecture.as_deref() {
        if !ARCHITECTURES.contains(&arch) {
            errs.push(FieldError::not_supported(
                format!("{path}.architecture"),
                arch,
                &ARCHITECTURES,
            ));
        }
    }
    if let Some(g) = spec.termination_grace_period_seconds {
        if g < 0 {
            errs.push(FieldError::invalid(
                format!("{path}.terminationGracePeriodSeconds"),
                g,
                "must be greater than or equal to 0",
            ));
        }
    }
    for (field, value) in [("hostname", &spec.hostname), ("subdomain", &spec.subdomain)] {
        if let Some(v) = value.as_deref() {
            for msg in dns1123_label(v) {
                errs.push(FieldError::invalid(format!("{path}.{field}"), v, msg));
            }
        }
    }
    check_enum(
        &format!("{path}.evictionStrategy"),
        spec.eviction_strategy.as_deref(),
        &["LiveMigrate", "LiveMigrateIfPossible", "None", "External"],
        &mut errs,
    );
    check_enum(
        &format!("{path}.startStrategy"),
        spec.start_strategy.as_deref(),
        &["Paused"],
        &mut errs,
    );
    check_enum(
        &format!("{path}.dnsPolicy"),
        spec.dns_policy.as_deref(),
        &["ClusterFirstWithHostNet", "ClusterFirst", "Default", "None"],
        &mut errs,
    );
    if spec.dns_policy.as_deref() == Some("None")
        && spec
            .dns_config
            .as_ref()
            .is_none_or(|c| c.nameservers.as_ref().is_none_or(|n| n.is_empty()))
    {
        errs.push(FieldError::required(
            format!("{path}.dnsConfig.nameservers"),
            "must provide at least one DNS nameserver when `dnsPolicy` is None",
        ));
    }
    if spec.start_strategy.as_deref() == Some("Paused") && spec.liveness_probe.is_some() {
        errs.push(FieldError::forbidden(
            format!("{path}.startStrategy"),
            "pausing a VMI with a livenessProbe is not supported",
        ));
    }
    if spec.architecture.as_deref() == Some("arm64")
        && spec
            .domain
            .cpu
            .as_ref()
            .and_then(|c| c.threads)
            .unwrap_or(1)
            > 1
    {
        errs.push(FieldError::invalid(
            format!("{path}.domain.cpu.threads"),
            spec.domain
                .cpu
                .as_ref()
                .and_then(|c| c.threads)
                .unwrap_or(1),
            "must not be greater than 1 when the architecture is arm64",
        ));
    }
    for (field, probe) in [
        ("livenessProbe", &spec.liveness_probe),
        ("readinessProbe", &spec.readiness_probe),
    ] {
        if let Some(p) = probe {
            validate_probe(&format!("{path}.{field}"), p, &mut errs);
        }
    }
    errs
}

fn check_enum(path: &str, value: Option<&str>, allowed: &[&str], errs: &mut Vec<FieldError>) {
    if let Some(v) = value {
        if !allowed.contains(&v) {
            errs.push(FieldError::not_supported(path, v, allowed));
        }
    }
}

fn validate_memory(
    path: &str,
    spec: &VirtualMachineInstanceSpec,
    require_memory: bool,
    errs: &mut Vec<FieldError>,
) {
    let domain = &spec.domain;
    let guest = domain.memory.as_ref().and_then(|m| m.guest.as_ref());
    let request = domain
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("memory"));
    let limit = domain
        .resources
        .as_ref()
        .and_then(|r| r.limits.as_ref())
        .and_then(|r| r.get("memory"));
    if require_memory && guest.is_none() && request.is_none() && limit.is_none() {
        errs.push(FieldError::required(
            format!("{path}.domain.memory.guest"),
            "at least one of 'guest', 'requests.memory' or 'limits.memory' must be set",
        ));
    }
    if let Some(g) = guest {
        check_positive(&format!("{path}.domain.memory.guest"), g, errs);
        if let Some(l) = limit {
            if g > l {
                errs.push(FieldError::invalid(
                    format!("{path}.domain.memory.guest"),
                    g.as_str(),
                    format!("must be less than or equal to memory limit {}", l.as_str()),
                ));
            }
        }
    }
    if let Some(max) = domain.memory.as_ref().and_then(|m| m.max_guest.as_ref()) {
        if let Some(g) = guest {
            if max < g {
                errs.push(FieldError::invalid(
                    format!("{path}.domain.memory.maxGuest"),
                    max.as_str(),
                    format!(
                        "must be greater than or equal to guest memory {}",
                        g.as_str()
                    ),
                ));
            }
        }
    }
    if let Some(hp) = domain
        .memory
        .as_ref()
        .and_then(|m| m.hugepages.as_ref())
        .and_then(|h| h.page_size.as_deref())
    {
        if !["2Mi", "1Gi"].contains(&hp) {
            errs.push(FieldError::not_supported(
                format!("{path}.domain.memory.hugepages.pageSize"),
                hp,
                &["2Mi", "1Gi"],
            ));
        }
    }
}

fn check_positive(path: &str, q: &Quantity, errs: &mut Vec<FieldError>) {
    if q.is_negative() || q.is_zero() {
        errs.push(FieldError::invalid(
            path,
            q.as_str(),
            "must be greater than 0",
        ));
    }
}

fn validate_resources(domain_path: &str, domain: &DomainSpec, errs: &mut Vec<FieldError>) {
    let Some(res) = domain.resources.as_ref() else {
        return;
    };
    let path = format!("{domain_path}.resources");
    for (kind, list) in [("requests", &res.requests), ("limits", &res.limits)] {
        for (name, q) in list.iter().flatten() {
            if q.is_negative() {
                errs.push(FieldError::invalid(
                    format!("{path}.{kind}.{name}"),
                    q.as_str(),
                    "must be greater than or equal to 0",
                ));
            }
        }
    }
    if let (Some(req), Some(lim)) = (res.requests.as_ref(), res.limits.as_ref()) {
        for (name, r) in req {
            if let Some(l) = lim.get(name) {
                if r > l {
                    errs.push(FieldError::invalid(
                        format!("{path}.requests.{name}"),
                        r.as_str(),
                        format!(
                            "must be less than or equal to {name} limit of {}",
                            l.as_str()
                        ),
                    ));
                }
            }
        }
    }
}

fn validate_cpu(domain_path: &str, domain: &DomainSpec, errs: &mut Vec<FieldError>) {
    let Some(cpu) = domain.cpu.as_ref() else {
        return;
    };
    let path = format!("{domain_path}.cpu");
    if let (Some(s), Some(max)) = (cpu.sockets, cpu.max_sockets) {
        if max != 0 && s > max {
            errs.push(FieldError::invalid(
                format!("{path}.sockets"),
                s,
                "must be less than or equal to maxSockets",
            ));
        }
    }
    for (i, f) in cpu.features.iter().flatten().enumerate() {
        check_enum(
            &format!("{path}.features[{i}].policy"),
            f.policy.as_deref(),
            &["force", "require", "optional", "disable", "forbid"],
            errs,
        );
    }
    let dedicated = cpu.dedicated_cpu_placement == Some(true);
    if cpu
        .numa
        .as_ref()
        .is_some_and(|n| n.guest_mapping_passthrough.is_some())
    {
        if !dedicated {
            errs.push(FieldError::forbidden(
                format!("{path}.numa.guestMappingPassthrough"),
                "requires dedicatedCpuPlacement: true",
            ));
        }
        if domain
            .memory
            .as_ref()
            .and_then(|m| m.hugepages.as_ref())
            .is_none()
        {
            errs.push(FieldError::required(
                format!("{domain_path}.memory.hugepages"),
                "hugepages must be requested when a NUMA topology strategy is set",
            ));
        }
    }
    if dedicated {
        validate_dedicated_cpus(domain_path, domain, errs);
    }
    if cpu.isolate_emulator_thread == Some(true) && cpu.dedicated_cpu_placement != Some(true) {
        errs.push(FieldError::forbidden(
            format!("{path}.isolateEmulatorThread"),
            "requires dedicatedCpuPlacement: true",
        ));
    }
}

fn validate_firmware(domain_path: &str, domain: &DomainSpec, errs: &mut Vec<FieldError>) {
    let Some(fw) = domain.firmware.as_ref() else {
        return;
    };
    let path = format!("{domain_path}.firmware");
    if let Some(u) = fw.uuid.as_deref() {
        if !u.is_empty() && uuid::Uuid::parse_str(u).is_err() {
            errs.push(FieldError::invalid(
                format!("{path}.uuid"),
                u,
                "must be a valid UUID",
            ));
        }
    }
    if let Some(bl) = fw.bootloader.as_ref() {
        if bl.bios.is_some() && bl.efi.is_some() {
            errs.push(FieldError::forbidden(
                format!("{path}.bootloader"),
                "only one of bios or efi may be set",
            ));
        }
        if bl.efi.as_ref().and_then(|e| e.secure_boot).unwrap_or(false) {
            let smm_off = domain
                .features
                .as_ref()
                .and_then(|f| f.smm.as_ref())
                .is_some_and(|s| s.enabled == Some(false));
            if smm_off {
                errs.push(FieldError::forbidden(
                    format!("{domain_path}.features.smm.enabled"),
                    "SMM must be enabled when EFI secure boot is enabled",
                ));
            }
        }
    }
    if let Some(kb) = fw.kernel_boot.as_ref() {
        if let Some(c) = kb.container.as_ref() {
            let cpath = format!("{path}.kernelBoot.container");
            if c.image.is_empty() {
                errs.push(FieldError::required(format!("{cpath}.image"), ""));
            }
            if c.kernel_path.as_deref().unwrap_or("").is_empty()
                && c.initrd_path.as_deref().unwrap_or("").is_empty()
            {
                errs.push(FieldError::required(
                    format!("{cpath}.kernelPath"),
                    "at least one of kernelPath or initrdPath must be set",
                ));
            }
        } else if kb.kernel_args.is_some() {
            errs.push(FieldError::forbidden(
                format!("{path}.kernelBoot.kernelArgs"),
                "kernel arguments require a kernel boot container",
            ));
        }
    }
}

fn validate_volumes(
    path: &str,
    spec: &VirtualMachineInstanceSpec,
    errs: &mut Vec<FieldError>,
) -> HashMap<String, usize> {
    let mut names = HashMap::new();
    let Some(volumes) = spec.volumes.as_ref() else {
        return names;
    };
    if volumes.len() > MAX_LIST_LEN {
        errs.push(FieldError::too_many(
            format!("{path}.volumes"),
            volumes.len(),
            MAX_LIST_LEN,
        ));
    }
    for (i, v) in volumes.iter().enumerate() {
        let vpath = format!("{path}.volumes[{i}]");
        if v.name.is_empty() {
            errs.push(FieldError::required(format!("{vpath}.name"), ""));
        } else {
            if names.insert(v.name.clone(), i).is_some() {
                errs.push(FieldError::duplicate(
                    format!("{vpath}.name"),
                    v.name.clone(),
                ));
            }
        }
        let sources = v.sources();
        match sources.len() {
            0 => errs.push(FieldError::required(
                vpath.clone(),
                "must specify exactly one volume source (containerDisk, persistentVolumeClaim, dataVolume, cloudInitNoCloud, cloudInitConfigDrive, emptyDisk, ephemeral, hostDisk, configMap, secret, serviceAccount, sysprep, downwardAPI, downwardMetrics, memoryDump)",
            )),
            1 => {}
            _ => errs.push(FieldError::forbidden(
                format!("{vpath}.{}", sources[1].field_name()),
                format!(
                    "may not specify more than 1 volume source (found {})",
                    sources
                        .iter()
                        .map(|s| s.field_name())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )),
        }
        for s in &sources {
            validate_volume_source(&vpath, s, errs);
        }
    }
    names
}

fn validate_volume_source(vpath: &str, s: &VolumeSource<'_>, errs: &mut Vec<FieldError>) {
    let spath = format!("{vpath}.{}", s.field_name());
    match s {
        VolumeSource::ContainerDisk(c) => {
            if c.image.trim().is_empty() {
                errs.push(FieldError::required(format!("{spath}.image"), ""));
            }
            check_enum(
                &format!("{spath}.imagePullPolicy"),
                c.image_pull_policy.as_deref(),
                &["Always", "IfNotPresent", "Never"],
                errs,
            );
        }
        VolumeSource::PersistentVolumeClaim(p) => {
            if p.claim_name.is_empty() {
                errs.push(FieldError::required(format!("{spath}.claimName"), ""));
            }
        }
        VolumeSource::Ephemeral(e) => match e.persistent_volume_claim.as_ref() {
            None => errs.push(FieldError::required(
                format!("{spath}.persistentVolumeClaim"),
                "",
            )),
            Some(p) if p.claim_name.is_empty() => errs.push(FieldError::required(
                format!("{spath}.persistentVolumeClaim.claimName"),
                "",
            )),
            _ => {}
        },
        VolumeSource::DataVolume(d) => {
            if d.name.is_empty() {
                errs.push(FieldError::required(format!("{spath}.name"), ""));
            }
        }
        VolumeSource::MemoryDump(d) => {
            if d.claim_name.is_empty() {
                errs.push(FieldError::required(format!("{spath}.claimName"), ""));
            }
        }
        VolumeSource::EmptyDisk(e) => {
            check_positive(&format!("{spath}.capacity"), &e.capacity, errs)
        }
        VolumeSource::HostDisk(h) => {
            if h.path.is_empty() {
                errs.push(FieldError::required(format!("{spath}.path"), ""));
            }
            match h.disk_type.as_str() {
                "Disk" => {}
                "DiskOrCreate" => match h.capacity.as_ref() {
                    None => errs.push(FieldError::required(
                        format!("{spath}.capacity"),
                        "capacity is required when type is DiskOrCreate",
                    )),
                    Some(c) => check_positive(&format!("{spath}.capacity"), c, errs),
                },
                other => errs.push(FieldError::not_supported(
                    format!("{spath}.type"),
                    other,
                    &["Disk", "DiskOrCreate"],
                )),
            }
        }
        VolumeSource::CloudInitNoCloud(c) | VolumeSource::CloudInitConfigDrive(c) => {
            validate_cloud_init(&spath, c, errs)
        }
        VolumeSource::ConfigMap(c) => {
            if c.name.as_deref().unwrap_or("").is_empty() {
                errs.push(FieldError::required(format!("{spath}.name"), ""));
            }
        }
        VolumeSource::Secret(c) => {
            if c.secret_name.as_deref().unwrap_or("").is_empty() {
                errs.push(FieldError::required(format!("{spath}.secretName"), ""));
            }
        }
        VolumeSource::ServiceAccount(c) => {
            if c.service_account_name.as_deref().unwrap_or("").is_empty() {
                errs.push(FieldError::required(
                    format!("{spath}.serviceAccountName"),
                    "",
                ));
            }
        }
        VolumeSource::Sysprep(s) => {
            if s.secret.is_some() == s.config_map.is_some() {
                errs.push(FieldError::invalid(
                    spath,
                    "",
                    "exactly one of secret or configMap must be set",
                ));
            }
        }
        VolumeSource::DownwardApi(_) | VolumeSource::DownwardMetrics => {}
    }
}

fn validate_cloud_init(spath: &str, c: &CloudInitSource, errs: &mut Vec<FieldError>) {
    let user_sources = [
        c.user_data.is_some(),
        c.user_data_base64.is_some(),
        c.secret_ref.is_some(),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    let net_sources = [
        c.network_data.is_some(),
        c.network_data_base64.is_some(),
        c.network_data_secret_ref.is_some(),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    if user_sources == 0 && net_sources == 0 {
        errs.push(FieldError::required(
            spath,
            "one of userData, userDataBase64, secretRef, networkData, networkDataBase64 or networkDataSecretRef must be set",
        ));
    }
    if user_sources > 1 {
        errs.push(FieldError::forbidden(
            spath,
            "only one of userData, userDataBase64 or secretRef may be set",
        ));
    }
    if net_sources > 1 {
        errs.push(FieldError::forbidden(
            spath,
            "only one of networkData, networkDataBase64 or networkDataSecretRef may be set",
        ));
    }
    for (field, v) in [
        ("userDataBase64", &c.user_data_base64),
        ("networkDataBase64", &c.network_data_base64),
    ] {
        if let Some(b) = v {
            use base64_check::is_base64;
            if !is_base64(b) {
                errs.push(FieldError::invalid(
                    format!("{spath}.{field}"),
                    b.clone(),
                    "must be valid base64",
                ));
            }
        }
    }
    if let Some(u) = c.user_data.as_ref() {
        if u.len() > MAX_CLOUD_INIT_USER_DATA {
            errs.push(FieldError::too_long(
                format!("{spath}.userData"),
                MAX_CLOUD_INIT_USER_DATA,
            ));
        }
    }
}

mod base64_check {
    /// Standard base64 (padding optional, whitespace ignored), without decoding.
    pub fn is_base64(s: &str) -> bool {
        let t: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
        let body = t.iter().rposition(|b| *b != b'=').map_or(0, |p| p + 1);
        let pad = t.len() - body;
        pad <= 2
            && t[..body]
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/')
            && (pad == 0 || t.len() % 4 == 0)
    }
}

fn validate_disks(
    domain_path: &str,
    spec: &VirtualMachineInstanceSpec,
    volumes: &HashMap<String, usize>,
    errs: &mut Vec<FieldError>,
) {
    let Some(disks) = spec.domain.devices.disks.as_ref() else {
        return;
    };
    let dpath = format!("{domain_path}.devices.disks");
    if disks.len() > MAX_LIST_LEN {
        errs.push(FieldError::too_many(
            dpath.clone(),
            disks.len(),
            MAX_LIST_LEN,
        ));
    }
    let mut seen = HashSet::new();
    let mut boot_orders: HashMap<u32, String> = HashMap::new();
    for (i, d) in disks.iter().enumerate() {
        let p = format!("{dpath}[{i}]");
        if d.name.is_empty() {
            errs.push(FieldError::required(format!("{p}.name"), ""));
        } else {
            if !seen.insert(d.name.clone()) {
                errs.push(FieldError::duplicate(format!("{p}.name"), d.name.clone()));
            }
            // A cdrom without a volume is an empty tray (upstream's DeclarativeHotplugVolumes,
            // on by default).
            if !volumes.contains_key(&d.name) && d.cdrom.is_none() {
                errs.push(FieldError::not_found(format!("{p}.name"), d.name.clone()));
            }
        }
        let targets: Vec<&str> = [
            (d.disk.is_some(), "disk"),
            (d.lun.is_some(), "lun"),
            (d.cdrom.is_some(), "cdrom"),
        ]
        .iter()
        .filter(|(set, _)| *set)
        .map(|(_, n)| *n)
        .collect();
        if targets.len() > 1 {
            errs.push(FieldError::forbidden(
                format!("{p}.{}", targets[1]),
                "only one of disk, lun or cdrom may be set",
            ));
        }
        if let Some(bus) = d.disk.as_ref().and_then(|t| t.bus.as_deref()) {
            if !DISK_BUSES.contains(&bus) {
                errs.push(FieldError::not_supported(
                    format!("{p}.disk.bus"),
                    bus,
                    &DISK_BUSES,
                ));
            }
        }
        if let Some(bus) = d.lun.as_ref().and_then(|t| t.bus.as_deref()) {
            if !DISK_BUSES.contains(&bus) {
                errs.push(FieldError::not_supported(
                    format!("{p}.lun.bus"),
                    bus,
                    &DISK_BUSES,
                ));
            }
        }
        if let Some(c) = d.cdrom.as_ref() {
            if let Some(bus) = c.bus.as_deref() {
                if !CDROM_BUSES.contains(&bus) {
                    errs.push(FieldError::not_supported(
                        format!("{p}.cdrom.bus"),
                        bus,
                        &CDROM_BUSES,
                    ));
                }
            }
            check_enum(
                &format!("{p}.cdrom.tray"),
                c.tray.as_deref(),
                &["open", "closed"],
                errs,
            );
        }
        check_enum(
            &format!("{p}.cache"),
            d.cache.as_deref(),
            &["none", "writethrough", "writeback"],
            errs,
        );
        check_enum(
            &format!("{p}.io"),
            d.io.as_deref(),
            &["native", "default", "threads"],
            errs,
        );
        check_enum(
            &format!("{p}.errorPolicy"),
            d.error_policy.as_deref(),
            &["stop", "ignore", "report", "enospace"],
            errs,
        );
        if let Some(bo) = d.boot_order {
            check_boot_order(&format!("{p}.bootOrder"), bo, &mut boot_orders, errs);
        }
        if let Some(vol) = volumes
            .get(&d.name)
            .and_then(|i| spec.volumes.as_ref()?.get(*i))
        {
            if d.lun.is_some() && vol.persistent_volume_claim.is_none() && vol.data_volume.is_none()
            {
                errs.push(FieldError::invalid(
                    format!("{p}.lun"),
                    d.name.clone(),
                    "can only be mapped to a DataVolume or PersistentVolumeClaim volume",
                ));
            }
            if vol.downward_metrics.is_some() {
                match d.disk.as_ref() {
                    None => errs.push(FieldError::required(
                        format!("{p}.disk"),
                        "DownwardMetrics volume must be mapped to a disk",
                    )),
                    Some(t) if t.bus.as_deref().is_some_and(|b| b != "virtio") => {
                        errs.push(FieldError::not_supported(
                            format!("{p}.disk.bus"),
                            t.bus.clone().unwrap_or_default(),
                            &["virtio"],
                        ))
                    }
                    _ => {}
                }
            }
        }
        if d.dedicated_io_thread == Some(true)
            && d.disk.as_ref().and_then(|t| t.bus.as_deref()) != Some("virtio")
        {
            errs.push(FieldError::forbidden(
                format!("{p}.dedicatedIOThread"),
                "dedicated IO threads are only supported on the virtio bus",
            ));
        }
    }
    for (i, iface) in spec.domain.devices.interfaces.iter().flatten().enumerate() {
        if let Some(bo) = iface.boot_order {
            check_boot_order(
                &format!("{domain_path}.devices.interfaces[{i}].bootOrder"),
                bo,
                &mut boot_orders,
                errs,
            );
        }
    }
}

fn check_boot_order(
    path: &str,
    order: u32,
    seen: &mut HashMap<u32, String>,
    errs: &mut Vec<FieldError>,
) {
    if order == 0 {
        errs.push(FieldError::invalid(
            path,
            order,
            "must be greater than or equal to 1",
        ));
        return;
    }
    if let Some(prev) = seen.get(&order) {
        errs.push(FieldError::duplicate(path, order).with_message(format!("also used by {prev}")));
    } else {
        seen.insert(order, path.to_string());
    }
}

impl FieldError {
    fn with_message(mut self, m: String) -> Self {
        self.message = m;
        self
    }
}

fn validate_networks(path: &str, spec: &VirtualMachineInstanceSpec, errs: &mut Vec<FieldError>) {
    let networks = spec.networks.clone().unwrap_or_default();
    let interfaces = spec.domain.devices.interfaces.clone().unwrap_or_default();
    let ipath = format!("{path}.domain.devices.interfaces");
    let mut net_by_name: HashMap<&str, &Network> = HashMap::new();
    let mut pod_networks = 0;
    for (i, n) in networks.iter().enumerate() {
        let p = format!("{path}.networks[{i}]");
        if n.name.is_empty() {
            errs.push(FieldError::required(format!("{p}.name"), ""));
        } else if net_by_name.insert(n.name.as_str(), n).is_some() {
            errs.push(FieldError::duplicate(format!("{p}.name"), n.name.clone()));
        }
        match (n.pod.is_some(), n.multus.is_some()) {
            (false, false) => errs.push(FieldError::required(
                p.clone(),
                "must specify exactly one network source (pod or multus)",
            )),
            (true, true) => errs.push(FieldError::forbidden(
                format!("{p}.multus"),
                "may not specify more than 1 network source",
            )),
            _ => {}
        }
        if n.pod.is_some() {
            pod_networks += 1;
            if pod_networks > 1 {
                errs.push(FieldError::forbidden(
                    format!("{p}.pod"),
                    "more than one pod network is not allowed",
                ));
            }
        }
        if let Some(m) = n.multus.as_ref() {
            if m.network_name.is_empty() {
                errs.push(FieldError::required(format!("{p}.multus.networkName"), ""));
            }
        }
        if !n.name.is_empty() && !interfaces.iter().any(|iface| iface.name == n.name) {
            errs.push(FieldError::required(
                format!("{p}.name"),
                format!(
                    "network {:?} must be used by an interface in {ipath}",
                    n.name
                ),
            ));
        }
    }
    if interfaces.len() > MAX_LIST_LEN {
        errs.push(FieldError::too_many(
            ipath.clone(),
            interfaces.len(),
            MAX_LIST_LEN,
        ));
    }
    let mut seen = HashSet::new();
    let mut pod_interfaces = 0;
    for (i, iface) in interfaces.iter().enumerate() {
        let p = format!("{ipath}[{i}]");
        if iface.name.is_empty() {
            errs.push(FieldError::required(format!("{p}.name"), ""));
            continue;
        }
        if !seen.insert(iface.name.clone()) {
            errs.push(FieldError::duplicate(
                format!("{p}.name"),
                iface.name.clone(),
            ));
        }
        let net = net_by_name.get(iface.name.as_str());
        if net.is_none() {
            errs.push(FieldError::not_found(
                format!("{p}.name"),
                iface.name.clone(),
            ));
        }
        let methods = iface.binding_methods();
        match methods.len() {
            0 => errs.push(FieldError::required(
                p.clone(),
                "must specify exactly one binding method (bridge, masquerade, sriov, passt, binding...)",
            )),
            1 => {}
            _ => errs.push(FieldError::forbidden(
                format!("{p}.{}", methods[1]),
                "may not specify more than 1 binding method",
            )),
        }
        let on_pod = net.is_some_and(|n| n.pod.is_some());
        if on_pod {
            pod_interfaces += 1;
            if pod_interfaces == 2 {
                errs.push(
                    FieldError::duplicate(format!("{p}.name"), iface.name.clone()).with_message(
                        format!("more than one interface is connected to a pod network in {ipath}"),
                    ),
                );
            }
        }
        let on_multus = net.is_some_and(|n| n.multus.is_some());
        if iface.masquerade.is_some() && on_multus {
            errs.push(FieldError::forbidden(
                format!("{p}.masquerade"),
                "masquerade interface is only implemented for the pod network",
            ));
        }
        if iface.sriov.is_some() && on_pod {
            errs.push(FieldError::forbidden(
                format!("{p}.sriov"),
                "sriov interface is only implemented for multus networks",
            ));
        }
        if let Some(model) = iface.model.as_deref() {
            if !INTERFACE_MODELS.contains(&model) {
                errs.push(FieldError::not_supported(
                    format!("{p}.model"),
                    model,
                    &INTERFACE_MODELS,
                ));
            }
        }
        // Empty means none (a clone clears it so a new one is made).
        if let Some(mac) = iface.mac_address.as_deref().filter(|m| !m.is_empty()) {
            if !is_mac(mac) {
                errs.push(FieldError::invalid(
                    format!("{p}.macAddress"),
                    mac,
                    "must be a valid unicast MAC address (e.g. 02:00:00:00:00:01)",
                ));
            }
        }
        check_enum(
            &format!("{p}.state"),
            iface.state.as_deref(),
            &["up", "down", "absent"],
            errs,
        );
        let mut port_names = HashSet::new();
        for (j, port) in iface.ports.iter().flatten().enumerate() {
            let pp = format!("{p}.ports[{j}]");
            if !(1..=65535).contains(&port.port) {
                errs.push(FieldError::invalid(
                    format!("{pp}.port"),
                    port.port,
                    "must be between 1 and 65535, inclusive",
                ));
            }
            check_enum(
                &format!("{pp}.protocol"),
                port.protocol.as_deref(),
                &["TCP", "UDP"],
                errs,
            );
            if let Some(n) = port.name.as_deref() {
                if !n.is_empty() && !port_names.insert(n.to_string()) {
                    errs.push(FieldError::duplicate(format!("{pp}.name"), n));
                }
            }
        }
        if iface.ports.is_some()
            && !(iface.masquerade.is_some()
                || iface.slirp.is_some()
                || iface.passt.is_some()
                || iface.passt_binding.is_some())
        {
            errs.push(FieldError::forbidden(
                format!("{p}.ports"),
                "ports may only be set with masquerade, slirp or passt binding",
            ));
        }
    }
}

fn is_mac(s: &str) -> bool {
    let parts: Vec<&str> = s.split([':', '-']).collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()))
}

fn validate_devices(domain_path: &str, devices: &Devices, errs: &mut Vec<FieldError>) {
    let dp = format!("{domain_path}.devices");
    let mut names = HashSet::new();
    for (i, g) in devices.gpus.iter().flatten().enumerate() {
        let p = format!("{dp}.gpus[{i}]");
        if g.name.is_empty() {
            errs.push(FieldError::required(format!("{p}.name"), ""));
        } else if !names.insert(g.name.clone()) {
            errs.push(FieldError::duplicate(format!("{p}.name"), g.name.clone()));
        }
        if g.device_name.as_deref().unwrap_or("").is_empty()
            && g.claim_name.as_deref().unwrap_or("").is_empty()
        {
            errs.push(FieldError::required(
                format!("{p}.deviceName"),
                "one of deviceName or claimName must be set",
            ));
        }
    }
    let mut names = HashSet::new();
    for (i, h) in devices.host_devices.iter().flatten().enumerate() {
        let p = format!("{dp}.hostDevices[{i}]");
        if h.name.is_empty() {
            errs.push(FieldError::required(format!("{p}.name"), ""));
        } else if !names.insert(h.name.clone()) {
            errs.push(FieldError::duplicate(format!("{p}.name"), h.name.clone()));
        }
        if h.device_name.as_deref().unwrap_or("").is_empty()
            && h.claim_name.as_deref().unwrap_or("").is_empty()
        {
            errs.push(FieldError::required(
                format!("{p}.deviceName"),
                "one of deviceName or claimName must be set",
            ));
        }
    }
    for (i, input) in devices.inputs.iter().flatten().enumerate() {
        let p = format!("{dp}.inputs[{i}]");
        check_enum(
            &format!("{p}.bus"),
            input.bus.as_deref(),
            &["usb", "virtio"],
            errs,
        );
        if !["tablet", "keyboard"].contains(&input.input_type.as_str()) {
            errs.push(FieldError::not_supported(
                format!("{p}.type"),
                input.input_type.clone(),
                &["tablet", "keyboard"],
            ));
        }
    }
    if let Some(w) = devices.watchdog.as_ref() {
        for (model, dev) in [("i6300esb", &w.i6300esb), ("diag288", &w.diag288)] {
            let Some(a) = dev.as_ref() else { continue };
            check_enum(
                &format!("{dp}.watchdog.{model}.action"),
                a.action.as_deref(),
                &["poweroff", "reset", "shutdown"],
                errs,
            );
        }
    }
}

fn validate_probe(path: &str, p: &Probe, errs: &mut Vec<FieldError>) {
    let handlers = [
        (p.exec.is_some(), "exec"),
        (p.http_get.is_some(), "httpGet"),
        (p.tcp_socket.is_some(), "tcpSocket"),
        (p.guest_agent_ping.is_some(), "guestAgentPing"),
    ];
    let set: Vec<&str> = handlers
        .iter()
        .filter(|(s, _)| *s)
        .map(|(_, n)| *n)
        .collect();
    match set.len() {
        0 => errs.push(FieldError::required(
            path,
            "must specify a handler type (exec, httpGet, tcpSocket or guestAgentPing)",
        )),
        1 => {}
        _ => errs.push(FieldError::forbidden(
            format!("{path}.{}", set[1]),
            "may not specify more than 1 handler type",
        )),
    }
    for (field, v) in [
        ("initialDelaySeconds", p.initial_delay_seconds),
        ("timeoutSeconds", p.timeout_seconds),
        ("periodSeconds", p.period_seconds),
        ("successThreshold", p.success_threshold),
        ("failureThreshold", p.failure_threshold),
    ] {
        if let Some(v) = v {
            if v < 0 {
                errs.push(FieldError::invalid(
                    format!("{path}.{field}"),
                    v,
                    "must be greater than or equal to 0",
                ));
            }
        }
    }
}

/// DNS-1123 label rules (`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`, at most 63), in apimachinery's
/// wording.
pub fn dns1123_label(v: &str) -> Vec<String> {
    let mut out = Vec::new();
    if v.len() > 63 {
        out.push("must be no more than 63 characters".to_string());
    }
    let b = v.as_bytes();
    let ok = !b.is_empty()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-';
    if !ok {
        out.push(
            "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')".to_string(),
        );
    }
    out
}

/// DNS-1123 subdomain rules (labels joined by dots, at most 253).
pub fn dns1123_subdomain(v: &str) -> Vec<String> {
    let mut out = Vec::new();
    if v.len() > 253 {
        out.push("must be no more than 253 characters".to_string());
    }
    if v.is_empty()
        || v.split('.')
            .any(|l| !dns1123_label(l).is_empty() || l.len() > 63)
    {
        out.push(
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')".to_string(),
        );
    }
    out
}

/// Upstream's rules for `dedicatedCpuPlacement: true`.
fn validate_dedicated_cpus(domain_path: &str, domain: &DomainSpec, errs: &mut Vec<FieldError>) {
    let res = domain.resources.clone().unwrap_or_default();
    let get = |list: &Option<BTreeMap<String, Quantity>>, k: &str| {
        list.as_ref().and_then(|l| l.get(k).cloned())
    };
    let (req_mem, lim_mem) = (get(&res.requests, "memory"), get(&res.limits, "memory"));
    let (req_cpu, lim_cpu) = (get(&res.requests, "cpu"), get(&res.limits, "cpu"));
    let rpath = format!("{domain_path}.resources");
    if req_mem.is_none() && lim_mem.is_none() {
        errs.push(FieldError::required(
            format!("{rpath}.limits.memory"),
            "requests.memory or limits.memory must be provided when dedicatedCpuPlacement is true",
        ));
    }
    if let (Some(r), Some(l)) = (&req_mem, &lim_mem) {
        if r != l {
            errs.push(FieldError::invalid(
                format!("{rpath}.requests.memory"),
                r.as_str(),
                format!(
                    "must be equal to limits.memory ({}) when dedicatedCpuPlacement is true",
                    l.as_str()
                ),
            ));
        }
    }
    for (kind, q) in [("requests", &req_cpu), ("limits", &lim_cpu)] {
        if let Some(q) = q {
            if q.milli_value() % 1000 != 0 {
                errs.push(FieldError::invalid(
                    format!("{rpath}.{kind}.cpu"),
                    q.as_str(),
                    "must be an integer when dedicatedCpuPlacement is true",
                ));
            }
        }
    }
    if let (Some(r), Some(l)) = (&req_cpu, &lim_cpu) {
        if r != l {
            errs.push(FieldError::invalid(
                format!("{rpath}.requests.cpu"),
                r.as_str(),
                format!(
                    "must be equal to limits.cpu ({}) when dedicatedCpuPlacement is true",
                    l.as_str()
                ),
            ));
        }
    }
    if let Some(t) = domain.cpu.as_ref().and_then(|c| c.threads) {
        if t > 2 {
            errs.push(FieldError::invalid(
                format!("{domain_path}.cpu.threads"),
                t,
                "must not be greater than 2 when dedicatedCpuPlacement is true",
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_rules() {
        assert!(dns1123_label("containerdisk").is_empty());
        assert!(dns1123_label("host-disk").is_empty());
        assert!(!dns1123_label("Root").is_empty());
        assert!(!dns1123_label("-a").is_empty());
        assert!(dns1123_subdomain("vmi.fedora").is_empty());
        assert!(!dns1123_subdomain("a..b").is_empty());
    }

    #[test]
    fn base64_check() {
        assert!(base64_check::is_base64("aGVsbG8="));
        assert!(base64_check::is_base64("aGVsbG8"));
        assert!(!base64_check::is_base64("not base64!"));
    }

    #[test]
    fn a_cdrom_may_have_no_volume_a_disk_may_not() {
        let spec: VirtualMachineInstanceSpec = serde_json::from_value(serde_json::json!({
            "domain": {"devices": {"disks": [
                {"name": "tray", "cdrom": {"bus": "sata"}},
                {"name": "lost", "disk": {"bus": "virtio"}}
            ]}, "resources": {"requests": {"memory": "64Mi"}}}
        }))
        .unwrap();
        let fields: Vec<String> = validate_vmi_spec("spec", &spec)
            .into_iter()
            .map(|e| e.field)
            .collect();
        assert_eq!(fields, ["spec.domain.devices.disks[1].name"]);
    }

    #[test]
    fn macs() {
        assert!(is_mac("02:00:00:00:00:01"));
        assert!(!is_mac("02:00:00:00:00"));
        assert!(!is_mac("zz:00:00:00:00:01"));
    }
}
