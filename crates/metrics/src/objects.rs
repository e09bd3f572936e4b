//! The `kubevirt_vm_*` and `kubevirt_vmi_*` families read from VM and VMI objects: what
//! upstream's virt-controller serves from its VM and VMI informers, with its names, types,
//! label sets and values.
//!
//! The VM, VMI and migration objects are at hand; what upstream reads from other objects
//! is decided here as upstream decides it when those objects are missing:
//!
//! - `instance_type` and `preference` are `<other>` whenever one is named: upstream shows
//!   a name only after finding the instancetype object with a `kubevirt.io` or
//!   `redhat.com` vendor label, and `<other>` otherwise;
//! - `vmi_pod` is the pod the VMI's migration state says runs the guest, else empty;
//! - instancetypes and preferences are not applied to a VM before its resources are read.
//!
//! Not emitted: `kubevirt_vm_disk_allocated_size_bytes` (sizes come from PVC objects),
//! the migration phase-transition histogram, and `kubevirt_vm_labels` honours no
//! `kubevirt-vm-labels-config` ConfigMap: every label is reported, upstream's default.
//!
//! Upstream leaves a label empty (`""`) when it knows nothing, and so does this module.

use std::collections::{BTreeMap, HashSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kubevirt_api::launcher_pod::memory_overhead;
use kubevirt_api::migration::guest_pod;
use kubevirt_api::quantity::Quantity;
use kubevirt_api::v1::vm_condition;
use kubevirt_api::v1::vmi_condition;
use kubevirt_api::v1::{
    ConditionStatus, DomainSpec, Interface, Network, VirtualMachine, VirtualMachineInstance,
    VirtualMachineInstanceMigration, VirtualMachinePrintableStatus,
};

use crate::families::{Families, Labels};

const OS_ANNOTATION: &str = "vm.kubevirt.io/os";
const WORKLOAD_ANNOTATION: &str = "vm.kubevirt.io/workload";
const FLAVOR_ANNOTATION: &str = "vm.kubevirt.io/flavor";
const INSTANCETYPE_ANNOTATION: &str = "kubevirt.io/instancetype-name";
const CLUSTER_INSTANCETYPE_ANNOTATION: &str = "kubevirt.io/cluster-instancetype-name";
const PREFERENCE_ANNOTATION: &str = "kubevirt.io/preference-name";
const CLUSTER_PREFERENCE_ANNOTATION: &str = "kubevirt.io/cluster-preference-name";
/// Set by virt-operator on VMIs whose launcher runs an older image than the install's.
const OUTDATED_LAUNCHER_IMAGE_LABEL: &str = "kubevirt.io/outdatedLauncherImage";

/// What upstream reports for an instancetype or preference it cannot vouch for.
const OTHER: &str = "<other>";
/// What upstream reports for a vNIC without a model.
const NO_MODEL: &str = "<none>";

const REQUESTS: &str = "kubevirt_vm_resource_requests";
const REQUESTS_HELP: &str =
    "CPU and memory a VirtualMachine asks for, by where the figure comes from (source).";
const LIMITS: &str = "kubevirt_vm_resource_limits";
const LIMITS_HELP: &str = "CPU and memory limits of a VirtualMachine, when it sets them.";

/// Adds the families upstream's virt-controller serves for these objects.
pub fn collect(
    f: &mut Families,
    vms: &[VirtualMachine],
    vmis: &[VirtualMachineInstance],
    migrations: &[VirtualMachineInstanceMigration],
) {
    let mut addresses = HashSet::new();
    migration_counts(f, migrations);
    for vmi in vmis {
        vmi_migration_times(f, vmi, migrations);
        vmi_info(f, vmi);
        vmi_non_evictable(f, vmi);
        vmi_status_addresses(f, vmi, &mut addresses);
        vmi_vnic_info(f, vmi);
        vmi_launcher_memory_overhead(f, vmi);
    }
    for vm in vms {
        vm_info(f, vm);
        vm_create_date(f, vm);
        vm_status_transitions(f, vm);
        vm_resources(f, vm);
        vm_vnic_info(f, vm);
        vm_labels(f, vm);
    }
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn name_of(meta: &ObjectMeta) -> (&str, &str) {
    (
        meta.namespace.as_deref().unwrap_or(""),
        meta.name.as_deref().unwrap_or(""),
    )
}

fn annotation<'a>(meta: Option<&'a ObjectMeta>, key: &str) -> Option<&'a str> {
    meta?.annotations.as_ref()?.get(key).map(String::as_str)
}

/// `os`, `workload` and `flavor` from the `vm.kubevirt.io/*` annotations.
fn system_info(meta: Option<&ObjectMeta>) -> [&str; 3] {
    [OS_ANNOTATION, WORKLOAD_ANNOTATION, FLAVOR_ANNOTATION]
        .map(|key| annotation(meta, key).unwrap_or(""))
}

/// `<other>` when either annotation names an instancetype (or preference), else empty.
fn named_in_annotations(meta: &ObjectMeta, keys: [&str; 2]) -> &'static str {
    if keys.iter().any(|k| annotation(Some(meta), k).is_some()) {
        OTHER
    } else {
        ""
    }
}

/// `<other>` when the matcher's kind is one of the two upstream looks up, else empty.
fn named_in_matcher(kind: Option<&str>, kinds: [&str; 2]) -> &'static str {
    match kind {
        Some(kind) if kinds.iter().any(|k| k.eq_ignore_ascii_case(kind)) => OTHER,
        _ => "",
    }
}

fn seconds(t: &Time) -> i64 {
    t.0.as_second()
}

// ---- Migrations ----

/// Migrations per phase group, and one sample per finished migration, as upstream's
/// migration stats collector.
fn migration_counts(f: &mut Families, migrations: &[VirtualMachineInstanceMigration]) {
    use kubevirt_api::v1::VirtualMachineInstanceMigrationPhase as P;
    let (mut pending, mut scheduling, mut unset, mut running) = (0, 0, 0, 0);
    for m in migrations {
        let phase = m.status.as_ref().and_then(|s| s.phase).unwrap_or_default();
        let finished = match phase {
            P::Pending => {
                pending += 1;
                None
            }
            P::Scheduling => {
                scheduling += 1;
                None
            }
            P::Unset => {
                unset += 1;
                None
            }
            P::Running
            | P::Scheduled
            | P::PreparingTarget
            | P::TargetReady
            | P::WaitingForSync
            | P::Synchronizing => {
                running += 1;
                None
            }
            P::Succeeded => Some((
                "kubevirt_vmi_migration_succeeded",
                "Indicates if the VMI migration succeeded.",
            )),
            P::Failed => Some((
                "kubevirt_vmi_migration_failed",
                "Indicates if the VMI migration failed.",
            )),
        };
        if let Some((name, help)) = finished {
            let (namespace, vmim) = name_of(&m.metadata);
            f.gauge(
                name,
                help,
                labels(&[
                    ("vmi", m.spec.vmi_name.as_deref().unwrap_or("")),
                    ("vmim", vmim),
                    ("namespace", namespace),
                ]),
                1.0,
            );
        }
    }
    for (name, help, n) in [
        (
            "kubevirt_vmi_migrations_in_pending_phase",
            "Number of current pending migrations.",
            pending,
        ),
        (
            "kubevirt_vmi_migrations_in_scheduling_phase",
            "Number of current scheduling migrations.",
            scheduling,
        ),
        (
            "kubevirt_vmi_migrations_in_unset_phase",
            "Number of current unset migrations. These are pending items the virt-controller hasn't processed yet from the queue.",
            unset,
        ),
        (
            "kubevirt_vmi_migrations_in_running_phase",
            "Number of current running migrations.",
            running,
        ),
    ] {
        f.gauge(name, help, Vec::new(), n as f64);
    }
}

/// When the VMI's last migration started and ended; `migration_name` is the migration
/// object with the state's uid (`<none>` when it is gone, as upstream).
fn vmi_migration_times(
    f: &mut Families,
    vmi: &VirtualMachineInstance,
    migrations: &[VirtualMachineInstanceMigration],
) {
    let Some(state) = vmi.status.as_ref().and_then(|s| s.migration_state.as_ref()) else {
        return;
    };
    let (namespace, name) = name_of(&vmi.metadata);
    let node = node_of(vmi);
    let migration = migrations
        .iter()
        .find(|m| m.metadata.uid.is_some() && m.metadata.uid == state.migration_uid)
        .and_then(|m| m.metadata.name.as_deref())
        .unwrap_or("<none>");
    let base = [
        ("node", node),
        ("namespace", namespace),
        ("name", name),
        ("migration_name", migration),
    ];
    if let Some(t) = &state.start_timestamp {
        f.gauge(
            "kubevirt_vmi_migration_start_time_seconds",
            "The time at which the migration started.",
            labels(&base),
            seconds(t) as f64,
        );
    }
    if let Some(t) = &state.end_timestamp {
        let status = match (state.completed, state.failed) {
            (Some(true), Some(true)) => "failed",
            (Some(true), _) => "succeeded",
            _ => "",
        };
        let mut l = labels(&base);
        l.push(("status".into(), status.into()));
        f.gauge(
            "kubevirt_vmi_migration_end_time_seconds",
            "The time at which the migration ended.",
            l,
            seconds(t) as f64,
        );
    }
}

// ---- VMIs ----

/// The node the VMI runs on, empty before it is scheduled.
fn node_of(vmi: &VirtualMachineInstance) -> &str {
    vmi.status
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .unwrap_or("")
}

fn vmi_info(f: &mut Families, vmi: &VirtualMachineInstance) {
    let (namespace, name) = name_of(&vmi.metadata);
    let status = vmi.status.as_ref();
    let node = node_of(vmi);
    let phase = vmi.phase().as_str().to_lowercase();
    let [os, workload, flavor] = system_info(Some(&vmi.metadata));
    let instance_type = named_in_annotations(
        &vmi.metadata,
        [INSTANCETYPE_ANNOTATION, CLUSTER_INSTANCETYPE_ANNOTATION],
    );
    let preference = named_in_annotations(
        &vmi.metadata,
        [PREFERENCE_ANNOTATION, CLUSTER_PREFERENCE_ANNOTATION],
    );
    let guest = status.and_then(|s| s.guest_os_info.as_ref());
    let guest_field = |pick: fn(&kubevirt_api::v1::GuestOsInfo) -> &Option<String>| {
        guest.and_then(|g| pick(g).as_deref()).unwrap_or("")
    };
    let machine = status
        .and_then(|s| s.machine.as_ref())
        .and_then(|m| m.machine_type.as_deref())
        .unwrap_or("");
    let outdated = vmi
        .metadata
        .labels
        .as_ref()
        .is_some_and(|l| l.contains_key(OUTDATED_LAUNCHER_IMAGE_LABEL));
    // Upstream names the running launcher pod on the VMI's node; without pods, the
    // migration state says which pod that is, and a VMI that has stopped has none.
    let pod = if vmi.is_final() {
        ""
    } else {
        guest_pod(vmi).unwrap_or("")
    };
    f.gauge(
        "kubevirt_vmi_info",
        "Information about a VirtualMachineInstance (always 1): its phase, guest OS and state.",
        labels(&[
            ("node", node),
            ("namespace", namespace),
            ("name", name),
            ("phase", &phase),
            ("os", os),
            ("workload", workload),
            ("flavor", flavor),
            ("instance_type", instance_type),
            ("preference", preference),
            (
                "guest_os_kernel_release",
                guest_field(|g| &g.kernel_release),
            ),
            ("guest_os_machine", machine),
            ("guest_os_arch", guest_field(|g| &g.machine)),
            ("guest_os_name", guest_field(|g| &g.name)),
            ("guest_os_version_id", guest_field(|g| &g.version_id)),
            ("evictable", if evictable(vmi) { "true" } else { "false" }),
            ("outdated", if outdated { "true" } else { "false" }),
            ("vmi_pod", pod),
        ]),
        1.0,
    );
}

/// Upstream's rule: a VMI that should migrate when evicted (`LiveMigrate`, or
/// `LiveMigrateIfPossible` while it is migratable) is evictable only once its
/// `LiveMigratable` condition is set and not `False`. The cluster-wide default strategy
/// is upstream's, `None`.
fn evictable(vmi: &VirtualMachineInstance) -> bool {
    let migrates_on_eviction = match vmi.spec.eviction_strategy.as_deref() {
        Some("LiveMigrate") => true,
        Some("LiveMigrateIfPossible") => vmi.condition_true(vmi_condition::LIVE_MIGRATABLE),
        _ => false,
    };
    if !migrates_on_eviction {
        return true;
    }
    vmi.condition(vmi_condition::LIVE_MIGRATABLE)
        .is_some_and(|c| c.status != ConditionStatus::False)
}

fn vmi_non_evictable(f: &mut Families, vmi: &VirtualMachineInstance) {
    let (namespace, name) = name_of(&vmi.metadata);
    let node = node_of(vmi);
    f.gauge(
        "kubevirt_vmi_non_evictable",
        "1 when a VirtualMachineInstance should live-migrate on eviction but cannot migrate.",
        labels(&[("node", node), ("namespace", namespace), ("name", name)]),
        if evictable(vmi) { 0.0 } else { 1.0 },
    );
}

/// One sample per reported interface address. An interface without an address is a
/// `SystemInterface` (kept when it has a name); `seen` drops repeated label sets, which
/// a guest agent could report and which would repeat a series.
fn vmi_status_addresses(
    f: &mut Families,
    vmi: &VirtualMachineInstance,
    seen: &mut HashSet<Labels>,
) {
    let (namespace, name) = name_of(&vmi.metadata);
    let Some(status) = vmi.status.as_ref() else {
        return;
    };
    let node = status.node_name.as_deref().unwrap_or("");
    for iface in status.interfaces.iter().flatten() {
        let ip = iface.ip_address.as_deref().unwrap_or("");
        let vnic = iface.name.as_deref().unwrap_or("");
        let interface_name = iface.interface_name.as_deref().unwrap_or("");
        let kind = if !ip.is_empty() {
            "ExternalInterface"
        } else if !vnic.is_empty() || !interface_name.is_empty() {
            "SystemInterface"
        } else {
            continue;
        };
        let l = labels(&[
            ("node", node),
            ("namespace", namespace),
            ("name", name),
            ("vnic_name", vnic),
            ("interface_name", interface_name),
            ("address", ip),
            ("type", kind),
        ]);
        if seen.insert(l.clone()) {
            f.gauge(
                "kubevirt_vmi_status_addresses",
                "An address of a VirtualMachineInstance's interface (always 1): the address \
                 in 'address', its kind (ExternalInterface, SystemInterface) in 'type'.",
                l,
                1.0,
            );
        }
    }
}

fn vmi_vnic_info(f: &mut Families, vmi: &VirtualMachineInstance) {
    let (namespace, name) = name_of(&vmi.metadata);
    vnic_info(
        f,
        "kubevirt_vmi_vnic_info",
        "A vNIC of a VirtualMachineInstance (always 1): its binding and network.",
        (namespace, name),
        Some(&vmi.spec.domain),
        vmi.spec.networks.as_deref(),
    );
}

/// The memory the launcher pod holds beyond the guest's: what this project's pods are
/// given (`launcher_pod::memory_overhead`), as upstream reports what its pods get.
fn vmi_launcher_memory_overhead(f: &mut Families, vmi: &VirtualMachineInstance) {
    let (namespace, name) = name_of(&vmi.metadata);
    f.gauge(
        "kubevirt_vmi_launcher_memory_overhead_bytes",
        "Memory the launcher pod reserves beyond guest RAM for the processes around the \
         guest (launcher, QEMU, page tables, devices).",
        labels(&[("namespace", namespace), ("name", name)]),
        memory_overhead(vmi) as f64,
    );
}

/// One sample per interface attached to a known network (upstream skips the others).
fn vnic_info(
    f: &mut Families,
    family: &'static str,
    help: &'static str,
    (namespace, name): (&str, &str),
    domain: Option<&DomainSpec>,
    networks: Option<&[Network]>,
) {
    let interfaces = domain.and_then(|d| d.devices.interfaces.as_deref());
    for iface in interfaces.unwrap_or_default() {
        let Some(network) = network_name(iface, networks.unwrap_or_default()) else {
            continue;
        };
        let (binding_type, binding_name) = binding(iface);
        let model = iface.model.as_deref().filter(|m| !m.is_empty());
        f.gauge(
            family,
            help,
            labels(&[
                ("name", name),
                ("namespace", namespace),
                ("vnic_name", &iface.name),
                ("binding_type", binding_type),
                ("network", network),
                ("binding_name", binding_name),
                ("model", model.unwrap_or(NO_MODEL)),
            ]),
            1.0,
        );
    }
}

/// `core` for the bindings built in (masquerade, bridge, SR-IOV), `plugin` for a named
/// binding plugin, both empty for the rest, as upstream.
fn binding(iface: &Interface) -> (&str, &str) {
    if iface.masquerade.is_some() {
        ("core", "masquerade")
    } else if iface.bridge.is_some() {
        ("core", "bridge")
    } else if iface.sriov.is_some() {
        ("core", "sriov")
    } else if let Some(b) = &iface.binding {
        ("plugin", &b.name)
    } else {
        ("", "")
    }
}

fn network_name<'a>(iface: &Interface, networks: &'a [Network]) -> Option<&'a str> {
    let network = networks.iter().find(|n| n.name == iface.name)?;
    if network.pod.is_some() {
        Some("pod networking")
    } else {
        network.multus.as_ref().map(|m| m.network_name.as_str())
    }
}

// ---- VMs ----

/// Upstream's grouping of printable statuses; `None` for the ones it leaves out
/// (`WaitingForReceiver`, or no status yet).
#[derive(Clone, Copy, PartialEq, Eq)]
enum StatusGroup {
    Starting,
    Running,
    Migrating,
    NonRunning,
    Error,
}

fn status_group(status: Option<VirtualMachinePrintableStatus>) -> Option<StatusGroup> {
    use VirtualMachinePrintableStatus as S;
    Some(match status? {
        S::Provisioning | S::Starting | S::WaitingForVolumeBinding => StatusGroup::Starting,
        S::Running => StatusGroup::Running,
        S::Migrating => StatusGroup::Migrating,
        S::Stopped | S::Paused | S::Stopping | S::Terminating => StatusGroup::NonRunning,
        S::CrashLoopBackOff
        | S::Unknown
        | S::ErrorUnschedulable
        | S::ErrImagePull
        | S::ImagePullBackOff
        | S::ErrorPvcNotFound
        | S::DataVolumeError => StatusGroup::Error,
        S::WaitingForReceiver => return None,
    })
}

fn status_group_label(group: Option<StatusGroup>) -> &'static str {
    match group {
        Some(StatusGroup::Starting) => "starting",
        Some(StatusGroup::Running) => "running",
        Some(StatusGroup::Migrating) => "migrating",
        Some(StatusGroup::NonRunning) => "non_running",
        Some(StatusGroup::Error) => "error",
        None => "<unknown>",
    }
}

/// The printable status as serialised (`ErrorUnschedulable`), lower-cased like upstream.
fn printable_status(vm: &VirtualMachine) -> String {
    let status = vm.status.as_ref().and_then(|s| s.printable_status);
    status
        .and_then(|s| serde_json::to_value(s).ok())
        .and_then(|v| v.as_str().map(str::to_lowercase))
        .unwrap_or_default()
}

fn vm_info(f: &mut Families, vm: &VirtualMachine) {
    let (namespace, name) = name_of(&vm.metadata);
    let template = &vm.spec.template;
    let [os, workload, flavor] = system_info(template.metadata.as_ref());
    let machine_type = template
        .spec
        .as_ref()
        .and_then(|s| s.domain.machine.as_ref())
        .and_then(|m| m.machine_type.as_deref())
        .unwrap_or("");
    let instance_type = named_in_matcher(
        vm.spec
            .instancetype
            .as_ref()
            .and_then(|m| m.kind.as_deref()),
        [
            "virtualmachineinstancetype",
            "virtualmachineclusterinstancetype",
        ],
    );
    let preference = named_in_matcher(
        vm.spec.preference.as_ref().and_then(|m| m.kind.as_deref()),
        [
            "virtualmachinepreference",
            "virtualmachineclusterpreference",
        ],
    );
    let group = status_group(vm.status.as_ref().and_then(|s| s.printable_status));
    f.gauge(
        "kubevirt_vm_info",
        "Information about a VirtualMachine (always 1): its guest, machine type and status.",
        labels(&[
            ("name", name),
            ("namespace", namespace),
            ("os", os),
            ("workload", workload),
            ("flavor", flavor),
            ("machine_type", machine_type),
            ("instance_type", instance_type),
            ("preference", preference),
            ("status", &printable_status(vm)),
            ("status_group", status_group_label(group)),
        ]),
        1.0,
    );
}

fn vm_create_date(f: &mut Families, vm: &VirtualMachine) {
    let (namespace, name) = name_of(&vm.metadata);
    if let Some(t) = &vm.metadata.creation_timestamp {
        f.gauge(
            "kubevirt_vm_create_date_timestamp_seconds",
            "When the VirtualMachine was created, in seconds since the Unix epoch.",
            labels(&[("name", name), ("namespace", namespace)]),
            seconds(t) as f64,
        );
    }
}

/// The last transition of the VM's `Ready`, `Failure` or `Paused` condition, in seconds;
/// -1 without one (upstream's starting point).
fn last_transition(vm: &VirtualMachine) -> i64 {
    let watched = [
        vm_condition::READY,
        vm_condition::FAILURE,
        vm_condition::PAUSED,
    ];
    let conditions = vm.status.as_ref().and_then(|s| s.conditions.as_ref());
    conditions
        .into_iter()
        .flatten()
        .filter(|c| watched.contains(&c.type_.as_str()))
        .filter_map(|c| c.last_transition_time.as_ref().map(seconds))
        .fold(-1, i64::max)
}

/// Every VM has the five series: the one of its status group holds the last transition
/// time, the others 0; a status outside the groups counts as an error, as upstream.
///
/// Upstream declares these families counters, but their names have no `_total` and its
/// text exposition serves the series under the bare name. `Families::counter` would add
/// `_total`, so they are gauges here: the series names stay upstream's.
fn vm_status_transitions(f: &mut Families, vm: &VirtualMachine) {
    const FAMILIES: [(StatusGroup, &str, &str); 5] = [
        (
            StatusGroup::Starting,
            "kubevirt_vm_starting_status_last_transition_timestamp_seconds",
            "When the VirtualMachine last turned to a starting status, in seconds since the epoch (0 when not starting).",
        ),
        (
            StatusGroup::Running,
            "kubevirt_vm_running_status_last_transition_timestamp_seconds",
            "When the VirtualMachine last turned to Running, in seconds since the epoch (0 when not running).",
        ),
        (
            StatusGroup::Migrating,
            "kubevirt_vm_migrating_status_last_transition_timestamp_seconds",
            "When the VirtualMachine last turned to Migrating, in seconds since the epoch (0 when not migrating).",
        ),
        (
            StatusGroup::NonRunning,
            "kubevirt_vm_non_running_status_last_transition_timestamp_seconds",
            "When the VirtualMachine last turned to stopped or paused, in seconds since the epoch (0 otherwise).",
        ),
        (
            StatusGroup::Error,
            "kubevirt_vm_error_status_last_transition_timestamp_seconds",
            "When the VirtualMachine last turned to an error status, in seconds since the epoch (0 otherwise).",
        ),
    ];
    let (namespace, name) = name_of(&vm.metadata);
    let current = status_group(vm.status.as_ref().and_then(|s| s.printable_status))
        .unwrap_or(StatusGroup::Error);
    let when = last_transition(vm) as f64;
    for (group, family, help) in FAMILIES {
        f.gauge(
            family,
            help,
            labels(&[("name", name), ("namespace", namespace)]),
            if group == current { when } else { 0.0 },
        );
    }
}

/// A VM's resource samples, all labelled with its name and namespace.
struct VmResources<'a> {
    f: &'a mut Families,
    namespace: &'a str,
    name: &'a str,
}

impl VmResources<'_> {
    fn request(&mut self, resource: &str, unit: &str, source: &str, value: f64) {
        let l = labels(&[
            ("name", self.name),
            ("namespace", self.namespace),
            ("resource", resource),
            ("unit", unit),
            ("source", source),
        ]);
        self.f.gauge(REQUESTS, REQUESTS_HELP, l, value);
    }

    fn limit(&mut self, resource: &str, unit: &str, value: f64) {
        let l = labels(&[
            ("name", self.name),
            ("namespace", self.namespace),
            ("resource", resource),
            ("unit", unit),
        ]);
        self.f.gauge(LIMITS, LIMITS_HELP, l, value);
    }
}

fn non_zero(q: &&Quantity) -> bool {
    !q.is_zero()
}

/// CPU as upstream reads it: thousandths rounded up, then in cores.
fn cores(q: &Quantity) -> f64 {
    q.milli_value() as f64 / 1000.0
}

/// Requests and limits from the VM's template, with upstream's sources: `domain`
/// (`resources.requests.memory`, `memory.guest` as `guest`, the hugepage size as
/// `hugepages`, the CPU topology), `requests` (`resources.requests.cpu`), `default` (one
/// core, thread and socket when the template says nothing about CPU) and
/// `guest_effective` (the vCPUs and memory the guest gets).
fn vm_resources(f: &mut Families, vm: &VirtualMachine) {
    let Some(spec) = vm.spec.template.spec.as_ref() else {
        return;
    };
    let (namespace, name) = name_of(&vm.metadata);
    let mut r = VmResources { f, namespace, name };
    let domain = &spec.domain;
    let resources = domain.resources.as_ref();
    let requests = |k: &str| resources?.requests.as_ref()?.get(k);
    let limits = |k: &str| resources?.limits.as_ref()?.get(k);
    let guest = domain.memory.as_ref().and_then(|m| m.guest.as_ref());

    if let Some(q) = requests("memory").filter(non_zero) {
        r.request("memory", "bytes", "domain", q.value() as f64);
    }
    if let Some(q) = guest.filter(non_zero) {
        r.request("memory", "bytes", "guest", q.value() as f64);
    }
    if let Some(h) = domain.memory.as_ref().and_then(|m| m.hugepages.as_ref()) {
        // The page size is free text in the API: a size that does not parse is skipped.
        if let Ok(q) = Quantity::parse(h.page_size.as_deref().unwrap_or("")) {
            r.request("memory", "bytes", "hugepages", q.value() as f64);
        }
    }
    if let Some(q) = limits("memory").filter(non_zero) {
        r.limit("memory", "bytes", q.value() as f64);
    }

    if let Some(cpu) = &domain.cpu {
        let topology = [
            ("cores", cpu.cores),
            ("threads", cpu.threads),
            ("sockets", cpu.sockets),
        ];
        for (unit, n) in topology {
            if let Some(n) = n.filter(|&n| n != 0) {
                r.request("cpu", unit, "domain", f64::from(n));
            }
        }
    }
    match requests("cpu").filter(non_zero) {
        Some(q) => r.request("cpu", "cores", "requests", cores(q)),
        None if domain.cpu.is_none() => {
            for unit in ["cores", "threads", "sockets"] {
                r.request("cpu", unit, "default", 1.0);
            }
        }
        None => {}
    }
    if let Some(q) = limits("cpu").filter(non_zero) {
        r.limit("cpu", "cores", cores(q));
    }

    // The vCPUs: the product of the topology's non-zero counts (0 if all are), else 1.
    let vcpus = match &domain.cpu {
        Some(cpu) => [cpu.cores, cpu.sockets, cpu.threads]
            .into_iter()
            .flatten()
            .filter(|&n| n != 0)
            .fold(None, |product: Option<f64>, n| {
                Some(product.unwrap_or(1.0) * f64::from(n))
            })
            .unwrap_or(0.0),
        None => 1.0,
    };
    r.request("cpu", "cores", "guest_effective", vcpus);
    // Guest memory: `memory.guest`, else the limit when no request is set, else the request.
    let effective = guest.or_else(|| match (requests("memory"), limits("memory")) {
        (None, Some(limit)) => Some(limit),
        (request, _) => request,
    });
    if let Some(q) = effective.filter(non_zero) {
        r.request("memory", "bytes", "guest_effective", q.value() as f64);
    }
}

fn vm_vnic_info(f: &mut Families, vm: &VirtualMachine) {
    let (namespace, name) = name_of(&vm.metadata);
    let spec = vm.spec.template.spec.as_ref();
    vnic_info(
        f,
        "kubevirt_vm_vnic_info",
        "A vNIC of a VirtualMachine's template (always 1): its binding and network.",
        (namespace, name),
        spec.map(|s| &s.domain),
        spec.and_then(|s| s.networks.as_deref()),
    );
}

/// The VM's labels and its template's (which win) as `label_<key>`; [`Families`] makes
/// the keys label names, and when two keys become one name, the later key in order wins.
/// No sample for a VM without labels.
fn vm_labels(f: &mut Families, vm: &VirtualMachine) {
    let template = vm.spec.template.metadata.as_ref();
    let mut merged: BTreeMap<&str, &str> = BTreeMap::new();
    for meta in [Some(&vm.metadata), template].into_iter().flatten() {
        for (k, v) in meta.labels.iter().flatten() {
            merged.insert(k.as_str(), v.as_str());
        }
    }
    if merged.is_empty() {
        return;
    }
    let (namespace, name) = name_of(&vm.metadata);
    let mut l = labels(&[("name", name), ("namespace", namespace)]);
    l.extend(
        merged
            .into_iter()
            .map(|(k, v)| (format!("label_{k}"), v.to_string())),
    );
    f.gauge(
        "kubevirt_vm_labels",
        "A VirtualMachine's labels and its template's, as Prometheus labels (always 1).",
        l,
        1.0,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn vm(v: serde_json::Value) -> VirtualMachine {
        serde_json::from_value(v).expect("a valid VirtualMachine")
    }

    fn vmi(v: serde_json::Value) -> VirtualMachineInstance {
        serde_json::from_value(v).expect("a valid VirtualMachineInstance")
    }

    fn scrape(vms: &[VirtualMachine], vmis: &[VirtualMachineInstance]) -> String {
        scrape_with(vms, vmis, &[])
    }

    fn scrape_with(
        vms: &[VirtualMachine],
        vmis: &[VirtualMachineInstance],
        migrations: &[VirtualMachineInstanceMigration],
    ) -> String {
        let mut f = Families::default();
        collect(&mut f, vms, vmis, migrations);
        let samples = f.len();
        let out = crate::families::encode_text(f);
        let lines: Vec<&str> = out.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(lines.len(), samples, "{out}");
        for line in lines {
            assert!(
                well_formed(line).is_some(),
                "malformed sample {line:?} in\n{out}"
            );
        }
        out
    }

    /// `name{k="v",...} value` with only `\\`, `\"` and `\n` escaped in values.
    fn well_formed(line: &str) -> Option<()> {
        let valid_name = |s: &str| {
            !s.is_empty()
                && !s.starts_with(|c: char| c.is_ascii_digit())
                && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        };
        let Some((name, mut rest)) = line.split_once('{') else {
            // `name value`: a family without labels.
            let (name, value) = line.split_once(' ')?;
            valid_name(name).then_some(())?;
            return value.parse::<f64>().ok().map(|_| ());
        };
        valid_name(name).then_some(())?;
        loop {
            let (key, value) = rest.split_once("=\"")?;
            valid_name(key).then_some(())?;
            let mut chars = value.char_indices();
            let end = loop {
                match chars.next()? {
                    (_, '\\') => matches!(chars.next()?.1, '\\' | '"' | 'n').then_some(())?,
                    (i, '"') => break i,
                    (_, '\n') => return None,
                    _ => {}
                }
            };
            rest = &value[end + 1..];
            if let Some(r) = rest.strip_prefix(',') {
                rest = r;
            } else {
                rest = rest.strip_prefix("} ")?;
                rest.parse::<f64>().ok()?;
                return Some(());
            }
        }
    }

    /// The samples of `family`, in order.
    fn series<'a>(text: &'a str, family: &str) -> Vec<&'a str> {
        let prefix = format!("{family}{{");
        text.lines().filter(|l| l.starts_with(&prefix)).collect()
    }

    fn assert_has(text: &str, line: &str) {
        assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
    }

    fn running_vm() -> VirtualMachine {
        vm(json!({
            "apiVersion": "kubevirt.io/v1",
            "kind": "VirtualMachine",
            "metadata": {
                "name": "testvm",
                "namespace": "default",
                "creationTimestamp": "2024-05-01T10:00:00Z",
                "labels": {"app": "web", "kubevirt.io/domain": "testvm"}
            },
            "spec": {
                "runStrategy": "Always",
                "instancetype": {"kind": "VirtualMachineClusterInstancetype", "name": "u1.medium"},
                "template": {
                    "metadata": {
                        "annotations": {
                            "vm.kubevirt.io/os": "fedora",
                            "vm.kubevirt.io/workload": "server",
                            "vm.kubevirt.io/flavor": "small"
                        },
                        "labels": {"kubevirt.io/domain": "testvm-template"}
                    },
                    "spec": {
                        "domain": {
                            "machine": {"type": "q35"},
                            "cpu": {"cores": 2, "sockets": 1, "threads": 1},
                            "resources": {
                                "requests": {"memory": "1Gi", "cpu": "500m"},
                                "limits": {"memory": "2Gi", "cpu": "2"}
                            },
                            "devices": {"interfaces": [{"name": "default", "masquerade": {}}]}
                        },
                        "networks": [{"name": "default", "pod": {}}]
                    }
                }
            },
            "status": {
                "printableStatus": "Running",
                "created": true,
                "ready": true,
                "conditions": [
                    {"type": "Ready", "status": "True", "lastTransitionTime": "2024-05-01T10:01:00Z"},
                    {"type": "Paused", "status": "False", "lastTransitionTime": "2024-05-01T10:00:30Z"},
                    // Not one of the conditions the transition time is read from.
                    {"type": "LiveMigratable", "status": "True", "lastTransitionTime": "2024-05-02T08:00:00Z"}
                ]
            }
        }))
    }

    /// The five transition series of `name` in `default`, `group` holding `value`.
    fn assert_transitions(text: &str, name: &str, group: &str, value: &str) {
        for g in ["starting", "running", "migrating", "non_running", "error"] {
            let family = format!("kubevirt_vm_{g}_status_last_transition_timestamp_seconds");
            let v = if g == group { value } else { "0.0" };
            assert_has(
                text,
                &format!("{family}{{name=\"{name}\",namespace=\"default\"}} {v}"),
            );
        }
    }

    #[test]
    fn running_vm_reports_info_transitions_and_resources() {
        let t = scrape(&[running_vm()], &[]);
        assert_has(
            &t,
            "kubevirt_vm_info{name=\"testvm\",namespace=\"default\",os=\"fedora\",\
             workload=\"server\",flavor=\"small\",machine_type=\"q35\",instance_type=\"<other>\",\
             preference=\"\",status=\"running\",status_group=\"running\"} 1.0",
        );
        assert_has(
            &t,
            "kubevirt_vm_create_date_timestamp_seconds{name=\"testvm\",namespace=\"default\"} 1714557600.0",
        );
        // The latest of Ready, Failure and Paused: Ready's.
        assert_transitions(&t, "testvm", "running", "1714557660.0");
        // Served under upstream's series names, without `_total`.
        assert!(
            !t.contains("_status_last_transition_timestamp_seconds_total"),
            "{t}"
        );

        let req = |resource: &str, unit: &str, source: &str, v: &str| {
            format!(
                "kubevirt_vm_resource_requests{{name=\"testvm\",namespace=\"default\",\
                 resource=\"{resource}\",unit=\"{unit}\",source=\"{source}\"}} {v}"
            )
        };
        assert_eq!(
            series(&t, "kubevirt_vm_resource_requests"),
            [
                req("memory", "bytes", "domain", "1073741824.0"),
                req("cpu", "cores", "domain", "2.0"),
                req("cpu", "threads", "domain", "1.0"),
                req("cpu", "sockets", "domain", "1.0"),
                req("cpu", "cores", "requests", "0.5"),
                req("cpu", "cores", "guest_effective", "2.0"),
                req("memory", "bytes", "guest_effective", "1073741824.0"),
            ]
        );
        assert_eq!(
            series(&t, "kubevirt_vm_resource_limits"),
            [
                "kubevirt_vm_resource_limits{name=\"testvm\",namespace=\"default\",resource=\"memory\",unit=\"bytes\"} 2147483648.0",
                "kubevirt_vm_resource_limits{name=\"testvm\",namespace=\"default\",resource=\"cpu\",unit=\"cores\"} 2.0",
            ]
        );
        assert_eq!(
            series(&t, "kubevirt_vm_vnic_info"),
            ["kubevirt_vm_vnic_info{name=\"testvm\",namespace=\"default\",vnic_name=\"default\",\
              binding_type=\"core\",network=\"pod networking\",binding_name=\"masquerade\",model=\"<none>\"} 1.0"]
        );
        // The template's label wins over the VM's.
        assert_eq!(
            series(&t, "kubevirt_vm_labels"),
            [
                "kubevirt_vm_labels{name=\"testvm\",namespace=\"default\",label_app=\"web\",\
              label_kubevirt_io_domain=\"testvm-template\"} 1.0"
            ]
        );
        assert!(
            t.contains("# TYPE kubevirt_vm_running_status_last_transition_timestamp_seconds gauge"),
            "{t}"
        );
    }

    #[test]
    fn stopped_vm_is_non_running_with_default_cpu() {
        let stopped = vm(json!({
            "apiVersion": "kubevirt.io/v1",
            "kind": "VirtualMachine",
            "metadata": {"name": "stopped", "namespace": "default"},
            "spec": {
                "runStrategy": "Halted",
                "preference": {"kind": "virtualmachinepreference", "name": "mine"},
                "template": {"spec": {"domain": {"memory": {"guest": "512Mi"}, "devices": {}}}}
            },
            "status": {
                "printableStatus": "Stopped",
                "conditions": [
                    {"type": "Ready", "status": "False", "lastTransitionTime": "2024-05-01T09:00:00Z"},
                    {"type": "Failure", "status": "False", "lastTransitionTime": "2024-05-01T10:00:30Z"}
                ]
            }
        }));
        let t = scrape(&[stopped], &[]);
        assert_has(
            &t,
            "kubevirt_vm_info{name=\"stopped\",namespace=\"default\",os=\"\",workload=\"\",\
             flavor=\"\",machine_type=\"\",instance_type=\"\",preference=\"<other>\",\
             status=\"stopped\",status_group=\"non_running\"} 1.0",
        );
        assert_transitions(&t, "stopped", "non_running", "1714557630.0");
        let req = |resource: &str, unit: &str, source: &str, v: &str| {
            format!(
                "kubevirt_vm_resource_requests{{name=\"stopped\",namespace=\"default\",\
                 resource=\"{resource}\",unit=\"{unit}\",source=\"{source}\"}} {v}"
            )
        };
        assert_eq!(
            series(&t, "kubevirt_vm_resource_requests"),
            [
                req("memory", "bytes", "guest", "536870912.0"),
                req("cpu", "cores", "default", "1.0"),
                req("cpu", "threads", "default", "1.0"),
                req("cpu", "sockets", "default", "1.0"),
                req("cpu", "cores", "guest_effective", "1.0"),
                req("memory", "bytes", "guest_effective", "536870912.0"),
            ]
        );
        for absent in [
            "kubevirt_vm_resource_limits",
            "kubevirt_vm_create_date_timestamp_seconds",
            "kubevirt_vm_labels",
            "kubevirt_vm_vnic_info",
        ] {
            assert!(series(&t, absent).is_empty(), "{absent} in\n{t}");
        }
    }

    #[test]
    fn error_statuses_and_statuses_outside_the_groups_count_as_errors() {
        let with_status = |name: &str, status: Option<&str>| {
            let mut status_json = json!({
                "conditions": [
                    {"type": "Failure", "status": "True", "lastTransitionTime": "2024-05-02T08:00:10Z"},
                    {"type": "Ready", "status": "False", "lastTransitionTime": "2024-05-02T08:00:00Z"}
                ]
            });
            if let Some(s) = status {
                status_json["printableStatus"] = json!(s);
            }
            vm(json!({
                "apiVersion": "kubevirt.io/v1",
                "kind": "VirtualMachine",
                "metadata": {"name": name, "namespace": "default"},
                "spec": {"template": {}},
                "status": status_json
            }))
        };
        let vms = [
            with_status("crash", Some("CrashLoopBackOff")),
            with_status("unschedulable", Some("ErrorUnschedulable")),
            with_status("receiver", Some("WaitingForReceiver")),
            with_status("new", None),
        ];
        let t = scrape(&vms, &[]);
        let info = |name: &str, status: &str, group: &str| {
            format!(
                "kubevirt_vm_info{{name=\"{name}\",namespace=\"default\",os=\"\",workload=\"\",\
                 flavor=\"\",machine_type=\"\",instance_type=\"\",preference=\"\",\
                 status=\"{status}\",status_group=\"{group}\"}} 1.0"
            )
        };
        assert_has(&t, &info("crash", "crashloopbackoff", "error"));
        assert_has(&t, &info("unschedulable", "errorunschedulable", "error"));
        assert_has(&t, &info("receiver", "waitingforreceiver", "<unknown>"));
        assert_has(&t, &info("new", "", "<unknown>"));
        for name in ["crash", "unschedulable", "receiver", "new"] {
            assert_transitions(&t, name, "error", "1714636810.0");
        }
        // A template without a spec asks for nothing.
        assert!(
            series(&t, "kubevirt_vm_resource_requests").is_empty(),
            "{t}"
        );

        // Without a watched condition the time is upstream's -1.
        let bare = vm(json!({
            "apiVersion": "kubevirt.io/v1",
            "kind": "VirtualMachine",
            "metadata": {"name": "bare", "namespace": "default"},
            "spec": {"template": {}},
            "status": {"printableStatus": "Starting"}
        }));
        assert_transitions(&scrape(&[bare], &[]), "bare", "starting", "-1.0");
    }

    fn running_vmi() -> VirtualMachineInstance {
        vmi(json!({
            "apiVersion": "kubevirt.io/v1",
            "kind": "VirtualMachineInstance",
            "metadata": {
                "name": "testvmi",
                "namespace": "test-ns",
                "annotations": {
                    "vm.kubevirt.io/os": "rhel9",
                    "kubevirt.io/cluster-instancetype-name": "u1.small"
                },
                "labels": {"kubevirt.io/outdatedLauncherImage": ""}
            },
            "spec": {
                "evictionStrategy": "LiveMigrate",
                "domain": {
                    "resources": {"requests": {"memory": "1Gi"}},
                    "devices": {"interfaces": [
                        {"name": "default", "masquerade": {}, "model": "virtio"},
                        {"name": "blue", "binding": {"name": "passt"}},
                        {"name": "orphan", "bridge": {}}
                    ]}
                },
                "networks": [
                    {"name": "default", "pod": {}},
                    {"name": "blue", "multus": {"networkName": "ns/blue-net"}}
                ]
            },
            "status": {
                "phase": "Running",
                "nodeName": "testNode",
                "machine": {"type": "pc-q35-9.2"},
                "guestOSInfo": {
                    "name": "Fedora Linux",
                    "id": "fedora",
                    "kernelRelease": "6.8.5-301.fc40.x86_64",
                    "machine": "x86_64",
                    "versionId": "40"
                },
                "conditions": [{"type": "LiveMigratable", "status": "False", "reason": "DisksNotLiveMigratable"}],
                "migrationState": {
                    "sourcePod": "virt-launcher-testvmi-abcde",
                    "targetPod": "virt-launcher-testvmi-fghij",
                    "completed": true
                },
                "interfaces": [
                    {"name": "default", "interfaceName": "eth0", "ipAddress": "10.0.2.2"},
                    {"interfaceName": "br-int"},
                    {"name": "", "interfaceName": ""},
                    {"interfaceName": "br-int"}
                ]
            }
        }))
    }

    #[test]
    fn vmi_reports_info_addresses_eviction_vnics_and_overhead() {
        let running = running_vmi();
        let overhead = memory_overhead(&running);
        let pending = vmi(json!({
            "apiVersion": "kubevirt.io/v1",
            "kind": "VirtualMachineInstance",
            "metadata": {"name": "pending", "namespace": "test-ns"},
            "spec": {"domain": {"devices": {}}}
        }));
        let t = scrape(&[], &[running, pending]);
        assert_eq!(
            series(&t, "kubevirt_vmi_info"),
            [
                "kubevirt_vmi_info{node=\"testNode\",namespace=\"test-ns\",name=\"testvmi\",\
                 phase=\"running\",os=\"rhel9\",workload=\"\",flavor=\"\",instance_type=\"<other>\",\
                 preference=\"\",guest_os_kernel_release=\"6.8.5-301.fc40.x86_64\",\
                 guest_os_machine=\"pc-q35-9.2\",guest_os_arch=\"x86_64\",guest_os_name=\"Fedora Linux\",\
                 guest_os_version_id=\"40\",evictable=\"false\",outdated=\"true\",\
                 vmi_pod=\"virt-launcher-testvmi-fghij\"} 1.0",
                "kubevirt_vmi_info{node=\"\",namespace=\"test-ns\",name=\"pending\",phase=\"\",\
                 os=\"\",workload=\"\",flavor=\"\",instance_type=\"\",preference=\"\",\
                 guest_os_kernel_release=\"\",guest_os_machine=\"\",guest_os_arch=\"\",\
                 guest_os_name=\"\",guest_os_version_id=\"\",evictable=\"true\",outdated=\"false\",\
                 vmi_pod=\"\"} 1.0",
            ]
        );
        assert_eq!(
            series(&t, "kubevirt_vmi_non_evictable"),
            [
                "kubevirt_vmi_non_evictable{node=\"testNode\",namespace=\"test-ns\",name=\"testvmi\"} 1.0",
                "kubevirt_vmi_non_evictable{node=\"\",namespace=\"test-ns\",name=\"pending\"} 0.0",
            ]
        );
        // The nameless interface is left out and the repeated one reported once.
        assert_eq!(
            series(&t, "kubevirt_vmi_status_addresses"),
            [
                "kubevirt_vmi_status_addresses{node=\"testNode\",namespace=\"test-ns\",name=\"testvmi\",\
                 vnic_name=\"default\",interface_name=\"eth0\",address=\"10.0.2.2\",type=\"ExternalInterface\"} 1.0",
                "kubevirt_vmi_status_addresses{node=\"testNode\",namespace=\"test-ns\",name=\"testvmi\",\
                 vnic_name=\"\",interface_name=\"br-int\",address=\"\",type=\"SystemInterface\"} 1.0",
            ]
        );
        // The interface without a network is left out.
        assert_eq!(
            series(&t, "kubevirt_vmi_vnic_info"),
            [
                "kubevirt_vmi_vnic_info{name=\"testvmi\",namespace=\"test-ns\",vnic_name=\"default\",\
                 binding_type=\"core\",network=\"pod networking\",binding_name=\"masquerade\",model=\"virtio\"} 1.0",
                "kubevirt_vmi_vnic_info{name=\"testvmi\",namespace=\"test-ns\",vnic_name=\"blue\",\
                 binding_type=\"plugin\",network=\"ns/blue-net\",binding_name=\"passt\",model=\"<none>\"} 1.0",
            ]
        );
        assert!(overhead > 0);
        assert_has(
            &t,
            &format!(
                "kubevirt_vmi_launcher_memory_overhead_bytes{{namespace=\"test-ns\",name=\"testvmi\"}} {overhead}.0"
            ),
        );
    }

    #[test]
    fn eviction_follows_the_strategy_and_the_live_migratable_condition() {
        let with = |strategy: Option<&str>, migratable: Option<&str>| {
            let mut v = running_vmi();
            v.spec.eviction_strategy = strategy.map(str::to_string);
            let status = v.status.as_mut().unwrap();
            status.conditions = migratable.map(|s| {
                vec![
                    serde_json::from_value(json!({"type": "LiveMigratable", "status": s})).unwrap(),
                ]
            });
            evictable(&v)
        };
        assert!(!with(Some("LiveMigrate"), None));
        assert!(!with(Some("LiveMigrate"), Some("False")));
        assert!(with(Some("LiveMigrate"), Some("True")));
        assert!(with(Some("LiveMigrate"), Some("Unknown")));
        assert!(with(Some("LiveMigrateIfPossible"), None));
        assert!(with(Some("LiveMigrateIfPossible"), Some("True")));
        assert!(with(Some("None"), Some("False")));
        assert!(with(Some("External"), Some("False")));
        assert!(with(None, Some("False")));
    }

    #[test]
    fn hostile_labels_and_quantities_keep_the_output_well_formed() {
        let evil = "a\"b\\c\nkubevirt_vm_info{name=\"forged\"} 1";
        let hostile_vm = vm(json!({
            "apiVersion": "kubevirt.io/v1",
            "kind": "VirtualMachine",
            "metadata": {
                "name": "evil",
                "namespace": "default",
                "labels": {"we\"ird/key\nx": evil, "9lives": "x"}
            },
            "spec": {
                "instancetype": {"kind": "Something\"Else", "name": evil},
                "template": {
                    "metadata": {"annotations": {"vm.kubevirt.io/os": evil}},
                    "spec": {"domain": {
                        "machine": {"type": evil},
                        "memory": {"guest": "1e40", "hugepages": {"pageSize": "2Mi\"\n}"}},
                        "resources": {"limits": {"memory": "-1Gi"}},
                        "devices": {"interfaces": [{"name": evil, "model": evil, "binding": {"name": evil}}]}
                    },
                    "networks": [{"name": evil, "multus": {"networkName": evil}}]}
                }
            },
            "status": {"printableStatus": "Running"}
        }));
        let hostile_vmi = vmi(json!({
            "apiVersion": "kubevirt.io/v1",
            "kind": "VirtualMachineInstance",
            "metadata": {"name": "evil", "namespace": "default", "annotations": {"vm.kubevirt.io/flavor": evil}},
            "spec": {"domain": {"devices": {}}},
            "status": {
                "phase": "Running",
                "nodeName": evil,
                "guestOSInfo": {"name": evil, "kernelRelease": evil, "versionId": evil, "machine": evil},
                "interfaces": [{"name": evil, "interfaceName": evil, "ipAddress": evil}],
                "migrationState": {"sourcePod": evil}
            }
        }));
        // `scrape` checks that every line is one well-formed sample.
        let t = scrape(&[hostile_vm], &[hostile_vmi]);
        assert!(
            !t.lines()
                .any(|l| l.starts_with("kubevirt_vm_info{name=\"forged\"")),
            "{t}"
        );
        let escaped = r#"a\"b\\c\nkubevirt_vm_info{name=\"forged\"} 1"#;
        assert!(t.contains(&format!("os=\"{escaped}\"")), "{t}");
        assert!(t.contains(&format!("guest_os_name=\"{escaped}\"")), "{t}");
        assert!(t.contains(&format!("vmi_pod=\"{escaped}\"")), "{t}");
        // An unknown kind names nothing upstream looks up.
        assert!(t.contains("instance_type=\"\""), "{t}");
        // Keys made label names, in order.
        assert!(
            t.contains(&format!(
                "label_9lives=\"x\",label_we_ird_key_x=\"{escaped}\"}}"
            )),
            "{t}"
        );
        // A page size that is no quantity is skipped; 1e40 bytes saturate; -1Gi is reported
        // as upstream reports it.
        let requests = series(&t, "kubevirt_vm_resource_requests");
        assert!(!requests.iter().any(|l| l.contains("hugepages")), "{t}");
        assert!(
            requests
                .iter()
                .any(|l| l.contains("source=\"guest\"} 9223372036854776000.0")),
            "{t}"
        );
        assert_eq!(
            series(&t, "kubevirt_vm_resource_limits"),
            ["kubevirt_vm_resource_limits{name=\"evil\",namespace=\"default\",resource=\"memory\",unit=\"bytes\"} -1073741824.0"]
        );

        // A quantity that does not parse never reaches `collect`: the object is refused.
        let bad = json!({
            "apiVersion": "kubevirt.io/v1",
            "kind": "VirtualMachine",
            "metadata": {"name": "bad", "namespace": "default"},
            "spec": {"template": {"spec": {"domain": {"memory": {"guest": "lots"}, "devices": {}}}}}
        });
        assert!(serde_json::from_value::<VirtualMachine>(bad).is_err());
    }

    #[test]
    fn migrations_are_counted_and_timed() {
        let vmim = |name: &str, uid: &str, phase: &str| -> VirtualMachineInstanceMigration {
            serde_json::from_value(json!({
                "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstanceMigration",
                "metadata": {"name": name, "namespace": "default", "uid": uid},
                "spec": {"vmiName": "db"},
                "status": {"phase": phase}
            }))
            .unwrap()
        };
        let migrations = [
            vmim("m1", "u1", "Succeeded"),
            vmim("m2", "u2", "Failed"),
            vmim("m3", "u3", "Pending"),
            vmim("m4", "u4", "TargetReady"),
            vmim("m5", "u5", "Running"),
            vmim("m6", "u6", ""),
        ];
        let db = vmi(json!({
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
            "metadata": {"name": "db", "namespace": "default"},
            "spec": {"domain": {"devices": {}}},
            "status": {"phase": "Running", "nodeName": "node1", "migrationState": {
                "migrationUid": "u1", "completed": true,
                "startTimestamp": "2026-01-01T00:00:00Z", "endTimestamp": "2026-01-01T00:00:09Z"}}
        }));
        let out = scrape_with(&[], &[db], &migrations);
        for line in [
            r#"kubevirt_vmi_migration_succeeded{vmi="db",vmim="m1",namespace="default"} 1.0"#,
            r#"kubevirt_vmi_migration_failed{vmi="db",vmim="m2",namespace="default"} 1.0"#,
            "kubevirt_vmi_migrations_in_pending_phase 1.0",
            "kubevirt_vmi_migrations_in_running_phase 2.0",
            "kubevirt_vmi_migrations_in_unset_phase 1.0",
            "kubevirt_vmi_migrations_in_scheduling_phase 0.0",
            r#"kubevirt_vmi_migration_start_time_seconds{node="node1",namespace="default",name="db",migration_name="m1"} 1767225600.0"#,
            r#"kubevirt_vmi_migration_end_time_seconds{node="node1",namespace="default",name="db",migration_name="m1",status="succeeded"} 1767225609.0"#,
        ] {
            assert!(out.lines().any(|l| l == line), "missing {line} in\n{out}");
        }
    }
}
