//! CustomResourceDefinitions generated from the types (structural OpenAPI v3 schemas, status
//! subresource, printer columns and short names as upstream).

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps,
};
use kube::CustomResourceExt;

use crate::v1::{
    VirtualMachine, VirtualMachineInstance, VirtualMachineInstanceMigration,
    VirtualMachineInstanceReplicaSet,
};

/// Every CRD this crate defines, VM first.
pub fn all() -> Vec<CustomResourceDefinition> {
    let mut crds = vec![
        VirtualMachine::crd(),
        VirtualMachineInstance::crd(),
        VirtualMachineInstanceMigration::crd(),
        VirtualMachineInstanceReplicaSet::crd(),
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
