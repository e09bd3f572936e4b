//! The kubevirt.io kinds: CRDs and in-process admission from `kubevirt-api`.

use serde_json::Value;

use crate::error::Cause;
use crate::ops::{Admission, Operation};

/// Defaulting and validation of `kubevirt.io` kinds (what virt-api's webhooks do).
pub struct KubevirtAdmission;

impl Admission for KubevirtAdmission {
    fn admit(
        &self,
        group: &str,
        kind: &str,
        op: Operation,
        obj: &mut Value,
        old: Option<&Value>,
    ) -> Result<(), Vec<Cause>> {
        if group != "kubevirt.io" || !kubevirt_api::admission::KINDS.contains(&kind) {
            return Ok(());
        }
        let op = match op {
            Operation::Create => kubevirt_api::admission::Operation::Create,
            Operation::Update => kubevirt_api::admission::Operation::Update,
        };
        kubevirt_api::admission::admit(kind, op, obj, old).map_err(|errs| {
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
        if group != "kubevirt.io" {
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
