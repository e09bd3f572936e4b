//! CustomResourceDefinitions generated from the types (structural OpenAPI v3 schemas, status
//! subresource, printer columns and short names as upstream).

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

use crate::v1::{
    VirtualMachine, VirtualMachineInstance, VirtualMachineInstanceMigration,
    VirtualMachineInstanceReplicaSet,
};

/// Every CRD this crate defines, VM first.
pub fn all() -> Vec<CustomResourceDefinition> {
    vec![
        VirtualMachine::crd(),
        VirtualMachineInstance::crd(),
        VirtualMachineInstanceMigration::crd(),
        VirtualMachineInstanceReplicaSet::crd(),
    ]
}

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
