//! The kubevirt.io kinds: CRDs and in-process admission from `kubevirt-api`.

use serde_json::Value;

use crate::error::Cause;
use crate::ops::{Admission, Operation};

/// Defaulting and validation of `kubevirt.io` kinds (what virt-api's webhooks do), and the
/// node's hostDisk policy.
#[derive(Debug, Clone, Default)]
pub struct KubevirtAdmission {
    pub host_disks: kubevirt_api::host_disk::HostDiskPolicy,
}

/// Where a kind keeps the volumes of the VMs it makes.
fn volumes_field(kind: &str) -> Option<(&'static str, &'static str)> {
    match kind {
        "VirtualMachineInstance" => Some(("/spec/volumes", "spec.volumes")),
        "VirtualMachine" | "VirtualMachineInstanceReplicaSet" => {
            Some(("/spec/template/spec/volumes", "spec.template.spec.volumes"))
        }
        _ => None,
    }
}

impl Admission for KubevirtAdmission {
    fn admit(
        &self,
        group: &str,
        kind: &str,
        op: Operation,
        obj: &mut Value,
        old: Option<&Value>,
    ) -> Result<(), Vec<Cause>> {
        let ours = match group {
            "kubevirt.io" => kubevirt_api::admission::KINDS.contains(&kind),
            "cdi.kubevirt.io" => kubevirt_api::admission::CDI_KINDS.contains(&kind),
            kubevirt_api::snapshot::GROUP => kubevirt_api::snapshot::KINDS.contains(&kind),
            kubevirt_api::export::GROUP => kubevirt_api::export::KINDS.contains(&kind),
            kubevirt_api::clone::GROUP => kubevirt_api::clone::KINDS.contains(&kind),
            _ => false,
        } || kubevirt_api::admission::CHECKED_STORED_KINDS.contains(&(group, kind));
        if !ours {
            return Ok(());
        }
        let op = match op {
            Operation::Create => kubevirt_api::admission::Operation::Create,
            Operation::Update => kubevirt_api::admission::Operation::Update,
        };
        let mut result = kubevirt_api::admission::admit(kind, op, obj, old);
        if let (Ok(()), Some((pointer, field))) = (&result, volumes_field(kind)) {
            let volumes: Vec<kubevirt_api::v1::Volume> = obj
                .pointer(pointer)
                .and_then(|v| serde_json::from_value(v.clone()).ok())
                .unwrap_or_default();
            let errors = self.host_disks.check(field, &volumes);
            if !errors.is_empty() {
                result = Err(errors);
            }
        }
        result.map_err(|errs| {
            errs.iter()
                .map(|e| Cause {
                    reason: e.reason().to_string(),
                    message: e.body(),
                    field: e.field.clone(),
                })
                .collect()
        })
    }

    fn unknown_fields(&self, group: &str, kind: &str, obj: &Value) -> Vec<String> {
        if !matches!(
            group,
            "kubevirt.io"
                | "cdi.kubevirt.io"
                | kubevirt_api::snapshot::GROUP
                | kubevirt_api::export::GROUP
                | kubevirt_api::clone::GROUP
        ) {
            return Vec::new();
        }
        kubevirt_api::admission::unknown_fields(kind, obj)
    }
}

/// Every kubevirt CRD as JSON.
pub fn crds() -> Vec<Value> {
    kubevirt_api::crds::all()
        .into_iter()
        .filter_map(|c| serde_json::to_value(c).ok())
        .collect()
}
