//! Generated CRDs: names, scope, status subresource, printer columns, structural schemas.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps,
};
use kubevirt_api::crds;
use serde::Deserialize;

fn crd(kind: &str) -> CustomResourceDefinition {
    crds::core()
        .into_iter()
        .find(|c| c.spec.names.kind == kind)
        .unwrap_or_else(|| panic!("no CRD for {kind}"))
}

fn columns(kind: &str) -> Vec<(String, String, String, Option<i32>)> {
    let c = crd(kind);
    c.spec.versions[0]
        .additional_printer_columns
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|c| (c.name, c.type_, c.json_path, c.priority))
        .collect()
}

fn col(name: &str, ty: &str, path: &str) -> (String, String, String, Option<i32>) {
    (name.into(), ty.into(), path.into(), None)
}

#[test]
fn names_and_scope_match_upstream() {
    for (kind, plural, singular, short) in [
        (
            "VirtualMachine",
            "virtualmachines",
            "virtualmachine",
            vec!["vm", "vms"],
        ),
        (
            "VirtualMachineInstance",
            "virtualmachineinstances",
            "virtualmachineinstance",
            vec!["vmi", "vmis"],
        ),
        (
            "VirtualMachineInstanceMigration",
            "virtualmachineinstancemigrations",
            "virtualmachineinstancemigration",
            vec!["vmim", "vmims"],
        ),
        (
            "VirtualMachineInstanceReplicaSet",
            "virtualmachineinstancereplicasets",
            "virtualmachineinstancereplicaset",
            vec!["vmirs", "vmirss"],
        ),
    ] {
        let c = crd(kind);
        assert_eq!(
            c.metadata.name.as_deref(),
            Some(format!("{plural}.kubevirt.io").as_str())
        );
        assert_eq!(c.spec.group, "kubevirt.io");
        assert_eq!(c.spec.scope, "Namespaced");
        assert_eq!(c.spec.names.plural, plural);
        assert_eq!(c.spec.names.singular.as_deref(), Some(singular));
        assert_eq!(c.spec.names.short_names.clone().unwrap(), short);
        assert_eq!(c.spec.names.categories.clone().unwrap(), vec!["all"]);
        assert_eq!(c.spec.versions.len(), 1);
        let v = &c.spec.versions[0];
        assert_eq!(v.name, "v1");
        assert!(v.served && v.storage);
        assert!(
            v.subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some(),
            "{kind} has a status subresource"
        );
    }
    let scale = crd("VirtualMachineInstanceReplicaSet").spec.versions[0]
        .subresources
        .clone()
        .unwrap()
        .scale
        .unwrap();
    assert_eq!(scale.spec_replicas_path, ".spec.replicas");
    assert_eq!(scale.status_replicas_path, ".status.replicas");
    assert_eq!(
        scale.label_selector_path.as_deref(),
        Some(".status.labelSelector")
    );
}

#[test]
fn printer_columns_match_upstream() {
    let ready = ".status.conditions[?(@.type=='Ready')].status";
    assert_eq!(
        columns("VirtualMachine"),
        vec![
            col("Age", "date", ".metadata.creationTimestamp"),
            col("Status", "string", ".status.printableStatus"),
            col("Ready", "string", ready),
        ]
    );
    assert_eq!(
        columns("VirtualMachineInstance"),
        vec![
            col("Age", "date", ".metadata.creationTimestamp"),
            col("Phase", "string", ".status.phase"),
            col("IP", "string", ".status.interfaces[0].ipAddress"),
            col("NodeName", "string", ".status.nodeName"),
            col("Ready", "string", ready),
            (
                "Live-Migratable".into(),
                "string".into(),
                ".status.conditions[?(@.type=='LiveMigratable')].status".into(),
                Some(1)
            ),
            (
                "Paused".into(),
                "string".into(),
                ".status.conditions[?(@.type=='Paused')].status".into(),
                Some(1)
            ),
        ]
    );
    assert_eq!(
        columns("VirtualMachineInstanceMigration"),
        vec![
            col("Phase", "string", ".status.phase"),
            col("VMI", "string", ".spec.vmiName")
        ]
    );
    assert_eq!(
        columns("VirtualMachineInstanceReplicaSet"),
        vec![
            col("Desired", "integer", ".spec.replicas"),
            col("Current", "integer", ".status.replicas"),
            col("Ready", "integer", ".status.readyReplicas"),
            col("Age", "date", ".metadata.creationTimestamp"),
        ]
    );
}

/// The structural-schema rules kube-apiserver enforces that a generator can get wrong.
fn check_structural(path: &str, s: &JSONSchemaProps, errs: &mut Vec<String>) {
    let preserve = s.x_kubernetes_preserve_unknown_fields == Some(true);
    let int_or_string = s.x_kubernetes_int_or_string == Some(true);
    if s.type_.is_none() && !preserve && !int_or_string {
        errs.push(format!("{path}: no type"));
    }
    for (name, junctors) in [
        ("anyOf", &s.any_of),
        ("oneOf", &s.one_of),
        ("allOf", &s.all_of),
    ] {
        for j in junctors.iter().flatten() {
            if j.type_.is_some()
                || j.description.is_some()
                || j.default.is_some()
                || j.nullable.is_some()
            {
                errs.push(format!(
                    "{path}: {name} item sets type/description/default/nullable"
                ));
            }
        }
    }
    for (k, p) in s.properties.iter().flatten() {
        check_structural(&format!("{path}.{k}"), p, errs);
    }
    if let Some(items) = &s.items {
        match items {
            k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaPropsOrArray::Schema(i) => {
                check_structural(&format!("{path}[]"), i, errs)
            }
            _ => errs.push(format!("{path}: items must be a single schema")),
        }
    } else if s.type_.as_deref() == Some("array") {
        errs.push(format!("{path}: array without items"));
    }
    if let Some(k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaPropsOrBool::Schema(a)) = &s.additional_properties {
        check_structural(&format!("{path}{{}}"), a, errs);
    }
}

#[test]
fn schemas_are_structural() {
    for c in crds::all() {
        let schema = c.spec.versions[0]
            .schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .expect("schema");
        let mut errs = Vec::new();
        check_structural(&c.spec.names.kind, schema, &mut errs);
        assert!(
            errs.is_empty(),
            "{}:\n{}",
            c.spec.names.kind,
            errs.join("\n")
        );
        let props = schema.properties.as_ref().unwrap();
        if c.spec.names.kind == "VolumeSnapshotClass" {
            // Its fields are top-level, as the external-snapshotter defines it.
            assert!(props.contains_key("driver") && props.contains_key("deletionPolicy"));
            continue;
        }
        for key in ["apiVersion", "kind", "metadata", "spec", "status"] {
            assert!(props.contains_key(key), "{}: no {key}", c.spec.names.kind);
        }
        if crds::core().contains(&c) {
            assert_eq!(schema.required.clone().unwrap(), vec!["spec"]);
        }
    }
}

#[test]
fn schema_knows_the_upstream_fields() {
    let c = crd("VirtualMachine");
    let s = c.spec.versions[0]
        .schema
        .as_ref()
        .unwrap()
        .open_api_v3_schema
        .as_ref()
        .unwrap();
    let spec = &s.properties.as_ref().unwrap()["spec"];
    let p = spec.properties.as_ref().unwrap();
    assert!(
        p.contains_key("runStrategy") && p.contains_key("running") && p.contains_key("template")
    );
    let rs = p["runStrategy"].enum_.clone().unwrap();
    assert_eq!(rs.len(), 6);
    assert_eq!(spec.required.clone().unwrap(), vec!["template"]);
    let tspec = &p["template"].properties.as_ref().unwrap()["spec"];
    let domain = &tspec.properties.as_ref().unwrap()["domain"];
    assert_eq!(domain.required.clone().unwrap(), vec!["devices"]);
    let memory = &domain.properties.as_ref().unwrap()["memory"]
        .properties
        .as_ref()
        .unwrap()["guest"];
    assert_eq!(memory.x_kubernetes_int_or_string, Some(true));
}

#[test]
fn yaml_is_multi_document_and_parses_back() {
    let yaml = crds::to_yaml();
    let docs: Vec<CustomResourceDefinition> = serde_yaml::Deserializer::from_str(&yaml)
        .map(|d| CustomResourceDefinition::deserialize(d).unwrap())
        .collect();
    assert_eq!(docs.len(), crds::all().len());
    assert_eq!(docs, crds::all());
    assert_eq!(crds::core().len(), 13);
    assert_eq!(crds::all().len(), 13 + crds::storage_only().len());
    for d in &docs {
        let name = d.metadata.name.as_deref().unwrap();
        assert!(name.ends_with("kubevirt.io") || name.ends_with(".snapshot.storage.k8s.io"));
    }
}

#[test]
fn storage_only_kinds_cover_the_other_upstream_kinds() {
    let kinds: Vec<(String, String, String)> = crds::storage_only()
        .into_iter()
        .flat_map(|c| {
            let group = c.spec.group.clone();
            let kind = c.spec.names.kind.clone();
            c.spec
                .versions
                .iter()
                .map(move |v| (group.clone(), v.name.clone(), kind.clone()))
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(
        crds::storage_only().len(),
        8,
        "every stored kind built from its constant data"
    );
    for want in [
        (
            "instancetype.kubevirt.io",
            "v1beta1",
            "VirtualMachineInstancetype",
        ),
        (
            "instancetype.kubevirt.io",
            "v1beta1",
            "VirtualMachineClusterInstancetype",
        ),
        (
            "instancetype.kubevirt.io",
            "v1beta1",
            "VirtualMachinePreference",
        ),
        (
            "instancetype.kubevirt.io",
            "v1beta1",
            "VirtualMachineClusterPreference",
        ),
        ("pool.kubevirt.io", "v1beta1", "VirtualMachinePool"),
        ("migrations.kubevirt.io", "v1alpha1", "MigrationPolicy"),
        ("kubevirt.io", "v1", "VirtualMachineInstancePreset"),
        ("kubevirt.io", "v1", "KubeVirt"),
    ] {
        assert!(
            kinds.contains(&(want.0.into(), want.1.into(), want.2.into())),
            "{want:?} missing"
        );
    }
    // Exactly one storage version each; names are plural.group.
    for c in crds::storage_only() {
        assert_eq!(c.spec.versions.iter().filter(|v| v.storage).count(), 1);
        assert_eq!(
            c.metadata.name.clone().unwrap(),
            format!("{}.{}", c.spec.names.plural, c.spec.group)
        );
    }
}

#[test]
fn kube_resource_metadata_matches_the_crds() {
    use kube::Resource;
    use kubevirt_api::v1::*;
    assert_eq!(VirtualMachine::plural(&()), "virtualmachines");
    assert_eq!(VirtualMachine::api_version(&()), "kubevirt.io/v1");
    assert_eq!(VirtualMachineInstance::kind(&()), "VirtualMachineInstance");
    assert_eq!(
        VirtualMachineInstanceMigration::plural(&()),
        "virtualmachineinstancemigrations"
    );
    assert_eq!(VirtualMachineInstanceReplicaSet::group(&()), "kubevirt.io");
    assert_eq!(
        VirtualMachineInstance::url_path(&(), Some("default")),
        "/apis/kubevirt.io/v1/namespaces/default/virtualmachineinstances"
    );
    // Serialising a typed object writes apiVersion and kind.
    let v = serde_json::to_value(VirtualMachine::new("x", Default::default())).unwrap();
    assert_eq!(v["apiVersion"], "kubevirt.io/v1");
    assert_eq!(v["kind"], "VirtualMachine");
}

#[test]
fn stored_kinds_type_the_part_read_and_keep_the_rest() {
    let stored = |kind: &str| {
        crds::storage_only()
            .into_iter()
            .find(|c| c.spec.names.kind == kind)
            .unwrap()
    };
    let spec_of = |c: &CustomResourceDefinition| -> JSONSchemaProps {
        c.spec.versions[0]
            .schema
            .as_ref()
            .unwrap()
            .open_api_v3_schema
            .as_ref()
            .unwrap()
            .properties
            .as_ref()
            .unwrap()["spec"]
            .clone()
    };
    let child = |s: &JSONSchemaProps, k: &str| s.properties.as_ref().unwrap()[k].clone();
    let keeps = |s: &JSONSchemaProps| s.x_kubernetes_preserve_unknown_fields == Some(true);

    let spec = spec_of(&stored("KubeVirt"));
    let configuration = child(&spec, "configuration");
    let migrations = child(&configuration, "migrations");
    assert!(keeps(&spec) && keeps(&configuration) && keeps(&migrations));
    let ty = |s: &JSONSchemaProps, k: &str| child(s, k).type_;
    assert_eq!(
        ty(&migrations, "completionTimeoutPerGiB").as_deref(),
        Some("integer")
    );
    assert_eq!(ty(&migrations, "allowPostCopy").as_deref(), Some("boolean"));
    assert_eq!(
        child(&migrations, "bandwidthPerMigration").x_kubernetes_int_or_string,
        Some(true)
    );

    let spec = spec_of(&stored("MigrationPolicy"));
    assert!(keeps(&spec) && keeps(&child(&spec, "selectors")));
    assert_eq!(child(&spec, "selectors").default, None, "stored as given");
    assert_eq!(ty(&spec, "allowAutoConverge").as_deref(), Some("boolean"));

    // A kind kubevirt-rs does not read keeps its spec whole.
    let spec = spec_of(&stored("VirtualMachinePool"));
    assert!(keeps(&spec) && spec.properties.is_none());
}
