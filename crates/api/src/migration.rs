//! Live migration rules shared by the migration controller, the node agent and admission:
//! the labels and annotations upstream puts on migrations and their target pods, whether a
//! VMI can be live-migrated (its `LiveMigratable` condition, with upstream's reasons), and
//! which of a migrating VMI's launcher pods runs the guest.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::admission::{FieldError, FieldErrorKind};
use crate::v1::{
    vmi_condition, ConditionStatus, VirtualMachineInstance, VirtualMachineInstanceCondition,
    VirtualMachineInstanceMigration, VolumeSource,
};

/// Label on a migration naming its VMI (virt-api's mutating webhook sets it; admission and
/// the controller find a VMI's migrations by it).
pub const VMI_NAME_LABEL: &str = "kubevirt.io/vmi-name";
/// Finalizer on a migration until its outcome is recorded (a cancel is a delete).
pub const MIGRATION_FINALIZER: &str = "kubevirt.io/migrationJobFinalize";
/// Label on a migration target pod: the migration's UID.
pub const MIGRATION_JOB_LABEL: &str = "kubevirt.io/migrationJobUID";
/// Annotation on a migration the evacuation controller created: the node being evacuated.
pub const EVACUATION_ANNOTATION: &str = "kubevirt.io/evacuationMigration";
/// Annotation on a migration target pod: the migration's name.
pub const MIGRATION_JOB_NAME_ANNOTATION: &str = "kubevirt.io/migrationJobName";
/// Condition type on a migration whose cancel (delete) was requested.
pub const ABORT_REQUESTED_CONDITION: &str = "migrationAbortRequested";

/// `LiveMigratable=False` reasons (upstream's names).
pub mod reason {
    pub const DISKS: &str = "DisksNotLiveMigratable";
    pub const INTERFACE: &str = "InterfaceNotLiveMigratable";
    pub const HOTPLUG: &str = "HotplugNotLiveMigratable";
    pub const HOST_DEVICE: &str = "HostDeviceNotLiveMigratable";
}

/// Body of a VM's `migrate` subresource (upstream's MigrateOptions).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MigrateOptions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dry_run: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub added_node_selector: Option<BTreeMap<String, String>>,
}

/// How the VMIs a policy selects migrate (`migrations.kubevirt.io/v1alpha1`); unset fields
/// keep the cluster's defaults.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "migrations.kubevirt.io",
    version = "v1alpha1",
    kind = "MigrationPolicy",
    plural = "migrationpolicies",
    derive = "PartialEq",
    derive = "Default"
)]
#[serde(rename_all = "camelCase")]
pub struct MigrationPolicySpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_auto_converge: Option<bool>,
    /// Bytes per second (a quantity: `64Mi`); 0 is unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth_per_migration: Option<crate::Quantity>,
    #[serde(
        default,
        rename = "completionTimeoutPerGiB",
        skip_serializing_if = "Option::is_none"
    )]
    pub completion_timeout_per_gib: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_post_copy: Option<bool>,
    #[serde(default)]
    pub selectors: MigrationPolicySelectors,
}

/// How migrations run: the cluster's (`spec.configuration.migrations` of the KubeVirt
/// object, [`crate::install`]), with a MigrationPolicy's fields over it
/// ([`MigrationConfiguration::with_policy`]) and upstream's defaults under both
/// ([`MigrationConfiguration::resolved`]). The fields kubevirt-rs acts on, upstream's names.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MigrationConfiguration {
    /// Migrations past Pending at once in the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallel_migrations_per_cluster: Option<u32>,
    /// Migrations past Pending at once leaving one node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallel_outbound_migrations_per_node: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_auto_converge: Option<bool>,
    /// Bytes per second (a quantity: `64Mi`); 0 is unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth_per_migration: Option<crate::Quantity>,
    /// Seconds per GiB of guest memory a migration may take before it is cancelled (or
    /// switched to post-copy).
    #[serde(
        default,
        rename = "completionTimeoutPerGiB",
        skip_serializing_if = "Option::is_none"
    )]
    pub completion_timeout_per_gib: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_post_copy: Option<bool>,
}

impl MigrationConfiguration {
    /// The rules of [`validate_migration_policy`], for the cluster's configuration at
    /// `path` (upstream decodes it only; a negative value there means nothing either).
    pub fn validate(&self, path: &str) -> Vec<FieldError> {
        not_negative(
            path,
            self.completion_timeout_per_gib,
            self.bandwidth_per_migration.as_ref(),
        )
    }

    /// Upstream's defaults: 5 migrations in the cluster, 2 leaving a node, no bandwidth
    /// limit, 150 s per GiB, neither auto-converge nor post-copy.
    pub fn upstream_defaults() -> Self {
        MigrationConfiguration {
            parallel_migrations_per_cluster: Some(5),
            parallel_outbound_migrations_per_node: Some(2),
            allow_auto_converge: Some(false),
            bandwidth_per_migration: crate::Quantity::parse("0Mi").ok(),
            completion_timeout_per_gib: Some(150),
            allow_post_copy: Some(false),
        }
    }

    /// The cluster's configuration (if any) over upstream's defaults: every field set.
    pub fn resolved(cluster: Option<&MigrationConfiguration>) -> Self {
        let mut out = Self::upstream_defaults();
        if let Some(c) = cluster {
            out.overlay(c.clone());
        }
        out
    }

    /// `self` with what `policy` sets instead (upstream's MigrationPolicy fields).
    pub fn with_policy(mut self, policy: &MigrationPolicySpec) -> Self {
        self.overlay(MigrationConfiguration {
            allow_auto_converge: policy.allow_auto_converge,
            bandwidth_per_migration: policy.bandwidth_per_migration.clone(),
            completion_timeout_per_gib: policy.completion_timeout_per_gib,
            allow_post_copy: policy.allow_post_copy,
            ..Default::default()
        });
        self
    }

    fn overlay(&mut self, over: MigrationConfiguration) {
        let MigrationConfiguration {
            parallel_migrations_per_cluster,
            parallel_outbound_migrations_per_node,
            allow_auto_converge,
            bandwidth_per_migration,
            completion_timeout_per_gib,
            allow_post_copy,
        } = over;
        fn set<T>(field: &mut Option<T>, value: Option<T>) {
            if value.is_some() {
                *field = value;
            }
        }
        set(
            &mut self.parallel_migrations_per_cluster,
            parallel_migrations_per_cluster,
        );
        set(
            &mut self.parallel_outbound_migrations_per_node,
            parallel_outbound_migrations_per_node,
        );
        set(&mut self.allow_auto_converge, allow_auto_converge);
        set(&mut self.bandwidth_per_migration, bandwidth_per_migration);
        set(
            &mut self.completion_timeout_per_gib,
            completion_timeout_per_gib,
        );
        set(&mut self.allow_post_copy, allow_post_copy);
    }
}

/// What upstream's `migration-policy-validator` refuses: a negative completion timeout or
/// bandwidth. (Its `maxDowntimeMs` and `experimental` fields need feature gates
/// kubevirt-rs does not have; they are kept, not acted on.)
pub fn validate_migration_policy(p: &MigrationPolicy) -> Vec<FieldError> {
    not_negative(
        "spec",
        p.spec.completion_timeout_per_gib,
        p.spec.bandwidth_per_migration.as_ref(),
    )
}

/// Neither `<path>.completionTimeoutPerGiB` nor `<path>.bandwidthPerMigration` may be
/// negative (upstream's causes: the message alone).
fn not_negative(
    path: &str,
    completion_timeout_per_gib: Option<i64>,
    bandwidth: Option<&crate::Quantity>,
) -> Vec<FieldError> {
    let negative = |field: &str| FieldError {
        field: format!("{path}.{field}"),
        kind: FieldErrorKind::InvalidMessage,
        message: "must not be negative".into(),
    };
    let mut errors = Vec::new();
    if completion_timeout_per_gib.is_some_and(|t| t < 0) {
        errors.push(negative("completionTimeoutPerGiB"));
    }
    if bandwidth.is_some_and(|b| b.is_negative()) {
        errors.push(negative("bandwidthPerMigration"));
    }
    errors
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MigrationPolicySelectors {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<BTreeMap<String, String>>,
    #[serde(
        default,
        rename = "virtualMachineInstanceSelector",
        skip_serializing_if = "Option::is_none"
    )]
    pub vmi_selector: Option<BTreeMap<String, String>>,
}

/// The policy that applies to a VMI with `vmi_labels` in a namespace with `ns_labels`, as
/// upstream picks it: every label a policy selects on must match; of those, the one
/// matching the most labels wins (ties: the first by name).
pub fn matching_policy<'a>(
    policies: &'a [MigrationPolicy],
    vmi_labels: &BTreeMap<String, String>,
    ns_labels: &BTreeMap<String, String>,
) -> Option<&'a MigrationPolicy> {
    let matched = |want: &Option<BTreeMap<String, String>>, have: &BTreeMap<String, String>| {
        let want = want.as_ref()?;
        want.iter()
            .all(|(k, v)| have.get(k) == Some(v))
            .then_some(want.len())
    };
    let mut best: Option<(usize, &MigrationPolicy)> = None;
    let mut sorted: Vec<&MigrationPolicy> = policies.iter().collect();
    sorted.sort_by_key(|p| p.metadata.name.clone());
    for p in sorted {
        let sel = &p.spec.selectors;
        let (Some(a), Some(b)) = (
            matched(&sel.vmi_selector, vmi_labels).or(sel.vmi_selector.is_none().then_some(0)),
            matched(&sel.namespace_selector, ns_labels)
                .or(sel.namespace_selector.is_none().then_some(0)),
        ) else {
            continue;
        };
        if best.is_none_or(|(n, _)| a + b > n) {
            best = Some((a + b, p));
        }
    }
    best.map(|(_, p)| p)
}

/// `status.migrationState.abortStatus` values.
pub mod abort_status {
    pub const ABORTING: &str = "Aborting";
    pub const SUCCEEDED: &str = "Succeeded";
    pub const FAILED: &str = "Failed";
}

/// Where migrations can land, which decides which volumes count as shared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// One machine (embedded mode): the target runs on the same node, so every volume
    /// the source reaches, the target reaches too.
    SameNode,
    /// A cluster: the target runs on another node; claims must be ReadWriteMany and
    /// hostDisks `shared`, as upstream requires.
    Cluster,
}

/// One thing that keeps a VMI where it is: upstream's `LiveMigratable=False` reason, the
/// field that causes it, and the message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blocker {
    pub reason: &'static str,
    pub field: String,
    pub message: String,
}

fn blocker(reason: &'static str, field: impl Into<String>, message: impl Into<String>) -> Blocker {
    Blocker {
        reason,
        field: field.into(),
        message: message.into(),
    }
}

/// Whether a claim volume's status says ReadWriteMany.
fn claim_shared(vmi: &VirtualMachineInstance, volume: &str) -> bool {
    vmi.status
        .iter()
        .flat_map(|s| s.volume_status.iter().flatten())
        .filter(|v| v.name == volume)
        .filter_map(|v| v.persistent_volume_claim_info.as_ref())
        .any(|info| {
            info.get("accessModes")
                .and_then(|m| m.as_array())
                .is_some_and(|m| m.iter().any(|m| m == "ReadWriteMany"))
        })
}

/// Everything that keeps the VMI from being live-migrated within `scope`, in upstream's
/// order of checks: interface bindings other than masquerade (passt's process holds the
/// guest's connections), host devices and GPUs, hot-plugged volumes, persistent TPM or EFI
/// state (one directory both launchers would open, with nothing to hand it over), and in a
/// cluster non-shared claims and hostDisks.
pub fn blockers(vmi: &VirtualMachineInstance, scope: Scope) -> Vec<Blocker> {
    let mut out = Vec::new();
    let spec = &vmi.spec;
    let devices = &spec.domain.devices;
    for (i, iface) in devices.interfaces.iter().flatten().enumerate() {
        if let Some(other) = iface.binding_method().filter(|b| *b != "masquerade") {
            out.push(blocker(
                reason::INTERFACE,
                format!("spec.domain.devices.interfaces[{i}].{other}"),
                format!(
                    "cannot migrate VMI which does not use masquerade to connect to the pod network (interface {} uses {other})",
                    iface.name
                ),
            ));
        }
    }
    if devices.host_devices.as_ref().is_some_and(|d| !d.is_empty()) {
        out.push(blocker(
            reason::HOST_DEVICE,
            "spec.domain.devices.hostDevices",
            "VMI specifies non-migratable generic PCI host device",
        ));
    }
    if devices.gpus.as_ref().is_some_and(|g| !g.is_empty()) {
        out.push(blocker(
            reason::HOST_DEVICE,
            "spec.domain.devices.gpus",
            "VMI specifies non-migratable GPU device",
        ));
    }
    if crate::hotplug::has_hotplug(spec) {
        out.push(blocker(
            reason::HOTPLUG,
            "spec.volumes",
            "cannot migrate VMI with hot-plugged volumes: unplug them first",
        ));
    }
    if devices
        .tpm
        .as_ref()
        .is_some_and(|t| t.enabled != Some(false) && t.persistent == Some(true))
    {
        out.push(blocker(
            reason::DISKS,
            "spec.domain.devices.tpm.persistent",
            "cannot migrate VMI: its persistent TPM state is not migrated by kubevirt-rs yet",
        ));
    }
    if spec
        .domain
        .firmware
        .as_ref()
        .and_then(|f| f.bootloader.as_ref())
        .and_then(|b| b.efi.as_ref())
        .is_some_and(|e| e.persistent == Some(true))
    {
        out.push(blocker(
            reason::DISKS,
            "spec.domain.firmware.bootloader.efi.persistent",
            "cannot migrate VMI: its persistent EFI variables are not migrated by kubevirt-rs yet",
        ));
    }
    if scope == Scope::Cluster {
        for (i, v) in spec.volumes.iter().flatten().enumerate() {
            let field = format!("spec.volumes[{i}]");
            let not_shared = |claim: &str| {
                blocker(
                    reason::DISKS,
                    field.clone(),
                    format!("cannot migrate VMI: PVC {claim} is not shared, live migration requires that all PVCs must be shared (using ReadWriteMany access mode)"),
                )
            };
            match v.source() {
                Some(VolumeSource::PersistentVolumeClaim(c)) if !claim_shared(vmi, &v.name) => {
                    out.push(not_shared(&c.claim_name))
                }
                Some(VolumeSource::DataVolume(d)) if !claim_shared(vmi, &v.name) => {
                    out.push(not_shared(&d.name))
                }
                Some(VolumeSource::HostDisk(h)) if h.shared != Some(true) => out.push(blocker(
                    reason::DISKS,
                    field.clone(),
                    "cannot migrate VMI with non-shared HostDisk",
                )),
                _ => {}
            }
        }
    }
    out
}

/// The VMI's `LiveMigratable` condition: True, or False with the reason and message of the
/// first [`blockers`] entry, as upstream reports one.
pub fn live_migratable(
    vmi: &VirtualMachineInstance,
    scope: Scope,
) -> VirtualMachineInstanceCondition {
    match blockers(vmi, scope).into_iter().next() {
        Some(b) => VirtualMachineInstanceCondition {
            type_: vmi_condition::LIVE_MIGRATABLE.into(),
            status: ConditionStatus::False,
            reason: Some(b.reason.into()),
            message: Some(b.message),
            ..Default::default()
        },
        None => VirtualMachineInstanceCondition {
            type_: vmi_condition::LIVE_MIGRATABLE.into(),
            status: ConditionStatus::True,
            ..Default::default()
        },
    }
}

/// A migration of the VMI is under way: its `migrationState` names a migration that has
/// neither completed nor failed.
pub fn in_progress(vmi: &VirtualMachineInstance) -> bool {
    vmi.status
        .as_ref()
        .and_then(|s| s.migration_state.as_ref())
        .is_some_and(|m| {
            m.migration_uid.is_some() && m.completed != Some(true) && m.failed != Some(true)
        })
}

/// The guest is being moved: the migration started and has not ended (upstream's
/// `IsMigrating`, behind the VM's `Migrating` printable status).
pub fn migrating(vmi: &VirtualMachineInstance) -> bool {
    vmi.status
        .as_ref()
        .and_then(|s| s.migration_state.as_ref())
        .is_some_and(|m| m.start_timestamp.is_some() && m.end_timestamp.is_none())
}

/// The name of the launcher pod that runs the guest according to the VMI's migration
/// state: the target once a migration completed, the source while one runs or after one
/// failed; None without a migration.
pub fn guest_pod(vmi: &VirtualMachineInstance) -> Option<&str> {
    let m = vmi.status.as_ref()?.migration_state.as_ref()?;
    if m.completed == Some(true) && m.failed != Some(true) {
        m.target_pod.as_deref()
    } else {
        m.source_pod.as_deref()
    }
}

/// What becomes of a request to evict a VMI's launcher pod (virt-api's eviction webhook).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Eviction {
    /// Let the pod go (no eviction strategy, or one that allows it).
    Allow,
    /// Refuse with this message (429: `kubectl drain` tries again).
    Refuse(String),
    /// Mark the VMI for evacuation (`status.evacuationNodeName`) and refuse with this
    /// message: a migration moves the guest, then the pod may go.
    Evacuate(String),
}

/// Upstream's rule for evicting `pod_name` (labelled as a migration target or not) of
/// `vmi`, under the VMI's `evictionStrategy` (else `cluster_default`).
pub fn eviction(
    vmi: &VirtualMachineInstance,
    pod_name: &str,
    pod_is_target: bool,
    cluster_default: Option<&str>,
) -> Eviction {
    let strategy = vmi.spec.eviction_strategy.as_deref().or(cluster_default);
    let migratable = vmi.condition_true(vmi_condition::LIVE_MIGRATABLE);
    let evacuate = match strategy {
        Some("LiveMigrate") if !migratable => {
            return Eviction::Refuse(format!(
                "VMI {} is configured with an eviction strategy but is not live-migratable",
                vmi.metadata.name.as_deref().unwrap_or_default()
            ))
        }
        Some("LiveMigrate") | Some("External") => true,
        Some("LiveMigrateIfPossible") => migratable,
        _ => false,
    };
    if !evacuate {
        return Eviction::Allow;
    }
    let what = format!(
        "Eviction triggered evacuation of VMI \"{}/{}\"",
        vmi.metadata.namespace.as_deref().unwrap_or_default(),
        vmi.metadata.name.as_deref().unwrap_or_default()
    );
    if in_progress(vmi)
        || vmi
            .status
            .as_ref()
            .is_some_and(|s| s.evacuation_node_name.is_some())
    {
        return Eviction::Refuse(format!("Evacuation in progress: {what}"));
    }
    let runs_guest = match guest_pod(vmi) {
        Some(p) => p == pod_name,
        None => !pod_is_target,
    };
    if !runs_guest {
        return Eviction::Refuse("Eviction request for target Pod".into());
    }
    Eviction::Evacuate(what)
}

/// A migration of the VMI `vmi_name`, named by the API server from `generate_name`
/// (virt-api's `kubevirt-migrate-vm-`, the evacuation's, the workload updater's).
pub fn new_migration(generate_name: &str, vmi_name: &str) -> VirtualMachineInstanceMigration {
    VirtualMachineInstanceMigration {
        metadata: kube::api::ObjectMeta {
            generate_name: Some(generate_name.into()),
            ..Default::default()
        },
        spec: crate::v1::VirtualMachineInstanceMigrationSpec {
            vmi_name: Some(vmi_name.into()),
            ..Default::default()
        },
        status: None,
    }
}

/// The VMI name a migration is for.
pub fn vmi_name(m: &VirtualMachineInstanceMigration) -> &str {
    m.spec.vmi_name.as_deref().unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_and_the_cluster_configuration_may_not_be_negative() {
        use crate::admission::{admit, Operation};
        let mut policy = serde_json::json!({
            "apiVersion": "migrations.kubevirt.io/v1alpha1", "kind": "MigrationPolicy",
            "metadata": {"name": "p"},
            "spec": {"completionTimeoutPerGiB": -1, "bandwidthPerMigration": "-1Mi",
                     "maxDowntimeMs": 100}
        });
        let errs = admit("MigrationPolicy", Operation::Create, &mut policy, None).unwrap_err();
        let shown: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        assert_eq!(
            shown,
            [
                "spec.completionTimeoutPerGiB: must not be negative",
                "spec.bandwidthPerMigration: must not be negative"
            ]
        );
        let before = policy.clone();
        let errs = admit(
            "MigrationPolicy",
            Operation::Update,
            &mut policy,
            Some(&before),
        );
        assert_eq!(errs.unwrap_err().len(), 2, "each cause once on update too");
        policy["spec"]["completionTimeoutPerGiB"] = 0.into();
        policy["spec"]["bandwidthPerMigration"] = "0".into();
        let before = policy.clone();
        admit(
            "MigrationPolicy",
            Operation::Update,
            &mut policy,
            Some(&before),
        )
        .unwrap();
        assert_eq!(
            policy, before,
            "checked, not rewritten: upstream's fields stay"
        );

        let mut kv = serde_json::json!({
            "apiVersion": "kubevirt.io/v1", "kind": "KubeVirt",
            "metadata": {"name": "kubevirt", "namespace": "kubevirt"},
            "spec": {"configuration": {"migrations": {"parallelMigrationsPerCluster": -2}}}
        });
        let errs = admit("KubeVirt", Operation::Create, &mut kv, None).unwrap_err();
        assert_eq!(
            errs[0].field,
            "spec.configuration.migrations.parallelMigrationsPerCluster"
        );
        kv["spec"]["configuration"]["migrations"] =
            serde_json::json!({"completionTimeoutPerGiB": -3});
        let errs = admit("KubeVirt", Operation::Create, &mut kv, None).unwrap_err();
        assert_eq!(
            errs[0].to_string(),
            "spec.configuration.migrations.completionTimeoutPerGiB: must not be negative"
        );
    }
    use serde_json::json;

    #[test]
    fn the_policy_matching_most_labels_wins() {
        let policy = |name: &str,
                      vmi: serde_json::Value,
                      ns: serde_json::Value|
         -> MigrationPolicy {
            serde_json::from_value(json!({
                "apiVersion": "migrations.kubevirt.io/v1alpha1", "kind": "MigrationPolicy",
                "metadata": {"name": name},
                "spec": {"bandwidthPerMigration": "1Mi", "completionTimeoutPerGiB": 20,
                         "selectors": {"virtualMachineInstanceSelector": vmi, "namespaceSelector": ns}},
            }))
            .unwrap()
        };
        let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let all = vec![
            policy("a-one", json!({"tier": "db"}), json!(null)),
            policy("b-two", json!({"tier": "db"}), json!({"team": "x"})),
            policy("c-other", json!({"tier": "web"}), json!(null)),
        ];
        let vmi = labels(&[("tier", "db")]);
        let pick = |ns: &BTreeMap<String, String>| {
            matching_policy(&all, &vmi, ns).and_then(|p| p.metadata.name.clone())
        };
        assert_eq!(pick(&labels(&[("team", "x")])), Some("b-two".into()));
        assert_eq!(pick(&labels(&[("team", "y")])), Some("a-one".into()));
        assert_eq!(
            matching_policy(&all, &labels(&[("tier", "cache")]), &BTreeMap::new()),
            None
        );
        let p = &all[0].spec;
        assert_eq!(
            p.bandwidth_per_migration.as_ref().unwrap().to_bytes(),
            1 << 20
        );
        assert_eq!(p.completion_timeout_per_gib, Some(20));
    }

    #[test]
    fn a_policy_overrides_the_cluster_which_overrides_upstream_s_defaults() {
        let d = MigrationConfiguration::resolved(None);
        assert_eq!(d, MigrationConfiguration::upstream_defaults());
        assert_eq!(d.completion_timeout_per_gib, Some(150));
        assert_eq!(d.bandwidth_per_migration.as_ref().unwrap().to_bytes(), 0);
        let cluster: MigrationConfiguration = serde_json::from_value(
            json!({"bandwidthPerMigration": "64Mi", "parallelMigrationsPerCluster": 1, "allowPostCopy": true}),
        )
        .unwrap();
        let c = MigrationConfiguration::resolved(Some(&cluster));
        assert_eq!(
            c.bandwidth_per_migration.as_ref().unwrap().to_bytes(),
            64 << 20
        );
        assert_eq!(
            (
                c.parallel_migrations_per_cluster,
                c.parallel_outbound_migrations_per_node
            ),
            (Some(1), Some(2))
        );
        assert_eq!(c.allow_post_copy, Some(true));
        let policy: MigrationPolicySpec =
            serde_json::from_value(json!({"completionTimeoutPerGiB": 20, "allowPostCopy": false}))
                .unwrap();
        let p = c.with_policy(&policy);
        assert_eq!(p.completion_timeout_per_gib, Some(20));
        assert_eq!(p.allow_post_copy, Some(false));
        assert_eq!(
            p.bandwidth_per_migration.as_ref().unwrap().to_bytes(),
            64 << 20,
            "kept"
        );
    }

    fn vmi(spec: serde_json::Value) -> VirtualMachineInstance {
        serde_json::from_value(json!({
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
            "metadata": {"name": "v", "namespace": "default"},
            "spec": spec,
        }))
        .unwrap()
    }

    fn reason_of(c: &VirtualMachineInstanceCondition) -> Option<&str> {
        (c.status == ConditionStatus::False).then(|| c.reason.as_deref().unwrap_or(""))
    }

    #[test]
    fn masquerade_and_local_disks_migrate_on_one_node() {
        let v = vmi(json!({
            "domain": {"devices": {
                "disks": [{"name": "root", "disk": {}}, {"name": "data", "disk": {}}],
                "interfaces": [{"name": "default", "masquerade": {}}]}},
            "networks": [{"name": "default", "pod": {}}],
            "volumes": [
                {"name": "root", "containerDisk": {"image": "x"}},
                {"name": "data", "persistentVolumeClaim": {"claimName": "data"}}],
        }));
        assert_eq!(reason_of(&live_migratable(&v, Scope::SameNode)), None);
        let c = live_migratable(&v, Scope::Cluster);
        assert_eq!(reason_of(&c), Some(reason::DISKS));
        assert!(c.message.unwrap().contains("PVC data is not shared"));
    }

    #[test]
    fn what_keeps_a_vmi_in_place() {
        let passt = vmi(json!({
            "domain": {"devices": {"interfaces": [{"name": "default", "passt": {}}]}},
            "networks": [{"name": "default", "pod": {}}],
        }));
        assert_eq!(
            reason_of(&live_migratable(&passt, Scope::SameNode)),
            Some(reason::INTERFACE)
        );
        let tpm = vmi(json!({"domain": {"devices": {"tpm": {"persistent": true}}}}));
        assert_eq!(
            reason_of(&live_migratable(&tpm, Scope::SameNode)),
            Some(reason::DISKS)
        );
        let hotplug = vmi(json!({
            "domain": {"devices": {"disks": [{"name": "hp", "disk": {"bus": "scsi"}}]}},
            "volumes": [{"name": "hp", "persistentVolumeClaim": {"claimName": "c", "hotpluggable": true}}],
        }));
        assert_eq!(
            reason_of(&live_migratable(&hotplug, Scope::SameNode)),
            Some(reason::HOTPLUG)
        );
        let host = vmi(json!({
            "domain": {"devices": {"disks": [{"name": "h", "disk": {}}]}},
            "volumes": [{"name": "h", "hostDisk": {"path": "/x.img", "type": "Disk"}}],
        }));
        assert_eq!(reason_of(&live_migratable(&host, Scope::SameNode)), None);
        assert_eq!(
            reason_of(&live_migratable(&host, Scope::Cluster)),
            Some(reason::DISKS)
        );
    }

    #[test]
    fn evicting_a_launcher_pod_follows_the_eviction_strategy() {
        let mut v = vmi(json!({"domain": {"devices": {}}}));
        v.metadata.namespace = Some("ns".into());
        assert_eq!(eviction(&v, "p", false, None), Eviction::Allow);
        v.spec.eviction_strategy = Some("LiveMigrate".into());
        assert_eq!(
            eviction(&v, "p", false, None),
            Eviction::Refuse(
                "VMI v is configured with an eviction strategy but is not live-migratable".into()
            )
        );
        v.spec.eviction_strategy = Some("LiveMigrateIfPossible".into());
        assert_eq!(eviction(&v, "p", false, None), Eviction::Allow);
        v.status = Some(
            serde_json::from_value(
                json!({"conditions": [{"type": "LiveMigratable", "status": "True"}]}),
            )
            .unwrap(),
        );
        let msg = "Eviction triggered evacuation of VMI \"ns/v\"";
        assert_eq!(
            eviction(&v, "p", false, None),
            Eviction::Evacuate(msg.into())
        );
        assert_eq!(
            eviction(&v, "t", true, None),
            Eviction::Refuse("Eviction request for target Pod".into())
        );
        v.spec.eviction_strategy = None;
        assert_eq!(
            eviction(&v, "p", false, Some("LiveMigrate")),
            Eviction::Evacuate(msg.into()),
            "the cluster's default applies"
        );
        v.status.as_mut().unwrap().evacuation_node_name = Some("node".into());
        assert_eq!(
            eviction(&v, "p", false, Some("External")),
            Eviction::Refuse(format!("Evacuation in progress: {msg}"))
        );
    }

    #[test]
    fn the_guest_pod_follows_the_migration_state() {
        let mut v = vmi(json!({"domain": {"devices": {}}}));
        assert_eq!(guest_pod(&v), None);
        assert!(!in_progress(&v));
        v.status = Some(
            serde_json::from_value(json!({"migrationState": {
                "migrationUid": "m1", "sourcePod": "src", "targetPod": "dst"}}))
            .unwrap(),
        );
        assert_eq!(guest_pod(&v), Some("src"));
        assert!(in_progress(&v));
        let m = v.status.as_mut().unwrap().migration_state.as_mut().unwrap();
        m.completed = Some(true);
        assert_eq!(guest_pod(&v), Some("dst"));
        assert!(!in_progress(&v));
        let m = v.status.as_mut().unwrap().migration_state.as_mut().unwrap();
        m.failed = Some(true);
        assert_eq!(guest_pod(&v), Some("src"));
    }
}
