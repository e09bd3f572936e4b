//! CustomResourceDefinitions generated from the types (structural OpenAPI v3 schemas, status
//! subresource, printer columns and short names as upstream).

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps,
};
use kube::CustomResourceExt;
use serde_json::json;

use crate::v1::{
    VirtualMachine, VirtualMachineInstance, VirtualMachineInstanceMigration,
    VirtualMachineInstanceReplicaSet,
};

/// Every CRD the API server serves: the kinds this project runs (four of kubevirt.io, CDI's
/// DataVolume, the VM and volume snapshot kinds) ([`core()`]) followed by
/// the kubevirt kinds it only stores ([`storage_only`]), so that a repository of upstream
/// manifests applies as-is.
pub fn all() -> Vec<CustomResourceDefinition> {
    let mut crds = core();
    crds.extend(storage_only());
    crds
}

/// The CRDs of the kinds this project runs, generated from the types, VM first.
pub fn core() -> Vec<CustomResourceDefinition> {
    let mut crds = vec![
        VirtualMachine::crd(),
        VirtualMachineInstance::crd(),
        VirtualMachineInstanceMigration::crd(),
        VirtualMachineInstanceReplicaSet::crd(),
        crate::cdi::DataVolume::crd(),
        crate::snapshot::VirtualMachineSnapshot::crd(),
        crate::snapshot::VirtualMachineSnapshotContent::crd(),
        crate::snapshot::VirtualMachineRestore::crd(),
        crate::snapshot::VolumeSnapshot::crd(),
        crate::snapshot::VolumeSnapshotContent::crd(),
        crate::export::VirtualMachineExport::crd(),
        crate::clone::VirtualMachineClone::crd(),
    ];
    for crd in &mut crds {
        add_type_meta(crd);
        crd.metadata
            .labels
            .get_or_insert_with(Default::default)
            .insert(
                "app.kubernetes.io/part-of".to_string(),
                "kubevirt-rs".to_string(),
            );
    }
    // Written out (the kind keeps its fields at the top level, which the derive cannot).
    crds.extend(serde_json::from_value(
        crate::snapshot::volume_snapshot_class_crd(),
    ));
    crds
}

/// The derive leaves out `apiVersion`, `kind` and `metadata`; upstream's schemas list them
/// (and `kubectl explain` shows them), so add them the way upstream does.
fn add_type_meta(crd: &mut CustomResourceDefinition) {
    for version in &mut crd.spec.versions {
        let Some(schema) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
        else {
            continue;
        };
        let props = schema.properties.get_or_insert_with(Default::default);
        props.insert(
            "apiVersion".to_string(),
            JSONSchemaProps {
                description: Some(API_VERSION_DOC.to_string()),
                type_: Some("string".to_string()),
                ..Default::default()
            },
        );
        props.insert(
            "kind".to_string(),
            JSONSchemaProps {
                description: Some(KIND_DOC.to_string()),
                type_: Some("string".to_string()),
                ..Default::default()
            },
        );
        props.insert(
            "metadata".to_string(),
            JSONSchemaProps {
                type_: Some("object".to_string()),
                ..Default::default()
            },
        );
        let required = schema.required.get_or_insert_with(Vec::new);
        if !required.iter().any(|r| r == "spec") {
            required.push("spec".to_string());
        }
    }
}

const API_VERSION_DOC: &str = "APIVersion defines the versioned schema of this representation of an object. Servers should convert recognized schemas to the latest internal value, and may reject unrecognized values. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#resources";
const KIND_DOC: &str = "Kind is a string value representing the REST resource this object represents. Servers may infer this from the endpoint the client submits requests to. Cannot be updated. In CamelCase. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#types-kinds";

/// All CRDs as one multi-document YAML stream (`kubevirt-rs crds`).
pub fn to_yaml() -> String {
    let mut out = String::new();
    for crd in all() {
        out.push_str("---\n");
        // Serialising plain data structures to YAML cannot fail.
        match serde_yaml::to_string(&crd) {
            Ok(s) => out.push_str(&s),
            Err(e) => out.push_str(&format!("# error: {e}\n")),
        }
    }
    out
}

/// The spec schema of a stored kind from the type kubevirt-rs reads it through (`crd`'s),
/// with unknown fields kept at every level and no defaults (the type's are for reading):
/// upstream's objects are stored as given, and a wrong type in the part read is refused
/// as kube-apiserver refuses it.
fn read_part_schema(crd: CustomResourceDefinition) -> Option<serde_json::Value> {
    fn keep_unknown(s: &mut serde_json::Value) {
        if let Some(map) = s.as_object_mut() {
            map.remove("default");
        }
        if let Some(props) = s.get_mut("properties").and_then(|p| p.as_object_mut()) {
            props.values_mut().for_each(keep_unknown);
            s["x-kubernetes-preserve-unknown-fields"] = true.into();
        }
        if let Some(items) = s.get_mut("items") {
            keep_unknown(items);
        }
    }
    let version = crd.spec.versions.into_iter().next()?;
    let spec = version
        .schema?
        .open_api_v3_schema?
        .properties?
        .remove("spec")?;
    let mut spec = serde_json::to_value(spec).ok()?;
    keep_unknown(&mut spec);
    Some(spec)
}

/// Upstream kubevirt kinds stored with `spec` and `status` as given, so that any upstream
/// object of them applies: instancetypes and preferences, pools and the deprecated VMI
/// presets (not acted upon yet), migration policies and the install's KubeVirt object
/// (read through their own types, [`crate::migration`] and [`crate::install`], whose part
/// of the spec the schema types).
pub fn storage_only() -> Vec<CustomResourceDefinition> {
    struct Def {
        group: &'static str,
        versions: &'static [&'static str],
        kind: &'static str,
        plural: &'static str,
        short: &'static [&'static str],
        namespaced: bool,
        status: bool,
        /// Upstream's `status.phase` printer column.
        phase_column: bool,
        /// The type kubevirt-rs reads the kind through: its spec's schema types that part
        /// ([`read_part_schema`]).
        read_as: Option<fn() -> CustomResourceDefinition>,
    }
    let defs = [
        Def {
            group: "instancetype.kubevirt.io",
            versions: &["v1beta1"],
            kind: "VirtualMachineInstancetype",
            plural: "virtualmachineinstancetypes",
            short: &["vminstancetype", "vminstancetypes", "vmf", "vmfs"],
            namespaced: true,
            status: false,
            phase_column: false,
            read_as: None,
        },
        Def {
            group: "instancetype.kubevirt.io",
            versions: &["v1beta1"],
            kind: "VirtualMachineClusterInstancetype",
            plural: "virtualmachineclusterinstancetypes",
            short: &[
                "vmclusterinstancetype",
                "vmclusterinstancetypes",
                "vmcf",
                "vmcfs",
            ],
            namespaced: false,
            status: false,
            phase_column: false,
            read_as: None,
        },
        Def {
            group: "instancetype.kubevirt.io",
            versions: &["v1beta1"],
            kind: "VirtualMachinePreference",
            plural: "virtualmachinepreferences",
            short: &["vmpref", "vmprefs", "vmp", "vmps"],
            namespaced: true,
            status: false,
            phase_column: false,
            read_as: None,
        },
        Def {
            group: "instancetype.kubevirt.io",
            versions: &["v1beta1"],
            kind: "VirtualMachineClusterPreference",
            plural: "virtualmachineclusterpreferences",
            short: &["vmcp", "vmcps"],
            namespaced: false,
            status: false,
            phase_column: false,
            read_as: None,
        },
        Def {
            group: "pool.kubevirt.io",
            versions: &["v1beta1", "v1alpha1"],
            kind: "VirtualMachinePool",
            plural: "virtualmachinepools",
            short: &["vmpool", "vmpools"],
            namespaced: true,
            status: true,
            phase_column: false,
            read_as: None,
        },
        Def {
            group: "migrations.kubevirt.io",
            versions: &["v1alpha1"],
            kind: "MigrationPolicy",
            plural: "migrationpolicies",
            short: &[],
            namespaced: false,
            status: true,
            phase_column: false,
            read_as: Some(crate::migration::MigrationPolicy::crd),
        },
        Def {
            group: "kubevirt.io",
            versions: &["v1"],
            kind: "VirtualMachineInstancePreset",
            plural: "virtualmachineinstancepresets",
            short: &["vmipreset", "vmipresets"],
            namespaced: true,
            status: false,
            phase_column: false,
            read_as: None,
        },
        // Read for `spec.configuration`; its status says the install is up (`install`).
        Def {
            group: "kubevirt.io",
            versions: &["v1"],
            kind: "KubeVirt",
            plural: "kubevirts",
            short: &["kv", "kvs"],
            namespaced: true,
            status: true,
            phase_column: true,
            read_as: Some(crate::install::KubeVirt::crd),
        },
    ];
    defs.iter()
        .filter_map(|d| {
            let free = json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true});
            let schema = json!({"openAPIV3Schema": {
                "type": "object",
                "description": format!("{} (stored by kubevirt-rs with spec and status as given)", d.kind),
                "properties": {
                    "apiVersion": {"type": "string", "description": API_VERSION_DOC},
                    "kind": {"type": "string", "description": KIND_DOC},
                    "metadata": {"type": "object"},
                    "spec": d.read_as.and_then(|crd| read_part_schema(crd())).unwrap_or_else(|| free.clone()),
                    "status": free,
                },
            }});
            let versions: Vec<_> = d
                .versions
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    let mut columns = vec![
                        json!({"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}),
                    ];
                    if d.phase_column {
                        columns.push(json!({"name": "Phase", "type": "string", "jsonPath": ".status.phase"}));
                    }
                    let mut ver = json!({
                        "name": v,
                        "served": true,
                        "storage": i == 0,
                        "schema": schema,
                        "additionalPrinterColumns": columns,
                    });
                    if d.status {
                        ver["subresources"] = json!({"status": {}});
                    }
                    ver
                })
                .collect();
            let singular = d.kind.to_ascii_lowercase();
            let crd = json!({
                "apiVersion": "apiextensions.k8s.io/v1",
                "kind": "CustomResourceDefinition",
                "metadata": {
                    "name": format!("{}.{}", d.plural, d.group),
                    "labels": {"app.kubernetes.io/part-of": "kubevirt-rs"},
                },
                "spec": {
                    "group": d.group,
                    "names": {
                        "kind": d.kind,
                        "listKind": format!("{}List", d.kind),
                        "plural": d.plural,
                        "singular": singular,
                        "shortNames": d.short,
                    },
                    "scope": if d.namespaced { "Namespaced" } else { "Cluster" },
                    "versions": versions,
                },
            });
            // Building from constant data: a failure here is a programming error caught by
            // the tests, never a runtime condition; skip rather than panic.
            serde_json::from_value(crd).ok()
        })
        .collect()
}
